//! Access pins and copies by IOVA (the kernel's `iommufd_access_pin_pages`,
//! `iommufd_access_unpin_pages` and `iommufd_access_rw` in device.c, over
//! `iopt_area_add_access`/`iopt_pages_rw_access` in pages.c).
//!
//! Intervals: `last` inclusive; lengths in bytes.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Area, AreaState, IoPagetable, PinnedPages, State};
use crate::user::{access_ok, page_size, UserMemory};
use crate::{bail, err, Result};

/// The part of one area a contiguous walk covers.
struct Seg<'a> {
    key: u64,
    area: &'a Area,
    /// First IOVA of the part.
    start: u64,
    /// Last IOVA of the part.
    last: u64,
}

impl Seg<'_> {
    /// Offsets of the part's first and last bytes from `pages.uptr()`.
    fn bytes(&self) -> (u64, u64) {
        let a = self.area;
        (
            a.start_byte + (self.start - self.key),
            a.start_byte + (self.last - self.key),
        )
    }

    fn prot_allows(&self, write: bool) -> bool {
        if write {
            self.area.prot.write
        } else {
            self.area.prot.read
        }
    }
}

impl Seg<'_> {
    /// The per-area checks of an access copy: `EINVAL` while an unmap is
    /// waiting for the area's accesses, `EPERM` when the prot or the
    /// memory does not allow the direction.
    fn rw_check(&self, write: bool) -> Result<()> {
        let a = self.area;
        if a.prevent_access {
            bail!(
                EINVAL,
                "area [{:#x}, {:#x}] is being unmapped; its accesses are asked to let go",
                self.key,
                a.last
            );
        }
        if !self.prot_allows(write) {
            bail!(
                EPERM,
                "area [{:#x}, {:#x}] does not allow {} access",
                self.key,
                a.last,
                if write { "write" } else { "read" }
            );
        }
        if write && !a.pages.writable() {
            bail!(
                EPERM,
                "area [{:#x}, {:#x}] maps read-only memory; write access refused",
                self.key,
                a.last
            );
        }
        if a.pages.is_dmabuf() {
            // the kernel's iopt_pages_rw_access: no page to copy through
            bail!(
                EINVAL,
                "area [{:#x}, {:#x}] maps a dma-buf, which accesses cannot read or write",
                self.key,
                a.last
            );
        }
        Ok(())
    }
}

impl State {
    /// The live area that holds all of `iova..=last`, if one does: the
    /// walk's common case, without allocating. O(log n).
    fn within_one(&self, iova: u64, last: u64) -> Option<Seg<'_>> {
        let (&k, a) = self.areas.range(..=iova).next_back()?;
        (a.last >= last && a.state == AreaState::Live).then_some(Seg {
            key: k,
            area: a,
            start: iova,
            last,
        })
    }

    /// The kernel's contiguous-area walk: the live areas that cover
    /// `iova..=last` back to back from `iova`, and whether they reach `last`
    /// (a gap, or an area being mapped or unmapped, ends the walk).
    fn contig(&self, iova: u64, last: u64) -> (Vec<Seg<'_>>, bool) {
        let mut out = Vec::new();
        let start = match self.areas.range(..=iova).next_back() {
            Some((&k, a)) if a.last >= iova => k,
            _ => return (out, false),
        };
        let mut cur = iova;
        for (&k, a) in self.areas.range(start..) {
            if k > cur || a.state != AreaState::Live {
                break;
            }
            let end = a.last.min(last);
            out.push(Seg {
                key: k,
                area: a,
                start: cur,
                last: end,
            });
            if end == last {
                return (out, true);
            }
            cur = end + 1;
        }
        (out, false)
    }
}

