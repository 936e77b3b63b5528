//! Pages objects: one contiguous range of user memory, pinned at most once.
//!
//! An `IOAS_MAP` creates one [`Pages`] for the user range it names. Areas (in
//! any number of IOASes, via `IOAS_COPY`), domains and accesses that use the
//! same memory hold the same `Arc<Pages>`; the pin itself is a per-page user
//! count inside it, so a page is populated and accounted once however many
//! users it has (the kernel's `struct iopt_pages`).
//!
//! Intervals here are in **page indexes relative to the start of the object**,
//! `first..=last` (inclusive `last`), like the kernel's pages.c.
//!
//! Lock order: `Pages::pins` is a leaf lock; nothing else is taken under it
//! except the global accounting atomics and the user-memory calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::accounting::{Account, AccountMode};
use crate::user::{page_size, UserMemory};
use crate::Result;

/// A contiguous, page-aligned range of user memory and its pin state.
#[derive(Debug)]
pub struct Pages {
    id: u64,
    uptr: u64,
    npages: u64,
    writable: bool,
    mem: Arc<dyn UserMemory>,
    account: Account,
    pins: Mutex<PinMap>,
    /// Whether the object is in [`REGISTRY`]: set (under `pins`) by the
    /// first pin. An object never pinned has no pinned page to report, so
    /// a map with no domain attached never touches the registry.
    registered: AtomicBool,
}

/// Per-page user counts, stored as runs: start page -> (last page, count).
/// Runs never overlap and never have a count of zero.
#[derive(Debug, Default)]
struct PinMap {
    runs: BTreeMap<u64, (u64, u32)>,
    /// Pages with a count above zero (what is populated and accounted).
    npinned: u64,
}

impl PinMap {
    /// Split the run containing `at` (if any) so that a run starts at `at`.
    fn split_at(&mut self, at: u64) {
        if let Some((&s, &(l, c))) = self.runs.range(..at).next_back() {
            if l >= at {
                self.runs.insert(s, (at - 1, c));
                self.runs.insert(at, (l, c));
            }
        }
    }

    /// The holes (count zero) within `first..=last`, in order.
    fn holes(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cur = first;
        let start = self
            .runs
            .range(..=first)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(first);
        for (&s, &(l, _)) in self.runs.range(start..=last) {
            if l < cur {
                continue;
            }
            if s > cur {
                out.push((cur, s - 1));
            }
            if l >= last {
                return out;
            }
            cur = l + 1;
        }
        if cur <= last {
            out.push((cur, last));
        }
        out
    }

    /// Add `delta` (+1 or -1) to every page of `first..=last`.
    /// For -1, every page must currently have a count above zero.
    fn add(&mut self, first: u64, last: u64, delta: i32) {
        self.split_at(first);
        if last < u64::MAX {
            self.split_at(last + 1);
        }
        if delta > 0 {
            for (s, l) in self.holes(first, last) {
                self.runs.insert(s, (l, 0));
            }
        }
        let keys: Vec<u64> = self.runs.range(first..=last).map(|(&s, _)| s).collect();
        for s in keys {
            let (l, c) = self.runs[&s];
            let n = (c as i64 + delta as i64) as u32;
            if c == 0 && n > 0 {
                self.npinned += l - s + 1;
            }
            if n == 0 {
                self.npinned -= l - s + 1;
                self.runs.remove(&s);
            } else {
                self.runs.insert(s, (l, n));
            }
        }
        self.merge_around(first, last);
    }

    fn merge_around(&mut self, first: u64, last: u64) {
        let lo = self
            .runs
            .range(..first)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(first);
        let keys: Vec<u64> = self
            .runs
            .range(lo..=last.saturating_add(1))
            .map(|(&s, _)| s)
            .collect();
        let mut prev: Option<u64> = None;
        for s in keys {
            if let Some(p) = prev {
                let (pl, pc) = self.runs[&p];
                let (l, c) = self.runs[&s];
                if pl + 1 == s && pc == c {
                    self.runs.insert(p, (l, c));
                    self.runs.remove(&s);
                    continue;
                }
            }
            prev = Some(s);
        }
    }

