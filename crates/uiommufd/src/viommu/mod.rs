//! Virtual IOMMUs, virtual devices and HW queues (the kernel's viommu.c and
//! the vIOMMU half of driver.c); their ioctls `IOMMU_VIOMMU_ALLOC`,
//! `IOMMU_VDEVICE_ALLOC` and `IOMMU_HW_QUEUE_ALLOC` are in `ioctl.rs`.
//!
//! A [`Viommu`] is the slice of one physical IOMMU that a VM owns: it is
//! made on a nest-parent paging HWPT (which it holds, so the parent cannot
//! be destroyed under it: `EBUSY`) by the device's driver
//! ([`crate::device::DeviceDriver::viommu_init`]), which returns the
//! vIOMMU's driver half, [`ViommuOps`]. What depends on the vIOMMU holds it
//! (`EBUSY` for its destroy until they are gone):
//!
//! * nested HWPTs made with `pt_id` = the vIOMMU (`hwpt/ioctl.rs`),
//!   whose domains the driver makes ([`ViommuOps::alloc_domain_nested`]);
//! * [`Vdevice`]s: a bound device's identity inside the VM (`virt_id`: a
//!   vSID, vRID, ...), one per device, unique per vIOMMU;
//! * vEVENT queues ([`crate::veventq`]), one per type, that the driver
//!   reports events to ([`Viommu::report_event`]);
//! * [`HwQueue`]s: guest queue memory that the hardware reads by physical
//!   address, pinned (and locked against `IOMMU_IOAS_UNMAP`: `EBUSY`)
//!   through an internal access for as long as the queue lives.
//!
//! `IOMMU_HWPT_INVALIDATE` on a vIOMMU ID goes to
//! [`ViommuOps::cache_invalidate`] (`hwpt/ioctl.rs`).
//!
//! A vDEVICE whose device is unbound first is destroyed with it, and its ID
//! stays taken ([`crate::context::Context::tombstone`]): `IOMMU_DESTROY` of
//! it is `ENOENT` until the context closes, as in the kernel.

pub(crate) mod ioctl;

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::access::Access;
use crate::context::{Context, ObjId, Object};
use crate::device::Device;
use crate::hwpt::nested::{NestedDomain, UserData, UserDataArray};
use crate::hwpt::HwptPaging;
use crate::veventq::Veventq;
use crate::{bail, err, Result};

/// The driver half of a vIOMMU (the kernel's `iommufd_viommu_ops`). Every
/// operation is optional: the defaults are what a driver without it gives.
pub trait ViommuOps: Send + Sync + Debug + Any {
    /// A nested domain on the vIOMMU's parent (`alloc_domain_nested`):
    /// `flags` are the `IOMMU_HWPT_ALLOC_*` flags without `FAULT_ID_VALID`.
    /// Default: `EOPNOTSUPP`.
    fn alloc_domain_nested(
        &self,
        viommu: &Viommu,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Arc<dyn NestedDomain>> {
        let _ = (viommu, flags);
        bail!(
            EOPNOTSUPP,
            "the vIOMMU makes no nested domains (data_type {:#x})",
            data.data_type
        )
    }
    /// Handle the invalidation requests of `array` in order
    /// (`cache_invalidate`); returns how many were handled and the result.
    /// Default: `EOPNOTSUPP`, none handled.
    fn cache_invalidate(&self, viommu: &Viommu, array: &UserDataArray<'_>) -> (u32, Result<()>) {
        let _ = viommu;
        (
            0,
            Err(err!(
                EOPNOTSUPP,
                "the vIOMMU takes no cache invalidations (data_type {:#x})",
                array.data_type
            )),
        )
    }
    /// Whether device `dev` may attach to a nested domain of this vIOMMU
    /// (the driver's attach op; the mock needs the device's vDEVICE).
    /// Default: it may.
    fn check_attach(&self, viommu: &Viommu, dev: &Device) -> Result<()> {
        let _ = (viommu, dev);
        Ok(())
    }
    /// Whether HW queues of type `ty` exist (`get_hw_queue_size` non-zero).
    /// Default: none do.
    fn hw_queue_supported(&self, ty: u32) -> bool {
        let _ = ty;
        false
    }
    /// Set up `queue` (`hw_queue_init_phys`): its memory is pinned and
    /// physically contiguous from `base_pa`. The driver may make it depend
    /// on another queue ([`HwQueue::depend_on`]). Default: `EOPNOTSUPP`.
    fn hw_queue_init(&self, viommu: &Viommu, queue: &Arc<HwQueue>, base_pa: u64) -> Result<()> {
        let _ = (viommu, base_pa);
        bail!(
            EOPNOTSUPP,
            "the vIOMMU has no HW queues (type {:#x})",
            queue.queue_type()
        )
    }
    /// `queue` is being destroyed (its `destroy` op). Default: nothing.
    fn hw_queue_destroy(&self, queue: &HwQueue) {
        let _ = queue;
    }
    /// For drivers to recognise their own vIOMMUs.
    fn as_any(&self) -> &dyn Any;
}

/// A virtual IOMMU (`IOMMUFD_OBJ_VIOMMU`).
#[derive(Debug)]
pub struct Viommu {
    ty: u32,
    hwpt: Arc<HwptPaging>,
    /// The physical IOMMU behind it (here: its driver), which devices of
    /// its vDEVICEs and nested HWPTs must share (`EINVAL` otherwise).
    iommu: Option<TypeId>,
    ops: Arc<dyn ViommuOps>,
    /// vDEVICEs by virtual ID (`vdevs`).
    vdevs: Mutex<BTreeMap<u64, Weak<Vdevice>>>,
    /// vEVENT queues, at most one per type.
    veventqs: Mutex<Vec<Weak<Veventq>>>,
    /// Our own object ID once published (0 before).
    id: AtomicU32,
    /// Regions the driver offers through `mmap` of the fd (offset, region),
    /// withdrawn with the vIOMMU.
    mmaps: Vec<(u64, Arc<crate::mmap::MmapRegion>)>,
    /// The context, to withdraw them.
    ctx: Weak<Context>,
}

impl Object for Viommu {
    const KIND: &'static str = "vIOMMU";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_VIOMMU");

