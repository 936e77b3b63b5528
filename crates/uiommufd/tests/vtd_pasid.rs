//! PASIDs of an emulated device (RFC §5.5): a function with PASIDs is bound
//! through the VFIO cdev, its RID and one PASID attached to two different
//! VT-d HWPTs (made with `IOMMU_HWPT_ALLOC_PASID`) over two IOAS that map
//! different memory at the same IOVA; the model's DMA tagged with each
//! reaches its own memory, an unattached PASID is blocked, and atomic
//! operations by IOVA go through the same domains (permissions, faults,
//! dirty tracking).

use std::sync::Arc;

use uiommufd::domain::{AtomicOp, DmaFault};
use uiommufd::uapi::*;
use uiommufd::vfio::model::{PciIds, PciLayout};
use uiommufd::vfio::registry;
use uiommufd::{Context, Prot};
use uiommufd_testkit::vfio::{attach_pt, bind_cdev, enable_bus_master, BusOnly};
use uiommufd_testkit::{self as kit, Buf};

const K4: u64 = 4096;

/// A function with 8-bit PASIDs and no registers: the test drives its bus.
fn tagger() -> Arc<BusOnly> {
    let layout = PciLayout {
        pasid_log2: 8,
        ..PciLayout::new(PciIds::new(0x1b36, 0x7777, 0x088000))
    };
    BusOnly::new("pasid-tagger", layout)
}

/// A tagger declared as group and cdev `n` (slot `n - 650` of bus e1),
/// its cdev opened and bound to a new context: (model, fd, ctx, devid).
fn tagger_bound(n: u32) -> (Arc<BusOnly>, i32, Arc<Context>, u32) {
    assert!(uiommufd::faultsafe::install());
    let model = tagger();
    registry::declare_model(
        &format!(
            "pasid-tagger,addr=0000:e1:{:02x}.0,group={n},cdev={n}",
            n - 650
        ),
        model.clone(),
    )
    .unwrap();
    let fd = registry::open_cdev(n, true).unwrap();
    let ctx = Context::new();
    let devid = bind_cdev(fd, &ctx);
    (model, fd, ctx, devid)
}