    fn count(&self, page: u64) -> u32 {
        match self.runs.range(..=page).next_back() {
            Some((_, &(l, c))) if l >= page => c,
            _ => 0,
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Every live pages object that was ever pinned, so that `MD_CHECK_REFS` and
/// [`check_accounting`] can answer for the whole process as the kernel's page
/// refcount does (an object enters on its first pin: before that it pins
/// nothing, so leaving it out changes no answer). Sharded so that creating pages
/// objects from many threads does not serialise on one lock.
const SHARDS: usize = 16;
/// Keyed by pages id, so that registering and dropping a pages object cost
/// O(1) however many are alive (a VMM maps one region per call).
type Shard = Mutex<Option<std::collections::HashMap<u64, Weak<Pages>>>>;
static REGISTRY: [Shard; SHARDS] = [const { Mutex::new(None) }; SHARDS];

impl Pages {
    /// A new, unpinned pages object covering the pages that hold
    /// `[uptr, uptr + length)` (rounded out to whole pages).
    pub fn new(
        mem: Arc<dyn UserMemory>,
        uptr: u64,
        length: u64,
        writable: bool,
        mode: AccountMode,
    ) -> Arc<Pages> {
        let ps = page_size();
        let base = uptr & !(ps - 1);
        // Pages from the offset in the first page, as the kernel's
        // DIV_ROUND_UP(length + start_byte, PAGE_SIZE): rounding `uptr +
        // length` up to a page instead overflows near the top of the space.
        let npages = (uptr - base).saturating_add(length).div_ceil(ps);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Arc::new(Pages {
            id,
            uptr: base,
            npages,
            writable,
            mem,
            account: Account::new(mode),
            pins: Mutex::new(PinMap::default()),
            registered: AtomicBool::new(false),
        })
    }

    /// Put the object in [`REGISTRY`] (once). Called with `pins` held, before
    /// the first pin is recorded, so that no pinned page is ever missing
    /// from the registry. Lock order: `pins`, then a registry shard (nothing
    /// takes `pins` under a shard lock: [`live_pages`] releases it first).
    fn register(self: &Arc<Self>) {
        if self.registered.load(Ordering::Relaxed) {
            return;
        }
        REGISTRY[(self.id as usize) % SHARDS]
            .lock()
            .get_or_insert_with(Default::default)
            .insert(self.id, Arc::downgrade(self));
        self.registered.store(true, Ordering::Relaxed);
    }

    /// Page-aligned user address of page 0.
    pub fn uptr(&self) -> u64 {
        self.uptr
    }
    /// Number of pages covered.
    pub fn npages(&self) -> u64 {
        self.npages
    }
    /// Length in bytes (whole pages).
    pub fn len_bytes(&self) -> u64 {
        // saturating: an object may end in the last page of the space
        self.npages.saturating_mul(page_size())
    }
    /// Whether the memory is pinned for write (the map asked for WRITEABLE).
    pub fn writable(&self) -> bool {
        self.writable
    }
    /// Process-unique identity, for logs and invariant reports.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The memory this object reaches.
    pub fn memory(&self) -> &Arc<dyn UserMemory> {
        &self.mem
    }

    /// Add one user to pages `first..=last`, populating and accounting the
    /// pages that had none. On failure nothing changes.
    ///
    /// Injection points (see [`crate::inject`]), where the kernel's pin can
    /// fail: `"pages.batch"` (`ENOMEM`, the temporary pin batch),
    /// `"pages.account"` (`ENOMEM`, the locked-memory accounting) and
    /// `"pages.pin"` (`EFAULT`, pinning the user pages; once per run of
    /// unpinned pages).
    pub fn pin(self: &Arc<Self>, first: u64, last: u64) -> Result<()> {
        debug_assert!(first <= last && last < self.npages);
        let ps = page_size();
        let mut pins = self.pins.lock();
        let holes = pins.holes(first, last);
        let new: u64 = holes.iter().map(|(s, l)| l - s + 1).sum();
        if new > 0 {
            crate::inject::point("pages.batch", libc::ENOMEM)?;
            crate::inject::point("pages.account", libc::ENOMEM)?;
            self.account.charge(new)?;
            for &(s, l) in &holes {
                let r = crate::inject::point("pages.pin", libc::EFAULT).and_then(|()| {
                    self.mem
                        .populate(self.uptr + s * ps, (l - s + 1) * ps, self.writable)
                });
                if let Err(e) = r {
                    self.account.uncharge(new);
                    return Err(e);
                }
            }
        }
        self.register();
        pins.add(first, last, 1);
        Ok(())
    }

    /// Drop one user from pages `first..=last` (each must have one).
    pub fn unpin(&self, first: u64, last: u64) {
        let mut pins = self.pins.lock();
        let before = pins.npinned;
        pins.add(first, last, -1);
        self.account.uncharge(before - pins.npinned);
    }

    /// How many pages currently have at least one user.
    pub fn npinned(&self) -> u64 {
        self.pins.lock().npinned
    }

    /// Whether `page` (an index into this object) has at least one user.
    pub fn is_pinned(&self, page: u64) -> bool {
        self.pins.lock().count(page) > 0
    }

    /// How many users hold `page` (an index into this object) pinned.
    pub fn pin_count(&self, page: u64) -> u32 {
        self.pins.lock().count(page)
    }

    /// How many live pages objects hold the page at user address `addr` pinned:
    /// the userspace meaning of the selftest's page refcount check.
    pub fn pins_of_user_page(addr: u64) -> u32 {
        let ps = page_size();
        let addr = addr & !(ps - 1);
        let mut n = 0;
        for shard in &REGISTRY {
            // Upgrade under the shard lock, look after it: an upgraded Arc may
            // turn out to be the last one, and its drop takes the shard lock.
            let live = live_pages(shard);
            for p in &live {
                if addr >= p.uptr
                    && addr - p.uptr < p.len_bytes()
                    && p.is_pinned((addr - p.uptr) / ps)
                {
                    n += 1;
                }
            }
        }
        n
    }
}

/// The live pages objects of one registry shard (the lock is released on
/// return, before the caller drops them).
fn live_pages(shard: &Shard) -> Vec<Arc<Pages>> {
    shard
        .lock()
        .iter()
        .flat_map(|m| m.values())
        .filter_map(|w| w.upgrade())
        .collect()
}

/// Check process-wide pin accounting: `pinned_vm` equals the pinned pages
/// of all live pages objects. Only meaningful while no other thread pins or
/// unpins (tests call it between steps).
pub fn check_accounting() -> std::result::Result<(), String> {
    let mut sum = 0;
    for shard in &REGISTRY {
        sum += live_pages(shard).iter().map(|p| p.npinned()).sum::<u64>();
    }
    let vm = crate::accounting::PINNED_VM.load(Ordering::Acquire);
    if sum != vm {
        return Err(format!(
            "pinned_vm is {vm} pages but live pages objects pin {sum}"
        ));
    }
    Ok(())
}

impl Drop for Pages {
    fn drop(&mut self) {
        let pins = self.pins.get_mut();
        debug_assert_eq!(
            pins.npinned, 0,
            "pages object {} dropped with pinned pages",
            self.id
        );
        if pins.npinned != 0 {
            self.account.uncharge(pins.npinned);
        }
        if *self.registered.get_mut() {
            if let Some(m) = REGISTRY[(self.id as usize) % SHARDS].lock().as_mut() {
                m.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::SelfMemory;

    fn buf(npages: usize) -> (Vec<u8>, u64) {
        let ps = page_size() as usize;
        let v = vec![0u8; (npages + 1) * ps];
        let a = (v.as_ptr() as u64).div_ceil(ps as u64) * ps as u64;
        (v, a)
    }

    #[test]
    fn pin_counts_overlap_and_release() {
        let (_v, a) = buf(8);
        let p = Pages::new(
            Arc::new(SelfMemory),
            a,
            8 * page_size(),
            true,
            AccountMode::None,
        );
        p.pin(0, 3).unwrap();
        p.pin(2, 5).unwrap();
        assert_eq!(p.npinned(), 6);
        assert_eq!(Pages::pins_of_user_page(a + 2 * page_size()), 1);
        p.unpin(0, 3);
        assert!(!p.is_pinned(1));
        assert!(p.is_pinned(2));
        assert_eq!(p.npinned(), 4);
        p.unpin(2, 5);
        assert_eq!(p.npinned(), 0);
        assert!(p.pins.lock().runs.is_empty());
    }

    #[test]
    fn pin_failure_changes_nothing() {
        let p = Pages::new(
            Arc::new(SelfMemory),
            1 << 31,
            4 * page_size(),
            true,
            AccountMode::None,
        );
        assert_eq!(p.pin(0, 3).unwrap_err().errno().0, libc::EFAULT);
        assert_eq!(p.npinned(), 0);
    }
}
