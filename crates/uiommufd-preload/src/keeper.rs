//! The owner's `exec`: a keeper process takes over the engine.
//!
//! A context lives in the memory of its owner (see `remote`). When the owner
//! `exec`s while the new image inherits an fd of a context it owns, or while
//! another process holds one, the kernel's file would simply live on. Here
//! the exec hook ([`hand_over`]) first makes a **keeper**: a child (made
//! with glibc's `_Fork`, so that none of the program's atfork handlers run,
//! and forked twice so that the new image never meets it as its child)
//! whose copy of the memory holds the engine as it is at the `exec`. The
//! keeper inherits the owner's listening socket (the abstract name in every
//! fd's header) and its connections, and serves them from one thread
//! ([`crate::remote::keeper_loop`]): the new image claims its references
//! like any receiver, and every other client goes on as before. The keeper
//! exits when no process holds any of its contexts.
//!
//! **Consistency.** The fork happens with the fork gate held (no critical
//! section of the shim or the engine is in flight in any thread), and from
//! then until the `exec` the owner's connection and listening threads
//! pause ([`paused`]): each request is received and answered inside one
//! critical section, so each is either answered by the owner before the
//! fork or still in its socket for the keeper. If the `exec` fails, the
//! keeper is told to go (a byte on a pipe) and the owner resumes; the old
//! image is gone once its close-on-exec end of that pipe is (`kcmp`).
//!
//! **What the keeper is not.** It runs none of the program's code and keeps
//! none of its files: every fd it does not use is replaced by `/dev/null`
//! (a pipe or socket of the program must see end of file when the program
//! closes it). The engine's threads (VFIO device workers, ioeventfd
//! watchers) do not exist in it, so an owner with VFIO devices open does
//! not hand over (its contexts end with it, as before). Writes a thread of
//! the old image made in the instant between the fork and the `exec` are
//! not in the keeper's copy.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{remote, sync, table};

/// Set while an `exec` hands the engine over: the owner's serving threads
/// wait (see the module docs).
static PAUSED: AtomicBool = AtomicBool::new(false);

/// Set in the keeper: connections are served by its one loop, never by a
/// thread of their own.
static IN_KEEPER: AtomicBool = AtomicBool::new(false);

/// Whether this process is a keeper (see [`IN_KEEPER`]).
pub(crate) fn in_keeper() -> bool {
    IN_KEEPER.load(Ordering::Acquire)
}

/// Whether serving threads must wait (the engine is being handed over).
pub(crate) fn paused() -> bool {
    PAUSED.load(Ordering::Acquire)
}

