//! Case 9: one dirty read of a 1 GiB guest the way `uiommufd migrate`'s
//! read before the stop finds the machine: cold, right after a sweep that
//! streamed the caches and TLBs full of other data (there: round 0's copy
//! of all memory). Each tracker (`hwpt`, `type1`, `dma-logging`) through
//! the same calls `migrate` makes (`migrate::vm::Vm`), the `dma-engine`
//! writing its stream at migrate's default rate; and the same read warm,
//! right after another.
//!
//! **Floor.** After the same sweep, a copy of 32 KiB (the bits of 1 GiB at
//! 4 KiB pages) from one cold buffer into another: the least any tracker's
//! read moves, its own bits into the caller's bitmap. Warm: the same copy
//! with both buffers in the caches. What is left above the floor is the
//! fixed cost of the path (dispatch, object and session lookups, locks),
//! which a cold read pays in cache and TLB misses: the part that decides
//! migrate's bitmap share on a small final round.

use std::time::{Duration, Instant};

use crate::migrate::vm::{Tracker, Vm, PAGE};

use super::util::{median, Backing, Buf};
use super::{Report, Row, Scale, Unit};

/// The guest's size: migrate's default (`--quick`: 256 MiB).
const GUEST: u64 = 1 << 30;
/// The sweep before each cold read: more than any data cache level and
/// TLB of the machines we run on reaches (`--quick`: 128 MiB). The
/// first-level instruction cache may keep part of the path through it,
/// as the sweep's own loop is tiny: `migrate`'s read, after a round that
/// ran the kernel's socket code too, finds even less of it.
const SWEEP: u64 = 512 << 20;
/// The `dma-engine`'s record rate: migrate's default.
const RATE: u32 = 200_000;

/// Write every cache line of `sweep` once (and so touch every page).
fn evict(sweep: &mut Buf) {
    let b = sweep.bytes();
    for i in (0..b.len()).step_by(64) {
        b[i] = b[i].wrapping_add(1);
    }
    std::hint::black_box(&b[0]);
}

/// Median of `reps` copies of `src` into `dst`, each after `prep`.
fn floor_copy(reps: usize, src: &[u64], dst: &mut [u64], mut prep: impl FnMut()) -> Duration {
    median(reps, || {
        prep();
        let t = Instant::now();
        dst.copy_from_slice(src);
        std::hint::black_box(&dst[0]);
        t.elapsed()
    })
}

/// Run case 9.
pub fn cold(s: &Scale, r: &mut Report) -> Result<(), String> {
    // user memory copied in place, and the code on huge pages, as
    // `migrate` has them (this case runs last: both stay for the rest of
    // the process)
    if !uiommufd::faultsafe::install() {
        return Err("the fault-safe copy could not be installed".into());
    }
    let text = match crate::hugetext::remap() {
        Ok(_) => format!(
            "{} KiB of code on huge pages",
            crate::hugetext::huge_bytes() >> 10
        ),
        Err(e) => format!("code on small pages: {e}"),
    };
    let reps = s.reps.max(5) * 2;
    let (guest, sweep_len) = if s.large < GUEST {
        (GUEST / 4, SWEEP / 4)
    } else {
        (GUEST, SWEEP)
    };
    let mut sweep = Buf::populated(sweep_len, Backing::Small)?;
    let words = (guest / PAGE).div_ceil(64) as usize;
    let src = vec![1u64; words];
    let mut dst = vec![0u64; words];
    let cold_floor = floor_copy(reps, &src, &mut dst, || evict(&mut sweep));
    let warm_floor = floor_copy(reps, &src, &mut dst, || {});
    for (i, tracker) in [Tracker::Hwpt, Tracker::Type1, Tracker::DmaLogging]
        .into_iter()
        .enumerate()
    {
        // a device of its own per tracker: declarations outlive the Vm
        let spec = format!(
            "dma-engine,addr=0000:f9:00.{i},group={g},cdev={g},traffic_iova=0,traffic_size={guest},rate={RATE}",
            g = 7790 + i
        );
        let vm = Vm::new(guest, tracker, &spec, false)?;
        vm.start_tracking()?;
        let mut bm = vec![0u64; words];
        let read = |bm: &mut Vec<u64>| -> Result<Duration, String> {
            bm.fill(0);
            let t = Instant::now();
            vm.sync_dirty(bm)?;
            Ok(t.elapsed())
        };
        let mut failed = None;
        let cold = median(reps, || {
            evict(&mut sweep);
            read(&mut bm).unwrap_or_else(|e| {
                failed = Some(e);
                Duration::ZERO
            })
        });
        let warm = median(reps, || {
            read(&mut bm).unwrap_or_else(|e| {
                failed = Some(e);
                Duration::ZERO
            })
        });
        if let Some(e) = failed {
            return Err(format!("{} read: {e}", tracker.name()));
        }
        let name = tracker.name();
        for (kind, d, f) in [("cold", cold, cold_floor), ("warm", warm, warm_floor)] {
            r.push(
                Row::vs_floor(
                    format!("9.{kind}_read.{name}"),
                    9,
                    format!(
                        "{kind} dirty read of {} MiB, {name} (as migrate makes it)",
                        guest >> 20
                    ),
                    Unit::NsPerOp,
                    d.as_nanos() as f64,
                    f.as_nanos() as f64,
                    format!("{kind} {} KiB bitmap copy", words / 128),
                )
                .note(text.clone()),
            );
        }
    }
    Ok(())
}
