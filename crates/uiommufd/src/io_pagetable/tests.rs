//! Tests of the IO page table: the kernel selftest's `iommufd_ioas`
//! `no_domain` cases, one test per errno rule and a multi-threaded stress
//! test. The model-based proptests are `tests/io_pagetable_model.rs`.
//!
//! Intervals here are `start..=last` (inclusive `last`) like the module.

use std::sync::Arc;

use super::*;
use crate::accounting::AccountMode;
use crate::error::errno;
use crate::user::SelfMemory;

pub(super) fn ps() -> u64 {
    page_size()
}

/// The selftest's `MOCK_APERTURE_START`.
const APERTURE: u64 = 1 << 24;
/// A user address that is never touched (creating pages does not read it).
const BUF: u64 = 1 << 31;

/// Real, private anonymous memory for tests that pin (pinning populates the
/// memory, so it must exist). The start is aligned to the huge page size,
/// so IOVA allocation sees the same alignment as at `BUF`.
#[derive(Debug)]
pub(super) struct RealBuf {
    map: *mut libc::c_void,
    map_len: usize,
    addr: u64,
}

// SAFETY: the mapping is only reached through addresses (the engine's
// user-memory calls, which validate them); the struct owns it exclusively.
unsafe impl Send for RealBuf {}
// SAFETY: as above; nothing is shared through the raw pointer itself.
unsafe impl Sync for RealBuf {}

impl RealBuf {
    /// `npages` pages of zeroed read/write memory.
    pub(super) fn new(npages: u64) -> RealBuf {
        let align = huge_page_size() as usize;
        let map_len = (npages * page_size()) as usize + align;
        let map = uiommufd_testkit::map_anon(map_len, libc::MAP_PRIVATE)
            .expect("mmap of the test buffer");
        let addr = (map as u64).div_ceil(align as u64) * align as u64;
        RealBuf { map, map_len, addr }
    }

    /// Start of the buffer.
    pub(super) fn addr(&self) -> u64 {
        self.addr
    }
}

impl Drop for RealBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

fn pages(uptr: u64, len: u64, writable: bool) -> Arc<Pages> {
    Pages::new(Arc::new(SelfMemory), uptr, len, writable, AccountMode::None)
}

pub(super) fn src(uptr: u64, len: u64, writable: bool) -> MapSource {
    let p = pages(uptr, len, writable);
    MapSource {
        start_byte: uptr - p.uptr(),
        pages: p,
        length: len,
    }
}

fn map_at(t: &IoPagetable, uptr: u64, len: u64, iova: Option<u64>) -> Result<u64> {
    let req = iova.map_or(IovaRequest::Alloc, IovaRequest::Fixed);
    t.map(vec![src(uptr, len, true)], len, req, Prot::RW)
}

pub(super) fn copy(
    src_t: &IoPagetable,
    dst: &IoPagetable,
    src_iova: u64,
    len: u64,
    dst_iova: Option<u64>,
) -> Result<u64> {
    let s = src_t.get_pages(src_iova, len)?;
    dst.map(
        s,
        len,
        dst_iova.map_or(IovaRequest::Alloc, IovaRequest::Fixed),
        Prot::RW,
    )
}

pub(super) fn ok(t: &IoPagetable) {
    if let Err(e) = t.check_invariants() {
        panic!("invariant broken: {e}");
    }
}

// ---- the selftest's iommufd_ioas / no_domain cases ----

#[test]
fn io_pagetable_selftest_area() {
    let t = IoPagetable::new();
    let ps = ps();
    for i in 0..10 {
        assert_eq!(
            t.unmap(i * ps, ps).unwrap(),
            0,
            "nothing mapped: 0 bytes, the ioctl says ENOENT"
        );
    }
    for i in 0..10 {
        map_at(&t, BUF, ps, Some(i * ps)).unwrap();
    }
    ok(&t);
    for i in 0..10 {
        assert_eq!(t.unmap(i * ps, ps).unwrap(), ps);
    }
    // Split fails.
    map_at(&t, BUF, 2 * ps, Some(16 * ps)).unwrap();
    assert_eq!(errno(t.unmap(16 * ps, ps)), libc::ENOENT);
    assert_eq!(errno(t.unmap(17 * ps, ps)), libc::ENOENT);
    // Over map fails.
    for (len, at) in [(2, 16), (1, 16), (1, 17), (2, 15), (3, 15)] {
        assert_eq!(
            errno(map_at(&t, BUF, len * ps, Some(at * ps))),
            libc::EEXIST
        );
    }
    ok(&t);
    assert_eq!(t.unmap_all().unwrap(), 2 * ps);
    assert_eq!(t.unmap_all().unwrap(), 0);
    assert!(t.areas().is_empty());
    ok(&t);
}

