//! Page-table pages for one VT-d domain: 4 KiB tables of 512 atomic
//! entries carved out of 2 MiB chunks of anonymous memory.
//!
//! A chunk is one `mmap` of 2 MiB aligned to 2 MiB. Its first page holds
//! one summary word per page of the chunk ([`Slab::summary`]); the other
//! 511 pages are tables. So the summary word of a table is found from the
//! table's address alone (round down to the chunk, index by page), with no
//! lookup and without taking any byte of the table's own 4 KiB.
//!
//! Tables are zero when handed out and stay allocated until the slab is
//! dropped (with its domain): an entry that points to a table therefore
//! always points to live memory, which is what lets walkers read tables
//! without a lock (see the module documentation of `vtd`). Only a table
//! that was never published (a lost install race) goes back to the free
//! list, still zero.

use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;

use crate::{bail, Result};

/// Bytes of one chunk (and its alignment).
const CHUNK: usize = 2 << 20;
/// Bytes of one table.
pub const TABLE_BYTES: usize = 4096;
/// Entries in one table.
pub const ENTRIES: usize = 512;

/// Tables faulted in at once as the slab grows (16 pages): one system
/// call instead of 16 page faults, and small domains stay small.
const POPULATE: usize = 16 * TABLE_BYTES;

/// Fault in `[addr, addr + len)` of a chunk for writing (best effort: the
/// first touch faults in whatever this leaves out).
fn populate(addr: usize, len: usize) {
    // SAFETY: MADV_POPULATE_WRITE on our own mapping only allocates its
    // (zero) pages; it changes no contents.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
}

/// One page-table page: 512 entries, page aligned.
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct Table {
    /// The entries (64-bit VT-d page-table entries).
    pub e: [AtomicU64; ENTRIES],
}

#[derive(Debug, Default)]
struct Inner {
    /// Base addresses of the chunks (for `munmap`).
    chunks: Vec<usize>,
    /// Tables given back unpublished (zero).
    free: Vec<usize>,
    /// Next unused table of the newest chunk, and the end of that chunk.
    next: usize,
    end: usize,
}

/// The table allocator of one domain.
#[derive(Debug, Default)]
pub struct Slab {
    inner: Mutex<Inner>,
}

/// A fresh 2 MiB aligned, zero, lazily faulted chunk.
fn map_chunk() -> Result<usize> {
    let len = 2 * CHUNK;
    // SAFETY: a fresh private anonymous mapping; we own it from here.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!(
            ENOMEM,
            "cannot map page-table memory: {}",
            std::io::Error::last_os_error()
        );
    }
    let base = p as usize;
    let aligned = base.next_multiple_of(CHUNK);
    // SAFETY: trimming the parts of our own fresh mapping outside the
    // aligned chunk; nothing points there.
    unsafe {
        if aligned > base {
            libc::munmap(p, aligned - base);
        }
        let tail = base + len - (aligned + CHUNK);
        if tail > 0 {
            libc::munmap((aligned + CHUNK) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned)
}

impl Slab {
    /// A zero table, valid until the slab is dropped. `ENOMEM` when no
    /// memory can be mapped (or at the fail-nth point `vtd.table.alloc`,
    /// so that the sweeps reach every path a table allocation can fail:
    /// a domain's root, a map's new tables, an unmap's split).
    pub fn alloc(&self) -> Result<&Table> {
        crate::inject::point("vtd.table.alloc", libc::ENOMEM)?;
        let mut g = self.inner.lock();
        let addr = if let Some(a) = g.free.pop() {
            a
        } else {
            if g.next == g.end {
                let c = map_chunk()?;
                g.chunks.push(c);
                g.next = c + TABLE_BYTES; // page 0 holds the summaries
                g.end = c + CHUNK;
            }
            let a = g.next;
            g.next += TABLE_BYTES;
            if (a - TABLE_BYTES).is_multiple_of(POPULATE) {
                populate(a, POPULATE.min(g.end - a));
            }
            a
        };
        drop(g);
        // SAFETY: `addr` is a page of one of our chunks, mapped read-write
        // until `self` drops, zero (fresh or given back zero), and handed
        // out once; `Table` is plain atomics, valid for any bytes.
        Ok(unsafe { &*(addr as *const Table) })
    }

    /// Give back a table that was never published (every entry zero).
    pub fn free_unpublished(&self, t: &Table) {
        debug_assert!(t
            .e
            .iter()
            .all(|e| e.load(std::sync::atomic::Ordering::Relaxed) == 0));
        self.inner.lock().free.push(t as *const Table as usize);
    }

    /// The summary word of table `t` (a table of this slab): one bit per
    /// group of 8 entries, kept by the domain's dirty tracking.
    #[inline]
    pub fn summary(t: &Table) -> &AtomicU64 {
        let a = t as *const Table as usize;
        let chunk = a & !(CHUNK - 1);
        let idx = (a - chunk) / TABLE_BYTES;
        // SAFETY: `t` lies in a chunk of a live slab (it borrows from it),
        // whose first page is 512 summary words, one per page, zero at
        // first and only ever accessed atomically.
        unsafe { &*((chunk as *const AtomicU64).add(idx)) }
    }

    /// Bytes of page-table memory mapped (chunks), for statistics.
    pub fn mapped_bytes(&self) -> u64 {
        (self.inner.lock().chunks.len() * CHUNK) as u64
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        for &c in &self.inner.get_mut().chunks {
            // SAFETY: unmapping our own chunk; every reference into it
            // borrowed from the slab, which is going away.
            unsafe { libc::munmap(c as *mut libc::c_void, CHUNK) };
        }
    }
}

// SAFETY: the slab only holds addresses of memory it owns; tables are
// atomics, shareable between threads.
unsafe impl Send for Slab {}
// SAFETY: as above; the allocator state is behind a mutex.
unsafe impl Sync for Slab {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn tables_are_aligned_zero_and_have_summaries() {
        let s = Slab::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..600 {
            let t = s.alloc().unwrap();
            let a = t as *const Table as usize;
            assert_eq!(a % TABLE_BYTES, 0);
            assert_ne!(a % CHUNK, 0, "page 0 of a chunk is the summary page");
            assert!(seen.insert(a));
            assert!(t.e.iter().all(|e| e.load(Ordering::Relaxed) == 0));
            t.e[i % ENTRIES].store(7, Ordering::Relaxed);
            Slab::summary(t).store(a as u64, Ordering::Relaxed);
        }
        assert_eq!(s.mapped_bytes(), 2 * CHUNK as u64);
        let t = s.alloc().unwrap();
        let a = t as *const Table as usize;
        s.free_unpublished(t);
        assert_eq!(s.alloc().unwrap() as *const Table as usize, a);
    }
}
