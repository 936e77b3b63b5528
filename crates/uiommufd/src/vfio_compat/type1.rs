//! The VFIO type1 container ioctls on the compat IOAS, as 6.12's
//! vfio_compat.c answers them.
//!
//! Errno rules (in the order they are checked):
//!
//! | ioctl | rule |
//! |---|---|
//! | `VFIO_SET_IOMMU` | `EINVAL` type not TYPE1/TYPE1v2 (no-IOMMU mode never exists here); `ENODEV` no compat IOAS; TYPE1 disables large pages: `EINVAL` if a domain is attached and areas exist, `EADDRINUSE` if an area is not page aligned |
//! | `VFIO_CHECK_EXTENSION` | never fails, except `VFIO_DMA_CC_IOMMU`: `ENODEV` without a compat IOAS |
//! | `VFIO_IOMMU_GET_INFO` | `EFAULT` reading 16 bytes; `EINVAL` `argsz` < 16; `ENODEV`; `EFAULT` writing |
//! | `VFIO_IOMMU_MAP_DMA` | `EFAULT` reading 32 bytes; `EINVAL` `argsz` < 32 or flags beyond READ/WRITE; `ENODEV`; then the IOAS map's errnos (fixed IOVA) |
//! | `VFIO_IOMMU_UNMAP_DMA` | `EFAULT` reading 24 bytes; `EINVAL` `argsz` < 24 or flags beyond UNMAP_ALL (+ GET_DIRTY_BITMAP on containers, see `dirty`); `ENODEV`; UNMAP_ALL: `EINVAL` unless iova and size are 0; v1 (large pages off): cut errnos (`EINVAL`, `EBUSY`); then `EINVAL` size 0, `EOVERFLOW` wrap, `ENOENT` range cuts an area, `EBUSY`; nothing mapped is success with size 0 |
//!
//! Anything else answers `ENOTTY`.

use std::mem::{offset_of, size_of};

use zerocopy::IntoBytes;

use super::compat_ioas;
use super::ioctl::{check_argsz, read_prefix, write_prefix};
use crate::context::Context;
use crate::io_pagetable::Prot;
use crate::ioas::Ioas;
use crate::uapi::vfio::*;
use crate::user::page_size;
use crate::{bail, Error, Result};

/// `offsetofend(struct vfio_iommu_type1_info, iova_pgsizes)`
const INFO_MINSZ: usize = offset_of!(VfioIommuType1Info, iova_pgsizes) + size_of::<u64>();
/// `offsetofend(struct vfio_iommu_type1_dma_map, size)`
const MAP_MINSZ: usize = size_of::<VfioIommuType1DmaMap>();
/// `offsetofend(struct vfio_iommu_type1_dma_unmap, size)`
pub(crate) const UNMAP_MINSZ: usize = size_of::<VfioIommuType1DmaUnmap>();

/// `VFIO_SET_IOMMU`
pub(crate) fn set_iommu(ctx: &Context, ty: u64) -> Result<i32> {
    if ty != VFIO_TYPE1_IOMMU && ty != VFIO_TYPE1V2_IOMMU {
        bail!(
            EINVAL,
            "VFIO_SET_IOMMU: type {ty} is neither VFIO_TYPE1_IOMMU nor VFIO_TYPE1v2_IOMMU"
        );
    }
    let ioas = compat_ioas(ctx)?;
    if ty == VFIO_TYPE1_IOMMU {
        // v1 may unmap inside a mapping: no IOPTE may span more than a page
        ioas.iopt().set_large_pages(false)?;
    }
    Ok(0)
}

/// `VFIO_CHECK_EXTENSION`
pub(crate) fn check_extension(ctx: &Context, ext: u64) -> Result<i32> {
    Ok(match ext {
        VFIO_TYPE1_IOMMU | VFIO_TYPE1V2_IOMMU | VFIO_UNMAP_ALL => 1,
        // Debian's amd64 6.12 builds CONFIG_VFIO_NOIOMMU
        VFIO_NOIOMMU_IOMMU => 1,
        VFIO_DMA_CC_IOMMU => cc_iommu(ctx)?,
        // obsolete nesting, VFIO_UPDATE_VADDR, SPAPR, EEH, unknown
        _ => 0,
    })
}

/// `VFIO_DMA_CC_IOMMU`: 1 unless a HWPT of the compat IOAS cannot enforce
/// cache coherency.
fn cc_iommu(ctx: &Context) -> Result<i32> {
    let ioas = compat_ioas(ctx)?;
    let hwpts = ioas.hwpts.lock();
    let all = hwpts
        .iter()
        .filter_map(|w| w.upgrade())
        .all(|h| h.domain().enforce_cache_coherency());
    Ok(all as i32)
}

