//! [`Iotlb`]: one caller's cache of recent translations of a
//! [`VtdDomain`] or of a [`VtdNestedDomain`] (both stages combined, as a
//! hardware IOTLB caches them), and DMA by IOVA through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::domain::VtdDomain;
use super::nested::VtdNestedDomain;
use super::{Fault, PTE_ADDR_MASK, PTE_D, PTE_R, PTE_W};
use crate::user::{SelfMemory, UserMemory};

/// A slot permission bit (beside `PTE_R | PTE_W`): the first-stage leaf is
/// writable but its D is not yet set, so a write must walk to set it.
const NEED_WALK: u64 = 1 << 62;

/// Slots of an [`Iotlb`] made by [`Iotlb::new`].
pub const IOTLB_DEFAULT_SLOTS: usize = 1024;

/// One cached leaf (a cache line each: a lookup touches one line, and the
/// index scales by a shift).
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Slot {
    /// The generation it was read under (`u64::MAX`: empty).
    gen: u64,
    /// IOVA of the slot's first byte.
    tag: u64,
    /// Slot size - 1 (the leaf's; nested: the smaller of both stages').
    mask: u64,
    /// Host address of the slot's first byte.
    host: u64,
    /// `PTE_R | PTE_W` allowed (both stages), and [`NEED_WALK`].
    perm: u64,
    /// The second-stage leaf entry (for its D bit).
    entry: *const AtomicU64,
    /// The second-stage IOVA of the slot's first byte (flat: `tag`;
    /// nested: the guest physical address), where dirty tracking marks.
    at: u64,
}

const EMPTY: Slot = Slot {
    gen: u64::MAX,
    tag: 0,
    mask: 0,
    host: 0,
    perm: 0,
    entry: std::ptr::null(),
    at: 0,
};

/// A per-caller translation cache of one domain (an emulated device's
/// IOTLB): direct-mapped, one slot per recently used leaf. Every unmap of
/// the (second-stage) domain invalidates it as a whole (the domain's
/// generation); over a nested domain, so does every `HWPT_INVALIDATE` of
/// the first stage (its generation), so a hit costs what a flat one does.
#[derive(Debug)]
pub struct Iotlb {
    dom: Arc<VtdDomain>,
    nested: Option<Arc<VtdNestedDomain>>,
    slots: Box<[Slot]>,
    mask: usize,
    /// Second-stage ranges a tracked write went through (reused).
    written: Vec<(u64, u64)>,
}

// SAFETY: the only non-Send field is `Slot::entry`, a pointer into the
// page tables of `dom`, which the `Arc` keeps alive and which are atomics.
unsafe impl Send for Iotlb {}

impl Iotlb {
    /// A cache of [`IOTLB_DEFAULT_SLOTS`] slots over `dom`.
    pub fn new(dom: Arc<VtdDomain>) -> Iotlb {
        Self::with_slots(dom, IOTLB_DEFAULT_SLOTS)
    }

    /// A cache of `slots` slots (rounded up to a power of two, at least 1).
    pub fn with_slots(dom: Arc<VtdDomain>, slots: usize) -> Iotlb {
        let n = slots.max(1).next_power_of_two();
        Iotlb {
            dom,
            nested: None,
            slots: vec![EMPTY; n].into_boxed_slice(),
            mask: n - 1,
            written: Vec::new(),
        }
    }

    /// A cache of [`IOTLB_DEFAULT_SLOTS`] slots over a nested domain: each
    /// slot holds the combined translation (first stage through the
    /// parent), with the first stage's own cache behind it (a cached
    /// first-stage leaf stays in use until invalidated, as on hardware).
    pub fn nested(dom: Arc<VtdNestedDomain>) -> Iotlb {
        Self::nested_with_slots(dom, IOTLB_DEFAULT_SLOTS)
    }

    /// [`Iotlb::nested`] with `slots` slots (rounded up to a power of two,
    /// at least 1).
    pub fn nested_with_slots(dom: Arc<VtdNestedDomain>, slots: usize) -> Iotlb {
        let mut t = Self::with_slots(dom.parent().clone(), slots);
        t.nested = Some(dom);
        t
    }

    /// The (second-stage) domain translated.
    pub fn domain(&self) -> &Arc<VtdDomain> {
        &self.dom
    }

