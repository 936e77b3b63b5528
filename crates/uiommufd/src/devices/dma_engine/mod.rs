//! `dma-engine`: the reference emulated PCI device (register map and
//! behaviour: `docs/devices/dma-engine.md`).
//!
//! A register file behind one lock ([`regs`]), and one worker thread per
//! connected device that does everything touching the bus: fetches and
//! executes descriptors ([`ring`]), writes traffic records ([`traffic`])
//! and sends interrupts, each as one *job* taken under the lock and run
//! outside it with the device marked busy. Stopping, reset, bus-master off
//! and disconnect wait for the job in flight, so when they return nothing
//! of the old state reaches the bus.
//!
//! The worker runs inside the host program (e.g. QEMU with the preload):
//! it is named `dmae-N`, blocks every asynchronous signal (the program's
//! process-directed signals go to the program's threads) but not the
//! synchronous ones fault-safe copies rely on, and catches panics (the
//! device then stops doing DMA until it is reset or reconnected). After
//! `fork` the child's copy has no worker: it serves MMIO but does no DMA,
//! and disconnecting it does not wait for the parent's thread.
//!
//! Callers must not hold a lock the [`Bus`]'s DMA or interrupt path takes
//! while calling [`PciModel::reset`], [`PciModel::set_running`],
//! [`PciModel::set_bus_master`] or [`PciModel::connect`]: they wait for
//! the worker's job in flight, which may be waiting for that lock.

pub mod regs;
pub mod ring;
pub mod state;
pub mod traffic;

#[cfg(test)]
mod tests;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

use self::regs::*;
use self::traffic::{Clock, RECORD_SIZE};
use crate::vfio::model::{Bar, Bus, MsixLayout, PciIds, PciLayout, PciModel};
use crate::{bail, Result};

/// The model's name.
pub const KIND: &str = "dma-engine";
/// PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1de5;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x0001;
/// Revision ID.
pub const REVISION: u8 = 0x01;
/// Class code: system peripheral, other.
pub const CLASS: u32 = 0x08_8000;
/// Size of BAR0 (registers) and BAR2 (MSI-X).
pub const BAR_SIZE: u64 = 4096;
/// Offset of the MSI-X PBA in BAR2.
pub const PBA_OFFSET: u32 = 0x800;

/// Records written per traffic job at most when the rate is 0.
const BURST: u64 = 64;

/// The device's parameters (`dma-engine,key=value,...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params {
    /// Power-on values of the traffic registers.
    pub power_on: PowerOn,
}

fn parse_num(key: &str, v: &str) -> Result<u64> {
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse::<u64>(),
    };
    r.map_err(|_| {
        crate::err!(
            EINVAL,
            "dma-engine parameter {key}={v:?} is not a decimal or 0x-hex number"
        )
    })
}

