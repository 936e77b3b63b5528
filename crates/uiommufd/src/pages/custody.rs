//! Custody of pinned pages: pins that hold when the program unmaps.
//!
//! In the kernel a pin is a reference on the page itself: the program may
//! `munmap` the memory, `mmap(MAP_FIXED)` over it, `madvise(MADV_DONTNEED)`
//! it, and the IOMMU (domains, and accesses' pinned pages) keeps reaching
//! the very same pages until they are unpinned, while the program's
//! address range behaves as it asked (gone, fresh memory, zero pages).
//! Here a pin is a fault-in (`MADV_POPULATE_*`) plus a count, and every
//! user of a pinned page reaches it by the program's virtual address: the
//! program's call would take the page away from the IOMMU.
//!
//! # Design: move the pages out of the way first
//!
//! [`take`] is called *before* the program's call runs (the preload does
//! it from its `munmap`, `mmap(MAP_FIXED)` and `madvise` hooks; a Rust
//! embedder does it before it unmaps, see below). When the range holds
//! pinned pages of a pages object, the engine moves those very pages —
//! page-table entries, not copies — to an address of its own with
//! `mremap(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)` onto a
//! reservation (a **custody chunk**, [`Chunk`]). That works for private
//! anonymous memory (whose pages have no other name) as well as for shared
//! mappings, is O(page tables) and keeps the data where DMA wrote it.
//! Everything that reaches the pages is re-pointed at the reservation
//! *before* the pages move there:
//!
//! * the pages object records a **relocation** for those page indexes
//!   ([`Pages::host`]); only pinned pages are relocated, and a relocation
//!   ends with the page's last user, when its custody page is unmapped
//!   (so `IOAS_UNMAP`, an access unpin or a domain detach releases the
//!   memory and the accounting together);
//! * every attached domain of every IOAS mapping such an object gets the
//!   object's areas mapped again at the new host addresses;
//! * the access copy fast path forgets what it cached (taking the tables'
//!   write locks moves their generations; the drain waits for copies in
//!   flight), and an area whose pages are relocated is copied through the
//!   locked path, piece by piece.
//!
//! All of it happens with every registered IO page table's `domains` and
//! `state` locks held for write, so no map, unmap, pin, unpin or locked
//! copy runs meanwhile, and after `drain::wait`, so no lock-free
//! copy is in flight. A device's DMA is not stopped: while the domains
//! are re-mapped, or reach the reservation before the pages arrive, it
//! faults, and [`dma`] (which the VFIO device bus wraps every DMA in)
//! makes a DMA that faulted during a move again once the move is done. It
//! never reaches the program's memory: the pages leave the program's
//! mapping only after nothing points there.
//!
//! `MREMAP_DONTUNMAP` leaves the program's mapping in place, without the
//! pages (zero pages if anonymous, the file's if shared): there is no
//! hole that another thread's `mmap` could take before the program's own
//! call runs. That call then does what it asked: `munmap` unmaps, a
//! `MAP_FIXED` gives fresh memory, and a `madvise(MADV_DONTNEED /
//! MADV_DONTNEED_LOCKED / MADV_FREE)` ([`Reason::Discard`]) finds the zero
//! pages it promises (a shared mapping keeps its pages in its file, so
//! discarding it needs no custody). Where the kernel refuses the flag the
//! pages move plainly, and a discarded private range is mapped anew.
//!
//! `mremap` is followed, not taken ([`follow_mremap`]): in the kernel it
//! moves page-table entries, so the device and the program keep sharing
//! the pinned pages, at their new address for the program; here the
//! engine runs the program's `mremap` with the tables held still and
//! re-points everything at the new address.
//!
//! Why not copy: a copy breaks the sharing between the device and the
//! pinned pages (DMA in flight would write into the old copy), costs
//! O(bytes), and for the program's `munmap` there is nobody to copy for.
//! Why not an engine-owned alias made at pin time: private anonymous
//! memory has no second name to map.
//!
//! The fast paths pay nothing while nothing was moved: [`Pages::host`] and
//! the checks on the copy paths are one load of a per-object flag, and the
//! preload's hooks one load of `PINNED` (zero while no custodial page is
//! pinned) before forwarding.
//!
//! # Limits
//!
//! * A DMA through a domain made directly by a Rust user (not through the
//!   VFIO device bus) that runs during a move may fault; wrap it in
//!   [`dma`].
//! * The host addresses [`crate::access::Access::pin_pages`] returned
//!   are those of the pages when pinned: after a move, reach the pages
//!   through `Access::rw` (or pin again).
//! * A domain with dirty tracking reports a moved area dirty as a whole
//!   once (the area is mapped again; over-reporting loses nothing).
//! * `MADV_REMOVE` (which punches a hole in the *file* of a shared
//!   mapping) is not covered: moving the mapping does not keep the file's
//!   pages. Nor is `madvise` of private *file* mappings.
//! * Only pages objects of `IOAS_MAP` of this process's memory in IOASes
//!   made by [`crate::ioas::Ioas::new_shared`] (every IOAS of a
//!   [`crate::Context`]) are covered; `IOAS_MAP_FILE` and dma-buf areas
//!   need nothing (the engine maps them itself).
//! * `mprotect` is not covered: a pinned page the program makes
//!   inaccessible or read-only is so for DMA and copies too (the kernel's
//!   device keeps its access).
//! * A program's `munmap` of a range that covers custody's own
//!   reservations (it cannot know them, but a blanket unmap could) takes
//!   them.
//! * hugetlb mappings move only in whole huge pages; a partial move fails
//!   and is logged (the pages then stay with the program's call).
//!
//! # The Rust API
//!
//! Without the preload nothing intercepts the program's calls. The
//! contract: memory mapped in an IOAS stays mapped while it is mapped
//! there, **or** the embedder calls [`take`] on a range before it unmaps
//! it, `mmap`s over it or discards it (and makes its `mremap` through
//! [`follow_mremap`]), and the same guarantee holds; device models that
//! DMA through a domain themselves wrap it in [`dma`]. Memory the engine
//! maps itself (`IOAS_MAP_FILE`) needs neither.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::pages::Pages;
use crate::user::page_size;
use crate::Result;

