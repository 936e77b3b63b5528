//! Cases 1 (Rust API and dispatcher), 2, 3, 4 and 5; the preload's ioctl
//! path is in `preload.rs`, the dirty bitmap in `dirty.rs`, the growth
//! table in `growth.rs`.

use std::sync::{Arc, Barrier, Weak};
use std::time::{Duration, Instant};

use uiommufd::access::{Access, AccessOps, CopyOnly};
use uiommufd::dispatch;
use uiommufd::ioas::Ioas;
use uiommufd::mock::domain::{MockDomain, MOCK_APERTURE_START};
use uiommufd::pages::Pages;
use uiommufd::uapi::{
    IommuIoasMap, IommuIoasUnmap, IOMMU_IOAS_MAP, IOMMU_IOAS_MAP_FIXED_IOVA,
    IOMMU_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_UNMAP,
};
use uiommufd::{Context, Prot};

use super::util::{
    gbps, median, memcpy_gbps, ns_per_op, populate, populate_present_gbps, Backing, Buf, KIB4, MIB2,
};
use super::{Report, Row, Scale, Unit};

/// Engine errors as strings.
pub fn es(e: uiommufd::Error) -> String {
    e.to_string()
}

/// Where single pages are mapped: inside the mock aperture, 2 MiB aligned.
const SMALL_IOVA: u64 = MOCK_APERTURE_START + 4 * MIB2;
/// Where the large buffers are mapped: 1 GiB, so that 1 GiB ends at the
/// mock aperture's last byte.
const LARGE_IOVA: u64 = 1 << 30;
/// Where case 5 maps its many areas (10^6 of them, every other page).
const MANY_IOVA: u64 = 1 << 36;

/// A context, one IOAS in it, and the mock domains attached to the IOAS.
pub type Setup = (Arc<Context>, Arc<Ioas>, Vec<Arc<MockDomain>>);

/// A new context with one IOAS and `ndom` mock domains attached to it.
pub fn ioas_with_domains(ndom: usize) -> Result<Setup, String> {
    let ctx = Context::new();
    let id = ctx.ioas_alloc().map_err(es)?;
    let ioas = ctx.ioas(id).map_err(es)?;
    let mut doms = Vec::new();
    for _ in 0..ndom {
        let d = MockDomain::new(false);
        ioas.iopt().add_domain(d.clone()).map_err(es)?;
        doms.push(d);
    }
    Ok((ctx, ioas, doms))
}

/// Case 1 (a): map+unmap of one present 4 KiB page through the Rust API
/// with 0 and 1 mock domain, and through the dispatcher (the uAPI bytes
/// path without the preload); floor: `MADV_POPULATE_WRITE` of the page.
pub fn map_one_page(s: &Scale, r: &mut Report) -> Result<(), String> {
    let buf = Buf::populated(KIB4, Backing::Small)?;
    let a = buf.addr();
    let floor = ns_per_op(s.reps, s.iters, || {
        populate(a, KIB4).expect("populate one page");
    });
    let floor_what = "MADV_POPULATE_WRITE of the present page";
    for ndom in [0usize, 1] {
        let (_ctx, ioas, _doms) = ioas_with_domains(ndom)?;
        let ns = ns_per_op(s.reps, s.iters, || {
            ioas.map_user(a, KIB4, Some(SMALL_IOVA), Prot::RW)
                .expect("map one page");
            ioas.unmap(SMALL_IOVA, KIB4).expect("unmap one page");
        });
        let what = if ndom == 0 {
            "map+unmap 4 KiB, Rust API, no domain (no pin)"
        } else {
            "map+unmap 4 KiB, Rust API, 1 mock domain (pin + 2 mock entries)"
        };
        r.push(Row::vs_floor(
            format!("1.map_unmap_4k.rust.{ndom}dom"),
            1,
            what,
            Unit::NsPerOp,
            ns,
            floor,
            floor_what,
        ));
    }

    // The dispatcher: the same two ioctls as uAPI structs, in process.
    let ctx = Context::new();
    let ioas_id = ctx.ioas_alloc().map_err(es)?;
    let mut map = IommuIoasMap {
        size: std::mem::size_of::<IommuIoasMap>() as u32,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id,
        user_va: a,
        length: KIB4,
        iova: SMALL_IOVA,
        ..Default::default()
    };
    let mut unmap = IommuIoasUnmap {
        size: std::mem::size_of::<IommuIoasUnmap>() as u32,
        ioas_id,
        iova: SMALL_IOVA,
        length: KIB4,
    };
    let map_arg = std::ptr::addr_of_mut!(map) as u64;
    let unmap_arg = std::ptr::addr_of_mut!(unmap) as u64;
    let ns = ns_per_op(s.reps, s.iters, || {
        dispatch::ioctl(&ctx, IOMMU_IOAS_MAP as u64, map_arg).expect("IOMMU_IOAS_MAP");
        dispatch::ioctl(&ctx, IOMMU_IOAS_UNMAP as u64, unmap_arg).expect("IOMMU_IOAS_UNMAP");
    });
    // keep the structs alive (and written) until after the loop
    std::hint::black_box((&mut map, &mut unmap));
    r.push(Row::vs_floor(
        "1.map_unmap_4k.dispatch.0dom",
        1,
        "IOMMU_IOAS_MAP+UNMAP 4 KiB via dispatch::ioctl in process, no domain",
        Unit::NsPerOp,
        ns,
        floor,
        floor_what,
    ));
    Ok(())
}

