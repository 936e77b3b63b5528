//! Emulated kernel files for failure injection: the per-thread `fail-nth`
//! files of procfs and the fault-injection directories of debugfs.
//!
//! * `/proc/self/task/TID/fail-nth`, `/proc/PID/task/TID/fail-nth` (our own
//!   PID) and `/proc/thread-self/fail-nth` open an engine file
//!   ([`uiommufd::fail_nth::FailNthFile`]) of thread `TID` (which must be a
//!   thread of this process: `ENOENT` otherwise). `read`/`pread` give the
//!   remaining count, `write`/`pwrite` arm the thread, exactly as
//!   `Documentation/fault-injection/fault-injection.rst` describes; the
//!   injection points are the engine's (see [`uiommufd::inject`]).
//! * `/sys/kernel/debug` as far as the kernel selftest's fault-injection
//!   setup looks at it: `opendir` of it gives a directory stream whose
//!   `readdir` lists `failslab`, `fail_page_alloc` and `fail_iommufd`
//!   (whatever the real debugfs holds), and files under them
//!   (`failslab/ignore-gfp-wait`, `<dir>/verbose`, ...) open, absolutely or
//!   relative to such a directory's fd, as small memfds holding the kernel's
//!   default value. Writes are accepted and have no effect (the engine's
//!   injection is driven by `fail-nth` alone); each open starts again from
//!   the default.
//!
//! An emulated directory is a real directory fd (of an empty, already
//! removed temporary directory, so that `fdopendir`, `dirfd`, `fstat` and
//! `fchdir` work) registered here with the debugfs path it stands for;
//! `readdir`/`readdir64`/`closedir` of the streams made by our `opendir`
//! are answered here. `open*` relative to a registered fd resolve against
//! its debugfs path and never reach the real (deleted) directory.

use std::ffi::{c_int, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::path::{errno, set_errno};

/// Where the emulated debugfs is.
pub(crate) const DEBUGFS: &str = "/sys/kernel/debug";

/// The fault-injection directories of the emulated debugfs.
const FAIL_DIRS: &[&str] = &["failslab", "fail_page_alloc", "fail_iommufd"];

/// The attributes every fault-injection directory has, with the kernel's
/// defaults (`lib/fault-inject.c`).
const COMMON_ATTRS: &[(&str, &str)] = &[
    ("probability", "0\n"),
    ("interval", "1\n"),
    ("times", "1\n"),
    ("space", "0\n"),
    ("verbose", "2\n"),
    ("verbose_ratelimit_interval_ms", "5000\n"),
    ("verbose_ratelimit_burst", "10\n"),
    ("task-filter", "N\n"),
    ("stacktrace-depth", "32\n"),
    ("require-start", "0\n"),
    ("require-end", "18446744073709551615\n"),
    ("reject-start", "0\n"),
    ("reject-end", "18446744073709551615\n"),
];

/// Attributes of one directory beyond [`COMMON_ATTRS`].
fn extra_attrs(dir: &str) -> &'static [(&'static str, &'static str)] {
    match dir {
        "failslab" => &[("ignore-gfp-wait", "Y\n"), ("cache-filter", "N\n")],
        "fail_page_alloc" => &[
            ("ignore-gfp-wait", "Y\n"),
            ("ignore-gfp-highmem", "Y\n"),
            ("min-order", "1\n"),
        ],
        _ => &[],
    }
}

