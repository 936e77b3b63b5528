//! VT-d first-stage nesting through the uAPI bytes, with an emulated VFIO
//! device doing DMA through both stages: `GET_HW_INFO` (VT-d, nesting in
//! ECAP) → nest-parent HWPT → `IOMMU_HWPT_DATA_VTD_S1` HWPT over an x86-64
//! first-stage table the test writes in its own memory (mapped in the
//! IOAS) → attach → device DMA lands where the tables say, A/D written
//! back → table edit: the cached translation stays until
//! `IOMMU_HWPT_INVALIDATE` → a fault on a HWPT with a fault queue is read
//! from the fault fd, answered, and the retried DMA completes. Plus the
//! errno tables of the S1 allocation, attach and invalidation.

use std::sync::Arc;

use uiommufd::domain::DmaFault;
use uiommufd::fault::resp;
use uiommufd::plumbing::files;
use uiommufd::uapi::*;
use uiommufd::vfio::model::{Bar, PciIds, PciLayout};
use uiommufd::vfio::registry;
use uiommufd::vtd::nested::{
    fl, IommuHwptVtdS1, IommuHwptVtdS1Invalidate, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
    IOMMU_VTD_INV_FLAGS_LEAF, IOMMU_VTD_S1_EAFE, IOMMU_VTD_S1_SRE, IOMMU_VTD_S1_WPE,
};
use uiommufd::Context;
use uiommufd_testkit::vfio::{attach_pt, bind_cdev, enable_bus_master, BusOnly};
use zerocopy::{FromBytes, IntoBytes};

use uiommufd_testkit::{self as kit, Buf};

/// A device with one register BAR and nothing behind it: the test drives
/// its DMA directly.
fn dma_device() -> Arc<BusOnly> {
    let layout = PciLayout {
        bars: [Some(Bar::registers(4096)), None, None, None, None, None],
        intx_pin: 1,
        ..PciLayout::new(PciIds::new(0x1b36, 0x7778, 0xff0000))
    };
    BusOnly::new("nest-dma", layout)
}

/// Guest memory layout (guest physical = IOVA of the parent HWPT).
const GPA: u64 = 0x10_0000;
const PAGES: u64 = 16;
const PML4: u64 = 0;
const PDPT: u64 = 1;
const PD: u64 = 2;
const PT: u64 = 3;
/// First-stage IOVA the device uses.
const IOVA: u64 = 0x4000_0000;
const US_RW: u64 = fl::P | fl::RW | fl::US;

fn gpa(page: u64) -> u64 {
    GPA + page * 4096
}

/// A device bound to a fresh context, with guest memory mapped in an IOAS.
struct Setup {
    ctx: Arc<Context>,
    model: Arc<BusOnly>,
    fd: i32,
    devid: u32,
    ioas: u32,
    mem: Buf,
}

impl Setup {
    fn new(n: u32) -> Setup {
        let model = dma_device();
        registry::declare_model(
            &format!(
                "nest-dma,addr=0000:e1:{n:02x}.0,group={},cdev={}",
                600 + n,
                600 + n
            ),
            model.clone(),
        )
        .unwrap();
        let ctx = Context::new();
        let fd = registry::open_cdev(600 + n, true).unwrap();
        let devid = bind_cdev(fd, &ctx);
        enable_bus_master(fd);
        let ioas = kit::ioas_alloc(&ctx);
        let mem = Buf::zeroed(PAGES * 4096, 4096);
        // the last page is an area of its own (unmapped and mapped again)
        kit::map_fixed(&ctx, ioas, mem.addr(), (PAGES - 1) * 4096, GPA).unwrap();
        kit::map_fixed(
            &ctx,
            ioas,
            mem.addr() + (PAGES - 1) * 4096,
            4096,
            gpa(PAGES - 1),
        )
        .unwrap();
        Setup {
            ctx,
            model,
            fd,
            devid,
            ioas,
            mem,
        }
    }

    /// The host address of guest physical `g`.
    fn host(&self, g: u64) -> u64 {
        self.mem.addr() + (g - GPA)
    }

    fn entry(&self, table: u64, idx: u64) -> u64 {
        // SAFETY: inside our mapped buffer, 8-aligned.
        unsafe { std::ptr::read_volatile((self.host(gpa(table)) + idx * 8) as *const u64) }
    }

