//! The domain layer: what an IOMMU translation table can do (the kernel's
//! `struct iommu_domain_ops`), independent of any driver.
//!
//! The IO page table keeps every attached [`Domain`] identical to its areas:
//! a domain added to an IOAS is filled from the single-pinned pages, and every
//! map/unmap/copy afterwards updates all of them. Drivers implement this
//! trait: the selftest's mock driver (`crate::mock::domain`) is the first, a
//! real page-table format (the software IOMMU emulated devices DMA through)
//! comes next.
//!
//! Addresses: the "physical" address a domain maps an IOVA to is the host
//! virtual address of the pinned user page — what an emulated device can
//! load from and store to. Where the core hands a driver both kinds
//! ([`Domain::map`], [`Domain::iova_to_phys`], [`Domain::mapped_runs`]),
//! they are distinct types: [`Iova`] and [`HostAddr`]. Intervals: `last`
//! inclusive.

use std::any::Any;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Result;

mod dirty;
mod driver;
mod nested;

pub use dirty::{DirtyBitmap, DirtyRuns, DirtyTracking};
pub use driver::{DeviceDriver, NestingOps};
pub use nested::{NestedDataKind, NestedDomain, UserData, UserDataArray};

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
    pub const RW: Prot = Prot {
        read: true,
        write: true,
    };
    /// Read only.
    pub const RO: Prot = Prot {
        read: true,
        write: false,
    };
}

/// An I/O virtual address: what a device names, and a domain translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Iova(pub u64);

/// A host address: where the memory a domain maps an IOVA to lives (the
/// host virtual address of the pinned page, which an emulated device loads
/// from and stores to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HostAddr(pub u64);

