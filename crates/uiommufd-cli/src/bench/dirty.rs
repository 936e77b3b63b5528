//! Case 6: reading (and clearing) the dirty bitmap of a mapped range, at
//! several dirty fractions, through the IO page table's Rust API and the
//! `HWPT_GET_DIRTY_BITMAP` core (bits OR-ed into a user buffer).
//!
//! **Span.** 64 GiB of IOVA at 4 KiB pages (`--quick`: 1 GiB): one buffer
//! of the "large" size mapped again and again at consecutive IOVAs, in an
//! IOAS with one dirty-tracking mock domain. The selftest's mock translates
//! only `[16 MiB, 2 GiB)`, so the bench makes its mock domain with a wider
//! aperture (`MockDomain::with_aperture`, same page table otherwise). The
//! mock's table then holds 32 Mi granules (2 KiB each) in 64 Ki blocks.
//!
//! **Floor.** The least state a dirty read must stream is one page-table
//! entry per tracked page: a dense array of 8-byte PTEs, one per 4 KiB page
//! (2 MiB per GiB; what an x86 second-stage table's leaf level holds),
//! scanned once, test-and-clearing the dirty bit and setting the bitmap
//! bit. We time exactly that loop over a `Vec<u64>` with the same dirty
//! pages. The mock itself keeps dense blocks of 512 granules (1 MiB of
//! IOVA: an 8-byte address and a marker/permission byte per granule, and
//! 512-bit masks of the mapped, dirty and huge granules; ~4.8 MiB per GiB),
//! one `BTreeMap` entry per block in its 64 stripes. A read tests one
//! dirty mask per block and finds dirty granules with `trailing_zeros`, so
//! it can beat the floor, which tests every PTE; our ratio measures the
//! mock's format as much as the engine's walk.

use std::time::{Duration, Instant};

use uiommufd::domain::Domain;
use uiommufd::mock::domain::MockDomain;
use uiommufd::plumbing::io_pagetable::DirtyRequest;
use uiommufd::user::SelfMemory;
use uiommufd::{Context, Prot};

use super::cases::es;
use super::util::{median, Backing, Buf, KIB4};
use super::{Report, Row, Scale, Unit};

/// Where the tracked range is mapped (inside the mock aperture).
const IOVA: u64 = 1 << 30;

/// Dirty fractions measured, in parts per 1000 (0.1% and 10%, as the
/// issue asks, and the two extremes).
const PERMILLE: [u64; 4] = [0, 1, 100, 1000];

/// The pages (indexes) dirty at `permille`, spread evenly.
pub(super) fn dirty_pages(npages: u64, permille: u64) -> impl Iterator<Item = u64> {
    let n = npages * permille / 1000;
    (0..n).map(move |i| i * npages / n.max(1))
}

/// The request of a dirty read of `length` bytes from `iova` at 4 KiB.
pub(super) fn dirty_request(iova: u64, length: u64) -> DirtyRequest {
    DirtyRequest {
        iova,
        length,
        page_size: KIB4,
        no_clear: false,
    }
}

/// Median time of a `read_and_clear_dirty` of `domain_id` into a cleared
/// `bitmap`, each after `mark` (untimed) dirtied pages, and the number of
/// dirty pages the last one reported.
pub(super) fn timed_dirty_reads(
    s: &Scale,
    iopt: &uiommufd::plumbing::io_pagetable::IoPagetable,
    domain_id: u64,
    req: &DirtyRequest,
    bitmap: &mut [u64],
    mut mark: impl FnMut(),
) -> (std::time::Duration, u64) {
    let mut found = 0u64;
    let d = median(s.large_reps.max(5), || {
        mark();
        bitmap.fill(0);
        let t = Instant::now();
        iopt.read_and_clear_dirty(domain_id, req, bitmap)
            .expect("read_and_clear_dirty");
        let el = t.elapsed();
        found = bitmap.iter().map(|w| u64::from(w.count_ones())).sum();
        el
    });
    (d, found)
}

/// The floor: scan a dense PTE array (one `u64` per 4 KiB page, bit `BIT`
/// = dirty), test-and-clear, set bitmap bits. Returns the time of one scan.
fn floor_scan<const BIT: u32>(ptes: &mut [u64], bitmap: &mut [u64]) -> std::time::Duration {
    const { assert!(BIT < 64) };
    let dirty: u64 = 1 << BIT;
    let t = Instant::now();
    for (i, p) in ptes.iter_mut().enumerate() {
        if *p & dirty != 0 {
            *p &= !dirty;
            bitmap[i / 64] |= 1 << (i % 64);
        }
    }
    std::hint::black_box(&bitmap[0]);
    t.elapsed()
}

