//! dma-bufs: buffers an exporter shares by fd, and their import by
//! `IOMMU_IOAS_MAP_FILE` (Linux 6.19; the kernel's dma-buf core as iommufd
//! uses it, pages.c's `IOPT_ADDRESS_DMABUF`).
//!
//! A [`DmaBuf`] is the exporter's side: engine-owned memory (zeroed, page
//! aligned, never the program's) and a *revoked* flag. The program holds it
//! as an fd ([`DmaBufFile`], an engine file like the fault fd). Mapping the
//! fd into an IOAS creates a pages object with an [`Attachment`]: the pages
//! are the buffer's own memory, reached by address, never pinned nor
//! accounted (a dma-buf's memory is not user memory).
//!
//! # Revocation
//!
//! The exporter may take its memory back at any time
//! ([`DmaBuf::move_to`], the kernel's `dma_buf_invalidate_mappings`):
//! every attachment then unmaps its pages from every domain that maps them
//! and stays *revoked* for the rest of its life. The areas that map it stay
//! (an unmap of them still works and unmaps nothing from the domains), a
//! domain attached later is filled without them, an `IOAS_COPY` of them
//! makes more revoked areas. Only a new `IOAS_MAP_FILE` of the fd, once the
//! exporter allows it again, maps the memory anew. While the exporter says
//! the buffer is revoked, a new map is `ENODEV`.
//!
//! To unmap on revocation, an attachment records (*tracks*) each domain it
//! was filled into, with the IOVA range: `Attachment::fill` and
//! `Attachment::unfill` (called by the IO page table for every domain
//! fill and unfill of an area of these pages) keep that list, under the
//! attachment's lock, which revocation takes too.
//!
//! Access pins and access copies of dma-buf pages are `EINVAL`, as in the
//! kernel (the pages have no `struct page` to pin or copy through); so are
//! splits of their areas (`EOPNOTSUPP`).
//!
//! Lock order: the IO page table's `domains` lock, then an attachment's
//! lock, then a domain's own lock. The exporter's lock is a leaf: revocation
//! copies the attachment list out of it before it takes any attachment's
//! lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::domain::{Domain, HostAddr, Iova, Prot};
use crate::files::{self, EngineFile};
use crate::pages::Pages;
use crate::user::page_size;
use crate::{bail, err, Result};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `DMA_BUF_MAGIC`: the `f_type` of a host kernel's dma-buf fd.
const DMA_BUF_MAGIC: i64 = 0x444d_4142;

/// An exported buffer: engine-owned memory and whether the exporter has
/// revoked it.
#[derive(Debug)]
pub struct DmaBuf {
    id: u64,
    /// First byte of the buffer (engine memory).
    addr: u64,
    /// Bytes of the buffer (whole pages).
    len: u64,
    /// The whole reservation (`addr` lies inside it, aligned), unmapped on drop.
    map_addr: u64,
    map_len: u64,
    /// Ranges the exporter made the buffer of (VFIO's `nr_ranges`; 1 for
    /// the selftest's): only a one-range buffer is imported by an IOAS.
    ranges: u32,
    /// Made of anonymous engine memory by [`DmaBuf::new`] (the selftest
    /// exporter's), not over a device's memory (VFIO's export): only such a
    /// buffer takes the selftest's `DMABUF_REVOKE`.
    anonymous: bool,
    exporter: Mutex<Exporter>,
}

#[derive(Debug, Default)]
struct Exporter {
    revoked: bool,
    /// The pages objects that imported the buffer (dead ones are pruned
    /// as new ones come).
    attachments: Vec<Weak<Pages>>,
}

