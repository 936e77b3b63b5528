//! The uAPI level (`UIOMMUFD_UAPI`, `Context::new_at`) and the commands newer
//! than 6.12: `IOMMU_IOAS_MAP_FILE` (6.13) and `IOMMU_IOAS_CHANGE_PROCESS`
//! (6.14), through the uAPI bytes.

use std::os::fd::IntoRawFd;
use std::sync::Arc;

use uiommufd::mock::device::{MOCK_FLAGS_DEVICE_PASID, MOCK_PASID_WIDTH};
use uiommufd::uapi::*;
use uiommufd::user::page_size as ps;
use uiommufd::{Context, UapiLevel};
use uiommufd_testkit::*;
use zerocopy::IntoBytes;

const RW: u32 = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

/// A memfd of `npages` pages named `name`, mapped shared, filled with `fill(i)`.
struct Memfd {
    fd: i32,
    map: *mut u8,
    len: usize,
}

impl Memfd {
    fn new(name: &std::ffi::CStr, npages: u64, fill: impl Fn(usize) -> u8) -> Memfd {
        let len = (npages * ps()) as usize;
        let fd = memfd(name, len as u64).into_raw_fd();
        // SAFETY: a new shared mapping of our memfd.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let map = map as *mut u8;
        for i in 0..len {
            // SAFETY: within our mapping.
            unsafe { *map.add(i) = fill(i) };
        }
        Memfd { fd, map, len }
    }

    /// The program gives up its own view and its fd.
    fn drop_view_and_fd(&mut self) {
        if !self.map.is_null() {
            // SAFETY: our own mapping, unmapped once.
            assert_eq!(unsafe { libc::munmap(self.map as *mut _, self.len) }, 0);
            self.map = std::ptr::null_mut();
        }
        if self.fd >= 0 {
            // SAFETY: our own fd, closed once.
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
    }
}

impl Drop for Memfd {
    fn drop(&mut self) {
        self.drop_view_and_fd();
    }
}

fn map_file_cmd(
    ioas: u32,
    fd: i32,
    start: u64,
    length: u64,
    flags: u32,
    iova: u64,
) -> IommuIoasMapFile {
    IommuIoasMapFile {
        size: size_of::<IommuIoasMapFile>() as u32,
        flags,
        ioas_id: ioas,
        fd,
        start,
        length,
        iova,
    }
}

/// Whether `/proc/self/maps` shows a mapping of the memfd called `name`.
fn mapped_anywhere(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|l| l.contains(&format!("/memfd:{name} ")) || l.ends_with(&format!("/memfd:{name}")))
}

fn read_via_access(ctx: &Arc<Context>, access: u32, iova: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    access_rw(ctx, access, iova, len as u64, out.as_mut_ptr() as u64, 0).unwrap();
    out
}

/// The "Done when": MAP_FILE of a memfd survives the mapping
/// process's munmap (and close): the domain and an access still reach the
/// data, writes land in the file, and the engine's own mapping goes with
/// the last user.
#[test]
fn map_file_survives_munmap_and_close() {
    let name = "uapi-levels-survive";
    let ctx = Context::new_at(UapiLevel::V6_13);
    let ioas = ioas_alloc(&ctx);
    let (_stdev, _hwpt, _idev) = mock_domain(&ctx, ioas).unwrap();
    let mut m = Memfd::new(c"uapi-levels-survive", 4, |i| (i % 251) as u8);
    let want: Vec<u8> = (0..m.len).map(|i| (i % 251) as u8).collect();
    let len = m.len as u64;
    // from the middle of the first page (a start that is not page aligned;
    // the mock domain's IOVA granule is half a page)
    let h = ps() / 2;
    let iova = map_file(&ctx, ioas, m.fd, h, len - h, RW, None).unwrap();
    ctx.check_invariants().unwrap();
    m.drop_view_and_fd();
    assert!(
        mapped_anywhere(name),
        "the engine keeps its own mapping of the file"
    );

    let access = create_access(&ctx, ioas, 0).unwrap();
    assert_eq!(
        read_via_access(&ctx, access, iova, m.len - h as usize),
        want[h as usize..]
    );
    // a device write lands in the file pages, and reads back
    let mut patch = *b"written by the device";
    access_rw(
        &ctx,
        access,
        iova + h,
        patch.len() as u64,
        patch.as_mut_ptr() as u64,
        MOCK_ACCESS_RW_WRITE,
    )
    .unwrap();
    assert_eq!(read_via_access(&ctx, access, iova + h, patch.len()), patch);
    ctx.check_invariants().unwrap();

    // IOAS_COPY shares the file pages; unmapping the source keeps them
    let ioas2 = ioas_alloc(&ctx);
    mock_domain(&ctx, ioas2).unwrap();
    let mut cp = IommuIoasCopy {
        size: size_of::<IommuIoasCopy>() as u32,
        flags: RW,
        dst_ioas_id: ioas2,
        src_ioas_id: ioas,
        length: len - h,
        dst_iova: 0,
        src_iova: iova,
    };
    ctx.ioc(IOMMU_IOAS_COPY, &mut cp).unwrap();
    unmap(&ctx, ioas, iova, len - h).unwrap();
    ctx.check_invariants().unwrap();
    let access2 = create_access(&ctx, ioas2, 0).unwrap();
    let got = read_via_access(&ctx, access2, cp.dst_iova, m.len - h as usize);
    assert_eq!(&got[h as usize..][..patch.len()], &patch);
    assert_eq!(got[0], want[h as usize]);
    assert_eq!(got[ps() as usize..], want[(ps() + h) as usize..]);
    assert!(mapped_anywhere(name));

    // the last area gone: the engine's mapping goes too
    unmap(&ctx, ioas2, cp.dst_iova, len - h).unwrap();
    ctx.check_invariants().unwrap();
    assert!(
        !mapped_anywhere(name),
        "the engine's mapping outlived its last user"
    );
}

