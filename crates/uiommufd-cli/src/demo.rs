//! `uiommufd demo`: the /dev/ioasid RFC's use-case flows through the Rust API.
//!
//! 5.1 — one device, one GPA address space: guest RAM (an anonymous mapping
//! standing in for the VMM's HVA range) mapped into a GPA IOAS; a mock
//! IOMMU device attached to it (its auto domain maps the same pinned pages),
//! and an emulated device doing DMA by GPA through an access.
//! 5.2 — the guest enables a vIOMMU and gives dev2 its own GIOVA space; with
//! no nesting, the VMM shadows the guest's mapping GIOVA 0x2000 → GPA (base + 0x1000)
//! into a second IOAS. In iommufd that is `IOAS_COPY` from the GPA IOAS, which
//! shares the pin of the GPA mapping instead of pinning the memory twice.

use std::sync::{Arc, Weak};

use uiommufd::access::{Access, AccessOps, CopyOnly};
use uiommufd::device::Device;
use uiommufd::domain::{HostAddr, Iova};
use uiommufd::mock::device::MockDevice;
use uiommufd::plumbing::io_pagetable::AreaInfo;
use uiommufd::{Context, Prot};

/// Guest RAM size for the demo.
const GUEST_RAM: u64 = 256 << 20;
/// Where guest RAM starts in GPA space: the mock IOMMU's aperture begins at
/// 16 MiB (`MOCK_APERTURE_START`), so a device behind it can only reach GPAs
/// from there.
const GPA_BASE: u64 = uiommufd::uapi::MOCK_APERTURE_START;

