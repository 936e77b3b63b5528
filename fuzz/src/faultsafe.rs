//! Harness of the `faultsafe_copy` target: the engine's fault-safe copies
//! ([`uiommufd::faultsafe`], used by `SelfMemory` once enabled) against
//! memory that another thread unmaps, remaps, `mprotect`s and truncates
//! under them.
//!
//! Layout (fixed for the whole process, made once):
//!
//! * a **racing** window of [`RACE_PAGES`] pages that a background thread
//!   keeps changing at random: `mmap(MAP_FIXED)` of fresh memory over a
//!   page, `mprotect` to `PROT_NONE`/read-only/read-write, and a shared
//!   memfd mapping whose file is truncated under it (a touch past the end is
//!   `SIGBUS`);
//! * a **stable** window of [`STABLE_PAGES`] pages with fixed protections
//!   (read-write, read-only, `PROT_NONE`), with known contents;
//! * **wild** addresses nothing maps ([`WILD`]: NULL page, kernel half,
//!   non-canonical), which must always be `EFAULT`.
//!
//! Each window has a `PROT_NONE` guard page on both sides, so a copy that
//! runs off an end faults instead of touching other memory.
//!
//! Each input is a list of copies (read or write, window, offset, length).
//! Findings (panics): a copy that crashes the process (the fuzzer reports the
//! signal), any error but `EFAULT`, a copy into or out of the stable window
//! whose outcome differs from what its protections say (`Ok` exactly when
//! every byte is accessible, bytes read equal to the pattern, bytes of a
//! read-only page unchanged after a refused write).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

use uiommufd::user::{SelfMemory, UserMemory};

use super::input::Input;

/// Pages of the racing window.
const RACE_PAGES: usize = 8;
/// Pages of the stable window: RW, RW, RO, NONE, RW, NONE.
const STABLE_PAGES: usize = 6;
/// Page size (checked at setup).
const PAGE: usize = 4096;

/// Stable page protections. (No page is ever unmapped: another thread's
/// `mmap` could land in the hole; unmapped addresses are tested with
/// [`WILD`] ones that nothing maps.)
const STABLE: [libc::c_int; STABLE_PAGES] = [
    libc::PROT_READ | libc::PROT_WRITE,
    libc::PROT_READ | libc::PROT_WRITE,
    libc::PROT_READ,
    libc::PROT_NONE,
    libc::PROT_READ | libc::PROT_WRITE,
    libc::PROT_NONE,
];

/// Addresses no mapping can hold: the NULL page, the kernel half,
/// non-canonical ones, the top of the address space.
const WILD: [u64; 6] = [
    0,
    8,
    0xffff_8000_0000_0000,
    0x8000_0000_0000_0000,
    0x0000_8000_0000_0000,
    u64::MAX - 16,
];

static SETUP: Once = Once::new();
static RACE_BASE: AtomicUsize = AtomicUsize::new(0);
static STABLE_BASE: AtomicUsize = AtomicUsize::new(0);
static RUNNING: AtomicBool = AtomicBool::new(false);

/// The byte the stable window holds at `off`.
fn pattern(off: usize) -> u8 {
    (off.wrapping_mul(31) ^ (off >> 12)) as u8
}

fn mmap_at(addr: usize, len: usize, prot: libc::c_int, flags: libc::c_int, fd: i32) -> usize {
    // SAFETY: mapping anonymous or memfd memory; MAP_FIXED only ever over
    // the harness's own windows.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, fd, 0) };
    assert_ne!(p, libc::MAP_FAILED, "mmap failed");
    p as usize
}

/// Fresh private read-write memory over the page at `page`.
fn fresh_page(page: usize) {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    mmap_at(
        page,
        PAGE,
        rw,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
        -1,
    );
}

/// Install the engine's handler (chaining to libFuzzer's), map the
/// windows and start the racing thread; once per process.
fn setup() {
    SETUP.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert_eq!(ps, PAGE as libc::c_long);
        // the engine's handler; the fuzzer's crash reporter becomes the
        // chained disposition
        if !uiommufd::faultsafe::install() {
            return;
        }
        // each window sits between two PROT_NONE guard pages of its own, so
        // that copies running off either end never reach other memory
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let guarded = |pages: usize| {
            let all = mmap_at(0, (pages + 2) * PAGE, libc::PROT_NONE, anon, -1);
            mmap_at(all + PAGE, pages * PAGE, rw, anon | libc::MAP_FIXED, -1)
        };
        let race = guarded(RACE_PAGES);
        let stable = guarded(STABLE_PAGES);
        for off in 0..STABLE_PAGES * PAGE {
            // SAFETY: the stable window is ours and still read-write.
            unsafe { *((stable + off) as *mut u8) = pattern(off) };
        }
        for (i, prot) in STABLE.iter().enumerate() {
            let page = (stable + i * PAGE) as *mut libc::c_void;
            // SAFETY: changing our own stable window's pages.
            unsafe { libc::mprotect(page, PAGE, *prot) };
        }
        RACE_BASE.store(race, Ordering::Release);
        STABLE_BASE.store(stable, Ordering::Release);
        RUNNING.store(true, Ordering::Release);
        std::thread::spawn(move || racer(race));
    });
}

