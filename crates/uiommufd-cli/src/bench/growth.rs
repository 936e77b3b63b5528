//! Case 7: the cost of one map+unmap as the IOAS holds 10^2 .. 10^6 areas.
//! Must stay logarithmic in the number of areas.
//!
//! Two fills: (a) every area maps the same pages object (what `IOAS_COPY`
//! makes; the IOVA tree and the free index grow, nothing else), up to
//! 10^6; (b) every area is its own `IOAS_MAP` (its own pages object, as a
//! VMM mapping many regions does), up to 10^5 — process-wide structures
//! indexed by pages object show up there.

use std::time::Instant;

use uiommufd::{Context, Prot};

use super::cases::es;
use super::util::{ns_per_op, Backing, Buf, KIB4};
use super::{RatioKind, Report, Row, Scale, Unit};

/// First area of the fill; areas are 4 KiB every 8 KiB from here.
const BASE: u64 = 1 << 32;
/// Where the single source area of fill (a) is.
const SRC_IOVA: u64 = 1 << 30;
/// The fixed IOVA of the measured map: the hole after area 50, inside the
/// filled range for every size.
const FIXED: u64 = BASE + 50 * 2 * KIB4 + KIB4;

fn area_iova(i: u64) -> u64 {
    BASE + i * 2 * KIB4
}

/// Add areas with `add(i)` (`i` = the area count so far) until `count`
/// reaches `target`: the time per area added, in ns.
fn fill_to(
    count: &mut u64,
    target: u64,
    mut add: impl FnMut(u64) -> uiommufd::Result<()>,
) -> Result<f64, String> {
    let t = Instant::now();
    let added = target - *count;
    while *count < target {
        add(*count).map_err(es)?;
        *count += 1;
    }
    Ok(t.elapsed().as_nanos() as f64 / added.max(1) as f64)
}

/// ns per map+unmap of the 4 KiB at `p` at the fixed IOVA.
fn map_unmap_fixed(s: &Scale, iters: u64, ioas: &uiommufd::ioas::Ioas, p: u64) -> f64 {
    ns_per_op(s.reps, iters, || {
        ioas.map_user(p, KIB4, Some(FIXED), Prot::RW)
            .expect("map at the fixed IOVA");
        ioas.unmap(FIXED, KIB4).expect("unmap at the fixed IOVA");
    })
}

/// Run case 7 (both fills).
pub fn growth(s: &Scale, r: &mut Report) -> Result<(), String> {
    let probe = Buf::populated(KIB4, Backing::Small)?;
    let p = probe.addr();
    let iters = s.iters.min(2000);

    // (a) one shared pages object
    {
        let ctx = Context::new();
        let id = ctx.ioas_alloc().map_err(es)?;
        let ioas = ctx.ioas(id).map_err(es)?;
        let src_buf = Buf::populated(KIB4, Backing::Small)?;
        ioas.map_user(src_buf.addr(), KIB4, Some(SRC_IOVA), Prot::RW)
            .map_err(es)?;
        let src = ioas.iopt().get_pages(SRC_IOVA, KIB4).map_err(es)?;
        let mut count = 1u64; // the source area
        let mut base_fixed = None;
        let mut base_alloc = None;
        for exp in 2..=s.growth_max_exp {
            let target = 10u64.pow(exp);
            // area i is the (i + 1)th: the source area came first
            let fill_ns = fill_to(&mut count, target, |i| {
                ioas.map_sources(src.clone(), KIB4, Some(area_iova(i - 1)), Prot::RW)
                    .map(|_| ())
            })?;
            let fixed = map_unmap_fixed(s, iters, &ioas, p);
            let alloc = ns_per_op(s.reps, iters, || {
                let v = ioas
                    .map_user(p, KIB4, None, Prot::RW)
                    .expect("map at an allocated IOVA");
                ioas.unmap(v, KIB4).expect("unmap at the allocated IOVA");
            });
            let bf = *base_fixed.get_or_insert(fixed);
            let ba = *base_alloc.get_or_insert(alloc);
            r.push(
                row(
                    "fixed",
                    target,
                    "a fixed IOVA",
                    " (shared pages)",
                    fixed,
                    bf,
                )
                .note(format!("filling cost {fill_ns:.0} ns/area")),
            );
            r.push(row(
                "alloc",
                target,
                "an allocated IOVA",
                " (shared pages)",
                alloc,
                ba,
            ));
        }
    }

    // (b) one pages object per area
    {
        let ctx = Context::new();
        let id = ctx.ioas_alloc().map_err(es)?;
        let ioas = ctx.ioas(id).map_err(es)?;
        let fill = Buf::populated(KIB4, Backing::Small)?;
        let mut count = 0u64;
        let mut base = None;
        let mut max_target = 0;
        for exp in 2..=s.growth_pages_max_exp {
            let target = 10u64.pow(exp);
            let fill_ns = fill_to(&mut count, target, |i| {
                ioas.map_user(fill.addr(), KIB4, Some(area_iova(i)), Prot::RW)
                    .map(|_| ())
            })?;
            let fixed = map_unmap_fixed(s, iters, &ioas, p);
            let b = *base.get_or_insert(fixed);
            r.push(
                row(
                    "pages",
                    target,
                    "a fixed IOVA",
                    ", one pages object each",
                    fixed,
                    b,
                )
                .note(format!("filling cost {fill_ns:.0} ns/area")),
            );
            max_target = target;
        }
        let t = Instant::now();
        drop(ioas);
        drop(ctx);
        let teardown = t.elapsed();
        if let Some(last) = r.rows.last_mut() {
            last.note.push_str(&format!(
                "; closing the IOAS of {max_target} areas took {:.0} ms",
                teardown.as_secs_f64() * 1e3
            ));
        }
    }
    Ok(())
}

/// A growth row: `ns` per map+unmap of 4 KiB at `at` while the IOAS holds
/// `target` areas (`how` they are backed, with its leading separator),
/// against `smallest`, the first size's.
fn row(kind: &str, target: u64, at: &str, how: &str, ns: f64, smallest: f64) -> Row {
    Row::plain(
        format!("7.growth.{kind}.{target}"),
        7,
        format!("map+unmap 4 KiB at {at}, IOAS holds {target} areas{how}"),
        Unit::NsPerOp,
        ns,
    )
    .ratio(RatioKind::VsSmallest, ns / smallest)
}
