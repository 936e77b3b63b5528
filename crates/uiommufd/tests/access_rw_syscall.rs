//! Access rw without fault-safe copies (nothing installs them in this test
//! process): every byte goes through `process_vm_readv/writev`, and the
//! scenarios of `access_rw_fast.rs` give the same answers.

mod access_rw_paths;

use access_rw_paths as p;

fn off() {
    assert!(!uiommufd::faultsafe::enabled(), "nothing installs it here");
}

#[test]
fn differential_against_reference_path() {
    off();
    p::differential(7, 1500);
}

#[test]
fn fixed_cases() {
    off();
    p::fixed_cases(true);
    p::fixed_cases(false);
}

#[test]
fn efault_after_munmap() {
    off();
    let reasons = p::efault_after_munmap(true);
    assert!(reasons.iter().all(|r| !r.contains("host address")));
}

#[test]
fn stale_hints() {
    off();
    p::stale_hints(true);
}

#[test]
fn prevent_access() {
    off();
    p::prevent_access(true);
}

#[test]
fn racing_remaps() {
    off();
    p::racing_remaps(true);
}

#[test]
fn unmap_drains_copies() {
    off();
    p::unmap_drains_copies(true, 100);
}
