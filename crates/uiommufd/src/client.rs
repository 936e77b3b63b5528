//! Clients: the processes on the other side of the fds.
//!
//! The kernel's iommufd takes everything a command charges from the calling
//! task: a pages object captures the caller's `mm` (`source_mm`), its
//! thread-group leader (`source_task`: whose `RLIMIT_MEMLOCK` bounds the
//! pins) and its user (`source_user`: whose `locked_vm` they are charged to
//! in the default mode), and keeps them for its whole life, whoever uses it
//! later. A [`Client`] is that triple for one process here: its identity
//! (pid, and a pidfd when it is not ours), its memory, its capabilities
//! (the `UIOMMUFD_CAPS` policy evaluated for it), its `RLIMIT_MEMLOCK`, and
//! its counters:
//!
//! * the user's `locked_vm` ([`UserAccount`]): one per real uid, shared by
//!   every client of that user, as the kernel's `user_struct`;
//! * the mm's `locked_vm` (`IOMMU_OPTION_RLIMIT_MODE` = 1) and `pinned_vm`
//!   (every pin): one pair per client.
//!
//! Today one process is one client: [`Client::ours`] is the process that
//! holds the engine, and the preload makes a client for each other process
//! that sends it commands over a shared context ([`Client::of_process`]),
//! running each such command inside [`as_caller`]. Nothing else is
//! process-wide: a pages object captures its client (an [`Account`]) when
//! it is made, charges and checks that client whatever command pins it
//! later, and `IOAS_CHANGE_PROCESS` moves it to the caller's. Serving
//! several clients from one engine needs no other change here.
//!
//! The single-process fast path stays cheap: the own client is made once;
//! a pages object of ours holds a null pointer for it (another client's
//! holds one reference); a charge is one pointer load, the client's atomics
//! and the limit read, as before, with no lock. Looking up a client by pid (for `/proc/PID/status` reporting and
//! [`Client::of_process`]) takes the registry's lock; nothing on the map or
//! unmap path does.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use crate::accounting::{self, AccountMode, CAP_IPC_LOCK};
use crate::process::ProcessMemory;
use crate::user::{SelfMemory, UserMemory};
use crate::Result;

/// The pins charged to one user (the kernel's `user_struct::locked_vm`):
/// shared by every client whose real uid it is.
#[derive(Debug)]
pub struct UserAccount {
    uid: u32,
    locked_vm: AtomicU64,
}

impl UserAccount {
    /// The account of user `uid` (made on first use; it lives while a
    /// client of that user does).
    pub fn of(uid: u32) -> Arc<UserAccount> {
        static USERS: Mutex<Vec<Weak<UserAccount>>> = Mutex::new(Vec::new());
        let mut users = USERS.lock();
        users.retain(|w| w.strong_count() > 0);
        if let Some(u) = users
            .iter()
            .filter_map(Weak::upgrade)
            .find(|u| u.uid == uid)
        {
            return u;
        }
        let u = Arc::new(UserAccount {
            uid,
            locked_vm: AtomicU64::new(0),
        });
        users.push(Arc::downgrade(&u));
        u
    }

    /// The user's uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The pages charged to the user's `locked_vm` (mode 0).
    pub fn locked_vm(&self) -> u64 {
        self.locked_vm.load(Ordering::Acquire)
    }
}

/// Which process a client is.
#[derive(Debug)]
enum Who {
    /// The process that holds the engine (its pid is `getpid()`, also in a
    /// fork child).
    Ours,
    /// Another process, through its memory (pid and pidfd).
    Other(Arc<ProcessMemory>),
}

/// One process the engine serves (see the module docs).
#[derive(Debug)]
pub struct Client {
    who: Who,
    mem: Arc<dyn UserMemory>,
    user: Arc<UserAccount>,
    /// The mm's `locked_vm`: pins in mode 1, in pages.
    mm_locked_vm: AtomicU64,
    /// The mm's `pinned_vm`: every pin, in pages.
    pinned_vm: AtomicU64,
    /// The effective capabilities when the engine first looked (see
    /// [`Client::capable`]).
    initial_caps: OnceLock<u64>,
}

/// Every client other than ours (weak: an entry lives while a pages
/// object, a caller or a connection holds it). Not on any hot path.
static OTHERS: Mutex<Vec<Weak<Client>>> = Mutex::new(Vec::new());

