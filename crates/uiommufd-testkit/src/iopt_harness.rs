//! One harness that runs operations on an
//! [`IoPagetable`] and on the reference [`Model`] side by side and says
//! where they part: used by the proptests (`tests/io_pagetable_model.rs`,
//! which generate [`Op`]s with proptest strategies) and by the fuzz target
//! `io_pagetable_model` (which decodes them from the fuzzer's bytes).
//!
//! A step is [`Harness::apply`] (the errno, the IOVA chosen, the pages
//! pinned and the bytes moved must be the model's) then [`Harness::check`]
//! (the table's invariants, areas, IOVA ranges, alignment, large-pages
//! setting and domain count equal the model's; every attached domain maps
//! exactly the model's runs, no mock domain saw an unmap cut a map, and,
//! unless turned off ([`Harness::check_translate`]), `Domain::translate`
//! agrees with the model at the edges of every area, just past them and at
//! the [`Op::Translate`] IOVAs). A finding is an
//! `Err` with a message naming the step and the operation, so a proptest
//! can shrink it and a fuzz target can panic with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd::accounting::AccountMode;
use uiommufd::domain::{DmaFault, Domain};
use uiommufd::mock::domain::MockDomain;
use uiommufd::pages::Pages;
use uiommufd::plumbing::io_pagetable::{AccessNotify, IoPagetable, IovaRequest, MapSource};
use uiommufd::user::UserMemory;
use uiommufd::vtd::VtdDomain;
use uiommufd::{Prot, Result};

use crate::iopt_model::{overlaps, DomainGeometry, MSrc, Model, UserView, COOPERATIVE, STUBBORN};

/// The VT-d domains' address width (4 levels).
pub const VTD_AW: u32 = 48;
/// The largest buffer an access read/write moves.
pub const RW_MAX: u64 = 64 << 10;

/// One operation on the table (and the model).
#[derive(Debug, Clone)]
pub enum Op {
    /// `map` of `[uptr, uptr + len)` at `iova`.
    MapFixed {
        /// The IOVA.
        iova: u64,
        /// Bytes.
        len: u64,
        /// The user address.
        uptr: u64,
        /// Whether the pages object is writable.
        writable: bool,
        /// Whether the area maps for write.
        write: bool,
    },
    /// `map` of `[uptr, uptr + len)` at an IOVA the table picks (mapped for
    /// write when `writable`).
    MapAlloc {
        /// Bytes.
        len: u64,
        /// The user address.
        uptr: u64,
        /// Whether the pages object is writable (and the area mapped so).
        writable: bool,
    },
    /// `unmap(iova, len)`.
    Unmap {
        /// The IOVA.
        iova: u64,
        /// Bytes.
        len: u64,
    },
    /// `unmap_all`.
    UnmapAll,
    /// `get_pages(src, len)` then `map` of those sources at `dst` (or an
    /// allocated IOVA).
    Copy {
        /// The IOVA copied from.
        src: u64,
        /// Bytes.
        len: u64,
        /// The IOVA copied to (`None`: allocated).
        dst: Option<u64>,
        /// Whether the copy maps for write.
        write: bool,
    },
    /// `set_allowed` with these inclusive ranges.
    SetAllowed(Vec<(u64, u64)>),
    /// `add_reserved(start, last, owner)`.
    AddReserved(u64, u64, u64),
    /// `remove_reserved(owner)`.
    RemoveReserved(u64),
    /// `set_large_pages`.
    LargePages(bool),
    /// Attach a new domain of the harness's driver (up to
    /// [`Harness::max_domains`]).
    AddDomain {
        /// Huge IOVA pages (mock) or leaves larger than 4 KiB (VT-d).
        huge: bool,
    },
    /// Detach the attached domain at this index (modulo their count).
    RemoveDomain(usize),
    /// Arm one mock domain (index modulo their count) to fail a map after
    /// `after` more calls; disarms the others.
    ArmFailure {
        /// The domain's index.
        domain: usize,
        /// Map calls that still succeed.
        after: u64,
    },
    /// Register access `which` ([`COOPERATIVE`] or [`STUBBORN`]).
    AddAccess {
        /// Which access.
        which: usize,
        /// Its IOVA alignment.
        align: u64,
    },
    /// Unregister access `which`, unpinning what it holds.
    RemoveAccess(usize),
    /// Pin `[iova, iova + len)` for access `which`.
    Pin {
        /// Which access.
        which: usize,
        /// The IOVA.
        iova: u64,
        /// Bytes.
        len: u64,
        /// Pinned for write.
        write: bool,
    },
    /// Unpin one of the pins of access `which` (index modulo their count).
    Unpin {
        /// Which access.
        which: usize,
        /// The pin's index.
        index: usize,
    },
    /// An access read or write of `len` (at most [`RW_MAX`]) bytes filled
    /// from `fill` upward.
    Rw {
        /// The IOVA.
        iova: u64,
        /// Bytes.
        len: u64,
        /// A write (else a read).
        write: bool,
        /// The first byte written.
        fill: u8,
    },
    /// Translate `iova` through every attached domain and compare with
    /// the model.
    Translate {
        /// The IOVA.
        iova: u64,
        /// A write (else a read).
        write: bool,
    },
}