    /// A mapping of its mmap region is a user too (the kernel's VMA
    /// open/close).
    fn extra_users(&self) -> usize {
        usize::from(self.mmap_mapped())
    }

    fn check_object(&self, _ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        if !self.hwpt().nest_parent() {
            return Err(format!(
                "vIOMMU {id} is on a HWPT that is not a nest parent"
            ));
        }
        Ok(())
    }
}

impl Viommu {
    /// Whether a region it offers through `mmap` is mapped now.
    pub(crate) fn mmap_mapped(&self) -> bool {
        self.mmaps.iter().any(|(_, r)| r.mapped())
    }
}

impl Drop for Viommu {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.upgrade() {
            for (off, _) in &self.mmaps {
                ctx.mmap_unregister(*off);
            }
        }
    }
}

/// The identity of the physical IOMMU behind `dev` (its driver's type).
fn iommu_of(dev: &Device) -> Option<TypeId> {
    dev.driver().as_any().map(|a| a.type_id())
}

impl Viommu {
    /// The vIOMMU type (`IOMMU_VIOMMU_TYPE_*`).
    pub fn viommu_type(&self) -> u32 {
        self.ty
    }
    /// The nest-parent paging HWPT it was made on.
    pub fn hwpt(&self) -> &Arc<HwptPaging> {
        &self.hwpt
    }
    /// The driver half.
    pub fn ops(&self) -> &Arc<dyn ViommuOps> {
        &self.ops
    }
    /// Its object ID, once published.
    pub fn id(&self) -> Option<ObjId> {
        match self.id.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }
    /// Whether `dev` is behind the same physical IOMMU.
    pub fn same_iommu(&self, dev: &Device) -> bool {
        self.iommu.is_some() && self.iommu == iommu_of(dev)
    }

    /// The device whose vDEVICE has virtual ID `virt_id`
    /// (`iommufd_viommu_find_dev`).
    pub fn find_dev(&self, virt_id: u64) -> Option<Arc<Device>> {
        let v = self.vdevs.lock().get(&virt_id)?.upgrade()?;
        v.device()
    }

    /// The virtual ID of `dev`'s vDEVICE on this vIOMMU
    /// (`iommufd_viommu_get_vdev_id`: `ENOENT` when it has none).
    pub fn vdev_id_of(&self, dev: &Device) -> Result<u64> {
        // upgraded under the lock, dropped after it: the last reference of
        // a vDEVICE destroyed meanwhile unregisters itself (takes the lock)
        let live: Vec<(u64, Arc<Vdevice>)> = self
            .vdevs
            .lock()
            .iter()
            .filter_map(|(&virt, w)| w.upgrade().map(|v| (virt, v)))
            .collect();
        for (virt, v) in &live {
            if v.device()
                .is_some_and(|d| std::ptr::eq(Arc::as_ptr(&d), dev))
            {
                return Ok(*virt);
            }
        }
        bail!(
            ENOENT,
            "device {} has no vDEVICE on vIOMMU {:?}",
            dev.id(),
            self.id()
        )
    }

    /// The vEVENT queue of type `ty`, if one is allocated.
    pub fn find_veventq(&self, ty: u32) -> Option<Arc<Veventq>> {
        let mut qs = self.veventqs.lock();
        qs.retain(|w| w.strong_count() > 0);
        qs.iter()
            .filter_map(Weak::upgrade)
            .find(|q| q.queue_type() == ty)
    }