/// The page sizes the container offers (`iommufd_get_pagesizes`): what
/// every attached domain supports, rounded to whole CPU pages, and at least
/// the IOVA alignment.
pub(crate) fn pagesizes(ioas: &Ioas) -> u64 {
    let ps = page_size();
    let mut bm = ioas.iopt().domain_pgsizes();
    if bm & (ps - 1) != 0 {
        bm &= !(ps - 1);
        bm |= ps;
    }
    bm.max(ioas.iopt().iova_alignment())
}

/// The smallest page size the container offers: the dirty bitmap granule.
pub(crate) fn min_pgsize(ioas: &Ioas) -> u64 {
    let bm = pagesizes(ioas);
    1u64 << bm.trailing_zeros()
}

/// One capability of the info chain: writes itself into `avail` bytes at
/// `at` (nothing, or what fits, when `at` is `None`), returns its size.
type FillCap = fn(&Context, &Ioas, Option<u64>, u64) -> Result<u64>;

/// The header of a version 1 capability `id`; `next` is linked by
/// [`get_info`] once the following capability's place is known.
fn cap_header(id: u16) -> VfioInfoCapHeader {
    VfioInfoCapHeader {
        id,
        version: 1,
        next: 0,
    }
}

/// The end of a [`FillCap`]: `cap`, the head of a capability followed by
/// `extra` bytes (already written), goes at `at` when the whole capability
/// fits in `avail`; its size. `what` names it in the error.
fn put_cap(
    ctx: &Context,
    at: Option<u64>,
    avail: u64,
    cap: &[u8],
    extra: u64,
    what: &str,
) -> Result<u64> {
    let size = cap.len() as u64 + extra;
    if let Some(at) = at.filter(|_| avail >= size) {
        ctx.memory()
            .write(at, cap)
            .map_err(|_| Error::new(libc::EFAULT, format!("cannot write the {what} cap")))?;
    }
    Ok(size)
}

fn fill_dma_avail(ctx: &Context, _: &Ioas, at: Option<u64>, avail: u64) -> Result<u64> {
    let cap = VfioIommuType1InfoDmaAvail {
        header: cap_header(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL),
        // iommufd's limit is the memory limit; it reports U32_MAX
        avail: u32::MAX,
    };
    put_cap(ctx, at, avail, cap.as_bytes(), 0, "DMA_AVAIL")
}

fn fill_iova_range(ctx: &Context, ioas: &Ioas, at: Option<u64>, avail: u64) -> Result<u64> {
    let (holes, _) = ioas.iopt().iova_ranges();
    let hdr = size_of::<VfioIommuType1InfoCapIovaRange>() as u64;
    let elm = size_of::<VfioIovaRange>() as u64;
    let size_for = |n: u64| hdr + elm * n;
    let mut cap = VfioIommuType1InfoCapIovaRange {
        header: cap_header(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE),
        nr_iovas: 0,
        reserved: 0,
    };
    for &(start, end) in &holes {
        if let Some(at) = at {
            if avail >= size_for(cap.nr_iovas as u64 + 1) {
                let r = VfioIovaRange { start, end };
                ctx.memory()
                    .write(at + size_for(cap.nr_iovas as u64), r.as_bytes())
                    .map_err(|_| Error::fault("cannot write an IOVA range"))?;
            }
        }
        cap.nr_iovas += 1;
    }
    put_cap(
        ctx,
        at,
        avail,
        cap.as_bytes(),
        elm * cap.nr_iovas as u64,
        "IOVA_RANGE",
    )
}

fn fill_migration(ctx: &Context, ioas: &Ioas, at: Option<u64>, avail: u64) -> Result<u64> {
    let cap = VfioIommuType1InfoCapMigration {
        header: cap_header(VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION),
        flags: 0,
        _pad: 0,
        pgsize_bitmap: min_pgsize(ioas),
        max_dirty_bitmap_size: super::dirty::DIRTY_BITMAP_SIZE_MAX,
    };
    put_cap(ctx, at, avail, cap.as_bytes(), 0, "MIGRATION")
}

