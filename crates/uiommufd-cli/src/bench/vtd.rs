//! Case 8: the software IOMMU (`uiommufd::vtd`): translation (IOTLB hit,
//! random among 1024 mappings), DMA by IOVA, dirty read-and-clear per GiB
//! from D bits, and mapping 1 GiB of present 4 KiB memory into an IOAS
//! with 1 and 2 VT-d domains (and attaching a second one).
//!
//! The DMA rows use the fault-safe in-process copy: this case installs the
//! engine's `SIGSEGV`/`SIGBUS` handler (the bench owns its signals), so it
//! runs last; the earlier cases keep `process_vm_readv/writev`.

use std::sync::Arc;
use std::time::Instant;

use uiommufd::domain::{Domain, HostAddr, Iova};
use uiommufd::vtd::{Fault, Iotlb, VtdDomain};
use uiommufd::{Context, Prot};

use super::cases::es;
use super::dirty::{dirty_pages, dirty_request, floor_median, timed_dirty_reads};
use super::util::{
    gbps, median, memcpy_gbps, ns_per_op, populate_present_gbps, Backing, Buf, KIB4,
};
use super::{RatioKind, Report, Row, Scale, Unit};

/// Where the large buffers are mapped.
const IOVA: u64 = 1 << 32;

/// An 8-byte load from a present page: the floor of a lookup.
fn load_floor(s: &Scale, page: &Buf) -> f64 {
    let a = page.addr() + 64;
    ns_per_op(s.reps, s.iters * 10, || {
        // SAFETY: the page is ours, present and 4 KiB long.
        let v = unsafe { std::ptr::read_volatile(a as *const u64) };
        std::hint::black_box(v);
    })
}

/// Nanoseconds per translation: `op` (one translation) run `s.iters * 10`
/// times per repetition. Inlined, so that each call site's loop is the
/// one it would write itself.
#[inline(always)]
fn ns_per_translate(s: &Scale, mut op: impl FnMut() -> Result<(u64, u64), Fault>) -> f64 {
    ns_per_op(s.reps, s.iters * 10, || {
        // one word out: a black-boxed tuple would be stored as two words
        // and reloaded as one, a store-forwarding stall the harness adds
        let (h, n) = op().expect("translate");
        std::hint::black_box(h ^ n);
    })
}

/// Time a lookup (`op`, one translation) and report it as row `id`
/// against the 8-byte load `floor`.
fn time_lookup(
    s: &Scale,
    r: &mut Report,
    floor: f64,
    id: &str,
    what: &str,
    op: impl FnMut() -> Result<(u64, u64), Fault>,
) {
    r.push(lookup_row(id, what, ns_per_translate(s, op), floor));
}

/// A row of a lookup's time per operation against the 8-byte load.
fn lookup_row(id: &str, what: &str, ns: f64, floor: f64) -> Row {
    Row::vs_floor(id, 8, what, Unit::NsPerOp, ns, floor, "8-byte load")
}

/// Run case 8.
pub fn vtd(s: &Scale, r: &mut Report) -> Result<(), String> {
    translate(s, r)?;
    dma(s, r)?;
    dirty(s, r)?;
    map_large(s, r)
}

fn translate(s: &Scale, r: &mut Report) -> Result<(), String> {
    let page = Buf::populated(KIB4, Backing::Small)?;
    let floor = load_floor(s, &page);
    let dom = VtdDomain::new(48, false).map_err(es)?;
    let base = 1u64 << 40;
    // 1024 one-page mappings, every other page, like case 5's areas
    for i in 0..1024u64 {
        dom.map(
            Iova(base + i * 2 * KIB4),
            HostAddr(page.addr()),
            KIB4,
            Prot::RW,
            u64::MAX,
        )
        .map_err(es)?;
    }
    let mut tlb = Iotlb::new(dom.clone());
    time_lookup(
        s,
        r,
        floor,
        "8.vtd.translate.hit",
        "Iotlb::translate of one cached IOVA (generation check, tag, permission)",
        || tlb.translate(std::hint::black_box(base + 64), 8, false),
    );
    // an IOVA in a scattered one of the 1024 mappings, each time the next
    let mut k = 0u64;
    let mut scattered = move || {
        k = (k + 389) % 1024;
        base + k * 2 * KIB4 + 64
    };
    time_lookup(
        s,
        r,
        floor,
        "8.vtd.translate.1024",
        "Iotlb::translate at a random one of 1024 4 KiB mappings (1024-slot IOTLB)",
        || tlb.translate(scattered(), 8, false),
    );
    time_lookup(
        s,
        r,
        floor,
        "8.vtd.translate.1024.walk",
        "VtdDomain::translate (4-level walk, no cache) at a random one of 1024 mappings",
        || dom.translate(scattered(), 8, false),
    );
    nested_translate(s, r, floor)
}

