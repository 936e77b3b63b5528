//! The IO page table of one IOAS: IOVA → area tree, allowed and reserved
//! ranges, IOVA allocation (the kernel's io_pagetable.c).
//!
//! # Interval convention
//!
//! Every interval in this module is `start..=last` with an **inclusive**
//! `last`, in bytes of IOVA (so a range can end at `u64::MAX`). Lengths are
//! byte counts; `start + length - 1` is always computed with `checked_add`.
//!
//! # Lock order
//!
//! 1. [`IoPagetable`]'s `domains` `RwLock` (the kernel's `domains_rwsem`):
//!    the attached domains and the registered accesses. `map` and `unmap`
//!    hold it for read from start to end, so they run concurrently with one
//!    another but never with `add_domain`/`remove_domain`/`add_access`/
//!    `remove_access`/`set_large_pages`, which hold it for write;
//! 2. [`IoPagetable`]'s `state` `RwLock` (the kernel's `iova_rwsem`);
//! 3. an area's `accesses` mutex (access pins of that area);
//! 4. a domain's own lock, and `Pages::pins` (leaf locks).
//!
//! The `state` lock is never held while a domain is filled or unfilled, while
//! pages are pinned for a domain, or while an `Arc<Pages>` is dropped:
//! removed areas are dropped after the guard. Two exceptions hold the read
//! side, as the kernel holds `iova_rwsem`: [`IoPagetable::access_pin`] pins
//! under it so that an unmap can never miss a pin, and the locked path of
//! [`IoPagetable::access_rw`] copies under it so that an unmap never returns
//! while bytes still move to or from the memory it unmapped (the program may
//! reuse that memory at once). Access notifiers are called with no lock
//! held.
//!
//! Taking the `state` write lock bumps the table's generation. The access
//! copy fast path (`access.rs`) takes no lock: it runs in a drain section
//! (`crate::drain`), finds the area in a per-thread memory of the last
//! areas or in the table's sorted index of directly copyable areas, each
//! recorded with the generation it was checked under, and copies only
//! while that generation is still the current one (no map, unmap, split or
//! `prevent_access` change happened since, so the same checks would
//! pass). An unmap that takes areas away drains those sections (under the
//! write lock when no domain is attached, before the write log forgets the
//! range; after marking the areas `Removing` otherwise), so it still never
//! returns while such a copy is in flight. Sections never block on the
//! `state` lock, so draining under it cannot deadlock.
//!
//! # Pin ownership
//!
//! Pins live in the shared [`Pages`] as per-page user counts:
//!
//! - **domain pin**: while at least one domain is attached, every published
//!   area holds exactly one user on the pages it maps, however many domains
//!   there are. It is taken when the first domain is added (or when the area
//!   is filled, if domains exist) and dropped when the area is unmapped or
//!   the last domain is removed. An `IOAS_COPY` shares the pages object, so
//!   a page mapped in two IOASes with two domains each is pinned (populated
//!   and accounted) once, with two users.
//! - **access pin**: every successful [`IoPagetable::access_pin`] adds one
//!   user per page, recorded in the area (`accesses`) until the matching
//!   [`IoPagetable::access_unpin`]. An area with access pins is unmapped only
//!   after the registered accesses were told to unpin it.
//!
//! # Pending areas
//!
//! `map` works in three steps so that pinning and filling attached IOMMU
//! domains run without the write lock, like the kernel's `iopt_map_pages`:
//!
//! 1. under the write lock, check the request, pick the IOVA and insert the
//!    areas in the **filling** state: the IOVA is taken from then on;
//! 2. without the lock, pin and map the areas into every attached domain;
//! 3. under the write lock, publish the areas (**live**), or remove them if
//!    the fill failed (after undoing what the fill did).
//!
//! `unmap` mirrors it: the areas turn **removing** under the write lock, are
//! unmapped from the domains and unpinned without it, then leave the tree.
//!
//! A filling or removing area is treated as the kernel treats an area whose
//! `pages` is NULL: it occupies its IOVA (a fixed map over it is `EEXIST`,
//! the allocator skips it, a reserved range may not cover it), `unmap` and
//! `unmap_all` that reach it fail `EBUSY` (userspace raced a map with an
//! unmap of the same IOVA), `get_pages` and the access calls treat it as a
//! gap (`ENOENT`), and [`IoPagetable::areas`] does not list it.
//! `check_invariants` checks it like any other area, except that domains and
//! pins may be half done there.
//!
//! # Divergence from the kernel
//!
//! The kernel's unmap removes areas one at a time and may fail half way
//! (`ENOENT` on an area that sticks out of the range after earlier areas are
//! already gone). Here a refused unmap leaves the table untouched: every
//! area the range reaches is checked first, in IOVA order, and the first
//! problem gives the same errno the kernel would return. Likewise an unmap
//! that gives up on an access that does not unpin (`EDEADLK`) has removed
//! nothing, and the area accepts access pins again (the kernel leaves its
//! `prevent_access` set).

mod access;
mod area_dirty; // dirty pages per area, for a tracking session above (vfio_compat)
mod cut; // area splitting for VFIO type1 (v1) unmaps (vfio_compat)
mod dirty;
#[cfg(test)]
mod domain_tests;
mod domains;
mod free;
mod relocate; // re-pointing domains after custody moved pages (crate::custody)
#[cfg(test)]
mod tests;
mod write_log; // what accesses wrote, for area_dirty

pub use crate::domain::{DirtyBitmap, Prot};
pub use crate::user::huge_page_size;
pub use area_dirty::AreaDirty;
pub use dirty::DirtyRequest;
pub(crate) use dirty::{or_bits_into_user, user_bitmap_writable};
pub use domains::{AccessNotify, PinnedPages};
pub use write_log::AccessWriteLog;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::pages::Pages;
use crate::user::page_size;
use crate::{bail, err, Result};
use free::{hits_merged, merge_sorted, overlaps, subtract_merged, FreeIndex};

/// Where a new mapping goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IovaRequest {
    /// Exactly here (`IOMMU_IOAS_MAP_FIXED_IOVA`).
    Fixed(u64),
    /// Anywhere allowed, aligned as the kernel aligns it.
    Alloc,
}

/// A run of user memory to map: `length` bytes starting `start_byte` bytes
/// after `pages.uptr()`.
#[derive(Debug, Clone)]
pub struct MapSource {
    /// The pages object (shared, never copied).
    pub pages: Arc<Pages>,
    /// Offset of the first byte from `pages.uptr()`.
    pub start_byte: u64,
    /// Bytes.
    pub length: u64,
}

/// The sources of one map: borrowed (each area clones its pages' `Arc`)
/// or one owned source (its area takes the `Arc` as it is: no clone and
/// drop, two locked RMWs less).
#[derive(Debug)]
enum Sources<'a> {
    Borrowed(&'a [MapSource]),
    One(MapSource),
}

