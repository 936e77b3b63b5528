//! The VFIO type1 container uAPI (`include/uapi/linux/vfio.h`) that the
//! iommufd fd answers in compatibility mode: ioctl numbers, constants and
//! `#[repr(C)]` layouts, written from the header's field lists and pinned by
//! the size assertions at the end.
//!
//! Unlike iommufd's, VFIO's structs carry `argsz` (not `size`) and the
//! handlers read only the prefix they need (`minsz`), so these are never
//! copied by the dispatcher's size rule.

#![allow(missing_docs)] // names are the header's; see vfio.h for each

/// `VFIO_TYPE`: the same type byte as iommufd (`';'`).
pub const VFIO_TYPE: u32 = b';' as u32;
/// `VFIO_BASE`: VFIO numbers start at 100 (below `IOMMUFD_CMD_BASE`).
pub const VFIO_BASE: u32 = 100;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`
pub const fn vfio_io(n: u32) -> u32 {
    (VFIO_TYPE << 8) | (VFIO_BASE + n)
}

pub const VFIO_API_VERSION: i32 = 0;

// Extensions (`VFIO_CHECK_EXTENSION` arguments, `VFIO_SET_IOMMU` types).
pub const VFIO_TYPE1_IOMMU: u64 = 1;
pub const VFIO_SPAPR_TCE_IOMMU: u64 = 2;
pub const VFIO_TYPE1V2_IOMMU: u64 = 3;
pub const VFIO_DMA_CC_IOMMU: u64 = 4;
pub const VFIO_EEH: u64 = 5;
pub const VFIO_TYPE1_NESTING_IOMMU: u64 = 6;
pub const VFIO_SPAPR_TCE_V2_IOMMU: u64 = 7;
pub const VFIO_NOIOMMU_IOMMU: u64 = 8;
pub const VFIO_UNMAP_ALL: u64 = 9;
pub const VFIO_UPDATE_VADDR: u64 = 10;

// Container and type1 ioctl numbers.
pub const VFIO_GET_API_VERSION: u32 = vfio_io(0);
pub const VFIO_CHECK_EXTENSION: u32 = vfio_io(1);
pub const VFIO_SET_IOMMU: u32 = vfio_io(2);
pub const VFIO_IOMMU_GET_INFO: u32 = vfio_io(12);
pub const VFIO_IOMMU_MAP_DMA: u32 = vfio_io(13);
pub const VFIO_IOMMU_UNMAP_DMA: u32 = vfio_io(14);
pub const VFIO_IOMMU_ENABLE: u32 = vfio_io(15);
pub const VFIO_IOMMU_DISABLE: u32 = vfio_io(16);
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = vfio_io(17);

// `vfio_iommu_type1_info.flags`
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;

// Capability IDs of the type1 info chain.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: u16 = 2;
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

// `vfio_iommu_type1_dma_map.flags`
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;

// `vfio_iommu_type1_dma_unmap.flags`
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

// `vfio_iommu_type1_dirty_bitmap.flags`
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

/// A VFIO `#[repr(C)]` struct with the zerocopy derives every layout needs
/// (shared with the device and group uAPI in `crate::vfio::uapi`).
macro_rules! vfio_struct {
    ($(#[$m:meta])* pub struct $name:ident { $(pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout)]
        pub struct $name { $(pub $f: $t),* }
    };
}
pub(crate) use vfio_struct;

vfio_struct! {
    /// `struct vfio_info_cap_header`
    pub struct VfioInfoCapHeader { pub id: u16, pub version: u16, pub next: u32 }
}
vfio_struct! {
    /// `struct vfio_iommu_type1_info`
    pub struct VfioIommuType1Info {
        pub argsz: u32, pub flags: u32, pub iova_pgsizes: u64, pub cap_offset: u32, pub pad: u32,
    }
}
vfio_struct! {
    /// `struct vfio_iova_range` (inclusive `end`)
    pub struct VfioIovaRange { pub start: u64, pub end: u64 }
}
vfio_struct! {
    /// `struct vfio_iommu_type1_info_cap_iova_range` without its flexible
    /// `iova_ranges[]` (which follows it)
    pub struct VfioIommuType1InfoCapIovaRange {
        pub header: VfioInfoCapHeader, pub nr_iovas: u32, pub reserved: u32,
    }
}
vfio_struct! {
    /// `struct vfio_iommu_type1_info_cap_migration`
    pub struct VfioIommuType1InfoCapMigration {
        pub header: VfioInfoCapHeader, pub flags: u32, pub _pad: u32,
        pub pgsize_bitmap: u64, pub max_dirty_bitmap_size: u64,
    }
}
vfio_struct! {
    /// `struct vfio_iommu_type1_info_dma_avail`
    pub struct VfioIommuType1InfoDmaAvail { pub header: VfioInfoCapHeader, pub avail: u32 }
}
vfio_struct! {
    /// `struct vfio_iommu_type1_dma_map`
    pub struct VfioIommuType1DmaMap {
        pub argsz: u32, pub flags: u32, pub vaddr: u64, pub iova: u64, pub size: u64,
    }
}
vfio_struct! {
    /// `struct vfio_bitmap`
    pub struct VfioBitmap { pub pgsize: u64, pub size: u64, pub data: u64 }
}
vfio_struct! {
    /// `struct vfio_iommu_type1_dma_unmap` without its flexible `data[]`
    /// (a [`VfioBitmap`] with `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`)
    pub struct VfioIommuType1DmaUnmap { pub argsz: u32, pub flags: u32, pub iova: u64, pub size: u64 }
}
vfio_struct! {
    /// `struct vfio_iommu_type1_dirty_bitmap` without its flexible `data[]`
    pub struct VfioIommuType1DirtyBitmap { pub argsz: u32, pub flags: u32 }
}
vfio_struct! {
    /// `struct vfio_iommu_type1_dirty_bitmap_get`
    pub struct VfioIommuType1DirtyBitmapGet { pub iova: u64, pub size: u64, pub bitmap: VfioBitmap }
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<VfioInfoCapHeader>() == 8);
    assert!(size_of::<VfioIommuType1Info>() == 24);
    assert!(size_of::<VfioIovaRange>() == 16);
    assert!(size_of::<VfioIommuType1InfoCapIovaRange>() == 16);
    assert!(size_of::<VfioIommuType1InfoCapMigration>() == 32);
    assert!(size_of::<VfioIommuType1InfoDmaAvail>() == 12);
    assert!(size_of::<VfioIommuType1DmaMap>() == 32);
    assert!(size_of::<VfioBitmap>() == 24);
    assert!(size_of::<VfioIommuType1DmaUnmap>() == 24);
    assert!(size_of::<VfioIommuType1DirtyBitmap>() == 8);
    assert!(size_of::<VfioIommuType1DirtyBitmapGet>() == 40);
};
