//! The fail-nth sweep in Rust: for representative command sequences, make
//! the 1st, 2nd, 3rd, ... injection point the sequence reaches fail (see
//! `uiommufd::inject`) until the sequence runs through without reaching the
//! armed one. After every call during which the injected failure fired and
//! that failed, everything must be as before the call: the objects, the
//! areas of every IOAS, the mappings of every mock domain, the pin
//! accounting and the engine fds; and the context's invariants and the
//! process-wide accounting must hold. After each run's teardown no page of
//! the buffer may stay pinned.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use uiommufd::client::Client;
use uiommufd::dispatch::ioctl;
use uiommufd::hwpt::HwptPaging;
use uiommufd::inject;
use uiommufd::ioas::Ioas;
use uiommufd::mock::device::MOCK_FLAGS_DEVICE_HUGE_IOVA;
use uiommufd::mock::domain::MockDomain;
use uiommufd::pages::{check_accounting, Pages};
use uiommufd::plumbing::files;
use uiommufd::plumbing::io_pagetable::AreaInfo;
use uiommufd::uapi::*;
use uiommufd::user::page_size;
use uiommufd::vfio::registry;
use uiommufd::vfio::uapi::{
    VfioDeviceBindIommufd, VfioDeviceDetachIommufdPt, VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    VFIO_DEVICE_BIND_IOMMUFD, VFIO_DEVICE_DETACH_IOMMUFD_PT,
};
use uiommufd::vtd::nested::IommuHwptVtdS1;
use uiommufd::vtd::VtdDomain;
use uiommufd::Context;
use uiommufd_testkit::iopt_harness::{Dev, Driver};
use uiommufd_testkit::vfio::{ioctl_on, Fds};
use uiommufd_testkit::{self as kit, *};
use zerocopy::{FromBytes, IntoBytes};

const A: u64 = MOCK_APERTURE_START;
const LEN: u64 = 256 * 1024;

/// Everything a failed call must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    objects: Vec<(u32, &'static str)>,
    areas: BTreeMap<u32, Vec<AreaInfo>>,
    mappings: BTreeMap<u32, Vec<(u64, u64, u64)>>,
    pinned_vm: u64,
    user_locked_vm: u64,
    mm_locked_vm: u64,
    engine_fds: usize,
}

fn snapshot(ctx: &Context) -> Snapshot {
    let mut s = Snapshot {
        objects: Vec::new(),
        areas: BTreeMap::new(),
        mappings: BTreeMap::new(),
        pinned_vm: Client::ours().pinned_vm(),
        user_locked_vm: Client::ours().user().locked_vm(),
        mm_locked_vm: Client::ours().mm_locked_vm(),
        engine_fds: files::registered_fds(),
    };
    for (id, o) in ctx.objects() {
        s.objects.push((id, o.kind()));
        if let Some(i) = o.downcast::<Ioas>() {
            s.areas.insert(id, i.areas());
        } else if let Some(h) = o.downcast::<HwptPaging>() {
            let d = h.domain();
            if let Some(m) = d.as_any().downcast_ref::<MockDomain>() {
                s.mappings.insert(id, m.runs());
            } else if let Some(v) = d.as_any().downcast_ref::<VtdDomain>() {
                s.mappings.insert(id, v.runs());
            }
        }
    }
    s
}

/// The cdev numbers of the `dma-engine` devices the VT-d sweeps use
/// (declared once per process; each run opens and binds them afresh and
/// closes them in its teardown, and the sweeps run one at a time).
const VTD_CDEVS: u32 = 4;
/// The `cmd` that [`Env::checked`] reports as an open of a cdev.
const OPEN: u32 = 0;
const VTD_CDEV_BASE: u32 = 760;

fn declare_vtd_devices() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for i in 0..VTD_CDEVS {
            let n = VTD_CDEV_BASE + i;
            registry::declare(&format!(
                "dma-engine,addr=0000:e7:{i:02x}.0,group={n},cdev={n}"
            ))
            .unwrap();
        }
    });
}

