//! The IO page table's model-based proptests: random operations on one
//! [`IoPagetable`] checked step by step against the reference model of the
//! test kit ([`uiommufd_testkit::iopt_model`], the one the fuzz target
//! `io_pagetable_model` uses), in the selftest's `no_domain`,
//! `mock_domain` and `two_mock_domain` variants, and the same with VT-d
//! second-stage domains (the software IOMMU) in place of the mock ones.
//! With domains attached, every step also compares each domain's tables
//! with the model (its runs of IOVA → host address) and checks
//! `Domain::translate` at the edges of every area, just past them, and at
//! random IOVAs against the model's translation (with the permission: a
//! write to a read-only area faults).
//!
//! User memory is all there for the model ([`AllAccessible`]): without
//! domains nothing is pinned (`BUF` is never touched), with domains the
//! user addresses move onto a real buffer larger than any map.

use std::sync::Arc;

use proptest::prelude::*;
use uiommufd::accounting::AccountMode;
use uiommufd::domain::DmaFault;
use uiommufd::domain::Domain;
use uiommufd::io_pagetable::{IoPagetable, IovaRequest, MapSource};
use uiommufd::mock::domain::{MockDomain, MOCK_APERTURE_START};
use uiommufd::pages::Pages;
use uiommufd::user::{page_size, SelfMemory};
use uiommufd::vtd::VtdDomain;
use uiommufd::{Prot, Result};
use uiommufd_testkit::iopt_model::{AllAccessible, DomainGeometry, MSrc, Model};
use uiommufd_testkit::mem::Mapping;

fn ps() -> u64 {
    page_size()
}

/// The selftest's `MOCK_APERTURE_START`: where IOVAs move with domains
/// attached (inside the VT-d aperture too, which starts at 0).
const APERTURE: u64 = MOCK_APERTURE_START;
/// The VT-d domains' address width (4 levels).
const VTD_AW: u32 = 48;

/// The driver whose domains a run attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// The selftest mock (`huge`: `MOCK_FLAGS_DEVICE_HUGE_IOVA`).
    Mock,
    /// The software IOMMU's VT-d second stage (`huge`: 2 MiB and 1 GiB
    /// leaves allowed, else 4 KiB only).
    Vtd,
}

/// A domain of either driver, with what the checks need of it.
#[derive(Debug, Clone)]
enum TestDomain {
    Mock(Arc<MockDomain>),
    Vtd(Arc<VtdDomain>),
}

impl TestDomain {
    fn new(driver: Driver, huge: bool) -> TestDomain {
        match driver {
            Driver::Mock => TestDomain::Mock(MockDomain::new(huge)),
            Driver::Vtd => TestDomain::Vtd(if huge {
                VtdDomain::new(VTD_AW, false).unwrap()
            } else {
                VtdDomain::with_max_page(VTD_AW, false, 1 << 12).unwrap()
            }),
        }
    }

    fn geometry(driver: Driver) -> DomainGeometry {
        match driver {
            Driver::Mock => DomainGeometry::mock(),
            Driver::Vtd => DomainGeometry::vtd(VTD_AW),
        }
    }

    fn domain(&self) -> Arc<dyn Domain> {
        match self {
            TestDomain::Mock(d) => d.clone(),
            TestDomain::Vtd(d) => d.clone(),
        }
    }

    fn id(&self) -> u64 {
        self.domain().id()
    }

