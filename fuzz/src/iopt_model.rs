//! The `io_pagetable_model` harness: operations on one
//! [`IoPagetable`] checked step by step against the reference model
//! [`uiommufd_testkit::iopt_model`] (the one the proptests of
//! `io_pagetable/tests.rs` use).
//!
//! Operations: map at a fixed or an allocated IOVA, unmap, unmap all, copy
//! (`get_pages` + `map`), set the allowed ranges, add and remove reserved
//! ranges, large pages on/off, attach and detach mock domains
//! ([`MockDomain::new`]), arm the mock's injected map failure, and two
//! accesses (one that unpins when told to, one that never does) that pin,
//! unpin and read/write by IOVA.
//!
//! User memory is the fuzz arena (read/write, read-only and `PROT_NONE`
//! pages; see [`super::arena`]), so the model also predicts the `EFAULT`s
//! of pinning with domains attached and of accesses.
//!
//! After every step: the errno (or success) must match the model's, the
//! table's `check_invariants` must pass, its areas, IOVA ranges, alignment
//! and large-pages setting must equal the model's, every mock domain must
//! map exactly the model's areas, and no mock domain may have seen an unmap
//! that cuts a map. At the end everything is torn down and no arena page
//! may stay pinned.
//!
//! # Input format
//!
//! One selector byte per operation, then its fields (IOVAs, lengths and
//! user addresses biased as the proptest's strategies, plus IOVAs of
//! existing areas); at most [`MAX_STEPS`] operations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use uiommufd::accounting::AccountMode;
use uiommufd::domain::Domain;
use uiommufd::io_pagetable::{AccessNotify, IoPagetable, IovaRequest, MapSource};
use uiommufd::mock::domain::{MockDomain, MOCK_APERTURE_LAST, MOCK_APERTURE_START};
use uiommufd::pages::Pages;
use uiommufd::user::page_size;
use uiommufd::{Prot, Result};

use uiommufd_testkit::iopt_model::{overlaps, MSrc, Model, COOPERATIVE, STUBBORN};

use super::arena::{Arena, PAGES};
use super::input::Input;

/// The most operations one input runs.
pub const MAX_STEPS: usize = 128;

const AP: u64 = MOCK_APERTURE_START;
const AP_LAST: u64 = MOCK_APERTURE_LAST;
/// Owners of user reserved ranges (far from the domains' IDs).
const OWNERS: [u64; 3] = [0, 1 << 62, (1 << 62) + 1];
/// The largest buffer an access read/write moves.
const RW_MAX: u64 = 64 << 10;

fn ps() -> u64 {
    page_size()
}

fn mps() -> u64 {
    page_size() / 2
}

/// The errno of a result (`Ok` as `Ok(())`).
fn class<T>(r: &Result<T>) -> std::result::Result<(), i32> {
    r.as_ref().map(|_| ()).map_err(|e| e.errno().0)
}

