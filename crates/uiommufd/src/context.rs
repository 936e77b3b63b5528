//! The iommufd context: what one open of `/dev/iommu` owns (kernel main.c).
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
//! instead frees the ID, so no error path can leak a half-made object.
//!
//! Lock order: `Context::objects` is taken alone and briefly: never while
//! holding an object's own locks, and object destructors run after it is
//! released.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::access::Access;
use crate::accounting::AccountMode;
use crate::device::Device;
use crate::fault::Fault;
use crate::hwpt::nested::HwptNested;
use crate::hwpt::HwptPaging;
use crate::ioas::Ioas;
use crate::mock::MockStdev;
use crate::uapi::level::UapiLevel;
use crate::user::{SelfMemory, UserMemory};
use crate::veventq::Veventq;
use crate::viommu::{HwQueue, Vdevice, Viommu};
use crate::{bail, err, Result};

/// An object ID as the uAPI sees it.
pub type ObjId = u32;

/// Any object a context can hold.
#[derive(Debug, Clone)]
pub enum Object {
    /// An IO address space.
    Ioas(Arc<Ioas>),
    /// A bound device.
    Device(Arc<Device>),
    /// A paging HW page table.
    HwptPaging(Arc<HwptPaging>),
    /// A nested (user-managed) HW page table on a paging parent.
    HwptNested(Arc<HwptNested>),
    /// An I/O page fault queue.
    Fault(Arc<Fault>),
    /// An access (kernel-internal API toward emulated devices).
    Access(Arc<Access>),
    /// The selftest's mock device object (`IOMMUFD_OBJ_SELFTEST`).
    Selftest(Arc<MockStdev>),
    /// A virtual IOMMU (Linux 6.13).
    Viommu(Arc<Viommu>),
    /// A virtual device on a vIOMMU (Linux 6.13).
    Vdevice(Arc<Vdevice>),
    /// A vEVENT queue of a vIOMMU (Linux 6.15).
    Veventq(Arc<Veventq>),
    /// A HW queue of a vIOMMU (Linux 6.17).
    HwQueue(Arc<HwQueue>),
}

impl Object {
    /// The object kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Ioas(_) => "IOAS",
            Object::Device(_) => "device",
            Object::HwptPaging(_) => "paging HWPT",
            Object::HwptNested(_) => "nested HWPT",
            Object::Fault(_) => "fault queue",
            Object::Access(_) => "access",
            Object::Selftest(_) => "selftest device",
            Object::Viommu(_) => "vIOMMU",
            Object::Vdevice(_) => "vDEVICE",
            Object::Veventq(_) => "vEVENTQ",
            Object::HwQueue(_) => "HW queue",
        }
    }

    /// References held beside the table's own.
    fn other_users(&self) -> usize {
        match self {
            Object::Ioas(a) => Arc::strong_count(a) - 1,
            Object::Device(a) => Arc::strong_count(a) - 1,
            Object::HwptPaging(a) => Arc::strong_count(a) - 1,
            Object::HwptNested(a) => Arc::strong_count(a) - 1,
            Object::Fault(a) => Arc::strong_count(a) - 1,
            Object::Access(a) => Arc::strong_count(a) - 1,
            Object::Selftest(a) => Arc::strong_count(a) - 1,
            // a mapping of its mmap region is a user too (the kernel's
            // VMA open/close)
            Object::Viommu(a) => Arc::strong_count(a) - 1 + usize::from(a.mmap_mapped()),
            Object::Vdevice(a) => Arc::strong_count(a) - 1,
            Object::Veventq(a) => Arc::strong_count(a) - 1,
            Object::HwQueue(a) => Arc::strong_count(a) - 1,
        }
    }

    /// What destroying the object does beyond dropping it: objects that own
    /// driver-side objects (a selftest device owns its bound device, a HW
    /// queue its internal access) tear those down. Runs with no table lock
    /// held.
    fn destroyed(self, ctx: &Context) {
        match self {
            Object::Selftest(s) => s.destroy(ctx),
            Object::HwQueue(q) => q.destroyed(ctx),
            other => drop(other),
        }
    }
}

#[derive(Debug)]
enum Slot {
    /// ID taken by a creation still in progress; invisible to lookups.
    Reserved,
    Live(Object),
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

