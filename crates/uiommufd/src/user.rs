//! Reaching user memory: the one seam between the engine and the address
//! space whose pages it maps.
//!
//! The kernel uses `copy_from_user`/`copy_to_user` (which fail with `EFAULT`
//! instead of crashing) and `pin_user_pages`. In-process we get the same
//! guarantees from `process_vm_readv`/`process_vm_writev` on our own pid (the
//! kernel checks the pointers for us, so a bad pointer is `EFAULT`, never
//! `SIGSEGV`) and from `MADV_POPULATE_{READ,WRITE}`, which faults pages in
//! with the access the mapping needs and refuses unmapped or forbidden
//! memory. [`crate::process::ProcessMemory`] is the memory of another
//! process, for the calls of processes that share a context with ours.

use zerocopy::IntoBytes;

use crate::{Error, Result};

/// The host page size (4 KiB on the machines we run on; read once).
pub fn page_size() -> u64 {
    use std::sync::OnceLock;
    static PS: OnceLock<u64> = OnceLock::new();
    *PS.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if v > 0 {
            v as u64
        } else {
            4096
        }
    })
}

/// The largest alignment IOVA allocation asks for: the size a page-table
/// entry one level above the base page maps (the kernel's `HPAGE_SIZE` with
/// transparent huge pages: 2 MiB for 4 KiB pages).
pub fn huge_page_size() -> u64 {
    let ps = page_size();
    ps * (ps / 8)
}

/// Access to the memory of the process whose pointers arrive in commands.
pub trait UserMemory: Send + Sync + std::fmt::Debug {
    /// Copy `buf.len()` bytes from user address `addr`; `EFAULT` if any byte is unreadable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()>;
    /// Copy `buf` to user address `addr`; `EFAULT` if any byte is unwritable.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<()>;
    /// Make `[addr, addr + len)` present with read (and, if `write`, write)
    /// access, as `pin_user_pages` would; `EFAULT` when the range is not
    /// mapped or does not allow that access.
    fn populate(&self, addr: u64, len: u64, write: bool) -> Result<()>;
    /// Check, without changing a byte, that `[addr, addr + len)` can be
    /// written: `EFAULT` when it cannot. For reads that consume data and
    /// must not lose it to a failed copy. Default (and where the check is
    /// impossible): `Ok`, so the later copy is what fails.
    fn probe_write(&self, addr: u64, len: u64) -> Result<()> {
        let _ = (addr, len);
        Ok(())
    }
    /// Whether the `nwords` 64-bit words at `addr` are all zero (`EFAULT`
    /// when one cannot be read). Default: [`UserMemory::read`] in chunks.
    fn words_zero(&self, addr: u64, nwords: u64) -> Result<bool> {
        words_zero_by_reads(self, addr, nwords)
    }
    /// Whether user addresses of this memory are addresses of the calling
    /// process itself, with no fence or translation, so that the engine may
    /// copy to and from them in place with [`crate::faultsafe::copy`] while
    /// [`crate::faultsafe::enabled`] (the access fast path). Default:
    /// `false`, every byte goes through [`UserMemory::read`] /
    /// [`UserMemory::write`].
    fn direct(&self) -> bool {
        false
    }
    /// Whether these user addresses are addresses of the engine's own
    /// process, so that a domain may map them as host addresses (a device
    /// reads and writes there). Default: `true`; `false` for the private
    /// memory of another process ([`crate::process`]), which only
    /// accesses reach, through [`UserMemory::read`]/[`UserMemory::write`].
    fn mappable(&self) -> bool {
        true
    }
    /// The memory a pages object of `[addr, addr + len)` (an `IOAS_MAP` by
    /// this caller) reads from, when it is not this one: for another
    /// process's memory, a range that process shares with us is reached in
    /// place (see [`crate::process`]). Default: `None`, this memory.
    fn pages_memory(&self, addr: u64, len: u64) -> Option<std::sync::Arc<dyn UserMemory>> {
        let _ = (addr, len);
        None
    }
}

