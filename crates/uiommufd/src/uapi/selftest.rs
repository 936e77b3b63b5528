//! The selftest's uAPI (`drivers/iommu/iommufd/iommufd_test.h`):
//! `IOMMU_TEST_CMD` and the mock driver's data types, re-exported by
//! [`crate::uapi`] when the `selftest` feature is on.

#![allow(missing_docs)] // field names are the kernel's; see iommufd_test.h

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{io, IOMMUFD_CMD_TEST};

pub const IOMMU_TEST_CMD: u32 = io(IOMMUFD_CMD_TEST);

/// The selftest's vIOMMU type (`IOMMU_VIOMMU_TYPE_SELFTEST`).
pub const IOMMU_VIOMMU_TYPE_SELFTEST: u32 = 0xdeadbeef;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST`
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdeadbeef;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID`
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0xdadbeef;
/// The selftest's vEVENTQ type (`IOMMU_VEVENTQ_TYPE_SELFTEST`).
pub const IOMMU_VEVENTQ_TYPE_SELFTEST: u32 = 0xbeefbeef;
/// The selftest's HW queue type (`IOMMU_HW_QUEUE_TYPE_SELFTEST`).
pub const IOMMU_HW_QUEUE_TYPE_SELFTEST: u32 = 0xdeadbeef;
/// `IOMMU_TEST_HW_QUEUE_MAX`: HW queues per mock vIOMMU.
pub const IOMMU_TEST_HW_QUEUE_MAX: u32 = 2;

abi_struct! {
    /// `struct iommu_viommu_selftest` (driver data of a mock vIOMMU)
    pub struct IommuViommuSelftest {
        pub in_data: u32, pub out_data: u32, pub out_mmap_offset: u64, pub out_mmap_length: u64,
    }
}
abi_struct! {
    /// `struct iommu_viommu_invalidate_selftest` (one mock vIOMMU invalidation)
    pub struct IommuViommuInvalidateSelftest { pub flags: u32, pub vdev_id: u32, pub cache_id: u32 }
}
abi_struct! {
    /// `struct iommu_viommu_event_selftest` (the mock's vEVENT)
    pub struct IommuViommuEventSelftest { pub virt_id: u32 }
}
abi_struct! {
    /// `trigger_vevent` member of the test command.
    pub struct TestTriggerVevent { pub dev_id: u32 }
}

// ---------------------------------------------------------------------------
// The selftest's IOMMU_TEST_CMD (iommufd_test.h).

pub const IOMMU_TEST_OP_ADD_RESERVED: u32 = 1;
pub const IOMMU_TEST_OP_MOCK_DOMAIN: u32 = 2;
pub const IOMMU_TEST_OP_MD_CHECK_MAP: u32 = 3;
pub const IOMMU_TEST_OP_MD_CHECK_REFS: u32 = 4;
pub const IOMMU_TEST_OP_CREATE_ACCESS: u32 = 5;
pub const IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: u32 = 6;
pub const IOMMU_TEST_OP_ACCESS_PAGES: u32 = 7;
pub const IOMMU_TEST_OP_ACCESS_RW: u32 = 8;
pub const IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: u32 = 9;
pub const IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: u32 = 10;
pub const IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: u32 = 11;
pub const IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: u32 = 12;
pub const IOMMU_TEST_OP_DIRTY: u32 = 13;
pub const IOMMU_TEST_OP_MD_CHECK_IOTLB: u32 = 14;
pub const IOMMU_TEST_OP_TRIGGER_IOPF: u32 = 15;
/// Linux 6.13.
pub const IOMMU_TEST_OP_DEV_CHECK_CACHE: u32 = 16;
/// Linux 6.15: the mock device reports a vEVENT to its vIOMMU.
pub const IOMMU_TEST_OP_TRIGGER_VEVENT: u32 = 17;
/// Linux 6.15: attach a PASID of the selftest device.
pub const IOMMU_TEST_OP_PASID_ATTACH: u32 = 18;
/// Linux 6.15: replace a PASID's attachment.
pub const IOMMU_TEST_OP_PASID_REPLACE: u32 = 19;
/// Linux 6.15: detach a PASID.
pub const IOMMU_TEST_OP_PASID_DETACH: u32 = 20;
/// Linux 6.15: which HWPT a PASID is attached to.
pub const IOMMU_TEST_OP_PASID_CHECK_HWPT: u32 = 21;

/// `MOCK_IOMMUPT_DEFAULT`: a mock paging domain of 2 KiB pages over the mock
/// aperture (Linux 6.19 `iommu_hwpt_selftest.pagetable_type`).
pub const MOCK_IOMMUPT_DEFAULT: u32 = 0;
/// `MOCK_IOMMUPT_HUGE`: a mock paging domain that also maps huge pages.
pub const MOCK_IOMMUPT_HUGE: u32 = 1;
/// `MOCK_DEV_CACHE_ID_MAX`: the last index of a mock device's cache.
pub const MOCK_DEV_CACHE_ID_MAX: u32 = 3;
/// `MOCK_DEV_CACHE_NUM`: entries of a mock device's cache.
pub const MOCK_DEV_CACHE_NUM: usize = 4;
/// `IOMMU_TEST_DEV_CACHE_DEFAULT`: what every mock device cache entry holds
/// until a vIOMMU invalidation clears it.
pub const IOMMU_TEST_DEV_CACHE_DEFAULT: u32 = 0xbaddad;

pub const MOCK_FLAGS_ACCESS_WRITE: u32 = 1 << 0;
pub const MOCK_FLAGS_ACCESS_SYZ: u32 = 1 << 16;
pub const MOCK_ACCESS_RW_WRITE: u32 = 1 << 0;
pub const MOCK_ACCESS_RW_SLOW_PATH: u32 = 1 << 2;
pub const MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: u32 = 1 << 0;

