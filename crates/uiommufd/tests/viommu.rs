//! vIOMMUs, vDEVICEs, vEVENT queues and HW queues through the ioctl ABI
//! (Linux 6.13 – 6.17 commands, at 7.2): each command's errno table in the
//! kernel's order, what depends on what (`EBUSY` for `IOMMU_DESTROY`), the
//! vEVENTQ fd's read rules and its lost-events header, and the mock
//! vIOMMU's cache invalidation and HW queue ordering.

use std::sync::Arc;

use uiommufd::plumbing::files;
use uiommufd::uapi::*;
use uiommufd::user::page_size as ps;
use uiommufd::veventq::VeventqFile;
use uiommufd::{Context, UapiLevel};
use uiommufd_testkit::{
    self as kit, err, errno, hwpt_alloc, hwpt_alloc_data, hwpt_alloc_with, invalidate, ioas_alloc,
    mock_domain_replace, Buf, Ioctl,
};
use zerocopy::FromBytes;

fn destroy(ctx: &Arc<Context>, id: u32) -> i32 {
    err(kit::destroy(ctx, id))
}

fn viommu_alloc(
    ctx: &Arc<Context>,
    dev: u32,
    hwpt: u32,
    ty: u32,
    data: Option<&mut IommuViommuSelftest>,
) -> Result<u32, i32> {
    let (uptr, len) = match data {
        Some(d) => (d as *mut IommuViommuSelftest as u64, 24),
        None => (0, 0),
    };
    let mut c = IommuViommuAlloc {
        size: 40,
        r#type: ty,
        dev_id: dev,
        hwpt_id: hwpt,
        data_len: len,
        data_uptr: uptr,
        ..Default::default()
    };
    ctx.ioc(IOMMU_VIOMMU_ALLOC, &mut c)?;
    Ok(c.out_viommu_id)
}

fn vdevice_alloc(ctx: &Arc<Context>, viommu: u32, dev: u32, virt: u64) -> Result<u32, i32> {
    let mut c = IommuVdeviceAlloc {
        size: 24,
        viommu_id: viommu,
        dev_id: dev,
        virt_id: virt,
        ..Default::default()
    };
    ctx.ioc(IOMMU_VDEVICE_ALLOC, &mut c)?;
    Ok(c.out_vdevice_id)
}

fn veventq_alloc(ctx: &Arc<Context>, viommu: u32, ty: u32, depth: u32) -> Result<(u32, i32), i32> {
    let mut c = IommuVeventqAlloc {
        size: 32,
        viommu_id: viommu,
        r#type: ty,
        veventq_depth: depth,
        ..Default::default()
    };
    ctx.ioc(IOMMU_VEVENTQ_ALLOC, &mut c)?;
    Ok((c.out_veventq_id, c.out_veventq_fd as i32))
}

fn hw_queue_alloc(
    ctx: &Arc<Context>,
    viommu: u32,
    ty: u32,
    index: u32,
    iova: u64,
    len: u64,
) -> Result<u32, i32> {
    let mut c = IommuHwQueueAlloc {
        size: 40,
        viommu_id: viommu,
        r#type: ty,
        index,
        nesting_parent_iova: iova,
        length: len,
        ..Default::default()
    };
    ctx.ioc(IOMMU_HW_QUEUE_ALLOC, &mut c)?;
    Ok(c.out_hw_queue_id)
}

fn nested_on(ctx: &Arc<Context>, dev: u32, pt: u32, flags: u32, fault: u32) -> Result<u32, i32> {
    let mut data = IommuHwptSelftest {
        iotlb: IOMMU_TEST_IOTLB_DEFAULT,
        pagetable_type: 0,
    };
    let uptr = &mut data as *mut IommuHwptSelftest as u64;
    hwpt_alloc_data(
        ctx,
        dev,
        pt,
        flags,
        fault,
        IOMMU_HWPT_DATA_SELFTEST,
        uptr,
        8,
    )
}

