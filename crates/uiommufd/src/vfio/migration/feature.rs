//! The migration and DMA-logging features of `VFIO_DEVICE_FEATURE`
//! (`MIGRATION`, `MIG_DEVICE_STATE`, `DMA_LOGGING_START`/`_STOP`/`_REPORT`,
//! `MIG_DATA_SIZE`, and from 7.1 `MIG_PRECOPY_INFOv2`), validated as
//! `vfio_main.c` does. The
//! device fd's `VFIO_DEVICE_FEATURE` handler checks the common header and
//! hands these feature numbers here.

use std::sync::Arc;

use super::dma_log::{DmaLog, MAX_RANGES};
use super::{Migration, MIGRATION_PRE_COPY};
use crate::files::EngineFile;
use crate::user::UserMemory;
use crate::{bail, Result};

/// `VFIO_DEVICE_FEATURE_GET`.
pub const FEATURE_GET: u32 = 1 << 16;
/// `VFIO_DEVICE_FEATURE_SET`.
pub const FEATURE_SET: u32 = 1 << 17;
/// `VFIO_DEVICE_FEATURE_PROBE`.
pub const FEATURE_PROBE: u32 = 1 << 18;
/// `VFIO_DEVICE_FEATURE_MIGRATION`.
pub const MIGRATION: u32 = 1;
/// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`.
pub const MIG_DEVICE_STATE: u32 = 2;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_START`.
pub const DMA_LOGGING_START: u32 = 6;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP`.
pub const DMA_LOGGING_STOP: u32 = 7;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT`.
pub const DMA_LOGGING_REPORT: u32 = 8;
/// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
pub const MIG_DATA_SIZE: u32 = 9;
/// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` (Linux 7.1).
pub const MIG_PRECOPY_INFO_V2: u32 = 12;

