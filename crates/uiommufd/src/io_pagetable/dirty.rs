//! Dirty tracking on an IO page table (the kernel's `iopt_set_dirty_tracking`,
//! `iopt_read_and_clear_dirty_data`, `iommufd_check_iova_range`, and the
//! bitmap addressing of iova_bitmap.c).
//!
//! # The bitmap
//!
//! A request names `[iova, iova + length)` and a `page_size`; bit `i` stands
//! for the IOVA `iova + (i << pgshift)` where `pgshift` is the index of the
//! lowest set bit of `page_size` (the kernel's `__ffs`: only the alignment
//! checks see the other bits of a `page_size` that is not a power of two).
//! Bit `i` is bit `i % 8` of byte `i / 8` of the user buffer, which is bit
//! `i % 64` of little-endian `u64` word `i / 64` whatever the buffer's
//! alignment. Bits are only ever **set**: the caller clears the buffer.
//!
//! # How a request runs
//!
//! The bits are built in local `u64` words, one window of at most
//! [`WINDOW_WORDS`] words at a time, in a per-thread buffer that stays
//! zeroed between reads (no allocation or zeroing in proportion to the
//! range). For each window, under the `state` read lock, the contiguous
//! live areas of the window's IOVA span are walked and the domain reports
//! each piece into the window ([`DirtyBitmap::record`] sets runs of bits a
//! word at a time; a domain skips what its summaries say is clean). The
//! lock is then dropped and the words the walk set
//! ([`DirtyBitmap::touched`]) are OR-ed into the user buffer: only the
//! bytes holding set bits (or a few clean words between them) are read,
//! OR-ed and written back, then those words are zeroed again. So the cost
//! is one domain call per area and window, the domain's own walk, and
//! work in proportion to the dirty words.
//!
//! # Errno rules (Linux 6.12)
//!
//! Range checks first: `EINVAL` for a zero `length`, `EOVERFLOW` when
//! `iova + length - 1` wraps, `EINVAL` when `iova` or `iova + length` is not
//! a multiple of the IOAS's IOVA alignment, `EINVAL` for a zero `page_size`,
//! `EINVAL` when `iova` or `iova + length` has a bit of `page_size - 1` set;
//! then `EOPNOTSUPP` when the domain has no dirty tracking.
//!
//! After that, 6.12 returns **success** whatever happens during the walk
//! (`iommu_read_and_clear_dirty` drops the walk's result): the walk stops at
//! the first IOVA not covered by a live area (the bits of the covered
//! prefix are reported) or at the first domain error (the mock's `EINVAL`
//! when tracking is off), and the ioctl still answers 0. The ioctl path
//! does the same and logs the reason at debug level; the Rust API
//! ([`IoPagetable::read_and_clear_dirty`]) returns that error instead.
//!
//! # The user bitmap, and why a failed call loses nothing
//!
//! Before a window's dirty state is read and cleared, the part of the user
//! buffer that window fills is made present for write
//! ([`user_bitmap_writable`], the kernel's pin with `FOLL_WRITE`): a buffer
//! that is read-only, `PROT_NONE`, unmapped, NULL or not a user address is
//! `EFAULT` with that window's dirty state untouched, whether or not
//! anything in it is dirty, and the windows before it were delivered. If
//! the write still fails (the buffer was unmapped behind our back), what
//! the window read and cleared is put back into the domain
//! ([`Domain::redirty`], which may mark a little more: whole domain pages)
//! before `EFAULT` is returned. So no dirty page is ever lost by a failed
//! call. This is the contract of the kernels that pin each window before
//! reading it; 6.12's `iova_bitmap` pins lazily, at the first bit it sets,
//! and silently drops (after clearing) the bits it cannot store, answering
//! 0, which we do not reproduce: it loses dirty pages of a migration.
//!
//! Where the kernel holds its IOVA lock for the whole request, we take the
//! `state` lock per window (user memory is never touched under it, see the
//! module documentation of `io_pagetable`): an unmap between two windows
//! takes the later windows' pages with it, as if it had come first.

use std::sync::Arc;

use super::{AreaState, IoPagetable, State};
use crate::domain::{DirtyBitmap, Domain};
use crate::user::UserMemory;
use crate::{bail, err, Error, Result};

/// The most `u64` words of bitmap one window builds (256 KiB: 2 Mi pages).
pub const WINDOW_WORDS: usize = 32 * 1024;

/// A dirty-bitmap request (the fields of `struct iommu_hwpt_get_dirty_bitmap`
/// but the bitmap itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirtyRequest {
    /// First IOVA.
    pub iova: u64,
    /// Bytes of IOVA.
    pub length: u64,
    /// IOVA per bit (its lowest set bit counts; see the module documentation).
    pub page_size: u64,
    /// Report without clearing the dirty state (the ioctl layer sets it
    /// for `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`).
    pub no_clear: bool,
}

impl DirtyRequest {
    /// Bits the bitmap of a valid request holds.
    pub fn nbits(&self) -> u64 {
        if self.length == 0 || self.page_size == 0 {
            return 0;
        }
        ((self.length - 1) >> self.page_size.trailing_zeros()) + 1
    }
}