fn trigger_vevent(ctx: &Arc<Context>, dev: u32) -> i32 {
    err(kit::trigger_vevent(ctx, dev))
}

fn check_cache(ctx: &Arc<Context>, dev: u32, id: u32, value: u32) -> i32 {
    err(kit::check_dev_cache(ctx, dev, id, value))
}

/// The selftest fixture: an IOAS, a mock device on it, a nest-parent HWPT,
/// a mock vIOMMU on it and a nested HWPT on the vIOMMU.
struct Fix {
    ctx: Arc<Context>,
    ioas: u32,
    stdev: u32,
    dev: u32,
    parent: u32,
    viommu: u32,
    nested: u32,
}

fn fixture() -> Fix {
    let ctx = Context::new_at(UapiLevel::V7_2);
    let ioas = ioas_alloc(&ctx);
    let (stdev, _, dev) = kit::mock_domain(&ctx, ioas).unwrap();
    let parent = hwpt_alloc(&ctx, dev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT).unwrap();
    let viommu = viommu_alloc(&ctx, dev, parent, IOMMU_VIOMMU_TYPE_SELFTEST, None).unwrap();
    let nested = nested_on(&ctx, dev, viommu, 0, 0).unwrap();
    Fix {
        ctx,
        ioas,
        stdev,
        dev,
        parent,
        viommu,
        nested,
    }
}

#[test]
fn viommu_alloc_errno_table() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel = IOMMU_VIOMMU_TYPE_SELFTEST;
    // flags, then the DEFAULT type: EOPNOTSUPP before any lookup
    let mut c = IommuViommuAlloc {
        size: 40,
        flags: 1,
        r#type: sel,
        dev_id: 999,
        ..Default::default()
    };
    assert_eq!(errno(ctx, IOMMU_VIOMMU_ALLOC, &mut c), libc::EOPNOTSUPP);
    assert_eq!(
        err(viommu_alloc(
            ctx,
            999,
            f.parent,
            IOMMU_VIOMMU_TYPE_DEFAULT,
            None
        )),
        libc::EOPNOTSUPP
    );
    // the device, then the driver's type, then the HWPT
    assert_eq!(
        err(viommu_alloc(ctx, 999, f.parent, sel, None)),
        libc::ENOENT
    );
    assert_eq!(
        err(viommu_alloc(ctx, f.dev, 0, 0xdead, None)),
        libc::EOPNOTSUPP
    );
    assert_eq!(err(viommu_alloc(ctx, f.dev, 0, sel, None)), libc::ENOENT);
    assert_eq!(
        err(viommu_alloc(ctx, f.dev, f.ioas, sel, None)),
        libc::ENOENT,
        "an IOAS is not a paging HWPT"
    );
    let plain = hwpt_alloc(ctx, f.dev, f.ioas, 0).unwrap();
    assert_eq!(
        err(viommu_alloc(ctx, f.dev, plain, sel, None)),
        libc::EINVAL
    );
    assert_eq!(destroy(ctx, plain), 0);
    // what depends on what
    assert_eq!(destroy(ctx, f.parent), libc::EBUSY);
    assert_eq!(destroy(ctx, f.viommu), libc::EBUSY, "the nested HWPT");
    assert_eq!(destroy(ctx, f.nested), 0);
    assert_eq!(destroy(ctx, f.viommu), 0);
    assert_eq!(destroy(ctx, f.parent), 0);
    // the size rule: the end of out_viommu_id
    let mut c = IommuViommuAlloc {
        size: 23,
        ..Default::default()
    };
    assert_eq!(errno(ctx, IOMMU_VIOMMU_ALLOC, &mut c), libc::EINVAL);
    let mut long = [0u8; 48];
    long[..4].copy_from_slice(&48u32.to_ne_bytes());
    long[44] = 1;
    assert_eq!(errno(ctx, IOMMU_VIOMMU_ALLOC, &mut long), libc::E2BIG);
}

