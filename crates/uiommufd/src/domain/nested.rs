//! What a driver with user-managed (nested) domains implements, and the
//! driver data the core hands it: [`NestedDomain`] (the kernel's
//! `IOMMU_DOMAIN_NESTED` with `cache_invalidate_user`), [`UserData`] and
//! [`UserDataArray`] (`iommu_user_data`, `iommu_user_data_array`) with the
//! kernel's copy rules.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use zerocopy::{FromBytes, IntoBytes};

use crate::user::UserMemory;
use crate::{bail, Error, Result};

/// A user-managed domain (the kernel's `IOMMU_DOMAIN_NESTED` with
/// `cache_invalidate_user`), made by a driver on top of a parent domain.
pub trait NestedDomain: Send + Sync + Debug + Any {
    /// Process-unique identity.
    fn id(&self) -> u64;
    /// Handle the invalidation requests of `array` in order, stopping at the
    /// first that fails. Returns how many were handled and the result.
    fn cache_invalidate_user(&self, array: &UserDataArray<'_>) -> (u32, Result<()>);
    /// The domain a device attached to this nested domain does DMA
    /// through, translating both stages (the user's stage 1, then the
    /// parent). Default `None`: DMA goes through the parent's stage-2
    /// mapping only (a driver that does not walk the user's table, such as
    /// the mock's).
    fn dma_domain(&self) -> Option<Arc<dyn crate::domain::Domain>> {
        None
    }
    /// For drivers to recognise their own domains.
    fn as_any(&self) -> &dyn Any;
}

/// Driver-specific user data of one struct (the kernel's `iommu_user_data`).
#[derive(Debug, Clone, Copy)]
pub struct UserData<'a> {
    /// `IOMMU_HWPT_DATA_*` type the user declared.
    pub data_type: u32,
    /// User address of the struct.
    pub uptr: u64,
    /// Length the user declared.
    pub len: u32,
    /// The memory `uptr` refers to.
    pub mem: &'a dyn UserMemory,
}

/// A driver's one kind of nested-domain data (what
/// [`UserData::check_nested_request`] accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedDataKind {
    /// The driver, as messages name it.
    pub driver: &'static str,
    /// Its `IOMMU_HWPT_DATA_*` type.
    pub data_type: u32,
    /// That type's uAPI name.
    pub name: &'static str,
}

impl UserData<'_> {
    /// The request check a driver's nested-domain allocation starts with:
    /// `flags` outside `allowed`, then a data type other than the driver's
    /// `kind`, are `EOPNOTSUPP`.
    pub fn check_nested_request(
        &self,
        kind: &NestedDataKind,
        flags: u32,
        allowed: u32,
    ) -> Result<()> {
        let NestedDataKind {
            driver,
            data_type,
            name,
        } = kind;
        if flags & !allowed != 0 {
            bail!(
                EOPNOTSUPP,
                "{driver}: flags {:#x} are not supported for a nested domain",
                flags & !allowed
            );
        }
        if self.data_type != *data_type {
            bail!(
                EOPNOTSUPP,
                "{driver}: nested data type {:#x} is not {name}",
                self.data_type
            );
        }
        Ok(())
    }

    /// Copy the struct as a `T` of type `data_type`, whose first version ends
    /// at byte `min_len` (`iommu_copy_struct_from_user`): `EINVAL` for another
    /// type or a length outside `min_len..=size_of::<T>()`, `EFAULT` for an
    /// unreadable pointer; bytes past `len` are zero.
    pub fn copy_struct<T: FromBytes + IntoBytes>(
        &self,
        data_type: u32,
        min_len: usize,
    ) -> Result<T> {
        if self.data_type != data_type {
            bail!(
                EINVAL,
                "driver data type {:#x} is not the expected {data_type:#x}",
                self.data_type
            );
        }
        let len = self.len as usize;
        if len < min_len || len > size_of::<T>() {
            bail!(
                EINVAL,
                "driver data length {len} is outside {min_len}..={}",
                size_of::<T>()
            );
        }
        let mut v = T::new_zeroed();
        self.mem
            .read(self.uptr, &mut v.as_mut_bytes()[..len])
            .map_err(|_| {
                Error::new(
                    libc::EFAULT,
                    format!("cannot read {len} bytes of driver data at {:#x}", self.uptr),
                )
            })?;
        Ok(v)
    }
}

/// An array of driver-specific entries (the kernel's `iommu_user_data_array`).
#[derive(Debug, Clone, Copy)]
pub struct UserDataArray<'a> {
    /// Entry type the user declared.
    pub data_type: u32,
    /// User address of entry 0.
    pub uptr: u64,
    /// Bytes per entry (the user's struct size).
    pub entry_len: u32,
    /// Number of entries.
    pub entry_num: u32,
    /// The memory `uptr` refers to.
    pub mem: &'a dyn UserMemory,
}

impl UserDataArray<'_> {
    /// Copy entry `index` as a `T` (`iommu_copy_struct_from_user_array`):
    /// the rules of [`UserData::copy_struct`] with `entry_len` as the length.
    pub fn copy_entry<T: FromBytes + IntoBytes>(
        &self,
        data_type: u32,
        index: u32,
        min_len: usize,
    ) -> Result<T> {
        if index >= self.entry_num {
            bail!(
                EINVAL,
                "entry {index} is past the {} entries",
                self.entry_num
            );
        }
        let off = self.entry_len as u64 * index as u64;
        let Some(uptr) = self.uptr.checked_add(off) else {
            bail!(EFAULT, "entry {index} wraps the address space");
        };
        UserData {
            data_type: self.data_type,
            uptr,
            len: self.entry_len,
            mem: self.mem,
        }
        .copy_struct(data_type, min_len)
        .map_err(|e| Error::new(e.errno().0, format!("entry {index}: {}", e.reason())))
    }

    /// The loop of a driver's `cache_invalidate_user`: another data type
    /// than `data_type` is `EINVAL` with nothing done; then each entry is
    /// copied as a `T` ([`UserDataArray::copy_entry`]) and handed to
    /// `handle(index, entry)`, in order, up to the first failure. Returns
    /// the entries handled (what the kernel writes back to `entry_num`) and
    /// the result.
    pub fn for_each_entry<T: FromBytes + IntoBytes>(
        &self,
        data_type: u32,
        min_len: usize,
        mut handle: impl FnMut(u32, T) -> Result<()>,
    ) -> (u32, Result<()>) {
        if self.data_type != data_type {
            return (
                0,
                Err(crate::err!(
                    EINVAL,
                    "HWPT_INVALIDATE: data_type {:#x} is not the driver's {data_type:#x}",
                    self.data_type
                )),
            );
        }
        for i in 0..self.entry_num {
            let r = self
                .copy_entry(data_type, i, min_len)
                .and_then(|v| handle(i, v));
            if let Err(e) = r {
                return (i, Err(e));
            }
        }
        (self.entry_num, Ok(()))
    }
}
