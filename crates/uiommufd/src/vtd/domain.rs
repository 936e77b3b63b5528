//! [`VtdDomain`]: a second-stage page table in the VT-d format, and the
//! [`Domain`] operations on it (map, unmap, translate, dirty tracking).
//!
//! See the module documentation of `vtd` for the format, the address
//! convention and the concurrency rules.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::slab::{Slab, Table, ENTRIES};
use super::{Fault, PTE_A, PTE_ADDR_MASK, PTE_D, PTE_PS, PTE_R, PTE_SNP, PTE_W};
use crate::domain::{next_domain_id, Domain};
use crate::domain::{DirtyBitmap, DirtyRuns, DirtyTracking, HostAddr, Iova, Prot};
use crate::{bail, Error, Result};

/// 4 KiB, 2 MiB and 1 GiB: the leaf sizes of levels 1, 2 and 3.
pub const VTD_PGSIZES: u64 = (1 << 12) | (1 << 21) | (1 << 30);

/// Bits of IOVA below the index of `level` (level 1: 12).
#[inline]
fn shift(level: u32) -> u32 {
    12 + 9 * (level - 1)
}

/// The index of `iova` in a table of `level`.
#[inline]
fn index(iova: u64, level: u32) -> usize {
    ((iova >> shift(level)) as usize) & (ENTRIES - 1)
}

/// Whether entry `v` (non-zero) of a table of `level` is a leaf.
#[inline]
fn is_leaf(level: u32, v: u64) -> bool {
    level == 1 || v & PTE_PS != 0
}

/// The table a non-leaf entry points to.
///
/// # Safety
/// `v` is a non-zero, non-leaf entry of a table of the domain that owns
/// the returned lifetime: those entries only ever hold addresses of that
/// domain's slab tables, which live as long as the domain.
#[inline]
unsafe fn child<'a>(v: u64) -> &'a Table {
    // SAFETY: the caller's contract.
    unsafe { &*((v & PTE_ADDR_MASK) as usize as *const Table) }
}

/// The non-leaf entry that points to `t`.
#[inline]
fn table_entry(t: &Table) -> u64 {
    (t as *const Table as u64) | PTE_R | PTE_W
}

/// Where a map stopped: everything before this IOVA was mapped by it.
enum Stop {
    /// Something is already mapped here (`EEXIST`).
    Exists(u64),
    /// No memory for a table here.
    NoMem(u64, Error),
}

/// A leaf found by a walk.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaf<'a> {
    /// The entry.
    pub entry: &'a AtomicU64,
    /// Its value when read.
    pub value: u64,
    /// Its level (1: 4 KiB, 2: 2 MiB, 3: 1 GiB).
    pub level: u32,
}

impl Leaf<'_> {
    /// Bytes the leaf maps.
    #[inline]
    pub fn size(&self) -> u64 {
        1 << shift(self.level)
    }
}

/// The dirty 4 KiB leaves of one leaf table whose first entry maps
/// `tbase`, into `rec`: bit `i` of `mask` is entry `i`. Straight into the
/// bitmap where it has a bit per 4 KiB page; as runs otherwise.
#[inline]
fn record_leaf_table(rec: &mut DirtyRuns<'_, '_>, tbase: u64, mask: &[u64; 8]) {
    let Some(bm) = rec.bitmap() else {
        return;
    };
    // the table's used span, in whole words of the mask
    let Some(w0) = mask.iter().position(|&m| m != 0) else {
        return;
    };
    let w1 = mask.iter().rposition(|&m| m != 0).unwrap_or(w0);
    if bm.record_pages_4k(tbase + ((w0 as u64) << 18), &mask[w0..=w1]) {
        return;
    }
    for (w, &m0) in mask.iter().enumerate().take(w1 + 1).skip(w0) {
        let mut m = m0;
        while m != 0 {
            let start = m.trailing_zeros();
            let run = (!(m >> start)).trailing_zeros().min(64 - start);
            m &= !(u64::MAX >> (64 - run) << start);
            let es = tbase + ((w as u64 * 64 + u64::from(start)) << 12);
            rec.push(es, es + (u64::from(run) << 12) - 1);
        }
    }
}

