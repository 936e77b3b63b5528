//! Migration over a fake device whose state is a counter that advances
//! only while it runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::v1::{self, NDMA, RESUMING, RUNNING, SAVING};
use super::*;
use crate::files::NoFds;
use crate::user::SelfMemory;
use crate::vfio::model::{Bus, PciIds, PciLayout};

#[derive(Debug, Default)]
struct Counter {
    value: AtomicU64,
    running: AtomicBool,
    stops: AtomicU64,
}

impl Counter {
    fn new(v: u64) -> Arc<Counter> {
        let c = Counter::default();
        c.value.store(v, Ordering::SeqCst);
        c.running.store(true, Ordering::SeqCst);
        Arc::new(c)
    }
    /// What a running device does: change its state.
    fn tick(&self) {
        if self.running.load(Ordering::SeqCst) {
            self.value.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl PciModel for Counter {
    fn kind(&self) -> &'static str {
        "counter"
    }
    fn layout(&self) -> PciLayout {
        PciLayout {
            ids: PciIds {
                vendor: 1,
                device: 2,
                revision: 0,
                class: 0,
                subsystem_vendor: 0,
                subsystem_device: 0,
            },
            bars: [None; 6],
            intx_pin: 0,
            msi_vectors: 0,
            msix: None,
        }
    }
    fn bar_read(&self, _: u8, _: u64, _: &mut [u8]) {}
    fn bar_write(&self, _: u8, _: u64, _: &[u8]) {}
    fn connect(&self, _: Option<Arc<dyn Bus>>) {}
    fn reset(&self) {}
    fn set_running(&self, on: bool) {
        if !on {
            self.stops.fetch_add(1, Ordering::SeqCst);
        }
        self.running.store(on, Ordering::SeqCst);
    }
    fn save_state(&self) -> Result<Vec<u8>> {
        Ok(self.value.load(Ordering::SeqCst).to_le_bytes().to_vec())
    }
    fn load_state(&self, data: &[u8]) -> Result<()> {
        let v: [u8; 8] = data
            .try_into()
            .map_err(|_| crate::err!(EINVAL, "counter state is 8 bytes"))?;
        self.value.store(u64::from_le_bytes(v), Ordering::SeqCst);
        Ok(())
    }
}

const ALL: u32 = MIGRATION_STOP_COPY | MIGRATION_P2P | MIGRATION_PRE_COPY;

fn read_all(f: &Arc<dyn EngineFile>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = f.read(&mut buf, true)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn v2_stop_copy_and_resume() {
    let src = Counter::new(41);
    let m = Migration::new(src.clone(), ALL);
    assert_eq!(m.state(), MigState::Running);
    assert!(m.data_size().unwrap() > 0);
    let f = m
        .set_state(MigState::StopCopy as u32)
        .unwrap()
        .expect("a data fd");
    assert_eq!(m.state(), MigState::StopCopy);
    assert!(!src.running.load(Ordering::SeqCst));
    src.tick(); // stopped: no change
    let data = read_all(&f).unwrap();
    assert!(m.set_state(MigState::Stop as u32).unwrap().is_none());
    assert_eq!(
        f.read(&mut [0u8; 4], true).unwrap_err().errno().0,
        libc::ENODEV
    );

    let dst = Counter::new(0);
    let d = Migration::new(dst.clone(), ALL);
    let w = d
        .set_state(MigState::Resuming as u32)
        .unwrap()
        .expect("a data fd");
    assert!(!dst.running.load(Ordering::SeqCst));
    for c in data.chunks(5) {
        assert_eq!(w.write(c).unwrap(), c.len());
    }
    assert!(d.set_state(MigState::Running as u32).unwrap().is_none());
    assert_eq!(dst.value.load(Ordering::SeqCst), 41);
    assert!(dst.running.load(Ordering::SeqCst));
}

#[test]
fn v2_precopy_then_stop_copy_on_the_same_fd() {
    let src = Counter::new(7);
    let m = Migration::new(src.clone(), ALL);
    let f = m.set_state(MigState::PreCopy as u32).unwrap().unwrap();
    let info = |f: &Arc<dyn EngineFile>| -> Result<(u64, u64)> {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&24u32.to_le_bytes());
        f.ioctl(
            VFIO_MIG_GET_PRECOPY_INFO,
            b.as_mut_ptr() as u64,
            &SelfMemory,
            &NoFds,
        )?;
        Ok((
            u64::from_le_bytes(b[8..16].try_into().unwrap()),
            u64::from_le_bytes(b[16..24].try_into().unwrap()),
        ))
    };
    assert_eq!(info(&f).unwrap(), (24, 0));
    let mut buf = [0u8; 4096];
    assert_eq!(f.read(&mut buf, true).unwrap(), 24);
    assert_eq!(info(&f).unwrap(), (0, 0));
    assert_eq!(f.read(&mut buf, true).unwrap_err().errno().0, libc::ENOMSG);
    src.tick();
    // PRE_COPY -> PRE_COPY_P2P -> STOP_COPY: no new fd, the final record
    // follows on the same one.
    assert!(m.set_state(MigState::StopCopy as u32).unwrap().is_none());
    assert_eq!(info(&f).unwrap_err().errno().0, libc::EINVAL);
    let rest = read_all(&f).unwrap();
    assert_eq!(rest.len(), 24);
    let mut r = stream::Receiver::default();
    r.push(&buf[..24]).unwrap();
    r.push(&rest).unwrap();
    assert_eq!(r.finish().unwrap(), 8u64.to_le_bytes());
    // Cancel from pre-copy goes back to running and kills the fd.
    let m = Migration::new(Counter::new(1), ALL);
    let f = m.set_state(MigState::PreCopy as u32).unwrap().unwrap();
    m.set_state(MigState::Running as u32).unwrap();
    assert_eq!(f.read(&mut buf, true).unwrap_err().errno().0, libc::ENODEV);
}

#[test]
fn v2_refusals_keep_the_state() {
    let m = Migration::new(Counter::new(1), MIGRATION_STOP_COPY);
    for bad in [
        MigState::Error as u32,
        8,
        u32::MAX,
        MigState::PreCopy as u32,
    ] {
        assert_eq!(m.set_state(bad).unwrap_err().errno().0, libc::EINVAL);
        assert_eq!(m.state(), MigState::Running);
    }
    // A resume with no final state fails and stays RESUMING.
    let w = m.set_state(MigState::Resuming as u32).unwrap().unwrap();
    w.write(&stream::record(stream::KIND_PRECOPY, b"x"))
        .unwrap();
    assert!(m.set_state(MigState::Running as u32).is_err());
    assert_eq!(m.state(), MigState::Resuming);
    assert!(w.write(b"garbage!garbage!garbage!").is_err());
    m.reset();
    assert_eq!(m.state(), MigState::Running);
    assert_eq!(w.write(b"x").unwrap_err().errno().0, libc::ENODEV);
}

fn rd(m: &Migration, off: u64, size: usize) -> u64 {
    let mut b = [0u8; 8];
    m.v1_read(off, &mut b[..size]).unwrap();
    u64::from_le_bytes(b)
}

fn wr(m: &Migration, off: u64, size: usize, v: u64) -> Result<()> {
    m.v1_write(off, &v.to_le_bytes()[..size])
}

/// QEMU 7.2's source side: collect chunks while pending_bytes > 0.
fn v1_collect(m: &Migration, out: &mut Vec<u8>) {
    while rd(m, 8, 8) > 0 {
        let off = rd(m, 16, 8);
        let size = rd(m, 24, 8);
        assert_eq!(off, v1::WINDOW);
        let mut i = 0;
        while i < size {
            let n = (size - i).min(8) as usize;
            let mut b = [0u8; 8];
            m.v1_read(off + i, &mut b[..n]).unwrap();
            out.extend_from_slice(&b[..n]);
            i += n as u64;
        }
    }
}

#[test]
fn v1_qemu_sequence_with_ndma() {
    let src = Counter::new(100);
    let m = Migration::new(src.clone(), ALL);
    assert_eq!(rd(&m, 0, 4) as u32, RUNNING);
    // Pre-copy: RUNNING -> RUNNING|SAVING, the device keeps running.
    wr(&m, 0, 4, u64::from(RUNNING | SAVING)).unwrap();
    assert!(src.running.load(Ordering::SeqCst));
    let mut stream_bytes = Vec::new();
    v1_collect(&m, &mut stream_bytes);
    src.tick();
    // NDMA quiesces the device while it is still RUNNING.
    wr(&m, 0, 4, u64::from(RUNNING | SAVING | NDMA)).unwrap();
    assert!(!src.running.load(Ordering::SeqCst));
    // Stop-and-copy.
    wr(&m, 0, 4, u64::from(SAVING)).unwrap();
    v1_collect(&m, &mut stream_bytes);
    assert_eq!(rd(&m, 8, 8), 0);
    wr(&m, 0, 4, 0).unwrap();
    assert_eq!(m.state(), MigState::Stop);

    // Destination: reset, RESUMING, data through the window, RUNNING.
    let dst = Counter::new(0);
    let d = Migration::new(dst.clone(), ALL);
    d.reset();
    wr(&d, 0, 4, u64::from(RESUMING)).unwrap();
    for c in stream_bytes.chunks(10) {
        let off = rd(&d, 16, 8);
        for (i, b) in c.iter().enumerate() {
            d.v1_write(off + i as u64, &[*b]).unwrap();
        }
        wr(&d, 24, 8, c.len() as u64).unwrap();
    }
    wr(&d, 0, 4, u64::from(RUNNING)).unwrap();
    assert_eq!(dst.value.load(Ordering::SeqCst), 101);
    assert!(dst.running.load(Ordering::SeqCst));
}

#[test]
fn v1_refusals_and_error_state() {
    let m = Migration::new(Counter::new(1), ALL);
    for bad in [SAVING | RESUMING, RESUMING | RUNNING, 1 << 4, v1::ERROR] {
        assert!(wr(&m, 0, 4, u64::from(bad)).is_err(), "{bad:#x}");
        assert_eq!(rd(&m, 0, 4) as u32, RUNNING);
    }
    assert!(m.v1_read(0, &mut [0u8; 2]).is_err());
    assert!(wr(&m, 8, 8, 1).is_err());
    assert!(wr(&m, 24, 8, 1).is_err()); // not resuming
                                        // A resume whose data does not load ends in ERROR, left only by reset.
    wr(&m, 0, 4, u64::from(RESUMING)).unwrap();
    m.v1_write(v1::WINDOW, b"not a record hdr").unwrap();
    wr(&m, 24, 8, 16).unwrap_err();
    wr(&m, 0, 4, u64::from(RUNNING)).unwrap_err();
    assert_eq!(rd(&m, 0, 4) as u32, v1::ERROR);
    assert!(wr(&m, 0, 4, u64::from(RUNNING)).is_err());
    m.reset();
    assert_eq!(rd(&m, 0, 4) as u32, RUNNING);
    assert_eq!(m.state(), MigState::Running);
}
