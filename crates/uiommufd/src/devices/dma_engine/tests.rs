//! Unit tests of the dma-engine with a fake bus (a `Vec`-backed IOVA
//! space with holes and read-only ranges), and one through the real
//! engine: an IOAS with a VT-d domain over this process's memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::regs::*;
use super::ring::*;
use super::traffic;
use super::*;
use crate::domain::{DmaFault, Domain};
use uiommufd_testkit::wait_for;

/// Where the fake bus's memory starts.
const BASE: u64 = 0x10_0000;
/// Its size.
const MEM: usize = 1 << 20;
/// The ring's IOVA.
const RING: u64 = BASE;
/// Data areas.
const SRC: u64 = BASE + 0x1_0000;
const DST: u64 = BASE + 0x2_0000;
/// The traffic window.
const WIN: u64 = BASE + 0x4_0000;

#[derive(Debug, Default)]
struct FakeBus {
    mem: Mutex<Vec<u8>>,
    /// `[start, end)` ranges that fault as not present.
    holes: Mutex<Vec<(u64, u64)>>,
    /// `[start, end)` ranges that are read-only.
    ro: Mutex<Vec<(u64, u64)>>,
    irqs: Mutex<Vec<u16>>,
    dma_calls: AtomicU64,
    /// Each DMA sleeps this long (ms), flagging `in_dma` meanwhile.
    delay_ms: AtomicU64,
    in_dma: AtomicBool,
    /// A DMA call panics (the worker must survive it).
    panic_next: AtomicBool,
}

impl FakeBus {
    fn new() -> Arc<FakeBus> {
        Arc::new(FakeBus {
            mem: Mutex::new(vec![0; MEM]),
            ..FakeBus::default()
        })
    }

    fn check(&self, iova: u64, len: usize, write: bool) -> Result<usize, DmaFault> {
        self.dma_calls.fetch_add(1, Ordering::SeqCst);
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("injected panic in the fake bus");
        }
        let d = self.delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            self.in_dma.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(d));
            self.in_dma.store(false, Ordering::SeqCst);
        }
        let end = iova + len as u64;
        for &(s, e) in self.holes.lock().iter() {
            if iova < e && end > s {
                return Err(DmaFault::NotPresent { iova: iova.max(s) });
            }
        }
        if write {
            for &(s, e) in self.ro.lock().iter() {
                if iova < e && end > s {
                    return Err(DmaFault::Permission {
                        iova: iova.max(s),
                        write: true,
                    });
                }
            }
        }
        if iova < BASE || end > BASE + MEM as u64 {
            return Err(DmaFault::NotPresent {
                iova: if iova < BASE { iova } else { BASE + MEM as u64 },
            });
        }
        Ok((iova - BASE) as usize)
    }

    fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let o = (iova - BASE) as usize;
        self.mem.lock()[o..o + len].to_vec()
    }

    fn put(&self, iova: u64, data: &[u8]) {
        let o = (iova - BASE) as usize;
        self.mem.lock()[o..o + data.len()].copy_from_slice(data);
    }

    fn irq_count(&self, v: u16) -> usize {
        self.irqs.lock().iter().filter(|&&x| x == v).count()
    }
}

