//! The selftest's `IOMMU_TEST_CMD` (the kernel's selftest.c).
//!
//! Ops that need no device work today: `ADD_RESERVED`,
//! `SET_TEMP_MEMORY_LIMIT`, `MD_CHECK_REFS`. The mock driver's devices,
//! domains and accesses arrive with the devices issue; until then their ops
//! look up the object they name and answer as the kernel does when it does
//! not exist (`ENOENT`).

use std::sync::atomic::{AtomicU32, Ordering};

use zerocopy::FromBytes;

use crate::pages::Pages;
use crate::uapi::dispatch::Ucmd;
use crate::uapi::*;
use crate::user::page_size;
use crate::{bail, Result};

/// `iommufd_test_memory_limit`: the batch memory limit the selftest sets
/// (the kernel sizes its temporary pin batches from it; we record it).
pub static TEMP_MEMORY_LIMIT: AtomicU32 = AtomicU32::new(65536);

fn payload<T: FromBytes>(cmd: &IommuTestCmd) -> T {
    match T::read_from_prefix(&cmd.payload) {
        Ok((v, _)) => v,
        Err(_) => unreachable!("test payload member larger than the union"),
    }
}

/// `IOMMU_TEST_CMD`
pub(crate) fn test_cmd(u: &Ucmd) -> Result<i32> {
    let cmd: IommuTestCmd = u.cmd();
    match cmd.op {
        IOMMU_TEST_OP_ADD_RESERVED => add_reserved(u, &cmd),
        IOMMU_TEST_OP_MD_CHECK_REFS => check_refs(u, &cmd),
        IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT => {
            let m: TestMemoryLimit = payload(&cmd);
            // the kernel's batch needs room for at least one element
            if (m.limit as usize) < size_of::<u64>() + size_of::<u32>() {
                bail!(
                    EINVAL,
                    "SET_TEMP_MEMORY_LIMIT: limit {} is below one batch element",
                    m.limit
                );
            }
            TEMP_MEMORY_LIMIT.store(m.limit, Ordering::Relaxed);
            Ok(0)
        }
        IOMMU_TEST_OP_MOCK_DOMAIN
        | IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS
        | IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE
        | IOMMU_TEST_OP_MD_CHECK_MAP
        | IOMMU_TEST_OP_MD_CHECK_IOTLB
        | IOMMU_TEST_OP_CREATE_ACCESS
        | IOMMU_TEST_OP_ACCESS_REPLACE_IOAS
        | IOMMU_TEST_OP_ACCESS_PAGES
        | IOMMU_TEST_OP_ACCESS_RW
        | IOMMU_TEST_OP_DESTROY_ACCESS_PAGES
        | IOMMU_TEST_OP_DIRTY
        | IOMMU_TEST_OP_TRIGGER_IOPF => not_yet(u, &cmd),
        op => bail!(EOPNOTSUPP, "IOMMU_TEST_CMD: unknown op {op}"),
    }
}

/// Ops of the mock driver that are not implemented yet: if the object they
/// name does not exist, that is the kernel's answer; otherwise say so.
fn not_yet(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    match u.ctx.get(cmd.id) {
        Err(e) => Err(e),
        Ok(o) => bail!(
            EOPNOTSUPP,
            "IOMMU_TEST_CMD op {} on {} {}: mock devices, domains and accesses are not implemented yet",
            cmd.op,
            o.kind(),
            cmd.id
        ),
    }
}

/// `IOMMU_TEST_OP_ADD_RESERVED`: reserve an IOVA range in an IOAS.
fn add_reserved(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let r: TestAddReserved = payload(cmd);
    if r.length == 0 {
        bail!(EINVAL, "ADD_RESERVED: length is zero");
    }
    let Some(last) = r.start.checked_add(r.length - 1) else {
        bail!(
            EOVERFLOW,
            "ADD_RESERVED: start {:#x} + length {:#x} overflows",
            r.start,
            r.length
        );
    };
    let ioas = u.ctx.ioas(cmd.id)?;
    ioas.iopt().add_reserved(r.start, last, 0)?;
    Ok(0)
}

/// `IOMMU_TEST_OP_MD_CHECK_REFS`: every page of the range must be pinned by
/// exactly `refs` pages objects (the kernel compares page pin refcounts).
fn check_refs(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let c: TestCheckRefs = payload(cmd);
    let ps = page_size();
    if !c.length.is_multiple_of(ps)
        || !c.uptr.is_multiple_of(ps)
        || c.uptr.checked_add(c.length).is_none()
    {
        bail!(
            EINVAL,
            "MD_CHECK_REFS: uptr {:#x} and length {:#x} must be page aligned",
            c.uptr,
            c.length
        );
    }
    // get_user_pages on the range: it must be mapped
    u.ctx.memory().populate(c.uptr, c.length, false)?;
    let mut addr = c.uptr;
    while addr < c.uptr + c.length {
        let n = Pages::pins_of_user_page(addr);
        if n != c.refs {
            bail!(
                EIO,
                "MD_CHECK_REFS: page {addr:#x} is pinned {n} time(s), expected {}",
                c.refs
            );
        }
        addr += ps;
    }
    Ok(0)
}
