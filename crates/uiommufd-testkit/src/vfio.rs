//! Helpers for tests of emulated VFIO devices through their engine fds:
//! an fd table for the `FdResolver` argument, ioctls on engine files with
//! real ABI bytes, and a device model whose DMA the test drives itself.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use uiommufd::plumbing::files::{self, EngineFile, FdResolver};
use uiommufd::user::SelfMemory;
use uiommufd::vfio::model::{Bus, PciLayout, PciModel};
use uiommufd::Context;
use zerocopy::{FromBytes, IntoBytes};

use crate::Ioctl;

/// The fd numbers an ioctl argument may name (an iommufd or a container
/// given to `VFIO_DEVICE_BIND_IOMMUFD` or `VFIO_GROUP_SET_CONTAINER`), as
/// the preload's fd table would answer them.
#[derive(Debug, Default)]
pub struct Fds(pub HashMap<i32, Arc<Context>>);

impl FdResolver for Fds {
    fn context(&self, fd: i32) -> Option<Arc<Context>> {
        self.0.get(&fd).cloned()
    }
}

/// A device or group fd with the fd table its ioctls resolve fds in: the
/// [`Ioctl`] target that lets the generic helpers (`errno`, `errno_table`)
/// run on it.
#[derive(Debug, Clone, Copy)]
pub struct OnFd<'a>(pub i32, pub &'a Fds);

impl Ioctl for OnFd<'_> {
    fn ioc<T: IntoBytes + FromBytes + ?Sized>(&self, cmd: u32, arg: &mut T) -> Result<i32, i32> {
        ioctl_on(self.0, cmd, arg, self.1).map(|v| v as i32)
    }
}

/// The engine file of `fd` (panics when it is none).
pub fn file(fd: i32) -> Arc<dyn EngineFile> {
    files::get(fd).expect("an engine fd")
}

/// `ioctl(fd, cmd, arg)` on an engine fd, with `arg`'s bytes as the
/// argument: the errno on failure.
pub fn ioctl_on<T: IntoBytes + FromBytes + ?Sized>(
    fd: i32,
    cmd: u32,
    arg: &mut T,
    fds: &Fds,
) -> Result<i64, i32> {
    file(fd)
        .ioctl(
            cmd,
            arg.as_mut_bytes().as_mut_ptr() as u64,
            &SelfMemory,
            fds,
        )
        .map_err(|e| e.errno().0)
}

