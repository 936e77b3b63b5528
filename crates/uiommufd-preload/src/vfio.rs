//! Emulated VFIO devices in the shim: the device nodes of the declared
//! devices, what `stat` says about them, the sysfs paths programs look the
//! devices up by, and the file operations of the engine files the nodes
//! open (`ioctl`, `mmap`, the vectored positional I/O).
//!
//! * **Declaration** (library constructor): [`init`] declares the devices of
//!   `$UIOMMUFD_DEVICES` ([`registry::declare_from_env`]) and writes their
//!   sysfs tree ([`sysfs::write_declared`]). A bad declaration is reported
//!   on stderr and the program runs without emulated devices.
//! * **Nodes**: `/dev/vfio/N` (N a declared device's IOMMU group) and
//!   `/dev/vfio/devices/vfioN` (a declared cdev) open engine fds through
//!   [`registry::open_group`]/[`registry::open_cdev`] (fd births, see
//!   `sync`); undeclared numbers go to the kernel. `stat` and friends report
//!   them as character devices `S_IFCHR | 0600` owned by the caller, with
//!   `st_rdev = makedev(VFIO_GROUP_MAJOR, N)` for groups and
//!   `makedev(VFIO_CDEV_MAJOR, N)` for cdevs (the other fields are those of
//!   `/dev/null`: a devtmpfs node). `fstat` of an engine fd whose file has
//!   [`uiommufd::plumbing::files::EngineFile::stat_as`] reports that mode and rdev.
//! * **sysfs**: `/sys/bus/pci/devices/ADDR[/...]` and
//!   `/sys/kernel/iommu_groups/N[/...]` of declared devices are redirected
//!   to the tree (`open*`, the `stat` family, `readlink*`, `opendir`,
//!   `realpath`, `access`/`faccessat`). The match is on the path's bytes:
//!   absolute paths spelled with those exact prefixes (QEMU's `host=`
//!   spelling); anything after the device's name resolves in the real tree.
//!
//! Every hook's fast path, while no device is declared, is one atomic load
//! ([`active`]); once devices are declared, path-taking hooks copy the
//! path (one `process_vm_readv`) and compare prefixes.

use std::ffi::{c_char, c_int, CStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use uiommufd::plumbing::files::FdResolver;
use uiommufd::user::{SelfMemory, UserMemory};
use uiommufd::vfio::registry::{self, VFIO_CDEV_MAJOR, VFIO_GROUP_MAJOR};
use uiommufd::vfio::sysfs;

use crate::path::{self, set_errno, Form, StackPath, UserPath, VfioNode};
use crate::sync;

/// Whether any device is declared (set once, at load).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The root of the sysfs tree, once written.
static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Lock-free: whether this process has declared devices.
#[inline]
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Declare the devices of `$UIOMMUFD_DEVICES` and write their sysfs tree.
/// Runs in the library constructor, inside a critical section.
pub(crate) fn init() {
    let decls = match registry::declare_from_env() {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "uiommufd: {}: {e}; running without emulated devices",
                registry::DEVICES_ENV
            );
            tracing::error!("{}: {e}", registry::DEVICES_ENV);
            return;
        }
    };
    if decls.is_empty() {
        return;
    }
    match sysfs::write_declared() {
        Ok(root) => {
            let _ = ROOT.set(root);
        }
        Err(e) => {
            eprintln!("uiommufd: cannot write the devices' sysfs tree: {e}");
            tracing::error!("sysfs tree: {e}");
        }
    }
    for d in &decls {
        tracing::debug!(
            kind = d.kind,
            addr = d.addr,
            group = d.group,
            cdev = d.cdev,
            "declared device"
        );
    }
    ACTIVE.store(true, Ordering::Release);
}

/// Run `f` inside a critical section (the node answers allocate and copy
/// to the caller's memory): `-1`/`EIO` style results on panic are the
/// caller's `on_panic`.
pub(crate) fn critical<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    crate::guard(|| {
        let _c = sync::enter();
        f()
    })
    .unwrap_or(on_panic)
}