impl Params {
    /// Parse `key=value` parameters: `traffic_iova`, `traffic_size`,
    /// `rate`, `traffic`. `EINVAL` naming the key for anything else or a
    /// bad value.
    pub fn parse(params: &[(String, String)]) -> Result<Params> {
        let mut iova = None;
        let mut size = None;
        let mut rate = DEFAULT_RATE;
        let mut on = None;
        for (k, v) in params {
            match k.as_str() {
                "traffic_iova" => {
                    let x = parse_num(k, v)?;
                    if !x.is_multiple_of(RECORD_SIZE) {
                        bail!(EINVAL, "dma-engine traffic_iova={v} is not 64-byte aligned");
                    }
                    iova = Some(x);
                }
                "traffic_size" => {
                    let x = parse_num(k, v)?;
                    if x == 0 || !x.is_multiple_of(RECORD_SIZE) || x > 1 << 40 {
                        bail!(
                            EINVAL,
                            "dma-engine traffic_size={v} is not a nonzero multiple of 64 up to 1 TiB"
                        );
                    }
                    size = Some(x);
                }
                "rate" => {
                    let x = parse_num(k, v)?;
                    rate = u32::try_from(x).map_err(|_| {
                        crate::err!(EINVAL, "dma-engine rate={v} is above 4294967295 records/s")
                    })?;
                }
                "traffic" => {
                    on = Some(match v.as_str() {
                        "on" | "1" | "true" | "yes" => true,
                        "off" | "0" | "false" | "no" => false,
                        _ => bail!(EINVAL, "dma-engine traffic={v:?} is not on or off"),
                    })
                }
                _ => bail!(
                    EINVAL,
                    "dma-engine has no parameter {k:?} (it takes traffic_iova, traffic_size, rate, traffic)"
                ),
            }
        }
        let on = on.unwrap_or(iova.is_some());
        if on && iova.is_none() {
            bail!(EINVAL, "dma-engine traffic=on needs traffic_iova");
        }
        let size = size.unwrap_or(if iova.is_some() { 4096 } else { 0 });
        if iova.unwrap_or(0).checked_add(size).is_none() {
            bail!(
                EINVAL,
                "dma-engine traffic window passes the end of the IOVA space"
            );
        }
        Ok(Params {
            power_on: PowerOn {
                traffic_base: iova.unwrap_or(0),
                traffic_size: size,
                traffic_rate: rate,
                traffic_on: on,
            },
        })
    }
}

/// Everything behind the device lock.
#[derive(Debug)]
struct Shared {
    regs: Regs,
    bus: Option<Arc<dyn Bus>>,
    bus_master: bool,
    running: bool,
    /// Callers (reset, load) that want no job to start.
    holds: u32,
    /// A job is in flight.
    busy: bool,
    /// The worker is asked to exit.
    stop: bool,
    /// The worker died of a panic.
    dead: bool,
    /// Cause bits whose interrupt is raised but not sent.
    pending_irq: u32,
    /// Traffic pacing (`None`: restart at the next record).
    clock: Option<Clock>,
    /// Take traffic before the ring next time both have work.
    traffic_first: bool,
    /// Bumped by every change of the traffic registers: a traffic job
    /// stops between two records when it changed.
    traffic_gen: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Inner {
    st: Mutex<Shared>,
    cv: Condvar,
    params: Params,
    instance: u32,
}

/// One job of the worker, run outside the lock.
enum Job {
    Irq(Arc<dyn Bus>, u32),
    Desc {
        bus: Arc<dyn Bus>,
        index: u32,
        at: u64,
    },
    Records {
        bus: Arc<dyn Bus>,
        seq: u64,
        count: u64,
        base: u64,
        size: u64,
        gen: (Arc<AtomicU64>, u64),
    },
}

impl Shared {
    /// An event of cause `bit`: set it, and queue its interrupt if enabled.
    fn raise(&mut self, bit: u32) {
        self.regs.int_cause |= bit;
        if self.regs.int_enable & bit != 0 {
            self.pending_irq |= bit;
        }
    }

    fn error(&mut self, e: DevError) {
        tracing::warn!(
            code = format_args!("{:#x}", e.code),
            addr = format_args!("{:#x}", e.addr),
            "dma-engine: device error"
        );
        self.regs.record_error(e);
        self.raise(INT_ERROR);
    }

    fn may_start(&self) -> bool {
        self.bus.is_some() && self.running && self.holds == 0 && !self.stop && !self.dead
    }