impl Bus for FakeBus {
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let o = self.check(iova, buf.len(), false)?;
        buf.copy_from_slice(&self.mem.lock()[o..o + buf.len()]);
        Ok(())
    }
    fn dma_write(&self, iova: u64, buf: &[u8]) -> Result<(), DmaFault> {
        let o = self.check(iova, buf.len(), true)?;
        self.mem.lock()[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn interrupt(&self, vector: u16) {
        self.irqs.lock().push(vector);
    }
}

fn r32(d: &DmaEngine, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.bar_read(0, off, &mut b);
    u32::from_le_bytes(b)
}

fn r64(d: &DmaEngine, off: u64) -> u64 {
    let mut b = [0u8; 8];
    d.bar_read(0, off, &mut b);
    u64::from_le_bytes(b)
}

fn w32(d: &DmaEngine, off: u64, v: u32) {
    d.bar_write(0, off, &v.to_le_bytes());
}

fn w64(d: &DmaEngine, off: u64, v: u64) {
    d.bar_write(0, off, &v.to_le_bytes());
}

/// Program the traffic window `[iova, iova + size)` and start the stream at
/// `rate` records a second (0: as fast as it can).
fn start_traffic(d: &DmaEngine, iova: u64, size: u64, rate: u32) {
    w64(d, TRAFFIC_BASE, iova);
    w64(d, TRAFFIC_SIZE, size);
    w32(d, TRAFFIC_RATE, rate);
    w32(d, TRAFFIC_CTRL, TRAFFIC_ENABLE);
}

fn params(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A device connected to a fresh fake bus with bus mastering on, a ring
/// of `size` entries at `RING` and every interrupt enabled.
fn setup(size: u32) -> (DmaEngine, Arc<FakeBus>) {
    let d = DmaEngine::new(Params::default());
    let bus = FakeBus::new();
    d.connect(Some(bus.clone()));
    d.set_bus_master(true);
    w64(&d, RING_BASE, RING);
    w32(&d, RING_SIZE, size);
    w32(&d, INT_ENABLE, INT_ALL);
    w32(&d, CONTROL, CONTROL_RING_ENABLE);
    (d, bus)
}

/// Write descriptor `d` at ring index `i`.
fn post(bus: &FakeBus, i: u32, d: Descriptor) {
    bus.put(RING + i as u64 * DESC_SIZE, &d.to_bytes());
}

fn status_of(bus: &FakeBus, i: u32) -> u16 {
    let b = bus.get(RING + i as u64 * DESC_SIZE + 2, 2);
    u16::from_le_bytes([b[0], b[1]])
}

fn copy(src: u64, dst: u64, length: u32, flags: u8) -> Descriptor {
    Descriptor {
        opcode: OP_COPY,
        flags,
        src,
        dst,
        length,
        ..Descriptor::default()
    }
}

#[test]
fn identity_layout_and_register_access_widths() {
    let d = DmaEngine::new(Params::default());
    let l = d.layout();
    assert_eq!(
        (l.ids.vendor, l.ids.device, l.ids.class),
        (0x1de5, 1, 0x08_8000)
    );
    assert_eq!(l.intx_pin, 1);
    assert_eq!(l.bars[0].unwrap().size, 4096);
    assert!(!l.bars[0].unwrap().mmap);
    let m = l.msix.unwrap();
    assert_eq!(
        (
            m.vectors,
            m.table_bar,
            m.table_offset,
            m.pba_bar,
            m.pba_offset
        ),
        (4, 2, 0, 2, 0x800)
    );
    assert_eq!(r32(&d, ID), 0x444d_4145);
    assert_eq!(r32(&d, VERSION), 0x0001_0000);
    assert_eq!(r32(&d, CAPS), 0x0004_0007);
    assert_eq!(r64(&d, ID), 0x0001_0000_444d_4145);
    let mut b = [0u8; 1];
    d.bar_read(0, 1, &mut b);
    assert_eq!(b[0], 0x41);
    let mut b = [0u8; 2];
    d.bar_read(0, 2, &mut b);
    assert_eq!(u16::from_le_bytes(b), 0x444d);
    // reserved offsets, other BARs, misaligned accesses: 0
    assert_eq!(r32(&d, 0x200), 0);
    let mut b = [0xffu8; 4];
    d.bar_read(2, 0x100, &mut b);
    assert_eq!(b, [0; 4]);
    d.bar_read(0, 2, &mut b);
    assert_eq!(b, [0; 4]);
    // sub-dword writes merge
    w32(&d, SCRATCH, 0x1122_3344);
    d.bar_write(0, SCRATCH + 1, &[0xaa]);
    d.bar_write(0, SCRATCH + 2, &[0xbb, 0xcc]);
    assert_eq!(r32(&d, SCRATCH), 0xccbb_aa44);
    // read-only registers ignore writes; 64-bit registers both ways
    w32(&d, ID, 0);
    assert_eq!(r32(&d, ID), ID_VALUE);
    w64(&d, RING_BASE, 0x1234_5678_9abc_def7);
    assert_eq!(r64(&d, RING_BASE), 0x1234_5678_9abc_dee0);
    assert_eq!(r32(&d, RING_BASE + 4), 0x1234_5678);
    w32(&d, RING_SIZE, 1 << 20);
    assert_eq!(r32(&d, RING_SIZE), RING_SIZE_MAX);
    // STATUS: idle, nothing else
    assert_eq!(r32(&d, STATUS), STATUS_RING_IDLE);
}

#[test]
fn copy_and_fill_complete_with_status_and_interrupt() {
    let (d, bus) = setup(8);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13) as u8).collect();
    bus.put(SRC, &data[..0x1_0000]);
    post(&bus, 0, copy(SRC, DST, 0x1_0000, FLAG_INTERRUPT));
    post(
        &bus,
        1,
        Descriptor {
            opcode: OP_FILL,
            dst: DST + 0x1_0000 + 3,
            length: 77_777,
            pattern: 0x0807_0605_0403_0201,
            ..Descriptor::default()
        },
    );
    post(&bus, 2, Descriptor::default());
    w32(&d, RING_TAIL, 3);
    wait_for("3 completions", || r32(&d, COMPLETED) == 3);
    assert_eq!(bus.get(DST, 0x1_0000), &data[..0x1_0000]);
    let filled = bus.get(DST + 0x1_0000 + 3, 77_777);
    assert!(filled
        .iter()
        .enumerate()
        .all(|(k, &b)| b == (k % 8) as u8 + 1));
    assert_eq!(bus.get(DST + 0x1_0000 + 3 + 77_777, 1), [0]);
    assert_eq!(
        [status_of(&bus, 0), status_of(&bus, 1), status_of(&bus, 2)],
        [STATUS_OK; 3]
    );
    assert_eq!(r32(&d, RING_HEAD), 3);
    assert_eq!(
        r32(&d, STATUS) & (STATUS_RING_IDLE | STATUS_RING_ENABLED | STATUS_BUS_MASTER),
        STATUS_RING_IDLE | STATUS_RING_ENABLED | STATUS_BUS_MASTER
    );
    // only the descriptor with INTERRUPT raised one
    wait_for("the completion interrupt", || bus.irq_count(0) == 1);
    assert_eq!(r32(&d, INT_CAUSE), INT_COMPLETION);
    w32(&d, INT_CAUSE, INT_COMPLETION);
    assert_eq!(r32(&d, INT_CAUSE), 0);
    assert_eq!(r32(&d, ERROR_COUNT), 0);
}

#[test]
fn ring_wraps_around() {
    let (d, bus) = setup(4);
    for i in 0..3 {
        bus.put(SRC + i * 8, &[i as u8 + 1; 8]);
        post(&bus, i as u32, copy(SRC + i * 8, DST + i * 8, 8, 0));
    }
    w32(&d, RING_TAIL, 3);
    wait_for("3", || r32(&d, COMPLETED) == 3);
    for (k, i) in [3u32, 0, 1].iter().enumerate() {
        let n = 3 + k as u64;
        bus.put(SRC + n * 8, &[n as u8 + 1; 8]);
        post(&bus, *i, copy(SRC + n * 8, DST + n * 8, 8, FLAG_INTERRUPT));
    }
    w32(&d, RING_TAIL, 2);
    w32(&d, DOORBELL, 1);
    wait_for("6", || r32(&d, COMPLETED) == 6);
    assert_eq!(r32(&d, RING_HEAD), 2);
    let got = bus.get(DST, 48);
    for n in 0..6 {
        assert_eq!(&got[n * 8..n * 8 + 8], &[n as u8 + 1; 8]);
    }
    wait_for("3 interrupts", || bus.irq_count(0) == 3);
}

