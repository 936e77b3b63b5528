//! The migration v2 state machine of `include/uapi/linux/vfio.h`: states,
//! the feature flags that make optional states exist, and the route from
//! one state to another through the arcs a driver implements.
//!
//! A request for a far state is walked one arc at a time, [`next_step`]
//! giving each hop. The hops are the ones Linux takes (its uAPI promises
//! that every device, whatever its driver, walks the same path, and
//! userspace sees the intermediate effects: a data fd opens only on the
//! last arc). Where an optional state is not supported (no `P2P`, no
//! `PRE_COPY`), the hop into it is skipped and the walk continues from
//! there toward the target as if it had been taken.

use crate::{bail, Result};

/// `VFIO_MIGRATION_STOP_COPY`: STOP, STOP_COPY and RESUMING exist.
pub const MIGRATION_STOP_COPY: u32 = 1 << 0;
/// `VFIO_MIGRATION_P2P`: RUNNING_P2P exists.
pub const MIGRATION_P2P: u32 = 1 << 1;
/// `VFIO_MIGRATION_PRE_COPY`: PRE_COPY exists.
pub const MIGRATION_PRE_COPY: u32 = 1 << 2;

/// `enum vfio_device_mig_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MigState {
    /// The device failed and must be reset.
    Error = 0,
    /// Stopped: no DMA, no interrupt, no internal change.
    Stop = 1,
    /// Running normally.
    Running = 2,
    /// Stopped, its state can be read from the data fd.
    StopCopy = 3,
    /// Stopped, loading a state written to the data fd.
    Resuming = 4,
    /// Running, but no peer-to-peer DMA.
    RunningP2p = 5,
    /// Running, and its state can already be read (pre-copy).
    PreCopy = 6,
    /// Pre-copy without peer-to-peer DMA.
    PreCopyP2p = 7,
}

impl MigState {
    /// Every state, in uAPI order.
    pub const ALL: [MigState; 8] = [
        MigState::Error,
        MigState::Stop,
        MigState::Running,
        MigState::StopCopy,
        MigState::Resuming,
        MigState::RunningP2p,
        MigState::PreCopy,
        MigState::PreCopyP2p,
    ];

    /// The state with uAPI number `v`.
    pub fn from_u32(v: u32) -> Option<MigState> {
        MigState::ALL.get(v as usize).copied()
    }

    /// The feature flags a device needs for this state to exist
    /// (`ERROR` can never be asked for).
    fn needs(self) -> u32 {
        match self {
            MigState::Error => u32::MAX,
            MigState::Stop | MigState::Running | MigState::StopCopy | MigState::Resuming => {
                MIGRATION_STOP_COPY
            }
            MigState::RunningP2p => MIGRATION_STOP_COPY | MIGRATION_P2P,
            MigState::PreCopy => MIGRATION_STOP_COPY | MIGRATION_PRE_COPY,
            MigState::PreCopyP2p => MIGRATION_STOP_COPY | MIGRATION_P2P | MIGRATION_PRE_COPY,
        }
    }

    /// Whether a device with migration `flags` has this state.
    pub fn supported(self, flags: u32) -> bool {
        self.needs() & flags == self.needs()
    }

    /// Whether the device operates in this state (DMA and interrupts
    /// allowed). The `_P2P` states only forbid peer-to-peer DMA, which
    /// emulated devices never do.
    pub fn operational(self) -> bool {
        matches!(
            self,
            MigState::Running | MigState::RunningP2p | MigState::PreCopy | MigState::PreCopyP2p
        )
    }
}

/// The hop Linux takes from `cur` toward `to` when every optional state
/// exists; `Error` where no route is allowed.
fn hop(cur: MigState, to: MigState) -> MigState {
    use MigState::*;
    if cur == to || cur == Error || to == Error {
        return if cur == Error || to == Error {
            Error
        } else {
            cur
        };
    }
    match cur {
        // Out of STOP only into the sessions it opens; the way to any
        // running state starts by resuming without peer traffic.
        Stop => match to {
            StopCopy | Resuming => to,
            _ => RunningP2p,
        },
        // RUNNING reaches PRE_COPY directly, everything else through P2P.
        Running => match to {
            PreCopy => PreCopy,
            _ => RunningP2p,
        },
        // PRE_COPY goes toward STOP_COPY through PRE_COPY_P2P, and
        // leaves pre-copy for everything else through RUNNING.
        PreCopy => match to {
            PreCopyP2p | StopCopy => PreCopyP2p,
            _ => Running,
        },
        PreCopyP2p => match to {
            PreCopy | StopCopy => to,
            _ => RunningP2p,
        },
        // A finished stop-copy session can only stop; pre-copy cannot be
        // re-entered.
        StopCopy => match to {
            PreCopy | PreCopyP2p => Error,
            _ => Stop,
        },
        Resuming => Stop,
        RunningP2p => match to {
            Stop | StopCopy | Resuming => Stop,
            Running | PreCopy => Running,
            _ => PreCopyP2p,
        },
        Error => Error,
    }
}

/// The next state to step into on the way from `cur` to `to` for a device
/// with migration `flags` (the kernel's `vfio_mig_get_next_state`): `to`
/// itself when one arc gets there, `cur` when already there. `EINVAL`
/// when either state does not exist for the device or no route is
/// allowed.
pub fn next_step(flags: u32, cur: MigState, to: MigState) -> Result<MigState> {
    if !cur.supported(flags) {
        bail!(
            EINVAL,
            "the device is in state {cur:?}, which it does not support"
        );
    }
    if !to.supported(flags) {
        bail!(
            EINVAL,
            "migration state {to:?} is not supported by the device (migration flags {flags:#x})"
        );
    }
    let mut next = hop(cur, to);
    while next != MigState::Error && !next.supported(flags) {
        next = hop(next, to);
    }
    if next == MigState::Error {
        bail!(EINVAL, "no migration arc leads from {cur:?} to {to:?}");
    }
    Ok(next)
}