impl Sources<'_> {
    fn as_slice(&self) -> &[MapSource] {
        match self {
            Sources::Borrowed(s) => s,
            Sources::One(s) => std::slice::from_ref(s),
        }
    }
}

/// One area, for display and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaInfo {
    /// First IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
    /// User address the first IOVA maps to.
    pub uptr: u64,
    /// Rights.
    pub prot: Prot,
    /// The pages object's id.
    pub pages_id: u64,
    /// Whether the pages are the engine's mapping of a file (`IOAS_MAP_FILE`).
    pub file_backed: bool,
}

/// Where an area is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AreaState {
    /// Inserted by a `map` that has not finished (the kernel's NULL `pages`).
    Filling,
    /// Fully mapped.
    Live,
    /// Being taken out of the domains by an `unmap` that has not finished.
    Removing,
}

/// One area: `iova..=last` maps `last - iova + 1` bytes of `pages` from
/// `start_byte`.
#[derive(Debug)]
struct Area {
    last: u64,
    pages: Arc<Pages>,
    start_byte: u64,
    prot: Prot,
    state: AreaState,
    /// For an allocated IOVA, the allowed-ranges generation it was
    /// allocated under (checked by `check_invariants`); `None` when fixed.
    alloc_gen: Option<u64>,
    /// Access pins of this area: page range (indexes into `pages`,
    /// inclusive) -> number of `access_pin` calls holding it.
    accesses: Mutex<BTreeMap<(u64, u64), u32>>,
    /// An unmap is asking the accesses to let go of this area: new access
    /// pins and copies are refused (`EINVAL`) meanwhile.
    prevent_access: bool,
    /// Pins of the core's own accesses (a HW queue's memory): while
    /// non-zero the area cannot be unmapped (`EBUSY`; `num_locks`).
    locks: std::sync::atomic::AtomicU32,
}

impl Area {
    fn length(&self, iova: u64) -> u64 {
        self.last - iova + 1
    }

    /// The page indexes (into `pages`) the area maps, inclusive.
    fn page_range(&self, iova: u64) -> (u64, u64) {
        let ps = page_size();
        (
            self.start_byte / ps,
            (self.start_byte + (self.last - iova)) / ps,
        )
    }

    /// Whether an access holds pins in this area.
    fn has_access_pins(&self) -> bool {
        !self.accesses.lock().is_empty()
    }
}

/// A reserved range and who reserved it.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    start: u64,
    last: u64,
    owner: u64,
}

/// Everything behind the table's lock.
#[derive(Debug)]
struct State {
    /// iova -> area; areas never overlap.
    areas: BTreeMap<u64, Area>,
    /// Allowed ranges, sorted, disjoint; empty means everything is allowed.
    allowed: Vec<(u64, u64)>,
    /// Bumped whenever `allowed` changes.
    allowed_gen: u64,
    /// Reserved ranges (may overlap one another).
    reserved: Vec<Reserved>,
    /// Where IOVA allocation may place a new area.
    free: FreeIndex,
    /// Every area's IOVA, length and page offset is a multiple of this.
    iova_alignment: u64,
    /// `IOMMU_OPTION_HUGE_PAGES` set to 0.
    disable_large_pages: bool,
    /// What the attached domains and accesses ask of the alignment (1 when
    /// none): kept by domains.rs under both locks.
    domain_alignment: u64,
}

/// The `state` lock. Its write side bumps `gen` as soon as it is taken,
/// so a generation read under the read side names one snapshot of the
/// areas: the access fast path (`access.rs`) trusts a remembered area only
/// while the generation it was read under is still current.
#[derive(Debug)]
struct StateLock {
    lock: RwLock<State>,
    gen: AtomicU64,
}

impl StateLock {
    fn new(st: State) -> Self {
        StateLock {
            lock: RwLock::new(st),
            gen: AtomicU64::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.lock.read()
    }

    /// The write side; every holder may change the areas, so the
    /// generation moves before the guard is handed out.
    fn write(&self) -> RwLockWriteGuard<'_, State> {
        let g = self.lock.write();
        // Only a holder of the write side changes `gen`, so a plain load and
        // store cannot lose an update (no locked read-modify-write needed);
        // readers read it under the read side, ordered by the lock.
        self.gen
            .store(self.gen.load(Ordering::Relaxed) + 1, Ordering::Release);
        g
    }

    fn get_mut(&mut self) -> &mut State {
        self.lock.get_mut()
    }

    /// The current generation (stable while any guard is held).
    #[inline]
    fn gen(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }
}

/// Identities of tables, never reused (0 is no table).
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// A value alone on its cache lines (128 bytes: adjacent-line prefetch
/// pairs 64-byte lines), so that locks taken by every operation do not
/// share a line with other hot data.
#[derive(Debug, Default)]
#[repr(align(128))]
struct CacheAligned<T>(T);

impl<T> std::ops::Deref for CacheAligned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for CacheAligned<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// The IO page table of one IOAS.
#[derive(Debug)]
pub struct IoPagetable {
    domains: RwLock<domains::Attached>,
    /// On cache lines of its own: every map and unmap takes it for write,
    /// while `domains` beside it is taken for read by all of them at once.
    state: CacheAligned<StateLock>,
    /// This table's identity, unique in the process for its lifetime and
    /// after (the access fast path keys remembered areas by it).
    uid: u64,
    /// What accesses wrote (for `area_dirty`); a leaf lock.
    write_log: AccessWriteLog,
    /// The areas the access fast path may copy through, searched without
    /// the lock (`access.rs`).
    direct: access::DirectIndex,
    /// The zeroed words dirty reads build their bits in (`dirty.rs`); a
    /// leaf lock, held only to take or return the buffer.
    dirty_scratch: dirty::ScratchSlot,
}

impl Default for IoPagetable {
    fn default() -> Self {
        Self::new()
    }
}

/// The last byte of the `length` bytes at `iova`: `EINVAL` for a zero
/// length, `EOVERFLOW` when the range wraps. `what` names the operation in
/// the messages.
pub(crate) fn range_last(what: &str, iova: u64, length: u64) -> Result<u64> {
    if length == 0 {
        bail!(EINVAL, "{what} length is zero");
    }
    let Some(last) = iova.checked_add(length - 1) else {
        bail!(
            EOVERFLOW,
            "{what} iova {iova:#x} + length {length:#x} overflows"
        );
    };
    Ok(last)
}

/// `start..=last` clipped to the allocation window `[PAGE_SIZE, u64::MAX -
/// PAGE_SIZE]`, if anything is left.
fn alloc_window(start: u64, last: u64) -> Option<(u64, u64)> {
    let ps = page_size();
    let lo = start.max(ps);
    let hi = last.min(u64::MAX - ps);
    (lo <= hi).then_some((lo, hi))
}

