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
mod worker;

#[cfg(test)]
mod tests;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use self::regs::*;
use self::traffic::RECORD_SIZE;
use self::worker::{block_async_signals, Inner, Shared, Worker, IN_WORKER};
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
                    busy: 0,
                    worker: 0,
                    dead: false,
                    pending_irq: 0,
                    clock: None,
                    traffic_first: false,
                    traffic_gen: Arc::new(AtomicU64::new(0)),
                    epoch: 0,
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
            if cur.pid != pid {
                return;
            }
            let current = self.inner.st.lock().worker == cur.id;
            if current && !cur.handle.is_finished() {
                return;
            }
        }
        if let Some(old) = w.take() {
            // dead, or told to exit (by a disconnect from a bus callback):
            // it is gone or leaves after the job it is in
            let _ = old.handle.join();
        }
        let id = {
            let mut g = self.inner.st.lock();
            if g.bus.is_none() {
                return;
            }
            g.worker += 1;
            g.dead = false;
            g.worker
        };
        let inner = self.inner.clone();
        let name = format!("dmae-{}", self.inner.instance);
        let r = std::thread::Builder::new().name(name).spawn(move || {
            IN_WORKER.with(|w| w.set(true));
            block_async_signals();
            if catch_unwind(AssertUnwindSafe(|| inner.run(id))).is_err() {
                tracing::error!(
                    instance = inner.instance,
                    "dma-engine worker panicked: the device does no more DMA until reset"
                );
                let mut g = inner.st.lock();
                if g.busy == id {
                    g.busy = 0;
                }
                if g.worker == id {
                    g.dead = true;
                }
                inner.cv.notify_all();
            }
        });
        match r {
            Ok(handle) => *w = Some(Worker { handle, id, pid }),
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
            g.worker += 1;
            self.inner.cv.notify_all();
        }
        if IN_WORKER.with(|w| w.get()) {
            // called back from the worker's own job: it exits after it
            return;
        }
        let _ = old.handle.join();
    }

    /// A function-level reset (`flr`: config space too, so bus mastering
    /// is off until the VFIO layer restores COMMAND and says so) or the
    /// device's own `CONTROL.RESET` (bus mastering as it was).
    fn reset_device(&self, flr: bool) {
        {
            let mut g = self.inner.st.lock();
            g.holds += 1;
            self.inner.quiesce(&mut g);
            g.regs = Regs::power_on(&self.inner.params.power_on);
            if flr {
                g.bus_master = false;
            }
            g.traffic_gen.fetch_add(1, Ordering::AcqRel);
            g.epoch += 1;
            g.pending_irq = 0;
            g.clock = None;
            g.holds -= 1;
            self.inner.cv.notify_all();
        }
        // a worker that died of a panic comes back with the reset (not
        // from a callback on the worker, which is alive)
        if !IN_WORKER.with(|w| w.get()) {
            let mut w = self.worker.lock();
            self.ensure_worker(&mut w);
        }
    }

    fn write_reg(&self, off: u64, val: u32, mask: u32) {
        let reset = {
            let mut g = self.inner.st.lock();
            let reset = g.write32(off, val, mask);
            self.inner.cv.notify_all();
            reset
        };
        if reset {
            self.reset_device(false);
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
        let bar = Bar::registers(BAR_SIZE);
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
            pasid_log2: 0,
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
                self.reset_device(false);
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
        if IN_WORKER.with(|w| w.get()) {
            // from a bus callback on the worker: the state only (the
            // worker's handle is reaped by the next connect or reset)
            let mut g = self.inner.st.lock();
            if bus.is_none() {
                g.worker += 1;
            }
            g.bus = bus;
            self.inner.cv.notify_all();
            return;
        }
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

    /// A function-level reset: config space included, so bus mastering is
    /// off until the VFIO layer restores COMMAND ([`PciModel::set_bus_master`]).
    fn reset(&self) {
        self.reset_device(true);
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
        g.epoch += 1;
        g.pending_irq = extra.pending_irq;
        g.clock = None;
        g.holds -= 1;
        self.inner.cv.notify_all();
        Ok(())
    }
}