/// A request that passed the kernel's `iommufd_check_iova_range`.
#[derive(Debug, Clone, Copy)]
struct Query {
    iova: u64,
    last: u64,
    pgshift: u32,
    /// Bits in the bitmap.
    nbits: u64,
}

impl Query {
    fn words(&self) -> usize {
        self.nbits.div_ceil(64) as usize
    }

    /// The IOVA span `first_bit .. first_bit + nbits` stands for.
    fn span(&self, first_bit: u64, nbits: u64) -> (u64, u64) {
        let start = self.iova + (first_bit << self.pgshift);
        (start, start + ((nbits << self.pgshift) - 1))
    }
}

/// Report the dirty IOVA of `start..=last` into `bm`, walking contiguous
/// live areas from the one holding `start` (the kernel's
/// `__iommu_read_and_clear_dirty` over `iopt_for_each_contig_area`).
/// `EINVAL` at the first IOVA no live area covers; a domain error as is.
fn walk(
    st: &State,
    domain: &dyn Domain,
    start: u64,
    last: u64,
    clear: bool,
    bm: &mut DirtyBitmap<'_>,
) -> Result<()> {
    let gap = |cur: u64| {
        err!(
            EINVAL,
            "GET_DIRTY_BITMAP: iova {cur:#x} is not mapped (or is being mapped or unmapped); the walk stops there"
        )
    };
    let first = match st.areas.range(..=start).next_back() {
        Some((&k, a)) if a.last >= start => k,
        _ => return Err(gap(start)),
    };
    let mut cur = start;
    for (&k, a) in st.areas.range(first..) {
        if k > cur || a.state != AreaState::Live {
            return Err(gap(cur));
        }
        let end = a.last.min(last);
        domain.read_and_clear_dirty(cur, end - cur + 1, clear, Some(bm))?;
        if end == last {
            return Ok(());
        }
        cur = end + 1;
    }
    Err(gap(cur))
}

/// `EOPNOTSUPP` unless `domain` has dirty tracking (the kernel's check for
/// `dirty_ops` before it sets tracking or reads dirty bits).
fn require_dirty_ops(domain: &dyn Domain) -> Result<()> {
    if !domain.dirty_tracking_supported() {
        bail!(
            EOPNOTSUPP,
            "domain {} was not allocated with dirty tracking",
            domain.id()
        );
    }
    Ok(())
}

impl IoPagetable {
    /// The attached domain with ID `domain_id` (`ENOENT` if none).
    fn dirty_domain(&self, domain_id: u64) -> Result<Arc<dyn Domain>> {
        self.domains
            .read()
            .domains
            .iter()
            .find(|d| d.id() == domain_id)
            .cloned()
            .ok_or_else(|| err!(ENOENT, "domain {domain_id} is not attached to this IOAS"))
    }

    /// The kernel's `iommufd_check_iova_range` (see the module errno rules).
    fn dirty_query(&self, req: &DirtyRequest) -> Result<Query> {
        let DirtyRequest {
            iova,
            length,
            page_size,
            ..
        } = *req;
        let last = super::range_last("GET_DIRTY_BITMAP:", iova, length)?;
        let end = last.wrapping_add(1);
        let align = self.state.read().iova_alignment;
        if iova & (align - 1) != 0 || end & (align - 1) != 0 {
            bail!(
                EINVAL,
                "GET_DIRTY_BITMAP: iova {iova:#x} and iova + length {end:#x} must be multiples of the IOAS's IOVA \
                 alignment {align:#x}"
            );
        }
        if page_size == 0 {
            bail!(EINVAL, "GET_DIRTY_BITMAP: page_size is zero");
        }
        let mask = page_size - 1;
        if iova & mask != 0 || end & mask != 0 {
            bail!(
                EINVAL,
                "GET_DIRTY_BITMAP: iova {iova:#x} and iova + length {end:#x} must have no bit of page_size - 1 \
                 ({mask:#x}) set"
            );
        }
        let pgshift = page_size.trailing_zeros();
        Ok(Query {
            iova,
            last,
            pgshift,
            nbits: ((last - iova) >> pgshift) + 1,
        })
    }

    /// Start or stop dirty tracking on the attached domain `domain_id` (the
    /// kernel's `iopt_set_dirty_tracking`): before enabling, the dirty state
    /// of every live area is cleared so that tracking starts from a clean
    /// snapshot.
    ///
    /// `ENOENT` when no such domain is attached, `EOPNOTSUPP` when it has no
    /// dirty tracking, then what the domain answers.
    pub fn set_dirty_tracking(&self, domain_id: u64, enable: bool) -> Result<()> {
        let domain = self.dirty_domain(domain_id)?;
        require_dirty_ops(domain.as_ref())?;
        let st = self.state.read();
        let mut words = 0;
        if enable {
            for (&k, a) in st.areas.iter().filter(|(_, a)| a.state == AreaState::Live) {
                domain.read_and_clear_dirty(k, a.length(k), true, None)?;
            }
            if let (Some((&k, _)), Some((_, a))) =
                (st.areas.first_key_value(), st.areas.last_key_value())
            {
                words = ((a.last - k) >> 12).saturating_add(1).div_ceil(64);
            }
        }
        domain.set_dirty_tracking(enable)?;
        drop(st);
        // Room for a read of everything mapped, at 4 KiB pages, made now
        // rather than by the first read.
        if words > 0 {
            self.dirty_scratch
                .warm(words.min(WINDOW_WORDS as u64) as usize);
        }
        Ok(())
    }

