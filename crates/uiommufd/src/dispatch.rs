//! ioctl dispatch: one table, one size rule (the kernel's main.c).
//!
//! Each command declares its struct and the end of its last required field.
//! The dispatcher alone handles:
//! 1. command numbers outside the iommufd table (by `_IOC_NR` alone) go to
//!    the VFIO container path (`vfio_compat`);
//! 2. `size` is read from the first 4 bytes of the argument (`EFAULT`);
//! 3. a number inside the table but not a command of ours — or a command
//!    newer than the context's uAPI level ([`crate::uapi::level`]), exactly as
//!    that older kernel's table has no entry there — is `ENOTTY`;
//! 4. `size` below the minimum is `EINVAL`;
//! 5. the struct is copied in, zero-filled past `size`, and any byte past what
//!    we understand must be zero (`E2BIG`) — `copy_struct_from_user`. (Each
//!    copy from user memory is a syscall here, so the struct is first read
//!    whole in one copy; only when that faults do we read `size` alone and
//!    then exactly `size` bytes, which gives the kernel's answers.)
//! 6. the handler runs; replies copy back `min(size, sizeof(struct))` bytes.
//!
//! Each row carries the level its command appeared in. Flags and rules that
//! changed later are decided by the handlers from `Ucmd::level`. No command
//! struct grew between 6.12 and 7.2, so the size understood (step 5) is the
//! same at every level.
//!
//! Handlers never touch sizes. A panic inside a handler is caught here and
//! becomes `EIO`, so no caller (C through the preload, or Rust) is aborted.

use std::mem::{offset_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use zerocopy::IntoBytes;

use crate::context::Context;
use crate::uapi::level::UapiLevel;
use crate::uapi::*;
use crate::ucmd::{Ucmd, BUF_LEN};
use crate::user::UserMemory;
use crate::{bail, Error, Result};

/// A handler: validates the struct in `Ucmd` and calls the engine.
type Handler = fn(&Ucmd) -> Result<i32>;

/// One row of the ioctl table.
struct Op {
    name: &'static str,
    /// The full ioctl number (`_IO(';', nr)`).
    num: u32,
    /// Bytes we understand (`sizeof` the 6.12 struct).
    size: usize,
    /// End of the last field a caller must supply.
    min_size: usize,
    /// The first kernel release with this command.
    since: UapiLevel,
    exec: Handler,
}

macro_rules! op {
    ($num:expr, $handler:path, $t:ty, $last:ident : $lt:ty) => {
        op!($num, $handler, $t, $last: $lt, since UapiLevel::V6_12)
    };
    ($num:expr, $handler:path, $t:ty, $last:ident : $lt:ty, since $since:expr) => {
        Op {
            name: stringify!($num),
            num: $num,
            size: size_of::<$t>(),
            min_size: offset_of!($t, $last) + size_of::<$lt>(),
            since: $since,
            exec: $handler,
        }
    };
}

/// The iommufd command table, indexed by `nr - IOMMUFD_CMD_BASE`.
fn lookup(nr: u32) -> Option<&'static Op> {
    use crate::{fault, hwpt, ioas::ioctl as ioas, veventq, vfio_compat, viommu};
    static OPS: &[Op] = &[
        op!(IOMMU_DESTROY, destroy, IommuDestroy, id: u32),
        op!(IOMMU_IOAS_ALLOC, ioas::alloc, IommuIoasAlloc, out_ioas_id: u32),
        op!(IOMMU_IOAS_ALLOW_IOVAS, ioas::allow_iovas, IommuIoasAllowIovas, allowed_iovas: u64),
        op!(IOMMU_IOAS_COPY, ioas::copy, IommuIoasCopy, src_iova: u64),
        op!(IOMMU_IOAS_IOVA_RANGES, ioas::iova_ranges, IommuIoasIovaRanges, out_iova_alignment: u64),
        op!(IOMMU_IOAS_MAP, ioas::map, IommuIoasMap, iova: u64),
        op!(IOMMU_IOAS_UNMAP, ioas::unmap, IommuIoasUnmap, length: u64),
        op!(IOMMU_OPTION, option, IommuOption, val64: u64),
        op!(IOMMU_VFIO_IOAS, vfio_compat::ioctl::vfio_ioas, IommuVfioIoas, __reserved: u16),
        op!(IOMMU_HWPT_ALLOC, hwpt::ioctl::alloc, IommuHwptAlloc, __reserved: u32),
        op!(IOMMU_GET_HW_INFO, hwpt::ioctl::get_hw_info, IommuHwInfo, __reserved: [u8; 3]),
        op!(IOMMU_HWPT_SET_DIRTY_TRACKING, hwpt::ioctl::set_dirty_tracking, IommuHwptSetDirtyTracking, __reserved: u32),
        op!(IOMMU_HWPT_GET_DIRTY_BITMAP, hwpt::ioctl::get_dirty_bitmap, IommuHwptGetDirtyBitmap, data: u64),
        op!(IOMMU_HWPT_INVALIDATE, hwpt::ioctl::invalidate, IommuHwptInvalidate, __reserved: u32),
        op!(IOMMU_FAULT_QUEUE_ALLOC, fault::ioctl::fault_queue_alloc, IommuFaultAlloc, out_fault_fd: u32),
        op!(IOMMU_IOAS_MAP_FILE, ioas::map_file, IommuIoasMapFile, iova: u64, since UapiLevel::V6_13),
        op!(IOMMU_IOAS_CHANGE_PROCESS, ioas::change_process, IommuIoasChangeProcess, __reserved: u32,
            since UapiLevel::V6_14),
        op!(IOMMU_VIOMMU_ALLOC, viommu::ioctl::viommu_alloc, IommuViommuAlloc, out_viommu_id: u32,
            since UapiLevel::V6_13),
        op!(IOMMU_VDEVICE_ALLOC, viommu::ioctl::vdevice_alloc, IommuVdeviceAlloc, virt_id: u64,
            since UapiLevel::V6_13),
        op!(IOMMU_VEVENTQ_ALLOC, veventq::ioctl::veventq_alloc, IommuVeventqAlloc, out_veventq_fd: u32,
            since UapiLevel::V6_15),
        op!(IOMMU_HW_QUEUE_ALLOC, viommu::ioctl::hw_queue_alloc, IommuHwQueueAlloc, length: u64,
            since UapiLevel::V6_17),
    ];
    // the selftest's command (the kernel's CONFIG_IOMMUFD_TEST)
    #[cfg(feature = "selftest")]
    static TEST: Option<Op> =
        Some(op!(IOMMU_TEST_CMD, crate::mock::test_cmd, IommuTestCmd, last: u32));
    #[cfg(not(feature = "selftest"))]
    static TEST: Option<Op> = None;
    OPS.iter().chain(&TEST).find(|op| op.num & 0xff == nr)
}