/// Pinned pages of custodial pages objects (see
/// [`Pages::set_custodial`]), process-wide: while zero, [`take`] has
/// nothing to do and answers after one load.
pub(crate) static PINNED: AtomicU64 = AtomicU64::new(0);

/// Pages the custody chunks hold (mapped), process-wide.
static HELD: AtomicU64 = AtomicU64::new(0);

/// One [`take`] at a time.
static OP: Mutex<()> = Mutex::new(());

/// An IO page table whose domains custody re-points (an IOAS's).
pub(crate) trait Table: Send + Sync {
    /// Hold the table still: both its locks for write (in its lock
    /// order) until the guard is dropped.
    fn hold(&self) -> Held<'_>;
}

/// An IO page table held still for custody: no map, unmap, pin, unpin or
/// locked copy runs, and the generation moved (the access fast path's
/// cached areas are stale).
pub(crate) trait HeldTable {
    /// Map again, in every attached domain, the live areas over the pages
    /// objects `moved` (ids), at the host addresses their pages live at
    /// now.
    fn repoint(&mut self, moved: &HashSet<u64>);
}

/// A table held still ([`Table::hold`]).
pub(crate) type Held<'a> = Box<dyn HeldTable + 'a>;

/// The tables custody re-points, by address.
type Tables = std::collections::BTreeMap<usize, Weak<dyn Table>>;
static TABLES: Mutex<Tables> = Mutex::new(Tables::new());

/// Whether some custodial page is pinned (one load): the preload's hooks
/// forward at once when not.
#[inline]
pub fn active() -> bool {
    PINNED.load(Ordering::Acquire) != 0
}

/// Pages custody holds now (moved out of the program's way and still
/// pinned), process-wide.
pub fn held_pages() -> u64 {
    HELD.load(Ordering::Acquire)
}

