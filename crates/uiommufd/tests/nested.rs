//! Nested HWPTs, cache invalidation and I/O page fault queues through the
//! ioctl ABI: the kernel's errno table, the fault fd's read/write/poll
//! rules, and that no fault (nor anyone waiting on one) is left pending
//! when the HWPT or the device goes away.

use std::sync::Arc;
use std::time::Duration;

use uiommufd::fault::{resp, FaultFile, PageFault};
use uiommufd::hwpt::HwptPaging;
use uiommufd::plumbing::files;
use uiommufd::uapi::*;
use uiommufd::Context;
use uiommufd_testkit::{
    self as kit, err, errno, hwpt_alloc_data, invalidate, ioas_alloc, mock_domain_replace, poll_in,
    test_cmd,
};
use zerocopy::{FromBytes, IntoBytes};

/// MOCK_DOMAIN on `pt`: returns (stdev, hwpt, idev).
fn mock_domain(ctx: &Arc<Context>, pt: u32) -> (u32, u32, u32) {
    kit::mock_domain(ctx, pt).unwrap()
}

fn replace(ctx: &Arc<Context>, stdev: u32, pt: u32) -> i32 {
    err(mock_domain_replace(ctx, stdev, pt))
}

fn destroy(ctx: &Arc<Context>, id: u32) -> i32 {
    err(kit::destroy(ctx, id))
}

fn check_iotlb(ctx: &Arc<Context>, hwpt: u32, id: u32, value: u32) -> i32 {
    err(kit::check_iotlb(ctx, hwpt, id, value))
}

fn fault_alloc(ctx: &Arc<Context>) -> (u32, i32) {
    kit::fault_alloc(ctx).unwrap()
}

fn trigger_iopf(ctx: &Arc<Context>, dev: u32, pasid: u32, grpid: u32) -> i32 {
    let p = TestTriggerIopf {
        dev_id: dev,
        pasid,
        grpid,
        perm: IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE,
        addr: 0xdeadbeaf,
    };
    err(test_cmd(ctx, IOMMU_TEST_OP_TRIGGER_IOPF, 0, p.as_bytes()))
}

fn read_fault(fd: i32, len: usize) -> Result<Vec<IommuHwptPgfault>, i32> {
    let mut buf = vec![0u8; len];
    let n = files::read(fd, &mut buf)
        .expect("an engine fd")
        .map_err(|e| e.errno().0)?;
    Ok(buf[..n]
        .chunks_exact(40)
        .map(|c| IommuHwptPgfault::read_from_bytes(c).unwrap())
        .collect())
}

fn respond(fd: i32, rs: &[IommuHwptPageResponse]) -> Result<usize, i32> {
    files::write(fd, rs.as_bytes())
        .expect("an engine fd")
        .map_err(|e| e.errno().0)
}

fn device(ctx: &Arc<Context>, idev: u32) -> Arc<uiommufd::device::Device> {
    ctx.get::<uiommufd::device::Device>(idev).unwrap()
}

/// A context with an IOAS, a mock device on it, and a nest parent.
struct Setup {
    ctx: Arc<Context>,
    ioas: u32,
    stdev: u32,
    idev: u32,
    parent: u32,
    data: IommuHwptSelftest,
}

impl Setup {
    fn new() -> Setup {
        let ctx = Context::new();
        let ioas = ioas_alloc(&ctx);
        let (stdev, _, idev) = mock_domain(&ctx, ioas);
        let parent =
            hwpt_alloc_data(&ctx, idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0, 0, 0, 0).unwrap();
        Setup {
            ctx,
            ioas,
            stdev,
            idev,
            parent,
            data: IommuHwptSelftest {
                iotlb: IOMMU_TEST_IOTLB_DEFAULT,
                pagetable_type: 0,
            },
        }
    }

    fn data(&self) -> u64 {
        &self.data as *const _ as u64
    }

    fn nested(&self, flags: u32, fault_id: u32) -> Result<u32, i32> {
        hwpt_alloc_data(
            &self.ctx,
            self.idev,
            self.parent,
            flags,
            fault_id,
            IOMMU_HWPT_DATA_SELFTEST,
            self.data(),
            4,
        )
    }
}

