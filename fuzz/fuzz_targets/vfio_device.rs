//! libFuzzer target: ioctls, region accesses, interrupts and DMA on an
//! emulated VFIO device's fds (see `uiommufd_fuzz::vfio_device`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    uiommufd_fuzz::vfio_device::run(data);
});
