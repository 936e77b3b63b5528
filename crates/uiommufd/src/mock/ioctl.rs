//! `IOMMU_TEST_CMD` (the kernel's `iommufd_test`): the test command's
//! handlers, which drive the mock driver's objects (`super`).

use std::sync::atomic::Ordering;

use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::device::Device;
use crate::pages::Pages;
use crate::uapi::level::UapiLevel;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::user::page_size;
use crate::{bail, err, Result};

use super::{access, device, dmabuf, domain, nested, MockStdev, TEMP_MEMORY_LIMIT};

/// The union member `T` of the test command.
pub(super) fn payload<T: FromBytes>(cmd: &IommuTestCmd) -> T {
    match T::read_from_prefix(&cmd.payload) {
        Ok((v, _)) => v,
        Err(_) => unreachable!("test payload member larger than the union"),
    }
}

/// Write `v` as the test command's union member.
pub(super) fn set_payload<T: IntoBytes + Immutable>(cmd: &mut IommuTestCmd, v: &T) {
    let b = v.as_bytes();
    cmd.payload[..b.len()].copy_from_slice(b);
}

/// `MOCK_DOMAIN` / `MOCK_DOMAIN_FLAGS`: make a mock device, bind it and
/// attach it to `id` (an IOAS or a HWPT). IDs are taken in the kernel's
/// order: the selftest object, then the device, then an auto-domain HWPT.
fn mock_domain(u: &Ucmd, mut cmd: IommuTestCmd) -> Result<i32> {
    let md: TestMockDomainFlags = payload(&cmd);
    let flags = if cmd.op == IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS {
        md.dev_flags
    } else {
        0
    };
    let r = u.ctx.reserve()?;
    // mock_dev_create: the device's allocation and registration
    crate::inject::point("mock.device.create", libc::ENOMEM)?;
    let drv = device::MockDevice::new(flags)?;
    let dev = Device::bind(u.ctx, drv)?;
    let hwpt_id = match dev.attach(u.ctx, cmd.id) {
        Ok(h) => h,
        Err(e) => {
            dev.unbind(u.ctx);
            return Err(e);
        }
    };
    let out = TestMockDomainFlags {
        out_stdev_id: r.id(),
        out_hwpt_id: hwpt_id,
        out_idev_id: dev.id(),
        dev_flags: md.dev_flags,
    };
    set_payload(&mut cmd, &out);
    let stdev = Arc::new(MockStdev::new(dev));
    if let Err(e) = u.respond(&cmd) {
        r.abort(stdev); // unbinds the device
        return Err(e);
    }
    r.finalize(stdev);
    Ok(0)
}

/// `MOCK_DOMAIN_REPLACE`: move the selftest device `id` to `pt_id`.
fn mock_domain_replace(u: &Ucmd, mut cmd: IommuTestCmd) -> Result<i32> {
    let mut rep: TestMockDomainReplace = payload(&cmd);
    let stdev = u.ctx.get::<MockStdev>(cmd.id)?;
    rep.pt_id = stdev.device().replace(u.ctx, rep.pt_id)?;
    set_payload(&mut cmd, &rep);
    u.respond(&cmd)?;
    Ok(0)
}

/// `MD_CHECK_MAP`: every IOVA of the range translates, in the mock domain of
/// HWPT `id`, to the matching address of the user buffer.
fn check_map(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let c: TestCheckMap = payload(cmd);
    let m = domain::mock_io_page_size();
    if !c.iova.is_multiple_of(m)
        || !c.length.is_multiple_of(m)
        || !c.uptr.is_multiple_of(m)
        || c.uptr.checked_add(c.length).is_none()
    {
        bail!(
            EINVAL,
            "MD_CHECK_MAP: iova, length and uptr must be multiples of {m:#x}"
        );
    }
    let mock = paging_mock_domain(u, cmd.id, "MD_CHECK_MAP")?;
    check_user_range(&**u.mem, c.uptr, c.length, m, |off, len| {
        mock.check_map(c.iova.wrapping_add(off), len, c.uptr + off)
            .err()?;
        (off..off + len).step_by(m as usize).find_map(|o| {
            mock.check_map(c.iova.wrapping_add(o), m, c.uptr + o)
                .err()
                .map(|e| (o, e))
        })
    })?;
    Ok(0)
}