    /// Set the bits of the dirty pages of `[req.iova, req.iova + req.length)`
    /// in `bitmap` (bit `i` of word `w` is page `64 * w + i` of `page_size`
    /// from `iova`; [`DirtyRequest::nbits`] bits), clearing their dirty state unless
    /// `req.no_clear`. Other bits are left alone.
    ///
    /// The same core as `IOMMU_HWPT_GET_DIRTY_BITMAP`, but strict: after the
    /// ioctl's checks (`ENOENT` for a domain not attached here, the range rules of the module documentation,
    /// `EINVAL` when `bitmap` has fewer than `ceil(bits / 64)` words), a
    /// walk that stops early (`EINVAL` at an unmapped IOVA, the domain's
    /// error) is returned as an error; the bits found before are set.
    pub fn read_and_clear_dirty(
        &self,
        domain_id: u64,
        req: &DirtyRequest,
        bitmap: &mut [u64],
    ) -> Result<()> {
        let domain = self.dirty_domain(domain_id)?;
        let clear = !req.no_clear;
        let q = self.dirty_query(req)?;
        if bitmap.len() < q.words() {
            bail!(
                EINVAL,
                "dirty bitmap of {} words is too small for {} pages",
                bitmap.len(),
                q.nbits
            );
        }
        require_dirty_ops(domain.as_ref())?;
        let st = self.state.read();
        let mut bm = DirtyBitmap::new(q.iova, q.last, q.pgshift, &mut bitmap[..q.words()]);
        walk(&st, domain.as_ref(), q.iova, q.last, clear, &mut bm)
    }

    /// The range checks of a dirty-bitmap request alone (what the kernel
    /// checks before it looks at the domain's dirty ops).
    pub(crate) fn check_dirty_request(&self, req: &DirtyRequest) -> Result<()> {
        self.dirty_query(req).map(|_| ())
    }

    /// `IOMMU_HWPT_GET_DIRTY_BITMAP` on the attached domain `domain_id`:
    /// like [`IoPagetable::read_and_clear_dirty`] but OR-ing into the user
    /// buffer at `data` through `mem`, window by window, and answering as
    /// 6.12 does: a walk that stops early is a success (logged).
    /// `EFAULT` when the buffer cannot be read or written.
    pub fn read_and_clear_dirty_user(
        &self,
        domain_id: u64,
        req: &DirtyRequest,
        data: u64,
        mem: &dyn UserMemory,
    ) -> Result<()> {
        self.dirty_to_user(domain_id, req, data, mem, WINDOW_WORDS)
    }

    /// [`IoPagetable::read_and_clear_dirty_user`] with windows of `window`
    /// words.
    fn dirty_to_user(
        &self,
        domain_id: u64,
        req: &DirtyRequest,
        data: u64,
        mem: &dyn UserMemory,
        window: usize,
    ) -> Result<()> {
        let domain = self.dirty_domain(domain_id)?;
        let clear = !req.no_clear;
        let q = self.dirty_query(req)?;
        require_dirty_ops(domain.as_ref())?;
        let total_words = q.words();
        let total_bytes = q.nbits.div_ceil(8);
        // the kernel's iova_bitmap_alloc
        crate::inject::point("dirty.bitmap.alloc", libc::ENOMEM)?;
        let mut scratch = self.dirty_scratch.take(total_words.min(window));
        let mut first_word = 0usize;
        while first_word < total_words {
            let n = (total_words - first_word).min(window);
            let w = &mut scratch.words[..n];
            let first_bit = first_word as u64 * 64;
            let nbits = (q.nbits - first_bit).min(n as u64 * 64);
            let (start, last) = q.span(first_bit, nbits);
            let byte_end = ((first_word + n) as u64 * 8).min(total_bytes);
            writable_or_fault(mem, data, first_word as u64 * 8, byte_end)?;
            let (stopped, touched) = {
                let st = self.state.read();
                let mut bm = DirtyBitmap::new(start, last, q.pgshift, w);
                let r = walk(&st, domain.as_ref(), start, last, clear, &mut bm).err();
                (r, bm.touched())
            };
            // Only the words the walk set bits in are delivered, and then
            // cleared again (the scratch words stay zero between windows).
            if let Some((lo, hi)) = touched {
                let set = w[lo..=hi]
                    .iter()
                    .enumerate()
                    .filter(|(_, &x)| x != 0)
                    .map(|(i, &x)| ((first_word + lo + i) as u64, x));
                let delivered = or_bits_into_user(mem, data, 0, set).map_err(|e| {
                    err!(
                        EFAULT,
                        "GET_DIRTY_BITMAP: cannot update the bitmap at data {data:#x}: {}",
                        e.reason()
                    )
                });
                if let Err(e) = delivered {
                    if clear {
                        put_back(domain.as_ref(), start, last, q.pgshift, w);
                    }
                    return Err(e);
                }
                w[lo..=hi].fill(0);
            }
            if let Some(e) = stopped {
                tracing::debug!(
                    domain = domain_id,
                    "GET_DIRTY_BITMAP answers 0 as Linux 6.12 does, but stopped early: {e}"
                );
                scratch.give_back();
                return Ok(());
            }
            first_word += n;
        }
        scratch.give_back();
        Ok(())
    }
}

