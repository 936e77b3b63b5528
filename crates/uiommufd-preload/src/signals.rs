//! Owning `SIGSEGV` and `SIGBUS` for fault-safe copies, while the program
//! keeps its own handlers.
//!
//! At load time the shim installs [`uiommufd::faultsafe::handler`] for both
//! signals (whatever was installed before, e.g. by a library's
//! constructor, becomes the program's disposition) and turns on the
//! engine's in-process fault-safe copies. From then on `sigaction`,
//! `signal`, `bsd_signal`, `sysv_signal`/`__sysv_signal` and `sigset` for
//! these two signals record the program's wishes in
//! [`uiommufd::faultsafe`] and answer with what the program set before, as
//! libc would, without touching the kernel's disposition. A fault that is
//! not the engine's is passed to the program's handler with the mask and
//! flags it asked for, or takes the default action. Every other signal is
//! forwarded to libc untouched.
//!
//! `UIOMMUFD_FAULT_HANDLER=0` leaves the signals alone; the engine then
//! copies with `process_vm_readv`/`process_vm_writev` (~1.2 µs a copy).
//!
//! Known limit: a raw `rt_sigaction` system call replaces our handler
//! behind our back; a bad pointer in a command would then crash the
//! program instead of failing with `EFAULT`.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

use uiommufd::faultsafe;

use crate::path::set_errno;
use crate::real;

/// Set once our handler is installed for both signals.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Set (for good) once the program may have a handler for an asynchronous
/// signal: from then on critical sections block signals (see `sync`).
/// Until then no handler can run on top of our code, and critical sections
/// skip the two `rt_sigprocmask` calls.
static HANDLERS: AtomicBool = AtomicBool::new(false);

/// Whether a signal handler of the program may interrupt a critical
/// section (one atomic load).
#[inline]
pub(crate) fn handlers_possible() -> bool {
    HANDLERS.load(Ordering::Acquire)
}

/// A disposition that is some handler (neither `SIG_DFL`, `SIG_IGN` nor
/// `SIG_ERR`), for when we cannot read which.
pub(crate) const SOME_HANDLER: libc::sighandler_t = 4096;

/// Whether `disp` runs code of the program when `sig` arrives
/// asynchronously (a handler of an asynchronous signal).
fn catches(sig: c_int, disp: libc::sighandler_t) -> bool {
    disp != libc::SIG_DFL
        && disp != libc::SIG_IGN
        && disp != libc::SIG_ERR
        && !crate::sync::is_synchronous(sig)
}

/// The program is about to install a handler: from now on critical
/// sections block signals. The first time, wait until every critical
/// section that runs with signals open has ended (the fork gate), so that
/// none is left that the new handler could interrupt.
pub(crate) fn note_handler(sig: c_int, disp: libc::sighandler_t) {
    if catches(sig, disp) && !HANDLERS.load(Ordering::Acquire) {
        crate::sync::drained(|| HANDLERS.store(true, Ordering::Release));
    }
}

/// Install the handler and enable fault-safe copies (library constructor).
pub(crate) fn init() {
    if std::env::var_os("UIOMMUFD_FAULT_HANDLER").is_some_and(|v| v == "0") {
        return;
    }
    let Some(real_sigaction) = real::sigaction() else {
        return;
    };
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = faultsafe::handler as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: installing a valid handler, reading the previous one.
        if unsafe { real_sigaction(sig, &act, &mut old) } != 0 {
            return;
        }
        faultsafe::set_program_action(sig, &old);
    }
    INSTALLED.store(true, Ordering::Release);
    faultsafe::enable();
}

/// Look at the dispositions installed before the shim was loaded or
/// initialised (a library constructor, or an inherited one): a handler
/// there counts as the program's (library constructor).
pub(crate) fn scan_existing_handlers() {
    let Some(real_sigaction) = real::sigaction() else {
        HANDLERS.store(true, Ordering::Release);
        return;
    };
    for sig in 1..=64 {
        // SAFETY: an all-zero sigaction is a valid value to be overwritten.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a query (NULL act); libc refuses its internal signals.
        if unsafe { real_sigaction(sig, std::ptr::null(), &mut old) } == 0
            && catches(sig, old.sa_sigaction)
        {
            HANDLERS.store(true, Ordering::Release);
            return;
        }
    }
}

/// Whether `sig` is one whose disposition we keep for the program.
fn kept(sig: c_int) -> bool {
    faultsafe::owns(sig) && INSTALLED.load(Ordering::Acquire)
}

