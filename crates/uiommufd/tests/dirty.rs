//! Dirty tracking through the ioctl ABI against a reference model: random
//! sequences of map / unmap / `IOMMU_TEST_OP_DIRTY` / `GET_DIRTY_BITMAP`
//! (clearing and not) / tracking off and on, at several bitmap page sizes,
//! unaligned IOVA starts and unaligned bitmap pointers, on a mock domain
//! with and without huge pages and on a VT-d domain (the software IOMMU,
//! behind an emulated device bound through its cdev; pages made dirty by
//! DMA writes through the domain) with 4 KiB and 2 MiB leaves; plus the
//! errno rules.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use uiommufd::hwpt::HwptPaging;
use uiommufd::mock::device::{MOCK_FLAGS_DEVICE_HUGE_IOVA, MOCK_FLAGS_DEVICE_NO_DIRTY};
use uiommufd::pages::check_accounting;
use uiommufd::plumbing::io_pagetable::DirtyRequest;
use uiommufd::uapi::*;
use uiommufd::Context;

use uiommufd_testkit::iopt_harness::{Dev, Driver};
use uiommufd_testkit::*;

const A: u64 = MOCK_APERTURE_START;
/// The mock's granule (`MOCK_IO_PAGE_SIZE`, half a 4 KiB page).
const G: u64 = 2048;
const HUGE: u64 = 512 * G;

fn domain_id(ctx: &Arc<Context>, hwpt: u32) -> u64 {
    ctx.get::<HwptPaging>(hwpt).unwrap().domain().id()
}

/// xorshift64*: deterministic, seedable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the mock domain should hold: areas and dirty granules.
struct Model {
    /// iova -> length
    areas: BTreeMap<u64, u64>,
    /// dirty granule indexes (IOVA / g)
    dirty: BTreeSet<u64>,
    /// Dirty reporting unit: g, or huge when every area is mapped huge.
    unit: u64,
    /// The domain's granule: the IOAS's IOVA alignment, what a dirty bit
    /// can stand for at least.
    g: u64,
    /// The driver's large leaf.
    huge: u64,
    tracking: bool,
}

impl Model {
    fn mapped(&self, iova: u64) -> bool {
        self.areas
            .range(..=iova)
            .next_back()
            .is_some_and(|(&k, &l)| iova < k + l)
    }

    /// End (exclusive) of the contiguous areas from `iova`, capped at `end`;
    /// `iova` when nothing is mapped there.
    fn covered(&self, iova: u64, end: u64) -> u64 {
        let mut cur = iova;
        while cur < end {
            match self.areas.range(..=cur).next_back() {
                Some((&k, &l)) if cur < k + l => cur = k + l,
                _ => break,
            }
        }
        cur.min(end)
    }

    /// Dirty units overlapping `[s, e)`, as unit start IOVAs.
    fn dirty_units(&self, s: u64, e: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let first = s / self.unit * self.unit;
        // a unit is dirty when any of its granules is, even outside [s, e)
        for g in self
            .dirty
            .range(first / self.g..e.div_ceil(self.unit) * self.unit / self.g)
        {
            let u = g * self.g / self.unit * self.unit;
            if u + self.unit > s && u < e && out.last() != Some(&u) {
                out.push(u);
            }
        }
        out
    }
}