/// Whether `node` belongs to a declared device.
fn declared(node: VfioNode) -> bool {
    match node {
        VfioNode::Group(n) => registry::by_group(n).is_some(),
        VfioNode::Cdev(n) => registry::by_cdev(n).is_some(),
    }
}

/// `makedev(major, minor)` as glibc encodes it.
fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

impl VfioNode {
    fn major_minor(self) -> (u32, u32) {
        match self {
            VfioNode::Group(n) => (VFIO_GROUP_MAJOR, n),
            VfioNode::Cdev(n) => (VFIO_CDEV_MAJOR, n),
        }
    }

    /// The node's absolute path.
    fn path(self) -> String {
        match self {
            VfioNode::Group(n) => format!("/dev/vfio/{n}"),
            VfioNode::Cdev(n) => format!("/dev/vfio/devices/vfio{n}"),
        }
    }

    /// A stable inode number of our own for the node.
    fn ino(self) -> u64 {
        let (ma, mi) = self.major_minor();
        0x7569_6f00_0000_0000 | (u64::from(ma) << 32) | u64::from(mi)
    }
}

/// What a path-taking hook does with its path.
// the path lives on the stack on purpose: a `Box` would be freed outside
// the critical section
#[allow(clippy::large_enum_variant)]
pub(crate) enum Act {
    /// Not ours: the real call with the caller's arguments.
    Forward,
    /// A sysfs path of a declared device: the real call on this path.
    Redirect(StackPath),
    /// A node of a declared device, reached as `Form` says.
    Node(VfioNode, Form),
    /// Fail with this errno (an unreadable path; a panic).
    Fail(c_int),
}

/// Classify the caller's `path` (relative to `dirfd`). The fast path (no
/// device declared) is one atomic load.
///
/// # Safety
/// None: `path` is read fault-safely.
pub(crate) unsafe fn classify(dirfd: c_int, path: *const c_char) -> Act {
    if !active() || path.is_null() || sync::foreign() {
        return Act::Forward;
    }
    match crate::guard(|| {
        let _c = sync::enter();
        let p = match UserPath::read(path) {
            Ok(p) => p,
            // the kernel fails it with its own errno
            Err(_) => return Act::Forward,
        };
        classify_path(dirfd, p.as_cstr())
    }) {
        Some(a) => a,
        None => Act::Fail(libc::EIO),
    }
}

/// [`classify`] on a path already copied. Inside a critical section.
pub(crate) fn classify_path(dirfd: c_int, p: &CStr) -> Act {
    if !active() {
        return Act::Forward;
    }
    let bytes = p.to_bytes();
    if bytes.starts_with(b"/sys/") {
        let Some(root) = ROOT.get() else {
            return Act::Forward;
        };
        let to = sysfs::redirect(
            root,
            bytes,
            |a| registry::devices().iter().any(|r| r.decl.addr == a),
            |g| registry::by_group(g).is_some(),
        );
        let Some(to) = to else {
            return Act::Forward;
        };
        return match StackPath::new(to.as_os_str().as_bytes()) {
            Some(t) => {
                tracing::trace!(from = ?p, to = ?t, "sysfs redirect");
                Act::Redirect(t)
            }
            None => Act::Fail(libc::ENAMETOOLONG),
        };
    }
    match path::match_vfio_node(dirfd, p, declared) {
        Some((node, form)) => Act::Node(node, form),
        None => Act::Forward,
    }
}