#[test]
fn viommu_data_loopback() {
    let f = fixture();
    let mut d = IommuViommuSelftest {
        in_data: 0xbeef,
        ..Default::default()
    };
    let v = viommu_alloc(
        &f.ctx,
        f.dev,
        f.parent,
        IOMMU_VIOMMU_TYPE_SELFTEST,
        Some(&mut d),
    )
    .unwrap();
    assert_eq!(d.out_data, 0xbeef);
    // its two pages through mmap of the fd: only exactly the region, shared,
    // not executable; the first word is in_data; mapped, the vIOMMU is busy
    let page = 4096u64;
    let (off, len) = (d.out_mmap_offset, d.out_mmap_length);
    assert_eq!(len, 2 * page);
    assert!(off >= page && off % page == 0, "offset {off:#x}");
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let sh = libc::MAP_SHARED;
    let e = |o, l, p, fl| f.ctx.mmap_target(o, l, p, fl).unwrap_err().errno().0;
    assert_eq!(e(off + page, len, rw, sh), libc::ENXIO);
    assert_eq!(e(off + 2 * page, len, rw, sh), libc::ENXIO);
    assert_eq!(e(off, len / 2, rw, sh), libc::ENXIO);
    assert_eq!(e(off, len * 2, rw, sh), libc::ENXIO);
    assert_eq!(e(off, len - 1, rw, sh), libc::EINVAL);
    assert_eq!(e(off, len, rw, libc::MAP_PRIVATE), libc::EINVAL);
    assert_eq!(e(off, len, rw | libc::PROT_EXEC, sh), libc::EPERM);
    let region = f.ctx.mmap_target(off, len, rw, sh).unwrap();
    // SAFETY: a shared mapping of the region's memfd, unmapped below.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len as usize, rw, sh, region.fd(), 0) };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: the mapping is readable.
    assert_eq!(unsafe { *(p as *const u32) }, 0xbeef);
    drop(region);
    assert_eq!(destroy(&f.ctx, v), libc::EBUSY, "mapped");
    // SAFETY: our own mapping.
    unsafe { libc::munmap(p, len as usize) };
    // a length below the end of out_data is EINVAL
    let mut c = IommuViommuAlloc {
        size: 40,
        r#type: IOMMU_VIOMMU_TYPE_SELFTEST,
        dev_id: f.dev,
        hwpt_id: f.parent,
        data_len: 4,
        data_uptr: &mut d as *mut IommuViommuSelftest as u64,
        ..Default::default()
    };
    assert_eq!(errno(&f.ctx, IOMMU_VIOMMU_ALLOC, &mut c), libc::EINVAL);
    c.data_len = 24;
    c.data_uptr = 8; // unreadable
    assert_eq!(errno(&f.ctx, IOMMU_VIOMMU_ALLOC, &mut c), libc::EFAULT);
    assert_eq!(destroy(&f.ctx, v), 0);
    // withdrawn with it
    assert_eq!(
        f.ctx.mmap_target(off, len, rw, sh).unwrap_err().errno().0,
        libc::ENXIO
    );
}