/// Drop one access pin of pages `first..=last` recorded in `area`.
/// Returns false when no such pin is recorded.
fn remove_pin(area: &Area, first: u64, last: u64) -> bool {
    let mut acc = area.accesses.lock();
    let Some(n) = acc.get_mut(&(first, last)) else {
        return false;
    };
    *n -= 1;
    if *n == 0 {
        acc.remove(&(first, last));
    }
    area.pages.unpin(first, last);
    true
}

impl IoPagetable {
    /// Pin `[iova, iova + length)` for an access (the kernel's
    /// `iommufd_access_pin_pages`): contiguous published areas must cover it,
    /// page aligned in their pages, with the right prot (`write`).
    ///
    /// Returns the host address of every page the range touches. Each call
    /// adds one pin user to those pages until the matching
    /// [`IoPagetable::access_unpin`]. Errors: `EINVAL` for a zero length,
    /// `EOVERFLOW` when the range wraps; then area by area `EINVAL` (an unmap
    /// is waiting for the area's accesses, or the range does not start on a
    /// page boundary of the area's pages, or continues past an area that
    /// does not end on one), `EPERM` (the area is not readable / writable,
    /// or write access to read-only pages), pin errors (`EFAULT`, `ENOMEM`);
    /// then `ENOENT` unless published areas cover the range without a gap.
    /// On error nothing stays pinned.
    pub fn access_pin(&self, iova: u64, length: u64, write: bool) -> Result<PinnedPages> {
        let ps = page_size();
        let last = super::range_last("access pin", iova, length)?;
        // Pinned under the read lock so that an unmap (write lock) sees
        // every pin it must wait for.
        let st = self.state.read();
        let (segs, done) = st.contig(iova, last);
        let mut out = Vec::new();
        let mut pinned: Vec<(&Area, u64, u64)> = Vec::new();
        let mut failure = None;
        for s in &segs {
            let a = s.area;
            let (sb, lb) = s.bytes();
            let continues = s.last < last;
            if a.prevent_access {
                failure = Some(err!(
                    EINVAL,
                    "area [{:#x}, {:#x}] is being unmapped; its accesses are asked to let go",
                    s.key,
                    a.last
                ));
                break;
            }
            if !sb.is_multiple_of(ps) || (continues && lb % ps != ps - 1) {
                failure = Some(err!(
                    EINVAL,
                    "access pin of [{iova:#x}, {last:#x}] is not page aligned in the pages of area [{:#x}, {:#x}] \
                     (bytes {sb:#x}..={lb:#x})",
                    s.key,
                    a.last
                ));
                break;
            }
            if !s.prot_allows(write) {
                failure = Some(err!(
                    EPERM,
                    "area [{:#x}, {:#x}] does not allow {} access",
                    s.key,
                    a.last,
                    if write { "write" } else { "read" }
                ));
                break;
            }
            if write && !a.pages.writable() {
                failure = Some(err!(
                    EPERM,
                    "area [{:#x}, {:#x}] maps read-only memory; write access refused",
                    s.key,
                    a.last
                ));
                break;
            }
            let (first, lastp) = (sb / ps, lb / ps);
            {
                let mut acc = a.accesses.lock();
                // the kernel's iopt_pages_fill_xarray fails half way here
                let r = crate::inject::point("access.pin", libc::EINVAL)
                    .and_then(|()| a.pages.pin(first, lastp));
                if let Err(e) = r {
                    failure = Some(e);
                    break;
                }
                *acc.entry((first, lastp)).or_default() += 1;
            }
            pinned.push((a, first, lastp));
            if a.pages.relocated() {
                out.extend((first..=lastp).map(|p| a.pages.host(p * ps)));
            } else {
                let base = a.pages.uptr();
                out.extend((first..=lastp).map(|p| base + p * ps));
            }
        }
        if failure.is_none() && !done {
            let reached = segs.last().map_or(iova, |s| s.last + 1);
            failure = Some(err!(
                ENOENT,
                "nothing is mapped at iova {reached:#x} inside [{iova:#x}, {last:#x}]"
            ));
        }
        if let Some(e) = failure {
            for (a, first, lastp) in pinned {
                remove_pin(a, first, lastp);
            }
            return Err(e);
        }
        if write {
            // hook (write_log.rs): write-pinned pages count as dirty until unpinned
            self.write_log.pinned_for_write(iova, length);
        }
        Ok(out)
    }