/// First-stage nesting: a 4-level user table in memory a 4-level parent
/// maps (guest pages 0..3 the tables, page 4 the data every PT entry
/// names), translated through a `VtdNestedDomain`.
fn nested_translate(s: &Scale, r: &mut Report, floor: f64) -> Result<(), String> {
    // table entries are read in process, as under the preload (which
    // always installs the handler)
    if !uiommufd::faultsafe::install() {
        r.skip("8.vtd.nested.*", "no fault-safe copy on this architecture");
        return Ok(());
    }
    use uiommufd::vtd::nested::{fl, IommuHwptVtdS1};
    use uiommufd::vtd::VtdNestedDomain;
    let mem = Buf::populated(5 * KIB4, Backing::Small)?;
    let parent = VtdDomain::new(48, false).map_err(es)?;
    parent
        .map(Iova(0), HostAddr(mem.addr()), 5 * KIB4, Prot::RW, KIB4)
        .map_err(es)?;
    let set = |page: u64, idx: u64, v: u64| {
        // SAFETY: an 8-byte entry inside our populated buffer.
        unsafe { std::ptr::write((mem.addr() + page * KIB4 + idx * 8) as *mut u64, v) };
    };
    let urw = fl::P | fl::RW | fl::US;
    set(0, 0, KIB4 | urw);
    set(1, 0, (2 * KIB4) | urw);
    set(2, 0, (3 * KIB4) | urw);
    for i in 0..512 {
        set(3, i, (4 * KIB4) | urw);
    }
    let n = VtdNestedDomain::new(
        parent,
        IommuHwptVtdS1 {
            flags: 0,
            pgtbl_addr: 0,
            addr_width: 48,
            __reserved: 0,
        },
    );
    let mut tlb = Iotlb::nested(n.clone());
    time_lookup(
        s,
        r,
        floor,
        "8.vtd.nested.translate.hit",
        "Iotlb::translate over a nested domain, one cached IOVA (both stages combined in the slot; generation check, tag, permission)",
        || tlb.translate(std::hint::black_box(64), 8, false),
    );
    // misses without an invalidation: a one-slot IOTLB, and pages 64
    // apart, which share the first-stage cache's slot
    let mut one = Iotlb::nested_with_slots(n.clone(), 1);
    let mut k = 0u64;
    let miss = ns_per_translate(s, || {
        k = (k + 64 * 3) % 512;
        one.translate(k * KIB4 + 64, 8, false)
    });
    // the same sequence on: each access must have walked
    let w0 = n.walks();
    let walked = (0..64).all(|_| {
        k = (k + 64 * 3) % 512;
        one.translate(k * KIB4 + 64, 8, false).is_ok()
    }) && n.walks() - w0 == 64;
    r.push(
        Row::vs_floor(
            "8.vtd.nested.translate.miss",
            8,
            "Iotlb::translate over a nested domain, missing in the IOTLB and the first-stage cache: a 4-level first-stage walk, each table entry \
             read through the 4-level parent, then the output through it, both caches filled",
            Unit::NsPerOp,
            miss,
            floor,
            "8-byte load",
        )
        .note(if walked { "every access walked" } else { "NOT every access walked" }),
    );
    let mut k = 0u64;
    time_lookup(
        s,
        r,
        floor,
        "8.vtd.nested.translate.invalidated",
        "Iotlb::translate over a nested domain after an invalidation of the page, the invalidation included (it drops the IOTLB's slots too)",
        || {
            k = (k + 389) % 512;
            n.flush_range(k * KIB4, k * KIB4);
            tlb.translate(k * KIB4 + 64, 8, false)
        },
    );
    time_lookup(
        s,
        r,
        floor,
        "8.vtd.nested.translate.domain",
        "VtdNestedDomain::translate (the domain's shared path, no per-device IOTLB): first-stage cache under its lock, then the parent's walk",
        || n.translate(std::hint::black_box(64), 8, false),
    );
    Ok(())
}

