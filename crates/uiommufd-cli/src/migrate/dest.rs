//! The destination side of `uiommufd migrate`.

use std::time::{Duration, Instant};

use uiommufd::vfio::migration::MigState;

use super::lanes::LaneRx;
use super::records::{self, RECORD, TRAFFIC_COUNT, TRAFFIC_SEQ};
use super::vm::{Vm, PAGE};
use super::wire::{self, Tag, Wire};
use super::{clock, sched};
use super::{Opts, Sock};

type R<T> = Result<T, String>;

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Take part in the source's raw copies (`floor.rs`: the downtime's
/// floor) until it says `Go`: read each into a buffer made and touched
/// beforehand, and say when the last byte was read.
fn raw_copies(w: &mut Wire<Sock>, size: u64, rt: bool) -> R<()> {
    let mut buf: Vec<u8> = Vec::new();
    // As the final round was read (sched.rs).
    let _rt = sched::Rt::enter(rt);
    loop {
        let h = w.recv().map_err(io("waiting for the source to measure"))?;
        match h.tag {
            Tag::RawPrep if h.a <= size => {
                buf = vec![1u8; h.a as usize];
                w.send(Tag::RawReady, 0, 0, 0).map_err(io("raw copy"))?;
            }
            Tag::Raw if h.a == buf.len() as u64 => {
                // SAFETY: our own buffer of that length.
                unsafe { w.recv_raw(buf.as_mut_ptr(), buf.len()) }.map_err(io("raw copy"))?;
                w.send(Tag::RawDone, clock::now_ns(), 0, 0)
                    .map_err(io("raw copy"))?;
            }
            Tag::Go => return Ok(()),
            t => return Err(format!("unexpected {t:?} (a = {}) while measuring", h.a)),
        }
    }
}

