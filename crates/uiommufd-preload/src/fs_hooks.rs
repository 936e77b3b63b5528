//! The hooks for emulated VFIO devices that are not `open`/`ioctl`/`close`
//! (see `vfio` for what they emulate): the `stat` family, `readlink*`,
//! `realpath`, `access`/`faccessat`, `mmap`, and the vectored positional
//! I/O of engine fds. Each forwards after one atomic load when nothing of
//! ours can be involved (no device declared for path-taking calls; the fd
//! not an engine fd for fd-taking ones).

use std::ffi::{c_char, c_int, c_void};

use uiommufd::plumbing::files;

use crate::path::{Form, VfioNode};
use crate::vfio::{self, Act};
use crate::{engine, fail, fail_null, fail_ssize, missing, real, set_errno, sync};

// the hooks hand `struct stat64` to code written for `struct stat`
const _: () = assert!(std::mem::size_of::<libc::stat>() == std::mem::size_of::<libc::stat64>());

/// The part of a path-taking hook after [`vfio::classify`] looked at the
/// caller's `path` (relative to `dirfd`): `real` on that path, or on the
/// redirected sysfs path of a declared device; `node` for a declared VFIO
/// node (and how the path reaches it); `fail` with the errno of a path that
/// cannot be read.
///
/// # Safety
/// `path` is the caller's argument (read fault-safely); `real` gets it, or
/// an absolute path of ours, in its place.
unsafe fn by_path<R>(
    dirfd: c_int,
    path: *const c_char,
    real: impl FnOnce(*const c_char) -> R,
    node: impl FnOnce(VfioNode, Form) -> R,
    fail: impl FnOnce(c_int) -> R,
) -> R {
    // SAFETY: `classify` reads the path fault-safely.
    match unsafe { vfio::classify(dirfd, path) } {
        Act::Forward => real(path),
        Act::Redirect(p) => real(p.as_ptr()),
        Act::Node(n, f) => node(n, f),
        Act::Fail(e) => fail(e),
    }
}

/// A path-taking hook: the real function (`$missing` when libc lacks
/// it), then `before` (which may return), then [`by_path`] on `$path`
/// relative to `$dirfd`: `|$p| $call` runs the real function with the
/// path maybe redirected, `$node` serves a declared node and `$fail` a
/// path that cannot be read.
macro_rules! path_hook {
    (
        $(#[$m:meta])*
        $name:ident($($a:ident: $t:ty),* $(,)?) -> $ret:ty;
        $real:ident else $missing:expr;
        $(before $before:block)?
        by_path($dirfd:expr, $path:ident, |$p:ident| $call:expr, $node:expr, $fail:expr $(,)?)
    ) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($a: $t),*) -> $ret {
            let Some($real) = real::$name() else { return $missing };
            $($before)?
            // SAFETY: the caller's path, as `by_path` asks; the real function
            // gets the caller's arguments, the path maybe redirected (to an
            // absolute one).
            unsafe { by_path($dirfd, $path, |$p| $call, $node, $fail) }
        }
    };
}

