//! The software IOMMU in the engine: a VT-d domain attached to an IOAS
//! through the IO page table's domain API, kept identical to the areas,
//! DMA by IOVA through it, dirty bitmaps through `IoPagetable`'s dirty
//! API, unmap; and parallel maps of disjoint ranges through the IOAS.

use std::sync::Arc;

use uiommufd::domain::{Domain, HostAddr, Iova};
use uiommufd::plumbing::io_pagetable::{huge_page_size, DirtyRequest};
use uiommufd::vtd::{Fault, Iotlb, VtdDomain};
use uiommufd::{Context, Prot};
use uiommufd_testkit::{mem::Mapping, set_bits};

const K4: u64 = 4096;

#[test]
fn ioas_with_a_vtd_domain_maps_translates_dmas_tracks_and_unmaps() {
    let ctx = Context::new();
    let id = ctx.ioas_alloc().unwrap();
    let ioas = ctx.ioas(id).unwrap();
    let iopt = ioas.iopt();
    let huge = huge_page_size();
    // 1024 pages, huge-page aligned: the domain may use 2 MiB leaves
    let mem = Mapping::new(1024, huge);
    let len = 1024 * K4;
    let iova0 = 1u64 << 32;
    // one area before the attach (filled by add_domain), one after
    ioas.map_user(mem.addr(), len / 2, Some(iova0), Prot::RW)
        .unwrap();
    let dom = VtdDomain::new(48, true).unwrap();
    iopt.add_domain(dom.clone()).unwrap();
    ioas.map_user(
        mem.addr() + len / 2,
        len / 2,
        Some(iova0 + len / 2),
        Prot::RW,
    )
    .unwrap();
    let ro = ioas
        .map_user(mem.addr(), K4, Some(iova0 + 2 * len), Prot::RO)
        .unwrap();
    iopt.check_invariants().unwrap();
    assert_eq!(
        dom.iova_to_phys(Iova(iova0 + 5)),
        Some(HostAddr(mem.addr() + 5))
    );
    assert_eq!(dom.leaf(iova0).unwrap().1, huge, "2 MiB leaves");
    // the IOAS reserves what the 48-bit aperture cannot translate
    assert!(ioas
        .map_user(mem.addr(), K4, Some(1 << 48), Prot::RW)
        .is_err());

    // DMA through the IOTLB lands in the user memory and reads back
    let mut tlb = Iotlb::new(dom.clone());
    let data: Vec<u8> = (0..3 * K4 as usize).map(|i| (i * 7) as u8).collect();
    tlb.write(iova0 + 100 * K4 + 3, &data).unwrap();
    // SAFETY: reading our own mapping, which lives for the test.
    let user =
        unsafe { std::slice::from_raw_parts((mem.addr() + 100 * K4 + 3) as *const u8, data.len()) };
    assert_eq!(user, &data[..]);
    let mut back = vec![0u8; data.len()];
    tlb.read(iova0 + 100 * K4 + 3, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        tlb.write(ro, &[1]),
        Err(Fault::Permission {
            iova: ro,
            write: true
        })
    );

    // dirty tracking through the IO page table
    iopt.set_dirty_tracking(dom.id(), true).unwrap();
    tlb.write(iova0 + 600 * K4 + 10, &[1, 2, 3]).unwrap();
    tlb.write(iova0 + 10 * K4 + K4 - 1, &[1, 2]).unwrap();
    let req = DirtyRequest {
        iova: iova0,
        length: len,
        page_size: K4,
        no_clear: false,
    };
    let mut bm = vec![0u64; 1024 / 64];
    iopt.read_and_clear_dirty(dom.id(), &req, &mut bm).unwrap();
    // the 2 MiB leaves are reported whole (the kernel's granularity too)
    let want: Vec<u64> = (0..512).chain(512..1024).collect();
    assert_eq!(set_bits(&bm), want);
    bm.fill(0);
    iopt.read_and_clear_dirty(dom.id(), &req, &mut bm).unwrap();
    assert!(set_bits(&bm).is_empty(), "cleared");
    iopt.set_dirty_tracking(dom.id(), false).unwrap();

    // unmap: the translation is gone at once, also from the IOTLB
    assert_eq!(
        tlb.translate(iova0 + 600 * K4, 8, false).map(|x| x.1),
        Ok(8)
    );
    assert_eq!(ioas.unmap(iova0 + len / 2, len / 2).unwrap(), len / 2);
    assert_eq!(
        tlb.translate(iova0 + 600 * K4, 8, false),
        Err(Fault::NotPresent {
            iova: iova0 + 600 * K4
        })
    );
    iopt.check_invariants().unwrap();
    iopt.remove_domain(dom.id());
    assert_eq!(
        dom.iova_to_phys(Iova(iova0)),
        None,
        "detach unmaps everything"
    );
    iopt.check_invariants().unwrap();
}

