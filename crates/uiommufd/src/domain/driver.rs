//! What the IOMMU driver behind a device implements (the kernel's
//! `iommu_ops` as seen from one device): [`DeviceDriver`], and
//! [`NestingOps`] for a driver with nested domains and I/O page faults.

use std::sync::Arc;

use super::{Domain, NestedDomain, UserData};
use crate::viommu::ViommuOps;
use crate::{bail, Result};

/// What a driver with user-managed (nested) domains and I/O page faults
/// offers (the kernel's `domain_alloc_user` with a parent,
/// `cache_invalidate_user`, `IOMMU_DEV_FEAT_IOPF`).
pub trait NestingOps {
    /// Whether `domain` is one of this driver's (`domain->owner == ops`).
    fn owns_domain(&self, domain: &dyn Domain) -> bool;
    /// A nested domain on `parent` from the user's driver data. `flags` are
    /// the `IOMMU_HWPT_ALLOC_*` flags left once the core took its own.
    fn alloc_nested_domain(
        &self,
        parent: &Arc<dyn Domain>,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Arc<dyn NestedDomain>>;
    /// Whether this device can be attached to `domain` (`EINVAL` if not).
    fn check_attach_nested(&self, domain: &dyn NestedDomain) -> Result<()>;
    /// Turn on I/O page faults for the device (attach to a fault-capable
    /// HWPT). Default: the device cannot (`ENODEV`).
    fn enable_iopf(&self) -> Result<()> {
        bail!(ENODEV, "the device cannot report I/O page faults")
    }
    /// Turn them off again.
    fn disable_iopf(&self) {}
    /// Whether the PASID table is user-managed (inside the nested domain),
    /// so that faults of any PASID go to the RID's nested domain.
    fn user_pasid_table(&self) -> bool {
        false
    }
}

/// What the IOMMU driver behind a device can do (the kernel's `iommu_ops`
/// as seen from one device).
pub trait DeviceDriver: Send + Sync + std::fmt::Debug {
    /// `IOMMU_GET_HW_INFO`: the info type and its bytes.
    fn hw_info(&self) -> (u32, Vec<u8>);
    /// Whether a hardware info type may be asked for explicitly
    /// (`IOMMU_HW_INFO_FLAG_INPUT_TYPE`).
    fn supports_hw_info_type(&self, ty: u32) -> bool {
        ty == self.hw_info().0
    }
    /// `IOMMU_HW_CAP_*` bits.
    fn capabilities(&self) -> u64;
    /// log2 of the number of PASIDs, 0 without PASID support.
    fn max_pasid_log2(&self) -> u8 {
        0
    }
    /// A new paging domain for this device: `flags` are `IOMMU_HWPT_ALLOC_*`
    /// (`NEST_PARENT`, `DIRTY_TRACKING`).
    fn alloc_paging_domain(&self, flags: u32) -> Result<Arc<dyn Domain>>;
    /// A new paging domain made with driver data (`IOMMU_HWPT_ALLOC` on an
    /// IOAS with a `data_type`; Linux 6.19 and later). Default: the driver
    /// takes no data for a paging domain (`EOPNOTSUPP`).
    fn alloc_paging_domain_with_data(
        &self,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Arc<dyn Domain>> {
        let _ = flags;
        bail!(
            EOPNOTSUPP,
            "the driver takes no data for a paging domain (data_type {:#x})",
            data.data_type
        )
    }
    /// The domain of an automatic HWPT (attach to an IOAS). Default: a
    /// paging domain with no flags, as the kernel's default domain.
    fn alloc_auto_domain(&self) -> Result<Arc<dyn Domain>> {
        self.alloc_paging_domain(0)
    }
    /// Whether this device can be attached to `domain` (`EINVAL` if not:
    /// incompatible, so an auto-domain search moves on).
    fn check_attach(&self, domain: &dyn Domain) -> Result<()>;
    /// PASID `pasid` is being attached (`attach`: to a domain, on attach or
    /// replace) or detached (to the blocking domain): the driver's
    /// `set_dev_pasid`. A failure leaves the PASID as it was. Default:
    /// nothing to do.
    fn set_dev_pasid(&self, pasid: u32, attach: bool) -> Result<()> {
        let _ = (pasid, attach);
        Ok(())
    }
    /// Nested domains and I/O page faults, when the driver has them.
    fn nesting(&self) -> Option<&dyn NestingOps> {
        None
    }
    /// Whether the IOMMU behind the device offers vIOMMUs of type `ty`
    /// (the kernel's `get_viommu_size` non-zero). Default: none.
    fn viommu_supported(&self, ty: u32) -> bool {
        let _ = ty;
        false
    }
    /// Make the driver half of a vIOMMU of type `ty` on the nest-parent
    /// domain `parent` (`viommu_init`), from the user's driver data when
    /// there is some (the driver may write its reply into it). Default:
    /// `EOPNOTSUPP`.
    /// `mmap` offers a region through `mmap` of the fd (returns its offset,
    /// what the driver reports to the user); the core withdraws it when
    /// the vIOMMU goes.
    fn viommu_init(
        &self,
        ty: u32,
        parent: &Arc<dyn Domain>,
        data: Option<&UserData<'_>>,
        mmap: &dyn Fn(Arc<crate::mmap::MmapRegion>) -> u64,
    ) -> Result<Arc<dyn ViommuOps>> {
        let _ = (parent, data, mmap);
        bail!(EOPNOTSUPP, "the IOMMU has no vIOMMU of type {ty:#x}")
    }
    /// For drivers to recognise their own devices (`None`: not needed).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}
