//! Fault-safe copies between the engine and user memory without a system
//! call: the kernel's exception-table technique, in userspace.
//!
//! [`copy`] is one `rep movsb` (x86-64). When it touches an unmapped,
//! `PROT_NONE`, read-only (for writes) or truncated-file page, the CPU
//! raises `SIGSEGV`/`SIGBUS`; [`handler`] recognises the faulting
//! instruction by its address, moves the saved instruction pointer to the
//! copy's exit, and the copy returns the number of bytes it did not copy —
//! `EFAULT` for the caller, never a crash. Every other fault is passed on
//! to the program's own disposition ([`set_program_action`]): its handler
//! runs with the mask and flags it asked for (`SA_SIGINFO`, `SA_NODEFER`,
//! `SA_RESETHAND`), and a default action still kills the process with the
//! right signal and core dump.
//!
//! The handler must stay installed for as long as copies use it, so this
//! is **off until someone owns the two signals**: the LD_PRELOAD shim turns
//! it on ([`enable`]) after installing [`handler`] and interposing
//! `sigaction`/`signal`, which from then on record the program's wishes
//! here instead of replacing our handler. Without the shim (a Rust program
//! using the engine directly), [`crate::user::SelfMemory`] keeps using
//! `process_vm_readv`/`process_vm_writev`, which need no handler.
//!
//! The same exception-table entries cover three more routines, each with
//! one instruction that may fault: [`compare_exchange`] (a table entry's
//! A/D bits), [`load_u64`] (a table entry) and [`or_words`] (whether a
//! range of user words is all zero, without copying it).
//!
//! Trade-off: the syscall path costs ~1.2 µs per copy (a GUP walk of the
//! user range); this path costs a memcpy. It needs the process's
//! `SIGSEGV`/`SIGBUS` dispositions, which a shim can take over faithfully
//! but a library cannot; a raw `rt_sigaction` system call by the program
//! still bypasses it (as it bypasses every libc interposer).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// Whether [`copy`] may be used (the handler is installed and owned).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The program's own disposition of one signal, as it last set it.
struct ProgramAction {
    handler: AtomicUsize,
    flags: AtomicI32,
    /// Signals 1..=64 of its `sa_mask`.
    mask: AtomicU64,
}

impl ProgramAction {
    const fn new() -> Self {
        ProgramAction {
            handler: AtomicUsize::new(libc::SIG_DFL),
            flags: AtomicI32::new(0),
            mask: AtomicU64::new(0),
        }
    }
}

static SEGV: ProgramAction = ProgramAction::new();
static BUS: ProgramAction = ProgramAction::new();

fn slot(sig: libc::c_int) -> Option<&'static ProgramAction> {
    match sig {
        libc::SIGSEGV => Some(&SEGV),
        libc::SIGBUS => Some(&BUS),
        _ => None,
    }
}

/// Whether `sig` is one whose disposition this module owns.
pub fn owns(sig: libc::c_int) -> bool {
    slot(sig).is_some()
}

/// The first 64 signals of a `sigset_t` (all the kernel has).
fn mask_bits(set: &libc::sigset_t) -> u64 {
    // SAFETY: sigset_t is at least 8 bytes of plain data; glibc keeps
    // signals 1..=64 in its first word.
    unsafe { std::ptr::read_unaligned((set as *const libc::sigset_t).cast::<u64>()) }
}

/// Record the program's disposition of `sig` (`SIGSEGV` or `SIGBUS`; other
/// signals are ignored), for [`handler`] to pass foreign faults to.
pub fn set_program_action(sig: libc::c_int, act: &libc::sigaction) {
    if let Some(s) = slot(sig) {
        s.handler.store(act.sa_sigaction, Ordering::Relaxed);
        s.flags.store(act.sa_flags, Ordering::Relaxed);
        s.mask.store(mask_bits(&act.sa_mask), Ordering::Relaxed);
    }
}

/// The program's disposition of `sig` as it last set it (`SIG_DFL` for
/// signals this module does not own).
pub fn program_action(sig: libc::c_int) -> libc::sigaction {
    // SAFETY: an all-zero sigaction is SIG_DFL with no flags and no mask.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    if let Some(s) = slot(sig) {
        act.sa_sigaction = s.handler.load(Ordering::Relaxed);
        act.sa_flags = s.flags.load(Ordering::Relaxed);
        let bits = s.mask.load(Ordering::Relaxed);
        // SAFETY: writing the first word of a zeroed sigset_t.
        unsafe {
            std::ptr::write_unaligned(
                (&mut act.sa_mask as *mut libc::sigset_t).cast::<u64>(),
                bits,
            )
        };
    }
    act
}

