//! Device migration through the VFIO device fd: the v2 features
//! (`MIGRATION`, `MIG_DEVICE_STATE` with data fds, `MIG_DATA_SIZE`, DMA
//! logging fed by the device's own DMA) and the seed's v1 region, on a
//! small model whose DMA the test drives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use uiommufd::domain::DmaFault;
use uiommufd::plumbing::files::{self, EngineFile, FdResolver};
use uiommufd::user::SelfMemory;
use uiommufd::vfio::migration::feature as mf;
use uiommufd::vfio::migration::{v1, MigState};
use uiommufd::vfio::model::{Bar, Bus, PciIds, PciLayout, PciModel};
use uiommufd::vfio::registry;
use uiommufd::vfio::uapi as vu;
use uiommufd::Context;
use uiommufd_testkit as kit;

/// A device with one register (a counter) and DMA the test triggers.
#[derive(Debug, Default)]
struct Probe {
    bus: Mutex<Option<Arc<dyn Bus>>>,
    counter: AtomicU64,
}

impl Probe {
    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let bus = self.bus.lock().unwrap().clone().expect("connected");
        bus.dma_write(iova, data)
    }
}

impl PciModel for Probe {
    fn kind(&self) -> &'static str {
        "probe"
    }
    fn layout(&self) -> PciLayout {
        PciLayout {
            bars: [Some(Bar::registers(4096)), None, None, None, None, None],
            ..PciLayout::new(PciIds::new(0x1de5, 0xfff0, 0x088000))
        }
    }
    fn bar_read(&self, _: u8, _: u64, data: &mut [u8]) {
        let v = self.counter.load(Ordering::SeqCst).to_le_bytes();
        data.copy_from_slice(&v[..data.len()]);
    }
    fn bar_write(&self, _: u8, _: u64, _: &[u8]) {}
    fn connect(&self, bus: Option<Arc<dyn Bus>>) {
        *self.bus.lock().unwrap() = bus;
    }
    fn reset(&self) {}
    fn save_state(&self) -> uiommufd::Result<Vec<u8>> {
        Ok(self.counter.load(Ordering::SeqCst).to_le_bytes().to_vec())
    }
    fn load_state(&self, d: &[u8]) -> uiommufd::Result<()> {
        let v: [u8; 8] = d
            .try_into()
            .map_err(|_| uiommufd::Error::new(libc::EINVAL, "8 bytes"))?;
        self.counter.store(u64::from_le_bytes(v), Ordering::SeqCst);
        Ok(())
    }
}

const CTX_FD: i32 = 1 << 30;
struct Fds(Arc<Context>);
impl FdResolver for Fds {
    fn context(&self, fd: i32) -> Option<Arc<Context>> {
        (fd == CTX_FD).then(|| self.0.clone())
    }
}

struct Rig {
    model: Arc<Probe>,
    dev: Arc<dyn EngineFile>,
    fd: i32,
    fds: Fds,
    buf: Vec<u64>,
}

impl Rig {
    /// A probe device bound through its cdev to a fresh iommufd whose
    /// IOAS maps 16 pages at IOVA 0, attached to a HWPT, bus master on.
    fn new(n: u32) -> Rig {
        let model = Arc::new(Probe::default());
        let decl = registry::declare_model(
            &format!(
                "probe,addr=0000:e0:{n:02x}.0,group={},cdev={}",
                900 + n,
                900 + n
            ),
            model.clone(),
        )
        .unwrap();
        let ctx = Context::new();
        let fd = registry::open_cdev(decl.cdev, true).unwrap();
        let dev = files::get(fd).unwrap();
        kit::vfio::bind_cdev(fd, &ctx);
        let ioas = kit::ioas_alloc(&ctx);
        let mut buf = vec![0u64; 16 * 512 + 512];
        let base = (buf.as_mut_ptr() as u64 + 4095) & !4095;
        kit::map_fixed(&ctx, ioas, base, 16 * 4096, 0).unwrap();
        kit::vfio::attach_pt(fd, ioas).unwrap();
        kit::vfio::enable_bus_master(fd);
        let fds = Fds(ctx.clone());
        Rig {
            model,
            dev,
            fd,
            fds,
            buf,
        }
    }

