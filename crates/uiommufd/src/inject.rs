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
//! this, with [`FailNthFile`]; Rust code calls the functions directly.
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

use crate::files::{self, EngineFile};
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

fn gettid() -> i32 {
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
fn single_threaded() -> bool {
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

/// The checks after a call during which an injected failure fired at
/// `point`: the context's invariants (when given) and, in a single-threaded
/// process, the process-wide pin accounting. `Err` describes the first
/// violation (already reported).
pub fn check_after_failure(
    ctx: Option<&crate::Context>,
    point: &str,
    during: &str,
) -> std::result::Result<(), String> {
    let mut problem = ctx.and_then(|c| c.check_invariants().err());
    if problem.is_none() && single_threaded() {
        problem = crate::pages::check_accounting().err();
    }
    match problem {
        Some(p) => {
            report_violation(point, during, &p);
            Err(p)
        }
        None => Ok(()),
    }
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

/// The kernel's `/proc/<pid>/task/<tid>/fail-nth` file of thread `tid`:
/// reading gives the remaining count and a newline (at the file position:
/// `pread` honours its offset), writing a number (decimal, `0x` hex or `0`
/// octal, one trailing newline allowed) arms the thread.
#[derive(Debug)]
pub struct FailNthFile {
    tid: i32,
    pos: Mutex<u64>,
}

impl FailNthFile {
    /// The file of thread `tid` (of this process).
    pub fn new(tid: i32) -> FailNthFile {
        FailNthFile {
            tid,
            pos: Mutex::new(0),
        }
    }

    /// The thread the file is about.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    fn alive(&self) -> Result<()> {
        // SAFETY: signal 0 only checks that the thread exists.
        let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), self.tid, 0) };
        if r != 0 {
            crate::bail!(ESRCH, "thread {} has exited", self.tid);
        }
        Ok(())
    }

    /// `simple_read_from_buffer` of "N\n" at `pos`.
    fn read_from(&self, buf: &mut [u8], pos: u64) -> Result<usize> {
        self.alive()?;
        let text = format!("{}\n", fail_nth(self.tid));
        let bytes = text.as_bytes();
        let Ok(pos) = usize::try_from(pos) else {
            return Ok(0);
        };
        if pos >= bytes.len() {
            return Ok(0);
        }
        let n = buf.len().min(bytes.len() - pos);
        buf[..n].copy_from_slice(&bytes[pos..pos + n]);
        Ok(n)
    }

    fn write_value(&self, buf: &[u8]) -> Result<usize> {
        let n = parse_uint(buf)?;
        self.alive()?;
        set_fail_nth(self.tid, n);
        Ok(buf.len())
    }
}

/// The kernel's `kstrtouint_from_user(buf, count, 0, &n)`: at most 22
/// bytes are looked at, an optional `+`, base from the prefix (`0x` hex,
/// `0` octal, decimal), one optional trailing newline. `EINVAL` for
/// anything else, `ERANGE` past `u32::MAX`.
fn parse_uint(buf: &[u8]) -> Result<u32> {
    let s = &buf[..buf.len().min(22)];
    let s = s.strip_suffix(b"\n").unwrap_or(s);
    let s = s.strip_prefix(b"+").unwrap_or(s);
    let (digits, radix) = if s.len() > 2 && (s.starts_with(b"0x") || s.starts_with(b"0X")) {
        (&s[2..], 16)
    } else if s.len() > 1 && s[0] == b'0' {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        crate::bail!(EINVAL, "fail-nth: no number written");
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = match (c as char).to_digit(radix) {
            Some(d) => d as u64,
            None => crate::bail!(
                EINVAL,
                "fail-nth: {:?} is not a number",
                String::from_utf8_lossy(buf)
            ),
        };
        v = v * radix as u64 + d;
        if v > u32::MAX as u64 {
            crate::bail!(ERANGE, "fail-nth: the value is above UINT_MAX");
        }
    }
    Ok(v as u32)
}

impl EngineFile for FailNthFile {
    fn kind(&self) -> &'static str {
        "fail-nth"
    }

    fn read(&self, buf: &mut [u8], _nonblock: bool) -> Result<usize> {
        let mut pos = self.pos.lock();
        let n = self.read_from(buf, *pos)?;
        *pos += n as u64;
        Ok(n)
    }

    fn write(&self, buf: &[u8]) -> Result<usize> {
        self.write_value(buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, _nonblock: bool) -> Result<usize> {
        self.read_from(buf, offset)
    }

    fn write_at(&self, buf: &[u8], _offset: u64) -> Result<usize> {
        self.write_value(buf)
    }

    fn positional(&self) -> bool {
        true
    }

    /// The kernel's `kstrtouint_from_user` looks at a bounded prefix and the
    /// write consumes the whole count: copy only that prefix.
    fn write_user(&self, buf: files::UserBuf<'_>) -> Result<usize> {
        let mut tmp = [0u8; 22];
        let n = buf.len.min(tmp.len());
        buf.copy_in(0, &mut tmp[..n])?;
        self.write_value(&tmp[..n])?;
        Ok(buf.len)
    }

    fn write_user_at(&self, buf: files::UserBuf<'_>, _offset: u64) -> Result<usize> {
        self.write_user(buf)
    }

    fn poll_events(&self) -> i16 {
        // a regular proc file: always readable
        libc::POLLIN
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

    #[test]
    fn inject_parse_like_kstrtouint() {
        assert_eq!(parse_uint(b"12").unwrap(), 12);
        assert_eq!(parse_uint(b"12\n").unwrap(), 12);
        assert_eq!(parse_uint(b"0").unwrap(), 0);
        assert_eq!(parse_uint(b"0x10").unwrap(), 16);
        assert_eq!(parse_uint(b"010").unwrap(), 8);
        assert_eq!(parse_uint(b"+7").unwrap(), 7);
        assert_eq!(parse_uint(b"4294967295").unwrap(), u32::MAX);
        assert_eq!(
            parse_uint(b"4294967296").unwrap_err().errno().0,
            libc::ERANGE
        );
        for bad in [&b""[..], b"\n", b"-1", b"1 ", b"1\n\n", b"abc", b"09"] {
            assert_eq!(
                parse_uint(bad).unwrap_err().errno().0,
                libc::EINVAL,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn inject_file_protocol() {
        let f = FailNthFile::new(gettid());
        assert_eq!(f.write(b"7").unwrap(), 1);
        let mut b = [0u8; 16];
        assert_eq!(f.read_at(&mut b, 0, false).unwrap(), 2);
        assert_eq!(&b[..2], b"7\n");
        assert_eq!(f.read_at(&mut b, 1, false).unwrap(), 1);
        assert_eq!(f.read_at(&mut b, 2, false).unwrap(), 0);
        assert_eq!(f.read(&mut b[..1], false).unwrap(), 1);
        assert_eq!(f.read(&mut b, false).unwrap(), 1);
        assert_eq!(b[0], b'\n');
        assert_eq!(f.read(&mut b, false).unwrap(), 0, "EOF");
        assert_eq!(f.write_at(b"0", 5).unwrap(), 1);
        assert_eq!(f.read_at(&mut b, 0, false).unwrap(), 2);
        assert_eq!(&b[..2], b"0\n");
        assert!(!armed() || fail_nth_current() == 0);
        assert_eq!(f.write(b"x").unwrap_err().errno().0, libc::EINVAL);
    }
}
