//! One context across processes: a `/dev/iommu` fd held by a process that
//! does not hold its engine (a `fork` child, a grandchild, a receiver of the
//! fd over `SCM_RIGHTS`).
//!
//! # The kernel's model, and ours
//!
//! In the kernel the iommufd file is one object however many processes
//! hold it; every command runs as the calling process (`current->mm`): its
//! structs and arrays are copied from the caller, and the pages an
//! `IOAS_MAP` pins are the caller's. Here a context lives in the process
//! that opened it (its **owner**), and every ioctl there runs in place, on
//! the fast path of a single process: nothing below is touched until the
//! owner forks with emulated fds open.
//!
//! A process holding an fd whose context lives elsewhere is a **client**.
//! Its fd table entry is [`FdObject::Remote`](crate::table::FdObject): it
//! names the context (a key, the address of the owner's `Context`) and a
//! [`Conn`], a `SOCK_SEQPACKET` Unix socket to a thread of the owner. Each
//! ioctl is one request on it (the context's key, `cmd`, `arg`); the owner
//! runs the engine's dispatcher with a
//! [`ProcessMemory`](uiommufd::process::ProcessMemory) of the client
//! ([`uiommufd::dispatch::ioctl_as`]), so the command struct, its
//! arrays and the reply move between the engine and the client's memory by
//! `process_vm_readv`/`process_vm_writev`, and the areas it maps are the
//! client's memory. The client announces itself with its pid and a pidfd
//! (sent with `SCM_RIGHTS`) on its first request: the pidfd tells the
//! owner when the client has exited, never confusing it with a recycled pid.
//!
//! # Lifetime
//!
//! The owner's end of each connection holds a strong reference to every
//! context the client holds an fd of, so a context lives while any process
//! holds an fd of it (the kernel's file reference), as long as the owner
//! runs. The client drops a context's reference (a `CLOSE` request) when its
//! last fd of it is closed; the owner drops all of a connection's
//! references when the client exits (end of file on the socket).
//!
//! # fork
//!
//! The `pthread_atfork` *prepare* handler (inside the fork gate, see `sync`)
//! makes one socket pair for the contexts this process owns, holding them
//! all, and asks the owner of every context this process is a client of for
//! a second connection holding the same references (`CLONE`). The *parent*
//! handler hands the owner's end to a new server thread and closes the
//! child's ends; the *child* handler turns each emulated fd into a client
//! entry on the new connection, leaves its copy of the engine state alone
//! (never torn down: the objects belong to the owner), and closes the
//! parent's server and client sockets it inherited, so the owner sees end
//! of file exactly when the processes that use a connection are gone.
//!
//! # SCM_RIGHTS
//!
//! `sendmsg` of a `/dev/iommu` fd holds a reference of its context for the
//! receiver (in the owner's in-flight list; a client asks its owner with
//! `HOLD`) and writes a header into the fd's memfd — one file shared by
//! every holder of the fd — naming the owner's listening socket (an
//! abstract Unix socket `uiommufd/PID/NONCE`, started on the first send)
//! and the context's key. `recvmsg` looks at every fd received: one of our
//! memfds with a header connects to that owner (once per owner) and claims
//! the held reference (`CLAIM`), and becomes a client entry; an fd that
//! comes back to its owner is its context again. Accepted connections are
//! served as fork children's are, if the peer runs as the owner's user or
//! as root (`SO_PEERCRED`): the socket's name is listed in /proc/net/unix,
//! so it is no secret, and a process of another user must not reach the
//! context (one of the same user could read the owner's memory anyway).
//!
//! # Why this shape
//!
//! * **The owner keeps the engine**, rather than a daemon holding every
//!   context: a program that never shares its fd (every VMM and test today)
//!   runs exactly as before, with no extra process, no socket and no lock
//!   on its ioctl path; the cost of sharing falls on the processes that
//!   share. The price: the owner's exit ends the context for everyone.
//! * **A connection per fork, made before the fork** (a socket pair, not a
//!   connect from the child): the owner holds the child's references from
//!   the instant the child exists, so the parent may close its fd at once;
//!   end of file on the pair says exactly when every process using it is
//!   gone (each side closes the other's inherited ends).
//! * **A pidfd per client**: liveness without pid reuse, the test of the
//!   kernel's "the mm is gone" (`fork_gone`).
//! * **Memory in place or through the process, never converted**: the
//!   classic alternative moves a client's private range into a memfd at
//!   `IOAS_MAP` (copy, `mmap MAP_FIXED` over it) so the owner can map it;
//!   that silently turns private memory shared (a later `fork` of the
//!   client would share it with its child) and races the client's other
//!   threads writing the range meanwhile. Shared mappings the owner already
//!   has at the same address (what `fork` leaves) are used in place instead,
//!   and private memory stays the client's, reached with
//!   `process_vm_readv`/`process_vm_writev` (see
//!   [`uiommufd::process`]).
//!
//! # What a client cannot do (yet)
//!
//! * `IOAS_MAP_FILE` works (its fd travels with the request, see
//!   [`ioctl`]), but the commands that create or name an engine fd —
//!   `FAULT_QUEUE_ALLOC`, `VEVENTQ_ALLOC`, the selftest's access commands —
//!   and the VFIO container commands are `EOPNOTSUPP` from a client; `mmap`
//!   of the fd is `ENODEV`. Engine fds (access, fault, event queue, VFIO
//!   files) the owner made before the fork move their bytes through the
//!   owner's engine (`OP_ENGINE`, the file checked with `kcmp`: the owner
//!   may have reused the number; see [`engine_io`]), but their `ioctl` and
//!   `mmap` reach the child's copy of the engine; engine fds sent with
//!   `SCM_RIGHTS` are bare eventfds.
//! * An area a client maps from memory it does not share with the owner at
//!   the same address (private memory) is read from the client while it
//!   runs, and no domain can map it (`EFAULT`): the engine's domains map
//!   host addresses of the owner (see [`uiommufd::process`]).
//! * When the owner exits, its clients' fds stop working (`EIO`); `exec`
//!   of the owner drops its contexts as before.
//! * Pins are charged to the process that mapped, or that called
//!   `IOAS_CHANGE_PROCESS` last ([`uiommufd::accounting::as_caller`] around
//!   a client's command; `OP_STATUS` reports a process's share, which
//!   [`status_file`] adds to `/proc/PID/status`), but checked against the
//!   owner's `RLIMIT_MEMLOCK` and totals.

use std::collections::HashMap;
use std::ffi::c_int;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use uiommufd::process::{pidfd_open, ProcessMemory};
use uiommufd::user::UserMemory;
use uiommufd::Context;

use crate::table::{self, Entry, FdObject};