/// One random GET_DIRTY_BITMAP (ioctl, or the Rust API when `rust`) checked
/// against the model.
#[allow(clippy::too_many_arguments)]
fn check_get(
    ctx: &Arc<Context>,
    ioas: u32,
    hwpt: u32,
    m: &mut Model,
    rng: &mut Rng,
    span: u64,
    rust: bool,
) {
    let sizes: [u64; 9] = [
        m.g, 2048, 4096, 8192, 0x3000, 0x10000, 0x20_0000, m.huge, 0x1800,
    ];
    let ps = sizes[rng.below(sizes.len() as u64) as usize];
    let low = 1u64 << ps.trailing_zeros();
    // mostly from inside a mapped area, so that the walk has work to do
    let mut iova = A + rng.below((span / low).max(1)) * low;
    if rng.chance(70) && !m.areas.is_empty() {
        let (&k, &l) = m
            .areas
            .iter()
            .nth(rng.below(m.areas.len() as u64) as usize)
            .unwrap();
        iova = (k + rng.below(l)) / low * low;
    }
    let max_pages = ((A + span + m.huge - iova) / low).max(1);
    let cap = if rng.chance(50) { 64 } else { 3000 };
    let length = (1 + rng.below(max_pages.min(cap))) * low;
    let end = iova + length;
    let flags = if rng.chance(40) {
        IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
    } else {
        0
    };
    let req = DirtyRequest {
        iova,
        length,
        page_size: ps,
        no_clear: flags != 0,
    };
    let valid = iova & (ps - 1) == 0
        && end & (ps - 1) == 0
        && iova.is_multiple_of(m.g)
        && end.is_multiple_of(m.g);
    let nbits = req.nbits();
    let nbytes = nbits.div_ceil(8) as usize;
    // garbage before, so that we see that bits are only ever set
    let mut pre: Vec<u8> = (0..nbytes + 24).map(|_| rng.next() as u8).collect();
    if rng.chance(30) {
        pre.iter_mut().for_each(|b| *b = 0);
    }
    let (got, words_res) = if rust {
        let mut words: Vec<u64> = (0..nbits.div_ceil(64))
            .map(|i| {
                let mut w = [0u8; 8];
                for (j, b) in w.iter_mut().enumerate() {
                    *b = *pre.get(i as usize * 8 + j).unwrap_or(&0);
                }
                u64::from_le_bytes(w)
            })
            .collect();
        for (i, w) in words.iter().enumerate() {
            pre[i * 8..(i * 8 + 8)].copy_from_slice(&w.to_le_bytes());
        }
        let iopt = ctx.ioas(ioas).unwrap();
        let r = iopt
            .iopt()
            .read_and_clear_dirty(domain_id(ctx, hwpt), &req, &mut words)
            .map_err(|e| e.errno().0);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut got = pre.clone();
        got[..bytes.len()].copy_from_slice(&bytes);
        (got, r)
    } else {
        let off = rng.below(8) as usize;
        let mut buf = vec![0u8; pre.len() + 8];
        buf[off..off + pre.len()].copy_from_slice(&pre);
        let data = buf.as_mut_ptr() as u64 + off as u64;
        let r = get_dirty_bitmap(ctx, hwpt, iova, length, ps, data, flags).map(|_| ());
        (buf[off..off + pre.len()].to_vec(), r)
    };
    if !valid {
        assert_eq!(
            words_res,
            Err(libc::EINVAL),
            "iova {iova:#x} length {length:#x} page_size {ps:#x}"
        );
        assert_eq!(got, pre);
        return;
    }
    let cover = if m.mapped(iova) {
        m.covered(iova, end)
    } else {
        iova
    };
    let complete = cover == end;
    match (rust, m.tracking, complete) {
        (false, _, _) | (true, true, true) => assert_eq!(words_res, Ok(())),
        (true, _, _) => assert_eq!(words_res, Err(libc::EINVAL)),
    }
    let mut want = pre.clone();
    if m.tracking {
        let shift = ps.trailing_zeros();
        for u in m.dirty_units(iova, cover) {
            let s = u.max(iova);
            let e = (u + m.unit).min(cover);
            for bit in (s - iova) >> shift..=((e - 1 - iova) >> shift) {
                want[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
    }
    assert_eq!(
        got, want,
        "iova {iova:#x} length {length:#x} page_size {ps:#x} flags {flags} covered to {cover:#x} rust {rust} tracking {}",
        m.tracking
    );
    if m.tracking && flags == 0 {
        for u in m.dirty_units(iova, cover) {
            let gs: Vec<u64> = m
                .dirty
                .range(u / m.g..(u + m.unit) / m.g)
                .copied()
                .collect();
            for g in gs {
                m.dirty.remove(&g);
            }
        }
    }
}

/// A `dma-engine` bound to `ctx` through a fresh cdev and attached to
/// `pt`: (cdev fd, the attached HWPT, the device ID). Every call declares a
/// new device (cdev numbers from 780): runs may go in parallel.
fn vtd_device(ctx: &Arc<Context>, pt: u32) -> (i32, u32, u32) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use uiommufd::vfio::registry;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    let n = 780 + i;
    registry::declare(&format!(
        "dma-engine,addr=0000:e8:{i:02x}.0,group={n},cdev={n}"
    ))
    .unwrap();
    let fd = registry::open_cdev(n, true).unwrap();
    let devid = uiommufd_testkit::vfio::bind_cdev(fd, ctx);
    let pt = uiommufd_testkit::vfio::attach_pt(fd, pt).unwrap();
    (fd, pt, devid)
}

/// The domain of paging HWPT `hwpt`.
fn domain_of(ctx: &Arc<Context>, hwpt: u32) -> Arc<dyn uiommufd::domain::Domain> {
    ctx.get::<HwptPaging>(hwpt).unwrap().domain().clone()
}

/// One model run of `steps` random steps on a device of `driver`: a
/// selftest mock device, whose pages are made dirty with
/// `IOMMU_TEST_OP_DIRTY` (2 KiB granules, 1 MiB huge IOVA pages), or a
/// `dma-engine` on VT-d domains, whose pages are made dirty by DMA writes
/// through the domain, the device path (4 KiB granules, 2 MiB leaves).
fn run_model(seed: u64, huge: bool, steps: usize, driver: Driver) {
    let _serial = serial();
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let (dev, auto_hwpt, idev) = match driver {
        Driver::Mock => {
            let dev_flags = if huge { MOCK_FLAGS_DEVICE_HUGE_IOVA } else { 0 };
            let (stdev, auto_hwpt, idev) = mock_domain_flags(&ctx, ioas, dev_flags).unwrap();
            (Dev::Mock(stdev), auto_hwpt, idev)
        }
        Driver::Vtd => {
            let (fd, auto_hwpt, idev) = vtd_device(&ctx, ioas);
            (Dev::Vtd(fd), auto_hwpt, idev)
        }
    };
    let hwpt = hwpt_alloc(&ctx, idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    // the auto domain has no dirty tracking through the uAPI (VT-d's can
    // track inside the engine, for VFIO type1's dirty pages)
    assert_eq!(
        set_dirty_tracking(&ctx, auto_hwpt, true),
        Err(libc::EOPNOTSUPP)
    );
    // reading its bitmap: the range rules first, then EOPNOTSUPP
    let mut w = [0u64; 1];
    let wp = w.as_mut_ptr() as u64;
    assert_eq!(
        get_dirty_bitmap(&ctx, auto_hwpt, 0, 4096, 4096 + 1, wp, 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, auto_hwpt, 0, 4096, 4096, wp, 0),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(set_dirty_tracking(&ctx, hwpt, true), Ok(0));
    let (g, huge_sz) = match driver {
        Driver::Mock => (G, HUGE),
        Driver::Vtd => (4096, 2 << 20),
    };
    let domain = domain_of(&ctx, hwpt);
    let unit = if huge { huge_sz } else { g };
    let map_unit = if huge { huge_sz } else { 4096 };
    let span: u64 = if huge { 24 * huge_sz } else { 1 << 20 };
    let buf = Buf::new(span, huge_sz);
    let mut m = Model {
        areas: BTreeMap::new(),
        dirty: BTreeSet::new(),
        unit,
        g,
        huge: huge_sz,
        tracking: true,
    };
    let mut rng = Rng(seed | 1);
    let mut marks = vec![0u8; 4096];
    for step in 0..steps {
        match rng.below(100) {
            0..=19 => {
                let off = rng.below(span / map_unit) * map_unit;
                let max = if huge { 8 } else { 32 };
                let len = (1 + rng.below(max.min((span - off) / map_unit))) * map_unit;
                let overlaps = m
                    .areas
                    .iter()
                    .any(|(&k, &l)| k < A + off + len && A + off < k + l);
                let r = map_fixed(&ctx, ioas, buf.addr() + off, len, A + off);
                if overlaps {
                    assert_eq!(r, Err(libc::EEXIST));
                } else {
                    assert_eq!(r, Ok(0), "step {step}");
                    m.areas.insert(A + off, len);
                }
            }
            20..=27 => {
                if let Some((&k, &l)) = m
                    .areas
                    .iter()
                    .nth(rng.below(m.areas.len().max(1) as u64) as usize)
                {
                    assert_eq!(unmap(&ctx, ioas, k, l), Ok(l));
                    m.areas.remove(&k);
                    let gs: Vec<u64> = m.dirty.range(k / g..(k + l) / g).copied().collect();
                    for x in gs {
                        m.dirty.remove(&x);
                    }
                }
            }
            28..=49 => {
                let g0 = rng.below(span / g);
                let nbits = 1 + rng.below(((span / g) - g0).min(marks.len() as u64 * 8));
                let density = 1 + rng.below(60);
                let nbytes = nbits.div_ceil(8) as usize;
                for b in marks.iter_mut() {
                    *b = 0;
                }
                let mut want = 0;
                let mut set = Vec::new();
                for i in 0..nbits {
                    if rng.chance(density) {
                        marks[(i / 8) as usize] |= 1 << (i % 8);
                        let iova = A + (g0 + i) * g;
                        if m.mapped(iova) {
                            want += 1;
                            set.push(iova / g);
                        }
                    }
                }
                match driver {
                    Driver::Mock => {
                        let r = test_dirty(
                            &ctx,
                            hwpt,
                            A + g0 * g,
                            nbits * g,
                            g,
                            marks[..nbytes].as_ptr() as u64,
                        );
                        if m.tracking {
                            assert_eq!(r, Ok(want), "step {step}");
                            m.dirty.extend(set);
                        } else {
                            assert_eq!(r, Err(libc::EINVAL));
                        }
                    }
                    Driver::Vtd => {
                        // the device writes a few bytes into each marked
                        // granule: a fault where nothing is mapped, a D bit
                        // while tracking is on, nothing recorded otherwise
                        for i in
                            (0..nbits).filter(|i| marks[(i / 8) as usize] & (1 << (i % 8)) != 0)
                        {
                            let iova = A + (g0 + i) * g;
                            let off = rng.below(g - 8);
                            let r = domain.dma_write(iova + off, &[0xa5; 8]);
                            assert_eq!(
                                r.is_ok(),
                                m.mapped(iova),
                                "step {step}: write at {iova:#x}: {r:?}"
                            );
                        }
                        if m.tracking {
                            m.dirty.extend(set);
                        }
                    }
                }
            }
            50..=89 => check_get(&ctx, ioas, hwpt, &mut m, &mut rng, span, step % 3 == 0),
            90..=94 => {
                let on = rng.chance(75);
                assert_eq!(set_dirty_tracking(&ctx, hwpt, on), Ok(0));
                if on {
                    // enabling clears every area's dirty state
                    m.dirty.clear();
                }
                m.tracking = on;
            }
            _ => ctx.check_invariants().unwrap(),
        }
    }
    ctx.check_invariants().unwrap();
    drop(domain);
    assert_eq!(destroy(&ctx, hwpt), Ok(0));
    match dev {
        Dev::Mock(stdev) => assert_eq!(destroy(&ctx, stdev), Ok(0)),
        Dev::Vtd(fd) => uiommufd::plumbing::files::close(fd).unwrap(),
    }
    let r = unmap(&ctx, ioas, 0, u64::MAX);
    let mapped: u64 = m.areas.values().sum();
    assert!(r == Ok(mapped) || (r == Err(libc::ENOENT) && m.areas.is_empty()));
    assert_eq!(destroy(&ctx, ioas), Ok(0));
    assert!(ctx.is_empty());
    check_accounting().unwrap();
}

/// The model over its seeds on `driver`'s domains: granules (6 runs of
/// 600 steps) or huge pages (4 runs of 400).
fn model_runs(huge: bool, driver: Driver) {
    let (seeds, stride, steps) = if huge {
        (4, 0x51_7cc1_b727, 400)
    } else {
        (6, 0x9e37_79b9, 600)
    };
    for seed in 1..=seeds {
        run_model(seed * stride, huge, steps, driver);
    }
}

#[test]
fn model_granules() {
    model_runs(false, Driver::Mock);
}

#[test]
fn model_huge_pages() {
    model_runs(true, Driver::Mock);
}

#[test]
fn model_granules_vtd() {
    model_runs(false, Driver::Vtd);
}

#[test]
fn model_huge_pages_vtd() {
    model_runs(true, Driver::Vtd);
}

#[test]
fn errno_rules() {
    let _serial = serial();
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let (stdev, auto_hwpt, idev) = mock_domain_flags(&ctx, ioas, 0).unwrap();
    let hwpt = hwpt_alloc(&ctx, idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    let buf = Buf::new(1 << 20, 4096);
    map_fixed(&ctx, ioas, buf.addr(), 1 << 20, A).unwrap();
    // written by the engine through `data`: interior mutability
    let bits: Vec<Cell<u64>> = (0..8).map(|_| Cell::new(0)).collect();
    let data = bits.as_ptr() as u64;

    // SET_DIRTY_TRACKING: flags, lookup, capability
    let mut c = IommuHwptSetDirtyTracking {
        size: 16,
        flags: 2,
        hwpt_id: hwpt,
        __reserved: 0,
    };
    assert_eq!(
        ioc(&ctx, IOMMU_HWPT_SET_DIRTY_TRACKING, &mut c),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(set_dirty_tracking(&ctx, 999, true), Err(libc::ENOENT));
    assert_eq!(set_dirty_tracking(&ctx, ioas, true), Err(libc::ENOENT));
    assert_eq!(
        set_dirty_tracking(&ctx, auto_hwpt, false),
        Err(libc::EOPNOTSUPP)
    );

    // GET_DIRTY_BITMAP: flags/reserved, lookup, range, then capability
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A, 4096, G, data, 2),
        Err(libc::EOPNOTSUPP)
    );
    let mut g = IommuHwptGetDirtyBitmap {
        size: 48,
        hwpt_id: hwpt,
        __reserved: 1,
        iova: A,
        length: 4096,
        page_size: G,
        data,
        ..Default::default()
    };
    assert_eq!(
        ioc(&ctx, IOMMU_HWPT_GET_DIRTY_BITMAP, &mut g),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, 999, A, 4096, G, data, 0),
        Err(libc::ENOENT)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A, 0, G, data, 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, u64::MAX - 4095, 8192, G, data, 0),
        Err(libc::EOVERFLOW)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A + 1024, 4096, 1024, data, 0),
        Err(libc::EINVAL),
        "IOVA alignment"
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A, 4096 + 1024, 1024, data, 0),
        Err(libc::EINVAL),
        "IOVA alignment of the end"
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A, 4096, 0, data, 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A + G, 4096, 4096, data, 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A, 4096 + G, 4096, data, 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, auto_hwpt, A + G, 4096, 4096, data, 0),
        Err(libc::EINVAL),
        "range before capability"
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, auto_hwpt, A, 4096, 4096, data, 0),
        Err(libc::EOPNOTSUPP)
    );
    // tracking off: the walk stops at the mock's EINVAL, 6.12 answers 0
    assert_eq!(get_dirty_bitmap(&ctx, hwpt, A, 4096, G, data, 0), Ok(0));
    // unmapped range: 0 as well
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A + (8 << 20), 4096, G, data, 0),
        Ok(0)
    );

    // IOMMU_TEST_OP_DIRTY
    assert_eq!(test_dirty(&ctx, hwpt, A, 4096, 0, data), Err(libc::EINVAL));
    assert_eq!(test_dirty(&ctx, hwpt, A, 0, G, data), Err(libc::EINVAL));
    assert_eq!(
        test_dirty(&ctx, hwpt, A + 1, 4096, G, data),
        Err(libc::EINVAL)
    );
    assert_eq!(test_dirty(&ctx, hwpt, A, 4097, G, data), Err(libc::EINVAL));
    assert_eq!(test_dirty(&ctx, hwpt, A, 4096, G, 0), Err(libc::EINVAL));
    assert_eq!(
        test_dirty(&ctx, hwpt, A, G * (128 << 20) + G, G, data),
        Err(libc::EOVERFLOW)
    );
    assert_eq!(test_dirty(&ctx, 999, A, 4096, G, data), Err(libc::ENOENT));
    assert_eq!(test_dirty(&ctx, ioas, A, 4096, G, data), Err(libc::ENOENT));
    assert_eq!(
        test_dirty(&ctx, hwpt, A, 4096, G, data),
        Err(libc::EINVAL),
        "not tracking"
    );
    assert_eq!(set_dirty_tracking(&ctx, hwpt, true), Ok(0));
    assert_eq!(test_dirty(&ctx, hwpt, A, 4096, G, 8), Err(libc::EFAULT));
    bits[0].set(0b1011);
    assert_eq!(test_dirty(&ctx, hwpt, A, 4 * G, G, data), Ok(3));
    // an unwritable bitmap is EFAULT here (6.12 drops the bits and answers 0)
    assert_eq!(
        get_dirty_bitmap(
            &ctx,
            hwpt,
            A,
            4096 * 4,
            G,
            8,
            IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
        ),
        Err(libc::EFAULT)
    );
    bits[0].set(0xf0);
    assert_eq!(get_dirty_bitmap(&ctx, hwpt, A, 4096 * 4, G, data, 0), Ok(0));
    assert_eq!(bits[0].get(), 0xfb, "bits are only set");
    bits[0].set(0);
    assert_eq!(get_dirty_bitmap(&ctx, hwpt, A, 4096 * 4, G, data, 0), Ok(0));
    assert_eq!(bits[0].get(), 0, "cleared by the read before");

    // the Rust API is strict about the walk
    let iopt = ctx.ioas(ioas).unwrap();
    let dom = domain_id(&ctx, hwpt);
    let req = |iova, length| DirtyRequest {
        iova,
        length,
        page_size: G,
        no_clear: false,
    };
    let rd = |r: &DirtyRequest, w: &mut [u64]| {
        iopt.iopt()
            .read_and_clear_dirty(dom, r, w)
            .map_err(|e| e.errno().0)
    };
    let mut words = [0u64; 1];
    bits[0].set(0b101);
    assert_eq!(test_dirty(&ctx, hwpt, A + 62 * G, 3 * G, G, data), Ok(2));
    assert_eq!(
        rd(&req(A, 65 * G), &mut words),
        Err(libc::EINVAL),
        "bitmap too small"
    );
    assert_eq!(rd(&req(A, 64 * G), &mut words), Ok(()));
    assert_eq!(words[0], 1 << 62);
    let mut two = [0u64; 2];
    let tail = A + (1 << 20) - 32 * G;
    assert_eq!(test_dirty(&ctx, hwpt, tail, G, G, data), Ok(1));
    assert_eq!(
        rd(&req(tail, 64 * G), &mut two),
        Err(libc::EINVAL),
        "runs past the area"
    );
    assert_eq!(two, [1, 0], "the covered prefix is reported");
    assert_eq!(
        iopt.iopt()
            .read_and_clear_dirty(12345, &req(A, G), &mut words)
            .map_err(|e| e.errno().0),
        Err(libc::ENOENT)
    );
    drop(iopt);
    for id in [hwpt, stdev] {
        assert_eq!(destroy(&ctx, id), Ok(0));
    }
    unmap(&ctx, ioas, 0, u64::MAX).unwrap();
    assert_eq!(destroy(&ctx, ioas), Ok(0));
    assert!(ctx.is_empty());
}

