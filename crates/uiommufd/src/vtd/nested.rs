//! First-stage nesting: a user-owned x86-64 first-stage table walked
//! through a second-stage [`VtdDomain`] (the kernel's `intel/nested.c`,
//! VT-d scalable-mode nested translation).
//!
//! A [`VtdNestedDomain`] is made by `IOMMU_HWPT_ALLOC` with
//! `IOMMU_HWPT_DATA_VTD_S1` on a nest-parent VT-d HWPT. `pgtbl_addr` is an
//! address in the parent's IOVA space (a guest physical address); the
//! table there is the user's own memory, in the x86-64 format: 4 or 5
//! levels (`addr_width` 48 or 57), 64-bit entries with P (bit 0), R/W (1),
//! U/S (2), A (5), D (6), PS (7: a 2 MiB leaf at level 2, a 1 GiB leaf at
//! level 3) and the address in bits 51:12.
//!
//! **Walk.** Every table pointer, and the output address of the leaf, is
//! translated by the parent: a table or page the parent does not map is a
//! fault, exactly as the device's own access would be. A device's requests
//! carry no PASID, so they are user requests: every level must have U/S,
//! and a write needs R/W at every level (`WPE` only concerns supervisor
//! requests). As hardware does, the walk sets A in every entry it used and
//! D in the leaf of a write, with an atomic compare-exchange in the user's
//! table (a write access through the parent, so the parent's dirty
//! tracking records the table page); if the entry changed under it the
//! walk starts again.
//!
//! **Caches.** Each nested domain caches its recent first-stage leaves (a
//! direct-mapped cache of [`S1_CACHE_SLOTS`] entries: IOVA leaf → guest
//! physical leaf, writable, dirty; read without a lock under a sequence
//! count). A cached leaf is used until `IOMMU_HWPT_INVALIDATE` with
//! `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1` drops it, as an IOTLB does: editing
//! the table alone does not change what the device sees; a walk that an
//! invalidation overtook serves its access but is not kept. The domain's
//! own translate path does not cache the second stage (each access
//! translates the guest physical address through the parent). A
//! per-device [`super::Iotlb`] made with [`super::Iotlb::nested`] caches
//! both stages combined, so that a hit costs what a flat one does; it is
//! dropped by any first-stage invalidation (the domain's generation) and
//! any unmap of the parent (the parent's), and a write hit still sets the
//! parent's D while it tracks. A write through a cached leaf whose D was
//! not yet set walks again to set it.
//!
//! **Lifetime.** The host address of a table entry is valid while the
//! parent maps its page (the IOAS keeps it pinned). Table entries are read
//! with the fault-safe copy (memory the program unmapped or protected is a
//! [`Fault::Host`]). The compare-exchange that writes A/D back is done in
//! place (hardware's locked update) with the fault-safe compare-exchange
//! ([`crate::faultsafe::compare_exchange`], whenever the fault handler is
//! installed — always under the preload): a table page the program unmaps
//! or write-protects while a device walks it is a [`Fault::Host`], never a
//! crash. Without the handler (a Rust user who did not call
//! `faultsafe::install`), the update follows a fault-safe read of the entry
//! and a probe that the page is writable, and only a program changing the
//! page between that probe and the store is outside what the engine guards.

use std::any::Any;
use std::mem::offset_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::domain::VtdDomain;
use super::driver::VtdDriver;
use super::Fault;
use crate::domain::{
    next_domain_id, DirtyBitmap, Domain, HostAddr, Iova, NestedDataKind, NestedDomain, NestingOps,
    Prot, UserData, UserDataArray,
};
use crate::uapi::{abi_struct, IOMMU_HWPT_DATA_VTD_S1};
use crate::user::{SelfMemory, UserMemory};
use crate::{bail, Result};

/// `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1` (`enum iommu_hwpt_invalidate_data_type`).
pub const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: u32 = 0;
/// `IOMMU_VTD_INV_FLAGS_LEAF`: only leaf entries changed (the paging
/// structure caches may be kept).
pub const IOMMU_VTD_INV_FLAGS_LEAF: u32 = 1 << 0;
/// `IOMMU_VTD_S1_SRE`: supervisor requests allowed.
pub const IOMMU_VTD_S1_SRE: u64 = 1 << 0;
/// `IOMMU_VTD_S1_EAFE`: extended access flag enabled.
pub const IOMMU_VTD_S1_EAFE: u64 = 1 << 1;
/// `IOMMU_VTD_S1_WPE`: write protect for supervisor requests.
pub const IOMMU_VTD_S1_WPE: u64 = 1 << 2;

/// The VT-d driver's nested data: a first-stage table.
const VTD_S1: NestedDataKind = NestedDataKind {
    driver: "VT-d",
    data_type: IOMMU_HWPT_DATA_VTD_S1,
    name: "IOMMU_HWPT_DATA_VTD_S1",
};

abi_struct! {
    /// `struct iommu_hwpt_vtd_s1` (`IOMMU_HWPT_DATA_VTD_S1`).
    pub struct IommuHwptVtdS1 {
        /// `IOMMU_VTD_S1_*`.
        pub flags: u64,
        /// The first-stage root table's address in the parent's IOVA space.
        pub pgtbl_addr: u64,
        /// 48 (4 levels) or 57 (5 levels).
        pub addr_width: u32,
        /// Not checked (as the kernel).
        pub __reserved: u32,
    }
}

abi_struct! {
    /// `struct iommu_hwpt_vtd_s1_invalidate`.
    pub struct IommuHwptVtdS1Invalidate {
        /// First IOVA, 4 KiB aligned.
        pub addr: u64,
        /// Number of 4 KiB pages (`u64::MAX` with `addr` 0: everything).
        pub npages: u64,
        /// `IOMMU_VTD_INV_FLAGS_*`.
        pub flags: u32,
        /// Must be zero.
        pub __reserved: u32,
    }
}

const _: () = {
    assert!(size_of::<IommuHwptVtdS1>() == 24);
    assert!(size_of::<IommuHwptVtdS1Invalidate>() == 24);
};

