//! `VFIO_DEVICE_IOEVENTFD` (vfio-pci's `vfio_pci_ioeventfd`): an eventfd
//! that, each time it is signalled, makes the device take a fixed write of
//! 1, 2, 4 or 8 bytes into one of its BARs, without a trip through the
//! program (a VMM wires the same eventfd to a KVM ioeventfd, so a guest's
//! doorbell write reaches the device directly).
//!
//! The kernel consumes the eventfd in each registration's wait-queue
//! callback, so every registration on one eventfd fires at each signal.
//! Here one watcher thread per process waits on an epoll instance holding
//! one *source* per eventfd (a dup of the program's fd, so a later `close`
//! by the program does not end it, as the kernel's file reference;
//! registrations on the same eventfd, known by its `eventfd-id`, share
//! it), reads the counter and performs every write registered on it
//! through the device's BAR path: dropped while memory decode is off, as
//! the kernel's `test_mem` write. The thread blocks every signal, so the program's
//! handlers never run on it. Started at the first registration; a `fork`
//! child starts its own at its first registration (its inherited
//! registrations are served from then on).
//!
//! A program that reads the eventfd it handed to VFIO may take a signal
//! before the watcher does (the write is then skipped, as the kernel's
//! callback would have consumed it first the other way round); if it does
//! so between the watcher's readiness check and its read, the watcher waits
//! for the next signal of that eventfd.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::vfio::device::VfioDevice;
use crate::{bail, Error, Result};

/// `VFIO_PCI_IOEVENTFD_MAX`: registrations per device.
pub const MAX_PER_DEVICE: usize = 1000;

/// One registration of a device.
#[derive(Debug)]
pub(crate) struct Entry {
    bar: u8,
    pos: u64,
    /// The value written (its low `count` bytes, little endian).
    data: u64,
    /// Bytes written: 1, 2, 4 or 8.
    count: u8,
    dev: Weak<VfioDevice>,
    /// The watched eventfd, kept alive by its registrations.
    _source: Arc<Source>,
}

/// One eventfd being watched, with the registrations on it.
#[derive(Debug)]
struct Source {
    /// Our dup of the program's eventfd.
    fd: OwnedFd,
    token: u64,
    /// The kernel's `eventfd-id` (from `/proc/self/fdinfo`), when shown.
    eventfd_id: Option<u64>,
    entries: Mutex<Vec<Weak<Entry>>>,
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(w) = WATCHER.lock().as_ref() {
            // SAFETY: removing our own fd from our own epoll instance; a
            // failure (never added in this process) is harmless.
            unsafe {
                libc::epoll_ctl(
                    w.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
        }
        let mut r = REGISTRY.lock();
        if let Some(r) = r.as_mut() {
            r.by_token.remove(&self.token);
            if let Some(id) = self.eventfd_id {
                if r.by_id.get(&id).is_some_and(|w| w.strong_count() == 0) {
                    r.by_id.remove(&id);
                }
            }
        }
    }
}

/// The process's watcher: its epoll instance, and the process it was
/// started in (a fork child starts its own).
struct Watcher {
    pid: u32,
    epfd: OwnedFd,
}

#[derive(Default)]
struct Registry {
    by_token: HashMap<u64, Weak<Source>>,
    by_id: HashMap<u64, Weak<Source>>,
}

static WATCHER: Mutex<Option<Watcher>> = Mutex::new(None);
static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
static SOURCING: Mutex<()> = Mutex::new(());

/// Add `s` to the epoll instance `epfd`.
fn epoll_add(epfd: i32, s: &Source) -> Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: s.token,
    };
    // SAFETY: both fds are open; `ev` is a valid event for the call.
    let r = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, s.fd.as_raw_fd(), &mut ev) };
    if r < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(Error::new(errno, "IOEVENTFD: epoll_ctl ADD failed"));
    }
    Ok(())
}

/// The watcher of this process, started (with every live source added)
/// when there is none or the one there is a parent's.
fn ensure_watcher() -> Result<i32> {
    let mut w = WATCHER.lock();
    let pid = std::process::id();
    if let Some(w) = w.as_ref().filter(|w| w.pid == pid) {
        return Ok(w.epfd.as_raw_fd());
    }
    // SAFETY: plain syscall wrapper.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOMEM);
        return Err(Error::new(errno, "IOEVENTFD: epoll_create1 failed"));
    }
    // SAFETY: `raw` is a new fd we own.
    let epfd = unsafe { OwnedFd::from_raw_fd(raw) };
    // an inherited registry (fork child): serve its sources here
    let live: Vec<Arc<Source>> = REGISTRY
        .lock()
        .get_or_insert_with(Registry::default)
        .by_token
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    let added = live.iter().try_for_each(|s| epoll_add(raw, s));
    let started = added.and_then(|()| {
        std::thread::Builder::new()
            .name("uiommufd-ioeventfd".into())
            .spawn(move || watch(raw))
            .map(|_| ())
            .map_err(|e| {
                Error::new(
                    libc::EAGAIN,
                    format!("IOEVENTFD: cannot start the watcher: {e}"),
                )
            })
    });
    let old = match started {
        // the thread uses the instance for the life of the process; an
        // old watcher's (a parent's, after fork) is closed with `old`
        Ok(()) => w.replace(Watcher { pid, epfd }),
        Err(_) => None,
    };
    drop(w);
    drop(old);
    // (a source whose last reference this was takes the watcher lock)
    drop(live);
    started.map(|()| raw)
}