    /// `ioctl(cmd, arg)` on the device fd, the argument's bytes at `arg`.
    fn ioctl(&self, cmd: u32, arg: *mut u8) -> uiommufd::Result<i64> {
        self.dev.ioctl(cmd, arg as u64, &SelfMemory, &self.fds)
    }

    fn feature(&self, flags: u32, data: &mut [u8]) -> Result<(), i32> {
        let mut b = vec![0u8; 8 + data.len()];
        let n = b.len() as u32;
        b[0..4].copy_from_slice(&n.to_le_bytes());
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..].copy_from_slice(data);
        let r = self.ioctl(vu::VFIO_DEVICE_FEATURE, b.as_mut_ptr());
        data.copy_from_slice(&b[8..]);
        r.map(|_| ()).map_err(|e| e.errno().0)
    }

    fn set_state(&self, s: MigState) -> Result<i32, i32> {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&(s as u32).to_le_bytes());
        self.feature(mf::FEATURE_SET | mf::MIG_DEVICE_STATE, &mut b)?;
        Ok(i32::from_le_bytes(b[4..8].try_into().unwrap()))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = files::close(self.fd);
        let _ = &self.buf;
    }
}

#[test]
fn v2_migration_and_dma_logging_through_the_device_fd() {
    let src = Rig::new(1);
    let mut f = [0u8; 8];
    src.feature(mf::FEATURE_GET | mf::MIGRATION, &mut f)
        .unwrap();
    assert_eq!(u64::from_le_bytes(f), 7);
    assert_eq!(
        src.feature(
            mf::FEATURE_PROBE | mf::FEATURE_SET | mf::DMA_LOGGING_START,
            &mut []
        ),
        Ok(())
    );

    // DMA logging sees the device's own writes.
    let range = [0u64.to_le_bytes(), (16u64 * 4096).to_le_bytes()].concat();
    let mut c = [0u8; 24];
    c[0..8].copy_from_slice(&4096u64.to_le_bytes());
    c[8..12].copy_from_slice(&1u32.to_le_bytes());
    c[16..24].copy_from_slice(&(range.as_ptr() as u64).to_le_bytes());
    src.feature(mf::FEATURE_SET | mf::DMA_LOGGING_START, &mut c)
        .unwrap();
    src.model.dma_write(3 * 4096 + 8, b"hello").unwrap();
    src.model.counter.store(77, Ordering::SeqCst);
    let mut bm = [0u64; 1];
    let mut r = [0u8; 32];
    r[8..16].copy_from_slice(&(16u64 * 4096).to_le_bytes());
    r[16..24].copy_from_slice(&4096u64.to_le_bytes());
    r[24..32].copy_from_slice(&(bm.as_mut_ptr() as u64).to_le_bytes());
    src.feature(mf::FEATURE_GET | mf::DMA_LOGGING_REPORT, &mut r)
        .unwrap();
    assert_eq!(bm[0], 1 << 3);

    // Stopped: no DMA.
    let fd = src.set_state(MigState::StopCopy).unwrap();
    assert!(fd >= 0);
    assert!(matches!(
        src.model.dma_write(0, b"x"),
        Err(DmaFault::Blocked { .. })
    ));
    let mut data = Vec::new();
    let mut b = [0u8; 5];
    loop {
        let n = files::read(fd, &mut b).unwrap().unwrap();
        if n == 0 {
            break;
        }
        data.extend_from_slice(&b[..n]);
    }
    files::close(fd).unwrap();
    assert_eq!(src.set_state(MigState::Stop), Ok(-1));

    let dst = Rig::new(2);
    let wfd = dst.set_state(MigState::Resuming).unwrap();
    for c in data.chunks(3) {
        assert_eq!(files::write(wfd, c).unwrap().unwrap(), c.len());
    }
    files::close(wfd).unwrap();
    assert_eq!(dst.set_state(MigState::Running), Ok(-1));
    assert_eq!(dst.model.counter.load(Ordering::SeqCst), 77);
    dst.model.dma_write(0, b"again").unwrap();

    // VFIO_DEVICE_RESET brings the source back to RUNNING.
    src.ioctl(vu::VFIO_DEVICE_RESET, std::ptr::null_mut())
        .unwrap();
    let mut g = [0u8; 8];
    src.feature(mf::FEATURE_GET | mf::MIG_DEVICE_STATE, &mut g)
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(g[0..4].try_into().unwrap()),
        MigState::Running as u32
    );
    src.model.dma_write(0, b"runs").unwrap();
}