/// First-stage entry bits (x86-64 paging).
pub mod fl {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User accessible.
    pub const US: u64 = 1 << 2;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty (leaves).
    pub const D: u64 = 1 << 6;
    /// Page size: a 2 MiB (level 2) or 1 GiB (level 3) leaf.
    pub const PS: u64 = 1 << 7;
    /// Address bits 51:12.
    pub const ADDR: u64 = ((1 << 52) - 1) & !((1 << 12) - 1);
}

/// Slots of a nested domain's first-stage translation cache.
pub const S1_CACHE_SLOTS: usize = 64;

/// One cached first-stage leaf.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct S1Leaf {
    /// First IOVA of the leaf (`u64::MAX`: empty slot).
    pub base: u64,
    /// Leaf size (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// Guest physical (parent IOVA) address of the leaf's first byte.
    pub gpa: u64,
    /// Writable at every level.
    pub write: bool,
    /// D was set in the leaf.
    pub dirty: bool,
}

/// One slot of [`S1Cache`]: an [`S1Leaf`] as words (`meta`: the size, W in
/// bit 0, D in bit 1).
#[derive(Debug)]
struct S1Slot {
    base: AtomicU64,
    gpa: AtomicU64,
    meta: AtomicU64,
}

/// The first-stage leaves a nested domain caches: direct-mapped by the 4 KiB
/// page of the access that walked them. Lookups take no lock: a sequence
/// count, odd while a writer changes slots, tells a reader to read again
/// (the slots are atomics, so a torn read is only ever discarded, never
/// undefined). Writers (fills and invalidations) serialise on `writer`.
#[derive(Debug)]
struct S1Cache {
    seq: AtomicU64,
    slots: [S1Slot; S1_CACHE_SLOTS],
    /// Held to change slots; counts the slots holding a leaf larger than
    /// 4 KiB (one that may sit in a slot that is not its first page's, so
    /// a flush must look at all).
    writer: Mutex<usize>,
}

impl S1Cache {
    fn new() -> S1Cache {
        S1Cache {
            seq: AtomicU64::new(0),
            slots: std::array::from_fn(|_| S1Slot {
                base: AtomicU64::new(u64::MAX),
                gpa: AtomicU64::new(0),
                meta: AtomicU64::new(0),
            }),
            writer: Mutex::new(0),
        }
    }