/// The memfd is written by the program after the map: the device sees the
/// same pages (a shared mapping, not a copy), and the reverse.
#[test]
fn map_file_shares_the_pages() {
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    mock_domain(&ctx, ioas).unwrap();
    let m = Memfd::new(c"uapi-levels-share", 2, |_| 0);
    let iova = map_file(&ctx, ioas, m.fd, 0, m.len as u64, RW, None).unwrap();
    // SAFETY: within the program's mapping.
    unsafe { *m.map.add(5) = 0x5a };
    let access = create_access(&ctx, ioas, 0).unwrap();
    assert_eq!(read_via_access(&ctx, access, iova + 5, 1), [0x5a]);
    let mut b = [0xa5u8];
    access_rw(
        &ctx,
        access,
        iova + 6,
        1,
        b.as_mut_ptr() as u64,
        MOCK_ACCESS_RW_WRITE,
    )
    .unwrap();
    // SAFETY: within the program's mapping.
    assert_eq!(unsafe { *m.map.add(6) }, 0xa5);
    // and through the access fast path's slow sibling too
    assert_eq!(
        {
            let mut o = [0u8; 2];
            access_rw(
                &ctx,
                access,
                iova + 5,
                2,
                o.as_mut_ptr() as u64,
                MOCK_ACCESS_RW_SLOW_PATH,
            )
            .unwrap();
            o
        },
        [0x5a, 0xa5]
    );
    let areas = ctx.ioas(ioas).unwrap().areas();
    assert!(areas[0].file_backed);
    ctx.check_invariants().unwrap();
}

/// `MD_CHECK_MAP` against the program's own view of the memfd: the domain
/// maps the engine's view, the same file pages (the selftest's
/// `check_mock_iova(mfd_buffer, ...)` of its `*_file` variants).
#[test]
fn md_check_map_sees_the_same_file_pages() {
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let (_, hwpt, _) = mock_domain(&ctx, ioas).unwrap();
    let m = Memfd::new(c"uapi-levels-checkmap", 4, |_| 0);
    let other = Memfd::new(c"uapi-levels-checkmap-other", 4, |_| 0);
    let iova = map_file(&ctx, ioas, m.fd, ps(), 2 * ps(), RW, None).unwrap();
    let check = |uptr: u64, len: u64| {
        let c = TestCheckMap {
            iova,
            length: len,
            uptr,
        };
        test_cmd(&ctx, IOMMU_TEST_OP_MD_CHECK_MAP, hwpt, c.as_bytes()).map(|_| ())
    };
    let view = m.map as u64;
    assert_eq!(check(view + ps(), 2 * ps()), Ok(()));
    // the wrong offset in the file, another file: not the same pages
    assert_eq!(check(view, 2 * ps()), Err(libc::EINVAL));
    assert_eq!(check(other.map as u64 + ps(), ps()), Err(libc::EINVAL));
    // a private copy of the bytes is not the file's pages either
    let copy = vec![0u8; 4 * ps() as usize];
    let c0 = (copy.as_ptr() as u64).next_multiple_of(ps());
    assert_eq!(check(c0, ps()), Err(libc::EINVAL));
}

/// What each level answers for the new commands, with the struct right.
#[test]
fn levels_gate_the_new_commands() {
    let m = Memfd::new(c"uapi-levels-gate", 1, |_| 1);
    for level in UapiLevel::ALL {
        let ctx = Context::new_at(level);
        assert_eq!(ctx.uapi_level(), level);
        let ioas = ioas_alloc(&ctx);
        let r = map_file(&ctx, ioas, m.fd, 0, ps(), RW, None);
        if level < UapiLevel::V6_13 {
            assert_eq!(r, Err(libc::ENOTTY), "{level}");
        } else {
            assert!(r.is_ok(), "{level}: {r:?}");
        }
        let mut cp = IommuIoasChangeProcess {
            size: 8,
            __reserved: 0,
        };
        let r = ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp);
        if level < UapiLevel::V6_14 {
            assert_eq!(r, Err(libc::ENOTTY), "{level}");
        } else {
            assert_eq!(r, Ok(0), "{level}: only file areas");
        }
        // the vIOMMU family: ENOTTY before its release, whatever the size;
        // from it on, an all-zero struct (longer, zero tail) reaches the
        // handler, whose first check answers
        let mut junk = [0u64; 8];
        junk[0] = 64;
        for (cmd, since, first) in [
            (IOMMU_VIOMMU_ALLOC, UapiLevel::V6_13, libc::EOPNOTSUPP),
            (IOMMU_VDEVICE_ALLOC, UapiLevel::V6_13, libc::ENOENT),
            (IOMMU_VEVENTQ_ALLOC, UapiLevel::V6_15, libc::EOPNOTSUPP),
            (IOMMU_HW_QUEUE_ALLOC, UapiLevel::V6_17, libc::EOPNOTSUPP),
        ] {
            let want = if level < since { libc::ENOTTY } else { first };
            assert_eq!(ctx.ioc(cmd, &mut junk), Err(want), "{level} {cmd:#x}");
        }
        // a 6.12 context answers exactly as before for a 6.12 command
        assert_eq!(unmap(&ctx, ioas, 0, u64::MAX).map(|_| ()), Ok(()));
    }
    // the gate comes before the size rule, as an empty table slot's ENOTTY
    let ctx = Context::new_at(UapiLevel::V6_12);
    let mut short = IommuDestroy { size: 4, id: 0 };
    assert_eq!(errno(&ctx, IOMMU_IOAS_MAP_FILE, &mut short), libc::ENOTTY);
    let ctx = Context::new_at(UapiLevel::V6_13);
    assert_eq!(errno(&ctx, IOMMU_IOAS_MAP_FILE, &mut short), libc::EINVAL);
}

