//! The source side of `uiommufd migrate`.

use std::time::{Duration, Instant};

use uiommufd::vfio::migration::MigState;

use super::lanes::LaneTx;
use super::records::{self, RECORD, TRAFFIC_SEQ};
use super::report::{Progress, Report, Round};
use super::vm::{Vm, PAGE};
use super::wire::{self, Tag, Wire};
use super::{clock, floor, sched, Opts, Sock};

type R<T> = Result<T, String>;

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Send the pages whose bits are set in `bm` (all pages when `None`),
/// counting from `sent` pages of a round of `total`; returns the pages
/// sent now.
fn send_pages(
    w: &mut Wire<Sock>,
    lane: &mut Option<LaneTx>,
    vm: &Vm,
    bm: Option<&[u64]>,
    round: u32,
    (sent0, total, t): (u64, u64, Instant),
    progress: &Progress,
) -> R<u64> {
    let npages = vm.size / PAGE;
    let mut sent = sent0;
    let mut last_shown = 0u64;
    let mut send_run = |w: &mut Wire<Sock>, first: u64, n: u64| -> R<()> {
        match lane {
            // SAFETY: the run lies inside guest memory, which stays mapped.
            Some(l) => unsafe { l.send_run(w, vm.mem, first, n) },
            // SAFETY: as above.
            None => unsafe {
                w.send_with(
                    Tag::Pages,
                    first,
                    n,
                    0,
                    vm.mem.add((first * PAGE) as usize),
                    (n * PAGE) as usize,
                )
            },
        }
        .map_err(io("sending pages"))?;
        sent += n;
        if sent - last_shown >= 16384 {
            last_shown = sent;
            let el = t.elapsed().as_secs_f64().max(1e-9);
            progress.update(round, sent, total, sent * PAGE, (sent * PAGE) as f64 / el);
        }
        Ok(())
    };
    match bm {
        None => {
            let step = 16384;
            let mut p = 0;
            while p < npages {
                let n = step.min(npages - p);
                send_run(w, p, n)?;
                p += n;
            }
        }
        Some(b) => {
            let mut run: Option<(u64, u64)> = None;
            for (i, &word) in b.iter().enumerate() {
                let mut x = word;
                while x != 0 {
                    let p = i as u64 * 64 + u64::from(x.trailing_zeros());
                    x &= x - 1;
                    if p >= npages {
                        break;
                    }
                    run = match run {
                        Some((f, n)) if f + n == p && n < 16384 => Some((f, n + 1)),
                        Some((f, n)) => {
                            send_run(w, f, n)?;
                            Some((p, 1))
                        }
                        None => Some((p, 1)),
                    };
                }
            }
            if let Some((f, n)) = run {
                send_run(w, f, n)?;
            }
        }
    }
    Ok(sent - sent0)
}

/// Where sample `k` of the copy next to the downtime takes its `len`
/// bytes of guest memory (of `size`), for a final set starting at byte
/// `first`: the `k`-th region of that length before it, or after it where
/// there is no room before.
///
/// Never the final set's own pages, and a new region for each sample: a
/// copy of pages just copied finds them in the caches, and ran up to twice
/// as fast here (three copies of the same bytes went 3.5, 4.2, 6.6 GiB/s),
/// which measures the caches, not the socket. The device's record stream
/// moves through memory in order, so the bytes before the final set are
/// the ones it wrote just before it — as the final copy found its own.
fn next_to(first: u64, len: u64, size: u64, k: u64) -> u64 {
    let back = (k + 1) * len;
    if first >= back {
        first - back
    } else {
        (first + back).min(size.saturating_sub(len))
    }
}

/// Write a zero into each 4 KiB page of `len` bytes at `p` (volatile: a
/// write of the zero a fresh zeroed allocation already holds must not be
/// optimized away, as the page fault it takes is the point).
fn prefault(p: *mut u8, len: usize) {
    for off in (0..len).step_by(PAGE as usize) {
        // SAFETY: inside the caller's allocation of `len` bytes.
        unsafe { p.add(off).write_volatile(0) };
    }
}

/// The first page set in a bitmap.
fn first_page(bm: &[u64]) -> Option<u64> {
    bm.iter()
        .position(|w| *w != 0)
        .map(|i| i as u64 * 64 + u64::from(bm[i].trailing_zeros()))
}

/// Pages set in a bitmap.
fn count(bm: &[u64]) -> u64 {
    bm.iter().map(|w| u64::from(w.count_ones())).sum()
}

