//! The vIOMMU ioctl handlers: `IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC`
//! and `IOMMU_HW_QUEUE_ALLOC`. The objects are in `mod.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{get_viommu, iommu_of, HwQueue, Vdevice, Viommu};
use crate::access::Access;
use crate::device::get_device;
use crate::hwpt::nested::UserData;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::user::page_size;
use crate::{bail, Result};

/// `IOMMU_VIOMMU_ALLOC` (Linux 6.13).
///
/// Errnos, in the kernel's order: non-zero `flags` or the `DEFAULT` type:
/// `EOPNOTSUPP`; `dev_id` not a device: `ENOENT`; a driver without that
/// vIOMMU type: `EOPNOTSUPP`; `hwpt_id` not a paging HWPT: `ENOENT`; one
/// not made with `NEST_PARENT`: `EINVAL`; then the driver's (the mock: bad
/// data `EINVAL`/`EFAULT`). `__reserved` is not checked (nor is it by 7.2).
pub(crate) fn viommu_alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuViommuAlloc = u.cmd();
    if cmd.flags != 0 || cmd.r#type == IOMMU_VIOMMU_TYPE_DEFAULT {
        bail!(
            EOPNOTSUPP,
            "VIOMMU_ALLOC: flags {:#x} must be 0 and the type not DEFAULT (type {:#x})",
            cmd.flags,
            cmd.r#type
        );
    }
    let dev = get_device(u.ctx, cmd.dev_id)?;
    if !dev.driver().viommu_supported(cmd.r#type) {
        bail!(
            EOPNOTSUPP,
            "VIOMMU_ALLOC: device {}'s IOMMU has no vIOMMU of type {:#x}",
            cmd.dev_id,
            cmd.r#type
        );
    }
    let hwpt = crate::hwpt::get_hwpt_paging(u, cmd.hwpt_id)?;
    if !hwpt.nest_parent() {
        bail!(
            EINVAL,
            "VIOMMU_ALLOC: HWPT {} was not allocated with NEST_PARENT",
            cmd.hwpt_id
        );
    }
    let r = u.ctx.reserve()?;
    let data = UserData {
        data_type: cmd.r#type,
        uptr: cmd.data_uptr,
        len: cmd.data_len,
        mem: &**u.mem,
    };
    let offered = std::cell::RefCell::new(Vec::new());
    let mmap = |region: Arc<crate::mmap::MmapRegion>| {
        let off = u.ctx.mmap_register(region.clone());
        offered.borrow_mut().push((off, region));
        off
    };
    let ops = dev.driver().viommu_init(
        cmd.r#type,
        hwpt.domain(),
        (cmd.data_len != 0).then_some(&data),
        &mmap,
    );
    let mmaps = offered.into_inner();
    let ops = match ops {
        Ok(o) => o,
        Err(e) => {
            for (off, _) in &mmaps {
                u.ctx.mmap_unregister(*off);
            }
            return Err(e);
        }
    };
    let viommu = Arc::new(Viommu {
        ty: cmd.r#type,
        hwpt,
        iommu: iommu_of(&dev),
        ops,
        vdevs: Mutex::new(BTreeMap::new()),
        veventqs: Mutex::new(Vec::new()),
        id: AtomicU32::new(r.id()),
        mmaps,
        ctx: Arc::downgrade(u.ctx),
    });
    cmd.out_viommu_id = r.id();
    u.respond(&cmd)?;
    r.finalize(viommu);
    Ok(0)
}

/// `IOMMU_VDEVICE_ALLOC` (Linux 6.13).
///
/// Errnos, in the kernel's order: `viommu_id` not a vIOMMU or `dev_id` not
/// a device: `ENOENT`; a device behind another IOMMU: `EINVAL`; a device
/// that already has a vDEVICE, or a `virt_id` taken on the vIOMMU:
/// `EEXIST`.
pub(crate) fn vdevice_alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuVdeviceAlloc = u.cmd();
    // (`virt_id` indexes an xarray: any u64 fits an unsigned long here)
    let viommu = get_viommu(u.ctx, cmd.viommu_id)?;
    let dev = get_device(u.ctx, cmd.dev_id)?;
    if !viommu.same_iommu(&dev) {
        bail!(
            EINVAL,
            "VDEVICE_ALLOC: device {} is behind another IOMMU than vIOMMU {}",
            cmd.dev_id,
            cmd.viommu_id
        );
    }
    let mut slot = dev.vdevice_slot();
    if let Some(v) = *slot {
        bail!(
            EEXIST,
            "VDEVICE_ALLOC: device {} already has vDEVICE {v}",
            cmd.dev_id
        );
    }
    let r = u.ctx.reserve()?;
    let vdev = {
        let mut vdevs = viommu.vdevs.lock();
        if vdevs
            .get(&cmd.virt_id)
            .is_some_and(|w| w.strong_count() > 0)
        {
            bail!(
                EEXIST,
                "VDEVICE_ALLOC: virtual ID {:#x} is taken on vIOMMU {}",
                cmd.virt_id,
                cmd.viommu_id
            );
        }
        let vdev = Arc::new(Vdevice {
            viommu: viommu.clone(),
            dev: Arc::downgrade(&dev),
            virt_id: cmd.virt_id,
            id: r.id(),
        });
        vdevs.insert(cmd.virt_id, Arc::downgrade(&vdev));
        vdev
    };
    cmd.out_vdevice_id = r.id();
    if let Err(e) = u.respond(&cmd) {
        // dropping the vDEVICE unregisters it (after the device's slot is
        // released: its drop looks at that slot)
        drop(slot);
        drop(vdev);
        return Err(e);
    }
    *slot = Some(r.id());
    drop(slot);
    r.finalize(vdev);
    Ok(0)
}

