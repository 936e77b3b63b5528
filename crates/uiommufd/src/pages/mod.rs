//! Pages objects: one contiguous range of user memory, pinned at most once.
//!
//! An `IOAS_MAP` creates one [`Pages`] for the user range it names. Areas (in
//! any number of IOASes, via `IOAS_COPY`), domains and accesses that use the
//! same memory hold the same `Arc<Pages>`; the pin itself is a per-page user
//! count inside it, so a page is populated and accounted once however many
//! users it has (the kernel's `struct iopt_pages`).
//!
//! Intervals here are in **page indexes relative to the start of the object**,
//! `first..=last` (inclusive `last`), like the kernel's pages.c.
//!
//! A pages object is either *user* memory (`IOAS_MAP`: the caller's range,
//! which the caller may unmap under us; as in the kernel, where the pin is
//! what keeps the pages, pinned pages then move to the engine's custody
//! and the object records where they live, see [`crate::custody`] and
//! [`Pages::host`]) or *file* memory (`IOAS_MAP_FILE`): the engine maps
//! the file itself ([`FileBacking`], `MAP_SHARED` at the file offset) and
//! owns that mapping until the last user of the object is gone, so the
//! pages outlive the caller's own mapping and its fd, as the kernel's file
//! reference does. A third kind imports a *dma-buf* (`IOAS_MAP_FILE` of a
//! dma-buf fd, [`crate::dmabuf`]): the exporter's memory, never pinned,
//! which the exporter may revoke.
//!
//! Lock order: `Pages::pins` is a leaf lock; nothing else is taken under it
//! except the global accounting atomics, the user-memory calls, a registry
//! shard (the first pin registers the object) and a custody chunk's page
//! counts (a relocation ending with its page's last user).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

pub mod custody;
pub mod dmabuf;

use crate::accounting::AccountMode;
use crate::client::{Account, Client};
use crate::user::{page_size, UserMemory};
use crate::Result;

/// A contiguous, page-aligned range of user memory and its pin state.
#[derive(Debug)]
pub struct Pages {
    id: u64,
    uptr: u64,
    npages: u64,
    writable: bool,
    mem: Arc<dyn UserMemory>,
    account: Account,
    /// Shared with the registry entry, so that
    /// [`any_custodial_pinned_in`] reads it without a reference to the
    /// object.
    pins: Arc<Mutex<PinMap>>,
    /// Whether the object is in [`REGISTRY`]: set (under `pins`) by the
    /// first pin. An object never pinned has no pinned page to report, so
    /// a map with no domain attached never touches the registry.
    registered: AtomicBool,
    /// Whether some pinned page no longer lives at its program address
    /// (`PinMap::relocs` is not empty): the one load that keeps the
    /// address lookups free while nothing was ever taken into custody.
    relocated: AtomicBool,
    /// Whether [`crate::custody`] may move the pinned pages of this object
    /// (user memory of this process, mapped through IOASes the custody
    /// registry knows): set once, before the first pin.
    custodial: AtomicBool,
    /// For `IOAS_MAP_FILE`: the engine's own mapping of the file (`uptr`
    /// is its start). Declared after everything that reads the memory.
    file: Option<FileBacking>,
    /// For `IOAS_MAP_FILE` of a dma-buf: the import (`uptr` is the
    /// buffer's memory; never pinned, see [`crate::dmabuf`]).
    dmabuf: Option<crate::dmabuf::Attachment>,
}

/// `TMPFS_MAGIC` (shmem, memfd)
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `HUGETLBFS_MAGIC` (hugetlb memfd)
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The engine's own `MAP_SHARED` mapping of a file range, for a pages object
/// of `IOAS_MAP_FILE`: unmapped when the object is dropped.
#[derive(Debug)]
pub struct FileBacking {
    addr: u64,
    len: u64,
    /// File offset of the first byte of the mapping (page aligned).
    offset: u64,
    /// Whether the kernel could pin this file's pages (`memfd_pin_folios`
    /// takes shmem and hugetlbfs files only): when not, the mapping is an
    /// inaccessible reservation and every pin is `EINVAL`.
    pinnable: bool,
}

impl FileBacking {
    /// The engine mapping's first address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// The engine mapping's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the mapping is empty (never: a file map has a length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The file offset the mapping starts at.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Whether pins of this file can succeed (shmem / hugetlbfs).
    pub fn pinnable(&self) -> bool {
        self.pinnable
    }

    /// Map `len` bytes of `fd` from the page-aligned `offset`, for reading
    /// and, if `write`, writing. Raw system calls throughout: under the
    /// preload, `fcntl`, `open`, `mmap` and `close` are the program's
    /// hooked entry points, and the engine is already inside an ioctl.
    fn map(fd: i32, offset: u64, len: u64, write: bool) -> Result<FileBacking> {
        // SAFETY: F_GETFL reads the flags of an fd number; any value is fine.
        let fl = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
        if fl < 0 || (fl as i32) & libc::O_PATH != 0 {
            crate::bail!(EBADF, "IOAS_MAP_FILE: fd {fd} is not an open file");
        }
        // SAFETY: fstatfs writes one statfs into the zeroed buffer we own.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `sfs` is a valid, writable statfs.
        let r = unsafe { libc::syscall(libc::SYS_fstatfs, fd, &mut sfs as *mut libc::statfs) };
        let fstype = if r == 0 { sfs.f_type as i64 } else { 0 };
        let pinnable = fstype == TMPFS_MAGIC || fstype == HUGETLBFS_MAGIC;
        if !pinnable {
            // Accepted, as by the kernel (which only fails when it pins);
            // nothing of the file is mapped: an inaccessible reservation
            // keeps the object's addresses to itself.
            let addr = raw_mmap(
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
            .map_err(|e| {
                crate::err!(ENOMEM, "IOAS_MAP_FILE: cannot reserve {len:#x} bytes: {e}")
            })?;
            tracing::debug!(
                fd,
                fstype = format_args!("{fstype:#x}"),
                "IOAS_MAP_FILE of a file that cannot be pinned"
            );
            return Ok(FileBacking {
                addr,
                len,
                offset,
                pinnable,
            });
        }
        let prot = libc::PROT_READ | if write { libc::PROT_WRITE } else { 0 };
        let off = i64::try_from(offset).map_err(|_| {
            crate::err!(EOVERFLOW, "IOAS_MAP_FILE: offset {offset:#x} is too large")
        })?;
        let addr = match raw_mmap(len, prot, libc::MAP_SHARED, fd, off) {
            Ok(a) => a,
            // The fd's mode does not allow this mapping (an `O_RDONLY` fd
            // mapped writable, an `O_WRONLY` one): the kernel's pin does not
            // look at the fd's mode up to 7.2, so reach the same file
            // through /proc with the mode needed.
            // (Some kernels say EPERM rather than EACCES for a shared
            // writable mapping of a read-only fd; a sealed file still says
            // EPERM after the reopen.)
            Err(libc::EACCES | libc::EPERM) => {
                let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}"))
                    .expect("no NUL in a number");
                let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
                // a private fd of ours (out of the program's way), closed by
                // raw system call below
                let fd2 = crate::user::open_private(&path, mode)
                    .map_or(-1, std::os::fd::IntoRawFd::into_raw_fd);
                if fd2 < 0 {
                    crate::bail!(
                        EACCES,
                        "IOAS_MAP_FILE: fd {fd} does not allow this mapping and the file cannot be reopened \
                         for it (a kernel up to 7.2 would pin it anyway)"
                    );
                }
                let r = raw_mmap(len, prot, libc::MAP_SHARED, fd2, off);
                // SAFETY: closing the fd opened just above.
                unsafe { libc::syscall(libc::SYS_close, fd2) };
                r.map_err(|e| map_errno(fd, e))?
            }
            Err(e) => return Err(map_errno(fd, e)),
        };
        Ok(FileBacking {
            addr,
            len,
            offset,
            pinnable,
        })
    }

