//! I/O on engine fds: the fds the engine itself creates for the program
//! (selftest access fds, fault queue fds; see [`uiommufd::plumbing::files`]).
//!
//! Such an fd is a real `eventfd` whose counter mirrors the engine file's
//! `POLLIN` readiness, so `poll`/`ppoll`/`select`/`epoll` need no hook. What
//! the shim must do is route the data calls (`read`, `__read_chk`, `write`,
//! `readv`, `writev`) to [`uiommufd::plumbing::files::read`]/[`uiommufd::plumbing::files::write`]
//! instead of the eventfd, copying to and from the caller's buffers with the
//! fault-safe [`SelfMemory`] (a bad pointer is `EFAULT`, not `SIGSEGV`, as
//! with the kernel's `copy_to_user`). Each file moves data in bounded pieces
//! (whole records for a fault fd, at most [`files::BOUNCE`] bytes through the
//! stack otherwise): no transfer allocates what the caller's count asks for.
//!
//! Each function returns `None` when `fd` turns out not to be (or no longer
//! be) an engine fd: the hook then forwards the call to libc.

use std::ffi::c_int;

use uiommufd::plumbing::files::{self, UserBuf};
use uiommufd::user::{SelfMemory, UserMemory};

/// The kernel's `MAX_RW_COUNT` (`INT_MAX & PAGE_MASK` with 4 KiB pages): the
/// most one read or write transfers.
const MAX_RW_COUNT: usize = (i32::MAX as usize) & !0xfff;

/// The kernel's `UIO_MAXIOV`.
const UIO_MAXIOV: c_int = 1024;

/// A transfer's result: bytes moved, or a positive errno.
pub(crate) type Xfer = Result<usize, c_int>;

/// The caller's buffer, its length capped at `MAX_RW_COUNT` as the kernel
/// caps every transfer.
fn user_buf(buf: u64, count: usize) -> UserBuf<'static> {
    UserBuf {
        mem: &SelfMemory,
        addr: buf,
        len: count.min(MAX_RW_COUNT),
    }
}

/// A positive errno from an engine result.
fn xfer(r: uiommufd::Result<usize>) -> Xfer {
    r.map_err(|e| {
        tracing::debug!("engine fd I/O failed: {e}");
        e.errno().0
    })
}

/// `read(fd, buf, count)` on an engine fd: straight into the caller's
/// memory (see [`files::read_user`]); nothing the size of `count` is
/// allocated.
pub(crate) fn read(fd: c_int, buf: u64, count: usize) -> Option<Xfer> {
    if let Some(r) = crate::remote::engine_read(fd, buf, count.min(MAX_RW_COUNT)) {
        return Some(r);
    }
    files::read_user(fd, user_buf(buf, count)).map(xfer)
}

/// `write(fd, buf, count)` on an engine fd, straight from the caller's
/// memory.
pub(crate) fn write(fd: c_int, buf: u64, count: usize) -> Option<Xfer> {
    if let Some(r) = crate::remote::engine_write(fd, buf, count.min(MAX_RW_COUNT)) {
        return Some(r);
    }
    files::write_user(fd, user_buf(buf, count)).map(xfer)
}

/// A positional transfer on engine fd `fd`: `io` with the offset, which
/// must not be negative (`EINVAL`, as the kernel).
fn at_offset(fd: c_int, offset: i64, io: impl FnOnce(u64) -> Option<Xfer>) -> Option<Xfer> {
    files::get(fd)?;
    let Ok(offset) = u64::try_from(offset) else {
        return Some(Err(libc::EINVAL));
    };
    io(offset)
}

/// `pread(fd, buf, count, offset)` on an engine fd.
pub(crate) fn pread(fd: c_int, buf: u64, count: usize, offset: i64) -> Option<Xfer> {
    at_offset(fd, offset, |offset| {
        crate::remote::engine_pread(fd, buf, count.min(MAX_RW_COUNT), offset)
            .or_else(|| files::pread_user(fd, user_buf(buf, count), offset).map(xfer))
    })
}

