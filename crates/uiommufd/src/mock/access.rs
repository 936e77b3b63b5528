//! The selftest's access files (the kernel's `selftest_access`): an access
//! object behind a real fd, with a list of pinned ranges ("items") that the
//! unmap notification and `DESTROY_ACCESS_PAGES` release.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::ioctl::{payload, set_payload};
use crate::access::{Access, AccessOps};
use crate::context::Context;
use crate::files::{self, EngineFile};
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::user::page_size;
use crate::{bail, Error, Result};

#[derive(Debug, Default)]
struct Items {
    list: Vec<(u32, u64, u64)>,
    next_id: u32,
}

/// One selftest access fd.
#[derive(Debug)]
pub struct MockAccessFile {
    ctx: Arc<Context>,
    access: Mutex<Option<Arc<Access>>>,
    needs_pin: bool,
    /// Pinned ranges: (item id, iova, length).
    items: Mutex<Items>,
}

impl AccessOps for MockAccessFile {
    fn unmap(&self, iova: u64, length: u64) {
        let last = iova.saturating_add(length.saturating_sub(1));
        let Some(access) = self.access.lock().clone() else {
            return;
        };
        let mut items = self.items.lock();
        items.list.retain(|&(_, i, l)| {
            if iova > i + l - 1 || last < i {
                return true;
            }
            access.unpin_pages(i, l);
            false
        });
    }

    fn needs_pin_pages(&self) -> bool {
        self.needs_pin
    }
}

/// The kernel's access file has only `release` among its file operations:
/// `read`/`write` are `EINVAL` whatever the buffer, `pread`/`pwrite`
/// `ESPIPE`, and `poll` gives the VFS default for a file without `poll`
/// (`DEFAULT_POLLMASK`: readable and writable).
impl EngineFile for MockAccessFile {
    fn kind(&self) -> &'static str {
        "iommufd_test_staccess"
    }

    fn can_read(&self) -> bool {
        false
    }

    fn can_write(&self) -> bool {
        false
    }

    fn poll_events(&self) -> i16 {
        libc::POLLIN | libc::POLLOUT | libc::POLLRDNORM | libc::POLLWRNORM
    }
}

impl Drop for MockAccessFile {
    fn drop(&mut self) {
        // the last fd closed: unpin everything, destroy the access
        if let Some(a) = self.access.get_mut().take() {
            let items = std::mem::take(&mut self.items.get_mut().list);
            for (_, i, l) in items {
                a.unpin_pages(i, l);
            }
            a.destroy(&self.ctx);
        }
    }
}

/// Find the access file behind fd `fd` (`EBADFD` as the kernel says for an
/// fd that is not one).
fn get(fd: u32) -> Result<Arc<MockAccessFile>> {
    match files::get_as::<MockAccessFile>(fd as i32) {
        Some(f) => Ok(f),
        None => bail!(EBADFD, "fd {fd} is not a selftest access file"),
    }
}

impl MockAccessFile {
    /// The access of this file, fd `fd` (`ENOENT` when it has none).
    fn attached(&self, fd: u32) -> Result<Arc<Access>> {
        match self.access.lock().clone() {
            Some(a) => Ok(a),
            None => bail!(ENOENT, "access fd {fd} has no access"),
        }
    }
}

/// `CREATE_ACCESS`: an access attached to IOAS `id`, behind a new fd.
pub(super) fn create(u: &Ucmd, mut cmd: IommuTestCmd) -> Result<i32> {
    let mut c: TestCreateAccess = payload(&cmd);
    if c.flags & !MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0 {
        bail!(EOPNOTSUPP, "CREATE_ACCESS: unknown flags {:#x}", c.flags);
    }
    let file = Arc::new(MockAccessFile {
        ctx: u.ctx.clone(),
        access: Mutex::new(None),
        needs_pin: c.flags & MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0,
        items: Mutex::new(Items::default()),
    });
    let ops: Weak<dyn AccessOps> = Arc::downgrade(&(file.clone() as Arc<dyn AccessOps>));
    let access = Access::create(u.ctx, ops)?;
    if let Err(e) = access.attach(u.ctx, cmd.id) {
        access.destroy(u.ctx);
        return Err(e);
    }
    *file.access.lock() = Some(access);
    let fd = files::create(file.clone(), true)?;
    c.out_access_fd = fd as u32;
    set_payload(&mut cmd, &c);
    if let Err(e) = u.respond(&cmd) {
        let _ = files::close(fd);
        return Err(e);
    }
    Ok(0)
}

/// `ACCESS_REPLACE_IOAS`: move access fd `id` to another IOAS of the
/// access's own context (the fd may be used through any iommufd, as in the
/// kernel, but `ioas_id` is never looked up in the caller's context).
pub(super) fn replace_ioas(_u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let r: TestAccessReplaceIoas = payload(cmd);
    let f = get(cmd.id)?;
    f.attached(cmd.id)?.replace(&f.ctx, r.ioas_id)?;
    Ok(0)
}

/// Largest range the selftest's access ops take (the kernel caps it too).
const MAX_LEN: u64 = 16 * 1024 * 1024;

