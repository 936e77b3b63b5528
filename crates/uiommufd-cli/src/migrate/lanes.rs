//! A second page lane: guest pages over two connections at once, so that
//! the destination reads them on both CPUs (as QEMU's multifd channels).
//!
//! With zero-copy sends the source hands pages to the socket for a small
//! part of what they cost the destination, which copies every byte out
//! of the socket into guest memory: one stream is bounded by one CPU's
//! copy on the receiving side. With a second connection and a second
//! receiving thread, both halves are copied at once.
//!
//! Only where both sides run the stop path real-time (`sched.rs`): on a
//! loaded machine without it, the second reading thread often waited a
//! scheduler slice for a CPU, and the final round waited for it (the
//! downtime got longer, not shorter).
//!
//! How it is set up: the destination offers lanes in its `Ready` (on a
//! Unix socket only); the source then makes a connected Unix socket pair
//! and sends one end over the main connection (`Tag::Lane`, the socket
//! attached with `SCM_RIGHTS`), so no second connection to the endpoint
//! is needed and a TCP migration, or a peer that offers none, stays on
//! one stream. Each round's pages are split in chunks of [`CHUNK`] pages
//! that alternate between the two connections; the lane's part of a
//! round ends with `Tag::LaneEnd` (its page count), which the destination
//! waits for before it acknowledges the round — and, for the final round,
//! before it resumes. Everything else (device state, control messages,
//! the raw copies) stays on the main connection.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;

use super::sched::Rt;
use super::vm::PAGE;
use super::wire::{Tag, Wire};
use super::Sock;

type R<T> = Result<T, String>;

/// Pages per chunk: small enough that a final round of a few MiB keeps
/// both lanes busy from its start, large enough that the three system
/// calls of a zero-copy chunk (header, `vmsplice`, `splice`) stay cheap.
pub const CHUNK: u64 = 256;

/// The source's end of the lane.
#[derive(Debug)]
pub struct LaneTx {
    /// The lane's stream.
    pub w: Wire<Sock>,
    /// Pages it carried in the round under way.
    pages: u64,
    /// The next chunk goes to the lane (else to the main connection).
    turn: bool,
}

impl LaneTx {
    /// Make a lane and hand its other end to the destination over `main`.
    pub fn open(main: &mut Wire<Sock>, zero_copy: bool) -> R<LaneTx> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("making a page lane: {e}"))?;
        let s = Sock::Unix(ours);
        s.set_timeouts();
        s.grow_send_buffer();
        main.send_fd(Tag::Lane, 0, 0, 0, theirs.as_raw_fd())
            .map_err(|e| format!("handing the destination a page lane: {e}"))?;
        drop(theirs);
        let mut w = Wire::new(s);
        if zero_copy {
            w.zero_copy();
        }
        Ok(LaneTx {
            w,
            pages: 0,
            turn: false,
        })
    }

    /// Send the run of `n` pages from `first` at `mem` (guest memory), in
    /// chunks alternating between `main` and the lane.
    ///
    /// # Safety
    /// The run must lie inside the mapping at `mem`, which stays mapped.
    pub unsafe fn send_run(
        &mut self,
        main: &mut Wire<Sock>,
        mem: *const u8,
        first: u64,
        n: u64,
    ) -> std::io::Result<()> {
        let mut p = first;
        let end = first + n;
        while p < end {
            let k = CHUNK.min(end - p);
            let w = if self.turn { &mut self.w } else { &mut *main };
            // SAFETY: inside the caller's run.
            unsafe {
                w.send_with(
                    Tag::Pages,
                    p,
                    k,
                    0,
                    mem.add((p * PAGE) as usize),
                    (k * PAGE) as usize,
                )
            }?;
            if self.turn {
                self.pages += k;
            }
            self.turn = !self.turn;
            p += k;
        }
        Ok(())
    }

    /// End the lane's part of round `round` (`last`: the final round, after
    /// which the lane carries nothing more): the pages it carried in it.
    pub fn end_round(&mut self, round: u32, last: bool) -> std::io::Result<u64> {
        let pages = std::mem::take(&mut self.pages);
        self.w
            .send(Tag::LaneEnd, u64::from(round), pages, u64::from(!last))?;
        Ok(pages)
    }
}

