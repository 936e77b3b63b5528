//! # uiommufd-preload
//!
//! An `LD_PRELOAD` shim that gives unmodified, dynamically linked programs a
//! working `/dev/iommu` backed by the [`uiommufd`] engine:
//!
//! ```text
//! cargo build -p uiommufd-preload
//! LD_PRELOAD=target/debug/libuiommufd_preload.so ./my-iommufd-program
//! ```
//!
//! Set `UIOMMUFD_LOG=debug` to see why a call failed.
//!
//! ## What is intercepted
//!
//! * `open`, `open64`, `openat`, `openat64` and the fortified `__open_2`,
//!   `__open64_2`, `__openat_2`, `__openat64_2`. When the path names an
//!   emulated device node (see `path::DEV_NODES`; today only
//!   `/dev/iommu`, matched after lexical normalisation and resolution of
//!   relative paths against the cwd or the `openat` directory fd), the shim
//!   creates a `memfd` named `uiommufd:/dev/iommu` (close-on-exec when
//!   `O_CLOEXEC` was asked), creates a fresh [`uiommufd::Context`] and
//!   registers the fd. Any other path is forwarded untouched.
//! * `ioctl`: on a registered fd, runs
//!   [`uiommufd::dispatch::ioctl`]; the request is truncated to 32 bits
//!   as the kernel's `unsigned int cmd` does. Errors become `-1` + `errno`.
//! * `close`, `close_range`, `closefrom`: unregister (the context dies when
//!   its last fd is closed and no ioctl is in flight on it).
//! * `fork` (`pthread_atfork` handlers), `sendmsg` and `recvmsg`: one context
//!   across processes (see `remote`). A fork child's `/dev/iommu` fds, and
//!   such fds received with `SCM_RIGHTS`, send their ioctls to the process
//!   that opened them, which runs them as the caller; `sendmsg` of such an
//!   fd writes into its memfd how the receiver reaches that process.
//!   `fopen` of `/proc/PID/status` (`fopen64` too) in a process with such an
//!   fd shows the engine's pins of that process in `VmPin` and `VmLck`.
//! * `dup`, `dup2`, `dup3`, `fcntl`/`fcntl64` with `F_DUPFD`/`F_DUPFD_CLOEXEC`:
//!   the new fd refers to the same context; an fd that `dup2`/`dup3` closes
//!   implicitly is unregistered. The file-level ioctls the kernel answers
//!   before any driver (`FIOCLEX`, `FIONCLEX`, `FIONBIO`, `FIOASYNC`,
//!   `FIGETBSZ`) go to the kernel on the backing memfd, which answers them
//!   as it would for the device file.
//! * **Engine fds** — fds the engine itself creates for the program (selftest
//!   access fds, fault queue fds; see [`uiommufd::plumbing::files`]): `close`,
//!   `close_range`, `closefrom` and the `dup` family keep
//!   [`uiommufd::plumbing::files`] informed ([`uiommufd::plumbing::files::on_close`] is called
//!   *before* the real close, so the engine never signals a number a racing
//!   `open` already reused), and `read`, `__read_chk`, `write`, `readv`,
//!   `writev` on them run the engine file's read/write (see `engine`);
//!   `pread`, `pread64`, `pwrite`, `pwrite64` (and the fortified
//!   `__pread_chk`, `__pread64_chk`) its `read_at`/`write_at` (`ESPIPE`
//!   for access and fault fds, as for the kernel's anon-inode files).
//!   `poll`, `ppoll`, `select`, `pselect` and `epoll` are **not** hooked:
//!   an engine fd is a real eventfd whose counter the engine keeps non-zero
//!   exactly while the file has data (`POLLIN`), so the kernel answers them
//!   correctly, for mixed fd sets too.
//! * **Emulated VFIO devices** (see `vfio`): the devices declared in
//!   `UIOMMUFD_DEVICES` are created at load and their sysfs tree written.
//!   `open*` of `/dev/vfio/N` and `/dev/vfio/devices/vfioN` of declared
//!   devices open their group/cdev engine files; `stat`, `stat64`, `lstat`,
//!   `lstat64`, `fstatat`, `fstatat64`, `statx` and the pre-2.33
//!   `__xstat`/`__lxstat`/`__fxstatat` family report those nodes as
//!   character devices; `fstat`, `fstat64`, `__fxstat*` (and `fstatat`/`statx`
//!   with `AT_EMPTY_PATH`) of an engine fd report its file's
//!   [`uiommufd::plumbing::files::EngineFile::stat_as`]; `ioctl` and `mmap`/`mmap64`
//!   of engine fds run the file's `ioctl` (with the fd table resolving
//!   iommufd fds) and map what its `mmap` names; `preadv`, `pwritev`,
//!   `preadv64`, `pwritev64`, `preadv2`, `pwritev2`, `preadv64v2`,
//!   `pwritev64v2` reach the file's positional I/O. `/sys/bus/pci/devices/ADDR`
//!   and `/sys/kernel/iommu_groups/N` of declared devices are redirected to
//!   the tree for the `open*` and `stat` families, `readlink`,
//!   `readlinkat`, `__readlink_chk`, `__readlinkat_chk`, `opendir`,
//!   `realpath`, `__realpath_chk`, `access`, `euidaccess`, `eaccess` and
//!   `faccessat`. While no device is declared each of these hooks costs one
//!   atomic load for a path, and for an fd one load of the engine-fd hint.
//! * **Fd bookkeeping without a system call per ioctl**: `socket`,
//!   `accept`, `accept4`, `socketpair`, `pipe`, `pipe2`, `eventfd`,
//!   `epoll_create`, `epoll_create1`, `timerfd_create`, `signalfd`,
//!   `inotify_init1` and `memfd_create` forget a stale registration of the
//!   number they return (an fd of ours closed behind the shim's back);
//!   `fclose` unregisters a stream's fd of ours (glibc closes it
//!   internally). `UIOMMUFD_CHECK_FDS=1` adds an `fstat` per `ioctl` for
//!   programs that use raw system calls for both.
//! * **Signals** (see `signals`): the shim owns `SIGSEGV` and `SIGBUS` for
//!   the engine's fault-safe copies ([`uiommufd::faultsafe`]); `sigaction`,
//!   `signal`, `bsd_signal`, `sysv_signal`, `__sysv_signal` and `sigset`
//!   record and report the program's own dispositions of those two, which
//!   receive every fault that is not the engine's. For every other signal
//!   they are forwarded, noting that the program may now have a handler
//!   (critical sections block signals from then on; see `sync`).
//! * **Pins that hold** (see `mem_hooks` and [`uiommufd::custody`]):
//!   `munmap`, `madvise` (`MADV_DONTNEED`, `MADV_DONTNEED_LOCKED`,
//!   `MADV_FREE`), `mremap` and `mmap`/`mmap64` with `MAP_FIXED` over
//!   memory pinned for a domain or an access hand the pinned pages to the
//!   engine's custody before the real call (for `mremap`: the engine
//!   follows them to their new address), so the IOMMU keeps the same pages
//!   and the program gets what it asked. While nothing is pinned each of
//!   these hooks costs one atomic load.
//! * **Failure injection** (see `special` and [`uiommufd::inject`]):
//!   opening `/proc/self/task/TID/fail-nth`, `/proc/PID/task/TID/fail-nth`
//!   (our PID) or `/proc/thread-self/fail-nth` gives an engine fd whose
//!   read/write/pread/pwrite implement the kernel's `fail-nth` protocol on
//!   the engine's injection points for that thread; `opendir`, `readdir`,
//!   `readdir64`, `closedir` and the `open*` hooks emulate the
//!   fault-injection directories of `/sys/kernel/debug` (`failslab`,
//!   `fail_page_alloc`, `fail_iommufd`) that the kernel selftest's setup
//!   probes. Opening `/dev/iommu` is itself an injection point
//!   (`context.alloc`, `ENOMEM`).
//!
//! ## Design
//!
//! * **Real functions** are resolved lazily with `dlsym(RTLD_NEXT, ..)` and
//!   cached in atomics (see `real`); no lock, no allocation.
//! * **The fd table** (see `table`) is a `RwLock`ed map behind a lock-free
//!   per-fd hint bitmap: for fds the shim did not create, each hook costs one
//!   atomic load before forwarding. Engine fds live in the engine's own
//!   registry ([`uiommufd::plumbing::files`]), which has the same kind of bitmap
//!   ([`uiommufd::plumbing::files::is_engine_fd`]); the data hooks (`read`, `write`,
//!   ...) check only that bit, `close` and the `dup` family check both (two
//!   loads), and the kind of an fd is decided in the slow path. Keeping the
//!   engine registry authoritative (rather than mirroring it here) means the
//!   engine works the same with and without the shim. An emulated ioctl clones the fd's `Arc`
//!   under the read lock and drops the lock before dispatching, so a `close`
//!   racing on another thread cannot free the context under it.
//! * **Stale entries**: an fd closed behind the shim's back (raw syscall)
//!   is forgotten when any intercepted call that creates fds (`open*`, the
//!   `dup` family, `socket`, `pipe`, `eventfd`, ...) returns its number
//!   again; with `UIOMMUFD_CHECK_FDS=1` every emulated ioctl also checks
//!   with `fstat` that the fd is still the memfd it registered (otherwise
//!   the entry is dropped and the call goes to the kernel).
//! * **Host safety** (see `sync`): every hook's slow path is a critical
//!   section — the thread's asynchronous signals blocked once the program
//!   may have a handler (delivered when the hook returns, as the kernel
//!   delivers them after a system call) and the fork gate entered — so a signal handler never runs on top of our half-done
//!   work, and a `fork` in a threaded program never copies a lock another
//!   thread holds (our atfork prepare handler waits for every critical
//!   section to end). A `vfork` child, recognised by its pid, only forwards
//!   to the kernel and never touches the state it shares with its parent.
//!   Fd-number changes (`close`, `close_range`, `closefrom`, the `dup`
//!   family, and the birth of every emulated or engine fd) run the system
//!   call and the registry update under one lock, so `dup` racing `close`
//!   gives `EBADF` or a working duplicate. The shim's Rust code allocates
//!   from its own heap (mimalloc), never the program's `malloc`, so a
//!   handler that interrupted `malloc` can still call `close`, `dup`,
//!   `read`, `write` or `open` on our fds.
//! * **No re-entrancy hazards**: contexts are dropped (torn down) after the
//!   fd-number lock is released; the shim closes its own fds with the raw
//!   system call (not a cancellation point: a `pthread_cancel` never unwinds
//!   out of a critical section), and a forwarded `close` of any other fd
//!   runs outside critical sections, where it may block and be cancelled as
//!   usual. `getcwd` and `dlsym` are not hooked; the shim's own `fstat`,
//!   `readlink` and `statx` of its fds and paths are raw system calls.
//! * **No unwinding into C**: every piece of Rust reachable from a hook runs
//!   inside [`std::panic::catch_unwind`]; a panic makes the call fail with
//!   `EIO`.
//! * Everything is const-initialised (`static`s, `RwLock::new`,
//!   `BTreeMap::new`), so hooks work even when called from another library's
//!   constructor before this one's has run.
//!
//! ## Known limits
//!
//! * Static binaries, raw `syscall(SYS_open, ..)`/`SYS_ioctl` and libc-internal
//!   calls (glibc's `fopen` uses the non-interposable `__open_nocancel`) bypass
//!   the shim. Use `open`/`openat` to reach `/dev/iommu`.
//! * A `/dev/iommu` fd inherited across `fork` or received with
//!   `SCM_RIGHTS` reaches the context in the process that opened it (see
//!   `remote`: the calls run there, as the caller), with the limits listed
//!   there: another process's private memory is not host memory of the
//!   engine, commands that create or name engine fds are `EOPNOTSUPP` from
//!   another process,
//!   the `ioctl` and `mmap` of inherited engine fds answer from the child's
//!   copy of the engine (their reads and writes reach the owner's), the
//!   each process's pins are charged to and checked against its own
//!   client (its mm, its user, its `RLIMIT_MEMLOCK`). Fds kept across `exec` by a process that
//!   does not own their context, or inherited by a process without the
//!   preload, are plain memfds (their ioctls fail with `ENOTTY` from the
//!   kernel).
//! * `fstat` on an emulated fd shows a memfd, not a character device;
//!   `read`/`write`/`mmap` act on the memfd.
//! * Engine fds show as `anon_inode:[eventfd]`, not `[iommufd-pgfault]` &c.
//!   Only `read`/`write`/`readv`/`writev`, the `pread`/`pwrite` and
//!   `preadv`/`pwritev` families, `ioctl`, `mmap` and `fstat` reach the
//!   engine file: `recv`, `splice`, glibc stdio on an `fdopen`ed engine fd (libc-internal
//!   reads are not interposable) and raw syscalls see the eventfd instead.
//!   An engine fd closed by a raw syscall and reused by another anon-inode
//!   fd (eventfd, epoll, timerfd, ...) is not recognised as stale.
//!   `poll` always reports `POLLOUT` on them and never `POLLRDNORM`/
//!   `POLLWRNORM` (an access fd, which has no `poll` in the kernel, shows
//!   `POLLIN|POLLOUT`), and `epoll_ctl` accepts an access fd (the kernel:
//!   `EPERM`).
//! * Symlinks to `/dev/iommu` are not recognised; the match is lexical.
//! * glibc's internal `munmap`/`mremap` (`free()` and `realloc()` of large
//!   `malloc` chunks) bypass the pin hooks: a program that frees a buffer
//!   still mapped in an IOAS loses those pages to the IOMMU (the kernel
//!   keeps them). Raw `SYS_munmap` &c. likewise.

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};