/// The kernel's errno for each bad `IOAS_MAP_FILE`, in its order, at 6.13
/// and 7.2 (which differ in when the fd is looked up).
#[test]
fn map_file_errno_table() {
    let m = Memfd::new(c"uapi-levels-errno", 2, |_| 0);
    let len = m.len as u64;
    for level in [
        UapiLevel::V6_13,
        UapiLevel::V6_18,
        UapiLevel::V6_19,
        UapiLevel::V7_2,
    ] {
        let ctx = Context::new_at(level);
        let ioas = ioas_alloc(&ctx);
        let e = |c: &mut IommuIoasMapFile| errno(&ctx, IOMMU_IOAS_MAP_FILE, c);
        let ok = map_file_cmd(ioas, m.fd, 0, len, RW, 0);
        // size rule: short EINVAL, long with a non-zero tail E2BIG, long zero tail fine
        let mut c = IommuIoasMapFile { size: 39, ..ok };
        assert_eq!(e(&mut c), libc::EINVAL, "{level}");
        let mut long = [0u8; 48];
        long[..40].copy_from_slice(IommuIoasMapFile { size: 48, ..ok }.as_bytes());
        long[47] = 1;
        assert_eq!(
            errno(&ctx, IOMMU_IOAS_MAP_FILE, &mut long),
            libc::E2BIG,
            "{level}"
        );
        long[47] = 0;
        assert_eq!(errno(&ctx, IOMMU_IOAS_MAP_FILE, &mut long), 0, "{level}");
        // flags, then ULONG_MAX, then no access, then the IOAS
        assert_eq!(
            e(&mut IommuIoasMapFile {
                flags: RW | 8,
                ..ok
            }),
            libc::EOPNOTSUPP
        );
        assert_eq!(
            e(&mut IommuIoasMapFile {
                flags: RW | 8,
                length: 0,
                ..ok
            }),
            libc::EOPNOTSUPP
        );
        assert_eq!(
            e(&mut IommuIoasMapFile {
                length: u64::MAX,
                ..ok
            }),
            libc::EOVERFLOW
        );
        assert_eq!(
            e(&mut IommuIoasMapFile {
                iova: u64::MAX,
                ..ok
            }),
            libc::EOVERFLOW
        );
        assert_eq!(
            e(&mut IommuIoasMapFile {
                flags: IOMMU_IOAS_MAP_FIXED_IOVA,
                ..ok
            }),
            libc::EINVAL
        );
        assert_eq!(
            e(&mut IommuIoasMapFile {
                ioas_id: 999,
                fd: -1,
                ..ok
            }),
            libc::ENOENT
        );
        // the fd
        assert_eq!(e(&mut IommuIoasMapFile { fd: -1, ..ok }), libc::EBADF);
        assert_eq!(e(&mut IommuIoasMapFile { fd: 1 << 30, ..ok }), libc::EBADF);
        // SAFETY: an O_PATH fd of our memfd, closed below.
        let opath = unsafe {
            libc::open(
                format!("/proc/self/fd/{}\0", m.fd).as_ptr().cast(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        assert!(opath >= 0);
        assert_eq!(e(&mut IommuIoasMapFile { fd: opath, ..ok }), libc::EBADF);
        // SAFETY: ours.
        unsafe { libc::close(opath) };
        // zero length and start overflow: after the fd up to 6.18, before from 6.19
        let fd_first = level < UapiLevel::V6_19;
        assert_eq!(e(&mut IommuIoasMapFile { length: 0, ..ok }), libc::EINVAL);
        assert_eq!(
            e(&mut IommuIoasMapFile {
                length: 0,
                fd: -1,
                ..ok
            }),
            if fd_first { libc::EBADF } else { libc::EINVAL },
            "{level}"
        );
        assert_eq!(
            e(&mut IommuIoasMapFile {
                start: u64::MAX - 10,
                length: 12,
                ..ok
            }),
            libc::EOVERFLOW
        );
        assert_eq!(
            e(&mut IommuIoasMapFile {
                start: u64::MAX - 10,
                length: 12,
                fd: -1,
                ..ok
            }),
            if fd_first {
                libc::EBADF
            } else {
                libc::EOVERFLOW
            },
            "{level}"
        );
        // IOVA rules are IOAS_MAP's
        let mut fixed = IommuIoasMapFile {
            flags: RW | IOMMU_IOAS_MAP_FIXED_IOVA,
            iova: 0x10_0000,
            ..ok
        };
        assert_eq!(e(&mut fixed), 0);
        assert_eq!(fixed.iova, 0x10_0000);
        assert_eq!(e(&mut fixed), libc::EEXIST);
        ctx.check_invariants().unwrap();
    }
}

/// What can and cannot be pinned: past the end of the file, a file that is
/// not shmem, a read-only fd mapped writable (allowed up to 7.2).
#[test]
fn map_file_pin_rules() {
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    mock_domain(&ctx, ioas).unwrap();
    let m = Memfd::new(c"uapi-levels-pins", 2, |_| 7);
    let len = m.len as u64;
    // past the end of the file: the pin finds no page (the selftest's basic_file)
    assert_eq!(
        err(map_file(&ctx, ioas, m.fd, 0, len + ps() / 2, RW, None)),
        libc::EINVAL
    );
    assert_eq!(
        err(map_file(&ctx, ioas, m.fd, len, ps(), RW, None)),
        libc::EINVAL
    );
    ctx.check_invariants().unwrap();

    // a truncated memfd maps where nothing pins it; attaching a domain fails
    let t = Memfd::new(c"uapi-levels-trunc", 1, |_| 0);
    // SAFETY: sizing our own memfd.
    assert_eq!(unsafe { libc::ftruncate(t.fd, 0) }, 0);
    assert_eq!(
        err(map_file(&ctx, ioas, t.fd, 0, ps(), RW, None)),
        libc::EINVAL
    );
    let bare = ioas_alloc(&ctx);
    map_file(&ctx, bare, t.fd, 0, ps(), RW, Some(MOCK_APERTURE_START)).unwrap();
    assert_eq!(err(mock_domain(&ctx, bare)), libc::EINVAL);
    ctx.check_invariants().unwrap();

    // not shmem: accepted, but nothing can pin it
    let f = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    use std::os::fd::AsRawFd;
    let statfs_tmp = {
        // SAFETY: fstatfs into a zeroed struct we own.
        let mut s: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fstatfs(f.as_raw_fd(), &mut s) }, 0);
        s.f_type as i64 == 0x0102_1994
    };
    if !statfs_tmp {
        let bare2 = ioas_alloc(&ctx);
        map_file(
            &ctx,
            bare2,
            f.as_raw_fd(),
            0,
            ps(),
            IOMMU_IOAS_MAP_READABLE,
            Some(MOCK_APERTURE_START),
        )
        .unwrap();
        assert_eq!(err(mock_domain(&ctx, bare2)), libc::EINVAL);
        assert_eq!(
            err(map_file(
                &ctx,
                ioas,
                f.as_raw_fd(),
                0,
                ps(),
                IOMMU_IOAS_MAP_READABLE,
                None
            )),
            libc::EINVAL
        );
        ctx.check_invariants().unwrap();
    }

    // an O_RDONLY fd mapped WRITEABLE: up to 7.2 the kernel pins it for write
    // SAFETY: a read-only reopen of our memfd.
    let ro = unsafe {
        libc::open(
            format!("/proc/self/fd/{}\0", m.fd).as_ptr().cast(),
            libc::O_RDONLY,
        )
    };
    assert!(ro >= 0);
    let iova = map_file(&ctx, ioas, ro, 0, len, RW, None).unwrap();
    // SAFETY: ours.
    unsafe { libc::close(ro) };
    let access = create_access(&ctx, ioas, 0).unwrap();
    let mut b = [0x42u8];
    access_rw(
        &ctx,
        access,
        iova,
        1,
        b.as_mut_ptr() as u64,
        MOCK_ACCESS_RW_WRITE,
    )
    .unwrap();
    // SAFETY: the program's own mapping of the memfd.
    assert_eq!(unsafe { *m.map }, 0x42);
    ctx.check_invariants().unwrap();

    // a write-sealed memfd: readable maps are fine; a writable one is EPERM
    // here (a known difference: kernels up to 7.2 pin it for write anyway)
    // SAFETY: creating, sizing and sealing our own memfd.
    let sealed =
        unsafe { libc::memfd_create(c"uapi-levels-sealed".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(sealed >= 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::ftruncate(sealed, len as i64) }, 0);
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(sealed, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
    assert_eq!(r, 0);
    assert_eq!(
        err(map_file(&ctx, ioas, sealed, 0, len, RW, None)),
        libc::EPERM
    );
    let iova = map_file(&ctx, ioas, sealed, 0, len, IOMMU_IOAS_MAP_READABLE, None).unwrap();
    // SAFETY: ours.
    unsafe { libc::close(sealed) };
    assert_eq!(read_via_access(&ctx, access, iova, 1), [0]);
    ctx.check_invariants().unwrap();
}

/// `IOMMU_IOAS_CHANGE_PROCESS` in one process: only file areas may be
/// present (`EINVAL` otherwise, across every IOAS); the caller already
/// holds the pins, so nothing moves.
#[test]
fn change_process_single_process() {
    let ctx = Context::new_at(UapiLevel::V7_2);
    let mut cp = IommuIoasChangeProcess {
        size: 8,
        __reserved: 0,
    };
    assert_eq!(
        ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp),
        Ok(0),
        "no IOAS at all"
    );
    assert_eq!(
        errno(
            &ctx,
            IOMMU_IOAS_CHANGE_PROCESS,
            &mut IommuIoasChangeProcess {
                size: 8,
                __reserved: 1
            }
        ),
        libc::EOPNOTSUPP
    );
    let ioas = ioas_alloc(&ctx);
    mock_domain(&ctx, ioas).unwrap();
    let m = Memfd::new(c"uapi-levels-chproc", 1, |_| 3);
    map_file(&ctx, ioas, m.fd, 0, ps(), RW, None).unwrap();
    assert_eq!(ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp), Ok(0));
    let other = ioas_alloc(&ctx);
    let buf = Box::new([0u8; 8192]);
    map(
        &ctx,
        other,
        (buf.as_ptr() as u64).next_multiple_of(ps()),
        ps(),
        None,
    )
    .unwrap();
    assert_eq!(
        errno(&ctx, IOMMU_IOAS_CHANGE_PROCESS, &mut cp),
        libc::EINVAL
    );
    unmap(&ctx, other, 0, u64::MAX).unwrap();
    assert_eq!(ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp), Ok(0));
    ctx.check_invariants().unwrap();
}

