//! Accounting of pinned pages against `RLIMIT_MEMLOCK`, in the kernel's modes.
//!
//! The kernel charges pins to `user->locked_vm` (iommufd's default,
//! `IOMMU_OPTION_RLIMIT_MODE` = 0) or to `mm->locked_vm` (VFIO-compatible,
//! mode 1), skips the check for `CAP_IPC_LOCK`, and always counts
//! `mm->pinned_vm`. We keep process-wide counters for the three (all
//! contexts in one process share one user and one mm) and check them against
//! our own `RLIMIT_MEMLOCK`. Nothing is `mlock`ed: a pin here is a populate
//! plus these counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::Result;

/// Which counter a pages object charges (the kernel's `IOPT_PAGES_ACCOUNT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountMode {
    /// Not checked against the limit (the creator had `CAP_IPC_LOCK`).
    None,
    /// Charged to the user's locked_vm.
    User,
    /// Charged to the mm's locked_vm (VFIO compatible).
    Mm,
}

/// The per-user locked_vm counter, in pages.
pub static USER_LOCKED_VM: AtomicU64 = AtomicU64::new(0);
/// The mm's locked_vm counter, in pages.
pub static MM_LOCKED_VM: AtomicU64 = AtomicU64::new(0);
/// The mm's pinned_vm counter, in pages (every pin, whatever the mode).
pub static PINNED_VM: AtomicU64 = AtomicU64::new(0);

