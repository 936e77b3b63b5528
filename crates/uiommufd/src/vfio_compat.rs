//! VFIO type1 container compatibility (the kernel's vfio_compat.c).
//!
//! Today: `IOMMU_VFIO_IOAS` (which IOAS a VFIO container on this context
//! uses). The VFIO container ioctls themselves arrive with the compat issue;
//! until then every non-iommufd ioctl number answers `ENOTTY`, as the kernel
//! does for numbers it does not know.

use std::sync::Arc;

use crate::context::Context;
use crate::uapi::dispatch::Ucmd;
use crate::uapi::*;
use crate::{bail, Result};

/// `IOMMU_VFIO_IOAS`
pub(crate) fn vfio_ioas(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuVfioIoas = u.cmd();
    if cmd.__reserved != 0 {
        bail!(EOPNOTSUPP, "VFIO_IOAS: __reserved must be zero");
    }
    match cmd.op {
        IOMMU_VFIO_IOAS_GET => {
            cmd.ioas_id = u.ctx.compat_ioas()?;
            u.respond(&cmd)?;
        }
        IOMMU_VFIO_IOAS_SET => {
            u.ctx.ioas(cmd.ioas_id)?;
            u.ctx.set_compat_ioas(Some(cmd.ioas_id));
        }
        IOMMU_VFIO_IOAS_CLEAR => u.ctx.set_compat_ioas(None),
        op => bail!(EOPNOTSUPP, "VFIO_IOAS: unknown op {op}"),
    }
    Ok(0)
}

/// An ioctl number outside the iommufd table: the VFIO container API.
pub(crate) fn ioctl(_ctx: &Arc<Context>, cmd: u32, _arg: u64) -> Result<i32> {
    bail!(
        ENOTTY,
        "ioctl {cmd:#x} is neither an iommufd command nor a VFIO container command we serve"
    )
}
