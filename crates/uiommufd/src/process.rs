//! The memory of another process: what a context serving several processes
//! (a `/dev/iommu` fd inherited across `fork` or received over
//! `SCM_RIGHTS`, see the preload's `remote` module) uses for the calls of a
//! process that is not the one holding the engine.
//!
//! The kernel's iommufd takes the caller's `mm` for every command: the
//! command's struct and arrays are copied from the caller, and the pages an
//! `IOAS_MAP` pins are the caller's (`iopt_pages::source_mm`), whoever uses
//! them later. [`ProcessMemory`] is that `mm` for a process other than ours:
//!
//! * bytes move with `process_vm_readv`/`process_vm_writev` (the kernel
//!   checks the addresses: a bad one is `EFAULT`; same uid and no Yama
//!   restriction needed, as for `ptrace`);
//! * the process is named by a **pidfd** as well as its pid: before every
//!   transfer the pidfd says whether the process still runs, so a recycled
//!   pid is never taken for it; a process that has exited is `EFAULT`, as
//!   the kernel's `pin_user_pages_remote` on a dead `mm`;
//! * a range that both processes map **shared, at the same address, of the
//!   same file at the same offset** (a `MAP_SHARED` mapping inherited across
//!   `fork`, the selftests' `buffer`) is the same memory in both: the pages
//!   object of such a range ([`UserMemory::pages_memory`]) reads and writes
//!   it in place in our own address space, so what was pinned stays
//!   readable after the mapping process exits, as the kernel's pinned pages
//!   do; new pins of it still need the process alive (`EFAULT` otherwise:
//!   the selftest `fork_gone`).
//!
//! Private memory of another process cannot outlive it here: its pinned
//! pages are read from the process while it runs and are `EFAULT` once it
//! has gone (the kernel would keep the page frames).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::user::{page_size, FileMaps, MapsLine, SelfMemory, UserMemory};
use crate::{Error, Result};

/// The memory of process `pid` (see the module docs).
#[derive(Debug)]
pub struct ProcessMemory {
    pid: i32,
    pidfd: OwnedFd,
    /// The addresses are ours too (a range shared with us at the same
    /// address): transfers are in place, only pins look at the process.
    alias: bool,
}

/// `IOV_MAX`: the most segments one `process_vm_readv` takes.
const IOV_MAX: usize = 1024;

impl ProcessMemory {
    /// The pidfd that tells when the process has exited.
    pub fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// The memory of the process `pidfd` refers to, whose pid is `pid`.
    pub fn new(pid: i32, pidfd: OwnedFd) -> ProcessMemory {
        ProcessMemory {
            pid,
            pidfd,
            alias: false,
        }
    }

    /// The process's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process still runs (its pidfd is not readable yet).
    pub fn alive(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own; a zero timeout never blocks.
        let r = unsafe { libc::syscall(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, 0) };
        r == 0
    }

    fn gone(&self, what: &str, addr: u64) -> Error {
        Error::new(
            libc::EFAULT,
            format!(
                "cannot {what} user address {addr:#x}: process {} has exited",
                self.pid
            ),
        )
    }

    /// One `process_vm_readv`/`process_vm_writev` of `len` bytes.
    fn transfer(&self, addr: u64, local: *mut u8, len: usize, to_user: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if !self.alive() {
            return Err(self.gone(if to_user { "write" } else { "read" }, addr));
        }
        // SAFETY: `local` is the caller's buffer of `len` bytes (see
        // `read`/`write`).
        if unsafe { vm_copy(self.pid, addr, local, len, to_user) } {
            Ok(())
        } else {
            Err(Error::new(
                libc::EFAULT,
                format!(
                    "cannot {} {len} bytes at address {addr:#x} of process {}",
                    if to_user { "write" } else { "read" },
                    self.pid
                ),
            ))
        }
    }

