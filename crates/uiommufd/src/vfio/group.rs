//! The group file `/dev/vfio/N` (the kernel's `group.c`): status, the
//! container (a `/dev/vfio/vfio` container or an iommufd, both iommufd
//! contexts here, as with the kernel's `IOMMUFD_VFIO_CONTAINER`), and
//! device files by PCI address. Each declared device is alone in its
//! group. A group may be open once at a time (`EBUSY`), and not while its
//! device is bound through the cdev; it counts as open until its file and
//! every device file opened through it are closed.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::context::Context;
use crate::files::{EngineFile, FdResolver};
use crate::user::UserMemory;
use crate::vfio::device::{OpenedVia, VfioDevice};
use crate::vfio::device_fd::{not_an_iommufd, read_prefix, write_prefix, DeviceFile};
use crate::vfio::uapi::*;
use crate::{bail, Error, Result};

/// Holds the group open: the group file and each device file opened
/// through it keep one; the last one dropped lets the group be opened
/// again.
#[derive(Debug)]
pub struct GroupToken(Arc<VfioDevice>);

impl Drop for GroupToken {
    fn drop(&mut self) {
        self.0.group_close();
    }
}

/// An open group.
#[derive(Debug)]
pub struct GroupFile {
    dev: Arc<VfioDevice>,
    token: Arc<GroupToken>,
    container: Mutex<Option<Arc<Context>>>,
}

impl GroupFile {
    /// Open the group of `dev` (`EBUSY` as described in the module docs).
    pub(crate) fn open(dev: Arc<VfioDevice>) -> Result<GroupFile> {
        dev.group_open()?;
        Ok(GroupFile {
            token: Arc::new(GroupToken(dev.clone())),
            dev,
            container: Mutex::new(None),
        })
    }

    /// The container (iommufd context) set on the group, if any.
    pub fn container(&self) -> Option<Arc<Context>> {
        self.container.lock().clone()
    }

