//! Tests of domains and accesses on the IO page table: the selftest's
//! mock_domain cases, one test per errno rule, single pinning across IOASes
//! and domains, unwinding, access notification and a multi-threaded stress
//! test with two domains.
//!
//! Everything that gets pinned is real memory ([`RealBuf`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::tests::{concurrently, copy, ok, ps, src, RealBuf};
use super::*;
use crate::domain::{Domain, HostAddr, Iova};
use crate::error::errno;
use crate::mock::domain::{
    mock_huge_page_size, mock_io_page_size, MockDomain, MockEntry, MOCK_APERTURE_LAST,
    MOCK_APERTURE_START as A,
};
use crate::pages::{check_accounting, Pages};
use crate::user::{SelfMemory, UserMemory};
use crate::vtd::VtdDomain;

fn mps() -> u64 {
    mock_io_page_size()
}

/// Process-wide accounting is only exact while no other test pins, so try
/// a while: a real leak never settles.
fn accounting_ok() {
    for _ in 0..500 {
        if check_accounting().is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    panic!("{}", check_accounting().unwrap_err());
}

/// A pages object for exactly `[uptr, uptr + len)`, and a source for it.
fn map(t: &IoPagetable, uptr: u64, len: u64, iova: Option<u64>, prot: Prot) -> Result<u64> {
    let req = iova.map_or(IovaRequest::Alloc, IovaRequest::Fixed);
    t.map(vec![src(uptr, len, prot.write)], len, req, prot)
}

/// Every domain of `t` (mock or VT-d) maps every area of `t` to its user
/// address.
fn check_maps(t: &IoPagetable) {
    for d in t.domains() {
        for a in t.areas() {
            check_map(d.as_ref(), a.iova, a.length, a.uptr).unwrap();
        }
    }
}

/// `d` maps `[iova, iova + len)` to `uptr` onwards: the mock's own check,
/// or for a VT-d domain every 4 KiB page's translation.
fn check_map(d: &dyn Domain, iova: u64, len: u64, uptr: u64) -> Result<()> {
    if let Some(m) = d.as_any().downcast_ref::<MockDomain>() {
        return m.check_map(iova, len, uptr);
    }
    let v = d
        .as_any()
        .downcast_ref::<VtdDomain>()
        .expect("a mock or VT-d domain");
    for off in (0..len).step_by(1 << 12) {
        let got = v.iova_to_phys(Iova(iova + off));
        if got != Some(HostAddr(uptr + off)) {
            crate::bail!(
                EINVAL,
                "VT-d domain {} maps {:#x} to {got:x?}, not {:#x}",
                v.id(),
                iova + off,
                uptr + off
            );
        }
    }
    Ok(())
}

/// The driver whose domains a test attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drv {
    /// The selftest mock (`huge`: huge IOVA pages).
    Mock,
    /// VT-d second stage, 48 bits (`huge`: 2 MiB and 1 GiB leaves, else
    /// 4 KiB only).
    Vtd,
}

/// The two `#[test]`s of a driver-generic check: `$mock` runs it on mock
/// domains, `$vtd` on VT-d domains.
macro_rules! on_both_drivers {
    ($check:ident: $mock:ident, $vtd:ident) => {
        #[test]
        fn $mock() {
            $check(Drv::Mock);
        }

        #[test]
        fn $vtd() {
            $check(Drv::Vtd);
        }
    };
}

/// A domain of either driver.
#[derive(Debug, Clone)]
enum TestDom {
    Mock(Arc<MockDomain>),
    Vtd(Arc<VtdDomain>),
}

impl TestDom {
    /// A new domain of `drv` added to `t`.
    fn add_to(t: &IoPagetable, drv: Drv, huge: bool) -> TestDom {
        let d = TestDom::new(drv, huge);
        t.add_domain(d.dyn_domain()).unwrap();
        d
    }

    fn new(drv: Drv, huge: bool) -> TestDom {
        match drv {
            Drv::Mock => TestDom::Mock(MockDomain::new(huge)),
            Drv::Vtd => TestDom::Vtd(if huge {
                VtdDomain::new(48, false).unwrap()
            } else {
                VtdDomain::with_max_page(48, false, 1 << 12).unwrap()
            }),
        }
    }

    fn dyn_domain(&self) -> Arc<dyn Domain> {
        match self {
            TestDom::Mock(d) => d.clone(),
            TestDom::Vtd(d) => d.clone(),
        }
    }

    fn id(&self) -> u64 {
        self.dyn_domain().id()
    }

    fn is_empty(&self) -> bool {
        match self {
            TestDom::Mock(d) => d.is_empty(),
            TestDom::Vtd(d) => d.is_empty(),
        }
    }

    /// Unmaps that cut a map (the mock counts them; VT-d splits leaves,
    /// and `check_maps` / `is_empty` see a wrong cut).
    fn warnings(&self) -> u64 {
        match self {
            TestDom::Mock(d) => d.warnings(),
            TestDom::Vtd(_) => 0,
        }
    }
}

/// What most tests start from: `pages` pages of real memory (the buffer,
/// which the caller keeps alive, and its address) and an empty IO page
/// table.
fn memory_and_table(pages: u64) -> (RealBuf, u64, Arc<IoPagetable>) {
    let buf = RealBuf::new(pages);
    let u = buf.addr();
    (buf, u, Arc::new(IoPagetable::new()))
}

/// A new mock domain (`huge`: huge IOVA pages) added to `t`.
fn add_mock(t: &IoPagetable, huge: bool) -> Arc<MockDomain> {
    let d = MockDomain::new(huge);
    t.add_domain(d.clone()).unwrap();
    d
}

fn pins(addr: u64) -> u32 {
    Pages::pins_of_user_page(addr)
}

/// A domain the invariant checker cannot downcast (it samples instead),
/// delegating to a mock, with its own page-size bitmap.
#[derive(Debug)]
struct Wrapped {
    inner: Arc<MockDomain>,
    bitmap: u64,
}