#[test]
fn io_pagetable_selftest_unmap_fully_contained_areas() {
    let t = IoPagetable::new();
    let ps = ps();
    let base = 4 * ps;
    for i in 0..4 {
        map_at(&t, BUF, 8 * ps, Some(base + i * 16 * ps)).unwrap();
    }
    assert_eq!(errno(t.unmap(base - 4 * ps, 8 * ps)), libc::ENOENT);
    assert_eq!(
        errno(t.unmap(base + 3 * 16 * ps + 8 * ps - 4 * ps, 8 * ps)),
        libc::ENOENT
    );
    assert_eq!(t.areas().len(), 4, "a refused unmap changes nothing");
    assert_eq!(
        t.unmap(base - 4 * ps, 3 * 16 * ps + 8 * ps + 4 * ps)
            .unwrap(),
        32 * ps
    );
    assert!(t.areas().is_empty());
    ok(&t);
}

#[test]
fn io_pagetable_selftest_area_auto_iova() {
    let t = IoPagetable::new();
    let ps = ps();
    let mut iovas = Vec::new();
    for _ in 0..10 {
        iovas.push(map_at(&t, BUF, ps, None).unwrap());
    }
    for &i in &iovas {
        assert_eq!(t.unmap(i, ps).unwrap(), ps);
    }
    // Ten automatic maps of 1 to 10 pages from user address `uptr`: each
    // aligned to the lowest set bit of its length and passing
    // `check(iova, len)`; then the invariants, and all unmapped again.
    let ten_aligned = |uptr: u64, check: &dyn Fn(u64, u64)| {
        let mut maps = Vec::new();
        for i in 0..10 {
            let len = ps * (i + 1);
            let iova = map_at(&t, uptr, len, None).unwrap();
            assert_eq!(iova % (1u64 << len.trailing_zeros()), 0);
            check(iova, len);
            maps.push((iova, len));
        }
        ok(&t);
        for (iova, len) in maps {
            t.unmap(iova, len).unwrap();
        }
    };
    // Automatic alignment.
    ten_aligned(1 << 31, &|_, _| {});
    // Avoids a reserved region.
    let (rs, rlen) = (4 * ps, 100 * ps);
    t.add_reserved(rs, rs + rlen - 1, 0).unwrap();
    ten_aligned(BUF, &|iova, len| {
        assert!(!(iova > rs && iova < rs + rlen));
        assert!(iova + len <= rs || iova >= rs + rlen);
    });
    // Allowed region intersects a reserved region.
    assert_eq!(errno(t.set_allowed(&[(ps, ps * 600)])), libc::EADDRINUSE);
    // Allocate from an allowed region.
    let (a0, a1) = (ps * 200, ps * 600 - 1);
    t.set_allowed(&[(a0, a1)]).unwrap();
    ten_aligned(BUF, &|iova, len| {
        assert!(iova >= a0 && iova + len <= a1 + 1)
    });
    ok(&t);
}

#[test]
fn io_pagetable_selftest_area_allowed() {
    let t = IoPagetable::new();
    let ps = ps();
    let base = 0;
    t.set_allowed(&[(base, base + ps * 600)]).unwrap();
    assert_eq!(
        errno(t.add_reserved(base + ps, base + 2 * ps - 1, 0)),
        libc::EADDRINUSE
    );
    t.set_allowed(&[]).unwrap();
    t.add_reserved(base + ps, base + 2 * ps - 1, 0).unwrap();
    assert_eq!(
        errno(t.set_allowed(&[(base, base + ps * 600)])),
        libc::EADDRINUSE
    );
    ok(&t);
}

