//! Devices bound to a context and what they are attached to (the kernel's
//! device.c): bind, attach to an IOAS (auto domain) or a HWPT, replace,
//! detach.
//!
//! A [`Device`] is generic; what the hardware can do comes from its
//! [`DeviceDriver`] (the mock driver's devices are the first; emulated
//! devices are next). Each device is its own group (mock devices are).
//!
//! References: an attached device holds an `Arc` of its HWPT, so the HWPT
//! cannot be destroyed while devices use it (`EBUSY`); an auto-domain HWPT
//! is destroyed when its last device leaves. The driver that bound the
//! device holds an `Arc` of it, so the device ID cannot be destroyed by
//! `IOMMU_DESTROY` (`EBUSY`) — the driver unbinds it.
//!
//! A device attaches to a paging HWPT or to a nested HWPT. Its DMA goes
//! through [`Device::dma_domain`]: a paging HWPT's domain; for a nested
//! HWPT, the driver's two-stage domain when it has one (the VT-d driver's
//! first-stage walk through the parent: [`crate::vtd::nested`]), else the
//! parent's stage-2 mapping of the IOAS ([`Device::hwpt`], the mock's
//! nested domains). When the nested HWPT has a fault queue, the device's
//! page requests ([`Device::report_fault`]) are delivered there.
//! Each attachment has its own handle: when the device leaves a
//! fault-capable HWPT, the faults raised through that attachment are
//! answered `INVALID` (see [`crate::fault`]).
//!
//! Lock order: `Ioas::hwpts` (auto-domain search) → `Device::attached` →
//! the IOAS's IO page table locks; `Device::attached` → `Fault::state`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::context::{AnyObject, Context, ObjId, Object};
use crate::domain::Domain;
pub use crate::domain::{DeviceDriver, NestingOps};
use crate::fault::{resp, Fault, FaultGroup, PageFault};
use crate::hwpt::nested::HwptNested;
use crate::hwpt::HwptPaging;
use crate::ioas::Ioas;
use crate::{bail, err, Error, Result};

/// `EINVAL` for an attach to object `pt_id`, which is not a page table.
fn not_attachable(pt_id: ObjId, pt: &AnyObject) -> Error {
    err!(
        EINVAL,
        "object {pt_id} is a {}, which a device cannot attach to",
        pt.kind()
    )
}

/// A HWPT a device can be attached to.
#[derive(Debug, Clone)]
pub enum HwptRef {
    /// A paging HWPT.
    Paging(Arc<HwptPaging>),
    /// A nested HWPT.
    Nested(Arc<HwptNested>),
}

impl HwptRef {
    /// The HWPT `pt` is, when it is one a device can attach to (paging or
    /// nested).
    pub(crate) fn of(pt: &AnyObject) -> Option<HwptRef> {
        if let Some(h) = pt.downcast::<HwptPaging>() {
            Some(HwptRef::Paging(h))
        } else {
            pt.downcast::<HwptNested>().map(HwptRef::Nested)
        }
    }