/// `ACCESS_PAGES`: pin a range through access fd `id`; checks that the
/// pinned pages are the user buffer's at `uptr`.
pub(super) fn pages(u: &Ucmd, mut cmd: IommuTestCmd) -> Result<i32> {
    let mut p: TestAccessPages = payload(&cmd);
    if p.length > MAX_LEN {
        bail!(
            ENOMEM,
            "ACCESS_PAGES: length {:#x} is over the selftest's 16 MiB cap",
            p.length
        );
    }
    if p.flags & !(MOCK_FLAGS_ACCESS_WRITE | MOCK_FLAGS_ACCESS_SYZ) != 0 {
        bail!(EOPNOTSUPP, "ACCESS_PAGES: unknown flags {:#x}", p.flags);
    }
    let f = get(cmd.id)?;
    if !f.needs_pin {
        bail!(
            EOPNOTSUPP,
            "ACCESS_PAGES: the access was not created with NEEDS_PIN_PAGES"
        );
    }
    let access = f.attached(cmd.id)?;
    // the selftest's kvcalloc of the page array
    crate::inject::point("mock.access.pages.alloc", libc::ENOMEM)?;
    let mut items = f.items.lock();
    let pinned = access.pin_pages(p.iova, p.length, p.flags & MOCK_FLAGS_ACCESS_WRITE != 0)?;
    let ps = page_size();
    if p.uptr != 0 {
        // the pinned page of each IOVA page is the page under the user's buffer
        // (the kernel compares page frames: an IOAS_MAP_FILE area is pinned
        // through the engine's own mapping of the file, which reaches the
        // same file page as the user's shared mapping of it)
        let base = p.uptr.wrapping_sub(p.iova % ps);
        let mut files: Option<crate::user::FileMaps> = None;
        for (i, &addr) in pinned.iter().enumerate() {
            let want = base.wrapping_add(i as u64 * ps);
            let (a, w) = (addr & !(ps - 1), want & !(ps - 1));
            if a != w
                && !files
                    .get_or_insert_with(crate::user::FileMaps::snapshot)
                    .same_file_byte(a, w)
            {
                access.unpin_pages(p.iova, p.length);
                bail!(
                    EBADE,
                    "ACCESS_PAGES: IOVA page {i} is pinned at {addr:#x}, the buffer has {want:#x}"
                );
            }
        }
    }
    // the selftest's kzalloc of the item, after the pin
    if let Err(e) = crate::inject::point("mock.access.item.alloc", libc::ENOMEM) {
        access.unpin_pages(p.iova, p.length);
        return Err(e);
    }
    let id = items.next_id;
    items.next_id += 1;
    items.list.push((id, p.iova, p.length));
    p.out_access_pages_id = id;
    set_payload(&mut cmd, &p);
    if let Err(e) = u.respond(&cmd) {
        items.list.retain(|&(i, _, _)| i != id);
        access.unpin_pages(p.iova, p.length);
        return Err(e);
    }
    Ok(0)
}

/// `DESTROY_ACCESS_PAGES`: unpin one item of access fd `id`.
pub(super) fn destroy_pages(_u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let d: TestDestroyAccessPages = payload(cmd);
    let f = get(cmd.id)?;
    let access = f.access.lock().clone();
    let mut items = f.items.lock();
    let Some(pos) = items
        .list
        .iter()
        .position(|&(i, _, _)| i == d.access_pages_id)
    else {
        bail!(
            ENOENT,
            "access fd {} has no pinned item {}",
            cmd.id,
            d.access_pages_id
        );
    };
    let (_, iova, len) = items.list.remove(pos);
    if let Some(a) = access {
        a.unpin_pages(iova, len);
    }
    Ok(0)
}

/// `ACCESS_RW`: copy between the user buffer and IOVA through access fd `id`.
pub(super) fn rw(u: &Ucmd, cmd: &IommuTestCmd) -> Result<i32> {
    let r: TestAccessRw = payload(cmd);
    if r.length > MAX_LEN {
        bail!(
            ENOMEM,
            "ACCESS_RW: length {:#x} is over the selftest's 16 MiB cap",
            r.length
        );
    }
    if r.flags & !(MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH | MOCK_FLAGS_ACCESS_SYZ) != 0 {
        bail!(EOPNOTSUPP, "ACCESS_RW: unknown flags {:#x}", r.flags);
    }
    let f = get(cmd.id)?;
    let access = f.attached(cmd.id)?;
    // the selftest's kvzalloc of the bounce buffer
    crate::inject::point("mock.access.rw.alloc", libc::ENOMEM)?;
    let mut buf = vec![0u8; r.length as usize];
    let write = r.flags & MOCK_ACCESS_RW_WRITE != 0;
    if write {
        u.read_user(r.uptr, &mut buf)
            .map_err(|_| Error::fault("ACCESS_RW: cannot read uptr"))?;
    }
    access.rw(r.iova, &mut buf, write)?;
    if !write {
        u.write_user(r.uptr, &buf)
            .map_err(|_| Error::fault("ACCESS_RW: cannot write uptr"))?;
    }
    Ok(0)
}