impl Domain for Wrapped {
    fn id(&self) -> u64 {
        self.inner.id()
    }
    fn pgsize_bitmap(&self) -> u64 {
        self.bitmap
    }
    fn aperture(&self) -> (u64, u64) {
        self.inner.aperture()
    }
    fn map(&self, iova: Iova, addr: HostAddr, len: u64, prot: Prot, max_pgsize: u64) -> Result<()> {
        self.inner.map(iova, addr, len, prot, max_pgsize)
    }
    fn unmap(&self, iova: u64, len: u64) -> u64 {
        self.inner.unmap(iova, len)
    }
    fn iova_to_phys(&self, iova: Iova) -> Option<HostAddr> {
        self.inner.iova_to_phys(iova)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

// ---- single pinning ----

on_both_drivers! {
    shared_page_is_pinned_once_in_every_order: domain_shared_page_is_pinned_once_in_every_order,
    domain_shared_page_is_pinned_once_in_every_order_vtd
}

fn shared_page_is_pinned_once_in_every_order(drv: Drv) {
    let ps = ps();
    for order in 0..4 {
        let buf = RealBuf::new(4);
        let u = buf.addr();
        let t1 = IoPagetable::new();
        let t2 = IoPagetable::new();
        let d: Vec<TestDom> = (0..4).map(|i| TestDom::new(drv, i % 2 == 1)).collect();
        t1.add_domain(d[0].dyn_domain()).unwrap();
        t1.add_domain(d[1].dyn_domain()).unwrap();
        t2.add_domain(d[2].dyn_domain()).unwrap();
        t2.add_domain(d[3].dyn_domain()).unwrap();
        assert_eq!(map(&t1, u, ps, Some(A), Prot::RW).unwrap(), A);
        copy(&t1, &t2, A, ps, Some(A + 16 * ps)).unwrap();
        assert_eq!(pins(u), 1, "one pages object, pinned once");
        let a1 = t1.areas();
        let a2 = t2.areas();
        assert_eq!(
            a1[0].pages_id, a2[0].pages_id,
            "COPY shares the pages object"
        );
        check_maps(&t1);
        check_maps(&t2);
        ok(&t1);
        ok(&t2);
        accounting_ok();
        match order {
            0 => {
                t1.unmap_all().unwrap();
                assert_eq!(pins(u), 1);
                t2.unmap_all().unwrap();
                assert_eq!(pins(u), 0);
            }
            1 => {
                for (t, ds) in [(&t1, &d[..2]), (&t2, &d[2..])] {
                    for x in ds {
                        t.remove_domain(x.id());
                        ok(t);
                    }
                }
                assert_eq!(pins(u), 0, "no domain left: nothing pinned");
                assert!(d.iter().all(|x| x.is_empty()));
            }
            2 => {
                t1.remove_domain(d[0].id());
                t1.remove_domain(d[1].id());
                assert_eq!(pins(u), 1, "t2's domains still hold it");
                t2.unmap_all().unwrap();
                assert_eq!(pins(u), 0);
            }
            _ => {
                t2.remove_domain(d[3].id());
                assert_eq!(pins(u), 1);
                t1.unmap(A, ps).unwrap();
                assert_eq!(pins(u), 1, "t2's area and domain still hold it");
                t2.remove_domain(d[2].id());
                assert_eq!(pins(u), 0);
            }
        }
        ok(&t1);
        ok(&t2);
        for x in &d {
            assert_eq!(x.warnings(), 0);
        }
        t1.unmap_all().unwrap();
        t2.unmap_all().unwrap();
        for (t, ds) in [(&t1, &d[..2]), (&t2, &d[2..])] {
            for x in ds {
                t.remove_domain(x.id());
            }
        }
        assert!(d.iter().all(|x| x.is_empty()));
        accounting_ok();
    }
}

#[test]
fn domain_two_areas_of_one_pages_object_count_two_users() {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(4);
    let d = add_mock(&t, false);
    let s = src(u, 2 * ps, true);
    let p = s.pages.clone();
    t.map(vec![s], 2 * ps, IovaRequest::Fixed(A), Prot::RW)
        .unwrap();
    copy(&t, &t, A + ps, ps, Some(A + 8 * ps)).unwrap();
    assert_eq!(p.pin_count(0), 1);
    assert_eq!(p.pin_count(1), 2, "one domain pin per area");
    assert_eq!(pins(u + ps), 1);
    drop(p);
    ok(&t);
    t.unmap(A, 2 * ps).unwrap();
    assert_eq!(pins(u), 0);
    assert_eq!(pins(u + ps), 1);
    ok(&t);
    t.unmap_all().unwrap();
    assert_eq!(pins(u + ps), 0);
    assert!(d.is_empty());
}

// ---- add_domain / remove_domain ----

#[test]
fn domain_add_fills_existing_areas_and_remove_empties() {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(16);
    map(&t, u, 4 * ps, Some(A), Prot::RW).unwrap();
    map(
        &t,
        u + 4 * ps + mps(),
        2 * ps,
        Some(A + 8 * ps + mps()),
        Prot::RO,
    )
    .unwrap();
    assert_eq!(pins(u), 0, "no domain: nothing pinned at map time");
    assert_eq!(t.iova_ranges(), (vec![(0, u64::MAX)], 1));

    let d1 = add_mock(&t, false);
    assert_eq!(errno(t.add_domain(d1.clone())), libc::EEXIST);
    check_maps(&t);
    assert_eq!(d1.entry(A).unwrap().prot, Prot::RW);
    assert_eq!(d1.entry(A + 8 * ps + mps()).unwrap().prot, Prot::RO);
    assert_eq!(pins(u), 1);
    assert_eq!(pins(u + 6 * ps), 1);
    assert_eq!(pins(u + 7 * ps), 0);
    assert_eq!(
        t.iova_ranges(),
        (vec![(A, MOCK_APERTURE_LAST)], mps()),
        "the usable ranges become the aperture, alignment the mock page"
    );
    ok(&t);

    let d2 = add_mock(&t, true);
    check_maps(&t);
    assert_eq!(t.domains().len(), 2);
    ok(&t);
    accounting_ok();

    t.remove_domain(d1.id());
    assert!(d1.is_empty());
    assert_eq!(pins(u), 1, "d2 still holds the pages");
    assert_eq!(t.iova_ranges(), (vec![(A, MOCK_APERTURE_LAST)], mps()));
    ok(&t);
    t.remove_domain(d2.id());
    t.remove_domain(d2.id()); // unknown now: ignored
    assert!(d2.is_empty());
    assert_eq!(pins(u), 0);
    assert_eq!(pins(u + 5 * ps), 0);
    assert_eq!(t.iova_ranges(), (vec![(0, u64::MAX)], 1));
    assert_eq!(t.areas().len(), 2, "areas stay");
    ok(&t);
    accounting_ok();
}

#[test]
fn domain_add_refusals_change_nothing() {
    let ps = ps();
    let buf = RealBuf::new(8);
    let u = buf.addr();
    let before = |t: &IoPagetable| (t.iova_ranges(), t.areas(), t.domains().len());

    // An area below the aperture.
    let t = IoPagetable::new();
    map(&t, u, ps, Some(A - ps), Prot::RW).unwrap();
    let b = before(&t);
    let d = MockDomain::new(false);
    let e = t.add_domain(d.clone()).unwrap_err();
    assert_eq!(e.errno().0, libc::EADDRINUSE);
    assert!(e.reason().contains("reserved range"), "{e}");
    assert_eq!(before(&t), b);
    assert!(d.is_empty());
    assert_eq!(pins(u), 0);
    ok(&t);

    // An area above the aperture (the second reservation fails, the first
    // is undone).
    let t = IoPagetable::new();
    map(&t, u, ps, Some(MOCK_APERTURE_LAST + 1), Prot::RW).unwrap();
    let b = before(&t);
    assert_eq!(errno(t.add_domain(d.clone())), libc::EADDRINUSE);
    assert_eq!(before(&t), b);
    ok(&t);

    // An area that does not conform to the new alignment: checked first.
    let t = IoPagetable::new();
    map(&t, u + 8, ps, Some(A - ps + 8), Prot::RW).unwrap();
    let e = t.add_domain(d.clone()).unwrap_err();
    assert_eq!(e.errno().0, libc::EADDRINUSE);
    assert!(e.reason().contains("alignment"), "{e}");
    assert_eq!(t.iova_alignment(), 1);
    ok(&t);

    // An allowed range outside the aperture.
    let t = IoPagetable::new();
    t.set_allowed(&[(ps, 2 * ps)]).unwrap();
    let e = t.add_domain(d.clone()).unwrap_err();
    assert_eq!(e.errno().0, libc::EADDRINUSE);
    assert!(e.reason().contains("allowed range"), "{e}");
    assert_eq!(t.iova_ranges(), (vec![(0, u64::MAX)], 1));
    ok(&t);

    // Smallest page above PAGE_SIZE; no page size; empty aperture.
    let t = IoPagetable::new();
    let big = Arc::new(Wrapped {
        inner: MockDomain::new(false),
        bitmap: 2 * ps,
    });
    assert_eq!(errno(t.add_domain(big)), libc::EINVAL);
    let none = Arc::new(Wrapped {
        inner: MockDomain::new(false),
        bitmap: 0,
    });
    assert_eq!(errno(t.add_domain(none)), libc::EINVAL);
    assert!(t.domains().is_empty());
    ok(&t);

    // The fill fails on the third area: everything is undone.
    let t = IoPagetable::new();
    for i in 0..4 {
        map(&t, u + i * ps, ps, Some(A + 4 * i * ps), Prot::RW).unwrap();
    }
    let d1 = add_mock(&t, false);
    let d2 = MockDomain::new(false);
    d2.fail_map_after(Some(2));
    let b = before(&t);
    assert_eq!(errno(t.add_domain(d2.clone())), libc::ENOENT);
    assert!(d2.is_empty());
    assert_eq!(before(&t), b);
    assert_eq!(pins(u), 1, "d1's pin stays");
    ok(&t);
    t.remove_domain(d1.id());
    let d3 = MockDomain::new(false);
    d3.fail_map_after(Some(3));
    assert_eq!(errno(t.add_domain(d3.clone())), libc::ENOENT);
    assert!(d3.is_empty());
    for i in 0..4 {
        assert_eq!(pins(u + i * ps), 0, "the first domain's pins are undone");
    }
    assert_eq!(t.iova_ranges(), (vec![(0, u64::MAX)], 1));
    ok(&t);
    accounting_ok();
}

on_both_drivers! {
    domain_add_pin_failure_is_efault_on: domain_add_pin_failure_is_efault,
    domain_add_pin_failure_is_efault_vtd
}

fn domain_add_pin_failure_is_efault_on(drv: Drv) {
    let ps = ps();
    let buf = RealBuf::new(4);
    let u = buf.addr();
    // SAFETY: changes the protection of our own test mapping only.
    let rc = unsafe { libc::mprotect(u as *mut libc::c_void, ps as usize, libc::PROT_NONE) };
    assert_eq!(rc, 0);
    let t = IoPagetable::new();
    map(&t, u + ps, ps, Some(A), Prot::RW).unwrap();
    map(&t, u, ps, Some(A + ps), Prot::RW).unwrap();
    let d = TestDom::new(drv, false);
    assert_eq!(errno(t.add_domain(d.dyn_domain())), libc::EFAULT);
    assert!(d.is_empty());
    assert_eq!(pins(u + ps), 0);
    assert!(t.domains().is_empty());
    ok(&t);
    // With a domain, a map of memory that cannot be pinned fails the same.
    t.unmap(A + ps, ps).unwrap();
    t.add_domain(d.dyn_domain()).unwrap();
    assert_eq!(errno(map(&t, u, ps, Some(A + ps), Prot::RW)), libc::EFAULT);
    assert_eq!(t.areas().len(), 1);
    map(&t, u + 2 * ps, ps, Some(A + ps), Prot::RW).unwrap();
    ok(&t);
    t.unmap_all().unwrap();
    assert!(d.is_empty());
    t.remove_domain(d.id());
}

#[test]
fn domain_map_failure_unwinds() {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(8);
    let d1 = add_mock(&t, false);
    let d2 = add_mock(&t, true);
    d2.fail_map_after(Some(0));
    assert_eq!(errno(map(&t, u, 2 * ps, Some(A), Prot::RW)), libc::ENOENT);
    assert!(t.areas().is_empty());
    assert!(d1.is_empty() && d2.is_empty());
    assert_eq!(pins(u), 0);
    ok(&t);
    // The IOVA is free again.
    map(&t, u, 2 * ps, Some(A), Prot::RW).unwrap();
    map(&t, u + 4 * ps, 2 * ps, Some(A + 2 * ps), Prot::RW).unwrap();
    // A two-source copy failing on its second source undoes the first.
    d2.fail_map_after(Some(1));
    let s = t.get_pages(A + ps, 2 * ps).unwrap();
    assert_eq!(s.len(), 2);
    let p0 = s[0].pages.clone();
    assert_eq!(
        errno(t.map(s, 2 * ps, IovaRequest::Fixed(A + 16 * ps), Prot::RW)),
        libc::ENOENT
    );
    assert_eq!(p0.pin_count(1), 1, "only the original area's pin");
    drop(p0);
    assert_eq!(t.areas().len(), 2);
    check_maps(&t);
    ok(&t);
    assert_eq!(t.unmap_all().unwrap(), 4 * ps);
    assert!(d1.is_empty() && d2.is_empty());
    assert_eq!(d1.warnings(), 0);
    accounting_ok();
}

/// `domain_map_failure_unwinds` for VT-d, whose map fails only when a
/// table cannot be allocated: the 1st, 2nd, ... injection point of a map
/// (with two fresh VT-d domains attached) and of a two-source copy fails
/// in turn, until they go through; after every failure the table, the
/// domains and the pins are as before. Some failure must be a VT-d table
/// allocation.
#[test]
fn domain_map_failure_unwinds_vtd() {
    use crate::inject;
    let ps = ps();
    let mut vtd_points = 0;
    for nth in 1..200 {
        let (_buf, u, t) = memory_and_table(8);
        let d1 = TestDom::add_to(&t, Drv::Vtd, false);
        let d2 = TestDom::add_to(&t, Drv::Vtd, true);
        map(&t, u + 4 * ps, 2 * ps, Some(A + 2 * ps), Prot::RW).unwrap();
        let before = (t.areas(), pins(u), pins(u + 4 * ps));
        inject::set_fail_nth_current(nth);
        let w = inject::Watch::start();
        let r = map(&t, u, 2 * ps, Some(A), Prot::RW);
        let fired = w.fired();
        // then a copy of both areas (two sources) to an IOVA far away
        let (r2, fired2) = if r.is_ok() && fired.is_none() {
            let w = inject::Watch::start();
            let r2 = t
                .get_pages(A + ps, 2 * ps)
                .and_then(|s| t.map(s, 2 * ps, IovaRequest::Fixed(A + (1 << 30)), Prot::RW));
            (Some(r2), w.fired())
        } else {
            (None, None)
        };
        let left = inject::fail_nth_current();
        inject::set_fail_nth_current(0);
        if fired.is_some() {
            assert!(r.is_err(), "nth {nth}: a map that saw {fired:?} succeeded");
            assert_eq!((t.areas(), pins(u), pins(u + 4 * ps)), before, "nth {nth}");
        }
        if let Some(p) = fired2 {
            assert!(
                r2.as_ref().unwrap().is_err(),
                "nth {nth}: a copy that saw {p} succeeded"
            );
            assert_eq!(t.areas().len(), 2, "nth {nth}: the copy left an area");
        }
        for p in [fired, fired2].into_iter().flatten() {
            if p == "vtd.table.alloc" {
                vtd_points += 1;
            }
        }
        ok(&t);
        check_maps(&t);
        t.unmap_all().unwrap();
        assert!(d1.is_empty() && d2.is_empty(), "nth {nth}");
        t.remove_domain(d1.id());
        t.remove_domain(d2.id());
        assert_eq!(pins(u), 0);
        if left != 0 {
            // the sequence ran through without reaching the armed point
            assert!(vtd_points > 0, "no VT-d table allocation failed");
            accounting_ok();
            return;
        }
    }
    panic!("more than 200 injection points");
}

#[test]
fn domain_alloc_stays_in_aperture() {
    // The selftest's ioas_iova_alloc with a mock domain.
    let (_buf, u, t) = memory_and_table(4);
    let d = add_mock(&t, false);
    let mps = mps();
    let mut len = mps;
    while len < 2 * ps() {
        let iova = map(&t, u, len, None, Prot::RW).unwrap();
        assert!(iova >= A && iova + len - 1 <= MOCK_APERTURE_LAST);
        d.check_map(iova, len, u).unwrap();
        assert_eq!(t.unmap(iova, len).unwrap(), len);
        len += mps;
    }
    // Lengths that are not a multiple of the mock page are refused.
    assert_eq!(errno(map(&t, u, mps + 1, None, Prot::RW)), libc::EINVAL);
    assert!(d.is_empty());
    ok(&t);
}

#[test]
fn domain_all_aligns_and_copy() {
    // The selftest's all_aligns / all_aligns_copy, on a smaller buffer.
    let ps = ps();
    let mps = mps();
    let buf = RealBuf::new(8);
    let u = buf.addr();
    let size = 8 * ps;
    let t = IoPagetable::new();
    let dst = IoPagetable::new();
    let d = add_mock(&t, false);
    let e = add_mock(&dst, true);
    let mut start = 0;
    while start < size {
        let mut end = start + mps;
        while end <= size {
            let iova = map(&t, u + start, end - start, None, Prot::RW).unwrap();
            d.check_map(iova, end - start, u + start).unwrap();
            let c = copy(&t, &dst, iova, end - start, None).unwrap();
            e.check_map(c, end - start, u + start).unwrap();
            assert_eq!(pins(u + start), 1);
            assert_eq!(t.unmap(iova, end - start).unwrap(), end - start);
            assert_eq!(pins(u + start), 1, "dst still maps it");
            assert_eq!(dst.unmap(c, end - start).unwrap(), end - start);
            assert_eq!(pins(u + start), 0);
            end += 3 * mps;
        }
        start += 5 * mps;
    }
    assert!(d.is_empty() && e.is_empty());
    assert_eq!(d.warnings(), 0);
    ok(&t);
    ok(&dst);
    accounting_ok();
}

#[test]
fn domain_large_pages_option() {
    let huge = mock_huge_page_size();
    let buf = RealBuf::new(2 * huge / ps() + 8);
    let u = buf.addr();
    assert_eq!(u % huge, 0);
    let t = IoPagetable::new();
    let d = add_mock(&t, true);
    let iova = A + 4 * huge;
    map(&t, u, 2 * huge, Some(iova), Prot::RW).unwrap();
    assert!(d.entry(iova).unwrap().flags & MockEntry::FLAG_HUGE != 0);
    assert_eq!(
        errno(t.set_large_pages(false)),
        libc::EINVAL,
        "domains with areas: may already use large pages"
    );
    assert!(t.large_pages());
    t.unmap_all().unwrap();
    t.set_large_pages(false).unwrap();
    assert_eq!(t.iova_alignment(), ps());
    map(&t, u, 2 * huge, Some(iova), Prot::RW).unwrap();
    assert!(d.entry(iova).unwrap().flags & MockEntry::FLAG_HUGE == 0);
    // A domain added now is filled without large pages too.
    let d2 = add_mock(&t, true);
    assert!(d2.entry(iova).unwrap().flags & MockEntry::FLAG_HUGE == 0);
    check_maps(&t);
    ok(&t);
    t.set_large_pages(true).unwrap();
    assert_eq!(t.iova_alignment(), mps());
    ok(&t);
    t.unmap_all().unwrap();
    t.remove_domain(d.id());
    t.remove_domain(d2.id());
    assert!(d.is_empty() && d2.is_empty());
    assert_eq!(t.iova_alignment(), 1);
    ok(&t);
}

#[test]
fn domain_invariants_catch_a_domain_out_of_sync() {
    let ps = ps();
    let buf = RealBuf::new(4);
    let u = buf.addr();
    for generic in [false, true] {
        let t = IoPagetable::new();
        let m = MockDomain::new(false);
        let dom: Arc<dyn Domain> = if generic {
            Arc::new(Wrapped {
                inner: m.clone(),
                bitmap: m.pgsize_bitmap(),
            })
        } else {
            m.clone()
        };
        t.add_domain(dom.clone()).unwrap();
        map(&t, u, 2 * ps, Some(A), Prot::RW).unwrap();
        ok(&t);
        m.unmap(A, 2 * ps);
        assert!(
            t.check_invariants().is_err(),
            "generic {generic}: a missing mapping"
        );
        m.map(Iova(A), HostAddr(u + ps), 2 * ps, Prot::RW, u64::MAX)
            .unwrap();
        assert!(
            t.check_invariants().is_err(),
            "generic {generic}: a wrong address"
        );
        m.unmap(A, 2 * ps);
        m.map(Iova(A), HostAddr(u), 2 * ps, Prot::RW, u64::MAX)
            .unwrap();
        ok(&t);
        if !generic {
            m.map(Iova(A + 8 * ps), HostAddr(u), ps, Prot::RW, u64::MAX)
                .unwrap();
            assert!(
                t.check_invariants().is_err(),
                "a mapping outside every area"
            );
            m.unmap(A + 8 * ps, ps);
        }
        t.unmap_all().unwrap();
        t.remove_domain(dom.id());
        ok(&t);
    }
}

#[test]
fn domain_invariants_catch_wrong_pin_counts() {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(4);
    map(&t, u, 2 * ps, Some(A), Prot::RW).unwrap();
    ok(&t);
    // No domain, no access: a pin is a leak.
    t.state.read().areas[&A].pages.pin(1, 1).unwrap();
    assert!(t.check_invariants().is_err());
    t.state.read().areas[&A].pages.unpin(1, 1);
    ok(&t);
    let d = add_mock(&t, false);
    ok(&t);
    // A domain attached: a missing pin, and a double pin.
    t.state.read().areas[&A].pages.unpin(0, 0);
    assert!(t.check_invariants().is_err());
    t.state.read().areas[&A].pages.pin(0, 0).unwrap();
    ok(&t);
    t.state.read().areas[&A].pages.pin(0, 1).unwrap();
    assert!(t.check_invariants().is_err());
    t.state.read().areas[&A].pages.unpin(0, 1);
    ok(&t);
    t.unmap_all().unwrap();
    t.remove_domain(d.id());
    ok(&t);
}

on_both_drivers! {
    domain_table_dropped_with_domain_leaves_nothing_on: domain_table_dropped_with_domain_leaves_nothing,
    domain_table_dropped_with_domain_leaves_nothing_vtd
}

fn domain_table_dropped_with_domain_leaves_nothing_on(drv: Drv) {
    let buf = RealBuf::new(4);
    let u = buf.addr();
    let d = TestDom::new(drv, false);
    {
        let t = IoPagetable::new();
        t.add_domain(d.dyn_domain()).unwrap();
        map(&t, u, 2 * ps(), Some(A), Prot::RW).unwrap();
        assert_eq!(pins(u), 1);
    }
    assert!(d.is_empty());
    assert_eq!(pins(u), 0);
}

// ---- accesses ----

/// An access that records the unmap calls and unpins what it pinned
/// (unless told to refuse).
#[derive(Debug, Default)]
struct Recorder {
    t: Mutex<Weak<IoPagetable>>,
    pins: Mutex<Vec<(u64, u64)>>,
    calls: Mutex<Vec<(u64, u64)>>,
    /// What an access pin inside the area being unmapped answered.
    pin_during_unmap: Mutex<Vec<i32>>,
    refuse: AtomicBool,
}

impl Recorder {
    fn new(t: &Arc<IoPagetable>) -> (Arc<Recorder>, u64) {
        let r = Arc::new(Recorder::default());
        *r.t.lock() = Arc::downgrade(t);
        let w: Weak<dyn AccessNotify> = Arc::downgrade(&r) as Weak<dyn AccessNotify>;
        let token = t.add_access(w, page_size()).unwrap();
        (r, token)
    }

    fn pin(&self, iova: u64, len: u64) -> Result<PinnedPages> {
        let t = self.t.lock().upgrade().unwrap();
        let p = t.access_pin(iova, len, false)?;
        self.pins.lock().push((iova, len));
        Ok(p)
    }
}

impl AccessNotify for Recorder {
    fn unmap(&self, iova: u64, length: u64) {
        self.calls.lock().push((iova, length));
        let Some(t) = self.t.lock().upgrade() else {
            return;
        };
        if let Err(e) = t.access_pin(iova, page_size(), false) {
            self.pin_during_unmap.lock().push(e.errno().0);
        }
        if self.refuse.load(Ordering::Relaxed) {
            return;
        }
        let last = iova + (length - 1);
        let mine: Vec<(u64, u64)> = {
            let mut p = self.pins.lock();
            let (hit, keep): (Vec<_>, Vec<_>) = p
                .iter()
                .partition(|&&(i, l)| i <= last && iova <= i + (l - 1));
            *p = keep;
            hit
        };
        for (i, l) in mine {
            t.access_unpin(i, l);
        }
    }
}

#[test]
fn access_pin_rules() {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(16);
    let (_r, token) = Recorder::new(&t);
    assert_eq!(
        t.iova_alignment(),
        ps,
        "a pinning access asks for PAGE_SIZE"
    );
    map(&t, u, 4 * ps, Some(A), Prot::RW).unwrap();
    map(&t, u + 4 * ps, 2 * ps, Some(A + 4 * ps), Prot::RO).unwrap();
    let ro_pages = src(u + 8 * ps, 2 * ps, false);
    t.map(
        vec![ro_pages],
        2 * ps,
        IovaRequest::Fixed(A + 8 * ps),
        Prot::RO,
    )
    .unwrap();

    assert_eq!(errno(t.access_pin(A, 0, false)), libc::EINVAL);
    assert_eq!(errno(t.access_pin(u64::MAX, 2, false)), libc::EOVERFLOW);
    assert_eq!(errno(t.access_pin(A + 32 * ps, ps, false)), libc::ENOENT);
    assert_eq!(errno(t.access_pin(A - ps, 2 * ps, false)), libc::ENOENT);
    assert_eq!(errno(t.access_pin(A + ps / 2, ps, false)), libc::EINVAL);
    assert_eq!(
        errno(t.access_pin(A + 4 * ps, ps, true)),
        libc::EPERM,
        "prot"
    );
    assert_eq!(errno(t.access_pin(A + 8 * ps, ps, true)), libc::EPERM);
    assert_eq!(pins(u), 0);

    let p = t.access_pin(A + ps, 2 * ps, true).unwrap();
    assert_eq!(p, vec![u + ps, u + 2 * ps]);
    assert_eq!(pins(u + ps), 1);
    assert_eq!(pins(u), 0);
    // A second pin of the same range is one more user of the same pin.
    t.access_pin(A + ps, 2 * ps, false).unwrap();
    assert_eq!(pins(u + ps), 1);
    ok(&t);
    // Across two areas, not a whole last page: the page is included.
    let p = t.access_pin(A + 3 * ps, ps + 100, false).unwrap();
    assert_eq!(p, vec![u + 3 * ps, u + 4 * ps]);
    ok(&t);
    // Running into a gap after a good area: ENOENT, nothing stays pinned.
    assert_eq!(errno(t.access_pin(A + 4 * ps, 3 * ps, false)), libc::ENOENT);
    assert_eq!(pins(u + 5 * ps), 0);
    assert_eq!(pins(u + 4 * ps), 1, "only the earlier pin");
    ok(&t);
    t.access_unpin(A + 3 * ps, ps + 100);
    t.access_unpin(A + ps, 2 * ps);
    assert_eq!(pins(u + ps), 1);
    t.access_unpin(A + ps, 2 * ps);
    assert_eq!(pins(u + ps), 0);
    assert_eq!(pins(u + 4 * ps), 0);
    t.access_unpin(A + ps, 2 * ps); // not pinned: ignored
    ok(&t);
    t.remove_access(token);
    assert_eq!(t.iova_alignment(), 1);
    t.unmap_all().unwrap();
    accounting_ok();
}

#[test]
fn access_pin_needs_page_aligned_pages() {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(8);
    // An area that starts mid-page: its IOVA is page aligned, its pages not.
    map(&t, u + 8, ps, Some(A), Prot::RW).unwrap();
    assert_eq!(errno(t.access_pin(A, 8, false)), libc::EINVAL);
    // Two areas: the first does not end on a page boundary of its pages.
    map(&t, u + 2 * ps, ps / 2, Some(A + 2 * ps), Prot::RW).unwrap();
    map(&t, u + 4 * ps, ps, Some(A + 2 * ps + ps / 2), Prot::RW).unwrap();
    assert_eq!(errno(t.access_pin(A + 2 * ps, ps, false)), libc::EINVAL);
    // Alone it is fine (the end of the range may be anywhere).
    assert_eq!(
        t.access_pin(A + 2 * ps, ps / 2, false).unwrap(),
        vec![u + 2 * ps]
    );
    t.access_unpin(A + 2 * ps, ps / 2);
    ok(&t);
    assert_eq!(pins(u + 2 * ps), 0);
}

#[test]
fn access_alignment_rules() {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(4);
    let r = Arc::new(Recorder::default());
    let w: Weak<dyn AccessNotify> = Arc::downgrade(&r) as Weak<dyn AccessNotify>;
    assert_eq!(errno(t.add_access(w.clone(), 3)), libc::EINVAL);
    map(&t, u + 8, ps, Some(A + 8), Prot::RW).unwrap();
    assert_eq!(errno(t.add_access(w.clone(), ps)), libc::EADDRINUSE);
    assert_eq!(t.iova_alignment(), 1);
    let tok = t.add_access(w.clone(), 1).unwrap();
    ok(&t);
    t.remove_access(tok);
    t.unmap_all().unwrap();
    let tok = t.add_access(w, ps).unwrap();
    assert_eq!(
        errno(map(&t, u + 8, ps, Some(A + 8), Prot::RW)),
        libc::EINVAL
    );
    t.remove_access(tok);
    t.remove_access(tok); // unknown now: ignored
    ok(&t);
}

#[test]
fn access_rw_rules() {
    let ps = ps();
    let buf = RealBuf::new(16);
    let u = buf.addr();
    let pattern: Vec<u8> = (0..16 * ps).map(|i| (i * 7 % 251) as u8).collect();
    SelfMemory.write(u, &pattern).unwrap();
    let t = IoPagetable::new();
    // Unaligned pages (the selftest's access_rw_unaligned): IOVA at a mock page.
    let base = A + mps();
    map(&t, u, 4 * ps, Some(base), Prot::RW).unwrap();
    map(&t, u + 4 * ps, 2 * ps, Some(base + 4 * ps), Prot::RO).unwrap();
    let mut tmp = [0u8; 64];
    for iova in base + ps - 50..base + ps + 50 {
        for len in [1usize, 7, 64] {
            t.access_rw(iova, &mut tmp[..len], false).unwrap();
            let off = (iova - base) as usize;
            assert_eq!(&tmp[..len], &pattern[off..off + len]);
        }
    }
    // Reads cross areas; writes into the read-only one are refused.
    let mut across = vec![0u8; 2 * ps as usize];
    t.access_rw(base + 3 * ps, &mut across, false).unwrap();
    assert_eq!(&across[..], &pattern[3 * ps as usize..5 * ps as usize]);
    assert_eq!(
        errno(t.access_rw(base + 3 * ps, &mut across, true)),
        libc::EPERM
    );
    let mut data = [0xa5u8; 100];
    t.access_rw(base + ps - 10, &mut data, true).unwrap();
    let mut check = [0u8; 100];
    SelfMemory.read(u + ps - 10, &mut check).unwrap();
    assert_eq!(check, [0xa5u8; 100]);
    // Gaps, zero length, overflow.
    assert_eq!(
        errno(t.access_rw(base + 5 * ps, &mut across, false)),
        libc::ENOENT
    );
    assert_eq!(errno(t.access_rw(base - 1, &mut tmp, false)), libc::ENOENT);
    assert_eq!(errno(t.access_rw(base, &mut [], false)), libc::EINVAL);
    assert_eq!(
        errno(t.access_rw(u64::MAX, &mut tmp, false)),
        libc::EOVERFLOW
    );
    // A write-only mapping cannot be read.
    let wo = Prot {
        read: false,
        write: true,
    };
    map(&t, u + 8 * ps, ps, Some(base + 8 * ps), wo).unwrap();
    assert_eq!(
        errno(t.access_rw(base + 8 * ps, &mut tmp, false)),
        libc::EPERM
    );
    t.access_rw(base + 8 * ps, &mut tmp, true).unwrap();
    assert_eq!(pins(u), 0, "copies pin nothing");
    ok(&t);
}

on_both_drivers! {
    access_unmap_notifies_and_unpins_on: access_unmap_notifies_and_unpins,
    access_unmap_notifies_and_unpins_vtd
}

fn access_unmap_notifies_and_unpins_on(drv: Drv) {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(16);
    let d = TestDom::add_to(&t, drv, false);
    let (r, _token) = Recorder::new(&t);
    map(&t, u, 4 * ps, Some(A), Prot::RW).unwrap();
    map(&t, u + 8 * ps, 2 * ps, Some(A + 8 * ps), Prot::RW).unwrap();
    let s = t.access_pin(A + 8 * ps, ps, false).unwrap();
    t.access_unpin(A + 8 * ps, ps);
    assert_eq!(s, vec![u + 8 * ps]);
    r.pin(A + ps, 2 * ps).unwrap();
    assert_eq!(t.areas()[0].iova, A);
    ok(&t);
    // An unmap that is refused for another reason notifies nobody.
    assert_eq!(errno(t.unmap(A, 2 * ps)), libc::ENOENT);
    assert!(r.calls.lock().is_empty());
    assert_eq!(t.unmap(A, 4 * ps).unwrap(), 4 * ps);
    assert_eq!(*r.calls.lock(), vec![(A, 4 * ps)]);
    assert_eq!(
        *r.pin_during_unmap.lock(),
        vec![libc::EINVAL],
        "pins wait for the unmap"
    );
    assert!(r.pins.lock().is_empty());
    assert_eq!(pins(u + ps), 0);
    ok(&t);

    // unmap_all notifies too.
    r.pin(A + 9 * ps, ps).unwrap();
    assert_eq!(t.unmap_all().unwrap(), 2 * ps);
    assert_eq!(r.calls.lock().len(), 2);
    assert!(d.is_empty());
    assert_eq!(pins(u + 9 * ps), 0);
    ok(&t);
    accounting_ok();
}

#[test]
fn access_that_refuses_is_edeadlk() {
    let ps = ps();
    let (_buf, u, t) = memory_and_table(8);
    let d = add_mock(&t, false);
    let (r, token) = Recorder::new(&t);
    map(&t, u, 2 * ps, Some(A), Prot::RW).unwrap();
    map(&t, u + 2 * ps, 2 * ps, Some(A + 2 * ps), Prot::RW).unwrap();
    r.pin(A + 2 * ps, ps).unwrap();
    r.refuse.store(true, Ordering::Relaxed);
    let before = t.areas();
    let e = t.unmap(A, 4 * ps).unwrap_err();
    assert_eq!(e.errno().0, libc::EDEADLK);
    assert_eq!(r.calls.lock().len(), 101, "the kernel tries 100 times more");
    assert!(r.calls.lock().iter().all(|&c| c == (A + 2 * ps, 2 * ps)));
    assert_eq!(t.areas(), before, "nothing was unmapped");
    check_maps(&t);
    assert_eq!(pins(u + 2 * ps), 1);
    ok(&t);
    // The area accepts access pins again.
    t.access_pin(A + 3 * ps, ps, false).unwrap();
    t.access_unpin(A + 3 * ps, ps);
    // Once the access lets go, the unmap goes through.
    r.refuse.store(false, Ordering::Relaxed);
    assert_eq!(t.unmap(A, 4 * ps).unwrap(), 4 * ps);
    assert!(d.is_empty());
    assert_eq!(pins(u + 2 * ps), 0);
    ok(&t);
    // An access gone without unpinning: nobody can unpin, EDEADLK.
    map(&t, u, 2 * ps, Some(A), Prot::RW).unwrap();
    t.access_pin(A, ps, false).unwrap();
    t.remove_access(token);
    assert_eq!(errno(t.unmap_all()), libc::EDEADLK);
    t.access_unpin(A, ps);
    assert_eq!(t.unmap_all().unwrap(), 2 * ps);
    ok(&t);
}

on_both_drivers! {
    access_pins_survive_domain_changes_on: access_pins_survive_domain_changes,
    access_pins_survive_domain_changes_vtd
}

fn access_pins_survive_domain_changes_on(drv: Drv) {
    // The selftest's access_pin: add and remove a domain while pinned.
    let ps = ps();
    let (_buf, u, t) = memory_and_table(8);
    let (r, _token) = Recorder::new(&t);
    map(&t, u, 8 * ps, Some(A), Prot::RW).unwrap();
    for npages in 1..8 {
        r.pin(A, npages * ps).unwrap();
        let d = TestDom::add_to(&t, drv, false);
        check_map(d.dyn_domain().as_ref(), A, 8 * ps, u).unwrap();
        ok(&t);
        t.remove_domain(d.id());
        assert_eq!(pins(u), 1, "the access still holds it");
        assert_eq!(pins(u + 7 * ps), 0);
        ok(&t);
        let (i, l) = r.pins.lock().pop().unwrap();
        t.access_unpin(i, l);
        assert_eq!(pins(u), 0);
    }
    ok(&t);
}

// ---- concurrency ----

on_both_drivers! {
    concurrent_map_unmap_two_domains: domain_concurrent_map_unmap_two_domains,
    domain_concurrent_map_unmap_two_domains_vtd
}

fn concurrent_map_unmap_two_domains(drv: Drv) {
    let ps = ps();
    let buf = Arc::new(RealBuf::new(64));
    let t = Arc::new(IoPagetable::new());
    let d1 = TestDom::add_to(&t, drv, false);
    let d2 = TestDom::add_to(&t, drv, true);
    // Allocation inside [A, A + 2^28); fixed maps above, one region per thread.
    t.set_allowed(&[(A, A + (1 << 28) - 1)]).unwrap();
    let b = buf.clone();
    concurrently(&t, 150, move |t, n, i| {
        let u = b.addr();
        let base = A + (1 << 28) + n * (1 << 24);
        let len = ps * (1 + (i + n) % 4);
        let fixed = base + (i % 8) * 16 * ps;
        let up = u + (i % 32) * ps;
        assert_eq!(map(t, up, len, Some(fixed), Prot::RW).unwrap(), fixed);
        let a = map(t, u + (i % 5) * ps, len, None, Prot::RW).unwrap();
        assert!((A..A + (1 << 28)).contains(&a));
        let c = copy(t, t, fixed, len, None).unwrap();
        for d in t.domains() {
            check_map(d.as_ref(), c, len, up).unwrap();
            check_map(d.as_ref(), fixed, len, up).unwrap();
        }
        assert_eq!(t.unmap(a, len).unwrap(), len);
        assert_eq!(t.unmap(c, len).unwrap(), len);
        assert_eq!(t.unmap(fixed, len).unwrap(), len);
    });
    assert!(t.areas().is_empty());
    assert!(d1.is_empty() && d2.is_empty());
    assert_eq!(d1.warnings(), 0);
    for p in 0..64 {
        assert_eq!(pins(buf.addr() + p * ps), 0);
    }
    // And once more with areas left for unmap_all.
    for i in 0..16 {
        map(
            &t,
            buf.addr() + i * ps,
            ps,
            Some(A + (1 << 29) + i * ps),
            Prot::RW,
        )
        .unwrap();
    }
    ok(&t);
    assert_eq!(t.unmap_all().unwrap(), 16 * ps);
    assert!(d1.is_empty() && d2.is_empty());
    t.remove_domain(d1.id());
    t.remove_domain(d2.id());
    ok(&t);
    accounting_ok();
}

on_both_drivers! {
    add_remove_races_with_map_unmap: domain_add_remove_races_with_map_unmap,
    domain_add_remove_races_with_map_unmap_vtd
}

fn add_remove_races_with_map_unmap(drv: Drv) {
    let ps = ps();
    let buf = Arc::new(RealBuf::new(32));
    let t = Arc::new(IoPagetable::new());
    let stop = Arc::new(AtomicBool::new(false));
    // Flips done so far: the workers go on until some happened while they
    // ran, however the threads are scheduled (no timing assumption).
    let flips = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flipper = {
        let (t, stop, flips) = (t.clone(), stop.clone(), flips.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let d = TestDom::add_to(&t, drv, n % 2 == 0);
                t.check_invariants().unwrap();
                t.remove_domain(d.id());
                assert!(d.is_empty());
                n += 1;
                flips.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    let workers: Vec<_> = (0..4u64)
        .map(|n| {
            let (t, buf, flips) = (t.clone(), buf.clone(), flips.clone());
            std::thread::spawn(move || {
                let start = flips.load(Ordering::Relaxed);
                let mut i = 0u64;
                while i < 200 || flips.load(Ordering::Relaxed) < start + 2 {
                    let iova = A + n * (1 << 22) + (i % 4) * 8 * ps;
                    let up = buf.addr() + ((i + n) % 16) * ps;
                    map(&t, up, 2 * ps, Some(iova), Prot::RW).unwrap();
                    assert_eq!(t.unmap(iova, 2 * ps).unwrap(), 2 * ps);
                    i += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(flipper.join().unwrap() > 0);
    ok(&t);
    for p in 0..32 {
        assert_eq!(pins(buf.addr() + p * ps), 0);
    }
}
