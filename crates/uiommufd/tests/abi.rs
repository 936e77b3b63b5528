//! The ioctl ABI through the dispatcher, with real bytes: size rules, bad
//! pointers, unknown commands and flags, object lifetimes, and the errno each
//! mistake gets (Linux 6.12's answers).

use std::sync::Arc;

use uiommufd::dispatch::ioctl;
use uiommufd::uapi::*;
use uiommufd::Context;

use uiommufd_testkit::{errno, ioas_alloc, Mapping};

#[test]
fn destroy_errors() {
    let ctx = Context::new();
    let mut d = IommuDestroy { size: 8, id: 0 };
    assert_eq!(errno(&ctx, IOMMU_DESTROY, &mut d), libc::ENOENT);
    // NULL and wild pointers are EFAULT, not a crash
    assert_eq!(
        ioctl(&ctx, IOMMU_DESTROY as u64, 0).unwrap_err().errno().0,
        libc::EFAULT
    );
    assert_eq!(
        ioctl(&ctx, IOMMU_DESTROY as u64, 16).unwrap_err().errno().0,
        libc::EFAULT
    );
    // unknown numbers: below the table, in a gap, past it, another type byte
    for nr in [
        io(IOMMUFD_CMD_BASE - 1),
        io(0x95),
        io(0x9f),
        io(0xa1),
        0x1234_0080,
    ] {
        assert_eq!(errno(&ctx, nr, &mut d), libc::ENOTTY, "cmd {nr:#x}");
    }
    // 6.12's table ends at 0x8e (and the test command)
    let ctx612 = Context::new_at(uiommufd::UapiLevel::V6_12);
    for nr in 0x8f..=0x94 {
        assert_eq!(
            errno(&ctx612, io(nr), &mut d),
            libc::ENOTTY,
            "6.12 cmd {nr:#x}"
        );
    }
}

/// The selftest's TEST_LENGTH, for every command: short is EINVAL, long
/// with a non-zero tail is E2BIG, long with a zero tail behaves like exact.
#[test]
fn size_rules_for_every_command() {
    let cases: &[(u32, usize, usize)] = &[
        (IOMMU_DESTROY, 8, 8),
        (IOMMU_IOAS_ALLOC, 12, 12),
        (IOMMU_IOAS_ALLOW_IOVAS, 24, 24),
        (IOMMU_IOAS_COPY, 40, 40),
        (IOMMU_IOAS_IOVA_RANGES, 32, 32),
        (IOMMU_IOAS_MAP, 40, 40),
        (IOMMU_IOAS_UNMAP, 24, 24),
        (IOMMU_OPTION, 24, 24),
        (IOMMU_VFIO_IOAS, 12, 12),
        (IOMMU_HWPT_ALLOC, 24, 48),
        (IOMMU_GET_HW_INFO, 32, 40),
        (IOMMU_HWPT_SET_DIRTY_TRACKING, 16, 16),
        (IOMMU_HWPT_GET_DIRTY_BITMAP, 48, 48),
        (IOMMU_HWPT_INVALIDATE, 32, 32),
        (IOMMU_FAULT_QUEUE_ALLOC, 16, 16),
        (IOMMU_TEST_CMD, 68, 72),
    ];
    for &(cmd, min, size) in cases {
        let ctx = Context::new();
        let mut buf = [0u8; 256];
        buf[..4].copy_from_slice(&((min - 1) as u32).to_ne_bytes());
        buf[size] = 0xff;
        assert_eq!(errno(&ctx, cmd, &mut buf), libc::EINVAL, "short {cmd:#x}");
        buf[..4].copy_from_slice(&((size + 1) as u32).to_ne_bytes());
        assert_eq!(errno(&ctx, cmd, &mut buf), libc::E2BIG, "long {cmd:#x}");
        let ctx2 = Context::new();
        let mut exact = [0u8; 256];
        exact[..4].copy_from_slice(&(size as u32).to_ne_bytes());
        let want = errno(&ctx, cmd, &mut exact.clone());
        buf[size] = 0;
        assert_eq!(errno(&ctx2, cmd, &mut buf), want, "long zero tail {cmd:#x}");
    }
}

