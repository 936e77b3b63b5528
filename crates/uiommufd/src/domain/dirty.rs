//! The dirty bitmap a domain records into (the kernel's
//! `iommu_dirty_bitmap` and the bit addressing of iova_bitmap.c): bit `i`
//! of a window stands for the IOVA `iova + (i << pgshift)`; and the switch
//! a domain turns tracking on and off with ([`DirtyTracking`]).

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{bail, Result};

/// A window of a dirty bitmap that a domain records into (the kernel's
/// `iommu_dirty_bitmap`): bit `i` of `words` stands for the IOVA
/// `iova + (i << pgshift)`; records outside `iova..=last` are clipped.
///
/// It remembers the span of words it set bits in ([`DirtyBitmap::touched`]),
/// so that a caller with a large, mostly clean window delivers and clears
/// only that span instead of the whole window.
#[derive(Debug)]
pub struct DirtyBitmap<'a> {
    iova: u64,
    last: u64,
    pgshift: u32,
    words: &'a mut [u64],
    /// Lowest and highest word a bit was set in (`lo > hi`: none yet).
    lo: usize,
    hi: usize,
}

impl<'a> DirtyBitmap<'a> {
    /// A window over `iova..=last` (`iova` a multiple of `1 << pgshift`),
    /// recording into `words`, which must hold
    /// `((last - iova) >> pgshift) + 1` bits (panics otherwise).
    pub fn new(iova: u64, last: u64, pgshift: u32, words: &'a mut [u64]) -> DirtyBitmap<'a> {
        assert!(pgshift < 64 && iova <= last);
        let nbits = ((last - iova) >> pgshift) + 1;
        assert!(
            words.len() as u64 >= nbits.div_ceil(64),
            "a dirty bitmap of {nbits} bits needs {} words, got {}",
            nbits.div_ceil(64),
            words.len()
        );
        DirtyBitmap {
            iova,
            last,
            pgshift,
            words,
            lo: usize::MAX,
            hi: 0,
        }
    }

    /// The words `lo..=hi` that hold every bit set through this window
    /// (bits of `words` set before it was made are not counted); `None`
    /// when nothing was recorded. Words inside the span may still be zero.
    pub fn touched(&self) -> Option<(usize, usize)> {
        (self.lo <= self.hi).then_some((self.lo, self.hi))
    }

    #[inline(always)]
    fn touch(&mut self, w0: usize, w1: usize) {
        self.lo = self.lo.min(w0);
        self.hi = self.hi.max(w1);
    }

    /// First IOVA the window covers.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Last IOVA the window covers (inclusive).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Bytes of IOVA per bit, as a shift.
    pub fn pgshift(&self) -> u32 {
        self.pgshift
    }

    /// Mark the 4 KiB pages of `mask` dirty at once: bit `k` of `mask[w]`
    /// is the page at `iova + (64 * w + k) * 4 KiB`. Applies only where the
    /// bitmap has a bit per 4 KiB page and the whole span of `mask` lies in
    /// the window (then it ORs words, shifted, into the bitmap and answers
    /// `true`); otherwise it records nothing and answers `false`, and the
    /// caller records runs with [`DirtyBitmap::record`].
    #[inline]
    pub fn record_pages_4k(&mut self, iova: u64, mask: &[u64]) -> bool {
        let span = (mask.len() as u64) << 18;
        if self.pgshift != 12
            || iova < self.iova
            || iova.checked_add(span - 1).is_none_or(|e| e > self.last)
        {
            return false;
        }
        let bit = (iova - self.iova) >> 12;
        let (w0, sh) = ((bit / 64) as usize, bit % 64);
        let (mut lo, mut hi) = (usize::MAX, 0);
        for (k, &m) in mask.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let low = m << sh;
            if low != 0 {
                self.words[w0 + k] |= low;
                lo = lo.min(w0 + k);
                hi = w0 + k;
            }
            if sh != 0 {
                let up = m >> (64 - sh);
                if up != 0 {
                    self.words[w0 + k + 1] |= up;
                    lo = lo.min(w0 + k + 1);
                    hi = w0 + k + 1;
                }
            }
        }
        if lo <= hi {
            self.touch(lo, hi);
        }
        true
    }