impl std::fmt::LowerHex for Iova {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl std::fmt::LowerHex for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

/// A translation table a device can be attached to.
pub trait Domain: Send + Sync + Debug + Any {
    /// Process-unique identity (also the owner tag of the reserved IOVA
    /// ranges the domain's aperture imposes on an IOAS).
    fn id(&self) -> u64;
    /// Supported page sizes, one bit per size; the lowest set bit is the
    /// IOVA granule an IOAS with this domain must align to.
    fn pgsize_bitmap(&self) -> u64;
    /// The IOVA range the domain can translate (`start..=last`).
    fn aperture(&self) -> (u64, u64);
    /// Map `len` bytes at `iova` to host address `addr`. `iova`, `addr` and
    /// `len` are multiples of the smallest page size. `max_pgsize` caps the
    /// page size the driver may use (the IOAS's huge-page option). On error
    /// nothing stays mapped.
    fn map(&self, iova: Iova, addr: HostAddr, len: u64, prot: Prot, max_pgsize: u64) -> Result<()>;
    /// Unmap `len` bytes at `iova` (everything there was mapped by `map`).
    /// Returns the bytes unmapped; never fails.
    fn unmap(&self, iova: u64, len: u64) -> u64;
    /// The host address `iova` translates to, if mapped.
    fn iova_to_phys(&self, iova: Iova) -> Option<HostAddr>;
    /// Whether the domain can enforce cache coherency (no-snoop blocking).
    fn enforce_cache_coherency(&self) -> bool {
        true
    }
    /// Whether the domain has dirty tracking (the kernel's `dirty_ops`):
    /// drivers answer `true` only for domains allocated with
    /// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`. Without it the two methods below
    /// are never called by the IO page table (`EOPNOTSUPP` first).
    fn dirty_tracking_supported(&self) -> bool {
        false
    }
    /// Start (`true`) or stop recording which IOVA devices write through
    /// the domain (`set_dirty_tracking`). Before enabling, the IO page table
    /// clears the domain's dirty state of every area (a `None` bitmap read).
    fn set_dirty_tracking(&self, enable: bool) -> Result<()> {
        let _ = enable;
        crate::bail!(EOPNOTSUPP, "domain {} has no dirty tracking", self.id())
    }
    /// Report the dirty IOVA of `[iova, iova + len)` into `bitmap` with
    /// [`DirtyBitmap::record`] (the kernel's `read_and_clear_dirty`), and
    /// clear the dirty state of what was reported when `clear`. `iova` and
    /// `len` are multiples of the smallest page size and lie inside one
    /// mapped area. A driver may report at its own page granularity (a
    /// dirty huge page is recorded whole; the bitmap clips to its range).
    ///
    /// `bitmap` is `None` when the IO page table only wants the dirty state
    /// cleared (before tracking is enabled): that must work whether or not
    /// tracking is on. Record runs, not pages, where possible: `record` is
    /// cheap but not free.
    fn read_and_clear_dirty(
        &self,
        iova: u64,
        len: u64,
        clear: bool,
        bitmap: Option<&mut DirtyBitmap<'_>>,
    ) -> Result<()> {
        let _ = (iova, len, clear, bitmap);
        crate::bail!(EOPNOTSUPP, "domain {} has no dirty tracking", self.id())
    }
    /// Mark `[iova, iova + len)` dirty again: dirty state that
    /// `read_and_clear_dirty` cleared but the IO page table could not
    /// deliver (the user bitmap turned out unwritable), so that the next
    /// read reports it and no dirty page is lost. A driver may mark whole
    /// pages of its own granularity and skips IOVA it has not mapped.
    /// Only called on domains with dirty tracking.
    fn redirty(&self, iova: u64, len: u64) -> Result<()> {
        let _ = (iova, len);
        crate::bail!(
            EOPNOTSUPP,
            "domain {} cannot put dirty state back",
            self.id()
        )
    }
    /// Translate for a device's DMA: the host address of `iova` and how
    /// many bytes from there (at most `len`, at least 1) are contiguous in
    /// host memory and allowed for a read or (`write`) a write. A write
    /// while dirty tracking is on records the pages it covers as dirty.
    ///
    /// Default: page by page through [`Domain::iova_to_phys`], which knows
    /// no permissions (drivers with permission bits override this).
    fn translate(
        &self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<(u64, u64), DmaFault> {
        let _ = write;
        let HostAddr(host) = self
            .iova_to_phys(Iova(iova))
            .ok_or(DmaFault::NotPresent { iova })?;
        let page = 1u64 << self.pgsize_bitmap().trailing_zeros();
        let mut n = page - (iova & (page - 1));
        while n < len {
            match iova.checked_add(n).and_then(|i| self.iova_to_phys(Iova(i))) {
                Some(HostAddr(h)) if h == host.wrapping_add(n) => n += page,
                _ => break,
            }
        }
        Ok((host, n.min(len)))
    }
    /// A device's DMA read of `buf.len()` bytes at `iova`: translations
    /// and fault-safe copies from the host memory behind them. Drivers
    /// whose unmap must wait for DMA in flight (an IOTLB drain) override
    /// this to hold what unmap waits for across translate and copy.
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), DmaFault> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = iova.wrapping_add(done as u64);
            let (host, n) = self.translate(at, (buf.len() - done) as u64, false)?;
            let n = n as usize;
            crate::user::UserMemory::read(&crate::user::SelfMemory, host, &mut buf[done..done + n])
                .map_err(|_| DmaFault::Host { iova: at })?;
            done += n;
        }
        Ok(())
    }
    /// A device's DMA write of `buf` at `iova`, as [`Domain::dma_read`]
    /// (dirty tracking records what [`Domain::translate`] marks).
    fn dma_write(&self, iova: u64, buf: &[u8]) -> std::result::Result<(), DmaFault> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = iova.wrapping_add(done as u64);
            let (host, n) = self.translate(at, (buf.len() - done) as u64, true)?;
            let n = n as usize;
            crate::user::UserMemory::write(&crate::user::SelfMemory, host, &buf[done..done + n])
                .map_err(|_| DmaFault::Host { iova: at })?;
            done += n;
        }
        Ok(())
    }
    /// A device's atomic operation on the aligned 64-bit word at `iova`
    /// (a PCIe AtomicOp): returns the word's old value. It needs read and
    /// write permission, and is a write for dirty tracking. Drivers whose
    /// unmap drains DMA in flight override this to hold the drain, as for
    /// [`Domain::dma_read`].
    fn dma_atomic(&self, iova: u64, op: AtomicOp) -> std::result::Result<u64, DmaFault> {
        let (host, _) = self.translate(iova, 8, true)?;
        atomic_at(iova, host, op)
    }
    /// Every mapping of the domain as maximal runs `(iova, host address,
    /// length in bytes)` in IOVA order, for a driver that can list them
    /// exactly.
    /// The IO page table's invariant check then compares each run with its
    /// areas; `None` (the default) makes it sample
    /// [`Domain::iova_to_phys`] instead.
    fn mapped_runs(&self) -> Option<Vec<(Iova, HostAddr, u64)>> {
        None
    }
    /// For drivers to recognise their own domains.
    fn as_any(&self) -> &dyn Any;
}