#[test]
fn enforce_dirty_on_attach_and_alloc() {
    let _serial = serial();
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let (stdev, _, idev) = mock_domain_flags(&ctx, ioas, 0).unwrap();
    let hwpt = hwpt_alloc(&ctx, idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    let (s2, _, _) = mock_domain_flags(&ctx, hwpt, 0).unwrap();
    assert_eq!(
        mock_domain_flags(&ctx, hwpt, MOCK_FLAGS_DEVICE_NO_DIRTY),
        Err(libc::EINVAL)
    );
    let (s3, _, idev3) = mock_domain_flags(&ctx, ioas, MOCK_FLAGS_DEVICE_NO_DIRTY).unwrap();
    assert_eq!(
        hwpt_alloc(&ctx, idev3, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING),
        Err(libc::EOPNOTSUPP)
    );
    let mut info = IommuHwInfo {
        size: 40,
        dev_id: idev3,
        ..Default::default()
    };
    ioc(&ctx, IOMMU_GET_HW_INFO, &mut info).unwrap();
    assert_eq!(info.out_capabilities & IOMMU_HW_CAP_DIRTY_TRACKING, 0);
    info.dev_id = idev;
    info.data_len = 0;
    ioc(&ctx, IOMMU_GET_HW_INFO, &mut info).unwrap();
    assert_eq!(
        info.out_capabilities & IOMMU_HW_CAP_DIRTY_TRACKING,
        IOMMU_HW_CAP_DIRTY_TRACKING
    );
    for id in [s2, s3, hwpt, stdev, ioas] {
        assert_eq!(destroy(&ctx, id), Ok(0));
    }
    assert!(ctx.is_empty());
}

/// Issue 10 items 5 and 6: a `GET_DIRTY_BITMAP` whose user bitmap cannot be
/// written (read-only, `PROT_NONE`, unmapped, NULL, a kernel address, a
/// buffer far smaller than `length` needs) is `EFAULT`, whether or not
/// anything is dirty, and a failed call clears nothing: the next good call
/// reports every page.
#[test]
fn unwritable_bitmap_is_efault_and_loses_no_dirty_bit() {
    let _serial = serial();
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let (stdev, _, idev) = mock_domain_flags(&ctx, ioas, 0).unwrap();
    let hwpt = hwpt_alloc(&ctx, idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    let buf = Buf::new(1 << 20, 4096);
    map_fixed(&ctx, ioas, buf.addr(), 1 << 20, A).unwrap();
    assert_eq!(set_dirty_tracking(&ctx, hwpt, true), Ok(0));
    // pages: 0 rw (good bitmap), 1 read-only, 2 PROT_NONE, 3 unmapped, 4 rw
    let pp = Mapping::pages(5);
    pp.protect(1, libc::PROT_READ);
    pp.protect(2, libc::PROT_NONE);
    pp.unmap(3);
    let bad = [
        ("read-only", pp.page(1)),
        ("PROT_NONE", pp.page(2)),
        ("unmapped", pp.page(3)),
        ("NULL", 0),
        ("kernel address", 0xffff_8000_0000_0000),
        ("read-only at the end of a good page", pp.page(1) - 8),
    ];
    let len = 512 * G; // 512 bits: 64 bytes of bitmap
                       // nothing dirty yet: still EFAULT (item 6)
    for (what, data) in bad {
        for flags in [0, IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR] {
            assert_eq!(
                get_dirty_bitmap(&ctx, hwpt, A, len, G, data, flags),
                Err(libc::EFAULT),
                "{what}, nothing dirty, flags {flags}"
            );
        }
    }
    // 2^62 bytes of IOVA with a one-page buffer: EFAULT from the first window
    let small = Mapping::pages(2);
    small.unmap(1);
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A, 1 << 62, G, small.page(0), 0),
        Err(libc::EFAULT)
    );
    // the range checks still come first
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A, 0, G, 0, 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A + 1, len, G, 0, 0),
        Err(libc::EINVAL)
    );

    // dirty a pattern: every third granule
    let src = [0x4924_9249_2492_4924u64 >> 2; 8];
    let want = set_bits(&src);
    let n = test_dirty(&ctx, hwpt, A, len, G, src.as_ptr() as u64).unwrap();
    assert_eq!(n, want.len() as u64);
    for (what, data) in bad {
        assert_eq!(
            get_dirty_bitmap(&ctx, hwpt, A, len, G, data, 0),
            Err(libc::EFAULT),
            "{what}, dirty"
        );
    }
    // the good call after the failures reports every dirty page
    let got = |ctx: &Arc<Context>| {
        let mut out = [0u64; 8];
        assert_eq!(
            get_dirty_bitmap(ctx, hwpt, A, len, G, out.as_mut_ptr() as u64, 0),
            Ok(0)
        );
        set_bits(&out)
    };
    assert_eq!(got(&ctx), want, "no dirty bit lost by the failed calls");
    assert!(got(&ctx).is_empty(), "the good call cleared them");
    // the good page of Mapping works as a bitmap too (bits only OR-ed)
    test_dirty(&ctx, hwpt, A, len, G, src.as_ptr() as u64).unwrap();
    assert_eq!(
        get_dirty_bitmap(&ctx, hwpt, A, len, G, pp.page(0), 0),
        Ok(0)
    );
    assert_eq!(pp.word(0), src[0]);
    ctx.check_invariants().unwrap();
    for id in [hwpt, stdev] {
        assert_eq!(destroy(&ctx, id), Ok(0));
    }
    unmap(&ctx, ioas, 0, u64::MAX).unwrap();
    check_accounting().unwrap();
}
