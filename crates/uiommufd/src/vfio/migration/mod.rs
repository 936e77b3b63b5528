//! Device migration (the kernel's migration uAPI for VFIO devices), generic
//! over any [`PciModel`]: the v2 state machine with data fds (Linux 6.12
//! `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`, [`fsm`]) and the seed's v1
//! migration region with the NDMA bit ([`v1`]), both driving one
//! [`Migration`] per device.
//!
//! What the device does in each state is the model's
//! ([`PciModel::set_running`]: stopped means no DMA and no interrupt, MMIO
//! still served); its data is [`PciModel::save_state`], framed as records
//! ([`stream`]): a pre-copy snapshot when saving starts while it runs, the
//! final state once it is stopped. The destination loads the final record
//! when it leaves RESUMING.
//!
//! Lock order: `Migration::inner` → the model's own locks (`set_running`,
//! `save_state`, `load_state` run under it, so arcs are atomic with respect
//! to each other); a data file's `session` lock is taken alone or after
//! `inner`.

pub mod dma_log;
pub mod feature;
pub mod fsm;
pub mod stream;
pub mod v1;

use std::sync::Arc;

use parking_lot::Mutex;

use crate::files::{EngineFile, FdResolver, UserBuf};
use crate::user::UserMemory;
use crate::vfio::model::PciModel;
use crate::{bail, Result};

pub use fsm::{MigState, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY};

/// `VFIO_MIG_GET_PRECOPY_INFO`: `_IO(';', 100 + 21)`.
pub const VFIO_MIG_GET_PRECOPY_INFO: u32 = (b';' as u32) << 8 | (100 + 21);

/// The saving half of a session: the stream as produced, and how much of
/// it was read.
#[derive(Debug, Default)]
struct SaveSession {
    data: Vec<u8>,
    pos: usize,
    /// The final record is in: after `data`, the stream ends (read 0).
    complete: bool,
    /// Bytes of `data` that belong to pre-copy records.
    precopy_end: usize,
    /// The session was ended by a state change: the fd is dead.
    closed: bool,
}

/// The data fd of a saving session (STOP_COPY, PRE_COPY): read-only.
#[derive(Debug, Default)]
pub struct SaveFile {
    session: Mutex<SaveSession>,
    /// In a PRE_COPY state (the precopy-info ioctl is valid).
    precopy: std::sync::atomic::AtomicBool,
    /// The device's `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` opt-in, read
    /// at each `VFIO_MIG_GET_PRECOPY_INFO` (as the kernel reads the
    /// device's flag): without it the `flags` the caller passed are echoed.
    info_v2: Arc<std::sync::atomic::AtomicBool>,
}

impl SaveFile {
    fn append(&self, kind: u32, payload: &[u8]) {
        let mut s = self.session.lock();
        s.data.extend_from_slice(&stream::record(kind, payload));
        if kind == stream::KIND_FINAL {
            s.complete = true;
        } else {
            s.precopy_end = s.data.len();
        }
    }

    fn close(&self) {
        self.session.lock().closed = true;
    }

    /// Copy what is available into `buf`: `Ok(0)` at the end of a
    /// complete stream, `ENOMSG` at the temporary end of a pre-copy one.
    fn take(&self, buf: UserBuf<'_>) -> Result<usize> {
        let mut s = self.session.lock();
        if s.closed {
            bail!(ENODEV, "migration data fd read after its session ended");
        }
        let avail = s.data.len() - s.pos;
        if avail == 0 {
            if s.complete {
                return Ok(0);
            }
            bail!(ENOMSG, "no pre-copy data now (temporary end of the stream)");
        }
        let n = avail.min(buf.len);
        buf.copy_out(0, &s.data[s.pos..s.pos + n])?;
        s.pos += n;
        drop(s);
        crate::files::notify_file(self);
        Ok(n)
    }

