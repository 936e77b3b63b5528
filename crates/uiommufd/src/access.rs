//! Accesses: the kernel-internal API toward emulated devices (mdev-like
//! drivers) that pin pages or copy data by IOVA without an IOMMU domain (the
//! kernel's `iommufd_access_*` in device.c).
//!
//! An [`Access`] is created by a driver on a context, attached to an IOAS,
//! and then pins IOVA ranges ([`Access::pin_pages`]) or reads/writes through
//! them ([`Access::rw`]). The contract with unmap: when a range the access
//! may have pinned is unmapped, the IOAS calls the driver's
//! [`AccessOps::unmap`], which must unpin everything in that range before
//! returning; an unmap that still finds pins fails (`EDEADLK`).
//!
//! The access occupies an object ID (as in the kernel) that user space
//! cannot destroy (`EBUSY`): the driver destroys it.
//!
//! Lock order: `Access::state` → the IOAS's IO page table locks. The driver's
//! unmap callback runs with no access lock held.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;

use crate::context::{Context, ObjId, Object};
pub use crate::io_pagetable::PinnedPages;
use crate::io_pagetable::{AccessNotify, IoPagetable};
use crate::ioas::Ioas;
use crate::user::page_size;
use crate::{bail, Result};

/// What the driver behind an access must provide.
pub trait AccessOps: Send + Sync + std::fmt::Debug {
    /// Unpin everything pinned in `[iova, iova + length)` through this
    /// access, calling [`Access::unpin_pages`] for each pin.
    fn unmap(&self, iova: u64, length: u64);
    /// Whether the driver pins pages (then IOVAs must be page aligned).
    fn needs_pin_pages(&self) -> bool;
}

/// The driver of an internal access: none (it is never asked to unpin).
#[derive(Debug)]
struct NoOps;

impl AccessOps for NoOps {
    fn unmap(&self, _iova: u64, _length: u64) {}
    fn needs_pin_pages(&self) -> bool {
        true
    }
}

/// The driver of an access that only copies by IOVA ([`Access::rw`]) and
/// never pins: an unmap needs nothing from it, and its IOVAs need no page
/// alignment (an emulated device doing plain DMA).
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOnly;

impl AccessOps for CopyOnly {
    fn unmap(&self, _iova: u64, _length: u64) {}
    fn needs_pin_pages(&self) -> bool {
        false
    }
}

#[derive(Debug, Default)]
struct State {
    /// The IOAS attached, its ID and our notifier token in it.
    ioas: Option<(Arc<Ioas>, ObjId, u64)>,
}

/// An access object: an emulated device (or the engine itself) that reads,
/// writes and pins guest memory by IOVA in the IOAS it is attached to, and
/// is told of unmaps through its [`AccessOps`].
///
/// An emulated device writing and reading guest memory through an access:
///
/// ```
/// use uiommufd::{Access, Context, Prot};
/// let ctx = Context::new();
/// let ioas = ctx.ioas_alloc().unwrap();
/// let mut guest = vec![0u8; 2 * 4096];
/// // a whole page: an access needs page-aligned areas
/// let va = (guest.as_mut_ptr() as u64).next_multiple_of(4096);
/// let iova = ctx.ioas(ioas).unwrap()
///     .map_user(va, 4096, Some(0x10_0000), Prot::RW).unwrap();
/// let access = Access::create_internal(&ctx).unwrap();
/// access.attach(&ctx, ioas).unwrap();
/// access.rw(iova + 8, &mut b"hello".to_vec(), true).unwrap();
/// let mut word = [0u8; 5];
/// access.rw(iova + 8, &mut word, false).unwrap();
/// assert_eq!(&word, b"hello");
/// // (the bytes are in the mapped memory itself)
/// let at = (va - guest.as_ptr() as u64) as usize + 8;
/// assert_eq!(&std::hint::black_box(&guest)[at..at + 5], b"hello");
/// access.destroy(&ctx);
/// ```
#[derive(Debug)]
pub struct Access {
    id: ObjId,
    ops: Weak<dyn AccessOps>,
    iova_alignment: u64,
    /// Read side: held by the locked path of [`Access::rw`] for the whole
    /// copy (the kernel holds its `ioas_lock` there), so a detach or
    /// replace waits for copies in flight, and concurrent copies do not
    /// wait for one another.
    state: RwLock<State>,
    /// The attached IOAS's IO page table (null: none), for the fast path
    /// of [`Access::rw`], which reads it in a drain section
    /// (`crate::drain`) instead of taking `state`: set under `state`'s
    /// write lock, and a detach or replace clears or moves it and then
    /// drains before it lets go of the old IOAS, so it points into the
    /// `Arc<Ioas>` held in `state` for as long as a section can read it.
    table: AtomicPtr<IoPagetable>,
    me: Weak<Access>,
}

impl Object for Access {
    const KIND: &'static str = "access";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_ACCESS");

