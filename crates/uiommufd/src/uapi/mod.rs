//! The Linux 6.12 iommufd uAPI: ioctl numbers, constants and `#[repr(C)]`
//! layouts of `include/uapi/linux/iommufd.h` and (feature `selftest`, in
//! the `selftest` submodule, re-exported here) of the selftest's
//! `drivers/iommu/iommufd/iommufd_test.h`.
//!
//! Layouts are written from the header's field list and checked against the
//! C compiler's view by the conformance runner (which builds the kernel's own
//! selftest against the same header) and by the size assertions below. Every
//! struct derives zerocopy's traits so that the dispatcher copies bytes in and
//! out without `unsafe`.
//!
//! The *understood size* of each command (what decides `E2BIG` for trailing
//! non-zero bytes) is the size of the Rust struct here. No command of 6.12
//! grew up to 7.2 (`iommu_hw_info` only turned `out_data_type` into a union
//! of the same size), so one size per command serves every level; the
//! commands added after 6.12 are here too, each with the level it appeared
//! in ([`level::UapiLevel`], [`crate::dispatch`]).

#![allow(missing_docs)] // field names are the kernel's; see iommufd.h for each

pub mod level;
pub mod vfio;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `IOMMUFD_TYPE`, the ioctl type byte (`';'`).
pub const IOMMUFD_TYPE: u32 = b';' as u32;
/// First command number.
pub const IOMMUFD_CMD_BASE: u32 = 0x80;

/// `_IO(IOMMUFD_TYPE, nr)`: iommufd encodes no size or direction in its numbers.
pub const fn io(nr: u32) -> u32 {
    (IOMMUFD_TYPE << 8) | nr
}

pub const IOMMUFD_CMD_DESTROY: u32 = 0x80;
pub const IOMMUFD_CMD_IOAS_ALLOC: u32 = 0x81;
pub const IOMMUFD_CMD_IOAS_ALLOW_IOVAS: u32 = 0x82;
pub const IOMMUFD_CMD_IOAS_COPY: u32 = 0x83;
pub const IOMMUFD_CMD_IOAS_IOVA_RANGES: u32 = 0x84;
pub const IOMMUFD_CMD_IOAS_MAP: u32 = 0x85;
pub const IOMMUFD_CMD_IOAS_UNMAP: u32 = 0x86;
pub const IOMMUFD_CMD_OPTION: u32 = 0x87;
pub const IOMMUFD_CMD_VFIO_IOAS: u32 = 0x88;
pub const IOMMUFD_CMD_HWPT_ALLOC: u32 = 0x89;
pub const IOMMUFD_CMD_GET_HW_INFO: u32 = 0x8a;
pub const IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: u32 = 0x8b;
pub const IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: u32 = 0x8c;
pub const IOMMUFD_CMD_HWPT_INVALIDATE: u32 = 0x8d;
pub const IOMMUFD_CMD_FAULT_QUEUE_ALLOC: u32 = 0x8e;
/// Linux 6.13.
pub const IOMMUFD_CMD_IOAS_MAP_FILE: u32 = 0x8f;
/// Linux 6.13.
pub const IOMMUFD_CMD_VIOMMU_ALLOC: u32 = 0x90;
/// Linux 6.13.
pub const IOMMUFD_CMD_VDEVICE_ALLOC: u32 = 0x91;
/// Linux 6.14.
pub const IOMMUFD_CMD_IOAS_CHANGE_PROCESS: u32 = 0x92;
/// Linux 6.15.
pub const IOMMUFD_CMD_VEVENTQ_ALLOC: u32 = 0x93;
/// Linux 6.17.
pub const IOMMUFD_CMD_HW_QUEUE_ALLOC: u32 = 0x94;
/// The selftest's command, `IOMMUFD_CMD_BASE + 32`.
pub const IOMMUFD_CMD_TEST: u32 = IOMMUFD_CMD_BASE + 32;