    /// Mark `[iova, iova + len)` dirty: every bit whose page overlaps it,
    /// within the window (the kernel's `iommu_dirty_bitmap_record`).
    #[inline]
    pub fn record(&mut self, iova: u64, len: u64) {
        if len == 0 {
            return;
        }
        let start = iova.max(self.iova);
        let end = iova.saturating_add(len - 1).min(self.last);
        if start > end {
            return;
        }
        let (first, last) = (
            (start - self.iova) >> self.pgshift,
            (end - self.iova) >> self.pgshift,
        );
        set_bits(self.words, first, last);
        self.touch((first / 64) as usize, (last / 64) as usize);
    }
}

/// Set bits `first..=last` of `words`, a word at a time.
#[inline]
fn set_bits(words: &mut [u64], first: u64, last: u64) {
    let (w0, w1) = ((first / 64) as usize, (last / 64) as usize);
    let m0 = !0u64 << (first % 64);
    let m1 = !0u64 >> (63 - last % 64);
    if w0 == w1 {
        words[w0] |= m0 & m1;
        return;
    }
    words[w0] |= m0;
    words[w0 + 1..w1].fill(!0);
    words[w1] |= m1;
}

/// Dirty IOVA on its way to a [`DirtyBitmap`], merged into runs: a driver
/// reports what it finds dirty with [`DirtyRuns::push`], in IOVA order as
/// far as its walk allows (a push that does not continue the current run
/// starts a new one, wherever it lies); a
/// run is recorded when the next one does not continue it, and the last by
/// [`DirtyRuns::finish`], so the bitmap sees one `record` per run rather
/// than one per page. Without a bitmap (a read that only clears) nothing
/// is recorded.
#[derive(Debug)]
pub struct DirtyRuns<'b, 'c> {
    bitmap: Option<&'b mut DirtyBitmap<'c>>,
    /// The current run `[start, last]`.
    run: Option<(u64, u64)>,
}

impl<'b, 'c> DirtyRuns<'b, 'c> {
    /// Runs into `bitmap`, or nowhere when it is `None`.
    pub fn new(bitmap: Option<&'b mut DirtyBitmap<'c>>) -> DirtyRuns<'b, 'c> {
        DirtyRuns { bitmap, run: None }
    }

    /// The bitmap, for a driver that records some dirty pages into it
    /// directly (the order of records does not matter to the bitmap).
    #[inline]
    pub fn bitmap(&mut self) -> Option<&mut DirtyBitmap<'c>> {
        self.bitmap.as_deref_mut()
    }

    /// `[start, last]` is dirty; it extends the current run when `start`
    /// follows that run's last byte.
    #[inline(always)]
    pub fn push(&mut self, start: u64, last: u64) {
        let Some(bm) = self.bitmap.as_deref_mut() else {
            return;
        };
        match &mut self.run {
            Some((_, rl)) if rl.wrapping_add(1) == start => *rl = last,
            r => {
                if let Some((rs, rl)) = *r {
                    bm.record(rs, rl - rs + 1);
                }
                *r = Some((start, last));
            }
        }
    }

    /// Record the last run.
    pub fn finish(mut self) {
        if let (Some(bm), Some((rs, rl))) = (self.bitmap.as_deref_mut(), self.run) {
            bm.record(rs, rl - rs + 1);
        }
    }
}

/// A domain's dirty-tracking switch, as drivers keep it: whether the domain
/// was allocated with dirty tracking (`IOMMU_HWPT_ALLOC_DIRTY_TRACKING`,
/// the kernel's `dirty_ops`) and whether tracking is on now (off at first).
#[derive(Debug)]
pub struct DirtyTracking {
    supported: bool,
    on: AtomicBool,
}

