//! IO address spaces (the kernel's ioas.c): the engine's IO page table as a
//! context object, with the typed operations the ioctl handlers and the
//! Rust API call (the handlers are in `ioctl.rs`).

pub(crate) mod ioctl;

use std::any::Any;
use std::sync::Arc;

use crate::accounting::AccountMode;
pub use crate::io_pagetable::{AreaInfo, MapSource};
use crate::io_pagetable::{IoPagetable, IovaRequest, Prot};
use crate::pages::Pages;
use crate::user::UserMemory;
use crate::{bail, Result};

/// An IO address space.
#[derive(Debug)]
pub struct Ioas {
    iopt: IoPagetable,
    /// HWPTs made on this IOAS (auto-domain search; pruned lazily).
    pub(crate) hwpts: parking_lot::Mutex<Vec<std::sync::Weak<crate::hwpt::HwptPaging>>>,
    mem: Arc<dyn UserMemory>,
    account_mode: AccountMode,
    /// Known to [`crate::custody`] (made by [`Ioas::new_shared`]): its
    /// `IOAS_MAP` pages may be taken into custody.
    custody: bool,
    /// State layers above keep with this IOAS (see [`Ioas::extension`]).
    extensions: Extensions,
}

/// Per-IOAS state of the layers above the IOAS, one value per type, made on
/// first use and dropped with the IOAS (the VFIO container's type1 dirty
/// session, `vfio_compat::tracking`). The IOAS knows nothing of what they
/// hold.
#[derive(Default)]
struct Extensions(parking_lot::Mutex<Vec<Arc<dyn Any + Send + Sync>>>);

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({})", self.0.lock().len())
    }
}

impl crate::context::Object for Ioas {
    const KIND: &'static str = "IOAS";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_IOAS");

    fn check_object(
        &self,
        _ctx: &crate::context::Context,
        id: crate::ObjId,
    ) -> std::result::Result<(), String> {
        self.check_invariants()
            .map_err(|e| format!("IOAS {id}: {e}"))
    }
}

impl Ioas {
    /// A new empty IOAS over `mem`, accounting pins in `account_mode`.
    pub fn new(mem: Arc<dyn UserMemory>, account_mode: AccountMode) -> Ioas {
        Ioas {
            iopt: IoPagetable::new(),
            hwpts: Default::default(),
            mem,
            account_mode,
            custody: false,
            extensions: Extensions::default(),
        }
    }

    /// A new empty IOAS, shared, that [`crate::custody`] knows: the pinned
    /// pages of its `IOAS_MAP` areas hold when the program unmaps them
    /// (every IOAS of a [`crate::Context`] is made so).
    pub fn new_shared(mem: Arc<dyn UserMemory>, account_mode: AccountMode) -> Arc<Ioas> {
        let mut ioas = Ioas::new(mem, account_mode);
        ioas.custody = true;
        let ioas = Arc::new(ioas);
        crate::custody::register(&ioas);
        ioas
    }

    /// The IO page table: the engine's own, for the workspace's white-box
    /// tests (see `plumbing`), not API.
    #[doc(hidden)]
    pub fn iopt(&self) -> &IoPagetable {
        &self.iopt
    }