fn our_pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The real uid of process `pid`, from its `/proc/PID/status`.
fn uid_of(pid: i32) -> Option<u32> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/status")).ok()?;
    let text = crate::user::read_proc_raw(&path)?;
    let text = String::from_utf8(text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Client {
    /// The process that holds the engine: its own memory, user, limit and
    /// capabilities.
    pub fn ours() -> &'static Arc<Client> {
        static OURS: OnceLock<Arc<Client>> = OnceLock::new();
        OURS.get_or_init(|| {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            Arc::new(Client {
                who: Who::Ours,
                mem: Arc::new(SelfMemory),
                user: UserAccount::of(uid),
                mm_locked_vm: AtomicU64::new(0),
                pinned_vm: AtomicU64::new(0),
                initial_caps: OnceLock::new(),
            })
        })
    }

    /// The client of the process whose memory `mem` is: the one already
    /// known for its pid while that process runs, or a new one (its user
    /// from its real uid, its capabilities as they are now). Our own pid
    /// gives [`Client::ours`].
    pub fn of_process(mem: Arc<ProcessMemory>) -> Arc<Client> {
        let pid = mem.pid();
        if pid == our_pid() {
            return Client::ours().clone();
        }
        let mut others = OTHERS.lock();
        others.retain(|w| w.strong_count() > 0);
        if let Some(c) = others
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.pid() == pid && c.alive())
        {
            return c;
        }
        // SAFETY: getuid has no preconditions.
        let uid = uid_of(pid).unwrap_or_else(|| unsafe { libc::getuid() });
        // what the sandbox gave: ours when the engine first looked (the
        // process tree's) and the process's own now; a capability either
        // had is one a program gave up when it is missing later
        let initial_caps = OnceLock::new();
        let _ =
            initial_caps.set(Client::ours().note_initial_caps() | accounting::effective_caps(pid));
        let c = Arc::new(Client {
            who: Who::Other(mem.clone()),
            mem,
            user: UserAccount::of(uid),
            mm_locked_vm: AtomicU64::new(0),
            pinned_vm: AtomicU64::new(0),
            initial_caps,
        });
        others.push(Arc::downgrade(&c));
        c
    }

    /// The clients known for process `pid` (ours, or those of another
    /// process that pins are still charged to: one that exited and one
    /// that reuses its pid are two).
    pub fn find(pid: i32) -> Vec<Arc<Client>> {
        if pid == our_pid() {
            return vec![Client::ours().clone()];
        }
        OTHERS
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.pid() == pid)
            .collect()
    }

    /// Every client known: ours first, then the others pins may be
    /// charged to.
    pub fn all() -> Vec<Arc<Client>> {
        let mut v = vec![Client::ours().clone()];
        v.extend(OTHERS.lock().iter().filter_map(Weak::upgrade));
        v
    }

    /// The process's pid.
    pub fn pid(&self) -> i32 {
        match &self.who {
            Who::Ours => our_pid(),
            Who::Other(m) => m.pid(),
        }
    }

    /// Whether this is the process that holds the engine.
    pub fn is_ours(&self) -> bool {
        matches!(self.who, Who::Ours)
    }

    /// Whether the process still runs (ours always does).
    pub fn alive(&self) -> bool {
        match &self.who {
            Who::Ours => true,
            Who::Other(m) => m.alive(),
        }
    }

    /// The process's memory: [`SelfMemory`] for ours, its
    /// [`ProcessMemory`] (pid and pidfd) for another.
    pub fn memory(&self) -> &Arc<dyn UserMemory> {
        &self.mem
    }

    /// Another process's memory (`None` for ours).
    pub fn process(&self) -> Option<&Arc<ProcessMemory>> {
        match &self.who {
            Who::Ours => None,
            Who::Other(m) => Some(m),
        }
    }

    /// The user the pins of mode 0 are charged to.
    pub fn user(&self) -> &Arc<UserAccount> {
        &self.user
    }

    /// The mm's `pinned_vm`, in pages: every pin charged to this client.
    pub fn pinned_vm(&self) -> u64 {
        self.pinned_vm.load(Ordering::Acquire)
    }

    /// The mm's `locked_vm`, in pages: the pins of mode 1.
    pub fn mm_locked_vm(&self) -> u64 {
        self.mm_locked_vm.load(Ordering::Acquire)
    }

    /// The process's `RLIMIT_MEMLOCK`, in pages (`u64::MAX`: unlimited).
    pub fn memlock_limit_pages(&self) -> u64 {
        match &self.who {
            Who::Ours => accounting::memlock_limit_pages(0),
            Who::Other(m) => accounting::memlock_limit_pages(m.pid()),
        }
    }

    /// The process's real effective capabilities now (ours: the calling
    /// thread's, as the kernel's `capable()` of `current`).
    fn effective_caps(&self) -> u64 {
        match &self.who {
            Who::Ours => accounting::effective_caps(0),
            Who::Other(m) => accounting::effective_caps(m.pid()),
        }
    }

    /// Record the effective capabilities now (once; another process's are
    /// recorded when its client is made, together with ours: a process
    /// that shares a context with us is of the same sandbox), so that
    /// [`Client::capable`] can tell a capability the program dropped from
    /// one the sandbox never gave. The preload calls it for ours when it is
    /// loaded.
    pub fn note_initial_caps(&self) -> u64 {
        *self.initial_caps.get_or_init(|| self.effective_caps())
    }

    /// Whether the client has capability `cap`: its real effective set,
    /// widened by the `UIOMMUFD_CAPS` policy
    /// ([`accounting::policy_grants`]). A capability it had when the
    /// engine first looked and has dropped since (`capset`, as the 7.2
    /// selftest's `drop_cap_ipc_lock`) is not granted back: the grant
    /// stands for what the sandbox took away, not for what the program
    /// gave up.
    pub fn capable(&self, cap: u32) -> bool {
        if cap >= 64 {
            return false;
        }
        let bit = 1u64 << cap;
        self.effective_caps() & bit != 0
            || (accounting::policy_grants(cap) && self.note_initial_caps() & bit == 0)
    }

    /// The mode a new pages object of this client starts in (the kernel's
    /// `iopt_alloc_pages`): none with `CAP_IPC_LOCK`, else the user's.
    pub fn default_mode(&self) -> AccountMode {
        if self.capable(CAP_IPC_LOCK) {
            AccountMode::None
        } else {
            AccountMode::User
        }
    }

    /// The counter `mode` charges besides `pinned_vm`.
    #[inline]
    fn locked_counter(&self, mode: AccountMode) -> Option<&AtomicU64> {
        match mode {
            AccountMode::None => None,
            AccountMode::User => Some(&self.user.locked_vm),
            AccountMode::Mm => Some(&self.mm_locked_vm),
        }
    }

    /// Charge `npages` new pins in `mode`, checked against the client's
    /// `RLIMIT_MEMLOCK` unless `force`; `ENOMEM` over it, with nothing
    /// charged.
    #[inline]
    fn charge(&self, mode: AccountMode, npages: u64, force: bool) -> Result<()> {
        if let Some(c) = self.locked_counter(mode) {
            if force {
                c.fetch_add(npages, Ordering::AcqRel);
            } else {
                let limit = self.memlock_limit_pages();
                if !accounting::try_add_limited(c, npages, limit) {
                    crate::bail!(
                        ENOMEM,
                        "pinning {npages} more pages exceeds RLIMIT_MEMLOCK of pid {} ({limit} pages, {} already locked, {mode:?} accounting)",
                        self.pid(),
                        c.load(Ordering::Relaxed),
                    );
                }
            }
        }
        self.pinned_vm.fetch_add(npages, Ordering::AcqRel);
        Ok(())
    }

    /// Give back `npages` pins charged in `mode`.
    #[inline]
    fn uncharge(&self, mode: AccountMode, npages: u64) {
        if let Some(c) = self.locked_counter(mode) {
            c.fetch_sub(npages, Ordering::AcqRel);
        }
        self.pinned_vm.fetch_sub(npages, Ordering::AcqRel);
    }

    /// In a `fork` child whose copy of the engine state is left alone
    /// (every context it inherited lives in its parent): the counters of
    /// our mm start at zero, as the kernel's do in a new mm (the user's
    /// stay: one user), and the parent's other clients are not ours.
    pub fn forget_after_fork() {
        let ours = Client::ours();
        ours.pinned_vm.store(0, Ordering::Release);
        ours.mm_locked_vm.store(0, Ordering::Release);
        std::mem::forget(std::mem::take(&mut *OTHERS.lock()));
    }
}

