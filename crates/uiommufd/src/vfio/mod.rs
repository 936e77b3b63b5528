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
//!
//! The layers: [`pci_config`] (the emulated config space), [`device`] (one
//! device: open state, iommufd binding, IRQ eventfds, DMA [`model::Bus`]),
//! [`device_fd`] and [`group`] (the files and their ioctls, [`uapi`]), and
//! [`crate::vtd::VtdDriver`], the IOMMU driver the devices are bound with.
//!
//! # From Rust
//!
//! Declare a device, open its cdev, bind it to a context, attach it to an
//! IOAS with memory mapped, and let the device DMA:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use uiommufd::vfio::device_fd::DeviceFile;
//! use uiommufd::vfio::model::{Bar, Bus, PciIds, PciLayout, PciModel};
//! use uiommufd::vfio::registry;
//! use uiommufd::{fds, Context, Prot};
//!
//! /// A device that only does DMA when told to.
//! #[derive(Debug, Default)]
//! struct Dma(Mutex<Option<Arc<dyn Bus>>>);
//!
//! impl PciModel for Dma {
//!     fn kind(&self) -> &'static str { "doc-dma" }
//!     fn layout(&self) -> PciLayout {
//!         let bar = Bar::registers(4096);
//!         PciLayout {
//!             bars: [Some(bar), None, None, None, None, None],
//!             ..PciLayout::new(PciIds::new(0x1b36, 0x7f00, 0xff0000))
//!         }
//!     }
//!     fn bar_read(&self, _bar: u8, _off: u64, data: &mut [u8]) { data.fill(0) }
//!     fn bar_write(&self, _bar: u8, _off: u64, _data: &[u8]) {}
//!     fn connect(&self, bus: Option<Arc<dyn Bus>>) { *self.0.lock().unwrap() = bus }
//!     fn reset(&self) {}
//! }
//!
//! let model = Arc::new(Dma::default());
//! registry::declare_model("doc-dma,addr=0000:ee:00.0,group=990,cdev=990", model.clone())?;
//! let fd = registry::open_cdev(990, true)?;
//! let file: Arc<DeviceFile> = fds::get_as(fd).unwrap();
//!
//! let ctx = Context::new();
//! let _dev_id = file.bind_context(&ctx)?;
//! let ioas = ctx.ioas_alloc()?;
//! let mut page = vec![0u8; 8192];
//! let va = (page.as_mut_ptr() as u64).next_multiple_of(4096);
//! ctx.ioas(ioas)?.map_user(va, 4096, Some(0x8000_0000), Prot::RW)?;
//! let hwpt_id = file.attach(ioas)?; // an auto domain: a VT-d domain
//! assert_ne!(hwpt_id, ioas);
//!
//! // bus mastering on (config COMMAND), then the device writes
//! file.device().config_write(4, &[0x6, 0]);
//! let bus = model.0.lock().unwrap().clone().unwrap();
//! bus.dma_write(0x8000_0000, b"hello").unwrap();
//! assert_eq!(std::hint::black_box(&page)[(va - page.as_ptr() as u64) as usize], b'h');
//! assert!(bus.dma_write(0x9000_0000, b"x").is_err(), "nothing mapped there");
//!
//! fds::close(fd)?; // unbinds
//! # Ok::<(), uiommufd::Error>(())
//! ```

pub mod device;
pub mod device_fd;
pub mod group;
pub(crate) mod ioeventfd;
pub mod migration;
pub mod model;
pub mod pci_config;
pub mod registry;
pub mod sysfs;
pub mod uapi;
