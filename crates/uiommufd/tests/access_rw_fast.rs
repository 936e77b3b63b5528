//! Access rw with fault-safe copies installed (`faultsafe::install`): the
//! in-place fast path and its per-thread area memory, checked against the
//! reference path. The same scenarios without the install run in
//! `access_rw_syscall.rs`.

mod access_rw_paths;

use access_rw_paths as p;

/// Serialises `install` with the chaining test's own `sigaction` (tests
/// share one process under `cargo test`).
static SIGNALS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn install() {
    let _g = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
    install_locked();
}

fn install_locked() {
    assert!(
        uiommufd::faultsafe::install(),
        "x86-64 has fault-safe copies"
    );
    assert!(uiommufd::faultsafe::enabled());
    // idempotent
    assert!(uiommufd::faultsafe::install());
}

#[test]
fn differential_against_reference_path() {
    install();
    for seed in 1..=4 {
        p::differential(seed, 1500);
    }
}

#[test]
fn fixed_cases() {
    install();
    p::fixed_cases(true);
    p::fixed_cases(false);
}

#[test]
fn efault_after_munmap_no_crash() {
    install();
    let reasons = p::efault_after_munmap(true);
    // answered by the in-place copy (its reason names the host address)
    assert!(
        reasons.iter().all(|r| r.contains("host address")),
        "{reasons:?}"
    );
    p::efault_after_munmap(false);
}

#[test]
fn stale_hints_never_used() {
    install();
    p::stale_hints(true);
    p::stale_hints(false);
}

#[test]
fn prevent_access_refuses_remembered_area() {
    install();
    p::prevent_access(true);
    p::prevent_access(false);
}

#[test]
fn racing_remaps() {
    install();
    p::racing_remaps(true);
}

/// Unmaps and detaches wait for the lock-free copies in flight.
#[test]
fn unmap_drains_copies() {
    install();
    p::unmap_drains_copies(true, 400);
    p::unmap_drains_copies(false, 100);
}

/// A fault that is not one of our copies still reaches the program's
/// handler installed before `install` (chaining).
#[test]
fn foreign_faults_chain_to_previous_handler() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static HITS: AtomicUsize = AtomicUsize::new(0);
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn on_segv(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        HITS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the kernel's siginfo for a SIGSEGV.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = PAGE.load(Ordering::SeqCst);
        if addr >= page && addr < page + 4096 {
            // SAFETY: making our own page accessible so the access retries.
            unsafe {
                libc::mprotect(
                    page as *mut libc::c_void,
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
        }
    }
    // SAFETY: an all-zero sigaction, filled in.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_segv as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    {
        let _g = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
        if uiommufd::faultsafe::enabled() {
            // another test of this process installed first: the contract's
            // other way for a later handler
            uiommufd::faultsafe::set_program_action(libc::SIGSEGV, &act);
        } else {
            // SAFETY: installing our handler before faultsafe's, which
            // then records it as the program's.
            let rc = unsafe { libc::sigaction(libc::SIGSEGV, &act, std::ptr::null_mut()) };
            assert_eq!(rc, 0);
        }
        install_locked();
    }
    let m = p::Mapping::new(1, libc::PROT_NONE, |_| 0);
    PAGE.store(m.addr as usize, Ordering::SeqCst);
    // SAFETY: the page is PROT_NONE; the chained handler unprotects it.
    let v = unsafe { std::ptr::read_volatile(m.addr as *const u8) };
    assert_eq!(v, 0);
    assert_eq!(HITS.load(Ordering::SeqCst), 1);
}