impl DmaBuf {
    /// A zeroed buffer of `len` bytes (a non-zero multiple of the page
    /// size), aligned to the huge page size so that an IOVA allocated for
    /// it gets the alignment the kernel gives a dma-buf at offset 0.
    /// `ENOMEM` when the memory cannot be had.
    pub fn new(len: u64) -> Result<Arc<DmaBuf>> {
        let ps = page_size();
        if len == 0 || !len.is_multiple_of(ps) {
            bail!(
                EINVAL,
                "dma-buf length {len:#x} is not a non-zero multiple of the page size"
            );
        }
        let align = crate::user::huge_page_size().max(ps);
        let Some(map_len) = len.checked_add(align) else {
            bail!(ENOMEM, "dma-buf of {len:#x} bytes is too large");
        };
        let map_addr = crate::pages::raw_mmap(
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
        .map_err(|e| err!(ENOMEM, "dma-buf: cannot map {map_len:#x} bytes (errno {e})"))?;
        let addr = map_addr.next_multiple_of(align);
        Ok(Self::made((addr, len), (map_addr, map_len), 1, true, false))
    }

    fn made(
        (addr, len): (u64, u64),
        (map_addr, map_len): (u64, u64),
        ranges: u32,
        anonymous: bool,
        revoked: bool,
    ) -> Arc<DmaBuf> {
        Arc::new(DmaBuf {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            len,
            map_addr,
            map_len,
            ranges,
            anonymous,
            exporter: Mutex::new(Exporter {
                revoked,
                attachments: Vec::new(),
            }),
        })
    }

    /// A buffer over another object's shared memory (VFIO's export of a
    /// BAR, `VFIO_DEVICE_FEATURE_DMA_BUF`): `len` bytes of the file `fd`
    /// from `offset`, mapped shared into engine memory (so DMA through an
    /// IOAS that imports it reaches the very bytes the device model and a
    /// program's `mmap` of the BAR see), made of `ranges` ranges. A buffer
    /// of several ranges is not mapped at all (`len` is their sum): an IOAS
    /// refuses to import it (`EOPNOTSUPP`), as the kernel's iommufd takes
    /// one range only. Starts `revoked` as the exporter says.
    pub fn over_file(
        fd: i32,
        offset: u64,
        len: u64,
        ranges: u32,
        revoked: bool,
    ) -> Result<Arc<DmaBuf>> {
        let ps = page_size();
        if len == 0 || !len.is_multiple_of(ps) || ranges == 0 {
            bail!(
                EINVAL,
                "dma-buf length {len:#x} is not a non-zero multiple of the page size"
            );
        }
        let (addr, map_addr, map_len) = if ranges == 1 {
            let a = crate::pages::raw_mmap(
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as i64,
            )
            .map_err(|e| {
                err!(
                    ENOMEM,
                    "dma-buf: cannot map {len:#x} bytes of fd {fd} (errno {e})"
                )
            })?;
            (a, a, len)
        } else {
            (0, 0, 0)
        };
        Ok(Self::made(
            (addr, len),
            (map_addr, map_len),
            ranges,
            false,
            revoked,
        ))
    }

    /// Revoke (`true`) or restore the buffer when the exporter's state
    /// changes, as VFIO's `vfio_pci_dma_buf_move` does: nothing when the
    /// state is already that one; otherwise every importer is invalidated
    /// ([`DmaBuf::set_revoked`]).
    pub fn move_to(&self, revoked: bool) {
        if self.revoked() != revoked {
            self.set_revoked(revoked);
        }
    }

    /// Process-unique identity, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The buffer's first byte (engine memory).
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// The buffer's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the buffer is empty (never: a dma-buf has a size).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether [`DmaBuf::new`] made the buffer of anonymous memory (the
    /// selftest exporter does), not VFIO over a device's memory.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// Whether the exporter says the memory is revoked (new imports fail).
    pub fn revoked(&self) -> bool {
        self.exporter.lock().revoked
    }

    /// Set the exporter's revoked flag, then invalidate every current
    /// importer (the selftest exporter's `DMABUF_REVOKE`: the kernel's
    /// `dma_buf_invalidate_mappings` runs whichever way the flag goes, so
    /// even clearing it revokes the attachments made before).
    pub fn set_revoked(&self, revoked: bool) {
        let attachments: Vec<Arc<Pages>> = {
            let mut ex = self.exporter.lock();
            ex.revoked = revoked;
            ex.attachments.retain(|w| w.strong_count() > 0);
            ex.attachments.iter().filter_map(Weak::upgrade).collect()
        };
        tracing::debug!(
            dmabuf = self.id,
            revoked,
            importers = attachments.len(),
            "dma-buf invalidated"
        );
        for p in &attachments {
            if let Some(a) = p.dmabuf() {
                a.revoke();
            }
        }
    }

    /// Record `pages` as an importer: `ENODEV` while the exporter says the
    /// buffer is revoked (the kernel's exporter `map` callback).
    pub(crate) fn attach(&self, pages: &Arc<Pages>) -> Result<()> {
        let mut ex = self.exporter.lock();
        if ex.revoked {
            bail!(
                ENODEV,
                "IOAS_MAP_FILE: dma-buf {} is revoked by its exporter",
                self.id
            );
        }
        if self.ranges != 1 {
            bail!(
                EOPNOTSUPP,
                "IOAS_MAP_FILE: dma-buf {} is made of {} ranges; an IOAS imports one-range buffers only",
                self.id,
                self.ranges
            );
        }
        ex.attachments.retain(|w| w.strong_count() > 0);
        ex.attachments.push(Arc::downgrade(pages));
        Ok(())
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if self.map_len == 0 {
            return;
        }
        // SAFETY: unmapping the reservation this object made and owns; every
        // pages object that reached it held an `Arc` of it, so none is left.
        unsafe {
            libc::syscall(
                libc::SYS_munmap,
                self.map_addr as usize,
                self.map_len as usize,
            )
        };
    }
}

/// One domain an attachment's pages are filled into: `len` bytes at `iova`.
#[derive(Debug)]
struct Track {
    domain: Weak<dyn Domain>,
    len: u64,
}

#[derive(Debug, Default)]
struct AttachState {
    /// Permanent once set: the pages left every domain.
    revoked: bool,
    /// (domain id, first IOVA) -> the domain and the length.
    tracks: BTreeMap<(u64, u64), Track>,
}

/// A pages object's import of a [`DmaBuf`] (the kernel's
/// `iopt_pages_dmabuf`): the buffer, where page 0 of the object is in it,
/// and the domains the object is filled into.
#[derive(Debug)]
pub struct Attachment {
    buf: Arc<DmaBuf>,
    /// Byte offset in the buffer of the object's page 0 (page aligned).
    start: u64,
    state: Mutex<AttachState>,
}

impl Attachment {
    /// Checks of the kernel's `iopt_alloc_dmabuf_pages`: `length` bytes from
    /// byte `start` must lie inside `buf` (`EINVAL`). `length` is non-zero
    /// and `start + length - 1` does not overflow (the caller checked).
    pub(crate) fn new(buf: Arc<DmaBuf>, start: u64, length: u64) -> Result<Attachment> {
        let last = start.saturating_add(length.saturating_sub(1));
        if length == 0 || buf.len() <= last {
            bail!(
                EINVAL,
                "IOAS_MAP_FILE: bytes [{start:#x}, {last:#x}] are not inside the {:#x}-byte dma-buf {}",
                buf.len(),
                buf.id()
            );
        }
        Ok(Attachment {
            start: start & !(page_size() - 1),
            buf,
            state: Mutex::new(AttachState::default()),
        })
    }