pub const IOMMU_DESTROY: u32 = io(IOMMUFD_CMD_DESTROY);
pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_CMD_IOAS_ALLOC);
pub const IOMMU_IOAS_ALLOW_IOVAS: u32 = io(IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
pub const IOMMU_IOAS_COPY: u32 = io(IOMMUFD_CMD_IOAS_COPY);
pub const IOMMU_IOAS_IOVA_RANGES: u32 = io(IOMMUFD_CMD_IOAS_IOVA_RANGES);
pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_CMD_IOAS_MAP);
pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_CMD_IOAS_UNMAP);
pub const IOMMU_OPTION: u32 = io(IOMMUFD_CMD_OPTION);
pub const IOMMU_VFIO_IOAS: u32 = io(IOMMUFD_CMD_VFIO_IOAS);
pub const IOMMU_HWPT_ALLOC: u32 = io(IOMMUFD_CMD_HWPT_ALLOC);
pub const IOMMU_GET_HW_INFO: u32 = io(IOMMUFD_CMD_GET_HW_INFO);
pub const IOMMU_HWPT_SET_DIRTY_TRACKING: u32 = io(IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING);
pub const IOMMU_HWPT_GET_DIRTY_BITMAP: u32 = io(IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP);
pub const IOMMU_HWPT_INVALIDATE: u32 = io(IOMMUFD_CMD_HWPT_INVALIDATE);
pub const IOMMU_FAULT_QUEUE_ALLOC: u32 = io(IOMMUFD_CMD_FAULT_QUEUE_ALLOC);
pub const IOMMU_IOAS_MAP_FILE: u32 = io(IOMMUFD_CMD_IOAS_MAP_FILE);
pub const IOMMU_VIOMMU_ALLOC: u32 = io(IOMMUFD_CMD_VIOMMU_ALLOC);
pub const IOMMU_VDEVICE_ALLOC: u32 = io(IOMMUFD_CMD_VDEVICE_ALLOC);
pub const IOMMU_IOAS_CHANGE_PROCESS: u32 = io(IOMMUFD_CMD_IOAS_CHANGE_PROCESS);
pub const IOMMU_VEVENTQ_ALLOC: u32 = io(IOMMUFD_CMD_VEVENTQ_ALLOC);
pub const IOMMU_HW_QUEUE_ALLOC: u32 = io(IOMMUFD_CMD_HW_QUEUE_ALLOC);

// IOAS map flags.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

// Options.
pub const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
pub const IOMMU_OPTION_HUGE_PAGES: u32 = 1;
pub const IOMMU_OPTION_OP_SET: u16 = 0;
pub const IOMMU_OPTION_OP_GET: u16 = 1;

// VFIO IOAS ops.
pub const IOMMU_VFIO_IOAS_GET: u16 = 0;
pub const IOMMU_VFIO_IOAS_SET: u16 = 1;
pub const IOMMU_VFIO_IOAS_CLEAR: u16 = 2;

// HWPT alloc flags.
pub const IOMMU_HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
pub const IOMMU_HWPT_ALLOC_DIRTY_TRACKING: u32 = 1 << 1;
pub const IOMMU_HWPT_FAULT_ID_VALID: u32 = 1 << 2;
/// Linux 6.15: a HWPT that devices may attach PASIDs to.
pub const IOMMU_HWPT_ALLOC_PASID: u32 = 1 << 3;
pub const IOMMU_HWPT_DATA_NONE: u32 = 0;
pub const IOMMU_HWPT_DATA_VTD_S1: u32 = 1;

// HW info.
pub const IOMMU_HW_INFO_TYPE_NONE: u32 = 0;
pub const IOMMU_HW_INFO_TYPE_INTEL_VTD: u32 = 1;
pub const IOMMU_HW_CAP_DIRTY_TRACKING: u64 = 1 << 0;
pub const IOMMU_HW_CAP_PCI_PASID_EXEC: u64 = 1 << 1;
pub const IOMMU_HW_CAP_PCI_PASID_PRIV: u64 = 1 << 2;

// Dirty tracking.
pub const IOMMU_HWPT_DIRTY_TRACKING_ENABLE: u32 = 1;
pub const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: u32 = 1;

/// Generates the zerocopy derives every ABI struct needs (the user imports
/// `zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout}`).
macro_rules! abi_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl Default for $name {
            fn default() -> Self {
                <Self as zerocopy::FromZeros>::new_zeroed()
            }
        }
    };
}
pub(crate) use abi_struct;

// The selftest's part of the uAPI (after the macro, which it uses).
#[cfg(feature = "selftest")]
mod selftest;
#[cfg(feature = "selftest")]
pub use selftest::*;

