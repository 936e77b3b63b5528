//! Living inside someone else's process: signal handlers, `fork` in
//! threaded programs, `vfork` children, and fd-number races.
//!
//! # The rules every hook follows
//!
//! 1. **Engine work is a critical section** ([`enter`]): every hook that does
//!    more than its lock-free fast-path check (one atomic load) first blocks
//!    every asynchronous signal of the calling thread (the synchronous ones a
//!    fault raises stay open: the engine's fault-safe copies rely on them) and enters the *fork gate* shared.
//!    A signal that arrives meanwhile is delivered when the hook returns,
//!    exactly as the kernel delivers it when a system call returns. So a
//!    signal handler never runs on top of half-done engine work of its own
//!    thread (no deadlock on an engine lock, no re-entered allocator), and
//!    `fork` never copies a lock that another thread holds.
//! 2. **The fork gate** is a small reader/writer futex word. Our
//!    `pthread_atfork` *prepare* handler blocks the forking thread's signals
//!    and takes the gate exclusively: it waits until no other thread is inside a critical
//!    section and keeps new ones out. Every lock the shim and the engine
//!    take is taken only inside critical sections, so at the moment of the
//!    fork none is held by another thread, and the child starts with all of
//!    them free. Until the parent and child handlers open the gate again (the
//!    child also refreshes the cached pid), the forking thread counts as
//!    inside a critical section, so other libraries' atfork handlers that
//!    run after ours may still call our hooks.
//! 3. **A `vfork` child is a foreigner** ([`foreign`]): it shares our memory
//!    (the fd table, every context) with the parent, but not the parent's fd
//!    table, and `pthread_atfork` handlers do not run for it. Its `close`,
//!    `close_range`, `dup*` and `open` go straight to the kernel and touch
//!    none of the shared state, so the parent finds its fds as it left them.
//!    It is recognised by its pid: the raw `getpid` differs from the pid
//!    cached at load time and after every `fork`. The same holds for a child
//!    made with a raw `clone`, which skipped the atfork handlers too.
//! 4. **Fd numbers change under one lock** ([`fd_ops`]): `close`,
//!    `close_range`, `closefrom`, the `dup` family, and every operation that
//!    gives birth to an emulated fd (opening a device node, an ioctl that
//!    creates an engine fd) run their real system call and the registry
//!    update under one mutex, so that a `dup` racing a `close` of the same
//!    fd yields either `EBADF` or a fully registered duplicate, never a bare
//!    memfd or eventfd. While a birth is in flight ([`Birth`]) every `close`
//!    and `dup` takes that slow path: the new fd exists in the kernel before
//!    it is registered, and a racing `close` of the number must wait until
//!    the birth completed.
//! 5. **The engine's private fds never show at the program's numbers**
//!    ([`private_fd_guard`]): a `/proc` file the engine reads, a pidfd, a
//!    reference to an eventfd — fds the kernel would never put in the
//!    program's table — are made at the lowest free number, which a
//!    program thread may be `dup`ing at that moment (a number it just
//!    closed). Such an fd is made while no `dup`-family call is inside its
//!    real system call and none may enter one, and is moved out of the
//!    program's way before they may again. The exclusion is lock-free
//!    ([`fd_call`]): the engine makes these fds with its own locks held,
//!    and the fd-number lock's holders wait for engine locks.
//!
//! The allocator: the shim's Rust code (the engine included) allocates from
//! its own heap ([`mimalloc`], see `lib.rs`), never from the program's
//! `malloc`. A signal handler that interrupted the program inside `malloc`
//! and then calls one of our async-signal-safe hooks (`close` dropping the
//! last reference to a context, `read` of a fault fd, `open` of
//! `/dev/iommu`) therefore never re-enters the program's allocator; and ours
//! is never re-entered on one thread because it runs only inside critical
//! sections, with signals blocked.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Set in [`GATE`] while a `fork` is in progress (prepare to parent/child).
const WRITER: u32 = 1 << 31;

/// The fork gate: `WRITER` | number of threads inside critical sections.
static GATE: AtomicU32 = AtomicU32::new(0);

