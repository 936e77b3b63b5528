//! Issue 10 item 7: an object ID is only ever resolved in the context that
//! owns the object it is used with. Two contexts; every command that takes
//! an ID, given IDs that exist only in the other context, answers `ENOENT`;
//! an access fd (a file usable through any iommufd, as in the kernel) only
//! ever reaches its own context.

use std::sync::Arc;

use uiommufd::uapi::*;
use uiommufd::Context;
use zerocopy::IntoBytes;

use uiommufd_testkit::*;

const A: u64 = MOCK_APERTURE_START;

fn access_read(ctx: &Arc<Context>, fd: u32, iova: u64) -> Result<u8, i32> {
    let mut out = [0u8; 1];
    access_rw(ctx, fd, iova, 1, out.as_mut_ptr() as u64, 0)?;
    Ok(out[0])
}

/// Context B's objects: IDs that context A does not have.
struct Side {
    ctx: Arc<Context>,
    ioas: u32,
    ioas2: u32,
    stdev: u32,
    hwpt: u32,
    idev: u32,
    buf: Buf,
}

fn side(skip: usize, fill: u8) -> Side {
    let ctx = Context::new();
    for _ in 0..skip {
        ioas_alloc(&ctx);
    }
    let ioas = ioas_alloc(&ctx);
    let ioas2 = ioas_alloc(&ctx);
    let (stdev, hwpt, idev) = mock_domain(&ctx, ioas).unwrap();
    let buf = Buf::new(4096, 4096);
    // SAFETY: the 4096 bytes of `buf` from its aligned start are ours.
    unsafe { std::ptr::write_bytes(buf.addr() as *mut u8, fill, 4096) };
    map_fixed(&ctx, ioas, buf.addr(), 4096, A).unwrap();
    map_fixed(&ctx, ioas2, buf.addr(), 4096, A).unwrap();
    Side {
        ctx,
        ioas,
        ioas2,
        stdev,
        hwpt,
        idev,
        buf,
    }
}

/// The reported bug: ACCESS_REPLACE_IOAS issued through context B with an
/// access fd of context A resolved the IOAS ID in B and let A's access
/// read B's memory.
#[test]
fn access_replace_ioas_resolves_in_the_access_context() {
    let _serial = serial();
    let a = side(0, 0xaa);
    let b = side(8, 0xbb);
    let fd = create_access(&a.ctx, a.ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES).unwrap();
    assert_eq!(access_read(&a.ctx, fd, A), Ok(0xaa));
    // B's IOAS through B's fd, through A's fd: not the access's context
    assert_eq!(replace_access_ioas(&b.ctx, fd, b.ioas), Err(libc::ENOENT));
    assert_eq!(replace_access_ioas(&a.ctx, fd, b.ioas), Err(libc::ENOENT));
    assert_eq!(access_read(&b.ctx, fd, A), Ok(0xaa), "still A's memory");
    // the access's own IOAS IDs work whichever iommufd carries the command
    assert_eq!(replace_access_ioas(&b.ctx, fd, a.ioas2), Ok(()));
    assert_eq!(access_read(&a.ctx, fd, A), Ok(0xaa));
    assert_eq!(replace_access_ioas(&a.ctx, fd, a.ioas), Ok(()));
    uiommufd::plumbing::files::close(fd as i32).unwrap();
    for s in [&a, &b] {
        s.ctx.check_invariants().unwrap();
    }
    drop(b.buf);
    drop(a.buf);
}

