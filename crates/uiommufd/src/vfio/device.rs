//! One emulated VFIO device: the kernel's `struct vfio_device` with its
//! `vfio_pci_core_device` state — who has it open, the iommufd binding,
//! the config space, the IRQ eventfds, the MSI-X table — and the [`Bus`]
//! its model does DMA and raises interrupts through.
//!
//! # Opening
//!
//! As in the kernel, a device is opened either through its group
//! (`VFIO_GROUP_GET_DEVICE_FD`, any number of times while the group's
//! container is set) or through its cdev (`VFIO_DEVICE_BIND_IOMMUFD`, once):
//! an open group makes a cdev bind `EBUSY`, a bound cdev makes a group open
//! `EBUSY`, and a second cdev bind while the device is open is `EINVAL`.
//! The first open binds an engine [`Device`] (driven by [`VtdDriver`]) to
//! the iommufd context and connects the model; a group open also attaches
//! it to the context's compat IOAS (the kernel's
//! `vfio_iommufd_compat_attach_ioas`), so type1 maps made before the device
//! fd existed are already in its domain. The last close stops the IRQs,
//! resets the model, puts the config space back to its power-on values,
//! unbinds and disconnects.
//!
//! # DMA
//!
//! Through the domain of the HWPT the engine device is attached to
//! ([`Device::dma_domain`]: for a VT-d first-stage nested HWPT, both
//! stages; [`crate::domain::Domain::dma_read`]/`dma_write`), only while bus
//! mastering is on: otherwise, or when not attached, [`DmaFault::Blocked`].
//! Every fault is logged and counted ([`VfioDevice::dma_faults`]); when the
//! attached HWPT has a fault queue it is also reported there as a page
//! request ([`Device::report_fault`]), without waiting for the answer.
//!
//! # Interrupts
//!
//! [`Bus::interrupt`] signals the eventfd of `SET_IRQS`: the MSI-X or MSI
//! vector's when one of those is enabled, else INTx. INTx auto-masks as
//! vfio-pci's does (signal, then masked until `ACTION_UNMASK`); an INTx
//! raised while masked stays pending and fires at the unmask (the model's
//! interrupts are edges, a real INTx is a level that would still be
//! asserted); `ACTION_UNMASK` with an eventfd starts a thread that unmasks
//! each time that eventfd is signalled (the kernel's virqfd, QEMU's KVM
//! resample path). The REQ eventfd is independent of the interrupt type.
//! INTx is not delivered while COMMAND's INTx-disable bit is
//! set. MSI/MSI-X delivery does not look at the MSI-X table's mask bits:
//! as with vfio-pci, the user's table is a copy the host does not program
//! from (QEMU emulates the guest's table itself).

use std::collections::HashMap;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::context::{Context, ObjId};
use crate::device::Device;
use crate::domain::{DmaFault, Domain};
use crate::fault::PageFault;
use crate::files::{eventfd_read, eventfd_write, identity};
use crate::uapi::{IOMMU_PGFAULT_PERM_READ, IOMMU_PGFAULT_PERM_WRITE};
use crate::vfio::model::{Bus, PciLayout, PciModel};
use crate::vfio::pci_config::{PciConfig, CONFIG_SIZE, PCI_STATUS, PCI_STATUS_INTERRUPT};
use crate::vfio::registry::{DeviceDecl, Registered};
use crate::vfio::uapi::*;
use crate::vtd::VtdDriver;
use crate::{bail, Result};

/// An eventfd the device signals: its own duplicate of the fd the user
/// gave (the kernel holds an `eventfd_ctx` reference the same way), closed
/// when dropped.
///
/// The duplicate is a plain fd number in the program's table, so a program
/// that closes numbers it does not own (`close_range` before `exec`) can
/// close it behind our back and reuse the number for another file. Each
/// signal therefore first checks with `fstat` that the number still is the
/// anon inode it was (every eventfd shares one, so at worst another anon
/// file gets a write it refuses), and never writes 8 bytes into a regular
/// file, pipe or socket that took the number.
#[derive(Debug)]
pub struct EventFd {
    fd: i32,
    dev: u64,
    ino: u64,
}

/// Whether the open fd `fd` is an eventfd. The link `/proc/self/fd/N` of
/// an eventfd reads `anon_inode:[eventfd]` (read with a raw `readlinkat`,
/// past any interposition). Without `/proc` (a chroot that did not mount
/// it): the fd must be the anon inode every eventfd shares (compared with
/// one made for the purpose) and take a write of a zero counter increment,
/// which changes nothing in an eventfd and which the other anon-inode
/// files (epoll, timerfd, signalfd, ...) refuse.
pub fn is_eventfd(fd: i32) -> bool {
    match crate::user::fd_link(fd, &mut [0u8; 64]) {
        Some(target) => target == b"anon_inode:[eventfd]",
        None => is_eventfd_without_proc(fd),
    }
}

/// [`is_eventfd`] without `/proc`.
pub fn is_eventfd_without_proc(fd: i32) -> bool {
    static ANON: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    let anon = *ANON.get_or_init(|| {
        let probe = crate::user::private_fd(|| {
            // SAFETY: eventfd2 with flags only; no memory is touched.
            unsafe { libc::syscall(libc::SYS_eventfd2, 0, libc::EFD_CLOEXEC) as i32 }
        })
        .ok()?
        .into_raw_fd();
        let id = identity(probe);
        // SAFETY: closes the probe made above.
        unsafe { libc::syscall(libc::SYS_close, probe) };
        id
    });
    if anon.is_none() || identity(fd) != anon {
        return false;
    }
    // adding 0 to an eventfd's counter changes nothing and never blocks
    eventfd_write(fd, 0)
}

impl EventFd {
    /// Take a reference to the user's eventfd `fd` (`eventfd_ctx_fdget`):
    /// `EBADF` when `fd` is not open, `EINVAL` when it is not an eventfd.
    ///
    /// How an eventfd is recognised: see [`is_eventfd`]. Engine files are
    /// eventfds underneath but not the user's: an fd the engine registry
    /// knows is `EINVAL` too.
    pub fn from_user(fd: i32) -> Result<EventFd> {
        if fd < 0 {
            bail!(EBADF, "eventfd {fd} is negative");
        }
        // SAFETY: F_GETFD on a number: no memory is touched.
        let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
        if r < 0 {
            bail!(EBADF, "eventfd {fd} is not an open file descriptor");
        }
        if !is_eventfd(fd) {
            bail!(EINVAL, "fd {fd} is not an eventfd");
        }
        if crate::files::get(fd).is_some() {
            bail!(
                EINVAL,
                "fd {fd} is an iommufd/VFIO engine file, not an eventfd"
            );
        }
        // a private fd of ours, out of the program's way (closed by raw
        // system call when dropped)
        let Ok(dup) = crate::user::dup_private(fd) else {
            bail!(EMFILE, "cannot take a reference to eventfd {fd}");
        };
        let dup = dup.into_raw_fd();
        let Some((dev, ino)) = identity(dup) else {
            // SAFETY: closes the duplicate just made.
            unsafe { libc::syscall(libc::SYS_close, dup) };
            bail!(EBADF, "eventfd {fd} went away");
        };
        Ok(EventFd { fd: dup, dev, ino })
    }