/// Wait, outside any critical section, until the hand-over is over (the
/// `exec` failed; when it succeeds this thread is gone).
pub(crate) fn wait_resumed() {
    while paused() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// An `exec` that handed the engine to a keeper.
pub(crate) struct Handover {
    /// The write end of the pipe the keeper waits on.
    abort: c_int,
    /// The references held for the new image.
    kept: Vec<remote::Kept>,
}

impl Handover {
    /// The `exec` failed: the keeper goes, this process serves on.
    pub(crate) fn failed(self) {
        // SAFETY: one byte from our buffer to our pipe; raw: `write` is
        // hooked.
        unsafe { libc::syscall(libc::SYS_write, self.abort, b"x".as_ptr(), 1usize) };
        crate::raw_close(self.abort);
        PAUSED.store(false, Ordering::Release);
        let kept = self.kept;
        crate::quietly(|| {
            let _c = sync::enter();
            remote::exec_failed(kept);
        });
    }
}

/// glibc's `_Fork`: `fork` without the atfork handlers.
fn underscore_fork() -> Option<unsafe extern "C" fn() -> libc::pid_t> {
    // SAFETY: a NUL-terminated name; RTLD_DEFAULT searches every object.
    let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Fork".as_ptr()) };
    // SAFETY: glibc's `_Fork` has this prototype.
    (!addr.is_null()).then(|| unsafe {
        std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn() -> libc::pid_t>(addr)
    })
}

/// Whether the engine runs threads of its own (VFIO devices are open).
fn engine_threads() -> bool {
    uiommufd::plumbing::files::engine_fds()
        .iter()
        .any(|(_, kind)| kind.starts_with("vfio"))
}

/// Before this process (not a `vfork` child) `exec`s: when its engine must
/// outlive it, hand it to a keeper. `None`: nothing to hand over (or no way
/// to, logged).
pub(crate) fn hand_over() -> Option<Handover> {
    if !table::any_registered() && !remote::ever_owned() {
        return None;
    }
    let need = crate::guard(|| {
        let _c = sync::enter();
        remote::engine_needed_after_exec()
    })?;
    if !need {
        return None;
    }
    if engine_threads() {
        tracing::debug!("exec with VFIO devices open: the contexts end with this image");
        return None;
    }
    let Some(fork) = underscore_fork() else {
        tracing::debug!("no _Fork in this libc: the contexts end with this image");
        return None;
    };
    let (kept, pipe) = crate::guard(|| {
        let _c = sync::enter();
        let kept = remote::keep_own_for_exec();
        let _birth = sync::Birth::new();
        let _ops = sync::fd_ops();
        let mut p = [-1 as c_int; 2];
        // SAFETY: pipe2 into our array; raw: `pipe2` is hooked.
        let ok = unsafe { libc::syscall(libc::SYS_pipe2, p.as_mut_ptr(), libc::O_CLOEXEC) } == 0;
        (kept, ok.then_some(p))
    })?;
    let Some([r, w]) = pipe else {
        tracing::debug!("exec: no pipe for the keeper; the contexts end with this image");
        crate::quietly(|| {
            let _c = sync::enter();
            remote::exec_failed(kept);
        });
        return None;
    };
    let mut child: libc::pid_t = -1;
    let owner = sync::pid();
    sync::drained(|| {
        PAUSED.store(true, Ordering::Release);
        // SAFETY: `_Fork` duplicates this process with this one thread; no
        // critical section is in flight anywhere (the gate is held), so
        // the child's copies of the shim's and the engine's state are
        // consistent.
        child = unsafe { fork() };
        if child == 0 {
            sync::reset_in_child();
            // SAFETY: as above, from the single-threaded child.
            if unsafe { fork() } == 0 {
                sync::reset_in_child();
                keeper_main(r, w, owner);
            }
            // SAFETY: the intermediate child ends at once, running nothing
            // of the program's.
            unsafe { libc::_exit(0) };
        }
    });
    crate::raw_close(r);
    if child < 0 {
        PAUSED.store(false, Ordering::Release);
        crate::raw_close(w);
        tracing::debug!("exec: cannot fork a keeper; the contexts end with this image");
        crate::quietly(|| {
            let _c = sync::enter();
            remote::exec_failed(kept);
        });
        return None;
    }
    loop {
        // SAFETY: waiting for our own intermediate child.
        let r = unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        if r >= 0 || crate::path::errno() != libc::EINTR {
            break;
        }
    }
    tracing::debug!("exec: a keeper process serves the contexts of this image");
    Some(Handover { abort: w, kept })
}

/// The keeper: wait until the old image of `owner` is gone (or told to go),
/// take over, serve.
///
/// The old image is gone when its copy of the pipe's write end `w` (close-
/// on-exec) no longer is that pipe (`kcmp`): not end of file on the pipe,
/// which a fork child of the program made meanwhile would hold off.
fn keeper_main(r: c_int, w: c_int, owner: libc::pid_t) -> ! {
    IN_KEEPER.store(true, Ordering::Release);
    // no signal of the terminal's or the program's reaches the keeper's
    // code; SIGTERM and SIGKILL still end it
    // SAFETY: a sigset_t we fill, then set as this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigdelset(&mut all, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    let me = sync::pid();
    // SAFETY: the pipe's read end is ours; non-blocking from now on.
    unsafe { libc::syscall(libc::SYS_fcntl, r, libc::F_SETFL, libc::O_NONBLOCK) };
    let told_to_go = || {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into our buffer.
        unsafe { libc::syscall(libc::SYS_read, r, b.as_mut_ptr(), 1usize) == 1 }
    };
    loop {
        let mut p = libc::pollfd {
            fd: r,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd of ours; at most 2 ms.
        unsafe { libc::syscall(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, 2) };
        const KCMP_FILE: c_int = 0;
        // SAFETY: kcmp compares fd `w` of the owner with ours; no memory.
        let same = unsafe { libc::syscall(libc::SYS_kcmp, owner, me, KCMP_FILE, w, w) } == 0;
        // (the byte of a failed exec is written before its end closes)
        if told_to_go() {
            // the exec failed: the owner serves on
            // SAFETY: ending the keeper without running anything else.
            unsafe { libc::_exit(0) };
        }
        if !same {
            break;
        }
    }
    crate::raw_close(r);
    crate::raw_close(w);
    PAUSED.store(false, Ordering::Release);
    let ours = crate::guard(|| {
        let _c = sync::enter();
        remote::keeper_take_over()
    })
    .unwrap_or_default();
    release_program_files(&ours);
    remote::keeper_loop()
}

/// Replace every fd but `ours` by `/dev/null`: the program's files are not
/// the keeper's to hold, and a number the engine still names (an eventfd it
/// duplicated) must not come back as one of the keeper's sockets.
fn release_program_files(ours: &[c_int]) {
    // SAFETY: open of a NUL-terminated path; raw: `open` is hooked.
    let null = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/dev/null".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC,
        )
    } as c_int;
    if null < 0 {
        return;
    }
    for fd in remote::open_fds() {
        if fd != null && !ours.contains(&fd) {
            // SAFETY: dup3 of our /dev/null over a number of ours.
            unsafe { libc::syscall(libc::SYS_dup3, null, fd, libc::O_CLOEXEC) };
        }
    }
}
