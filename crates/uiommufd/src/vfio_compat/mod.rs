//! VFIO type1 container compatibility (the kernel's vfio_compat.c).
//!
//! An iommufd context answers the VFIO container ioctls on its compat IOAS
//! (`IOMMU_VFIO_IOAS`): `VFIO_GET_API_VERSION`, `VFIO_CHECK_EXTENSION`,
//! `VFIO_SET_IOMMU`, `VFIO_IOMMU_GET_INFO`, `VFIO_IOMMU_MAP_DMA` and
//! `VFIO_IOMMU_UNMAP_DMA`, with 6.12's answers and errnos ([`type1`]).
//!
//! # Containers
//!
//! A context opened as `/dev/vfio/vfio` ([`Context::new_vfio_container`],
//! what the preload does for that path) is what the kernel's
//! `IOMMUFD_VFIO_CONTAINER` gives: an iommufd context that accounts pins to
//! the mm (as VFIO does) and whose compat IOAS already exists, standing in
//! for the group a VFIO user would attach (there are no groups here). On a
//! container, and only there, the VFIO type1 dirty page tracking that 6.12's
//! iommufd does not serve is served too ([`dirty`]): `VFIO_IOMMU_DIRTY_PAGES`,
//! `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP` and the migration capability of
//! `VFIO_IOMMU_GET_INFO`. A plain `/dev/iommu` context stays exactly 6.12
//! (the kernel selftest checks that its info chain holds no other cap).
//!
//! # v1 and v2
//!
//! As in the kernel, type1 (v1) vs type1v2 is not a state of its own: v1
//! disables large pages on the compat IOAS, and an unmap on an IOAS with
//! large pages disabled first cuts the areas at both ends of the range
//! (`IoPagetable::cut_iova`), so that v1 may unmap any aligned piece of a
//! mapping while v2 must cover whole mappings (`ENOENT`).

pub mod dirty;
pub mod type1;

use std::sync::Arc;

use zerocopy::{FromBytes, IntoBytes};

use crate::context::Context;
use crate::ioas::Ioas;
use crate::uapi::vfio::*;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::user::UserMemory;
use crate::{bail, err, Error, Result};

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
pub(crate) fn ioctl(ctx: &Arc<Context>, cmd: u32, arg: u64) -> Result<i32> {
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

impl Context {
    /// A VFIO container over this process's memory: what opening
    /// `/dev/vfio/vfio` gives (see the module documentation).
    pub fn new_vfio_container() -> Result<Arc<Context>> {
        Self::vfio_container_with_memory(Arc::new(crate::user::SelfMemory))
    }

    /// A VFIO container whose user pointers refer to `mem`.
    pub fn vfio_container_with_memory(mem: Arc<dyn UserMemory>) -> Result<Arc<Context>> {
        let ctx = Context::with_memory(mem);
        // VFIO accounts pins to the mm; the kernel's /dev/vfio/vfio open too.
        ctx.set_rlimit_mode(1)?;
        ctx.set_vfio_container();
        let id = ctx.ioas_alloc()?;
        ctx.set_compat_ioas(Some(id));
        Ok(ctx)
    }
}

/// The compat IOAS (`get_compat_ioas`): `ENODEV` when none is set.
pub(crate) fn compat_ioas(ctx: &Context) -> Result<Arc<Ioas>> {
    let id = ctx.compat_ioas()?;
    // (the kernel's get_compat_ioas locks the object directly: no
    // iommufd_get_object, so no injection point)
    match ctx.lookup::<Ioas>(id) {
        Ok(i) => Ok(i),
        Err(_) => Err(err!(ENODEV, "the compat IOAS {id} is gone")),
    }
}

/// Copy in the first `min(n, sizeof T)` bytes of a `T` at `addr` (the rest
/// zero): the `copy_from_user(&s, arg, minsz)` of the VFIO handlers.
pub(crate) fn read_prefix<T: FromBytes + IntoBytes>(
    ctx: &Context,
    addr: u64,
    n: usize,
    what: &'static str,
) -> Result<T> {
    let mut v = T::new_zeroed();
    let bytes = v.as_mut_bytes();
    let n = n.min(bytes.len());
    ctx.memory()
        .read(addr, &mut bytes[..n])
        .map_err(|_| Error::fault(what))?;
    Ok(v)
}

/// Copy out the first `n` bytes of `v` to `addr` (`EFAULT`).
pub(crate) fn write_prefix<T: IntoBytes + zerocopy::Immutable>(
    ctx: &Context,
    addr: u64,
    v: &T,
    n: usize,
    what: &'static str,
) -> Result<()> {
    let bytes = v.as_bytes();
    let n = n.min(bytes.len());
    ctx.memory()
        .write(addr, &bytes[..n])
        .map_err(|_| Error::fault(what))
}