/// The zeroed words dirty reads build their bits in, one buffer per IO
/// page table, kept between reads and all zero whenever it is in the slot
/// (a read clears the words it set before returning it). So a read of a
/// large, mostly clean range neither allocates nor zeroes nor faults in
/// memory in proportion to it. Made (and its pages faulted in) when dirty
/// tracking is turned on ([`IoPagetable::set_dirty_tracking`]), for the
/// mapped span, up to [`WINDOW_WORDS`]; it grows to the largest window a
/// read needed and lives as long as the table.
///
/// A read takes the buffer out of the slot: one that panics or fails drops
/// it (the next read allocates afresh), and a concurrent read finds the
/// slot empty and allocates its own.
#[derive(Debug, Default)]
pub(super) struct ScratchSlot(parking_lot::Mutex<Vec<u64>>);

/// A buffer taken from a [`ScratchSlot`].
pub(super) struct Scratch<'a> {
    slot: &'a ScratchSlot,
    pub(super) words: Vec<u64>,
}

/// `n` zeroed words with every page written (a zeroed allocation may be
/// mapped lazily: its first use would take a page fault per page).
// `vec![0; n]` may come from `calloc` untouched: the point here is the writes.
#[allow(clippy::slow_vector_initialization)]
fn zeroed_words(n: usize) -> Vec<u64> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0);
    v
}

impl ScratchSlot {
    /// At least `n` zeroed words.
    pub(super) fn take(&self, n: usize) -> Scratch<'_> {
        let mut words = std::mem::take(&mut *self.0.lock());
        if words.len() < n {
            words = zeroed_words(n);
        }
        debug_assert!(words.iter().all(|&x| x == 0));
        Scratch { slot: self, words }
    }

    /// Make sure the slot holds at least `n` zeroed words.
    fn warm(&self, n: usize) {
        let s = self.take(n);
        s.give_back();
    }
}

impl Scratch<'_> {
    /// Back into its slot: the caller cleared every word it set. The larger
    /// of this and what the slot holds meanwhile is kept.
    pub(super) fn give_back(self) {
        let mut g = self.slot.0.lock();
        if g.len() < self.words.len() {
            *g = self.words;
        }
    }
}

/// Bytes `byte_lo..byte_end` of the user bitmap at `data` are writable
/// user memory (present for write, contents unchanged), or `EFAULT`: the
/// kernel's `FOLL_WRITE` pin of a bitmap's pages.
///
/// In our own address space with fault-safe copies on, each page is tried
/// with an atomic compare-exchange of one of its words with itself (a
/// locked `cmpxchg` always writes, so a page that is not writable faults,
/// and the value is never changed); else `UserMemory::populate`
/// (`MADV_POPULATE_WRITE`, a system call).
pub(crate) fn user_bitmap_writable(
    mem: &dyn UserMemory,
    data: u64,
    byte_lo: u64,
    byte_end: u64,
) -> Result<()> {
    let ps = crate::user::page_size();
    let span = data
        .checked_add(byte_lo)
        .zip(data.checked_add(byte_end))
        .and_then(|(lo, end)| Some((lo & !(ps - 1), end.checked_add(ps - 1)? & !(ps - 1))));
    let Some((lo, end)) = span else {
        return Err(Error::fault(
            "the bitmap runs past the end of the address space",
        ));
    };
    if lo == end {
        return Ok(());
    }
    if mem.direct() && crate::faultsafe::enabled() {
        if !crate::user::access_ok(lo, (end - lo) as usize) {
            return Err(Error::fault("the bitmap is not at a user address"));
        }
        let mut p = lo;
        while p < end {
            // SAFETY: fault-safe copies are on and `p` is 8-byte aligned
            // (a page boundary); the exchange of 0 for 0 changes nothing,
            // and a fault is an answer, not a crash.
            let r = unsafe { crate::faultsafe::compare_exchange(p as *mut u64, 0, 0) };
            if r == crate::faultsafe::Cas::Fault {
                return Err(err!(
                    EFAULT,
                    "the bitmap page at {p:#x} is not writable user memory"
                ));
            }
            p += ps;
        }
        return Ok(());
    }
    mem.populate(lo, end - lo, true)
}

/// Make bytes `byte_lo..byte_end` of the user bitmap at `data` present for
/// write without changing them (`EFAULT` when they are not all writable
/// user memory): the kernel's `FOLL_WRITE` pin of a window's bitmap pages.
fn writable_or_fault(mem: &dyn UserMemory, data: u64, byte_lo: u64, byte_end: u64) -> Result<()> {
    user_bitmap_writable(mem, data, byte_lo, byte_end).map_err(|e| {
        err!(
            EFAULT,
            "GET_DIRTY_BITMAP: the bitmap at data {data:#x} is not writable user memory (bytes \
             {byte_lo:#x}..{byte_end:#x}); nothing of this window was read or cleared: {}",
            e.reason()
        )
    })
}