/// Areas taken out of the tree, to be dropped after the lock: the first
/// one inline, so that the common unmap of one area allocates nothing.
#[derive(Default)]
struct Removed {
    first: Option<Area>,
    rest: Vec<Area>,
}

impl Removed {
    fn push(&mut self, a: Area) {
        if self.first.is_none() {
            self.first = Some(a);
        } else {
            self.rest.push(a);
        }
    }
}

/// The allocation rule of one free run (the kernel's
/// `__alloc_iova_check_range`): round `start` up to `align`, OR in the user
/// address's page offset, and take it if `length` bytes still fit before
/// `last` (the kernel also refuses a candidate equal to `last`).
fn fit(start: u64, last: u64, length: u64, align: u64, page_offset: u64) -> Option<u64> {
    let aligned = (start.checked_add(align - 1)? & !(align - 1)) | page_offset;
    if aligned >= last || last - aligned < length - 1 {
        return None;
    }
    Some(aligned)
}

impl State {
    fn new() -> State {
        let mut st = State {
            areas: BTreeMap::new(),
            allowed: Vec::new(),
            allowed_gen: 0,
            reserved: Vec::new(),
            free: FreeIndex::default(),
            iova_alignment: 1,
            disable_large_pages: false,
            domain_alignment: 1,
        };
        st.free = st.build_free();
        st
    }

    /// The alignment large pages ask for alone (`PAGE_SIZE` when disabled:
    /// the kernel then maps page by page).
    fn base_alignment(&self) -> u64 {
        if self.disable_large_pages {
            page_size()
        } else {
            1
        }
    }

    /// The alignment the table needs now (the kernel's
    /// `iopt_calculate_iova_alignment`).
    fn wanted_alignment(&self) -> u64 {
        self.base_alignment().max(self.domain_alignment)
    }

    /// The largest page a domain may use for new mappings. The kernel
    /// maps what is physically contiguous, and pinned anonymous or shmem
    /// memory is contiguous over a PMD-size folio at most; here memory is
    /// reached by its (always contiguous) virtual address, so without a cap
    /// a domain would map a 1 GiB-aligned GiB as one 1 GiB page, and its
    /// dirty tracking would then see the whole GiB dirty for one write.
    /// Capped at the PMD size (a 1 GiB hugetlbfs backing, which the kernel
    /// maps with 1 GiB pages, gets 2 MiB ones here: finer, never coarser).
    fn max_pgsize(&self) -> u64 {
        if self.disable_large_pages {
            page_size()
        } else {
            huge_page_size()
        }
    }

    /// The kernel's `iopt_check_iova_alignment`: every area's IOVA, length
    /// and page offset must be a multiple of `new` (else `EADDRINUSE`).
    fn check_alignment(&self, new: u64) -> Result<()> {
        let ps = page_size();
        let mask = new - 1;
        if let Some((&k, a)) = self.areas.iter().find(|(&k, a)| {
            k & mask != 0 || a.length(k) & mask != 0 || (a.start_byte % ps) & mask != 0
        }) {
            bail!(
                EADDRINUSE,
                "area [{k:#x}, {:#x}] (page offset {:#x}) is not aligned to the new IOVA alignment {new:#x}",
                a.last,
                a.start_byte % ps
            );
        }
        Ok(())
    }

    /// The kernel's `iopt_reserve_iova`: `EADDRINUSE` when the range
    /// intersects an area or an allowed range.
    fn reserve(&mut self, start: u64, last: u64, owner: u64) -> Result<()> {
        if let Some((s, l)) = self.any_area(start, last) {
            bail!(EADDRINUSE, "reserved range [{start:#x}, {last:#x}] intersects the mapped area [{s:#x}, {l:#x}]");
        }
        if let Some((s, l)) = self.allowed_hit(start, last) {
            bail!(EADDRINUSE, "reserved range [{start:#x}, {last:#x}] intersects the allowed range [{s:#x}, {l:#x}]");
        }
        self.reserved.push(Reserved { start, last, owner });
        self.free.carve(start, last);
        Ok(())
    }

    /// Drop every reserved range of `owner`.
    fn remove_reserved_owner(&mut self, owner: u64) {
        let before = self.reserved.len();
        self.reserved.retain(|r| r.owner != owner);
        if self.reserved.len() != before {
            self.free = self.build_free();
        }
    }

    /// The parts of `start..=last` an allocation may use when no area is in
    /// the way: inside `[PAGE_SIZE, u64::MAX - PAGE_SIZE]`, inside an allowed
    /// range when any are set, outside every reserved range.
    fn allocatable(&self, start: u64, last: u64) -> Vec<(u64, u64)> {
        let Some((lo, hi)) = alloc_window(start, last) else {
            return Vec::new();
        };
        let pieces: Vec<(u64, u64)> = if self.allowed.is_empty() {
            vec![(lo, hi)]
        } else {
            // allowed is sorted and disjoint: only those meeting lo..=hi
            let first = self.allowed.partition_point(|a| a.1 < lo);
            self.allowed[first..]
                .iter()
                .take_while(|a| a.0 <= hi)
                .map(|&(s, l)| (s.max(lo), l.min(hi)))
                .collect()
        };
        if pieces.is_empty() || self.reserved.is_empty() {
            return pieces;
        }
        let cuts = merge_sorted(
            self.reserved
                .iter()
                .filter(|r| overlaps((r.start, r.last), (lo, hi)))
                .map(|r| (r.start, r.last)),
        );
        subtract_merged(&pieces, &cuts)
    }

    /// An allowed range that shares an IOVA with `start..=last`. O(log n).
    fn allowed_hit(&self, start: u64, last: u64) -> Option<(u64, u64)> {
        let i = self.allowed.partition_point(|a| a.1 < start);
        self.allowed.get(i).copied().filter(|a| a.0 <= last)
    }

    /// The first allowed range (in IOVA order) that intersects a reserved
    /// range, with that reserved range. O((n + r) log r).
    fn allowed_reserved_clash(&self) -> Option<((u64, u64), Reserved)> {
        if self.reserved.is_empty() {
            return None;
        }
        let merged = merge_sorted(self.reserved.iter().map(|r| (r.start, r.last)));
        let &(s, l) = self
            .allowed
            .iter()
            .find(|&&(s, l)| hits_merged(&merged, s, l))?;
        Some(((s, l), self.reserved_hit(s, l)?))
    }

    /// The free index computed from scratch. O(n log n).
    fn build_free(&self) -> FreeIndex {
        let mut f = FreeIndex::default();
        for (s, l) in self.allocatable(0, u64::MAX) {
            f.release(s, l);
        }
        for (&iova, a) in &self.areas {
            f.carve(iova, a.last);
        }
        f
    }

