//! Helpers shared by the integration tests: drive the ioctl ABI from Rust
//! with real structs, and own aligned user memory.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use uiommufd::uapi::dispatch::ioctl;
use uiommufd::uapi::*;
use uiommufd::Context;
use zerocopy::{FromBytes, IntoBytes};

/// Run `cmd` on the struct `arg`; `Err(errno)` on failure.
pub fn ioc<T: IntoBytes + FromBytes + ?Sized>(
    ctx: &Arc<Context>,
    cmd: u32,
    arg: &mut T,
) -> Result<i32, i32> {
    ioctl(ctx, cmd as u64, arg.as_mut_bytes().as_mut_ptr() as u64).map_err(|e| e.errno().0)
}

/// `IOMMU_IOAS_ALLOC`, which must succeed.
pub fn ioas_alloc(ctx: &Arc<Context>) -> u32 {
    let mut c = IommuIoasAlloc {
        size: 12,
        ..Default::default()
    };
    ioc(ctx, IOMMU_IOAS_ALLOC, &mut c).unwrap();
    c.out_ioas_id
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS` on `pt`: (stdev, hwpt, idev).
pub fn mock_domain_flags(
    ctx: &Arc<Context>,
    pt: u32,
    dev_flags: u32,
) -> Result<(u32, u32, u32), i32> {
    let mut t = IommuTestCmd {
        size: 72,
        op: IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
        id: pt,
        ..Default::default()
    };
    let md = TestMockDomainFlags {
        dev_flags,
        ..Default::default()
    };
    t.payload[..16].copy_from_slice(md.as_bytes());
    ioc(ctx, IOMMU_TEST_CMD, &mut t)?;
    let o = TestMockDomainFlags::read_from_prefix(&t.payload).unwrap().0;
    Ok((o.out_stdev_id, o.out_hwpt_id, o.out_idev_id))
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN` on `pt`: (stdev, hwpt, idev).
pub fn mock_domain(ctx: &Arc<Context>, pt: u32) -> Result<(u32, u32, u32), i32> {
    let mut t = IommuTestCmd {
        size: 72,
        op: IOMMU_TEST_OP_MOCK_DOMAIN,
        id: pt,
        ..Default::default()
    };
    ioc(ctx, IOMMU_TEST_CMD, &mut t)?;
    let o = TestMockDomainFlags::read_from_prefix(&t.payload).unwrap().0;
    Ok((o.out_stdev_id, o.out_hwpt_id, o.out_idev_id))
}

/// `IOMMU_DESTROY`.
pub fn destroy(ctx: &Arc<Context>, id: u32) -> Result<i32, i32> {
    let mut d = IommuDestroy { size: 8, id };
    ioc(ctx, IOMMU_DESTROY, &mut d)
}

/// `IOMMU_IOAS_MAP` read/write at a fixed IOVA.
pub fn map_fixed(ctx: &Arc<Context>, ioas: u32, va: u64, len: u64, iova: u64) -> Result<i32, i32> {
    let mut m = IommuIoasMap {
        size: 40,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        user_va: va,
        length: len,
        iova,
        ..Default::default()
    };
    ioc(ctx, IOMMU_IOAS_MAP, &mut m)
}

/// `IOMMU_IOAS_UNMAP` of a range (`0, u64::MAX` unmaps everything).
pub fn unmap(ctx: &Arc<Context>, ioas: u32, iova: u64, length: u64) -> Result<i32, i32> {
    let mut u = IommuIoasUnmap {
        size: 24,
        ioas_id: ioas,
        iova,
        length,
    };
    ioc(ctx, IOMMU_IOAS_UNMAP, &mut u)
}

/// `len` bytes of memory (filled with `0x5a`) at an `align`-aligned address.
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
    /// `pages` 4 KiB pages, page aligned.
    pub fn pages(pages: usize) -> Buf {
        Buf::new(pages as u64 * 4096, 4096)
    }
    /// The aligned start.
    pub fn addr(&self) -> u64 {
        (self.v.as_ptr() as u64).div_ceil(self.align) * self.align
    }
}

/// Process-wide pin accounting is only meaningful while no other test of
/// the same binary pins (under `cargo test` they share the process): tests
/// that check it hold this lock.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` pages of private anonymous memory whose pages can be made
/// read-only, inaccessible or unmapped one by one (unwritable user buffers).
pub struct ProtPages {
    addr: u64,
    n: usize,
}

impl ProtPages {
    /// `n` zeroed read/write pages.
    pub fn new(n: usize) -> ProtPages {
        // SAFETY: a fresh anonymous mapping that nothing else refers to.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        ProtPages { addr: p as u64, n }
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
    /// Read the little-endian u64 at byte `off` (page must be readable).
    pub fn word(&self, off: u64) -> u64 {
        // SAFETY: inside our mapping; the caller keeps that page readable.
        unsafe { std::ptr::read_unaligned((self.addr + off) as *const u64) }
    }
}

impl Drop for ProtPages {
    fn drop(&mut self) {
        // SAFETY: our own mapping (munmap of holes in it is harmless).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.n * 4096) };
    }
}