/// `VFIO_IOMMU_GET_INFO`: page sizes plus the capability chain. When
/// `argsz` is too small for the chain, `argsz` comes back as the size
/// needed and `cap_offset` as 0; caps (and their `next` links) are written
/// only where they fit, never past `argsz`.
pub(crate) fn get_info(ctx: &Context, arg: u64) -> Result<i32> {
    let mut info: VfioIommuType1Info =
        read_prefix(ctx, arg, INFO_MINSZ, "cannot read vfio_iommu_type1_info")?;
    check_argsz("VFIO_IOMMU_GET_INFO", info.argsz, INFO_MINSZ)?;
    let argsz = info.argsz as u64;
    let out_n = (info.argsz as usize).min(size_of::<VfioIommuType1Info>());
    let ioas = compat_ioas(ctx)?;
    info.flags = VFIO_IOMMU_INFO_PGSIZES;
    info.iova_pgsizes = pagesizes(&ioas);
    info.cap_offset = 0;

    let mut fills: Vec<FillCap> = vec![fill_dma_avail, fill_iova_range];
    if ctx.is_vfio_container() {
        // dirty tracking is our extension: only containers advertise it
        fills.push(fill_migration);
    }
    let mut total = size_of::<VfioIommuType1Info>() as u64;
    let mut last_cap: Option<u64> = None;
    for fill in fills {
        let size = if argsz > total {
            fill(ctx, &ioas, Some(arg + total), argsz - total)?
        } else {
            fill(ctx, &ioas, None, 0)?
        };
        let size = size.next_multiple_of(8);
        if let Some(prev) = last_cap {
            if argsz >= total {
                let next_at = arg + prev + offset_of!(VfioInfoCapHeader, next) as u64;
                ctx.memory()
                    .write(next_at, (total as u32).as_bytes())
                    .map_err(|_| Error::fault("cannot link the cap chain"))?;
            }
        }
        last_cap = Some(total);
        total += size;
    }
    if argsz >= total {
        info.cap_offset = size_of::<VfioIommuType1Info>() as u32;
    }
    info.argsz = total as u32;
    info.flags |= VFIO_IOMMU_INFO_CAPS;
    write_prefix(ctx, arg, &info, out_n, "cannot write vfio_iommu_type1_info")?;
    Ok(0)
}

/// `VFIO_IOMMU_MAP_DMA`: map at the fixed IOVA `iova`.
pub(crate) fn map_dma(ctx: &Context, arg: u64) -> Result<i32> {
    let map: VfioIommuType1DmaMap =
        read_prefix(ctx, arg, MAP_MINSZ, "cannot read vfio_iommu_type1_dma_map")?;
    const SUPPORTED: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    check_argsz("VFIO_IOMMU_MAP_DMA", map.argsz, MAP_MINSZ)?;
    if map.flags & !SUPPORTED != 0 {
        bail!(
            EINVAL,
            "VFIO_IOMMU_MAP_DMA: flags {:#x} are not supported (only READ and WRITE; VFIO_DMA_MAP_FLAG_VADDR is not)",
            map.flags & !SUPPORTED
        );
    }
    let prot = Prot {
        read: map.flags & VFIO_DMA_MAP_FLAG_READ != 0,
        write: map.flags & VFIO_DMA_MAP_FLAG_WRITE != 0,
    };
    let ioas = compat_ioas(ctx)?;
    ioas.map_user(map.vaddr, map.size, Some(map.iova), prot)?;
    Ok(0)
}

/// `VFIO_IOMMU_UNMAP_DMA` (the flag check; a bitmap unmap goes to `dirty`).
pub(crate) fn unmap_dma(ctx: &Context, arg: u64) -> Result<i32> {
    let mut unmap: VfioIommuType1DmaUnmap = read_prefix(
        ctx,
        arg,
        UNMAP_MINSZ,
        "cannot read vfio_iommu_type1_dma_unmap",
    )?;
    let mut supported = VFIO_DMA_UNMAP_FLAG_ALL;
    if ctx.is_vfio_container() {
        supported |= VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
    }
    check_argsz("VFIO_IOMMU_UNMAP_DMA", unmap.argsz, UNMAP_MINSZ)?;
    if unmap.flags & !supported != 0 {
        bail!(
            EINVAL,
            "VFIO_IOMMU_UNMAP_DMA: flags {:#x} are not supported here",
            unmap.flags & !supported
        );
    }
    if unmap.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
        return super::dirty::unmap_with_bitmap(ctx, arg, unmap);
    }
    let ioas = compat_ioas(ctx)?;
    let res = if unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 {
        if unmap.iova != 0 || unmap.size != 0 {
            bail!(
                EINVAL,
                "VFIO_IOMMU_UNMAP_DMA: UNMAP_ALL needs iova and size 0 (got {:#x}, {:#x})",
                unmap.iova,
                unmap.size
            );
        }
        ioas.unmap_all()
    } else {
        if !ioas.iopt().large_pages() {
            // type1 (v1): any aligned piece of a mapping may go; cut the
            // areas at both ends of the range first (kept on failure)
            let end = unmap.iova.wrapping_add(unmap.size).wrapping_sub(1);
            let before = unmap.iova.wrapping_sub(1);
            let cuts = [end, before];
            let n = if unmap.iova != 0 { 2 } else { 1 };
            ioas.iopt().cut_iova(&cuts[..n])?;
        }
        ioas.unmap(unmap.iova, unmap.size)
    };
    unmap.size = *res.as_ref().unwrap_or(&0);
    reply_unmap(ctx, arg, &unmap)?;
    res.map(|_| 0)
}

/// Copy an unmap's reply (`size`: the bytes unmapped) back to the caller.
pub(crate) fn reply_unmap(ctx: &Context, arg: u64, unmap: &VfioIommuType1DmaUnmap) -> Result<()> {
    write_prefix(
        ctx,
        arg,
        unmap,
        UNMAP_MINSZ,
        "cannot write vfio_iommu_type1_dma_unmap",
    )
}
