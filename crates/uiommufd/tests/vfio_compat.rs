//! VFIO type1 container compatibility through the dispatcher: the errno of
//! every rule of every container ioctl (6.12's vfio_compat.c), v1 vs v2
//! unmap semantics, the GET_INFO capability chain and its `argsz` growth,
//! and, on `/dev/vfio/vfio` containers, type1 dirty page tracking of what
//! accesses and devices really wrote.

use std::sync::Arc;

use uiommufd::uapi::vfio::*;
use uiommufd::uapi::*;
use uiommufd::Context;
use zerocopy::{FromBytes, IntoBytes};

use uiommufd_testkit::vfio::map_dma;
use uiommufd_testkit::{self as kit, *};

const A: u64 = MOCK_APERTURE_START;
const PS: u64 = 4096;

/// MOCK_DOMAIN on `pt`: (stdev, hwpt, idev).
fn mock_domain(ctx: &Arc<Context>, pt: u32) -> (u32, u32, u32) {
    kit::mock_domain(ctx, pt).unwrap()
}

/// A context whose compat IOAS has a mock domain, set to `ty`: (ctx, ioas).
fn compat_with_domain(ty: u64) -> (Arc<Context>, u32) {
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    mock_domain(&ctx, ioas);
    vfio_ioas(&ctx, IOMMU_VFIO_IOAS_SET, ioas).unwrap();
    raw(&ctx, VFIO_SET_IOMMU, ty).unwrap();
    (ctx, ioas)
}

/// A VFIO container and its compat IOAS: (ctx, ioas).
fn container() -> (Arc<Context>, u32) {
    let ctx = Context::new_vfio_container().unwrap();
    let ioas = vfio_ioas(&ctx, IOMMU_VFIO_IOAS_GET, 0).unwrap();
    (ctx, ioas)
}

/// Plain unmap: the size unmapped, or the errno (and the size written back).
fn unmap(ctx: &Arc<Context>, iova: u64, size: u64, flags: u32) -> Result<u64, (i32, u64)> {
    let mut u = VfioIommuType1DmaUnmap {
        argsz: 24,
        flags,
        iova,
        size,
    };
    match ioc(ctx, VFIO_IOMMU_UNMAP_DMA, &mut u) {
        Ok(_) => Ok(u.size),
        Err(e) => Err((e, u.size)),
    }
}

fn areas(ctx: &Arc<Context>, ioas: u32) -> Vec<(u64, u64)> {
    ctx.ioas(ioas)
        .unwrap()
        .areas()
        .iter()
        .map(|a| (a.iova, a.length))
        .collect()
}

#[test]
fn container_ioctls_without_compat_ioas() {
    let ctx = Context::new();
    assert_eq!(raw(&ctx, VFIO_GET_API_VERSION, 0), Ok(VFIO_API_VERSION));
    for (ext, want) in [
        (VFIO_TYPE1_IOMMU, Ok(1)),
        (VFIO_TYPE1V2_IOMMU, Ok(1)),
        (VFIO_UNMAP_ALL, Ok(1)),
        (VFIO_NOIOMMU_IOMMU, Ok(1)),
        (VFIO_DMA_CC_IOMMU, Err(libc::ENODEV)),
        (VFIO_TYPE1_NESTING_IOMMU, Ok(0)),
        (VFIO_UPDATE_VADDR, Ok(0)),
        (VFIO_SPAPR_TCE_IOMMU, Ok(0)),
        (VFIO_SPAPR_TCE_V2_IOMMU, Ok(0)),
        (VFIO_EEH, Ok(0)),
        (0, Ok(0)),
        (1 << 40, Ok(0)),
    ] {
        assert_eq!(raw(&ctx, VFIO_CHECK_EXTENSION, ext), want, "ext {ext}");
    }
    // SET_IOMMU: bad type before the missing IOAS
    for ty in [0, 2, VFIO_NOIOMMU_IOMMU, 6, 1 << 33] {
        assert_eq!(
            raw(&ctx, VFIO_SET_IOMMU, ty),
            Err(libc::EINVAL),
            "type {ty}"
        );
    }
    assert_eq!(
        raw(&ctx, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU),
        Err(libc::ENODEV)
    );
    assert_eq!(
        raw(&ctx, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU),
        Err(libc::ENODEV)
    );

    // MAP_DMA: argsz, flags, then ENODEV
    let buf = Buf::zeroed(PS, PS);
    let mut m = VfioIommuType1DmaMap {
        argsz: 31,
        flags: VFIO_DMA_MAP_FLAG_READ,
        vaddr: buf.addr(),
        iova: A,
        size: PS,
    };
    assert_eq!(ioc(&ctx, VFIO_IOMMU_MAP_DMA, &mut m), Err(libc::EINVAL));
    m.argsz = 32;
    for f in [VFIO_DMA_MAP_FLAG_VADDR, 1 << 31] {
        m.flags = f | VFIO_DMA_MAP_FLAG_READ;
        assert_eq!(ioc(&ctx, VFIO_IOMMU_MAP_DMA, &mut m), Err(libc::EINVAL));
    }
    m.flags = 0; // no prot is not refused before the IOAS lookup
    assert_eq!(ioc(&ctx, VFIO_IOMMU_MAP_DMA, &mut m), Err(libc::ENODEV));

    // UNMAP_DMA: argsz, flags (no dirty bitmap on /dev/iommu), then ENODEV
    let mut u = VfioIommuType1DmaUnmap {
        argsz: 1,
        flags: 0,
        iova: A,
        size: PS,
    };
    assert_eq!(ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u), Err(libc::EINVAL));
    u.argsz = 24;
    for f in [
        VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
        VFIO_DMA_UNMAP_FLAG_VADDR,
        1 << 31,
    ] {
        u.flags = f;
        assert_eq!(ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u), Err(libc::EINVAL));
    }
    u.flags = 0;
    assert_eq!(ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u), Err(libc::ENODEV));
    u.flags = VFIO_DMA_UNMAP_FLAG_ALL;
    assert_eq!(ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u), Err(libc::ENODEV));

    // GET_INFO
    let mut info = VfioIommuType1Info {
        argsz: 15,
        ..Default::default()
    };
    assert_eq!(ioc(&ctx, VFIO_IOMMU_GET_INFO, &mut info), Err(libc::EINVAL));
    info.argsz = 24;
    assert_eq!(ioc(&ctx, VFIO_IOMMU_GET_INFO, &mut info), Err(libc::ENODEV));

    // bad pointers
    for cmd in [
        VFIO_IOMMU_GET_INFO,
        VFIO_IOMMU_MAP_DMA,
        VFIO_IOMMU_UNMAP_DMA,
    ] {
        assert_eq!(raw(&ctx, cmd, 0), Err(libc::EFAULT), "cmd {cmd:#x}");
        assert_eq!(raw(&ctx, cmd, 16), Err(libc::EFAULT), "cmd {cmd:#x}");
    }

    // what we do not serve, and near misses of the numbers
    for cmd in [
        VFIO_IOMMU_ENABLE,
        VFIO_IOMMU_DISABLE,
        VFIO_IOMMU_DIRTY_PAGES, // only on containers
        vfio_io(3),
        vfio_io(21),
        VFIO_GET_API_VERSION | 0x4000_0000, // _IOW direction bits
        VFIO_GET_API_VERSION & 0xff,        // another type byte
    ] {
        let mut d = [0u64; 8];
        assert_eq!(ioc(&ctx, cmd, &mut d), Err(libc::ENOTTY), "cmd {cmd:#x}");
    }
    ctx.check_invariants().unwrap();
}

