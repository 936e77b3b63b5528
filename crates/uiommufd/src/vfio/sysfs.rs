//! The sysfs view of the declared devices, as a real directory tree that
//! programs read with ordinary file calls (QEMU's `sysfsdev=DIR`, or
//! `host=ADDR` through the preload's redirect of `/sys/bus/pci/devices/ADDR`).
//!
//! Layout under the root ([`root`]; `$UIOMMUFD_SYSFS`, else
//! `$XDG_RUNTIME_DIR/uiommufd/sysfs`, else `/tmp/uiommufd-$UID/sysfs`):
//!
//! ```text
//! ROOT/devices/ADDR -> ../.trees/ADDR-HASH        the PCI function
//!     vendor device subsystem_vendor subsystem_device class revision
//!     iommu_group -> ../../kernel/iommu_groups/N
//!     vfio-dev/vfioN/dev                             "240:N\n"
//!     subsystem -> ../../bus/pci
//!     driver -> ../../bus/pci/drivers/vfio-pci
//! ROOT/kernel/iommu_groups/N -> ../../.trees/group-N-HASH
//!     devices/ADDR -> ../../../devices/ADDR
//!     type                                            "DMA\n"
//! ROOT/bus/pci/devices/ADDR -> ../../../devices/ADDR
//! ROOT/bus/pci/drivers/vfio-pci/
//! ```
//!
//! The attribute formats are Linux's (`drivers/pci/pci-sysfs.c`): `0x%04x`
//! for the IDs, `0x%06x` for the class, `0x%02x` for the revision, each
//! followed by a newline.
//!
//! # Several processes at once
//!
//! A QEMU source and destination (or any two programs) may declare the
//! same devices at the same time. Every directory of the tree is therefore
//! *content-addressed*: it is built complete in a temporary directory and
//! renamed to `.trees/NAME-HASH`, where `HASH` covers everything in it;
//! the public names (`devices/ADDR`, `kernel/iommu_groups/N`) are symlinks,
//! replaced atomically (a new symlink renamed over the old one). Two
//! processes that declare the same device produce the same tree, and the
//! second finds it already there; a process that declares a different
//! device at an address switches the name to its own tree, and the old one
//! stays (nothing is ever deleted, so an open file or a path resolved a
//! moment ago keeps working). Like `/sys/bus/pci/devices/ADDR` on Linux,
//! `devices/ADDR` is a symlink to the real directory.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::vfio::model::PciIds;
use crate::vfio::registry::{self, DeviceDecl, VFIO_CDEV_MAJOR};
use crate::{Error, Result};

/// Environment variable naming the root of the tree.
pub const SYSFS_ENV: &str = "UIOMMUFD_SYSFS";

/// What one device contributes to the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsDevice {
    /// PCI address `DDDD:BB:DD.F`.
    pub addr: String,
    /// IOMMU group number.
    pub group: u32,
    /// VFIO cdev number (`vfioN`, minor `N`).
    pub cdev: u32,
    /// The identity registers.
    pub ids: PciIds,
}

impl SysfsDevice {
    /// The entry of a declared device with its model's identity.
    pub fn new(decl: &DeviceDecl, ids: PciIds) -> SysfsDevice {
        SysfsDevice {
            addr: decl.addr.clone(),
            group: decl.group,
            cdev: decl.cdev,
            ids,
        }
    }
}

/// The root of the tree: `$UIOMMUFD_SYSFS`, else
/// `$XDG_RUNTIME_DIR/uiommufd/sysfs`, else `/tmp/uiommufd-$UID/sysfs`.
pub fn root() -> PathBuf {
    if let Some(p) = std::env::var_os(SYSFS_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return Path::new(&p).join("uiommufd").join("sysfs");
    }
    // SAFETY: getuid cannot fail and takes no pointer.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/uiommufd-{uid}/sysfs"))
}

/// The directory of the device at `addr` under `root` (a symlink to its
/// tree, as on Linux): what QEMU's `sysfsdev=` takes.
pub fn device_dir(root: &Path, addr: &str) -> PathBuf {
    root.join("devices").join(addr)
}

/// The directory of IOMMU group `group` under `root`.
pub fn group_dir(root: &Path, group: u32) -> PathBuf {
    root.join("kernel")
        .join("iommu_groups")
        .join(group.to_string())
}

/// One entry of a directory being built.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    /// A regular file (mode 0444) with this content.
    File(String, String),
    /// A directory (mode 0755).
    Dir(String),
    /// A symlink with this (relative) target.
    Link(String, String),
}