    /// Keys of the areas that share an IOVA with `start..=last`, in order.
    fn overlapping(&self, start: u64, last: u64) -> Vec<u64> {
        let mut keys = Vec::new();
        if let Some((&iova, a)) = self.areas.range(..start).next_back() {
            if a.last >= start {
                keys.push(iova);
            }
        }
        keys.extend(self.areas.range(start..=last).map(|(&k, _)| k));
        keys
    }

    /// Whether any area shares an IOVA with `start..=last`. O(log n).
    fn any_area(&self, start: u64, last: u64) -> Option<(u64, u64)> {
        let (&iova, a) = self.areas.range(..=last).next_back()?;
        (a.last >= start).then_some((iova, a.last))
    }

    fn reserved_hit(&self, start: u64, last: u64) -> Option<Reserved> {
        self.reserved
            .iter()
            .copied()
            .find(|r| overlaps((r.start, r.last), (start, last)))
    }

    fn insert_area(&mut self, iova: u64, area: Area) {
        self.free.carve(iova, area.last);
        self.areas.insert(iova, area);
    }

    fn remove_area(&mut self, iova: u64) -> Option<Area> {
        let area = self.areas.remove(&iova)?;
        if self.allowed.is_empty() && self.reserved.is_empty() {
            // what `allocatable` returns then, without its Vec
            if let Some((s, l)) = alloc_window(iova, area.last) {
                self.free.release(s, l);
            }
        } else {
            for (s, l) in self.allocatable(iova, area.last) {
                self.free.release(s, l);
            }
        }
        Some(area)
    }

    /// The kernel's `iopt_check_iova`: may `length` bytes go at `iova`?
    fn check_iova(&self, iova: u64, length: u64) -> Result<u64> {
        let align = self.iova_alignment;
        if iova & (align - 1) != 0 {
            bail!(
                EINVAL,
                "iova {iova:#x} is not aligned to the IOVA alignment {align:#x}"
            );
        }
        let Some(last) = iova.checked_add(length - 1) else {
            bail!(EOVERFLOW, "iova {iova:#x} + length {length:#x} overflows");
        };
        if let Some(r) = self.reserved_hit(iova, last) {
            bail!(
                EINVAL,
                "range [{iova:#x}, {last:#x}] intersects the reserved range [{:#x}, {:#x}]",
                r.start,
                r.last
            );
        }
        if let Some((s, l)) = self.any_area(iova, last) {
            bail!(
                EEXIST,
                "range [{iova:#x}, {last:#x}] intersects the mapped area [{s:#x}, {l:#x}]"
            );
        }
        Ok(last)
    }

    /// The kernel's `iopt_alloc_iova`: an IOVA for `length` bytes whose user
    /// memory starts at `uptr`.
    fn alloc_iova(&self, uptr: u64, length: u64) -> Result<u64> {
        let ps = page_size();
        if length == 0 || length >= u64::MAX / 2 {
            bail!(
                EOVERFLOW,
                "length {length:#x} is too large to allocate an IOVA for"
            );
        }
        let pow = length.next_power_of_two();
        let mut align = if uptr == 0 {
            pow
        } else {
            pow.min(1u64 << uptr.trailing_zeros())
        };
        align = align.min(huge_page_size());
        if align < self.iova_alignment {
            bail!(
                EINVAL,
                "user address {uptr:#x} and length {length:#x} only allow IOVA alignment {align:#x}, below the \
                 table's alignment {:#x}",
                self.iova_alignment
            );
        }
        let page_offset = uptr % ps;
        // A run of `last - start >= guaranteed` always fits: rounding up
        // costs at most `align - 1`, the page offset at most `page_offset`.
        let guaranteed = length
            .checked_add(align)
            .and_then(|g| g.checked_add(page_offset))
            .map(|g| g - 1);
        self.free
            .find(length, guaranteed, |s, l| fit(s, l, length, align, page_offset))
            .ok_or_else(|| {
                err!(
                    ENOSPC,
                    "no free IOVA range holds {length:#x} bytes at alignment {align:#x} (page offset {page_offset:#x}) \
                     inside the allowed ranges and outside reserved ranges and areas"
                )
            })
    }

    /// Step 1 of `map`: check everything, choose the IOVA and insert the
    /// areas as filling. Nothing changes on failure.
    /// The areas go in as `state`: `Filling`, or `Live` when there is
    /// nothing to fill (the caller holds the domain set with none in it).
    fn reserve_areas(
        &mut self,
        srcs: Sources<'_>,
        length: u64,
        req: IovaRequest,
        prot: Prot,
        state: AreaState,
    ) -> Result<u64> {
        let sources = srcs.as_slice();
        let ps = page_size();
        let align = self.iova_alignment;
        if length == 0 {
            bail!(EINVAL, "length is zero");
        }
        if length & (align - 1) != 0 {
            bail!(
                EINVAL,
                "length {length:#x} is not a multiple of the IOVA alignment {align:#x}"
            );
        }
        let (iova, alloc_gen) = match req {
            IovaRequest::Alloc => {
                let first = &sources[0];
                let Some(uptr) = first.pages.uptr().checked_add(first.start_byte) else {
                    bail!(
                        EOVERFLOW,
                        "source start byte {:#x} overflows the user address",
                        first.start_byte
                    );
                };
                let iova = self.alloc_iova(uptr, length)?;
                // The allocator must only hand out what a fixed map would accept.
                debug_assert!(self.check_iova(iova, length).is_ok());
                (iova, Some(self.allowed_gen))
            }
            IovaRequest::Fixed(iova) => {
                self.check_iova(iova, length)?;
                (iova, None)
            }
        };
        // The kernel's iopt_insert_area, for every source, before any insert.
        let mut at = iova;
        for (i, src) in sources.iter().enumerate() {
            if prot.write && !src.pages.writable() {
                bail!(
                    EPERM,
                    "source {i} is read-only memory but the mapping asks for write access"
                );
            }
            let page_offset = src.start_byte % ps;
            if page_offset & (align - 1) != 0 {
                bail!(
                    EINVAL,
                    "source {i} starts at page offset {page_offset:#x}, not aligned to the IOVA alignment {align:#x}"
                );
            }
            let Some(last) = at.checked_add(src.length - 1) else {
                bail!(
                    EOVERFLOW,
                    "source {i}: iova {at:#x} + length {:#x} overflows",
                    src.length
                );
            };
            let Some(src_last) = src.start_byte.checked_add(src.length - 1) else {
                bail!(
                    EOVERFLOW,
                    "source {i}: start byte {:#x} + length {:#x} overflows",
                    src.start_byte,
                    src.length
                );
            };
            if src_last / ps >= src.pages.npages() {
                bail!(
                    EOVERFLOW,
                    "source {i}: bytes [{:#x}, {src_last:#x}] run past the {} pages of pages object {}",
                    src.start_byte,
                    src.pages.npages(),
                    src.pages.id()
                );
            }
            // the kernel's iopt_alloc_area
            crate::inject::point("iopt.area.alloc", libc::ENOMEM)?;
            at = last.wrapping_add(1);
        }
        // Every source passed: insert them all (the same `at`/`last` as
        // computed above, which did not overflow).
        let mut at = iova;
        let mut insert = |st: &mut State, pages: Arc<Pages>, start_byte: u64, len: u64| {
            let last = at + (len - 1);
            let area = Area {
                last,
                pages,
                start_byte,
                prot,
                state,
                alloc_gen,
                accesses: Mutex::new(BTreeMap::new()),
                prevent_access: false,
                locks: std::sync::atomic::AtomicU32::new(0),
            };
            st.insert_area(at, area);
            at = last.wrapping_add(1);
        };
        match srcs {
            Sources::Borrowed(sources) => {
                for src in sources {
                    insert(self, src.pages.clone(), src.start_byte, src.length);
                }
            }
            Sources::One(src) => insert(self, src.pages, src.start_byte, src.length),
        }
        Ok(iova)
    }

