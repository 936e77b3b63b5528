//! VFIO type1 dirty page tracking on `/dev/vfio/vfio` containers (6.12's
//! iommufd answers `ENOTTY`; this follows the type1 contract of the v16
//! dirty-pages series and of 6.12's vfio_iommu_type1.c).
//!
//! What is reported is what was really written (see `tracking.rs`):
//! by a device through a domain with dirty
//! tracking (its dirty bits), by an access (`access_rw` writes, and pages
//! an access holds pinned for write), and everything mapped while a domain
//! without dirty tracking is attached. The bitmap page size is the
//! container's smallest page size (`iova_pgsizes`), as type1's.
//!
//! # Errno rules
//!
//! `VFIO_IOMMU_DIRTY_PAGES`, in order: `ENODEV` no compat IOAS; `EACCES`
//! the container is type1 v1 (large pages off); `EFAULT` reading the 8-byte
//! header; `EINVAL` `argsz` < 8, unknown flags, no flag or more than one.
//! START/STOP never fail otherwise (START: `EINVAL` for a mapping of more
//! than `INT_MAX` pages, or what a domain answers). GET_BITMAP: `EINVAL`
//! `argsz` < 8 + 40; `EFAULT` reading the range; `EINVAL` for
//! `bitmap.pgsize` other than the page size, `iova` not a multiple of it,
//! `size` zero or not a multiple of it, `iova + size` wrapping, a bitmap the
//! user may not address (`access_ok`), a bitmap size of 0, above 256 MiB,
//! or below what `size` needs, tracking off, a range that cuts a mapping at
//! either end; `EFAULT` writing the bitmap (the words of every mapping in
//! the range must be writable, dirty or not, as type1 copies each mapping's
//! bitmap whole; what was read and cleared and not delivered is put back,
//! so a failed call loses no dirty page).
//!
//! `VFIO_IOMMU_UNMAP_DMA` with `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`:
//! `EINVAL` combined with `UNMAP_ALL`, `argsz` < 24 + 24; `EFAULT` reading
//! the `vfio_bitmap`; `EINVAL` bitmap not addressable, page size 0, bitmap
//! size rules as above; `ENODEV`; `EINVAL` `iova` or `size` not multiples of
//! the page size, `size` 0 or wrapping, tracking off, `bitmap.pgsize` other
//! than the page size; `ENOENT` a range that cuts a mapping (as the unmap
//! without bitmap); `EFAULT` writing the bitmap (nothing is unmapped then);
//! then the unmap's own errnos. On error nothing is written back.
//!
//! Bitmaps: bit `i` (bit `i % 8` of byte `i / 8`) is the page at
//! `iova + i * pgsize`. As type1's, they are written over the user's
//! buffer mapping by mapping, in whole u64 words: the words a mapping's
//! bits fall in are overwritten (a stale bit there is cleared), the first
//! word of a mapping that starts inside a word keeps the buffer's bits, and
//! words no mapping reaches are left as they were (iommufd's
//! `GET_DIRTY_BITMAP` and DMA logging's report only set bits instead).
//! The range of GET_BITMAP may cover several whole mappings and holes
//! (6.12's rule; the v16 series wanted exactly one mapping).

use std::mem::size_of;

use super::compat_ioas;
use super::ioctl::{check_argsz, read_prefix};
use super::tracking::Type1Session;
use super::type1::{min_pgsize, reply_unmap, UNMAP_MINSZ};
use crate::context::Context;
use crate::io_pagetable::AreaDirty;
use crate::ioas::Ioas;
use crate::uapi::vfio::*;
use crate::user::UserMemory;
use crate::{bail, Error, Result};
use zerocopy::IntoBytes;

/// type1's `DIRTY_BITMAP_PAGES_MAX`: the most pages one bitmap may hold.
pub(crate) const DIRTY_BITMAP_PAGES_MAX: u64 = i32::MAX as u64;
/// type1's `DIRTY_BITMAP_SIZE_MAX`: the largest bitmap in bytes (256 MiB).
pub(crate) const DIRTY_BITMAP_SIZE_MAX: u64 = dirty_bitmap_bytes(DIRTY_BITMAP_PAGES_MAX);
/// x86-64's `TASK_SIZE_MAX`: the end of what `access_ok` accepts.
const USER_ADDR_LIMIT: u64 = 0x7fff_ffff_f000;