    /// The next job, or how long to wait for one (`None`: until woken).
    fn next_job(&mut self, now: Instant) -> std::result::Result<Job, Option<Instant>> {
        if !self.may_start() {
            return Err(None);
        }
        let bus = self.bus.clone().ok_or(None)?;
        if self.pending_irq != 0 {
            let m = std::mem::take(&mut self.pending_irq);
            return Ok(Job::Irq(bus, m));
        }
        if !self.bus_master {
            return Err(None);
        }
        let r = &self.regs;
        let mut ring =
            r.control & CONTROL_RING_ENABLE != 0 && !r.ring_halted && r.ring_head != r.ring_tail;
        if ring && (r.ring_size == 0 || r.ring_head >= r.ring_size || r.ring_tail >= r.ring_size) {
            let base = r.ring_base;
            self.regs.ring_halted = true;
            self.error(DevError::new(
                ErrorKind::BadRing,
                ErrorSite::Ring,
                false,
                base,
            ));
            // the error interrupt first
            return self.next_job(now);
        }
        let mut wait = None;
        let mut records = 0;
        if self.regs.traffic_active() {
            let rate = self.regs.traffic_rate;
            if rate == 0 {
                records = BURST;
            } else {
                let c = self.clock.get_or_insert_with(|| Clock::new(now));
                let due = c.due(rate);
                if due <= now {
                    if now.duration_since(due) > traffic::MAX_LAG {
                        *c = Clock::new(now);
                    }
                    records = c.due_by(now, rate).clamp(1, BURST);
                } else {
                    wait = Some(due);
                }
            }
        }
        let r = &self.regs;
        if ring && records > 0 {
            ring = !self.traffic_first;
            self.traffic_first = !self.traffic_first;
        }
        if ring {
            let index = r.ring_head;
            let at = r.ring_base.wrapping_add(index as u64 * ring::DESC_SIZE);
            return Ok(Job::Desc { bus, index, at });
        }
        if records > 0 {
            // stop a burst at the window's end (the wrap event)
            let n = r.traffic_size / RECORD_SIZE;
            let left = n - r.traffic_seq % n;
            return Ok(Job::Records {
                bus,
                seq: r.traffic_seq,
                count: records.min(left),
                base: r.traffic_base,
                size: r.traffic_size,
                gen: (
                    self.traffic_gen.clone(),
                    self.traffic_gen.load(Ordering::Acquire),
                ),
            });
        }
        Err(wait)
    }

    fn status(&self) -> u32 {
        let r = &self.regs;
        let mut s = 0;
        if r.control & CONTROL_RING_ENABLE != 0 {
            s |= STATUS_RING_ENABLED;
        }
        if r.ring_head == r.ring_tail {
            s |= STATUS_RING_IDLE;
        }
        if r.ring_halted {
            s |= STATUS_RING_HALTED;
        }
        if r.traffic_active() {
            s |= STATUS_TRAFFIC_ACTIVE;
        }
        if self.bus_master {
            s |= STATUS_BUS_MASTER;
        }
        if !self.running {
            s |= STATUS_STOPPED;
        }
        if self.busy {
            s |= STATUS_BUSY;
        }
        s
    }

    fn read32(&self, off: u64) -> u32 {
        let r = &self.regs;
        let lo = |x: u64| x as u32;
        let hi = |x: u64| (x >> 32) as u32;
        match off {
            ID => ID_VALUE,
            VERSION => VERSION_VALUE,
            CAPS => CAPS_VALUE,
            SCRATCH => r.scratch,
            CONTROL => r.control,
            STATUS => self.status(),
            INT_CAUSE => r.int_cause,
            INT_ENABLE => r.int_enable,
            ERROR_CODE => r.error_code,
            ERROR_ADDR => lo(r.error_addr),
            0x02c => hi(r.error_addr),
            ERROR_COUNT => r.error_count,
            RING_BASE => lo(r.ring_base),
            0x044 => hi(r.ring_base),
            RING_SIZE => r.ring_size,
            RING_HEAD => r.ring_head,
            RING_TAIL => r.ring_tail,
            COMPLETED => r.completed,
            TRAFFIC_CTRL => r.traffic_ctrl,
            TRAFFIC_BASE => lo(r.traffic_base),
            0x08c => hi(r.traffic_base),
            TRAFFIC_SIZE => lo(r.traffic_size),
            0x094 => hi(r.traffic_size),
            TRAFFIC_RATE => r.traffic_rate,
            TRAFFIC_SEQ => lo(r.traffic_seq),
            0x0a4 => hi(r.traffic_seq),
            TRAFFIC_COUNT => lo(r.traffic_count),
            0x0ac => hi(r.traffic_count),
            _ => 0,
        }
    }