/// Request: the client's pid (`a`), its pidfd attached.
const OP_HELLO: u32 = 1;
/// Request: ioctl `b` with argument `c` on context `a`. Reply: the result.
const OP_IOCTL: u32 = 2;
/// Request: the client's last fd of context `a` is closed. No reply.
const OP_CLOSE: u32 = 3;
/// Request: a new connection holding the same contexts. Reply: 0, its
/// client end attached.
const OP_CLONE: u32 = 4;
/// Request: context `a` is being sent with `SCM_RIGHTS`: hold it for the
/// receiver. Reply: 0 (or `-errno`), the owner's pid in `b` and its
/// listening socket's nonce in `c`.
const OP_HOLD: u32 = 5;
/// Request (a receiver's): take one reference of context `a` held for an
/// fd in flight. Reply: 0, or `-EBADF` when none is held.
const OP_CLAIM: u32 = 6;
/// Request: the pins the owner charges to process `a`. Reply: 0, pinned
/// pages in `b`, locked pages (`RLIMIT_MODE` 1) in `c`.
const OP_STATUS: u32 = 7;
/// Request: a transfer (`sub`: `IO_*`) on engine fd `a & 0xffffffff` of
/// the owner, which is the client's fd `a >> 32` (checked with `kcmp`), to
/// or from the client's `c` bytes at `b`, at offset `d` for the positional
/// ones. Reply: the bytes moved, or `-errno`.
const OP_ENGINE: u32 = 8;

/// `read`
const IO_READ: u32 = 0;
/// `write`
const IO_WRITE: u32 = 1;
/// `pread`
const IO_PREAD: u32 = 2;
/// `pwrite`
const IO_PWRITE: u32 = 3;

/// One request or reply (replies use `a` for the result or `-errno`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct Msg {
    op: u32,
    /// `OP_ENGINE`: which transfer (`IO_*`).
    sub: u32,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
}

impl Msg {
    fn bytes(&self) -> &[u8] {
        // SAFETY: a plain `repr(C)` struct of integers, no padding bytes
        // left uninitialised (`sub` fills the gap).
        unsafe {
            std::slice::from_raw_parts((self as *const Msg).cast(), std::mem::size_of::<Msg>())
        }
    }
}

/// Send `m` on `fd`, with `pass` attached (`SCM_RIGHTS`) when given.
fn send(fd: c_int, m: &Msg, pass: Option<c_int>) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: m.bytes().as_ptr().cast_mut().cast(),
        iov_len: std::mem::size_of::<Msg>(),
    };
    // room for one cmsg with one int, 8-byte aligned
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; fields are set below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if let Some(pfd) = pass {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) } as usize;
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = space;
        // SAFETY: `hdr` describes `cbuf`, big enough for one cmsg with one
        // int; CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), pfd);
        }
    }
    loop {
        // SAFETY: `hdr` points at our iovec and control buffer. The raw
        // system call: `sendmsg` may be hooked by the program's preloads.
        let n = unsafe { libc::syscall(libc::SYS_sendmsg, fd, &hdr, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Receive one message on `fd`, and the fd attached to it if any, moved
/// out of the program's way ([`hide`]). `Ok(None)` at end of file.
///
/// The kernel installs a passed fd at the lowest free number, where the
/// program may be about to `close` or `dup` a number it just freed: the
/// receipt is an fd birth (see `sync`), after a wait for the message
/// outside any critical section.
fn recv(fd: c_int) -> std::io::Result<Option<(Msg, Option<OwnedFd>)>> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd we own. Raw: `poll` may be the program's.
        let r = unsafe { libc::syscall(libc::SYS_poll, &mut p, 1, -1) };
        if r >= 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    let _c = crate::sync::enter();
    let _birth = crate::sync::Birth::new();
    let _ops = crate::sync::fd_ops();
    let r = recv_now(fd)?;
    Ok(r.map(|(m, f)| {
        use std::os::fd::IntoRawFd;
        // SAFETY: `hide` returns an fd that we alone own.
        (
            m,
            f.map(|f| unsafe { OwnedFd::from_raw_fd(hide(f.into_raw_fd())) }),
        )
    }))
}

/// [`recv`] of a message that is there (or end of file).
fn recv_now(fd: c_int) -> std::io::Result<Option<(Msg, Option<OwnedFd>)>> {
    let mut m = Msg::default();
    let mut iov = libc::iovec {
        iov_base: (&mut m as *mut Msg).cast(),
        iov_len: std::mem::size_of::<Msg>(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; fields are set below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.as_mut_ptr().cast();
    hdr.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: `hdr` points at our message and control buffers.
        let n = unsafe { libc::syscall(libc::SYS_recvmsg, fd, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    };
    let mut passed = None;
    // SAFETY: walking the control messages the kernel wrote into `cbuf`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let f = std::ptr::read_unaligned(data.add(i));
                    if passed.is_none() {
                        passed = Some(OwnedFd::from_raw_fd(f));
                    } else {
                        crate::raw_close(f);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    if n == 0 {
        return Ok(None);
    }
    if n != std::mem::size_of::<Msg>() {
        return Err(std::io::Error::from_raw_os_error(libc::EPROTO));
    }
    Ok(Some((m, passed)))
}

/// Move an fd of ours out of the way of the program: to a number near the
/// top of what `select` can see (at least 768 with the usual 1024 limit),
/// close-on-exec, so that a program which closes or predicts "the next fd
/// number" (the lowest free one) never meets our sockets. Returns the new
/// number (the old one is closed), or `fd` itself when no higher number is
/// free.
fn hide(fd: c_int) -> c_int {
    // SAFETY: getrlimit writes one rlimit we own.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let cur = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(4096) as c_int
    } else {
        1024
    };
    let floor = (cur - 256).max(3);
    // SAFETY: F_DUPFD_CLOEXEC on our own fd; raw: `fcntl` is hooked.
    let high = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, floor) } as c_int;
    if high < 0 {
        return fd;
    }
    crate::raw_close(fd);
    high
}

/// A `SOCK_SEQPACKET` socket pair, close-on-exec, out of the program's way
/// ([`hide`]): (owner's end, client's).
fn socketpair() -> std::io::Result<(c_int, c_int)> {
    let mut sv = [-1 as c_int; 2];
    // SAFETY: `sv` has room for the two fds. Raw system call: `socketpair`
    // is hooked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_socketpair,
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((hide(sv[0]), hide(sv[1])))
}

// ---------------------------------------------------------------------------
// Client side.

/// A connection of a client to the owner of some contexts.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The client's end (close-on-exec).
    fd: c_int,
    /// Request/reply pairs, one at a time; `true` once `HELLO` was sent.
    state: Mutex<bool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        crate::raw_close(self.fd);
    }
}

impl Conn {
    /// One request and, when `reply`, its answer: `(value, attached fd)`.
    fn call(&self, m: &Msg, reply: bool) -> Result<(i64, Option<OwnedFd>), c_int> {
        self.exchange(m, None, reply).map(|(r, f)| (r.a as i64, f))
    }

    /// [`Conn::call`], with `pass` attached to the request, and the whole
    /// reply.
    fn exchange(
        &self,
        m: &Msg,
        pass: Option<c_int>,
        reply: bool,
    ) -> Result<(Msg, Option<OwnedFd>), c_int> {
        let mut hello = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !*hello {
            let pid = crate::sync::pid();
            // a short-lived fd of ours at the lowest free number: a birth
            let _birth = crate::sync::Birth::new();
            let _ops = crate::sync::fd_ops();
            let pidfd = pidfd_open(pid).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            let h = Msg {
                op: OP_HELLO,
                a: pid as u64,
                ..Msg::default()
            };
            use std::os::fd::AsRawFd;
            send(self.fd, &h, Some(pidfd.as_raw_fd())).map_err(|_| libc::EIO)?;
            *hello = true;
        }
        send(self.fd, m, pass).map_err(|e| {
            tracing::debug!("the owner of the context is gone: {e}");
            libc::EIO
        })?;
        if !reply {
            return Ok((Msg::default(), None));
        }
        match recv(self.fd) {
            Ok(Some((r, f))) => Ok((r, f)),
            _ => {
                tracing::debug!("the owner of the context is gone");
                Err(libc::EIO)
            }
        }
    }
}

/// A context held by this process but living in its owner.
#[derive(Debug)]
pub(crate) struct RemoteCtx {
    key: u64,
    conn: Arc<Conn>,
}

impl Drop for RemoteCtx {
    fn drop(&mut self) {
        let m = Msg {
            op: OP_CLOSE,
            a: self.key,
            ..Msg::default()
        };
        let _ = self.conn.call(&m, false);
    }
}

/// The ioctl of a client fd: run by the owner as this process.
///
/// `IOAS_MAP_FILE` names an fd of ours: it travels with the request
/// (`SCM_RIGHTS`), and the owner reads its own number for it in the
/// command ([`FdPatched`]); an fd that is not open travels as none (the
/// owner answers `EBADF`, as the kernel).
pub(crate) fn ioctl(rc: &RemoteCtx, cmd: u32, arg: u64) -> Result<c_int, c_int> {
    let m = Msg {
        op: OP_IOCTL,
        a: rc.key,
        b: u64::from(cmd),
        c: arg,
        ..Msg::default()
    };
    let pass = (cmd == uiommufd::uapi::IOMMU_IOAS_MAP_FILE)
        .then(|| {
            let mut b = [0u8; 4];
            uiommufd::user::SelfMemory
                .read(arg.wrapping_add(MAP_FILE_FD_OFFSET), &mut b)
                .ok()?;
            let fd = c_int::from_ne_bytes(b);
            // SAFETY: F_GETFD on a number; raw: `fcntl` is hooked.
            (fd >= 0 && unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) } >= 0)
                .then_some(fd)
        })
        .flatten();
    let (r, _) = rc.conn.exchange(&m, pass, true)?;
    let r = r.a as i64;
    if r < 0 {
        Err((-r) as c_int)
    } else {
        Ok(r as c_int)
    }
}