/// One run of a sequence: the context, the engine fds it made, and the
/// injected failure it armed.
struct Env {
    ctx: Arc<Context>,
    driver: Driver,
    nth: u32,
    armed: bool,
    fds: Vec<i32>,
    buf: Vec<u8>,
    /// Injected failures seen, by point.
    fired: RefCell<Vec<&'static str>>,
    /// The fd that stands for the iommufd in `VFIO_DEVICE_BIND_IOMMUFD`.
    iommufd: OwnedFd,
    /// Emulated devices opened so far.
    vtd_devs: u32,
}

impl Env {
    fn new(nth: u32, driver: Driver) -> Env {
        if driver == Driver::Vtd {
            declare_vtd_devices();
        }
        Env {
            ctx: Context::new(),
            driver,
            nth,
            armed: false,
            fds: Vec::new(),
            buf: vec![0x5a; 4 * LEN as usize + (2 << 20)],
            fired: RefCell::new(Vec::new()),
            iommufd: std::fs::File::open("/dev/null").unwrap().into(),
            vtd_devs: 0,
        }
    }

    /// A new device attached to `pt`: (device, hwpt, idev). Mock:
    /// `MOCK_DOMAIN_FLAGS` (`huge`: `MOCK_FLAGS_DEVICE_HUGE_IOVA`); VT-d:
    /// open the next cdev, bind it to the context, attach it to `pt`
    /// (`huge` has no VT-d counterpart: its domains take 2 MiB leaves
    /// where the IOAS allows).
    fn device(&mut self, pt: u32, huge: bool) -> Result<(Dev, u32, u32), i32> {
        match self.driver {
            Driver::Mock => {
                let flags = if huge { MOCK_FLAGS_DEVICE_HUGE_IOVA } else { 0 };
                let (stdev, hwpt, idev) = self.mock_domain(pt, flags)?;
                Ok((Dev::Mock(stdev), hwpt, idev))
            }
            Driver::Vtd => {
                assert!(self.vtd_devs < VTD_CDEVS, "more devices than declared");
                let cdev = VTD_CDEV_BASE + self.vtd_devs;
                let fd = self.checked(OPEN, || {
                    registry::open_cdev(cdev, true).map_err(|e| e.errno().0)
                })?;
                self.vtd_devs += 1;
                self.fds.push(fd);
                let mut fds = Fds::default();
                fds.0.insert(self.iommufd.as_raw_fd(), self.ctx.clone());
                let mut b = VfioDeviceBindIommufd {
                    argsz: 16,
                    flags: 0,
                    iommufd: self.iommufd.as_raw_fd(),
                    out_devid: 0,
                };
                self.checked(VFIO_DEVICE_BIND_IOMMUFD, || {
                    ioctl_on(fd, VFIO_DEVICE_BIND_IOMMUFD, &mut b, &fds)
                })?;
                let hwpt = self.vtd_attach(fd, pt)?;
                Ok((Dev::Vtd(fd), hwpt, b.out_devid))
            }
        }
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: the HWPT attached.
    fn vtd_attach(&self, fd: i32, pt: u32) -> Result<u32, i32> {
        self.checked(VFIO_DEVICE_ATTACH_IOMMUFD_PT, || {
            kit::vfio::attach_pt(fd, pt)
        })
    }

    /// Move `dev` to `pt` (mock: `MOCK_DOMAIN_REPLACE`; VT-d: attach again).
    fn replace_dev(&mut self, dev: Dev, pt: u32) -> Result<(), i32> {
        match dev {
            Dev::Mock(stdev) => self.replace(stdev, pt),
            Dev::Vtd(fd) => self.vtd_attach(fd, pt).map(|_| ()),
        }
    }

    /// Take `dev` off its domain (mock: destroy the selftest device;
    /// VT-d: `VFIO_DEVICE_DETACH_IOMMUFD_PT`).
    fn remove_dev(&mut self, dev: Dev) -> Result<(), i32> {
        match dev {
            Dev::Mock(stdev) => self.destroy(stdev),
            Dev::Vtd(fd) => {
                let mut d = VfioDeviceDetachIommufdPt { argsz: 8, flags: 0 };
                self.checked(VFIO_DEVICE_DETACH_IOMMUFD_PT, || {
                    ioctl_on(fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut d, &Fds::default())
                })
                .map(|_| ())
            }
        }
    }

    /// Make every page of `[iova, iova + length)` in `hwpt` dirty, as
    /// device writes would (mock: `IOMMU_TEST_OP_DIRTY`; VT-d: set the D
    /// bits of the HWPT's tables).
    fn make_dirty(&mut self, hwpt: u32, iova: u64, length: u64) -> Result<(), i32> {
        match self.driver {
            Driver::Mock => self.test_dirty(hwpt, iova, length),
            Driver::Vtd => {
                let o = self.ctx.objects();
                let h = o.iter().find(|(id, _)| *id == hwpt).expect("the HWPT");
                let Some(h) = h.1.downcast::<HwptPaging>() else {
                    panic!("{hwpt} is not a paging HWPT")
                };
                let d = h.domain();
                let v = d
                    .as_any()
                    .downcast_ref::<VtdDomain>()
                    .expect("a VT-d domain");
                assert!(
                    v.mark_dirty(iova, length) > 0,
                    "nothing mapped to make dirty"
                );
                Ok(())
            }
        }
    }

    /// The buffer, aligned to 2 MiB so that huge IOVA pages can be used.
    fn va(&self) -> u64 {
        (self.buf.as_ptr() as u64).div_ceil(2 << 20) * (2 << 20)
    }

    /// Start failing: the `nth` injection point from here fails.
    fn arm(&mut self) {
        self.armed = true;
        inject::set_fail_nth_current(self.nth);
    }

    fn ioas_alloc(&mut self) -> Result<u32, i32> {
        try_ioas_alloc(&*self)
    }

    /// MOCK_DOMAIN_FLAGS on `pt`: (stdev, hwpt, idev).
    fn mock_domain(&mut self, pt: u32, dev_flags: u32) -> Result<(u32, u32, u32), i32> {
        mock_domain_flags(&*self, pt, dev_flags)
    }

    fn replace(&mut self, stdev: u32, pt: u32) -> Result<(), i32> {
        mock_domain_replace(&*self, stdev, pt)
    }

    fn hwpt_alloc(&mut self, idev: u32, pt: u32, flags: u32) -> Result<u32, i32> {
        kit::hwpt_alloc(&*self, idev, pt, flags)
    }

    fn hw_info(&mut self, idev: u32) -> Result<(), i32> {
        kit::hw_info(&*self, idev).map(|_| ())
    }

    fn destroy(&mut self, id: u32) -> Result<(), i32> {
        kit::destroy(&*self, id).map(|_| ())
    }

    fn map(&mut self, ioas: u32, off: u64, len: u64, iova: Option<u64>) -> Result<u64, i32> {
        kit::map(&*self, ioas, self.va() + off, len, iova)
    }

    fn copy(
        &mut self,
        src: u32,
        src_iova: u64,
        dst: u32,
        dst_iova: u64,
        len: u64,
    ) -> Result<(), i32> {
        kit::copy(&*self, src, src_iova, dst, dst_iova, len).map(|_| ())
    }

    fn unmap(&mut self, ioas: u32, iova: u64, length: u64) -> Result<(), i32> {
        kit::unmap(&*self, ioas, iova, length).map(|_| ())
    }

    fn allow(&mut self, ioas: u32, start: u64, last: u64) -> Result<(), i32> {
        allow_iovas(&*self, ioas, start, last).map(|_| ())
    }

    /// CREATE_ACCESS on `ioas`: the access fd.
    fn create_access(&mut self, ioas: u32, flags: u32) -> Result<i32, i32> {
        let fd = kit::create_access(&*self, ioas, flags)? as i32;
        self.fds.push(fd);
        Ok(fd)
    }

    /// ACCESS_PAGES: the item id.
    fn access_pages(&mut self, fd: i32, iova: u64, len: u64, off: u64) -> Result<u32, i32> {
        let uptr = self.va() + off;
        kit::access_pages(&*self, fd as u32, iova, len, uptr, MOCK_FLAGS_ACCESS_WRITE)
    }

    fn destroy_access_pages(&mut self, fd: i32, item: u32) -> Result<(), i32> {
        kit::destroy_access_pages(&*self, fd as u32, item)
    }

    fn access_rw(&mut self, fd: i32, iova: u64, len: u64, flags: u32) -> Result<(), i32> {
        let mut tmp = vec![0u8; len as usize];
        kit::access_rw(&*self, fd as u32, iova, len, tmp.as_mut_ptr() as u64, flags)
    }

    fn set_tracking(&mut self, hwpt: u32, enable: bool) -> Result<(), i32> {
        set_dirty_tracking(&*self, hwpt, enable).map(|_| ())
    }

    /// IOMMU_TEST_OP_DIRTY with every bit set.
    fn test_dirty(&mut self, hwpt: u32, iova: u64, length: u64) -> Result<(), i32> {
        let bits = vec![0xffu8; (length / page_size()).div_ceil(8) as usize];
        kit::test_dirty(
            &*self,
            hwpt,
            iova,
            length,
            page_size(),
            bits.as_ptr() as u64,
        )
        .map(|_| ())
    }

    fn get_bitmap(&mut self, hwpt: u32, iova: u64, length: u64) -> Result<(), i32> {
        let mut bits = vec![0u8; (length / page_size()).div_ceil(8) as usize + 8];
        let data = bits.as_mut_ptr() as u64;
        get_dirty_bitmap(&*self, hwpt, iova, length, page_size(), data, 0).map(|_| ())
    }

    fn fault_alloc(&mut self) -> Result<u32, i32> {
        let (id, fd) = kit::fault_alloc(&*self)?;
        self.fds.push(fd);
        Ok(id)
    }

    /// Close the engine fds and the context; nothing may stay pinned.
    fn teardown(self, pinned_before: u64) {
        for fd in &self.fds {
            files::close(*fd).unwrap();
        }
        let va = self.va();
        let Env {
            ctx, buf, iommufd, ..
        } = self;
        drop(iommufd);
        assert_eq!(
            Arc::strong_count(&ctx),
            1,
            "the engine fds released the context"
        );
        drop(ctx);
        check_accounting().unwrap();
        assert_eq!(Client::ours().pinned_vm(), pinned_before);
        let ps = page_size();
        for off in (0..LEN).step_by(ps as usize) {
            assert_eq!(
                Pages::pins_of_user_page(va + off),
                0,
                "page {off:#x} still pinned"
            );
        }
        drop(buf);
    }
}

impl Env {
    /// One call into the engine (`call`, an ioctl or an open, returning
    /// the errno on failure), with the checks after an injected failure.
    fn checked<R>(&self, cmd: u32, call: impl FnOnce() -> Result<R, i32>) -> Result<R, i32> {
        let what = if cmd == OPEN {
            "open".to_string()
        } else {
            format!("ioctl {cmd:#x}")
        };
        let before = snapshot(&self.ctx);
        let watch = inject::Watch::start();
        let r = call();
        let Some(point) = watch.fired() else {
            return r.map_err(|e| panic!("{what} failed without injection: errno {e}"));
        };
        self.fired.borrow_mut().push(point);
        if let Err(e) = &r {
            assert_ne!(
                *e,
                libc::EIO,
                "{what} after the injected failure at {point}: errno {e}"
            );
            let after = snapshot(&self.ctx);
            assert_eq!(
                before, after,
                "{what} failed at {point} (errno {e}) but changed the state"
            );
        }
        if let Err(v) = self.ctx.check_invariants() {
            panic!("after the injected failure at {point} in {what}: {v}");
        }
        if let Err(v) = check_accounting() {
            panic!("after the injected failure at {point} in {what}: {v}");
        }
        r
    }
}

impl Ioctl for Env {
    /// One ioctl, with the checks after an injected failure.
    fn ioc<T: IntoBytes + FromBytes + ?Sized>(&self, cmd: u32, arg: &mut T) -> Result<i32, i32> {
        self.checked(cmd, || {
            ioctl(
                &self.ctx,
                cmd as u64,
                arg.as_mut_bytes().as_mut_ptr() as u64,
            )
            .map_err(|e| e.errno().0)
        })
    }
}

type Sequence = fn(&mut Env) -> Result<(), i32>;

/// Run `seq` with `driver`'s devices and the 1st, 2nd, ... injection
/// point failing until it runs through; returns how many points it
/// reached.
fn sweep_on(name: &str, driver: Driver, seq: Sequence) -> u32 {
    // the sweeps share the process-wide accounting: one at a time
    let _serial = serial();
    let pinned_before = Client::ours().pinned_vm();
    let violations = inject::invariant_violations();
    let mut points = Vec::new();
    for nth in 1..400 {
        let mut env = Env::new(nth, driver);
        let r = seq(&mut env);
        assert!(env.armed, "{name}: the sequence never armed the injection");
        let left = inject::fail_nth_current();
        inject::set_fail_nth_current(0);
        let fired = env.fired.take();
        env.teardown(pinned_before);
        assert!(fired.len() <= 1, "{name}: fired {fired:?}");
        if left != 0 {
            // the sequence ended before reaching the armed point: done
            assert!(fired.is_empty());
            assert_eq!(r, Ok(()), "{name}: the sequence failed without injection");
            assert_eq!(inject::invariant_violations(), violations);
            eprintln!("{name}: {} injection points swept: {points:?}", nth - 1);
            return nth - 1;
        }
        assert_eq!(
            fired.len(),
            1,
            "{name}: the count reached 0 outside the ioctls"
        );
        points.push(fired[0]);
    }
    panic!("{name}: more than 400 injection points");
}

/// Both drivers' sweeps of a sequence: `$mock` with mock devices, `$vtd`
/// with emulated devices on VT-d domains; each must reach more than
/// `$min` injection points.
macro_rules! sweeps {
    ($mock:ident, $vtd:ident, $name:literal, $seq:expr, $min:expr) => {
        #[test]
        fn $mock() {
            let n = sweep_on($name, Driver::Mock, $seq);
            assert!(n > $min, "{n}");
        }

        #[test]
        fn $vtd() {
            let n = sweep_on(concat!($name, "_vtd"), Driver::Vtd, $seq);
            assert!(n > $min, "{n}");
        }
    };
}

sweeps!(
    fail_nth_map_with_two_domains,
    fail_nth_map_with_two_domains_vtd,
    "map_two_domains",
    |e| {
        let ioas = e.ioas_alloc()?;
        e.arm();
        let (s1, _, idev) = e.device(ioas, false)?;
        // a second device shares the auto domain; a second HWPT does not
        e.device(ioas, false)?;
        let h2 = e.hwpt_alloc(idev, ioas, 0)?;
        e.map(ioas, 0, LEN, Some(A))?;
        e.map(ioas, LEN / 2, LEN / 4, None)?;
        e.copy(ioas, A, ioas, A + 4 * LEN, LEN / 2)?;
        e.unmap(ioas, A + 4 * LEN, LEN / 2)?;
        e.destroy(h2)?;
        e.remove_dev(s1)?;
        e.device(ioas, false)?;
        e.hwpt_alloc(idev, ioas, 0)?;
        e.unmap(ioas, 0, u64::MAX)?;
        Ok(())
    },
    20
);

sweeps!(
    fail_nth_copy_between_ioas,
    fail_nth_copy_between_ioas_vtd,
    "copy",
    |e| {
        let src = e.ioas_alloc()?;
        let dst = e.ioas_alloc()?;
        e.device(dst, false)?;
        e.map(src, 0, LEN / 2, Some(A))?;
        e.map(src, LEN / 2, LEN / 2, Some(A + LEN / 2))?;
        e.arm();
        e.allow(dst, A, A + 16 * LEN - 1)?;
        e.copy(src, A, dst, A + LEN, LEN)?;
        e.device(dst, true)?;
        e.copy(src, A + LEN / 4, dst, A + 4 * LEN, LEN / 4)?;
        Ok(())
    },
    10
);

fn access_pin(e: &mut Env, domain: bool) -> Result<(), i32> {
    let ioas = e.ioas_alloc()?;
    if domain {
        e.device(ioas, false)?;
    }
    e.map(ioas, 0, LEN / 2, Some(A))?;
    e.map(ioas, LEN / 2, LEN / 2, Some(A + LEN / 2))?;
    e.arm();
    let fd = e.create_access(ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)?;
    // across both areas
    let item = e.access_pages(fd, A, LEN, 0)?;
    let item2 = e.access_pages(fd, A + page_size(), 4 * page_size(), page_size())?;
    e.access_rw(fd, A + 100, 5000, 0)?;
    e.access_rw(fd, A + LEN / 2 - 64, 128, MOCK_ACCESS_RW_WRITE)?;
    e.destroy_access_pages(fd, item)?;
    e.destroy_access_pages(fd, item2)?;
    e.access_pages(fd, A + LEN / 2, LEN / 2, LEN / 2)?;
    if !domain {
        e.device(ioas, false)?;
    }
    Ok(())
}

sweeps!(
    fail_nth_access_pin,
    fail_nth_access_pin_vtd,
    "access_pin",
    |e| access_pin(e, false),
    10
);

sweeps!(
    fail_nth_access_pin_with_domain,
    fail_nth_access_pin_with_domain_vtd,
    "access_pin_domain",
    |e| access_pin(e, true),
    10
);

sweeps!(
    fail_nth_hwpt_alloc_and_replace,
    fail_nth_hwpt_alloc_and_replace_vtd,
    "hwpt_alloc",
    |e| {
        let ioas = e.ioas_alloc()?;
        let ioas2 = e.ioas_alloc()?;
        e.map(ioas, 0, LEN / 2, Some(A))?;
        e.map(ioas, LEN / 2, LEN / 2, Some(A + LEN))?;
        e.map(ioas2, 0, LEN / 2, Some(A))?;
        e.arm();
        let (stdev, auto, idev) = e.device(ioas, false)?;
        e.hw_info(idev)?;
        let hwpt = e.hwpt_alloc(idev, ioas, 0)?;
        let parent = e.hwpt_alloc(idev, ioas2, IOMMU_HWPT_ALLOC_NEST_PARENT)?;
        e.replace_dev(stdev, ioas2)?;
        e.replace_dev(stdev, hwpt)?;
        e.replace_dev(stdev, parent)?;
        e.destroy(hwpt)?;
        e.replace_dev(stdev, ioas)?;
        let _ = auto;
        e.fault_alloc()?;
        Ok(())
    },
    20
);

sweeps!(
    fail_nth_dirty_get,
    fail_nth_dirty_get_vtd,
    "dirty",
    |e| {
        let ioas = e.ioas_alloc()?;
        e.map(ioas, 0, LEN, Some(A))?;
        let (stdev, _, idev) = e.device(ioas, false)?;
        e.arm();
        let hwpt = e.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)?;
        e.replace_dev(stdev, hwpt)?;
        e.set_tracking(hwpt, true)?;
        e.make_dirty(hwpt, A, LEN)?;
        e.get_bitmap(hwpt, A, LEN)?;
        e.map(ioas, LEN, LEN / 2, Some(A + LEN))?;
        e.get_bitmap(hwpt, A, 2 * LEN)?;
        e.set_tracking(hwpt, false)?;
        Ok(())
    },
    10
);

