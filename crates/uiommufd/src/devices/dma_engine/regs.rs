//! The BAR0 register map (`docs/devices/dma-engine.md`, version 1.0) and
//! the register file.

use crate::domain::DmaFault;

/// `ID`: the identity register.
pub const ID: u64 = 0x000;
/// `ID`'s value: "DMAE".
pub const ID_VALUE: u32 = 0x444d_4145;
/// `VERSION`: the map version.
pub const VERSION: u64 = 0x004;
/// `VERSION`'s value: 1.0.
pub const VERSION_VALUE: u32 = 0x0001_0000;
/// `CAPS`: what the device can do.
pub const CAPS: u64 = 0x008;
/// `CAPS`' value: COPY, FILL, TRAFFIC, 4 MSI-X vectors.
pub const CAPS_VALUE: u32 = 0x7 | (MSIX_VECTORS as u32) << 16;
/// `SCRATCH`: a plain read-write register.
pub const SCRATCH: u64 = 0x00c;
/// `CONTROL`.
pub const CONTROL: u64 = 0x010;
/// `CONTROL.RING_ENABLE`: process the descriptor ring.
pub const CONTROL_RING_ENABLE: u32 = 1 << 0;
/// `CONTROL.RESET`: write 1 for a device reset.
pub const CONTROL_RESET: u32 = 1 << 31;
/// `STATUS` (read only).
pub const STATUS: u64 = 0x014;
/// `STATUS.RING_ENABLED`.
pub const STATUS_RING_ENABLED: u32 = 1 << 0;
/// `STATUS.RING_IDLE`: `HEAD` = `TAIL`.
pub const STATUS_RING_IDLE: u32 = 1 << 1;
/// `STATUS.RING_HALTED`: stopped by a fault.
pub const STATUS_RING_HALTED: u32 = 1 << 2;
/// `STATUS.TRAFFIC_ACTIVE`.
pub const STATUS_TRAFFIC_ACTIVE: u32 = 1 << 3;
/// `STATUS.BUS_MASTER`.
pub const STATUS_BUS_MASTER: u32 = 1 << 4;
/// `STATUS.STOPPED`: stopped for migration.
pub const STATUS_STOPPED: u32 = 1 << 5;
/// `STATUS.BUSY`: a descriptor or record in flight.
pub const STATUS_BUSY: u32 = 1 << 6;
/// `INT_CAUSE` (RW1C).
pub const INT_CAUSE: u64 = 0x018;
/// `INT_ENABLE`.
pub const INT_ENABLE: u64 = 0x01c;
/// Cause bit: a descriptor with `INTERRUPT` completed (MSI-X vector 0).
pub const INT_COMPLETION: u32 = 1 << 0;
/// Cause bit: an error (vector 1).
pub const INT_ERROR: u32 = 1 << 1;
/// Cause bit: the traffic stream wrapped its window (vector 2).
pub const INT_TRAFFIC: u32 = 1 << 2;
/// Every cause bit.
pub const INT_ALL: u32 = INT_COMPLETION | INT_ERROR | INT_TRAFFIC;
/// MSI-X vectors (the vector of cause bit `n` is `n`).
pub const MSIX_VECTORS: u16 = 4;
/// `ERROR_CODE`: code, where, write (any write clears it and `ERROR_ADDR`).
pub const ERROR_CODE: u64 = 0x020;
/// `ERROR_ADDR` (64-bit): the IOVA of the last error.
pub const ERROR_ADDR: u64 = 0x028;
/// `ERROR_COUNT`: errors since reset.
pub const ERROR_COUNT: u64 = 0x030;
/// `RING_BASE` (64-bit).
pub const RING_BASE: u64 = 0x040;
/// `RING_SIZE`: entries.
pub const RING_SIZE: u64 = 0x048;
/// `RING_HEAD`: next descriptor the device processes.
pub const RING_HEAD: u64 = 0x04c;
/// `RING_TAIL`: one past the last descriptor posted.
pub const RING_TAIL: u64 = 0x050;
/// `DOORBELL`: any write wakes the device.
pub const DOORBELL: u64 = 0x054;
/// `COMPLETED`: descriptors completed since reset.
pub const COMPLETED: u64 = 0x058;
/// `TRAFFIC_CTRL`.
pub const TRAFFIC_CTRL: u64 = 0x080;
/// `TRAFFIC_CTRL.ENABLE`.
pub const TRAFFIC_ENABLE: u32 = 1 << 0;
/// `TRAFFIC_BASE` (64-bit): IOVA of the window.
pub const TRAFFIC_BASE: u64 = 0x088;
/// `TRAFFIC_SIZE` (64-bit): bytes of the window.
pub const TRAFFIC_SIZE: u64 = 0x090;
/// `TRAFFIC_RATE`: records per second (0: as fast as possible).
pub const TRAFFIC_RATE: u64 = 0x098;
/// `TRAFFIC_SEQ` (64-bit): sequence number of the next record.
pub const TRAFFIC_SEQ: u64 = 0x0a0;
/// `TRAFFIC_COUNT` (64-bit): records written since reset.
pub const TRAFFIC_COUNT: u64 = 0x0a8;

/// Largest `RING_SIZE`.
pub const RING_SIZE_MAX: u32 = 65536;
/// `TRAFFIC_RATE` at power-on without a `rate` parameter.
pub const DEFAULT_RATE: u32 = 1000;

/// `ERROR_CODE` bit 16: the access was a write.
pub const ERROR_WRITE: u32 = 1 << 16;