/// Let [`copy`] be used: call once [`handler`] is installed for `SIGSEGV`
/// and `SIGBUS` and nothing can replace it (see the module docs). `false`
/// where the architecture has no fault-safe copy.
pub fn enable() -> bool {
    if cfg!(target_arch = "x86_64") {
        ENABLED.store(true, Ordering::Release);
        true
    } else {
        false
    }
}

/// Whether [`copy`] is in use.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Opt-in for programs that use the engine directly (no LD_PRELOAD shim):
/// install [`handler`] for `SIGSEGV` and `SIGBUS` with libc's `sigaction`
/// and turn fault-safe copies on, so that user-memory copies
/// ([`crate::user::SelfMemory`], access reads and writes by IOVA) run at
/// `memcpy` speed instead of through `process_vm_readv`/`process_vm_writev`
/// (~1 µs a call). Returns whether fast copies are on; idempotent, and
/// `true` at once when they already are (e.g. the shim enabled them).
///
/// The dispositions installed before (a library's, Rust's own stack
/// overflow reporter) are recorded with [`set_program_action`]: a fault
/// that is not one of our copies is passed on to them, with their mask and
/// flags, or takes the default action, so crashes still crash.
///
/// # Contract
///
/// From then on **the handler must stay installed**. A later `sigaction`
/// (or `signal`) for `SIGSEGV` or `SIGBUS` by the program must either
/// chain to the handler it replaces (save the old action and call it for
/// faults it does not own, as sanitizers and JIT runtimes do), or record
/// the program's wishes here with [`set_program_action`] instead of
/// installing them — which is what the preload shim does for every program
/// (`uiommufd run`). A handler that does neither turns a bad user pointer
/// into a crash instead of `EFAULT`. Call it early, before threads that
/// copy user memory start, and not from a signal handler.
///
/// `false` (nothing changed) where the architecture has no fault-safe copy
/// or `sigaction` failed; copies then keep using the system calls.
pub fn install() -> bool {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if !cfg!(target_arch = "x86_64") {
        tracing::debug!("faultsafe::install: no fault-safe copy on this architecture");
        return false;
    }
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if enabled() {
        return true;
    }
    let mut installed: Vec<(libc::c_int, libc::sigaction)> = Vec::new();
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handler as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // Record the current disposition first, so that a foreign fault
        // arriving right after the switch is passed on correctly.
        // SAFETY: reading the disposition into our own `old`.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0 {
            set_program_action(sig, &old);
        }
        // SAFETY: installing a valid handler and reading the previous
        // disposition into our own `old`.
        if unsafe { libc::sigaction(sig, &act, &mut old) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(
                "faultsafe::install: sigaction({sig}) failed: {e}; fast copies stay off"
            );
            for (s, prev) in installed {
                // SAFETY: restoring the disposition read above.
                unsafe { libc::sigaction(s, &prev, std::ptr::null_mut()) };
            }
            return false;
        }
        // what was really replaced (another thread may have changed it)
        set_program_action(sig, &old);
        installed.push((sig, old));
    }
    enable()
}