use std::panic::{catch_unwind, AssertUnwindSafe};
use uiommufd::plumbing::files;

/// A hook of an fd-taking I/O call: an engine fd (and `if` the condition
/// holds) is served by the engine expression through [`engine_io`] (unless
/// it turns out not to be one); every other call is forwarded, after one
/// atomic load, to the real function with the caller's arguments.
macro_rules! io_hook {
    ($(
        $(#[$m:meta])*
        $name:ident($fd:ident $(, $a:ident: $t:ty)* $(,)?) $(if $cond:expr)? => $engine:expr;
    )*) => {$(
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($fd: ::std::ffi::c_int $(, $a: $t)*) -> libc::ssize_t {
            if $($cond &&)? ::uiommufd::plumbing::files::is_engine_fd($fd) {
                if let Some(r) = $crate::engine_io(|| $engine) {
                    return r;
                }
            }
            let Some(real) = $crate::real::$name() else {
                return $crate::fail_ssize(libc::ENOSYS);
            };
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real($fd $(, $a)*) }
        }
    )*};
}

mod engine;
mod exec_hooks;
mod fs_hooks;
mod keeper;
mod mem_hooks;
mod path;
mod real;
mod remote;
mod signals;
mod special;
mod sync;
mod table;
mod threads;
mod vfio;

