//! The seed's v1 migration region (`VFIO_REGION_TYPE_MIGRATION_DEPRECATED`
//! 3 / subtype 1, the `vfio_device_migration_info` header) with the
//! optional NDMA bit, on the same [`Migration`] as the v2 uAPI.
//!
//! Layout: the header at 0 (`device_state` u32 at 0, reserved u32 at 4,
//! `pending_bytes` u64 at 8, `data_offset` u64 at 16, `data_size` u64 at
//! 24; each field accessed whole, naturally aligned), the data window at
//! [`WINDOW`] for [`WINDOW_SIZE`] bytes (any access inside it).
//!
//! The bits and their meaning (the seed's rules): RUNNING (bit 0) — the
//! device operates; SAVING (1) — a saving session; RESUMING (2) — a
//! resuming session, only alone or with NDMA; NDMA (3) — no new DMA or
//! interrupt (outstanding DMA done before the write returns; MMIO still
//! served). SAVING|RESUMING with neither RUNNING nor NDMA is ERROR: never
//! writable, left only by `VFIO_DEVICE_RESET`. Reserved bits 31:4 are
//! refused. A failed write leaves the previous state, except a resume
//! whose data does not load, which leaves ERROR (the device state is
//! then unknown).
//!
//! Saving: reading `pending_bytes` reports the bytes not yet collected
//! and retires the chunk the user collected since; reading `data_offset`
//! stages the next chunk in the window (the same one when read again
//! before `pending_bytes`); `data_size` is its length. Resuming:
//! `data_offset` says where to write; writing `data_size` hands the
//! window's first `data_size` bytes to the device.

use std::sync::atomic::Ordering;

use super::{stream, MigState, Migration, ResumeFile, SaveFile};
use crate::{bail, Result};

/// `VFIO_DEVICE_STATE_V1_RUNNING`.
pub const RUNNING: u32 = 1 << 0;
/// `VFIO_DEVICE_STATE_V1_SAVING`.
pub const SAVING: u32 = 1 << 1;
/// `VFIO_DEVICE_STATE_V1_RESUMING`.
pub const RESUMING: u32 = 1 << 2;
/// The seed's `VFIO_DEVICE_STATE_NDMA`.
pub const NDMA: u32 = 1 << 3;
/// The error encoding.
pub const ERROR: u32 = SAVING | RESUMING;
/// `VFIO_REGION_TYPE_MIGRATION_DEPRECATED`.
pub const REGION_TYPE: u32 = 3;
/// `VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED`.
pub const REGION_SUBTYPE: u32 = 1;
/// The seed's `VFIO_REGION_INFO_CAP_MIG_NDMA` capability ID.
pub const CAP_MIG_NDMA: u16 = 6;
/// Offset of the data window.
pub const WINDOW: u64 = 4096;
/// Size of the data window.
pub const WINDOW_SIZE: u64 = 64 << 10;
/// Size of the region.
pub const REGION_SIZE: u64 = WINDOW + WINDOW_SIZE;

/// The v1 bits that stand for a v2 state.
pub fn bits_of(s: MigState) -> u32 {
    match s {
        MigState::Error => ERROR,
        MigState::Stop => 0,
        MigState::Running | MigState::RunningP2p => RUNNING,
        MigState::StopCopy => SAVING,
        MigState::Resuming => RESUMING,
        MigState::PreCopy | MigState::PreCopyP2p => RUNNING | SAVING,
    }
}

fn state_of(bits: u32) -> MigState {
    match bits & !NDMA {
        RUNNING if bits & NDMA != 0 => MigState::RunningP2p,
        RUNNING => MigState::Running,
        0 => MigState::Stop,
        SAVING => MigState::StopCopy,
        RESUMING => MigState::Resuming,
        x if x == RUNNING | SAVING => MigState::PreCopy,
        _ => MigState::Error,
    }
}

/// Whether the device operates with these bits.
fn operational(bits: u32) -> bool {
    bits & RUNNING != 0 && bits & NDMA == 0
}

