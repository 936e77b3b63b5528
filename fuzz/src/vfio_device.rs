//! The `vfio_device` harness: random ioctls, region accesses, mmaps,
//! interrupts and DMA on an emulated VFIO device's fds.
//!
//! # Input format
//!
//! Until the input runs out (at most [`MAX_STEPS`]), a selector byte picks
//! a step and the following bytes its arguments: an ioctl on the device or
//! group fd (a VFIO number with a fuzzed struct: `argsz` mostly right,
//! sometimes short or anything; `SET_IRQS` with eventfd data naming the
//! harness's own eventfd, -1, or any number; the pointer into the
//! harness's buffer, or an address that is never mapped), `pread`/`pwrite`
//! at a fuzzed region index and offset, `mmap`, a model interrupt or DMA,
//! an IOAS map, closing and reopening the device through its cdev or its
//! group.
//!
//! # Findings (panics)
//!
//! Any panic (the device fd's handlers run without a catch here); after
//! every step `ctx.check_invariants()` must pass; at the end, with every fd
//! closed, the device must be closed (its model disconnected, no engine
//! device left in the context) and the group openable again.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};

use uiommufd::plumbing::files::{self, FdResolver};
use uiommufd::plumbing::io_pagetable::Prot;
use uiommufd::user::SelfMemory;
use uiommufd::vfio::device_fd::DeviceFile;
use uiommufd::vfio::group::GroupFile;
use uiommufd::vfio::model::{Bar, Bus, MsixLayout, PciIds, PciLayout, PciModel};
use uiommufd::vfio::registry;
use uiommufd::vfio::uapi::*;
use uiommufd::Context;

use super::input::Input;

/// Steps per input at most.
pub const MAX_STEPS: usize = 64;

/// The group and cdev number of the harness's device.
const NUM: u32 = 917;

/// A small device: BAR0 registers (0x0 source IOVA, 0x8 destination, 0x10
/// length, 0x18 doorbell: copy by DMA and raise the vector written), MSI-X
/// table and PBA in BAR0 too, MSI, INTx.
#[derive(Debug, Default)]
struct FuzzModel {
    regs: Mutex<[u64; 4]>,
    bus: Mutex<Option<Arc<dyn Bus>>>,
}

impl FuzzModel {
    fn bus(&self) -> Option<Arc<dyn Bus>> {
        self.bus.lock().unwrap().clone()
    }
}

impl PciModel for FuzzModel {
    fn kind(&self) -> &'static str {
        "fuzz"
    }

    fn layout(&self) -> PciLayout {
        // trapped BARs: a 32-bit one and a 64-bit one
        let bar64 = Bar {
            mem64: true,
            ..Bar::registers(1 << 32)
        };
        PciLayout {
            ids: PciIds::new(0x1b36, 0x7ff0, 0xff0000),
            bars: [
                Some(Bar::registers(8192)),
                None,
                Some(bar64),
                None,
                None,
                None,
            ],
            intx_pin: 1,
            msi_vectors: 4,
            msix: Some(MsixLayout {
                vectors: 16,
                table_bar: 0,
                table_offset: 0x1000,
                pba_bar: 0,
                pba_offset: 0x1800,
            }),
            pasid_log2: 0,
        }
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) {
        assert!(
            matches!(data.len(), 1 | 2 | 4 | 8),
            "piece of {} bytes",
            data.len()
        );
        assert_eq!(offset % data.len() as u64, 0, "unaligned piece");
        assert!(bar == 0 || bar == 2, "access to BAR {bar}");
        if bar == 0 {
            assert!(
                !(0x1000..0x1000 + 16 * 16).contains(&offset)
                    && !(0x1800..0x1800 + 8).contains(&offset),
                "MSI-X table/PBA access reached the model"
            );
        }
        let v = if bar == 0 && offset < 32 {
            self.regs.lock().unwrap()[(offset / 8) as usize]
        } else {
            0
        };
        let at = (offset & 7) as usize;
        data.copy_from_slice(&v.to_le_bytes()[at..at + data.len()]);
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
        assert!(matches!(data.len(), 1 | 2 | 4 | 8));
        if bar != 0 || offset >= 32 {
            return;
        }
        let mut r = self.regs.lock().unwrap();
        let i = (offset / 8) as usize;
        let mut b = r[i].to_le_bytes();
        let at = (offset & 7) as usize;
        b[at..at + data.len()].copy_from_slice(data);
        r[i] = u64::from_le_bytes(b);
        if i == 3 {
            let (src, dst, len, vector) = (r[0], r[1], (r[2] & 0xfff) as usize, r[3] as u16);
            drop(r);
            if let Some(bus) = self.bus() {
                let mut buf = vec![0u8; len];
                if bus.dma_read(src, &mut buf).is_ok() {
                    let _ = bus.dma_write(dst, &buf);
                }
                bus.interrupt(vector);
            }
        }
    }

    fn connect(&self, bus: Option<Arc<dyn Bus>>) {
        *self.bus.lock().unwrap() = bus;
    }

    fn reset(&self) {
        *self.regs.lock().unwrap() = [0; 4];
    }
}