#[test]
fn dma_faults_set_error_registers_and_interrupt() {
    let (d, bus) = setup(8);
    bus.holes.lock().push((SRC + 0x800, SRC + 0x1000));
    bus.ro.lock().push((DST + 0x100, DST + 0x200));
    // a source fault, a destination permission fault, then a good one
    post(&bus, 0, copy(SRC, DST, 0x1000, 0));
    post(&bus, 1, copy(SRC, DST + 0x80, 0x100, FLAG_INTERRUPT));
    post(&bus, 2, copy(SRC, DST + 0x400, 0x10, 0));
    post(
        &bus,
        3,
        Descriptor {
            opcode: 9,
            ..Descriptor::default()
        },
    );
    w32(&d, RING_TAIL, 4);
    wait_for("4", || r32(&d, COMPLETED) == 4);
    assert_eq!(status_of(&bus, 0), STATUS_FAILED | 1);
    assert_eq!(status_of(&bus, 1), STATUS_FAILED | 2);
    assert_eq!(status_of(&bus, 2), STATUS_OK);
    assert_eq!(status_of(&bus, 3), STATUS_FAILED | 5);
    assert_eq!(r32(&d, ERROR_COUNT), 3);
    // the last error: the bad opcode at descriptor 3
    assert_eq!(r32(&d, ERROR_CODE), 5 | 1 << 8);
    assert_eq!(r64(&d, ERROR_ADDR), RING + 3 * DESC_SIZE);
    wait_for("error interrupts", || bus.irq_count(1) >= 1);
    assert_eq!(bus.irq_count(0), 1);
    assert_eq!(r32(&d, INT_CAUSE), INT_COMPLETION | INT_ERROR);
    // one fault at a time: the permission fault's registers
    w32(&d, ERROR_CODE, 0);
    assert_eq!((r32(&d, ERROR_CODE), r64(&d, ERROR_ADDR)), (0, 0));
    post(&bus, 4, copy(SRC, DST + 0x180, 0x100, 0));
    w32(&d, RING_TAIL, 5);
    wait_for("5", || r32(&d, COMPLETED) == 5);
    assert_eq!(r32(&d, ERROR_CODE), 2 | 3 << 8 | ERROR_WRITE);
    assert_eq!(r64(&d, ERROR_ADDR), DST + 0x180);
    // a fetch fault halts the ring on that descriptor
    bus.holes
        .lock()
        .push((RING + 5 * DESC_SIZE, RING + 6 * DESC_SIZE));
    w32(&d, RING_TAIL, 6);
    wait_for("halt", || r32(&d, STATUS) & STATUS_RING_HALTED != 0);
    assert_eq!(r32(&d, RING_HEAD), 5);
    assert_eq!(r32(&d, ERROR_CODE), 1 | 1 << 8);
    assert_eq!(r64(&d, ERROR_ADDR), RING + 5 * DESC_SIZE);
    // re-enabling resumes at HEAD once the fault is gone
    bus.holes.lock().clear();
    post(&bus, 5, copy(SRC, DST, 8, 0));
    w32(&d, CONTROL, 0);
    w32(&d, CONTROL, CONTROL_RING_ENABLE);
    wait_for("6", || r32(&d, COMPLETED) == 6);
    assert_eq!(r32(&d, STATUS) & STATUS_RING_HALTED, 0);
}

#[test]
fn bad_ring_halts() {
    let (d, bus) = setup(4);
    w32(&d, RING_TAIL, 9);
    wait_for("halt", || r32(&d, STATUS) & STATUS_RING_HALTED != 0);
    assert_eq!(r32(&d, ERROR_CODE), 6 | 6 << 8);
    assert_eq!(r64(&d, ERROR_ADDR), RING);
    wait_for("error interrupt", || bus.irq_count(1) == 1);
    assert_eq!(bus.dma_calls.load(Ordering::SeqCst), 0);
}

#[test]
fn interrupts_follow_int_enable() {
    let (d, bus) = setup(4);
    w32(&d, INT_ENABLE, 0);
    post(
        &bus,
        0,
        Descriptor {
            flags: FLAG_INTERRUPT,
            ..Descriptor::default()
        },
    );
    w32(&d, RING_TAIL, 1);
    wait_for("1", || r32(&d, COMPLETED) == 1);
    std::thread::sleep(Duration::from_millis(20));
    assert!(bus.irqs.lock().is_empty());
    assert_eq!(r32(&d, INT_CAUSE), INT_COMPLETION);
    // enabling a pending cause sends it
    w32(&d, INT_ENABLE, INT_COMPLETION);
    wait_for("the late interrupt", || bus.irq_count(0) == 1);
}

/// Check every slot of a window of `n` records: returns the sequence
/// numbers found.
fn records_in(bus: &FakeBus, base: u64, n: u64) -> Vec<u64> {
    let w = bus.get(base, (n * 64) as usize);
    let mut seqs = Vec::new();
    for slot in 0..n {
        let r = &w[(slot * 64) as usize..(slot * 64 + 64) as usize];
        match traffic::check(r, slot, n) {
            Ok(Some(s)) => seqs.push(s),
            Ok(None) => {}
            Err(e) => panic!("slot {slot}: {e}"),
        }
    }
    seqs
}