    /// Add 1 to the counter (`eventfd_signal`), with a raw `write` so that
    /// no interposed `write` sees it.
    pub fn signal(&self) {
        if identity(self.fd) != Some((self.dev, self.ino)) {
            tracing::warn!(
                fd = self.fd,
                "an IRQ eventfd reference was closed behind the engine's back: not signalled"
            );
            return;
        }
        if !eventfd_write(self.fd, 1) {
            tracing::debug!(fd = self.fd, "signalling an IRQ eventfd failed");
        }
    }
}

impl EventFd {
    /// Read (reset) the counter, after the same identity check as
    /// [`EventFd::signal`]; `false` when the reference is gone.
    fn consume(&self) -> bool {
        if identity(self.fd) != Some((self.dev, self.ino)) {
            return false;
        }
        eventfd_read(self.fd).is_some()
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // a number closed and reused behind our back is not ours to close
        if identity(self.fd) == Some((self.dev, self.ino)) {
            // SAFETY: closes the duplicate this object owns.
            unsafe { libc::syscall(libc::SYS_close, self.fd) };
        }
    }
}

/// Which interrupt type is enabled (`vdev->irq_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IrqType {
    /// None.
    #[default]
    None,
    /// INTx.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
}

#[derive(Debug, Default)]
struct Irqs {
    ty: IrqType,
    /// Vectors allocated (MSI: fixed at enable; MSI-X grows on demand).
    allocated: u32,
    /// Per-vector triggers (INTx: one).
    triggers: Vec<Option<EventFd>>,
    intx_masked: bool,
    intx_pending: bool,
    /// INTx unmask by eventfd (`vfio_virqfd_enable`).
    unmask: Option<Virqfd>,
    req: Option<EventFd>,
}

impl Irqs {
    /// Take the interrupt type's state (everything but the REQ trigger,
    /// which is independent of it), leaving no type enabled. The caller
    /// drops what it got after releasing the lock: a [`Virqfd`] joins its
    /// thread, which may be waiting for that lock.
    fn take_type(&mut self) -> Irqs {
        let req = self.req.take();
        let old = std::mem::take(self);
        self.req = req;
        old
    }
}

/// The kernel's virqfd for `ACTION_UNMASK` with an eventfd: a thread that
/// waits for the user's eventfd (QEMU's KVM resample notifier) and unmasks
/// INTx each time it is signalled. Dropping it stops and joins the thread.
#[derive(Debug)]
struct Virqfd {
    stop: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Virqfd {
    fn start(efd: EventFd, bus: Weak<DeviceBus>) -> Result<Virqfd> {
        let stop = crate::user::private_fd(|| {
            // SAFETY: eventfd2 with flags only; no memory is touched.
            unsafe {
                libc::syscall(
                    libc::SYS_eventfd2,
                    0,
                    libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
                ) as i32
            }
        });
        let Ok(stop) = stop else {
            bail!(EMFILE, "virqfd: no eventfd for its stop signal");
        };
        let stop = stop.into_raw_fd();
        let thread = std::thread::Builder::new()
            .name("vfio-virqfd".into())
            .spawn(move || virqfd_loop(efd, stop, bus));
        match thread {
            Ok(t) => Ok(Virqfd {
                stop,
                thread: Some(t),
            }),
            Err(e) => {
                // SAFETY: closes the eventfd made above.
                unsafe { libc::syscall(libc::SYS_close, stop) };
                bail!(EAGAIN, "virqfd: cannot start its thread: {e}")
            }
        }
    }
}

impl Drop for Virqfd {
    fn drop(&mut self) {
        eventfd_write(self.stop, 1);
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        // SAFETY: closes our own eventfd; the thread is gone.
        unsafe { libc::syscall(libc::SYS_close, self.stop) };
    }
}

fn virqfd_loop(efd: EventFd, stop: i32, bus: Weak<DeviceBus>) {
    loop {
        let mut pfd = [
            libc::pollfd {
                fd: efd.fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two live pollfds, no timeout, no signal mask; the raw
        // syscall bypasses any interposed poll.
        let n = unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                pfd.as_mut_ptr(),
                2 as libc::nfds_t,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if pfd[1].revents != 0
            || pfd[0].revents & (libc::POLLNVAL | libc::POLLERR | libc::POLLHUP) != 0
        {
            break;
        }
        if pfd[0].revents & libc::POLLIN != 0 {
            if !efd.consume() {
                break;
            }
            match bus.upgrade() {
                Some(b) => b.unmask_intx(),
                None => break,
            }
        }
    }
}

/// The bus side of a device: what its model's DMA and interrupts go
/// through.
#[derive(Debug)]
pub struct DeviceBus {
    addr: String,
    engine: RwLock<Option<Arc<Device>>>,
    master: AtomicBool,
    intx_disable: AtomicBool,
    intx_asserted: AtomicBool,
    irqs: Mutex<Irqs>,
    faults: AtomicU64,
    /// Not stopped for migration: DMA and interrupts allowed.
    running: AtomicBool,
    /// The device's own log of the pages its DMA wrote.
    log: crate::vfio::migration::dma_log::DmaLog,
}

impl DeviceBus {
    fn domain(
        &self,
        pasid: u32,
        iova: u64,
    ) -> std::result::Result<(Arc<Device>, Arc<dyn Domain>), DmaFault> {
        if !self.master.load(Ordering::Acquire) || !self.running.load(Ordering::Acquire) {
            return Err(DmaFault::Blocked { iova });
        }
        let dev = self
            .engine
            .read()
            .clone()
            .ok_or(DmaFault::Blocked { iova })?;
        // a nested HWPT's two-stage domain, or a paging HWPT's; for a
        // PASID, that of what the PASID is attached to
        let d = dev
            .pasid_dma_domain(pasid)
            .ok_or(DmaFault::Blocked { iova })?;
        Ok((dev, d))
    }

    /// One DMA request of PASID `pasid` at `iova`: `op` on the domain the
    /// PASID is attached to, made again when custody moved the pages
    /// meanwhile; a fault is reported ([`DeviceBus::fault`]). `written` is
    /// the bytes a write or atomic writes from `iova` (`None`: a read).
    ///
    /// Written bytes are logged after the write landed (a report between
    /// the two is followed by another that sees it), and also when it
    /// failed part way: over-reporting loses nothing. The device's DMA log
    /// covers requests without PASID only (the kernel's logging is per RID
    /// address space, the IOVA of the device's own domain).
    #[inline]
    fn request<T>(
        &self,
        pasid: u32,
        iova: u64,
        written: Option<u64>,
        mut op: impl FnMut(&dyn Domain) -> std::result::Result<T, DmaFault>,
    ) -> std::result::Result<T, DmaFault> {
        let write = written.is_some();
        let (dev, d) = self
            .domain(pasid, iova)
            .map_err(|f| self.fault(None, pasid, f, write))?;
        let r = crate::custody::dma(|| op(d.as_ref()));
        if let (Some(len), 0) = (written, pasid) {
            self.log.record(iova, len);
        }
        r.map_err(|f| self.fault(Some(&dev), pasid, f, write))
    }

    fn fault(&self, dev: Option<&Device>, pasid: u32, f: DmaFault, write: bool) -> DmaFault {
        self.faults.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device = %self.addr, pasid, "DMA {}: {f}", if write { "write" } else { "read" });
        if let Some(dev) = dev {
            if dev.attached().is_some_and(|h| h.fault().is_some()) || pasid != 0 {
                let iova = match f {
                    DmaFault::NotPresent { iova }
                    | DmaFault::Permission { iova, .. }
                    | DmaFault::Host { iova }
                    | DmaFault::Blocked { iova } => iova,
                };
                let _ = dev.report_fault(PageFault {
                    pasid_valid: pasid != 0,
                    last_page: true,
                    pasid,
                    grpid: 0,
                    perm: if write {
                        IOMMU_PGFAULT_PERM_WRITE
                    } else {
                        IOMMU_PGFAULT_PERM_READ
                    },
                    addr: iova & !0xfff,
                    length: 0,
                });
            }
        }
        f
    }

    /// Unmask INTx (`__vfio_pci_intx_unmask`): an interrupt raised while
    /// masked fires now.
    fn unmask_intx(&self) {
        let mut irqs = self.irqs.lock();
        if irqs.ty != IrqType::Intx {
            return;
        }
        irqs.intx_masked = false;
        self.intx_asserted.store(false, Ordering::Release);
        if irqs.intx_pending && !self.intx_disable.load(Ordering::Acquire) {
            self.intx_fire(&mut irqs);
        }
    }

    fn intx_fire(&self, irqs: &mut Irqs) {
        irqs.intx_masked = true;
        irqs.intx_pending = false;
        self.intx_asserted.store(true, Ordering::Release);
        if let Some(Some(t)) = irqs.triggers.first() {
            t.signal();
        }
    }
}

impl Bus for DeviceBus {
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), DmaFault> {
        self.dma_read_pasid(0, iova, buf)
    }

    fn dma_write(&self, iova: u64, buf: &[u8]) -> std::result::Result<(), DmaFault> {
        self.dma_write_pasid(0, iova, buf)
    }

    fn dma_read_pasid(
        &self,
        pasid: u32,
        iova: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), DmaFault> {
        if buf.is_empty() {
            return Ok(()); // no transaction
        }
        self.request(pasid, iova, None, |d| d.dma_read(iova, buf))
    }

    fn dma_write_pasid(
        &self,
        pasid: u32,
        iova: u64,
        buf: &[u8],
    ) -> std::result::Result<(), DmaFault> {
        if buf.is_empty() {
            return Ok(()); // no transaction
        }
        let len = buf.len() as u64;
        self.request(pasid, iova, Some(len), |d| d.dma_write(iova, buf))
    }

    fn dma_atomic(
        &self,
        pasid: u32,
        iova: u64,
        op: crate::domain::AtomicOp,
    ) -> std::result::Result<u64, DmaFault> {
        self.request(pasid, iova, Some(8), |d| d.dma_atomic(iova, op))
    }

    fn interrupt(&self, vector: u16) {
        if !self.running.load(Ordering::Acquire) {
            tracing::debug!(device = %self.addr, vector, "interrupt while stopped for migration: dropped");
            return;
        }
        let mut irqs = self.irqs.lock();
        match irqs.ty {
            IrqType::Msi | IrqType::Msix => match irqs.triggers.get(vector as usize) {
                Some(Some(t)) => t.signal(),
                _ => {
                    tracing::debug!(device = %self.addr, vector, "interrupt on a vector with no eventfd: dropped")
                }
            },
            IrqType::Intx => {
                if self.intx_disable.load(Ordering::Acquire) {
                    tracing::debug!(device = %self.addr, "INTx disabled in COMMAND: dropped");
                } else if irqs.intx_masked {
                    irqs.intx_pending = true;
                } else {
                    self.intx_fire(&mut irqs);
                }
            }
            IrqType::None => {
                tracing::debug!(device = %self.addr, vector, "interrupt with no IRQ set up: dropped")
            }
        }
    }
}

/// How a device file was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedVia {
    /// `VFIO_GROUP_GET_DEVICE_FD`.
    Group,
    /// The cdev, after `VFIO_DEVICE_BIND_IOMMUFD`.
    Cdev,
}

