//! Access reads and writes by IOVA: the in-place fast path against the
//! reference path (every byte through `UserMemory::read`/`write`), shared
//! by `access_rw_fast.rs` (fault-safe copies installed: the fast path runs)
//! and `access_rw_syscall.rs` (never installed: `process_vm_readv/writev`).
//! Each test binary is its own process, so the two modes never mix.

#![allow(dead_code)]

use std::sync::{Arc, Mutex, Weak};

use uiommufd::access::{Access, AccessOps};
use uiommufd::accounting::AccountMode;
use uiommufd::ioas::Ioas;
use uiommufd::pages::Pages;
use uiommufd::plumbing::io_pagetable::MapSource;
use uiommufd::user::{SelfMemory, UserMemory};
use uiommufd::{Context, ObjId, Prot};

/// The page size the layouts assume.
pub const PS: u64 = 4096;

/// The calling process's memory, but never copied in place: the
/// reference path of every comparison.
#[derive(Debug)]
pub struct Indirect;

impl UserMemory for Indirect {
    fn read(&self, addr: u64, buf: &mut [u8]) -> uiommufd::Result<()> {
        SelfMemory.read(addr, buf)
    }
    fn write(&self, addr: u64, buf: &[u8]) -> uiommufd::Result<()> {
        SelfMemory.write(addr, buf)
    }
    fn populate(&self, addr: u64, len: u64, write: bool) -> uiommufd::Result<()> {
        SelfMemory.populate(addr, len, write)
    }
}

/// An anonymous mapping of ours (the test kit's), unmapped on drop
/// (unless already).
pub struct Mapping {
    pub addr: u64,
    pub len: usize,
    map: Option<uiommufd_testkit::mem::Mapping>,
}

impl Mapping {
    /// `pages` pages with `prot`, filled with `fill(i)` first when readable.
    pub fn new(pages: u64, prot: libc::c_int, fill: impl Fn(usize) -> u8) -> Mapping {
        let map = uiommufd_testkit::mem::Mapping::new(pages, PS);
        let (addr, len) = (map.addr(), (pages * PS) as usize);
        // SAFETY: the mapping just made, read-write for now.
        let s = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
        for (i, b) in s.iter_mut().enumerate() {
            *b = fill(i);
        }
        for i in 0..pages as usize {
            map.protect(i, prot);
        }
        Mapping {
            addr,
            len,
            map: Some(map),
        }
    }

    /// The bytes (the mapping must be readable).
    pub fn bytes(&self) -> Vec<u8> {
        assert!(self.map.is_some());
        // SAFETY: our own readable mapping.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }.to_vec()
    }

    /// Overwrite the bytes (the mapping must be writable).
    pub fn set(&self, data: &[u8]) {
        assert!(self.map.is_some() && data.len() == self.len);
        // SAFETY: our own writable mapping of `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr as *mut u8, self.len) };
    }

    /// `munmap` it now, as a program that forgot its DMA mapping would.
    pub fn unmap(&mut self) {
        self.map = None;
    }
}

/// A driver that copies by IOVA and, when `pins`, pins pages too; its
/// unmap callback first tries a copy at the range being unmapped (and
/// records the errno), then drops its pins there.
#[derive(Debug, Default)]
pub struct Driver {
    pub pins: bool,
    pub access: Mutex<Option<Weak<Access>>>,
    pub pinned: Mutex<Vec<(u64, u64)>>,
    pub rw_in_unmap: Mutex<Vec<i32>>,
}

impl AccessOps for Driver {
    fn unmap(&self, iova: u64, length: u64) {
        let Some(acc) = self.access.lock().unwrap().as_ref().and_then(Weak::upgrade) else {
            return;
        };
        let last = iova.saturating_add(length - 1);
        let mut pinned = self.pinned.lock().unwrap();
        for &(pi, pl) in pinned.iter() {
            if pi <= last && pi + pl > iova {
                let mut b = [0u8; 8];
                let e = errno(acc.rw(pi, &mut b, false));
                self.rw_in_unmap.lock().unwrap().push(e);
                acc.unpin_pages(pi, pl);
            }
        }
        pinned.retain(|&(pi, pl)| !(pi <= last && pi + pl > iova));
    }
    fn needs_pin_pages(&self) -> bool {
        self.pins
    }
}