    fn set_entry(&self, table: u64, idx: u64, v: u64) {
        // SAFETY: inside our mapped buffer, 8-aligned.
        unsafe { std::ptr::write_volatile((self.host(gpa(table)) + idx * 8) as *mut u64, v) }
    }

    /// `len` bytes at `off` of guest page `page`.
    fn read(&self, page: u64, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: inside our mapped buffer (the callers stay in a page).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.host(gpa(page)) + off) as *const u8,
                v.as_mut_ptr(),
                len,
            )
        };
        v
    }

    /// Write `data` at `off` of guest page `page`.
    fn write(&self, page: u64, off: u64, data: &[u8]) {
        // SAFETY: inside our mapped buffer (the callers stay in a page).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.host(gpa(page)) + off) as *mut u8,
                data.len(),
            )
        };
    }

    /// PML4[0] → PDPT, PDPT[1] → PD, PD[0] → PT (IOVA 0x4000_0000..+2 MiB).
    fn build_tables(&self) {
        self.set_entry(PML4, 0, gpa(PDPT) | US_RW);
        self.set_entry(PDPT, 1, gpa(PD) | US_RW);
        self.set_entry(PD, 0, gpa(PT) | US_RW);
    }

    fn s1_data(flags: u64, width: u32) -> IommuHwptVtdS1 {
        IommuHwptVtdS1 {
            flags,
            pgtbl_addr: gpa(PML4),
            addr_width: width,
            __reserved: 0,
        }
    }

    fn hwpt_alloc(
        &self,
        pt: u32,
        flags: u32,
        fault_id: u32,
        data_type: u32,
        data: u64,
        len: u32,
    ) -> Result<u32, i32> {
        let devid = self.devid;
        kit::hwpt_alloc_data(&self.ctx, devid, pt, flags, fault_id, data_type, data, len)
    }

    fn s1(&self, parent: u32, d: &IommuHwptVtdS1, fault: Option<u32>) -> Result<u32, i32> {
        kit::hwpt_alloc_vtd_s1(&self.ctx, self.devid, parent, d, fault)
    }

    fn attach(&self, pt: u32) -> Result<u32, i32> {
        attach_pt(self.fd, pt)
    }

    fn invalidate(
        &self,
        hwpt: u32,
        reqs: &[IommuHwptVtdS1Invalidate],
        data_type: u32,
        entry_len: u32,
    ) -> (i32, u32) {
        let num = reqs.len() as u32;
        kit::invalidate(&self.ctx, hwpt, reqs, data_type, entry_len, num)
    }

    fn inv_one(&self, hwpt: u32, addr: u64, npages: u64) {
        assert_eq!(
            kit::invalidate_vtd_s1_leaf(&self.ctx, hwpt, addr, npages),
            (0, 1)
        );
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = files::close(self.fd);
    }
}

fn inv(addr: u64, npages: u64, flags: u32, rsv: u32) -> IommuHwptVtdS1Invalidate {
    IommuHwptVtdS1Invalidate {
        addr,
        npages,
        flags,
        __reserved: rsv,
    }
}