/// Bytes of user range a check populates at a time (16 pages).
const CHECK_CHUNK: u64 = 64 * 1024;

/// The kernel's "get the user page, then compare" loop of `MD_CHECK_MAP`
/// and `MD_CHECK_REFS` over `uptr..uptr + length` (which does not wrap),
/// in steps of `step` bytes, a chunk of [`CHECK_CHUNK`] bytes at a time:
/// `first_bad(off, len)` gives the offset of the first step of
/// `off..off + len` that fails its check, with the error. The pages up to
/// and including that step's must be present (`EFAULT` otherwise, as the
/// kernel's GUP of each page comes before its comparison); nothing after it
/// is populated, so a check that fails early costs no more than that.
fn check_user_range(
    mem: &dyn crate::user::UserMemory,
    uptr: u64,
    length: u64,
    step: u64,
    mut first_bad: impl FnMut(u64, u64) -> Option<(u64, crate::Error)>,
) -> Result<()> {
    let ps = page_size();
    let mut off = 0;
    while off < length {
        let len = (length - off).min(CHECK_CHUNK);
        let bad = first_bad(off, len);
        let upto = bad.as_ref().map_or(off + len, |(o, _)| o + step);
        let lo = (uptr + off) & !(ps - 1);
        let Some(hi) = (uptr + upto).checked_next_multiple_of(ps) else {
            return Err(crate::Error::fault(
                "the user range ends at the top of the address space",
            ));
        };
        mem.populate(lo, hi - lo, false)?;
        if let Some((_, e)) = bad {
            return Err(e);
        }
        off += len;
    }
    Ok(())
}

/// `IOMMU_TEST_CMD`
pub(crate) fn test_cmd(u: &Ucmd) -> Result<i32> {
    let cmd: IommuTestCmd = u.cmd();
    match cmd.op {
        IOMMU_TEST_OP_ADD_RESERVED => add_reserved(u, &cmd),
        IOMMU_TEST_OP_MD_CHECK_REFS => check_refs(u, &cmd),
        IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT => {
            let m: TestMemoryLimit = payload(&cmd);
            // the kernel's batch needs room for at least one element
            if (m.limit as usize) < size_of::<u64>() + size_of::<u32>() {
                bail!(
                    EINVAL,
                    "SET_TEMP_MEMORY_LIMIT: limit {} is below one batch element",
                    m.limit
                );
            }
            TEMP_MEMORY_LIMIT.store(m.limit, Ordering::Relaxed);
            Ok(0)
        }
        IOMMU_TEST_OP_MOCK_DOMAIN | IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS => mock_domain(u, cmd),
        IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE => mock_domain_replace(u, cmd),
        IOMMU_TEST_OP_MD_CHECK_MAP => check_map(u, &cmd),
        IOMMU_TEST_OP_CREATE_ACCESS => access::create(u, cmd),
        IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => access::replace_ioas(u, &cmd),
        IOMMU_TEST_OP_ACCESS_PAGES => access::pages(u, cmd),
        IOMMU_TEST_OP_DESTROY_ACCESS_PAGES => access::destroy_pages(u, &cmd),
        IOMMU_TEST_OP_ACCESS_RW => access::rw(u, &cmd),
        IOMMU_TEST_OP_DIRTY => mark_dirty(u, cmd),
        IOMMU_TEST_OP_MD_CHECK_IOTLB => check_iotlb(u, &cmd),
        IOMMU_TEST_OP_TRIGGER_IOPF => trigger_iopf(u, &cmd),
        IOMMU_TEST_OP_DEV_CHECK_CACHE if u.level().at_least(UapiLevel::V6_13) => {
            check_dev_cache(u, &cmd)
        }
        IOMMU_TEST_OP_TRIGGER_VEVENT if u.level().at_least(UapiLevel::V6_15) => {
            trigger_vevent(u, &cmd)
        }
        IOMMU_TEST_OP_PASID_ATTACH
        | IOMMU_TEST_OP_PASID_REPLACE
        | IOMMU_TEST_OP_PASID_DETACH
        | IOMMU_TEST_OP_PASID_CHECK_HWPT
            if u.level().at_least(UapiLevel::V6_15) =>
        {
            pasid_op(u, cmd)
        }
        dmabuf::IOMMU_TEST_OP_DMABUF_GET if u.level().at_least(UapiLevel::V6_19) => {
            dmabuf::get(u, &cmd)
        }
        dmabuf::IOMMU_TEST_OP_DMABUF_REVOKE if u.level().at_least(UapiLevel::V6_19) => {
            dmabuf::revoke(u, &cmd)
        }
        op => bail!(EOPNOTSUPP, "IOMMU_TEST_CMD: unknown op {op}"),
    }
}

