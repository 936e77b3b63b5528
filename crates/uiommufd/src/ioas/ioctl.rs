//! IOAS ioctl handlers (the kernel's ioas.c): each validates its struct in
//! the kernel's order (flags/reserved → ranges/overflow → meaning → object
//! lookup), calls the engine, and writes the reply.

use zerocopy::IntoBytes;

use super::Ioas;
use crate::io_pagetable::Prot;
use crate::uapi::level::UapiLevel;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::{bail, err, Error, Result};

const MAP_FLAGS: u32 =
    IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;
/// The kernel refuses lengths and IOVAs of `ULONG_MAX` and above; on a
/// 64-bit kernel that is exactly `u64::MAX`.
fn ulong_max_or_more(v: u64) -> bool {
    v == u64::MAX
}

/// The checks `IOAS_MAP`, `IOAS_MAP_FILE` and `IOAS_COPY` start with, in
/// the kernel's order: flags outside [`MAP_FLAGS`] or a non-zero
/// `reserved` (`EOPNOTSUPP`), any of `ulongs` (the IOVAs and the length)
/// `ULONG_MAX` or more (`EOVERFLOW`), neither READABLE nor WRITEABLE
/// (`EINVAL`). `what` names the command in the messages.
fn check_map_request(what: &str, flags: u32, reserved: u32, ulongs: &[u64]) -> Result<()> {
    if flags & !MAP_FLAGS != 0 {
        bail!(
            EOPNOTSUPP,
            "{what}: unknown flags {:#x}",
            flags & !MAP_FLAGS
        );
    }
    if reserved != 0 {
        bail!(EOPNOTSUPP, "{what}: __reserved is {reserved:#x}, not zero");
    }
    if ulongs.iter().any(|&v| ulong_max_or_more(v)) {
        bail!(
            EOVERFLOW,
            "{what}: an IOVA or the length is ULONG_MAX or more"
        );
    }
    if flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) == 0 {
        bail!(EINVAL, "{what}: neither READABLE nor WRITEABLE is set");
    }
    Ok(())
}

fn prot_of(flags: u32) -> Prot {
    Prot {
        read: flags & IOMMU_IOAS_MAP_READABLE != 0,
        write: flags & IOMMU_IOAS_MAP_WRITEABLE != 0,
    }
}

/// `IOMMU_IOAS_ALLOC`
pub(crate) fn alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuIoasAlloc = u.cmd();
    if cmd.flags != 0 {
        bail!(
            EOPNOTSUPP,
            "IOAS_ALLOC: flags {:#x} must be zero",
            cmd.flags
        );
    }
    // two-phase: the ID is only published once the reply reached the user
    let r = u.ctx.reserve()?;
    let ioas = Ioas::new_shared(u.ctx.memory().clone(), u.ctx.account_mode());
    cmd.out_ioas_id = r.id();
    u.respond(&cmd)?;
    r.finalize(ioas);
    Ok(0)
}

/// `IOMMU_IOAS_IOVA_RANGES`
pub(crate) fn iova_ranges(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuIoasIovaRanges = u.cmd();
    if cmd.__reserved != 0 {
        bail!(EOPNOTSUPP, "IOAS_IOVA_RANGES: __reserved must be zero");
    }
    let ioas = u.ctx.ioas(cmd.ioas_id)?;
    let (ranges, align) = ioas.iopt().iova_ranges();
    let max = cmd.num_iovas as usize;
    for (i, &(start, last)) in ranges.iter().take(max).enumerate() {
        let elm = IommuIovaRange { start, last };
        let at = cmd
            .allowed_iovas
            .wrapping_add((i * size_of::<IommuIovaRange>()) as u64);
        u.write_user(at, elm.as_bytes())
            .map_err(|_| Error::fault("cannot write allowed_iovas"))?;
    }
    cmd.num_iovas = ranges.len() as u32;
    cmd.out_iova_alignment = align;
    u.respond(&cmd)?;
    if ranges.len() > max {
        bail!(
            EMSGSIZE,
            "IOAS_IOVA_RANGES: {} ranges do not fit in num_iovas {max}",
            ranges.len()
        );
    }
    Ok(0)
}

