//! Dirty pages per area, from every source the table knows: the narrow
//! interface a dirty-tracking session above the IOAS reads through (the
//! VFIO container's, `crate::vfio_compat::tracking`, which decides which
//! domains track and when).
//!
//! What is reported dirty is what was really written, from two sources:
//!
//! - **devices behind a domain**: an attached domain the caller names
//!   *precise* (its dirty tracking is on and was on since the last read)
//!   reports its own dirty bits. Any other domain cannot tell what its
//!   devices wrote: every area is reported dirty while it is attached.
//! - **accesses** (emulated devices copying or pinning by IOVA): the
//!   [`AccessWriteLog`](super::AccessWriteLog).
//!
//! Bits are reported per area, for the areas that lie wholly inside the
//! range asked for; the caller checks that the range cuts no area. Each
//! area's bits are lent to the caller's `deliver` while they sit in the
//! table's scratch words, not copied out: a read of a large area costs
//! one pass over its bits in the caller, not an allocation and two more.

use super::{AreaState, IoPagetable, State};
use crate::io_pagetable::DirtyBitmap;
use crate::Result;

/// The dirty bits of one area: `nbits` bits of `1 << pgshift` bytes from
/// `iova`, of which only the span of words holding set bits is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaDirty<'a> {
    /// IOVA of bit 0: the area's first IOVA rounded down to the page size.
    pub iova: u64,
    /// Bits (pages) the area spans.
    pub nbits: u64,
    /// Which word of the area's bitmap `words[0]` is: bit `i` of the area
    /// (page `i`) is bit `i % 64` of `words[i / 64 - first_word]`; the
    /// words outside `words` are zero.
    pub first_word: usize,
    /// The words from the first to the last one with a set bit (empty when
    /// nothing is dirty).
    pub words: &'a [u64],
}

impl AreaDirty<'_> {
    /// Whether page `i` of the area is dirty.
    pub fn bit(&self, i: u64) -> bool {
        (i / 64)
            .checked_sub(self.first_word as u64)
            .and_then(|w| self.words.get(w as usize))
            .is_some_and(|w| w >> (i % 64) & 1 != 0)
    }
}

impl IoPagetable {
    /// The live area that `start..=last` cuts, as `(iova, last)`: the one
    /// holding `start` when it begins before it, else the one holding
    /// `last` when it ends after it; `None` when the range holds whole
    /// areas only. Two lookups, not a walk of every area (a dirty read
    /// checks this first, and a container may hold many mappings).
    pub fn area_cut_by(&self, start: u64, last: u64) -> Option<(u64, u64)> {
        let st = self.state.read();
        let holding = |x: u64| {
            st.areas
                .range(..=x)
                .next_back()
                .filter(|(_, a)| a.last >= x && a.state == AreaState::Live)
                .map(|(&k, a)| (k, a.last))
        };
        holding(start)
            .filter(|&(k, _)| k < start)
            .or_else(|| holding(last).filter(|&(_, l)| l > last))
    }

    /// Put back the bits of `ad` that [`IoPagetable::read_area_dirty`]
    /// read and cleared but that could not be delivered (the user bitmap is
    /// not writable), the table's state read-locked by the caller: they go
    /// into the access write log, which the next read reports whatever the
    /// source was, while the area is still live at the same place. Nothing
    /// happens while the write log is off.
    fn put_back_locked(&self, st: &State, ad: &AreaDirty<'_>, pgshift: u32) {
        let live = st
            .areas
            .range(..=ad.iova.saturating_add((1u64 << pgshift) - 1))
            .next_back()
            .filter(|(&k, a)| a.state == AreaState::Live && k >= ad.iova)
            .map(|(&k, a)| (k, a.last));
        let Some((k, alast)) = live else {
            return;
        };
        let mut i = ad.first_word as u64 * 64;
        let end = ad.nbits.min((ad.first_word + ad.words.len()) as u64 * 64);
        while i < end {
            if !ad.bit(i) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < end && ad.bit(j + 1) {
                j += 1;
            }
            let s = (ad.iova + (i << pgshift)).max(k);
            let e = (ad.iova + (j << pgshift) + ((1u64 << pgshift) - 1)).min(alast);
            if s <= e {
                self.write_log.put_back(s, e);
            }
            i = j + 1;
        }
    }

