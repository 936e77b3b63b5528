//! The `io_pagetable_model` harness: the input decoded into operations on
//! one [`IoPagetable`](uiommufd::plumbing::io_pagetable::IoPagetable), run and checked
//! step by step by the test kit's [`Harness`] against the reference model
//! (the harness and model the proptests of `tests/io_pagetable_model.rs`
//! use).
//!
//! Operations: map at a fixed or an allocated IOVA, unmap, unmap all, copy
//! (`get_pages` + `map`), set the allowed ranges, add and remove reserved
//! ranges, large pages on/off, attach and detach mock domains, arm the
//! mock's injected map failure, and two accesses (one that unpins when told
//! to, one that never does) that pin, unpin and read/write by IOVA.
//!
//! User memory is the fuzz arena (read/write, read-only and `PROT_NONE`
//! pages; see [`super::arena`]), so the model also predicts the `EFAULT`s
//! of pinning with domains attached and of accesses.
//!
//! After every step the harness checks the result and the whole table
//! against the model (see [`uiommufd_testkit::iopt_harness`]). At the end
//! everything is torn down and no arena page may stay pinned.
//!
//! # Input format
//!
//! One selector byte per operation, then its fields (IOVAs, lengths and
//! user addresses biased as the proptest's strategies, plus IOVAs of
//! existing areas); at most [`MAX_STEPS`] operations.

use std::collections::BTreeMap;

use uiommufd::mock::domain::{MOCK_APERTURE_LAST, MOCK_APERTURE_START};
use uiommufd::pages::Pages;
use uiommufd::user::page_size;

use uiommufd_testkit::iopt_harness::{Driver, Harness, Op};
use uiommufd_testkit::iopt_model::Model;

use super::arena::{Arena, PAGES};
use super::input::Input;

/// The most operations one input runs.
pub const MAX_STEPS: usize = 128;

const AP: u64 = MOCK_APERTURE_START;
const AP_LAST: u64 = MOCK_APERTURE_LAST;
/// Owners of user reserved ranges (far from the domains' IDs).
const OWNERS: [u64; 3] = [0, 1 << 62, (1 << 62) + 1];
/// Mock domains attached at most.
const MAX_DOMAINS: usize = 3;

fn ps() -> u64 {
    page_size()
}

fn mps() -> u64 {
    page_size() / 2
}

/// Decodes [`Op`]s from the input, biased towards the model's areas.
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

/// Run one input; panics on a finding (see the module docs). Returns how
/// many operations of each kind succeeded.
pub fn run(data: &[u8]) -> BTreeMap<&'static str, usize> {
    let arena = Arena::acquire();
    let mut inp = Input::new(data);
    let mut h = Harness::new(arena.memory(), Driver::Mock);
    h.max_domains = MAX_DOMAINS;
    // the proptests probe translations; here the executions they would
    // halve find more
    h.check_translate = false;
    let mut steps = 0;
    while !inp.is_empty() && steps < MAX_STEPS {
        let op = Gen {
            inp: &mut inp,
            m: &h.m,
            base: arena.base(),
        }
        .op();
        if super::input::tracing() {
            eprintln!("step {steps}: {op:x?}");
        }
        let found = h
            .apply(steps, &op, &*arena)
            .and_then(|_| h.check(steps, &op));
        if let Err(e) = found {
            panic!("{e}");
        }
        steps += 1;
    }
    if let Err(e) = h.teardown(steps, &*arena) {
        panic!("teardown: {e}");
    }
    let ok = std::mem::take(&mut h.ok);
    drop(h);
    for p in 0..PAGES {
        let n = Pages::pins_of_user_page(arena.page(p));
        assert_eq!(
            n, 0,
            "arena page {p} is still pinned {n} time(s) after teardown"
        );
    }
    ok
}