/// Ranges of `IOMMU_IOAS_ALLOW_IOVAS` read per copy from the user (4 KiB).
const ALLOW_CHUNK: usize = 256;

/// `IOMMU_IOAS_ALLOW_IOVAS`: the ranges are taken in the user's order with
/// the kernel's errno for the first bad one (`EFAULT` unreadable, `EINVAL`
/// `start >= last`, `EINVAL` overlapping an earlier one), each checked
/// against the earlier ones in O(log n) (the kernel's interval tree), and
/// read from the user 256 at a time (one by one again where a chunk cannot
/// be read whole, so that the errno is that of the first bad range).
pub(crate) fn allow_iovas(u: &Ucmd) -> Result<i32> {
    let cmd: IommuIoasAllowIovas = u.cmd();
    if cmd.__reserved != 0 {
        bail!(EOPNOTSUPP, "IOAS_ALLOW_IOVAS: __reserved must be zero");
    }
    let ioas = u.ctx.ioas(cmd.ioas_id)?;
    const ELM: u64 = size_of::<IommuIovaRange>() as u64;
    let num = u64::from(cmd.num_iovas);
    // start -> last of the ranges so far (disjoint)
    let mut seen: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    let mut chunk = [IommuIovaRange::default(); ALLOW_CHUNK];
    let mut i = 0u64;
    while i < num {
        let n = (num - i).min(ALLOW_CHUNK as u64) as usize;
        let at = |k: u64| cmd.allowed_iovas.wrapping_add(k * ELM);
        let whole = u.read_user(at(i), chunk[..n].as_mut_bytes()).is_ok()
            && at(i).checked_add(n as u64 * ELM).is_some();
        for (k, r) in chunk[..n].iter_mut().enumerate() {
            let idx = i + k as u64;
            if !whole {
                u.read_user(at(idx), r.as_mut_bytes()).map_err(|_| {
                    err!(
                        EFAULT,
                        "IOAS_ALLOW_IOVAS: cannot read range {idx} at {:#x}",
                        at(idx)
                    )
                })?;
            }
            if r.start >= r.last {
                bail!(
                    EINVAL,
                    "IOAS_ALLOW_IOVAS: range {idx} has start {:#x} >= last {:#x}",
                    r.start,
                    r.last
                );
            }
            if let Some((&s, &l)) = seen.range(..=r.last).next_back() {
                if l >= r.start {
                    bail!(
                        EINVAL,
                        "IOAS_ALLOW_IOVAS: range {idx} [{:#x}, {:#x}] overlaps the earlier [{s:#x}, {l:#x}]",
                        r.start,
                        r.last
                    );
                }
            }
            seen.insert(r.start, r.last);
        }
        i += n as u64;
    }
    let ranges: Vec<(u64, u64)> = seen.into_iter().collect();
    ioas.iopt().set_allowed(&ranges)?;
    Ok(0)
}