/// The bytes of the user struct at `arg` from `known` to `size` must be
/// zero (`E2BIG`; `EFAULT` when they cannot be read): the caller knows
/// fields this kernel version does not (`copy_struct_from_user`). Reads
/// a bounded chunk at a time, whatever `size` says.
pub fn check_zero_tail(
    mem: &dyn UserMemory,
    arg: u64,
    known: u64,
    size: u64,
    name: &str,
) -> Result<()> {
    let mut off = known;
    let mut chunk = [0u8; 512];
    while off < size {
        let len = (size - off).min(chunk.len() as u64) as usize;
        let a = arg
            .checked_add(off)
            .ok_or_else(|| Error::fault("command struct wraps the address space"))?;
        mem.read(a, &mut chunk[..len])
            .map_err(|_| Error::fault("cannot read the command's tail"))?;
        if chunk[..len].iter().any(|&b| b != 0) {
            crate::bail!(
                E2BIG,
                "{name}: bytes past the {known} this kernel version understands (size {size}) must be zero"
            );
        }
        off += len as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The engine's private fds

/// How an embedder makes the engine's private fds (see
/// [`set_private_fd_guard`]): run `make` (one raw system call that returns
/// a new fd, or -1 with `errno` set) and return the fd the engine is to
/// use — `make`'s, or a duplicate of it elsewhere, `make`'s then closed —
/// or -1 with `errno` set. `make` must be called exactly once.
pub type PrivateFdGuard = fn(make: &mut dyn FnMut() -> i32) -> i32;

static PRIVATE_FD_GUARD: std::sync::OnceLock<PrivateFdGuard> = std::sync::OnceLock::new();

/// Install the guard through which the engine makes every fd it keeps for
/// itself in the process it runs in (its private fds: a `/proc` file it
/// reads, a pidfd, a reference to an eventfd it watches, a memfd behind an
/// mmap region — never an fd it hands to the program, such as a fault
/// queue's). `false` when a guard was installed already (the first stays).
///
/// The kernel makes none of these in the program's fd table: under an
/// `LD_PRELOAD` shim they are there, at the lowest free number, where a
/// thread of the program racing on a number it just closed (a `dup` of
/// it, say) could reach them. A shim installs a guard that makes each one
/// out of that race and moves it to a number out of the program's way
/// before it returns. Without a guard, `make` just runs.
pub fn set_private_fd_guard(guard: PrivateFdGuard) -> bool {
    PRIVATE_FD_GUARD.set(guard).is_ok()
}

/// A private fd of the engine (see [`set_private_fd_guard`]), made by
/// `make`: one raw system call that returns a new fd or -1 with `errno`.
pub fn private_fd(make: impl FnOnce() -> i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut make = Some(make);
    let mut once = || match make.take() {
        Some(f) => f(),
        None => {
            // a guard that calls `make` twice: refuse the second fd
            // SAFETY: errno is thread-local; setting it has no other effect.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            -1
        }
    };
    let fd = match PRIVATE_FD_GUARD.get() {
        Some(guard) => guard(&mut once),
        None => once(),
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that only the caller will own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `openat(AT_FDCWD, path, flags | O_CLOEXEC)` by raw system call (under a
/// preload shim `open` is the program's hooked entry point), as a private
/// fd of the engine.
pub fn open_private(path: &std::ffi::CStr, flags: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    private_fd(|| {
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                flags | libc::O_CLOEXEC,
            ) as i32
        }
    })
}

/// A close-on-exec duplicate of `fd` as a private fd of the engine (a
/// reference to a file of the program that outlives the program's number).
pub fn dup_private(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    private_fd(|| {
        // SAFETY: F_DUPFD_CLOEXEC on a number: no memory is involved; raw:
        // under a preload shim `fcntl` is hooked.
        unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, 0) as i32 }
    })
}

/// The bytes of a `/proc` (or other small) file, read with raw system
/// calls through a private fd ([`open_private`]): under the preload `open`
/// and `read` are the program's hooked entry points (a read interrupted by
/// a signal is retried). `None` when it cannot be opened.
pub fn read_proc_raw(path: &std::ffi::CStr) -> Option<Vec<u8>> {
    use std::os::fd::IntoRawFd;
    // closed by raw system call below: under the preload a `close` may
    // take the shim's fd-number lock, which our caller's locks must not
    // wait for
    let fd = open_private(path, libc::O_RDONLY).ok()?.into_raw_fd();
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // SAFETY: reading into our own buffer of that size.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, chunk.as_mut_ptr(), chunk.len()) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        text.extend_from_slice(&chunk[..n as usize]);
    }
    // SAFETY: closing the fd opened above, which nothing else owns.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    Some(text)
}