/// Another process (`sleep 60`, killed on drop) and the engine's client
/// for it: the process an `IOMMU_IOAS_CHANGE_PROCESS` is run for.
struct OtherProcess {
    child: std::process::Child,
    client: Arc<uiommufd::client::Client>,
}

impl OtherProcess {
    fn spawn() -> OtherProcess {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let pidfd = uiommufd::process::pidfd_open(pid).expect("pidfd");
        let mem = uiommufd::process::ProcessMemory::new(pid, pidfd);
        let client = uiommufd::client::Client::of_process(Arc::new(mem));
        OtherProcess { child, client }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `IOMMU_IOAS_CHANGE_PROCESS` run for another client (a child process, as
/// the preload runs a command another process sends): the pins of the file
/// areas move to that client's `pinned_vm`, and back when we call it.
#[test]
fn change_process_moves_pins_between_clients() {
    use uiommufd::client::{as_caller, counts, Client};
    let other = OtherProcess::spawn();
    let (pid, theirs) = (other.pid(), other.client.clone());
    let ours = Client::ours();
    let ctx = Context::new_at(UapiLevel::V7_2);
    let ioas = ioas_alloc(&ctx);
    mock_domain(&ctx, ioas).unwrap();
    let m = Memfd::new(c"uapi-levels-chproc2", 4, |i| i as u8);
    let before = ours.pinned_vm();
    map_file(&ctx, ioas, m.fd, 0, 4 * ps(), RW, None).unwrap();
    assert_eq!(ours.pinned_vm(), before + 4, "pinned by the domain, ours");
    let mut cp = IommuIoasChangeProcess {
        size: 8,
        __reserved: 0,
    };
    assert_eq!(
        as_caller(Some(theirs.clone()), || ctx
            .ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp)),
        Ok(0)
    );
    assert_eq!(counts(pid).0, 4, "the caller's now");
    assert_eq!(ours.pinned_vm(), before);
    // unmapped by a command of ours: the object's client is uncharged,
    // not the caller
    unmap(&ctx, ioas, 0, u64::MAX).unwrap();
    assert_eq!(counts(pid).0, 0, "unpinned there");
    assert_eq!(ours.pinned_vm(), before);
    map_file(&ctx, ioas, m.fd, 0, 4 * ps(), RW, None).unwrap();
    assert_eq!(ours.pinned_vm(), before + 4, "a new object is the caller's");
    as_caller(Some(theirs.clone()), || {
        ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp).unwrap()
    });
    assert_eq!(counts(pid).0, 4);
    assert_eq!(ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp), Ok(0));
    assert_eq!(counts(pid).0, 0, "back to ours");
    assert_eq!(ours.pinned_vm(), before + 4);
    uiommufd::pages::check_accounting().unwrap();
    unmap(&ctx, ioas, 0, u64::MAX).unwrap();
    assert_eq!(ours.pinned_vm(), before);
    ctx.check_invariants().unwrap();
}