abi_struct! {
    /// `struct iommu_destroy`
    pub struct IommuDestroy { pub size: u32, pub id: u32 }
}
abi_struct! {
    /// `struct iommu_ioas_alloc`
    pub struct IommuIoasAlloc { pub size: u32, pub flags: u32, pub out_ioas_id: u32 }
}
abi_struct! {
    /// `struct iommu_iova_range` (inclusive `last`)
    pub struct IommuIovaRange { pub start: u64, pub last: u64 }
}
abi_struct! {
    /// `struct iommu_ioas_iova_ranges`
    pub struct IommuIoasIovaRanges {
        pub size: u32, pub ioas_id: u32, pub num_iovas: u32, pub __reserved: u32,
        pub allowed_iovas: u64, pub out_iova_alignment: u64,
    }
}
abi_struct! {
    /// `struct iommu_ioas_allow_iovas`
    pub struct IommuIoasAllowIovas {
        pub size: u32, pub ioas_id: u32, pub num_iovas: u32, pub __reserved: u32,
        pub allowed_iovas: u64,
    }
}
abi_struct! {
    /// `struct iommu_ioas_map`
    pub struct IommuIoasMap {
        pub size: u32, pub flags: u32, pub ioas_id: u32, pub __reserved: u32,
        pub user_va: u64, pub length: u64, pub iova: u64,
    }
}
abi_struct! {
    /// `struct iommu_ioas_map_file` (Linux 6.13)
    pub struct IommuIoasMapFile {
        pub size: u32, pub flags: u32, pub ioas_id: u32, pub fd: i32,
        pub start: u64, pub length: u64, pub iova: u64,
    }
}
abi_struct! {
    /// `struct iommu_ioas_change_process` (Linux 6.14)
    pub struct IommuIoasChangeProcess { pub size: u32, pub __reserved: u32 }
}
abi_struct! {
    /// `struct iommu_ioas_copy`
    pub struct IommuIoasCopy {
        pub size: u32, pub flags: u32, pub dst_ioas_id: u32, pub src_ioas_id: u32,
        pub length: u64, pub dst_iova: u64, pub src_iova: u64,
    }
}
abi_struct! {
    /// `struct iommu_ioas_unmap`
    pub struct IommuIoasUnmap { pub size: u32, pub ioas_id: u32, pub iova: u64, pub length: u64 }
}
abi_struct! {
    /// `struct iommu_option`
    pub struct IommuOption {
        pub size: u32, pub option_id: u32, pub op: u16, pub __reserved: u16,
        pub object_id: u32, pub val64: u64,
    }
}
abi_struct! {
    /// `struct iommu_vfio_ioas`
    pub struct IommuVfioIoas { pub size: u32, pub ioas_id: u32, pub op: u16, pub __reserved: u16 }
}
abi_struct! {
    /// `struct iommu_hwpt_alloc`
    pub struct IommuHwptAlloc {
        pub size: u32, pub flags: u32, pub dev_id: u32, pub pt_id: u32,
        pub out_hwpt_id: u32, pub __reserved: u32, pub data_type: u32, pub data_len: u32,
        pub data_uptr: u64, pub fault_id: u32, pub __reserved2: u32,
    }
}
abi_struct! {
    /// `struct iommu_hw_info` (Debian 6.12: with `out_max_pasid_log2`)
    pub struct IommuHwInfo {
        pub size: u32, pub flags: u32, pub dev_id: u32, pub data_len: u32,
        pub data_uptr: u64, pub out_data_type: u32, pub out_max_pasid_log2: u8,
        pub __reserved: [u8; 3], pub out_capabilities: u64,
    }
}
abi_struct! {
    /// `struct iommu_hwpt_set_dirty_tracking`
    pub struct IommuHwptSetDirtyTracking {
        pub size: u32, pub flags: u32, pub hwpt_id: u32, pub __reserved: u32,
    }
}
abi_struct! {
    /// `struct iommu_hwpt_get_dirty_bitmap`
    pub struct IommuHwptGetDirtyBitmap {
        pub size: u32, pub hwpt_id: u32, pub flags: u32, pub __reserved: u32,
        pub iova: u64, pub length: u64, pub page_size: u64, pub data: u64,
    }
}
abi_struct! {
    /// `struct iommu_hwpt_invalidate`
    pub struct IommuHwptInvalidate {
        pub size: u32, pub hwpt_id: u32, pub data_uptr: u64, pub data_type: u32,
        pub entry_len: u32, pub entry_num: u32, pub __reserved: u32,
    }
}
abi_struct! {
    /// `struct iommu_viommu_alloc` (Linux 6.13)
    pub struct IommuViommuAlloc {
        pub size: u32, pub flags: u32, pub r#type: u32, pub dev_id: u32,
        pub hwpt_id: u32, pub out_viommu_id: u32, pub data_len: u32, pub __reserved: u32,
        pub data_uptr: u64,
    }
}
abi_struct! {
    /// `struct iommu_vdevice_alloc` (Linux 6.13)
    pub struct IommuVdeviceAlloc {
        pub size: u32, pub viommu_id: u32, pub dev_id: u32, pub out_vdevice_id: u32,
        pub virt_id: u64,
    }
}
abi_struct! {
    /// `struct iommu_veventq_alloc` (Linux 6.15)
    pub struct IommuVeventqAlloc {
        pub size: u32, pub flags: u32, pub viommu_id: u32, pub r#type: u32,
        pub veventq_depth: u32, pub out_veventq_id: u32, pub out_veventq_fd: u32, pub __reserved: u32,
    }
}
abi_struct! {
    /// `struct iommu_hw_queue_alloc` (Linux 6.17)
    pub struct IommuHwQueueAlloc {
        pub size: u32, pub flags: u32, pub viommu_id: u32, pub r#type: u32,
        pub index: u32, pub out_hw_queue_id: u32, pub nesting_parent_iova: u64, pub length: u64,
    }
}
abi_struct! {
    /// `struct iommufd_vevent_header`: what precedes each vEVENT read from a
    /// vEVENTQ fd (alone, with `LOST_EVENTS`, after an overflow).
    pub struct IommufdVeventHeader { pub flags: u32, pub sequence: u32 }
}