#[test]
fn record_format_matches_the_doc() {
    let r = traffic::record(0);
    assert_eq!(&r[0..4], b"DMTR");
    assert_eq!(
        u64::from_le_bytes(r[16..24].try_into().unwrap()),
        0xe220_a839_7b1d_cdaf
    );
    assert_eq!(traffic::check(&r, 0, 4), Ok(Some(0)));
    assert!(traffic::check(&r, 1, 4).is_err());
    let mut bad = traffic::record(5);
    bad[40] ^= 1;
    assert!(traffic::check(&bad, 1, 4).is_err());
    assert_eq!(traffic::check(&[0; 64], 3, 4), Ok(None));
}

#[test]
fn traffic_records_are_verifiable_paced_and_wrap() {
    let (d, bus) = setup(4);
    // 16 records, 200/s
    w64(&d, TRAFFIC_BASE, WIN);
    w64(&d, TRAFFIC_SIZE, 16 * 64);
    w32(&d, TRAFFIC_RATE, 200);
    let t = Instant::now();
    w32(&d, TRAFFIC_CTRL, TRAFFIC_ENABLE);
    // Wait for 20 records (more than the window) however slowly the machine schedules the worker
    // (no lower bound on the rate is asserted: that would be timing), then
    // check the pacing: never more than the rate allows (+2 for the first
    // and the read racing the next).
    wait_for("20 records (a wrap)", || r64(&d, TRAFFIC_COUNT) >= 20);
    let n = r64(&d, TRAFFIC_COUNT);
    let el = t.elapsed().as_secs_f64();
    assert!(
        n as f64 <= el * 200.0 + 2.0,
        "{n} records in {el} s at 200/s"
    );
    assert!(r32(&d, STATUS) & STATUS_TRAFFIC_ACTIVE != 0);
    w32(&d, TRAFFIC_CTRL, 0);
    wait_for("not busy", || r32(&d, STATUS) & STATUS_BUSY == 0);
    let n = r64(&d, TRAFFIC_COUNT);
    assert_eq!(r64(&d, TRAFFIC_SEQ), n);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r64(&d, TRAFFIC_COUNT), n);
    // every slot is a valid record; the newest are n-16..n
    let mut seqs = records_in(&bus, WIN, 16);
    seqs.sort();
    let want: Vec<u64> = (n - 16..n).collect();
    assert_eq!(seqs, want);
    // nothing outside the window
    assert!(bus.get(WIN + 16 * 64, 64).iter().all(|&b| b == 0));
    // one traffic interrupt per pass over the window
    wait_for("traffic interrupts", || bus.irq_count(2) as u64 == n / 16);
    // TRAFFIC_SEQ is writable while disabled; the stream restarts there
    w64(&d, TRAFFIC_SEQ, 1000);
    w32(&d, TRAFFIC_RATE, 0);
    w32(&d, TRAFFIC_CTRL, TRAFFIC_ENABLE);
    wait_for("as fast as possible", || r64(&d, TRAFFIC_COUNT) >= n + 5000);
    // ignored while enabled
    w64(&d, TRAFFIC_SEQ, 0);
    w32(&d, TRAFFIC_CTRL, 0);
    // at most the record in flight completes
    wait_for("not busy", || r32(&d, STATUS) & STATUS_BUSY == 0);
    let s = r64(&d, TRAFFIC_SEQ);
    assert!(s >= 6000, "seq {s}");
    let mut seqs = records_in(&bus, WIN, 16);
    seqs.sort();
    assert_eq!(seqs, (s - 16..s).collect::<Vec<u64>>());
}

#[test]
fn pacing_clock_counts_due_records() {
    let t0 = Instant::now();
    let mut c = traffic::Clock::new(t0);
    assert_eq!(c.due(1000), t0);
    assert_eq!(c.due_by(t0, 1000), 1);
    assert_eq!(c.due_by(t0 + Duration::from_millis(10), 1000), 11);
    c.done = 11;
    assert_eq!(c.due(1000), t0 + Duration::from_millis(11));
    assert_eq!(c.due_by(t0 + Duration::from_millis(10), 1000), 0);
    assert_eq!(c.due_by(t0 + Duration::from_secs(1), 1), 0);
    c.done = 1;
    assert_eq!(c.due_by(t0 + Duration::from_secs(3), 1), 3);
}

#[test]
fn traffic_and_ring_share_the_worker() {
    let (d, bus) = setup(64);
    start_traffic(&d, WIN, 64 * 64, 0);
    for i in 0..40 {
        post(&bus, i, copy(SRC, DST + i as u64 * 16, 16, 0));
    }
    w32(&d, RING_TAIL, 40);
    wait_for("the ring among traffic", || r32(&d, COMPLETED) == 40);
    w32(&d, TRAFFIC_CTRL, 0);
    assert!(r64(&d, TRAFFIC_COUNT) > 0);
    records_in(&bus, WIN, 64);
}

#[test]
fn traffic_fault_stops_the_stream() {
    let (d, bus) = setup(4);
    bus.holes.lock().push((WIN + 5 * 64, WIN + 6 * 64));
    start_traffic(&d, WIN, 8 * 64, 0);
    wait_for("the fault", || r32(&d, ERROR_CODE) != 0);
    assert_eq!(r32(&d, ERROR_CODE), 1 | 5 << 8 | ERROR_WRITE);
    assert_eq!(r64(&d, ERROR_ADDR), WIN + 5 * 64);
    assert_eq!(r32(&d, TRAFFIC_CTRL), 0);
    assert_eq!(r64(&d, TRAFFIC_SEQ), 5);
    assert_eq!(r64(&d, TRAFFIC_COUNT), 5);
    assert_eq!(records_in(&bus, WIN, 8), vec![0, 1, 2, 3, 4]);
    // enabling again rewrites record 5
    bus.holes.lock().clear();
    w32(&d, TRAFFIC_CTRL, TRAFFIC_ENABLE);
    wait_for("more", || r64(&d, TRAFFIC_COUNT) >= 8);
    w32(&d, TRAFFIC_CTRL, 0);
    assert_eq!(records_in(&bus, WIN, 8).len(), 8);
}

