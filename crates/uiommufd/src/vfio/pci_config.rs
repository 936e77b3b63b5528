//! The emulated config space of a function (vfio-pci's `vfio_pci_config.c`
//! gives the user a virtualised view of a real one; here the whole thing is
//! virtual, built from [`PciLayout`]).
//!
//! A type 0 header of 256 bytes with a capability list (MSI when the model
//! has MSI vectors, MSI-X when it has an MSI-X layout). Each byte has a
//! write mask (the bits software may change) and a write-1-to-clear mask:
//! a write keeps the read-only bits, takes the writable ones, and clears the
//! RW1C bits written as 1. The BAR registers' write masks are their size
//! masks, so the sizing write of all ones reads back the size; the
//! expansion ROM BAR (0x30) is all read-only zero (no ROM), as are absent
//! BARs.

use crate::vfio::model::{Bar, PciLayout};

/// Config space size (conventional PCI).
pub const CONFIG_SIZE: usize = 256;

/// `PCI_COMMAND` and its bits.
pub const PCI_COMMAND: usize = 0x04;
/// Memory space enable.
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Bus master enable.
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Parity error response.
pub const PCI_COMMAND_PARITY: u16 = 1 << 6;
/// SERR# enable.
pub const PCI_COMMAND_SERR: u16 = 1 << 8;
/// INTx emulation disable.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// `PCI_STATUS`.
pub const PCI_STATUS: usize = 0x06;
/// INTx asserted (read-only).
pub const PCI_STATUS_INTERRUPT: u16 = 1 << 3;
/// Capability list present.
pub const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
/// The RW1C error bits of STATUS: master data parity error, signalled
/// target abort, received target/master abort, signalled system error,
/// detected parity error.
pub const PCI_STATUS_RW1C: u16 =
    (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15);
/// First BAR register.
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
/// Expansion ROM BAR.
pub const PCI_ROM_ADDRESS: usize = 0x30;
/// Capability pointer.
pub const PCI_CAPABILITY_LIST: usize = 0x34;
/// Interrupt line (RW scratch for software).
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin (RO).
pub const PCI_INTERRUPT_PIN: usize = 0x3d;
/// MSI capability ID.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// MSI-X capability ID.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// MSI-X control: enable.
pub const PCI_MSIX_FLAGS_ENABLE: u16 = 1 << 15;
/// MSI-X control: function mask.
pub const PCI_MSIX_FLAGS_MASKALL: u16 = 1 << 14;
/// MSI control: enable.
pub const PCI_MSI_FLAGS_ENABLE: u16 = 1 << 0;
/// MSI control: 64-bit address capable.
pub const PCI_MSI_FLAGS_64BIT: u16 = 1 << 7;

/// What a config write changed that the device must act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigEffects {
    /// Bus mastering turned on (`Some(true)`) or off.
    pub bus_master: Option<bool>,
    /// INTx disable turned on or off.
    pub intx_disable: Option<bool>,
    /// Memory decode turned on or off.
    pub memory: Option<bool>,
}

/// An emulated type 0 config space.
#[derive(Debug, Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    w1c: [u8; CONFIG_SIZE],
    power_on: [u8; CONFIG_SIZE],
    msi_cap: Option<usize>,
    msix_cap: Option<usize>,
}