#[cfg(target_arch = "x86_64")]
mod arch {
    /// `copy(dst, src, len) -> bytes not copied`. The only instruction that
    /// may fault is the `rep movsb` at [`INSN`] bytes into the function; a
    /// fault there resumes at [`FIXUP`] with rcx = the bytes left. A naked
    /// function (no prologue, so the offsets are exact) rather than global
    /// assembly: its symbol is private to each copy of the crate, so two
    /// copies linked into one binary (a test and a crate it depends on) do
    /// not clash.
    #[unsafe(naked)]
    pub unsafe extern "C" fn copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
        std::arch::naked_asm!("mov rcx, rdx", "rep movsb", "mov rax, rcx", "ret")
    }

    /// Offset of `rep movsb` in [`copy`] (`mov rcx, rdx` is 3 bytes).
    pub const INSN: usize = 3;
    /// Offset of the instruction after it (`rep movsb` is 2 bytes).
    pub const FIXUP: usize = 5;

    /// `cas64(ptr, old, new) -> 0` when `*ptr` was `old` and is now `new`,
    /// 1 when it held something else (left unchanged), 2 when `ptr` faulted.
    /// The only instruction that may fault is the `lock cmpxchg` at
    /// [`CAS_INSN`]; a fault there resumes at [`CAS_FIXUP`], which returns 2.
    #[unsafe(naked)]
    pub unsafe extern "C" fn cas64(ptr: *mut u64, old: u64, new: u64) -> u64 {
        std::arch::naked_asm!(
            "mov rax, rsi",
            "lock cmpxchg qword ptr [rdi], rdx",
            "mov eax, 0",
            "setne al",
            "ret",
            "mov eax, 2",
            "ret"
        )
    }

    /// Offset of `lock cmpxchg` in [`cas64`] (`mov rax, rsi` is 3 bytes).
    pub const CAS_INSN: usize = 3;
    /// Offset of the fault path (`lock cmpxchg` 5, `mov eax, 0` 5,
    /// `setne al` 3, `ret` 1).
    pub const CAS_FIXUP: usize = 17;

    /// `load64(ptr, out) -> 0` with `*out = *ptr`, or 1 when `ptr`
    /// faulted (`*out` untouched). The only instruction that may fault is
    /// the load at offset 0; a fault there resumes at [`LOAD_FIXUP`].
    #[unsafe(naked)]
    pub unsafe extern "C" fn load64(ptr: *const u64, out: *mut u64) -> u64 {
        std::arch::naked_asm!(
            "mov rax, qword ptr [rdi]",
            "mov qword ptr [rsi], rax",
            "xor eax, eax",
            "ret",
            "mov eax, 1",
            "ret"
        )
    }

    /// Offset of the fault path of [`load64`] (two 3-byte moves, the
    /// 2-byte `xor`, `ret`).
    pub const LOAD_FIXUP: usize = 9;

    /// What [`or_pairs`] returns (in `rax`, `rdx`).
    #[repr(C)]
    pub struct OrScan {
        /// The OR of every word read.
        pub or: u64,
        /// 1 when a load faulted (`or` is then 0).
        pub fault: u64,
    }

    /// `or_pairs(ptr, pairs)`: the OR of the `2 * pairs` 64-bit words at
    /// `ptr` (any alignment), 16 bytes per load. The only instruction that
    /// may fault is the `movdqu` at [`OR_INSN`]; a fault there resumes at
    /// [`OR_FIXUP`]. It writes no memory.
    #[unsafe(naked)]
    pub unsafe extern "C" fn or_pairs(ptr: *const u64, pairs: usize) -> OrScan {
        std::arch::naked_asm!(
            "pxor xmm0, xmm0",
            "test rsi, rsi",
            "jz 2f",
            "1:",
            "movdqu xmm1, xmmword ptr [rdi]",
            "por xmm0, xmm1",
            "add rdi, 16",
            "dec rsi",
            "jnz 1b",
            "2:",
            "movq rax, xmm0",
            "pshufd xmm1, xmm0, 0xee",
            "movq rdx, xmm1",
            "or rax, rdx",
            "xor edx, edx",
            "ret",
            "mov edx, 1",
            "xor eax, eax",
            "ret"
        )
    }

    /// Offset of the `movdqu` in [`or_pairs`] (`pxor` 4, `test` 3, `jz` 2).
    pub const OR_INSN: usize = 9;
    /// Offset of its fault path (the loop's `movdqu` 4, `por` 4, `add` 4,
    /// `dec` 3, `jnz` 2; the exit's three 5-byte moves, `or` 3, `xor` 2,
    /// `ret` 1).
    pub const OR_FIXUP: usize = 47;

    /// If `ctx` stopped at the copy, compare-exchange, load or OR-scan
    /// instruction, redirect it to its fixup.
    ///
    /// # Safety
    /// `ctx` is the `ucontext_t` the kernel gave a signal handler.
    pub unsafe fn fixup(ctx: *mut libc::c_void) -> bool {
        let uc = ctx.cast::<libc::ucontext_t>();
        let rip = libc::REG_RIP as usize;
        // SAFETY: the caller passes the handler's ucontext.
        let gregs = unsafe { &mut (*uc).uc_mcontext.gregs };
        // (routine, offset of its one faulting instruction, of its fixup)
        let table: [(usize, usize, usize); 4] = [
            (copy as *const () as usize, INSN, FIXUP),
            (cas64 as *const () as usize, CAS_INSN, CAS_FIXUP),
            (load64 as *const () as usize, 0, LOAD_FIXUP),
            (or_pairs as *const () as usize, OR_INSN, OR_FIXUP),
        ];
        for (base, insn, fix) in table {
            if gregs[rip] == (base + insn) as i64 {
                gregs[rip] = (base + fix) as i64;
                return true;
            }
        }
        false
    }

    /// The mask the interrupted code ran with (signals 1..=64).
    ///
    /// # Safety
    /// As [`fixup`].
    pub unsafe fn interrupted_mask(ctx: *mut libc::c_void) -> u64 {
        let uc = ctx.cast::<libc::ucontext_t>();
        // SAFETY: the caller passes the handler's ucontext.
        super::mask_bits(unsafe { &(*uc).uc_sigmask })
    }
}