    /// Step 3 of `map`: publish the filling areas of `iova..=last`.
    fn publish(&mut self, iova: u64, last: u64) {
        for (_, a) in self.areas.range_mut(iova..=last) {
            debug_assert_eq!(a.state, AreaState::Filling);
            a.state = AreaState::Live;
        }
    }

    /// Remove the filling areas of `iova..=last` after a failed fill.
    fn abort(&mut self, iova: u64, last: u64) -> Vec<Area> {
        let keys: Vec<u64> = self.areas.range(iova..=last).map(|(&k, _)| k).collect();
        keys.into_iter()
            .filter_map(|k| self.remove_area(k))
            .collect()
    }

    /// The checks of the kernel's `iopt_unmap_iova_range`, made
    /// all-or-nothing: the errno of the first area (in IOVA order) sharing
    /// an IOVA with `start..=last` that cannot be unmapped. On success the
    /// areas to unmap are exactly `self.areas.range(start..=last)`.
    fn check_unmap(&self, start: u64, last: u64) -> Result<()> {
        let before = self
            .areas
            .range(..start)
            .next_back()
            .filter(|(_, a)| a.last >= start);
        for (&k, a) in before.into_iter().chain(self.areas.range(start..=last)) {
            match a.state {
                AreaState::Filling => bail!(
                    EBUSY,
                    "area [{k:#x}, {:#x}] is still being mapped by another thread",
                    a.last
                ),
                AreaState::Removing => bail!(
                    EBUSY,
                    "area [{k:#x}, {:#x}] is being unmapped by another thread",
                    a.last
                ),
                AreaState::Live => {}
            }
            if a.locks.load(std::sync::atomic::Ordering::Acquire) != 0 {
                bail!(
                    EBUSY,
                    "area [{k:#x}, {:#x}] is locked by an object that pins it (a HW queue)",
                    a.last
                );
            }
            if k < start || a.last > last {
                bail!(
                    ENOENT,
                    "unmap range [{start:#x}, {last:#x}] would split the area [{k:#x}, {:#x}]; only whole areas \
                     can be unmapped",
                    a.last
                );
            }
        }
        Ok(())
    }

    /// Let accesses pin the area at `iova` again (if it is still there).
    fn allow_access(&mut self, iova: u64) {
        if let Some(a) = self.areas.get_mut(&iova) {
            a.prevent_access = false;
        }
    }

    /// What fill and unfill need of one area, copied out of the tree.
    fn area_ref(&self, iova: u64) -> domains::AreaRef {
        let a = &self.areas[&iova];
        domains::AreaRef {
            iova,
            length: a.length(iova),
            pages: a.pages.clone(),
            start_byte: a.start_byte,
            prot: a.prot,
        }
    }
}

impl IoPagetable {
    /// An empty table: everything allowed, nothing reserved, alignment 1,
    /// no domain, no access.
    pub fn new() -> Self {
        IoPagetable {
            domains: RwLock::new(domains::Attached::default()),
            state: CacheAligned(StateLock::new(State::new())),
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            write_log: AccessWriteLog::default(),
            direct: access::DirectIndex::default(),
            dirty_scratch: dirty::ScratchSlot::default(),
        }
    }

    /// Map `sources` (concatenated, total `length`) at `iova`; returns the IOVA used.
    ///
    /// Errors, in the kernel's order: `EINVAL` for a zero or misaligned
    /// length; for a fixed IOVA `EINVAL` (misaligned), `EOVERFLOW` (wraps),
    /// `EINVAL` (hits a reserved range), `EEXIST` (hits an area); for an
    /// allocated one `EOVERFLOW` (length of half the space or more), `EINVAL`
    /// (the user address allows less alignment than the table needs),
    /// `ENOSPC`; then per source `EPERM` (write to read-only pages),
    /// `EINVAL` (page offset misaligned), `EOVERFLOW` (past the pages); then,
    /// with domains attached, what pinning (`EFAULT`, `ENOMEM`) or a domain's
    /// map returns. On error nothing stays mapped, pinned or reserved.
    pub fn map(
        &self,
        sources: Vec<MapSource>,
        length: u64,
        iova: IovaRequest,
        prot: Prot,
    ) -> Result<u64> {
        self.map_slice(&sources, length, iova, prot)
    }

    /// [`IoPagetable::map`] of borrowed sources (a single-source map needs
    /// no `Vec`).
    pub fn map_slice(
        &self,
        sources: &[MapSource],
        length: u64,
        iova: IovaRequest,
        prot: Prot,
    ) -> Result<u64> {
        self.map_sources(Sources::Borrowed(sources), length, iova, prot)
    }

    /// [`IoPagetable::map`] of one source, taking its pages `Arc` into the
    /// area as it is.
    pub fn map_one(
        &self,
        source: MapSource,
        length: u64,
        iova: IovaRequest,
        prot: Prot,
    ) -> Result<u64> {
        self.map_sources(Sources::One(source), length, iova, prot)
    }

