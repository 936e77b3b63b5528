//! The IOAS-level log of what *accesses* wrote (emulated devices that copy
//! or pin by IOVA through [`IoPagetable::access_rw`] /
//! [`IoPagetable::access_pin`]): the CPU-side half of the dirty pages
//! [`IoPagetable::read_area_dirty`] reports (for the VFIO container's
//! tracking session, `crate::vfio_compat`). Devices that write through an
//! IOMMU domain are tracked by the domain's own dirty bits instead.
//!
//! Two records, both by IOVA (bytes, `last` inclusive):
//!
//! - **written**: bytes an access wrote with `access_rw(write = true)` while
//!   logging is enabled. Read-and-clear empties it; disabling logging drops
//!   it; unmapping a range forgets it there (the next mapping at that IOVA
//!   starts clean).
//! - **write pins**: ranges pinned with `access_pin(write = true)` and not
//!   unpinned yet, whatever the logging state. A device may write such pages
//!   at any time without telling anyone, so they are reported dirty for as
//!   long as they stay pinned (type1's "pinned pages are dirty" rule).
//!
//! The hooks the access paths call are `pub(super)`, documented at each call
//! site in `access.rs` (and the unmap path in `mod.rs`). The log's mutex is
//! a leaf lock: it may be taken under the table's `state` lock, never the
//! other way around.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::IoPagetable;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct AccessWriteLog {
    enabled: AtomicBool,
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    /// Written bytes: start -> last, disjoint and never adjacent.
    written: BTreeMap<u64, u64>,
    /// Write pins still held: (iova, length) -> number of pins.
    write_pins: BTreeMap<(u64, u64), u32>,
}

impl LogInner {
    /// Add `start..=last` to `written`, merging neighbours.
    fn add(&mut self, mut start: u64, mut last: u64) {
        // a run that starts before (or just before) `start` and reaches it
        if let Some((&s, &l)) = self.written.range(..=start).next_back() {
            if l.checked_add(1).is_none_or(|e| e >= start) {
                if l >= last {
                    return;
                }
                start = s;
                self.written.remove(&s);
            }
        }
        // runs that start inside (or just after) the new one
        let upto = last.saturating_add(1);
        let inside: Vec<(u64, u64)> = self
            .written
            .range(start..=upto)
            .map(|(&s, &l)| (s, l))
            .collect();
        for (s, l) in inside {
            self.written.remove(&s);
            last = last.max(l);
        }
        self.written.insert(start, last);
    }

    /// Remove `start..=last` from `written`.
    fn remove(&mut self, start: u64, last: u64) {
        let mut hit: Vec<(u64, u64)> = Vec::new();
        if let Some((&s, &l)) = self.written.range(..start).next_back() {
            if l >= start {
                hit.push((s, l));
            }
        }
        hit.extend(self.written.range(start..=last).map(|(&s, &l)| (s, l)));
        for (s, l) in hit {
            self.written.remove(&s);
            if s < start {
                self.written.insert(s, start - 1);
            }
            if l > last {
                self.written.insert(last + 1, l);
            }
        }
    }
}

impl AccessWriteLog {
    /// Whether writes are being logged.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Start or stop logging writes. Stopping drops what was logged
    /// (write pins are always kept).
    pub fn set_enabled(&self, on: bool) {
        let mut g = self.inner.lock();
        self.enabled.store(on, Ordering::Release);
        if !on {
            g.written.clear();
        }
    }

    /// The written byte ranges and write-pinned ranges that meet
    /// `start..=last`, clipped to it, sorted by start (they may overlap).
    /// With `clear`, the written record of `start..=last` is emptied (write
    /// pins stay: they are dirty again at the next read).
    pub fn read(&self, start: u64, last: u64, clear: bool) -> Vec<(u64, u64)> {
        let mut g = self.inner.lock();
        let mut out: Vec<(u64, u64)> = Vec::new();
        if let Some((_, &l)) = g.written.range(..start).next_back() {
            if l >= start {
                out.push((start, l.min(last)));
            }
        }
        out.extend(
            g.written
                .range(start..=last)
                .map(|(&s, &l)| (s, l.min(last))),
        );
        for &(iova, len) in g.write_pins.keys() {
            let Some(l) = iova.checked_add(len - 1) else {
                continue;
            };
            if iova <= last && l >= start {
                out.push((iova.max(start), l.min(last)));
            }
        }
        if clear {
            g.remove(start, last);
        }
        out.sort_unstable();
        out
    }

