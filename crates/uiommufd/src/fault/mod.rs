//! I/O page fault queues (the kernel's fault.c and the parts of io-pgfault.c
//! that iommufd sees).
//!
//! A fault queue ([`Fault`], `IOMMUFD_OBJ_FAULT`) is made by
//! `IOMMU_FAULT_QUEUE_ALLOC`, which also hands out an fd ([`FaultFile`]). A
//! nested HWPT made with `IOMMU_HWPT_FAULT_ID_VALID` names a queue; a device
//! attached to such a HWPT reports page requests ([`PageFault`]) with
//! [`crate::device::Device::report_fault`], and each complete request group
//! ([`FaultGroup`]: the faults of one group index up to the one marked
//! `LAST_PAGE`) is queued for delivery.
//!
//! The fd follows 6.12's file operations exactly:
//!
//! * `read` hands out whole groups as `struct iommu_hwpt_pgfault` records
//!   (40 bytes each), giving each delivered group a cookie (the lowest free
//!   one from 1). A length that is not a multiple of the record is
//!   `ESPIPE`; a buffer too small for the next group is `EINVAL` when nothing
//!   was read yet, otherwise the read stops short. An empty queue reads 0
//!   bytes, whatever `O_NONBLOCK` says: the kernel's fault read never blocks
//!   (wait with `poll`, or from Rust with [`Fault::wait_readable`]).
//! * `write` takes `struct iommu_hwpt_page_response`s (8 bytes each): a
//!   length that is not a multiple is `ESPIPE`; a code other than
//!   `SUCCESS`/`INVALID` or a cookie that names no delivered group is
//!   `EINVAL` (when it is the first response; otherwise the write stops
//!   short). The response completes the group.
//! * `poll` is always writable and readable while groups wait for delivery.
//!
//! No fault is ever left pending: when a device leaves a fault-capable HWPT
//! (detach, replace, unbind) every group it raised through that attachment,
//! delivered or not, is completed with `INVALID` (the kernel's
//! `iommufd_auto_response_faults`); so is every group still held when the
//! queue itself is destroyed. A device-side waiter ([`FaultGroup::wait`]) is
//! woken by any of these.
//!
//! Lock order: `Device::attached` → `Fault::state` → `FaultGroup::done`.
//! `files::notify_file` is called with none of them held.

pub(crate) mod ioctl;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use zerocopy::IntoBytes;

use crate::context::{Context, ObjId, Object};
use crate::files::{self, EngineFile};
use crate::uapi::*;
use crate::{bail, Error, Result};

/// Page response codes (the kernel's `enum iommu_page_response_code`).
pub mod resp {
    /// The fault was handled: retry the access.
    pub const SUCCESS: u32 = 0;
    /// The fault cannot be handled: do not retry.
    pub const INVALID: u32 = 1;
    /// A general failure (never written by users; kept for completeness).
    pub const FAILURE: u32 = 2;
}

/// One page request as the device raises it (the kernel's
/// `iommu_fault_page_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageFault {
    /// Whether `pasid` is meaningful (`IOMMU_PGFAULT_FLAGS_PASID_VALID`).
    pub pasid_valid: bool,
    /// The last request of its group (`IOMMU_PGFAULT_FLAGS_LAST_PAGE`).
    pub last_page: bool,
    /// PASID, meaningful with `pasid_valid`.
    pub pasid: u32,
    /// Page request group index.
    pub grpid: u32,
    /// `IOMMU_PGFAULT_PERM_*`.
    pub perm: u32,
    /// Faulting address.
    pub addr: u64,
    /// Length hint (0 when none).
    pub length: u32,
}

/// The uAPI flags of a page request (`IOMMU_PGFAULT_FLAGS_*`).
fn pgfault_flags(f: &PageFault) -> u32 {
    let mut flags = 0;
    if f.pasid_valid {
        flags |= IOMMU_PGFAULT_FLAGS_PASID_VALID;
    }
    if f.last_page {
        flags |= IOMMU_PGFAULT_FLAGS_LAST_PAGE;
    }
    flags
}