/// `IOAS_MAP_FILE` at `iova` of `len` bytes of `fd` from `start`.
fn map_file(e: &Env, ioas: u32, fd: i32, start: u64, len: u64, iova: u64) -> Result<u64, i32> {
    let rw = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
    kit::map_file(e, ioas, fd, start, len, rw, Some(iova))
}

// File-backed areas (`IOAS_MAP_FILE`) through every failure point: the
// map with domains attached, a domain added to file areas, a copy, access
// reads and writes, and the unmaps. The memfd is closed before the
// areas go: the engine's mappings must not leak (accounting and the
// context's teardown check them).
sweeps!(
    fail_nth_map_file,
    fail_nth_map_file_vtd,
    "map_file",
    |e| {
        let mfd = kit::memfd(c"fail-nth", LEN);
        let ioas = e.ioas_alloc()?;
        let dst = e.ioas_alloc()?;
        e.arm();
        e.device(ioas, false)?;
        map_file(e, ioas, mfd.as_raw_fd(), 0, LEN / 2, A)?;
        map_file(e, ioas, mfd.as_raw_fd(), LEN / 2, LEN / 2, A + LEN)?;
        drop(mfd);
        e.device(ioas, true)?;
        e.device(dst, false)?;
        e.copy(ioas, A, dst, A + 4 * LEN, LEN / 2)?;
        let fd = e.create_access(dst, 0)?;
        e.access_rw(fd, A + 4 * LEN, 64, 0)?;
        e.access_rw(fd, A + 4 * LEN + 100, 64, MOCK_ACCESS_RW_WRITE)?;
        e.unmap(ioas, A, LEN / 2)?;
        e.unmap(ioas, 0, u64::MAX)?;
        Ok(())
    },
    10
);