/// The shim's own heap, apart from the program's `malloc`: a signal handler
/// that interrupted the program inside `malloc` can still call our
/// async-signal-safe hooks, which allocate (see `sync`). mimalloc is fast,
/// scales with threads, and keeps its state to itself.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use path::{errno, set_errno, DevNode, NodeKind};
use table::{Entry, FdObject};

/// `CLOSE_RANGE_CLOEXEC` from `<linux/close_range.h>`.
const CLOSE_RANGE_CLOEXEC: c_int = 1 << 2;

/// Run `f`, turning a panic into `None` with `errno = EIO`.
fn guard<T>(f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            set_errno(libc::EIO);
            None
        }
    }
}

/// Run `f` for its side effects, keeping `errno` as it was.
pub(crate) fn quietly(f: impl FnOnce()) {
    let saved = errno();
    let _ = guard(f);
    set_errno(saved);
}

/// `-1` with `errno = e`.
fn fail(e: c_int) -> c_int {
    set_errno(e);
    -1
}

extern "C" fn preload_init() {
    sync::init();
    // before anything can make the engine open an fd for itself (rule 5)
    uiommufd::user::set_private_fd_guard(sync::private_fd_guard);
    let _ = guard(|| uiommufd::client::Client::ours().note_initial_caps());
    let _ = guard(signals::init);
    let _ = guard(signals::scan_existing_handlers);
    let _ = guard(table::init_paranoia);
    let _ = guard(|| {
        let _c = sync::enter();
        uiommufd::logging::init_from_env();
    });
    let _ = guard(|| {
        let _c = sync::enter();
        vfio::init();
    });
    // `/dev/iommu` fds inherited across `exec`: their contexts live on
    let _ = guard(|| {
        let _c = sync::enter();
        remote::adopt_inherited();
    });
}

/// Runs [`sync::init`] and [`uiommufd::logging::init_from_env`] when the
/// library is loaded.
#[used]
#[link_section = ".init_array"]
static PRELOAD_INIT: extern "C" fn() = preload_init;

/// Close an fd we made, with the raw system call: not a cancellation point
/// (a `pthread_cancel` must not unwind out of a critical section) and not
/// re-entering our own `close` hook.
fn raw_close(fd: c_int) -> c_int {
    // SAFETY: closing an fd number; the raw syscall bypasses libc and hooks.
    unsafe { libc::syscall(libc::SYS_close, fd) as c_int }
}

/// Create the emulated file for `node`: a memfd registered with a new
/// object. Runs inside a critical section; the memfd is an fd birth (see
/// [`sync::Birth`]): from its creation until it is registered, a `close` or
/// `dup` of its number on another thread waits.
fn open_node(node: &DevNode, flags: c_int) -> c_int {
    // (flags that make the kernel refuse the open were handled by
    // `path::match_dev_node`)
    uiommufd::logging::init_from_env();
    let mfd_flags = if flags & libc::O_CLOEXEC != 0 {
        libc::MFD_CLOEXEC
    } else {
        0
    };
    let _birth = sync::Birth::new();
    let ops = sync::fd_ops();
    // SAFETY: the name is a NUL-terminated static string.
    let fd = unsafe { libc::memfd_create(node.memfd_name.as_ptr(), mfd_flags) };
    if fd < 0 {
        return -1;
    }
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is writable.
    if unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) as c_int } != 0 {
        let e = errno();
        raw_close(fd);
        return fail(e);
    }
    // the kernel's allocation of the context at open
    if let Err(e) = uiommufd::inject::point("context.alloc", libc::ENOMEM) {
        tracing::debug!(path = node.path, "open failed: {e}");
        raw_close(fd);
        return fail(e.errno().0);
    }
    let obj = match node.kind {
        NodeKind::Iommu => FdObject::Iommu(uiommufd::Context::new()),
        // A VFIO container is an iommufd context with its compat IOAS made.
        NodeKind::VfioContainer => match uiommufd::Context::new_vfio_container() {
            Ok(ctx) => FdObject::Iommu(ctx),
            Err(e) => {
                tracing::debug!(path = node.path, "cannot create the VFIO container: {e}");
                raw_close(fd);
                return fail(e.errno().0);
            }
        },
    };
    let shared = match (&node.kind, &obj) {
        (NodeKind::Iommu, FdObject::Iommu(ctx)) => Some(ctx.clone()),
        _ => None,
    };
    let stale = table::register(fd, Entry::new(obj, st.st_dev, st.st_ino));
    drop(ops);
    if let Some(ctx) = shared {
        remote::opened(fd, &ctx);
    }
    tracing::debug!(
        fd,
        path = node.path,
        replaced_stale = stale.is_some(),
        "opened emulated device"
    );
    drop(stale);
    fd
}

/// What an `open*` hook does after [`pre_open`].
// the path lives on the stack on purpose: a `Box` would be freed outside
// the critical section
#[allow(clippy::large_enum_variant)]
enum Pre {
    /// The shim answered: this fd, or -1 with `errno` set.
    Done(c_int),
    /// The real call on this path instead (a sysfs path of a declared
    /// device, redirected to the tree).
    Redirect(path::StackPath),
    /// The real call, unchanged.
    Forward,
}

/// The shim's part of every `open*` hook: the emulated nodes (or a panic:
/// `Done(-1)`), the redirected sysfs paths, or `Forward`.
///
/// # Safety
/// None: `path` is read fault-safely (any pointer value is fine).
unsafe fn pre_open(dirfd: c_int, path: *const c_char, flags: c_int) -> Pre {
    if path.is_null() || sync::foreign() {
        return Pre::Forward;
    }
    let r = guard(|| {
        let _c = sync::enter();
        // An unreadable or overlong path is forwarded: the kernel fails it
        // with EFAULT/ENAMETOOLONG, after its own checks of `flags`.
        let path = match path::UserPath::read(path) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(errno = e, "open: path not readable here; forwarding");
                return Pre::Forward;
            }
        };
        let path = path.as_cstr();
        match path::match_dev_node(dirfd, path, flags) {
            Some(Ok(node)) if flags & libc::O_PATH != 0 => {
                return Pre::Done(match path::open_o_path(node, flags) {
                    Ok(fd) => post_open(fd),
                    Err(e) => fail(e),
                })
            }
            Some(Ok(node)) => return Pre::Done(open_node(node, flags)),
            Some(Err(e)) => return Pre::Done(fail(e)),
            None => {}
        }
        match vfio::classify_path(dirfd, path) {
            vfio::Act::Forward => {}
            vfio::Act::Redirect(p) => return Pre::Redirect(p),
            vfio::Act::Node(node, form) => return Pre::Done(vfio::open_node(node, form, flags)),
            vfio::Act::Fail(e) => return Pre::Done(fail(e)),
        }
        match path::match_special(dirfd, path) {
            Some(what) => Pre::Done(special::open(what, flags)),
            None => Pre::Forward,
        }
    });
    r.unwrap_or(Pre::Done(-1))
}