#[test]
fn set_iommu_selects_v1_or_v2() {
    let (ctx, ioas) = compat_with_domain(VFIO_TYPE1V2_IOMMU);
    assert!(ctx.ioas(ioas).unwrap().iopt().large_pages());
    let (ctx1, ioas1) = compat_with_domain(VFIO_TYPE1_IOMMU);
    assert!(!ctx1.ioas(ioas1).unwrap().iopt().large_pages());
    // v1 once areas exist behind a domain: large pages cannot go any more
    let buf = Buf::zeroed(2 * PS, PS);
    map_dma(&ctx, buf.addr(), PS, A).unwrap();
    assert_eq!(
        raw(&ctx, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU),
        Err(libc::EINVAL)
    );
    assert_eq!(raw(&ctx, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU), Ok(0));
    // DMA_CC with a compat IOAS answers 0 or 1
    assert!(matches!(
        raw(&ctx, VFIO_CHECK_EXTENSION, VFIO_DMA_CC_IOMMU),
        Ok(0) | Ok(1)
    ));
    // IOMMU_VFIO_IOAS CLEAR: the container ioctls lose their IOAS
    vfio_ioas(&ctx, IOMMU_VFIO_IOAS_CLEAR, 0).unwrap();
    assert_eq!(map_dma(&ctx, buf.addr(), PS, A + PS), Err(libc::ENODEV));
}

#[test]
fn map_unmap_v2() {
    let (ctx, ioas) = compat_with_domain(VFIO_TYPE1V2_IOMMU);
    let buf = Buf::zeroed(8 * PS, PS);
    map_dma(&ctx, buf.addr(), 4 * PS, A).unwrap();
    // map errors come from the IOAS (fixed IOVA)
    assert_eq!(map_dma(&ctx, buf.addr(), PS, A), Err(libc::EEXIST));
    assert_eq!(map_dma(&ctx, buf.addr(), 0, A + 8 * PS), Err(libc::EINVAL));
    assert_eq!(
        map_dma(&ctx, u64::MAX - 10, PS, A + 8 * PS),
        Err(libc::EOVERFLOW)
    );
    // v2: a range that cuts a mapping is ENOENT, nothing unmapped
    assert_eq!(unmap(&ctx, A + PS, PS, 0), Err((libc::ENOENT, 0)));
    assert_eq!(unmap(&ctx, A, 2 * PS, 0), Err((libc::ENOENT, 0)));
    assert_eq!(unmap(&ctx, A, 0, 0), Err((libc::EINVAL, 0)));
    assert_eq!(unmap(&ctx, A, u64::MAX, 0), Err((libc::EOVERFLOW, 0)));
    // UNMAP_ALL requires 0/0 (and writes nothing back on that error)
    assert_eq!(
        unmap(&ctx, A, 0, VFIO_DMA_UNMAP_FLAG_ALL),
        Err((libc::EINVAL, 0))
    );
    assert_eq!(
        unmap(&ctx, 0, PS, VFIO_DMA_UNMAP_FLAG_ALL),
        Err((libc::EINVAL, PS))
    );
    assert_eq!(areas(&ctx, ioas), vec![(A, 4 * PS)]);
    // whole mappings, several at once, empty is success with size 0
    map_dma(&ctx, buf.addr() + 4 * PS, PS, A + 8 * PS).unwrap();
    assert_eq!(unmap(&ctx, A, 16 * PS, 0), Ok(5 * PS));
    assert_eq!(unmap(&ctx, A, 16 * PS, 0), Ok(0));
    map_dma(&ctx, buf.addr(), 4 * PS, A).unwrap();
    map_dma(&ctx, buf.addr(), 4 * PS, A + 64 * PS).unwrap();
    assert_eq!(unmap(&ctx, 0, 0, VFIO_DMA_UNMAP_FLAG_ALL), Ok(8 * PS));
    assert_eq!(unmap(&ctx, 0, 0, VFIO_DMA_UNMAP_FLAG_ALL), Ok(0));
    ctx.check_invariants().unwrap();
}