/// `(pinned_vm, locked_vm)` charged by the engine to process `pid`, in
/// pages: what its `/proc/PID/status` shows as `VmPin`/`VmLck` beyond the
/// kernel's own (locked_vm counts the `IOMMU_OPTION_RLIMIT_MODE` = 1 pins).
pub fn counts(pid: i32) -> (u64, u64) {
    Client::find(pid).iter().fold((0, 0), |(a, b), c| {
        (a + c.pinned_vm(), b + c.mm_locked_vm())
    })
}

thread_local! {
    /// The client the calls of this thread run for, when not ours (set by
    /// [`as_caller`] around another process's command).
    static CALLER: std::cell::RefCell<Option<Arc<Client>>> =
        const { std::cell::RefCell::new(None) };
}

/// Run `f` as a command of `client` (`None`: ours): the pages objects it
/// makes are charged to that client, its capabilities are the ones
/// checked, and `IOAS_CHANGE_PROCESS` moves pins to it.
pub fn as_caller<R>(client: Option<Arc<Client>>, f: impl FnOnce() -> R) -> R {
    let client = client.filter(|c| !c.is_ours());
    let old = CALLER.with(|c| c.replace(client));
    struct Restore(Option<Option<Arc<Client>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take().flatten();
            CALLER.with(|c| *c.borrow_mut() = old);
        }
    }
    let _restore = Restore(Some(old));
    f()
}

