//! The physical floor the transfer is compared with: the same bytes (the
//! source's guest memory) copied raw through the same kind of socket into
//! a buffer like the destination's, measured in the same run.
//!
//! # Several samples, the fastest kept
//!
//! One copy measured once swung 0.5–3.5 GiB/s on a loaded 2-core machine:
//! whatever else runs takes the CPUs the copy needs, and a single sample
//! says more about that moment than about the socket. Interference only
//! ever slows a copy, so each sample is a floor of what the socket can do
//! and the fastest ([`best`]) is the tightest floor of its set. Taking it
//! makes the comparison stricter, never looser: a faster raw rate means a
//! smaller downtime bound and a smaller throughput ratio.
//!
//! # When, and what it is compared with
//!
//! The samples (copies of [`SAMPLE_BYTES`], up to 256 MiB, of guest memory
//! between two threads) are taken one right before round 0 (the
//! destination set up and idle) and two after the verification (the
//! destination gone), so that none competes with the migration's own
//! processes. Their best is the floor of both the throughput (~1 GiB,
//! nearly all of it round 0) and the downtime bound. Where the stop path
//! runs real-time (`sched.rs`), the bound takes its rate from a second set
//! of samples, taken the same way with both threads real-time: measured
//! under the scheduling the downtime gets, that floor was much faster
//! (stricter) on a loaded machine (3.6-4.7 GiB/s where the normal one
//! went 1.3-3.4).
//!
//! # The copy next to the downtime (reported, not the bound)
//!
//! The final set is a few MiB copied in a few ms, at one moment. So the
//! source also copies exactly [`Report::stop_bytes`] raw to the
//! destination process, through the migration's own socket (plain `write`
//! into a `read` into a buffer made beforehand), three times, milliseconds
//! after the resume: once the destination's device has written its
//! verification records and stopped, and before either side's digest (the
//! `Quiet`/`Go` exchange). The bytes are the guest memory next to the final
//! set, a new region for each copy (`next_to` in `source.rs`: as recently
//! written, never just read). That
//! copy has the final round's size, processes, socket and moment; the
//! report gives the downtime as a multiple of its time
//! ([`Report::next_ratio`]). It is not the bound's rate: it is three
//! copies of a few ms at one moment, so one preemption-free sample decides
//! it, and it is there to say how the final round's own path compares with
//! a plain copy of its size (see the README), not to replace the floor.
//!
//! [`Report::stop_bytes`]: super::report::Report::stop_bytes
//! [`Report::next_ratio`]: super::report::Report::next_ratio

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::sched::Rt;
use super::wire::{read_raw, write_raw};

/// Bytes each sample copies at most.
pub const SAMPLE_BYTES: u64 = 256 << 20;

/// Samples of each floor taken in a run.
pub const SAMPLES: usize = 3;

/// The socket's rate from `samples` (bytes per second): the fastest valid
/// one (0 for a failed copy, which is left out), 0 when none is valid.
pub fn best(samples: &[f64]) -> f64 {
    samples
        .iter()
        .copied()
        .filter(|r| r.is_finite() && *r > 0.0)
        .fold(0.0, f64::max)
}

/// Bytes per second of copying `len` bytes at `src` through a Unix socket
/// pair, in the migration's run size, to another thread reading into a
/// populated buffer of the same size; with both threads real-time when
/// `rt` (as the stop path then runs, `sched.rs`).
///
/// # Safety
/// `src..src + len` must stay mapped and readable during the call.
pub unsafe fn raw_socket_rate(src: *const u8, len: usize, rt: bool) -> f64 {
    let Ok((a, b)) = UnixStream::pair() else {
        return 0.0;
    };
    let Ok(dst) = uiommufd_testkit::map_anon(len, libc::MAP_PRIVATE | libc::MAP_POPULATE) else {
        return 0.0;
    };
    let dst_addr = dst as usize;
    // The clock starts once the reader runs (blocked in its read, as the
    // destination is when pages come): a thread's start is no part of a
    // socket copy, and in a copy of a few MiB it would be a few percent.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _rt = Rt::enter(rt);
        let _ = ready_tx.send(());
        // SAFETY: the mapping above, alive until after the join.
        unsafe { read_raw(b.as_raw_fd(), dst_addr as *mut u8, len) }.is_ok()
    });
    let _ = ready_rx.recv();
    let writer_rt = Rt::enter(rt);
    let t = Instant::now();
    let run = 64usize << 20;
    let mut done = 0;
    let mut ok = true;
    while done < len && ok {
        let n = run.min(len - done);
        // SAFETY: inside the caller's readable range.
        ok = unsafe { write_raw(a.as_raw_fd(), src.add(done), n) }.is_ok();
        done += n;
    }
    drop(a);
    let ok = reader.join().unwrap_or(false) && ok;
    let el = t.elapsed().as_secs_f64();
    drop(writer_rt);
    // SAFETY: our mapping, no longer used.
    unsafe { libc::munmap(dst, len) };
    if ok {
        len as f64 / el.max(1e-9)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_valid_sample_is_the_rate() {
        assert_eq!(best(&[1.0e9, 3.0e9, 2.0e9]), 3.0e9);
        // a failed copy (0) or nonsense never counts
        assert_eq!(best(&[0.0, 2.0e9, f64::NAN, f64::INFINITY, -1.0]), 2.0e9);
        assert_eq!(best(&[]), 0.0);
        assert_eq!(best(&[0.0]), 0.0);
    }

    #[test]
    fn a_raw_copy_is_measured() {
        let len = 1 << 20;
        let src = vec![7u8; len];
        // SAFETY: a live vector of `len` bytes.
        let r = unsafe { raw_socket_rate(src.as_ptr(), len, false) };
        assert!(r > 0.0 && r.is_finite());
    }
}