#[test]
fn bus_master_off_blocks_dma() {
    let (d, bus) = setup(4);
    d.set_bus_master(false);
    assert_eq!(r32(&d, STATUS) & STATUS_BUS_MASTER, 0);
    let calls = bus.dma_calls.load(Ordering::SeqCst);
    post(&bus, 0, copy(SRC, DST, 8, 0));
    w32(&d, RING_TAIL, 1);
    start_traffic(&d, WIN, 64 * 4, 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(bus.dma_calls.load(Ordering::SeqCst), calls);
    assert_eq!(r32(&d, COMPLETED), 0);
    d.set_bus_master(true);
    wait_for("the copy", || r32(&d, COMPLETED) == 1);
    wait_for("traffic", || r64(&d, TRAFFIC_COUNT) > 0);
    // turning it off returns only when no DMA is in flight
    bus.delay_ms.store(30, Ordering::SeqCst);
    wait_for("a slow DMA", || bus.in_dma.load(Ordering::SeqCst));
    d.set_bus_master(false);
    assert!(!bus.in_dma.load(Ordering::SeqCst));
    let calls = bus.dma_calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(bus.dma_calls.load(Ordering::SeqCst), calls);
}

#[test]
fn stop_quiesces_and_resume_continues() {
    let (d, bus) = setup(8);
    bus.delay_ms.store(100, Ordering::SeqCst);
    post(&bus, 0, copy(SRC, DST, 8, FLAG_INTERRUPT));
    post(&bus, 1, copy(SRC, DST + 8, 8, FLAG_INTERRUPT));
    bus.put(SRC, &[5; 8]);
    w32(&d, RING_TAIL, 2);
    wait_for("descriptor 0 in flight", || {
        bus.in_dma.load(Ordering::SeqCst)
    });
    d.set_running(false);
    // the descriptor in flight finished entirely before stop returned
    assert!(!bus.in_dma.load(Ordering::SeqCst));
    let calls = bus.dma_calls.load(Ordering::SeqCst);
    let irqs = bus.irqs.lock().len();
    assert_eq!(r32(&d, STATUS) & STATUS_STOPPED, STATUS_STOPPED);
    bus.delay_ms.store(0, Ordering::SeqCst);
    // MMIO still served; a doorbell rung meanwhile waits
    w32(&d, SCRATCH, 7);
    assert_eq!(r32(&d, SCRATCH), 7);
    post(&bus, 2, copy(SRC, DST + 16, 8, 0));
    w32(&d, RING_TAIL, 3);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(bus.dma_calls.load(Ordering::SeqCst), calls);
    assert_eq!(bus.irqs.lock().len(), irqs);
    let done = r32(&d, COMPLETED);
    assert!(done <= 2);
    d.set_running(true);
    wait_for("3", || r32(&d, COMPLETED) == 3);
    assert_eq!(bus.get(DST, 24), [5; 24]);
    wait_for("2 interrupts", || bus.irq_count(0) == 2);
}

#[test]
fn save_and_load_continue_the_traffic_stream() {
    let bus = FakeBus::new();
    let p = Params::parse(&params(&[
        ("traffic_iova", &format!("{WIN:#x}")),
        ("traffic_size", "0x10000"),
        ("rate", "2000"),
    ]))
    .unwrap();
    let a = DmaEngine::new(p);
    a.connect(Some(bus.clone()));
    w64(&a, RING_BASE, RING);
    w32(&a, RING_SIZE, 16);
    w32(&a, SCRATCH, 0xabcd);
    w32(&a, INT_ENABLE, INT_TRAFFIC);
    a.set_bus_master(true);
    wait_for("some records", || r64(&a, TRAFFIC_COUNT) >= 20);
    a.set_running(false);
    let saved = a.save_state().unwrap();
    let at_stop = r64(&a, TRAFFIC_SEQ);
    // the source is stopped for good: nothing more from it
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r64(&a, TRAFFIC_SEQ), at_stop);
    // the destination: other power-on values, loaded state wins
    let b = DmaEngine::new(Params::default());
    b.set_running(false);
    b.load_state(&saved).unwrap();
    assert_eq!(b.regs(), a.regs());
    assert_eq!(b.save_state().unwrap(), saved);
    b.connect(Some(bus.clone()));
    b.set_bus_master(true);
    b.set_running(true);
    wait_for("more records", || r64(&b, TRAFFIC_COUNT) >= at_stop + 20);
    b.set_running(false);
    let end = r64(&b, TRAFFIC_SEQ);
    assert!(end < 1024, "the window of 1024 records wrapped");
    // every record 0..end exactly once, in its slot
    assert_eq!(records_in(&bus, WIN, 1024), (0..end).collect::<Vec<u64>>());
    assert_eq!(r32(&b, SCRATCH), 0xabcd);
    assert_eq!(r64(&b, TRAFFIC_COUNT), end);
    drop(a);
}