#[test]
fn small_page_dirty_tracking_is_page_exact() {
    let ctx = Context::new();
    let ioas = ctx.ioas(ctx.ioas_alloc().unwrap()).unwrap();
    let iopt = ioas.iopt();
    let dom = VtdDomain::new(39, true).unwrap();
    iopt.add_domain(dom.clone()).unwrap();
    // one page off the huge alignment: 4 KiB leaves only
    let mem = Mapping::new(600, huge_page_size());
    let iova = ioas
        .map_user(mem.addr() + K4, 512 * K4, None, Prot::RW)
        .unwrap();
    assert_eq!(dom.leaf(iova).unwrap().1, K4);
    iopt.set_dirty_tracking(dom.id(), true).unwrap();
    let mut tlb = Iotlb::new(dom.clone());
    for p in [0u64, 1, 63, 64, 300, 511] {
        tlb.write(iova + p * K4 + 8, &[0xaa]).unwrap();
    }
    let req = DirtyRequest {
        iova,
        length: 512 * K4,
        page_size: K4,
        no_clear: true,
    };
    let mut bm = vec![0u64; 8];
    iopt.read_and_clear_dirty(dom.id(), &req, &mut bm).unwrap();
    assert_eq!(set_bits(&bm), vec![0, 1, 63, 64, 300, 511]);
    let req = DirtyRequest {
        no_clear: false,
        ..req
    };
    bm.fill(0);
    iopt.read_and_clear_dirty(dom.id(), &req, &mut bm).unwrap();
    assert_eq!(set_bits(&bm), vec![0, 1, 63, 64, 300, 511]);
    bm.fill(0);
    iopt.read_and_clear_dirty(dom.id(), &req, &mut bm).unwrap();
    assert!(set_bits(&bm).is_empty());
}

#[test]
fn threads_map_disjoint_ranges_through_the_ioas() {
    let ctx = Context::new();
    let ioas = ctx.ioas(ctx.ioas_alloc().unwrap()).unwrap();
    let dom = VtdDomain::new(48, false).unwrap();
    ioas.iopt().add_domain(dom.clone()).unwrap();
    let mem = Arc::new(Mapping::new(64, K4));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let ioas = ioas.clone();
            let mem = mem.clone();
            let dom = dom.clone();
            std::thread::spawn(move || {
                for round in 0..50u64 {
                    let iova = (1 << 30) + (round * 4 + t) * 16 * K4;
                    let uva = mem.addr() + t * 16 * K4;
                    ioas.map_user(uva, 16 * K4, Some(iova), Prot::RW).unwrap();
                    assert_eq!(
                        dom.iova_to_phys(Iova(iova + 15 * K4)),
                        Some(HostAddr(uva + 15 * K4))
                    );
                    if round % 2 == 0 {
                        assert_eq!(ioas.unmap(iova, 16 * K4).unwrap(), 16 * K4);
                        assert_eq!(dom.iova_to_phys(Iova(iova)), None);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    ioas.iopt().check_invariants().unwrap();
    for t in 0..4u64 {
        for round in (1..50u64).step_by(2) {
            let iova = (1 << 30) + (round * 4 + t) * 16 * K4;
            assert_eq!(
                dom.iova_to_phys(Iova(iova)),
                Some(HostAddr(mem.addr() + t * 16 * K4))
            );
        }
    }
}
