//! The fault queue's ioctl handler: `IOMMU_FAULT_QUEUE_ALLOC`. The object
//! and its fd are in `mod.rs`.

use std::sync::Arc;

use super::{Fault, FaultFile};
use crate::files;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::{bail, Result};

/// `IOMMU_FAULT_QUEUE_ALLOC`: a fault queue object and its fd (close-on-exec).
pub(crate) fn fault_queue_alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuFaultAlloc = u.cmd();
    if cmd.flags != 0 {
        bail!(EOPNOTSUPP, "FAULT_QUEUE_ALLOC: flags must be zero");
    }
    let r = u.ctx.reserve()?;
    let fault = Fault::new();
    let file = Arc::new(FaultFile {
        fault: fault.clone(),
        _ctx: u.ctx.clone(),
    });
    fault.file.set(&file);
    files::create_published(file, |fd| {
        cmd.out_fault_id = r.id();
        cmd.out_fault_fd = fd as u32;
        u.respond(&cmd)
    })?;
    r.finalize(fault);
    Ok(0)
}
