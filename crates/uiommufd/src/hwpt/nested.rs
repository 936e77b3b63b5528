//! Nested HWPTs (user-managed stage-1 page tables on a nest-parent HWPT;
//! the kernel's `iommufd_hwpt_nested`). Their allocation and cache
//! invalidation handlers are in `ioctl.rs`.
//!
//! A nested HWPT holds its parent paging HWPT (so the parent cannot be
//! destroyed under it: `EBUSY`) and a driver's [`NestedDomain`]: a
//! translation the *user* manages (the guest's stage-1 table), which the
//! engine never maps into. What the engine does with it: attach devices
//! (whose DMA then goes through the parent's stage-2 mapping of the IOAS),
//! forward cache invalidations to the driver, and, when the HWPT was made
//! with a fault queue, deliver the devices' I/O page faults there.
//!
//! Driver data arrives as [`UserData`] (one struct) or [`UserDataArray`]
//! (an array of entries), copied with the kernel's size rules: a type that
//! is not the driver's, or a length below the struct's first version or
//! above what the driver understands, is `EINVAL`; an unreadable pointer is
//! `EFAULT`; a shorter struct is zero-extended.

use std::fmt::Debug;
use std::sync::Arc;

use super::{HwptCore, HwptPaging};
use crate::context::{Context, ObjId, Object};
pub use crate::domain::{NestedDomain, UserData, UserDataArray};
use crate::fault::Fault;

/// A nested HW page table.
#[derive(Debug)]
pub struct HwptNested {
    parent: Arc<HwptPaging>,
    /// The vIOMMU it was made on (`pt_id` a vIOMMU), which it holds.
    viommu: Option<Arc<crate::viommu::Viommu>>,
    domain: Arc<dyn NestedDomain>,
    fault: Option<Arc<Fault>>,
    core: HwptCore,
}

impl Object for HwptNested {
    const KIND: &'static str = "nested HWPT";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_HWPT_NESTED");

    fn check_object(&self, _ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        self.core.check_id(Self::KIND, id)?;
        if !self.parent().nest_parent() || self.parent().auto_domain() {
            return Err(format!(
                "nested HWPT {id} has a parent that is not a manual nest parent"
            ));
        }
        Ok(())
    }
}

impl HwptNested {
    /// A nested HWPT of `domain` on `parent`, delivering I/O page faults to
    /// `fault` when given.
    pub fn new(
        parent: Arc<HwptPaging>,
        domain: Arc<dyn NestedDomain>,
        fault: Option<Arc<Fault>>,
    ) -> Arc<HwptNested> {
        Arc::new(HwptNested {
            parent,
            viommu: None,
            domain,
            fault,
            core: HwptCore::default(),
        })
    }

    /// A nested HWPT of `domain` on `viommu` (whose parent is the
    /// vIOMMU's nest-parent HWPT), delivering I/O page faults to `fault`
    /// when given.
    pub fn new_on_viommu(
        viommu: Arc<crate::viommu::Viommu>,
        domain: Arc<dyn NestedDomain>,
        fault: Option<Arc<Fault>>,
    ) -> Arc<HwptNested> {
        Arc::new(HwptNested {
            parent: viommu.hwpt().clone(),
            viommu: Some(viommu),
            domain,
            fault,
            core: HwptCore::default(),
        })
    }

    /// The vIOMMU it was made on, if any.
    pub fn viommu(&self) -> Option<&Arc<crate::viommu::Viommu>> {
        self.viommu.as_ref()
    }

    /// The parent paging HWPT (whose mapping DMA goes through).
    pub fn parent(&self) -> &Arc<HwptPaging> {
        &self.parent
    }
    /// The user-managed domain.
    pub fn domain(&self) -> &Arc<dyn NestedDomain> {
        &self.domain
    }
    /// The fault queue I/O page faults go to, if any.
    pub fn fault(&self) -> Option<&Arc<Fault>> {
        self.fault.as_ref()
    }
    hwpt_core_accessors!();
}