/// Open `node` with `flags` (the `open*` hooks). Inside a critical section;
/// the new engine fd is an fd birth.
pub(crate) fn open_node(node: VfioNode, form: Form, flags: c_int) -> c_int {
    if let Some(e) = path::node_open_errno(flags, form) {
        tracing::debug!(path = node.path(), errno = e, "open of a VFIO node refused");
        return crate::fail(e);
    }
    if flags & libc::O_PATH != 0 {
        // no driver open for O_PATH: a path fd of a character device
        // SAFETY: a static NUL-terminated path; the raw call skips our hooks.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/dev/null".as_ptr(),
                libc::O_PATH | (flags & libc::O_CLOEXEC),
            )
        } as c_int;
        return crate::post_open(fd);
    }
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let _birth = sync::Birth::new();
    let ops = sync::fd_ops();
    let r = match node {
        VfioNode::Group(n) => registry::open_group(n, cloexec),
        VfioNode::Cdev(n) => registry::open_cdev(n, cloexec),
    };
    let fd = match r {
        Ok(fd) => fd,
        Err(e) => {
            drop(ops);
            tracing::debug!(path = node.path(), "open failed: {e}");
            return crate::fail(e.errno().0);
        }
    };
    if flags & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL on the fd just made; raw, not our hook.
        unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFL, libc::O_NONBLOCK) };
    }
    // the number is new: whatever our registries still say about it is stale
    let gone = crate::table::unregister(fd);
    crate::special::forget_fd(fd);
    drop(ops);
    drop(gone);
    tracing::debug!(fd, path = node.path(), "opened VFIO node");
    fd
}

/// The `stat` of `node`: `/dev/null`'s, as a character device of ours.
fn node_stat(node: VfioNode) -> libc::stat {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: static NUL-terminated path, `st` writable; raw, not our hook.
    unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            c"/dev/null".as_ptr(),
            &mut st as *mut libc::stat,
            0,
        )
    };
    let (ma, mi) = node.major_minor();
    st.st_mode = libc::S_IFCHR | 0o600;
    st.st_rdev = makedev(ma, mi);
    st.st_ino = node.ino();
    st.st_nlink = 1;
    st.st_size = 0;
    // SAFETY: neither call can fail.
    (st.st_uid, st.st_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    st
}

/// Copy `v` to the caller's `dst` fault-safely: 0, or -1 with `EFAULT`.
fn copy_out<T>(dst: *mut T, v: &T) -> c_int {
    // SAFETY: `v` is a plain C struct: its bytes may be read.
    let bytes = unsafe {
        std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
    };
    match SelfMemory.write(dst as u64, bytes) {
        Ok(()) => 0,
        Err(_) => crate::fail(libc::EFAULT),
    }
}

/// Fill the caller's `struct stat` for `node` reached as `form`.
pub(crate) fn stat_node(node: VfioNode, form: Form, buf: *mut libc::stat) -> c_int {
    if form != Form::Exact {
        return crate::fail(libc::ENOTDIR);
    }
    copy_out(buf, &node_stat(node))
}

/// Fill the caller's `struct statx` for `node`: `/dev/null`'s statx with
/// our type, mode, rdev, owner and inode.
pub(crate) fn statx_node(node: VfioNode, form: Form, mask: u32, buf: *mut libc::statx) -> c_int {
    if form != Form::Exact {
        return crate::fail(libc::ENOTDIR);
    }
    // SAFETY: an all-zero `statx` is a valid value to be overwritten.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: static path, `stx` writable; raw, not our hook.
    unsafe {
        libc::syscall(
            libc::SYS_statx,
            libc::AT_FDCWD,
            c"/dev/null".as_ptr(),
            0,
            mask,
            &mut stx as *mut libc::statx,
        )
    };
    let (ma, mi) = node.major_minor();
    stx.stx_mode = (libc::S_IFCHR | 0o600) as u16;
    stx.stx_rdev_major = ma;
    stx.stx_rdev_minor = mi;
    stx.stx_ino = node.ino();
    stx.stx_nlink = 1;
    stx.stx_size = 0;
    // SAFETY: neither call can fail.
    (stx.stx_uid, stx.stx_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    stx.stx_mask |= libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_INO | libc::STATX_UID;
    copy_out(buf, &stx)
}

/// The `(mode, rdev)` an engine fd reports instead of its eventfd's, if
/// its file says so. Inside a critical section.
fn engine_stat_as(fd: c_int) -> Option<uiommufd::plumbing::files::StatAs> {
    uiommufd::plumbing::files::get(fd)?.stat_as()
}

/// A stat of a possible engine fd: `real` fills the local `st`, `patch`
/// puts the file's [`uiommufd::plumbing::files::EngineFile::stat_as`] in it, and it
/// is copied out to `buf`. `None`: not an engine fd with `stat_as`
/// (forward).
fn stat_engine<T>(
    fd: c_int,
    buf: *mut T,
    mut st: T,
    real: impl FnOnce(*mut T) -> c_int,
    patch: impl FnOnce(&mut T, uiommufd::plumbing::files::StatAs),
) -> Option<c_int> {
    if sync::foreign() {
        return None;
    }
    let r = crate::guard(|| {
        let _c = sync::enter();
        let sa = engine_stat_as(fd)?;
        if real(&mut st) != 0 {
            return Some(-1);
        }
        patch(&mut st, sa);
        Some(copy_out(buf, &st))
    });
    match r {
        Some(r) => r,
        None => Some(-1),
    }
}

/// `fstat` of a possible engine fd, as [`stat_engine`]: the mode and the
/// device number.
pub(crate) fn fstat_engine(
    fd: c_int,
    buf: *mut libc::stat,
    real: impl FnOnce(*mut libc::stat) -> c_int,
) -> Option<c_int> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let st: libc::stat = unsafe { std::mem::zeroed() };
    stat_engine(fd, buf, st, real, |st, sa| {
        st.st_mode = sa.mode;
        st.st_rdev = sa.rdev;
    })
}

