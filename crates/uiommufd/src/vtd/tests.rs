//! Unit tests of the VT-d domain: entry format, page sizes, errors, partial
//! unmaps of large leaves, translation faults, IOTLB invalidation, dirty
//! summaries and parallel maps. Host addresses are made up (nothing here
//! dereferences them) except in the DMA test.

use std::sync::Arc;

use super::*;
use crate::domain::{DirtyBitmap, Domain, HostAddr, Iova, Prot};
use crate::error::errno;

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
/// A made-up host address, 1 GiB aligned.
const HOST: u64 = 0x7000_0000_0000;

/// Map `[iova, iova + len)` of `d` to host `host` with `prot`, any page
/// size.
fn map(d: &VtdDomain, iova: u64, host: u64, len: u64, prot: Prot) -> crate::Result<()> {
    d.map(Iova(iova), HostAddr(host), len, prot, u64::MAX)
}

fn dirty_bits(d: &VtdDomain, iova: u64, len: u64, clear: bool) -> Vec<u64> {
    let last = iova + len - 1;
    let mut w = vec![0u64; (len / K4).div_ceil(64) as usize];
    let mut bm = DirtyBitmap::new(iova, last, 12, &mut w);
    d.read_and_clear_dirty(iova, len, clear, Some(&mut bm))
        .unwrap();
    let mut out = Vec::new();
    for (i, x) in w.iter().enumerate() {
        for b in 0..64 {
            if x >> b & 1 != 0 {
                out.push(iova + (i as u64 * 64 + b) * K4);
            }
        }
    }
    out
}

#[test]
fn geometry_and_entry_format() {
    assert_eq!(errno(VtdDomain::new(40, false)), libc::EINVAL);
    for (w, l) in [(39, 3), (48, 4), (57, 5)] {
        let d = VtdDomain::new(w, false).unwrap();
        assert_eq!(d.levels(), l);
        assert_eq!(d.aperture(), (0, (1 << w) - 1));
        assert_eq!(d.pgsize_bitmap(), K4 | M2 | G1);
    }
    let d = VtdDomain::new(48, false).unwrap();
    map(&d, 0x1000, HOST + 0x5000, K4, Prot::RO).unwrap();
    let l = d.lookup(0x1000).unwrap();
    assert_eq!(l.level, 1);
    assert_eq!(l.value, (HOST + 0x5000) | PTE_R | PTE_SNP);
    map(&d, M2, HOST + M2, M2, Prot::RW).unwrap();
    let l = d.lookup(M2 + 5).unwrap();
    assert_eq!(l.level, 2);
    assert_eq!(l.value, (HOST + M2) | PTE_R | PTE_W | PTE_PS | PTE_SNP);
    map(&d, G1, HOST, G1, Prot::RW).unwrap();
    assert_eq!(d.lookup(G1 + 12345).unwrap().level, 3);
    assert_eq!(
        d.iova_to_phys(Iova(G1 + 12345)),
        Some(HostAddr(HOST + 12345))
    );
    assert_eq!(d.iova_to_phys(Iova(0x1abc)), Some(HostAddr(HOST + 0x5abc)));
    assert_eq!(d.iova_to_phys(Iova(0x2000)), None);
}

#[test]
fn page_sizes_follow_alignment_and_max_pgsize() {
    let d = VtdDomain::new(48, false).unwrap();
    // IOVA 2 MiB aligned, host not: 4 KiB leaves only
    map(&d, 4 * M2, HOST + K4, 2 * M2, Prot::RW).unwrap();
    assert_eq!(d.leaf(4 * M2).unwrap().1, K4);
    assert_eq!(d.unmap(4 * M2, 2 * M2), 2 * M2);
    // capped at 4 KiB
    d.map(Iova(8 * M2), HostAddr(HOST), 2 * M2, Prot::RW, K4)
        .unwrap();
    assert_eq!(d.leaf(8 * M2).unwrap().1, K4);
    assert_eq!(d.unmap(8 * M2, 2 * M2), 2 * M2);
    // mixed: 4 KiB head, 2 MiB body, 4 KiB tail
    map(&d, 16 * M2 - K4, HOST - K4, M2 + 2 * K4, Prot::RW).unwrap();
    assert_eq!(d.leaf(16 * M2 - K4).unwrap().1, K4);
    assert_eq!(d.leaf(16 * M2).unwrap().1, M2);
    assert_eq!(d.leaf(17 * M2).unwrap().1, K4);
    assert_eq!(d.unmap(16 * M2 - K4, M2 + 2 * K4), M2 + 2 * K4);
    // a domain limited to 2 MiB never uses 1 GiB leaves
    let d2 = VtdDomain::with_max_page(39, false, M2).unwrap();
    assert_eq!(d2.pgsize_bitmap(), K4 | M2);
    map(&d2, G1, HOST, G1, Prot::RW).unwrap();
    assert_eq!(d2.leaf(G1).unwrap().1, M2);
}