// ---------------------------------------------------------------------------
// Owner side.

/// Where `struct iommu_ioas_map_file` keeps its `fd` (after `size`,
/// `flags`, `ioas_id`).
const MAP_FILE_FD_OFFSET: u64 = 12;

/// A client's memory in which the 4 bytes at `at` (the fd field of its
/// `IOAS_MAP_FILE` struct) read as `fd`, the owner's copy of the client's
/// fd, and are never written: the reply leaves the client's own number.
#[derive(Debug)]
struct FdPatched {
    inner: Arc<dyn UserMemory>,
    at: u64,
    fd: c_int,
}

impl FdPatched {
    /// The bytes of `[addr, addr + len)` that overlap the field: (offset in
    /// the buffer, offset in the field, count).
    fn overlap(&self, addr: u64, len: usize) -> Option<(usize, usize, usize)> {
        let end = addr.checked_add(len as u64)?;
        let (lo, hi) = (addr.max(self.at), end.min(self.at.checked_add(4)?));
        (lo < hi).then(|| {
            (
                (lo - addr) as usize,
                (lo - self.at) as usize,
                (hi - lo) as usize,
            )
        })
    }
}

impl UserMemory for FdPatched {
    fn read(&self, addr: u64, buf: &mut [u8]) -> uiommufd::Result<()> {
        self.inner.read(addr, buf)?;
        if let Some((b, f, n)) = self.overlap(addr, buf.len()) {
            buf[b..b + n].copy_from_slice(&self.fd.to_ne_bytes()[f..f + n]);
        }
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> uiommufd::Result<()> {
        match self.overlap(addr, buf.len()) {
            None => self.inner.write(addr, buf),
            Some((b, _, n)) => {
                // the client's own bytes stay
                self.inner.write(addr, &buf[..b])?;
                let rest = b + n;
                self.inner.write(addr + rest as u64, &buf[rest..])
            }
        }
    }

    fn populate(&self, addr: u64, len: u64, write: bool) -> uiommufd::Result<()> {
        self.inner.populate(addr, len, write)
    }

    fn mappable(&self) -> bool {
        self.inner.mappable()
    }
}

/// The owner's end of every connection it serves, so that a forked child
/// closes its inherited copies (the owner must see end of file when the
/// client exits).
static SERVED: Mutex<Vec<(c_int, Held)>> = Mutex::new(Vec::new());

/// The contexts one connection holds, by key: its server thread's, and
/// [`sweep`]'s when the client is gone.
type Held = Arc<Mutex<HashMap<u64, Arc<Context>>>>;

fn lock_held(h: &Held) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Context>>> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drop now the references of every connection whose clients have all
/// exited, rather than when its thread gets to the end of file: a process
/// that closes its fd after `waitpid` of the child it shared the context
/// with finds the context gone, as the kernel's exit releases the child's
/// file at once (the selftest's teardown checks that nothing stays pinned).
/// Called when this process closes a `/dev/iommu` fd it owns; inside a
/// critical section.
pub(crate) fn sweep() {
    let mut gone = Vec::new();
    {
        let served = SERVED.lock().unwrap_or_else(|e| e.into_inner());
        for (fd, held) in served.iter() {
            let mut p = libc::pollfd {
                fd: *fd,
                events: libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one pollfd we own; no wait. Under the SERVED lock the
            // fd is still the connection (its thread closes it under it).
            let r = unsafe { libc::syscall(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, 0) };
            if r == 1 && p.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0 {
                gone.push(std::mem::take(&mut *lock_held(held)));
            }
        }
    }
    drop(gone);
}

/// Why a command cannot run for a client (see the module docs): it names or
/// creates an fd of the caller.
fn refused(ctx: &Context, mem: &ProcessMemory, cmd: u32, arg: u64) -> Option<&'static str> {
    use uiommufd::uapi::*;
    let _ = ctx;
    match cmd {
        IOMMU_FAULT_QUEUE_ALLOC | IOMMU_VEVENTQ_ALLOC => Some("it creates an fd"),
        IOMMU_TEST_CMD => {
            let mut op = [0u8; 4];
            // an unreadable struct: the dispatcher answers EFAULT
            mem.read(arg + 4, &mut op).ok()?;
            match u32::from_ne_bytes(op) {
                IOMMU_TEST_OP_CREATE_ACCESS
                | IOMMU_TEST_OP_DESTROY_ACCESS_PAGES
                | IOMMU_TEST_OP_ACCESS_PAGES
                | IOMMU_TEST_OP_ACCESS_RW
                | IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => Some("the access commands name access fds"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Serve one connection until the client is gone. `held`: the contexts it
/// holds, by key.
fn serve(fd: c_int, held: Held) {
    let mut mem: Option<Arc<dyn UserMemory>> = None;
    let mut pm: Option<Arc<ProcessMemory>> = None;
    let mut charges: Option<Arc<uiommufd::accounting::ProcCharges>> = None;
    loop {
        let Ok(Some((m, passed))) = recv(fd) else {
            break;
        };
        let mut extra = (0u64, 0u64);
        let reply = match m.op {
            OP_HELLO => {
                if let Some(pidfd) = passed {
                    let p = Arc::new(ProcessMemory::new(m.a as i32, pidfd));
                    charges = {
                        let _c = crate::sync::enter();
                        uiommufd::accounting::process_charges(m.a as i32)
                    };
                    mem = Some(p.clone());
                    pm = Some(p);
                }
                None
            }
            OP_IOCTL => {
                let ctx = lock_held(&held).get(&m.a).cloned();
                let r = match (ctx.as_ref(), &mem, &pm) {
                    (Some(ctx), Some(mem), Some(pm)) => {
                        let cmd = m.b as u32;
                        let _c = crate::sync::enter();
                        if let Some(why) = refused(ctx, pm, cmd, m.c) {
                            tracing::debug!(
                                cmd = format_args!("{cmd:#x}"),
                                pid = pm.pid(),
                                "refused for a process that does not hold the engine: {why}"
                            );
                            -i64::from(libc::EOPNOTSUPP)
                        } else {
                            let patched: Option<Arc<dyn UserMemory>> =
                                (cmd == uiommufd::uapi::IOMMU_IOAS_MAP_FILE).then(|| {
                                    use std::os::fd::AsRawFd;
                                    let ours = passed.as_ref().map_or(-1, |f| f.as_raw_fd());
                                    Arc::new(FdPatched {
                                        inner: mem.clone(),
                                        at: m.c.wrapping_add(MAP_FILE_FD_OFFSET),
                                        fd: ours,
                                    }) as Arc<dyn UserMemory>
                                });
                            let mem = patched.as_ref().unwrap_or(mem);
                            let r = uiommufd::accounting::as_caller(charges.clone(), || {
                                uiommufd::dispatch::ioctl_as(ctx, mem, m.b, m.c)
                            });
                            match r {
                                Ok(v) => i64::from(v),
                                Err(e) => -i64::from(e.errno().0),
                            }
                        }
                    }
                    _ => -i64::from(libc::EBADF),
                };
                Some((r, None))
            }
            OP_CLOSE => {
                let gone = lock_held(&held).remove(&m.a);
                let _c = crate::sync::enter();
                drop(gone);
                None
            }
            OP_CLONE => match socketpair() {
                Ok((server, client)) => {
                    let _c = crate::sync::enter();
                    let copy = lock_held(&held).clone();
                    start(server, copy);
                    Some((0, Some(client)))
                }
                Err(e) => Some((-i64::from(e.raw_os_error().unwrap_or(libc::EIO)), None)),
            },
            OP_HOLD => {
                let _c = crate::sync::enter();
                let ctx = lock_held(&held).get(&m.a).cloned();
                match (ctx, listener()) {
                    (Some(ctx), Ok(name)) => {
                        inflight().push((m.a, ctx.clone()));
                        extra = name;
                        Some((0, None))
                    }
                    (None, _) => Some((-i64::from(libc::EBADF), None)),
                    (_, Err(e)) => Some((-i64::from(e), None)),
                }
            }
            OP_CLAIM => {
                let _c = crate::sync::enter();
                match claim(m.a) {
                    Some(ctx) => {
                        let old = lock_held(&held).insert(m.a, ctx);
                        drop(old);
                        Some((0, None))
                    }
                    None => Some((-i64::from(libc::EBADF), None)),
                }
            }
            OP_ENGINE => {
                let r = match &mem {
                    Some(mem) => {
                        let _c = crate::sync::enter();
                        engine_transfer(&m, mem, pm.as_ref().map_or(0, |p| p.pid()))
                    }
                    None => -i64::from(libc::EBADF),
                };
                Some((r, None))
            }
            OP_STATUS => {
                let _c = crate::sync::enter();
                extra = uiommufd::accounting::counts(m.a as i32);
                Some((0, None))
            }
            _ => Some((-i64::from(libc::EINVAL), None)),
        };
        if let Some((r, pass)) = reply {
            let ok = send(
                fd,
                &Msg {
                    op: m.op,
                    a: r as u64,
                    b: extra.0,
                    c: extra.1,
                    ..Msg::default()
                },
                pass,
            )
            .is_ok();
            if let Some(p) = pass {
                crate::raw_close(p);
            }
            if !ok {
                break;
            }
        }
    }
    {
        let _c = crate::sync::enter();
        let mut s = SERVED.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|(f, _)| *f != fd);
        crate::raw_close(fd);
        drop(s);
        let gone = std::mem::take(&mut *lock_held(&held));
        drop(gone);
    }
}

/// Serve `fd` (the owner's end of a connection) on a new thread, which
/// takes every asynchronous signal out of its mask: the program's signals
/// go to its own threads.
fn start(fd: c_int, held: HashMap<u64, Arc<Context>>) {
    let held: Held = Arc::new(Mutex::new(held));
    SERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((fd, held.clone()));
    // SAFETY: sigfillset/pthread_sigmask on our own sigset_t values.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let r = std::thread::Builder::new()
        .name("uiommufd-owner".into())
        .spawn(move || serve(fd, held));
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if let Err(e) = r {
        tracing::warn!("cannot start the owner thread of a shared context: {e}");
        SERVED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(f, _)| *f != fd);
        crate::raw_close(fd);
    }
}

/// The key of a context this process owns.
fn key_of(ctx: &Arc<Context>) -> u64 {
    Arc::as_ptr(ctx) as u64
}

// ---------------------------------------------------------------------------
// fork

/// What the prepare handler set up for one fork.
struct Pending {
    /// The connection for the contexts we own: (our end, the child's end),
    /// and the contexts it holds.
    own: Option<(c_int, c_int, HashMap<u64, Arc<Context>>)>,
    /// For each connection we are a client on: the child's new connection.
    cloned: Vec<(Arc<Conn>, c_int)>,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);

/// The `fork` prepare handler's part (inside the fork gate): connections
/// for the child, when this process has any `/dev/iommu` fd.
pub(crate) fn prepare() {
    let local_engine = uiommufd::files::any_engine_fd();
    if !table::any_registered() && !local_engine {
        return;
    }
    let entries = table::all();
    let mut own: HashMap<u64, Arc<Context>> = HashMap::new();
    let mut conns: Vec<Arc<Conn>> = Vec::new();
    for (_, e) in &entries {
        match &e.obj {
            FdObject::Iommu(ctx) => {
                own.insert(key_of(ctx), ctx.clone());
            }
            FdObject::Remote(rc) => {
                if !conns.iter().any(|c| Arc::ptr_eq(c, &rc.conn)) {
                    conns.push(rc.conn.clone());
                }
            }
        }
    }
    for (_, e) in engine_fds().iter() {
        if !conns.iter().any(|c| Arc::ptr_eq(c, &e.conn)) {
            conns.push(e.conn.clone());
        }
    }
    let own = if own.is_empty() && !local_engine {
        None
    } else {
        match socketpair() {
            Ok((s, c)) => Some((s, c, own)),
            Err(e) => {
                tracing::warn!("fork: cannot share the contexts with the child: {e}");
                None
            }
        }
    };
    let mut cloned = Vec::new();
    for conn in conns {
        let m = Msg {
            op: OP_CLONE,
            ..Msg::default()
        };
        match conn.call(&m, true) {
            Ok((0, Some(fd))) => {
                use std::os::fd::IntoRawFd;
                cloned.push((conn, fd.into_raw_fd()));
            }
            _ => tracing::warn!("fork: the owner of a shared context did not answer"),
        }
    }
    *PENDING.lock().unwrap_or_else(|e| e.into_inner()) = Some(Pending { own, cloned });
}

/// The `fork` parent handler's part: serve the child, close its ends.
pub(crate) fn parent() {
    let Some(p) = PENDING.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    if let Some((server, client, held)) = p.own {
        crate::raw_close(client);
        start(server, held);
    }
    for (_, fd) in p.cloned {
        crate::raw_close(fd);
    }
}

/// The `fork` child handler's part: every `/dev/iommu` fd becomes a client
/// of its owner; the parent's sockets are closed.
pub(crate) fn child() {
    // the parent's server ends and listening socket: not ours to keep open
    for (fd, held) in std::mem::take(&mut *SERVED.lock().unwrap_or_else(|e| e.into_inner())) {
        crate::raw_close(fd);
        // the parent's references, not ours to drop
        std::mem::forget(held);
    }
    if let Some(l) = LISTENER.lock().unwrap_or_else(|e| e.into_inner()).take() {
        crate::raw_close(l.fd);
    }
    // the parent's references for fds in flight, and its connections as a
    // receiver (their sockets are closed below)
    std::mem::forget(std::mem::take(&mut *inflight()));
    CONNS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let Some(p) = PENDING.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    // the pins of the copied engine state are the parent's
    uiommufd::accounting::forget_after_fork();
    let own_conn = p.own.map(|(server, client, held)| {
        crate::raw_close(server);
        // the parent's references, not ours to drop
        std::mem::forget(held);
        Arc::new(Conn {
            fd: client,
            state: Mutex::new(false),
        })
    });
    let cloned: Vec<(Arc<Conn>, Arc<Conn>)> = p
        .cloned
        .into_iter()
        .map(|(old, fd)| {
            (
                old,
                Arc::new(Conn {
                    fd,
                    state: Mutex::new(false),
                }),
            )
        })
        .collect();
    // the engine fds: transfers go to the process whose engine they belong to
    {
        let mut map = engine_fds();
        let parent: HashMap<c_int, RemoteEngineFd> =
            std::mem::take(&mut *map).into_iter().collect();
        for (fd, kind) in uiommufd::files::engine_fds() {
            // a fail-nth file is per thread, of this process
            if kind == "fail-nth" {
                continue;
            }
            let e = match parent.get(&fd) {
                Some(e) => cloned
                    .iter()
                    .find(|(o, _)| Arc::ptr_eq(o, &e.conn))
                    .map(|(_, c)| RemoteEngineFd {
                        conn: c.clone(),
                        owner_fd: e.owner_fd,
                    }),
                None => own_conn.as_ref().map(|c| RemoteEngineFd {
                    conn: c.clone(),
                    owner_fd: fd,
                }),
            };
            if let Some(e) = e {
                map.push((fd, e));
            }
        }
        // the parent's entries keep its connections alive (never used here)
        std::mem::forget(parent);
        ANY_REMOTE_ENGINE.store(!map.is_empty(), std::sync::atomic::Ordering::Release);
    }
    // one client context per (connection, key), shared by the fds (dups)
    let mut made: HashMap<(usize, u64), Arc<RemoteCtx>> = HashMap::new();
    let mut old_conns: Vec<Arc<Conn>> = Vec::new();
    for (fd, e) in table::all() {
        let rc = match &e.obj {
            FdObject::Iommu(ctx) => {
                let Some(conn) = &own_conn else {
                    // no connection (logged by prepare): the fd stays a
                    // bare memfd here, the parent's objects untouched
                    std::mem::forget(table::unregister(fd));
                    continue;
                };
                let key = key_of(ctx);
                made.entry((Arc::as_ptr(conn) as usize, key))
                    .or_insert_with(|| {
                        Arc::new(RemoteCtx {
                            key,
                            conn: conn.clone(),
                        })
                    })
                    .clone()
            }
            FdObject::Remote(rc) => {
                if !old_conns.iter().any(|c| Arc::ptr_eq(c, &rc.conn)) {
                    old_conns.push(rc.conn.clone());
                }
                let Some((_, conn)) = cloned.iter().find(|(o, _)| Arc::ptr_eq(o, &rc.conn)) else {
                    std::mem::forget(table::unregister(fd));
                    continue;
                };
                made.entry((Arc::as_ptr(conn) as usize, rc.key))
                    .or_insert_with(|| {
                        Arc::new(RemoteCtx {
                            key: rc.key,
                            conn: conn.clone(),
                        })
                    })
                    .clone()
            }
        };
        let old = table::register(fd, Entry::new(FdObject::Remote(rc), e.dev, e.ino));
        // the parent's objects: never torn down here
        std::mem::forget(old);
    }
    // the parent's connections: closed here (those only its engine fds used
    // were among the cloned ones); the parent's `RemoteCtx`s
    // (forgotten above, so no CLOSE is sent for the parent's references)
    // keep them alive, never used again
    for c in old_conns {
        crate::raw_close(c.fd);
    }
}

// ---------------------------------------------------------------------------
// SCM_RIGHTS

/// This process's listening socket, for the receivers of fds it sent: an
/// abstract Unix socket named `uiommufd/PID/NONCE`.
struct Listener {
    fd: c_int,
    nonce: u64,
}

static LISTENER: Mutex<Option<Listener>> = Mutex::new(None);

/// References held for fds in flight (sent, not yet received): (key,
/// context), one per fd sent. A receiver claims one (`OP_CLAIM`); an fd
/// that nobody with the preload receives keeps its context until the owner
/// exits.
static INFLIGHT: Mutex<Vec<(u64, Arc<Context>)>> = Mutex::new(Vec::new());

fn inflight() -> std::sync::MutexGuard<'static, Vec<(u64, Arc<Context>)>> {
    INFLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Take one in-flight reference of context `key`.
fn claim(key: u64) -> Option<Arc<Context>> {
    let mut v = inflight();
    let i = v.iter().position(|(k, _)| *k == key)?;
    Some(v.swap_remove(i).1)
}

/// The abstract address of owner `pid`'s listening socket.
fn address(pid: i32, nonce: u64) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let name = format!("uiommufd/{pid}/{nonce:016x}");
    // sun_path[0] stays 0: the abstract namespace
    for (d, s) in a.sun_path[1..].iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    (a, len as libc::socklen_t)
}

/// A new socket of ours, out of the program's way. Inside a critical
/// section: a birth while it is at the lowest free number.
fn new_socket() -> Result<c_int, c_int> {
    let _birth = crate::sync::Birth::new();
    let _ops = crate::sync::fd_ops();
    // SAFETY: socket(2) by raw system call (`socket` is hooked).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
        )
    } as c_int;
    if fd < 0 {
        return Err(crate::path::errno());
    }
    Ok(hide(fd))
}

/// This process's listening socket, started on first use: `(pid, nonce)`.
/// Inside a critical section.
fn listener() -> Result<(u64, u64), c_int> {
    let mut l = LISTENER.lock().unwrap_or_else(|e| e.into_inner());
    let pid = crate::sync::pid();
    if let Some(l) = &*l {
        return Ok((pid as u64, l.nonce));
    }
    let mut nonce = 0u64;
    // SAFETY: getrandom fills the 8 bytes of `nonce`.
    unsafe { libc::getrandom((&mut nonce as *mut u64).cast(), 8, 0) };
    let fd = new_socket()?;
    let (addr, len) = address(pid, nonce);
    // SAFETY: bind/listen on our socket with a valid address.
    let ok = unsafe {
        libc::syscall(libc::SYS_bind, fd, &addr as *const libc::sockaddr_un, len) == 0
            && libc::syscall(libc::SYS_listen, fd, 64) == 0
    };
    if !ok {
        let e = crate::path::errno();
        crate::raw_close(fd);
        return Err(e);
    }
    // SAFETY: sigfillset/pthread_sigmask on our own sigset_t values.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let r = std::thread::Builder::new()
        .name("uiommufd-listen".into())
        .spawn(move || accept_loop(fd));
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if r.is_err() {
        crate::raw_close(fd);
        return Err(libc::EAGAIN);
    }
    *l = Some(Listener { fd, nonce });
    Ok((pid as u64, nonce))
}

/// Accept the receivers of our fds, each served like a fork child.
fn accept_loop(lfd: c_int) {
    loop {
        let mut p = libc::pollfd {
            fd: lfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let r = unsafe { libc::syscall(libc::SYS_poll, &mut p, 1, -1) };
        if r < 0 && crate::path::errno() == libc::EINTR {
            continue;
        }
        if r < 0 || p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return;
        }
        let _c = crate::sync::enter();
        let fd = {
            let _birth = crate::sync::Birth::new();
            let _ops = crate::sync::fd_ops();
            // SAFETY: accept4 on our listening socket, no address wanted.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_accept4,
                    lfd,
                    std::ptr::null_mut::<libc::sockaddr>(),
                    std::ptr::null_mut::<libc::socklen_t>(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            } as c_int;
            if fd < 0 {
                continue;
            }
            hide(fd)
        };
        // The socket's name is no secret (abstract names are listed in
        // /proc/net/unix): only a process of our own user (or root), which
        // could read our memory anyway, may connect and claim a context.
        if !same_user(fd) {
            tracing::debug!("refused a connection from another user's process");
            crate::raw_close(fd);
            continue;
        }
        // blocking again: the server thread waits in poll anyway
        // SAFETY: fcntl on our own fd.
        unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFL, 0) };
        start(fd, HashMap::new());
    }
}

