//! Engine files: real process fds that stand for engine objects.
//!
//! Some iommufd commands hand the program a *new file descriptor*: the
//! selftest's `IOMMU_TEST_OP_CREATE_ACCESS` returns an access fd (later test
//! commands name it by number; closing it destroys the access) and
//! `IOMMU_FAULT_QUEUE_ALLOC` returns a fault fd (read for fault records,
//! written with responses, polled). In the kernel these are anon-inode files
//! whose `private_data` is the object. Here they are:
//!
//! * a **real fd** — an `eventfd` — so that the number is valid in the
//!   process and the kernel does the fd-table work (`close`, `dup*`,
//!   `fcntl`, `O_NONBLOCK`, close-on-exec, `poll`/`select`/`epoll`);
//! * an entry in this **process-wide registry**, fd → [`EngineFile`].
//!
//! # The kernel's `struct file` with several fds
//!
//! The registry holds one record per *file* and one slot per *fd*. `dup`
//! (reported through [`on_dup`]) adds a slot to the same record; [`on_close`]
//! removes a slot. When the last slot of a record goes, the record is dropped:
//! [`EngineFile::release`] runs (the kernel's `->release`) and the registry's
//! `Arc` is dropped, which lets the owning engine object be torn down. Removed
//! records are always dropped *after* the registry lock is released, so
//! `release` and `Drop` may call back into this module.
//!
//! Without the `LD_PRELOAD` shim nobody tells the registry about `close` or
//! `dup`: Rust users call [`close`] (real close + unregister) and, if they
//! duplicate the fd, [`on_dup`] themselves.
//!
//! # Readiness: why `poll` needs no interception
//!
//! The eventfd's counter mirrors `POLLIN` of [`EngineFile::poll_events`]:
//! non-zero exactly when the engine file has data to read. [`sync`] (run by
//! [`notify`], [`notify_file`], and after every [`read`]/[`write()`] through
//! this module) recomputes `poll_events()` and adds 1 to or drains the
//! counter as needed; [`wake_file`] adds 1 even to a non-zero counter, for
//! each new arrival, so that an edge-triggered `epoll` sees every one (the
//! kernel's `wake_up` per new item). Since the kernel's own `poll`, `ppoll`, `select`,
//! `pselect` and `epoll` then see the eventfd as readable exactly when the
//! engine file is, the shim does not have to intercept any of them, and
//! mixed sets (engine fds with sockets, pipes, ...) work unchanged. An
//! eventfd is always writable, so `POLLOUT` is always reported (as for the
//! kernel's fault fd); `POLLERR`/`POLLHUP`/`POLLPRI` from `poll_events` are
//! not mirrored. The engine must call [`notify_file`] (or [`notify`]) whenever
//! data arrives by some other way than a read or write through this module.
//!
//! Reads and writes of the fd itself must go to the engine file ([`read`],
//! [`write()`], or without a bounce buffer [`read_user`], [`write_user`],
//! [`pread_user`], [`pwrite_user`]: the file copies to and from the
//! caller's memory itself, in bounded pieces); the shim routes
//! `read`/`write`/`readv`/`writev` and the `pread`/`pwrite` family there. A
//! program that reads the raw eventfd (raw syscall, static binary) would just
//! consume the readiness counter.
//!
//! # Stale entries
//!
//! Each slot records the `(st_dev, st_ino)` of the fd when it was registered.
//! [`get`] (and every lookup through this module) `fstat`s the fd and drops a
//! slot whose fd no longer matches: an fd closed behind the registry's back
//! (raw syscall, or a Rust user calling `libc::close` instead of [`close`])
//! whose number was reused by an ordinary file. **Limit:** every eventfd (and
//! epoll, timerfd, signalfd, ... fd) shares the one anon inode, so reuse of
//! the number by another anon-inode file is not detected.
//!
//! # No interposition loops
//!
//! Under the shim, `read`, `write`, `close`, `poll` and `fcntl` are hooked.
//! This module therefore makes those calls with raw `syscall(2)` so that the
//! engine never re-enters the shim's hooks on its own eventfds.
//!
//! # Concurrency
//!
//! The registry is a `RwLock`ed map behind a lock-free per-fd hint bitmap,
//! so [`is_engine_fd`] is one atomic load. Slot bits are set and cleared only
//! under the write lock together with the map. Lock order: a file's sync
//! mutex, then (inside `poll_events`) engine locks, released, then the
//! registry lock; so **do not call [`notify`]/[`notify_file`] while holding a
//! lock that [`EngineFile::poll_events`] takes**, and do not call into this
//! module from `poll_events`.
//!
//! After `fork` the child has a copy of the registry but *shares* the
//! eventfds with the parent (as it shares any open file).

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::user::UserMemory;
use crate::{Error, Result};

/// A file the engine hands to the program as an fd (the kernel's
/// `file_operations` of an anon-inode file whose `private_data` is an engine
/// object).
///
/// Implementations must not call into this module from [`poll_events`]
/// (see the module docs on lock order).
///
/// [`poll_events`]: EngineFile::poll_events
pub trait EngineFile: Send + Sync + fmt::Debug + Any {
    /// A short name for logs (`"access"`, `"fault"`), like the anon inode's
    /// name in the kernel.
    fn kind(&self) -> &'static str;

    /// `read(2)` of the fd. `nonblock` is the fd's `O_NONBLOCK` (from
    /// `F_GETFL`). Default: `EINVAL`, as for a file without `->read`.
    fn read(&self, buf: &mut [u8], nonblock: bool) -> Result<usize> {
        let _ = (buf, nonblock);
        Err(Error::new(
            libc::EINVAL,
            format!("{} files cannot be read", self.kind()),
        ))
    }

    /// `write(2)` of the fd. Default: `EINVAL`, as for a file without
    /// `->write`.
    fn write(&self, buf: &[u8]) -> Result<usize> {
        let _ = buf;
        Err(Error::new(
            libc::EINVAL,
            format!("{} files cannot be written", self.kind()),
        ))
    }

