//! The selftest's mock IOMMU domain (the kernel's `mock_iommu_domain` in
//! selftest.c): a software page table that records, for every
//! `MOCK_IO_PAGE_SIZE` granule of IOVA, the host address it translates to.
//!
//! The mock supports the page sizes `MOCK_IO_PAGE_SIZE` (`PAGE_SIZE / 2`) and,
//! for a device created with the `HUGE_IOVA` flag, `MOCK_HUGE_PAGE_SIZE`
//! (512 granules). Whatever the page size, the table keeps one entry per
//! granule ([the table](#the-table) says how), tagged like the kernel's:
//! the first entry of a `map` call carries the **start** marker, the last
//! one the **last** marker, and entries written by a page larger than a
//! granule the **huge** marker. A **dirty** bit records device writes for
//! dirty tracking.
//!
//! # Dirty tracking (the kernel mock's `dirty_ops`)
//!
//! Only a domain allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`
//! ([`MockDomain::new_paging`] with `dirty`) has dirty tracking. Nothing
//! writes through the mock, so dirty bits are set by the selftest's
//! `IOMMU_TEST_OP_DIRTY` ([`MockDomain::mark_dirty_bits`]) or by
//! [`MockDomain::mark_dirty`], and only while tracking is enabled. Reading
//! reports a dirty granule as one `MOCK_IO_PAGE_SIZE` page, and a huge page
//! with any dirty granule as the whole huge page (clipped to the range
//! asked for), then clears all of its granules, as the kernel's mock does.
//!
//! # The table
//!
//! The table is cut into **blocks** of 512 granules, one
//! `MOCK_HUGE_PAGE_SIZE` each, so that a huge page is always one block.
//! A block holds its granules densely, side by side: the host address of
//! each (`[u64; 512]`), a byte of start/last markers and permissions each
//! (`[u8; 512]`), and three 512-bit masks: which granules are mapped,
//! which are dirty and which were written by a huge page (so the dirty and
//! huge markers live only in the masks; [`MockDomain::entry`] puts them
//! back into [`MockEntry::flags`]). A block is in the table only while it
//! maps a granule: the unmap of its last one takes it out, and a count of
//! mapped granules per block and per stripe keeps [`MockDomain::len`]
//! exact. Each stripe keeps the last block it emptied (at most one, its
//! masks already clear) for the next block it needs, so the common
//! map-then-unmap of a few pages neither allocates nor clears 4.8 KiB
//! (as a B-tree keeps its emptied root node); the others are freed. That
//! is ~4.8 KiB per mapped MiB of IOVA, against ~24 bytes per granule plus
//! tree nodes (>12 KiB per MiB) for one B-tree entry per granule.
//!
//! The blocks live in 64 **stripes**, each a `BTreeMap` from block index
//! to block under a read-write lock of its own; block `b` goes to stripe
//! `b % 64`, so neighbouring blocks never share a lock and maps and unmaps
//! of disjoint ranges from many threads do not wait for each other. An
//! operation locks the stripes its range touches in ascending order (one
//! stripe, without a table of guards, for a range inside one block) for
//! its whole duration. A walk over a range merges the stripes' blocks into
//! IOVA order, one step per block.
//!
//! A dirty read therefore costs one test per block with nothing dirty (its
//! dirty mask is zero), and otherwise a few word operations per block:
//! the dirty granules are found with `trailing_zeros` over the mask words
//! and pushed to [`DirtyRuns`] as runs (a wholly dirty block as one run),
//! in IOVA order so that the runs of neighbouring blocks join. Lookups
//! (translation, DMA copies, `MD_CHECK_MAP`) find a granule's block in its
//! stripe's tree and index it; a translation walks its contiguous granules
//! inside the block without further searches.
//!
//! Intervals: `last` inclusive; lengths in bytes.

use std::any::Any;
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::domain::{
    next_domain_id, split_pgsizes, DirtyBitmap, DirtyRuns, DirtyTracking, DmaFault, Domain,
    HostAddr, Iova, Prot,
};
use crate::user::page_size;
use crate::{bail, Result};

/// The selftest's `MOCK_APERTURE_START`.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// The selftest's `MOCK_APERTURE_LAST`.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;

/// `MOCK_IO_PAGE_SIZE`: the mock's smallest page, half a host page.
pub fn mock_io_page_size() -> u64 {
    page_size() / 2
}

/// `MOCK_HUGE_PAGE_SIZE`: 512 mock pages.
pub fn mock_huge_page_size() -> u64 {
    512 * mock_io_page_size()
}

/// One granule's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockEntry {
    /// Host address the granule translates to.
    pub addr: u64,
    /// `MOCK_PFN_*` markers (see the `FLAG_*` constants).
    pub flags: u8,
    /// What the mapping allows.
    pub prot: Prot,
}

impl MockEntry {
    /// First granule of a `map` call (`MOCK_PFN_START_IOVA`).
    pub const FLAG_START: u8 = 1 << 0;
    /// Last granule of a `map` call (`MOCK_PFN_LAST_IOVA`; the kernel shares
    /// one bit between start and last, we keep both).
    pub const FLAG_LAST: u8 = 1 << 1;
    /// Dirty (`MOCK_PFN_DIRTY_IOVA`): written while dirty tracking was on.
    pub const FLAG_DIRTY: u8 = 1 << 2;
    /// Written by a page larger than a granule (`MOCK_PFN_HUGE_IOVA`).
    pub const FLAG_HUGE: u8 = 1 << 3;
}

/// Granules per block: one `MOCK_HUGE_PAGE_SIZE`, so that the granules of
/// a huge page always share a block (and so a stripe).
const BLOCK: u64 = 512;
/// Words in a block's granule masks.
const WORDS: usize = BLOCK as usize / 64;
/// How many stripes a table has.
const STRIPES: usize = 64;
/// Above every block index: "none".
const NO_KEY: u64 = u64::MAX;
/// The last granule index.
const LAST_GRANULE: u64 = u64::MAX / 2;
/// Blocks an unmap empties per search before it removes them.
const UNMAP_BATCH: usize = 64;

/// A set of granules of one block: bit `i % 64` of word `i / 64` is the
/// block's granule `i`.
type Mask = [u64; WORDS];

/// No granule.
const EMPTY: Mask = [0; WORDS];
/// Every granule of a block.
const FULL: Mask = [u64::MAX; WORDS];

/// `Block::meta` bits: the start and last markers (as in
/// [`MockEntry::flags`]) and the mapping's permissions. The dirty and huge
/// markers live in the block's masks only.
const META_FLAGS: u8 = MockEntry::FLAG_START | MockEntry::FLAG_LAST;
/// `Block::meta`: the device may read.
const META_READ: u8 = 1 << 4;
/// `Block::meta`: the device may write.
const META_WRITE: u8 = 1 << 5;

/// The granules `lo..=hi` of a block (`lo <= hi < BLOCK`).
fn span_mask(lo: u64, hi: u64) -> Mask {
    debug_assert!(lo <= hi && hi < BLOCK);
    let (lw, hw) = ((lo / 64) as usize, (hi / 64) as usize);
    let mut m = EMPTY;
    // only the words the span touches: one for a few granules
    m[lw..=hw].fill(u64::MAX);
    m[lw] &= u64::MAX << (lo % 64);
    m[hw] &= u64::MAX >> (63 - hi % 64);
    m
}

/// The granules of block `b` inside the granule range `first..=last`
/// (which must touch the block).
fn clip_mask(b: u64, first: u64, last: u64) -> Mask {
    let head = b * BLOCK;
    if first <= head && head + (BLOCK - 1) <= last {
        return FULL;
    }
    span_mask(first.max(head) - head, last.min(head + (BLOCK - 1)) - head)
}

/// `a & b`, word by word.
fn and(a: &Mask, b: &Mask) -> Mask {
    std::array::from_fn(|w| a[w] & b[w])
}

/// The first granule of `m`.
fn first_bit(m: &Mask) -> Option<u64> {
    m.iter()
        .position(|&w| w != 0)
        .map(|w| w as u64 * 64 + u64::from(m[w].trailing_zeros()))
}

/// One block of the table: its `BLOCK` granules side by side (parallel
/// arrays, ~4.8 KiB), and masks of which are mapped, dirty and huge.
/// A block in a table always maps at least one granule.
#[derive(Clone)]
struct Block {
    /// The mapped granules.
    present: Mask,
    /// Mapped granules written while tracking (`MockEntry::FLAG_DIRTY`).
    dirty: Mask,
    /// Mapped granules written by a huge page (`MockEntry::FLAG_HUGE`).
    huge: Mask,
    /// How many granules are mapped (the bits of `present`).
    count: u32,
    /// Each mapped granule's host address (stale where not mapped).
    addr: [u64; BLOCK as usize],
    /// Each mapped granule's `META_*` bits (stale where not mapped).
    meta: [u8; BLOCK as usize],
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("count", &self.count).finish()
    }
}

/// Whether granule `i` is in `m`.
fn has(m: &Mask, i: u64) -> bool {
    m[(i / 64) as usize] >> (i % 64) & 1 != 0
}

