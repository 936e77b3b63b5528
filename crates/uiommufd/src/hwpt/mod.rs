//! HW page tables (the kernel's hw_pagetable.c) and their ioctls, plus
//! `IOMMU_GET_HW_INFO`.
//!
//! A paging HWPT is one domain kept in sync with one IOAS: creating it adds
//! the domain to the IOAS's IO page table (which fills it from the pinned
//! pages); destroying it removes the domain again. It holds its IOAS, so the
//! IOAS cannot be destroyed under it (`EBUSY`).
//!
//! Nested HWPTs on a nest-parent paging HWPT and their fault queue
//! (`fault_id`) are in [`nested`]; fault queues in [`crate::fault`]. As in
//! `ioas/`, the objects are here and in [`nested`], the ioctl handlers
//! (`IOMMU_HWPT_ALLOC`, `IOMMU_GET_HW_INFO`, `IOMMU_HWPT_INVALIDATE`, dirty
//! tracking) in `ioctl.rs`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// The [`HwptCore`] accessors of a HWPT type that keeps one in its field
/// `core`: paging and nested HWPTs share them.
macro_rules! hwpt_core_accessors {
    () => {
        /// Its object ID, once published.
        pub fn id(&self) -> Option<ObjId> {
            self.core.id()
        }
        pub(crate) fn set_id(&self, id: ObjId) {
            self.core.set_id(id);
        }
        pub(crate) fn add_device(&self, dev: ObjId) {
            self.core.add_device(dev);
        }
        pub(crate) fn remove_device(&self, dev: ObjId) {
            self.core.remove_device(dev);
        }
        /// IDs of the devices attached.
        pub fn devices(&self) -> Vec<ObjId> {
            self.core.devices()
        }
        /// Whether it was made with `IOMMU_HWPT_ALLOC_PASID` (a device's
        /// PASID may attach to it, and a device with PASIDs attached may
        /// attach its RID only to such a HWPT).
        pub fn pasid_compat(&self) -> bool {
            self.core.pasid_compat()
        }
        /// Mark it made with `IOMMU_HWPT_ALLOC_PASID` (before it is
        /// published).
        pub(crate) fn set_pasid_compat(&self) {
            self.core.set_pasid_compat();
        }
    };
}

pub(crate) mod ioctl;
pub mod nested;

use crate::context::{Context, ObjId, Object};
use crate::domain::Domain;
use crate::ioas::Ioas;
use crate::ucmd::Ucmd;
use crate::Result;

/// What paging and nested HWPTs both keep: their own object ID once
/// published, the devices attached, and whether they were made with
/// `IOMMU_HWPT_ALLOC_PASID`.
#[derive(Debug, Default)]
pub(crate) struct HwptCore {
    /// Our own object ID once published (0 before).
    id: AtomicU32,
    devices: Mutex<Vec<ObjId>>,
    pasid_compat: AtomicBool,
}

impl HwptCore {
    fn id(&self) -> Option<ObjId> {
        match self.id.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }
    fn set_id(&self, id: ObjId) {
        self.id.store(id, Ordering::Release);
    }
    /// The first check of a HWPT's `check_object`: it was published as
    /// `id` (`kind` names it in the message).
    fn check_id(&self, kind: &str, id: ObjId) -> std::result::Result<(), String> {
        match self.id() {
            Some(own) if own == id => Ok(()),
            own => Err(format!("{kind} {id} believes its ID is {own:?}")),
        }
    }
    fn add_device(&self, dev: ObjId) {
        self.devices.lock().push(dev);
    }
    fn remove_device(&self, dev: ObjId) {
        self.devices.lock().retain(|&d| d != dev);
    }
    fn devices(&self) -> Vec<ObjId> {
        self.devices.lock().clone()
    }
    fn pasid_compat(&self) -> bool {
        self.pasid_compat.load(Ordering::Acquire)
    }
    fn set_pasid_compat(&self) {
        self.pasid_compat.store(true, Ordering::Release);
    }
}

/// A paging HW page table: a domain that mirrors an IOAS.
#[derive(Debug)]
pub struct HwptPaging {
    ioas: Arc<Ioas>,
    ioas_id: ObjId,
    domain: Arc<dyn Domain>,
    auto_domain: bool,
    nest_parent: bool,
    core: HwptCore,
}

impl Object for HwptPaging {
    const KIND: &'static str = "paging HWPT";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_HWPT_PAGING");

    fn check_object(&self, _ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        self.core.check_id(Self::KIND, id)
    }
}

impl HwptPaging {
    /// Make a HWPT of `domain` on `ioas`: the domain is added to the IOAS's
    /// IO page table and filled. On error nothing changes.
    pub fn new(
        ioas: Arc<Ioas>,
        ioas_id: ObjId,
        domain: Arc<dyn Domain>,
        auto_domain: bool,
        nest_parent: bool,
    ) -> Result<Arc<HwptPaging>> {
        ioas.iopt().add_domain(domain.clone())?;
        let h = Arc::new(HwptPaging {
            ioas,
            ioas_id,
            domain,
            auto_domain,
            nest_parent,
            core: HwptCore::default(),
        });
        Ok(h)
    }

    /// The domain.
    pub fn domain(&self) -> &Arc<dyn Domain> {
        &self.domain
    }
    /// The IOAS it mirrors.
    pub fn ioas(&self) -> &Arc<Ioas> {
        &self.ioas
    }
    /// The IOAS's ID.
    pub fn ioas_id(&self) -> ObjId {
        self.ioas_id
    }
    /// Whether attach made it (and the last detach destroys it).
    pub fn auto_domain(&self) -> bool {
        self.auto_domain
    }
    /// Whether nested HWPTs may use it as their parent.
    pub fn nest_parent(&self) -> bool {
        self.nest_parent
    }
    hwpt_core_accessors!();
}

impl Drop for HwptPaging {
    fn drop(&mut self) {
        // (the IOAS's weak list entry is pruned lazily by the next search)
        self.ioas.iopt().remove_domain(self.domain.id());
    }
}

pub(crate) fn get_hwpt_paging(u: &Ucmd, id: ObjId) -> Result<Arc<HwptPaging>> {
    u.ctx.get::<HwptPaging>(id)
}