#[test]
fn dma_and_atomics_per_pasid() {
    let (model, fd, ctx, devid) = tagger_bound(655);

    // two address spaces mapping different memory at the same IOVA
    const IOVA: u64 = 0x4000_0000;
    let (ioas_a, ioas_b) = (kit::ioas_alloc(&ctx), kit::ioas_alloc(&ctx));
    let (buf_a, buf_b) = (Buf::zeroed(4 * K4, K4), Buf::zeroed(4 * K4, K4));
    kit::map_fixed(&ctx, ioas_a, buf_a.addr(), 4 * K4, IOVA).unwrap();
    kit::map_fixed(&ctx, ioas_b, buf_b.addr(), 4 * K4, IOVA).unwrap();
    let hwpt_a = kit::hwpt_alloc(&ctx, devid, ioas_a, IOMMU_HWPT_ALLOC_PASID).unwrap();
    let flags = IOMMU_HWPT_ALLOC_PASID | IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
    let hwpt_b = kit::hwpt_alloc(&ctx, devid, ioas_b, flags).unwrap();
    attach_pt(fd, hwpt_a).unwrap();
    let dev = ctx.get::<uiommufd::device::Device>(devid).unwrap();
    // the driver knows the function's PASIDs
    assert_eq!(
        dev.attach_pasid(&ctx, 256, hwpt_b, false)
            .unwrap_err()
            .errno()
            .0,
        libc::EINVAL,
        "8-bit PASIDs: 256 is not one"
    );
    dev.attach_pasid(&ctx, 5, hwpt_b, false).unwrap();
    enable_bus_master(fd);
    let bus = model.bus();

    // the same IOVA, two memories
    bus.dma_write(IOVA + 8, &[0xaa; 8]).unwrap();
    bus.dma_write_pasid(5, IOVA + 8, &[0xbb; 8]).unwrap();
    // SAFETY: reading our own buffers.
    let (va, vb) = unsafe {
        (
            std::ptr::read_volatile((buf_a.addr() + 8) as *const u64),
            std::ptr::read_volatile((buf_b.addr() + 8) as *const u64),
        )
    };
    assert_eq!((va, vb), (0xaaaa_aaaa_aaaa_aaaa, 0xbbbb_bbbb_bbbb_bbbb));
    let mut r = [0u8; 8];
    bus.dma_read_pasid(0, IOVA + 8, &mut r).unwrap();
    assert_eq!(r, [0xaa; 8]);
    bus.dma_read_pasid(5, IOVA + 8, &mut r).unwrap();
    assert_eq!(r, [0xbb; 8]);
    // a PASID attached to nothing
    assert_eq!(
        bus.dma_read_pasid(6, IOVA, &mut r),
        Err(DmaFault::Blocked { iova: IOVA })
    );

    // atomics, per PASID
    assert_eq!(
        bus.dma_atomic(5, IOVA + 8, AtomicOp::FetchAdd(1)).unwrap(),
        0xbbbb_bbbb_bbbb_bbbb
    );
    assert_eq!(
        bus.dma_atomic(5, IOVA + 8, AtomicOp::Swap(40)).unwrap(),
        0xbbbb_bbbb_bbbb_bbbc
    );
    let cas = |expected, new| AtomicOp::CompareSwap { expected, new };
    assert_eq!(
        bus.dma_atomic(5, IOVA + 8, cas(41, 7)).unwrap(),
        40,
        "fails"
    );
    assert_eq!(
        bus.dma_atomic(5, IOVA + 8, cas(40, 7)).unwrap(),
        40,
        "swaps"
    );
    // SAFETY: reading our own buffer.
    let v = unsafe { std::ptr::read_volatile((buf_b.addr() + 8) as *const u64) };
    assert_eq!(v, 7);
    assert_eq!(
        bus.dma_atomic(0, IOVA + 8, AtomicOp::FetchAdd(0)).unwrap(),
        0xaaaa_aaaa_aaaa_aaaa,
        "the RID's word is another"
    );
    // malformed (unaligned), unmapped, read-only
    assert_eq!(
        bus.dma_atomic(5, IOVA + 4, AtomicOp::FetchAdd(1)),
        Err(DmaFault::Permission {
            iova: IOVA + 4,
            write: true
        })
    );
    assert_eq!(
        bus.dma_atomic(5, IOVA + 4 * K4, AtomicOp::FetchAdd(1)),
        Err(DmaFault::NotPresent {
            iova: IOVA + 4 * K4
        })
    );
    let ro = Buf::zeroed(K4, K4);
    ctx.ioas(ioas_b)
        .unwrap()
        .map_user(ro.addr(), K4, Some(IOVA + 8 * K4), Prot::RO)
        .unwrap();
    assert_eq!(
        bus.dma_atomic(5, IOVA + 8 * K4, AtomicOp::FetchAdd(1)),
        Err(DmaFault::Permission {
            iova: IOVA + 8 * K4,
            write: true
        })
    );

    // dirty tracking sees an atomic as a write
    kit::set_dirty_tracking(&ctx, hwpt_b, true).unwrap();
    let mut bitmap = [0u64; 1];
    let bm = bitmap.as_mut_ptr() as u64;
    kit::get_dirty_bitmap(&ctx, hwpt_b, IOVA, 4 * K4, K4, bm, 0).unwrap();
    bitmap[0] = 0;
    bus.dma_atomic(5, IOVA + 2 * K4, AtomicOp::FetchAdd(3))
        .unwrap();
    kit::get_dirty_bitmap(&ctx, hwpt_b, IOVA, 4 * K4, K4, bm, 0).unwrap();
    assert_eq!(bitmap[0], 0b100);

    // detached: blocked again
    dev.detach_pasid(&ctx, 5);
    assert_eq!(
        bus.dma_write_pasid(5, IOVA, &[1]),
        Err(DmaFault::Blocked { iova: IOVA })
    );
    bus.dma_write(IOVA, &[1]).unwrap();
}

