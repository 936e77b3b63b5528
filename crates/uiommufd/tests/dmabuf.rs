//! dma-bufs (uAPI 6.19+): the selftest exporter's `DMABUF_GET` /
//! `DMABUF_REVOKE` and `IOAS_MAP_FILE` of a dma-buf fd, through the uAPI
//! bytes: the checks and their errnos, what the domains map before and
//! after a revocation, and what accesses and copies may do with the pages.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use uiommufd::dmabuf::DmaBufFile;
use uiommufd::domain::{HostAddr, Iova};
use uiommufd::hwpt::HwptPaging;
use uiommufd::mock::dmabuf::{
    TestDmabufGet, TestDmabufRevoke, IOMMU_TEST_OP_DMABUF_GET, IOMMU_TEST_OP_DMABUF_REVOKE,
};
use uiommufd::uapi::*;
use uiommufd::user::page_size as ps;
use uiommufd::{Context, UapiLevel};
use uiommufd_testkit::*;
use zerocopy::IntoBytes;

const RW: u32 = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

/// `DMABUF_GET` of `len` bytes: the fd.
fn get_dmabuf(ctx: &Arc<Context>, len: u32) -> Result<i32, i32> {
    let g = TestDmabufGet {
        length: len,
        open_flags: libc::O_CLOEXEC as u32,
    };
    let mut t = IommuTestCmd {
        size: 72,
        op: IOMMU_TEST_OP_DMABUF_GET,
        ..Default::default()
    };
    t.payload[..8].copy_from_slice(g.as_bytes());
    ctx.ioc(IOMMU_TEST_CMD, &mut t)
}

/// `DMABUF_REVOKE` of `fd`.
fn revoke(ctx: &Arc<Context>, fd: i32, revoked: bool) -> Result<(), i32> {
    let r = TestDmabufRevoke {
        dmabuf_fd: fd,
        revoked: revoked as u32,
    };
    test_cmd(ctx, IOMMU_TEST_OP_DMABUF_REVOKE, 0, r.as_bytes()).map(|_| ())
}

/// The buffer's memory (engine memory: the test runs in the same process).
fn buf_addr(fd: i32) -> u64 {
    uiommufd::plumbing::files::get_as::<DmaBufFile>(fd)
        .expect("a dma-buf fd")
        .buf()
        .addr()
}

/// What the domain of paging HWPT `hwpt` translates `iova` to.
fn phys(ctx: &Arc<Context>, hwpt: u32, iova: u64) -> Option<u64> {
    ctx.get::<HwptPaging>(hwpt)
        .unwrap()
        .domain()
        .iova_to_phys(Iova(iova))
        .map(|h| h.0)
}

fn close(fd: i32) {
    uiommufd::plumbing::files::close(fd).unwrap();
}

#[test]
fn dmabuf_get_sizes_and_levels() {
    let ctx = Context::new_at(UapiLevel::V7_2);
    assert_eq!(get_dmabuf(&ctx, 0), Err(libc::EINVAL));
    assert_eq!(get_dmabuf(&ctx, (513 * ps()) as u32), Err(libc::EINVAL));
    assert_eq!(get_dmabuf(&ctx, u32::MAX), Err(libc::EINVAL));
    let fd = get_dmabuf(&ctx, (512 * ps()) as u32).unwrap();
    close(fd);
    // rounded up to a page
    let fd = get_dmabuf(&ctx, 1).unwrap();
    let ioas = ioas_alloc(&ctx);
    assert_eq!(
        map_file(&ctx, ioas, fd, 0, ps() + 1, RW, None),
        Err(libc::EINVAL)
    );
    map_file(&ctx, ioas, fd, 0, ps(), RW, None).unwrap();
    // the fd is not readable, writable or mappable
    let f = uiommufd::plumbing::files::get(fd).unwrap();
    assert!(!f.can_read() && !f.can_write());
    assert_eq!(f.mmap(0, ps(), false).unwrap_err().errno().0, libc::EINVAL);
    close(fd);

    // before 6.19 the ops are unknown
    for l in [UapiLevel::V6_12, UapiLevel::V6_18] {
        let old = Context::new_at(l);
        assert_eq!(get_dmabuf(&old, ps() as u32), Err(libc::EOPNOTSUPP), "{l}");
        assert_eq!(revoke(&old, 0, true), Err(libc::EOPNOTSUPP), "{l}");
    }
}