#[test]
fn nested_on_viommu_and_vdevice_rules() {
    let f = fixture();
    let ctx = &f.ctx;
    // nested allocation on a vIOMMU: flags, data, then the driver
    assert_eq!(
        err(nested_on(ctx, f.dev, f.viommu, 1 << 31, 0)),
        libc::EOPNOTSUPP
    );
    let mut h = IommuHwptAlloc {
        dev_id: f.dev,
        pt_id: f.viommu,
        ..Default::default()
    };
    assert_eq!(err(hwpt_alloc_with(ctx, h)), libc::EOPNOTSUPP, "no data");
    h.data_type = 0x1234;
    h.data_len = 8;
    assert_eq!(err(hwpt_alloc_with(ctx, h)), libc::EOPNOTSUPP, "data type");
    assert_eq!(
        err(nested_on(
            ctx,
            f.dev,
            f.viommu,
            IOMMU_HWPT_FAULT_ID_VALID,
            u32::MAX
        )),
        libc::ENOENT
    );
    let pasid = nested_on(ctx, f.dev, f.viommu, IOMMU_HWPT_ALLOC_PASID, 0).unwrap();
    assert_eq!(destroy(ctx, pasid), 0);

    // attaching to a nested HWPT of the vIOMMU needs a vDEVICE there
    assert_eq!(
        err(mock_domain_replace(ctx, f.stdev, f.nested)),
        libc::ENOENT
    );
    assert_eq!(err(vdevice_alloc(ctx, 999, f.dev, 1)), libc::ENOENT);
    assert_eq!(err(vdevice_alloc(ctx, f.viommu, 999, 1)), libc::ENOENT);
    let vdev = vdevice_alloc(ctx, f.viommu, f.dev, 0x99).unwrap();
    assert_eq!(
        err(vdevice_alloc(ctx, f.viommu, f.dev, 0x88)),
        libc::EEXIST,
        "one vDEVICE per device"
    );
    let (stdev2, _, dev2) = kit::mock_domain(ctx, f.ioas).unwrap();
    assert_eq!(
        err(vdevice_alloc(ctx, f.viommu, dev2, 0x99)),
        libc::EEXIST,
        "the virtual ID is taken"
    );
    assert_eq!(err(mock_domain_replace(ctx, f.stdev, f.nested)), 0);
    assert_eq!(destroy(ctx, f.nested), libc::EBUSY);
    assert_eq!(destroy(ctx, f.viommu), libc::EBUSY);
    assert_eq!(err(mock_domain_replace(ctx, f.stdev, f.ioas)), 0);
    assert_eq!(destroy(ctx, vdev), 0);
    // the virtual ID is free again
    let vdev2 = vdevice_alloc(ctx, f.viommu, dev2, 0x99).unwrap();
    // unbinding the device first leaves a tombstone: its ID stays taken
    assert_eq!(destroy(ctx, stdev2), 0);
    assert_eq!(destroy(ctx, vdev2), libc::ENOENT);
    let next = ioas_alloc(ctx);
    assert_ne!(next, vdev2, "a tombstone's ID is not handed out again");
    assert!(ctx.check_invariants().is_ok());
}