/// `statx` of a possible engine fd (`AT_EMPTY_PATH` with `""`), as
/// [`stat_engine`].
pub(crate) fn statx_engine(
    fd: c_int,
    buf: *mut libc::statx,
    real: impl FnOnce(*mut libc::statx) -> c_int,
) -> Option<c_int> {
    // SAFETY: an all-zero `statx` is a valid value to be overwritten.
    let stx: libc::statx = unsafe { std::mem::zeroed() };
    stat_engine(fd, buf, stx, real, |stx, sa| {
        stx.stx_mode = sa.mode as u16;
        stx.stx_rdev_major = libc::major(sa.rdev);
        stx.stx_rdev_minor = libc::minor(sa.rdev);
    })
}

/// Whether `path` (at `dirfd`, with `flags`) is the empty path with
/// `AT_EMPTY_PATH` on an engine fd: the `fstatat`/`statx` form of `fstat`.
///
/// # Safety
/// None: `path` is read fault-safely.
pub(crate) unsafe fn empty_path_on_engine_fd(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
) -> bool {
    if flags & libc::AT_EMPTY_PATH == 0
        || !uiommufd::plumbing::files::is_engine_fd(dirfd)
        || path.is_null()
    {
        return false;
    }
    if sync::foreign() {
        return false;
    }
    critical(false, || {
        let mut b = [0u8; 1];
        SelfMemory.read(path as u64, &mut b).is_ok() && b[0] == 0
    })
}

/// `realpath` of a node: its normalised path, in `resolved` (at least
/// `PATH_MAX` bytes, the caller's contract) or a `malloc`ed string.
pub(crate) fn realpath_node(node: VfioNode, form: Form, resolved: *mut c_char) -> *mut c_char {
    if form != Form::Exact {
        set_errno(libc::ENOTDIR);
        return std::ptr::null_mut();
    }
    let p = node.path();
    let bytes = p.as_bytes();
    let out = if resolved.is_null() {
        // the caller frees it with the program's `free`
        // SAFETY: plain allocation.
        let m = unsafe { libc::malloc(bytes.len() + 1) }.cast::<c_char>();
        if m.is_null() {
            set_errno(libc::ENOMEM);
            return m;
        }
        m
    } else {
        resolved
    };
    let mut with_nul = bytes.to_vec();
    with_nul.push(0);
    if SelfMemory.write(out as u64, &with_nul).is_err() {
        set_errno(libc::EFAULT);
        return std::ptr::null_mut();
    }
    out
}

