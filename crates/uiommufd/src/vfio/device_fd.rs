//! The device file (the kernel's `vfio_device_fops` over vfio-pci's
//! `vfio_pci_core_ioctl`/`_rw`/`_mmap`): every VFIO device ioctl with
//! 6.12's layouts, `argsz` rules and errnos, region access by `pread`/
//! `pwrite` at `index << 40 | offset`, and `mmap` of mappable BARs.
//!
//! A file opened from the cdev (`/dev/vfio/devices/vfioN`) is useless
//! until `VFIO_DEVICE_BIND_IOMMUFD`: before it every other ioctl, read,
//! write and mmap is `EINVAL` (`df->access_granted`). Files from
//! `VFIO_GROUP_GET_DEVICE_FD` are open from the start.
//!
//! `VFIO_DEVICE_IOEVENTFD` is served by a watcher thread
//! (`vfio::ioeventfd`). `VFIO_DEVICE_FEATURE` serves the migration and DMA-logging features
//! ([`crate::vfio::migration`]) and answers `ENOTTY` for the others after
//! the kernel's header checks (no VF token; the low-power features are not
//! emulated); plain `read(2)`/
//! `write(2)` without an offset are `EINVAL` (use `pread`/`pwrite`).

use std::sync::Arc;

use parking_lot::Mutex;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::context::{Context, ObjId};
use crate::files::{EngineFile, FdResolver, MmapTarget, StatAs};
use crate::user::UserMemory;
use crate::vfio::device::{OpenedVia, VfioDevice};
use crate::vfio::group::GroupToken;
use crate::vfio::registry::VFIO_CDEV_MAJOR;
use crate::vfio::uapi::*;
pub(crate) use crate::vfio_compat::ioctl::{
    read_prefix_from as read_prefix, write_prefix_to as write_prefix,
};
use crate::{bail, Error, Result};

/// The errno for an fd that names no iommufd: `EBADF` when it is not open
/// (`fdget`), `EBADFD` when it is some other file.
pub(crate) fn not_an_iommufd(fd: i32, what: &str) -> Error {
    // SAFETY: F_GETFD on a number: no memory is touched.
    let open = fd >= 0 && unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) } >= 0;
    if open {
        Error::new(
            libc::EBADFD,
            format!("{what}: fd {fd} is neither an iommufd nor a VFIO container"),
        )
    } else {
        Error::new(libc::EBADF, format!("{what}: fd {fd} is not open"))
    }
}

/// A device file.
#[derive(Debug)]
pub struct DeviceFile {
    dev: Arc<VfioDevice>,
    via: OpenedVia,
    /// Access granted: bound (cdev) or opened (group).
    bound: Mutex<bool>,
    /// Keeps the group counted as open while this file lives.
    _group: Option<Arc<GroupToken>>,
}

impl DeviceFile {
    /// A file opened from the cdev, not bound yet.
    pub(crate) fn cdev(dev: Arc<VfioDevice>) -> DeviceFile {
        DeviceFile {
            dev,
            via: OpenedVia::Cdev,
            bound: Mutex::new(false),
            _group: None,
        }
    }

    /// A file of `VFIO_GROUP_GET_DEVICE_FD` (the caller opened the device).
    pub(crate) fn group(dev: Arc<VfioDevice>, token: Arc<GroupToken>) -> DeviceFile {
        DeviceFile {
            dev,
            via: OpenedVia::Group,
            bound: Mutex::new(true),
            _group: Some(token),
        }
    }

    /// The device.
    pub fn device(&self) -> &Arc<VfioDevice> {
        &self.dev
    }

    /// How the file was opened.
    pub fn opened_via(&self) -> OpenedVia {
        self.via
    }