pub const MOCK_APERTURE_START: u64 = 1 << 24;
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;

abi_struct! {
    /// `struct iommu_test_cmd`: a header, a 48-byte union and `last`.
    ///
    /// The union's members are the `Test*` structs below, read from and
    /// written to `payload` by the test handlers.
    pub struct IommuTestCmd {
        pub size: u32, pub op: u32, pub id: u32, pub __reserved: u32,
        pub payload: [u8; 48], pub last: u32, pub _pad: u32,
    }
}
abi_struct! {
    /// `add_reserved` member of the test command.
    pub struct TestAddReserved { pub start: u64, pub length: u64 }
}
abi_struct! {
    /// `check_refs` member of the test command.
    pub struct TestCheckRefs { pub length: u64, pub uptr: u64, pub refs: u32, pub _pad: u32 }
}
abi_struct! {
    /// `mock_domain` / `mock_domain_flags` member of the test command.
    pub struct TestMockDomainFlags { pub out_stdev_id: u32, pub out_hwpt_id: u32, pub out_idev_id: u32, pub dev_flags: u32 }
}
abi_struct! {
    /// `mock_domain_replace` member of the test command.
    pub struct TestMockDomainReplace { pub pt_id: u32 }
}
abi_struct! {
    /// `check_map` member of the test command.
    pub struct TestCheckMap { pub iova: u64, pub length: u64, pub uptr: u64 }
}
abi_struct! {
    /// `create_access` member of the test command.
    pub struct TestCreateAccess { pub out_access_fd: u32, pub flags: u32 }
}
abi_struct! {
    /// `destroy_access_pages` member of the test command.
    pub struct TestDestroyAccessPages { pub access_pages_id: u32 }
}
abi_struct! {
    /// `access_pages` member of the test command.
    pub struct TestAccessPages { pub flags: u32, pub out_access_pages_id: u32, pub iova: u64, pub length: u64, pub uptr: u64 }
}
abi_struct! {
    /// `access_rw` member of the test command.
    pub struct TestAccessRw { pub iova: u64, pub length: u64, pub uptr: u64, pub flags: u32, pub _pad: u32 }
}
abi_struct! {
    /// `access_replace_ioas` member of the test command.
    pub struct TestAccessReplaceIoas { pub ioas_id: u32 }
}
abi_struct! {
    /// `memory_limit` member of the test command.
    pub struct TestMemoryLimit { pub limit: u32 }
}
abi_struct! {
    /// `dirty` member of the test command (`IOMMU_TEST_OP_DIRTY`).
    pub struct TestDirty {
        pub flags: u32, pub _pad: u32, pub iova: u64, pub length: u64, pub page_size: u64, pub uptr: u64,
        pub out_nr_dirty: u64,
    }
}

/// The selftest's HWPT data type (`IOMMU_HWPT_DATA_SELFTEST`).
pub const IOMMU_HWPT_DATA_SELFTEST: u32 = 0xdead;
/// `IOMMU_TEST_IOTLB_DEFAULT`
pub const IOMMU_TEST_IOTLB_DEFAULT: u32 = 0xbadbeef;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdeadbeef;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID`
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0xdadbeef;
/// `IOMMU_TEST_INVALIDATE_FLAG_ALL`
pub const IOMMU_TEST_INVALIDATE_FLAG_ALL: u32 = 1 << 0;
/// `MOCK_NESTED_DOMAIN_IOTLB_ID_MAX`
pub const MOCK_NESTED_DOMAIN_IOTLB_ID_MAX: u32 = 3;
/// `MOCK_NESTED_DOMAIN_IOTLB_NUM`
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: usize = 4;

abi_struct! {
    /// `struct iommu_hwpt_selftest` (driver data of a mock nested HWPT; from
    /// Linux 6.19 also of a mock paging HWPT, whose `pagetable_type` it names)
    pub struct IommuHwptSelftest { pub iotlb: u32, pub pagetable_type: u32 }
}
abi_struct! {
    /// `struct iommu_hwpt_invalidate_selftest` (one mock invalidation request)
    pub struct IommuHwptInvalidateSelftest { pub flags: u32, pub iotlb_id: u32 }
}
abi_struct! {
    /// `check_iotlb` member of the test command.
    pub struct TestCheckIotlb { pub id: u32, pub iotlb: u32 }
}
abi_struct! {
    /// `pasid_attach` / `pasid_replace` / `pasid_detach` / `pasid_check`
    /// members of the test command (`pt_id` is `hwpt_id` for the check).
    pub struct TestPasid { pub pasid: u32, pub pt_id: u32 }
}
abi_struct! {
    /// `check_dev_cache` member of the test command.
    pub struct TestCheckDevCache { pub id: u32, pub cache: u32 }
}
abi_struct! {
    /// `trigger_iopf` member of the test command.
    pub struct TestTriggerIopf {
        pub dev_id: u32, pub pasid: u32, pub grpid: u32, pub perm: u32, pub addr: u64,
    }
}

/// Offset of `last` in `struct iommu_test_cmd` (its minimum size is the end of `last`).
pub const IOMMU_TEST_CMD_LAST_END: usize = 16 + 48 + 4;

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<IommuHwptSelftest>() == 8);
    assert!(size_of::<IommuHwptInvalidateSelftest>() == 8);
    assert!(size_of::<TestCheckIotlb>() == 8);
    assert!(size_of::<TestTriggerIopf>() == 24);
    assert!(size_of::<IommuViommuSelftest>() == 24);
    assert!(size_of::<IommuViommuInvalidateSelftest>() == 12);
    assert!(size_of::<IommuTestCmd>() == 72);
    assert!(size_of::<TestDirty>() == 48);
};