#[test]
fn map_unmap_v1_cuts_mappings() {
    let (ctx, ioas) = compat_with_domain(VFIO_TYPE1_IOMMU);
    let buf = Buf::zeroed(8 * PS, PS);
    map_dma(&ctx, buf.addr(), 8 * PS, A).unwrap();
    // any page-aligned piece of a mapping
    assert_eq!(unmap(&ctx, A + PS, PS, 0), Ok(PS));
    assert_eq!(unmap(&ctx, A + 4 * PS, 2 * PS, 0), Ok(2 * PS));
    assert_eq!(
        areas(&ctx, ioas),
        vec![(A, PS), (A + 2 * PS, 2 * PS), (A + 6 * PS, 2 * PS)]
    );
    ctx.check_invariants().unwrap();
    // a cut that is not page aligned: EINVAL, nothing written back
    assert_eq!(unmap(&ctx, A + 2 * PS + 8, PS, 0), Err((libc::EINVAL, PS)));
    // the pieces still map the right memory
    let a = ctx.ioas(ioas).unwrap().areas();
    assert_eq!(a[1].uptr, buf.addr() + 2 * PS);
    assert_eq!(a[2].uptr, buf.addr() + 6 * PS);
    // a range spanning a hole and pieces
    assert_eq!(unmap(&ctx, A, 3 * PS, 0), Ok(2 * PS));
    assert_eq!(unmap(&ctx, 0, 0, VFIO_DMA_UNMAP_FLAG_ALL), Ok(3 * PS));
    assert!(areas(&ctx, ioas).is_empty());
    ctx.check_invariants().unwrap();

    // an access holding pins in a mapping forbids cutting it
    map_dma(&ctx, buf.addr(), 4 * PS, A).unwrap();
    let fd = create_access(&ctx, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
    kit::access_pages(&ctx, fd, A, PS, 0, 0).unwrap();
    assert_eq!(unmap(&ctx, A + PS, PS, 0), Err((libc::EINVAL, PS)));
    uiommufd::plumbing::files::close(fd as i32).unwrap();
    assert_eq!(unmap(&ctx, A + PS, PS, 0), Ok(PS));
    ctx.check_invariants().unwrap();
}

/// The cap chain of a full GET_INFO: (id, version, offset, next) per cap.
fn walk_caps(buf: &[u8], info: &VfioIommuType1Info) -> Vec<(u16, u16, u32, u32)> {
    let mut out = Vec::new();
    let mut at = info.cap_offset;
    while at != 0 {
        let h = VfioInfoCapHeader::read_from_prefix(&buf[at as usize..])
            .unwrap()
            .0;
        out.push((h.id, h.version, at, h.next));
        assert!(h.next == 0 || h.next > at, "chain goes backwards");
        at = h.next;
    }
    out
}

fn get_info_buf(ctx: &Arc<Context>, argsz: u32) -> Vec<u8> {
    let mut buf = vec![0xaau8; 512];
    buf[..4].copy_from_slice(&argsz.to_ne_bytes());
    buf[4..(argsz as usize).min(24)].fill(0);
    raw(ctx, VFIO_IOMMU_GET_INFO, buf.as_mut_ptr() as u64).unwrap();
    // nothing past argsz was touched
    assert!(
        buf[argsz as usize..].iter().all(|&b| b == 0xaa),
        "GET_INFO wrote past argsz {argsz}"
    );
    buf
}

fn check_info(ctx: &Arc<Context>, want_ids: &[u16]) {
    // pre-cap ABI: 16 bytes, argsz grows, flags say caps exist
    let b = get_info_buf(ctx, 16);
    let argsz = u32::from_ne_bytes(b[..4].try_into().unwrap());
    let flags = u32::from_ne_bytes(b[4..8].try_into().unwrap());
    let pgsizes = u64::from_ne_bytes(b[8..16].try_into().unwrap());
    assert_eq!(flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    assert_ne!(pgsizes & PS, 0, "the CPU page size is offered");
    assert_eq!(pgsizes & (PS - 1), 0, "no size below a CPU page");
    assert!(argsz > 24);
    // every size below the chain: argsz grows, no cap offset
    for sz in 24..argsz {
        let b = get_info_buf(ctx, sz);
        let info = VfioIommuType1Info::read_from_prefix(&b).unwrap().0;
        assert_eq!(info.argsz, argsz);
        assert_eq!(info.cap_offset, 0);
    }
    let b = get_info_buf(ctx, argsz);
    let info = VfioIommuType1Info::read_from_prefix(&b).unwrap().0;
    assert_eq!(info.cap_offset, 24);
    let caps = walk_caps(&b, &info);
    let ids: Vec<u16> = caps.iter().map(|c| c.0).collect();
    assert_eq!(ids, want_ids);
    for &(id, version, at, _) in &caps {
        assert_eq!(version, 1);
        let body = &b[at as usize..];
        match id {
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                let c = VfioIommuType1InfoDmaAvail::read_from_prefix(body)
                    .unwrap()
                    .0;
                assert_eq!(c.avail, u32::MAX);
            }
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let c = VfioIommuType1InfoCapIovaRange::read_from_prefix(body)
                    .unwrap()
                    .0;
                assert_eq!(c.nr_iovas, 1);
                let r = VfioIovaRange::read_from_prefix(&body[16..]).unwrap().0;
                assert_eq!((r.start, r.end), (A, MOCK_APERTURE_LAST));
            }
            VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION => {
                let c = VfioIommuType1InfoCapMigration::read_from_prefix(body)
                    .unwrap()
                    .0;
                assert_eq!(c.flags, 0);
                assert_eq!(c.pgsize_bitmap, PS);
                assert_eq!(c.max_dirty_bitmap_size, 1 << 28);
            }
            other => panic!("unexpected cap {other}"),
        }
    }
    // a larger buffer changes nothing
    let b2 = get_info_buf(ctx, argsz + 40);
    assert_eq!(b2[..argsz as usize], b[..argsz as usize]);
}

