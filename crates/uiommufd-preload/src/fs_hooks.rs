//! The hooks for emulated VFIO devices that are not `open`/`ioctl`/`close`
//! (see `vfio` for what they emulate): the `stat` family, `readlink*`,
//! `realpath`, `access`/`faccessat`, `mmap`, and the vectored positional
//! I/O of engine fds. Each forwards after one atomic load when nothing of
//! ours can be involved (no device declared for path-taking calls; the fd
//! not an engine fd for fd-taking ones).

use std::ffi::{c_char, c_int, c_void};

use uiommufd::files;

use crate::vfio::{self, Act};
use crate::{engine, engine_io, fail, fail_ssize, missing, real, set_errno, sync};

// the hooks hand `struct stat64` to code written for `struct stat`
const _: () = assert!(std::mem::size_of::<libc::stat>() == std::mem::size_of::<libc::stat64>());

/// A `stat(path, buf)`-shaped hook.
macro_rules! stat_hook {
    ($(#[$m:meta])* $name:ident($($pre:ident: $pty:ty,)*) $st:ty) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($pre: $pty,)* path: *const c_char, buf: *mut $st) -> c_int {
            let Some(real) = real::$name() else { return missing() };
            // SAFETY: `classify` reads the path fault-safely.
            match unsafe { vfio::classify(libc::AT_FDCWD, path) } {
                // SAFETY: forwarding the caller's arguments unchanged.
                Act::Forward => unsafe { real($($pre,)* path, buf) },
                // SAFETY: as above, with the redirected path.
                Act::Redirect(p) => unsafe { real($($pre,)* p.as_ptr(), buf) },
                Act::Node(n, f) => vfio::stat_node(n, f, buf.cast()),
                Act::Fail(e) => fail(e),
            }
        }
    };
}

stat_hook!(
    /// `stat(2)`: declared VFIO nodes are character devices; sysfs paths of
    /// declared devices are redirected.
    stat() libc::stat
);
stat_hook!(
    /// `stat64`: as [`stat()`].
    stat64() libc::stat64
);
stat_hook!(
    /// `lstat(2)`: as [`stat()`].
    lstat() libc::stat
);
stat_hook!(
    /// `lstat64`: as [`stat()`].
    lstat64() libc::stat64
);
stat_hook!(
    /// `__xstat` (programs built before glibc 2.33): as [`stat()`].
    __xstat(ver: c_int,) libc::stat
);
stat_hook!(
    /// `__xstat64`: as [`stat()`].
    __xstat64(ver: c_int,) libc::stat64
);
stat_hook!(
    /// `__lxstat`: as [`stat()`].
    __lxstat(ver: c_int,) libc::stat
);
stat_hook!(
    /// `__lxstat64`: as [`stat()`].
    __lxstat64(ver: c_int,) libc::stat64
);

/// An `fstatat(dirfd, path, buf, flags)`-shaped hook.
macro_rules! fstatat_hook {
    ($(#[$m:meta])* $name:ident($($pre:ident: $pty:ty,)*) $st:ty) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            $($pre: $pty,)*
            dirfd: c_int,
            path: *const c_char,
            buf: *mut $st,
            flags: c_int,
        ) -> c_int {
            let Some(real) = real::$name() else { return missing() };
            // SAFETY: the path is read fault-safely.
            if unsafe { vfio::empty_path_on_engine_fd(dirfd, path, flags) } {
                // SAFETY: the real call into our local buffer.
                let r = vfio::fstat_engine(dirfd, buf.cast(), |st| unsafe {
                    real($($pre,)* dirfd, path, st.cast(), flags)
                });
                if let Some(r) = r {
                    return r;
                }
            }
            // SAFETY: `classify` reads the path fault-safely.
            match unsafe { vfio::classify(dirfd, path) } {
                // SAFETY: forwarding the caller's arguments unchanged.
                Act::Forward => unsafe { real($($pre,)* dirfd, path, buf, flags) },
                // SAFETY: as above, with the (absolute) redirected path.
                Act::Redirect(p) => unsafe { real($($pre,)* dirfd, p.as_ptr(), buf, flags) },
                Act::Node(n, f) => vfio::stat_node(n, f, buf.cast()),
                Act::Fail(e) => fail(e),
            }
        }
    };
}