#[derive(Debug)]
struct Binding {
    ctx: Arc<Context>,
    dev: Arc<Device>,
    /// The PASIDs attached through `VFIO_DEVICE_ATTACH_PASID` (the kernel's
    /// `vfio_device::pasids` IDA): one in it is replaced by a second
    /// attach, detached by `VFIO_DEVICE_DETACH_PASID`. PASID 0 is
    /// `IOMMU_NO_PASID`, so attaching it through this path attaches the RID.
    pasids: std::collections::BTreeSet<u32>,
}

#[derive(Debug, Default)]
struct OpenState {
    group_open: bool,
    /// Cdev files bound (`cdev_device_open_cnt`).
    cdev_bound: u32,
    /// Device files open (`open_count`).
    open_count: u32,
    binding: Option<Binding>,
}

/// One declared device as VFIO sees it.
#[derive(Debug)]
pub struct VfioDevice {
    decl: DeviceDecl,
    model: Arc<dyn PciModel>,
    layout: PciLayout,
    bus: Arc<DeviceBus>,
    config: Mutex<PciConfig>,
    msix_table: Mutex<Vec<u8>>,
    state: Mutex<OpenState>,
    migration: crate::vfio::migration::Migration,
    /// dma-bufs exported from BARs (`VFIO_DEVICE_FEATURE_DMA_BUF`), revoked
    /// while memory decode is off, during a reset and for good once the
    /// device's last file closes (`vdev->dmabufs`).
    dmabufs: Mutex<Vec<Weak<crate::dmabuf::DmaBuf>>>,
    /// `VFIO_DEVICE_IOEVENTFD` registrations, ended by the last close.
    ioeventfds: crate::vfio::ioeventfd::IoEventFds,
}

static DEVICES: Mutex<Option<HashMap<u32, Weak<VfioDevice>>>> = Mutex::new(None);

/// The VFIO device of a registered device, made on first use and shared
/// while anything uses it.
pub fn get(reg: &Registered) -> Arc<VfioDevice> {
    let mut t = DEVICES.lock();
    let t = t.get_or_insert_with(HashMap::new);
    if let Some(d) = t.get(&reg.decl.index).and_then(Weak::upgrade) {
        return d;
    }
    let d = Arc::new(VfioDevice::new(reg));
    t.insert(reg.decl.index, Arc::downgrade(&d));
    d
}

/// Vector count of a layout's MSI capability (a power of two), 0 without.
fn msi_count(layout: &PciLayout) -> u32 {
    if layout.msi_vectors == 0 {
        0
    } else {
        (layout.msi_vectors as u32).next_power_of_two().min(32)
    }
}