impl Block {
    fn new() -> Box<Block> {
        Box::new(Block {
            present: EMPTY,
            dirty: EMPTY,
            huge: EMPTY,
            count: 0,
            addr: [0; BLOCK as usize],
            meta: [0; BLOCK as usize],
        })
    }

    /// The entry of granule `i` of the block.
    #[inline]
    fn entry(&self, i: u64) -> Option<MockEntry> {
        if !has(&self.present, i) {
            return None;
        }
        let meta = self.meta[i as usize];
        let mut flags = meta & META_FLAGS;
        if has(&self.dirty, i) {
            flags |= MockEntry::FLAG_DIRTY;
        }
        if has(&self.huge, i) {
            flags |= MockEntry::FLAG_HUGE;
        }
        Some(MockEntry {
            addr: self.addr[i as usize],
            flags,
            prot: Prot {
                read: meta & META_READ != 0,
                write: meta & META_WRITE != 0,
            },
        })
    }

    /// Map the (unmapped) granules `lo..=hi`: granule `lo + k` to
    /// `addr + k * mps`, with `meta` bits, huge or not.
    fn fill(&mut self, lo: u64, hi: u64, addr: u64, mps: u64, meta: u8, huge: bool) {
        let (l, h) = (lo as usize, hi as usize);
        for (k, a) in self.addr[l..=h].iter_mut().enumerate() {
            *a = addr + k as u64 * mps;
        }
        self.meta[l..=h].fill(meta);
        let m = span_mask(lo, hi);
        for (w, &bits) in m.iter().enumerate() {
            debug_assert_eq!(self.present[w] & bits, 0);
            self.present[w] |= bits;
            if huge {
                self.huge[w] |= bits;
            }
        }
        self.count += (hi - lo + 1) as u32;
    }

    /// Unmap the granules of `m`; returns how many were mapped.
    fn clear(&mut self, m: &Mask) -> u32 {
        let mut n = 0;
        for (w, &bits) in m.iter().enumerate() {
            n += (self.present[w] & bits).count_ones();
            self.present[w] &= !bits;
            self.dirty[w] &= !bits;
            self.huge[w] &= !bits;
        }
        self.count -= n;
        n
    }

    /// Mark the mapped granules of `m` dirty; returns how many there are.
    fn mark_dirty(&mut self, m: &Mask) -> u64 {
        let mut n = 0;
        for (w, &bits) in m.iter().enumerate() {
            let hit = self.present[w] & bits;
            n += u64::from(hit.count_ones());
            self.dirty[w] |= hit;
        }
        n
    }
}

/// One stripe's blocks.
#[derive(Debug, Default)]
struct Blocks {
    /// block index (granule index / `BLOCK`) -> its granules; no block
    /// is empty (the last unmap of a granule frees its block).
    map: BTreeMap<u64, Box<Block>>,
    /// How many granules the stripe maps.
    len: u64,
    /// The block last emptied, kept (all masks zero) for the next block
    /// this stripe needs: a map and unmap of a few pages, the common
    /// pair, then neither allocates nor clears a block. At most one a
    /// stripe.
    spare: Option<Box<Block>>,
}

/// One stripe of the table, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(RwLock<Blocks>);

/// The stripe that holds block `b`: the blocks go to the stripes in turn,
/// so neighbouring blocks never share a lock.
fn stripe_of_block(b: u64) -> usize {
    (b % STRIPES as u64) as usize
}

/// The page table, striped by IOVA so that maps and unmaps of disjoint
/// ranges run concurrently: stripe `s` holds the blocks `b` with
/// `b % STRIPES == s`. An operation on a granule range locks every stripe
/// the range touches (all of them from `STRIPES` blocks on), in ascending
/// stripe order, for its whole duration, so it is as atomic as with one
/// lock.
#[derive(Debug)]
struct Table {
    stripes: Box<[Stripe]>,
}

impl Table {
    fn new() -> Table {
        Table {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }

    /// Write-lock the stripes of granules `first..=last`.
    fn write(&self, first: u64, last: u64) -> Locked<RwLockWriteGuard<'_, Blocks>> {
        Locked::new(first, last, |s| self.stripes[s].0.write())
    }

    /// Read-lock the stripes of granules `first..=last`.
    fn read(&self, first: u64, last: u64) -> Locked<RwLockReadGuard<'_, Blocks>> {
        Locked::new(first, last, |s| self.stripes[s].0.read())
    }
}

/// The guards a [`Locked`] holds.
enum Guards<G> {
    /// A range inside one block holds one stripe: the small maps, unmaps
    /// and lookups, which then neither fill nor drop a table of guards.
    One(usize, G),
    /// Indexed by stripe, `None` where the range does not touch it.
    Many(Box<[Option<G>; STRIPES]>),
}

/// Guards on the stripes of a granule range (see [`Table`]).
struct Locked<G> {
    guards: Guards<G>,
    first: u64,
    last: u64,
}

/// One stripe's blocks in a merged walk: its next block index (`NO_KEY`
/// when done), that block, and the rest.
struct Cursor<I, V> {
    key: u64,
    val: Option<V>,
    rest: I,
}

impl<'a, V, I: Iterator<Item = (&'a u64, V)>> Cursor<I, V> {
    fn new(rest: I) -> Cursor<I, V> {
        let mut c = Cursor {
            key: NO_KEY,
            val: None,
            rest,
        };
        c.advance();
        c
    }

    fn advance(&mut self) {
        (self.key, self.val) = match self.rest.next() {
            Some((&k, v)) => (k, Some(v)),
            None => (NO_KEY, None),
        };
    }
}

/// Call `visit(block index, block)` for every block the stripes'
/// iterators yield (`(stripe, blocks of that stripe in ascending order)`),
/// in IOVA order, until it returns false. In a dense range the next block
/// is the next stripe's first: one test per block, each tree read in
/// order once; elsewhere the least of the stripes' next blocks.
fn merge_walk<'a, V, I: Iterator<Item = (&'a u64, V)>>(
    stripes: impl Iterator<Item = (usize, I)>,
    mut visit: impl FnMut(u64, V) -> bool,
) {
    // stripe -> index in `cs` (u8::MAX: not walked)
    let mut pos = [u8::MAX; STRIPES];
    let mut cs: Vec<Cursor<I, V>> = Vec::new();
    for (s, it) in stripes {
        pos[s] = cs.len() as u8;
        cs.push(Cursor::new(it));
    }
    if cs.len() == 1 {
        // one stripe: already in order
        let c = &mut cs[0];
        while c.key != NO_KEY {
            let v = c.val.take().expect("a cursor below NO_KEY holds its block");
            if !visit(c.key, v) {
                return;
            }
            c.advance();
        }
        return;
    }
    let mut next_block = None;
    loop {
        // Every block before `next_block` was visited: `next_block`, when
        // some stripe holds it, is the least left.
        let hit = next_block.and_then(|b: u64| {
            let p = pos[stripe_of_block(b)];
            (p != u8::MAX && cs[p as usize].key == b).then_some(p as usize)
        });
        let at = match hit {
            Some(p) => p,
            None => match cs.iter().enumerate().min_by_key(|(_, c)| c.key) {
                Some((p, c)) if c.key != NO_KEY => p,
                _ => return,
            },
        };
        let c = &mut cs[at];
        let b = c.key;
        let v = c.val.take().expect("a cursor below NO_KEY holds its block");
        if !visit(b, v) {
            return;
        }
        c.advance();
        next_block = Some(b + 1);
    }
}

impl<G: Deref<Target = Blocks>> Locked<G> {
    fn new(first: u64, last: u64, mut lock: impl FnMut(usize) -> G) -> Locked<G> {
        debug_assert!(first <= last && last <= LAST_GRANULE);
        let (fb, lb) = (first / BLOCK, last / BLOCK);
        let guards = if fb == lb {
            let s = stripe_of_block(fb);
            Guards::One(s, lock(s))
        } else {
            let mask = if lb - fb >= STRIPES as u64 - 1 {
                u64::MAX
            } else {
                (fb..=lb).fold(0u64, |m, b| m | 1 << (b % STRIPES as u64))
            };
            let mut g: Box<[Option<G>; STRIPES]> = Box::new(std::array::from_fn(|_| None));
            // ascending stripe order: the lock order
            for (s, slot) in g.iter_mut().enumerate() {
                if mask >> s & 1 != 0 {
                    *slot = Some(lock(s));
                }
            }
            Guards::Many(g)
        };
        Locked {
            guards,
            first,
            last,
        }
    }

    /// The locked blocks, `first / BLOCK..=last / BLOCK`.
    fn block_range(&self) -> std::ops::RangeInclusive<u64> {
        self.first / BLOCK..=self.last / BLOCK
    }

    /// The stripe of block `b`, which must be in the locked range.
    fn stripe(&self, b: u64) -> &Blocks {
        debug_assert!(self.block_range().contains(&b));
        match &self.guards {
            Guards::One(s, m) => {
                debug_assert_eq!(*s, stripe_of_block(b));
                m
            }
            Guards::Many(gs) => gs[stripe_of_block(b)]
                .as_deref()
                .expect("block outside the locked range"),
        }
    }

    /// Block `b` (in the locked range), if it maps anything.
    #[inline]
    fn block(&self, b: u64) -> Option<&Block> {
        self.stripe(b).map.get(&b).map(|b| &**b)
    }

