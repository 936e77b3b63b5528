//! The VT-d domain against a reference model: random map / unmap (whole,
//! partial, across large leaves) / DMA write and read translations (with
//! and without an IOTLB) / dirty read (clear and no-clear) / redirty
//! sequences, checked step by step.
//!
//! The model keeps one entry per 4 KiB page (host address, permissions)
//! and the set of pages written while tracking. The domain may choose its
//! leaf sizes; the model checks that each leaf it reports is legal (aligned,
//! wholly mapped to one host-contiguous range with one permission) and
//! that its D bit is set exactly when some page in it was written. A dirty
//! read must report exactly the leaves holding written pages, clipped to
//! the range, and a clearing read forgets those whole leaves, as the
//! kernel's driver does. IOVA comes from two 64 MiB windows: the start of
//! a 39-bit aperture and its very end (maps may run past it: `EINVAL`).
//! 1 GiB leaves are covered by the unit tests (`vtd::tests`).
//! Host addresses are made up: nothing dereferences them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use uiommufd::domain::{Domain, HostAddr, Iova};
use uiommufd::plumbing::io_pagetable::DirtyBitmap;
use uiommufd::vtd::{Iotlb, VtdDomain};
use uiommufd::Prot;
use uiommufd_testkit::set_bits;

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const WIN: u64 = 64 << 20;
const AW: u32 = 39;
const TOP: u64 = 1 << AW;
const HOST: u64 = 0x5000_0000_0000;

#[derive(Debug, Clone)]
enum Op {
    Map {
        high: bool,
        page: u64,
        npages: u64,
        /// host offset in pages from the IOVA's own (0: same 2 MiB phase)
        shift: u64,
        write: bool,
        max_pgsize: u64,
    },
    Unmap {
        high: bool,
        page: u64,
        npages: u64,
    },
    Access {
        high: bool,
        page: u64,
        off: u64,
        len: u64,
        write: bool,
        cached: bool,
    },
    Dirty {
        high: bool,
        page: u64,
        npages: u64,
        clear: bool,
    },
    Redirty {
        high: bool,
        page: u64,
        npages: u64,
    },
}

fn base(high: bool) -> u64 {
    if high {
        TOP - WIN
    } else {
        0
    }
}

