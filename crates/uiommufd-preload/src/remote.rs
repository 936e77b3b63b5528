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
//! the fast path of a single process: nothing below is on that path (the
//! first open writes a header and starts the listening thread, which then
//! sleeps).
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
//!   runs exactly as before, with no extra process, and no socket and no
//!   lock on its ioctl path (one sleeping listening thread, started at the
//!   first open, so that a `vfork` child's `exec` can reach the context: a
//!   `vfork` child cannot start one); the cost of sharing falls on the
//!   processes that share. The price: the owner's exit ends the context
//!   for everyone.
//! * **Holds bound to a pid**, not to a connection: the new image of an
//!   `exec` has no connection yet, and one that never claims (a static
//!   program) must not keep the context for ever.
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
//! # exec and posix_spawn
//!
//! An owned context's memfd carries a header naming the owner's listening
//! socket and the context from its first open ([`opened`]), and the owner
//! listens from then on, so any later holder of the fd can reach it. The
//! `exec` and `posix_spawn` hooks (`exec_hooks`) hold a reference for the
//! new image ([`before_exec`]): in the owner for its `vfork` child or
//! spawned child, through `OP_HOLD` for a client. A hold is bound to the
//! new image's pid (a spawned child's once it exists, `OP_BIND`): only that
//! process claims it, and the owner's accepting thread drops it when that
//! process exits unclaimed ([`expire`]). The new image's preload claims at
//! load ([`adopt_inherited`], as an `SCM_RIGHTS` receiver does). An fd
//! inherited by a path no hook sees (`execl`, glibc's `system`) finds no
//! hold: the claim then takes a new reference while the context lives
//! ([`claim`]).
//!
//! # Engine fds
//!
//! A command that makes an engine fd (`FAULT_QUEUE_ALLOC`,
//! `VEVENTQ_ALLOC`, the selftest's `CREATE_ACCESS`: [`FdField::Out`]) runs
//! in the owner, which keeps the fd (out of its program's way) for as long
//! as the connection holds it and passes it back; the client installs it at
//! its lowest free number ([`install`]), routes its transfers to the owner
//! (`OP_ENGINE`), translates it to the owner's number where a command names
//! it ([`FdField::In`]), and releases the owner's copy at its last close
//! (`OP_ENGINE_CLOSE`, [`RemoteFile`]).
//!
//! # What a client cannot do (yet)
//!
//! * The selftest's `DMABUF_GET` and the VFIO container commands are
//!   `EOPNOTSUPP` from a client; `mmap` of the fd is `ENODEV`. Engine fds
//!   (access, fault, event queue, VFIO files) the owner made before the
//!   fork move their bytes through the owner's engine (`OP_ENGINE`, the
//!   file checked with `kcmp`: the owner may have reused the number; see
//!   [`engine_io`]), but their `ioctl` and `mmap` reach the child's copy of
//!   the engine; engine fds sent with `SCM_RIGHTS` are bare eventfds.
//! * An area a client maps from memory it does not share with the owner at
//!   the same address (private memory) is read from the client while it
//!   runs, and no domain can map it (`EFAULT`): the engine's domains map
//!   host addresses of the owner (see [`uiommufd::process`]).
//! * When the owner exits, its clients' fds stop working (`EIO`). Its
//!   `exec` hands the engine to a keeper process (see `keeper`).
//! * Pins are charged to the process that mapped, or that called
//!   `IOAS_CHANGE_PROCESS` last: each process is a
//!   [`uiommufd::client::Client`] of the owner's engine
//!   ([`uiommufd::client::as_caller`] around its commands), with its own mm
//!   counters, its user's `locked_vm` and its own `RLIMIT_MEMLOCK` and
//!   capabilities; `OP_STATUS` reports a process's counters, which
//!   [`status_file`] adds to `/proc/PID/status`.

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
/// Request: an fd of context `a` is being sent with `SCM_RIGHTS`, or kept
/// across an `exec` or `posix_spawn`: hold a reference for its next
/// holder, process `b` (0: whoever claims it). Reply: 0 (or `-errno`), the
/// owner's pid in `b`, its listening socket's nonce in `c`, the hold's
/// token in `d`.
const OP_HOLD: u32 = 5;
/// Request (a receiver's, or a new image's): take one reference of context
/// `a` held for this process (see [`claim`]). Reply: 0, or `-EBADF` when
/// the context is gone.
const OP_CLAIM: u32 = 6;
/// Request: the pins the owner charges to process `a`. Reply: 0, pinned
/// pages in `b`, locked pages (`RLIMIT_MODE` 1) in `c`.
const OP_STATUS: u32 = 7;
/// Request: a transfer (`sub`: `IO_*`) on engine fd `a & 0xffffffff` of
/// the owner, which is the client's fd `a >> 32` (checked with `kcmp`), to
/// or from the client's `c` bytes at `b`, at offset `d` for the positional
/// ones. Reply: the bytes moved, or `-errno`.
const OP_ENGINE: u32 = 8;
/// Request: hold `a` is for process `b` (a `posix_spawn` child). Reply: 0,
/// or `-ENOENT`.
const OP_BIND: u32 = 9;
/// Request: drop hold `a` (its `exec` or `posix_spawn` failed). Reply: 0.
const OP_RELEASE: u32 = 10;
/// Request: the client let go of engine fd `a` (the owner's number) that
/// the owner made for it. No reply.
const OP_ENGINE_CLOSE: u32 = 11;

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
    // SAFETY: `hdr` points at our iovec and control buffer. The raw
    // system call: `sendmsg` may be hooked by the program's preloads.
    restarting(|| unsafe { libc::syscall(libc::SYS_sendmsg, fd, &hdr, libc::MSG_NOSIGNAL) })?;
    Ok(())
}

/// `call` (a raw system call) again while it fails with `EINTR`: its
/// non-negative result, or its error.
fn restarting(mut call: impl FnMut() -> libc::c_long) -> std::io::Result<libc::c_long> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r);
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
    wait_readable(fd)?;
    let _c = crate::sync::enter();
    recv_here(fd)
}

/// Wait, outside any critical section, until `fd` has a message (or end of
/// file).
fn wait_readable(fd: c_int) -> std::io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own. Raw: `poll` may be the program's.
    restarting(|| unsafe { libc::syscall(libc::SYS_poll, &mut p, 1, -1) })?;
    Ok(())
}