/// `IOMMU_VIOMMU_TYPE_DEFAULT` (reserved: refused).
pub const IOMMU_VIOMMU_TYPE_DEFAULT: u32 = 0;
/// `IOMMU_VEVENTQ_TYPE_DEFAULT` (reserved: refused).
pub const IOMMU_VEVENTQ_TYPE_DEFAULT: u32 = 0;
/// `IOMMU_HW_QUEUE_TYPE_DEFAULT` (reserved: refused).
pub const IOMMU_HW_QUEUE_TYPE_DEFAULT: u32 = 0;
/// `IOMMU_VEVENTQ_FLAG_LOST_EVENTS`: the header stands for lost vEVENTs.
pub const IOMMU_VEVENTQ_FLAG_LOST_EVENTS: u32 = 1 << 0;

abi_struct! {
    /// `struct iommu_fault_alloc`
    pub struct IommuFaultAlloc { pub size: u32, pub flags: u32, pub out_fault_id: u32, pub out_fault_fd: u32 }
}

// ---------------------------------------------------------------------------
// Nested HWPTs, invalidation and I/O page faults.

pub const IOMMU_PGFAULT_FLAGS_PASID_VALID: u32 = 1 << 0;
pub const IOMMU_PGFAULT_FLAGS_LAST_PAGE: u32 = 1 << 1;
pub const IOMMU_PGFAULT_PERM_READ: u32 = 1 << 0;
pub const IOMMU_PGFAULT_PERM_WRITE: u32 = 1 << 1;
pub const IOMMU_PGFAULT_PERM_EXEC: u32 = 1 << 2;
pub const IOMMU_PGFAULT_PERM_PRIV: u32 = 1 << 3;
pub const IOMMUFD_PAGE_RESP_SUCCESS: u32 = 0;
pub const IOMMUFD_PAGE_RESP_INVALID: u32 = 1;

abi_struct! {
    /// `struct iommu_hwpt_pgfault`: one fault record read from a fault fd.
    pub struct IommuHwptPgfault {
        pub flags: u32, pub dev_id: u32, pub pasid: u32, pub grpid: u32, pub perm: u32,
        pub __reserved: u32, pub addr: u64, pub length: u32, pub cookie: u32,
    }
}
abi_struct! {
    /// `struct iommu_hwpt_page_response`: one response written to a fault fd.
    pub struct IommuHwptPageResponse { pub cookie: u32, pub code: u32 }
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<IommuHwptPgfault>() == 40);
    assert!(size_of::<IommuHwptPageResponse>() == 8);
};

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<IommuDestroy>() == 8);
    assert!(size_of::<IommuIoasAlloc>() == 12);
    assert!(size_of::<IommuIoasIovaRanges>() == 32);
    assert!(size_of::<IommuIoasAllowIovas>() == 24);
    assert!(size_of::<IommuIoasMap>() == 40);
    assert!(size_of::<IommuIoasMapFile>() == 40);
    assert!(size_of::<IommuIoasChangeProcess>() == 8);
    assert!(size_of::<IommuIoasCopy>() == 40);
    assert!(size_of::<IommuIoasUnmap>() == 24);
    assert!(size_of::<IommuOption>() == 24);
    assert!(size_of::<IommuVfioIoas>() == 12);
    assert!(size_of::<IommuHwptAlloc>() == 48);
    assert!(size_of::<IommuHwInfo>() == 40);
    assert!(size_of::<IommuHwptSetDirtyTracking>() == 16);
    assert!(size_of::<IommuHwptGetDirtyBitmap>() == 48);
    assert!(size_of::<IommuHwptInvalidate>() == 32);
    assert!(size_of::<IommuFaultAlloc>() == 16);
    assert!(size_of::<IommuViommuAlloc>() == 40);
    assert!(size_of::<IommuVdeviceAlloc>() == 24);
    assert!(size_of::<IommuVeventqAlloc>() == 32);
    assert!(size_of::<IommuHwQueueAlloc>() == 40);
    assert!(size_of::<IommufdVeventHeader>() == 8);
};