/// A group of page requests answered by one response (the kernel's
/// `iopf_group`), shared by the queue and whoever raised it.
#[derive(Debug)]
pub struct FaultGroup {
    faults: Vec<PageFault>,
    dev_id: ObjId,
    /// The attachment it was raised through (auto-response matches on it).
    handle: u64,
    done: Mutex<Option<u32>>,
    done_cv: Condvar,
}

impl FaultGroup {
    pub(crate) fn new(faults: Vec<PageFault>, dev_id: ObjId, handle: u64) -> Arc<FaultGroup> {
        Arc::new(FaultGroup {
            faults,
            dev_id,
            handle,
            done: Mutex::new(None),
            done_cv: Condvar::new(),
        })
    }

    /// The faults of the group, last one last.
    pub fn faults(&self) -> &[PageFault] {
        &self.faults
    }

    /// The response (a [`resp`] code), once there is one.
    pub fn response(&self) -> Option<u32> {
        *self.done.lock()
    }

    /// Wait for the response: `None` when `timeout` passed first.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<u32> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut d = self.done.lock();
        while d.is_none() {
            match deadline {
                Some(dl) => {
                    if self.done_cv.wait_until(&mut d, dl).timed_out() {
                        break;
                    }
                }
                None => self.done_cv.wait(&mut d),
            }
        }
        *d
    }

    /// Complete with `code` (the first completion wins) and wake waiters
    /// (the kernel's `iopf_group_response`; the device is told through
    /// its driver, which for the mock is nothing).
    pub(crate) fn complete(&self, code: u32) {
        let mut d = self.done.lock();
        if d.is_none() {
            *d = Some(code);
        }
        self.done_cv.notify_all();
    }
}

#[derive(Debug, Default)]
struct FaultState {
    /// Groups waiting to be read.
    deliver: VecDeque<Arc<FaultGroup>>,
    /// Groups read and waiting for a response, by cookie.
    response: BTreeMap<u32, Arc<FaultGroup>>,
}

impl FaultState {
    /// The delivered group the response `raw` answers, taken out of
    /// `response`, and its code: `EINVAL` for a code other than SUCCESS or
    /// INVALID, or a cookie that names no delivered group.
    fn take_response(&mut self, raw: &[u8; RESPONSE]) -> Result<(Arc<FaultGroup>, u32)> {
        let r: IommuHwptPageResponse = match zerocopy::FromBytes::read_from_bytes(&raw[..]) {
            Ok(r) => r,
            Err(_) => unreachable!("raw is one response"),
        };
        if r.code != IOMMUFD_PAGE_RESP_SUCCESS && r.code != IOMMUFD_PAGE_RESP_INVALID {
            bail!(
                EINVAL,
                "fault write: response code {} is neither SUCCESS (0) nor INVALID (1)",
                r.code
            );
        }
        let Some(g) = self.response.remove(&r.cookie) else {
            bail!(
                EINVAL,
                "fault write: cookie {} names no delivered fault group",
                r.cookie
            );
        };
        Ok((g, r.code))
    }

    /// Lowest free cookie from 1 (`xa_alloc` with `XA_FLAGS_ALLOC1`).
    fn free_cookie(&self) -> Option<u32> {
        let mut want = 1u32;
        for &c in self.response.keys() {
            if c != want {
                break;
            }
            want = want.checked_add(1)?;
        }
        Some(want)
    }
}

impl Object for Fault {
    const KIND: &'static str = "fault queue";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_FAULT");
}

/// A fault queue object (`IOMMUFD_OBJ_FAULT`).
#[derive(Debug, Default)]
pub struct Fault {
    state: Mutex<FaultState>,
    readable: Condvar,
    /// The fd's file, to resync its readiness.
    file: files::QueueLink<FaultFile>,
}

/// Size of one fault record.
const RECORD: usize = size_of::<IommuHwptPgfault>();
/// Size of one response.
const RESPONSE: usize = size_of::<IommuHwptPageResponse>();

impl Fault {
    /// A new, empty queue with no fd.
    pub fn new() -> Arc<Fault> {
        Arc::new(Fault::default())
    }