/// The receiving half of [`recv`], inside the caller's critical section.
fn recv_here(fd: c_int) -> std::io::Result<Option<(Msg, Option<OwnedFd>)>> {
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
    let n = restarting(|| {
        // SAFETY: `hdr` points at our message and control buffers.
        unsafe { libc::syscall(libc::SYS_recvmsg, fd, &mut hdr, libc::MSG_CMSG_CLOEXEC) }
    })? as usize;
    let mut passed = None;
    // SAFETY: the control messages are the ones the kernel wrote into `cbuf`.
    unsafe {
        each_rights_fd(&hdr, |f| {
            if passed.is_none() {
                // SAFETY: the kernel just installed `f` for us.
                passed = Some(OwnedFd::from_raw_fd(f));
            } else {
                crate::raw_close(f);
            }
        });
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
    let high = hide_keeping(fd);
    if high != fd {
        crate::raw_close(fd);
    }
    high
}

/// As [`hide`], but `Err(errno)` when `fd` is not open (a program closed
/// the number, which it does not hold): nothing is closed then.
pub(crate) fn hide_checked(fd: c_int) -> Result<c_int, c_int> {
    let high = hide_keeping(fd);
    if high != fd {
        crate::raw_close(fd);
        return Ok(high);
    }
    // SAFETY: F_GETFD on a number; raw: `fcntl` is hooked.
    if unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) } < 0 {
        return Err(crate::path::errno());
    }
    Ok(fd)
}

/// A close-on-exec duplicate of `fd` at a number out of the program's way
/// (see [`hide`]), `fd` left open; `fd` itself when no such number is free.
fn hide_keeping(fd: c_int) -> c_int {
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
        fd
    } else {
        high
    }
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
    use uiommufd::user::SelfMemory;
    let field = fd_field(&SelfMemory, cmd, arg);
    // an access fd the command names: the owner's number of that file
    let owner_fd = match field {
        Some(FdField::In(off)) => {
            let mut b = [0u8; 4];
            SelfMemory
                .read(arg.wrapping_add(off), &mut b)
                .ok()
                .and_then(|_| {
                    let fd = c_int::from_ne_bytes(b);
                    engine_fds()
                        .iter()
                        .find(|(f, e)| *f == fd && Arc::ptr_eq(&e.conn, &rc.conn))
                        .map(|(_, e)| e.owner_fd)
                })
        }
        _ => None,
    };
    let m = Msg {
        op: OP_IOCTL,
        a: rc.key,
        b: u64::from(cmd),
        c: arg,
        d: owner_fd.unwrap_or(-1) as u32 as u64,
        ..Msg::default()
    };
    let pass = (cmd == uiommufd::uapi::IOMMU_IOAS_MAP_FILE)
        .then(|| {
            let mut b = [0u8; 4];
            SelfMemory
                .read(arg.wrapping_add(MAP_FILE_FD_OFFSET), &mut b)
                .ok()?;
            let fd = c_int::from_ne_bytes(b);
            // SAFETY: F_GETFD on a number; raw: `fcntl` is hooked.
            (fd >= 0 && unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) } >= 0)
                .then_some(fd)
        })
        .flatten();
    let (r, passed) = rc.conn.exchange(&m, pass, true)?;
    let v = r.a as i64;
    if v < 0 {
        return Err((-v) as c_int);
    }
    if let Some(FdField::Out(off)) = field {
        let owner_fd = r.b as c_int;
        let installed = match passed {
            Some(f) => install(&rc.conn, f, owner_fd, r.c != 0, arg.wrapping_add(off)),
            None => {
                // the kernel could not give us the passed fd (no free
                // number): the owner's copy goes
                let m = Msg {
                    op: OP_ENGINE_CLOSE,
                    a: owner_fd as u64,
                    ..Msg::default()
                };
                let _ = rc.conn.call(&m, false);
                Err(libc::EMFILE)
            }
        };
        if let Err(e) = installed {
            // as the kernel, which takes the fd number before it finishes
            // the object: a command that cannot give its fd leaves nothing
            undo_made(rc, cmd, arg);
            return Err(e);
        }
    }
    Ok(v as c_int)
}

/// The object a command made whose fd could not be installed here goes
/// again: `IOMMU_DESTROY` of the ID in its out field (an access has none:
/// its fd was its last reference, released by [`install`]).
fn undo_made(rc: &RemoteCtx, cmd: u32, arg: u64) {
    use uiommufd::uapi::*;
    use uiommufd::user::SelfMemory;
    // struct iommu_fault_alloc's out_fault_id, iommu_veventq_alloc's
    // out_veventq_id
    let at = match cmd {
        IOMMU_FAULT_QUEUE_ALLOC => 8,
        IOMMU_VEVENTQ_ALLOC => 20,
        _ => return,
    };
    let mut b = [0u8; 4];
    if SelfMemory.read(arg.wrapping_add(at), &mut b).is_err() {
        return;
    }
    let d = IommuDestroy {
        size: std::mem::size_of::<IommuDestroy>() as u32,
        id: u32::from_ne_bytes(b),
    };
    if let Err(e) = ioctl(rc, IOMMU_DESTROY, &d as *const IommuDestroy as u64) {
        tracing::debug!(
            errno = e,
            "cannot destroy an object whose fd was not installed"
        );
    }
}

/// Make `hidden`, an engine fd the owner made for our command and passed
/// back (its number there: `owner_fd`), the program's fd: at the lowest
/// free number (close-on-exec as the owner's), routed to the owner
/// ([`engine_io`], [`RemoteFile`]), its number written to the command's
/// out field at `at`. Inside the command's fd birth.
fn install(
    conn: &Arc<Conn>,
    hidden: OwnedFd,
    owner_fd: c_int,
    cloexec: bool,
    at: u64,
) -> Result<(), c_int> {
    use std::os::fd::AsRawFd;
    use uiommufd::user::SelfMemory;
    let _ops = crate::sync::fd_ops();
    let how = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: fcntl duplicating our fd; raw: `fcntl` is hooked.
    let fd = unsafe { libc::syscall(libc::SYS_fcntl, hidden.as_raw_fd(), how, 0) } as c_int;
    if fd < 0 {
        // nothing here will ever close the owner's copy: let it go now
        let e = crate::path::errno();
        let m = Msg {
            op: OP_ENGINE_CLOSE,
            a: owner_fd as u64,
            ..Msg::default()
        };
        let _ = conn.call(&m, false);
        return Err(e);
    }
    drop(hidden);
    let file = Arc::new(RemoteFile {
        conn: conn.clone(),
        owner_fd,
    });
    if let Err(e) = uiommufd::plumbing::files::adopt(fd, file) {
        crate::raw_close(fd);
        return Err(e.errno().0);
    }
    {
        let mut map = engine_fds();
        map.retain(|(f, _)| *f != fd);
        map.push((
            fd,
            RemoteEngineFd {
                conn: conn.clone(),
                owner_fd,
            },
        ));
        ANY_REMOTE_ENGINE.store(true, std::sync::atomic::Ordering::Release);
    }
    // (an out field that cannot be written: the kernel's copy_to_user
    // failure after the fd was installed leaves it installed too)
    let _ = SelfMemory.write(at, &fd.to_ne_bytes());
    Ok(())
}

