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
//! | [`uapi`] | uapi/iommufd.h, uapi/vfio.h, iommufd_test.h | ABI structs and constants, layouts only (the selftest's with feature `selftest`) |
//! | [`ucmd`] | main.c (`iommufd_ucmd`) | the command context every ioctl handler gets |
//! | [`dispatch`] | main.c | the one ioctl table, its size rules, the checks after an injected failure |
//! | [`ioas`] | ioas.c | IOAS objects and their ioctl handlers |
//! | [`io_pagetable`] | io_pagetable.c, iova_bitmap.c | IOVA → area tree, allowed/reserved ranges, IOVA allocation, domains, accesses, dirty bitmaps |
//! | [`pages`] | pages.c | single pin of user memory shared by areas; [`custody`] (pinned pages the program unmaps) and [`dmabuf`] live in its folder |
//! | [`accounting`] | pages.c | RLIMIT_MEMLOCK accounting modes |
//! | [`domain`] | include/linux/iommu.h | the driver API: what a driver implements ([`domain::Domain`], [`domain::NestedDomain`], [`domain::DeviceDriver`], [`domain::NestingOps`]) and what the core hands it ([`Prot`], [`domain::DirtyBitmap`], [`domain::UserData`]); page-size splitting |
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
//! | [`fail_nth`] | `/proc/.../fail-nth` | the fail-nth file as an engine file |
//! | [`logging`] | | `UIOMMUFD_LOG`: why each call failed |
//!
//! Test support (ioctl helpers, test memory, the IO page table reference
//! model) is the separate `uiommufd-testkit` crate.
//!
//! The modules form layers, each importing only its own and lower ones
//! (README, "Architecture"; checked by `tests/layers.rs`).
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
pub mod client;
pub mod context;
pub mod device;
pub mod devices;
pub mod dispatch;
pub mod domain;
mod drain;
mod error;
pub mod fail_nth;
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
pub mod ucmd;
pub mod user;
pub mod veventq;
pub mod vfio;
pub mod vfio_compat;
pub mod viommu;
pub mod vtd;

pub use context::{Context, ObjId};
pub use domain::Prot;
pub use error::{Errno, Error, Result};
pub use pages::{custody, dmabuf};
pub use uapi::level::UapiLevel;
