//! VFIO type1 dirty page tracking over one IO page table
//! (`VFIO_IOMMU_DIRTY_PAGES`, served by `crate::vfio_compat::dirty`).
//!
//! What is reported dirty is what was really written, from two sources:
//!
//! - **devices behind a domain**: an attached domain with dirty tracking
//!   (`Domain::dirty_tracking_supported`) reports its own dirty bits. A
//!   tracking session turns tracking on in every such domain at start (and
//!   in any that is attached later, at the next read; that first read
//!   reports the domain's areas whole, since writes before it were not
//!   tracked). A domain without dirty tracking cannot tell what its devices
//!   wrote: every area is reported dirty while it is attached (type1's rule
//!   for IOMMU-backed devices that do not report dirty pages).
//! - **accesses** (emulated devices copying or pinning by IOVA): the
//!   [`AccessWriteLog`](super::AccessWriteLog).
//!
//! Bits are reported per area, for the areas that lie wholly inside the
//! range asked for (type1 reports per mapping); the caller checks that the
//! range cuts no area.

use std::collections::BTreeSet;

use super::{AreaState, IoPagetable};
use crate::io_pagetable::DirtyBitmap;
use crate::Result;

/// The dirty bits of one area: `nbits` bits of `1 << pgshift` bytes from
/// `iova`, of which only the span of words holding set bits is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaDirty {
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
    pub words: Vec<u64>,
}

impl AreaDirty {
    /// Whether page `i` of the area is dirty.
    pub fn bit(&self, i: u64) -> bool {
        (i / 64)
            .checked_sub(self.first_word as u64)
            .and_then(|w| self.words.get(w as usize))
            .is_some_and(|w| w >> (i % 64) & 1 != 0)
    }

    /// The non-zero words as `(index in the area's bitmap, word)`, in order.
    pub fn set_words(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.words
            .iter()
            .enumerate()
            .filter(|(_, &x)| x != 0)
            .map(|(k, &x)| ((self.first_word + k) as u64, x))
    }
}

impl IoPagetable {
    /// Whether a type1 tracking session is on.
    pub fn type1_dirty_tracking(&self) -> bool {
        self.write_log.enabled()
    }

    /// Start a tracking session: dirty tracking on in every attached domain
    /// that has it (their dirty state cleared first), and the access write
    /// log on. A no-op when a session is on. On error the domains already
    /// switched are switched back and nothing is on.
    pub fn type1_dirty_start(&self) -> Result<()> {
        let mut tracked = self.write_log.tracked_domains.lock();
        if self.write_log.enabled() {
            return Ok(());
        }
        let domains = self.domains();
        let mut done: Vec<u64> = Vec::new();
        for d in domains.iter().filter(|d| d.dirty_tracking_supported()) {
            if let Err(e) = self.set_dirty_tracking(d.id(), true) {
                for &id in &done {
                    let _ = self.set_dirty_tracking(id, false);
                }
                return Err(e);
            }
            done.push(d.id());
        }
        *tracked = done.into_iter().collect();
        self.write_log.set_enabled(true);
        Ok(())
    }

    /// Stop the session: dirty tracking off in the domains it turned on, the
    /// access write log off and emptied. A no-op when no session is on.
    pub fn type1_dirty_stop(&self) {
        let mut tracked = self.write_log.tracked_domains.lock();
        if !self.write_log.enabled() {
            return;
        }
        for d in self.domains() {
            if tracked.contains(&d.id()) {
                if let Err(e) = self.set_dirty_tracking(d.id(), false) {
                    tracing::warn!("type1 dirty stop: domain {}: {e}", d.id());
                }
            }
        }
        tracked.clear();
        self.write_log.set_enabled(false);
    }

    /// Put back bits that [`IoPagetable::type1_dirty_read`] read and
    /// cleared but that could not be delivered (the user bitmap is not
    /// writable): they go into the access write log, which the next read
    /// reports whatever the source was, for the areas still live at the same
    /// place. Nothing happens when no session is on.
    pub fn type1_dirty_put_back(&self, areas: &[AreaDirty], pgshift: u32) {
        let st = self.state.read();
        for ad in areas {
            let live = st
                .areas
                .range(..=ad.iova.saturating_add((1u64 << pgshift) - 1))
                .next_back()
                .filter(|(&k, a)| a.state == AreaState::Live && k >= ad.iova)
                .map(|(&k, a)| (k, a.last));
            let Some((k, alast)) = live else {
                continue;
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
    }

    /// The dirty pages of every live area wholly inside `start..=last`, in
    /// pages of `1 << pgshift` bytes (`start` and every area's IOVA are
    /// multiples of it), clearing what was reported when `clear`.
    ///
    /// Domain errors are not fatal: a domain that fails to report (its
    /// tracking was switched off behind the session's back) has its areas
    /// reported whole, as a domain without tracking.
    pub fn type1_dirty_read(
        &self,
        start: u64,
        last: u64,
        pgshift: u32,
        clear: bool,
    ) -> Result<Vec<AreaDirty>> {
        // Adopt domains attached since the session started: tracking on now
        // (without any lock of ours held), their areas reported whole below.
        let mut fresh: BTreeSet<u64> = BTreeSet::new();
        {
            let mut tracked = self.write_log.tracked_domains.lock();
            for d in self.domains() {
                if d.dirty_tracking_supported() && !tracked.contains(&d.id()) {
                    match self.set_dirty_tracking(d.id(), true) {
                        Ok(()) => {
                            tracked.insert(d.id());
                        }
                        Err(e) => tracing::warn!("type1 dirty: domain {}: {e}", d.id()),
                    }
                    fresh.insert(d.id());
                }
            }
        }
        let tracked = self.write_log.tracked_domains.lock().clone();
        let attached = self.domains.read();
        let st = self.state.read();
        let mut out = Vec::new();
        // Each area's bits are built in a zeroed per-thread buffer, and only
        // the span of words that got set bits is copied out (and zeroed
        // again): no allocation or zeroing in proportion to the area.
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
                    let precise = d.dirty_tracking_supported()
                        && tracked.contains(&d.id())
                        && !fresh.contains(&d.id());
                    if precise {
                        if let Err(e) = d.read_and_clear_dirty(k, len, clear, Some(&mut bm)) {
                            tracing::debug!(
                                "type1 dirty: domain {} cannot report [{k:#x}, {:#x}]: {e}; all of it counts",
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
            let (first_word, words) = match touched {
                Some((lo, hi)) => {
                    let kept = words[lo..=hi].to_vec();
                    words[lo..=hi].fill(0);
                    (lo, kept)
                }
                None => (0, Vec::new()),
            };
            out.push(AreaDirty {
                iova: base,
                nbits,
                first_word,
                words,
            });
        }
        scratch.give_back();
        Ok(out)
    }
}