#[test]
fn get_info_cap_chain_and_argsz() {
    // /dev/iommu: exactly 6.12's chain
    let (ctx, _) = compat_with_domain(VFIO_TYPE1V2_IOMMU);
    check_info(
        &ctx,
        &[
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
        ],
    );
    // a container adds the migration cap
    let (ctx, ioas) = container();
    mock_domain(&ctx, ioas);
    check_info(
        &ctx,
        &[
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
            VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
        ],
    );
}

#[test]
fn container_is_an_iommufd_context_with_its_compat_ioas() {
    let ctx = Context::new_vfio_container().unwrap();
    assert!(ctx.is_vfio_container());
    assert!(ctx.rlimit_mode_mm(), "VFIO accounts to the mm");
    let ioas = vfio_ioas(&ctx, IOMMU_VFIO_IOAS_GET, 0).unwrap();
    assert!(ctx.ioas(ioas).is_ok());
    assert_eq!(raw(&ctx, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU), Ok(0));
    let buf = Buf::zeroed(2 * PS, PS);
    map_dma(&ctx, buf.addr(), 2 * PS, A).unwrap();
    assert_eq!(areas(&ctx, ioas), vec![(A, 2 * PS)]);
    assert_eq!(unmap(&ctx, A, 2 * PS, 0), Ok(2 * PS));
    // destroying the compat IOAS clears it
    kit::destroy(&ctx, ioas).unwrap();
    assert_eq!(vfio_ioas(&ctx, IOMMU_VFIO_IOAS_GET, 0), Err(libc::ENODEV));
    assert_eq!(map_dma(&ctx, buf.addr(), PS, A), Err(libc::ENODEV));
}

// ---------------------------------------------------------------------------
// Dirty page tracking (containers only).

fn dirty(ctx: &Arc<Context>, flags: u32) -> Result<i32, i32> {
    let mut d = VfioIommuType1DirtyBitmap { argsz: 8, flags };
    ioc(ctx, VFIO_IOMMU_DIRTY_PAGES, &mut d)
}

#[repr(C)]
#[derive(
    Default, Clone, Copy, FromBytes, IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout,
)]
struct GetBitmap {
    hdr: VfioIommuType1DirtyBitmap,
    range: VfioIommuType1DirtyBitmapGet,
}

fn get_bitmap_with(ctx: &Arc<Context>, g: &mut GetBitmap) -> Result<i32, i32> {
    ioc(ctx, VFIO_IOMMU_DIRTY_PAGES, g)
}

fn get_req(iova: u64, size: u64, bm: &mut [u64]) -> GetBitmap {
    GetBitmap {
        hdr: VfioIommuType1DirtyBitmap {
            argsz: 48,
            flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
        },
        range: VfioIommuType1DirtyBitmapGet {
            iova,
            size,
            bitmap: bitmap_of(bm),
        },
    }
}

/// The `vfio_bitmap` of `bm` at 4 KiB pages.
fn bitmap_of(bm: &mut [u64]) -> VfioBitmap {
    VfioBitmap {
        pgsize: PS,
        size: (bm.len() * 8) as u64,
        data: bm.as_mut_ptr() as u64,
    }
}

/// The dirty pages of `[iova, iova + size)` (page numbers from `iova`).
fn get_dirty(ctx: &Arc<Context>, iova: u64, size: u64) -> Vec<u64> {
    let mut bm = vec![0u64; (size / PS).div_ceil(64) as usize];
    let mut g = get_req(iova, size, &mut bm);
    get_bitmap_with(ctx, &mut g).unwrap();
    set_bits(&bm)
}

#[repr(C)]
#[derive(
    Default, Clone, Copy, FromBytes, IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout,
)]
struct UnmapBitmap {
    hdr: VfioIommuType1DmaUnmap,
    bitmap: VfioBitmap,
}

fn unmap_req(iova: u64, size: u64, bm: &mut [u64]) -> UnmapBitmap {
    UnmapBitmap {
        hdr: VfioIommuType1DmaUnmap {
            argsz: 48,
            flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
            iova,
            size,
        },
        bitmap: bitmap_of(bm),
    }
}

fn create_access(ctx: &Arc<Context>, ioas: u32, flags: u32) -> u32 {
    kit::create_access(ctx, ioas, flags).unwrap()
}

/// A type1v2 container with two mappings of 8 pages at `A` (one buffer of
/// 16) and an access that pins on its IOAS: (ctx, ioas, buffer, access fd).
fn tracked_with_access() -> (Arc<Context>, u32, Buf, u32) {
    tracked_with_access_at(16, &[(0, 8), (8, 8)])
}