/// `VFIO_DEVICE_{ATTACH,DETACH}_IOMMUFD_PT` with the PASID flags (Linux
/// 6.15), through the cdev's ioctl: sizes and flags as
/// `vfio_df_ioctl_attach_pt`, a second attach replaces, detach blocks, a
/// PASID never attached is left alone, and a 6.12 iommufd does not know
/// the flags.
#[test]
fn vfio_cdev_pasid_attach_and_detach() {
    use uiommufd::vfio::uapi::*;
    use uiommufd_testkit::vfio::{ioctl_on, Fds};
    let (model, fd, ctx, devid) = tagger_bound(656);
    const IOVA: u64 = 0x4000_0000;
    let (ioas_a, ioas_b) = (kit::ioas_alloc(&ctx), kit::ioas_alloc(&ctx));
    let (buf_a, buf_b) = (Buf::zeroed(K4, K4), Buf::zeroed(K4, K4));
    kit::map_fixed(&ctx, ioas_a, buf_a.addr(), K4, IOVA).unwrap();
    kit::map_fixed(&ctx, ioas_b, buf_b.addr(), K4, IOVA).unwrap();
    let hwpt_a = kit::hwpt_alloc(&ctx, devid, ioas_a, IOMMU_HWPT_ALLOC_PASID).unwrap();
    let hwpt_b = kit::hwpt_alloc(&ctx, devid, ioas_b, IOMMU_HWPT_ALLOC_PASID).unwrap();
    attach_pt(fd, hwpt_a).unwrap();
    enable_bus_master(fd);
    let bus = model.bus();

    let attach = |argsz, flags, pt_id, pasid| {
        let mut a = VfioDeviceAttachIommufdPtPasid {
            argsz,
            flags,
            pt_id,
            pasid,
        };
        ioctl_on(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a, &Fds::default()).map(|_| a.pt_id)
    };
    let detach = |argsz, flags, pasid| {
        let mut d = VfioDeviceDetachIommufdPtPasid {
            argsz,
            flags,
            pasid,
        };
        ioctl_on(fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut d, &Fds::default()).map(|_| ())
    };
    // the pasid field is needed with the flag; unknown flags
    assert_eq!(
        attach(12, VFIO_DEVICE_ATTACH_PASID, hwpt_b, 5),
        Err(libc::EINVAL)
    );
    assert_eq!(attach(16, 2, hwpt_b, 5), Err(libc::EINVAL));
    assert_eq!(detach(8, VFIO_DEVICE_DETACH_PASID, 5), Err(libc::EINVAL));
    assert_eq!(detach(12, 2, 5), Err(libc::EINVAL));
    // a PASID the device does not have; an IOAS (never PASID-capable)
    assert_eq!(
        attach(16, VFIO_DEVICE_ATTACH_PASID, hwpt_b, 256),
        Err(libc::EINVAL)
    );
    assert_eq!(
        attach(16, VFIO_DEVICE_ATTACH_PASID, ioas_b, 5),
        Err(libc::EINVAL)
    );

    assert_eq!(attach(16, VFIO_DEVICE_ATTACH_PASID, hwpt_b, 5), Ok(hwpt_b));
    let mut r = [0u8; 1];
    bus.dma_write_pasid(5, IOVA, &[0xbb]).unwrap();
    bus.dma_read_pasid(0, IOVA, &mut r).unwrap();
    assert_eq!(r, [0], "the RID still reaches its own memory");
    // SAFETY: reading our own buffer.
    let b = unsafe { std::ptr::read_volatile(buf_b.addr() as *const u8) };
    assert_eq!(b, 0xbb);
    // a second attach of the same PASID replaces
    assert_eq!(attach(16, VFIO_DEVICE_ATTACH_PASID, hwpt_a, 5), Ok(hwpt_a));
    bus.dma_write_pasid(5, IOVA, &[0xaa]).unwrap();
    // SAFETY: reading our own buffer.
    let b = unsafe { std::ptr::read_volatile(buf_a.addr() as *const u8) };
    assert_eq!(b, 0xaa);
    // a failed replace leaves the attachment
    assert_eq!(
        attach(16, VFIO_DEVICE_ATTACH_PASID, ioas_b, 5),
        Err(libc::EINVAL)
    );
    bus.dma_read_pasid(5, IOVA, &mut r).unwrap();
    assert_eq!(r, [0xaa]);

    // a PASID never attached: nothing; then the attached one is blocked
    assert_eq!(detach(12, VFIO_DEVICE_DETACH_PASID, 9), Ok(()));
    assert_eq!(detach(12, VFIO_DEVICE_DETACH_PASID, 5), Ok(()));
    assert_eq!(
        bus.dma_read_pasid(5, IOVA, &mut r),
        Err(DmaFault::Blocked { iova: IOVA })
    );
    bus.dma_read_pasid(0, IOVA, &mut r).unwrap();

    // an iommufd at 6.12 does not know the flags
    // SAFETY: closing the fd this test opened.
    unsafe { libc::close(fd) };
    let fd = registry::open_cdev(656, true).unwrap();
    let old = Context::new_at(uiommufd::uapi::level::UapiLevel::V6_12);
    bind_cdev(fd, &old);
    let mut a = VfioDeviceAttachIommufdPtPasid {
        argsz: 16,
        flags: VFIO_DEVICE_ATTACH_PASID,
        pt_id: 0,
        pasid: 5,
    };
    assert_eq!(
        ioctl_on(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a, &Fds::default()),
        Err(libc::EINVAL)
    );
    // SAFETY: closing the fd this test opened.
    unsafe { libc::close(fd) };
}