    /// Bytes not yet read: pre-copy ones and the rest.
    fn pending(&self) -> (u64, u64) {
        let s = self.session.lock();
        let pre = s.precopy_end.saturating_sub(s.pos) as u64;
        let all = (s.data.len() - s.pos) as u64;
        (pre, all - pre)
    }
}

impl EngineFile for SaveFile {
    fn kind(&self) -> &'static str {
        "vfio-mig-save"
    }
    fn can_write(&self) -> bool {
        false
    }
    fn read(&self, buf: &mut [u8], _nonblock: bool) -> Result<usize> {
        let mem = crate::user::SelfMemory;
        self.take(UserBuf {
            mem: &mem,
            addr: buf.as_mut_ptr() as u64,
            len: buf.len(),
        })
    }
    fn read_user(&self, buf: UserBuf<'_>, _nonblock: bool) -> Result<usize> {
        self.take(buf)
    }
    fn poll_events(&self) -> i16 {
        let s = self.session.lock();
        if s.closed || s.pos < s.data.len() || s.complete {
            libc::POLLIN
        } else {
            0
        }
    }
    fn ioctl(
        &self,
        cmd: u32,
        arg: u64,
        mem: &dyn UserMemory,
        _fds: &dyn FdResolver,
    ) -> Result<i64> {
        if cmd != VFIO_MIG_GET_PRECOPY_INFO {
            bail!(ENOTTY, "migration data fds have no ioctl {cmd:#x}");
        }
        // struct vfio_precopy_info { u32 argsz, flags; u64 initial_bytes, dirty_bytes }
        let mut hdr = [0u8; 8];
        mem.read(arg, &mut hdr)?;
        let argsz = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        if argsz < 24 {
            bail!(EINVAL, "vfio_precopy_info argsz {argsz} is below 24");
        }
        if !self.precopy.load(std::sync::atomic::Ordering::Acquire) {
            bail!(
                EINVAL,
                "VFIO_MIG_GET_PRECOPY_INFO outside the PRE_COPY states"
            );
        }
        let (initial, dirty) = self.pending();
        let mut out = [0u8; 24];
        out[0..4].copy_from_slice(&hdr[0..4]);
        // Before the v2 opt-in the kernel's drivers copy the struct in and
        // back out, so `flags` is whatever the caller put there; with it
        // `flags` is output: no `VFIO_PRECOPY_INFO_REINIT` here, as these
        // devices never produce new initial data within a session.
        if !self.info_v2.load(std::sync::atomic::Ordering::Acquire) {
            out[4..8].copy_from_slice(&hdr[4..8]);
        }
        out[8..16].copy_from_slice(&initial.to_le_bytes());
        out[16..24].copy_from_slice(&dirty.to_le_bytes());
        mem.write(arg, &out)?;
        Ok(0)
    }
}

/// The data fd of a resuming session: write-only, any chunking.
#[derive(Debug, Default)]
pub struct ResumeFile {
    session: Mutex<(stream::Receiver, bool)>,
}

impl ResumeFile {
    fn push(&self, buf: UserBuf<'_>) -> Result<usize> {
        let mut s = self.session.lock();
        if s.1 {
            bail!(ENODEV, "migration data fd written after its session ended");
        }
        let mut tmp = [0u8; crate::files::BOUNCE];
        let mut done = 0;
        while done < buf.len {
            let n = (buf.len - done).min(tmp.len());
            if let Err(e) = buf.copy_in(done, &mut tmp[..n]) {
                if done > 0 {
                    break;
                }
                return Err(e);
            }
            s.0.push(&tmp[..n])?;
            done += n;
        }
        Ok(done)
    }
}