/// The preload's answer to "which iommufd context is fd N" for engine-file
/// ioctls (a VFIO bind or set-container names one): its fd table.
struct TableFds;

impl FdResolver for TableFds {
    fn context(&self, fd: i32) -> Option<Arc<uiommufd::Context>> {
        match crate::table::lookup(fd)?.obj {
            crate::table::FdObject::Iommu(ctx) => Some(ctx),
            crate::table::FdObject::Remote(_) => None,
        }
    }
}

/// `VFIO_GROUP_GET_DEVICE_FD` (`_IO(';', 106)`): returns a device fd.
const VFIO_GROUP_GET_DEVICE_FD: u32 = 0x3b6a;
/// `VFIO_DEVICE_FEATURE` (`_IO(';', 117)`): its `MIG_DEVICE_STATE` returns
/// a migration data fd.
const VFIO_DEVICE_FEATURE: u32 = 0x3b75;

/// Whether an engine-file ioctl may create an fd: those run as fd births
/// (see `sync`), under the fd-number lock, so that a `close` or `dup` on
/// another thread waits for them. Other commands run without the lock
/// (a device ioctl that waits for a device thread, as a reset or a
/// migration stop may, must not hold up every `close` in the process).
fn creates_fd(cmd: u32) -> bool {
    matches!(cmd, VFIO_GROUP_GET_DEVICE_FD | VFIO_DEVICE_FEATURE)
}

/// `ioctl` on an engine fd: `None` when `fd` is not (or no longer) one.
/// Inside a critical section.
pub(crate) fn engine_ioctl(fd: c_int, cmd: u32, arg: u64) -> Option<Result<c_int, c_int>> {
    let file = uiommufd::plumbing::files::get(fd)?;
    let births = creates_fd(cmd);
    let _birth = births.then(sync::Birth::new);
    let ops = births.then(sync::fd_ops);
    let r = file.ioctl(cmd, arg, &SelfMemory, &TableFds);
    drop(ops);
    drop(file);
    Some(match r {
        Ok(v) => Ok(c_int::try_from(v).unwrap_or(c_int::MAX)),
        Err(e) => {
            tracing::debug!(
                fd,
                cmd = format_args!("{cmd:#x}"),
                "engine ioctl failed: {e}"
            );
            Err(e.errno().0)
        }
    })
}

/// `mmap` of an engine fd: `None` when `fd` is not an engine fd
/// (forward); else `map(target_fd, target_offset)` (the real mmap, made
/// while the file is held) or an errno. Inside a critical section.
pub(crate) fn engine_mmap(
    fd: c_int,
    len: usize,
    prot: c_int,
    flags: c_int,
    offset: i64,
    map: impl FnOnce(c_int, i64) -> *mut libc::c_void,
) -> Option<Result<*mut libc::c_void, c_int>> {
    let file = uiommufd::plumbing::files::get(fd)?;
    let page = uiommufd::user::page_size() as i64;
    let Ok(off) = u64::try_from(offset) else {
        return Some(Err(libc::EINVAL));
    };
    if len == 0 || offset % page != 0 {
        return Some(Err(libc::EINVAL));
    }
    let ty = flags & 0xf; // MAP_TYPE
    let shared = ty == libc::MAP_SHARED || ty == libc::MAP_SHARED_VALIDATE;
    if !shared {
        // vfio-pci maps only shared (VM_SHARED), as device memory must be
        tracing::debug!(fd, "mmap of a device region without MAP_SHARED");
        return Some(Err(libc::EINVAL));
    }
    let write = prot & libc::PROT_WRITE != 0;
    let target = match file.mmap(off, len as u64, write) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(fd, offset, len, "engine mmap refused: {e}");
            return Some(Err(e.errno().0));
        }
    };
    let Ok(toff) = i64::try_from(target.offset) else {
        return Some(Err(libc::EOVERFLOW));
    };
    let p = map(target.fd, toff);
    drop(file);
    Some(if p == libc::MAP_FAILED {
        Err(crate::path::errno())
    } else {
        Ok(p)
    })
}
