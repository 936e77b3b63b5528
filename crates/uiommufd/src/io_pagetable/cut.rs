//! Cutting areas in two (the kernel's `iopt_cut_iova` / `iopt_area_split`).
//!
//! Only the VFIO type1 (v1) compatibility path uses this: v1 lets userspace
//! unmap any page-aligned piece of a mapping, which iommufd emulates by
//! cutting the areas at both ends of the unmap range first (with large pages
//! disabled, so that no domain holds an IOPTE spanning the cut).
//!
//! A cut changes neither the domains nor the pins: both halves keep the same
//! pages object, and the page ranges they pin stay the ones the whole area
//! pinned (with domains attached the cut is page aligned, so no page is
//! shared by the halves).

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::{Area, AreaState, IoPagetable, State};
use crate::user::page_size;
use crate::{bail, Result};

impl State {
    /// Split the area starting at `start` after byte `iova` (so that `iova`
    /// becomes the last byte of the left half). Nothing changes on error.
    fn split_area(&mut self, start: u64, iova: u64, domains_attached: bool) -> Result<()> {
        let ps = page_size();
        let align = self.iova_alignment;
        let a = &self.areas[&start];
        if iova == start || iova == a.last {
            return Ok(());
        }
        if a.state != AreaState::Live || a.prevent_access {
            bail!(
                EBUSY,
                "cannot cut area [{start:#x}, {:#x}]: it is being mapped or unmapped",
                a.last
            );
        }
        if a.pages.is_dmabuf() {
            // the kernel keeps a dma-buf's per-domain tracking per area
            bail!(
                EOPNOTSUPP,
                "cannot cut area [{start:#x}, {:#x}]: it maps a dma-buf",
                a.last
            );
        }
        let new_start = iova + 1;
        let rhs_start_byte = a.start_byte + (new_start - start);
        if new_start & (align - 1) != 0 || (rhs_start_byte % ps) & (align - 1) != 0 {
            bail!(
                EINVAL,
                "cannot cut area [{start:#x}, {:#x}] at {new_start:#x}: not aligned to the IOVA alignment {align:#x}",
                a.last
            );
        }
        if a.has_access_pins() {
            bail!(
                EINVAL,
                "cannot cut area [{start:#x}, {:#x}]: an access holds pins in it",
                a.last
            );
        }
        if domains_attached && !self.disable_large_pages {
            bail!(
                EINVAL,
                "cannot cut area [{start:#x}, {:#x}]: domains may map it with large pages",
                a.last
            );
        }
        let Some(whole) = self.areas.remove(&start) else {
            unreachable!("area just looked up")
        };
        let half = |last: u64, start_byte: u64| Area {
            last,
            pages: whole.pages.clone(),
            start_byte,
            prot: whole.prot,
            state: AreaState::Live,
            alloc_gen: whole.alloc_gen,
            accesses: Mutex::new(BTreeMap::new()),
            prevent_access: false,
            // (an area with access pins is never cut, so it has no locks)
            locks: std::sync::atomic::AtomicU32::new(0),
        };
        // The IOVA stays occupied, so the free index is unchanged.
        self.areas.insert(start, half(iova, whole.start_byte));
        self.areas
            .insert(new_start, half(whole.last, rhs_start_byte));
        Ok(())
    }
}

impl IoPagetable {
    /// Cut the areas that contain each of `iovas` so that the IOVA becomes
    /// the last byte of an area (the kernel's `iopt_cut_iova`). IOVAs where
    /// nothing is mapped, or that already end or start an area, are skipped.
    ///
    /// Errors, per IOVA in order (earlier cuts stay): `EBUSY` for an area
    /// still being mapped or unmapped, `EINVAL` when the cut is not aligned to
    /// the IOVA alignment, when an access holds pins in the area, or when a
    /// domain is attached while large pages are enabled.
    pub fn cut_iova(&self, iovas: &[u64]) -> Result<()> {
        let attached = self.domains.read();
        let domains_attached = !attached.domains.is_empty();
        let mut st = self.state.write();
        for &iova in iovas {
            let Some((&start, a)) = st.areas.range(..=iova).next_back() else {
                continue;
            };
            if a.last < iova {
                continue;
            }
            st.split_area(start, iova, domains_attached)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_pagetable::{IovaRequest, MapSource, Prot};
    use crate::pages::Pages;
    use crate::user::SelfMemory;
    use std::sync::Arc;

    #[test]
    fn cut_splits_and_keeps_free_index() {
        let ps = page_size();
        let buf = vec![0u8; (ps * 9) as usize];
        let uptr = (buf.as_ptr() as u64).next_multiple_of(ps);
        let t = IoPagetable::new();
        t.set_large_pages(false).unwrap();
        let pages = Pages::new(
            Arc::new(SelfMemory),
            uptr,
            ps * 4,
            true,
            crate::accounting::AccountMode::None,
        );
        let start_byte = uptr - pages.uptr();
        let base = 0x10_0000;
        t.map(
            vec![MapSource {
                pages,
                start_byte,
                length: ps * 4,
            }],
            ps * 4,
            IovaRequest::Fixed(base),
            Prot::RW,
        )
        .unwrap();
        // unaligned cut refused
        assert_eq!(
            t.cut_iova(&[base + 10]).unwrap_err().errno().0,
            libc::EINVAL
        );
        t.cut_iova(&[base + 2 * ps - 1, base + ps - 1]).unwrap();
        let areas = t.areas();
        assert_eq!(areas.len(), 3);
        assert_eq!((areas[0].iova, areas[0].length), (base, ps));
        assert_eq!((areas[1].iova, areas[1].length), (base + ps, ps));
        assert_eq!((areas[2].iova, areas[2].length), (base + 2 * ps, 2 * ps));
        assert_eq!(areas[2].uptr, uptr + 2 * ps);
        t.check_invariants().unwrap();
        // cutting at a boundary or in a hole is a no-op
        t.cut_iova(&[base + ps - 1, base + 100 * ps]).unwrap();
        assert_eq!(t.areas().len(), 3);
        assert_eq!(t.unmap(base + ps, ps).unwrap(), ps);
        t.check_invariants().unwrap();
        drop(buf);
    }
}