fn table(title: &str, areas: &[AreaInfo]) {
    println!("  {title}");
    println!(
        "    {:<20} {:<20} {:>12}  {:<4} {:>6}",
        "IOVA first", "IOVA last", "length", "prot", "pages"
    );
    for a in areas {
        let prot = format!(
            "{}{}",
            if a.prot.read { "r" } else { "-" },
            if a.prot.write { "w" } else { "-" }
        );
        println!(
            "    {:#018x}   {:#018x}   {:>12}  {:<4} {:>6}   -> HVA {:#x}",
            a.iova,
            a.iova + a.length - 1,
            human(a.length),
            prot,
            a.pages_id,
            a.uptr
        );
    }
    if areas.is_empty() {
        println!("    (empty)");
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// Anonymous, unpopulated memory standing in for guest RAM.
struct GuestRam {
    ptr: *mut libc::c_void,
    len: usize,
}

impl GuestRam {
    fn new(len: u64) -> Result<Self, String> {
        // a fresh private mapping; we own it until Drop
        let ptr = uiommufd_testkit::map_anon(len as usize, libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .map_err(|e| format!("mmap of {} failed: {e}", human(len)))?;
        Ok(GuestRam {
            ptr,
            len: len as usize,
        })
    }
    fn hva(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Run flows 5.1 and 5.2 and print the IOVA maps.
pub fn demo() -> Result<(), String> {
    let e = |e: uiommufd::Error| e.to_string();
    let ram = GuestRam::new(GUEST_RAM)?;
    let ctx = Context::new();

    println!("== 5.1: one GPA address space ==");
    let gpa = ctx.ioas_alloc().map_err(e)?;
    println!("  IOMMU_IOAS_ALLOC -> gpa_ioas = {gpa}");
    let gpa_ioas = ctx.ioas(gpa).map_err(e)?;
    let iova = gpa_ioas
        .map_user(ram.hva(), GUEST_RAM, Some(GPA_BASE), Prot::RW)
        .map_err(e)?;
    println!(
        "  IOMMU_IOAS_MAP  GPA {iova:#x} <- HVA {:#x}, {} (FIXED_IOVA, rw)",
        ram.hva(),
        human(GUEST_RAM)
    );
    table(&format!("IOAS {gpa} (GPA)"), &gpa_ioas.areas());
    // dev1: a (mock) IOMMU-translated device attached to the GPA IOAS
    let dev1 = Device::bind(&ctx, MockDevice::new(0).map_err(e)?).map_err(e)?;
    let hwpt = dev1.attach(&ctx, gpa).map_err(e)?;
    let domain = dev1.hwpt().ok_or("dev1 is not attached")?.domain().clone();
    println!(
        "  device {} attached to IOAS {gpa}: auto domain HWPT {hwpt}",
        dev1.id()
    );
    println!(
        "    its page table: GPA {:#x} -> HVA {:#x} (guest RAM is now pinned, once: {} pages)",
        GPA_BASE + 0x1000,
        domain
            .iova_to_phys(Iova(GPA_BASE + 0x1000))
            .unwrap_or(HostAddr(0)),
        GUEST_RAM / 4096
    );
    // an emulated device doing DMA by IOVA through an access
    let ops: Arc<dyn AccessOps> = Arc::new(CopyOnly);
    let dma = Access::create(&ctx, Arc::downgrade(&ops) as Weak<dyn AccessOps>).map_err(e)?;
    dma.attach(&ctx, gpa).map_err(e)?;
    let mut msg = *b"hello from an emulated device";
    dma.rw(GPA_BASE + 0x1000, &mut msg, true).map_err(e)?;
    let mut back = [0u8; 29];
    dma.rw(GPA_BASE + 0x1000, &mut back, false).map_err(e)?;
    println!(
        "  emulated device wrote and read GPA {:#x}: {:?}",
        GPA_BASE + 0x1000,
        String::from_utf8_lossy(&back)
    );

    println!();
    println!("== 5.2: a second (GIOVA) address space with a shadow mapping ==");
    let giova = ctx.ioas_alloc().map_err(e)?;
    println!("  IOMMU_IOAS_ALLOC -> giova_ioas = {giova}");
    let giova_ioas = ctx.ioas(giova).map_err(e)?;
    // guest vIOMMU: GIOVA 0x2000 -> GPA base + 0x1000; shadow it from the GPA IOAS
    let got = giova_ioas
        .copy_from(&gpa_ioas, GPA_BASE + 0x1000, 0x1000, Some(0x2000), Prot::RW)
        .map_err(e)?;
    println!(
        "  IOMMU_IOAS_COPY  GIOVA {got:#x} <- GPA {:#x} (4 KiB): HVA {:#x}, same pages object, no new pin",
        GPA_BASE + 0x1000,
        ram.hva() + 0x1000
    );
    let auto = giova_ioas
        .copy_from(&gpa_ioas, GPA_BASE + 0x10_0000, 0x20_0000, None, Prot::RO)
        .map_err(e)?;
    println!(
        "  IOMMU_IOAS_COPY  GIOVA {auto:#x} (allocated) <- GPA {:#x} (2 MiB, read-only)",
        GPA_BASE + 0x10_0000
    );
    table(&format!("IOAS {gpa} (GPA)"), &gpa_ioas.areas());
    table(&format!("IOAS {giova} (GIOVA)"), &giova_ioas.areas());
    // the emulated device moves to the GIOVA space and reads the shadow mapping
    dma.replace(&ctx, giova).map_err(e)?;
    let mut back = [0u8; 29];
    dma.rw(0x2000, &mut back, false).map_err(e)?;
    println!(
        "  emulated device moved to IOAS {giova}; GIOVA 0x2000 reads: {:?}",
        String::from_utf8_lossy(&back)
    );

    println!();
    println!("== teardown ==");
    dma.destroy(&ctx);
    dev1.unbind(&ctx);
    println!("  access destroyed; device unbound (its auto domain went with it)");
    let n = giova_ioas.unmap_all().map_err(e)?;
    println!(
        "  IOMMU_IOAS_UNMAP (all) on IOAS {giova}: {} unmapped",
        human(n)
    );
    drop((gpa_ioas, giova_ioas));
    ctx.destroy(giova).map_err(e)?;
    ctx.destroy(gpa).map_err(e)?;
    println!(
        "  IOMMU_DESTROY {giova}, {gpa}: context now holds {} objects",
        ctx.object_count()
    );
    ctx.check_invariants()?;
    println!("  invariants hold");
    Ok(())
}