/// Whether the peer of the connected socket `fd` runs as our effective
/// user, or as root (`SO_PEERCRED`): the check that keeps another user's
/// process, which found the listening socket's name, out of our contexts.
fn same_user(fd: c_int) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into our ucred of the stated size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred,
            &mut len as *mut libc::socklen_t,
        )
    };
    // SAFETY: plain syscall wrapper.
    let me = unsafe { libc::geteuid() };
    r == 0 && (cred.uid == me || cred.uid == 0)
}

/// The first bytes of an emulated fd's memfd once it was sent: how a
/// receiver reaches the context.
const HEADER: &str = "uiommufd-owner";
const HEADER_LEN: usize = 96;

/// Write the header into the memfd behind `fd` (the file is shared by
/// every holder of the fd).
fn write_header(fd: c_int, pid: u64, nonce: u64, key: u64) {
    let text = format!("{HEADER} {pid} {nonce:016x} {key:016x}\n");
    let mut buf = [0u8; HEADER_LEN];
    buf[..text.len()].copy_from_slice(text.as_bytes());
    // SAFETY: pwrite of our buffer to the memfd; raw: `pwrite` is hooked.
    unsafe { libc::syscall(libc::SYS_pwrite64, fd, buf.as_ptr(), buf.len(), 0) };
}

