//! The IO page table reference model: what an
//! [`IoPagetable`](uiommufd::plumbing::io_pagetable::IoPagetable) must answer to each
//! operation (the errno, the acceptable IOVAs, the host pages an access
//! pins), written independently of the engine. One model, used by the
//! engine's proptests (`io_pagetable/tests.rs`), by the fuzz target
//! `io_pagetable_model` and by their regression replays.
//!
//! Intervals are `(start, last)` with an inclusive `last`. The model knows
//! nothing of user memory but what a [`UserView`] tells it: which ranges a
//! pin could populate (the `EFAULT`s of pinning with domains attached and
//! of accesses).
//!
//! A harness runs an operation on the engine and asks the model what it
//! should have answered. Settings (`set_allowed`, `add_reserved`,
//! `set_large_pages`) apply themselves to the model when they predict
//! success; for the rest the harness records what succeeded (`insert` at
//! the IOVA the engine chose, `domains += 1`, pins) once engine and model
//! agree.

use std::collections::BTreeMap;

use uiommufd::mock::domain::{MOCK_APERTURE_LAST, MOCK_APERTURE_START};
use uiommufd::plumbing::io_pagetable::huge_page_size;
use uiommufd::user::page_size;

fn ps() -> u64 {
    page_size()
}

/// What the table sees of the domains the model attaches (all of one
/// driver): their aperture and smallest IO page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainGeometry {
    /// First IOVA of the aperture.
    pub start: u64,
    /// Last IOVA of the aperture.
    pub last: u64,
    /// The smallest IO page size.
    pub io_page: u64,
}

impl DomainGeometry {
    /// The selftest mock domain: `MOCK_APERTURE_START..=MOCK_APERTURE_LAST`,
    /// `MOCK_IO_PAGE_SIZE` (half a page).
    pub fn mock() -> DomainGeometry {
        DomainGeometry {
            start: MOCK_APERTURE_START,
            last: MOCK_APERTURE_LAST,
            io_page: page_size() / 2,
        }
    }

    /// A VT-d second-stage domain of `addr_width` bits: from 0, 4 KiB pages.
    pub fn vtd(addr_width: u32) -> DomainGeometry {
        DomainGeometry {
            start: 0,
            last: (1u64 << addr_width) - 1,
            io_page: 1 << 12,
        }
    }

    /// The ranges outside the aperture (what each attached domain reserves).
    fn outside(&self) -> Vec<(u64, u64)> {
        let mut r = Vec::new();
        if self.start != 0 {
            r.push((0, self.start - 1));
        }
        if self.last != u64::MAX {
            r.push((self.last + 1, u64::MAX));
        }
        r
    }
}

impl Default for DomainGeometry {
    fn default() -> DomainGeometry {
        DomainGeometry::mock()
    }
}

/// What the model may assume of user memory.
pub trait UserView {
    /// Whether `[addr, addr + len)` can be populated (for write if `write`).
    fn accessible(&self, addr: u64, len: u64, write: bool) -> bool;
}

/// User memory that is all there, read/write (a real buffer larger than
/// anything mapped).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllAccessible;

impl UserView for AllAccessible {
    fn accessible(&self, _addr: u64, _len: u64, _write: bool) -> bool {
        true
    }
}

/// `[a0, a1]` and `[b0, b1]` share a point.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Remove `cut` from every interval of `v`.
pub fn subtract(v: Vec<(u64, u64)>, cut: (u64, u64)) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (s, l) in v {
        if !overlaps((s, l), cut) {
            out.push((s, l));
            continue;
        }
        if s < cut.0 {
            out.push((s, cut.0 - 1));
        }
        if l > cut.1 {
            out.push((cut.1 + 1, l));
        }
    }
    out
}

/// The kernel's `__alloc_iova_check_range`, written independently of the
/// engine's `fit` so that the model checks it.
pub fn model_fit(start: u64, last: u64, len: u64, align: u64, page_offset: u64) -> Option<u64> {
    let up = start.checked_add(align - 1)? / align * align;
    let cand = up | page_offset;
    if cand >= last || last - cand < len - 1 {
        None
    } else {
        Some(cand)
    }
}