#[test]
fn v1_region_is_found_by_its_type_and_drives_the_same_device() {
    let r = Rig::new(3);
    let mut di = [0u8; 24];
    di[0..4].copy_from_slice(&24u32.to_le_bytes());
    r.ioctl(vu::VFIO_DEVICE_GET_INFO, di.as_mut_ptr()).unwrap();
    assert_eq!(u32::from_le_bytes(di[8..12].try_into().unwrap()), 10);
    // Region 9: argsz growth, then the chain: type 3/1, then NDMA.
    let mut ri = [0u8; 32];
    ri[0..4].copy_from_slice(&32u32.to_le_bytes());
    ri[8..12].copy_from_slice(&9u32.to_le_bytes());
    r.ioctl(vu::VFIO_DEVICE_GET_REGION_INFO, ri.as_mut_ptr())
        .unwrap();
    let need = u32::from_le_bytes(ri[0..4].try_into().unwrap());
    assert_eq!(need, 32 + 16 + 8);
    let mut full = vec![0u8; need as usize];
    full[0..4].copy_from_slice(&need.to_le_bytes());
    full[8..12].copy_from_slice(&9u32.to_le_bytes());
    r.ioctl(vu::VFIO_DEVICE_GET_REGION_INFO, full.as_mut_ptr())
        .unwrap();
    let u16at = |o: usize| u16::from_le_bytes(full[o..o + 2].try_into().unwrap());
    let u32at = |o: usize| u32::from_le_bytes(full[o..o + 4].try_into().unwrap());
    assert_eq!(u32at(12), 32); // cap_offset

    // VFIO_REGION_INFO_CAP_TYPE (2), type 3 / subtype 1
    assert_eq!((u16at(32), u32at(40), u32at(44)), (2, 3, 1));
    let next = u32at(36) as usize;
    assert_eq!(u16at(next), v1::CAP_MIG_NDMA);
    let off = u64::from_le_bytes(full[24..32].try_into().unwrap());
    let size = u64::from_le_bytes(full[16..24].try_into().unwrap());
    assert_eq!((off, size), (9 << 40, v1::REGION_SIZE));

    // RUNNING|NDMA stops DMA while MMIO is served; clearing NDMA resumes.
    let st = |v: u32| r.dev.write_at(&v.to_le_bytes(), off).map(|_| ());
    st(v1::RUNNING | v1::NDMA).unwrap();
    assert!(matches!(
        r.model.dma_write(0, b"x"),
        Err(DmaFault::Blocked { .. })
    ));
    let mut reg = [0u8; 4];
    r.dev.read_at(&mut reg, 0, false).unwrap();
    st(v1::RUNNING).unwrap();
    r.model.dma_write(0, b"x").unwrap();
    assert!(st(v1::SAVING | v1::RESUMING).is_err());
    let mut cur = [0u8; 4];
    r.dev.read_at(&mut cur, off, false).unwrap();
    assert_eq!(u32::from_le_bytes(cur), v1::RUNNING);
    assert!(r
        .dev
        .read_at(&mut [0u8; 4], off + v1::REGION_SIZE, false)
        .is_err());
}
