//! The command context every ioctl handler gets: the context the fd
//! refers to, the caller's memory, and the command struct as copied in
//! (the kernel's `struct iommufd_ucmd`). A leaf of the ioctl layer: the
//! handlers import it, the dispatcher ([`crate::dispatch`]) builds it.

use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::context::Context;
use crate::uapi::level::UapiLevel;
use crate::user::UserMemory;
use crate::{Error, Result};

/// Room for the largest command struct we understand.
pub(crate) const BUF_LEN: usize = 128;

/// One decoded ioctl call: the context, the user buffer and the copied-in struct.
#[derive(Debug)]
pub struct Ucmd<'a> {
    /// The context the fd refers to.
    pub ctx: &'a Arc<Context>,
    /// The memory of the calling process: where `arg` and every user
    /// pointer of the command point (the context's own memory, or another
    /// process's for a call made there; see [`crate::dispatch::ioctl_as`]).
    pub mem: &'a Arc<dyn UserMemory>,
    /// The user pointer passed to ioctl.
    pub arg: u64,
    /// The `size` field the user passed.
    pub user_size: u32,
    pub(crate) buf: [u8; BUF_LEN],
}

impl Ucmd<'_> {
    /// The uAPI level of the context (what kernel release answers).
    pub fn level(&self) -> UapiLevel {
        self.ctx.uapi_level()
    }

    /// The command struct, as copied in (zero past the user's size).
    pub fn cmd<T: FromBytes + KnownLayout + Immutable>(&self) -> T {
        match T::read_from_prefix(&self.buf) {
            Ok((v, _)) => v,
            Err(_) => unreachable!("command struct larger than the dispatch buffer"),
        }
    }

    /// Copy `reply` back: `min(user size, sizeof(T))` bytes (`iommufd_ucmd_respond`).
    pub fn respond<T: IntoBytes + Immutable>(&self, reply: &T) -> Result<()> {
        let bytes = reply.as_bytes();
        let n = bytes.len().min(self.user_size as usize);
        self.mem
            .write(self.arg, &bytes[..n])
            .map_err(|_| Error::fault("cannot write the reply"))
    }

    /// Copy `n` bytes from user address `addr`.
    pub fn read_user(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read(addr, buf)
    }

    /// Copy bytes to user address `addr`.
    pub fn write_user(&self, addr: u64, buf: &[u8]) -> Result<()> {
        self.mem.write(addr, buf)
    }
}