/// `CAP_IPC_LOCK`: pins are not checked against the limit.
pub const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_RESOURCE`: needed to change the RLIMIT mode.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Which capabilities the engine believes the caller has.
///
/// The kernel checks `CAP_SYS_RESOURCE` (RLIMIT mode) and `CAP_IPC_LOCK`
/// (no pin accounting). By default we read the thread's real effective set
/// (`UIOMMUFD_CAPS=host`). A program under test often expects the
/// privileges it has in production (the kernel's selftest expects root with
/// every capability) while CI sandboxes strip some of them; since nothing
/// the engine guards is a real kernel resource, `UIOMMUFD_CAPS=all` emulates
/// a fully privileged caller and `UIOMMUFD_CAPS=sys_resource,ipc_lock`
/// grants a chosen few on top of the real set.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CapPolicy {
    Host,
    All,
    Grant(Vec<u32>),
}

fn cap_policy() -> &'static CapPolicy {
    use std::sync::OnceLock;
    static POLICY: OnceLock<CapPolicy> = OnceLock::new();
    POLICY.get_or_init(|| match std::env::var("UIOMMUFD_CAPS").as_deref() {
        Ok("all") => CapPolicy::All,
        Ok("host") | Ok("") | Err(_) => CapPolicy::Host,
        Ok(list) => CapPolicy::Grant(
            list.split(',')
                .filter_map(|n| {
                    match n
                        .trim()
                        .trim_start_matches("cap_")
                        .to_ascii_lowercase()
                        .as_str()
                    {
                        "sys_resource" => Some(CAP_SYS_RESOURCE),
                        "ipc_lock" => Some(CAP_IPC_LOCK),
                        other => {
                            tracing::warn!("UIOMMUFD_CAPS: ignoring unknown capability {other:?}");
                            None
                        }
                    }
                })
                .collect(),
        ),
    })
}

/// Whether the caller has capability `cap`: the thread's effective set,
/// widened by `UIOMMUFD_CAPS`: `host` (the default: the real set), `all` (a fully
/// privileged caller, as the kernel selftest expects) or a list such as
/// `sys_resource,ipc_lock` granted on top of the real set.
///
/// A capability the process had when the engine first looked
/// ([`note_initial_caps`]; the preload looks when it is loaded) and has
/// dropped since (`capset`, as the 7.2 selftest's `drop_cap_ipc_lock`) is
/// not granted back: the grant stands for what the sandbox took away, not
/// for what the program gave up.
pub fn capable(cap: u32) -> bool {
    let granted = match cap_policy() {
        CapPolicy::All => true,
        CapPolicy::Grant(list) => list.contains(&cap),
        CapPolicy::Host => false,
    };
    host_capable(cap) || (granted && !initially_capable(cap))
}

/// The effective capabilities when the engine first looked.
static INITIAL_CAPS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Record the process's effective capabilities now (once), so that
/// [`capable`] can tell a capability the program dropped from one the
/// sandbox never gave.
pub fn note_initial_caps() {
    INITIAL_CAPS.get_or_init(|| {
        (0..64u32)
            .filter(|&c| host_capable(c))
            .fold(0u64, |m, c| m | 1 << c)
    });
}

fn initially_capable(cap: u32) -> bool {
    note_initial_caps();
    cap < 64 && INITIAL_CAPS.get().is_some_and(|m| m & (1 << cap) != 0)
}

/// Whether the calling thread has capability `cap` in its real effective set.
pub fn host_capable(cap: u32) -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` records (version 3 layout) into `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    let idx = (cap / 32) as usize;
    idx < 2 && data[idx].effective & (1 << (cap % 32)) != 0
}

/// The mode a new pages object starts in (the kernel's `iopt_alloc_pages`).
pub fn default_mode() -> AccountMode {
    if capable(CAP_IPC_LOCK) {
        AccountMode::None
    } else {
        AccountMode::User
    }
}

fn memlock_limit_pages() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0
        || rl.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    rl.rlim_cur / crate::user::page_size()
}

fn try_add_limited(counter: &AtomicU64, n: u64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            cur.checked_add(n).filter(|&v| v <= limit)
        })
        .is_ok()
}

/// The pins charged to one process other than ours (a process sharing a
/// context with us, see [`crate::process`]): its share of the process-wide
/// counters, which stay the totals. What is not charged to another process
/// is ours.
#[derive(Debug)]
pub struct ProcCharges {
    pid: i32,
    pinned: AtomicU64,
    mm_locked: AtomicU64,
}

impl ProcCharges {
    /// The process's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// Every process other than ours that pins are charged to (weak: an entry
/// lives while an account or a caller holds it). Not on any hot path: used
/// by [`process_charges`], [`counts`] and `IOAS_CHANGE_PROCESS`.
static PROCS: parking_lot::Mutex<Vec<std::sync::Weak<ProcCharges>>> =
    parking_lot::Mutex::new(Vec::new());

/// The charges of process `pid` (made on first use). `None` for our own
/// pid: our pins are the totals less everyone else's.
pub fn process_charges(pid: i32) -> Option<Arc<ProcCharges>> {
    // SAFETY: getpid has no preconditions.
    if pid == unsafe { libc::getpid() } {
        return None;
    }
    let mut procs = PROCS.lock();
    procs.retain(|w| w.strong_count() > 0);
    if let Some(p) = procs
        .iter()
        .filter_map(|w| w.upgrade())
        .find(|p| p.pid == pid)
    {
        return Some(p);
    }
    let p = Arc::new(ProcCharges {
        pid,
        pinned: AtomicU64::new(0),
        mm_locked: AtomicU64::new(0),
    });
    procs.push(Arc::downgrade(&p));
    Some(p)
}

/// `(pinned_vm, locked_vm)` charged by the engine to process `pid`, in
/// pages: what its `/proc/PID/status` shows as `VmPin`/`VmLck` beyond the
/// kernel's own (locked_vm counts the `IOMMU_OPTION_RLIMIT_MODE` = 1 pins).
pub fn counts(pid: i32) -> (u64, u64) {
    let procs = PROCS.lock();
    let others = procs.iter().filter_map(|w| w.upgrade());
    // SAFETY: getpid has no preconditions.
    if pid == unsafe { libc::getpid() } {
        let (mut pinned, mut locked) = (
            PINNED_VM.load(Ordering::Acquire),
            MM_LOCKED_VM.load(Ordering::Acquire),
        );
        for p in others {
            pinned = pinned.saturating_sub(p.pinned.load(Ordering::Acquire));
            locked = locked.saturating_sub(p.mm_locked.load(Ordering::Acquire));
        }
        return (pinned, locked);
    }
    others.filter(|p| p.pid == pid).fold((0, 0), |(a, b), p| {
        (
            a + p.pinned.load(Ordering::Acquire),
            b + p.mm_locked.load(Ordering::Acquire),
        )
    })
}

/// In a `fork` child whose copy of the engine state is left alone (every
/// context it inherited lives in its parent): the counters of its own mm
/// start at zero, as the kernel's do in a new mm (the per-user counter
/// stays: one user). The parent's charges to other processes are not ours.
pub fn forget_after_fork() {
    PINNED_VM.store(0, Ordering::Release);
    MM_LOCKED_VM.store(0, Ordering::Release);
    std::mem::forget(std::mem::take(&mut *PROCS.lock()));
}

thread_local! {
    /// The process the calls of this thread run for, when not ours (set by
    /// [`as_caller`] around another process's command).
    static CALLER: std::cell::RefCell<Option<Arc<ProcCharges>>> =
        const { std::cell::RefCell::new(None) };
}

/// Run `f` as a command of the process `caller` (`None`: ours): the pages
/// it creates are charged to that process, and `IOAS_CHANGE_PROCESS` moves
/// pins to it.
pub fn as_caller<R>(caller: Option<Arc<ProcCharges>>, f: impl FnOnce() -> R) -> R {
    let old = CALLER.with(|c| c.replace(caller));
    struct Restore(Option<Option<Arc<ProcCharges>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take().flatten();
            CALLER.with(|c| *c.borrow_mut() = old);
        }
    }
    let _restore = Restore(Some(old));
    f()
}

/// The process the current command runs for (`None`: ours).
pub fn caller() -> Option<Arc<ProcCharges>> {
    CALLER.with(|c| c.borrow().clone())
}

/// The account of one pages object.
///
/// Which process the pins are charged to is a pointer that is null for
/// ours (the single-process fast path: one atomic load per charge, no lock)
/// and otherwise owns one reference of that process's [`ProcCharges`]. Its
/// owner serialises every charge, uncharge and move of one account (a
/// pages object does all three under its pin lock, see
/// [`crate::pages::Pages::change_process`]), so a move never races a
/// charge and the pointer is never freed under a reader.
#[derive(Debug)]
pub struct Account {
    mode: AccountMode,
    owner: std::sync::atomic::AtomicPtr<ProcCharges>,
}

impl Drop for Account {
    fn drop(&mut self) {
        let p = *self.owner.get_mut();
        if !p.is_null() {
            // SAFETY: a non-null pointer owns one reference (`Arc::into_raw`).
            drop(unsafe { Arc::from_raw(p) });
        }
    }
}

fn into_ptr(p: Option<Arc<ProcCharges>>) -> *mut ProcCharges {
    p.map_or(std::ptr::null_mut(), |p| Arc::into_raw(p).cast_mut())
}

impl Account {
    /// An account in `mode`, charged to the process the current command
    /// runs for ([`as_caller`]).
    pub fn new(mode: AccountMode) -> Self {
        Account {
            mode,
            owner: std::sync::atomic::AtomicPtr::new(into_ptr(caller())),
        }
    }

    /// The process charged, if not ours.
    #[inline]
    fn proc(&self) -> Option<&ProcCharges> {
        let p = self.owner.load(Ordering::Acquire);
        // SAFETY: a non-null pointer owns a reference that only `move_to`
        // (serialised with the caller, see the type's docs) or `drop`
        // releases.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Charge the `npinned` pages charged here to `to` (`None`: ours) from
    /// now on (`IOAS_CHANGE_PROCESS`). The totals do not change, so neither
    /// does any limit check. Serialised with this account's charges (the
    /// pages object's pin lock).
    pub fn move_to(&self, to: Option<Arc<ProcCharges>>, npinned: u64) {
        let mm = self.mode == AccountMode::Mm;
        if let Some(p) = self.proc() {
            p.pinned.fetch_sub(npinned, Ordering::AcqRel);
            if mm {
                p.mm_locked.fetch_sub(npinned, Ordering::AcqRel);
            }
        }
        if let Some(p) = &to {
            p.pinned.fetch_add(npinned, Ordering::AcqRel);
            if mm {
                p.mm_locked.fetch_add(npinned, Ordering::AcqRel);
            }
        }
        let old = self.owner.swap(into_ptr(to), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: the pointer swapped out owned one reference.
            drop(unsafe { Arc::from_raw(old) });
        }
    }

    /// Charge `npages` newly pinned pages; `ENOMEM` over the limit, with nothing charged.
    pub fn charge(&self, npages: u64) -> Result<()> {
        self.charge_totals(npages)?;
        if let Some(p) = self.proc() {
            p.pinned.fetch_add(npages, Ordering::AcqRel);
            if self.mode == AccountMode::Mm {
                p.mm_locked.fetch_add(npages, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// Give back `npages` pages charged earlier.
    pub fn uncharge(&self, npages: u64) {
        if npages == 0 {
            return;
        }
        if let Some(p) = self.proc() {
            p.pinned.fetch_sub(npages, Ordering::AcqRel);
            if self.mode == AccountMode::Mm {
                p.mm_locked.fetch_sub(npages, Ordering::AcqRel);
            }
        }
        self.uncharge_totals(npages);
    }

    #[inline]
    fn charge_totals(&self, npages: u64) -> Result<()> {
        let counter = match self.mode {
            AccountMode::None => None,
            AccountMode::User => Some(&USER_LOCKED_VM),
            AccountMode::Mm => Some(&MM_LOCKED_VM),
        };
        if let Some(c) = counter {
            let limit = memlock_limit_pages();
            if !try_add_limited(c, npages, limit) {
                crate::bail!(
                    ENOMEM,
                    "pinning {npages} more pages exceeds RLIMIT_MEMLOCK ({limit} pages, {} already locked, {:?} accounting)",
                    c.load(Ordering::Relaxed),
                    self.mode
                );
            }
        }
        PINNED_VM.fetch_add(npages, Ordering::AcqRel);
        Ok(())
    }

    #[inline]
    fn uncharge_totals(&self, npages: u64) {
        match self.mode {
            AccountMode::None => {}
            AccountMode::User => {
                USER_LOCKED_VM.fetch_sub(npages, Ordering::AcqRel);
            }
            AccountMode::Mm => {
                MM_LOCKED_VM.fetch_sub(npages, Ordering::AcqRel);
            }
        }
        PINNED_VM.fetch_sub(npages, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_charged_to_another_process_move_with_change_process() {
        // a pid that is not ours (the parent's)
        // SAFETY: getppid has no preconditions.
        let other = unsafe { libc::getppid() };
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let theirs = process_charges(other).expect("another process");
        assert!(process_charges(me).is_none(), "our own pins are the totals");
        let (p0, l0) = counts(me);
        let a = as_caller(Some(theirs.clone()), || Account::new(AccountMode::Mm));
        a.charge(3).unwrap();
        assert_eq!(counts(other), (3, 3));
        assert_eq!(counts(me), (p0, l0), "not ours");
        a.move_to(None, 3);
        assert_eq!(counts(other), (0, 0));
        assert_eq!(counts(me), (p0 + 3, l0 + 3));
        a.move_to(Some(theirs), 3);
        a.uncharge(1);
        assert_eq!(counts(other), (2, 2));
        a.uncharge(2);
        assert_eq!(counts(me), (p0, l0));
        assert!(caller().is_none(), "as_caller restores the caller");
    }
}
