//! Timestamps the two sides can compare, so that the end of the downtime
//! is read where it happens.
//!
//! The downtime ends when the destination's device is resumed and
//! running. The source used to take that moment as the arrival of the
//! destination's `Resumed` message: the message's trip back and the
//! source's wake-up (~0.05–0.1 ms on a loaded 2-core machine, a tenth of a
//! 1 ms final copy) were counted as downtime although the device was
//! already running. Both sides now read `CLOCK_MONOTONIC`, which on one
//! host is one clock for every process: the destination stamps its resume
//! (and its reading of the final round) and sends the stamps, and the
//! source uses them when they are on its clock — the same host
//! ([`host_id`], the kernel's boot id) and inside the interval the source
//! itself saw the event happen in ([`on_our_clock`]: after the stop,
//! before the answer arrived). Otherwise (two hosts over TCP, a time
//! namespace with its own offset) the source falls back to the round
//! trip, which only ever makes the downtime longer.

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// This host's identity for clock comparisons: a hash of the kernel's
/// boot id (`/proc/sys/kernel/random/boot_id`), never 0; 0 when it cannot
/// be read (then no stamp is ever taken as ours).
pub fn host_id() -> u64 {
    match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        Ok(s) if !s.trim().is_empty() => {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for b in s.trim().bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            h.max(1)
        }
        _ => 0,
    }
}

/// The peer's stamp `t` as a time on our clock, or `None` when it cannot
/// be one: the hosts differ (or either is unknown), or `t` lies outside
/// `lo..=hi`, the interval in which we know the event happened.
pub fn on_our_clock(ours: u64, theirs: u64, t: u64, lo: u64, hi: u64) -> Option<u64> {
    (ours != 0 && ours == theirs && (lo..=hi).contains(&t)).then_some(t)
}

/// Consecutive parts of an interval from its start to its last stamp,
/// given the stamps that end each part, in order. A stamp earlier than the
/// one before it ends its part where the previous ended, and one later
/// than the last (the peer's stamp of the end can precede our own stamp
/// of the step before it returning) ends it at the last: the parts are
/// never negative and always add up to `last stamp - start`.
pub fn parts<'a>(start: u64, marks: &[(&'a str, u64)]) -> Vec<(&'a str, std::time::Duration)> {
    let mut at = start;
    let last = marks.last().map_or(start, |m| m.1.max(start));
    marks
        .iter()
        .map(|&(name, t)| {
            let end = t.clamp(at, last);
            let d = std::time::Duration::from_nanos(end - at);
            at = end;
            (name, d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_clock_moves_forward_and_the_host_is_known() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a && a > 0);
        assert_eq!(host_id(), host_id());
    }

    #[test]
    fn a_peer_stamp_counts_only_on_the_same_host_and_in_its_interval() {
        assert_eq!(on_our_clock(7, 7, 150, 100, 200), Some(150));
        assert_eq!(on_our_clock(7, 7, 100, 100, 200), Some(100));
        assert_eq!(on_our_clock(7, 7, 200, 100, 200), Some(200));
        // another host, or an unknown one
        assert_eq!(on_our_clock(7, 8, 150, 100, 200), None);
        assert_eq!(on_our_clock(0, 0, 150, 100, 200), None);
        // outside what we saw: another clock (a time namespace's offset)
        assert_eq!(on_our_clock(7, 7, 99, 100, 200), None);
        assert_eq!(on_our_clock(7, 7, 201, 100, 200), None);
    }

    #[test]
    fn parts_add_up_and_are_never_negative() {
        let p = parts(1000, &[("a", 1100), ("b", 1050), ("c", 1400)]);
        let ms: Vec<_> = p.iter().map(|(n, d)| (*n, d.as_nanos())).collect();
        assert_eq!(ms, vec![("a", 100), ("b", 0), ("c", 300)]);
        let sum: Duration = p.iter().map(|(_, d)| *d).sum();
        assert_eq!(sum, Duration::from_nanos(400));
        assert!(parts(5, &[]).is_empty());
        // the end stamped before the step ahead of it returned
        let p = parts(1000, &[("a", 1100), ("b", 1500), ("end", 1300)]);
        let ms: Vec<_> = p.iter().map(|(n, d)| (*n, d.as_nanos())).collect();
        assert_eq!(ms, vec![("a", 100), ("b", 200), ("end", 0)]);
    }
}