/// The watcher thread: wait, consume, write.
fn watch(epfd: i32) {
    // SAFETY: an all-ones set blocks every signal on this thread only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
    loop {
        // SAFETY: `events` is valid for 16 entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 16, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // the instance is gone: stop
            return;
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            let source = REGISTRY
                .lock()
                .as_ref()
                .and_then(|r| r.by_token.get(&token))
                .and_then(Weak::upgrade);
            if let Some(s) = source {
                fire(&s);
            }
        }
    }
}

/// Consume `s`'s eventfd and perform every write registered on it.
fn fire(s: &Source) {
    let fd = s.fd.as_raw_fd();
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || p.revents & libc::POLLIN == 0 {
        return;
    }
    let mut v = [0u8; 8];
    // SAFETY: reading 8 bytes into our buffer from our dup of the eventfd.
    if unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) } != 8 {
        return;
    }
    let entries: Vec<Arc<Entry>> = s.entries.lock().iter().filter_map(Weak::upgrade).collect();
    for e in entries {
        if let Some(dev) = e.dev.upgrade() {
            dev.ioeventfd_write(e.bar, e.pos, &e.data.to_le_bytes()[..e.count as usize]);
        }
    }
}

/// Whether `fd` is an eventfd of the host kernel (not an engine file,
/// whose fds are eventfds underneath), and its `eventfd-id` if the kernel
/// shows one.
fn eventfd_identity(fd: i32) -> Option<Option<u64>> {
    if crate::files::is_engine_fd(fd) {
        return None;
    }
    if crate::user::fd_link(fd, &mut [0u8; 64]) != Some(b"anon_inode:[eventfd]") {
        return None;
    }
    let info = std::ffi::CString::new(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|p| crate::user::read_proc_raw(&p))
        .unwrap_or_default();
    let id = String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("eventfd-id:"))
        .and_then(|v| v.trim().parse().ok());
    Some(id)
}

/// The source for the program's eventfd `fd`: the one already watching it,
/// or a new one (added to the watcher).
fn source_for(fd: i32) -> Result<Arc<Source>> {
    // a private fd of ours, out of the program's way
    let Ok(owned) = crate::user::dup_private(fd) else {
        bail!(EBADF, "IOEVENTFD: fd {fd} is not open");
    };
    let Some(id) = eventfd_identity(fd) else {
        bail!(EINVAL, "IOEVENTFD: fd {fd} is not an eventfd");
    };
    // one registration at a time, so that one eventfd gets one source;
    // no other lock is held across this one (a source's drop takes the
    // watcher and registry locks, never this)
    let _one = SOURCING.lock();
    let epfd = ensure_watcher()?;
    let existing = {
        let r = REGISTRY.lock();
        id.and_then(|id| r.as_ref()?.by_id.get(&id).and_then(Weak::upgrade))
    };
    if let Some(s) = existing {
        return Ok(s);
    }
    let s = Arc::new(Source {
        fd: owned,
        token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
        eventfd_id: id,
        entries: Mutex::new(Vec::new()),
    });
    epoll_add(epfd, &s)?;
    let mut r = REGISTRY.lock();
    let r = r.get_or_insert_with(Registry::default);
    r.by_token.insert(s.token, Arc::downgrade(&s));
    if let Some(id) = id {
        r.by_id.insert(id, Arc::downgrade(&s));
    }
    Ok(s)
}

/// A device's registrations (`vdev->ioeventfds_list`).
#[derive(Debug, Default)]
pub(crate) struct IoEventFds {
    list: Mutex<Vec<Arc<Entry>>>,
}

impl IoEventFds {
    /// Add, or with `fd == -1` remove, the registration of (`bar`, `pos`,
    /// `data`, `count`) — the kernel's list walk: the same four values
    /// registered again are `EEXIST`; removing what is not there `ENODEV`;
    /// more than [`MAX_PER_DEVICE`] `ENOSPC`; `EBADF` for an fd that is not
    /// open, `EINVAL` for one that is not an eventfd. The caller checked
    /// the BAR range.
    pub fn set(
        &self,
        dev: &Arc<VfioDevice>,
        (bar, pos, data, count): (u8, u64, u64, u8),
        fd: i32,
    ) -> Result<()> {
        let mut list = self.list.lock();
        let same =
            |e: &Arc<Entry>| e.bar == bar && e.pos == pos && e.data == data && e.count == count;
        if let Some(i) = list.iter().position(same) {
            if fd == -1 {
                let gone = list.remove(i);
                drop(list);
                drop(gone);
                return Ok(());
            }
            bail!(
                EEXIST,
                "IOEVENTFD: a {count}-byte write of {data:#x} at BAR {bar} + {pos:#x} is already registered"
            );
        }
        if fd < 0 {
            bail!(
                ENODEV,
                "IOEVENTFD: nothing registered to remove at BAR {bar} + {pos:#x}"
            );
        }
        if list.len() >= MAX_PER_DEVICE {
            bail!(
                ENOSPC,
                "IOEVENTFD: the device has {MAX_PER_DEVICE} registrations"
            );
        }
        let source = source_for(fd)?;
        let e = Arc::new(Entry {
            bar,
            pos,
            data,
            count,
            dev: Arc::downgrade(dev),
            _source: source.clone(),
        });
        {
            let mut entries = source.entries.lock();
            entries.retain(|w| w.strong_count() > 0);
            entries.push(Arc::downgrade(&e));
        }
        list.push(e);
        Ok(())
    }

    /// Drop every registration (the device's last close).
    pub fn clear(&self) {
        let old = std::mem::take(&mut *self.list.lock());
        drop(old);
    }
}