/// Put the dirty state of window `w` (bit `i` is the page at
/// `start + (i << pgshift)`, clipped to `last`) back into `domain`, after
/// it was read and cleared but could not be delivered.
fn put_back(domain: &dyn Domain, start: u64, last: u64, pgshift: u32, w: &[u64]) {
    let mut i = 0u64;
    let nbits = w.len() as u64 * 64;
    while i < nbits {
        let word = w[(i / 64) as usize] >> (i % 64);
        if word == 0 {
            i = (i / 64 + 1) * 64;
            continue;
        }
        let b0 = i + u64::from(word.trailing_zeros());
        let mut b1 = b0;
        while b1 + 1 < nbits && w[((b1 + 1) / 64) as usize] >> ((b1 + 1) % 64) & 1 != 0 {
            b1 += 1;
        }
        let Some(s) = (b0 << pgshift).checked_add(start).filter(|&s| s <= last) else {
            break;
        };
        let e = (b1 << pgshift)
            .checked_add(start)
            .and_then(|e| e.checked_add((1u64 << pgshift) - 1))
            .map_or(last, |e| e.min(last));
        if let Err(err) = domain.redirty(s, e - s + 1) {
            tracing::warn!(
                "GET_DIRTY_BITMAP: cannot put back the dirty state of [{s:#x}, {e:#x}] into domain {}: {err}",
                domain.id()
            );
        }
        i = b1 + 1;
    }
}

/// Source words one read-OR-write of the user bitmap covers at most.
const OR_RUN_WORDS: usize = 64;

/// Zero words between two set words up to which one read-OR-write still
/// covers both (copying a few clean bytes costs less than another copy).
const OR_GAP_WORDS: u64 = 4;

