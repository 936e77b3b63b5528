//! The mock driver's vIOMMU (the kernel's selftest.c `mock_viommu`):
//! `IOMMU_VIOMMU_TYPE_SELFTEST`, whose optional data
//! (`iommu_viommu_selftest`) is looped back, whose nested domains are the
//! mock's, whose cache invalidation (`iommu_viommu_invalidate_selftest`)
//! clears entries of the mock devices' caches by virtual device ID, and
//! whose HW queues (`IOMMU_HW_QUEUE_TYPE_SELFTEST`, two per vIOMMU) must be
//! made in index order, each depending on the one before.

use std::any::Any;
use std::mem::offset_of;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use zerocopy::{FromBytes, IntoBytes};

use super::device::MockDevice;
use super::nested::{MockNestedDomain, MOCK_NESTED};
use crate::device::Device;
use crate::domain::Domain;
use crate::domain::{HostAddr, Iova, NestedDomain, UserData, UserDataArray};
use crate::uapi::*;
use crate::viommu::{HwQueue, Viommu, ViommuOps};
use crate::{bail, err, Error, Result};

/// A mock vIOMMU's driver half.
#[derive(Debug)]
pub struct MockViommu {
    /// The nest parent's domain (`s2_parent`).
    parent: Arc<dyn Domain>,
    /// Its HW queues by index.
    queues: Mutex<[Weak<HwQueue>; IOMMU_TEST_HW_QUEUE_MAX as usize]>,
}

impl MockViommu {
    /// `mock_viommu_init`: with data, copy it in (`EINVAL` for a bad type or
    /// length, `EFAULT` for an unreadable pointer), offer two pages through
    /// `mmap` of the fd with `in_data` in the first word (a loopback), and
    /// write `out_data` = `in_data` and the pages' `out_mmap_offset` /
    /// `out_mmap_length` back.
    pub fn init(
        ty: u32,
        parent: &Arc<dyn Domain>,
        data: Option<&UserData<'_>>,
        mmap: &dyn Fn(Arc<crate::mmap::MmapRegion>) -> u64,
    ) -> Result<Arc<dyn ViommuOps>> {
        if ty != IOMMU_VIOMMU_TYPE_SELFTEST {
            bail!(
                EOPNOTSUPP,
                "mock driver: vIOMMU type {ty:#x} is not IOMMU_VIOMMU_TYPE_SELFTEST"
            );
        }
        if let Some(d) = data {
            let min = offset_of!(IommuViommuSelftest, out_data) + size_of::<u32>();
            let mut v: IommuViommuSelftest = d.copy_struct(IOMMU_VIOMMU_TYPE_SELFTEST, min)?;
            let len = 2 * crate::user::page_size();
            let page = crate::mmap::MmapRegion::new(len)?;
            page.write(0, &v.in_data.to_ne_bytes())?;
            v.out_data = v.in_data;
            v.out_mmap_offset = mmap(Arc::new(page));
            v.out_mmap_length = len;
            // copy_struct_to_user: the user's length (checked above)
            let n = (d.len as usize).min(size_of::<IommuViommuSelftest>());
            d.mem.write(d.uptr, &v.as_bytes()[..n]).map_err(|_| {
                Error::new(
                    libc::EFAULT,
                    format!("mock vIOMMU: cannot write its data back to {:#x}", d.uptr),
                )
            })?;
        }
        Ok(Arc::new(MockViommu {
            parent: parent.clone(),
            queues: Mutex::new(Default::default()),
        }))
    }
}

/// Copy entry after entry of `array` as `T`s (the kernel's
/// `iommu_copy_struct_from_full_user_array`): `EINVAL` for another type or
/// no entries; each entry is `copy_struct_from_user` of `entry_len` bytes
/// (shorter: zero-extended; longer: the excess must be zero, `E2BIG`);
/// `EFAULT` for an unreadable one.
fn copy_full_array<T: FromBytes + IntoBytes>(
    array: &UserDataArray<'_>,
    data_type: u32,
) -> Result<Vec<T>> {
    if array.data_type != data_type {
        bail!(
            EINVAL,
            "data type {:#x} is not the expected {data_type:#x}",
            array.data_type
        );
    }
    if array.entry_num == 0 {
        bail!(EINVAL, "no entries");
    }
    let size = size_of::<T>();
    let len = array.entry_len as usize;
    let mut out = Vec::with_capacity(array.entry_num as usize);
    for i in 0..array.entry_num as u64 {
        let Some(at) = array.uptr.checked_add(i * array.entry_len as u64) else {
            bail!(EFAULT, "entry {i} wraps the address space");
        };
        let mut v = T::new_zeroed();
        let n = len.min(size);
        array
            .mem
            .read(at, &mut v.as_mut_bytes()[..n])
            .map_err(|_| err!(EFAULT, "cannot read entry {i} at {at:#x}"))?;
        if len > size {
            let mut tail = vec![0u8; len - size];
            array
                .mem
                .read(at + size as u64, &mut tail)
                .map_err(|_| err!(EFAULT, "cannot read the tail of entry {i}"))?;
            if tail.iter().any(|&b| b != 0) {
                bail!(
                    E2BIG,
                    "entry {i}: bytes past the {size} understood must be zero"
                );
            }
        }
        out.push(v);
    }
    Ok(out)
}

