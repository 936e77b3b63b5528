//! I/O page fault queues (the kernel's fault.c).

use crate::uapi::dispatch::Ucmd;
use crate::uapi::*;
use crate::{bail, Result};

/// `IOMMU_FAULT_QUEUE_ALLOC`: fault queues arrive with the I/O page fault issue.
pub(crate) fn fault_queue_alloc(u: &Ucmd) -> Result<i32> {
    let cmd: IommuFaultAlloc = u.cmd();
    if cmd.flags != 0 {
        bail!(EOPNOTSUPP, "FAULT_QUEUE_ALLOC: flags must be zero");
    }
    bail!(
        EOPNOTSUPP,
        "FAULT_QUEUE_ALLOC: fault queues are not implemented yet"
    )
}
