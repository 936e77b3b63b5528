//! The stop path's scheduling: the threads that work while the device is
//! down run under `SCHED_FIFO` where the process may, so that another
//! job on the machine cannot take their CPU in the middle of the
//! downtime.
//!
//! On a loaded machine (the two CPUs here shared with other builds) a
//! preemption of the source's or the destination's thread during the
//! 1-5 ms downtime costs a scheduler slice (milliseconds): that, not the
//! copy, put the downtime over its bound in most runs that missed it.
//! The lowest real-time priority is enough to run ahead of every normal
//! task, and it is never held while spinning (every wait sleeps in the
//! kernel).
//!
//! The comparisons stay fair: each transfer is compared with raw copies
//! taken under the scheduling it ran under. The stop path (the source's
//! thread and the destination's readers from the end of round 0 to the
//! resume: the later, small rounds, the bitmap reads, the stop) runs
//! real-time, and so
//! do both threads of the raw copies the downtime bound takes its rate
//! from (`floor.rs`) and of the copies next to the downtime. Round 0, the
//! bulk of the throughput, runs at normal priority, and so does the
//! floor it is compared with. (Round 0 real-time too was tried: it
//! became ~1.3x the raw copy, which left final sets of 2 MiB whose
//! fixed costs no longer fit the bound's 10 % and whose bitmap reads
//! took 10-25 % of the copy.) Where the process may not (no
//! `CAP_SYS_NICE`, no `RLIMIT_RTPRIO`), or with `--no-realtime`, nothing
//! changes, and one set of raw copies serves both.

/// `SCHED_FIFO` for the calling thread while it lives (priority 1, the
/// lowest real-time one), back to `SCHED_OTHER` when dropped — unless the
/// thread already ran real-time (an outer `Rt`), which it then keeps.
#[derive(Debug)]
pub struct Rt {
    on: bool,
    entered: bool,
}

impl Rt {
    /// Enter real-time scheduling if `wanted` and allowed.
    pub fn enter(wanted: bool) -> Rt {
        if !wanted {
            return Rt {
                on: false,
                entered: false,
            };
        }
        // SAFETY: a query of the calling thread.
        if unsafe { libc::sched_getscheduler(0) } == libc::SCHED_FIFO {
            return Rt {
                on: true,
                entered: false,
            };
        }
        let p = libc::sched_param { sched_priority: 1 };
        // SAFETY: 0 is the calling thread; `p` is a valid sched_param.
        let on = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } == 0;
        Rt { on, entered: on }
    }

    /// Whether this process may run real-time (and `wanted`): a probe that
    /// leaves the calling thread as it was.
    pub fn allowed(wanted: bool) -> bool {
        Rt::enter(wanted).on()
    }

    /// Whether the thread runs real-time now.
    pub fn on(&self) -> bool {
        self.on
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if self.entered {
            let p = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `enter`.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &p) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_is_left_when_dropped_and_never_entered_unasked() {
        assert!(!Rt::enter(false).on());
        let rt = Rt::enter(true);
        if rt.on() {
            // SAFETY: a query of the calling thread.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_FIFO);
            // an inner one keeps the outer's policy when dropped
            let inner = Rt::enter(true);
            assert!(inner.on());
            drop(inner);
            // SAFETY: as above.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_FIFO);
        }
        drop(rt);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