    /// `pread(2)` of the fd at `offset`. Default: `ESPIPE`, as for the
    /// kernel's anon-inode files (they are not opened with `FMODE_PREAD`).
    fn read_at(&self, buf: &mut [u8], offset: u64, nonblock: bool) -> Result<usize> {
        let _ = (buf, offset, nonblock);
        Err(Error::new(
            libc::ESPIPE,
            format!("{} files cannot be read at an offset", self.kind()),
        ))
    }

    /// `pwrite(2)` of the fd at `offset`. Default: `ESPIPE`, as
    /// [`EngineFile::read_at`].
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        let _ = (buf, offset);
        Err(Error::new(
            libc::ESPIPE,
            format!("{} files cannot be written at an offset", self.kind()),
        ))
    }

    /// Whether the file has a read operation (the kernel's
    /// `FMODE_CAN_READ`): when `false`, `read(2)` is `EINVAL` before the
    /// buffer is looked at. Default: `true`.
    fn can_read(&self) -> bool {
        true
    }

    /// Whether the file has a write operation (`FMODE_CAN_WRITE`), as
    /// [`EngineFile::can_read`]. Default: `true`.
    fn can_write(&self) -> bool {
        true
    }

    /// Whether `pread`/`pwrite` are allowed (`FMODE_PREAD`/`FMODE_PWRITE`):
    /// when `false` they are `ESPIPE` before anything else. Default:
    /// `false`, as for the kernel's anon-inode files.
    fn positional(&self) -> bool {
        false
    }

    /// `read(2)` straight into the reader's memory. Default: one bounded
    /// [`EngineFile::read`] of at most [`BOUNCE`] bytes through a stack
    /// buffer (a short read for a larger count), after checking without
    /// changing it that that much of `buf` is writable (so that nothing is
    /// consumed for a copy that would fail). Files whose reads must move
    /// more per call, or that can put data back, override this.
    fn read_user(&self, buf: UserBuf<'_>, nonblock: bool) -> Result<usize> {
        bounce_read(buf, |b| self.read(b, nonblock))
    }

    /// `write(2)` straight from the writer's memory. Default: one bounded
    /// [`EngineFile::write`] of at most [`BOUNCE`] bytes through a stack
    /// buffer (a short write for a larger count).
    fn write_user(&self, buf: UserBuf<'_>) -> Result<usize> {
        bounce_write(buf, |b| self.write(b))
    }

    /// `pread(2)` into the reader's memory, as [`EngineFile::read_user`]
    /// through [`EngineFile::read_at`]; only called when
    /// [`EngineFile::positional`].
    fn read_user_at(&self, buf: UserBuf<'_>, offset: u64, nonblock: bool) -> Result<usize> {
        bounce_read(buf, |b| self.read_at(b, offset, nonblock))
    }

    /// `pwrite(2)` from the writer's memory, as [`EngineFile::write_user`]
    /// through [`EngineFile::write_at`]; only called when
    /// [`EngineFile::positional`].
    fn write_user_at(&self, buf: UserBuf<'_>, offset: u64) -> Result<usize> {
        bounce_write(buf, |b| self.write_at(b, offset))
    }

    /// The `poll` events currently ready (`libc::POLLIN`, ...). Only
    /// `POLLIN` is mirrored to the fd (see the module docs). Default: none.
    fn poll_events(&self) -> i16 {
        0
    }

    /// Called once when the last fd referring to this file is closed (the
    /// kernel's `->release`), outside every registry lock, before the
    /// registry drops its `Arc`. Default: nothing.
    fn release(&self) {}

    /// `ioctl(2)` on the fd (the kernel's `->unlocked_ioctl`): `arg` is the
    /// caller's argument (a user address for most commands), `mem` the
    /// caller's memory, `fds` resolves fd numbers the argument names (an
    /// iommufd or container fd given to a VFIO bind or set-container).
    /// Commands that create an fd return it. Default: `ENOTTY`.
    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn UserMemory, fds: &dyn FdResolver) -> Result<i64> {
        let _ = (arg, mem, fds);
        Err(Error::new(
            libc::ENOTTY,
            format!("{} files have no ioctl {cmd:#x}", self.kind()),
        ))
    }

    /// `mmap(2)` of `len` bytes at `offset` of the fd (the kernel's
    /// `->mmap`): what to map in its place — a file the engine owns and
    /// the offset in it, mapped `MAP_SHARED` with the caller's protection.
    /// `write` is whether the caller asks for `PROT_WRITE` with
    /// `MAP_SHARED`. Default: `ENODEV`, as for a file without `->mmap`.
    fn mmap(&self, offset: u64, len: u64, write: bool) -> Result<MmapTarget> {
        let _ = (offset, len, write);
        Err(Error::new(
            libc::ENODEV,
            format!("{} files cannot be mapped", self.kind()),
        ))
    }

    /// What `fstat` reports for the fd in place of the backing eventfd's
    /// type and device number (the VFIO device cdevs are character
    /// devices). Default: `None`, the backing fd's own.
    fn stat_as(&self) -> Option<StatAs> {
        None
    }
}

/// Resolves an fd number the program passed inside an ioctl argument to
/// the engine object behind it (the kernel's `fdget` + `iommufd_ctx_from_file`).
/// The preload answers from its fd table; Rust users pass their own.
pub trait FdResolver {
    /// The iommufd context of `fd`: an open of `/dev/iommu` or of
    /// `/dev/vfio/vfio` (a container is an iommufd context in compat mode).
    fn context(&self, fd: i32) -> Option<Arc<crate::Context>>;
}

/// An [`FdResolver`] that knows no fds.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFds;

impl FdResolver for NoFds {
    fn context(&self, _fd: i32) -> Option<Arc<crate::Context>> {
        None
    }
}

/// What to map for an [`EngineFile::mmap`].
#[derive(Debug, Clone, Copy)]
pub struct MmapTarget {
    /// A file descriptor the engine owns and keeps open (e.g. a memfd);
    /// the caller maps it and does not close it.
    pub fd: i32,
    /// The offset in `fd`.
    pub offset: u64,
}

/// What [`EngineFile::stat_as`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatAs {
    /// `st_mode` (type and permission bits), e.g. `S_IFCHR | 0o600`.
    pub mode: u32,
    /// `st_rdev`, e.g. `makedev(major, minor)`.
    pub rdev: u64,
}

