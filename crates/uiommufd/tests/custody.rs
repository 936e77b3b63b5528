//! Pins that hold (issue 12, item 3): pinned pages taken into custody
//! ([`uiommufd::custody::take`], what the preload calls before the
//! program's `munmap`, `mmap(MAP_FIXED)` and `madvise`) keep serving DMA
//! through the domains and the access's copies, the program's range does
//! what it asked, and everything is released with the pins.

use std::sync::Arc;

use uiommufd::custody::{self, Reason};
use uiommufd::hwpt::HwptPaging;
use uiommufd::uapi::{MOCK_ACCESS_RW_WRITE, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES};
use uiommufd::user::page_size as ps;
use uiommufd::Context;
use uiommufd_testkit::*;

const IOVA: u64 = 1 << 24;

/// A fresh private anonymous mapping of `n` pages, filled with `fill(i)`.
fn anon(n: u64, fill: impl Fn(u64) -> u8) -> u64 {
    let p = uiommufd_testkit::map_anon((n * ps()) as usize, libc::MAP_PRIVATE).unwrap();
    for i in 0..n * ps() {
        // SAFETY: inside the mapping just made.
        unsafe { *(p as *mut u8).add(i as usize) = fill(i) };
    }
    p as u64
}

fn pattern(i: u64) -> u8 {
    (i * 7 + 3) as u8
}

/// The mock domain of paging HWPT `hwpt`.
fn domain(ctx: &Arc<Context>, hwpt: u32) -> Arc<dyn uiommufd::domain::Domain> {
    ctx.get::<HwptPaging>(hwpt).unwrap().domain().clone()
}

/// `len` bytes at `iova` through access `fd`.
fn read_access(ctx: &Arc<Context>, fd: u32, iova: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    access_rw(ctx, fd, iova, len, v.as_mut_ptr() as u64, 0).unwrap();
    v
}

fn at(addr: u64, off: u64) -> u8 {
    // SAFETY: the tests read their own mappings.
    unsafe { *((addr + off) as *const u8) }
}

fn checks(ctx: &Arc<Context>) {
    ctx.check_invariants().unwrap();
    uiommufd::pages::check_accounting().unwrap();
}