    /// Lock (`lock`) or unlock the areas covering `[iova, iova + length)`
    /// against unmap (`EBUSY` while locked; the kernel's `num_locks` of a
    /// pin by an internal access). The range was pinned, so it is covered.
    pub fn lock_areas(&self, iova: u64, length: u64, lock: bool) {
        let Some(last) = length.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            return;
        };
        let st = self.state.read();
        let (segs, _) = st.contig(iova, last);
        for s in &segs {
            if lock {
                s.area
                    .locks
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            } else {
                let _ = s.area.locks.fetch_update(
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                    |n| n.checked_sub(1),
                );
            }
        }
    }

    /// Undo one [`IoPagetable::access_pin`] of exactly that range. A range
    /// that was not pinned is logged and ignored (the kernel WARNs).
    pub fn access_unpin(&self, iova: u64, length: u64) {
        let ps = page_size();
        // hook (write_log.rs): a write pin of this range no longer dirties
        self.write_log.unpinned(iova, length);
        let Some(last) = length.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            tracing::warn!("access_unpin: bad range iova {iova:#x} length {length:#x}");
            return;
        };
        let st = self.state.read();
        let (segs, done) = st.contig(iova, last);
        for s in &segs {
            let (sb, lb) = s.bytes();
            if !remove_pin(s.area, sb / ps, lb / ps) {
                tracing::warn!(
                    "access_unpin: [{iova:#x}, {last:#x}] was not pinned in area [{:#x}, {:#x}]",
                    s.key,
                    s.area.last
                );
            }
        }
        if !done {
            tracing::warn!("access_unpin: [{iova:#x}, {last:#x}] is not fully mapped");
        }
    }

    /// Copy between `buf` and IOVA `iova` (the kernel's `iommufd_access_rw`):
    /// `write` = device writes memory (`buf` → memory).
    ///
    /// Any alignment. Errors: `EINVAL` for an empty buffer, `EOVERFLOW` when
    /// the range wraps; area by area `EINVAL` (an unmap is waiting for the
    /// area's accesses), `EPERM` (prot, or writing read-only memory); then
    /// `ENOENT` for a gap; then `EFAULT` from the copy. The checks all run
    /// before any byte moves.
    ///
    /// **Fast path** (`IoPagetable::access_rw_fast`): while
    /// [`crate::faultsafe::enabled`] and the area's memory is the process's
    /// own ([`crate::user::UserMemory::direct`]), a copy inside one area
    /// moves in place with [`crate::faultsafe::copy`] (memory the program
    /// unmapped is `EFAULT`, never a crash), without taking the table's
    /// lock. Everything else takes the **locked path**: the tree walk and
    /// the copy under the read lock, as the kernel's under `iova_rwsem`.
    /// Either way an unmap never returns while bytes still move to or from
    /// the memory it unmapped (the program may reuse that memory as soon as
    /// it returns): it waits for the read lock, and drains the fast path's
    /// sections (`crate::drain`).
    pub fn access_rw(&self, iova: u64, buf: &mut [u8], write: bool) -> Result<()> {
        if let Some(g) = crate::drain::enter() {
            if let Some(r) = self.access_rw_fast(&g, iova, buf, write) {
                return r;
            }
        }
        self.access_rw_slow(iova, buf, write)
    }

    /// The fast path of [`IoPagetable::access_rw`], in the caller's drain
    /// section `_section`: `None` when it does not apply (then call
    /// `IoPagetable::access_rw_slow`, after ending the section).
    ///
    /// It applies when the whole range lies in one area that this thread
    /// copied through recently (a per-thread cache of the last few areas,
    /// [`hint`]) or that the table's index of directly copyable areas holds
    /// (a sorted array searched in O(log n), [`DirectIndex`]), and either
    /// was recorded at the table's current generation. Every map, unmap,
    /// split and `prevent_access` change moves the generation, so a match
    /// means the area is exactly as the locked walk saw it: live, not being
    /// unmapped, same memory and prot, so the same checks pass. The
    /// generation is read inside the section; an unmap moves it before it
    /// drains, so either this copy sees the new generation (and falls back
    /// to the locked walk, which sees the unmap) or the unmap waits for the
    /// copy (see [`crate::drain`]).
    #[inline]
    pub(crate) fn access_rw_fast(
        &self,
        _section: &crate::drain::Guard,
        iova: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Option<Result<()>> {
        let length = buf.len() as u64;
        if length == 0 || !crate::faultsafe::enabled() {
            return None;
        }
        let last = iova.checked_add(length - 1)?;
        let gen = self.state.gen();
        let delta = match hint::lookup(self.uid, gen, iova, last, write) {
            Some(d) => d,
            None => {
                let h = self.direct.find(gen, iova, last, write)?;
                hint::put(self.uid, gen, h);
                h.delta
            }
        };
        // the kernel's iopt_pages_rw_access through the mm
        if let Err(e) = crate::inject::point("access.rw", libc::EINVAL) {
            return Some(Err(e));
        }
        Some(self.copy_direct(iova, iova.wrapping_add(delta), buf, write))
    }

    /// [`IoPagetable::access_rw`] without its fast path: the argument
    /// checks, then the locked walk and copy.
    pub(crate) fn access_rw_slow(&self, iova: u64, buf: &mut [u8], write: bool) -> Result<()> {
        let length = buf.len() as u64;
        let last = super::range_last("access rw", iova, length)?;
        let (r, retired) = self.access_rw_locked(iova, last, buf, write);
        if let Some(old) = retired {
            // no section can still be reading the index it replaced once
            // the sections in flight have ended
            crate::drain::wait();
            drop(old);
        }
        r
    }

    /// The walk of [`IoPagetable::access_rw`] under the read lock (which
    /// also remembers the area for the fast path, and may rebuild the
    /// index: the index it replaced is returned, to be freed after a
    /// drain), then the copies, still under it (see
    /// [`IoPagetable::access_rw`]).
    fn access_rw_locked(
        &self,
        iova: u64,
        last: u64,
        buf: &mut [u8],
        write: bool,
    ) -> (Result<()>, Option<Box<Index>>) {
        let fast = crate::faultsafe::enabled();
        let st = self.state.read();
        // the generation of this snapshot: no writer while we hold it
        let gen = self.state.gen();
        let retired = if fast {
            self.direct.miss(&st, gen)
        } else {
            None
        };
        let r = self.access_rw_walk(&st, gen, fast, iova, last, buf, write);
        drop(st);
        (r, retired)
    }

    /// The walk and copies of [`IoPagetable::access_rw_locked`] under its
    /// read guard `st`, taken at generation `gen`.
    #[allow(clippy::too_many_arguments)]
    fn access_rw_walk(
        &self,
        st: &State,
        gen: u64,
        fast: bool,
        iova: u64,
        last: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result<()> {
        // One part (the common case) needs no allocation.
        let mut first: Option<(Target, u64)> = None;
        let mut more: Vec<(Target, u64)> = Vec::new();
        {
            let remember = match st.within_one(iova, last) {
                Some(s) => {
                    s.rw_check(write)?;
                    first = Some((Target::of(&s, fast), s.last - s.start + 1));
                    Some(s)
                }
                None => {
                    let (mut segs, done) = st.contig(iova, last);
                    for s in &segs {
                        s.rw_check(write)?;
                    }
                    if !done {
                        let reached = segs.last().map_or(iova, |s| s.last + 1);
                        bail!(
                            ENOENT,
                            "nothing is mapped at iova {reached:#x} inside [{iova:#x}, {last:#x}]"
                        );
                    }
                    more.extend(
                        segs.iter()
                            .map(|s| (Target::of(s, fast), s.last - s.start + 1)),
                    );
                    // a walk that goes on goes on from the last area
                    segs.pop()
                }
            };
            if let Some(h) = remember.filter(|_| fast).and_then(|s| Hint::of(&s)) {
                hint::put(self.uid, gen, h);
            }
        }
        // the kernel's iopt_pages_rw_access through the mm
        crate::inject::point("access.rw", libc::EINVAL)?;
        let mut off = 0usize;
        for (t, len) in first.into_iter().chain(more) {
            let chunk = &mut buf[off..off + len as usize];
            let at = iova + off as u64;
            match t {
                Target::Direct(host) => self.copy_direct(at, host, chunk, write)?,
                Target::Moved(pages, off) => {
                    // custody moved some of these pages: piece by piece
                    pages.for_each_host_run(off, len, |d, host, n| {
                        let part = &mut chunk[d as usize..(d + n) as usize];
                        if write {
                            crate::user::SelfMemory.write(host, part)?;
                            self.write_log.record_write(at + d, n);
                        } else {
                            crate::user::SelfMemory.read(host, part)?;
                        }
                        Ok::<(), crate::Error>(())
                    })?
                }
                Target::Memory(mem, addr) => {
                    if write {
                        mem.write(addr, chunk)?;
                        // hook (write_log.rs): chunks run back to back from `iova`
                        self.write_log.record_write(at, len);
                    } else {
                        mem.read(addr, chunk)?;
                    }
                }
            }
            off += len as usize;
        }
        Ok(())
    }

    /// Copy `buf` in place to or from host address `host`, which IOVA
    /// `iova` maps: `EFAULT` (never a crash) when the program no longer
    /// has the memory there, or (for `write`) it is not writable.
    ///
    /// Inlined, with the error built out of line: the fast path's 8-byte
    /// copy then returns its `Ok` in registers instead of through memory
    /// read back wider than it was written (a store-forwarding stall).
    #[inline]
    fn copy_direct(&self, iova: u64, host: u64, buf: &mut [u8], write: bool) -> Result<()> {
        let len = buf.len();
        let left = if write {
            // SAFETY: `faultsafe` is enabled (the caller checked); `buf`
            // is ours for `len` bytes; the host side is user memory that
            // passed `access_ok`, where a fault ends the copy.
            unsafe { crate::faultsafe::copy(host as usize as *mut u8, buf.as_ptr(), len) }
        } else {
            // SAFETY: as above, in the other direction.
            unsafe { crate::faultsafe::copy(buf.as_mut_ptr(), host as usize as *const u8, len) }
        };
        if write && left < len {
            // hook (write_log.rs): what reached memory, even half a copy
            self.write_log.record_write(iova, (len - left) as u64);
        }
        if left != 0 {
            return Err(copy_fault(iova, host, len, left, write));
        }
        Ok(())
    }
}

/// The `EFAULT` of a copy of `len` bytes at `iova` (host `host`) that
/// stopped `left` bytes short.
#[cold]
#[inline(never)]
fn copy_fault(iova: u64, host: u64, len: usize, left: usize, write: bool) -> crate::Error {
    let e = err!(
        EFAULT,
        "access {} of {len} bytes at iova {iova:#x}: host address {:#x} is not {} (the program \
         unmapped or protected the memory)",
        if write { "write" } else { "read" },
        host + (len - left) as u64,
        if write { "writable" } else { "readable" }
    );
    tracing::debug!("{e}");
    e
}

/// Where one part of an access copy goes.
enum Target {
    /// In place at this host address ([`crate::faultsafe::copy`]).
    Direct(u64),
    /// Through the pages' memory, at this user address.
    Memory(Arc<dyn UserMemory>, u64),
    /// Pages custody moved some of ([`crate::pages::Pages::relocated`]),
    /// from this byte of the object: copied piece by piece where they
    /// live now (always memory of this process).
    Moved(Arc<crate::pages::Pages>, u64),
}

impl Target {
    fn of(s: &Seg<'_>, fast: bool) -> Target {
        let a = s.area;
        if a.pages.relocated() {
            return Target::Moved(a.pages.clone(), s.bytes().0);
        }
        let addr = a.pages.uptr() + s.bytes().0;
        let len = s.last - s.start + 1;
        if fast && a.pages.memory().direct() && access_ok(addr, len as usize) {
            Target::Direct(addr)
        } else {
            Target::Memory(a.pages.memory().clone(), addr)
        }
    }
}

/// An area that may be copied in place, as the fast path needs it.
#[derive(Clone, Copy, Debug)]
struct Hint {
    /// The area's first IOVA.
    start: u64,
    /// The area's last IOVA.
    last: u64,
    /// Host address of IOVA `x` is `x + delta` (wrapping).
    delta: u64,
    /// Prot allows reads.
    read: bool,
    /// Prot allows writes and the memory is writable.
    write: bool,
}

impl Hint {
    /// The area of `s`, if it passes the access checks but for the
    /// direction (live, not being unmapped) and its memory may be copied
    /// in place (the process's own, below the top of user space).
    fn of(s: &Seg<'_>) -> Option<Hint> {
        Hint::of_area(s.key, s.area)
    }

    fn of_area(start: u64, a: &Area) -> Option<Hint> {
        let host = a.pages.uptr().checked_add(a.start_byte)?;
        let len = a.last - start + 1;
        if a.state != AreaState::Live
            || a.prevent_access
            || a.pages.relocated()
            || !a.pages.memory().direct()
            || a.pages.is_dmabuf()
            || !access_ok(host, len as usize)
        {
            return None;
        }
        Some(Hint {
            start,
            last: a.last,
            delta: host.wrapping_sub(start),
            read: a.prot.read,
            write: a.prot.write && a.pages.writable(),
        })
    }

    /// Whether the area holds `iova..=last` and allows the direction.
    #[inline]
    fn covers(&self, iova: u64, last: u64, write: bool) -> bool {
        self.start <= iova && last <= self.last && if write { self.write } else { self.read }
    }
}

/// A table's index of the areas the fast path may copy through: every
/// area [`Hint::of_area`] accepts, sorted by IOVA, at one generation.
/// Immutable once published; searched without a lock, in O(log n), inside
/// a drain section.
pub(super) struct Index {
    /// The table's generation the index was built under.
    gen: u64,
    /// The areas' first IOVAs in Eytzinger order (a binary search tree laid
    /// out breadth first, from index 1; descending in order, so that the
    /// search lands on the last start at or below an IOVA). Searched apart
    /// from the rest (eight per cache line), with the lines of the levels
    /// ahead requested early: at 10^6 areas the keys are out of cache and a
    /// plain binary search waits for memory at every level, while this
    /// overlaps those waits.
    keys: Box<[u64]>,
    /// The areas, in the same order (index 0 unused).
    hints: Box<[Option<Hint>]>,
}

impl Index {
    /// An index of `areas` (start, area), ascending by start.
    fn new(gen: u64, areas: Vec<(u64, Hint)>) -> Index {
        let n = areas.len();
        let mut keys = vec![0u64; n + 1].into_boxed_slice();
        let mut hints = vec![None; n + 1].into_boxed_slice();
        // in-order positions of the tree 1..=n take the areas by
        // descending start
        let mut next = areas.into_iter().rev();
        let mut stack = Vec::new();
        let mut k = 1usize;
        loop {
            while k <= n {
                stack.push(k);
                k *= 2;
            }
            let Some(top) = stack.pop() else { break };
            if let Some((start, h)) = next.next() {
                keys[top] = start;
                hints[top] = Some(h);
            }
            k = 2 * top + 1;
        }
        Index { gen, keys, hints }
    }

    /// The area with the last start at or below `iova`, if any.
    #[inline]
    fn floor(&self, iova: u64) -> Option<Hint> {
        let n = self.keys.len() - 1;
        let mut k = 1usize;
        while k <= n {
            // a hint: the line of this node's descendants three levels on
            // (a prefetch of an address past the end is harmless)
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch never faults and changes nothing the
            // program sees; the pointer is only computed, not dereferenced.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    self.keys.as_ptr().wrapping_add(8 * k).cast(),
                );
            }
            k = 2 * k + usize::from(self.keys[k] > iova);
        }
        // undo the right turns after the last left one: the node there
        k >>= k.trailing_ones() + 1;
        self.hints[k]
    }
}