    /// Whether `[addr, addr + len)` of the process is writable, from its
    /// `/proc/PID/maps` permissions.
    fn writable(&self, addr: u64, len: u64) -> bool {
        let Some(text) = read_proc(&format!("/proc/{}/maps", self.pid)) else {
            return false;
        };
        let end = addr.saturating_add(len);
        let mut cur = addr;
        let mut ranges: Vec<(u64, u64, bool)> = text
            .lines()
            .filter_map(MapsLine::parse)
            .map(|m| (m.start, m.end, m.prot() & libc::PROT_WRITE != 0))
            .collect();
        ranges.sort_unstable();
        for (s, e, w) in ranges {
            if e <= cur {
                continue;
            }
            if s > cur || !w {
                return false;
            }
            cur = e;
            if cur >= end {
                return true;
            }
        }
        cur >= end
    }
}

impl UserMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        if self.alias {
            return SelfMemory.read(addr, buf);
        }
        self.transfer(addr, buf.as_mut_ptr(), buf.len(), false)
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<()> {
        if self.alias {
            return SelfMemory.write(addr, buf);
        }
        // with `to_user` the local buffer is only read
        self.transfer(addr, buf.as_ptr().cast_mut(), buf.len(), true)
    }

    /// A pin of the process's pages: it must still run (`EFAULT` once it
    /// has exited, the kernel's `pin_user_pages_remote` on a dead `mm`),
    /// and every page must be readable (one byte of each is read, which
    /// faults it in) and, for `write`, writable.
    fn populate(&self, addr: u64, len: u64, write: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if !self.alive() {
            return Err(self.gone("pin", addr));
        }
        if self.alias {
            return SelfMemory.populate(addr, len, write);
        }
        let ps = page_size();
        let Some(end) = addr.checked_add(len) else {
            return Err(Error::fault("user range wraps"));
        };
        let mut sink = [0u8; IOV_MAX];
        let mut cur = addr & !(ps - 1);
        while cur < end {
            let mut local = Vec::with_capacity(IOV_MAX);
            let mut remote = Vec::with_capacity(IOV_MAX);
            while cur < end && remote.len() < IOV_MAX {
                local.push(libc::iovec {
                    iov_base: sink[local.len()..].as_mut_ptr().cast(),
                    iov_len: 1,
                });
                remote.push(libc::iovec {
                    iov_base: cur.max(addr) as usize as *mut libc::c_void,
                    iov_len: 1,
                });
                cur += ps;
            }
            // SAFETY: each local iovec is one byte of `sink`, ours.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n != remote.len() as isize {
                return Err(Error::new(
                    libc::EFAULT,
                    format!(
                        "cannot pin {addr:#x}+{len:#x} of process {}: not mapped",
                        self.pid
                    ),
                ));
            }
        }
        if write && !self.writable(addr, len) {
            return Err(Error::new(
                libc::EFAULT,
                format!(
                    "cannot pin {addr:#x}+{len:#x} of process {} for write: not writable",
                    self.pid
                ),
            ));
        }
        Ok(())
    }

    fn direct(&self) -> bool {
        self.alias
    }

    fn mappable(&self) -> bool {
        self.alias
    }

    /// A range the process maps shared with us, at the same address, is
    /// reached in place (it stays readable after the process exits); any
    /// other range through the process.
    fn pages_memory(&self, addr: u64, len: u64) -> Option<Arc<dyn UserMemory>> {
        if self.alias {
            return None;
        }
        let theirs = FileMaps::of_process(self.pid);
        if !theirs.same_memory_as(&FileMaps::snapshot(), addr, len) {
            return None;
        }
        let pidfd = crate::user::dup_private(self.pidfd.as_raw_fd()).ok()?;
        Some(Arc::new(ProcessMemory {
            pid: self.pid,
            pidfd,
            alias: true,
        }))
    }
}

/// The text of a `/proc` file, read with raw system calls (under the
/// preload `open` and `read` are the program's hooked entry points).
fn read_proc(path: &str) -> Option<String> {
    let path = std::ffi::CString::new(path).ok()?;
    String::from_utf8(crate::user::read_proc_raw(&path)?).ok()
}