/// The 7.2 selftest mock's rules that came after 6.12, at each level:
/// `IOMMU_TEST_OP_DEV_CHECK_CACHE` (6.13), mock paging HWPTs made with
/// `IOMMU_HWPT_DATA_SELFTEST` page table types (6.19), and
/// `IOMMU_HWPT_INVALIDATE` of a paging HWPT (`EINVAL` from 6.13, `ENOENT`
/// before).
#[test]
fn mock_ops_after_6_12() {
    for level in UapiLevel::ALL {
        let ctx = Context::new_at(level);
        let ioas = ioas_alloc(&ctx);
        let (_, hwpt, idev) = mock_domain(&ctx, ioas).unwrap();
        let check = |id: u32, cache: u32, obj: u32| check_dev_cache(&ctx, obj, id, cache);
        if level < UapiLevel::V6_13 {
            assert_eq!(
                check(0, IOMMU_TEST_DEV_CACHE_DEFAULT, idev),
                Err(libc::EOPNOTSUPP),
                "{level}"
            );
        } else {
            for id in 0..=MOCK_DEV_CACHE_ID_MAX {
                assert_eq!(
                    check(id, IOMMU_TEST_DEV_CACHE_DEFAULT, idev),
                    Ok(()),
                    "{level}"
                );
            }
            let past = MOCK_DEV_CACHE_ID_MAX + 1;
            assert_eq!(
                check(past, IOMMU_TEST_DEV_CACHE_DEFAULT, idev),
                Err(libc::EINVAL)
            );
            assert_eq!(
                check(0, 0, idev),
                Err(libc::EINVAL),
                "{level}: another value"
            );
            assert_eq!(
                check(0, IOMMU_TEST_DEV_CACHE_DEFAULT, ioas),
                Err(libc::ENOENT)
            );
        }

        // a paging HWPT with the mock's page table type
        let cfg = |ty: u32| IommuHwptSelftest {
            iotlb: 0,
            pagetable_type: ty,
        };
        let alloc = |flags: u32, c: &IommuHwptSelftest| {
            hwpt_alloc_with(
                &ctx,
                IommuHwptAlloc {
                    flags,
                    dev_id: idev,
                    pt_id: ioas,
                    data_type: IOMMU_HWPT_DATA_SELFTEST,
                    data_len: size_of::<IommuHwptSelftest>() as u32,
                    data_uptr: c as *const _ as u64,
                    ..Default::default()
                },
            )
        };
        let dirty = IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
        if level < UapiLevel::V6_19 {
            assert_eq!(
                alloc(dirty, &cfg(MOCK_IOMMUPT_DEFAULT)),
                Err(libc::EOPNOTSUPP)
            );
        } else {
            for ty in [MOCK_IOMMUPT_DEFAULT, MOCK_IOMMUPT_HUGE] {
                let h = alloc(dirty, &cfg(ty)).unwrap();
                assert_eq!(set_dirty_tracking(&ctx, h, true), Ok(0), "{level} {ty}");
                assert_eq!(destroy(&ctx, h), Ok(0));
            }
            assert_eq!(alloc(0, &cfg(2)), Err(libc::EOPNOTSUPP), "unknown type");
            assert_eq!(
                alloc(1 << 30, &cfg(0)),
                Err(libc::EOPNOTSUPP),
                "unknown flag"
            );
        }

        // HWPT_INVALIDATE of the (paging) mock domain
        let mut inv = IommuHwptInvalidate {
            size: 32,
            hwpt_id: hwpt,
            data_type: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
            ..Default::default()
        };
        let want = if level < UapiLevel::V6_13 {
            libc::ENOENT
        } else {
            libc::EINVAL
        };
        assert_eq!(
            errno(&ctx, IOMMU_HWPT_INVALIDATE, &mut inv),
            want,
            "{level}"
        );
    }
}

