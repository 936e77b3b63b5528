//! The fd table: which process fds are emulated, and by what.
//!
//! # Design
//!
//! The authoritative map is a `RwLock<BTreeMap<fd, Entry>>` (const-initialised,
//! so usable before any Rust runtime setup). In front of it sits a lock-free
//! *hint*: one bit per fd for fds below [`uiommufd::plumbing::files::FdHints::FAST_FDS`], and a counter of
//! registered fds at or above it. Every hook first reads the hint with one
//! atomic load; when the bit is clear (the case for every fd the program did
//! not get from us) it forwards to libc without touching the lock. Bits are
//! only set and cleared while holding the write lock, together with the
//! map update, so a set bit always means "look in the map" and a clear bit
//! means "not ours" for any fd whose number the caller legitimately holds.
//!
//! [`lookup`] clones the [`Entry`] (which holds `Arc`s) under the read lock
//! and releases the lock before anything else happens, so a concurrent
//! `close` that unregisters the fd only drops the table's reference: the
//! in-flight ioctl keeps the context alive until it returns. Removed entries
//! are returned to the caller and dropped *after* the lock is released, so
//! context teardown (which may log) never runs under the table lock.
//!
//! Each registration carries a serial number so that `close` can remove
//! exactly the entry it saw, and not one that a racing `open` installed
//! under the same fd number after the real `close` released it.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use uiommufd::Context;

/// Which fds may be ours (the engine's lock-free hint; see its docs).
static HINTS: uiommufd::plumbing::files::FdHints = uiommufd::plumbing::files::FdHints::new();
static SERIAL: AtomicU64 = AtomicU64::new(1);
static MAP: RwLock<BTreeMap<c_int, Entry>> = RwLock::new(BTreeMap::new());

/// What an emulated fd refers to. New device kinds (VFIO containers, fail-nth
/// files, ...) become new variants.
#[derive(Clone, Debug)]
pub(crate) enum FdObject {
    /// An open of `/dev/iommu`.
    Iommu(Arc<Context>),
    /// A `/dev/iommu` fd whose context lives in another process (see
    /// `remote`).
    Remote(Arc<crate::remote::RemoteCtx>),
}

/// One registered fd.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The emulated object.
    pub obj: FdObject,
    /// `st_dev` of the backing memfd, to detect an fd closed behind our back.
    pub dev: u64,
    /// `st_ino` of the backing memfd.
    pub ino: u64,
    /// Unique per registration.
    pub serial: u64,
}

impl Entry {
    /// A new entry for a file whose identity is `(dev, ino)`.
    pub fn new(obj: FdObject, dev: u64, ino: u64) -> Entry {
        Entry {
            obj,
            dev,
            ino,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The same object under a new serial (for `dup`).
    pub fn duplicate(&self) -> Entry {
        Entry::new(self.obj.clone(), self.dev, self.ino)
    }
}

/// Whether every emulated `ioctl` first checks with `fstat` that its fd is
/// still the memfd registered (`UIOMMUFD_CHECK_FDS=1`). Off by default: the
/// hooks of every call that closes or creates fds keep the table right;
/// only an fd closed by a raw system call and reused by one created behind
/// the shim's back too (a raw syscall, or a libc-internal open) escapes
/// them.
static PARANOID: AtomicBool = AtomicBool::new(false);

/// Read `UIOMMUFD_CHECK_FDS` (library constructor).
pub(crate) fn init_paranoia() {
    let on = std::env::var_os("UIOMMUFD_CHECK_FDS").is_some_and(|v| v != "0" && !v.is_empty());
    PARANOID.store(on, Ordering::Relaxed);
}

/// Whether the per-ioctl stale-fd check is on.
#[inline]
pub(crate) fn paranoid() -> bool {
    PARANOID.load(Ordering::Relaxed)
}

/// Whether `fd` still is the file `entry` registered (`fstat` identity).
pub(crate) fn still_ours(fd: c_int, entry: &Entry) -> bool {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable; a bad fd just fails.
    let ok =
        unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) as c_int } == 0;
    ok && st.st_dev == entry.dev && st.st_ino == entry.ino
}

fn read() -> RwLockReadGuard<'static, BTreeMap<c_int, Entry>> {
    // A poisoned lock only means a panic happened elsewhere while it was held;
    // the map itself is always in a consistent state between operations.
    MAP.read().unwrap_or_else(|e| e.into_inner())
}

fn write() -> RwLockWriteGuard<'static, BTreeMap<c_int, Entry>> {
    MAP.write().unwrap_or_else(|e| e.into_inner())
}

fn set_hint(fd: c_int, on: bool, was_present: bool) {
    HINTS.set(fd, on, was_present);
}

/// Lock-free: whether `fd` may be registered. `false` is definitive.
#[inline]
pub(crate) fn maybe_registered(fd: c_int) -> bool {
    HINTS.maybe(fd)
}

/// Lock-free: whether any fd at all is registered. `false` is definitive.
#[inline]
pub(crate) fn any_registered() -> bool {
    HINTS.any()
}

/// A strong copy of the entry for `fd`, if registered.
pub(crate) fn lookup(fd: c_int) -> Option<Entry> {
    if !maybe_registered(fd) {
        return None;
    }
    read().get(&fd).cloned()
}

/// A strong copy of every entry, by fd.
pub(crate) fn all() -> Vec<(c_int, Entry)> {
    read().iter().map(|(&fd, e)| (fd, e.clone())).collect()
}

/// Register `fd`, replacing (and returning, for the caller to drop outside
/// the lock) any stale entry under the same number.
#[must_use]
pub(crate) fn register(fd: c_int, entry: Entry) -> Option<Entry> {
    debug_assert!(fd >= 0);
    let mut map = write();
    let old = map.insert(fd, entry);
    set_hint(fd, true, old.is_some());
    old
}

/// Unregister `fd`, returning its entry for the caller to drop.
#[must_use]
pub(crate) fn unregister(fd: c_int) -> Option<Entry> {
    if !maybe_registered(fd) {
        return None;
    }
    let mut map = write();
    let old = map.remove(&fd);
    if old.is_some() {
        set_hint(fd, false, true);
    }
    old
}

/// Unregister `fd` only if it still holds the registration `serial`.
#[must_use]
pub(crate) fn unregister_if(fd: c_int, serial: u64) -> Option<Entry> {
    if !maybe_registered(fd) {
        return None;
    }
    let mut map = write();
    if map.get(&fd).map(|e| e.serial) != Some(serial) {
        return None;
    }
    let old = map.remove(&fd);
    set_hint(fd, false, true);
    old
}

/// Unregister every fd in `first..=last`, returning the entries.
#[must_use]
pub(crate) fn unregister_range(first: c_int, last: c_int) -> Vec<Entry> {
    if first > last || !any_registered() {
        return Vec::new();
    }
    HINTS.take_range(&mut write(), first, last)
}