/// The selftest's `dmabuf_simple`, and the rest of the range rules.
#[test]
fn map_file_of_a_dmabuf_checks_the_range() {
    let ctx = Context::new_at(UapiLevel::V7_2);
    let ioas = ioas_alloc(&ctx);
    let (_s, hwpt, _d) = mock_domain(&ctx, ioas).unwrap();
    let size = 4 * ps();
    let fd = get_dmabuf(&ctx, size as u32).unwrap();
    assert_eq!(map_file(&ctx, ioas, fd, 0, 0, RW, None), Err(libc::EINVAL));
    assert_eq!(
        map_file(&ctx, ioas, fd, size, size, RW, None),
        Err(libc::EINVAL)
    );
    assert_eq!(
        map_file(&ctx, ioas, fd, 0, size + 1, RW, None),
        Err(libc::EINVAL)
    );
    assert_eq!(
        map_file(&ctx, ioas, fd, u64::MAX - 1, 4, RW, None),
        Err(libc::EOVERFLOW)
    );
    let iova = map_file(&ctx, ioas, fd, 0, size, RW, None).unwrap();
    ctx.check_invariants().unwrap();
    let base = buf_addr(fd);
    assert_eq!(phys(&ctx, hwpt, iova), Some(base));
    assert_eq!(phys(&ctx, hwpt, iova + size - 1), Some(base + size - 1));
    // a piece from the middle
    let iova2 = map_file(&ctx, ioas, fd, ps(), 2 * ps(), RW, None).unwrap();
    assert_eq!(phys(&ctx, hwpt, iova2), Some(base + ps()));
    ctx.check_invariants().unwrap();
    // the mapping outlives the fd
    close(fd);
    assert_eq!(phys(&ctx, hwpt, iova), Some(base));
    unmap(&ctx, ioas, iova, size).unwrap();
    unmap(&ctx, ioas, iova2, 2 * ps()).unwrap();
    assert_eq!(phys(&ctx, hwpt, iova), None);
    ctx.check_invariants().unwrap();
}

/// The selftest's `dmabuf_revoke` with two domains, and what the kernel
/// does around it: the areas stay, revoked for good; a domain attached
/// meanwhile is filled without them; new maps are `ENODEV` until the
/// exporter allows them again.
#[test]
fn revoke_unmaps_every_domain_and_stays() {
    let ctx = Context::new_at(UapiLevel::V7_2);
    let ioas = ioas_alloc(&ctx);
    let (_s1, hwpt1, _d1) = mock_domain(&ctx, ioas).unwrap();
    let (_s2, hwpt2, idev2) = mock_domain(&ctx, ioas).unwrap();
    let size = 4 * ps();
    let fd = get_dmabuf(&ctx, size as u32).unwrap();
    let base = buf_addr(fd);
    let iova = map_file(&ctx, ioas, fd, 0, size, RW, None).unwrap();
    // IOAS_COPY into a second IOAS with its own domain shares the import
    let ioas2 = ioas_alloc(&ctx);
    let (_s3, hwpt3, _d3) = mock_domain(&ctx, ioas2).unwrap();
    let iova3 = MOCK_APERTURE_START;
    copy(&ctx, ioas, iova, ioas2, iova3, size).unwrap();
    for (h, i) in [(hwpt1, iova), (hwpt2, iova), (hwpt3, iova3)] {
        assert_eq!(phys(&ctx, h, i), Some(base));
    }
    ctx.check_invariants().unwrap();

    revoke(&ctx, fd, true).unwrap();
    for (h, i) in [(hwpt1, iova), (hwpt2, iova), (hwpt3, iova3)] {
        assert_eq!(phys(&ctx, h, i), None, "hwpt {h}");
        assert_eq!(phys(&ctx, h, i + size - 1), None, "hwpt {h}");
    }
    let areas = ctx.ioas(ioas).unwrap().iopt().areas();
    assert_eq!(areas.len(), 1, "the area stays");
    ctx.check_invariants().unwrap();
    // the checker sees a domain that still maps a revoked import
    let h1 = ctx.get::<HwptPaging>(hwpt1).unwrap();
    h1.domain()
        .map(Iova(iova), HostAddr(base), size, uiommufd::Prot::RW, ps())
        .unwrap();
    let e = ctx.check_invariants().unwrap_err();
    assert!(e.contains("revoked"), "{e}");
    assert_eq!(h1.domain().unmap(iova, size), size);
    ctx.check_invariants().unwrap();

    // a domain attached meanwhile is filled without the revoked pages
    let hwpt4 = hwpt_alloc(&ctx, idev2, ioas, 0).unwrap();
    assert_eq!(phys(&ctx, hwpt4, iova), None);
    ctx.check_invariants().unwrap();
    assert_eq!(
        map_file(&ctx, ioas, fd, 0, size, RW, None),
        Err(libc::ENODEV)
    );

    // the exporter allows imports again: only new maps see the memory
    revoke(&ctx, fd, false).unwrap();
    let iova2 = map_file(&ctx, ioas, fd, 0, size, RW, None).unwrap();
    for h in [hwpt1, hwpt2, hwpt4] {
        assert_eq!(phys(&ctx, h, iova2), Some(base));
        assert_eq!(phys(&ctx, h, iova), None, "the old area stays revoked");
    }
    ctx.check_invariants().unwrap();

    // restore the IOVA: unmap the revoked area, map it again
    assert_eq!(unmap(&ctx, ioas, iova, size), Ok(size));
    map_file(&ctx, ioas, fd, 0, size, RW, Some(iova)).unwrap();
    for h in [hwpt1, hwpt2, hwpt4] {
        assert_eq!(phys(&ctx, h, iova), Some(base));
    }
    ctx.check_invariants().unwrap();

    // invalidating, whichever way the flag goes, revokes current imports
    revoke(&ctx, fd, false).unwrap();
    for h in [hwpt1, hwpt2, hwpt4] {
        assert_eq!(phys(&ctx, h, iova), None);
        assert_eq!(phys(&ctx, h, iova2), None);
    }
    ctx.check_invariants().unwrap();
    destroy(&ctx, hwpt4).ok();
    close(fd);
    unmap(&ctx, ioas2, iova3, size).unwrap();
    ctx.check_invariants().unwrap();
}