/// The last command number the table spans (`IOMMU_TEST_CMD`'s, whether or
/// not the selftest is built: a number past the last command is `ENOTTY`
/// either way).
const TABLE_LAST_NR: u32 = IOMMUFD_CMD_TEST;

/// Execute one ioctl on `ctx`: `cmd` is the request number, `arg` the user
/// pointer. Returns the ioctl's non-negative result or the error (whose
/// `errno()` is what the caller must see).
pub fn ioctl(ctx: &Arc<Context>, cmd: u64, arg: u64) -> Result<i32> {
    ioctl_as(ctx, ctx.memory(), cmd, arg)
}

/// [`ioctl`] made by a process whose memory is `mem` (the kernel's
/// `current->mm` of the call): `arg` and the command's user pointers are
/// addresses there, and the pages an `IOAS_MAP` maps are its memory. With
/// `ctx.memory()` this is [`ioctl`]. The VFIO container commands (numbers
/// outside the iommufd table) are refused from another process's memory
/// (`EOPNOTSUPP`).
pub fn ioctl_as(ctx: &Arc<Context>, mem: &Arc<dyn UserMemory>, cmd: u64, arg: u64) -> Result<i32> {
    // The kernel's ioctl takes `unsigned int cmd`: upper bits are dropped.
    let cmd = cmd as u32;
    let watch = crate::inject::Watch::start();
    let res = catch_unwind(AssertUnwindSafe(|| dispatch(ctx, mem, cmd, arg)));
    let res = match res {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(
                cmd = format_args!("{cmd:#x}"),
                "engine panic caught at the ioctl edge: {msg}"
            );
            Err(Error::new(
                libc::EIO,
                format!("internal error (panic: {msg})"),
            ))
        }
    };
    let res = match watch.fired() {
        Some(point) => after_injected_failure(ctx, cmd, point, res),
        None => res,
    };
    if let Err(e) = &res {
        tracing::debug!(cmd = format_args!("{cmd:#x}"), errno = %e.errno(), "ioctl failed: {}", e.reason());
    }
    res
}