/// The kernel's `vfio_check_feature`: `Ok(false)` for a successful probe
/// (answer 0), `Ok(true)` to go on with the GET or SET.
pub fn check_feature(flags: u32, argsz: usize, supported: u32, minsz: usize) -> Result<bool> {
    if flags & (FEATURE_GET | FEATURE_SET) & !supported != 0 {
        bail!(
            EINVAL,
            "the feature does not support this GET/SET (flags {flags:#x})"
        );
    }
    if flags & FEATURE_PROBE != 0 {
        return Ok(false);
    }
    if flags & (FEATURE_GET | FEATURE_SET) == 0 {
        bail!(EINVAL, "VFIO_DEVICE_FEATURE without PROBE needs GET or SET");
    }
    if argsz < minsz {
        bail!(
            EINVAL,
            "feature data of {argsz} bytes is below the {minsz} it needs"
        );
    }
    Ok(true)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Handle feature `feature` with `flags` and `argsz` bytes of data at
/// user address `data`. `None` when `feature` is not one of these (or not
/// one of the bound iommufd's uAPI `level`); `new_fd` turns a data file
/// into an fd (close-on-exec, as the kernel's).
#[allow(clippy::too_many_arguments)]
pub fn device_feature(
    level: crate::uapi::level::UapiLevel,
    mig: &Migration,
    log: &DmaLog,
    feature: u32,
    flags: u32,
    data: u64,
    argsz: usize,
    mem: &dyn UserMemory,
    new_fd: &dyn Fn(Arc<dyn EngineFile>) -> Result<i32>,
    close_fd: &dyn Fn(i32),
) -> Option<Result<i64>> {
    let r = match feature {
        MIGRATION => (|| {
            if !check_feature(flags, argsz, FEATURE_GET, 8)? {
                return Ok(0);
            }
            mem.write(data, &u64::from(mig.flags()).to_le_bytes())?;
            Ok(0)
        })(),
        MIG_DEVICE_STATE => (|| {
            if !check_feature(flags, argsz, FEATURE_GET | FEATURE_SET, 8)? {
                return Ok(0);
            }
            let mut b = [0u8; 8];
            mem.read(data, &mut b)?;
            if flags & FEATURE_GET != 0 {
                b[0..4].copy_from_slice(&(mig.state() as u32).to_le_bytes());
                b[4..8].copy_from_slice(&(-1i32).to_le_bytes());
                mem.write(data, &b)?;
                return Ok(0);
            }
            let target = u32::from_le_bytes(b[0..4].try_into().unwrap());
            let file = match mig.set_state(target) {
                Ok(f) => f,
                Err(e) => {
                    b[4..8].copy_from_slice(&(-1i32).to_le_bytes());
                    mem.write(data, &b)?;
                    return Err(e);
                }
            };
            let fd = match file {
                Some(f) => new_fd(f)?,
                None => -1,
            };
            b[4..8].copy_from_slice(&fd.to_le_bytes());
            if let Err(e) = mem.write(data, &b) {
                if fd >= 0 {
                    close_fd(fd);
                }
                return Err(e);
            }
            Ok(0)
        })(),
        MIG_DATA_SIZE => (|| {
            if !check_feature(flags, argsz, FEATURE_GET, 8)? {
                return Ok(0);
            }
            mem.write(data, &mig.data_size()?.to_le_bytes())?;
            Ok(0)
        })(),
        DMA_LOGGING_START => (|| {
            // struct vfio_device_feature_dma_logging_control:
            // page_size u64, num_ranges u32, reserved u32, ranges u64.
            if !check_feature(flags, argsz, FEATURE_SET, 24)? {
                return Ok(0);
            }
            let mut c = [0u8; 24];
            mem.read(data, &mut c)?;
            let page_size = u64_at(&c, 0);
            let n = u32::from_le_bytes(c[8..12].try_into().unwrap()) as usize;
            let at = u64_at(&c, 16);
            if n == 0 {
                bail!(EINVAL, "DMA logging start with no ranges");
            }
            if n > MAX_RANGES {
                bail!(
                    E2BIG,
                    "DMA logging start with {n} ranges (at most {MAX_RANGES})"
                );
            }
            let aligned = |v: u64| {
                page_size != 0 && v & (page_size.wrapping_sub(1)) == 0 || page_size == 0 && v == 0
            };
            let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(n);
            for i in 0..n {
                let mut r = [0u8; 16];
                mem.read(at.wrapping_add(16 * i as u64), &mut r)?;
                let (iova, len) = (u64_at(&r, 0), u64_at(&r, 8));
                if !aligned(iova) || !aligned(len) {
                    bail!(
                        EINVAL,
                        "DMA logging range {i} ({iova:#x}+{len:#x}) is not aligned to the page size {page_size:#x}"
                    );
                }
                if iova.checked_add(len).is_none() {
                    bail!(
                        EOVERFLOW,
                        "DMA logging range {i} ({iova:#x}+{len:#x}) wraps"
                    );
                }
                let last = iova.wrapping_add(len).wrapping_sub(1);
                if len > 0
                    && ranges
                        .iter()
                        .any(|&(s, l)| l > 0 && s <= last && iova <= s + (l - 1))
                {
                    bail!(
                        EINVAL,
                        "DMA logging range {i} ({iova:#x}+{len:#x}) overlaps another"
                    );
                }
                ranges.push((iova, len));
            }
            let chosen = log.start(page_size, &ranges)?;
            c[0..8].copy_from_slice(&chosen.to_le_bytes());
            if let Err(e) = mem.write(data, &c) {
                log.stop();
                return Err(e);
            }
            Ok(0)
        })(),
        MIG_PRECOPY_INFO_V2 if level.at_least(crate::uapi::level::UapiLevel::V7_1) => (|| {
            // checked before the GET/SET/PROBE rules, as the kernel does
            if mig.flags() & MIGRATION_PRE_COPY == 0 {
                bail!(
                    EINVAL,
                    "MIG_PRECOPY_INFOv2: the device does not support PRE_COPY"
                );
            }
            if !check_feature(flags, argsz, FEATURE_SET, 0)? {
                return Ok(0);
            }
            mig.set_precopy_info_v2(true);
            Ok(0)
        })(),
        DMA_LOGGING_STOP => (|| {
            if !check_feature(flags, argsz, FEATURE_SET, 0)? {
                return Ok(0);
            }
            log.stop();
            Ok(0)
        })(),
        DMA_LOGGING_REPORT => {
            (|| {
                // struct vfio_device_feature_dma_logging_report: iova, length,
                // page_size, bitmap (u64 each).
                if !check_feature(flags, argsz, FEATURE_GET, 32)? {
                    return Ok(0);
                }
                let mut r = [0u8; 32];
                mem.read(data, &mut r)?;
                let (iova, length, page_size, bitmap) =
                    (u64_at(&r, 0), u64_at(&r, 8), u64_at(&r, 16), u64_at(&r, 24));
                if page_size < 4096 || !page_size.is_power_of_two() {
                    bail!(EINVAL, "DMA logging report page size {page_size:#x} is not a power of two >= 4 KiB");
                }
                if iova.checked_add(length).is_none() {
                    bail!(
                        EOVERFLOW,
                        "DMA logging report range {iova:#x}+{length:#x} wraps"
                    );
                }
                if length == 0 {
                    bail!(EINVAL, "DMA logging report of an empty range");
                }
                log.report(iova, length, page_size, bitmap, mem)?;
                Ok(0)
            })()
        }
        _ => return None,
    };
    Some(r)
}