    /// The entry of granule `g` (in the locked range's blocks).
    #[inline]
    fn get(&self, g: u64) -> Option<MockEntry> {
        self.block(g / BLOCK)?.entry(g % BLOCK)
    }

    /// The held stripes, ascending.
    fn stripes(&self) -> impl Iterator<Item = (usize, &Blocks)> {
        let (one, many) = match &self.guards {
            Guards::One(s, m) => (Some((*s, &**m)), None),
            Guards::Many(gs) => (None, Some(gs.iter().enumerate())),
        };
        let many = many.into_iter().flatten();
        one.into_iter()
            .chain(many.filter_map(|(s, m)| Some((s, &**m.as_ref()?))))
    }

    /// Call `visit(block index, block)` for every block of the locked
    /// range, in IOVA order, until it returns false.
    fn walk(&self, visit: impl FnMut(u64, &Block) -> bool) {
        let r = self.block_range();
        merge_walk(
            self.stripes()
                .map(|(s, m)| (s, m.map.range(r.clone()).map(|(k, v)| (k, &**v)))),
            visit,
        );
    }

    /// The first mapped granule of the locked range, and its entry: the
    /// least of every held stripe's first.
    fn first_entry(&self) -> Option<(u64, MockEntry)> {
        let (first, last) = (self.first, self.last);
        let r = self.block_range();
        self.stripes()
            .filter_map(|(_, m)| {
                m.map.range(r.clone()).find_map(|(&b, blk)| {
                    let i = first_bit(&and(&blk.present, &clip_mask(b, first, last)))?;
                    Some((b * BLOCK + i, blk.entry(i)?))
                })
            })
            .min_by_key(|&(g, _)| g)
    }

    /// How many granules from `g0` (at most to `g_last`, in the locked
    /// range) are mapped with `allowed` and host-contiguous, and the
    /// first one's address; `None` when `g0` is not mapped, `Some((addr,
    /// 0))` when it is but without `allowed`.
    fn contiguous(&self, g0: u64, g_last: u64, allowed: u8) -> Option<(u64, u64)> {
        let mps = mock_io_page_size();
        let mut blk = self.block(g0 / BLOCK)?;
        let i0 = g0 % BLOCK;
        if !has(&blk.present, i0) {
            return None;
        }
        let addr = blk.addr[i0 as usize];
        if blk.meta[i0 as usize] & allowed != allowed {
            return Some((addr, 0));
        }
        let mut n = 1;
        while g0 + n <= g_last {
            let g = g0 + n;
            if g.is_multiple_of(BLOCK) {
                match self.block(g / BLOCK) {
                    Some(b) => blk = b,
                    None => break,
                }
            }
            let i = g % BLOCK;
            if !has(&blk.present, i)
                || blk.meta[i as usize] & allowed != allowed
                || blk.addr[i as usize] != addr.wrapping_add(n * mps)
            {
                break;
            }
            n += 1;
        }
        Some((addr, n))
    }
}

impl<G: DerefMut<Target = Blocks>> Locked<G> {
    /// The stripe of block `b` (in the locked range), to change.
    fn stripe_mut(&mut self, b: u64) -> &mut Blocks {
        debug_assert!(self.block_range().contains(&b));
        match &mut self.guards {
            Guards::One(s, m) => {
                debug_assert_eq!(*s, stripe_of_block(b));
                m
            }
            Guards::Many(gs) => gs[stripe_of_block(b)]
                .as_deref_mut()
                .expect("block outside the locked range"),
        }
    }

    /// The held stripes, ascending, to change.
    fn stripes_mut(&mut self) -> impl Iterator<Item = (usize, &mut Blocks)> {
        let (one, many) = match &mut self.guards {
            Guards::One(s, m) => (Some((*s, &mut **m)), None),
            Guards::Many(gs) => (None, Some(gs.iter_mut().enumerate())),
        };
        let many = many.into_iter().flatten();
        one.into_iter()
            .chain(many.filter_map(|(s, m)| Some((s, &mut **m.as_mut()?))))
    }

    /// Call `visit(block index, block)` for every block of the locked
    /// range, in IOVA order, until it returns false.
    fn walk_mut(&mut self, visit: impl FnMut(u64, &mut Block) -> bool) {
        let r = self.block_range();
        merge_walk(
            self.stripes_mut()
                .map(|(s, m)| (s, m.map.range_mut(r.clone()).map(|(k, v)| (k, &mut **v)))),
            visit,
        );
    }

    /// Map the `n` unmapped granules from `g` (in the locked range) to
    /// `addr` onwards, with `meta` bits, huge or not; block by block. The
    /// locked range is the map call's: its first granule gets the start
    /// marker, its last the last marker.
    fn fill(&mut self, mut g: u64, mut n: u64, mut addr: u64, meta: u8, huge: bool) {
        let mps = mock_io_page_size();
        let (first, last) = (self.first, self.last);
        while n > 0 {
            let (b, lo) = (g / BLOCK, g % BLOCK);
            let k = n.min(BLOCK - lo);
            let st = self.stripe_mut(b);
            let blk = st
                .map
                .entry(b)
                .or_insert_with(|| st.spare.take().unwrap_or_else(Block::new));
            blk.fill(lo, lo + k - 1, addr, mps, meta, huge);
            for (at, mark) in [(first, MockEntry::FLAG_START), (last, MockEntry::FLAG_LAST)] {
                if (g..g + k).contains(&at) {
                    blk.meta[(at % BLOCK) as usize] |= mark;
                }
            }
            st.len += k;
            (g, n, addr) = (g + k, n - k, addr + k * mps);
        }
    }

    /// Mark the mapped granules of `from..=to` (in the locked range)
    /// dirty; returns how many there are.
    fn mark_dirty(&mut self, from: u64, to: u64) -> u64 {
        debug_assert!(from <= to);
        let (fb, lb) = (from / BLOCK, to / BLOCK);
        if fb == lb {
            let Some(blk) = self.stripe_mut(fb).map.get_mut(&fb) else {
                return 0;
            };
            return blk.mark_dirty(&span_mask(from % BLOCK, to % BLOCK));
        }
        let mut count = 0;
        for (_, m) in self.stripes_mut() {
            for (&b, blk) in m.map.range_mut(fb..=lb) {
                count += blk.mark_dirty(&clip_mask(b, from, to));
            }
        }
        count
    }

    /// Unmap every granule of the locked range; the blocks emptied are
    /// freed, a batch of them per search.
    fn remove_all(&mut self) {
        let (first, last) = (self.first, self.last);
        let (fb, lb) = (first / BLOCK, last / BLOCK);
        for (_, st) in self.stripes_mut() {
            let mut from = fb;
            loop {
                let mut empty = [0u64; UNMAP_BATCH];
                let mut n = 0;
                let mut more = false;
                for (&b, blk) in st.map.range_mut(from..=lb) {
                    st.len -= u64::from(blk.clear(&clip_mask(b, first, last)));
                    if blk.count == 0 {
                        empty[n] = b;
                        n += 1;
                        if n == UNMAP_BATCH {
                            more = b < lb;
                            from = b + 1;
                            break;
                        }
                    }
                }
                for b in &empty[..n] {
                    let blk = st.map.remove(b);
                    if st.spare.is_none() {
                        debug_assert!(blk.as_ref().is_some_and(|b| b.present == EMPTY
                            && b.dirty == EMPTY
                            && b.huge == EMPTY));
                        st.spare = blk;
                    }
                }
                if !more {
                    break;
                }
            }
        }
    }
}

/// A mock IOMMU paging domain.
#[derive(Debug)]
pub struct MockDomain {
    id: u64,
    pgsize_bitmap: u64,
    table: Table,
    /// Map calls left before an injected failure (`NO_KEY`: never fail).
    fail_in: AtomicU64,
    /// Unmaps that did not start at a start marker or end at a last marker
    /// (the kernel's mock WARNs; counted here so tests can assert none).
    warnings: AtomicU64,
    /// Allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` (the kernel's
    /// `dirty_ops` are set), and whether tracking is on (`MOCK_DIRTY_TRACK`).
    tracking: DirtyTracking,
    /// The IOVA range translated (`start..=last`): the selftest's
    /// `MOCK_APERTURE_*` unless made by [`MockDomain::with_aperture`].
    aperture: (u64, u64),
}

impl MockDomain {
    /// A new, empty mock domain (`mock_domain_alloc_paging`); `huge_iova`
    /// adds `MOCK_HUGE_PAGE_SIZE` to the page sizes.
    pub fn new(huge_iova: bool) -> Arc<MockDomain> {
        Self::new_paging(huge_iova, false)
    }

    /// A new, empty mock domain; `dirty` gives it dirty tracking (the
    /// kernel's `mock_domain_alloc_user` with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`),
    /// initially off.
    pub fn new_paging(huge_iova: bool, dirty: bool) -> Arc<MockDomain> {
        Self::with_aperture(huge_iova, dirty, MOCK_APERTURE_START, MOCK_APERTURE_LAST)
    }