/// Time one map of `buf` into `ioas` at [`LARGE_IOVA`]; unmaps after
/// (untimed). Returns (map, unmap) durations.
fn time_map(ioas: &Ioas, buf: &Buf) -> (Duration, Duration) {
    let t = Instant::now();
    ioas.map_user(buf.addr(), buf.len(), Some(LARGE_IOVA), Prot::RW)
        .expect("map the large buffer");
    let m = t.elapsed();
    let t = Instant::now();
    ioas.unmap(LARGE_IOVA, buf.len())
        .expect("unmap the large buffer");
    (m, t.elapsed())
}

fn size_name(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{} GiB", n >> 30)
    } else {
        format!("{} MiB", n >> 20)
    }
}

/// Case 2: map a large buffer (1 GiB; 4 KiB pages or THP) into an IOAS
/// with 0, 1, 2 mock domains, from present and from fresh memory; floors:
/// `MADV_POPULATE_WRITE` of the same range, present and fresh.
pub fn map_large(s: &Scale, r: &mut Report) -> Result<(), String> {
    let len = s.large;
    for (bname, backing) in [("4k", Backing::Small), ("thp", Backing::Huge)] {
        let buf = Buf::populated(len, backing)?;
        let floor_present = populate_present_gbps(s.large_reps, &buf);
        let floor_fresh = gbps(
            len,
            median(s.large_reps, || {
                let b = Buf::new(len, backing).expect("mmap");
                let t = Instant::now();
                populate(b.addr(), len).expect("populate");
                t.elapsed()
            }),
        );
        let pages = if backing == Backing::Small {
            "4 KiB pages"
        } else {
            "THP-backed"
        };
        for ndom in [0usize, 1, 2] {
            let (_ctx, ioas, doms) = ioas_with_domains(ndom)?;
            let mut unmaps = Vec::new();
            let d = median(s.large_reps, || {
                let (m, u) = time_map(&ioas, &buf);
                unmaps.push(u);
                m
            });
            unmaps.sort();
            let unmap_ms = unmaps[unmaps.len() / 2].as_secs_f64() * 1e3;
            let what = match ndom {
                0 => format!(
                    "map {} present, {pages}, no domain (no pin)",
                    size_name(len)
                ),
                n => format!(
                    "map {} present, {pages}, {n} mock domain(s): pin + {} mock entries",
                    size_name(len),
                    n as u64 * len / 2048
                ),
            };
            r.push(
                Row::vs_floor(
                    format!("2.map_1g.{bname}.{ndom}dom"),
                    2,
                    what,
                    Unit::GBps,
                    gbps(len, d),
                    floor_present,
                    "MADV_POPULATE_WRITE, present",
                )
                .note(format!(
                    "map {:.1} ms, unmap {unmap_ms:.1} ms",
                    d.as_secs_f64() * 1e3
                )),
            );
            if ndom == 0 {
                continue;
            }
            let d = median(s.large_reps, || {
                let b = Buf::new(len, backing).expect("mmap");
                time_map(&ioas, &b).0
            });
            r.push(
                Row::vs_floor(
                    format!("2.map_1g.{bname}.{ndom}dom.fresh"),
                    2,
                    format!(
                        "map {} fresh (new mmap), {pages}, {ndom} mock domain(s)",
                        size_name(len)
                    ),
                    Unit::GBps,
                    gbps(len, d),
                    floor_fresh,
                    "MADV_POPULATE_WRITE, fresh mmap",
                )
                .note(format!("map {:.1} ms", d.as_secs_f64() * 1e3)),
            );
            drop(doms);
        }
    }
    Ok(())
}

