//! Pins that hold: `munmap`, `mremap`, `madvise` and `mmap(MAP_FIXED)`
//! over memory an IOAS has pinned (for a domain or an access) hand the
//! pinned pages to the engine's custody first ([`uiommufd::custody`]), so
//! that DMA through the domains and the accesses' copies keep reaching
//! the same pages until they are unpinned, while the program's call does
//! exactly what it asked (`munmap` unmaps, `MAP_FIXED` gives fresh memory,
//! `MADV_DONTNEED` gives zero pages, `mremap` moves the data, and the
//! IOMMU follows it there, as with the kernel's pinned pages).
//!
//! While no page is pinned each hook costs one atomic load before it
//! forwards; a range far from every pinned page costs a walk of the pages
//! registry, allocating nothing (the shim's own allocator unmaps and
//! advises its memory through these very hooks). Calls from inside the
//! shim or the engine (a critical section is open) and from a `vfork`
//! child are forwarded untouched.
//!
//! **Limit:** glibc's own calls do not go through these symbols: `free()`
//! of a large `malloc` chunk unmaps it with an internal `munmap`, and
//! `realloc` may `mremap` it, both invisible here. A program that frees a
//! buffer still mapped in an IOAS loses those pages to the IOMMU as
//! before (the kernel would keep them).

use std::ffi::{c_int, c_void};

use uiommufd::custody::{self, Reason};

use crate::path::set_errno;
use crate::{real, sync};

/// Take the pinned pages of `[addr, addr + len)` into custody before the
/// program's call `why` (nothing unless pages are pinned there).
fn before(addr: *mut c_void, len: usize, why: Reason) {
    if !custody::active() || sync::nested() || sync::foreign() {
        return;
    }
    let _ = crate::guard(|| {
        let _c = sync::enter();
        if let Err(e) = custody::take(addr as u64, len as u64, why) {
            tracing::debug!("custody before the program's {why:?}: {e}");
        }
    });
}

/// For the `mmap` hooks: a `MAP_FIXED` (not `MAP_FIXED_NOREPLACE`, which
/// fails over a mapping) replaces what the range holds.
pub(crate) fn before_map(addr: *mut c_void, len: usize, flags: c_int) {
    if flags & libc::MAP_FIXED != 0 && flags & libc::MAP_FIXED_NOREPLACE == 0 {
        before(addr, len, Reason::Replace);
    }
}

/// `munmap(2)`: pinned pages in the range go to custody first.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: libc::size_t) -> c_int {
    let Some(real) = real::munmap() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    before(addr, len, Reason::Unmap);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(addr, len) }
}

/// `MADV_DONTNEED_LOCKED` (Linux 5.18), missing from older `libc` crates.
const MADV_DONTNEED_LOCKED: c_int = 24;

/// `madvise(2)`: the advice that drops pages (`MADV_DONTNEED`,
/// `MADV_DONTNEED_LOCKED`, `MADV_FREE`) leaves pinned private pages with
/// the IOMMU and the program zero pages.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: libc::size_t, advice: c_int) -> c_int {
    let Some(real) = real::madvise() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if matches!(
        advice,
        libc::MADV_DONTNEED | MADV_DONTNEED_LOCKED | libc::MADV_FREE
    ) {
        before(addr, len, Reason::Discard);
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(addr, len, advice) }
}

/// `mremap(2)`: pinned pages that move stay with the IOMMU, which follows
/// them to their new address; those a shrink or a `MREMAP_FIXED`
/// destination drops go to custody.
///
/// The libc function is variadic (`new_address` only with
/// `MREMAP_FIXED`); on x86-64 and aarch64 a fifth pointer argument is
/// passed in a register either way, and it is only read when the flag
/// says it was given.
///
/// # Safety
/// Same contract as the libc function.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: libc::size_t,
    new_len: libc::size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let Some(real) = real::mremap() else {
        set_errno(libc::ENOSYS);
        return libc::MAP_FAILED;
    };
    let new_addr = if flags & libc::MREMAP_FIXED != 0 {
        new_addr
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    let call = || unsafe { real(old, old_len, new_len, flags, new_addr) };
    if !custody::active() || sync::nested() || sync::foreign() {
        return call();
    }
    let mut errno = 0;
    let r = crate::guard(|| {
        let _c = sync::enter();
        let r = custody::follow_mremap(
            old as u64,
            old_len as u64,
            new_len as u64,
            flags,
            new_addr as u64,
            || {
                let p = call();
                if p == libc::MAP_FAILED {
                    errno = crate::path::errno();
                }
                p as u64
            },
        );
        r as *mut c_void
    });
    match r {
        Some(p) => {
            if p == libc::MAP_FAILED {
                set_errno(errno);
            }
            p
        }
        None => libc::MAP_FAILED,
    }
}