    fn map_sources(
        &self,
        srcs: Sources<'_>,
        length: u64,
        iova: IovaRequest,
        prot: Prot,
    ) -> Result<u64> {
        let sources = srcs.as_slice();
        if sources.is_empty() {
            bail!(EINVAL, "nothing to map: the source list is empty");
        }
        let mut total = 0u64;
        for (i, s) in sources.iter().enumerate() {
            if s.length == 0 {
                bail!(EINVAL, "source {i} has length zero");
            }
            let Some(t) = total.checked_add(s.length) else {
                bail!(EOVERFLOW, "the source lengths overflow");
            };
            total = t;
        }
        if total != length {
            bail!(
                EINVAL,
                "the sources hold {total:#x} bytes but the map asks for {length:#x}"
            );
        }

        // The domain set cannot change until the areas are published, so a
        // domain added later finds them live and fills them itself.
        let attached = self.domains.read();

        // With no domain attached there is nothing to pin or fill (the domain
        // set cannot change while `attached` is held): the areas go live in
        // the same write-locked step that takes the IOVA, one lock round
        // instead of two, which is what lets threads mapping disjoint ranges
        // stop queueing on the lock twice per map.
        if attached.domains.is_empty() {
            let mut st = self.state.write();
            return st.reserve_areas(srcs, length, iova, prot, AreaState::Live);
        }

        // Step 1: take the IOVA.
        let (iova, max_pgsize) = {
            let mut st = self.state.write();
            let iova = st.reserve_areas(
                Sources::Borrowed(sources),
                length,
                iova,
                prot,
                AreaState::Filling,
            )?;
            (iova, st.max_pgsize())
        };
        let last = iova + (length - 1);

        // Step 2: pin and fill the domains, without the lock. With no domain
        // attached the kernel pins nothing at map time.
        let filled = if attached.domains.is_empty() {
            Ok(())
        } else {
            domains::fill_sources(iova, sources, prot, &attached.domains, max_pgsize)
        };

        // Step 3: publish, or give the IOVA back.
        let mut st = self.state.write();
        match filled {
            Ok(()) => {
                st.publish(iova, last);
                Ok(iova)
            }
            Err(e) => {
                let removed = st.abort(iova, last);
                drop(st);
                drop(removed);
                Err(e)
            }
        }
    }

    /// Unmap every area fully inside `[iova, iova + length)`; returns bytes unmapped.
    ///
    /// `EINVAL` for a zero length, `EOVERFLOW` when the range wraps, `ENOENT`
    /// when the range cuts an area, `EBUSY` when it reaches an area still
    /// being mapped or unmapped, `EDEADLK` when an access keeps pages of an
    /// area pinned after being asked 101 times to unpin them. Nothing mapped
    /// there is a success with 0 bytes (the ioctl turns that into `ENOENT`).
    /// On error nothing is unmapped.
    pub fn unmap(&self, iova: u64, length: u64) -> Result<u64> {
        let last = range_last("unmap", iova, length)?;
        self.unmap_range(iova, last)
    }

    /// Unmap everything; returns bytes unmapped (`EBUSY` while a map or an
    /// unmap is in flight, `EDEADLK` as for [`IoPagetable::unmap`]).
    pub fn unmap_all(&self) -> Result<u64> {
        self.unmap_range(0, u64::MAX)
    }

    /// The kernel's `iopt_unmap_iova_range`, all-or-nothing: ask the accesses
    /// to unpin areas they hold (retrying), then take the areas out of the
    /// domains, unpin them and remove them.
    fn unmap_range(&self, start: u64, last: u64) -> Result<u64> {
        /// The kernel gives up after this many notifications of one area.
        const MAX_NOTIFY_TRIES: u32 = 100;
        let mut tries = 0u32;
        // The area whose accesses were last notified (its prevent_access is set).
        let mut notified: Option<u64> = None;
        loop {
            let attached = self.domains.read();
            let mut st = self.state.write();
            if let Err(e) = st.check_unmap(start, last) {
                if let Some(k) = notified {
                    st.allow_access(k);
                }
                return Err(e);
            }
            // the checks passed: the areas to unmap are those keyed inside the range
            // (`get_mut` through the write guard: no other thread can hold
            // an area's `accesses` lock now, so no need to take it)
            let pinned = st
                .areas
                .range_mut(start..=last)
                .find_map(|(&k, a)| (!a.accesses.get_mut().is_empty()).then_some(k));
            if let Some(k) = pinned {
                if let Some(prev) = notified.filter(|&p| p != k) {
                    st.allow_access(prev);
                    tries = 0;
                }
                notified = Some(k);
                let area = st.areas.get_mut(&k).expect("area just found");
                area.prevent_access = true;
                let len = area.length(k);
                let accesses = attached.access_notifiers();
                drop(st);
                drop(attached);
                for a in &accesses {
                    if let Some(a) = a.upgrade() {
                        a.unmap(k, len);
                    }
                }
                tries += 1;
                if tries > MAX_NOTIFY_TRIES {
                    self.state.write().allow_access(k);
                    bail!(
                        EDEADLK,
                        "area [{k:#x}, +{len:#x}) is still pinned by an access after {tries} unmap notifications"
                    );
                }
                continue;
            }
            let mut bytes = 0u64;
            if attached.domains.is_empty() {
                // nothing to unfill: the areas leave the tree at once (one
                // lock round), and their pages are dropped after the lock
                let mut removed = Removed::default();
                while let Some(k) = st.areas.range(start..=last).next().map(|(&k, _)| k) {
                    let a = st.remove_area(k).expect("area just found");
                    bytes = bytes.wrapping_add(a.length(k));
                    removed.push(a);
                }
                // Access copies of the lock-free path still moving bytes
                // through the areas end before the unmap goes on (the
                // generation moved when the lock was taken: no new one
                // starts). Under the lock, like the copies under the read
                // lock, and before `forget`, so that no copy logs a write
                // to the unmapped IOVA after it.
                crate::drain::wait();
                self.write_log.forget(start, last);
                drop(st);
                drop(attached);
                drop(removed);
                return Ok(bytes);
            }
            let keys: Vec<u64> = st.areas.range(start..=last).map(|(&k, _)| k).collect();
            let mut refs = Vec::with_capacity(keys.len());
            for &k in &keys {
                let a = st.areas.get_mut(&k).expect("area just checked");
                a.state = AreaState::Removing;
                bytes = bytes.wrapping_add(a.length(k));
                refs.push(st.area_ref(k));
            }
            drop(st);
            // The areas are `Removing`: the generation moved, the locked
            // walk and the index skip them, so no new access copy goes
            // through them; let those of the lock-free path still in
            // flight end before their pages leave the domains.
            crate::drain::wait();
            if !attached.domains.is_empty() {
                for r in &refs {
                    domains::unfill_area(r, &attached.domains, true);
                }
            }
            let mut st = self.state.write();
            let removed: Vec<Area> = keys.iter().filter_map(|&k| st.remove_area(k)).collect();
            // hook: writes logged for the unmapped IOVA go with the mapping
            self.write_log.forget(start, last);
            drop(st);
            drop(attached);
            drop(removed);
            drop(refs);
            return Ok(bytes);
        }
    }

