//! The VFIO container's ioctl entry points: `IOMMU_VFIO_IOAS` (an iommufd
//! command) and the VFIO container commands (numbers outside the iommufd
//! table), routed to the type1 handlers (`type1.rs`, `dirty.rs`), and the
//! prefix copies the VFIO handlers share.

use std::sync::Arc;

use zerocopy::{FromBytes, IntoBytes};

use super::{dirty, type1};
use crate::context::Context;
use crate::uapi::vfio::*;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::user::UserMemory;
use crate::{bail, Error, Result};

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

/// An ioctl number outside the iommufd table: the VFIO container API
/// (`iommufd_vfio_ioctl`). `arg` is the user pointer, or the plain value
/// for `VFIO_CHECK_EXTENSION` and `VFIO_SET_IOMMU`. Numbers we do not serve
/// answer `ENOTTY` (the kernel's `ENOIOCTLCMD`).
pub(crate) fn container_ioctl(ctx: &Arc<Context>, cmd: u32, arg: u64) -> Result<i32> {
    match cmd {
        VFIO_GET_API_VERSION => Ok(VFIO_API_VERSION),
        VFIO_SET_IOMMU => type1::set_iommu(ctx, arg),
        VFIO_CHECK_EXTENSION => type1::check_extension(ctx, arg),
        VFIO_IOMMU_GET_INFO => type1::get_info(ctx, arg),
        VFIO_IOMMU_MAP_DMA => type1::map_dma(ctx, arg),
        VFIO_IOMMU_UNMAP_DMA => type1::unmap_dma(ctx, arg),
        VFIO_IOMMU_DIRTY_PAGES if ctx.is_vfio_container() => dirty::dirty_pages(ctx, arg),
        VFIO_IOMMU_DIRTY_PAGES => bail!(
            ENOTTY,
            "VFIO_IOMMU_DIRTY_PAGES is served on /dev/vfio/vfio containers only (6.12's /dev/iommu answers ENOTTY)"
        ),
        _ => bail!(
            ENOTTY,
            "ioctl {cmd:#x} is neither an iommufd command nor a VFIO container command we serve"
        ),
    }
}

/// Copy in the first `min(n, sizeof T)` bytes of a `T` at `addr` in `mem`
/// (the rest zero): the `copy_from_user(&s, arg, minsz)` of the VFIO
/// handlers, the container's and the device files' (`EFAULT`).
pub(crate) fn read_prefix_from<T: FromBytes + IntoBytes>(
    mem: &dyn UserMemory,
    addr: u64,
    n: usize,
    what: &'static str,
) -> Result<T> {
    let mut v = T::new_zeroed();
    let bytes = v.as_mut_bytes();
    let n = n.min(bytes.len());
    mem.read(addr, &mut bytes[..n])
        .map_err(|_| Error::fault(what))?;
    Ok(v)
}

/// [`read_prefix_from`] the context's memory.
pub(crate) fn read_prefix<T: FromBytes + IntoBytes>(
    ctx: &Context,
    addr: u64,
    n: usize,
    what: &'static str,
) -> Result<T> {
    read_prefix_from(&**ctx.memory(), addr, n, what)
}

/// `EINVAL` when a command's `argsz` is below `min`, the first check of
/// every VFIO container command after its copy in.
pub(crate) fn check_argsz(cmd: &str, argsz: u32, min: usize) -> Result<()> {
    if (argsz as usize) < min {
        bail!(EINVAL, "{cmd}: argsz {argsz} is below the minimum {min}");
    }
    Ok(())
}

/// Copy out the first `n` bytes of `v` to `addr` in `mem` (`EFAULT`), the
/// `copy_to_user` of the VFIO handlers, the container's and the device
/// files'.
pub(crate) fn write_prefix_to<T: IntoBytes + zerocopy::Immutable>(
    mem: &dyn UserMemory,
    addr: u64,
    v: &T,
    n: usize,
    what: &'static str,
) -> Result<()> {
    let bytes = v.as_bytes();
    let n = n.min(bytes.len());
    mem.write(addr, &bytes[..n]).map_err(|_| Error::fault(what))
}

/// [`write_prefix_to`] the context's memory.
pub(crate) fn write_prefix<T: IntoBytes + zerocopy::Immutable>(
    ctx: &Context,
    addr: u64,
    v: &T,
    n: usize,
    what: &'static str,
) -> Result<()> {
    write_prefix_to(&**ctx.memory(), addr, v, n, what)
}
