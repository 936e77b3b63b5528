//! The `dma-engine` model through the real VFIO layer and engine: declared
//! like a user would (`dma-engine,...`), opened as a cdev bound to an
//! iommufd with a dirty-tracking VT-d HWPT, or through a group and a type1
//! container; programmed by region writes, its interrupts through MSI-X
//! eventfds, its DMA landing in (and dirtying) mapped user memory, its
//! faults as device errors.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use uiommufd::devices::dma_engine::regs::*;
use uiommufd::devices::dma_engine::ring::{
    Descriptor, FLAG_INTERRUPT, OP_COPY, STATUS_FAILED, STATUS_OK,
};
use uiommufd::devices::dma_engine::traffic;
use uiommufd::plumbing::files;
use uiommufd::uapi::vfio::*;
use uiommufd::uapi::*;
use uiommufd::vfio::registry;
use uiommufd::vfio::uapi::*;
use uiommufd::Context;
use uiommufd_testkit::vfio::{
    attach_pt, bar_read32, bar_read64, bar_write32, bar_write64, bind_cdev, enable_bus_master,
    eventfd, file, fired, ioctl_on, map_dma, region, set_irq_fds, Fds,
};

use uiommufd_testkit::{self as kit, wait_for, Buf};

/// `len` bytes of `buf` at `off`, read behind the device's back.
fn bytes(buf: &Buf, off: u64, len: usize) -> Vec<u8> {
    // SAFETY: inside our own buffer; volatile because the device writes
    // it through its host address.
    (0..len)
        .map(|i| unsafe { std::ptr::read_volatile((buf.addr() + off + i as u64) as *const u8) })
        .collect()
}

/// The valid records of a window of `n` at `off` in `buf` (panics on a
/// bad one): their sequence numbers, sorted.
fn records(buf: &Buf, off: u64, n: u64) -> Vec<u64> {
    let w = bytes(buf, off, (n * 64) as usize);
    let mut seqs: Vec<u64> = (0..n)
        .filter_map(|slot| {
            let r = &w[(slot * 64) as usize..(slot * 64 + 64) as usize];
            traffic::check(r, slot, n).unwrap_or_else(|e| panic!("slot {slot}: {e}"))
        })
        .collect();
    seqs.sort();
    seqs
}

const K4: u64 = 4096;

