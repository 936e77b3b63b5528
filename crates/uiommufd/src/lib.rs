//! # uiommufd
//!
//! The Linux IOMMUFD subsystem (`/dev/iommu`) rebuilt in userspace: the same
//! objects, the same ioctl ABI and the same errno semantics as Linux 6.12,
//! with no kernel support, no root and no IOMMU.
//!
//! # The public API
//!
//! What a Rust VMM (or any embedder) uses, re-exported at the crate root
//! where it is used most:
//!
//! - a [`Context`]: one open of `/dev/iommu` (or, with
//!   [`Context::new_vfio_container`], of `/dev/vfio/vfio`), the table of
//!   its objects by [`ObjId`], at a [`UapiLevel`];
//! - IO address spaces ([`Ioas`], the module [`ioas`]): map user memory or
//!   files at an IOVA ([`Ioas::map_user`], [`Ioas::map_file`]) with a
//!   [`Prot`], unmap, copy, allowed and reserved ranges, the areas mapped
//!   ([`ioas::AreaInfo`]);
//! - devices ([`Device`]): bind a device driver, attach to an IOAS (an
//!   automatic domain) or a HWPT, replace, detach, per-PASID attach; the
//!   domains they translate through ([`HwptPaging`], [`HwptNested`]);
//! - accesses ([`Access`]): emulated devices that read, write and pin by
//!   IOVA, told of unmaps through [`AccessOps`];
//! - I/O page faults ([`Fault`]), vIOMMUs ([`Viommu`]), vEVENT queues
//!   ([`Veventq`]);
//! - the driver API ([`domain`]): what an IOMMU driver implements
//!   ([`domain::Domain`], [`domain::NestedDomain`], [`domain::DeviceDriver`])
//!   and what the core hands it; the software VT-d IOMMU ([`vtd`]) is one
//!   such driver, the selftest's mock ([`mock`], feature `selftest`)
//!   another;
//! - VFIO devices ([`vfio`]: the device registry, the model contract,
//!   device and group files, migration) and the emulated device models
//!   ([`devices`]);
//! - the ioctl entry points ([`dispatch::ioctl`], [`dispatch::ioctl_as`])
//!   with the ABI layouts ([`uapi`]), for callers that speak the C ABI
//!   (the `LD_PRELOAD` shim, or a VMM replaying a guest's commands), and
//!   the engine fds some commands hand out ([`fds`]);
//! - errors ([`Error`], [`Errno`], [`Result`]): every failure carries the
//!   kernel's errno and a reason.
//!
//! The engine's internals (the IO page table, the command context, the
//! VFIO container's handlers, the engine-fd registry) are `pub(crate)`.
//! What the workspace's own crates need of them (the preload's fd plumbing,
//! the testkit's reference model, white-box tests) is re-exported, item by
//! item, in one hidden module, [`plumbing`], whose documentation says why:
//! it is no API, follows no semver, and an embedder should not name it.
//! One module rather than a cargo feature, so that a sibling crate needs
//! no feature switch and an embedder gets exactly one place to stay away
//! from. The host-memory modules stay public: [`client`] (the process on
//! the other side of the fd, its limit and counters), [`accounting`],
//! [`user`], [`process`] and [`pages`] are what an embedder serving several
//! processes builds on; [`inject`] and [`fail_nth`] are the failure
//! injection a program under test drives.
//!
//! ## Examples
//!
//! Map a buffer into an IOAS and unmap it:
//!
//! ```
//! use uiommufd::{Context, Prot};
//! let ctx = Context::new();
//! let ioas = ctx.ioas_alloc().unwrap();
//! let buf = vec![0u8; 4096 * 4];
//! let iova = ctx.ioas(ioas).unwrap()
//!     .map_user(buf.as_ptr() as u64, 4096, None, Prot::RW).unwrap();
//! assert_eq!(ctx.ioas(ioas).unwrap().unmap(iova, 4096).unwrap(), 4096);
//! ```
//!
//! [`Access`] and [`Device`] show an emulated device reading and writing
//! guest memory by IOVA, and a device behind the software VT-d IOMMU
//! attached to an IOAS.
//!
//! The C ABI through the ioctl table:
//!
//! ```
//! use uiommufd::{dispatch, uapi, Context};
//! let ctx = Context::new();
//! let mut cmd = uapi::IommuIoasAlloc {
//!     size: std::mem::size_of::<uapi::IommuIoasAlloc>() as u32,
//!     ..Default::default()
//! };
//! dispatch::ioctl(&ctx, uapi::IOMMU_IOAS_ALLOC as u64, &mut cmd as *mut _ as u64).unwrap();
//! assert!(ctx.ioas(cmd.out_ioas_id).is_ok());
//! ```
//!
//! # Modules
//!
//! The crate is organised like the kernel's `drivers/iommu/iommufd`; each
//! object folder keeps its objects in `mod.rs` and its ioctl handlers in
//! `ioctl.rs`:
//!
//! | module | kernel | what |
//! |---|---|---|
//! | [`context`] | main.c | the fd context, the object model ([`context::Object`], typed lookups), object table, destroy |
//! | [`uapi`] | uapi/iommufd.h, uapi/vfio.h, iommufd_test.h | ABI structs and constants, layouts only (the selftest's with feature `selftest`) |
//! | `ucmd` (internal) | main.c (`iommufd_ucmd`) | the command context every ioctl handler gets |
//! | [`dispatch`] | main.c | the one ioctl table, its size rules, the checks after an injected failure |
//! | [`ioas`] | ioas.c | IOAS objects (`ioas/ioctl.rs`: their handlers) |
//! | `io_pagetable` (internal) | io_pagetable.c, iova_bitmap.c | IOVA → area tree, allowed/reserved ranges, IOVA allocation, domains, accesses, dirty bitmaps, dirty pages per area for a tracking session above |
//! | [`pages`] | pages.c | single pin of user memory shared by areas; [`custody`] (pinned pages the program unmaps) and [`dmabuf`] live in its folder |
//! | [`accounting`] | pages.c | RLIMIT_MEMLOCK accounting modes |
//! | [`client`] | `source_mm`, `source_user`, creds | the process on the other side of the fd: its memory, capabilities, `RLIMIT_MEMLOCK`, pinned/locked counters (per uid for the user's) |
//! | [`domain`] | include/linux/iommu.h | the driver API: what a driver implements ([`domain::Domain`], [`domain::NestedDomain`], [`domain::DeviceDriver`], [`domain::NestingOps`]) and what the core hands it ([`Prot`], [`domain::DirtyBitmap`], [`domain::UserData`]); page-size splitting |
//! | [`device`] | device.c | devices: bind, attach, replace, detach |
//! | [`hwpt`] | hw_pagetable.c | paging and nested HWPTs (`hwpt/ioctl.rs`: allocation, invalidation, dirty tracking, `IOMMU_GET_HW_INFO`) |
//! | [`fault`] | fault.c, io-pgfault.c | I/O page fault queues and their fds (`fault/ioctl.rs`) |
//! | [`viommu`] | viommu.c, driver.c | vIOMMUs, vDEVICEs, HW queues (`viommu/ioctl.rs`) |
//! | [`veventq`] | eventq.c | vEVENT queues and their fds (`veventq/ioctl.rs`) |
//! | [`access`] | device.c (access) | pin and read/write by IOVA for emulated devices |
//! | `files` (internal) | anon inodes | real fds for engine objects |
//! | `vfio_compat` (internal) | vfio_compat.c, vfio_iommu_type1.c | VFIO type1 container ioctls (`ioctl.rs`, `type1.rs`, `dirty.rs`) and the type1 dirty-tracking session (`tracking.rs`) |
//! | [`mock`] | selftest.c | the selftest's mock driver and `IOMMU_TEST_CMD` (feature `selftest`, on by default) |
//! | [`vtd`] | intel/iommu.c | the software IOMMU: VT-d second-stage page tables, translation, IOTLB, DMA by IOVA, dirty tracking from D bits |
//! | [`mmap`] | `iommufd_mmap` | regions objects offer through `mmap` of the fd (a driver's vIOMMU page) |
//! | [`vfio`] | drivers/vfio | emulated VFIO PCI devices: registry, model contract, device and group files, migration |
//! | [`devices`] | (the hardware) | the emulated device models (`dma_engine`) |
//! | [`user`] | copy_*_user, GUP | fault-safe user memory access |
//! | [`process`] | mm of another process | another process's memory |
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
pub(crate) mod files;
pub mod hwpt;
pub mod inject;
pub(crate) mod io_pagetable;
pub mod ioas;
pub mod logging;
pub mod mmap;
#[cfg(feature = "selftest")]
pub mod mock;
pub mod pages;
pub mod process;
#[cfg(test)]
mod test_rng;
pub mod uapi;
pub(crate) mod ucmd;
pub mod user;
pub mod veventq;
pub mod vfio;
pub(crate) mod vfio_compat;
pub mod viommu;
pub mod vtd;