/// `pwrite(fd, buf, count, offset)` on an engine fd.
pub(crate) fn pwrite(fd: c_int, buf: u64, count: usize, offset: i64) -> Option<Xfer> {
    at_offset(fd, offset, |offset| {
        crate::remote::engine_pwrite(fd, buf, count.min(MAX_RW_COUNT), offset)
            .or_else(|| files::pwrite_user(fd, user_buf(buf, count), offset).map(xfer))
    })
}

/// The caller's iovec array, read fault-safely: `(base, len)` pairs.
fn iovecs(iov: u64, iovcnt: c_int) -> Result<Vec<(u64, usize)>, c_int> {
    if !(0..=UIO_MAXIOV).contains(&iovcnt) {
        return Err(libc::EINVAL);
    }
    let n = iovcnt as usize;
    let size = std::mem::size_of::<libc::iovec>();
    let mut raw = vec![0u8; n * size];
    if n > 0 {
        SelfMemory.read(iov, &mut raw).map_err(|e| e.errno().0)?;
    }
    let word = std::mem::size_of::<usize>();
    let mut out = Vec::with_capacity(n);
    let mut total: usize = 0;
    for chunk in raw.chunks_exact(size) {
        let base = usize::from_ne_bytes(chunk[..word].try_into().map_err(|_| libc::EINVAL)?);
        let len = usize::from_ne_bytes(chunk[word..2 * word].try_into().map_err(|_| libc::EINVAL)?);
        // The kernel: a negative (as ssize_t) length is EINVAL; the total is
        // truncated to MAX_RW_COUNT.
        if len > isize::MAX as usize {
            return Err(libc::EINVAL);
        }
        let len = len.min(MAX_RW_COUNT - total);
        total += len;
        out.push((base as u64, len));
    }
    Ok(out)
}

