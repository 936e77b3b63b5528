//! The devices a process has: declared once (`uiommufd run --device
//! KIND,key=value,...`, the `UIOMMUFD_DEVICES` environment variable, or
//! [`declare`] from Rust), each with a PCI address, an IOMMU group and a
//! VFIO cdev number.
//!
//! A declaration is `KIND[,key=value]...`. The registry's own keys:
//! `addr=DDDD:BB:DD.F` (default `0000:f0:II.0`, `II` the declaration's
//! index), `group=N` (the IOMMU group, `/dev/vfio/N`; default `100 + index`),
//! `cdev=N` (`/dev/vfio/devices/vfioN`; default the index). Every other key
//! goes to the model ([`crate::devices::create`]).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::vfio::model::PciModel;
use crate::{bail, Result};

/// The character-device major number the VFIO cdevs report in `st_rdev`
/// (the first of Linux's "local/experimental use" majors, so that it names
/// no real driver).
pub const VFIO_CDEV_MAJOR: u32 = 240;

/// The character-device major number the VFIO group nodes (`/dev/vfio/N`,
/// minor `N`) report in `st_rdev`. Linux allocates the group major
/// dynamically; this is the next "local/experimental use" major after
/// [`VFIO_CDEV_MAJOR`].
pub const VFIO_GROUP_MAJOR: u32 = 241;

/// Environment variable with `;`-separated declarations.
pub const DEVICES_ENV: &str = "UIOMMUFD_DEVICES";

/// One declared device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDecl {
    /// Position in declaration order.
    pub index: u32,
    /// Model name (`dma-engine`).
    pub kind: String,
    /// PCI address, `DDDD:BB:DD.F`, lower-case hex (the sysfs name).
    pub addr: String,
    /// IOMMU group number (`/dev/vfio/N`).
    pub group: u32,
    /// VFIO cdev number (`/dev/vfio/devices/vfioN`, minor `N`).
    pub cdev: u32,
    /// The model's parameters, in order.
    pub params: Vec<(String, String)>,
}

/// A declared device and its model.
#[derive(Debug, Clone)]
pub struct Registered {
    /// What was declared.
    pub decl: DeviceDecl,
    /// The device model.
    pub model: Arc<dyn PciModel>,
}

static DEVICES: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