/// `DIRTY_BITMAP_BYTES(n)`: bytes of a bitmap of `n` bits, in whole u64s.
const fn dirty_bitmap_bytes(n: u64) -> u64 {
    n.div_ceil(64) * 8
}

/// `offsetofend(struct vfio_iommu_type1_dirty_bitmap, flags)`
const DIRTY_MINSZ: usize = size_of::<VfioIommuType1DirtyBitmap>();

/// The kernel's `access_ok` on x86-64.
fn access_ok(addr: u64, size: u64) -> bool {
    size <= USER_ADDR_LIMIT && addr <= USER_ADDR_LIMIT - size
}

/// type1's `verify_bitmap_size`.
fn verify_bitmap_size(what: &str, npages: u64, bitmap_size: u64) -> Result<()> {
    if npages == 0 {
        bail!(
            EINVAL,
            "{what}: the range holds no whole page of bitmap.pgsize"
        );
    }
    if bitmap_size == 0 {
        bail!(EINVAL, "{what}: bitmap.size is zero");
    }
    if bitmap_size > DIRTY_BITMAP_SIZE_MAX {
        bail!(
            EINVAL,
            "{what}: bitmap.size {bitmap_size:#x} is above the maximum {DIRTY_BITMAP_SIZE_MAX:#x}"
        );
    }
    let need = dirty_bitmap_bytes(npages);
    if bitmap_size < need {
        bail!(
            EINVAL,
            "{what}: bitmap.size {bitmap_size:#x} is below the {need:#x} bytes {npages} pages need"
        );
    }
    Ok(())
}

/// The bitmap's user pointer, checked like type1 checks it (`EINVAL`).
fn check_bitmap_addr(what: &str, bm: &VfioBitmap) -> Result<()> {
    if !access_ok(bm.data, bm.size) {
        bail!(
            EINVAL,
            "{what}: bitmap.data {:#x} + size {:#x} is not user-addressable",
            bm.data,
            bm.size
        );
    }
    Ok(())
}

/// `ENOENT`/`EINVAL` (`unmap` or not) when `iova..=last` cuts a mapping at
/// either end.
fn check_whole_mappings(what: &str, ioas: &Ioas, iova: u64, last: u64, unmap: bool) -> Result<()> {
    let Some((a_iova, a_last)) = ioas.iopt().area_cut_by(iova, last) else {
        return Ok(());
    };
    let msg = format!(
        "{what}: range [{iova:#x}, {last:#x}] cuts the mapping [{a_iova:#x}, {a_last:#x}]; only whole mappings are \
         tracked"
    );
    Err(if unmap {
        Error::new(libc::ENOENT, msg)
    } else {
        Error::new(libc::EINVAL, msg)
    })
}

/// Words of the user bitmap one read (and write, where they differ)
/// covers: an area's span goes through two 1 KiB stack buffers, chunk by
/// chunk, never allocated whole.
const STORE_WORDS: usize = 128;

