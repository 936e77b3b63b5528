//! libFuzzer target: ioctl programs through the dispatcher (see
//! `uiommufd_fuzz::dispatcher`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    uiommufd_fuzz::dispatcher::run(data);
});