/// `IOMMU_TEST_OP_DIRTY` (the kernel's `iommufd_test_dirty`): mark dirty,
/// in the mock domain of paging HWPT `id`, the granule of every page whose
/// bit is set in the user bitmap `uptr` (bit `i`: `iova + i * page_size`),
/// and answer how many were mapped (`out_nr_dirty`).
///
/// Errors in the kernel's order: `EINVAL` for a zero `page_size` or
/// `length`, an `iova` or `length` not a multiple of `page_size`, or a null
/// `uptr`; `EOVERFLOW` past 128 Mi pages; `ENOENT` when `id` is not a
/// paging HWPT, `EINVAL` when its domain is not a mock domain or is not
/// tracking; `EFAULT` when the bitmap cannot be read.
fn mark_dirty(u: &Ucmd, mut cmd: IommuTestCmd) -> Result<i32> {
    let mut d: TestDirty = payload(&cmd);
    if d.page_size == 0
        || d.length == 0
        || !d.iova.is_multiple_of(d.page_size)
        || !d.length.is_multiple_of(d.page_size)
        || d.uptr == 0
    {
        bail!(
            EINVAL,
            "DIRTY: page_size {:#x} and length {:#x} must be non-zero, iova {:#x} and length multiples of page_size, \
             uptr non-null",
            d.page_size,
            d.length,
            d.iova
        );
    }
    let max = d.length / d.page_size;
    const MAX_BITS: u64 = (16 << 20) * 8;
    if max > MAX_BITS {
        bail!(
            EOVERFLOW,
            "DIRTY: {max} pages is more than the {MAX_BITS} the bitmap may hold"
        );
    }
    let mock = paging_mock_domain(u, cmd.id, "DIRTY")?;
    if !mock.dirty_tracking_enabled() {
        bail!(
            EINVAL,
            "DIRTY: dirty tracking is not enabled on HWPT {}",
            cmd.id
        );
    }
    let mut bytes = vec![0u8; max.div_ceil(8) as usize];
    u.read_user(d.uptr, &mut bytes)
        .map_err(|e| crate::err!(EFAULT, "DIRTY: cannot read the bitmap: {}", e.reason()))?;
    let words: Vec<u64> = bytes
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    d.out_nr_dirty = mock.mark_dirty_bits(d.iova, d.page_size, &words, max)?;
    set_payload(&mut cmd, &d);
    u.respond(&cmd)?;
    Ok(0)
}

/// `MD_CHECK_IOTLB`: IOTLB entry `id` of the mock nested HWPT `cmd.id`
/// holds `iotlb` (`ENOENT` when the object is not a nested HWPT, `EINVAL`
/// when its domain is not a mock one, the ID is too large, or the value
/// differs).
fn check_iotlb(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let c: TestCheckIotlb = payload(cmd);
    let hwpt = u.ctx.get::<crate::hwpt::nested::HwptNested>(cmd.id)?;
    let Some(mock) = hwpt
        .domain()
        .as_any()
        .downcast_ref::<nested::MockNestedDomain>()
    else {
        bail!(
            EINVAL,
            "MD_CHECK_IOTLB: HWPT {} is not a mock nested domain",
            cmd.id
        );
    };
    mock.check_iotlb(c.id, c.iotlb)?;
    Ok(0)
}