/// Ask for the cache line of `p` ahead of its use (a hint: no effect on
/// what the program computes; nothing on other architectures).
#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no state the program
    // sees; `p` is a live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (p as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A VT-d second-stage paging domain (the software IOMMU's page table).
#[derive(Debug)]
pub struct VtdDomain {
    id: u64,
    /// 3, 4 or 5.
    levels: u32,
    /// 39, 48 or 57.
    addr_width: u32,
    /// Address of the root table (a table of `slab`).
    root: usize,
    slab: Slab,
    /// Bumped after every unmap that cleared an entry: translations cached
    /// under an older value are stale (see `Iotlb`).
    pub(super) gen: AtomicU64,
    /// Held (shared) by every DMA copy through an [`super::Iotlb`] from its
    /// translation to its last byte; `unmap` takes it exclusively once the
    /// entries are gone, so it returns only after every DMA that may still
    /// have used them has finished — the drain of an IOTLB invalidation.
    /// After that the program may reuse the memory without a late device
    /// write landing in it.
    pub(super) dma: parking_lot::RwLock<()>,
    /// Allocated with dirty tracking (`IOMMU_HWPT_ALLOC_DIRTY_TRACKING`),
    /// and whether it is on: writes set A and D in the leaves.
    pub(super) tracking: DirtyTracking,
    pgsize_bitmap: u64,
}

impl VtdDomain {
    /// A new, empty domain translating IOVA of `addr_width` bits (39, 48
    /// or 57: 3, 4 or 5 levels); `dirty` gives it dirty tracking (off at
    /// first). `EINVAL` for another width, `ENOMEM` when the root table
    /// cannot be allocated.
    pub fn new(addr_width: u32, dirty: bool) -> Result<Arc<VtdDomain>> {
        let levels = match addr_width {
            39 => 3,
            48 => 4,
            57 => 5,
            w => bail!(
                EINVAL,
                "VT-d address width {w} is not one of 39, 48, 57 (AGAW of 3, 4, 5 levels)"
            ),
        };
        let slab = Slab::default();
        let root = slab.alloc()? as *const Table as usize;
        Ok(Arc::new(VtdDomain {
            id: next_domain_id(),
            levels,
            addr_width,
            root,
            slab,
            gen: AtomicU64::new(0),
            dma: parking_lot::RwLock::new(()),
            tracking: DirtyTracking::new(dirty),
            pgsize_bitmap: VTD_PGSIZES,
        }))
    }

    /// A domain with at most `max_pgsize` leaves (4 KiB only, or up to 2 MiB).
    pub fn with_max_page(addr_width: u32, dirty: bool, max_pgsize: u64) -> Result<Arc<VtdDomain>> {
        if max_pgsize < 1 << 12 {
            bail!(
                EINVAL,
                "VT-d maximum page size {max_pgsize:#x} is below 4 KiB"
            );
        }
        let mut d = Self::new(addr_width, dirty)?;
        let m = Arc::get_mut(&mut d).expect("fresh domain");
        m.pgsize_bitmap = VTD_PGSIZES & (max_pgsize | (max_pgsize - 1));
        Ok(d)
    }

    /// Levels of the table (3, 4 or 5).
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// The IOVA width (39, 48 or 57 bits).
    pub fn addr_width(&self) -> u32 {
        self.addr_width
    }

    /// Whether dirty tracking is on.
    pub fn dirty_tracking_enabled(&self) -> bool {
        self.tracking.enabled()
    }

    /// Bytes of memory mapped for page tables so far.
    pub fn table_bytes(&self) -> u64 {
        self.slab.mapped_bytes()
    }

    /// The last IOVA translated.
    #[inline]
    fn last_iova(&self) -> u64 {
        (1u64 << self.addr_width) - 1
    }

    #[inline]
    fn root(&self) -> &Table {
        // SAFETY: `root` is a table of our slab, alive as long as `self`.
        unsafe { &*(self.root as *const Table) }
    }

    /// May `level` hold a leaf of its size for this map?
    #[inline]
    fn large_ok(&self, level: u32, max_pgsize: u64) -> bool {
        let size = 1u64 << shift(level);
        (level == 2 || level == 3) && size <= max_pgsize && self.pgsize_bitmap & size != 0
    }

