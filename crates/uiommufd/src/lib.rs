//! # uiommufd
//!
//! The Linux IOMMUFD subsystem (`/dev/iommu`) rebuilt in userspace: the same
//! objects, the same ioctl ABI and the same errno semantics as Linux 6.12,
//! with no kernel support, no root and no IOMMU.
//!
//! The crate is organised like the kernel's `drivers/iommu/iommufd`:
//!
//! | module | kernel | what |
//! |---|---|---|
//! | [`context`] | main.c | the fd context, the object model ([`context::Object`], typed lookups), object table, destroy |
//! | [`uapi`] | uapi/iommufd.h, uapi/vfio.h, iommufd_test.h, main.c | ABI structs (the selftest's with feature `selftest`), ioctl dispatch and size rules |
//! | [`ioas`] | ioas.c | IOAS objects and their ioctl handlers |
//! | [`io_pagetable`] | io_pagetable.c, iova_bitmap.c | IOVA → area tree, allowed/reserved ranges, IOVA allocation, domains, accesses, dirty bitmaps |
//! | [`pages`] | pages.c | single pin of user memory shared by areas |
//! | [`accounting`] | pages.c | RLIMIT_MEMLOCK accounting modes |
//! | [`dmabuf`] | dma-buf core, pages.c (`IOPT_ADDRESS_DMABUF`) | dma-buf fds, their import by `IOAS_MAP_FILE`, revocation |
//! | [`domain`] | iommu_domain ops | what a translation table can do |
//! | [`device`] | device.c | devices: bind, attach, replace, detach |
//! | [`hwpt`] | hw_pagetable.c | paging and nested HWPTs, dirty tracking, `IOMMU_GET_HW_INFO` |
//! | [`fault`] | fault.c, io-pgfault.c | I/O page fault queues and their fds |
//! | [`viommu`] | viommu.c, driver.c | vIOMMUs, vDEVICEs, HW queues |
//! | [`veventq`] | eventq.c | vEVENT queues and their fds |
//! | [`access`] | device.c (access) | pin and read/write by IOVA for emulated devices |
//! | [`files`] | anon inodes | real fds for engine objects |
//! | [`vfio_compat`] | vfio_compat.c, vfio_iommu_type1.c | VFIO type1 container ioctls and dirty tracking |
//! | `mock` | selftest.c | the selftest's mock driver and `IOMMU_TEST_CMD` (feature `selftest`, on by default) |
//! | [`vtd`] | intel/iommu.c | the software IOMMU: VT-d second-stage page tables, translation, IOTLB, DMA by IOVA, dirty tracking from D bits |
//! | [`user`] | copy_*_user, GUP | fault-safe user memory access |
//! | [`faultsafe`] | exception tables | in-process copies whose faults become `EFAULT` |
//! | [`inject`] | `iommufd_should_fail`, fail-nth | failure injection points |
//! | [`logging`] | | `UIOMMUFD_LOG`: why each call failed |
//!
//! Test support (ioctl helpers, test memory, the IO page table reference
//! model) is the separate `uiommufd-testkit` crate.
//!
//! Data flows one way: uAPI bytes → handler (validate, copy in) → engine
//! call → handler (copy out). The engine speaks typed Rust.
//!
//! ```
//! use uiommufd::Context;
//! let ctx = Context::new();
//! let ioas = ctx.ioas_alloc().unwrap();
//! let buf = vec![0u8; 4096 * 4];
//! let iova = ctx.ioas(ioas).unwrap()
//!     .map_user(buf.as_ptr() as u64, 4096, None, uiommufd::Prot::RW).unwrap();
//! assert_eq!(ctx.ioas(ioas).unwrap().unmap(iova, 4096).unwrap(), 4096);
//! ```

pub mod access;
pub mod accounting;
pub mod context;
pub mod custody;
pub mod device;
pub mod devices;
pub mod dmabuf;
pub mod domain;
mod drain;
mod error;
pub mod fault;
pub mod faultsafe;
pub mod files;
pub mod hwpt;
pub mod inject;
pub mod io_pagetable;
pub mod ioas;
pub mod logging;
pub mod mmap;
#[cfg(feature = "selftest")]
pub mod mock;
pub mod pages;
pub mod process;
pub mod uapi;
pub mod user;
pub mod veventq;
pub mod vfio;
pub mod vfio_compat;
pub mod viommu;
pub mod vtd;

pub use context::{Context, ObjId};
pub use error::{Errno, Error, Result};
pub use io_pagetable::Prot;
pub use uapi::level::UapiLevel;
