//! User memory for tests: buffers whose addresses the engine is given as
//! user pointers.

/// A fresh read/write anonymous mapping of `len` bytes, with `flags`
/// (`MAP_PRIVATE` or `MAP_SHARED`, maybe `MAP_NORESERVE`, `MAP_POPULATE`)
/// besides `MAP_ANONYMOUS`, wherever the kernel puts it: its address, or
/// the `mmap` error. The caller unmaps it.
///
/// # Panics
/// When `flags` has `MAP_FIXED` or `MAP_FIXED_NOREPLACE`: the mapping must
/// not replace anything.
pub fn map_anon(len: usize, flags: libc::c_int) -> std::io::Result<*mut libc::c_void> {
    assert_eq!(
        flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE),
        0,
        "map_anon places no mapping at a fixed address"
    );
    // SAFETY: a fresh anonymous mapping at an address of the kernel's
    // choosing (no MAP_FIXED): no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p)
}

/// `len` bytes of heap memory (filled with `0x5a`) at an `align`-aligned
/// address.
#[derive(Debug)]
pub struct Buf {
    v: Vec<u8>,
    align: u64,
}

impl Buf {
    /// `len` bytes aligned to `align`.
    pub fn new(len: u64, align: u64) -> Buf {
        Buf {
            v: vec![0x5a; (len + align) as usize],
            align,
        }
    }

    /// `len` zeroed bytes aligned to `align`.
    pub fn zeroed(len: u64, align: u64) -> Buf {
        Buf {
            v: vec![0; (len + align) as usize],
            align,
        }
    }

    /// `pages` 4 KiB pages, page aligned.
    pub fn pages(pages: usize) -> Buf {
        Buf::new(pages as u64 * 4096, 4096)
    }

    /// The aligned start.
    pub fn addr(&self) -> u64 {
        (self.v.as_ptr() as u64).div_ceil(self.align) * self.align
    }

    /// The byte at `off` from [`Buf::addr`] (written behind the compiler's
    /// back by the engine: read through `black_box`).
    pub fn byte(&self, off: u64) -> u8 {
        let i = self.addr() - self.v.as_ptr() as u64 + off;
        std::hint::black_box(&self.v)[i as usize]
    }
}

/// `n` pages of private anonymous memory (zeroed, read/write) whose pages
/// can be made read-only, inaccessible or unmapped one by one (unwritable
/// user buffers), optionally at a larger alignment.
#[derive(Debug)]
pub struct Mapping {
    map: u64,
    map_len: usize,
    addr: u64,
}

// SAFETY: the mapping is only reached through addresses (the engine's
// user-memory calls, which validate them); the struct owns it exclusively.
unsafe impl Send for Mapping {}
// SAFETY: as above; nothing is shared through a reference into it.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `n` zeroed read/write pages, page aligned.
    pub fn pages(n: usize) -> Mapping {
        Mapping::new(n as u64, 4096)
    }

    /// `npages` zeroed read/write pages whose start is aligned to `align`.
    pub fn new(npages: u64, align: u64) -> Mapping {
        let extra = if align > 4096 { align } else { 0 };
        let map_len = (npages * 4096 + extra) as usize;
        let p = map_anon(map_len, libc::MAP_PRIVATE).expect("mmap of a test buffer");
        let map = p as u64;
        Mapping {
            map,
            map_len,
            addr: map.div_ceil(align) * align,
        }
    }

    /// The (aligned) start.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The address of page `i`.
    pub fn page(&self, i: usize) -> u64 {
        self.addr + i as u64 * 4096
    }

    /// `mprotect` page `i` to `prot`.
    pub fn protect(&self, i: usize, prot: i32) {
        // SAFETY: a page of our own mapping; nothing holds references into it.
        let rc = unsafe { libc::mprotect(self.page(i) as *mut libc::c_void, 4096, prot) };
        assert_eq!(rc, 0);
    }

    /// Unmap page `i` (a hole in the mapping).
    pub fn unmap(&self, i: usize) {
        // SAFETY: a page of our own mapping; nothing holds references into it.
        let rc = unsafe { libc::munmap(self.page(i) as *mut libc::c_void, 4096) };
        assert_eq!(rc, 0);
    }

    /// Read the little-endian u64 at byte `off` (its page must be readable).
    pub fn word(&self, off: u64) -> u64 {
        // SAFETY: inside our mapping; the caller keeps that page readable.
        unsafe { std::ptr::read_unaligned((self.addr + off) as *const u64) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping (munmap of holes in it is harmless).
        unsafe { libc::munmap(self.map as *mut libc::c_void, self.map_len) };
    }
}

/// A new close-on-exec memfd named `name`, sized to `len` bytes.
pub fn memfd(name: &std::ffi::CStr, len: u64) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the new fd is ours alone.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(len).expect("ftruncate of a new memfd");
    file.into()
}

/// Process-wide pin accounting is only meaningful while no other test of
/// the same binary pins (under `cargo test` they share the process): tests
/// that check it hold this lock.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pages of `len` bytes at `addr` that are resident (`mincore`).
pub fn resident(addr: u64, len: u64) -> usize {
    let mut v = vec![0u8; len.div_ceil(4096) as usize];
    // SAFETY: `v` holds one byte per page of the range, which the caller maps.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len as usize, v.as_mut_ptr()) };
    assert_eq!(rc, 0);
    v.iter().filter(|&&b| b & 1 != 0).count()
}