#[test]
fn map_errors_change_nothing() {
    let d = VtdDomain::new(39, false).unwrap();
    let last = (1u64 << 39) - 1;
    assert_eq!(errno(map(&d, 0, HOST, 0, Prot::RW)), libc::EINVAL);
    assert_eq!(errno(map(&d, 1, HOST, K4, Prot::RW)), libc::EINVAL);
    assert_eq!(errno(map(&d, 0, HOST, K4, Prot::default())), libc::EINVAL);
    assert_eq!(
        errno(map(&d, last + 1 - K4, HOST, 2 * K4, Prot::RW)),
        libc::EINVAL,
        "past the aperture"
    );
    assert_eq!(
        errno(map(&d, 0, 1 << 52, K4, Prot::RW)),
        libc::EINVAL,
        "host address beyond 52 bits"
    );
    // the aperture's last page maps
    map(&d, last + 1 - K4, HOST, K4, Prot::RW).unwrap();
    assert_eq!(d.iova_to_phys(Iova(last)), Some(HostAddr(HOST + K4 - 1)));
    // overlap in the middle of a long map: EEXIST, and nothing new stays
    map(&d, G1 + 3 * M2 + 5 * K4, HOST, K4, Prot::RW).unwrap();
    assert_eq!(errno(map(&d, G1, HOST, 4 * M2, Prot::RW)), libc::EEXIST);
    assert_eq!(d.iova_to_phys(Iova(G1)), None);
    assert_eq!(d.iova_to_phys(Iova(G1 + 3 * M2)), None);
    assert_eq!(
        d.iova_to_phys(Iova(G1 + 3 * M2 + 5 * K4)),
        Some(HostAddr(HOST))
    );
    // over a large leaf
    map(&d, 4 * G1, HOST, G1, Prot::RW).unwrap();
    assert_eq!(
        errno(map(&d, 4 * G1 + M2, HOST, K4, Prot::RW)),
        libc::EEXIST
    );
    assert_eq!(d.unmap(0, 1 << 39), 2 * K4 + G1);
    assert_eq!(d.unmap(0, 1 << 39), 0);
}

#[test]
fn partial_unmaps_split_large_leaves() {
    let d = VtdDomain::new(48, true).unwrap();
    d.set_dirty_tracking(true).unwrap();
    map(&d, G1, HOST, G1, Prot::RW).unwrap();
    assert!(d.set_dirty(G1 + 7 * M2));
    // a 4 KiB hole in the middle of the 1 GiB leaf
    assert_eq!(d.unmap(G1 + 5 * M2 + 3 * K4, K4), K4);
    assert_eq!(d.iova_to_phys(Iova(G1 + 5 * M2 + 3 * K4)), None);
    assert_eq!(
        d.iova_to_phys(Iova(G1 + 5 * M2 + 4 * K4)),
        Some(HostAddr(HOST + 5 * M2 + 4 * K4))
    );
    assert_eq!(d.leaf(G1 + 5 * M2).unwrap().1, K4);
    assert_eq!(d.leaf(G1 + 6 * M2).unwrap().1, M2);
    // the dirty bit of the split 1 GiB leaf went to every piece
    assert!(d.leaf(G1).unwrap().4);
    assert!(d.leaf(G1 + 5 * M2).unwrap().4);
    let bits = dirty_bits(&d, G1, G1, true);
    assert_eq!(bits.len() as u64, G1 / K4 - 1);
    assert!(dirty_bits(&d, G1, G1, true).is_empty());
    // unmapping the rest returns exactly what was left
    assert_eq!(d.unmap(G1, G1), G1 - K4);
    assert_eq!(d.iova_to_phys(Iova(G1 + 6 * M2)), None);
}