    /// The sources that back `[iova, iova + length)` (for `IOAS_COPY`).
    ///
    /// The sources share the areas' `Arc<Pages>` and are split at area
    /// boundaries. `EINVAL` for a zero length, `EOVERFLOW` when the range
    /// wraps, `ENOENT` unless contiguous live areas cover the whole range.
    pub fn get_pages(&self, iova: u64, length: u64) -> Result<Vec<MapSource>> {
        let last = range_last("copy", iova, length)?;
        let st = self.state.read();
        let mut out = Vec::new();
        let mut cur = iova;
        let mut it = match st.areas.range(..=iova).next_back() {
            Some((&k, a)) if a.last >= iova => st.areas.range(k..),
            _ => bail!(ENOENT, "no area is mapped at iova {iova:#x}"),
        };
        loop {
            let Some((&k, a)) = it.next() else {
                bail!(
                    ENOENT,
                    "nothing is mapped at iova {cur:#x} inside [{iova:#x}, {last:#x}]"
                );
            };
            if k > cur {
                bail!(
                    ENOENT,
                    "nothing is mapped at iova {cur:#x} inside [{iova:#x}, {last:#x}]"
                );
            }
            if a.state != AreaState::Live {
                bail!(
                    ENOENT,
                    "the area at iova {k:#x} is still being mapped or unmapped"
                );
            }
            let end = a.last.min(last);
            // the kernel's iopt_get_pages allocates one element per area
            crate::inject::point("iopt.get_pages", libc::ENOMEM)?;
            out.push(MapSource {
                pages: a.pages.clone(),
                start_byte: a.start_byte + (cur - k),
                length: end - cur + 1,
            });
            if end == last {
                return Ok(out);
            }
            cur = end + 1;
        }
    }