/// What the link `/proc/self/fd/{fd}` names, read into `buf` with a raw
/// `readlinkat` (under the preload `readlink` is the program's hooked entry
/// point): its first `buf.len()` bytes at most, as `readlink(2)` cuts it.
/// `None` when it cannot be read.
pub fn fd_link(fd: i32, buf: &mut [u8]) -> Option<&[u8]> {
    let link = format!("/proc/self/fd/{fd}\0");
    // SAFETY: a NUL-terminated path, and a buffer writable for the length
    // passed.
    let n = unsafe {
        libc::syscall(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            link.as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    (n >= 0).then(|| &buf[..n as usize])
}

/// Zero `len` bytes of user memory at `addr` (the kernel's `clear_user`):
/// written in bounded chunks from a static zero page, so a huge
/// user-supplied `len` costs no allocation. `EFAULT` when any byte is
/// unwritable or the range wraps; the bytes before the fault may be zeroed.
pub fn clear_user(mem: &dyn UserMemory, addr: u64, len: u64) -> Result<()> {
    static ZEROS: [u8; 4096] = [0; 4096];
    if addr.checked_add(len).is_none() {
        return Err(Error::fault(
            "clear_user: the range wraps the address space",
        ));
    }
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(ZEROS.len() as u64);
        mem.write(addr + off, &ZEROS[..n as usize])?;
        off += n;
    }
    Ok(())
}

/// The calling process's own memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct SelfMemory;

/// Copy `len` bytes between our buffer `local` and the user address `addr`
/// (to the user when `to_user`): in-process with [`crate::faultsafe`] when
/// it is enabled, else through `process_vm_readv`/`process_vm_writev` on
/// our own pid. `EFAULT` unless every byte was copied.
///
/// # Safety
/// `local` is valid for `len` bytes (written when `!to_user`, only read
/// when `to_user`).
unsafe fn copy_user(addr: u64, local: *mut u8, len: usize, to_user: bool) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let user = addr as usize as *mut u8;
    let ok = if crate::faultsafe::enabled() {
        let (dst, src) = if to_user {
            (user, local.cast_const())
        } else {
            (local, user.cast_const())
        };
        // SAFETY: the caller's contract for `local`; a fault on the user
        // side ends the copy (see `faultsafe`).
        access_ok(addr, len) && unsafe { crate::faultsafe::copy(dst, src, len) } == 0
    } else {
        let l = libc::iovec {
            iov_base: local.cast(),
            iov_len: len,
        };
        let r = libc::iovec {
            iov_base: user.cast(),
            iov_len: len,
        };
        // SAFETY: `l` describes the caller's buffer as its contract says;
        // the kernel checks the user side and fails with EFAULT.
        let n = unsafe {
            if to_user {
                libc::process_vm_writev(libc::getpid(), &l, 1, &r, 1, 0)
            } else {
                libc::process_vm_readv(libc::getpid(), &l, 1, &r, 1, 0)
            }
        };
        n == len as isize
    };
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            libc::EFAULT,
            format!(
                "cannot {} {len} bytes at user address {addr:#x}",
                if to_user { "write" } else { "read" }
            ),
        ))
    }
}