/// A context, an IOAS in it and an attached access.
pub struct Rig {
    pub ctx: Arc<Context>,
    pub ioas: Arc<Ioas>,
    pub ioas_id: ObjId,
    pub acc: Arc<Access>,
    pub driver: Arc<Driver>,
    pub mem: Arc<dyn UserMemory>,
}

impl Rig {
    /// On `SelfMemory` (`direct`) or on [`Indirect`].
    pub fn new(direct: bool, pins: bool) -> Rig {
        let mem: Arc<dyn UserMemory> = if direct {
            Arc::new(SelfMemory)
        } else {
            Arc::new(Indirect)
        };
        let ctx = Context::with_memory(mem.clone());
        let ioas_id = ctx.ioas_alloc().unwrap();
        let ioas = ctx.ioas(ioas_id).unwrap();
        let driver = Arc::new(Driver {
            pins,
            ..Default::default()
        });
        let ops: Arc<dyn AccessOps> = driver.clone();
        let acc = Access::create(&ctx, Arc::downgrade(&ops)).unwrap();
        *driver.access.lock().unwrap() = Some(Arc::downgrade(&acc));
        acc.attach(&ctx, ioas_id).unwrap();
        Rig {
            ctx,
            ioas,
            ioas_id,
            acc,
            driver,
            mem,
        }
    }

    /// Map `len` bytes at user address `uva` at `iova`, with `prot`, from
    /// a pages object that is `writable` or not.
    pub fn map(&self, uva: u64, len: u64, iova: u64, prot: Prot, writable: bool) {
        let pages = Pages::new(self.mem.clone(), uva, len, writable, AccountMode::None);
        let start_byte = uva - pages.uptr();
        self.ioas
            .map_sources(
                vec![MapSource {
                    pages,
                    start_byte,
                    length: len,
                }],
                len,
                Some(iova),
                prot,
            )
            .unwrap();
    }

    /// Pin through the access (a pinning driver), remembered for unmap.
    pub fn pin(&self, iova: u64, len: u64) {
        self.acc.pin_pages(iova, len, false).unwrap();
        self.driver.pinned.lock().unwrap().push((iova, len));
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.ioas.unmap_all();
        self.acc.clone().destroy(&self.ctx);
    }
}

/// 0 for success, the errno otherwise.
pub fn errno(r: uiommufd::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno().0,
    }
}

/// A small deterministic generator (xorshift).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The layout of the differential test, in IOVA order:
///
/// - A `0x10000`: 4 pages of `buf` from 0, RW;
/// - B `0x14000`: 4 pages of `buf` from page 4, read-only prot;
/// - a gap up to `0x1a063`;
/// - C `0x1a064`: 2 pages of `buf` from page 8 + 100 bytes, RW;
/// - E right after C: `ro` (read-only memory) from byte 100, RW prot
///   (writes pass the checks and fault in the copy: `EFAULT`);
/// - D `0x1e000`: 2 pages of `buf` from page 12 through a pages object
///   that is not writable (read-only prot: mapping it RW is refused);
/// - a gap; F `0x21000`: 2 pages of `buf` from page 14, RW.
pub fn layout(r: &Rig, buf: &Mapping, ro: &Mapping) {
    r.map(buf.addr, 4 * PS, 0x10000, Prot::RW, true);
    r.map(buf.addr + 4 * PS, 4 * PS, 0x14000, Prot::RO, true);
    r.map(buf.addr + 8 * PS + 100, 2 * PS, 0x1a064, Prot::RW, true);
    r.map(ro.addr + 100, 2 * PS - 100, 0x1c064, Prot::RW, true);
    r.map(buf.addr + 12 * PS, 2 * PS, 0x1e000, Prot::RO, false);
    r.map(buf.addr + 14 * PS, 2 * PS, 0x21000, Prot::RW, true);
}