/// `MD_CHECK_REFS` of the program's view of a memfd counts the pins an
/// `IOAS_MAP_FILE` of it made (the kernel counts the page's pins, whatever
/// mapping reached it), and only of the pages mapped.
#[test]
fn check_refs_sees_file_pins() {
    let ctx = Context::new();
    let ioas = ioas_alloc(&ctx);
    let _ = mock_domain(&ctx, ioas).unwrap();
    let m = Memfd::new(c"uapi-levels-refs", 4, |_| 0);
    let refs = |uptr: u64, len: u64, n: u32| {
        let c = TestCheckRefs {
            length: len,
            uptr,
            refs: n,
            _pad: 0,
        };
        test_cmd(&ctx, IOMMU_TEST_OP_MD_CHECK_REFS, 0, c.as_bytes()).map(|_| ())
    };
    let view = m.map as u64;
    assert_eq!(refs(view, 4 * ps(), 0), Ok(()));
    let iova = map_file(&ctx, ioas, m.fd, ps(), 2 * ps(), RW, None).unwrap();
    assert_eq!(refs(view + ps(), 2 * ps(), 1), Ok(()));
    assert_eq!(refs(view, ps(), 0), Ok(()), "page 0 is not mapped");
    assert_eq!(
        refs(view + 3 * ps(), ps(), 0),
        Ok(()),
        "page 3 is not mapped"
    );
    assert_eq!(refs(view, 2 * ps(), 1), Err(libc::EIO));
    assert_eq!(unmap(&ctx, ioas, iova, 2 * ps()).map(|_| ()), Ok(()));
    assert_eq!(refs(view, 4 * ps(), 0), Ok(()));
}

