//! VFIO type1 container compatibility (the kernel's vfio_compat.c).
//!
//! An iommufd context answers the VFIO container ioctls on its compat IOAS
//! (`IOMMU_VFIO_IOAS`): `VFIO_GET_API_VERSION`, `VFIO_CHECK_EXTENSION`,
//! `VFIO_SET_IOMMU`, `VFIO_IOMMU_GET_INFO`, `VFIO_IOMMU_MAP_DMA` and
//! `VFIO_IOMMU_UNMAP_DMA`, with 6.12's answers and errnos (`type1.rs`).
//!
//! # Containers
//!
//! A context opened as `/dev/vfio/vfio` ([`Context::new_vfio_container`],
//! what the preload does for that path) is what the kernel's
//! `IOMMUFD_VFIO_CONTAINER` gives: an iommufd context that accounts pins to
//! the mm (as VFIO does) and whose compat IOAS already exists, standing in
//! for the group a VFIO user would attach (there are no groups here). On a
//! container, and only there, the VFIO type1 dirty page tracking that 6.12's
//! iommufd does not serve is served too (`dirty.rs`, [`tracking`]): `VFIO_IOMMU_DIRTY_PAGES`,
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

//!
//! # Files
//!
//! As `ioas/`: this file holds the objects (containers, the compat IOAS
//! lookup), [`tracking`] the type1 dirty-tracking session kept with the
//! compat IOAS; the handlers are in `ioctl.rs` (`IOMMU_VFIO_IOAS` and the
//! container ioctl switch), `type1.rs` (the type1 container commands) and
//! `dirty.rs` (type1 dirty tracking).

mod dirty;
pub(crate) mod ioctl;
pub(crate) mod tracking;
mod type1;

use std::sync::Arc;

use crate::context::Context;
use crate::ioas::Ioas;
use crate::user::UserMemory;
use crate::{err, Result};

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