#[test]
fn vtd_nested_flow_through_both_stages() {
    let s = Setup::new(1);

    // GET_HW_INFO: VT-d, scalable mode with nesting and first stage
    let mut data = [0u8; 24];
    let h = kit::hw_info_into(&s.ctx, s.devid, &mut data).unwrap();
    assert_eq!(h.out_data_type, IOMMU_HW_INFO_TYPE_INTEL_VTD);
    let ecap = u64::from_ne_bytes(data[16..24].try_into().unwrap());
    assert_eq!((ecap >> 26) & 1, 1, "ECAP.NEST");
    assert_eq!((ecap >> 43) & 1, 1, "ECAP.SMTS");
    assert_eq!((ecap >> 47) & 1, 1, "ECAP.FLTS");

    let parent = kit::hwpt_alloc(&s.ctx, s.devid, s.ioas, IOMMU_HWPT_ALLOC_NEST_PARENT).unwrap();
    s.build_tables();
    // IOVA page 0 → guest page 4 (RW), page 1 → guest page 5 (read-only)
    s.set_entry(PT, 0, gpa(4) | US_RW);
    s.set_entry(PT, 1, gpa(5) | fl::P | fl::US);
    let cfg = Setup::s1_data(0, 48);
    let s1 = s.s1(parent, &cfg, None).unwrap();
    assert!(s.ctx.get::<uiommufd::hwpt::nested::HwptNested>(s1).is_ok());
    assert_eq!(s.attach(s1).unwrap(), s1);

    // a device write lands where the two stages say
    let bus = s.model.bus();
    bus.dma_write(IOVA + 0x10, b"through both stages").unwrap();
    assert_eq!(&s.read(4, 0x10, 19)[..], b"through both stages");
    // A in every level, D in the leaf written
    for (t, i) in [(PML4, 0), (PDPT, 1), (PD, 0)] {
        assert_ne!(s.entry(t, i) & fl::A, 0, "A in table {t} entry {i}");
    }
    assert_eq!(s.entry(PT, 0) & (fl::A | fl::D), fl::A | fl::D);
    // a read sets A only
    s.write(5, 0, b"ro!!");
    let mut b = [0u8; 4];
    bus.dma_read(IOVA + 4096, &mut b).unwrap();
    assert_eq!(&b, b"ro!!");
    assert_eq!(s.entry(PT, 1) & (fl::A | fl::D), fl::A);
    // a write to the read-only page is a permission fault; nothing lands
    assert_eq!(
        bus.dma_write(IOVA + 4096, b"no"),
        Err(DmaFault::Permission {
            iova: IOVA + 4096,
            write: true
        })
    );
    assert_eq!(&s.read(5, 0, 4)[..], b"ro!!");
    // not present in the first stage
    assert!(matches!(
        bus.dma_read(IOVA + 2 * 4096, &mut b),
        Err(DmaFault::NotPresent { .. })
    ));

    // the table is edited: IOVA page 0 now → guest page 6. The cached
    // translation survives until HWPT_INVALIDATE, as on hardware.
    s.write(6, 0, b"new page");
    s.set_entry(PT, 0, gpa(6) | US_RW);
    let mut r = [0u8; 8];
    bus.dma_read(IOVA, &mut r).unwrap();
    assert_eq!(&r, b"\0\0\0\0\0\0\0\0", "stale: still guest page 4");
    // an invalidation of another range changes nothing
    s.inv_one(s1, IOVA + 0x10_0000, 1);
    bus.dma_read(IOVA, &mut r).unwrap();
    assert_eq!(&r, b"\0\0\0\0\0\0\0\0");
    s.inv_one(s1, IOVA, 1);
    bus.dma_read(IOVA, &mut r).unwrap();
    assert_eq!(
        &r, b"new page",
        "after HWPT_INVALIDATE the device sees the edit"
    );

    // the second stage is the parent's: unmapping a guest page from the
    // IOAS faults the device at once, with no first-stage invalidation
    let last = PAGES - 1;
    s.write(last, 0, b"last");
    s.set_entry(PT, 5, gpa(last) | US_RW);
    let mut l = [0u8; 4];
    bus.dma_read(IOVA + 5 * 4096, &mut l).unwrap();
    assert_eq!(&l, b"last");
    kit::unmap(&s.ctx, s.ioas, gpa(last), 4096).unwrap();
    assert!(matches!(
        bus.dma_read(IOVA + 5 * 4096, &mut l),
        Err(DmaFault::NotPresent { .. })
    ));
    kit::map_fixed(&s.ctx, s.ioas, s.host(gpa(last)), 4096, gpa(last)).unwrap();
    bus.dma_read(IOVA + 5 * 4096, &mut l).unwrap();
    assert_eq!(&l, b"last");

    // the parent's dirty tracking sees the device's writes through the
    // first stage (and the A/D write-backs into the table page)
    let hwpt_dirty = kit::hwpt_alloc(
        &s.ctx,
        s.devid,
        s.ioas,
        IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    )
    .unwrap();
    let s1d = s.s1(hwpt_dirty, &cfg, None).unwrap();
    s.attach(s1d).unwrap();
    kit::set_dirty_tracking(&s.ctx, hwpt_dirty, true).unwrap();
    let mut bitmap = 0u64;
    let bm = &mut bitmap as *mut u64 as u64;
    kit::get_dirty_bitmap(&s.ctx, hwpt_dirty, GPA, PAGES * 4096, 4096, bm, 0).unwrap();
    bitmap = 0;
    kit::get_dirty_bitmap(&s.ctx, hwpt_dirty, GPA, PAGES * 4096, 4096, bm, 0).unwrap();
    assert_eq!(std::hint::black_box(bitmap), 0);
    s.set_entry(PT, 2, gpa(7) | US_RW);
    bus.dma_write(IOVA + 2 * 4096, b"dirty").unwrap();
    kit::get_dirty_bitmap(&s.ctx, hwpt_dirty, GPA, PAGES * 4096, 4096, bm, 0).unwrap();
    assert_eq!(
        std::hint::black_box(bitmap),
        (1 << 7) | (1 << PT),
        "guest page 7 written, and the leaf table whose A/D changed"
    );
    // the parents stay while nested HWPTs use them
    assert_eq!(kit::err(kit::destroy(&s.ctx, hwpt_dirty)), libc::EBUSY);
}