impl ViommuOps for MockViommu {
    /// `mock_viommu_alloc_domain_nested`: only `IOMMU_HWPT_ALLOC_PASID`
    /// (`EOPNOTSUPP` for other flags), then the nested data as for a
    /// nested HWPT on a paging parent.
    fn alloc_domain_nested(
        &self,
        _viommu: &Viommu,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Arc<dyn NestedDomain>> {
        data.check_nested_request(&MOCK_NESTED, flags, IOMMU_HWPT_ALLOC_PASID)?;
        MockNestedDomain::from_user(self.parent.id(), data)
    }

    /// `mock_viommu_cache_invalidate`: an empty array of the right type
    /// only checks the type; otherwise every entry is copied first, then
    /// each clears one cache entry (all with `FLAG_ALL`) of the device
    /// whose vDEVICE has `vdev_id`: unknown flags `EOPNOTSUPP`, a
    /// `cache_id` past the last or an unknown `vdev_id` `EINVAL`.
    fn cache_invalidate(&self, viommu: &Viommu, array: &UserDataArray<'_>) -> (u32, Result<()>) {
        if array.entry_num == 0 && array.data_type == IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST {
            return (0, Ok(()));
        }
        let cmds: Vec<IommuViommuInvalidateSelftest> =
            match copy_full_array(array, IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST) {
                Ok(c) => c,
                Err(e) => {
                    return (
                        0,
                        Err(Error::new(
                            e.errno().0,
                            format!("mock vIOMMU invalidation: {}", e.reason()),
                        )),
                    )
                }
            };
        for (done, c) in cmds.iter().enumerate() {
            let done = done as u32;
            if c.flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                return (
                    done,
                    Err(err!(
                        EOPNOTSUPP,
                        "mock vIOMMU invalidation: entry {done}: unknown flags {:#x}",
                        c.flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL
                    )),
                );
            }
            if c.cache_id > MOCK_DEV_CACHE_ID_MAX {
                return (
                    done,
                    Err(err!(
                        EINVAL,
                        "mock vIOMMU invalidation: entry {done}: cache_id {} is past {MOCK_DEV_CACHE_ID_MAX}",
                        c.cache_id
                    )),
                );
            }
            let mock = viommu.find_dev(u64::from(c.vdev_id)).and_then(|d| {
                d.driver()
                    .as_any()
                    .and_then(|a| a.downcast_ref::<MockDevice>())
                    .map(|_| d.clone())
            });
            let Some(dev) = mock else {
                return (
                    done,
                    Err(err!(
                        EINVAL,
                        "mock vIOMMU invalidation: entry {done}: no mock device has virtual ID {:#x}",
                        c.vdev_id
                    )),
                );
            };
            if let Some(m) = dev
                .driver()
                .as_any()
                .and_then(|a| a.downcast_ref::<MockDevice>())
            {
                m.invalidate_cache(c.cache_id, c.flags & IOMMU_TEST_INVALIDATE_FLAG_ALL != 0);
            }
        }
        (cmds.len() as u32, Ok(()))
    }

    /// `mock_domain_nop_attach` to one of its nested domains: the device
    /// needs a vDEVICE on the vIOMMU (`ENOENT`).
    fn check_attach(&self, viommu: &Viommu, dev: &Device) -> Result<()> {
        viommu.vdev_id_of(dev).map(|_| ())
    }

    fn hw_queue_supported(&self, ty: u32) -> bool {
        ty == IOMMU_HW_QUEUE_TYPE_SELFTEST
    }

    /// `mock_hw_queue_init_phys`: an index past the last is `EINVAL`, a
    /// taken one `EEXIST`; index `i > 0` needs queue `i - 1` (`EIO`) and
    /// depends on it; `base_pa` must be what the parent maps the base to
    /// (`EFAULT`).
    fn hw_queue_init(&self, _viommu: &Viommu, queue: &Arc<HwQueue>, base_pa: u64) -> Result<()> {
        let index = queue.index();
        if index >= IOMMU_TEST_HW_QUEUE_MAX {
            bail!(
                EINVAL,
                "mock vIOMMU: HW queue index {index} is past the last ({})",
                IOMMU_TEST_HW_QUEUE_MAX - 1
            );
        }
        let mut qs = self.queues.lock();
        if qs[index as usize].strong_count() > 0 {
            bail!(EEXIST, "mock vIOMMU: HW queue index {index} is taken");
        }
        let prev = if index > 0 {
            match qs[index as usize - 1].upgrade() {
                Some(p) => Some(p),
                None => bail!(
                    EIO,
                    "mock vIOMMU: HW queue {index} needs queue {} first",
                    index - 1
                ),
            }
        } else {
            None
        };
        let want = self.parent.iova_to_phys(Iova(queue.base_addr()));
        if want != Some(HostAddr(base_pa)) {
            bail!(
                EFAULT,
                "mock vIOMMU: the queue's address {base_pa:#x} is not what the parent maps {:#x} to ({want:?})",
                queue.base_addr()
            );
        }
        if let Some(p) = prev {
            queue.depend_on(p);
        }
        qs[index as usize] = Arc::downgrade(queue);
        Ok(())
    }

    fn hw_queue_destroy(&self, queue: &HwQueue) {
        let mut qs = self.queues.lock();
        if let Some(slot) = qs.get_mut(queue.index() as usize) {
            if std::ptr::eq(slot.as_ptr(), queue) {
                *slot = Weak::new();
            }
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