/// What an emulated path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Special {
    /// The `fail-nth` file of thread `tid` of this process.
    FailNth(i32),
    /// A debugfs directory (`""` for the root, else a [`FAIL_DIRS`] name).
    DebugfsDir(&'static str),
    /// A debugfs attribute file: its path below debugfs and default value.
    DebugfsFile(String, &'static str),
    /// Below debugfs but not emulated: `ENOENT`.
    Missing,
}

/// What the normalised absolute path `comps` names, if it is ours.
pub(crate) fn classify(comps: &[&[u8]]) -> Option<Special> {
    let num = |c: &[u8]| -> Option<i32> {
        if c.is_empty() || c.len() > 10 || !c.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(c).ok()?.parse().ok()
    };
    match comps {
        [b"proc", b"thread-self", b"fail-nth"] => Some(Special::FailNth(gettid())),
        [b"proc", pid, b"task", tid, b"fail-nth"] => {
            let ours = *pid == b"self" || num(pid) == Some(getpid());
            if !ours {
                return None;
            }
            match num(tid) {
                Some(t) => Some(Special::FailNth(t)),
                None => Some(Special::Missing),
            }
        }
        [b"sys", b"kernel", b"debug", rest @ ..] => Some(classify_debugfs(rest)),
        _ => None,
    }
}

fn classify_debugfs(rest: &[&[u8]]) -> Special {
    let dir = |name: &[u8]| FAIL_DIRS.iter().copied().find(|d| d.as_bytes() == name);
    match rest {
        [] => Special::DebugfsDir(""),
        [d] => match dir(d) {
            Some(d) => Special::DebugfsDir(d),
            None => Special::Missing,
        },
        [d, attr] => {
            let Some(d) = dir(d) else {
                return Special::Missing;
            };
            COMMON_ATTRS
                .iter()
                .chain(extra_attrs(d))
                .find(|(a, _)| a.as_bytes() == *attr)
                .map_or(Special::Missing, |&(a, v)| {
                    Special::DebugfsFile(format!("{d}/{a}"), v)
                })
        }
        _ => Special::Missing,
    }
}

fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

fn gettid() -> i32 {
    // SAFETY: gettid takes no argument and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn fail(e: c_int) -> c_int {
    set_errno(e);
    -1
}

/// Open `what` with the `open` flags `flags`: the fd, or `-1` + `errno`.
pub(crate) fn open(what: Special, flags: c_int) -> c_int {
    if flags & (libc::O_CREAT | libc::O_EXCL) == libc::O_CREAT | libc::O_EXCL
        && what != Special::Missing
    {
        return fail(libc::EEXIST);
    }
    let cloexec = flags & libc::O_CLOEXEC != 0;
    match what {
        Special::Missing => fail(libc::ENOENT),
        Special::FailNth(tid) => {
            if flags & libc::O_DIRECTORY != 0 {
                return fail(libc::ENOTDIR);
            }
            // SAFETY: signal 0 only checks that the thread exists.
            if unsafe { libc::syscall(libc::SYS_tgkill, getpid(), tid, 0) } != 0 {
                return fail(libc::ENOENT);
            }
            let file = Arc::new(uiommufd::fail_nth::FailNthFile::new(tid));
            match uiommufd::plumbing::files::create_no_inject(file, cloexec) {
                Ok(fd) => fd,
                Err(e) => fail(e.errno().0),
            }
        }
        Special::DebugfsFile(name, value) => {
            if flags & libc::O_DIRECTORY != 0 {
                return fail(libc::ENOTDIR);
            }
            attr_file(&name, value, flags & libc::O_TRUNC != 0, cloexec)
        }
        Special::DebugfsDir(dir) => {
            if flags & libc::O_ACCMODE != libc::O_RDONLY {
                return fail(libc::EISDIR);
            }
            dir_fd(dir, cloexec)
        }
    }
}

/// A memfd holding `value` (nothing with `O_TRUNC`), positioned at 0.
fn attr_file(name: &str, value: &str, trunc: bool, cloexec: bool) -> c_int {
    let Ok(cname) = CString::new(format!("uiommufd:{DEBUGFS}/{name}")) else {
        return fail(libc::EINVAL);
    };
    let mfd_flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
    // SAFETY: `cname` is NUL-terminated.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), mfd_flags) };
    if fd < 0 {
        return -1;
    }
    if !trunc {
        // raw syscalls: the shim's own write hook is not for this
        // SAFETY: writes `value.len()` bytes from a live string.
        let n = unsafe { libc::syscall(libc::SYS_write, fd, value.as_ptr(), value.len()) };
        // SAFETY: plain lseek of our own fd.
        let r = unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
        if n != value.len() as i64 || r != 0 {
            let e = errno();
            raw_close(fd);
            return fail(e);
        }
    }
    fd
}

fn raw_close(fd: c_int) {
    // SAFETY: closing our own fd; the raw syscall bypasses the close hook.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// One emulated directory fd (and its stream, when made by `opendir`).
#[derive(Debug)]
struct DirRec {
    fd: c_int,
    dev: u64,
    ino: u64,
    /// `""` for the debugfs root, else a [`FAIL_DIRS`] name.
    dir: &'static str,
    /// The `DIR *` our `opendir` returned for it (0: none).
    stream: usize,
    /// `readdir` position.
    next: usize,
    /// What `readdir` last returned (stays valid until the next call).
    ent: Box<libc::dirent64>,
}

static DIRS: Mutex<Vec<DirRec>> = Mutex::new(Vec::new());
/// `DIRS.len()`, for the lock-free "none" answer.
static NDIRS: AtomicUsize = AtomicUsize::new(0);

fn dirs() -> MutexGuard<'static, Vec<DirRec>> {
    DIRS.lock().unwrap_or_else(|e| e.into_inner())
}

fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable; a bad fd just fails.
    if unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) as c_int } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// A directory fd for debugfs directory `dir`: an empty temporary directory,