    /// A mock domain translating `start..=last` instead of the selftest's
    /// aperture: for Rust users (benchmarks, emulators) that want the mock's
    /// page table over a larger IOVA space. The selftest ABI never makes one.
    pub fn with_aperture(huge_iova: bool, dirty: bool, start: u64, last: u64) -> Arc<MockDomain> {
        let mut bitmap = mock_io_page_size();
        if huge_iova {
            bitmap |= mock_huge_page_size();
        }
        debug_assert_eq!(mock_huge_page_size() / mock_io_page_size(), BLOCK);
        Arc::new(MockDomain {
            id: next_domain_id(),
            pgsize_bitmap: bitmap,
            table: Table::new(),
            fail_in: AtomicU64::new(NO_KEY),
            warnings: AtomicU64::new(0),
            tracking: DirtyTracking::new(dirty),
            aperture: (start, last),
        })
    }

    /// Whether dirty tracking is on (`MOCK_DIRTY_TRACK`).
    pub fn dirty_tracking_enabled(&self) -> bool {
        self.tracking.enabled()
    }

    fn check_tracking(&self, what: &str) -> Result<()> {
        self.tracking
            .check_enabled(what, format_args!("mock domain {}", self.id))
    }

    /// The core of `IOMMU_TEST_OP_DIRTY`: for every set bit `i < nbits` of
    /// `bits` (bit `i` is bit `i % 64` of word `i / 64`), mark dirty the
    /// granule holding `iova + i * page_size` if it is mapped. Returns how
    /// many bits hit a mapped granule (`out_nr_dirty`).
    ///
    /// `EINVAL` unless tracking is on. The kernel looks the granule up at
    /// index `(iova + i * page_size) / page_size`, which is the same for the
    /// `page_size == MOCK_IO_PAGE_SIZE` the selftest uses; we index by
    /// `MOCK_IO_PAGE_SIZE` for every page size.
    pub fn mark_dirty_bits(
        &self,
        iova: u64,
        page_size: u64,
        bits: &[u64],
        nbits: u64,
    ) -> Result<u64> {
        self.check_tracking("IOMMU_TEST_OP_DIRTY")?;
        let mps = mock_io_page_size();
        // the addresses may wrap: lock the whole table (a test-only call)
        let mut t = self.table.write(0, LAST_GRANULE);
        let mut count = 0;
        for (wi, &word) in bits.iter().enumerate() {
            let mut w = word;
            while w != 0 {
                let i = wi as u64 * 64 + u64::from(w.trailing_zeros());
                if i >= nbits {
                    return Ok(count);
                }
                let g = iova.wrapping_add(i.wrapping_mul(page_size)) / mps;
                count += t.mark_dirty(g, g);
                w &= w - 1;
            }
        }
        Ok(count)
    }

    /// Mark every mapped granule of `[iova, iova + len)` dirty, as a device
    /// writing there would; returns how many granules were marked. `EINVAL`
    /// unless tracking is on.
    pub fn mark_dirty(&self, iova: u64, len: u64) -> Result<u64> {
        self.check_tracking("mark_dirty")?;
        if len == 0 {
            return Ok(0);
        }
        let mps = mock_io_page_size();
        let last = iova.saturating_add(len - 1);
        let (first, last) = (iova / mps, last / mps);
        Ok(self.table.write(first, last).mark_dirty(first, last))
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of mapped granules.
    pub fn len(&self) -> u64 {
        let t = self.table.read(0, LAST_GRANULE);
        t.stripes().map(|(_, m)| m.len).sum()
    }

    /// The entry of the granule holding `iova`.
    pub fn entry(&self, iova: u64) -> Option<MockEntry> {
        let g = iova / mock_io_page_size();
        self.table.read(g, g).get(g)
    }

    /// The mappings as maximal runs `(iova, addr, length)` where both IOVA and
    /// host address advance together, in IOVA order.
    pub fn runs(&self) -> Vec<(u64, u64, u64)> {
        let mps = mock_io_page_size();
        let t = self.table.read(0, LAST_GRANULE);
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        t.walk(|b, blk| {
            for (w, &word) in blk.present.iter().enumerate() {
                let mut x = word;
                while x != 0 {
                    let i = w as u64 * 64 + u64::from(x.trailing_zeros());
                    x &= x - 1;
                    let (iova, addr) = ((b * BLOCK + i) * mps, blk.addr[i as usize]);
                    match out.last_mut() {
                        Some(r) if r.0 + r.2 == iova && r.1.wrapping_add(r.2) == addr => r.2 += mps,
                        _ => out.push((iova, addr, mps)),
                    }
                }
            }
            true
        });
        out
    }

    /// How many unmaps broke the start/last marker rule (see the type).
    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    /// Make the map call after the next `calls` ones fail with `ENOENT`
    /// (the kernel mock's fault-injection point); `None` disarms.
    pub fn fail_map_after(&self, calls: Option<u64>) {
        // u64::MAX calls is "never" either way
        self.fail_in
            .store(calls.unwrap_or(NO_KEY), Ordering::Release);
    }

    /// Count one map call against [`MockDomain::fail_map_after`]: whether
    /// this call is the one to fail.
    fn injected_map_failure(&self) -> bool {
        if self.fail_in.load(Ordering::Acquire) == NO_KEY {
            return false; // disarmed: no write to the shared line
        }
        let prev = self
            .fail_in
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match n {
                NO_KEY => None,
                0 => Some(NO_KEY),
                n => Some(n - 1),
            });
        prev == Ok(0)
    }

    /// `IOMMU_TEST_OP_MD_CHECK_MAP`: every granule of `[iova, iova + length)`
    /// must translate to the matching granule of `[uptr, uptr + length)`.
    ///
    /// `EINVAL` when `iova`, `length` or `uptr` is not a multiple of
    /// `MOCK_IO_PAGE_SIZE`, when `uptr + length` overflows, or when a granule
    /// is unmapped or maps elsewhere. We compare host addresses (the entry
    /// is the host address itself), so `uptr` is never dereferenced; two
    /// addresses that are shared mappings of the same file byte count as
    /// the same (a file area maps the engine's own view of the file).
    pub fn check_map(&self, iova: u64, length: u64, uptr: u64) -> Result<()> {
        let mps = mock_io_page_size();
        if !iova.is_multiple_of(mps) || !length.is_multiple_of(mps) || !uptr.is_multiple_of(mps) {
            bail!(
                EINVAL,
                "MD_CHECK_MAP: iova {iova:#x}, length {length:#x} and uptr {uptr:#x} must be multiples of the mock \
                 page size {mps:#x}"
            );
        }
        if uptr.checked_add(length).is_none() {
            bail!(
                EINVAL,
                "MD_CHECK_MAP: uptr {uptr:#x} + length {length:#x} overflows"
            );
        }
        if length == 0 {
            return Ok(());
        }
        // an IOVA range that wraps locks the whole table
        let (first, last) = match iova.checked_add(length - 1) {
            Some(l) => (iova / mps, l / mps),
            None => (0, LAST_GRANULE),
        };
        let t = self.table.read(first, last);
        // read once, and only when an entry is not the user address itself:
        // an `IOAS_MAP_FILE` area maps the engine's own view of the file,
        // the same pages as the program's (the kernel compares pfns)
        let mut files: Option<crate::user::FileMaps> = None;
        let mut off = 0;
        while off < length {
            let (cur, want) = (iova.wrapping_add(off), uptr + off);
            match t.get(cur / mps) {
                None => bail!(
                    EINVAL,
                    "MD_CHECK_MAP: iova {cur:#x} is not mapped (expected user address {want:#x})"
                ),
                Some(e)
                    if e.addr != want
                        && !files
                            .get_or_insert_with(crate::user::FileMaps::snapshot)
                            .same_file_byte(e.addr, want) =>
                {
                    bail!(
                        EINVAL,
                        "MD_CHECK_MAP: iova {cur:#x} maps {:#x}, expected user address {want:#x}",
                        e.addr
                    )
                }
                Some(_) => {}
            }
            off += mps;
        }
        Ok(())
    }
}

/// Copy between `local` (`len` bytes, the caller's) and the IOVA of the
/// granules locked in `t`, one granule at a time, stopping at the first
/// fault. Returns the result and the last granule reached (for dirty
/// marking). A DMA write reads `local`, a read writes it.
fn copy_locked<G: Deref<Target = Blocks>>(
    t: &Locked<G>,
    iova: u64,
    local: *mut u8,
    len: u64,
    write: bool,
) -> (std::result::Result<(), DmaFault>, Option<u64>) {
    use crate::user::{SelfMemory, UserMemory};
    let mps = mock_io_page_size();
    let mut off = 0u64;
    let mut reached = None;
    while off < len {
        let at = iova + off;
        let g = at / mps;
        let Some(e) = t.get(g) else {
            return (Err(DmaFault::NotPresent { iova: at }), reached);
        };
        if !(if write { e.prot.write } else { e.prot.read }) {
            return (Err(DmaFault::Permission { iova: at, write }), reached);
        }
        let n = (mps - at % mps).min(len - off);
        let host = e.addr + at % mps;
        // SAFETY: `local + off .. + n` lies inside the caller's buffer
        // (`off + n <= len`); it is only read for a DMA write.
        let r = unsafe {
            let p = local.add(off as usize);
            if write {
                SelfMemory.write(host, std::slice::from_raw_parts(p, n as usize))
            } else {
                SelfMemory.read(host, std::slice::from_raw_parts_mut(p, n as usize))
            }
        };
        reached = Some(g);
        if r.is_err() {
            return (Err(DmaFault::Host { iova: at }), reached);
        }
        off += n;
    }
    (Ok(()), reached)
}

