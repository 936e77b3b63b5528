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
pub fn capable(cap: u32) -> bool {
    match cap_policy() {
        CapPolicy::All => true,
        CapPolicy::Grant(list) if list.contains(&cap) => true,
        _ => host_capable(cap),
    }
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

/// The account of one pages object.
#[derive(Debug)]
pub struct Account {
    mode: AccountMode,
}

impl Account {
    /// An account in `mode`.
    pub fn new(mode: AccountMode) -> Self {
        Account { mode }
    }

    /// Charge `npages` newly pinned pages; `ENOMEM` over the limit, with nothing charged.
    pub fn charge(&self, npages: u64) -> Result<()> {
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

    /// Give back `npages` pages charged earlier.
    pub fn uncharge(&self, npages: u64) {
        if npages == 0 {
            return;
        }
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