/// A GiB mapped at a GiB-aligned IOVA from GiB-aligned memory is mapped
/// with 2 MiB pages at most (the kernel maps physically contiguous runs,
/// a THP at most for such memory), so one DMA write makes one 2 MiB run
/// dirty, not the whole GiB.
#[test]
fn a_gib_is_not_one_dirty_page() {
    const G1: u64 = 1 << 30;
    let (model, fd, ctx, devid) = tagger_bound(657);
    // a private reservation; nothing else uses it
    let raw =
        uiommufd_testkit::map_anon((2 * G1) as usize, libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .unwrap();
    let mem = (raw as u64).next_multiple_of(G1);
    let ioas = kit::ioas_alloc(&ctx);
    kit::map_fixed(&ctx, ioas, mem, G1, G1).unwrap();
    let flags = IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
    let hwpt = kit::hwpt_alloc(&ctx, devid, ioas, flags).unwrap();
    attach_pt(fd, hwpt).unwrap();
    enable_bus_master(fd);
    kit::set_dirty_tracking(&ctx, hwpt, true).unwrap();
    let bus = model.bus();
    bus.dma_write(G1 + 5 * K4, &[1; 8]).unwrap();
    let mut bitmap = vec![0u64; (G1 / K4 / 64) as usize];
    let bm = bitmap.as_mut_ptr() as u64;
    kit::get_dirty_bitmap(&ctx, hwpt, G1, G1, K4, bm, 0).unwrap();
    let set: u32 = bitmap.iter().map(|w| w.count_ones()).sum();
    assert!(
        (1..=512).contains(&set),
        "{set} pages of 4 KiB reported dirty"
    );
    assert_ne!(bitmap[0] & (1 << 5), 0);
    // SAFETY: closing our fd; unmapping our reservation (the IOAS that
    // mapped it goes with the context).
    unsafe {
        libc::close(fd);
    }
    drop(ctx);
    // SAFETY: our reservation, no longer mapped in any IOAS.
    unsafe { libc::munmap(raw, (2 * G1) as usize) };
}
