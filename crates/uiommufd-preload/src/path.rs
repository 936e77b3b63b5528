//! The emulated device nodes and the path matching that finds them.
//!
//! [`DEV_NODES`] is the table of paths the shim serves. Adding a device is
//! one row plus one [`NodeKind`] variant (and its open function in `lib.rs`).
//!
//! The hooks first copy the caller's path with [`UserPath::read`] (fault-safe,
//! bounded by `PATH_MAX`, on the stack); a path that cannot be read or is too
//! long is forwarded, and the kernel fails it with its own errno.
//!
//! Matching is cheap for ordinary paths: only when the path contains the final
//! component of some node (`iommu`, `vfio`) is it made absolute (relative
//! paths are resolved against the cwd, or for `openat` against
//! `/proc/self/fd/<dirfd>`) and walked lexically (`//`, `.`, `..`). A walk
//! that goes *through* a node (`/dev/iommu/`, `/dev/iommu/.`,
//! `/dev/iommu/x`) fails as the kernel's does on a non-directory
//! (`ENOTDIR`, or `EISDIR` for `O_CREAT` with a trailing slash). Symlinks are
//! not followed: `/dev/iommu` is matched by name only, and `..` is lexical.

use std::borrow::Cow;
use std::ffi::{c_char, c_int, CStr};

use crate::special::{self, Special};

/// Which emulated device a node opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// `/dev/iommu`: a fresh iommufd context per open.
    Iommu,
    /// `/dev/vfio/vfio`: a VFIO type1 container, i.e. a fresh iommufd
    /// context with its compat IOAS (the kernel's IOMMUFD_VFIO_CONTAINER).
    VfioContainer,
}

/// One emulated device node.
#[derive(Debug)]
pub(crate) struct DevNode {
    /// The absolute, normalised path.
    pub path: &'static str,
    /// The name of the memfd that backs each open (shown in /proc/self/fd).
    pub memfd_name: &'static CStr,
    /// What an open creates.
    pub kind: NodeKind,
}

/// Every path the shim serves.
pub(crate) static DEV_NODES: &[DevNode] = &[
    DevNode {
        path: "/dev/iommu",
        memfd_name: c"uiommufd:/dev/iommu",
        kind: NodeKind::Iommu,
    },
    DevNode {
        path: "/dev/vfio/vfio",
        memfd_name: c"uiommufd:/dev/vfio/vfio",
        kind: NodeKind::VfioContainer,
    },
];

fn last_component(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Lexically normalise an absolute path into its components.
fn components(abs: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in abs.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The directory a relative path is resolved against, or `None`.
fn base_dir(dirfd: c_int) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    if dirfd == libc::AT_FDCWD {
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        let p = unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) };
        if p.is_null() {
            return None;
        }
        let n = buf.iter().position(|&b| b == 0)?;
        buf.truncate(n);
    } else {
        // (a target that fills `buf` may have been cut)
        let n = uiommufd::user::fd_link(dirfd, &mut buf)?.len();
        if n == 0 || n >= buf.len() {
            return None;
        }
        buf.truncate(n);
    }
    (buf.first() == Some(&b'/')).then_some(buf)
}

/// How a path reached a device node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// The path names the node itself.
    Exact,
    /// The node with trailing slashes (`/dev/iommu/`): the walk wants a
    /// directory.
    TrailingSlash,
    /// The node as a non-final component (`/dev/iommu/x`, `/dev/iommu/.`,
    /// `/dev/iommu/..`): the walk goes through a non-directory.
    Through,
}

/// Walk the absolute path `abs` lexically: the node it reaches and how.
fn walk(abs: &[u8]) -> Option<(&'static DevNode, Form)> {
    walk_to(abs, |stack| {
        DEV_NODES
            .iter()
            .find(|n| components(n.path.as_bytes()) == stack)
    })
}

/// Walk the absolute path `abs` lexically, asking `node_at` at every step
/// whether the components so far name a node: the node reached and how.
fn walk_to<T>(abs: &[u8], node_at: impl Fn(&[&[u8]]) -> Option<T>) -> Option<(T, Form)> {
    let mut stack: Vec<&[u8]> = Vec::new();
    for c in abs.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        // any component after a node, even `.` or `..`, makes the kernel
        // look the node up as a directory
        if let Some(n) = node_at(&stack) {
            return Some((n, Form::Through));
        }
        match c {
            b"." => {}
            b".." => {
                stack.pop();
            }
            c => stack.push(c),
        }
    }
    let n = node_at(&stack)?;
    Some((
        n,
        if abs.ends_with(b"/") {
            Form::TrailingSlash
        } else {
            Form::Exact
        },
    ))
}

