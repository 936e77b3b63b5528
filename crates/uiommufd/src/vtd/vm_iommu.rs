//! rust-vmm `vm-memory`'s [`Iommu`] trait for a [`VtdDomain`] (cargo
//! feature `vm-memory`): a VMM that keeps its guest memory in a
//! `vm-memory` backend (e.g. `GuestMemoryMmap`) and wraps it in an
//! [`vm_memory::IommuMemory`] reads and writes guest memory *by IOVA*
//! through the software IOMMU's tables — the same translation the engine's
//! emulated devices use.
//!
//! The domain translates an IOVA to a host address (the address of the
//! pinned user page); `vm-memory` wants an address in its backend's guest
//! physical space. [`VtdIommu`] therefore knows the backend's regions as
//! host ranges ([`HostRegion`], or [`VtdIommu::from_backend`]) and turns
//! each translated host address back into the guest address of the region
//! holding it; a host address outside every region cannot be resolved.
//!
//! The translations are cached in a `vm-memory` [`Iotlb`], filled on a
//! miss or permission failure by walking the domain. It is emptied when
//! the domain unmapped anything since it was filled (the domain's unmap
//! generation), and a write translated while the domain's dirty tracking
//! is on always walks the domain again, so that the write sets the D bits
//! dirty tracking reads (a cached write mapping would skip them).
//!
//! Limits: the iterator `translate` returns holds the cache's read lock,
//! not the domain's DMA drain lock, so an unmap does not wait for an
//! access through it (as with any software IOTLB whose entries outlive the
//! translation call: invalidate before reusing memory).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use vm_memory::iommu::{Error as IommuError, Iommu, IotlbIterator, IovaRange};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, Iotlb, MemoryRegionAddress, Permissions,
};

use super::domain::VtdDomain;
use super::Fault;

/// One region of guest memory: `len` bytes at host address `host`, which
/// are guest (backend) addresses `guest..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRegion {
    /// Host address of the first byte.
    pub host: u64,
    /// Length in bytes.
    pub len: u64,
    /// The backend's guest address of the first byte.
    pub guest: u64,
}

/// A [`VtdDomain`] as a `vm-memory` [`Iommu`].
#[derive(Debug)]
pub struct VtdIommu {
    domain: Arc<VtdDomain>,
    regions: Vec<HostRegion>,
    iotlb: RwLock<Iotlb>,
    /// The domain's unmap generation the cache was filled under.
    gen: AtomicU64,
}

impl VtdIommu {
    /// An IOMMU translating through `domain` into the guest memory whose
    /// regions are `regions`.
    pub fn new(domain: Arc<VtdDomain>, regions: Vec<HostRegion>) -> VtdIommu {
        let gen = domain.gen.load(Ordering::Acquire);
        VtdIommu {
            domain,
            regions,
            iotlb: RwLock::new(Iotlb::new()),
            gen: AtomicU64::new(gen),
        }
    }

    /// An IOMMU over the regions of `backend` that have a host address
    /// (all of a `GuestMemoryMmap`'s).
    pub fn from_backend<M: GuestMemoryBackend>(domain: Arc<VtdDomain>, backend: &M) -> VtdIommu {
        let regions = backend
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(HostRegion {
                    host: host as u64,
                    len: r.len(),
                    guest: r.start_addr().0,
                })
            })
            .collect();
        Self::new(domain, regions)
    }

    /// The domain.
    pub fn domain(&self) -> &Arc<VtdDomain> {
        &self.domain
    }

    /// Empty the cache (what a VMM does on an invalidation it learns of
    /// some other way).
    pub fn invalidate_all(&self) {
        self.iotlb.write().invalidate_all();
    }

    /// The guest address of host address `host` and the bytes of its
    /// region from there.
    fn to_guest(&self, host: u64) -> Option<(u64, u64)> {
        self.regions.iter().find_map(|r| {
            let off = host.checked_sub(r.host)?;
            (off < r.len).then(|| (r.guest + off, r.len - off))
        })
    }

    /// Walk the domain for `[iova, iova + len)` and cache what it allows
    /// for `access`.
    fn fill(&self, iova: u64, len: u64, access: Permissions) -> Result<(), IommuError> {
        let fail = |at: u64, why: String| IommuError::CannotResolve {
            iova_range: IovaRange {
                base: GuestAddress(at),
                length: (iova + len - at) as usize,
            },
            reason: why,
        };
        let mut done = 0u64;
        while done < len {
            let at = iova + done;
            let want = len - done;
            let step = |write: bool| -> Result<(u64, u64), IommuError> {
                self.domain
                    .translate(at, want, write)
                    .map_err(|f: Fault| fail(at, f.to_string()))
            };
            let (host, mut n) = if access.has_write() {
                step(true)?
            } else {
                step(false)?
            };
            if access.allow(Permissions::Read) && access.has_write() {
                let (h2, n2) = step(false)?;
                if h2 != host {
                    return Err(fail(at, "read and write translate apart".into()));
                }
                n = n.min(n2);
            }
            let Some((guest, room)) = self.to_guest(host) else {
                return Err(fail(
                    at,
                    format!("host address {host:#x} is in no guest memory region"),
                ));
            };
            let n = n.min(room);
            self.iotlb.write().set_mapping(
                GuestAddress(at),
                GuestAddress(guest),
                n as usize,
                access,
            )?;
            done += n;
        }
        Ok(())
    }
}