/// Store the area's bits into the user bitmap at `data` (an array of the
/// kernel's `unsigned long`s: native u64 words) from bit `off`, as type1's
/// `update_user_bitmap` does: every word the area's bits fall in is
/// overwritten, the area's bits shifted into place and zeros around them
/// (a stale bit the caller left in its buffer is cleared, and so are the
/// bits after the area's end in its last word); only when the area starts
/// inside a word does that first word keep what the buffer held, ORed with
/// the area's bits, so that areas sharing a word both arrive (type1 reads
/// that word back first). `EFAULT` when a word cannot be read or written;
/// the words before were written.
fn store_area_bits(mem: &dyn UserMemory, data: u64, off: u64, ad: &AreaDirty<'_>) -> Result<()> {
    if ad.nbits == 0 {
        return Ok(());
    }
    let shift = (off % 64) as u32;
    let nwords = (ad.nbits + u64::from(shift)).div_ceil(64);
    // Word `k` of the area's own bitmap, cut at `nbits`.
    let area = |k: u64| -> u64 {
        let x = k
            .checked_sub(ad.first_word as u64)
            .and_then(|j| ad.words.get(j as usize))
            .copied()
            .unwrap_or(0);
        match ad.nbits.checked_sub(k * 64) {
            Some(n) if n >= 64 => x,
            Some(n) => x & ((1u64 << n) - 1),
            None => 0,
        }
    };
    // Word `j` of the span: the area's bits shifted left by `shift`.
    let out = |j: u64| -> u64 {
        if shift == 0 {
            area(j)
        } else {
            let low = j.checked_sub(1).map_or(0, |k| area(k) >> (64 - shift));
            area(j) << shift | low
        }
    };
    let fault = |what: &str, at: u64, e: Error| {
        crate::err!(
            EFAULT,
            "cannot {what} the dirty bitmap word at {at:#x}: {}",
            e.reason()
        )
    };
    let end_fault = || Error::fault("the dirty bitmap runs past the end of the address space");
    let base = (off / 64)
        .checked_mul(8)
        .and_then(|b| data.checked_add(b))
        .filter(|b| b.checked_add(nwords * 8).is_some())
        .ok_or_else(end_fault)?;
    crate::io_pagetable::user_bitmap_writable(mem, base, 0, nwords * 8).map_err(|e| {
        crate::err!(
            EFAULT,
            "the dirty bitmap at {base:#x} is not writable user memory: {}",
            e.reason()
        )
    })?;
    // Only the span words from the area's first stored word to one past
    // its last (the carry of a shift) can hold set bits; the others are
    // zeros, checked, not built. Word 0 of a span that starts inside a
    // word keeps what it holds.
    let nz_lo = ad.first_word as u64;
    let nz_end = nz_lo + ad.words.len() as u64 + u64::from(shift != 0);
    let mut held_all = [0u64; STORE_WORDS];
    let mut want = [0u64; STORE_WORDS];
    // The words before the span and after it are each checked in one pass
    // first (`UserMemory::words_zero`: in place, no copy into `held`):
    // most of a bitmap the caller keeps zeroed is skipped so. A run that
    // is not all zero is then taken chunk by chunk like the span.
    let mut scanned_to = 0u64;
    let mut j = 0u64;
    while j < nwords {
        let outside = j < nz_lo || j >= nz_end;
        if outside && j >= scanned_to && !(j == 0 && shift != 0) {
            let run_end = if j < nz_lo { nz_lo.min(nwords) } else { nwords };
            let at = base + j * 8;
            if mem
                .words_zero(at, run_end - j)
                .map_err(|e| fault("read", at, e))?
            {
                j = run_end;
                continue;
            }
            scanned_to = run_end;
        }
        let n = (nwords - j).min(STORE_WORDS as u64) as usize;
        let at = base + j * 8;
        let held = &mut held_all[..n];
        mem.read(at, held.as_mut_bytes())
            .map_err(|e| fault("read", at, e))?;
        let clip = |w: u64| (w.clamp(j, j + n as u64) - j) as usize;
        let (lo, hi) = (clip(nz_lo), clip(nz_end));
        let keep = j == 0 && shift != 0;
        let z0 = usize::from(keep && lo > 0);
        let mut same = held[z0..lo]
            .iter()
            .chain(&held[hi..])
            .fold(0, |acc, &w| acc | w)
            == 0;
        for k in lo..hi {
            let mut w = out(j + k as u64);
            if k == 0 && keep {
                w |= held[0];
            }
            want[k] = w;
            same &= held[k] == w;
        }
        // A chunk that already holds what it should is not written again
        // (a caller's zeroed buffer mostly does): the writability probe
        // above stands for the store.
        if !same {
            want[..lo].fill(0);
            want[hi..n].fill(0);
            if z0 == 1 {
                want[0] = held[0];
            }
            mem.write(at, want[..n].as_bytes())
                .map_err(|e| fault("write", at, e))?;
        }
        j += n as u64;
    }
    Ok(())
}

