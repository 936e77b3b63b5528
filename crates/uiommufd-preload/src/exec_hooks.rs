//! `exec` and `posix_spawn`: a `/dev/iommu` fd that survives into a new
//! program image keeps its context, as the kernel's file does.
//!
//! Before the call, [`remote::before_exec`] holds a reference of each
//! inherited fd's context for the new image (bound to its pid, so that an
//! image which never claims it — a statically linked program, or one run
//! without the preload — does not keep the context after it exits) and
//! writes into the fd's memfd the header that names the owner. The new
//! image's preload claims the reference at load
//! ([`remote::adopt_inherited`]). When the call fails, the references are
//! released; after a `posix_spawn` they are bound to the child.
//!
//! glibc's own `exec` calls (`execl`, `execlp` and `execle`, which are
//! variadic and call `execve` inside libc; `system` and `popen`, which use
//! an internal `posix_spawn`) are not interposed. Their new image still
//! finds the header, written when the fd was opened, and claims the
//! context as long as another fd keeps it alive (see [`remote::opened`]).

use std::ffi::{c_char, c_int};

use crate::path::{errno, set_errno};
use crate::{real, remote, sync, table};

/// Hold the inherited contexts for the image `pid` (`None`: a child still
/// to be made), when this process has any emulated fd.
fn prepare(pid: Option<i32>) -> Vec<remote::Kept> {
    if !table::any_registered() {
        return Vec::new();
    }
    let saved = errno();
    let kept = crate::guard(|| {
        let _c = sync::enter();
        remote::before_exec(pid)
    })
    .unwrap_or_default();
    set_errno(saved);
    kept
}

/// Undo [`prepare`] after a failed call, keeping the call's `errno`.
fn failed(kept: Vec<remote::Kept>) {
    if kept.is_empty() {
        return;
    }
    crate::quietly(|| {
        let _c = sync::enter();
        remote::exec_failed(kept);
    });
}

/// An `exec` family call: `call` only returns when it failed.
fn exec_with(call: impl FnOnce() -> Option<c_int>) -> c_int {
    let kept = prepare(Some(sync::raw_getpid()));
    // the owner's own exec: its engine goes to a keeper (see `keeper`)
    let handover = if sync::foreign() {
        None
    } else {
        crate::keeper::hand_over()
    };
    let r = match call() {
        Some(r) => r,
        None => crate::missing(),
    };
    let saved = errno();
    if let Some(h) = handover {
        h.failed();
    }
    set_errno(saved);
    failed(kept);
    r
}

/// An `exec` family hook: the real call, forwarded the caller's arguments
/// unchanged, inside [`exec_with`].
macro_rules! exec_hook {
    ($($(#[$m:meta])* $name:ident($($a:ident: $t:ty),* $(,)?));* $(;)?) => {$(
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($a: $t),*) -> c_int {
            // SAFETY: forwarding the caller's arguments unchanged.
            exec_with(|| real::$name().map(|f| unsafe { f($($a),*) }))
        }
    )*};
}

exec_hook! {
    /// `execve(2)`.
    execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char);
    /// `execv(3)`.
    execv(path: *const c_char, argv: *const *const c_char);
    /// `execvp(3)`.
    execvp(file: *const c_char, argv: *const *const c_char);
    /// `execvpe(3)`.
    execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char);
    /// `fexecve(3)`.
    fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char);
    /// `execveat(2)`.
    execveat(
        dirfd: c_int,
        path: *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
        flags: c_int,
    );
}

/// A `posix_spawn` family call: returns an error number (0 on success)
/// and the child's pid in `*pid` when `pid` is not null.
fn spawn_with(
    pid: *mut libc::pid_t,
    call: impl FnOnce(*mut libc::pid_t) -> Option<c_int>,
) -> c_int {
    let kept = prepare(None);
    let mut child: libc::pid_t = 0;
    let out = if pid.is_null() {
        &mut child as *mut _
    } else {
        pid
    };
    let r = call(out).unwrap_or(libc::ENOSYS);
    if !kept.is_empty() {
        if r == 0 {
            // SAFETY: on success the call wrote the child's pid to `out`,
            // which is the caller's pointer or our local.
            let child = unsafe { *out };
            crate::quietly(|| {
                let _c = sync::enter();
                remote::spawned(kept, child);
            });
        } else {
            failed(kept);
        }
    }
    r
}

/// A `posix_spawn` family hook: the real call inside [`spawn_with`],
/// forwarded the caller's arguments (the pid pointer possibly replaced by
/// our local) unchanged.
macro_rules! spawn_hook {
    ($($(#[$m:meta])* $name:ident($path:ident));* $(;)?) => {$(
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            pid: *mut libc::pid_t,
            $path: *const c_char,
            actions: *const libc::posix_spawn_file_actions_t,
            attr: *const libc::posix_spawnattr_t,
            argv: *const *mut c_char,
            envp: *const *mut c_char,
        ) -> c_int {
            spawn_with(pid, |out| {
                // SAFETY: forwarding the caller's arguments (the pid pointer
                // possibly replaced by our local) unchanged.
                real::$name().map(|f| unsafe { f(out, $path, actions, attr, argv, envp) })
            })
        }
    )*};
}

spawn_hook! {
    /// `posix_spawn(3)`.
    posix_spawn(path);
    /// `posix_spawnp(3)`.
    posix_spawnp(file);
}