/// The program's `mmap(MAP_FIXED)` of fresh anonymous memory over
/// `[addr, addr + len)`.
fn map_fixed_over(addr: u64, len: u64) {
    // SAFETY: the program's MAP_FIXED over its own memory.
    let p = unsafe {
        libc::mmap(
            addr as *mut _,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr);
}

/// The shape every test starts from: `n` pages of [`pattern`] mapped at
/// [`IOVA`] in an IOAS of a new context, through a mock domain.
struct Mapped {
    ctx: Arc<Context>,
    ioas: u32,
    hwpt: u32,
    stdev: u32,
    idev: u32,
    buf: u64,
    len: u64,
}

impl Mapped {
    fn new(n: u64) -> Mapped {
        let buf = anon(n, pattern);
        let ctx = Context::new();
        let ioas = ioas_alloc(&ctx);
        let (stdev, hwpt, idev) = mock_domain(&ctx, ioas).unwrap();
        let len = n * ps();
        map_fixed(&ctx, ioas, buf, len, IOVA).unwrap();
        Mapped {
            ctx,
            ioas,
            hwpt,
            stdev,
            idev,
            buf,
            len,
        }
    }

    /// Unmap the IOAS: the invariants hold and custody holds nothing.
    fn unmap(&self) {
        unmap(&self.ctx, self.ioas, IOVA, self.len).unwrap();
        checks(&self.ctx);
        assert_eq!(custody::held_pages(), 0);
    }

    /// [`Mapped::unmap`], then the program's `munmap` of the buffer.
    fn finish(self) {
        self.unmap();
        // SAFETY: the test's own mapping.
        unsafe { libc::munmap(self.buf as *mut _, self.len as usize) };
    }
}

/// The "done when": a buffer mapped in an IOAS with a domain and
/// an access, `munmap`ed: DMA and `ACCESS_RW` still read and write the old
/// pages, a `MAP_FIXED` at the same address gives the program fresh
/// memory, and `IOAS_UNMAP` releases everything.
#[test]
fn munmap_then_map_fixed_keeps_the_pinned_pages() {
    let _s = serial();
    let n = 8;
    let m = Mapped::new(n);
    let (ctx, ioas, buf) = (m.ctx.clone(), m.ioas, m.buf);
    let access = create_access(&ctx, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES).unwrap();
    let item = access_pages(&ctx, access, IOVA + ps(), 2 * ps(), buf + ps(), 0).unwrap();
    assert!(custody::active());
    let dom = domain(&ctx, m.hwpt);

    // the program unmaps pages 2..=5 (the access pinned 1..=2): partial
    let (lo, len) = (buf + 2 * ps(), 4 * ps());
    assert_eq!(custody::take(lo, len, Reason::Unmap).unwrap(), 4);
    assert_eq!(custody::held_pages(), 4);
    // SAFETY: the program's own unmap of its own memory.
    assert_eq!(unsafe { libc::munmap(lo as *mut _, len as usize) }, 0);
    checks(&ctx);

    // DMA through the domain and the access still see the old data
    let mut got = vec![0u8; (n * ps()) as usize];
    dom.dma_read(IOVA, &mut got).unwrap();
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i as u64)));
    assert_eq!(read_access(&ctx, access, IOVA, n * ps()), got);
    // and write them: DMA into a moved page, the access reads it back
    dom.dma_write(IOVA + 3 * ps() + 5, b"dma").unwrap();
    let msg = b"access!";
    access_rw(
        &ctx,
        access,
        IOVA + 2 * ps() - 3,
        msg.len() as u64,
        msg.as_ptr() as u64,
        MOCK_ACCESS_RW_WRITE,
    )
    .unwrap();
    assert_eq!(
        &read_access(&ctx, access, IOVA + 3 * ps() + 5, 3)[..],
        b"dma"
    );
    let mut b = [0u8; 7];
    dom.dma_read(IOVA + 2 * ps() - 3, &mut b).unwrap();
    assert_eq!(&b, msg);
    // the part before the move is still the program's own page
    assert_eq!(at(buf, 2 * ps() - 3), b'a');

    // MAP_FIXED at the old address: fresh zeroed memory, not the pages
    let fresh = anon(1, |_| 0);
    map_fixed_over(lo, len);
    // SAFETY: our own scratch page.
    unsafe { libc::munmap(fresh as *mut _, ps() as usize) };
    assert!((0..len).all(|i| at(lo, i) == 0));
    // SAFETY: writing the program's new memory.
    unsafe { std::ptr::write_bytes(lo as *mut u8, 0xee, len as usize) };
    let mut want = got.clone();
    want[(3 * ps() + 5) as usize..(3 * ps() + 8) as usize].copy_from_slice(b"dma");
    want[(2 * ps() - 3) as usize..(2 * ps() + 4) as usize].copy_from_slice(msg);
    // the program's writes to its new memory reach neither
    assert_eq!(read_access(&ctx, access, IOVA, n * ps()), want);
    dom.dma_read(IOVA, &mut got).unwrap();
    assert_eq!(got, want);
    checks(&ctx);

    // the access lets go of its pages, then the IOAS unmap releases all
    destroy_access_pages(&ctx, access, item).unwrap();
    checks(&ctx);
    assert_eq!(custody::held_pages(), 4, "the domain still pins them");
    m.finish();
    assert!(!custody::active());
}