/// opened and removed, registered as `dir`.
fn dir_fd(dir: &'static str, cloexec: bool) -> c_int {
    let base = std::env::var_os("TMPDIR")
        .filter(|t| !t.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    let mut fd = -1;
    for b in [base, "/tmp".into(), "/dev/shm".into()] {
        let Ok(tmpl) = CString::new(format!("{}/uiommufd-debugfs.XXXXXX", b.to_string_lossy()))
        else {
            continue;
        };
        let mut tmpl = tmpl.into_bytes_with_nul();
        // SAFETY: a writable NUL-terminated template.
        if unsafe { libc::mkdtemp(tmpl.as_mut_ptr().cast()) }.is_null() {
            continue;
        }
        let mut oflags = libc::O_RDONLY | libc::O_DIRECTORY;
        if cloexec {
            oflags |= libc::O_CLOEXEC;
        }
        // SAFETY: the raw openat syscall bypasses the shim's open hooks.
        fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, tmpl.as_ptr(), oflags, 0) }
            as c_int;
        let e = errno();
        // SAFETY: removing the empty directory we made.
        unsafe { libc::rmdir(tmpl.as_ptr().cast()) };
        if fd >= 0 {
            break;
        }
        set_errno(e);
    }
    if fd < 0 {
        return -1;
    }
    let Some((dev, ino)) = identity(fd) else {
        let e = errno();
        raw_close(fd);
        return fail(e);
    };
    let mut d = dirs();
    d.retain(|r| r.fd != fd);
    d.push(DirRec {
        fd,
        dev,
        ino,
        dir,
        stream: 0,
        next: 0,
        // SAFETY: an all-zero dirent64 is a valid value.
        ent: Box::new(unsafe { std::mem::zeroed() }),
    });
    NDIRS.store(d.len(), Ordering::Release);
    fd
}

/// The debugfs path (components below debugfs) that emulated directory fd
/// `fd` stands for, if it is one.
pub(crate) fn dir_of_fd(fd: c_int) -> Option<&'static str> {
    if NDIRS.load(Ordering::Acquire) == 0 || fd < 0 {
        return None;
    }
    let rec = dirs()
        .iter()
        .find(|r| r.fd == fd)
        .map(|r| (r.dir, r.dev, r.ino))?;
    (identity(fd) == Some((rec.1, rec.2))).then_some(rec.0)
}

/// Forget the emulated directory fd `fd` (closed, or its number reused).
pub(crate) fn forget_fd(fd: c_int) {
    if NDIRS.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut d = dirs();
    d.retain(|r| r.fd != fd);
    NDIRS.store(d.len(), Ordering::Release);
}

/// Forget every emulated directory fd in `first..=last` (closed by
/// `close_range`/`closefrom`).
pub(crate) fn forget_range(first: c_int, last: c_int) {
    if NDIRS.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut d = dirs();
    d.retain(|r| !(first..=last).contains(&r.fd));
    NDIRS.store(d.len(), Ordering::Release);
}

/// `opendir(path)` of an emulated directory: `Some(stream or NULL + errno)`;
/// `None` when the path is not ours.
pub(crate) fn opendir(path: &CStr) -> Option<*mut libc::DIR> {
    let bytes = path.to_bytes();
    if !bytes.starts_with(b"/sys/kernel/debug") && !bytes.starts_with(b"//") {
        // (relative names are never debugfs for our purposes)
        return None;
    }
    let comps: Vec<&[u8]> = crate::path::normalise(bytes);
    let what = classify(&comps)?;
    let dir = match what {
        Special::DebugfsDir(d) => d,
        Special::Missing => {
            set_errno(libc::ENOENT);
            return Some(std::ptr::null_mut());
        }
        _ => {
            set_errno(libc::ENOTDIR);
            return Some(std::ptr::null_mut());
        }
    };
    let fd = dir_fd(dir, true);
    if fd < 0 {
        return Some(std::ptr::null_mut());
    }
    // SAFETY: `fd` is an open directory fd we own; the stream takes it.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let e = errno();
        forget_fd(fd);
        raw_close(fd);
        set_errno(e);
        return Some(stream);
    }
    let mut d = dirs();
    if let Some(r) = d.iter_mut().find(|r| r.fd == fd) {
        r.stream = stream as usize;
    }
    Some(stream)
}