/// Lock-free: whether `fd` may be, or be about to become, an fd whose
/// number the shim or the engine keeps track of.
#[inline]
fn may_be_ours(fd: c_int) -> bool {
    table::maybe_registered(fd) || files::is_engine_fd(fd) || sync::births()
}

/// Forget whatever the registries still say about `fd`, a number the
/// kernel just handed out for something that is not ours (so it was closed
/// behind our back). Call with the fd-number lock held.
fn forget_stale(fd: c_int) {
    if table::maybe_registered(fd) {
        drop(table::unregister(fd));
    }
    if files::is_engine_fd(fd) {
        files::check_stale(fd);
    }
    if special::any_dirs() {
        special::forget_fd(fd);
    }
}

/// After a forwarded open/dup returned `fd`: a stale entry under that number
/// (closed behind our back) must go.
fn post_open(fd: c_int) -> c_int {
    if fd >= 0
        && (table::maybe_registered(fd) || files::is_engine_fd(fd) || special::any_dirs())
        && !sync::foreign()
    {
        quietly(|| {
            let _c = sync::enter();
            let _ops = sync::fd_ops();
            forget_stale(fd);
        });
    }
    fd
}

/// After `new` became a duplicate of `old` (under the fd-number lock):
/// mirror the registration.
fn mirror_dup(old: c_int, new: c_int) {
    if new < 0 || new == old {
        return;
    }
    if files::is_engine_fd(old) || files::is_engine_fd(new) {
        files::on_dup(old, new);
        remote::dup_engine_fd(old, new);
    }
    if special::any_dirs() {
        special::forget_fd(new);
    }
    if !(table::maybe_registered(old) || table::maybe_registered(new)) {
        return;
    }
    match table::lookup(old) {
        Some(e) => drop(table::register(new, e.duplicate())),
        None => drop(table::unregister(new)),
    }
}

/// A `dup`-family call: `real_dup` runs the real function. When `old` (or
/// the target `new` of `dup2`/`dup3`) may be ours, the real call and the
/// registry update run under the fd-number lock, so a racing `close` of
/// `old` gives either `EBADF` or a registered duplicate.
fn dup_hook(old: c_int, new: Option<c_int>, real_dup: impl Fn() -> c_int) -> c_int {
    if sync::foreign() {
        return post_open(real_dup());
    }
    // While the process has any emulated fd, every dup takes the lock: a
    // per-fd check would race with a close (which unregisters an engine fd
    // before its real close) or a birth at the same number, and a dup made
    // in such a window would be a bare memfd or eventfd. dup is rare enough
    // for a mutex; only processes with no emulated fd at all keep the
    // one-load fast path.
    let gen = sync::birth_gen();
    if !any_ours() {
        let r = sync::fd_call(&real_dup);
        if r < 0 || (sync::birth_gen() == gen && !sync::births()) {
            return post_open(r);
        }
        // The first birth started meanwhile, maybe at `old`: redo the dup
        // under the lock (`dup2`/`dup3` simply replace `new` again).
        if new.is_none() {
            raw_close(r);
        }
    }
    let mut r = -1;
    let mut e = 0;
    let ok = guard(|| {
        let _c = sync::enter();
        let ops = sync::fd_ops();
        r = sync::fd_call(&real_dup);
        e = errno();
        let replaced = new.filter(|&n| r == n && n != old && table::maybe_registered(n));
        let gone = replaced.and_then(table::lookup);
        mirror_dup(old, r);
        drop(ops);
        // a context whose last fd `dup2` closed is torn down outside the lock
        drop(gone);
    });
    if ok.is_none() && r < 0 {
        return -1;
    }
    set_errno(e);
    r
}

/// `ENOSYS` for a libc function that could not be found.
pub(crate) fn missing() -> c_int {
    fail(libc::ENOSYS)
}

macro_rules! open_hook {
    ($(#[$m:meta])* $name:ident(path, flags $(, $mode:ident)?)) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int $(, $mode: libc::mode_t)?) -> c_int {
            // SAFETY: forwarding the caller's path, which obeys the C contract.
            let path = match unsafe { pre_open(libc::AT_FDCWD, path, flags) } {
                Pre::Done(r) => return r,
                Pre::Redirect(p) => p,
                Pre::Forward => {
                    let Some(real) = real::$name() else { return missing() };
                    // SAFETY: forwarding the caller's arguments unchanged.
                    let fd = unsafe { real(path, flags $(, $mode as c_uint)?) };
                    return post_open(fd);
                }
            };
            let Some(real) = real::$name() else { return missing() };
            // SAFETY: the caller's arguments, the path redirected.
            let fd = unsafe { real(path.as_ptr(), flags $(, $mode as c_uint)?) };
            post_open(fd)
        }
    };
    ($(#[$m:meta])* $name:ident(dirfd, path, flags $(, $mode:ident)?)) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dirfd: c_int,
            path: *const c_char,
            flags: c_int
            $(, $mode: libc::mode_t)?
        ) -> c_int {
            // SAFETY: forwarding the caller's path, which obeys the C contract.
            let path = match unsafe { pre_open(dirfd, path, flags) } {
                Pre::Done(r) => return r,
                Pre::Redirect(p) => p,
                Pre::Forward => {
                    let Some(real) = real::$name() else { return missing() };
                    // SAFETY: forwarding the caller's arguments unchanged.
                    let fd = unsafe { real(dirfd, path, flags $(, $mode as c_uint)?) };
                    return post_open(fd);
                }
            };
            let Some(real) = real::$name() else { return missing() };
            // SAFETY: the caller's arguments, the path redirected (absolute).
            let fd = unsafe { real(dirfd, path.as_ptr(), flags $(, $mode as c_uint)?) };
            post_open(fd)
        }
    };
}

open_hook!(
    /// `open(2)`, emulating the device nodes.
    open(path, flags, mode)
);
open_hook!(
    /// `open64(2)`, emulating the device nodes.
    open64(path, flags, mode)
);
open_hook!(
    /// Fortified `open` (`_FORTIFY_SOURCE`), emulating the device nodes.
    __open_2(path, flags)
);
open_hook!(
    /// Fortified `open64` (`_FORTIFY_SOURCE`), emulating the device nodes.
    __open64_2(path, flags)
);
open_hook!(
    /// `openat(2)`, emulating the device nodes.
    openat(dirfd, path, flags, mode)
);
open_hook!(
    /// `openat64(2)`, emulating the device nodes.
    openat64(dirfd, path, flags, mode)
);
open_hook!(
    /// Fortified `openat` (`_FORTIFY_SOURCE`), emulating the device nodes.
    __openat_2(dirfd, path, flags)
);
open_hook!(
    /// Fortified `openat64` (`_FORTIFY_SOURCE`), emulating the device nodes.
    __openat64_2(dirfd, path, flags)
);

/// `FIOCLEX` from `<asm-generic/ioctls.h>`.
const FIOCLEX: u32 = 0x5451;
/// `FIONCLEX`.
const FIONCLEX: u32 = 0x5450;
/// `FIONBIO`.
const FIONBIO: u32 = 0x5421;
/// `FIOASYNC`.
const FIOASYNC: u32 = 0x5452;
/// `FIGETBSZ` (`_IO(0x00, 2)`).
const FIGETBSZ: u32 = 2;