#[test]
fn dma_engine_over_a_cdev_with_a_dirty_tracking_hwpt() {
    registry::declare("dma-engine,addr=0000:e1:01.0,group=601,cdev=601").unwrap();
    let fd = registry::open_cdev(601, true).unwrap();
    let ctx = Context::new();
    let devid = bind_cdev(fd, &ctx);

    const IOVA: u64 = 0x8000_0000;
    let ioas = kit::ioas_alloc(&ctx);
    let buf = Buf::zeroed(32 * K4, K4);
    kit::map_fixed(&ctx, ioas, buf.addr(), 32 * K4, IOVA).unwrap();
    let hwpt = kit::hwpt_alloc(&ctx, devid, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    attach_pt(fd, hwpt).unwrap();
    let evs: Vec<OwnedFd> = (0..3).map(|_| eventfd()).collect();
    let raw: Vec<i32> = evs.iter().map(|e| e.as_raw_fd()).collect();
    set_irq_fds(fd, VFIO_PCI_MSIX_IRQ_INDEX, 0, &raw).unwrap();
    enable_bus_master(fd);
    assert_eq!(bar_read32(fd, 0, ID), 0x444d_4145);
    assert_eq!(bar_read32(fd, 0, VERSION), 0x0001_0000);

    // a COPY from page 1 to page 2, the ring in page 0
    // SAFETY: our own buffer.
    unsafe { std::ptr::write_bytes((buf.addr() + K4) as *mut u8, 0xc3, 100) };
    let d = Descriptor {
        opcode: OP_COPY,
        flags: FLAG_INTERRUPT,
        src: IOVA + K4,
        dst: IOVA + 2 * K4,
        length: 100,
        ..Descriptor::default()
    };
    // SAFETY: our own buffer.
    unsafe { std::ptr::copy_nonoverlapping(d.to_bytes().as_ptr(), buf.addr() as *mut u8, 32) };
    bar_write64(fd, 0, RING_BASE, IOVA);
    bar_write32(fd, 0, RING_SIZE, 16);
    bar_write32(fd, 0, INT_ENABLE, INT_ALL);
    bar_write32(fd, 0, CONTROL, CONTROL_RING_ENABLE);
    bar_write32(fd, 0, RING_TAIL, 1);
    wait_for("the copy", || bar_read32(fd, 0, COMPLETED) == 1);
    assert_eq!(
        bytes(&buf, 2 * K4, 101),
        [&[0xc3u8; 100][..], &[0]].concat()
    );
    assert_eq!(bytes(&buf, 2, 2), STATUS_OK.to_le_bytes());
    wait_for("the completion interrupt on vector 0", || {
        fired(&evs[0]) == 1
    });

    // traffic into pages 8..16, with dirty tracking on
    kit::set_dirty_tracking(&ctx, hwpt, true).unwrap();
    let mut bitmap = [0u64; 1];
    let bm = bitmap.as_mut_ptr() as u64;
    kit::get_dirty_bitmap(&ctx, hwpt, IOVA, 32 * K4, K4, bm, 0).unwrap();
    bitmap[0] = 0;
    bar_write64(fd, 0, TRAFFIC_BASE, IOVA + 8 * K4);
    bar_write64(fd, 0, TRAFFIC_SIZE, 8 * K4);
    bar_write32(fd, 0, TRAFFIC_RATE, 0);
    bar_write32(fd, 0, TRAFFIC_CTRL, TRAFFIC_ENABLE);
    let n = 8 * K4 / 64;
    wait_for("two windows of records", || {
        bar_read64(fd, 0, TRAFFIC_COUNT) >= 2 * n
    });
    bar_write32(fd, 0, TRAFFIC_CTRL, 0);
    wait_for("the record in flight", || {
        bar_read32(fd, 0, STATUS) & STATUS_BUSY == 0
    });
    let seq = bar_read64(fd, 0, TRAFFIC_SEQ);
    assert_eq!(
        records(&buf, 8 * K4, n),
        (seq - n..seq).collect::<Vec<u64>>()
    );
    wait_for("the wrap interrupts on vector 2", || fired(&evs[2]) >= 1);
    kit::get_dirty_bitmap(&ctx, hwpt, IOVA, 32 * K4, K4, bm, 0).unwrap();
    assert_eq!(bitmap[0], 0xff00, "the device's writes are dirty pages");

    // DMA to an unmapped IOVA: a device error, not a crash
    let bad = Descriptor {
        opcode: OP_COPY,
        src: IOVA + K4,
        dst: IOVA + 64 * K4,
        length: 8,
        ..Descriptor::default()
    };
    // SAFETY: our own buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(bad.to_bytes().as_ptr(), (buf.addr() + 32) as *mut u8, 32)
    };
    bar_write32(fd, 0, RING_TAIL, 2);
    wait_for("the faulting copy", || bar_read32(fd, 0, COMPLETED) == 2);
    assert_eq!(bytes(&buf, 34, 2), (STATUS_FAILED | 1).to_le_bytes());
    assert_eq!(bar_read32(fd, 0, ERROR_CODE), 1 | 3 << 8 | ERROR_WRITE);
    assert_eq!(bar_read64(fd, 0, ERROR_ADDR), IOVA + 64 * K4);
    wait_for("the error interrupt on vector 1", || fired(&evs[1]) == 1);
    let dev = uiommufd::vfio::device::get(&registry::by_cdev(601).unwrap());
    assert!(dev.dma_faults() >= 1);

    // VFIO_DEVICE_RESET: registers back to power-on, the device still works
    let mut none = [0u8; 0];
    ioctl_on(fd, VFIO_DEVICE_RESET, &mut none[..], &Fds::default()).unwrap();
    assert_eq!(
        (
            bar_read32(fd, 0, RING_SIZE),
            bar_read32(fd, 0, COMPLETED),
            bar_read32(fd, 0, ERROR_CODE)
        ),
        (0, 0, 0)
    );
    assert_ne!(
        bar_read32(fd, 0, STATUS) & STATUS_BUS_MASTER,
        0,
        "COMMAND restored"
    );
    bar_write64(fd, 0, RING_BASE, IOVA);
    bar_write32(fd, 0, RING_SIZE, 16);
    bar_write32(fd, 0, CONTROL, CONTROL_RING_ENABLE);
    bar_write32(fd, 0, RING_TAIL, 1);
    wait_for("the copy after reset", || bar_read32(fd, 0, COMPLETED) == 1);

    files::close(fd).unwrap();
}