/// A device's atomic operation on a 64-bit word in memory (the PCIe
/// AtomicOp requests, at their 64-bit size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicOp {
    /// Add, wrapping (`FetchAdd`).
    FetchAdd(u64),
    /// Store, returning the old value (`Swap`).
    Swap(u64),
    /// Store `new` if the word holds `expected` (`CAS`); the old value
    /// tells whether it did.
    CompareSwap {
        /// The value the word must hold.
        expected: u64,
        /// What it then becomes.
        new: u64,
    },
}

impl AtomicOp {
    /// The word after the operation on `old` (for a `CompareSwap` that
    /// fails: `old`).
    pub fn apply(self, old: u64) -> u64 {
        match self {
            AtomicOp::FetchAdd(v) => old.wrapping_add(v),
            AtomicOp::Swap(v) => v,
            AtomicOp::CompareSwap { expected, new } => {
                if old == expected {
                    new
                } else {
                    old
                }
            }
        }
    }
}

/// Perform `op` on the word at host address `host` (what `iova`
/// translated to): a locked compare-exchange loop, as the device's atomic
/// is one indivisible read-modify-write for every other CPU and device.
/// The word must be 8-aligned (`Permission` otherwise, as an unaligned
/// AtomicOp is a malformed request). With the fault handler installed
/// (always under the preload) memory the program unmapped or protected is
/// `Host`, never a crash; without it, the page is probed writable first
/// and only a program changing it between probe and operation is outside
/// what the engine guards (as for the nested walk's A/D updates).
pub fn atomic_at(iova: u64, host: u64, op: AtomicOp) -> std::result::Result<u64, DmaFault> {
    if !host.is_multiple_of(8) {
        return Err(DmaFault::Permission { iova, write: true });
    }
    let p = host as usize as *mut u64;
    if crate::faultsafe::enabled() {
        // SAFETY: the handler is installed and `p` is 8-aligned; a fault
        // on it is fixed up, never a crash.
        let mut old = unsafe { crate::faultsafe::load_u64(p) }.ok_or(DmaFault::Host { iova })?;
        loop {
            // SAFETY: as above.
            match unsafe { crate::faultsafe::compare_exchange(p, old, op.apply(old)) } {
                crate::faultsafe::Cas::Swapped => return Ok(old),
                crate::faultsafe::Cas::Fault => return Err(DmaFault::Host { iova }),
                crate::faultsafe::Cas::Differs => {
                    // SAFETY: as above.
                    old =
                        unsafe { crate::faultsafe::load_u64(p) }.ok_or(DmaFault::Host { iova })?;
                }
            }
        }
    }
    crate::user::UserMemory::probe_write(&crate::user::SelfMemory, host, 8)
        .map_err(|_| DmaFault::Host { iova })?;
    // SAFETY: 8-aligned, in a page the domain maps (pinned) and just
    // probed writable; the residual window is in the function's docs.
    let w = unsafe { &*(p as *const AtomicU64) };
    let mut old = w.load(Ordering::SeqCst);
    loop {
        match w.compare_exchange(old, op.apply(old), Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Ok(old),
            Err(v) => old = v,
        }
    }
}