/// The entries of the device directory, parents before children.
fn device_nodes(d: &SysfsDevice) -> Vec<Node> {
    let f = |name: &str, v: String| Node::File(name.into(), v);
    let vfio = format!("vfio-dev/vfio{}", d.cdev);
    vec![
        f("vendor", format!("0x{:04x}\n", d.ids.vendor)),
        f("device", format!("0x{:04x}\n", d.ids.device)),
        f(
            "subsystem_vendor",
            format!("0x{:04x}\n", d.ids.subsystem_vendor),
        ),
        f(
            "subsystem_device",
            format!("0x{:04x}\n", d.ids.subsystem_device),
        ),
        f("class", format!("0x{:06x}\n", d.ids.class & 0xff_ffff)),
        f("revision", format!("0x{:02x}\n", d.ids.revision)),
        Node::Link(
            "iommu_group".into(),
            format!("../../kernel/iommu_groups/{}", d.group),
        ),
        Node::Link("subsystem".into(), "../../bus/pci".into()),
        Node::Link("driver".into(), "../../bus/pci/drivers/vfio-pci".into()),
        Node::Dir("vfio-dev".into()),
        Node::Dir(vfio.clone()),
        f(
            &format!("{vfio}/dev"),
            format!("{VFIO_CDEV_MAJOR}:{}\n", d.cdev),
        ),
    ]
}

/// The entries of the group directory.
fn group_nodes(d: &SysfsDevice) -> Vec<Node> {
    vec![
        Node::Dir("devices".into()),
        Node::Link(
            format!("devices/{}", d.addr),
            format!("../../../devices/{}", d.addr),
        ),
        Node::File("type".into(), "DMA\n".into()),
        Node::File("reserved_regions".into(), String::new()),
    ]
}

/// FNV-1a of the entries: the content address of a directory.
fn content_hash(nodes: &[Node]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b.iter().chain(&[0xff]) {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for n in nodes {
        match n {
            Node::File(a, b) => {
                eat(b"f");
                eat(a.as_bytes());
                eat(b.as_bytes());
            }
            Node::Dir(a) => {
                eat(b"d");
                eat(a.as_bytes());
            }
            Node::Link(a, b) => {
                eat(b"l");
                eat(a.as_bytes());
                eat(b.as_bytes());
            }
        }
    }
    format!("{h:016x}")
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("sysfs tree: {what}: {e}"),
    )
}

/// A name unique to this call in this process, for temporary entries.
fn temp_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        ".tmp-{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `mkdir -p` (mode 0755 for what it creates).
fn mkdirs(p: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(|e| io_err(format_args!("cannot create {}", p.display()), e))
}

/// Make sure `root` exists. When it is the default under `/tmp`, its
/// per-user parent must be a directory of ours (not a symlink another user
/// planted): mode 0700.
fn prepare_root(root: &Path) -> Result<()> {
    if let Some(parent) = root.parent() {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        if parent == Path::new(&format!("/tmp/uiommufd-{uid}")) {
            match std::fs::DirBuilder::new().mode(0o700).create(parent) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(format_args!("{}", parent.display()), e)),
            }
            let md = std::fs::symlink_metadata(parent)
                .map_err(|e| io_err(format_args!("{}", parent.display()), e))?;
            if !md.is_dir() || md.uid() != uid {
                crate::bail!(
                    EPERM,
                    "sysfs tree: {} is not a directory owned by uid {uid}; set {SYSFS_ENV}",
                    parent.display()
                );
            }
        }
    }
    mkdirs(root)
}

/// Build `nodes` as the content-addressed directory `trees/NAME-HASH` (if
/// it is not there yet) and return its name.
fn build_tree(trees: &Path, name: &str, nodes: &[Node]) -> Result<String> {
    let final_name = format!("{name}-{}", content_hash(nodes));
    let dest = trees.join(&final_name);
    if dest.is_dir() {
        return Ok(final_name);
    }
    let tmp = trees.join(temp_name(name));
    let built = (|| -> Result<()> {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(|e| io_err(format_args!("cannot create {}", tmp.display()), e))?;
        for n in nodes {
            match n {
                Node::Dir(p) => std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(tmp.join(p))
                    .map_err(|e| io_err(format_args!("mkdir {p}"), e))?,
                Node::File(p, v) => {
                    let path = tmp.join(p);
                    std::fs::write(&path, v).map_err(|e| io_err(format_args!("write {p}"), e))?;
                    std::fs::set_permissions(
                        &path,
                        std::os::unix::fs::PermissionsExt::from_mode(0o444),
                    )
                    .map_err(|e| io_err(format_args!("chmod {p}"), e))?;
                }
                Node::Link(p, t) => std::os::unix::fs::symlink(t, tmp.join(p))
                    .map_err(|e| io_err(format_args!("symlink {p}"), e))?,
            }
        }
        Ok(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dest) {
        Ok(()) => Ok(final_name),
        // another process built the same tree first: ours is a duplicate
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(final_name)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io_err(
                format_args!("cannot rename {} to {}", tmp.display(), dest.display()),
                e,
            ))
        }
    }
}