/// Copy `len` bytes from `src` to `dst`, either of which may be a user
/// pointer; returns the number of bytes **not** copied (0 on success).
///
/// # Safety
/// [`enabled`] must be true. The non-user side must be valid for `len`
/// bytes; the user side may be anything: a fault there ends the copy.
#[inline]
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: forwarded contract; faults on the user side are fixed up
        // by `handler`.
        unsafe { arch::copy(dst, src, len) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, src);
        len
    }
}

/// What [`compare_exchange`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// The word held the expected value and now holds the new one.
    Swapped,
    /// The word held something else; nothing was written.
    Differs,
    /// The address faulted (unmapped, or not writable).
    Fault,
}

/// An atomic compare-exchange (sequentially consistent) of the 64-bit word
/// at `ptr`, which may be a user pointer: a fault is [`Cas::Fault`], never
/// a crash — the A and D bits a device's IOMMU writes back into tables in
/// the program's memory.
///
/// # Safety
/// [`enabled`] must be true; `ptr` must be 8-byte aligned.
#[inline]
pub unsafe fn compare_exchange(ptr: *mut u64, old: u64, new: u64) -> Cas {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: forwarded contract; a fault at the cmpxchg is fixed up by
        // `handler`.
        match unsafe { arch::cas64(ptr, old, new) } {
            0 => Cas::Swapped,
            1 => Cas::Differs,
            _ => Cas::Fault,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ptr, old, new);
        Cas::Fault
    }
}

/// The OR of the `n` 64-bit words at `ptr` (any alignment), which may be
/// user memory: `None` where a word faults, never a crash. Cheaper than a
/// [`copy`] into a buffer and a pass over it, for "is it all zero?" over
/// a caller's dirty bitmap (type1's read overwrites every word of it and
/// skips the words that already hold zero).
///
/// # Safety
/// [`enabled`] must be true.
pub unsafe fn or_words(ptr: *const u64, n: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: forwarded contract; a fault at the load is fixed up by
        // `handler`.
        let r = unsafe { arch::or_pairs(ptr, n / 2) };
        if r.fault != 0 {
            return None;
        }
        if n.is_multiple_of(2) {
            return Some(r.or);
        }
        // SAFETY: as above; the last word of an odd count (`mov` takes any
        // alignment).
        unsafe { load_u64(ptr.wrapping_add(n - 1)) }.map(|w| w | r.or)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ptr, n);
        None
    }
}

/// Load the 64-bit word at `ptr`, which may be a user pointer: `None`
/// where it faults (unmapped or unreadable), never a crash — a table entry
/// an IOMMU walk reads from the program's memory, without the set-up of a
/// general copy.
///
/// # Safety
/// [`enabled`] must be true. (Any alignment: x86-64's `mov` takes it.)
#[inline]
pub unsafe fn load_u64(ptr: *const u64) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut v = 0u64;
        // SAFETY: forwarded contract; `v` is ours; a fault at the load is
        // fixed up by `handler`.
        match unsafe { arch::load64(ptr, &mut v) } {
            0 => Some(v),
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ptr;
        None
    }
}

