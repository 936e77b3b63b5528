//! The selftest's dma-buf exporter (Linux 6.19): `IOMMU_TEST_OP_DMABUF_GET`
//! exports a zeroed buffer as a dma-buf fd, `IOMMU_TEST_OP_DMABUF_REVOKE`
//! sets its revoked flag and invalidates its importers. The buffer and its
//! import by `IOAS_MAP_FILE` are [`crate::dmabuf`]'s.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::ioctl::payload;
use crate::dmabuf::{self, DmaBuf, FdKind};
use crate::uapi::IommuTestCmd;
use crate::ucmd::Ucmd;
use crate::user::page_size;
use crate::{bail, Result};

/// `IOMMU_TEST_OP_DMABUF_GET` (Linux 6.19).
pub const IOMMU_TEST_OP_DMABUF_GET: u32 = 22;
/// `IOMMU_TEST_OP_DMABUF_REVOKE` (Linux 6.19).
pub const IOMMU_TEST_OP_DMABUF_REVOKE: u32 = 23;

/// The largest buffer the selftest exporter makes, in pages.
const MAX_PAGES: u64 = 512;

/// `dmabuf_get` member of the test command.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TestDmabufGet {
    /// Bytes (rounded up to whole pages).
    pub length: u32,
    /// Flags of the new fd (`O_CLOEXEC` is the one that matters).
    pub open_flags: u32,
}

/// `dmabuf_revoke` member of the test command.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TestDmabufRevoke {
    /// The dma-buf fd.
    pub dmabuf_fd: i32,
    /// Non-zero: revoke; zero: allow new imports again.
    pub revoked: u32,
}

/// `DMABUF_GET`: a zeroed buffer of `length` bytes rounded up to pages,
/// behind a new fd, which is the command's return value. `EINVAL` for a
/// length of zero or above 512 pages.
pub(super) fn get(_u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let g: TestDmabufGet = payload(cmd);
    let ps = page_size();
    let len = u64::from(g.length).next_multiple_of(ps);
    if len == 0 || len > MAX_PAGES * ps {
        bail!(
            EINVAL,
            "DMABUF_GET: length {:#x} is zero or more than {MAX_PAGES} pages",
            g.length
        );
    }
    let buf = DmaBuf::new(len)?;
    let cloexec = g.open_flags & libc::O_CLOEXEC as u32 != 0;
    dmabuf::export_fd(buf, cloexec)
}

/// `DMABUF_REVOKE`: set the revoked flag of the selftest dma-buf
/// `dmabuf_fd` and invalidate its importers. `EBADF` when the fd is not
/// open, `EINVAL` when it is not a dma-buf, `EOPNOTSUPP` when it is a
/// dma-buf of another exporter.
pub(super) fn revoke(_u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let r: TestDmabufRevoke = payload(cmd);
    match dmabuf::classify_fd(r.dmabuf_fd) {
        FdKind::Engine(buf) if buf.is_anonymous() => {
            buf.set_revoked(r.revoked != 0);
            Ok(0)
        }
        FdKind::Engine(_) | FdKind::Host(_) => bail!(
            EOPNOTSUPP,
            "DMABUF_REVOKE: fd {} is a dma-buf of another exporter",
            r.dmabuf_fd
        ),
        FdKind::Other => bail!(EINVAL, "DMABUF_REVOKE: fd {} is not a dma-buf", r.dmabuf_fd),
        FdKind::NotOpen => bail!(
            EBADF,
            "DMABUF_REVOKE: fd {} is not an open file",
            r.dmabuf_fd
        ),
    }
}