/// The header of `fd`, when it is one of our memfds that was sent:
/// `(owner pid, nonce, key)`.
fn read_header(fd: c_int) -> Option<(i32, u64, u64)> {
    let link = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    let mut target = [0u8; 128];
    // SAFETY: readlink into our buffer; raw: `readlink` is hooked.
    let n = unsafe {
        libc::syscall(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            link.as_ptr(),
            target.as_mut_ptr(),
            target.len(),
        )
    };
    if n <= 0 || !target[..n as usize].starts_with(b"/memfd:uiommufd:") {
        return None;
    }
    let mut buf = [0u8; HEADER_LEN];
    // SAFETY: pread into our buffer; raw: `pread` is hooked.
    let n = unsafe { libc::syscall(libc::SYS_pread64, fd, buf.as_mut_ptr(), buf.len(), 0) };
    if n <= 0 {
        return None;
    }
    let text = std::str::from_utf8(&buf[..n as usize]).ok()?;
    let mut f = text.trim_end_matches('\0').split_ascii_whitespace();
    if f.next()? != HEADER {
        return None;
    }
    let pid = f.next()?.parse().ok()?;
    let nonce = u64::from_str_radix(f.next()?, 16).ok()?;
    let key = u64::from_str_radix(f.next()?, 16).ok()?;
    Some((pid, nonce, key))
}