impl Iommu for VtdIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        let len = length as u64;
        if iova.0.checked_add(len).is_none() {
            return Err(IommuError::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: "the range wraps the address space".into(),
            });
        }
        // anything unmapped since the cache was filled: empty it
        let gen = self.domain.gen.load(Ordering::Acquire);
        if self.gen.swap(gen, Ordering::AcqRel) != gen {
            self.iotlb.write().invalidate_all();
        }
        if access.has_write() && self.domain.dirty_tracking_enabled() {
            self.iotlb.write().invalidate_mapping(iova, length);
        }
        for _ in 0..2 {
            match Iotlb::lookup(self.iotlb.read(), iova, length, access) {
                Ok(it) => return Ok(it),
                Err(fails) => {
                    for r in fails.misses.iter().chain(fails.access_fails.iter()) {
                        self.fill(r.base.0, r.length as u64, access)?;
                    }
                }
            }
        }
        Err(IommuError::IommuMisconfigured {
            reason: "translations changed while being cached".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Domain;
    use crate::domain::Prot;
    use vm_memory::{Bytes, GuestMemoryMmap, IommuMemory};

    #[test]
    fn vm_memory_by_iova_with_dirty_tracking_and_unmap() {
        let backend = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let host = backend.get_host_address(GuestAddress(0x2000)).unwrap() as u64;
        let dom = VtdDomain::new(48, true).unwrap();
        dom.map(0x10_0000, host, 2 * 4096, Prot::RW, u64::MAX)
            .unwrap();
        let mem = IommuMemory::new(
            backend.clone(),
            VtdIommu::from_backend(dom.clone(), &backend),
            true,
            (),
        );
        dom.set_dirty_tracking(true).unwrap();
        // every write while tracking sets D, also a repeated one the
        // cache could have served
        for round in 0..3 {
            mem.write_obj(round as u64, GuestAddress(0x10_1008))
                .unwrap();
            assert!(dom.leaf(0x10_1000).unwrap().4, "round {round}: D set");
            assert!(!dom.leaf(0x10_0000).unwrap().4, "the other page is clean");
            dom.read_and_clear_dirty(0x10_0000, 2 * 4096, true, None)
                .unwrap();
            assert!(!dom.leaf(0x10_1000).unwrap().4);
        }
        let v: u64 = backend.read_obj(GuestAddress(0x3008)).unwrap();
        assert_eq!(v, 2);
        // reads are served from the cache, and an unmap empties it
        let r: u64 = mem.read_obj(GuestAddress(0x10_1008)).unwrap();
        assert_eq!(r, 2);
        dom.unmap(0x10_1000, 4096);
        assert!(mem.read_obj::<u64>(GuestAddress(0x10_1008)).is_err());
        // a host address outside the backend cannot be resolved
        let other = vec![0u8; 8192];
        let dom2 = VtdDomain::new(48, false).unwrap();
        let a = (other.as_ptr() as u64 + 4095) & !4095;
        dom2.map(0, a, 4096, Prot::RW, u64::MAX).unwrap();
        let mem2 = IommuMemory::new(
            backend.clone(),
            VtdIommu::from_backend(dom2, &backend),
            true,
            (),
        );
        assert!(mem2.read_obj::<u64>(GuestAddress(0)).is_err());
    }
}
