//! Emulated VFIO devices (the kernel's `drivers/vfio`: `vfio_main.c`,
//! `group.c`, `device_cdev.c`, `pci/`).
//!
//! A device model ([`model::PciModel`]: what the hardware does — registers,
//! DMA, interrupts, state) sits behind the VFIO layer, which gives it what
//! `vfio-pci` gives a real function: a config space with the read-only and
//! read-write bit rules of a real function, BARs as regions, IRQs through
//! the eventfds of `VFIO_DEVICE_SET_IRQS`, reset, and DMA only through the
//! IOMMU domain the device is attached to ([`model::Bus`]).
//!
//! Devices are declared per process ([`registry`]) and reached the two ways
//! the kernel offers: a group `/dev/vfio/N` with a container, or a cdev
//! `/dev/vfio/devices/vfioN` bound to an iommufd.

pub mod device;
pub mod device_fd;
pub mod group;
pub mod migration;
pub mod model;
pub mod pci_config;
pub mod registry;
pub mod sysfs;
pub mod uapi;