/// The file-level ioctls the kernel's `do_vfs_ioctl` answers before the
/// driver sees the call. On the backing memfd the kernel gives the same
/// answers as on a `/dev/iommu` or `/dev/vfio/vfio` file (close-on-exec and
/// `O_NONBLOCK` of that fd, `ENOTTY` for `FIOASYNC` on since neither has
/// `fasync`, the 4 KiB block size of tmpfs and devtmpfs, `EFAULT` for a bad
/// argument), so they go to the kernel on the memfd.
fn is_vfs_ioctl(cmd: u32) -> bool {
    matches!(cmd, FIOCLEX | FIONCLEX | FIONBIO | FIOASYNC | FIGETBSZ)
}

/// What to do with an ioctl on a registered fd.
enum Route {
    /// Hand it to the kernel unchanged (not, or no longer, an emulated fd;
    /// or a file-level ioctl the kernel answers on the memfd).
    Kernel,
    /// The engine answered: the return value or an errno.
    Done(Result<c_int, c_int>),
}

/// The ioctl of an emulated fd. Runs inside a critical section.
fn emulated_ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> Route {
    let Some(entry) = table::lookup(fd) else {
        return Route::Kernel;
    };
    if table::paranoid() && !table::still_ours(fd, &entry) {
        tracing::debug!(
            fd,
            "fd was closed behind the shim's back; dropping its context"
        );
        drop(table::unregister_if(fd, entry.serial));
        return Route::Kernel;
    }
    // The kernel's ioctl takes `unsigned int cmd`: upper bits are ignored.
    let cmd = request as u32;
    if is_vfs_ioctl(cmd) {
        return Route::Kernel;
    }
    // Commands that create an engine fd are fd births: a racing `close` or
    // `dup` of the new number waits until it is registered.
    let births_fd = cmd == uiommufd::uapi::IOMMU_FAULT_QUEUE_ALLOC
        || cmd == uiommufd::uapi::IOMMU_VEVENTQ_ALLOC
        || cmd == uiommufd::uapi::IOMMU_TEST_CMD;
    let _birth = births_fd.then(sync::Birth::new);
    let ops = births_fd.then(sync::fd_ops);
    let r = match &entry.obj {
        FdObject::Iommu(ctx) => {
            uiommufd::dispatch::ioctl(ctx, u64::from(cmd), arg as u64).map_err(|e| e.errno().0)
        }
        FdObject::Remote(rc) => remote::ioctl(rc, cmd, arg as u64),
    };
    drop(ops);
    drop(entry);
    Route::Done(r)
}

/// `mmap` of an emulated `/dev/iommu` fd (`iommufd_fops_mmap`): the region
/// an object offers at `offset` ([`uiommufd::Context::mmap_target`]),
/// mapped with `map(memfd, 0)`. `None`: `fd` is not ours.
pub(crate) fn iommufd_mmap(
    fd: c_int,
    len: usize,
    prot: c_int,
    flags: c_int,
    offset: i64,
    map: impl FnOnce(c_int, i64) -> *mut c_void,
) -> Option<Result<*mut c_void, c_int>> {
    let entry = table::lookup(fd)?;
    let ctx = match &entry.obj {
        FdObject::Iommu(ctx) => ctx,
        // the regions live in the owner (see `remote`)
        FdObject::Remote(_) => return Some(Err(libc::ENODEV)),
    };
    let Ok(off) = u64::try_from(offset) else {
        return Some(Err(libc::EINVAL));
    };
    let region = match ctx.mmap_target(off, len as u64, prot, flags) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(fd, offset, len, "iommufd mmap refused: {e}");
            return Some(Err(e.errno().0));
        }
    };
    // the region (and its memfd) lives until the mapping is made
    let p = map(region.fd(), 0);
    drop(region);
    Some(if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p)
    })
}

/// `ioctl(2)`: runs the iommufd dispatcher on emulated fds.
///
/// # Safety
/// Same contract as the libc function: `arg` must be what `request` expects.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    if table::maybe_registered(fd) {
        let r = guard(|| {
            let _c = sync::enter();
            emulated_ioctl(fd, request, arg)
        });
        match r {
            Some(Route::Done(Ok(v))) => return v,
            Some(Route::Done(Err(e))) => return fail(e),
            Some(Route::Kernel) => {}
            None => return -1,
        }
    }
    if files::is_engine_fd(fd) && !is_vfs_ioctl(request as u32) && !sync::foreign() {
        let r = guard(|| {
            let _c = sync::enter();
            vfio::engine_ioctl(fd, request as u32, arg as u64)
        });
        match r {
            Some(Some(Ok(v))) => return v,
            Some(Some(Err(e))) => return fail(e),
            Some(None) => {}
            None => return -1,
        }
    }
    let Some(real) = real::ioctl() else {
        return missing();
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, request, arg) }
}

/// The slow path of `close`: `None` when `fd` turned out not to be ours
/// (the hook then makes the real call, outside any critical section, since
/// `close` may block and is a cancellation point).
fn slow_close(fd: c_int) -> Option<c_int> {
    if sync::foreign() {
        return None;
    }
    let _c = sync::enter();
    let ops = sync::fd_ops();
    // Under the fd-number lock the hints are exact: every change of them
    // happens under it.
    let registered = table::maybe_registered(fd);
    let engine = files::is_engine_fd(fd);
    let dir = special::any_dirs() && special::dir_of_fd(fd).is_some();
    if !(registered || engine || dir) {
        return None;
    }
    if engine {
        // Before the real close: once the number is free, a racing open may
        // reuse it, and the engine must not signal (write to) it any more.
        files::on_close(fd);
        remote::forget_engine_fds(fd, fd);
    }
    if dir {
        special::forget_fd(fd);
    }
    // Linux releases the fd even when close fails.
    let r = raw_close(fd);
    let e = errno();
    let gone = table::unregister(fd);
    drop(ops);
    if matches!(gone.as_ref().map(|e| &e.obj), Some(FdObject::Iommu(_))) {
        // references of processes that have exited go first
        remote::sweep();
    }
    // the context dies here when this was its last fd
    drop(gone);
    set_errno(e);
    Some(r)
}

/// `close(2)`: drops the fd's reference to its emulated object.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if may_be_ours(fd) || special::any_dirs() {
        match guard(|| slow_close(fd)) {
            Some(Some(r)) => return r,
            Some(None) => {}
            None => return -1,
        }
    }
    let Some(real) = real::close() else {
        return missing();
    };
    // SAFETY: forwarding the caller's argument unchanged.
    unsafe { real(fd) }
}

/// `CLOSE_RANGE_UNSHARE` from `<linux/close_range.h>`.
const CLOSE_RANGE_UNSHARE: c_int = 1 << 1;

/// Whether the process has any emulated fd, or one is being born: a
/// `close_range` or `closefrom` may close one, a `dup` must take the lock.
fn any_ours() -> bool {
    table::any_registered() || files::any_engine_fd() || sync::births() || special::any_dirs()
}