/// Receive one migration on `sock`.
pub fn run(sock: Sock, o: &Opts) -> R<()> {
    let mut w = Wire::new(sock);
    let h = w.expect(Tag::Hello).map_err(io("waiting for the source"))?;
    if h.a != wire::MAGIC || h.c != PAGE {
        return Err(format!(
            "not a uiommufd migration stream (magic {:#x}, page size {})",
            h.a, h.c
        ));
    }
    let size = h.b;
    // The destination's device: the same model, with its traffic off until
    // the source's state is loaded.
    let vm = Vm::new(
        size,
        o.tracker,
        "dma-engine,addr=0000:f7:00.0,group=7700,cdev=7700",
        false,
    )?;
    // On a Unix socket, and where its readers run real-time, offer a
    // second page lane (lanes.rs); the source's first message then may
    // carry it.
    let rt_wanted = !o.no_realtime;
    let offer = matches!(w.sock(), Sock::Unix(_)) && sched::Rt::allowed(rt_wanted);
    w.send(Tag::Ready, clock::host_id(), u64::from(offer), 0)
        .map_err(io("reporting ready"))?;
    let npages = size / PAGE;
    // Declared after `vm`: dropped (its thread stopped and joined) before
    // guest memory is unmapped.
    let mut lane: Option<LaneRx> = None;
    let mut first = None;
    if offer {
        let (h, fd) = w.recv_fd().map_err(io("receiving"))?;
        match (h.tag, fd) {
            (Tag::Lane, Some(fd)) => {
                // SAFETY: guest memory stays mapped while `lane` lives (it
                // is dropped first); the lane's pages are written by it
                // alone (the source sends each page of a round once).
                lane = Some(unsafe { LaneRx::start(fd, vm.mem, npages, rt_wanted) }?);
            }
            (Tag::Lane, None) => return Err("a page lane without its socket".into()),
            (_, Some(_)) => return Err("a file descriptor in the migration stream".into()),
            (_, None) => first = Some(h),
        }
    }
    // The device's migration data arrives in pieces (its pre-copy snapshot
    // with round 0, its final state after the stop): each goes into the
    // resuming data fd at once, so that at the end only RESUMING → RUNNING
    // is left.
    let mut resume_fd: Option<i32> = None;
    // When the final round (the one the source does not wait for) was read.
    let mut final_read = 0;
    let mut rt = None;
    let last_seq = loop {
        let h = match first.take() {
            Some(h) => h,
            None => w.recv().map_err(io("receiving"))?,
        };
        match h.tag {
            Tag::Pages => {
                if h.a.checked_add(h.b).is_none_or(|e| e > npages) {
                    return Err(format!(
                        "pages {}+{} outside guest memory ({npages} pages)",
                        h.a, h.b
                    ));
                }
                // SAFETY: inside guest memory; nothing holds a reference to it.
                unsafe { w.recv_raw(vm.mem.add((h.a * PAGE) as usize), (h.b * PAGE) as usize) }
                    .map_err(io("receiving pages"))?;
            }
            Tag::EndRound => {
                // The round is read once the lane has read its part too.
                let on_lane = match &lane {
                    Some(l) => l.wait_round(h.a)?,
                    None => 0,
                };
                if h.c == 0 {
                    final_read = clock::now_ns();
                } else {
                    w.send(Tag::Received, h.a, h.b + on_lane, 0)
                        .map_err(io("acknowledging a round"))?;
                    // Every round after round 0 is small, and the final
                    // one may be next: read them real-time (sched.rs)
                    // until the device runs.
                    if rt.is_none() {
                        rt = Some(sched::Rt::enter(rt_wanted));
                    }
                }
            }
            Tag::Device => {
                let data = w
                    .recv_vec(h.a, 64 << 20)
                    .map_err(io("receiving the device state"))?;
                let fd = match resume_fd {
                    Some(fd) => fd,
                    None => {
                        let fd = vm.start_resume()?;
                        resume_fd = Some(fd);
                        fd
                    }
                };
                vm.write_data(fd, &data)?;
            }
            Tag::Finish => break h.b,
            t => return Err(format!("unexpected {t:?} in the migration stream")),
        }
    };
    let Some(fd) = resume_fd else {
        return Err("the stream ended without the device state".into());
    };
    vm.finish_resume()?;
    // The downtime ends here, not when the source reads the message.
    let resumed = clock::now_ns();
    w.send(Tag::Resumed, resumed, final_read, 0)
        .map_err(io("reporting the resume"))?;
    drop(rt);
    // The resuming fd is no longer needed once the device left RESUMING:
    // closed after the resume, not in the downtime.
    let _ = uiommufd::plumbing::files::close(fd);

    // Let the device go on for a while, then stop it to check.
    let c0 = vm.bar0_read64(TRAFFIC_COUNT)?;
    let t = Instant::now();
    while vm.bar0_read64(TRAFFIC_COUNT)? < c0 + 64 && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(1));
    }
    vm.mig_set(MigState::Stop)?;
    // The source measures its raw copies next to the downtime now; the
    // digest below would compete with them.
    w.send(Tag::Quiet, 0, 0, 0)
        .map_err(io("reporting the device stopped"))?;
    raw_copies(&mut w, size, rt_wanted)?;
    let end_seq = vm.bar0_read64(TRAFFIC_SEQ)?;
    let window = size - size % RECORD;
    let first = last_seq
        .saturating_sub(1)
        .max(end_seq.saturating_sub(window / RECORD));
    let mut stream_ok = end_seq > last_seq;
    for seq in first..end_seq {
        let mut got = [0u8; RECORD as usize];
        // SAFETY: the slot lies inside guest memory; the device is stopped.
        unsafe {
            std::ptr::copy_nonoverlapping(
                vm.mem.add(records::slot(seq, window) as usize),
                got.as_mut_ptr(),
                got.len(),
            )
        };
        if got != records::record(seq) {
            eprintln!("uiommufd migrate: record {seq} is missing or wrong on the destination");
            stream_ok = false;
            break;
        }
    }
    // SAFETY: guest memory, mapped for the Vm's life.
    let digest = unsafe { wire::digest(vm.mem, size as usize) };
    w.send(Tag::Verdict, digest, end_seq, u64::from(stream_ok))
        .map_err(io("sending the verdict"))?;
    vm.mig_set(MigState::Running)?;
    Ok(())
}
