//! Nested HWPTs (user-managed stage-1 page tables on a nest-parent HWPT)
//! and their cache invalidation (the kernel's `iommufd_hwpt_nested_alloc`,
//! `iommufd_hwpt_invalidate`).
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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::HwptPaging;
use crate::context::{Context, ObjId, Object};
use crate::device::Device;
pub use crate::domain::{NestedDomain, UserData, UserDataArray};
use crate::fault::{get_fault, Fault};
use crate::uapi::level::UapiLevel;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::{bail, err, Error, Result};

/// A nested HW page table.
#[derive(Debug)]
pub struct HwptNested {
    parent: Arc<HwptPaging>,
    /// The vIOMMU it was made on (`pt_id` a vIOMMU), which it holds.
    viommu: Option<Arc<crate::viommu::Viommu>>,
    /// Made with `IOMMU_HWPT_ALLOC_PASID` (on a vIOMMU).
    pasid_compat: std::sync::atomic::AtomicBool,
    domain: Arc<dyn NestedDomain>,
    fault: Option<Arc<Fault>>,
    /// Our own object ID once published (0 before).
    id: AtomicU32,
    devices: Mutex<Vec<ObjId>>,
}

impl Object for HwptNested {
    const KIND: &'static str = "nested HWPT";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_HWPT_NESTED");

    fn check_object(&self, _ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        if self.id() != Some(id) {
            return Err(format!(
                "nested HWPT {id} believes its ID is {:?}",
                self.id()
            ));
        }
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
            pasid_compat: std::sync::atomic::AtomicBool::new(false),
            domain,
            fault,
            id: AtomicU32::new(0),
            devices: Mutex::new(Vec::new()),
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
            pasid_compat: std::sync::atomic::AtomicBool::new(false),
            domain,
            fault,
            id: AtomicU32::new(0),
            devices: Mutex::new(Vec::new()),
        })
    }

    /// The vIOMMU it was made on, if any.
    pub fn viommu(&self) -> Option<&Arc<crate::viommu::Viommu>> {
        self.viommu.as_ref()
    }
    /// Whether it was made with `IOMMU_HWPT_ALLOC_PASID`.
    pub fn pasid_compat(&self) -> bool {
        self.pasid_compat.load(Ordering::Acquire)
    }
    /// Mark it made with `IOMMU_HWPT_ALLOC_PASID` (before it is published).
    pub fn set_pasid_compat(&self) {
        self.pasid_compat.store(true, Ordering::Release);
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
    /// Its object ID, once published.
    pub fn id(&self) -> Option<ObjId> {
        match self.id.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }
    pub(crate) fn set_id(&self, id: ObjId) {
        self.id.store(id, Ordering::Release);
    }
    pub(crate) fn add_device(&self, dev: ObjId) {
        self.devices.lock().push(dev);
    }
    pub(crate) fn remove_device(&self, dev: ObjId) {
        self.devices.lock().retain(|&d| d != dev);
    }
    /// IDs of the devices attached.
    pub fn devices(&self) -> Vec<ObjId> {
        self.devices.lock().clone()
    }
}

