//! Test support shared by uiommufd's integration tests, its in-crate
//! proptests, the fuzz targets (`fuzz/`) and the benchmarks
//! (`uiommufd-cli`): one copy of each piece that they all need.
//!
//! * [`ioctl`]: typed wrappers over [`uiommufd::dispatch::ioctl`]
//!   with real user pointers (or any other way of making the call, see
//!   [`ioctl::Ioctl`]);
//! * [`mem`]: user memory for tests: aligned buffers, pages whose
//!   protection can be changed one by one;
//! * [`iopt_model`]: the IO page table reference model;
//! * [`preload`]: the `LD_PRELOAD` shim, built for tests that run
//!   programs under it;
//! * [`iopt_harness`]: operations run on an IO page table and on the model
//!   side by side, checked after every step.

pub mod ioctl;
pub mod iopt_harness;
pub mod iopt_model;
pub mod mem;
pub mod preload;
pub mod vfio;

pub use ioctl::*;
pub use mem::*;

/// Wait, polling every millisecond, until `cond` holds (a device model's
/// worker thread got somewhere); panics naming `what` after 10 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Whether `fd` is readable now: a zero-timeout `poll` for `POLLIN`.
pub fn poll_in(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// The indices of the bits set in bitmap `bm` (bit `i` is bit `i % 64` of
/// word `i / 64`), lowest first.
pub fn set_bits(bm: &[u64]) -> Vec<u64> {
    (0..bm.len() as u64 * 64)
        .filter(|&i| bm[(i / 64) as usize] >> (i % 64) & 1 != 0)
        .collect()
}

/// Run `cmd` to its end: its output; panics (naming it `what`, with its
/// stderr) unless it exited with 0.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