    /// The buffer.
    pub fn buf(&self) -> &Arc<DmaBuf> {
        &self.buf
    }
    /// Byte offset in the buffer of the object's page 0.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// Whether these pages were revoked (they are in no domain any more).
    pub fn revoked(&self) -> bool {
        self.state.lock().revoked
    }

    /// The length tracked for the fill of `domain_id` at `iova`, if any.
    pub fn tracked(&self, domain_id: u64, iova: u64) -> Option<u64> {
        self.state
            .lock()
            .tracks
            .get(&(domain_id, iova))
            .map(|t| t.len)
    }

    /// How many domain fills are tracked.
    pub fn ntracked(&self) -> usize {
        self.state.lock().tracks.len()
    }

    /// Fill `domains` with `len` bytes at `iova` mapping host address
    /// `addr` (inside the buffer), and track each: while revoked, only
    /// track. On error nothing stays mapped or tracked.
    pub(crate) fn fill(
        &self,
        iova: u64,
        addr: u64,
        len: u64,
        prot: Prot,
        domains: &[Arc<dyn Domain>],
        max_pgsize: u64,
    ) -> Result<()> {
        let mut st = self.state.lock();
        for (i, d) in domains.iter().enumerate() {
            let r = if st.revoked {
                Ok(())
            } else {
                d.map(Iova(iova), HostAddr(addr), len, prot, max_pgsize)
            };
            if let Err(e) = r {
                for d in &domains[..i] {
                    if !st.revoked {
                        d.unmap(iova, len);
                    }
                    st.tracks.remove(&(d.id(), iova));
                }
                return Err(e);
            }
            st.tracks.insert(
                (d.id(), iova),
                Track {
                    domain: Arc::downgrade(d),
                    len,
                },
            );
        }
        Ok(())
    }

