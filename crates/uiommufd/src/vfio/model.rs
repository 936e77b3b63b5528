//! The contract between the VFIO layer and a device model.
//!
//! A model is the hardware: it answers BAR accesses, does DMA and raises
//! interrupts through the [`Bus`] it is connected to, resets, and (for
//! migration) stops and saves or loads its whole state. The VFIO layer owns
//! everything `vfio-pci` owns for a real function: config space emulation
//! (from [`PciLayout`]), the MSI-X table and PBA (the model only says where
//! they are), the IRQ eventfds, and which domain DMA goes through.

use std::fmt::Debug;
use std::sync::Arc;

use crate::domain::DmaFault;
use crate::Result;

/// The identity registers of a function's config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID (offset 0x00).
    pub vendor: u16,
    /// Device ID (0x02).
    pub device: u16,
    /// Revision ID (0x08).
    pub revision: u8,
    /// Class code, 24 bits: base class, subclass, programming interface (0x09..0x0b).
    pub class: u32,
    /// Subsystem vendor ID (0x2c).
    pub subsystem_vendor: u16,
    /// Subsystem ID (0x2e).
    pub subsystem_device: u16,
}

impl PciIds {
    /// Device `device` of vendor `vendor`, of class `class`, revision 0,
    /// with no subsystem IDs (0).
    pub const fn new(vendor: u16, device: u16, class: u32) -> PciIds {
        PciIds {
            vendor,
            device,
            revision: 0,
            class,
            subsystem_vendor: 0,
            subsystem_device: 0,
        }
    }
}

/// One memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Size in bytes: a power of two, at least 4 KiB.
    pub size: u64,
    /// A 64-bit BAR (takes two BAR registers).
    pub mem64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
    /// Backed by shared memory the program may `mmap`
    /// ([`PciModel::bar_memory`]); otherwise every access is a
    /// [`PciModel::bar_read`]/[`PciModel::bar_write`] call.
    pub mmap: bool,
}

impl Bar {
    /// A 32-bit, non-prefetchable BAR of `size` bytes whose every access
    /// is a model call (registers).
    pub const fn registers(size: u64) -> Bar {
        Bar {
            size,
            mem64: false,
            prefetchable: false,
            mmap: false,
        }
    }

    /// A 64-bit, prefetchable BAR of `size` bytes backed by shared memory
    /// the program may `mmap`.
    pub const fn memory(size: u64) -> Bar {
        Bar {
            size,
            mem64: true,
            prefetchable: true,
            mmap: true,
        }
    }
}

/// Where the MSI-X table and PBA live (the VFIO layer emulates both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (1..=2048).
    pub vectors: u16,
    /// BAR of the table.
    pub table_bar: u8,
    /// Offset of the table in its BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR of the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in its BAR (8-byte aligned).
    pub pba_offset: u32,
}

/// What a model declares about its PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciLayout {
    /// Identity registers.
    pub ids: PciIds,
    /// BARs 0..5; a 64-bit BAR at `i` leaves `i + 1` `None`.
    pub bars: [Option<Bar>; 6],
    /// Interrupt pin (0x3d): 0 for none, 1 for INTA.
    pub intx_pin: u8,
    /// MSI vectors (a power of two up to 32), 0 for no MSI capability.
    pub msi_vectors: u8,
    /// The MSI-X capability, if any.
    pub msix: Option<MsixLayout>,
    /// log2 of the PASIDs the function supports (its PCIe PASID
    /// capability), 0 for none. The IOMMU driver it is bound with gets it
    /// (`GET_HW_INFO`'s `out_max_pasid_log2`, PASID attach) and the model
    /// can tag DMA with them ([`Bus::dma_read_pasid`]); the config space
    /// does not show the extended capability itself.
    pub pasid_log2: u8,
}

impl PciLayout {
    /// A function with identity `ids` and nothing else: no BARs, no
    /// interrupts, no PASIDs (what it has is set with struct update
    /// syntax: `PciLayout { intx_pin: 1, ..PciLayout::new(ids) }`).
    pub const fn new(ids: PciIds) -> PciLayout {
        PciLayout {
            ids,
            bars: [None; 6],
            intx_pin: 0,
            msi_vectors: 0,
            msix: None,
            pasid_log2: 0,
        }
    }
}