    /// Slot `i`, consistently.
    #[inline]
    fn get(&self, i: usize) -> S1Leaf {
        let s = &self.slots[i];
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let base = s.base.load(Ordering::Relaxed);
                let gpa = s.gpa.load(Ordering::Relaxed);
                let meta = s.meta.load(Ordering::Relaxed);
                std::sync::atomic::fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return S1Leaf {
                        base,
                        size: meta & !3,
                        gpa,
                        write: meta & 1 != 0,
                        dirty: meta & 2 != 0,
                    };
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Replace slot `i`; the caller holds `writer` (`large`).
    fn put(&self, large: &mut usize, i: usize, leaf: S1Leaf) {
        let big = |l: &S1Leaf| l.base != u64::MAX && l.size > 1 << 12;
        *large -= usize::from(big(&self.get(i)));
        *large += usize::from(big(&leaf));
        let s = &self.slots[i];
        let q = self.seq.load(Ordering::Relaxed);
        self.seq.store(q + 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        s.base.store(leaf.base, Ordering::Relaxed);
        s.gpa.store(leaf.gpa, Ordering::Relaxed);
        s.meta.store(
            leaf.size | u64::from(leaf.write) | u64::from(leaf.dirty) << 1,
            Ordering::Relaxed,
        );
        self.seq.store(q + 2, Ordering::Release);
    }
}

const EMPTY: S1Leaf = S1Leaf {
    base: u64::MAX,
    size: 0,
    gpa: 0,
    write: false,
    dirty: false,
};

/// A VT-d first-stage (nested) domain: the user's table on a nest-parent
/// [`VtdDomain`]. As a [`Domain`] it is what devices attached to its HWPT
/// do DMA through ([`NestedDomain::dma_domain`]); it maps nothing itself
/// (`map` is `EINVAL`: the user edits the table).
#[derive(Debug)]
pub struct VtdNestedDomain {
    id: u64,
    me: Weak<VtdNestedDomain>,
    parent: Arc<VtdDomain>,
    cfg: IommuHwptVtdS1,
    cache: S1Cache,
    /// Bumped by every invalidation (after the cache dropped what it
    /// covers): combined translations a per-device [`super::Iotlb`] cached
    /// under an older value are stale.
    pub(super) gen: AtomicU64,
    /// Walks done (cache misses), for tests.
    walks: AtomicU64,
}

/// What one walk found.
struct Walked {
    leaf: S1Leaf,
}

impl VtdNestedDomain {
    /// A nested domain of `cfg` on `parent`.
    pub fn new(parent: Arc<VtdDomain>, cfg: IommuHwptVtdS1) -> Arc<VtdNestedDomain> {
        Arc::new_cyclic(|me| VtdNestedDomain {
            id: next_domain_id(),
            me: me.clone(),
            parent,
            cfg,
            cache: S1Cache::new(),
            gen: AtomicU64::new(0),
            walks: AtomicU64::new(0),
        })
    }

    /// The parent (second-stage) domain.
    pub fn parent(&self) -> &Arc<VtdDomain> {
        &self.parent
    }

    /// The user's configuration.
    pub fn config(&self) -> &IommuHwptVtdS1 {
        &self.cfg
    }

    /// How many first-stage walks (cache misses) translations needed.
    pub fn walks(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }

    /// Levels of the first-stage table (`None` for a width the hardware
    /// does not take: attach refuses such a domain).
    fn levels(&self) -> Option<u32> {
        match self.cfg.addr_width {
            48 => Some(4),
            57 => Some(5),
            _ => None,
        }
    }

    /// Drop the cached leaves that overlap `[first, last]` (and every
    /// combined translation per-device IOTLBs hold of this domain).
    pub fn flush_range(&self, first: u64, last: u64) {
        let c = &self.cache;
        let mut large = c.writer.lock();
        let pages = (last >> 12).wrapping_sub(first >> 12);
        if *large == 0 && pages < S1_CACHE_SLOTS as u64 {
            // only 4 KiB leaves are cached, each in the slot of its page:
            // look at the slots of the range's pages only
            for p in (first >> 12)..=(last >> 12) {
                let i = p as usize % S1_CACHE_SLOTS;
                if c.get(i).base >> 12 == p {
                    c.put(&mut large, i, EMPTY);
                }
            }
        } else {
            for i in 0..S1_CACHE_SLOTS {
                let s = c.get(i);
                if s.base != u64::MAX
                    && s.base <= last
                    && s.base.saturating_add(s.size - 1) >= first
                {
                    c.put(&mut large, i, EMPTY);
                }
            }
        }
        // under the writer lock: a walk that started before this flush
        // sees the change when it comes to fill its slot
        self.gen.fetch_add(1, Ordering::Release);
    }

    /// The host address of the 8 bytes at guest physical `gpa`, through
    /// the parent (for a write of A/D when `update`). A fault of the walk
    /// is reported at the device's IOVA, for the device's access (`write`).
    fn entry_host(
        &self,
        iova: u64,
        gpa: u64,
        update: bool,
        write: bool,
    ) -> std::result::Result<u64, Fault> {
        if !update {
            // a read of the entry: the parent's leaf, readable
            let Some(l) = self.parent.lookup(gpa) else {
                return Err(Fault::NotPresent { iova });
            };
            if l.value & super::PTE_R == 0 {
                return Err(Fault::Permission { iova, write });
            }
            return Ok((l.value & super::PTE_ADDR_MASK) + (gpa & (l.size() - 1)));
        }
        // a write of A/D: through the parent's checks (and its dirty
        // tracking, which records the table page)
        match self.parent.translate(gpa, 8, update) {
            Ok((h, n)) if n >= 8 => Ok(h),
            Ok(_) => Err(Fault::NotPresent { iova }),
            Err(Fault::Permission { .. }) => Err(Fault::Permission { iova, write }),
            Err(_) => Err(Fault::NotPresent { iova }),
        }
    }

    /// Walk the user's table for `iova`, setting A (and D for a write).
    /// `update` false: a pure lookup that writes nothing.
    fn walk(&self, iova: u64, write: bool, update: bool) -> std::result::Result<Walked, Fault> {
        let Some(levels) = self.levels() else {
            return Err(Fault::NotPresent { iova });
        };
        let width = self.cfg.addr_width;
        // canonical: bits 63..width-1 all equal
        let top = (iova as i64) >> (width - 1);
        if top != 0 && top != -1 {
            return Err(Fault::NotPresent { iova });
        }
        'retry: for _ in 0..16 {
            let mut table = self.cfg.pgtbl_addr & fl::ADDR;
            let mut writable = true;
            let mut level = levels;
            loop {
                let shift = 12 + 9 * (level - 1);
                let idx = (iova >> shift) & 511;
                let gpa = table + idx * 8;
                let host = self.entry_host(iova, gpa, false, write)?;
                let v = read_entry(host).ok_or(Fault::Host { iova })?;
                if v & fl::P == 0 {
                    return Err(Fault::NotPresent { iova });
                }
                // requests without PASID are user requests
                if v & fl::US == 0 {
                    return Err(Fault::Permission { iova, write });
                }
                writable &= v & fl::RW != 0;
                if write && !writable {
                    return Err(Fault::Permission { iova, write });
                }
                let ps = v & fl::PS != 0;
                if ps && level > 3 {
                    // reserved at levels 4 and 5
                    return Err(Fault::NotPresent { iova });
                }
                let leaf = level == 1 || ps;
                let mut want = v | fl::A;
                if leaf && write {
                    want |= fl::D;
                }
                if update && want != v {
                    let wh = self.entry_host(iova, gpa, true, write)?;
                    if crate::faultsafe::enabled() {
                        // SAFETY: `wh` is 8-aligned (a table entry); a
                        // fault (the program unmapped or protected the
                        // table meanwhile) is fixed up, never a crash.
                        match unsafe { crate::faultsafe::compare_exchange(wh as *mut u64, v, want) }
                        {
                            crate::faultsafe::Cas::Swapped => {}
                            crate::faultsafe::Cas::Differs => continue 'retry,
                            crate::faultsafe::Cas::Fault => {
                                return Err(Fault::Host { iova });
                            }
                        }
                    } else {
                        // writable in the process too (the program may have
                        // protected memory it mapped writable in the IOAS)
                        SelfMemory
                            .probe_write(wh, 8)
                            .map_err(|_| Fault::Host { iova })?;
                        // SAFETY: `wh` is 8-aligned (a table entry in a page
                        // the parent maps), was just read fault-safely and
                        // probed writable; without the fault handler (a Rust
                        // user who did not call `faultsafe::install`) a
                        // residual window remains: see the module docs.
                        let e = unsafe { &*(wh as usize as *const AtomicU64) };
                        if e.compare_exchange(v, want, Ordering::SeqCst, Ordering::SeqCst)
                            .is_err()
                        {
                            continue 'retry;
                        }
                    }
                }
                if leaf {
                    let size = 1u64 << shift;
                    let base = iova & !(size - 1);
                    let gpa = (v & fl::ADDR) & !(size - 1);
                    return Ok(Walked {
                        leaf: S1Leaf {
                            base,
                            size,
                            gpa,
                            write: writable,
                            dirty: want & fl::D != 0,
                        },
                    });
                }
                table = v & fl::ADDR;
                level -= 1;
            }
        }
        tracing::warn!(
            iova,
            "VT-d first stage: the table kept changing under the walk"
        );
        Err(Fault::NotPresent { iova })
    }

    /// The first-stage leaf of `iova` for an access: from the cache, or
    /// walked (and cached).
    pub(super) fn s1_leaf(&self, iova: u64, write: bool) -> std::result::Result<S1Leaf, Fault> {
        let slot = ((iova >> 12) as usize) % S1_CACHE_SLOTS;
        let s = self.cache.get(slot);
        if s.base != u64::MAX && iova >= s.base && iova - s.base < s.size {
            if write && !s.write {
                return Err(Fault::Permission { iova, write });
            }
            if !write || s.dirty {
                return Ok(s);
            }
        }
        let gen = self.gen.load(Ordering::Acquire);
        let w = self.walk(iova, write, true);
        let mut large = self.cache.writer.lock();
        // counted under the lock: a load and a store, no locked add
        self.walks
            .store(self.walks.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let w = w?;
        // an invalidation during the walk may cover what it read: the
        // result serves this access (as a walk in flight does on
        // hardware) but is not kept
        if self.gen.load(Ordering::Relaxed) == gen {
            self.cache.put(&mut large, slot, w.leaf);
        }
        Ok(w.leaf)
    }

    /// Translate `iova` through both stages: the host address and how
    /// many bytes (at most `len`, within one first-stage leaf) are
    /// contiguous and allowed. The parent records a tracked write.
    pub fn translate(
        &self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<(u64, u64), Fault> {
        let l = self.s1_leaf(iova, write)?;
        let off = iova - l.base;
        let n = (l.size - off).min(len);
        let gpa = l.gpa + off;
        match self.parent.translate(gpa, n, write) {
            Ok(r) => Ok(r),
            Err(Fault::Permission { .. }) => Err(Fault::Permission { iova, write }),
            Err(Fault::Host { .. }) => Err(Fault::Host { iova }),
            Err(_) => Err(Fault::NotPresent { iova }),
        }
    }

    /// Copy by IOVA under the parent's DMA drain lock (an unmap of the
    /// parent waits for it), recording the written guest physical ranges
    /// dirty again after a tracked write (see `VtdDomain::dma_write`).
    fn copy(&self, iova: u64, local: *mut u8, len: usize, write: bool) -> Result2 {
        let tracking = write && self.parent.dirty_tracking_enabled();
        let mut gpas: Vec<(u64, u64)> = Vec::new();
        let r = super::iotlb::copy_by_iova(&self.parent, iova, local, len, write, |a, n, w| {
            let (h, m) = self.translate(a, n, w)?;
            if tracking {
                if let Ok(l) = self.s1_leaf(a, w) {
                    gpas.push((l.gpa + (a - l.base), m));
                }
            }
            Ok((h, m))
        });
        for (g, n) in gpas {
            self.parent.mark_dirty(g, n);
        }
        r
    }
}

type Result2 = std::result::Result<(), Fault>;

/// The table entry at host address `host` (8-aligned), read fault-safely:
/// one guarded load where the fault handler is installed, the general
/// checked copy otherwise.
#[inline]
fn read_entry(host: u64) -> Option<u64> {
    if crate::faultsafe::enabled() {
        // SAFETY: the handler is installed; `host` is 8-aligned (a table
        // entry) and a fault is fixed up, never a crash.
        return unsafe { crate::faultsafe::load_u64(host as usize as *const u64) };
    }
    let mut b = [0u8; 8];
    SelfMemory.read(host, &mut b).ok()?;
    Some(u64::from_ne_bytes(b))
}

impl NestedDomain for VtdNestedDomain {
    fn id(&self) -> u64 {
        self.id
    }

    /// `intel_nested_cache_invalidate_user`: another data type is `EINVAL`
    /// (nothing done); per entry, the copy's errors (`EINVAL` size,
    /// `EFAULT`), unknown flags or a non-zero `__reserved` `EOPNOTSUPP`,
    /// an unaligned `addr` or `npages` `u64::MAX` with a non-zero `addr`
    /// `EINVAL`. Entries before the failing one are done.
    fn cache_invalidate_user(&self, array: &UserDataArray<'_>) -> (u32, Result<()>) {
        let min = offset_of!(IommuHwptVtdS1Invalidate, __reserved) + size_of::<u32>();
        array.for_each_entry(
            IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
            min,
            |i, inv: IommuHwptVtdS1Invalidate| {
                if inv.flags & !IOMMU_VTD_INV_FLAGS_LEAF != 0 || inv.__reserved != 0 {
                    bail!(
                        EOPNOTSUPP,
                        "HWPT_INVALIDATE: entry {i}: unknown flags {:#x} or non-zero __reserved",
                        inv.flags & !IOMMU_VTD_INV_FLAGS_LEAF
                    );
                }
                if inv.addr & 0xfff != 0 || (inv.npages == u64::MAX && inv.addr != 0) {
                    bail!(
                        EINVAL,
                        "HWPT_INVALIDATE: entry {i}: addr {:#x} is not 4 KiB aligned, or npages is all-ones with \
                         a non-zero addr",
                        inv.addr
                    );
                }
                if inv.npages != 0 {
                    let last = inv
                        .npages
                        .checked_mul(4096)
                        .and_then(|n| inv.addr.checked_add(n - 1))
                        .unwrap_or(u64::MAX);
                    // we keep no paging-structure cache: LEAF or not, the
                    // leaves of the range go
                    self.flush_range(inv.addr, last);
                }
                Ok(())
            },
        )
    }

    fn dma_domain(&self) -> Option<Arc<dyn Domain>> {
        let me: Arc<dyn Domain> = self.me.upgrade()?;
        Some(me)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Domain for VtdNestedDomain {
    fn id(&self) -> u64 {
        self.id
    }

    fn pgsize_bitmap(&self) -> u64 {
        (1 << 12) | (1 << 21) | (1 << 30)
    }

    fn aperture(&self) -> (u64, u64) {
        (0, (1u64 << self.cfg.addr_width.clamp(12, 63)) - 1)
    }

    /// The user owns the table: the engine never maps into it.
    fn map(&self, Iova(iova): Iova, _: HostAddr, _len: u64, _prot: Prot, _max: u64) -> Result<()> {
        bail!(
            EINVAL,
            "VT-d nested domain {}: the first-stage table is the user's, nothing maps IOVA {iova:#x} into it",
            self.id
        )
    }

    fn unmap(&self, _iova: u64, _len: u64) -> u64 {
        0
    }

    /// A lookup that sets no A/D bit and leaves the cache alone.
    fn iova_to_phys(&self, Iova(iova): Iova) -> Option<HostAddr> {
        let w = self.walk(iova, false, false).ok()?;
        let gpa = w.leaf.gpa + (iova - w.leaf.base);
        self.parent.iova_to_phys(Iova(gpa))
    }

    fn translate(
        &self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<(u64, u64), Fault> {
        VtdNestedDomain::translate(self, iova, len, write)
    }

    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), Fault> {
        self.copy(iova, buf.as_mut_ptr(), buf.len(), false)
    }

    fn dma_write(&self, iova: u64, buf: &[u8]) -> std::result::Result<(), Fault> {
        self.copy(iova, buf.as_ptr().cast_mut(), buf.len(), true)
    }

    /// Through both stages under the parent's DMA drain lock; the guest
    /// physical word is re-marked dirty afterwards while the parent tracks.
    fn dma_atomic(
        &self,
        iova: u64,
        op: crate::domain::AtomicOp,
    ) -> std::result::Result<u64, Fault> {
        let (r, gpa) = {
            let _dma = self.parent.dma.read();
            let (host, _) = VtdNestedDomain::translate(self, iova, 8, true)?;
            let gpa = self
                .s1_leaf(iova, true)
                .ok()
                .map(|l| l.gpa + (iova - l.base));
            (crate::domain::atomic_at(iova, host, op), gpa)
        };
        if let Some(g) = gpa.filter(|_| self.parent.dirty_tracking_enabled()) {
            self.parent.mark_dirty(g, 8);
        }
        r
    }

    fn read_and_clear_dirty(
        &self,
        _iova: u64,
        _len: u64,
        _clear: bool,
        _bitmap: Option<&mut DirtyBitmap<'_>>,
    ) -> Result<()> {
        bail!(
            EOPNOTSUPP,
            "VT-d nested domain {}: dirty tracking is the parent's",
            self.id
        )
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl NestingOps for VtdDriver {
    fn owns_domain(&self, domain: &dyn Domain) -> bool {
        domain.as_any().is::<VtdDomain>()
    }

    /// `intel_iommu_domain_alloc_user` with a parent, then
    /// `intel_nested_domain_alloc`: any flag `EOPNOTSUPP`, another data
    /// type `EOPNOTSUPP`, a parent that is not a VT-d domain `EINVAL`, then
    /// the copy (`EINVAL` length, `EFAULT`). The width and the S1 flags are
    /// checked at attach, as the kernel does (`intel_pasid_setup_nested`).
    fn alloc_nested_domain(
        &self,
        parent: &Arc<dyn Domain>,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Arc<dyn NestedDomain>> {
        data.check_nested_request(&VTD_S1, flags, 0)?;
        let any: Arc<dyn Any + Send + Sync> = parent.clone();
        let Ok(s2) = any.downcast::<VtdDomain>() else {
            bail!(EINVAL, "VT-d: the parent is not a VT-d domain");
        };
        let min = offset_of!(IommuHwptVtdS1, __reserved) + size_of::<u32>();
        let cfg: IommuHwptVtdS1 = data.copy_struct(IOMMU_HWPT_DATA_VTD_S1, min)?;
        tracing::debug!(
            pgtbl = cfg.pgtbl_addr,
            width = cfg.addr_width,
            flags = cfg.flags,
            "VT-d: first-stage domain"
        );
        Ok(VtdNestedDomain::new(s2, cfg))
    }

    /// `intel_nested_attach_dev` / `intel_pasid_setup_nested`: a width
    /// other than 48 or 57 `EINVAL`; `EAFE` `EINVAL` (no extended access
    /// flag support in ECAP); `SRE` is accepted (ECAP reports SRS; our
    /// devices issue no supervisor requests), `WPE` and unknown flags are
    /// ignored as the kernel ignores them.
    fn check_attach_nested(&self, domain: &dyn NestedDomain) -> Result<()> {
        let Some(d) = domain.as_any().downcast_ref::<VtdNestedDomain>() else {
            bail!(
                EINVAL,
                "VT-d device: nested domain {} is not a VT-d first-stage domain",
                domain.id()
            );
        };
        if d.levels().is_none() {
            bail!(
                EINVAL,
                "VT-d: first-stage address width {} is not 48 or 57",
                d.cfg.addr_width
            );
        }
        if d.cfg.flags & IOMMU_VTD_S1_EAFE != 0 {
            bail!(
                EINVAL,
                "VT-d: IOMMU_VTD_S1_EAFE: no extended access flag support"
            );
        }
        Ok(())
    }

    /// Page requests are supported (ECAP PRS).
    fn enable_iopf(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGES: u64 = 64;

    /// Host memory for guest pages (anonymous, page aligned, freed on drop).
    struct Mem(u64);

    impl Mem {
        fn new() -> Mem {
            let p = uiommufd_testkit::map_anon((PAGES * 4096) as usize, libc::MAP_PRIVATE).unwrap();
            Mem(p as u64)
        }
        fn host(&self, page: u64) -> u64 {
            self.0 + page * 4096
        }
        fn get(&self, page: u64, idx: u64) -> u64 {
            // SAFETY: inside our mapping, 8-aligned.
            unsafe { std::ptr::read_volatile((self.host(page) + idx * 8) as *const u64) }
        }
        fn set(&self, page: u64, idx: u64, v: u64) {
            // SAFETY: inside our mapping, 8-aligned.
            unsafe { std::ptr::write_volatile((self.host(page) + idx * 8) as *mut u64, v) }
        }
    }

    impl Drop for Mem {
        fn drop(&mut self) {
            // SAFETY: our own mapping.
            unsafe { libc::munmap(self.0 as *mut libc::c_void, (PAGES * 4096) as usize) };
        }
    }

    const URW: u64 = fl::P | fl::RW | fl::US;

    /// The 4-level path of IOVA 0: root page 0 → 1 → 2 → page 3, the PT.
    fn table_path(m: &Mem) {
        m.set(0, 0, 4096 | URW);
        m.set(1, 0, (2 * 4096) | URW);
        m.set(2, 0, (3 * 4096) | URW);
    }

    /// A parent mapping guest page i to host page i (all of them, RW).
    fn parent(m: &Mem) -> Arc<VtdDomain> {
        let p = VtdDomain::new(48, false).unwrap();
        p.map(Iova(0), HostAddr(m.host(0)), PAGES * 4096, Prot::RW, 4096)
            .unwrap();
        p
    }

    fn nested(p: &Arc<VtdDomain>, width: u32) -> Arc<VtdNestedDomain> {
        VtdNestedDomain::new(
            p.clone(),
            IommuHwptVtdS1 {
                flags: 0,
                pgtbl_addr: 0,
                addr_width: width,
                __reserved: 0,
            },
        )
    }

    #[test]
    fn five_levels_large_leaves_and_canonical_addresses() {
        let m = Mem::new();
        let p = parent(&m);
        // 5 levels: root page 0 → 1 → 2 → 3 (PD) → 4 (PT)
        let n = nested(&p, 57);
        let iova = (1u64 << 48) | (2 << 39) | (3 << 30);
        m.set(0, 1, 4096 | URW);
        m.set(1, 2, (2 * 4096) | URW);
        m.set(2, 3, (3 * 4096) | URW);
        m.set(3, 0, (4 * 4096) | URW);
        m.set(4, 0, (10 * 4096) | URW);
        let (h, len) = n.translate(iova + 8, 100, true).unwrap();
        assert_eq!((h, len), (m.host(10) + 8, 100));
        assert_eq!(m.get(4, 0) & (fl::A | fl::D), fl::A | fl::D);
        // the same table read as 4 levels is another IOVA: bit 48 is not
        // canonical there
        let n4 = nested(&p, 48);
        assert_eq!(
            n4.translate(iova, 1, false),
            Err(Fault::NotPresent { iova })
        );
        // an upper-half canonical address indexes with bits 47:12
        let hi = 0xffff_8000_0000_0000u64;
        m.set(20, 256, (21 * 4096) | URW);
        let n4 = VtdNestedDomain::new(
            p.clone(),
            IommuHwptVtdS1 {
                flags: 0,
                pgtbl_addr: 20 * 4096,
                addr_width: 48,
                __reserved: 0,
            },
        );
        m.set(21, 0, (22 * 4096) | URW);
        // a 2 MiB leaf at level 2 (its output aligned down to 2 MiB)
        m.set(22, 0, (1 << 21) | 0x1000 | URW | fl::PS);
        p.map(Iova(1 << 21), HostAddr(m.host(30)), 4096, Prot::RW, 4096)
            .unwrap();
        let (h, len) = n4.translate(hi + 0x10, 0x10_0000, false).unwrap();
        assert_eq!((h, len), (m.host(30) + 0x10, 4096 - 0x10));
        // PS at level 4 is reserved
        m.set(20, 257, (23 * 4096) | URW | fl::PS);
        assert!(matches!(
            n4.translate(hi | (1 << 39), 1, false),
            Err(Fault::NotPresent { .. })
        ));
        // a 1 GiB leaf at level 3
        m.set(21, 1, (1 << 30) | URW | fl::PS);
        p.map(
            Iova((1 << 30) + 0x3000),
            HostAddr(m.host(31)),
            4096,
            Prot::RW,
            4096,
        )
        .unwrap();
        let (h, _) = n4.translate(hi | (1 << 30) | 0x3004, 4, false).unwrap();
        assert_eq!(h, m.host(31) + 4);
    }

    #[test]
    fn cache_stays_until_invalidated_and_a_cached_read_walks_for_d() {
        let m = Mem::new();
        let p = parent(&m);
        let n = nested(&p, 48);
        table_path(&m);
        m.set(3, 0, (10 * 4096) | URW);
        m.set(3, 1, (11 * 4096) | fl::P | fl::US);
        assert_eq!(n.translate(0, 8, false).unwrap().0, m.host(10));
        assert_eq!(m.get(3, 0) & (fl::A | fl::D), fl::A);
        let w = n.walks();
        // a write through the cached read walks again to set D
        assert_eq!(n.translate(0, 8, true).unwrap().0, m.host(10));
        assert_eq!(n.walks(), w + 1);
        assert_eq!(m.get(3, 0) & fl::D, fl::D);
        // and then hits
        n.translate(0, 8, true).unwrap();
        assert_eq!(n.walks(), w + 1);
        // edits are not seen until the range is flushed
        assert_eq!(n.translate(4096, 1, false).unwrap().0, m.host(11));
        m.set(3, 0, (12 * 4096) | URW);
        m.set(3, 1, (13 * 4096) | URW);
        assert_eq!(n.translate(4096, 1, false).unwrap().0, m.host(11));
        assert_eq!(
            n.translate(4096, 1, true),
            Err(Fault::Permission {
                iova: 4096,
                write: true
            }),
            "the cached read-only leaf"
        );
        assert_eq!(n.translate(0, 8, false).unwrap().0, m.host(10));
        n.flush_range(4096, 4096);
        assert_eq!(n.translate(4096, 1, true).unwrap().0, m.host(13));
        assert_eq!(n.translate(0, 8, false).unwrap().0, m.host(10));
        n.flush_range(0, u64::MAX);
        assert_eq!(n.translate(0, 8, false).unwrap().0, m.host(12));
        // Domain::iova_to_phys writes nothing
        m.set(3, 2, (14 * 4096) | URW);
        assert_eq!(
            Domain::iova_to_phys(&*n, Iova(2 * 4096 + 5)),
            Some(HostAddr(m.host(14) + 5))
        );
        assert_eq!(m.get(3, 2) & fl::A, 0);
    }

    /// The per-device IOTLB over a nested domain: combined translations
    /// that hit without a walk, stay until invalidated (first stage) or
    /// unmapped (second stage), walk again for a write that must set D,
    /// and mark the parent's pages dirty while it tracks.
    #[test]
    fn iotlb_over_a_nested_domain() {
        use super::super::Iotlb;
        let m = Mem::new();
        let p = VtdDomain::new(48, true).unwrap();
        p.map(Iova(0), HostAddr(m.host(0)), PAGES * 4096, Prot::RW, 4096)
            .unwrap();
        let n = nested(&p, 48);
        table_path(&m);
        m.set(3, 0, (10 * 4096) | URW);
        m.set(3, 1, (11 * 4096) | fl::P | fl::US);
        let mut tlb = Iotlb::nested(n.clone());
        assert_eq!(tlb.translate(8, 8, false).unwrap(), (m.host(10) + 8, 8));
        let w = n.walks();
        // hits: no walk
        for _ in 0..10 {
            assert_eq!(
                tlb.translate(16, 4096, false).unwrap(),
                (m.host(10) + 16, 4080)
            );
        }
        assert_eq!(n.walks(), w);
        // a write through the cached read walks once to set D
        assert_eq!(m.get(3, 0) & fl::D, 0);
        tlb.translate(0, 8, true).unwrap();
        assert_eq!(n.walks(), w + 1);
        assert_eq!(m.get(3, 0) & fl::D, fl::D);
        tlb.translate(0, 8, true).unwrap();
        assert_eq!(n.walks(), w + 1);
        // read-only in the first stage: a permission fault at the IOVA
        assert_eq!(
            tlb.translate(4096 + 1, 1, true),
            Err(Fault::Permission {
                iova: 4097,
                write: true
            })
        );
        // an edit is not seen until invalidated
        m.set(3, 0, (12 * 4096) | URW);
        assert_eq!(tlb.translate(0, 8, false).unwrap().0, m.host(10));
        n.flush_range(0, 4095);
        assert_eq!(tlb.translate(0, 8, false).unwrap().0, m.host(12));
        // the parent tracks: a write hit marks the guest physical page
        p.set_dirty_tracking(true).unwrap();
        tlb.translate(0, 8, true).unwrap();
        let mut words = [0u64; 1];
        let mut bm = DirtyBitmap::new(0, 64 * 4096 - 1, 12, &mut words);
        p.read_and_clear_dirty(0, 64 * 4096, true, Some(&mut bm))
            .unwrap();
        // the data page (12) and the table pages whose A/D were written
        assert_ne!(words[0] & 1 << 12, 0, "{:#x}", words[0]);
        // cleared: the next write hit marks it again
        tlb.translate(0, 8, true).unwrap();
        let mut words = [0u64; 1];
        let mut bm = DirtyBitmap::new(0, 64 * 4096 - 1, 12, &mut words);
        p.read_and_clear_dirty(0, 64 * 4096, true, Some(&mut bm))
            .unwrap();
        assert_eq!(words[0], 1 << 12);
        // DMA through it marks what it wrote once the bytes are in
        tlb.write(96, &[7u8; 8]).unwrap();
        assert_eq!(m.get(12, 12) & 0xff, 7);
        let mut words = [0u64; 1];
        let mut bm = DirtyBitmap::new(0, 64 * 4096 - 1, 12, &mut words);
        p.read_and_clear_dirty(0, 64 * 4096, true, Some(&mut bm))
            .unwrap();
        assert_eq!(words[0], 1 << 12);
        // an atomic through both stages, a write for the parent's tracking
        let add = crate::domain::AtomicOp::FetchAdd(2);
        let old = Domain::dma_atomic(&*n, 96, add).unwrap();
        assert_eq!(old & 0xff, 7);
        assert_eq!(m.get(12, 12), old + 2);
        let mut words = [0u64; 1];
        let mut bm = DirtyBitmap::new(0, 64 * 4096 - 1, 12, &mut words);
        p.read_and_clear_dirty(0, 64 * 4096, true, Some(&mut bm))
            .unwrap();
        assert_eq!(words[0], 1 << 12);
        // an unmap of the parent drops the combined translation
        p.unmap(12 * 4096, 4096);
        assert_eq!(
            tlb.translate(0, 8, false),
            Err(Fault::NotPresent { iova: 0 })
        );
    }

    #[test]
    fn protected_or_unmapped_table_pages_are_host_faults() {
        table_pages_fault_safely();
    }

    /// The same with the fault handler installed: A/D are written back with
    /// the fault-safe compare-exchange (what the preload always uses).
    #[test]
    fn protected_table_pages_with_the_fault_handler() {
        assert!(crate::faultsafe::install());
        table_pages_fault_safely();
    }

    fn table_pages_fault_safely() {
        let m = Mem::new();
        let p = parent(&m);
        let n = nested(&p, 48);
        table_path(&m);
        m.set(3, 0, (10 * 4096) | URW);
        // the PT page write-protected in the process: A cannot be set
        let protect = |page: u64, prot: i32| {
            // SAFETY: one page of our own mapping.
            let rc = unsafe { libc::mprotect(m.host(page) as *mut libc::c_void, 4096, prot) };
            assert_eq!(rc, 0);
        };
        protect(3, libc::PROT_READ);
        assert_eq!(n.translate(0, 1, false), Err(Fault::Host { iova: 0 }));
        // once A is set no write to the table is needed
        protect(3, libc::PROT_READ | libc::PROT_WRITE);
        m.set(3, 0, (10 * 4096) | URW | fl::A);
        protect(3, libc::PROT_READ);
        assert_eq!(n.translate(0, 1, false).unwrap().0, m.host(10));
        // an unmapped table page (Mem's munmap of the whole range
        // tolerates the hole)
        // SAFETY: one page of our own mapping.
        let rc = unsafe { libc::munmap(m.host(2) as *mut libc::c_void, 4096) };
        assert_eq!(rc, 0);
        n.flush_range(0, u64::MAX);
        assert_eq!(n.translate(0, 1, false), Err(Fault::Host { iova: 0 }));
    }

    /// A reference walk, written from the rules, over the same memory and
    /// a model of the parent (`parent(gpa)`: the host address of guest
    /// address `gpa` and whether it is writable, or `None`; kept by the
    /// test, never read from the parent's tables): Ok(host) or the fault,
    /// and which entries need A/D written.
    fn reference(
        m: &Mem,
        parent: &dyn Fn(u64) -> Option<(u64, bool)>,
        levels: u32,
        iova: u64,
        write: bool,
    ) -> std::result::Result<u64, Fault> {
        let np = Fault::NotPresent { iova };
        let perm = Fault::Permission { iova, write };
        let mut table = 0u64;
        let mut rw = true;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let gpa = table + ((iova >> shift) & 511) * 8;
            // the parent maps guest page g to host page g, or not at all
            let (host, w) = parent(gpa).ok_or(np)?;
            assert_eq!(host, m.host(gpa >> 12) + (gpa & 4095));
            let v = m.get(gpa >> 12, (gpa & 4095) / 8);
            if v & fl::P == 0 {
                return Err(np);
            }
            if v & fl::US == 0 {
                return Err(perm);
            }
            rw &= v & fl::RW != 0;
            if write && !rw {
                return Err(perm);
            }
            let ps = v & fl::PS != 0;
            if ps && level > 3 {
                return Err(np);
            }
            let leaf = level == 1 || ps;
            let needs = v & fl::A == 0 || (leaf && write && v & fl::D == 0);
            if needs && !w {
                return Err(perm);
            }
            if leaf {
                let size = 1u64 << shift;
                let out = (v & fl::ADDR & !(size - 1)) + (iova & (size - 1));
                let (host, pw) = parent(out).ok_or(np)?;
                if write && !pw {
                    return Err(perm);
                }
                return Ok(host);
            }
            table = v & fl::ADDR;
        }
        unreachable!()
    }

    /// A source of exactly `[uptr, uptr + len)` of this process's memory.
    fn src(uptr: u64, len: u64, writable: bool) -> crate::io_pagetable::MapSource {
        let p = crate::pages::Pages::new(
            Arc::new(crate::user::SelfMemory),
            uptr,
            len,
            writable,
            crate::accounting::AccountMode::None,
        );
        crate::io_pagetable::MapSource {
            start_byte: uptr - p.uptr(),
            pages: p,
            length: len,
        }
    }

    /// The nested walk against the reference, with the parent's tables
    /// written directly (`via_ioas` false) or by an IO page table the
    /// parent is attached to, mapping random runs of guest pages as areas
    /// (`via_ioas`: the engine's path to a nest parent). The reference
    /// reads the parent from the test's own model either way.
    fn random_tables_match_the_reference_walk(via_ioas: bool) {
        use crate::io_pagetable::{IoPagetable, IovaRequest};
        let mut rnd = crate::test_rng::xorshift(if via_ioas {
            0x2545_f491_4f6c_dd1d
        } else {
            0x9e37_79b9_7f4a_7c15
        });
        let mut checked = [0usize; 3];
        for round in 0..40 {
            let levels = if round % 2 == 0 { 4 } else { 5 };
            let m = Mem::new();
            // parent: most guest pages mapped, some read-only, some not
            let p = VtdDomain::new(48, false).unwrap();
            // the model of the parent: guest page -> writable
            let mut model = std::collections::BTreeMap::new();
            // dropped before `m`: its pins go first
            let t = IoPagetable::new();
            if via_ioas {
                t.add_domain(p.clone()).unwrap();
            }
            let mut g = 0;
            while g < PAGES {
                // runs of 1..8 pages of one kind (areas of the IOAS)
                let run = (1 + rnd() % 8).min(PAGES - g);
                let kind = rnd() % 10;
                if kind != 0 {
                    let prot = if kind == 1 { Prot::RO } else { Prot::RW };
                    let (iova, len) = (g * 4096, run * 4096);
                    if via_ioas {
                        let req = IovaRequest::Fixed(iova);
                        t.map(vec![src(m.host(g), len, prot.write)], len, req, prot)
                            .unwrap();
                    } else {
                        p.map(Iova(iova), HostAddr(m.host(g)), len, prot, 4096)
                            .unwrap();
                    }
                    for x in g..g + run {
                        model.insert(x, prot.write);
                    }
                }
                g += run;
            }
            if via_ioas {
                t.check_invariants().unwrap();
            }
            let parent = |gpa: u64| {
                model
                    .get(&(gpa >> 12))
                    .map(|&w| (m.host(gpa >> 12) + (gpa & 4095), w))
            };
            // tables in guest pages 0..16, entries 0..4 of each; data in 16..64
            for t in 0..16 {
                for i in 0..4 {
                    let r = rnd();
                    let mut flags = r & (fl::P | fl::RW | fl::US | fl::A | fl::D | fl::PS);
                    if !r.is_multiple_of(3) {
                        flags |= fl::P | fl::US; // mostly walkable
                    }
                    if r.is_multiple_of(5) {
                        flags &= !fl::PS;
                    }
                    let to = if (r >> 20).is_multiple_of(2) {
                        (r >> 24) % 16
                    } else {
                        16 + (r >> 24) % 48
                    };
                    m.set(t, i, (to * 4096) | flags);
                }
            }
            let n = VtdNestedDomain::new(
                p.clone(),
                IommuHwptVtdS1 {
                    flags: 0,
                    pgtbl_addr: 0,
                    addr_width: if levels == 4 { 48 } else { 57 },
                    __reserved: 0,
                },
            );
            // every other access through a per-device IOTLB (combined
            // translations; the flush below drops them too)
            let mut tlb = super::super::Iotlb::nested(n.clone());
            for _ in 0..200 {
                let r = rnd();
                let mut iova = (r >> 8) & 0xfff; // offset
                for l in 1..=levels {
                    iova |= ((r >> (2 * l + 30)) & 3) << (12 + 9 * (l - 1));
                }
                let write = r & 1 == 1;
                let want = reference(&m, &parent, levels, iova, write);
                n.flush_range(0, u64::MAX);
                let got = if r & 2 == 0 {
                    n.translate(iova, 1, write).map(|(h, _)| h)
                } else {
                    tlb.translate(iova, 1, write).map(|(h, _)| h)
                };
                assert_eq!(got, want, "round {round} iova {iova:#x} write {write}");
                checked[match want {
                    Ok(_) => 0,
                    Err(Fault::NotPresent { .. }) => 1,
                    Err(_) => 2,
                }] += 1;
            }
        }
        // the tables reach every outcome
        assert!(checked.iter().all(|&c| c > 50), "{checked:?}");
    }

    #[test]
    fn random_tables_match_the_reference_walk_direct_parent() {
        random_tables_match_the_reference_walk(false);
    }

    #[test]
    fn random_tables_match_the_reference_walk_parent_through_an_ioas() {
        random_tables_match_the_reference_walk(true);
    }
}