/// Random reads and writes over the layout through two rigs on the same
/// memory, one possibly fast (`SelfMemory`) and one on the reference path
/// ([`Indirect`]): same errno, same bytes read, same memory after a write
/// (each write is replayed on a copy of the memory from before), same
/// write log.
pub fn differential(seed: u64, ops: usize) {
    let buf = Mapping::new(16, libc::PROT_READ | libc::PROT_WRITE, |i| {
        (i * 7 + 3) as u8
    });
    let ro = Mapping::new(2, libc::PROT_READ, |i| (i * 13 + 1) as u8);
    let fast = Rig::new(true, false);
    let slow = Rig::new(false, false);
    layout(&fast, &buf, &ro);
    layout(&slow, &buf, &ro);
    for r in [&fast, &slow] {
        r.ioas.iopt().access_write_log().set_enabled(true);
    }
    let mut rng = Rng::new(seed);
    let mut oks = [0usize; 2];
    for _ in 0..ops {
        let iova = 0xff00 + rng.below(0x23000 - 0xff00);
        let max = if rng.below(4) == 0 { 3 * PS + 17 } else { 64 };
        let len = 1 + rng.below(max) as usize;
        let write = rng.below(2) == 0;
        let via_iopt = rng.below(4) == 0;
        let rw = |r: &Rig, b: &mut [u8]| {
            if via_iopt {
                r.ioas.iopt().access_rw(iova, b, write)
            } else {
                r.acc.rw(iova, b, write)
            }
        };
        if write {
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let before = buf.bytes();
            let mut d1 = data.clone();
            let e1 = errno(rw(&fast, &mut d1));
            let after1 = buf.bytes();
            buf.set(&before);
            let mut d2 = data.clone();
            let e2 = errno(rw(&slow, &mut d2));
            let after2 = buf.bytes();
            assert_eq!(e1, e2, "write of {len} bytes at {iova:#x}: errno");
            assert!(
                after1 == after2,
                "write of {len} bytes at {iova:#x}: memory"
            );
            assert_eq!(d1, data, "a write leaves the caller's buffer alone");
            oks[1] += (e1 == 0) as usize;
        } else {
            let mut b1 = vec![0xeeu8; len];
            let mut b2 = vec![0xeeu8; len];
            let e1 = errno(rw(&fast, &mut b1));
            let e2 = errno(rw(&slow, &mut b2));
            assert_eq!(e1, e2, "read of {len} bytes at {iova:#x}: errno");
            if e1 == 0 {
                assert!(b1 == b2, "read of {len} bytes at {iova:#x}: bytes");
                oks[0] += 1;
            }
        }
        let l1 = fast.ioas.iopt().access_write_log().read(0, u64::MAX, false);
        let l2 = slow.ioas.iopt().access_write_log().read(0, u64::MAX, false);
        assert_eq!(l1, l2, "write logs after an op at {iova:#x}");
    }
    assert!(
        oks[0] > ops / 10 && oks[1] > ops / 20,
        "too few successful ops: {oks:?}"
    );
}