/// One area of the model.
#[derive(Debug, Clone)]
pub struct MArea {
    /// Bytes.
    pub len: u64,
    /// The user address of its first byte.
    pub uptr: u64,
    /// The ID of the pages object it maps.
    pub pages_id: u64,
    /// Whether the pages object is writable.
    pub writable: bool,
    /// Whether the area was mapped for write.
    pub write: bool,
}

impl MArea {
    /// The last IOVA of the area starting at `k`.
    pub fn last(&self, k: u64) -> u64 {
        k + (self.len - 1)
    }
}

/// One source of a map, as the model sees it.
#[derive(Debug, Clone)]
pub struct MSrc {
    /// The user address of its first byte.
    pub uptr: u64,
    /// Bytes.
    pub len: u64,
    /// The ID of its pages object.
    pub pages_id: u64,
    /// Whether the pages object is writable.
    pub writable: bool,
}

/// The access that unpins what an unmap reaches when notified.
pub const COOPERATIVE: usize = 0;
/// The access that never unpins when notified (unmaps of its pins fail).
pub const STUBBORN: usize = 1;

/// The model of one IO page table.
#[derive(Debug, Default)]
pub struct Model {
    /// Areas by first IOVA.
    pub areas: BTreeMap<u64, MArea>,
    /// The allowed ranges.
    pub allowed: Vec<(u64, u64)>,
    /// User reserved ranges with their owner.
    pub reserved: Vec<(u64, u64, u64)>,
    /// Large pages off (`IOMMU_OPTION_HUGE_PAGES` = 0).
    pub small_pages: bool,
    /// Attached domains (each reserves everything outside its aperture
    /// and asks for its IO page size as alignment).
    pub domains: usize,
    /// The aperture and IO page size of those domains (the mock's by
    /// default).
    pub geometry: DomainGeometry,
    /// IOVA alignment asked by each registered access
    /// ([`COOPERATIVE`], [`STUBBORN`]).
    pub access_align: [Option<u64>; 2],
    /// Pins `(iova, length)` of each access, in pin order.
    pub pins: [Vec<(u64, u64)>; 2],
}

/// A walk over contiguous areas: `(area key, first iova, last iova)`.
pub type Segs = Vec<(u64, u64, u64)>;

impl Model {
    /// The IOVA alignment the table must enforce.
    pub fn align(&self) -> u64 {
        let mut a = if self.small_pages { ps() } else { 1 };
        if self.domains > 0 {
            a = a.max(self.geometry.io_page);
        }
        for x in self.access_align.iter().flatten() {
            a = a.max(*x);
        }
        a
    }

    /// Whether every area satisfies alignment `al`.
    pub fn conform(&self, al: u64) -> bool {
        self.areas.iter().all(|(&k, a)| {
            k.is_multiple_of(al) && a.len.is_multiple_of(al) && (a.uptr % ps()).is_multiple_of(al)
        })
    }

    /// The reserved ranges, those of the domains included.
    pub fn all_reserved(&self) -> Vec<(u64, u64)> {
        let mut r: Vec<(u64, u64)> = self.reserved.iter().map(|&(s, l, _)| (s, l)).collect();
        for _ in 0..self.domains {
            r.extend(self.geometry.outside());
        }
        r
    }

    /// Whether an area overlaps `[s, l]`.
    pub fn area_hit(&self, s: u64, l: u64) -> bool {
        self.areas
            .iter()
            .any(|(&k, a)| overlaps((k, a.last(k)), (s, l)))
    }

    /// Whether a reserved range overlaps `[s, l]`.
    pub fn reserved_hit(&self, s: u64, l: u64) -> bool {
        self.all_reserved().iter().any(|&r| overlaps(r, (s, l)))
    }