#[test]
fn viommu_invalidate_errno_table() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
    let len = size_of::<IommuViommuInvalidateSelftest>() as u32;
    vdevice_alloc(ctx, f.viommu, f.dev, 0x99).unwrap();
    for i in 0..4 {
        assert_eq!(check_cache(ctx, f.dev, i, IOMMU_TEST_DEV_CACHE_DEFAULT), 0);
    }
    let req = |flags, vdev_id, cache_id| IommuViommuInvalidateSelftest {
        flags,
        vdev_id,
        cache_id,
    };
    let mut reqs = [IommuViommuInvalidateSelftest::default(); 2];
    let bad_type = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID;
    let (array, null) = (false, true);
    // (first entry, NULL array, data type, entry_len, entry_num, errno,
    // why): nothing done
    let rows = [
        (
            reqs[0],
            array,
            sel,
            len,
            0,
            0,
            "an empty array checks the type only",
        ),
        (
            reqs[0],
            array,
            bad_type,
            len,
            1,
            libc::EINVAL,
            "an unknown type",
        ),
        (reqs[0], null, sel, len, 1, libc::EINVAL, "NULL array"),
        (reqs[0], array, sel, 0, 1, libc::EINVAL, "entry_len 0"),
        (
            req(!0, 0x99, 0),
            array,
            sel,
            len,
            1,
            libc::EOPNOTSUPP,
            "unknown flags",
        ),
        (
            req(0, 0x99, MOCK_DEV_CACHE_ID_MAX + 1),
            array,
            sel,
            len,
            1,
            libc::EINVAL,
            "cache ID",
        ),
        (
            req(0, 0x9, 0),
            array,
            sel,
            len,
            1,
            libc::EINVAL,
            "an unknown virtual ID",
        ),
    ];
    for (first, is_null, ty, l, num, want, why) in rows {
        reqs[0] = first;
        let r = if is_null { &[][..] } else { &reqs[..] };
        assert_eq!(invalidate(ctx, f.viommu, r, ty, l, num), (want, 0), "{why}");
    }
    // a longer entry must be zero past what the driver knows (E2BIG)
    let mut wide = [0u32; 4];
    wide[1] = 0x99;
    wide[3] = 1;
    let mut c = IommuHwptInvalidate {
        size: 32,
        hwpt_id: f.viommu,
        data_uptr: wide.as_ptr() as u64,
        data_type: sel,
        entry_len: 16,
        entry_num: 1,
        __reserved: 0,
    };
    assert_eq!(errno(ctx, IOMMU_HWPT_INVALIDATE, &mut c), libc::E2BIG);
    // the first entry is done, the second fails
    reqs = [req(0, 0x99, 0), req(0xffff_ffff, 0x99, 1)];
    assert_eq!(
        invalidate(ctx, f.viommu, &reqs, sel, len, 2),
        (libc::EOPNOTSUPP, 1)
    );
    assert_eq!(check_cache(ctx, f.dev, 0, 0), 0);
    assert_eq!(check_cache(ctx, f.dev, 1, IOMMU_TEST_DEV_CACHE_DEFAULT), 0);
    reqs[0] = req(IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0);
    assert_eq!(invalidate(ctx, f.viommu, &reqs, sel, len, 1), (0, 1));
    for i in 0..4 {
        assert_eq!(check_cache(ctx, f.dev, i, 0), 0);
    }
    // another kind of object: EINVAL
    assert_eq!(
        invalidate(ctx, f.ioas, &reqs, sel, len, 1),
        (libc::EINVAL, 0)
    );
}

fn read_events(fd: i32, len: usize) -> Result<Vec<u8>, i32> {
    let file = files::get_as::<VeventqFile>(fd).expect("a vEVENTQ fd");
    let mut buf = vec![0u8; len];
    let n = file
        .queue()
        .read_events(&mut buf)
        .map_err(|e| e.errno().0)?;
    buf.truncate(n);
    Ok(buf)
}

/// (flags, sequence, virt_id or None) of each record read.
fn records(mut b: &[u8]) -> Vec<(u32, u32, Option<u32>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (h, rest) = IommufdVeventHeader::read_from_prefix(b).unwrap();
        if h.flags & IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
            out.push((h.flags, h.sequence, None));
            b = rest;
        } else {
            let (e, rest) = IommuViommuEventSelftest::read_from_prefix(rest).unwrap();
            out.push((h.flags, h.sequence, Some(e.virt_id)));
            b = rest;
        }
    }
    out
}

