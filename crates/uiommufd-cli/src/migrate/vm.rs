//! One side's machine: guest memory, an iommufd (or VFIO container)
//! context, and a `dma-engine` reached through the VFIO uAPI exactly as a
//! VMM reaches it — a cdev bound to an iommufd with a HWPT, or a group in a
//! type1 container — with the dirty tracker the migration uses.
//!
//! Everything goes through the real ABI bytes (`ioctl` arguments built
//! from the uAPI layouts, handed to the engine's dispatcher and to the
//! engine files of the device and group), in this process, with no
//! `LD_PRELOAD`.

use std::sync::Arc;

use uiommufd::dispatch;
use uiommufd::plumbing::files::{self, EngineFile, FdResolver};
use uiommufd::uapi;
use uiommufd::uapi::vfio as t1;
use uiommufd::user::SelfMemory;
use uiommufd::vfio::migration::feature as mf;
use uiommufd::vfio::migration::MigState;
use uiommufd::vfio::registry;
use uiommufd::vfio::uapi as vu;
use uiommufd::Context;
use zerocopy::IntoBytes;

/// Page size of guest memory and of every dirty bitmap.
pub const PAGE: u64 = 4096;

/// Which dirty tracker reports the pages the device wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tracker {
    /// iommufd: a HWPT allocated with dirty tracking (the software IOMMU's D bits).
    Hwpt,
    /// A VFIO type1 container's `VFIO_IOMMU_DIRTY_PAGES`.
    Type1,
    /// The device's own DMA logging (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`).
    DmaLogging,
}

impl Tracker {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Tracker::Hwpt => "hwpt",
            Tracker::Type1 => "type1",
            Tracker::DmaLogging => "dma-logging",
        }
    }
}

/// Guest memory's alignment: that of a transparent huge page.
const GUEST_ALIGN: u64 = 2 << 20;

/// The alignment guest memory must not have: the emulated IOMMU's largest
/// page.
const GUEST_AVOID: u64 = 1 << 30;

/// Where guest memory starts in a reservation at `base` that has
/// `2 * GUEST_ALIGN` bytes to spare: the first 2 MiB boundary, or the next
/// one when that is a 1 GiB boundary.
///
/// The engine's VT-d model used to map an IOVA range with the largest page
/// its virtual address allowed, 1 GiB included (the kernel maps by
/// physical contiguity, which anonymous memory has at most for a 2 MiB
/// huge page): guest memory that `mmap` happened to place on a 1 GiB
/// boundary was one 1 GiB IOPTE whose dirty bit stood for all of memory,
/// and the migration never converged. The engine now caps domain pages at
/// the PMD size (`IoPagetable::max_pgsize`); this placement stays as a
/// second guard, and 2 MiB alignment lets THPs back guest memory.
fn guest_start(base: u64) -> u64 {
    let start = base.next_multiple_of(GUEST_ALIGN);
    if start.is_multiple_of(GUEST_AVOID) {
        start + GUEST_ALIGN
    } else {
        start
    }
}

/// Map `size` bytes of guest memory at [`guest_start`] of a larger
/// reservation, the rest of which is given back.
fn map_guest(size: u64) -> R<*mut u8> {
    let span = size + 2 * GUEST_ALIGN;
    let base = uiommufd_testkit::map_anon(span as usize, libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .map_err(|e| format!("mmap of {size} bytes of guest memory: {e}"))?;
    let b = base as u64;
    let start = guest_start(b);
    let (head, tail) = (start - b, b + span - (start + size));
    // SAFETY: the parts of our own reservation before and after guest memory.
    unsafe {
        if head > 0 {
            libc::munmap(base, head as usize);
        }
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail as usize);
        }
    }
    Ok(start as *mut u8)
}

/// The fd number the context answers to in ioctl arguments (there is no
/// real iommufd fd in this process: the resolver stands for the fd table).
const CTX_FD: i32 = 1 << 30;

struct Fds(Arc<Context>);

impl FdResolver for Fds {
    fn context(&self, fd: i32) -> Option<Arc<Context>> {
        (fd == CTX_FD).then(|| self.0.clone())
    }
}

type R<T> = Result<T, String>;

fn err(what: &str, e: uiommufd::Error) -> String {
    format!("{what}: {e}")
}

/// `cmd` on engine file `f` with `arg` (an address in this process), fds
/// resolved by `fds`; `what` names the call in the error.
fn file_ioctl(f: &dyn EngineFile, cmd: u32, arg: u64, fds: &Fds, what: &str) -> R<i64> {
    f.ioctl(cmd, arg, &SelfMemory, fds)
        .map_err(|e| err(what, e))
}

