//! Devices, HWPTs and the single-pin rule through the ioctl ABI: the mock
//! driver's devices attached to IOASes, objects destroyed in every order,
//! the invariant checker after each step.

use std::sync::Arc;

use uiommufd::pages::{check_accounting, Pages};
use uiommufd::uapi::*;
use uiommufd::Context;
use zerocopy::IntoBytes;

use uiommufd_testkit::*;

fn check(ctx: &Arc<Context>) {
    ctx.check_invariants().unwrap();
    check_accounting().unwrap();
}

#[test]
fn one_page_two_ioas_two_domains_is_pinned_once() {
    let _serial = serial();
    let buf = Buf::pages(1);
    let page = buf.addr();
    // every order of the 6 teardown steps (720) must end with no pin
    let mut orders: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..6 {
        let mut next = Vec::new();
        for o in &orders {
            for i in (0..6).filter(|i| !o.contains(i)) {
                let mut n = o.clone();
                n.push(i);
                next.push(n);
            }
        }
        orders = next;
    }
    assert_eq!(orders.len(), 720);
    for order in orders {
        let ctx = Context::new();
        let a = ioas_alloc(&ctx);
        let b = ioas_alloc(&ctx);
        let (sa1, _, _) = mock_domain(&ctx, a).unwrap();
        let (sa2, _, _) = mock_domain(&ctx, a).unwrap();
        let (sb1, _, _) = mock_domain(&ctx, b).unwrap();
        let (sb2, _, _) = mock_domain(&ctx, b).unwrap();
        map_fixed(&ctx, a, page, 4096, MOCK_APERTURE_START).unwrap();
        copy(
            &ctx,
            a,
            MOCK_APERTURE_START,
            b,
            MOCK_APERTURE_START + 0x10000,
            4096,
        )
        .unwrap();
        assert_eq!(
            Pages::pins_of_user_page(page),
            1,
            "one pages object, pinned once"
        );
        check(&ctx);
        // teardown steps: 4 devices, then unmap a, unmap b
        let steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| assert_eq!(destroy(&ctx, sa1), Ok(0))),
            Box::new(|| assert_eq!(destroy(&ctx, sa2), Ok(0))),
            Box::new(|| assert_eq!(destroy(&ctx, sb1), Ok(0))),
            Box::new(|| assert_eq!(destroy(&ctx, sb2), Ok(0))),
            Box::new(|| {
                unmap(&ctx, a, 0, u64::MAX).unwrap();
            }),
            Box::new(|| {
                unmap(&ctx, b, 0, u64::MAX).unwrap();
            }),
        ];
        for &i in &order {
            steps[i]();
            check(&ctx);
        }
        assert_eq!(
            Pages::pins_of_user_page(page),
            0,
            "order {order:?} leaked a pin"
        );
        drop(steps);
        assert_eq!(destroy(&ctx, a), Ok(0));
        assert_eq!(destroy(&ctx, b), Ok(0));
        assert!(ctx.is_empty());
    }
}

#[test]
fn object_references_give_ebusy() {
    let _serial = serial();
    let ctx = Context::new();
    let a = ioas_alloc(&ctx);
    let (stdev, hwpt, idev) = mock_domain(&ctx, a).unwrap();
    assert_eq!((stdev, idev, hwpt), (2, 3, 4), "the kernel's ID order");
    assert_eq!(
        destroy(&ctx, a),
        Err(libc::EBUSY),
        "the HWPT holds the IOAS"
    );
    assert_eq!(
        destroy(&ctx, hwpt),
        Err(libc::EBUSY),
        "the device holds the HWPT"
    );
    assert_eq!(
        destroy(&ctx, idev),
        Err(libc::EBUSY),
        "the driver holds the device"
    );
    check(&ctx);
    assert_eq!(destroy(&ctx, stdev), Ok(0));
    // the auto domain went with its last device, and the device with its driver
    assert_eq!(destroy(&ctx, hwpt), Err(libc::ENOENT));
    assert_eq!(destroy(&ctx, idev), Err(libc::ENOENT));
    assert_eq!(destroy(&ctx, a), Ok(0));
    assert!(ctx.is_empty());
}