#[test]
fn veventq_alloc_read_and_overflow() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel = IOMMU_VEVENTQ_TYPE_SELFTEST;
    let mut c = IommuVeventqAlloc {
        size: 32,
        flags: 1,
        viommu_id: f.viommu,
        r#type: sel,
        veventq_depth: 2,
        ..Default::default()
    };
    assert_eq!(errno(ctx, IOMMU_VEVENTQ_ALLOC, &mut c), libc::EOPNOTSUPP);
    c.flags = 0;
    c.__reserved = 1;
    assert_eq!(errno(ctx, IOMMU_VEVENTQ_ALLOC, &mut c), libc::EOPNOTSUPP);
    assert_eq!(
        err(veventq_alloc(ctx, f.viommu, IOMMU_VEVENTQ_TYPE_DEFAULT, 2)),
        libc::EOPNOTSUPP
    );
    assert_eq!(err(veventq_alloc(ctx, f.viommu, sel, 0)), libc::EINVAL);
    assert_eq!(
        err(veventq_alloc(ctx, f.viommu, sel, (1 << 19) + 1)),
        libc::EINVAL
    );
    assert_eq!(err(veventq_alloc(ctx, f.ioas, sel, 2)), libc::ENOENT);
    let (q, fd) = veventq_alloc(ctx, f.viommu, sel, 2).unwrap();
    assert_eq!(err(veventq_alloc(ctx, f.viommu, sel, 2)), libc::EEXIST);
    assert_eq!(destroy(ctx, f.viommu), libc::EBUSY);
    assert_eq!(destroy(ctx, q), libc::EBUSY, "its fd is open");

    // a read shorter than the header is EINVAL, also when empty
    assert_eq!(read_events(fd, 0), Err(libc::EINVAL));
    assert_eq!(read_events(fd, 7), Err(libc::EINVAL));
    assert_eq!(read_events(fd, 64), Ok(vec![]));

    // no event without a vDEVICE attached through the vIOMMU
    assert_eq!(trigger_vevent(ctx, f.dev), libc::ENOENT);
    vdevice_alloc(ctx, f.viommu, f.dev, 0x99).unwrap();
    assert_eq!(err(mock_domain_replace(ctx, f.stdev, f.nested)), 0);
    assert_eq!(trigger_vevent(ctx, f.dev), 0);
    // the header fits, the event does not
    assert_eq!(read_events(fd, 8), Err(libc::EINVAL));
    assert_eq!(records(&read_events(fd, 64).unwrap()), [(0, 0, Some(0x99))]);

    // three events into a queue of two: the third is lost
    for _ in 0..3 {
        assert_eq!(trigger_vevent(ctx, f.dev), 0);
    }
    let lost = IOMMU_VEVENTQ_FLAG_LOST_EVENTS;
    // a short read stops before what does not fit
    assert_eq!(records(&read_events(fd, 12).unwrap()), [(0, 1, Some(0x99))]);
    assert_eq!(
        records(&read_events(fd, 64).unwrap()),
        [(0, 2, Some(0x99)), (lost, 3, None)]
    );
    // the next event follows the gap
    assert_eq!(trigger_vevent(ctx, f.dev), 0);
    assert_eq!(records(&read_events(fd, 64).unwrap()), [(0, 4, Some(0x99))]);
    // a loss while the header waits moves it to the tail with a new number
    for _ in 0..4 {
        assert_eq!(trigger_vevent(ctx, f.dev), 0);
    }
    assert_eq!(
        records(&read_events(fd, 64).unwrap()),
        [(0, 5, Some(0x99)), (0, 6, Some(0x99)), (lost, 8, None)]
    );
    // an event queued after a loss replaces the header
    for _ in 0..3 {
        assert_eq!(trigger_vevent(ctx, f.dev), 0);
    }
    assert_eq!(records(&read_events(fd, 12).unwrap()), [(0, 9, Some(0x99))]);
    assert_eq!(trigger_vevent(ctx, f.dev), 0);
    assert_eq!(
        records(&read_events(fd, 64).unwrap()),
        [(0, 10, Some(0x99)), (0, 12, Some(0x99))]
    );

    files::close(fd).unwrap();
    assert_eq!(destroy(ctx, q), 0);
    // no queue of the type: the report is refused
    assert_eq!(trigger_vevent(ctx, f.dev), libc::EOPNOTSUPP);
}