#[test]
fn vtd_nested_fault_queue_round_trip() {
    let s = Setup::new(2);
    let parent = kit::hwpt_alloc(&s.ctx, s.devid, s.ioas, IOMMU_HWPT_ALLOC_NEST_PARENT).unwrap();
    s.build_tables();
    let (fault_id, ffd) = kit::fault_alloc(&s.ctx).unwrap();
    let cfg = Setup::s1_data(0, 48);
    let s1 = s.s1(parent, &cfg, Some(fault_id)).unwrap();
    s.attach(s1).unwrap();
    let bus = s.model.bus();

    // page 3 of the IOVA is not present in the first stage
    let at = IOVA + 3 * 4096 + 0x24;
    assert!(matches!(
        bus.dma_write(at, b"retry me"),
        Err(DmaFault::NotPresent { .. })
    ));
    // the fault is in the fault fd
    let mut buf = [0u8; 80];
    let n = files::read(ffd, &mut buf).unwrap().unwrap();
    assert_eq!(n, 40);
    let f = IommuHwptPgfault::read_from_bytes(&buf[..40]).unwrap();
    assert_eq!(f.dev_id, s.devid);
    assert_eq!(f.addr, (IOVA + 3 * 4096));
    assert_ne!(f.perm & IOMMU_PGFAULT_PERM_WRITE, 0);
    assert_ne!(f.flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE, 0);
    // the handler maps the page, answers, and the device retries
    s.set_entry(PT, 3, gpa(8) | US_RW);
    let r = IommuHwptPageResponse {
        cookie: f.cookie,
        code: resp::SUCCESS,
    };
    assert_eq!(files::write(ffd, r.as_bytes()).unwrap().unwrap(), 8);
    bus.dma_write(at, b"retry me").unwrap();
    assert_eq!(&s.read(8, 0x24, 8)[..], b"retry me");

    // a permission fault (user request to a supervisor page) is reported too
    s.set_entry(PT, 4, gpa(9) | fl::P | fl::RW);
    let mut b = [0u8; 2];
    assert!(matches!(
        bus.dma_read(IOVA + 4 * 4096, &mut b),
        Err(DmaFault::Permission { write: false, .. })
    ));
    let n = files::read(ffd, &mut buf).unwrap().unwrap();
    let f = IommuHwptPgfault::read_from_bytes(&buf[..n]).unwrap();
    assert_eq!(f.addr, IOVA + 4 * 4096);
    assert_ne!(f.perm & IOMMU_PGFAULT_PERM_READ, 0);
    let r = IommuHwptPageResponse {
        cookie: f.cookie,
        code: resp::INVALID,
    };
    files::write(ffd, r.as_bytes()).unwrap().unwrap();
    files::close(ffd).unwrap();
}