    /// Register a new vEVENT queue (`EEXIST` when one of its type exists).
    pub(crate) fn add_veventq(&self, q: &Arc<Veventq>) -> Result<()> {
        let mut qs = self.veventqs.lock();
        qs.retain(|w| w.strong_count() > 0);
        if qs
            .iter()
            .filter_map(Weak::upgrade)
            .any(|o| o.queue_type() == q.queue_type())
        {
            bail!(
                EEXIST,
                "vIOMMU {:?} already has a vEVENTQ of type {:#x}",
                self.id(),
                q.queue_type()
            );
        }
        qs.push(Arc::downgrade(q));
        Ok(())
    }

    /// Report a vEVENT of type `ty` (`iommufd_viommu_report_event`):
    /// `EOPNOTSUPP` when no queue of that type is allocated, `EINVAL` for
    /// empty data. A full queue records the loss instead (see
    /// [`crate::veventq`]).
    pub fn report_event(&self, ty: u32, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            bail!(EINVAL, "a vEVENT needs data");
        }
        let Some(q) = self.find_veventq(ty) else {
            bail!(
                EOPNOTSUPP,
                "vIOMMU {:?} has no vEVENTQ of type {ty:#x}",
                self.id()
            );
        };
        q.report(data);
        Ok(())
    }
}

/// A virtual device (`IOMMUFD_OBJ_VDEVICE`): a bound device's identity on
/// a vIOMMU.
#[derive(Debug)]
pub struct Vdevice {
    viommu: Arc<Viommu>,
    dev: Weak<Device>,
    virt_id: u64,
    id: ObjId,
}

impl Object for Vdevice {
    const KIND: &'static str = "vDEVICE";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_VDEVICE");

    fn check_object(&self, _ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        if let Some(d) = self.device() {
            if d.vdevice_id() != Some(id) {
                return Err(format!(
                    "vDEVICE {id}'s device {} does not name it as its vDEVICE",
                    d.id()
                ));
            }
        }
        Ok(())
    }
}

impl Vdevice {
    /// The vIOMMU.
    pub fn viommu(&self) -> &Arc<Viommu> {
        &self.viommu
    }
    /// The device, while it is bound.
    pub fn device(&self) -> Option<Arc<Device>> {
        self.dev.upgrade()
    }
    /// The virtual ID.
    pub fn virt_id(&self) -> u64 {
        self.virt_id
    }
    /// The object ID.
    pub fn id(&self) -> ObjId {
        self.id
    }
}

impl Drop for Vdevice {
    fn drop(&mut self) {
        let me = self as *const Vdevice;
        let mut vdevs = self.viommu.vdevs.lock();
        if vdevs
            .get(&self.virt_id)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), me))
        {
            vdevs.remove(&self.virt_id);
        }
        drop(vdevs);
        if let Some(d) = self.dev.upgrade() {
            d.clear_vdevice(self.id);
        }
    }
}

/// A HW queue (`IOMMUFD_OBJ_HW_QUEUE`): guest queue memory the hardware
/// reads by physical address.
#[derive(Debug)]
pub struct HwQueue {
    viommu: Arc<Viommu>,
    ty: u32,
    index: u32,
    base_addr: u64,
    length: u64,
    /// The internal access that pins (and locks) the queue memory, and the
    /// page-aligned range it pinned.
    access: Arc<Access>,
    pinned: (u64, u64),
    /// A queue this one depends on (`iommufd_hw_queue_depend`): it cannot
    /// be destroyed before this one (`EBUSY`).
    depends: Mutex<Option<Arc<HwQueue>>>,
}

impl Object for HwQueue {
    const KIND: &'static str = "HW queue";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_HW_QUEUE");

    /// The driver's destroy, then the pin and the internal access go.
    fn on_destroy(self: Arc<Self>, ctx: &Context) {
        self.viommu.ops.hw_queue_destroy(&self);
        self.depends.lock().take();
        let (iova, len) = self.pinned;
        self.access.unpin_locked(iova, len);
        self.access.clone().destroy(ctx);
    }
}

impl HwQueue {
    /// The queue type (`IOMMU_HW_QUEUE_TYPE_*`).
    pub fn queue_type(&self) -> u32 {
        self.ty
    }
    /// The logical index the user asked for.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Base IOVA of the queue memory in the nesting parent.
    pub fn base_addr(&self) -> u64 {
        self.base_addr
    }
    /// Length of the queue memory.
    pub fn length(&self) -> u64 {
        self.length
    }
    /// The vIOMMU.
    pub fn viommu(&self) -> &Arc<Viommu> {
        &self.viommu
    }
    /// Make this queue depend on `other`, which then cannot be destroyed
    /// first (`EBUSY`).
    pub fn depend_on(&self, other: Arc<HwQueue>) {
        *self.depends.lock() = Some(other);
    }
}

/// Look up a vIOMMU (`ENOENT` when `id` names nothing or something else:
/// `iommufd_get_viommu`).
pub fn get_viommu(ctx: &Context, id: ObjId) -> Result<Arc<Viommu>> {
    ctx.get::<Viommu>(id)
}