    /// Map `[iova, last]` of the table `t` at `level` to `iova + delta`.
    #[allow(clippy::too_many_arguments)]
    fn map_in(
        &self,
        t: &Table,
        level: u32,
        iova: u64,
        last: u64,
        delta: u64,
        attrs: u64,
        max_pgsize: u64,
    ) -> std::result::Result<(), Stop> {
        let (i0, i1) = (index(iova, level), index(last, level));
        if level == 1 {
            let slots = &t.e[i0..=i1];
            if slots.iter().any(|e| e.load(Ordering::Relaxed) != 0) {
                return Err(Stop::Exists(iova));
            }
            let mut v = iova.wrapping_add(delta) | attrs;
            for e in slots {
                e.store(v, Ordering::Relaxed);
                v += 1 << 12;
            }
            return Ok(());
        }
        let size = 1u64 << shift(level);
        let mut cur = iova;
        for e in &t.e[i0..=i1] {
            let ent_last = (cur & !(size - 1)) + (size - 1);
            let sub_last = ent_last.min(last);
            let mut v = e.load(Ordering::Acquire);
            let host = cur.wrapping_add(delta);
            if v == 0
                && cur & (size - 1) == 0
                && sub_last == ent_last
                && host & (size - 1) == 0
                && self.large_ok(level, max_pgsize)
            {
                match e.compare_exchange(
                    0,
                    host | attrs | PTE_PS,
                    Ordering::Release,
                    Ordering::Acquire,
                ) {
                    Ok(_) => v = u64::MAX, // done
                    Err(actual) => v = actual,
                }
            }
            if v != u64::MAX {
                if v == 0 {
                    let nt = self.slab.alloc().map_err(|e| Stop::NoMem(cur, e))?;
                    let nv = table_entry(nt);
                    match e.compare_exchange(0, nv, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => v = nv,
                        Err(actual) => {
                            self.slab.free_unpublished(nt);
                            v = actual;
                        }
                    }
                }
                if is_leaf(level, v) {
                    return Err(Stop::Exists(cur));
                }
                // SAFETY: a non-leaf entry of our table.
                let c = unsafe { child(v) };
                self.map_in(c, level - 1, cur, sub_last, delta, attrs, max_pgsize)?;
            }
            if sub_last == last {
                break;
            }
            cur = sub_last + 1;
        }
        Ok(())
    }

    /// Replace the large leaf `v` in `e` (a table of `level`) by a table of
    /// leaves one level down mapping the same, with the same bits. `None`
    /// when no table can be had.
    fn split(&self, e: &AtomicU64, level: u32, mut v: u64) -> Option<u64> {
        let nt = self.slab.alloc().ok()?;
        let csize = 1u64 << shift(level - 1);
        loop {
            let base = v & PTE_ADDR_MASK;
            let mut bits = v & !PTE_ADDR_MASK & !PTE_PS;
            if level - 1 > 1 {
                bits |= PTE_PS;
            }
            for (k, ce) in nt.e.iter().enumerate() {
                ce.store((base + k as u64 * csize) | bits, Ordering::Relaxed);
            }
            let s = Slab::summary(nt);
            s.store(if v & PTE_D != 0 { u64::MAX } else { 0 }, Ordering::Relaxed);
            let nv = table_entry(nt);
            match e.compare_exchange(v, nv, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(nv),
                // a device set D meanwhile: copy again
                Err(actual) if actual != 0 && is_leaf(level, actual) => v = actual,
                Err(_) => {
                    for ce in &nt.e {
                        ce.store(0, Ordering::Relaxed);
                    }
                    s.store(0, Ordering::Relaxed);
                    self.slab.free_unpublished(nt);
                    return None;
                }
            }
        }
    }