/// The fds of the `SCM_RIGHTS` messages in `msg` (read fault-safely: the
/// program's pointers).
fn control_fds(msg: u64) -> Vec<c_int> {
    use uiommufd::user::SelfMemory;
    let mut out = Vec::new();
    let mut hdr = [0u8; std::mem::size_of::<libc::msghdr>()];
    if SelfMemory.read(msg, &mut hdr).is_err() {
        return out;
    }
    // SAFETY: `hdr` holds the bytes of a msghdr.
    let h: libc::msghdr = unsafe { std::ptr::read_unaligned(hdr.as_ptr().cast()) };
    if h.msg_control.is_null() || h.msg_controllen == 0 || h.msg_controllen > 1 << 16 {
        return out;
    }
    let mut ctl = vec![0u64; h.msg_controllen.div_ceil(8)];
    // SAFETY: viewing our u64 buffer as bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(ctl.as_mut_ptr().cast::<u8>(), h.msg_controllen) };
    if SelfMemory.read(h.msg_control as u64, bytes).is_err() {
        return out;
    }
    let mut copy = h;
    copy.msg_control = ctl.as_mut_ptr().cast();
    // SAFETY: walking the control messages in our own copy.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&copy);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    out.push(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&copy, c);
        }
    }
    out
}

/// The fds a successful `recvmsg` just received.
///
/// # Safety
/// `msg` is the msghdr the kernel just filled.
pub(crate) unsafe fn passed_fds(msg: *mut libc::msghdr) -> Vec<c_int> {
    control_fds(msg as u64)
}

