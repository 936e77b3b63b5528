//! Measuring helpers: anonymous buffers with a chosen alignment and page
//! size, medians of repeated timings, and the physical floors (populate,
//! memcpy) every case is compared with.

use std::time::{Duration, Instant};

/// 4 KiB.
pub const KIB4: u64 = 4 << 10;
/// 2 MiB (a transparent huge page).
pub const MIB2: u64 = 2 << 20;

/// Which pages back a [`Buf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Base pages only (`MADV_NOHUGEPAGE`); the start is 4 KiB but not
    /// 2 MiB aligned.
    Small,
    /// 2 MiB aligned and `MADV_HUGEPAGE` (transparent huge pages where the
    /// kernel allows them).
    Huge,
}

/// A private anonymous mapping, unmapped on drop.
#[derive(Debug)]
pub struct Buf {
    /// The whole mapping (with the alignment slack).
    map: *mut libc::c_void,
    map_len: usize,
    /// The buffer's start inside the mapping.
    addr: u64,
    len: u64,
}

// SAFETY: `Buf` is a plain address range; nothing in it is thread-bound,
// and the benchmarks only touch it through the kernel or raw copies.
unsafe impl Send for Buf {}
// SAFETY: as above; shared use only reads the address.
unsafe impl Sync for Buf {}

impl Buf {
    /// `len` bytes of fresh, unpopulated anonymous memory backed as asked.
    pub fn new(len: u64, backing: Backing) -> Result<Buf, String> {
        let map_len = (len + 2 * MIB2) as usize;
        // a fresh private mapping that we own until Drop
        let map = uiommufd_testkit::map_anon(map_len, libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .map_err(|e| format!("mmap of {len} bytes failed: {e}"))?;
        let aligned = (map as u64).div_ceil(MIB2) * MIB2;
        let (addr, advice) = match backing {
            Backing::Small => (aligned + KIB4, libc::MADV_NOHUGEPAGE),
            Backing::Huge => (aligned, libc::MADV_HUGEPAGE),
        };
        // SAFETY: advice on a range inside our own mapping; it changes no
        // contents. A refusal (THP compiled out) only loses the hint.
        unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) };
        Ok(Buf {
            map,
            map_len,
            addr,
            len,
        })
    }

    /// A buffer whose pages are already present (written once).
    pub fn populated(len: u64, backing: Backing) -> Result<Buf, String> {
        let b = Buf::new(len, backing)?;
        populate(b.addr, b.len)?;
        Ok(b)
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The buffer as a byte slice.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `addr..addr+len` lies inside our read-write mapping, which
        // lives as long as `self`; `&mut self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len as usize) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// `MADV_POPULATE_WRITE` of `[addr, addr + len)`: the kernel's cost of
/// making the range present and writable, which is what a pin needs.
pub fn populate(addr: u64, len: u64) -> Result<(), String> {
    // SAFETY: MADV_POPULATE_WRITE only faults pages in; it never changes the
    // contents or the mapping, and it validates the range itself.
    let rc = unsafe {
        libc::madvise(
            addr as *mut libc::c_void,
            len as usize,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "MADV_POPULATE_WRITE of {len:#x} bytes at {addr:#x}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Median GB/s of `MADV_POPULATE_WRITE` over all of `buf` while it is
/// present: the floor of mapping (pinning) memory that is already there.
pub fn populate_present_gbps(reps: usize, buf: &Buf) -> f64 {
    let len = buf.len();
    gbps(
        len,
        median(reps, || {
            let t = Instant::now();
            populate(buf.addr(), len).expect("populate");
            t.elapsed()
        }),
    )
}

/// The median of `reps` timings returned by `f` (each call times what it
/// wants: setup outside its own stopwatch is not counted).
pub fn median(reps: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..reps.max(1)).map(|_| f()).collect();
    v.sort();
    v[v.len() / 2]
}

/// Median nanoseconds per call of `op`, over `reps` batches of `iters`.
pub fn ns_per_op(reps: usize, iters: u64, mut op: impl FnMut()) -> f64 {
    // one untimed batch warms caches, allocator and lazily made state
    for _ in 0..iters.min(1000) {
        op();
    }
    let d = median(reps, || {
        let t = Instant::now();
        for _ in 0..iters {
            op();
        }
        t.elapsed()
    });
    d.as_nanos() as f64 / iters as f64
}

/// GB/s (10^9 bytes per second) of moving `bytes` in `d`.
pub fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_nanos().max(1) as f64
}

/// Median GB/s of `memcpy` of `len` bytes between two populated buffers
/// (the floor of any copy by IOVA).
pub fn memcpy_gbps(reps: usize, len: u64) -> Result<f64, String> {
    let mut src = Buf::populated(len, Backing::Huge)?;
    let mut dst = Buf::populated(len, Backing::Huge)?;
    src.bytes().fill(0x5a);
    let iters = (64 << 20) / len.max(1) + 1;
    let ns = ns_per_op(reps, iters, || {
        let s = src.bytes();
        let d = dst.bytes();
        d.copy_from_slice(s);
        std::hint::black_box(&d[0]);
    });
    Ok(len as f64 / ns)
}

/// The system's transparent huge page mode (`[madvise]` etc.), for the header.
pub fn thp_mode() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The CPU model name and number of online CPUs, for the header.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{n} CPUs, {model}")
}

/// Raise `RLIMIT_MEMLOCK` as far as allowed, so that pinning a few GiB is
/// not refused for a caller without `CAP_IPC_LOCK`. Returns the soft limit
/// in bytes (`None`: unlimited).
pub fn raise_memlock() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl);
        let want = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) != 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl);
        }
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl);
    }
    (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}