#[test]
fn hw_queue_errno_table_and_order() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel = IOMMU_HW_QUEUE_TYPE_SELFTEST;
    let ps = ps();
    let iova = MOCK_APERTURE_START;
    assert_eq!(
        err(hw_queue_alloc(
            ctx,
            f.viommu,
            IOMMU_HW_QUEUE_TYPE_DEFAULT,
            0,
            iova,
            ps
        )),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        err(hw_queue_alloc(ctx, f.viommu, sel, 0, iova, 0)),
        libc::EINVAL
    );
    assert_eq!(
        err(hw_queue_alloc(ctx, f.viommu, sel, 0, u64::MAX, ps)),
        libc::EOVERFLOW
    );
    assert_eq!(
        err(hw_queue_alloc(ctx, f.ioas, sel, 0, iova, ps)),
        libc::ENOENT
    );
    assert_eq!(
        err(hw_queue_alloc(ctx, f.viommu, 0x1234, 0, iova, ps)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        err(hw_queue_alloc(ctx, f.viommu, sel, 0, iova, ps)),
        libc::ENOENT,
        "nothing mapped there"
    );
    let buf = Buf::new(2 * ps, ps);
    kit::map_fixed(ctx, f.ioas, buf.addr(), ps, iova).unwrap();
    kit::map_fixed(ctx, f.ioas, buf.addr() + ps, ps, iova + ps).unwrap();
    let before = ctx.object_count();
    assert_eq!(
        err(hw_queue_alloc(ctx, f.viommu, sel, 1, iova, ps)),
        libc::EIO
    );
    assert_eq!(
        err(hw_queue_alloc(
            ctx,
            f.viommu,
            sel,
            IOMMU_TEST_HW_QUEUE_MAX,
            iova,
            ps
        )),
        libc::EINVAL
    );
    assert_eq!(ctx.object_count(), before, "failures leave nothing behind");
    let q0 = hw_queue_alloc(ctx, f.viommu, sel, 0, iova, ps).unwrap();
    assert_eq!(
        err(hw_queue_alloc(ctx, f.viommu, sel, 0, iova, ps)),
        libc::EEXIST
    );
    // the queue's page is locked against unmap; the other page is not
    assert_eq!(err(kit::unmap(ctx, f.ioas, iova, ps)), libc::EBUSY);
    kit::unmap(ctx, f.ioas, iova + ps, ps).unwrap();
    let q1 = hw_queue_alloc(ctx, f.viommu, sel, 1, iova + ps / 2, ps / 2).unwrap();
    assert_eq!(destroy(ctx, q0), libc::EBUSY, "queue 1 depends on it");
    assert_eq!(destroy(ctx, f.viommu), libc::EBUSY);
    assert_eq!(destroy(ctx, q1), 0);
    assert_eq!(destroy(ctx, q0), 0);
    kit::unmap(ctx, f.ioas, iova, ps).unwrap();
    assert!(ctx.check_invariants().is_ok());
}

#[test]
fn levels_before_the_family() {
    // 6.12 has none of it; TRIGGER_VEVENT came with vEVENTQs (6.15)
    let ctx = Context::new_at(UapiLevel::V6_12);
    let mut c = IommuViommuAlloc {
        size: 40,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_VIOMMU_ALLOC, &mut c), libc::ENOTTY);
    let ctx = Context::new_at(UapiLevel::V6_13);
    let ioas = ioas_alloc(&ctx);
    let (_, _, dev) = kit::mock_domain(&ctx, ioas).unwrap();
    assert_eq!(trigger_vevent(&ctx, dev), libc::EOPNOTSUPP);
    let mut q = IommuVeventqAlloc {
        size: 32,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_VEVENTQ_ALLOC, &mut q), libc::ENOTTY);
    let parent = hwpt_alloc(&ctx, dev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT).unwrap();
    let v = viommu_alloc(&ctx, dev, parent, IOMMU_VIOMMU_TYPE_SELFTEST, None).unwrap();
    assert_eq!(
        err(hw_queue_alloc(
            &ctx,
            v,
            IOMMU_HW_QUEUE_TYPE_SELFTEST,
            0,
            0,
            1
        )),
        libc::ENOTTY
    );
}