#[test]
fn close_with_everything_attached_leaves_nothing() {
    let _serial = serial();
    let buf = Buf::pages(4);
    {
        let ctx = Context::new();
        let a = ioas_alloc(&ctx);
        mock_domain(&ctx, a).unwrap();
        mock_domain(&ctx, a).unwrap();
        map_fixed(&ctx, a, buf.addr(), 4 * 4096, MOCK_APERTURE_START).unwrap();
        assert_eq!(Pages::pins_of_user_page(buf.addr()), 1);
        check(&ctx);
    }
    assert_eq!(Pages::pins_of_user_page(buf.addr()), 0);
    check_accounting().unwrap();
}

#[test]
fn mock_domain_on_missing_or_wrong_object() {
    let _serial = serial();
    let ctx = Context::new();
    assert_eq!(mock_domain(&ctx, 0), Err(libc::ENOENT));
    assert!(
        ctx.is_empty(),
        "a failed MOCK_DOMAIN leaves no object behind"
    );
}

#[test]
fn concurrent_map_unmap_with_two_domains() {
    let _serial = serial();
    let ctx = Context::new();
    let a = ioas_alloc(&ctx);
    mock_domain(&ctx, a).unwrap();
    mock_domain(&ctx, a).unwrap();
    let buf = Buf::pages(64);
    let base = buf.addr();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let ctx = ctx.clone();
            s.spawn(move || {
                for r in 0..200u64 {
                    let iova = MOCK_APERTURE_START + (t << 22) + (r % 4) * 0x10000;
                    let len = 4096 * (1 + r % 4);
                    map_fixed(&ctx, a, base + (r % 32) * 4096, len, iova).unwrap();
                    assert_eq!(unmap(&ctx, a, iova, len), Ok(len));
                }
                // leave one mapping per thread for the final comparison
                map_fixed(
                    &ctx,
                    a,
                    base + t * 4096,
                    4096,
                    MOCK_APERTURE_START + (t << 22),
                )
                .unwrap();
            });
        }
    });
    // both domains are identical to the IOAS
    check(&ctx);
    assert_eq!(unmap(&ctx, a, 0, u64::MAX), Ok(4 * 4096));
    check(&ctx);
}

/// Issue 10 item 9a: `GET_HW_INFO` with `data_len = 0xffffffff` zeroes the
/// tail of the user buffer in bounded chunks (`EFAULT` where it ends), never
/// allocating in proportion to `data_len`: it runs in a child process of
/// this test binary under an `RLIMIT_AS` of its current size + 256 MiB,
/// where the 4 GiB allocation of before aborted the program.
#[test]
fn hw_info_huge_data_len_needs_no_memory() {
    const CHILD: &str = "UIOMMUFD_HW_INFO_RLIMIT_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hw_info_huge_data_len_needs_no_memory",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let vm_pages: u64 = statm.split_whitespace().next().unwrap().parse().unwrap();
    let limit = vm_pages * 4096 + (256 << 20);
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit only reads `rl`; this child process exists for it.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let (_, _, idev) = mock_domain(&ctx, ioas).unwrap();
    // 64 KiB writable, then a hole
    let pp = Mapping::pages(17);
    pp.unmap(16);
    // SAFETY: the first 16 pages of `pp` are ours and writable.
    unsafe { std::ptr::write_bytes(pp.page(0) as *mut u8, 0xee, 16 * 4096) };
    let mut h = IommuHwInfo {
        size: 40,
        dev_id: idev,
        data_len: u32::MAX,
        data_uptr: pp.page(0),
        ..Default::default()
    };
    assert_eq!(ioc(&ctx, IOMMU_GET_HW_INFO, &mut h), Err(libc::EFAULT));
    // a tail that fits is zeroed exactly
    // SAFETY: as above.
    unsafe { std::ptr::write_bytes(pp.page(0) as *mut u8, 0xee, 16 * 4096) };
    h.data_len = 16 * 4096 - 8;
    assert_eq!(ioc(&ctx, IOMMU_GET_HW_INFO, &mut h), Ok(0));
    let info_len = h.data_len as u64;
    assert!(info_len > 0 && info_len < 4096);
    for off in (info_len..16 * 4096 - 8).step_by(8) {
        assert_eq!(pp.word(off), 0, "tail byte {off}");
    }
    assert_eq!(pp.word(16 * 4096 - 8), 0xeeee_eeee_eeee_eeee);
}