    /// Whether every page of `first..=last` (indexes into the mapping) is
    /// still mapped and resident: pinned pages of a file must be.
    fn check_resident(&self, first: u64, last: u64) -> std::result::Result<(), String> {
        let ps = page_size();
        let mut vec = [0u8; 512];
        let mut p = first;
        while p <= last {
            let n = (last - p + 1).min(vec.len() as u64);
            // SAFETY: mincore reads the page tables of our own mapping and
            // writes `n` bytes into `vec`, which has room for them.
            let r = unsafe {
                libc::mincore(
                    (self.addr + p * ps) as *mut libc::c_void,
                    (n * ps) as usize,
                    vec.as_mut_ptr(),
                )
            };
            if r != 0 {
                return Err(format!(
                    "file mapping at {:#x}: page {p} is no longer mapped ({})",
                    self.addr,
                    std::io::Error::last_os_error()
                ));
            }
            if let Some(i) = vec[..n as usize].iter().position(|b| b & 1 == 0) {
                return Err(format!(
                    "file mapping at {:#x}: pinned page {} is not resident",
                    self.addr,
                    p + i as u64
                ));
            }
            p += n;
        }
        Ok(())
    }
}

/// The errno of the engine's failed mapping of the caller's fd, as the
/// kernel would answer (which pins instead of mapping).
fn map_errno(fd: i32, e: i32) -> crate::Error {
    match e {
        // A write-sealed memfd refuses a shared writable mapping. The
        // kernel up to 7.2 pins it anyway; later kernels say EPERM, which
        // is what we can say.
        libc::EPERM => crate::err!(EPERM, "IOAS_MAP_FILE: fd {fd} is sealed against writing"),
        libc::ENOMEM => crate::err!(
            ENOMEM,
            "IOAS_MAP_FILE: cannot map fd {fd}: out of address space"
        ),
        libc::EBADF => crate::err!(EBADF, "IOAS_MAP_FILE: fd {fd} is not an open file"),
        e => crate::err!(
            EINVAL,
            "IOAS_MAP_FILE: cannot map fd {fd} ({})",
            std::io::Error::from_raw_os_error(e)
        ),
    }
}

/// `mmap` by system call; `Err(errno)`.
pub(crate) fn raw_mmap(
    len: u64,
    prot: i32,
    flags: i32,
    fd: i32,
    off: i64,
) -> std::result::Result<u64, i32> {
    // SAFETY: a new mapping at an address the kernel picks (no MAP_FIXED):
    // nothing of ours is replaced.
    let r = unsafe { libc::syscall(libc::SYS_mmap, 0usize, len as usize, prot, flags, fd, off) };
    if r < 0 && r > -4096 {
        Err(-r as i32)
    } else if r == -1 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL))
    } else {
        Ok(r as u64)
    }
}

impl Drop for FileBacking {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this object made and owns; no user of
        // it is left (it is dropped with its pages object, after every area,
        // domain and access that reached it).
        unsafe { libc::syscall(libc::SYS_munmap, self.addr as usize, self.len as usize) };
    }
}

/// Per-page user counts, stored as runs: start page -> (last page, count).
/// Runs never overlap and never have a count of zero.
#[derive(Debug, Default)]
struct PinMap {
    runs: BTreeMap<u64, (u64, u32)>,
    /// Pages with a count above zero (what is populated and accounted).
    npinned: u64,
    /// Pinned pages that live elsewhere than at their program address
    /// (`uptr + index * PAGE_SIZE`), by first page: only ever pinned pages
    /// (a relocation ends with the page's last user). Runs never overlap.
    relocs: BTreeMap<u64, Reloc>,
}

/// Where a run of pinned pages lives now (see [`crate::custody`]).
#[derive(Debug, Clone)]
struct Reloc {
    /// Last page of the run (inclusive).
    last: u64,
    /// Host address of the run's first page.
    host: u64,
    /// The custody chunk holding the run and the chunk page of its first
    /// page; `None` when the run lives in program memory at another
    /// address (the program moved it with `mremap`).
    chunk: Option<(Arc<crate::custody::Chunk>, u64)>,
}

impl Reloc {
    /// The part of the run from page `at` (`start` is the run's first page).
    fn from(&self, start: u64, at: u64) -> Reloc {
        let d = at - start;
        Reloc {
            last: self.last,
            host: self.host + d * page_size(),
            chunk: self.chunk.as_ref().map(|(c, i)| (c.clone(), i + d)),
        }
    }
}

impl PinMap {
    /// Split the run containing `at` (if any) so that a run starts at `at`.
    fn split_at(&mut self, at: u64) {
        if let Some((&s, &(l, c))) = self.runs.range(..at).next_back() {
            if l >= at {
                self.runs.insert(s, (at - 1, c));
                self.runs.insert(at, (l, c));
            }
        }
    }

    /// The runs that overlap `first..=last`, in order, as (start page,
    /// last page), not clipped to the range.
    fn overlapping(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let start = self
            .runs
            .range(..=first)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(first);
        self.runs
            .range(start..=last)
            .map(|(&s, &(l, _))| (s, l))
            .filter(move |&(_, l)| l >= first)
    }