    /// The generation the slots are checked against: the second stage's
    /// unmaps, plus (nested) the first stage's invalidations, both only
    /// ever growing, so that the sum changes whenever either does.
    #[inline]
    fn gen_now(&self) -> u64 {
        let g = self.dom.gen.load(Ordering::Acquire);
        match &self.nested {
            None => g,
            Some(n) => g.wrapping_add(n.gen.load(Ordering::Acquire) << 40),
        }
    }

    /// Forget every cached translation.
    pub fn flush(&mut self) {
        self.slots.fill(EMPTY);
    }

    #[inline]
    fn slot_of(&self, iova: u64) -> usize {
        let p = iova >> 12;
        ((p ^ (p >> 10) ^ (p >> 20)) as usize) & self.mask
    }

    /// The host address of `iova` and how many bytes from there (at most
    /// `len`) may be accessed contiguously, for a read or (`write`) a
    /// write; faults as values. A write while the domain tracks dirty
    /// pages marks what it covers dirty (the caller is about to write it).
    /// The address is good until the IOVA is unmapped: a caller that
    /// copies through it itself must not race unmaps of that IOVA
    /// ([`Iotlb::read`]/[`Iotlb::write`] hold the domain's DMA drain lock,
    /// so an unmap waits for them).
    #[inline]
    pub fn translate(&mut self, iova: u64, len: u64, write: bool) -> Result<(u64, u64), Fault> {
        let gen = self.gen_now();
        let i = self.slot_of(iova);
        let s = self.slots[i];
        if s.gen == gen && iova & !s.mask == s.tag && !(write && s.perm & NEED_WALK != 0) {
            let need = if write { PTE_W } else { PTE_R };
            if s.perm & need == 0 {
                return Err(Fault::Permission { iova, write });
            }
            let off = iova & s.mask;
            if write && self.dom.tracking.enabled_relaxed() {
                // SAFETY: an entry of a table of `dom`, alive while we
                // hold the `Arc`.
                let e = unsafe { &*s.entry };
                if e.load(Ordering::Relaxed) & PTE_D == 0 && !self.dom.set_dirty(s.at + off) {
                    return Err(Fault::NotPresent { iova });
                }
            }
            return Ok((s.host + off, (s.mask - off + 1).min(len)));
        }
        self.miss_any(i, gen, iova, len, write)
    }