/// Make `table` known to custody (its domains are re-pointed on a move).
pub(crate) fn register<T: Table + 'static>(table: &Arc<T>) {
    let weak: Weak<dyn Table> = Arc::downgrade(table) as Weak<dyn Table>;
    TABLES.lock().insert(Arc::as_ptr(table) as usize, weak);
}

/// Forget the table at `addr` (its drop).
pub(crate) fn unregister(addr: usize) {
    TABLES.lock().remove(&addr);
}

/// What the program is about to do to the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `munmap`: the range goes away.
    Unmap,
    /// `mmap(MAP_FIXED)`: new memory replaces the range.
    Replace,
    /// `madvise(MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE)`: the
    /// range stays, its private anonymous pages read as zeros afterwards.
    Discard,
}

/// A reservation of the engine's that holds moved pages (each page
/// unmapped when its last relocation lets it go).
#[derive(Debug)]
pub struct Chunk {
    addr: u64,
    /// Per page: how many relocations (pages objects) hold it, and whether
    /// it is still mapped.
    pages: Mutex<Vec<(u32, bool)>>,
}

impl Chunk {
    /// An inaccessible reservation of `len` bytes.
    fn reserve(len: u64) -> std::result::Result<Arc<Chunk>, i32> {
        let addr = crate::pages::raw_mmap(
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )?;
        let n = len / page_size();
        HELD.fetch_add(n, Ordering::AcqRel);
        Ok(Arc::new(Chunk {
            addr,
            pages: Mutex::new(vec![(0, true); n as usize]),
        }))
    }

    /// First address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// One more holder of pages `first..=last` of the chunk.
    pub(crate) fn acquire(&self, first: u64, last: u64) {
        let mut p = self.pages.lock();
        for e in &mut p[first as usize..=last as usize] {
            debug_assert!(e.1, "custody page acquired after it was freed");
            e.0 += 1;
        }
    }

    /// One holder less of pages `first..=last`: those left with none are
    /// unmapped.
    pub(crate) fn release(&self, first: u64, last: u64) {
        let mut p = self.pages.lock();
        for e in &mut p[first as usize..=last as usize] {
            e.0 -= 1;
        }
        self.trim(&mut p, first, last);
    }

    /// Unmap the mapped pages of `first..=last` that nobody holds.
    fn trim(&self, p: &mut [(u32, bool)], first: u64, last: u64) {
        let ps = page_size();
        let mut i = first;
        while i <= last {
            if p[i as usize] != (0, true) {
                i += 1;
                continue;
            }
            let s = i;
            while i <= last && p[i as usize] == (0, true) {
                p[i as usize].1 = false;
                i += 1;
            }
            // SAFETY: unmapping pages of our own reservation that no
            // relocation reaches any more.
            unsafe {
                libc::syscall(
                    libc::SYS_munmap,
                    (self.addr + s * ps) as usize,
                    ((i - s) * ps) as usize,
                )
            };
            HELD.fetch_sub(i - s, Ordering::AcqRel);
        }
    }

