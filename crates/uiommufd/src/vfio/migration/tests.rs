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
        PciLayout::new(PciIds::new(1, 2, 0))
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

/// `VFIO_MIG_GET_PRECOPY_INFO` on `f` with `flags` passed in: the struct
/// as it came back.
fn precopy_info(f: &Arc<dyn EngineFile>, flags: u32) -> Result<[u8; 24]> {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&24u32.to_le_bytes());
    b[4..8].copy_from_slice(&flags.to_le_bytes());
    f.ioctl(
        VFIO_MIG_GET_PRECOPY_INFO,
        b.as_mut_ptr() as u64,
        &SelfMemory,
        &NoFds,
    )?;
    Ok(b)
}

#[test]
fn v2_precopy_then_stop_copy_on_the_same_fd() {
    let src = Counter::new(7);
    let m = Migration::new(src.clone(), ALL);
    let f = m.set_state(MigState::PreCopy as u32).unwrap().unwrap();
    let info = |f: &Arc<dyn EngineFile>| -> Result<(u64, u64)> {
        let b = precopy_info(f, 0)?;
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

mod features {
    use super::*;
    use crate::vfio::migration::dma_log::DmaLog;
    use crate::vfio::migration::feature::*;
    use std::sync::Mutex as StdMutex;

    struct Dev {
        mig: Migration,
        log: DmaLog,
        files: StdMutex<Vec<Arc<dyn EngineFile>>>,
    }

    impl Dev {
        fn new() -> Dev {
            Dev {
                mig: Migration::new(Counter::new(5), ALL),
                log: DmaLog::default(),
                files: StdMutex::new(Vec::new()),
            }
        }
        fn call(&self, feature: u32, flags: u32, data: &mut [u8]) -> std::result::Result<i64, i32> {
            let new_fd = |f: Arc<dyn EngineFile>| -> Result<i32> {
                let mut v = self.files.lock().unwrap();
                v.push(f);
                Ok(100 + v.len() as i32 - 1)
            };
            device_feature(
                crate::uapi::level::UapiLevel::NEWEST,
                &self.mig,
                &self.log,
                feature,
                flags,
                data.as_mut_ptr() as u64,
                data.len(),
                &SelfMemory,
                &new_fd,
                &|_| {},
            )
            .expect("a migration feature")
            .map_err(|e| e.errno().0)
        }
    }

    #[test]
    fn migration_features_through_the_abi() {
        let d = Dev::new();
        let mut m = [0u8; 8];
        assert_eq!(d.call(MIGRATION, FEATURE_GET, &mut m), Ok(0));
        assert_eq!(u64::from_le_bytes(m), u64::from(ALL));
        assert_eq!(d.call(MIGRATION, FEATURE_SET, &mut m), Err(libc::EINVAL));
        assert_eq!(
            d.call(MIGRATION, FEATURE_PROBE | FEATURE_GET, &mut []),
            Ok(0)
        );
        assert_eq!(
            d.call(MIGRATION, FEATURE_GET, &mut [0u8; 4]),
            Err(libc::EINVAL)
        );
        assert_eq!(d.call(MIGRATION, 0, &mut m), Err(libc::EINVAL));
        let mut s = [0u8; 8];
        s[0..4].copy_from_slice(&(MigState::StopCopy as u32).to_le_bytes());
        assert_eq!(d.call(MIG_DEVICE_STATE, FEATURE_SET, &mut s), Ok(0));
        assert_eq!(i32::from_le_bytes(s[4..8].try_into().unwrap()), 100);
        s[0..4].copy_from_slice(&(MigState::Stop as u32).to_le_bytes());
        assert_eq!(d.call(MIG_DEVICE_STATE, FEATURE_SET, &mut s), Ok(0));
        assert_eq!(i32::from_le_bytes(s[4..8].try_into().unwrap()), -1);
        s[0..4].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(
            d.call(MIG_DEVICE_STATE, FEATURE_SET, &mut s),
            Err(libc::EINVAL)
        );
        assert_eq!(i32::from_le_bytes(s[4..8].try_into().unwrap()), -1);
        assert_eq!(d.call(MIG_DEVICE_STATE, FEATURE_GET, &mut s), Ok(0));
        assert_eq!(
            u32::from_le_bytes(s[0..4].try_into().unwrap()),
            MigState::Stop as u32
        );
        let mut sz = [0u8; 8];
        assert_eq!(d.call(MIG_DATA_SIZE, FEATURE_GET, &mut sz), Ok(0));
        assert_eq!(u64::from_le_bytes(sz), 24);
    }

    fn start(d: &Dev, page: u64, ranges: &[(u64, u64)], n: u32) -> std::result::Result<u64, i32> {
        let r: Vec<u8> = ranges
            .iter()
            .flat_map(|&(a, b)| a.to_le_bytes().into_iter().chain(b.to_le_bytes()))
            .collect();
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&page.to_le_bytes());
        c[8..12].copy_from_slice(&n.to_le_bytes());
        c[16..24].copy_from_slice(&(r.as_ptr() as u64).to_le_bytes());
        d.call(DMA_LOGGING_START, FEATURE_SET, &mut c)?;
        Ok(u64::from_le_bytes(c[0..8].try_into().unwrap()))
    }

    #[test]
    fn dma_logging_errnos() {
        let d = Dev::new();
        assert_eq!(start(&d, 4096, &[], 0), Err(libc::EINVAL));
        assert_eq!(start(&d, 4096, &[(0, 4096)], 257), Err(libc::E2BIG));
        assert_eq!(start(&d, 4096, &[(1, 4096)], 1), Err(libc::EINVAL));
        assert_eq!(
            start(&d, 4096, &[(u64::MAX - 4095, 8192)], 1),
            Err(libc::EOVERFLOW)
        );
        assert_eq!(
            start(&d, 4096, &[(0, 8192), (4096, 4096)], 2),
            Err(libc::EINVAL)
        );
        assert_eq!(start(&d, 4096, &[(0, 8192), (8192, 4096)], 2), Ok(4096));
        assert_eq!(start(&d, 4096, &[(0, 8192)], 1), Err(libc::EBUSY));
        d.log.record(0x2000, 8);
        let mut bm = [0u64; 1];
        let bm_addr = bm.as_mut_ptr() as u64;
        let mut r = [0u8; 32];
        let put = |r: &mut [u8; 32], page: u64| {
            r[0..8].copy_from_slice(&0u64.to_le_bytes());
            r[8..16].copy_from_slice(&0x3000u64.to_le_bytes());
            r[16..24].copy_from_slice(&page.to_le_bytes());
            r[24..32].copy_from_slice(&bm_addr.to_le_bytes());
        };
        put(&mut r, 2048);
        assert_eq!(
            d.call(DMA_LOGGING_REPORT, FEATURE_GET, &mut r),
            Err(libc::EINVAL)
        );
        put(&mut r, 4096);
        assert_eq!(
            d.call(DMA_LOGGING_REPORT, FEATURE_SET, &mut r),
            Err(libc::EINVAL)
        );
        assert_eq!(d.call(DMA_LOGGING_REPORT, FEATURE_GET, &mut r), Ok(0));
        assert_eq!(bm[0], 0b100);
        assert_eq!(d.call(DMA_LOGGING_STOP, FEATURE_SET, &mut []), Ok(0));
        assert_eq!(
            d.call(DMA_LOGGING_REPORT, FEATURE_GET, &mut r),
            Err(libc::EINVAL)
        );
    }
}

/// A fresh device brought to `s` (every state but ERROR is reachable from
/// RUNNING; a RESUMING one has received nothing).
fn device_in(s: MigState) -> (Arc<Counter>, Migration) {
    let c = Counter::new(3);
    let m = Migration::new(c.clone(), ALL);
    if s != MigState::Running {
        m.set_state(s as u32).unwrap();
    }
    (c, m)
}

#[test]
fn v2_every_pair_of_states_through_the_device() {
    // every state a device can be put in (ERROR only as a target)
    let states = &MigState::ALL[1..];
    assert!(!states.contains(&MigState::Error));
    let good = stream::record(stream::KIND_FINAL, &9u64.to_le_bytes());
    for &from in states {
        for to in states.iter().copied().chain([MigState::Error]) {
            let (c, m) = device_in(from);
            let r = m.set_state(to as u32);
            let blocked = to == MigState::Error
                || (from == MigState::StopCopy
                    && matches!(to, MigState::PreCopy | MigState::PreCopyP2p))
                || (from == MigState::Resuming && to != MigState::Resuming);
            if blocked {
                // Refused outright, or (leaving RESUMING with no data)
                // refused by the device: the state is where the walk stopped.
                assert!(r.is_err(), "{from:?} -> {to:?}");
                assert_eq!(r.unwrap_err().errno().0, libc::EINVAL);
                assert_eq!(m.state(), from, "{from:?} -> {to:?}");
            } else {
                let f = r.unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e}"));
                assert_eq!(m.state(), to);
                // A data fd exactly when the last arc opens a session.
                let opens = matches!(
                    (from, to),
                    (f0, MigState::StopCopy) if !matches!(f0, MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy)
                ) || matches!(
                    (from, to),
                    (f0, MigState::PreCopy | MigState::PreCopyP2p)
                        if !matches!(f0, MigState::PreCopy | MigState::PreCopyP2p)
                ) || (to == MigState::Resuming && from != MigState::Resuming);
                assert_eq!(f.is_some(), opens, "{from:?} -> {to:?}");
                assert_eq!(
                    c.running.load(Ordering::SeqCst),
                    to.operational(),
                    "{from:?} -> {to:?}"
                );
            }
        }
        // Leaving RESUMING with a complete stream works to every state
        // but the blocked ones.
        if from == MigState::Resuming {
            for to in [
                MigState::Stop,
                MigState::Running,
                MigState::StopCopy,
                MigState::PreCopy,
            ] {
                let (c, m) = device_in(MigState::Stop);
                let w = m.set_state(MigState::Resuming as u32).unwrap().unwrap();
                w.write(&good).unwrap();
                m.set_state(to as u32).unwrap();
                assert_eq!(m.state(), to);
                assert_eq!(c.value.load(Ordering::SeqCst), 9);
            }
        }
    }
}

