//! The mock driver's nested domains (the kernel's selftest.c
//! `mock_iommu_domain_nested`): a user-managed domain whose only state is a
//! 4-entry "IOTLB" the user fills at allocation (`iommu_hwpt_selftest`) and
//! clears with invalidation requests (`iommu_hwpt_invalidate_selftest`);
//! `IOMMU_TEST_OP_MD_CHECK_IOTLB` reads it back. Mock devices can report
//! I/O page faults and keep their PASID table in the nested domain.

use std::any::Any;
use std::mem::offset_of;
use std::sync::Arc;

use parking_lot::Mutex;

use super::device::MockDevice;
use super::domain::MockDomain;
use crate::domain::{
    next_domain_id, Domain, NestedDataKind, NestedDomain, NestingOps, UserData, UserDataArray,
};
use crate::uapi::*;
use crate::{bail, Result};

/// A mock nested domain.
#[derive(Debug)]
pub struct MockNestedDomain {
    id: u64,
    /// The parent mock domain's ID.
    parent: u64,
    iotlb: Mutex<[u32; MOCK_NESTED_DOMAIN_IOTLB_NUM]>,
}

/// The mock driver's nested data (`struct iommu_hwpt_selftest`).
pub(super) const MOCK_NESTED: NestedDataKind = NestedDataKind {
    driver: "mock driver",
    data_type: IOMMU_HWPT_DATA_SELFTEST,
    name: "IOMMU_HWPT_DATA_SELFTEST",
};

impl MockNestedDomain {
    /// A nested domain on mock domain `parent` with every IOTLB entry `iotlb`.
    pub fn new(parent: u64, iotlb: u32) -> Arc<MockNestedDomain> {
        Arc::new(MockNestedDomain {
            id: next_domain_id(),
            parent,
            iotlb: Mutex::new([iotlb; MOCK_NESTED_DOMAIN_IOTLB_NUM]),
        })
    }

    /// A nested domain on mock domain `parent` from the user's
    /// `struct iommu_hwpt_selftest` (`EINVAL` length, `EFAULT`).
    pub fn from_user(parent: u64, data: &UserData<'_>) -> Result<Arc<dyn NestedDomain>> {
        let min = offset_of!(IommuHwptSelftest, iotlb) + size_of::<u32>();
        let cfg: IommuHwptSelftest = data.copy_struct(IOMMU_HWPT_DATA_SELFTEST, min)?;
        Ok(MockNestedDomain::new(parent, cfg.iotlb))
    }

    /// The parent domain's ID.
    pub fn parent_id(&self) -> u64 {
        self.parent
    }

    /// IOTLB entry `i` (`None` past the last).
    pub fn iotlb(&self, i: u32) -> Option<u32> {
        self.iotlb.lock().get(i as usize).copied()
    }

    /// `IOMMU_TEST_OP_MD_CHECK_IOTLB`: entry `id` holds `value` (`EINVAL`
    /// for an ID past `MOCK_NESTED_DOMAIN_IOTLB_ID_MAX` or another value).
    pub fn check_iotlb(&self, id: u32, value: u32) -> Result<()> {
        match self.iotlb(id) {
            None => bail!(
                EINVAL,
                "MD_CHECK_IOTLB: IOTLB ID {id} is above {MOCK_NESTED_DOMAIN_IOTLB_ID_MAX}"
            ),
            Some(v) if v != value => bail!(
                EINVAL,
                "MD_CHECK_IOTLB: IOTLB entry {id} is {v:#x}, expected {value:#x}"
            ),
            Some(_) => Ok(()),
        }
    }
}

impl NestedDomain for MockNestedDomain {
    fn id(&self) -> u64 {
        self.id
    }

    /// Each request clears one entry, or all with `FLAG_ALL`: another data
    /// type is `EINVAL` (nothing done), unknown request flags `EOPNOTSUPP`,
    /// an IOTLB ID past the last `EINVAL`, a bad entry size `EINVAL`, an
    /// unreadable entry `EFAULT`.
    fn cache_invalidate_user(&self, array: &UserDataArray<'_>) -> (u32, Result<()>) {
        let min = offset_of!(IommuHwptInvalidateSelftest, iotlb_id) + size_of::<u32>();
        array.for_each_entry(
            IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
            min,
            |i, inv: IommuHwptInvalidateSelftest| {
                if inv.flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                    crate::bail!(
                        EOPNOTSUPP,
                        "HWPT_INVALIDATE: entry {i}: unknown flags {:#x}",
                        inv.flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL
                    );
                }
                if inv.iotlb_id > MOCK_NESTED_DOMAIN_IOTLB_ID_MAX {
                    crate::bail!(
                        EINVAL,
                        "HWPT_INVALIDATE: entry {i}: iotlb_id {} is above {MOCK_NESTED_DOMAIN_IOTLB_ID_MAX}",
                        inv.iotlb_id
                    );
                }
                let mut t = self.iotlb.lock();
                if inv.flags & IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                    *t = [0; MOCK_NESTED_DOMAIN_IOTLB_NUM];
                } else {
                    t[inv.iotlb_id as usize] = 0;
                }
                Ok(())
            },
        )
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl NestingOps for MockDevice {
    fn owns_domain(&self, domain: &dyn Domain) -> bool {
        domain.as_any().is::<MockDomain>()
    }

    /// `mock_domain_alloc_user` with a parent: only `IOMMU_HWPT_DATA_SELFTEST`
    /// and no flags (`EOPNOTSUPP`), a mock parent (`EINVAL`), then the data.
    fn alloc_nested_domain(
        &self,
        parent: &Arc<dyn Domain>,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Arc<dyn NestedDomain>> {
        data.check_nested_request(&MOCK_NESTED, flags, 0)?;
        if !parent.as_any().is::<MockDomain>() {
            bail!(EINVAL, "mock driver: the parent is not a mock domain");
        }
        MockNestedDomain::from_user(parent.id(), data)
    }

    fn check_attach_nested(&self, domain: &dyn NestedDomain) -> Result<()> {
        if !domain.as_any().is::<MockNestedDomain>() {
            bail!(
                EINVAL,
                "mock device: nested domain {} is not a mock nested domain",
                domain.id()
            );
        }
        Ok(())
    }

    fn enable_iopf(&self) -> Result<()> {
        Ok(())
    }

    fn user_pasid_table(&self) -> bool {
        true
    }
}