fn model() -> &'static Arc<FuzzModel> {
    static M: OnceLock<Arc<FuzzModel>> = OnceLock::new();
    M.get_or_init(|| {
        let m = Arc::new(FuzzModel::default());
        registry::declare_model(
            &format!("fuzz,addr=0000:fd:1f.0,group={NUM},cdev={NUM}"),
            m.clone(),
        )
        .expect("declare the fuzz device");
        m
    })
}

#[derive(Default)]
struct Fds(HashMap<i32, Arc<Context>>);

impl FdResolver for Fds {
    fn context(&self, fd: i32) -> Option<Arc<Context>> {
        self.0.get(&fd).cloned()
    }
}

const DEVICE_IOCTLS: [u32; 14] = [
    VFIO_DEVICE_GET_INFO,
    VFIO_DEVICE_GET_REGION_INFO,
    VFIO_DEVICE_GET_IRQ_INFO,
    VFIO_DEVICE_SET_IRQS,
    VFIO_DEVICE_SET_IRQS,
    VFIO_DEVICE_SET_IRQS,
    VFIO_DEVICE_RESET,
    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
    VFIO_DEVICE_PCI_HOT_RESET,
    VFIO_DEVICE_FEATURE,
    VFIO_DEVICE_BIND_IOMMUFD,
    VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    VFIO_DEVICE_DETACH_IOMMUFD_PT,
    VFIO_DEVICE_IOEVENTFD,
];

const GROUP_IOCTLS: [u32; 4] = [
    VFIO_GROUP_GET_STATUS,
    VFIO_GROUP_SET_CONTAINER,
    VFIO_GROUP_UNSET_CONTAINER,
    VFIO_GROUP_GET_DEVICE_FD,
];

/// The run's state.
struct Run {
    ctx: Arc<Context>,
    fds: Fds,
    /// The number the resolver maps to `ctx` (an open `/dev/null`).
    ctx_fd: std::fs::File,
    eventfd: i32,
    dev: Option<i32>,
    group: Option<i32>,
    extra: Vec<i32>,
    /// The argument buffer: every user pointer points into it (or nowhere).
    buf: Vec<u8>,
    /// Memory for IOAS maps.
    mem: Vec<u8>,
    ioas: u32,
}