    #[cold]
    #[inline(never)]
    fn miss_any(
        &mut self,
        i: usize,
        gen: u64,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<(u64, u64), Fault> {
        // taken out for the call (no reference count traffic)
        match self.nested.take() {
            None => self.miss(i, gen, iova, len, write),
            Some(n) => {
                let r = self.miss_nested(&n, i, gen, iova, len, write);
                self.nested = Some(n);
                r
            }
        }
    }

    #[cold]
    fn miss(
        &mut self,
        i: usize,
        gen: u64,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<(u64, u64), Fault> {
        let leaf = self.dom.lookup(iova).ok_or(Fault::NotPresent { iova })?;
        let size = leaf.size();
        self.slots[i] = Slot {
            gen,
            tag: iova & !(size - 1),
            mask: size - 1,
            host: leaf.value & PTE_ADDR_MASK,
            perm: leaf.value & (PTE_R | PTE_W),
            entry: leaf.entry,
            at: iova & !(size - 1),
        };
        self.dom.check_leaf(iova, &leaf, write)?;
        Ok(self.dom.extend(iova, len, write, &leaf))
    }

    /// A miss over a nested domain: the first-stage leaf (its cache, or a
    /// walk that sets A/D), then the parent's leaf of its output; the slot
    /// covers what lies in both (the smaller leaf, naturally aligned in
    /// both spaces). Faults are reported at the device's IOVA.
    #[cold]
    fn miss_nested(
        &mut self,
        n: &VtdNestedDomain,
        i: usize,
        gen: u64,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<(u64, u64), Fault> {
        let l = n.s1_leaf(iova, write)?;
        let gpa = l.gpa + (iova - l.base);
        let leaf = self.dom.lookup(gpa).ok_or(Fault::NotPresent { iova })?;
        let size = l.size.min(leaf.size());
        let mask = size - 1;
        let mut perm = leaf.value & (PTE_R | PTE_W);
        if !l.write {
            perm &= !PTE_W;
        } else if !l.dirty {
            perm |= NEED_WALK;
        }
        let host = (leaf.value & PTE_ADDR_MASK) + (gpa & (leaf.size() - 1) & !mask);
        self.slots[i] = Slot {
            gen,
            tag: iova & !mask,
            mask,
            host,
            perm,
            entry: leaf.entry,
            at: gpa & !mask,
        };
        let need = if write { PTE_W } else { PTE_R };
        if perm & need == 0 {
            return Err(Fault::Permission { iova, write });
        }
        match self.dom.check_leaf(gpa, &leaf, write) {
            Ok(()) => {}
            Err(Fault::Permission { .. }) => return Err(Fault::Permission { iova, write }),
            Err(_) => return Err(Fault::NotPresent { iova }),
        }
        let off = iova & mask;
        Ok((host + off, (size - off).min(len)))
    }

    /// DMA read: copy `buf.len()` bytes at `iova` into `buf`.
    pub fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.copy(iova, buf.as_mut_ptr(), buf.len(), false)
    }

    /// DMA write: copy `buf` to `iova` (marking it dirty while tracking).
    pub fn write(&mut self, iova: u64, buf: &[u8]) -> Result<(), Fault> {
        self.copy(iova, buf.as_ptr().cast_mut(), buf.len(), true)
    }

    /// Copy between `local` (`len` bytes, ours) and IOVA through this
    /// cache (see [`copy_by_iova`]). A write while the domain tracks dirty
    /// pages marks what it went through again once the bytes are in (as
    /// `VtdDomain::dma_write` does): a bitmap read that cleared D between
    /// the translation and the copy reports the page next time.
    fn copy(&mut self, iova: u64, local: *mut u8, len: usize, write: bool) -> Result<(), Fault> {
        let dom = self.dom.clone();
        if !(write && dom.tracking.enabled()) {
            return copy_by_iova(&dom, iova, local, len, write, |at, n, w| {
                self.translate(at, n, w)
            });
        }
        let mut written = std::mem::take(&mut self.written);
        written.clear();
        let r = copy_by_iova(&dom, iova, local, len, write, |at, n, w| {
            let (h, m) = self.translate(at, n, w)?;
            // the second-stage address of `at`: its slot's
            let s = &self.slots[self.slot_of(at)];
            let a = s.at + (at & s.mask);
            match written.last_mut() {
                Some(r) if r.0 + r.1 == a => r.1 += m,
                _ => written.push((a, m)),
            }
            Ok((h, m))
        });
        for &(a, m) in &written {
            dom.mark_dirty(a, m);
        }
        self.written = written;
        r
    }
}

/// Copy between `local` (`len` bytes, the caller's) and IOVA of `dom`, one
/// copy per host-contiguous run of what `translate` returns, holding the
/// domain's DMA drain lock from the first translation to the last byte so
/// that an unmap of that IOVA waits for the copy. On a fault the runs
/// before it are copied. A DMA write reads `local`, a read writes it.
pub(super) fn copy_by_iova(
    dom: &VtdDomain,
    iova: u64,
    local: *mut u8,
    len: usize,
    write: bool,
    mut translate: impl FnMut(u64, u64, bool) -> Result<(u64, u64), Fault>,
) -> Result<(), Fault> {
    // in flight until the last byte moved: an unmap waits for it
    let _dma = dom.dma.read();
    let mut off = 0u64;
    let len = len as u64;
    // pending run: host address, offset in `local`, length
    let mut run = (0u64, 0u64, 0u64);
    let flush = |run: (u64, u64, u64)| -> Result<(), Fault> {
        if run.2 == 0 {
            return Ok(());
        }
        // SAFETY: `local + run.1 .. + run.2` lies inside the caller's
        // buffer (`off` never passes `len`); it is only read for a
        // DMA write.
        let r = unsafe {
            let p = local.add(run.1 as usize);
            if write {
                SelfMemory.write(run.0, std::slice::from_raw_parts(p, run.2 as usize))
            } else {
                SelfMemory.read(run.0, std::slice::from_raw_parts_mut(p, run.2 as usize))
            }
        };
        r.map_err(|_| Fault::Host {
            iova: iova.wrapping_add(run.1),
        })
    };
    while off < len {
        let Some(at) = iova.checked_add(off) else {
            flush(run)?;
            return Err(Fault::NotPresent { iova: u64::MAX });
        };
        let (h, n) = match translate(at, len - off, write) {
            Ok(x) => x,
            Err(f) => {
                flush(run)?;
                return Err(f);
            }
        };
        if run.2 != 0 && run.0.wrapping_add(run.2) == h {
            run.2 += n;
        } else {
            flush(run)?;
            run = (h, off, n);
        }
        off += n;
    }
    flush(run)
}