#[test]
fn nested_alloc_errno_table() {
    let s = Setup::new();
    let ctx = &s.ctx;
    let d = s.data();
    let sel = IOMMU_HWPT_DATA_SELFTEST;
    let not_parent = hwpt_alloc_data(ctx, s.idev, s.ioas, 0, 0, 0, 0, 0).unwrap();
    let auto = device(ctx, s.idev).attached_hwpt().unwrap();
    let (fault_id, fault_fd) = fault_alloc(ctx);
    /// (what, pt, flags, fault_id, data_type, data, len, errno)
    type Case = (&'static str, u32, u32, u32, u32, u64, u32, i32);
    let cases: &[Case] = &[
        // (what, pt, flags, fault_id, data_type, data, len, errno)
        (
            "FAULT_ID_VALID on a paging HWPT",
            s.ioas,
            IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_FAULT_ID_VALID,
            fault_id,
            0,
            0,
            0,
            libc::EOPNOTSUPP,
        ),
        (
            "data type NONE with data",
            s.parent,
            0,
            0,
            IOMMU_HWPT_DATA_NONE,
            d,
            4,
            libc::EINVAL,
        ),
        (
            "no data for a nested HWPT",
            s.parent,
            0,
            0,
            IOMMU_HWPT_DATA_NONE,
            0,
            0,
            libc::EOPNOTSUPP,
        ),
        (
            "unknown data type",
            s.parent,
            0,
            0,
            sel + 1,
            d,
            4,
            libc::EOPNOTSUPP,
        ),
        ("data too short", s.parent, 0, 0, sel, d, 3, libc::EINVAL),
        ("data too long", s.parent, 0, 0, sel, d, 9, libc::EINVAL),
        ("NULL data", s.parent, 0, 0, sel, 0, 4, libc::EFAULT),
        (
            "NEST_PARENT on a nested HWPT",
            s.parent,
            IOMMU_HWPT_ALLOC_NEST_PARENT,
            0,
            sel,
            d,
            4,
            libc::EOPNOTSUPP,
        ),
        (
            "DIRTY_TRACKING on a nested HWPT",
            s.parent,
            IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            0,
            sel,
            d,
            4,
            libc::EOPNOTSUPP,
        ),
        (
            "parent without NEST_PARENT",
            not_parent,
            0,
            0,
            sel,
            d,
            4,
            libc::EINVAL,
        ),
        (
            "automatic domain as parent",
            auto,
            0,
            0,
            sel,
            d,
            4,
            libc::EINVAL,
        ),
        (
            "bad fault_id",
            s.parent,
            IOMMU_HWPT_FAULT_ID_VALID,
            u32::MAX,
            sel,
            d,
            4,
            libc::ENOENT,
        ),
        (
            "fault_id of an IOAS",
            s.parent,
            IOMMU_HWPT_FAULT_ID_VALID,
            s.ioas,
            sel,
            d,
            4,
            libc::ENOENT,
        ),
        ("pt is a device", s.idev, 0, 0, sel, d, 4, libc::EINVAL),
        ("pt does not exist", 9999, 0, 0, sel, d, 4, libc::EINVAL),
    ];
    for &(what, pt, flags, fid, ty, data, len, want) in cases {
        let got = hwpt_alloc_data(ctx, s.idev, pt, flags, fid, ty, data, len);
        assert_eq!(got, Err(want), "{what}");
    }
    assert_eq!(
        hwpt_alloc_data(ctx, 9999, s.parent, 0, 0, sel, d, 4),
        Err(libc::ENOENT),
        "no such device"
    );
    // a failed allocation leaves no object and no ID behind
    let before = ctx.object_count();
    let n0 = s.nested(0, 0).unwrap();
    assert_eq!(ctx.object_count(), before + 1);
    let n1 = s.nested(IOMMU_HWPT_FAULT_ID_VALID, fault_id).unwrap();
    assert_eq!(n1, n0 + 1, "IDs stay dense after failures");
    // nested on nested
    assert_eq!(
        hwpt_alloc_data(ctx, s.idev, n0, 0, 0, sel, d, 4),
        Err(libc::EINVAL)
    );
    for i in 0..4 {
        assert_eq!(check_iotlb(ctx, n0, i, IOMMU_TEST_IOTLB_DEFAULT), 0);
    }
    assert_eq!(
        check_iotlb(ctx, n0, 4, IOMMU_TEST_IOTLB_DEFAULT),
        libc::EINVAL
    );
    assert_eq!(check_iotlb(ctx, n0, 0, 0), libc::EINVAL);
    assert_eq!(check_iotlb(ctx, s.parent, 0, 0), libc::ENOENT);
    // references: parent and fault queue are held
    assert_eq!(destroy(ctx, s.parent), libc::EBUSY);
    assert_eq!(destroy(ctx, fault_id), libc::EBUSY);
    ctx.check_invariants().unwrap();
    assert_eq!(destroy(ctx, n1), 0);
    assert_eq!(destroy(ctx, fault_id), libc::EBUSY, "the fd still holds it");
    files::close(fault_fd).unwrap();
    assert_eq!(destroy(ctx, fault_id), 0);
    assert_eq!(destroy(ctx, n0), 0);
    assert_eq!(destroy(ctx, s.parent), 0);
    assert_eq!(destroy(ctx, not_parent), 0);
}

#[test]
fn invalidate_errno_table_and_entry_num() {
    let s = Setup::new();
    let ctx = &s.ctx;
    let n = s.nested(0, 0).unwrap();
    let sel = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    let req = |flags, iotlb_id| IommuHwptInvalidateSelftest { flags, iotlb_id };
    let mut reqs = [req(0, 0), req(0, 0)];
    let none: &[IommuHwptInvalidateSelftest] = &[];
    let bad_type = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID;
    // (HWPT, entries, data type, entry_len, entry_num, errno, why): nothing
    // done, entry_num written back as 0
    let rows = [
        // only nested HWPTs (a paging HWPT is EINVAL from 6.13, the default
        // level here; ENOENT at 6.12, which uapi_levels.rs checks)
        (
            s.parent,
            &reqs[..],
            sel,
            8,
            1,
            libc::EINVAL,
            "a paging HWPT",
        ),
        (9999, &reqs[..], sel, 8, 1, libc::ENOENT, "no such object"),
        (n, none, sel, 8, 0, 0, "no entries"),
        (n, none, sel, 0, 0, 0, "no entries, entry_len 0"),
        (
            n,
            none,
            bad_type,
            8,
            0,
            libc::EINVAL,
            "the data type is checked even with no entries",
        ),
        (
            n,
            &reqs[..],
            bad_type,
            8,
            1,
            libc::EINVAL,
            "an unknown data type",
        ),
        (n, &reqs[..], sel, 9, 1, libc::EINVAL, "entry too long"),
        (n, &reqs[..], sel, 1, 1, libc::EINVAL, "entry too short"),
        (n, none, sel, 8, 1, libc::EINVAL, "NULL array"),
        (n, &reqs[..], sel, 0, 1, libc::EINVAL, "entry_len 0"),
        (n, &reqs[..], sel, 8192, 1, libc::EINVAL, "entry_len > page"),
        (
            n,
            &reqs[..],
            sel,
            8,
            (1 << 19) + 1,
            libc::EINVAL,
            "entry_num cap",
        ),
    ];
    for (hwpt, r, ty, len, num, want, why) in rows {
        assert_eq!(invalidate(ctx, hwpt, r, ty, len, num), (want, 0), "{why}");
    }
    let mut c = IommuHwptInvalidate {
        size: 32,
        hwpt_id: n,
        __reserved: 1,
        entry_num: 5,
        ..Default::default()
    };
    assert_eq!(errno(ctx, IOMMU_HWPT_INVALIDATE, &mut c), libc::EOPNOTSUPP);
    assert_eq!(c.entry_num, 0);
    reqs[0].flags = 0xffff_ffff;
    assert_eq!(invalidate(ctx, n, &reqs, sel, 8, 1), (libc::EOPNOTSUPP, 0));
    reqs[0] = req(0, MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1);
    assert_eq!(invalidate(ctx, n, &reqs, sel, 8, 1), (libc::EINVAL, 0));
    // stop at the first failure, report what was done
    reqs = [req(0, 0), req(0xffff_ffff, 1)];
    assert_eq!(invalidate(ctx, n, &reqs, sel, 8, 2), (libc::EOPNOTSUPP, 1));
    reqs = [req(0, 0), req(0, 4)];
    assert_eq!(invalidate(ctx, n, &reqs, sel, 8, 2), (libc::EINVAL, 1));
    // an unreadable second entry: EFAULT after the first
    let one = [req(0, 2)];
    let mut c = IommuHwptInvalidate {
        size: 32,
        hwpt_id: n,
        data_uptr: one.as_ptr() as u64,
        data_type: sel,
        entry_len: 8,
        entry_num: 2,
        __reserved: 0,
    };
    // the page after `one` may be mapped: put the array at the end of a
    // mapping followed by an unmapped page instead
    let map = uiommufd_testkit::map_anon(8192, libc::MAP_PRIVATE).unwrap();
    // SAFETY: unmapping the second page of our own mapping.
    unsafe { libc::munmap((map as usize + 4096) as *mut libc::c_void, 4096) };
    let at = map as usize + 4096 - 8;
    // SAFETY: 8 writable bytes at the end of the first page.
    unsafe { std::ptr::write(at as *mut IommuHwptInvalidateSelftest, req(0, 2)) };
    c.data_uptr = at as u64;
    assert_eq!(errno(ctx, IOMMU_HWPT_INVALIDATE, &mut c), libc::EFAULT);
    assert_eq!(c.entry_num, 1);
    // SAFETY: our own mapping's first page.
    unsafe { libc::munmap(map, 4096) };
    assert_eq!(check_iotlb(ctx, n, 0, 0), 0);
    assert_eq!(check_iotlb(ctx, n, 1, IOMMU_TEST_IOTLB_DEFAULT), 0);
    assert_eq!(check_iotlb(ctx, n, 2, 0), 0);
    assert_eq!(check_iotlb(ctx, n, 3, IOMMU_TEST_IOTLB_DEFAULT), 0);
    reqs = [req(IOMMU_TEST_INVALIDATE_FLAG_ALL, 3), req(0, 0)];
    assert_eq!(invalidate(ctx, n, &reqs, sel, 8, 1), (0, 1));
    for i in 0..4 {
        assert_eq!(check_iotlb(ctx, n, i, 0), 0);
    }
}

#[test]
fn attach_to_nested_hwpts() {
    let s = Setup::new();
    let ctx = &s.ctx;
    let n0 = s.nested(0, 0).unwrap();
    let n1 = s.nested(0, 0).unwrap();
    assert_eq!(replace(ctx, s.stdev, n0), 0);
    assert_eq!(destroy(ctx, n0), libc::EBUSY);
    let dev = device(ctx, s.idev);
    let parent = ctx.get::<HwptPaging>(s.parent).unwrap();
    assert!(
        Arc::ptr_eq(&dev.hwpt().unwrap(), &parent),
        "DMA goes through the parent"
    );
    assert_eq!(dev.attached_hwpt(), Some(n0));
    drop(parent);
    ctx.check_invariants().unwrap();
    assert_eq!(replace(ctx, s.stdev, n1), 0);
    assert_eq!(destroy(ctx, n0), 0);
    // a second device attached straight to a nested HWPT
    let (stdev2, hwpt2, _) = mock_domain(ctx, n1);
    assert_eq!(hwpt2, n1);
    assert_eq!(destroy(ctx, stdev2), 0);
    assert_eq!(replace(ctx, s.stdev, s.ioas), 0);
    assert_eq!(destroy(ctx, n1), 0);
    assert_eq!(destroy(ctx, s.parent), 0);
    ctx.check_invariants().unwrap();
}

#[test]
fn fault_fd_read_write_rules() {
    let s = Setup::new();
    let ctx = &s.ctx;
    let (fault_id, fd) = fault_alloc(ctx);
    let n = s.nested(IOMMU_HWPT_FAULT_ID_VALID, fault_id).unwrap();
    // not attached to it yet: the fault is answered INVALID, nothing queued
    assert_eq!(trigger_iopf(ctx, s.idev, 1, 2), 0);
    assert_eq!(read_fault(fd, 40), Ok(vec![]));
    assert!(!poll_in(fd));
    assert_eq!(replace(ctx, s.stdev, n), 0);
    assert_eq!(trigger_iopf(ctx, s.idev, 0x1, 0x2), 0);
    assert!(poll_in(fd));
    assert_eq!(read_fault(fd, 39), Err(libc::ESPIPE));
    assert_eq!(
        read_fault(fd, 0),
        Err(libc::EINVAL),
        "no room for the group"
    );
    let recs = read_fault(fd, 80).unwrap();
    assert_eq!(recs.len(), 1);
    let r = recs[0];
    assert_eq!(
        (r.flags, r.dev_id, r.pasid, r.grpid, r.addr, r.length),
        (
            IOMMU_PGFAULT_FLAGS_PASID_VALID | IOMMU_PGFAULT_FLAGS_LAST_PAGE,
            s.idev,
            1,
            2,
            0xdeadbeaf,
            0
        )
    );
    assert_eq!(r.perm, IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE);
    assert_eq!(r.cookie, 1, "cookies start at 1");
    assert!(!poll_in(fd));
    assert_eq!(
        read_fault(fd, 40),
        Ok(vec![]),
        "empty: 0 bytes, no blocking"
    );
    // responses
    let ok = |cookie| IommuHwptPageResponse {
        cookie,
        code: IOMMUFD_PAGE_RESP_SUCCESS,
    };
    assert_eq!(
        files::write(fd, &[0u8; 7]).unwrap().unwrap_err().errno().0,
        libc::ESPIPE
    );
    assert_eq!(
        respond(fd, &[IommuHwptPageResponse { cookie: 1, code: 2 }]),
        Err(libc::EINVAL)
    );
    assert_eq!(respond(fd, &[ok(7)]), Err(libc::EINVAL), "unknown cookie");
    assert_eq!(
        respond(fd, &[ok(1), ok(1)]),
        Ok(8),
        "stops short at the bad one"
    );
    assert_eq!(respond(fd, &[ok(1)]), Err(libc::EINVAL), "already answered");
    assert_eq!(respond(fd, &[]), Ok(0));
    // two groups, read together; the lowest free cookie is reused
    assert_eq!(trigger_iopf(ctx, s.idev, 0, 5), 0);
    assert_eq!(trigger_iopf(ctx, s.idev, 0, 6), 0);
    let recs = read_fault(fd, 40 * 4).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].cookie, recs[1].cookie), (1, 2));
    assert_eq!(
        recs[0].flags, IOMMU_PGFAULT_FLAGS_LAST_PAGE,
        "PASID 0: not valid"
    );
    assert_eq!(respond(fd, &[ok(2), ok(1)]), Ok(16));
    // a group of several requests is read whole or not at all
    let dev = device(ctx, s.idev);
    let part = PageFault {
        grpid: 9,
        addr: 0x1000,
        ..Default::default()
    };
    assert!(dev.report_fault(part).is_none(), "waits for its last page");
    let g = dev
        .report_fault(PageFault {
            last_page: true,
            grpid: 9,
            addr: 0x2000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(g.faults().len(), 2);
    assert_eq!(read_fault(fd, 40), Err(libc::EINVAL));
    let recs = read_fault(fd, 80).unwrap();
    assert_eq!((recs[0].addr, recs[1].addr), (0x1000, 0x2000));
    assert_eq!(recs[0].cookie, recs[1].cookie);
    assert_eq!(
        respond(
            fd,
            &[IommuHwptPageResponse {
                cookie: recs[0].cookie,
                code: IOMMUFD_PAGE_RESP_INVALID
            }]
        ),
        Ok(8)
    );
    assert_eq!(g.response(), Some(resp::INVALID));
    assert_eq!(replace(ctx, s.stdev, s.ioas), 0);
    assert_eq!(destroy(ctx, n), 0);
    files::close(fd).unwrap();
    assert_eq!(destroy(ctx, fault_id), 0);
}

#[test]
fn fault_round_trip_between_threads() {
    let s = Setup::new();
    let ctx = s.ctx.clone();
    let (fault_id, fd) = fault_alloc(&ctx);
    let n = s.nested(IOMMU_HWPT_FAULT_ID_VALID, fault_id).unwrap();
    assert_eq!(replace(&ctx, s.stdev, n), 0);
    let fault = files::get_as::<FaultFile>(fd).unwrap().fault().clone();
    const N: u32 = 50;
    // the handler: wait for faults, answer each with SUCCESS
    let handler = std::thread::spawn(move || {
        let mut answered = 0;
        while answered < N {
            assert!(
                fault.wait_readable(Duration::from_secs(10)),
                "a fault arrives"
            );
            let recs = read_fault(fd, 40 * 8).unwrap();
            let rs: Vec<_> = recs
                .iter()
                .map(|r| IommuHwptPageResponse {
                    cookie: r.cookie,
                    code: IOMMUFD_PAGE_RESP_SUCCESS,
                })
                .collect();
            assert_eq!(respond(fd, &rs), Ok(8 * rs.len()));
            answered += rs.len() as u32;
        }
    });
    // the device: raise faults and wait for each answer
    let dev = device(&ctx, s.idev);
    for i in 0..N {
        let g = dev
            .report_fault(PageFault {
                last_page: true,
                grpid: i,
                addr: 0x1000 * i as u64,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(g.wait(Some(Duration::from_secs(10))), Some(resp::SUCCESS));
    }
    handler.join().unwrap();
    assert!(!poll_in(fd));
    assert_eq!(replace(&ctx, s.stdev, s.ioas), 0);
    assert_eq!(destroy(&ctx, n), 0);
    files::close(fd).unwrap();
    assert_eq!(destroy(&ctx, fault_id), 0);
}

#[test]
fn leaving_the_hwpt_answers_pending_faults() {
    let s = Setup::new();
    let ctx = s.ctx.clone();
    let (fault_id, fd) = fault_alloc(&ctx);
    let n = s.nested(IOMMU_HWPT_FAULT_ID_VALID, fault_id).unwrap();
    let other = s.nested(IOMMU_HWPT_FAULT_ID_VALID, fault_id).unwrap();
    assert_eq!(replace(&ctx, s.stdev, n), 0);
    let dev = device(&ctx, s.idev);
    let raise = |grpid| {
        dev.report_fault(PageFault {
            last_page: true,
            grpid,
            ..Default::default()
        })
        .unwrap()
    };
    // one fault read but not answered, one not even read
    let read = raise(1);
    let recs = read_fault(fd, 40).unwrap();
    let unread = raise(2);
    assert!(poll_in(fd));
    // blocked device-side waiters
    let waiters: Vec<_> = [read.clone(), unread.clone()]
        .into_iter()
        .map(|g| std::thread::spawn(move || g.wait(None)))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    // replacing to another HWPT on the same queue still answers them: they
    // belong to the old attachment
    assert_eq!(replace(&ctx, s.stdev, other), 0);
    for w in waiters {
        assert_eq!(w.join().unwrap(), Some(resp::INVALID), "the waiter returns");
    }
    assert!(!poll_in(fd), "nothing left to read");
    assert_eq!(read_fault(fd, 40), Ok(vec![]));
    assert_eq!(
        respond(
            fd,
            &[IommuHwptPageResponse {
                cookie: recs[0].cookie,
                code: 0
            }]
        ),
        Err(libc::EINVAL),
        "its cookie is gone"
    );
    assert_eq!(destroy(&ctx, n), 0, "the HWPT goes with nothing pending");
    // unbinding the device (destroying its selftest object) answers too
    let g = raise(3);
    let w = std::thread::spawn(move || g.wait(None));
    assert_eq!(destroy(&ctx, s.stdev), 0);
    assert_eq!(w.join().unwrap(), Some(resp::INVALID));
    assert_eq!(read_fault(fd, 40), Ok(vec![]));
    assert_eq!(destroy(&ctx, other), 0);
    files::close(fd).unwrap();
    assert_eq!(destroy(&ctx, fault_id), 0);
    ctx.check_invariants().unwrap();
}

#[test]
fn faults_without_a_fault_queue() {
    let s = Setup::new();
    let ctx = &s.ctx;
    let n = s.nested(0, 0).unwrap();
    assert_eq!(trigger_iopf(ctx, 9999, 0, 0), libc::ENOENT);
    assert_eq!(trigger_iopf(ctx, s.ioas, 0, 0), libc::ENOENT);
    assert_eq!(replace(ctx, s.stdev, n), 0);
    assert_eq!(
        trigger_iopf(ctx, s.idev, 1, 0),
        0,
        "dropped, answered INVALID"
    );
    let g = device(ctx, s.idev)
        .report_fault(PageFault {
            last_page: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(g.response(), Some(resp::INVALID));
    let mut c = IommuFaultAlloc {
        size: 16,
        flags: 1,
        ..Default::default()
    };
    assert_eq!(
        errno(ctx, IOMMU_FAULT_QUEUE_ALLOC, &mut c),
        libc::EOPNOTSUPP
    );
    // closing the context with a fault fd open keeps it working until close
    let (fault_id, fd) = fault_alloc(ctx);
    assert!(fault_id > 0 && fd > 0);
    // SAFETY: F_GETFD on our own fd.
    assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC != 0);
    files::close(fd).unwrap();
}