fstatat_hook!(
    /// `fstatat(2)`: as [`stat()`]; `AT_EMPTY_PATH` on an engine fd as
    /// [`fstat()`].
    fstatat() libc::stat
);
fstatat_hook!(
    /// `fstatat64`: as [`fstatat()`].
    fstatat64() libc::stat64
);
fstatat_hook!(
    /// `__fxstatat`: as [`fstatat()`].
    __fxstatat(ver: c_int,) libc::stat
);
fstatat_hook!(
    /// `__fxstatat64`: as [`fstatat()`].
    __fxstatat64(ver: c_int,) libc::stat64
);

/// An `fstat(fd, buf)`-shaped hook.
macro_rules! fstat_hook {
    ($(#[$m:meta])* $name:ident($($pre:ident: $pty:ty,)*) $st:ty) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($pre: $pty,)* fd: c_int, buf: *mut $st) -> c_int {
            let Some(real) = real::$name() else { return missing() };
            if files::is_engine_fd(fd) {
                // SAFETY: the real call into our local buffer.
                let r = vfio::fstat_engine(fd, buf.cast(), |st| unsafe {
                    real($($pre,)* fd, st.cast())
                });
                if let Some(r) = r {
                    return r;
                }
            }
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real($($pre,)* fd, buf) }
        }
    };
}

fstat_hook!(
    /// `fstat(2)`: an engine fd whose file has a `stat_as` (a VFIO device
    /// cdev) reports its type and device number; every other fd is
    /// forwarded after one atomic load.
    fstat() libc::stat
);
fstat_hook!(
    /// `fstat64`: as [`fstat()`].
    fstat64() libc::stat64
);
fstat_hook!(
    /// `__fxstat`: as [`fstat()`].
    __fxstat(ver: c_int,) libc::stat
);
fstat_hook!(
    /// `__fxstat64`: as [`fstat()`].
    __fxstat64(ver: c_int,) libc::stat64
);

/// `statx(2)`: as [`fstatat()`].
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: libc::c_uint,
    buf: *mut libc::statx,
) -> c_int {
    let Some(real) = real::statx() else {
        return missing();
    };
    // SAFETY: the path is read fault-safely.
    if unsafe { vfio::empty_path_on_engine_fd(dirfd, path, flags) } {
        // SAFETY: the real call into our local buffer.
        let r = vfio::statx_engine(dirfd, buf, |st| unsafe {
            real(dirfd, path, flags, mask, st)
        });
        if let Some(r) = r {
            return r;
        }
    }
    // SAFETY: `classify` reads the path fault-safely.
    match unsafe { vfio::classify(dirfd, path) } {
        // SAFETY: forwarding the caller's arguments unchanged.
        Act::Forward => unsafe { real(dirfd, path, flags, mask, buf) },
        // SAFETY: as above, with the (absolute) redirected path.
        Act::Redirect(p) => unsafe { real(dirfd, p.as_ptr(), flags, mask, buf) },
        Act::Node(n, f) => vfio::statx_node(n, f, mask, buf),
        Act::Fail(e) => fail(e),
    }
}

/// A `readlink`-shaped hook: a node is not a symlink (`EINVAL`).
macro_rules! readlink_hook {
    ($(#[$m:meta])* $name:ident($dirfd:expr; $($a:ident: $t:ty),*; $($post:ident: $pt:ty),*)) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($a: $t,)* path: *const c_char, $($post: $pt),*) -> libc::ssize_t {
            let Some(real) = real::$name() else { return fail_ssize(libc::ENOSYS) };
            // SAFETY: `classify` reads the path fault-safely.
            match unsafe { vfio::classify($dirfd, path) } {
                // SAFETY: forwarding the caller's arguments unchanged.
                Act::Forward => unsafe { real($($a,)* path, $($post),*) },
                // SAFETY: as above, with the redirected path.
                Act::Redirect(p) => unsafe { real($($a,)* p.as_ptr(), $($post),*) },
                Act::Node(_, vfio_form) => fail_ssize(if vfio_form == crate::path::Form::Exact {
                    libc::EINVAL
                } else {
                    libc::ENOTDIR
                }),
                Act::Fail(e) => fail_ssize(e),
            }
        }
    };
}

