//! HW page tables, devices and fault queues (the kernel's hw_pagetable.c,
//! device.c, fault.c).
//!
//! These objects arrive with the devices issue. Until then each command
//! performs the kernel's argument checks in the kernel's order and then
//! looks up the object it names, which cannot exist yet: the answer is
//! exactly what Linux 6.12 gives for a missing object (`ENOENT`).

use crate::uapi::dispatch::Ucmd;
use crate::uapi::*;
use crate::{bail, Result};

/// Look up a device: no device object exists yet.
fn no_object(u: &Ucmd, what: &str, id: u32) -> Result<i32> {
    match u.ctx.get(id) {
        Ok(o) => bail!(ENOENT, "object {id} is a {}, not a {what}", o.kind()),
        Err(_) => bail!(ENOENT, "no {what} with ID {id}"),
    }
}

/// `IOMMU_HWPT_ALLOC`
pub(crate) fn alloc(u: &Ucmd) -> Result<i32> {
    let cmd: IommuHwptAlloc = u.cmd();
    if cmd.__reserved != 0 {
        bail!(EOPNOTSUPP, "HWPT_ALLOC: __reserved must be zero");
    }
    if (cmd.data_type == IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0) {
        bail!(
            EINVAL,
            "HWPT_ALLOC: data_len must be zero exactly when data_type is NONE"
        );
    }
    no_object(u, "device", cmd.dev_id)
}

/// `IOMMU_GET_HW_INFO`
pub(crate) fn get_hw_info(u: &Ucmd) -> Result<i32> {
    let cmd: IommuHwInfo = u.cmd();
    if cmd.flags != 0 || cmd.__reserved != [0; 3] {
        bail!(EOPNOTSUPP, "GET_HW_INFO: flags and __reserved must be zero");
    }
    no_object(u, "device", cmd.dev_id)
}

/// `IOMMU_HWPT_SET_DIRTY_TRACKING`
pub(crate) fn set_dirty_tracking(u: &Ucmd) -> Result<i32> {
    let cmd: IommuHwptSetDirtyTracking = u.cmd();
    if cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_SET_DIRTY_TRACKING: unknown flags {:#x}",
            cmd.flags
        );
    }
    no_object(u, "paging HWPT", cmd.hwpt_id)
}

/// `IOMMU_HWPT_GET_DIRTY_BITMAP`
pub(crate) fn get_dirty_bitmap(u: &Ucmd) -> Result<i32> {
    let cmd: IommuHwptGetDirtyBitmap = u.cmd();
    if cmd.flags & !IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0 || cmd.__reserved != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_GET_DIRTY_BITMAP: unknown flags {:#x} or non-zero __reserved",
            cmd.flags
        );
    }
    no_object(u, "paging HWPT", cmd.hwpt_id)
}

/// Most entries one `IOMMU_HWPT_INVALIDATE` may carry.
const INVALIDATE_ENTRY_NUM_MAX: u32 = 1 << 19;

/// `IOMMU_HWPT_INVALIDATE`: on failure the reply still reports `entry_num`
/// (how many entries were handled: none here).
pub(crate) fn invalidate(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuHwptInvalidate = u.cmd();
    let page = crate::user::page_size();
    let rc = if cmd.__reserved != 0 {
        Err(crate::err!(
            EOPNOTSUPP,
            "HWPT_INVALIDATE: __reserved must be zero"
        ))
    } else if cmd.entry_num != 0
        && (cmd.data_uptr == 0
            || cmd.entry_len == 0
            || cmd.entry_len as u64 > page
            || cmd.entry_num > INVALIDATE_ENTRY_NUM_MAX)
    {
        Err(crate::err!(
            EINVAL,
            "HWPT_INVALIDATE: bad data_uptr, entry_len or entry_num"
        ))
    } else {
        no_object(u, "nested HWPT", cmd.hwpt_id)
    };
    cmd.entry_num = 0;
    u.respond(&cmd)?;
    rc
}

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