/// Why a device's DMA through a domain failed (what a real IOMMU reports
/// as a DMA remapping fault), or why a copy by IOVA stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaFault {
    /// Nothing is mapped at `iova` (or it lies outside the aperture).
    NotPresent {
        /// The faulting IOVA.
        iova: u64,
    },
    /// `iova` is mapped, but not for this access.
    Permission {
        /// The faulting IOVA.
        iova: u64,
        /// The access was a write.
        write: bool,
    },
    /// `iova` translates, but the host memory behind it cannot be
    /// accessed (the program unmapped or protected it).
    Host {
        /// The first IOVA of the copy that failed.
        iova: u64,
    },
    /// The device may not master the bus now: it is attached to nothing,
    /// bus mastering is off in its config space, or it is stopped
    /// (a migration state without DMA).
    Blocked {
        /// The IOVA the device tried to reach.
        iova: u64,
    },
}

impl std::fmt::Display for DmaFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            DmaFault::NotPresent { iova } => write!(f, "IOVA {iova:#x} is not mapped"),
            DmaFault::Permission { iova, write } => write!(
                f,
                "IOVA {iova:#x} does not allow {}",
                if write { "writes" } else { "reads" }
            ),
            DmaFault::Host { iova } => {
                write!(
                    f,
                    "the host memory behind IOVA {iova:#x} cannot be accessed"
                )
            }
            DmaFault::Blocked { iova } => {
                write!(
                    f,
                    "DMA to IOVA {iova:#x} blocked: the device may not master the bus"
                )
            }
        }
    }
}

impl std::error::Error for DmaFault {}

impl From<DmaFault> for crate::Error {
    fn from(f: DmaFault) -> crate::Error {
        crate::Error::new(libc::EFAULT, f.to_string())
    }
}

/// A fresh process-unique domain ID for [`Domain::id`].
pub fn next_domain_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Split `[iova, iova + len)` → `addr` into runs of one page size each, the
/// largest the bitmap allows at each point (alignment of both `iova` and
/// `addr`, remaining length, and `max_pgsize`): what the kernel's
/// `iommu_map` does before calling the driver. Yields `(iova, addr, pgsize, count)`.
pub fn split_pgsizes(
    mut iova: u64,
    mut addr: u64,
    mut len: u64,
    bitmap: u64,
    max_pgsize: u64,
) -> Vec<(u64, u64, u64, u64)> {
    /// Bits of every power of two <= x (x > 0).
    fn sizes_up_to(x: u64) -> u64 {
        u64::MAX >> x.leading_zeros()
    }
    let mut out: Vec<(u64, u64, u64, u64)> = Vec::new();
    let min = 1u64 << bitmap.trailing_zeros();
    while len >= min {
        let mut sizes = bitmap & sizes_up_to(len) & sizes_up_to(max_pgsize.max(min));
        let both = iova | addr;
        if both != 0 {
            sizes &= sizes_up_to(1 << both.trailing_zeros());
        }
        let pgsize = if sizes == 0 {
            min
        } else {
            1u64 << (63 - sizes.leading_zeros())
        };
        match out.last_mut() {
            Some(last)
                if last.2 == pgsize
                    && last.0 + last.2 * last.3 == iova
                    && last.1 + last.2 * last.3 == addr =>
            {
                last.3 += 1
            }
            _ => out.push((iova, addr, pgsize, 1)),
        }
        iova += pgsize;
        addr += pgsize;
        len -= pgsize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_uses_largest_aligned_sizes() {
        let bm = 0x800 | 0x10_0000; // 2 KiB and 1 MiB
        let runs = split_pgsizes(
            0x10_0000 - 0x800,
            0x20_0000 - 0x800,
            0x10_0000 + 0x1000,
            bm,
            u64::MAX,
        );
        assert_eq!(
            runs,
            vec![
                (0xff800, 0x1ff800, 0x800, 1),
                (0x100000, 0x200000, 0x100000, 1),
                (0x200000, 0x300000, 0x800, 1)
            ]
        );
        // misaligned addr forbids the large size
        let runs = split_pgsizes(0x10_0000, 0x20_0800, 0x10_0000, bm, u64::MAX);
        assert_eq!(runs, vec![(0x100000, 0x200800, 0x800, 0x200)]);
        // capped
        let runs = split_pgsizes(0x10_0000, 0x20_0000, 0x10_0000, bm, 0x1000);
        assert_eq!(runs, vec![(0x100000, 0x200000, 0x800, 0x200)]);
    }
}