impl EngineFile for ResumeFile {
    fn kind(&self) -> &'static str {
        "vfio-mig-resume"
    }
    fn can_read(&self) -> bool {
        false
    }
    fn write(&self, buf: &[u8]) -> Result<usize> {
        let mem = crate::user::SelfMemory;
        self.push(UserBuf {
            mem: &mem,
            addr: buf.as_ptr() as u64,
            len: buf.len(),
        })
    }
    fn write_user(&self, buf: UserBuf<'_>) -> Result<usize> {
        self.push(buf)
    }
}

#[derive(Debug)]
struct Inner {
    state: MigState,
    /// The v1 region's view: `device_state` bits, its data window.
    v1: v1::V1,
    save: Option<Arc<SaveFile>>,
    resume: Option<Arc<ResumeFile>>,
    /// What the model was last told by `set_running`.
    running: bool,
}

/// Called with `false` after the model stopped and with `true` before it
/// starts again: the VFIO layer's gate on the device's bus.
pub type RunHook = Box<dyn Fn(bool) + Send + Sync>;

/// One device's migration state, shared by the v2 feature ioctls and the
/// v1 region.
pub struct Migration {
    model: Arc<dyn PciModel>,
    flags: u32,
    /// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` was set (Linux 7.1): until
    /// the device's last file closes.
    precopy_info_v2: Arc<std::sync::atomic::AtomicBool>,
    inner: Mutex<Inner>,
    hook: Option<RunHook>,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("flags", &self.flags)
            .field("inner", &self.inner)
            .finish()
    }
}

/// What a v2 state change hands back: a new data file for the fd the
/// ioctl returns (`data_fd`), or none (`-1`).
pub type NewFile = Option<Arc<dyn EngineFile>>;

impl Migration {
    /// Migration for `model`, with the v2 features `flags`
    /// (`MIGRATION_STOP_COPY` at least). The device starts RUNNING.
    pub fn new(model: Arc<dyn PciModel>, flags: u32) -> Migration {
        Self::with_hook(model, flags, None)
    }

    /// As [`Migration::new`], with `hook` told when the device stops and
    /// starts.
    pub fn with_hook(model: Arc<dyn PciModel>, flags: u32, hook: Option<RunHook>) -> Migration {
        Migration {
            hook,
            model,
            flags: flags | MIGRATION_STOP_COPY,
            precopy_info_v2: Default::default(),
            inner: Mutex::new(Inner {
                state: MigState::Running,
                v1: v1::V1::default(),
                save: None,
                resume: None,
                running: true,
            }),
        }
    }

