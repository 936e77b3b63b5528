//! HW page tables (the kernel's hw_pagetable.c) and their ioctls, plus
//! `IOMMU_GET_HW_INFO`.
//!
//! A paging HWPT is one domain kept in sync with one IOAS: creating it adds
//! the domain to the IOAS's IO page table (which fills it from the pinned
//! pages); destroying it removes the domain again. It holds its IOAS, so the
//! IOAS cannot be destroyed under it (`EBUSY`).
//!
//! Nested HWPTs on a nest-parent paging HWPT, their invalidation and their
//! fault queue (`fault_id`) are in [`nested`]; fault queues in
//! [`crate::fault`].
//! Dirty tracking is in `dirty.rs`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub(crate) mod dirty;
pub mod nested;

use crate::context::{Context, ObjId, Object};
use crate::device::get_device;
use crate::domain::Domain;
use crate::ioas::Ioas;
use crate::uapi::level::UapiLevel;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::{bail, err, Error, Result};

/// A paging HW page table: a domain that mirrors an IOAS.
#[derive(Debug)]
pub struct HwptPaging {
    ioas: Arc<Ioas>,
    ioas_id: ObjId,
    domain: Arc<dyn Domain>,
    auto_domain: bool,
    nest_parent: bool,
    /// Made with `IOMMU_HWPT_ALLOC_PASID`: PASIDs may attach to it.
    pasid_compat: AtomicBool,
    /// Our own object ID once published (0 before).
    id: AtomicU32,
    devices: Mutex<Vec<ObjId>>,
}

impl Object for HwptPaging {
    const KIND: &'static str = "paging HWPT";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_HWPT_PAGING");

    fn check_object(&self, _ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        if self.id() != Some(id) {
            return Err(format!("HWPT {id} believes its ID is {:?}", self.id()));
        }
        Ok(())
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
            pasid_compat: AtomicBool::new(false),
            id: AtomicU32::new(0),
            devices: Mutex::new(Vec::new()),
        });
        Ok(h)
    }

    /// The domain.
    pub fn domain(&self) -> &Arc<dyn Domain> {
        &self.domain
    }
    /// Whether it was made with `IOMMU_HWPT_ALLOC_PASID` (a device's PASID
    /// may attach to it, and a device with PASIDs attached may attach its
    /// RID only to such a HWPT).
    pub fn pasid_compat(&self) -> bool {
        self.pasid_compat.load(Ordering::Acquire)
    }
    /// Mark it made with `IOMMU_HWPT_ALLOC_PASID` (before it is published).
    pub fn set_pasid_compat(&self) {
        self.pasid_compat.store(true, Ordering::Release);
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

impl Drop for HwptPaging {
    fn drop(&mut self) {
        // (the IOAS's weak list entry is pruned lazily by the next search)
        self.ioas.iopt().remove_domain(self.domain.id());
    }
}

/// `IOMMU_HWPT_ALLOC`
pub(crate) fn alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuHwptAlloc = u.cmd();
    if cmd.__reserved != 0 {
        bail!(EOPNOTSUPP, "HWPT_ALLOC: __reserved must be zero");
    }
    if (cmd.data_type == IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0) {
        bail!(
            EINVAL,
            "HWPT_ALLOC: data_len must be zero exactly when data_type is NONE"
        );
    }
    let dev = get_device(u.ctx, cmd.dev_id)?;
    let pt = u
        .ctx
        .get_any(cmd.pt_id)
        .map_err(|e| err!(EINVAL, "HWPT_ALLOC: pt_id: {}", e.reason()))?;
    let (ioas, ioas_id) = if let Some(i) = pt.downcast::<Ioas>() {
        (i, cmd.pt_id)
    } else if let Some(parent) = pt.downcast::<HwptPaging>() {
        return nested::alloc(u, cmd, &dev, parent);
    } else if let Some(v) = pt.downcast::<crate::viommu::Viommu>() {
        return crate::viommu::alloc_hwpt_nested(u, cmd, &dev, v);
    } else {
        bail!(
            EINVAL,
            "HWPT_ALLOC: object {} is a {}, not an IOAS or a paging HWPT",
            cmd.pt_id,
            pt.kind()
        )
    };
    // IOMMU_HWPT_ALLOC_PASID (6.15) is the core's: the HWPT is marked, the
    // driver's domain is the same
    let pasid_flag = if u.level().at_least(UapiLevel::V6_15) {
        IOMMU_HWPT_ALLOC_PASID
    } else {
        0
    };
    let valid = IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING | pasid_flag;
    let pasid_compat = cmd.flags & pasid_flag != 0;
    cmd.flags &= !pasid_flag;
    if cmd.flags & !valid != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: flags {:#x} are not supported for a paging HWPT",
            cmd.flags & !valid
        );
    }
    if cmd.flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0
        && dev.driver().capabilities() & IOMMU_HW_CAP_DIRTY_TRACKING == 0
    {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: device {} cannot track dirty pages",
            cmd.dev_id
        );
    }
    // Driver data for a paging domain (the mock's page table type) came
    // with Linux 6.19's generic page tables; before, none is taken.
    if cmd.data_len != 0 && !u.level().at_least(UapiLevel::V6_19) {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: a paging HWPT takes no driver data (data_type {:#x}) before Linux 6.19",
            cmd.data_type
        );
    }
    let r = u.ctx.reserve()?;
    let domain = if cmd.data_len != 0 {
        let data = nested::UserData {
            data_type: cmd.data_type,
            uptr: cmd.data_uptr,
            len: cmd.data_len,
            mem: &**u.mem,
        };
        dev.driver()
            .alloc_paging_domain_with_data(cmd.flags, &data)?
    } else {
        dev.driver().alloc_paging_domain(cmd.flags)?
    };
    let hwpt = HwptPaging::new(
        ioas.clone(),
        ioas_id,
        domain,
        false,
        cmd.flags & IOMMU_HWPT_ALLOC_NEST_PARENT != 0,
    )?;
    hwpt.set_id(r.id());
    if pasid_compat {
        hwpt.set_pasid_compat();
        cmd.flags |= IOMMU_HWPT_ALLOC_PASID;
    }
    cmd.out_hwpt_id = r.id();
    u.respond(&cmd)?;
    ioas.hwpts.lock().push(Arc::downgrade(&hwpt));
    r.finalize(hwpt);
    Ok(0)
}

