//! The command's own machine code on 2 MiB pages.
//!
//! `migrate` reads the dirty bitmap right after a round that streamed all
//! of guest memory through the caches and TLBs: the read then finds the
//! engine's code cold, and on 4 KiB pages each of the ~40 code pages the
//! path runs through costs a page walk of its own (on a VM, a walk of the
//! guest's table and of the host's: ~250 ns each here). The same code on
//! one or two 2 MiB pages costs one or two walks. Executables are mapped
//! from their file in 4 KiB pages (the kernel maps file text huge only
//! with `CONFIG_READ_ONLY_THP_FOR_FS`, which Debian's kernels lack), so
//! the command moves its text itself, as large servers and browsers do:
//! its 2 MiB-aligned part is copied into anonymous memory backed by
//! transparent huge pages, made read+execute, and `mremap`ed over the
//! original in one step (the bytes are the same before and after, so code
//! running meanwhile, this function's own included, is unaffected).
//!
//! The functions of the bitmap read itself are also linked next to each
//! other at the start of the text (`hot-code.ld`), so that the read's
//! cold code is a few dozen consecutive lines rather than ~300 scattered
//! ones.
//!
//! The binary is linked with 2 MiB segment alignment (`build.rs`) so that
//! its text starts on a 2 MiB boundary; the last, partial 2 MiB of text is
//! moved too when nothing is mapped in the rest of it (the loader leaves
//! that gap unmapped). Profilers that symbolize through the file mapping
//! (`perf`) lose the moved range: `UIOMMUFD_HUGE_TEXT=0` keeps the text as
//! loaded. It only runs while the process has one thread (checked in
//! `/proc/self/task`): the gap check and the move are not atomic against
//! another thread mapping memory. One risk is left, as for every program
//! that does this: `mremap` unmaps the target before it moves the pages,
//! so a failure of the move itself (out of memory for page tables) would
//! leave no code there.

use std::fs;

const HUGE: u64 = 2 << 20;

/// One line of `/proc/self/maps`: `[start, end)`, permissions, path.
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    path: String,
}

fn mappings() -> Result<Vec<Mapping>, String> {
    let text =
        fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    let mut v = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3).unwrap_or("").to_string();
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        v.push(Mapping {
            start,
            end,
            perms: perms.to_string(),
            path,
        });
    }
    Ok(v)
}

/// Move the executable's text (its 2 MiB-aligned part) onto transparent
/// huge pages; returns the bytes moved (0 when there is no whole 2 MiB
/// page of it, or when `UIOMMUFD_HUGE_TEXT=0`). An error leaves the text
/// as it was.
pub fn remap() -> Result<u64, String> {
    if std::env::var("UIOMMUFD_HUGE_TEXT").as_deref() == Ok("0") {
        return Ok(0);
    }
    let threads = fs::read_dir("/proc/self/task")
        .map_err(|e| format!("/proc/self/task: {e}"))?
        .count();
    if threads != 1 {
        return Err(format!("{threads} threads run: the text stays"));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let exe = exe.to_string_lossy().into_owned();
    let maps = mappings()?;
    let Some(text) = maps
        .iter()
        .find(|m| m.path == exe && m.perms.starts_with("r-xp"))
    else {
        return Err(format!("no executable mapping of {exe} in /proc/self/maps"));
    };
    let lo = text.start.next_multiple_of(HUGE);
    // the last partial huge page too, when the rest of it is unmapped
    let up = text.end.next_multiple_of(HUGE);
    let free = maps.iter().all(|m| m.end <= text.end || m.start >= up);
    let hi = if free { up } else { text.end / HUGE * HUGE };
    if hi <= lo {
        return Ok(0);
    }
    let len = (hi - lo) as usize;
    // SAFETY: a fresh anonymous mapping of our own, with room to align.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + HUGE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let base = (raw as u64).next_multiple_of(HUGE);
    // the slack around the aligned part is not needed
    let head = (base - raw as u64) as usize;
    // SAFETY: unmapping the unaligned head and tail of our own mapping.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        let tail = HUGE as usize - head;
        if tail > 0 {
            libc::munmap((base as usize + len) as *mut libc::c_void, tail);
        }
    }
    let dst = base as *mut libc::c_void;
    // SAFETY: advice on our own mapping; it changes no contents.
    unsafe { libc::madvise(dst, len, libc::MADV_HUGEPAGE) };
    let n = (text.end.min(hi) - lo) as usize;
    // SAFETY: `lo..lo + n` lies in our text mapping (readable), and
    // `dst..dst + len` is ours and writable; they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(lo as *const u8, dst.cast::<u8>(), n) };
    // SAFETY: advice on our own mapping: make it huge now if the faults
    // above got small pages (best effort: the contents stay the same).
    unsafe { libc::madvise(dst, len, libc::MADV_COLLAPSE) };
    // SAFETY: protection change of our own mapping.
    if unsafe { libc::mprotect(dst, len, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: our own mapping, unused.
        unsafe { libc::munmap(dst, len) };
        return Err(format!("mprotect: {e}"));
    }
    // SAFETY: replaces `lo..hi` (our own text, byte for byte the same as
    // `dst`, and the unmapped rest of its last huge page) with `dst`.
    let r = unsafe {
        libc::mremap(
            dst,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            lo as *mut libc::c_void,
        )
    };
    if r == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        // SAFETY: our own mapping, unused.
        unsafe { libc::munmap(dst, len) };
        return Err(format!("mremap: {e}"));
    }
    Ok(hi - lo)
}

/// Bytes of the executable's moved text that are on huge pages now (from
/// `/proc/self/smaps`), for reports.
pub fn huge_bytes() -> u64 {
    let Ok(s) = fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut exec = false;
    let mut total = 0;
    for line in s.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some(k) if k.contains('-') && !k.ends_with(':') => {
                exec = f.next().is_some_and(|p| p.contains('x'));
            }
            Some("AnonHugePages:") if exec => {
                total += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
            }
            _ => {}
        }
    }
    total
}