readlink_hook!(
    /// `readlink(2)`: sysfs paths of declared devices are redirected (QEMU
    /// reads `DEV/iommu_group`).
    readlink(libc::AT_FDCWD;; buf: *mut c_char, size: libc::size_t)
);
readlink_hook!(
    /// `readlinkat(2)`: as [`readlink()`].
    readlinkat(dirfd; dirfd: c_int; buf: *mut c_char, size: libc::size_t)
);
readlink_hook!(
    /// Fortified `readlink`: as [`readlink()`].
    __readlink_chk(libc::AT_FDCWD;; buf: *mut c_char, size: libc::size_t, buflen: libc::size_t)
);
readlink_hook!(
    /// Fortified `readlinkat`: as [`readlink()`].
    __readlinkat_chk(dirfd; dirfd: c_int; buf: *mut c_char, size: libc::size_t, buflen: libc::size_t)
);

/// `realpath(3)`: sysfs paths of declared devices resolve in the tree;
/// a node resolves to its own path.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    let Some(real) = real::realpath() else {
        set_errno(libc::ENOSYS);
        return std::ptr::null_mut();
    };
    // SAFETY: `classify` reads the path fault-safely.
    match unsafe { vfio::classify(libc::AT_FDCWD, path) } {
        // SAFETY: forwarding the caller's arguments unchanged.
        Act::Forward => unsafe { real(path, resolved) },
        // SAFETY: as above, with the redirected path.
        Act::Redirect(p) => unsafe { real(p.as_ptr(), resolved) },
        Act::Node(n, f) => vfio::realpath_node(n, f, resolved),
        Act::Fail(e) => {
            set_errno(e);
            std::ptr::null_mut()
        }
    }
}

/// Fortified `realpath`: as [`realpath()`] (libc checks `resolvedlen`).
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn __realpath_chk(
    path: *const c_char,
    resolved: *mut c_char,
    resolvedlen: libc::size_t,
) -> *mut c_char {
    let Some(real) = real::__realpath_chk() else {
        set_errno(libc::ENOSYS);
        return std::ptr::null_mut();
    };
    // SAFETY: `classify` reads the path fault-safely.
    match unsafe { vfio::classify(libc::AT_FDCWD, path) } {
        // SAFETY: forwarding the caller's arguments unchanged.
        Act::Forward => unsafe { real(path, resolved, resolvedlen) },
        // SAFETY: as above, with the redirected path.
        Act::Redirect(p) => unsafe { real(p.as_ptr(), resolved, resolvedlen) },
        Act::Node(n, f) if resolvedlen >= libc::PATH_MAX as usize || resolved.is_null() => {
            vfio::realpath_node(n, f, resolved)
        }
        // SAFETY: libc's own check aborts as it would (buffer too small).
        Act::Node(..) => unsafe { real(path, resolved, resolvedlen) },
        Act::Fail(e) => {
            set_errno(e);
            std::ptr::null_mut()
        }
    }
}

/// `access` on a node: `0600` owned by the caller.
fn access_node(form: crate::path::Form, mode: c_int) -> c_int {
    if mode & !(libc::R_OK | libc::W_OK | libc::X_OK) != 0 {
        return fail(libc::EINVAL);
    }
    if form != crate::path::Form::Exact {
        return fail(libc::ENOTDIR);
    }
    if mode & libc::X_OK != 0 {
        return fail(libc::EACCES);
    }
    0
}

/// An `access(path, mode)`-shaped hook.
macro_rules! access_hook {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: c_int) -> c_int {
            let Some(real) = real::$name() else { return missing() };
            // SAFETY: `classify` reads the path fault-safely.
            match unsafe { vfio::classify(libc::AT_FDCWD, path) } {
                // SAFETY: forwarding the caller's arguments unchanged.
                Act::Forward => unsafe { real(path, mode) },
                // SAFETY: as above, with the redirected path.
                Act::Redirect(p) => unsafe { real(p.as_ptr(), mode) },
                Act::Node(_, f) => access_node(f, mode),
                Act::Fail(e) => fail(e),
            }
        }
    };
}

access_hook!(
    /// `access(2)`: declared nodes are `rw` for the caller; sysfs paths of
    /// declared devices are redirected.
    access
);
access_hook!(
    /// `euidaccess(3)`: as [`access()`].
    euidaccess
);
access_hook!(
    /// `eaccess(3)`: as [`access()`].
    eaccess
);

/// `faccessat(2)`: as [`access()`].
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn faccessat(
    dirfd: c_int,
    path: *const c_char,
    mode: c_int,
    flags: c_int,
) -> c_int {
    let Some(real) = real::faccessat() else {
        return missing();
    };
    // SAFETY: `classify` reads the path fault-safely.
    match unsafe { vfio::classify(dirfd, path) } {
        // SAFETY: forwarding the caller's arguments unchanged.
        Act::Forward => unsafe { real(dirfd, path, mode, flags) },
        // SAFETY: as above, with the (absolute) redirected path.
        Act::Redirect(p) => unsafe { real(dirfd, p.as_ptr(), mode, flags) },
        Act::Node(_, f) => access_node(f, mode),
        Act::Fail(e) => fail(e),
    }
}