/// OR bits into the user bitmap at `data`: `words` yields `(i, x)` in
/// increasing `i`, and bit `k` of `x` goes to bit `bit_off + 64 * i + k`
/// of the bitmap (bit `b` is bit `b % 8` of byte `b / 8`). Only bytes that
/// hold a set bit, or lie between two set bits a few words apart, are
/// read and written back — a byte-granular read-modify-write of up to
/// [`OR_RUN_WORDS`] words at a time, so the cost follows the set bits, not
/// the bitmap's size. `EFAULT` when the bitmap cannot be read or written
/// (the runs before were delivered).
pub(crate) fn or_bits_into_user(
    mem: &dyn UserMemory,
    data: u64,
    bit_off: u64,
    words: impl Iterator<Item = (u64, u64)>,
) -> Result<()> {
    let mut words = words.filter(|&(_, x)| x != 0).peekable();
    let mut run = [(0u64, 0u64); OR_RUN_WORDS];
    let mut buf = [0u8; OR_RUN_WORDS * 8 + 8];
    while let Some(first) = words.next() {
        run[0] = first;
        let mut n = 1;
        while n < OR_RUN_WORDS {
            match words.peek() {
                Some(&(i, _))
                    if i - run[n - 1].0 <= OR_GAP_WORDS && i - first.0 < OR_RUN_WORDS as u64 =>
                {
                    run[n] = words.next().expect("peeked");
                    n += 1;
                }
                _ => break,
            }
        }
        let run = &run[..n];
        // the bitmap bits of the lowest and highest set bit of the run
        let bit = |i: u64, k: u32| {
            i.checked_mul(64)
                .and_then(|b| b.checked_add(bit_off))
                .and_then(|b| b.checked_add(u64::from(k)))
        };
        let (i0, x0) = run[0];
        let (i1, x1) = run[n - 1];
        let (Some(b0), Some(b1)) = (
            bit(i0, x0.trailing_zeros()),
            bit(i1, 63 - x1.leading_zeros()),
        ) else {
            return Err(Error::fault(
                "the bitmap runs past the end of the address space",
            ));
        };
        let (byte0, byte1) = (b0 / 8, b1 / 8);
        let Some(addr) = data
            .checked_add(byte0)
            .filter(|a| a.checked_add(byte1 - byte0).is_some())
        else {
            return Err(Error::fault(
                "the bitmap runs past the end of the address space",
            ));
        };
        let bytes = &mut buf[..(byte1 - byte0 + 1) as usize];
        mem.read(addr, bytes).map_err(|e| {
            err!(
                EFAULT,
                "cannot read the bitmap at {addr:#x}: {}",
                e.reason()
            )
        })?;
        for &(i, x) in run {
            // A word that lands on whole bytes inside the run: one 8-byte
            // OR (the common case: a bitmap of whole words, a dense run).
            let whole = bit(i, 0)
                .and_then(|b| b.checked_sub(byte0 * 8))
                .filter(|at| at % 8 == 0)
                .map(|at| (at / 8) as usize)
                .and_then(|k| bytes.get_mut(k..k + 8));
            if let Some(dst) = whole {
                let v = u64::from_le_bytes((&*dst).try_into().expect("8 bytes")) | x;
                dst.copy_from_slice(&v.to_le_bytes());
                continue;
            }
            let tz = x.trailing_zeros();
            let at = bit(i, tz).expect("inside the run") - byte0 * 8;
            let mut v = u128::from(x >> tz) << (at % 8);
            let mut k = (at / 8) as usize;
            while v != 0 {
                bytes[k] |= v as u8;
                v >>= 8;
                k += 1;
            }
        }
        mem.write(addr, bytes).map_err(|e| {
            err!(
                EFAULT,
                "cannot write the bitmap at {addr:#x}: {}",
                e.reason()
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::RealBuf;
    use super::super::{IovaRequest, MapSource, Prot};
    use super::*;
    use crate::accounting::AccountMode;
    use crate::mock::domain::{mock_io_page_size, MockDomain, MOCK_APERTURE_START as A};
    use crate::pages::Pages;
    use crate::user::{page_size, SelfMemory};

    /// A fresh private anonymous read-write mapping of `n` host pages (the
    /// caller unmaps it).
    fn anon_pages(n: usize) -> *mut libc::c_void {
        // SAFETY: a new anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n * page_size() as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p
    }

    /// `npages` host pages mapped at `A` in an IO page table with one
    /// dirty-tracking mock domain, and the clearing read of all of them at
    /// the mock's page size.
    fn tracked(npages: u64) -> (RealBuf, IoPagetable, Arc<MockDomain>, DirtyRequest) {
        let len = npages * page_size();
        let buf = RealBuf::new(npages);
        let t = IoPagetable::new();
        let d = MockDomain::new_paging(false, true);
        t.add_domain(d.clone()).unwrap();
        map(&t, buf.addr(), len, A);
        t.set_dirty_tracking(d.id(), true).unwrap();
        let req = DirtyRequest {
            iova: A,
            length: len,
            page_size: mock_io_page_size(),
            no_clear: false,
        };
        (buf, t, d, req)
    }

    fn map(t: &IoPagetable, uptr: u64, len: u64, iova: u64) {
        let pages = Pages::new(Arc::new(SelfMemory), uptr, len, true, AccountMode::None);
        let src = MapSource {
            start_byte: uptr - pages.uptr(),
            pages,
            length: len,
        };
        t.map(vec![src], len, IovaRequest::Fixed(iova), Prot::RW)
            .unwrap();
    }

    /// Windows of a few words give the bytes one pass over a Rust buffer
    /// gives, at unaligned bitmap pointers, and clear what they report.
    #[test]
    fn windows_agree_with_one_pass() {
        let g = mock_io_page_size();
        let npages = 512;
        let len = npages * page_size();
        let buf = RealBuf::new(npages);
        let t = IoPagetable::new();
        let d = MockDomain::new_paging(false, true);
        t.add_domain(d.clone()).unwrap();
        // two contiguous areas, a gap of len / 4, then a third area
        map(&t, buf.addr(), len / 2, A);
        map(&t, buf.addr() + len / 2, len / 4, A + len / 2);
        map(&t, buf.addr() + 3 * len / 4, len / 4, A + len);
        let id = d.id();
        assert_eq!(d.mark_dirty(A, g).unwrap_err().errno().0, libc::EINVAL);
        t.set_dirty_tracking(id, true).unwrap();
        let mut rnd = crate::test_rng::xorshift(0x1234_5678_9abc_def1);
        for i in 0..(len + len / 4) / g {
            if rnd().is_multiple_of(3) {
                d.mark_dirty(A + i * g, g).unwrap();
            }
        }
        let cases = [
            (0, len, g, 1),
            (g, len - 2 * g, g, 2),
            (64 * g, len - 64 * g, 2 * g, 1),
            (3 * page_size(), len / 2, page_size(), 3),
            (0, len + len / 4, g, 1),
            (len / 2 - 8 * g, 16 * g, 8 * g, 1),
        ];
        for (off, length, ps, window) in cases {
            let req = DirtyRequest {
                iova: A + off,
                length,
                page_size: ps,
                no_clear: true,
            };
            let nbits = req.nbits();
            let mut want = vec![0u64; nbits.div_ceil(64) as usize];
            let strict = t.read_and_clear_dirty(id, &req, &mut want);
            assert_eq!(
                strict.is_ok(),
                off + length <= 3 * len / 4,
                "{off:#x} {length:#x}"
            );
            let want: Vec<u8> = want.iter().flat_map(|w| w.to_le_bytes()).collect();
            let nbytes = nbits.div_ceil(8) as usize;
            for skew in [0usize, 3] {
                let mut bytes = vec![0u8; nbytes + 16];
                bytes[skew + nbytes] = 0xa5; // past the end: never touched
                let data = bytes.as_mut_ptr() as u64 + skew as u64;
                t.dirty_to_user(id, &req, data, &SelfMemory, window)
                    .unwrap();
                assert_eq!(
                    &bytes[skew..skew + nbytes],
                    &want[..nbytes],
                    "{off:#x} {length:#x} {ps:#x}"
                );
                assert_eq!(bytes[skew + nbytes], 0xa5);
                assert!(bytes[..skew].iter().all(|&b| b == 0));
            }
        }
        // clearing through windows, then nothing is left
        let req = DirtyRequest {
            iova: A,
            length: len,
            page_size: g,
            no_clear: false,
        };
        let mut bytes = vec![0u8; (len / g / 8) as usize];
        t.dirty_to_user(id, &req, bytes.as_mut_ptr() as u64, &SelfMemory, 1)
            .unwrap();
        assert!(bytes.iter().any(|&b| b != 0));
        let mut again = vec![0u64; (len / g / 64) as usize];
        let r = t.read_and_clear_dirty(id, &req, &mut again);
        assert_eq!(r.unwrap_err().errno().0, libc::EINVAL, "the gap");
        assert!(again.iter().all(|&w| w == 0));
        // the third area was never reached: still dirty
        let req = DirtyRequest {
            iova: A + len,
            length: len / 4,
            ..req
        };
        let mut third = vec![0u64; (len / 4 / g / 64) as usize];
        t.read_and_clear_dirty(id, &req, &mut third).unwrap();
        assert!(third.iter().any(|&w| w != 0));
        t.unmap_all().unwrap();
        t.remove_domain(id);
    }

    /// Sparse and dense words OR-ed in at any bit offset set exactly the
    /// bits a bit-by-bit model sets, touch no byte outside the set bits'
    /// span, and keep the bits already there.
    #[test]
    fn or_bits_into_user_matches_a_model() {
        let mut rnd = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        for case in 0..60 {
            let nwords = 1 + rnd() % 300;
            let bit_off = match case % 3 {
                0 => 0,
                1 => rnd() % 64,
                _ => 64 * (rnd() % 5) + rnd() % 8,
            };
            let keep = rnd() % 10; // in tenths: how many words are zero
            let words: Vec<(u64, u64)> = (0..nwords)
                .map(|i| {
                    let v = if rnd() % 10 < keep {
                        0
                    } else {
                        match rnd() % 3 {
                            0 => u64::MAX,
                            1 => 1 << (rnd() % 64),
                            _ => rnd(),
                        }
                    };
                    (i, v)
                })
                .collect();
            let nbytes = ((bit_off + nwords * 64) / 8 + 16) as usize;
            let mut buf: Vec<u8> = (0..nbytes).map(|_| rnd() as u8 & 0x11).collect();
            let mut want = buf.clone();
            for &(i, v) in &words {
                for k in 0..64 {
                    if v >> k & 1 != 0 {
                        let b = bit_off + i * 64 + k;
                        want[(b / 8) as usize] |= 1 << (b % 8);
                    }
                }
            }
            or_bits_into_user(
                &SelfMemory,
                buf.as_mut_ptr() as u64,
                bit_off,
                words.iter().copied(),
            )
            .unwrap();
            assert_eq!(buf, want, "case {case}");
        }
        // nothing set: nothing read, even at an unusable address
        or_bits_into_user(&SelfMemory, 8, 0, [(0, 0), (5, 0)].into_iter()).unwrap();
        // a bitmap that cannot be read is EFAULT
        let e = or_bits_into_user(&SelfMemory, 8, 0, [(0, 1)].into_iter()).unwrap_err();
        assert_eq!(e.errno().0, libc::EFAULT);
    }

    /// The writability probe: writable pages pass with their contents
    /// unchanged, a read-only page, `PROT_NONE`, a hole or a kernel
    /// address is `EFAULT` — through fault-safe exchanges and through
    /// `populate` alike.
    #[test]
    fn the_bitmap_writability_probe() {
        assert!(crate::faultsafe::install());
        let ps = page_size() as usize;
        let p = anon_pages(4); // unmapped below
        let base = p as u64;
        // SAFETY: our own mapping: a value in page 0, page 1 read-only,
        // page 2 PROT_NONE, page 3 a hole.
        unsafe {
            (p as *mut u64).write(0x1234);
            assert_eq!(
                libc::mprotect(p.cast::<u8>().add(ps).cast(), ps, libc::PROT_READ),
                0
            );
            assert_eq!(
                libc::mprotect(p.cast::<u8>().add(2 * ps).cast(), ps, libc::PROT_NONE),
                0
            );
            assert_eq!(libc::munmap(p.cast::<u8>().add(3 * ps).cast(), ps), 0);
        }
        /// [`SelfMemory`] seen as foreign: the probe must use `populate`.
        #[derive(Debug)]
        struct Indirect;
        impl UserMemory for Indirect {
            fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
                SelfMemory.read(addr, buf)
            }
            fn write(&self, addr: u64, buf: &[u8]) -> Result<()> {
                SelfMemory.write(addr, buf)
            }
            fn populate(&self, addr: u64, len: u64, write: bool) -> Result<()> {
                SelfMemory.populate(addr, len, write)
            }
        }
        let psz = ps as u64;
        for mem in [&SelfMemory as &dyn UserMemory, &Indirect] {
            user_bitmap_writable(mem, base, 8, psz - 1).unwrap();
            user_bitmap_writable(mem, base, 0, 0).unwrap(); // empty
            for (lo, end) in [
                (0, psz + 1),
                (psz, psz + 8),
                (2 * psz, 2 * psz + 1),
                (3 * psz, 3 * psz + 8),
            ] {
                let e = user_bitmap_writable(mem, base, lo, end).unwrap_err();
                assert_eq!(e.errno().0, libc::EFAULT, "bytes {lo:#x}..{end:#x}");
            }
            let e = user_bitmap_writable(mem, u64::MAX - 4096, 0, 8).unwrap_err();
            assert_eq!(e.errno().0, libc::EFAULT);
            let e = user_bitmap_writable(mem, 0xffff_8000_0000_0000, 0, 8).unwrap_err();
            assert_eq!(e.errno().0, libc::EFAULT);
        }
        // SAFETY: page 0 of our mapping, still mapped and readable.
        assert_eq!(unsafe { (p as *const u64).read() }, 0x1234);
        // SAFETY: the pages of our mapping still mapped.
        unsafe { libc::munmap(p, 3 * ps) };
    }

    /// The scratch words stay zero between reads: after a read with many
    /// dirty pages, a read of the same range with none reports none, and a
    /// read whose delivery failed (its words dropped, not returned) does
    /// not leave bits for the next one.
    #[test]
    fn the_scratch_words_are_clean_for_the_next_read() {
        let g = mock_io_page_size();
        let (_buf, t, d, req) = tracked(256);
        let id = d.id();
        let nbytes = req.nbits().div_ceil(8) as usize;
        let read = |mem: &dyn UserMemory| {
            let mut bytes = vec![0u8; nbytes];
            let r = t.read_and_clear_dirty_user(id, &req, bytes.as_mut_ptr() as u64, mem);
            r.map(|()| bytes)
        };
        d.mark_dirty(A + 3 * g, 40 * g).unwrap();
        assert_eq!(read(&WritesFail).unwrap_err().errno().0, libc::EFAULT);
        let got = read(&SelfMemory).unwrap();
        let set: Vec<usize> = (0..nbytes * 8)
            .filter(|&b| got[b / 8] >> (b % 8) & 1 != 0)
            .collect();
        assert_eq!(set, (3..43).collect::<Vec<_>>(), "put back, then delivered");
        assert!(read(&SelfMemory).unwrap().iter().all(|&b| b == 0));
        d.mark_dirty(A + 100 * g, g).unwrap();
        let got = read(&SelfMemory).unwrap();
        let set: Vec<usize> = (0..nbytes * 8)
            .filter(|&b| got[b / 8] >> (b % 8) & 1 != 0)
            .collect();
        assert_eq!(set, vec![100]);
        t.unmap_all().unwrap();
        t.remove_domain(id);
    }

    /// User memory whose writes fail although the range checked writable
    /// (the bitmap unmapped by another thread between check and write).
    #[derive(Debug)]
    struct WritesFail;

    impl UserMemory for WritesFail {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
            SelfMemory.read(addr, buf)
        }
        fn write(&self, _: u64, _: &[u8]) -> Result<()> {
            Err(Error::fault("test: the bitmap went away"))
        }
        fn populate(&self, addr: u64, len: u64, write: bool) -> Result<()> {
            SelfMemory.populate(addr, len, write)
        }
    }

    /// A window whose bitmap is not writable is EFAULT before its dirty
    /// state is touched (the windows before it were delivered), and one
    /// whose write fails late is put back: nothing is lost either way.
    #[test]
    fn failed_windows_lose_nothing() {
        let (_buf, t, d, req) = tracked(64);
        let id = d.id();
        d.mark_dirty(A, req.length).unwrap();
        let nbits = req.nbits();
        assert!(nbits > 64, "two windows of one word");
        let peek = || {
            let mut all = vec![0u64; nbits.div_ceil(64) as usize];
            let r = DirtyRequest {
                no_clear: true,
                ..req
            };
            t.read_and_clear_dirty(id, &r, &mut all).unwrap();
            all
        };
        // late write failure: the first window is put back
        let mut bytes = vec![0u8; (nbits / 8) as usize];
        let e = t.dirty_to_user(id, &req, bytes.as_mut_ptr() as u64, &WritesFail, 1);
        assert_eq!(e.unwrap_err().errno().0, libc::EFAULT);
        assert!(peek().iter().all(|&w| w == !0), "{:x?}", peek());
        // the second window's bytes are read-only: the first is delivered
        let ps = page_size() as usize;
        let p = anon_pages(2); // unmapped below
                               // SAFETY: the second page of our own mapping.
        let rc = unsafe { libc::mprotect(p.cast::<u8>().add(ps).cast(), ps, libc::PROT_READ) };
        assert_eq!(rc, 0);
        let data = p as u64 + ps as u64 - 8;
        let e = t.dirty_to_user(id, &req, data, &SelfMemory, 1);
        assert_eq!(e.unwrap_err().errno().0, libc::EFAULT);
        // SAFETY: the last 8 bytes of the first (writable) page.
        let first = unsafe { std::ptr::read_unaligned(data as *const u64) };
        assert_eq!(first, !0, "the first window was delivered");
        let left = peek();
        assert_eq!(left[0], 0, "and cleared");
        assert!(
            left[1..].iter().all(|&w| w == !0),
            "the rest was not touched"
        );
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, 2 * ps) };
        t.unmap_all().unwrap();
        t.remove_domain(id);
    }
}