#[test]
fn translate_faults_and_extends_over_contiguous_leaves() {
    let d = VtdDomain::new(48, false).unwrap();
    map(&d, 0x10_0000, HOST, 16 * K4, Prot::RO).unwrap();
    map(&d, 0x10_0000 + 16 * K4, HOST + 32 * K4, K4, Prot::RW).unwrap();
    assert_eq!(
        d.translate(0x10_0010, 1 << 20, false),
        Ok((HOST + 0x10, 16 * K4 - 0x10))
    );
    assert_eq!(d.translate(0x10_0010, 8, false), Ok((HOST + 0x10, 8)));
    assert_eq!(
        d.translate(0x10_0010, 8, true),
        Err(Fault::Permission {
            iova: 0x10_0010,
            write: true
        })
    );
    assert_eq!(
        d.translate(0x20_0000, 8, false),
        Err(Fault::NotPresent { iova: 0x20_0000 })
    );
    assert_eq!(
        d.translate(1 << 48, 8, false),
        Err(Fault::NotPresent { iova: 1 << 48 })
    );
}

#[test]
fn iotlb_never_returns_an_unmapped_translation() {
    let d = VtdDomain::new(48, false).unwrap();
    let mut tlb = Iotlb::with_slots(d.clone(), 4);
    map(&d, 0x1000, HOST, K4, Prot::RW).unwrap();
    assert_eq!(tlb.translate(0x1008, 8, false), Ok((HOST + 8, 8)));
    assert_eq!(
        tlb.translate(0x1008, 1 << 20, false),
        Ok((HOST + 8, K4 - 8))
    );
    assert_eq!(d.unmap(0x1000, K4), K4);
    assert_eq!(
        tlb.translate(0x1008, 8, false),
        Err(Fault::NotPresent { iova: 0x1008 })
    );
    map(&d, 0x1000, HOST + K4, K4, Prot::RO).unwrap();
    assert_eq!(tlb.translate(0x1008, 8, false), Ok((HOST + K4 + 8, 8)));
    assert_eq!(
        tlb.translate(0x1008, 8, true),
        Err(Fault::Permission {
            iova: 0x1008,
            write: true
        })
    );
}

#[test]
fn dirty_tracking_follows_writes_and_summaries() {
    let plain = VtdDomain::new(48, false).unwrap();
    assert!(!plain.dirty_tracking_supported());
    assert_eq!(errno(plain.set_dirty_tracking(true)), libc::EINVAL);

    let d = VtdDomain::new(48, true).unwrap();
    let base = 4 * G1;
    map(&d, base, HOST + K4, G1, Prot::RW).unwrap();
    map(&d, base + G1, HOST, 4 * M2, Prot::RW).unwrap();
    let mut tlb = Iotlb::new(d.clone());
    // not tracking: a write marks nothing; reading with a bitmap refuses
    tlb.translate(base, 8, true).unwrap();
    assert!(!d.leaf(base).unwrap().4);
    let mut w = [0u64; 1];
    let mut bm = DirtyBitmap::new(base, base + 63 * K4, 12, &mut w);
    assert_eq!(
        errno(d.read_and_clear_dirty(base, K4, true, Some(&mut bm))),
        libc::EINVAL
    );
    d.set_dirty_tracking(true).unwrap();
    // reads mark nothing, writes mark their leaves (also through a hit)
    tlb.translate(base + 5 * K4, 8, false).unwrap();
    tlb.translate(base, 8, true).unwrap();
    tlb.translate(base + 700 * K4, 8, true).unwrap();
    tlb.translate(base + 700 * K4, 8, true).unwrap();
    // a write spanning three contiguous leaves marks all three
    let (_, n) = d.translate(base + 900 * K4 + 100, 2 * K4, true).unwrap();
    assert_eq!(n, 2 * K4);
    tlb.translate(base + G1 + M2 + 77, 1, true).unwrap();
    let l = d.lookup(base).unwrap();
    assert_eq!(l.value & (PTE_A | PTE_D), PTE_A | PTE_D);
    let want = vec![
        base,
        base + 700 * K4,
        base + 900 * K4,
        base + 901 * K4,
        base + 902 * K4,
    ];
    let mut want_all = want.clone();
    want_all.extend((0..M2 / K4).map(|i| base + G1 + M2 + i * K4));
    // no-clear twice, then clear, then nothing
    assert_eq!(dirty_bits(&d, base, G1 + 4 * M2, false), want_all);
    assert_eq!(dirty_bits(&d, base, G1 + 4 * M2, false), want_all);
    // a sub-range read clips the 2 MiB leaf and leaves the rest dirty
    assert_eq!(
        dirty_bits(&d, base + G1 + M2 + 4 * K4, 2 * K4, false),
        vec![base + G1 + M2 + 4 * K4, base + G1 + M2 + 5 * K4]
    );
    assert_eq!(
        dirty_bits(&d, base + 700 * K4, K4, true),
        vec![base + 700 * K4]
    );
    want_all.remove(1);
    assert_eq!(dirty_bits(&d, base, G1 + 4 * M2, true), want_all);
    assert!(dirty_bits(&d, base, G1 + 4 * M2, true).is_empty());
    // the cached translation sees the cleared D and marks again
    tlb.translate(base, 8, true).unwrap();
    assert_eq!(dirty_bits(&d, base, G1, true), vec![base]);
    // redirty puts bits back; clearing without a bitmap drops them
    d.redirty(base + 3 * K4, 2 * K4).unwrap();
    assert_eq!(
        dirty_bits(&d, base, G1, false),
        vec![base + 3 * K4, base + 4 * K4]
    );
    d.read_and_clear_dirty(base, G1, true, None).unwrap();
    assert!(dirty_bits(&d, base, G1, true).is_empty());
    // tracking off: writes do not mark
    d.set_dirty_tracking(false).unwrap();
    tlb.translate(base + 9 * K4, 8, true).unwrap();
    assert!(!d.leaf(base + 9 * K4).unwrap().4);
}