/// Send a pre-copy round: the pages whose bits are set in `bm` (all pages
/// when `None`).
///
/// The round ends when the destination says it has read it all
/// ([`Tag::Received`]), and its copy time runs to then: so the time is
/// that of the transfer, not of handing bytes to the socket, and the stop
/// that may follow finds no earlier round still queued in the socket
/// ahead of the final pages (they would wait behind it, in the downtime).
/// The stop-and-copy round is sent by [`run`] itself (in two parts, see
/// there) and not waited for: `Finish` follows it at once, and the
/// downtime runs to the destination's resume.
fn send_round(
    w: &mut Wire<Sock>,
    lane: &mut Option<LaneTx>,
    vm: &Vm,
    bm: Option<&[u64]>,
    round: u32,
    progress: &Progress,
) -> R<Round> {
    let total = bm.map_or(vm.size / PAGE, count);
    let t = Instant::now();
    // Round 0 runs at normal priority (sched.rs), where a second reader
    // would wait for a CPU: one connection, as its floor.
    // (Its LaneEnd, with 0 pages, still tells the lane the round ended.)
    let mut none = None;
    let pages_lane = if round == 0 { &mut none } else { &mut *lane };
    let sent = send_pages(w, pages_lane, vm, bm, round, (0, total, t), progress)?;
    let on_lane = match lane {
        Some(l) => l
            .end_round(round, false)
            .map_err(io("ending a round on the page lane"))?,
        None => 0,
    };
    w.send(Tag::EndRound, u64::from(round), sent - on_lane, 1)
        .map_err(io("ending a round"))?;
    let h = w
        .expect(Tag::Received)
        .map_err(io("waiting for the destination to read a round"))?;
    if h.a != u64::from(round) || h.b != sent {
        return Err(format!(
            "the destination read round {} with {} pages, not round {round} with {sent}",
            h.a, h.b
        ));
    }
    Ok(Round {
        round,
        pages: sent,
        bytes: sent * PAGE,
        copy: t.elapsed(),
        stopped: false,
        ..Default::default()
    })
}

/// Closes a migration data fd (the session's end) however `run` returns.
struct CloseOnDrop(i32);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = uiommufd::plumbing::files::close(self.0);
    }
}

/// Restarts the source device if the migration fails after stopping it.
struct Restart<'a>(Option<&'a Vm>);

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        if let Some(vm) = self.0 {
            match vm.mig_set(MigState::Running) {
                Ok(_) => eprintln!("uiommufd migrate: the source device runs again"),
                Err(e) => eprintln!("uiommufd migrate: restarting the source device: {e}"),
            }
        }
    }
}