    /// Queue a group for delivery (`iommufd_fault_iopf_handler`). The caller
    /// resyncs the fd ([`Fault::notify`]) once it holds no lock.
    pub(crate) fn deliver(&self, group: Arc<FaultGroup>) {
        self.state.lock().deliver.push_back(group);
        self.file.arrived();
        self.readable.notify_all();
    }

    /// Resync the fd's readiness with the queue; after a [`Fault::deliver`]
    /// also wake its waiters, so that an edge-triggered `epoll` sees every
    /// new fault as the kernel's `wake_up_interruptible` per fault makes it.
    /// Call with no lock held.
    pub(crate) fn notify(&self) {
        self.file.notify();
    }

    /// Complete with `INVALID` every group raised through attachment
    /// `handle`, delivered or not (`iommufd_auto_response_faults`).
    pub(crate) fn auto_respond(&self, handle: u64) {
        let victims: Vec<Arc<FaultGroup>> = {
            let mut st = self.state.lock();
            let mut v = Vec::new();
            // keeps the groups of other attachments, takes this one's
            let mut keep = |g: &Arc<FaultGroup>| {
                if g.handle == handle {
                    v.push(g.clone());
                    false
                } else {
                    true
                }
            };
            st.deliver.retain(&mut keep);
            st.response.retain(|_, g| keep(g));
            v
        };
        if victims.is_empty() {
            return;
        }
        tracing::debug!(
            groups = victims.len(),
            "fault queue: auto-responding INVALID to the faults of a departing attachment"
        );
        for g in &victims {
            g.complete(resp::INVALID);
        }
        self.notify();
    }

    /// Number of groups waiting to be read.
    pub fn pending_delivery(&self) -> usize {
        self.state.lock().deliver.len()
    }

    /// Number of groups read and waiting for a response.
    pub fn pending_response(&self) -> usize {
        self.state.lock().response.len()
    }

    /// Block until a group waits to be read or `timeout` passes; returns
    /// whether one waits. (The fd's `read` never blocks, as in the kernel.)
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        while st.deliver.is_empty() {
            if self.readable.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        !st.deliver.is_empty()
    }

    /// `read(2)` of the fault fd into `buf` (see the module docs).
    pub fn read_records(&self, buf: &mut [u8]) -> Result<usize> {
        self.read_records_with(buf.len(), &mut files::into_slice(buf))
    }

    /// `read(2)` of the fault fd for a buffer of `len` bytes: each record is
    /// handed to `put(offset, bytes)`, a copy to the reader's memory that
    /// may fail. When it fails the group goes back to the head of the queue
    /// and its cookie stays free (the kernel's restore after a failed
    /// `copy_to_user`); the read ends there: the failure when nothing was
    /// read yet, otherwise the bytes of the groups before it. Only whole
    /// records are copied, so nothing proportional to `len` is allocated.
    pub fn read_records_with(
        &self,
        len: usize,
        put: &mut dyn FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<usize> {
        if !len.is_multiple_of(RECORD) {
            bail!(
                ESPIPE,
                "fault read: {len} bytes is not a multiple of the {RECORD}-byte record"
            );
        }
        let mut st = self.state.lock();
        let mut done = 0usize;
        let mut rc: Result<()> = Ok(());
        'groups: while let Some(g) = st.deliver.front() {
            let need = g.faults.len() * RECORD;
            if done >= len || need > len - done {
                if done == 0 {
                    rc = Err(Error::new(
                        libc::EINVAL,
                        format!(
                            "fault read: {len} bytes cannot hold the next group of {} record(s)",
                            g.faults.len()
                        ),
                    ));
                }
                break;
            }
            let Some(cookie) = st.free_cookie() else {
                rc = Err(Error::new(libc::EBUSY, "fault read: no free cookie"));
                break;
            };
            let Some(g) = st.deliver.pop_front() else {
                break;
            };
            let mut at = done;
            for f in &g.faults {
                let rec = IommuHwptPgfault {
                    flags: pgfault_flags(f),
                    dev_id: g.dev_id,
                    pasid: f.pasid,
                    grpid: f.grpid,
                    perm: f.perm,
                    __reserved: 0,
                    addr: f.addr,
                    length: 0,
                    cookie,
                };
                if let Err(e) = put(at, rec.as_bytes()) {
                    tracing::debug!(
                        "fault read: copying a record out failed; the group stays queued: {e}"
                    );
                    st.deliver.push_front(g);
                    rc = Err(e);
                    break 'groups;
                }
                at += RECORD;
            }
            st.response.insert(cookie, g);
            done = at;
        }
        files::partial(done, rc)
    }