/// Fixed cases: every errno at its place, area boundaries, partial areas.
pub fn fixed_cases(direct: bool) {
    let buf = Mapping::new(16, libc::PROT_READ | libc::PROT_WRITE, |i| i as u8);
    let ro = Mapping::new(2, libc::PROT_READ, |i| (i * 13 + 1) as u8);
    let r = Rig::new(direct, false);
    layout(&r, &buf, &ro);
    let mem = buf.bytes();
    let rd = |iova: u64, len: usize| -> (i32, Vec<u8>) {
        let mut b = vec![0u8; len];
        let e = errno(r.acc.rw(iova, &mut b, false));
        (e, b)
    };
    // inside A, twice (the second may come from the remembered area)
    for _ in 0..2 {
        assert_eq!(rd(0x10000 + 5, 8), (0, mem[5..13].to_vec()));
    }
    // across A and B (B is read-only prot: reads are fine)
    let (e, b) = rd(0x13ff0, 32);
    assert_eq!((e, b.as_slice()), (0, &mem[4 * 4096 - 16..4 * 4096 + 16]));
    // the last byte of B, then into the gap
    assert_eq!(rd(0x17fff, 1), (0, vec![mem[8 * 4096 - 1]]));
    assert_eq!(rd(0x17fff, 2).0, libc::ENOENT);
    assert_eq!(rd(0x18000, 1).0, libc::ENOENT);
    assert_eq!(rd(0x1a063, 1).0, libc::ENOENT);
    // C starts at a page offset of 100
    assert_eq!(
        rd(0x1a064, 4).1,
        mem[8 * 4096 + 100..8 * 4096 + 104].to_vec()
    );
    // C into E (read-only memory, readable)
    let (e, b) = rd(0x1c060, 8);
    assert_eq!(e, 0);
    assert_eq!(&b[..4], &mem[10 * 4096 + 96..10 * 4096 + 100]);
    assert_eq!(&b[4..], &ro.bytes()[100..104]);
    // writes: B's prot, D's pages, E's memory, A's length zero, wrap
    let w = |iova: u64, data: &[u8]| errno(r.acc.rw(iova, &mut data.to_vec(), true));
    assert_eq!(w(0x14000, &[1]), libc::EPERM);
    assert_eq!(w(0x13fff, &[1, 2]), libc::EPERM, "A then B: checked first");
    assert_eq!(
        buf.bytes()[4 * 4096 - 1],
        mem[4 * 4096 - 1],
        "nothing moved"
    );
    assert_eq!(w(0x1e000, &[1]), libc::EPERM);
    assert_eq!(w(0x1c064, &[1]), libc::EFAULT);
    assert_eq!(w(0x10000, &[]), libc::EINVAL);
    assert_eq!(
        errno(r.acc.rw(u64::MAX, &mut [0u8; 2], false)),
        libc::EOVERFLOW
    );
    // C then E: C is written, E faults
    assert_eq!(w(0x1c062, &[9, 9, 9, 9]), libc::EFAULT);
    assert_eq!(&buf.bytes()[10 * 4096 + 98..10 * 4096 + 100], &[9, 9]);
    // a write the program sees at once, twice (remembered area)
    for v in [0x5a, 0xa5] {
        assert_eq!(w(0x10000 + 77, &[v; 16]), 0);
        assert_eq!(&buf.bytes()[77..93], &[v; 16]);
        // and the access reads it back
        assert_eq!(rd(0x10000 + 77, 16), (0, vec![v; 16]));
    }
    // F: whole area, then one past its end
    assert_eq!(rd(0x21000, 2 * 4096).0, 0);
    assert_eq!(rd(0x21000, 2 * 4096 + 1).0, libc::ENOENT);
}

/// The program unmaps memory that is still mapped in the IOAS: `EFAULT`,
/// never a crash, whether or not the area was just used (remembered).
/// Returns the reasons, for the caller to check which path answered.
pub fn efault_after_munmap(direct: bool) -> Vec<String> {
    let r = Rig::new(direct, false);
    let mut m = Mapping::new(2, libc::PROT_READ | libc::PROT_WRITE, |_| 0x11);
    r.map(m.addr, 2 * PS, 0x40000, Prot::RW, true);
    let mut b = [0u8; 8];
    r.acc.rw(0x40000 + 8, &mut b, false).unwrap();
    assert_eq!(b, [0x11; 8]);
    r.acc.rw(0x40000 + 8, &mut [0x22; 8], true).unwrap();
    assert_eq!(m.bytes()[8..16], [0x22; 8]);
    m.unmap();
    let mut reasons = Vec::new();
    for write in [false, true, false] {
        let e = r.acc.rw(0x40000 + 8, &mut b, write).unwrap_err();
        assert_eq!(e.errno().0, libc::EFAULT);
        reasons.push(e.reason().to_string());
        let e = r.acc.rw(0x40000, &mut [0u8; 2 * 4096], write).unwrap_err();
        assert_eq!(e.errno().0, libc::EFAULT);
    }
    r.ioas.unmap(0x40000, 2 * PS).unwrap();
    assert_eq!(errno(r.acc.rw(0x40000, &mut b, false)), libc::ENOENT);
    reasons
}