impl VfioDevice {
    fn new(reg: &Registered) -> VfioDevice {
        let layout = reg.model.layout();
        let config = PciConfig::new(&layout);
        let table = layout.msix.map_or(0, |m| m.vectors.min(2048) as usize * 16);
        let mut msix_table = vec![0u8; table];
        // vector control: masked at power-on
        for v in msix_table.chunks_mut(16) {
            v[12] = 1;
        }
        let bus = Arc::new(DeviceBus {
            addr: reg.decl.addr.clone(),
            engine: RwLock::new(None),
            master: AtomicBool::new(false),
            intx_disable: AtomicBool::new(false),
            intx_asserted: AtomicBool::new(false),
            irqs: Mutex::new(Irqs::default()),
            faults: AtomicU64::new(0),
            running: AtomicBool::new(true),
            log: Default::default(),
        });
        let gate = bus.clone();
        let migration = crate::vfio::migration::Migration::with_hook(
            reg.model.clone(),
            crate::vfio::migration::MIGRATION_STOP_COPY
                | crate::vfio::migration::MIGRATION_P2P
                | crate::vfio::migration::MIGRATION_PRE_COPY,
            Some(Box::new(move |on| {
                gate.running.store(on, Ordering::Release)
            })),
        );
        VfioDevice {
            decl: reg.decl.clone(),
            model: reg.model.clone(),
            bus,
            migration,
            layout,
            config: Mutex::new(config),
            msix_table: Mutex::new(msix_table),
            state: Mutex::new(OpenState::default()),
            dmabufs: Mutex::new(Vec::new()),
            ioeventfds: Default::default(),
        }
    }

