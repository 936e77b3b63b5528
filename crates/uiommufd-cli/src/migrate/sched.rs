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
//! task, and it is held only for a few milliseconds at a time, never
//! while spinning (every wait in those windows sleeps in the kernel).
//!
//! The comparison stays fair: the raw copies of the floor (`floor.rs`)
//! and the copies next to the downtime run under the same policy, both
//! threads, so the bound's rate is measured as the stop path runs. Where
//! the process may not (no `CAP_SYS_NICE`, no `RLIMIT_RTPRIO`), or with
//! `--no-realtime`, nothing changes, for either.

/// `SCHED_FIFO` for the calling thread while it lives (priority 1, the
/// lowest real-time one), back to `SCHED_OTHER` when dropped.
#[derive(Debug)]
pub struct Rt(bool);

impl Rt {
    /// Enter real-time scheduling if `wanted` and allowed.
    pub fn enter(wanted: bool) -> Rt {
        if !wanted {
            return Rt(false);
        }
        let p = libc::sched_param { sched_priority: 1 };
        // SAFETY: 0 is the calling thread; `p` is a valid sched_param.
        Rt(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } == 0)
    }

    /// Whether this process may run real-time (and `wanted`): a probe that
    /// leaves the calling thread as it was.
    pub fn allowed(wanted: bool) -> bool {
        Rt::enter(wanted).on()
    }

    /// Whether the thread runs real-time now.
    pub fn on(&self) -> bool {
        self.0
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if self.0 {
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
        }
        drop(rt);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