#[test]
fn io_pagetable_selftest_copy_area() {
    let t = IoPagetable::new();
    let ps = ps();
    map_at(&t, BUF, ps, Some(0)).unwrap();
    assert_eq!(copy(&t, &t, 0, ps, Some(ps)).unwrap(), ps);
    let dst = IoPagetable::new();
    assert_eq!(copy(&t, &dst, 0, ps, Some(0)).unwrap(), 0);
    let a = t.areas();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].pages_id, a[1].pages_id, "COPY shares the pages object");
    assert_eq!(dst.areas()[0].pages_id, a[0].pages_id);
    ok(&t);
    ok(&dst);
}

#[test]
fn io_pagetable_selftest_iova_ranges() {
    let t = IoPagetable::new();
    let ps = ps();
    assert_eq!(t.iova_ranges(), (vec![(0, u64::MAX)], 1));
    t.add_reserved(ps, 2 * ps - 1, 0).unwrap();
    assert_eq!(t.iova_ranges(), (vec![(0, ps - 1), (2 * ps, u64::MAX)], 1));
    t.remove_reserved(0);
    assert_eq!(t.iova_ranges().0, vec![(0, u64::MAX)]);
    ok(&t);
}

#[test]
fn io_pagetable_selftest_ioas_iova_alloc() {
    let t = IoPagetable::new();
    for len in 1..ps() * 2 {
        let iova = map_at(&t, BUF, len, None).unwrap();
        assert_eq!(t.unmap(iova, len).unwrap(), len);
    }
    ok(&t);
}

#[test]
fn io_pagetable_selftest_ioas_align_change() {
    let t = IoPagetable::new();
    let ps = ps();
    let mock_ps = ps / 2;
    assert!(t.large_pages());
    map_at(&t, BUF, ps, Some(APERTURE)).unwrap();
    t.set_large_pages(false).unwrap();
    assert_eq!(t.iova_alignment(), ps);
    assert!(!t.large_pages());
    // Misalignment is rejected at map time.
    assert_eq!(
        errno(map_at(&t, BUF + mock_ps, ps, Some(APERTURE + ps))),
        libc::EINVAL
    );
    t.set_large_pages(false).unwrap();
    t.set_large_pages(true).unwrap();
    assert_eq!(t.iova_alignment(), 1);
    map_at(&t, BUF + mock_ps, ps, Some(APERTURE + ps)).unwrap();
    assert_eq!(errno(t.set_large_pages(false)), libc::EADDRINUSE);
    assert!(t.large_pages(), "a refused upgrade changes nothing");
    assert_eq!(t.iova_alignment(), 1);
    ok(&t);
    t.unmap(APERTURE + ps, ps).unwrap();
    t.unmap(APERTURE, ps).unwrap();
    ok(&t);
}

#[test]
fn io_pagetable_selftest_copy_sweep() {
    let t = IoPagetable::new();
    let dst = IoPagetable::new();
    let ps = ps();
    let mock_ps = ps / 2;
    let buffer_size = 16 * ps;
    let last_iova = APERTURE + buffer_size - 2;
    map_at(&t, BUF, last_iova - APERTURE + 1, Some(APERTURE)).unwrap();
    let mut iova = APERTURE - ps;
    while iova <= last_iova {
        let r = copy(&t, &dst, iova, mock_ps, Some(APERTURE));
        if iova < APERTURE || iova + mock_ps - 1 > last_iova {
            assert_eq!(errno(r), libc::ENOENT, "iova {iova:#x}");
        } else {
            r.unwrap();
            let a = dst.areas();
            assert_eq!(a[0].uptr, BUF + (iova - APERTURE));
            assert_eq!(dst.unmap(APERTURE, mock_ps).unwrap(), mock_ps);
        }
        iova += 511;
    }
    ok(&t);
    ok(&dst);
}

#[test]
fn io_pagetable_selftest_ioas_area_destroy() {
    let t = IoPagetable::new();
    map_at(&t, BUF, ps(), Some(0)).unwrap();
    drop(t);
    let t = IoPagetable::new();
    for i in 0..10 {
        map_at(&t, BUF, ps(), Some(i * ps())).unwrap();
    }
    assert_eq!(t.unmap_all().unwrap(), 10 * ps());
}

// ---- one test per rule ----

