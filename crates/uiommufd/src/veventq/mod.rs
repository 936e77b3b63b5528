//! vEVENT queues (the kernel's eventq.c, `IOMMUFD_OBJ_VEVENTQ`) and
//! `IOMMU_VEVENTQ_ALLOC` (Linux 6.15).
//!
//! A vEVENTQ belongs to one vIOMMU, at most one per type; the vIOMMU's
//! driver reports events to it ([`crate::viommu::Viommu::report_event`]),
//! and user space reads them from the queue's fd ([`VeventqFile`]). The fd
//! holds the queue, so the queue cannot be destroyed while it is open
//! (`EBUSY`), and the queue holds its vIOMMU.
//!
//! The queue follows 7.2's eventq.c exactly:
//!
//! * each event is queued with the next sequence number (31 bits, wrapping
//!   to 0), while fewer than `veventq_depth` events wait; when the queue is
//!   full the event is lost instead, and one *lost-events header*
//!   (`IOMMU_VEVENTQ_FLAG_LOST_EVENTS`, no data) stands at the tail in its
//!   place, carrying the sequence number the lost event had: each further
//!   loss moves it to the tail with a new number, and the next event that
//!   is queued replaces it (the gap in the numbers tells the loss);
//! * `read` hands out whole events, each a `struct iommufd_vevent_header`
//!   followed by its data. A count below the header is `EINVAL` (also on
//!   an empty queue); an event that does not fit is `EINVAL` when it is the
//!   first, otherwise the read stops short; an empty queue reads 0 bytes
//!   and `read` never blocks (wait with `poll`). A copy that faults puts
//!   the event back (`EFAULT` when nothing was read).
//! * `poll` is readable while events wait; the fd is never writable, and
//!   `write` is `EINVAL` (no write op).

pub(crate) mod ioctl;

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use zerocopy::IntoBytes;

use crate::context::{Context, Object};
use crate::files::{self, EngineFile};
use crate::uapi::*;
use crate::viommu::Viommu;
use crate::{bail, Error, Result};

/// The most events a queue may hold (`VEVENTQ_MAX_DEPTH`).
pub const VEVENTQ_MAX_DEPTH: u32 = 1 << 19;

/// Size of the header before each event.
const HDR: usize = size_of::<IommufdVeventHeader>();

#[derive(Debug, Clone)]
enum Entry {
    /// A queued event and its sequence number.
    Event { seq: u32, data: Vec<u8> },
    /// The lost-events header and its sequence number.
    Lost { seq: u32 },
}

impl Entry {
    fn header(&self) -> IommufdVeventHeader {
        match *self {
            Entry::Event { seq, .. } => IommufdVeventHeader {
                flags: 0,
                sequence: seq,
            },
            Entry::Lost { seq } => IommufdVeventHeader {
                flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS,
                sequence: seq,
            },
        }
    }
}

#[derive(Debug, Default)]
struct State {
    deliver: VecDeque<Entry>,
    /// Events queued (the lost-events header does not count).
    num_events: u32,
    /// The sequence number of the next entry.
    sequence: u32,
}

/// A vEVENT queue object.
#[derive(Debug)]
pub struct Veventq {
    viommu: Arc<Viommu>,
    ty: u32,
    depth: u32,
    state: Mutex<State>,
    /// The fd's file, to resync its readiness.
    file: files::QueueLink<VeventqFile>,
}

impl Object for Veventq {
    const KIND: &'static str = "vEVENTQ";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_VEVENTQ");
}

impl Veventq {
    /// A new, empty queue of type `ty` holding at most `depth` events on
    /// `viommu`, with no fd yet.
    pub(crate) fn new(viommu: Arc<Viommu>, ty: u32, depth: u32) -> Arc<Veventq> {
        Arc::new(Veventq {
            viommu,
            ty,
            depth,
            state: Mutex::new(State::default()),
            file: files::QueueLink::default(),
        })
    }

    /// The queue type (`IOMMU_VEVENTQ_TYPE_*`).
    pub fn queue_type(&self) -> u32 {
        self.ty
    }
    /// The most events it holds.
    pub fn depth(&self) -> u32 {
        self.depth
    }
    /// The vIOMMU.
    pub fn viommu(&self) -> &Arc<Viommu> {
        &self.viommu
    }
    /// Entries waiting to be read (the lost-events header counts as one).
    pub fn pending(&self) -> usize {
        self.state.lock().deliver.len()
    }

