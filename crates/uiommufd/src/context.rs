//! The iommufd context: what one open of `/dev/iommu` owns (kernel main.c).
//!
//! Object kinds are open: each registers by implementing [`Object`] in its
//! own module (its name, the kernel's object type, and hooks for destroy,
//! abort, extra users and invariants), and is looked up by type
//! ([`Context::get`]`::<Ioas>(id)`); this module names no kind but the IOAS
//! of its convenience calls.
//!
//! Objects live in a table keyed by a 32-bit ID (the lowest free one, from 1,
//! as the kernel's xarray hands them out). Every reference to an object is an
//! `Arc`: the table holds one; in-flight calls and other objects (a HWPT on
//! its IOAS, ...) hold others. `IOMMU_DESTROY` succeeds only when the table's
//! reference is the last, so "another object or an in-flight call uses it" is
//! `EBUSY` by construction. Closing the context destroys leaf objects first,
//! repeatedly, until the table is empty (dependency order).
//!
//! Creation is two-phase (the kernel's `iommufd_object_alloc` / `_finalize` /
//! `_abort`): [`Context::reserve`] takes an ID that lookups cannot see yet;
//! the handler does the fallible work and writes its reply, then
//! [`Reservation::finalize`] publishes the object. Dropping the reservation
//! instead frees the ID, so no error path can leak a half-made object;
//! [`Reservation::abort`] also undoes an object already built for it.
//!
//! Lock order: `Context::objects` is taken alone and briefly: never while
//! holding an object's own locks, and object destructors run after it is
//! released.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::accounting::AccountMode;
use crate::ioas::Ioas;
use crate::uapi::level::UapiLevel;
use crate::user::{SelfMemory, UserMemory};
use crate::{bail, err, Result};

/// An object ID as the uAPI sees it.
pub type ObjId = u32;

/// An object kind a context can hold (the kernel's `struct iommufd_object`
/// and its `iommufd_object_ops`).
///
/// A kind registers by implementing this trait in its own module; the
/// context knows kinds only through it. Lookups are typed
/// ([`Context::get`]): an ID that names nothing, or an object of another
/// kind, is `ENOENT`, as the kernel's `iommufd_get_object` with a type.
/// Every hook has a default, so the smallest kind is two constants:
///
/// ```
/// use std::sync::Arc;
/// use uiommufd::context::{Context, Object};
///
/// #[derive(Debug)]
/// struct Probe;
/// impl Object for Probe {
///     const KIND: &'static str = "probe";
///     const OBJ_TYPE: Option<&'static str> = None;
/// }
///
/// let ctx = Context::new();
/// let r = ctx.reserve().unwrap();
/// let id = r.id();
/// r.finalize(Arc::new(Probe));
/// let held = ctx.get::<Probe>(id).unwrap();
/// // another kind under that ID: ENOENT; destroy while held: EBUSY
/// assert_eq!(ctx.get::<uiommufd::ioas::Ioas>(id).unwrap_err().errno().0, libc::ENOENT);
/// assert_eq!(ctx.destroy(id).unwrap_err().errno().0, libc::EBUSY);
/// drop(held);
/// ctx.destroy(id).unwrap();
/// ```
pub trait Object: Any + Send + Sync + Debug {
    /// The kind's name, for messages ("IOAS", "paging HWPT").
    const KIND: &'static str;
    /// The kernel's `enum iommufd_object_type` enumerator of this kind
    /// (`"IOMMUFD_OBJ_IOAS"`); `None` for a kind the kernel has no object
    /// type for.
    const OBJ_TYPE: Option<&'static str>;

    /// Users of the object that hold no `Arc` to it (a mapping of a region
    /// it offers through `mmap`): `IOMMU_DESTROY` is `EBUSY` while any
    /// reference beside the table's own, or any of these, remains.
    fn extra_users(&self) -> usize {
        0
    }

    /// What destroying the object does beyond dropping it (the kernel's
    /// `destroy` op): an object that owns driver-side objects (a selftest
    /// device its bound device, a HW queue its internal access) tears them
    /// down. Runs with no table lock held, after the ID was released.
    fn on_destroy(self: Arc<Self>, ctx: &Context) {
        let _ = ctx;
    }