    /// Unmap every page nobody took (after the relocations are recorded).
    fn trim_all(&self) {
        let mut p = self.pages.lock();
        let n = p.len() as u64;
        if n > 0 {
            self.trim(&mut p, 0, n - 1);
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // every relocation holds the chunk: nothing is held any more
        let p = self.pages.get_mut();
        let n = p.len() as u64;
        for e in p.iter_mut() {
            e.0 = 0;
        }
        if n > 0 {
            let mut v = std::mem::take(p);
            self.trim(&mut v, 0, n - 1);
        }
    }
}

/// A mapping of `/proc/self/maps`.
#[derive(Debug, Clone, Copy)]
struct Vma {
    start: u64,
    end: u64,
    prot: i32,
    shared: bool,
    /// No file behind it (anonymous, heap, stack).
    anon: bool,
}

/// The mappings that meet `[lo, hi)`, by raw system calls (under the
/// preload `open` and `read` are the program's hooked entry points).
fn vmas(lo: u64, hi: u64) -> Vec<Vma> {
    let Some(text) = crate::user::read_proc_raw(c"/proc/self/maps") else {
        return Vec::new();
    };
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(crate::user::MapsLine::parse)
        .filter(|m| m.end > lo && m.start < hi)
        .map(|m| Vma {
            start: m.start,
            end: m.end,
            prot: m.prot(),
            shared: m.shared(),
            anon: m.inode == 0 && (m.path.is_empty() || m.path.starts_with('[')),
        })
        .collect()
}

/// Take the pinned pages of `[addr, addr + len)` (rounded out to pages)
/// into custody before the program's call `why` runs on the range (see
/// the module docs). Returns how many page relocations were recorded (0:
/// nothing there was pinned).
///
/// Pages the range holds that no IOAS pins are left alone: the program's
/// call takes them, as the kernel's would (an unpinned page is pinned
/// again from the program's memory when needed). Failures to move a piece
/// (a mapping `mremap` refuses) are logged, and the piece stays where it
/// is; `Err` only for a range that wraps.
///
/// While nothing is pinned this is one load; a range far from every pin
/// is answered without allocating or taking the tables' locks.
pub fn take(addr: u64, len: u64, why: Reason) -> Result<u64> {
    if !active() || len == 0 {
        return Ok(0);
    }
    let ps = page_size();
    let lo = addr & !(ps - 1);
    let Some(hi) = addr
        .checked_add(len)
        .and_then(|e| e.checked_next_multiple_of(ps))
    else {
        crate::bail!(EINVAL, "custody: [{addr:#x}, +{len:#x}) wraps");
    };
    if !crate::pages::any_custodial_pinned_in(lo, hi) {
        return Ok(0);
    }
    Ok(held_still(|locks| take_locked(locks, lo, hi, why)))
}

/// Run `f` with custody's lock and every registered IO page table held
/// still (both locks for write, in address order), no lock-free access
/// copy in flight, and [`SEQ`] odd (device DMA that faults meanwhile is
/// made again after, [`dma`]).
fn held_still<T>(f: impl FnOnce(&mut [Held<'_>]) -> T) -> T {
    let _op = OP.lock();
    // in address order (the map's): the order every holder locks them in
    let tables: Vec<Arc<dyn Table>> = TABLES.lock().values().filter_map(Weak::upgrade).collect();
    let r = {
        let mut locks: Vec<Held<'_>> = tables.iter().map(|t| t.hold()).collect();
        // no lock-free copy may still use what the generations named
        crate::drain::wait();
        SEQ.fetch_add(1, Ordering::AcqRel);
        let r = f(&mut locks);
        SEQ.fetch_add(1, Ordering::AcqRel);
        drop(locks);
        r
    };
    // the last reference to a table may be this one: dropped unlocked
    drop(tables);
    r
}

/// Odd while custody moves pages (see [`dma`]).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// A device's DMA through a domain, `f`, made safe against custody moving
/// the pages it targets at that moment: a DMA that faults (nothing mapped,
/// or host memory unreachable) while or since a move ran is made again
/// once the move is done (a fault is all it can have seen: the domains
/// reach the pages' new place, a reservation nobody can read, before the
/// pages go there). Free unless the DMA faults. A write or read that
/// faulted half way is simply made again; an atomic faults before it
/// changes anything.
pub fn dma<T>(
    mut f: impl FnMut() -> std::result::Result<T, crate::domain::DmaFault>,
) -> std::result::Result<T, crate::domain::DmaFault> {
    use crate::domain::DmaFault;
    let mut seq = SEQ.load(Ordering::Acquire);
    let mut tries = 0;
    loop {
        match f() {
            Err(DmaFault::NotPresent { .. } | DmaFault::Host { .. })
                if tries < 64 && (seq & 1 == 1 || SEQ.load(Ordering::Acquire) != seq) =>
            {
                // wait for the move in progress, then once more
                drop(OP.lock());
                seq = SEQ.load(Ordering::Acquire);
                tries += 1;
            }
            r => return r,
        }
    }
}

/// `MREMAP_DONTUNMAP` (Linux 5.7; any mapping from 5.13).
const MREMAP_DONTUNMAP: i32 = 4;

/// `mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED [| MREMAP_DONTUNMAP], to)`:
/// errno on failure.
fn move_pages(from: u64, len: u64, to: u64, dontunmap: bool) -> std::result::Result<(), i32> {
    let flags =
        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | if dontunmap { MREMAP_DONTUNMAP } else { 0 };
    // SAFETY: moves the program's pages at `from` (which the caller found
    // pinned, inside one mapping) onto our own reservation at `to`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mremap,
            from as usize,
            len as usize,
            len as usize,
            flags,
            to as usize,
        )
    };
    if r as u64 == to {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL))
    }
}