    /// Maximal runs `(iova, host address, length)`.
    fn runs(&self) -> Vec<(u64, u64, u64)> {
        match self {
            TestDomain::Mock(d) => d.runs(),
            TestDomain::Vtd(d) => d.runs(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            TestDomain::Mock(d) => d.is_empty(),
            TestDomain::Vtd(d) => d.is_empty(),
        }
    }

    /// Unmaps that cut a map (the mock counts them; the VT-d tables split
    /// leaves, and the runs comparison catches a wrong cut).
    fn warnings(&self) -> u64 {
        match self {
            TestDomain::Mock(d) => d.warnings(),
            TestDomain::Vtd(_) => 0,
        }
    }
}

/// What the model says `iova` translates to: `(host address, writable)`.
fn model_translate(m: &Model, iova: u64) -> Option<(u64, bool)> {
    let (&k, a) = m.areas.range(..=iova).next_back()?;
    (iova <= a.last(k)).then(|| (a.uptr + (iova - k), a.write))
}

/// `d.translate(iova, len, write)` against the model.
fn check_translate(
    d: &TestDomain,
    m: &Model,
    iova: u64,
    len: u64,
    write: bool,
) -> std::result::Result<(), String> {
    let got = d.domain().translate(iova, len, write);
    let ctx = format!(
        "domain {} translate({iova:#x}, {len:#x}, write {write})",
        d.id()
    );
    match (model_translate(m, iova), got) {
        (None, Err(DmaFault::NotPresent { iova: f })) if f == iova => Ok(()),
        (
            Some((_, false)),
            Err(DmaFault::Permission {
                iova: f,
                write: true,
            }),
        ) if write && f == iova => Ok(()),
        (Some((host, w)), Ok((h, n))) if h == host && n >= 1 && n <= len && (w || !write) => {
            // every byte of the contiguous run the domain reports is the
            // model's too
            match model_translate(m, iova + n - 1) {
                Some((hl, _)) if hl == host + n - 1 => Ok(()),
                want => Err(format!(
                    "{ctx}: ({h:#x}, {n:#x}) but its last byte is {want:x?} in the model"
                )),
            }
        }
        (want, got) => Err(format!("{ctx}: got {got:x?}, the model says {want:x?}")),
    }
}

/// Translation probes after a step: both edges of every area, the IOVA
/// just before and just past it, and `extra` (random IOVAs of the ops).
fn check_translations(
    doms: &[TestDomain],
    m: &Model,
    extra: &[(u64, bool)],
) -> std::result::Result<(), String> {
    let mut probes: Vec<(u64, u64, bool)> = Vec::new();
    for (&k, a) in &m.areas {
        let l = a.last(k);
        for w in [false, true] {
            probes.push((k, a.len, w));
            probes.push((l, 1, w));
            probes.push((k + a.len / 2, a.len - a.len / 2, w));
        }
        if k > 0 {
            probes.push((k - 1, 1, false));
        }
        if l < u64::MAX {
            probes.push((l + 1, 1, false));
        }
    }
    probes.extend(extra.iter().map(|&(i, w)| (i, 4096, w)));
    for d in doms {
        for &(iova, len, write) in &probes {
            check_translate(d, m, iova, len, write)?;
        }
    }
    Ok(())
}
/// A user address that is never touched (creating pages does not read it).
const BUF: u64 = 1 << 31;

/// One shared real buffer for the variants with domains (80 pages, never
/// freed), aligned to the huge page size so that IOVA allocation sees the
/// same alignment as at `BUF`.
fn real_buf_base() -> u64 {
    use std::sync::OnceLock;
    static B: OnceLock<u64> = OnceLock::new();
    *B.get_or_init(|| {
        let m = Mapping::new(80, uiommufd::io_pagetable::huge_page_size());
        Box::leak(Box::new(m)).addr()
    })
}

fn src(uptr: u64, len: u64, writable: bool) -> MapSource {
    let p = Pages::new(Arc::new(SelfMemory), uptr, len, writable, AccountMode::None);
    MapSource {
        start_byte: uptr - p.uptr(),
        pages: p,
        length: len,
    }
}

#[derive(Debug, Clone)]
enum Op {
    MapFixed {
        iova: u64,
        len: u64,
        uptr: u64,
        writable: bool,
        write: bool,
    },
    MapAlloc {
        len: u64,
        uptr: u64,
    },
    Unmap {
        iova: u64,
        len: u64,
    },
    UnmapAll,
    Copy {
        src: u64,
        len: u64,
        dst: Option<u64>,
        write: bool,
    },
    SetAllowed(Vec<(u64, u64)>),
    AddReserved(u64, u64),
    LargePages(bool),
    /// Attach a new mock domain (variants with domains only).
    AddDomain {
        huge: bool,
    },
    /// Detach the oldest attached domain (variants with domains only).
    RemoveDomain,
    /// Translate `iova` through every attached domain (a read or a write)
    /// and compare with the model.
    Translate {
        iova: u64,
        write: bool,
    },
}

fn iova_s() -> impl Strategy<Value = u64> {
    let ps = ps();
    prop_oneof![
        8 => (0u64..48).prop_map(move |p| p * ps),
        1 => (0u64..48).prop_map(move |p| p * ps + ps / 2),
        1 => (0u64..48, 1u64..64).prop_map(move |(p, o)| p * ps + o),
        1 => (1u64..4).prop_map(move |p| (u64::MAX - p * ps).wrapping_add(1)),
    ]
}

fn len_s() -> impl Strategy<Value = u64> {
    let ps = ps();
    prop_oneof![
        8 => (1u64..7).prop_map(move |p| p * ps),
        1 => (1u64..7).prop_map(move |p| p * ps - ps / 2),
        1 => 1u64..64,
    ]
}

fn uptr_s() -> impl Strategy<Value = u64> {
    let ps = ps();
    prop_oneof![
        6 => (0u64..64).prop_map(move |p| BUF + p * ps),
        1 => (0u64..64).prop_map(move |p| BUF + p * ps + ps / 2),
        1 => (0u64..64, 1u64..64).prop_map(move |(p, o)| BUF + p * ps + o),
    ]
}

fn range_s() -> impl Strategy<Value = (u64, u64)> {
    let ps = ps();
    (0u64..64, 0u64..64, 0u64..3)
        .prop_map(move |(a, b, o)| (a * ps + o, b * ps + o.saturating_sub(1)))
}

fn op_s() -> impl Strategy<Value = Op> {
    base_op_s()
}

/// Ops for the variants with mock domains: the base ops plus attaching and
/// detaching domains.
fn domain_op_s() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => base_op_s(),
        1 => any::<bool>().prop_map(|huge| Op::AddDomain { huge }),
        1 => Just(Op::RemoveDomain),
        4 => (iova_s(), any::<bool>()).prop_map(|(iova, write)| Op::Translate { iova, write }),
    ]
}