#[test]
fn huge_size_with_zero_tail_is_accepted() {
    let ctx = Context::new();
    let mut buf = vec![0u8; 64 * 1024];
    let n = buf.len() as u32;
    buf[..4].copy_from_slice(&n.to_ne_bytes());
    assert_eq!(errno(&ctx, IOMMU_IOAS_ALLOC, &mut buf[..]), 0);
    let last = buf.len() - 1;
    buf[last] = 1;
    assert_eq!(errno(&ctx, IOMMU_IOAS_ALLOC, &mut buf[..]), libc::E2BIG);
    // a size running past mapped memory (all zero until then) is EFAULT
    // two pages, the second unmapped so the zero tail of the command runs
    // into a hole; the size field at the end of the first
    let m = Mapping::pages(2);
    m.unmap(1);
    let arg = m.page(1) - 16;
    // SAFETY: the end of the first (still mapped) page of our own mapping.
    unsafe { *(arg as *mut u32) = 64 };
    assert_eq!(
        ioctl(&ctx, IOMMU_IOAS_ALLOC as u64, arg)
            .unwrap_err()
            .errno()
            .0,
        libc::EFAULT
    );
}

#[test]
fn ioas_alloc_ids_and_destroy() {
    let ctx = Context::new();
    let a = ioas_alloc(&ctx);
    let b = ioas_alloc(&ctx);
    assert_eq!((a, b), (1, 2));
    let mut bad = IommuIoasAlloc {
        size: 12,
        flags: 1,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_IOAS_ALLOC, &mut bad), libc::EOPNOTSUPP);
    let mut d = IommuDestroy { size: 8, id: a };
    assert_eq!(errno(&ctx, IOMMU_DESTROY, &mut d), 0);
    assert_eq!(errno(&ctx, IOMMU_DESTROY, &mut d), libc::ENOENT);
    // the lowest free ID is reused
    assert_eq!(ioas_alloc(&ctx), a);
    // an object in use by another holder is EBUSY
    let held = ctx.ioas(b).unwrap();
    let mut d = IommuDestroy { size: 8, id: b };
    assert_eq!(errno(&ctx, IOMMU_DESTROY, &mut d), libc::EBUSY);
    drop(held);
    assert_eq!(errno(&ctx, IOMMU_DESTROY, &mut d), 0);
    ctx.check_invariants().unwrap();
}

#[test]
fn reply_to_unwritable_memory_leaves_no_object() {
    let ctx = Context::new();
    // a read-only page holding a valid command: the reply cannot be written
    let m = Mapping::pages(1);
    let p = m.addr();
    // SAFETY: the start of our own (read/write) page.
    unsafe { *(p as *mut u32) = 12 };
    m.protect(0, libc::PROT_READ);
    assert_eq!(
        ioctl(&ctx, IOMMU_IOAS_ALLOC as u64, p)
            .unwrap_err()
            .errno()
            .0,
        libc::EFAULT
    );
    assert_eq!(ctx.object_count(), 0);
    assert!(ctx.is_empty());
    ctx.check_invariants().unwrap();
}

#[test]
fn options() {
    let ctx = Context::new();
    let mut o = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_GET,
        val64: 7,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_OPTION, &mut o), 0);
    assert_eq!(o.val64, 0);
    o.__reserved = 1;
    assert_eq!(errno(&ctx, IOMMU_OPTION, &mut o), libc::EOPNOTSUPP);
    o.__reserved = 0;
    o.option_id = 9;
    assert_eq!(errno(&ctx, IOMMU_OPTION, &mut o), libc::EOPNOTSUPP);
    o.option_id = IOMMU_OPTION_RLIMIT_MODE;
    o.object_id = 1;
    assert_eq!(errno(&ctx, IOMMU_OPTION, &mut o), libc::EOPNOTSUPP);
    // huge pages is per IOAS: ENOENT without one
    let mut h = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_HUGE_PAGES,
        op: IOMMU_OPTION_OP_GET,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_OPTION, &mut h), libc::ENOENT);
    h.object_id = ioas_alloc(&ctx);
    h.val64 = 5;
    assert_eq!(errno(&ctx, IOMMU_OPTION, &mut h), 0);
    assert_eq!(h.val64, 1);
    h.op = IOMMU_OPTION_OP_SET;
    h.val64 = 2;
    assert_eq!(errno(&ctx, IOMMU_OPTION, &mut h), libc::EINVAL);
    h.op = 7;
    assert_eq!(errno(&ctx, IOMMU_OPTION, &mut h), libc::EOPNOTSUPP);
    // the RLIMIT mode cannot change once objects exist
    let mut o = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_SET,
        val64: 1,
        ..Default::default()
    };
    let e = errno(&ctx, IOMMU_OPTION, &mut o);
    assert!(e == libc::EBUSY || e == libc::EPERM, "{e}");
}