    /// The state of type `T` a layer above keeps with this IOAS, made with
    /// `T::default()` on first use; it lives as long as the IOAS.
    pub(crate) fn extension<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        let mut v = self.extensions.0.lock();
        if let Some(t) = v.iter().find_map(|e| e.clone().downcast::<T>().ok()) {
            return t;
        }
        let t = Arc::new(T::default());
        v.push(t.clone());
        t
    }

    /// `IOMMU_IOAS_MAP`: map `length` bytes of user memory at `user_va`,
    /// at `iova` (or an allocated IOVA when `None`). Returns the IOVA.
    pub fn map_user(
        &self,
        user_va: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        self.map_user_of(&self.mem, user_va, length, iova, prot)
    }

    /// [`Ioas::map_user`] of the memory `mem` (the calling process's, the
    /// pages' `source_mm`), which need not be the IOAS's own: an IOAS
    /// shared by several processes maps the memory of whichever maps.
    pub fn map_user_of(
        &self,
        mem: &Arc<dyn UserMemory>,
        user_va: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        if length == 0 {
            bail!(EINVAL, "length is zero");
        }
        if user_va.checked_add(length).is_none() {
            bail!(
                EOVERFLOW,
                "user_va {user_va:#x} + length {length:#x} overflows"
            );
        }
        let mem = mem
            .pages_memory(user_va, length)
            .unwrap_or_else(|| mem.clone());
        let pages = Pages::new(mem, user_va, length, prot.write, self.account_mode);
        if self.custody {
            // (taken only for this process's own memory: see set_custodial)
            pages.set_custodial();
        }
        let start_byte = user_va - pages.uptr();
        self.map_pages(pages, start_byte, length, iova, prot)
    }

    /// `IOMMU_IOAS_MAP_FILE`: map `length` bytes of file `fd` (a file
    /// descriptor of this process) from byte `start`, at `iova` (or an
    /// allocated IOVA when `None`). Returns the IOVA.
    ///
    /// The engine maps the file itself (`MAP_SHARED`), and that mapping
    /// lives as long as an area, domain or access uses the pages: the
    /// caller may unmap its own view of the file and close `fd` at once.
    /// Pins are accounted as those of `IOAS_MAP`. Only shmem (memfd) and
    /// hugetlbfs files can be pinned (`EINVAL` when a domain or an access
    /// needs them), as `memfd_pin_folios` only takes those; pages past
    /// the end of the file cannot be pinned either (`EINVAL`).
    pub fn map_file(
        &self,
        fd: i32,
        start: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        check_file_range(start, length)?;
        let (pages, start_byte) =
            Pages::new_file(fd, start, length, prot.write, self.account_mode)?;
        self.map_pages(pages, start_byte, length, iova, prot)
    }

    /// `IOMMU_IOAS_MAP_FILE` of a dma-buf (Linux 6.19): map `length` bytes
    /// of `buf` from byte `start`, at `iova` (or an allocated IOVA when
    /// `None`). Returns the IOVA.
    ///
    /// The pages are the buffer's memory, not pinned nor accounted; when
    /// the exporter revokes the buffer they leave every domain (see
    /// [`crate::dmabuf`]). Errors: `EINVAL` (zero length, or the range is
    /// not inside the buffer), `EOVERFLOW` (`start + length - 1`
    /// overflows), `ENODEV` (the exporter revoked the buffer), then those
    /// of every map.
    pub fn map_dmabuf(
        &self,
        buf: &Arc<crate::dmabuf::DmaBuf>,
        start: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        check_file_range(start, length)?;
        let (pages, start_byte) = Pages::new_dmabuf(buf.clone(), start, length, prot.write)?;
        self.map_pages(pages, start_byte, length, iova, prot)
    }

    /// `IOMMU_IOAS_COPY`: map what backs `[src_iova, src_iova + length)` in
    /// `src` into this IOAS, sharing the pin. Returns the destination IOVA.
    pub fn copy_from(
        &self,
        src: &Ioas,
        src_iova: u64,
        length: u64,
        dst_iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        let sources = src.iopt.get_pages(src_iova, length)?;
        self.map_sources(sources, length, dst_iova, prot)
    }

    /// Map already-existing pages objects (what `IOAS_COPY` does once it has
    /// looked them up in the source IOAS). Returns the IOVA.
    pub fn map_sources(
        &self,
        sources: Vec<MapSource>,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        let req = iova.map_or(IovaRequest::Alloc, IovaRequest::Fixed);
        self.iopt.map(sources, length, req, prot)
    }

    /// Map `length` bytes of `pages` from `start_byte` (in its first page)
    /// at `iova`, or an allocated IOVA.
    fn map_pages(
        &self,
        pages: Arc<Pages>,
        start_byte: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        let req = iova.map_or(IovaRequest::Alloc, IovaRequest::Fixed);
        let src = MapSource {
            pages,
            start_byte,
            length,
        };
        self.iopt.map_one(src, length, req, prot)
    }

    /// `IOMMU_IOAS_UNMAP` of a range: returns the bytes unmapped.
    pub fn unmap(&self, iova: u64, length: u64) -> Result<u64> {
        self.iopt.unmap(iova, length)
    }

    /// `IOMMU_IOAS_UNMAP` of everything: returns the bytes unmapped.
    pub fn unmap_all(&self) -> Result<u64> {
        self.iopt.unmap_all()
    }

    /// The areas, in IOVA order.
    pub fn areas(&self) -> Vec<AreaInfo> {
        self.iopt.areas()
    }

    /// Check this IOAS's invariants.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.iopt.check_invariants()
    }
}

impl crate::custody::Table for Ioas {
    fn hold(&self) -> crate::custody::Held<'_> {
        Box::new(self.iopt.lock_for_custody())
    }
}

impl Drop for Ioas {
    fn drop(&mut self) {
        if self.custody {
            crate::custody::unregister(self as *const Ioas as usize);
        }
        if let Err(e) = self.iopt.unmap_all() {
            tracing::error!("IOAS teardown: unmap_all failed: {e}");
        }
    }
}

/// The range checks of a file or dma-buf map: `EINVAL` for a zero length,
/// `EOVERFLOW` when `start + length - 1` overflows.
fn check_file_range(start: u64, length: u64) -> Result<()> {
    if length == 0 {
        bail!(EINVAL, "length is zero");
    }
    if start.checked_add(length - 1).is_none() {
        bail!(EOVERFLOW, "start {start:#x} + length {length:#x} overflows");
    }
    Ok(())
}