/// Before the program sends `msg`: every `/dev/iommu` fd in it gets a
/// reference held for its receiver, and its memfd the header that leads
/// there. Inside a critical section.
pub(crate) fn before_send(msg: u64) {
    for fd in control_fds(msg) {
        let Some(e) = table::lookup(fd) else { continue };
        let r = match &e.obj {
            FdObject::Iommu(ctx) => listener().map(|(pid, nonce)| {
                let key = key_of(ctx);
                inflight().push((key, ctx.clone()));
                (pid, nonce, key)
            }),
            FdObject::Remote(rc) => {
                let m = Msg {
                    op: OP_HOLD,
                    a: rc.key,
                    ..Msg::default()
                };
                match rc.conn.exchange(&m, None, true) {
                    Ok((r, _)) if r.a == 0 => Ok((r.b, r.c, rc.key)),
                    Ok((r, _)) => Err((r.a as i64).unsigned_abs() as c_int),
                    Err(e) => Err(e),
                }
            }
        };
        match r {
            Ok((pid, nonce, key)) => write_header(fd, pid, nonce, key),
            Err(e) => tracing::debug!(fd, errno = e, "cannot share a sent /dev/iommu fd"),
        }
    }
}

/// Connections of this process as a receiver, by owner.
static CONNS: Mutex<Vec<(Owner, std::sync::Weak<Conn>)>> = Mutex::new(Vec::new());

/// An owner's listening socket: its pid and nonce.
type Owner = (i32, u64);

/// The connection to owner `(pid, nonce)`, made on first use.
fn connect(pid: i32, nonce: u64) -> Result<Arc<Conn>, c_int> {
    let mut conns = CONNS.lock().unwrap_or_else(|e| e.into_inner());
    conns.retain(|(_, w)| w.strong_count() > 0);
    if let Some(c) = conns
        .iter()
        .find(|(k, _)| *k == (pid, nonce))
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(c);
    }
    let fd = new_socket()?;
    let (addr, len) = address(pid, nonce);
    // SAFETY: connect our socket to a valid address.
    if unsafe {
        libc::syscall(
            libc::SYS_connect,
            fd,
            &addr as *const libc::sockaddr_un,
            len,
        )
    } != 0
    {
        let e = crate::path::errno();
        crate::raw_close(fd);
        return Err(e);
    }
    let c = Arc::new(Conn {
        fd,
        state: Mutex::new(false),
    });
    conns.push(((pid, nonce), Arc::downgrade(&c)));
    Ok(c)
}

/// After `fd` was received with `SCM_RIGHTS`: when it is a `/dev/iommu` fd
/// of another process's context (or one of ours coming back), register it.
/// Inside a critical section.
pub(crate) fn after_receive(fd: c_int) {
    let Some((pid, nonce, key)) = read_header(fd) else {
        return;
    };
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of the received fd into our buffer.
    if unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) } != 0 {
        return;
    }
    let ours = LISTENER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|l| l.nonce == nonce)
        && pid == crate::sync::pid();
    let obj = if ours {
        match claim(key) {
            Some(ctx) => FdObject::Iommu(ctx),
            None => return,
        }
    } else {
        let conn = match connect(pid, nonce) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(
                    fd,
                    pid,
                    errno = e,
                    "cannot reach the owner of a received /dev/iommu fd"
                );
                return;
            }
        };
        let m = Msg {
            op: OP_CLAIM,
            a: key,
            ..Msg::default()
        };
        // one client context per (connection, key): another fd of the same
        // context already here shares it (its last close drops the owner's
        // reference, which the claim below does not add twice)
        let same = table::all().into_iter().find_map(|(_, e)| match e.obj {
            FdObject::Remote(rc) if rc.key == key && Arc::ptr_eq(&rc.conn, &conn) => Some(rc),
            _ => None,
        });
        match conn.call(&m, true) {
            Ok((0, _)) => {
                FdObject::Remote(same.unwrap_or_else(|| Arc::new(RemoteCtx { key, conn })))
            }
            _ => {
                tracing::debug!(
                    fd,
                    pid,
                    "the owner holds no reference for a received /dev/iommu fd"
                );
                return;
            }
        }
    };
    let ops = crate::sync::fd_ops();
    let old = table::register(fd, Entry::new(obj, st.st_dev, st.st_ino));
    drop(ops);
    drop(old);
}

// ---------------------------------------------------------------------------
// /proc/PID/status