/// The client the current command runs for ([`Client::ours`] outside
/// [`as_caller`]).
pub fn caller() -> Arc<Client> {
    with_caller(|c| c.clone())
}

/// `f` of the client the current command runs for, without taking a
/// reference of it.
pub fn with_caller<R>(f: impl FnOnce(&Arc<Client>) -> R) -> R {
    CALLER.with(|c| match &*c.borrow() {
        Some(c) => f(c),
        None => f(Client::ours()),
    })
}

/// Whether the client the current command runs for has capability `cap`
/// ([`Client::capable`]).
pub fn capable(cap: u32) -> bool {
    with_caller(|c| c.capable(cap))
}

/// The account of one pages object: its mode and the client its pins are
/// charged to (the kernel's `source_mm`/`source_user`/`source_task`),
/// captured when the object is made.
///
/// The client is a pointer that is null for ours (the single-process fast
/// path: no reference count to take or drop per object) and otherwise
/// owns one reference of another client, so that `IOAS_CHANGE_PROCESS`
/// can move the account while readers charge without a lock. Its owner
/// serialises every charge, uncharge and move of one account (a pages
/// object does all three under its pin lock, see
/// [`crate::pages::Pages::change_process`]), so a move never races a charge
/// and the pointer is never freed under a reader.
#[derive(Debug)]
pub struct Account {
    mode: AccountMode,
    client: AtomicPtr<Client>,
}

/// The pointer an account keeps for `client`: null for ours, else one
/// reference (`Arc::into_raw`).
fn into_ptr(client: Arc<Client>) -> *mut Client {
    if client.is_ours() {
        std::ptr::null_mut()
    } else {
        Arc::into_raw(client).cast_mut()
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let p = *self.client.get_mut();
        if !p.is_null() {
            // SAFETY: a non-null pointer owns one reference (`into_ptr`).
            drop(unsafe { Arc::from_raw(p) });
        }
    }
}

impl Account {
    /// An account in `mode`, charged to the client the current command
    /// runs for ([`caller`]).
    pub fn new(mode: AccountMode) -> Self {
        let client = CALLER.with(|c| match &*c.borrow() {
            Some(c) => Arc::into_raw(c.clone()).cast_mut(),
            None => std::ptr::null_mut(),
        });
        Account {
            mode,
            client: AtomicPtr::new(client),
        }
    }

    /// An account in `mode`, charged to `client`.
    pub fn for_client(client: Arc<Client>, mode: AccountMode) -> Self {
        Account {
            mode,
            client: AtomicPtr::new(into_ptr(client)),
        }
    }

    /// The account's mode.
    pub fn mode(&self) -> AccountMode {
        self.mode
    }