#[test]
fn dma_engine_traffic_from_parameters_over_a_group_and_container() {
    const IOVA: u64 = 0x4000_0000;
    registry::declare(&format!(
        "dma-engine,addr=0000:e1:02.0,group=602,cdev=602,traffic_iova={IOVA:#x},traffic_size=0x2000,rate=0"
    ))
    .unwrap();
    let g = registry::open_group(602, true).unwrap();
    let container = Context::new_vfio_container().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut fds = Fds::default();
    let mut cfd = null.as_raw_fd();
    fds.0.insert(cfd, container.clone());
    ioctl_on(g, VFIO_GROUP_SET_CONTAINER, &mut cfd, &fds).unwrap();
    kit::raw(&container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU).unwrap();
    let buf = Buf::zeroed(4 * K4, K4);
    map_dma(&container, buf.addr(), 4 * K4, IOVA).unwrap();
    let mut name = b"0000:e1:02.0\0".to_vec();
    let dfd = ioctl_on(g, VFIO_GROUP_GET_DEVICE_FD, &mut name[..], &fds).unwrap() as i32;

    // traffic is on from power-on, but no DMA without bus mastering
    // (memory decode only, for the BAR reads)
    file(dfd)
        .write_at(&0x2u16.to_le_bytes(), region(7) + 4)
        .unwrap();
    assert_eq!(bar_read32(dfd, 0, TRAFFIC_CTRL), TRAFFIC_ENABLE);
    assert_eq!(bar_read64(dfd, 0, TRAFFIC_BASE), IOVA);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(bar_read64(dfd, 0, TRAFFIC_COUNT), 0);
    assert!(bytes(&buf, 0, 4 * K4 as usize).iter().all(|&b| b == 0));
    // bus mastering on (what the QEMU test does from the monitor)
    enable_bus_master(dfd);
    let n = 0x2000 / 64;
    // (records being written may be torn while the stream runs: count
    // the valid ones only, then check strictly once it stopped)
    wait_for("a full window", || {
        let w = bytes(&buf, 0, 0x2000);
        (0..n)
            .filter(|&slot| {
                let r = &w[(slot * 64) as usize..(slot * 64 + 64) as usize];
                matches!(traffic::check(r, slot, n), Ok(Some(_)))
            })
            .count()
            == n as usize
    });
    // bus mastering off: returns once nothing is in flight
    file(dfd)
        .write_at(&0x2u16.to_le_bytes(), region(7) + 4)
        .unwrap();
    let seq = bar_read64(dfd, 0, TRAFFIC_SEQ);
    assert_eq!(records(&buf, 0, n), (seq - n..seq).collect::<Vec<u64>>());
    enable_bus_master(dfd);
    assert!(
        bytes(&buf, 0x2000, 2 * K4 as usize).iter().all(|&b| b == 0),
        "nothing past the window"
    );
    // a reset restarts the stream from the parameters (seq 0)
    let mut none = [0u8; 0];
    ioctl_on(dfd, VFIO_DEVICE_RESET, &mut none[..], &Fds::default()).unwrap();
    assert_eq!(bar_read32(dfd, 0, TRAFFIC_CTRL), TRAFFIC_ENABLE);
    wait_for("the stream again", || bar_read64(dfd, 0, TRAFFIC_COUNT) > 0);
    // closing stops it: nothing lands afterwards
    files::close(dfd).unwrap();
    let snapshot = bytes(&buf, 0, 0x2000);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(bytes(&buf, 0, 0x2000), snapshot);
    files::close(g).unwrap();
    drop(null);
}