#[test]
fn dma_read_write_through_translations() {
    let mut mem = vec![0u8; 6 * K4 as usize];
    let host = (mem.as_mut_ptr() as u64).next_multiple_of(K4);
    let d = VtdDomain::new(48, true).unwrap();
    d.set_dirty_tracking(true).unwrap();
    // IOVA pages 0,1 -> host pages 2,3; IOVA page 2 -> host page 0 (RO)
    map(&d, 0x10_0000, host + 2 * K4, 2 * K4, Prot::RW).unwrap();
    map(&d, 0x10_0000 + 2 * K4, host, K4, Prot::RO).unwrap();
    let mut tlb = Iotlb::new(d.clone());
    let data: Vec<u8> = (0..2 * K4 as usize).map(|i| i as u8).collect();
    tlb.write(0x10_0000 + 100, &data[..K4 as usize + 50])
        .unwrap();
    let off = (host - mem.as_ptr() as u64) as usize;
    assert_eq!(
        &mem[off + 2 * K4 as usize + 100..off + 3 * K4 as usize + 150],
        &data[..K4 as usize + 50]
    );
    let mut back = vec![0u8; K4 as usize + 50];
    tlb.read(0x10_0000 + 100, &mut back).unwrap();
    assert_eq!(back, &data[..K4 as usize + 50]);
    assert_eq!(
        dirty_bits(&d, 0x10_0000, 3 * K4, true),
        vec![0x10_0000, 0x10_1000]
    );
    // a read across the RO page works, a write stops there
    let mut three = vec![0u8; 3 * K4 as usize];
    tlb.read(0x10_0000, &mut three).unwrap();
    assert_eq!(
        tlb.write(0x10_0000 + 2 * K4 - 4, &[1u8; 8]),
        Err(Fault::Permission {
            iova: 0x10_0000 + 2 * K4,
            write: true
        })
    );
    assert_eq!(
        tlb.read(0x10_0000 + 3 * K4 - 4, &mut [0u8; 8]),
        Err(Fault::NotPresent {
            iova: 0x10_0000 + 3 * K4
        })
    );
}