    /// Unmap `[iova, last]` of the table `t` at `level`; returns the bytes
    /// cleared.
    fn unmap_in(&self, t: &Table, level: u32, iova: u64, last: u64) -> u64 {
        let (i0, i1) = (index(iova, level), index(last, level));
        if level == 1 {
            let mut n = 0;
            for e in &t.e[i0..=i1] {
                if e.load(Ordering::Relaxed) != 0 {
                    e.store(0, Ordering::Relaxed);
                    n += 1;
                }
            }
            return n << 12;
        }
        let size = 1u64 << shift(level);
        let mut cur = iova;
        let mut n = 0;
        for e in &t.e[i0..=i1] {
            let ent_first = cur & !(size - 1);
            let ent_last = ent_first + (size - 1);
            let sub_last = ent_last.min(last);
            let mut v = e.load(Ordering::Acquire);
            if v != 0 && is_leaf(level, v) {
                if cur == ent_first && sub_last == ent_last {
                    e.swap(0, Ordering::AcqRel);
                    n += size;
                    v = 0;
                } else {
                    match self.split(e, level, v) {
                        Some(nv) => v = nv,
                        None => {
                            // No memory for the smaller table: unmap the
                            // whole leaf, as the kernel's driver does.
                            tracing::warn!(
                                domain = self.id,
                                "cannot split the leaf at {ent_first:#x}: unmapping all {size:#x} bytes"
                            );
                            e.swap(0, Ordering::AcqRel);
                            n += size;
                            v = 0;
                        }
                    }
                }
            }
            if v != 0 {
                // SAFETY: a non-leaf entry of our table.
                n += self.unmap_in(unsafe { child(v) }, level - 1, cur, sub_last);
            }
            if sub_last == last {
                break;
            }
            cur = sub_last + 1;
        }
        n
    }