/// One side's machine.
pub struct Vm {
    /// Guest memory.
    pub mem: *mut u8,
    /// Its size.
    pub size: u64,
    ctx: Arc<Context>,
    fds: Fds,
    dev_fd: i32,
    dev: Arc<dyn EngineFile>,
    group_fd: Option<i32>,
    hwpt: u32,
    /// The tracker set up.
    pub tracker: Tracker,
}

// SAFETY: `mem` is an anonymous mapping owned by the Vm, only unmapped in
// Drop; every access goes through raw pointers or the kernel.
unsafe impl Send for Vm {}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("size", &self.size)
            .field("tracker", &self.tracker)
            .finish()
    }
}

fn iommufd<T: IntoBytes + zerocopy::FromBytes>(
    ctx: &Arc<Context>,
    cmd: u32,
    arg: &mut T,
    what: &str,
) -> R<()> {
    dispatch::ioctl(ctx, u64::from(cmd), arg.as_mut_bytes().as_mut_ptr() as u64)
        .map(|_| ())
        .map_err(|e| err(what, e))
}

impl Vm {
    /// Guest memory of `size` bytes (its pages touched, `fill` writing a
    /// per-page pattern so that memory is not all zero), and a device
    /// declared from `spec` attached to it through `tracker`'s way in.
    pub fn new(size: u64, tracker: Tracker, spec: &str, fill: bool) -> R<Vm> {
        if size == 0 || !size.is_multiple_of(PAGE) {
            return Err(format!(
                "guest memory size {size} is not a positive multiple of 4 KiB"
            ));
        }
        let mem = map_guest(size)?;
        if fill {
            for p in 0..size / PAGE {
                // SAFETY: inside the mapping just made.
                unsafe {
                    mem.add((p * PAGE) as usize)
                        .cast::<u64>()
                        .write(p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
                };
            }
        }
        let decl = registry::declare(spec).map_err(|e| err("declaring the device", e))?;
        let mut vm = match tracker {
            Tracker::Type1 => Self::via_container(mem, size, &decl)?,
            _ => Self::via_cdev(mem, size, &decl, tracker == Tracker::Hwpt)?,
        };
        vm.tracker = tracker;
        vm.config_write16(4, 0x0006)?; // COMMAND: memory decode + bus master
        Ok(vm)
    }

    fn via_cdev(mem: *mut u8, size: u64, decl: &registry::DeviceDecl, dirty: bool) -> R<Vm> {
        let ctx = Context::new();
        let dev_fd =
            registry::open_cdev(decl.cdev, true).map_err(|e| err("opening the cdev", e))?;
        let dev = files::get(dev_fd).ok_or("the device fd vanished")?;
        let fds = Fds(ctx.clone());
        let mut bind = vu::VfioDeviceBindIommufd {
            argsz: 16,
            flags: 0,
            iommufd: CTX_FD,
            out_devid: 0,
        };
        let bind_arg = bind.as_mut_bytes().as_mut_ptr() as u64;
        file_ioctl(
            &*dev,
            vu::VFIO_DEVICE_BIND_IOMMUFD,
            bind_arg,
            &fds,
            "VFIO_DEVICE_BIND_IOMMUFD",
        )?;
        let mut alloc = uapi::IommuIoasAlloc {
            size: 12,
            ..Default::default()
        };
        iommufd(&ctx, uapi::IOMMU_IOAS_ALLOC, &mut alloc, "IOMMU_IOAS_ALLOC")?;
        let ioas = alloc.out_ioas_id;
        let mut map = uapi::IommuIoasMap {
            size: std::mem::size_of::<uapi::IommuIoasMap>() as u32,
            flags: uapi::IOMMU_IOAS_MAP_FIXED_IOVA
                | uapi::IOMMU_IOAS_MAP_READABLE
                | uapi::IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            user_va: mem as u64,
            length: size,
            iova: 0,
            ..Default::default()
        };
        iommufd(
            &ctx,
            uapi::IOMMU_IOAS_MAP,
            &mut map,
            "IOMMU_IOAS_MAP of guest memory",
        )?;
        let mut hw = uapi::IommuHwptAlloc {
            size: std::mem::size_of::<uapi::IommuHwptAlloc>() as u32,
            flags: if dirty {
                uapi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING
            } else {
                0
            },
            dev_id: bind.out_devid,
            pt_id: ioas,
            ..Default::default()
        };
        iommufd(&ctx, uapi::IOMMU_HWPT_ALLOC, &mut hw, "IOMMU_HWPT_ALLOC")?;
        let mut at = vu::VfioDeviceAttachIommufdPt {
            argsz: 12,
            flags: 0,
            pt_id: hw.out_hwpt_id,
        };
        let at_arg = at.as_mut_bytes().as_mut_ptr() as u64;
        file_ioctl(
            &*dev,
            vu::VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            at_arg,
            &fds,
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        )?;
        Ok(Vm {
            mem,
            size,
            ctx,
            fds,
            dev_fd,
            dev,
            group_fd: None,
            hwpt: hw.out_hwpt_id,
            tracker: Tracker::Hwpt,
        })
    }

    fn via_container(mem: *mut u8, size: u64, decl: &registry::DeviceDecl) -> R<Vm> {
        let ctx = Context::new_vfio_container().map_err(|e| err("creating the container", e))?;
        let fds = Fds(ctx.clone());
        let gfd =
            registry::open_group(decl.group, true).map_err(|e| err("opening the group", e))?;
        let group = files::get(gfd).ok_or("the group fd vanished")?;
        let mut cfd = CTX_FD;
        let cfd_arg = (&mut cfd as *mut i32) as u64;
        file_ioctl(
            &*group,
            vu::VFIO_GROUP_SET_CONTAINER,
            cfd_arg,
            &fds,
            "VFIO_GROUP_SET_CONTAINER",
        )?;
        dispatch::ioctl(&ctx, u64::from(t1::VFIO_SET_IOMMU), t1::VFIO_TYPE1V2_IOMMU)
            .map_err(|e| err("VFIO_SET_IOMMU", e))?;
        let mut map = t1::VfioIommuType1DmaMap {
            argsz: std::mem::size_of::<t1::VfioIommuType1DmaMap>() as u32,
            flags: t1::VFIO_DMA_MAP_FLAG_READ | t1::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: mem as u64,
            iova: 0,
            size,
        };
        iommufd(&ctx, t1::VFIO_IOMMU_MAP_DMA, &mut map, "VFIO_IOMMU_MAP_DMA")?;
        let name = std::ffi::CString::new(decl.addr.clone()).map_err(|e| e.to_string())?;
        let fd = file_ioctl(
            &*group,
            vu::VFIO_GROUP_GET_DEVICE_FD,
            name.as_ptr() as u64,
            &fds,
            "VFIO_GROUP_GET_DEVICE_FD",
        )? as i32;
        let dev = files::get(fd).ok_or("the device fd vanished")?;
        Ok(Vm {
            mem,
            size,
            ctx,
            fds,
            dev_fd: fd,
            dev,
            group_fd: Some(gfd),
            hwpt: 0,
            tracker: Tracker::Type1,
        })
    }

    fn dev_ioctl(&self, cmd: u32, arg: &mut [u8], what: &str) -> R<i64> {
        file_ioctl(&*self.dev, cmd, arg.as_mut_ptr() as u64, &self.fds, what)
    }

    /// A `VFIO_DEVICE_FEATURE` call: header + `data`.
    ///
    /// The argument is built on the stack where it fits: this is the call
    /// that stops the device (in the downtime) and reads the DMA log (in
    /// the bitmap's time), and a heap allocation there costs the
    /// allocator's cold paths.
    fn feature(&self, flags: u32, data: &mut [u8], what: &str) -> R<()> {
        let mut stack = [0u8; 64];
        let mut heap = Vec::new();
        let buf: &mut [u8] = match stack.get_mut(..8 + data.len()) {
            Some(b) => b,
            None => {
                heap.resize(8 + data.len(), 0);
                &mut heap
            }
        };
        let n = buf.len() as u32;
        buf[0..4].copy_from_slice(&n.to_le_bytes());
        buf[4..8].copy_from_slice(&flags.to_le_bytes());
        buf[8..].copy_from_slice(data);
        self.dev_ioctl(vu::VFIO_DEVICE_FEATURE, buf, what)?;
        data.copy_from_slice(&buf[8..]);
        Ok(())
    }

    fn config_write16(&self, off: u64, v: u16) -> R<()> {
        let at = (u64::from(vu::VFIO_PCI_CONFIG_REGION_INDEX) << vu::VFIO_PCI_OFFSET_SHIFT) | off;
        self.dev
            .write_at(&v.to_le_bytes(), at)
            .map(|_| ())
            .map_err(|e| err("config write", e))
    }

    /// Read a 64-bit BAR0 register.
    pub fn bar0_read64(&self, off: u64) -> R<u64> {
        let mut b = [0u8; 8];
        self.dev
            .read_at(&mut b, off, false)
            .map_err(|e| err("BAR0 read", e))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Turn the tracker on.
    pub fn start_tracking(&self) -> R<()> {
        match self.tracker {
            Tracker::Hwpt => {
                let mut s = uapi::IommuHwptSetDirtyTracking {
                    size: 16,
                    flags: uapi::IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
                    hwpt_id: self.hwpt,
                    __reserved: 0,
                };
                iommufd(
                    &self.ctx,
                    uapi::IOMMU_HWPT_SET_DIRTY_TRACKING,
                    &mut s,
                    "IOMMU_HWPT_SET_DIRTY_TRACKING",
                )
            }
            Tracker::Type1 => {
                let mut d = t1::VfioIommuType1DirtyBitmap {
                    argsz: 8,
                    flags: t1::VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
                };
                iommufd(
                    &self.ctx,
                    t1::VFIO_IOMMU_DIRTY_PAGES,
                    &mut d,
                    "VFIO_IOMMU_DIRTY_PAGES START",
                )
            }
            Tracker::DmaLogging => {
                let range = [0u64.to_le_bytes(), self.size.to_le_bytes()].concat();
                let mut c = [0u8; 24];
                c[0..8].copy_from_slice(&PAGE.to_le_bytes());
                c[8..12].copy_from_slice(&1u32.to_le_bytes());
                c[16..24].copy_from_slice(&(range.as_ptr() as u64).to_le_bytes());
                self.feature(
                    mf::FEATURE_SET | mf::DMA_LOGGING_START,
                    &mut c,
                    "DMA_LOGGING_START",
                )
            }
        }
    }

    /// Read and clear the pages written since the last call, setting their
    /// bits in `words` (one bit per page of guest memory).
    ///
    /// `words` must be zero: iommufd's and DMA logging's trackers only set
    /// bits (type1 writes whole words over its mappings, zero included), so
    /// the caller keeps its bitmap zero between reads by clearing the words
    /// it consumed (`source.rs`), and a read costs what is dirty rather
    /// than a zeroing of the whole bitmap (32 KiB per GiB, cold after a
    /// round: 2-4 µs of the 15-30 µs a read took in the 1 GiB main job).
    pub fn sync_dirty(&self, words: &mut [u64]) -> R<()> {
        debug_assert!(
            words.iter().all(|&w| w == 0),
            "sync_dirty wants a zeroed bitmap"
        );
        let data = words.as_mut_ptr() as u64;
        match self.tracker {
            Tracker::Hwpt => {
                let mut g = uapi::IommuHwptGetDirtyBitmap {
                    size: std::mem::size_of::<uapi::IommuHwptGetDirtyBitmap>() as u32,
                    hwpt_id: self.hwpt,
                    flags: 0,
                    __reserved: 0,
                    iova: 0,
                    length: self.size,
                    page_size: PAGE,
                    data,
                };
                iommufd(
                    &self.ctx,
                    uapi::IOMMU_HWPT_GET_DIRTY_BITMAP,
                    &mut g,
                    "IOMMU_HWPT_GET_DIRTY_BITMAP",
                )
            }
            Tracker::Type1 => {
                let mut b = [0u8; 8 + 40];
                let n = b.len() as u32;
                b[0..4].copy_from_slice(&n.to_le_bytes());
                b[4..8].copy_from_slice(&t1::VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP.to_le_bytes());
                b[8..16].copy_from_slice(&0u64.to_le_bytes());
                b[16..24].copy_from_slice(&self.size.to_le_bytes());
                b[24..32].copy_from_slice(&PAGE.to_le_bytes());
                b[32..40].copy_from_slice(&((words.len() * 8) as u64).to_le_bytes());
                b[40..48].copy_from_slice(&data.to_le_bytes());
                dispatch::ioctl(
                    &self.ctx,
                    u64::from(t1::VFIO_IOMMU_DIRTY_PAGES),
                    b.as_mut_ptr() as u64,
                )
                .map(|_| ())
                .map_err(|e| err("VFIO_IOMMU_DIRTY_PAGES GET_BITMAP", e))
            }
            Tracker::DmaLogging => {
                let mut r = [0u8; 32];
                r[8..16].copy_from_slice(&self.size.to_le_bytes());
                r[16..24].copy_from_slice(&PAGE.to_le_bytes());
                r[24..32].copy_from_slice(&data.to_le_bytes());
                self.feature(
                    mf::FEATURE_GET | mf::DMA_LOGGING_REPORT,
                    &mut r,
                    "DMA_LOGGING_REPORT",
                )
            }
        }
    }

    /// Move the device to migration state `s`; the data fd when the arc
    /// opens one.
    pub fn mig_set(&self, s: MigState) -> R<Option<i32>> {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&(s as u32).to_le_bytes());
        self.feature(
            mf::FEATURE_SET | mf::MIG_DEVICE_STATE,
            &mut b,
            "MIG_DEVICE_STATE",
        )?;
        let fd = i32::from_le_bytes(b[4..8].try_into().unwrap());
        Ok((fd >= 0).then_some(fd))
    }

    /// Start a pre-copy session (RUNNING → PRE_COPY): the data fd, from
    /// which [`Vm::read_data`] takes the device's pre-copy snapshot now and,
    /// after [`Vm::stop_copy`], its final state — so that nothing has to be
    /// created while the device is stopped.
    pub fn start_precopy(&self) -> R<i32> {
        self.mig_set(MigState::PreCopy)?
            .ok_or_else(|| "PRE_COPY opened no data fd".to_string())
    }

    /// Stop the device (PRE_COPY → PRE_COPY_P2P → STOP_COPY): its final
    /// state follows on the pre-copy data fd.
    pub fn stop_copy(&self) -> R<()> {
        match self.mig_set(MigState::StopCopy)? {
            None => Ok(()),
            Some(fd) => {
                let _ = files::close(fd);
                Err("STOP_COPY from PRE_COPY opened a second data fd".into())
            }
        }
    }

    /// Read what the data fd `fd` has now: to its temporary end in
    /// pre-copy (`ENOMSG`), to its end after the stop.
    pub fn read_data(&self, fd: i32) -> R<Vec<u8>> {
        let mut out = Vec::new();
        self.read_data_into(fd, &mut out, &mut vec![0u8; 1 << 16])?;
        Ok(out)
    }

    /// [`Vm::read_data`] appending to `out` through `buf`, both made by
    /// the caller: with room made beforehand, no allocation (the stop path
    /// reads the device's final state this way, with the device stopped).
    pub fn read_data_into(&self, fd: i32, out: &mut Vec<u8>, buf: &mut [u8]) -> R<()> {
        loop {
            match files::read(fd, buf) {
                Some(Ok(0)) => return Ok(()),
                Some(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Some(Err(e)) if e.errno().0 == libc::ENOMSG => return Ok(()),
                Some(Err(e)) => return Err(err("reading the device's migration data", e)),
                None => return Err("the data fd vanished".to_string()),
            }
        }
    }

    /// Start resuming (→ RESUMING): the data fd the device's migration
    /// data is written to, in any pieces, as it arrives.
    pub fn start_resume(&self) -> R<i32> {
        self.mig_set(MigState::Resuming)?
            .ok_or_else(|| "RESUMING opened no data fd".to_string())
    }

    /// Write `data` to the resuming data fd.
    pub fn write_data(&self, fd: i32, data: &[u8]) -> R<()> {
        let mut done = 0;
        while done < data.len() {
            match files::write(fd, &data[done..]) {
                Some(Ok(n)) => done += n,
                Some(Err(e)) => return Err(err("writing the device state", e)),
                None => return Err("the data fd vanished".to_string()),
            }
        }
        Ok(())
    }

    /// Leave RESUMING: the device checks and applies the state, and runs.
    pub fn finish_resume(&self) -> R<()> {
        self.mig_set(MigState::Running).map(|_| ())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = files::close(self.dev_fd);
        if let Some(g) = self.group_fd {
            let _ = files::close(g);
        }
        self.ctx.destroy_all();
        // SAFETY: our own mapping, no longer used by the device (closed above).
        unsafe { libc::munmap(self.mem.cast(), self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_memory_is_huge_page_aligned_but_never_on_a_gigabyte() {
        const M2: u64 = 2 << 20;
        const G1: u64 = 1 << 30;
        for base in [G1 - 4096, G1, G1 + 4096, 5 * G1 - M2 + 1, 0x7f12_3456_7000] {
            let s = guest_start(base);
            assert!(s >= base && s < base + 2 * M2, "{base:#x} -> {s:#x}");
            assert!(
                s.is_multiple_of(M2) && !s.is_multiple_of(G1),
                "{base:#x} -> {s:#x}"
            );
        }
        let size = 8 * M2;
        let p = map_guest(size).unwrap() as u64;
        assert!(p.is_multiple_of(M2) && !p.is_multiple_of(G1));
        // SAFETY: the mapping just made, unused.
        unsafe { libc::munmap(p as *mut libc::c_void, size as usize) };
    }
}
