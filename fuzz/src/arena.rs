//! The fuzzer-owned user memory every user pointer of a harness points into.
//!
//! One 1 MiB arena (256 pages of 4 KiB), aligned to the huge page size so
//! that IOVA allocation sees the alignment a real buffer would have, with a
//! fixed layout of page kinds (see [`Arena::page_kind`]): read/write data,
//! a read-only run, a `PROT_NONE` hole, an auxiliary area (arrays, bitmaps,
//! driver data), the command area, and a `PROT_NONE` tail.
//!
//! Contexts and pages objects of the harnesses reach memory through
//! [`Fenced`]: the process's own memory ([`uiommufd::user::SelfMemory`],
//! the exact code `Context::new()` uses) but only inside the arena, `EFAULT`
//! elsewhere. Replacing pointer fields with arena addresses is not enough on
//! its own: an area of a huge length starting in the arena lets the engine
//! pin or write pages far past it (an access pinning a sub-range, a dirty
//! bitmap written word by word), and `process_vm_writev` would happily write
//! into the fuzzer's own heap. The fence turns all of that into `EFAULT`.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use uiommufd::user::{page_size, SelfMemory, UserMemory};
use uiommufd::{Error, Result};

/// Pages in the arena.
pub const PAGES: u64 = 256;
/// First read-only page (`PROT_READ`).
pub const RO_FIRST: u64 = 160;
/// First page of the `PROT_NONE` hole (right after the read-only run).
pub const NONE_FIRST: u64 = 168;
/// First read/write page after the hole.
pub const NONE_END: u64 = 176;
/// First page of the auxiliary area (read/write).
pub const AUX_PAGE: u64 = 224;
/// First page of the command area (read/write).
pub const CMD_PAGE: u64 = 240;
/// First page of the `PROT_NONE` tail.
pub const TAIL_PAGE: u64 = 252;

/// What a page of the arena allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Read and write.
    ReadWrite,
    /// Read only.
    ReadOnly,
    /// Neither.
    None,
}

/// The arena: a private anonymous mapping owned by the harness for the life
/// of the process.
#[derive(Debug)]
pub struct Arena {
    base: u64,
    mem: Arc<Fenced>,
}

/// [`SelfMemory`] restricted to `[lo, hi)`.
#[derive(Debug, Clone, Copy)]
pub struct Fenced {
    lo: u64,
    hi: u64,
}

impl Fenced {
    fn check(&self, addr: u64, len: u64, what: &str) -> Result<()> {
        match addr.checked_add(len) {
            Some(end) if addr >= self.lo && end <= self.hi => Ok(()),
            _ => Err(Error::new(
                libc::EFAULT,
                format!("fuzz arena: {what} of {len:#x} bytes at {addr:#x} is outside the arena"),
            )),
        }
    }
}

impl UserMemory for Fenced {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.check(addr, buf.len() as u64, "read")?;
        SelfMemory.read(addr, buf)
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.check(addr, buf.len() as u64, "write")?;
        SelfMemory.write(addr, buf)
    }

    fn populate(&self, addr: u64, len: u64, write: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.check(addr, len, "populate")?;
        SelfMemory.populate(addr, len, write)
    }
}

fn protect(addr: u64, len: u64, prot: i32) {
    // SAFETY: `addr..addr + len` lies inside the arena's own mapping, which
    // no Rust object refers to; changing its protection affects nothing else.
    let rc = unsafe { libc::mprotect(addr as usize as *mut libc::c_void, len as usize, prot) };
    assert_eq!(rc, 0, "mprotect of the fuzz arena failed");
}