    /// Undo an object that was built but never published (the kernel's
    /// `abort` op, `iommufd_object_abort_and_destroy`): see
    /// [`Reservation::abort`]. Defaults to [`Object::on_destroy`].
    fn on_abort(self: Arc<Self>, ctx: &Context) {
        self.on_destroy(ctx)
    }

    /// Check this object's invariants as object `id` of `ctx` (see
    /// [`Context::check_invariants`]); `Err` says what is broken.
    fn check_object(&self, ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        let _ = (ctx, id);
        Ok(())
    }
}

/// The object-safe face of [`Object`], which the table stores.
trait DynObject: Any + Send + Sync + Debug {
    fn dyn_kind(&self) -> &'static str;
    fn dyn_obj_type(&self) -> Option<&'static str>;
    fn dyn_extra_users(&self) -> usize;
    fn dyn_destroy(self: Arc<Self>, ctx: &Context);
    fn dyn_check(&self, ctx: &Context, id: ObjId) -> std::result::Result<(), String>;
}

impl<T: Object> DynObject for T {
    fn dyn_kind(&self) -> &'static str {
        T::KIND
    }
    fn dyn_obj_type(&self) -> Option<&'static str> {
        T::OBJ_TYPE
    }
    fn dyn_extra_users(&self) -> usize {
        T::extra_users(self)
    }
    fn dyn_destroy(self: Arc<Self>, ctx: &Context) {
        T::on_destroy(self, ctx)
    }
    fn dyn_check(&self, ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
        T::check_object(self, ctx, id)
    }
}

/// A live object of any kind (what [`Context::get_any`] and
/// [`Context::objects`] return): a reference that counts as a user until
/// dropped.
#[derive(Debug, Clone)]
pub struct AnyObject(Arc<dyn DynObject>);

impl AnyObject {
    /// The object kind, for messages.
    pub fn kind(&self) -> &'static str {
        self.0.dyn_kind()
    }

    /// The kernel's object type enumerator of its kind (see [`Object::OBJ_TYPE`]).
    pub fn obj_type(&self) -> Option<&'static str> {
        self.0.dyn_obj_type()
    }

    /// Whether the object is a `T`.
    pub fn is<T: Object>(&self) -> bool {
        let any: &dyn Any = &*self.0;
        any.is::<T>()
    }

    /// The object as a `T`, if it is one.
    pub fn downcast<T: Object>(&self) -> Option<Arc<T>> {
        // (one type check: a clone of the wrong kind is only the error path)
        let any: Arc<dyn Any + Send + Sync> = self.0.clone();
        any.downcast::<T>().ok()
    }

    /// The object as a `T`, or `ENOENT` naming both kinds (`id`: its ID,
    /// for the message).
    pub fn expect<T: Object>(&self, id: ObjId) -> Result<Arc<T>> {
        self.downcast::<T>().ok_or_else(|| {
            err!(
                ENOENT,
                "object {id} is a {}, not a {}",
                self.kind(),
                T::KIND
            )
        })
    }

    /// References held beside the table's own (the `AnyObject` in the table).
    fn other_users(&self) -> usize {
        Arc::strong_count(&self.0) - 1 + self.0.dyn_extra_users()
    }

    /// Run the kind's destroy hook (no table lock held).
    fn destroyed(self, ctx: &Context) {
        self.0.dyn_destroy(ctx)
    }
}

#[derive(Debug)]
enum Slot {
    /// ID taken by a creation still in progress; invisible to lookups.
    Reserved,
    Live(AnyObject),
    /// The ID of an object destroyed behind the user's back (a vDEVICE
    /// whose device was unbound): taken until the context closes, and
    /// invisible to lookups (`ENOENT`), as the kernel's tombstone.
    Tombstone,
}

#[derive(Debug, Default)]
struct Table {
    slots: HashMap<ObjId, Slot>,
    /// IDs below `next` that are free again.
    free: BTreeSet<ObjId>,
    next: ObjId,
    /// The IOAS a VFIO container on this context uses (`IOMMU_VFIO_IOAS`).
    compat_ioas: Option<ObjId>,
}

impl Table {
    fn alloc_id(&mut self) -> Result<ObjId> {
        let id = if let Some(id) = self.free.pop_first() {
            id
        } else {
            if self.next >= i32::MAX as u32 {
                bail!(ENOSPC, "object IDs exhausted");
            }
            self.next += 1;
            self.next
        };
        Ok(id)
    }