/// Case 3: `IOAS_COPY` of the large area into a second IOAS with 0 and 1
/// mock domain: the time, and that no page is pinned again.
pub fn copy_large(s: &Scale, r: &mut Report) -> Result<(), String> {
    let len = s.large;
    let buf = Buf::populated(len, Backing::Small)?;
    let (_c1, src, _d1) = ioas_with_domains(1)?;
    src.map_user(buf.addr(), len, Some(LARGE_IOVA), Prot::RW)
        .map_err(es)?;
    let probes = [buf.addr(), buf.addr() + len / 2, buf.addr() + len - KIB4];
    let pins = || -> Vec<u32> {
        probes
            .iter()
            .map(|&a| Pages::pins_of_user_page(a))
            .collect()
    };
    for ndom in [0usize, 1] {
        let (_c2, dst, _d2) = ioas_with_domains(ndom)?;
        let mut deltas = Vec::new();
        let mut pin_before = Vec::new();
        let mut pin_after = Vec::new();
        let d = median(s.large_reps, || {
            let vm = uiommufd::client::Client::ours().pinned_vm();
            pin_before = pins();
            let t = Instant::now();
            dst.copy_from(&src, LARGE_IOVA, len, Some(LARGE_IOVA), Prot::RW)
                .expect("IOAS_COPY");
            let el = t.elapsed();
            deltas.push(uiommufd::client::Client::ours().pinned_vm() as i64 - vm as i64);
            pin_after = pins();
            dst.unmap(LARGE_IOVA, len).expect("unmap the copy");
            el
        });
        let max_delta = deltas.iter().map(|d| d.abs()).max().unwrap_or(0);
        let what = if ndom == 0 {
            format!("IOAS_COPY {} into an IOAS with no domain", size_name(len))
        } else {
            format!(
                "IOAS_COPY {} into an IOAS with 1 mock domain (fill, no pin)",
                size_name(len)
            )
        };
        r.push(
            Row::plain(
                format!("3.copy_1g.{ndom}dom"),
                3,
                what,
                Unit::Ms,
                d.as_secs_f64() * 1e3,
            )
            .note(format!(
                "{}pinned_vm delta {max_delta} pages; pins of 3 probe pages {:?} -> {:?}",
                if ndom > 0 {
                    format!("{:.2} GB/s; ", gbps(len, d))
                } else {
                    String::new()
                },
                pin_before,
                pin_after
            )),
        );
    }
    src.unmap(LARGE_IOVA, len).map_err(es)?;
    Ok(())
}

/// One run of case 4: `n` threads each map+unmap their own page at their
/// own fixed IOVA `iters` times; returns the total pairs per second.
fn thread_run(ioas: &Arc<Ioas>, bufs: &[Buf], n: usize, iters: u64) -> f64 {
    let barrier = Barrier::new(n + 1);
    let start = std::thread::scope(|sc| {
        for (i, b) in bufs.iter().take(n).enumerate() {
            let ioas = ioas.clone();
            let barrier = &barrier;
            let a = b.addr();
            sc.spawn(move || {
                let iova = SMALL_IOVA + (i as u64 + 1) * MIB2;
                barrier.wait();
                for _ in 0..iters {
                    ioas.map_user(a, KIB4, Some(iova), Prot::RW)
                        .expect("map (thread)");
                    ioas.unmap(iova, KIB4).expect("unmap (thread)");
                }
            });
        }
        barrier.wait();
        Instant::now()
    });
    (n as u64 * iters) as f64 / start.elapsed().as_secs_f64()
}

