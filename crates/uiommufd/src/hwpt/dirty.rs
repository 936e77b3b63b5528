//! Dirty tracking on paging HWPTs (the kernel's `iommufd_hwpt_set_dirty_tracking`
//! and `iommufd_hwpt_get_dirty_bitmap`). The work is done by the IO page
//! table of the HWPT's IOAS (`io_pagetable/dirty.rs`, which also documents
//! the bitmap layout and the errno rules).

use super::get_hwpt_paging;
use crate::io_pagetable::DirtyRequest;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::{bail, Result};

/// `IOMMU_HWPT_SET_DIRTY_TRACKING`: `EOPNOTSUPP` for unknown flags, the
/// HWPT lookup's errno (`ENOENT`), `EOPNOTSUPP` when the HWPT's domain was
/// not allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` (an automatic HWPT
/// included). Enabling clears
/// the dirty state of every mapped area first. `__reserved` is not checked
/// (6.12 does not).
pub(crate) fn set_dirty_tracking(u: &Ucmd) -> Result<i32> {
    let cmd: IommuHwptSetDirtyTracking = u.cmd();
    if cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_SET_DIRTY_TRACKING: unknown flags {:#x}",
            cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE
        );
    }
    let hwpt = get_hwpt_paging(u, cmd.hwpt_id)?;
    refuse_auto(&hwpt, cmd.hwpt_id)?;
    let enable = cmd.flags & IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0;
    hwpt.ioas()
        .iopt()
        .set_dirty_tracking(hwpt.domain().id(), enable)?;
    tracing::debug!(hwpt = cmd.hwpt_id, enable, "HWPT dirty tracking set");
    Ok(0)
}

/// `IOMMU_HWPT_GET_DIRTY_BITMAP`: `EOPNOTSUPP` for unknown flags or a
/// non-zero `__reserved`, the HWPT lookup's errno (`ENOENT`), then the IO
/// page table's range checks (`EINVAL`/`EOVERFLOW`), `EOPNOTSUPP` for a
/// domain without dirty tracking, `EFAULT` for a bitmap we cannot update.
pub(crate) fn get_dirty_bitmap(u: &Ucmd) -> Result<i32> {
    let cmd: IommuHwptGetDirtyBitmap = u.cmd();
    if cmd.flags & !IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0 || cmd.__reserved != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_GET_DIRTY_BITMAP: unknown flags {:#x} or non-zero __reserved",
            cmd.flags
        );
    }
    let hwpt = get_hwpt_paging(u, cmd.hwpt_id)?;
    let req = DirtyRequest {
        iova: cmd.iova,
        length: cmd.length,
        page_size: cmd.page_size,
        no_clear: cmd.flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0,
    };
    if hwpt.auto_domain() {
        // the range checks come first, then the missing dirty ops
        hwpt.ioas().iopt().check_dirty_request(&req)?;
        refuse_auto(&hwpt, cmd.hwpt_id)?;
    }
    hwpt.ioas().iopt().read_and_clear_dirty_user(
        hwpt.domain().id(),
        &req,
        cmd.data,
        u.mem.as_ref(),
    )?;
    Ok(0)
}

/// An automatic HWPT (made by attaching a device to an IOAS) has a domain
/// without dirty ops in the kernel (drivers give them only to domains
/// allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`): `EOPNOTSUPP`. The
/// engine's VT-d automatic domains can track (a type1 container's
/// `VFIO_IOMMU_DIRTY_PAGES` uses that, inside the engine), but the uAPI
/// answers as the kernel does.
fn refuse_auto(hwpt: &super::HwptPaging, id: u32) -> Result<()> {
    if hwpt.auto_domain() {
        bail!(
            EOPNOTSUPP,
            "HWPT {id} is an automatic HWPT, whose domain has no dirty tracking (allocate one with \
             IOMMU_HWPT_ALLOC_DIRTY_TRACKING)"
        );
    }
    Ok(())
}