pub use access::{Access, AccessOps};
pub use context::{Context, ObjId};
pub use device::Device;
pub use domain::Prot;
pub use error::{Errno, Error, Result};
pub use fault::Fault;
pub use hwpt::nested::HwptNested;
pub use hwpt::HwptPaging;
pub use ioas::Ioas;
pub use pages::{custody, dmabuf};
pub use uapi::level::UapiLevel;
pub use veventq::Veventq;
pub use viommu::Viommu;

/// Engine fds: real file descriptors that stand for engine objects (a
/// fault queue's, a vEVENT queue's, a VFIO device's or group's: what
/// `IOMMU_FAULT_QUEUE_ALLOC` or [`vfio::registry::open_cdev`] hand out).
///
/// Without the `LD_PRELOAD` shim nobody watches `close(2)` and `dup(2)`:
/// a Rust user closes such an fd with [`fds::close`] (which releases the
/// object behind it) and reports a duplicate with [`fds::on_dup`]. The
/// object behind an fd is [`fds::get`] / [`fds::get_as`]; its file
/// operations are the [`fds::EngineFile`] trait's.
pub mod fds {
    pub use crate::files::{
        close, get, get_as, on_dup, read, write, EngineFile, FdResolver, MmapTarget, NoFds, StatAs,
        UserBuf, BOUNCE,
    };
}