/// PASID attach (6.15) through the mock's test ops: only to HWPTs made with
/// `IOMMU_HWPT_ALLOC_PASID`, only PASIDs the device has, once per PASID;
/// a device with PASIDs attached keeps its RID on PASID-capable HWPTs; the
/// attached HWPT cannot be destroyed; below 6.15 neither the flag nor the
/// ops exist.
#[test]
fn pasid_attach_rules() {
    let pasid_op = |ctx: &Arc<Context>, op: u32, stdev: u32, pasid: u32, pt: u32| {
        let p = TestPasid { pasid, pt_id: pt };
        test_cmd(ctx, op, stdev, p.as_bytes()).map(|_| ())
    };
    let old = Context::new_at(UapiLevel::V6_14);
    let ioas = ioas_alloc(&old);
    let (stdev, _, idev) = mock_domain_flags(&old, ioas, MOCK_FLAGS_DEVICE_PASID).unwrap();
    assert_eq!(
        hwpt_alloc(&old, idev, ioas, IOMMU_HWPT_ALLOC_PASID),
        Err(libc::EOPNOTSUPP)
    );
    let plain = hwpt_alloc(&old, idev, ioas, 0).unwrap();
    assert_eq!(
        pasid_op(&old, IOMMU_TEST_OP_PASID_ATTACH, stdev, 7, plain),
        Err(libc::EOPNOTSUPP)
    );

    let ctx = Context::new_at(UapiLevel::V7_2);
    let ioas = ioas_alloc(&ctx);
    let (stdev, rid_hwpt, idev) = mock_domain_flags(&ctx, ioas, MOCK_FLAGS_DEVICE_PASID).unwrap();
    let compat = hwpt_alloc(&ctx, idev, ioas, IOMMU_HWPT_ALLOC_PASID).unwrap();
    let plain = hwpt_alloc(&ctx, idev, ioas, 0).unwrap();
    let attach = |pasid, pt| pasid_op(&ctx, IOMMU_TEST_OP_PASID_ATTACH, stdev, pasid, pt);
    let check = |pasid, pt| pasid_op(&ctx, IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev, pasid, pt);
    // the RID is on an automatic domain, not PASID-capable
    assert_eq!(attach(5, compat), Err(libc::EINVAL));
    mock_domain_replace(&ctx, stdev, compat).unwrap();
    assert_eq!(
        attach(5, plain),
        Err(libc::EINVAL),
        "not made with ALLOC_PASID"
    );
    assert_eq!(
        attach(1 << MOCK_PASID_WIDTH, compat),
        Err(libc::EINVAL),
        "past the width"
    );
    assert_eq!(check(5, 0), Ok(()));
    assert_eq!(attach(5, compat), Ok(()));
    assert_eq!(
        attach(5, compat),
        Err(libc::EBUSY),
        "attached twice (the kernel's xa_insert of the device)"
    );
    assert_eq!(attach(6, ioas), Err(libc::EINVAL), "an IOAS");
    assert_eq!(check(5, compat), Ok(()));
    assert_eq!(check(5, 0), Err(libc::EINVAL));
    assert_eq!(check(5, plain), Err(libc::EINVAL));
    // the RID may not leave for a HWPT that is not PASID-capable now
    assert_eq!(mock_domain_replace(&ctx, stdev, plain), Err(libc::EINVAL));
    assert_eq!(destroy(&ctx, compat), Err(libc::EBUSY));
    let compat2 = hwpt_alloc(&ctx, idev, ioas, IOMMU_HWPT_ALLOC_PASID).unwrap();
    assert_eq!(
        pasid_op(&ctx, IOMMU_TEST_OP_PASID_REPLACE, stdev, 5, compat2),
        Ok(())
    );
    assert_eq!(check(5, compat2), Ok(()));
    assert_eq!(
        pasid_op(&ctx, IOMMU_TEST_OP_PASID_REPLACE, stdev, 6, compat2),
        Err(libc::EINVAL)
    );
    assert_eq!(
        pasid_op(&ctx, IOMMU_TEST_OP_PASID_DETACH, stdev, 5, 0),
        Ok(())
    );
    assert_eq!(check(5, 0), Ok(()));
    assert_eq!(mock_domain_replace(&ctx, stdev, plain), Ok(()));
    // a device without PASIDs has none to attach
    let (stdev2, _, _) = mock_domain(&ctx, compat).unwrap();
    assert_eq!(
        pasid_op(&ctx, IOMMU_TEST_OP_PASID_ATTACH, stdev2, 5, compat2),
        Err(libc::EINVAL)
    );
    // destroying the selftest device drops its PASID attachments
    assert_eq!(
        attach(9, compat2),
        Err(libc::EINVAL),
        "the RID is on a plain HWPT"
    );
    mock_domain_replace(&ctx, stdev, compat).unwrap();
    assert_eq!(attach(9, compat2), Ok(()));
    assert_eq!(destroy(&ctx, stdev), Ok(0));
    assert_eq!(destroy(&ctx, compat2), Ok(0));
    let _ = rid_hwpt;
}

/// This thread's effective capabilities without `CAP_IPC_LOCK` (the
/// kernel's, and so the engine's, are per thread) for as long as the value
/// lives; the permitted set keeps it, so the drop restores it.
struct NoIpcLock([u32; 6]);

impl NoIpcLock {
    fn new() -> NoIpcLock {
        let mut hdr = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this thread
        let mut data = [0u32; 6];
        // SAFETY: capget fills the 2 x 3 words of a version 3 header.
        let r = unsafe { libc::syscall(libc::SYS_capget, hdr.as_mut_ptr(), data.as_mut_ptr()) };
        assert_eq!(r, 0, "capget");
        let saved = data;
        data[0] &= !(1 << uiommufd::accounting::CAP_IPC_LOCK);
        // SAFETY: as above; lowering this thread's own effective set.
        let r = unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), data.as_ptr()) };
        assert_eq!(r, 0, "capset");
        NoIpcLock(saved)
    }
}

