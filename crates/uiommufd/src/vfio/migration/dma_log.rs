//! Device DMA logging (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`): the device
//! records the pages its own DMA writes land in, inside the IOVA ranges the
//! user asked for, and reports them into a user bitmap at any page size.
//!
//! The log is sparse: a chunk of 64 words of page bits (4096 pages) is
//! allocated only when a DMA write first lands in it, and kept until
//! logging stops, so its memory follows what the device wrote, never the
//! size of the ranges the user named, and a device writing the same memory
//! again allocates nothing. Each chunk has a summary word (a bit per
//! non-zero word), so a report visits the chunks in its range and, in
//! them, only the words with pages logged: its cost follows what was
//! written since the last report, and it frees nothing (freeing nodes a
//! device thread allocated made a report of a dozen words take ~10 µs).
//! Reports read-and-clear; when the user bitmap cannot be written the
//! taken bits are put back, so no write is ever lost (over-reporting is
//! harmless, under-reporting loses data). Intervals: `last` inclusive.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::user::UserMemory;
use crate::{bail, Result};

/// The most ranges one start accepts (the kernel's: a page of ranges).
pub const MAX_RANGES: usize = 4096 / 16;

#[derive(Debug)]
struct Log {
    pgshift: u32,
    /// Sorted, disjoint.
    ranges: Vec<(u64, u64)>,
    /// Chunk index (page >> 12) → its page bits.
    chunks: BTreeMap<u64, Box<Chunk>>,
}

/// The page bits of 4096 consecutive pages (of the log's page size).
#[derive(Debug)]
struct Chunk {
    /// Bit `i`: `words[i]` is not zero.
    nonzero: u64,
    /// Bit `k` of word `i`: page `64 * i + k` of the chunk was written.
    words: [u64; 64],
}

/// OR `bits` into word `w` (page >> 6) of a log's chunks.
fn set_word(chunks: &mut BTreeMap<u64, Box<Chunk>>, w: u64, bits: u64) {
    if bits == 0 {
        return;
    }
    let c = chunks.entry(w >> 6).or_insert_with(|| {
        Box::new(Chunk {
            nonzero: 0,
            words: [0; 64],
        })
    });
    c.words[(w & 63) as usize] |= bits;
    c.nonzero |= 1 << (w & 63);
}

/// One device's DMA log.
#[derive(Debug, Default)]
pub struct DmaLog {
    log: Mutex<Option<Log>>,
}

impl DmaLog {
    /// Start logging writes to `ranges` (`(iova, length)`, validated by
    /// the caller: aligned, disjoint, no overflow) at about `page_size`;
    /// returns the page size chosen. `EBUSY` when already started.
    pub fn start(&self, page_size: u64, ranges: &[(u64, u64)]) -> Result<u64> {
        let mut g = self.log.lock();
        if g.is_some() {
            bail!(EBUSY, "DMA logging is already started: stop it first");
        }
        let ps = if page_size.is_power_of_two() {
            page_size.clamp(4096, 1 << 30)
        } else {
            4096
        };
        let mut r: Vec<(u64, u64)> = ranges
            .iter()
            .filter(|&&(_, l)| l > 0)
            .map(|&(i, l)| (i, i + (l - 1)))
            .collect();
        r.sort_unstable();
        tracing::debug!("DMA logging started: page size {ps:#x}, {} ranges", r.len());
        *g = Some(Log {
            pgshift: ps.trailing_zeros(),
            ranges: r,
            chunks: BTreeMap::new(),
        });
        Ok(ps)
    }

    /// Stop logging (nothing to do when not started).
    pub fn stop(&self) {
        if self.log.lock().take().is_some() {
            tracing::debug!("DMA logging stopped");
        }
    }

    /// Whether logging is on.
    pub fn active(&self) -> bool {
        self.log.lock().is_some()
    }

    /// Record a DMA write of `len` bytes at `iova`.
    pub fn record(&self, iova: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut g = self.log.lock();
        let Some(log) = g.as_mut() else { return };
        let last = iova.saturating_add(len - 1);
        let i = log.ranges.partition_point(|r| r.1 < iova);
        for &(s, l) in &log.ranges[i..] {
            if s > last {
                break;
            }
            let (a, b) = (s.max(iova) >> log.pgshift, l.min(last) >> log.pgshift);
            // a word of pages at a time
            let mut p = a;
            while p <= b {
                let n = (64 - (p & 63)).min(b - p + 1);
                set_word(&mut log.chunks, p >> 6, (u64::MAX >> (64 - n)) << (p & 63));
                p += n;
            }
        }
    }