/// The whole route from `cur` to `to` (empty when already there).
pub fn route(flags: u32, cur: MigState, to: MigState) -> Result<Vec<MigState>> {
    let mut out = Vec::new();
    let mut at = cur;
    while at != to {
        at = next_step(flags, at, to)?;
        out.push(at);
        if out.len() > MigState::ALL.len() {
            bail!(EINVAL, "no migration route from {cur:?} to {to:?}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::MigState::*;
    use super::*;

    const ALLF: u32 = MIGRATION_STOP_COPY | MIGRATION_P2P | MIGRATION_PRE_COPY;

    fn r(flags: u32, a: MigState, b: MigState) -> Vec<MigState> {
        route(flags, a, b).unwrap()
    }

    #[test]
    fn documented_combination_routes_with_every_feature() {
        // The multi-step routes the uAPI header lists for a device with
        // P2P and PRE_COPY.
        let cases: &[&[MigState]] = &[
            &[PreCopy, PreCopyP2p, StopCopy],
            &[PreCopy, Running, RunningP2p],
            &[PreCopy, Running, RunningP2p, Stop],
            &[PreCopy, Running, RunningP2p, Stop, Resuming],
            &[PreCopyP2p, RunningP2p, Running],
            &[PreCopyP2p, RunningP2p, Stop],
            &[PreCopyP2p, RunningP2p, Stop, Resuming],
            &[Resuming, Stop, RunningP2p],
            &[Resuming, Stop, RunningP2p, PreCopyP2p],
            &[Resuming, Stop, RunningP2p, Running],
            &[Resuming, Stop, RunningP2p, Running, PreCopy],
            &[Resuming, Stop, StopCopy],
            &[Running, RunningP2p, PreCopyP2p],
            &[Running, RunningP2p, Stop],
            &[Running, RunningP2p, Stop, Resuming],
            &[Running, RunningP2p, Stop, StopCopy],
            &[RunningP2p, Running, PreCopy],
            &[RunningP2p, Stop, Resuming],
            &[RunningP2p, Stop, StopCopy],
            &[Stop, RunningP2p, PreCopyP2p],
            &[Stop, RunningP2p, Running],
            &[Stop, RunningP2p, Running, PreCopy],
            &[StopCopy, Stop, Resuming],
            &[StopCopy, Stop, RunningP2p],
            &[StopCopy, Stop, RunningP2p, Running],
        ];
        for c in cases {
            assert_eq!(r(ALLF, c[0], *c.last().unwrap()), c[1..].to_vec(), "{c:?}");
        }
    }

    #[test]
    fn blocked_and_unsupported() {
        for to in [PreCopy, PreCopyP2p] {
            assert_eq!(
                next_step(ALLF, StopCopy, to).unwrap_err().errno().0,
                libc::EINVAL
            );
        }
        for s in MigState::ALL {
            assert!(next_step(ALLF, s, Error).is_err());
            assert!(next_step(ALLF, Error, s).is_err());
        }
        let base = MIGRATION_STOP_COPY;
        for s in [RunningP2p, PreCopy, PreCopyP2p] {
            assert!(next_step(base, Running, s).is_err(), "{s:?}");
        }
        assert!(next_step(0, Running, Stop).is_err());
    }

    #[test]
    fn routes_skip_missing_states() {
        let base = MIGRATION_STOP_COPY;
        assert_eq!(r(base, Running, Stop), vec![Stop]);
        assert_eq!(r(base, Stop, Running), vec![Running]);
        assert_eq!(r(base, Running, StopCopy), vec![Stop, StopCopy]);
        assert_eq!(r(base, Resuming, Running), vec![Stop, Running]);
        let pre = MIGRATION_STOP_COPY | MIGRATION_PRE_COPY;
        assert_eq!(r(pre, PreCopy, StopCopy), vec![StopCopy]);
        assert_eq!(r(pre, Running, PreCopy), vec![PreCopy]);
        assert_eq!(r(pre, PreCopy, Stop), vec![Running, Stop]);
        let p2p = MIGRATION_STOP_COPY | MIGRATION_P2P;
        assert_eq!(r(p2p, Running, StopCopy), vec![RunningP2p, Stop, StopCopy]);
    }

    #[test]
    fn every_pair_terminates_and_uses_only_supported_states() {
        for flags in [
            MIGRATION_STOP_COPY,
            MIGRATION_STOP_COPY | MIGRATION_P2P,
            MIGRATION_STOP_COPY | MIGRATION_PRE_COPY,
            ALLF,
        ] {
            for a in MigState::ALL.into_iter().filter(|s| s.supported(flags)) {
                for b in MigState::ALL.into_iter().filter(|s| s.supported(flags)) {
                    if let Ok(p) = route(flags, a, b) {
                        assert!(p.len() <= 4, "{flags:#x} {a:?}->{b:?}: {p:?}");
                        assert!(p.iter().all(|s| s.supported(flags)));
                    } else {
                        assert_eq!(a, StopCopy, "{flags:#x} {a:?}->{b:?}");
                    }
                }
            }
        }
    }
}