/// The highest user address on x86-64 with 5-level paging (4-level ends
/// lower): a range past it is `EFAULT` without touching it, as the
/// kernel's `access_ok`.
const USER_TOP: u64 = 0x00ff_ffff_ffff_f000;

/// Whether `[addr, addr + len)` lies in user space (`access_ok`).
pub(crate) fn access_ok(addr: u64, len: usize) -> bool {
    addr.checked_add(len as u64)
        .is_some_and(|end| end <= USER_TOP)
}

/// [`UserMemory::words_zero`] through [`UserMemory::read`] of 1 KiB at a
/// time, stopping at the first chunk that holds a set bit.
fn words_zero_by_reads<M: UserMemory + ?Sized>(mem: &M, addr: u64, nwords: u64) -> Result<bool> {
    let mut buf = [0u64; 128];
    let mut done = 0u64;
    while done < nwords {
        let n = (nwords - done).min(buf.len() as u64) as usize;
        let at = done
            .checked_mul(8)
            .and_then(|o| addr.checked_add(o))
            .ok_or_else(|| Error::fault("the words run past the end of the address space"))?;
        mem.read(at, buf[..n].as_mut_bytes())?;
        if buf[..n].iter().any(|&w| w != 0) {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

impl UserMemory for SelfMemory {
    /// Our own address space: in-place copies are fine.
    fn direct(&self) -> bool {
        true
    }

    /// In place with fault-safe loads where they are on (one pass, no
    /// copy into a buffer), else by reads.
    fn words_zero(&self, addr: u64, nwords: u64) -> Result<bool> {
        if nwords == 0 || !crate::faultsafe::enabled() {
            return words_zero_by_reads(self, addr, nwords);
        }
        let len = nwords
            .checked_mul(8)
            .filter(|&l| access_ok(addr, l as usize))
            .ok_or_else(|| Error::fault("the words are not at a user address"))?;
        // SAFETY: fault-safe loads are on; the range is user-addressable,
        // and a fault in it is an answer, not a crash.
        match unsafe { crate::faultsafe::or_words(addr as usize as *const u64, nwords as usize) } {
            Some(or) => Ok(or == 0),
            None => Err(Error::new(
                libc::EFAULT,
                format!("cannot read {len} bytes at user address {addr:#x}"),
            )),
        }
    }

    /// `MADV_POPULATE_WRITE` on the page-aligned range: it faults the pages
    /// in for writing without touching their contents and refuses
    /// read-only or `PROT_NONE` memory (`EINVAL`) and holes (`ENOMEM`).
    /// Where it is unsupported (before Linux 5.14) there is no
    /// non-destructive check, and this answers `Ok` (the copy decides).
    fn probe_write(&self, addr: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let ps = page_size();
        let start = addr & !(ps - 1);
        let Some(end) = addr
            .checked_add(len)
            .and_then(|e| e.checked_add(ps - 1))
            .map(|e| e & !(ps - 1))
        else {
            return Err(Error::fault("probe: the range wraps the address space"));
        };
        for _ in 0..3 {
            // SAFETY: MADV_POPULATE_WRITE only faults pages in; it never
            // changes their contents or the mapping, and checks the range.
            let rc = unsafe {
                libc::madvise(
                    start as usize as *mut libc::c_void,
                    (end - start) as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if e.raw_os_error() == Some(libc::EINVAL) && !populate_supported() {
                return Ok(());
            }
            return Err(Error::new(
                libc::EFAULT,
                format!("user buffer {addr:#x}+{len:#x} is not writable: {e}"),
            ));
        }
        // interrupted every time: no verdict, the copy decides
        Ok(())
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        // SAFETY: `buf` is ours, writable for its length.
        unsafe { copy_user(addr, buf.as_mut_ptr(), buf.len(), false) }
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<()> {
        // SAFETY: `buf` is ours, readable for its length; with `to_user`
        // it is only read.
        unsafe { copy_user(addr, buf.as_ptr().cast_mut(), buf.len(), true) }
    }

    fn populate(&self, addr: u64, len: u64, write: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let advice = if write {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        if !populate_supported() {
            return self.touch_pages(addr, len, write);
        }
        // SAFETY: MADV_POPULATE_* only faults pages in; it never changes the
        // contents or the mapping, and it validates the range itself.
        let rc = unsafe { libc::madvise(addr as usize as *mut libc::c_void, len as usize, advice) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // populate answers EINVAL (PROT_NONE, or write to read-only) and
        // ENOMEM (unmapped) where get_user_pages says EFAULT.
        Err(Error::new(
            libc::EFAULT,
            format!(
                "cannot pin user range {addr:#x}+{len:#x} for {}: {e}",
                if write { "write" } else { "read" }
            ),
        ))
    }
}

/// Whether this kernel knows `MADV_POPULATE_WRITE` (Linux 5.14+), probed
/// once on a page of our own.
fn populate_supported() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let ps = page_size() as usize;
        // SAFETY: a fresh private anonymous page, unmapped right after.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ps,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return true;
        }
        // SAFETY: `p` is our own writable page; populate only faults it in.
        let ok = unsafe { libc::madvise(p, ps, libc::MADV_POPULATE_WRITE) } == 0;
        // SAFETY: the page mapped above, no longer used.
        unsafe { libc::munmap(p, ps) };
        if !ok {
            tracing::debug!(
                "MADV_POPULATE_WRITE is not supported: user ranges are probed page by page"
            );
        }
        ok
    })
}

impl SelfMemory {
    /// Fallback of `populate` on kernels without `MADV_POPULATE_*`: read one
    /// byte of every page (and, for `write`, write the same byte back, which
    /// fails on a page that is not writable). Racy against a concurrent
    /// writer of that very byte; only used where the kernel leaves no choice.
    fn touch_pages(&self, addr: u64, len: u64, write: bool) -> Result<()> {
        let ps = page_size();
        let Some(end) = addr.checked_add(len) else {
            return Err(Error::fault("user range wraps"));
        };
        let mut cur = addr;
        while cur < end {
            let mut b = [0u8; 1];
            self.read(cur, &mut b)?;
            if write {
                self.write(cur, &b)?;
            }
            cur = (cur & !(ps - 1)).saturating_add(ps);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::errno;

    /// Where [`test_guard`] moves fds: near the top of the fd limit.
    fn floor() -> i32 {
        // SAFETY: getrlimit writes one rlimit we own.
        let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        rl.rlim_cur.min(4096) as i32 - 100
    }

    /// The guard of [`private_fds_go_through_the_guard`] (installed for the
    /// whole test process): counts its calls and moves each fd near the top
    /// of the limit, as the preload's does.
    fn test_guard(make: &mut dyn FnMut() -> i32) -> i32 {
        GUARD_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let fd = make();
        if fd < 0 {
            return fd;
        }
        // SAFETY: F_DUPFD_CLOEXEC on the fd `make` just returned.
        let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor()) };
        if high < 0 {
            return fd;
        }
        // SAFETY: closing the low number, which we own.
        unsafe { libc::close(fd) };
        high
    }

    static GUARD_CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    #[test]
    fn private_fds_go_through_the_guard() {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::SeqCst;
        assert!(set_private_fd_guard(test_guard));
        assert!(!set_private_fd_guard(test_guard), "the first guard stays");
        let before = GUARD_CALLS.load(SeqCst);
        let f = open_private(c"/proc/self/status", libc::O_RDONLY).unwrap();
        assert!(
            f.as_raw_fd() >= floor(),
            "fd {} was not moved",
            f.as_raw_fd()
        );
        // SAFETY: F_GETFD on our fd.
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(fl & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let d = dup_private(f.as_raw_fd()).unwrap();
        assert!(d.as_raw_fd() >= floor());
        let text = read_proc_raw(c"/proc/self/status").unwrap();
        assert!(text.starts_with(b"Name:"));
        assert_eq!(GUARD_CALLS.load(SeqCst), before + 3);
        // a failing system call fails through the guard, errno kept
        let e = open_private(c"/proc/self/no such file", libc::O_RDONLY).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(read_proc_raw(c"/nonexistent").is_none());
        // the pidfds of `process` are private fds too
        let p = crate::process::pidfd_open(std::process::id() as i32).unwrap();
        assert!(p.as_raw_fd() >= floor());
    }

    #[test]
    fn read_write_roundtrip_and_efault() {
        let mut src = [1u8, 2, 3, 4];
        let mut dst = [0u8; 4];
        SelfMemory.read(src.as_ptr() as u64, &mut dst).unwrap();
        assert_eq!(dst, src);
        SelfMemory
            .write(src.as_mut_ptr() as u64, &[9, 9, 9, 9])
            .unwrap();
        assert_eq!(src, [9, 9, 9, 9]);
        assert_eq!(errno(SelfMemory.read(0, &mut dst)), libc::EFAULT);
        assert_eq!(errno(SelfMemory.write(8, &dst)), libc::EFAULT);
    }

    #[test]
    fn populate_refuses_unmapped_and_readonly() {
        let ps = page_size() as usize;
        // SAFETY: plain anonymous mapping, unmapped at the end of the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * ps,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let a = p as u64;
        SelfMemory.populate(a, ps as u64, false).unwrap();
        assert_eq!(errno(SelfMemory.populate(a, ps as u64, true)), libc::EFAULT);
        // SAFETY: the second page of our own mapping.
        unsafe { libc::munmap((a + ps as u64) as *mut libc::c_void, ps) };
        assert_eq!(
            errno(SelfMemory.populate(a, 2 * ps as u64, false)),
            libc::EFAULT
        );
        // the fallback agrees
        SelfMemory.touch_pages(a, ps as u64, false).unwrap();
        assert_eq!(
            errno(SelfMemory.touch_pages(a, ps as u64, true)),
            libc::EFAULT
        );
        // SAFETY: the first page of our own mapping, made inaccessible.
        unsafe { libc::mprotect(p, ps, libc::PROT_NONE) };
        for write in [false, true] {
            assert_eq!(
                errno(SelfMemory.populate(a, ps as u64, write)),
                libc::EFAULT
            );
        }
        // SAFETY: what is left of our own mapping.
        unsafe { libc::munmap(p, ps) };
    }
}

/// One line of `/proc/PID/maps`: `start-end perms offset maj:min inode
/// [path]` (addresses, offset and device in hex).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapsLine<'a> {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r`/`w`/`x` or `-`, then `s` (shared) or `p` (private).
    pub perms: &'a [u8],
    /// File offset of `start`.
    pub offset: u64,
    /// The file's device, `(major << 32) | minor`.
    pub dev: u64,
    /// The file's inode; 0 for anonymous memory.
    pub inode: u64,
    /// The first word of the path (`""` when none, `[heap]`, `[stack]`…).
    pub path: &'a str,
}

impl<'a> MapsLine<'a> {
    /// `line` parsed; `None` when it is not of that form.
    pub(crate) fn parse(line: &'a str) -> Option<MapsLine<'a>> {
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        let mut f = line.split_ascii_whitespace();
        let (start, end) = f.next()?.split_once('-')?;
        let perms = f.next()?.as_bytes();
        let offset = hex(f.next()?)?;
        let (maj, min) = f.next()?.split_once(':')?;
        let inode = f.next()?.parse().ok()?;
        Some(MapsLine {
            start: hex(start)?,
            end: hex(end)?,
            perms,
            offset,
            dev: (hex(maj)? << 32) | hex(min)?,
            inode,
            path: f.next().unwrap_or(""),
        })
    }

    /// The `PROT_*` bits of the permissions.
    pub(crate) fn prot(&self) -> i32 {
        let mut prot = 0;
        for (i, (c, bit)) in [
            (b'r', libc::PROT_READ),
            (b'w', libc::PROT_WRITE),
            (b'x', libc::PROT_EXEC),
        ]
        .into_iter()
        .enumerate()
        {
            if self.perms.get(i) == Some(&c) {
                prot |= bit;
            }
        }
        prot
    }

    /// Whether the mapping is shared (`MAP_SHARED`).
    pub(crate) fn shared(&self) -> bool {
        self.perms.get(3) == Some(&b's')
    }
}

/// The shared file mappings of this process, as `/proc/self/maps` lists
/// them when [`FileMaps::snapshot`] reads it: what lets a check tell that
/// two addresses reach the same page of the same file (the engine's own
/// mapping of an `IOAS_MAP_FILE` memfd and the program's view of it), as
/// the kernel compares page frames.
#[derive(Debug, Default)]
pub struct FileMaps {
    /// (start, end, file offset of start, dev, inode), by start.
    maps: Vec<(u64, u64, u64, u64, u64)>,
}

impl FileMaps {
    /// Read `/proc/self/maps` (by system call: under the preload `open` is
    /// the program's hooked entry point). Empty when it cannot be read.
    pub fn snapshot() -> FileMaps {
        Self::read(c"/proc/self/maps")
    }

    /// The shared file mappings of process `pid` (`/proc/PID/maps`; empty
    /// when it cannot be read, e.g. the process is gone).
    pub fn of_process(pid: i32) -> FileMaps {
        match std::ffi::CString::new(format!("/proc/{pid}/maps")) {
            Ok(path) => Self::read(&path),
            Err(_) => FileMaps::default(),
        }
    }

    fn read(path: &std::ffi::CStr) -> FileMaps {
        let mut out = FileMaps::default();
        let Some(text) = read_proc_raw(path) else {
            return out;
        };
        let text = String::from_utf8_lossy(&text);
        for m in text.lines().filter_map(MapsLine::parse) {
            // only shared mappings of a file reach the file's own pages
            if m.inode != 0 && m.shared() {
                out.maps.push((m.start, m.end, m.offset, m.dev, m.inode));
            }
        }
        out.maps.sort_unstable();
        out
    }

    /// (dev, inode, byte offset in the file) of the page at `addr`, when a
    /// shared file mapping covers it.
    pub fn identity(&self, addr: u64) -> Option<(u64, u64, u64)> {
        let i = self.maps.partition_point(|m| m.0 <= addr).checked_sub(1)?;
        let (s, e, off, dev, ino) = self.maps[i];
        (addr < e).then(|| (dev, ino, off + (addr - s)))
    }

    /// Whether every page of `[addr, addr + len)` is in a shared file
    /// mapping of this snapshot that `other` maps at the same address, of
    /// the same file at the same offset (a `MAP_SHARED` mapping inherited
    /// across `fork` and left alone by both processes): the bytes there are
    /// the same memory in both.
    pub fn same_memory_as(&self, other: &FileMaps, addr: u64, len: u64) -> bool {
        let ps = page_size();
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut cur = addr & !(ps - 1);
        while cur < end {
            let i = match self.maps.partition_point(|m| m.0 <= cur).checked_sub(1) {
                Some(i) if cur < self.maps[i].1 => i,
                _ => return false,
            };
            if !other.maps.contains(&self.maps[i]) {
                return false;
            }
            cur = self.maps[i].1;
        }
        true
    }

    /// Whether `a` and `b` reach the same byte of the same file.
    pub fn same_file_byte(&self, a: u64, b: u64) -> bool {
        matches!((self.identity(a), self.identity(b)), (Some(x), Some(y)) if x == y)
    }
}