/// Close `lo..=hi` with `real_close` under the fd-number lock, keeping the
/// registries right. Engine fds are forgotten before the real call (the
/// engine must never signal a number that was reused), unless the call may
/// still fail without closing anything (`CLOSE_RANGE_UNSHARE`: `ENOMEM`).
fn close_many(lo: c_int, hi: c_int, unshare: bool, real_close: impl FnOnce() -> c_int) -> c_int {
    let _c = sync::enter();
    let ops = sync::fd_ops();
    if !unshare {
        files::on_close_range(lo, hi);
        remote::forget_engine_fds(lo, hi);
    }
    let r = real_close();
    let e = errno();
    let mut gone = Vec::new();
    if r == 0 {
        if unshare {
            files::on_close_range(lo, hi);
            remote::forget_engine_fds(lo, hi);
        }
        gone = table::unregister_range(lo, hi);
        special::forget_range(lo, hi);
    }
    drop(ops);
    if gone.iter().any(|e| matches!(e.obj, FdObject::Iommu(_))) {
        remote::sweep();
    }
    drop(gone);
    set_errno(e);
    r
}

/// `close_range(2)`: unregisters the closed fds.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let Some(real) = real::close_range() else {
        return missing();
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    let call = move || unsafe { real(first, last, flags) };
    let valid = first <= last && flags & !(CLOSE_RANGE_CLOEXEC | CLOSE_RANGE_UNSHARE) == 0;
    if !valid || flags & CLOSE_RANGE_CLOEXEC != 0 || !any_ours() || sync::foreign() {
        return call();
    }
    let lo = c_int::try_from(first).unwrap_or(c_int::MAX);
    let hi = c_int::try_from(last).unwrap_or(c_int::MAX);
    let unshare = flags & CLOSE_RANGE_UNSHARE != 0;
    guard(|| close_many(lo, hi, unshare, call)).unwrap_or(-1)
}

/// `closefrom(3)`: unregisters the closed fds.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    let Some(real) = real::closefrom() else {
        return;
    };
    let call = move || {
        // SAFETY: forwarding the caller's argument unchanged.
        unsafe { real(lowfd) };
        0
    };
    if !any_ours() || sync::foreign() {
        call();
        return;
    }
    let saved = errno();
    let _ = guard(|| close_many(lowfd.max(0), c_int::MAX, false, call));
    set_errno(saved);
}

/// `dup(2)`: the new fd shares the emulated object.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let Some(real) = real::dup() else {
        return missing();
    };
    // SAFETY: forwarding the caller's argument unchanged.
    dup_hook(fd, None, || unsafe { real(fd) })
}

/// `dup2(2)`: the new fd shares the emulated object; the old target is
/// unregistered.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let Some(real) = real::dup2() else {
        return missing();
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    dup_hook(old, Some(new), || unsafe { real(old, new) })
}

/// `dup3(2)`: the new fd shares the emulated object; the old target is
/// unregistered.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let Some(real) = real::dup3() else {
        return missing();
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    dup_hook(old, Some(new), || unsafe { real(old, new, flags) })
}

/// `fcntl(2)`: `F_DUPFD`/`F_DUPFD_CLOEXEC` share the emulated object; every
/// other command is forwarded unchanged.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the caller's contract is fcntl's.
    unsafe { fcntl_with(real::fcntl(), fd, cmd, arg) }
}

/// `fcntl64`: as [`fcntl`].
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the caller's contract is fcntl64's.
    unsafe { fcntl_with(real::fcntl64(), fd, cmd, arg) }
}

/// What [`fcntl`] and [`fcntl64`] share, with `real` the libc function
/// (`ENOSYS` when libc lacks it).
///
/// # Safety
/// Same contract as the libc function.
unsafe fn fcntl_with(
    real: Option<unsafe extern "C" fn(c_int, c_int, ...) -> c_int>,
    fd: c_int,
    cmd: c_int,
    arg: c_ulong,
) -> c_int {
    let Some(real) = real else {
        return missing();
    };
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        // SAFETY: forwarding the caller's arguments unchanged.
        return dup_hook(fd, None, || unsafe { real(fd, cmd, arg) });
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, cmd, arg) }
}

/// After a forwarded call created `fd` (not through our `open`/`dup`
/// hooks): a registration left under that number by an fd closed behind
/// our back is stale and goes. This keeps the fd table right without an
/// `fstat` per `ioctl` (see `table::paranoid`).
macro_rules! fd_creating_hook {
    ($(#[$m:meta])* $name:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            let Some(real) = real::$name() else { return missing() };
            // SAFETY: forwarding the caller's arguments unchanged.
            post_open(unsafe { real($($arg),*) })
        }
    };
}

fd_creating_hook!(
    /// `socket(2)`, forgetting a stale registration of the new fd.
    socket(domain: c_int, ty: c_int, protocol: c_int)
);
fd_creating_hook!(
    /// `accept(2)`, forgetting a stale registration of the new fd.
    accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t)
);
fd_creating_hook!(
    /// `accept4(2)`, forgetting a stale registration of the new fd.
    accept4(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, flags: c_int)
);
fd_creating_hook!(
    /// `eventfd(2)`, forgetting a stale registration of the new fd.
    eventfd(initval: c_uint, flags: c_int)
);
fd_creating_hook!(
    /// `epoll_create(2)`, forgetting a stale registration of the new fd.
    epoll_create(size: c_int)
);
fd_creating_hook!(
    /// `epoll_create1(2)`, forgetting a stale registration of the new fd.
    epoll_create1(flags: c_int)
);
fd_creating_hook!(
    /// `timerfd_create(2)`, forgetting a stale registration of the new fd.
    timerfd_create(clock: c_int, flags: c_int)
);
fd_creating_hook!(
    /// `signalfd(2)`, forgetting a stale registration of the new fd.
    signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int)
);
fd_creating_hook!(
    /// `inotify_init1(2)`, forgetting a stale registration of the new fd.
    inotify_init1(flags: c_int)
);
fd_creating_hook!(
    /// `memfd_create(2)`, forgetting a stale registration of the new fd.
    memfd_create(name: *const c_char, flags: c_uint)
);

/// `fopen` of `/proc/PID/status` while this process has a `/dev/iommu` fd
/// or pins:
/// the text with the engine's pins in `VmPin`/`VmLck` (see
/// `remote::status_file`), as a stream on a memfd. `None`: not such a
/// path, or nothing to add (the real file is opened).
///
/// # Safety
/// `path` and `mode` are read fault-safely (any pointer value is fine).
unsafe fn status_fopen(path: *const c_char, mode: *const c_char) -> Option<*mut libc::FILE> {
    // pins outlive the fds (a context another process holds): any client's
    let pins = uiommufd::client::Client::all()
        .iter()
        .any(|c| c.pinned_vm() != 0 || c.mm_locked_vm() != 0);
    if path.is_null() || mode.is_null() || !(table::any_registered() || pins) || sync::foreign() {
        return None;
    }
    let fd = guard(|| {
        let _c = sync::enter();
        let p = path::UserPath::read(path).ok()?;
        remote::status_file(p.as_cstr().to_bytes())
    })??;
    // SAFETY: our fresh memfd and the caller's mode string.
    let f = unsafe { libc::fdopen(fd, mode) };
    if f.is_null() {
        raw_close(fd);
        return None;
    }
    Some(f)
}