    /// `VFIO_GROUP_SET_CONTAINER` from Rust: `EINVAL` when one is set; the
    /// context gets a compat IOAS if it has none
    /// (`iommufd_vfio_compat_ioas_create`).
    pub fn set_container(&self, ctx: Arc<Context>) -> Result<()> {
        let mut c = self.container.lock();
        if c.is_some() {
            bail!(
                EINVAL,
                "group {}: a container is already set",
                self.dev.decl().group
            );
        }
        if ctx.compat_ioas().is_err() {
            let id = ctx.ioas_alloc()?;
            ctx.set_compat_ioas(Some(id));
        }
        *c = Some(ctx);
        Ok(())
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` from Rust: open the device named `name`
    /// (its PCI address) and return its new fd (close-on-exec).
    pub fn get_device_fd(&self, name: &str) -> Result<i32> {
        self.match_name(name)?;
        let Some(ctx) = self.container() else {
            bail!(
                EINVAL,
                "group {}: no container is set",
                self.dev.decl().group
            );
        };
        self.dev.open_df(&ctx, OpenedVia::Group)?;
        let file = Arc::new(DeviceFile::group(self.dev.clone(), self.token.clone()));
        match crate::files::create(file, true) {
            Ok(fd) => Ok(fd),
            Err(e) => {
                self.dev.close_df();
                Err(e)
            }
        }
    }

    /// `vfio_pci_core_match`: the name is the PCI address, optionally
    /// followed by a space and options. The only option is
    /// `vf_token=UUID`, which a function that is neither a PF nor a VF
    /// refuses (`EINVAL`), as any unknown option; a name that only starts
    /// with the address is no match (`ENODEV`).
    fn match_name(&self, name: &str) -> Result<()> {
        let addr = &self.dev.decl().addr;
        let no_match = || {
            crate::err!(
                ENODEV,
                "group {} has no device {name:?} (it has {addr})",
                self.dev.decl().group
            )
        };
        let Some(rest) = name.strip_prefix(addr.as_str()) else {
            return Err(no_match());
        };
        if rest.is_empty() {
            return Ok(());
        }
        if !rest.starts_with(' ') {
            return Err(no_match());
        }
        if rest.trim_start_matches(' ').is_empty() {
            return Ok(());
        }
        bail!(
            EINVAL,
            "device name {name:?}: options after the address (a vf_token is only for SR-IOV functions)"
        )
    }

    fn status(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        let minsz = 8;
        let mut s: VfioGroupStatus = read_prefix(mem, arg, minsz, "GROUP_GET_STATUS")?;
        if (s.argsz as usize) < minsz {
            bail!(EINVAL, "GROUP_GET_STATUS: argsz {} < {minsz}", s.argsz);
        }
        s.flags = VFIO_GROUP_FLAGS_VIABLE;
        if self.container.lock().is_some() {
            s.flags |= VFIO_GROUP_FLAGS_CONTAINER_SET;
        }
        write_prefix(mem, arg, &s, minsz, "GROUP_GET_STATUS")?;
        Ok(0)
    }

    fn set_container_ioctl(
        &self,
        arg: u64,
        mem: &dyn UserMemory,
        fds: &dyn FdResolver,
    ) -> Result<i64> {
        let mut b = [0u8; 4];
        mem.read(arg, &mut b)
            .map_err(|_| Error::fault("GROUP_SET_CONTAINER fd"))?;
        let fd = i32::from_ne_bytes(b);
        // fdget first: a closed fd is EBADF before anything else
        let ctx = fds.context(fd);
        if ctx.is_none() {
            let e = not_an_iommufd(fd, "GROUP_SET_CONTAINER");
            if e.errno().0 == libc::EBADF {
                return Err(e);
            }
        }
        if self.container.lock().is_some() {
            bail!(EINVAL, "GROUP_SET_CONTAINER: a container is already set");
        }
        let Some(ctx) = ctx else {
            return Err(not_an_iommufd(fd, "GROUP_SET_CONTAINER"));
        };
        self.set_container(ctx)?;
        Ok(0)
    }

    fn get_device_fd_ioctl(&self, arg: u64, mem: &dyn UserMemory) -> Result<i64> {
        // strndup_user(arg, PAGE_SIZE)
        let max = crate::user::page_size() as usize;
        let mut name = Vec::new();
        loop {
            let mut c = [0u8; 1];
            mem.read(arg + name.len() as u64, &mut c)
                .map_err(|_| Error::fault("GROUP_GET_DEVICE_FD name"))?;
            if c[0] == 0 {
                break;
            }
            name.push(c[0]);
            if name.len() >= max {
                bail!(
                    EINVAL,
                    "GROUP_GET_DEVICE_FD: the name is not terminated within a page"
                );
            }
        }
        let name = String::from_utf8_lossy(&name);
        Ok(self.get_device_fd(&name)? as i64)
    }
}

impl EngineFile for GroupFile {
    fn kind(&self) -> &'static str {
        "vfio-group"
    }

    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn UserMemory, fds: &dyn FdResolver) -> Result<i64> {
        match cmd {
            VFIO_GROUP_GET_STATUS => self.status(arg, mem),
            VFIO_GROUP_SET_CONTAINER => self.set_container_ioctl(arg, mem, fds),
            VFIO_GROUP_UNSET_CONTAINER => {
                // an iommufd "container" is only let go of: no EBUSY
                // (that is the legacy container's rule)
                if self.container.lock().take().is_none() {
                    bail!(EINVAL, "GROUP_UNSET_CONTAINER: no container is set");
                }
                Ok(0)
            }
            VFIO_GROUP_GET_DEVICE_FD => self.get_device_fd_ioctl(arg, mem),
            _ => bail!(ENOTTY, "VFIO group: ioctl {cmd:#x} is not served"),
        }
    }

    /// The group node's character device, as `stat` of `/dev/vfio/N`
    /// reports it: `makedev(VFIO_GROUP_MAJOR, N)`.
    fn stat_as(&self) -> Option<crate::files::StatAs> {
        Some(crate::files::StatAs {
            mode: libc::S_IFCHR | 0o600,
            rdev: libc::makedev(
                crate::vfio::registry::VFIO_GROUP_MAJOR,
                self.dev.decl().group,
            ),
        })
    }
}
