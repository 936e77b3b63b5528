//! A VMM-style client of uiommufd's emulated `dma-engine`, written only
//! against rust-vmm's `vfio-ioctls` crate (unmodified, from crates.io), as
//! a VMM such as Cloud Hypervisor uses it: open the device (legacy
//! group + container, or the iommufd cdev), map memory for its DMA, ring
//! the device and check what it did.
//!
//! Run it under `uiommufd run --device dma-engine [--device dma-engine] --
//! uiommufd-vfio-ioctls-client [--iommufd] [--peer SYSFS_DIR] [SYSFS_DIR]`
//! (default `/sys/bus/pci/devices/0000:f0:00.0`).
//!
//! Checks, in order (register map: docs/devices/dma-engine.md):
//! 1. memory decoding on through the config region; identity registers
//!    through `region_read`, `SCRATCH` write/read-back;
//! 2. a buffer mapped with `vfio_dma_map`; a COPY (64 KiB) and a FILL
//!    descriptor in a ring inside it; the doorbell (`RING_TAIL`) rung with
//!    `region_write`; completion as an MSI-X interrupt on vector 0 (an
//!    eventfd given with `enable_msix`); the copied and filled bytes;
//! 3. a COPY from an unmapped IOVA: the descriptor fails with
//!    `NOT_PRESENT`, `ERROR_CODE`/`ERROR_ADDR` say where, the ERROR vector
//!    fires, and the ring goes on (a later COPY succeeds);
//! 4. INTx through an eventfd (`enable_irq`): it auto-masks after firing,
//!    an interrupt while masked is held until `unmask_irq`;
//! 5. DMA logging (`start_dma_logging`/`report_dma_logging`): exactly the
//!    pages a COPY and its status write-back touched, reported once;
//! 6. with `--peer SYSFS_DIR` (a second declared device): migration v2
//!    (`set_migration_state`, the data fds) from the device to the peer,
//!    whose registers then match and which processes the next descriptor of
//!    the same ring;
//! 7. `vfio_dma_unmap`, device reset, and orderly teardown.
//!
//! Prints each step; exits 1 with a reason at the first failed check.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iommufd_ioctls::IommuFd;
use vfio_ioctls::{DmaLoggingRange, VfioContainer, VfioDevice, VfioIommufd, VfioOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

// docs/devices/dma-engine.md, map version 1.0
const ID: u64 = 0x000;
const VERSION: u64 = 0x004;
const CAPS: u64 = 0x008;
const SCRATCH: u64 = 0x00c;
const CONTROL: u64 = 0x010;
const STATUS: u64 = 0x014;
const INT_CAUSE: u64 = 0x018;
const INT_ENABLE: u64 = 0x01c;
const ERROR_CODE: u64 = 0x020;
const ERROR_ADDR: u64 = 0x028;
const ERROR_COUNT: u64 = 0x030;
const RING_BASE: u64 = 0x040;
const RING_SIZE: u64 = 0x048;
const RING_HEAD: u64 = 0x04c;
const RING_TAIL: u64 = 0x050;
const COMPLETED: u64 = 0x058;

const CAUSE_COMPLETION: u32 = 1 << 0;
const CAUSE_ERROR: u32 = 1 << 1;
const STATUS_RING_HALTED: u32 = 1 << 2;
const STATUS_BUS_MASTER: u32 = 1 << 4;

const OP_COPY: u8 = 1;
const OP_FILL: u8 = 2;
const FLAG_INTERRUPT: u8 = 1;
const DESC_OK: u16 = 0x0001;
const ERR_NOT_PRESENT: u32 = 1;
const WHERE_COPY_SRC: u32 = 2;

// include/uapi/linux/vfio.h: migration flags and v2 device states
const VFIO_MIGRATION_STOP_COPY: u64 = 1;
const MIG_STOP: u32 = 1;
const MIG_RUNNING: u32 = 2;
const MIG_STOP_COPY: u32 = 3;
const MIG_RESUMING: u32 = 4;

const BAR0: u32 = 0;
const CONFIG: u32 = 7; // VFIO_PCI_CONFIG_REGION_INDEX
const INTX: u32 = 0; // VFIO_PCI_INTX_IRQ_INDEX
const MSIX: u32 = 2; // VFIO_PCI_MSIX_IRQ_INDEX

// The DMA buffer and its layout (offsets from IOVA_BASE).
const IOVA_BASE: u64 = 0x10_0000;
const BUF_SIZE: usize = 0x10_0000;
const RING_OFF: usize = 0;
const RING_ENTRIES: u32 = 16;
const SRC_OFF: usize = 0x1_0000;
const COPY_LEN: usize = 0x1_0000;
const DST_OFF: usize = 0x2_0000;
const FILL_OFF: usize = 0x4_0000;
const FILL_LEN: usize = 4099; // not a multiple of 8: the pattern's phase shows
const FILL_PATTERN: u64 = 0x0807_0605_0403_0201;
const SMALL_OFF: usize = 0x5_0000;
const UNMAPPED_IOVA: u64 = 0x4000_0000;

type Res<T> = std::result::Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Memory the device may DMA into at any time: only raw-pointer volatile
/// accesses, never references (see `VfioOps::vfio_dma_map`'s contract).
struct DmaBuf {
    ptr: *mut u8,
    len: usize,
}

impl DmaBuf {
    fn new(len: usize) -> Res<Self> {
        // SAFETY: an anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        ensure!(
            p != libc::MAP_FAILED,
            "mmap of {len} bytes: {}",
            std::io::Error::last_os_error()
        );
        Ok(DmaBuf { ptr: p.cast(), len })
    }

    fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds of the mapping (asserted); volatile, no reference made.
            unsafe { self.ptr.add(off + i).write_volatile(*b) };
        }
    }

    fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        (0..len)
            // SAFETY: in bounds of the mapping (asserted); volatile, no reference made.
            .map(|i| unsafe { self.ptr.add(off + i).read_volatile() })
            .collect()
    }

    fn read_u16(&self, off: usize) -> u16 {
        let b = self.read(off, 2);
        u16::from_le_bytes([b[0], b[1]])
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One 32-byte descriptor.
fn descriptor(opcode: u8, flags: u8, len: u32, src: u64, dst: u64, pattern: u64) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[0] = opcode;
    d[1] = flags;
    // status (bytes 2..4) = 0
    d[4..8].copy_from_slice(&len.to_le_bytes());
    d[8..16].copy_from_slice(&src.to_le_bytes());
    d[16..24].copy_from_slice(&dst.to_le_bytes());
    d[24..32].copy_from_slice(&pattern.to_le_bytes());
    d
}

