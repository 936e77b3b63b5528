//! Accounting of pinned pages against `RLIMIT_MEMLOCK`, in the kernel's
//! modes: the host facts it rests on.
//!
//! The kernel charges pins to `user->locked_vm` (iommufd's default,
//! `IOMMU_OPTION_RLIMIT_MODE` = 0) or to `mm->locked_vm` (VFIO-compatible,
//! mode 1), skips the check for `CAP_IPC_LOCK`, and always counts
//! `mm->pinned_vm`. The counters and the checks belong to the process a
//! pages object was made for, its [`crate::client::Client`]; this module
//! has what they are computed from: the modes, the capability policy
//! (`UIOMMUFD_CAPS`), a process's effective capabilities and its
//! `RLIMIT_MEMLOCK`. Nothing is `mlock`ed: a pin here is a populate plus the
//! client's counters.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// Whether `UIOMMUFD_CAPS` grants capability `cap` on top of a process's
/// real set: `all` grants every one, a list (`sys_resource,ipc_lock`) the
/// named ones, `host` (the default) none. A grant stands for what the
/// sandbox took away: [`crate::client::Client::capable`] does not grant back
/// a capability the process had when the engine first looked at it.
pub fn policy_grants(cap: u32) -> bool {
    match cap_policy() {
        CapPolicy::All => true,
        CapPolicy::Grant(list) => list.contains(&cap),
        CapPolicy::Host => false,
    }
}

/// The effective capability set of process `pid` (`0`: the calling
/// thread), as a mask of capability numbers below 64; empty when it
/// cannot be read (the process has exited).
pub fn effective_caps(pid: i32) -> u64 {
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
        pid,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` records (version 3 layout) into `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    u64::from(data[0].effective) | u64::from(data[1].effective) << 32
}

/// Whether the calling thread has capability `cap` in its real effective set.
pub fn host_capable(cap: u32) -> bool {
    cap < 64 && effective_caps(0) & (1 << cap) != 0
}

/// `RLIMIT_MEMLOCK` of process `pid` (`0`: ours) in pages, `u64::MAX` for
/// no limit. Another process's limit is read with `prlimit` (same user, or
/// `CAP_SYS_RESOURCE`); when it cannot be, ours stands in for it.
pub fn memlock_limit_pages(pid: i32) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with no new limit writes one rlimit struct into `rl`.
    let read = |pid: i32, rl: &mut libc::rlimit| unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            pid,
            libc::RLIMIT_MEMLOCK,
            std::ptr::null::<libc::rlimit>(),
            rl as *mut libc::rlimit,
        ) == 0
    };
    if !(read(pid, &mut rl) || (pid != 0 && read(0, &mut rl))) || rl.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    rl.rlim_cur / crate::user::page_size()
}

/// Add `n` to `counter` unless the sum passes `limit`; whether it did.
pub fn try_add_limited(counter: &AtomicU64, n: u64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            cur.checked_add(n).filter(|&v| v <= limit)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_limit_and_caps_read_the_same_by_pid() {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        assert_eq!(memlock_limit_pages(me), memlock_limit_pages(0));
        assert_eq!(effective_caps(me), effective_caps(0));
        let c = AtomicU64::new(5);
        assert!(!try_add_limited(&c, 6, 10));
        assert_eq!(c.load(Ordering::Relaxed), 5, "nothing added past the limit");
        assert!(try_add_limited(&c, 5, 10));
        assert_eq!(c.load(Ordering::Relaxed), 10);
    }
}
