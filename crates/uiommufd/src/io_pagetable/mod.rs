//! The IO page table of one IOAS: IOVA → area tree, allowed and reserved
//! ranges, IOVA allocation (the kernel's io_pagetable.c).
//!
//! API CONTRACT (bodies being written; see the helper brief). Intervals:
//! `last` is inclusive everywhere in this module.

use std::sync::Arc;

use crate::pages::Pages;
use crate::Result;

/// Access rights of a mapping (`IOMMU_IOAS_MAP_READABLE` / `WRITEABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prot {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl Prot {
    /// Read and write.
    pub const RW: Prot = Prot { read: true, write: true };
    /// Read only.
    pub const RO: Prot = Prot { read: true, write: false };
}

/// Where a new mapping goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IovaRequest {
    /// Exactly here (`IOMMU_IOAS_MAP_FIXED_IOVA`).
    Fixed(u64),
    /// Anywhere allowed, aligned as the kernel aligns it.
    Alloc,
}

/// A run of user memory to map: `length` bytes starting `start_byte` bytes
/// after `pages.uptr()`.
#[derive(Debug, Clone)]
pub struct MapSource {
    /// The pages object (shared, never copied).
    pub pages: Arc<Pages>,
    /// Offset of the first byte from `pages.uptr()`.
    pub start_byte: u64,
    /// Bytes.
    pub length: u64,
}

/// One area, for display and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaInfo {
    /// First IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
    /// User address the first IOVA maps to.
    pub uptr: u64,
    /// Rights.
    pub prot: Prot,
    /// The pages object's id.
    pub pages_id: u64,
}

/// The IO page table of one IOAS.
#[derive(Debug, Default)]
pub struct IoPagetable {}

impl IoPagetable {
    /// An empty table: everything allowed, nothing reserved, alignment 1.
    pub fn new() -> Self {
        todo!()
    }
    /// Map `sources` (concatenated, total `length`) at `iova`; returns the IOVA used.
    pub fn map(&self, _sources: Vec<MapSource>, _length: u64, _iova: IovaRequest, _prot: Prot) -> Result<u64> {
        todo!()
    }
    /// Unmap every area fully inside `[iova, iova + length)`; returns bytes unmapped.
    pub fn unmap(&self, _iova: u64, _length: u64) -> Result<u64> {
        todo!()
    }
    /// Unmap everything; returns bytes unmapped.
    pub fn unmap_all(&self) -> Result<u64> {
        todo!()
    }
    /// The sources that back `[iova, iova + length)` (for `IOAS_COPY`).
    pub fn get_pages(&self, _iova: u64, _length: u64) -> Result<Vec<MapSource>> {
        todo!()
    }
    /// Replace the allowed ranges (empty = everything allowed).
    pub fn set_allowed(&self, _ranges: &[(u64, u64)]) -> Result<()> {
        todo!()
    }
    /// Reserve `start..=last` for `owner` (0 = permanent).
    pub fn add_reserved(&self, _start: u64, _last: u64, _owner: u64) -> Result<()> {
        todo!()
    }
    /// The usable ranges (holes between reserved ranges) and the IOVA alignment.
    pub fn iova_ranges(&self) -> (Vec<(u64, u64)>, u64) {
        todo!()
    }
    /// Whether large pages are enabled (`IOMMU_OPTION_HUGE_PAGES`).
    pub fn large_pages(&self) -> bool {
        todo!()
    }
    /// Enable or disable large pages.
    pub fn set_large_pages(&self, _enable: bool) -> Result<()> {
        todo!()
    }
    /// All areas in IOVA order.
    pub fn areas(&self) -> Vec<AreaInfo> {
        todo!()
    }
    /// Check the structure's invariants; `Err` says which one broke.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        todo!()
    }
}