/// `DEV_CHECK_CACHE` (Linux 6.13): cache entry `check_dev_cache.id` of the
/// mock device bound as device object `id` holds `check_dev_cache.cache`.
/// `ENOENT` when `id` is not a device, `EINVAL` when it is not a mock device
/// or the entry differs (or is past the last).
fn check_dev_cache(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let c: TestCheckDevCache = payload(cmd);
    let dev = crate::device::get_device(u.ctx, cmd.id)?;
    let Some(mock) = dev
        .driver()
        .as_any()
        .and_then(|a| a.downcast_ref::<device::MockDevice>())
    else {
        bail!(
            EINVAL,
            "DEV_CHECK_CACHE: device {} is not a mock device",
            cmd.id
        );
    };
    mock.check_cache(c.id, c.cache)?;
    Ok(0)
}

/// The mock domain of paging HWPT `id` (`EINVAL` for another driver's);
/// `what` names the command.
fn paging_mock_domain(u: &Ucmd, id: u32, what: &str) -> Result<Arc<domain::MockDomain>> {
    let hwpt = u.ctx.get::<crate::hwpt::HwptPaging>(id)?;
    let any: Arc<dyn std::any::Any + Send + Sync> = hwpt.domain().clone();
    any.downcast::<domain::MockDomain>()
        .map_err(|_| err!(EINVAL, "{what}: HWPT {id} is not a mock domain"))
}

/// The selftest object `id` (`ENOENT` when it is something else).
fn get_stdev(u: &Ucmd, id: u32) -> Result<Arc<MockStdev>> {
    u.ctx.get::<MockStdev>(id)
}

/// `PASID_ATTACH` / `PASID_REPLACE` / `PASID_DETACH` / `PASID_CHECK_HWPT`
/// (Linux 6.15) on the selftest device `id`: the device layer's PASID
/// attach (`IOMMU_NO_PASID`, 0, is the RID's attach, replace and detach).
/// The check is `EINVAL` unless the PASID is attached to HWPT `pt_id`
/// (detached for 0).
fn pasid_op(u: &Ucmd, mut cmd: IommuTestCmd) -> Result<i32> {
    let mut p: TestPasid = payload(&cmd);
    let stdev = get_stdev(u, cmd.id)?;
    let dev = stdev.device();
    match cmd.op {
        IOMMU_TEST_OP_PASID_ATTACH | IOMMU_TEST_OP_PASID_REPLACE => {
            let replace = cmd.op == IOMMU_TEST_OP_PASID_REPLACE;
            p.pt_id = match (p.pasid, replace) {
                (0, false) => dev.attach(u.ctx, p.pt_id)?,
                (0, true) => dev.replace(u.ctx, p.pt_id)?,
                (pasid, replace) => dev.attach_pasid(u.ctx, pasid, p.pt_id, replace)?,
            };
            set_payload(&mut cmd, &p);
            if let Err(e) = u.respond(&cmd) {
                if !replace {
                    if p.pasid == 0 {
                        dev.detach(u.ctx);
                    } else {
                        dev.detach_pasid(u.ctx, p.pasid);
                    }
                }
                return Err(e);
            }
        }
        IOMMU_TEST_OP_PASID_DETACH => {
            if p.pasid == 0 {
                dev.detach(u.ctx);
            } else {
                dev.detach_pasid(u.ctx, p.pasid);
            }
        }
        _ => {
            let have = dev.pasid_hwpt(p.pasid);
            if p.pt_id == 0 {
                if let Some(h) = have {
                    bail!(
                        EINVAL,
                        "PASID_CHECK_HWPT: PASID {} is attached to HWPT {h}",
                        p.pasid
                    );
                }
            } else {
                // the HWPT must exist (iommufd_get_hwpt)
                let o = u.ctx.get_any(p.pt_id)?;
                if !o.is::<crate::hwpt::HwptPaging>() && !o.is::<crate::hwpt::nested::HwptNested>()
                {
                    bail!(ENOENT, "object {} is a {}, not a HWPT", p.pt_id, o.kind());
                }
                if have != Some(p.pt_id) {
                    bail!(
                        EINVAL,
                        "PASID_CHECK_HWPT: PASID {} is attached to {have:?}, not HWPT {}",
                        p.pasid,
                        p.pt_id
                    );
                }
            }
        }
    }
    Ok(0)
}