    /// The kernel's `iopt_table_add_domain` for a mock domain: `Ok` when it
    /// may be attached (the caller then counts it in [`Model::domains`]).
    pub fn add_domain(&self, mem: &dyn UserView) -> std::result::Result<(), i32> {
        let new = self.align().max(self.geometry.io_page);
        if new > ps() {
            return Err(libc::EINVAL);
        }
        if new != self.align() && !self.conform(new) {
            return Err(libc::EADDRINUSE);
        }
        for (s, l) in self.geometry.outside() {
            if self.area_hit(s, l) || self.allowed.iter().any(|&a| overlaps(a, (s, l))) {
                return Err(libc::EADDRINUSE);
            }
        }
        if self.domains == 0
            && self
                .areas
                .values()
                .any(|a| !mem.accessible(a.uptr, a.len, a.writable))
        {
            return Err(libc::EFAULT);
        }
        Ok(())
    }

    /// The candidate IOVAs of an allocation (one per hole of the allowed spans).
    pub fn candidates(&self, uptr: u64, len: u64) -> std::result::Result<Vec<u64>, i32> {
        let ps = ps();
        if len >= u64::MAX / 2 {
            return Err(libc::EOVERFLOW);
        }
        let pow = len.next_power_of_two();
        let a = if uptr == 0 {
            pow
        } else {
            pow.min(1 << uptr.trailing_zeros())
        }
        .min(huge_page_size());
        if a < self.align() {
            return Err(libc::EINVAL);
        }
        let mut spans: Vec<(u64, u64)> = if self.allowed.is_empty() {
            vec![(ps, u64::MAX - ps)]
        } else {
            self.allowed.clone()
        };
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, l) in spans {
            let (s, l) = (s.max(ps), l.min(u64::MAX - ps));
            if s > l {
                continue;
            }
            match merged.last_mut() {
                Some(m) if m.1.checked_add(1) == Some(s) => m.1 = l,
                _ => merged.push((s, l)),
            }
        }
        let mut used = self.all_reserved();
        used.extend(self.areas.iter().map(|(&k, a)| (k, a.last(k))));
        used.sort_unstable();
        let mut out = Vec::new();
        for (s, l) in merged {
            let mut cur = Some(s);
            for &(us, ul) in &used {
                let Some(c) = cur else { break };
                if ul < c || us > l {
                    continue;
                }
                if us > c {
                    out.extend(model_fit(c, us - 1, len, a, uptr % ps));
                }
                cur = ul.checked_add(1);
            }
            if let Some(c) = cur {
                if c <= l {
                    out.extend(model_fit(c, l, len, a, uptr % ps));
                }
            }
        }
        Ok(out)
    }

    /// What a map of `srcs` should do: the acceptable IOVAs, or the errno.
    pub fn map(
        &self,
        mem: &dyn UserView,
        srcs: &[MSrc],
        len: u64,
        iova: Option<u64>,
        write: bool,
    ) -> std::result::Result<Vec<u64>, i32> {
        let ps = ps();
        let al = self.align();
        if len == 0 || !len.is_multiple_of(al) {
            return Err(libc::EINVAL);
        }
        let iovas = match iova {
            Some(i) => {
                if !i.is_multiple_of(al) {
                    return Err(libc::EINVAL);
                }
                let Some(l) = i.checked_add(len - 1) else {
                    return Err(libc::EOVERFLOW);
                };
                if self.reserved_hit(i, l) {
                    return Err(libc::EINVAL);
                }
                if self.area_hit(i, l) {
                    return Err(libc::EEXIST);
                }
                vec![i]
            }
            None => {
                let c = self.candidates(srcs[0].uptr, len)?;
                if c.is_empty() {
                    return Err(libc::ENOSPC);
                }
                c
            }
        };
        for s in srcs {
            if write && !s.writable {
                return Err(libc::EPERM);
            }
            if !(s.uptr % ps).is_multiple_of(al) {
                return Err(libc::EINVAL);
            }
        }
        if self.domains > 0
            && srcs
                .iter()
                .any(|s| !mem.accessible(s.uptr, s.len, s.writable))
        {
            return Err(libc::EFAULT);
        }
        Ok(iovas)
    }

    /// Record a map of `srcs` at `iova` that succeeded.
    pub fn insert(&mut self, srcs: &[MSrc], iova: u64, write: bool) {
        let mut at = iova;
        for s in srcs {
            self.areas.insert(
                at,
                MArea {
                    len: s.len,
                    uptr: s.uptr,
                    pages_id: s.pages_id,
                    writable: s.writable,
                    write,
                },
            );
            at = at.wrapping_add(s.len);
        }
    }

    /// Unmap `[s, l]`: bytes, or the errno. Changes the model only as the
    /// engine must (cooperative pins released on `EDEADLK` stay released).
    pub fn unmap(&mut self, s: u64, l: u64) -> std::result::Result<u64, i32> {
        let hit: Vec<u64> = self
            .areas
            .iter()
            .filter(|(&k, a)| overlaps((k, a.last(k)), (s, l)))
            .map(|(&k, _)| k)
            .collect();
        for &k in &hit {
            if k < s || self.areas[&k].last(k) > l {
                return Err(libc::ENOENT);
            }
        }
        for &k in &hit {
            let r = (k, self.areas[&k].last(k));
            let pinned = |p: &(u64, u64)| overlaps((p.0, p.0 + (p.1 - 1)), r);
            self.pins[COOPERATIVE].retain(|p| !pinned(p));
            if self.pins[STUBBORN].iter().any(pinned) {
                return Err(libc::EDEADLK);
            }
        }
        Ok(hit
            .into_iter()
            .map(|k| self.areas.remove(&k).expect("hit").len)
            .sum())
    }

    /// The kernel's contiguous walk over `[iova, last]`.
    pub fn segments(&self, iova: u64, last: u64) -> (Segs, bool) {
        let mut out = Vec::new();
        let start = match self.areas.range(..=iova).next_back() {
            Some((&k, a)) if a.last(k) >= iova => k,
            _ => return (out, false),
        };
        let mut cur = iova;
        for (&k, a) in self.areas.range(start..) {
            if k > cur {
                break;
            }
            let end = a.last(k).min(last);
            out.push((k, cur, end));
            if end == last {
                return (out, true);
            }
            cur = end + 1;
        }
        (out, false)
    }

    /// The argument checks of a copy, a pin or an access read/write
    /// (`EINVAL` for a zero `len`, `EOVERFLOW` when the range wraps), then
    /// [`Self::segments`] over `[iova, last]`; `last` first.
    fn checked_segments(&self, iova: u64, len: u64) -> std::result::Result<(u64, Segs, bool), i32> {
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let last = iova.checked_add(len - 1).ok_or(libc::EOVERFLOW)?;
        let (segs, done) = self.segments(iova, last);
        Ok((last, segs, done))
    }

    /// The sources a copy of `[iova, iova + len)` takes, or the errno.
    pub fn get_pages(&self, iova: u64, len: u64) -> std::result::Result<Vec<MSrc>, i32> {
        let (_, segs, done) = self.checked_segments(iova, len)?;
        if !done {
            return Err(libc::ENOENT);
        }
        Ok(segs
            .into_iter()
            .map(|(k, cur, end)| {
                let a = &self.areas[&k];
                MSrc {
                    uptr: a.uptr + (cur - k),
                    len: end - cur + 1,
                    pages_id: a.pages_id,
                    writable: a.writable,
                }
            })
            .collect())
    }

    /// An access pin: the host page addresses, or the errno.
    pub fn pin(
        &self,
        mem: &dyn UserView,
        iova: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<Vec<u64>, i32> {
        let ps = ps();
        let (last, segs, done) = self.checked_segments(iova, len)?;
        let mut out = Vec::new();
        for &(k, cur, end) in &segs {
            let a = &self.areas[&k];
            let u0 = a.uptr + (cur - k);
            let u1 = u0 + (end - cur);
            if !u0.is_multiple_of(ps) || (end < last && u1 % ps != ps - 1) {
                return Err(libc::EINVAL);
            }
            if write && !a.write {
                return Err(libc::EPERM);
            }
            if write && !a.writable {
                return Err(libc::EPERM);
            }
            let (p0, p1) = (u0 / ps, u1 / ps);
            if !mem.accessible(p0 * ps, (p1 - p0 + 1) * ps, a.writable) {
                return Err(libc::EFAULT);
            }
            out.extend((p0..=p1).map(|p| p * ps));
        }
        if !done {
            return Err(libc::ENOENT);
        }
        Ok(out)
    }

    /// An access read/write: the host ranges `(uptr, len)` it moves, or the errno.
    pub fn rw(
        &self,
        mem: &dyn UserView,
        iova: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<Vec<(u64, u64)>, i32> {
        let (_, segs, done) = self.checked_segments(iova, len)?;
        let mut plan = Vec::new();
        for &(k, cur, end) in &segs {
            let a = &self.areas[&k];
            if write && (!a.write || !a.writable) {
                return Err(libc::EPERM);
            }
            plan.push((a.uptr + (cur - k), end - cur + 1));
        }
        if !done {
            return Err(libc::ENOENT);
        }
        if plan.iter().any(|&(u, l)| !mem.accessible(u, l, write)) {
            return Err(libc::EFAULT);
        }
        Ok(plan)
    }

    /// The usable IOVA ranges (`IOMMU_IOAS_IOVA_RANGES`).
    pub fn iova_ranges(&self) -> Vec<(u64, u64)> {
        let mut holes = vec![(0, u64::MAX)];
        for r in self.all_reserved() {
            holes = subtract(holes, r);
        }
        holes.sort_unstable();
        holes
    }

    /// What every attached mock domain must map: maximal runs
    /// `(iova, host address, length)`.
    pub fn domain_runs(&self) -> Vec<(u64, u64, u64)> {
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        for (&k, a) in &self.areas {
            match out.last_mut() {
                Some(r) if r.0.checked_add(r.2) == Some(k) && r.1 + r.2 == a.uptr => r.2 += a.len,
                _ => out.push((k, a.uptr, a.len)),
            }
        }
        out
    }

    /// `set_allowed(ranges)`: the errno, or `Ok` (then the model takes the
    /// ranges).
    pub fn set_allowed(&mut self, ranges: &[(u64, u64)]) -> std::result::Result<(), i32> {
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable();
        if ranges.iter().any(|&(s, l)| s >= l) || sorted.windows(2).any(|w| w[1].0 <= w[0].1) {
            return Err(libc::EINVAL);
        }
        if ranges.iter().any(|&(s, l)| self.reserved_hit(s, l)) {
            return Err(libc::EADDRINUSE);
        }
        self.allowed = sorted;
        Ok(())
    }

    /// `add_reserved(s, l, owner)`: the errno, or `Ok` (then the model
    /// reserves the range).
    pub fn add_reserved(&mut self, s: u64, l: u64, owner: u64) -> std::result::Result<(), i32> {
        if self.area_hit(s, l) || self.allowed.iter().any(|&a| overlaps(a, (s, l))) {
            return Err(libc::EADDRINUSE);
        }
        self.reserved.push((s, l, owner));
        Ok(())
    }

    /// `set_large_pages(enable)`: the errno, or `Ok` (then the model takes
    /// the setting).
    pub fn set_large_pages(&mut self, enable: bool) -> std::result::Result<(), i32> {
        if !enable && !self.small_pages {
            if self.domains > 0 && !self.areas.is_empty() {
                return Err(libc::EINVAL);
            }
            let after = Model {
                small_pages: true,
                domains: self.domains,
                geometry: self.geometry,
                access_align: self.access_align,
                ..Model::default()
            };
            let new = after.align();
            if new > self.align() && !self.conform(new) {
                return Err(libc::EADDRINUSE);
            }
        }
        self.small_pages = !enable;
        Ok(())
    }
}