/// Issue 10 item 13: a failing `MD_CHECK_MAP` / `MD_CHECK_REFS` stops at the
/// first bad page without populating the rest of the user range (1 GiB of
/// shmem here), with the kernel's errnos in its order (the user page of a
/// step is got before it is compared: `EFAULT` before `EINVAL`/`EIO`).
#[test]
fn failing_md_checks_populate_only_up_to_the_first_bad_page() {
    let _serial = serial();
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let (stdev, hwpt, _) = mock_domain(&ctx, ioas).unwrap();
    let buf = Buf::pages(4);
    map_fixed(&ctx, ioas, buf.addr(), 4 * 4096, MOCK_APERTURE_START).unwrap();
    const BIG: u64 = 1 << 30;
    // shmem, unmapped below
    let p =
        uiommufd_testkit::map_anon(BIG as usize, libc::MAP_SHARED | libc::MAP_NORESERVE).unwrap();
    let big = p as u64;
    let test = |op: u32, id: u32, payload: &[u8]| test_cmd(&ctx, op, id, payload).map(|_| 0);
    // the IOVA maps `buf`, not `big`: the first granule mismatches
    let cm = TestCheckMap {
        iova: MOCK_APERTURE_START,
        length: BIG,
        uptr: big,
    };
    assert_eq!(
        test(IOMMU_TEST_OP_MD_CHECK_MAP, hwpt, cm.as_bytes()),
        Err(libc::EINVAL)
    );
    assert!(resident(big, BIG) <= 16, "{} pages", resident(big, BIG));
    // nothing is pinned there: EIO at the first page
    let cr = TestCheckRefs {
        length: BIG,
        uptr: big,
        refs: 1,
        _pad: 0,
    };
    assert_eq!(
        test(IOMMU_TEST_OP_MD_CHECK_REFS, 0, cr.as_bytes()),
        Err(libc::EIO)
    );
    assert!(resident(big, BIG) <= 16, "{} pages", resident(big, BIG));
    // a mismatch in the third page with the second one inaccessible: EFAULT
    // SAFETY: page 1 of our own mapping.
    let rc = unsafe { libc::mprotect((big + 4096) as *mut libc::c_void, 4096, libc::PROT_NONE) };
    assert_eq!(rc, 0);
    let cm = TestCheckMap {
        iova: MOCK_APERTURE_START,
        length: 4 * 4096,
        uptr: buf.addr(),
    };
    assert_eq!(test(IOMMU_TEST_OP_MD_CHECK_MAP, hwpt, cm.as_bytes()), Ok(0));
    let refs = |uptr, length, refs| TestCheckRefs {
        length,
        uptr,
        refs,
        _pad: 0,
    };
    let check_refs = |c: TestCheckRefs| test(IOMMU_TEST_OP_MD_CHECK_REFS, 0, c.as_bytes());
    for (c, want, why) in [
        (
            refs(buf.addr(), 4 * 4096, 1),
            Ok(0),
            "the mapped pages are pinned once",
        ),
        (
            refs(big, 3 * 4096, 0),
            Err(libc::EFAULT),
            "page 1 is PROT_NONE, all pages have the expected refs",
        ),
        (
            refs(big, 3 * 4096, 1),
            Err(libc::EIO),
            "page 0 already mismatches: page 1 is never got",
        ),
    ] {
        assert_eq!(check_refs(c), want, "{why}");
    }
    // a mismatch after 200 good pages (page 202 pinned by a map) stops there
    let iova2 = MOCK_APERTURE_START + (1 << 20);
    map_fixed(&ctx, ioas, big + 202 * 4096, 4096, iova2).unwrap();
    assert_eq!(
        check_refs(refs(big + 2 * 4096, BIG - 2 * 4096, 0)),
        Err(libc::EIO)
    );
    let n = resident(big, BIG);
    assert!((200..=202 + 16).contains(&n), "{n} pages");
    assert_eq!(destroy(&ctx, stdev), Ok(0));
    unmap(&ctx, ioas, 0, u64::MAX).unwrap();
    // SAFETY: our own mapping, no longer mapped in the IOAS.
    unsafe { libc::munmap(p, BIG as usize) };
    check_accounting().unwrap();
}