    /// What was declared.
    pub fn decl(&self) -> &DeviceDecl {
        &self.decl
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn PciModel> {
        &self.model
    }

    /// The device's migration state (v2 feature and v1 region).
    pub fn migration(&self) -> &crate::vfio::migration::Migration {
        &self.migration
    }

    /// The device's DMA log.
    pub fn dma_log(&self) -> &crate::vfio::migration::dma_log::DmaLog {
        &self.bus.log
    }

    /// The layout the model declared.
    pub fn layout(&self) -> &PciLayout {
        &self.layout
    }

    /// The bus the model is connected to while the device is open.
    pub fn bus(&self) -> Arc<DeviceBus> {
        self.bus.clone()
    }

    /// DMA faults seen so far.
    pub fn dma_faults(&self) -> u64 {
        self.bus.faults.load(Ordering::Relaxed)
    }

    /// The engine device while the device is open (bound to a context).
    pub fn engine_device(&self) -> Option<Arc<Device>> {
        self.state.lock().binding.as_ref().map(|b| b.dev.clone())
    }

    /// The interrupt type enabled now.
    pub fn irq_type(&self) -> IrqType {
        self.bus.irqs.lock().ty
    }

    // ---- open state ----

    /// Open the group (`vfio_group_fops_open`): `EBUSY` when it is open
    /// already or the device is bound through its cdev.
    pub(crate) fn group_open(&self) -> Result<()> {
        let mut st = self.state.lock();
        if st.cdev_bound > 0 {
            bail!(
                EBUSY,
                "group {} of {}: the device is bound through its cdev",
                self.decl.group,
                self.decl.addr
            );
        }
        if st.group_open {
            bail!(EBUSY, "group {} is already open", self.decl.group);
        }
        st.group_open = true;
        Ok(())
    }

    /// The group file and every device file opened through it are gone.
    pub(crate) fn group_close(&self) {
        self.state.lock().group_open = false;
    }

    /// A cdev bind (`vfio_device_block_group`): `EBUSY` while the group is open.
    pub(crate) fn block_group(&self) -> Result<()> {
        let mut st = self.state.lock();
        if st.group_open {
            bail!(
                EBUSY,
                "device {}: its group {} is open",
                self.decl.addr,
                self.decl.group
            );
        }
        st.cdev_bound += 1;
        Ok(())
    }

    /// Undo [`VfioDevice::block_group`].
    pub(crate) fn unblock_group(&self) {
        let mut st = self.state.lock();
        st.cdev_bound = st.cdev_bound.saturating_sub(1);
    }

    /// Open a device file on `ctx` (`vfio_df_open`). The first open binds
    /// and connects; through a group it also attaches to the compat IOAS.
    /// Returns the engine device ID.
    pub(crate) fn open_df(&self, ctx: &Arc<Context>, via: OpenedVia) -> Result<ObjId> {
        let mut st = self.state.lock();
        if st.open_count != 0 {
            if via == OpenedVia::Cdev {
                bail!(
                    EINVAL,
                    "device {} is already open: a cdev open must be the only one",
                    self.decl.addr
                );
            }
            let b = st.binding.as_ref().expect("an open device is bound");
            if !Arc::ptr_eq(&b.ctx, ctx) {
                bail!(
                    EINVAL,
                    "device {} is open on another iommufd",
                    self.decl.addr
                );
            }
            let id = b.dev.id();
            st.open_count += 1;
            return Ok(id);
        }
        // the driver knows the function's PASIDs (the kernel reads them from
        // its PCIe PASID capability)
        let driver = VtdDriver::with_pasids(self.layout.pasid_log2);
        let dev = Device::bind(ctx, Arc::new(driver))?;
        if via == OpenedVia::Group {
            let attached = ctx
                .compat_ioas()
                .and_then(|ioas| dev.attach(ctx, ioas).map(|_| ()));
            if let Err(e) = attached {
                dev.unbind(ctx);
                return Err(e);
            }
        }
        let id = dev.id();
        *self.bus.engine.write() = Some(dev.clone());
        st.binding = Some(Binding {
            ctx: ctx.clone(),
            dev,
            pasids: Default::default(),
        });
        st.open_count = 1;
        // under the state lock: a racing last close cannot undo it (models
        // only call back through the Bus, which never takes this lock)
        let bus: Arc<dyn Bus> = self.bus.clone();
        self.model.connect(Some(bus));
        drop(st);
        tracing::debug!(device = %self.decl.addr, ?via, dev_id = id, "device opened");
        Ok(id)
    }

    /// Close a device file (`vfio_df_close`); the last one tears down
    /// (`vfio_pci_core_disable`): IRQs off, bus master off, the model
    /// reset, the config space back to power-on, unbound, disconnected.
    /// All under the state lock, so that an open racing the last close
    /// starts from a closed device.
    pub(crate) fn close_df(&self) {
        let mut st = self.state.lock();
        if st.open_count == 0 {
            return;
        }
        st.open_count -= 1;
        if st.open_count > 0 {
            return;
        }
        let binding = st.binding.take();
        self.disable_irqs();
        // Bus mastering off first, so that nothing the device does between
        // here and its reset reaches memory; migration sessions and DMA
        // logging end with the last file (a reopened device is RUNNING).
        self.bus.master.store(false, Ordering::Release);
        self.model.set_bus_master(false);
        self.dmabufs_cleanup();
        self.ioeventfds.clear();
        self.migration.reset();
        self.migration.set_precopy_info_v2(false);
        self.bus.log.stop();
        self.model.reset();
        self.config.lock().reset();
        self.bus.intx_disable.store(false, Ordering::Release);
        *self.bus.engine.write() = None;
        if let Some(b) = binding {
            b.dev.unbind(&b.ctx);
        }
        self.model.connect(None);
        for v in self.msix_table.lock().chunks_mut(16) {
            v.fill(0);
            v[12] = 1;
        }
        drop(st);
        tracing::debug!(device = %self.decl.addr, "device closed");
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attach, or replace when attached.
    pub(crate) fn attach_pt(&self, pt_id: ObjId) -> Result<ObjId> {
        let st = self.state.lock();
        let Some(b) = st.binding.as_ref() else {
            bail!(EINVAL, "device {} is not bound", self.decl.addr);
        };
        if b.dev.attached_hwpt().is_some() {
            b.dev.replace(&b.ctx, pt_id)
        } else {
            b.dev.attach(&b.ctx, pt_id)
        }
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    pub(crate) fn detach_pt(&self) {
        let st = self.state.lock();
        if let Some(b) = st.binding.as_ref() {
            b.dev.detach(&b.ctx);
        }
    }

    /// The uAPI level of the iommufd this device is bound to.
    pub(crate) fn bound_level(&self) -> Option<crate::uapi::level::UapiLevel> {
        let st = self.state.lock();
        st.binding.as_ref().map(|b| b.ctx.uapi_level())
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` with `VFIO_DEVICE_ATTACH_PASID`
    /// (`vfio_iommufd_physical_pasid_attach_ioas`): a PASID attached through
    /// this path before is replaced, any other attached (the engine refuses
    /// a PASID the device does not have, an IOAS, a HWPT made without
    /// `IOMMU_HWPT_ALLOC_PASID`). Returns the HWPT ID.
    pub(crate) fn attach_pasid_pt(&self, pasid: u32, pt_id: ObjId) -> Result<ObjId> {
        let mut st = self.state.lock();
        let Some(b) = st.binding.as_mut() else {
            bail!(EINVAL, "device {} is not bound", self.decl.addr);
        };
        let replace = b.pasids.contains(&pasid);
        let r = match (pasid, replace) {
            (0, true) => b.dev.replace(&b.ctx, pt_id),
            (0, false) => b.dev.attach(&b.ctx, pt_id),
            (p, r) => b.dev.attach_pasid(&b.ctx, p, pt_id, r),
        };
        if r.is_ok() {
            b.pasids.insert(pasid);
        }
        r
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` with `VFIO_DEVICE_DETACH_PASID`: a
    /// PASID not attached through `VFIO_DEVICE_ATTACH_PASID` is left alone.
    pub(crate) fn detach_pasid_pt(&self, pasid: u32) {
        let mut st = self.state.lock();
        let Some(b) = st.binding.as_mut() else {
            return;
        };
        if !b.pasids.remove(&pasid) {
            return;
        }
        if pasid == 0 {
            b.dev.detach(&b.ctx);
        } else {
            b.dev.detach_pasid(&b.ctx, pasid);
        }
    }

    // ---- reset ----

    /// `VFIO_DEVICE_RESET` (a function-level reset): the model resets. As
    /// with the kernel's `pci_try_reset_function`, which saves the config
    /// state before the reset and restores it after, the config space the
    /// user sees and the IRQ setup stay as they were; the model is told
    /// the (restored) bus-master state again.
    pub fn reset(&self) {
        // dma-bufs are revoked across the reset, restored after it when
        // memory decode (kept, as the config space is) is on
        self.dmabufs_move(true);
        self.migration.reset();
        self.model.reset();
        if self.memory_enabled() {
            self.dmabufs_move(false);
        }
        let master = self.config.lock().bus_master();
        self.model.set_bus_master(master);
    }

    // ---- config space ----

    /// Read config bytes at `off` (the caller checked the range).
    pub fn config_read(&self, off: usize, buf: &mut [u8]) {
        self.config.lock().read(off, buf);
        // the INTx status bit is live
        let st = PCI_STATUS;
        if off <= st && st < off + buf.len() {
            let b = &mut buf[st - off];
            *b &= !(PCI_STATUS_INTERRUPT as u8);
            if self.bus.intx_asserted.load(Ordering::Acquire) {
                *b |= PCI_STATUS_INTERRUPT as u8;
            }
        }
    }

    /// Write config bytes at `off` with the bit rules.
    pub fn config_write(&self, off: usize, data: &[u8]) {
        let fx = self.config.lock().write(off, data);
        if let Some(on) = fx.intx_disable {
            self.bus.intx_disable.store(on, Ordering::Release);
        }
        if let Some(on) = fx.bus_master {
            self.bus.master.store(on, Ordering::Release);
            self.model.set_bus_master(on);
        }
        if let Some(on) = fx.memory {
            self.dmabufs_move(!on);
        }
    }

    // ---- ioeventfds ----

    /// `VFIO_DEVICE_IOEVENTFD` (`vfio_pci_ioeventfd`) of `count` bytes of
    /// `data` at region offset `offset`, or with `fd == -1` its removal.
    /// `EINVAL`: not a BAR, past its end, over the MSI-X table; then the
    /// registration's own rules (`vfio::ioeventfd::IoEventFds::set`).
    pub fn ioeventfd(self: &Arc<Self>, offset: u64, data: u64, count: u8, fd: i32) -> Result<()> {
        let bar = (offset >> VFIO_PCI_OFFSET_SHIFT) as u32;
        let pos = offset & VFIO_PCI_OFFSET_MASK;
        if bar > VFIO_PCI_BAR5_REGION_INDEX {
            bail!(EINVAL, "IOEVENTFD: region {bar} is not a BAR");
        }
        if pos + u64::from(count) > self.bar_size(bar) {
            bail!(
                EINVAL,
                "IOEVENTFD: {count} bytes at {pos:#x} leave BAR {bar} ({:#x} bytes)",
                self.bar_size(bar)
            );
        }
        if let Some(m) = self.layout.msix {
            let (start, len) = (
                u64::from(m.table_offset),
                u64::from(m.vectors.min(2048)) * 16,
            );
            if u32::from(m.table_bar) == bar
                && !(pos + u64::from(count) <= start || pos >= start + len)
            {
                bail!(
                    EINVAL,
                    "IOEVENTFD: {count} bytes at {pos:#x} of BAR {bar} reach the MSI-X table"
                );
            }
        }
        self.ioeventfds.set(self, (bar as u8, pos, data, count), fd)
    }

    /// An ioeventfd fired: its write, dropped while memory decode is off.
    pub(crate) fn ioeventfd_write(&self, bar: u8, pos: u64, data: &[u8]) {
        if !self.memory_enabled() {
            return;
        }
        self.bar_rw(bar, pos, &mut RwBuf::Write(data), data.len());
    }

    // ---- dma-bufs of BARs ----

    /// `VFIO_DEVICE_FEATURE_DMA_BUF` (`vfio_pci_core_feature_dma_buf`): a
    /// dma-buf of `ranges` (offset, length) of BAR `index`, revoked from
    /// the start when memory decode is off. The caller checked each range
    /// is non-empty and page aligned and their sum does not overflow.
    /// `ENODEV`: not an implemented BAR; `EOVERFLOW`: a range wraps;
    /// `EINVAL`: a range leaves the BAR, or the BAR has no memory behind it
    /// (the kernel's "no P2P provider"; a register-only emulated BAR is
    /// not memory a peer could reach).
    pub fn export_dmabuf(
        &self,
        index: u32,
        ranges: &[(u64, u64)],
    ) -> Result<Arc<crate::dmabuf::DmaBuf>> {
        let Some(bar) = self.layout.bars.get(index as usize).copied().flatten() else {
            bail!(ENODEV, "DMA_BUF: region {index} is not an implemented BAR");
        };
        let mem = bar
            .mmap
            .then(|| self.model.bar_memory(index as u8))
            .flatten();
        let Some((fd, base)) = mem else {
            bail!(
                EINVAL,
                "DMA_BUF: BAR {index} has no memory behind it (its accesses are register calls)"
            );
        };
        let mut total = 0u64;
        for &(off, len) in ranges {
            let Some(end) = off.checked_add(len) else {
                bail!(EOVERFLOW, "DMA_BUF: range {off:#x}+{len:#x} wraps");
            };
            if end > bar.size {
                bail!(
                    EINVAL,
                    "DMA_BUF: range [{off:#x}, {end:#x}) leaves BAR {index} ({:#x} bytes)",
                    bar.size
                );
            }
            total += len;
        }
        let (first, _) = ranges[0];
        let revoked = !self.memory_enabled();
        let buf = crate::dmabuf::DmaBuf::over_file(
            fd,
            base + first,
            total,
            ranges.len() as u32,
            revoked,
        )?;
        let mut list = self.dmabufs.lock();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&buf));
        Ok(buf)
    }

    /// Revoke or restore every exported dma-buf (`vfio_pci_dma_buf_move`).
    fn dmabufs_move(&self, revoked: bool) {
        let live: Vec<_> = self
            .dmabufs
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for b in live {
            b.move_to(revoked);
        }
    }

    /// The last close (`vfio_pci_dma_buf_cleanup`): every exported dma-buf
    /// is revoked and forgotten, so no later open restores it.
    fn dmabufs_cleanup(&self) {
        self.dmabufs_move(true);
        self.dmabufs.lock().clear();
    }

    fn memory_enabled(&self) -> bool {
        self.config
            .lock()
            .get16(crate::vfio::pci_config::PCI_COMMAND)
            & crate::vfio::pci_config::PCI_COMMAND_MEMORY
            != 0
    }

    // ---- regions ----

    /// Size of BAR `i` (0 when absent).
    pub fn bar_size(&self, i: u32) -> u64 {
        self.layout
            .bars
            .get(i as usize)
            .and_then(|b| b.as_ref())
            .map_or(0, |b| b.size)
    }

    /// `pread` of the device fd at `offset` (`vfio_pci_rw`).
    pub fn region_read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.region_rw(offset, RwBuf::Read(buf))
    }

    /// `pwrite` of the device fd at `offset`.
    pub fn region_write(&self, offset: u64, data: &[u8]) -> Result<usize> {
        self.region_rw(offset, RwBuf::Write(data))
    }

    fn region_rw(&self, offset: u64, mut buf: RwBuf<'_>) -> Result<usize> {
        let index = (offset >> VFIO_PCI_OFFSET_SHIFT) as u32;
        let pos = offset & VFIO_PCI_OFFSET_MASK;
        let count = buf.len();
        match index {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                if pos >= CONFIG_SIZE as u64 || pos + count as u64 > CONFIG_SIZE as u64 {
                    bail!(
                        EFAULT,
                        "config access of {count} bytes at {pos:#x} leaves the {CONFIG_SIZE}-byte config space"
                    );
                }
                match &mut buf {
                    RwBuf::Read(b) => self.config_read(pos as usize, b),
                    RwBuf::Write(d) => self.config_write(pos as usize, d),
                }
                Ok(count)
            }
            VFIO_PCI_ROM_REGION_INDEX => {
                if buf.is_write() {
                    bail!(EINVAL, "the ROM region cannot be written");
                }
                bail!(EINVAL, "device {} has no expansion ROM", self.decl.addr)
            }
            VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX => {
                let size = self.bar_size(index);
                if size == 0 {
                    bail!(EINVAL, "BAR {index} is not implemented");
                }
                if pos >= size {
                    bail!(
                        EINVAL,
                        "offset {pos:#x} is past the end of BAR {index} ({size:#x} bytes)"
                    );
                }
                let count = count.min((size - pos) as usize);
                if !self.memory_enabled() {
                    bail!(EIO, "BAR {index} access with memory decode off in COMMAND");
                }
                self.bar_rw(index as u8, pos, &mut buf, count);
                Ok(count)
            }
            VFIO_PCI_VGA_REGION_INDEX => bail!(EINVAL, "the device has no VGA region"),
            VFIO_PCI_MIGRATION_REGION_INDEX => {
                match &mut buf {
                    RwBuf::Read(b) => self.migration.v1_read(pos, b)?,
                    RwBuf::Write(d) => self.migration.v1_write(pos, d)?,
                }
                Ok(count)
            }
            _ => bail!(EINVAL, "region {index} does not exist (offset {offset:#x})"),
        }
    }