/// The device's side of the machine: DMA through its IOMMU domain and its
/// interrupt lines. Given by the VFIO layer (or a test) to
/// [`PciModel::connect`].
pub trait Bus: Send + Sync + Debug {
    /// Read `buf.len()` bytes at `iova` through the domain the device is
    /// attached to. A fault reaches no memory beyond what was already
    /// copied, and is reported by the VFIO layer (log, fault queue).
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), DmaFault>;
    /// Write `buf` at `iova` (dirty tracking sees it).
    fn dma_write(&self, iova: u64, buf: &[u8]) -> std::result::Result<(), DmaFault>;
    /// Read at `iova` in the address space of PASID `pasid` (a request
    /// carrying that PASID; 0 is the requester ID's, [`Bus::dma_read`]).
    /// A PASID attached to nothing is [`DmaFault::Blocked`]. Default: a
    /// bus without PASIDs.
    fn dma_read_pasid(
        &self,
        pasid: u32,
        iova: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), DmaFault> {
        if pasid == 0 {
            return self.dma_read(iova, buf);
        }
        Err(DmaFault::Blocked { iova })
    }
    /// Write at `iova` for PASID `pasid`, as [`Bus::dma_read_pasid`].
    fn dma_write_pasid(
        &self,
        pasid: u32,
        iova: u64,
        buf: &[u8],
    ) -> std::result::Result<(), DmaFault> {
        if pasid == 0 {
            return self.dma_write(iova, buf);
        }
        Err(DmaFault::Blocked { iova })
    }
    /// An atomic operation on the aligned 64-bit word at `iova` for PASID
    /// `pasid` (0: none); returns the old value (see
    /// [`crate::domain::Domain::dma_atomic`]). Default: a bus without
    /// atomics ([`DmaFault::Blocked`]).
    fn dma_atomic(
        &self,
        pasid: u32,
        iova: u64,
        op: crate::domain::AtomicOp,
    ) -> std::result::Result<u64, DmaFault> {
        let _ = (pasid, op);
        Err(DmaFault::Blocked { iova })
    }
    /// Raise interrupt `vector`: an MSI-X or MSI vector when one is
    /// enabled, else INTx (any vector). Dropped when nothing is set up
    /// to deliver it, as on real hardware with interrupts disabled.
    fn interrupt(&self, vector: u16);
}

/// A PCI function emulated in userspace.
pub trait PciModel: Send + Sync + Debug {
    /// The model's name (`"dma-engine"`).
    fn kind(&self) -> &'static str;
    /// Its config-space identity, BARs and interrupt capabilities.
    /// Constant for the life of the model.
    fn layout(&self) -> PciLayout;
    /// A read of `data.len()` (1, 2, 4 or 8) bytes at `offset` of `bar`,
    /// naturally aligned, outside the MSI-X table and PBA.
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]);
    /// A write, as [`PciModel::bar_read`].
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]);
    /// The shared memory behind a BAR declared with `mmap`: a file
    /// descriptor the model keeps open and the offset of the BAR in it.
    fn bar_memory(&self, bar: u8) -> Option<(i32, u64)> {
        let _ = bar;
        None
    }
    /// Connect the model to its bus (`Some`) when the device is opened,
    /// or disconnect it (`None`) when it is closed.
    fn connect(&self, bus: Option<Arc<dyn Bus>>);
    /// Bus mastering (config COMMAND bit 2) turned on or off: no DMA while
    /// off.
    fn set_bus_master(&self, on: bool) {
        let _ = on;
    }
    /// Function-level reset: registers to their power-on values, DMA and
    /// interrupts stopped, nothing outstanding when it returns.
    fn reset(&self);
    /// Stop (`false`) or resume (`true`) the device for migration: when
    /// stopping returns, no DMA is in flight and none and no interrupt
    /// starts until it is resumed. MMIO is still served while stopped.
    fn set_running(&self, running: bool) {
        let _ = running;
    }
    /// The device's whole state, serialised (taken while stopped).
    fn save_state(&self) -> Result<Vec<u8>> {
        crate::bail!(
            EOPNOTSUPP,
            "a {} device has no migratable state",
            self.kind()
        )
    }
    /// Load what [`PciModel::save_state`] produced (while stopped).
    fn load_state(&self, data: &[u8]) -> Result<()> {
        let _ = data;
        crate::bail!(
            EOPNOTSUPP,
            "a {} device has no migratable state",
            self.kind()
        )
    }
}
