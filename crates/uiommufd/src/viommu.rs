//! Virtual IOMMUs, virtual devices and HW queues (the kernel's viommu.c and
//! the vIOMMU half of driver.c), with their ioctls `IOMMU_VIOMMU_ALLOC`,
//! `IOMMU_VDEVICE_ALLOC` and `IOMMU_HW_QUEUE_ALLOC`.
//!
//! A [`Viommu`] is the slice of one physical IOMMU that a VM owns: it is
//! made on a nest-parent paging HWPT (which it holds, so the parent cannot
//! be destroyed under it: `EBUSY`) by the device's driver
//! ([`crate::device::DeviceDriver::viommu_init`]), which returns the
//! vIOMMU's driver half, [`ViommuOps`]. What depends on the vIOMMU holds it
//! (`EBUSY` for its destroy until they are gone):
//!
//! * nested HWPTs made with `pt_id` = the vIOMMU ([`alloc_hwpt_nested`]),
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
//! [`ViommuOps::cache_invalidate`] ([`crate::hwpt::nested`]).
//!
//! A vDEVICE whose device is unbound first is destroyed with it, and its ID
//! stays taken ([`crate::context::Context::tombstone`]): `IOMMU_DESTROY` of
//! it is `ENOENT` until the context closes, as in the kernel.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::access::Access;
use crate::context::{Context, ObjId, Object};
use crate::device::{get_device, Device};
use crate::hwpt::nested::{HwptNested, NestedDomain, UserData, UserDataArray};
use crate::hwpt::HwptPaging;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::user::page_size;
use crate::veventq::Veventq;
use crate::{bail, err, Error, Result};

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

/// `IOMMU_VIOMMU_ALLOC` (Linux 6.13).
///
/// Errnos, in the kernel's order: non-zero `flags` or the `DEFAULT` type:
/// `EOPNOTSUPP`; `dev_id` not a device: `ENOENT`; a driver without that
/// vIOMMU type: `EOPNOTSUPP`; `hwpt_id` not a paging HWPT: `ENOENT`; one
/// not made with `NEST_PARENT`: `EINVAL`; then the driver's (the mock: bad
/// data `EINVAL`/`EFAULT`). `__reserved` is not checked (nor is it by 7.2).
pub(crate) fn viommu_alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuViommuAlloc = u.cmd();
    if cmd.flags != 0 || cmd.r#type == IOMMU_VIOMMU_TYPE_DEFAULT {
        bail!(
            EOPNOTSUPP,
            "VIOMMU_ALLOC: flags {:#x} must be 0 and the type not DEFAULT (type {:#x})",
            cmd.flags,
            cmd.r#type
        );
    }
    let dev = get_device(u.ctx, cmd.dev_id)?;
    if !dev.driver().viommu_supported(cmd.r#type) {
        bail!(
            EOPNOTSUPP,
            "VIOMMU_ALLOC: device {}'s IOMMU has no vIOMMU of type {:#x}",
            cmd.dev_id,
            cmd.r#type
        );
    }
    let hwpt = crate::hwpt::get_hwpt_paging(u, cmd.hwpt_id)?;
    if !hwpt.nest_parent() {
        bail!(
            EINVAL,
            "VIOMMU_ALLOC: HWPT {} was not allocated with NEST_PARENT",
            cmd.hwpt_id
        );
    }
    let r = u.ctx.reserve()?;
    let data = UserData {
        data_type: cmd.r#type,
        uptr: cmd.data_uptr,
        len: cmd.data_len,
        mem: &**u.mem,
    };
    let offered = std::cell::RefCell::new(Vec::new());
    let mmap = |region: Arc<crate::mmap::MmapRegion>| {
        let off = u.ctx.mmap_register(region.clone());
        offered.borrow_mut().push((off, region));
        off
    };
    let ops = dev.driver().viommu_init(
        cmd.r#type,
        hwpt.domain(),
        (cmd.data_len != 0).then_some(&data),
        &mmap,
    );
    let mmaps = offered.into_inner();
    let ops = match ops {
        Ok(o) => o,
        Err(e) => {
            for (off, _) in &mmaps {
                u.ctx.mmap_unregister(*off);
            }
            return Err(e);
        }
    };
    let viommu = Arc::new(Viommu {
        ty: cmd.r#type,
        hwpt,
        iommu: iommu_of(&dev),
        ops,
        vdevs: Mutex::new(BTreeMap::new()),
        veventqs: Mutex::new(Vec::new()),
        id: AtomicU32::new(r.id()),
        mmaps,
        ctx: Arc::downgrade(u.ctx),
    });
    cmd.out_viommu_id = r.id();
    u.respond(&cmd)?;
    r.finalize(viommu);
    Ok(0)
}