/// `madvise(MADV_DONTNEED)` of pinned private memory: the program reads
/// zeros, the IOMMU keeps the data; a page mapped twice (two pages
/// objects) goes to custody once.
#[test]
fn discard_gives_the_program_zeros_and_the_iommu_the_data() {
    let _s = serial();
    let n = 4;
    let m = Mapped::new(n);
    let (ctx, ioas, buf, hwpt) = (m.ctx.clone(), m.ioas, m.buf, m.hwpt);
    // the same memory again, in a second IOAS (its own pages object)
    let ioas2 = ioas_alloc(&ctx);
    let (_s2, hwpt2, _i2) = mock_domain(&ctx, ioas2).unwrap();
    map_fixed(&ctx, ioas2, buf + ps(), ps(), IOVA).unwrap();
    let access = create_access(&ctx, ioas, 0).unwrap();

    assert_eq!(custody::take(buf, n * ps(), Reason::Discard).unwrap(), 5);
    assert_eq!(custody::held_pages(), n);
    // SAFETY: the program's own madvise of its own memory.
    let r = unsafe { libc::madvise(buf as *mut _, (n * ps()) as usize, libc::MADV_DONTNEED) };
    assert_eq!(r, 0);
    assert!((0..n * ps()).all(|i| at(buf, i) == 0));
    checks(&ctx);
    let mut got = vec![0u8; (n * ps()) as usize];
    domain(&ctx, hwpt).dma_read(IOVA, &mut got).unwrap();
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i as u64)));
    assert_eq!(read_access(&ctx, access, IOVA, n * ps()), got);
    let mut one = vec![0u8; ps() as usize];
    domain(&ctx, hwpt2).dma_read(IOVA, &mut one).unwrap();
    assert_eq!(one, got[ps() as usize..2 * ps() as usize]);
    // a write through one IOAS shows in the other: the same page
    domain(&ctx, hwpt)
        .dma_write(IOVA + ps(), b"shared")
        .unwrap();
    domain(&ctx, hwpt2).dma_read(IOVA, &mut one[..6]).unwrap();
    assert_eq!(&one[..6], b"shared");
    // the program's new zero page is its own
    assert_eq!(at(buf, ps()), 0);

    unmap(&ctx, ioas, IOVA, n * ps()).unwrap();
    checks(&ctx);
    assert_eq!(
        custody::held_pages(),
        1,
        "the second IOAS still pins a page"
    );
    // a second take finds nothing left in the program's range to move
    assert_eq!(custody::take(buf, n * ps(), Reason::Unmap).unwrap(), 0);
    unmap(&ctx, ioas2, IOVA, ps()).unwrap();
    checks(&ctx);
    assert_eq!(custody::held_pages(), 0);
    // SAFETY: the test's own mapping.
    unsafe { libc::munmap(buf as *mut _, (n * ps()) as usize) };
}

/// Nothing pinned: a take does nothing (and unpinned pages of a mapped
/// area stay with the program's call, as in the kernel).
#[test]
fn take_of_unpinned_memory_moves_nothing() {
    let _s = serial();
    let buf = anon(2, pattern);
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    map_fixed(&ctx, ioas, buf, 2 * ps(), IOVA).unwrap();
    assert_eq!(custody::take(buf, 2 * ps(), Reason::Unmap).unwrap(), 0);
    assert_eq!(custody::held_pages(), 0);
    checks(&ctx);
    // SAFETY: the test's own mapping.
    unsafe { libc::munmap(buf as *mut _, (2 * ps()) as usize) };
}

/// The program's `mremap` of pinned memory: the data moves for the
/// program, and the domain and the access follow it there (the pages stay
/// shared, as the kernel's pinned pages do); a shrink's tail goes to
/// custody; a later `munmap` at the new address too.
#[test]
fn mremap_is_followed() {
    let _s = serial();
    let n = 4;
    let m = Mapped::new(n);
    let (ctx, buf) = (m.ctx.clone(), m.buf);
    let access = create_access(&ctx, m.ioas, 0).unwrap();
    let dst = anon(n, |_| 0);
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // shrink to 3 pages while moving: the last page goes to custody
    let r = custody::follow_mremap(buf, n * ps(), 3 * ps(), flags, dst, || {
        // SAFETY: the program's own mremap of its own memory.
        unsafe {
            libc::mremap(
                buf as *mut _,
                (n * ps()) as usize,
                (3 * ps()) as usize,
                flags,
                dst as *mut libc::c_void,
            ) as u64
        }
    });
    assert_eq!(r, dst);
    assert_eq!(custody::held_pages(), 1);
    checks(&ctx);
    assert_eq!(at(dst, 5), pattern(5));
    // SAFETY: the program writes its memory at the new address.
    unsafe { *((dst + ps() + 1) as *mut u8) = 0xab };
    let mut got = vec![0u8; (n * ps()) as usize];
    domain(&ctx, m.hwpt).dma_read(IOVA, &mut got).unwrap();
    let mut want: Vec<u8> = (0..n * ps()).map(pattern).collect();
    want[ps() as usize + 1] = 0xab;
    assert_eq!(got, want);
    assert_eq!(read_access(&ctx, access, IOVA, n * ps()), want);
    // the old address is free for the program: nothing there is reached
    let fresh = anon(1, |_| 0xee);
    assert_eq!(read_access(&ctx, access, IOVA, n * ps()), want);
    // a munmap at the new address: custody as any other
    assert_eq!(custody::take(dst, 3 * ps(), Reason::Unmap).unwrap(), 3);
    // SAFETY: the program's own unmap.
    unsafe { libc::munmap(dst as *mut _, (3 * ps()) as usize) };
    assert_eq!(read_access(&ctx, access, IOVA, n * ps()), want);
    checks(&ctx);
    m.unmap();
    // SAFETY: the test's own mappings.
    unsafe {
        libc::munmap(fresh as *mut _, ps() as usize);
        libc::munmap((dst + 3 * ps()) as *mut _, ps() as usize);
    }
}