    /// `VFIO_DEVICE_FEATURE_MIGRATION`: the supported features.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The current v2 state.
    pub fn state(&self) -> MigState {
        self.inner.lock().state
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`: an estimate of the stop-copy
    /// data (the device's state as it is now, framed).
    pub fn data_size(&self) -> Result<u64> {
        let n = self.model.save_state()?.len();
        Ok((stream::HEADER + n) as u64)
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` SET: walk to `target` arc by
    /// arc. On failure the device stays in the last state reached.
    pub fn set_state(&self, target: u32) -> Result<NewFile> {
        let Some(to) = MigState::from_u32(target) else {
            bail!(EINVAL, "migration state {target} does not exist");
        };
        let mut inner = self.inner.lock();
        let mut file = None;
        while inner.state != to {
            let next = fsm::next_step(self.flags, inner.state, to)?;
            file = self.arc(&mut inner, next)?;
            tracing::debug!("migration state {:?} -> {next:?}", inner.state);
            inner.state = next;
            inner.v1.set_bits(v1::bits_of(next));
        }
        Ok(file)
    }

    fn set_running(&self, inner: &mut Inner, on: bool) {
        if inner.running != on {
            if on {
                if let Some(h) = &self.hook {
                    h(true);
                }
                self.model.set_running(true);
            } else {
                self.model.set_running(false);
                if let Some(h) = &self.hook {
                    h(false);
                }
            }
            inner.running = on;
        }
    }

    fn snapshot(&self, save: &SaveFile, kind: u32) -> Result<()> {
        let data = self.model.save_state()?;
        save.append(kind, &data);
        crate::files::notify_file(save);
        Ok(())
    }

    fn end_save(inner: &mut Inner) {
        if let Some(s) = inner.save.take() {
            s.precopy.store(false, std::sync::atomic::Ordering::Release);
            s.close();
            crate::files::notify_file(&*s);
        }
    }

    fn finish_resume(&self, inner: &mut Inner) -> Result<()> {
        if let Some(r) = inner.resume.take() {
            let mut s = r.session.lock();
            let loaded = s.0.finish().and_then(|state| self.model.load_state(state));
            if let Err(e) = loaded {
                drop(s);
                inner.resume = Some(r);
                return Err(e);
            }
            s.1 = true;
        } else {
            bail!(EINVAL, "leaving RESUMING without a resuming session");
        }
        Ok(())
    }

    /// One v2 arc from the current state to `next`.
    fn arc(&self, inner: &mut Inner, next: MigState) -> Result<NewFile> {
        use MigState::*;
        match (inner.state, next) {
            (Running, RunningP2p)
            | (RunningP2p, Running)
            | (PreCopy, PreCopyP2p)
            | (PreCopyP2p, PreCopy) => Ok(None),
            (Stop, Running) | (Stop, RunningP2p) => {
                self.set_running(inner, true);
                Ok(None)
            }
            (Running, Stop) | (RunningP2p, Stop) => {
                self.set_running(inner, false);
                Ok(None)
            }
            (Stop, StopCopy) => {
                let f = self.save_file();
                self.snapshot(&f, stream::KIND_FINAL)?;
                inner.save = Some(f.clone());
                Ok(Some(f))
            }
            (StopCopy, Stop) => {
                Self::end_save(inner);
                Ok(None)
            }
            (Stop, Resuming) => {
                let f = Arc::new(ResumeFile::default());
                inner.resume = Some(f.clone());
                Ok(Some(f))
            }
            (Resuming, Stop) => {
                self.finish_resume(inner)?;
                Ok(None)
            }
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => {
                let f = self.save_file();
                self.snapshot(&f, stream::KIND_PRECOPY)?;
                f.precopy.store(true, std::sync::atomic::Ordering::Release);
                inner.save = Some(f.clone());
                Ok(Some(f))
            }
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) => {
                Self::end_save(inner);
                Ok(None)
            }
            (PreCopy, StopCopy) | (PreCopyP2p, StopCopy) => {
                self.set_running(inner, false);
                let Some(f) = inner.save.clone() else {
                    bail!(EINVAL, "pre-copy without a saving session");
                };
                f.precopy.store(false, std::sync::atomic::Ordering::Release);
                self.snapshot(&f, stream::KIND_FINAL)?;
                Ok(None)
            }
            (from, to) => Err(crate::Error::new(
                libc::EINVAL,
                format!("no migration arc {from:?} -> {to:?}"),
            )),
        }
    }

    fn save_file(&self) -> Arc<SaveFile> {
        Arc::new(SaveFile {
            info_v2: self.precopy_info_v2.clone(),
            ..SaveFile::default()
        })
    }

    /// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` (set), or its end when the
    /// device's last file closes (clear; a `VFIO_DEVICE_RESET` keeps it).
    pub fn set_precopy_info_v2(&self, on: bool) {
        self.precopy_info_v2
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// `VFIO_DEVICE_RESET`: back to RUNNING, every session ended (its fds
    /// read and write `ENODEV`), the device running.
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        Self::end_save(&mut inner);
        if let Some(r) = inner.resume.take() {
            r.session.lock().1 = true;
        }
        inner.v1 = v1::V1::default();
        inner.state = MigState::Running;
        self.set_running(&mut inner, true);
    }

    /// The model, for the region code.
    pub fn model(&self) -> &Arc<dyn PciModel> {
        &self.model
    }
}

#[cfg(test)]
mod tests;