#[test]
fn disjoint_ranges_map_and_unmap_in_parallel() {
    let d = VtdDomain::new(48, false).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|n| {
            let d: Arc<VtdDomain> = d.clone();
            std::thread::spawn(move || {
                // neighbours share tables: pieces of 5 pages interleaved
                for round in 0..3 {
                    for i in 0..300u64 {
                        let iova = (i * 8 + n) * 5 * K4;
                        map(&d, iova, HOST + iova, 5 * K4, Prot::RW).unwrap();
                    }
                    for i in 0..300u64 {
                        let iova = (i * 8 + n) * 5 * K4;
                        assert_eq!(
                            d.iova_to_phys(Iova(iova + 4 * K4)),
                            Some(HostAddr(HOST + iova + 4 * K4))
                        );
                        if round < 2 {
                            assert_eq!(d.unmap(iova, 5 * K4), 5 * K4);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for k in 0..2400u64 {
        assert_eq!(
            d.iova_to_phys(Iova(k * 5 * K4)),
            Some(HostAddr(HOST + k * 5 * K4))
        );
    }
    assert_eq!(d.unmap(0, 1 << 48), 2400 * 5 * K4);
}

#[test]
fn domain_dma_through_the_trait_faults_and_marks_dirty() {
    let mut mem = vec![0u8; 5 * K4 as usize];
    let host = (mem.as_mut_ptr() as u64).next_multiple_of(K4);
    let off = (host - mem.as_ptr() as u64) as usize;
    let k = K4 as usize;
    let d = VtdDomain::new(48, true).unwrap();
    d.set_dirty_tracking(true).unwrap();
    map(&d, 0x20_0000, host, 2 * K4, Prot::RW).unwrap();
    map(&d, 0x20_0000 + 2 * K4, host + 2 * K4, K4, Prot::RO).unwrap();
    let dom: Arc<dyn Domain> = d.clone();
    assert_eq!(
        dom.translate(0x20_0010, 3 * K4, false),
        Ok((host + 0x10, 3 * K4 - 0x10))
    );
    // a write translation stops at the read-only page
    assert_eq!(
        dom.translate(0x20_0010, 3 * K4, true),
        Ok((host + 0x10, 2 * K4 - 0x10))
    );
    let data: Vec<u8> = (0..k).map(|i| (i * 7) as u8).collect();
    dom.dma_write(0x20_0000 + K4 - 4, &data).unwrap();
    assert_eq!(&mem[off + k - 4..off + 2 * k - 4], &data[..]);
    let mut back = vec![0u8; data.len()];
    dom.dma_read(0x20_0000 + K4 - 4, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        dirty_bits(&d, 0x20_0000, 3 * K4, true),
        vec![0x20_0000, 0x20_1000]
    );
    assert_eq!(
        dom.dma_write(0x20_0000 + 2 * K4 - 2, &[9u8; 4]),
        Err(Fault::Permission {
            iova: 0x20_0000 + 2 * K4,
            write: true
        })
    );
    // the bytes before the fault landed, none behind it
    assert_eq!(&mem[off + 2 * k - 2..off + 2 * k + 2], &[9, 9, 0, 0]);
    assert_eq!(
        dom.dma_read(0x20_0000 + 3 * K4 - 1, &mut [0u8; 2]),
        Err(Fault::NotPresent {
            iova: 0x20_0000 + 3 * K4
        })
    );
    assert_eq!(
        dom.dma_read(0x90_0000, &mut [0u8; 1]),
        Err(Fault::NotPresent { iova: 0x90_0000 })
    );
    drop(mem);
}

#[test]
fn domain_dma_takes_the_drain_lock() {
    let mut mem = vec![0u8; 3 * K4 as usize];
    let host = (mem.as_mut_ptr() as u64).next_multiple_of(K4);
    let off = (host - mem.as_ptr() as u64) as usize;
    let d = VtdDomain::new(48, false).unwrap();
    map(&d, 0x40_0000, host, K4, Prot::RW).unwrap();
    // while the drain lock is held exclusively (an unmap draining), a
    // device's DMA through the trait waits for it
    let drain = d.dma.write();
    let d2 = d.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        tx.send(Domain::dma_write(&*d2, 0x40_0000, &[7u8; 16]))
            .unwrap();
    });
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(100))
        .is_err());
    drop(drain);
    assert_eq!(rx.recv().unwrap(), Ok(()));
    t.join().unwrap();
    assert_eq!(&mem[off..off + 16], &[7u8; 16]);
    assert_eq!(d.unmap(0x40_0000, K4), K4);
    assert_eq!(
        Domain::dma_write(&*d, 0x40_0000, &[1u8; 16]),
        Err(Fault::NotPresent { iova: 0x40_0000 })
    );
    drop(mem);
}