/// The destination's end of the lane: a thread reading the lane's pages
/// into guest memory and reporting each round's end.
#[derive(Debug)]
pub struct LaneRx {
    ends: mpsc::Receiver<R<(u64, u64)>>,
    /// For shutting the lane down from this side (see `Drop`).
    sock: Option<UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LaneRx {
    /// Start reading the lane `fd` into the `npages` pages of guest memory
    /// at `mem`, real-time after round 0 when `rt` (as the main
    /// connection's reader, `sched.rs`).
    ///
    /// # Safety
    /// `mem` must stay mapped until this `LaneRx` is dropped (its `Drop`
    /// stops and joins the thread), and nothing else may write the pages
    /// the lane carries while it does.
    pub unsafe fn start(fd: OwnedFd, mem: *mut u8, npages: u64, rt: bool) -> R<LaneRx> {
        let sock = UnixStream::from(fd);
        let shut = sock
            .try_clone()
            .map_err(|e| format!("the page lane: {e}"))?;
        let s = Sock::Unix(sock);
        s.set_timeouts();
        let (tx, ends) = mpsc::channel();
        let mem = mem as usize;
        let thread = std::thread::Builder::new()
            .name("migrate-lane".into())
            .spawn(move || receive(Wire::new(s), mem as *mut u8, npages, rt, &tx))
            .map_err(|e| format!("starting the page lane: {e}"))?;
        Ok(LaneRx {
            ends,
            sock: Some(shut),
            thread: Some(thread),
        })
    }

    /// Wait for the lane's end of round `round`: the pages it carried.
    pub fn wait_round(&self, round: u64) -> R<u64> {
        match self.ends.recv() {
            Ok(Ok((r, pages))) if r == round => Ok(pages),
            Ok(Ok((r, _))) => Err(format!(
                "the page lane ended round {r} where round {round} ended"
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the page lane ended early".into()),
        }
    }
}

impl Drop for LaneRx {
    fn drop(&mut self) {
        // A thread still reading (a failure elsewhere) wakes up with an
        // end of stream and returns before guest memory goes away.
        if let Some(s) = self.sock.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The lane thread: pages into guest memory until the final round's end.
fn receive(
    mut w: Wire<Sock>,
    mem: *mut u8,
    npages: u64,
    rt: bool,
    ends: &mpsc::Sender<R<(u64, u64)>>,
) {
    let mut pages = 0u64;
    // Real-time from the end of round 0 to the thread's own end, after
    // the final round (sched.rs).
    let mut _rt = None;
    loop {
        let h = match w.recv() {
            Ok(h) => h,
            Err(e) => {
                let _ = ends.send(Err(format!("receiving on the page lane: {e}")));
                return;
            }
        };
        match h.tag {
            Tag::Pages => {
                if h.a.checked_add(h.b).is_none_or(|e| e > npages) {
                    let _ = ends.send(Err(format!(
                        "pages {}+{} outside guest memory ({npages} pages) on the page lane",
                        h.a, h.b
                    )));
                    return;
                }
                // SAFETY: inside guest memory (checked above), mapped for
                // the LaneRx's life (`start`'s contract).
                let r =
                    unsafe { w.recv_raw(mem.add((h.a * PAGE) as usize), (h.b * PAGE) as usize) };
                if let Err(e) = r {
                    let _ = ends.send(Err(format!("receiving pages on the page lane: {e}")));
                    return;
                }
                pages += h.b;
            }
            Tag::LaneEnd => {
                if h.b != pages {
                    let _ = ends.send(Err(format!(
                        "the page lane carried {pages} pages of round {}, not {}",
                        h.a, h.b
                    )));
                    return;
                }
                let last = h.c == 0;
                let _ = ends.send(Ok((h.a, std::mem::take(&mut pages))));
                if last {
                    return;
                }
                if _rt.is_none() {
                    _rt = Some(Rt::enter(rt));
                }
            }
            t => {
                let _ = ends.send(Err(format!("unexpected {t:?} on the page lane")));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory for a test: `n` pages, mapped and freed with the value.
    struct Mem(*mut u8, usize);

    impl Mem {
        fn new(n: u64, fill: u8) -> Mem {
            let len = (n * PAGE) as usize;
            let p = uiommufd_testkit::mem::map_anon(len, libc::MAP_PRIVATE).expect("mmap");
            // SAFETY: the mapping just made.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), fill, len) };
            Mem(p.cast(), len)
        }

        fn page(&self, p: u64) -> &[u8] {
            // SAFETY: inside the mapping; nothing writes it meanwhile.
            unsafe { std::slice::from_raw_parts(self.0.add((p * PAGE) as usize), PAGE as usize) }
        }
    }

    // SAFETY: an anonymous mapping owned by the value; accessed through
    // raw pointers and the kernel only.
    unsafe impl Send for Mem {}

    impl Drop for Mem {
        fn drop(&mut self) {
            // SAFETY: our own mapping.
            unsafe { libc::munmap(self.0.cast(), self.1) };
        }
    }

    #[test]
    fn pages_split_over_two_connections_arrive_whole_and_are_counted() {
        let n = 4 * CHUNK + 5;
        let src = Mem::new(n, 0);
        for p in 0..n {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_bytes(src.0.add((p * PAGE) as usize), (p % 251) as u8, 1) };
        }
        let dst = Mem::new(n, 0xff);
        let (a, b) = UnixStream::pair().unwrap();
        let mut main = Wire::new(Sock::Unix(a));
        let mut rx_main = Wire::new(Sock::Unix(b));
        let mut tx = LaneTx::open(&mut main, true).unwrap();
        let (h, fd) = rx_main.recv_fd().unwrap();
        assert_eq!(h.tag, Tag::Lane);
        // SAFETY: `dst` outlives the LaneRx (dropped at the end of the
        // test, before `dst`), and only the lane writes the pages it gets.
        let rx = unsafe { LaneRx::start(fd.unwrap(), dst.0, n, false) }.unwrap();
        let sender = std::thread::spawn(move || {
            // Round 0: a run that is not a multiple of a chunk; round 1:
            // a single page, the final round.
            // SAFETY: both runs lie inside `src`, alive until the join.
            unsafe { tx.send_run(&mut main, src.0, 0, n) }.unwrap();
            let lane0 = tx.end_round(0, false).unwrap();
            // SAFETY: as above.
            unsafe { tx.send_run(&mut main, src.0, 3, 1) }.unwrap();
            let lane1 = tx.end_round(1, true).unwrap();
            main.send(Tag::Finish, 0, 0, 0).unwrap();
            (lane0, lane1, main, src)
        });
        // The main connection's pages, read here as the destination does.
        let mut on_main = 0;
        loop {
            let h = rx_main.recv().unwrap();
            match h.tag {
                Tag::Pages => {
                    // SAFETY: inside `dst`.
                    unsafe {
                        rx_main
                            .recv_raw(dst.0.add((h.a * PAGE) as usize), (h.b * PAGE) as usize)
                            .unwrap()
                    };
                    on_main += h.b;
                }
                Tag::Finish => break,
                t => panic!("{t:?}"),
            }
        }
        let l0 = rx.wait_round(0).unwrap();
        let l1 = rx.wait_round(1).unwrap();
        let (lane0, lane1, _main, src) = sender.join().unwrap();
        assert_eq!((l0, l1), (lane0, lane1));
        assert!(l0 > 0 && l0 < n, "both connections carried pages");
        assert_eq!(on_main + l0 + l1, n + 1);
        for p in 0..n {
            assert_eq!(dst.page(p), src.page(p), "page {p}");
        }
        drop(rx);
    }

    #[test]
    fn a_lane_that_lies_about_its_pages_or_round_is_an_error() {
        let dst = Mem::new(8, 0);
        let (a, b) = UnixStream::pair().unwrap();
        // SAFETY: `dst` outlives the LaneRx.
        let rx = unsafe { LaneRx::start(OwnedFd::from(b), dst.0, 8, false) }.unwrap();
        let mut w = Wire::new(Sock::Unix(a));
        w.send(Tag::LaneEnd, 0, 0, 1).unwrap();
        assert_eq!(rx.wait_round(0).unwrap(), 0);
        w.send(Tag::LaneEnd, 2, 0, 1).unwrap();
        assert!(rx.wait_round(1).unwrap_err().contains("round 2"));
        w.send(Tag::LaneEnd, 3, 7, 1).unwrap();
        assert!(rx.wait_round(3).unwrap_err().contains("7"));
        drop(rx);

        // pages outside guest memory
        let (a, b) = UnixStream::pair().unwrap();
        // SAFETY: as above.
        let rx = unsafe { LaneRx::start(OwnedFd::from(b), dst.0, 8, false) }.unwrap();
        let mut w = Wire::new(Sock::Unix(a));
        w.send(Tag::Pages, 7, 2, 0).unwrap();
        assert!(rx.wait_round(0).unwrap_err().contains("outside"));
        drop(rx);

        // a peer gone: the drop of a LaneRx still waiting returns
        let (a, b) = UnixStream::pair().unwrap();
        // SAFETY: as above.
        let rx = unsafe { LaneRx::start(OwnedFd::from(b), dst.0, 8, false) }.unwrap();
        drop(rx);
        drop(a);
    }
}