    /// The leaf mapping `iova`, if any.
    #[inline]
    pub(super) fn lookup(&self, iova: u64) -> Option<Leaf<'_>> {
        if iova > self.last_iova() {
            return None;
        }
        let mut t = self.root();
        let mut level = self.levels;
        loop {
            let e = &t.e[index(iova, level)];
            let v = e.load(Ordering::Acquire);
            if v == 0 {
                return None;
            }
            if is_leaf(level, v) {
                return Some(Leaf {
                    entry: e,
                    value: v,
                    level,
                });
            }
            // SAFETY: a non-leaf entry of our table.
            t = unsafe { child(v) };
            level -= 1;
        }
    }

    /// Set A and D in the leaf mapping `iova` and mark the path to it for
    /// `read_and_clear_dirty`. Returns whether a leaf was found.
    pub(super) fn set_dirty(&self, iova: u64) -> bool {
        if iova > self.last_iova() {
            return false;
        }
        let mut path: [(usize, usize); 5] = [(0, 0); 5];
        let mut depth = 0;
        let mut t = self.root();
        let mut level = self.levels;
        let e = loop {
            let i = index(iova, level);
            path[depth] = (t as *const Table as usize, i);
            depth += 1;
            let e = &t.e[i];
            let v = e.load(Ordering::Acquire);
            if v == 0 {
                return false;
            }
            if is_leaf(level, v) {
                break e;
            }
            // SAFETY: a non-leaf entry of our table.
            t = unsafe { child(v) };
            level -= 1;
        };
        let mut v = e.load(Ordering::SeqCst);
        loop {
            if v == 0 {
                return false;
            }
            if v & PTE_D != 0 {
                break;
            }
            match e.compare_exchange(v, v | PTE_D | PTE_A, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(actual) => v = actual,
            }
        }
        for &(ta, i) in path[..depth].iter().rev() {
            // SAFETY: `ta` is a table of our slab we just walked through.
            let s = Slab::summary(unsafe { &*(ta as *const Table) });
            let bit = 1u64 << (i / 8);
            if s.load(Ordering::SeqCst) & bit == 0 {
                s.fetch_or(bit, Ordering::SeqCst);
            }
        }
        true
    }

    /// Translate without a cache: the host address of `iova` and how many
    /// bytes from there (at most `len`) are contiguous in host memory and
    /// allowed, for a read or (`write`) a write. A write while dirty
    /// tracking is on marks the leaves it covers dirty.
    pub fn translate(
        &self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<(u64, u64), Fault> {
        let leaf = self.lookup(iova).ok_or(Fault::NotPresent { iova })?;
        self.check_leaf(iova, &leaf, write)?;
        let (host, n) = self.extend(iova, len, write, &leaf);
        Ok((host, n))
    }

    /// Permission check of one leaf; marks it dirty for a tracked write.
    #[inline]
    pub(super) fn check_leaf(
        &self,
        iova: u64,
        leaf: &Leaf<'_>,
        write: bool,
    ) -> std::result::Result<(), Fault> {
        let need = if write { PTE_W } else { PTE_R };
        if leaf.value & need == 0 {
            return Err(Fault::Permission { iova, write });
        }
        if write
            && leaf.value & PTE_D == 0
            && self.tracking.enabled_relaxed()
            && !self.set_dirty(iova)
        {
            return Err(Fault::NotPresent { iova });
        }
        Ok(())
    }

    /// From `iova` in `leaf`: its host address, and the contiguous allowed
    /// length up to `len`, following the next leaves of the same table
    /// while they continue the host range (marking them dirty for a
    /// tracked write).
    pub(super) fn extend(&self, iova: u64, len: u64, write: bool, leaf: &Leaf<'_>) -> (u64, u64) {
        let size = leaf.size();
        let off = iova & (size - 1);
        let host = (leaf.value & PTE_ADDR_MASK) + off;
        let mut n = size - off;
        if n >= len {
            return (host, len);
        }
        let need = if write { PTE_W } else { PTE_R };
        let tracking = write && self.tracking.enabled_relaxed();
        // The leaf's table: entries are 8 bytes, tables 4 KiB aligned.
        let here = leaf.entry as *const AtomicU64 as usize;
        let table_end = (here & !4095) + 4096;
        let mut next = here + 8;
        let mut want = (leaf.value & PTE_ADDR_MASK) + size;
        while n < len && next < table_end {
            // SAFETY: `next` is an entry of the same live table as `leaf`.
            let e = unsafe { &*(next as *const AtomicU64) };
            let v = e.load(Ordering::Acquire);
            if v == 0 || v & need == 0 || !is_leaf(leaf.level, v) || v & PTE_ADDR_MASK != want {
                break;
            }
            if tracking && v & PTE_D == 0 && !self.set_dirty(iova.wrapping_add(n)) {
                break;
            }
            n += size;
            want += size;
            next += 8;
        }
        (host, n.min(len))
    }

    /// Visit the dirty leaves of `[iova, last]` in table `t` at `level`;
    /// `full` when the range covers the whole table.
    #[allow(clippy::too_many_arguments)]
    fn dirty_in(
        &self,
        t: &Table,
        level: u32,
        iova: u64,
        last: u64,
        full: bool,
        clear: bool,
        rec: &mut DirtyRuns<'_, '_>,
    ) {
        let s = Slab::summary(t);
        let (i0, i1) = (index(iova, level), index(last, level));
        let (g0, g1) = (i0 / 8, i1 / 8);
        let span = if g1 - g0 == 63 {
            u64::MAX
        } else {
            ((1u64 << (g1 - g0 + 1)) - 1) << g0
        };
        // The entries are read with sequentially consistent loads after the
        // summary is cleared (plain loads on x86): a writer sets D and then
        // reads the summary, both SeqCst, so either we see its D or it sees
        // the cleared summary and sets it again.
        let mut groups = if clear && full {
            s.swap(0, Ordering::SeqCst)
        } else {
            let b = s.load(Ordering::SeqCst) & span;
            if clear {
                // The groups wholly inside the range are cleared (before
                // their entries are read); the others stay marked.
                let lo = if i0 % 8 == 0 { g0 } else { g0 + 1 };
                let hi = if i1 % 8 == 7 { g1 + 1 } else { g1 };
                let whole = (lo..hi).fold(0u64, |m, g| m | 1 << g);
                if b & whole != 0 {
                    s.fetch_and(!(b & whole), Ordering::SeqCst);
                }
            }
            b
        };
        let size = 1u64 << shift(level);
        let tbase = iova & !((size << 9) - 1);
        if level == 1 {
            // Leaf tables: one group (one cache line) at a time, dirty
            // entries as a mask, runs recorded whole. The lines of every
            // marked group are requested first, so that their misses
            // overlap instead of queueing one after the other.
            // (A dense table streams: the hardware prefetcher does better.)
            if groups.count_ones() <= 16 {
                let mut g = groups;
                while g != 0 {
                    prefetch(&t.e[g.trailing_zeros() as usize * 8]);
                    g &= g - 1;
                }
            }
            let mut dirty = [0u64; 8];
            while groups != 0 {
                let g = groups.trailing_zeros() as usize;
                groups &= groups - 1;
                let first = (g * 8).max(i0);
                let lastx = (g * 8 + 7).min(i1);
                let mut mask = 0u64;
                for (k, e) in t.e[first..=lastx].iter().enumerate() {
                    let v = e.load(Ordering::SeqCst);
                    if v & PTE_D != 0 {
                        mask |= 1 << k;
                        if clear {
                            // Devices only CAS D into an entry without it,
                            // so nobody else writes this entry now.
                            e.store(v & !PTE_D, Ordering::Relaxed);
                        }
                    }
                }
                // a group never straddles a 64-entry word
                dirty[first / 64] |= mask << (first % 64);
            }
            record_leaf_table(rec, tbase, &dirty);
            return;
        }
        while groups != 0 {
            let g = groups.trailing_zeros() as usize;
            groups &= groups - 1;
            let first = (g * 8).max(i0);
            let lastx = (g * 8 + 7).min(i1);
            for i in first..=lastx {
                let e = &t.e[i];
                let v = e.load(Ordering::SeqCst);
                if v == 0 {
                    continue;
                }
                let es = tbase + i as u64 * size;
                let el = es + (size - 1);
                if is_leaf(level, v) {
                    if v & PTE_D != 0 {
                        if clear {
                            // Devices only ever CAS D into an entry
                            // without it, so nobody else writes this
                            // entry now.
                            e.store(v & !PTE_D, Ordering::Relaxed);
                        }
                        rec.push(es.max(iova), el.min(last));
                    }
                } else {
                    let (cs, cl) = (es.max(iova), el.min(last));
                    // SAFETY: a non-leaf entry of our table.
                    let c = unsafe { child(v) };
                    if level == 2 {
                        self.prefetch_ahead(t, i);
                    }
                    self.dirty_in(c, level - 1, cs, cl, cs == es && cl == el, clear, rec);
                }
            }
        }
    }

    /// While leaf table `i` of level-2 table `t` is read for dirty bits,
    /// ask for what a later one will need: the summary of the table
    /// [`AHEAD`]` * 2` on, and the marked lines of the one [`AHEAD`] on
    /// (when they are few: a dense table streams by itself). Tables far
    /// apart in memory defeat the hardware prefetcher, and at tens of GiB
    /// the tables are not in cache: without this a sparse read waits for
    /// memory once per marked line. Hints only: a summary read here may
    /// change before its table is visited, which reads it for real.
    #[inline]
    fn prefetch_ahead(&self, t: &Table, i: usize) {
        const AHEAD: usize = 4;
        if let Some(n) = t.e.get(i + 2 * AHEAD) {
            let nv = n.load(Ordering::Relaxed);
            if nv != 0 && !is_leaf(2, nv) {
                // SAFETY: a non-leaf entry of our table.
                prefetch(Slab::summary(unsafe { child(nv) }));
            }
        }
        if let Some(n) = t.e.get(i + AHEAD) {
            let nv = n.load(Ordering::Relaxed);
            if nv != 0 && !is_leaf(2, nv) {
                // SAFETY: a non-leaf entry of our table.
                let c = unsafe { child(nv) };
                let g = Slab::summary(c).load(Ordering::Relaxed);
                if g.count_ones() <= 16 {
                    let mut g = g;
                    while g != 0 {
                        prefetch(&c.e[g.trailing_zeros() as usize * 8]);
                        g &= g - 1;
                    }
                }
            }
        }
    }

    /// Mark every mapped leaf of `[iova, iova + len)` dirty, as device
    /// writes there would (whatever the tracking state). Returns the
    /// number of leaves marked.
    pub fn mark_dirty(&self, iova: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let last = iova.saturating_add(len - 1).min(self.last_iova());
        let mut cur = iova;
        let mut n = 0;
        while cur <= last {
            let step = match self.lookup(cur) {
                Some(l) => {
                    if self.set_dirty(cur) {
                        n += 1;
                    }
                    l.size() - (cur & (l.size() - 1))
                }
                None => 1 << 12,
            };
            match cur.checked_add(step) {
                Some(c) => cur = c & !((1 << 12) - 1),
                None => break,
            }
        }
        n
    }

    /// The mappings as maximal runs `(iova, host address, length)` where
    /// both IOVA and host address advance together, in IOVA order (the
    /// form of the mock's `runs`, so that tests compare either driver's
    /// tables with one model). Walks every table: for tests and debugging.
    pub fn runs(&self) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        self.runs_in(self.root(), self.levels, 0, &mut out);
        out
    }

    fn runs_in(&self, t: &Table, level: u32, base: u64, out: &mut Vec<(u64, u64, u64)>) {
        let size = 1u64 << shift(level);
        for (i, e) in t.e.iter().enumerate() {
            let v = e.load(Ordering::Acquire);
            if v == 0 {
                continue;
            }
            let iova = base + i as u64 * size;
            if is_leaf(level, v) {
                let addr = v & PTE_ADDR_MASK;
                match out.last_mut() {
                    Some(r) if r.0 + r.2 == iova && r.1.wrapping_add(r.2) == addr => r.2 += size,
                    _ => out.push((iova, addr, size)),
                }
            } else {
                // SAFETY: a non-leaf entry of our table.
                self.runs_in(unsafe { child(v) }, level - 1, iova, out);
            }
        }
    }

    /// Whether nothing is mapped (no leaf in any table).
    pub fn is_empty(&self) -> bool {
        self.runs().is_empty()
    }

    /// The leaf mapping `iova` as `(host address of the leaf's first
    /// byte, leaf size, R, W, D)`, for tests and debugging.
    pub fn leaf(&self, iova: u64) -> Option<(u64, u64, bool, bool, bool)> {
        self.lookup(iova).map(|l| {
            (
                l.value & PTE_ADDR_MASK,
                l.size(),
                l.value & PTE_R != 0,
                l.value & PTE_W != 0,
                l.value & PTE_D != 0,
            )
        })
    }
}