/// An access of the harness: remembers its pins; the cooperative one unpins
/// those an unmap reaches when notified, the stubborn one never does.
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
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        pins.retain(|&(i, l)| {
            if overlaps((i, i + (l - 1)), (iova, last)) {
                t.access_unpin(i, l);
                false
            } else {
                true
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One operation.
#[derive(Debug, Clone)]
enum Op {
    MapFixed {
        iova: u64,
        len: u64,
        uptr: u64,
        writable: bool,
        write: bool,
    },
    MapAlloc {
        len: u64,
        uptr: u64,
        writable: bool,
    },
    Unmap {
        iova: u64,
        len: u64,
    },
    UnmapAll,
    Copy {
        src: u64,
        len: u64,
        dst: Option<u64>,
        write: bool,
    },
    SetAllowed(Vec<(u64, u64)>),
    AddReserved(u64, u64, u64),
    RemoveReserved(u64),
    LargePages(bool),
    AddDomain {
        huge: bool,
    },
    RemoveDomain(usize),
    ArmFailure {
        domain: usize,
        after: u64,
    },
    AddAccess {
        which: usize,
        align: u64,
    },
    RemoveAccess(usize),
    Pin {
        which: usize,
        iova: u64,
        len: u64,
        write: bool,
    },
    Unpin {
        which: usize,
        index: usize,
    },
    Rw {
        iova: u64,
        len: u64,
        write: bool,
        fill: u8,
    },
}

struct Gen<'a, 'b> {
    inp: &'a mut Input<'b>,
    m: &'a Model,
    base: u64,
}

impl Gen<'_, '_> {
    fn area_iova(&mut self) -> Option<u64> {
        if self.m.areas.is_empty() {
            return None;
        }
        let i = self.inp.below(self.m.areas.len());
        let (&k, a) = self.m.areas.iter().nth(i).expect("index in range");
        Some(match self.inp.u8() % 6 {
            0..=2 => k,
            3 => k.wrapping_add(ps()),
            4 => k.wrapping_add(a.len),
            _ => k.wrapping_add(mps()),
        })
    }

    /// A range made of existing areas (whole, several, or a piece of one).
    fn area_range(&mut self) -> Option<(u64, u64)> {
        if self.m.areas.is_empty() {
            return None;
        }
        let n = self.m.areas.len();
        let i = self.inp.below(n);
        let j = (i + self.inp.below(3)).min(n - 1);
        let v: Vec<(u64, u64)> = self
            .m
            .areas
            .iter()
            .skip(i)
            .take(j - i + 1)
            .map(|(&k, a)| (k, a.last(k)))
            .collect();
        let (s, l) = (v[0].0, v[v.len() - 1].1);
        // the whole space is 2^64 bytes: saturate
        let len = (l - s).saturating_add(1);
        Some(match self.inp.u8() % 6 {
            0..=2 => (s, len),
            3 => (s, len.min(ps())),
            4 => (s.wrapping_add(ps()), len.saturating_sub(ps()).max(1)),
            _ => (s, len.saturating_add(ps())),
        })
    }

    /// An IOVA range: often one made of areas.
    fn iova_len(&mut self) -> (u64, u64) {
        if self.inp.one_in(2) {
            if let Some(r) = self.area_range() {
                return r;
            }
        }
        (self.iova(), self.len())
    }

    fn iova(&mut self) -> u64 {
        let ps = ps();
        let s = self.inp.u8();
        if s % 16 < 5 {
            if let Some(i) = self.area_iova() {
                return i;
            }
        }
        let p = self.inp.u8() as u64 % 64;
        match s % 16 {
            0..=9 => AP + p * ps,
            10 => AP + p * ps + mps(),
            11 => AP + p * ps + 1 + self.inp.u8() as u64 % 64,
            12 => p * ps,
            13 => (u64::MAX - (1 + p % 4) * ps).wrapping_add(1),
            14 => AP_LAST + 1 - (1 + p) * ps,
            _ => self.inp.u64(),
        }
    }

    fn len(&mut self) -> u64 {
        let ps = ps();
        let p = 1 + self.inp.u8() as u64 % 7;
        match self.inp.u8() % 16 {
            0..=9 => p * ps,
            10 => p * ps - mps(),
            11 => 1 + self.inp.u8() as u64 % 64,
            12 => (16 + self.inp.u8() as u64 % 48) * ps,
            13 => p * mps(),
            14 => u64::MAX - self.inp.u8() as u64 * ps,
            _ => self.inp.u64() % (1 << 40),
        }
    }

    fn uptr(&mut self) -> u64 {
        let ps = ps();
        let p = self.inp.u8() as u64 % 200;
        let b = self.base;
        match self.inp.u8() % 8 {
            0..=4 => b + p * ps,
            5 => b + p * ps + mps(),
            6 => b + p * ps + 1 + self.inp.u8() as u64 % 64,
            _ => b + (p % 64) * ps,
        }
    }

    fn range(&mut self) -> (u64, u64) {
        let ps = ps();
        let (a, b, o) = (
            self.inp.u8() as u64 % 64,
            self.inp.u8() as u64 % 64,
            self.inp.u8() as u64 % 3,
        );
        let base = if self.inp.one_in(4) { 0 } else { AP };
        (base + a * ps + o, base + b * ps + o.saturating_sub(1))
    }

    fn op(&mut self) -> Op {
        match self.inp.u8() % 32 {
            0..=5 => Op::MapFixed {
                iova: self.iova(),
                len: self.len(),
                uptr: self.uptr(),
                writable: !self.inp.one_in(5),
                write: self.inp.u8() % 10 < 7,
            },
            6..=8 => Op::MapAlloc {
                len: self.len(),
                uptr: self.uptr(),
                writable: !self.inp.one_in(8),
            },
            9..=12 => {
                let (iova, len) = if self.inp.one_in(4) {
                    (self.iova(), (1 + self.inp.u8() as u64 % 20) * ps())
                } else {
                    self.iova_len()
                };
                Op::Unmap { iova, len }
            }
            13 => Op::UnmapAll,
            14..=16 => {
                let (src, len) = self.iova_len();
                Op::Copy {
                    src,
                    len,
                    dst: if self.inp.bool() {
                        Some(self.iova())
                    } else {
                        None
                    },
                    write: self.inp.u8() % 10 < 3,
                }
            }
            17 => {
                let n = self.inp.u8() % 4;
                Op::SetAllowed((0..n).map(|_| self.range()).collect())
            }
            18 => {
                let (a, b) = self.range();
                let owner = OWNERS[self.inp.below(OWNERS.len())];
                Op::AddReserved(a.min(b), a.max(b), owner)
            }
            19 => Op::RemoveReserved(OWNERS[self.inp.below(OWNERS.len())]),
            20 => Op::LargePages(self.inp.bool()),
            21 | 22 => Op::AddDomain {
                huge: self.inp.bool(),
            },
            23 => Op::RemoveDomain(self.inp.u8() as usize),
            24 => Op::ArmFailure {
                domain: self.inp.u8() as usize,
                after: self.inp.u8() as u64 % 4,
            },
            25 => Op::AddAccess {
                which: self.inp.u8() as usize % 2,
                align: self.inp.pick(&[1, mps(), ps(), 2 * ps(), 3, 1]),
            },
            26 => Op::RemoveAccess(self.inp.u8() as usize % 2),
            27 | 28 => {
                let which = self.inp.u8() as usize % 2;
                let (iova, len) = self.iova_len();
                Op::Pin {
                    which,
                    iova,
                    len,
                    write: self.inp.bool(),
                }
            }
            29 => Op::Unpin {
                which: self.inp.u8() as usize % 2,
                index: self.inp.u8() as usize,
            },
            _ => {
                let (iova, len) = self.iova_len();
                Op::Rw {
                    iova,
                    len,
                    write: self.inp.bool(),
                    fill: self.inp.u8(),
                }
            }
        }
    }
}

/// The engine side of a run.
struct Engine {
    t: Arc<IoPagetable>,
    doms: Vec<Arc<MockDomain>>,
    /// `(access, token)` of the registered accesses.
    accs: [Option<(Arc<Acc>, u64)>; 2],
    /// The domain ID armed with an injected map failure.
    armed: Option<u64>,
    mem: Arc<dyn uiommufd::user::UserMemory>,
    /// Operations that succeeded, by kind (for seed checks and stats).
    ok: BTreeMap<&'static str, usize>,
}

impl Engine {
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
}

/// Compare the engine's result with the model's. An engine `ENOENT` where
/// the model expects success is the armed injected failure (accepted once).
fn agree(
    step: usize,
    op: &Op,
    got: std::result::Result<(), i32>,
    want: std::result::Result<(), i32>,
    armed: &mut Option<u64>,
) -> bool {
    if got == want {
        return got.is_ok();
    }
    if want.is_ok() && got == Err(libc::ENOENT) && armed.is_some() {
        *armed = None;
        return false;
    }
    panic!("step {step} {op:?}: engine {got:?}, model {want:?}");
}

fn apply(step: usize, op: &Op, e: &mut Engine, m: &mut Model, arena: &Arena) {
    if let Some(kind) = apply_op(step, op, e, m, arena) {
        *e.ok.entry(kind).or_default() += 1;
    }
}

/// Apply `op` to both sides; `Some(kind)` when it succeeded.
fn apply_op(
    step: usize,
    op: &Op,
    e: &mut Engine,
    m: &mut Model,
    arena: &Arena,
) -> Option<&'static str> {
    let t = &e.t.clone();
    let mut ok = None;
    match op.clone() {
        Op::MapFixed {
            iova,
            len,
            uptr,
            writable,
            write,
        } => {
            let s = e.src(uptr, len, writable)?;
            let ms = [MSrc {
                uptr,
                len,
                pages_id: s.pages.id(),
                writable,
            }];
            let prot = Prot { read: true, write };
            let r = t.map(vec![s], len, IovaRequest::Fixed(iova), prot);
            let want = m.map(arena, &ms, len, Some(iova), write);
            if agree(step, op, class(&r), want.map(|_| ()), &mut e.armed) {
                m.insert(&ms, iova, write);
                ok = Some("map_fixed");
            }
        }
        Op::MapAlloc {
            len,
            uptr,
            writable,
        } => {
            let s = e.src(uptr, len, writable)?;
            let ms = [MSrc {
                uptr,
                len,
                pages_id: s.pages.id(),
                writable,
            }];
            let prot = Prot {
                read: true,
                write: writable,
            };
            let r = t.map(vec![s], len, IovaRequest::Alloc, prot);
            let want = m.map(arena, &ms, len, None, writable);
            let ok_iovas = want.clone().unwrap_or_default();
            if agree(step, op, class(&r), want.map(|_| ()), &mut e.armed) {
                let iova = r.expect("agreed");
                assert!(
                    ok_iovas.contains(&iova),
                    "step {step} {op:?}: allocated {iova:#x}, the model allows {ok_iovas:#x?}"
                );
                m.insert(&ms, iova, writable);
                ok = Some("map_alloc");
            }
        }
        Op::Unmap { iova, len } => {
            let r = t.unmap(iova, len);
            let want = if len == 0 {
                Err(libc::EINVAL)
            } else {
                match iova.checked_add(len - 1) {
                    None => Err(libc::EOVERFLOW),
                    Some(l) => m.unmap(iova, l),
                }
            };
            let got = r.as_ref().map(|&b| b).map_err(|e| e.errno().0);
            assert_eq!(got, want, "step {step} {op:?}");
            sync_pins(e, m);
            if got.is_ok_and(|b| b > 0) {
                ok = Some("unmap");
            }
        }
        Op::UnmapAll => {
            let r = t.unmap_all();
            let want = m.unmap(0, u64::MAX);
            let got = r.as_ref().map(|&b| b).map_err(|e| e.errno().0);
            assert_eq!(got, want, "step {step} {op:?}");
            sync_pins(e, m);
        }
        Op::Copy {
            src,
            len,
            dst,
            write,
        } => {
            let got = t.get_pages(src, len);
            let want = m.get_pages(src, len);
            assert_eq!(
                class(&got),
                want.as_ref().map(|_| ()).map_err(|&e| e),
                "step {step} {op:?} (get_pages)"
            );
            if let (Ok(got), Ok(want)) = (got, want) {
                let g: Vec<_> = got
                    .iter()
                    .map(|g| (g.pages.uptr() + g.start_byte, g.length, g.pages.id()))
                    .collect();
                let w: Vec<_> = want.iter().map(|w| (w.uptr, w.len, w.pages_id)).collect();
                assert_eq!(g, w, "step {step} {op:?}: get_pages sources");
                let prot = Prot { read: true, write };
                let r = t.map(
                    got,
                    len,
                    dst.map_or(IovaRequest::Alloc, IovaRequest::Fixed),
                    prot,
                );
                let mw = m.map(arena, &want, len, dst, write);
                let ok_iovas = mw.clone().unwrap_or_default();
                if agree(step, op, class(&r), mw.map(|_| ()), &mut e.armed) {
                    let iova = r.expect("agreed");
                    assert!(ok_iovas.contains(&iova), "step {step}: copy to {iova:#x}");
                    m.insert(&want, iova, write);
                    ok = Some("copy");
                }
            }
        }
        Op::SetAllowed(ranges) => {
            let r = t.set_allowed(&ranges);
            let want = m.set_allowed(&ranges);
            assert_eq!(class(&r), want, "step {step} {op:?}");
        }
        Op::AddReserved(s, l, owner) => {
            let r = t.add_reserved(s, l, owner);
            let want = m.add_reserved(s, l, owner);
            assert_eq!(class(&r), want, "step {step} {op:?}");
        }
        Op::RemoveReserved(owner) => {
            t.remove_reserved(owner);
            m.reserved.retain(|r| r.2 != owner);
        }
        Op::LargePages(enable) => {
            let r = t.set_large_pages(enable);
            let want = m.set_large_pages(enable);
            assert_eq!(class(&r), want, "step {step} {op:?}");
        }
        Op::AddDomain { huge } => {
            if e.doms.len() >= 3 {
                return None;
            }
            let d = MockDomain::new(huge);
            let r = t.add_domain(d.clone());
            let want = m.add_domain(arena);
            assert_eq!(class(&r), want, "step {step} {op:?}: {r:?}");
            if r.is_ok() {
                e.doms.push(d);
                m.domains += 1;
                ok = Some("add_domain");
            } else {
                assert!(d.is_empty(), "step {step}: a refused domain stays empty");
            }
        }
        Op::RemoveDomain(i) => {
            if e.doms.is_empty() {
                return None;
            }
            let d = e.doms.remove(i % e.doms.len());
            if e.armed == Some(d.id()) {
                e.armed = None;
            }
            t.remove_domain(d.id());
            m.domains -= 1;
            assert!(d.is_empty(), "step {step}: a removed domain is emptied");
        }
        Op::ArmFailure { domain, after } => {
            for d in &e.doms {
                d.fail_map_after(None);
            }
            e.armed = None;
            if !e.doms.is_empty() {
                let d = &e.doms[domain % e.doms.len()];
                d.fail_map_after(Some(after));
                e.armed = Some(d.id());
            }
        }
        Op::AddAccess { which, align } => {
            if e.accs[which].is_some() {
                return None;
            }
            let acc = Arc::new(Acc {
                table: Arc::downgrade(t),
                stubborn: which == STUBBORN,
                pins: Mutex::new(Vec::new()),
            });
            let weak: Weak<dyn AccessNotify> =
                Arc::downgrade(&(acc.clone() as Arc<dyn AccessNotify>));
            let r = t.add_access(weak, align);
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
            assert_eq!(class(&r), want, "step {step} {op:?}");
            if let Ok(token) = r {
                e.accs[which] = Some((acc, token));
                ok = Some("add_access");
                m.access_align[which] = Some(align);
            }
        }
        Op::RemoveAccess(which) => {
            if let Some((acc, token)) = e.accs[which].take() {
                for (i, l) in std::mem::take(&mut *lock(&acc.pins)) {
                    t.access_unpin(i, l);
                }
                t.remove_access(token);
                m.access_align[which] = None;
                m.pins[which].clear();
            }
        }
        Op::Pin {
            which,
            iova,
            len,
            write,
        } => {
            let Some((acc, _)) = &e.accs[which] else {
                return None;
            };
            let r = t.access_pin(iova, len, write);
            let want = m.pin(arena, iova, len, write);
            assert_eq!(
                class(&r),
                want.as_ref().map(|_| ()).map_err(|&e| e),
                "step {step} {op:?}"
            );
            if let (Ok(got), Ok(want)) = (r, want) {
                assert_eq!(got, want, "step {step} {op:?}: pinned host pages");
                lock(&acc.pins).push((iova, len));
                m.pins[which].push((iova, len));
                ok = Some("pin");
            }
        }
        Op::Unpin { which, index } => {
            let Some((acc, _)) = &e.accs[which] else {
                return None;
            };
            let mut pins = lock(&acc.pins);
            if pins.is_empty() {
                return None;
            }
            let n = pins.len();
            let (i, l) = pins.remove(index % n);
            drop(pins);
            t.access_unpin(i, l);
            let mp = &mut m.pins[which];
            let at = mp.iter().position(|&p| p == (i, l)).expect("model pin");
            mp.remove(at);
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
            let want = m.rw(arena, iova, len, write);
            assert_eq!(
                class(&r),
                want.as_ref().map(|_| ()).map_err(|&e| e),
                "step {step} {op:?}"
            );
            if let Ok(plan) = want {
                ok = Some("rw");
                // the bytes moved are the model's host bytes (areas may
                // alias the same host memory: later segments win)
                let lo = plan.iter().map(|p| p.0).min().expect("non-empty");
                let hi = plan.iter().map(|p| p.0 + p.1).max().expect("non-empty");
                let mut expect: Vec<Option<u8>> = vec![None; (hi - lo) as usize];
                let mut off = 0usize;
                for &(u, l) in &plan {
                    let src = if write { &data } else { &buf };
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
                for &(u, l) in &plan {
                    let at = (u - lo) as usize;
                    arena.peek(u, &mut host[at..at + l as usize]);
                }
                if let Some(i) = (0..host.len()).find(|&i| expect[i].is_some_and(|e| e != host[i]))
                {
                    panic!(
                        "step {step} {op:?}: host byte {:#x} is {:#x}, expected {:#x?}",
                        lo + i as u64,
                        host[i],
                        expect[i]
                    );
                }
                if !write {
                    // a read returns what each segment's host bytes hold
                    let mut off = 0usize;
                    for &(u, l) in &plan {
                        let at = (u - lo) as usize;
                        if buf[off..off + l as usize] != host[at..at + l as usize] {
                            panic!("step {step} {op:?}: read bytes differ from host {u:#x}");
                        }
                        off += l as usize;
                    }
                }
            }
        }
    }
    ok
}

/// Bring the model's cooperative pins in line with what the access holds
/// after an unmap notified it (the model computed the same set).
fn sync_pins(e: &Engine, m: &Model) {
    if let Some((acc, _)) = &e.accs[COOPERATIVE] {
        let mut got = lock(&acc.pins).clone();
        let mut want = m.pins[COOPERATIVE].clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "cooperative access pins after an unmap");
    }
}

fn check(step: usize, op: &Op, e: &Engine, m: &Model) {
    let t = &e.t;
    if let Err(err) = t.check_invariants() {
        panic!("step {step} {op:?}: invariant broken: {err}");
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
    assert_eq!(have, want, "step {step} {op:?}: areas");
    assert_eq!(
        t.iova_ranges(),
        (m.iova_ranges(), m.align()),
        "step {step} {op:?}: iova ranges and alignment"
    );
    assert_eq!(t.large_pages(), !m.small_pages, "step {step}: large pages");
    assert_eq!(t.domains().len(), m.domains, "step {step}: domains");
    let runs = m.domain_runs();
    for d in &e.doms {
        assert_eq!(d.warnings(), 0, "step {step} {op:?}: an unmap cut a map");
        assert_eq!(
            d.runs(),
            runs,
            "step {step} {op:?}: domain {} mappings",
            d.id()
        );
    }
}

/// Run one input; panics on a finding (see the module docs). Returns how
/// many operations of each kind succeeded.
pub fn run(data: &[u8]) -> BTreeMap<&'static str, usize> {
    let arena = Arena::acquire();
    let mut inp = Input::new(data);
    let mut m = Model::default();
    let mut e = Engine {
        t: Arc::new(IoPagetable::new()),
        doms: Vec::new(),
        accs: [None, None],
        armed: None,
        mem: arena.memory(),
        ok: BTreeMap::new(),
    };
    let mut steps = 0;
    while !inp.is_empty() && steps < MAX_STEPS {
        let op = Gen {
            inp: &mut inp,
            m: &m,
            base: arena.base(),
        }
        .op();
        if super::input::tracing() {
            eprintln!("step {steps}: {op:x?}");
        }
        apply(steps, &op, &mut e, &mut m, &arena);
        check(steps, &op, &e, &m);
        steps += 1;
    }
    // teardown: disarm, let go of every pin, unmap, detach
    for d in &e.doms {
        d.fail_map_after(None);
    }
    for which in [COOPERATIVE, STUBBORN] {
        apply(steps, &Op::RemoveAccess(which), &mut e, &mut m, &arena);
    }
    apply(steps, &Op::UnmapAll, &mut e, &mut m, &arena);
    for d in std::mem::take(&mut e.doms) {
        assert!(d.is_empty(), "unmap_all leaves domain {} empty", d.id());
        e.t.remove_domain(d.id());
    }
    m.domains = 0;
    check(steps, &Op::UnmapAll, &e, &m);
    let ok = std::mem::take(&mut e.ok);
    drop(e);
    for p in 0..PAGES {
        let n = Pages::pins_of_user_page(arena.page(p));
        assert_eq!(
            n, 0,
            "arena page {p} is still pinned {n} time(s) after teardown"
        );
    }
    ok
}