    /// The paging HWPT DMA goes through (a nested HWPT's parent; the
    /// kernel's `find_hwpt_paging`).
    pub fn paging(&self) -> &Arc<HwptPaging> {
        match self {
            HwptRef::Paging(h) => h,
            HwptRef::Nested(n) => n.parent(),
        }
    }
    /// The domain a device attached here does DMA through: a paging HWPT's
    /// domain; for a nested HWPT its driver's two-stage domain
    /// ([`NestedDomain::dma_domain`](crate::domain::NestedDomain::dma_domain)) when it has one, else the parent's.
    pub fn dma_domain(&self) -> Arc<dyn Domain> {
        match self {
            HwptRef::Paging(h) => h.domain().clone(),
            HwptRef::Nested(n) => n
                .domain()
                .dma_domain()
                .unwrap_or_else(|| n.parent().domain().clone()),
        }
    }
    /// The fault queue of the HWPT, if any.
    pub fn fault(&self) -> Option<&Arc<Fault>> {
        match self {
            HwptRef::Paging(_) => None,
            HwptRef::Nested(n) => n.fault(),
        }
    }
    fn ptr_eq(&self, other: &HwptRef) -> bool {
        match (self, other) {
            (HwptRef::Paging(a), HwptRef::Paging(b)) => Arc::ptr_eq(a, b),
            (HwptRef::Nested(a), HwptRef::Nested(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
    fn auto_domain(&self) -> bool {
        matches!(self, HwptRef::Paging(h) if h.auto_domain())
    }
    /// Made with `IOMMU_HWPT_ALLOC_PASID`.
    fn pasid_compat(&self) -> bool {
        match self {
            HwptRef::Paging(h) => h.pasid_compat(),
            HwptRef::Nested(n) => n.pasid_compat(),
        }
    }
    fn add_device(&self, dev: ObjId) {
        match self {
            HwptRef::Paging(h) => h.add_device(dev),
            HwptRef::Nested(n) => n.add_device(dev),
        }
    }
    fn remove_device(&self, dev: ObjId) {
        match self {
            HwptRef::Paging(h) => h.remove_device(dev),
            HwptRef::Nested(n) => n.remove_device(dev),
        }
    }
}

/// A fresh attachment handle (the kernel's `iommufd_attach_handle`).
fn next_handle() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A device bound to a context.
#[derive(Debug)]
pub struct Device {
    id: ObjId,
    driver: Arc<dyn DeviceDriver>,
    attached: Mutex<Option<Attachment>>,
    /// The attachments of its PASIDs other than `IOMMU_NO_PASID` (Linux 6.15
    /// PASID attach), by PASID.
    pasids: Mutex<std::collections::BTreeMap<u32, Attachment>>,
    /// Page requests waiting for the last one of their group.
    partial: Mutex<Vec<PageFault>>,
    /// The ID of its vDEVICE, if it has one (`idev->vdev`).
    vdev: Mutex<Option<ObjId>>,
}

impl Object for Device {
    const KIND: &'static str = "device";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_DEVICE");

    fn check_object(&self, ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        if let Some(h) = self.attached_hwpt() {
            let live = ctx
                .lookup_any(h)
                .is_ok_and(|o| o.is::<HwptPaging>() || o.is::<HwptNested>());
            if !live {
                return Err(format!(
                    "device {id} is attached to {h}, which is not a live HWPT"
                ));
            }
        }
        Ok(())
    }
}

/// The HWPT a device is attached to, its ID, and the attachment's handle.
#[derive(Debug, Clone)]
struct Attachment {
    hwpt: HwptRef,
    hwpt_id: ObjId,
    handle: u64,
}

impl Device {
    /// Bind a device driven by `driver` to `ctx` (`iommufd_device_bind`):
    /// publishes a device object and returns it; the caller (the driver)
    /// keeps the `Arc` until it calls [`Device::unbind`].
    pub fn bind(ctx: &Context, driver: Arc<dyn DeviceDriver>) -> Result<Arc<Device>> {
        let r = ctx.reserve()?;
        let dev = Arc::new(Device {
            id: r.id(),
            driver,
            attached: Mutex::new(None),
            pasids: Mutex::new(std::collections::BTreeMap::new()),
            partial: Mutex::new(Vec::new()),
            vdev: Mutex::new(None),
        });
        r.finalize(dev.clone());
        Ok(dev)
    }

    /// The device's object ID.
    pub fn id(&self) -> ObjId {
        self.id
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn DeviceDriver> {
        &self.driver
    }

    /// The ID of the device's vDEVICE, if it has one.
    pub fn vdevice_id(&self) -> Option<ObjId> {
        *self.vdev.lock()
    }

    /// The device's vDEVICE slot, held while a vDEVICE is made for it.
    pub(crate) fn vdevice_slot(&self) -> parking_lot::MutexGuard<'_, Option<ObjId>> {
        self.vdev.lock()
    }

    /// vDEVICE `id` is gone: clear the slot if it names it.
    pub(crate) fn clear_vdevice(&self, id: ObjId) {
        let mut v = self.vdev.lock();
        if *v == Some(id) {
            *v = None;
        }
    }

    /// The HWPT ID the device is attached to, if any.
    pub fn attached_hwpt(&self) -> Option<ObjId> {
        self.attached.lock().as_ref().map(|a| a.hwpt_id)
    }

    /// The paging HWPT the device's DMA goes through, if attached: the HWPT
    /// itself, or the parent of a nested one.
    pub fn hwpt(&self) -> Option<Arc<HwptPaging>> {
        self.attached
            .lock()
            .as_ref()
            .map(|a| a.hwpt.paging().clone())
    }

    /// The domain the device's DMA goes through, if attached
    /// ([`HwptRef::dma_domain`]: for a nested HWPT with a two-stage
    /// domain, both stages).
    pub fn dma_domain(&self) -> Option<Arc<dyn Domain>> {
        self.attached.lock().as_ref().map(|a| a.hwpt.dma_domain())
    }

    /// The domain DMA tagged with PASID `pasid` goes through (RFC §5.5:
    /// each PASID of a device has its own address space): for 0 (no
    /// PASID) the RID's, as [`Device::dma_domain`]; otherwise the domain of
    /// the HWPT that PASID is attached to, `None` when it is attached to
    /// nothing.
    pub fn pasid_dma_domain(&self, pasid: u32) -> Option<Arc<dyn Domain>> {
        if pasid == 0 {
            return self.dma_domain();
        }
        self.pasids.lock().get(&pasid).map(|a| a.hwpt.dma_domain())
    }

    /// The HWPT the device is attached to, paging or nested.
    pub fn attached(&self) -> Option<HwptRef> {
        self.attached.lock().as_ref().map(|a| a.hwpt.clone())
    }

    /// Raise a page request (`iommu_report_device_fault`). One with
    /// `PASID_VALID` goes to the fault queue of the HWPT that PASID is
    /// attached to, or, when it is attached to nothing, to the RID's
    /// nested HWPT if the driver's PASID table is user-managed; one
    /// without, to the fault queue of the HWPT the RID is attached to.
    /// Without such a queue the request is answered
    /// `INVALID` at once. A request without `LAST_PAGE` waits for the last
    /// one of its group (`None`); the last one returns the group, whose
    /// response [`FaultGroup::wait`] waits for.
    pub fn report_fault(&self, f: PageFault) -> Option<Arc<FaultGroup>> {
        let (group, queue) = {
            let cur = self.attached.lock();
            let pasids = self.pasids.lock();
            let pasid_valid = f.pasid_valid;
            let own = pasids.get(&f.pasid).filter(|_| pasid_valid);
            let target = match own {
                Some(a) => Some(a),
                None => cur.as_ref().filter(|a| {
                    !pasid_valid
                        || (matches!(a.hwpt, HwptRef::Nested(_))
                            && self.driver.nesting().is_some_and(|o| o.user_pasid_table()))
                }),
            }
            .and_then(|a| a.hwpt.fault().map(|q| (a.handle, q.clone())));
            drop(pasids);
            let Some((handle, queue)) = target else {
                tracing::debug!(
                    dev = self.id,
                    "page request with no fault-capable HWPT to take it: answered INVALID"
                );
                let g = FaultGroup::new(vec![f], self.id, 0);
                g.complete(resp::INVALID);
                return Some(g);
            };
            if !f.last_page {
                self.partial.lock().push(f);
                return None;
            }
            let mut faults = Vec::new();
            self.partial.lock().retain(|p| {
                if p.grpid == f.grpid {
                    faults.push(*p);
                    false
                } else {
                    true
                }
            });
            faults.push(f);
            let g = FaultGroup::new(faults, self.id, handle);
            // delivered under `attached`: a detach cannot slip between
            // choosing the attachment and queueing, so its auto-response
            // sees every group of the old attachment
            queue.deliver(g.clone());
            (g, queue)
        };
        queue.notify();
        Some(group)
    }

    /// Attach to `pt_id` (an IOAS: reuse or make an auto domain; or a paging
    /// HWPT). Returns the HWPT ID the device now translates through.
    ///
    /// A device behind the software VT-d IOMMU attached to an IOAS: its DMA
    /// translates through the automatic domain, which mirrors the IOAS.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use uiommufd::domain::Iova;
    /// use uiommufd::{vtd::VtdDriver, Context, Device, Prot};
    /// let ctx = Context::new();
    /// let ioas = ctx.ioas_alloc().unwrap();
    /// let dev = Device::bind(&ctx, Arc::new(VtdDriver::default())).unwrap();
    /// let hwpt = dev.attach(&ctx, ioas).unwrap();
    /// let buf = vec![0u8; 3 * 4096];
    /// // whole pages: the domain's granule is 4 KiB
    /// let va = (buf.as_ptr() as u64).next_multiple_of(4096);
    /// let iova = ctx.ioas(ioas).unwrap()
    ///     .map_user(va, 8192, None, Prot::RW).unwrap();
    /// let domain = dev.dma_domain().unwrap();
    /// assert_eq!(domain.iova_to_phys(Iova(iova + 4096)).unwrap().0, va + 4096);
    /// assert_eq!(dev.attached_hwpt(), Some(hwpt));
    /// dev.unbind(&ctx);
    /// ```
    pub fn attach(self: &Arc<Self>, ctx: &Context, pt_id: ObjId) -> Result<ObjId> {
        if self.attached.lock().is_some() {
            bail!(EINVAL, "device {} is already attached", self.id);
        }
        self.change_pt(ctx, pt_id)
    }

    /// Replace the current attachment with `pt_id` atomically: DMA goes
    /// either through the old or the new page table, never through none.
    pub fn replace(self: &Arc<Self>, ctx: &Context, pt_id: ObjId) -> Result<ObjId> {
        if self.attached.lock().is_none() {
            bail!(
                EINVAL,
                "device {} is not attached: nothing to replace",
                self.id
            );
        }
        self.change_pt(ctx, pt_id)
    }

    fn change_pt(self: &Arc<Self>, ctx: &Context, pt_id: ObjId) -> Result<ObjId> {
        // page table IDs are resolved in the device's own context only
        match ctx.lookup::<Device>(self.id) {
            Ok(d) if Arc::ptr_eq(&d, self) => {}
            _ => bail!(
                ENOENT,
                "device {} is bound to another context: page table {pt_id} is not looked up here",
                self.id
            ),
        }
        let pt = ctx.get_any(pt_id)?;
        if let Some(h) = HwptRef::of(&pt) {
            self.switch_to(ctx, &h, pt_id)?;
            Ok(pt_id)
        } else if let Some(ioas) = pt.downcast::<Ioas>() {
            self.auto_domain(ctx, &ioas, pt_id)
        } else {
            Err(not_attachable(pt_id, &pt))
        }
    }

    /// Point the device at `hwpt` (attach, or replace when attached).
    fn switch_to(self: &Arc<Self>, ctx: &Context, hwpt: &HwptRef, hwpt_id: ObjId) -> Result<()> {
        let old = {
            let mut cur = self.attached.lock();
            if let Some(a) = cur.as_ref() {
                if a.hwpt.ptr_eq(hwpt) {
                    return Ok(());
                }
            }
            // a device with PASIDs attached keeps its RID on PASID-capable
            // HWPTs (iommufd_hwpt_pasid_compat)
            if !hwpt.pasid_compat() && !self.pasids.lock().is_empty() {
                bail!(
                    EINVAL,
                    "device {} has PASIDs attached: HWPT {hwpt_id} was not made with IOMMU_HWPT_ALLOC_PASID",
                    self.id
                );
            }
            self.check_driver(hwpt, hwpt_id)?;
            // the kernel's iopt_table_enforce_dev_resv_regions on attach
            crate::inject::point("device.resv_regions", libc::EINVAL)?;
            let old_fault = cur.as_ref().is_some_and(|a| a.hwpt.fault().is_some());
            let new_fault = hwpt.fault().is_some();
            if new_fault && !old_fault {
                match self.driver.nesting() {
                    Some(ops) => ops.enable_iopf()?,
                    None => bail!(ENODEV, "device {} cannot report I/O page faults", self.id),
                }
            }
            hwpt.add_device(self.id);
            let old = cur.replace(Attachment {
                hwpt: hwpt.clone(),
                hwpt_id,
                handle: next_handle(),
            });
            if old_fault && !new_fault {
                self.iopf_off();
            }
            old
        };
        if let Some(old) = old {
            self.leave(ctx, old);
        }
        Ok(())
    }

    /// Whether the driver takes `hwpt` (ID `hwpt_id`) for this device: its
    /// domain (paging), or its nested domain and vIOMMU (nested).
    fn check_driver(self: &Arc<Self>, hwpt: &HwptRef, hwpt_id: ObjId) -> Result<()> {
        match hwpt {
            HwptRef::Paging(h) => self.driver.check_attach(h.domain().as_ref()),
            HwptRef::Nested(n) => {
                match self.driver.nesting() {
                    Some(ops) => ops.check_attach_nested(n.domain().as_ref())?,
                    None => bail!(
                        EINVAL,
                        "device {} cannot attach to nested HWPT {hwpt_id}: its driver has no nested domains",
                        self.id
                    ),
                }
                if let Some(v) = n.viommu() {
                    v.ops().check_attach(v, self)?;
                }
                Ok(())
            }
        }
    }

    /// I/O page faults turned off: drop the partial requests too.
    fn iopf_off(&self) {
        self.partial.lock().clear();
        if let Some(ops) = self.driver.nesting() {
            ops.disable_iopf();
        }
    }

    /// After an attachment ended: answer its faults, drop the HWPT.
    fn leave(&self, ctx: &Context, old: Attachment) {
        old.hwpt.remove_device(self.id);
        if let Some(q) = old.hwpt.fault() {
            q.auto_respond(old.handle);
        }
        release_hwpt(ctx, old);
    }

    /// Find an auto-domain HWPT on `ioas` this device can use, or make one.
    fn auto_domain(
        self: &Arc<Self>,
        ctx: &Context,
        ioas: &Arc<Ioas>,
        ioas_id: ObjId,
    ) -> Result<ObjId> {
        let mut list = ioas.hwpts.lock();
        list.retain(|w| w.strong_count() > 0);
        for w in list.iter() {
            let Some(h) = w.upgrade() else { continue };
            if !h.auto_domain() {
                continue;
            }
            let Some(id) = h.id() else { continue };
            match self.switch_to(ctx, &HwptRef::Paging(h), id) {
                Ok(()) => return Ok(id),
                Err(e) if e.errno().0 == libc::EINVAL => continue,
                Err(e) => return Err(e),
            }
        }
        // a new auto domain, attached before it is filled (immediate attach)
        let r = ctx.reserve()?;
        let domain = self.driver.alloc_auto_domain()?;
        self.driver.check_attach(domain.as_ref())?;
        let hwpt = HwptPaging::new(ioas.clone(), ioas_id, domain, true, false)?;
        hwpt.set_id(r.id());
        let id = r.id();
        self.switch_to(ctx, &HwptRef::Paging(hwpt.clone()), id)?;
        list.push(Arc::downgrade(&hwpt));
        r.finalize(hwpt);
        Ok(id)
    }

    /// Attach PASID `pasid` (not `IOMMU_NO_PASID`) to the HWPT `pt_id`,
    /// paging or nested, or with `replace` move an attached PASID there
    /// (`iommufd_device_attach` / `_replace` with a PASID). `EINVAL`: the
    /// device has no PASIDs or not that many, the PASID is not attached
    /// (replace), the HWPT was not made with `IOMMU_HWPT_ALLOC_PASID`, the
    /// RID is attached to a HWPT that was not, `pt_id` is an IOAS (its
    /// automatic domain is made without `IOMMU_HWPT_ALLOC_PASID`, so the
    /// kernel's attempt always ends there), or the driver refuses the
    /// domain. `EBUSY`: the PASID is already attached (attach never
    /// overwrites). A driver failure on replace leaves the old attachment.
    pub fn attach_pasid(
        self: &Arc<Self>,
        ctx: &Context,
        pasid: u32,
        pt_id: ObjId,
        replace: bool,
    ) -> Result<ObjId> {
        let log2 = self.driver.max_pasid_log2();
        if pasid == 0 || log2 == 0 || (log2 < 32 && pasid >= 1u32 << log2) {
            bail!(
                EINVAL,
                "device {}: PASID {pasid} is not one of its {log2}-bit PASIDs",
                self.id
            );
        }
        let pt = ctx.get_any(pt_id)?;
        let hwpt = if let Some(h) = HwptRef::of(&pt) {
            h
        } else if pt.is::<Ioas>() {
            bail!(
                EINVAL,
                "device {}: PASID {pasid} cannot attach to IOAS {pt_id}: its automatic domain is not made with \
                 IOMMU_HWPT_ALLOC_PASID",
                self.id
            )
        } else {
            return Err(not_attachable(pt_id, &pt));
        };
        let old = {
            let rid = self.attached.lock();
            let mut pasids = self.pasids.lock();
            match (pasids.get(&pasid), replace) {
                (Some(_), false) => bail!(
                    EBUSY,
                    "device {}: PASID {pasid} is already attached (replace it instead)",
                    self.id
                ),
                (None, true) => bail!(EINVAL, "device {}: PASID {pasid} is not attached", self.id),
                (Some(a), true) if a.hwpt.ptr_eq(&hwpt) => return Ok(pt_id),
                _ => {}
            }
            if !hwpt.pasid_compat() {
                bail!(
                    EINVAL,
                    "HWPT {pt_id} was not made with IOMMU_HWPT_ALLOC_PASID"
                );
            }
            if rid.as_ref().is_some_and(|a| !a.hwpt.pasid_compat()) {
                bail!(
                    EINVAL,
                    "device {}: its RID is attached to a HWPT not made with IOMMU_HWPT_ALLOC_PASID",
                    self.id
                );
            }
            self.check_driver(&hwpt, pt_id)?;
            if hwpt.fault().is_some() {
                match self.driver.nesting() {
                    Some(ops) => ops.enable_iopf()?,
                    None => bail!(ENODEV, "device {} cannot report I/O page faults", self.id),
                }
            }
            // the driver's set_dev_pasid: on failure nothing changed
            self.driver.set_dev_pasid(pasid, true)?;
            hwpt.add_device(self.id);
            pasids.insert(
                pasid,
                Attachment {
                    hwpt,
                    hwpt_id: pt_id,
                    handle: next_handle(),
                },
            )
        };
        if let Some(old) = old {
            self.leave(ctx, old);
        }
        Ok(pt_id)
    }

    /// Detach PASID `pasid` (nothing when it is not attached): it is
    /// blocked (the driver's blocking domain) and its HWPT let go.
    pub fn detach_pasid(&self, ctx: &Context, pasid: u32) {
        let old = self.pasids.lock().remove(&pasid);
        if let Some(old) = old {
            // attaching the blocking domain does not fail
            let _ = self.driver.set_dev_pasid(pasid, false);
            self.leave(ctx, old);
        }
    }

    /// The HWPT PASID `pasid` is attached to (the RID's for 0).
    pub fn pasid_hwpt(&self, pasid: u32) -> Option<ObjId> {
        if pasid == 0 {
            return self.attached_hwpt();
        }
        self.pasids.lock().get(&pasid).map(|a| a.hwpt_id)
    }

    /// Detach from whatever the device is attached to.
    pub fn detach(&self, ctx: &Context) {
        let old = self.attached.lock().take();
        if let Some(old) = old {
            if old.hwpt.fault().is_some() {
                self.iopf_off();
            }
            self.leave(ctx, old);
        }
    }

    /// `iommufd_device_unbind`: detach, then remove the device object.
    pub fn unbind(self: Arc<Self>, ctx: &Context) {
        // a vDEVICE left on the device goes with it, its ID a tombstone
        let vdev = *self.vdev.lock();
        if let Some(v) = vdev {
            ctx.tombstone(v);
        }
        let pasids: Vec<u32> = self.pasids.lock().keys().copied().collect();
        for p in pasids {
            self.detach_pasid(ctx, p);
        }
        self.detach(ctx);
        let id = self.id;
        drop(self);
        ctx.remove_internal(id);
    }
}

/// Drop a device's reference to a HWPT; an auto domain with no device left
/// is destroyed (`iommufd_hw_pagetable_put`).
fn release_hwpt(ctx: &Context, a: Attachment) {
    let auto = a.hwpt.auto_domain();
    drop(a.hwpt);
    if auto {
        // EBUSY: another device still uses it
        let _ = ctx.destroy(a.hwpt_id);
    }
}

/// Weak handle to a device, for objects that refer to one without keeping it.
pub type WeakDevice = Weak<Device>;

/// Look up a device (`ENOENT` when `id` names nothing or something else).
pub fn get_device(ctx: &Context, id: ObjId) -> Result<Arc<Device>> {
    ctx.get::<Device>(id)
}
