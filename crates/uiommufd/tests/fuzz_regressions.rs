//! Regression tests from fuzzing (`fuzz/`, `scripts/fuzz.sh`).
//!
//! Every input under `fuzz/regressions/<target>/` (seeds and each crash the
//! fuzzers found) is replayed through the same harness the libFuzzer
//! binaries use (included from `fuzz/src/` below), and each bug found has a
//! minimal hand-written case here as well.

#[allow(dead_code, unreachable_pub)]
#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

use uiommufd::uapi::*;
use uiommufd::{Context, Prot};
use uiommufd_testkit::{ioas_alloc, ioc};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no inputs in {}", dir.display());
    v
}

/// Replays every stored input of fuzz target `target` through its harness
/// entry `run` (what `run` returns, coverage counts, is not needed here).
fn replay<R>(target: &str, run: impl Fn(&[u8]) -> R + std::panic::RefUnwindSafe) {
    for p in inputs(target) {
        let data = std::fs::read(&p).expect("readable input");
        let r = std::panic::catch_unwind(|| run(&data));
        if r.is_err() {
            panic!("{target}: input {} fails", p.display());
        }
    }
}

#[test]
fn replay_dispatcher_inputs() {
    replay("dispatcher", harness::dispatcher::run);
}

#[test]
fn replay_faultsafe_copy_inputs() {
    replay("faultsafe_copy", harness::faultsafe::run);
}

#[test]
fn replay_vfio_device_inputs() {
    replay("vfio_device", harness::vfio_device::run);
}

#[test]
fn replay_io_pagetable_model_inputs() {
    replay("io_pagetable_model", harness::iopt_model::run);
}

/// Found by `dispatcher` (VFIO_IOMMU_MAP_DMA): a user range ending in the
/// last page of the address space overflowed `Pages::new` rounding its end
/// up to a page (`attempt to multiply with overflow`), and an object that
/// large overflowed `Pages::len_bytes`.
#[test]
fn map_ending_in_last_page_of_address_space() {
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    for (va, len) in [(1u64 << 63, (1u64 << 63) - 1), (4095, u64::MAX - 4096)] {
        let mut m = IommuIoasMap {
            size: 40,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
            ioas_id: ioas,
            user_va: va,
            length: len,
            iova: 0,
            ..Default::default()
        };
        // nothing is pinned without a domain: the map itself succeeds
        // (a caught engine panic would be EIO)
        assert_eq!(ioc(&ctx, IOMMU_IOAS_MAP, &mut m), Ok(0));
        ctx.check_invariants().unwrap();
        let i = ctx.ioas(ioas).unwrap();
        assert_eq!(i.unmap(0, len).unwrap(), len);
        let iova = i.map_user(va, 4096, None, Prot::RO).unwrap();
        ctx.check_invariants().unwrap();
        i.unmap(iova, 4096).unwrap();
    }
}

/// Not a regression: replays a corpus directory through a harness and
/// prints which operations succeeded how often, to see what a corpus
/// exercises. `UIOMMUFD_FUZZ_TARGET` (default `dispatcher`) and
/// `UIOMMUFD_FUZZ_CORPUS` (default the checked-in inputs) choose:
/// `cargo test -p uiommufd --test fuzz_regressions corpus_stats -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn corpus_stats() {
    let target = std::env::var("UIOMMUFD_FUZZ_TARGET").unwrap_or_else(|_| "dispatcher".into());
    let dir = std::env::var("UIOMMUFD_FUZZ_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fuzz/regressions")
                .join(&target)
        });
    let mut total: std::collections::BTreeMap<String, usize> = Default::default();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("corpus directory") {
        // a running fuzzer may replace files meanwhile
        let Ok(data) = std::fs::read(e.expect("entry").path()) else {
            continue;
        };
        let counts: Vec<(String, usize)> = if target == "dispatcher" {
            harness::dispatcher::run(&data)
                .into_iter()
                .map(|((num, op), v)| (format!("{num:#x}/{op}"), v))
                .collect()
        } else {
            harness::iopt_model::run(&data)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        };
        for (k, v) in counts {
            *total.entry(k).or_insert(0) += v;
        }
        n += 1;
    }
    println!("{target}: {n} inputs, successful operations: {total:#?}");
}