/// The driver whose domains a harness (or a test through the ioctl ABI,
/// with a [`Dev`] of it) attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// The selftest mock (`huge`: `MOCK_FLAGS_DEVICE_HUGE_IOVA`).
    Mock,
    /// The software IOMMU's VT-d second stage (`huge`: 2 MiB and 1 GiB
    /// leaves allowed, else 4 KiB only).
    Vtd,
}

impl Driver {
    /// What the table sees of this driver's domains.
    pub fn geometry(self) -> DomainGeometry {
        match self {
            Driver::Mock => DomainGeometry::mock(),
            Driver::Vtd => DomainGeometry::vtd(VTD_AW),
        }
    }
}

/// A device of a [`Driver`] that a test attached through the ioctl ABI,
/// to take away at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dev {
    /// A selftest mock device: its selftest object ID.
    Mock(u32),
    /// A `dma-engine` device bound through its cdev (VT-d domains): the
    /// cdev fd.
    Vtd(i32),
}

/// A domain of either driver, with what the checks need of it.
#[derive(Debug, Clone)]
pub enum TestDomain {
    /// A selftest mock domain.
    Mock(Arc<MockDomain>),
    /// A VT-d second-stage domain.
    Vtd(Arc<VtdDomain>),
}

impl TestDomain {
    /// A new domain of `driver`.
    pub fn new(driver: Driver, huge: bool) -> TestDomain {
        match driver {
            Driver::Mock => TestDomain::Mock(MockDomain::new(huge)),
            Driver::Vtd => TestDomain::Vtd(if huge {
                VtdDomain::new(VTD_AW, false).expect("VT-d domain")
            } else {
                VtdDomain::with_max_page(VTD_AW, false, 1 << 12).expect("VT-d domain")
            }),
        }
    }

    /// The domain as the table holds it.
    pub fn domain(&self) -> Arc<dyn Domain> {
        match self {
            TestDomain::Mock(d) => d.clone(),
            TestDomain::Vtd(d) => d.clone(),
        }
    }

    /// Its ID.
    pub fn id(&self) -> u64 {
        self.domain().id()
    }

    /// Maximal runs `(iova, host address, length)`.
    pub fn runs(&self) -> Vec<(u64, u64, u64)> {
        match self {
            TestDomain::Mock(d) => d.runs(),
            TestDomain::Vtd(d) => d.runs(),
        }
    }

    /// Whether it maps nothing.
    pub fn is_empty(&self) -> bool {
        match self {
            TestDomain::Mock(d) => d.is_empty(),
            TestDomain::Vtd(d) => d.is_empty(),
        }
    }

    /// Unmaps that cut a map (the mock counts them; the VT-d tables split
    /// leaves, and the runs comparison catches a wrong cut).
    pub fn warnings(&self) -> u64 {
        match self {
            TestDomain::Mock(d) => d.warnings(),
            TestDomain::Vtd(_) => 0,
        }
    }

    /// Arm (or, with `None`, disarm) the mock's injected map failure;
    /// `false` for a driver without one.
    pub fn fail_map_after(&self, calls: Option<u64>) -> bool {
        match self {
            TestDomain::Mock(d) => {
                d.fail_map_after(calls);
                true
            }
            TestDomain::Vtd(_) => false,
        }
    }
}

/// The errno of a result (`Ok` as `Ok(())`).
pub fn class<T>(r: &Result<T>) -> std::result::Result<(), i32> {
    r.as_ref().map(|_| ()).map_err(|e| e.errno().0)
}