    /// The holes (count zero) within `first..=last`, in order.
    fn holes(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cur = first;
        for (s, l) in self.overlapping(first, last) {
            if s > cur {
                out.push((cur, s - 1));
            }
            if l >= last {
                return out;
            }
            cur = l + 1;
        }
        if cur <= last {
            out.push((cur, last));
        }
        out
    }

    /// Add `delta` (+1 or -1) to every page of `first..=last`.
    /// For -1, every page must currently have a count above zero.
    /// Returns whether some page lost its last user (its relocation, if
    /// any, is then gone too).
    fn add(&mut self, first: u64, last: u64, delta: i32) -> bool {
        let mut zeroed = Vec::new();
        self.split_at(first);
        if last < u64::MAX {
            self.split_at(last + 1);
        }
        if delta > 0 {
            for (s, l) in self.holes(first, last) {
                self.runs.insert(s, (l, 0));
            }
        }
        let keys: Vec<u64> = self.runs.range(first..=last).map(|(&s, _)| s).collect();
        for s in keys {
            let (l, c) = self.runs[&s];
            let n = (c as i64 + delta as i64) as u32;
            if c == 0 && n > 0 {
                self.npinned += l - s + 1;
            }
            if n == 0 {
                self.npinned -= l - s + 1;
                self.runs.remove(&s);
                zeroed.push((s, l));
            } else {
                self.runs.insert(s, (l, n));
            }
        }
        self.merge_around(first, last);
        if !self.relocs.is_empty() {
            for &(s, l) in &zeroed {
                self.remove_relocs(s, l);
            }
        }
        !zeroed.is_empty()
    }

    /// Split the relocation containing `at` (if any) so that one starts at `at`.
    fn reloc_split_at(&mut self, at: u64) {
        if let Some((&s, r)) = self.relocs.range(..at).next_back() {
            if r.last >= at {
                let right = r.from(s, at);
                self.relocs.get_mut(&s).expect("just found").last = at - 1;
                self.relocs.insert(at, right);
            }
        }
    }

    /// Forget the relocations of pages `first..=last`, giving their custody
    /// pages back.
    fn remove_relocs(&mut self, first: u64, last: u64) {
        self.reloc_split_at(first);
        if last < u64::MAX {
            self.reloc_split_at(last + 1);
        }
        let keys: Vec<u64> = self.relocs.range(first..=last).map(|(&s, _)| s).collect();
        for s in keys {
            let r = self.relocs.remove(&s).expect("just listed");
            if let Some((c, i)) = r.chunk {
                c.release(i, i + (r.last - s));
            }
        }
    }

    /// Record that pinned pages `first..=last` now live at `host` (page
    /// `first`), in `chunk` from its page `idx` when given. Pages of the
    /// range without a user are left alone. Returns the pages recorded.
    fn relocate(
        &mut self,
        uptr: u64,
        first: u64,
        last: u64,
        host: u64,
        chunk: Option<(&Arc<crate::custody::Chunk>, u64)>,
    ) -> u64 {
        let ps = page_size();
        let pinned: Vec<(u64, u64)> = self
            .overlapping(first, last)
            .map(|(s, l)| (s.max(first), l.min(last)))
            .collect();
        let mut n = 0;
        for (s, l) in pinned {
            self.remove_relocs(s, l);
            let d = s - first;
            if chunk.is_none() && host + d * ps == uptr + s * ps {
                // back at the program address it was pinned at
                n += l - s + 1;
                continue;
            }
            let chunk = chunk.map(|(c, i)| {
                c.acquire(i + d, i + d + (l - s));
                (c.clone(), i + d)
            });
            self.relocs.insert(
                s,
                Reloc {
                    last: l,
                    host: host + d * ps,
                    chunk,
                },
            );
            n += l - s + 1;
        }
        n
    }

    /// Whether page `page` lives in a custody chunk.
    fn in_custody(&self, page: u64) -> bool {
        matches!(self.relocs.range(..=page).next_back(), Some((_, r)) if r.last >= page && r.chunk.is_some())
    }

    /// Host address of page `page` of an object whose page 0 is at `uptr`.
    fn host_of(&self, uptr: u64, page: u64) -> u64 {
        match self.relocs.range(..=page).next_back() {
            Some((&s, r)) if r.last >= page => r.host + (page - s) * page_size(),
            _ => uptr + page * page_size(),
        }
    }

    fn merge_around(&mut self, first: u64, last: u64) {
        let lo = self
            .runs
            .range(..first)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(first);
        let keys: Vec<u64> = self
            .runs
            .range(lo..=last.saturating_add(1))
            .map(|(&s, _)| s)
            .collect();
        let mut prev: Option<u64> = None;
        for s in keys {
            if let Some(p) = prev {
                let (pl, pc) = self.runs[&p];
                let (l, c) = self.runs[&s];
                if pl + 1 == s && pc == c {
                    self.runs.insert(p, (l, c));
                    self.runs.remove(&s);
                    continue;
                }
            }
            prev = Some(s);
        }
    }