impl Domain for VtdDomain {
    fn id(&self) -> u64 {
        self.id
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    fn aperture(&self) -> (u64, u64) {
        (0, self.last_iova())
    }

    fn map(
        &self,
        Iova(iova): Iova,
        HostAddr(addr): HostAddr,
        len: u64,
        prot: Prot,
        max_pgsize: u64,
    ) -> Result<()> {
        const PG: u64 = 1 << 12;
        if len == 0
            || !iova.is_multiple_of(PG)
            || !addr.is_multiple_of(PG)
            || !len.is_multiple_of(PG)
        {
            bail!(
                EINVAL,
                "VT-d domain {}: map iova {iova:#x} addr {addr:#x} length {len:#x} is not a non-empty multiple of \
                 4 KiB",
                self.id
            );
        }
        let last = match iova.checked_add(len - 1) {
            Some(l) if l <= self.last_iova() => l,
            _ => bail!(
                EINVAL,
                "VT-d domain {}: map [{iova:#x}, +{len:#x}) leaves the {}-bit aperture",
                self.id,
                self.addr_width
            ),
        };
        if addr.checked_add(len - 1).is_none_or(|l| l > PTE_ADDR_MASK) {
            bail!(
                EINVAL,
                "VT-d domain {}: host range [{addr:#x}, +{len:#x}) does not fit the 52-bit address field",
                self.id
            );
        }
        if !prot.read && !prot.write {
            bail!(
                EINVAL,
                "VT-d domain {}: a mapping must allow reads or writes",
                self.id
            );
        }
        let mut attrs = PTE_SNP;
        if prot.read {
            attrs |= PTE_R;
        }
        if prot.write {
            attrs |= PTE_W;
        }
        let delta = addr.wrapping_sub(iova);
        match self.map_in(
            self.root(),
            self.levels,
            iova,
            last,
            delta,
            attrs,
            max_pgsize,
        ) {
            Ok(()) => Ok(()),
            Err(stop) => {
                let (at, e) = match stop {
                    Stop::Exists(at) => (
                        at,
                        crate::err!(
                            EEXIST,
                            "VT-d domain {}: iova {at:#x} is already mapped",
                            self.id
                        ),
                    ),
                    Stop::NoMem(at, e) => (at, e),
                };
                if at > iova {
                    self.unmap(iova, at - iova);
                }
                Err(e)
            }
        }
    }

    fn unmap(&self, iova: u64, len: u64) -> u64 {
        if len == 0 || iova > self.last_iova() {
            return 0;
        }
        let last = iova.saturating_add(len - 1).min(self.last_iova());
        let n = self.unmap_in(self.root(), self.levels, iova, last);
        // Every translation cached before this point is stale.
        self.gen.fetch_add(1, Ordering::SeqCst);
        // Drain: wait for DMA copies that translated before the entries
        // went (new ones see the new generation and the cleared entries).
        drop(self.dma.write());
        n
    }

    fn translate(
        &self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<(u64, u64), Fault> {
        VtdDomain::translate(self, iova, len, write)
    }

    /// Under the DMA drain lock from translation to the last byte, as an
    /// [`super::Iotlb`]'s copies: an unmap of the IOVA waits for it.
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), Fault> {
        super::iotlb::copy_by_iova(self, iova, buf.as_mut_ptr(), buf.len(), false, |a, n, w| {
            VtdDomain::translate(self, a, n, w)
        })
    }

    /// As [`Domain::dma_read`] (a write while tracking marks the leaves dirty).
    ///
    /// The translation sets D before the bytes land, as hardware does; a
    /// dirty-bitmap read between the two would clear D and copy the page
    /// before the write reached it, and with no later write the page would
    /// never be reported again. So once the copy is done the leaves are
    /// marked again: a read that raced it reports them next time.
    fn dma_write(&self, iova: u64, buf: &[u8]) -> std::result::Result<(), Fault> {
        let r = super::iotlb::copy_by_iova(
            self,
            iova,
            buf.as_ptr().cast_mut(),
            buf.len(),
            true,
            |a, n, w| VtdDomain::translate(self, a, n, w),
        );
        if !buf.is_empty() && self.tracking.enabled() {
            self.mark_dirty(iova, buf.len() as u64);
        }
        r
    }

    /// Under the DMA drain lock, re-marked dirty afterwards (as
    /// [`Domain::dma_write`]).
    fn dma_atomic(
        &self,
        iova: u64,
        op: crate::domain::AtomicOp,
    ) -> std::result::Result<u64, Fault> {
        let r = {
            let _dma = self.dma.read();
            let (host, _) = VtdDomain::translate(self, iova, 8, true)?;
            crate::domain::atomic_at(iova, host, op)
        };
        if self.tracking.enabled() {
            self.mark_dirty(iova, 8);
        }
        r
    }

    fn iova_to_phys(&self, Iova(iova): Iova) -> Option<HostAddr> {
        self.lookup(iova)
            .map(|l| HostAddr((l.value & PTE_ADDR_MASK) + (iova & (l.size() - 1))))
    }

    fn dirty_tracking_supported(&self) -> bool {
        self.tracking.supported()
    }

    fn set_dirty_tracking(&self, enable: bool) -> Result<()> {
        self.tracking
            .set(enable, format_args!("VT-d domain {}", self.id))
    }

    fn read_and_clear_dirty(
        &self,
        iova: u64,
        len: u64,
        clear: bool,
        bitmap: Option<&mut DirtyBitmap<'_>>,
    ) -> Result<()> {
        if bitmap.is_some() {
            self.tracking
                .check_enabled("read dirty", format_args!("VT-d domain {}", self.id))?;
        }
        if len == 0 || iova > self.last_iova() {
            return Ok(());
        }
        let last = iova.saturating_add(len - 1).min(self.last_iova());
        let full = iova == 0 && last == self.last_iova();
        let mut rec = DirtyRuns::new(bitmap);
        self.dirty_in(self.root(), self.levels, iova, last, full, clear, &mut rec);
        rec.finish();
        Ok(())
    }

    fn redirty(&self, iova: u64, len: u64) -> Result<()> {
        self.mark_dirty(iova, len);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