/// An injected failure fired at `point` during ioctl `cmd`: the call must
/// have left everything as it found it. When the checks are on (see
/// [`crate::inject::checks_enabled`]), a broken invariant or a pin
/// accounting imbalance turns the result into `EIO` (and is reported and
/// counted by [`crate::inject`]).
fn after_injected_failure(
    ctx: &Arc<Context>,
    cmd: u32,
    point: &'static str,
    res: Result<i32>,
) -> Result<i32> {
    tracing::debug!(
        cmd = format_args!("{cmd:#x}"),
        point,
        ok = res.is_ok(),
        "injected failure fired during the ioctl"
    );
    if !crate::inject::checks_enabled() {
        return res;
    }
    let during = format!(
        "ioctl {cmd:#x} (result {:?})",
        res.as_ref().map_err(|e| e.errno())
    );
    match check_after_failure(ctx, point, &during) {
        Ok(()) => res,
        Err(what) => Err(Error::new(
            libc::EIO,
            format!("invariant violation after the injected failure at {point}: {what}"),
        )),
    }
}

/// The checks after a call during which an injected failure fired at
/// `point`: the context's invariants and, in a single-threaded process,
/// the process-wide pin accounting. `Err` describes the first violation
/// (already reported by [`crate::inject::report_violation`]).
fn check_after_failure(
    ctx: &Context,
    point: &str,
    during: &str,
) -> std::result::Result<(), String> {
    let mut problem = ctx.check_invariants().err();
    if problem.is_none() && crate::inject::single_threaded() {
        problem = crate::pages::check_accounting().err();
    }
    match problem {
        Some(p) => {
            crate::inject::report_violation(point, during, &p);
            Err(p)
        }
        None => Ok(()),
    }
}

fn dispatch(ctx: &Arc<Context>, mem: &Arc<dyn UserMemory>, cmd: u32, arg: u64) -> Result<i32> {
    // As the kernel: only `_IOC_NR` decides; a number outside the table is
    // the VFIO container API (which matches whole numbers, else `ENOTTY`).
    let nr = cmd & 0xff;
    if !(IOMMUFD_CMD_BASE..=TABLE_LAST_NR).contains(&nr) {
        if !Arc::ptr_eq(mem, ctx.memory()) {
            bail!(
                EOPNOTSUPP,
                "VFIO container ioctl {cmd:#x} from a process that does not hold the engine"
            );
        }
        return crate::vfio_compat::ioctl::container_ioctl(ctx, cmd, arg);
    }
    let level = ctx.uapi_level();
    let op = lookup(nr).filter(|op| op.num == cmd && level.at_least(op.since));
    let mut buf = [0u8; BUF_LEN];
    // Fast path: one copy of the whole struct we understand (each copy from
    // user memory is a syscall here). It fails where the user buffer is
    // shorter than that and ends at unmapped memory; the exact path below
    // then gives the kernel's answers in the kernel's order.
    let speculative = op.is_some_and(|op| mem.read(arg, &mut buf[..op.size]).is_ok());
    if !speculative {
        mem.read(arg, &mut buf[..4])
            .map_err(|_| Error::fault("cannot read the command's size field"))?;
    }
    let user_size = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let Some(op) = op else {
        if let Some(newer) = lookup(nr).filter(|op| op.num == cmd) {
            bail!(
                ENOTTY,
                "{} appeared in Linux {}; this context speaks {level}",
                newer.name,
                newer.since
            );
        }
        bail!(ENOTTY, "ioctl {cmd:#x} is not an iommufd command");
    };
    if (user_size as usize) < op.min_size {
        bail!(
            EINVAL,
            "{}: size {user_size} is below the minimum {}",
            op.name,
            op.min_size
        );
    }
    debug_assert!(op.size <= BUF_LEN);
    if speculative {
        // bytes past the user's size are not the command's: zero them, and
        // check what lies past the struct we understand
        let n = (user_size as usize).min(op.size);
        buf[n..op.size].fill(0);
        check_zero_tail(&**mem, arg, op.size as u64, user_size as u64, op.name)?;
    } else {
        copy_struct_from_user(&**mem, &mut buf[..op.size], arg, user_size as u64, op.name)?;
    }
    let ucmd = Ucmd {
        ctx,
        mem,
        arg,
        user_size,
        buf,
    };
    tracing::trace!(cmd = op.name, size = user_size, "ioctl");
    (op.exec)(&ucmd)
}

