//! The VFIO group and device uAPI (`include/uapi/linux/vfio.h`, Linux
//! 6.12): ioctl numbers, flags and `#[repr(C)]` layouts, written from the
//! header's field lists and pinned by the size assertions at the end.

#![allow(missing_docs)] // names are the header's; see vfio.h for each

/// `struct vfio_info_cap_header` (the whole of the MSI-X mappable
/// capability): the container uAPI's.
pub use crate::uapi::vfio::VfioInfoCapHeader;
use crate::uapi::vfio::{vfio_io, vfio_struct};

// Group ioctls.
pub const VFIO_GROUP_GET_STATUS: u32 = vfio_io(3);
pub const VFIO_GROUP_SET_CONTAINER: u32 = vfio_io(4);
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = vfio_io(5);
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = vfio_io(6);

pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

// Device ioctls.
pub const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
pub const VFIO_DEVICE_SET_IRQS: u32 = vfio_io(10);
pub const VFIO_DEVICE_RESET: u32 = vfio_io(11);
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = vfio_io(12);
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = vfio_io(13);
pub const VFIO_DEVICE_IOEVENTFD: u32 = vfio_io(16);
pub const VFIO_DEVICE_FEATURE: u32 = vfio_io(17);
pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = vfio_io(18);
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = vfio_io(19);
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u32 = vfio_io(20);

// `vfio_device_info.flags`
pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
pub const VFIO_DEVICE_FLAGS_CAPS: u32 = 1 << 7;

// `vfio_region_info.flags`
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;

// `vfio_irq_info.flags`
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

// `vfio_irq_set.flags`
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
pub const VFIO_IRQ_SET_DATA_TYPE_MASK: u32 =
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
pub const VFIO_IRQ_SET_ACTION_TYPE_MASK: u32 =
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

// vfio-pci region and IRQ indexes.
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
pub const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;
/// The device-specific region after the fixed ones: the seed's v1
/// migration region (QEMU 7.2 finds it by its type capability).
pub const VFIO_PCI_MIGRATION_REGION_INDEX: u32 = VFIO_PCI_NUM_REGIONS;
/// `VFIO_REGION_INFO_CAP_TYPE` (2; 1 is `VFIO_REGION_INFO_CAP_SPARSE_MMAP`).
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

/// vfio-pci's region offsets: the index in the bits above 40
/// (`VFIO_PCI_OFFSET_SHIFT`).
pub const VFIO_PCI_OFFSET_SHIFT: u32 = 40;
/// The offset within a region (`VFIO_PCI_OFFSET_MASK`).
pub const VFIO_PCI_OFFSET_MASK: u64 = (1 << VFIO_PCI_OFFSET_SHIFT) - 1;

// `vfio_device_feature.flags`
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;

pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID: u32 = 1 << 0;
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED: u32 = 1 << 1;

