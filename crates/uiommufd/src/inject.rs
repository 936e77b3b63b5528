//! Failure injection: the kernel's `iommufd_should_fail()` and the
//! per-task `fail-nth` counter of `Documentation/fault-injection`.
//!
//! Every place where the kernel's iommufd can fail on its own (an
//! allocation, a page pin, a domain map, the locked-memory accounting, an fd
//! creation, ...) calls [`point`] (or [`should_fail`]) with a name such as
//! `"pages.pin"`. Normally that is one relaxed atomic load and nothing else.
//!
//! # `fail-nth`
//!
//! [`set_fail_nth`]`(tid, n)` arms thread `tid`: the `n`th injection point
//! *that thread* reaches fails, the ones before it pass. As in the kernel,
//! the counter is decremented at every point the thread reaches, so reading
//! it back ([`fail_nth`]) gives what is left: `0` once the failure fired
//! (or when the thread was never armed), non-zero when the calls made since
//! did not reach `n` points. Writing `0` disarms. The preload emulates
//! `/proc/self/task/TID/fail-nth` (and `/proc/thread-self/fail-nth`) over
//! this, with [`crate::fail_nth::FailNthFile`]; Rust code calls the functions directly.
//!
//! # Whose state this is
//!
//! In the kernel `fail-nth` is an attribute of the task (`task_struct`'s
//! `fail_nth`), not of an iommufd context or of the process a command
//! charges: it follows the thread that runs the code. The table here is
//! the same thing, keyed by tid: a thread's counter counts the injection
//! points that thread reaches, whatever context or client
//! ([`crate::client`]) the command is for. It is no part of the engine's
//! object model (contexts, clients and pages objects hold none of it).
//! The preload's emulated `fail-nth` file reaches the thread it names;
//! a command another process sends the owner runs on an owner's thread,
//! whose counter is the one that counts. [`total_fired`] and
//! [`invariant_violations`] are the process's diagnostics.
//!
//! # Checking the unwinding
//!
//! Every call must leave every object, pin and counter exactly as it was
//! when it fails. After an ioctl during which an injected failure fired, the
//! dispatcher runs [`Context::check_invariants`] and
//! [`crate::pages::check_accounting`] when [`checks_enabled`] (debug builds,
//! or `UIOMMUFD_CHECK_INVARIANTS=1`). A violation makes the ioctl fail with
//! `EIO`, is counted ([`invariant_violations`]) and is printed to stderr on
//! a line that starts with [`VIOLATION_MARKER`], so that a test runner can
//! grep its logs for it. The process-wide accounting check is only made
//! while the process has a single thread (other threads could be pinning
//! meanwhile); Rust tests call it themselves.
//!
//! [`Context::check_invariants`]: crate::Context::check_invariants

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::{Error, Result};

/// How many threads have a non-zero `fail-nth`: the fast path's one load.
static ARMED: AtomicUsize = AtomicUsize::new(0);
/// tid -> remaining count (never zero in the map).
static NTH: Mutex<BTreeMap<i32, u32>> = Mutex::new(BTreeMap::new());
/// Injected failures fired in this process.
static FIRED: AtomicU64 = AtomicU64::new(0);
/// Invariant violations found after injected failures.
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Injected failures fired on this thread, and the name of the last one.
    static THREAD_FIRED: Cell<(u64, &'static str)> = const { Cell::new((0, "")) };
}

/// The prefix of the stderr line that reports an invariant violation found
/// after an injected failure.
pub const VIOLATION_MARKER: &str = "UIOMMUFD-INVARIANT-VIOLATION";

pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no argument and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Whether the calling thread's next injection point fails. One relaxed
/// atomic load while no thread is armed.
#[inline]
pub fn should_fail(name: &'static str) -> bool {
    if ARMED.load(Ordering::Relaxed) == 0 {
        return false;
    }
    should_fail_slow(name)
}

#[cold]
#[inline(never)]
fn should_fail_slow(name: &'static str) -> bool {
    let tid = gettid();
    {
        let mut map = NTH.lock();
        let Some(n) = map.get_mut(&tid) else {
            return false;
        };
        *n -= 1;
        if *n != 0 {
            return false;
        }
        map.remove(&tid);
        ARMED.fetch_sub(1, Ordering::Relaxed);
    }
    FIRED.fetch_add(1, Ordering::Relaxed);
    THREAD_FIRED.with(|c| c.set((c.get().0 + 1, name)));
    tracing::debug!(point = name, tid, "injected failure");
    true
}

/// An injection point: `Err(errno)` when the calling thread's `fail-nth`
/// says this one fails (see the module docs), `Ok(())` otherwise.
#[inline]
pub fn point(name: &'static str, errno: i32) -> Result<()> {
    if should_fail(name) {
        return Err(Error::new(
            errno,
            format!("injected failure at {name} (fail-nth)"),
        ));
    }
    Ok(())
}