impl Run {
    /// Build `cmd`'s argument in the buffer and return the pointer: into
    /// the buffer (at a fuzzed 4-byte aligned offset) or, now and then,
    /// an address that is never mapped. The struct gets an `argsz`, a few
    /// fuzzed bytes, zeros, and per command the fields that matter; a
    /// terminated name (the device's address, most of the time) for
    /// GET_DEVICE_FD.
    fn arg(&mut self, inp: &mut Input<'_>, cmd: u32) -> u64 {
        let sel = inp.below(16);
        let off = inp.below(16) * 4;
        let good = match cmd {
            VFIO_DEVICE_GET_INFO => 24,
            VFIO_DEVICE_GET_REGION_INFO => 32 + 8 * (inp.u8() as u32 % 2),
            VFIO_DEVICE_GET_IRQ_INFO => 16,
            VFIO_DEVICE_SET_IRQS => 20,
            VFIO_DEVICE_BIND_IOMMUFD => 16,
            VFIO_DEVICE_ATTACH_IOMMUFD_PT | VFIO_DEVICE_GET_PCI_HOT_RESET_INFO => 12,
            _ => 8,
        };
        let argsz: u32 = match inp.below(8) {
            0 => good - 1,
            1 => inp.u32() % 300,
            2 => inp.u32(),
            _ => good,
        };
        let n = 256;
        self.buf.fill(0);
        let head = &mut self.buf[off..off + n];
        let fuzzed = inp.below(24);
        inp.fill(&mut head[4..4 + fuzzed]);
        head[..4].copy_from_slice(&argsz.to_ne_bytes());
        if cmd == VFIO_DEVICE_GET_REGION_INFO || cmd == VFIO_DEVICE_GET_IRQ_INFO {
            // a plausible index most of the time
            let i = inp.below(11) as u32;
            head[8..12].copy_from_slice(&i.to_ne_bytes());
        }
        match cmd {
            VFIO_DEVICE_SET_IRQS => {
                let count = if inp.below(2) == 0 {
                    inp.below(3)
                } else {
                    inp.below(20)
                } as u32;
                let flags = match inp.below(4) {
                    0 => inp.u32(),
                    _ => (1 << inp.below(3)) | (8 << inp.below(3)),
                };
                head[4..8].copy_from_slice(&flags.to_ne_bytes());
                head[8..12].copy_from_slice(&(inp.below(6) as u32).to_ne_bytes());
                let start = if inp.below(2) == 0 {
                    0
                } else {
                    inp.below(18) as u32
                };
                head[12..16].copy_from_slice(&start.to_ne_bytes());
                head[16..20].copy_from_slice(&count.to_ne_bytes());
                if argsz == good {
                    let sz: u32 = 20 + 4 * count;
                    head[..4].copy_from_slice(&sz.to_ne_bytes());
                }
                for i in 0..count as usize {
                    let fd = match inp.below(4) {
                        0 => -1,
                        1 => inp.u8() as i32,
                        _ => self.eventfd,
                    };
                    head[20 + 4 * i..24 + 4 * i].copy_from_slice(&fd.to_ne_bytes());
                }
                // bools: bytes as they are
            }
            // a known feature with GET/SET/PROBE most of the time; the
            // BAR dma-buf export with plausible ranges (6.19)
            VFIO_DEVICE_FEATURE if inp.below(4) != 0 => {
                const FEATURES: [u32; 8] = [1, 2, 6, 7, 8, 9, 11, 12];
                let feature = FEATURES[inp.below(FEATURES.len())];
                let flags = feature | (1 << (16 + inp.below(3)));
                head[4..8].copy_from_slice(&flags.to_ne_bytes());
                if feature == 11 {
                    let region = if inp.below(4) != 0 {
                        2
                    } else {
                        inp.below(8) as u32
                    };
                    head[8..12].copy_from_slice(&region.to_ne_bytes());
                    head[12..16].copy_from_slice(&(libc::O_CLOEXEC as u32).to_ne_bytes());
                    head[16..20].fill(0);
                    let nr = match inp.below(8) {
                        0 => inp.u32(),
                        n => (n as u32).min(4),
                    };
                    head[20..24].copy_from_slice(&nr.to_ne_bytes());
                    for i in 0..nr.min(8) as usize {
                        let (o, l) = if inp.below(4) != 0 {
                            (inp.below(3) as u64 * 4096, (1 + inp.below(2)) as u64 * 4096)
                        } else {
                            (inp.u64(), inp.u64())
                        };
                        head[24 + 16 * i..32 + 16 * i].copy_from_slice(&o.to_ne_bytes());
                        head[32 + 16 * i..40 + 16 * i].copy_from_slice(&l.to_ne_bytes());
                    }
                    if argsz == good {
                        let sz = 24 + 16 * nr.min(8);
                        head[..4].copy_from_slice(&sz.to_ne_bytes());
                    }
                }
            }
            // mostly well-formed: flags 0 (or the VF-token flag with a
            // 24-byte struct, 6.17) and the context's fd or the IOAS
            VFIO_DEVICE_BIND_IOMMUFD if inp.below(4) != 0 => {
                head[4..8].fill(0);
                head[8..12].copy_from_slice(&self.ctx_fd.as_raw_fd().to_ne_bytes());
                if inp.below(4) == 0 {
                    head[..4].copy_from_slice(&24u32.to_ne_bytes());
                    head[4..8].copy_from_slice(&1u32.to_ne_bytes());
                    let uuid = self.buf.as_ptr() as u64 + (off + n - 16) as u64;
                    let head = &mut self.buf[off..off + n];
                    head[16..24].copy_from_slice(&uuid.to_ne_bytes());
                }
            }
            // the RID, or a PASID with the 16-byte struct (6.15)
            VFIO_DEVICE_ATTACH_IOMMUFD_PT if inp.below(4) != 0 => {
                head[4..8].fill(0);
                if inp.below(4) == 0 {
                    head[..4].copy_from_slice(&16u32.to_ne_bytes());
                    head[4..8].copy_from_slice(&1u32.to_ne_bytes());
                    head[12..16].copy_from_slice(&(inp.below(4) as u32).to_ne_bytes());
                }
                let id = if inp.below(2) == 0 {
                    self.ioas
                } else {
                    inp.u8() as u32
                };
                head[8..12].copy_from_slice(&id.to_ne_bytes());
            }
            VFIO_GROUP_SET_CONTAINER if inp.below(4) != 0 => {
                head[..4].copy_from_slice(&self.ctx_fd.as_raw_fd().to_ne_bytes());
            }
            VFIO_GROUP_GET_DEVICE_FD => {
                if inp.below(4) != 0 {
                    let name = b"0000:fd:1f.0\0";
                    head[..name.len()].copy_from_slice(name);
                } else {
                    head[n - 1] = 0;
                }
            }
            _ => {}
        }
        match sel {
            0 => 8, // never mapped
            1 => u64::MAX - 3,
            _ => self.buf.as_mut_ptr() as u64 + off as u64,
        }
    }