/// `TRIGGER_VEVENT` (Linux 6.15): device `dev_id`, attached to a nested
/// HWPT of a vIOMMU on which it has a vDEVICE of a non-zero virtual ID,
/// reports one `iommu_viommu_event_selftest` (that ID) to the vIOMMU's
/// `IOMMU_VEVENTQ_TYPE_SELFTEST` queue. `ENOENT` when the device is not so
/// attached, `EOPNOTSUPP` when the vIOMMU has no such queue.
fn trigger_vevent(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let t: TestTriggerVevent = payload(cmd);
    let dev = crate::device::get_device(u.ctx, t.dev_id)?;
    let viommu = match dev.attached() {
        Some(crate::device::HwptRef::Nested(n)) => n.viommu().cloned(),
        _ => None,
    };
    let Some(viommu) = viommu else {
        bail!(
            ENOENT,
            "TRIGGER_VEVENT: device {} is not attached to a nested HWPT of a vIOMMU",
            t.dev_id
        );
    };
    let virt_id = match viommu.vdev_id_of(&dev) {
        Ok(v) if v != 0 => v,
        _ => bail!(
            ENOENT,
            "TRIGGER_VEVENT: device {} has no vDEVICE with a non-zero virtual ID",
            t.dev_id
        ),
    };
    let ev = IommuViommuEventSelftest {
        virt_id: virt_id as u32,
    };
    viommu.report_event(IOMMU_VEVENTQ_TYPE_SELFTEST, ev.as_bytes())?;
    Ok(0)
}

/// `TRIGGER_IOPF`: the mock device `dev_id` raises one page request (the
/// last of its group; `PASID_VALID` for a PASID other than 0). Where it
/// goes, or that nothing takes it, is the device layer's business: the
/// command succeeds either way, as the kernel's does.
fn trigger_iopf(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let t: TestTriggerIopf = payload(cmd);
    let dev = crate::device::get_device(u.ctx, t.dev_id)?;
    if dev.driver().hw_info().0 != device::IOMMU_HW_INFO_TYPE_SELFTEST {
        bail!(
            EINVAL,
            "TRIGGER_IOPF: device {} is not a mock device",
            t.dev_id
        );
    }
    dev.report_fault(crate::fault::PageFault {
        pasid_valid: t.pasid != 0,
        last_page: true,
        pasid: t.pasid,
        grpid: t.grpid,
        perm: t.perm,
        addr: t.addr,
        length: 0,
    });
    Ok(0)
}

/// `IOMMU_TEST_OP_ADD_RESERVED`: reserve an IOVA range in an IOAS.
fn add_reserved(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let r: TestAddReserved = payload(cmd);
    if r.length == 0 {
        bail!(EINVAL, "ADD_RESERVED: length is zero");
    }
    let Some(last) = r.start.checked_add(r.length - 1) else {
        bail!(
            EOVERFLOW,
            "ADD_RESERVED: start {:#x} + length {:#x} overflows",
            r.start,
            r.length
        );
    };
    let ioas = u.ctx.ioas(cmd.id)?;
    ioas.iopt().add_reserved(r.start, last, 0)?;
    Ok(0)
}

/// `IOMMU_TEST_OP_MD_CHECK_REFS`: every page of the range must be pinned by
/// exactly `refs` pages objects (the kernel compares page pin refcounts).
fn check_refs(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let c: TestCheckRefs = payload(cmd);
    let ps = page_size();
    if !c.length.is_multiple_of(ps)
        || !c.uptr.is_multiple_of(ps)
        || c.uptr.checked_add(c.length).is_none()
    {
        bail!(
            EINVAL,
            "MD_CHECK_REFS: uptr {:#x} and length {:#x} must be page aligned",
            c.uptr,
            c.length
        );
    }
    // The user's pages may be a shared mapping of a file that an
    // IOAS_MAP_FILE pinned through the engine's own mapping of it.
    let files = crate::user::FileMaps::snapshot();
    check_user_range(&**u.mem, c.uptr, c.length, ps, |off, len| {
        (off..off + len).step_by(ps as usize).find_map(|o| {
            let addr = c.uptr + o;
            let n = Pages::pins_of_user_page_in(addr, &files);
            (n != c.refs).then(|| {
                (
                    o,
                    crate::err!(
                        EIO,
                        "MD_CHECK_REFS: page {addr:#x} is pinned {n} time(s), expected {}",
                        c.refs
                    ),
                )
            })
        })
    })?;
    Ok(0)
}