impl PciConfig {
    /// The power-on config space of a function with `layout`.
    pub fn new(layout: &PciLayout) -> PciConfig {
        let mut c = PciConfig {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            w1c: [0; CONFIG_SIZE],
            power_on: [0; CONFIG_SIZE],
            msi_cap: None,
            msix_cap: None,
        };
        let ids = &layout.ids;
        c.put16(0x00, ids.vendor);
        c.put16(0x02, ids.device);
        c.bytes[0x08] = ids.revision;
        c.bytes[0x09] = ids.class as u8;
        c.bytes[0x0a] = (ids.class >> 8) as u8;
        c.bytes[0x0b] = (ids.class >> 16) as u8;
        c.put16(0x2c, ids.subsystem_vendor);
        c.put16(0x2e, ids.subsystem_device);
        // COMMAND: memory, bus master, parity, SERR, INTx disable (no I/O BARs)
        let cmd_w = PCI_COMMAND_MEMORY
            | PCI_COMMAND_MASTER
            | PCI_COMMAND_PARITY
            | PCI_COMMAND_SERR
            | PCI_COMMAND_INTX_DISABLE;
        c.wmask[PCI_COMMAND..PCI_COMMAND + 2].copy_from_slice(&cmd_w.to_le_bytes());
        c.w1c[PCI_STATUS..PCI_STATUS + 2].copy_from_slice(&PCI_STATUS_RW1C.to_le_bytes());
        // cache line size and latency timer: read-write scratch
        c.wmask[0x0c] = 0xff;
        c.wmask[0x0d] = 0xff;
        // BARs: the write mask is the size mask
        let mut i = 0;
        while i < 6 {
            let off = PCI_BASE_ADDRESS_0 + 4 * i;
            if let Some(bar) = layout.bars[i] {
                let Bar {
                    size,
                    mem64,
                    prefetchable,
                    ..
                } = bar;
                let size = size.max(16).next_power_of_two();
                let mut low: u32 = 0;
                if mem64 {
                    low |= 0b100;
                }
                if prefetchable {
                    low |= 0b1000;
                }
                let mask = !(size - 1);
                c.put32(off, low);
                c.wmask[off..off + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
                if mem64 && i < 5 {
                    c.wmask[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
                    i += 1;
                }
            }
            i += 1;
        }
        c.wmask[PCI_INTERRUPT_LINE] = 0xff;
        c.bytes[PCI_INTERRUPT_PIN] = layout.intx_pin;
        // capabilities
        let mut caps: Vec<usize> = Vec::new();
        let mut next_free = 0x40;
        if layout.msi_vectors > 0 {
            let at = next_free;
            next_free += 0x10;
            c.bytes[at] = PCI_CAP_ID_MSI;
            let mmc = (layout
                .msi_vectors
                .max(1)
                .next_power_of_two()
                .trailing_zeros() as u16)
                .min(5);
            c.put16(at + 2, PCI_MSI_FLAGS_64BIT | (mmc << 1));
            // enable, multiple message enable
            c.wmask[at + 2] = 0x71;
            // address low (dword aligned), high, data
            c.wmask[at + 4..at + 8].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
            c.wmask[at + 8..at + 12].copy_from_slice(&[0xff; 4]);
            c.wmask[at + 12..at + 14].copy_from_slice(&[0xff; 2]);
            c.msi_cap = Some(at);
            caps.push(at);
        }
        if let Some(m) = layout.msix {
            let at = next_free;
            c.bytes[at] = PCI_CAP_ID_MSIX;
            c.put16(at + 2, m.vectors.saturating_sub(1) & 0x7ff);
            c.wmask[at + 3] = 0xc0; // enable, function mask
            c.put32(at + 4, (m.table_offset & !7) | (m.table_bar as u32 & 7));
            c.put32(at + 8, (m.pba_offset & !7) | (m.pba_bar as u32 & 7));
            c.msix_cap = Some(at);
            caps.push(at);
        }
        if let Some(&first) = caps.first() {
            c.bytes[PCI_CAPABILITY_LIST] = first as u8;
            let st = c.get16(PCI_STATUS) | PCI_STATUS_CAP_LIST;
            c.put16(PCI_STATUS, st);
            for w in caps.windows(2) {
                c.bytes[w[0] + 1] = w[1] as u8;
            }
        }
        c.power_on = c.bytes;
        c
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The 16-bit register at `off`.
    pub fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    /// The 32-bit register at `off`.
    pub fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[off],
            self.bytes[off + 1],
            self.bytes[off + 2],
            self.bytes[off + 3],
        ])
    }