fn base_op_s() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (iova_s(), len_s(), uptr_s(), prop::bool::weighted(0.8), prop::bool::weighted(0.7)).prop_map(
            |(iova, len, uptr, writable, write)| Op::MapFixed { iova, len, uptr, writable, write }
        ),
        4 => (len_s(), uptr_s()).prop_map(|(len, uptr)| Op::MapAlloc { len, uptr }),
        5 => (iova_s(), prop_oneof![len_s(), (1u64..20).prop_map(|p| p * ps())]).prop_map(|(iova, len)| Op::Unmap { iova, len }),
        1 => Just(Op::UnmapAll),
        4 => (iova_s(), len_s(), prop::option::of(iova_s()), prop::bool::weighted(0.3))
            .prop_map(|(src, len, dst, write)| Op::Copy { src, len, dst, write }),
        1 => prop::collection::vec(range_s(), 0..3).prop_map(Op::SetAllowed),
        1 => range_s().prop_map(|(a, b)| Op::AddReserved(a.min(b), a.max(b))),
        1 => any::<bool>().prop_map(Op::LargePages),
    ]
}

fn class<T>(r: &Result<T>) -> std::result::Result<(), i32> {
    r.as_ref().map(|_| ()).map_err(|e| e.errno().0)
}

/// Move an op generated for the no-domain layout (IOVAs from 0, user
/// addresses from `BUF`) into the mock aperture and onto real memory.
fn place(op: Op, iova_base: u64, uptr_base: u64) -> Op {
    let i = |x: u64| if x < 1 << 40 { x + iova_base } else { x };
    let u = |x: u64| x - BUF + uptr_base;
    match op {
        Op::MapFixed {
            iova,
            len,
            uptr,
            writable,
            write,
        } => Op::MapFixed {
            iova: i(iova),
            len,
            uptr: u(uptr),
            writable,
            write,
        },
        Op::MapAlloc { len, uptr } => Op::MapAlloc { len, uptr: u(uptr) },
        Op::Unmap { iova, len } => Op::Unmap { iova: i(iova), len },
        Op::Copy {
            src,
            len,
            dst,
            write,
        } => Op::Copy {
            src: i(src),
            len,
            dst: dst.map(i),
            write,
        },
        Op::SetAllowed(r) => Op::SetAllowed(r.into_iter().map(|(a, b)| (i(a), i(b))).collect()),
        Op::AddReserved(a, b) => Op::AddReserved(i(a), i(b)),
        Op::Translate { iova, write } => Op::Translate {
            iova: i(iova),
            write,
        },
        op => op,
    }
}