/// The pid of this process as of load time or the last `fork` (0 = not
/// read yet).
static PID: AtomicI32 = AtomicI32::new(0);

/// How many fd births are in flight (see [`Birth`]).
static BIRTHS: AtomicU32 = AtomicU32::new(0);

/// How many fd births ever started: a `dup` that took the fast path checks
/// that none started while it ran (see [`birth_gen`]).
static BIRTH_GEN: AtomicU64 = AtomicU64::new(0);

/// Serialises fd-number changes of fds that are, or are about to become,
/// ours (see rule 4).
static FD_OPS: Mutex<()> = Mutex::new(());

/// How many `dup`-family calls are inside their real system call (rule 5,
/// [`fd_call`]).
static FD_CALLS: AtomicU32 = AtomicU32::new(0);

/// How many private fds of the engine are being made at a low number
/// (rule 5, [`private_fd_guard`]).
static HIDING: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// Critical-section nesting depth of this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The signal mask to restore in the parent/child handler of a `fork`
    /// whose prepare handler blocked signals and closed the gate.
    static FORK_MASK: Cell<Option<libc::sigset_t>> = const { Cell::new(None) };
    /// Whether this thread holds [`FD_OPS`].
    static HOLDS_FD_OPS: Cell<bool> = const { Cell::new(false) };
    /// This thread's part of [`FD_CALLS`], never less than it: raised just
    /// before the shared count, lowered just after it (a signal handler of
    /// this thread that makes a private fd must not wait for the call it
    /// interrupted, and must wait for every other thread's).
    static MY_FD_CALLS: Cell<u32> = const { Cell::new(0) };
    /// This thread's part of [`HIDING`].
    static MY_HIDING: Cell<u32> = const { Cell::new(0) };
}

/// `rt_sigprocmask` directly: glibc's wrappers leave its internal
/// cancellation and set*id signals unblocked, and a cancellation inside a
/// critical section would leave the gate and the locks held for ever.
fn sigprocmask(how: libc::c_int, set: &libc::sigset_t) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to be overwritten.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for a kernel sigset (8 bytes on Linux,
    // the size passed; libc's sigset_t is larger).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            set as *const libc::sigset_t,
            &mut old as *mut libc::sigset_t,
            8usize,
        )
    };
    old
}

/// The signals a fault raises synchronously: never blocked (a blocked
/// fault kills the process), and needed unblocked by the engine's
/// fault-safe copies (see [`uiommufd::faultsafe`]).
const SYNCHRONOUS: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Whether `sig` is raised synchronously by faults.
pub(crate) fn is_synchronous(sig: libc::c_int) -> bool {
    SYNCHRONOUS.contains(&sig)
}

/// Block every asynchronous signal of the calling thread; returns the
/// previous mask.
pub(crate) fn block_all() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to be overwritten.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t.
    unsafe { libc::sigfillset(&mut all) };
    for sig in SYNCHRONOUS {
        // SAFETY: as above.
        unsafe { libc::sigdelset(&mut all, sig) };
    }
    sigprocmask(libc::SIG_BLOCK, &all)
}