/// The entries of emulated directory `dir`: (name, d_type).
fn listing(dir: &str) -> Vec<(String, u8)> {
    let mut v = vec![
        (".".to_string(), libc::DT_DIR),
        ("..".to_string(), libc::DT_DIR),
    ];
    if dir.is_empty() {
        v.extend(FAIL_DIRS.iter().map(|d| (d.to_string(), libc::DT_DIR)));
    } else {
        v.extend(
            COMMON_ATTRS
                .iter()
                .chain(extra_attrs(dir))
                .map(|(a, _)| (a.to_string(), libc::DT_REG)),
        );
    }
    v
}

/// Whether any emulated stream may exist (one atomic load).
#[inline]
pub(crate) fn any_dirs() -> bool {
    NDIRS.load(Ordering::Acquire) != 0
}

/// `readdir64(stream)` of an emulated stream: `Some(entry or NULL at the
/// end)`; `None` when the stream is not ours.
pub(crate) fn readdir(stream: *mut libc::DIR) -> Option<*mut libc::dirent64> {
    let mut d = dirs();
    let r = d.iter_mut().find(|r| r.stream == stream as usize)?;
    let list = listing(r.dir);
    let Some((name, ty)) = list.get(r.next) else {
        return Some(std::ptr::null_mut());
    };
    r.next += 1;
    // SAFETY: an all-zero dirent64 is a valid value.
    let mut ent: libc::dirent64 = unsafe { std::mem::zeroed() };
    ent.d_ino = 1000 + r.next as u64;
    ent.d_off = r.next as i64;
    ent.d_type = *ty;
    for (i, b) in name.bytes().take(ent.d_name.len() - 1).enumerate() {
        ent.d_name[i] = b as libc::c_char;
    }
    ent.d_reclen = std::mem::size_of::<libc::dirent64>() as u16;
    *r.ent = ent;
    Some(&mut *r.ent as *mut libc::dirent64)
}

/// Before the real `closedir(stream)`: forget an emulated stream.
pub(crate) fn closedir(stream: *mut libc::DIR) {
    let mut d = dirs();
    d.retain(|r| r.stream != stream as usize);
    NDIRS.store(d.len(), Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> Option<Special> {
        classify(&crate::path::normalise(p.as_bytes()))
    }

    #[test]
    fn special_paths() {
        let tid = gettid();
        let pid = getpid();
        assert_eq!(c("/proc/thread-self/fail-nth"), Some(Special::FailNth(tid)));
        assert_eq!(
            c(&format!("/proc/self/task/{tid}/fail-nth")),
            Some(Special::FailNth(tid))
        );
        assert_eq!(
            c(&format!("/proc/{pid}/task/{pid}/fail-nth")),
            Some(Special::FailNth(pid))
        );
        assert_eq!(c(&format!("/proc/{}/task/1/fail-nth", pid + 1)), None);
        assert_eq!(c("/proc/self/fail-nth"), None);
        assert_eq!(c("/sys/kernel/debug/"), Some(Special::DebugfsDir("")));
        assert_eq!(
            c("/sys/kernel/debug/failslab"),
            Some(Special::DebugfsDir("failslab"))
        );
        assert_eq!(
            c("/sys/kernel/debug/failslab/ignore-gfp-wait"),
            Some(Special::DebugfsFile(
                "failslab/ignore-gfp-wait".into(),
                "Y\n"
            ))
        );
        assert_eq!(
            c("/sys/kernel/debug/fail_page_alloc/../fail_iommufd/verbose"),
            Some(Special::DebugfsFile("fail_iommufd/verbose".into(), "2\n"))
        );
        assert_eq!(c("/sys/kernel/debug/iommu"), Some(Special::Missing));
        assert_eq!(c("/sys/kernel/debug/failslab/nope"), Some(Special::Missing));
        assert_eq!(c("/sys/kernel/mm"), None);
        assert_eq!(c("/etc/passwd"), None);
    }
}