#[test]
fn io_pagetable_zero_length_is_einval() {
    let t = IoPagetable::new();
    let s = src(BUF, ps(), true);
    assert_eq!(
        errno(t.map(vec![s], 0, IovaRequest::Fixed(0), Prot::RW)),
        libc::EINVAL
    );
    assert_eq!(errno(t.unmap(0, 0)), libc::EINVAL);
    assert_eq!(errno(t.get_pages(0, 0)), libc::EINVAL);
}

#[test]
fn io_pagetable_overflow_is_eoverflow() {
    let t = IoPagetable::new();
    let ps = ps();
    assert_eq!(
        errno(map_at(&t, BUF, 2 * ps, Some(u64::MAX - ps))),
        libc::EOVERFLOW
    );
    assert_eq!(errno(t.unmap(u64::MAX, 2)), libc::EOVERFLOW);
    assert_eq!(errno(t.get_pages(u64::MAX, 2)), libc::EOVERFLOW);
    // An area may end exactly at u64::MAX.
    map_at(&t, BUF, ps, Some(u64::MAX - ps + 1)).unwrap();
    ok(&t);
    assert_eq!(t.unmap(u64::MAX - ps + 1, ps).unwrap(), ps);
    // Allocation refuses half the space or more.
    let s = MapSource {
        pages: pages(0, ps, true),
        start_byte: 0,
        length: u64::MAX / 2,
    };
    assert_eq!(
        errno(t.map(vec![s], u64::MAX / 2, IovaRequest::Alloc, Prot::RW)),
        libc::EOVERFLOW
    );
    ok(&t);
}

#[test]
fn io_pagetable_fixed_rules() {
    let t = IoPagetable::new();
    let ps = ps();
    t.add_reserved(10 * ps, 11 * ps - 1, 0).unwrap();
    assert_eq!(
        errno(map_at(&t, BUF, 2 * ps, Some(9 * ps))),
        libc::EINVAL,
        "reserved"
    );
    map_at(&t, BUF, ps, Some(9 * ps)).unwrap();
    assert_eq!(errno(map_at(&t, BUF, 2 * ps, Some(8 * ps))), libc::EEXIST);
    // Fixed maps ignore the allowed ranges, as in the kernel.
    t.set_allowed(&[(100 * ps, 200 * ps)]).unwrap();
    map_at(&t, BUF, ps, Some(20 * ps)).unwrap();
    // Reserving over an area is EADDRINUSE.
    assert_eq!(errno(t.add_reserved(20 * ps, 20 * ps, 0)), libc::EADDRINUSE);
    assert_eq!(errno(t.add_reserved(5, 4, 0)), libc::EINVAL);
    // Bad allowed lists.
    assert_eq!(errno(t.set_allowed(&[(5, 5)])), libc::EINVAL);
    assert_eq!(errno(t.set_allowed(&[(0, 10), (10, 20)])), libc::EINVAL);
    ok(&t);
}

#[test]
fn io_pagetable_read_only_pages_refuse_write() {
    let t = IoPagetable::new();
    let ps = ps();
    let s = src(BUF, ps, false);
    assert_eq!(
        errno(t.map(vec![s.clone()], ps, IovaRequest::Fixed(0), Prot::RW)),
        libc::EPERM
    );
    t.map(vec![s], ps, IovaRequest::Fixed(0), Prot::RO).unwrap();
    // COPY with write access from read-only memory.
    let got = t.get_pages(0, ps).unwrap();
    assert_eq!(
        errno(t.map(got.clone(), ps, IovaRequest::Alloc, Prot::RW)),
        libc::EPERM
    );
    t.map(got, ps, IovaRequest::Alloc, Prot::RO).unwrap();
    assert_eq!(t.areas().len(), 2);
    ok(&t);
}

#[test]
fn io_pagetable_alignment_rules() {
    let t = IoPagetable::new();
    let ps = ps();
    t.set_large_pages(false).unwrap();
    assert_eq!(
        errno(map_at(&t, BUF, ps / 2, Some(0))),
        libc::EINVAL,
        "length"
    );
    assert_eq!(
        errno(map_at(&t, BUF, ps, Some(ps / 2))),
        libc::EINVAL,
        "iova"
    );
    assert_eq!(
        errno(map_at(&t, BUF + 8, ps, Some(0))),
        libc::EINVAL,
        "page offset"
    );
    // Allocation: the user address allows only 8-byte alignment.
    assert_eq!(
        errno(map_at(&t, BUF + 8, ps, None)),
        libc::EINVAL,
        "alloc alignment"
    );
    let iova = map_at(&t, BUF, ps, None).unwrap();
    assert_eq!(iova % ps, 0);
    ok(&t);
}