    /// Take the object out of `id`'s slot when it is live; the caller then
    /// releases the ID or leaves a tombstone in the slot. `None`, and
    /// nothing changes, when `id` is not live.
    fn take_live(&mut self, id: ObjId) -> Option<AnyObject> {
        match self.slots.remove(&id)? {
            Slot::Live(o) => Some(o),
            other => {
                self.slots.insert(id, other);
                None
            }
        }
    }

    fn release_id(&mut self, id: ObjId) {
        self.slots.remove(&id);
        if self.compat_ioas == Some(id) {
            self.compat_ioas = None;
        }
        if id == self.next {
            self.next -= 1;
            while self.next > 0 && self.free.remove(&self.next) {
                self.next -= 1;
            }
        } else {
            self.free.insert(id);
        }
    }
}

/// One iommufd context (one open of `/dev/iommu`).
#[derive(Debug)]
pub struct Context {
    objects: Mutex<Table>,
    account_mode: AtomicU8,
    /// Opened as `/dev/vfio/vfio` (see [`Context::new_vfio_container`]):
    /// the VFIO type1 dirty-tracking extension is served on it.
    vfio_container: AtomicBool,
    mem: Arc<dyn UserMemory>,
    /// The kernel release this context answers as (fixed at creation).
    uapi: UapiLevel,
    /// Regions objects offer through `mmap` of the fd, by offset, and the
    /// next free offset (the kernel's `mt_mmap`: the first page is never
    /// handed out).
    mmaps: Mutex<(
        u64,
        std::collections::BTreeMap<u64, Arc<crate::mmap::MmapRegion>>,
    )>,
}

/// An ID reserved for an object under construction; see the module docs.
#[must_use]
#[derive(Debug)]
pub struct Reservation<'a> {
    ctx: &'a Context,
    id: ObjId,
    done: bool,
}

impl Reservation<'_> {
    /// The reserved ID (what the reply carries).
    pub fn id(&self) -> ObjId {
        self.id
    }

    /// Publish `obj` under the reserved ID (`iommufd_object_finalize`).
    pub fn finalize<T: Object>(mut self, obj: Arc<T>) {
        self.done = true;
        self.ctx
            .objects
            .lock()
            .slots
            .insert(self.id, Slot::Live(AnyObject(obj)));
    }

    /// Undo `obj`, built for this ID but never published, and give the ID
    /// back (`iommufd_object_abort_and_destroy`): its kind's
    /// [`Object::on_abort`] runs, then the ID is freed. Dropping the
    /// reservation alone frees the ID (`iommufd_object_abort`), for
    /// objects whose drop undoes them.
    pub fn abort<T: Object>(self, obj: Arc<T>) {
        obj.on_abort(self.ctx);
        drop(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.ctx.objects.lock().release_id(self.id);
        }
    }
}

impl Context {
    /// A new, empty context over this process's memory.
    pub fn new() -> Arc<Context> {
        Self::with_memory(Arc::new(SelfMemory))
    }

    /// A new context whose user pointers refer to `mem`, at the uAPI level
    /// `UIOMMUFD_UAPI` names (default: the newest; see [`UapiLevel`]).
    pub fn with_memory(mem: Arc<dyn UserMemory>) -> Arc<Context> {
        crate::logging::init_from_env();
        Self::with_memory_at(mem, UapiLevel::from_env())
    }

    /// A new, empty context over this process's memory that answers as
    /// kernel release `level`, whatever the environment says.
    pub fn new_at(level: UapiLevel) -> Arc<Context> {
        Self::with_memory_at(Arc::new(SelfMemory), level)
    }

    /// A new context whose user pointers refer to `mem`, answering as
    /// kernel release `level`.
    pub fn with_memory_at(mem: Arc<dyn UserMemory>, level: UapiLevel) -> Arc<Context> {
        crate::logging::init_from_env();
        tracing::debug!(uapi = %level, "new context");
        Arc::new(Context {
            objects: Mutex::new(Table::default()),
            account_mode: AtomicU8::new(0),
            vfio_container: AtomicBool::new(false),
            mem,
            uapi: level,
            mmaps: Mutex::new((crate::user::page_size(), std::collections::BTreeMap::new())),
        })
    }