/// As [`tracked_with_access`], with a buffer of `pages` pages and a
/// mapping of each `(first page, pages)` of it at `A + first page`.
fn tracked_with_access_at(pages: u64, maps: &[(u64, u64)]) -> (Arc<Context>, u32, Buf, u32) {
    let (ctx, ioas) = container();
    raw(&ctx, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU).unwrap();
    let buf = Buf::zeroed(pages * PS, PS);
    for &(first, n) in maps {
        map_dma(&ctx, buf.addr() + first * PS, n * PS, A + first * PS).unwrap();
    }
    let fd = create_access(&ctx, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
    (ctx, ioas, buf, fd)
}

fn access_write(ctx: &Arc<Context>, fd: u32, iova: u64, len: u64) -> Result<(), i32> {
    let src = vec![0x5au8; len as usize];
    access_rw(
        ctx,
        fd,
        iova,
        len,
        src.as_ptr() as u64,
        MOCK_ACCESS_RW_WRITE,
    )
}

#[test]
fn dirty_pages_errno_rules() {
    let (ctx, ioas) = container();
    let buf = Buf::zeroed(8 * PS, PS);
    map_dma(&ctx, buf.addr(), 4 * PS, A).unwrap();
    map_dma(&ctx, buf.addr() + 4 * PS, 4 * PS, A + 4 * PS).unwrap();

    // header rules
    let mut d = VfioIommuType1DirtyBitmap {
        argsz: 7,
        flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
    };
    assert_eq!(ioc(&ctx, VFIO_IOMMU_DIRTY_PAGES, &mut d), Err(libc::EINVAL));
    assert_eq!(raw(&ctx, VFIO_IOMMU_DIRTY_PAGES, 0), Err(libc::EFAULT));
    for f in [0, 1 << 3, 3, 5, 6, 7, 1 << 31] {
        assert_eq!(dirty(&ctx, f), Err(libc::EINVAL), "flags {f:#x}");
    }
    // GET before START
    let mut bm = [0u64; 1];
    let mut g = get_req(A, 8 * PS, &mut bm);
    assert_eq!(get_bitmap_with(&ctx, &mut g), Err(libc::EINVAL));
    // STOP without START is fine; START twice too
    assert_eq!(dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP), Ok(0));
    assert_eq!(dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START), Ok(0));
    assert_eq!(dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START), Ok(0));
    assert_eq!(get_bitmap_with(&ctx, &mut g), Ok(0));

    // GET_BITMAP rules, one at a time
    let case = |f: &dyn Fn(&mut GetBitmap)| {
        let mut bm = [0u64; 4];
        let mut g = get_req(A, 8 * PS, &mut bm);
        f(&mut g);
        get_bitmap_with(&ctx, &mut g)
    };
    assert_eq!(case(&|g| g.hdr.argsz = 47), Err(libc::EINVAL));
    assert_eq!(case(&|g| g.range.bitmap.pgsize = 2 * PS), Err(libc::EINVAL));
    assert_eq!(case(&|g| g.range.bitmap.pgsize = 0), Err(libc::EINVAL));
    assert_eq!(case(&|g| g.range.iova = A + 8), Err(libc::EINVAL));
    assert_eq!(case(&|g| g.range.size = 0), Err(libc::EINVAL));
    assert_eq!(case(&|g| g.range.size = PS + 8), Err(libc::EINVAL));
    assert_eq!(
        case(&|g| {
            g.range.iova = u64::MAX - PS + 1;
            g.range.size = PS
        }),
        Err(libc::EINVAL)
    );
    assert_eq!(
        case(&|g| g.range.bitmap.data = u64::MAX - 7),
        Err(libc::EINVAL)
    );
    assert_eq!(case(&|g| g.range.bitmap.size = 0), Err(libc::EINVAL));
    assert_eq!(
        case(&|g| g.range.bitmap.size = (1 << 28) + 8),
        Err(libc::EINVAL)
    );
    assert_eq!(
        case(&|g| {
            g.range.size = 65 * PS;
            g.range.bitmap.size = 8
        }),
        Err(libc::EINVAL)
    );
    // ranges that cut a mapping at either end
    assert_eq!(case(&|g| g.range.iova = A + PS), Err(libc::EINVAL));
    assert_eq!(case(&|g| g.range.size = 6 * PS), Err(libc::EINVAL));
    // whole mappings and holes around them are fine
    assert_eq!(
        case(&|g| {
            g.range.iova = A - 16 * PS;
            g.range.size = 64 * PS
        }),
        Ok(0)
    );
    assert_eq!(case(&|g| g.range.size = 4 * PS), Ok(0));
    // a bitmap the user cannot write: EFAULT once there is something to write
    let fd = create_access(&ctx, ioas, 0);
    access_write(&ctx, fd, A, 1).unwrap();
    assert_eq!(case(&|g| g.range.bitmap.data = 0x1000), Err(libc::EFAULT));

    // unmap with bitmap
    let ucase = |f: &dyn Fn(&mut UnmapBitmap)| {
        let mut bm = [0u64; 4];
        let mut u = unmap_req(A, 4 * PS, &mut bm);
        f(&mut u);
        ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u)
    };
    assert_eq!(
        ucase(&|u| u.hdr.flags |= VFIO_DMA_UNMAP_FLAG_ALL),
        Err(libc::EINVAL)
    );
    assert_eq!(
        ucase(&|u| u.hdr.flags |= VFIO_DMA_UNMAP_FLAG_VADDR),
        Err(libc::EINVAL)
    );
    assert_eq!(ucase(&|u| u.hdr.argsz = 47), Err(libc::EINVAL));
    assert_eq!(ucase(&|u| u.bitmap.data = u64::MAX - 7), Err(libc::EINVAL));
    assert_eq!(ucase(&|u| u.bitmap.pgsize = 0), Err(libc::EINVAL));
    assert_eq!(ucase(&|u| u.bitmap.size = 0), Err(libc::EINVAL));
    assert_eq!(ucase(&|u| u.hdr.size = 0), Err(libc::EINVAL));
    assert_eq!(ucase(&|u| u.hdr.iova = A + 8), Err(libc::EINVAL));
    assert_eq!(ucase(&|u| u.hdr.size = 4 * PS + 8), Err(libc::EINVAL));
    assert_eq!(ucase(&|u| u.bitmap.pgsize = 2 * PS), Err(libc::EINVAL));
    assert_eq!(ucase(&|u| u.hdr.size = 2 * PS), Err(libc::ENOENT));
    access_write(&ctx, fd, A, 1).unwrap();
    assert_eq!(ucase(&|u| u.bitmap.data = 0x1000), Err(libc::EFAULT));
    assert_eq!(
        areas(&ctx, ioas).len(),
        2,
        "no failed unmap unmapped anything"
    );
    // tracking off: EINVAL
    assert_eq!(dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP), Ok(0));
    assert_eq!(ucase(&|_| {}), Err(libc::EINVAL));
    uiommufd::plumbing::files::close(fd as i32).unwrap();

    // a v1 container cannot track
    let v1 = Context::new_vfio_container().unwrap();
    raw(&v1, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU).unwrap();
    assert_eq!(
        dirty(&v1, VFIO_IOMMU_DIRTY_PAGES_FLAG_START),
        Err(libc::EACCES)
    );
    // no compat IOAS: ENODEV first
    vfio_ioas(&v1, IOMMU_VFIO_IOAS_CLEAR, 0).unwrap();
    assert_eq!(
        dirty(&v1, VFIO_IOMMU_DIRTY_PAGES_FLAG_START),
        Err(libc::ENODEV)
    );
    ctx.check_invariants().unwrap();
}

