//! Emulated VFIO devices through the real ABI bytes: the device and group
//! files' ioctls (errnos of every rule), config space bit rules and BAR
//! sizing by `pread`/`pwrite`, IRQ eventfds that really fire, DMA through
//! a VT-d domain after `IOAS_MAP` (and faults where nothing is mapped), and
//! the group + container and cdev + bind + attach flows.
//!
//! Each test declares its own device (distinct address, group and cdev
//! numbers: the registry is per process and the tests run in parallel).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use uiommufd::device::Device;
use uiommufd::hwpt::HwptPaging;
use uiommufd::plumbing::files;
use uiommufd::uapi::vfio::*;
use uiommufd::uapi::*;
use uiommufd::user::SelfMemory;
use uiommufd::vfio::model::{Bar, Bus, MsixLayout, PciIds, PciLayout, PciModel};
use uiommufd::vfio::registry;
use uiommufd::vfio::uapi::*;
use uiommufd::Context;
use uiommufd_testkit::vfio::{
    attach_pt, bar_read32, bar_write32, bar_write64, enable_bus_master, eventfd, file, fired,
    ioctl_on, map_dma, region, set_irq_fds, Fds, OnFd,
};
use zerocopy::{FromBytes, IntoBytes};

use uiommufd_testkit::{self as kit, Buf};

// ---------------------------------------------------------------- model

/// A tiny DMA device. BAR0 (4 KiB registers): 0x00 scratch, 0x08 source
/// IOVA, 0x10 destination IOVA, 0x18 length, 0x1c doorbell (copy `length`
/// bytes from source to destination by DMA, then raise the vector written),
/// 0x20 status (0 ok, 1 DMA fault), 0x24 resets seen. BAR2: 8 KiB of shared
/// memory (mmap), with the MSI-X table at 0x1000 and PBA at 0x1800.
#[derive(Debug)]
struct TinyModel {
    regs: Mutex<[u64; 8]>,
    bus: Mutex<Option<Arc<dyn Bus>>>,
    resets: AtomicU32,
    master: Mutex<Option<bool>>,
    memfd: std::os::fd::OwnedFd,
}

impl TinyModel {
    fn new() -> Arc<TinyModel> {
        Arc::new(TinyModel {
            regs: Mutex::new([0; 8]),
            bus: Mutex::new(None),
            resets: AtomicU32::new(0),
            master: Mutex::new(None),
            memfd: kit::memfd(c"tiny-bar2", 8192),
        })
    }

    fn bus(&self) -> Option<Arc<dyn Bus>> {
        self.bus.lock().clone()
    }

    fn raise(&self, v: u16) {
        if let Some(b) = self.bus() {
            b.interrupt(v);
        }
    }
}

impl PciModel for TinyModel {
    fn kind(&self) -> &'static str {
        "tiny"
    }

    fn layout(&self) -> PciLayout {
        PciLayout {
            ids: PciIds {
                vendor: 0x1b36,
                device: 0x7777,
                revision: 1,
                class: 0xff0000,
                subsystem_vendor: 0x1b36,
                subsystem_device: 0x1,
            },
            bars: [
                Some(Bar::registers(4096)),
                None,
                Some(Bar::memory(8192)),
                None,
                None,
                None,
            ],
            intx_pin: 1,
            msi_vectors: 2,
            msix: Some(MsixLayout {
                vectors: 4,
                table_bar: 2,
                table_offset: 0x1000,
                pba_bar: 2,
                pba_offset: 0x1800,
            }),
            pasid_log2: 0,
        }
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) {
        let v = if bar == 0 {
            let r = self.regs.lock();
            match offset & !7 {
                0x20 => r[4] | (self.resets.load(Ordering::SeqCst) as u64) << 32,
                o if o < 0x40 => r[(o / 8) as usize],
                _ => 0,
            }
        } else {
            0
        };
        let bytes = v.to_le_bytes();
        let at = (offset & 7) as usize;
        data.copy_from_slice(&bytes[at..at + data.len()]);
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
        if bar != 0 || offset >= 0x40 {
            return;
        }
        let mut r = self.regs.lock();
        let i = (offset / 8) as usize;
        let mut bytes = r[i].to_le_bytes();
        let at = (offset & 7) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
        r[i] = u64::from_le_bytes(bytes);
        if offset == 0x1c && data.len() == 4 {
            let (src, dst, len) = (r[1], r[2], r[3] as u32 as usize);
            let vector = u32::from_le_bytes(data.try_into().unwrap()) as u16;
            drop(r);
            let bus = self.bus().expect("connected");
            let mut buf = vec![0u8; len.min(65536)];
            let ok = bus.dma_read(src, &mut buf).is_ok() && bus.dma_write(dst, &buf).is_ok();
            self.regs.lock()[4] = u64::from(!ok);
            bus.interrupt(vector);
        }
    }

    fn bar_memory(&self, bar: u8) -> Option<(i32, u64)> {
        (bar == 2).then_some((self.memfd.as_raw_fd(), 0))
    }

    fn connect(&self, bus: Option<Arc<dyn Bus>>) {
        *self.bus.lock() = bus;
    }

    fn set_bus_master(&self, on: bool) {
        *self.master.lock() = Some(on);
    }

    fn reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
        *self.regs.lock() = [0; 8];
    }
}

// ---------------------------------------------------------------- helpers

/// fd → context, as the preload's table would answer.
/// Declare a tiny device numbered `n`: (model, address).
fn declare(n: u32) -> (Arc<TinyModel>, String) {
    let model = TinyModel::new();
    let addr = format!("0000:e0:{n:02x}.0");
    registry::declare_model(
        &format!("tiny,addr={addr},group={},cdev={}", 500 + n, 500 + n),
        model.clone(),
    )
    .unwrap();
    (model, addr)
}

/// Device `n` declared, its cdev opened and bound to a new context:
/// (model, fd, ctx, the fds that name the context).
fn bound(n: u32) -> (Arc<TinyModel>, i32, Arc<Context>, Fds) {
    let (model, _) = declare(n);
    let fd = registry::open_cdev(500 + n, true).unwrap();
    let ctx = Context::new();
    let mut fds = Fds::default();
    bind(fd, &ctx, &mut fds);
    (model, fd, ctx, fds)
}

fn errno_of<T: IntoBytes + FromBytes + ?Sized>(fd: i32, cmd: u32, arg: &mut T) -> i32 {
    kit::err(ioctl_on(fd, cmd, arg, &Fds::default()))
}

fn cfg_read(fd: i32, off: u64, n: usize) -> Result<Vec<u8>, i32> {
    let mut b = vec![0u8; n];
    file(fd)
        .read_at(&mut b, region(7) + off, false)
        .map(|_| b)
        .map_err(|e| e.errno().0)
}

fn cfg_read32(fd: i32, off: u64) -> u32 {
    u32::from_le_bytes(cfg_read(fd, off, 4).unwrap().try_into().unwrap())
}

fn cfg_write(fd: i32, off: u64, data: &[u8]) -> Result<usize, i32> {
    file(fd)
        .write_at(data, region(7) + off)
        .map_err(|e| e.errno().0)
}

/// `SET_IRQS` without data.
fn set_irq_none(fd: i32, index: u32, action: u32, start: u32, count: u32) -> Result<i64, i32> {
    let mut s = VfioIrqSet {
        argsz: 20,
        flags: VFIO_IRQ_SET_DATA_NONE | action,
        index,
        start,
        count,
    };
    ioctl_on(fd, VFIO_DEVICE_SET_IRQS, &mut s, &Fds::default())
}

/// A cdev fd bound to `ctx` (registered in `fds` as fd 1000 + n): the devid.
fn bind(fd: i32, ctx: &Arc<Context>, fds: &mut Fds) -> u32 {
    // any open fd number stands for the iommufd (the resolver maps it)
    let null = std::fs::File::open("/dev/null").unwrap();
    let num = null.as_raw_fd();
    std::mem::forget(null);
    fds.0.insert(num, ctx.clone());
    let mut b = VfioDeviceBindIommufd {
        argsz: 16,
        flags: 0,
        iommufd: num,
        out_devid: 0,
    };
    ioctl_on(fd, VFIO_DEVICE_BIND_IOMMUFD, &mut b, fds).unwrap();
    b.out_devid
}

/// Program a DMA copy and ring the doorbell with `vector`: the status (0 ok).
fn dma_copy(fd: i32, src: u64, dst: u64, len: u32, vector: u32) -> u32 {
    bar_write64(fd, 0, 0x08, src);
    bar_write64(fd, 0, 0x10, dst);
    bar_write32(fd, 0, 0x18, len);
    bar_write32(fd, 0, 0x1c, vector);
    bar_read32(fd, 0, 0x20)
}

// ---------------------------------------------------------------- tests

