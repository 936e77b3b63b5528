//! The migration stream between source and destination: framed messages on
//! a stream socket (Unix or TCP), with guest pages sent straight from the
//! source's memory and received straight into the destination's (no
//! intermediate buffer, so the transfer runs at the socket's speed).
//!
//! Page payloads go zero-copy when [`Wire::zero_copy`] is on: the pages
//! are `vmsplice`d into a pipe (which takes references to them, not
//! copies) and `splice`d from it into the socket, whose buffers then hold
//! the guest pages themselves; the one copy left is the receiver's read.
//! A plain `write` copies every byte twice (into the socket, out of it),
//! both on the CPUs the two sides share. A page referenced this way is
//! read by the receiver when it reaches it, possibly after the source's
//! device wrote it again: that is as safe as the copy, because any write
//! after the bitmap read that chose the page marks it dirty again and
//! sends it in a later round, which the receiver reads later still; the
//! final round runs with the device stopped, and the source writes its
//! memory again only after the destination said it has it all.
//!
//! Every message is a 32-byte header — tag, flags, and three u64 fields —
//! possibly followed by a payload whose length the header gives. All
//! integers little-endian.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Stream magic, in `Hello`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"UIOMIGR1");

/// Message tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Tag {
    /// a = MAGIC, b = guest memory bytes, c = page size.
    Hello = 1,
    /// A run of pages: a = first page, b = number of pages; payload = the pages.
    Pages = 2,
    /// End of a round: a = round number, b = pages sent in it on this
    /// connection (a page lane's are in its `LaneEnd`), c = 1 when
    /// the source waits for [`Tag::Received`] (pre-copy rounds), 0 not
    /// (the stop-and-copy round, which `Finish` follows at once).
    EndRound = 3,
    /// The device's stop-copy data: a = length; payload = the bytes.
    Device = 4,
    /// Source done: a = digest of guest memory at stop, b = the device's
    /// last record sequence number at stop, c = pages in the final round.
    Finish = 5,
    /// Destination's answer: a = 1 when the memory digest matched, b = its
    /// digest, c = the first record sequence number the resumed device wrote.
    Verdict = 6,
    /// The destination resumed the device (downtime ends): a = when its
    /// device was running, b = when it had read the final round up to its
    /// `EndRound`, both on its `CLOCK_MONOTONIC` in nanoseconds (see
    /// `clock.rs` for when the source may use them).
    Resumed = 7,
    /// The destination's machine is set up (its memory mapped and
    /// populated): the transfer may start. a = its host id (`clock.rs`:
    /// equal ids share `CLOCK_MONOTONIC`; 0 unknown), b = 1 when it takes a
    /// page lane (`Tag::Lane`) as the next message, else 0.
    Ready = 8,
    /// The destination has read a pre-copy round up to its `EndRound`
    /// (and the lane's part up to its `LaneEnd`): a = round number, b = its
    /// pages on all connections.
    Received = 9,
    /// The destination has stopped its device after letting it run a
    /// little (for the verification) and waits for [`Tag::Go`]: the
    /// source may measure raw copies now, next to the downtime, without
    /// either side's device or verification competing. a = 0.
    Quiet = 10,
    /// The source has measured: the destination may verify. a = 0.
    Go = 11,
    /// Get a buffer of a = bytes ready for [`Tag::Raw`] copies (between
    /// `Quiet` and `Go`).
    RawPrep = 12,
    /// The buffer is ready. a = 0.
    RawReady = 13,
    /// A raw copy: a = bytes, then that many bytes written plainly, read
    /// into the buffer and thrown away.
    Raw = 14,
    /// The raw copy has been read: a = when, on the destination's
    /// `CLOCK_MONOTONIC` in nanoseconds.
    RawDone = 15,
    /// On the main connection, with a second connected Unix socket
    /// attached (`SCM_RIGHTS`): a page lane (see `lanes.rs`). Sent only to
    /// a destination whose `Ready` offered lanes. a = 0.
    Lane = 16,
    /// On a lane: the lane's part of a round is complete. a = round
    /// number, b = pages the lane carried in it, c = 1 for a pre-copy
    /// round, 0 for the final one (the lane's last message).
    LaneEnd = 17,
}