#[test]
fn state_rejects_what_it_did_not_write() {
    let d = DmaEngine::new(Params::default());
    let s = d.save_state().unwrap();
    assert_eq!(&s[..8], b"DMAESTAT");
    let errno = |r: crate::Result<()>| r.unwrap_err().errno().0;
    assert_eq!(errno(d.load_state(&s[..s.len() - 1])), libc::EINVAL);
    assert_eq!(errno(d.load_state(&[])), libc::EINVAL);
    let mut v2 = s.clone();
    v2[8] = 2;
    assert_eq!(errno(d.load_state(&v2)), libc::EINVAL);
    let mut long = s.clone();
    long.push(0);
    assert_eq!(errno(d.load_state(&long)), libc::EINVAL);
    // a RING_SIZE no device can have (offset: header 16 + 4*5 + 8 + 4 + 8)
    let mut bad = s.clone();
    bad[16 + 40..16 + 44].copy_from_slice(&(RING_SIZE_MAX + 1).to_le_bytes());
    assert_eq!(errno(d.load_state(&bad)), libc::EINVAL);
    d.load_state(&s).unwrap();
}

#[test]
fn reset_returns_to_power_on_values() {
    let p = Params::parse(&params(&[
        ("traffic_iova", "0x40000"),
        ("traffic_size", "0x1000"),
        ("rate", "10"),
        ("traffic", "off"),
    ]))
    .unwrap();
    let d = DmaEngine::new(p);
    let bus = FakeBus::new();
    d.connect(Some(bus.clone()));
    let power_on = d.regs();
    assert_eq!(power_on.traffic_base, 0x40000);
    assert_eq!(power_on.traffic_size, 0x1000);
    assert_eq!(power_on.traffic_rate, 10);
    assert_eq!(power_on.traffic_ctrl, 0);
    w32(&d, SCRATCH, 1);
    w64(&d, RING_BASE, 0x1000);
    w32(&d, RING_SIZE, 8);
    w32(&d, INT_ENABLE, INT_ALL);
    w64(&d, TRAFFIC_BASE, 0x8000);
    w32(&d, RING_TAIL, 99);
    assert_ne!(d.regs(), power_on);
    d.reset();
    assert_eq!(d.regs(), power_on);
    // through CONTROL.RESET too, which leaves bus mastering as it was;
    // a function-level reset turns it off (config space resets with it)
    d.set_bus_master(true);
    w32(&d, SCRATCH, 1);
    w32(&d, CONTROL, CONTROL_RESET | CONTROL_RING_ENABLE);
    assert_eq!(d.regs(), power_on);
    assert_eq!(r32(&d, CONTROL), 0);
    assert_ne!(r32(&d, STATUS) & STATUS_BUS_MASTER, 0);
    d.reset();
    assert_eq!(r32(&d, STATUS) & STATUS_BUS_MASTER, 0);
    // a reset waits for the DMA in flight and nothing of the old state follows
    d.set_bus_master(true);
    w64(&d, RING_BASE, RING);
    w32(&d, RING_SIZE, 8);
    post(&bus, 0, copy(SRC, DST, 8, FLAG_INTERRUPT));
    w32(&d, INT_ENABLE, INT_ALL);
    bus.delay_ms.store(50, Ordering::SeqCst);
    w32(&d, CONTROL, CONTROL_RING_ENABLE);
    w32(&d, RING_TAIL, 1);
    wait_for("in flight", || bus.in_dma.load(Ordering::SeqCst));
    d.reset();
    assert!(!bus.in_dma.load(Ordering::SeqCst));
    let calls = bus.dma_calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(bus.dma_calls.load(Ordering::SeqCst), calls);
    assert!(bus.irqs.lock().is_empty());
    assert_eq!(d.regs(), power_on);
}

#[test]
fn traffic_from_parameters_starts_with_bus_mastering_and_after_reset() {
    let d = crate::devices::create(
        "dma-engine",
        &params(&[("traffic_iova", &format!("{WIN:#x}")), ("rate", "0")]),
    )
    .unwrap();
    assert_eq!(d.kind(), "dma-engine");
    let bus = FakeBus::new();
    d.connect(Some(bus.clone()));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(bus.dma_calls.load(Ordering::SeqCst), 0);
    d.set_bus_master(true);
    // default window 4096 bytes: 64 records
    wait_for("a full window", || records_in(&bus, WIN, 64).len() == 64);
    d.set_bus_master(false);
    assert!(bus.get(WIN + 4096, 64).iter().all(|&b| b == 0));
    d.reset();
    let mut b = [0u8; 8];
    d.bar_read(0, TRAFFIC_SEQ, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0);
    d.bar_read(0, TRAFFIC_CTRL, &mut b[..4]);
    assert_eq!(b[0], 1);
    d.connect(None);
}

#[test]
fn parameters_are_checked() {
    let errno = |kv: &[(&str, &str)]| {
        crate::devices::create("dma-engine", &params(kv))
            .unwrap_err()
            .errno()
            .0
    };
    assert_eq!(errno(&[("bogus", "1")]), libc::EINVAL);
    assert_eq!(errno(&[("traffic_iova", "0x1001")]), libc::EINVAL);
    assert_eq!(errno(&[("traffic_iova", "zz")]), libc::EINVAL);
    assert_eq!(
        errno(&[("traffic_iova", "0"), ("traffic_size", "100")]),
        libc::EINVAL
    );
    assert_eq!(
        errno(&[("traffic_iova", "0"), ("traffic_size", "0")]),
        libc::EINVAL
    );
    assert_eq!(errno(&[("rate", "4294967296")]), libc::EINVAL);
    assert_eq!(errno(&[("traffic", "on")]), libc::EINVAL);
    assert_eq!(
        errno(&[("traffic", "maybe"), ("traffic_iova", "0")]),
        libc::EINVAL
    );
    assert_eq!(
        errno(&[
            ("traffic_iova", "0xffffffffffffffc0"),
            ("traffic_size", "128")
        ]),
        libc::EINVAL
    );
    assert_eq!(
        crate::devices::create("nope", &[]).unwrap_err().errno().0,
        libc::EINVAL
    );
    let p = Params::parse(&params(&[("traffic_iova", "4096"), ("traffic", "off")])).unwrap();
    assert_eq!(
        p.power_on,
        PowerOn {
            traffic_base: 4096,
            traffic_size: 4096,
            traffic_rate: DEFAULT_RATE,
            traffic_on: false
        }
    );
}

