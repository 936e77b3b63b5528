//! A rust-vmm `vm-memory` user reading and writing guest memory *by IOVA*
//! through the software IOMMU (`cargo run -p uiommufd --features vm-memory
//! --example vm_memory_iova`).
//!
//! The VMM's guest memory is a `GuestMemoryMmap` (two regions); a VT-d
//! domain maps IOVA 0x8000_0000.. to two guest pages, in reverse order and
//! one of them read-only; `IommuMemory` over a `VtdIommu` then reads and
//! writes by IOVA exactly as the domain's tables say, and refuses what
//! they do not allow.

use uiommufd::domain::Domain;
use uiommufd::plumbing::io_pagetable::Prot;
use uiommufd::vtd::{VtdDomain, VtdIommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, IommuMemory};

fn main() {
    const IOVA: u64 = 0x8000_0000;
    let backend = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 1 << 20),
        (GuestAddress(1 << 32), 1 << 20),
    ])
    .expect("guest memory");
    backend
        .write_slice(b"page in region 0", GuestAddress(0x3000))
        .unwrap();
    backend
        .write_slice(b"page in region 1", GuestAddress((1 << 32) + 0x5000))
        .unwrap();

    // the domain's tables: IOVA page 0 -> guest 4 GiB + 0x5000 (RW),
    // IOVA page 1 -> guest 0x3000 (read-only)
    let dom = VtdDomain::new(48, false).expect("a VT-d domain");
    let host = |g: u64| backend.get_host_address(GuestAddress(g)).unwrap() as u64;
    dom.map(IOVA, host((1 << 32) + 0x5000), 4096, Prot::RW, u64::MAX)
        .unwrap();
    dom.map(IOVA + 4096, host(0x3000), 4096, Prot::RO, u64::MAX)
        .unwrap();

    let iommu = VtdIommu::from_backend(dom.clone(), &backend);
    let mem = IommuMemory::new(backend.clone(), iommu, true, ());

    let mut buf = [0u8; 16];
    mem.read_slice(&mut buf, GuestAddress(IOVA)).unwrap();
    println!("IOVA {IOVA:#x}: {:?}", String::from_utf8_lossy(&buf));
    assert_eq!(&buf, b"page in region 1");
    mem.read_slice(&mut buf, GuestAddress(IOVA + 4096)).unwrap();
    println!(
        "IOVA {:#x}: {:?}",
        IOVA + 4096,
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(&buf, b"page in region 0");

    // a write by IOVA lands in the guest page the table names
    mem.write_slice(b"written by IOVA!", GuestAddress(IOVA + 16))
        .unwrap();
    backend
        .read_slice(&mut buf, GuestAddress((1 << 32) + 0x5010))
        .unwrap();
    assert_eq!(&buf, b"written by IOVA!");

    // the read-only page refuses a write, an unmapped IOVA everything
    let e = mem
        .write_slice(b"no", GuestAddress(IOVA + 4096))
        .unwrap_err();
    println!("write to the read-only page: {e}");
    assert!(mem
        .read_slice(&mut buf, GuestAddress(IOVA + 2 * 4096))
        .is_err());

    // an unmap is seen at once (the cached translation goes with it)
    dom.unmap(IOVA, 4096);
    assert!(mem.read_slice(&mut buf, GuestAddress(IOVA)).is_err());
    println!("after unmap, IOVA {IOVA:#x} no longer translates: ok");
}
