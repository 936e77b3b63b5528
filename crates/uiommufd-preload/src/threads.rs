//! Thread exit with the preload's heap quiet.
//!
//! The shim allocates from its own heap (mimalloc) and only inside critical
//! sections, where the program's signals are blocked, so a program's signal
//! handler that calls a hooked function (`stat`, `open`, ...) never enters
//! the heap while the same thread is inside it. One piece of the heap's
//! code runs outside any critical section: its thread-exit destructor (a
//! `pthread` TSD destructor), which takes a process-wide heap lock. A
//! signal delivered there to a handler that calls a hook which allocates
//! makes the thread wait for the lock it holds, for ever (and every thread
//! that starts after it too).
//!
//! So every thread the program starts with `pthread_create` ends with its
//! asynchronous signals blocked: its start routine runs inside a
//! trampoline that blocks them when the routine returns, and `pthread_exit`
//! blocks them before it unwinds. TSD and `thread_local` destructors then
//! run with those signals blocked (a dying thread's signals are not lost:
//! a process-directed one goes to another thread). Not covered: a thread
//! ended by `pthread_cancel` (its forced unwind skips both) or made with a
//! raw `clone`.

use std::ffi::{c_int, c_void};

/// What the trampoline runs.
struct Start {
    routine: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
}

/// The new thread's first function: the program's start routine, then its
/// signals blocked for the thread's exit.
extern "C" fn trampoline(p: *mut c_void) -> *mut c_void {
    // SAFETY: `p` is the `Box<Start>` `pthread_create` leaked for us; it is
    // taken back (and freed) inside a critical section, on our heap.
    let s = crate::guard(|| {
        let _c = crate::sync::enter();
        // SAFETY: as above.
        let b = unsafe { Box::from_raw(p.cast::<Start>()) };
        (b.routine, b.arg)
    });
    let Some((routine, arg)) = s else {
        return std::ptr::null_mut();
    };
    let r = routine(arg);
    crate::sync::block_all();
    r
}

/// `pthread_create(3)`: the start routine runs inside [`trampoline`].
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    routine: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
) -> c_int {
    let Some(real) = crate::real::pthread_create() else {
        return libc::EAGAIN;
    };
    let boxed = crate::guard(|| {
        let _c = crate::sync::enter();
        Box::into_raw(Box::new(Start { routine, arg })) as usize
    });
    let Some(boxed) = boxed else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(thread, attr, routine, arg) };
    };
    // SAFETY: the caller's arguments, with our trampoline and its data.
    let r = unsafe { real(thread, attr, trampoline, boxed as *mut c_void) };
    if r != 0 {
        let _ = crate::guard(|| {
            let _c = crate::sync::enter();
            // SAFETY: the thread was not made: the box is still ours.
            drop(unsafe { Box::from_raw(boxed as *mut Start) });
        });
    }
    r
}

/// `pthread_exit(3)`: the thread's asynchronous signals are blocked first.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn pthread_exit(value: *mut c_void) -> ! {
    crate::sync::block_all();
    match crate::real::pthread_exit() {
        // SAFETY: forwarding the caller's argument.
        Some(real) => unsafe { real(value) },
        // no libc pthread_exit: end the thread with the system call
        // SAFETY: exiting this thread only.
        None => unsafe {
            libc::syscall(libc::SYS_exit, 0);
            std::process::abort()
        },
    }
}
