//! Memory an object offers through `mmap` of the `/dev/iommu` fd (the
//! kernel's `iommufd_mmap`, Linux 6.17): a driver's page that user space maps
//! at the offset the object's allocation returned (the selftest's vIOMMU
//! page; on hardware a vIOMMU's MMIO).
//!
//! **Here.** A region is a memfd the engine owns; the context keeps its
//! regions by offset ([`crate::Context::mmap_target`] answers the mapping
//! with the kernel's errnos, the preload maps the memfd). The kernel counts
//! every VMA of a region as a user of its owner, so the owner's destroy is
//! `EBUSY` while the region is mapped; the engine cannot see `munmap`, so
//! [`MmapRegion::mapped`] asks the process's own map list at destroy time
//! (regions are rare: the cost is paid only by owners that have one).

use std::os::fd::{AsRawFd, OwnedFd};

use crate::{bail, Result};

/// One region: `length` bytes of a memfd, offered at `offset`.
#[derive(Debug)]
pub struct MmapRegion {
    memfd: OwnedFd,
    ino: u64,
    length: u64,
}

impl MmapRegion {
    /// A zeroed region of `length` bytes (a multiple of the page size).
    pub fn new(length: u64) -> Result<MmapRegion> {
        if length == 0 || !length.is_multiple_of(crate::user::page_size()) {
            bail!(EINVAL, "mmap region: length {length:#x} is not whole pages");
        }
        // a private fd of ours, out of the program's way
        let memfd = crate::user::private_fd(|| {
            // SAFETY: a NUL-terminated name; the fd is new and ours.
            unsafe { libc::memfd_create(c"uiommufd-mmap".as_ptr(), libc::MFD_CLOEXEC) }
        });
        let memfd = match memfd {
            Ok(m) => m,
            Err(e) => bail!(ENOMEM, "mmap region: memfd_create: {e}"),
        };
        let len = i64::try_from(length).unwrap_or(i64::MAX);
        // SAFETY: our own fd.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), len) } != 0 {
            bail!(
                ENOMEM,
                "mmap region: ftruncate: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: an all-zero stat, filled by fstat of our own fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(memfd.as_raw_fd(), &mut st) } != 0 {
            bail!(
                ENOMEM,
                "mmap region: fstat: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(MmapRegion {
            memfd,
            ino: st.st_ino,
            length,
        })
    }

    /// Its length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The memfd behind it (the engine keeps it open).
    pub fn fd(&self) -> i32 {
        self.memfd.as_raw_fd()
    }

    /// Write `bytes` at `offset` of the region (what the driver puts there).
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        if offset.saturating_add(bytes.len() as u64) > self.length {
            bail!(
                EINVAL,
                "mmap region: a write past its {:#x} bytes",
                self.length
            );
        }
        let off = i64::try_from(offset).unwrap_or(i64::MAX);
        // SAFETY: `bytes` is readable for its length; our own fd.
        let n = unsafe {
            libc::pwrite(
                self.memfd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                off,
            )
        };
        if n != bytes.len() as isize {
            bail!(
                EIO,
                "mmap region: pwrite: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Whether this process maps the region now (a line of
    /// `/proc/self/maps` names its memfd's inode). Read with raw system
    /// calls: under the preload this runs inside a hook.
    pub fn mapped(&self) -> bool {
        let Some(maps) = read_self_maps() else {
            // cannot tell: say mapped, so that a destroy is refused rather
            // than freeing what may still be mapped
            return true;
        };
        maps.lines().any(|l| {
            crate::user::MapsLine::parse(l).is_some_and(|m| m.inode == self.ino)
                && l.contains("/memfd:uiommufd-mmap")
        })
    }
}

/// `/proc/self/maps`, read with raw `openat`/`read`/`close`.
fn read_self_maps() -> Option<String> {
    String::from_utf8(crate::user::read_proc_raw(c"/proc/self/maps")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_knows_when_it_is_mapped() {
        let ps = crate::user::page_size();
        assert!(MmapRegion::new(ps + 1).is_err());
        let r = MmapRegion::new(2 * ps).unwrap();
        r.write(0, &0xbeefu32.to_ne_bytes()).unwrap();
        assert!(r.write(2 * ps - 2, &[0; 4]).is_err());
        assert!(!r.mapped());
        // SAFETY: a shared mapping of our own memfd, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (2 * ps) as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                r.fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the mapping is readable.
        assert_eq!(unsafe { *(p as *const u32) }, 0xbeef);
        assert!(r.mapped());
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, (2 * ps) as usize) };
        assert!(!r.mapped());
    }
}
