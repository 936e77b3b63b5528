//! The device's state behind its lock ([`Shared`]: registers as software
//! sees them, job selection, results) and the worker thread that runs the
//! jobs touching the bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::regs::*;
use super::ring;
use super::traffic::{self, Clock, RECORD_SIZE};
use super::Params;
use crate::vfio::model::Bus;

/// Records written per traffic job at most when the rate is 0.
const BURST: u64 = 64;

/// Everything behind the device lock.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) regs: Regs,
    pub(super) bus: Option<Arc<dyn Bus>>,
    pub(super) bus_master: bool,
    pub(super) running: bool,
    /// Callers (reset, load) that want no job to start.
    pub(super) holds: u32,
    /// The worker whose job is in flight (0: none).
    pub(super) busy: u64,
    /// The worker that should run (0: none): any other exits.
    pub(super) worker: u64,
    /// The worker died of a panic.
    pub(super) dead: bool,
    /// Cause bits whose interrupt is raised but not sent.
    pub(super) pending_irq: u32,
    /// Traffic pacing (`None`: restart at the next record).
    pub(super) clock: Option<Clock>,
    /// Take traffic before the ring next time both have work.
    pub(super) traffic_first: bool,
    /// Bumped by every change of the traffic registers: a traffic job
    /// stops between two records when it changed.
    pub(super) traffic_gen: Arc<AtomicU64>,
    /// Bumped by reset and load: the results of a job started before are
    /// not applied.
    pub(super) epoch: u64,
}

thread_local! {
    /// This thread is a dma-engine worker.
    pub(super) static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) st: Mutex<Shared>,
    pub(super) cv: Condvar,
    pub(super) params: Params,
    pub(super) instance: u32,
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
        self.bus.is_some() && self.running && self.holds == 0 && !self.dead && self.busy == 0
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
        if self.busy != 0 {
            s |= STATUS_BUSY;
        }
        s
    }

    pub(super) fn read32(&self, off: u64) -> u32 {
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
    pub(super) fn write32(&mut self, off: u64, val: u32, mask: u32) -> bool {
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
    /// On the worker itself (a bus callback calling back into the
    /// device) the job in flight is the caller's own: no wait, and the
    /// epoch bump of the caller drops its results.
    pub(super) fn quiesce(&self, g: &mut MutexGuard<'_, Shared>) {
        if IN_WORKER.with(|w| w.get()) {
            return;
        }
        while g.busy != 0 {
            self.cv.wait(g);
        }
    }

    pub(super) fn run(&self, id: u64) {
        let mut buf = Vec::new();
        let mut g = self.st.lock();
        loop {
            if g.worker != id {
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
            g.busy = id;
            let epoch = g.epoch;
            drop(g);
            let done = self.run_job(job, &mut buf);
            g = self.st.lock();
            // a reset or load meanwhile (from a bus callback) made the
            // results stale
            if g.epoch == epoch {
                match done {
                    Done::Irq => {}
                    Done::Desc(index, out) => g.finish_desc(index, out),
                    Done::Records(seq, n, fault) => g.finish_records(seq, n, fault),
                }
            }
            g.busy = 0;
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
pub(super) struct Worker {
    pub(super) handle: JoinHandle<()>,
    /// Its id (`Shared::worker` while it should run).
    pub(super) id: u64,
    /// The process that started it (a child after `fork` has none).
    pub(super) pid: u32,
}

/// Block every asynchronous signal in the calling thread, keeping those a
/// fault (and the fault-safe copies) raise.
pub(super) fn block_async_signals() {
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