#[test]
fn worker_survives_a_panic_until_reset_and_disconnect_stops_it() {
    let (d, bus) = setup(8);
    bus.panic_next.store(true, Ordering::SeqCst);
    post(&bus, 0, copy(SRC, DST, 8, 0));
    w32(&d, RING_TAIL, 1);
    wait_for("the worker's death", || d.inner.st.lock().dead);
    assert_eq!(r32(&d, STATUS) & STATUS_BUSY, 0);
    assert_eq!(r32(&d, COMPLETED), 0);
    // MMIO still works; a reset brings the worker back
    assert_eq!(r32(&d, ID), ID_VALUE);
    d.reset();
    d.set_bus_master(true);
    w64(&d, RING_BASE, RING);
    w32(&d, RING_SIZE, 8);
    w32(&d, CONTROL, CONTROL_RING_ENABLE);
    w32(&d, RING_TAIL, 1);
    wait_for("the copy after reset", || r32(&d, COMPLETED) == 1);
    // disconnected: no worker, no DMA
    d.connect(None);
    assert!(d.worker.lock().is_none());
    post(&bus, 1, copy(SRC, DST, 8, 0));
    w32(&d, RING_TAIL, 2);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r32(&d, COMPLETED), 1);
    d.connect(Some(bus.clone()));
    wait_for("after reconnect", || r32(&d, COMPLETED) == 2);
}

/// A bus over a real domain: DMA through [`Domain::dma_read`]/`dma_write`.
#[derive(Debug)]
struct DomainBus {
    dom: Arc<dyn Domain>,
    irqs: Mutex<Vec<u16>>,
}

impl Bus for DomainBus {
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        self.dom.dma_read(iova, buf)
    }
    fn dma_write(&self, iova: u64, buf: &[u8]) -> Result<(), DmaFault> {
        self.dom.dma_write(iova, buf)
    }
    fn interrupt(&self, vector: u16) {
        self.irqs.lock().push(vector);
    }
}

#[test]
fn through_an_ioas_with_a_vtd_domain() {
    use crate::accounting::AccountMode;
    use crate::domain::{DirtyBitmap, Prot};
    use crate::ioas::Ioas;
    use crate::user::{page_size, SelfMemory};
    use crate::vtd::VtdDomain;

    let ps = page_size() as usize;
    let len = 64 * ps;
    let mut mem = vec![0u8; len + ps];
    let uva = (mem.as_mut_ptr() as u64).next_multiple_of(ps as u64);
    let off = (uva - mem.as_ptr() as u64) as usize;
    let ioas = Ioas::new(Arc::new(SelfMemory), AccountMode::None);
    let vtd = VtdDomain::new(48, true).unwrap();
    ioas.iopt().add_domain(vtd.clone()).unwrap();
    const IOVA: u64 = 0x4000_0000;
    ioas.map_user(uva, len as u64, Some(IOVA), Prot::RW)
        .unwrap();
    vtd.set_dirty_tracking(true).unwrap();
    let bus = Arc::new(DomainBus {
        dom: vtd.clone(),
        irqs: Mutex::new(Vec::new()),
    });
    let d = DmaEngine::new(Params::default());
    d.connect(Some(bus.clone()));
    d.set_bus_master(true);
    // a copy from page 1 to page 2 with the ring in page 0
    mem[off + ps..off + ps + 100].copy_from_slice(&[0x5a; 100]);
    let desc = copy(IOVA + ps as u64, IOVA + 2 * ps as u64, 100, FLAG_INTERRUPT);
    mem[off..off + 32].copy_from_slice(&desc.to_bytes());
    w64(&d, RING_BASE, IOVA);
    w32(&d, RING_SIZE, 4);
    w32(&d, INT_ENABLE, INT_ALL);
    w32(&d, CONTROL, CONTROL_RING_ENABLE);
    w32(&d, RING_TAIL, 1);
    wait_for("the copy", || r32(&d, COMPLETED) == 1);
    // SAFETY: volatile reads of our own buffer the device wrote through
    // its host address.
    let rd = |i: usize| unsafe { std::ptr::read_volatile(mem.as_ptr().add(i)) };
    assert!((0..100).all(|i| rd(off + 2 * ps + i) == 0x5a));
    assert_eq!(u16::from_le_bytes([rd(off + 2), rd(off + 3)]), STATUS_OK);
    wait_for("its interrupt", || bus.irqs.lock().contains(&0));
    // traffic into pages 8..16, then the IOVA is unmapped under it
    start_traffic(&d, IOVA + 8 * ps as u64, 8 * ps as u64, 0);
    let per_window = (8 * ps / 64) as u64;
    wait_for("a window of records", || {
        r64(&d, TRAFFIC_COUNT) >= per_window
    });
    // the device's writes are dirty in the domain
    let mut words = vec![0u64; 1];
    let mut bm = DirtyBitmap::new(
        IOVA,
        IOVA + 64 * ps as u64 - 1,
        ps.trailing_zeros(),
        &mut words,
    );
    vtd.read_and_clear_dirty(IOVA, 64 * ps as u64, true, Some(&mut bm))
        .unwrap();
    assert_eq!(
        words[0] & 0xffff,
        0xff05,
        "ring page (status), page 2, pages 8..16"
    );
    ioas.unmap(IOVA, len as u64).unwrap();
    wait_for("the traffic fault", || r32(&d, TRAFFIC_CTRL) == 0);
    assert_eq!(r32(&d, ERROR_CODE) & 0xffff, 1 | 5 << 8);
    let fault = r64(&d, ERROR_ADDR);
    assert!((IOVA + 8 * ps as u64..IOVA + 16 * ps as u64).contains(&fault));
    // every slot the device wrote holds a valid record
    let win: Vec<u8> = (0..8 * ps).map(|i| rd(off + 8 * ps + i)).collect();
    for slot in 0..per_window {
        let r = &win[(slot * 64) as usize..(slot * 64 + 64) as usize];
        assert!(traffic::check(r, slot, per_window).unwrap().is_some());
    }
    d.connect(None);
    drop(mem);
}