/// Point the symlink `link` at `target`, atomically (a new link renamed
/// over the old one); nothing changes when it already points there.
fn set_link(link: &Path, target: &str) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t.as_os_str() == target) {
        return Ok(());
    }
    let dir = link.parent().unwrap_or(Path::new("."));
    mkdirs(dir)?;
    let tmp = dir.join(temp_name("link"));
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| io_err(format_args!("symlink {}", tmp.display()), e))?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(format_args!("cannot replace {}", link.display()), e)
    })
}

/// Write (or find already written) the tree of `devs` under `root`.
pub fn write_tree(root: &Path, devs: &[SysfsDevice]) -> Result<()> {
    prepare_root(root)?;
    let trees = root.join(".trees");
    mkdirs(&trees)?;
    mkdirs(&root.join("bus/pci/drivers/vfio-pci"))?;
    mkdirs(&root.join("kernel/iommu_groups"))?;
    for d in devs {
        let dev = build_tree(&trees, &d.addr, &device_nodes(d))?;
        let grp = build_tree(&trees, &format!("group-{}", d.group), &group_nodes(d))?;
        set_link(&device_dir(root, &d.addr), &format!("../.trees/{dev}"))?;
        set_link(&group_dir(root, d.group), &format!("../../.trees/{grp}"))?;
        set_link(
            &root.join("bus/pci/devices").join(&d.addr),
            &format!("../../../devices/{}", d.addr),
        )?;
    }
    Ok(())
}

/// Write the tree of every declared device ([`registry::devices`]) under
/// [`root`]; returns the root.
pub fn write_declared() -> Result<PathBuf> {
    let root = root();
    let devs: Vec<SysfsDevice> = registry::devices()
        .iter()
        .map(|r| SysfsDevice::new(&r.decl, r.model.layout().ids))
        .collect();
    if !devs.is_empty() {
        write_tree(&root, &devs)?;
    }
    Ok(root)
}