/// `sendmsg(2)`: a `/dev/iommu` fd passed with `SCM_RIGHTS` carries the
/// way to its context (see `remote`).
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
    let kept = before_send(&[msg as u64]);
    let Some(real) = real::sendmsg() else {
        return missing() as isize;
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    let n = unsafe { real(fd, msg, flags) };
    not_sent(kept, usize::from(n >= 0));
    n
}

/// The kernel's `UIO_MAXIOV`: the most messages one `sendmmsg`/`recvmmsg`
/// handles.
const MAX_MMSG: usize = 1024;

/// The addresses of the `msghdr`s of an `mmsghdr` array (none for null).
fn mmsg_headers(vec: *const libc::mmsghdr, vlen: c_uint) -> impl Iterator<Item = u64> {
    let n = if vec.is_null() {
        0
    } else {
        (vlen as usize).min(MAX_MMSG)
    };
    (0..n).map(move |i| vec as u64 + (i * std::mem::size_of::<libc::mmsghdr>()) as u64)
}

/// Before the program sends the messages at `msgs`: their `/dev/iommu` fds
/// get references held for their receivers (see `remote`). One list per
/// message.
fn before_send(msgs: &[u64]) -> Vec<Vec<remote::Kept>> {
    if !table::any_registered() || sync::foreign() {
        return Vec::new();
    }
    let saved = errno();
    let kept = guard(|| {
        let _c = sync::enter();
        msgs.iter()
            .map(|&m| {
                if m == 0 {
                    Vec::new()
                } else {
                    remote::before_send(m)
                }
            })
            .collect()
    })
    .unwrap_or_default();
    set_errno(saved);
    kept
}

/// The messages from index `sent` on were not sent: release what
/// [`before_send`] held for them.
fn not_sent(kept: Vec<Vec<remote::Kept>>, sent: usize) {
    if kept.iter().skip(sent).all(Vec::is_empty) {
        return;
    }
    quietly(|| {
        let _c = sync::enter();
        for k in kept.into_iter().skip(sent) {
            remote::exec_failed(k);
        }
    });
}

/// After the program received messages: each fd they carried forgets a
/// stale registration, and a `/dev/iommu` fd of another process reaches its
/// context (see `remote`).
fn after_receive(msgs: impl Iterator<Item = u64>) {
    quietly(|| {
        let _c = sync::enter();
        for m in msgs {
            // SAFETY: `m` is a msghdr the kernel just filled (read
            // fault-safely all the same).
            for rfd in unsafe { remote::passed_fds(m as *mut libc::msghdr) } {
                let ops = sync::fd_ops();
                forget_stale(rfd);
                drop(ops);
                remote::after_receive(rfd);
            }
        }
    });
}

/// `sendmmsg(2)`: as `sendmsg` for each message.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    vec: *mut libc::mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    let headers: Vec<u64> = if table::any_registered() {
        mmsg_headers(vec, vlen).collect()
    } else {
        Vec::new()
    };
    let kept = before_send(&headers);
    let Some(real) = real::sendmmsg() else {
        return missing();
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    let n = unsafe { real(fd, vec, vlen, flags) };
    not_sent(kept, n.max(0) as usize);
    n
}

/// `recvmmsg(2)`: as `recvmsg` for each message received.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    vec: *mut libc::mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    let Some(real) = real::recvmmsg() else {
        return missing();
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    let n = unsafe { real(fd, vec, vlen, flags, timeout) };
    if n > 0 && !sync::foreign() {
        after_receive(mmsg_headers(vec, n as c_uint));
    }
    n
}

/// `recvmsg(2)`: fds received with `SCM_RIGHTS` forget stale
/// registrations, and a `/dev/iommu` fd of another process reaches its
/// context (see `remote`).
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    let Some(real) = real::recvmsg() else {
        return missing() as isize;
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    let n = unsafe { real(fd, msg, flags) };
    // SAFETY: the call succeeded, so `msg` is the caller's valid msghdr,
    // which the kernel just filled.
    if n >= 0 && !msg.is_null() && unsafe { (*msg).msg_controllen } > 0 && !sync::foreign() {
        after_receive(std::iter::once(msg as u64));
    }
    n
}

/// After a call that creates two fds in `fds[0..2]` returned `r` (0 on
/// success): forget stale registrations of both new fds. Returns `r`.
///
/// # Safety
/// When `r` is 0, `fds` points at the two fds the call wrote.
unsafe fn post_open_pair(r: c_int, fds: *const c_int) -> c_int {
    if r == 0 {
        // SAFETY: on success the call wrote two fds there (our contract).
        let (a, b) = unsafe { (*fds, *fds.add(1)) };
        post_open(a);
        post_open(b);
    }
    r
}

/// A call that creates two fds in `fds[0..2]`.
macro_rules! fd_pair_hook {
    ($(#[$m:meta])* $name:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty,)* fds: *mut c_int) -> c_int {
            let Some(real) = real::$name() else { return missing() };
            // SAFETY: forwarding the caller's arguments unchanged; on
            // success the call wrote two fds at `fds`.
            unsafe { post_open_pair(real($($arg,)* fds), fds) }
        }
    };
}

fd_pair_hook!(
    /// `pipe(2)`, forgetting stale registrations of the new fds.
    pipe()
);
/// `pipe2(2)`, forgetting stale registrations of the new fds.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    let Some(real) = real::pipe2() else {
        return missing();
    };
    // SAFETY: forwarding the caller's arguments unchanged; on success the
    // call wrote two fds at `fds`.
    unsafe { post_open_pair(real(fds, flags), fds) }
}
fd_pair_hook!(
    /// `socketpair(2)`, forgetting stale registrations of the new fds.
    socketpair(domain: c_int, ty: c_int, protocol: c_int)
);

/// `fclose(3)`: glibc closes the fd inside (not through `close`), so a
/// stream opened on one of our fds (`fdopen`) is unregistered here, with
/// the close itself under the fd-number lock like our `close`.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn fclose(fp: *mut libc::FILE) -> c_int {
    let Some(real) = real::fclose() else {
        return missing();
    };
    if fp.is_null() || !(table::any_registered() || files::any_engine_fd()) || sync::foreign() {
        // SAFETY: forwarding the caller's argument unchanged.
        return unsafe { real(fp) };
    }
    // SAFETY: `fp` is the caller's open stream.
    let fd = unsafe { libc::fileno(fp) };
    if fd < 0 || !may_be_ours(fd) {
        // SAFETY: forwarding the caller's argument unchanged.
        return unsafe { real(fp) };
    }
    let mut r = -1;
    let mut e = 0;
    let done = guard(|| {
        let _c = sync::enter();
        let ops = sync::fd_ops();
        if files::is_engine_fd(fd) {
            files::on_close(fd);
        }
        // SAFETY: forwarding the caller's argument unchanged; flushing a
        // stream on a memfd or eventfd does not block.
        r = unsafe { real(fp) };
        e = errno();
        let gone = table::unregister(fd);
        drop(ops);
        drop(gone);
    });
    if done.is_none() && r != 0 {
        return -1;
    }
    set_errno(e);
    r
}

/// `-1` with `errno = e`, as `ssize_t`.
fn fail_ssize(e: c_int) -> libc::ssize_t {
    set_errno(e);
    -1
}

/// `set_errno(e)` and a null pointer: how pointer-returning calls fail.
fn fail_null<T>(e: c_int) -> *mut T {
    set_errno(e);
    std::ptr::null_mut()
}