/// The engine file of an fd whose file lives in the owner's engine (made
/// there for this client's command): its transfers go there
/// ([`engine_io`]); releasing the last fd of it here lets the owner close
/// its copy.
#[derive(Debug)]
struct RemoteFile {
    conn: Arc<Conn>,
    owner_fd: c_int,
}

impl uiommufd::plumbing::files::EngineFile for RemoteFile {
    fn kind(&self) -> &'static str {
        "remote"
    }

    fn release(&self) {
        let m = Msg {
            op: OP_ENGINE_CLOSE,
            a: self.owner_fd as u64,
            ..Msg::default()
        };
        let _ = self.conn.call(&m, false);
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
static SERVED: Mutex<Vec<Arc<Served>>> = Mutex::new(Vec::new());

/// A connection the owner serves.
struct Served {
    /// The owner's end of the socket (close-on-exec).
    fd: c_int,
    /// What the connection holds for its client.
    held: Held,
    /// Who the client is (from its `HELLO`).
    client: Mutex<Client>,
}

/// A client as its connection knows it.
#[derive(Default)]
struct Client {
    mem: Option<Arc<dyn UserMemory>>,
    pm: Option<Arc<ProcessMemory>>,
    /// The engine's client for the process: what its commands charge and
    /// whose limit and capabilities they are checked against.
    engine: Option<Arc<uiommufd::client::Client>>,
}

/// The contexts one connection holds, by key: its server thread's, and
/// [`sweep`]'s when the client is gone.
type Held = Arc<Mutex<Refs>>;

/// What one connection holds for its client: its contexts by key, and the
/// engine fds made for it ([`MadeFd`]).
#[derive(Debug, Default, Clone)]
struct Refs {
    ctxs: HashMap<u64, Arc<Context>>,
    made: Vec<Arc<MadeFd>>,
}

fn lock_held(h: &Held) -> std::sync::MutexGuard<'_, Refs> {
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
        for sv in served.iter() {
            let mut p = libc::pollfd {
                fd: sv.fd,
                events: libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one pollfd we own; no wait. Under the SERVED lock the
            // fd is still the connection (its thread closes it under it).
            let r = unsafe { libc::syscall(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, 0) };
            if r == 1 && p.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0 {
                gone.push(std::mem::take(&mut *lock_held(&sv.held)));
            }
        }
    }
    drop(gone);
}

/// Where a command names or returns an engine fd of the caller, at an
/// offset of its struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FdField {
    /// An fd the command reads (an access fd); the owner reads its own
    /// number of the same file there.
    In(u64),
    /// An fd the command makes (fault queue, vEVENTQ, access): the owner
    /// passes it back, and the client writes its own number there.
    Out(u64),
}

/// The selftest op of an `IOMMU_TEST_CMD` at `arg` in `mem`.
fn test_op(mem: &dyn UserMemory, arg: u64) -> Option<u32> {
    let mut op = [0u8; 4];
    mem.read(arg.wrapping_add(4), &mut op).ok()?;
    Some(u32::from_ne_bytes(op))
}

/// The engine fd field of command `cmd` with its struct at `arg` in `mem`.
fn fd_field(mem: &dyn UserMemory, cmd: u32, arg: u64) -> Option<FdField> {
    use uiommufd::uapi::*;
    match cmd {
        // struct iommu_fault_alloc: size, flags, out_fault_id, out_fault_fd
        IOMMU_FAULT_QUEUE_ALLOC => Some(FdField::Out(12)),
        // struct iommu_veventq_alloc: ..., out_veventq_id (20), out_veventq_fd
        IOMMU_VEVENTQ_ALLOC => Some(FdField::Out(24)),
        // struct iommu_test_cmd: size, op, id, __reserved, then the union
        IOMMU_TEST_CMD => match test_op(mem, arg)? {
            IOMMU_TEST_OP_CREATE_ACCESS => Some(FdField::Out(16)),
            IOMMU_TEST_OP_DESTROY_ACCESS_PAGES
            | IOMMU_TEST_OP_ACCESS_PAGES
            | IOMMU_TEST_OP_ACCESS_RW
            | IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => Some(FdField::In(8)),
            _ => None,
        },
        _ => None,
    }
}

/// Why a command cannot run for a client (see the module docs).
fn refused(mem: &dyn UserMemory, cmd: u32, arg: u64) -> Option<&'static str> {
    (cmd == uiommufd::uapi::IOMMU_TEST_CMD
        && test_op(mem, arg) == Some(uiommufd::mock::dmabuf::IOMMU_TEST_OP_DMABUF_GET))
    .then_some("it returns a dma-buf fd, which is not passed across processes")
}

/// An engine fd the owner made for a client's command (an `FdField::Out`):
/// kept open here while the client holds its copy, since the engine knows
/// the file by this number; closed (as the kernel's last `fput`) when the
/// last connection holding it lets it go. Dropped inside a critical section.
#[derive(Debug)]
struct MadeFd(c_int);

impl Drop for MadeFd {
    fn drop(&mut self) {
        let _ops = crate::sync::fd_ops();
        uiommufd::plumbing::files::on_close(self.0);
        forget_engine_fds(self.0, self.0);
        crate::raw_close(self.0);
    }
}

/// The engine fd a command just made, read back from the out field at
/// `at` of the client's struct, moved out of the program's way ([`hide`]:
/// this process's program never sees it). Inside the command's fd birth.
/// Also whether the engine made it close-on-exec.
fn made_fd(mem: &dyn UserMemory, at: u64) -> Option<(Arc<MadeFd>, bool)> {
    let mut b = [0u8; 4];
    mem.read(at, &mut b).ok()?;
    let fd = c_int::from_ne_bytes(b);
    uiommufd::plumbing::files::get(fd)?;
    let cloexec = cloexec(fd);
    let high = hide_keeping(fd);
    if high != fd {
        uiommufd::plumbing::files::on_dup(fd, high);
        uiommufd::plumbing::files::on_close(fd);
        crate::raw_close(fd);
    }
    Some((Arc::new(MadeFd(high)), cloexec))
}

/// Whether `fd` is close-on-exec.
fn cloexec(fd: c_int) -> bool {
    // SAFETY: F_GETFD on a number; raw: `fcntl` is hooked.
    let flags = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
    flags >= 0 && flags & i64::from(libc::FD_CLOEXEC) != 0
}

