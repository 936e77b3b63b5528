//! The free-IOVA index used by IOVA allocation, and small interval helpers.
//!
//! Intervals here are `start..=last` (inclusive `last`), in bytes of IOVA,
//! like the rest of the io_pagetable module.
//!
//! The index holds the *maximal* runs of IOVA that an allocation may use:
//! inside the allocation window `[PAGE_SIZE, u64::MAX - PAGE_SIZE]`, inside an
//! allowed range (when any are set), outside every reserved range and outside
//! every area. Two runs are never adjacent (they would have been merged), so
//! the index is a canonical function of the table state and
//! `check_invariants` can rebuild it from scratch and compare.

use std::collections::{BTreeMap, BTreeSet};

/// Maximal free runs, by start and by size.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct FreeIndex {
    /// start -> last of every free run.
    runs: BTreeMap<u64, u64>,
    /// (last - start, start) of every free run: the by-size index.
    by_size: BTreeSet<(u64, u64)>,
}

impl FreeIndex {
    /// The runs, in IOVA order.
    pub(super) fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|(&s, &l)| (s, l))
    }

    /// Whether the by-size index holds exactly the runs of the by-start map.
    pub(super) fn indexes_agree(&self) -> bool {
        self.runs.len() == self.by_size.len()
            && self
                .runs
                .iter()
                .all(|(&s, &l)| self.by_size.contains(&(l - s, s)))
    }

    fn insert_raw(&mut self, start: u64, last: u64) {
        debug_assert!(start <= last);
        self.runs.insert(start, last);
        self.by_size.insert((last - start, start));
    }

    fn remove_raw(&mut self, start: u64) -> Option<u64> {
        let last = self.runs.remove(&start)?;
        self.by_size.remove(&(last - start, start));
        Some(last)
    }

    /// Remove `start..=last` from the free runs (parts of it may not be free).
    /// O(log n + k) for k runs touched. A run cut on its right keeps its
    /// entry in the by-start map (only its by-size key moves): a map in free
    /// space is the common case and runs under the table's write lock.
    pub(super) fn carve(&mut self, start: u64, last: u64) {
        if let Some((&s, l)) = self.runs.range_mut(..start).next_back() {
            if *l >= start {
                // s < start, so start - 1 does not wrap
                let l = std::mem::replace(l, start - 1);
                self.by_size.remove(&(l - s, s));
                self.by_size.insert((start - 1 - s, s));
                if l > last {
                    self.insert_raw(last + 1, l);
                }
                if l >= last {
                    return; // runs are disjoint: nothing else is inside
                }
            }
        }
        while let Some((&s, &l)) = self.runs.range(start..=last).next() {
            self.remove_raw(s);
            if l > last {
                self.insert_raw(last + 1, l);
                break;
            }
        }
    }

    /// Add `start..=last` (which must not overlap any run) as free, merging
    /// it with the runs right before and after it. O(log n). Merging into
    /// the run before keeps that run's entry in the by-start map.
    pub(super) fn release(&mut self, start: u64, last: u64) {
        debug_assert!(start <= last);
        let mut l = last;
        if let Some(next) = last.checked_add(1) {
            if let Some(nl) = self.remove_raw(next) {
                l = nl;
            }
        }
        if let Some((&ps, pl)) = self.runs.range_mut(..start).next_back() {
            debug_assert!(*pl < start, "released run overlaps a free run");
            if pl.checked_add(1) == Some(start) {
                let old = std::mem::replace(pl, l);
                self.by_size.remove(&(old - ps, ps));
                self.by_size.insert((l - ps, ps));
                return;
            }
        }
        self.insert_raw(start, l);
    }

    /// Find room for `length` bytes with the allocation rule `fits`
    /// (`fits(start, last)` gives the IOVA to use in that run, if any).
    ///
    /// `guaranteed` is a run size (`last - start`) from which `fits` cannot
    /// fail: the smallest such run is found in O(log n). Only when there is
    /// none are the smaller runs that might still fit tried one by one.
    pub(super) fn find(
        &self,
        length: u64,
        guaranteed: Option<u64>,
        fits: impl Fn(u64, u64) -> Option<u64>,
    ) -> Option<u64> {
        let min = length - 1;
        if let Some(g) = guaranteed {
            for &(_, s) in self.by_size.range((g, 0)..) {
                if let Some(iova) = fits(s, self.runs[&s]) {
                    return Some(iova);
                }
                // Unreachable by construction of `guaranteed`; keep looking
                // rather than answer ENOSPC wrongly.
                debug_assert!(false, "run at {s:#x} of guaranteed size did not fit");
            }
            self.by_size
                .range((min, 0)..(g, 0))
                .find_map(|&(_, s)| fits(s, self.runs[&s]))
        } else {
            self.by_size
                .range((min, 0)..)
                .find_map(|&(_, s)| fits(s, self.runs[&s]))
        }
    }
}

/// Whether `a..=b` and `c..=d` share an IOVA.
pub(super) fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// `pieces` (disjoint) minus `cut` (the model [`subtract_merged`] is
/// checked against).
#[cfg(test)]
pub(super) fn subtract(pieces: Vec<(u64, u64)>, cut: (u64, u64)) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(pieces.len() + 1);
    for p in pieces {
        if !overlaps(p, cut) {
            out.push(p);
            continue;
        }
        if p.0 < cut.0 {
            out.push((p.0, cut.0 - 1));
        }
        if p.1 > cut.1 {
            out.push((cut.1 + 1, p.1));
        }
    }
    out
}