#[test]
fn vtd_s1_alloc_and_attach_errnos() {
    let s = Setup::new(3);
    let plain = kit::hwpt_alloc(&s.ctx, s.devid, s.ioas, 0).unwrap();
    let parent = kit::hwpt_alloc(&s.ctx, s.devid, s.ioas, IOMMU_HWPT_ALLOC_NEST_PARENT).unwrap();
    let cfg = Setup::s1_data(0, 48);
    let p = &cfg as *const _ as u64;
    let vtd = IOMMU_HWPT_DATA_VTD_S1;
    // (pt, flags, data type, data, len) → errno
    let table: &[(u32, u32, u32, u64, u32, i32)] = &[
        // flags other than FAULT_ID_VALID on a nested HWPT
        (
            parent,
            IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            vtd,
            p,
            24,
            libc::EOPNOTSUPP,
        ),
        (
            parent,
            IOMMU_HWPT_ALLOC_NEST_PARENT,
            vtd,
            p,
            24,
            libc::EOPNOTSUPP,
        ),
        // a parent made without NEST_PARENT
        (plain, 0, vtd, p, 24, libc::EINVAL),
        // another driver's data type
        (parent, 0, 0xdead_beef, p, 4, libc::EOPNOTSUPP),
        // shorter than the struct's first version
        (parent, 0, vtd, p, 20, libc::EINVAL),
        // an unreadable struct
        (parent, 0, vtd, 8, 24, libc::EFAULT),
        // data_type NONE with data
        (parent, 0, IOMMU_HWPT_DATA_NONE, p, 24, libc::EINVAL),
        // a paging HWPT on an IOAS with VT-d data
        (s.ioas, 0, vtd, p, 24, libc::EOPNOTSUPP),
    ];
    for (i, &(pt, flags, ty, data, len, want)) in table.iter().enumerate() {
        assert_eq!(
            kit::err(s.hwpt_alloc(pt, flags, 0, ty, data, len)),
            want,
            "row {i}"
        );
    }
    // a fault_id that is not a fault queue
    assert_eq!(
        kit::err(s.hwpt_alloc(parent, IOMMU_HWPT_FAULT_ID_VALID, plain, vtd, p, 24)),
        libc::ENOENT
    );

    // width and S1 flags: accepted at allocation, checked at attach
    // (intel_pasid_setup_nested)
    for (flags, width, want) in [
        (0, 39, libc::EINVAL),
        (0, 64, libc::EINVAL),
        (IOMMU_VTD_S1_EAFE, 48, libc::EINVAL),
        (0, 57, 0),
        (IOMMU_VTD_S1_SRE | IOMMU_VTD_S1_WPE, 48, 0),
        (IOMMU_VTD_S1_WPE, 48, 0),
    ] {
        let c = Setup::s1_data(flags, width);
        let h = s.s1(parent, &c, None).unwrap();
        assert_eq!(
            kit::err(s.attach(h)),
            want,
            "flags {flags:#x} width {width}"
        );
    }
}

#[test]
fn vtd_s1_invalidate_errnos_and_entry_num() {
    let s = Setup::new(4);
    let parent = kit::hwpt_alloc(&s.ctx, s.devid, s.ioas, IOMMU_HWPT_ALLOC_NEST_PARENT).unwrap();
    let cfg = Setup::s1_data(0, 48);
    let h = s.s1(parent, &cfg, None).unwrap();
    let ok = inv(0x1000, 1, 0, 0);
    let t = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1;
    // (entries, data type, entry_len) → (errno, entry_num written back)
    type Row = (Vec<IommuHwptVtdS1Invalidate>, u32, u32, (i32, u32));
    let table: Vec<Row> = vec![
        (vec![ok, ok], t, 24, (0, 2)),
        (vec![inv(0, u64::MAX, 0, 0)], t, 24, (0, 1)),
        (
            vec![inv(0, u64::MAX, IOMMU_VTD_INV_FLAGS_LEAF, 0)],
            t,
            24,
            (0, 1),
        ),
        (vec![inv(0x2000, 0, 0, 0)], t, 24, (0, 1)),
        // the mock's type
        (
            vec![ok],
            IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
            24,
            (libc::EINVAL, 0),
        ),
        // unknown flags, reserved bits
        (vec![ok, inv(0x1000, 1, 2, 0)], t, 24, (libc::EOPNOTSUPP, 1)),
        (vec![inv(0x1000, 1, 0, 1), ok], t, 24, (libc::EOPNOTSUPP, 0)),
        // unaligned, all-ones npages with an address
        (vec![ok, ok, inv(0x1001, 1, 0, 0)], t, 24, (libc::EINVAL, 2)),
        (vec![inv(0x1000, u64::MAX, 0, 0)], t, 24, (libc::EINVAL, 0)),
        // an entry shorter than the struct
        (vec![ok], t, 16, (libc::EINVAL, 0)),
    ];
    for (i, (reqs, ty, len, want)) in table.iter().enumerate() {
        assert_eq!(s.invalidate(h, reqs, *ty, *len), *want, "row {i}");
    }
    // no entries: nothing to do
    assert_eq!(s.invalidate(h, &[], t, 24), (0, 0));
    // the parent is not a nested HWPT (EINVAL from 6.13, the default level
    // here; ENOENT at 6.12)
    assert_eq!(s.invalidate(parent, &[ok], t, 24).0, libc::EINVAL);
}