impl Tag {
    fn from_u32(v: u32) -> Option<Tag> {
        Some(match v {
            1 => Tag::Hello,
            2 => Tag::Pages,
            3 => Tag::EndRound,
            4 => Tag::Device,
            5 => Tag::Finish,
            6 => Tag::Verdict,
            7 => Tag::Resumed,
            8 => Tag::Ready,
            9 => Tag::Received,
            10 => Tag::Quiet,
            11 => Tag::Go,
            12 => Tag::RawPrep,
            13 => Tag::RawReady,
            14 => Tag::Raw,
            15 => Tag::RawDone,
            16 => Tag::Lane,
            17 => Tag::LaneEnd,
            _ => return None,
        })
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What it is.
    pub tag: Tag,
    /// Fields (meaning per tag).
    pub a: u64,
    /// Second field.
    pub b: u64,
    /// Third field.
    pub c: u64,
}

fn encode(tag: Tag, a: u64, b: u64, c: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(&(tag as u32).to_le_bytes());
    h[8..16].copy_from_slice(&a.to_le_bytes());
    h[16..24].copy_from_slice(&b.to_le_bytes());
    h[24..32].copy_from_slice(&c.to_le_bytes());
    h
}

fn decode(h: &[u8; 32]) -> io::Result<Header> {
    let t = u32::from_le_bytes(h[0..4].try_into().unwrap());
    let tag = Tag::from_u32(t).ok_or_else(|| bad(format!("unknown message tag {t}")))?;
    let f = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
    Ok(Header {
        tag,
        a: f(8),
        b: f(16),
        c: f(24),
    })
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Move all of `len` bytes, at most 1 GiB a call: `io(done, n)` moves up
/// to `n` bytes from offset `done` (a `read`/`write` result); interrupted
/// calls are retried, a zero result is `at_zero()`.
fn all_of(
    len: usize,
    mut io: impl FnMut(usize, usize) -> isize,
    at_zero: impl Fn() -> io::Error,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let r = restarting(|| io(done, (len - done).min(1 << 30)))?;
        if r == 0 {
            return Err(at_zero());
        }
        done += r;
    }
    Ok(())
}

/// `call` (one `read`, `write`, `sendmsg` or `recvmsg`) again while a
/// signal interrupts it: what it returned, or its error (a socket timeout
/// as [`timed_out`] names it).
fn restarting(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(timed_out(e));
        }
    }
}

/// Write all of `len` bytes at `ptr` to `fd` (the source's guest memory,
/// which the device may be writing meanwhile: read by the kernel, never
/// through a Rust reference).
///
/// # Safety
/// `ptr..ptr + len` must stay mapped and readable during the call.
pub unsafe fn write_raw(fd: RawFd, ptr: *const u8, len: usize) -> io::Result<()> {
    all_of(
        len,
        // SAFETY: the caller guarantees the range is readable.
        |done, n| unsafe { libc::write(fd, ptr.add(done).cast(), n) },
        || io::ErrorKind::WriteZero.into(),
    )
}

/// A socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` expired) said plainly.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "the peer did not answer in time")
    } else {
        e
    }
}

/// Read exactly `len` bytes from `fd` into `ptr`.
///
/// # Safety
/// `ptr..ptr + len` must stay mapped and writable during the call, and
/// nothing may hold a Rust reference to it.
pub unsafe fn read_raw(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<()> {
    all_of(
        len,
        // SAFETY: the caller guarantees the range is writable.
        |done, n| unsafe { libc::read(fd, ptr.add(done).cast(), n) },
        || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the migration stream",
            )
        },
    )
}