/// DMA through a domain and an access's copies while the program unmaps
/// and replaces the pinned pages under them, page after page: every DMA
/// read (wrapped in [`custody::dma`], as the VFIO device bus does) and
/// every copy sees the pinned data, never a fault and never the program's
/// new memory.
#[test]
fn dma_during_moves_never_faults_nor_sees_new_memory() {
    let _s = serial();
    // fault-safe copies: the access copies take their lock-free fast path
    assert!(uiommufd::faultsafe::install());
    let n = 32;
    let m = Mapped::new(n);
    let (ctx, buf) = (m.ctx.clone(), m.buf);
    let dom = domain(&ctx, m.hwpt);
    let access = create_access(&ctx, m.ioas, 0).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // and an access copying (its lock-free fast path, then the locked one)
    let copier = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        std::thread::spawn(move || {
            let want: Vec<u8> = (0..n * ps()).map(pattern).collect();
            let mut copies = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || copies == 0 {
                let i = copies % n;
                let got = read_access(&ctx, access, IOVA + i * ps() + 8, 64);
                let at = (i * ps() + 8) as usize;
                assert!(
                    got[..] == want[at..at + 64],
                    "the access read something else"
                );
                copies += 1;
            }
            copies
        })
    };
    let reader = {
        let (dom, stop) = (dom.clone(), stop.clone());
        std::thread::spawn(move || {
            let want: Vec<u8> = (0..n * ps()).map(pattern).collect();
            let mut got = vec![0u8; (n * ps()) as usize];
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                custody::dma(|| dom.dma_read(IOVA, &mut got)).unwrap();
                assert!(got == want, "DMA read something else than the pinned data");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..n {
        let page = buf + i * ps();
        assert_eq!(custody::take(page, ps(), Reason::Unmap).unwrap(), 1);
        // the program's mapping stays (MREMAP_DONTUNMAP), without the page
        let mut v = 0u8;
        // SAFETY: mincore of one page into one byte of ours.
        let r = unsafe { libc::mincore(page as *mut _, ps() as usize, &mut v) };
        assert_eq!(r, 0, "the program's mapping went away with the move");
        // SAFETY: the program's own munmap of its memory.
        assert_eq!(unsafe { libc::munmap(page as *mut _, ps() as usize) }, 0);
        map_fixed_over(page, ps());
        // SAFETY: the program writes its new page.
        unsafe { std::ptr::write_bytes(page as *mut u8, 0xee, ps() as usize) };
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert!(copier.join().unwrap() > 0);
    checks(&ctx);
    assert_eq!(custody::held_pages(), n);
    m.finish();
}

/// The software VT-d domain, with 2 MiB leaves: one page taken out of the
/// middle of a huge mapping is re-mapped alone, and DMA through an IOTLB
/// (which cached the old translation) reaches the pinned pages.
#[test]
fn vtd_domain_with_huge_leaves_follows_a_moved_page() {
    use uiommufd::domain::{Domain, HostAddr, Iova};
    use uiommufd::plumbing::io_pagetable::huge_page_size;
    use uiommufd::vtd::{Iotlb, VtdDomain};
    let _s = serial();
    let huge = huge_page_size();
    let mem = uiommufd_testkit::mem::Mapping::new(huge / ps(), huge);
    let len = huge;
    for i in 0..len {
        // SAFETY: inside the test's mapping.
        unsafe { *((mem.addr() + i) as *mut u8) = pattern(i) };
    }
    let ctx = Context::new();
    let id = ctx.ioas_alloc().unwrap();
    let ioas = ctx.ioas(id).unwrap();
    let iova0 = 1u64 << 32;
    ioas.map_user(mem.addr(), len, Some(iova0), uiommufd::Prot::RW)
        .unwrap();
    let dom = VtdDomain::new(48, true).unwrap();
    ioas.iopt().add_domain(dom.clone()).unwrap();
    assert_eq!(dom.leaf(iova0).unwrap().1, huge, "2 MiB leaves");
    let mut tlb = Iotlb::new(dom.clone());
    let mut got = vec![0u8; len as usize];
    tlb.read(iova0, &mut got).unwrap();

    let page = mem.addr() + 100 * ps();
    assert_eq!(custody::take(page, ps(), Reason::Replace).unwrap(), 1);
    map_fixed_over(page, ps());
    // SAFETY: the program writes its new page.
    unsafe { std::ptr::write_bytes(page as *mut u8, 0xee, ps() as usize) };
    ioas.iopt().check_invariants().unwrap();
    uiommufd::pages::check_accounting().unwrap();
    assert_ne!(
        dom.iova_to_phys(Iova(iova0 + 100 * ps())),
        Some(HostAddr(page))
    );
    tlb.read(iova0, &mut got).unwrap();
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i as u64)));
    tlb.write(iova0 + 100 * ps() + 1, b"vt-d").unwrap();
    assert_eq!(at(page, 1), 0xee);
    let mut b = [0u8; 4];
    tlb.read(iova0 + 100 * ps() + 1, &mut b).unwrap();
    assert_eq!(&b, b"vt-d");
    ioas.iopt().remove_domain(dom.id());
    ioas.iopt().check_invariants().unwrap();
    uiommufd::pages::check_accounting().unwrap();
    assert_eq!(
        custody::held_pages(),
        0,
        "the last domain gone, nothing pinned"
    );
}

