//! Access pins and copies by IOVA (the kernel's `iommufd_access_pin_pages`,
//! `iommufd_access_unpin_pages` and `iommufd_access_rw` in device.c, over
//! `iopt_area_add_access`/`iopt_pages_rw_access` in pages.c).
//!
//! Intervals: `last` inclusive; lengths in bytes.

use std::sync::Arc;

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
        if length == 0 {
            bail!(EINVAL, "access pin length is zero");
        }
        let Some(last) = iova.checked_add(length - 1) else {
            bail!(
                EOVERFLOW,
                "access pin iova {iova:#x} + length {length:#x} overflows"
            );
        };
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
            let base = a.pages.uptr();
            out.extend((first..=lastp).map(|p| base + p * ps));
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
    /// before any byte moves; the copy itself runs without the lock.
    ///
    /// **Fast path.** While [`crate::faultsafe::enabled`] and the areas'
    /// memory is the process's own ([`crate::user::UserMemory::direct`]),
    /// bytes move in place between `buf` and the areas' host addresses
    /// with [`crate::faultsafe::copy`] (memory the program unmapped is
    /// `EFAULT`, never a crash), and each thread remembers the last few
    /// areas it copied through ([`hint`]): a range inside one of them, in a
    /// table whose generation has not moved since (every map, unmap, split
    /// and `prevent_access` change moves it), is copied without taking the
    /// table's lock, after the same checks the locked walk made then.
    pub fn access_rw(&self, iova: u64, buf: &mut [u8], write: bool) -> Result<()> {
        let length = buf.len() as u64;
        if length == 0 {
            bail!(EINVAL, "access rw length is zero");
        }
        let Some(last) = iova.checked_add(length - 1) else {
            bail!(
                EOVERFLOW,
                "access rw iova {iova:#x} + length {length:#x} overflows"
            );
        };
        if crate::faultsafe::enabled() {
            // The copy runs under the read side, as the kernel's under
            // `iova_rwsem`: an unmap cannot return while bytes are still
            // moving to or from the memory it unmapped (the program may
            // reuse that memory as soon as it returns). Under it the
            // generation cannot move, so a remembered area stays exact.
            let st = self.state.read();
            if let Some(delta) = hint::lookup(self.uid, self.state.gen(), iova, last, write) {
                // the kernel's iopt_pages_rw_access through the mm
                crate::inject::point("access.rw", libc::EINVAL)?;
                let r = self.copy_direct(iova, iova.wrapping_add(delta), buf, write);
                drop(st);
                return r;
            }
            drop(st);
        }
        self.access_rw_locked(iova, last, buf, write)
    }

    /// The walk of [`IoPagetable::access_rw`] under the read lock (which
    /// also remembers the area for the fast path), then the copies, still
    /// under it (see [`IoPagetable::access_rw`]).
    fn access_rw_locked(&self, iova: u64, last: u64, buf: &mut [u8], write: bool) -> Result<()> {
        let fast = crate::faultsafe::enabled();
        // One part (the common case) needs no allocation.
        let mut first: Option<(Target, u64)> = None;
        let mut more: Vec<(Target, u64)> = Vec::new();
        let st = self.state.read();
        {
            // the generation of this snapshot: no writer while we hold it
            let gen = self.state.gen();
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
            if let Some(s) = remember.filter(|_| fast) {
                hint::fill(self.uid, gen, &s);
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
        drop(st);
        Ok(())
    }

    /// Copy `buf` in place to or from host address `host`, which IOVA
    /// `iova` maps: `EFAULT` (never a crash) when the program no longer
    /// has the memory there, or (for `write`) it is not writable.
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
            let e = err!(
                EFAULT,
                "access {} of {len} bytes at iova {iova:#x}: host address {:#x} is not {} (the program \
                 unmapped or protected the memory)",
                if write { "write" } else { "read" },
                host + (len - left) as u64,
                if write { "writable" } else { "readable" }
            );
            tracing::debug!("{e}");
            return Err(e);
        }
        Ok(())
    }
}

/// Where one part of an access copy goes.
enum Target {
    /// In place at this host address ([`crate::faultsafe::copy`]).
    Direct(u64),
    /// Through the pages' memory, at this user address.
    Memory(Arc<dyn UserMemory>, u64),
}

impl Target {
    fn of(s: &Seg<'_>, fast: bool) -> Target {
        let a = s.area;
        let addr = a.pages.uptr() + s.bytes().0;
        let len = s.last - s.start + 1;
        if fast && a.pages.memory().direct() && access_ok(addr, len as usize) {
            Target::Direct(addr)
        } else {
            Target::Memory(a.pages.memory().clone(), addr)
        }
    }
}

/// The access fast path's memory: per thread, the last few areas an
/// access copy went through, each with the table's identity and the
/// generation it was read under. An entry is used only while its table's
/// generation is unchanged, i.e. while the area is exactly as the locked
/// walk saw it (live, not being unmapped, same pages and prot).
///
/// Per thread rather than per access: no lock or atomic read-modify-write
/// is needed to read or update it, threads never contend for it, and every
/// caller ([`crate::access::Access::rw`], the selftest's `ACCESS_RW`, direct
/// [`IoPagetable::access_rw`] users) shares it. A few entries serve a
/// device that alternates between a ring and its buffers.
mod hint {
    use std::cell::Cell;

    use super::Seg;

    /// Entries per thread.
    const SLOTS: usize = 4;

    #[derive(Clone, Copy)]
    struct Hint {
        /// The table's `uid` (0: empty).
        table: u64,
        /// The table's generation the area was read under.
        gen: u64,
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

    const EMPTY: Hint = Hint {
        table: 0,
        gen: 0,
        start: 1,
        last: 0,
        delta: 0,
        read: false,
        write: false,
    };

    struct Cache {
        slots: [Cell<Hint>; SLOTS],
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
                    let h = slot.get();
                    (h.table == table
                        && h.gen == gen
                        && h.start <= iova
                        && last <= h.last
                        && if write { h.write } else { h.read })
                    .then_some(h.delta)
                })
            })
            .ok()
            .flatten()
    }

    /// Remember the area of `s` (which passed the access checks under the
    /// read lock at generation `gen`), if its memory may be copied in
    /// place.
    pub(super) fn fill(table: u64, gen: u64, s: &Seg<'_>) {
        let a = s.area;
        let Some(host) = a.pages.uptr().checked_add(a.start_byte) else {
            return;
        };
        let len = a.last - s.key + 1;
        if a.prevent_access
            || !a.pages.memory().direct()
            || !crate::user::access_ok(host, len as usize)
        {
            return;
        }
        let h = Hint {
            table,
            gen,
            start: s.key,
            last: a.last,
            delta: host.wrapping_sub(s.key),
            read: a.prot.read,
            write: a.prot.write && a.pages.writable(),
        };
        let _ = CACHE.try_with(|c| {
            let i = c.next.get();
            c.slots[i].set(h);
            c.next.set((i + 1) % SLOTS);
        });
    }
}