/// Serve one connection until the client is gone. `held`: the contexts it
/// holds, by key.
fn serve(sv: Arc<Served>) {
    loop {
        if wait_readable(sv.fd).is_err() {
            break;
        }
        // a request is received and answered in one critical section, so
        // that a process taking over the engine at an `exec` (see
        // `keeper`) finds each one either answered or still in the socket
        let c = crate::sync::enter();
        if crate::keeper::paused() {
            drop(c);
            crate::keeper::wait_resumed();
            continue;
        }
        let more = handle(&sv);
        drop(c);
        if !more {
            break;
        }
    }
    end(&sv);
}

/// Receive and answer one request of `sv`, inside the caller's critical
/// section. `false` at end of file (the client is gone) or a broken socket.
fn handle(sv: &Served) -> bool {
    let (fd, held) = (sv.fd, &sv.held);
    let mut client = sv.client.lock().unwrap_or_else(|e| e.into_inner());
    let Client { mem, pm, engine } = &mut *client;
    let Ok(Some((m, passed))) = recv_here(fd) else {
        return false;
    };
    let mut extra = (0u64, 0u64, 0u64);
    // an fd passed with the reply stays open here (an engine fd made for
    // the client) rather than being closed once sent
    let mut lend = false;
    let reply = match m.op {
        OP_HELLO => {
            if let Some(pidfd) = passed {
                let p = Arc::new(ProcessMemory::new(m.a as i32, pidfd));
                *engine = {
                    let _c = crate::sync::enter();
                    Some(uiommufd::client::Client::of_process(p.clone()))
                };
                *mem = Some(p.clone());
                *pm = Some(p);
            }
            None
        }
        OP_IOCTL => {
            let ctx = lock_held(held).ctxs.get(&m.a).cloned();
            let r: (i64, Option<c_int>) = match (ctx.as_ref(), &mem, &pm) {
                (Some(ctx), Some(mem), Some(pm)) => {
                    let cmd = m.b as u32;
                    let _c = crate::sync::enter();
                    if let Some(why) = refused(&**pm, cmd, m.c) {
                        tracing::debug!(
                            cmd = format_args!("{cmd:#x}"),
                            pid = pm.pid(),
                            "refused for a process that does not hold the engine: {why}"
                        );
                        (-i64::from(libc::EOPNOTSUPP), None)
                    } else {
                        use std::os::fd::AsRawFd;
                        let field = fd_field(&**pm, cmd, m.c);
                        // the owner's number of an fd the command names
                        let patch = if cmd == uiommufd::uapi::IOMMU_IOAS_MAP_FILE {
                            let ours = passed.as_ref().map_or(-1, |f| f.as_raw_fd());
                            Some((MAP_FILE_FD_OFFSET, ours))
                        } else if let Some(FdField::In(off)) = field {
                            Some((off, m.d as u32 as c_int))
                        } else {
                            None
                        };
                        let patched: Option<Arc<dyn UserMemory>> = patch.map(|(off, fd)| {
                            Arc::new(FdPatched {
                                inner: mem.clone(),
                                at: m.c.wrapping_add(off),
                                fd,
                            }) as Arc<dyn UserMemory>
                        });
                        let mem = patched.as_ref().unwrap_or(mem);
                        // a command that makes an fd: an fd birth here
                        let births = matches!(field, Some(FdField::Out(_)));
                        let _birth = births.then(crate::sync::Birth::new);
                        let _ops = births.then(crate::sync::fd_ops);
                        let r = uiommufd::client::as_caller(engine.clone(), || {
                            uiommufd::dispatch::ioctl_as(ctx, mem, m.b, m.c)
                        });
                        match (r, field) {
                            (Ok(v), Some(FdField::Out(off))) => {
                                match made_fd(&**mem, m.c.wrapping_add(off)) {
                                    Some((f, cloexec)) => {
                                        extra = (f.0 as u64, u64::from(cloexec), 0);
                                        let raw = f.0;
                                        lock_held(held).made.push(f);
                                        lend = true;
                                        (i64::from(v), Some(raw))
                                    }
                                    None => (-i64::from(libc::EIO), None),
                                }
                            }
                            (Ok(v), _) => (i64::from(v), None),
                            (Err(e), _) => (-i64::from(e.errno().0), None),
                        }
                    }
                }
                _ => (-i64::from(libc::EBADF), None),
            };
            Some(r)
        }
        OP_ENGINE_CLOSE => {
            let _c = crate::sync::enter();
            let gone = {
                let mut h = lock_held(held);
                h.made
                    .iter()
                    .position(|f| f.0 == m.a as c_int)
                    .map(|i| h.made.swap_remove(i))
            };
            drop(gone);
            None
        }
        OP_CLOSE => {
            let gone = lock_held(held).ctxs.remove(&m.a);
            let _c = crate::sync::enter();
            drop(gone);
            None
        }
        OP_CLONE => match socketpair() {
            Ok((server, client)) => {
                let _c = crate::sync::enter();
                let copy = lock_held(held).clone();
                start(server, copy);
                Some((0, Some(client)))
            }
            Err(e) => Some((-i64::from(e.raw_os_error().unwrap_or(libc::EIO)), None)),
        },
        OP_HOLD => {
            let _c = crate::sync::enter();
            let ctx = lock_held(held).ctxs.get(&m.a).cloned();
            match (ctx, listener()) {
                (Some(ctx), Ok((pid, nonce))) => {
                    let token = hold_local(m.a, &ctx, (m.b != 0).then_some(m.b as i32));
                    extra = (pid, nonce, token);
                    Some((0, None))
                }
                (None, _) => Some((-i64::from(libc::EBADF), None)),
                (_, Err(e)) => Some((-i64::from(e), None)),
            }
        }
        OP_CLAIM => {
            let _c = crate::sync::enter();
            match claim(m.a, pm.as_ref().map_or(0, |p| p.pid())) {
                Some(ctx) => {
                    let old = lock_held(held).ctxs.insert(m.a, ctx);
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
        OP_BIND => {
            let _c = crate::sync::enter();
            let ok = bind_local(m.a, m.b as i32);
            Some((if ok { 0 } else { -i64::from(libc::ENOENT) }, None))
        }
        OP_RELEASE => {
            let _c = crate::sync::enter();
            release_local(m.a);
            Some((0, None))
        }
        OP_STATUS => {
            let _c = crate::sync::enter();
            let (pinned, locked) = uiommufd::client::counts(m.a as i32);
            extra = (pinned, locked, 0);
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
                d: extra.2,
                ..Msg::default()
            },
            pass,
        )
        .is_ok();
        if let Some(p) = pass.filter(|_| !lend) {
            crate::raw_close(p);
        }
        return ok;
    }
    true
}

/// Connection `sv` ended: drop what it held.
fn end(sv: &Served) {
    let (fd, held) = (sv.fd, &sv.held);
    {
        let _c = crate::sync::enter();
        // The references go under the SERVED lock: a `sweep` (the owner's
        // close of its own fd) that no longer finds this connection waits
        // here until they are gone, so that the close returns with the
        // context released, as the kernel's does once the client's exit
        // dropped its file (the selftests' teardown checks for pins right
        // after).
        let mut s = SERVED.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|x| x.fd != fd);
        crate::raw_close(fd);
        let gone = std::mem::take(&mut *lock_held(held));
        drop(gone);
        drop(s);
    }
}

/// Serve `fd` (the owner's end of a connection) on a new thread, which
/// takes every asynchronous signal out of its mask: the program's signals
/// go to its own threads.
fn start(fd: c_int, held: Refs) {
    let sv = served(fd, held);
    if crate::keeper::in_keeper() {
        // the keeper's one loop serves it (`keeper_loop`)
        return;
    }
    if let Err(e) = spawn_quiet("uiommufd-owner", move || serve(sv)) {
        tracing::warn!("cannot start the owner thread of a shared context: {e}");
        SERVED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| x.fd != fd);
        crate::raw_close(fd);
    }
}