/// An error code (`ERROR_CODE` bits 7:0, a descriptor's failed status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    /// DMA to an IOVA the domain does not map.
    NotPresent = 1,
    /// DMA the mapping does not allow.
    Permission = 2,
    /// The host memory behind the IOVA cannot be accessed.
    Host = 3,
    /// The device may not master the bus.
    Blocked = 4,
    /// Unknown opcode, reserved flags, or too long.
    BadDescriptor = 5,
    /// `RING_SIZE` 0, or `HEAD`/`TAIL` out of the ring.
    BadRing = 6,
}

/// Where an error happened (`ERROR_CODE` bits 15:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorSite {
    /// Fetching a descriptor.
    Fetch = 1,
    /// A COPY's source.
    Source = 2,
    /// A COPY's or FILL's destination.
    Destination = 3,
    /// Writing a descriptor's status back.
    Writeback = 4,
    /// A traffic record.
    Traffic = 5,
    /// The ring registers.
    Ring = 6,
}

/// One error as the error registers record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevError {
    /// The `ERROR_CODE` value.
    pub code: u32,
    /// The `ERROR_ADDR` value.
    pub addr: u64,
}

impl DevError {
    /// An error of `kind` at `site` about `addr`.
    pub fn new(kind: ErrorKind, site: ErrorSite, write: bool, addr: u64) -> DevError {
        DevError {
            code: kind as u32 | (site as u32) << 8 | if write { ERROR_WRITE } else { 0 },
            addr,
        }
    }

    /// A DMA fault at `site` (the access was a `write`).
    pub fn from_fault(f: DmaFault, site: ErrorSite, write: bool) -> DevError {
        let (kind, iova) = match f {
            DmaFault::NotPresent { iova } => (ErrorKind::NotPresent, iova),
            DmaFault::Permission { iova, .. } => (ErrorKind::Permission, iova),
            DmaFault::Host { iova } => (ErrorKind::Host, iova),
            DmaFault::Blocked { iova } => (ErrorKind::Blocked, iova),
        };
        DevError::new(kind, site, write, iova)
    }

    /// The code alone (bits 7:0).
    pub fn kind(&self) -> u8 {
        self.code as u8
    }
}

/// The register file: every register with state (the rest are constants
/// or computed). Also what `save_state` serialises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Regs {
    /// `SCRATCH`.
    pub scratch: u32,
    /// `CONTROL` (without the self-clearing `RESET`).
    pub control: u32,
    /// `INT_CAUSE`.
    pub int_cause: u32,
    /// `INT_ENABLE`.
    pub int_enable: u32,
    /// `ERROR_CODE`.
    pub error_code: u32,
    /// `ERROR_ADDR`.
    pub error_addr: u64,
    /// `ERROR_COUNT`.
    pub error_count: u32,
    /// `RING_BASE`.
    pub ring_base: u64,
    /// `RING_SIZE`.
    pub ring_size: u32,
    /// `RING_HEAD`.
    pub ring_head: u32,
    /// `RING_TAIL`.
    pub ring_tail: u32,
    /// `COMPLETED`.
    pub completed: u32,
    /// `STATUS.RING_HALTED`.
    pub ring_halted: bool,
    /// `TRAFFIC_CTRL`.
    pub traffic_ctrl: u32,
    /// `TRAFFIC_BASE`.
    pub traffic_base: u64,
    /// `TRAFFIC_SIZE`.
    pub traffic_size: u64,
    /// `TRAFFIC_RATE`.
    pub traffic_rate: u32,
    /// `TRAFFIC_SEQ`.
    pub traffic_seq: u64,
    /// `TRAFFIC_COUNT`.
    pub traffic_count: u64,
}

/// Power-on values of the traffic registers (the device's parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerOn {
    /// `TRAFFIC_BASE`.
    pub traffic_base: u64,
    /// `TRAFFIC_SIZE`.
    pub traffic_size: u64,
    /// `TRAFFIC_RATE`.
    pub traffic_rate: u32,
    /// `TRAFFIC_CTRL.ENABLE`.
    pub traffic_on: bool,
}

impl Default for PowerOn {
    fn default() -> PowerOn {
        PowerOn {
            traffic_base: 0,
            traffic_size: 0,
            traffic_rate: DEFAULT_RATE,
            traffic_on: false,
        }
    }
}

impl Regs {
    /// The values at power-on and after every reset.
    pub fn power_on(p: &PowerOn) -> Regs {
        Regs {
            traffic_ctrl: if p.traffic_on { TRAFFIC_ENABLE } else { 0 },
            traffic_base: p.traffic_base,
            traffic_size: p.traffic_size,
            traffic_rate: p.traffic_rate,
            ..Regs::default()
        }
    }

    /// Traffic enabled with a window of at least one record.
    pub fn traffic_active(&self) -> bool {
        self.traffic_ctrl & TRAFFIC_ENABLE != 0 && self.traffic_size >= 64
    }

    /// Record `err` in the error registers.
    pub fn record_error(&mut self, err: DevError) {
        self.error_code = err.code;
        self.error_addr = err.addr;
        self.error_count = self.error_count.wrapping_add(1);
    }
}

/// Merge the bytes of `val` selected by `mask` into `old`.
pub(super) fn merge32(old: u32, val: u32, mask: u32) -> u32 {
    (old & !mask) | (val & mask)
}

/// Merge into the low (`hi` false) or high dword of a 64-bit register.
pub(super) fn merge64(old: u64, hi: bool, val: u32, mask: u32) -> u64 {
    let sh = if hi { 32 } else { 0 };
    let cur = (old >> sh) as u32;
    let new = merge32(cur, val, mask) as u64;
    (old & !(0xffff_ffffu64 << sh)) | new << sh
}