impl MockDomain {
    /// A device's DMA under the table locks of the range (read locks, or
    /// write locks for a tracked write, which marks what it reached
    /// dirty): an unmap of that IOVA waits for the copy to finish.
    fn dma_copy(
        &self,
        iova: u64,
        local: *mut u8,
        len: usize,
        write: bool,
    ) -> std::result::Result<(), DmaFault> {
        let len = len as u64;
        if len == 0 {
            return Ok(());
        }
        let Some(last) = iova.checked_add(len - 1) else {
            return Err(DmaFault::NotPresent { iova: u64::MAX });
        };
        let mps = mock_io_page_size();
        let (g0, gl) = (iova / mps, last / mps);
        if write && self.tracking.enabled() {
            let mut t = self.table.write(g0, gl);
            let (r, reached) = copy_locked(&t, iova, local, len, write);
            if let Some(end) = reached {
                t.mark_dirty(g0, end);
            }
            r
        } else {
            let t = self.table.read(g0, gl);
            copy_locked(&t, iova, local, len, write).0
        }
    }
}

/// Push the runs of granules of `dirty` (a mask of the block whose first
/// granule is `head`) to `out`, in IOVA order: a whole block as one run,
/// otherwise each run of set bits found with `trailing_zeros` (a run that
/// crosses a word boundary goes out in two pushes, which `out` joins).
fn push_dirty_runs(head: u64, dirty: &Mask, mps: u64, out: &mut DirtyRuns<'_, '_>) {
    if *dirty == FULL {
        out.push(head * mps, (head + BLOCK) * mps - 1);
        return;
    }
    for (w, &word) in dirty.iter().enumerate() {
        let mut x = word;
        while x != 0 {
            let s = x.trailing_zeros();
            // the zeros shifted in above end the run at bit 63 at the latest
            let n = (!(x >> s)).trailing_zeros();
            let g = head + w as u64 * 64 + u64::from(s);
            out.push(g * mps, (g + u64::from(n)) * mps - 1);
            x = if n == 64 {
                0
            } else {
                x & !(((1u64 << n) - 1) << s)
            };
        }
    }
}