/// The most bytes the default [`EngineFile::read_user`] and
/// [`EngineFile::write_user`] move per call, through a buffer on the stack:
/// no engine-file I/O allocates what the caller's count asks for.
pub const BOUNCE: usize = 4096;

/// The caller's buffer of one `read`/`write`: `len` bytes at user address
/// `addr` of `mem`. Copies are fault-safe (`EFAULT`, never a crash).
#[derive(Clone, Copy, Debug)]
pub struct UserBuf<'a> {
    /// The memory the address is in.
    pub mem: &'a dyn UserMemory,
    /// User address of the first byte.
    pub addr: u64,
    /// Length in bytes (the caller caps it at the kernel's `MAX_RW_COUNT`).
    pub len: usize,
}

impl UserBuf<'_> {
    /// The user address of byte `off`, when `off + n` stays inside.
    fn at(&self, off: usize, n: usize) -> Result<u64> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(self.addr.wrapping_add(off as u64)),
            _ => Err(Error::new(
                libc::EINVAL,
                format!(
                    "{n} bytes at offset {off} overrun a {}-byte buffer",
                    self.len
                ),
            )),
        }
    }

    /// Copy `data` to byte `off` of the buffer (`copy_to_user`).
    pub fn copy_out(&self, off: usize, data: &[u8]) -> Result<()> {
        self.mem.write(self.at(off, data.len())?, data)
    }

    /// Copy `out.len()` bytes from byte `off` of the buffer
    /// (`copy_from_user`).
    pub fn copy_in(&self, off: usize, out: &mut [u8]) -> Result<()> {
        let addr = self.at(off, out.len())?;
        self.mem.read(addr, out)
    }

    /// Check without writing that the first `n` bytes can be written
    /// ([`UserMemory::probe_write`]).
    pub fn probe_writable(&self, n: usize) -> Result<()> {
        self.mem.probe_write(self.at(0, n)?, n as u64)
    }

    /// The kernel's `access_ok`, as far as it can be known here: the range
    /// does not wrap the address space.
    fn access_ok(&self) -> bool {
        self.addr.checked_add(self.len as u64).is_some()
    }
}

/// The default [`EngineFile::read_user`]: one `read` of at most [`BOUNCE`]
/// bytes into a stack buffer, probed first, then copied out.
fn bounce_read(buf: UserBuf<'_>, read: impl FnOnce(&mut [u8]) -> Result<usize>) -> Result<usize> {
    let n = buf.len.min(BOUNCE);
    let mut tmp = [0u8; BOUNCE];
    buf.probe_writable(n)?;
    let got = read(&mut tmp[..n])?.min(n);
    buf.copy_out(0, &tmp[..got])?;
    Ok(got)
}

/// The default [`EngineFile::write_user`]: at most [`BOUNCE`] bytes copied
/// into a stack buffer, then one `write`.
fn bounce_write(buf: UserBuf<'_>, write: impl FnOnce(&[u8]) -> Result<usize>) -> Result<usize> {
    let n = buf.len.min(BOUNCE);
    let mut tmp = [0u8; BOUNCE];
    buf.copy_in(0, &mut tmp[..n])?;
    Ok(write(&tmp[..n])?.min(n))
}

/// One file: what every fd slot referring to it shares.
struct FileRec {
    /// The engine object, as the trait.
    file: Arc<dyn EngineFile>,
    /// The same allocation, for typed downcasts in [`get_as`].
    any: Arc<dyn Any + Send + Sync>,
    /// Serialises [`sync`] of this file's readiness.
    sync: Mutex<()>,
}

impl fmt::Debug for FileRec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRec").field("file", &self.file).finish()
    }
}

impl Drop for FileRec {
    fn drop(&mut self) {
        tracing::debug!(kind = self.file.kind(), "last fd of engine file closed");
        self.file.release();
    }
}

/// One fd referring to a file.
#[derive(Clone, Debug)]
struct Slot {
    rec: Arc<FileRec>,
    dev: u64,
    ino: u64,
}

/// A lock-free "may this fd be one of ours?" hint: one bit per fd below
/// [`FdHints::FAST_FDS`] and a counter for the fds above. `false` from
/// [`FdHints::maybe`] is definitive, `true` sends the caller to the locked
/// map. Shared by this registry and the preload's table of emulated device
/// fds, so that the path for every other fd costs one atomic load.
#[derive(Debug)]
pub struct FdHints {
    bits: [AtomicU64; FdHints::FAST_FDS / 64],
    high: AtomicUsize,
    total: AtomicUsize,
}

impl Default for FdHints {
    fn default() -> Self {
        Self::new()
    }
}

impl FdHints {
    /// Fds below this number have a bit of their own.
    pub const FAST_FDS: usize = 65536;

    /// No fd marked.
    pub const fn new() -> Self {
        FdHints {
            bits: [const { AtomicU64::new(0) }; FdHints::FAST_FDS / 64],
            high: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
        }
    }

    /// Record that `fd` is now (`on`) or no longer one of ours; `was_present`
    /// says whether it was before (the caller's map knows). Call with the
    /// map's write lock held.
    pub fn set(&self, fd: i32, on: bool, was_present: bool) {
        if fd < 0 {
            return;
        }
        if on && !was_present {
            self.total.fetch_add(1, Ordering::Release);
        } else if !on && was_present {
            self.total.fetch_sub(1, Ordering::Release);
        }
        let u = fd as usize;
        if u < Self::FAST_FDS {
            let bit = 1u64 << (u % 64);
            if on {
                self.bits[u / 64].fetch_or(bit, Ordering::Release);
            } else {
                self.bits[u / 64].fetch_and(!bit, Ordering::Release);
            }
        } else if on && !was_present {
            self.high.fetch_add(1, Ordering::Release);
        } else if !on && was_present {
            self.high.fetch_sub(1, Ordering::Release);
        }
    }

    /// Whether `fd` may be ours (one atomic load).
    #[inline]
    pub fn maybe(&self, fd: i32) -> bool {
        if fd < 0 {
            return false;
        }
        let u = fd as usize;
        if u < Self::FAST_FDS {
            self.bits[u / 64].load(Ordering::Acquire) & (1u64 << (u % 64)) != 0
        } else {
            self.high.load(Ordering::Acquire) != 0
        }
    }