    /// Split `count` bytes at `pos` of `bar` into naturally aligned pieces
    /// of up to 8 bytes (as `vfio_pci_core_do_io_rw`).
    fn bar_rw(&self, bar: u8, pos: u64, buf: &mut RwBuf<'_>, count: usize) {
        let mut done = 0usize;
        while done < count {
            let at = pos + done as u64;
            let left = count - done;
            let n = [8usize, 4, 2, 1]
                .into_iter()
                .find(|&n| left >= n && at.is_multiple_of(n as u64))
                .unwrap_or(1);
            match buf {
                RwBuf::Read(b) => self.bar_piece_read(bar, at, &mut b[done..done + n]),
                RwBuf::Write(d) => self.bar_piece_write(bar, at, &d[done..done + n]),
            }
            done += n;
        }
    }

    /// Where `at` falls: the MSI-X table (offset in it), the PBA, or the model.
    fn msix_place(&self, bar: u8, at: u64) -> Place {
        if let Some(m) = self.layout.msix {
            let tlen = m.vectors.min(2048) as u64 * 16;
            let plen = (m.vectors.min(2048) as u64).div_ceil(64) * 8;
            if bar == m.table_bar
                && at >= m.table_offset as u64
                && at < m.table_offset as u64 + tlen
            {
                return Place::Table((at - m.table_offset as u64) as usize);
            }
            if bar == m.pba_bar && at >= m.pba_offset as u64 && at < m.pba_offset as u64 + plen {
                return Place::Pba;
            }
        }
        Place::Model
    }