/// `VFIO_IOMMU_DIRTY_PAGES`
pub(crate) fn dirty_pages(ctx: &Context, arg: u64) -> Result<i32> {
    const W: &str = "VFIO_IOMMU_DIRTY_PAGES";
    const MASK: u32 = VFIO_IOMMU_DIRTY_PAGES_FLAG_START
        | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
        | VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
    let ioas = compat_ioas(ctx)?;
    if !ioas.iopt().large_pages() {
        bail!(
            EACCES,
            "{W}: dirty tracking needs a type1v2 container (this one is type1 v1)"
        );
    }
    let dirty: VfioIommuType1DirtyBitmap = read_prefix(
        ctx,
        arg,
        DIRTY_MINSZ,
        "cannot read vfio_iommu_type1_dirty_bitmap",
    )?;
    check_argsz(W, dirty.argsz, DIRTY_MINSZ)?;
    if dirty.flags & !MASK != 0 {
        bail!(EINVAL, "{W}: unknown flags {:#x}", dirty.flags & !MASK);
    }
    if dirty.flags.count_ones() != 1 {
        bail!(
            EINVAL,
            "{W}: exactly one of START, STOP and GET_BITMAP must be set (flags {:#x})",
            dirty.flags
        );
    }
    let iopt = ioas.iopt();
    let session = Type1Session::of(&ioas);
    match dirty.flags {
        VFIO_IOMMU_DIRTY_PAGES_FLAG_START => {
            if !session.is_on() {
                let pgshift = min_pgsize(&ioas).trailing_zeros();
                if let Some(a) = ioas
                    .areas()
                    .into_iter()
                    .find(|a| a.length >> pgshift > DIRTY_BITMAP_PAGES_MAX)
                {
                    bail!(
                        EINVAL,
                        "{W}: the mapping at {:#x} holds more than {DIRTY_BITMAP_PAGES_MAX} pages",
                        a.iova
                    );
                }
                session.start(iopt)?;
                tracing::debug!("type1 dirty tracking started");
            }
            Ok(0)
        }
        VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP => {
            session.stop(iopt);
            tracing::debug!("type1 dirty tracking stopped");
            Ok(0)
        }
        _ => get_bitmap(ctx, arg, &dirty, &ioas),
    }
}