fn dma(s: &Scale, r: &mut Report) -> Result<(), String> {
    if !uiommufd::faultsafe::install() {
        r.skip("8.vtd.dma.*", "no fault-safe copy on this architecture");
        return Ok(());
    }
    let ctx = Context::new();
    let ioas = ctx.ioas(ctx.ioas_alloc().map_err(es)?).map_err(es)?;
    let dom = VtdDomain::new(48, false).map_err(es)?;
    ioas.iopt().add_domain(dom.clone()).map_err(es)?;
    let big = 4u64 << 20;
    let buf = Buf::populated(big, Backing::Huge)?;
    ioas.map_user(buf.addr(), big, Some(IOVA), Prot::RW)
        .map_err(es)?;
    let mut tlb = Iotlb::new(dom.clone());
    for (sname, len) in [("64k", 64u64 << 10), ("4m", big)] {
        let floor = memcpy_gbps(s.reps, len)?;
        let mut local = Buf::populated(len, Backing::Huge)?;
        for (dname, write) in [("read", false), ("write", true)] {
            let iters = ((64u64 << 20) / len).clamp(4, s.iters);
            let ns = ns_per_op(s.reps, iters, || {
                if write {
                    tlb.write(IOVA, local.bytes()).expect("dma write");
                } else {
                    tlb.read(IOVA, local.bytes()).expect("dma read");
                }
            });
            r.push(Row::vs_floor(
                format!("8.vtd.dma.{sname}.{dname}"),
                8,
                format!(
                    "Iotlb::{dname} {} by IOVA (2 MiB leaves, fault-safe copy)",
                    if len >= 1 << 20 {
                        format!("{} MiB", len >> 20)
                    } else {
                        format!("{} KiB", len >> 10)
                    }
                ),
                Unit::GBps,
                len as f64 / ns,
                floor,
                "memcpy of the same bytes",
            ));
        }
    }
    ioas.unmap_all().map_err(es)?;
    Ok(())
}

/// Dirty fractions of case 8's dirty rows, in parts per 1000.
const VTD_DIRTY: [(u64, &str); 3] = [(0, "0%"), (10, "1%"), (1000, "100%")];

/// Median time of a dirty read over `span` bytes from `IOVA` after a
/// device's writes through `tlb` to the `permille` pages (one translation
/// per dirty page), and the bits it reported.
fn timed_vtd_dirty(
    s: &Scale,
    iopt: &uiommufd::plumbing::io_pagetable::IoPagetable,
    tlb: &mut Iotlb,
    span: u64,
    permille: u64,
) -> (std::time::Duration, u64) {
    let pages = span / KIB4;
    let req = dirty_request(IOVA, span);
    let mut bitmap = vec![0u64; pages.div_ceil(64) as usize];
    let id = tlb.domain().id();
    timed_dirty_reads(s, iopt, id, &req, &mut bitmap, || {
        for p in dirty_pages(pages, permille) {
            tlb.translate(IOVA + p * KIB4, 8, true).expect("write");
        }
    })
}