/// A new served connection on `fd`, holding `held`, in [`SERVED`].
fn served(fd: c_int, held: Refs) -> Arc<Served> {
    let sv = Arc::new(Served {
        fd,
        held: Arc::new(Mutex::new(held)),
        client: Mutex::new(Client::default()),
    });
    SERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(sv.clone());
    sv
}

/// Start thread `name` running `f` with every asynchronous signal out of
/// its mask: the program's signals go to its own threads.
fn spawn_quiet(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    // SAFETY: sigfillset/pthread_sigmask on our own sigset_t values.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let r = std::thread::Builder::new().name(name.into()).spawn(f);
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r.map(drop)
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
    let local_engine = uiommufd::plumbing::files::any_engine_fd();
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
        start(
            server,
            Refs {
                ctxs: held,
                made: Vec::new(),
            },
        );
    }
    for (_, fd) in p.cloned {
        crate::raw_close(fd);
    }
}

/// The `fork` child handler's part: every `/dev/iommu` fd becomes a client
/// of its owner; the parent's sockets are closed.
pub(crate) fn child() {
    // the parent's server ends and listening socket: not ours to keep open
    for sv in std::mem::take(&mut *SERVED.lock().unwrap_or_else(|e| e.into_inner())) {
        crate::raw_close(sv.fd);
        // the parent's references, not ours to drop
        std::mem::forget(sv);
    }
    if let Some(l) = LISTENER.lock().unwrap_or_else(|e| e.into_inner()).take() {
        crate::raw_close(l.fd);
        crate::raw_close(l.wake);
    }
    // the parent's references for fds in flight, and its connections as a
    // receiver (their sockets are closed below)
    std::mem::forget(std::mem::take(&mut *inflight()));
    BOUND.store(0, std::sync::atomic::Ordering::Release);
    CONNS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let Some(p) = PENDING.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    // the pins of the copied engine state are the parent's
    uiommufd::client::Client::forget_after_fork();
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
        for (fd, kind) in uiommufd::plumbing::files::engine_fds() {
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
    /// An eventfd that wakes the accepting thread when a hold for a
    /// process is made: it then watches that process's exit ([`expire`]).
    wake: c_int,
}

static LISTENER: Mutex<Option<Listener>> = Mutex::new(None);

/// A reference of a context held for an fd on its way to another process
/// image: sent with `SCM_RIGHTS` (for whoever receives it), or kept across
/// an `exec` or a `posix_spawn` (for that process). The receiver claims it
/// (`OP_CLAIM`); the kernel's equivalent is the file reference the fd in
/// flight, or the inherited fd, holds.
struct Hold {
    key: u64,
    ctx: Arc<Context>,
    /// Names this hold for `OP_BIND`/`OP_RELEASE`.
    token: u64,
    /// The process it is for, when known: only that process claims it, and
    /// it ends when that process exits (an `exec`ed image that never claims
    /// it, a statically linked program say, does not keep the context
    /// for ever). `None`: an fd sent with `SCM_RIGHTS`, kept until the
    /// owner exits when nobody with the preload receives it.
    pid: Option<i32>,
    /// A pidfd of `pid` (opened lazily when the hold was made in a `vfork`
    /// child, whose fds are not ours).
    pidfd: Option<OwnedFd>,
}

/// The held references, in the owner.
static INFLIGHT: Mutex<Vec<Hold>> = Mutex::new(Vec::new());

/// How many holds wait for a known process (see [`accept_loop`]).
static BOUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Recount [`BOUND`] after a change of the holds (under their lock).
fn recount(v: &[Hold]) {
    let n = v.iter().filter(|h| h.pid.is_some()).count();
    BOUND.store(n, std::sync::atomic::Ordering::Release);
}

/// Wake the accepting thread: a hold for a process was made.
fn wake_listener() {
    if let Some(l) = LISTENER.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let one = 1u64;
        // SAFETY: writing 8 bytes to our eventfd (raw: `write` is hooked).
        unsafe { libc::syscall(libc::SYS_write, l.wake, &one as *const u64, 8) };
    }
}

/// The last hold token given out.
static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn inflight() -> std::sync::MutexGuard<'static, Vec<Hold>> {
    INFLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pidfd of `pid`, out of the program's way. Inside a critical section:
/// a birth while it is at the lowest free number.
fn pidfd_hidden(pid: i32) -> Option<OwnedFd> {
    use std::os::fd::IntoRawFd;
    let fd = born_hidden(|| pidfd_open(pid).map_or(-1, |f| f.into_raw_fd())).ok()?;
    // SAFETY: `born_hidden` returns an fd that we alone own.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` has exited (the pidfd polls readable).
fn exited(pidfd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own; no wait. Raw: `poll` may be the program's.
    let r = unsafe { libc::syscall(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, 0) };
    r == 1 && p.revents != 0
}

/// Drop the holds whose process has exited. Inside a critical section, in
/// the owner (not a `vfork` child: it opens pidfds).
fn expire() {
    let mut gone = Vec::new();
    {
        let mut v = inflight();
        let mut i = 0;
        while i < v.len() {
            let h = &mut v[i];
            let dead = match (h.pid, &h.pidfd) {
                (None, _) => false,
                (Some(_), Some(fd)) => exited(fd),
                (Some(pid), None) => match pidfd_hidden(pid) {
                    Some(fd) => {
                        h.pidfd = Some(fd);
                        false
                    }
                    None => true,
                },
            };
            if dead {
                gone.push(v.swap_remove(i));
            } else {
                i += 1;
            }
        }
        recount(&v);
    }
    drop(gone);
}

/// Hold a reference of `ctx` for `pid` (`None`: for whoever claims it), and
/// return its token. In a `vfork` child (which shares our memory, so this
/// still holds in the owner) the pidfd is left to [`expire`].
fn hold_local(key: u64, ctx: &Arc<Context>, pid: Option<i32>) -> u64 {
    let foreign = crate::sync::foreign();
    if !foreign {
        expire();
    }
    let pidfd = pid.filter(|_| !foreign).and_then(pidfd_hidden);
    let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    {
        let mut v = inflight();
        v.push(Hold {
            key,
            ctx: ctx.clone(),
            token,
            pid,
            pidfd,
        });
        recount(&v);
    }
    if pid.is_some() {
        wake_listener();
    }
    token
}

/// Bind hold `token` to process `pid` (a `posix_spawn` child, known once it
/// exists). `false` when there is no such hold.
fn bind_local(token: u64, pid: i32) -> bool {
    let pidfd = pidfd_hidden(pid);
    let found = {
        let mut v = inflight();
        let found = match v.iter_mut().find(|h| h.token == token) {
            Some(h) => {
                h.pid = Some(pid);
                h.pidfd = pidfd;
                true
            }
            None => false,
        };
        recount(&v);
        found
    };
    if found {
        wake_listener();
    }
    found
}

/// Drop hold `token` (the `exec` or `posix_spawn` it was for failed).
fn release_local(token: u64) {
    let gone = {
        let mut v = inflight();
        let h = v
            .iter()
            .position(|h| h.token == token)
            .map(|i| v.swap_remove(i));
        recount(&v);
        h
    };
    drop(gone);
}

/// A reference of context `key` for process `pid`: a hold made for it,
/// else one made for anyone, else — an fd inherited by a path no hook sees
/// (an `execl`, glibc's own `posix_spawn` inside `system`) — a new
/// reference while the context lives here (held by an fd of ours or a
/// connection we serve).
fn claim(key: u64, pid: i32) -> Option<Arc<Context>> {
    expire();
    {
        let mut v = inflight();
        let at = v
            .iter()
            .position(|h| h.key == key && h.pid == Some(pid))
            .or_else(|| v.iter().position(|h| h.key == key && h.pid.is_none()));
        if let Some(i) = at {
            let h = v.swap_remove(i);
            recount(&v);
            return Some(h.ctx);
        }
    }
    live(key)
}

/// Context `key` if it lives here: an fd of ours or a connection we serve
/// holds it.
fn live(key: u64) -> Option<Arc<Context>> {
    for (_, e) in table::all() {
        if let FdObject::Iommu(ctx) = &e.obj {
            if key_of(ctx) == key {
                return Some(ctx.clone());
            }
        }
    }
    let served = SERVED.lock().unwrap_or_else(|e| e.into_inner());
    served
        .iter()
        .find_map(|sv| lock_held(&sv.held).ctxs.get(&key).cloned())
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
    born_hidden(|| {
        // SAFETY: socket(2) by raw system call (`socket` is hooked).
        unsafe {
            libc::syscall(
                libc::SYS_socket,
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
            ) as c_int
        }
    })
}

/// An fd of ours that `make` creates (a raw system call: an fd or -1 with
/// `errno`), out of the program's way ([`hide`]). It is an fd birth while
/// it is at the lowest free number (see `sync`); inside a critical section.
fn born_hidden(make: impl FnOnce() -> c_int) -> Result<c_int, c_int> {
    let _birth = crate::sync::Birth::new();
    let _ops = crate::sync::fd_ops();
    let fd = make();
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
    let wake = born_hidden(|| {
        // SAFETY: eventfd2 by raw system call (`eventfd` is hooked).
        unsafe {
            libc::syscall(
                libc::SYS_eventfd2,
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ) as c_int
        }
    });
    let wake = match wake {
        Ok(w) => w,
        Err(e) => {
            crate::raw_close(fd);
            return Err(e);
        }
    };
    if spawn_quiet("uiommufd-listen", move || accept_loop(fd, wake)).is_err() {
        crate::raw_close(fd);
        crate::raw_close(wake);
        return Err(libc::EAGAIN);
    }
    *l = Some(Listener { fd, nonce, wake });
    Ok((pid as u64, nonce))
}

/// Accept the receivers of our fds, each served like a fork child; while
/// a hold waits for a process, look every 100 ms whether it has exited
/// ([`expire`]), so that its context ends as the kernel's would when the
/// last process holding its fd is gone.
fn accept_loop(lfd: c_int, wake: c_int) {
    loop {
        let mut p = [
            libc::pollfd {
                fd: lfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if BOUND.load(std::sync::atomic::Ordering::Acquire) > 0 {
            100
        } else {
            -1
        };
        // SAFETY: two pollfds we own.
        let r = unsafe { libc::syscall(libc::SYS_poll, p.as_mut_ptr(), 2, timeout) };
        if r < 0 && crate::path::errno() == libc::EINTR {
            continue;
        }
        if r < 0 || p[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return;
        }
        if p[1].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reading the eventfd's 8-byte counter into `v`.
            unsafe { libc::syscall(libc::SYS_read, wake, &mut v as *mut u64, 8) };
        }
        let c = crate::sync::enter();
        if crate::keeper::paused() {
            drop(c);
            crate::keeper::wait_resumed();
            continue;
        }
        if BOUND.load(std::sync::atomic::Ordering::Acquire) > 0 {
            expire();
        }
        if p[0].revents & libc::POLLIN != 0 {
            if let Some(fd) = accept_one(lfd) {
                start(fd, Refs::default());
            }
        }
    }
}

/// Accept one receiver of our fds on listening socket `lfd`: its
/// connection, blocking, once it is known to be of our user. Inside a
/// critical section.
fn accept_one(lfd: c_int) -> Option<c_int> {
    let fd = born_hidden(|| {
        // SAFETY: accept4 on our listening socket, no address wanted.
        unsafe {
            libc::syscall(
                libc::SYS_accept4,
                lfd,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            ) as c_int
        }
    })
    .ok()?;
    // The socket's name is no secret (abstract names are listed in
    // /proc/net/unix): only a process of our own user (or root), which could
    // read our memory anyway, may connect and claim a context.
    if !same_user(fd) {
        tracing::debug!("refused a connection from another user's process");
        crate::raw_close(fd);
        return None;
    }
    // blocking again: the server thread waits in poll anyway
    // SAFETY: fcntl on our own fd.
    unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFL, 0) };
    Some(fd)
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
    if !uiommufd::user::fd_link(fd, &mut [0u8; 128])?.starts_with(b"/memfd:uiommufd:") {
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
    // SAFETY: the control messages are our own copy, `msg_controllen`
    // bytes of `ctl`.
    unsafe { each_rights_fd(&copy, |f| out.push(f)) };
    out
}

/// Hand every fd of the `SCM_RIGHTS` messages of `hdr` to `f`.
///
/// # Safety
/// `hdr.msg_control` points at `hdr.msg_controllen` readable bytes.
unsafe fn each_rights_fd(hdr: &libc::msghdr, mut f: impl FnMut(c_int)) {
    // SAFETY: the CMSG_* walk stays inside the control buffer, readable as
    // the caller promises; the fds are read unaligned from the messages.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    f(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
}

/// The fds a successful `recvmsg` just received.
///
/// # Safety
/// `msg` is the msghdr the kernel just filled.
pub(crate) unsafe fn passed_fds(msg: *mut libc::msghdr) -> Vec<c_int> {
    control_fds(msg as u64)
}

/// A reference held for a new holder of an fd (see [`Hold`]), to bind or
/// release once it is known whether that holder exists.
#[derive(Debug)]
pub(crate) enum Kept {
    /// A hold in this process (the owner), by token.
    Local(u64),
    /// A hold in the owner at the other end of a connection, by token.
    Remote(Arc<Conn>, u64),
}

/// Hold a reference of the context behind fd entry `e` for its next holder
/// (process `pid`, or whoever claims it), and write into the fd's memfd
/// the header that leads there. Inside a critical section.
fn keep(fd: c_int, e: &Entry, pid: Option<i32>) -> Result<Kept, c_int> {
    let (owner, nonce, key, kept) = match &e.obj {
        FdObject::Iommu(ctx) => {
            let (owner, nonce) = if crate::sync::foreign() {
                // a vfork child: our memory, but its fds; the owner's
                // listening socket was started when the fd was opened
                let l = LISTENER.lock().unwrap_or_else(|e| e.into_inner());
                let l = l.as_ref().ok_or(libc::ENOTCONN)?;
                (crate::sync::pid() as u64, l.nonce)
            } else {
                listener()?
            };
            let key = key_of(ctx);
            (owner, nonce, key, Kept::Local(hold_local(key, ctx, pid)))
        }
        FdObject::Remote(rc) => {
            let m = Msg {
                op: OP_HOLD,
                a: rc.key,
                b: pid.map_or(0, |p| p as u64),
                ..Msg::default()
            };
            match rc.conn.exchange(&m, None, true)? {
                (r, _) if r.a == 0 => (r.b, r.c, rc.key, Kept::Remote(rc.conn.clone(), r.d)),
                (r, _) => return Err((r.a as i64).unsigned_abs() as c_int),
            }
        }
    };
    write_header(fd, owner, nonce, key);
    Ok(kept)
}

/// Bind `kept` to process `pid` (see [`OP_BIND`]).
fn bind(kept: &Kept, pid: i32) {
    match kept {
        Kept::Local(t) => {
            bind_local(*t, pid);
        }
        Kept::Remote(conn, t) => {
            let m = Msg {
                op: OP_BIND,
                a: *t,
                b: pid as u64,
                ..Msg::default()
            };
            let _ = conn.call(&m, true);
        }
    }
}

/// Drop `kept` (see [`OP_RELEASE`]).
fn release(kept: Kept) {
    match kept {
        Kept::Local(t) => release_local(t),
        Kept::Remote(conn, t) => {
            let m = Msg {
                op: OP_RELEASE,
                a: t,
                ..Msg::default()
            };
            let _ = conn.call(&m, true);
        }
    }
}

/// Before the program sends `msg`: every `/dev/iommu` fd in it gets a
/// reference held for its receiver, and its memfd the header that leads
/// there. Inside a critical section.
///
/// Returns the references held, for [`exec_failed`] when the message is
/// not sent.
pub(crate) fn before_send(msg: u64) -> Vec<Kept> {
    let mut kept = Vec::new();
    for fd in control_fds(msg) {
        let Some(e) = table::lookup(fd) else { continue };
        match keep(fd, &e, None) {
            Ok(k) => kept.push(k),
            Err(e) => tracing::debug!(fd, errno = e, "cannot share a sent /dev/iommu fd"),
        }
    }
    kept
}

/// An emulated fd was opened or made for a context this process owns: its
/// memfd gets the header that leads to it, and the listening socket is
/// started, so that a process which inherits the fd by a path no hook of
/// ours sees (a `vfork` child's `execve`, glibc's internal `posix_spawn`,
/// an `execl`) still reaches the context. Inside a critical section.
pub(crate) fn opened(fd: c_int, ctx: &Arc<Context>) {
    match listener() {
        Ok((pid, nonce)) => write_header(fd, pid, nonce, key_of(ctx)),
        Err(e) => tracing::debug!(fd, errno = e, "no listening socket for a /dev/iommu fd"),
    }
}

/// Whether `fd` is still the file of entry `e` and survives `exec`.
fn inherited(fd: c_int, e: &Entry) -> bool {
    // SAFETY: F_GETFD on a number; raw: `fcntl` is hooked.
    let flags = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
    if flags < 0 || flags & i64::from(libc::FD_CLOEXEC) != 0 {
        return false;
    }
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into our buffer.
    let ok = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) } == 0;
    ok && st.st_dev == e.dev && st.st_ino == e.ino
}