    fn count(&self, page: u64) -> u32 {
        match self.runs.range(..=page).next_back() {
            Some((_, &(l, c))) if l >= page => c,
            _ => 0,
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Every live pages object that was ever pinned, so that `MD_CHECK_REFS` and
/// [`check_accounting`] can answer for the whole process as the kernel's page
/// refcount does (an object enters on its first pin: before that it pins
/// nothing, so leaving it out changes no answer). Sharded so that creating pages
/// objects from many threads does not serialise on one lock.
///
/// The registry is the engine's address space's, not a client's or a
/// context's: what it answers is about host pages (a page's pin count,
/// whatever client or context pinned it, as the kernel's page refcount;
/// the pinned pages [`custody`] must keep when the program unmaps its
/// memory), and every pages object reaches its pages through host
/// addresses of this process. Accounting is per client (each object's
/// [`Account`]); the registry only lets [`check_accounting`] sum each
/// client's pins.
const SHARDS: usize = 16;
/// Keyed by pages id, so that registering and dropping a pages object cost
/// O(1) however many are alive (a VMM maps one region per call).
type Shard = Mutex<Option<std::collections::HashMap<u64, Registered>>>;

/// A registry entry: the object, and what [`any_custodial_pinned_in`]
/// reads without upgrading it.
#[derive(Debug)]
struct Registered {
    pages: Weak<Pages>,
    pins: Arc<Mutex<PinMap>>,
    uptr: u64,
    custodial: bool,
}
static REGISTRY: [Shard; SHARDS] = [const { Mutex::new(None) }; SHARDS];

impl Pages {
    /// A new, unpinned pages object covering the pages that hold
    /// `[uptr, uptr + length)` (rounded out to whole pages).
    pub fn new(
        mem: Arc<dyn UserMemory>,
        uptr: u64,
        length: u64,
        writable: bool,
        mode: AccountMode,
    ) -> Arc<Pages> {
        let ps = page_size();
        let base = uptr & !(ps - 1);
        // Pages from the offset in the first page, as the kernel's
        // DIV_ROUND_UP(length + start_byte, PAGE_SIZE): rounding `uptr +
        // length` up to a page instead overflows near the top of the space.
        let npages = (uptr - base).saturating_add(length).div_ceil(ps);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Arc::new(Pages {
            id,
            uptr: base,
            npages,
            writable,
            mem,
            account: Account::new(mode),
            pins: Arc::new(Mutex::new(PinMap::default())),
            registered: AtomicBool::new(false),
            relocated: AtomicBool::new(false),
            custodial: AtomicBool::new(false),
            file: None,
            dmabuf: None,
        })
    }

    /// A new, unpinned pages object over `length` bytes of file `fd` from
    /// byte `start` (`IOAS_MAP_FILE`): the engine maps the file itself, so
    /// the pages stay reachable whatever the caller does with its own
    /// mapping or its fd. Returns the object and the offset of `start` in
    /// its first page.
    ///
    /// `length` is non-zero and `start + length - 1` does not overflow
    /// (the caller checks, in the kernel's order). Errors: `EBADF` (not an
    /// open file), `EINVAL` (length too large), `ENOMEM`, and what mapping
    /// the file gives (see `FileBacking::map`).
    pub fn new_file(
        fd: i32,
        start: u64,
        length: u64,
        writable: bool,
        mode: AccountMode,
    ) -> Result<(Arc<Pages>, u64)> {
        let ps = page_size();
        if length > u64::MAX - ps || length == 0 {
            crate::bail!(
                EINVAL,
                "IOAS_MAP_FILE: length {length:#x} is zero or too large"
            );
        }
        let base = start & !(ps - 1);
        let start_byte = start - base;
        let npages = (start_byte + length).div_ceil(ps);
        let len = npages
            .checked_mul(ps)
            .filter(|&l| l <= isize::MAX as u64)
            .ok_or_else(|| {
                crate::err!(ENOMEM, "IOAS_MAP_FILE: {length:#x} bytes cannot be mapped")
            })?;
        let file = FileBacking::map(fd, base, len, writable)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let pages = Arc::new(Pages {
            id,
            uptr: file.addr,
            npages,
            writable,
            mem: Arc::new(crate::user::SelfMemory),
            account: Account::new(mode),
            pins: Arc::new(Mutex::new(PinMap::default())),
            registered: AtomicBool::new(false),
            relocated: AtomicBool::new(false),
            custodial: AtomicBool::new(false),
            file: Some(file),
            dmabuf: None,
        });
        Ok((pages, start_byte))
    }

    /// A new pages object over `length` bytes of dma-buf `buf` from byte
    /// `start` (`IOAS_MAP_FILE` of a dma-buf fd): the buffer's own memory,
    /// never pinned nor accounted. Returns the object and the offset of
    /// `start` in its first page.
    ///
    /// `length` is non-zero and `start + length - 1` does not overflow (the
    /// caller checks). Errors, in the kernel's order: `EINVAL` (the range
    /// is not inside the buffer), `ENODEV` (the exporter revoked it).
    pub fn new_dmabuf(
        buf: Arc<crate::dmabuf::DmaBuf>,
        start: u64,
        length: u64,
        writable: bool,
    ) -> Result<(Arc<Pages>, u64)> {
        let ps = page_size();
        let att = crate::dmabuf::Attachment::new(buf.clone(), start, length)?;
        let start_byte = start - att.start();
        let npages = (start_byte + length).div_ceil(ps);
        let pages = Arc::new(Pages {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            uptr: buf.addr() + att.start(),
            npages,
            writable,
            mem: Arc::new(crate::user::SelfMemory),
            account: Account::new(AccountMode::None),
            pins: Arc::new(Mutex::new(PinMap::default())),
            registered: AtomicBool::new(false),
            relocated: AtomicBool::new(false),
            custodial: AtomicBool::new(false),
            file: None,
            dmabuf: Some(att),
        });
        buf.attach(&pages)?;
        Ok((pages, start_byte))
    }

    /// The dma-buf import, for an object of `IOAS_MAP_FILE` of a dma-buf.
    pub fn dmabuf(&self) -> Option<&crate::dmabuf::Attachment> {
        self.dmabuf.as_ref()
    }

    /// Whether the object is a dma-buf import.
    pub fn is_dmabuf(&self) -> bool {
        self.dmabuf.is_some()
    }

    /// Whether the object is a dma-buf import whose exporter revoked it
    /// (its pages are in no domain).
    pub fn dmabuf_revoked(&self) -> bool {
        self.dmabuf.as_ref().is_some_and(|d| d.revoked())
    }

    /// The engine's own mapping, for an object of `IOAS_MAP_FILE`.
    pub fn file(&self) -> Option<&FileBacking> {
        self.file.as_ref()
    }

    /// Check what the object owns: for a file object, that its mapping
    /// covers the object and that every pinned page is mapped and resident.
    pub fn check_backing(&self) -> std::result::Result<(), String> {
        if let Some(d) = &self.dmabuf {
            let (base, blen) = (d.buf().addr(), d.buf().len());
            if self.uptr != base + d.start() || d.start() + self.len_bytes() > blen {
                return Err(format!(
                    "pages {}: [{:#x}, +{:#x}) is not inside dma-buf {} [{base:#x}, +{blen:#x})",
                    self.id,
                    self.uptr,
                    self.len_bytes(),
                    d.buf().id()
                ));
            }
            if self.pins.lock().npinned != 0 {
                return Err(format!(
                    "pages {}: a dma-buf import has pinned pages",
                    self.id
                ));
            }
            return Ok(());
        }
        let Some(f) = &self.file else {
            return Ok(());
        };
        if f.addr != self.uptr || f.len != self.len_bytes() {
            return Err(format!(
                "pages {}: file mapping [{:#x}, +{:#x}) does not cover the object [{:#x}, +{:#x})",
                self.id,
                f.addr,
                f.len,
                self.uptr,
                self.len_bytes()
            ));
        }
        let runs: Vec<(u64, u64)> = self
            .pins
            .lock()
            .runs
            .iter()
            .map(|(&s, &(l, _))| (s, l))
            .collect();
        for (s, l) in runs {
            if !f.pinnable {
                return Err(format!(
                    "pages {}: pages {s}..={l} of an unpinnable file are pinned",
                    self.id
                ));
            }
            f.check_resident(s, l)
                .map_err(|e| format!("pages {}: {e}", self.id))?;
        }
        Ok(())
    }

    /// Put the object in [`REGISTRY`] (once). Called with `pins` held, before
    /// the first pin is recorded, so that no pinned page is ever missing
    /// from the registry. Lock order: `pins`, then a registry shard (nothing
    /// takes `pins` under a shard lock: [`live_pages`] releases it first).
    fn register(self: &Arc<Self>) {
        if self.registered.load(Ordering::Relaxed) {
            return;
        }
        REGISTRY[(self.id as usize) % SHARDS]
            .lock()
            .get_or_insert_with(Default::default)
            .insert(
                self.id,
                Registered {
                    pages: Arc::downgrade(self),
                    pins: self.pins.clone(),
                    uptr: self.uptr,
                    custodial: self.custodial(),
                },
            );
        self.registered.store(true, Ordering::Relaxed);
    }

    /// Charge the pinned pages to client `to` from now on
    /// (`IOAS_CHANGE_PROCESS`), under the pin lock that serialises the
    /// account's charges: `to` is checked against its limit unless `force`
    /// (`ENOMEM`, nothing moved). Returns the client charged before.
    pub fn change_process(&self, to: Arc<Client>, force: bool) -> Result<Arc<Client>> {
        let pins = self.pins.lock();
        let from = self.account.client_arc();
        self.account.move_to(to, pins.npinned, force)?;
        Ok(from)
    }

    /// The client the pins are charged to (the kernel's `source_mm`,
    /// `source_user` and `source_task`).
    pub fn client(&self) -> Arc<Client> {
        let _pins = self.pins.lock();
        self.account.client_arc()
    }

    /// The accounting mode of the object.
    pub fn account_mode(&self) -> AccountMode {
        self.account.mode()
    }

    /// Page-aligned user address of page 0.
    pub fn uptr(&self) -> u64 {
        self.uptr
    }
    /// Number of pages covered.
    pub fn npages(&self) -> u64 {
        self.npages
    }
    /// Length in bytes (whole pages).
    pub fn len_bytes(&self) -> u64 {
        // saturating: an object may end in the last page of the space
        self.npages.saturating_mul(page_size())
    }
    /// Whether the memory is pinned for write (the map asked for WRITEABLE).
    pub fn writable(&self) -> bool {
        self.writable
    }
    /// Process-unique identity, for logs and invariant reports.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The memory this object reaches.
    pub fn memory(&self) -> &Arc<dyn UserMemory> {
        &self.mem
    }

    /// Add one user to pages `first..=last`, populating and accounting the
    /// pages that had none. On failure nothing changes.
    ///
    /// Injection points (see [`crate::inject`]), where the kernel's pin can
    /// fail: `"pages.batch"` (`ENOMEM`, the temporary pin batch),
    /// `"pages.account"` (`ENOMEM`, the locked-memory accounting) and
    /// `"pages.pin"` (`EFAULT`, pinning the user pages; once per run of
    /// unpinned pages).
    pub fn pin(self: &Arc<Self>, first: u64, last: u64) -> Result<()> {
        debug_assert!(first <= last && last < self.npages);
        if self.dmabuf.is_some() {
            // the kernel's iopt_area_add_access: a dma-buf has no page to pin
            crate::bail!(
                EINVAL,
                "pages {}: the pages of a dma-buf cannot be pinned",
                self.id
            );
        }
        let ps = page_size();
        let mut pins = self.pins.lock();
        let holes = pins.holes(first, last);
        let new: u64 = holes.iter().map(|(s, l)| l - s + 1).sum();
        if new > 0 {
            crate::inject::point("pages.batch", libc::ENOMEM)?;
            crate::inject::point("pages.account", libc::ENOMEM)?;
            if let Some(f) = &self.file {
                if !f.pinnable {
                    crate::bail!(
                        EINVAL,
                        "pages {}: a file that is neither shmem nor hugetlbfs cannot be pinned",
                        self.id
                    );
                }
            }
            self.account.charge(new)?;
            for &(s, l) in &holes {
                if let Err(e) = crate::inject::point("pages.pin", libc::EFAULT) {
                    self.account.uncharge(new);
                    return Err(e);
                }
                let r = self
                    .mem
                    .populate(self.uptr + s * ps, (l - s + 1) * ps, self.writable);
                if let Err(e) = r {
                    self.account.uncharge(new);
                    // A shared file mapping faults past the end of the file:
                    // the kernel's pin finds no folio there (`EINVAL`).
                    if self.file.is_some() && e.errno().0 == libc::EFAULT {
                        crate::bail!(
                            EINVAL,
                            "pages {}: pages {s}..={l} lie past the end of the file",
                            self.id
                        );
                    }
                    return Err(e);
                }
            }
        }
        self.register();
        pins.add(first, last, 1);
        if new > 0 && self.custodial.load(Ordering::Relaxed) {
            crate::custody::PINNED.fetch_add(new, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Drop one user from pages `first..=last` (each must have one).
    /// Pages that lose their last user and lived in custody are freed.
    pub fn unpin(&self, first: u64, last: u64) {
        let mut pins = self.pins.lock();
        let before = pins.npinned;
        if pins.add(first, last, -1) && pins.relocs.is_empty() {
            self.relocated.store(false, Ordering::Release);
        }
        let gone = before - pins.npinned;
        self.account.uncharge(gone);
        if gone > 0 && self.custodial.load(Ordering::Relaxed) {
            crate::custody::PINNED.fetch_sub(gone, Ordering::AcqRel);
        }
    }

    /// Let [`crate::custody`] move this object's pinned pages when the
    /// program unmaps them. Only for memory of this process
    /// ([`UserMemory::direct`]), before the first pin, and only when every
    /// IO page table that will map the object is one the custody registry
    /// knows (an IOAS made by [`crate::ioas::Ioas::new_shared`]): custody
    /// re-points the domains of those tables alone.
    pub fn set_custodial(&self) {
        debug_assert_eq!(self.npinned(), 0);
        if self.mem.direct() && self.file.is_none() && self.dmabuf.is_none() {
            self.custodial.store(true, Ordering::Relaxed);
        }
    }

    /// Whether [`Pages::set_custodial`] was called (and took).
    pub fn custodial(&self) -> bool {
        self.custodial.load(Ordering::Relaxed)
    }

    /// Whether some pinned page lives elsewhere than at its program
    /// address (one load; `false` unless custody moved pages).
    #[inline]
    pub fn relocated(&self) -> bool {
        self.relocated.load(Ordering::Acquire)
    }

    /// Host address of byte `off` of the object (counted from
    /// [`Pages::uptr`]): where the engine, its domains and accesses reach
    /// it. `uptr() + off` unless custody moved that page.
    #[inline]
    pub fn host(&self, off: u64) -> u64 {
        if !self.relocated() {
            return self.uptr + off;
        }
        let ps = page_size();
        self.pins.lock().host_of(self.uptr, off / ps) + off % ps
    }

    /// Call `f(delta, host, len)` for the host-contiguous pieces of bytes
    /// `off..off + len` of the object, in order (`delta` from `off`): one
    /// piece, `uptr() + off`, unless custody moved some of those pages.
    /// Stops at the first error.
    pub fn for_each_host_run<E>(
        &self,
        off: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, u64) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        if len == 0 {
            return Ok(());
        }
        if !self.relocated() {
            return f(0, self.uptr + off, len);
        }
        let ps = page_size();
        let runs: Vec<(u64, u64, u64)> = {
            let pins = self.pins.lock();
            let mut out: Vec<(u64, u64, u64)> = Vec::new();
            let mut cur = off;
            let end = off + len;
            while cur < end {
                let n = (ps - cur % ps).min(end - cur);
                let h = pins.host_of(self.uptr, cur / ps) + cur % ps;
                match out.last_mut() {
                    Some((d, lh, ll)) if *lh + *ll == h && *d + *ll == cur - off => *ll += n,
                    _ => out.push((cur - off, h, n)),
                }
                cur += n;
            }
            out
        };
        for (d, h, n) in runs {
            f(d, h, n)?;
        }
        Ok(())
    }

    /// The pinned pages that live in program memory (not in custody), as
    /// runs `(first, last, host of first)` that are contiguous in both.
    pub(crate) fn pinned_program_runs(&self) -> Vec<(u64, u64, u64)> {
        let ps = page_size();
        let pins = self.pins.lock();
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        for (&s, &(l, _)) in &pins.runs {
            let mut p = s;
            while p <= l {
                // the stretch of pages from p with one placement
                let (end, host, custody) = match pins.relocs.range(..=p).next_back() {
                    Some((&rs, r)) if r.last >= p => {
                        (r.last.min(l), r.host + (p - rs) * ps, r.chunk.is_some())
                    }
                    _ => {
                        let next = pins
                            .relocs
                            .range(p..)
                            .next()
                            .map_or(u64::MAX, |(&rs, _)| rs - 1);
                        (next.min(l), self.uptr + p * ps, false)
                    }
                };
                if !custody {
                    match out.last_mut() {
                        Some((f, ll, fh)) if *ll + 1 == p && *fh + (p - *f) * ps == host => {
                            *ll = end
                        }
                        _ => out.push((p, end, host)),
                    }
                }
                if end == u64::MAX {
                    break;
                }
                p = end + 1;
            }
        }
        out
    }

    /// Record that pinned pages `first..=last` now live at `host` (page
    /// `first`), in custody chunk `chunk` from its page `idx` when given
    /// (else in program memory the program moved them to). Pages of the
    /// range without a user are left alone. Returns the pages recorded.
    pub(crate) fn relocate(
        &self,
        first: u64,
        last: u64,
        host: u64,
        chunk: Option<(&Arc<crate::custody::Chunk>, u64)>,
    ) -> u64 {
        let mut pins = self.pins.lock();
        let n = pins.relocate(self.uptr, first, last, host, chunk);
        self.relocated
            .store(!pins.relocs.is_empty(), Ordering::Release);
        n
    }

    /// The page of this object that lives at host address `addr` (page
    /// aligned), if one does.
    fn page_at_host(&self, addr: u64) -> Option<u64> {
        let ps = page_size();
        if !self.relocated() {
            return (addr >= self.uptr && addr - self.uptr < self.len_bytes())
                .then(|| (addr - self.uptr) / ps);
        }
        let pins = self.pins.lock();
        if addr >= self.uptr && addr - self.uptr < self.len_bytes() {
            let p = (addr - self.uptr) / ps;
            if pins.host_of(self.uptr, p) == addr {
                return Some(p);
            }
        }
        pins.relocs.iter().find_map(|(&s, r)| {
            (addr >= r.host && (addr - r.host) / ps <= r.last - s).then(|| s + (addr - r.host) / ps)
        })
    }

    /// How many pages currently have at least one user.
    pub fn npinned(&self) -> u64 {
        self.pins.lock().npinned
    }

    /// Whether `page` (an index into this object) has at least one user.
    pub fn is_pinned(&self, page: u64) -> bool {
        self.pins.lock().count(page) > 0
    }

    /// How many users hold `page` (an index into this object) pinned.
    pub fn pin_count(&self, page: u64) -> u32 {
        self.pins.lock().count(page)
    }

    /// How many live pages objects hold the page at user address `addr` pinned:
    /// the userspace meaning of the selftest's page refcount check.
    pub fn pins_of_user_page(addr: u64) -> u32 {
        let ps = page_size();
        let addr = addr & !(ps - 1);
        let mut n = 0;
        for shard in &REGISTRY {
            // Upgrade under the shard lock, look after it: an upgraded Arc may
            // turn out to be the last one, and its drop takes the shard lock.
            let live = live_pages(shard);
            for p in &live {
                if p.page_at_host(addr).is_some_and(|i| p.is_pinned(i)) {
                    n += 1;
                }
            }
        }
        n
    }

    /// [`Pages::pins_of_user_page`] counting also the file pages objects
    /// (`IOAS_MAP_FILE`) whose engine mapping reaches the same page of the
    /// same file as `addr` does in the program (the kernel counts pins of
    /// the page frame, whichever mapping pinned it). `files` is a snapshot
    /// of the shared file mappings.
    pub fn pins_of_user_page_in(addr: u64, files: &crate::user::FileMaps) -> u32 {
        let ps = page_size();
        let addr = addr & !(ps - 1);
        let Some((dev, ino, off)) = files.identity(addr) else {
            return Self::pins_of_user_page(addr);
        };
        let mut n = 0;
        for shard in &REGISTRY {
            let live = live_pages(shard);
            for p in &live {
                let idx = if let Some(i) = p.page_at_host(addr) {
                    Some(i)
                } else if p.file.is_some() {
                    // the engine's mapping of the file starts at p.uptr
                    match files.identity(p.uptr) {
                        Some((d, i, base))
                            if d == dev
                                && i == ino
                                && off >= base
                                && off - base < p.len_bytes() =>
                        {
                            Some((off - base) / ps)
                        }
                        _ => None,
                    }
                } else {
                    None
                };
                if idx.is_some_and(|i| p.is_pinned(i)) {
                    n += 1;
                }
            }
        }
        n
    }
}

/// The live pages objects of one registry shard (the lock is released on
/// return, before the caller drops them).
fn live_pages(shard: &Shard) -> Vec<Arc<Pages>> {
    shard
        .lock()
        .iter()
        .flat_map(|m| m.values())
        .filter_map(|e| e.pages.upgrade())
        .collect()
}

/// Whether a custodial pages object has a pinned page living in program
/// memory within `[lo, hi)`. Allocates nothing and creates no reference
/// to an object (so it may run inside the shim's allocator's own
/// `munmap`): it reads the pin maps the registry entries share. A pin map
/// is only tried (the lock order is `pins`, then a shard): on contention
/// the shard is looked at again.
pub(crate) fn any_custodial_pinned_in(lo: u64, hi: u64) -> bool {
    let ps = page_size();
    for shard in &REGISTRY {
        'again: loop {
            let g = shard.lock();
            let Some(m) = g.as_ref() else { break };
            for e in m.values() {
                if !e.custodial {
                    continue;
                }
                let Some(pins) = e.pins.try_lock() else {
                    drop(g);
                    std::thread::yield_now();
                    continue 'again;
                };
                let uptr = e.uptr;
                for (&s, &(l, _)) in &pins.runs {
                    if pins.relocs.is_empty() {
                        if uptr + s * ps < hi && uptr + (l + 1) * ps > lo {
                            return true;
                        }
                        continue;
                    }
                    if (s..=l).any(|i| {
                        let h = pins.host_of(uptr, i);
                        h < hi && h + ps > lo && !pins.in_custody(i)
                    }) {
                        return true;
                    }
                }
            }
            break;
        }
    }
    false
}

/// Every live pages object that ever pinned and may be taken into custody
/// (see [`Pages::set_custodial`]).
pub(crate) fn live_custodial() -> Vec<Arc<Pages>> {
    let mut out = Vec::new();
    for shard in &REGISTRY {
        out.extend(live_pages(shard).into_iter().filter(|p| p.custodial()));
    }
    out
}

/// Check pin accounting: each client's `pinned_vm` equals the pinned
/// pages of the live pages objects charged to it. Only meaningful while no
/// other thread pins or unpins (tests call it between steps).
pub fn check_accounting() -> std::result::Result<(), String> {
    let mut sums: Vec<(Arc<Client>, u64)> = Client::all().into_iter().map(|c| (c, 0)).collect();
    for shard in &REGISTRY {
        for p in live_pages(shard) {
            let (c, n) = {
                let pins = p.pins.lock();
                (p.account.client_arc(), pins.npinned)
            };
            match sums.iter_mut().find(|(k, _)| Arc::ptr_eq(k, &c)) {
                Some((_, s)) => *s += n,
                None => sums.push((c, n)),
            }
        }
    }
    for (c, sum) in &sums {
        let vm = c.pinned_vm();
        if *sum != vm {
            return Err(format!(
                "pinned_vm of pid {} is {vm} pages but the live pages objects charged to it pin {sum}",
                c.pid()
            ));
        }
    }
    // custody: the chunks hold exactly the pages relocations reach
    let mut held = std::collections::BTreeSet::new();
    for shard in &REGISTRY {
        for p in live_pages(shard) {
            let pins = p.pins.lock();
            for (&s, r) in &pins.relocs {
                if let Some((c, i)) = &r.chunk {
                    for k in 0..=(r.last - s) {
                        held.insert(c.addr() + (i + k) * page_size());
                    }
                }
                if pins.count(s) == 0 || pins.count(r.last) == 0 {
                    return Err(format!(
                        "pages {}: pages {s}..={} are relocated but not pinned",
                        p.id, r.last
                    ));
                }
            }
        }
    }
    let h = crate::custody::held_pages();
    if held.len() as u64 != h {
        return Err(format!(
            "custody holds {h} page(s) but relocations reach {}",
            held.len()
        ));
    }
    crate::custody::check()
}

impl Drop for Pages {
    fn drop(&mut self) {
        if *self.registered.get_mut() {
            if let Some(m) = REGISTRY[(self.id as usize) % SHARDS].lock().as_mut() {
                m.remove(&self.id);
            }
        }
        let mut pins = self.pins.lock();
        debug_assert_eq!(
            pins.npinned, 0,
            "pages object {} dropped with pinned pages",
            self.id
        );
        if pins.npinned != 0 {
            self.account.uncharge(pins.npinned);
            if *self.custodial.get_mut() {
                crate::custody::PINNED.fetch_sub(pins.npinned, Ordering::AcqRel);
            }
        }
        if !pins.relocs.is_empty() {
            pins.remove_relocs(0, u64::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::SelfMemory;

    fn buf(npages: usize) -> (Vec<u8>, u64) {
        let ps = page_size() as usize;
        let v = vec![0u8; (npages + 1) * ps];
        let a = (v.as_ptr() as u64).div_ceil(ps as u64) * ps as u64;
        (v, a)
    }

    #[test]
    fn pin_counts_overlap_and_release() {
        let (_v, a) = buf(8);
        let p = Pages::new(
            Arc::new(SelfMemory),
            a,
            8 * page_size(),
            true,
            AccountMode::None,
        );
        p.pin(0, 3).unwrap();
        p.pin(2, 5).unwrap();
        assert_eq!(p.npinned(), 6);
        assert_eq!(Pages::pins_of_user_page(a + 2 * page_size()), 1);
        p.unpin(0, 3);
        assert!(!p.is_pinned(1));
        assert!(p.is_pinned(2));
        assert_eq!(p.npinned(), 4);
        p.unpin(2, 5);
        assert_eq!(p.npinned(), 0);
        assert!(p.pins.lock().runs.is_empty());
    }

    #[test]
    fn pins_stay_with_the_client_the_object_was_made_for() {
        // another process's client: the parent of this test process
        // SAFETY: getppid has no preconditions.
        let pid = unsafe { libc::getppid() };
        let pidfd = crate::process::pidfd_open(pid).unwrap();
        let b = Client::of_process(Arc::new(crate::process::ProcessMemory::new(pid, pidfd)));
        let ours = Client::ours();
        let (_v, a) = buf(4);
        let p = crate::client::as_caller(Some(b.clone()), || {
            Pages::new(
                Arc::new(SelfMemory),
                a,
                4 * page_size(),
                true,
                AccountMode::Mm,
            )
        });
        assert!(Arc::ptr_eq(&p.client(), &b));
        let before = (ours.pinned_vm(), ours.mm_locked_vm());
        // pinned by a command of ours: still charged to b
        p.pin(0, 2).unwrap();
        assert_eq!(crate::client::counts(pid), (3, 3));
        assert_eq!((ours.pinned_vm(), ours.mm_locked_vm()), before);
        check_accounting().unwrap();
        // IOAS_CHANGE_PROCESS run by us: the pins move to ours
        let from = p.change_process(ours.clone(), false).unwrap();
        assert!(Arc::ptr_eq(&from, &b));
        assert_eq!(crate::client::counts(pid), (0, 0));
        assert_eq!(
            (ours.pinned_vm(), ours.mm_locked_vm()),
            (before.0 + 3, before.1 + 3)
        );
        check_accounting().unwrap();
        p.unpin(0, 2);
        assert_eq!((ours.pinned_vm(), ours.mm_locked_vm()), before);
    }

    fn memfd(npages: u64) -> i32 {
        // SAFETY: creating and sizing our own memfd.
        let fd = unsafe { libc::memfd_create(c"pages-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: as above.
        let r = unsafe { libc::ftruncate(fd, (npages * page_size()) as i64) };
        assert_eq!(r, 0);
        fd
    }

    #[test]
    fn file_pages_own_their_mapping_and_checks_see_it() {
        let ps = page_size();
        let fd = memfd(4);
        let (p, start_byte) = Pages::new_file(fd, ps + 8, 2 * ps, true, AccountMode::None).unwrap();
        // SAFETY: ours; the object keeps its own mapping.
        unsafe { libc::close(fd) };
        assert_eq!(start_byte, 8);
        assert_eq!(p.npages(), 3);
        let f = p.file().unwrap();
        assert_eq!((f.addr(), f.len(), f.offset()), (p.uptr(), 3 * ps, ps));
        assert!(f.pinnable());
        p.check_backing().unwrap();
        p.pin(0, 2).unwrap();
        p.check_backing().unwrap();
        let mut b = [0u8; 1];
        p.memory().write(p.uptr() + 8, b"x").unwrap();
        p.memory().read(p.uptr() + 8, &mut b).unwrap();
        assert_eq!(&b, b"x");
        // the mapping taken away under the object: the check says so
        // SAFETY: unmapping the object's own (test-only) mapping; nothing
        // reads it before the object's drop unmaps it again (a no-op).
        unsafe { libc::munmap(f.addr() as *mut _, f.len() as usize) };
        let e = p.check_backing().unwrap_err();
        assert!(e.contains("no longer mapped"), "{e}");
        p.unpin(0, 2);
    }

    #[test]
    fn file_pages_past_eof_and_unpinnable() {
        let ps = page_size();
        let fd = memfd(1);
        let (p, _) = Pages::new_file(fd, 0, 2 * ps, false, AccountMode::None).unwrap();
        p.pin(0, 0).unwrap();
        assert_eq!(p.pin(1, 1).unwrap_err().errno().0, libc::EINVAL);
        assert_eq!(p.npinned(), 1);
        p.unpin(0, 0);
        // SAFETY: ours.
        unsafe { libc::close(fd) };
        assert_eq!(
            Pages::new_file(-1, 0, ps, false, AccountMode::None)
                .unwrap_err()
                .errno()
                .0,
            libc::EBADF
        );
        let f = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let (p, _) = Pages::new_file(f.as_raw_fd(), 0, ps, false, AccountMode::None).unwrap();
        assert!(!p.file().unwrap().pinnable());
        assert_eq!(p.pin(0, 0).unwrap_err().errno().0, libc::EINVAL);
        p.check_backing().unwrap();
    }

    #[test]
    fn relocations_split_follow_pins_and_end_with_them() {
        let ps = page_size();
        let (_v, a) = buf(8);
        let p = Pages::new(Arc::new(SelfMemory), a, 8 * ps, true, AccountMode::None);
        p.pin(0, 7).unwrap();
        p.pin(2, 3).unwrap();
        assert!(!p.relocated());
        assert_eq!(p.host(5 * ps + 9), a + 5 * ps + 9);
        // pages 1..=5 live elsewhere (as after the program's mremap)
        let to = 0x7000_0000_0000;
        assert_eq!(p.relocate(1, 5, to, None), 5);
        assert!(p.relocated());
        assert_eq!(p.host(9), a + 9);
        assert_eq!(p.host(3 * ps + 1), to + 2 * ps + 1);
        let mut runs = Vec::new();
        p.for_each_host_run(ps / 2, 2 * ps, |d, h, n| {
            runs.push((d, h, n));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(
            runs,
            vec![(0, a + ps / 2, ps / 2), (ps / 2, to, ps + ps / 2)]
        );
        assert_eq!(
            p.pinned_program_runs(),
            vec![(0, 0, a), (1, 5, to), (6, 7, a + 6 * ps)]
        );
        // a page that loses its last user loses its relocation; one that
        // keeps a user keeps it
        p.unpin(0, 7);
        assert_eq!(p.host(ps), a + ps);
        assert_eq!(p.host(2 * ps), to + ps);
        assert_eq!(p.pinned_program_runs(), vec![(2, 3, to + ps)]);
        // back at its program address: no relocation left
        assert_eq!(p.relocate(2, 3, a + 2 * ps, None), 2);
        assert!(!p.relocated());
        p.unpin(2, 3);
        assert_eq!(p.npinned(), 0);
    }

    #[test]
    fn pin_failure_changes_nothing() {
        let p = Pages::new(
            Arc::new(SelfMemory),
            1 << 31,
            4 * page_size(),
            true,
            AccountMode::None,
        );
        assert_eq!(p.pin(0, 3).unwrap_err().errno().0, libc::EFAULT);
        assert_eq!(p.npinned(), 0);
    }
}