/// Case 4: map/unmap of disjoint fixed ranges of one IOAS from 1, 2 (and
/// `--threads N`) threads, with 0 and 1 mock domain.
pub fn threads(s: &Scale, r: &mut Report) -> Result<(), String> {
    let maxn = s.threads.iter().copied().max().unwrap_or(1);
    let bufs: Vec<Buf> = (0..maxn)
        .map(|_| Buf::populated(KIB4, Backing::Small))
        .collect::<Result<_, _>>()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for ndom in [0usize, 1] {
        let (_ctx, ioas, _doms) = ioas_with_domains(ndom)?;
        let mut base = None;
        for &n in &s.threads {
            thread_run(&ioas, &bufs, n, s.thread_iters / 10);
            let mut v: Vec<f64> = (0..s.large_reps)
                .map(|_| thread_run(&ioas, &bufs, n, s.thread_iters))
                .collect();
            v.sort_by(f64::total_cmp);
            let ops = v[v.len() / 2];
            let b = *base.get_or_insert(ops);
            r.push(
                Row::plain(
                    format!("4.threads.{ndom}dom.t{n}"),
                    4,
                    format!(
                        "{n} thread(s) map+unmap 4 KiB at disjoint fixed IOVAs of one IOAS, {ndom} mock domain(s)"
                    ),
                    Unit::KOpsPerSec,
                    ops / 1e3,
                )
                .ratio(super::RatioKind::SpeedupVs1Thread, ops / b)
                .note(format!(
                    "one op = map+unmap pair; {:.0} ns per pair per thread; {cpus} CPUs",
                    n as f64 * 1e9 / ops
                )),
            );
        }
    }
    Ok(())
}

/// The process's own memory reached only through
/// `process_vm_readv`/`process_vm_writev`, as `SelfMemory` does while
/// fault-safe copies are off: case 5's `.syscall` rows.
#[derive(Debug)]
struct SyscallMemory;

impl SyscallMemory {
    /// `process_vm_writev` (`write`) of `len` bytes at `local` to `addr`,
    /// or `process_vm_readv` of them from `addr` into `local`.
    ///
    /// # Safety
    /// `local` is valid for `len` bytes (written unless `write`).
    unsafe fn copy(addr: u64, local: *mut u8, len: usize, write: bool) -> uiommufd::Result<()> {
        // SAFETY: `local` as the caller promises.
        if unsafe { uiommufd::process::vm_copy(libc::getpid(), addr, local, len, write) } {
            Ok(())
        } else {
            Err(uiommufd::Error::fault(
                "bench: process_vm_readv/writev failed",
            ))
        }
    }
}

impl uiommufd::user::UserMemory for SyscallMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> uiommufd::Result<()> {
        // SAFETY: our own buffer, written.
        unsafe { Self::copy(addr, buf.as_mut_ptr(), buf.len(), false) }
    }

    fn write(&self, addr: u64, buf: &[u8]) -> uiommufd::Result<()> {
        // SAFETY: our own buffer, only read for a write.
        unsafe { Self::copy(addr, buf.as_ptr().cast_mut(), buf.len(), true) }
    }

    fn populate(&self, addr: u64, len: u64, write: bool) -> uiommufd::Result<()> {
        let _ = write;
        populate(addr, len).map_err(|e| uiommufd::Error::new(libc::EFAULT, e))
    }
}

/// Case 5's context, its access (attached to the one IOAS) and the 4 MiB
/// buffer mapped there.
struct RwSetup {
    ctx: Arc<Context>,
    acc: Arc<Access>,
    _ops: Arc<dyn AccessOps>,
    _buf: Buf,
}

/// First IOVA of case 5's 1024 one-page areas (8 KiB apart).
const AREAS_IOVA: u64 = 1 << 40;

