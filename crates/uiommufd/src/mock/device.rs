//! The mock driver's devices (the kernel's selftest.c `mock_dev`): a
//! [`DeviceDriver`] whose domains are [`MockDomain`]s, and the selftest
//! object (`IOMMUFD_OBJ_SELFTEST`) that owns one bound mock device.

use std::sync::Arc;

use super::domain::MockDomain;
use crate::context::Context;
use crate::device::Device;
use crate::domain::{DeviceDriver, Domain, UserData};
use crate::uapi::*;
use crate::{bail, Result};

/// The device has no dirty tracking.
pub const MOCK_FLAGS_DEVICE_NO_DIRTY: u32 = 1 << 0;
/// The device's domains support huge IOVA pages.
pub const MOCK_FLAGS_DEVICE_HUGE_IOVA: u32 = 1 << 1;
/// The device supports PASID (later kernels; the Debian 6.12 selftest uses it).
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;
/// PASID width of a PASID-capable mock device.
pub const MOCK_PASID_WIDTH: u8 = 20;
/// `IOMMU_HW_INFO_TYPE_SELFTEST`
pub const IOMMU_HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// `IOMMU_HW_INFO_SELFTEST_REGVAL`
pub const IOMMU_HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;

/// A mock device: what the mock IOMMU driver knows of it.
#[derive(Debug)]
pub struct MockDevice {
    flags: u32,
    /// The device's cache entries (`mock_dev.cache`), each
    /// [`IOMMU_TEST_DEV_CACHE_DEFAULT`] from creation; a mock vIOMMU's
    /// cache invalidation clears them.
    cache: parking_lot::Mutex<[u32; MOCK_DEV_CACHE_NUM]>,
    /// The selftest's fake failure for PASID 1024 (`pasid_1024_fake_error`):
    /// set by an attach of it, then the next attach (a replace) fails with
    /// `ENOMEM` and clears it; a detach clears it.
    pasid_1024_fake_error: std::sync::atomic::AtomicBool,
}

