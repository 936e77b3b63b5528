//! Helpers for tests of emulated VFIO devices through their engine fds:
//! an fd table for the `FdResolver` argument, and ioctls on engine files
//! with real ABI bytes.

use std::collections::HashMap;
use std::sync::Arc;

use uiommufd::files::{self, EngineFile, FdResolver};
use uiommufd::user::SelfMemory;
use uiommufd::Context;
use zerocopy::{FromBytes, IntoBytes};

/// The fd numbers an ioctl argument may name (an iommufd or a container
/// given to `VFIO_DEVICE_BIND_IOMMUFD` or `VFIO_GROUP_SET_CONTAINER`), as
/// the preload's fd table would answer them.
#[derive(Debug, Default)]
pub struct Fds(pub HashMap<i32, Arc<Context>>);

impl FdResolver for Fds {
    fn context(&self, fd: i32) -> Option<Arc<Context>> {
        self.0.get(&fd).cloned()
    }
}

/// The engine file of `fd` (panics when it is none).
pub fn file(fd: i32) -> Arc<dyn EngineFile> {
    files::get(fd).expect("an engine fd")
}

/// `ioctl(fd, cmd, arg)` on an engine fd, with `arg`'s bytes as the
/// argument: the errno on failure.
pub fn ioctl_on<T: IntoBytes + FromBytes + ?Sized>(
    fd: i32,
    cmd: u32,
    arg: &mut T,
    fds: &Fds,
) -> Result<i64, i32> {
    file(fd)
        .ioctl(
            cmd,
            arg.as_mut_bytes().as_mut_ptr() as u64,
            &SelfMemory,
            fds,
        )
        .map_err(|e| e.errno().0)
}