/// Median time of the floor scan (dirty bit `BIT`) of `ptes` after the
/// `permille` pages of the `npages` were set dirty, into a cleared `bitmap`.
pub(super) fn floor_median<const BIT: u32>(
    s: &Scale,
    npages: u64,
    permille: u64,
    ptes: &mut [u64],
    bitmap: &mut [u64],
) -> std::time::Duration {
    median(s.large_reps.max(5), || {
        for p in dirty_pages(npages, permille) {
            ptes[p as usize] |= 1 << BIT;
        }
        bitmap.fill(0);
        floor_scan::<BIT>(ptes, bitmap)
    })
}

fn pct(permille: u64) -> String {
    match permille {
        0 => "0%".into(),
        1 => "0.1%".into(),
        p => format!("{}%", p / 10),
    }
}

/// Run case 6.
pub fn dirty(s: &Scale, r: &mut Report) -> Result<(), String> {
    let chunk = s.large;
    let len = s.dirty_span.max(chunk);
    let npages = len / KIB4;
    let buf = Buf::populated(chunk, Backing::Small)?;
    let ctx = Context::new();
    let id = ctx.ioas_alloc().map_err(es)?;
    let ioas = ctx.ioas(id).map_err(es)?;
    let dom = MockDomain::with_aperture(false, true, IOVA, IOVA + len - 1);
    let iopt = ioas.iopt();
    iopt.add_domain(dom.clone()).map_err(es)?;
    let mut at = IOVA;
    while at < IOVA + len {
        ioas.map_user(buf.addr(), chunk, Some(at), Prot::RW)
            .map_err(es)?;
        at += chunk;
    }
    iopt.set_dirty_tracking(dom.id(), true).map_err(es)?;
    let req = dirty_request(IOVA, len);
    let mut bitmap = vec![0u64; npages.div_ceil(64) as usize];
    let mut ptes = vec![0u64; npages as usize];
    let mark = |permille: u64| -> Result<(), String> {
        if permille == 1000 {
            dom.mark_dirty(IOVA, len).map_err(es)?;
        } else {
            for p in dirty_pages(npages, permille) {
                dom.mark_dirty(IOVA + p * KIB4, KIB4).map_err(es)?;
            }
        }
        Ok(())
    };
    let size = if len >= 1 << 30 {
        format!("{} GiB", len >> 30)
    } else {
        format!("{} MiB", len >> 20)
    };
    for permille in PERMILLE {
        let (d, found) = timed_dirty_reads(s, iopt, dom.id(), &req, &mut bitmap, || {
            mark(permille).expect("mark dirty")
        });
        // the mock's dirty bit
        let f = floor_median::<6>(s, npages, permille, &mut ptes, &mut bitmap);
        // a row of this density against the floor `f`
        let row = |kind: &str, what: &str, d: Duration, how: &str| {
            Row::vs_floor(
                format!("6.dirty.{kind}.{}", pct(permille)),
                6,
                format!("{what} of {size}, {} dirty", pct(permille)),
                Unit::Ms,
                d.as_secs_f64() * 1e3,
                f.as_secs_f64() * 1e3,
                how,
            )
        };
        r.push(
            row(
                "rust",
                "read_and_clear_dirty (Rust API, 1 mock domain, 4 KiB pages)",
                d,
                "one scan of a dense 8-byte-PTE array, test-and-clear + bitmap",
            )
            .note(format!("{found} bits set")),
        );
        if permille == 1 || permille == 100 {
            let d = median(s.large_reps.max(5), || {
                mark(permille).expect("mark dirty");
                bitmap.fill(0);
                let t = Instant::now();
                iopt.read_and_clear_dirty_user(
                    dom.id(),
                    &req,
                    bitmap.as_mut_ptr() as u64,
                    &SelfMemory,
                )
                .expect("read_and_clear_dirty_user");
                t.elapsed()
            });
            r.push(row(
                "user",
                "GET_DIRTY_BITMAP core (windowed, OR into a user buffer)",
                d,
                "as above",
            ));
        }
    }
    iopt.set_dirty_tracking(dom.id(), false).map_err(es)?;
    ioas.unmap_all().map_err(es)?;
    Ok(())
}
