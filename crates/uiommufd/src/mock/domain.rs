//! The selftest's mock IOMMU domain (the kernel's `mock_iommu_domain` in
//! selftest.c): a software page table that records, for every
//! `MOCK_IO_PAGE_SIZE` granule of IOVA, the host address it translates to.
//!
//! The mock supports the page sizes `MOCK_IO_PAGE_SIZE` (`PAGE_SIZE / 2`) and,
//! for a device created with the `HUGE_IOVA` flag, `MOCK_HUGE_PAGE_SIZE`
//! (512 granules). Whatever the page size, the table keeps one entry per
//! granule, tagged like the kernel's: the first entry of a `map` call carries
//! the **start** marker, the last one the **last** marker, and entries
//! written by a page larger than a granule the **huge** marker. A **dirty**
//! bit has its slot in the entry (dirty tracking comes later).
//!
//! Intervals: `last` inclusive; lengths in bytes.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::domain::{next_domain_id, split_pgsizes, Domain};
use crate::io_pagetable::Prot;
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
    /// Dirty (`MOCK_PFN_DIRTY_IOVA`), reserved for dirty tracking.
    pub const FLAG_DIRTY: u8 = 1 << 2;
    /// Written by a page larger than a granule (`MOCK_PFN_HUGE_IOVA`).
    pub const FLAG_HUGE: u8 = 1 << 3;
}

#[derive(Debug, Default)]
struct Table {
    /// granule index (IOVA / MOCK_IO_PAGE_SIZE) -> entry
    entries: BTreeMap<u64, MockEntry>,
    /// Map calls left before an injected failure (`None`: never fail).
    fail_in: Option<u64>,
}

/// A mock IOMMU paging domain.
#[derive(Debug)]
pub struct MockDomain {
    id: u64,
    pgsize_bitmap: u64,
    table: RwLock<Table>,
    /// Unmaps that did not start at a start marker or end at a last marker
    /// (the kernel's mock WARNs; counted here so tests can assert none).
    warnings: AtomicU64,
}

impl MockDomain {
    /// A new, empty mock domain (`mock_domain_alloc_paging`); `huge_iova`
    /// adds `MOCK_HUGE_PAGE_SIZE` to the page sizes.
    pub fn new(huge_iova: bool) -> Arc<MockDomain> {
        let mut bitmap = mock_io_page_size();
        if huge_iova {
            bitmap |= mock_huge_page_size();
        }
        Arc::new(MockDomain {
            id: next_domain_id(),
            pgsize_bitmap: bitmap,
            table: RwLock::new(Table::default()),
            warnings: AtomicU64::new(0),
        })
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.table.read().entries.is_empty()
    }

    /// Number of mapped granules.
    pub fn len(&self) -> u64 {
        self.table.read().entries.len() as u64
    }

    /// The entry of the granule holding `iova`.
    pub fn entry(&self, iova: u64) -> Option<MockEntry> {
        self.table
            .read()
            .entries
            .get(&(iova / mock_io_page_size()))
            .copied()
    }

    /// The mappings as maximal runs `(iova, addr, length)` where both IOVA and
    /// host address advance together, in IOVA order.
    pub fn runs(&self) -> Vec<(u64, u64, u64)> {
        let mps = mock_io_page_size();
        let t = self.table.read();
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        for (&g, e) in &t.entries {
            let iova = g * mps;
            match out.last_mut() {
                Some(r) if r.0 + r.2 == iova && r.1.wrapping_add(r.2) == e.addr => r.2 += mps,
                _ => out.push((iova, e.addr, mps)),
            }
        }
        out
    }

    /// How many unmaps broke the start/last marker rule (see the type).
    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    /// Make the map call after the next `calls` ones fail with `ENOENT`
    /// (the kernel mock's fault-injection point); `None` disarms.
    pub fn fail_map_after(&self, calls: Option<u64>) {
        self.table.write().fail_in = calls;
    }