fn dirty(s: &Scale, r: &mut Report) -> Result<(), String> {
    let len = s.large;
    let npages = len / KIB4;
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let buf = Buf::populated(len, Backing::Small)?;
    let ctx = Context::new();
    let ioas = ctx.ioas(ctx.ioas_alloc().map_err(es)?).map_err(es)?;
    let iopt = ioas.iopt();
    let dom = VtdDomain::new(48, true).map_err(es)?;
    iopt.add_domain(dom.clone()).map_err(es)?;
    ioas.map_user(buf.addr(), len, Some(IOVA), Prot::RW)
        .map_err(es)?;
    iopt.set_dirty_tracking(dom.id(), true).map_err(es)?;
    let mut bitmap = vec![0u64; npages.div_ceil(64) as usize];
    let mut ptes = vec![0u64; npages as usize];
    let mut tlb = Iotlb::new(dom.clone());
    let mut per_gib = Vec::new();
    for (permille, name) in VTD_DIRTY {
        let (d, found) = timed_vtd_dirty(s, iopt, &mut tlb, len, permille);
        // the VT-d D bit
        let f = floor_median::<9>(s, npages, permille, &mut ptes, &mut bitmap);
        per_gib.push(d.as_secs_f64() * 1e3 / gib(len));
        r.push(
            Row::vs_floor(
                format!("8.vtd.dirty.{name}"),
                8,
                format!(
                    "IoPagetable::read_and_clear_dirty per GiB at 4 KiB pages, {name} dirty, 1 VT-d domain"
                ),
                Unit::Ms,
                d.as_secs_f64() * 1e3 / gib(len),
                f.as_secs_f64() * 1e3 / gib(len),
                "one scan of a dense 8-byte-PTE array, test-and-clear + bitmap",
            )
            .note(format!("{found} bits set")),
        );
    }
    // the same over the dirty span (64 GiB; --quick: 1 GiB): the buffer
    // mapped again at each following GiB of IOVA, the dirty pages spread
    // over all of it; per GiB against the 1 GiB rows
    let copies = s.dirty_span / len;
    if copies > 1 {
        for k in 1..copies {
            ioas.map_user(buf.addr(), len, Some(IOVA + k * len), Prot::RW)
                .map_err(es)?;
        }
        let span = copies * len;
        for ((permille, name), one) in VTD_DIRTY.into_iter().zip(&per_gib) {
            let (d, found) = timed_vtd_dirty(s, iopt, &mut tlb, span, permille);
            let ms = d.as_secs_f64() * 1e3 / gib(span);
            r.push(
                Row::plain(
                    format!("8.vtd.dirty.{}g.{name}", span >> 30),
                    8,
                    format!(
                        "IoPagetable::read_and_clear_dirty per GiB over {} GiB at 4 KiB pages, {name} dirty, 1 VT-d domain; \
                         g = per-GiB cost here / at 1 GiB (<= 1: linear or better)",
                        span >> 30
                    ),
                    Unit::Ms,
                    ms,
                )
                .ratio(RatioKind::VsSmallest, ms / one.max(1e-9))
                .note(format!("{found} bits set")),
            );
        }
    }
    iopt.set_dirty_tracking(dom.id(), false).map_err(es)?;
    ioas.unmap_all().map_err(es)?;
    Ok(())
}