    /// `DMA_LOGGING_REPORT`: OR the pages written in `[iova, iova +
    /// length)` since the last report into the user bitmap at `bitmap`
    /// (one bit per `page_size`, a power of two ≥ 4 KiB, bit 0 = `iova`),
    /// and clear them from the log. `EINVAL` when logging is off, `EFAULT`
    /// when the bitmap cannot be read or written (the log keeps the bits).
    pub fn report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: u64,
        mem: &dyn UserMemory,
    ) -> Result<()> {
        if length == 0 {
            return Ok(());
        }
        let last = iova + (length - 1);
        let rshift = page_size.trailing_zeros();
        let mut g = self.log.lock();
        let Some(log) = g.as_mut() else {
            bail!(EINVAL, "DMA logging report while logging is not started");
        };
        let shift = log.pgshift;
        // Take the log pages overlapping the range.
        let (p0, p1) = (iova >> shift, last >> shift);
        let mut taken: Vec<(u64, u64)> = Vec::new();
        let (w0, w1) = (p0 >> 6, p1 >> 6);
        for (&c, chunk) in log.chunks.range_mut(p0 >> 12..=p1 >> 12) {
            // the chunk's words inside the range
            let mut nz = chunk.nonzero;
            if c == w0 >> 6 {
                nz &= u64::MAX << (w0 & 63);
            }
            if c == w1 >> 6 {
                nz &= u64::MAX >> (63 - (w1 & 63));
            }
            while nz != 0 {
                let i = nz.trailing_zeros() as usize;
                nz &= nz - 1;
                let w = (c << 6) | i as u64;
                let mut mask = u64::MAX;
                if w == w0 {
                    mask &= u64::MAX << (p0 & 63);
                }
                if w == w1 {
                    mask &= u64::MAX >> (63 - (p1 & 63));
                }
                let t = chunk.words[i] & mask;
                if t != 0 {
                    chunk.words[i] &= !t;
                    taken.push((w, t));
                }
                if chunk.words[i] == 0 {
                    chunk.nonzero &= !(1 << i);
                }
            }
        }
        // Each run of logged pages is a run of report bits; runs come in
        // order, so the report words are built in order, a word at a time.
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(w, bits) in &taken {
            let mut b = bits;
            while b != 0 {
                let start = b.trailing_zeros();
                let len = (!(b >> start)).trailing_zeros().min(64 - start);
                b &= !(u64::MAX >> (64 - len) << start);
                let (pa, pb) = (
                    (w << 6) | u64::from(start),
                    (w << 6) | u64::from(start + len - 1),
                );
                let s = (pa << shift).max(iova);
                let e = ((pb << shift) + ((1 << shift) - 1)).min(last);
                let (r0, r1) = ((s - iova) >> rshift, (e - iova) >> rshift);
                for word in r0 >> 6..=r1 >> 6 {
                    let mut m = u64::MAX;
                    if word == r0 >> 6 {
                        m &= u64::MAX << (r0 & 63);
                    }
                    if word == r1 >> 6 {
                        m &= u64::MAX >> (63 - (r1 & 63));
                    }
                    match out.last_mut() {
                        Some((lw, lb)) if *lw == word => *lb |= m,
                        _ => out.push((word, m)),
                    }
                }
            }
        }
        if let Err(e) = crate::io_pagetable::or_bits_into_user(mem, bitmap, 0, out.into_iter()) {
            for &(w, t) in &taken {
                set_word(&mut log.chunks, w, t);
            }
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::SelfMemory;

    #[test]
    fn records_inside_ranges_and_reports_at_any_page_size() {
        let l = DmaLog::default();
        assert_eq!(
            l.start(4096, &[(0x10000, 0x10000), (0x100000, 0x1000)])
                .unwrap(),
            4096
        );
        assert!(l.start(4096, &[(0, 4096)]).is_err());
        l.record(0x10ff8, 16); // pages 0x10 and 0x11
        l.record(0x100000, 1);
        l.record(0x200000, 4096); // outside every range
        let mut bm = [0u64; 4];
        l.report(0x10000, 0x10000, 4096, bm.as_mut_ptr() as u64, &SelfMemory)
            .unwrap();
        assert_eq!(bm[0], 0b11);
        // Page 0x100000 is outside this report: still logged.
        let mut bm2 = [0u64; 1];
        l.report(0x100000, 0x1000, 4096, bm2.as_mut_ptr() as u64, &SelfMemory)
            .unwrap();
        assert_eq!(bm2[0], 1);
        // Cleared by the reports; bits already set stay set.
        let mut bm3 = [0x8000u64; 1];
        l.report(0, 1 << 30, 1 << 21, bm3.as_mut_ptr() as u64, &SelfMemory)
            .unwrap();
        assert_eq!(bm3[0], 0x8000);
        // A larger report page: one bit for both 4 KiB pages.
        l.record(0x10000, 0x2000);
        let mut bm4 = [0u64; 1];
        l.report(0, 1 << 30, 1 << 16, bm4.as_mut_ptr() as u64, &SelfMemory)
            .unwrap();
        assert_eq!(bm4[0], 0b10);
        l.stop();
        assert!(l
            .report(0, 4096, 4096, bm4.as_mut_ptr() as u64, &SelfMemory)
            .is_err());
    }

    /// Reports at page sizes below, equal to and above the log's, over
    /// ranges that start anywhere, set exactly the bits a page-by-page
    /// model sets and leave the bits already in the bitmap.
    #[test]
    fn reports_agree_with_a_page_model() {
        let mut rnd = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        for case in 0..40 {
            let log_ps = 4096u64 << (case % 3 * 2); // 4 KiB, 16 KiB, 64 KiB
            let span = 1u64 << 26; // 64 MiB logged
            let l = DmaLog::default();
            assert_eq!(l.start(log_ps, &[(0, span)]).unwrap(), log_ps);
            let mut written: Vec<(u64, u64)> = Vec::new();
            for _ in 0..(1 + rnd() % 200) {
                let at = rnd() % span;
                let len = match rnd() % 3 {
                    0 => 1 + rnd() % 64,
                    1 => 1 + rnd() % (1 << 20),
                    _ => 4096,
                }
                .min(span - at);
                l.record(at, len);
                written.push((at, at + len - 1));
            }
            let rep_ps = 4096u64 << (rnd() % 6);
            let iova = (rnd() % (span / 2)) & !(rep_ps - 1);
            let length = ((span - iova) & !(rep_ps - 1))
                .min(1 + rnd() % span)
                .max(rep_ps)
                & !(rep_ps - 1);
            let last = iova + length - 1;
            let nbits = length / rep_ps;
            let mut bm = vec![0u64; nbits.div_ceil(64) as usize + 1];
            bm[0] |= 1 << 1; // kept
            let mut want = bm.clone();
            for &(s, e) in &written {
                // what the log holds: whole log pages
                let (s, e) = (s & !(log_ps - 1), e | (log_ps - 1));
                let (s, e) = (s.max(iova), e.min(last));
                if s > e {
                    continue;
                }
                for b in (s - iova) / rep_ps..=(e - iova) / rep_ps {
                    want[(b / 64) as usize] |= 1 << (b % 64);
                }
            }
            l.report(iova, length, rep_ps, bm.as_mut_ptr() as u64, &SelfMemory)
                .unwrap();
            assert_eq!(
                bm, want,
                "case {case}: log {log_ps:#x} report {rep_ps:#x} at {iova:#x}+{length:#x}"
            );
            // cleared: the same report again sets nothing new
            let mut again = vec![0u64; bm.len()];
            l.report(iova, length, rep_ps, again.as_mut_ptr() as u64, &SelfMemory)
                .unwrap();
            assert!(again.iter().all(|&w| w == 0), "case {case}");
        }
    }

    /// The chunk summaries: a word a report emptied is reported again once
    /// written again, a report of part of a word keeps the rest (and its
    /// summary bit), and writes across chunk boundaries land in both.
    #[test]
    fn chunk_summaries_follow_reports_and_writes() {
        let l = DmaLog::default();
        l.start(4096, &[(0, 1 << 30)]).unwrap();
        let report = |iova: u64, len: u64| {
            let mut bm = vec![0u64; (len >> 12).div_ceil(64) as usize];
            l.report(iova, len, 4096, bm.as_mut_ptr() as u64, &SelfMemory)
                .unwrap();
            let pages: Vec<u64> = (0..len >> 12)
                .filter(|&p| bm[(p / 64) as usize] >> (p % 64) & 1 != 0)
                .collect();
            pages
        };
        l.record(5 << 12, 1);
        assert_eq!(report(0, 1 << 30), vec![5]);
        assert!(report(0, 1 << 30).is_empty());
        l.record(5 << 12, 1); // the emptied word again
        l.record(70 << 12, 3 << 12); // pages 70..=72
        assert_eq!(report(71 << 12, 1 << 12), vec![0]); // page 71 only
        assert_eq!(report(0, 1 << 30), vec![5, 70, 72]);
        // across a chunk (4096 pages) and a word boundary
        l.record((4096 - 2) << 12, 4 << 12);
        assert_eq!(report(0, 1 << 30), vec![4094, 4095, 4096, 4097]);
        assert!(report(0, 1 << 30).is_empty());
    }

    #[test]
    fn an_unwritable_bitmap_loses_nothing() {
        let l = DmaLog::default();
        l.start(4096, &[(0, 1 << 20)]).unwrap();
        l.record(0x3000, 1);
        assert_eq!(
            l.report(0, 1 << 20, 4096, 8, &SelfMemory)
                .unwrap_err()
                .errno()
                .0,
            libc::EFAULT
        );
        let mut bm = [0u64; 4];
        l.report(0, 1 << 20, 4096, bm.as_mut_ptr() as u64, &SelfMemory)
            .unwrap();
        assert_eq!(bm[0], 1 << 3);
    }
}