    fn granted(&self) -> Result<()> {
        if !*self.bound.lock() {
            bail!(
                EINVAL,
                "device {}: the cdev file is not bound to an iommufd yet (VFIO_DEVICE_BIND_IOMMUFD)",
                self.dev.decl().addr
            );
        }
        Ok(())
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD`. From Linux 6.17 the struct is 24 bytes
    /// (`token_uuid_ptr`), read as `copy_struct_from_user` does (a longer
    /// `argsz` needs zero bytes past them: `E2BIG`), and
    /// `VFIO_DEVICE_BIND_FLAG_TOKEN` is known; these functions are neither
    /// SR-IOV PFs nor VFs, so a token is read (`EFAULT`) and refused
    /// (`EINVAL`), as `vfio_pci_core_match_token_uuid` refuses it. Before
    /// 6.17 only the first 16 bytes are read and `flags` must be 0.
    fn bind(&self, arg: u64, mem: &dyn UserMemory, fds: &dyn FdResolver) -> Result<i64> {
        use crate::uapi::level::UapiLevel;
        let minsz = 16;
        let argsz: u32 = read_prefix(mem, arg, 4, "BIND_IOMMUFD argsz")?;
        if (argsz as usize) < minsz {
            bail!(EINVAL, "BIND_IOMMUFD: argsz {argsz} < {minsz}");
        }
        // the level of the iommufd named (the process's when it names none)
        let mut b: VfioDeviceBindIommufd = read_prefix(mem, arg, minsz, "BIND_IOMMUFD")?;
        let level = (b.iommufd >= 0)
            .then(|| fds.context(b.iommufd))
            .flatten()
            .map_or_else(UapiLevel::from_env, |c| c.uapi_level());
        let token = level.at_least(UapiLevel::V6_17);
        let mut uuid_ptr = 0u64;
        if token {
            let full = 24;
            let mut raw = [0u8; 24];
            let n = (argsz as usize).min(full);
            mem.read(arg, &mut raw[..n])
                .map_err(|_| Error::fault("BIND_IOMMUFD"))?;
            crate::user::check_zero_tail(mem, arg, full as u64, u64::from(argsz), "BIND_IOMMUFD")?;
            b = VfioDeviceBindIommufd::read_from_prefix(&raw[..minsz])
                .map(|(v, _)| v)
                .map_err(|_| Error::fault("BIND_IOMMUFD"))?;
            uuid_ptr = u64::from_ne_bytes(raw[16..24].try_into().unwrap());
        }
        let valid = if token {
            VFIO_DEVICE_BIND_FLAG_TOKEN
        } else {
            0
        };
        if b.flags & !valid != 0 || b.iommufd < 0 {
            bail!(
                EINVAL,
                "BIND_IOMMUFD: unknown flags {:#x} or iommufd {} negative",
                b.flags & !valid,
                b.iommufd
            );
        }
        self.bind_with(
            || {
                if b.flags & VFIO_DEVICE_BIND_FLAG_TOKEN != 0 {
                    let mut uuid = [0u8; 16];
                    mem.read(uuid_ptr, &mut uuid)
                        .map_err(|_| Error::fault("BIND_IOMMUFD token_uuid_ptr"))?;
                    bail!(
                        EINVAL,
                        "BIND_IOMMUFD: a VF token was given, but the device is neither an SR-IOV PF nor a VF"
                    );
                }
                fds.context(b.iommufd)
                    .ok_or_else(|| not_an_iommufd(b.iommufd, "BIND_IOMMUFD"))
            },
            |id| {
                mem.write(arg + 12, &id.to_ne_bytes())
                    .map_err(|_| Error::fault("BIND_IOMMUFD out_devid"))
            },
        )?;
        Ok(0)
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD` from Rust: bind this cdev file to `ctx`
    /// (open the device on it). Returns the device's object ID in `ctx`.
    /// Errnos as the ioctl: `EINVAL` for a group's file or a file already
    /// bound or a device open elsewhere, `EBUSY` while its group is open.
    pub fn bind_context(&self, ctx: &Arc<Context>) -> Result<ObjId> {
        self.bind_with(|| Ok(ctx.clone()), |_| Ok(()))
    }

    /// The bind: `ctx` resolves the iommufd (after the group is blocked,
    /// as the kernel), `out` writes the device ID back (a failure closes
    /// the device again).
    fn bind_with(
        &self,
        ctx: impl FnOnce() -> Result<Arc<Context>>,
        out: impl FnOnce(ObjId) -> Result<()>,
    ) -> Result<ObjId> {
        if self.via == OpenedVia::Group {
            bail!(EINVAL, "BIND_IOMMUFD is for cdev files only");
        }
        self.dev.block_group()?;
        let mut bound = self.bound.lock();
        let r = (|| {
            if *bound {
                bail!(EINVAL, "BIND_IOMMUFD: this file is already bound");
            }
            let ctx = ctx()?;
            let id = self.dev.open_df(&ctx, OpenedVia::Cdev)?;
            if let Err(e) = out(id) {
                self.dev.close_df();
                return Err(e);
            }
            Ok(id)
        })();
        match r {
            Ok(id) => {
                *bound = true;
                Ok(id)
            }
            Err(e) => {
                drop(bound);
                self.dev.unblock_group();
                Err(e)
            }
        }
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` from Rust: attach (or replace the
    /// attachment) to the IOAS or HWPT `pt_id`; returns the HWPT ID the
    /// device now translates through.
    pub fn attach(&self, pt_id: ObjId) -> Result<ObjId> {
        self.granted()?;
        if self.via != OpenedVia::Cdev {
            bail!(ENOTTY, "ATTACH_IOMMUFD_PT is for cdev files only");
        }
        self.dev.attach_pt(pt_id)
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` with `VFIO_DEVICE_ATTACH_PASID` from
    /// Rust: attach (or replace) PASID `pasid` to the HWPT `pt_id`.
    pub fn attach_pasid(&self, pasid: u32, pt_id: ObjId) -> Result<ObjId> {
        self.granted()?;
        if self.via != OpenedVia::Cdev {
            bail!(ENOTTY, "ATTACH_IOMMUFD_PT is for cdev files only");
        }
        self.dev.attach_pasid_pt(pasid, pt_id)
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` with `VFIO_DEVICE_DETACH_PASID` from
    /// Rust (nothing when `pasid` was not attached that way).
    pub fn detach_pasid(&self, pasid: u32) -> Result<()> {
        self.granted()?;
        if self.via != OpenedVia::Cdev {
            bail!(ENOTTY, "DETACH_IOMMUFD_PT is for cdev files only");
        }
        self.dev.detach_pasid_pt(pasid);
        Ok(())
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` from Rust.
    pub fn detach(&self) -> Result<()> {
        self.granted()?;
        if self.via != OpenedVia::Cdev {
            bail!(ENOTTY, "DETACH_IOMMUFD_PT is for cdev files only");
        }
        self.dev.detach_pt();
        Ok(())
    }

    /// Whether the bound iommufd's level has the PASID flags of
    /// `VFIO_DEVICE_{ATTACH,DETACH}_IOMMUFD_PT` (Linux 6.15); below it the
    /// flag is an unknown one (`EINVAL`).
    fn pasid_flags_known(&self) -> bool {
        use crate::uapi::level::UapiLevel;
        self.dev
            .bound_level()
            .is_some_and(|l| l.at_least(UapiLevel::V6_15))
    }

    /// Copy in the argument of `VFIO_DEVICE_{ATTACH,DETACH}_IOMMUFD_PT`
    /// (`what`): its `minsz` bytes, then, when `flags` has `pasid_flag`
    /// (known from Linux 6.15, see [`Self::pasid_flags_known`]), its
    /// `xend` bytes. `EINVAL` for an `argsz` below either or an unknown
    /// flag. Returns the argument and whether it names a PASID.
    fn read_pt_arg<T: FromBytes + IntoBytes + Immutable>(
        &self,
        mem: &dyn UserMemory,
        arg: u64,
        what: &'static str,
        minsz: usize,
        xend: usize,
        pasid_flag: u32,
    ) -> Result<(T, bool)> {
        let v: T = read_prefix(mem, arg, minsz, what)?;
        // both layouts start with `argsz` and `flags`
        let (h, _) = VfioDeviceDetachIommufdPt::read_from_prefix(v.as_bytes())
            .expect("a PT argument starts with argsz and flags");
        if (h.argsz as usize) < minsz {
            bail!(EINVAL, "{what}: argsz {} < {minsz}", h.argsz);
        }
        let known = if self.pasid_flags_known() {
            pasid_flag
        } else {
            0
        };
        if h.flags & !known != 0 {
            bail!(EINVAL, "{what}: unknown flags {:#x}", h.flags & !known);
        }
        if h.flags & pasid_flag == 0 {
            return Ok((v, false));
        }
        if (h.argsz as usize) < xend {
            bail!(
                EINVAL,
                "{what}: argsz {} < {xend} with the PASID flag",
                h.argsz
            );
        }
        Ok((read_prefix(mem, arg, xend, what)?, true))
    }

    fn attach_pt(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        // a vfio-pci device has the op; the PASID itself is checked by the
        // engine (EINVAL for one the device does not have)
        let (a, pasid): (VfioDeviceAttachIommufdPtPasid, bool) = self.read_pt_arg(
            mem,
            arg,
            "ATTACH_IOMMUFD_PT",
            12,
            16,
            VFIO_DEVICE_ATTACH_PASID,
        )?;
        let id = if pasid {
            self.dev.attach_pasid_pt(a.pasid, a.pt_id)?
        } else {
            self.dev.attach_pt(a.pt_id)?
        };
        if mem.write(arg + 8, &id.to_ne_bytes()).is_err() {
            // The kernel undoes with detach_ioas, the RID's, even after a
            // PASID attach; here what was attached is what is undone.
            if pasid {
                self.dev.detach_pasid_pt(a.pasid);
            } else {
                self.dev.detach_pt();
            }
            return Err(Error::fault("ATTACH_IOMMUFD_PT pt_id"));
        }
        Ok(0)
    }

    fn detach_pt(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let (d, pasid): (VfioDeviceDetachIommufdPtPasid, bool) = self.read_pt_arg(
            mem,
            arg,
            "DETACH_IOMMUFD_PT",
            8,
            12,
            VFIO_DEVICE_DETACH_PASID,
        )?;
        if pasid {
            self.dev.detach_pasid_pt(d.pasid);
        } else {
            self.dev.detach_pt();
        }
        Ok(0)
    }

    fn feature(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 8;
        let f: VfioDeviceFeature = read_prefix(mem, arg, minsz, "DEVICE_FEATURE")?;
        if (f.argsz as usize) < minsz {
            bail!(EINVAL, "DEVICE_FEATURE: argsz {} < {minsz}", f.argsz);
        }
        let known = VFIO_DEVICE_FEATURE_MASK
            | VFIO_DEVICE_FEATURE_SET
            | VFIO_DEVICE_FEATURE_GET
            | VFIO_DEVICE_FEATURE_PROBE;
        if f.flags & !known != 0 {
            bail!(
                EINVAL,
                "DEVICE_FEATURE: unknown flags {:#x}",
                f.flags & !known
            );
        }
        if f.flags & VFIO_DEVICE_FEATURE_PROBE == 0
            && f.flags & VFIO_DEVICE_FEATURE_SET != 0
            && f.flags & VFIO_DEVICE_FEATURE_GET != 0
        {
            bail!(EINVAL, "DEVICE_FEATURE: GET and SET together without PROBE");
        }
        let feature = f.flags & VFIO_DEVICE_FEATURE_MASK;
        let argsz = f.argsz as usize - minsz;
        let new_fd = |file: Arc<dyn EngineFile>| crate::files::create_dyn(file, true);
        let close_fd = |fd: i32| {
            let _ = crate::files::close(fd);
        };
        let level = self.dev.bound_level().unwrap_or_default();
        if let Some(r) = crate::vfio::migration::feature::device_feature(
            level,
            self.dev.migration(),
            self.dev.dma_log(),
            feature,
            f.flags,
            arg + minsz as u64,
            argsz,
            mem,
            &new_fd,
            &close_fd,
        ) {
            return r;
        }
        if feature == VFIO_DEVICE_FEATURE_DMA_BUF
            && level.at_least(crate::uapi::level::UapiLevel::V6_19)
        {
            return self.feature_dma_buf(f.flags, arg + minsz as u64, argsz, mem);
        }
        bail!(
            ENOTTY,
            "DEVICE_FEATURE: feature {feature} is not supported by this device"
        )
    }

    /// `VFIO_DEVICE_FEATURE_DMA_BUF` (6.19, GET): a dma-buf fd of ranges of
    /// a BAR, returned as the ioctl's value. The ranges are read whatever
    /// `argsz` says, as the kernel's `memdup_array_user`, and no more of
    /// them than the kernel's largest allocation holds (4 MiB: `ENOMEM`).
    fn feature_dma_buf(
        &self,
        flags: u32,
        data: u64,
        argsz: usize,
        mem: &dyn UserMemory,
    ) -> Result<i64> {
        use crate::vfio::migration::feature::{check_feature, FEATURE_GET};
        if !check_feature(flags, argsz, FEATURE_GET, 16)? {
            return Ok(0);
        }
        let d: VfioDeviceFeatureDmaBuf = read_prefix(mem, data, 16, "DMA_BUF")?;
        if d.nr_ranges == 0 || d.flags != 0 {
            bail!(
                EINVAL,
                "DMA_BUF: nr_ranges {} must be non-zero and flags {:#x} zero",
                d.nr_ranges,
                d.flags
            );
        }
        if d.region_index >= VFIO_PCI_ROM_REGION_INDEX {
            bail!(ENODEV, "DMA_BUF: region {} is not a BAR", d.region_index);
        }
        const MAX_RANGES: u32 = (4 << 20) / 16;
        if d.nr_ranges > MAX_RANGES {
            bail!(
                ENOMEM,
                "DMA_BUF: {} ranges are more than the {MAX_RANGES} the kernel can copy in",
                d.nr_ranges
            );
        }
        let mut ranges = Vec::with_capacity(d.nr_ranges.min(256) as usize);
        let mut chunk = [0u8; 256 * 16];
        let mut left = d.nr_ranges as usize;
        let mut at = data + 16;
        while left > 0 {
            let n = left.min(256);
            mem.read(at, &mut chunk[..n * 16])
                .map_err(|_| Error::fault("DMA_BUF dma_ranges"))?;
            for r in chunk[..n * 16].chunks_exact(16) {
                let off = u64::from_ne_bytes(r[0..8].try_into().unwrap());
                let len = u64::from_ne_bytes(r[8..16].try_into().unwrap());
                ranges.push((off, len));
            }
            left -= n;
            at += (n * 16) as u64;
        }
        let page = crate::user::page_size();
        let mut total = 0u64;
        for &(off, len) in &ranges {
            if len == 0 || !off.is_multiple_of(page) || !len.is_multiple_of(page) {
                bail!(
                    EINVAL,
                    "DMA_BUF: range {off:#x}+{len:#x} is empty or not page aligned"
                );
            }
            total = total
                .checked_add(len)
                .ok_or_else(|| Error::new(libc::EINVAL, "DMA_BUF: the ranges' lengths overflow"))?;
        }
        let buf = self.dev.export_dmabuf(d.region_index, &ranges)?;
        let fd = crate::dmabuf::export_fd(buf, d.open_flags & libc::O_CLOEXEC as u32 != 0)?;
        Ok(i64::from(fd))
    }

    /// `VFIO_DEVICE_IOEVENTFD` (`vfio_pci_ioctl_ioeventfd`): `argsz` up to
    /// `fd`, one size flag and nothing else, `fd` of at least -1 (`EINVAL`);
    /// then the device's rules.
    fn ioeventfd(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 28;
        let e: VfioDeviceIoeventfd = read_prefix(mem, arg, minsz, "DEVICE_IOEVENTFD")?;
        if (e.argsz as usize) < minsz {
            bail!(EINVAL, "DEVICE_IOEVENTFD: argsz {} < {minsz}", e.argsz);
        }
        if e.flags & !VFIO_DEVICE_IOEVENTFD_SIZE_MASK != 0 {
            bail!(EINVAL, "DEVICE_IOEVENTFD: unknown flags {:#x}", e.flags);
        }
        let count = e.flags & VFIO_DEVICE_IOEVENTFD_SIZE_MASK;
        if count.count_ones() != 1 || e.fd < -1 {
            bail!(
                EINVAL,
                "DEVICE_IOEVENTFD: size flags {count:#x} must name one size, fd {} be -1 or more",
                e.fd
            );
        }
        self.dev.ioeventfd(e.offset, e.data, count as u8, e.fd)?;
        Ok(0)
    }

    fn get_info(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 16;
        let mut info: VfioDeviceInfo = read_prefix(mem, arg, minsz, "DEVICE_GET_INFO")?;
        if (info.argsz as usize) < minsz {
            bail!(EINVAL, "DEVICE_GET_INFO: argsz {} < {minsz}", info.argsz);
        }
        let n = (info.argsz as usize).min(std::mem::size_of::<VfioDeviceInfo>());
        info.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
        info.num_regions = VFIO_PCI_NUM_REGIONS + 1;
        info.num_irqs = VFIO_PCI_NUM_IRQS;
        // no capability: no zPCI, and AtomicOps are PCI Express only
        info.cap_offset = 0;
        info.pad = 0;
        write_prefix(mem, arg, &info, n, "DEVICE_GET_INFO")?;
        Ok(0)
    }

    fn region_info(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 32;
        let mut info: VfioRegionInfo = read_prefix(mem, arg, minsz, "GET_REGION_INFO")?;
        if (info.argsz as usize) < minsz {
            bail!(EINVAL, "GET_REGION_INFO: argsz {} < {minsz}", info.argsz);
        }
        let mut cap: Option<VfioInfoCapHeader> = None;
        // A longer capability chain (the migration region's), as bytes.
        let mut chain: Vec<u8> = Vec::new();
        let index = info.index;
        match index {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                info.offset = (index as u64) << VFIO_PCI_OFFSET_SHIFT;
                info.size = crate::vfio::pci_config::CONFIG_SIZE as u64;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            }
            VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX => {
                info.offset = (index as u64) << VFIO_PCI_OFFSET_SHIFT;
                info.size = self.dev.bar_size(index);
                info.flags = 0;
                if info.size != 0 {
                    info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                    let bar = self.dev.layout().bars[index as usize].expect("size > 0");
                    if bar.mmap {
                        info.flags |= VFIO_REGION_INFO_FLAG_MMAP;
                        if self
                            .dev
                            .layout()
                            .msix
                            .is_some_and(|m| m.table_bar as u32 == index)
                        {
                            cap = Some(VfioInfoCapHeader {
                                id: VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
                                version: 1,
                                next: 0,
                            });
                        }
                    }
                }
            }
            VFIO_PCI_ROM_REGION_INDEX => {
                info.offset = (index as u64) << VFIO_PCI_OFFSET_SHIFT;
                info.flags = 0;
                info.size = 0;
            }
            VFIO_PCI_VGA_REGION_INDEX => {
                bail!(EINVAL, "GET_REGION_INFO: the device has no VGA region")
            }
            VFIO_PCI_MIGRATION_REGION_INDEX => {
                use crate::vfio::migration::v1;
                info.offset = (index as u64) << VFIO_PCI_OFFSET_SHIFT;
                info.size = v1::REGION_SIZE;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                // struct vfio_region_info_cap_type {header; type; subtype},
                // then the seed's NDMA capability (a bare header), each
                // `next` an offset from the start of the info.
                let base = minsz as u32;
                chain.extend_from_slice(&VFIO_REGION_INFO_CAP_TYPE.to_le_bytes());
                chain.extend_from_slice(&1u16.to_le_bytes());
                chain.extend_from_slice(&(base + 16).to_le_bytes());
                chain.extend_from_slice(&v1::REGION_TYPE.to_le_bytes());
                chain.extend_from_slice(&v1::REGION_SUBTYPE.to_le_bytes());
                chain.extend_from_slice(&v1::CAP_MIG_NDMA.to_le_bytes());
                chain.extend_from_slice(&1u16.to_le_bytes());
                chain.extend_from_slice(&0u32.to_le_bytes());
            }
            _ => bail!(EINVAL, "GET_REGION_INFO: region {index} does not exist"),
        }
        if let Some(c) = cap.take() {
            chain.extend_from_slice(c.as_bytes());
        }
        info.cap_offset = 0;
        if !chain.is_empty() {
            let need = minsz + chain.len();
            info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
            if (info.argsz as usize) < need {
                info.argsz = need as u32;
            } else {
                mem.write(arg + minsz as u64, &chain)
                    .map_err(|_| Error::fault("GET_REGION_INFO caps"))?;
                info.cap_offset = minsz as u32;
            }
        }
        write_prefix(mem, arg, &info, minsz, "GET_REGION_INFO")?;
        Ok(0)
    }

    fn irq_info(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 16;
        let mut info: VfioIrqInfo = read_prefix(mem, arg, minsz, "GET_IRQ_INFO")?;
        if (info.argsz as usize) < minsz || info.index >= VFIO_PCI_NUM_IRQS {
            bail!(
                EINVAL,
                "GET_IRQ_INFO: argsz {} < {minsz} or index {} >= {VFIO_PCI_NUM_IRQS}",
                info.argsz,
                info.index
            );
        }
        if info.index == VFIO_PCI_ERR_IRQ_INDEX {
            bail!(EINVAL, "GET_IRQ_INFO: the ERR IRQ is PCI Express only");
        }
        info.flags = VFIO_IRQ_INFO_EVENTFD;
        info.count = self.dev.irq_count(info.index);
        if info.index == VFIO_PCI_INTX_IRQ_INDEX {
            info.flags |= VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
        } else if info.index != VFIO_PCI_MSIX_IRQ_INDEX {
            // MSI-X vectors are allocated dynamically (has_dyn_msix)
            info.flags |= VFIO_IRQ_INFO_NORESIZE;
        }
        write_prefix(mem, arg, &info, minsz, "GET_IRQ_INFO")?;
        Ok(0)
    }

    fn set_irqs(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 20u32;
        let hdr: VfioIrqSet = read_prefix(mem, arg, minsz as usize, "SET_IRQS")?;
        let max = self.dev.irq_count(hdr.index);
        // vfio_set_irqs_validate_and_prepare
        if hdr.argsz < minsz
            || hdr.index >= VFIO_PCI_NUM_IRQS
            || hdr.count >= u32::MAX - hdr.start
            || hdr.flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
        {
            bail!(
                EINVAL,
                "SET_IRQS: argsz {}, index {}, start {} + count {} or flags {:#x} invalid",
                hdr.argsz,
                hdr.index,
                hdr.start,
                hdr.count,
                hdr.flags
            );
        }
        if hdr.start >= max || hdr.start + hdr.count > max {
            bail!(
                EINVAL,
                "SET_IRQS: vectors [{}, +{}) out of the {max} of IRQ index {}",
                hdr.start,
                hdr.count,
                hdr.index
            );
        }
        let size: u64 = match hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE => 0,
            VFIO_IRQ_SET_DATA_BOOL => 1,
            VFIO_IRQ_SET_DATA_EVENTFD => 4,
            t => bail!(EINVAL, "SET_IRQS: data type {t:#x} is not exactly one type"),
        };
        let data_size = size * hdr.count as u64;
        if size != 0 && ((hdr.argsz - minsz) as u64) < data_size {
            bail!(
                EINVAL,
                "SET_IRQS: argsz {} leaves no room for {} elements of {size} bytes",
                hdr.argsz,
                hdr.count
            );
        }
        // bounded by the IRQ count (at most 2048 vectors of 4 bytes)
        let mut data = vec![0u8; data_size as usize];
        mem.read(arg + minsz as u64, &mut data)
            .map_err(|_| Error::fault("SET_IRQS data"))?;
        self.dev
            .set_irqs(hdr.flags, hdr.index, hdr.start, hdr.count, &data)?;
        Ok(0)
    }

    fn hot_reset_info(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 12;
        let h: VfioPciHotResetInfo = read_prefix(mem, arg, minsz, "GET_PCI_HOT_RESET_INFO")?;
        if (h.argsz as usize) < minsz {
            bail!(
                EINVAL,
                "GET_PCI_HOT_RESET_INFO: argsz {} < {minsz}",
                h.argsz
            );
        }
        bail!(
            ENODEV,
            "GET_PCI_HOT_RESET_INFO: device {} has neither a slot nor a bus reset",
            self.dev.decl().addr
        )
    }

    fn hot_reset(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 12;
        let h: VfioPciHotReset = read_prefix(mem, arg, minsz, "PCI_HOT_RESET")?;
        if (h.argsz as usize) < minsz || h.flags != 0 {
            bail!(
                EINVAL,
                "PCI_HOT_RESET: argsz {} < {minsz} or flags {:#x}",
                h.argsz,
                h.flags
            );
        }
        // a cdev user passes no group fds, a group user at least one
        if (h.count != 0) == (self.via == OpenedVia::Cdev) {
            bail!(
                EINVAL,
                "PCI_HOT_RESET: count {} for a {} file",
                h.count,
                if self.via == OpenedVia::Cdev {
                    "cdev"
                } else {
                    "group"
                }
            );
        }
        bail!(
            ENODEV,
            "PCI_HOT_RESET: device {} has neither a slot nor a bus reset",
            self.dev.decl().addr
        )
    }
}

impl EngineFile for DeviceFile {
    fn kind(&self) -> &'static str {
        "vfio-device"
    }