    /// Offer `region` through `mmap` of the fd: the offset to map it at
    /// (`iommufd_alloc_mmap`).
    pub fn mmap_register(&self, region: Arc<crate::mmap::MmapRegion>) -> u64 {
        let mut m = self.mmaps.lock();
        let off = m.0;
        m.0 = off + region.length();
        m.1.insert(off, region);
        off
    }

    /// Withdraw the region at `offset` (`iommufd_destroy_mmap`).
    pub fn mmap_unregister(&self, offset: u64) {
        self.mmaps.lock().1.remove(&offset);
    }

    /// `mmap` of the fd (`iommufd_fops_mmap`): the region to map (its
    /// memfd from 0; keep the `Arc` until the mapping is made) for
    /// `length` bytes at `offset` with `prot` and `flags`. `EINVAL`: a length not in
    /// whole pages, or a private mapping; `EPERM`: `PROT_EXEC`; `ENXIO`:
    /// no region starts at `offset`, or it has another length (only a
    /// region exactly may be mapped).
    pub fn mmap_target(
        &self,
        offset: u64,
        length: u64,
        prot: i32,
        flags: i32,
    ) -> Result<Arc<crate::mmap::MmapRegion>> {
        if length == 0 || !length.is_multiple_of(crate::user::page_size()) {
            bail!(
                EINVAL,
                "mmap of the iommufd: length {length:#x} is not whole pages"
            );
        }
        let ty = flags & 0xf; // MAP_TYPE
        if ty != libc::MAP_SHARED && ty != libc::MAP_SHARED_VALIDATE {
            bail!(EINVAL, "mmap of the iommufd: only MAP_SHARED mappings");
        }
        if prot & libc::PROT_EXEC != 0 {
            bail!(EPERM, "mmap of the iommufd: PROT_EXEC is refused");
        }
        let m = self.mmaps.lock();
        let Some(r) = m.1.get(&offset) else {
            bail!(
                ENXIO,
                "mmap of the iommufd: no region starts at offset {offset:#x}"
            );
        };
        if r.length() != length {
            bail!(
                ENXIO,
                "mmap of the iommufd: the region at {offset:#x} is {:#x} bytes, not {length:#x}",
                r.length()
            );
        }
        Ok(r.clone())
    }

    /// The kernel release whose uAPI this context speaks.
    pub fn uapi_level(&self) -> UapiLevel {
        self.uapi
    }

    /// The memory user pointers refer to.
    pub fn memory(&self) -> &Arc<dyn UserMemory> {
        &self.mem
    }