/// The region's own state.
#[derive(Debug)]
pub struct V1 {
    bits: u32,
    /// The staged chunk: where it starts in the saving stream, its length.
    chunk: Option<(usize, usize)>,
    /// The window's bytes (allocated when a session starts).
    window: Vec<u8>,
    data_size: u64,
}

impl Default for V1 {
    fn default() -> V1 {
        V1 {
            bits: RUNNING,
            chunk: None,
            window: Vec::new(),
            data_size: 0,
        }
    }
}

impl V1 {
    pub(super) fn set_bits(&mut self, bits: u32) {
        self.bits = bits;
    }
}

impl Migration {
    /// A read of the v1 region at `offset`.
    pub fn v1_read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut inner = self.inner.lock();
        let field = |v: u64, size: usize, buf: &mut [u8]| -> Result<()> {
            if buf.len() != size {
                bail!(
                    EINVAL,
                    "migration region field at {offset:#x} is {size} bytes, accessed with {}",
                    buf.len()
                );
            }
            buf.copy_from_slice(&v.to_le_bytes()[..size]);
            Ok(())
        };
        match offset {
            0 => field(u64::from(inner.v1.bits), 4, buf),
            4 => field(0, 4, buf),
            8 => {
                let save = inner.save.clone();
                let v = match (inner.v1.bits & SAVING != 0, save) {
                    (true, Some(save)) => {
                        let mut s = save.session.lock();
                        if let Some((start, len)) = inner.v1.chunk.take() {
                            s.pos = s.pos.max(start + len);
                        }
                        (s.data.len() - s.pos) as u64
                    }
                    _ => 0,
                };
                field(v, 8, buf)
            }
            16 => {
                if inner.v1.bits & SAVING != 0 && inner.v1.chunk.is_none() {
                    if let Some(save) = inner.save.clone() {
                        let s = save.session.lock();
                        let n = (s.data.len() - s.pos).min(WINDOW_SIZE as usize);
                        let v1 = &mut inner.v1;
                        v1.window.clear();
                        v1.window.extend_from_slice(&s.data[s.pos..s.pos + n]);
                        v1.chunk = Some((s.pos, n));
                    }
                }
                field(WINDOW, 8, buf)
            }
            24 => {
                let v = if inner.v1.bits & SAVING != 0 {
                    inner.v1.chunk.map_or(0, |c| c.1 as u64)
                } else {
                    inner.v1.data_size
                };
                field(v, 8, buf)
            }
            o if (WINDOW..REGION_SIZE).contains(&o) => {
                let at = (o - WINDOW) as usize;
                let end = at
                    .checked_add(buf.len())
                    .filter(|&e| e as u64 <= WINDOW_SIZE)
                    .ok_or_else(|| crate::err!(EINVAL, "read past the migration data window"))?;
                let w = &inner.v1.window;
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = w.get(at + i).copied().unwrap_or(0);
                }
                let _ = end;
                Ok(())
            }
            _ => bail!(EINVAL, "no migration region field at {offset:#x}"),
        }
    }

    /// A write of the v1 region at `offset`.
    pub fn v1_write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut inner = self.inner.lock();
        let value = |size: usize| -> Result<u64> {
            if buf.len() != size {
                bail!(
                    EINVAL,
                    "migration region field at {offset:#x} is {size} bytes, written with {}",
                    buf.len()
                );
            }
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(buf);
            Ok(u64::from_le_bytes(b))
        };
        match offset {
            0 => {
                let new = value(4)? as u32;
                self.v1_transition(&mut inner, new)
            }
            4 => value(4).map(|_| ()),
            8 | 16 => bail!(EINVAL, "migration region field at {offset:#x} is read-only"),
            24 => {
                let n = value(8)?;
                if inner.v1.bits & RESUMING == 0 {
                    bail!(EINVAL, "data_size written outside RESUMING");
                }
                if n > WINDOW_SIZE {
                    bail!(
                        EINVAL,
                        "data_size {n} is larger than the {WINDOW_SIZE}-byte data window"
                    );
                }
                let Some(r) = inner.resume.clone() else {
                    bail!(EINVAL, "no resuming session");
                };
                inner.v1.window.resize(WINDOW_SIZE as usize, 0);
                r.session.lock().0.push(&inner.v1.window[..n as usize])?;
                inner.v1.data_size = n;
                Ok(())
            }
            o if (WINDOW..REGION_SIZE).contains(&o) => {
                if inner.v1.bits & RESUMING == 0 {
                    bail!(EINVAL, "migration data written outside RESUMING");
                }
                let at = (o - WINDOW) as usize;
                if at + buf.len() > WINDOW_SIZE as usize {
                    bail!(EINVAL, "write past the migration data window");
                }
                inner.v1.window.resize(WINDOW_SIZE as usize, 0);
                inner.v1.window[at..at + buf.len()].copy_from_slice(buf);
                Ok(())
            }
            _ => bail!(EINVAL, "no migration region field at {offset:#x}"),
        }
    }

    fn v1_transition(&self, inner: &mut super::Inner, new: u32) -> Result<()> {
        let old = inner.v1.bits;
        if old & !NDMA == ERROR && old & RUNNING == 0 {
            bail!(
                EINVAL,
                "the device is in the migration ERROR state: VFIO_DEVICE_RESET it"
            );
        }
        if new & !(RUNNING | SAVING | RESUMING | NDMA) != 0 {
            bail!(EINVAL, "device_state {new:#x} sets reserved bits 31:4");
        }
        if new & SAVING != 0 && new & RESUMING != 0 {
            bail!(
                EINVAL,
                "device_state {new:#x}: SAVING and RESUMING are exclusive"
            );
        }
        if new & RESUMING != 0 && new & RUNNING != 0 {
            bail!(
                EINVAL,
                "device_state {new:#x}: RESUMING with RUNNING is not supported"
            );
        }
        if old == new {
            return Ok(());
        }
        // Leaving a resuming session: load what was written, before the
        // device may run again.
        if old & RESUMING != 0 && new & RESUMING == 0 {
            if let Err(e) = self.finish_resume(inner) {
                inner.v1.bits = ERROR;
                inner.state = MigState::Error;
                self.set_running(inner, false);
                inner.resume = None;
                return Err(e);
            }
        }
        if old & SAVING != 0 && new & SAVING == 0 {
            Self::end_save(inner);
            inner.v1.chunk = None;
        }
        // Stop before the final snapshot, start after everything.
        if !operational(new) {
            self.set_running(inner, false);
        }
        if new & SAVING != 0 {
            let kind = if operational(new) {
                stream::KIND_PRECOPY
            } else {
                stream::KIND_FINAL
            };
            let save = match inner.save.clone() {
                Some(s) if old & SAVING != 0 => s,
                _ => {
                    let s = std::sync::Arc::new(SaveFile::default());
                    inner.save = Some(s.clone());
                    inner.v1.chunk = None;
                    s
                }
            };
            let fresh = old & SAVING == 0;
            let stopping = operational(old) && !operational(new);
            if fresh || (stopping && !save.session.lock().complete) {
                let snap = self.model.save_state();
                match snap {
                    Ok(d) => save.append(kind, &d),
                    Err(e) => {
                        if fresh {
                            inner.save = None;
                        }
                        return Err(e);
                    }
                }
            }
            save.precopy.store(operational(new), Ordering::Release);
        }
        if new & RESUMING != 0 && old & RESUMING == 0 {
            inner.resume = Some(std::sync::Arc::new(ResumeFile::default()));
            inner.v1.window.clear();
            inner.v1.data_size = 0;
        }
        if operational(new) {
            self.set_running(inner, true);
        }
        inner.v1.bits = new;
        inner.state = state_of(new);
        tracing::debug!(
            "v1 migration device_state {old:#x} -> {new:#x} ({:?})",
            inner.state
        );
        Ok(())
    }
}