impl DirtyTracking {
    /// Tracking off; `supported` when the domain was allocated with dirty
    /// tracking.
    pub const fn new(supported: bool) -> DirtyTracking {
        DirtyTracking {
            supported,
            on: AtomicBool::new(false),
        }
    }

    /// Whether the domain can track ([`super::Domain::dirty_tracking_supported`]).
    #[inline]
    pub fn supported(&self) -> bool {
        self.supported
    }

    /// Whether tracking is on (an acquire load: it sees what was done
    /// before tracking was switched).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Whether tracking is on, with no ordering: for a translation's fast
    /// path, which only decides from it whether to set a dirty bit.
    #[inline]
    pub fn enabled_relaxed(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Switch tracking on or off ([`super::Domain::set_dirty_tracking`]):
    /// `EINVAL` when turning it on for a domain allocated without it;
    /// `domain` names the domain in the error.
    pub fn set(&self, enable: bool, domain: impl Display) -> Result<()> {
        if enable && !self.supported {
            bail!(EINVAL, "{domain} was not allocated with dirty tracking");
        }
        self.on.store(enable, Ordering::SeqCst);
        Ok(())
    }

    /// `EINVAL` unless tracking is on: `what` names the operation and
    /// `domain` the domain in the error.
    pub fn check_enabled(&self, what: &str, domain: impl Display) -> Result<()> {
        if !self.enabled() {
            bail!(EINVAL, "{what}: dirty tracking is not enabled on {domain}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_runs_merge_and_record_every_run() {
        let mut words = [0u64; 1];
        let mut bm = DirtyBitmap::new(0, (64 << 12) - 1, 12, &mut words);
        let mut runs = DirtyRuns::new(Some(&mut bm));
        runs.push(0, 0xfff);
        runs.push(0x1000, 0x2fff); // continues the run
        runs.push(0x5000, 0x5fff); // a new one: the first is recorded
        runs.push(0x6000, 0x6fff);
        runs.push(0x3f000, 0x3ffff); // the last page, recorded by finish
        runs.finish();
        assert_eq!(words[0], 0b111 | 0b11 << 5 | 1 << 63);
        // without a bitmap: nothing to record, nothing fails
        let mut none = DirtyRuns::new(None);
        assert!(none.bitmap().is_none());
        none.push(0, 0xfff);
        none.finish();
    }

    #[test]
    fn dirty_tracking_switch() {
        let plain = DirtyTracking::new(false);
        assert!(!plain.supported());
        assert_eq!(plain.set(true, "d").unwrap_err().errno().0, libc::EINVAL);
        plain.set(false, "d").unwrap();
        assert!(!plain.enabled());
        let t = DirtyTracking::new(true);
        assert!(t.supported() && !t.enabled());
        let e = t.check_enabled("read dirty", "domain 7").unwrap_err();
        assert_eq!(e.errno().0, libc::EINVAL);
        assert!(e.to_string().contains("read dirty"), "{e}");
        t.set(true, "d").unwrap();
        assert!(t.enabled() && t.enabled_relaxed());
        t.check_enabled("read dirty", "d").unwrap();
        t.set(false, "d").unwrap();
        assert!(!t.enabled() && !t.enabled_relaxed());
    }

    /// Word-at-a-time recording of 4 KiB pages sets exactly what recording
    /// each page would, at any bit offset of the window, and declines
    /// (recording nothing) outside the window or at another page size.
    #[test]
    fn record_pages_4k_matches_record() {
        let mut rnd = crate::test_rng::xorshift(0x1234_5678_9abc_def1);
        for _ in 0..500 {
            let win = (rnd() % 200) << 12;
            let nwords = 1 + (rnd() % 8) as usize;
            let mask: Vec<u64> = (0..nwords)
                .map(|_| match rnd() % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    _ => rnd(),
                })
                .collect();
            let at = win + ((rnd() % 300) << 12);
            let last = win + (1000 << 12) - 1;
            let mut a = vec![0u64; 1000usize.div_ceil(64)];
            let mut b = a.clone();
            let fits = at + ((nwords as u64) << 18) - 1 <= last;
            let mut bm_a = DirtyBitmap::new(win, last, 12, &mut a);
            let did = bm_a.record_pages_4k(at, &mask);
            let touched = bm_a.touched();
            assert_eq!(did, fits);
            // the span covers every word set, and starts and ends at one
            let set: Vec<usize> = (0..a.len()).filter(|&i| a[i] != 0).collect();
            match (touched, set.first(), set.last()) {
                (None, None, None) => {}
                (Some((lo, hi)), Some(&f), Some(&l)) => assert_eq!((lo, hi), (f, l)),
                other => panic!("touched span {other:?}"),
            }
            if fits {
                let mut bm = DirtyBitmap::new(win, last, 12, &mut b);
                for (w, &m) in mask.iter().enumerate() {
                    for k in 0..64 {
                        if m & 1 << k != 0 {
                            bm.record(at + ((w as u64 * 64 + k) << 12), 4096);
                        }
                    }
                }
            }
            assert_eq!(a, b);
        }
        // another page size: declined
        let mut w = [0u64; 8];
        assert!(!DirtyBitmap::new(0, (1 << 30) - 1, 21, &mut w).record_pages_4k(0, &[1]));
        assert_eq!(w, [0; 8]);
        // starting before the window: declined
        let mut w = [0u64; 4];
        assert!(!DirtyBitmap::new(1 << 12, 200 << 12, 12, &mut w).record_pages_4k(0, &[1]));
    }

    #[test]
    fn touched_spans_only_what_was_recorded() {
        let mut w = [0u64; 8];
        let mut bm = DirtyBitmap::new(0, 512 * 4096 - 1, 12, &mut w);
        assert_eq!(bm.touched(), None);
        bm.record(1 << 40, 4096); // outside: nothing
        assert_eq!(bm.touched(), None);
        bm.record(200 * 4096, 4096);
        assert_eq!(bm.touched(), Some((3, 3)));
        bm.record(63 * 4096, 2 * 4096);
        assert_eq!(bm.touched(), Some((0, 3)));
        bm.record(500 * 4096, 1 << 30);
        assert_eq!(bm.touched(), Some((0, 7)));
    }

    #[test]
    fn set_bits_spans_words() {
        let mut w = [0u64; 4];
        set_bits(&mut w, 3, 3);
        assert_eq!(w, [8, 0, 0, 0]);
        set_bits(&mut w, 62, 129);
        assert_eq!(w, [8 | 3 << 62, !0, 3, 0]);
        set_bits(&mut w, 192, 255);
        assert_eq!(w[3], !0);
    }

    #[test]
    fn record_clips_to_the_window() {
        let mut w = [0u64; 2];
        // 128 pages of 4 KiB from 0x10000
        let mut bm = DirtyBitmap::new(0x10000, 0x10000 + 128 * 4096 - 1, 12, &mut w);
        bm.record(0, 0x10000 + 4096); // only page 0 is inside
        bm.record(0x10000 + 127 * 4096 + 5, 1 << 40); // last page
        bm.record(0x10000 + 10 * 4096 + 1, 1); // one byte: page 10
        bm.record(0x10000 + 20 * 4096 - 1, 2); // straddles pages 19 and 20
        bm.record(u64::MAX - 10, 100); // outside, must not overflow
        assert_eq!(bm.touched(), Some((0, 1)));
        assert_eq!(w[0], 1 | 1 << 10 | 3 << 19);
        assert_eq!(w[1], 1 << 63);
    }
}