/// The path `path` stands for in the tree under `root`, when it is the
/// sysfs path of a declared device or group: `/sys/bus/pci/devices/ADDR[/..]`
/// → `ROOT/devices/ADDR[/..]`, `/sys/kernel/iommu_groups/N[/..]` →
/// `ROOT/kernel/iommu_groups/N[/..]`. `path` must be absolute; the match is
/// on its bytes (components separated by one `/`, the preload normalises
/// first). `is_addr`/`is_group` say whether a name is declared.
pub fn redirect(
    root: &Path,
    path: &[u8],
    is_addr: impl Fn(&str) -> bool,
    is_group: impl Fn(u32) -> bool,
) -> Option<PathBuf> {
    let (prefix, kind) = if let Some(r) = path.strip_prefix(b"/sys/bus/pci/devices/") {
        (r, 0)
    } else if let Some(r) = path.strip_prefix(b"/sys/kernel/iommu_groups/") {
        (r, 1)
    } else {
        return None;
    };
    let end = prefix
        .iter()
        .position(|&b| b == b'/')
        .unwrap_or(prefix.len());
    let name = std::str::from_utf8(&prefix[..end]).ok()?;
    let rest = &prefix[end..];
    let base = if kind == 0 {
        if !is_addr(name) {
            return None;
        }
        device_dir(root, name)
    } else {
        if name.is_empty() || name.len() > 10 || !name.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u32 = name.parse().ok()?;
        if !is_group(n) {
            return None;
        }
        // Linux names groups by their number without leading zeros
        if n.to_string() != name {
            return None;
        }
        group_dir(root, n)
    };
    let mut out = base.into_os_string().into_vec();
    out.extend_from_slice(rest);
    Some(PathBuf::from(OsString::from_vec(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1b36,
            device: 0x0010,
            revision: 2,
            class: 0x088000,
            subsystem_vendor: 0x1af4,
            subsystem_device: 0x1100,
        }
    }

    fn dev(addr: &str, group: u32, cdev: u32) -> SysfsDevice {
        SysfsDevice {
            addr: addr.into(),
            group,
            cdev,
            ids: ids(),
        }
    }

    fn tempdir() -> PathBuf {
        let p = std::env::temp_dir().join(temp_name("sysfs-test"));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn tree_as_programs_read_it() {
        let root = tempdir().join("sysfs");
        let d = dev("0000:f0:00.0", 100, 3);
        write_tree(&root, std::slice::from_ref(&d)).unwrap();
        let dir = device_dir(&root, &d.addr);
        assert_eq!(read(&dir.join("vendor")), "0x1b36\n");
        assert_eq!(read(&dir.join("device")), "0x0010\n");
        assert_eq!(read(&dir.join("subsystem_vendor")), "0x1af4\n");
        assert_eq!(read(&dir.join("subsystem_device")), "0x1100\n");
        assert_eq!(read(&dir.join("class")), "0x088000\n");
        assert_eq!(read(&dir.join("revision")), "0x02\n");
        // QEMU: readlink(DIR/iommu_group), basename = group
        let link = std::fs::read_link(dir.join("iommu_group")).unwrap();
        assert_eq!(link.file_name().unwrap(), "100");
        assert!(dir.join("iommu_group").is_dir());
        // the group lists the device, back to the same directory
        let back = group_dir(&root, 100).join("devices").join(&d.addr);
        assert_eq!(
            std::fs::canonicalize(&back).unwrap(),
            std::fs::canonicalize(&dir).unwrap()
        );
        // QEMU 10: opendir(DIR/vfio-dev) → vfioN → dev "M:m"
        let names: Vec<_> = std::fs::read_dir(dir.join("vfio-dev"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("vfio3")]);
        assert_eq!(read(&dir.join("vfio-dev/vfio3/dev")), "240:3\n");
        assert_eq!(
            std::fs::canonicalize(dir.join("subsystem")).unwrap(),
            std::fs::canonicalize(root.join("bus/pci")).unwrap()
        );
        assert!(std::fs::canonicalize(dir.join("driver"))
            .unwrap()
            .ends_with("bus/pci/drivers/vfio-pci"));
        assert!(root
            .join("bus/pci/devices")
            .join(&d.addr)
            .join("vendor")
            .is_file());
        std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }

    #[test]
    fn idempotent_and_replaced_atomically() {
        let root = tempdir().join("sysfs");
        let d = dev("0000:f0:01.0", 101, 1);
        write_tree(&root, std::slice::from_ref(&d)).unwrap();
        let first = std::fs::read_link(device_dir(&root, &d.addr)).unwrap();
        // a second process declaring the same: the same tree, nothing new
        write_tree(&root, std::slice::from_ref(&d)).unwrap();
        assert_eq!(
            std::fs::read_link(device_dir(&root, &d.addr)).unwrap(),
            first
        );
        let entries = || std::fs::read_dir(root.join(".trees")).unwrap().count();
        assert_eq!(
            entries(),
            2,
            "one device tree, one group tree, no leftovers"
        );
        // several writers at once
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (root, d) = (root.clone(), d.clone());
                std::thread::spawn(move || write_tree(&root, &[d]).unwrap())
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(entries(), 2);
        // another declaration at the same address: a new tree, the old one kept
        let mut d2 = d.clone();
        d2.cdev = 7;
        write_tree(&root, &[d2]).unwrap();
        let second = std::fs::read_link(device_dir(&root, &d.addr)).unwrap();
        assert_ne!(first, second);
        assert!(root.join("devices").join(&first).is_dir(), "old tree kept");
        assert_eq!(
            read(&device_dir(&root, &d.addr).join("vfio-dev/vfio7/dev")),
            "240:7\n"
        );
        std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }

    #[test]
    fn redirects() {
        let root = Path::new("/r");
        let addr = |a: &str| a == "0000:f0:00.0";
        let group = |g: u32| g == 100;
        let r = |p: &str| redirect(root, p.as_bytes(), addr, group);
        assert_eq!(
            r("/sys/bus/pci/devices/0000:f0:00.0"),
            Some("/r/devices/0000:f0:00.0".into())
        );
        assert_eq!(
            r("/sys/bus/pci/devices/0000:f0:00.0/iommu_group"),
            Some("/r/devices/0000:f0:00.0/iommu_group".into())
        );
        assert_eq!(
            r("/sys/bus/pci/devices/0000:f0:00.0/"),
            Some("/r/devices/0000:f0:00.0/".into())
        );
        assert_eq!(
            r("/sys/kernel/iommu_groups/100/devices"),
            Some("/r/kernel/iommu_groups/100/devices".into())
        );
        assert_eq!(r("/sys/kernel/iommu_groups/0100"), None);
        assert_eq!(r("/sys/kernel/iommu_groups/101"), None);
        assert_eq!(r("/sys/bus/pci/devices/0000:00:00.0"), None);
        assert_eq!(r("/sys/bus/pci/devices"), None);
        assert_eq!(r("/sys/bus/pci/devices/"), None);
        assert_eq!(r("/sys/kernel/iommu_groups/"), None);
        assert_eq!(r("/dev/vfio/100"), None);
    }
}