    /// `IOMMU_TEST_OP_MD_CHECK_MAP`: every granule of `[iova, iova + length)`
    /// must translate to the matching granule of `[uptr, uptr + length)`.
    ///
    /// `EINVAL` when `iova`, `length` or `uptr` is not a multiple of
    /// `MOCK_IO_PAGE_SIZE`, when `uptr + length` overflows, or when a granule
    /// is unmapped or maps elsewhere. We compare host addresses (the entry
    /// is the host address itself), so `uptr` is never dereferenced.
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
        let t = self.table.read();
        let mut off = 0;
        while off < length {
            let (cur, want) = (iova.wrapping_add(off), uptr + off);
            match t.entries.get(&(cur / mps)) {
                None => bail!(
                    EINVAL,
                    "MD_CHECK_MAP: iova {cur:#x} is not mapped (expected user address {want:#x})"
                ),
                Some(e) if e.addr != want => bail!(
                    EINVAL,
                    "MD_CHECK_MAP: iova {cur:#x} maps {:#x}, expected user address {want:#x}",
                    e.addr
                ),
                Some(_) => {}
            }
            off += mps;
        }
        Ok(())
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
        (MOCK_APERTURE_START, MOCK_APERTURE_LAST)
    }

    fn map(&self, iova: u64, addr: u64, len: u64, prot: Prot, max_pgsize: u64) -> Result<()> {
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
            Some(l) if iova >= MOCK_APERTURE_START && l <= MOCK_APERTURE_LAST => l,
            _ => bail!(
                EINVAL,
                "mock domain {}: map [{iova:#x}, +{len:#x}) leaves the aperture [{MOCK_APERTURE_START:#x}, \
                 {MOCK_APERTURE_LAST:#x}]",
                self.id
            ),
        };
        let runs = split_pgsizes(iova, addr, len, self.pgsize_bitmap, max_pgsize);
        let mut t = self.table.write();
        if let Some(n) = t.fail_in {
            if n == 0 {
                t.fail_in = None;
                bail!(
                    ENOENT,
                    "mock domain {}: injected map failure at iova {iova:#x}",
                    self.id
                );
            }
            t.fail_in = Some(n - 1);
        }
        if let Some((&g, e)) = t.entries.range(iova / mps..=last / mps).next() {
            bail!(
                EEXIST,
                "mock domain {}: iova {:#x} is already mapped to {:#x}",
                self.id,
                g * mps,
                e.addr
            );
        }
        let first = iova / mps;
        let last_g = last / mps;
        for (run_iova, run_addr, pgsize, count) in runs {
            let huge = if pgsize != mps {
                MockEntry::FLAG_HUGE
            } else {
                0
            };
            let mut off = 0;
            while off < pgsize * count {
                let g = (run_iova + off) / mps;
                let mut flags = huge;
                if g == first {
                    flags |= MockEntry::FLAG_START;
                }
                if g == last_g {
                    flags |= MockEntry::FLAG_LAST;
                }
                t.entries.insert(
                    g,
                    MockEntry {
                        addr: run_addr + off,
                        flags,
                        prot,
                    },
                );
                off += mps;
            }
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
        let mut t = self.table.write();
        let keys: Vec<u64> = t.entries.range(first..=last).map(|(&g, _)| g).collect();
        // Unmaps are whole maps: they start at a start marker and end at a
        // last marker. With huge pages the kernel core may split an unmap,
        // so, like the kernel's mock, only check without them.
        if self.pgsize_bitmap & mock_huge_page_size() == 0 {
            let bad_start = t
                .entries
                .get(&first)
                .is_some_and(|e| e.flags & MockEntry::FLAG_START == 0);
            let bad_last = t
                .entries
                .get(&last)
                .is_some_and(|e| e.flags & MockEntry::FLAG_LAST == 0);
            if bad_start || bad_last {
                self.warnings.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    domain = self.id,
                    "mock domain unmap [{iova:#x}, +{len:#x}) does not match a whole map"
                );
            }
        }
        for g in keys {
            t.entries.remove(&g);
        }
        len
    }

    fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        let mps = mock_io_page_size();
        self.table
            .read()
            .entries
            .get(&(iova / mps))
            .map(|e| e.addr + iova % mps)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = MOCK_APERTURE_START;

    fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
        r.unwrap_err().errno().0
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
        d.map(A, 0x1000_0000, 4 * mps, Prot::RW, u64::MAX).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d.iova_to_phys(A + mps + 5), Some(0x1000_0000 + mps + 5));
        assert_eq!(d.iova_to_phys(A + 4 * mps), None);
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
            errno(d.map(A + 3 * mps, 0, mps, Prot::RW, u64::MAX)),
            libc::EEXIST
        );
        assert_eq!(errno(d.map(0, 0, mps, Prot::RW, u64::MAX)), libc::EINVAL);
        assert_eq!(
            errno(d.map(A, 0, mps + 1, Prot::RW, u64::MAX)),
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
        d.map(A, 0x4000_0000, 2 * huge, Prot::RW, u64::MAX).unwrap();
        assert!(d.entry(A + mps).unwrap().flags & MockEntry::FLAG_HUGE != 0);
        assert_eq!(
            d.iova_to_phys(A + huge + 3 * mps),
            Some(0x4000_0000 + huge + 3 * mps)
        );
        d.unmap(A, 2 * huge);
        // Capped at PAGE_SIZE: only granules.
        d.map(A, 0x4000_0000, 2 * huge, Prot::RW, page_size())
            .unwrap();
        assert!(d.entry(A + mps).unwrap().flags & MockEntry::FLAG_HUGE == 0);
        d.unmap(A, 2 * huge);
        // Address not huge aligned: granules.
        d.map(A, 0x4000_0000 + mps, huge, Prot::RW, u64::MAX)
            .unwrap();
        assert!(d.entry(A).unwrap().flags & MockEntry::FLAG_HUGE == 0);
        d.unmap(A, huge);
        assert!(d.is_empty());
    }

    #[test]
    fn mock_domain_unmap_rule_and_injection() {
        let d = MockDomain::new(false);
        let mps = mock_io_page_size();
        d.map(A, 0x1000_0000, 4 * mps, Prot::RW, u64::MAX).unwrap();
        d.unmap(A + mps, mps);
        assert_eq!(d.warnings(), 1, "an unmap that cuts a map is flagged");
        d.fail_map_after(Some(1));
        d.map(A + 8 * mps, 0, mps, Prot::RW, u64::MAX).unwrap();
        assert_eq!(
            errno(d.map(A + 9 * mps, 0, mps, Prot::RW, u64::MAX)),
            libc::ENOENT
        );
        assert!(
            d.entry(A + 9 * mps).is_none(),
            "a failed map leaves nothing"
        );
        d.map(A + 9 * mps, 0, mps, Prot::RW, u64::MAX).unwrap();
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
                        d.map(iova, iova + (1 << 32), 4 * mps, Prot::RW, u64::MAX)
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
}