/// Look up a vIOMMU (`ENOENT` when `id` names nothing or something else:
/// `iommufd_get_viommu`).
pub fn get_viommu(ctx: &Context, id: ObjId) -> Result<Arc<Viommu>> {
    ctx.get::<Viommu>(id)
}

/// `IOMMU_VDEVICE_ALLOC` (Linux 6.13).
///
/// Errnos, in the kernel's order: `viommu_id` not a vIOMMU or `dev_id` not
/// a device: `ENOENT`; a device behind another IOMMU: `EINVAL`; a device
/// that already has a vDEVICE, or a `virt_id` taken on the vIOMMU:
/// `EEXIST`.
pub(crate) fn vdevice_alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuVdeviceAlloc = u.cmd();
    // (`virt_id` indexes an xarray: any u64 fits an unsigned long here)
    let viommu = get_viommu(u.ctx, cmd.viommu_id)?;
    let dev = get_device(u.ctx, cmd.dev_id)?;
    if !viommu.same_iommu(&dev) {
        bail!(
            EINVAL,
            "VDEVICE_ALLOC: device {} is behind another IOMMU than vIOMMU {}",
            cmd.dev_id,
            cmd.viommu_id
        );
    }
    let mut slot = dev.vdevice_slot();
    if let Some(v) = *slot {
        bail!(
            EEXIST,
            "VDEVICE_ALLOC: device {} already has vDEVICE {v}",
            cmd.dev_id
        );
    }
    let r = u.ctx.reserve()?;
    let vdev = {
        let mut vdevs = viommu.vdevs.lock();
        if vdevs
            .get(&cmd.virt_id)
            .is_some_and(|w| w.strong_count() > 0)
        {
            bail!(
                EEXIST,
                "VDEVICE_ALLOC: virtual ID {:#x} is taken on vIOMMU {}",
                cmd.virt_id,
                cmd.viommu_id
            );
        }
        let vdev = Arc::new(Vdevice {
            viommu: viommu.clone(),
            dev: Arc::downgrade(&dev),
            virt_id: cmd.virt_id,
            id: r.id(),
        });
        vdevs.insert(cmd.virt_id, Arc::downgrade(&vdev));
        vdev
    };
    cmd.out_vdevice_id = r.id();
    if let Err(e) = u.respond(&cmd) {
        // dropping the vDEVICE unregisters it (after the device's slot is
        // released: its drop looks at that slot)
        drop(slot);
        drop(vdev);
        return Err(e);
    }
    *slot = Some(r.id());
    drop(slot);
    r.finalize(vdev);
    Ok(0)
}