/// Arm thread `tid`: its `n`th injection point from now fails (`0`
/// disarms). Writing `/proc/self/task/TID/fail-nth`.
pub fn set_fail_nth(tid: i32, n: u32) {
    let mut map = NTH.lock();
    let was = if n == 0 {
        map.remove(&tid).is_some()
    } else {
        map.insert(tid, n).is_some()
    };
    match (was, n != 0) {
        (false, true) => {
            ARMED.fetch_add(1, Ordering::Relaxed);
        }
        (true, false) => {
            ARMED.fetch_sub(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// What is left of thread `tid`'s count: `0` once the failure fired or when
/// it was never armed. Reading `/proc/self/task/TID/fail-nth`.
pub fn fail_nth(tid: i32) -> u32 {
    NTH.lock().get(&tid).copied().unwrap_or(0)
}

/// [`set_fail_nth`] for the calling thread.
pub fn set_fail_nth_current(n: u32) {
    set_fail_nth(gettid(), n);
}

/// [`fail_nth`] of the calling thread.
pub fn fail_nth_current() -> u32 {
    fail_nth(gettid())
}

/// Whether any thread is armed (one relaxed load).
#[inline]
pub fn armed() -> bool {
    ARMED.load(Ordering::Relaxed) != 0
}

/// How many injected failures fired on the calling thread, and the name of
/// the last one.
pub fn thread_fired() -> (u64, &'static str) {
    THREAD_FIRED.with(|c| c.get())
}

/// How many injected failures fired in this process.
pub fn total_fired() -> u64 {
    FIRED.load(Ordering::Relaxed)
}

/// How many invariant violations were found after injected failures.
pub fn invariant_violations() -> u64 {
    VIOLATIONS.load(Ordering::Relaxed)
}

/// Whether the checks after an injected failure run: debug builds, or
/// `UIOMMUFD_CHECK_INVARIANTS=1`.
pub fn checks_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        cfg!(debug_assertions)
            || std::env::var("UIOMMUFD_CHECK_INVARIANTS").is_ok_and(|v| v.trim() == "1")
    })
}

/// Whether the process has one thread (from `/proc/self/stat`).
pub(crate) fn single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    // after "pid (comm) ": state is field 3, num_threads field 20
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .and_then(|n| n.parse::<u32>().ok())
        == Some(1)
}

/// Record and report a violation found after an injected failure; the
/// caller turns the call into `EIO`.
pub fn report_violation(point: &str, during: &str, what: &str) {
    VIOLATIONS.fetch_add(1, Ordering::Relaxed);
    eprintln!("{VIOLATION_MARKER}: after the injected failure at {point} during {during}: {what}");
    tracing::error!(
        point,
        during,
        "invariant violation after an injected failure: {what}"
    );
}

/// Snapshot taken before a call, to tell afterwards whether an injected
/// failure fired on this thread during it. Free while nothing is armed.
#[derive(Debug, Clone, Copy)]
pub struct Watch(Option<u64>);

impl Watch {
    /// Start watching (one relaxed load when no thread is armed).
    #[inline]
    pub fn start() -> Watch {
        if armed() {
            Watch(Some(thread_fired().0))
        } else {
            Watch(None)
        }
    }

    /// The name of the point that fired on this thread since
    /// [`Watch::start`], if one did.
    #[inline]
    pub fn fired(self) -> Option<&'static str> {
        let before = self.0?;
        let (n, name) = thread_fired();
        (n != before).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_nth_point_fails_once() {
        set_fail_nth_current(3);
        assert!(armed());
        assert_eq!(fail_nth_current(), 3);
        let w = Watch::start();
        assert!(point("test.a", libc::ENOMEM).is_ok());
        assert!(point("test.b", libc::ENOMEM).is_ok());
        assert_eq!(fail_nth_current(), 1);
        let e = point("test.c", libc::ENOMEM).unwrap_err();
        assert_eq!(e.errno().0, libc::ENOMEM);
        assert!(e.reason().contains("test.c"));
        assert_eq!(w.fired(), Some("test.c"));
        assert_eq!(fail_nth_current(), 0);
        assert!(point("test.d", libc::ENOMEM).is_ok(), "fires once");
        set_fail_nth_current(5);
        set_fail_nth_current(0);
        assert_eq!(fail_nth_current(), 0);
        assert!(point("test.e", libc::ENOMEM).is_ok());
    }

    #[test]
    fn inject_other_threads_are_not_counted() {
        set_fail_nth_current(1);
        std::thread::spawn(|| {
            for _ in 0..10 {
                assert!(point("test.other", libc::ENOMEM).is_ok());
            }
        })
        .join()
        .unwrap();
        assert_eq!(fail_nth_current(), 1);
        assert!(should_fail("test.mine"));
    }
}