impl MockDevice {
    /// A mock device with `MOCK_FLAGS_DEVICE_*` flags (`EINVAL` for others).
    pub fn new(flags: u32) -> Result<Arc<MockDevice>> {
        const KNOWN: u32 =
            MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_HUGE_IOVA | MOCK_FLAGS_DEVICE_PASID;
        if flags & !KNOWN != 0 {
            bail!(EINVAL, "mock device: unknown flags {:#x}", flags & !KNOWN);
        }
        Ok(Arc::new(MockDevice {
            flags,
            cache: parking_lot::Mutex::new([IOMMU_TEST_DEV_CACHE_DEFAULT; MOCK_DEV_CACHE_NUM]),
            pasid_1024_fake_error: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// `IOMMU_TEST_OP_DEV_CHECK_CACHE`: cache entry `id` holds `value`
    /// (`EINVAL` when `id` is past [`MOCK_DEV_CACHE_ID_MAX`] or it does not).
    pub fn check_cache(&self, id: u32, value: u32) -> Result<()> {
        let Some(&have) = self
            .cache
            .lock()
            .get(id as usize)
            .filter(|_| id <= MOCK_DEV_CACHE_ID_MAX)
        else {
            bail!(
                EINVAL,
                "DEV_CHECK_CACHE: cache id {id} is past {MOCK_DEV_CACHE_ID_MAX}"
            );
        };
        if have != value {
            bail!(
                EINVAL,
                "DEV_CHECK_CACHE: cache entry {id} holds {have:#x}, not {value:#x}"
            );
        }
        Ok(())
    }

    /// Clear cache entry `id` (every entry with `all`): a vIOMMU cache
    /// invalidation (the caller checked `id`).
    pub fn invalidate_cache(&self, id: u32, all: bool) {
        let mut c = self.cache.lock();
        if all {
            *c = [0; MOCK_DEV_CACHE_NUM];
        } else if let Some(e) = c.get_mut(id as usize) {
            *e = 0;
        }
    }

    fn has(&self, f: u32) -> bool {
        self.flags & f != 0
    }
}

impl DeviceDriver for MockDevice {
    fn hw_info(&self) -> (u32, Vec<u8>) {
        // struct iommu_test_hw_info { __u32 flags; __u32 test_reg; }
        let mut data = Vec::with_capacity(8);
        data.extend_from_slice(&0u32.to_ne_bytes());
        data.extend_from_slice(&IOMMU_HW_INFO_SELFTEST_REGVAL.to_ne_bytes());
        (IOMMU_HW_INFO_TYPE_SELFTEST, data)
    }

    fn capabilities(&self) -> u64 {
        if self.has(MOCK_FLAGS_DEVICE_NO_DIRTY) {
            0
        } else {
            IOMMU_HW_CAP_DIRTY_TRACKING
        }
    }

    /// The selftest driver's `set_dev_pasid` for PASID 1024: the second
    /// attach in a row fails with `ENOMEM` (a replace's rollback path).
    fn set_dev_pasid(&self, pasid: u32, attach: bool) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if pasid != 1024 {
            return Ok(());
        }
        if !attach {
            self.pasid_1024_fake_error.store(false, SeqCst);
        } else if self.pasid_1024_fake_error.swap(false, SeqCst) {
            bail!(
                ENOMEM,
                "mock device: the selftest's fake failure of a second attach of PASID 1024"
            );
        } else {
            self.pasid_1024_fake_error.store(true, SeqCst);
        }
        Ok(())
    }

    fn max_pasid_log2(&self) -> u8 {
        if self.has(MOCK_FLAGS_DEVICE_PASID) {
            MOCK_PASID_WIDTH
        } else {
            0
        }
    }

    fn alloc_paging_domain(&self, flags: u32) -> Result<Arc<dyn Domain>> {
        const VALID: u32 = IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
        if flags & !VALID != 0 {
            bail!(
                EOPNOTSUPP,
                "mock driver: HWPT flags {:#x} are not supported",
                flags & !VALID
            );
        }
        if flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0 && self.has(MOCK_FLAGS_DEVICE_NO_DIRTY) {
            bail!(
                EOPNOTSUPP,
                "mock driver: this device cannot track dirty pages"
            );
        }
        // kzalloc of the mock domain
        crate::inject::point("mock.domain.alloc", libc::ENOMEM)?;
        Ok(MockDomain::new_paging(
            self.has(MOCK_FLAGS_DEVICE_HUGE_IOVA),
            flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0,
        ))
    }

    /// `mock_domain_alloc_paging_flags` with driver data (Linux 6.19): only
    /// `IOMMU_HWPT_DATA_SELFTEST`, whose `pagetable_type` picks the default
    /// 2 KiB page table or the one that also maps huge pages.
    fn alloc_paging_domain_with_data(
        &self,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Arc<dyn Domain>> {
        const VALID: u32 = IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
        if flags & !VALID != 0
            || (flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0
                && self.has(MOCK_FLAGS_DEVICE_NO_DIRTY))
        {
            bail!(
                EOPNOTSUPP,
                "mock driver: HWPT flags {flags:#x} are not supported by this device"
            );
        }
        if data.data_type != IOMMU_HWPT_DATA_SELFTEST {
            bail!(
                EOPNOTSUPP,
                "mock driver: paging data type {:#x} is not IOMMU_HWPT_DATA_SELFTEST",
                data.data_type
            );
        }
        let min = std::mem::offset_of!(IommuHwptSelftest, iotlb) + size_of::<u32>();
        let cfg: IommuHwptSelftest = data.copy_struct(IOMMU_HWPT_DATA_SELFTEST, min)?;
        let huge = match cfg.pagetable_type {
            MOCK_IOMMUPT_DEFAULT => false,
            MOCK_IOMMUPT_HUGE => true,
            t => bail!(EOPNOTSUPP, "mock driver: unknown page table type {t}"),
        };
        crate::inject::point("mock.domain.alloc", libc::ENOMEM)?;
        Ok(MockDomain::new_paging(
            huge,
            flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0,
        ))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn check_attach(&self, domain: &dyn Domain) -> Result<()> {
        if domain.as_any().downcast_ref::<MockDomain>().is_none() {
            bail!(
                EINVAL,
                "mock device: domain {} is not a mock domain",
                domain.id()
            );
        }
        // mock_domain_nop_attach: a device without dirty tracking cannot
        // use a domain that has it.
        if domain.dirty_tracking_supported() && self.has(MOCK_FLAGS_DEVICE_NO_DIRTY) {
            bail!(
                EINVAL,
                "mock device: domain {} tracks dirty pages but the device has MOCK_FLAGS_DEVICE_NO_DIRTY",
                domain.id()
            );
        }
        Ok(())
    }

    fn nesting(&self) -> Option<&dyn crate::domain::NestingOps> {
        Some(self)
    }

    fn viommu_supported(&self, ty: u32) -> bool {
        ty == IOMMU_VIOMMU_TYPE_SELFTEST
    }

    fn viommu_init(
        &self,
        ty: u32,
        parent: &Arc<dyn Domain>,
        data: Option<&UserData<'_>>,
        mmap: &dyn Fn(Arc<crate::mmap::MmapRegion>) -> u64,
    ) -> Result<Arc<dyn crate::viommu::ViommuOps>> {
        super::viommu::MockViommu::init(ty, parent, data, mmap)
    }
}

/// The selftest object: one mock device bound to the context. Destroying it
/// detaches and unbinds the device.
#[derive(Debug)]
pub struct MockStdev {
    device: Arc<Device>,
}

impl crate::context::Object for MockStdev {
    const KIND: &'static str = "selftest device";
    const OBJ_TYPE: Option<&'static str> = Some("IOMMUFD_OBJ_SELFTEST");

    /// Destroying it detaches and unbinds the device.
    fn on_destroy(self: Arc<Self>, ctx: &Context) {
        self.device.clone().unbind(ctx);
    }
}

impl MockStdev {
    /// Wrap a bound device.
    pub fn new(device: Arc<Device>) -> MockStdev {
        MockStdev { device }
    }

    /// The bound device.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }
}
