//! The emulated device nodes and the path matching that finds them.
//!
//! [`DEV_NODES`] is the table of paths the shim serves. Adding a device is
//! one row plus one [`NodeKind`] variant (and its open function in `lib.rs`).
//!
//! Matching is cheap for ordinary paths: only when the final component of the
//! path equals the final component of some node (`iommu`, `vfio`) is the path made
//! absolute (relative paths are resolved against the cwd, or for `openat`
//! against `/proc/self/fd/<dirfd>`) and lexically normalised (`//`, `.`,
//! `..`). Symlinks are not followed: `/dev/iommu` is matched by name only.

use std::ffi::{c_int, CStr};

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
        let link = format!("/proc/self/fd/{dirfd}\0");
        // SAFETY: `link` is NUL-terminated and `buf` is writable for its length.
        let n = unsafe { libc::readlink(link.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 || n as usize >= buf.len() {
            return None;
        }
        buf.truncate(n as usize);
    }
    (buf.first() == Some(&b'/')).then_some(buf)
}

/// The node `path` names when opened relative to `dirfd`, if any.
///
/// Leaves `errno` as it found it.
pub(crate) fn match_dev_node(dirfd: c_int, path: &CStr) -> Option<&'static DevNode> {
    let path = path.to_bytes();
    let last = last_component(path);
    if last.is_empty() {
        return None; // "" or a trailing slash: never a device node
    }
    let candidates = || {
        DEV_NODES
            .iter()
            .filter(|n| last_component(n.path.as_bytes()) == last)
    };
    candidates().next()?;

    let abs: Vec<u8>;
    let abs: &[u8] = if path.first() == Some(&b'/') {
        path
    } else {
        let saved = errno();
        let base = base_dir(dirfd);
        set_errno(saved);
        let mut v = base?;
        v.push(b'/');
        v.extend_from_slice(path);
        abs = v;
        &abs
    };
    let comps = components(abs);
    candidates().find(|n| components(n.path.as_bytes()) == comps)
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
    let abs: Vec<u8>;
    let abs: &[u8] = if absolute {
        path
    } else {
        let saved = errno();
        let base = base_dir(dirfd);
        set_errno(saved);
        let mut v = base?;
        v.push(b'/');
        v.extend_from_slice(path);
        abs = v;
        &abs
    };
    special::classify(&components(abs))
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
        let m = |p: &CStr| match_dev_node(libc::AT_FDCWD, p).map(|n| n.kind);
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
}