/// Copy a `T` between the program's memory and ours, fault-safely: `false`
/// on a bad pointer.
///
/// # Safety
/// One of the two pointers is ours and valid for a `T`.
unsafe fn copy_struct<T>(dst: *mut T, src: *const T) -> bool {
    let len = std::mem::size_of::<T>();
    if faultsafe::enabled() {
        // SAFETY: forwarded; faults on the program's side are fixed up.
        return unsafe { faultsafe::copy(dst.cast(), src.cast(), len) } == 0;
    }
    // before `init` (a library constructor) or with the handler off: the
    // kernel checks the pointers
    let local = libc::iovec {
        iov_base: dst.cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: src as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: reading `len` bytes at `src` into `dst` through the kernel,
    // which fails with EFAULT on a bad pointer. (Only reads of the
    // program's structs take this path; writes happen once `kept` holds.)
    unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) == len as isize }
}

/// `sigaction(2)`: for `SIGSEGV`/`SIGBUS`, records the program's
/// disposition (see the module docs); every other signal goes to libc.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    oact: *mut libc::sigaction,
) -> c_int {
    if kept(sig) {
        let old = faultsafe::program_action(sig);
        if !act.is_null() {
            // SAFETY: an all-zero sigaction is a valid value to fill in.
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: `new` is ours; `act` is the program's pointer.
            if !unsafe { copy_struct(&mut new, act) } {
                set_errno(libc::EFAULT);
                return -1;
            }
            faultsafe::set_program_action(sig, &new);
        }
        // SAFETY: `old` is ours; `oact` is the program's pointer.
        if !oact.is_null() && !unsafe { copy_struct(oact, &old) } {
            set_errno(libc::EFAULT);
            return -1;
        }
        return 0;
    }
    let Some(real) = real::sigaction() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if !act.is_null() {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `new` is ours; a bad `act` is left for libc to report.
        if unsafe { copy_struct(&mut new, act) } {
            note_handler(sig, new.sa_sigaction);
        } else {
            // unreadable here: assume the worst
            note_handler(sig, SOME_HANDLER);
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(sig, act, oact) }
}

/// Set the program's disposition of a kept signal to `handler` with `flags`
/// and `mask_self` (the signal itself in `sa_mask`); returns the old
/// handler.
fn set_simple(
    sig: c_int,
    handler: libc::sighandler_t,
    flags: c_int,
    mask_self: bool,
) -> libc::sighandler_t {
    let old = faultsafe::program_action(sig);
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler;
    new.sa_flags = flags;
    if mask_self {
        // SAFETY: `sa_mask` is a valid sigset_t.
        unsafe { libc::sigaddset(&mut new.sa_mask, sig) };
    }
    faultsafe::set_program_action(sig, &new);
    old.sa_sigaction
}

macro_rules! signal_hook {
    ($(#[$m:meta])* $name:ident, $flags:expr, $mask_self:expr) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Same contract as the libc function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
            if kept(sig) && handler != libc::SIG_ERR {
                return set_simple(sig, handler, $flags, $mask_self);
            }
            note_handler(sig, handler);
            let Some(real) = real::$name() else {
                set_errno(libc::ENOSYS);
                return libc::SIG_ERR;
            };
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(sig, handler) }
        }
    };
}

signal_hook!(
    /// `signal(3)` (BSD semantics: `SA_RESTART`, the signal masked in its
    /// handler), recording `SIGSEGV`/`SIGBUS` dispositions.
    signal,
    libc::SA_RESTART,
    true
);
signal_hook!(
    /// `bsd_signal(3)`: as [`signal`].
    bsd_signal,
    libc::SA_RESTART,
    true
);
signal_hook!(
    /// `sysv_signal(3)` (one-shot, not masked), recording `SIGSEGV`/`SIGBUS`
    /// dispositions.
    sysv_signal,
    libc::SA_RESETHAND | libc::SA_NODEFER,
    false
);
signal_hook!(
    /// `__sysv_signal`: as [`sysv_signal`].
    __sysv_signal,
    libc::SA_RESETHAND | libc::SA_NODEFER,
    false
);

/// `SIG_HOLD` from `<signal.h>`.
const SIG_HOLD: libc::sighandler_t = 2;

/// `sigset(3)`, recording `SIGSEGV`/`SIGBUS` dispositions (`SIG_HOLD`
/// blocks the signal and keeps the handler, as in libc).
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn sigset(sig: c_int, disp: libc::sighandler_t) -> libc::sighandler_t {
    if kept(sig) && disp != libc::SIG_ERR {
        // SAFETY: an all-zero sigset_t is valid; `sigaddset` fills it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        unsafe { libc::sigaddset(&mut set, sig) };
        if disp == SIG_HOLD {
            // SAFETY: blocking one signal of this thread.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
            return faultsafe::program_action(sig).sa_sigaction;
        }
        let old = set_simple(sig, disp, 0, false);
        // SAFETY: unblocking one signal of this thread, as sigset does.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        return old;
    }
    note_handler(sig, disp);
    let Some(real) = real::sigset() else {
        set_errno(libc::ENOSYS);
        return libc::SIG_ERR;
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(sig, disp) }
}