/// The errno of `open(path, flags)` where `path` reaches a device node in
/// the way `form` says, or `None` when the open goes ahead. Follows the
/// kernel's order: flag validation (`build_open_flags`) before the walk;
/// `O_PATH` keeps only `O_DIRECTORY`, `O_NOFOLLOW` and `O_CLOEXEC`.
pub(crate) fn node_open_errno(flags: c_int, form: Form) -> Option<c_int> {
    let o_path = flags & libc::O_PATH != 0;
    let tmpfile = libc::O_TMPFILE & !libc::O_DIRECTORY;
    if !o_path {
        if flags & tmpfile != 0 {
            let mask = libc::O_TMPFILE | libc::O_CREAT;
            let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
            // a valid O_TMPFILE open needs a directory
            return Some(if flags & mask != libc::O_TMPFILE || !writes {
                libc::EINVAL
            } else {
                libc::ENOTDIR
            });
        }
        if flags & libc::O_CREAT != 0 && flags & libc::O_DIRECTORY != 0 {
            return Some(libc::EINVAL);
        }
    }
    let creat = !o_path && flags & libc::O_CREAT != 0;
    match form {
        Form::Through => Some(libc::ENOTDIR),
        Form::TrailingSlash if creat => Some(libc::EISDIR),
        Form::TrailingSlash => Some(libc::ENOTDIR),
        Form::Exact if creat && flags & libc::O_EXCL != 0 => Some(libc::EEXIST),
        Form::Exact if flags & libc::O_DIRECTORY != 0 => Some(libc::ENOTDIR),
        Form::Exact => None,
    }
}

/// `path` made absolute against `dirfd` (borrowed when it already is);
/// `None` when the directory cannot be found. Leaves `errno` as it found
/// it.
fn absolute(dirfd: c_int, path: &[u8]) -> Option<Cow<'_, [u8]>> {
    if path.first() == Some(&b'/') {
        return Some(Cow::Borrowed(path));
    }
    let saved = errno();
    let base = base_dir(dirfd);
    set_errno(saved);
    let mut v = base?;
    v.push(b'/');
    v.extend_from_slice(path);
    Some(Cow::Owned(v))
}

/// The node `path` names when opened relative to `dirfd` with `flags`:
/// `None` when it names none (forward the open), `Some(Ok(node))` to open
/// it, `Some(Err(errno))` when the kernel would refuse the open (the node
/// used as a directory: `ENOTDIR`/`EISDIR`; `O_CREAT|O_EXCL`: `EEXIST`;
/// `O_DIRECTORY`: `ENOTDIR`; invalid flags: `EINVAL`).
///
/// Cheap for ordinary paths: only a path that contains the last component
/// of some node (`iommu`, `vfio`) is made absolute and walked. Leaves
/// `errno` as it found it.
pub(crate) fn match_dev_node(
    dirfd: c_int,
    path: &CStr,
    flags: c_int,
) -> Option<Result<&'static DevNode, c_int>> {
    let path = path.to_bytes();
    let mentions = |name: &[u8]| path.windows(name.len()).any(|w| w == name);
    if !DEV_NODES
        .iter()
        .any(|n| mentions(last_component(n.path.as_bytes())))
    {
        return None;
    }
    let abs = absolute(dirfd, path)?;
    let (node, form) = walk(&abs)?;
    match node_open_errno(flags, form) {
        Some(e) => {
            tracing::debug!(
                path = node.path,
                ?form,
                flags,
                errno = e,
                "open of a device node refused"
            );
            Some(Err(e))
        }
        None => Some(Ok(node)),
    }
}

/// The node of a declared VFIO device (see [`crate::vfio`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VfioNode {
    /// `/dev/vfio/N`: the device's IOMMU group `N`.
    Group(u32),
    /// `/dev/vfio/devices/vfioN`: the device's cdev `N`.
    Cdev(u32),
}

/// A decimal number as Linux prints it (no sign, no leading zero).
fn canonical_number(c: &[u8]) -> Option<u32> {
    if c.is_empty() || c.len() > 10 || !c.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if c.len() > 1 && c[0] == b'0' {
        return None;
    }
    std::str::from_utf8(c).ok()?.parse().ok()
}

/// The VFIO node the components name, when `declared` says it exists.
fn vfio_node_at(stack: &[&[u8]], declared: &impl Fn(VfioNode) -> bool) -> Option<VfioNode> {
    let node = match stack {
        [b"dev", b"vfio", n] => VfioNode::Group(canonical_number(n)?),
        [b"dev", b"vfio", b"devices", name] => {
            VfioNode::Cdev(canonical_number(name.strip_prefix(b"vfio")?)?)
        }
        _ => return None,
    };
    declared(node).then_some(node)
}

