//! The software IOMMU's driver as seen from one emulated device (the
//! kernel's `intel_iommu_ops` for a device behind a VT-d unit): hardware
//! info, paging domains, attach checks.

use std::sync::Arc;

use crate::domain::DeviceDriver;
use crate::domain::Domain;
use crate::uapi::{
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING, IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HW_CAP_DIRTY_TRACKING,
    IOMMU_HW_INFO_TYPE_INTEL_VTD,
};
use crate::vtd::VtdDomain;
use crate::{bail, Result};

/// The IOVA width of the domains this driver makes (4-level second stage).
pub const VTD_ADDR_WIDTH: u32 = 48;

/// Capability register (`CAP_REG`) reported by `IOMMU_GET_HW_INFO` (bit
/// positions as the kernel's `cap_*` macros in `intel/iommu.h`): ND 6
/// (16-bit domain IDs); SAGAW 3- and 4-level second stage (bits 9, 10);
/// MGAW 48 bits; zero-length reads; fault recording at 0x220 with 8
/// records; second-stage 2 MiB and 1 GiB pages (SLLPS); page-selective
/// invalidation; MAMV 63; read/write draining; first-stage 1 GiB pages
/// (FL1GP) and 5-level first-stage tables (FL5LP: `addr_width` 57).
pub const VTD_CAP_REG: u64 = 6
    | (0b0110 << 8)
    | (((VTD_ADDR_WIDTH as u64) - 1) << 16)
    | (1 << 22)
    | (0x22 << 24)
    | (0b0011 << 34)
    | (1 << 39)
    | (7 << 40)
    | (0x3f << 48)
    | (1 << 54)
    | (1 << 55)
    | (1 << 56)
    | (1 << 60);

/// Extended capability register (`ECAP_REG`, the kernel's `ecap_*`
/// macros): coherent (C), queued invalidation (QI), device TLB (DT),
/// interrupt remapping with x2APIC (IR, EIM), pass-through (PT), snoop
/// control (SC), IOTLB registers at 0x500 (IRO 0x50), MHMV 15; nesting
/// (NEST, bit 26); page requests (PRS, bit 29: I/O page faults);
/// supervisor requests (SRS, bit 31: `IOMMU_VTD_S1_SRE` is accepted);
/// 20-bit PASIDs (PSS 19, PASID); scalable mode (SMTS); second-stage A/D
/// (SLADS, bit 45: what `IOMMU_HW_CAP_DIRTY_TRACKING` needs, together
/// with SMTS and SMPWC — the kernel's `ssads_supported`); second- and
/// first-stage translation (SLTS, FLTS); page-walk coherency in scalable
/// mode (SMPWC). Not reported: extended access flags (EAFS: `EAFE` is
/// refused at attach), execute requests (ERS), no-write flag (NWFS),
/// memory types (MTS), PASID-directed invalidation (PDS).
pub const VTD_ECAP_REG: u64 = 1
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 6)
    | (1 << 7)
    | (0x50 << 8)
    | (0xf << 20)
    | (1 << 26)
    | (1 << 29)
    | (1 << 31)
    | (19 << 35)
    | (1 << 40)
    | (1 << 43)
    | (1 << 45)
    | (1 << 46)
    | (1 << 47)
    | (1 << 48);

/// `struct iommu_hw_info_vtd` `flags`: no erratum flag.
pub const VTD_HW_INFO_FLAGS: u32 = 0;

/// The VT-d driver of an emulated device. [`VtdDriver::default`] is a
/// device without the PCIe PASID capability (what the VFIO layer's
/// devices are); [`VtdDriver::with_pasids`] one with it, whose PASIDs can
/// each be attached to their own domain (`Device::attach_pasid`) and do
/// DMA through it (`Device::pasid_dma_domain`, the VFIO bus's
/// `dma_*_pasid`).
#[derive(Debug, Default, Clone, Copy)]
pub struct VtdDriver {
    pasid_log2: u8,
}

impl VtdDriver {
    /// A device with `2^log2` PASIDs (at most the IOMMU's 20 bits: the
    /// kernel takes the smaller of the device's and the IOMMU's).
    pub fn with_pasids(log2: u8) -> VtdDriver {
        VtdDriver {
            pasid_log2: log2.min(VTD_PASID_LOG2),
        }
    }
}

/// PASID bits of the emulated IOMMU (`ECAP.PSS` + 1).
pub const VTD_PASID_LOG2: u8 = 20;

impl DeviceDriver for VtdDriver {
    fn max_pasid_log2(&self) -> u8 {
        self.pasid_log2
    }

    fn hw_info(&self) -> (u32, Vec<u8>) {
        // struct iommu_hw_info_vtd { __u32 flags; __u32 __reserved;
        //                            __aligned_u64 cap_reg, ecap_reg; }
        let mut data = Vec::with_capacity(24);
        data.extend_from_slice(&VTD_HW_INFO_FLAGS.to_ne_bytes());
        data.extend_from_slice(&0u32.to_ne_bytes());
        data.extend_from_slice(&VTD_CAP_REG.to_ne_bytes());
        data.extend_from_slice(&VTD_ECAP_REG.to_ne_bytes());
        (IOMMU_HW_INFO_TYPE_INTEL_VTD, data)
    }