/// Accepted from later kernels: the Debian 6.12 selftest asks for a
/// specific info type with it (`in_data_type` shares `out_data_type`'s slot).
const IOMMU_HW_INFO_FLAG_INPUT_TYPE: u32 = 1;

/// `IOMMU_GET_HW_INFO`
pub(crate) fn get_hw_info(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuHwInfo = u.cmd();
    if cmd.flags & !IOMMU_HW_INFO_FLAG_INPUT_TYPE != 0 || cmd.__reserved != [0; 3] {
        bail!(
            EOPNOTSUPP,
            "GET_HW_INFO: unknown flags {:#x} or non-zero __reserved",
            cmd.flags
        );
    }
    let dev = get_device(u.ctx, cmd.dev_id)?;
    let drv = dev.driver();
    if cmd.flags & IOMMU_HW_INFO_FLAG_INPUT_TYPE != 0
        && !drv.supports_hw_info_type(cmd.out_data_type)
    {
        bail!(
            EOPNOTSUPP,
            "GET_HW_INFO: the driver has no info of type {:#x}",
            cmd.out_data_type
        );
    }
    // the kernel allocates the driver's info
    crate::inject::point("hw_info.alloc", libc::ENOMEM)?;
    let (ty, data) = drv.hw_info();
    let copy = (cmd.data_len as usize).min(data.len());
    if cmd.data_len != 0 {
        u.write_user(cmd.data_uptr, &data[..copy])
            .map_err(|_| Error::fault("GET_HW_INFO: cannot write data_uptr"))?;
        // zero what the user buffer has beyond our data
        let rest = u64::from(cmd.data_len) - copy as u64;
        crate::user::clear_user(&**u.mem, cmd.data_uptr.wrapping_add(copy as u64), rest)
            .map_err(|_| Error::fault("GET_HW_INFO: cannot clear the tail of data_uptr"))?;
    }
    cmd.data_len = data.len() as u32;
    cmd.out_data_type = ty;
    cmd.out_capabilities = drv.capabilities();
    cmd.out_max_pasid_log2 = drv.max_pasid_log2();
    u.respond(&cmd)?;
    Ok(0)
}

pub(crate) fn get_hwpt_paging(u: &Ucmd, id: ObjId) -> Result<Arc<HwptPaging>> {
    u.ctx.get::<HwptPaging>(id)
}