/// Restore a mask returned by [`block_all`].
fn restore(mask: &libc::sigset_t) {
    sigprocmask(libc::SIG_SETMASK, mask);
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 that lives for the whole
    // program; a spurious return is handled by the callers' loops.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

fn gate_enter_shared() {
    loop {
        let s = GATE.load(Ordering::Acquire);
        if s & WRITER == 0 {
            if GATE
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
            continue;
        }
        futex_wait(&GATE, s);
    }
}

fn gate_exit_shared() {
    let prev = GATE.fetch_sub(1, Ordering::Release);
    if prev == WRITER | 1 {
        // the last one out: a fork is waiting
        futex_wake_all(&GATE);
    }
}

fn gate_enter_exclusive() {
    loop {
        let s = GATE.load(Ordering::Acquire);
        if s & WRITER == 0 {
            if GATE
                .compare_exchange_weak(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
            continue;
        }
        // another thread is forking
        futex_wait(&GATE, s);
    }
    loop {
        let s = GATE.load(Ordering::Acquire);
        if s == WRITER {
            return;
        }
        futex_wait(&GATE, s);
    }
}

fn gate_exit_exclusive() {
    GATE.store(0, Ordering::Release);
    futex_wake_all(&GATE);
}

/// A critical section (rule 1): signals blocked, fork gate entered. Nests;
/// the outermost one restores the signal mask when dropped.
#[must_use]
pub(crate) struct Critical {
    /// The mask to restore, when this section blocked signals.
    saved: Option<libc::sigset_t>,
    /// Whether this is the outermost section of the thread (holds the gate).
    outer: bool,
}

/// Whether this thread is inside a critical section: a hook reached from
/// the shim's or the engine's own code (its allocator, an ioctl), not
/// from the program.
pub(crate) fn nested() -> bool {
    DEPTH.get() > 0
}

/// Enter a critical section (see the module docs).
pub(crate) fn enter() -> Critical {
    let depth = DEPTH.get();
    if depth > 0 {
        DEPTH.set(depth + 1);
        return Critical {
            saved: None,
            outer: false,
        };
    }
    let saved = crate::signals::handlers_possible().then(block_all);
    gate_enter_shared();
    DEPTH.set(1);
    Critical { saved, outer: true }
}

/// Run `f` while no other thread is inside a critical section (the fork
/// gate held exclusively); from the calling thread's own critical section,
/// just run it.
pub(crate) fn drained(f: impl FnOnce()) {
    if DEPTH.get() > 0 {
        f();
        return;
    }
    let mask = block_all();
    gate_enter_exclusive();
    f();
    gate_exit_exclusive();
    restore(&mask);
}

impl Drop for Critical {
    fn drop(&mut self) {
        DEPTH.set(DEPTH.get().saturating_sub(1));
        if self.outer {
            gate_exit_shared();
            if let Some(mask) = self.saved.take() {
                restore(&mask);
            }
        }
    }
}

/// The caller's pid from the kernel (a `vfork` child's own), not cached.
pub(crate) fn raw_getpid() -> i32 {
    // SAFETY: getpid takes no argument and cannot fail; the raw syscall
    // answers for the calling process even in a vfork child.
    unsafe { libc::syscall(libc::SYS_getpid) as i32 }
}

/// This process's pid, cached (refreshed in the `fork` child).
pub(crate) fn pid() -> i32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            let p = raw_getpid();
            PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// Whether the caller runs in a process that shares our memory but is not
/// us: a `vfork` child (or a raw `clone` child) before its `exec` (rule 3).
/// One `getpid` system call: only slow paths ask.
pub(crate) fn foreign() -> bool {
    raw_getpid() != pid()
}

/// The fd-number lock held (rule 4); `None` inside when this thread held
/// it already (a hook reached again from the engine or a nested hook).
#[must_use]
pub(crate) struct FdOps(Option<MutexGuard<'static, ()>>);

impl Drop for FdOps {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            HOLDS_FD_OPS.set(false);
        }
    }
}

/// Take the fd-number lock (rule 4). Call inside a critical section.
pub(crate) fn fd_ops() -> FdOps {
    if HOLDS_FD_OPS.get() {
        return FdOps(None);
    }
    // poisoning only says a panic happened elsewhere while it was held; the
    // lock protects no data of its own
    let g = FD_OPS.lock().unwrap_or_else(|e| e.into_inner());
    HOLDS_FD_OPS.set(true);
    FdOps(Some(g))
}

/// Run `call`, a `dup`-family system call of the program's (one that
/// makes a new fd from a number), while no private fd of the engine is at
/// a number it could duplicate (rule 5). Lock-free: it waits only for
/// [`private_fd_guard`]s in flight, which wait for nothing but calls
/// already inside this function. `call` must not be a cancellation point
/// (the count would stay up) and must not block; `dup`, `dup2`, `dup3` and
/// `fcntl(F_DUPFD*)` are neither.
pub(crate) fn fd_call<R>(call: impl FnOnce() -> R) -> R {
    loop {
        enter_fd_call();
        let h = HIDING.load(Ordering::SeqCst);
        // (a private fd this very thread is making, interrupted by a
        // signal handler of the program: not waited for, or never)
        if h <= MY_HIDING.get() {
            break;
        }
        // Parked uncounted: a private fd made meanwhile (by another thread,
        // or by a signal handler of this one) waits for nothing of ours.
        leave_fd_call();
        futex_wait(&HIDING, h);
    }
    let r = call();
    let saved = crate::path::errno();
    leave_fd_call();
    crate::path::set_errno(saved);
    r
}

/// Count this thread into [`FD_CALLS`] (its own part first).
fn enter_fd_call() {
    MY_FD_CALLS.set(MY_FD_CALLS.get() + 1);
    FD_CALLS.fetch_add(1, Ordering::SeqCst);
}

/// Count this thread out of [`FD_CALLS`] (its own part last), waking a
/// private-fd guard that waits for the count to drop.
fn leave_fd_call() {
    FD_CALLS.fetch_sub(1, Ordering::SeqCst);
    MY_FD_CALLS.set(MY_FD_CALLS.get() - 1);
    if HIDING.load(Ordering::SeqCst) != 0 {
        futex_wake_all(&FD_CALLS);
    }
}

/// The engine's private-fd guard ([`uiommufd::user::set_private_fd_guard`],
/// rule 5): `make` runs while no `dup`-family call of the program is inside
/// its real system call ([`fd_call`]), and the new fd is moved to a number
/// out of the program's way (`remote::hide`) before any may enter one. A
/// `close` of the program's is not held off (it may block, and is a
/// cancellation point): a program that closes a number it does not hold
/// may close such an fd, as it may close any of the shim's own; the engine
/// then sees the error (`EBADF` from the move).
pub(crate) fn private_fd_guard(make: &mut dyn FnMut() -> libc::c_int) -> libc::c_int {
    // Signals blocked: a handler of this thread must not `dup` meanwhile
    // (inside a critical section they are already). No fork gate: the
    // engine's own threads may call this outside critical sections, and a
    // fork child recounts what is in flight (`reset_fd_calls_in_child`).
    let mask = (!nested() && crate::signals::handlers_possible()).then(block_all);
    MY_HIDING.set(MY_HIDING.get() + 1);
    HIDING.fetch_add(1, Ordering::SeqCst);
    loop {
        let n = FD_CALLS.load(Ordering::SeqCst);
        if n <= MY_FD_CALLS.get() {
            break;
        }
        futex_wait(&FD_CALLS, n);
    }
    let fd = make();
    let r = if fd < 0 {
        fd
    } else {
        match crate::remote::hide_checked(fd) {
            Ok(high) => high,
            Err(e) => {
                crate::path::set_errno(e);
                -1
            }
        }
    };
    let saved = crate::path::errno();
    if HIDING.fetch_sub(1, Ordering::SeqCst) == 1 {
        futex_wake_all(&HIDING);
    }
    MY_HIDING.set(MY_HIDING.get() - 1);
    if let Some(mask) = mask {
        restore(&mask);
    }
    crate::path::set_errno(saved);
    r
}

/// Lock-free: whether an fd birth is in flight somewhere (close and dup
/// must then take their slow path).
#[inline]
pub(crate) fn births() -> bool {
    BIRTHS.load(Ordering::SeqCst) != 0
}

/// The number of births started so far. A fast-path `dup` reads it before
/// and after its real call: if it changed (or a birth is in flight), the
/// number it duplicated may have become one of ours in between — a birth
/// that created its fd there after the `dup` decided it was not ours — and
/// the `dup` is redone under [`fd_ops`].
pub(crate) fn birth_gen() -> u64 {
    BIRTH_GEN.load(Ordering::SeqCst)
}

/// An fd birth in flight: from before the kernel creates the fd until it is
/// registered (hold [`fd_ops`] for the same span).
#[must_use]
pub(crate) struct Birth(());

impl Birth {
    /// Announce a birth.
    pub(crate) fn new() -> Birth {
        BIRTHS.fetch_add(1, Ordering::SeqCst);
        BIRTH_GEN.fetch_add(1, Ordering::SeqCst);
        Birth(())
    }
}

impl Drop for Birth {
    fn drop(&mut self) {
        BIRTHS.fetch_sub(1, Ordering::SeqCst);
    }
}

extern "C" fn atfork_prepare() {
    if DEPTH.get() > 0 {
        // fork from inside a critical section of this very thread (only
        // possible if the shim itself forked): the gate cannot be closed
        // without waiting for ourselves
        return;
    }
    let mask = block_all();
    gate_enter_exclusive();
    FORK_MASK.set(Some(mask));
    // Prepare handlers registered before ours run after it and may call our
    // hooks: this thread holds the gate, so it counts as inside a critical
    // section until the fork is done.
    DEPTH.set(1);
    // the child's connections to the contexts it inherits
    let _ = crate::guard(crate::remote::prepare);
}

extern "C" fn atfork_parent() {
    if let Some(mask) = FORK_MASK.take() {
        let _ = crate::guard(crate::remote::parent);
        DEPTH.set(0);
        gate_exit_exclusive();
        restore(&mask);
    }
}

/// In a fork child: the calls of rule 5 in flight are those of the threads
/// that were not copied, but for this thread's own.
fn reset_fd_calls_in_child() {
    FD_CALLS.store(MY_FD_CALLS.get(), Ordering::SeqCst);
    HIDING.store(MY_HIDING.get(), Ordering::SeqCst);
}

extern "C" fn atfork_child() {
    PID.store(raw_getpid(), Ordering::Relaxed);
    reset_fd_calls_in_child();
    if let Some(mask) = FORK_MASK.take() {
        let _ = crate::guard(crate::remote::child);
        DEPTH.set(0);
        gate_exit_exclusive();
        restore(&mask);
    }
}

/// In a child made without the atfork handlers (`_Fork`) while this
/// thread held the gate (see `keeper`): the child's copy of the gate and
/// of this thread's depth start afresh, and the pid is the child's.
pub(crate) fn reset_in_child() {
    PID.store(raw_getpid(), Ordering::Relaxed);
    reset_fd_calls_in_child();
    GATE.store(0, Ordering::Release);
    DEPTH.set(0);
}

/// Install the `pthread_atfork` handlers and cache the pid. Called from the
/// library's constructor.
pub(crate) fn init() {
    PID.store(raw_getpid(), Ordering::Relaxed);
    // SAFETY: three `extern "C" fn()` handlers that live for the whole
    // program (the library is never unloaded: LD_PRELOAD).
    unsafe {
        libc::pthread_atfork(
            Some(atfork_prepare),
            Some(atfork_parent),
            Some(atfork_child),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_has(sig: libc::c_int) -> bool {
        // SAFETY: an all-zero sigset_t is a valid value; reading the mask.
        let mut cur: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; SIG_BLOCK with a NULL set only reads.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) };
        // SAFETY: `cur` is a valid sigset_t.
        unsafe { libc::sigismember(&cur, sig) == 1 }
    }

    #[test]
    fn critical_sections_nest_and_restore_the_mask() {
        // a program with a handler: sections block signals from now on
        crate::signals::note_handler(libc::SIGUSR1, crate::signals::SOME_HANDLER);
        assert!(!mask_has(libc::SIGUSR1));
        {
            let _a = enter();
            assert!(mask_has(libc::SIGUSR1));
            assert!(mask_has(libc::SIGALRM));
            {
                let _b = enter();
                assert_eq!(DEPTH.get(), 2);
            }
            assert!(mask_has(libc::SIGUSR1), "inner exit keeps the mask");
            assert!(GATE.load(Ordering::SeqCst) & !WRITER >= 1);
        }
        assert!(!mask_has(libc::SIGUSR1));
        assert_eq!(DEPTH.get(), 0);
    }

    #[test]
    fn pid_is_ours_and_we_are_not_foreign() {
        assert_eq!(pid(), std::process::id() as i32);
        assert!(!foreign());
    }

    #[test]
    fn births_count() {
        assert!(!births() || BIRTHS.load(Ordering::SeqCst) > 0);
        let b = Birth::new();
        assert!(births());
        drop(b);
    }
}