fn op() -> impl Strategy<Value = Op> {
    let page = || prop_oneof![0..WIN / K4, (0..(WIN / M2)).prop_map(|m| m * 512)];
    let npages = || prop_oneof![1..8u64, 1..1200u64, Just(512u64), Just(1024u64)];
    prop_oneof![
        4 => (any::<bool>(), page(), npages(), prop_oneof![Just(0u64), 1..3u64], any::<bool>(),
              prop_oneof![Just(K4), Just(M2), Just(u64::MAX)])
            .prop_map(|(high, page, npages, shift, write, max_pgsize)| Op::Map {
                high, page, npages, shift, write, max_pgsize
            }),
        2 => (any::<bool>(), page(), npages())
            .prop_map(|(high, page, npages)| Op::Unmap { high, page, npages }),
        4 => (any::<bool>(), page(), 0..K4, 1..3 * K4, any::<bool>(), any::<bool>())
            .prop_map(|(high, page, off, len, write, cached)| Op::Access {
                high, page, off, len, write, cached
            }),
        2 => (any::<bool>(), page(), npages(), any::<bool>())
            .prop_map(|(high, page, npages, clear)| Op::Dirty { high, page, npages, clear }),
        1 => (any::<bool>(), page(), 1..4u64)
            .prop_map(|(high, page, npages)| Op::Redirty { high, page, npages }),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// page IOVA -> (host address, writable)
    pages: BTreeMap<u64, (u64, bool)>,
    /// pages written while tracking
    dirty: BTreeSet<u64>,
}

/// The leaf the domain uses for `iova`: (first IOVA, size).
fn leaf_of(d: &VtdDomain, iova: u64) -> Option<(u64, u64)> {
    d.leaf(iova).map(|(_, size, ..)| (iova & !(size - 1), size))
}

impl Model {
    fn leaf_dirty(&self, start: u64, size: u64) -> bool {
        self.dirty.range(start..start + size).next().is_some()
    }

    /// Every page the domain maps agrees, and every leaf is legal.
    fn check(&self, d: &VtdDomain, pages: impl Iterator<Item = u64>) -> Result<(), TestCaseError> {
        let mut seen_leaf = BTreeSet::new();
        for p in pages {
            let want = self.pages.get(&p);
            let have = d.leaf(p);
            match (want, have) {
                (None, None) => {}
                (Some(&(host, w)), Some((lhost, size, r, lw, ld))) => {
                    let start = p & !(size - 1);
                    prop_assert_eq!(d.iova_to_phys(Iova(p + 5)), Some(HostAddr(host + 5)));
                    prop_assert!(r);
                    prop_assert_eq!(lw, w, "permission of {:#x}", p);
                    if !seen_leaf.insert(start) {
                        continue;
                    }
                    prop_assert_eq!(lhost + (p - start), host);
                    prop_assert_eq!(lhost % size, 0, "leaf at {:#x} misaligned host", start);
                    if size > K4 {
                        for q in (start..start + size).step_by(K4 as usize) {
                            prop_assert_eq!(
                                self.pages.get(&q).copied(),
                                Some((lhost + (q - start), w)),
                                "leaf [{:#x}, +{:#x}) covers page {:#x}",
                                start,
                                size,
                                q
                            );
                        }
                    }
                    prop_assert_eq!(ld, self.leaf_dirty(start, size), "D of leaf {:#x}", start);
                }
                (w, h) => prop_assert!(false, "page {:#x}: model {:x?}, domain {:x?}", p, w, h),
            }
        }
        Ok(())
    }

    /// Before a partial unmap of `[first, last]`: the leaves it cuts are
    /// split with their D bit copied to every piece.
    fn spread_cut_leaves(&mut self, d: &VtdDomain, first: u64, last: u64) {
        for at in [first, last] {
            if let Some((s, size)) = leaf_of(d, at) {
                if size > K4 && (s < first || s + size - 1 > last) && self.leaf_dirty(s, size) {
                    self.dirty.extend((s..s + size).step_by(K4 as usize));
                }
            }
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let d: Arc<VtdDomain> = VtdDomain::new(AW, true).unwrap();
    d.set_dirty_tracking(true).unwrap();
    let mut tlb = Iotlb::with_slots(d.clone(), 16);
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Map {
                high,
                page,
                npages,
                shift,
                write,
                max_pgsize,
            } => {
                let iova = base(high) + page * K4;
                let len = npages * K4;
                let host = HOST + iova % (1 << 30) + shift * K4;
                let prot = Prot { read: true, write };
                let r = d.map(Iova(iova), HostAddr(host), len, prot, max_pgsize);
                let in_ap = iova + len <= TOP;
                let free = m.pages.range(iova..iova + len).next().is_none();
                match r {
                    Ok(()) => {
                        prop_assert!(in_ap && free, "map [{:#x}, +{:#x}) succeeded", iova, len);
                        for i in 0..npages {
                            m.pages.insert(iova + i * K4, (host + i * K4, write));
                        }
                        // large leaves only where max_pgsize allows
                        if max_pgsize == K4 {
                            prop_assert_eq!(d.leaf(iova).unwrap().1, K4);
                        }
                    }
                    Err(e) => {
                        let want = if !in_ap { libc::EINVAL } else { libc::EEXIST };
                        prop_assert!(!(in_ap && free), "map failed: {}", e);
                        prop_assert_eq!(e.errno().0, want);
                    }
                }
                m.check(
                    &d,
                    (iova.saturating_sub(K4)..(iova + len + K4).min(TOP)).step_by(K4 as usize),
                )?;
            }
            Op::Unmap { high, page, npages } => {
                let iova = base(high) + page * K4;
                let len = npages * K4;
                let last = (iova + len - 1).min(TOP - 1);
                m.spread_cut_leaves(&d, iova, last);
                let n = d.unmap(iova, len);
                let keys: Vec<u64> = m.pages.range(iova..=last).map(|(&k, _)| k).collect();
                prop_assert_eq!(n, keys.len() as u64 * K4);
                for k in keys {
                    m.pages.remove(&k);
                    m.dirty.remove(&k);
                }
                m.check(
                    &d,
                    (iova.saturating_sub(M2)..(last + M2).min(TOP)).step_by(K4 as usize),
                )?;
            }
            Op::Access {
                high,
                page,
                off,
                len,
                write,
                cached,
            } => {
                let start = base(high) + page * K4 + off;
                let end = (start + len).min(TOP);
                let mut cur = start;
                while cur < end {
                    let r = if cached {
                        tlb.translate(cur, end - cur, write)
                    } else {
                        d.translate(cur, end - cur, write)
                    };
                    let pg = cur & !(K4 - 1);
                    match (r, m.pages.get(&pg).copied()) {
                        (Ok((h, n)), Some((host, w))) => {
                            prop_assert!(!write || w);
                            prop_assert_eq!(h, host + (cur - pg));
                            prop_assert!(n >= 1 && n <= end - cur);
                            // every page covered is mapped host-contiguously
                            let mut q = pg;
                            while q < cur + n {
                                let e = m.pages.get(&q).copied();
                                prop_assert_eq!(e.map(|x| x.0), Some(host + (q - pg)));
                                prop_assert!(!write || e.unwrap().1);
                                if write {
                                    m.dirty.insert(q);
                                }
                                q += K4;
                            }
                            cur += n;
                        }
                        (Err(uiommufd::vtd::Fault::NotPresent { iova }), None) => {
                            prop_assert_eq!(iova, cur);
                            break;
                        }
                        (
                            Err(uiommufd::vtd::Fault::Permission { iova, write: w }),
                            Some((_, false)),
                        ) => {
                            prop_assert!(write && w);
                            prop_assert_eq!(iova, cur);
                            break;
                        }
                        (r, e) => prop_assert!(
                            false,
                            "access {:#x}: domain {:x?}, model {:x?}",
                            cur,
                            r,
                            e
                        ),
                    }
                }
            }
            Op::Dirty {
                high,
                page,
                npages,
                clear,
            } => {
                let iova = base(high) + page * K4;
                let last = (iova + npages * K4 - 1).min(TOP - 1);
                // expected: the leaves of written pages that reach into the
                // range (a leaf may start before it: look a leaf back)
                let mut leaves = BTreeSet::new();
                let from = iova.saturating_sub(M2);
                for &p in m.dirty.range(from..=last.saturating_add(M2)) {
                    let (s, size) = leaf_of(&d, p).expect("dirty page is mapped");
                    if s <= last && s + size > iova {
                        leaves.insert((s, size));
                    }
                }
                let mut want = BTreeSet::new();
                for &(s, size) in &leaves {
                    let (a, b) = (s.max(iova), (s + size - 1).min(last));
                    want.extend((a..=b).step_by(K4 as usize));
                }
                let nbits = (last - iova) / K4 + 1;
                let mut w = vec![0u64; nbits.div_ceil(64) as usize];
                let mut bm = DirtyBitmap::new(iova, last, 12, &mut w);
                d.read_and_clear_dirty(iova, last - iova + 1, clear, Some(&mut bm))
                    .unwrap();
                let have: BTreeSet<u64> = set_bits(&w).iter().map(|b| iova + b * K4).collect();
                prop_assert_eq!(have, want);
                if clear {
                    for (s, size) in leaves {
                        for q in (s..s + size).step_by(K4 as usize) {
                            m.dirty.remove(&q);
                        }
                    }
                }
            }
            Op::Redirty { high, page, npages } => {
                let iova = base(high) + page * K4;
                let last = (iova + npages * K4 - 1).min(TOP - 1);
                d.redirty(iova, last - iova + 1).unwrap();
                let keys: Vec<u64> = m.pages.range(iova..=last).map(|(&k, _)| k).collect();
                m.dirty.extend(keys);
            }
        }
    }
    // everything, and then a clean unmap of both windows
    let all: Vec<u64> = (0..WIN / K4)
        .flat_map(|i| [i * K4, TOP - WIN + i * K4])
        .collect();
    m.check(&d, all.into_iter())?;
    let total = m.pages.len() as u64 * K4;
    prop_assert_eq!(d.unmap(0, 2 * WIN) + d.unmap(TOP - WIN, WIN), total);
    prop_assert_eq!(d.unmap(0, TOP), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn vtd_domain_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