/// Run `ops` against the table and the model with `ndomains` domains of
/// `driver` attached first (the selftest's no_domain / mock_domain /
/// two_mock_domain variants). With domains, IOVAs move into the mock
/// aperture and user addresses onto real memory (pinning populates it).
fn run_ops(
    ops: Vec<Op>,
    driver: Driver,
    ndomains: usize,
) -> std::result::Result<(), TestCaseError> {
    let t = IoPagetable::new();
    let mut m = Model {
        geometry: TestDomain::geometry(driver),
        ..Model::default()
    };
    let variant = ndomains > 0;
    let mut doms: Vec<TestDomain> = Vec::new();
    for _ in 0..ndomains {
        let d = TestDomain::new(driver, false);
        t.add_domain(d.domain()).unwrap();
        m.add_domain(&AllAccessible).unwrap();
        m.domains += 1;
        doms.push(d);
    }
    for (step, op) in ops.into_iter().enumerate() {
        let op = if variant {
            place(op, APERTURE, real_buf_base())
        } else {
            op
        };
        let mut probes = Vec::new();
        match op.clone() {
            Op::MapFixed {
                iova,
                len,
                uptr,
                writable,
                write,
            } => {
                let s = src(uptr, len, writable);
                let ms = [MSrc {
                    uptr,
                    len,
                    pages_id: s.pages.id(),
                    writable,
                }];
                let prot = Prot { read: true, write };
                let r = t.map(vec![s], len, IovaRequest::Fixed(iova), prot);
                let want = m.map(&AllAccessible, &ms, len, Some(iova), write);
                prop_assert_eq!(
                    class(&r),
                    want.as_ref().map(|_| ()).map_err(|&e| e),
                    "step {} {:?}: {:?}",
                    step,
                    op,
                    r
                );
                if r.is_ok() {
                    m.insert(&ms, iova, write);
                }
            }
            Op::MapAlloc { len, uptr } => {
                let s = src(uptr, len, true);
                let ms = [MSrc {
                    uptr,
                    len,
                    pages_id: s.pages.id(),
                    writable: true,
                }];
                let r = t.map(vec![s], len, IovaRequest::Alloc, Prot::RW);
                let want = m.map(&AllAccessible, &ms, len, None, true);
                prop_assert_eq!(
                    class(&r),
                    want.as_ref().map(|_| ()).map_err(|&e| e),
                    "step {} {:?}: {:?}",
                    step,
                    op,
                    r
                );
                if let Ok(iova) = r {
                    prop_assert!(
                        want.unwrap().contains(&iova),
                        "step {step}: allocated {iova:#x} breaks the rules"
                    );
                    m.insert(&ms, iova, true);
                }
            }
            Op::Unmap { iova, len } => {
                let r = t.unmap(iova, len);
                match iova.checked_add(len - 1) {
                    None => prop_assert_eq!(class(&r), Err(libc::EOVERFLOW)),
                    Some(l) => {
                        let want = m.unmap(iova, l);
                        prop_assert_eq!(
                            r.as_ref().map_err(|e| e.errno().0).copied(),
                            want,
                            "step {} {:?}",
                            step,
                            op
                        );
                    }
                }
            }
            Op::UnmapAll => {
                let want = m.unmap(0, u64::MAX).unwrap();
                prop_assert_eq!(t.unmap_all().unwrap(), want);
            }
            Op::Copy {
                src,
                len,
                dst,
                write,
            } => {
                let got = t.get_pages(src, len);
                let want = m.get_pages(src, len);
                prop_assert_eq!(
                    class(&got),
                    want.as_ref().map(|_| ()).map_err(|&e| e),
                    "step {} {:?}",
                    step,
                    op
                );
                if let (Ok(got), Ok(want)) = (got, want) {
                    prop_assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert_eq!(
                            (g.pages.uptr() + g.start_byte, g.length, g.pages.id()),
                            (w.uptr, w.len, w.pages_id)
                        );
                    }
                    let prot = Prot { read: true, write };
                    let r = t.map(
                        got,
                        len,
                        dst.map_or(IovaRequest::Alloc, IovaRequest::Fixed),
                        prot,
                    );
                    let mw = m.map(&AllAccessible, &want, len, dst, write);
                    prop_assert_eq!(
                        class(&r),
                        mw.as_ref().map(|_| ()).map_err(|&e| e),
                        "step {} {:?}: {:?}",
                        step,
                        op,
                        r
                    );
                    if let Ok(iova) = r {
                        prop_assert!(mw.unwrap().contains(&iova));
                        m.insert(&want, iova, write);
                    }
                }
            }
            Op::SetAllowed(ranges) => {
                let r = t.set_allowed(&ranges);
                let want = m.set_allowed(&ranges);
                prop_assert_eq!(class(&r), want, "step {} {:?}", step, op);
            }
            Op::AddReserved(s, l) => {
                let r = t.add_reserved(s, l, 0);
                let want = m.add_reserved(s, l, 0);
                prop_assert_eq!(class(&r), want, "step {} {:?}", step, op);
            }
            Op::AddDomain { huge } => {
                if !variant {
                    continue;
                }
                let d = TestDomain::new(driver, huge);
                let r = t.add_domain(d.domain());
                let want = m.add_domain(&AllAccessible);
                prop_assert_eq!(class(&r), want, "step {} {:?}: {:?}", step, op, r);
                if r.is_ok() {
                    m.domains += 1;
                    doms.push(d);
                } else {
                    prop_assert!(d.is_empty(), "a refused domain stays empty");
                }
            }
            Op::RemoveDomain => {
                if doms.is_empty() {
                    continue;
                }
                let d = doms.remove(0);
                t.remove_domain(d.id());
                m.domains -= 1;
                prop_assert!(d.is_empty(), "step {}: a removed domain is emptied", step);
            }
            Op::Translate { iova, write } => probes.push((iova, write)),
            Op::LargePages(enable) => {
                let r = t.set_large_pages(enable);
                let want = m.set_large_pages(enable);
                prop_assert_eq!(class(&r), want, "step {} {:?}", step, op);
            }
        }
        if let Err(e) = t.check_invariants() {
            return Err(TestCaseError::fail(format!("step {step} {op:?}: {e}")));
        }
        let have: Vec<(u64, u64, u64, u64)> = t
            .areas()
            .iter()
            .map(|a| (a.iova, a.length, a.uptr, a.pages_id))
            .collect();
        let want: Vec<(u64, u64, u64, u64)> = m
            .areas
            .iter()
            .map(|(&k, a)| (k, a.len, a.uptr, a.pages_id))
            .collect();
        prop_assert_eq!(have, want, "step {} {:?}", step, op);
        prop_assert_eq!(t.iova_ranges(), (m.iova_ranges(), m.align()));
        prop_assert_eq!(t.large_pages(), !m.small_pages);
        prop_assert_eq!(t.domains().len(), m.domains);
        for d in &doms {
            prop_assert_eq!(d.warnings(), 0, "step {}: an unmap cut a map", step);
            prop_assert_eq!(
                d.runs(),
                m.domain_runs(),
                "step {} {:?}: domain {} does not map what the model says",
                step,
                op,
                d.id()
            );
        }
        if let Err(e) = check_translations(&doms, &m, &probes) {
            return Err(TestCaseError::fail(format!("step {step} {op:?}: {e}")));
        }
    }
    let want = m.unmap(0, u64::MAX).unwrap();
    prop_assert_eq!(t.unmap_all().unwrap(), want);
    for d in &doms {
        prop_assert!(d.is_empty(), "unmap_all leaves domain {} empty", d.id());
        t.remove_domain(d.id());
    }
    if let Err(e) = t.check_invariants() {
        return Err(TestCaseError::fail(format!("after teardown: {e}")));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn io_pagetable_proptest_matches_model(ops in prop::collection::vec(op_s(), 1..60)) {
        run_ops(ops, Driver::Mock, 0)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn io_pagetable_proptest_mock_domain(ops in prop::collection::vec(domain_op_s(), 1..60)) {
        run_ops(ops, Driver::Mock, 1)?;
    }

    #[test]
    fn io_pagetable_proptest_two_mock_domains(ops in prop::collection::vec(domain_op_s(), 1..60)) {
        run_ops(ops, Driver::Mock, 2)?;
    }

    #[test]
    fn io_pagetable_proptest_vtd_domain(ops in prop::collection::vec(domain_op_s(), 1..60)) {
        run_ops(ops, Driver::Vtd, 1)?;
    }

    #[test]
    fn io_pagetable_proptest_two_vtd_domains(ops in prop::collection::vec(domain_op_s(), 1..60)) {
        run_ops(ops, Driver::Vtd, 2)?;
    }
}