/// `cuts` sorted by start, overlapping and adjacent ones merged.
pub(super) fn merge_sorted(cuts: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut cs: Vec<(u64, u64)> = cuts.into_iter().collect();
    cs.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(cs.len());
    for c in cs {
        match merged.last_mut() {
            Some(m) if c.0 <= m.1.saturating_add(1) => m.1 = m.1.max(c.1),
            _ => merged.push(c),
        }
    }
    merged
}

/// Whether any of `merged` (sorted, disjoint: from [`merge_sorted`])
/// shares an IOVA with `s..=l`. O(log n).
pub(super) fn hits_merged(merged: &[(u64, u64)], s: u64, l: u64) -> bool {
    let i = merged.partition_point(|c| c.1 < s);
    i < merged.len() && merged[i].0 <= l
}

/// `pieces` (sorted, disjoint) minus every range of `merged` (sorted,
/// disjoint), in one sweep: O(pieces + merged).
pub(super) fn subtract_merged(pieces: &[(u64, u64)], merged: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(pieces.len() + merged.len());
    let mut j = 0;
    for &(start, l) in pieces {
        while j < merged.len() && merged[j].1 < start {
            j += 1;
        }
        let mut s = start;
        let mut alive = true;
        let mut k = j;
        while k < merged.len() && merged[k].0 <= l {
            let c = merged[k];
            if c.0 > s {
                out.push((s, c.0 - 1));
            }
            if c.1 >= l {
                alive = false;
                break;
            }
            s = s.max(c.1 + 1);
            k += 1;
        }
        if alive {
            out.push((s, l));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_pagetable_free_index_carve_release_merge() {
        let mut f = FreeIndex::default();
        f.release(10, 100);
        f.carve(20, 29);
        assert_eq!(f.runs().collect::<Vec<_>>(), vec![(10, 19), (30, 100)]);
        f.carve(0, 12);
        f.carve(95, 200);
        assert_eq!(f.runs().collect::<Vec<_>>(), vec![(13, 19), (30, 94)]);
        f.release(20, 29);
        assert_eq!(f.runs().collect::<Vec<_>>(), vec![(13, 94)]);
        assert!(f.indexes_agree());
        f.release(95, u64::MAX);
        f.carve(0, u64::MAX);
        assert_eq!(f.runs().count(), 0);
        assert!(f.indexes_agree());
    }

    /// Random carves and releases agree with a per-IOVA model, and the
    /// runs stay maximal with both indexes in step.
    #[test]
    fn io_pagetable_free_index_matches_model() {
        let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut rnd = |n: u64| next() % n;
        for _ in 0..200 {
            let mut f = FreeIndex::default();
            let mut free = [false; 96];
            for _ in 0..60 {
                let s = rnd(96);
                let l = (s + rnd(12)).min(95);
                if rnd(2) == 0 {
                    f.carve(s, l);
                    free[s as usize..=l as usize].fill(false);
                } else if free[s as usize..=l as usize].iter().all(|&b| !b) {
                    f.release(s, l);
                    free[s as usize..=l as usize].fill(true);
                }
                let mut want = Vec::new();
                for (i, &b) in free.iter().enumerate() {
                    match want.last_mut() {
                        Some((_, l)) if b && *l + 1 == i as u64 => *l = i as u64,
                        _ if b => want.push((i as u64, i as u64)),
                        _ => {}
                    }
                }
                assert_eq!(f.runs().collect::<Vec<_>>(), want);
                assert!(f.indexes_agree());
            }
        }
    }

    #[test]
    fn io_pagetable_subtract_pieces() {
        assert_eq!(
            subtract(vec![(0, 10), (20, 30)], (5, 25)),
            vec![(0, 4), (26, 30)]
        );
        assert_eq!(subtract(vec![(0, 10)], (0, 10)), vec![]);
        assert_eq!(subtract(vec![(0, u64::MAX)], (5, u64::MAX)), vec![(0, 4)]);
    }

    /// The one-sweep subtraction agrees with subtracting cut by cut.
    #[test]
    fn io_pagetable_subtract_merged_agrees() {
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut rnd = |n: u64| next() % n;
        for _ in 0..300 {
            let mut pieces = Vec::new();
            let mut at = rnd(4);
            for _ in 0..rnd(8) {
                let l = at + rnd(10);
                pieces.push((at, l));
                at = l + 2 + rnd(5);
            }
            let cuts: Vec<(u64, u64)> = (0..rnd(6))
                .map(|_| {
                    let s = rnd(120);
                    (s, s + rnd(15))
                })
                .collect();
            let mut want = pieces.clone();
            for &c in &cuts {
                want = subtract(want, c);
            }
            let merged = merge_sorted(cuts.iter().copied());
            assert_eq!(
                subtract_merged(&pieces, &merged),
                want,
                "{pieces:?} - {cuts:?}"
            );
            for s in 0..130 {
                let l = s + rnd(6);
                assert_eq!(
                    hits_merged(&merged, s, l),
                    cuts.iter().any(|&c| overlaps(c, (s, l)))
                );
            }
        }
        assert_eq!(
            subtract_merged(&[(0, u64::MAX)], &[(5, u64::MAX)]),
            vec![(0, 4)]
        );
    }
}