    fn positional(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, _nonblock: bool) -> Result<usize> {
        self.granted()?;
        self.dev.region_read(offset, buf)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        self.granted()?;
        self.dev.region_write(offset, buf)
    }

    fn mmap(&self, offset: u64, len: u64, _write: bool) -> Result<MmapTarget> {
        self.granted()?;
        self.dev.mmap(offset, len)
    }

    fn stat_as(&self) -> Option<StatAs> {
        match self.via {
            OpenedVia::Cdev => Some(StatAs {
                mode: libc::S_IFCHR | 0o600,
                rdev: libc::makedev(VFIO_CDEV_MAJOR, self.dev.decl().cdev),
            }),
            // an anon-inode file ("[vfio-device]")
            OpenedVia::Group => None,
        }
    }

    fn release(&self) {
        let mut bound = self.bound.lock();
        if *bound {
            *bound = false;
            self.dev.close_df();
            if self.via == OpenedVia::Cdev {
                self.dev.unblock_group();
            }
        }
    }

    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn UserMemory, fds: &dyn FdResolver) -> Result<i64> {
        if cmd == VFIO_DEVICE_BIND_IOMMUFD {
            return self.bind(arg, mem, fds);
        }
        self.granted()?;
        if self.via == OpenedVia::Cdev {
            match cmd {
                VFIO_DEVICE_ATTACH_IOMMUFD_PT => return self.attach_pt(arg, mem),
                VFIO_DEVICE_DETACH_IOMMUFD_PT => return self.detach_pt(arg, mem),
                _ => {}
            }
        }
        match cmd {
            VFIO_DEVICE_FEATURE => self.feature(arg, mem),
            VFIO_DEVICE_GET_INFO => self.get_info(arg, mem),
            VFIO_DEVICE_GET_REGION_INFO => self.region_info(arg, mem),
            VFIO_DEVICE_GET_IRQ_INFO => self.irq_info(arg, mem),
            VFIO_DEVICE_SET_IRQS => self.set_irqs(arg, mem),
            VFIO_DEVICE_IOEVENTFD => self.ioeventfd(arg, mem),
            VFIO_DEVICE_RESET => {
                self.dev.reset();
                Ok(0)
            }
            VFIO_DEVICE_GET_PCI_HOT_RESET_INFO => self.hot_reset_info(arg, mem),
            VFIO_DEVICE_PCI_HOT_RESET => self.hot_reset(arg, mem),
            _ => bail!(ENOTTY, "VFIO device: ioctl {cmd:#x} is not served"),
        }
    }
}