/// Payloads at least this long go zero-copy when it is on (below it, the
/// two extra system calls cost more than the copy they save).
const ZERO_COPY_MIN: usize = 64 << 10;

/// The pipe that carries zero-copy payloads holds this much (the largest
/// an unprivileged process gets by default, `/proc/sys/fs/pipe-max-size`;
/// a smaller pipe just takes more rounds of `vmsplice` and `splice`).
const PIPE_BYTES: usize = 1 << 20;

/// One end of the stream.
#[derive(Debug)]
pub struct Wire<S: AsRawFd> {
    sock: S,
    /// Bytes sent and received (headers and payloads).
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
    /// The pipe (read end, write end) of zero-copy sends, when on.
    pipe: Option<(RawFd, RawFd)>,
    /// Bytes each `vmsplice` moves at most (the pipe's capacity).
    pipe_bytes: usize,
}

impl<S: AsRawFd> Drop for Wire<S> {
    fn drop(&mut self) {
        self.close_pipe();
    }
}

impl<S: AsRawFd> Wire<S> {
    /// Wrap a connected stream socket.
    pub fn new(sock: S) -> Wire<S> {
        Wire {
            sock,
            sent: 0,
            received: 0,
            pipe: None,
            pipe_bytes: 0,
        }
    }

    /// Send page payloads zero-copy from now on (see the module
    /// documentation); false, and plain copies, when no pipe could be made.
    pub fn zero_copy(&mut self) -> bool {
        if self.pipe.is_some() {
            return true;
        }
        let mut p = [0i32; 2];
        // SAFETY: `p` is two ints for the new fds.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return false;
        }
        // SAFETY: our own pipe; a failure leaves its default size.
        unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, PIPE_BYTES as libc::c_int) };
        // SAFETY: as above; the answer is the capacity in bytes.
        let cap = unsafe { libc::fcntl(p[1], libc::F_GETPIPE_SZ) };
        self.pipe = Some((p[0], p[1]));
        self.pipe_bytes = if cap > 0 { cap as usize } else { 1 << 16 };
        true
    }

    fn close_pipe(&mut self) {
        if let Some((r, w)) = self.pipe.take() {
            // SAFETY: our own pipe fds, closed once.
            unsafe {
                libc::close(r);
                libc::close(w);
            }
        }
    }

    /// Send `len` bytes at `ptr` zero-copy through the pipe. When the
    /// socket refuses spliced data (`EINVAL`), what the pipe holds is sent
    /// with a plain write, zero-copy is turned off and the rest goes the
    /// plain way too.
    ///
    /// # Safety
    /// As [`write_raw`].
    unsafe fn splice_out(&mut self, ptr: *const u8, len: usize) -> io::Result<()> {
        let Some((pr, pw)) = self.pipe else {
            // SAFETY: forwarded from the caller.
            return unsafe { write_raw(self.sock.as_raw_fd(), ptr, len) };
        };
        let fd = self.sock.as_raw_fd();
        let mut off = 0;
        while off < len {
            let iov = libc::iovec {
                // SAFETY: `off < len`: inside the caller's readable range.
                iov_base: unsafe { ptr.add(off) }.cast_mut().cast(),
                iov_len: (len - off).min(self.pipe_bytes),
            };
            // SAFETY: the iovec points at the caller's range; the pipe
            // takes references to its pages, which stay mapped (see the
            // module documentation for why their later writes are safe).
            let r = unsafe { libc::vmsplice(pw, &iov, 1, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut left = r as usize;
            while left > 0 {
                let more = if off + (r as usize) < len {
                    libc::SPLICE_F_MORE
                } else {
                    0
                };
                // SAFETY: pipe to socket, both our fds; no user memory.
                let s = unsafe {
                    libc::splice(
                        pr,
                        std::ptr::null_mut(),
                        fd,
                        std::ptr::null_mut(),
                        left,
                        libc::SPLICE_F_MOVE | more,
                    )
                };
                if s < 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EINVAL) => {
                            // The socket takes no spliced pages: empty the
                            // pipe into it by hand, then go on plainly.
                            let mut buf = vec![0u8; left];
                            // SAFETY: `buf` is `left` bytes; the pipe holds them.
                            unsafe { read_raw(pr, buf.as_mut_ptr(), left) }?;
                            // SAFETY: a live vector.
                            unsafe { write_raw(fd, buf.as_ptr(), left) }?;
                            self.close_pipe();
                            let done = off + r as usize;
                            // SAFETY: the rest of the caller's range.
                            return unsafe { write_raw(fd, ptr.add(done), len - done) };
                        }
                        _ => return Err(timed_out(e)),
                    }
                }
                if s == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                left -= s as usize;
            }
            off += r as usize;
        }
        Ok(())
    }

    /// Send a header.
    pub fn send(&mut self, tag: Tag, a: u64, b: u64, c: u64) -> io::Result<()> {
        let h = encode(tag, a, b, c);
        // SAFETY: `h` is a local buffer.
        unsafe { write_raw(self.sock.as_raw_fd(), h.as_ptr(), h.len()) }?;
        self.sent += 32;
        Ok(())
    }

    /// Send a header and the `len` bytes at `ptr` after it, in as few
    /// system calls as the socket takes (`writev`).
    ///
    /// # Safety
    /// As [`write_raw`].
    pub unsafe fn send_with(
        &mut self,
        tag: Tag,
        a: u64,
        b: u64,
        c: u64,
        ptr: *const u8,
        len: usize,
    ) -> io::Result<()> {
        if self.pipe.is_some() && len >= ZERO_COPY_MIN {
            self.send(tag, a, b, c)?;
            // SAFETY: forwarded from the caller.
            unsafe { self.splice_out(ptr, len) }?;
            self.sent += len as u64;
            return Ok(());
        }
        let mut h = encode(tag, a, b, c);
        let total = 32 + len;
        let fd = self.sock.as_raw_fd();
        all_of(
            total,
            |done, _| {
                let mut iov = [
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    },
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    },
                ];
                let mut n = 0;
                if done < 32 {
                    iov[0] = libc::iovec {
                        iov_base: h[done..].as_mut_ptr().cast(),
                        iov_len: 32 - done,
                    };
                    n = 1;
                }
                let off = done.saturating_sub(32);
                if off < len {
                    // SAFETY: `off < len`: inside the caller's readable range.
                    let at = unsafe { ptr.add(off) };
                    iov[n] = libc::iovec {
                        iov_base: at.cast_mut().cast(),
                        iov_len: (len - off).min(1 << 30),
                    };
                    n += 1;
                }
                // SAFETY: the iovecs point at `h` and the caller's range.
                unsafe { libc::writev(fd, iov.as_ptr(), n as i32) }
            },
            || io::ErrorKind::WriteZero.into(),
        )?;
        self.sent += total as u64;
        Ok(())
    }

    /// Send a payload of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// As [`write_raw`].
    pub unsafe fn send_raw(&mut self, ptr: *const u8, len: usize) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { write_raw(self.sock.as_raw_fd(), ptr, len) }?;
        self.sent += len as u64;
        Ok(())
    }

    /// Send a payload from a slice.
    pub fn send_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        // SAFETY: a live slice.
        unsafe { self.send_raw(data.as_ptr(), data.len()) }
    }

    /// Receive a header.
    pub fn recv(&mut self) -> io::Result<Header> {
        let mut h = [0u8; 32];
        // SAFETY: a local buffer.
        unsafe { read_raw(self.sock.as_raw_fd(), h.as_mut_ptr(), h.len()) }?;
        self.received += 32;
        decode(&h)
    }

    /// Send a header with the file descriptor `fd` attached (`SCM_RIGHTS`:
    /// a Unix socket only; the peer must take it with [`Wire::recv_fd`]).
    pub fn send_fd(&mut self, tag: Tag, a: u64, b: u64, c: u64, fd: RawFd) -> io::Result<()> {
        let mut h = encode(tag, a, b, c);
        let mut iov = libc::iovec {
            iov_base: h.as_mut_ptr().cast(),
            iov_len: h.len(),
        };
        // u64 words: aligned for a cmsghdr.
        let mut cbuf = [0u64; 4];
        // SAFETY: a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        // SAFETY: an all-zero msghdr is a valid empty one.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at `cbuf`, which has room for one cmsghdr
        // with one fd (`space` <= 32 bytes).
        unsafe {
            let cm = libc::CMSG_FIRSTHDR(&msg);
            (*cm).cmsg_level = libc::SOL_SOCKET;
            (*cm).cmsg_type = libc::SCM_RIGHTS;
            (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            libc::CMSG_DATA(cm).cast::<RawFd>().write_unaligned(fd);
        }
        // SAFETY: `msg` describes `h` and the control buffer above.
        let sent = restarting(|| unsafe {
            libc::sendmsg(self.sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        })?;
        if sent < h.len() {
            // the fd went with the first byte; the rest plainly
            // SAFETY: the rest of the local header.
            unsafe { write_raw(self.sock.as_raw_fd(), h[sent..].as_ptr(), h.len() - sent) }?;
        }
        self.sent += 32;
        Ok(())
    }

    /// Receive a header and the file descriptor attached to it, if any
    /// (`SCM_RIGHTS`; any other control message is refused).
    pub fn recv_fd(&mut self) -> io::Result<(Header, Option<OwnedFd>)> {
        let mut h = [0u8; 32];
        let mut iov = libc::iovec {
            iov_base: h.as_mut_ptr().cast(),
            iov_len: h.len(),
        };
        let mut cbuf = [0u64; 8];
        // SAFETY: an all-zero msghdr is a valid empty one.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: `msg` describes `h` and `cbuf`, both live locals.
        let got = restarting(|| unsafe {
            libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC)
        })?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the migration stream",
            ));
        }
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `cbuf` and set `msg_controllen`; the
        // CMSG macros walk only inside it.
        unsafe {
            let mut cm = libc::CMSG_FIRSTHDR(&msg);
            while !cm.is_null() {
                if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_RIGHTS {
                    let n = ((*cm).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<RawFd>();
                    let p = libc::CMSG_DATA(cm).cast::<RawFd>();
                    for i in 0..n {
                        fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                    }
                }
                cm = libc::CMSG_NXTHDR(&msg, cm);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > 1 {
            return Err(bad(
                "unexpected file descriptors in the migration stream".into()
            ));
        }
        if got < h.len() {
            // SAFETY: the rest of the local header.
            unsafe { read_raw(self.sock.as_raw_fd(), h[got..].as_mut_ptr(), h.len() - got) }?;
        }
        self.received += 32;
        Ok((decode(&h)?, fds.pop()))
    }

    /// The socket.
    pub fn sock(&self) -> &S {
        &self.sock
    }

    /// Receive a header that must be `tag`.
    pub fn expect(&mut self, tag: Tag) -> io::Result<Header> {
        let h = self.recv()?;
        if h.tag != tag {
            return Err(bad(format!("expected {tag:?}, got {:?}", h.tag)));
        }
        Ok(h)
    }

    /// Receive a payload of `len` bytes into `ptr`.
    ///
    /// # Safety
    /// As [`read_raw`].
    pub unsafe fn recv_raw(&mut self, ptr: *mut u8, len: usize) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { read_raw(self.sock.as_raw_fd(), ptr, len) }?;
        self.received += len as u64;
        Ok(())
    }

    /// Wait until the peer closes the stream, or `limit` passes, throwing
    /// away whatever it still sends.
    pub fn wait_closed(&mut self, limit: std::time::Duration) {
        let fd = self.sock.as_raw_fd();
        let end = std::time::Instant::now() + limit;
        let tv = libc::timeval {
            tv_sec: limit.as_secs() as libc::time_t,
            tv_usec: limit.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid timeval for SO_RCVTIMEO on our own socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < end {
            // SAFETY: a local buffer.
            let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if r == 0 || (r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            {
                return;
            }
        }
    }

    /// Receive a payload into a new vector of `len` bytes, refusing more
    /// than `max` (a corrupt length must not make us allocate it).
    pub fn recv_vec(&mut self, len: u64, max: u64) -> io::Result<Vec<u8>> {
        if len > max {
            return Err(bad(format!("payload of {len} bytes exceeds {max}")));
        }
        let mut v = vec![0u8; len as usize];
        // SAFETY: a live vector of that length.
        unsafe { self.recv_raw(v.as_mut_ptr(), v.len()) }?;
        Ok(v)
    }
}

/// A fast non-cryptographic digest of memory (64-bit words folded with a
/// multiply-rotate), read with volatile loads so that concurrent writers
/// are not a data race in Rust's model. Only compares two copies.
///
/// # Safety
/// `ptr..ptr + len` must be mapped and readable; `len` a multiple of 8.
pub unsafe fn digest(ptr: *const u8, len: usize) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let words = ptr.cast::<u64>();
    for i in 0..len / 8 {
        // SAFETY: inside the caller's readable range, 8-aligned when `ptr` is.
        let w = unsafe { words.add(i).read_volatile() };
        h = (h ^ w).wrapping_mul(0x100_0000_01b3).rotate_left(29);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn headers_and_payloads_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut w = Wire::new(a);
            w.send(Tag::Hello, MAGIC, 1 << 20, 4096).unwrap();
            w.send(Tag::Device, 3, 0, 0).unwrap();
            w.send_bytes(b"abc").unwrap();
            w.send(Tag::Device, 1 << 40, 0, 0).unwrap();
        });
        let mut r = Wire::new(b);
        let h = r.expect(Tag::Hello).unwrap();
        assert_eq!((h.a, h.b, h.c), (MAGIC, 1 << 20, 4096));
        let h = r.expect(Tag::Device).unwrap();
        assert_eq!(r.recv_vec(h.a, 100).unwrap(), b"abc");
        let h = r.recv().unwrap();
        assert!(r.recv_vec(h.a, 100).is_err());
        t.join().unwrap();
        assert!(r.recv().is_err());
    }

    #[test]
    fn a_header_carries_a_file_descriptor_and_a_plain_one_none() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = Wire::new(a);
        let mut r = Wire::new(b);
        let (x, mut y) = UnixStream::pair().unwrap();
        w.send_fd(Tag::Lane, 1, 2, 3, x.as_raw_fd()).unwrap();
        w.send(Tag::Ready, 4, 5, 6).unwrap();
        let (h, fd) = r.recv_fd().unwrap();
        assert_eq!((h.tag, h.a, h.b, h.c), (Tag::Lane, 1, 2, 3));
        // the descriptor received is the same socket
        let mut got = UnixStream::from(fd.unwrap());
        got.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        y.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let (h, fd) = r.recv_fd().unwrap();
        assert_eq!((h.tag, h.a), (Tag::Ready, 4));
        assert!(fd.is_none());
        drop(w);
        assert!(r.recv_fd().is_err());
    }

    #[test]
    fn waiting_for_the_peer_to_close_ends_at_its_close_or_the_limit() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut w = Wire::new(a);
            w.send(Tag::Ready, 0, 0, 0).unwrap();
        });
        let mut r = Wire::new(b);
        let t0 = std::time::Instant::now();
        r.wait_closed(std::time::Duration::from_secs(20));
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        t.join().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let mut r = Wire::new(b);
        let t0 = std::time::Instant::now();
        r.wait_closed(std::time::Duration::from_millis(50));
        assert!(t0.elapsed() >= std::time::Duration::from_millis(50));
        drop(a);
    }
}