    /// Queue one event of `data`, or record its loss when the queue is full
    /// (`iommufd_viommu_report_event` + `iommufd_vevent_handler`).
    pub(crate) fn report(&self, data: &[u8]) {
        {
            let mut st = self.state.lock();
            let seq = st.sequence;
            let entry = if st.num_events == self.depth {
                tracing::debug!(
                    ty = format_args!("{:#x}", self.ty),
                    depth = self.depth,
                    "vEVENTQ full: the event is lost"
                );
                Entry::Lost { seq }
            } else {
                st.num_events += 1;
                Entry::Event {
                    seq,
                    data: data.to_vec(),
                }
            };
            // the lost-events header only ever stands at the tail; whatever
            // comes next takes its place
            if matches!(st.deliver.back(), Some(Entry::Lost { .. })) {
                st.deliver.pop_back();
            }
            st.deliver.push_back(entry);
            st.sequence = seq.wrapping_add(1) & i32::MAX as u32;
        }
        self.file.arrived();
        self.file.notify();
    }

    /// `read(2)` of the fd into `buf` (see the module docs).
    pub fn read_events(&self, buf: &mut [u8]) -> Result<usize> {
        self.read_events_with(buf.len(), &mut files::into_slice(buf))
    }

    /// `read(2)` of the fd for a buffer of `len` bytes: each piece is handed
    /// to `put(offset, bytes)`, a copy to the reader's memory that may fail
    /// (the event then stays queued).
    pub fn read_events_with(
        &self,
        len: usize,
        put: &mut dyn FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<usize> {
        if len < HDR {
            bail!(
                EINVAL,
                "vEVENTQ read: {len} bytes cannot hold the {HDR}-byte header"
            );
        }
        let mut st = self.state.lock();
        let mut done = 0usize;
        let mut rc: Result<()> = Ok(());
        while let Some(cur) = st.deliver.pop_front() {
            let restore = |st: &mut State, cur: Entry| match cur {
                // the header is put back only on an empty queue: an entry
                // queued since replaced it
                Entry::Lost { .. } if !st.deliver.is_empty() => {}
                e => st.deliver.push_front(e),
            };
            if done >= len || HDR > len - done {
                restore(&mut st, cur);
                break;
            }
            let data_len = match &cur {
                Entry::Event { data, .. } => data.len(),
                Entry::Lost { .. } => 0,
            };
            if HDR + data_len > len - done {
                restore(&mut st, cur);
                if done == 0 {
                    rc = Err(Error::new(
                        libc::EINVAL,
                        format!(
                            "vEVENTQ read: {len} bytes cannot hold the next event ({} bytes)",
                            HDR + data_len
                        ),
                    ));
                }
                break;
            }
            if let Err(e) = put(done, cur.header().as_bytes()) {
                restore(&mut st, cur);
                rc = Err(e);
                break;
            }
            if let Entry::Event { data, .. } = &cur {
                if let Err(e) = put(done + HDR, data) {
                    restore(&mut st, cur);
                    rc = Err(e);
                    break;
                }
                st.num_events -= 1;
            }
            done += HDR + data_len;
        }
        files::partial(done, rc)
    }

    /// `poll` events of the fd.
    pub fn poll_events(&self) -> i16 {
        if self.state.lock().deliver.is_empty() {
            0
        } else {
            libc::POLLIN | libc::POLLRDNORM
        }
    }
}

/// The vEVENTQ fd's file: the queue, and the context it keeps alive.
#[derive(Debug)]
pub struct VeventqFile {
    queue: Arc<Veventq>,
    _ctx: Arc<Context>,
}

impl VeventqFile {
    /// The fd's file of `queue` (which resyncs it from now on), keeping
    /// `ctx` alive.
    pub(crate) fn new(queue: &Arc<Veventq>, ctx: Arc<Context>) -> Arc<VeventqFile> {
        let file = Arc::new(VeventqFile {
            queue: queue.clone(),
            _ctx: ctx,
        });
        queue.file.set(&file);
        file
    }

    /// The queue behind the fd.
    pub fn queue(&self) -> &Arc<Veventq> {
        &self.queue
    }
}

impl EngineFile for VeventqFile {
    fn kind(&self) -> &'static str {
        "[iommufd-viommu-event]"
    }

    fn read(&self, buf: &mut [u8], _nonblock: bool) -> Result<usize> {
        self.queue.read_events(buf)
    }

    /// Event by event straight into the reader's memory.
    fn read_user(&self, buf: files::UserBuf<'_>, _nonblock: bool) -> Result<usize> {
        self.queue
            .read_events_with(buf.len, &mut |off, b| buf.copy_out(off, b))
    }

    fn poll_events(&self) -> i16 {
        self.queue.poll_events()
    }
}