/// The nested branch of `IOMMU_HWPT_ALLOC` (`pt_id` is a paging HWPT:
/// `iommufd_hwpt_nested_alloc`, then the `fault_id`).
///
/// Errnos, in the kernel's order: flags other than `FAULT_ID_VALID`, no
/// driver data, or a driver without nested domains: `EOPNOTSUPP`; a parent
/// that is an automatic domain, was not made with `NEST_PARENT`, or is not
/// the driver's: `EINVAL`; then the driver's own (the mock: another data
/// type `EOPNOTSUPP`, a bad data length `EINVAL`, an unreadable pointer
/// `EFAULT`); then a `fault_id` that is not a fault queue: `ENOENT`.
pub(crate) fn alloc(
    u: &Ucmd,
    mut cmd: IommuHwptAlloc,
    dev: &Device,
    parent: Arc<HwptPaging>,
) -> Result<i32> {
    let data = UserData {
        data_type: cmd.data_type,
        uptr: cmd.data_uptr,
        len: cmd.data_len,
        mem: &**u.mem,
    };
    // IOMMU_HWPT_ALLOC_PASID (6.15) is the core's, as for paging HWPTs
    let pasid_flag = if u.level().at_least(crate::uapi::level::UapiLevel::V6_15) {
        crate::uapi::IOMMU_HWPT_ALLOC_PASID
    } else {
        0
    };
    let valid = IOMMU_HWPT_FAULT_ID_VALID | pasid_flag;
    if cmd.flags & !valid != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: flags {:#x} are not supported for a nested HWPT",
            cmd.flags & !valid
        );
    }
    if data.len == 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: a nested HWPT needs driver data (data_len is 0)"
        );
    }
    let Some(ops) = dev.driver().nesting() else {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: device {} has no user-managed (nested) domains",
            dev.id()
        );
    };
    if parent.auto_domain() {
        bail!(
            EINVAL,
            "HWPT_ALLOC: parent HWPT {} is an automatic domain",
            cmd.pt_id
        );
    }
    if !parent.nest_parent() {
        bail!(
            EINVAL,
            "HWPT_ALLOC: parent HWPT {} was not allocated with NEST_PARENT",
            cmd.pt_id
        );
    }
    if !ops.owns_domain(parent.domain().as_ref()) {
        bail!(
            EINVAL,
            "HWPT_ALLOC: parent HWPT {}'s domain belongs to another driver",
            cmd.pt_id
        );
    }
    let r = u.ctx.reserve()?;
    let domain = ops.alloc_nested_domain(parent.domain(), cmd.flags & !valid, &data)?;
    let fault = if cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0 {
        Some(get_fault(u.ctx, cmd.fault_id).map_err(|e| {
            Error::new(e.errno().0, format!("HWPT_ALLOC: fault_id: {}", e.reason()))
        })?)
    } else {
        None
    };
    let hwpt = HwptNested::new(parent, domain, fault);
    hwpt.set_id(r.id());
    if cmd.flags & pasid_flag != 0 {
        hwpt.set_pasid_compat();
    }
    cmd.out_hwpt_id = r.id();
    u.respond(&cmd)?;
    r.finalize(hwpt);
    Ok(0)
}

/// Most entries one `IOMMU_HWPT_INVALIDATE` may carry.
const INVALIDATE_ENTRY_NUM_MAX: u32 = 1 << 19;

/// `IOMMU_HWPT_INVALIDATE`: the reply always reports in `entry_num` how many
/// entries were handled, also on failure.
pub(crate) fn invalidate(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuHwptInvalidate = u.cmd();
    let (done, rc) = invalidate_entries(u, &cmd);
    cmd.entry_num = done;
    u.respond(&cmd)?;
    rc.map(|()| 0)
}

fn invalidate_entries(u: &Ucmd, cmd: &IommuHwptInvalidate) -> (u32, Result<()>) {
    let page = crate::user::page_size();
    if cmd.__reserved != 0 {
        return (
            0,
            Err(err!(EOPNOTSUPP, "HWPT_INVALIDATE: __reserved must be zero")),
        );
    }
    if cmd.entry_num != 0 {
        let why = if cmd.data_uptr == 0 {
            Some("data_uptr is NULL")
        } else if cmd.entry_len == 0 {
            Some("entry_len is zero")
        } else if cmd.entry_len as u64 > page {
            Some("entry_len is above the page size")
        } else if cmd.entry_num > INVALIDATE_ENTRY_NUM_MAX {
            Some("entry_num is above 2^19")
        } else {
            None
        };
        if let Some(why) = why {
            return (
                0,
                Err(err!(
                    EINVAL,
                    "HWPT_INVALIDATE: {why} with {} entries",
                    cmd.entry_num
                )),
            );
        }
    }
    let obj = match u.ctx.get_any(cmd.hwpt_id) {
        Ok(o) => o,
        Err(e) => return (0, Err(e)),
    };
    let hwpt = if let Some(h) = obj.downcast::<HwptNested>() {
        h
    } else if let Some(v) = obj.downcast::<crate::viommu::Viommu>() {
        let array = UserDataArray {
            data_type: cmd.data_type,
            uptr: cmd.data_uptr,
            entry_len: cmd.entry_len,
            entry_num: cmd.entry_num,
            mem: &**u.mem,
        };
        return v.ops().cache_invalidate(&v, &array);
    } else {
        // 6.13 looks any object up (a vIOMMU is the other kind that
        // takes invalidations) and answers EINVAL for the wrong kind;
        // 6.12 looked a nested HWPT up, ENOENT for another kind.
        let errno = if u.level().at_least(UapiLevel::V6_13) {
            libc::EINVAL
        } else {
            libc::ENOENT
        };
        return (
            0,
            Err(Error::new(
                errno,
                format!(
                    "HWPT_INVALIDATE: object {} is a {}, not a nested HWPT",
                    cmd.hwpt_id,
                    obj.kind()
                ),
            )),
        );
    };
    let array = UserDataArray {
        data_type: cmd.data_type,
        uptr: cmd.data_uptr,
        entry_len: cmd.entry_len,
        entry_num: cmd.entry_num,
        mem: &**u.mem,
    };
    hwpt.domain().cache_invalidate_user(&array)
}