    fn capabilities(&self) -> u64 {
        IOMMU_HW_CAP_DIRTY_TRACKING
    }

    fn alloc_paging_domain(&self, flags: u32) -> Result<Arc<dyn Domain>> {
        // intel_iommu_domain_alloc_user: unknown flags EOPNOTSUPP; a nest
        // parent is an ordinary second-stage domain (ECAP NEST is set)
        const VALID: u32 = IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
        if flags & !VALID != 0 {
            bail!(
                EOPNOTSUPP,
                "VT-d: HWPT flags {:#x} are not supported",
                flags & !VALID
            );
        }
        let d: Arc<dyn Domain> =
            VtdDomain::new(VTD_ADDR_WIDTH, flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0)?;
        Ok(d)
    }

    /// Automatic domains can track dirty pages (tracking stays off until
    /// someone turns it on): what lets a VFIO type1 container's
    /// `VFIO_IOMMU_DIRTY_PAGES` report exactly the pages a device wrote
    /// instead of every mapped page. (The kernel's default domains have no
    /// dirty ops, so the uAPI still refuses dirty tracking on an automatic
    /// HWPT with `EOPNOTSUPP`, as the kernel: `hwpt/ioctl.rs`.)
    fn alloc_auto_domain(&self) -> Result<Arc<dyn Domain>> {
        let d: Arc<dyn Domain> = VtdDomain::new(VTD_ADDR_WIDTH, true)?;
        Ok(d)
    }

    /// First-stage nesting (`vtd/nested.rs`).
    fn nesting(&self) -> Option<&dyn crate::domain::NestingOps> {
        Some(self)
    }

    fn check_attach(&self, domain: &dyn Domain) -> Result<()> {
        if domain.as_any().downcast_ref::<VtdDomain>().is_none() {
            bail!(
                EINVAL,
                "VT-d device: domain {} is not a VT-d domain",
                domain.id()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod driver_tests {
    use super::*;

    #[test]
    fn vtd_driver_info_and_domains() {
        let d = VtdDriver::default();
        assert_eq!(
            d.max_pasid_log2(),
            0,
            "a function without the PASID capability"
        );
        assert_eq!(VtdDriver::with_pasids(32).max_pasid_log2(), VTD_PASID_LOG2);
        let (ty, data) = d.hw_info();
        assert_eq!(ty, IOMMU_HW_INFO_TYPE_INTEL_VTD);
        assert_eq!(data.len(), 24);
        assert_eq!((VTD_CAP_REG >> 16) & 0x3f, 47, "MGAW");
        assert_eq!((VTD_CAP_REG >> 8) & 0x1f, 0b0110, "SAGAW 3/4-level");
        let cap = VTD_CAP_REG;
        let ecap = VTD_ECAP_REG;
        // the kernel's predicates (intel/iommu.h) on what we report
        let sm = (ecap >> 43) & 1 == 1;
        assert!(sm, "scalable mode");
        assert!(sm && (ecap >> 26) & 1 == 1, "nested_supported");
        assert!(sm && (ecap >> 40) & 1 == 1, "pasid_supported");
        assert_eq!((ecap >> 35) & 0x1f, 19, "PSS: 20-bit PASIDs");
        let ssads = sm && (ecap >> 45) & 1 == 1 && (ecap >> 48) & 1 == 1;
        assert_eq!(
            ssads,
            d.capabilities() & IOMMU_HW_CAP_DIRTY_TRACKING != 0,
            "second-stage A/D exactly when dirty tracking is reported"
        );
        assert_eq!((ecap >> 46) & 3, 3, "SLTS and FLTS");
        assert_eq!((ecap >> 29) & 1, 1, "PRS: page requests");
        assert_eq!((ecap >> 31) & 1, 1, "SRS");
        assert_eq!((ecap >> 34) & 1, 0, "no EAFS");
        assert_eq!((cap >> 34) & 0xf, 0b0011, "SLLPS 2 MiB, 1 GiB");
        assert_eq!((cap >> 56) & 1, 1, "FL1GP");
        assert_eq!((cap >> 60) & 1, 1, "FL5LP");
        assert_eq!((cap >> 10) & 1, 1, "SAGAW has the 4-level table we use");
        assert!(d.nesting().is_some());
        let dom = d
            .alloc_paging_domain(IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
            .unwrap();
        assert!(dom.dirty_tracking_supported());
        d.check_attach(dom.as_ref()).unwrap();
        d.alloc_paging_domain(IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
            .unwrap();
        assert_eq!(
            d.alloc_paging_domain(1 << 5).unwrap_err().errno().0,
            libc::EOPNOTSUPP
        );
    }
}
