//! The physical floor the transfer is compared with: a raw copy of the same
//! kind of bytes through the same kind of socket, measured in the same run.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Bytes per second of copying `bytes` through a Unix socket pair from one
/// thread to another in 1 MiB writes (what the migration does, minus
/// everything else).
pub fn raw_socket_rate(bytes: u64) -> f64 {
    let Ok((mut a, mut b)) = UnixStream::pair() else {
        return 0.0;
    };
    let chunk = 1usize << 20;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; chunk];
        let mut got = 0u64;
        while got < bytes {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        got
    });
    let buf = vec![0x5au8; chunk];
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.min((bytes - sent) as usize);
        if a.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    drop(a);
    let got = reader.join().unwrap_or(0);
    got as f64 / t.elapsed().as_secs_f64().max(1e-9)
}
