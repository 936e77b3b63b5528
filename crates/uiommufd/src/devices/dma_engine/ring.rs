//! Descriptors and their processing: one descriptor is fetched, executed
//! and its status written back by the worker, outside the device lock.

use super::regs::{DevError, ErrorKind, ErrorSite};
use crate::vfio::model::Bus;

/// Bytes of a descriptor.
pub const DESC_SIZE: u64 = 32;
/// Opcode: do nothing (but complete).
pub const OP_NOP: u8 = 0;
/// Opcode: copy `length` bytes from `src` to `dst`.
pub const OP_COPY: u8 = 1;
/// Opcode: fill `length` bytes at `dst` with `pattern`.
pub const OP_FILL: u8 = 2;
/// Flag: set `INT_CAUSE.COMPLETION` when done.
pub const FLAG_INTERRUPT: u8 = 1 << 0;
/// Status written back on success.
pub const STATUS_OK: u16 = 0x0001;
/// Status bit of a failed descriptor (ORed with the error code).
pub const STATUS_FAILED: u16 = 0x8000;
/// Longest `length`.
pub const MAX_LENGTH: u32 = 16 << 20;
/// Bytes moved per DMA call.
pub const CHUNK: usize = 64 << 10;

/// A descriptor as it lies in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// `OP_*`.
    pub opcode: u8,
    /// `FLAG_*`.
    pub flags: u8,
    /// Written by the device: `STATUS_OK` or `STATUS_FAILED | code`.
    pub status: u16,
    /// Bytes.
    pub length: u32,
    /// COPY's source IOVA.
    pub src: u64,
    /// Destination IOVA.
    pub dst: u64,
    /// FILL's pattern.
    pub pattern: u64,
}

impl Descriptor {
    /// Its 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = self.opcode;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.status.to_le_bytes());
        b[4..8].copy_from_slice(&self.length.to_le_bytes());
        b[8..16].copy_from_slice(&self.src.to_le_bytes());
        b[16..24].copy_from_slice(&self.dst.to_le_bytes());
        b[24..32].copy_from_slice(&self.pattern.to_le_bytes());
        b
    }

    /// Parse 32 bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Descriptor {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        Descriptor {
            opcode: b[0],
            flags: b[1],
            status: u16::from_le_bytes([b[2], b[3]]),
            length: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            src: u64_at(8),
            dst: u64_at(16),
            pattern: u64_at(24),
        }
    }

    fn valid(&self) -> bool {
        matches!(self.opcode, OP_NOP | OP_COPY | OP_FILL)
            && self.flags & !FLAG_INTERRUPT == 0
            && self.length <= MAX_LENGTH
    }
}

/// What processing one descriptor came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Errors to record, in order (a data fault, then a writeback fault).
    pub errors: Vec<DevError>,
    /// The ring halts on this descriptor (fetch or writeback fault).
    pub halt: bool,
    /// The descriptor asked for a completion interrupt.
    pub interrupt: bool,
}

/// Fetch, execute and complete the descriptor at `at`; `buf` is the
/// worker's bounce buffer (grown to [`CHUNK`]).
pub fn process(bus: &dyn Bus, at: u64, buf: &mut Vec<u8>) -> Outcome {
    let mut out = Outcome::default();
    let mut raw = [0u8; 32];
    if let Err(f) = bus.dma_read(at, &mut raw) {
        out.errors
            .push(DevError::from_fault(f, ErrorSite::Fetch, false));
        out.halt = true;
        return out;
    }
    let d = Descriptor::from_bytes(&raw);
    let result = if !d.valid() {
        Err(DevError::new(
            ErrorKind::BadDescriptor,
            ErrorSite::Fetch,
            false,
            at,
        ))
    } else {
        out.interrupt = d.flags & FLAG_INTERRUPT != 0;
        execute(bus, &d, buf)
    };
    let status = match result {
        Ok(()) => STATUS_OK,
        Err(e) => {
            out.errors.push(e);
            STATUS_FAILED | e.kind() as u16
        }
    };
    if let Err(f) = bus.dma_write(at + 2, &status.to_le_bytes()) {
        out.errors
            .push(DevError::from_fault(f, ErrorSite::Writeback, true));
        out.halt = true;
    }
    out
}

fn execute(bus: &dyn Bus, d: &Descriptor, buf: &mut Vec<u8>) -> Result<(), DevError> {
    let len = d.length as usize;
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    match d.opcode {
        OP_COPY => {
            let mut done = 0usize;
            while done < len {
                let n = (len - done).min(CHUNK);
                let off = done as u64;
                bus.dma_read(d.src.wrapping_add(off), &mut buf[..n])
                    .map_err(|f| DevError::from_fault(f, ErrorSite::Source, false))?;
                bus.dma_write(d.dst.wrapping_add(off), &buf[..n])
                    .map_err(|f| DevError::from_fault(f, ErrorSite::Destination, true))?;
                done += n;
            }
        }
        OP_FILL => {
            let pat = d.pattern.to_le_bytes();
            let n0 = len.min(CHUNK);
            for (i, b) in buf[..n0].iter_mut().enumerate() {
                *b = pat[i % 8];
            }
            let mut done = 0usize;
            while done < len {
                // every chunk starts at a multiple of CHUNK (of 8)
                let n = (len - done).min(CHUNK);
                bus.dma_write(d.dst.wrapping_add(done as u64), &buf[..n])
                    .map_err(|f| DevError::from_fault(f, ErrorSite::Destination, true))?;
                done += n;
            }
        }
        _ => {}
    }
    Ok(())
}