impl Domain for MockDomain {
    fn id(&self) -> u64 {
        self.id
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    fn aperture(&self) -> (u64, u64) {
        self.aperture
    }

    fn map(
        &self,
        Iova(iova): Iova,
        HostAddr(addr): HostAddr,
        len: u64,
        prot: Prot,
        max_pgsize: u64,
    ) -> Result<()> {
        // the kernel mock's own failure point (mock_domain_map_pages)
        crate::inject::point("mock.domain.map", libc::ENOENT)?;
        let mps = mock_io_page_size();
        if len == 0
            || !iova.is_multiple_of(mps)
            || !addr.is_multiple_of(mps)
            || !len.is_multiple_of(mps)
        {
            bail!(
                EINVAL,
                "mock domain {}: map iova {iova:#x} addr {addr:#x} length {len:#x} is not a non-empty multiple of the \
                 mock page size {mps:#x}",
                self.id
            );
        }
        let last = match iova.checked_add(len - 1) {
            Some(l) if iova >= self.aperture.0 && l <= self.aperture.1 => l,
            _ => bail!(
                EINVAL,
                "mock domain {}: map [{iova:#x}, +{len:#x}) leaves the aperture [{:#x}, {:#x}]",
                self.id,
                self.aperture.0,
                self.aperture.1
            ),
        };
        let runs = split_pgsizes(iova, addr, len, self.pgsize_bitmap, max_pgsize);
        let first = iova / mps;
        let last_g = last / mps;
        let mut t = self.table.write(first, last_g);
        if self.injected_map_failure() {
            bail!(
                ENOENT,
                "mock domain {}: injected map failure at iova {iova:#x}",
                self.id
            );
        }
        if let Some((g, e)) = t.first_entry() {
            bail!(
                EEXIST,
                "mock domain {}: iova {:#x} is already mapped to {:#x}",
                self.id,
                g * mps,
                e.addr
            );
        }
        let mut meta = 0;
        if prot.read {
            meta |= META_READ;
        }
        if prot.write {
            meta |= META_WRITE;
        }
        for (run_iova, run_addr, pgsize, count) in runs {
            t.fill(
                run_iova / mps,
                pgsize * count / mps,
                run_addr,
                meta,
                pgsize != mps,
            );
        }
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> u64 {
        let mps = mock_io_page_size();
        if len == 0 {
            return 0;
        }
        let first = iova / mps;
        let last = iova.saturating_add(len - 1) / mps;
        let mut t = self.table.write(first, last);
        // Unmaps are whole maps: they start at a start marker and end at a
        // last marker. With huge pages the kernel core may split an unmap,
        // so, like the kernel's mock, only check without them.
        if self.pgsize_bitmap & mock_huge_page_size() == 0 {
            let bad_start = t
                .get(first)
                .is_some_and(|e| e.flags & MockEntry::FLAG_START == 0);
            let bad_last = t
                .get(last)
                .is_some_and(|e| e.flags & MockEntry::FLAG_LAST == 0);
            if bad_start || bad_last {
                self.warnings.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    domain = self.id,
                    "mock domain unmap [{iova:#x}, +{len:#x}) does not match a whole map"
                );
            }
        }
        t.remove_all();
        len
    }

    fn iova_to_phys(&self, Iova(iova): Iova) -> Option<HostAddr> {
        let g = iova / mock_io_page_size();
        self.table
            .read(g, g)
            .get(g)
            .map(|e| HostAddr(e.addr + iova % mock_io_page_size()))
    }

    /// Granule by granule (at most one stripe block per call), with the
    /// mapping's permissions; a tracked write marks the granules it
    /// returns dirty, as a device writing through the mock would.
    fn translate(
        &self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<(u64, u64), DmaFault> {
        let mps = mock_io_page_size();
        if iova < self.aperture.0 || iova > self.aperture.1 {
            return Err(DmaFault::NotPresent { iova });
        }
        let g0 = iova / mps;
        let last_byte = iova.saturating_add(len.max(1) - 1).min(self.aperture.1);
        let g_last = (last_byte / mps).min(g0 + BLOCK - 1);
        let allowed = if write { META_WRITE } else { META_READ };
        // how many granules from g0 are mapped, allowed and host-contiguous
        let scan = |found: Option<(u64, u64)>| match found {
            None => Err(DmaFault::NotPresent { iova }),
            Some((_, 0)) => Err(DmaFault::Permission { iova, write }),
            Some(r) => Ok(r),
        };
        let (addr, n) = if write && self.tracking.enabled() {
            let mut t = self.table.write(g0, g_last);
            let (addr, n) = scan(t.contiguous(g0, g_last, allowed))?;
            t.mark_dirty(g0, g0 + n - 1);
            (addr, n)
        } else {
            let t = self.table.read(g0, g_last);
            scan(t.contiguous(g0, g_last, allowed))?
        };
        let off = iova % mps;
        Ok((addr + off, (n * mps - off).min(len.max(1))))
    }

    /// Under the table's stripe locks of the range (see
    /// `MockDomain::dma_copy`): an unmap waits for it.
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), DmaFault> {
        self.dma_copy(iova, buf.as_mut_ptr(), buf.len(), false)
    }

    /// As [`Domain::dma_read`]; a write while tracking marks dirty.
    fn dma_write(&self, iova: u64, buf: &[u8]) -> std::result::Result<(), DmaFault> {
        self.dma_copy(iova, buf.as_ptr().cast_mut(), buf.len(), true)
    }

    fn dirty_tracking_supported(&self) -> bool {
        self.tracking.supported()
    }

    fn set_dirty_tracking(&self, enable: bool) -> Result<()> {
        self.tracking
            .set(enable, format_args!("mock domain {}", self.id))
    }

    fn redirty(&self, iova: u64, len: u64) -> Result<()> {
        self.mark_dirty(iova, len).map(|_| ())
    }

    fn read_and_clear_dirty(
        &self,
        iova: u64,
        len: u64,
        clear: bool,
        bitmap: Option<&mut DirtyBitmap<'_>>,
    ) -> Result<()> {
        if bitmap.is_some() {
            self.check_tracking("read dirty")?;
        }
        if len == 0 {
            return Ok(());
        }
        let mps = mock_io_page_size();
        let end = iova.saturating_add(len - 1);
        let (first, last) = (iova / mps, end / mps);
        let mut out = DirtyRuns::new(bitmap);
        let mut t = self.table.write(first, last);
        // Block by block in IOVA order (a block is where a huge page would
        // be), so that the runs pushed continue each other. A huge page is
        // dirty when any of its granules is, in the range or not; all of
        // them are cleared, and it is reported whole within the range. A
        // block turns huge at its first huge granule in range: the dirty
        // small granules in range before it are reported one by one.
        t.walk_mut(|b, blk| {
            if blk.dirty == EMPTY {
                return true; // nothing to report or clear
            }
            let head = b * BLOCK;
            let range = clip_mask(b, first, last);
            let huge_at = first_bit(&and(&blk.huge, &range));
            // the small granules reported one by one
            let small = match huge_at {
                None => range,
                Some(0) => EMPTY,
                Some(h) => and(&range, &span_mask(0, h - 1)),
            };
            push_dirty_runs(head, &and(&blk.dirty, &small), mps, &mut out);
            if clear {
                for (d, s) in blk.dirty.iter_mut().zip(small) {
                    *d &= !s;
                }
            }
            if huge_at.is_some() && blk.dirty != EMPTY {
                out.push((head * mps).max(iova), ((head + BLOCK) * mps - 1).min(end));
                if clear {
                    blk.dirty = EMPTY;
                }
            }
            true
        });
        drop(t);
        out.finish();
        Ok(())
    }

    fn mapped_runs(&self) -> Option<Vec<(Iova, HostAddr, u64)>> {
        let runs = self.runs().into_iter();
        Some(runs.map(|(i, a, l)| (Iova(i), HostAddr(a), l)).collect())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::errno;

    const A: u64 = MOCK_APERTURE_START;

    #[test]
    fn mock_domain_translate_permissions_and_dirty() {
        let mps = mock_io_page_size();
        let d = MockDomain::new_paging(false, true);
        // granules 0,1 RW contiguous, granule 2 RW elsewhere, granule 3 RO
        d.map(Iova(A), HostAddr(0x1000_0000), 2 * mps, Prot::RW, u64::MAX)
            .unwrap();
        d.map(
            Iova(A + 2 * mps),
            HostAddr(0x3000_0000),
            mps,
            Prot::RW,
            u64::MAX,
        )
        .unwrap();
        d.map(
            Iova(A + 3 * mps),
            HostAddr(0x1000_0000 + 3 * mps),
            mps,
            Prot::RO,
            u64::MAX,
        )
        .unwrap();
        assert_eq!(
            d.translate(A + 5, 10 * mps, false),
            Ok((0x1000_0005, 2 * mps - 5))
        );
        assert_eq!(d.translate(A + 5, 3, true), Ok((0x1000_0005, 3)));
        assert_eq!(
            d.translate(A + 2 * mps + 1, 4 * mps, false),
            Ok((0x3000_0001, mps - 1))
        );
        assert_eq!(
            d.translate(A + 3 * mps + 8, 1, true),
            Err(DmaFault::Permission {
                iova: A + 3 * mps + 8,
                write: true
            })
        );
        assert_eq!(
            d.translate(A + 3 * mps + 8, 1, false),
            Ok((0x1000_0000 + 3 * mps + 8, 1))
        );
        assert_eq!(
            d.translate(A + 4 * mps, 1, false),
            Err(DmaFault::NotPresent { iova: A + 4 * mps })
        );
        assert_eq!(
            d.translate(0, 1, false),
            Err(DmaFault::NotPresent { iova: 0 })
        );
        // writes mark dirty only while tracking is on
        assert_eq!(d.runs().len(), 3);
        assert_eq!(d.entry(A).unwrap().flags & MockEntry::FLAG_DIRTY, 0);
        d.set_dirty_tracking(true).unwrap();
        d.translate(A + mps - 1, 2, true).unwrap();
        assert_eq!(d.translate(A + 2 * mps, 8, false), Ok((0x3000_0000, 8)));
        let dirty: Vec<bool> = (0..4)
            .map(|i| d.entry(A + i * mps).unwrap().flags & MockEntry::FLAG_DIRTY != 0)
            .collect();
        assert_eq!(dirty, vec![true, true, false, false]);
    }

    #[test]
    fn mock_domain_dma_copies_with_permissions() {
        let mps = mock_io_page_size();
        let mut mem = vec![0u8; 4 * mps as usize];
        let host = (mem.as_mut_ptr() as u64).next_multiple_of(mps);
        let off = (host - mem.as_ptr() as u64) as usize;
        let d = MockDomain::new(false);
        d.map(Iova(A), HostAddr(host), 2 * mps, Prot::RW, u64::MAX)
            .unwrap();
        d.map(
            Iova(A + 2 * mps),
            HostAddr(host + 2 * mps),
            mps,
            Prot::RO,
            u64::MAX,
        )
        .unwrap();
        let dom: Arc<dyn Domain> = d;
        dom.dma_write(A + mps - 2, &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            &mem[off + mps as usize - 2..off + mps as usize + 2],
            &[1, 2, 3, 4]
        );
        let mut b = [0u8; 4];
        dom.dma_read(A + mps - 2, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(
            dom.dma_write(A + 2 * mps - 1, &[5, 6]),
            Err(DmaFault::Permission {
                iova: A + 2 * mps,
                write: true
            })
        );
        assert_eq!(mem[off + 2 * mps as usize - 1], 5);
        assert_eq!(
            dom.dma_read(A + 3 * mps, &mut b),
            Err(DmaFault::NotPresent { iova: A + 3 * mps })
        );
        drop(mem);
    }

    #[test]
    fn mock_domain_dma_marks_dirty_and_holds_off_unmap() {
        let mps = mock_io_page_size();
        let mut mem = vec![0u8; 4 * mps as usize];
        let host = (mem.as_mut_ptr() as u64).next_multiple_of(mps);
        let off = (host - mem.as_ptr() as u64) as usize;
        let d = MockDomain::new_paging(false, true);
        d.map(Iova(A), HostAddr(host), 3 * mps, Prot::RW, u64::MAX)
            .unwrap();
        d.set_dirty_tracking(true).unwrap();
        d.dma_write(A + mps - 1, &[1, 2]).unwrap();
        let dirty: Vec<bool> = (0..3)
            .map(|i| d.entry(A + i * mps).unwrap().flags & MockEntry::FLAG_DIRTY != 0)
            .collect();
        assert_eq!(dirty, vec![true, true, false]);
        // the copy holds the table's locks of its range: while they are
        // held elsewhere (an unmap in progress) it waits
        let g = A / mps + 2;
        let held = d.table.write(g, g);
        let d2 = d.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(d2.dma_write(A + 2 * mps, &[7u8; 4])).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_err());
        drop(held);
        assert_eq!(rx.recv().unwrap(), Ok(()));
        t.join().unwrap();
        assert_eq!(
            &mem[off + 2 * mps as usize..off + 2 * mps as usize + 4],
            &[7; 4]
        );
        assert_eq!(d.unmap(A, 3 * mps), 3 * mps);
        assert_eq!(d.dma_write(A, &[1]), Err(DmaFault::NotPresent { iova: A }));
        drop(mem);
    }

    #[test]
    fn mock_domain_geometry() {
        let d = MockDomain::new(false);
        assert_eq!(d.pgsize_bitmap(), page_size() / 2);
        assert_eq!(d.aperture(), (1 << 24, (1 << 31) - 1));
        let h = MockDomain::new(true);
        assert_eq!(h.pgsize_bitmap(), page_size() / 2 + 256 * page_size());
        assert_ne!(d.id(), h.id());
        assert!(d.is_empty());
    }

    #[test]
    fn mock_domain_map_marks_and_translates() {
        let d = MockDomain::new(false);
        let mps = mock_io_page_size();
        d.map(Iova(A), HostAddr(0x1000_0000), 4 * mps, Prot::RW, u64::MAX)
            .unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(
            d.iova_to_phys(Iova(A + mps + 5)),
            Some(HostAddr(0x1000_0000 + mps + 5))
        );
        assert_eq!(d.iova_to_phys(Iova(A + 4 * mps)), None);
        assert_eq!(d.entry(A).unwrap().flags, MockEntry::FLAG_START);
        assert_eq!(d.entry(A + mps).unwrap().flags, 0);
        assert_eq!(d.entry(A + 3 * mps).unwrap().flags, MockEntry::FLAG_LAST);
        assert_eq!(d.runs(), vec![(A, 0x1000_0000, 4 * mps)]);
        d.check_map(A, 4 * mps, 0x1000_0000).unwrap();
        assert_eq!(errno(d.check_map(A, 5 * mps, 0x1000_0000)), libc::EINVAL);
        assert_eq!(
            errno(d.check_map(A, 4 * mps, 0x1000_0000 + mps)),
            libc::EINVAL
        );
        assert_eq!(errno(d.check_map(A + 1, mps, 0x1000_0000)), libc::EINVAL);
        assert_eq!(errno(d.check_map(A, 1, 0x1000_0000)), libc::EINVAL);
        assert_eq!(errno(d.check_map(A, mps, 1)), libc::EINVAL);
        assert_eq!(
            errno(d.check_map(A, 2 * mps, u64::MAX - mps + 1)),
            libc::EINVAL
        );
        // Mapping over a mapping, outside the aperture, misaligned.
        assert_eq!(
            errno(d.map(Iova(A + 3 * mps), HostAddr(0), mps, Prot::RW, u64::MAX)),
            libc::EEXIST
        );
        assert_eq!(
            errno(d.map(Iova(0), HostAddr(0), mps, Prot::RW, u64::MAX)),
            libc::EINVAL
        );
        assert_eq!(
            errno(d.map(Iova(A), HostAddr(0), mps + 1, Prot::RW, u64::MAX)),
            libc::EINVAL
        );
        assert_eq!(d.unmap(A, 4 * mps), 4 * mps);
        assert!(d.is_empty());
        assert_eq!(d.warnings(), 0);
    }

    #[test]
    fn mock_domain_huge_pages_honour_max_pgsize() {
        let d = MockDomain::new(true);
        let huge = mock_huge_page_size();
        let mps = mock_io_page_size();
        // IOVA and address both huge aligned: huge entries.
        d.map(Iova(A), HostAddr(0x4000_0000), 2 * huge, Prot::RW, u64::MAX)
            .unwrap();
        assert!(d.entry(A + mps).unwrap().flags & MockEntry::FLAG_HUGE != 0);
        assert_eq!(
            d.iova_to_phys(Iova(A + huge + 3 * mps)),
            Some(HostAddr(0x4000_0000 + huge + 3 * mps))
        );
        d.unmap(A, 2 * huge);
        // Capped at PAGE_SIZE: only granules.
        d.map(
            Iova(A),
            HostAddr(0x4000_0000),
            2 * huge,
            Prot::RW,
            page_size(),
        )
        .unwrap();
        assert!(d.entry(A + mps).unwrap().flags & MockEntry::FLAG_HUGE == 0);
        d.unmap(A, 2 * huge);
        // Address not huge aligned: granules.
        d.map(
            Iova(A),
            HostAddr(0x4000_0000 + mps),
            huge,
            Prot::RW,
            u64::MAX,
        )
        .unwrap();
        assert!(d.entry(A).unwrap().flags & MockEntry::FLAG_HUGE == 0);
        d.unmap(A, huge);
        assert!(d.is_empty());
    }

    #[test]
    fn mock_domain_unmap_rule_and_injection() {
        let d = MockDomain::new(false);
        let mps = mock_io_page_size();
        d.map(Iova(A), HostAddr(0x1000_0000), 4 * mps, Prot::RW, u64::MAX)
            .unwrap();
        d.unmap(A + mps, mps);
        assert_eq!(d.warnings(), 1, "an unmap that cuts a map is flagged");
        d.fail_map_after(Some(1));
        d.map(Iova(A + 8 * mps), HostAddr(0), mps, Prot::RW, u64::MAX)
            .unwrap();
        assert_eq!(
            errno(d.map(Iova(A + 9 * mps), HostAddr(0), mps, Prot::RW, u64::MAX)),
            libc::ENOENT
        );
        assert!(
            d.entry(A + 9 * mps).is_none(),
            "a failed map leaves nothing"
        );
        d.map(Iova(A + 9 * mps), HostAddr(0), mps, Prot::RW, u64::MAX)
            .unwrap();
    }

    #[test]
    fn mock_domain_dirty_bits_and_huge_granularity() {
        let mps = mock_io_page_size();
        let huge = mock_huge_page_size();
        let plain = MockDomain::new(true);
        assert!(!plain.dirty_tracking_supported());
        assert_eq!(errno(plain.set_dirty_tracking(true)), libc::EINVAL);
        plain.set_dirty_tracking(false).unwrap();

        let d = MockDomain::new_paging(true, true);
        assert!(d.dirty_tracking_supported());
        d.map(Iova(A), HostAddr(0x4000_0000), 2 * huge, Prot::RW, u64::MAX)
            .unwrap();
        d.map(
            Iova(A + 2 * huge),
            HostAddr(0x5000_0800),
            4 * mps,
            Prot::RW,
            u64::MAX,
        )
        .unwrap();
        let last = A + 2 * huge + 4 * mps - 1;
        let read = |iova: u64, len: u64, clear: bool| -> Result<Vec<u64>> {
            let mut w = vec![0u64; ((last - A) / mps / 64 + 1) as usize];
            let mut bm = DirtyBitmap::new(A, last, mps.trailing_zeros(), &mut w);
            d.read_and_clear_dirty(iova, len, clear, Some(&mut bm))?;
            Ok(w)
        };
        // not tracking: marking and reading refuse, clearing works
        assert_eq!(errno(d.mark_dirty(A, mps)), libc::EINVAL);
        assert_eq!(errno(read(A, mps, true)), libc::EINVAL);
        d.read_and_clear_dirty(A, 2 * huge, true, None).unwrap();
        d.set_dirty_tracking(true).unwrap();
        assert!(d.dirty_tracking_enabled());
        // one granule of the second huge page, one small page
        assert_eq!(d.mark_dirty(A + huge + 5 * mps, mps).unwrap(), 1);
        assert_eq!(
            d.mark_dirty_bits(A + 2 * huge, mps, &[0b1010], 4).unwrap(),
            2
        );
        assert_eq!(d.mark_dirty_bits(A + 3 * huge, mps, &[1], 1).unwrap(), 0);
        let bit = |iova: u64| (iova - A) / mps;
        // a read inside the huge page reports only what it asked for
        let w = read(A + huge + 10 * mps, 4 * mps, false).unwrap();
        let set: Vec<u64> = (0..w.len() as u64 * 64)
            .filter(|&b| w[(b / 64) as usize] >> (b % 64) & 1 != 0)
            .collect();
        assert_eq!(
            set,
            (bit(A + huge + 10 * mps)..bit(A + huge + 14 * mps)).collect::<Vec<_>>()
        );
        // the whole range: the huge page whole, and the two small pages
        let w = read(A, 2 * huge + 4 * mps, true).unwrap();
        let set: Vec<u64> = (0..w.len() as u64 * 64)
            .filter(|&b| w[(b / 64) as usize] >> (b % 64) & 1 != 0)
            .collect();
        let mut want: Vec<u64> = (bit(A + huge)..bit(A + 2 * huge)).collect();
        want.push(bit(A + 2 * huge + mps));
        want.push(bit(A + 2 * huge + 3 * mps));
        assert_eq!(set, want);
        // cleared
        assert!(read(A, 2 * huge + 4 * mps, true)
            .unwrap()
            .iter()
            .all(|&x| x == 0));
        assert_eq!(
            d.entry(A + huge + 5 * mps).unwrap().flags & MockEntry::FLAG_DIRTY,
            0
        );
    }

    #[test]
    fn mock_domain_concurrent_disjoint_maps() {
        let d = MockDomain::new(true);
        let mps = mock_io_page_size();
        let threads: Vec<_> = (0..8u64)
            .map(|n| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let iova = A + (n * 1000 + i) * 4 * mps;
                        d.map(
                            Iova(iova),
                            HostAddr(iova + (1 << 32)),
                            4 * mps,
                            Prot::RW,
                            u64::MAX,
                        )
                        .unwrap();
                    }
                    for i in 0..200u64 {
                        let iova = A + (n * 1000 + i) * 4 * mps;
                        d.check_map(iova, 4 * mps, iova + (1 << 32)).unwrap();
                        assert_eq!(d.unmap(iova, 4 * mps), 4 * mps);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(d.is_empty());
        assert_eq!(d.warnings(), 0);
    }

    #[test]
    fn mock_domain_stripes_keep_iova_order_and_atomicity() {
        let d = MockDomain::with_aperture(true, true, 0, u64::MAX);
        let mps = mock_io_page_size();
        let block = mock_huge_page_size();
        // Blocks 3, 3 + STRIPES and 4 share or neighbour stripes; runs() and
        // EEXIST must see them in IOVA order whatever the stripe.
        let far = (3 + STRIPES as u64) * block;
        d.map(
            Iova(far),
            HostAddr(0x9000_0000),
            2 * mps,
            Prot::RW,
            u64::MAX,
        )
        .unwrap();
        d.map(
            Iova(3 * block + mps),
            HostAddr(0x1000_0000),
            mps,
            Prot::RW,
            u64::MAX,
        )
        .unwrap();
        d.map(
            Iova(4 * block),
            HostAddr(0x2000_0000),
            mps,
            Prot::RW,
            u64::MAX,
        )
        .unwrap();
        assert_eq!(
            d.runs(),
            vec![
                (3 * block + mps, 0x1000_0000, mps),
                (4 * block, 0x2000_0000, mps),
                (far, 0x9000_0000, 2 * mps),
            ]
        );
        assert_eq!(d.len(), 4);
        // A map over every stripe fails on the first mapped granule.
        let r = d
            .map(Iova(0), HostAddr(0), far + block, Prot::RW, u64::MAX)
            .unwrap_err();
        assert_eq!(r.errno().0, libc::EEXIST);
        assert!(
            r.to_string().contains(&format!("{:#x}", 3 * block + mps)),
            "{r}"
        );
        assert_eq!(d.len(), 4, "a failed map leaves nothing");
        // A range of huge pages spanning more than STRIPES blocks, and a
        // few granules after them.
        let base = 1000 * block;
        let len = (STRIPES as u64 + 5) * block + 3 * mps;
        let tail = base + (STRIPES as u64 + 5) * block;
        d.map(Iova(base), HostAddr(0x4000_0000), len, Prot::RW, u64::MAX)
            .unwrap();
        d.check_map(base, len, 0x4000_0000).unwrap();
        assert_eq!(d.len(), 4 + len / mps);
        assert!(d.entry(base + 7 * block).unwrap().flags & MockEntry::FLAG_HUGE != 0);
        assert!(d.entry(tail).unwrap().flags & MockEntry::FLAG_HUGE == 0);
        d.set_dirty_tracking(true).unwrap();
        assert_eq!(d.mark_dirty(base + 5 * mps, mps).unwrap(), 1);
        assert_eq!(d.mark_dirty(tail + mps, mps).unwrap(), 1);
        // A read across every stripe from inside the first huge page: that
        // page clipped to the range, then the small page.
        let read = |from: u64| {
            let last = base + len - 1;
            let mut w = vec![0u64; ((last - base) / mps / 64 + 1) as usize];
            let mut bm = DirtyBitmap::new(base, last, mps.trailing_zeros(), &mut w);
            d.read_and_clear_dirty(from, base + len - from, true, Some(&mut bm))
                .unwrap();
            (0..w.len() as u64 * 64)
                .filter(|&b| w[(b / 64) as usize] >> (b % 64) & 1 != 0)
                .collect::<Vec<u64>>()
        };
        let mut want: Vec<u64> = (10..block / mps).collect();
        want.push((tail + mps - base) / mps);
        assert_eq!(read(base + 10 * mps), want);
        assert!(read(base).is_empty(), "the read cleared");
        assert_eq!(d.mark_dirty_bits(tail, mps, &[0b1111], 4).unwrap(), 3);
        assert_eq!(d.unmap(base, len), len);
        assert_eq!(d.len(), 4);
        assert_eq!(d.unmap(0, u64::MAX), u64::MAX);
        assert!(d.is_empty());
    }

    #[test]
    fn mock_domain_concurrent_overlapping_maps_have_one_winner() {
        let mps = mock_io_page_size();
        let block = mock_huge_page_size();
        for round in 0..50u64 {
            let d = MockDomain::with_aperture(false, false, 0, u64::MAX);
            // Two ranges over many stripes that overlap in one granule.
            let a = round * 4 * block;
            let len = (STRIPES as u64 + 2) * block;
            let b = a + len - mps;
            let t: Vec<_> = [a, b]
                .into_iter()
                .map(|iova| {
                    let d = d.clone();
                    std::thread::spawn(move || {
                        d.map(Iova(iova), HostAddr(iova), len, Prot::RW, u64::MAX)
                            .is_ok()
                    })
                })
                .collect();
            let ok: Vec<bool> = t.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(ok.iter().filter(|&&x| x).count(), 1, "{ok:?}");
            assert_eq!(d.len(), len / mps);
        }
    }

    /// One ordered map of every granule's entry: the model the striped,
    /// blocked table must agree with.
    type Entries = BTreeMap<u64, MockEntry>;

    /// Every entry of the table, from all stripes, after checking the
    /// table's invariants: each block in its stripe, none empty, its count
    /// and the stripe's exact, dirty and huge granules mapped ones.
    fn snapshot(d: &MockDomain) -> Entries {
        let t = d.table.read(0, LAST_GRANULE);
        let mut out = Entries::new();
        for (s, st) in t.stripes() {
            let mut len = 0;
            for (&b, blk) in &st.map {
                assert_eq!(stripe_of_block(b), s, "block {b} in stripe {s}");
                let n: u32 = blk.present.iter().map(|w| w.count_ones()).sum();
                assert!(
                    n > 0 && n == blk.count,
                    "block {b}: {n} mapped, count {}",
                    blk.count
                );
                for w in 0..WORDS {
                    assert_eq!(
                        blk.dirty[w] & !blk.present[w],
                        0,
                        "block {b}: dirty unmapped"
                    );
                    assert_eq!(blk.huge[w] & !blk.present[w], 0, "block {b}: huge unmapped");
                    let mut x = blk.present[w];
                    while x != 0 {
                        let i = w as u64 * 64 + u64::from(x.trailing_zeros());
                        x &= x - 1;
                        out.insert(b * BLOCK + i, blk.entry(i).unwrap());
                    }
                }
                len += u64::from(n);
            }
            assert_eq!(st.len, len, "stripe {s}'s count");
        }
        out
    }

    /// The dirty read over one ordered map (the table before striping):
    /// the runs `[s, e)` it reports, in order; clears as it goes.
    fn reference_read(m: &mut Entries, iova: u64, len: u64, clear: bool) -> Vec<(u64, u64)> {
        let mps = mock_io_page_size();
        let end = iova + len - 1;
        let mut out = Vec::new();
        let mut next = iova / mps;
        while next <= end / mps {
            let mut huge_at = None;
            for (&g, e) in m.range_mut(next..=end / mps) {
                if e.flags & MockEntry::FLAG_HUGE != 0 {
                    huge_at = Some(g);
                    break;
                }
                if e.flags & MockEntry::FLAG_DIRTY != 0 {
                    if clear {
                        e.flags &= !MockEntry::FLAG_DIRTY;
                    }
                    out.push((g * mps, (g + 1) * mps));
                }
            }
            let Some(g) = huge_at else { break };
            let head = g / BLOCK * BLOCK;
            let mut dirty = false;
            for (_, e) in m.range_mut(head..head + BLOCK) {
                if e.flags & MockEntry::FLAG_DIRTY != 0 {
                    dirty = true;
                    if clear {
                        e.flags &= !MockEntry::FLAG_DIRTY;
                    }
                }
            }
            if dirty {
                out.push(((head * mps).max(iova), ((head + BLOCK) * mps).min(end + 1)));
            }
            next = head + BLOCK;
        }
        out
    }

    #[test]
    fn mock_domain_striped_walks_match_one_ordered_map() {
        let mps = mock_io_page_size();
        let block = mock_huge_page_size();
        let span = (STRIPES as u64 + 16) * block;
        let d = MockDomain::with_aperture(true, true, 0, u64::MAX);
        d.set_dirty_tracking(true).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut reads, mut huge_reads) = (0, 0);
        for round in 0..1200 {
            // granule-aligned, often block-aligned ranges: huge pages,
            // partial unmaps of them and small pages in their holes
            let range = |rnd: &mut dyn FnMut(u64) -> u64| {
                let g = if rnd(2) == 0 {
                    rnd(span / block) * BLOCK
                } else {
                    rnd(span / mps)
                };
                let n = match rnd(3) {
                    0 => 1 + rnd(4),
                    1 => 1 + rnd(2 * BLOCK),
                    _ => BLOCK * (1 + rnd(STRIPES as u64 + 4)),
                };
                (g * mps, (n * mps).min(span - g * mps))
            };
            let (iova, len) = range(&mut rnd);
            match rnd(6) {
                0 | 1 => {
                    let before = snapshot(&d);
                    let r = d.map(
                        Iova(iova),
                        HostAddr(iova + (1 << 40)),
                        len,
                        Prot::RW,
                        u64::MAX,
                    );
                    let want = before.range(iova / mps..=(iova + len - 1) / mps).next();
                    match (r, want) {
                        (Ok(()), None) => {}
                        (Err(e), Some((&g, _))) => {
                            assert_eq!(e.errno().0, libc::EEXIST);
                            assert!(e.to_string().contains(&format!("{:#x} ", g * mps)), "{e}");
                        }
                        (r, w) => panic!("round {round}: map {r:?}, first entry {w:?}"),
                    }
                }
                2 => {
                    d.unmap(iova, len);
                }
                3 => {
                    d.mark_dirty(iova, len.min(rnd(8) * mps + mps)).unwrap();
                }
                _ => {
                    let clear = rnd(4) != 0;
                    let mut model = snapshot(&d);
                    let runs = reference_read(&mut model, iova, len, clear);
                    huge_reads +=
                        usize::from(model.values().any(|e| e.flags & MockEntry::FLAG_HUGE != 0));
                    let last = iova + len - 1;
                    let mut want = vec![0u64; (len / mps).div_ceil(64) as usize];
                    for (s, e) in runs {
                        for b in (s - iova) / mps..(e - iova) / mps {
                            want[(b / 64) as usize] |= 1 << (b % 64);
                        }
                    }
                    let mut got = vec![0u64; want.len()];
                    let mut bm = DirtyBitmap::new(iova, last, mps.trailing_zeros(), &mut got);
                    d.read_and_clear_dirty(iova, len, clear, Some(&mut bm))
                        .unwrap();
                    assert_eq!(got, want, "round {round}: read [{iova:#x}, +{len:#x})");
                    assert_eq!(snapshot(&d), model, "round {round}: flags after the read");
                    reads += 1;
                }
            }
            if round % 8 != 0 {
                continue;
            }
            let mut want_runs: Vec<(u64, u64, u64)> = Vec::new();
            for (&g, e) in &snapshot(&d) {
                match want_runs.last_mut() {
                    Some(r) if r.0 + r.2 == g * mps && r.1 + r.2 == e.addr => r.2 += mps,
                    _ => want_runs.push((g * mps, e.addr, mps)),
                }
            }
            assert_eq!(d.runs(), want_runs, "round {round}");
            assert_eq!(d.len(), want_runs.iter().map(|r| r.2 / mps).sum::<u64>());
        }
        assert!(
            reads > 200 && huge_reads > 50,
            "{reads} reads, {huge_reads} with huge pages"
        );
    }
}
