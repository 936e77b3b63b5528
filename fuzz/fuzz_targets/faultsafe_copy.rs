//! libFuzzer target: fault-safe user copies racing `munmap`/`mprotect`/
//! truncation (see `uiommufd_fuzz::faultsafe`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    uiommufd_fuzz::faultsafe::run(data);
});