/// The racing thread: changes the racing window for ever.
fn racer(base: usize) {
    // SAFETY: a memfd for the truncation case.
    let mfd = unsafe { libc::memfd_create(c"uiommufd-fuzz-race".as_ptr(), libc::MFD_CLOEXEC) };
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let page = base + (x as usize % RACE_PAGES) * PAGE;
        let p = page as *mut libc::c_void;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: every change stays inside the racing window.
        unsafe {
            match (x >> 32) % 5 {
                // fresh memory replaces the page at once (never a hole
                // another thread's mmap could take)
                0 => fresh_page(page),
                1 => {
                    libc::mprotect(p, PAGE, libc::PROT_NONE);
                    std::thread::yield_now();
                    libc::mprotect(p, PAGE, rw);
                }
                2 => {
                    libc::mprotect(p, PAGE, libc::PROT_READ);
                    std::thread::yield_now();
                    libc::mprotect(p, PAGE, rw);
                }
                3 if mfd >= 0 => {
                    // a shared file page, then the file cut under it
                    libc::ftruncate(mfd, PAGE as libc::off_t);
                    mmap_at(page, PAGE, rw, libc::MAP_SHARED | libc::MAP_FIXED, mfd);
                    libc::ftruncate(mfd, 0);
                    std::thread::yield_now();
                    fresh_page(page);
                }
                _ => std::thread::yield_now(),
            }
        }
    }
}

/// Whether every byte of the stable window's `[off, off + len)` allows the
/// access, and whether the range lies inside the window.
fn stable_allows(off: usize, len: usize, write: bool) -> bool {
    (off..off + len).step_by(1).all(|o| {
        let page = o / PAGE;
        match STABLE.get(page).copied() {
            Some(p) if write => p & libc::PROT_WRITE != 0,
            Some(p) => p & libc::PROT_READ != 0,
            None => false,
        }
    })
}

/// Run one input.
pub fn run(data: &[u8]) {
    setup();
    if !RUNNING.load(Ordering::Acquire) {
        return; // no fault-safe copy on this architecture
    }
    let race = RACE_BASE.load(Ordering::Acquire);
    let stable = STABLE_BASE.load(Ordering::Acquire);
    let mut inp = Input::new(data);
    let mut buf = vec![0u8; (STABLE_PAGES + 1) * PAGE];
    for _ in 0..64 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let write = op & 1 != 0;
        let racing = op & 2 != 0;
        if op & 4 != 0 {
            let addr = WILD[inp.below(WILD.len())];
            let len = 1 + inp.below(64);
            let r = if write {
                SelfMemory.write(addr, &buf[..len])
            } else {
                SelfMemory.read(addr, &mut buf[..len])
            };
            let e = r.expect_err("a wild address was accessible");
            assert_eq!(e.errno().0, libc::EFAULT);
            continue;
        }
        let (base, pages) = if racing {
            (race, RACE_PAGES)
        } else {
            (stable, STABLE_PAGES)
        };
        // offsets may start before or end after the window by a page
        let span = (pages + 2) * PAGE;
        let off = inp.u32() as usize % span;
        let len = (inp.u32() as usize % (2 * PAGE + 64)).min(buf.len());
        let addr = (base + off) as u64 - PAGE as u64;
        let rel = off.wrapping_sub(PAGE);
        let r = if write {
            for (i, b) in buf[..len].iter_mut().enumerate() {
                *b = pattern(rel.wrapping_add(i));
            }
            SelfMemory.write(addr, &buf[..len])
        } else {
            SelfMemory.read(addr, &mut buf[..len])
        };
        if let Err(e) = &r {
            assert_eq!(e.errno().0, libc::EFAULT, "copy failed with {e}");
        }
        if racing || len == 0 {
            continue;
        }
        // the stable window: exact semantics
        let inside = off >= PAGE && off - PAGE + len <= STABLE_PAGES * PAGE;
        let allowed = inside && stable_allows(rel, len, write);
        assert_eq!(
            r.is_ok(),
            allowed,
            "stable copy at +{rel:#x} len {len} write {write}: {r:?}"
        );
        if r.is_ok() && !write {
            for (i, b) in buf[..len].iter().enumerate() {
                assert_eq!(*b, pattern(rel + i), "wrong byte read at +{:#x}", rel + i);
            }
        }
    }
    // the read-only stable page never changed (a refused write wrote nothing)
    let ro = stable + 2 * PAGE;
    for o in 0..PAGE {
        // SAFETY: the read-only stable page is mapped readable for ever.
        let b = unsafe { *((ro + o) as *const u8) };
        assert_eq!(
            b,
            pattern(2 * PAGE + o),
            "read-only page changed at +{o:#x}"
        );
    }
}