fn map_large(s: &Scale, r: &mut Report) -> Result<(), String> {
    let len = s.large;
    let npages = len / KIB4;
    let buf = Buf::populated(len, Backing::Small)?;
    let floor = populate_present_gbps(s.large_reps, &buf);
    let mut per_dom = Vec::new();
    for ndom in [1usize, 2] {
        let ctx = Context::new();
        let ioas = ctx.ioas(ctx.ioas_alloc().map_err(es)?).map_err(es)?;
        let mut doms: Vec<Arc<VtdDomain>> = Vec::new();
        for _ in 0..ndom {
            let d = VtdDomain::new(48, false).map_err(es)?;
            ioas.iopt().add_domain(d.clone()).map_err(es)?;
            doms.push(d);
        }
        let mut unmaps = Vec::new();
        let d = median(s.large_reps, || {
            let t = Instant::now();
            ioas.map_user(buf.addr(), len, Some(IOVA), Prot::RW)
                .expect("map");
            let m = t.elapsed();
            let t = Instant::now();
            ioas.unmap(IOVA, len).expect("unmap");
            unmaps.push(t.elapsed());
            m
        });
        unmaps.sort();
        per_dom.push(d.as_secs_f64());
        r.push(
            Row::vs_floor(
                format!("8.vtd.map_1g.4k.{ndom}dom"),
                8,
                format!(
                    "map {} MiB present, 4 KiB pages, {ndom} VT-d domain(s): pin + {} PTEs per domain",
                    len >> 20,
                    npages
                ),
                Unit::GBps,
                gbps(len, d),
                floor,
                "MADV_POPULATE_WRITE, present",
            )
            .note(format!(
                "map {:.2} ms, unmap {:.2} ms",
                d.as_secs_f64() * 1e3,
                unmaps[unmaps.len() / 2].as_secs_f64() * 1e3
            )),
        );
    }
    let second = (per_dom[1] - per_dom[0]) * 1e9 / npages as f64;
    if second > 0.0 {
        r.push(
            Row::plain(
                "8.vtd.map_1g.4k.second_dom",
                8,
                "the second VT-d domain's share of a 1 GiB map (2dom - 1dom), per 4 KiB page",
                Unit::NsPerOp,
                second,
            )
            .note("target <= 2 ns/page"),
        );
    } else {
        r.skip(
            "8.vtd.map_1g.4k.second_dom",
            "noise: the 2-domain map was not slower than the 1-domain map",
        );
    }
    // The domain alone (what a second domain adds to a map): 1 GiB of
    // 4 KiB leaves (the buffer is not 2 MiB aligned) into a fresh domain,
    // and into one whose tables exist from an earlier map of that IOVA.
    let fresh = median(s.large_reps, || {
        let dom = VtdDomain::new(48, false).expect("domain");
        let t = Instant::now();
        dom.map(Iova(IOVA), HostAddr(buf.addr()), len, Prot::RW, u64::MAX)
            .expect("map");
        t.elapsed()
    });
    let dom = VtdDomain::new(48, false).map_err(es)?;
    let warm = median(s.large_reps, || {
        let t = Instant::now();
        dom.map(Iova(IOVA), HostAddr(buf.addr()), len, Prot::RW, u64::MAX)
            .expect("map");
        let el = t.elapsed();
        dom.unmap(IOVA, len);
        el
    });
    for (name, d, what) in [
        ("fresh", fresh, "a fresh domain (table allocation included)"),
        ("warm", warm, "a domain whose tables exist"),
    ] {
        r.push(
            Row::plain(
                format!("8.vtd.domain_map_1g.4k.{name}"),
                8,
                format!(
                    "VtdDomain::map of {} MiB as 4 KiB leaves into {what}, per page",
                    len >> 20
                ),
                Unit::NsPerOp,
                d.as_secs_f64() * 1e9 / npages as f64,
            )
            .note(format!(
                "{:.3} ms; target <= 2 ns/page",
                d.as_secs_f64() * 1e3
            )),
        );
    }
    // attaching a fresh domain to an IOAS that already maps 1 GiB: the
    // fill alone (pages are pinned by the first domain), tables included
    let ctx = Context::new();
    let ioas = ctx.ioas(ctx.ioas_alloc().map_err(es)?).map_err(es)?;
    let first = VtdDomain::new(48, false).map_err(es)?;
    ioas.iopt().add_domain(first.clone()).map_err(es)?;
    ioas.map_user(buf.addr(), len, Some(IOVA), Prot::RW)
        .map_err(es)?;
    let d = median(s.large_reps, || {
        let dom = VtdDomain::new(48, false).expect("domain");
        let t = Instant::now();
        ioas.iopt().add_domain(dom.clone()).expect("attach");
        let el = t.elapsed();
        ioas.iopt().remove_domain(dom.id());
        el
    });
    r.push(Row::plain(
        "8.vtd.attach_1g.4k",
        8,
        format!(
            "add_domain of a fresh VT-d domain to an IOAS mapping {} MiB of 4 KiB pages (fill + table allocation), per page",
            len >> 20
        ),
        Unit::NsPerOp,
        d.as_secs_f64() * 1e9 / npages as f64,
    ).note(format!("{:.2} ms", d.as_secs_f64() * 1e3)));
    ioas.unmap_all().map_err(es)?;
    Ok(())
}
