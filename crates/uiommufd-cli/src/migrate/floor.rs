//! The physical floor the transfer is compared with: the same bytes (the
//! source's guest memory) copied raw through the same kind of socket into
//! a buffer like the destination's, measured in the same run.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::wire::{read_raw, write_raw};

/// Bytes per second of copying `len` bytes at `src` through a Unix socket
/// pair, in the migration's run size, to another thread reading into a
/// populated buffer of the same size.
///
/// # Safety
/// `src..src + len` must stay mapped and readable during the call.
pub unsafe fn raw_socket_rate(src: *const u8, len: usize) -> f64 {
    let Ok((a, b)) = UnixStream::pair() else {
        return 0.0;
    };
    // SAFETY: a fresh anonymous mapping.
    let dst = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if dst == libc::MAP_FAILED {
        return 0.0;
    }
    let dst_addr = dst as usize;
    let reader = std::thread::spawn(move || {
        // SAFETY: the mapping above, alive until after the join.
        unsafe { read_raw(b.as_raw_fd(), dst_addr as *mut u8, len) }.is_ok()
    });
    let t = Instant::now();
    let run = 64usize << 20;
    let mut done = 0;
    let mut ok = true;
    while done < len && ok {
        let n = run.min(len - done);
        // SAFETY: inside the caller's readable range.
        ok = unsafe { write_raw(a.as_raw_fd(), src.add(done), n) }.is_ok();
        done += n;
    }
    drop(a);
    let ok = reader.join().unwrap_or(false) && ok;
    let el = t.elapsed().as_secs_f64();
    // SAFETY: our mapping, no longer used.
    unsafe { libc::munmap(dst, len) };
    if ok {
        len as f64 / el.max(1e-9)
    } else {
        0.0
    }
}