#[test]
fn vfio_cdev_bind_attach_dma() {
    let (model, _) = declare(1);
    let fd = registry::open_cdev(501, true).unwrap();
    let st = file(fd).stat_as().unwrap();
    assert_eq!(st.mode, libc::S_IFCHR | 0o600);
    assert_eq!(st.rdev, libc::makedev(registry::VFIO_CDEV_MAJOR, 501));

    // before BIND: everything else is EINVAL
    let mut info = VfioDeviceInfo {
        argsz: 24,
        ..Default::default()
    };
    assert_eq!(errno_of(fd, VFIO_DEVICE_GET_INFO, &mut info), libc::EINVAL);
    assert_eq!(errno_of(fd, 0x3b00 | 200, &mut info), libc::EINVAL);
    assert_eq!(cfg_read(fd, 0, 4).unwrap_err(), libc::EINVAL);
    assert_eq!(
        file(fd).mmap(region(2), 4096, true).unwrap_err().errno().0,
        libc::EINVAL
    );

    // BIND's own rules
    let ctx = Context::new();
    let mut fds = Fds::default();
    let null = std::fs::File::open("/dev/null").unwrap();
    let bind_arg = |argsz, flags, iommufd| VfioDeviceBindIommufd {
        argsz,
        flags,
        iommufd,
        out_devid: 0,
    };
    let null_fd = null.as_raw_fd();
    kit::errno_table(
        &OnFd(fd, &fds),
        VFIO_DEVICE_BIND_IOMMUFD,
        [
            ("short argsz", bind_arg(15, 0, null_fd), libc::EINVAL),
            // (1 is VFIO_DEVICE_BIND_FLAG_TOKEN from 6.17: see the token test)
            ("unknown flag", bind_arg(16, 2, null_fd), libc::EINVAL),
            ("negative fd", bind_arg(16, 0, -1), libc::EINVAL),
            ("not an iommufd", bind_arg(16, 0, null_fd), libc::EBADFD),
            ("no such fd", bind_arg(16, 0, 1 << 20), libc::EBADF),
        ],
    );
    assert!(model.bus().is_none(), "not connected before a bind");

    let devid = bind(fd, &ctx, &mut fds);
    assert!(ctx.get::<Device>(devid).is_ok());
    assert!(model.bus().is_some(), "connected at bind");
    let mut b2 = VfioDeviceBindIommufd {
        argsz: 16,
        flags: 0,
        iommufd: *fds.0.keys().next().unwrap(),
        out_devid: 0,
    };
    assert_eq!(
        kit::err(ioctl_on(fd, VFIO_DEVICE_BIND_IOMMUFD, &mut b2, &fds)),
        libc::EINVAL,
        "bound twice"
    );
    // a second cdev file cannot bind the open device
    let fd2 = registry::open_cdev(501, true).unwrap();
    assert_eq!(
        kit::err(ioctl_on(fd2, VFIO_DEVICE_BIND_IOMMUFD, &mut b2, &fds)),
        libc::EINVAL
    );
    files::close(fd2).unwrap();
    // nor can its group be opened
    assert_eq!(
        registry::open_group(501, true).unwrap_err().errno().0,
        libc::EBUSY
    );

    // the VT-d hardware info through iommufd
    let mut data = [0u8; 24];
    let h = kit::hw_info_into(&ctx, devid, &mut data).unwrap();
    assert_eq!(h.out_data_type, IOMMU_HW_INFO_TYPE_INTEL_VTD);
    assert_eq!(
        h.out_capabilities & IOMMU_HW_CAP_DIRTY_TRACKING,
        IOMMU_HW_CAP_DIRTY_TRACKING
    );
    let cap = u64::from_ne_bytes(data[8..16].try_into().unwrap());
    assert_eq!((cap >> 16) & 0x3f, 47);

    // attach to an IOAS with memory mapped
    let ioas = kit::ioas_alloc(&ctx);
    let buf = Buf::zeroed(3 * 4096, 4096);
    kit::map_fixed(&ctx, ioas, buf.addr(), 2 * 4096, 0x10_0000).unwrap();
    let attach_arg = |argsz, flags| VfioDeviceAttachIommufdPt {
        argsz,
        flags,
        pt_id: ioas,
    };
    kit::errno_table(
        &OnFd(fd, &Fds::default()),
        VFIO_DEVICE_ATTACH_IOMMUFD_PT,
        [
            ("short argsz", attach_arg(11, 0), libc::EINVAL),
            ("unknown flag", attach_arg(12, 1), libc::EINVAL),
        ],
    );
    assert_eq!(attach_pt(fd, 9999).unwrap_err(), libc::ENOENT);
    let hwpt = attach_pt(fd, ioas).unwrap();
    assert_ne!(hwpt, ioas, "the auto domain's HWPT ID is written back");
    assert!(ctx.get::<HwptPaging>(hwpt).is_ok());

    // DMA: blocked without bus mastering, lands in memory with it
    // SAFETY: writes into our own buffer.
    unsafe { std::ptr::write_bytes(buf.addr() as *mut u8, 0xab, 16) };
    cfg_write(fd, 4, &0x2u16.to_le_bytes()).unwrap(); // memory only
    assert_eq!(
        dma_copy(fd, 0x10_0000, 0x10_1000, 16, 0),
        1,
        "no bus master: blocked"
    );
    assert_eq!(buf.byte(4096), 0);
    enable_bus_master(fd);
    assert_eq!(*model.master.lock(), Some(true));
    assert_eq!(dma_copy(fd, 0x10_0000, 0x10_1000, 16, 0), 0);
    assert_eq!(buf.byte(4096), 0xab);
    assert_eq!(buf.byte(4096 + 15), 0xab);
    // DMA to an unmapped IOVA is a device error
    assert_eq!(dma_copy(fd, 0x10_0000, 0x20_0000, 16, 0), 1);
    assert_eq!(buf.byte(2 * 4096), 0, "nothing past the mapping");
    let dev = uiommufd::vfio::device::get(&registry::by_cdev(501).unwrap());
    assert!(dev.dma_faults() >= 2);

    // a HWPT with dirty tracking, replacing the auto domain
    let hw2 = kit::hwpt_alloc(&ctx, devid, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    assert_eq!(attach_pt(fd, hw2).unwrap(), hw2);
    assert!(
        ctx.get_any(hwpt).is_err(),
        "the auto domain went with its last device"
    );
    // the device's writes are what dirty tracking reports
    kit::set_dirty_tracking(&ctx, hw2, true).unwrap();
    let mut bitmap = 0u64;
    let bm = &mut bitmap as *mut u64 as u64;
    kit::get_dirty_bitmap(&ctx, hw2, 0x10_0000, 2 * 4096, 4096, bm, 0).unwrap();
    assert_eq!(bitmap, 0);
    assert_eq!(dma_copy(fd, 0x10_0000, 0x10_1008, 8, 0), 0);
    assert_eq!(buf.byte(4096 + 8), 0xab);
    kit::get_dirty_bitmap(&ctx, hw2, 0x10_0000, 2 * 4096, 4096, bm, 0).unwrap();
    assert_eq!(std::hint::black_box(bitmap), 0b10, "only the page written");
    // the VT-d unit nests: a nest parent is a paging HWPT like any other
    let np = kit::hwpt_alloc(&ctx, devid, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT).unwrap();
    kit::destroy(&ctx, np).unwrap();
    // (1 << 3, IOMMU_HWPT_ALLOC_PASID, is known from 6.15; 1 << 4 at no level)
    assert_eq!(
        kit::hwpt_alloc(&ctx, devid, ioas, 1 << 4).unwrap_err(),
        libc::EOPNOTSUPP
    );

    // detach: blocked again
    let detach_arg = |argsz, flags| VfioDeviceDetachIommufdPt { argsz, flags };
    kit::errno_table(
        &OnFd(fd, &Fds::default()),
        VFIO_DEVICE_DETACH_IOMMUFD_PT,
        [
            ("short argsz", detach_arg(7, 0), libc::EINVAL),
            ("unknown flag", detach_arg(8, 2), libc::EINVAL),
            ("detached", detach_arg(8, 0), 0),
        ],
    );
    assert_eq!(dma_copy(fd, 0x10_0000, 0x10_1000, 8, 0), 1);

    // closing unbinds and disconnects
    let before = ctx.object_count();
    files::close(fd).unwrap();
    assert!(ctx.get_any(devid).is_err());
    assert_eq!(ctx.object_count(), before - 1);
    assert!(model.bus().is_none());
    // and the group can be opened again
    let g = registry::open_group(501, true).unwrap();
    files::close(g).unwrap();
}

#[test]
fn vfio_group_container_flow() {
    let (model, addr) = declare(2);
    let g = registry::open_group(502, true).unwrap();
    assert_eq!(
        registry::open_group(502, true).unwrap_err().errno().0,
        libc::EBUSY
    );
    assert_eq!(
        registry::open_group(4242, true).unwrap_err().errno().0,
        libc::ENOENT
    );

    let mut s = VfioGroupStatus { argsz: 7, flags: 0 };
    assert_eq!(errno_of(g, VFIO_GROUP_GET_STATUS, &mut s), libc::EINVAL);
    s.argsz = 8;
    assert_eq!(errno_of(g, VFIO_GROUP_GET_STATUS, &mut s), 0);
    assert_eq!(s.flags, VFIO_GROUP_FLAGS_VIABLE);

    let mut name = addr.clone().into_bytes();
    name.push(0);
    assert_eq!(
        errno_of(g, VFIO_GROUP_GET_DEVICE_FD, &mut name[..]),
        libc::EINVAL,
        "no container"
    );
    let mut wrong = b"0000:00:00.0\0".to_vec();
    assert_eq!(
        errno_of(g, VFIO_GROUP_GET_DEVICE_FD, &mut wrong[..]),
        libc::ENODEV
    );
    let mut longer = format!("{addr}1\0").into_bytes();
    assert_eq!(
        errno_of(g, VFIO_GROUP_GET_DEVICE_FD, &mut longer[..]),
        libc::ENODEV
    );
    let mut unset = [0u8; 4];
    assert_eq!(
        errno_of(g, VFIO_GROUP_UNSET_CONTAINER, &mut unset),
        libc::EINVAL
    );

    // the container: fd errors, then a /dev/vfio/vfio context
    let container = Context::new_vfio_container().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut fds = Fds::default();
    let mut cfd: i32 = 1 << 20;
    assert_eq!(
        kit::err(ioctl_on(g, VFIO_GROUP_SET_CONTAINER, &mut cfd, &fds)),
        libc::EBADF
    );
    cfd = null.as_raw_fd();
    assert_eq!(
        kit::err(ioctl_on(g, VFIO_GROUP_SET_CONTAINER, &mut cfd, &fds)),
        libc::EBADFD
    );
    fds.0.insert(cfd, container.clone());
    ioctl_on(g, VFIO_GROUP_SET_CONTAINER, &mut cfd, &fds).unwrap();
    assert_eq!(
        kit::err(ioctl_on(g, VFIO_GROUP_SET_CONTAINER, &mut cfd, &fds)),
        libc::EINVAL
    );
    assert_eq!(errno_of(g, VFIO_GROUP_GET_STATUS, &mut s), 0);
    assert_eq!(
        s.flags,
        VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET
    );

    // type1 maps before the device fd exists
    kit::raw(&container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU).unwrap();
    let buf = Buf::zeroed(2 * 4096, 4096);
    map_dma(&container, buf.addr(), 2 * 4096, 0x4000_0000).unwrap();
    // SAFETY: writes into our own buffer.
    unsafe { std::ptr::write_bytes(buf.addr() as *mut u8, 0x5c, 32) };

    let mut token = format!("{addr} vf_token=2ab74924-c335-45f4-9b16-8569e5b08258\0").into_bytes();
    assert_eq!(
        kit::err(ioctl_on(g, VFIO_GROUP_GET_DEVICE_FD, &mut token[..], &fds)),
        libc::EINVAL,
        "not an SR-IOV function"
    );
    let mut spaced = format!("{addr}  \0").into_bytes();
    let sfd = ioctl_on(g, VFIO_GROUP_GET_DEVICE_FD, &mut spaced[..], &fds).unwrap() as i32;
    files::close(sfd).unwrap();
    let dfd = ioctl_on(g, VFIO_GROUP_GET_DEVICE_FD, &mut name[..], &fds).unwrap() as i32;
    assert!(
        file(dfd).stat_as().is_none(),
        "a group's device fd is an anon inode"
    );
    // cdev-only ioctls are not served on a group's device fd
    assert_eq!(kit::err(attach_pt(dfd, 1)), libc::ENOTTY);
    // nor BIND
    let mut b = VfioDeviceBindIommufd {
        argsz: 16,
        flags: 0,
        iommufd: cfd,
        out_devid: 0,
    };
    assert_eq!(
        kit::err(ioctl_on(dfd, VFIO_DEVICE_BIND_IOMMUFD, &mut b, &fds)),
        libc::EINVAL
    );
    // the device's cdev cannot bind while the group is open
    let cdev = registry::open_cdev(502, true).unwrap();
    assert_eq!(
        kit::err(ioctl_on(cdev, VFIO_DEVICE_BIND_IOMMUFD, &mut b, &fds)),
        libc::EBUSY
    );
    files::close(cdev).unwrap();

    enable_bus_master(dfd);
    assert_eq!(
        dma_copy(dfd, 0x4000_0000, 0x4000_1000, 32, 0),
        0,
        "DMA through the compat IOAS"
    );
    assert_eq!(buf.byte(4096), 0x5c);
    assert_eq!(buf.byte(4096 + 31), 0x5c);
    // a second device fd of the same group shares the open device
    let dfd2 = ioctl_on(g, VFIO_GROUP_GET_DEVICE_FD, &mut name[..], &fds).unwrap() as i32;
    assert_eq!(bar_read32(dfd2, 0, 0x20), 0);
    files::close(dfd2).unwrap();
    assert!(model.bus().is_some(), "still open through the first fd");

    // the group stays open while a device fd is
    files::close(g).unwrap();
    assert_eq!(
        registry::open_group(502, true).unwrap_err().errno().0,
        libc::EBUSY
    );
    let resets = model.resets.load(Ordering::SeqCst);
    files::close(dfd).unwrap();
    assert!(model.bus().is_none());
    assert_eq!(
        model.resets.load(Ordering::SeqCst),
        resets + 1,
        "reset at the last close"
    );
    let g = registry::open_group(502, true).unwrap();
    // an iommufd as the container gets a compat IOAS
    let ictx = Context::new();
    assert!(ictx.compat_ioas().is_err());
    let null2 = std::fs::File::open("/dev/null").unwrap();
    let mut ifd = null2.as_raw_fd();
    let mut fds2 = Fds::default();
    fds2.0.insert(ifd, ictx.clone());
    ioctl_on(g, VFIO_GROUP_SET_CONTAINER, &mut ifd, &fds2).unwrap();
    let ioas = ictx.compat_ioas().unwrap();
    let dfd = ioctl_on(g, VFIO_GROUP_GET_DEVICE_FD, &mut name[..], &fds2).unwrap() as i32;
    let dev = uiommufd::vfio::device::get(&registry::by_group(502).unwrap());
    let hwpt = dev.engine_device().unwrap().attached_hwpt().unwrap();
    let o = ictx.get_any(hwpt).unwrap();
    match o.downcast::<HwptPaging>() {
        Some(h) => assert_eq!(h.ioas_id(), ioas),
        None => panic!("attached to a {}", o.kind()),
    }
    assert_eq!(errno_of(g, VFIO_GROUP_UNSET_CONTAINER, &mut unset), 0);
    assert_eq!(errno_of(g, 0x3b00 | 199, &mut unset), libc::ENOTTY);
    files::close(dfd).unwrap();
    files::close(g).unwrap();
}

#[test]
fn vfio_config_space_and_regions() {
    let (_model, fd, ctx, mut fds) = bound(3);

    // one read of the whole header
    let cfg = cfg_read(fd, 0, 256).unwrap();
    assert_eq!(u16::from_le_bytes([cfg[0], cfg[1]]), 0x1b36);
    assert_eq!(u16::from_le_bytes([cfg[2], cfg[3]]), 0x7777);
    assert_eq!(cfg[0x0e], 0, "type 0 header");
    assert_eq!(cfg[0x3d], 1, "INTA");
    assert_ne!(cfg[6] & 0x10, 0, "capability list");
    // the capability list: MSI then MSI-X
    let mut at = cfg[0x34] as usize;
    let mut ids = Vec::new();
    while at != 0 {
        ids.push((cfg[at], at));
        at = cfg[at + 1] as usize;
    }
    assert_eq!(
        ids.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![0x05, 0x11]
    );
    let msi = ids[0].1 as u64;
    let msix = ids[1].1 as u64;
    assert_eq!(
        u16::from_le_bytes([cfg[msi as usize + 2], cfg[msi as usize + 3]]) & 0x8e,
        0x82,
        "64-bit, 2 vectors"
    );
    assert_eq!(
        cfg_read32(fd, msix + 4),
        0x1000 | 2,
        "table in BAR2 at 0x1000"
    );
    assert_eq!(cfg_read32(fd, msix + 8), 0x1800 | 2);

    // BAR sizing
    cfg_write(fd, 0x10, &[0xff; 4]).unwrap();
    assert_eq!(cfg_read32(fd, 0x10), 0xffff_f000);
    cfg_write(fd, 0x18, &[0xff; 4]).unwrap();
    cfg_write(fd, 0x1c, &[0xff; 4]).unwrap();
    assert_eq!(
        cfg_read32(fd, 0x18),
        0xffff_e000 | 0xc,
        "64-bit prefetchable 8 KiB"
    );
    assert_eq!(cfg_read32(fd, 0x1c), 0xffff_ffff);
    cfg_write(fd, 0x14, &[0xff; 4]).unwrap();
    assert_eq!(
        cfg_read32(fd, 0x14),
        0,
        "upper half of nothing: BAR1 absent"
    );
    cfg_write(fd, 0x30, &0xffff_f800u32.to_le_bytes()).unwrap();
    assert_eq!(cfg_read32(fd, 0x30), 0, "no ROM");
    cfg_write(fd, 0x10, &0xfeb0_0000u32.to_le_bytes()).unwrap();
    assert_eq!(cfg_read32(fd, 0x10), 0xfeb0_0000);
    // read-only identity and pin, read-write line
    cfg_write(fd, 0, &[0; 4]).unwrap();
    assert_eq!(cfg_read32(fd, 0) & 0xffff, 0x1b36);
    cfg_write(fd, 0x3c, &[0x0b, 0x04]).unwrap();
    assert_eq!(cfg_read(fd, 0x3c, 2).unwrap(), vec![0x0b, 0x01]);
    // COMMAND's writable bits; STATUS cannot be set by writing ones
    cfg_write(fd, 4, &0xffff_ffffu32.to_le_bytes()).unwrap();
    assert_eq!(cfg_read32(fd, 4) & 0xffff, 0x0546);
    assert_eq!(cfg_read32(fd, 4) >> 16, 0x0010);
    // MSI-X control: enable and mask writable, table size read-only
    cfg_write(fd, msix + 2, &0xffffu16.to_le_bytes()).unwrap();
    assert_eq!(cfg_read32(fd, msix) >> 16, 0xc003);
    // capability IDs and pointers read-only
    cfg_write(fd, msix, &[0, 0]).unwrap();
    assert_eq!(cfg_read(fd, msix, 1).unwrap(), vec![0x11]);
    cfg_write(fd, 0x34, &[0]).unwrap();
    assert_eq!(cfg_read(fd, 0x34, 1).unwrap(), vec![msi as u8]);

    // range errors
    assert_eq!(cfg_read(fd, 256, 1).unwrap_err(), libc::EFAULT);
    assert_eq!(cfg_read(fd, 252, 8).unwrap_err(), libc::EFAULT);
    let mut b = [0u8; 4];
    let f = file(fd);
    assert_eq!(
        f.read_at(&mut b, region(12), false).unwrap_err().errno().0,
        libc::EINVAL
    );
    assert_eq!(
        f.read_at(&mut b, region(8), false).unwrap_err().errno().0,
        libc::EINVAL,
        "VGA"
    );
    assert_eq!(
        f.read_at(&mut b, region(6), false).unwrap_err().errno().0,
        libc::EINVAL,
        "ROM"
    );
    assert_eq!(
        f.write_at(&b, region(6)).unwrap_err().errno().0,
        libc::EINVAL
    );
    assert_eq!(
        f.read_at(&mut b, region(1), false).unwrap_err().errno().0,
        libc::EINVAL,
        "absent BAR"
    );
    assert_eq!(
        f.read_at(&mut b, region(0) + 4096, false)
            .unwrap_err()
            .errno()
            .0,
        libc::EINVAL
    );
    // BAR access needs memory decode
    cfg_write(fd, 4, &0u16.to_le_bytes()).unwrap();
    assert_eq!(
        f.read_at(&mut b, region(0), false).unwrap_err().errno().0,
        libc::EIO
    );
    enable_bus_master(fd);
    // the end of a BAR clamps the count
    let mut big = [0u8; 16];
    assert_eq!(f.read_at(&mut big, region(0) + 4088, false).unwrap(), 8);
    // odd sizes are split into aligned pieces
    f.write_at(&[1, 2, 3, 4, 5, 6, 7], region(0) + 1).unwrap();
    let mut r = [0u8; 8];
    f.read_at(&mut r, region(0), false).unwrap();
    assert_eq!(r, [0, 1, 2, 3, 4, 5, 6, 7]);
    // the MSI-X table is the VFIO layer's, vectors masked at power-on
    let mut e = [0u8; 16];
    f.read_at(&mut e, region(2) + 0x1000, false).unwrap();
    assert_eq!(e[12], 1);
    f.write_at(&0xfee0_0000u32.to_le_bytes(), region(2) + 0x1010)
        .unwrap();
    assert_eq!(bar_read32(fd, 2, 0x1010), 0xfee0_0000);
    assert_eq!(bar_read32(fd, 2, 0x1800), 0, "PBA");

    // mmap: BAR2 only, inside the BAR
    let t = f.mmap(region(2), 8192, true).unwrap();
    assert_eq!(t.offset, 0);
    assert!(t.fd >= 0);
    assert_eq!(f.mmap(region(2) + 4096, 4096, true).unwrap().offset, 4096);
    assert_eq!(
        f.mmap(region(2), 3 * 4096, true).unwrap_err().errno().0,
        libc::EINVAL
    );
    assert_eq!(
        f.mmap(region(0), 4096, true).unwrap_err().errno().0,
        libc::EINVAL
    );
    assert_eq!(
        f.mmap(region(7), 4096, false).unwrap_err().errno().0,
        libc::EINVAL
    );
    files::close(fd).unwrap();

    // a fresh open: config back to power-on
    let fd = registry::open_cdev(503, true).unwrap();
    bind(fd, &ctx, &mut fds);
    assert_eq!(cfg_read32(fd, 0x10), 0);
    assert_eq!(cfg_read32(fd, 4) & 0xffff, 0);
    files::close(fd).unwrap();
}

#[test]
fn vfio_device_ioctl_errnos() {
    let (model, fd, _ctx, _fds) = bound(4);

    // GET_INFO: argsz rules, never written past argsz
    let mut raw = [0xeeu8; 24];
    raw[..4].copy_from_slice(&15u32.to_ne_bytes());
    assert_eq!(errno_of(fd, VFIO_DEVICE_GET_INFO, &mut raw), libc::EINVAL);
    raw[..4].copy_from_slice(&20u32.to_ne_bytes());
    assert_eq!(errno_of(fd, VFIO_DEVICE_GET_INFO, &mut raw), 0);
    let info = VfioDeviceInfo::read_from_bytes(&raw).unwrap();
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    // the 9 vfio-pci regions (device-specific ones may follow)
    assert!(info.num_regions >= 9);
    assert_eq!(info.num_irqs, 5);
    assert_eq!(&raw[20..], &[0xee; 4], "nothing past argsz");
    let mut info = VfioDeviceInfo {
        argsz: 24,
        cap_offset: 7,
        ..Default::default()
    };
    assert_eq!(errno_of(fd, VFIO_DEVICE_GET_INFO, &mut info), 0);
    assert_eq!(info.cap_offset, 0);

    // GET_REGION_INFO
    let ri = |index: u32, argsz: u32| {
        let mut r = VfioRegionInfo {
            argsz,
            index,
            ..Default::default()
        };
        (errno_of(fd, VFIO_DEVICE_GET_REGION_INFO, &mut r), r)
    };
    assert_eq!(ri(0, 31).0, libc::EINVAL);
    assert_eq!(ri(8, 32).0, libc::EINVAL, "no VGA");
    assert_eq!(ri(info.num_regions, 32).0, libc::EINVAL);
    let (e, r) = ri(0, 32);
    assert_eq!(e, 0);
    assert_eq!(
        (r.size, r.offset, r.flags),
        (
            4096,
            0,
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
        )
    );
    let (_, r) = ri(1, 32);
    assert_eq!((r.size, r.flags, r.offset), (0, 0, 1 << 40));
    let (_, r) = ri(6, 32);
    assert_eq!((r.size, r.flags), (0, 0), "no ROM");
    let (_, r) = ri(7, 32);
    assert_eq!((r.size, r.offset), (256, 7 << 40));
    // BAR2: mmap and the MSI-X mappable capability
    let (_, r) = ri(2, 32);
    assert_eq!(r.size, 8192);
    assert_eq!(
        r.flags & VFIO_REGION_INFO_FLAG_MMAP,
        VFIO_REGION_INFO_FLAG_MMAP
    );
    assert_eq!(
        r.flags & VFIO_REGION_INFO_FLAG_CAPS,
        VFIO_REGION_INFO_FLAG_CAPS
    );
    assert_eq!(
        (r.argsz, r.cap_offset),
        (40, 0),
        "the size needed, no cap offset"
    );
    let mut big = [0u8; 40];
    big[..4].copy_from_slice(&40u32.to_ne_bytes());
    big[8..12].copy_from_slice(&2u32.to_ne_bytes());
    assert_eq!(errno_of(fd, VFIO_DEVICE_GET_REGION_INFO, &mut big), 0);
    let r = VfioRegionInfo::read_from_bytes(&big[..32]).unwrap();
    assert_eq!(r.cap_offset, 32);
    let cap = uiommufd::vfio::uapi::VfioInfoCapHeader::read_from_bytes(&big[32..40]).unwrap();
    assert_eq!(
        (cap.id, cap.version, cap.next),
        (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 0)
    );

    // GET_IRQ_INFO
    let ii = |index: u32, argsz: u32| {
        let mut r = VfioIrqInfo {
            argsz,
            index,
            ..Default::default()
        };
        (errno_of(fd, VFIO_DEVICE_GET_IRQ_INFO, &mut r), r)
    };
    assert_eq!(ii(0, 15).0, libc::EINVAL);
    assert_eq!(ii(5, 16).0, libc::EINVAL);
    assert_eq!(ii(3, 16).0, libc::EINVAL, "ERR is PCI Express only");
    let (_, r) = ii(0, 16);
    assert_eq!(
        (r.count, r.flags),
        (
            1,
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED
        )
    );
    let (_, r) = ii(1, 16);
    assert_eq!(
        (r.count, r.flags),
        (2, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE)
    );
    let (_, r) = ii(2, 16);
    assert_eq!((r.count, r.flags), (4, VFIO_IRQ_INFO_EVENTFD));
    let (_, r) = ii(4, 16);
    assert_eq!(
        (r.count, r.flags),
        (1, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE)
    );

    // SET_IRQS validation
    let si = |argsz: u32, flags: u32, index: u32, start: u32, count: u32| {
        let mut s = VfioIrqSet {
            argsz,
            flags,
            index,
            start,
            count,
        };
        errno_of(fd, VFIO_DEVICE_SET_IRQS, &mut s)
    };
    let trig_none = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
    assert_eq!(si(19, trig_none, 2, 0, 0), libc::EINVAL, "short argsz");
    assert_eq!(si(20, trig_none, 5, 0, 0), libc::EINVAL, "bad index");
    assert_eq!(
        si(20, trig_none | (1 << 6), 2, 0, 0),
        libc::EINVAL,
        "unknown flag"
    );
    assert_eq!(
        si(
            20,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER,
            2,
            0,
            1
        ),
        libc::EINVAL
    );
    assert_eq!(
        si(20, trig_none, 2, 4, 0),
        libc::EINVAL,
        "start past the vectors"
    );
    assert_eq!(
        si(20, trig_none, 2, 3, 2),
        libc::EINVAL,
        "start + count past the vectors"
    );
    assert_eq!(si(20, trig_none, 2, 1, u32::MAX - 1), libc::EINVAL, "wrap");
    assert_eq!(
        si(
            20,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            2,
            0,
            1
        ),
        libc::EINVAL,
        "no room for the data"
    );
    assert_eq!(
        si(20, trig_none, 3, 0, 0),
        libc::EINVAL,
        "ERR has no vectors"
    );
    assert_eq!(
        si(
            20,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
            2,
            0,
            1
        ),
        libc::ENOTTY,
        "MSI-X masking"
    );
    assert_eq!(
        si(
            20,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
            0,
            0,
            1
        ),
        libc::EINVAL,
        "INTx not enabled"
    );
    assert_eq!(
        si(20, trig_none, 2, 0, 1),
        libc::EINVAL,
        "loopback with MSI-X off"
    );
    // bad eventfds
    assert_eq!(kit::err(set_irq_fds(fd, 2, 0, &[1 << 20])), libc::EBADF);
    let null = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(
        kit::err(set_irq_fds(fd, 2, 0, &[null.as_raw_fd()])),
        libc::EINVAL
    );
    assert_eq!(
        kit::err(set_irq_fds(fd, 2, 0, &[fd])),
        libc::EINVAL,
        "an engine fd is not the user's eventfd"
    );
    let ev = eventfd();
    assert_eq!(
        kit::err(set_irq_fds(fd, 2, 0, &[ev.as_raw_fd(), 1 << 20])),
        libc::EBADF
    );
    assert_eq!(
        uiommufd::vfio::device::get(&registry::by_cdev(504).unwrap()).irq_type(),
        uiommufd::vfio::device::IrqType::None,
        "a failed enable leaves nothing enabled"
    );
    // REQ
    assert_eq!(
        si(20, trig_none, 4, 0, 1),
        libc::EINVAL,
        "REQ loopback without an eventfd"
    );
    set_irq_fds(fd, 4, 0, &[ev.as_raw_fd()]).unwrap();
    assert_eq!(si(20, trig_none, 4, 0, 1), 0);
    assert_eq!(fired(&ev), 1);
    assert_eq!(si(20, trig_none, 4, 0, 0), 0, "unset");
    assert_eq!(si(20, trig_none, 4, 0, 1), libc::EINVAL);

    // DEVICE_FEATURE
    let feature_arg = |argsz, flags| VfioDeviceFeature { argsz, flags };
    let get_set = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET;
    kit::errno_table(
        &OnFd(fd, &Fds::default()),
        VFIO_DEVICE_FEATURE,
        [
            ("short argsz", feature_arg(7, 0), libc::EINVAL),
            ("unknown flag", feature_arg(8, 1 << 19), libc::EINVAL),
            (
                "GET and SET without PROBE",
                feature_arg(8, get_set | 1),
                libc::EINVAL,
            ),
            (
                "a feature no device has",
                feature_arg(8, get_set | VFIO_DEVICE_FEATURE_PROBE | 0xfff0),
                libc::ENOTTY,
            ),
        ],
    );

    // hot reset: no slot or bus reset
    let info_arg = |argsz| VfioPciHotResetInfo {
        argsz,
        ..Default::default()
    };
    kit::errno_table(
        &OnFd(fd, &Fds::default()),
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
        [
            ("short argsz", info_arg(11), libc::EINVAL),
            ("no slot or bus reset", info_arg(12), libc::ENODEV),
        ],
    );
    let reset_arg = |flags, count| VfioPciHotReset {
        argsz: 12,
        flags,
        count,
    };
    kit::errno_table(
        &OnFd(fd, &Fds::default()),
        VFIO_DEVICE_PCI_HOT_RESET,
        [
            ("unknown flag", reset_arg(1, 0), libc::EINVAL),
            ("a cdev user names no group", reset_arg(0, 1), libc::EINVAL),
            ("no slot or bus reset", reset_arg(0, 0), libc::ENODEV),
        ],
    );

    // RESET: the model resets, config and IRQs stay
    enable_bus_master(fd);
    bar_write32(fd, 0, 0, 0x1234);
    let r0 = model.resets.load(Ordering::SeqCst);
    let mut none = [0u8; 4];
    assert_eq!(errno_of(fd, VFIO_DEVICE_RESET, &mut none), 0);
    assert_eq!(model.resets.load(Ordering::SeqCst), r0 + 1);
    assert_eq!(bar_read32(fd, 0, 0), 0, "model registers at power-on");
    assert_eq!(
        cfg_read32(fd, 4) & 6,
        6,
        "config restored as pci_try_reset_function does"
    );

    // unknown ioctl; a bad pointer is EFAULT
    assert_eq!(errno_of(fd, 0x3b00 | 190, &mut none), libc::ENOTTY);
    assert_eq!(
        file(fd)
            .ioctl(VFIO_DEVICE_GET_INFO, 8, &SelfMemory, &Fds::default())
            .unwrap_err()
            .errno()
            .0,
        libc::EFAULT
    );
    files::close(fd).unwrap();
}

#[test]
fn vfio_irqs_fire() {
    let (model, fd, _ctx, _fds) = bound(5);
    let dev = uiommufd::vfio::device::get(&registry::by_cdev(505).unwrap());
    use uiommufd::vfio::device::IrqType;

    // nothing set up: dropped
    model.raise(0);

    // MSI-X: per-vector eventfds
    let evs: Vec<_> = (0..3).map(|_| eventfd()).collect();
    set_irq_fds(fd, 2, 0, &[evs[0].as_raw_fd(), evs[1].as_raw_fd()]).unwrap();
    assert_eq!(dev.irq_type(), IrqType::Msix);
    model.raise(1);
    assert_eq!((fired(&evs[0]), fired(&evs[1])), (0, 1));
    model.raise(0);
    model.raise(0);
    assert_eq!(fired(&evs[0]), 2);
    // grow dynamically, unset one vector
    set_irq_fds(fd, 2, 3, &[evs[2].as_raw_fd()]).unwrap();
    model.raise(3);
    assert_eq!(fired(&evs[2]), 1);
    set_irq_fds(fd, 2, 1, &[-1]).unwrap();
    model.raise(1);
    assert_eq!(fired(&evs[1]), 0, "unset vector");
    // loopback triggers
    let mut s = VfioIrqSet {
        argsz: 20,
        flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: 2,
        start: 0,
        count: 1,
    };
    assert_eq!(errno_of(fd, VFIO_DEVICE_SET_IRQS, &mut s), 0);
    assert_eq!(fired(&evs[0]), 1);
    // another type while MSI-X is on
    assert_eq!(
        kit::err(set_irq_fds(fd, 0, 0, &[evs[0].as_raw_fd()])),
        libc::EINVAL
    );
    assert_eq!(
        kit::err(set_irq_fds(fd, 1, 0, &[evs[0].as_raw_fd()])),
        libc::EINVAL
    );
    // the DMA engine's completion interrupt
    enable_bus_master(fd);
    assert_eq!(dma_copy(fd, 0, 0, 0, 0), 0);
    assert_eq!(fired(&evs[0]), 1);
    // disable: nothing fires
    set_irq_none(fd, 2, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0).unwrap();
    assert_eq!(dev.irq_type(), IrqType::None);
    model.raise(0);
    assert_eq!(fired(&evs[0]), 0);

    // the REQ eventfd is independent of the interrupt type
    let req = eventfd();
    set_irq_fds(fd, 4, 0, &[req.as_raw_fd()]).unwrap();
    set_irq_fds(fd, 2, 0, &[evs[0].as_raw_fd()]).unwrap();
    set_irq_none(fd, 2, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0).unwrap();
    set_irq_none(fd, 4, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1).unwrap();
    assert_eq!(fired(&req), 1, "REQ survives MSI-X enable and disable");

    // MSI: vectors fixed at enable
    set_irq_fds(fd, 1, 0, &[evs[0].as_raw_fd()]).unwrap();
    assert_eq!(dev.irq_type(), IrqType::Msi);
    assert_eq!(
        kit::err(set_irq_fds(fd, 1, 1, &[evs[1].as_raw_fd()])),
        libc::EINVAL
    );
    model.raise(0);
    assert_eq!(fired(&evs[0]), 1);
    set_irq_none(fd, 1, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0).unwrap();

    // INTx: auto-masked until unmasked; pending across the mask
    set_irq_fds(fd, 0, 0, &[evs[0].as_raw_fd()]).unwrap();
    assert_eq!(dev.irq_type(), IrqType::Intx);
    model.raise(0);
    assert_eq!(fired(&evs[0]), 1);
    assert_ne!(cfg_read32(fd, 4) & (1 << 19), 0, "STATUS interrupt bit");
    model.raise(0);
    assert_eq!(fired(&evs[0]), 0, "masked");
    set_irq_none(fd, 0, VFIO_IRQ_SET_ACTION_UNMASK, 0, 1).unwrap();
    assert_eq!(fired(&evs[0]), 1, "the pending one at the unmask");
    set_irq_none(fd, 0, VFIO_IRQ_SET_ACTION_UNMASK, 0, 1).unwrap();
    assert_eq!(cfg_read32(fd, 4) & (1 << 19), 0);
    // INTx disabled in COMMAND: dropped
    cfg_write(fd, 4, &(0x6u16 | 1 << 10).to_le_bytes()).unwrap();
    model.raise(0);
    assert_eq!(fired(&evs[0]), 0);
    cfg_write(fd, 4, &0x6u16.to_le_bytes()).unwrap();
    model.raise(0);
    assert_eq!(fired(&evs[0]), 1);
    // mask by the user
    set_irq_none(fd, 0, VFIO_IRQ_SET_ACTION_UNMASK, 0, 1).unwrap();
    set_irq_none(fd, 0, VFIO_IRQ_SET_ACTION_MASK, 0, 1).unwrap();
    model.raise(0);
    assert_eq!(fired(&evs[0]), 0);
    assert_eq!(
        kit::err(set_irq_none(fd, 0, VFIO_IRQ_SET_ACTION_MASK, 0, 0)),
        libc::EINVAL
    );
    // unmask by eventfd (virqfd, QEMU's KVM resample path): the pending
    // interrupt (masked above) fires once the unmask eventfd is signalled
    let unmask = eventfd();
    let set_unmask_fd = |efd: i32| {
        let mut b = Vec::new();
        for v in [
            24u32,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            0,
            1,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&efd.to_ne_bytes());
        ioctl_on(fd, VFIO_DEVICE_SET_IRQS, &mut b[..], &Fds::default())
    };
    set_unmask_fd(unmask.as_raw_fd()).unwrap();
    let poke = |e: &std::os::fd::OwnedFd| {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        let n = unsafe { libc::write(e.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        assert_eq!(n, 8);
    };
    let wait_fired = |e: &std::os::fd::OwnedFd| {
        let t0 = std::time::Instant::now();
        loop {
            let n = fired(e);
            if n > 0 || t0.elapsed().as_secs() >= 10 {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    };
    poke(&unmask);
    assert_eq!(
        wait_fired(&evs[0]),
        1,
        "unmasked by the eventfd: the pending one fires"
    );
    model.raise(0);
    assert_eq!(fired(&evs[0]), 0, "auto-masked again");
    poke(&unmask);
    assert_eq!(wait_fired(&evs[0]), 1);
    set_unmask_fd(-1).unwrap();
    model.raise(0);
    poke(&unmask);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(fired(&evs[0]), 0, "no virqfd any more");
    assert_eq!(kit::err(set_unmask_fd(1 << 20)), libc::EBADF);
    set_unmask_fd(unmask.as_raw_fd()).unwrap();
    // disabling INTx stops the virqfd with it
    set_irq_none(fd, 0, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0).unwrap();
    assert_eq!(dev.irq_type(), IrqType::None);
    set_irq_fds(fd, 0, 0, &[evs[0].as_raw_fd()]).unwrap();
    // closing the device fd tears the IRQs down
    files::close(fd).unwrap();
    assert_eq!(dev.irq_type(), IrqType::None);
}

/// The reference `dma-engine` model behind the VFIO layer: a COPY
/// descriptor through the ring lands in memory mapped in the IOAS, its
/// completion interrupt fires on the MSI-X vector 0 eventfd, and a COPY
/// whose destination is mapped read-only completes with a PERMISSION error.
#[test]
fn vfio_dma_engine_end_to_end() {
    registry::declare("dma-engine,addr=0000:e1:00.0,group=610,cdev=610").unwrap();
    let fd = registry::open_cdev(610, true).unwrap();
    let ctx = Context::new();
    let mut fds = Fds::default();
    bind(fd, &ctx, &mut fds);
    let cfg = cfg_read(fd, 0, 4).unwrap();
    assert_eq!(cfg, vec![0xe5, 0x1d, 0x01, 0x00]);

    // ring page, source page, destination page; a read-only page
    let ioas = ctx.ioas_alloc().unwrap();
    let mem = Buf::zeroed(4 * 4096, 4096);
    let i = ctx.ioas(ioas).unwrap();
    i.map_user(mem.addr(), 3 * 4096, Some(0x1000_0000), uiommufd::Prot::RW)
        .unwrap();
    i.map_user(
        mem.addr() + 3 * 4096,
        4096,
        Some(0x2000_0000),
        uiommufd::Prot::RO,
    )
    .unwrap();
    attach_pt(fd, ioas).unwrap();
    enable_bus_master(fd);
    let ev = eventfd();
    // MSI-X enabled in config, then vector 0's eventfd
    let cfgv = cfg_read(fd, 0, 256).unwrap();
    let mut at = cfgv[0x34] as u64;
    while cfgv[at as usize] != 0x11 {
        at = cfgv[at as usize + 1] as u64;
    }
    cfg_write(fd, at + 2, &0x8000u16.to_le_bytes()).unwrap();
    set_irq_fds(fd, 2, 0, &[ev.as_raw_fd()]).unwrap();

    // SAFETY: our own buffer: a source pattern and two descriptors.
    unsafe {
        let base = mem.addr() as *mut u8;
        for k in 0..256 {
            *base.add(4096 + k) = k as u8;
        }
        let d = base as *mut u64;
        // COPY 256 bytes src page -> dst page, INTERRUPT
        *d = 1 | 1 << 8 | 256 << 32;
        *d.add(1) = 0x1000_1000;
        *d.add(2) = 0x1000_2000;
        // COPY 64 bytes to the read-only page, INTERRUPT
        *d.add(4) = 1 | 1 << 8 | 64 << 32;
        *d.add(5) = 0x1000_1000;
        *d.add(6) = 0x2000_0000;
    }
    let w32 = |off: u64, v: u32| bar_write32(fd, 0, off, v);
    bar_write64(fd, 0, 0x40, 0x1000_0000);
    w32(0x48, 16);
    w32(0x1c, 0b11); // completion and error interrupts
    w32(0x10, 1);
    w32(0x50, 2); // two descriptors
    kit::wait_for("the device to complete", || bar_read32(fd, 0, 0x58) >= 2);
    for k in 0..256 {
        assert_eq!(mem.byte(2 * 4096 + k), k as u8);
    }
    let status = |n: u64| u16::from_le_bytes([mem.byte(n * 32 + 2), mem.byte(n * 32 + 3)]);
    assert_eq!(status(0), 1, "OK");
    assert_eq!(status(1), 0x8000 | 2, "PERMISSION");
    assert_eq!(
        mem.byte(3 * 4096),
        0,
        "nothing written to the read-only page"
    );
    assert_eq!(bar_read32(fd, 0, 0x20) & 0xff, 2);
    kit::wait_for("the completion interrupt on the eventfd", || {
        fired(&ev) >= 1
    });
    files::close(fd).unwrap();
}

/// Many threads at once, as in QEMU (vCPUs on BARs and config, the main
/// loop on SET_IRQS, the device's own thread raising interrupts and doing
/// DMA, attach/detach): nothing deadlocks, DMA either lands or faults, and
/// the device closes cleanly at the end.
#[test]
fn vfio_concurrent_irqs_dma_and_config() {
    let (model, fd, ctx, _fds) = bound(6);
    let ioas = kit::ioas_alloc(&ctx);
    let buf = Buf::zeroed(2 * 4096, 4096);
    kit::map_fixed(&ctx, ioas, buf.addr(), 2 * 4096, 0x40_0000).unwrap();
    attach_pt(fd, ioas).unwrap();
    enable_bus_master(fd);
    let evs: Vec<_> = (0..4).map(|_| eventfd()).collect();
    let raw: Vec<i32> = evs.iter().map(|e| e.as_raw_fd()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    // the device: interrupts and DMA
    for t in 0..2u16 {
        let (m, stop) = (model.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                m.raise(t + (n % 2) as u16);
                if let Some(b) = m.bus() {
                    let _ = b.dma_write(0x40_0000 + (n % 4096), &[t as u8; 8]);
                    let mut x = [0u8; 8];
                    let _ = b.dma_read(0x40_0000, &mut x);
                }
                n += 1;
            }
        }));
    }
    // vCPUs: config and BAR accesses
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let cmd: u16 = if n.is_multiple_of(3) { 0x2 } else { 0x6 };
                cfg_write(fd, 4, &cmd.to_le_bytes()).unwrap();
                let _ = cfg_read(fd, 0, 64).unwrap();
                bar_write32(fd, 0, 0, n);
                let _ = bar_read32(fd, 0, 0);
                n += 1;
            }
        }));
    }
    // the main loop: interrupt setup and attach/detach
    let t0 = std::time::Instant::now();
    let mut i = 0u32;
    while i < 300 || t0.elapsed() < std::time::Duration::from_millis(300) {
        i += 1;
        match i % 5 {
            0 => {
                let _ = set_irq_fds(fd, 2, 0, &raw);
            }
            1 => {
                let _ = set_irq_none(fd, 2, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0);
            }
            2 => {
                let _ = set_irq_fds(fd, 0, 0, &raw[..1]);
                let _ = set_irq_none(fd, 0, VFIO_IRQ_SET_ACTION_UNMASK, 0, 1);
            }
            3 => {
                let _ = set_irq_none(fd, 0, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0);
                let mut d = VfioDeviceDetachIommufdPt { argsz: 8, flags: 0 };
                let _ = errno_of(fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut d);
            }
            _ => {
                attach_pt(fd, ioas).unwrap();
            }
        }
    }
    // End with interrupts set up and the device attached, and wait (with a
    // bound far above any scheduling delay) until it delivered one: no
    // assumption about how the threads were scheduled during the churn.
    attach_pt(fd, ioas).unwrap();
    let _ = set_irq_fds(fd, 2, 0, &raw);
    let mut fired_any: u64 = evs.iter().map(fired).sum();
    let t1 = std::time::Instant::now();
    while fired_any == 0 && t1.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(1));
        fired_any += evs.iter().map(fired).sum::<u64>();
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(fired_any > 0, "some interrupt was delivered");
    files::close(fd).unwrap();
    assert!(model.bus().is_none());
    ctx.check_invariants().unwrap();
}