    fn check_object(&self, ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        // an access only ever reaches an IOAS of its own context
        if let Some((ioas, ioas_id)) = self.attached_ioas() {
            match ctx.lookup::<Ioas>(ioas_id) {
                Ok(i) if Arc::ptr_eq(&i, &ioas) => {}
                _ => {
                    return Err(format!(
                        "access {id} is attached to IOAS {ioas_id}, which is not that IOAS of this context"
                    ))
                }
            }
        }
        Ok(())
    }
}

impl AccessNotify for Access {
    fn unmap(&self, iova: u64, length: u64) {
        if let Some(ops) = self.ops.upgrade() {
            ops.unmap(iova, length);
        }
    }
}

impl Access {
    /// `iommufd_access_create`: a new access driven by `ops`, published on `ctx`.
    pub fn create(ctx: &Context, ops: Weak<dyn AccessOps>) -> Result<Arc<Access>> {
        let needs_pin = ops.upgrade().is_some_and(|o| o.needs_pin_pages());
        Self::publish(ctx, ops, if needs_pin { page_size() } else { 1 })
    }

    /// A new access with `ops` and IOVA alignment `iova_alignment`,
    /// published on `ctx`.
    fn publish(
        ctx: &Context,
        ops: Weak<dyn AccessOps>,
        iova_alignment: u64,
    ) -> Result<Arc<Access>> {
        let r = ctx.reserve()?;
        let id = r.id();
        let a = Arc::new_cyclic(|me| Access {
            id,
            ops,
            iova_alignment,
            state: RwLock::new(State::default()),
            table: AtomicPtr::new(std::ptr::null_mut()),
            me: me.clone(),
        });
        r.finalize(a.clone());
        Ok(a)
    }

    /// `iommufd_access_create_internal`: an access the core itself uses (a
    /// HW queue's pin of its memory), published on `ctx`. It has no driver
    /// to ask for unpins, so its pins lock their areas
    /// (`Access::pin_locked`).
    pub fn create_internal(ctx: &Context) -> Result<Arc<Access>> {
        let ops: Weak<dyn AccessOps> = Weak::<NoOps>::new();
        Self::publish(ctx, ops, page_size())
    }

    /// Attach to `ioas` (ID `ioas_id`), for the core's own accesses.
    pub(crate) fn attach_ioas(&self, ioas: Arc<Ioas>, ioas_id: ObjId) -> Result<()> {
        if self.state.read().ioas.is_some() {
            bail!(EINVAL, "access {} is already attached", self.id);
        }
        self.change_ioas(Some((ioas, ioas_id)))
    }

    /// Pin `[iova, iova + length)` read-only and lock the areas it touches:
    /// `IOMMU_IOAS_UNMAP` of them is `EBUSY` until
    /// [`Access::unpin_locked`] (the kernel's pin by an internal access).
    pub(crate) fn pin_locked(&self, iova: u64, length: u64) -> Result<PinnedPages> {
        let ioas = self.ioas()?;
        let pages = ioas.iopt().access_pin(iova, length, false)?;
        ioas.iopt().lock_areas(iova, length, true);
        Ok(pages)
    }

    /// Undo [`Access::pin_locked`].
    pub(crate) fn unpin_locked(&self, iova: u64, length: u64) {
        match self.ioas() {
            Ok(i) => {
                i.iopt().lock_areas(iova, length, false);
                i.iopt().access_unpin(iova, length);
            }
            Err(e) => tracing::error!("unpin without an IOAS: {e}"),
        }
    }

    /// The object ID.
    pub fn id(&self) -> ObjId {
        self.id
    }

    /// The attached IOAS's ID, if any.
    pub fn ioas_id(&self) -> Option<ObjId> {
        self.state.read().ioas.as_ref().map(|(_, id, _)| *id)
    }

    /// The attached IOAS and its ID, if any (for the context's invariants).
    pub(crate) fn attached_ioas(&self) -> Option<(Arc<Ioas>, ObjId)> {
        self.state
            .read()
            .ioas
            .as_ref()
            .map(|(i, id, _)| (i.clone(), *id))
    }

    /// `ENOENT` unless `ctx` is the context this access was published on:
    /// an IOAS ID is only ever resolved in the access's own context (the
    /// kernel's access holds its `ictx`), never in a caller's.
    fn check_owner(&self, ctx: &Context) -> Result<()> {
        match ctx.lookup::<Access>(self.id) {
            Ok(a) if std::ptr::eq(Arc::as_ptr(&a), self) => Ok(()),
            _ => bail!(
                ENOENT,
                "access {} belongs to another context: IOAS IDs are resolved in its own",
                self.id
            ),
        }
    }

    /// Attach to IOAS `ioas_id` of `ctx`, the access's own context
    /// (`EINVAL` if already attached, `ENOENT` for another context).
    pub fn attach(&self, ctx: &Context, ioas_id: ObjId) -> Result<()> {
        self.check_owner(ctx)?;
        if self.state.read().ioas.is_some() {
            bail!(EINVAL, "access {} is already attached", self.id);
        }
        self.change_ioas(Some((ctx.ioas(ioas_id)?, ioas_id)))
    }