/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP`
fn get_bitmap(
    ctx: &Context,
    arg: u64,
    dirty: &VfioIommuType1DirtyBitmap,
    ioas: &Ioas,
) -> Result<i32> {
    const W: &str = "VFIO_IOMMU_DIRTY_PAGES GET_BITMAP";
    let data_size = dirty.argsz as usize - DIRTY_MINSZ;
    let need = size_of::<VfioIommuType1DirtyBitmapGet>();
    if data_size < need {
        bail!(
            EINVAL,
            "{W}: argsz {} leaves {data_size} bytes for vfio_iommu_type1_dirty_bitmap_get ({need} needed)",
            dirty.argsz
        );
    }
    let range: VfioIommuType1DirtyBitmapGet = read_prefix(
        ctx,
        arg + DIRTY_MINSZ as u64,
        need,
        "cannot read vfio_iommu_type1_dirty_bitmap_get",
    )?;
    let pgsize = min_pgsize(ioas);
    let pgshift = pgsize.trailing_zeros();
    if range.bitmap.pgsize != pgsize {
        bail!(
            EINVAL,
            "{W}: bitmap.pgsize {:#x} is not the container's smallest page size {pgsize:#x}",
            range.bitmap.pgsize
        );
    }
    if range.iova & (pgsize - 1) != 0 {
        bail!(
            EINVAL,
            "{W}: iova {:#x} is not a multiple of the page size {pgsize:#x}",
            range.iova
        );
    }
    if range.size == 0 || range.size & (pgsize - 1) != 0 {
        bail!(
            EINVAL,
            "{W}: size {:#x} is zero or not a multiple of the page size {pgsize:#x}",
            range.size
        );
    }
    if range.iova.checked_add(range.size).is_none() {
        bail!(
            EINVAL,
            "{W}: iova {:#x} + size {:#x} wraps",
            range.iova,
            range.size
        );
    }
    check_bitmap_addr(W, &range.bitmap)?;
    verify_bitmap_size(W, range.size >> pgshift, range.bitmap.size)?;
    let session = Type1Session::of(ioas);
    if !session.is_on() {
        bail!(EINVAL, "{W}: dirty tracking is not started");
    }
    let last = range.iova + (range.size - 1);
    check_whole_mappings(W, ioas, range.iova, last, false)?;
    let (data, iova) = (range.bitmap.data, range.iova);
    session.read(ioas.iopt(), iova, last, pgshift, true, |ad| {
        store_area_bits(&**ctx.memory(), data, (ad.iova - iova) >> pgshift, ad)
    })?;
    Ok(0)
}

/// `VFIO_IOMMU_UNMAP_DMA` with `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`
/// (the flags and `argsz` were checked by the caller).
pub(crate) fn unmap_with_bitmap(
    ctx: &Context,
    arg: u64,
    mut unmap: VfioIommuType1DmaUnmap,
) -> Result<i32> {
    const W: &str = "VFIO_IOMMU_UNMAP_DMA GET_DIRTY_BITMAP";
    if unmap.flags & (VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_VADDR) != 0 {
        bail!(EINVAL, "{W}: cannot be combined with UNMAP_ALL or VADDR");
    }
    let need = UNMAP_MINSZ + size_of::<VfioBitmap>();
    if (unmap.argsz as usize) < need {
        bail!(
            EINVAL,
            "{W}: argsz {} has no room for the vfio_bitmap ({need} needed)",
            unmap.argsz
        );
    }
    let bitmap: VfioBitmap = read_prefix(
        ctx,
        arg + UNMAP_MINSZ as u64,
        size_of::<VfioBitmap>(),
        "cannot read the vfio_bitmap",
    )?;
    check_bitmap_addr(W, &bitmap)?;
    if bitmap.pgsize == 0 {
        bail!(EINVAL, "{W}: bitmap.pgsize is zero");
    }
    verify_bitmap_size(W, unmap.size >> bitmap.pgsize.trailing_zeros(), bitmap.size)?;
    let ioas = compat_ioas(ctx)?;
    let pgsize = min_pgsize(&ioas);
    let pgshift = pgsize.trailing_zeros();
    if unmap.iova & (pgsize - 1) != 0 {
        bail!(
            EINVAL,
            "{W}: iova {:#x} is not a multiple of the page size {pgsize:#x}",
            unmap.iova
        );
    }
    if unmap.size == 0
        || unmap.size & (pgsize - 1) != 0
        || unmap.iova.checked_add(unmap.size - 1).is_none()
    {
        bail!(
            EINVAL,
            "{W}: size {:#x} is zero, not a multiple of the page size {pgsize:#x}, or wraps from iova {:#x}",
            unmap.size,
            unmap.iova
        );
    }
    let session = Type1Session::of(&ioas);
    if !session.is_on() {
        bail!(EINVAL, "{W}: dirty tracking is not started");
    }
    if bitmap.pgsize != pgsize {
        bail!(
            EINVAL,
            "{W}: bitmap.pgsize {:#x} is not the container's smallest page size {pgsize:#x}",
            bitmap.pgsize
        );
    }
    let last = unmap.iova + (unmap.size - 1);
    check_whole_mappings(W, &ioas, unmap.iova, last, true)?;
    // Report first (without clearing: on failure the pages stay mapped and
    // dirty), then unmap; the dirty state goes with the mapping.
    session.read(ioas.iopt(), unmap.iova, last, pgshift, false, |ad| {
        store_area_bits(
            &**ctx.memory(),
            bitmap.data,
            (ad.iova - unmap.iova) >> pgshift,
            ad,
        )
    })?;
    unmap.size = ioas.unmap(unmap.iova, unmap.size)?;
    reply_unmap(ctx, arg, &unmap)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_limits() {
        assert_eq!(DIRTY_BITMAP_SIZE_MAX, 1 << 28);
        assert_eq!(dirty_bitmap_bytes(1), 8);
        assert_eq!(dirty_bitmap_bytes(64), 8);
        assert_eq!(dirty_bitmap_bytes(65), 16);
        assert!(access_ok(0x1000, 0x1000));
        assert!(!access_ok(USER_ADDR_LIMIT, 1));
        assert!(!access_ok(u64::MAX - 2, 4));
        assert!(verify_bitmap_size("t", 65, 8).is_err());
        assert!(verify_bitmap_size("t", 64, 8).is_ok());
        assert!(verify_bitmap_size("t", 0, 8).is_err());
        assert!(verify_bitmap_size("t", 1, 0).is_err());
        assert!(verify_bitmap_size("t", 1, DIRTY_BITMAP_SIZE_MAX + 1).is_err());
    }

    /// An area's bits as `IoPagetable::read_area_dirty` lends them: the
    /// span from the first to the last non-zero word.
    fn area(words: &[u64], nbits: u64) -> AreaDirty<'_> {
        let lo = words.iter().position(|&w| w != 0).unwrap_or(0);
        let hi = words.iter().rposition(|&w| w != 0).map_or(0, |h| h + 1);
        AreaDirty {
            iova: 0,
            nbits,
            first_word: lo,
            words: &words[lo..hi.max(lo)],
        }
    }

    /// type1's `update_user_bitmap`, word by word: the area's bits shifted
    /// into place over the words they fall in, the first word ORed with
    /// what it held when the area starts inside it.
    fn model(user: &mut [u64], off: u64, words: &[u64], nbits: u64) {
        let shift = off % 64;
        let nw = (nbits + shift).div_ceil(64) as usize;
        let mut d = vec![0u64; nw];
        for i in 0..nbits {
            if words[(i / 64) as usize] >> (i % 64) & 1 != 0 {
                d[((i + shift) / 64) as usize] |= 1 << ((i + shift) % 64);
            }
        }
        let w0 = (off / 64) as usize;
        if shift != 0 {
            d[0] |= user[w0];
        }
        user[w0..w0 + nw].copy_from_slice(&d);
    }

    /// Spans of many chunks, dense or sparse, at any offset, over buffers
    /// zeroed or full of stale bits, agree with the model.
    #[test]
    fn stores_agree_with_type1() {
        let ctx = Context::new();
        let mem = ctx.memory();
        let mut rnd = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        for (off, nbits, sparse) in [
            (0u64, 3 * 4096 * 8 + 5u64, false),
            (13, 2 * 4096 * 8, false),
            (7, 70, false),
            (64, 3, false),
            (130, 1, true),
            (0, 64 * 1000, true),
            (5, 64 * 1000 + 7, true),
            (64 * 3 + 63, 64 * 600, true),
        ] {
            let words: Vec<u64> = (0..nbits.div_ceil(64))
                .map(|_| {
                    let x = rnd();
                    if sparse && !x.is_multiple_of(7) {
                        0
                    } else {
                        x & x.rotate_left(7)
                    }
                })
                .collect();
            let len = ((off + nbits) / 64 + 4) as usize;
            for stale in [false, true] {
                let mut buf: Vec<u64> = (0..len).map(|_| if stale { rnd() } else { 0 }).collect();
                let mut want = buf.clone();
                model(&mut want, off, &words, nbits);
                let data = buf.as_mut_ptr() as u64;
                store_area_bits(mem.as_ref(), data, off, &area(&words, nbits)).unwrap();
                assert_eq!(buf, want, "off {off} nbits {nbits} stale {stale}");
                // again over its own result: nothing changes
                store_area_bits(mem.as_ref(), data, off, &area(&words, nbits)).unwrap();
                assert_eq!(buf, want, "again: off {off} nbits {nbits} stale {stale}");
            }
        }
    }
}