/// Before an `exec` (`pid`: this process) or a `posix_spawn` (`None`: the
/// child is bound once it exists, [`spawned`]): every `/dev/iommu` fd that
/// survives it gets a reference held for the new image, which claims it
/// when the preload loads there ([`adopt_inherited`]). The references are
/// undone by [`exec_failed`]. Inside a critical section.
///
/// The owner's own `exec` is left to `keeper` (its contexts are not held
/// here); a `vfork` child holds for itself in its parent, the owner.
pub(crate) fn before_exec(pid: Option<i32>) -> Vec<Kept> {
    let mut kept = Vec::new();
    let own_exec = pid.is_some() && !crate::sync::foreign();
    for (fd, e) in table::all() {
        if !inherited(fd, &e) {
            continue;
        }
        if own_exec && matches!(e.obj, FdObject::Iommu(_)) {
            continue;
        }
        match keep(fd, &e, pid) {
            Ok(k) => kept.push(k),
            Err(err) => tracing::debug!(fd, errno = err, "cannot keep a /dev/iommu fd across exec"),
        }
    }
    kept
}

/// The `exec` or `posix_spawn` that [`before_exec`] prepared failed (or
/// the message [`before_send`] prepared was not sent).
pub(crate) fn exec_failed(kept: Vec<Kept>) {
    for k in kept {
        release(k);
    }
}

/// The `posix_spawn` that [`before_exec`] prepared made process `pid`.
pub(crate) fn spawned(kept: Vec<Kept>, pid: i32) {
    for k in &kept {
        bind(k, pid);
    }
}