    /// The dirty pages of every live area wholly inside `start..=last`, in
    /// pages of `1 << pgshift` bytes (`start` and every area's IOVA are
    /// multiples of it), clearing what was reported when `clear`.
    ///
    /// `precise(id)` says whether attached domain `id` (which must have
    /// dirty tracking) reports its own bits; every other domain's areas are
    /// reported whole (their bits cleared when `clear`). Domain errors are
    /// not fatal: a domain that fails to report (its tracking was switched
    /// off behind the caller's back) has its areas reported whole.
    ///
    /// Each area's bits go to `deliver`, area by area in IOVA order, while
    /// the table is read-locked (type1 too holds its lock across the
    /// `copy_to_user` of each mapping's bitmap). When `deliver` fails the
    /// read stops with its error: with `clear`, the bits of that area are
    /// put back (`put_back_locked`) and the areas after it were not read,
    /// so no dirty page is lost.
    pub fn read_area_dirty(
        &self,
        start: u64,
        last: u64,
        pgshift: u32,
        clear: bool,
        precise: impl Fn(u64) -> bool,
        mut deliver: impl FnMut(&AreaDirty<'_>) -> Result<()>,
    ) -> Result<()> {
        let attached = self.domains.read();
        let st = self.state.read();
        // Each area's bits are built in the table's zeroed scratch words
        // and lent to `deliver` from there; only the span of words that got
        // set bits is zeroed again: no allocation or zeroing in proportion
        // to the area.
        let mut scratch = self.dirty_scratch.take(0);
        for (&k, a) in st.areas.range(start..=last) {
            if a.last > last || a.state != AreaState::Live {
                continue;
            }
            let len = a.length(k);
            // bits count from the page holding the area's first byte
            let base = k & !((1u64 << pgshift) - 1);
            let nbits = ((a.last - base) >> pgshift) + 1;
            let nwords = nbits.div_ceil(64) as usize;
            if scratch.words.len() < nwords {
                scratch = self.dirty_scratch.take(nwords);
            }
            let words = &mut scratch.words[..nwords];
            let touched = {
                let mut bm = DirtyBitmap::new(base, a.last, pgshift, words);
                for (s, l) in self.write_log.read(k, a.last, clear) {
                    bm.record(s, l - s + 1);
                }
                for d in &attached.domains {
                    if d.dirty_tracking_supported() && precise(d.id()) {
                        if let Err(e) = d.read_and_clear_dirty(k, len, clear, Some(&mut bm)) {
                            tracing::debug!(
                                "area dirty: domain {} cannot report [{k:#x}, {:#x}]: {e}; all of it counts",
                                d.id(),
                                a.last
                            );
                            bm.record(k, len);
                        }
                    } else {
                        if d.dirty_tracking_supported() && clear {
                            let _ = d.read_and_clear_dirty(k, len, true, None);
                        }
                        bm.record(k, len);
                    }
                }
                bm.touched()
            };
            let (lo, span) = match touched {
                Some((lo, hi)) => (lo, lo..hi + 1),
                None => (0, 0..0),
            };
            let ad = AreaDirty {
                iova: base,
                nbits,
                first_word: lo,
                words: &words[span.clone()],
            };
            let r = deliver(&ad);
            if r.is_err() && clear {
                self.put_back_locked(&st, &ad, pgshift);
            }
            words[span].fill(0);
            if r.is_err() {
                scratch.give_back();
                return r;
            }
        }
        scratch.give_back();
        Ok(())
    }
}