/// A remembered area must never outlive its mapping: unmap and remap at
/// the same IOVA (other memory, other prot), the same IOVA in two IOASes,
/// and an access moved between IOASes.
pub fn stale_hints(direct: bool) {
    let x = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE, |_| 0x58);
    let y = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE, |_| 0x59);
    let r = Rig::new(direct, false);
    let rd = |r: &Rig| -> (i32, u8) {
        let mut b = [0u8; 8];
        let e = errno(r.acc.rw(0x50000 + 16, &mut b, false));
        (e, b[0])
    };
    r.map(x.addr, PS, 0x50000, Prot::RW, true);
    assert_eq!(rd(&r), (0, 0x58));
    assert_eq!(rd(&r), (0, 0x58));
    r.ioas.unmap(0x50000, PS).unwrap();
    assert_eq!(rd(&r).0, libc::ENOENT);
    r.map(y.addr, PS, 0x50000, Prot::RW, true);
    assert_eq!(rd(&r), (0, 0x59));
    r.ioas.unmap(0x50000, PS).unwrap();
    r.map(x.addr, PS, 0x50000, Prot::RO, true);
    assert_eq!(rd(&r), (0, 0x58));
    assert_eq!(
        errno(r.acc.rw(0x50000, &mut [0u8; 4], true)),
        libc::EPERM,
        "remapped read-only"
    );
    // an unrelated map elsewhere also moves the generation; still right
    r.map(y.addr, PS, 0x90000, Prot::RW, true);
    assert_eq!(rd(&r), (0, 0x58));
    // a second IOAS with other memory at the same IOVA
    let id2 = r.ctx.ioas_alloc().unwrap();
    let ioas2 = r.ctx.ioas(id2).unwrap();
    ioas2.map_user(y.addr, PS, Some(0x50000), Prot::RW).unwrap();
    for _ in 0..3 {
        let mut b = [0u8; 1];
        ioas2.iopt().access_rw(0x50000, &mut b, false).unwrap();
        assert_eq!(b[0], 0x59);
        r.ioas.iopt().access_rw(0x50000, &mut b, false).unwrap();
        assert_eq!(b[0], 0x58);
    }
    // the access moves to the second IOAS and back
    r.acc.replace(&r.ctx, id2).unwrap();
    assert_eq!(rd(&r), (0, 0x59));
    r.acc.replace(&r.ctx, r.ioas_id).unwrap();
    assert_eq!(rd(&r), (0, 0x58));
    ioas2.unmap_all().unwrap();
    // the old mapping of the same IOVA is gone from the old IOAS
    r.acc.replace(&r.ctx, id2).unwrap();
    assert_eq!(rd(&r).0, libc::ENOENT);
    r.acc.replace(&r.ctx, r.ioas_id).unwrap();
    drop(ioas2);
    r.ctx.destroy(id2).unwrap();
}

/// An unmap that must wait for an access's pins makes the area refuse
/// copies (`EINVAL`) while the driver is asked to let go, even right after
/// a copy there was remembered.
pub fn prevent_access(direct: bool) {
    let m = Mapping::new(2, libc::PROT_READ | libc::PROT_WRITE, |_| 7);
    let r = Rig::new(direct, true);
    r.map(m.addr, 2 * PS, 0x60000, Prot::RW, true);
    r.pin(0x60000, PS);
    for _ in 0..2 {
        let mut b = [0u8; 8];
        r.acc.rw(0x60000 + 4, &mut b, false).unwrap();
        assert_eq!(b, [7; 8]);
    }
    r.ioas.unmap(0x60000, 2 * PS).unwrap();
    assert_eq!(*r.driver.rw_in_unmap.lock().unwrap(), vec![libc::EINVAL]);
    assert_eq!(
        errno(r.acc.rw(0x60000 + 4, &mut [0u8; 8], false)),
        libc::ENOENT
    );
}