    /// Whether any fd is marked.
    #[inline]
    pub fn any(&self) -> bool {
        self.total.load(Ordering::Acquire) != 0
    }

    /// Remove the fds `first..=last` from `map`, the table these hints
    /// describe, and unmark them (`close_range`); the removed values. Call
    /// with the map's write lock held.
    pub fn take_range<V>(&self, map: &mut BTreeMap<i32, V>, first: i32, last: i32) -> Vec<V> {
        if first > last {
            return Vec::new();
        }
        let fds: Vec<i32> = map.range(first..=last).map(|(&fd, _)| fd).collect();
        fds.into_iter()
            .filter_map(|fd| {
                let v = map.remove(&fd)?;
                self.set(fd, false, true);
                Some(v)
            })
            .collect()
    }
}

static HINTS: FdHints = FdHints::new();
static MAP: RwLock<BTreeMap<i32, Slot>> = RwLock::new(BTreeMap::new());

/// Update the hint for `fd` after the map changed (caller holds the write
/// lock).
fn set_hint(fd: i32, on: bool, was_present: bool) {
    HINTS.set(fd, on, was_present);
}

/// Lock-free (one atomic load): whether `fd` may be an engine fd. `false` is
/// definitive; `true` may be a stale entry ([`get`] tells for sure).
#[inline]
pub fn is_engine_fd(fd: i32) -> bool {
    HINTS.maybe(fd)
}

/// Lock-free (one atomic load): whether any engine fd is registered.
/// `false` is definitive.
#[inline]
pub fn any_engine_fd() -> bool {
    HINTS.any()
}

fn insert(fd: i32, slot: Slot) -> Option<Slot> {
    let mut map = MAP.write();
    let old = map.insert(fd, slot);
    set_hint(fd, true, old.is_some());
    old
}

fn remove(fd: i32) -> Option<Slot> {
    if !is_engine_fd(fd) {
        return None;
    }
    let mut map = MAP.write();
    let old = map.remove(&fd);
    if old.is_some() {
        set_hint(fd, false, true);
    }
    old
}

/// Remove `fd`'s slot only if it still refers to `rec`.
fn remove_if(fd: i32, rec: &Arc<FileRec>) -> Option<Slot> {
    let mut map = MAP.write();
    if !map.get(&fd).is_some_and(|s| Arc::ptr_eq(&s.rec, rec)) {
        return None;
    }
    set_hint(fd, false, true);
    map.remove(&fd)
}