    /// Move to IOAS `ioas_id` of `ctx`, the access's own context (`ENOENT`
    /// if not attached, or for another context): pins in the old
    /// IOAS are dropped through the driver first.
    pub fn replace(&self, ctx: &Context, ioas_id: ObjId) -> Result<()> {
        self.check_owner(ctx)?;
        if self.state.read().ioas.is_none() {
            bail!(ENOENT, "access {} is not attached to any IOAS", self.id);
        }
        self.change_ioas(Some((ctx.ioas(ioas_id)?, ioas_id)))
    }

    /// Detach from the IOAS (unpinning everything through the driver).
    pub fn detach(&self) {
        if let Err(e) = self.change_ioas(None) {
            tracing::error!("access {} detach: {e}", self.id);
        }
    }

    fn change_ioas(&self, new: Option<(Arc<Ioas>, ObjId)>) -> Result<()> {
        let cur = self.state.read().ioas.clone();
        if let (Some((c, _, _)), Some((n, _))) = (&cur, &new) {
            if Arc::ptr_eq(c, n) {
                return Ok(());
            }
        }
        let new_entry = match new {
            Some((ioas, id)) => {
                let me: Weak<dyn AccessNotify> = self.me.clone();
                let token = ioas.iopt().add_access(me, self.iova_alignment)?;
                Some((ioas, id, token))
            }
            None => None,
        };
        if let Some((old, _, token)) = cur {
            // the driver unpins everything from the old IOAS first
            if let Some(ops) = self.ops.upgrade() {
                ops.unmap(0, u64::MAX);
            }
            old.iopt().remove_access(token);
        }
        let prev = {
            let mut st = self.state.write();
            let table = new_entry
                .as_ref()
                .map_or(std::ptr::null(), |(i, _, _)| i.iopt() as *const IoPagetable);
            self.table.store(table.cast_mut(), Ordering::Release);
            std::mem::replace(&mut st.ioas, new_entry)
        };
        // Copies of the fast path that may still use the old table end
        // before this returns (as those of the locked path, which hold
        // `state`'s read side) and before `prev` lets go of the old IOAS.
        crate::drain::wait();
        drop(prev);
        Ok(())
    }

    fn ioas(&self) -> Result<Arc<Ioas>> {
        match &self.state.read().ioas {
            Some((i, _, _)) => Ok(i.clone()),
            None => bail!(ENOENT, "access {} is not attached to an IOAS", self.id),
        }
    }

    /// Pin `[iova, iova + length)`; returns the host address of each page.
    pub fn pin_pages(&self, iova: u64, length: u64, write: bool) -> Result<PinnedPages> {
        if self.iova_alignment != page_size() {
            bail!(EINVAL, "access {} was not created to pin pages", self.id);
        }
        self.ioas()?.iopt().access_pin(iova, length, write)
    }

    /// Unpin a range pinned by [`Access::pin_pages`].
    pub fn unpin_pages(&self, iova: u64, length: u64) {
        match self.ioas() {
            Ok(i) => i.iopt().access_unpin(iova, length),
            Err(e) => tracing::error!("unpin without an IOAS: {e}"),
        }
    }

    /// Copy between `buf` and IOVA `iova` (`write`: `buf` → memory), with
    /// the rules of [`crate::io_pagetable::IoPagetable::access_rw`]
    /// (`ENOENT` when not attached). Pinned or present memory of the
    /// program is copied in place at `memcpy` speed once fault-safe copies
    /// are on ([`crate::faultsafe::install`], or the preload shim).
    ///
    /// The common case takes no lock: the attached table is read from an
    /// atomic pointer inside a drain section, and the copy is the table's
    /// lock-free fast path (`IoPagetable::access_rw_fast`); a detach or
    /// replace drains such copies before it returns. Anything else (not
    /// attached, an area not known to the fast path, an error) takes the
    /// locked path, under `state`'s read lock.
    pub fn rw(&self, iova: u64, buf: &mut [u8], write: bool) -> Result<()> {
        if let Some(g) = crate::drain::enter() {
            let t = self.table.load(Ordering::Acquire);
            if !t.is_null() {
                // SAFETY: a non-null `table` points into the IOAS held in
                // `state`; `change_ioas` replaces it and then drains
                // before that IOAS can go, and this section began before
                // the drain (see `table`).
                let t = unsafe { &*t };
                if let Some(r) = t.access_rw_fast(&g, iova, buf, write) {
                    return r;
                }
            }
        }
        let st = self.state.read();
        match &st.ioas {
            Some((i, _, _)) => i.iopt().access_rw_slow(iova, buf, write),
            None => bail!(ENOENT, "access {} is not attached to an IOAS", self.id),
        }
    }

    /// `iommufd_access_destroy`: detach and remove the object.
    pub fn destroy(self: Arc<Self>, ctx: &Context) {
        self.detach();
        let id = self.id;
        drop(self);
        ctx.remove_internal(id);
    }
}