/// `VFIO_DEVICE_BIND_IOMMUFD` as 6.17 extended it: 24 bytes with
/// `token_uuid_ptr`, a longer `argsz` needs zeros past them (`E2BIG`), the
/// VF-token flag reads the token (`EFAULT`) and is refused on a function
/// that is neither PF nor VF (`EINVAL`); at 6.12 the tail is not read and
/// the flag is unknown.
#[test]
fn vfio_bind_with_token_rules_by_level() {
    let (_model, _) = declare(7);
    #[repr(C)]
    #[derive(Clone, Copy, Default, IntoBytes, FromBytes, zerocopy::Immutable)]
    struct Bind {
        argsz: u32,
        flags: u32,
        iommufd: i32,
        out_devid: u32,
        token_uuid_ptr: u64,
        extra: u64,
    }
    let null = std::fs::File::open("/dev/null").unwrap();
    let num = null.as_raw_fd();
    let try_bind = |level, b: &mut Bind| {
        let fd = registry::open_cdev(507, true).unwrap();
        let mut fds = Fds::default();
        fds.0.insert(num, Context::new_at(level));
        b.iommufd = num;
        let r = ioctl_on(fd, VFIO_DEVICE_BIND_IOMMUFD, b, &fds).map(|_| b.out_devid);
        // SAFETY: closing the fd this closure opened.
        unsafe { libc::close(fd) };
        r
    };
    use uiommufd::uapi::level::UapiLevel;
    const V6_12: UapiLevel = UapiLevel::V6_12;
    const V7_2: UapiLevel = UapiLevel::V7_2;
    let uuid = [7u8; 16];
    let base = Bind {
        argsz: 24,
        ..Default::default()
    };
    assert!(try_bind(V7_2, &mut base.clone()).is_ok());
    let tail = Bind {
        argsz: 32,
        extra: 1,
        ..base
    };
    assert_eq!(try_bind(V7_2, &mut tail.clone()), Err(libc::E2BIG));
    assert!(
        try_bind(V6_12, &mut tail.clone()).is_ok(),
        "6.12 reads 16 bytes"
    );
    assert!(try_bind(V7_2, &mut Bind { extra: 0, ..tail }).is_ok());
    let token = Bind {
        flags: VFIO_DEVICE_BIND_FLAG_TOKEN,
        token_uuid_ptr: uuid.as_ptr() as u64,
        ..base
    };
    assert_eq!(try_bind(V7_2, &mut token.clone()), Err(libc::EINVAL));
    let bad_ptr = Bind {
        token_uuid_ptr: 8,
        ..token
    };
    assert_eq!(try_bind(V7_2, &mut bad_ptr.clone()), Err(libc::EFAULT));
    assert_eq!(try_bind(V6_12, &mut bad_ptr.clone()), Err(libc::EINVAL));
    assert_eq!(
        try_bind(V7_2, &mut Bind { flags: 2, ..base }),
        Err(libc::EINVAL)
    );
    // a refused bind left the file unbound and the group unblocked
    assert!(try_bind(V7_2, &mut base.clone()).is_ok());
}