/// Copy a struct of `dst.len()` known bytes from a user buffer of `usize`
/// bytes: shorter is zero-filled, longer must be zero past what we know.
fn copy_struct_from_user(
    mem: &dyn UserMemory,
    dst: &mut [u8],
    arg: u64,
    usize_: u64,
    name: &str,
) -> Result<()> {
    let known = dst.len() as u64;
    let n = known.min(usize_) as usize;
    mem.read(arg, &mut dst[..n])
        .map_err(|_| Error::fault("cannot read the command struct"))?;
    check_zero_tail(mem, arg, known, usize_, name)
}

/// The bytes from `known` to `usize_` must be zero (`E2BIG`): see
/// [`crate::user::check_zero_tail`].
fn check_zero_tail(
    mem: &dyn UserMemory,
    arg: u64,
    known: u64,
    usize_: u64,
    name: &str,
) -> Result<()> {
    crate::user::check_zero_tail(mem, arg, known, usize_, name)
}

// ---------------------------------------------------------------------------
// Handlers of main.c's own commands.

/// `IOMMU_DESTROY`
fn destroy(u: &Ucmd) -> Result<i32> {
    let cmd: IommuDestroy = u.cmd();
    u.ctx.destroy(cmd.id)?;
    Ok(0)
}

/// `IOMMU_OPTION`
fn option(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuOption = u.cmd();
    if cmd.__reserved != 0 {
        bail!(EOPNOTSUPP, "IOMMU_OPTION: __reserved must be zero");
    }
    match cmd.option_id {
        IOMMU_OPTION_RLIMIT_MODE => rlimit_mode(u, &mut cmd)?,
        IOMMU_OPTION_HUGE_PAGES => crate::ioas::ioctl::option_huge_pages(u, &mut cmd)?,
        id => bail!(EOPNOTSUPP, "IOMMU_OPTION: unknown option_id {id}"),
    }
    let off = offset_of!(IommuOption, val64) as u64;
    u.write_user(u.arg + off, cmd.val64.as_bytes())
        .map_err(|_| Error::fault("cannot write val64"))?;
    Ok(0)
}

fn rlimit_mode(u: &Ucmd, cmd: &mut IommuOption) -> Result<()> {
    if cmd.object_id != 0 {
        bail!(
            EOPNOTSUPP,
            "IOMMU_OPTION_RLIMIT_MODE is global: object_id must be 0"
        );
    }
    match cmd.op {
        IOMMU_OPTION_OP_GET => {
            cmd.val64 = u.ctx.rlimit_mode_mm() as u64;
            Ok(())
        }
        IOMMU_OPTION_OP_SET => {
            if !crate::client::capable(crate::accounting::CAP_SYS_RESOURCE) {
                bail!(EPERM, "changing the RLIMIT mode needs CAP_SYS_RESOURCE");
            }
            u.ctx.set_rlimit_mode(cmd.val64)
        }
        op => bail!(EOPNOTSUPP, "IOMMU_OPTION: unknown op {op}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_fits_buffer_and_numbers_match() {
        for nr in IOMMUFD_CMD_BASE..=TABLE_LAST_NR {
            if let Some(op) = lookup(nr) {
                assert!(op.size <= BUF_LEN, "{}", op.name);
                assert!(op.min_size <= op.size, "{}", op.name);
                assert_eq!(op.num & 0xff, nr);
            }
        }
        assert_eq!(lookup(IOMMUFD_CMD_DESTROY).unwrap().min_size, 8);
        assert_eq!(lookup(IOMMUFD_CMD_GET_HW_INFO).unwrap().min_size, 32);
        assert_eq!(lookup(IOMMUFD_CMD_HWPT_ALLOC).unwrap().min_size, 24);
        #[cfg(feature = "selftest")]
        assert_eq!(lookup(IOMMUFD_CMD_TEST).unwrap().min_size, 68);
        #[cfg(not(feature = "selftest"))]
        assert!(lookup(IOMMUFD_CMD_TEST).is_none());
    }
}