    /// `write(2)` of the fault fd from `buf` (see the module docs).
    pub fn write_responses(&self, buf: &[u8]) -> Result<usize> {
        self.write_responses_with(buf.len(), &mut |off, out| {
            out.copy_from_slice(&buf[off..off + out.len()]);
            Ok(())
        })
    }

    /// `write(2)` of the fault fd for a buffer of `len` bytes: each response
    /// is fetched with `get(offset, out)`, a copy from the writer's memory
    /// that may fail; a failure ends the write (the failure when nothing was
    /// done yet, otherwise the bytes before it), as in the kernel.
    pub fn write_responses_with(
        &self,
        len: usize,
        get: &mut dyn FnMut(usize, &mut [u8]) -> Result<()>,
    ) -> Result<usize> {
        if !len.is_multiple_of(RESPONSE) {
            bail!(
                ESPIPE,
                "fault write: {len} bytes is not a multiple of the {RESPONSE}-byte response"
            );
        }
        let mut done = 0usize;
        let mut rc: Result<()> = Ok(());
        let mut completed = Vec::new();
        {
            let mut st = self.state.lock();
            while done < len {
                let mut raw = [0u8; RESPONSE];
                match get(done, &mut raw).and_then(|()| st.take_response(&raw)) {
                    // (at most one entry per delivered group: `completed`
                    // is bounded by the queue, not by `len`)
                    Ok(answered) => completed.push(answered),
                    Err(e) => {
                        rc = Err(e);
                        break;
                    }
                }
                done += RESPONSE;
            }
        }
        for (g, code) in completed {
            g.complete(code);
        }
        files::partial(done, rc)
    }

    /// `poll` events of the fault fd.
    pub fn poll_events(&self) -> i16 {
        let mut ev = libc::POLLOUT;
        if !self.state.lock().deliver.is_empty() {
            ev |= libc::POLLIN | libc::POLLRDNORM;
        }
        ev
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        // the object is destroyed: nothing may stay pending
        let st = std::mem::take(self.state.get_mut());
        for g in st.deliver.iter().chain(st.response.values()) {
            g.complete(resp::INVALID);
        }
    }
}

/// The fault fd's file: the queue, and the context it keeps alive (as the
/// kernel's fault file holds its `iommufd_ctx`).
#[derive(Debug)]
pub struct FaultFile {
    fault: Arc<Fault>,
    _ctx: Arc<Context>,
}

impl FaultFile {
    /// The queue behind the fd.
    pub fn fault(&self) -> &Arc<Fault> {
        &self.fault
    }
}

impl EngineFile for FaultFile {
    fn kind(&self) -> &'static str {
        "[iommufd-pgfault]"
    }

    fn read(&self, buf: &mut [u8], _nonblock: bool) -> Result<usize> {
        self.fault.read_records(buf)
    }

    fn write(&self, buf: &[u8]) -> Result<usize> {
        self.fault.write_responses(buf)
    }

    /// Record by record straight into the reader's memory: a large count
    /// costs nothing, and a record that cannot be copied leaves its group
    /// queued (as the kernel's restore), so no probe is needed.
    fn read_user(&self, buf: files::UserBuf<'_>, _nonblock: bool) -> Result<usize> {
        self.fault
            .read_records_with(buf.len, &mut |off, rec| buf.copy_out(off, rec))
    }

    /// Response by response straight from the writer's memory.
    fn write_user(&self, buf: files::UserBuf<'_>) -> Result<usize> {
        self.fault
            .write_responses_with(buf.len, &mut |off, out| buf.copy_in(off, out))
    }

    fn poll_events(&self) -> i16 {
        self.fault.poll_events()
    }
}

/// Look up a fault queue (`ENOENT` when `id` names nothing or something else).
pub fn get_fault(ctx: &Context, id: ObjId) -> Result<Arc<Fault>> {
    ctx.get::<Fault>(id)
}