impl Arena {
    fn new() -> Arena {
        let ps = page_size();
        let align = uiommufd::plumbing::io_pagetable::huge_page_size().max(ps);
        let len = PAGES * ps;
        let map_len = (len + align) as usize;
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // touched. It is never unmapped (the arena lives as long as the process).
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap of the fuzz arena failed");
        let base = (map as u64).div_ceil(align) * align;
        protect(base, len, libc::PROT_READ | libc::PROT_WRITE);
        protect(
            base + RO_FIRST * ps,
            (NONE_FIRST - RO_FIRST) * ps,
            libc::PROT_READ,
        );
        protect(
            base + NONE_FIRST * ps,
            (NONE_END - NONE_FIRST) * ps,
            libc::PROT_NONE,
        );
        protect(
            base + TAIL_PAGE * ps,
            (PAGES - TAIL_PAGE) * ps,
            libc::PROT_NONE,
        );
        Arena {
            base,
            mem: Arc::new(Fenced {
                lo: base,
                hi: base + len,
            }),
        }
    }

    /// The arena, for the caller alone until the guard drops (harness runs
    /// never overlap, even from parallel test threads), with every writable
    /// page zeroed.
    pub fn acquire() -> MutexGuard<'static, Arena> {
        static ARENA: OnceLock<Mutex<Arena>> = OnceLock::new();
        let a = ARENA.get_or_init(|| Mutex::new(Arena::new()));
        // A finding panics with the guard held; the arena is reset anyway.
        let g = a.lock().unwrap_or_else(|p| p.into_inner());
        g.reset();
        g
    }

    fn reset(&self) {
        let ps = page_size();
        for (first, end) in [(0, RO_FIRST), (NONE_END, TAIL_PAGE)] {
            // SAFETY: these pages of the arena are mapped read/write and only
            // reached through addresses; no reference to them exists.
            unsafe {
                std::ptr::write_bytes(
                    (self.base + first * ps) as usize as *mut u8,
                    0,
                    ((end - first) * ps) as usize,
                )
            };
        }
    }

    /// Address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        PAGES * page_size()
    }

    /// Whether the arena is empty (never).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Address of page `n` (may be past the end: that is a pointer the
    /// fence refuses).
    pub fn page(&self, n: u64) -> u64 {
        self.base + n * page_size()
    }

    /// The fenced memory to give contexts and pages objects.
    pub fn memory(&self) -> Arc<dyn UserMemory> {
        self.mem.clone()
    }

    /// What page `n` of the arena allows (pages outside the arena: none).
    pub fn page_kind(n: u64) -> PageKind {
        match n {
            _ if n >= PAGES => PageKind::None,
            _ if (RO_FIRST..NONE_FIRST).contains(&n) => PageKind::ReadOnly,
            _ if (NONE_FIRST..NONE_END).contains(&n) => PageKind::None,
            _ if n >= TAIL_PAGE => PageKind::None,
            _ => PageKind::ReadWrite,
        }
    }

    /// Whether every page touched by `[addr, addr + len)` allows `write`
    /// (or reading when `!write`). `len == 0` touches nothing.
    pub fn accessible(&self, addr: u64, len: u64, write: bool) -> bool {
        if len == 0 {
            return true;
        }
        let ps = page_size();
        let Some(last) = addr.checked_add(len - 1) else {
            return false;
        };
        if addr < self.base || last >= self.base + self.len() {
            return false;
        }
        let (first, lastp) = ((addr - self.base) / ps, (last - self.base) / ps);
        (first..=lastp).all(|p| match Self::page_kind(p) {
            PageKind::ReadWrite => true,
            PageKind::ReadOnly => !write,
            PageKind::None => false,
        })
    }

    /// Copy `bytes` into the arena at `addr` (through the fence: writes to
    /// pages that refuse them are skipped silently, as a harness setting
    /// up memory does not care).
    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write(addr, bytes);
    }

    /// Read `buf.len()` bytes at `addr` (zeros where unreadable).
    pub fn peek(&self, addr: u64, buf: &mut [u8]) {
        if self.mem.read(addr, buf).is_err() {
            buf.fill(0);
        }
    }
}

impl uiommufd_testkit::iopt_model::UserView for Arena {
    fn accessible(&self, addr: u64, len: u64, write: bool) -> bool {
        Arena::accessible(self, addr, len, write)
    }
}