/// A `stat(path, buf)`-shaped hook.
macro_rules! stat_hook {
    ($($(#[$m:meta])* $name:ident($($pre:ident: $pty:ty,)*) $st:ty);* $(;)?) => {$(
        path_hook!(
            $(#[$m])*
            $name($($pre: $pty,)* path: *const c_char, buf: *mut $st) -> c_int;
            real else missing();
            by_path(
                libc::AT_FDCWD,
                path,
                |p| real($($pre,)* p, buf),
                |n, f| vfio::critical(-1, || vfio::stat_node(n, f, buf.cast())),
                fail,
            )
        );
    )*};
}

stat_hook! {
    /// `stat(2)`: declared VFIO nodes are character devices; sysfs paths of
    /// declared devices are redirected.
    stat() libc::stat;
    /// `stat64`: as [`stat()`].
    stat64() libc::stat64;
    /// `lstat(2)`: as [`stat()`].
    lstat() libc::stat;
    /// `lstat64`: as [`stat()`].
    lstat64() libc::stat64;
    /// `__xstat` (programs built before glibc 2.33): as [`stat()`].
    __xstat(ver: c_int,) libc::stat;
    /// `__xstat64`: as [`stat()`].
    __xstat64(ver: c_int,) libc::stat64;
    /// `__lxstat`: as [`stat()`].
    __lxstat(ver: c_int,) libc::stat;
    /// `__lxstat64`: as [`stat()`].
    __lxstat64(ver: c_int,) libc::stat64;
}

/// An `fstatat(dirfd, path, buf, flags)`-shaped hook.
macro_rules! fstatat_hook {
    ($($(#[$m:meta])* $name:ident($($pre:ident: $pty:ty,)*) $st:ty);* $(;)?) => {$(
        path_hook!(
            $(#[$m])*
            $name($($pre: $pty,)* dirfd: c_int, path: *const c_char, buf: *mut $st, flags: c_int)
                -> c_int;
            real else missing();
            before {
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
            }
            by_path(
                dirfd,
                path,
                |p| real($($pre,)* dirfd, p, buf, flags),
                |n, f| vfio::critical(-1, || vfio::stat_node(n, f, buf.cast())),
                fail,
            )
        );
    )*};
}

fstatat_hook! {
    /// `fstatat(2)`: as [`stat()`]; `AT_EMPTY_PATH` on an engine fd as
    /// [`fstat()`].
    fstatat() libc::stat;
    /// `fstatat64`: as [`fstatat()`].
    fstatat64() libc::stat64;
    /// `__fxstatat`: as [`fstatat()`].
    __fxstatat(ver: c_int,) libc::stat;
    /// `__fxstatat64`: as [`fstatat()`].
    __fxstatat64(ver: c_int,) libc::stat64;
}

/// An `fstat(fd, buf)`-shaped hook.
macro_rules! fstat_hook {
    ($($(#[$m:meta])* $name:ident($($pre:ident: $pty:ty,)*) $st:ty);* $(;)?) => {$(
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
    )*};
}

fstat_hook! {
    /// `fstat(2)`: an engine fd whose file has a `stat_as` (a VFIO device
    /// cdev) reports its type and device number; every other fd is
    /// forwarded after one atomic load.
    fstat() libc::stat;
    /// `fstat64`: as [`fstat()`].
    fstat64() libc::stat64;
    /// `__fxstat`: as [`fstat()`].
    __fxstat(ver: c_int,) libc::stat;
    /// `__fxstat64`: as [`fstat()`].
    __fxstat64(ver: c_int,) libc::stat64;
}

path_hook!(
    /// `statx(2)`: as [`fstatat()`].
    statx(
        dirfd: c_int,
        path: *const c_char,
        flags: c_int,
        mask: libc::c_uint,
        buf: *mut libc::statx,
    ) -> c_int;
    real else missing();
    before {
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
    }
    by_path(
        dirfd,
        path,
        |p| real(dirfd, p, flags, mask, buf),
        |n, f| vfio::critical(-1, || vfio::statx_node(n, f, mask, buf)),
        fail,
    )
);

/// A `readlink`-shaped hook: a node is not a symlink (`EINVAL`).
macro_rules! readlink_hook {
    ($($(#[$m:meta])* $name:ident($dirfd:expr; $($a:ident: $t:ty),*; $($post:ident: $pt:ty),*));* $(;)?) => {$(
        path_hook!(
            $(#[$m])*
            $name($($a: $t,)* path: *const c_char, $($post: $pt),*) -> libc::ssize_t;
            real else fail_ssize(libc::ENOSYS);
            by_path(
                $dirfd,
                path,
                |p| real($($a,)* p, $($post),*),
                |_, form| fail_ssize(if form == Form::Exact {
                    libc::EINVAL
                } else {
                    libc::ENOTDIR
                }),
                fail_ssize,
            )
        );
    )*};
}

readlink_hook! {
    /// `readlink(2)`: sysfs paths of declared devices are redirected (QEMU
    /// reads `DEV/iommu_group`).
    readlink(libc::AT_FDCWD;; buf: *mut c_char, size: libc::size_t);
    /// `readlinkat(2)`: as [`readlink()`].
    readlinkat(dirfd; dirfd: c_int; buf: *mut c_char, size: libc::size_t);
    /// Fortified `readlink`: as [`readlink()`].
    __readlink_chk(libc::AT_FDCWD;; buf: *mut c_char, size: libc::size_t, buflen: libc::size_t);
    /// Fortified `readlinkat`: as [`readlink()`].
    __readlinkat_chk(dirfd; dirfd: c_int; buf: *mut c_char, size: libc::size_t, buflen: libc::size_t);
}

macro_rules! fopen_hook {
    ($($(#[$m:meta])* $name:ident);* $(;)?) => {$(
        path_hook!(
            $(#[$m])*
            $name(path: *const c_char, mode: *const c_char) -> *mut libc::FILE;
            real else fail_null(libc::ENOSYS);
            before {
                // SAFETY: reads the path fault-safely.
                if let Some(f) = unsafe { crate::status_fopen(path, mode) } {
                    return f;
                }
            }
            by_path(
                libc::AT_FDCWD,
                path,
                |p| real(p, mode),
                // stdio on the emulated nodes is not served (their reads
                // and writes would reach the kernel): programs open them
                // with open(2), as VFIO users do
                // SAFETY: forwarding the caller's arguments unchanged.
                |_, _| real(path, mode),
                fail_null,
            )
        );
    )*};
}

fopen_hook! {
    /// `fopen(3)`: sysfs paths of declared devices are redirected, as for
    /// `open` (glibc's `fopen` opens through an internal call that the
    /// `open` hook never sees; programs that read sysfs with stdio, such
    /// as libpci-style tools, need this one).
    fopen;
    /// `fopen64(3)`: as [`fopen()`].
    fopen64;
}

path_hook!(
    /// `realpath(3)`: sysfs paths of declared devices resolve in the tree;
    /// a node resolves to its own path.
    realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char;
    real else fail_null(libc::ENOSYS);
    by_path(
        libc::AT_FDCWD,
        path,
        |p| real(p, resolved),
        |n, f| vfio::critical(std::ptr::null_mut(), || vfio::realpath_node(n, f, resolved)),
        fail_null,
    )
);

path_hook!(
    /// Fortified `realpath`: as [`realpath()`] (libc checks `resolvedlen`).
    __realpath_chk(
        path: *const c_char,
        resolved: *mut c_char,
        resolvedlen: libc::size_t,
    ) -> *mut c_char;
    real else fail_null(libc::ENOSYS);
    by_path(
        libc::AT_FDCWD,
        path,
        |p| real(p, resolved, resolvedlen),
        |n, f| {
            if resolvedlen >= libc::PATH_MAX as usize || resolved.is_null() {
                vfio::critical(std::ptr::null_mut(), || vfio::realpath_node(n, f, resolved))
            } else {
                // SAFETY: libc's own check aborts as it would (buffer
                // too small).
                real(path, resolved, resolvedlen)
            }
        },
        fail_null,
    )
);

/// `access` on a node: `0600` owned by the caller.
fn access_node(form: Form, mode: c_int) -> c_int {
    if mode & !(libc::R_OK | libc::W_OK | libc::X_OK) != 0 {
        return fail(libc::EINVAL);
    }
    if form != Form::Exact {
        return fail(libc::ENOTDIR);
    }
    if mode & libc::X_OK != 0 {
        return fail(libc::EACCES);
    }
    0
}

/// An `access(path, mode)`-shaped hook.
macro_rules! access_hook {
    ($($(#[$m:meta])* $name:ident);* $(;)?) => {$(
        path_hook!(
            $(#[$m])*
            $name(path: *const c_char, mode: c_int) -> c_int;
            real else missing();
            by_path(libc::AT_FDCWD, path, |p| real(p, mode), |_, f| access_node(f, mode), fail)
        );
    )*};
}

access_hook! {
    /// `access(2)`: declared nodes are `rw` for the caller; sysfs paths of
    /// declared devices are redirected.
    access;
    /// `euidaccess(3)`: as [`access()`].
    euidaccess;
    /// `eaccess(3)`: as [`access()`].
    eaccess;
}

path_hook!(
    /// `faccessat(2)`: as [`access()`].
    faccessat(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int;
    real else missing();
    by_path(dirfd, path, |p| real(dirfd, p, mode, flags), |_, f| access_node(f, mode), fail)
);

/// What an `mmap` hook returns after the engine looked at the call
/// (under [`crate::guard`]): `None` to forward it, or the mapping, or
/// `MAP_FAILED` with `errno` set.
fn mapped(r: Option<Option<Result<*mut c_void, c_int>>>) -> Option<*mut c_void> {
    match r {
        Some(None) => None,
        Some(Some(Ok(p))) => Some(p),
        Some(Some(Err(e))) => {
            set_errno(e);
            Some(libc::MAP_FAILED)
        }
        None => Some(libc::MAP_FAILED),
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
            // pinned pages under a MAP_FIXED keep serving the IOMMU
            crate::mem_hooks::before_map(addr, len, flags);
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
                if let Some(p) = mapped(r) {
                    return p;
                }
            } else if fd >= 0
                && flags & libc::MAP_ANONYMOUS == 0
                && crate::table::maybe_registered(fd)
                && !sync::foreign()
            {
                // an emulated /dev/iommu fd: the regions its objects offer
                let r = crate::guard(|| {
                    let _c = sync::enter();
                    crate::iommufd_mmap(fd, len, prot, flags, offset as i64, |tfd, toff| {
                        // SAFETY: the caller's mapping, of the engine's memfd.
                        unsafe { real(addr, len, prot, flags, tfd, toff as $off) }
                    })
                });
                if let Some(p) = mapped(r) {
                    return p;
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

io_hook! {
    /// `preadv(2)`: engine fds read their file at the offset, segment by
    /// segment; every other fd after one atomic load.
    preadv(fd, iov: *const libc::iovec, iovcnt: c_int, offset: libc::off_t)
        => engine::preadv(fd, iov as u64, iovcnt, offset);
    /// `preadv64`: as [`preadv()`].
    preadv64(fd, iov: *const libc::iovec, iovcnt: c_int, offset: libc::off64_t)
        => engine::preadv(fd, iov as u64, iovcnt, offset);
    /// `pwritev(2)`: as [`preadv()`], writing.
    pwritev(fd, iov: *const libc::iovec, iovcnt: c_int, offset: libc::off_t)
        => engine::pwritev(fd, iov as u64, iovcnt, offset);
    /// `pwritev64`: as [`pwritev()`].
    pwritev64(fd, iov: *const libc::iovec, iovcnt: c_int, offset: libc::off64_t)
        => engine::pwritev(fd, iov as u64, iovcnt, offset);
    /// `preadv2(2)`: as [`preadv()`]; offset -1 reads as `readv`.
    preadv2(fd, iov: *const libc::iovec, iovcnt: c_int, offset: libc::off_t, flags: c_int)
        => engine::vectored2(fd, iov as u64, iovcnt, offset, flags, false);
    /// `preadv64v2`: as [`preadv2()`].
    preadv64v2(fd, iov: *const libc::iovec, iovcnt: c_int, offset: libc::off64_t, flags: c_int)
        => engine::vectored2(fd, iov as u64, iovcnt, offset, flags, false);
    /// `pwritev2(2)`: as [`pwritev()`]; offset -1 writes as `writev`.
    pwritev2(fd, iov: *const libc::iovec, iovcnt: c_int, offset: libc::off_t, flags: c_int)
        => engine::vectored2(fd, iov as u64, iovcnt, offset, flags, true);
    /// `pwritev64v2`: as [`pwritev2()`].
    pwritev64v2(fd, iov: *const libc::iovec, iovcnt: c_int, offset: libc::off64_t, flags: c_int)
        => engine::vectored2(fd, iov as u64, iovcnt, offset, flags, true);
}

#[cfg(test)]
mod tests {
    //! The hooks called directly on an engine fd of a test file that has
    //! everything a VFIO device file has: `stat_as`, `ioctl`, `mmap` and
    //! positional I/O.

    use std::ffi::c_void;
    use std::sync::{Arc, Mutex};

    use uiommufd::plumbing::files::{self, EngineFile, FdResolver, MmapTarget, StatAs};
    use uiommufd::user::UserMemory;

    use crate::path::errno;

    const CHECK_CTX: u32 = 0x3b01;
    const PUT_U32: u32 = 0x3b02;
    const NEW_FD: u32 = 0x3b03;

    #[derive(Debug)]
    struct Dev {
        memfd: i32,
        regs: Mutex<[u8; 64]>,
    }

    impl EngineFile for Dev {
        fn kind(&self) -> &'static str {
            "testdev"
        }
        fn positional(&self) -> bool {
            true
        }
        fn read_at(&self, buf: &mut [u8], offset: u64, _nb: bool) -> uiommufd::Result<usize> {
            let r = self.regs.lock().unwrap();
            let o = (offset as usize).min(r.len());
            let n = buf.len().min(r.len() - o);
            buf[..n].copy_from_slice(&r[o..o + n]);
            Ok(n)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> uiommufd::Result<usize> {
            let mut r = self.regs.lock().unwrap();
            let o = (offset as usize).min(r.len());
            let n = buf.len().min(r.len() - o);
            r[o..o + n].copy_from_slice(&buf[..n]);
            Ok(n)
        }
        fn ioctl(
            &self,
            cmd: u32,
            arg: u64,
            mem: &dyn UserMemory,
            fds: &dyn FdResolver,
        ) -> uiommufd::Result<i64> {
            match cmd {
                CHECK_CTX => match fds.context(arg as i32) {
                    Some(_) => Ok(7),
                    None => uiommufd::bail!(EBADF, "fd {arg} is no iommufd"),
                },
                PUT_U32 => {
                    mem.write(arg, &0xfeed_beefu32.to_ne_bytes())?;
                    Ok(0)
                }
                NEW_FD => Ok(i64::from(files::create(
                    Arc::new(Dev {
                        memfd: self.memfd,
                        regs: Mutex::new([0; 64]),
                    }),
                    true,
                )?)),
                _ => uiommufd::bail!(ENOTTY, "no ioctl {cmd:#x}"),
            }
        }
        fn mmap(&self, offset: u64, len: u64, _write: bool) -> uiommufd::Result<MmapTarget> {
            if offset + len > 2 * 4096 {
                uiommufd::bail!(EINVAL, "beyond the region");
            }
            Ok(MmapTarget {
                fd: self.memfd,
                offset: offset + 4096,
            })
        }
        fn stat_as(&self) -> Option<StatAs> {
            Some(StatAs {
                mode: libc::S_IFCHR | 0o600,
                rdev: libc::makedev(240, 7),
            })
        }
    }

    fn dev() -> (i32, Arc<Dev>) {
        // SAFETY: a static name; raw memfd, not our hook.
        let memfd = unsafe { libc::memfd_create(c"testdev-bar".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(memfd >= 0);
        // SAFETY: sizing our own memfd.
        assert_eq!(unsafe { libc::ftruncate(memfd, 3 * 4096) }, 0);
        let d = Arc::new(Dev {
            memfd,
            regs: Mutex::new([0; 64]),
        });
        (files::create(d.clone(), true).unwrap(), d)
    }

    #[test]
    fn fstat_reports_the_files_type_and_rdev() {
        let (fd, _d) = dev();
        // SAFETY: the hooks with valid buffers.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(crate::fs_hooks::fstat(fd, &mut st), 0);
            assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFCHR);
            assert_eq!(st.st_rdev, libc::makedev(240, 7));
            let mut st64: libc::stat64 = std::mem::zeroed();
            assert_eq!(crate::fs_hooks::fstat64(fd, &mut st64), 0);
            assert_eq!(st64.st_rdev, libc::makedev(240, 7));
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(
                crate::fs_hooks::fstatat(fd, c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH),
                0
            );
            assert_eq!(st.st_mode, libc::S_IFCHR | 0o600);
            let mut stx: libc::statx = std::mem::zeroed();
            assert_eq!(
                crate::fs_hooks::statx(
                    fd,
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH,
                    libc::STATX_BASIC_STATS,
                    &mut stx
                ),
                0
            );
            assert_eq!(u32::from(stx.stx_mode) & libc::S_IFMT, libc::S_IFCHR);
            assert_eq!((stx.stx_rdev_major, stx.stx_rdev_minor), (240, 7));
            // a bad buffer is EFAULT, not a crash
            assert_eq!(crate::fs_hooks::fstat(fd, 16 as *mut libc::stat), -1);
            assert_eq!(errno(), libc::EFAULT);
            // an ordinary fd is the kernel's
            let mut st: libc::stat = std::mem::zeroed();
            let null = crate::open(c"/dev/null".as_ptr(), libc::O_RDONLY, 0);
            assert_eq!(crate::fs_hooks::fstat(null, &mut st), 0);
            assert_eq!(st.st_rdev, libc::makedev(1, 3));
            crate::close(null);
            assert_eq!(crate::close(fd), 0);
        }
    }

    #[test]
    fn ioctl_reaches_the_file_with_the_fd_table() {
        let (fd, _d) = dev();
        // SAFETY: the hooks with valid arguments.
        unsafe {
            let iommu = crate::open(c"/dev/iommu".as_ptr(), libc::O_RDWR, 0);
            assert!(iommu >= 0);
            assert_eq!(
                crate::ioctl(fd, CHECK_CTX.into(), iommu as usize as *mut c_void),
                7
            );
            let null = crate::open(c"/dev/null".as_ptr(), libc::O_RDONLY, 0);
            assert_eq!(
                crate::ioctl(fd, CHECK_CTX.into(), null as usize as *mut c_void),
                -1
            );
            assert_eq!(errno(), libc::EBADF);
            let mut v = 0u32;
            assert_eq!(
                crate::ioctl(fd, PUT_U32.into(), (&mut v as *mut u32).cast()),
                0
            );
            assert_eq!(v, 0xfeed_beef);
            assert_eq!(crate::ioctl(fd, PUT_U32.into(), 8 as *mut c_void), -1);
            assert_eq!(errno(), libc::EFAULT);
            assert_eq!(crate::ioctl(fd, 0x3bff, std::ptr::null_mut()), -1);
            assert_eq!(errno(), libc::ENOTTY);
            // the upper bits of the request are dropped, as by the kernel
            assert_eq!(
                crate::ioctl(
                    fd,
                    (1u64 << 32 | u64::from(CHECK_CTX)) as _,
                    iommu as usize as *mut c_void
                ),
                7
            );
            // an ioctl that makes an fd: registered, usable, closable
            let nfd = crate::ioctl(fd, NEW_FD.into(), std::ptr::null_mut());
            assert!(nfd >= 0);
            assert!(files::get(nfd).is_some());
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(crate::fs_hooks::fstat(nfd, &mut st), 0);
            assert_eq!(st.st_rdev, libc::makedev(240, 7));
            assert_eq!(crate::close(nfd), 0);
            // FIONBIO is answered by the kernel on the backing fd
            let mut on: c_int = 1;
            assert_eq!(
                crate::ioctl(fd, libc::FIONBIO, (&mut on as *mut c_int).cast()),
                0
            );
            crate::close(null);
            crate::close(iommu);
            assert_eq!(crate::close(fd), 0);
        }
    }

    use std::ffi::c_int;

    #[test]
    fn mmap_maps_what_the_file_names() {
        let (fd, d) = dev();
        let page = 4096usize;
        // SAFETY: the hooks with valid arguments; the mappings are ours.
        unsafe {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            let p = crate::fs_hooks::mmap(std::ptr::null_mut(), page, rw, libc::MAP_SHARED, fd, 0);
            assert_ne!(p, libc::MAP_FAILED);
            *(p.cast::<u32>()) = 0x1234_5678;
            // the file's offset 0 is the memfd's page 1
            let mut b = [0u8; 4];
            assert_eq!(libc::pread(d.memfd, b.as_mut_ptr().cast(), 4, 4096), 4);
            assert_eq!(u32::from_ne_bytes(b), 0x1234_5678);
            assert_eq!(libc::munmap(p, page), 0);
            // MAP_PRIVATE, unaligned offsets, zero length, out of range
            let e = |len, flags, off| {
                let p = crate::fs_hooks::mmap64(std::ptr::null_mut(), len, rw, flags, fd, off);
                assert_eq!(p, libc::MAP_FAILED);
                errno()
            };
            assert_eq!(e(page, libc::MAP_PRIVATE, 0), libc::EINVAL);
            assert_eq!(e(page, libc::MAP_SHARED, 1), libc::EINVAL);
            assert_eq!(e(0, libc::MAP_SHARED, 0), libc::EINVAL);
            assert_eq!(e(page, libc::MAP_SHARED, 2 * page as i64), libc::EINVAL);
            // anonymous mappings are untouched
            let a = crate::fs_hooks::mmap(
                std::ptr::null_mut(),
                page,
                rw,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(a, libc::MAP_FAILED);
            assert_eq!(libc::munmap(a, page), 0);
            assert_eq!(crate::close(fd), 0);
            libc::close(d.memfd);
        }
    }

    #[test]
    fn vectored_positional_io() {
        let (fd, d) = dev();
        // SAFETY: the hooks with valid buffers.
        unsafe {
            let a = *b"abcd";
            let b = *b"efgh";
            let w = [
                libc::iovec {
                    iov_base: a.as_ptr() as *mut c_void,
                    iov_len: 4,
                },
                libc::iovec {
                    iov_base: b.as_ptr() as *mut c_void,
                    iov_len: 4,
                },
            ];
            assert_eq!(crate::fs_hooks::pwritev(fd, w.as_ptr(), 2, 10), 8);
            assert_eq!(&d.regs.lock().unwrap()[10..18], b"abcdefgh");
            let mut x = [0u8; 3];
            let mut y = [0u8; 5];
            let r = [
                libc::iovec {
                    iov_base: x.as_mut_ptr().cast(),
                    iov_len: 3,
                },
                libc::iovec {
                    iov_base: y.as_mut_ptr().cast(),
                    iov_len: 5,
                },
            ];
            assert_eq!(crate::fs_hooks::preadv64(fd, r.as_ptr(), 2, 10), 8);
            assert_eq!((&x, &y), (b"abc", b"defgh"));
            // short at the end of the registers
            assert_eq!(crate::fs_hooks::preadv(fd, r.as_ptr(), 2, 60), 4);
            assert_eq!(crate::fs_hooks::preadv2(fd, r.as_ptr(), 2, 10, 0), 8);
            assert_eq!(crate::fs_hooks::preadv2(fd, r.as_ptr(), 2, 10, 0x08), -1);
            assert_eq!(errno(), libc::EOPNOTSUPP);
            assert_eq!(crate::fs_hooks::pwritev2(fd, w.as_ptr(), 2, -5, 0), -1);
            assert_eq!(errno(), libc::EINVAL);
            assert_eq!(
                crate::fs_hooks::preadv(fd, 16 as *const libc::iovec, 2, 0),
                -1
            );
            assert_eq!(errno(), libc::EFAULT);
            assert_eq!(crate::close(fd), 0);
            libc::close(d.memfd);
        }
    }
}