#[test]
fn vfio_ioas_get_set_clear() {
    let ctx = Context::new();
    let mut v = IommuVfioIoas {
        size: 12,
        op: IOMMU_VFIO_IOAS_GET,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_VFIO_IOAS, &mut v), libc::ENODEV);
    let id = ioas_alloc(&ctx);
    v.op = IOMMU_VFIO_IOAS_SET;
    v.ioas_id = id + 5;
    assert_eq!(errno(&ctx, IOMMU_VFIO_IOAS, &mut v), libc::ENOENT);
    v.ioas_id = id;
    assert_eq!(errno(&ctx, IOMMU_VFIO_IOAS, &mut v), 0);
    v.op = IOMMU_VFIO_IOAS_GET;
    v.ioas_id = 0;
    assert_eq!(errno(&ctx, IOMMU_VFIO_IOAS, &mut v), 0);
    assert_eq!(v.ioas_id, id);
    // destroying the IOAS forgets it as the compat IOAS
    let mut d = IommuDestroy { size: 8, id };
    assert_eq!(errno(&ctx, IOMMU_DESTROY, &mut d), 0);
    assert_eq!(errno(&ctx, IOMMU_VFIO_IOAS, &mut v), libc::ENODEV);
    v.op = 3;
    assert_eq!(errno(&ctx, IOMMU_VFIO_IOAS, &mut v), libc::EOPNOTSUPP);
}

#[test]
fn device_commands_without_devices_are_enoent() {
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let mut h = IommuHwInfo {
        size: 40,
        dev_id: ioas,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_GET_HW_INFO, &mut h), libc::ENOENT);
    h.flags = 2; // 1 (IOMMU_HW_INFO_FLAG_INPUT_TYPE) is accepted; others are not
    assert_eq!(errno(&ctx, IOMMU_GET_HW_INFO, &mut h), libc::EOPNOTSUPP);
    let mut a = IommuHwptAlloc {
        size: 48,
        dev_id: 99,
        pt_id: ioas,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_HWPT_ALLOC, &mut a), libc::ENOENT);
    a.data_len = 4;
    assert_eq!(errno(&ctx, IOMMU_HWPT_ALLOC, &mut a), libc::EINVAL);
    let mut inv = IommuHwptInvalidate {
        size: 32,
        hwpt_id: ioas,
        entry_num: 3,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_HWPT_INVALIDATE, &mut inv), libc::EINVAL);
    assert_eq!(inv.entry_num, 0, "entry_num is written back on failure");
}

#[test]
fn test_cmd_ops_without_devices() {
    let ctx = Context::new();
    let mut t = IommuTestCmd {
        size: 72,
        op: IOMMU_TEST_OP_MOCK_DOMAIN,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_TEST_CMD, &mut t), libc::ENOENT);
    t.op = 99;
    assert_eq!(errno(&ctx, IOMMU_TEST_CMD, &mut t), libc::EOPNOTSUPP);
    t.op = IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT;
    t.payload[..4].copy_from_slice(&4u32.to_ne_bytes());
    assert_eq!(errno(&ctx, IOMMU_TEST_CMD, &mut t), libc::EINVAL);
    t.payload[..4].copy_from_slice(&65536u32.to_ne_bytes());
    assert_eq!(errno(&ctx, IOMMU_TEST_CMD, &mut t), 0);
}

/// A user-memory seam that panics: the panic must come back as EIO.
#[derive(Debug)]
struct Exploding;

impl uiommufd::user::UserMemory for Exploding {
    fn read(&self, _: u64, _: &mut [u8]) -> uiommufd::Result<()> {
        panic!("boom")
    }
    fn write(&self, _: u64, _: &[u8]) -> uiommufd::Result<()> {
        panic!("boom")
    }
    fn populate(&self, _: u64, _: u64, _: bool) -> uiommufd::Result<()> {
        panic!("boom")
    }
}

#[test]
fn panic_in_engine_becomes_eio() {
    let ctx = Context::with_memory(Arc::new(Exploding));
    let mut d = IommuDestroy { size: 8, id: 1 };
    let e = ioctl(&ctx, IOMMU_DESTROY as u64, &mut d as *mut _ as u64).unwrap_err();
    assert_eq!(e.errno().0, libc::EIO);
    assert!(e.reason().contains("boom"));
}

