//! libFuzzer target: IO page table operations against a reference model
//! (see `uiommufd_fuzz::iopt_model`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    uiommufd_fuzz::iopt_model::run(data);
});