/// The errno of a model's answer (`Ok` as `Ok(())`).
fn mclass<T>(r: &std::result::Result<T, i32>) -> std::result::Result<(), i32> {
    r.as_ref().map(|_| ()).map_err(|&e| e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Err(message)` unless `a == b`.
macro_rules! ensure_eq {
    ($a:expr, $b:expr, $($msg:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(format!("{}: {:x?} != {:x?}", format!($($msg)+), a, b));
        }
    }};
}

/// `Err(message)` unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {{
        if !$cond {
            return Err(format!($($msg)+));
        }
    }};
}

/// An access of the harness: remembers its pins; the cooperative one
/// unpins those an unmap reaches when notified, the stubborn one never does.
#[derive(Debug)]
struct Acc {
    table: Weak<IoPagetable>,
    stubborn: bool,
    pins: Mutex<Vec<(u64, u64)>>,
}

impl AccessNotify for Acc {
    fn unmap(&self, iova: u64, length: u64) {
        if self.stubborn {
            return;
        }
        let Some(t) = self.table.upgrade() else {
            return;
        };
        let last = iova + (length - 1);
        lock(&self.pins).retain(|&(i, l)| {
            if overlaps((i, i + (l - 1)), (iova, last)) {
                t.access_unpin(i, l);
                false
            } else {
                true
            }
        });
    }
}

/// An IO page table, the model of it, and what is attached to both.
#[derive(Debug)]
pub struct Harness {
    /// The table.
    pub t: Arc<IoPagetable>,
    /// The model.
    pub m: Model,
    /// The driver of the domains [`Op::AddDomain`] attaches.
    pub driver: Driver,
    /// The attached domains, oldest first.
    pub doms: Vec<TestDomain>,
    /// [`Op::AddDomain`] does nothing once this many are attached.
    pub max_domains: usize,
    /// Whether [`Harness::check`] probes `Domain::translate` of every
    /// area (it about doubles the time of a step).
    pub check_translate: bool,
    /// `(access, token)` of the registered accesses.
    accs: [Option<(Arc<Acc>, u64)>; 2],
    /// The domain ID armed with an injected map failure.
    armed: Option<u64>,
    /// The user memory of the pages objects.
    mem: Arc<dyn UserMemory>,
    /// Operations that succeeded, by kind (for seed checks and stats).
    pub ok: BTreeMap<&'static str, usize>,
}

impl Harness {
    /// An empty table over `mem`, attaching domains of `driver`.
    pub fn new(mem: Arc<dyn UserMemory>, driver: Driver) -> Harness {
        Harness {
            t: Arc::new(IoPagetable::new()),
            m: Model {
                geometry: driver.geometry(),
                ..Model::default()
            },
            driver,
            doms: Vec::new(),
            max_domains: usize::MAX,
            check_translate: true,
            accs: [None, None],
            armed: None,
            mem,
            ok: BTreeMap::new(),
        }
    }

    /// A pages object for `[uptr, uptr + len)` and the source mapping all
    /// of it. `None` when the range wraps the address space: every caller
    /// of `Pages::new` refuses that first (`Ioas::map_user`: `EOVERFLOW`).
    fn src(&self, uptr: u64, len: u64, writable: bool) -> Option<MapSource> {
        uptr.checked_add(len)?;
        let p = Pages::new(self.mem.clone(), uptr, len, writable, AccountMode::None);
        Some(MapSource {
            start_byte: uptr - p.uptr(),
            pages: p,
            length: len,
        })
    }

    /// Compare the engine's result with the model's: `Ok(true)` when both
    /// succeeded. An engine `ENOENT` where the model expects success is the
    /// armed injected failure (accepted once).
    fn agree(
        &mut self,
        step: usize,
        op: &Op,
        got: std::result::Result<(), i32>,
        want: std::result::Result<(), i32>,
    ) -> std::result::Result<bool, String> {
        if got == want {
            return Ok(got.is_ok());
        }
        if want.is_ok() && got == Err(libc::ENOENT) && self.armed.is_some() {
            self.armed = None;
            return Ok(false);
        }
        Err(format!(
            "step {step} {op:x?}: engine {got:?}, model {want:?}"
        ))
    }

    /// Map `srcs` (the engine's) / `msrcs` (the model's) at `dst` on both
    /// sides; `Ok(true)` when it succeeded (the model then holds the area).
    #[allow(clippy::too_many_arguments)]
    fn map_both(
        &mut self,
        step: usize,
        op: &Op,
        view: &dyn UserView,
        srcs: Vec<MapSource>,
        msrcs: &[MSrc],
        len: u64,
        dst: Option<u64>,
        write: bool,
    ) -> std::result::Result<bool, String> {
        let prot = Prot { read: true, write };
        let r = self.t.map(
            srcs,
            len,
            dst.map_or(IovaRequest::Alloc, IovaRequest::Fixed),
            prot,
        );
        let want = self.m.map(view, msrcs, len, dst, write);
        if !self.agree(step, op, class(&r), mclass(&want))? {
            return Ok(false);
        }
        let (iova, ok_iovas) = (r.expect("agreed"), want.expect("agreed"));
        ensure!(
            ok_iovas.contains(&iova),
            "step {step} {op:x?}: mapped at {iova:#x}, the model allows {ok_iovas:#x?}"
        );
        self.m.insert(msrcs, iova, write);
        Ok(true)
    }

    /// Map new pages of `[uptr, uptr + len)` at `dst` on both sides;
    /// `Ok(true)` when it succeeded. A range that wraps is skipped.
    #[allow(clippy::too_many_arguments)]
    fn map_user(
        &mut self,
        step: usize,
        op: &Op,
        view: &dyn UserView,
        uptr: u64,
        len: u64,
        writable: bool,
        dst: Option<u64>,
        write: bool,
    ) -> std::result::Result<bool, String> {
        let Some(s) = self.src(uptr, len, writable) else {
            return Ok(false);
        };
        let ms = [MSrc {
            uptr,
            len,
            pages_id: s.pages.id(),
            writable,
        }];
        self.map_both(step, op, view, vec![s], &ms, len, dst, write)
    }

    /// Apply `op` to both sides (user memory as `view` says it is);
    /// `Ok(true)` when it succeeded (counted in [`Harness::ok`]).
    pub fn apply(
        &mut self,
        step: usize,
        op: &Op,
        view: &dyn UserView,
    ) -> std::result::Result<bool, String> {
        let kind = self.apply_op(step, op, view)?;
        if let Some(kind) = kind {
            *self.ok.entry(kind).or_default() += 1;
        }
        Ok(kind.is_some())
    }

    fn apply_op(
        &mut self,
        step: usize,
        op: &Op,
        view: &dyn UserView,
    ) -> std::result::Result<Option<&'static str>, String> {
        let t = &self.t.clone();
        let mut ok = None;
        match op.clone() {
            Op::MapFixed {
                iova,
                len,
                uptr,
                writable,
                write,
            } => {
                if self.map_user(step, op, view, uptr, len, writable, Some(iova), write)? {
                    ok = Some("map_fixed");
                }
            }
            Op::MapAlloc {
                len,
                uptr,
                writable,
            } => {
                if self.map_user(step, op, view, uptr, len, writable, None, writable)? {
                    ok = Some("map_alloc");
                }
            }
            Op::Unmap { iova, len } => {
                let got = t.unmap(iova, len).map_err(|e| e.errno().0);
                let want = if len == 0 {
                    Err(libc::EINVAL)
                } else {
                    match iova.checked_add(len - 1) {
                        None => Err(libc::EOVERFLOW),
                        Some(l) => self.m.unmap(iova, l),
                    }
                };
                ensure_eq!(got, want, "step {step} {op:x?}");
                self.sync_pins()?;
                if got.is_ok_and(|b| b > 0) {
                    ok = Some("unmap");
                }
            }
            Op::UnmapAll => {
                let got = t.unmap_all().map_err(|e| e.errno().0);
                let want = self.m.unmap(0, u64::MAX);
                ensure_eq!(got, want, "step {step} {op:x?}");
                self.sync_pins()?;
            }
            Op::Copy {
                src,
                len,
                dst,
                write,
            } => {
                let got = t.get_pages(src, len);
                let want = self.m.get_pages(src, len);
                ensure_eq!(
                    class(&got),
                    mclass(&want),
                    "step {step} {op:x?} (get_pages)"
                );
                if let (Ok(got), Ok(want)) = (got, want) {
                    let g: Vec<_> = got
                        .iter()
                        .map(|g| (g.pages.uptr() + g.start_byte, g.length, g.pages.id()))
                        .collect();
                    let w: Vec<_> = want.iter().map(|w| (w.uptr, w.len, w.pages_id)).collect();
                    ensure_eq!(g, w, "step {step} {op:x?}: get_pages sources");
                    if self.map_both(step, op, view, got, &want, len, dst, write)? {
                        ok = Some("copy");
                    }
                }
            }
            Op::SetAllowed(ranges) => {
                let r = t.set_allowed(&ranges);
                ensure_eq!(
                    class(&r),
                    self.m.set_allowed(&ranges),
                    "step {step} {op:x?}"
                );
            }
            Op::AddReserved(s, l, owner) => {
                let r = t.add_reserved(s, l, owner);
                ensure_eq!(
                    class(&r),
                    self.m.add_reserved(s, l, owner),
                    "step {step} {op:x?}"
                );
            }
            Op::RemoveReserved(owner) => {
                t.remove_reserved(owner);
                self.m.reserved.retain(|r| r.2 != owner);
            }
            Op::LargePages(enable) => {
                let r = t.set_large_pages(enable);
                ensure_eq!(
                    class(&r),
                    self.m.set_large_pages(enable),
                    "step {step} {op:x?}"
                );
            }
            Op::AddDomain { huge } => {
                if self.doms.len() >= self.max_domains {
                    return Ok(None);
                }
                let d = TestDomain::new(self.driver, huge);
                let r = t.add_domain(d.domain());
                ensure_eq!(
                    class(&r),
                    self.m.add_domain(view),
                    "step {step} {op:x?}: {r:?}"
                );
                if r.is_ok() {
                    self.doms.push(d);
                    self.m.domains += 1;
                    ok = Some("add_domain");
                } else {
                    ensure!(d.is_empty(), "step {step}: a refused domain stays empty");
                }
            }
            Op::RemoveDomain(i) => {
                if self.doms.is_empty() {
                    return Ok(None);
                }
                let d = self.doms.remove(i % self.doms.len());
                if self.armed == Some(d.id()) {
                    self.armed = None;
                }
                t.remove_domain(d.id());
                self.m.domains -= 1;
                ensure!(d.is_empty(), "step {step}: a removed domain is emptied");
            }
            Op::ArmFailure { domain, after } => {
                self.disarm();
                if !self.doms.is_empty() {
                    let d = &self.doms[domain % self.doms.len()];
                    if d.fail_map_after(Some(after)) {
                        self.armed = Some(d.id());
                    }
                }
            }
            Op::AddAccess { which, align } => {
                if self.accs[which].is_some() {
                    return Ok(None);
                }
                let acc = Arc::new(Acc {
                    table: Arc::downgrade(t),
                    stubborn: which == STUBBORN,
                    pins: Mutex::new(Vec::new()),
                });
                let weak: Weak<dyn AccessNotify> =
                    Arc::downgrade(&(acc.clone() as Arc<dyn AccessNotify>));
                let r = t.add_access(weak, align);
                let m = &self.m;
                let want = if !align.is_power_of_two() {
                    Err(libc::EINVAL)
                } else {
                    let new = m.align().max(align);
                    if new > m.align() && !m.conform(new) {
                        Err(libc::EADDRINUSE)
                    } else {
                        Ok(())
                    }
                };
                ensure_eq!(class(&r), want, "step {step} {op:x?}");
                if let Ok(token) = r {
                    self.accs[which] = Some((acc, token));
                    self.m.access_align[which] = Some(align);
                    ok = Some("add_access");
                }
            }
            Op::RemoveAccess(which) => {
                if let Some((acc, token)) = self.accs[which].take() {
                    for (i, l) in std::mem::take(&mut *lock(&acc.pins)) {
                        t.access_unpin(i, l);
                    }
                    t.remove_access(token);
                    self.m.access_align[which] = None;
                    self.m.pins[which].clear();
                }
            }
            Op::Pin {
                which,
                iova,
                len,
                write,
            } => {
                let Some((acc, _)) = &self.accs[which] else {
                    return Ok(None);
                };
                let r = t.access_pin(iova, len, write);
                let want = self.m.pin(view, iova, len, write);
                ensure_eq!(class(&r), mclass(&want), "step {step} {op:x?}");
                if let (Ok(got), Ok(want)) = (r, want) {
                    ensure_eq!(got, want, "step {step} {op:x?}: pinned host pages");
                    lock(&acc.pins).push((iova, len));
                    self.m.pins[which].push((iova, len));
                    ok = Some("pin");
                }
            }
            Op::Unpin { which, index } => {
                let Some((acc, _)) = &self.accs[which] else {
                    return Ok(None);
                };
                let mut pins = lock(&acc.pins);
                if pins.is_empty() {
                    return Ok(None);
                }
                let n = pins.len();
                let (i, l) = pins.remove(index % n);
                drop(pins);
                t.access_unpin(i, l);
                let mp = &mut self.m.pins[which];
                let at = mp.iter().position(|&p| p == (i, l));
                ensure!(
                    at.is_some(),
                    "step {step} {op:x?}: pin {i:#x}+{l:#x} not in the model"
                );
                mp.remove(at.expect("checked"));
            }
            Op::Rw {
                iova,
                len,
                write,
                fill,
            } => {
                let len = len.min(RW_MAX);
                let mut buf: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let data = buf.clone();
                let r = t.access_rw(iova, &mut buf, write);
                let want = self.m.rw(view, iova, len, write);
                ensure_eq!(class(&r), mclass(&want), "step {step} {op:x?}");
                if let Ok(plan) = want {
                    ok = Some("rw");
                    self.check_rw(step, op, &plan, &data, &buf, write)?;
                }
            }
            Op::Translate { iova, write } => self.probe(step, op, &[(iova, 4096, write)])?,
        }
        Ok(ok)
    }

    /// The bytes an access read/write moved are the model's host bytes
    /// (areas may alias the same host memory: later segments win), and a
    /// read returns what each segment's host bytes hold.
    fn check_rw(
        &self,
        step: usize,
        op: &Op,
        plan: &[(u64, u64)],
        data: &[u8],
        buf: &[u8],
        write: bool,
    ) -> std::result::Result<(), String> {
        let lo = plan.iter().map(|p| p.0).min().expect("non-empty");
        let hi = plan.iter().map(|p| p.0 + p.1).max().expect("non-empty");
        let mut expect: Vec<Option<u8>> = vec![None; (hi - lo) as usize];
        let mut off = 0usize;
        for &(u, l) in plan {
            let src = if write { data } else { buf };
            for i in 0..l as usize {
                let at = (u - lo) as usize + i;
                if write || expect[at].is_none() {
                    expect[at] = Some(src[off + i]);
                }
            }
            off += l as usize;
        }
        // per segment: the span between them may hold unreadable pages
        let mut host = vec![0u8; (hi - lo) as usize];
        for &(u, l) in plan {
            let at = (u - lo) as usize;
            let seg = &mut host[at..at + l as usize];
            if self.mem.read(u, seg).is_err() {
                seg.fill(0);
            }
        }
        if let Some(i) = (0..host.len()).find(|&i| expect[i].is_some_and(|e| e != host[i])) {
            return Err(format!(
                "step {step} {op:x?}: host byte {:#x} is {:#x}, expected {:#x?}",
                lo + i as u64,
                host[i],
                expect[i]
            ));
        }
        if !write {
            let mut off = 0usize;
            for &(u, l) in plan {
                let at = (u - lo) as usize;
                ensure!(
                    buf[off..off + l as usize] == host[at..at + l as usize],
                    "step {step} {op:x?}: read bytes differ from host {u:#x}"
                );
                off += l as usize;
            }
        }
        Ok(())
    }

    /// Bring the model's cooperative pins in line with what the access
    /// holds after an unmap notified it (the model computed the same set).
    fn sync_pins(&self) -> std::result::Result<(), String> {
        if let Some((acc, _)) = &self.accs[COOPERATIVE] {
            let mut got = lock(&acc.pins).clone();
            let mut want = self.m.pins[COOPERATIVE].clone();
            got.sort_unstable();
            want.sort_unstable();
            ensure_eq!(got, want, "cooperative access pins after an unmap");
        }
        Ok(())
    }

    /// Disarm every mock domain's injected map failure.
    pub fn disarm(&mut self) {
        for d in &self.doms {
            d.fail_map_after(None);
        }
        self.armed = None;
    }

    /// After a step: the table against the model (see the module docs).
    pub fn check(&self, step: usize, op: &Op) -> std::result::Result<(), String> {
        let (t, m) = (&self.t, &self.m);
        if let Err(err) = t.check_invariants() {
            return Err(format!("step {step} {op:x?}: invariant broken: {err}"));
        }
        let have: Vec<_> = t
            .areas()
            .iter()
            .map(|a| (a.iova, a.length, a.uptr, a.pages_id, a.prot.write))
            .collect();
        let want: Vec<_> = m
            .areas
            .iter()
            .map(|(&k, a)| (k, a.len, a.uptr, a.pages_id, a.write))
            .collect();
        ensure_eq!(have, want, "step {step} {op:x?}: areas");
        ensure_eq!(
            t.iova_ranges(),
            (m.iova_ranges(), m.align()),
            "step {step} {op:x?}: iova ranges and alignment"
        );
        ensure_eq!(t.large_pages(), !m.small_pages, "step {step}: large pages");
        ensure_eq!(t.domains().len(), m.domains, "step {step}: domains");
        let runs = m.domain_runs();
        for d in &self.doms {
            ensure_eq!(d.warnings(), 0, "step {step} {op:x?}: an unmap cut a map");
            ensure_eq!(
                d.runs(),
                runs,
                "step {step} {op:x?}: domain {} mappings",
                d.id()
            );
        }
        if self.check_translate {
            self.check_translations(step, op)?;
        }
        Ok(())
    }

    /// `Domain::translate` of every attached domain against the model:
    /// both edges and the middle of every area (read and write), the IOVA
    /// just before and just past it.
    pub fn check_translations(&self, step: usize, op: &Op) -> std::result::Result<(), String> {
        let mut probes: Vec<(u64, u64, bool)> = Vec::new();
        for (&k, a) in &self.m.areas {
            let l = a.last(k);
            for w in [false, true] {
                probes.push((k, a.len, w));
                probes.push((l, 1, w));
                probes.push((k + a.len / 2, a.len - a.len / 2, w));
            }
            if k > 0 {
                probes.push((k - 1, 1, false));
            }
            if l < u64::MAX {
                probes.push((l + 1, 1, false));
            }
        }
        self.probe(step, op, &probes)
    }

    /// `Domain::translate(iova, len, write)` of every attached domain
    /// against the model, for each probe.
    fn probe(
        &self,
        step: usize,
        op: &Op,
        probes: &[(u64, u64, bool)],
    ) -> std::result::Result<(), String> {
        for d in &self.doms {
            for &(iova, len, write) in probes {
                check_translate(d, &self.m, iova, len, write)
                    .map_err(|e| format!("step {step} {op:x?}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Tear down: disarm, let go of every pin, unmap everything (as the
    /// model says), detach and check each domain is empty, check again.
    pub fn teardown(
        &mut self,
        step: usize,
        view: &dyn UserView,
    ) -> std::result::Result<(), String> {
        self.disarm();
        for which in [COOPERATIVE, STUBBORN] {
            self.apply(step, &Op::RemoveAccess(which), view)?;
        }
        self.apply(step, &Op::UnmapAll, view)?;
        for d in std::mem::take(&mut self.doms) {
            ensure!(d.is_empty(), "unmap_all leaves domain {} empty", d.id());
            self.t.remove_domain(d.id());
        }
        self.m.domains = 0;
        self.check(step, &Op::UnmapAll)
    }
}

/// What the model says `iova` translates to: `(host address, writable)`.
pub fn model_translate(m: &Model, iova: u64) -> Option<(u64, bool)> {
    let (&k, a) = m.areas.range(..=iova).next_back()?;
    (iova <= a.last(k)).then(|| (a.uptr + (iova - k), a.write))
}

/// `d.translate(iova, len, write)` against the model.
fn check_translate(
    d: &TestDomain,
    m: &Model,
    iova: u64,
    len: u64,
    write: bool,
) -> std::result::Result<(), String> {
    let got = d.domain().translate(iova, len, write);
    let ctx = format!(
        "domain {} translate({iova:#x}, {len:#x}, write {write})",
        d.id()
    );
    match (model_translate(m, iova), got) {
        (None, Err(DmaFault::NotPresent { iova: f })) if f == iova => Ok(()),
        (
            Some((_, false)),
            Err(DmaFault::Permission {
                iova: f,
                write: true,
            }),
        ) if write && f == iova => Ok(()),
        (Some((host, w)), Ok((h, n))) if h == host && n >= 1 && n <= len && (w || !write) => {
            // every byte of the contiguous run the domain reports is the
            // model's too
            match model_translate(m, iova + n - 1) {
                Some((hl, _)) if hl == host + n - 1 => Ok(()),
                want => Err(format!(
                    "{ctx}: ({h:#x}, {n:#x}) but its last byte is {want:x?} in the model"
                )),
            }
        }
        (want, got) => Err(format!("{ctx}: got {got:x?}, the model says {want:x?}")),
    }
}
