//! The software IOMMU: an Intel VT-d style driver whose page tables
//! emulated devices really DMA through.
//!
//! [`VtdDomain`] is a [`crate::domain::Domain`] with **second-stage page
//! tables in the VT-d format**: 4 KiB tables of 512 64-bit entries, 3, 4
//! or 5 levels for an IOVA width (AGAW) of 39, 48 or 57 bits. An entry has
//! R (bit 0), W (bit 1), PS (bit 7: a 2 MiB leaf at level 2, a 1 GiB leaf
//! at level 3), A (bit 8), D (bit 9), SNP (bit 11, set in every leaf: the
//! domain enforces cache coherency) and the address in bits 51:12.
//!
//! **Addresses.** We have no physical addresses: the address in an entry
//! is a *host virtual address* — of the next table (a page of the domain's
//! own memory) or of the mapped user page, which is what an emulated
//! device loads from and stores to. Host addresses therefore have to fit
//! the 52-bit field (every x86-64 user address with 4-level paging does).
//!
//! **Tables** come from a per-domain slab of 2 MiB chunks (`slab`). Once a
//! table is linked into the tree it stays there until the domain is
//! dropped: unmap clears leaves but keeps emptied tables for the next map
//! of that IOVA (the kernel's driver frees them). So every table address a
//! walker reads stays valid, and walks need no lock. The cost: a range
//! once mapped with small pages keeps its tables, and a later map of it
//! uses small pages too (no 2 MiB/1 GiB leaf replaces a table).
//!
//! **Concurrency.** There is no lock on the table. New tables are
//! installed with a compare-exchange of the empty parent entry (the loser
//! gives its table back); leaves are written with single atomic stores.
//! Maps and unmaps of disjoint ranges (what the IO page table guarantees)
//! therefore run in parallel. A partial unmap of a large leaf first
//! replaces it, with one compare-exchange, by a table of smaller leaves
//! mapping the same, then unmaps exactly what was asked (if no table can
//! be allocated it unmaps the whole leaf, as the kernel's driver does, and
//! says so in the bytes it returns).
//!
//! **Translation** ([`VtdDomain::translate`], and per caller [`Iotlb`]):
//! a walk from the root, with not-present and permission faults returned
//! as [`Fault`] values. An [`Iotlb`] caches recent leaves; every unmap
//! bumps the domain's generation counter after clearing its entries, and
//! a cached leaf is used only under the generation it was read in, so no
//! translation started after an unmap returned sees what it removed.
//! [`Iotlb::read`] and [`Iotlb::write`] copy by IOVA through translations
//! with the engine's one user-memory seam ([`crate::user::SelfMemory`]:
//! the fault-safe copy when it is enabled, `process_vm_readv/writev`
//! otherwise), so memory the program unmapped is a [`Fault::Host`], never
//! a crash.
//!
//! **Dirty tracking.** While tracking is on, a write translation sets A
//! and D in the leaf (compare-exchange, only when D is clear) and then the
//! dirty summaries on the path to it: every table has a 64-bit summary
//! word (kept beside the table by the slab), one bit per group of 8
//! entries, set when some leaf in or below that group was made dirty.
//! `read_and_clear_dirty` visits only the groups whose bit is set, so a
//! clean or sparsely dirty GiB costs a handful of loads. Readers clear a
//! summary before reading what it covers and writers set D before the
//! summaries, so a dirty page is reported now or at the next read, never
//! lost. Reads (A without D) are not recorded.
//!
//! **Nesting** ([`nested`]): a [`VtdNestedDomain`] walks a user-owned
//! x86-64 first-stage table through a nest-parent `VtdDomain` (every table
//! pointer and output address translated by the parent, A/D written back
//! into the user's table), caches its first-stage leaves until the user's
//! `IOMMU_HWPT_INVALIDATE`, and is the DMA domain of the devices attached
//! to its HWPT. The driver's `NestingOps` (`IOMMU_HWPT_DATA_VTD_S1`, the
//! kernel's errno rules) are there too.
//!
//! **vm-memory** (feature `vm-memory`, `vm_iommu`): `VtdIommu`, rust-vmm
//! vm-memory's `Iommu` trait over a `VtdDomain`.

mod domain;
pub mod driver;
mod iotlb;
pub mod nested;
mod slab;
#[cfg(feature = "vm-memory")]
pub mod vm_iommu;

pub use domain::{VtdDomain, VTD_PGSIZES};
pub use driver::VtdDriver;
pub use iotlb::{Iotlb, IOTLB_DEFAULT_SLOTS};
pub use nested::VtdNestedDomain;
#[cfg(feature = "vm-memory")]
pub use vm_iommu::{HostRegion, VtdIommu};

/// Read permission.
pub const PTE_R: u64 = 1 << 0;
/// Write permission.
pub const PTE_W: u64 = 1 << 1;
/// Page size: the entry of a level-2 or level-3 table is a 2 MiB or 1 GiB leaf.
pub const PTE_PS: u64 = 1 << 7;
/// Accessed (set with D by tracked writes).
pub const PTE_A: u64 = 1 << 8;
/// Dirty: written while dirty tracking was on.
pub const PTE_D: u64 = 1 << 9;
/// Snoop: the access is cache coherent.
pub const PTE_SNP: u64 = 1 << 11;
/// The address field, bits 51:12.
pub const PTE_ADDR_MASK: u64 = ((1 << 52) - 1) & !((1 << 12) - 1);

/// Why a translation failed: the driver API's [`crate::domain::DmaFault`].
pub use crate::domain::DmaFault as Fault;

#[cfg(test)]
mod tests;