/// One IOAS with a 4 MiB buffer at `LARGE_IOVA` and 1024 one-page areas
/// from [`AREAS_IOVA`] (every other page), an attached copy-only access, on
/// a context reaching memory through `mem` (`None`: the default,
/// `SelfMemory`).
fn rw_setup(mem: Option<Arc<dyn uiommufd::user::UserMemory>>) -> Result<RwSetup, String> {
    let ctx = match mem {
        Some(m) => Context::with_memory(m),
        None => Context::new(),
    };
    let id = ctx.ioas_alloc().map_err(es)?;
    let ioas = ctx.ioas(id).map_err(es)?;
    let big = 4u64 << 20;
    let buf = Buf::populated(big, Backing::Huge)?;
    ioas.map_user(buf.addr(), big, Some(LARGE_IOVA), Prot::RW)
        .map_err(es)?;
    let src = ioas.iopt().get_pages(LARGE_IOVA, KIB4).map_err(es)?;
    for i in 0..1024u64 {
        ioas.map_sources(src.clone(), KIB4, Some(AREAS_IOVA + i * 2 * KIB4), Prot::RW)
            .map_err(es)?;
    }
    let ops: Arc<dyn AccessOps> = Arc::new(CopyOnly);
    let acc = Access::create(&ctx, Arc::downgrade(&ops) as Weak<dyn AccessOps>).map_err(es)?;
    acc.attach(&ctx, id).map_err(es)?;
    Ok(RwSetup {
        ctx,
        acc,
        _ops: ops,
        _buf: buf,
    })
}