/// `IOMMU_HWPT_ALLOC` of a VT-d first-stage HWPT (`IOMMU_HWPT_DATA_VTD_S1`)
/// over `parent`, its table at guest address `pgtbl`, with fault queue
/// `fault` if any.
fn vtd_s1(e: &Env, idev: u32, parent: u32, pgtbl: u64, fault: Option<u32>) -> Result<u32, i32> {
    let d = IommuHwptVtdS1 {
        flags: 0,
        pgtbl_addr: pgtbl,
        addr_width: 48,
        __reserved: 0,
    };
    kit::hwpt_alloc_vtd_s1(e, idev, parent, &d, fault)
}

/// `IOMMU_HWPT_INVALIDATE` of `npages` at `addr` on a VT-d first-stage HWPT.
fn vtd_invalidate(e: &Env, hwpt: u32, addr: u64, npages: u64) -> Result<(), i32> {
    match invalidate_vtd_s1_leaf(e, hwpt, addr, npages) {
        (0, done) => {
            assert_eq!(done, 1);
            Ok(())
        }
        (errno, _) => Err(errno),
    }
}

/// VT-d nesting through every failure point: a nest parent, first-stage
/// HWPTs over it (one with a fault queue), attach and replace between
/// them, an invalidation, and the unmap of the parent's memory while a
/// nested HWPT sits on it. VT-d only (the mock's nesting is the selftest's
/// format, swept by `hwpt_alloc` above).
#[test]
fn fail_nth_vtd_nesting() {
    let n = sweep_on("vtd_nesting", Driver::Vtd, |e| {
        let ioas = e.ioas_alloc()?;
        e.map(ioas, 0, LEN, Some(A))?;
        e.arm();
        let (dev, _, idev) = e.device(ioas, false)?;
        e.hw_info(idev)?;
        let parent = e.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)?;
        let s1 = vtd_s1(e, idev, parent, A, None)?;
        e.replace_dev(dev, s1)?;
        vtd_invalidate(e, s1, 0, 16)?;
        let fault = e.fault_alloc()?;
        let s1f = vtd_s1(e, idev, parent, A + page_size(), Some(fault))?;
        e.replace_dev(dev, s1f)?;
        e.replace_dev(dev, parent)?;
        e.destroy(s1)?;
        e.unmap(ioas, A, LEN)?;
        e.remove_dev(dev)?;
        e.destroy(s1f)?;
        Ok(())
    });
    assert!(n > 10, "{n}");
}
