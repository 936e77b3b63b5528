//! The HWPT ioctl handlers: `IOMMU_HWPT_ALLOC` (paging, nested on a
//! paging HWPT, nested on a vIOMMU), `IOMMU_GET_HW_INFO`,
//! `IOMMU_HWPT_INVALIDATE`, and dirty tracking on paging HWPTs
//! (`IOMMU_HWPT_SET_DIRTY_TRACKING`, `IOMMU_HWPT_GET_DIRTY_BITMAP`, whose
//! work the IO page table of the HWPT's IOAS does: `io_pagetable/dirty.rs`
//! documents the bitmap layout and the errno rules). The objects are in
//! `mod.rs` and `nested.rs`.

use std::sync::Arc;

use super::nested::{HwptNested, UserData, UserDataArray};
use super::{get_hwpt_paging, HwptPaging};
use crate::context::Reservation;
use crate::device::{get_device, Device};
use crate::fault::{get_fault, Fault};
use crate::io_pagetable::DirtyRequest;
use crate::ioas::Ioas;
use crate::uapi::level::UapiLevel;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::viommu::Viommu;
use crate::{bail, err, Error, Result};

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
        return alloc_nested(u, cmd, &dev, parent);
    } else if let Some(v) = pt.downcast::<Viommu>() {
        return alloc_on_viommu(u, cmd, &dev, v);
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
        let data = user_data(u, &cmd);
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

/// The nested branch of `IOMMU_HWPT_ALLOC` (`pt_id` is a paging HWPT:
/// `iommufd_hwpt_nested_alloc`, then the `fault_id`).
///
/// Errnos, in the kernel's order: flags other than `FAULT_ID_VALID`, no
/// driver data, or a driver without nested domains: `EOPNOTSUPP`; a parent
/// that is an automatic domain, was not made with `NEST_PARENT`, or is not
/// the driver's: `EINVAL`; then the driver's own (the mock: another data
/// type `EOPNOTSUPP`, a bad data length `EINVAL`, an unreadable pointer
/// `EFAULT`); then a `fault_id` that is not a fault queue: `ENOENT`.
fn alloc_nested(
    u: &Ucmd,
    cmd: IommuHwptAlloc,
    dev: &Device,
    parent: Arc<HwptPaging>,
) -> Result<i32> {
    let data = user_data(u, &cmd);
    // IOMMU_HWPT_ALLOC_PASID (6.15) is the core's, as for paging HWPTs
    let pasid_flag = if u.level().at_least(UapiLevel::V6_15) {
        IOMMU_HWPT_ALLOC_PASID
    } else {
        0
    };
    let valid = IOMMU_HWPT_FAULT_ID_VALID | pasid_flag;
    check_nested_request(&cmd, valid, "a nested HWPT")?;
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
    let fault = fault_of(u, &cmd)?;
    let pasid = cmd.flags & pasid_flag != 0;
    publish_nested(u, cmd, r, HwptNested::new(parent, domain, fault), pasid)
}

/// The vIOMMU branch of `IOMMU_HWPT_ALLOC` (`pt_id` is a vIOMMU:
/// `iommufd_viommu_alloc_hwpt_nested`, then the `fault_id`).
///
/// Errnos, in the kernel's order: a device behind another IOMMU: `EINVAL`;
/// flags other than `FAULT_ID_VALID` and `ALLOC_PASID`, no driver data, or
/// a vIOMMU without nested domains: `EOPNOTSUPP`; then the driver's; then a
/// `fault_id` that is not a fault queue: `ENOENT`.
fn alloc_on_viommu(
    u: &Ucmd,
    cmd: IommuHwptAlloc,
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
    check_nested_request(&cmd, valid, "a nested HWPT on a vIOMMU")?;
    let data = user_data(u, &cmd);
    let r = u.ctx.reserve()?;
    let domain =
        viommu
            .ops()
            .alloc_domain_nested(&viommu, cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID, &data)?;
    let fault = fault_of(u, &cmd)?;
    let pasid = cmd.flags & IOMMU_HWPT_ALLOC_PASID != 0;
    publish_nested(
        u,
        cmd,
        r,
        HwptNested::new_on_viommu(viommu, domain, fault),
        pasid,
    )
}

/// The first checks of both nested branches of `IOMMU_HWPT_ALLOC`:
/// `EOPNOTSUPP` for flags outside `valid` or no driver data; `what` names
/// the HWPT asked for in the message.
fn check_nested_request(cmd: &IommuHwptAlloc, valid: u32, what: &str) -> Result<()> {
    if cmd.flags & !valid != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: flags {:#x} are not supported for {what}",
            cmd.flags & !valid
        );
    }
    if cmd.data_len == 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_ALLOC: a nested HWPT needs driver data (data_len is 0)"
        );
    }
    Ok(())
}

/// The driver data of an `IOMMU_HWPT_ALLOC`.
fn user_data<'a>(u: &'a Ucmd, cmd: &IommuHwptAlloc) -> UserData<'a> {
    UserData {
        data_type: cmd.data_type,
        uptr: cmd.data_uptr,
        len: cmd.data_len,
        mem: &**u.mem,
    }
}