/// Case 5: `Access::rw` by IOVA of 64 KiB and 4 MiB, both directions
/// (floor: memcpy of the same bytes), and of 8 bytes in an IOAS of 1024
/// areas, at a random one (compare: the C library's IOVA->pointer lookup)
/// and again and again at the same one (its same-region hit). The plain
/// rows use the fast path: this case turns fault-safe copies on
/// (`uiommufd::faultsafe::install`, for the rest of the run, as the
/// preload does for every program), so bytes move in place; the
/// `.syscall` rows are the same calls on a context whose memory is only
/// reached through `process_vm_readv`/`process_vm_writev`, the path of a
/// program that does not opt in.
pub fn access_rw(s: &Scale, r: &mut Report) -> Result<(), String> {
    let fast = uiommufd::faultsafe::install();
    let fast_note = if fast {
        "in place (faultsafe::install)"
    } else {
        "fault-safe copies unavailable: process_vm_readv/writev"
    };
    let slow_mem: Arc<dyn uiommufd::user::UserMemory> = Arc::new(SyscallMemory);
    let setups = [
        ("", rw_setup(None)?),
        (".syscall", rw_setup(Some(slow_mem))?),
    ];
    for (sname, len) in [("64k", 64u64 << 10), ("4m", 4u64 << 20)] {
        let floor = memcpy_gbps(s.reps, len)?;
        let mut local = Buf::populated(len, Backing::Huge)?;
        for (dname, write) in [("read", false), ("write", true)] {
            for (suffix, st) in &setups {
                let iters = ((64u64 << 20) / len).clamp(4, s.iters);
                let ns = ns_per_op(s.reps, iters, || {
                    st.acc
                        .rw(LARGE_IOVA, local.bytes(), write)
                        .expect("access rw");
                });
                r.push(Row::vs_floor(
                    format!("5.rw.{sname}.{dname}{suffix}"),
                    5,
                    format!(
                        "Access::rw {} {} by IOVA (one area), {}",
                        dname,
                        if len >= 1 << 20 {
                            format!("{} MiB", len >> 20)
                        } else {
                            format!("{} KiB", len >> 10)
                        },
                        if suffix.is_empty() {
                            fast_note
                        } else {
                            "through process_vm_readv/writev"
                        }
                    ),
                    Unit::GBps,
                    len as f64 / ns,
                    floor,
                    "memcpy of the same bytes",
                ));
            }
        }
    }
    // 8 bytes among 1024 areas: the lookup plus the smallest copy.
    let page = Buf::populated(KIB4, Backing::Small)?;
    let floor = ns_per_op(s.reps, s.iters, || {
        // SAFETY: the page is ours, present and 4 KiB long.
        let v = unsafe { std::ptr::read_volatile((page.addr() + 64) as *const [u8; 8]) };
        std::hint::black_box(v);
    });
    for (suffix, st) in &setups {
        let mut small = [0u8; 8];
        let mut k = 0u64;
        let ns = ns_per_op(s.reps, s.iters, || {
            k = (k + 389) % 1024; // visit the areas out of order
            st.acc
                .rw(AREAS_IOVA + k * 2 * KIB4 + 64, &mut small, false)
                .expect("access rw 8 bytes");
            std::hint::black_box(&small);
        });
        let how = if suffix.is_empty() {
            fast_note
        } else {
            "through process_vm_readv"
        };
        r.push(Row::vs_floor(
            format!("5.rw.8b.1024areas{suffix}"),
            5,
            format!("Access::rw read 8 bytes at a random one of 1024 areas, {how}"),
            Unit::NsPerOp,
            ns,
            floor,
            "8-byte load",
        ));
        let mut k = 0u64;
        let ns = ns_per_op(s.reps, s.iters, || {
            k = (k + 8) % 4088; // moving inside one area
            st.acc
                .rw(AREAS_IOVA + 777 * 2 * KIB4 + k, &mut small, false)
                .expect("access rw 8 bytes");
            std::hint::black_box(&small);
        });
        r.push(Row::vs_floor(
            format!("5.rw.8b.same_area{suffix}"),
            5,
            format!("Access::rw read 8 bytes, always in the same one of 1024 areas, {how}"),
            Unit::NsPerOp,
            ns,
            floor,
            "8-byte load",
        ));
    }
    // and among 10^6 areas (--quick: 10^4), the fast path only: the
    // per-thread hint misses, the sorted index is searched
    let n_areas: u64 = if s.large >= 1 << 30 {
        1_000_000
    } else {
        10_000
    };
    let (_, st) = &setups[0];
    let ioas = st.acc.ioas_id().and_then(|id| st.ctx.ioas(id).ok());
    if let Some(ioas) = ioas {
        let src = ioas.iopt().get_pages(LARGE_IOVA, KIB4).map_err(es)?;
        for i in 0..n_areas {
            ioas.map_sources(src.clone(), KIB4, Some(MANY_IOVA + i * 2 * KIB4), Prot::RW)
                .map_err(es)?;
        }
        let mut small = [0u8; 8];
        let mut k = 0u64;
        let step = 389_993 % n_areas;
        // steady state: the index of directly copyable areas is rebuilt
        // once n/8 locked lookups found it stale (its O(n) build paid for
        // by them), so that many lookups come first, untimed
        let t = Instant::now();
        for _ in 0..n_areas / 8 + 4096 {
            k = (k + step) % n_areas;
            st.acc
                .rw(MANY_IOVA + k * 2 * KIB4 + 64, &mut small, false)
                .expect("access rw 8 bytes");
        }
        let warm = t.elapsed();
        let ns = ns_per_op(s.reps, s.iters, || {
            k = (k + step) % n_areas;
            st.acc
                .rw(MANY_IOVA + k * 2 * KIB4 + 64, &mut small, false)
                .expect("access rw 8 bytes");
            std::hint::black_box(&small);
        });
        r.push(
            Row::vs_floor(
                format!("5.rw.8b.{n_areas}areas"),
                5,
                format!(
                    "Access::rw read 8 bytes at a random one of {n_areas} more areas (the IOAS holds {} in all), {fast_note}, \
                     once the lookups have had the index rebuilt",
                    n_areas + 1025
                ),
                Unit::NsPerOp,
                ns,
                floor,
                "8-byte load",
            )
            .note(format!(
                "the first {} lookups (locked walks, then the index build) took {:.1} ms",
                n_areas / 8 + 4096,
                warm.as_secs_f64() * 1e3
            )),
        );
        ioas.unmap(MANY_IOVA, n_areas * 2 * KIB4).map_err(es)?;
    }
    for (_, st) in setups {
        st.acc.destroy(&st.ctx);
    }
    Ok(())
}