/// `IOMMU_HW_QUEUE_ALLOC` (Linux 6.17).
///
/// Errnos, in the kernel's order: non-zero `flags` or the `DEFAULT` type:
/// `EOPNOTSUPP`; zero `length`: `EINVAL`; `nesting_parent_iova + length`
/// wraps: `EOVERFLOW`; `viommu_id` not a vIOMMU: `ENOENT`; a vIOMMU
/// without that queue type: `EOPNOTSUPP`; then the pin of the queue memory
/// in the parent's IOAS (`ENOENT` where nothing is mapped, ...), memory that
/// is not physically contiguous: `EFAULT`; then the driver's (the mock: an
/// index past the last `EINVAL`, taken `EEXIST`, the one before it missing
/// `EIO`).
pub(crate) fn hw_queue_alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuHwQueueAlloc = u.cmd();
    if cmd.flags != 0 || cmd.r#type == IOMMU_HW_QUEUE_TYPE_DEFAULT {
        bail!(
            EOPNOTSUPP,
            "HW_QUEUE_ALLOC: flags {:#x} must be 0 and the type not DEFAULT (type {:#x})",
            cmd.flags,
            cmd.r#type
        );
    }
    if cmd.length == 0 {
        bail!(EINVAL, "HW_QUEUE_ALLOC: length is zero");
    }
    if cmd
        .nesting_parent_iova
        .checked_add(cmd.length - 1)
        .is_none()
    {
        bail!(
            EOVERFLOW,
            "HW_QUEUE_ALLOC: iova {:#x} + length {:#x} overflows",
            cmd.nesting_parent_iova,
            cmd.length
        );
    }
    let viommu = get_viommu(u.ctx, cmd.viommu_id)?;
    if !viommu.ops.hw_queue_supported(cmd.r#type) {
        bail!(
            EOPNOTSUPP,
            "HW_QUEUE_ALLOC: vIOMMU {} has no HW queues of type {:#x}",
            cmd.viommu_id,
            cmd.r#type
        );
    }
    let r = u.ctx.reserve()?;
    let ps = page_size();
    let aligned = cmd.nesting_parent_iova & !(ps - 1);
    let offset = cmd.nesting_parent_iova - aligned;
    let Some(len) = offset
        .checked_add(cmd.length)
        .and_then(|l| l.checked_next_multiple_of(ps))
    else {
        bail!(
            ERANGE,
            "HW_QUEUE_ALLOC: the queue's page span overflows (length {:#x})",
            cmd.length
        );
    };
    let access = Access::create_internal(u.ctx)?;
    if let Err(e) = access.attach_ioas(viommu.hwpt.ioas().clone(), viommu.hwpt.ioas_id()) {
        access.destroy(u.ctx);
        return Err(e);
    }
    let pages = match access.pin_locked(aligned, len) {
        Ok(p) => p,
        Err(e) => {
            access.destroy(u.ctx);
            return Err(e);
        }
    };
    if let Some(i) = (1..pages.len()).find(|&i| pages[i] != pages[i - 1] + ps) {
        access.unpin_locked(aligned, len);
        access.destroy(u.ctx);
        bail!(
            EFAULT,
            "HW_QUEUE_ALLOC: the queue memory is not contiguous at page {i}"
        );
    }
    let base_pa = pages[0] + offset;
    let queue = Arc::new(HwQueue {
        viommu: viommu.clone(),
        ty: cmd.r#type,
        index: cmd.index,
        base_addr: cmd.nesting_parent_iova,
        length: cmd.length,
        access,
        pinned: (aligned, len),
        depends: Mutex::new(None),
    });
    if let Err(e) = viommu.ops.hw_queue_init(&viommu, &queue, base_pa) {
        // the driver set nothing up: only the pin and the access go
        let (iova, len) = queue.pinned;
        queue.access.unpin_locked(iova, len);
        queue.access.clone().destroy(u.ctx);
        return Err(e);
    }
    cmd.out_hw_queue_id = r.id();
    if let Err(e) = u.respond(&cmd) {
        r.abort(queue); // the driver's destroy, the pin, the access
        return Err(e);
    }
    r.finalize(queue);
    Ok(0)
}
