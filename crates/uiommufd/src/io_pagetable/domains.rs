//! Domains and accesses on an IO page table (API CONTRACT; bodies being
//! written). Intervals: `last` inclusive; lengths in bytes.

use std::sync::{Arc, Weak};

use super::IoPagetable;
use crate::domain::Domain;
use crate::Result;

/// What an IOAS asks of an access (an emulated device that pinned pages or
/// reads/writes by IOVA) when a range it may have pinned is being unmapped:
/// unpin everything in `[iova, iova + length)` before returning.
pub trait AccessNotify: Send + Sync + std::fmt::Debug {
    /// Unpin whatever this access pinned in `[iova, iova + length)`.
    fn unmap(&self, iova: u64, length: u64);
}

/// Host addresses of pinned IOVA pages, one per `PAGE_SIZE` page of the range.
pub type PinnedPages = Vec<u64>;

impl IoPagetable {
    /// Attach `domain`: reserve the IOVA outside its aperture (owner =
    /// `domain.id()`), raise the IOVA alignment to its smallest page size,
    /// pin every area's pages (once, shared with other domains) and map them.
    /// Errors as the kernel's `iopt_table_add_domain`; on error nothing changes.
    pub fn add_domain(&self, _domain: Arc<dyn Domain>) -> Result<()> {
        todo!()
    }
    /// Detach `domain` (by `id()`): unmap everything from it, unpin pages no
    /// longer used by any domain or access, drop its reserved ranges and
    /// recompute the alignment. Never fails.
    pub fn remove_domain(&self, _domain_id: u64) {
        todo!()
    }
    /// The attached domains.
    pub fn domains(&self) -> Vec<Arc<dyn Domain>> {
        todo!()
    }
    /// Register an access for unmap notifications; returns a token for
    /// [`IoPagetable::remove_access`]. `iova_alignment` joins the IOAS alignment.
    pub fn add_access(&self, _access: Weak<dyn AccessNotify>, _iova_alignment: u64) -> Result<u64> {
        todo!()
    }
    /// Unregister an access.
    pub fn remove_access(&self, _token: u64) {
        todo!()
    }
    /// Pin `[iova, iova + length)` for an access (the kernel's
    /// `iommufd_access_pin_pages`): contiguous published areas must cover it,
    /// page aligned in their pages, with the right prot (`write`).
    pub fn access_pin(&self, _iova: u64, _length: u64, _write: bool) -> Result<PinnedPages> {
        todo!()
    }
    /// Undo one [`IoPagetable::access_pin`] of exactly that range.
    pub fn access_unpin(&self, _iova: u64, _length: u64) {
        todo!()
    }
    /// Copy between `buf` and IOVA `iova` (the kernel's `iommufd_access_rw`):
    /// `write` = device writes memory (`buf` → memory).
    pub fn access_rw(&self, _iova: u64, _buf: &mut [u8], _write: bool) -> Result<()> {
        todo!()
    }
}