/// Issue 10 item 11: `IOMMU_IOAS_ALLOW_IOVAS` is O(n log n): a million
/// ranges in shuffled order complete, are all allowed, and the rules keep
/// the kernel's order (the first bad range decides the errno; a failed call
/// leaves the allowed set as it was).
#[test]
fn allow_iovas_a_million_ranges() {
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    const N: u64 = 1_000_000;
    const STRIDE: u64 = 1 << 20;
    // range k: [k * STRIDE + 4096, k * STRIDE + 8191], in a scrambled order
    let mut ranges: Vec<IommuIovaRange> = (0..N)
        .map(|k| (k * 611_953) % N) // 611953 is prime, coprime to N
        .map(|k| IommuIovaRange {
            start: k * STRIDE + 4096,
            last: k * STRIDE + 8191,
        })
        .collect();
    let allow = |ctx: &Arc<Context>, r: &mut [IommuIovaRange]| {
        let mut c = IommuIoasAllowIovas {
            size: 24,
            ioas_id: ioas,
            num_iovas: r.len() as u32,
            __reserved: 0,
            allowed_iovas: r.as_mut_ptr() as u64,
        };
        errno(ctx, IOMMU_IOAS_ALLOW_IOVAS, &mut c)
    };
    let t = std::time::Instant::now();
    assert_eq!(allow(&ctx, &mut ranges), 0);
    println!("ALLOW_IOVAS of {N} ranges: {:?}", t.elapsed());
    let count = |ctx: &Arc<Context>| ctx.ioas(ioas).unwrap().iopt().check_invariants();
    count(&ctx).unwrap();
    // a map into an allowed range works, one outside does not
    let buf = vec![0u8; 3 * 4096];
    let va = (buf.as_ptr() as u64).div_ceil(4096) * 4096;
    let map = |iova: u64| {
        let mut m = IommuIoasMap {
            size: 40,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
            ioas_id: ioas,
            user_va: va,
            length: 4096,
            iova,
            ..Default::default()
        };
        errno(&ctx, IOMMU_IOAS_MAP, &mut m)
    };
    // fixed maps ignore allowed ranges (kernel); an allocated one must land
    // in one of them
    let mut m = IommuIoasMap {
        size: 40,
        flags: IOMMU_IOAS_MAP_READABLE,
        ioas_id: ioas,
        user_va: va,
        length: 4096,
        ..Default::default()
    };
    assert_eq!(errno(&ctx, IOMMU_IOAS_MAP, &mut m), 0);
    assert_eq!(m.iova % STRIDE, 4096, "allocated inside an allowed range");
    assert!(m.iova / STRIDE < N);
    assert_eq!(map(N * STRIDE + 4096), 0);

    // an overlap at the very end: EINVAL, nothing changed
    let mut bad = ranges[..1000].to_vec();
    bad.push(IommuIovaRange {
        start: bad[500].last - 100,
        last: bad[500].last + 100,
    });
    assert_eq!(allow(&ctx, &mut bad), libc::EINVAL);
    // the first bad range decides: start >= last at 2 beats the fault at 300
    let mut r: Vec<IommuIovaRange> = ranges[..300].to_vec();
    r[2].last = r[2].start;
    let mut c = IommuIoasAllowIovas {
        size: 24,
        ioas_id: ioas,
        num_iovas: 1000,
        __reserved: 0,
        allowed_iovas: r.as_mut_ptr() as u64,
    };
    // ranges 300.. are past the Vec: possibly readable heap, so only the
    // order is checked with a range that fails first
    assert_eq!(errno(&ctx, IOMMU_IOAS_ALLOW_IOVAS, &mut c), libc::EINVAL);
    // an unreadable range after good ones is EFAULT
    c.allowed_iovas = (u64::MAX - 16 * 3) & !15;
    c.num_iovas = 4;
    assert_eq!(errno(&ctx, IOMMU_IOAS_ALLOW_IOVAS, &mut c), libc::EFAULT);
    // still the million: the map into the last one still allocates there
    assert_eq!(errno(&ctx, IOMMU_IOAS_MAP, &mut m), 0);
    assert_eq!(m.iova % STRIDE, 4096);
    // empty: everything allowed again
    assert_eq!(allow(&ctx, &mut []), 0);
    assert_eq!(map(4 * STRIDE), 0);
    count(&ctx).unwrap();
    drop(buf);
}
