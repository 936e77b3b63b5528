//! `uiommufd demo`: the /dev/ioasid RFC's use-case flows through the Rust API.
//!
//! 5.1 — one device, one GPA address space: guest RAM (an anonymous mapping
//! standing in for the VMM's HVA range) mapped at GPA 0.
//! 5.2 — the guest enables a vIOMMU and gives dev2 its own GIOVA space; with
//! no nesting, the VMM shadows the guest's mapping GIOVA 0x2000 → GPA 0x1000
//! into a second IOAS. In iommufd that is `IOAS_COPY` from the GPA IOAS, which
//! shares the pin of the GPA mapping instead of pinning the memory twice.

use uiommufd::io_pagetable::AreaInfo;
use uiommufd::{Context, Prot};

/// Guest RAM size for the demo (mapped lazily; nothing is touched).
const GUEST_RAM: u64 = 1 << 30;

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
        // SAFETY: a fresh private anonymous mapping; we own it until Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {} failed: {}",
                human(len),
                std::io::Error::last_os_error()
            ));
        }
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
        .map_user(ram.hva(), GUEST_RAM, Some(0), Prot::RW)
        .map_err(e)?;
    println!(
        "  IOMMU_IOAS_MAP  GPA {iova:#x} <- HVA {:#x}, {} (FIXED_IOVA, rw)",
        ram.hva(),
        human(GUEST_RAM)
    );
    table(&format!("IOAS {gpa} (GPA)"), &gpa_ioas.areas());

    println!();
    println!("== 5.2: a second (GIOVA) address space with a shadow mapping ==");
    let giova = ctx.ioas_alloc().map_err(e)?;
    println!("  IOMMU_IOAS_ALLOC -> giova_ioas = {giova}");
    let giova_ioas = ctx.ioas(giova).map_err(e)?;
    // guest vIOMMU: GIOVA 0x2000 -> GPA 0x1000; shadow it from the GPA IOAS
    let got = giova_ioas
        .copy_from(&gpa_ioas, 0x1000, 0x1000, Some(0x2000), Prot::RW)
        .map_err(e)?;
    println!(
        "  IOMMU_IOAS_COPY  GIOVA {got:#x} <- GPA 0x1000 (4 KiB): HVA {:#x}, same pages object",
        ram.hva() + 0x1000
    );
    let auto = giova_ioas
        .copy_from(&gpa_ioas, 0x10_0000, 0x20_0000, None, Prot::RO)
        .map_err(e)?;
    println!("  IOMMU_IOAS_COPY  GIOVA {auto:#x} (allocated) <- GPA 0x100000 (2 MiB, read-only)");
    table(&format!("IOAS {gpa} (GPA)"), &gpa_ioas.areas());
    table(&format!("IOAS {giova} (GIOVA)"), &giova_ioas.areas());

    println!();
    println!("== teardown ==");
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