/// The pinned runs of `objs` whose host pages lie in `[lo, hi)`, clipped
/// to it: `(object, first page, last page, host address of the first)`.
fn pinned_runs_in(objs: &[Arc<Pages>], lo: u64, hi: u64) -> Vec<(&Arc<Pages>, u64, u64, u64)> {
    let ps = page_size();
    let mut hits = Vec::new();
    for p in objs {
        for (f, l, h) in p.pinned_program_runs() {
            let e = h + (l - f + 1) * ps;
            let (s, e) = (h.max(lo), e.min(hi));
            if s < e {
                let pf = f + (s - h) / ps;
                hits.push((p, pf, pf + (e - s) / ps - 1, s));
            }
        }
    }
    hits
}

/// [`take`] with the tables held still: reserve, record, re-point, move.
/// Returns the relocations recorded.
///
/// The order keeps DMA off the program's memory: the pages objects and
/// the domains are pointed at the reservations (where DMA faults and is
/// made again, [`dma`]) before the pages move there. The pages move with
/// `MREMAP_DONTUNMAP`, which leaves the program's mapping in place, as it
/// was, with no page (it reads zeros if anonymous, the file if shared):
/// no hole another thread's `mmap` could take before the program's own
/// call runs, and for a discard exactly what it asked. Where the kernel
/// refuses that flag the pages move plainly (a hole; a discarded private
/// range is then mapped anew).
fn take_locked(locks: &mut [Held<'_>], lo: u64, hi: u64, why: Reason) -> u64 {
    let ps = page_size();
    let objs = crate::pages::live_custodial();
    let hits = pinned_runs_in(&objs, lo, hi);
    if hits.is_empty() {
        return 0;
    }
    // the address ranges to move: the union of the hits
    let mut ranges: Vec<(u64, u64)> = hits
        .iter()
        .map(|&(_, f, l, h)| (h, h + (l - f + 1) * ps))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(m) if s <= m.1 => m.1 = m.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    // each range cut at mapping boundaries (one mremap moves one mapping),
    // with a reservation to move to
    let maps = vmas(lo, hi);
    let mut pieces: Vec<Piece> = Vec::new();
    for (s, e) in merged {
        let mut cur = s;
        while cur < e {
            let vma = maps.iter().find(|v| v.start <= cur && cur < v.end).copied();
            let end = vma.map_or(e, |v| v.end.min(e));
            let private_anon = vma.is_some_and(|v| v.anon && !v.shared);
            // a discarded shared mapping's pages stay in its file; a
            // private file mapping is not covered (see the module docs)
            if why != Reason::Discard || private_anon {
                match Chunk::reserve(end - cur) {
                    Ok(chunk) => pieces.push(Piece {
                        start: cur,
                        end,
                        vma,
                        chunk,
                    }),
                    Err(e) => tracing::error!(
                        "custody: cannot reserve {:#x} bytes (errno {e}); pinned pages at {cur:#x} stay with the program's call",
                        end - cur
                    ),
                }
            }
            cur = end;
        }
    }
    // record where the pages go (or, `back`, that they stayed), per
    // object: the relocations and the objects that got them
    let record = |pieces: &[&Piece], back: bool| {
        let mut n = 0;
        let mut moved = HashSet::new();
        for &(p, f, l, h) in &hits {
            let e = h + (l - f + 1) * ps;
            for pc in pieces {
                let (s, e) = (h.max(pc.start), e.min(pc.end));
                if s >= e {
                    continue;
                }
                let pf = f + (s - h) / ps;
                let pl = pf + (e - s) / ps - 1;
                let off = s - pc.start;
                let k = if back {
                    p.relocate(pf, pl, s, None)
                } else {
                    p.relocate(pf, pl, pc.chunk.addr + off, Some((&pc.chunk, off / ps)))
                };
                if k > 0 {
                    n += k;
                    moved.insert(p.id());
                }
            }
        }
        (n, moved)
    };
    let all: Vec<&Piece> = pieces.iter().collect();
    let (mut n, moved) = record(&all, false);
    for l in locks.iter_mut() {
        l.repoint(&moved);
    }
    // move the pages
    let mut failed = Vec::new();
    for pc in &pieces {
        let (cs, ce) = (pc.start, pc.end);
        let len = ce - cs;
        let r = match move_pages(cs, len, pc.chunk.addr, true) {
            // refused (an older kernel, a mapping it does not take, the
            // commit charge of a private copy): a plain move
            Err(e) if e != libc::EFAULT => {
                move_pages(cs, len, pc.chunk.addr, false).map(|()| false)
            }
            r => r.map(|()| true),
        };
        match r {
            Ok(kept) => {
                if !kept && why == Reason::Discard {
                    let prot = pc
                        .vma
                        .map_or(libc::PROT_READ | libc::PROT_WRITE, |v| v.prot);
                    refill(cs, len, prot);
                }
                tracing::debug!(
                    "custody: pinned pages [{cs:#x}, {ce:#x}) moved to {:#x} before the program's {why:?}",
                    pc.chunk.addr
                );
            }
            Err(e) => {
                tracing::error!(
                    "custody: cannot move the pinned pages [{cs:#x}, {ce:#x}) (errno {e}); they stay with the program's call"
                );
                failed.push(pc);
            }
        }
    }
    if !failed.is_empty() {
        // those pages stayed where they were: point everything back
        let (k, back) = record(&failed, true);
        n -= k;
        for l in locks.iter_mut() {
            l.repoint(&back);
        }
    }
    for pc in &pieces {
        pc.chunk.trim_all();
    }
    n
}

/// One mapping's part of the range to move, and where it goes.
struct Piece {
    start: u64,
    end: u64,
    vma: Option<Vma>,
    chunk: Arc<Chunk>,
}

/// Map fresh private anonymous memory of `prot` at `[at, at + len)`, the
/// hole a plain move left in a discarded private range.
fn refill(at: u64, len: u64, prot: i32) {
    // SAFETY: refilling the hole we just made in the program's private
    // anonymous mapping, as the discard leaves it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            at as usize,
            len as usize,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if r as u64 != at {
        tracing::error!(
            "custody: cannot refill [{at:#x}, +{len:#x}) after moving its pinned pages out"
        );
    }
}

/// The program's `mremap(old, old_len, new_len, flags, new_addr)`, made by
/// `call` (which returns the new address, or `MAP_FAILED`'s value, as
/// `mremap` does), with the pinned pages it moves followed to their new
/// program address: in the kernel `mremap` moves page-table entries, so
/// the device and the program keep sharing the pinned pages, at the new
/// address for the program; here the engine re-points its users of those
/// pages there (a relocation in program memory, which a later `munmap`
/// there takes into custody as usual).
///
/// Before the call, as the kernel would unmap them: the tail a shrink
/// drops, and with `MREMAP_FIXED` the destination range, are taken into
/// custody ([`take`]). The call itself runs with the tables held still
/// and the IOMMU pointed at an inaccessible reservation (DMA meanwhile
/// faults and is made again, [`dma`]), then at where the pages went (back
/// where they were if the call failed).
/// `MREMAP_DONTUNMAP` moves the pages too (the old range stays, empty).
/// A call the kernel refuses for its arguments (unaligned, unknown
/// flags, overlapping ranges) is made without any of this; one that fails later (`ENOMEM`) has had those ranges taken
/// already, which leaves the program zero pages there.
pub fn follow_mremap(
    old: u64,
    old_len: u64,
    new_len: u64,
    flags: i32,
    new_addr: u64,
    call: impl FnOnce() -> u64,
) -> u64 {
    let ps = page_size();
    let known = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | MREMAP_DONTUNMAP;
    if !active()
        || !old.is_multiple_of(ps)
        || flags & !known != 0
        || (flags & (libc::MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
            && flags & libc::MREMAP_MAYMOVE == 0)
        || (flags & libc::MREMAP_FIXED != 0
            && (!new_addr.is_multiple_of(ps)
                || (old.saturating_add(old_len) > new_addr
                    && new_addr.saturating_add(new_len) > old)))
    {
        // nothing pinned, or a call the kernel refuses (EINVAL) before it
        // changes anything: nothing to take first
        return call();
    }
    if flags & libc::MREMAP_FIXED != 0 && new_len > 0 {
        let _ = take(new_addr, new_len, Reason::Replace);
    }
    if new_len < old_len {
        let _ = take(old + new_len, old_len - new_len, Reason::Unmap);
    }
    let keep = old_len.min(new_len);
    let lo = old & !(ps - 1);
    let hi = match old.checked_add(keep) {
        Some(e) if keep > 0 => e.next_multiple_of(ps),
        _ => return call(),
    };
    if !crate::pages::any_custodial_pinned_in(lo, hi) {
        return call();
    }
    held_still(|locks| {
        // the pinned runs the call moves
        let objs = crate::pages::live_custodial();
        let hits = pinned_runs_in(&objs, lo, hi);
        // point them at `base + (host - lo)` (in `chunk` when given)
        let point = |locks: &mut [Held<'_>], base: u64, chunk: Option<&Arc<Chunk>>| {
            let mut moved = HashSet::new();
            for &(p, f, l, h) in &hits {
                let off = h - lo;
                let c = chunk.map(|c| (c, off / ps));
                if p.relocate(f, l, base + off, c) > 0 {
                    moved.insert(p.id());
                }
            }
            for l in locks.iter_mut() {
                l.repoint(&moved);
            }
        };
        // While the call runs, DMA reaches an inaccessible reservation (a
        // fault, made again after, [`dma`]): never the range the call
        // leaves behind (zero pages after MREMAP_DONTUNMAP) nor what the
        // program maps there next.
        let parked = if hits.is_empty() {
            None
        } else {
            // (without a reservation, the call runs with the IOMMU still
            // pointing at the range)
            Chunk::reserve(hi - lo)
                .ok()
                .inspect(|c| point(locks, c.addr, Some(c)))
        };
        let r = call();
        let to = if r as i64 == -1 { lo } else { r };
        if parked.is_some() || to != lo {
            point(locks, to, None);
            tracing::debug!(
                "custody: the program moved pinned pages [{lo:#x}, {hi:#x}) to {r:#x}; the IOMMU follows"
            );
        }
        if let Some(c) = parked {
            c.trim_all();
        }
        r
    })
}

/// What custody can check alone: it holds pages only while some custodial
/// page is pinned. ([`crate::pages::check_accounting`] checks the rest:
/// the pages the chunks hold are exactly those relocations reach, and
/// only pinned pages are relocated.) Only meaningful while no other
/// thread pins, unpins or takes (tests call it between steps).
pub fn check() -> std::result::Result<(), String> {
    let held = held_pages();
    if held > 0 && !active() {
        return Err(format!(
            "custody holds {held} page(s) but no custodial page is pinned"
        ));
    }
    Ok(())
}