/// The two ways vfio-ioctls reaches a device's IOMMU.
enum Backend {
    Container(Arc<VfioContainer>),
    Iommufd(Arc<VfioIommufd>),
}

impl Backend {
    fn ops(&self) -> Arc<dyn VfioOps> {
        match self {
            Backend::Container(c) => c.clone(),
            Backend::Iommufd(i) => i.clone(),
        }
    }

    /// # Safety
    /// As `VfioOps::vfio_dma_map`.
    unsafe fn map(&self, iova: u64, size: usize, ptr: *mut u8) -> vfio_ioctls::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe {
            match self {
                Backend::Container(c) => c.vfio_dma_map(iova, size, ptr),
                Backend::Iommufd(i) => i.vfio_dma_map(iova, size, ptr),
            }
        }
    }

    fn unmap(&self, iova: u64, size: usize) -> vfio_ioctls::Result<()> {
        match self {
            Backend::Container(c) => c.vfio_dma_unmap(iova, size),
            Backend::Iommufd(i) => i.vfio_dma_unmap(iova, size),
        }
    }
}

struct Dev {
    dev: VfioDevice,
}

impl Dev {
    fn rd32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.region_read(BAR0, &mut b, off);
        u32::from_le_bytes(b)
    }
    fn rd64(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.dev.region_read(BAR0, &mut b, off);
        u64::from_le_bytes(b)
    }
    fn wr32(&self, off: u64, v: u32) {
        self.dev.region_write(BAR0, &v.to_le_bytes(), off);
    }
    fn wr64(&self, off: u64, v: u64) {
        self.dev.region_write(BAR0, &v.to_le_bytes(), off);
    }
    fn config_command(&self) -> u16 {
        let mut b = [0u8; 2];
        self.dev.region_read(CONFIG, &mut b, 4);
        u16::from_le_bytes(b)
    }
    fn set_config_command(&self, v: u16) {
        self.dev.region_write(CONFIG, &v.to_le_bytes(), 4);
    }
    /// Put descriptor `desc` in ring slot `slot` of `buf`, move the tail
    /// past it and wait for its status.
    fn run(&self, buf: &DmaBuf, slot: usize, desc: &[u8; 32]) -> Res<u16> {
        buf.write(desc_off(slot), desc);
        self.wr32(RING_TAIL, slot as u32 + 1);
        wait_status(buf, desc_off(slot), Duration::from_secs(10))
    }
}