/// `IOMMU_IOAS_MAP`
pub(crate) fn map(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuIoasMap = u.cmd();
    check_map_request(
        "IOAS_MAP",
        cmd.flags,
        cmd.__reserved,
        &[cmd.iova, cmd.length],
    )?;
    let ioas = u.ctx.ioas(cmd.ioas_id)?;
    let fixed = (cmd.flags & IOMMU_IOAS_MAP_FIXED_IOVA != 0).then_some(cmd.iova);
    cmd.iova = ioas.map_user_of(u.mem, cmd.user_va, cmd.length, fixed, prot_of(cmd.flags))?;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_IOAS_MAP_FILE` (Linux 6.13): as `IOAS_MAP`, of a file range.
///
/// Order of the checks, by level: flags (`EOPNOTSUPP`), `iova`/`length` of
/// `ULONG_MAX` (`EOVERFLOW`), neither READABLE nor WRITEABLE (`EINVAL`),
/// the IOAS (`ENOENT`); then up to 6.18 the fd (`EBADF`) before a zero
/// `length` (`EINVAL`) and `start + length - 1` overflowing (`EOVERFLOW`),
/// and from 6.19 (which looks for a dma-buf first) those two before the fd.
pub(crate) fn map_file(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuIoasMapFile = u.cmd();
    check_map_request("IOAS_MAP_FILE", cmd.flags, 0, &[cmd.iova, cmd.length])?;
    let ioas = u.ctx.ioas(cmd.ioas_id)?;
    let range_checks = || -> Result<()> {
        if cmd.length == 0 {
            bail!(EINVAL, "IOAS_MAP_FILE: length is zero");
        }
        if cmd.start.checked_add(cmd.length - 1).is_none() {
            bail!(
                EOVERFLOW,
                "IOAS_MAP_FILE: start {:#x} + length {:#x} overflows",
                cmd.start,
                cmd.length
            );
        }
        Ok(())
    };
    if u.level().at_least(UapiLevel::V6_19) {
        range_checks()?;
    }
    if cmd.fd < 0 {
        bail!(EBADF, "IOAS_MAP_FILE: fd {} is not an open file", cmd.fd);
    }
    // The fd is one of the caller's (the preload runs in the program):
    // `Pages::new_file` says EBADF when it is not open.
    let fixed = (cmd.flags & IOMMU_IOAS_MAP_FIXED_IOVA != 0).then_some(cmd.iova);
    if u.level().at_least(UapiLevel::V6_19) {
        // 6.19: a dma-buf is looked for first
        match crate::dmabuf::classify_fd(cmd.fd) {
            crate::dmabuf::FdKind::Engine(buf) => {
                cmd.iova =
                    ioas.map_dmabuf(&buf, cmd.start, cmd.length, fixed, prot_of(cmd.flags))?;
                u.respond(&cmd)?;
                return Ok(0);
            }
            crate::dmabuf::FdKind::Host(size) => {
                if size <= cmd.start + (cmd.length - 1) {
                    bail!(
                        EINVAL,
                        "IOAS_MAP_FILE: bytes [{:#x}, +{:#x}) are not inside the {size:#x}-byte dma-buf fd {}",
                        cmd.start,
                        cmd.length,
                        cmd.fd
                    );
                }
                bail!(
                    EOPNOTSUPP,
                    "IOAS_MAP_FILE: fd {} is a host dma-buf, whose exporter is neither the selftest's nor VFIO's",
                    cmd.fd
                );
            }
            crate::dmabuf::FdKind::Other | crate::dmabuf::FdKind::NotOpen => {}
        }
    }
    if !u.level().at_least(UapiLevel::V6_19) {
        // 6.13..6.18: the fd is looked up first.
        // SAFETY: F_GETFL on a number; no memory is involved.
        let fl = unsafe { libc::syscall(libc::SYS_fcntl, cmd.fd, libc::F_GETFL) };
        if fl < 0 || (fl as i32) & libc::O_PATH != 0 {
            bail!(EBADF, "IOAS_MAP_FILE: fd {} is not an open file", cmd.fd);
        }
        range_checks()?;
    }
    cmd.iova = ioas.map_file(cmd.fd, cmd.start, cmd.length, fixed, prot_of(cmd.flags))?;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_IOAS_CHANGE_PROCESS` (Linux 6.14): move the pins of every
/// file-backed area of the context to the calling process's client.
///
/// `EOPNOTSUPP` for a non-zero `__reserved`; `EBUSY` while an area is being
/// mapped; `EINVAL` when any area of any IOAS maps user memory (only file
/// pages can change process). The caller is the client the command runs
/// for ([`crate::client::caller`]: another process sharing the context, or
/// ours). Each pages object's pins are charged to the caller, checked
/// against the caller's `RLIMIT_MEMLOCK`, before they leave their old
/// client; `ENOMEM` past it, with every object moved back (as the kernel's
/// `charge_current`, which charges the caller first and changes nothing
/// when that fails). In one process the pins stay where they are.
pub(crate) fn change_process(u: &Ucmd) -> Result<i32> {
    let cmd: IommuIoasChangeProcess = u.cmd();
    if cmd.__reserved != 0 {
        bail!(EOPNOTSUPP, "IOAS_CHANGE_PROCESS: __reserved must be zero");
    }
    let ioases: Vec<_> = u
        .ctx
        .objects()
        .into_iter()
        .filter_map(|(_, obj)| obj.downcast::<Ioas>())
        .collect();
    for ioas in &ioases {
        ioas.iopt().check_all_file_backed()?;
    }
    let to = crate::client::caller();
    let mut moved = Vec::new();
    for ioas in &ioases {
        for pages in ioas.iopt().area_pages() {
            match pages.change_process(to.clone(), false) {
                Ok(from) => moved.push((pages, from)),
                Err(e) => {
                    // back where they were: charged there before, so no
                    // limit to check
                    for (p, from) in moved.into_iter().rev() {
                        let _ = p.change_process(from, true);
                    }
                    return Err(e);
                }
            }
        }
    }
    Ok(0)
}

/// `IOMMU_IOAS_COPY`
pub(crate) fn copy(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuIoasCopy = u.cmd();
    let ulongs = [cmd.length, cmd.src_iova, cmd.dst_iova];
    check_map_request("IOAS_COPY", cmd.flags, 0, &ulongs)?;
    let src = u.ctx.ioas(cmd.src_ioas_id)?;
    let sources = src.iopt().get_pages(cmd.src_iova, cmd.length)?;
    drop(src);
    let dst = u.ctx.ioas(cmd.dst_ioas_id)?;
    let fixed = (cmd.flags & IOMMU_IOAS_MAP_FIXED_IOVA != 0).then_some(cmd.dst_iova);
    cmd.dst_iova = dst.map_sources(sources, cmd.length, fixed, prot_of(cmd.flags))?;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_IOAS_UNMAP`
pub(crate) fn unmap(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuIoasUnmap = u.cmd();
    let ioas = u.ctx.ioas(cmd.ioas_id)?;
    let unmapped = if cmd.iova == 0 && cmd.length == u64::MAX {
        ioas.unmap_all()?
    } else {
        if ulong_max_or_more(cmd.iova) || ulong_max_or_more(cmd.length) {
            bail!(EOVERFLOW, "IOAS_UNMAP: iova or length is ULONG_MAX or more");
        }
        let n = ioas.unmap(cmd.iova, cmd.length)?;
        if n == 0 {
            bail!(
                ENOENT,
                "IOAS_UNMAP: nothing is mapped in [{:#x}, +{:#x})",
                cmd.iova,
                cmd.length
            );
        }
        n
    };
    cmd.length = unmapped;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_OPTION` with `IOMMU_OPTION_HUGE_PAGES` (per IOAS).
pub(crate) fn option_huge_pages(u: &Ucmd, cmd: &mut IommuOption) -> Result<()> {
    let ioas = u.ctx.ioas(cmd.object_id)?;
    match cmd.op {
        IOMMU_OPTION_OP_GET => {
            cmd.val64 = ioas.iopt().large_pages() as u64;
            Ok(())
        }
        IOMMU_OPTION_OP_SET => match cmd.val64 {
            0 => ioas.iopt().set_large_pages(false),
            1 => ioas.iopt().set_large_pages(true),
            v => bail!(
                EINVAL,
                "IOMMU_OPTION_HUGE_PAGES: value {v} is neither 0 nor 1"
            ),
        },
        op => bail!(EOPNOTSUPP, "IOMMU_OPTION: unknown op {op}"),
    }
}