    /// Hook: an access wrote `length` bytes at `iova`.
    pub(super) fn record_write(&self, iova: u64, length: u64) {
        if length == 0 || !self.enabled() {
            return;
        }
        let last = iova.saturating_add(length - 1);
        let mut g = self.inner.lock();
        // checked again under the lock: nothing is logged while logging is
        // off, so `forget` can skip the lock then
        if self.enabled() {
            g.add(iova, last);
        }
    }

    /// Log `start..=last` as written again (dirty bits that were read and
    /// cleared but not delivered), if logging is on.
    pub(super) fn put_back(&self, start: u64, last: u64) {
        if start <= last && self.enabled() {
            let mut g = self.inner.lock();
            if self.enabled() {
                g.add(start, last);
            }
        }
    }

    /// Hook: an access pinned `[iova, iova + length)` for write.
    pub(super) fn pinned_for_write(&self, iova: u64, length: u64) {
        if length == 0 {
            return;
        }
        *self
            .inner
            .lock()
            .write_pins
            .entry((iova, length))
            .or_default() += 1;
    }

    /// Hook: an access unpinned `[iova, iova + length)` (a read pin, or a
    /// range never pinned, is not in the record: nothing happens).
    pub(super) fn unpinned(&self, iova: u64, length: u64) {
        let mut g = self.inner.lock();
        if let Some(n) = g.write_pins.get_mut(&(iova, length)) {
            *n -= 1;
            if *n == 0 {
                g.write_pins.remove(&(iova, length));
            }
        }
    }

    /// Hook: `start..=last` was unmapped; what was written there is gone
    /// with the mapping.
    pub(super) fn forget(&self, start: u64, last: u64) {
        // Written ranges exist only while logging is on (set_enabled(false)
        // empties them, nothing is added while off): no lock on the unmap
        // path otherwise.
        if !self.enabled() {
            return;
        }
        let mut g = self.inner.lock();
        if !g.written.is_empty() {
            g.remove(start, last);
        }
    }
}

impl IoPagetable {
    /// What accesses wrote (see `io_pagetable::write_log`).
    pub fn access_write_log(&self) -> &AccessWriteLog {
        &self.write_log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(l: &AccessWriteLog) -> Vec<(u64, u64)> {
        l.inner
            .lock()
            .written
            .iter()
            .map(|(&s, &l)| (s, l))
            .collect()
    }

    #[test]
    fn merge_split_and_pins() {
        let l = AccessWriteLog::default();
        l.record_write(0x1000, 0x10);
        assert!(ranges(&l).is_empty(), "nothing is logged while disabled");
        l.set_enabled(true);
        l.record_write(0x1000, 0x10);
        l.record_write(0x1010, 0x10); // adjacent: merges
        l.record_write(0x3000, 0x1000);
        l.record_write(0x1008, 0x4); // inside
        assert_eq!(ranges(&l), vec![(0x1000, 0x101f), (0x3000, 0x3fff)]);
        l.record_write(0x0, 0x5000); // swallows all
        assert_eq!(ranges(&l), vec![(0x0, 0x4fff)]);
        l.forget(0x1000, 0x1fff);
        assert_eq!(ranges(&l), vec![(0x0, 0xfff), (0x2000, 0x4fff)]);
        assert_eq!(
            l.read(0x800, 0x27ff, true),
            vec![(0x800, 0xfff), (0x2000, 0x27ff)]
        );
        assert_eq!(ranges(&l), vec![(0x0, 0x7ff), (0x2800, 0x4fff)]);
        l.pinned_for_write(0x10_000, 0x2000);
        l.pinned_for_write(0x10_000, 0x2000);
        assert_eq!(l.read(0x11_000, 0x20_000, true), vec![(0x11_000, 0x11_fff)]);
        l.unpinned(0x10_000, 0x2000);
        assert_eq!(l.read(0x11_000, 0x20_000, true), vec![(0x11_000, 0x11_fff)]);
        l.unpinned(0x10_000, 0x2000);
        assert!(l.read(0x11_000, 0x20_000, true).is_empty());
        l.set_enabled(false);
        assert!(ranges(&l).is_empty());
        l.record_write(u64::MAX - 1, 2);
        assert!(ranges(&l).is_empty());
        l.set_enabled(true);
        l.record_write(u64::MAX - 1, 2);
        l.record_write(u64::MAX - 3, 2);
        assert_eq!(ranges(&l), vec![(u64::MAX - 3, u64::MAX)]);
    }
}