#[test]
fn v1_every_transition_between_valid_states() {
    let valid = [
        0,
        RUNNING,
        SAVING,
        RUNNING | SAVING,
        RESUMING,
        NDMA,
        RUNNING | NDMA,
        SAVING | NDMA,
        RUNNING | SAVING | NDMA,
        RESUMING | NDMA,
    ];
    let good = stream::record(stream::KIND_FINAL, &5u64.to_le_bytes());
    for from in valid {
        for to in 0..16u32 {
            let c = Counter::new(1);
            let m = Migration::new(c.clone(), ALL);
            wr(&m, 0, 4, u64::from(from)).unwrap();
            if from & RESUMING != 0 {
                let off = rd(&m, 16, 8);
                for (i, b) in good.iter().enumerate() {
                    m.v1_write(off + i as u64, &[*b]).unwrap();
                }
                wr(&m, 24, 8, good.len() as u64).unwrap();
            }
            // RESUMING goes with neither SAVING nor RUNNING.
            let ok = to & RESUMING == 0 || to & (SAVING | RUNNING) == 0;
            let r = wr(&m, 0, 4, u64::from(to));
            assert_eq!(r.is_ok(), ok, "{from:#x} -> {to:#x}");
            let now = rd(&m, 0, 4) as u32;
            if ok {
                assert_eq!(now, to);
                let runs = to & RUNNING != 0 && to & NDMA == 0;
                assert_eq!(
                    c.running.load(Ordering::SeqCst),
                    runs,
                    "{from:#x} -> {to:#x}"
                );
                if from & RESUMING != 0 && to & RESUMING == 0 {
                    assert_eq!(c.value.load(Ordering::SeqCst), 5, "{from:#x} -> {to:#x}");
                }
            } else {
                assert_eq!(r.unwrap_err().errno().0, libc::EINVAL);
                assert_eq!(now, from, "a refused write keeps {from:#x}");
            }
        }
    }
}

/// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` (7.1): before it the precopy
/// info echoes the caller's `flags`; after the SET they are output (0: no
/// new initial data); a device without PRE_COPY refuses it even as a probe;
/// below 7.1 it is not a feature at all.
#[test]
fn precopy_info_v2_opt_in() {
    use crate::uapi::level::UapiLevel;
    use crate::vfio::migration::dma_log::DmaLog;
    use crate::vfio::migration::feature::*;
    let m = Migration::new(Counter::new(3), ALL);
    let log = DmaLog::default();
    let feat = |m: &Migration, level, flags| {
        device_feature(
            level,
            m,
            &log,
            MIG_PRECOPY_INFO_V2,
            flags,
            0,
            0,
            &SelfMemory,
            &|_| Ok(-1),
            &|_| {},
        )
        .map(|r| r.map_err(|e| e.errno().0))
    };
    let f = m.set_state(MigState::PreCopy as u32).unwrap().unwrap();
    let flags_out = |f: &Arc<dyn EngineFile>| {
        let b = precopy_info(f, 0xf0).unwrap();
        u32::from_le_bytes(b[4..8].try_into().unwrap())
    };
    assert_eq!(flags_out(&f), 0xf0, "v1: the caller's flags come back");
    assert_eq!(
        feat(&m, UapiLevel::V7_0, FEATURE_SET),
        None,
        "not a 7.0 feature"
    );
    assert_eq!(
        feat(&m, UapiLevel::V7_1, FEATURE_GET),
        Some(Err(libc::EINVAL))
    );
    assert_eq!(
        feat(&m, UapiLevel::V7_1, FEATURE_PROBE | FEATURE_SET),
        Some(Ok(0))
    );
    assert_eq!(flags_out(&f), 0xf0, "a probe does not opt in");
    assert_eq!(feat(&m, UapiLevel::V7_1, FEATURE_SET), Some(Ok(0)));
    assert_eq!(flags_out(&f), 0, "v2: flags are output");
    // the device's last close ends the opt-in
    m.set_precopy_info_v2(false);
    assert_eq!(flags_out(&f), 0xf0);
    // without PRE_COPY: EINVAL, a probe too
    let stop_only = Migration::new(Counter::new(3), MIGRATION_STOP_COPY);
    assert_eq!(
        feat(&stop_only, UapiLevel::V7_1, FEATURE_PROBE | FEATURE_SET),
        Some(Err(libc::EINVAL))
    );
}