    fn ioctl(&mut self, fd: i32, cmd: u32, arg: u64) {
        let Some(f) = files::get(fd) else { return };
        let r = f.ioctl(cmd, arg, &SelfMemory, &self.fds);
        if cmd == VFIO_GROUP_GET_DEVICE_FD {
            if let Ok(new) = r {
                self.extra.push(new as i32);
            }
        }
        // a migration data fd (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
        if cmd == VFIO_DEVICE_FEATURE {
            if let Ok(new) = r.as_ref().map(|&v| v as i32) {
                if new > 0 && files::get(new).is_some() {
                    files::close(new).unwrap();
                }
            }
        }
    }

    fn region(&mut self, inp: &mut Input<'_>, write: bool) {
        let Some(fd) = self.pick_dev(inp) else { return };
        let Some(f) = files::get(fd) else { return };
        let index = inp.below(11) as u64;
        let off = match inp.below(4) {
            0 => inp.u64() & ((1 << 40) - 1),
            1 => inp.u16() as u64,
            _ => inp.u8() as u64 * 4,
        };
        let len = inp.below(80);
        let at = (index << 40) | off;
        let mut b = inp.bytes(len);
        if write {
            if let Ok(n) = f.write_at(&b, at) {
                assert!(n <= len, "wrote {n} of {len}");
            }
        } else if let Ok(n) = f.read_at(&mut b, at, false) {
            assert!(n <= len, "read {n} of {len}");
        }
    }

    fn pick_dev(&mut self, inp: &mut Input<'_>) -> Option<i32> {
        if !self.extra.is_empty() && inp.below(3) == 0 {
            let i = inp.below(self.extra.len());
            return Some(self.extra[i]);
        }
        self.dev
    }