/// Every command that takes an object ID, given B's IDs through A.
#[test]
fn ids_of_another_context_are_enoent_everywhere() {
    let _serial = serial();
    let a = side(0, 0xaa);
    let b = side(8, 0xbb);
    let max_a = [a.ioas, a.ioas2, a.stdev, a.hwpt, a.idev].into_iter().max();
    let min_b = [b.ioas, b.ioas2, b.stdev, b.hwpt, b.idev].into_iter().min();
    assert!(max_a < min_b, "B's IDs do not exist in A");
    let ctx = &a.ctx;
    fn e<T>(what: &str, r: Result<T, i32>) {
        assert_eq!(err(r), libc::ENOENT, "{what}");
    }
    let te = |what: &str, op: u32, id: u32, p: &[u8]| {
        assert_eq!(
            test_cmd(ctx, op, id, p).map(|_| ()),
            Err(libc::ENOENT),
            "{what}"
        )
    };
    let scratch = Buf::new(8192, 4096);
    let sp = scratch.addr();

    // IOMMU_* commands
    e("DESTROY", destroy(ctx, b.ioas));
    e("IOAS_MAP", map_fixed(ctx, b.ioas, sp, 4096, A + (1 << 20)));
    e("IOAS_UNMAP", unmap(ctx, b.ioas, 0, u64::MAX));
    let mut r = IommuIoasIovaRanges {
        size: 32,
        ioas_id: b.ioas,
        ..Default::default()
    };
    e("IOAS_IOVA_RANGES", ioc(ctx, IOMMU_IOAS_IOVA_RANGES, &mut r));
    e("IOAS_ALLOW_IOVAS", allow_iovas(ctx, b.ioas, A, A + 4095));
    for (src, dst) in [(b.ioas, a.ioas2), (a.ioas, b.ioas)] {
        e("IOAS_COPY", copy(ctx, src, A, dst, A + (1 << 20), 4096));
    }
    let mut o = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_HUGE_PAGES,
        op: IOMMU_OPTION_OP_GET,
        object_id: b.ioas,
        ..Default::default()
    };
    e("OPTION", ioc(ctx, IOMMU_OPTION, &mut o));
    e("VFIO_IOAS SET", vfio_ioas(ctx, IOMMU_VFIO_IOAS_SET, b.ioas));
    // the kernel answers EINVAL for a pt_id it cannot find
    for (dev, pt, errno) in [
        (b.idev, a.ioas, libc::ENOENT),
        (a.idev, b.ioas, libc::EINVAL),
        (a.idev, b.hwpt, libc::EINVAL),
    ] {
        let r = hwpt_alloc(ctx, dev, pt, 0);
        assert_eq!(r, Err(errno), "HWPT_ALLOC dev {dev} pt {pt}");
    }
    e("GET_HW_INFO", hw_info(ctx, b.idev));
    e("SET_DIRTY_TRACKING", set_dirty_tracking(ctx, b.hwpt, false));
    e(
        "GET_DIRTY_BITMAP",
        get_dirty_bitmap(ctx, b.hwpt, A, 4096, 4096, sp, 0),
    );
    let inv = [IommuHwptInvalidateSelftest::default()];
    let sel = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    let (errno, _) = invalidate(ctx, b.hwpt, &inv, sel, 8, 1);
    assert_eq!(errno, libc::ENOENT, "HWPT_INVALIDATE");

    // IOMMU_TEST_CMD ops that take an ID
    let res = TestAddReserved {
        start: A + (2 << 20),
        length: 4096,
    };
    te(
        "ADD_RESERVED",
        IOMMU_TEST_OP_ADD_RESERVED,
        b.ioas,
        res.as_bytes(),
    );
    e("MOCK_DOMAIN", mock_domain(ctx, b.ioas));
    e("MOCK_DOMAIN on B's HWPT", mock_domain(ctx, b.hwpt));
    e("MOCK_DOMAIN_FLAGS", mock_domain_flags(ctx, b.ioas, 0));
    e(
        "MOCK_DOMAIN_REPLACE of B's stdev",
        mock_domain_replace(ctx, b.stdev, a.ioas2),
    );
    for pt in [b.ioas, b.hwpt] {
        e(
            "MOCK_DOMAIN_REPLACE to B's pt",
            mock_domain_replace(ctx, a.stdev, pt),
        );
    }
    let cm = TestCheckMap {
        iova: A,
        length: 4096,
        uptr: b.buf.addr(),
    };
    te(
        "MD_CHECK_MAP",
        IOMMU_TEST_OP_MD_CHECK_MAP,
        b.hwpt,
        cm.as_bytes(),
    );
    e("CREATE_ACCESS", create_access(ctx, b.ioas, 0));
    e("DIRTY", test_dirty(ctx, b.hwpt, A, 4096, 4096, sp));
    e("MD_CHECK_IOTLB", check_iotlb(ctx, b.hwpt, 0, 0));
    let ti = TestTriggerIopf {
        dev_id: b.idev,
        ..Default::default()
    };
    te("TRIGGER_IOPF", IOMMU_TEST_OP_TRIGGER_IOPF, 0, ti.as_bytes());
    // an access fd of A through B: its own context only
    let fd = create_access(&a.ctx, a.ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES).unwrap();
    assert_eq!(replace_access_ioas(&b.ctx, fd, b.ioas2), Err(libc::ENOENT));
    assert_eq!(access_read(&b.ctx, fd, A), Ok(0xaa));
    uiommufd::plumbing::files::close(fd as i32).unwrap();

    // nothing of B changed
    assert_eq!(
        test_cmd(&b.ctx, IOMMU_TEST_OP_MD_CHECK_MAP, b.hwpt, cm.as_bytes()).map(|_| ()),
        Ok(())
    );
    for s in [&a, &b] {
        s.ctx.check_invariants().unwrap();
    }
    drop(scratch);
}