    /// Publish `obj` under the reserved ID.
    pub fn finalize(mut self, obj: Object) {
        self.done = true;
        self.ctx
            .objects
            .lock()
            .slots
            .insert(self.id, Slot::Live(obj));
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

    /// Look up a live object (`ENOENT` also from the `"object.get"`
    /// injection point, as the kernel's `iommufd_get_object`).
    pub fn get(&self, id: ObjId) -> Result<Object> {
        crate::inject::point("object.get", libc::ENOENT)?;
        self.lookup(id)
    }

    /// [`Context::get`] without its injection point (for checks, and the
    /// lookups the kernel makes without `iommufd_get_object`).
    pub(crate) fn lookup(&self, id: ObjId) -> Result<Object> {
        match self.objects.lock().slots.get(&id) {
            Some(Slot::Live(o)) => Ok(o.clone()),
            _ => Err(err!(ENOENT, "no object with ID {id}")),
        }
    }

    /// Look up an IOAS (`ENOENT` when `id` names nothing or something else).
    pub fn ioas(&self, id: ObjId) -> Result<Arc<Ioas>> {
        match self.get(id)? {
            Object::Ioas(i) => Ok(i),
            #[allow(unreachable_patterns)]
            o => Err(err!(ENOENT, "object {id} is a {}, not an IOAS", o.kind())),
        }
    }

    /// `IOMMU_IOAS_ALLOC` for Rust callers: a new empty IOAS; returns its ID.
    pub fn ioas_alloc(&self) -> Result<ObjId> {
        let r = self.reserve()?;
        let id = r.id();
        r.finalize(Object::Ioas(Ioas::new_shared(
            self.mem.clone(),
            self.account_mode(),
        )));
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
            match t.slots.remove(&id) {
                Some(Slot::Live(o)) => {
                    t.release_id(id);
                    Some(o)
                }
                Some(other) => {
                    t.slots.insert(id, other);
                    None
                }
                None => None,
            }
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
            match t.slots.remove(&id) {
                Some(Slot::Live(o)) => {
                    t.slots.insert(id, Slot::Tombstone);
                    Some(o)
                }
                Some(other) => {
                    t.slots.insert(id, other);
                    None
                }
                None => None,
            }
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
    pub fn objects(&self) -> Vec<(ObjId, Object)> {
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
            crate::accounting::default_mode(),
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
            match o {
                Object::Ioas(i) => i
                    .check_invariants()
                    .map_err(|e| format!("IOAS {id}: {e}"))?,
                Object::HwptPaging(h) => {
                    if h.id() != Some(id) {
                        return Err(format!("HWPT {id} believes its ID is {:?}", h.id()));
                    }
                }
                Object::HwptNested(h) => {
                    if h.id() != Some(id) {
                        return Err(format!("nested HWPT {id} believes its ID is {:?}", h.id()));
                    }
                    if !h.parent().nest_parent() || h.parent().auto_domain() {
                        return Err(format!(
                            "nested HWPT {id} has a parent that is not a manual nest parent"
                        ));
                    }
                }
                Object::Device(d) => {
                    if let Some(h) = d.attached_hwpt() {
                        if !matches!(
                            self.lookup(h),
                            Ok(Object::HwptPaging(_) | Object::HwptNested(_))
                        ) {
                            return Err(format!(
                                "device {id} is attached to {h}, which is not a live HWPT"
                            ));
                        }
                    }
                }
                Object::Access(a) => {
                    // an access only ever reaches an IOAS of its own context
                    if let Some((ioas, ioas_id)) = a.attached_ioas() {
                        match self.lookup(ioas_id) {
                            Ok(Object::Ioas(i)) if Arc::ptr_eq(&i, &ioas) => {}
                            _ => {
                                return Err(format!(
                                    "access {id} is attached to IOAS {ioas_id}, which is not that IOAS of this context"
                                ))
                            }
                        }
                    }
                }
                Object::Viommu(v) => {
                    if !v.hwpt().nest_parent() {
                        return Err(format!(
                            "vIOMMU {id} is on a HWPT that is not a nest parent"
                        ));
                    }
                }
                Object::Vdevice(v) => {
                    if let Some(d) = v.device() {
                        if d.vdevice_id() != Some(id) {
                            return Err(format!(
                                "vDEVICE {id}'s device {} does not name it as its vDEVICE",
                                d.id()
                            ));
                        }
                    }
                }
                Object::Selftest(_)
                | Object::Fault(_)
                | Object::Veventq(_)
                | Object::HwQueue(_) => {}
            }
        }
        Ok(())
    }

    /// Destroy every object, leaves first (what closing the fd does).
    pub fn destroy_all(&self) {
        loop {
            let victims: Vec<Object> = {
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