/// `(st_dev, st_ino)` of `fd`, or `None` when it is not open.
pub(crate) fn identity(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable; a bad fd just fails. The raw system call:
    // the shim hooks `fstat` (and asks this module about engine fds there).
    if unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The slot of `fd` after checking that the fd still is the file registered.
/// A stale slot is removed (and dropped, outside the lock).
fn lookup(fd: i32) -> Option<Slot> {
    if !is_engine_fd(fd) {
        return None;
    }
    let slot = MAP.read().get(&fd).cloned()?;
    if identity(fd) == Some((slot.dev, slot.ino)) {
        return Some(slot);
    }
    tracing::debug!(
        fd,
        kind = slot.rec.file.kind(),
        "engine fd was closed behind our back; dropping it"
    );
    let stale = remove_if(fd, &slot.rec);
    drop(slot);
    drop(stale);
    None
}

/// Make a new fd for `file` (close-on-exec when `cloexec`) and register it.
///
/// The fd is a blocking `eventfd` with counter 0 (the kernel's
/// `anon_inode_getfd(.., O_RDWR)`); see the module docs for how readiness
/// is reflected. Fails with the errno of `eventfd(2)` (`EMFILE`, ...), or
/// `ENOMEM` from the `"files.create"` injection point (see
/// [`crate::inject`]).
pub fn create<T: EngineFile>(file: Arc<T>, cloexec: bool) -> Result<i32> {
    crate::inject::point("files.create", libc::ENOMEM)?;
    create_no_inject(file, cloexec)
}

/// [`create`] without its injection point: for files that are not iommufd
/// objects (the emulated `fail-nth` files).
pub fn create_no_inject<T: EngineFile>(file: Arc<T>, cloexec: bool) -> Result<i32> {
    create_dyn_no_inject(file, cloexec)
}

/// [`create`] for a file known only as a trait object.
pub fn create_dyn(file: Arc<dyn EngineFile>, cloexec: bool) -> Result<i32> {
    crate::inject::point("files.create", libc::ENOMEM)?;
    create_dyn_no_inject(file, cloexec)
}

fn create_dyn_no_inject(file: Arc<dyn EngineFile>, cloexec: bool) -> Result<i32> {
    let flags = if cloexec { libc::EFD_CLOEXEC } else { 0 };
    // SAFETY: plain syscall wrapper with no pointer arguments.
    let fd = unsafe { libc::eventfd(0, flags) };
    if fd < 0 {
        let e = errno();
        return Err(Error::new(e, "eventfd for an engine file failed"));
    }
    let Some((dev, ino)) = identity(fd) else {
        let e = errno();
        raw_close(fd);
        return Err(Error::new(e, "fstat of a new engine fd failed"));
    };
    let kind = file.kind();
    let any: Arc<dyn Any + Send + Sync> = file.clone();
    let rec = Arc::new(FileRec {
        file,
        any,
        sync: Mutex::new(()),
    });
    let stale = insert(
        fd,
        Slot {
            rec: rec.clone(),
            dev,
            ino,
        },
    );
    tracing::debug!(
        fd,
        kind,
        replaced_stale = stale.is_some(),
        "created engine fd"
    );
    drop(stale);
    // a file that is readable from the start (no `poll` in the kernel:
    // always readable) shows so from the start
    sync_rec(&rec, false);
    Ok(fd)
}

/// Register `fd`, an open fd made elsewhere, as referring to `file`: an
/// engine fd of another process's engine received over a socket, whose
/// readiness that engine mirrors into the shared file. Nothing is synced
/// here. Fails with `EBADF` when `fd` is not open.
pub fn adopt(fd: i32, file: Arc<dyn EngineFile>) -> Result<()> {
    let Some((dev, ino)) = identity(fd) else {
        return Err(Error::new(libc::EBADF, format!("fd {fd} is not open")));
    };
    let any: Arc<dyn Any + Send + Sync> = file.clone();
    let rec = Arc::new(FileRec {
        file,
        any,
        sync: Mutex::new(()),
    });
    drop(insert(fd, Slot { rec, dev, ino }));
    Ok(())
}

/// The engine file `fd` refers to, or `None` when `fd` is not (or no longer)
/// an engine fd.
pub fn get(fd: i32) -> Option<Arc<dyn EngineFile>> {
    lookup(fd).map(|s| s.rec.file.clone())
}

/// The engine file `fd` refers to as its concrete type `T`: `None` when `fd`
/// is not an engine fd or refers to a file of another type (the kernel's
/// `file->f_op != &expected_fops` check).
pub fn get_as<T: EngineFile>(fd: i32) -> Option<Arc<T>> {
    let slot = lookup(fd)?;
    slot.rec.any.clone().downcast::<T>().ok()
}

/// Record that `fd` was closed (or is about to be: the shim calls this just
/// before the real `close` so that no [`notify`] can touch the number once a
/// racing `open` reuses it). Drops the file when this was its last fd.
pub fn on_close(fd: i32) {
    drop(remove(fd));
}

/// Record that every fd in `first..=last` was closed (`close_range`,
/// `closefrom`).
pub fn on_close_range(first: i32, last: i32) {
    if first > last || first < 0 {
        return;
    }
    let gone: Vec<Slot> = HINTS.take_range(&mut MAP.write(), first, last);
    drop(gone);
}

/// Record that `new` became a duplicate of `old` (`dup`, `dup2`, `dup3`,
/// `F_DUPFD*`): when `old` is an engine fd, `new` now refers to the same
/// file; otherwise any registration of `new` (the target `dup2` closed) is
/// dropped. `old == new` or a negative `new` does nothing.
pub fn on_dup(old: i32, new: i32) {
    if new < 0 || old == new {
        return;
    }
    match lookup(old) {
        Some(slot) if identity(new) == Some((slot.dev, slot.ino)) => {
            drop(insert(new, slot));
        }
        _ => on_close(new),
    }
}

/// Drop the registration of `fd` if the fd no longer is the file registered
/// (call when an unrelated `open` returned this number). Returns whether an
/// entry was dropped.
pub fn check_stale(fd: i32) -> bool {
    if !is_engine_fd(fd) {
        return false;
    }
    let present = MAP.read().contains_key(&fd);
    present && lookup(fd).is_none()
}

fn raw_close(fd: i32) -> i64 {
    // SAFETY: closing an fd number; the raw syscall bypasses the shim's hook.
    unsafe { libc::syscall(libc::SYS_close, fd) }
}

/// Close an engine fd: unregister it, then really close it (for Rust users
/// without the shim). Fails with `EBADF` when `fd` is not open.
pub fn close(fd: i32) -> Result<()> {
    let slot = remove(fd);
    let r = raw_close(fd);
    let e = errno();
    drop(slot);
    if r != 0 {
        return Err(Error::new(e, format!("close({fd}) failed")));
    }
    Ok(())
}

/// Whether `fd` has `O_NONBLOCK` set.
fn nonblocking(fd: i32) -> bool {
    // SAFETY: F_GETFL takes no pointer; the raw syscall bypasses the shim.
    let fl = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
    fl >= 0 && fl as i32 & libc::O_NONBLOCK != 0
}

/// `read(2)` of an engine fd: `None` when `fd` is not (or no longer) an
/// engine fd (the shim then forwards to the kernel), otherwise the result of
/// [`EngineFile::read`] with the fd's `O_NONBLOCK`. Readiness is resynced
/// afterwards.
pub fn read(fd: i32, buf: &mut [u8]) -> Option<Result<usize>> {
    let slot = lookup(fd)?;
    let r = slot.rec.file.read(buf, nonblocking(fd));
    sync_rec(&slot.rec, false);
    Some(r)
}

/// `write(2)` of an engine fd: as [`read`], through [`EngineFile::write`].
pub fn write(fd: i32, buf: &[u8]) -> Option<Result<usize>> {
    let slot = lookup(fd)?;
    let r = slot.rec.file.write(buf);
    sync_rec(&slot.rec, false);
    Some(r)
}

/// `pread(2)` of an engine fd: as [`read`], through
/// [`EngineFile::read_at`] (the caller checked that `offset` is not
/// negative).
pub fn pread(fd: i32, buf: &mut [u8], offset: u64) -> Option<Result<usize>> {
    let slot = lookup(fd)?;
    let r = slot.rec.file.read_at(buf, offset, nonblocking(fd));
    sync_rec(&slot.rec, false);
    Some(r)
}

/// `pwrite(2)` of an engine fd: as [`write()`], through
/// [`EngineFile::write_at`].
pub fn pwrite(fd: i32, buf: &[u8], offset: u64) -> Option<Result<usize>> {
    let slot = lookup(fd)?;
    let r = slot.rec.file.write_at(buf, offset);
    sync_rec(&slot.rec, false);
    Some(r)
}

/// The kernel's checks of a data call on an engine fd, in its order:
/// `ESPIPE` for an offset on a file without one, `EINVAL` for a file that
/// cannot be read (written), `EFAULT` for a buffer that wraps; then `op`.
/// Readiness is resynced afterwards; `None` when `fd` is not an engine fd.
fn user_io(
    fd: i32,
    buf: &UserBuf<'_>,
    write: bool,
    at_offset: bool,
    op: impl FnOnce(&dyn EngineFile, bool) -> Result<usize>,
) -> Option<Result<usize>> {
    let slot = lookup(fd)?;
    let f = &*slot.rec.file;
    let verb = if write { "written" } else { "read" };
    let r = if at_offset && !f.positional() {
        Err(Error::new(
            libc::ESPIPE,
            format!("{} files cannot be {verb} at an offset", f.kind()),
        ))
    } else if !(if write { f.can_write() } else { f.can_read() }) {
        Err(Error::new(
            libc::EINVAL,
            format!("{} files cannot be {verb}", f.kind()),
        ))
    } else if !buf.access_ok() {
        Err(Error::fault("the buffer wraps the address space"))
    } else {
        op(f, nonblocking(fd))
    };
    sync_rec(&slot.rec, false);
    Some(r)
}

/// `read(2)` of an engine fd into the caller's memory, with the kernel's
/// checks first (`EINVAL` for a file without read, `EFAULT` for a range
/// that wraps), then [`EngineFile::read_user`]; `None` when `fd` is not an
/// engine fd. Readiness is resynced afterwards.
pub fn read_user(fd: i32, buf: UserBuf<'_>) -> Option<Result<usize>> {
    user_io(fd, &buf, false, false, |f, nb| f.read_user(buf, nb))
}

/// `write(2)` of an engine fd from the caller's memory: as [`read_user`],
/// through [`EngineFile::write_user`].
pub fn write_user(fd: i32, buf: UserBuf<'_>) -> Option<Result<usize>> {
    user_io(fd, &buf, true, false, |f, _| f.write_user(buf))
}

/// `pread(2)` of an engine fd into the caller's memory: `ESPIPE` unless
/// [`EngineFile::positional`], then as [`read_user`] through
/// [`EngineFile::read_user_at`] (the caller checked that `offset` is not
/// negative).
pub fn pread_user(fd: i32, buf: UserBuf<'_>, offset: u64) -> Option<Result<usize>> {
    user_io(fd, &buf, false, true, |f, nb| {
        f.read_user_at(buf, offset, nb)
    })
}

/// `pwrite(2)` of an engine fd from the caller's memory: as [`pread_user`],
/// through [`EngineFile::write_user_at`].
pub fn pwrite_user(fd: i32, buf: UserBuf<'_>, offset: u64) -> Option<Result<usize>> {
    user_io(fd, &buf, true, true, |f, _| f.write_user_at(buf, offset))
}

/// Resync the readiness of the file `fd` refers to with its
/// [`EngineFile::poll_events`]. Returns `false` when `fd` is not an engine fd.
pub fn notify(fd: i32) -> bool {
    match lookup(fd) {
        Some(slot) => {
            sync_rec(&slot.rec, false);
            true
        }
        None => false,
    }
}

/// Resync the readiness of the registered file whose object is `file`
/// (compared by address), signalling its eventfd again when `wake`.
fn resync_file(file: &dyn EngineFile, wake: bool) -> bool {
    let target = file as *const dyn EngineFile as *const ();
    let rec = MAP
        .read()
        .values()
        .find(|s| Arc::as_ptr(&s.rec.file) as *const () == target)
        .map(|s| s.rec.clone());
    match rec {
        Some(rec) => {
            sync_rec(&rec, wake);
            true
        }
        None => false,
    }
}

/// Resync the readiness of every registered file whose object is `file`
/// (compared by address): for engine objects that do not know their fds.
/// Returns whether such a file is registered.
pub fn notify_file(file: &dyn EngineFile) -> bool {
    resync_file(file, false)
}

/// New data arrived in `file`: like [`notify_file`], but when it is
/// readable the eventfd is signalled even if it already was, so that an
/// edge-triggered `epoll` sees a new event for every arrival (the kernel's
/// `wake_up` on each new item). Returns whether such a file is registered.
pub fn wake_file(file: &dyn EngineFile) -> bool {
    resync_file(file, true)
}

/// Alias of [`notify`] named after what it does.
pub fn sync(fd: i32) -> bool {
    notify(fd)
}

/// Make the eventfd counter of `rec` non-zero iff `POLLIN` is ready; with
/// `wake`, add to a non-zero counter too (a new edge for `EPOLLET`).
fn sync_rec(rec: &Arc<FileRec>, wake: bool) {
    let _serial = rec.sync.lock();
    let want = rec.file.poll_events() & libc::POLLIN != 0;
    // Hold the read lock while touching the fd: `on_close` (called before
    // the real close) takes the write lock, so the number cannot be reused
    // under us by a close that went through the shim.
    let map = MAP.read();
    let fd = map
        .iter()
        .filter(|(_, s)| Arc::ptr_eq(&s.rec, rec))
        .find(|(&fd, s)| identity(fd) == Some((s.dev, s.ino)))
        .map(|(&fd, _)| fd);
    if let Some(fd) = fd {
        set_readable(fd, want, wake);
    }
    drop(map);
}

/// Whether the eventfd `fd` is readable now (counter non-zero).
fn readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one valid pollfd and a valid zero timeout; no signal mask. The
    // raw syscall bypasses the shim's hooks.
    let n = unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            &mut pfd as *mut libc::pollfd,
            1 as libc::nfds_t,
            &zero as *const libc::timespec,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// Set the eventfd counter of `fd` to non-zero (`on`) or zero; with `wake`
/// and `on`, add 1 even to a non-zero counter. Never blocks: the counter is
/// only read when `poll` says it is non-zero (reads are serialised by the
/// file's sync mutex), and it is drained whenever the file has no data, so
/// the wakes between two drains are far from the eventfd's 2^64 - 2 limit.
fn set_readable(fd: i32, on: bool, wake: bool) {
    let is = readable(fd);
    if on && (wake || !is) {
        if !eventfd_write(fd, 1) {
            tracing::debug!(fd, errno = errno(), "signalling an engine fd failed");
        }
    } else if !on && is && eventfd_read(fd).is_none() {
        tracing::debug!(fd, errno = errno(), "draining an engine fd failed");
    }
}

/// Add `v` to the counter of the eventfd `fd` by the raw system call (no
/// interposed `write` sees it); whether the 8 bytes were written (`errno`
/// says why not).
pub(crate) fn eventfd_write(fd: i32, v: u64) -> bool {
    // SAFETY: writes 8 bytes from a live u64; a bad fd just fails.
    let n = unsafe {
        libc::syscall(
            libc::SYS_write,
            fd,
            &v as *const u64 as *const libc::c_void,
            8usize,
        )
    };
    n == 8
}

/// Read (and so reset) the counter of the eventfd `fd` by the raw system
/// call; `None` when the read failed (`errno` says why: `EAGAIN` for a
/// zero counter of a non-blocking eventfd).
pub(crate) fn eventfd_read(fd: i32) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; a bad fd just fails.
    let n = unsafe {
        libc::syscall(
            libc::SYS_read,
            fd,
            &mut v as *mut u64 as *mut libc::c_void,
            8usize,
        )
    };
    (n == 8).then_some(v)
}