/// A pidfd for `pid` (`pidfd_open`, Linux 5.3+), a private fd of the
/// engine ([`crate::user::private_fd`]).
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    crate::user::private_fd(|| {
        // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
        unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32 }
    })
}

/// One `process_vm_writev` (`write`) of `len` bytes from `local` to `addr`
/// in process `pid`, or one `process_vm_readv` of them from `addr` into
/// `local`: whether all `len` bytes moved. The kernel checks the remote
/// side, so a bad `addr` is just `false`.
///
/// # Safety
/// `local` is valid for `len` bytes (written unless `write`).
pub unsafe fn vm_copy(pid: i32, addr: u64, local: *mut u8, len: usize, write: bool) -> bool {
    let l = libc::iovec {
        iov_base: local.cast(),
        iov_len: len,
    };
    let r = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `l` as the caller promises (a write only reads it); the
    // kernel checks `r`.
    let n = unsafe {
        if write {
            libc::process_vm_writev(pid, &l, 1, &r, 1, 0)
        } else {
            libc::process_vm_readv(pid, &l, 1, &r, 1, 0)
        }
    };
    n == len as isize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ProcessMemory {
        let pid = std::process::id() as i32;
        ProcessMemory::new(pid, pidfd_open(pid).unwrap())
    }

    #[test]
    fn reads_writes_and_pins_a_running_process() {
        let m = me();
        assert!(m.alive());
        let mut src = vec![7u8; 3 * page_size() as usize];
        let mut b = [0u8; 4];
        m.read(src.as_ptr() as u64 + 10, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
        m.write(src.as_mut_ptr() as u64, &[1, 2]).unwrap();
        assert_eq!(&src[..3], &[1, 2, 7]);
        m.populate(src.as_ptr() as u64, src.len() as u64, true)
            .unwrap();
        assert_eq!(m.read(0, &mut b).unwrap_err().errno().0, libc::EFAULT);
        assert_eq!(m.populate(8, 1, false).unwrap_err().errno().0, libc::EFAULT);
        // private memory is not ours to alias
        assert!(m.pages_memory(src.as_ptr() as u64, 16).is_none());
    }

    #[test]
    fn shared_memory_is_reached_in_place_and_read_only_memory_refuses_write_pins() {
        let m = me();
        let ps = page_size() as usize;
        // SAFETY: fresh mappings of our own, unmapped at the end.
        let (shared, ro) = unsafe {
            (
                libc::mmap(
                    std::ptr::null_mut(),
                    2 * ps,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                ),
                libc::mmap(
                    std::ptr::null_mut(),
                    ps,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                ),
            )
        };
        assert!(shared != libc::MAP_FAILED && ro != libc::MAP_FAILED);
        let p = m
            .pages_memory(shared as u64, 2 * ps as u64)
            .expect("a shared mapping both processes have");
        assert!(p.direct() && p.mappable());
        assert!(!m.direct() && !m.mappable());
        p.write(shared as u64 + 5, &[9]).unwrap();
        // SAFETY: byte 5 of our own mapping, just written.
        assert_eq!(unsafe { *(shared as *const u8).add(5) }, 9);
        p.populate(shared as u64, 2 * ps as u64, true).unwrap();
        m.populate(ro as u64, ps as u64, false).unwrap();
        assert_eq!(
            m.populate(ro as u64, ps as u64, true)
                .unwrap_err()
                .errno()
                .0,
            libc::EFAULT
        );
        // SAFETY: the mappings made above.
        unsafe {
            libc::munmap(shared, 2 * ps);
            libc::munmap(ro, ps);
        }
    }

    #[test]
    fn a_dead_process_is_efault() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let fd = pidfd_open(pid).unwrap();
        child.wait().unwrap();
        let m = ProcessMemory::new(pid, fd);
        assert!(!m.alive());
        let mut b = [0u8; 1];
        let a = b.as_ptr() as u64;
        assert_eq!(m.read(a, &mut b).unwrap_err().errno().0, libc::EFAULT);
        assert_eq!(m.populate(a, 1, false).unwrap_err().errno().0, libc::EFAULT);
    }
}