/// Migrate to the destination on `sock`.
pub fn run(sock: Sock, o: &Opts) -> R<Report> {
    let start = Instant::now();
    let spec = format!(
        "dma-engine,addr=0000:f7:00.0,group=7700,cdev=7700,traffic_iova=0,traffic_size={},rate={}",
        o.size, o.rate
    );
    let vm = Vm::new(o.size, o.tracker, &spec, true)?;
    let progress = Progress::new(o.quiet);
    sock.grow_send_buffer();
    let mut w = Wire::new(sock);
    if !o.plain_copy {
        w.zero_copy();
    }
    w.send(Tag::Hello, wire::MAGIC, o.size, PAGE)
        .map_err(io("greeting the destination"))?;
    // Round 0 starts once the destination's memory is ready, so that its
    // set-up is not counted as transfer time.
    let ready = w
        .expect(Tag::Ready)
        .map_err(io("waiting for the destination to set up"))?;
    let hosts = (clock::host_id(), ready.a);
    // The stop path runs real-time where it may, and the raw copies it is
    // compared with then do too (sched.rs).
    let rt_wanted = !o.no_realtime;
    // A second page lane where the destination offers one and this side
    // runs real-time too (lanes.rs).
    let mut lane = if ready.b >= 1
        && o.lanes >= 2
        && matches!(w.sock(), Sock::Unix(_))
        && sched::Rt::allowed(rt_wanted)
    {
        Some(LaneTx::open(&mut w, !o.plain_copy)?)
    } else {
        None
    };
    // The raw copy's first sample, right before round 0 and with the
    // destination idle (taken before the greeting, as it once was, it
    // competed with the destination's start and set-up). floor.rs: the
    // others follow the verification, the fastest counts.
    let raw_len = o.size.min(floor::SAMPLE_BYTES) as usize;
    // SAFETY: guest memory, mapped for the Vm's life.
    let mut raw_samples = vec![unsafe { floor::raw_socket_rate(vm.mem, raw_len, false) }];
    // The bound's samples, real-time as the stop path, where it runs so
    // (else the samples above serve both).
    let rt_floor = sched::Rt::allowed(rt_wanted);
    let mut bound_samples = Vec::new();
    if rt_floor {
        // SAFETY: as above.
        bound_samples.push(unsafe { floor::raw_socket_rate(vm.mem, raw_len, true) });
    }
    vm.start_tracking()?;
    // Device pre-copy: its data fd is opened now and its snapshot sent
    // with round 0; at the stop only the final record follows on it.
    let data_fd = vm.start_precopy()?;
    let _close = CloseOnDrop(data_fd);
    let early = vm.read_data(data_fd)?;
    w.send(Tag::Device, early.len() as u64, 0, 0)
        .map_err(io("sending the device's pre-copy data"))?;
    w.send_bytes(&early)
        .map_err(io("sending the device's pre-copy data"))?;
    let mut rep = Report {
        tracker: o.tracker.name().to_string(),
        mem_bytes: o.size,
        page_size: PAGE,
        huge_text: crate::hugetext::huge_bytes(),
        ..Default::default()
    };
    // The bitmap every read goes into, the stop path's too, made (and its
    // pages faulted in) before round 0, as a VMM keeps its dirty bitmap:
    // never allocated in a round, nor in the downtime. One bitmap, not a
    // second one for the final read: this one was just read and scanned
    // (the pre-stop read) and is still in the caches; a second one would
    // be read cold in the downtime (32 KiB per GiB, and type1's read
    // touches every word of it).
    let npages = o.size / PAGE;
    let mut bm = vec![0u64; npages.div_ceil(64) as usize];
    prefault(bm.as_mut_ptr().cast(), bm.len() * 8);
    let r0 = send_round(&mut w, &mut lane, &vm, None, 0, &progress)?;
    progress.finish(&r0);
    let mut rate = r0.rate();
    rep.rounds.push(r0);
    // From the end of round 0 to the destination's answer (the bitmap
    // reads, the small rounds and the stop path), real-time where allowed,
    // as the destination's readers (sched.rs).
    let rt = sched::Rt::enter(rt_wanted);
    rep.realtime = rt.on();
    let budget = Duration::from_secs_f64(o.downtime_ms.max(0.0) / 1e3);
    let mut round = 1;
    // The words of `bm` the last read set: cleared before the next read,
    // which wants a zeroed bitmap (Vm::sync_dirty).
    let mut set: Vec<usize> = Vec::new();
    let bitmap = loop {
        for &i in &set {
            bm[i] = 0;
        }
        let t = Instant::now();
        vm.sync_dirty(&mut bm)?;
        let bitmap = t.elapsed();
        set.clear();
        set.extend(
            bm.iter()
                .enumerate()
                .filter(|(_, w)| **w != 0)
                .map(|(i, _)| i),
        );
        let dirty: u64 = set.iter().map(|&i| u64::from(bm[i].count_ones())).sum();
        let est = Duration::from_secs_f64((dirty * PAGE) as f64 / rate.max(1.0));
        if est <= budget || round >= o.max_rounds {
            break bitmap;
        }
        let mut r = send_round(&mut w, &mut lane, &vm, Some(&bm), round, &progress)?;
        r.bitmap = bitmap;
        progress.finish(&r);
        if r.bytes > 0 {
            rate = r.rate();
        }
        rep.rounds.push(r);
        round += 1;
    };

    // Everything the stop path needs is made before the stop, not in the
    // downtime: the bitmap (above), room for the words of it the pre-stop
    // read set (kept aside for the final read), for the device's final
    // state and the buffer it is read through.
    let mut early_words: Vec<u64> = Vec::with_capacity(set.len());
    let fin_first = first_page(&bm).map_or(0, |p| p * PAGE);
    let mut state = vec![0u8; 1 << 16];
    let mut state_buf = vec![0u8; 1 << 16];
    // Zeroed allocations are mapped lazily: touch each page now, so that
    // the stop path takes no page fault in them.
    prefault(state.as_mut_ptr(), state.len());
    prefault(state_buf.as_mut_ptr(), state_buf.len());
    state.clear();
    // Stop and copy. Right after the stop, while the engine's code and
    // data are still in the caches from the read before it and nothing
    // else runs, the tracker is read a last time into the same bitmap
    // (the words the read before the stop set are kept aside, zeroed for
    // the read, and put back: the bitmap then holds the whole final set);
    // then every page goes into the socket, whose send buffer holds them
    // all (`Sock::grow_send_buffer`): zero-copy, that takes a fraction of
    // the time the destination needs to read them. While it reads, the
    // source reads the device's final state and sends it and `Finish`
    // behind the pages, so the state costs no downtime of its own; the
    // destination writes it into its resuming fd when it reaches it.
    //
    // (The final read used to come after the pages were queued, hidden
    // behind the destination's reading: but then it competed with the
    // transfer for the two CPUs and found the caches full of page data:
    // type1's took 9-14 us there and takes 3-6 us here, hwpt's 3-7 and
    // 1-3, which the downtime now carries.)
    let t_stop = clock::now_ns();
    vm.stop_copy()?;
    let restart = Restart(Some(&vm));
    let t_stopped = clock::now_ns();
    early_words.extend(set.iter().map(|&i| bm[i]));
    for &i in &set {
        bm[i] = 0;
    }
    let t = Instant::now();
    vm.sync_dirty(&mut bm)?;
    let fin_read = t.elapsed();
    for (&i, &early) in set.iter().zip(&early_words) {
        bm[i] |= early;
    }
    let t_synced = clock::now_ns();
    let t_pages_i = Instant::now();
    let total = count(&bm);
    let pages = send_pages(
        &mut w,
        &mut lane,
        &vm,
        Some(&bm),
        round,
        (0, total, t_pages_i),
        &progress,
    )?;
    let t_queued = clock::now_ns();
    vm.read_data_into(data_fd, &mut state, &mut state_buf)?;
    let last_seq = vm.bar0_read64(TRAFFIC_SEQ)?;
    let on_lane = match &mut lane {
        Some(l) => l
            .end_round(round, true)
            .map_err(io("ending the final round on the page lane"))?,
        None => 0,
    };
    w.send(Tag::Device, state.len() as u64, 0, 0)
        .map_err(io("sending the device state"))?;
    w.send_bytes(&state)
        .map_err(io("sending the device state"))?;
    w.send(Tag::EndRound, u64::from(round), pages - on_lane, 0)
        .map_err(io("ending the final round"))?;
    w.send(Tag::Finish, 0, last_seq, pages)
        .map_err(io("finishing"))?;
    let t_sent = clock::now_ns();
    let h = w
        .expect(Tag::Resumed)
        .map_err(io("waiting for the destination to resume"))?;
    let t_answer = clock::now_ns();
    drop(rt);
    // The destination's stamps where they are on our clock (clock.rs),
    // else what we saw: its answer, our last write.
    let t_resumed =
        clock::on_our_clock(hosts.0, hosts.1, h.a, t_stop, t_answer).unwrap_or(t_answer);
    let t_read = clock::on_our_clock(hosts.0, hosts.1, h.b, t_stopped, t_answer).unwrap_or(t_sent);
    // The session ends (STOP_COPY → STOP) once it cost no downtime.
    vm.mig_set(MigState::Stop)?;
    rep.downtime = Duration::from_nanos(t_resumed.saturating_sub(t_stop));
    rep.downtime_parts = clock::parts(
        t_stop,
        &[
            ("device stop", t_stopped),
            ("final bitmap", t_synced),
            ("final pages queued", t_queued),
            ("device state sent", t_sent),
            ("destination reads the rest", t_read),
            ("destination resume", t_resumed),
        ],
    );
    // The final round's copy time: from its first page (queued after the
    // final read) to the destination having read its last (when it says
    // so on our clock; else to our last write).
    let r = Round {
        round,
        pages,
        bytes: pages * PAGE,
        copy: Duration::from_nanos(t_read.saturating_sub(t_synced)),
        bitmap: bitmap + fin_read,
        stopped: true,
    };
    progress.finish(&r);
    rep.rounds.push(r);
    rep.device_bytes = (early.len() + state.len()) as u64;
    rep.device_stop_bytes = state.len() as u64;
    // The destination runs now: from here on, the source must not.
    std::mem::forget(restart);

    // The raw copy next to the downtime (floor.rs): as many bytes as the
    // bound covers, through this socket to the destination process, taken
    // as soon as the destination's device has written its verification
    // records and stopped (milliseconds after the resume), before either
    // side's digest.
    w.expect(Tag::Quiet)
        .map_err(io("waiting for the destination to stop its device"))?;
    let fin_len = (pages * PAGE + state.len() as u64).clamp(PAGE, o.size);
    w.send(Tag::RawPrep, fin_len, 0, 0)
        .map_err(io("raw copy"))?;
    w.expect(Tag::RawReady).map_err(io("raw copy"))?;
    let rt = sched::Rt::enter(rt_wanted);
    for k in 0..floor::SAMPLES {
        let fin_off = next_to(fin_first, fin_len, o.size, k as u64);
        let t0 = clock::now_ns();
        w.send(Tag::Raw, fin_len, 0, 0).map_err(io("raw copy"))?;
        // SAFETY: inside guest memory, mapped for the Vm's life.
        unsafe { w.send_raw(vm.mem.add(fin_off as usize), fin_len as usize) }
            .map_err(io("raw copy"))?;
        let h = w.expect(Tag::RawDone).map_err(io("raw copy"))?;
        let now = clock::now_ns();
        let t1 = clock::on_our_clock(hosts.0, hosts.1, h.a, t0, now).unwrap_or(now);
        rep.next_raw_samples
            .push(fin_len as f64 / ((t1 - t0) as f64 / 1e9).max(1e-9));
    }
    drop(rt);
    rep.next_raw_rate = floor::best(&rep.next_raw_samples);
    w.send(Tag::Go, 0, 0, 0)
        .map_err(io("letting the destination verify"))?;

    // Verification (outside the downtime): write into our stopped memory
    // what the destination's device wrote after resuming, then compare.
    let v = w
        .expect(Tag::Verdict)
        .map_err(io("waiting for the verdict"))?;
    let (their_digest, end_seq, their_stream_ok) = (v.a, v.b, v.c == 1);
    let window = o.size - o.size % RECORD;
    let from = last_seq.max(end_seq.saturating_sub(window / RECORD));
    for seq in from..end_seq {
        let rec = records::record(seq);
        // SAFETY: the slot lies inside guest memory; the device is stopped.
        unsafe {
            std::ptr::copy_nonoverlapping(
                rec.as_ptr(),
                vm.mem.add(records::slot(seq, window) as usize),
                rec.len(),
            )
        };
    }
    // SAFETY: guest memory, mapped for the Vm's life.
    let ours = unsafe { wire::digest(vm.mem, o.size as usize) };
    rep.memory_ok = ours == their_digest;
    rep.stream = (last_seq.wrapping_sub(1), last_seq);
    rep.stream_ok = their_stream_ok && end_seq > last_seq;
    // The raw copy's other samples, once the destination is gone (its exit
    // unmaps its memory, which would compete with them).
    w.wait_closed(Duration::from_secs(5));
    for _ in 1..floor::SAMPLES {
        // SAFETY: guest memory, mapped for the Vm's life.
        raw_samples.push(unsafe { floor::raw_socket_rate(vm.mem, raw_len, false) });
        if rt_floor {
            // SAFETY: as above.
            bound_samples.push(unsafe { floor::raw_socket_rate(vm.mem, raw_len, true) });
        }
    }
    rep.raw_rate = floor::best(&raw_samples);
    rep.raw_samples = raw_samples;
    rep.bound_rate = if rt_floor {
        floor::best(&bound_samples)
    } else {
        rep.raw_rate
    };
    rep.bound_samples = bound_samples;
    rep.total = start.elapsed();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_counts_and_first_page() {
        assert_eq!(first_page(&[0, 0]), None);
        assert_eq!(first_page(&[0, 1 << 5 | 1 << 9]), Some(69));
        assert_eq!(count(&[0b1011, !0]), 67);
    }

    #[test]
    fn the_copy_next_to_the_downtime_reads_the_memory_next_to_the_final_set() {
        // before it, a new region each time
        assert_eq!(next_to(100 << 20, 10 << 20, 1 << 30, 0), 90 << 20);
        assert_eq!(next_to(100 << 20, 10 << 20, 1 << 30, 2), 70 << 20);
        assert_eq!(next_to(10 << 20, 10 << 20, 1 << 30, 0), 0);
        // after it where there is no room before
        assert_eq!(next_to(10 << 20, 10 << 20, 1 << 30, 1), 30 << 20);
        assert_eq!(next_to(4 << 20, 10 << 20, 1 << 30, 0), 14 << 20);
        // never past the end
        assert_eq!(next_to(4 << 20, 10 << 20, 20 << 20, 0), 10 << 20);
        assert_eq!(next_to(0, 1 << 30, 1 << 30, 2), 0);
    }
}
