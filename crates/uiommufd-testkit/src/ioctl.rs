//! Typed wrappers over [`uiommufd::dispatch::ioctl`]: each builds the
//! command's struct as a program would, makes the call through an
//! [`Ioctl`] and returns the reply's fields, or the errno.
//!
//! [`Ioctl`] is how the call is made: on an `Arc<Context>` it passes a real
//! user pointer to the struct (the tests); a harness can place the struct
//! elsewhere (the fuzz arena) or check every call (the fail-nth sweeps).

use std::sync::Arc;

use uiommufd::dispatch::ioctl;
use uiommufd::uapi::*;
use uiommufd::Context;
use zerocopy::{FromBytes, IntoBytes};

/// A way of making an ioctl on a context.
pub trait Ioctl {
    /// Run `cmd` on the struct `arg` (the reply is written back into it):
    /// the ioctl's return value, or the errno.
    fn ioc<T: IntoBytes + FromBytes + ?Sized>(&self, cmd: u32, arg: &mut T) -> Result<i32, i32>;
}

impl Ioctl for Arc<Context> {
    fn ioc<T: IntoBytes + FromBytes + ?Sized>(&self, cmd: u32, arg: &mut T) -> Result<i32, i32> {
        raw(self, cmd, arg.as_mut_bytes().as_mut_ptr() as u64)
    }
}

/// `cmd` with a plain argument (a number or an address).
pub fn raw(ctx: &Arc<Context>, cmd: u32, arg: u64) -> Result<i32, i32> {
    ioctl(ctx, cmd as u64, arg).map_err(|e| e.errno().0)
}

/// Run `cmd` on the struct `arg`; `Err(errno)` on failure.
pub fn ioc<C: Ioctl + ?Sized, T: IntoBytes + FromBytes + ?Sized>(
    c: &C,
    cmd: u32,
    arg: &mut T,
) -> Result<i32, i32> {
    c.ioc(cmd, arg)
}

/// Run `cmd` on the struct `arg`: the errno, 0 on success.
pub fn errno<C: Ioctl + ?Sized, T: IntoBytes + FromBytes + ?Sized>(
    c: &C,
    cmd: u32,
    arg: &mut T,
) -> i32 {
    err(c.ioc(cmd, arg))
}

/// The errno of a result, 0 on success.
pub fn err<V>(r: Result<V, i32>) -> i32 {
    r.err().unwrap_or(0)
}