/// `IOMMU_HW_QUEUE_ALLOC` (Linux 6.17).
///
/// Errnos, in the kernel's order: non-zero `flags` or the `DEFAULT` type:
/// `EOPNOTSUPP`; zero `length`: `EINVAL`; `nesting_parent_iova + length`
/// wraps: `EOVERFLOW`; `viommu_id` not a vIOMMU: `ENOENT`; a vIOMMU
/// without that queue type: `EOPNOTSUPP`; then the pin of the queue memory
/// in the parent's IOAS (`ENOENT` where nothing is mapped, ...), memory that
/// is not physically contiguous: `EFAULT`; then the driver's (the mock: an
/// index past the last `EINVAL`, taken `EEXIST`, the one before it missing
/// `EIO`).
pub(crate) fn hw_queue_alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuHwQueueAlloc = u.cmd();
    if cmd.flags != 0 || cmd.r#type == IOMMU_HW_QUEUE_TYPE_DEFAULT {
        bail!(
            EOPNOTSUPP,
            "HW_QUEUE_ALLOC: flags {:#x} must be 0 and the type not DEFAULT (type {:#x})",
            cmd.flags,
            cmd.r#type
        );
    }
    if cmd.length == 0 {
        bail!(EINVAL, "HW_QUEUE_ALLOC: length is zero");
    }
    if cmd
        .nesting_parent_iova
        .checked_add(cmd.length - 1)
        .is_none()
    {
        bail!(
            EOVERFLOW,
            "HW_QUEUE_ALLOC: iova {:#x} + length {:#x} overflows",
            cmd.nesting_parent_iova,
            cmd.length
        );
    }
    let viommu = get_viommu(u.ctx, cmd.viommu_id)?;
    if !viommu.ops.hw_queue_supported(cmd.r#type) {
        bail!(
            EOPNOTSUPP,
            "HW_QUEUE_ALLOC: vIOMMU {} has no HW queues of type {:#x}",
            cmd.viommu_id,
            cmd.r#type
        );
    }
    let r = u.ctx.reserve()?;
    let ps = page_size();
    let aligned = cmd.nesting_parent_iova & !(ps - 1);
    let offset = cmd.nesting_parent_iova - aligned;
    let Some(len) = offset
        .checked_add(cmd.length)
        .and_then(|l| l.checked_next_multiple_of(ps))
    else {
        bail!(
            ERANGE,
            "HW_QUEUE_ALLOC: the queue's page span overflows (length {:#x})",
            cmd.length
        );
    };
    let access = Access::create_internal(u.ctx)?;
    if let Err(e) = access.attach_ioas(viommu.hwpt.ioas().clone(), viommu.hwpt.ioas_id()) {
        access.destroy(u.ctx);
        return Err(e);
    }
    let pages = match access.pin_locked(aligned, len) {
        Ok(p) => p,
        Err(e) => {
            access.destroy(u.ctx);
            return Err(e);
        }
    };
    if let Some(i) = (1..pages.len()).find(|&i| pages[i] != pages[i - 1] + ps) {
        access.unpin_locked(aligned, len);
        access.destroy(u.ctx);
        bail!(
            EFAULT,
            "HW_QUEUE_ALLOC: the queue memory is not contiguous at page {i}"
        );
    }
    let base_pa = pages[0] + offset;
    let queue = Arc::new(HwQueue {
        viommu: viommu.clone(),
        ty: cmd.r#type,
        index: cmd.index,
        base_addr: cmd.nesting_parent_iova,
        length: cmd.length,
        access,
        pinned: (aligned, len),
        depends: Mutex::new(None),
    });
    if let Err(e) = viommu.ops.hw_queue_init(&viommu, &queue, base_pa) {
        // the driver set nothing up: only the pin and the access go
        let (iova, len) = queue.pinned;
        queue.access.unpin_locked(iova, len);
        queue.access.clone().destroy(u.ctx);
        return Err(e);
    }
    cmd.out_hw_queue_id = r.id();
    if let Err(e) = u.respond(&cmd) {
        r.abort(queue); // the driver's destroy, the pin, the access
        return Err(e);
    }
    r.finalize(queue);
    Ok(0)
}

/// The vIOMMU branch of `IOMMU_HWPT_ALLOC` (`pt_id` is a vIOMMU:
/// `iommufd_viommu_alloc_hwpt_nested`, then the `fault_id`).
///
/// Errnos, in the kernel's order: a device behind another IOMMU: `EINVAL`;
/// flags other than `FAULT_ID_VALID` and `ALLOC_PASID`, no driver data, or
/// a vIOMMU without nested domains: `EOPNOTSUPP`; then the driver's; then a
/// `fault_id` that is not a fault queue: `ENOENT`.
pub(crate) fn alloc_hwpt_nested(
    u: &Ucmd,
    mut cmd: IommuHwptAlloc,
    dev: &Device,
    viommu: Arc<Viommu>,
) -> Result<i32> {
    if !viommu.same_iommu(dev) {
        bail!(
            EINVAL,
            "HWPT_ALLOC: device {} is behind another IOMMU than vIOMMU {}",
            dev.id(),
            cmd.pt_id
        );
    }
    let valid = IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID;
    if cmd.flags & !valid != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: flags {:#x} are not supported for a nested HWPT on a vIOMMU",
            cmd.flags & !valid
        );
    }
    if cmd.data_len == 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: a nested HWPT needs driver data (data_len is 0)"
        );
    }
    let data = UserData {
        data_type: cmd.data_type,
        uptr: cmd.data_uptr,
        len: cmd.data_len,
        mem: &**u.mem,
    };
    let r = u.ctx.reserve()?;
    let domain =
        viommu
            .ops
            .alloc_domain_nested(&viommu, cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID, &data)?;
    let fault = if cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0 {
        Some(crate::fault::get_fault(u.ctx, cmd.fault_id).map_err(|e| {
            Error::new(e.errno().0, format!("HWPT_ALLOC: fault_id: {}", e.reason()))
        })?)
    } else {
        None
    };
    let hwpt = HwptNested::new_on_viommu(viommu, domain, fault);
    if cmd.flags & IOMMU_HWPT_ALLOC_PASID != 0 {
        hwpt.set_pasid_compat();
    }
    hwpt.set_id(r.id());
    cmd.out_hwpt_id = r.id();
    u.respond(&cmd)?;
    r.finalize(hwpt);
    Ok(0)
}