#[test]
fn io_pagetable_alloc_alignment_follows_uptr() {
    let t = IoPagetable::new();
    let ps = ps();
    // The page offset of the user address is kept in the IOVA.
    let iova = map_at(&t, BUF + 0x10, 0x100, None).unwrap();
    assert_eq!(iova % 0x10, 0);
    assert_eq!((iova % ps) & 0x10, 0x10);
    // Large, well-aligned buffers get huge-page alignment (capped).
    let iova = map_at(&t, 1 << 40, 64 << 20, None).unwrap();
    assert_eq!(iova % huge_page_size(), 0);
    // Never at IOVA 0.
    let t = IoPagetable::new();
    assert!(map_at(&t, BUF, ps, None).unwrap() >= ps);
    ok(&t);
}

#[test]
fn io_pagetable_alloc_enospc() {
    let t = IoPagetable::new();
    let ps = ps();
    t.set_allowed(&[(ps, 3 * ps - 1)]).unwrap();
    map_at(&t, BUF, ps, None).unwrap();
    // One page left, but the kernel's rule wants the candidate below `last`.
    assert_eq!(errno(map_at(&t, BUF, 2 * ps, None)), libc::ENOSPC);
    map_at(&t, BUF, ps, None).unwrap();
    assert_eq!(errno(map_at(&t, BUF, 1, None)), libc::ENOSPC);
    ok(&t);
}

#[test]
fn io_pagetable_get_pages_splits_and_shares() {
    let t = IoPagetable::new();
    let ps = ps();
    let a = src(BUF, 2 * ps, true);
    let b = src(BUF + 16 * ps, 2 * ps, true);
    t.map(vec![a.clone()], 2 * ps, IovaRequest::Fixed(0), Prot::RW)
        .unwrap();
    t.map(
        vec![b.clone()],
        2 * ps,
        IovaRequest::Fixed(2 * ps),
        Prot::RW,
    )
    .unwrap();
    let got = t.get_pages(ps, 2 * ps).unwrap();
    assert_eq!(got.len(), 2);
    assert!(Arc::ptr_eq(&got[0].pages, &a.pages));
    assert!(Arc::ptr_eq(&got[1].pages, &b.pages));
    assert_eq!((got[0].start_byte, got[0].length), (ps, ps));
    assert_eq!((got[1].start_byte, got[1].length), (0, ps));
    // Multi-source map: one area per source.
    let dst = IoPagetable::new();
    assert_eq!(
        dst.map(got, 2 * ps, IovaRequest::Fixed(ps), Prot::RW)
            .unwrap(),
        ps
    );
    let areas = dst.areas();
    assert_eq!(areas.len(), 2);
    assert_eq!((areas[0].iova, areas[0].uptr), (ps, BUF + ps));
    assert_eq!((areas[1].iova, areas[1].uptr), (2 * ps, BUF + 16 * ps));
    // Gaps.
    assert_eq!(errno(t.get_pages(4 * ps, 1)), libc::ENOENT);
    assert_eq!(errno(t.get_pages(3 * ps, 2 * ps)), libc::ENOENT);
    t.unmap(0, 2 * ps).unwrap();
    assert_eq!(errno(t.get_pages(ps, 2 * ps)), libc::ENOENT);
    ok(&t);
    ok(&dst);
}

#[test]
fn io_pagetable_sources_must_match_length() {
    let t = IoPagetable::new();
    let ps = ps();
    assert_eq!(
        errno(t.map(vec![], ps, IovaRequest::Fixed(0), Prot::RW)),
        libc::EINVAL
    );
    assert_eq!(
        errno(t.map(
            vec![src(BUF, ps, true)],
            2 * ps,
            IovaRequest::Fixed(0),
            Prot::RW
        )),
        libc::EINVAL
    );
    // A source past the end of its pages object.
    let p = pages(BUF, ps, true);
    let s = MapSource {
        pages: p,
        start_byte: 0,
        length: 2 * ps,
    };
    assert_eq!(
        errno(t.map(vec![s], 2 * ps, IovaRequest::Fixed(0), Prot::RW)),
        libc::EOVERFLOW
    );
    assert!(t.areas().is_empty());
    ok(&t);
}