/// `VFIO_DEVICE_FEATURE_DMA_BUF` (6.19) and its import by
/// `IOMMU_IOAS_MAP_FILE`: a BAR's memory exported as a dma-buf and mapped
/// into the IOAS is what the device's DMA through the IOMMU reaches (the
/// bytes land in the BAR's memory); the feature's argument rules; a
/// buffer of two ranges is refused by the IOAS (`EOPNOTSUPP`); memory
/// decode off revokes (imports `ENODEV`, the area's DMA faults), on again
/// allows new imports; the last close revokes for good.
#[test]
fn vfio_bar_dmabuf_export_and_p2p_dma() {
    let (model, fd, ctx, mut fds) = bound(8);
    let ioas = kit::ioas_alloc(&ctx);
    let src = Buf::zeroed(4096, 4096);
    // SAFETY: writes into our own buffer.
    unsafe { std::ptr::write_bytes(src.addr() as *mut u8, 0xab, 16) };
    kit::map_fixed(&ctx, ioas, src.addr(), 4096, 0x10_0000).unwrap();
    attach_pt(fd, ioas).unwrap();
    enable_bus_master(fd);

    let get = |flags: u32, region: u32, dflags: u32, ranges: &[(u64, u64)]| {
        let mut v: Vec<u64> = vec![0; 3 + 2 * ranges.len()];
        let b = v.as_mut_bytes();
        b[0..4].copy_from_slice(&(24 + 16 * ranges.len() as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&(flags | VFIO_DEVICE_FEATURE_DMA_BUF).to_ne_bytes());
        b[8..12].copy_from_slice(&region.to_ne_bytes());
        b[12..16].copy_from_slice(&(libc::O_CLOEXEC as u32).to_ne_bytes());
        b[16..20].copy_from_slice(&dflags.to_ne_bytes());
        b[20..24].copy_from_slice(&(ranges.len() as u32).to_ne_bytes());
        for (i, &(o, l)) in ranges.iter().enumerate() {
            b[24 + 16 * i..32 + 16 * i].copy_from_slice(&o.to_ne_bytes());
            b[32 + 16 * i..40 + 16 * i].copy_from_slice(&l.to_ne_bytes());
        }
        ioctl_on(fd, VFIO_DEVICE_FEATURE, v.as_mut_slice(), &Fds::default()).map(|r| r as i32)
    };
    let g = VFIO_DEVICE_FEATURE_GET;
    let page = 4096u64;
    assert_eq!(
        get(VFIO_DEVICE_FEATURE_SET, 2, 0, &[(0, page)]),
        Err(libc::EINVAL)
    );
    assert_eq!(
        get(VFIO_DEVICE_FEATURE_PROBE | g, 2, 0, &[(0, page)]),
        Ok(0)
    );
    assert_eq!(get(g, 2, 1, &[(0, page)]), Err(libc::EINVAL), "flags");
    assert_eq!(get(g, 2, 0, &[]), Err(libc::EINVAL), "no range");
    assert_eq!(get(g, 6, 0, &[(0, page)]), Err(libc::ENODEV), "the ROM");
    assert_eq!(get(g, 1, 0, &[(0, page)]), Err(libc::ENODEV), "no BAR 1");
    assert_eq!(
        get(g, 0, 0, &[(0, page)]),
        Err(libc::EINVAL),
        "registers only"
    );
    assert_eq!(get(g, 2, 0, &[(1, page)]), Err(libc::EINVAL), "unaligned");
    assert_eq!(get(g, 2, 0, &[(0, 0)]), Err(libc::EINVAL), "empty");
    assert_eq!(
        get(g, 2, 0, &[(page, 2 * page)]),
        Err(libc::EINVAL),
        "past the BAR"
    );
    assert_eq!(get(g, 2, 0, &[(!(page - 1), page)]), Err(libc::EOVERFLOW));

    let map_file = |dmabuf: i32, iova: u64| {
        let rw = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
        kit::map_file(&ctx, ioas, dmabuf, 0, page, rw, Some(iova))
    };
    let bar_byte = |off: i64| {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte of the model's memfd into our buffer.
        let n = unsafe { libc::pread(model.memfd.as_raw_fd(), b.as_mut_ptr().cast(), 1, off) };
        assert_eq!(n, 1);
        b[0]
    };

    // one range of BAR 2, imported: the device's DMA lands in the BAR
    let dmabuf = get(g, 2, 0, &[(page, page)]).unwrap();
    assert!(dmabuf >= 0);
    map_file(dmabuf, 0x30_0000).unwrap();
    assert_eq!(dma_copy(fd, 0x10_0000, 0x30_0000, 16, 0), 0);
    assert_eq!(bar_byte(4096), 0xab);
    assert_eq!(bar_byte(4096 + 15), 0xab);
    assert_eq!(bar_byte(0), 0, "the range's own bytes only");

    // two ranges: exported, but an IOAS imports one-range buffers only
    let two = get(g, 2, 0, &[(0, page), (page, page)]).unwrap();
    assert_eq!(map_file(two, 0x40_0000), Err(libc::EOPNOTSUPP));
    files::close(two).unwrap();

    // memory decode off: revoked; the area stays but reaches nothing again
    cfg_write(fd, 4, &0x4u16.to_le_bytes()).unwrap();
    // (its registers are off too: the DMA is tried once it is on again)
    assert_eq!(map_file(dmabuf, 0x50_0000), Err(libc::ENODEV));
    // on again: new imports work, the old area stays revoked
    enable_bus_master(fd);
    map_file(dmabuf, 0x50_0000).unwrap();
    assert_eq!(dma_copy(fd, 0x10_0000, 0x30_0000, 16, 0), 1);
    // SAFETY: writes into our own buffer.
    unsafe { std::ptr::write_bytes(src.addr() as *mut u8, 0xcd, 16) };
    assert_eq!(dma_copy(fd, 0x10_0000, 0x50_0000, 16, 0), 0);
    assert_eq!(bar_byte(4096), 0xcd);
    ctx.check_invariants().unwrap();

    // the last close revokes for good
    files::close(fd).unwrap();
    let fd = registry::open_cdev(508, true).unwrap();
    bind(fd, &ctx, &mut fds);
    enable_bus_master(fd);
    assert_eq!(map_file(dmabuf, 0x60_0000), Err(libc::ENODEV));
    files::close(dmabuf).unwrap();
    files::close(fd).unwrap();
}

/// `VFIO_DEVICE_IOEVENTFD`: a signalled eventfd makes the device take its
/// registered BAR write (seen in the model's registers); the kernel's
/// argument rules and errnos; removal; writes dropped while memory decode
/// is off; registrations end with the device's last close. (The write
/// happens on the watcher thread: the test waits for it, up to 10 s.)
#[test]
fn vfio_ioeventfd_writes_the_bar() {
    let (model, fd, ctx, mut fds) = bound(9);
    enable_bus_master(fd);
    let efd = eventfd();
    let reg = |offset: u64, flags: u32, data: u64, efd: i32, argsz: u32| {
        let mut e = VfioDeviceIoeventfd {
            argsz,
            flags,
            offset,
            data,
            fd: efd,
            reserved: 0,
        };
        ioctl_on(fd, VFIO_DEVICE_IOEVENTFD, &mut e, &Fds::default()).map(|_| ())
    };
    let e = efd.as_raw_fd();
    let r0 = region(0);
    assert_eq!(reg(r0 + 8, 8, 1, e, 27), Err(libc::EINVAL), "argsz");
    assert_eq!(reg(r0 + 8, 3, 1, e, 32), Err(libc::EINVAL), "two sizes");
    assert_eq!(
        reg(r0 + 8, 0x18, 1, e, 32),
        Err(libc::EINVAL),
        "unknown flag"
    );
    assert_eq!(reg(r0 + 8, 8, 1, -2, 32), Err(libc::EINVAL), "fd");
    assert_eq!(reg(region(6), 4, 1, e, 32), Err(libc::EINVAL), "the ROM");
    assert_eq!(reg(region(1), 4, 1, e, 32), Err(libc::EINVAL), "no BAR 1");
    assert_eq!(
        reg(r0 + 4095, 2, 1, e, 32),
        Err(libc::EINVAL),
        "past the end"
    );
    assert_eq!(
        reg(region(2) + 0x1008, 8, 1, e, 32),
        Err(libc::EINVAL),
        "MSI-X table"
    );
    assert_eq!(
        reg(r0 + 8, 8, 1, -1, 32),
        Err(libc::ENODEV),
        "nothing to remove"
    );
    assert_eq!(reg(r0 + 8, 8, 1, 1 << 20, 32), Err(libc::EBADF));
    let null = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(
        reg(r0 + 8, 8, 1, null.as_raw_fd(), 32),
        Err(libc::EINVAL),
        "not an eventfd"
    );

    let signal = || {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to our eventfd.
        assert_eq!(unsafe { libc::write(e, one.as_ptr().cast(), 8) }, 8);
    };
    let reg8 = || model.regs.lock()[1];
    let wait_for = |want: u64| {
        for _ in 0..1000 {
            if reg8() == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("register 0x08 is {:#x}, not {want:#x}", reg8());
    };
    reg(r0 + 8, 8, 0x1234_5678_9abc_def0, e, 32).unwrap();
    assert_eq!(
        reg(r0 + 8, 8, 0x1234_5678_9abc_def0, e, 32),
        Err(libc::EEXIST)
    );
    signal();
    wait_for(0x1234_5678_9abc_def0);
    // a second registration on the same eventfd: a 2-byte write
    reg(r0 + 8, 2, 0xbeef, e, 32).unwrap();
    model.regs.lock()[1] = 0;
    signal();
    // both fire, in the order they were registered (as the kernel's
    // wait-queue callbacks, one per registration)
    wait_for(0x1234_5678_9abc_beef);
    // removal; then a signal does nothing we can see
    reg(r0 + 8, 8, 0x1234_5678_9abc_def0, -1, 32).unwrap();
    reg(r0 + 8, 2, 0xbeef, -1, 32).unwrap();
    // memory decode off: the write is dropped
    reg(r0 + 8, 4, 0x77, e, 32).unwrap();
    model.regs.lock()[1] = 0;
    cfg_write(fd, 4, &0x4u16.to_le_bytes()).unwrap();
    signal();
    std::thread::sleep(std::time::Duration::from_millis(50));
    enable_bus_master(fd);
    // then on again: the next signal writes
    signal();
    wait_for(0x77);
    // the last close ends the registration: the same one is new again
    files::close(fd).unwrap();
    let fd = registry::open_cdev(509, true).unwrap();
    bind(fd, &ctx, &mut fds);
    let mut again = VfioDeviceIoeventfd {
        argsz: 32,
        flags: 4,
        offset: r0 + 8,
        data: 0x77,
        fd: e,
        reserved: 0,
    };
    ioctl_on(fd, VFIO_DEVICE_IOEVENTFD, &mut again, &Fds::default()).unwrap();
    files::close(fd).unwrap();
}
