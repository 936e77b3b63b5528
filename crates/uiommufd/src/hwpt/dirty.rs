//! Dirty tracking on paging HWPTs (the kernel's `iommufd_hwpt_set_dirty_tracking`,
//! `iommufd_hwpt_get_dirty_bitmap`, iova_bitmap.c).

use super::get_hwpt_paging;
use crate::uapi::dispatch::Ucmd;
use crate::uapi::*;
use crate::{bail, Result};

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
    get_hwpt_paging(u, cmd.hwpt_id)?;
    bail!(
        EOPNOTSUPP,
        "HWPT_SET_DIRTY_TRACKING: dirty tracking is not implemented yet"
    )
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
    get_hwpt_paging(u, cmd.hwpt_id)?;
    bail!(
        EOPNOTSUPP,
        "HWPT_GET_DIRTY_BITMAP: dirty tracking is not implemented yet"
    )
}