#[test]
fn io_pagetable_pending_area_rules() {
    let t = IoPagetable::new();
    let ps = ps();
    let s = src(BUF, ps, true);
    let iova = t
        .state
        .write()
        .reserve_areas(
            Sources::One(s),
            ps,
            IovaRequest::Fixed(4 * ps),
            Prot::RW,
            AreaState::Filling,
        )
        .unwrap();
    ok(&t);
    assert!(t.areas().is_empty(), "filling areas are not listed");
    assert_eq!(errno(t.unmap(0, 8 * ps)), libc::EBUSY);
    assert_eq!(errno(t.unmap_all()), libc::EBUSY);
    assert_eq!(errno(t.get_pages(iova, ps)), libc::ENOENT);
    assert_eq!(errno(map_at(&t, BUF, ps, Some(4 * ps))), libc::EEXIST);
    assert_eq!(errno(t.add_reserved(4 * ps, 4 * ps, 0)), libc::EADDRINUSE);
    t.state.write().publish(iova, iova + ps - 1);
    assert_eq!(t.areas().len(), 1);
    assert_eq!(t.unmap_all().unwrap(), ps);
    ok(&t);
}

#[test]
fn io_pagetable_unmap_error_order() {
    let t = IoPagetable::new();
    let ps = ps();
    map_at(&t, BUF, 2 * ps, Some(0)).unwrap();
    map_at(&t, BUF, 2 * ps, Some(4 * ps)).unwrap();
    // The first area is whole, the second is cut: nothing is removed.
    assert_eq!(errno(t.unmap(0, 5 * ps)), libc::ENOENT);
    assert_eq!(t.areas().len(), 2);
    assert_eq!(t.unmap(0, 3 * ps).unwrap(), 2 * ps);
    assert_eq!(t.unmap(0, u64::MAX).unwrap(), 2 * ps);
    ok(&t);
}

// ---- concurrency ----

/// Run `round(t, n, i)` for `i` in `0..rounds` on each of six threads `n`,
/// while another thread checks `t`'s invariants all along; then check them
/// once more ([`ok`]).
pub(super) fn concurrently(
    t: &Arc<IoPagetable>,
    rounds: u64,
    round: impl Fn(&IoPagetable, u64, u64) + Send + Sync + 'static,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (t, stop) = (t.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                t.check_invariants().unwrap();
                std::thread::yield_now();
            }
        })
    };
    let round = Arc::new(round);
    let workers: Vec<_> = (0..6u64)
        .map(|n| {
            let (t, round) = (t.clone(), round.clone());
            std::thread::spawn(move || (0..rounds).for_each(|i| round(&t, n, i)))
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    ok(t);
}

#[test]
fn io_pagetable_concurrent_map_unmap() {
    let t = Arc::new(IoPagetable::new());
    let ps = ps();
    // Allocation stays below 1 << 39; fixed maps (which ignore the allowed
    // ranges) go above, one region per thread.
    t.set_allowed(&[(ps, (1 << 39) - 1)]).unwrap();
    concurrently(&t, 300, move |t, n, i| {
        let base = (n + 1) << 40;
        let len = ps * (1 + (i + n) % 4);
        let fixed = base + (i % 8) * 16 * ps;
        assert_eq!(map_at(t, BUF + i * ps, len, Some(fixed)).unwrap(), fixed);
        let a = map_at(t, BUF + (i % 5) * ps, len, None).unwrap();
        assert!(a < 1 << 39);
        let c = copy(t, t, fixed, len, None).unwrap();
        assert_eq!(
            t.get_pages(c, len).unwrap()[0].pages.id(),
            t.get_pages(fixed, len).unwrap()[0].pages.id()
        );
        assert_eq!(t.unmap(a, len).unwrap(), len);
        assert_eq!(t.unmap(c, len).unwrap(), len);
        assert_eq!(t.unmap(fixed, len).unwrap(), len);
    });
    assert!(t.areas().is_empty());
    assert_eq!(t.unmap_all().unwrap(), 0);
}