/// `rt_sigaction(sig, SIG_DFL)` without libc (whose `sigaction` the shim
/// interposes).
fn reset_to_default(sig: libc::c_int) {
    // kernel `struct sigaction`: handler, flags, restorer, mask
    let act: [u64; 4] = [libc::SIG_DFL as u64, 0, 0, 0];
    // SAFETY: a valid kernel sigaction for SIG_DFL; no old action wanted.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act.as_ptr(),
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

fn set_mask(bits: u64) {
    // SAFETY: an 8-byte kernel sigset; no old mask wanted.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &bits as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

/// The `SIGSEGV`/`SIGBUS` handler to install with `SA_SIGINFO |
/// SA_ONSTACK | SA_RESTART`. Async-signal-safe: atomics and raw system
/// calls only.
///
/// # Safety
/// Only for the kernel to call, as a signal handler.
pub unsafe extern "C" fn handler(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `ctx` is this handler's ucontext.
    if unsafe { arch::fixup(ctx) } {
        return;
    }
    let Some(s) = slot(sig) else { return };
    let h = s.handler.load(Ordering::Relaxed);
    let flags = s.flags.load(Ordering::Relaxed);
    // si_code > 0: raised by the kernel for a fault (re-executing the
    // instruction raises it again); <= 0: sent by kill/tgkill/sigqueue.
    // SAFETY: the kernel's siginfo for this signal.
    let from_fault = !info.is_null() && unsafe { (*info).si_code } > 0;
    if h == libc::SIG_IGN {
        if from_fault {
            // the kernel forces the default action for an ignored fault
            reset_to_default(sig);
        }
        return;
    }
    if h == libc::SIG_DFL {
        reset_to_default(sig);
        if !from_fault {
            // SAFETY: re-sending the signal to this thread, now with the
            // default action; it is delivered when the handler returns.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::syscall(libc::SYS_getpid),
                    libc::syscall(libc::SYS_gettid),
                    sig,
                )
            };
        }
        return;
    }
    // The program's handler, with the mask the kernel would give it (the
    // kernel restores the interrupted mask when we return).
    #[cfg(target_arch = "x86_64")]
    {
        let sigbit = 1u64 << (sig - 1);
        // SAFETY: `ctx` is this handler's ucontext.
        let mut mask = unsafe { arch::interrupted_mask(ctx) } | s.mask.load(Ordering::Relaxed);
        if flags & libc::SA_NODEFER == 0 {
            mask |= sigbit;
        }
        set_mask(mask);
    }
    if flags & libc::SA_RESETHAND != 0 {
        s.handler.store(libc::SIG_DFL, Ordering::Relaxed);
        s.flags.store(0, Ordering::Relaxed);
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program installed this address as an SA_SIGINFO
        // handler; it gets the kernel's arguments.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute::<usize, _>(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the program installed this address as a plain handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute::<usize, _>(h) };
        f(sig);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn install() {
        assert!(super::install());
    }

    fn map(prot: libc::c_int) -> *mut u8 {
        // SAFETY: a fresh anonymous mapping of two pages.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    #[test]
    fn the_copy_instruction_is_where_the_handler_expects_it() {
        let f = arch::copy as *const () as *const u8;
        // SAFETY: reading the first bytes of our own function's code.
        let code = unsafe { std::slice::from_raw_parts(f, arch::FIXUP + 3) };
        assert_eq!(&code[arch::INSN..arch::FIXUP], &[0xf3, 0xa4], "rep movsb");
        assert_eq!(code[..arch::INSN].len(), 3);
    }

    /// The bytes of routine `f`'s code at each `(offset, bytes)`.
    fn assert_code(f: *const (), at: &[(usize, &[u8])]) {
        let len = at.iter().map(|(o, b)| o + b.len()).max().unwrap_or(0);
        // SAFETY: reading the first bytes of our own function's code.
        let code = unsafe { std::slice::from_raw_parts(f.cast::<u8>(), len) };
        for &(o, b) in at {
            assert_eq!(&code[o..o + b.len()], b, "at offset {o}");
        }
    }

    #[test]
    fn the_cas_instruction_is_where_the_handler_expects_it() {
        assert_code(
            arch::cas64 as *const (),
            &[
                // lock cmpxchg [rdi], rdx
                (arch::CAS_INSN, &[0xf0, 0x48, 0x0f, 0xb1, 0x17]),
                // the fault path: mov eax, 2; ret
                (arch::CAS_FIXUP, &[0xb8, 2, 0, 0, 0, 0xc3]),
            ],
        );
    }

    #[test]
    fn the_load_instruction_is_where_the_handler_expects_it() {
        assert_code(
            arch::load64 as *const (),
            &[
                // mov rax, [rdi]
                (0, &[0x48, 0x8b, 0x07]),
                // the fault path: mov eax, 1; ret
                (arch::LOAD_FIXUP, &[0xb8, 1, 0, 0, 0, 0xc3]),
            ],
        );
    }

    #[test]
    fn the_or_scan_load_is_where_the_handler_expects_it() {
        assert_code(
            arch::or_pairs as *const (),
            &[
                // movdqu xmm1, [rdi]
                (arch::OR_INSN, &[0xf3, 0x0f, 0x6f, 0x0f]),
                // the fault path: mov edx, 1; xor eax, eax; ret
                (arch::OR_FIXUP, &[0xba, 1, 0, 0, 0, 0x31, 0xc0, 0xc3]),
            ],
        );
    }

    #[test]
    fn or_words_reads_any_count_and_alignment_and_faults() {
        install();
        let mut v = vec![0u64; 67];
        // SAFETY: every call below reads words of `v` only.
        unsafe {
            for n in [0, 1, 2, 3, 66, 67] {
                assert_eq!(or_words(v.as_ptr(), n), Some(0), "{n}");
            }
            v[66] = 1 << 40;
            assert_eq!(or_words(v.as_ptr(), 66), Some(0));
            assert_eq!(or_words(v.as_ptr(), 67), Some(1 << 40));
            v[5] = 3;
            assert_eq!(or_words(v.as_ptr(), 6), Some(3));
            assert_eq!(or_words(v.as_ptr(), 5), Some(0));
            // unaligned: bytes 4.. of the buffer
            let b = v.as_ptr().cast::<u8>().add(4).cast::<u64>();
            assert_eq!(or_words(b, 5), Some(3 << 32));
        }
        let none = map(libc::PROT_NONE);
        let rw = map(libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: unmapping our own second page; the scans below fault
        // (in a pair, in the odd last word) and are fixed up.
        unsafe {
            libc::munmap(rw.add(4096).cast(), 4096);
            assert_eq!(or_words(none.cast(), 4), None);
            assert_eq!(or_words(rw.cast(), 512), Some(0));
            assert_eq!(or_words(rw.cast(), 514), None);
            assert_eq!(or_words(rw.cast(), 513), None);
            assert_eq!(or_words(rw.add(4096 - 8).cast(), 1), Some(0));
            libc::munmap(none.cast(), 8192);
            libc::munmap(rw.cast(), 4096);
        }
    }

    #[test]
    fn load_reads_and_faults() {
        install();
        let w = 0x1234_5678_9abc_def0u64;
        // SAFETY: a valid aligned word.
        assert_eq!(unsafe { load_u64(&w) }, Some(w));
        let none = map(libc::PROT_NONE);
        // SAFETY: faults and is fixed up.
        unsafe {
            assert_eq!(load_u64(none.cast()), None);
            libc::munmap(none.cast(), 8192);
        }
    }

    #[test]
    fn compare_exchange_swaps_differs_and_faults() {
        install();
        let mut w = 5u64;
        // SAFETY: a valid aligned word.
        assert_eq!(unsafe { compare_exchange(&mut w, 5, 9) }, Cas::Swapped);
        assert_eq!(w, 9);
        // SAFETY: as above.
        assert_eq!(unsafe { compare_exchange(&mut w, 5, 1) }, Cas::Differs);
        assert_eq!(w, 9);
        let none = map(libc::PROT_NONE);
        let ro = map(libc::PROT_READ);
        // SAFETY: both fault and are fixed up.
        unsafe {
            assert_eq!(compare_exchange(none.cast(), 0, 1), Cas::Fault);
            assert_eq!(compare_exchange(ro.cast(), 0, 1), Cas::Fault);
            libc::munmap(none.cast(), 8192);
            libc::munmap(ro.cast(), 8192);
        }
    }

    #[test]
    fn copies_and_faults() {
        install();
        let src = [7u8; 100];
        let mut dst = [0u8; 100];
        // SAFETY: both buffers valid.
        assert_eq!(unsafe { copy(dst.as_mut_ptr(), src.as_ptr(), 100) }, 0);
        assert_eq!(dst, src);
        // unreadable source
        let none = map(libc::PROT_NONE);
        // SAFETY: dst valid; the source faults and is fixed up.
        assert_eq!(unsafe { copy(dst.as_mut_ptr(), none, 100) }, 100);
        // read-only destination: nothing written
        let ro = map(libc::PROT_READ);
        // SAFETY: as above.
        assert_eq!(unsafe { copy(ro, src.as_ptr(), 100) }, 100);
        // a copy running into a hole copies up to it
        let rw = map(libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: unmapping our own second page.
        unsafe { libc::munmap(rw.add(4096).cast(), 4096) };
        let big = vec![1u8; 8192];
        // SAFETY: the destination's second page faults.
        let left = unsafe { copy(rw, big.as_ptr(), 8192) };
        assert_eq!(left, 4096);
        // SAFETY: unmapping what we mapped.
        unsafe {
            libc::munmap(none.cast(), 8192);
            libc::munmap(ro.cast(), 8192);
            libc::munmap(rw.cast(), 4096);
        }
    }
}