/// An `mmap`-shaped hook: engine fds map what their file says
/// ([`files::EngineFile::mmap`]); every other fd after one atomic load.
macro_rules! mmap_hook {
    ($(#[$m:meta])* $name:ident($off:ty)) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            addr: *mut c_void,
            len: libc::size_t,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            offset: $off,
        ) -> *mut c_void {
            let Some(real) = real::$name() else {
                set_errno(libc::ENOSYS);
                return libc::MAP_FAILED;
            };
            if fd >= 0
                && flags & libc::MAP_ANONYMOUS == 0
                && files::is_engine_fd(fd)
                && !sync::foreign()
            {
                let r = crate::guard(|| {
                    let _c = sync::enter();
                    vfio::engine_mmap(fd, len, prot, flags, offset, |tfd, toff| {
                        // SAFETY: the caller's mapping, of the engine's file.
                        unsafe { real(addr, len, prot, flags, tfd, toff) }
                    })
                });
                match r {
                    Some(None) => {}
                    Some(Some(Ok(p))) => return p,
                    Some(Some(Err(e))) => {
                        set_errno(e);
                        return libc::MAP_FAILED;
                    }
                    None => return libc::MAP_FAILED,
                }
            }
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(addr, len, prot, flags, fd, offset) }
        }
    };
}

mmap_hook!(
    /// `mmap(2)`: engine fds (VFIO device regions) map the memory their
    /// file names, with the caller's protection and flags.
    mmap(libc::off_t)
);
mmap_hook!(
    /// `mmap64`: as [`mmap()`].
    mmap64(libc::off64_t)
);

/// A `preadv`/`pwritev`-shaped hook.
macro_rules! rwv_hook {
    ($(#[$m:meta])* $name:ident($off:ty) => $eng:ident) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const libc::iovec,
            iovcnt: c_int,
            offset: $off,
        ) -> libc::ssize_t {
            if files::is_engine_fd(fd) {
                if let Some(r) = engine_io(|| engine::$eng(fd, iov as u64, iovcnt, offset)) {
                    return r;
                }
            }
            let Some(real) = real::$name() else { return fail_ssize(libc::ENOSYS) };
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(fd, iov, iovcnt, offset) }
        }
    };
    ($(#[$m:meta])* $name:ident($off:ty, flags) => $eng:ident) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const libc::iovec,
            iovcnt: c_int,
            offset: $off,
            flags: c_int,
        ) -> libc::ssize_t {
            if files::is_engine_fd(fd) {
                if let Some(r) = engine_io(|| engine::$eng(fd, iov as u64, iovcnt, offset, flags)) {
                    return r;
                }
            }
            let Some(real) = real::$name() else { return fail_ssize(libc::ENOSYS) };
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(fd, iov, iovcnt, offset, flags) }
        }
    };
}

rwv_hook!(
    /// `preadv(2)`: engine fds read their file at the offset, segment by
    /// segment; every other fd after one atomic load.
    preadv(libc::off_t) => preadv
);
rwv_hook!(
    /// `preadv64`: as [`preadv()`].
    preadv64(libc::off64_t) => preadv
);
rwv_hook!(
    /// `pwritev(2)`: as [`preadv()`], writing.
    pwritev(libc::off_t) => pwritev
);
rwv_hook!(
    /// `pwritev64`: as [`pwritev()`].
    pwritev64(libc::off64_t) => pwritev
);
rwv_hook!(
    /// `preadv2(2)`: as [`preadv()`]; offset -1 reads as `readv`.
    preadv2(libc::off_t, flags) => preadv2
);
rwv_hook!(
    /// `preadv64v2`: as [`preadv2()`].
    preadv64v2(libc::off64_t, flags) => preadv2
);
rwv_hook!(
    /// `pwritev2(2)`: as [`pwritev()`]; offset -1 writes as `writev`.
    pwritev2(libc::off_t, flags) => pwritev2
);
rwv_hook!(
    /// `pwritev64v2`: as [`pwritev2()`].
    pwritev64v2(libc::off64_t, flags) => pwritev2
);