vfio_struct! {
    /// `struct vfio_group_status`
    pub struct VfioGroupStatus { pub argsz: u32, pub flags: u32 }
}
vfio_struct! {
    /// `struct vfio_device_info`
    pub struct VfioDeviceInfo {
        pub argsz: u32, pub flags: u32, pub num_regions: u32, pub num_irqs: u32,
        pub cap_offset: u32, pub pad: u32,
    }
}
vfio_struct! {
    /// `struct vfio_region_info`
    pub struct VfioRegionInfo {
        pub argsz: u32, pub flags: u32, pub index: u32, pub cap_offset: u32,
        pub size: u64, pub offset: u64,
    }
}
vfio_struct! {
    /// `struct vfio_irq_info`
    pub struct VfioIrqInfo { pub argsz: u32, pub flags: u32, pub index: u32, pub count: u32 }
}
vfio_struct! {
    /// `struct vfio_irq_set` without its flexible `data[]`
    pub struct VfioIrqSet {
        pub argsz: u32, pub flags: u32, pub index: u32, pub start: u32, pub count: u32,
    }
}
vfio_struct! {
    /// `struct vfio_pci_hot_reset_info` without its flexible `devices[]`
    pub struct VfioPciHotResetInfo { pub argsz: u32, pub flags: u32, pub count: u32 }
}
vfio_struct! {
    /// `struct vfio_pci_hot_reset` without its flexible `group_fds[]`
    pub struct VfioPciHotReset { pub argsz: u32, pub flags: u32, pub count: u32 }
}
vfio_struct! {
    /// `struct vfio_device_feature` without its flexible `data[]`
    pub struct VfioDeviceFeature { pub argsz: u32, pub flags: u32 }
}
vfio_struct! {
    /// `struct vfio_device_bind_iommufd`
    pub struct VfioDeviceBindIommufd {
        pub argsz: u32, pub flags: u32, pub iommufd: i32, pub out_devid: u32,
    }
}
vfio_struct! {
    /// `struct vfio_device_attach_iommufd_pt`
    pub struct VfioDeviceAttachIommufdPt { pub argsz: u32, pub flags: u32, pub pt_id: u32 }
}
vfio_struct! {
    /// `struct vfio_device_attach_iommufd_pt` as Linux 6.15 extended it:
    /// the PASID to attach when `flags` has [`VFIO_DEVICE_ATTACH_PASID`]
    /// (the 6.12 layout above stays for callers that attach the RID).
    pub struct VfioDeviceAttachIommufdPtPasid {
        pub argsz: u32, pub flags: u32, pub pt_id: u32, pub pasid: u32,
    }
}
vfio_struct! {
    /// `struct vfio_device_detach_iommufd_pt`
    pub struct VfioDeviceDetachIommufdPt { pub argsz: u32, pub flags: u32 }
}
vfio_struct! {
    /// `struct vfio_device_detach_iommufd_pt` as Linux 6.15 extended it:
    /// the PASID to detach when `flags` has [`VFIO_DEVICE_DETACH_PASID`].
    pub struct VfioDeviceDetachIommufdPtPasid { pub argsz: u32, pub flags: u32, pub pasid: u32 }
}

vfio_struct! {
    /// `struct vfio_device_ioeventfd`
    pub struct VfioDeviceIoeventfd {
        pub argsz: u32, pub flags: u32, pub offset: u64, pub data: u64, pub fd: i32,
        pub reserved: u32,
    }
}

/// `VFIO_DEVICE_IOEVENTFD` size flags: the write is 1, 2, 4 or 8 bytes.
pub const VFIO_DEVICE_IOEVENTFD_SIZE_MASK: u32 = 0xf;

vfio_struct! {
    /// `struct vfio_device_feature_dma_buf` without its `dma_ranges[]`
    /// (each a `struct vfio_region_dma_range { u64 offset, length }`).
    pub struct VfioDeviceFeatureDmaBuf {
        pub region_index: u32, pub open_flags: u32, pub flags: u32, pub nr_ranges: u32,
    }
}

/// `VFIO_DEVICE_FEATURE_DMA_BUF` (6.19): export ranges of a BAR as a dma-buf.
pub const VFIO_DEVICE_FEATURE_DMA_BUF: u32 = 11;

/// `VFIO_DEVICE_BIND_IOMMUFD` flag (6.17): `token_uuid_ptr` points to the
/// SR-IOV VF token.
pub const VFIO_DEVICE_BIND_FLAG_TOKEN: u32 = 1 << 0;
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` flag (6.15): attach `pasid`, not the RID.
pub const VFIO_DEVICE_ATTACH_PASID: u32 = 1 << 0;
/// `VFIO_DEVICE_DETACH_IOMMUFD_PT` flag (6.15): detach `pasid`, not the RID.
pub const VFIO_DEVICE_DETACH_PASID: u32 = 1 << 0;

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<VfioGroupStatus>() == 8);
    assert!(size_of::<VfioDeviceInfo>() == 24);
    assert!(size_of::<VfioRegionInfo>() == 32);
    assert!(size_of::<VfioDeviceAttachIommufdPtPasid>() == 16);
    assert!(size_of::<VfioDeviceDetachIommufdPtPasid>() == 12);
    assert!(size_of::<VfioIrqInfo>() == 16);
    assert!(size_of::<VfioIrqSet>() == 20);
    assert!(size_of::<VfioPciHotResetInfo>() == 12);
    assert!(size_of::<VfioPciHotReset>() == 12);
    assert!(size_of::<VfioDeviceFeature>() == 8);
    assert!(size_of::<VfioDeviceBindIommufd>() == 16);
    assert!(size_of::<VfioDeviceAttachIommufdPt>() == 12);
    assert!(size_of::<VfioDeviceDetachIommufdPt>() == 8);
    assert!(size_of::<VfioInfoCapHeader>() == 8);
};