    /// A write of the bytes of `val` selected by `mask` to the dword at
    /// `off`. Returns whether a device reset was asked for.
    fn write32(&mut self, off: u64, val: u32, mask: u32) -> bool {
        if (TRAFFIC_CTRL..TRAFFIC_COUNT).contains(&off) {
            self.traffic_gen.fetch_add(1, Ordering::AcqRel);
        }
        let r = &mut self.regs;
        match off {
            SCRATCH => r.scratch = merge32(r.scratch, val, mask),
            CONTROL => {
                if val & mask & CONTROL_RESET != 0 {
                    return true;
                }
                let old = r.control;
                r.control = merge32(old, val, mask) & CONTROL_RING_ENABLE;
                if old & CONTROL_RING_ENABLE == 0 && r.control & CONTROL_RING_ENABLE != 0 {
                    r.ring_halted = false;
                }
            }
            INT_CAUSE => r.int_cause &= !(val & mask),
            INT_ENABLE => {
                let old = r.int_enable;
                r.int_enable = merge32(old, val, mask) & INT_ALL;
                self.pending_irq |= r.int_enable & !old & r.int_cause;
            }
            ERROR_CODE if mask != 0 => {
                r.error_code = 0;
                r.error_addr = 0;
            }
            RING_BASE | 0x044 => {
                r.ring_base = merge64(r.ring_base, off == 0x044, val, mask) & !0x1f;
            }
            RING_SIZE => r.ring_size = merge32(r.ring_size, val, mask).min(RING_SIZE_MAX),
            RING_HEAD if r.control & CONTROL_RING_ENABLE == 0 => {
                r.ring_head = merge32(r.ring_head, val, mask);
            }
            RING_TAIL => r.ring_tail = merge32(r.ring_tail, val, mask),
            DOORBELL => {}
            TRAFFIC_CTRL => {
                let old = r.traffic_ctrl;
                r.traffic_ctrl = merge32(old, val, mask) & TRAFFIC_ENABLE;
                if old != r.traffic_ctrl {
                    self.clock = None;
                }
            }
            TRAFFIC_BASE | 0x08c => {
                r.traffic_base = merge64(r.traffic_base, off == 0x08c, val, mask) & !0x3f;
                self.clock = None;
            }
            TRAFFIC_SIZE | 0x094 => {
                r.traffic_size = merge64(r.traffic_size, off == 0x094, val, mask) & !0x3f;
                self.clock = None;
            }
            TRAFFIC_RATE => {
                r.traffic_rate = merge32(r.traffic_rate, val, mask);
                self.clock = None;
            }
            TRAFFIC_SEQ | 0x0a4 if r.traffic_ctrl & TRAFFIC_ENABLE == 0 => {
                r.traffic_seq = merge64(r.traffic_seq, off == 0x0a4, val, mask);
            }
            _ => {}
        }
        false
    }

    /// Apply the results of a descriptor job.
    fn finish_desc(&mut self, index: u32, out: ring::Outcome) {
        for e in &out.errors {
            self.error(*e);
        }
        if out.halt {
            self.regs.ring_halted = true;
            return;
        }
        let r = &mut self.regs;
        if r.ring_head == index && r.ring_size != 0 {
            r.ring_head = (index + 1) % r.ring_size;
        }
        r.completed = r.completed.wrapping_add(1);
        if out.interrupt {
            self.raise(INT_COMPLETION);
        }
    }