/// Concurrent copies while another thread maps and unmaps the same IOVA
/// over two buffers: every read sees one buffer's bytes or `ENOENT`,
/// never anything else.
pub fn racing_remaps(direct: bool) {
    let x = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE, |_| 0x58);
    let y = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE, |_| 0x59);
    let r = Rig::new(direct, false);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..2000 {
                let m = if i % 2 == 0 { &x } else { &y };
                r.map(m.addr, PS, 0x70000, Prot::RW, true);
                r.ioas.unmap(0x70000, PS).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut seen = [0usize; 3];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut b = [0u8; 64];
            match r.acc.rw(0x70000, &mut b, false) {
                Ok(()) => {
                    assert!(b.iter().all(|&v| v == b[0]) && (b[0] == 0x58 || b[0] == 0x59));
                    seen[(b[0] - 0x58) as usize] += 1;
                }
                Err(e) => {
                    assert_eq!(e.errno().0, libc::ENOENT);
                    seen[2] += 1;
                }
            }
        }
    });
}

/// An unmap (or a detach) never returns while an access copy into the
/// memory it unmapped is still moving bytes: a thread keeps writing `0xa5`
/// by IOVA through `AREAS` areas in turn (more than a thread remembers, so
/// the fast path also goes through the table's index once it is built),
/// while this one unmaps an area, zeroes its memory at once, waits until
/// the writer has finished two more copies, and finds the memory still
/// zero; then maps it back. Every `DETACH_EVERY`th round detaches and
/// reattaches the access instead, with the same check on every area.
pub fn unmap_drains_copies(direct: bool, rounds: usize) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const AREAS: u64 = 12;
    const PAGES: u64 = 16;
    const DETACH_EVERY: usize = 8;
    const BASE: u64 = 0x100_0000;
    let len = PAGES * PS;
    let iova = |i: u64| BASE + i * 2 * len;
    let maps: Vec<Mapping> = (0..AREAS)
        .map(|_| Mapping::new(PAGES, libc::PROT_READ | libc::PROT_WRITE, |_| 0))
        .collect();
    let r = Rig::new(direct, false);
    for (i, m) in maps.iter().enumerate() {
        r.map(m.addr, len, iova(i as u64), Prot::RW, true);
    }
    let zero = vec![0u8; len as usize];
    let stop = AtomicBool::new(false);
    let copies = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = vec![0xa5u8; len as usize];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 5) % AREAS;
                match r.acc.rw(iova(i), &mut buf, true) {
                    Ok(()) => {}
                    Err(e) => assert_eq!(e.errno().0, libc::ENOENT, "{e}"),
                }
                copies.fetch_add(1, Ordering::SeqCst);
            }
        });
        /// Stops the writer however this thread leaves the scope (a
        /// failed check must not leave the scope waiting for it).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        // until the writer has finished `n` more copies (a writer that
        // died fails the test instead of hanging it)
        let after = |n: u64| {
            let c = copies.load(Ordering::SeqCst);
            let t = std::time::Instant::now();
            while copies.load(Ordering::SeqCst) < c + n {
                assert!(t.elapsed().as_secs() < 30, "the writer stopped");
                std::thread::yield_now();
            }
        };
        let settle = || after(2);
        for round in 0..rounds {
            // let the writer run (and the index get built) for a while
            after(3 * AREAS);
            if round % DETACH_EVERY == DETACH_EVERY - 1 {
                r.acc.detach();
                for m in &maps {
                    m.set(&zero);
                }
                settle();
                for (i, m) in maps.iter().enumerate() {
                    assert!(
                        m.bytes() == zero,
                        "round {round}: a copy reached area {i} after detach returned"
                    );
                }
                r.acc.attach(&r.ctx, r.ioas_id).unwrap();
                continue;
            }
            let i = (round as u64 * 7) % AREAS;
            assert_eq!(r.ioas.unmap(iova(i), len).unwrap(), len);
            let m = &maps[i as usize];
            m.set(&zero);
            settle();
            assert!(
                m.bytes() == zero,
                "round {round}: a copy reached area {i} after its unmap returned"
            );
            r.map(m.addr, len, iova(i), Prot::RW, true);
        }
    });
}