/// A domain with dirty tracking on: a move re-maps the area, whose dirty
/// state is reported whole once (nothing the device wrote is lost).
#[test]
fn dirty_tracking_reports_a_moved_area_dirty() {
    use uiommufd::uapi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
    let _s = serial();
    let n = 8;
    let m = Mapped::new(n);
    let (ctx, buf) = (m.ctx.clone(), m.buf);
    let hwpt = hwpt_alloc(&ctx, m.idev, m.ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    mock_domain_replace(&ctx, m.stdev, hwpt).unwrap();
    set_dirty_tracking(&ctx, hwpt, true).unwrap();
    let dirty = |ctx: &Arc<Context>| {
        let mut bm = [0u64; 1];
        get_dirty_bitmap(ctx, hwpt, IOVA, n * ps(), ps(), bm.as_mut_ptr() as u64, 0).unwrap();
        bm[0]
    };
    assert_eq!(dirty(&ctx), 0);
    assert_eq!(
        custody::take(buf + 2 * ps(), ps(), Reason::Unmap).unwrap(),
        1
    );
    assert_eq!(
        dirty(&ctx),
        (1 << n) - 1,
        "the whole moved area reads dirty"
    );
    assert_eq!(dirty(&ctx), 0, "once");
    checks(&ctx);
    m.finish();
}

/// `mremap(MREMAP_DONTUNMAP)` of pinned memory, and an `mremap` the kernel
/// refuses: the IOMMU follows the pages to the new address (never the zero
/// pages left behind), or stays where they are.
#[test]
fn mremap_dontunmap_and_a_failed_mremap() {
    const MREMAP_DONTUNMAP: i32 = 4;
    let _s = serial();
    let n = 4;
    let len = n * ps();
    let m = Mapped::new(n);
    let (ctx, buf) = (m.ctx.clone(), m.buf);
    let dom = domain(&ctx, m.hwpt);
    let remap = |old: u64, flags: i32, new: u64| {
        custody::follow_mremap(old, len, len, flags, new, || {
            // SAFETY: the program's own mremap of its own memory.
            unsafe {
                libc::mremap(
                    old as *mut _,
                    len as usize,
                    len as usize,
                    flags,
                    new as *mut libc::c_void,
                ) as u64
            }
        })
    };
    let r = remap(buf, libc::MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0);
    assert_ne!(r as i64, -1);
    assert_ne!(r, buf);
    assert_eq!(at(buf, 5), 0, "the old range stays, without its pages");
    assert_eq!(at(r, 5), pattern(5));
    // SAFETY: the program writes its memory at the new address.
    unsafe { *((r + 7) as *mut u8) = 0x5a };
    let mut got = vec![0u8; len as usize];
    dom.dma_read(IOVA, &mut got).unwrap();
    assert_eq!(got[7], 0x5a);
    assert_eq!(got[8], pattern(8));
    checks(&ctx);
    assert_eq!(custody::held_pages(), 0, "the parking reservation is gone");
    // a refused move (the ranges overlap): everything stays
    let e = remap(r, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, r + ps());
    assert_eq!(e as i64, -1);
    dom.dma_read(IOVA, &mut got).unwrap();
    assert_eq!(got[7], 0x5a);
    checks(&ctx);
    assert_eq!(custody::held_pages(), 0);
    m.unmap();
    // SAFETY: the test's own mappings.
    unsafe {
        libc::munmap(buf as *mut _, len as usize);
        libc::munmap(r as *mut _, len as usize);
    }
}