#[test]
fn dirty_pages_report_access_writes() {
    let (ctx, ioas, buf, fd) = tracked_with_access();

    // writes before START are not reported
    access_write(&ctx, fd, A, 10).unwrap();
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START).unwrap();
    assert!(get_dirty(&ctx, A, 16 * PS).is_empty());

    access_write(&ctx, fd, A + PS + 5, 1).unwrap(); // page 1
    access_write(&ctx, fd, A + 3 * PS - 1, 2).unwrap(); // pages 2 and 3
    access_write(&ctx, fd, A + 9 * PS, PS).unwrap(); // page 9 exactly
                                                     // reads dirty nothing
    let mut out = [0u8; 16];
    let rd = TestAccessRw {
        iova: A + 12 * PS,
        length: 16,
        uptr: out.as_mut_ptr() as u64,
        flags: 0,
        _pad: 0,
    };
    test_cmd(&ctx, IOMMU_TEST_OP_ACCESS_RW, fd, rd.as_bytes()).unwrap();
    // the data really arrived
    assert_eq!(buf.byte(9 * PS), 0x5a, "access_rw wrote the memory");
    // one mapping at a time, then both
    assert_eq!(get_dirty(&ctx, A + 8 * PS, 8 * PS), vec![1]);
    assert_eq!(get_dirty(&ctx, A, 16 * PS), vec![1, 2, 3]);
    // cleared by the read
    assert!(get_dirty(&ctx, A, 16 * PS).is_empty());

    // a write pin is dirty while pinned
    let p = TestAccessPages {
        flags: MOCK_FLAGS_ACCESS_WRITE,
        out_access_pages_id: 0,
        iova: A + 4 * PS,
        length: 2 * PS,
        uptr: 0,
    };
    let t = test_cmd(&ctx, IOMMU_TEST_OP_ACCESS_PAGES, fd, p.as_bytes()).unwrap();
    let item = TestAccessPages::read_from_prefix(&t.payload)
        .unwrap()
        .0
        .out_access_pages_id;
    // a read pin is not
    let rp = TestAccessPages {
        flags: 0,
        iova: A + 10 * PS,
        length: PS,
        ..p
    };
    test_cmd(&ctx, IOMMU_TEST_OP_ACCESS_PAGES, fd, rp.as_bytes()).unwrap();
    assert_eq!(get_dirty(&ctx, A, 16 * PS), vec![4, 5]);
    assert_eq!(get_dirty(&ctx, A, 16 * PS), vec![4, 5]);
    let dp = TestDestroyAccessPages {
        access_pages_id: item,
    };
    test_cmd(&ctx, IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, fd, dp.as_bytes()).unwrap();
    assert!(get_dirty(&ctx, A, 16 * PS).is_empty());

    // unmap with bitmap: bits relative to the unmap's iova, size written back
    access_write(&ctx, fd, A + 8 * PS + 2 * PS, 3 * PS).unwrap(); // pages 10..=12
    access_write(&ctx, fd, A + 7 * PS, 1).unwrap(); // page 7 (first mapping)
    let mut bm = [0u64; 1];
    let mut u = unmap_req(A + 8 * PS, 8 * PS, &mut bm);
    // the read pin at page 10 is released by the unmap notification
    ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u).unwrap();
    assert_eq!(u.hdr.size, 8 * PS);
    assert_eq!(set_bits(&bm), vec![2, 3, 4]);
    assert_eq!(areas(&ctx, ioas), vec![(A, 8 * PS)]);
    // a new mapping at the unmapped IOVA starts clean
    map_dma(&ctx, buf.addr() + 8 * PS, 8 * PS, A + 8 * PS).unwrap();
    assert!(get_dirty(&ctx, A + 8 * PS, 8 * PS).is_empty());
    // unmap with bitmap of an empty range: success, size 0
    let mut u = unmap_req(A + 32 * PS, 8 * PS, &mut bm);
    ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u).unwrap();
    assert_eq!(u.hdr.size, 0);
    assert_eq!(get_dirty(&ctx, A, 8 * PS), vec![7]);

    // STOP forgets; writes while stopped are not logged
    access_write(&ctx, fd, A, 1).unwrap();
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP).unwrap();
    access_write(&ctx, fd, A + PS, 1).unwrap();
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START).unwrap();
    assert!(get_dirty(&ctx, A, 16 * PS).is_empty());
    uiommufd::plumbing::files::close(fd as i32).unwrap();
    ctx.check_invariants().unwrap();
}