/// The VFIO node `path` (relative to `dirfd`) reaches and how, when
/// `declared` says the node exists. Cheap for paths that do not contain
/// `vfio`. Leaves `errno` as it found it.
pub(crate) fn match_vfio_node(
    dirfd: c_int,
    path: &CStr,
    declared: impl Fn(VfioNode) -> bool,
) -> Option<(VfioNode, Form)> {
    let path = path.to_bytes();
    if !path.windows(4).any(|w| w == b"vfio") {
        return None;
    }
    let abs = absolute(dirfd, path)?;
    walk_to(&abs, |stack| vfio_node_at(stack, &declared))
}

/// A path copied out of the caller's memory (the kernel's `getname`), in a
/// buffer on the stack: no allocation, whatever the caller passed.
pub(crate) struct UserPath {
    buf: [u8; PATH_MAX],
    /// Bytes before the NUL.
    len: usize,
}

/// A path the shim hands to a real call (a redirected sysfs path), in a
/// buffer on the stack: the hooks that use it make the real call outside
/// their critical section, where the shim must not allocate or free (see
/// `sync`).
pub(crate) struct StackPath {
    buf: [u8; PATH_MAX],
}

impl StackPath {
    /// `bytes` with a NUL; `None` when it does not fit in `PATH_MAX` (the
    /// kernel's `ENAMETOOLONG`) or holds a NUL.
    pub(crate) fn new(bytes: &[u8]) -> Option<StackPath> {
        if bytes.len() >= PATH_MAX || bytes.contains(&0) {
            return None;
        }
        let mut p = StackPath {
            buf: [0u8; PATH_MAX],
        };
        p.buf[..bytes.len()].copy_from_slice(bytes);
        Some(p)
    }

    /// The NUL-terminated path.
    pub(crate) fn as_ptr(&self) -> *const c_char {
        self.buf.as_ptr().cast()
    }
}

impl std::fmt::Debug for StackPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.buf.iter().position(|&b| b == 0).unwrap_or(0);
        write!(f, "{:?}", String::from_utf8_lossy(&self.buf[..n]))
    }
}

/// `PATH_MAX`: the most bytes a path may take, its NUL included.
const PATH_MAX: usize = libc::PATH_MAX as usize;

impl UserPath {
    /// Copy the NUL-terminated path at `ptr` fault-safely with
    /// `process_vm_readv`: up to the end of `ptr`'s page first, then page by
    /// page, stopping at the NUL, so that no page past the string is
    /// touched. `EFAULT` when a byte before the NUL is unreadable (or
    /// `process_vm_readv` itself fails), `ENAMETOOLONG` when the first
    /// `PATH_MAX` bytes hold no NUL, as the kernel's `getname`.
    pub(crate) fn read(ptr: *const c_char) -> Result<UserPath, c_int> {
        let mut p = UserPath {
            buf: [0u8; PATH_MAX],
            len: 0,
        };
        let page = uiommufd::user::page_size() as usize;
        let mut addr = ptr as usize;
        let mut got = 0usize;
        while got < PATH_MAX {
            let to_page_end = page - addr % page;
            let n = to_page_end.min(PATH_MAX - got);
            let local = libc::iovec {
                iov_base: p.buf[got..].as_mut_ptr().cast(),
                iov_len: n,
            };
            let remote = libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: n,
            };
            // SAFETY: `local` is `n` bytes of `p.buf` (n <= PATH_MAX - got),
            // which we own mutably; the kernel checks the remote range and
            // fails instead of faulting. Neither call is hooked.
            let r = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
            if r != n as isize {
                // within one page a read is all or nothing
                return Err(libc::EFAULT);
            }
            if let Some(i) = p.buf[got..got + n].iter().position(|&b| b == 0) {
                p.len = got + i;
                return Ok(p);
            }
            got += n;
            addr = match addr.checked_add(n) {
                Some(a) => a,
                None => return Err(libc::EFAULT),
            };
        }
        Err(libc::ENAMETOOLONG)
    }

    /// The path, without its NUL.
    pub(crate) fn as_cstr(&self) -> &CStr {
        // The buffer holds a NUL at `len` (found by `read`).
        CStr::from_bytes_until_nul(&self.buf[..=self.len]).unwrap_or(c"")
    }
}