    /// The client charged.
    #[inline]
    pub fn client(&self) -> &Client {
        let p = self.client.load(Ordering::Acquire);
        if p.is_null() {
            return Client::ours();
        }
        // SAFETY: a non-null pointer owns a reference that only `move_to`
        // (serialised with the caller, see the type's docs) or `drop`
        // releases.
        unsafe { &*p }
    }

    /// A reference of the client charged.
    pub fn client_arc(&self) -> Arc<Client> {
        let p = self.client.load(Ordering::Acquire);
        if p.is_null() {
            return Client::ours().clone();
        }
        // SAFETY: as in `client`; one more strong reference is taken
        // before one is made from the pointer.
        unsafe {
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        }
    }

    /// Charge the `npinned` pages charged here to `to` from now on
    /// (`IOAS_CHANGE_PROCESS`): `to` is charged first, checked against its
    /// limit unless `force` (`ENOMEM`, nothing moved), then the old client
    /// is uncharged. A user counter the two share does not change (the
    /// same user's `locked_vm`). Serialised with this account's charges
    /// (the pages object's pin lock).
    pub fn move_to(&self, to: Arc<Client>, npinned: u64, force: bool) -> Result<()> {
        let from = self.client();
        if std::ptr::eq(from, &*to) {
            return Ok(());
        }
        let same_user = Arc::ptr_eq(&from.user, &to.user) && self.mode == AccountMode::User;
        let mode = if same_user {
            AccountMode::None
        } else {
            self.mode
        };
        to.charge(mode, npinned, force)?;
        from.uncharge(mode, npinned);
        let old = self.client.swap(into_ptr(to), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: a non-null pointer swapped out owned one reference.
            drop(unsafe { Arc::from_raw(old) });
        }
        Ok(())
    }

    /// Charge `npages` newly pinned pages to the client; `ENOMEM` over its
    /// limit, with nothing charged.
    #[inline]
    pub fn charge(&self, npages: u64) -> Result<()> {
        self.client().charge(self.mode, npages, false)
    }