    fn bar_piece_read(&self, bar: u8, at: u64, b: &mut [u8]) {
        match self.msix_place(bar, at) {
            Place::Table(o) => {
                let t = self.msix_table.lock();
                let end = (o + b.len()).min(t.len());
                b[..end - o].copy_from_slice(&t[o..end]);
            }
            // nothing is ever pending: delivery does not look at the masks
            Place::Pba => b.fill(0),
            Place::Model => self.model.bar_read(bar, at, b),
        }
    }

    fn bar_piece_write(&self, bar: u8, at: u64, d: &[u8]) {
        match self.msix_place(bar, at) {
            Place::Table(o) => {
                let mut t = self.msix_table.lock();
                let end = (o + d.len()).min(t.len());
                t[o..end].copy_from_slice(&d[..end - o]);
            }
            Place::Pba => {}
            Place::Model => self.model.bar_write(bar, at, d),
        }
    }

    /// `mmap` of `len` bytes at `offset` of the device fd
    /// (`vfio_pci_core_mmap`): BARs declared `mmap` only, inside the
    /// page-rounded BAR.
    pub fn mmap(&self, offset: u64, len: u64) -> Result<crate::files::MmapTarget> {
        let index = (offset >> VFIO_PCI_OFFSET_SHIFT) as u32;
        let pos = offset & VFIO_PCI_OFFSET_MASK;
        if index >= VFIO_PCI_ROM_REGION_INDEX {
            bail!(EINVAL, "region {index} cannot be mapped");
        }
        let Some(bar) = self.layout.bars[index as usize] else {
            bail!(EINVAL, "BAR {index} is not implemented");
        };
        if !bar.mmap {
            bail!(EINVAL, "BAR {index} is not mappable");
        }
        let page = crate::user::page_size();
        let phys_len = bar.size.div_ceil(page) * page;
        if len == 0 || pos.checked_add(len).is_none_or(|e| e > phys_len) {
            bail!(
                EINVAL,
                "mapping {len:#x} bytes at {pos:#x} leaves BAR {index} ({phys_len:#x} bytes)"
            );
        }
        let Some((fd, base)) = self.model.bar_memory(index as u8) else {
            bail!(EINVAL, "BAR {index}: the model has no memory behind it");
        };
        Ok(crate::files::MmapTarget {
            fd,
            offset: base + pos,
        })
    }

    // ---- interrupts ----

