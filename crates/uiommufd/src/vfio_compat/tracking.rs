//! The VFIO type1 dirty-tracking session of a container's compat IOAS
//! (`VFIO_IOMMU_DIRTY_PAGES` START/STOP, served by `dirty.rs`).
//!
//! The session is state of this layer, kept with the IOAS
//! ([`Ioas::extension`]); it reaches the IO page table through its narrow
//! dirty interface: the attached domains and their dirty tracking switch
//! ([`IoPagetable::domains`], [`IoPagetable::set_dirty_tracking`]), the
//! access write log's switch ([`IoPagetable::access_write_log`]), and the
//! per-area read ([`IoPagetable::read_area_dirty`], which puts back what
//! it could not deliver).
//!
//! Type1's rules, over what the table reports:
//!
//! - a domain with dirty tracking (`Domain::dirty_tracking_supported`) has
//!   tracking turned on at START (its dirty state cleared first), and so
//!   does any domain attached later, at the next read; that first read
//!   reports the domain's areas whole, since writes before it were not
//!   tracked;
//! - a domain without dirty tracking cannot tell what its devices wrote:
//!   every area is reported dirty while it is attached (type1's rule for
//!   IOMMU-backed devices that do not report dirty pages);
//! - what accesses wrote or hold pinned for write comes from the access
//!   write log, on for as long as the session.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::domain::Domain;
use crate::io_pagetable::{AreaDirty, IoPagetable};
use crate::ioas::Ioas;
use crate::Result;

/// One IOAS's type1 dirty-tracking session (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Type1Session {
    /// `Some` while a session is on: the domains whose dirty tracking the
    /// session turned on. Taken before any lock of the IO page table, never
    /// under one.
    tracked: Mutex<Option<BTreeSet<u64>>>,
}

impl Type1Session {
    /// The session state of `ioas` (off until [`Type1Session::start`]).
    pub(crate) fn of(ioas: &Ioas) -> Arc<Type1Session> {
        ioas.extension::<Type1Session>()
    }

    /// Whether the session is on.
    pub(crate) fn is_on(&self) -> bool {
        self.tracked.lock().is_some()
    }

    /// Start the session: dirty tracking on in every attached domain that
    /// has it (their dirty state cleared first), and the access write log
    /// on. A no-op when the session is on. On error the domains already
    /// switched are switched back and nothing is on.
    pub(crate) fn start(&self, iopt: &IoPagetable) -> Result<()> {
        let mut tracked = self.tracked.lock();
        if tracked.is_some() {
            return Ok(());
        }
        let domains = iopt.domains();
        let mut done: Vec<u64> = Vec::new();
        for d in domains.iter().filter(|d| d.dirty_tracking_supported()) {
            if let Err(e) = iopt.set_dirty_tracking(d.id(), true) {
                for &id in &done {
                    let _ = iopt.set_dirty_tracking(id, false);
                }
                return Err(e);
            }
            done.push(d.id());
        }
        *tracked = Some(done.into_iter().collect());
        iopt.access_write_log().set_enabled(true);
        Ok(())
    }

    /// Stop the session: dirty tracking off in the domains it turned on, the
    /// access write log off and emptied. A no-op when no session is on.
    pub(crate) fn stop(&self, iopt: &IoPagetable) {
        let mut tracked = self.tracked.lock();
        let Some(set) = tracked.take() else {
            return;
        };
        for d in iopt.domains() {
            if set.contains(&d.id()) {
                if let Err(e) = iopt.set_dirty_tracking(d.id(), false) {
                    tracing::warn!("type1 dirty stop: domain {}: {e}", d.id());
                }
            }
        }
        iopt.access_write_log().set_enabled(false);
    }

    /// The dirty pages of every mapping wholly inside `start..=last` (see
    /// [`IoPagetable::read_area_dirty`]), by type1's rules: domains attached
    /// since the last read are adopted (tracking on now, their areas
    /// reported whole this once). The caller checked that the session is on.
    /// Each area's bits go to `deliver`; its error ends the read (nothing
    /// read is lost, see [`IoPagetable::read_area_dirty`]).
    pub(crate) fn read(
        &self,
        iopt: &IoPagetable,
        start: u64,
        last: u64,
        pgshift: u32,
        clear: bool,
        deliver: impl FnMut(&AreaDirty<'_>) -> Result<()>,
    ) -> Result<()> {
        // The session's lock is held through the read (it comes before the
        // table's locks), so no set of domain IDs is built per read.
        let mut guard = self.tracked.lock();
        let Some(tracked) = guard.as_mut() else {
            // stopped since the caller checked: every domain counts whole
            return iopt.read_area_dirty(start, last, pgshift, clear, |_| false, deliver);
        };
        // Adopt domains attached since the session started: tracking on
        // now, their areas reported whole this once.
        // (a scan without a copy of the list first: domains rarely change)
        let mut fresh: Vec<u64> = Vec::new();
        let adopt =
            |d: &Arc<dyn Domain>| d.dirty_tracking_supported() && !tracked.contains(&d.id());
        let to_adopt = if iopt.any_domain(adopt) {
            iopt.domains()
        } else {
            Vec::new()
        };
        for d in to_adopt {
            if d.dirty_tracking_supported() && !tracked.contains(&d.id()) {
                match iopt.set_dirty_tracking(d.id(), true) {
                    Ok(()) => {
                        tracked.insert(d.id());
                    }
                    Err(e) => tracing::warn!("type1 dirty: domain {}: {e}", d.id()),
                }
                fresh.push(d.id());
            }
        }
        let tracked = &*tracked;
        iopt.read_area_dirty(
            start,
            last,
            pgshift,
            clear,
            |id| tracked.contains(&id) && !fresh.contains(&id),
            deliver,
        )
    }
}