    /// Unmap `len` bytes at `iova` from `domains` (unless revoked: then
    /// they map nothing there) and stop tracking them.
    pub(crate) fn unfill(&self, iova: u64, len: u64, domains: &[Arc<dyn Domain>]) {
        let mut st = self.state.lock();
        for d in domains {
            if !st.revoked {
                let n = d.unmap(iova, len);
                debug_assert_eq!(n, len, "domain {} unmapped a short range", d.id());
            }
            if st.tracks.remove(&(d.id(), iova)).is_none() {
                tracing::warn!(
                    "dma-buf {}: unfill of domain {} at {iova:#x} that was not tracked",
                    self.buf.id(),
                    d.id()
                );
            }
        }
    }

    /// The kernel's `iopt_revoke_notify`: unmap the pages from every
    /// tracked domain and stay revoked.
    fn revoke(&self) {
        let mut st = self.state.lock();
        if st.revoked {
            return;
        }
        for (&(did, iova), t) in &st.tracks {
            match t.domain.upgrade() {
                Some(d) => {
                    d.unmap(iova, t.len);
                }
                None => tracing::warn!(
                    "dma-buf {}: tracked domain {did} at {iova:#x} is gone",
                    self.buf.id()
                ),
            }
        }
        st.revoked = true;
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        debug_assert!(
            st.tracks.is_empty(),
            "dma-buf attachment dropped while filled into {} domain(s)",
            st.tracks.len()
        );
    }
}

/// The program's fd of a [`DmaBuf`] (the kernel's dma-buf file). It has
/// none of the file operations the engine emulates: `read`/`write` are
/// `EINVAL`, and so is `mmap` (the selftest exporter has no `mmap`).
#[derive(Debug)]
pub struct DmaBufFile {
    buf: Arc<DmaBuf>,
}

impl DmaBufFile {
    /// The buffer behind the fd.
    pub fn buf(&self) -> &Arc<DmaBuf> {
        &self.buf
    }
}

impl EngineFile for DmaBufFile {
    fn kind(&self) -> &'static str {
        "dmabuf"
    }

    fn can_read(&self) -> bool {
        false
    }

    fn can_write(&self) -> bool {
        false
    }

    fn mmap(&self, _offset: u64, _len: u64, _write: bool) -> Result<files::MmapTarget> {
        bail!(
            EINVAL,
            "dma-buf {}: its exporter does not allow mmap",
            self.buf.id()
        );
    }
}

/// Hand `buf` to the program as a new fd (`cloexec`: `O_CLOEXEC`).
pub fn export_fd(buf: Arc<DmaBuf>, cloexec: bool) -> Result<i32> {
    files::create(Arc::new(DmaBufFile { buf }), cloexec)
}

/// What an fd number names, for the calls that take a dma-buf fd.
#[derive(Debug)]
pub enum FdKind {
    /// One of the engine's dma-bufs.
    Engine(Arc<DmaBuf>),
    /// A dma-buf of the host kernel (no exporter the engine knows), of
    /// this size.
    Host(u64),
    /// An open file that is not a dma-buf.
    Other,
    /// Not an open file.
    NotOpen,
}

/// Classify `fd` (the kernel's `dma_buf_get`). Raw system calls: under the
/// preload `fcntl` and `fstat` are the program's hooked entry points.
pub fn classify_fd(fd: i32) -> FdKind {
    if let Some(f) = files::get_as::<DmaBufFile>(fd) {
        return FdKind::Engine(f.buf.clone());
    }
    if fd < 0 {
        return FdKind::NotOpen;
    }
    // SAFETY: F_GETFL reads the flags of an fd number; any value is fine.
    let fl = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
    if fl < 0 || (fl as i32) & libc::O_PATH != 0 {
        return FdKind::NotOpen;
    }
    // SAFETY: fstatfs writes one statfs into the zeroed buffer we own.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `sfs` is a valid, writable statfs.
    let r = unsafe { libc::syscall(libc::SYS_fstatfs, fd, &mut sfs as *mut libc::statfs) };
    if r != 0 || sfs.f_type as i64 != DMA_BUF_MAGIC {
        return FdKind::Other;
    }
    // SAFETY: fstat writes one stat into the zeroed buffer we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid, writable stat.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    FdKind::Host(if r == 0 { st.st_size as u64 } else { 0 })
}