    /// Vectors of IRQ index `index` (`vfio_pci_get_irq_count`).
    pub fn irq_count(&self, index: u32) -> u32 {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => u32::from(self.layout.intx_pin != 0),
            VFIO_PCI_MSI_IRQ_INDEX => msi_count(&self.layout),
            VFIO_PCI_MSIX_IRQ_INDEX => self.layout.msix.map_or(0, |m| m.vectors.min(2048) as u32),
            VFIO_PCI_REQ_IRQ_INDEX => 1,
            // ERR: PCI Express only
            _ => 0,
        }
    }

    /// Tear down every interrupt (`vfio_pci_irqs_disable` style).
    pub fn disable_irqs(&self) {
        let old = {
            let mut irqs = self.bus.irqs.lock();
            std::mem::take(&mut *irqs)
        };
        self.bus.intx_asserted.store(false, Ordering::Release);
        drop(old); // closes the eventfd references
    }

    /// `VFIO_DEVICE_SET_IRQS` after validation: `data` holds `count`
    /// elements of the data type.
    pub(crate) fn set_irqs(
        &self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
    ) -> Result<()> {
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        match (index, action) {
            (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_MASK) => {
                self.intx_mask(start, count, flags, data)
            }
            (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK) => {
                self.intx_unmask(start, count, flags, data)
            }
            (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.intx_trigger(start, count, flags, data)
            }
            (VFIO_PCI_MSI_IRQ_INDEX | VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.msi_trigger(index == VFIO_PCI_MSIX_IRQ_INDEX, start, count, flags, data)
            }
            (VFIO_PCI_REQ_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.req_trigger(start, count, flags, data)
            }
            _ => bail!(
                ENOTTY,
                "SET_IRQS: action {action:#x} is not supported on IRQ index {index}"
            ),
        }
    }

    /// The IRQ state for an INTx mask or unmask (`what`): `EINVAL` unless
    /// INTx is enabled and the set is of its one line (start 0, count 1).
    fn intx_lines(
        &self,
        what: &str,
        start: u32,
        count: u32,
    ) -> Result<parking_lot::MutexGuard<'_, Irqs>> {
        let irqs = self.bus.irqs.lock();
        if irqs.ty != IrqType::Intx || start != 0 || count != 1 {
            bail!(
                EINVAL,
                "INTx {what}: INTx is not enabled, or start/count is not 0/1"
            );
        }
        Ok(irqs)
    }

    fn intx_mask(&self, start: u32, count: u32, flags: u32, data: &[u8]) -> Result<()> {
        let mut irqs = self.intx_lines("mask", start, count)?;
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            bail!(
                ENOTTY,
                "INTx mask by eventfd is not implemented (nor in vfio-pci)"
            );
        }
        if asserts(flags, data) {
            irqs.intx_masked = true;
        }
        Ok(())
    }

    fn intx_unmask(&self, start: u32, count: u32, flags: u32, data: &[u8]) -> Result<()> {
        let mut irqs = self.intx_lines("unmask", start, count)?;
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            // vfio_virqfd_enable / _disable; the old one is dropped (its
            // thread joined) after the lock is released
            let new = eventfd_in(data)?
                .map(|efd| Virqfd::start(efd, Arc::downgrade(&self.bus)))
                .transpose()?;
            let old = std::mem::replace(&mut irqs.unmask, new);
            drop(irqs);
            drop(old);
            return Ok(());
        }
        if asserts(flags, data) {
            drop(irqs);
            self.bus.unmask_intx();
        }
        Ok(())
    }

    fn intx_trigger(&self, start: u32, count: u32, flags: u32, data: &[u8]) -> Result<()> {
        let mut irqs = self.bus.irqs.lock();
        let is_intx = irqs.ty == IrqType::Intx;
        if is_intx && count == 0 && flags & VFIO_IRQ_SET_DATA_NONE != 0 {
            // vfio_intx_disable (its unmask virqfd too)
            let old = irqs.take_type();
            self.bus.intx_asserted.store(false, Ordering::Release);
            drop(irqs);
            drop(old);
            return Ok(());
        }
        if !(is_intx || irqs.ty == IrqType::None) || start != 0 || count != 1 {
            bail!(
                EINVAL,
                "INTx trigger: another IRQ type is enabled, or start/count is not 0/1"
            );
        }
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            let trigger = eventfd_in(data)?;
            if !is_intx {
                // vfio_intx_enable: unmasked, unless INTx is disabled in COMMAND
                irqs.ty = IrqType::Intx;
                irqs.allocated = 1;
                irqs.intx_masked = false;
                irqs.intx_pending = false;
                irqs.triggers = vec![trigger];
            } else {
                irqs.triggers = vec![trigger];
            }
            return Ok(());
        }
        if !is_intx {
            bail!(EINVAL, "INTx trigger loopback: INTx is not enabled");
        }
        if asserts(flags, data) {
            // vfio_send_intx_eventfd: signal and mask, as a real interrupt
            if !irqs.intx_masked {
                self.bus.intx_fire(&mut irqs);
            }
        }
        Ok(())
    }

    fn msi_trigger(
        &self,
        msix: bool,
        start: u32,
        count: u32,
        flags: u32,
        data: &[u8],
    ) -> Result<()> {
        let want = if msix { IrqType::Msix } else { IrqType::Msi };
        let mut irqs = self.bus.irqs.lock();
        if irqs.ty == want && count == 0 && flags & VFIO_IRQ_SET_DATA_NONE != 0 {
            let old = irqs.take_type();
            drop(irqs);
            drop(old);
            return Ok(());
        }
        if !(irqs.ty == want || irqs.ty == IrqType::None) {
            bail!(
                EINVAL,
                "MSI{} trigger: another IRQ type is enabled",
                if msix { "-X" } else { "" }
            );
        }
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            let fds: Vec<i32> = data
                .chunks_exact(4)
                .map(|c| i32::from_ne_bytes(c.try_into().expect("4 bytes")))
                .collect();
            if irqs.ty == want {
                return Self::msi_set_block(&mut irqs, msix, start, &fds);
            }
            // vfio_msi_enable (no type is enabled: nothing to drop)
            irqs.ty = want;
            irqs.allocated = start + count;
            let r = Self::msi_set_block(&mut irqs, msix, start, &fds);
            if r.is_err() {
                let old = irqs.take_type();
                drop(irqs);
                drop(old);
            }
            return r;
        }
        if irqs.ty != want {
            bail!(
                EINVAL,
                "MSI{} loopback: not enabled",
                if msix { "-X" } else { "" }
            );
        }
        for i in start..start + count {
            let Some(Some(t)) = irqs.triggers.get(i as usize) else {
                continue;
            };
            if flags & VFIO_IRQ_SET_DATA_NONE != 0
                || data.get((i - start) as usize).is_some_and(|&b| b != 0)
            {
                t.signal();
            }
        }
        Ok(())
    }

    /// `vfio_msi_set_block`: on a failure every vector of the block set so
    /// far is unset again.
    fn msi_set_block(irqs: &mut Irqs, msix: bool, start: u32, fds: &[i32]) -> Result<()> {
        for (i, &fd) in fds.iter().enumerate() {
            let v = start + i as u32;
            if let Err(e) = Self::msi_set_vector(irqs, msix, v, fd) {
                for u in start..v {
                    let _ = Self::msi_set_vector(irqs, msix, u, -1);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn msi_set_vector(irqs: &mut Irqs, msix: bool, v: u32, fd: i32) -> Result<()> {
        let slot = v as usize;
        if let Some(t) = irqs.triggers.get_mut(slot) {
            *t = None;
        }
        if fd < 0 {
            return Ok(());
        }
        if v >= irqs.allocated {
            if !msix {
                bail!(
                    EINVAL,
                    "MSI vector {v} was not allocated at enable ({} vectors)",
                    irqs.allocated
                );
            }
            irqs.allocated = v + 1; // dynamic MSI-X allocation
        }
        let t = EventFd::from_user(fd)?;
        if irqs.triggers.len() <= slot {
            irqs.triggers.resize_with(slot + 1, || None);
        }
        irqs.triggers[slot] = Some(t);
        Ok(())
    }

    fn req_trigger(&self, start: u32, count: u32, flags: u32, data: &[u8]) -> Result<()> {
        if start != 0 || count > 1 {
            bail!(EINVAL, "REQ trigger: start must be 0 and count at most 1");
        }
        let mut irqs = self.bus.irqs.lock();
        if flags & VFIO_IRQ_SET_DATA_NONE != 0 {
            let Some(t) = irqs.req.as_ref() else {
                bail!(EINVAL, "REQ: no eventfd set");
            };
            if count > 0 {
                t.signal();
            } else {
                irqs.req = None;
            }
            return Ok(());
        }
        if count == 0 {
            bail!(EINVAL, "REQ: count 0 with data");
        }
        if flags & VFIO_IRQ_SET_DATA_BOOL != 0 {
            if data[0] != 0 {
                if let Some(t) = irqs.req.as_ref() {
                    t.signal();
                }
            }
            return Ok(());
        }
        let fd = i32::from_ne_bytes(data[..4].try_into().expect("validated"));
        match fd {
            -1 => irqs.req = None,
            fd if fd >= 0 => irqs.req = Some(EventFd::from_user(fd)?),
            _ => bail!(EINVAL, "REQ: eventfd {fd} is neither -1 nor an fd"),
        }
        Ok(())
    }
}

/// Whether a `DATA_NONE` or `DATA_BOOL` (`data` non-zero) set of the INTx
/// lines asks for the action (mask, unmask, loopback trigger).
fn asserts(flags: u32, data: &[u8]) -> bool {
    flags & VFIO_IRQ_SET_DATA_NONE != 0 || data.first().is_some_and(|&b| b != 0)
}

/// The eventfd of a validated one-entry `DATA_EVENTFD` set: `None` for a
/// negative fd (the INTx trigger or unmask eventfd goes).
fn eventfd_in(data: &[u8]) -> Result<Option<EventFd>> {
    let fd = i32::from_ne_bytes(data[..4].try_into().expect("validated"));
    if fd < 0 {
        return Ok(None);
    }
    EventFd::from_user(fd).map(Some)
}

enum Place {
    Table(usize),
    Pba,
    Model,
}

/// One region access's buffer.
enum RwBuf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl RwBuf<'_> {
    fn len(&self) -> usize {
        match self {
            RwBuf::Read(b) => b.len(),
            RwBuf::Write(d) => d.len(),
        }
    }
    fn is_write(&self) -> bool {
        matches!(self, RwBuf::Write(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_recognised_with_and_without_proc() {
        // SAFETY: plain fd creation.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        // SAFETY: as above.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let null = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        assert!(is_eventfd(efd));
        assert!(!is_eventfd(epfd));
        assert!(!is_eventfd(null.as_raw_fd()));
        assert!(is_eventfd_without_proc(efd));
        assert!(
            !is_eventfd_without_proc(epfd),
            "an epoll fd refuses the write"
        );
        assert!(
            !is_eventfd_without_proc(null.as_raw_fd()),
            "not the anon inode"
        );
        let mut v = 0u64;
        // SAFETY: a nonblocking check that the probe write added nothing.
        unsafe { libc::fcntl(efd, libc::F_SETFL, libc::O_NONBLOCK) };
        // SAFETY: reads 8 bytes into a live u64.
        let n = unsafe { libc::read(efd, &mut v as *mut u64 as *mut libc::c_void, 8) };
        assert_eq!(n, -1, "the counter is still 0");
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(efd);
            libc::close(epfd);
        }
    }
}