    /// Replace the allowed ranges (empty = everything allowed).
    ///
    /// `EINVAL` when a range has `start >= last` or two ranges overlap,
    /// `EADDRINUSE` when an allowed range intersects a reserved one. Existing
    /// areas are not checked (as in the kernel); only allocation obeys them.
    pub fn set_allowed(&self, ranges: &[(u64, u64)]) -> Result<()> {
        let mut sorted = ranges.to_vec();
        for &(s, l) in &sorted {
            if s >= l {
                bail!(EINVAL, "allowed range [{s:#x}, {l:#x}] has start >= last");
            }
        }
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[1].0 <= w[0].1 {
                bail!(
                    EINVAL,
                    "allowed ranges [{:#x}, {:#x}] and [{:#x}, {:#x}] overlap",
                    w[0].0,
                    w[0].1,
                    w[1].0,
                    w[1].1
                );
            }
        }
        // the kernel allocates the new allowed-range nodes first
        crate::inject::point("iopt.allowed.alloc", libc::ENOMEM)?;
        let mut st = self.state.write();
        let old = std::mem::replace(&mut st.allowed, sorted);
        if let Some((a, r)) = st.allowed_reserved_clash() {
            st.allowed = old;
            bail!(
                EADDRINUSE,
                "allowed range [{:#x}, {:#x}] intersects the reserved range [{:#x}, {:#x}]",
                a.0,
                a.1,
                r.start,
                r.last
            );
        }
        st.allowed_gen += 1;
        st.free = st.build_free();
        Ok(())
    }

    /// Reserve `start..=last` for `owner` (0 = permanent).
    ///
    /// `EINVAL` when `start > last`; `EADDRINUSE` when the range intersects
    /// an area or an allowed range.
    pub fn add_reserved(&self, start: u64, last: u64, owner: u64) -> Result<()> {
        if start > last {
            bail!(
                EINVAL,
                "reserved range [{start:#x}, {last:#x}] has start > last"
            );
        }
        self.state.write().reserve(start, last, owner)
    }

    /// Drop every reserved range of `owner` (the kernel's
    /// `iopt_remove_reserved_iova`).
    pub fn remove_reserved(&self, owner: u64) {
        self.state.write().remove_reserved_owner(owner);
    }

    /// The usable ranges (holes between reserved ranges) and the IOVA alignment.
    pub fn iova_ranges(&self) -> (Vec<(u64, u64)>, u64) {
        let st = self.state.read();
        let cuts = merge_sorted(st.reserved.iter().map(|r| (r.start, r.last)));
        (subtract_merged(&[(0, u64::MAX)], &cuts), st.iova_alignment)
    }

    /// The current IOVA alignment (`out_iova_alignment`).
    pub fn iova_alignment(&self) -> u64 {
        self.state.read().iova_alignment
    }

    /// Whether large pages are enabled (`IOMMU_OPTION_HUGE_PAGES`).
    pub fn large_pages(&self) -> bool {
        !self.state.read().disable_large_pages
    }

    /// Enable or disable large pages.
    ///
    /// Disabling raises the alignment to `PAGE_SIZE` and caps the page size
    /// domains map with at `PAGE_SIZE`: `EINVAL` when a domain is attached
    /// and any area exists (its mappings may already use large pages),
    /// `EADDRINUSE` when an existing area's IOVA, length or page offset is
    /// not a multiple of it (nothing changes then). Enabling always succeeds.
    pub fn set_large_pages(&self, enable: bool) -> Result<()> {
        let attached = self.domains.write();
        let mut st = self.state.write();
        if enable {
            st.disable_large_pages = false;
            return domains::recalc_alignment(&mut st, &attached);
        }
        if st.disable_large_pages {
            return Ok(());
        }
        if !attached.domains.is_empty() && !st.areas.is_empty() {
            bail!(
                EINVAL,
                "cannot disable large pages while {} domain(s) are attached and areas are mapped",
                attached.domains.len()
            );
        }
        st.disable_large_pages = true;
        let r = domains::recalc_alignment(&mut st, &attached);
        if r.is_err() {
            st.disable_large_pages = false;
        }
        r
    }

    /// All areas in IOVA order (areas whose map has not finished are left out).
    pub fn areas(&self) -> Vec<AreaInfo> {
        let st = self.state.read();
        st.areas
            .iter()
            .filter(|(_, a)| a.state == AreaState::Live)
            .map(|(&k, a)| AreaInfo {
                iova: k,
                length: a.length(k),
                uptr: a.pages.uptr() + a.start_byte,
                prot: a.prot,
                pages_id: a.pages.id(),
                file_backed: a.pages.file().is_some(),
            })
            .collect()
    }

    /// `IOMMU_IOAS_CHANGE_PROCESS`'s check of this table: `EBUSY` while an
    /// area is still being filled (the kernel's area without pages),
    /// `EINVAL` when an area maps user memory rather than a file.
    pub fn check_all_file_backed(&self) -> Result<()> {
        let st = self.state.read();
        for (&k, a) in st.areas.iter() {
            if a.state == AreaState::Filling {
                bail!(EBUSY, "the area at {k:#x} is still being mapped");
            }
            if a.pages.is_dmabuf() {
                bail!(
                    EINVAL,
                    "the area at {k:#x} maps a dma-buf: only file-backed areas can change process"
                );
            }
            if a.pages.file().is_none() {
                bail!(
                    EINVAL,
                    "the area at {k:#x} maps user memory: only file-backed areas can change process"
                );
            }
        }
        Ok(())
    }

    /// The pages objects of every area (each once).
    pub fn area_pages(&self) -> Vec<Arc<Pages>> {
        let st = self.state.read();
        let mut out: Vec<Arc<Pages>> = Vec::new();
        for a in st.areas.values() {
            if !out.iter().any(|p| Arc::ptr_eq(p, &a.pages)) {
                out.push(a.pages.clone());
            }
        }
        out
    }

    /// Check the structure's invariants; `Err` says which one broke.
    ///
    /// Besides the tree, allowed, reserved and free-index rules: every
    /// attached domain maps exactly the published areas (same IOVA, same
    /// host address; complete for domains that list their mappings,
    /// `Domain::mapped_runs`, else sampled), published areas are pinned while a domain is attached and
    /// where accesses pinned them, pages objects only this table holds carry
    /// exactly those pins, and removed domains left no reserved range.
    ///
    /// Takes the state lock for write: access pins and `get_pages` wait.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let attached = self.domains.read();
        let st = self.state.write();
        for (&k, a) in st.areas.iter() {
            a.pages
                .check_backing()
                .map_err(|e| format!("area at {k:#x}: {e}"))?;
        }
        let ps = page_size();
        let align = st.iova_alignment;
        if !align.is_power_of_two() {
            return Err(format!("IOVA alignment {align:#x} is not a power of two"));
        }
        if align != st.wanted_alignment() {
            return Err(format!(
                "IOVA alignment {align:#x} disagrees with large pages {}, domains and accesses (wants {:#x})",
                !st.disable_large_pages,
                st.wanted_alignment()
            ));
        }
        for w in st.allowed.windows(2) {
            if w[1].0 <= w[0].1 {
                return Err(format!(
                    "allowed ranges {:#x?} and {:#x?} are unsorted or overlap",
                    w[0], w[1]
                ));
            }
        }
        for &(s, l) in &st.allowed {
            if s >= l {
                return Err(format!("allowed range [{s:#x}, {l:#x}] has start >= last"));
            }
        }
        if let Some(((s, l), r)) = st.allowed_reserved_clash() {
            return Err(format!(
                "allowed range [{s:#x}, {l:#x}] intersects reserved range [{:#x}, {:#x}]",
                r.start, r.last
            ));
        }
        for r in &st.reserved {
            if r.start > r.last {
                return Err(format!(
                    "reserved range [{:#x}, {:#x}] has start > last",
                    r.start, r.last
                ));
            }
        }
        let mut prev: Option<(u64, u64)> = None;
        for (&k, a) in &st.areas {
            if a.last < k {
                return Err(format!(
                    "area at {k:#x} has last {:#x} below its start",
                    a.last
                ));
            }
            if let Some((ps_, pl)) = prev {
                if k <= pl {
                    return Err(format!(
                        "areas [{ps_:#x}, {pl:#x}] and [{k:#x}, {:#x}] overlap",
                        a.last
                    ));
                }
            }
            prev = Some((k, a.last));
            if let Some(r) = st.reserved_hit(k, a.last) {
                return Err(format!(
                    "area [{k:#x}, {:#x}] intersects reserved range [{:#x}, {:#x}]",
                    a.last, r.start, r.last
                ));
            }
            if a.alloc_gen == Some(st.allowed_gen) {
                let pieces = st.allocatable(k, a.last);
                let covered = pieces.first().is_some_and(|p| p.0 == k)
                    && pieces.last().is_some_and(|p| p.1 == a.last)
                    && pieces
                        .windows(2)
                        .all(|w| w[0].1.checked_add(1) == Some(w[1].0));
                if !covered {
                    return Err(format!(
                        "allocated area [{k:#x}, {:#x}] is not inside one allowed range and the allocation window",
                        a.last
                    ));
                }
            }
            let len = a.length(k);
            let mask = align - 1;
            if k & mask != 0 || len & mask != 0 || (a.start_byte % ps) & mask != 0 {
                return Err(format!(
                    "area [{k:#x}, {:#x}] (page offset {:#x}) is not aligned to the IOVA alignment {align:#x}",
                    a.last,
                    a.start_byte % ps
                ));
            }
            match a.start_byte.checked_add(len) {
                Some(end) if end <= a.pages.len_bytes() => {}
                _ => {
                    return Err(format!(
                        "area [{k:#x}, {:#x}] maps bytes from {:#x} of pages object {} past its {:#x} bytes",
                        a.last,
                        a.start_byte,
                        a.pages.id(),
                        a.pages.len_bytes()
                    ))
                }
            }
            if a.prot.write && !a.pages.writable() {
                return Err(format!(
                    "area [{k:#x}, {:#x}] is writable over read-only pages",
                    a.last
                ));
            }
        }
        if !st.free.indexes_agree() {
            return Err("the free-IOVA index by size disagrees with the free runs".into());
        }
        let expect = st.build_free();
        if expect != st.free {
            let have: Vec<_> = st.free.runs().take(8).collect();
            let want: Vec<_> = expect.runs().take(8).collect();
            return Err(format!(
                "the free-IOVA index disagrees with the areas, allowed and reserved ranges: have {have:#x?}, want \
                 {want:#x?}"
            ));
        }
        domains::check(&st, &attached)
    }
}

impl Drop for IoPagetable {
    /// The kernel refuses to destroy an IOAS with domains or accesses; here
    /// a table dropped with them still leaves no pin and no stale mapping.
    fn drop(&mut self) {
        let attached = self.domains.get_mut();
        let st = self.state.get_mut();
        if !attached.domains.is_empty() {
            tracing::warn!(
                "IO page table dropped with {} domain(s) attached",
                attached.domains.len()
            );
        }
        let keys: Vec<u64> = st.areas.keys().copied().collect();
        for k in keys {
            if !attached.domains.is_empty() && st.areas[&k].state == AreaState::Live {
                domains::unfill_area(&st.area_ref(k), &attached.domains, true);
            }
            let a = &st.areas[&k];
            for (&(first, last), &n) in a.accesses.lock().iter() {
                tracing::warn!("IO page table dropped with access pins at iova {k:#x}");
                for _ in 0..n {
                    a.pages.unpin(first, last);
                }
            }
        }
    }
}