#[test]
fn a_forked_child_has_no_worker_and_does_not_hang() {
    let (d, bus) = setup(4);
    post(&bus, 0, copy(SRC, DST, 8, 0));
    w32(&d, RING_TAIL, 1);
    wait_for("the copy", || r32(&d, COMPLETED) == 1);
    // SAFETY: the child only touches the device (its lock is free: the
    // worker is idle, waiting on the condition variable) and exits with
    // _exit; an alarm ends it if anything hangs.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: in the child: alarm and _exit are async-signal-safe.
        unsafe { libc::alarm(5) };
        let ok = r32(&d, ID) == ID_VALUE && {
            // no worker here: a doorbell does nothing, disconnecting
            // does not wait for the parent's thread, reset starts none
            post(&bus, 1, copy(SRC, DST + 8, 8, 0));
            w32(&d, RING_TAIL, 2);
            std::thread::sleep(Duration::from_millis(30));
            let idle = r32(&d, COMPLETED) == 1;
            d.reset();
            d.connect(None);
            idle && r32(&d, COMPLETED) == 0
        };
        // SAFETY: leaving the child without running the parent's
        // destructors or test harness.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(st), "child status {st:#x}");
    assert_eq!(libc::WEXITSTATUS(st), 0);
    // the parent's device still works
    post(&bus, 1, copy(SRC, DST + 8, 8, 0));
    w32(&d, RING_TAIL, 2);
    wait_for("the parent's copy", || r32(&d, COMPLETED) == 2);
}

/// A bus whose interrupt callback calls back into the device.
#[derive(Debug)]
struct CallbackBus {
    mem: Arc<FakeBus>,
    dev: Mutex<std::sync::Weak<DmaEngine>>,
    /// What the callback does: 1 reset, 2 disconnect.
    action: AtomicU64,
    calls: AtomicU64,
}

impl Bus for CallbackBus {
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        self.mem.dma_read(iova, buf)
    }
    fn dma_write(&self, iova: u64, buf: &[u8]) -> Result<(), DmaFault> {
        self.mem.dma_write(iova, buf)
    }
    fn interrupt(&self, vector: u16) {
        self.mem.interrupt(vector);
        self.calls.fetch_add(1, Ordering::SeqCst);
        let Some(d) = self.dev.lock().upgrade() else {
            return;
        };
        match self.action.load(Ordering::SeqCst) {
            1 => d.reset(),
            2 => d.connect(None),
            // the callback's reference is the last one: dropped here
            3 => *self.dev.lock() = std::sync::Weak::new(),
            _ => {}
        }
        drop(d);
    }
}

#[test]
fn calls_back_from_the_bus_do_not_deadlock() {
    let mem = FakeBus::new();
    let bus = Arc::new(CallbackBus {
        mem: mem.clone(),
        dev: Mutex::new(std::sync::Weak::new()),
        action: AtomicU64::new(1),
        calls: AtomicU64::new(0),
    });
    let d = Arc::new(DmaEngine::new(Params::default()));
    *bus.dev.lock() = Arc::downgrade(&d);
    let power_on = d.regs();
    d.connect(Some(bus.clone()));
    d.set_bus_master(true);
    let start = |d: &DmaEngine| {
        // (a function-level reset turned bus mastering off)
        d.set_bus_master(true);
        w64(d, RING_BASE, RING);
        w32(d, RING_SIZE, 4);
        w32(d, INT_ENABLE, INT_ALL);
        w32(d, CONTROL, CONTROL_RING_ENABLE);
        w32(d, RING_TAIL, 1);
    };
    post(&mem, 0, copy(SRC, DST, 8, FLAG_INTERRUPT));
    start(&d);
    // the completion interrupt resets the device from the worker
    wait_for("the callback", || bus.calls.load(Ordering::SeqCst) == 1);
    wait_for("the reset", || d.regs() == power_on);
    // it still works; now the callback disconnects it
    bus.action.store(2, Ordering::SeqCst);
    start(&d);
    wait_for("the second callback", || {
        bus.calls.load(Ordering::SeqCst) == 2
    });
    wait_for("the worker's exit", || {
        d.worker
            .lock()
            .as_ref()
            .is_none_or(|w| w.handle.is_finished())
    });
    let calls = mem.dma_calls.load(Ordering::SeqCst);
    w32(&d, RING_TAIL, 2);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(mem.dma_calls.load(Ordering::SeqCst), calls);
    // reconnected: a new worker takes over
    bus.action.store(0, Ordering::SeqCst);
    post(&mem, 1, copy(SRC, DST, 8, FLAG_INTERRUPT));
    d.connect(Some(bus.clone()));
    wait_for("the copy after reconnecting", || r32(&d, COMPLETED) == 2);
    // the last reference dropped on the worker itself does not hang
    bus.action.store(3, Ordering::SeqCst);
    post(&mem, 2, copy(SRC, DST, 8, FLAG_INTERRUPT));
    w32(&d, RING_TAIL, 3);
    let weak = Arc::downgrade(&d);
    drop(d);
    wait_for("the device's drop", || weak.strong_count() == 0);
}
