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
//! Lock order: `Ioas::hwpts` (auto-domain search) → `Device::attached` →
//! the IOAS's IO page table locks.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::context::{Context, ObjId, Object};
use crate::domain::Domain;
use crate::hwpt::HwptPaging;
use crate::ioas::Ioas;
use crate::{bail, err, Result};

/// What the IOMMU driver behind a device can do (the kernel's `iommu_ops`
/// as seen from one device).
pub trait DeviceDriver: Send + Sync + std::fmt::Debug {
    /// `IOMMU_GET_HW_INFO`: the info type and its bytes.
    fn hw_info(&self) -> (u32, Vec<u8>);
    /// Whether a hardware info type may be asked for explicitly
    /// (`IOMMU_HW_INFO_FLAG_INPUT_TYPE`).
    fn supports_hw_info_type(&self, ty: u32) -> bool {
        ty == self.hw_info().0
    }
    /// `IOMMU_HW_CAP_*` bits.
    fn capabilities(&self) -> u64;
    /// log2 of the number of PASIDs, 0 without PASID support.
    fn max_pasid_log2(&self) -> u8 {
        0
    }
    /// A new paging domain for this device: `flags` are `IOMMU_HWPT_ALLOC_*`
    /// (`NEST_PARENT`, `DIRTY_TRACKING`).
    fn alloc_paging_domain(&self, flags: u32) -> Result<Arc<dyn Domain>>;
    /// Whether this device can be attached to `domain` (`EINVAL` if not:
    /// incompatible, so an auto-domain search moves on).
    fn check_attach(&self, domain: &dyn Domain) -> Result<()>;
}

/// A device bound to a context.
#[derive(Debug)]
pub struct Device {
    id: ObjId,
    driver: Arc<dyn DeviceDriver>,
    attached: Mutex<Option<Attachment>>,
}

/// The HWPT a device is attached to, and its ID.
#[derive(Debug, Clone)]
struct Attachment {
    hwpt: Arc<HwptPaging>,
    hwpt_id: ObjId,
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
        });
        r.finalize(Object::Device(dev.clone()));
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

    /// The HWPT ID the device is attached to, if any.
    pub fn attached_hwpt(&self) -> Option<ObjId> {
        self.attached.lock().as_ref().map(|a| a.hwpt_id)
    }

    /// The paging HWPT the device is attached to, if any.
    pub fn hwpt(&self) -> Option<Arc<HwptPaging>> {
        self.attached.lock().as_ref().map(|a| a.hwpt.clone())
    }

    /// Attach to `pt_id` (an IOAS: reuse or make an auto domain; or a paging
    /// HWPT). Returns the HWPT ID the device now translates through.
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
        match ctx.get(pt_id)? {
            Object::HwptPaging(h) => {
                self.switch_to(ctx, &h, pt_id)?;
                Ok(pt_id)
            }
            Object::Ioas(ioas) => self.auto_domain(ctx, &ioas, pt_id),
            o => bail!(
                EINVAL,
                "object {pt_id} is a {}, which a device cannot attach to",
                o.kind()
            ),
        }
    }

    /// Point the device at `hwpt` (attach, or replace when attached).
    fn switch_to(
        self: &Arc<Self>,
        ctx: &Context,
        hwpt: &Arc<HwptPaging>,
        hwpt_id: ObjId,
    ) -> Result<()> {
        let old = {
            let mut cur = self.attached.lock();
            if let Some(a) = cur.as_ref() {
                if Arc::ptr_eq(&a.hwpt, hwpt) {
                    return Ok(());
                }
            }
            self.driver.check_attach(hwpt.domain().as_ref())?;
            hwpt.add_device(self.id);
            cur.replace(Attachment {
                hwpt: hwpt.clone(),
                hwpt_id,
            })
        };
        if let Some(old) = old {
            old.hwpt.remove_device(self.id);
            release_hwpt(ctx, old);
        }
        Ok(())
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
            match self.switch_to(ctx, &h, id) {
                Ok(()) => return Ok(id),
                Err(e) if e.errno().0 == libc::EINVAL => continue,
                Err(e) => return Err(e),
            }
        }
        // a new auto domain, attached before it is filled (immediate attach)
        let r = ctx.reserve()?;
        let domain = self.driver.alloc_paging_domain(0)?;
        self.driver.check_attach(domain.as_ref())?;
        let hwpt = HwptPaging::new(ioas.clone(), ioas_id, domain, true, false)?;
        hwpt.set_id(r.id());
        let id = r.id();
        self.switch_to(ctx, &hwpt, id)?;
        list.push(Arc::downgrade(&hwpt));
        r.finalize(Object::HwptPaging(hwpt));
        Ok(id)
    }

    /// Detach from whatever the device is attached to.
    pub fn detach(&self, ctx: &Context) {
        let old = self.attached.lock().take();
        if let Some(old) = old {
            old.hwpt.remove_device(self.id);
            release_hwpt(ctx, old);
        }
    }

    /// `iommufd_device_unbind`: detach, then remove the device object.
    pub fn unbind(self: Arc<Self>, ctx: &Context) {
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
    match ctx.get(id)? {
        Object::Device(d) => Ok(d),
        o => Err(err!(ENOENT, "object {id} is a {}, not a device", o.kind())),
    }
}