/// Engine internals the workspace's own crates reach into: **not API**.
///
/// The `LD_PRELOAD` shim (`uiommufd-preload`) keeps the process's engine
/// fds in the registry of [`plumbing::files`]; the testkit's IO page table
/// reference model and the white-box tests drive the IO page table
/// ([`plumbing::io_pagetable`]) below the IOAS. Those are the engine's own
/// moving parts: they change with it, with no semver promise, and are
/// hidden from the documentation. An embedder uses the crate root's API
/// (and [`dispatch`] for the C ABI) instead.
#[doc(hidden)]
pub mod plumbing {
    /// The engine-fd registry (`files`): real fds that stand for engine
    /// objects, and what the preload routes to them.
    pub mod files {
        pub use crate::files::{
            adopt, any_engine_fd, check_stale, close, create, create_no_inject, engine_fds, get,
            get_as, is_engine_fd, notify, on_close, on_close_range, on_dup, pread, pread_user,
            pwrite, pwrite_user, read, read_user, registered_fds, sync, write, write_user,
            EngineFile, FdHints, FdResolver, MmapTarget, NoFds, StatAs, UserBuf, BOUNCE,
        };
    }

    /// The IO page table of an IOAS (`io_pagetable`), as the testkit's
    /// reference model and the white-box tests drive it.
    pub mod io_pagetable {
        pub use crate::io_pagetable::{
            huge_page_size, AccessNotify, AreaInfo, DirtyBitmap, DirtyRequest, IoPagetable,
            IovaRequest, MapSource, Prot,
        };
    }
}
