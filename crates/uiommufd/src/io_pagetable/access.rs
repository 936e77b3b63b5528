//! Access pins and copies by IOVA (the kernel's `iommufd_access_pin_pages`,
//! `iommufd_access_unpin_pages` and `iommufd_access_rw` in device.c, over
//! `iopt_area_add_access`/`iopt_pages_rw_access` in pages.c).
//!
//! Intervals: `last` inclusive; lengths in bytes.

use super::{Area, AreaState, IoPagetable, PinnedPages, State};
use crate::user::page_size;
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

impl State {
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
        let mut plan = Vec::new();
        {
            let st = self.state.read();
            let (segs, done) = st.contig(iova, last);
            for s in &segs {
                let a = s.area;
                if a.prevent_access {
                    bail!(
                        EINVAL,
                        "area [{:#x}, {:#x}] is being unmapped; its accesses are asked to let go",
                        s.key,
                        a.last
                    );
                }
                if !s.prot_allows(write) {
                    bail!(
                        EPERM,
                        "area [{:#x}, {:#x}] does not allow {} access",
                        s.key,
                        a.last,
                        if write { "write" } else { "read" }
                    );
                }
                if write && !a.pages.writable() {
                    bail!(
                        EPERM,
                        "area [{:#x}, {:#x}] maps read-only memory; write access refused",
                        s.key,
                        a.last
                    );
                }
                let (sb, _) = s.bytes();
                plan.push((
                    a.pages.memory().clone(),
                    a.pages.uptr() + sb,
                    s.last - s.start + 1,
                ));
            }
            if !done {
                let reached = segs.last().map_or(iova, |s| s.last + 1);
                bail!(
                    ENOENT,
                    "nothing is mapped at iova {reached:#x} inside [{iova:#x}, {last:#x}]"
                );
            }
        }
        // the kernel's iopt_pages_rw_access through the mm
        crate::inject::point("access.rw", libc::EINVAL)?;
        let mut off = 0usize;
        for (mem, addr, len) in plan {
            let chunk = &mut buf[off..off + len as usize];
            if write {
                mem.write(addr, chunk)?;
                // hook (write_log.rs): chunks run back to back from `iova`
                self.write_log.record_write(iova + off as u64, len);
            } else {
                mem.read(addr, chunk)?;
            }
            off += len as usize;
        }
        Ok(())
    }
}