/// A dma-buf has no page an access could pin or copy through (`EINVAL`,
/// as the kernel's `iopt_area_add_access` / `iopt_pages_rw_access`); a
/// VFIO-style cut of its area is `EOPNOTSUPP`; it cannot change process;
/// an unmap never waits for accesses there.
#[test]
fn accesses_and_cuts_refuse_dmabuf_areas() {
    let ctx = Context::new_at(UapiLevel::V7_2);
    let ioas = ioas_alloc(&ctx);
    let size = 4 * ps();
    let fd = get_dmabuf(&ctx, size as u32).unwrap();
    let iova = map_file(&ctx, ioas, fd, 0, size, RW, None).unwrap();
    let access = create_access(&ctx, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(
        access_pages(&ctx, access, iova, ps(), b.as_mut_ptr() as u64, 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        access_rw(&ctx, access, iova, 8, b.as_mut_ptr() as u64, 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        access_rw(
            &ctx,
            access,
            iova,
            8,
            b.as_mut_ptr() as u64,
            MOCK_ACCESS_RW_WRITE
        ),
        Err(libc::EINVAL)
    );
    let iopt_cut = ctx.ioas(ioas).unwrap().iopt().cut_iova(&[iova + ps() - 1]);
    assert_eq!(iopt_cut.unwrap_err().errno().0, libc::EOPNOTSUPP);
    // not file-backed: it cannot change process
    let mut cp = IommuIoasChangeProcess {
        size: size_of::<IommuIoasChangeProcess>() as u32,
        ..Default::default()
    };
    assert_eq!(
        ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp),
        Err(libc::EINVAL)
    );
    ctx.check_invariants().unwrap();
    assert_eq!(unmap(&ctx, ioas, iova, size), Ok(size));
    close(fd);
}

#[test]
fn revoke_errnos() {
    let ctx = Context::new_at(UapiLevel::V7_2);
    assert_eq!(revoke(&ctx, -1, true), Err(libc::EBADF));
    assert_eq!(revoke(&ctx, 9999, true), Err(libc::EBADF));
    let mfd = memfd(c"dmabuf-test", 0);
    assert_eq!(revoke(&ctx, mfd.as_raw_fd(), true), Err(libc::EINVAL));
    drop(mfd);
    let ioas = ioas_alloc(&ctx);
    let access = create_access(&ctx, ioas, 0).unwrap();
    assert_eq!(revoke(&ctx, access as i32, true), Err(libc::EINVAL));
    let fd = get_dmabuf(&ctx, ps() as u32).unwrap();
    revoke(&ctx, fd, true).unwrap();
    revoke(&ctx, fd, true).unwrap();
    close(fd);
}
