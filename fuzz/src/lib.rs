//! Harnesses of the uiommufd fuzz targets, shared by the libFuzzer binaries
//! (`fuzz_targets/`) and by the plain regression tests
//! (`crates/uiommufd/tests/fuzz_regressions.rs`, which include this file
//! with `#[path]`), so that every input replays the same way under both.
//!
//! * [`dispatcher`]: sequences of ioctls with fuzzed bytes through
//!   `dispatch::ioctl` on one context;
//! * [`iopt_model`]: IO page table operations checked against a reference
//!   model;
//! * [`faultsafe`]: the engine's fault-safe user copies against memory that
//!   another thread unmaps, `mprotect`s and truncates under them;
//! * [`vfio_device`]: ioctls, region accesses, interrupts and DMA on an
//!   emulated VFIO device's fds.
//!
//! A harness *panics* on a finding (a broken invariant, an engine panic
//! turned into `EIO`, a model mismatch, leaked pins or objects); every other
//! outcome of an input is fine.

pub mod arena;
pub mod dispatcher;
pub mod faultsafe;
pub mod input;
pub mod iopt_model;
pub mod vfio_device;