    /// Apply the results of a traffic job: `written` records from `seq`,
    /// then `fault`.
    fn finish_records(&mut self, seq: u64, written: u64, fault: Option<DevError>) {
        if self.regs.traffic_seq == seq && written > 0 {
            let n = (self.regs.traffic_size / RECORD_SIZE).max(1);
            self.regs.traffic_seq = seq.wrapping_add(written);
            self.regs.traffic_count = self.regs.traffic_count.wrapping_add(written);
            if let Some(c) = self.clock.as_mut() {
                c.done += written;
            }
            // the window's last slot was written
            if (seq % n) + written >= n {
                self.raise(INT_TRAFFIC);
            }
        }
        if let Some(e) = fault {
            self.regs.traffic_ctrl &= !TRAFFIC_ENABLE;
            self.clock = None;
            self.error(e);
        }
    }
}

impl Inner {
    /// Wait until no job is in flight (the lock is released meanwhile).
    fn quiesce(&self, g: &mut MutexGuard<'_, Shared>) {
        while g.busy {
            self.cv.wait(g);
        }
    }

    fn run(&self) {
        let mut buf = Vec::new();
        let mut g = self.st.lock();
        loop {
            if g.stop {
                return;
            }
            let job = match g.next_job(Instant::now()) {
                Ok(j) => j,
                Err(None) => {
                    self.cv.wait(&mut g);
                    continue;
                }
                Err(Some(t)) => {
                    self.cv.wait_until(&mut g, t);
                    continue;
                }
            };
            g.busy = true;
            drop(g);
            let done = self.run_job(job, &mut buf);
            g = self.st.lock();
            match done {
                Done::Irq => {}
                Done::Desc(index, out) => g.finish_desc(index, out),
                Done::Records(seq, n, fault) => g.finish_records(seq, n, fault),
            }
            g.busy = false;
            self.cv.notify_all();
        }
    }