#[test]
fn dirty_pages_report_device_writes() {
    let (ctx, ioas) = container();
    let (stdev, _auto, idev) = mock_domain(&ctx, ioas);
    raw(&ctx, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU).unwrap();
    let buf = Buf::zeroed(8 * PS, PS);
    map_dma(&ctx, buf.addr(), 8 * PS, A).unwrap();
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START).unwrap();
    // a domain without dirty tracking may have written anything
    assert_eq!(get_dirty(&ctx, A, 8 * PS), (0..8).collect::<Vec<_>>());

    // move the device to a dirty-tracking HWPT (the auto domain goes)
    let hwpt = hwpt_alloc(&ctx, idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    mock_domain_replace(&ctx, stdev, hwpt).unwrap();
    assert_eq!(ctx.ioas(ioas).unwrap().iopt().domains().len(), 1);
    // attached after START: adopted at the next read, reported whole once
    assert_eq!(get_dirty(&ctx, A, 8 * PS), (0..8).collect::<Vec<_>>());
    assert!(get_dirty(&ctx, A, 8 * PS).is_empty());

    // the device writes pages 2 and 6 (the mock's IOMMU_TEST_OP_DIRTY)
    let marks = [1u64 << 2 | 1 << 6];
    let device_writes = || kit::test_dirty(&ctx, hwpt, A, 8 * PS, PS, marks.as_ptr() as u64);
    assert_eq!(device_writes(), Ok(2));
    assert_eq!(get_dirty(&ctx, A, 8 * PS), vec![2, 6]);
    assert!(get_dirty(&ctx, A, 8 * PS).is_empty());
    // and both sources together in an unmap
    let fd = create_access(&ctx, ioas, 0);
    access_write(&ctx, fd, A + PS, 1).unwrap();
    device_writes().unwrap();
    let mut bm = [0u64; 1];
    let mut u = unmap_req(A, 8 * PS, &mut bm);
    ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u).unwrap();
    assert_eq!(set_bits(&bm), vec![1, 2, 6]);
    // STOP turns the domain's tracking off again
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP).unwrap();
    assert_eq!(device_writes(), Err(libc::EINVAL));
    uiommufd::plumbing::files::close(fd as i32).unwrap();
    ctx.check_invariants().unwrap();
}

/// Type1 copies each mapping's bitmap out over the user's buffer
/// (`update_user_bitmap`): the words a mapping's bits fall in are
/// overwritten, stale bits cleared, except the first word of a mapping that
/// starts inside a word, which keeps what the buffer held; words no
/// mapping reaches are left alone. The same for UNMAP_DMA's bitmap.
#[test]
fn dirty_bitmap_words_are_overwritten_like_type1() {
    overwritten_like_type1();
}

/// The same with fault-safe in-place access (as under the preload and in
/// `migrate`): the runs of words that must end up zero are checked with
/// one in-place scan each (`UserMemory::words_zero`) before any is read
/// into a buffer; stale bits before and after an area's dirty words are
/// still cleared, and only there.
#[test]
fn dirty_bitmap_words_are_overwritten_like_type1_in_place() {
    assert!(uiommufd::faultsafe::install());
    overwritten_like_type1();
    // one mapping of 640 pages (10 words), page 300 (word 4) dirty
    let (ctx, _ioas, _buf, fd) = tracked_with_access_at(640, &[(0, 640)]);
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START).unwrap();
    let mut g0 = [0u64; 10];
    let mut g = get_req(A, 640 * PS, &mut g0);
    get_bitmap_with(&ctx, &mut g).unwrap();
    for stale in [vec![], vec![1], vec![8], vec![0, 9], vec![3, 5]] {
        access_write(&ctx, fd, A + 300 * PS, 1).unwrap();
        let mut bm = [0u64; 10];
        for &w in &stale {
            bm[w] = 0xdead_beef << w;
        }
        let mut g = get_req(A, 640 * PS, &mut bm);
        get_bitmap_with(&ctx, &mut g).unwrap();
        let mut want = [0u64; 10];
        want[4] = 1 << (300 % 64);
        assert_eq!(bm, want, "stale words {stale:?}");
    }
    uiommufd::plumbing::files::close(fd as i32).unwrap();
    ctx.check_invariants().unwrap();
}