/// At load: the fds this image inherited (across `exec`) that are
/// `/dev/iommu` fds of a context elsewhere reach it, as fds received with
/// `SCM_RIGHTS` do ([`after_receive`]).
pub(crate) fn adopt_inherited() {
    for fd in open_fds() {
        after_receive(fd);
    }
}

/// The fds open in this process (from `/proc/self/fd`, by raw system calls).
pub(crate) fn open_fds() -> Vec<c_int> {
    let mut fds = Vec::new();
    let _ops = crate::sync::fd_ops();
    // a private fd (out of the program's way); raw syscalls: `open` is hooked
    let Ok(dir) =
        uiommufd::user::open_private(c"/proc/self/fd", libc::O_RDONLY | libc::O_DIRECTORY)
    else {
        return fds;
    };
    let dir = std::os::fd::IntoRawFd::into_raw_fd(dir);
    let mut buf = [0u64; 512];
    loop {
        // SAFETY: getdents64 into our buffer of that many bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        if n <= 0 {
            break;
        }
        // SAFETY: viewing our buffer's first `n` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut at = 0;
        // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name
        while at + 19 < bytes.len() {
            let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &bytes[at + 19..(at + reclen).min(bytes.len())];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(fd) = std::str::from_utf8(name)
                .ok()
                .and_then(|t| t.parse::<c_int>().ok())
            {
                if fd != dir {
                    fds.push(fd);
                }
            }
            at += reclen;
        }
    }
    crate::raw_close(dir);
    fds
}

/// Whether this process has owned a context (its listening socket runs).
pub(crate) fn ever_owned() -> bool {
    LISTENER.lock().unwrap_or_else(|e| e.into_inner()).is_some()
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
        match claim(key, crate::sync::pid()) {
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
    let pid = status_pid(path)?;
    // (pins outlive the fds: a context another process holds, or one in
    // an engine reached through a connection)
    let (mut pinned, mut locked) = uiommufd::client::counts(pid);
    let mut conns: Vec<Arc<Conn>> = Vec::new();
    for (_, e) in table::all() {
        if let FdObject::Remote(rc) = &e.obj {
            if !conns.iter().any(|c| Arc::ptr_eq(c, &rc.conn)) {
                conns.push(rc.conn.clone());
            }
        }
    }
    if pinned == 0 && locked == 0 && conns.is_empty() {
        return None;
    }
    let real = read_proc(path)?;
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
    use uiommufd::plumbing::files::{self, UserBuf};
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

// ---------------------------------------------------------------------------
// The owner's exec (see `keeper`)

/// Whether the owner's `exec` must leave its engine to a keeper: the new
/// image inherits an fd of a context it owns, or another process holds one
/// (a connection, or a reference held for an fd on its way). Inside a
/// critical section.
pub(crate) fn engine_needed_after_exec() -> bool {
    let inherited_own = table::all()
        .iter()
        .any(|(fd, e)| matches!(e.obj, FdObject::Iommu(_)) && inherited(*fd, e));
    inherited_own
        || !SERVED.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
        || !inflight().is_empty()
}

/// Before the owner's own `exec`, once a keeper is decided: hold a
/// reference of each owned context with an inherited fd for the new image
/// (this pid). Inside a critical section.
pub(crate) fn keep_own_for_exec() -> Vec<Kept> {
    let pid = crate::sync::pid();
    let mut kept = Vec::new();
    for (fd, e) in table::all() {
        if matches!(e.obj, FdObject::Iommu(_)) && inherited(fd, &e) {
            match keep(fd, &e, Some(pid)) {
                Ok(k) => kept.push(k),
                Err(err) => tracing::debug!(fd, errno = err, "cannot keep an owned fd across exec"),
            }
        }
    }
    kept
}

/// In the keeper, once the old image is gone: drop the program's fd
/// registrations (the new image holds what it inherited through the holds
/// made for it), and the connections to other owners. Inside a critical
/// section. Returns the fds the keeper still uses.
pub(crate) fn keeper_take_over() -> Vec<c_int> {
    for (fd, _) in table::all() {
        drop(table::unregister(fd));
    }
    CONNS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    {
        let mut map = engine_fds();
        map.clear();
        ANY_REMOTE_ENGINE.store(false, std::sync::atomic::Ordering::Release);
    }
    let mut ours = Vec::new();
    if let Some(l) = LISTENER.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        ours.push(l.fd);
        ours.push(l.wake);
    }
    for sv in SERVED.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        use std::os::fd::AsRawFd;
        ours.push(sv.fd);
        ours.extend(lock_held(&sv.held).made.iter().map(|f| f.0));
        let c = sv.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pm) = &c.pm {
            ours.push(pm.pidfd().as_raw_fd());
        }
    }
    for h in inflight().iter() {
        use std::os::fd::AsRawFd;
        ours.extend(h.pidfd.as_ref().map(|f| f.as_raw_fd()));
    }
    ours.extend(
        uiommufd::plumbing::files::engine_fds()
            .into_iter()
            .map(|(fd, _)| fd),
    );
    ours
}

/// The keeper's loop, on its one thread: serve every connection and the
/// listening socket, and watch the holds, until no process holds any of
/// the contexts; then exit.
pub(crate) fn keeper_loop() -> ! {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        let (lfd, wake) = LISTENER
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or((-1, -1), |l| (l.fd, l.wake));
        let all: Vec<Arc<Served>> = SERVED.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if all.is_empty() && inflight().is_empty() {
            // SAFETY: ending this process without the program's exit
            // handlers (it runs none of the program's code).
            unsafe { libc::_exit(0) };
        }
        fds.clear();
        for fd in [lfd, wake].into_iter().chain(all.iter().map(|s| s.fd)) {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = if BOUND.load(std::sync::atomic::Ordering::Acquire) > 0 {
            100
        } else {
            -1
        };
        // SAFETY: our pollfd array.
        let r = unsafe { libc::syscall(libc::SYS_poll, fds.as_mut_ptr(), fds.len(), timeout) };
        if r < 0 && crate::path::errno() != libc::EINTR {
            // SAFETY: as above.
            unsafe { libc::_exit(1) };
        }
        let _c = crate::sync::enter();
        if fds[1].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reading the eventfd's 8-byte counter into `v`.
            unsafe { libc::syscall(libc::SYS_read, wake, &mut v as *mut u64, 8) };
        }
        if BOUND.load(std::sync::atomic::Ordering::Acquire) > 0 {
            expire();
        }
        for (sv, p) in all.iter().zip(&fds[2..]) {
            if p.revents != 0 && !handle(sv) {
                end(sv);
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            if let Some(fd) = accept_one(lfd) {
                served(fd, Refs::default());
            }
        }
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
