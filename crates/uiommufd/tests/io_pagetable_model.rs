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
use uiommufd::mock::domain::MOCK_APERTURE_START;
use uiommufd::user::{page_size as ps, SelfMemory};
use uiommufd_testkit::iopt_harness::{Driver, Harness, Op};
use uiommufd_testkit::iopt_model::AllAccessible;
use uiommufd_testkit::mem::Mapping;

/// The selftest's `MOCK_APERTURE_START`: where IOVAs move with domains
/// attached (inside the VT-d aperture too, which starts at 0).
const APERTURE: u64 = MOCK_APERTURE_START;

/// A user address that is never touched (creating pages does not read it).
const BUF: u64 = 1 << 31;

/// One shared real buffer for the variants with domains (80 pages, never
/// freed), aligned to the huge page size so that IOVA allocation sees the
/// same alignment as at `BUF`.
fn real_buf_base() -> u64 {
    use std::sync::OnceLock;
    static B: OnceLock<u64> = OnceLock::new();
    *B.get_or_init(|| {
        let m = Mapping::new(80, uiommufd::plumbing::io_pagetable::huge_page_size());
        Box::leak(Box::new(m)).addr()
    })
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
        1 => Just(Op::RemoveDomain(0)),
        4 => (iova_s(), any::<bool>()).prop_map(|(iova, write)| Op::Translate { iova, write }),
    ]
}

fn base_op_s() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (iova_s(), len_s(), uptr_s(), prop::bool::weighted(0.8), prop::bool::weighted(0.7)).prop_map(
            |(iova, len, uptr, writable, write)| Op::MapFixed { iova, len, uptr, writable, write }
        ),
        4 => (len_s(), uptr_s()).prop_map(|(len, uptr)| Op::MapAlloc { len, uptr, writable: true }),
        5 => (iova_s(), prop_oneof![len_s(), (1u64..20).prop_map(|p| p * ps())]).prop_map(|(iova, len)| Op::Unmap { iova, len }),
        1 => Just(Op::UnmapAll),
        4 => (iova_s(), len_s(), prop::option::of(iova_s()), prop::bool::weighted(0.3))
            .prop_map(|(src, len, dst, write)| Op::Copy { src, len, dst, write }),
        1 => prop::collection::vec(range_s(), 0..3).prop_map(Op::SetAllowed),
        1 => range_s().prop_map(|(a, b)| Op::AddReserved(a.min(b), a.max(b), 0)),
        1 => any::<bool>().prop_map(Op::LargePages),
    ]
}

/// Move an op generated for the no-domain layout (IOVAs from 0, user
/// addresses from `BUF`) into the mock aperture and onto real memory.
fn place(mut op: Op, iova_base: u64, uptr_base: u64) -> Op {
    let i = |x: u64| if x < 1 << 40 { x + iova_base } else { x };
    let u = |x: u64| x - BUF + uptr_base;
    match &mut op {
        Op::MapFixed { iova, uptr, .. } => {
            *iova = i(*iova);
            *uptr = u(*uptr);
        }
        Op::MapAlloc { uptr, .. } => *uptr = u(*uptr),
        Op::Unmap { iova, .. } | Op::Translate { iova, .. } => *iova = i(*iova),
        Op::Copy { src, dst, .. } => {
            *src = i(*src);
            *dst = dst.map(i);
        }
        Op::SetAllowed(ranges) => {
            for (a, b) in ranges {
                *a = i(*a);
                *b = i(*b);
            }
        }
        Op::AddReserved(a, b, _) => {
            *a = i(*a);
            *b = i(*b);
        }
        _ => {}
    }
    op
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
    let mut h = Harness::new(Arc::new(SelfMemory), driver);
    let variant = ndomains > 0;
    if !variant {
        h.max_domains = 0;
    }
    for step in 0..ndomains {
        let attached = h.apply(step, &Op::AddDomain { huge: false }, &AllAccessible);
        prop_assert_eq!(attached, Ok(true), "attaching domain {}", step);
    }
    for (step, op) in ops.into_iter().enumerate() {
        let op = if variant {
            place(op, APERTURE, real_buf_base())
        } else {
            op
        };
        h.apply(step, &op, &AllAccessible)
            .and_then(|_| h.check(step, &op))
            .map_err(TestCaseError::fail)?;
    }
    h.teardown(usize::MAX, &AllAccessible)
        .map_err(TestCaseError::fail)?;
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