/// The kernel's loop for files with `->read`/`->write` but no `_iter`
/// variant: one call per segment, stopping at the first short transfer; an
/// error is returned only when nothing was transferred.
fn vectored(
    fd: c_int,
    iov: u64,
    iovcnt: c_int,
    op: fn(c_int, u64, usize) -> Option<Xfer>,
) -> Option<Xfer> {
    files::get(fd)?;
    let segs = match iovecs(iov, iovcnt) {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    Some(segments(segs, |base, len, _| op(fd, base, len)))
}

/// Move `segs` (`(base, len)`) one call `op(base, len, done so far)` each,
/// stopping at the first short transfer; an error (or the fd closed under
/// us on another thread: `None`, `EBADF`) is returned only when nothing was
/// transferred.
fn segments(
    segs: Vec<(u64, usize)>,
    mut op: impl FnMut(u64, usize, usize) -> Option<Xfer>,
) -> Xfer {
    let mut done = 0usize;
    for (base, len) in segs {
        match op(base, len, done) {
            Some(Ok(n)) => {
                done += n;
                if n != len {
                    break;
                }
            }
            Some(Err(e)) => return if done == 0 { Err(e) } else { Ok(done) },
            None => {
                return if done == 0 {
                    Err(libc::EBADF)
                } else {
                    Ok(done)
                }
            }
        }
    }
    Ok(done)
}

/// `readv(fd, iov, iovcnt)` on an engine fd.
pub(crate) fn readv(fd: c_int, iov: u64, iovcnt: c_int) -> Option<Xfer> {
    vectored(fd, iov, iovcnt, read)
}

/// `writev(fd, iov, iovcnt)` on an engine fd.
pub(crate) fn writev(fd: c_int, iov: u64, iovcnt: c_int) -> Option<Xfer> {
    vectored(fd, iov, iovcnt, write)
}

/// The `RWF_*` flags Linux 6.12 knows that a file without `read_iter`
/// ignores: `HIPRI`, `DSYNC`, `SYNC`, `APPEND`, `NOAPPEND` (`RWF_NOWAIT`,
/// 0x08, is `EOPNOTSUPP` on a file without `FMODE_NOWAIT`).
const RWF_IGNORED: c_int = 0x01 | 0x02 | 0x04 | 0x10 | 0x20;

/// The kernel's loop for `preadv`/`pwritev` on files without `_iter`
/// operations: one positional call per segment, the position advancing,
/// stopping at the first short transfer.
fn vectored_at(
    fd: c_int,
    iov: u64,
    iovcnt: c_int,
    offset: i64,
    op: fn(c_int, u64, usize, i64) -> Option<Xfer>,
) -> Option<Xfer> {
    files::get(fd)?;
    if offset < 0 {
        return Some(Err(libc::EINVAL));
    }
    let segs = match iovecs(iov, iovcnt) {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    Some(segments(segs, |base, len, done| {
        op(fd, base, len, offset.saturating_add(done as i64))
    }))
}

/// `preadv(fd, iov, iovcnt, offset)` on an engine fd.
pub(crate) fn preadv(fd: c_int, iov: u64, iovcnt: c_int, offset: i64) -> Option<Xfer> {
    vectored_at(fd, iov, iovcnt, offset, pread)
}

/// `pwritev(fd, iov, iovcnt, offset)` on an engine fd.
pub(crate) fn pwritev(fd: c_int, iov: u64, iovcnt: c_int, offset: i64) -> Option<Xfer> {
    vectored_at(fd, iov, iovcnt, offset, pwrite)
}

/// `preadv2`/`pwritev2` flags on an engine fd: `Err` for the ones Linux
/// refuses on a file without `FMODE_NOWAIT` (`RWF_NOWAIT`) or does not know.
fn rwf_check(flags: c_int) -> Result<(), c_int> {
    if flags & !RWF_IGNORED != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    Ok(())
}

/// `preadv2(fd, iov, iovcnt, offset, flags)` on an engine fd, or
/// `pwritev2` when `write`: the flags checked, then offset `-1` is
/// `readv`/`writev`, any other `preadv`/`pwritev`.
pub(crate) fn vectored2(
    fd: c_int,
    iov: u64,
    iovcnt: c_int,
    offset: i64,
    flags: c_int,
    write: bool,
) -> Option<Xfer> {
    files::get(fd)?;
    if let Err(e) = rwf_check(flags) {
        return Some(Err(e));
    }
    match (offset == -1, write) {
        (true, false) => readv(fd, iov, iovcnt),
        (true, true) => writev(fd, iov, iovcnt),
        (false, false) => preadv(fd, iov, iovcnt, offset),
        (false, true) => pwritev(fd, iov, iovcnt, offset),
    }
}

#[cfg(test)]
mod tests {
    //! The hooks themselves, called directly on engine fds made with a test
    //! [`files::EngineFile`] (no command creates engine fds yet).

    use std::ffi::c_void;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use uiommufd::plumbing::files::{self, EngineFile};
    use uiommufd_testkit::poll_in;

    #[derive(Debug, Default)]
    struct Fifo {
        data: Mutex<Vec<u8>>,
        nonblock_seen: AtomicBool,
    }

    impl EngineFile for Fifo {
        fn kind(&self) -> &'static str {
            "fifo"
        }
        fn read(&self, buf: &mut [u8], nonblock: bool) -> uiommufd::Result<usize> {
            self.nonblock_seen.store(nonblock, Ordering::SeqCst);
            let mut d = self.data.lock().unwrap();
            let n = buf.len().min(d.len());
            buf[..n].copy_from_slice(&d[..n]);
            d.drain(..n);
            Ok(n)
        }
        fn write(&self, buf: &[u8]) -> uiommufd::Result<usize> {
            self.data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn poll_events(&self) -> i16 {
            if self.data.lock().unwrap().is_empty() {
                0
            } else {
                libc::POLLIN
            }
        }
    }

    #[test]
    fn engine_fd_through_the_hooks() {
        let f = Arc::new(Fifo::default());
        let fd = files::create(f.clone(), true).unwrap();
        assert!(!poll_in(fd));
        // SAFETY: the hooks with valid buffers.
        unsafe {
            assert_eq!(crate::write(fd, b"hello".as_ptr().cast(), 5), 5);
            assert!(poll_in(fd), "write resynced readiness");
            let mut buf = [0u8; 3];
            assert_eq!(crate::read(fd, buf.as_mut_ptr().cast(), 3), 3);
            assert_eq!(&buf, b"hel");
            assert!(poll_in(fd));
            // readv: two segments, second short
            let mut a = [0u8; 1];
            let mut b = [0u8; 8];
            let iov = [
                libc::iovec {
                    iov_base: a.as_mut_ptr().cast::<c_void>(),
                    iov_len: 1,
                },
                libc::iovec {
                    iov_base: b.as_mut_ptr().cast::<c_void>(),
                    iov_len: 8,
                },
            ];
            assert_eq!(crate::readv(fd, iov.as_ptr(), 2), 2);
            assert_eq!((a[0], b[0]), (b'l', b'o'));
            assert!(!poll_in(fd), "drained");
            assert!(!f.nonblock_seen.load(Ordering::SeqCst));
            // writev
            let w = [
                libc::iovec {
                    iov_base: b"ab".as_ptr() as *mut c_void,
                    iov_len: 2,
                },
                libc::iovec {
                    iov_base: b"c".as_ptr() as *mut c_void,
                    iov_len: 1,
                },
            ];
            assert_eq!(crate::writev(fd, w.as_ptr(), 2), 3);
            assert_eq!(&*f.data.lock().unwrap(), b"abc");
            // bad pointers are EFAULT, not a crash
            assert_eq!(crate::read(fd, 8 as *mut c_void, 3), -1);
            assert_eq!(crate::path::errno(), libc::EFAULT);
            assert_eq!(crate::write(fd, 8 as *const c_void, 3), -1);
            assert_eq!(crate::path::errno(), libc::EFAULT);
            assert_eq!(crate::readv(fd, iov.as_ptr(), -1), -1);
            assert_eq!(crate::path::errno(), libc::EINVAL);
            // O_NONBLOCK of the fd reaches the engine file
            assert_eq!(crate::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK as _), 0);
            let mut c = [0u8; 1];
            assert_eq!(crate::read(fd, c.as_mut_ptr().cast(), 1), 1);
            assert!(f.nonblock_seen.load(Ordering::SeqCst));

            // dup: both numbers are the same file; the last close drops it
            let fd2 = crate::dup(fd);
            assert!(fd2 >= 0);
            let fd3 = crate::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
            assert!(fd3 >= 100);
            let fd4 = crate::dup3(fd, 120, libc::O_CLOEXEC);
            assert_eq!(fd4, 120);
            assert!(crate::close(fd) == 0);
            assert!(files::get(fd2).is_some() && files::get(fd3).is_some());
            assert_eq!(crate::read(fd2, c.as_mut_ptr().cast(), 1), 1);
            assert_eq!(c[0], b'b');
            // dup2 of an ordinary fd over an engine fd unregisters it
            let null = crate::open(c"/dev/null".as_ptr(), libc::O_RDONLY, 0);
            assert!(null >= 0);
            assert_eq!(crate::dup2(null, fd3), fd3);
            assert!(files::get(fd3).is_none());
            assert_eq!(crate::read(fd3, c.as_mut_ptr().cast(), 1), 0, "/dev/null");
            assert_eq!(crate::close(fd3), 0);
            assert_eq!(crate::close(null), 0);
            assert_eq!(Arc::strong_count(&f), 3, "fd2 and fd4 hold the file");
            assert_eq!(crate::close(fd2), 0);
            assert_eq!(crate::close_range(120, 120, 0), 0);
            assert_eq!(Arc::strong_count(&f), 1, "last fd closed: file dropped");
            assert_eq!(crate::read(fd4, c.as_mut_ptr().cast(), 1), -1);
            assert_eq!(crate::path::errno(), libc::EBADF);
        }
    }

    #[test]
    fn stale_engine_fd_goes_to_the_kernel() {
        let f = Arc::new(Fifo::default());
        let fd = files::create(f.clone(), true).unwrap();
        // SAFETY: raw close of our own fd behind the shim's back.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_close, fd), 0);
        }
        // (another test thread may reuse the number: look, do not read)
        if let Some(g) = files::get(fd) {
            assert!(!std::ptr::addr_eq(Arc::as_ptr(&g), Arc::as_ptr(&f)));
        }
        assert_eq!(Arc::strong_count(&f), 1);
    }
}