/// A table's [`Index`], published for the fast path, and when to rebuild
/// it.
///
/// **Rebuilding.** An index is built from the tree, under the read lock,
/// by a copy that took the locked path, once the table has gone
/// `8 + n / 8` locked lookups (n areas) without a change since the index
/// went stale: building costs O(n), so the building is paid for by at
/// least n / 8 lookups that needed it, and a table that changes more often
/// than that (a map, a few copies, an unmap) is not rebuilt at every change.
/// Until then, copies take the locked path.
///
/// **Reclaiming.** Sections may still be reading the index a new one
/// replaces: the builder frees it after a drain ([`crate::drain::wait`]),
/// once it holds no lock.
#[derive(Default)]
pub(super) struct DirectIndex {
    /// The published index (null: none yet); owned (`Box::into_raw`).
    current: AtomicPtr<Index>,
    /// The generation of the last locked lookup and how many there were
    /// at it; the builder holds this lock.
    build: Mutex<(u64, u64)>,
}

impl std::fmt::Debug for DirectIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectIndex").finish_non_exhaustive()
    }
}

impl Drop for DirectIndex {
    fn drop(&mut self) {
        let p = *self.current.get_mut();
        if !p.is_null() {
            // SAFETY: `current` owns the index (`Box::into_raw`); the table
            // is being dropped, so no section can hold a reference to it.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl DirectIndex {
    /// The area holding `iova..=last` that allows the direction, if the
    /// index is at generation `gen`. Call inside a drain section, with
    /// `gen` read inside it.
    #[inline]
    fn find(&self, gen: u64, iova: u64, last: u64, write: bool) -> Option<Hint> {
        let p = self.current.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: a published index is freed only after it was replaced
        // and the sections in flight then ended (`access_rw_slow`) or with
        // the table; the caller is in a section that began before.
        let idx = unsafe { &*p };
        if idx.gen != gen {
            return None;
        }
        let h = idx.floor(iova)?;
        h.covers(iova, last, write).then_some(h)
    }

    /// A locked lookup at generation `gen` (under the read guard `st`):
    /// count it, and rebuild the index when it is due (see the type's
    /// docs). Returns the index replaced, to be freed after a drain.
    fn miss(&self, st: &State, gen: u64) -> Option<Box<Index>> {
        // another copy is counting or building: leave it to that one
        let mut b = self.build.try_lock()?;
        if b.0 != gen {
            *b = (gen, 0);
        }
        b.1 += 1;
        let n = st.areas.len() as u64;
        if b.1 < 8 + n / 8 {
            return None;
        }
        let cur = self.current.load(Ordering::Relaxed);
        // SAFETY: only a holder of `build` replaces or frees the index.
        if !cur.is_null() && unsafe { (*cur).gen } == gen {
            return None;
        }
        let areas: Vec<(u64, Hint)> = st
            .areas
            .iter()
            .filter_map(|(&k, a)| Hint::of_area(k, a).map(|h| (k, h)))
            .collect();
        let new = Box::into_raw(Box::new(Index::new(gen, areas)));
        let old = self.current.swap(new, Ordering::AcqRel);
        // SAFETY: `old` was published by `Box::into_raw` and is no longer
        // reachable; the caller frees it after a drain.
        (!old.is_null()).then(|| unsafe { Box::from_raw(old) })
    }
}

/// The access fast path's memory: per thread, the last few areas an
/// access copy went through, each with the table's identity and the
/// generation it was read under. An entry is used only while its table's
/// generation is unchanged, i.e. while the area is exactly as the locked
/// walk (or the index) saw it (live, not being unmapped, same pages and
/// prot).
///
/// Per thread rather than per access: no lock or atomic read-modify-write
/// is needed to read or update it, threads never contend for it, and every
/// caller ([`crate::access::Access::rw`], the selftest's `ACCESS_RW`, direct
/// [`IoPagetable::access_rw`] users) shares it. A few entries serve a
/// device that alternates between a ring and its buffers.
#[cfg(test)]
mod index_tests {
    use super::{Hint, Index};

    /// The Eytzinger search finds what a binary search of the sorted
    /// starts finds, at every size and for IOVAs before, inside, between
    /// and after the areas.
    #[test]
    fn floor_matches_a_sorted_search() {
        for n in [0usize, 1, 2, 3, 7, 8, 9, 100, 1023, 1024, 1025, 5000] {
            let starts: Vec<u64> = (0..n as u64).map(|i| 0x1000 + i * 0x3000).collect();
            let areas = starts
                .iter()
                .map(|&s| {
                    let h = Hint {
                        start: s,
                        last: s + 0xfff,
                        delta: s,
                        read: true,
                        write: true,
                    };
                    (s, h)
                })
                .collect();
            let idx = Index::new(1, areas);
            for x in (0..(n as u64 + 2) * 0x3000).step_by(0x800) {
                let want = starts
                    .partition_point(|&s| s <= x)
                    .checked_sub(1)
                    .map(|i| starts[i]);
                assert_eq!(idx.floor(x).map(|h| h.start), want, "n {n} iova {x:#x}");
            }
        }
    }
}

mod hint {
    use std::cell::Cell;

    use super::Hint;

    /// Entries per thread.
    const SLOTS: usize = 4;

    #[derive(Clone, Copy)]
    struct Slot {
        /// The table's `uid` (0: empty).
        table: u64,
        /// The table's generation the area was read under.
        gen: u64,
        hint: Hint,
    }

    const EMPTY: Slot = Slot {
        table: 0,
        gen: 0,
        hint: Hint {
            start: 1,
            last: 0,
            delta: 0,
            read: false,
            write: false,
        },
    };

    struct Cache {
        slots: [Cell<Slot>; SLOTS],
        next: Cell<usize>,
    }

    thread_local! {
        static CACHE: Cache = const {
            Cache {
                slots: [const { Cell::new(EMPTY) }; SLOTS],
                next: Cell::new(0),
            }
        };
    }

    /// The `delta` of a remembered area of table `table` at generation
    /// `gen` that holds `iova..=last` and allows the access.
    #[inline]
    pub(super) fn lookup(table: u64, gen: u64, iova: u64, last: u64, write: bool) -> Option<u64> {
        CACHE
            .try_with(|c| {
                c.slots.iter().find_map(|slot| {
                    let s = slot.get();
                    (s.table == table && s.gen == gen && s.hint.covers(iova, last, write))
                        .then_some(s.hint.delta)
                })
            })
            .ok()
            .flatten()
    }

    /// Remember area `hint` of table `table`, checked at generation `gen`.
    #[inline]
    pub(super) fn put(table: u64, gen: u64, hint: Hint) {
        let _ = CACHE.try_with(|c| {
            let i = c.next.get();
            c.slots[i].set(Slot { table, gen, hint });
            c.next.set((i + 1) % SLOTS);
        });
    }
}