    /// Give back `npages` pages charged earlier.
    #[inline]
    pub fn uncharge(&self, npages: u64) {
        if npages == 0 {
            return;
        }
        self.client().uncharge(self.mode, npages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client for another process (the parent of this test process).
    fn other() -> Arc<Client> {
        // SAFETY: getppid has no preconditions.
        let pid = unsafe { libc::getppid() };
        let pidfd = crate::process::pidfd_open(pid).expect("pidfd of the parent");
        Client::of_process(Arc::new(ProcessMemory::new(pid, pidfd)))
    }

    #[test]
    fn clients_of_one_user_share_the_user_counter_not_the_mm_ones() {
        let a = Client::ours();
        let b = other();
        assert!(!b.is_ours());
        // SAFETY: getppid has no preconditions.
        assert_eq!(b.pid(), unsafe { libc::getppid() });
        assert!(Arc::ptr_eq(&b, &other()), "one client per running process");
        // the test runs as one user throughout
        assert!(Arc::ptr_eq(a.user(), b.user()), "one user, one counter");
        let (user0, pa0, ma0) = (a.user().locked_vm(), a.pinned_vm(), a.mm_locked_vm());
        let ab = Account::for_client(b.clone(), AccountMode::User);
        let mb = Account::for_client(b.clone(), AccountMode::Mm);
        ab.charge(2).unwrap();
        mb.charge(3).unwrap();
        assert_eq!(b.pinned_vm(), 5);
        assert_eq!(b.mm_locked_vm(), 3);
        assert!(a.user().locked_vm() >= user0 + 2, "the shared user counter");
        assert_eq!(counts(b.pid()), (5, 3));
        // ours is untouched (other tests may pin meanwhile: compare
        // against nothing of b's)
        let _ = (pa0, ma0);
        ab.uncharge(2);
        mb.uncharge(3);
        assert_eq!(counts(b.pid()), (0, 0));
    }

    #[test]
    fn limit_is_the_clients_own() {
        let b = other();
        let a = Account::for_client(b.clone(), AccountMode::Mm);
        let limit = b.memlock_limit_pages();
        if limit < u64::MAX / 2 {
            let e = a.charge(limit + 1).unwrap_err();
            assert_eq!(e.errno(), crate::Errno(libc::ENOMEM));
            assert_eq!(b.mm_locked_vm(), 0, "nothing charged on failure");
            assert_eq!(b.pinned_vm(), 0);
        }
        // mode None is never checked
        let n = Account::for_client(b.clone(), AccountMode::None);
        n.charge(u64::MAX / 4).unwrap();
        assert_eq!(b.mm_locked_vm(), 0);
        n.uncharge(u64::MAX / 4);
        assert_eq!(b.pinned_vm(), 0);
    }

    #[test]
    fn each_client_is_checked_against_its_own_limit() {
        let b = other();
        let theirs = b.memlock_limit_pages();
        if !(8..u64::MAX / 2).contains(&theirs) {
            return; // a parent with no limit, or too small a one to halve
        }
        // lower our own soft limit below the parent's (this test's process
        // is its own under nextest, and only ever lowers it)
        let ps = crate::user::page_size();
        let ours_pages = theirs / 2;
        let rl = libc::rlimit {
            rlim_cur: ours_pages * ps,
            rlim_max: libc::RLIM_INFINITY,
        };
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write one rlimit each.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut old), 0);
            let rl = libc::rlimit {
                rlim_max: old.rlim_max,
                ..rl
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl), 0);
        }
        assert_eq!(Client::ours().memlock_limit_pages(), ours_pages);
        let n = ours_pages + 1;
        let mine = Account::for_client(Client::ours().clone(), AccountMode::Mm);
        let e = mine.charge(n).unwrap_err();
        assert_eq!(e.errno(), crate::Errno(libc::ENOMEM), "past our limit");
        let their = Account::for_client(b.clone(), AccountMode::Mm);
        their.charge(n).expect("within theirs");
        assert_eq!(counts(b.pid()), (n, n));
        their.uncharge(n);
        // SAFETY: restoring the limit read above.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &old) };
    }

    #[test]
    fn an_account_stays_with_its_client_whoever_calls() {
        let b = other();
        let acct = as_caller(Some(b.clone()), || {
            assert!(std::ptr::eq(&*caller(), &*b));
            Account::new(AccountMode::Mm)
        });
        assert!(caller().is_ours(), "as_caller restores the caller");
        assert!(std::ptr::eq(acct.client(), &*b));
        // a later command of ours pins more of it: still b's
        acct.charge(4).unwrap();
        assert_eq!(counts(b.pid()), (4, 4));
        // IOAS_CHANGE_PROCESS by ours moves the pins to ours
        let ours = Client::ours();
        let (p0, l0) = (ours.pinned_vm(), ours.mm_locked_vm());
        acct.move_to(ours.clone(), 4, false).unwrap();
        assert_eq!(counts(b.pid()), (0, 0));
        assert!(ours.pinned_vm() >= p0 + 4 && ours.mm_locked_vm() >= l0 + 4);
        acct.move_to(b.clone(), 4, false).unwrap();
        assert_eq!(counts(b.pid()), (4, 4));
        acct.uncharge(4);
        assert_eq!(counts(b.pid()), (0, 0));
    }

    #[test]
    fn a_move_over_the_new_clients_limit_moves_nothing() {
        let b = other();
        let limit = b.memlock_limit_pages();
        if limit >= u64::MAX / 2 {
            return; // no limit to pass
        }
        // charged to b without a limit check (as pins charged before the
        // limit was lowered), then moved to another mm-mode client
        let acct = Account::for_client(Client::ours().clone(), AccountMode::Mm);
        // force the charge past any limit: what the move must check
        Client::ours()
            .charge(AccountMode::Mm, limit + 1, true)
            .unwrap();
        let e = acct.move_to(b.clone(), limit + 1, false).unwrap_err();
        assert_eq!(e.errno(), crate::Errno(libc::ENOMEM));
        assert_eq!(counts(b.pid()), (0, 0), "nothing moved");
        assert!(std::ptr::eq(acct.client(), &**Client::ours()));
        acct.uncharge(limit + 1);
    }

    #[test]
    fn capabilities_are_the_clients() {
        let b = other();
        // the parent runs as the same user in the same sandbox: the
        // capabilities read for it are its own set
        // SAFETY: getppid has no preconditions.
        let mask = accounting::effective_caps(unsafe { libc::getppid() });
        for cap in [accounting::CAP_IPC_LOCK, accounting::CAP_SYS_RESOURCE] {
            if mask & (1 << cap) != 0 {
                assert!(b.capable(cap));
            }
        }
        assert!(!b.capable(64), "no capability past the mask");
    }
}