/// `VFIO_DEVICE_BIND_IOMMUFD` of device fd `fd` to `ctx` (the iommufd
/// argument is an fd number the resolver maps to `ctx`, as the preload's
/// table would; the binding holds the context, not the number): the
/// device ID.
pub fn bind_cdev(fd: i32, ctx: &Arc<Context>) -> u32 {
    use uiommufd::vfio::uapi::{VfioDeviceBindIommufd, VFIO_DEVICE_BIND_IOMMUFD};
    let stand_in = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut fds = Fds::default();
    fds.0.insert(stand_in.as_raw_fd(), ctx.clone());
    let mut b = VfioDeviceBindIommufd {
        argsz: 16,
        flags: 0,
        iommufd: stand_in.as_raw_fd(),
        out_devid: 0,
    };
    ioctl_on(fd, VFIO_DEVICE_BIND_IOMMUFD, &mut b, &fds).expect("VFIO_DEVICE_BIND_IOMMUFD");
    b.out_devid
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` of device fd `fd` to `pt_id`: the HWPT
/// it attached to, or the errno.
pub fn attach_pt(fd: i32, pt_id: u32) -> Result<u32, i32> {
    use uiommufd::vfio::uapi::{VfioDeviceAttachIommufdPt, VFIO_DEVICE_ATTACH_IOMMUFD_PT};
    let mut a = VfioDeviceAttachIommufdPt {
        argsz: 12,
        flags: 0,
        pt_id,
    };
    ioctl_on(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a, &Fds::default())?;
    Ok(a.pt_id)
}

/// `VFIO_IOMMU_MAP_DMA` on type1 container (or compat) context `c`: map
/// `size` bytes at `va` read/write at `iova`.
pub fn map_dma<C: Ioctl + ?Sized>(c: &C, va: u64, size: u64, iova: u64) -> Result<i32, i32> {
    use uiommufd::uapi::vfio::{
        VfioIommuType1DmaMap, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_IOMMU_MAP_DMA,
    };
    let mut m = VfioIommuType1DmaMap {
        argsz: 32,
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr: va,
        iova,
        size,
    };
    c.ioc(VFIO_IOMMU_MAP_DMA, &mut m)
}

/// The device-fd file offset where region `index` starts, as vfio-pci lays
/// the regions out (`VFIO_PCI_INDEX_TO_OFFSET`: the index above bit 40).
pub fn region(index: u32) -> u64 {
    u64::from(index) << 40
}

/// `N` bytes at `off` of device fd `fd`'s BAR `bar`.
pub fn bar_read<const N: usize>(fd: i32, bar: u32, off: u64) -> [u8; N] {
    let mut b = [0u8; N];
    file(fd)
        .read_at(&mut b, region(bar) + off, false)
        .expect("BAR read");
    b
}

/// Write `data` at `off` of device fd `fd`'s BAR `bar`.
pub fn bar_write(fd: i32, bar: u32, off: u64, data: &[u8]) {
    file(fd)
        .write_at(data, region(bar) + off)
        .expect("BAR write");
}

/// The little-endian 32-bit register at `off` of device fd `fd`'s BAR `bar`.
pub fn bar_read32(fd: i32, bar: u32, off: u64) -> u32 {
    u32::from_le_bytes(bar_read(fd, bar, off))
}

/// The little-endian 64-bit register at `off` of device fd `fd`'s BAR `bar`.
pub fn bar_read64(fd: i32, bar: u32, off: u64) -> u64 {
    u64::from_le_bytes(bar_read(fd, bar, off))
}

/// Write `v` to the little-endian 32-bit register at `off` of device fd
/// `fd`'s BAR `bar`.
pub fn bar_write32(fd: i32, bar: u32, off: u64, v: u32) {
    bar_write(fd, bar, off, &v.to_le_bytes());
}

/// Write `v` to the little-endian 64-bit register at `off` of device fd
/// `fd`'s BAR `bar`.
pub fn bar_write64(fd: i32, bar: u32, off: u64, v: u64) {
    bar_write(fd, bar, off, &v.to_le_bytes());
}

/// Turn on memory decode and bus mastering in device fd `fd`'s config
/// space (region 7, `COMMAND`).
pub fn enable_bus_master(fd: i32) {
    file(fd)
        .write_at(&0x6u16.to_le_bytes(), region(7) + 4)
        .expect("config write");
}

/// A nonblocking, close-on-exec eventfd for an IRQ trigger.
pub fn eventfd() -> OwnedFd {
    // SAFETY: plain eventfd creation.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: we own the new fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Eventfd `fd`'s counter, consumed (0 when it had not fired).
pub fn fired(fd: &OwnedFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        v
    } else {
        0
    }
}

/// `VFIO_DEVICE_SET_IRQS` on device fd `fd`: eventfds `efds` (`-1` to
/// unset one) as the triggers of vectors `start..` of IRQ index `index`.
pub fn set_irq_fds(fd: i32, index: u32, start: u32, efds: &[i32]) -> Result<i64, i32> {
    use uiommufd::vfio::uapi::{
        VFIO_DEVICE_SET_IRQS, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    };
    let mut b = Vec::new();
    b.extend_from_slice(&(20 + 4 * efds.len() as u32).to_ne_bytes());
    b.extend_from_slice(&(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER).to_ne_bytes());
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&start.to_ne_bytes());
    b.extend_from_slice(&(efds.len() as u32).to_ne_bytes());
    for e in efds {
        b.extend_from_slice(&e.to_ne_bytes());
    }
    ioctl_on(fd, VFIO_DEVICE_SET_IRQS, &mut b[..], &Fds::default())
}

/// A PCI function with no behaviour of its own: its BARs read as zero and
/// ignore writes, and it keeps the bus it is connected to so that the test
/// can issue the function's DMA (tagged, atomic, faulting) directly.
#[derive(Debug)]
pub struct BusOnly {
    kind: &'static str,
    layout: PciLayout,
    bus: Mutex<Option<Arc<dyn Bus>>>,
}

impl BusOnly {
    /// A function of model name `kind` (the name `declare_model` specs
    /// use) declaring `layout`.
    pub fn new(kind: &'static str, layout: PciLayout) -> Arc<BusOnly> {
        Arc::new(BusOnly {
            kind,
            layout,
            bus: Mutex::new(None),
        })
    }

    /// The bus the function is connected to (panics while it is none:
    /// before binding or after unbinding).
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.lock().unwrap().clone().expect("connected")
    }
}

impl PciModel for BusOnly {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn layout(&self) -> PciLayout {
        self.layout.clone()
    }
    fn bar_read(&self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&self, _bar: u8, _offset: u64, _data: &[u8]) {}
    fn connect(&self, bus: Option<Arc<dyn Bus>>) {
        *self.bus.lock().unwrap() = bus;
    }
    fn reset(&self) {}
}