/// Parse a PCI address `DDDD:BB:DD.F` (or `BB:DD.F`) into its canonical form.
pub fn parse_addr(s: &str) -> Result<String> {
    let bad = || {
        crate::err!(
            EINVAL,
            "PCI address {s:?} is not DDDD:BB:DD.F (hex domain, bus, device < 0x20, function < 8)"
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (dom, bus, rest) = match parts.as_slice() {
        [d, b, r] => (u32::from_str_radix(d, 16).map_err(|_| bad())?, *b, *r),
        [b, r] => (0, *b, *r),
        _ => return Err(bad()),
    };
    let bus = u32::from_str_radix(bus, 16).map_err(|_| bad())?;
    let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
    let dev = u32::from_str_radix(dev, 16).map_err(|_| bad())?;
    let func = u32::from_str_radix(func, 16).map_err(|_| bad())?;
    if dom > 0xffff || bus > 0xff || dev >= 0x20 || func >= 8 {
        return Err(bad());
    }
    Ok(format!("{dom:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// Parse one declaration as the `index`-th device.
pub fn parse(spec: &str, index: u32) -> Result<DeviceDecl> {
    let mut it = spec.split(',');
    let kind = it.next().unwrap_or("").trim();
    if kind.is_empty() {
        bail!(EINVAL, "device declaration {spec:?} names no model");
    }
    let mut decl = DeviceDecl {
        index,
        kind: kind.to_string(),
        addr: format!("0000:{:02x}:{:02x}.0", 0xf0 + index / 32, index % 32),
        group: 100 + index,
        cdev: index,
        params: Vec::new(),
    };
    for kv in it {
        let Some((k, v)) = kv.split_once('=') else {
            bail!(
                EINVAL,
                "device parameter {kv:?} in {spec:?} is not key=value"
            );
        };
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| crate::err!(EINVAL, "{k}={v:?} in {spec:?} is not a number"))
        };
        match k {
            "addr" => decl.addr = parse_addr(v)?,
            "group" => decl.group = num(v)?,
            "cdev" => decl.cdev = num(v)?,
            _ => decl.params.push((k.to_string(), v.to_string())),
        }
    }
    Ok(decl)
}

/// Register the device `spec` declares with the model `model` makes for
/// it (after the clash check, under the registry's lock). `EEXIST` when
/// its address, group or cdev number is taken.
fn register(
    spec: &str,
    model: impl FnOnce(&DeviceDecl) -> Result<Arc<dyn PciModel>>,
) -> Result<DeviceDecl> {
    let mut devs = DEVICES.lock();
    let decl = parse(spec, devs.len() as u32)?;
    if let Some(o) = devs.iter().find(|r| {
        r.decl.addr == decl.addr || r.decl.group == decl.group || r.decl.cdev == decl.cdev
    }) {
        bail!(
            EEXIST,
            "device {spec:?} clashes with {} (address {}, group {}, cdev {})",
            o.decl.kind,
            o.decl.addr,
            o.decl.group,
            o.decl.cdev
        );
    }
    let model = model(&decl)?;
    devs.push(Registered {
        decl: decl.clone(),
        model,
    });
    Ok(decl)
}

/// Declare a device in this process: its model is created now, so a bad
/// parameter fails here. `EEXIST` when its address, group or cdev number
/// is taken.
pub fn declare(spec: &str) -> Result<DeviceDecl> {
    register(spec, |decl| {
        crate::devices::create(&decl.kind, &decl.params)
    })
}

/// Declare a device whose model the caller made (Rust users and tests
/// with their own [`PciModel`]): as [`declare`], with `spec`'s kind only
/// naming the model and its non-registry keys ignored.
pub fn declare_model(spec: &str, model: Arc<dyn PciModel>) -> Result<DeviceDecl> {
    register(spec, |_| Ok(model))
}

/// Open the group `/dev/vfio/<group>`: a new group fd (close-on-exec when
/// `cloexec`). `ENOENT` when no declared device has that group, `EBUSY`
/// when the group is open or its device is bound through its cdev.
pub fn open_group(group: u32, cloexec: bool) -> Result<i32> {
    let Some(reg) = by_group(group) else {
        bail!(ENOENT, "no VFIO group {group} (/dev/vfio/{group})");
    };
    let dev = crate::vfio::device::get(&reg);
    let file = Arc::new(crate::vfio::group::GroupFile::open(dev)?);
    crate::files::create(file, cloexec)
}

/// Open the cdev `/dev/vfio/devices/vfio<cdev>`: a new device fd, usable
/// once bound (`VFIO_DEVICE_BIND_IOMMUFD`). `ENOENT` when no declared
/// device has that cdev number.
pub fn open_cdev(cdev: u32, cloexec: bool) -> Result<i32> {
    let Some(reg) = by_cdev(cdev) else {
        bail!(
            ENOENT,
            "no VFIO cdev vfio{cdev} (/dev/vfio/devices/vfio{cdev})"
        );
    };
    let dev = crate::vfio::device::get(&reg);
    let file = Arc::new(crate::vfio::device_fd::DeviceFile::cdev(dev));
    crate::files::create(file, cloexec)
}

/// Declare every device of `$UIOMMUFD_DEVICES` (`;`-separated), once.
pub fn declare_from_env() -> Result<Vec<DeviceDecl>> {
    let Ok(v) = std::env::var(DEVICES_ENV) else {
        return Ok(Vec::new());
    };
    v.split(';')
        .filter(|s| !s.trim().is_empty())
        .map(declare)
        .collect()
}

/// Every declared device.
pub fn devices() -> Vec<Registered> {
    DEVICES.lock().clone()
}

/// The device of IOMMU group `group`.
pub fn by_group(group: u32) -> Option<Registered> {
    DEVICES
        .lock()
        .iter()
        .find(|r| r.decl.group == group)
        .cloned()
}

/// The device of cdev `vfioN`.
pub fn by_cdev(cdev: u32) -> Option<Registered> {
    DEVICES.lock().iter().find(|r| r.decl.cdev == cdev).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_parse() {
        let d = parse("dma-engine,addr=f1:3.1,group=7,rate=10", 2).unwrap();
        assert_eq!(d.addr, "0000:f1:03.1");
        assert_eq!((d.group, d.cdev), (7, 2));
        assert_eq!(d.params, vec![("rate".into(), "10".into())]);
        let d = parse("dma-engine", 33).unwrap();
        assert_eq!(d.addr, "0000:f1:01.0");
        assert_eq!(d.group, 133);
        assert!(parse("", 0).is_err());
        assert!(parse("x,addr=0:0:20.0", 0).is_err());
        assert!(parse("x,novalue", 0).is_err());
    }
}