/// An `O_PATH` open of `node` (the kernel never calls the driver's `open`
/// for one: no context, `ioctl` is `EBADF`, `fstat` and `close` work): an
/// `O_PATH` fd of a fresh memfd named like the node's, reopened through
/// `/proc/self/fd` and left unregistered; the memfd itself is closed. Needs
/// `/proc` (its errno otherwise). Only `O_CLOEXEC` of `flags` matters here
/// (the caller already checked `O_DIRECTORY`).
pub(crate) fn open_o_path(node: &DevNode, flags: c_int) -> Result<c_int, c_int> {
    // a private fd (a racing `dup` of the number must not meet a bare
    // memfd named like the node); raw syscalls bypass the hooks
    let mfd = uiommufd::user::private_fd(|| {
        // SAFETY: the name is a NUL-terminated static string.
        unsafe {
            libc::syscall(
                libc::SYS_memfd_create,
                node.memfd_name.as_ptr(),
                libc::MFD_CLOEXEC,
            ) as c_int
        }
    });
    let mfd = match mfd {
        Ok(m) => std::os::fd::IntoRawFd::into_raw_fd(m),
        Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let mut link = [0u8; 32];
    let prefix = b"/proc/self/fd/";
    link[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut v = mfd as u64;
    let mut nd = 0;
    loop {
        digits[nd] = b'0' + (v % 10) as u8;
        nd += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..nd {
        link[prefix.len() + i] = digits[nd - 1 - i];
    }
    let want = libc::O_PATH | (flags & libc::O_CLOEXEC);
    // SAFETY: `link` is NUL-terminated (zero-filled past the digits).
    let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, link.as_ptr(), want) };
    let e = errno();
    // SAFETY: closing the memfd made above.
    unsafe { libc::syscall(libc::SYS_close, mfd) };
    if fd < 0 {
        tracing::debug!(
            path = node.path,
            errno = e,
            "O_PATH open: cannot reopen the memfd"
        );
        return Err(e);
    }
    Ok(fd as c_int)
}

/// The components of the absolute path `abs`, lexically normalised.
pub(crate) fn normalise(abs: &[u8]) -> Vec<&[u8]> {
    components(abs)
}

/// The emulated fault-injection file or directory `path` names when opened
/// relative to `dirfd` (see `special`), if any.
///
/// Cheap for ordinary paths: only a final component `fail-nth`, an absolute
/// path under `/sys/kernel/debug`, or a `dirfd` that is an emulated
/// debugfs directory (one atomic load while there is none) go further.
/// Leaves `errno` as it found it.
pub(crate) fn match_special(dirfd: c_int, path: &CStr) -> Option<Special> {
    let path = path.to_bytes();
    if path.is_empty() {
        return None;
    }
    let absolute = path.first() == Some(&b'/');
    if !absolute && dirfd != libc::AT_FDCWD && special::any_dirs() {
        let saved = errno();
        let dir = special::dir_of_fd(dirfd);
        set_errno(saved);
        if let Some(dir) = dir {
            let mut abs = format!("{}/{dir}/", special::DEBUGFS).into_bytes();
            abs.extend_from_slice(path);
            return special::classify(&components(&abs));
        }
    }
    let fail_nth = last_component(path) == b"fail-nth";
    let debugfs = absolute && path.starts_with(b"/sys/kernel/debug");
    if !fail_nth && !debugfs {
        return None;
    }
    let abs = self::absolute(dirfd, path)?;
    special::classify(&components(&abs))
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> c_int {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Set the calling thread's `errno`.
pub(crate) fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() = e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches() {
        let m = |p: &CStr| match match_dev_node(libc::AT_FDCWD, p, libc::O_RDWR) {
            Some(Ok(n)) => Some(n.kind),
            _ => None,
        };
        assert_eq!(m(c"/dev/iommu"), Some(NodeKind::Iommu));
        assert_eq!(m(c"//dev//iommu"), Some(NodeKind::Iommu));
        assert_eq!(m(c"/dev/./iommu"), Some(NodeKind::Iommu));
        assert_eq!(m(c"/tmp/../dev/iommu"), Some(NodeKind::Iommu));
        assert_eq!(m(c"/dev/iommu/"), None);
        assert_eq!(m(c"/dev/iommux"), None);
        assert_eq!(m(c"/tmp/iommu"), None);
        assert_eq!(m(c"/etc/passwd"), None);
        assert_eq!(m(c""), None);
        assert_eq!(m(c"/dev/vfio/vfio"), Some(NodeKind::VfioContainer));
        assert_eq!(m(c"/dev/vfio/../vfio/vfio"), Some(NodeKind::VfioContainer));
        assert_eq!(m(c"/dev/vfio"), None);
        assert_eq!(m(c"/dev/vfio/12"), None);
        assert_eq!(m(c"/tmp/vfio"), None);
    }

    #[test]
    fn refused_forms() {
        let e = |p: &CStr, f: c_int| match match_dev_node(libc::AT_FDCWD, p, f) {
            Some(Err(e)) => e,
            other => panic!("{p:?} {f:#x}: {other:?}"),
        };
        let rw = libc::O_RDWR;
        assert_eq!(e(c"/dev/iommu/", rw), libc::ENOTDIR);
        assert_eq!(e(c"/dev/iommu//", rw | libc::O_CREAT), libc::EISDIR);
        assert_eq!(
            e(c"/dev/iommu/", libc::O_PATH | libc::O_CREAT),
            libc::ENOTDIR
        );
        assert_eq!(e(c"/dev/iommu/.", rw | libc::O_CREAT), libc::ENOTDIR);
        assert_eq!(e(c"/dev/iommu/..", rw), libc::ENOTDIR);
        assert_eq!(e(c"/dev/iommu/../iommu", rw), libc::ENOTDIR);
        assert_eq!(e(c"/dev/vfio/vfio/x", rw), libc::ENOTDIR);
        assert_eq!(e(c"/dev/iommu", rw | libc::O_DIRECTORY), libc::ENOTDIR);
        assert_eq!(
            e(c"/dev/iommu", rw | libc::O_CREAT | libc::O_EXCL),
            libc::EEXIST
        );
        assert_eq!(
            e(c"/dev/iommu", rw | libc::O_CREAT | libc::O_DIRECTORY),
            libc::EINVAL
        );
        assert_eq!(e(c"/dev/iommu", rw | libc::O_TMPFILE), libc::ENOTDIR);
        assert_eq!(
            e(c"/dev/iommu", libc::O_RDONLY | libc::O_TMPFILE),
            libc::EINVAL
        );
        assert_eq!(
            e(c"/dev/iommu", libc::O_PATH | libc::O_DIRECTORY),
            libc::ENOTDIR
        );
        assert!(matches!(
            match_dev_node(
                libc::AT_FDCWD,
                c"/dev/iommu",
                libc::O_PATH | libc::O_CREAT | libc::O_EXCL
            ),
            Some(Ok(_))
        ));
        assert!(matches!(
            match_dev_node(libc::AT_FDCWD, c"/dev/iommu", rw | libc::O_CREAT),
            Some(Ok(_))
        ));
    }

    #[test]
    fn user_path() {
        let p = UserPath::read(c"/dev/iommu".as_ptr()).unwrap();
        assert_eq!(p.as_cstr(), c"/dev/iommu");
        assert_eq!(UserPath::read(8 as *const c_char).err(), Some(libc::EFAULT));
        let long = vec![b'a'; PATH_MAX];
        assert_eq!(
            UserPath::read(long.as_ptr().cast()).err(),
            Some(libc::ENAMETOOLONG)
        );
        let mut ok = vec![b'a'; PATH_MAX];
        ok[PATH_MAX - 1] = 0;
        assert_eq!(
            UserPath::read(ok.as_ptr().cast())
                .unwrap()
                .as_cstr()
                .to_bytes()
                .len(),
            PATH_MAX - 1
        );
    }

    #[test]
    fn vfio_nodes() {
        let declared = |n: VfioNode| matches!(n, VfioNode::Group(100) | VfioNode::Cdev(0));
        let m = |p: &CStr| match_vfio_node(libc::AT_FDCWD, p, declared);
        let (group, cdev) = (VfioNode::Group(100), VfioNode::Cdev(0));
        for (path, want) in [
            (c"/dev/vfio/100", (group, Form::Exact)),
            (c"//dev/./vfio/100", (group, Form::Exact)),
            (c"/dev/vfio/devices/vfio0", (cdev, Form::Exact)),
            (c"/dev/vfio/100/", (group, Form::TrailingSlash)),
            (c"/dev/vfio/devices/vfio0/x", (cdev, Form::Through)),
        ] {
            assert_eq!(m(path), Some(want), "{path:?}");
        }
        assert_eq!(m(c"/dev/vfio/0100"), None);
        assert_eq!(m(c"/dev/vfio/101"), None, "undeclared: the kernel's");
        assert_eq!(m(c"/dev/vfio/devices/vfio1"), None);
        assert_eq!(m(c"/dev/vfio/devices/vfio00"), None);
        assert_eq!(m(c"/dev/vfio/vfio"), None);
        assert_eq!(m(c"/dev/vfio"), None);
        assert_eq!(m(c"/etc/passwd"), None);
    }
}