impl Drop for NoIpcLock {
    fn drop(&mut self) {
        let mut hdr = [0x2008_0522u32, 0];
        // SAFETY: restoring the sets read in `new` (still permitted).
        unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), self.0.as_ptr()) };
    }
}

/// The soft `RLIMIT_MEMLOCK` of process `pid` (one of ours) set to `pages`
/// pages, its hard limit kept (lowering needs no privilege; raising the
/// soft limit up to the hard one neither).
fn set_memlock(pid: i32, pages: u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reading into a valid rlimit.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_MEMLOCK, std::ptr::null(), &mut rl) };
    assert_eq!(r, 0, "prlimit({pid}): {}", std::io::Error::last_os_error());
    assert!(
        rl.rlim_max >= pages * ps(),
        "the hard limit is below {pages} pages"
    );
    rl.rlim_cur = pages * ps();
    // SAFETY: prlimit with a valid new limit and no old-limit pointer.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_MEMLOCK, &rl, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit({pid}): {}", std::io::Error::last_os_error());
}

/// `IOMMU_IOAS_CHANGE_PROCESS` for another process whose `RLIMIT_MEMLOCK`
/// the second of two pages objects passes: `ENOMEM`, and the first one,
/// already moved, goes back, so every pin stays charged where it was; with
/// a limit that fits, everything moves. Pins are charged to the mm
/// (`IOMMU_OPTION_RLIMIT_MODE` 1) by a thread without `CAP_IPC_LOCK`, so
/// that limits are checked at all (the kernel skips them for a creator
/// with it).
#[test]
fn change_process_past_the_callers_limit_moves_nothing() {
    use uiommufd::accounting::{effective_caps, policy_grants, CAP_SYS_RESOURCE};
    // The mm mode needs CAP_SYS_RESOURCE, which sandboxes (this one, CI's)
    // take away: granted as a program under test would be, through the
    // policy, read once per process (nextest runs each test in its own,
    // before any other engine call).
    // SAFETY: set before this test starts any thread that reads the
    // environment.
    unsafe { std::env::set_var("UIOMMUFD_CAPS", "sys_resource") };
    if effective_caps(0) & (1 << CAP_SYS_RESOURCE) == 0 && !policy_grants(CAP_SYS_RESOURCE) {
        eprintln!("skipped: the capability policy was read before this test (not under nextest)");
        return;
    }
    let ours = uiommufd::client::Client::ours();
    let (small, large) = (16u64, 64u64);
    // the process the command runs for: a child whose limit is ours to set
    let other = OtherProcess::spawn();
    let (pid, them) = (other.pid(), other.client.clone());
    set_memlock(pid, large);
    let no_ipc_lock = NoIpcLock::new();
    let ctx = Context::new_at(UapiLevel::V7_2);
    let mut mode = IommuOption {
        size: 24,
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_SET,
        val64: 1,
        ..Default::default()
    };
    ctx.ioc(IOMMU_OPTION, &mut mode).expect("the mm mode");
    let ioas = ioas_alloc(&ctx);
    mock_domain(&ctx, ioas).unwrap();
    let (before_pinned, before_locked) = (ours.pinned_vm(), ours.mm_locked_vm());
    let a = Memfd::new(c"chproc-small", small, |_| 1);
    let b = Memfd::new(c"chproc-large", large, |_| 2);
    map_file(&ctx, ioas, a.fd, 0, small * ps(), RW, None).unwrap();
    map_file(&ctx, ioas, b.fd, 0, large * ps(), RW, None).unwrap();
    let charged = || {
        (
            ours.pinned_vm() - before_pinned,
            ours.mm_locked_vm() - before_locked,
        )
    };
    assert_eq!(
        charged(),
        (small + large, small + large),
        "ours, in the mm mode"
    );
    let mut cp = IommuIoasChangeProcess {
        size: 8,
        __reserved: 0,
    };
    // the first object fits their limit, the second does not after it
    let r = uiommufd::client::as_caller(Some(them.clone()), || {
        ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp)
    });
    assert_eq!(r, Err(libc::ENOMEM));
    assert_eq!(
        (them.pinned_vm(), them.mm_locked_vm()),
        (0, 0),
        "nothing stays moved"
    );
    assert_eq!(charged(), (small + large, small + large), "all still ours");
    ctx.check_invariants().unwrap();
    // room for both: everything moves
    set_memlock(pid, small + large);
    let r = uiommufd::client::as_caller(Some(them.clone()), || {
        ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp)
    });
    assert_eq!(r, Ok(0));
    assert_eq!(
        (them.pinned_vm(), them.mm_locked_vm()),
        (small + large, small + large)
    );
    assert_eq!(charged(), (0, 0));
    ctx.check_invariants().unwrap();
    // and back to us (our limit is not lowered: the default 8 MiB fits)
    assert_eq!(ctx.ioc(IOMMU_IOAS_CHANGE_PROCESS, &mut cp), Ok(0));
    assert_eq!((them.pinned_vm(), them.mm_locked_vm()), (0, 0));
    drop(ctx);
    assert_eq!(charged(), (0, 0), "every pin given back");
    drop(no_ipc_lock);
}