    /// Start from an unbound cdev file (0), a bound one (1), one attached
    /// to the IOAS with a page mapped and bus mastering on (2), or a
    /// group's device file on the context (3).
    fn setup(&mut self, mode: u8) {
        let va = (self.mem.as_ptr() as u64).next_multiple_of(4096);
        match mode {
            1 | 2 => {
                let Some(fd) = self.dev else { return };
                let f: Arc<DeviceFile> = files::get_as(fd).expect("a device file");
                f.bind_context(&self.ctx).expect("bind");
                if mode == 2 {
                    f.attach(self.ioas).expect("attach");
                    let i = self.ctx.ioas(self.ioas).expect("IOAS");
                    i.map_user(va, 4096, Some(0), Prot::RW).expect("map");
                    f.device().config_write(4, &[0x6, 0]);
                }
            }
            3 => {
                let Ok(g) = registry::open_group(NUM, true) else {
                    return;
                };
                self.group = Some(g);
                let gf: Arc<GroupFile> = files::get_as(g).expect("a group file");
                gf.set_container(self.ctx.clone()).expect("container");
                let fd = gf.get_device_fd("0000:fd:1f.0").expect("device fd");
                self.extra.push(fd);
                let f: Arc<DeviceFile> = files::get_as(fd).expect("a device file");
                f.device().config_write(4, &[0x6, 0]);
            }
            _ => {}
        }
    }

    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.below(12) {
            0..=3 => {
                let Some(fd) = self.pick_dev(inp) else { return };
                let cmd = if inp.below(16) == 0 {
                    (b';' as u32) << 8 | inp.u8() as u32
                } else {
                    DEVICE_IOCTLS[inp.below(DEVICE_IOCTLS.len())]
                };
                let arg = self.arg(inp, cmd);
                self.ioctl(fd, cmd, arg);
            }
            4 => {
                let Some(g) = self.group else { return };
                let cmd = GROUP_IOCTLS[inp.below(GROUP_IOCTLS.len())];
                let arg = self.arg(inp, cmd);
                self.ioctl(g, cmd, arg);
            }
            5 => self.region(inp, false),
            6 => self.region(inp, true),
            7 => {
                let Some(fd) = self.pick_dev(inp) else { return };
                if let Some(f) = files::get(fd) {
                    let off = ((inp.below(10) as u64) << 40) | (inp.u16() as u64) << 12;
                    let _ = f.mmap(off, (inp.below(4) as u64) << 12, true);
                }
            }
            8 => {
                let m = model();
                let v = inp.u16() % 24;
                if let Some(b) = m.bus() {
                    b.interrupt(v);
                    let iova = (inp.below(8) as u64) << 12;
                    let mut x = [0u8; 16];
                    let _ = b.dma_read(iova, &mut x);
                    let _ = b.dma_write(iova + 8, &x);
                }
            }
            9 => {
                let iova = (inp.below(8) as u64) << 12;
                let va = (self.mem.as_ptr() as u64).next_multiple_of(4096);
                if let Ok(i) = self.ctx.ioas(self.ioas) {
                    if inp.below(2) == 0 {
                        let _ = i.map_user(va, 4096, Some(iova), Prot::RW);
                    } else {
                        let _ = i.unmap(iova, 4096);
                    }
                }
            }
            10 => {
                // close and reopen the cdev file, or the group
                if inp.below(2) == 0 {
                    if let Some(fd) = self.dev.take() {
                        files::close(fd).unwrap();
                    }
                    self.dev = registry::open_cdev(NUM, true).ok();
                } else {
                    if let Some(g) = self.group.take() {
                        files::close(g).unwrap();
                    }
                    self.group = registry::open_group(NUM, true).ok();
                }
            }
            _ => {
                if let Some(fd) = self.extra.pop() {
                    files::close(fd).unwrap();
                }
            }
        }
    }
}

/// Run one input.
pub fn run(data: &[u8]) {
    let m = model().clone();
    let mut inp = Input::new(data);
    let ctx = Context::new();
    let ioas = ctx.ioas_alloc().expect("IOAS");
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut fds = Fds::default();
    fds.0.insert(null.as_raw_fd(), ctx.clone());
    // SAFETY: plain eventfd creation.
    let eventfd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(eventfd >= 0);
    let mut run = Run {
        ctx: ctx.clone(),
        fds,
        ctx_fd: null,
        eventfd,
        dev: registry::open_cdev(NUM, true).ok(),
        group: None,
        extra: Vec::new(),
        buf: vec![0u8; 4096 + 512],
        mem: vec![0u8; 2 * 4096],
        ioas,
    };
    run.setup(inp.u8() % 4);
    for _ in 0..MAX_STEPS {
        if inp.is_empty() {
            break;
        }
        run.step(&mut inp);
        ctx.check_invariants().unwrap();
    }
    for fd in run
        .extra
        .drain(..)
        .chain(run.dev.take())
        .chain(run.group.take())
    {
        files::close(fd).unwrap();
    }
    assert!(
        m.bus().is_none(),
        "the device is still open with every fd closed"
    );
    assert!(
        !ctx.objects()
            .iter()
            .any(|(_, o)| o.is::<uiommufd::device::Device>()),
        "an engine device outlived its device fds"
    );
    let g = registry::open_group(NUM, true).expect("the group opens again");
    files::close(g).unwrap();
    // SAFETY: closing our own eventfd.
    unsafe { libc::close(eventfd) };
    drop(run);
}
