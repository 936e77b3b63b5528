//! What [`crate::custody`] needs of an IO page table: both its locks for
//! write while it moves pinned pages, and the domains' mappings of the
//! areas over moved pages made again at the pages' new host addresses.

use std::collections::HashSet;

use parking_lot::RwLockWriteGuard;

use super::domains::{self, Attached};
use super::{AreaState, IoPagetable, State};
use crate::custody::HeldTable;

/// An IO page table held still for custody: no map, unmap, pin, unpin or
/// locked copy runs, and the generation moved (the access fast path's
/// cached areas are stale).
pub(crate) struct CustodyLock<'a> {
    attached: RwLockWriteGuard<'a, Attached>,
    st: RwLockWriteGuard<'a, State>,
}

impl IoPagetable {
    /// Take the `domains` and `state` locks for write (in the table's
    /// lock order).
    pub(crate) fn lock_for_custody(&self) -> CustodyLock<'_> {
        let attached = self.domains.write();
        let st = self.state.write();
        CustodyLock { attached, st }
    }
}

impl HeldTable for CustodyLock<'_> {
    /// Map again, in every attached domain, the live areas over the pages
    /// objects `moved` (ids), at the host addresses their pages live at
    /// now. A domain that refuses the new mapping is logged: DMA there
    /// then faults, as after a failed map. A domain with dirty tracking
    /// reports the whole area dirty once (its dirty state went with the
    /// old mapping).
    fn repoint(&mut self, moved: &HashSet<u64>) {
        if self.attached.domains.is_empty() {
            return;
        }
        let max_pgsize = self.st.max_pgsize();
        let keys: Vec<u64> = self
            .st
            .areas
            .iter()
            .filter(|(_, a)| {
                a.state == AreaState::Live && !a.pages.is_dmabuf() && moved.contains(&a.pages.id())
            })
            .map(|(&k, _)| k)
            .collect();
        for k in keys {
            let r = self.st.area_ref(k);
            for d in &self.attached.domains {
                d.unmap(r.iova, r.length);
                if let Err(e) = domains::map_area(&**d, &r, max_pgsize) {
                    tracing::error!(
                        "custody: domain {} cannot map area [{:#x}, +{:#x}) at its pages' new place: {e}",
                        d.id(),
                        r.iova,
                        r.length
                    );
                } else if d.dirty_tracking_supported() {
                    // the dirty state of the old mapping went with it: the
                    // whole area reads dirty once (over-reporting loses
                    // nothing; with tracking off it is cleared before the
                    // next enable)
                    let _ = d.redirty(r.iova, r.length);
                }
            }
        }
    }
}
