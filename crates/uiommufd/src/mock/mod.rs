//! The selftest's mock driver and `IOMMU_TEST_CMD` (the kernel's selftest.c).
//!
//! The mock driver is a driver like any other on top of the engine: its
//! devices ([`device::MockDevice`]) bind to a context through the generic
//! device layer, its domains ([`domain::MockDomain`]) implement the generic
//! [`crate::domain::Domain`] trait, and its accesses
//! ([`access::MockAccessFile`]) use the generic access API. Its nested
//! domains ([`nested::MockNestedDomain`]) implement
//! [`crate::hwpt::nested::NestedDomain`]. Its dma-buf exporter ([`dmabuf`])
//! hands out engine dma-bufs ([`crate::dmabuf`]). The test command's
//! handlers (`ioctl.rs`, split from the objects as in `ioas/`) only drive
//! them.

pub mod access;
pub mod device;
pub mod dmabuf;
pub mod domain;
mod ioctl;
pub mod nested;
pub mod viommu;

pub use device::MockStdev;
pub(crate) use ioctl::test_cmd;

use std::sync::atomic::AtomicU32;

/// `iommufd_test_memory_limit`: the batch memory limit the selftest sets
/// (the kernel sizes its temporary pin batches from it; we record it).
/// A process-wide knob on purpose: the kernel's is a module global of the
/// selftest code too, set by `IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT` from any
/// context, and no client or context owns it.
pub static TEMP_MEMORY_LIMIT: AtomicU32 = AtomicU32::new(65536);