/// Every registered fd and the kind of its file
/// ([`EngineFile::kind`]), by fd.
pub fn engine_fds() -> Vec<(i32, &'static str)> {
    MAP.read()
        .iter()
        .map(|(&fd, s)| (fd, s.rec.file.kind()))
        .collect()
}

/// How many fds are registered (for tests and diagnostics).
pub fn registered_fds() -> usize {
    MAP.read().len()
}

/// The link from an engine object that queues entries for reading (a fault
/// queue, a vEVENT queue) to the file of its fd: [`QueueLink::notify`]
/// resyncs the fd's readiness and, after a [`QueueLink::arrived`], wakes
/// its waiters even when it already was readable, so that an
/// edge-triggered `epoll` sees every new entry (the kernel's `wake_up` per
/// entry). Notify with no lock of the queue held.
#[derive(Debug)]
pub(crate) struct QueueLink<F> {
    file: Mutex<std::sync::Weak<F>>,
    /// An entry arrived since the last notify.
    fresh: std::sync::atomic::AtomicBool,
}

impl<F> Default for QueueLink<F> {
    fn default() -> Self {
        QueueLink {
            file: Mutex::new(std::sync::Weak::new()),
            fresh: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl<F: EngineFile> QueueLink<F> {
    /// The queue's fd is `file` from now on.
    pub(crate) fn set(&self, file: &Arc<F>) {
        *self.file.lock() = Arc::downgrade(file);
    }

    /// An entry arrived: the next [`QueueLink::notify`] wakes.
    pub(crate) fn arrived(&self) {
        self.fresh.store(true, Ordering::Release);
    }

    /// Resync the fd's readiness with the queue (waking its waiters after
    /// an arrival). Nothing happens while the queue has no fd.
    pub(crate) fn notify(&self) {
        let file = self.file.lock().upgrade();
        if let Some(f) = file {
            if self.fresh.swap(false, Ordering::AcqRel) {
                wake_file(&*f);
            } else {
                notify_file(&*f);
            }
        }
    }
}

/// A `put(offset, bytes)` sink for the queues' `read_*_with` that copies
/// into `buf` (the plain-buffer `read`).
pub(crate) fn into_slice(buf: &mut [u8]) -> impl FnMut(usize, &[u8]) -> Result<()> + '_ {
    |off, b| {
        buf[off..off + b.len()].copy_from_slice(b);
        Ok(())
    }
}

/// What a `read(2)` or `write(2)` of a queue returns once it handled
/// `done` bytes and stopped with `rc`: the bytes when there are any (the
/// error is then the next call's), otherwise `rc` (0 bytes or its error).
pub(crate) fn partial(done: usize, rc: Result<()>) -> Result<usize> {
    if done == 0 {
        rc.map(|()| 0)
    } else {
        Ok(done)
    }
}

/// Make `file` a close-on-exec fd of this process and hand the number to
/// `publish` (which replies to the command that made it); when `publish`
/// fails the fd is closed again and its error returned.
pub(crate) fn create_published<T: EngineFile>(
    file: Arc<T>,
    publish: impl FnOnce(i32) -> Result<()>,
) -> Result<i32> {
    let fd = create(file, true)?;
    if let Err(e) = publish(fd) {
        let _ = close(fd);
        return Err(e);
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    #[derive(Debug, Default)]
    struct TestFile {
        ready: AtomicBool,
        released: Arc<AtomicUsize>,
        last_nonblock: AtomicBool,
        written: Mutex<Vec<u8>>,
    }

    impl EngineFile for TestFile {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn read(&self, buf: &mut [u8], nonblock: bool) -> Result<usize> {
            self.last_nonblock.store(nonblock, Ordering::SeqCst);
            if !self.ready.swap(false, Ordering::SeqCst) {
                return Err(Error::new(libc::EAGAIN, "empty"));
            }
            let n = buf.len().min(4);
            buf[..n].copy_from_slice(&b"data"[..n]);
            Ok(n)
        }
        fn write(&self, buf: &[u8]) -> Result<usize> {
            self.written.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn poll_events(&self) -> i16 {
            if self.ready.load(Ordering::SeqCst) {
                libc::POLLIN
            } else {
                0
            }
        }
        fn release(&self) {
            self.released.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Debug)]
    struct Other;
    impl EngineFile for Other {
        fn kind(&self) -> &'static str {
            "other"
        }
    }

    fn new_file() -> (Arc<TestFile>, Arc<AtomicUsize>) {
        let released = Arc::new(AtomicUsize::new(0));
        let f = Arc::new(TestFile {
            released: released.clone(),
            ..TestFile::default()
        });
        (f, released)
    }

    fn poll_in(fd: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert_eq!(n, 1, "an engine fd is always writable");
        assert!(pfd.revents & libc::POLLOUT != 0);
        pfd.revents & libc::POLLIN != 0
    }

    #[test]
    fn files_create_get_close() {
        let (f, released) = new_file();
        let fd = create(f.clone(), true).unwrap();
        assert!(is_engine_fd(fd));
        // SAFETY: F_GETFD on our own fd.
        let fdflags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(fdflags & libc::FD_CLOEXEC != 0);
        assert_eq!(get(fd).unwrap().kind(), "test");
        let typed: Arc<TestFile> = get_as(fd).unwrap();
        assert!(Arc::ptr_eq(&typed, &f));
        assert!(get_as::<Other>(fd).is_none(), "wrong type is not found");
        drop(typed);
        close(fd).unwrap();
        assert_eq!(released.load(Ordering::SeqCst), 1);
        assert_eq!(Arc::strong_count(&f), 1, "the registry dropped its Arc");
        assert_eq!(close(-1).unwrap_err().errno().0, libc::EBADF);
    }

    #[test]
    fn files_not_cloexec() {
        let fd = create(Arc::new(Other), false).unwrap();
        // SAFETY: F_GETFD on our own fd.
        let fdflags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(fdflags & libc::FD_CLOEXEC, 0);
        assert!(get_as::<TestFile>(fd).is_none());
        let mut buf = [0u8; 4];
        assert_eq!(
            read(fd, &mut buf).unwrap().unwrap_err().errno().0,
            libc::EINVAL
        );
        assert_eq!(
            write(fd, &buf).unwrap().unwrap_err().errno().0,
            libc::EINVAL
        );
        close(fd).unwrap();
    }

    #[test]
    fn files_dup_shares_the_file() {
        let (f, released) = new_file();
        let fd = create(f.clone(), false).unwrap();
        // SAFETY: dup of our own fd.
        let fd2 = unsafe { libc::dup(fd) };
        assert!(fd2 >= 0);
        on_dup(fd, fd2);
        assert!(Arc::ptr_eq(&get_as::<TestFile>(fd2).unwrap(), &f));
        // SAFETY: F_DUPFD of our own fd.
        let fd3 = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 200) };
        assert!(fd3 >= 200);
        on_dup(fd, fd3);
        close(fd).unwrap();
        assert_eq!(released.load(Ordering::SeqCst), 0, "fd2, fd3 keep it");
        assert!(get_as::<TestFile>(fd2).is_some());
        close(fd2).unwrap();
        assert_eq!(released.load(Ordering::SeqCst), 0, "fd3 keeps it");
        close(fd3).unwrap();
        assert_eq!(released.load(Ordering::SeqCst), 1);
        assert_eq!(Arc::strong_count(&f), 1);
    }

    #[test]
    fn files_dup2_over_an_engine_fd() {
        let (f, released) = new_file();
        let fd = create(f, false).unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 of our own fds.
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), fd) }, fd);
        on_dup(other.as_raw_fd(), fd);
        assert!(get(fd).is_none());
        assert_eq!(released.load(Ordering::SeqCst), 1);
        close(fd).unwrap();
    }

    #[test]
    fn files_stale_detection() {
        let (f, released) = new_file();
        let fd = create(f, false).unwrap();
        // Put an ordinary file under the number behind the registry's back.
        let mem = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 of our own fds.
        assert_eq!(unsafe { libc::dup2(mem.as_raw_fd(), fd) }, fd);
        assert!(is_engine_fd(fd), "the hint still says maybe");
        assert!(get(fd).is_none(), "identity check catches it");
        assert!(!is_engine_fd(fd) || !MAP.read().contains_key(&fd));
        assert_eq!(released.load(Ordering::SeqCst), 1);
        // A raw close: the next lookup drops the entry too.
        let (f, released) = new_file();
        let fd2 = create(f, false).unwrap();
        // SAFETY: closing our own fd.
        assert_eq!(unsafe { libc::close(fd2) }, 0);
        // (another test thread may have reused the number meanwhile)
        let _ = notify(fd2);
        assert_eq!(released.load(Ordering::SeqCst), 1);
        close(fd).unwrap(); // the /dev/null dup
    }

    #[test]
    fn files_check_stale() {
        let (f, _released) = new_file();
        let fd = create(f, false).unwrap();
        assert!(!check_stale(fd));
        assert!(get(fd).is_some());
        let null = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 of our own fds.
        assert_eq!(unsafe { libc::dup2(null.as_raw_fd(), fd) }, fd);
        assert!(check_stale(fd));
        assert!(!check_stale(fd));
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn files_readiness_follows_poll_events() {
        let (f, _) = new_file();
        let fd = create(f.clone(), false).unwrap();
        assert!(!poll_in(fd));
        f.ready.store(true, Ordering::SeqCst);
        assert!(!poll_in(fd), "not before notify");
        assert!(notify_file(&*f));
        assert!(poll_in(fd));
        assert!(notify(fd), "idempotent");
        assert!(poll_in(fd));
        // A read through the registry consumes the data and resyncs.
        let mut buf = [0u8; 8];
        assert_eq!(read(fd, &mut buf).unwrap().unwrap(), 4);
        assert_eq!(&buf[..4], b"data");
        assert!(!poll_in(fd));
        assert!(!f.last_nonblock.load(Ordering::SeqCst));
        // Blocking mode: notify with nothing ready must not block.
        assert!(notify(fd));
        assert_eq!(
            read(fd, &mut buf).unwrap().unwrap_err().errno().0,
            libc::EAGAIN
        );
        // O_NONBLOCK is passed through.
        // SAFETY: F_SETFL on our own fd.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        assert_eq!(r, 0);
        let _ = read(fd, &mut buf);
        assert!(f.last_nonblock.load(Ordering::SeqCst));
        assert_eq!(write(fd, b"resp").unwrap().unwrap(), 4);
        assert_eq!(&*f.written.lock(), b"resp");
        close(fd).unwrap();
        assert!(!notify_file(&*f));
    }

    #[test]
    fn files_close_range() {
        let (f, released) = new_file();
        let fd = create(f, false).unwrap();
        // Above the hint bitmap when RLIMIT_NOFILE allows it.
        // SAFETY: dup of our own fd to a high number.
        let mut fd2 = unsafe { libc::fcntl(fd, libc::F_DUPFD, 70000) };
        if fd2 < 0 {
            // SAFETY: as above.
            fd2 = unsafe { libc::fcntl(fd, libc::F_DUPFD, 300) };
        }
        assert!(fd2 >= 300, "fd2 {fd2}");
        on_dup(fd, fd2);
        assert!(is_engine_fd(fd2));
        assert!(get(fd2).is_some());
        on_close_range(fd2, i32::MAX);
        assert!(get(fd2).is_none());
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd2) };
        assert_eq!(released.load(Ordering::SeqCst), 0);
        on_close_range(fd, fd);
        assert_eq!(released.load(Ordering::SeqCst), 1);
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn files_concurrent() {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..200 {
                        let (f, released) = new_file();
                        let fd = create(f.clone(), true).unwrap();
                        // SAFETY: dup of our own fd.
                        let fd2 = unsafe { libc::dup(fd) };
                        on_dup(fd, fd2);
                        f.ready.store(true, Ordering::SeqCst);
                        notify_file(&*f);
                        assert!(get_as::<TestFile>(fd2).is_some());
                        close(fd).unwrap();
                        assert!(poll_in(fd2));
                        close(fd2).unwrap();
                        assert_eq!(released.load(Ordering::SeqCst), 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