/// Runs `cmd` once per case, in order, on the case's argument and checks
/// the case's errno (0: success); a mismatch names the case. Cases see the
/// effects of those before them, as a sequence of plain calls would.
#[track_caller]
pub fn errno_table<C: Ioctl + ?Sized, T: IntoBytes + FromBytes>(
    c: &C,
    cmd: u32,
    cases: impl IntoIterator<Item = (&'static str, T, i32)>,
) {
    for (case, mut arg, want) in cases {
        assert_eq!(errno(c, cmd, &mut arg), want, "{case}");
    }
}

/// `IOMMU_IOAS_ALLOC`: the IOAS ID.
pub fn try_ioas_alloc<C: Ioctl + ?Sized>(c: &C) -> Result<u32, i32> {
    let mut a = IommuIoasAlloc {
        size: 12,
        ..Default::default()
    };
    c.ioc(IOMMU_IOAS_ALLOC, &mut a)?;
    Ok(a.out_ioas_id)
}

/// `IOMMU_IOAS_ALLOC`, which must succeed.
pub fn ioas_alloc<C: Ioctl + ?Sized>(c: &C) -> u32 {
    try_ioas_alloc(c).expect("IOMMU_IOAS_ALLOC")
}

/// `IOMMU_DESTROY`.
pub fn destroy<C: Ioctl + ?Sized>(c: &C, id: u32) -> Result<i32, i32> {
    let mut d = IommuDestroy { size: 8, id };
    c.ioc(IOMMU_DESTROY, &mut d)
}

/// `IOMMU_IOAS_MAP` read/write at a fixed IOVA.
pub fn map_fixed<C: Ioctl + ?Sized>(
    c: &C,
    ioas: u32,
    va: u64,
    len: u64,
    iova: u64,
) -> Result<i32, i32> {
    map(c, ioas, va, len, Some(iova)).map(|_| 0)
}

/// `IOMMU_IOAS_MAP` read/write at `iova`, or at an allocated IOVA: the IOVA.
pub fn map<C: Ioctl + ?Sized>(
    c: &C,
    ioas: u32,
    va: u64,
    len: u64,
    iova: Option<u64>,
) -> Result<u64, i32> {
    let mut m = IommuIoasMap {
        size: 40,
        flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        user_va: va,
        length: len,
        iova: iova.unwrap_or(0),
        ..Default::default()
    };
    if iova.is_some() {
        m.flags |= IOMMU_IOAS_MAP_FIXED_IOVA;
    }
    c.ioc(IOMMU_IOAS_MAP, &mut m)?;
    Ok(m.iova)
}

/// `IOMMU_IOAS_COPY` read/write at a fixed IOVA.
pub fn copy<C: Ioctl + ?Sized>(
    c: &C,
    src: u32,
    src_iova: u64,
    dst: u32,
    dst_iova: u64,
    len: u64,
) -> Result<i32, i32> {
    let mut a = IommuIoasCopy {
        size: 40,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        dst_ioas_id: dst,
        src_ioas_id: src,
        length: len,
        dst_iova,
        src_iova,
    };
    c.ioc(IOMMU_IOAS_COPY, &mut a)
}

/// `IOMMU_IOAS_MAP_FILE` of `length` bytes of `fd` from `start` with
/// `flags`, at the IOVA `at` names (`IOMMU_IOAS_MAP_FIXED_IOVA` added) or
/// at one the IOAS picks: the IOVA.
pub fn map_file<C: Ioctl + ?Sized>(
    c: &C,
    ioas: u32,
    fd: i32,
    start: u64,
    length: u64,
    flags: u32,
    at: Option<u64>,
) -> Result<u64, i32> {
    let mut m = IommuIoasMapFile {
        size: size_of::<IommuIoasMapFile>() as u32,
        flags: flags | at.map_or(0, |_| IOMMU_IOAS_MAP_FIXED_IOVA),
        ioas_id: ioas,
        fd,
        start,
        length,
        iova: at.unwrap_or(0),
    };
    c.ioc(IOMMU_IOAS_MAP_FILE, &mut m)?;
    Ok(m.iova)
}

/// `IOMMU_IOAS_UNMAP` of a range (`0, u64::MAX` unmaps everything): the
/// bytes unmapped.
pub fn unmap<C: Ioctl + ?Sized>(c: &C, ioas: u32, iova: u64, length: u64) -> Result<u64, i32> {
    let mut u = IommuIoasUnmap {
        size: 24,
        ioas_id: ioas,
        iova,
        length,
    };
    c.ioc(IOMMU_IOAS_UNMAP, &mut u)?;
    Ok(u.length)
}

/// `IOMMU_IOAS_ALLOW_IOVAS` with the one range `[start, last]`.
pub fn allow_iovas<C: Ioctl + ?Sized>(c: &C, ioas: u32, start: u64, last: u64) -> Result<i32, i32> {
    let range = IommuIovaRange { start, last };
    let mut a = IommuIoasAllowIovas {
        size: 24,
        ioas_id: ioas,
        num_iovas: 1,
        allowed_iovas: range.as_bytes().as_ptr() as u64,
        ..Default::default()
    };
    c.ioc(IOMMU_IOAS_ALLOW_IOVAS, &mut a)
}

/// `IOMMU_VFIO_IOAS` op `op` on `id`: the IOAS ID of the reply.
pub fn vfio_ioas<C: Ioctl + ?Sized>(c: &C, op: u16, id: u32) -> Result<u32, i32> {
    let mut v = IommuVfioIoas {
        size: 12,
        ioas_id: id,
        op,
        __reserved: 0,
    };
    c.ioc(IOMMU_VFIO_IOAS, &mut v)?;
    Ok(v.ioas_id)
}

/// `IOMMU_HWPT_ALLOC` of `a` (its `size` is set): the HWPT ID.
pub fn hwpt_alloc_with<C: Ioctl + ?Sized>(c: &C, mut a: IommuHwptAlloc) -> Result<u32, i32> {
    a.size = 48;
    c.ioc(IOMMU_HWPT_ALLOC, &mut a)?;
    Ok(a.out_hwpt_id)
}

/// `IOMMU_HWPT_ALLOC` for device `dev` on `pt` (an IOAS, a parent HWPT or
/// a vIOMMU) with `flags`, fault queue `fault_id` and `data_len` bytes of
/// driver data of `data_type` at `data`: the HWPT ID.
#[allow(clippy::too_many_arguments)]
pub fn hwpt_alloc_data<C: Ioctl + ?Sized>(
    c: &C,
    dev: u32,
    pt: u32,
    flags: u32,
    fault_id: u32,
    data_type: u32,
    data: u64,
    data_len: u32,
) -> Result<u32, i32> {
    hwpt_alloc_with(
        c,
        IommuHwptAlloc {
            flags,
            dev_id: dev,
            pt_id: pt,
            data_type,
            data_len,
            data_uptr: data,
            fault_id,
            ..Default::default()
        },
    )
}

/// `IOMMU_HWPT_ALLOC` of a VT-d first-stage HWPT (`IOMMU_HWPT_DATA_VTD_S1`
/// data `d`) for device `idev` over nest parent `parent`, with fault queue
/// `fault` if any: the HWPT ID.
pub fn hwpt_alloc_vtd_s1<C: Ioctl + ?Sized>(
    c: &C,
    idev: u32,
    parent: u32,
    d: &uiommufd::vtd::nested::IommuHwptVtdS1,
    fault: Option<u32>,
) -> Result<u32, i32> {
    hwpt_alloc_data(
        c,
        idev,
        parent,
        fault.map_or(0, |_| IOMMU_HWPT_FAULT_ID_VALID),
        fault.unwrap_or(0),
        IOMMU_HWPT_DATA_VTD_S1,
        d as *const _ as u64,
        std::mem::size_of_val(d) as u32,
    )
}

/// `IOMMU_HWPT_ALLOC` of a paging HWPT for device `idev` on `pt`: no fault
/// queue, no driver data.
pub fn hwpt_alloc<C: Ioctl + ?Sized>(c: &C, idev: u32, pt: u32, flags: u32) -> Result<u32, i32> {
    hwpt_alloc_data(c, idev, pt, flags, 0, IOMMU_HWPT_DATA_NONE, 0, 0)
}

/// `IOMMU_HWPT_INVALIDATE` on HWPT or vIOMMU `id` of `num` entries of
/// `entry_len` bytes from `reqs` (a NULL array when `reqs` is empty): the
/// errno (0 on success) and the `entry_num` written back (the entries
/// done).
pub fn invalidate<C: Ioctl + ?Sized, R>(
    c: &C,
    id: u32,
    reqs: &[R],
    data_type: u32,
    entry_len: u32,
    num: u32,
) -> (i32, u32) {
    let mut a = IommuHwptInvalidate {
        size: 32,
        hwpt_id: id,
        data_uptr: if reqs.is_empty() {
            0
        } else {
            reqs.as_ptr() as u64
        },
        data_type,
        entry_len,
        entry_num: num,
        __reserved: 0,
    };
    let e = err(c.ioc(IOMMU_HWPT_INVALIDATE, &mut a));
    (e, a.entry_num)
}

/// `IOMMU_HWPT_INVALIDATE` of one VT-d first-stage leaf request (`npages`
/// pages at `addr`) on HWPT `hwpt`: (the errno or 0, `entry_num` after).
pub fn invalidate_vtd_s1_leaf<C: Ioctl + ?Sized>(
    c: &C,
    hwpt: u32,
    addr: u64,
    npages: u64,
) -> (i32, u32) {
    use uiommufd::vtd::nested::{
        IommuHwptVtdS1Invalidate, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, IOMMU_VTD_INV_FLAGS_LEAF,
    };
    let r = [IommuHwptVtdS1Invalidate {
        addr,
        npages,
        flags: IOMMU_VTD_INV_FLAGS_LEAF,
        __reserved: 0,
    }];
    let len = std::mem::size_of::<IommuHwptVtdS1Invalidate>() as u32;
    invalidate(c, hwpt, &r, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, len, 1)
}

/// `IOMMU_GET_HW_INFO` for `idev` with an 8-byte data buffer.
pub fn hw_info<C: Ioctl + ?Sized>(c: &C, idev: u32) -> Result<i32, i32> {
    let mut data = [0u8; 8];
    let mut h = IommuHwInfo {
        size: 32,
        dev_id: idev,
        data_len: 8,
        data_uptr: data.as_mut_ptr() as u64,
        ..Default::default()
    };
    c.ioc(IOMMU_GET_HW_INFO, &mut h)
}

/// `IOMMU_GET_HW_INFO` (the whole 40-byte struct) for `idev`, the
/// driver's data into `data`: the reply.
pub fn hw_info_into<C: Ioctl + ?Sized>(
    c: &C,
    idev: u32,
    data: &mut [u8],
) -> Result<IommuHwInfo, i32> {
    let mut h = IommuHwInfo {
        size: 40,
        dev_id: idev,
        data_len: data.len() as u32,
        data_uptr: data.as_mut_ptr() as u64,
        ..Default::default()
    };
    c.ioc(IOMMU_GET_HW_INFO, &mut h)?;
    Ok(h)
}

/// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
pub fn set_dirty_tracking<C: Ioctl + ?Sized>(c: &C, hwpt: u32, enable: bool) -> Result<i32, i32> {
    let mut s = IommuHwptSetDirtyTracking {
        size: 16,
        flags: if enable {
            IOMMU_HWPT_DIRTY_TRACKING_ENABLE
        } else {
            0
        },
        hwpt_id: hwpt,
        __reserved: 0,
    };
    c.ioc(IOMMU_HWPT_SET_DIRTY_TRACKING, &mut s)
}

/// `IOMMU_HWPT_GET_DIRTY_BITMAP` into the bitmap at `data`.
#[allow(clippy::too_many_arguments)]
pub fn get_dirty_bitmap<C: Ioctl + ?Sized>(
    c: &C,
    hwpt: u32,
    iova: u64,
    length: u64,
    page_size: u64,
    data: u64,
    flags: u32,
) -> Result<i32, i32> {
    let mut g = IommuHwptGetDirtyBitmap {
        size: 48,
        hwpt_id: hwpt,
        flags,
        __reserved: 0,
        iova,
        length,
        page_size,
        data,
    };
    c.ioc(IOMMU_HWPT_GET_DIRTY_BITMAP, &mut g)
}

/// `IOMMU_FAULT_QUEUE_ALLOC`: (fault ID, fault fd).
pub fn fault_alloc<C: Ioctl + ?Sized>(c: &C) -> Result<(u32, i32), i32> {
    let mut f = IommuFaultAlloc {
        size: 16,
        ..Default::default()
    };
    c.ioc(IOMMU_FAULT_QUEUE_ALLOC, &mut f)?;
    Ok((f.out_fault_id, f.out_fault_fd as i32))
}

// ---------------------------------------------------------------------------
// IOMMU_TEST_CMD

/// `IOMMU_TEST_CMD` op `op` on `id` with `payload` at the start of the
/// payload union: the command as the engine left it.
pub fn test_cmd<C: Ioctl + ?Sized>(
    c: &C,
    op: u32,
    id: u32,
    payload: &[u8],
) -> Result<IommuTestCmd, i32> {
    let mut t = IommuTestCmd {
        size: 72,
        op,
        id,
        ..Default::default()
    };
    t.payload[..payload.len()].copy_from_slice(payload);
    c.ioc(IOMMU_TEST_CMD, &mut t)?;
    Ok(t)
}

/// The reply of a test command: its payload read as a `T`.
pub fn reply<T: FromBytes>(t: &IommuTestCmd) -> T {
    T::read_from_prefix(&t.payload).expect("fits the payload").0
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS` on `pt`: (stdev, hwpt, idev).
pub fn mock_domain_flags<C: Ioctl + ?Sized>(
    c: &C,
    pt: u32,
    dev_flags: u32,
) -> Result<(u32, u32, u32), i32> {
    let md = TestMockDomainFlags {
        dev_flags,
        ..Default::default()
    };
    let t = test_cmd(c, IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt, md.as_bytes())?;
    let o: TestMockDomainFlags = reply(&t);
    Ok((o.out_stdev_id, o.out_hwpt_id, o.out_idev_id))
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN` on `pt`: (stdev, hwpt, idev).
pub fn mock_domain<C: Ioctl + ?Sized>(c: &C, pt: u32) -> Result<(u32, u32, u32), i32> {
    let t = test_cmd(c, IOMMU_TEST_OP_MOCK_DOMAIN, pt, &[])?;
    let o: TestMockDomainFlags = reply(&t);
    Ok((o.out_stdev_id, o.out_hwpt_id, o.out_idev_id))
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`: attach mock device `stdev` to `pt`.
pub fn mock_domain_replace<C: Ioctl + ?Sized>(c: &C, stdev: u32, pt: u32) -> Result<(), i32> {
    let r = TestMockDomainReplace { pt_id: pt };
    test_cmd(c, IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, r.as_bytes()).map(|_| ())
}

/// `IOMMU_TEST_OP_MD_CHECK_IOTLB`: IOTLB entry `id` of the mock nested
/// HWPT `hwpt` holds `value` (`EINVAL` when it does not).
pub fn check_iotlb<C: Ioctl + ?Sized>(c: &C, hwpt: u32, id: u32, value: u32) -> Result<(), i32> {
    let ci = TestCheckIotlb { id, iotlb: value };
    test_cmd(c, IOMMU_TEST_OP_MD_CHECK_IOTLB, hwpt, ci.as_bytes()).map(|_| ())
}

/// `IOMMU_TEST_OP_DEV_CHECK_CACHE`: cache entry `id` of the mock device
/// bound as device object `dev` holds `value` (`EINVAL` when it does not).
pub fn check_dev_cache<C: Ioctl + ?Sized>(c: &C, dev: u32, id: u32, value: u32) -> Result<(), i32> {
    let cc = TestCheckDevCache { id, cache: value };
    test_cmd(c, IOMMU_TEST_OP_DEV_CHECK_CACHE, dev, cc.as_bytes()).map(|_| ())
}

/// `IOMMU_TEST_OP_TRIGGER_VEVENT`: the mock vIOMMU of device object `dev`
/// reports a vEVENT for it.
pub fn trigger_vevent<C: Ioctl + ?Sized>(c: &C, dev: u32) -> Result<(), i32> {
    let t = TestTriggerVevent { dev_id: dev };
    test_cmd(c, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, t.as_bytes()).map(|_| ())
}

/// `IOMMU_TEST_OP_CREATE_ACCESS` on `ioas`: the access fd.
pub fn create_access<C: Ioctl + ?Sized>(c: &C, ioas: u32, flags: u32) -> Result<u32, i32> {
    let a = TestCreateAccess {
        out_access_fd: 0,
        flags,
    };
    let t = test_cmd(c, IOMMU_TEST_OP_CREATE_ACCESS, ioas, a.as_bytes())?;
    Ok(reply::<TestCreateAccess>(&t).out_access_fd)
}

/// `IOMMU_TEST_OP_ACCESS_REPLACE_IOAS`: move access `fd` to `ioas`.
pub fn replace_access_ioas<C: Ioctl + ?Sized>(c: &C, fd: u32, ioas: u32) -> Result<(), i32> {
    let r = TestAccessReplaceIoas { ioas_id: ioas };
    test_cmd(c, IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, fd, r.as_bytes()).map(|_| ())
}

/// `IOMMU_TEST_OP_ACCESS_PAGES`: pin `[iova, iova + len)` through access
/// `fd`, checking it against the user memory at `uptr`; the item ID.
pub fn access_pages<C: Ioctl + ?Sized>(
    c: &C,
    fd: u32,
    iova: u64,
    len: u64,
    uptr: u64,
    flags: u32,
) -> Result<u32, i32> {
    let p = TestAccessPages {
        flags,
        iova,
        length: len,
        uptr,
        ..Default::default()
    };
    let t = test_cmd(c, IOMMU_TEST_OP_ACCESS_PAGES, fd, p.as_bytes())?;
    Ok(reply::<TestAccessPages>(&t).out_access_pages_id)
}

/// `IOMMU_TEST_OP_DESTROY_ACCESS_PAGES`: unpin item `item` of access `fd`.
pub fn destroy_access_pages<C: Ioctl + ?Sized>(c: &C, fd: u32, item: u32) -> Result<(), i32> {
    let d = TestDestroyAccessPages {
        access_pages_id: item,
    };
    test_cmd(c, IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, fd, d.as_bytes()).map(|_| ())
}

/// `IOMMU_TEST_OP_ACCESS_RW`: move `len` bytes between IOVA `iova` (through
/// access `fd`) and the user buffer at `uptr`.
pub fn access_rw<C: Ioctl + ?Sized>(
    c: &C,
    fd: u32,
    iova: u64,
    len: u64,
    uptr: u64,
    flags: u32,
) -> Result<(), i32> {
    let rw = TestAccessRw {
        iova,
        length: len,
        uptr,
        flags,
        _pad: 0,
    };
    test_cmd(c, IOMMU_TEST_OP_ACCESS_RW, fd, rw.as_bytes()).map(|_| ())
}

/// `IOMMU_TEST_OP_DIRTY`: mark the pages of `[iova, iova + length)` whose
/// bit is set in the bitmap at `uptr` dirty in `hwpt`'s mock domain;
/// `out_nr_dirty`.
pub fn test_dirty<C: Ioctl + ?Sized>(
    c: &C,
    hwpt: u32,
    iova: u64,
    length: u64,
    page_size: u64,
    uptr: u64,
) -> Result<u64, i32> {
    let d = TestDirty {
        iova,
        length,
        page_size,
        uptr,
        ..Default::default()
    };
    let t = test_cmd(c, IOMMU_TEST_OP_DIRTY, hwpt, d.as_bytes())?;
    Ok(reply::<TestDirty>(&t).out_nr_dirty)
}