/// The pid `/proc/PID/status` names (`self` included), if that is the path.
fn status_pid(path: &[u8]) -> Option<i32> {
    let rest = path.strip_prefix(b"/proc/")?.strip_suffix(b"/status")?;
    if rest == b"self" {
        return Some(crate::sync::pid());
    }
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// `/proc/PID/status` as the kernel would show it with our pins: its
/// `VmPin` and `VmLck` lines grown by what the engine charges to that
/// process, here and in the owners of the contexts this process is a client
/// of (the kernel's `mm->pinned_vm`, and `mm->locked_vm` for
/// `IOMMU_OPTION_RLIMIT_MODE` = 1). A memfd holding the text, or `None`
/// when `path` is not such a file or no context is around. Inside a
/// critical section.
pub(crate) fn status_file(path: &[u8]) -> Option<c_int> {
    if !table::any_registered() {
        return None;
    }
    let pid = status_pid(path)?;
    let real = read_proc(path)?;
    let (mut pinned, mut locked) = uiommufd::accounting::counts(pid);
    let mut conns: Vec<Arc<Conn>> = Vec::new();
    for (_, e) in table::all() {
        if let FdObject::Remote(rc) = &e.obj {
            if !conns.iter().any(|c| Arc::ptr_eq(c, &rc.conn)) {
                conns.push(rc.conn.clone());
            }
        }
    }
    for c in conns {
        let m = Msg {
            op: OP_STATUS,
            a: pid as u64,
            ..Msg::default()
        };
        if let Ok((r, _)) = c.exchange(&m, None, true) {
            pinned += r.b;
            locked += r.c;
        }
    }
    let kb = uiommufd::user::page_size() / 1024;
    let mut text = String::with_capacity(real.len() + 16);
    for line in real.lines() {
        let grown = |tag: &str, extra: u64| -> Option<String> {
            let v: u64 = line
                .strip_prefix(tag)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()?;
            Some(format!("{tag}\t{:8} kB", v + extra * kb))
        };
        match grown("VmPin:", pinned).or_else(|| grown("VmLck:", locked)) {
            Some(l) => text.push_str(&l),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    let _birth = crate::sync::Birth::new();
    let _ops = crate::sync::fd_ops();
    // SAFETY: a NUL-terminated name; the fd is handed to the caller.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            c"uiommufd:status".as_ptr(),
            libc::MFD_CLOEXEC,
        )
    } as c_int;
    if fd < 0 {
        return None;
    }
    let b = text.as_bytes();
    // SAFETY: writing our buffer, then rewinding, on our memfd.
    let ok = unsafe {
        libc::syscall(libc::SYS_write, fd, b.as_ptr(), b.len()) == b.len() as i64
            && libc::syscall(libc::SYS_lseek, fd, 0, libc::SEEK_SET) == 0
    };
    if !ok {
        crate::raw_close(fd);
        return None;
    }
    Some(fd)
}

/// The text of a `/proc` file, by raw system calls.
fn read_proc(path: &[u8]) -> Option<String> {
    let path = std::ffi::CString::new(path).ok()?;
    String::from_utf8(uiommufd::user::read_proc_raw(&path)?).ok()
}

// ---------------------------------------------------------------------------
// Engine fds inherited across fork

/// An engine fd of this process whose file lives in another process's
/// engine (inherited across `fork`): its transfers go there.
#[derive(Debug, Clone)]
struct RemoteEngineFd {
    conn: Arc<Conn>,
    /// The fd's number in the owner (the same file: checked there).
    owner_fd: c_int,
}

static ENGINE_FDS: Mutex<Vec<(c_int, RemoteEngineFd)>> = Mutex::new(Vec::new());

/// Lock-free: whether any engine fd here belongs to another process.
static ANY_REMOTE_ENGINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn engine_fds() -> std::sync::MutexGuard<'static, Vec<(c_int, RemoteEngineFd)>> {
    ENGINE_FDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A transfer on engine fd `fd` when its file lives in another process:
/// `Some` with the result (bytes or errno) when it does. One atomic load
/// when no engine fd here is another's.
pub(crate) fn engine_io(
    fd: c_int,
    op: u32,
    addr: u64,
    len: usize,
    offset: Option<u64>,
) -> Option<Result<usize, c_int>> {
    if !ANY_REMOTE_ENGINE.load(std::sync::atomic::Ordering::Acquire) {
        return None;
    }
    let e = engine_fds()
        .iter()
        .find(|(f, _)| *f == fd)
        .map(|(_, e)| e.clone())?;
    let m = Msg {
        op: OP_ENGINE,
        sub: op,
        a: (e.owner_fd as u32 as u64) | ((fd as u32 as u64) << 32),
        b: addr,
        c: len as u64,
        d: offset.unwrap_or(u64::MAX),
    };
    Some(match e.conn.call(&m, true) {
        Ok((r, _)) if r < 0 => Err((-r) as c_int),
        Ok((r, _)) => Ok(r as usize),
        Err(e) => Err(e),
    })
}

/// `read` of an engine fd owned elsewhere (see [`engine_io`]).
pub(crate) fn engine_read(fd: c_int, addr: u64, len: usize) -> Option<Result<usize, c_int>> {
    engine_io(fd, IO_READ, addr, len, None)
}

/// `write` of an engine fd owned elsewhere.
pub(crate) fn engine_write(fd: c_int, addr: u64, len: usize) -> Option<Result<usize, c_int>> {
    engine_io(fd, IO_WRITE, addr, len, None)
}

/// `pread` of an engine fd owned elsewhere.
pub(crate) fn engine_pread(
    fd: c_int,
    addr: u64,
    len: usize,
    offset: u64,
) -> Option<Result<usize, c_int>> {
    engine_io(fd, IO_PREAD, addr, len, Some(offset))
}

/// `pwrite` of an engine fd owned elsewhere.
pub(crate) fn engine_pwrite(
    fd: c_int,
    addr: u64,
    len: usize,
    offset: u64,
) -> Option<Result<usize, c_int>> {
    engine_io(fd, IO_PWRITE, addr, len, Some(offset))
}

/// `fd` was closed (or `close_range`d): it is no longer another's.
pub(crate) fn forget_engine_fds(first: c_int, last: c_int) {
    if !ANY_REMOTE_ENGINE.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    engine_fds().retain(|(f, _)| *f < first || *f > last);
}

/// `new` became a duplicate of `old`: it is another's when `old` is.
pub(crate) fn dup_engine_fd(old: c_int, new: c_int) {
    if !ANY_REMOTE_ENGINE.load(std::sync::atomic::Ordering::Acquire) || old == new {
        return;
    }
    let mut map = engine_fds();
    map.retain(|(f, _)| *f != new);
    if let Some(e) = map.iter().find(|(f, _)| *f == old).map(|(_, e)| e.clone()) {
        map.push((new, e));
    }
}

/// The owner's side of `OP_ENGINE` for client `pid`: `kcmp` says whether
/// our fd is the client's file, then the engine moves the bytes between the
/// file and the client's memory.
fn engine_transfer(m: &Msg, mem: &Arc<dyn UserMemory>, pid: i32) -> i64 {
    use uiommufd::files::{self, UserBuf};
    let ours = (m.a & 0xffff_ffff) as c_int;
    let theirs = (m.a >> 32) as c_int;
    const KCMP_FILE: c_int = 0;
    // SAFETY: kcmp compares two fds of two processes; no memory involved.
    let same = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            crate::sync::pid(),
            pid,
            KCMP_FILE,
            ours,
            theirs,
        )
    } == 0;
    if !same {
        return -i64::from(libc::EBADF);
    }
    let buf = UserBuf {
        mem: &**mem,
        addr: m.b,
        len: m.c as usize,
    };
    let r = match m.sub {
        IO_READ => files::read_user(ours, buf),
        IO_WRITE => files::write_user(ours, buf),
        IO_PREAD => files::pread_user(ours, buf, m.d),
        IO_PWRITE => files::pwrite_user(ours, buf, m.d),
        _ => return -i64::from(libc::EINVAL),
    };
    match r {
        Some(Ok(n)) => n as i64,
        Some(Err(e)) => -i64::from(e.errno().0),
        None => -i64::from(libc::EBADF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection from another user's process is told apart from our
    /// own (run as root: the child drops to `nobody` before it connects).
    #[test]
    fn another_users_connection_is_refused() {
        // SAFETY: plain syscall wrappers on fds this test owns; the child
        // only makes raw system calls before `_exit`.
        unsafe {
            let lfd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            assert!(lfd >= 0);
            let (addr, len) = address(libc::getpid(), 0x7e57);
            assert_eq!(
                libc::bind(lfd, (&addr as *const libc::sockaddr_un).cast(), len),
                0
            );
            assert_eq!(libc::listen(lfd, 4), 0);
            // our own process: the same user
            let c = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            assert_eq!(
                libc::connect(c, (&addr as *const libc::sockaddr_un).cast(), len),
                0
            );
            let a = libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            assert!(same_user(a));
            libc::close(a);
            libc::close(c);
            if libc::geteuid() != 0 {
                eprintln!("not root: the other-user half is skipped");
                libc::close(lfd);
                return;
            }
            let child = libc::fork();
            if child == 0 {
                let ok = libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) == 0
                    && libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) == 0;
                let c = libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
                let r = libc::syscall(libc::SYS_connect, c, &addr as *const libc::sockaddr_un, len);
                libc::syscall(libc::SYS_exit_group, if ok && r == 0 { 0 } else { 1 });
            }
            let a = libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            assert!(a >= 0);
            assert!(!same_user(a), "a process of user 65534 passed");
            let mut status = 0;
            assert_eq!(libc::waitpid(child, &mut status, 0), child);
            assert_eq!(status, 0, "the child could not drop to nobody or connect");
            libc::close(a);
            libc::close(lfd);
        }
    }
}