/// The fault queue of a nested `IOMMU_HWPT_ALLOC` (`fault_id`, when
/// `FAULT_ID_VALID`): `ENOENT` for an object that is not one.
fn fault_of(u: &Ucmd, cmd: &IommuHwptAlloc) -> Result<Option<Arc<Fault>>> {
    if cmd.flags & IOMMU_HWPT_FAULT_ID_VALID == 0 {
        return Ok(None);
    }
    let f = get_fault(u.ctx, cmd.fault_id)
        .map_err(|e| Error::new(e.errno().0, format!("HWPT_ALLOC: fault_id: {}", e.reason())))?;
    Ok(Some(f))
}

/// Publish a nested HWPT made for `r` (marked made with
/// `IOMMU_HWPT_ALLOC_PASID` when `pasid`) and reply with its ID.
fn publish_nested(
    u: &Ucmd,
    mut cmd: IommuHwptAlloc,
    r: Reservation<'_>,
    hwpt: Arc<HwptNested>,
    pasid: bool,
) -> Result<i32> {
    if pasid {
        hwpt.set_pasid_compat();
    }
    hwpt.set_id(r.id());
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
    let array = UserDataArray {
        data_type: cmd.data_type,
        uptr: cmd.data_uptr,
        entry_len: cmd.entry_len,
        entry_num: cmd.entry_num,
        mem: &**u.mem,
    };
    let hwpt = if let Some(h) = obj.downcast::<HwptNested>() {
        h
    } else if let Some(v) = obj.downcast::<Viommu>() {
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
    hwpt.domain().cache_invalidate_user(&array)
}
/// `IOMMU_HWPT_SET_DIRTY_TRACKING`: `EOPNOTSUPP` for unknown flags, the
/// HWPT lookup's errno (`ENOENT`), `EOPNOTSUPP` when the HWPT's domain was
/// not allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` (an automatic HWPT
/// included). Enabling clears
/// the dirty state of every mapped area first. `__reserved` is not checked
/// (6.12 does not).
pub(crate) fn set_dirty_tracking(u: &Ucmd) -> Result<i32> {
    let cmd: IommuHwptSetDirtyTracking = u.cmd();
    if cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_SET_DIRTY_TRACKING: unknown flags {:#x}",
            cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE
        );
    }
    let hwpt = get_hwpt_paging(u, cmd.hwpt_id)?;
    refuse_auto(&hwpt, cmd.hwpt_id)?;
    let enable = cmd.flags & IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0;
    hwpt.ioas()
        .iopt()
        .set_dirty_tracking(hwpt.domain().id(), enable)?;
    tracing::debug!(hwpt = cmd.hwpt_id, enable, "HWPT dirty tracking set");
    Ok(0)
}

/// `IOMMU_HWPT_GET_DIRTY_BITMAP`: `EOPNOTSUPP` for unknown flags or a
/// non-zero `__reserved`, the HWPT lookup's errno (`ENOENT`), then the IO
/// page table's range checks (`EINVAL`/`EOVERFLOW`), `EOPNOTSUPP` for a
/// domain without dirty tracking, `EFAULT` for a bitmap we cannot update.
pub(crate) fn get_dirty_bitmap(u: &Ucmd) -> Result<i32> {
    let cmd: IommuHwptGetDirtyBitmap = u.cmd();
    if cmd.flags & !IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0 || cmd.__reserved != 0 {
        bail!(
            EOPNOTSUPP,
            "HWPT_GET_DIRTY_BITMAP: unknown flags {:#x} or non-zero __reserved",
            cmd.flags
        );
    }
    let hwpt = get_hwpt_paging(u, cmd.hwpt_id)?;
    let req = DirtyRequest {
        iova: cmd.iova,
        length: cmd.length,
        page_size: cmd.page_size,
        no_clear: cmd.flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0,
    };
    if hwpt.auto_domain() {
        // the range checks come first, then the missing dirty ops
        hwpt.ioas().iopt().check_dirty_request(&req)?;
        refuse_auto(&hwpt, cmd.hwpt_id)?;
    }
    hwpt.ioas().iopt().read_and_clear_dirty_user(
        hwpt.domain().id(),
        &req,
        cmd.data,
        u.mem.as_ref(),
    )?;
    Ok(0)
}

/// An automatic HWPT (made by attaching a device to an IOAS) has a domain
/// without dirty ops in the kernel (drivers give them only to domains
/// allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`): `EOPNOTSUPP`. The
/// engine's VT-d automatic domains can track (a type1 container's
/// `VFIO_IOMMU_DIRTY_PAGES` uses that, inside the engine), but the uAPI
/// answers as the kernel does.
fn refuse_auto(hwpt: &HwptPaging, id: u32) -> Result<()> {
    if hwpt.auto_domain() {
        bail!(
            EOPNOTSUPP,
            "HWPT {id} is an automatic HWPT, whose domain has no dirty tracking (allocate one with \
             IOMMU_HWPT_ALLOC_DIRTY_TRACKING)"
        );
    }
    Ok(())
}