    /// Take an ID for an object under construction (`ENOMEM` from the
    /// `"object.alloc"` injection point: the kernel's object allocation).
    pub fn reserve(&self) -> Result<Reservation<'_>> {
        crate::inject::point("object.alloc", libc::ENOMEM)?;
        let mut t = self.objects.lock();
        let id = t.alloc_id()?;
        t.slots.insert(id, Slot::Reserved);
        Ok(Reservation {
            ctx: self,
            id,
            done: false,
        })
    }

    /// Look up the live `T` with ID `id` (`ENOENT` when `id` names nothing
    /// or an object of another kind, and from the `"object.get"` injection
    /// point: the kernel's `iommufd_get_object` with the kind's type).
    pub fn get<T: Object>(&self, id: ObjId) -> Result<Arc<T>> {
        crate::inject::point("object.get", libc::ENOENT)?;
        self.lookup::<T>(id)
    }

    /// Look up a live object of any kind (`iommufd_get_object` with
    /// `IOMMUFD_OBJ_ANY`; `ENOENT` also from the `"object.get"` injection
    /// point).
    pub fn get_any(&self, id: ObjId) -> Result<AnyObject> {
        crate::inject::point("object.get", libc::ENOENT)?;
        self.lookup_any(id)
    }

    /// [`Context::get`] without its injection point (for checks, and the
    /// lookups the kernel makes without `iommufd_get_object`).
    pub(crate) fn lookup<T: Object>(&self, id: ObjId) -> Result<Arc<T>> {
        let kind = match self.objects.lock().slots.get(&id) {
            Some(Slot::Live(o)) => match o.downcast::<T>() {
                Some(obj) => return Ok(obj),
                None => o.kind(),
            },
            _ => bail!(ENOENT, "no object with ID {id}"),
        };
        Err(err!(ENOENT, "object {id} is a {kind}, not a {}", T::KIND))
    }

    /// [`Context::get_any`] without its injection point.
    pub(crate) fn lookup_any(&self, id: ObjId) -> Result<AnyObject> {
        match self.objects.lock().slots.get(&id) {
            Some(Slot::Live(o)) => Ok(o.clone()),
            _ => Err(err!(ENOENT, "no object with ID {id}")),
        }
    }

    /// Look up an IOAS (`ENOENT` when `id` names nothing or something else).
    pub fn ioas(&self, id: ObjId) -> Result<Arc<Ioas>> {
        self.get::<Ioas>(id)
    }

    /// `IOMMU_IOAS_ALLOC` for Rust callers: a new empty IOAS; returns its ID.
    pub fn ioas_alloc(&self) -> Result<ObjId> {
        let r = self.reserve()?;
        let id = r.id();
        r.finalize(Ioas::new_shared(self.mem.clone(), self.account_mode()));
        Ok(id)
    }

    /// `IOMMU_DESTROY`: remove `id` if nothing else uses it.
    pub fn destroy(&self, id: ObjId) -> Result<()> {
        let obj = {
            let mut t = self.objects.lock();
            match t.slots.get(&id) {
                Some(Slot::Live(o)) => {
                    let users = o.other_users();
                    if users > 0 {
                        bail!(
                            EBUSY,
                            "{} {id} is still used ({users} other reference(s))",
                            o.kind()
                        );
                    }
                }
                _ => bail!(ENOENT, "no object with ID {id}"),
            }
            let Some(Slot::Live(o)) = t.slots.remove(&id) else {
                unreachable!()
            };
            t.release_id(id);
            o
        };
        obj.destroyed(self); // destructors run outside the table lock
        Ok(())
    }

    /// Remove `id` whatever holds it: for drivers tearing down the objects
    /// they own (a device at unbind, an access at destroy). Never fails.
    pub fn remove_internal(&self, id: ObjId) {
        let obj = {
            let mut t = self.objects.lock();
            t.take_live(id).inspect(|_| t.release_id(id))
        };
        if let Some(o) = obj {
            o.destroyed(self);
        }
    }

    /// Destroy the live object `id` whatever holds it, and keep its ID taken
    /// (lookups and `IOMMU_DESTROY` of it are `ENOENT`) until the context
    /// closes: a vDEVICE whose device is unbound (the kernel's tombstone).
    pub fn tombstone(&self, id: ObjId) {
        let obj = {
            let mut t = self.objects.lock();
            t.take_live(id).inspect(|_| {
                t.slots.insert(id, Slot::Tombstone);
            })
        };
        if let Some(o) = obj {
            tracing::debug!(id, "{} destroyed; its ID stays taken", o.kind());
            o.destroyed(self);
        }
    }

    /// The compat IOAS (`IOMMU_VFIO_IOAS_GET`): `ENODEV` when none is set.
    pub fn compat_ioas(&self) -> Result<ObjId> {
        match self.objects.lock().compat_ioas {
            Some(id) => Ok(id),
            None => Err(err!(ENODEV, "no compat IOAS is set on this context")),
        }
    }

    /// Set or clear the compat IOAS (the caller checked that `id` is an IOAS).
    pub fn set_compat_ioas(&self, id: Option<ObjId>) {
        self.objects.lock().compat_ioas = id;
    }

    /// Whether this context is a VFIO container (`/dev/vfio/vfio`).
    pub fn is_vfio_container(&self) -> bool {
        self.vfio_container.load(Ordering::Acquire)
    }

    /// Mark the context as a VFIO container (done once, at open).
    pub(crate) fn set_vfio_container(&self) {
        self.vfio_container.store(true, Ordering::Release);
    }

    /// Number of live objects.
    pub fn object_count(&self) -> usize {
        self.objects
            .lock()
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Live(_)))
            .count()
    }

    /// All live objects with their IDs, in ID order.
    pub fn objects(&self) -> Vec<(ObjId, AnyObject)> {
        let t = self.objects.lock();
        let mut v: Vec<_> = t
            .slots
            .iter()
            .filter_map(|(&id, s)| match s {
                Slot::Live(o) => Some((id, o.clone())),
                Slot::Reserved | Slot::Tombstone => None,
            })
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Whether the table holds no object at all (live or being made).
    pub fn is_empty(&self) -> bool {
        self.objects.lock().slots.is_empty()
    }

    /// `IOMMU_OPTION_RLIMIT_MODE`: the accounting mode new pages objects use.
    pub fn account_mode(&self) -> AccountMode {
        // CAP_IPC_LOCK means no accounting in either mode (the kernel only
        // moves pages from user to mm accounting, never from none)
        match (
            crate::client::with_caller(|c| c.default_mode()),
            self.account_mode.load(Ordering::Acquire),
        ) {
            (AccountMode::None, _) => AccountMode::None,
            (_, 1) => AccountMode::Mm,
            (m, _) => m,
        }
    }

    /// Whether the context accounts to the mm (mode 1) rather than the user (0).
    pub fn rlimit_mode_mm(&self) -> bool {
        self.account_mode.load(Ordering::Acquire) == 1
    }

    /// Set the RLIMIT mode (0: user, 1: mm); `EBUSY` once the context holds
    /// any object, `EINVAL` for another value.
    pub fn set_rlimit_mode(&self, mode: u64) -> Result<()> {
        let t = self.objects.lock();
        if !t.slots.is_empty() {
            bail!(
                EBUSY,
                "the RLIMIT mode can only change while the context holds no object"
            );
        }
        if mode > 1 {
            bail!(EINVAL, "RLIMIT mode {mode} is neither 0 (user) nor 1 (mm)");
        }
        self.account_mode.store(mode as u8, Ordering::Release);
        Ok(())
    }

    /// Check the invariants of every object; `Err` names the first broken one.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        for (id, o) in self.objects() {
            o.0.dyn_check(self, id)?;
        }
        Ok(())
    }

    /// Destroy every object, leaves first (what closing the fd does).
    pub fn destroy_all(&self) {
        loop {
            let victims: Vec<AnyObject> = {
                let mut t = self.objects.lock();
                let ids: Vec<ObjId> = t
                    .slots
                    .iter()
                    .filter_map(|(&id, s)| match s {
                        Slot::Live(o) if o.other_users() == 0 => Some(id),
                        _ => None,
                    })
                    .collect();
                ids.into_iter()
                    .map(|id| {
                        let Some(Slot::Live(o)) = t.slots.remove(&id) else {
                            unreachable!()
                        };
                        t.release_id(id);
                        o
                    })
                    .collect()
            };
            if victims.is_empty() {
                break;
            }
            for v in victims {
                v.destroyed(self);
            }
        }
        let left = self.object_count();
        if left != 0 {
            tracing::error!("context teardown left {left} object(s) that are still referenced");
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        self.destroy_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A kind defined here alone: what any new object kind needs.
    #[derive(Debug, Default)]
    struct Probe {
        destroyed: AtomicUsize,
        aborted: AtomicUsize,
        /// Users that hold no `Arc` (as a vIOMMU's mapped region).
        mapped: AtomicUsize,
    }

    impl Object for Probe {
        const KIND: &'static str = "probe";
        const OBJ_TYPE: Option<&'static str> = None;

        fn extra_users(&self) -> usize {
            self.mapped.load(Ordering::Relaxed)
        }
        fn on_destroy(self: Arc<Self>, _ctx: &Context) {
            self.destroyed.fetch_add(1, Ordering::Relaxed);
        }
        fn on_abort(self: Arc<Self>, _ctx: &Context) {
            self.aborted.fetch_add(1, Ordering::Relaxed);
        }
        fn check_object(&self, _ctx: &Context, id: ObjId) -> std::result::Result<(), String> {
            match self.mapped.load(Ordering::Relaxed) {
                0 | 1 => Ok(()),
                n => Err(format!("probe {id} is mapped {n} times")),
            }
        }
    }

    fn publish(ctx: &Context) -> (ObjId, Arc<Probe>) {
        let r = ctx.reserve().unwrap();
        let id = r.id();
        let p = Arc::new(Probe::default());
        r.finalize(p.clone());
        (id, p)
    }

    #[test]
    fn typed_lookups_answer_enoent_for_another_kind_or_nothing() {
        let ctx = Context::new();
        let (id, p) = publish(&ctx);
        let ioas = ctx.ioas_alloc().unwrap();
        assert!(Arc::ptr_eq(&ctx.get::<Probe>(id).unwrap(), &p));
        assert_eq!(ctx.get::<Ioas>(id).unwrap_err().errno().0, libc::ENOENT);
        assert_eq!(ctx.get::<Probe>(ioas).unwrap_err().errno().0, libc::ENOENT);
        assert_eq!(ctx.get::<Probe>(99).unwrap_err().errno().0, libc::ENOENT);
        let any = ctx.get_any(id).unwrap();
        assert_eq!((any.kind(), any.obj_type()), ("probe", None));
        assert!(any.is::<Probe>() && !any.is::<Ioas>());
        assert!(any.downcast::<Ioas>().is_none());
        assert_eq!(any.expect::<Ioas>(id).unwrap_err().errno().0, libc::ENOENT);
        let any = ctx.get_any(ioas).unwrap();
        assert_eq!(any.obj_type(), Some("IOMMUFD_OBJ_IOAS"));
    }

    #[test]
    fn destroy_is_ebusy_while_used_and_runs_the_kind_hook_once() {
        let ctx = Context::new();
        let (id, p) = publish(&ctx);
        // the test's own Arc is a user
        assert_eq!(ctx.destroy(id).unwrap_err().errno().0, libc::EBUSY);
        let weak = Arc::downgrade(&p);
        drop(p);
        let held = ctx.get::<Probe>(id).unwrap();
        assert_eq!(ctx.destroy(id).unwrap_err().errno().0, libc::EBUSY);
        // a user without an Arc
        held.mapped.store(1, Ordering::Relaxed);
        drop(held);
        assert_eq!(ctx.destroy(id).unwrap_err().errno().0, libc::EBUSY);
        ctx.check_invariants().unwrap();
        weak.upgrade().unwrap().mapped.store(2, Ordering::Relaxed);
        assert_eq!(
            ctx.check_invariants().unwrap_err(),
            format!("probe {id} is mapped 2 times")
        );
        weak.upgrade().unwrap().mapped.store(0, Ordering::Relaxed);
        ctx.destroy(id).unwrap();
        assert!(
            weak.upgrade().is_none(),
            "the table held the last reference"
        );
        assert_eq!(ctx.destroy(id).unwrap_err().errno().0, libc::ENOENT);
        assert!(ctx.is_empty());
    }

    #[test]
    fn destroy_hook_runs_with_the_id_released() {
        let ctx = Context::new();
        let (id, p) = publish(&ctx);
        let seen = p.clone();
        drop(p);
        // `seen` keeps it busy; release it through remove_internal instead
        ctx.remove_internal(id);
        assert_eq!(seen.destroyed.load(Ordering::Relaxed), 1);
        assert_eq!(ctx.get::<Probe>(id).unwrap_err().errno().0, libc::ENOENT);
        // the ID is free again: the lowest one is handed out
        assert_eq!(publish(&ctx).0, id);
    }

    #[test]
    fn a_failed_create_leaves_nothing() {
        let ctx = Context::new();
        let r = ctx.reserve().unwrap();
        let id = r.id();
        // reserved: invisible to lookups and destroy
        assert_eq!(ctx.get_any(id).unwrap_err().errno().0, libc::ENOENT);
        assert_eq!(ctx.destroy(id).unwrap_err().errno().0, libc::ENOENT);
        assert_eq!(ctx.object_count(), 0);
        assert!(!ctx.is_empty());
        // abort: the kind's abort hook runs, the ID is free again
        let p = Arc::new(Probe::default());
        r.abort(p.clone());
        assert_eq!(p.aborted.load(Ordering::Relaxed), 1);
        assert_eq!(p.destroyed.load(Ordering::Relaxed), 0);
        assert!(ctx.is_empty());
        // dropping the reservation alone frees the ID too
        drop(ctx.reserve().unwrap());
        assert!(ctx.is_empty());
        assert_eq!(publish(&ctx).0, id);
    }

    #[test]
    fn tombstones_and_teardown_run_the_hook() {
        let ctx = Context::new();
        let (a, pa) = publish(&ctx);
        let (b, pb) = publish(&ctx);
        ctx.tombstone(a);
        assert_eq!(pa.destroyed.load(Ordering::Relaxed), 1);
        assert_eq!(ctx.get_any(a).unwrap_err().errno().0, libc::ENOENT);
        assert_eq!(publish(&ctx).0, b + 1, "a tombstone's ID stays taken");
        let watch = Arc::downgrade(&pb);
        drop(pb);
        ctx.destroy_all();
        assert!(watch.upgrade().is_none());
        assert_eq!(ctx.object_count(), 0);
    }
}