    fn run_job(&self, job: Job, buf: &mut Vec<u8>) -> Done {
        match job {
            Job::Irq(bus, mask) => {
                for v in 0..MSIX_VECTORS {
                    if mask & 1 << v != 0 {
                        bus.interrupt(v);
                    }
                }
                Done::Irq
            }
            Job::Desc { bus, index, at } => Done::Desc(index, ring::process(&*bus, at, buf)),
            Job::Records {
                bus,
                seq,
                count,
                base,
                size,
                gen,
            } => {
                let n = (size / RECORD_SIZE).max(1);
                let mut written = 0;
                // stop early when software changed the traffic registers
                while written < count && (written == 0 || gen.0.load(Ordering::Acquire) == gen.1) {
                    let s = seq.wrapping_add(written);
                    let at = base.wrapping_add((s % n) * RECORD_SIZE);
                    if let Err(f) = bus.dma_write(at, &traffic::record(s)) {
                        return Done::Records(
                            seq,
                            written,
                            Some(DevError::from_fault(f, ErrorSite::Traffic, true)),
                        );
                    }
                    written += 1;
                }
                Done::Records(seq, written, None)
            }
        }
    }
}

enum Done {
    Irq,
    Desc(u32, ring::Outcome),
    Records(u64, u64, Option<DevError>),
}

/// The worker thread of a connected device.
#[derive(Debug)]
struct Worker {
    handle: JoinHandle<()>,
    /// The process that started it (a child after `fork` has none).
    pid: u32,
}

/// Block every asynchronous signal in the calling thread, keeping those a
/// fault (and the fault-safe copies) raise.
fn block_async_signals() {
    // SAFETY: plain libc calls on a local signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// A BAR0 access the registers answer: 1, 2, 4 or 8 bytes, naturally
/// aligned, inside the BAR.
fn access_ok(bar: u8, offset: u64, n: u64) -> bool {
    bar == 0
        && matches!(n, 1 | 2 | 4 | 8)
        && offset.is_multiple_of(n)
        && offset.checked_add(n).is_some_and(|e| e <= BAR_SIZE)
}

/// The `dma-engine` model.
#[derive(Debug)]
pub struct DmaEngine {
    inner: Arc<Inner>,
    worker: Mutex<Option<Worker>>,
}

impl DmaEngine {
    /// A new device at its power-on state, not connected.
    pub fn new(params: Params) -> DmaEngine {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let instance = NEXT.fetch_add(1, Ordering::Relaxed);
        DmaEngine {
            inner: Arc::new(Inner {
                st: Mutex::new(Shared {
                    regs: Regs::power_on(&params.power_on),
                    bus: None,
                    bus_master: false,
                    running: true,
                    holds: 0,
                    busy: false,
                    stop: false,
                    dead: false,
                    pending_irq: 0,
                    clock: None,
                    traffic_first: false,
                    traffic_gen: Arc::new(AtomicU64::new(0)),
                }),
                cv: Condvar::new(),
                params,
                instance,
            }),
            worker: Mutex::new(None),
        }
    }

    /// From `key=value` parameters (see [`Params::parse`]).
    pub fn from_params(params: &[(String, String)]) -> Result<DmaEngine> {
        Ok(DmaEngine::new(Params::parse(params)?))
    }

    /// The register file now (for tests and debugging).
    pub fn regs(&self) -> Regs {
        self.inner.st.lock().regs
    }

    /// Start the worker if there is a bus and none runs (or it died).
    fn ensure_worker(&self, w: &mut Option<Worker>) {
        let pid = std::process::id();
        if let Some(cur) = w.as_ref() {
            // after fork the child's copy stays without a worker
            if cur.pid != pid || !cur.handle.is_finished() {
                return;
            }
        }
        if let Some(old) = w.take() {
            if old.pid == pid {
                let _ = old.handle.join();
            }
        }
        {
            let mut g = self.inner.st.lock();
            if g.bus.is_none() {
                return;
            }
            g.stop = false;
            g.dead = false;
            g.busy = false;
        }
        let inner = self.inner.clone();
        let name = format!("dmae-{}", self.inner.instance);
        let r = std::thread::Builder::new().name(name).spawn(move || {
            block_async_signals();
            if catch_unwind(AssertUnwindSafe(|| inner.run())).is_err() {
                tracing::error!(
                    instance = inner.instance,
                    "dma-engine worker panicked: the device does no more DMA until reset"
                );
                let mut g = inner.st.lock();
                g.busy = false;
                g.dead = true;
                inner.cv.notify_all();
            }
        });
        match r {
            Ok(handle) => *w = Some(Worker { handle, pid }),
            Err(e) => tracing::error!(
                instance = self.inner.instance,
                "dma-engine: cannot start the worker thread ({e}): the device does no DMA"
            ),
        }
    }

    /// Stop the worker and wait for it (not in a child after `fork`).
    fn stop_worker(&self, w: &mut Option<Worker>) {
        let Some(old) = w.take() else { return };
        if old.pid != std::process::id() {
            // the parent's thread: not ours to wait for
            return;
        }
        {
            let mut g = self.inner.st.lock();
            g.stop = true;
            self.inner.cv.notify_all();
        }
        let _ = old.handle.join();
        let mut g = self.inner.st.lock();
        g.stop = false;
        g.busy = false;
    }

    fn write_reg(&self, off: u64, val: u32, mask: u32) {
        let reset = {
            let mut g = self.inner.st.lock();
            let reset = g.write32(off, val, mask);
            self.inner.cv.notify_all();
            reset
        };
        if reset {
            self.reset();
        }
    }
}

impl Drop for DmaEngine {
    fn drop(&mut self) {
        let mut w = self.worker.lock();
        self.stop_worker(&mut w);
    }
}

impl PciModel for DmaEngine {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn layout(&self) -> PciLayout {
        let bar = Bar {
            size: BAR_SIZE,
            mem64: false,
            prefetchable: false,
            mmap: false,
        };
        PciLayout {
            ids: PciIds {
                vendor: VENDOR_ID,
                device: DEVICE_ID,
                revision: REVISION,
                class: CLASS,
                subsystem_vendor: VENDOR_ID,
                subsystem_device: DEVICE_ID,
            },
            bars: [Some(bar), None, Some(bar), None, None, None],
            intx_pin: 1,
            msi_vectors: 0,
            msix: Some(MsixLayout {
                vectors: MSIX_VECTORS,
                table_bar: 2,
                table_offset: 0,
                pba_bar: 2,
                pba_offset: PBA_OFFSET,
            }),
        }
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let n = data.len() as u64;
        if !access_ok(bar, offset, n) {
            return;
        }
        let g = self.inner.st.lock();
        if n == 8 {
            let lo = g.read32(offset) as u64;
            let hi = g.read32(offset + 4) as u64;
            data.copy_from_slice(&(lo | hi << 32).to_le_bytes());
        } else {
            let dw = g.read32(offset & !3).to_le_bytes();
            let s = (offset & 3) as usize;
            data.copy_from_slice(&dw[s..s + n as usize]);
        }
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
        let n = data.len() as u64;
        if !access_ok(bar, offset, n) {
            return;
        }
        if n == 8 {
            let v = u64::from_le_bytes(data.try_into().unwrap_or([0; 8]));
            let reset = {
                let mut g = self.inner.st.lock();
                let a = g.write32(offset, v as u32, !0);
                let b = g.write32(offset + 4, (v >> 32) as u32, !0);
                self.inner.cv.notify_all();
                a || b
            };
            if reset {
                self.reset();
            }
            return;
        }
        let s = (offset & 3) as usize;
        let mut dw = [0u8; 4];
        let mut mk = [0u8; 4];
        dw[s..s + n as usize].copy_from_slice(data);
        mk[s..s + n as usize].fill(0xff);
        self.write_reg(offset & !3, u32::from_le_bytes(dw), u32::from_le_bytes(mk));
    }

    fn connect(&self, bus: Option<Arc<dyn Bus>>) {
        let mut w = self.worker.lock();
        match bus {
            Some(b) => {
                self.inner.st.lock().bus = Some(b);
                self.ensure_worker(&mut w);
                self.inner.cv.notify_all();
            }
            None => {
                self.stop_worker(&mut w);
                let mut g = self.inner.st.lock();
                g.bus = None;
            }
        }
    }

    fn set_bus_master(&self, on: bool) {
        let mut g = self.inner.st.lock();
        if g.bus_master != on {
            g.bus_master = on;
            g.clock = None;
        }
        if !on {
            // no DMA after this returns: wait for one in flight
            g.holds += 1;
            self.inner.quiesce(&mut g);
            g.holds -= 1;
        }
        self.inner.cv.notify_all();
    }

    fn reset(&self) {
        {
            let mut g = self.inner.st.lock();
            g.holds += 1;
            self.inner.quiesce(&mut g);
            g.regs = Regs::power_on(&self.inner.params.power_on);
            g.traffic_gen.fetch_add(1, Ordering::AcqRel);
            g.pending_irq = 0;
            g.clock = None;
            g.holds -= 1;
            self.inner.cv.notify_all();
        }
        // a worker that died of a panic comes back with the reset
        let mut w = self.worker.lock();
        self.ensure_worker(&mut w);
    }

    fn set_running(&self, running: bool) {
        let mut g = self.inner.st.lock();
        g.running = running;
        if running {
            g.clock = None;
        } else {
            self.inner.quiesce(&mut g);
        }
        self.inner.cv.notify_all();
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        let mut g = self.inner.st.lock();
        g.holds += 1;
        self.inner.quiesce(&mut g);
        let v = state::save(
            &g.regs,
            &state::Extra {
                pending_irq: g.pending_irq,
            },
        );
        g.holds -= 1;
        self.inner.cv.notify_all();
        Ok(v)
    }

    fn load_state(&self, data: &[u8]) -> Result<()> {
        let (regs, extra) = state::load(data)?;
        let mut g = self.inner.st.lock();
        g.holds += 1;
        self.inner.quiesce(&mut g);
        g.regs = regs;
        g.traffic_gen.fetch_add(1, Ordering::AcqRel);
        g.pending_irq = extra.pending_irq;
        g.clock = None;
        g.holds -= 1;
        self.inner.cv.notify_all();
        Ok(())
    }
}