    /// Read `buf.len()` bytes at `off` (the caller checked the range).
    pub fn read(&self, off: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.bytes[off..off + buf.len()]);
    }

    /// Write `data` at `off` (the caller checked the range) with the bit
    /// rules; returns what changed that the device acts on.
    pub fn write(&mut self, off: usize, data: &[u8]) -> ConfigEffects {
        let old_cmd = self.get16(PCI_COMMAND);
        for (i, &v) in data.iter().enumerate() {
            let o = off + i;
            let (w, c, old) = (self.wmask[o], self.w1c[o], self.bytes[o]);
            self.bytes[o] = (old & !w & !c) | (v & w) | (old & c & !v);
        }
        let new_cmd = self.get16(PCI_COMMAND);
        let changed = old_cmd ^ new_cmd;
        let bit = |b: u16| (changed & b != 0).then_some(new_cmd & b != 0);
        ConfigEffects {
            bus_master: bit(PCI_COMMAND_MASTER),
            intx_disable: bit(PCI_COMMAND_INTX_DISABLE),
            memory: bit(PCI_COMMAND_MEMORY),
        }
    }

    /// Back to the power-on values (function-level reset).
    pub fn reset(&mut self) {
        self.bytes = self.power_on;
    }

    /// Whether bus mastering is on.
    pub fn bus_master(&self) -> bool {
        self.get16(PCI_COMMAND) & PCI_COMMAND_MASTER != 0
    }

    /// Whether INTx is disabled in COMMAND.
    pub fn intx_disabled(&self) -> bool {
        self.get16(PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE != 0
    }

    /// Set or clear the read-only INTx status bit.
    pub fn set_intx_status(&mut self, on: bool) {
        let st = self.get16(PCI_STATUS) & !PCI_STATUS_INTERRUPT;
        self.put16(PCI_STATUS, st | if on { PCI_STATUS_INTERRUPT } else { 0 });
    }

    /// Offset of the MSI capability.
    pub fn msi_cap(&self) -> Option<usize> {
        self.msi_cap
    }

    /// Offset of the MSI-X capability.
    pub fn msix_cap(&self) -> Option<usize> {
        self.msix_cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::model::{MsixLayout, PciIds};

    fn layout() -> PciLayout {
        PciLayout {
            ids: PciIds {
                vendor: 0x1b36,
                device: 0x1234,
                revision: 2,
                class: 0x088000,
                subsystem_vendor: 0x1af4,
                subsystem_device: 1,
            },
            bars: [
                Some(Bar::registers(0x1000)),
                None,
                Some(Bar::memory(1 << 33)),
                None,
                None,
                None,
            ],
            intx_pin: 1,
            msi_vectors: 4,
            msix: Some(MsixLayout {
                vectors: 8,
                table_bar: 0,
                table_offset: 0x800,
                pba_bar: 0,
                pba_offset: 0xc00,
            }),
            pasid_log2: 0,
        }
    }

    #[test]
    fn header_and_sizing() {
        let mut c = PciConfig::new(&layout());
        assert_eq!(c.get16(0), 0x1b36);
        assert_eq!(c.get32(0x08) >> 8, 0x088000);
        c.write(0x10, &[0xff; 4]);
        assert_eq!(c.get32(0x10), 0xffff_f000);
        c.write(0x18, &[0xff; 4]);
        c.write(0x1c, &[0xff; 4]);
        assert_eq!(c.get32(0x18), 0xc);
        assert_eq!(c.get32(0x1c), 0xffff_fffe);
        c.write(0x30, &0xffff_f800u32.to_le_bytes());
        assert_eq!(c.get32(0x30), 0);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(c.get32(0x14), 0, "absent BAR");
        // status RW1C and read-only pin
        c.bytes[PCI_STATUS + 1] |= 0x80;
        c.write(PCI_STATUS, &0x8000u16.to_le_bytes());
        assert_eq!(c.get16(PCI_STATUS) & 0x8000, 0);
        assert!(c.get16(PCI_STATUS) & PCI_STATUS_CAP_LIST != 0);
        c.write(PCI_INTERRUPT_PIN, &[3]);
        assert_eq!(c.bytes[PCI_INTERRUPT_PIN], 1);
        let e = c.write(PCI_COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(e.bus_master, Some(true));
        assert_eq!(c.get16(PCI_COMMAND), 0x546);
        let at = c.msix_cap().unwrap();
        c.write(at + 2, &0xffffu16.to_le_bytes());
        assert_eq!(c.get16(at + 2), 0xc007);
        c.reset();
        assert_eq!(c.get16(PCI_COMMAND), 0);
    }
}