/// Wait until `efd` is signalled; its count.
fn wait_irq(efd: &EventFd, what: &str, timeout: Duration) -> Res<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        match efd.read() {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("reading the {what} eventfd: {e}")),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no {what} interrupt within {timeout:?}");
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(efd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32 + 1) };
    }
}

/// The offset of ring slot `i` (a 32-byte descriptor) in the DMA buffer.
fn desc_off(i: usize) -> usize {
    RING_OFF + i * 32
}

/// Poll a descriptor's status word until the device wrote it.
fn wait_status(buf: &DmaBuf, off: usize, timeout: Duration) -> Res<u16> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = buf.read_u16(off + 2);
        if s != 0 {
            return Ok(s);
        }
        ensure!(
            Instant::now() < deadline,
            "descriptor at +0x{off:x} has no status after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn run(iommufd: bool, sysfs: PathBuf, peer: Option<PathBuf>) -> Res<()> {
    let t0 = Instant::now();
    // 0. open: the way a VMM does it with vfio-ioctls
    let backend = if iommufd {
        let fd = IommuFd::new().map_err(|e| format!("IommuFd::new (/dev/iommu): {e}"))?;
        Backend::Iommufd(Arc::new(
            VfioIommufd::new(Arc::new(fd), None, None)
                .map_err(|e| format!("VfioIommufd::new: {e}"))?,
        ))
    } else {
        Backend::Container(Arc::new(
            VfioContainer::new(None).map_err(|e| format!("VfioContainer::new: {e}"))?,
        ))
    };
    let ops = backend.ops();
    let dev = VfioDevice::new(&sysfs, ops, iommufd)
        .map_err(|e| format!("VfioDevice::new({}): {e}", sysfs.display()))?;
    println!(
        "opened {} ({}): BAR0 {} bytes, config {} bytes, {} MSI-X vectors",
        sysfs.display(),
        if iommufd {
            "iommufd cdev"
        } else {
            "group + container"
        },
        dev.get_region_size(BAR0),
        dev.get_region_size(CONFIG),
        dev.get_irq_info(MSIX).map_or(0, |i| i.count)
    );
    ensure!(
        dev.get_region_size(BAR0) == 4096,
        "BAR0 region size {} (expected 4096)",
        dev.get_region_size(BAR0)
    );
    let d = Dev { dev };

    // 1. memory decoding on (as a guest's driver does; BAR accesses fail
    // with EIO before, as on Linux), bus mastering still off
    let cmd = d.config_command() | 0x2;
    d.set_config_command(cmd);
    ensure!(
        d.config_command() & 0x6 == 0x2,
        "config COMMAND reads 0x{:04x} after writing 0x{cmd:04x}",
        d.config_command()
    );
    // identity and a register round trip
    let (id, ver, caps) = (d.rd32(ID), d.rd32(VERSION), d.rd32(CAPS));
    ensure!(
        (id, ver, caps) == (0x444d_4145, 0x0001_0000, 0x0004_0007),
        "ID/VERSION/CAPS 0x{id:08x}/0x{ver:08x}/0x{caps:08x}, expected 0x444d4145/0x00010000/0x00040007"
    );
    d.wr32(SCRATCH, 0xa5a5_5a5a);
    ensure!(
        d.rd32(SCRATCH) == 0xa5a5_5a5a,
        "SCRATCH reads 0x{:08x} after writing 0xa5a55a5a",
        d.rd32(SCRATCH)
    );
    println!(
        "identity ok: ID 0x{id:08x} VERSION 0x{ver:08x} CAPS 0x{caps:08x}; SCRATCH round trip ok"
    );

    // 2. memory for DMA, the ring, interrupts, bus mastering
    let buf = DmaBuf::new(BUF_SIZE)?;
    let src: Vec<u8> = (0..COPY_LEN)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    buf.write(SRC_OFF, &src);
    buf.write(FILL_OFF + FILL_LEN, &[0xee; 8]); // guard after the fill
                                                // SAFETY: the buffer stays mapped until after vfio_dma_unmap below, and
                                                // is only accessed with volatile raw-pointer operations.
    let map = unsafe { backend.map(IOVA_BASE, BUF_SIZE, buf.ptr) };
    map.map_err(|e| format!("vfio_dma_map(0x{IOVA_BASE:x}, 0x{BUF_SIZE:x}): {e}"))?;
    println!("mapped {BUF_SIZE:#x} bytes at IOVA {IOVA_BASE:#x}");

    let vectors: Vec<EventFd> = (0..4)
        .map(|_| EventFd::new(EFD_NONBLOCK))
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("eventfd: {e}"))?;
    d.dev
        .enable_msix(vectors.iter().collect())
        .map_err(|e| format!("enable_msix (4 eventfds): {e}"))?;

    let cmd = d.config_command() | 0x4; // + bus master
    d.set_config_command(cmd);
    let status = d.rd32(STATUS);
    ensure!(
        status & STATUS_BUS_MASTER != 0,
        "STATUS 0x{status:x}: bus master not seen after config COMMAND 0x{cmd:04x}"
    );

    d.wr32(INT_ENABLE, CAUSE_COMPLETION | CAUSE_ERROR);
    d.wr64(RING_BASE, IOVA_BASE + RING_OFF as u64);
    d.wr32(RING_SIZE, RING_ENTRIES);
    d.wr32(CONTROL, 1);
    ensure!(
        d.rd64(RING_BASE) == IOVA_BASE && d.rd32(RING_SIZE) == RING_ENTRIES,
        "RING_BASE/SIZE read back 0x{:x}/{}",
        d.rd64(RING_BASE),
        d.rd32(RING_SIZE)
    );

    // COPY 64 KiB, then FILL with a completion interrupt; one doorbell.
    let iova = |off: usize| IOVA_BASE + off as u64;
    buf.write(
        desc_off(0),
        &descriptor(OP_COPY, 0, COPY_LEN as u32, iova(SRC_OFF), iova(DST_OFF), 0),
    );
    buf.write(
        desc_off(1),
        &descriptor(
            OP_FILL,
            FLAG_INTERRUPT,
            FILL_LEN as u32,
            0,
            iova(FILL_OFF),
            FILL_PATTERN,
        ),
    );
    let t_ring = Instant::now();
    d.wr32(RING_TAIL, 2);
    let n = wait_irq(
        &vectors[0],
        "COMPLETION (MSI-X vector 0)",
        Duration::from_secs(10),
    )?;
    let irq_latency = t_ring.elapsed();
    let (s0, s1) = (buf.read_u16(desc_off(0) + 2), buf.read_u16(desc_off(1) + 2));
    ensure!(
        (s0, s1) == (DESC_OK, DESC_OK),
        "descriptor status 0x{s0:04x}/0x{s1:04x}, expected 0x0001/0x0001 (ERROR_CODE 0x{:x} at 0x{:x})",
        d.rd32(ERROR_CODE),
        d.rd64(ERROR_ADDR)
    );
    ensure!(
        buf.read(DST_OFF, COPY_LEN) == src,
        "the COPY's destination differs from its source"
    );
    let fill = buf.read(FILL_OFF, FILL_LEN + 8);
    for (k, b) in fill[..FILL_LEN].iter().enumerate() {
        ensure!(
            *b == FILL_PATTERN.to_le_bytes()[k % 8],
            "FILL byte {k} is 0x{b:02x}, expected 0x{:02x}",
            FILL_PATTERN.to_le_bytes()[k % 8]
        );
    }
    ensure!(
        fill[FILL_LEN..] == [0xee; 8],
        "FILL wrote past its length: {:02x?}",
        &fill[FILL_LEN..]
    );
    let (head, done, cause) = (d.rd32(RING_HEAD), d.rd32(COMPLETED), d.rd32(INT_CAUSE));
    ensure!(
        head == 2 && done == 2 && cause & CAUSE_COMPLETION != 0 && cause & CAUSE_ERROR == 0,
        "after 2 descriptors: HEAD {head}, COMPLETED {done}, INT_CAUSE 0x{cause:x}"
    );
    println!(
        "COPY {COPY_LEN:#x} bytes + FILL {FILL_LEN} bytes ok; MSI-X vector 0 fired (count {n}) {:.2} ms after the doorbell",
        irq_latency.as_secs_f64() * 1e3
    );
    d.wr32(INT_CAUSE, CAUSE_COMPLETION); // RW1C
    ensure!(
        d.rd32(INT_CAUSE) & CAUSE_COMPLETION == 0,
        "INT_CAUSE.COMPLETION not cleared by writing 1"
    );

    // 3. DMA from an IOVA nobody mapped: a device error, not a crash.
    buf.write(
        desc_off(2),
        &descriptor(
            OP_COPY,
            FLAG_INTERRUPT,
            256,
            UNMAPPED_IOVA,
            iova(DST_OFF),
            0,
        ),
    );
    d.wr32(RING_TAIL, 3);
    wait_irq(
        &vectors[1],
        "ERROR (MSI-X vector 1)",
        Duration::from_secs(10),
    )?;
    let s2 = wait_status(&buf, desc_off(2), Duration::from_secs(5))?;
    let (code, addr, count) = (d.rd32(ERROR_CODE), d.rd64(ERROR_ADDR), d.rd32(ERROR_COUNT));
    ensure!(
        s2 == 0x8000 | ERR_NOT_PRESENT as u16,
        "faulting COPY's status 0x{s2:04x}, expected 0x8001"
    );
    ensure!(
        code == ERR_NOT_PRESENT | WHERE_COPY_SRC << 8 && addr == UNMAPPED_IOVA && count == 1,
        "ERROR_CODE 0x{code:x} ERROR_ADDR 0x{addr:x} ERROR_COUNT {count}, expected 0x{:x} 0x{UNMAPPED_IOVA:x} 1",
        ERR_NOT_PRESENT | WHERE_COPY_SRC << 8
    );
    let status = d.rd32(STATUS);
    ensure!(
        status & STATUS_RING_HALTED == 0,
        "a data fault halted the ring (STATUS 0x{status:x})"
    );
    println!("COPY from unmapped IOVA {UNMAPPED_IOVA:#x}: status 0x{s2:04x}, ERROR_CODE 0x{code:x}, MSI-X vector 1 fired");

    // The ring goes on after the error.
    buf.write(SMALL_OFF, b"after the fault");
    let s3 = d.run(
        &buf,
        3,
        &descriptor(OP_COPY, 0, 15, iova(SMALL_OFF), iova(SMALL_OFF + 0x100), 0),
    )?;
    ensure!(
        s3 == DESC_OK && buf.read(SMALL_OFF + 0x100, 15) == b"after the fault",
        "COPY after the fault: status 0x{s3:04x}"
    );
    ensure!(
        d.rd32(COMPLETED) == 4 && d.rd32(RING_HEAD) == 4,
        "COMPLETED {} HEAD {} after 4 descriptors",
        d.rd32(COMPLETED),
        d.rd32(RING_HEAD)
    );
    println!("ring continues after the fault: COPY ok, COMPLETED 4");

    // 4. INTx instead of MSI-X: auto-masked after it fires, the next one
    // held pending until ACTION_UNMASK (vfio-pci's semantics).
    d.dev
        .disable_msix()
        .map_err(|e| format!("disable_msix: {e}"))?;
    let intx = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
    d.dev
        .enable_irq(INTX, vec![&intx])
        .map_err(|e| format!("enable_irq(INTx): {e}"))?;
    let fill = |i: usize| descriptor(OP_FILL, FLAG_INTERRUPT, 64, 0, iova(FILL_OFF), i as u64);
    buf.write(desc_off(4), &fill(4));
    d.wr32(RING_TAIL, 5);
    wait_irq(&intx, "INTx", Duration::from_secs(10))?;
    let s5 = d.run(&buf, 5, &fill(5))?;
    ensure!(s5 == DESC_OK, "FILL under a masked INTx: status 0x{s5:04x}");
    std::thread::sleep(Duration::from_millis(50));
    ensure!(
        intx.read().is_err(),
        "INTx fired again before it was unmasked"
    );
    d.wr32(INT_CAUSE, CAUSE_COMPLETION);
    d.dev
        .unmask_irq(INTX)
        .map_err(|e| format!("unmask_irq(INTx): {e}"))?;
    wait_irq(
        &intx,
        "INTx held while masked, at unmask",
        Duration::from_secs(10),
    )?;
    d.dev
        .disable_irq(INTX)
        .map_err(|e| format!("disable_irq(INTx): {e}"))?;
    println!("INTx: fired, auto-masked, the next one delivered at unmask");

    // 5. dirty page logging (VFIO_DEVICE_FEATURE DMA_LOGGING_*): exactly
    // the pages the device wrote are reported, once.
    let page = 4096u64;
    let range = DmaLoggingRange {
        iova: IOVA_BASE,
        length: BUF_SIZE as u64,
    };
    let pg = d
        .dev
        .start_dma_logging(page, &[range])
        .map_err(|e| format!("start_dma_logging: {e}"))?;
    ensure!(pg == page, "DMA logging page size {pg}, asked {page}");
    let logged_dst = DST_OFF + 0x3000;
    let s6 = d.run(
        &buf,
        6,
        &descriptor(OP_COPY, 0, 0x2000, iova(SRC_OFF), iova(logged_dst), 0),
    )?;
    ensure!(s6 == DESC_OK, "COPY under DMA logging: status 0x{s6:04x}");
    let dirty = |bm: &[u64]| -> Vec<u64> {
        (0..BUF_SIZE as u64 / page)
            .filter(|p| bm[(p / 64) as usize] >> (p % 64) & 1 == 1)
            .collect()
    };
    let report = |what: &str| {
        d.dev
            .report_dma_logging(range, page)
            .map(|bm| dirty(&bm))
            .map_err(|e| format!("report_dma_logging ({what}): {e}"))
    };
    let got = report("first")?;
    // the descriptor's status (ring page) and the COPY's two destination pages
    let want = vec![
        (RING_OFF as u64) / page,
        logged_dst as u64 / page,
        logged_dst as u64 / page + 1,
    ];
    ensure!(
        got == want,
        "DMA logging reported pages {got:x?} (offsets from the IOVA base, in pages), expected {want:x?}"
    );
    let again = report("second")?;
    ensure!(
        again.is_empty(),
        "a second report without DMA still has pages {again:x?}"
    );
    d.dev
        .stop_dma_logging()
        .map_err(|e| format!("stop_dma_logging: {e}"))?;
    println!("DMA logging: exactly the 3 pages written reported ({got:x?}), then none");

    // 6. migration v2 to a second device of the same process: dev0 stops,
    // its state goes through the data fds, the peer resumes it and goes on
    // with the ring where dev0 left it.
    if let Some(peer) = peer {
        let mig = d
            .dev
            .query_migration_support()
            .map_err(|e| format!("query_migration_support: {e}"))?;
        ensure!(
            mig.is_some_and(|f| f & VFIO_MIGRATION_STOP_COPY != 0),
            "migration flags {mig:x?}: no STOP_COPY"
        );
        d.wr32(SCRATCH, 0x5ca7_c4ed);
        let regs = [
            SCRATCH, INT_ENABLE, RING_SIZE, RING_HEAD, RING_TAIL, COMPLETED, CONTROL,
        ];
        let set = |dev: &VfioDevice, st: u32, what: &str| {
            dev.set_migration_state(st)
                .map_err(|e| format!("set_migration_state({what}): {e}"))
        };
        set(&d.dev, MIG_STOP, "source STOP")?;
        let before: Vec<u32> = regs.iter().map(|&r| d.rd32(r)).collect();
        set(&d.dev, MIG_STOP_COPY, "source STOP_COPY")?;
        let data = d
            .dev
            .read_migration_data_to_end()
            .map_err(|e| format!("read_migration_data_to_end: {e}"))?;
        ensure!(!data.is_empty(), "the source device saved no state");
        set(&d.dev, MIG_STOP, "source STOP after STOP_COPY")?;

        let p = Dev {
            dev: VfioDevice::new(&peer, backend.ops(), iommufd)
                .map_err(|e| format!("VfioDevice::new({}): {e}", peer.display()))?,
        };
        p.set_config_command(p.config_command() | 0x6);
        set(&p.dev, MIG_STOP, "peer STOP")?;
        set(&p.dev, MIG_RESUMING, "peer RESUMING")?;
        p.dev
            .write_migration_data(&data)
            .map_err(|e| format!("write_migration_data ({} bytes): {e}", data.len()))?;
        set(&p.dev, MIG_STOP, "peer STOP after RESUMING")?;
        set(&p.dev, MIG_RUNNING, "peer RUNNING")?;
        let after: Vec<u32> = regs.iter().map(|&r| p.rd32(r)).collect();
        ensure!(
            after == before && p.rd64(RING_BASE) == d.rd64(RING_BASE),
            "peer registers after resuming {after:x?}, source's {before:x?} (SCRATCH INT_ENABLE RING_SIZE HEAD TAIL COMPLETED CONTROL)"
        );
        // The peer processes the next descriptor of the same ring.
        buf.write(SMALL_OFF + 0x200, b"migrated ring");
        let copy = descriptor(
            OP_COPY,
            0,
            13,
            iova(SMALL_OFF + 0x200),
            iova(SMALL_OFF + 0x300),
            0,
        );
        let s7 = p.run(&buf, 7, &copy)?;
        ensure!(
            s7 == DESC_OK && buf.read(SMALL_OFF + 0x300, 13) == b"migrated ring",
            "COPY on the resumed peer: status 0x{s7:04x}"
        );
        ensure!(
            p.rd32(COMPLETED) == before[5] + 1 && d.rd32(COMPLETED) == before[5],
            "COMPLETED: peer {} source {} (was {})",
            p.rd32(COMPLETED),
            d.rd32(COMPLETED),
            before[5]
        );
        p.wr32(CONTROL, 0);
        drop(p);
        set(&d.dev, MIG_RUNNING, "source back to RUNNING")?;
        println!(
            "migration v2: {} bytes of state from {} to {}; the peer resumed the ring (COMPLETED {})",
            data.len(),
            sysfs.display(),
            peer.display(),
            before[5] + 1
        );
    }

    // 7. teardown
    d.wr32(CONTROL, 0);
    backend
        .unmap(IOVA_BASE, BUF_SIZE)
        .map_err(|e| format!("vfio_dma_unmap: {e}"))?;
    d.dev.reset();
    ensure!(
        d.rd32(COMPLETED) == 0 && d.rd32(SCRATCH) == 0 && d.rd32(RING_SIZE) == 0,
        "registers not back to reset values after VFIO_DEVICE_RESET (COMPLETED {}, SCRATCH 0x{:x})",
        d.rd32(COMPLETED),
        d.rd32(SCRATCH)
    );
    drop(d);
    drop(buf);
    println!(
        "unmapped, reset, closed; {:.0} ms in all",
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// vfio-ioctls reports failed region accesses only through `log`: print them.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("vfio-ioctls {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() {
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let mut iommufd = false;
    let mut sysfs = PathBuf::from("/sys/bus/pci/devices/0000:f0:00.0");
    let mut peer = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iommufd" => iommufd = true,
            "--peer" => peer = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!(
                    "usage: uiommufd-vfio-ioctls-client [--iommufd] [--peer SYSFS_DIR] [SYSFS_DIR]"
                );
                return;
            }
            _ => sysfs = PathBuf::from(a),
        }
    }
    let mode = if iommufd { "iommufd" } else { "container" };
    match run(iommufd, sysfs, peer) {
        Ok(()) => println!("PASS vfio-ioctls {mode}"),
        Err(e) => {
            println!("FAIL vfio-ioctls {mode}: {e}");
            std::process::exit(1);
        }
    }
}