/// Turn an engine transfer into the libc return convention; `None` (not an
/// engine fd after all) stays `None` so that the hook forwards the call.
fn engine_io(f: impl FnOnce() -> Option<engine::Xfer>) -> Option<libc::ssize_t> {
    if sync::foreign() {
        // a vfork child reads the eventfd itself
        return None;
    }
    match guard(|| {
        let _c = sync::enter();
        f()
    }) {
        Some(Some(Ok(n))) => Some(n as libc::ssize_t),
        Some(Some(Err(e))) => Some(fail_ssize(e)),
        Some(None) => None,
        None => Some(-1),
    }
}

io_hook! {
    /// `read(2)`: engine fds read their engine file; everything else is
    /// forwarded after one atomic load.
    read(fd, buf: *mut c_void, count: libc::size_t) => engine::read(fd, buf as u64, count);
    /// Fortified `read` (`_FORTIFY_SOURCE`): as [`read`]; an overflowing
    /// `count` still aborts in libc's `__read_chk`.
    __read_chk(fd, buf: *mut c_void, count: libc::size_t, buflen: libc::size_t)
        if count <= buflen => engine::read(fd, buf as u64, count);
    /// `write(2)`: engine fds write their engine file; everything else is
    /// forwarded after one atomic load.
    write(fd, buf: *const c_void, count: libc::size_t) => engine::write(fd, buf as u64, count);
    /// `readv(2)`: as [`read`], one engine read per segment (the kernel's
    /// loop for files without `read_iter`).
    readv(fd, iov: *const libc::iovec, iovcnt: c_int) => engine::readv(fd, iov as u64, iovcnt);
    /// `writev(2)`: as [`write()`], one engine write per segment.
    writev(fd, iov: *const libc::iovec, iovcnt: c_int) => engine::writev(fd, iov as u64, iovcnt);
    /// `pread(2)`: engine fds read their engine file at the offset
    /// (`ESPIPE` unless the file supports it, as the kernel's anon-inode
    /// files); everything else is forwarded after one atomic load.
    pread(fd, buf: *mut c_void, count: libc::size_t, offset: libc::off_t)
        => engine::pread(fd, buf as u64, count, offset);
    /// `pread64`: as [`pread`].
    pread64(fd, buf: *mut c_void, count: libc::size_t, offset: libc::off64_t)
        => engine::pread(fd, buf as u64, count, offset);
    /// Fortified `pread` (`_FORTIFY_SOURCE`): as [`pread`]; an overflowing
    /// `count` still aborts in libc's `__pread_chk`.
    __pread_chk(fd, buf: *mut c_void, count: libc::size_t, offset: libc::off_t, buflen: libc::size_t)
        if count <= buflen => engine::pread(fd, buf as u64, count, offset);
    /// Fortified `pread64`: as [`__pread_chk`].
    __pread64_chk(
        fd, buf: *mut c_void, count: libc::size_t, offset: libc::off64_t, buflen: libc::size_t
    ) if count <= buflen => engine::pread(fd, buf as u64, count, offset);
    /// `pwrite(2)`: engine fds write their engine file at the offset;
    /// everything else is forwarded after one atomic load.
    pwrite(fd, buf: *const c_void, count: libc::size_t, offset: libc::off_t)
        => engine::pwrite(fd, buf as u64, count, offset);
    /// `pwrite64`: as [`pwrite`].
    pwrite64(fd, buf: *const c_void, count: libc::size_t, offset: libc::off64_t)
        => engine::pwrite(fd, buf as u64, count, offset);
}

/// `opendir(3)`: the emulated debugfs directories (see `special`); every
/// other path is forwarded (glibc's `opendir` opens with the
/// non-interposable `__open_nocancel`, so it needs its own hook).
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn opendir(name: *const c_char) -> *mut libc::DIR {
    if !name.is_null() {
        // glibc's opendir reads the name itself (it would SIGSEGV on a bad
        // pointer): an unreadable one is EFAULT here; an overlong one is
        // forwarded (the kernel's ENAMETOOLONG).
        let r = guard(|| match path::UserPath::read(name) {
            Ok(path) => {
                let _c = sync::enter();
                match vfio::classify_path(libc::AT_FDCWD, path.as_cstr()) {
                    vfio::Act::Redirect(p) => return Some(Ok(Err(p))),
                    vfio::Act::Node(..) => return Some(Err(libc::ENOTDIR)),
                    vfio::Act::Fail(e) => return Some(Err(e)),
                    vfio::Act::Forward => {}
                }
                special::opendir(path.as_cstr()).map(|d| Ok(Ok(d)))
            }
            Err(libc::ENAMETOOLONG) => None,
            Err(e) => Some(Err(e)),
        });
        match r {
            Some(Some(Ok(Ok(d)))) => return d,
            Some(Some(Ok(Err(p)))) => {
                let Some(real) = real::opendir() else {
                    return fail_null(libc::ENOSYS);
                };
                // SAFETY: the real opendir of the redirected path.
                return unsafe { real(p.as_ptr()) };
            }
            Some(Some(Err(e))) => {
                tracing::debug!(errno = e, "opendir: the name is not readable");
                set_errno(e);
                return std::ptr::null_mut();
            }
            Some(None) => {}
            None => return std::ptr::null_mut(),
        }
    }
    let Some(real) = real::opendir() else {
        return fail_null(libc::ENOSYS);
    };
    // SAFETY: forwarding the caller's argument unchanged.
    unsafe { real(name) }
}

/// `readdir(3)`: the entries of an emulated debugfs directory; other
/// streams are forwarded after one atomic load.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn readdir(dirp: *mut libc::DIR) -> *mut libc::dirent {
    // SAFETY: the caller's contract is readdir's.
    unsafe { readdir_or(dirp, real::readdir()) }
}

/// `readdir64(3)`: as [`readdir`].
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn readdir64(dirp: *mut libc::DIR) -> *mut libc::dirent64 {
    // SAFETY: the caller's contract is readdir64's.
    unsafe { readdir_or(dirp, real::readdir64()) }
}

/// What [`readdir`] and [`readdir64`] share: an emulated stream's next
/// entry (`dirent` and `dirent64` have the same layout on 64-bit Linux),
/// else `real` (`ENOSYS` when libc lacks it) on `dirp`.
///
/// # Safety
/// Same contract as the libc function.
unsafe fn readdir_or<T>(
    dirp: *mut libc::DIR,
    real: Option<unsafe extern "C" fn(*mut libc::DIR) -> *mut T>,
) -> *mut T {
    if special::any_dirs() {
        if let Some(Some(e)) = guard(|| {
            let _c = sync::enter();
            special::readdir(dirp)
        }) {
            return e.cast();
        }
    }
    let Some(real) = real else {
        return fail_null(libc::ENOSYS);
    };
    // SAFETY: forwarding the caller's argument unchanged.
    unsafe { real(dirp) }
}

/// `closedir(3)`: forgets an emulated debugfs stream, then closes it.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn closedir(dirp: *mut libc::DIR) -> c_int {
    if special::any_dirs() {
        quietly(|| {
            let _c = sync::enter();
            special::closedir(dirp);
        });
    }
    let Some(real) = real::closedir() else {
        return missing();
    };
    // SAFETY: forwarding the caller's argument unchanged.
    unsafe { real(dirp) }
}