fn overwritten_like_type1() {
    // pages 0..3 and 5..75 mapped, 3 and 4 a hole
    let (ctx, _ioas, _buf, fd) = tracked_with_access_at(80, &[(0, 3), (5, 70)]);
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START).unwrap();
    let write_pages = |pages: &[u64]| {
        for &p in pages {
            access_write(&ctx, fd, A + p * PS, 1).unwrap();
        }
    };
    write_pages(&[1, 5, 70]);
    // a buffer full of stale bits, over 192 pages
    let mut bm = [u64::MAX; 3];
    let mut g = get_req(A, 192 * PS, &mut bm);
    get_bitmap_with(&ctx, &mut g).unwrap();
    // word 0: the first mapping's word (bit 1; the hole's bits 3 and 4
    // cleared with it), then the second mapping's bits ORed in from bit 5;
    // word 1: the second mapping's rest (page 70), zeros after page 74;
    // word 2: no mapping, untouched
    assert_eq!(bm, [1 << 1 | 1 << 5, 1 << 6, u64::MAX]);

    // the second mapping alone, from a range that starts with it (bit 0
    // is page 5, no shift): its first word is overwritten too
    write_pages(&[6]);
    let mut bm = [1 << 0 | 1 << 63, u64::MAX];
    let mut g = get_req(A + 5 * PS, 70 * PS, &mut bm);
    get_bitmap_with(&ctx, &mut g).unwrap();
    assert_eq!(bm, [1 << 1, 0]);

    // UNMAP_DMA with a bitmap writes the same way
    write_pages(&[2]);
    let mut bm = [u64::MAX; 2];
    let mut u = unmap_req(A, 3 * PS, &mut bm);
    ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u).unwrap();
    assert_eq!(u.hdr.size, 3 * PS);
    assert_eq!(bm, [1 << 2, u64::MAX]);
    uiommufd::plumbing::files::close(fd as i32).unwrap();
    ctx.check_invariants().unwrap();
}

/// A GET_BITMAP whose bitmap turns unwritable part way, between two
/// mappings' words, fails with `EFAULT` as type1's does (mapping by
/// mapping): the first mapping's word was written and its pages were
/// reported, the second mapping's pages are still dirty for the next read.
#[test]
fn dirty_pages_fault_between_mappings_keeps_the_rest() {
    // two mappings of 64 pages: one bitmap word each
    let (ctx, _ioas, _buf, fd) = tracked_with_access_at(128, &[(0, 64), (64, 64)]);
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START).unwrap();
    access_write(&ctx, fd, A + PS, 1).unwrap();
    access_write(&ctx, fd, A + 70 * PS, 1).unwrap();
    // the bitmap's first word ends page 0, its second is on a PROT_NONE page
    let pp = Mapping::pages(2);
    pp.protect(1, libc::PROT_NONE);
    let word0 = pp.page(1) - 8;
    let mut bm = [0u64; 2];
    let mut g = get_req(A, 128 * PS, &mut bm);
    g.range.bitmap.data = word0;
    assert_eq!(get_bitmap_with(&ctx, &mut g), Err(libc::EFAULT));
    // SAFETY: `word0` is the last, aligned word of the mapping's readable
    // first page.
    let got = unsafe { std::ptr::read_volatile(word0 as *const u64) };
    assert_eq!(got, 1 << 1, "the first mapping's word was written");
    assert_eq!(get_dirty(&ctx, A, 128 * PS), vec![70]);
    assert!(get_dirty(&ctx, A, 128 * PS).is_empty());
    uiommufd::plumbing::files::close(fd as i32).unwrap();
    ctx.check_invariants().unwrap();
}

/// Issue 10 item 5 (type1): a GET_BITMAP or UNMAP_DMA+GET_DIRTY_BITMAP
/// whose bitmap cannot be written is `EFAULT` (dirty or not: type1 copies
/// each mapping's whole bitmap) and loses no dirty page: the next good
/// GET_BITMAP reports them, and the failed unmap unmapped nothing.
#[test]
fn dirty_pages_unwritable_bitmap_loses_nothing() {
    let (ctx, ioas, _buf, fd) = tracked_with_access();
    dirty(&ctx, VFIO_IOMMU_DIRTY_PAGES_FLAG_START).unwrap();
    // pages: 0 read-only, 1 PROT_NONE, 2 unmapped
    let pp = Mapping::pages(3);
    pp.protect(0, libc::PROT_READ);
    pp.protect(1, libc::PROT_NONE);
    pp.unmap(2);
    let bad = [pp.page(0), pp.page(1), pp.page(2), 0];
    let with = |data: u64| {
        let mut bm = [0u64; 1];
        let mut g = get_req(A, 16 * PS, &mut bm);
        g.range.bitmap.data = data;
        get_bitmap_with(&ctx, &mut g)
    };
    for data in bad {
        assert_eq!(with(data), Err(libc::EFAULT), "nothing dirty, {data:#x}");
    }
    access_write(&ctx, fd, A + PS, 1).unwrap();
    access_write(&ctx, fd, A + 9 * PS, 2 * PS).unwrap();
    for data in bad {
        assert_eq!(with(data), Err(libc::EFAULT), "dirty, {data:#x}");
    }
    assert_eq!(get_dirty(&ctx, A, 16 * PS), vec![1, 9, 10]);
    assert!(get_dirty(&ctx, A, 16 * PS).is_empty());

    // unmap with an unwritable bitmap: EFAULT, nothing unmapped or lost
    access_write(&ctx, fd, A + 12 * PS, 1).unwrap();
    for data in bad {
        let mut bm = [0u64; 1];
        let mut u = unmap_req(A + 8 * PS, 8 * PS, &mut bm);
        u.bitmap.data = data;
        assert_eq!(ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u), Err(libc::EFAULT));
    }
    assert_eq!(areas(&ctx, ioas), vec![(A, 8 * PS), (A + 8 * PS, 8 * PS)]);
    let mut bm = [0u64; 1];
    let mut u = unmap_req(A + 8 * PS, 8 * PS, &mut bm);
    ioc(&ctx, VFIO_IOMMU_UNMAP_DMA, &mut u).unwrap();
    assert_eq!(set_bits(&bm), vec![4]);
    uiommufd::plumbing::files::close(fd as i32).unwrap();
    ctx.check_invariants().unwrap();
}
