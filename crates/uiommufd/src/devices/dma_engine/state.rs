//! The saved state: magic `DMAESTAT`, a u32 format version, a u32 body
//! length, then the body — every register with state and the interrupts
//! raised but not yet sent, little-endian, in the order of [`save`].

use super::regs::Regs;
use crate::{bail, Result};

/// First 8 bytes.
pub const STATE_MAGIC: [u8; 8] = *b"DMAESTAT";
/// The format written and the newest read.
pub const STATE_VERSION: u32 = 1;
/// Body bytes of version 1.
const BODY_V1: usize = 5 * 4 // scratch, control, int_cause, int_enable, error_code
    + 8 + 4 // error_addr, error_count
    + 8 + 3 * 4 + 4 // ring_base, ring_size/head/tail, completed
    + 1 // ring_halted
    + 4 + 8 + 8 + 4 // traffic_ctrl, base, size, rate
    + 8 + 8 // traffic_seq, traffic_count
    + 4; // pending_irq

/// What the state holds besides the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extra {
    /// Cause bits whose interrupt is raised but not yet sent.
    pub pending_irq: u32,
}

/// Serialise.
pub fn save(r: &Regs, x: &Extra) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + BODY_V1);
    v.extend_from_slice(&STATE_MAGIC);
    v.extend_from_slice(&STATE_VERSION.to_le_bytes());
    v.extend_from_slice(&(BODY_V1 as u32).to_le_bytes());
    for w in [
        r.scratch,
        r.control,
        r.int_cause,
        r.int_enable,
        r.error_code,
    ] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(&r.error_addr.to_le_bytes());
    v.extend_from_slice(&r.error_count.to_le_bytes());
    v.extend_from_slice(&r.ring_base.to_le_bytes());
    for w in [r.ring_size, r.ring_head, r.ring_tail] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(&r.completed.to_le_bytes());
    v.push(r.ring_halted as u8);
    v.extend_from_slice(&r.traffic_ctrl.to_le_bytes());
    v.extend_from_slice(&r.traffic_base.to_le_bytes());
    v.extend_from_slice(&r.traffic_size.to_le_bytes());
    v.extend_from_slice(&r.traffic_rate.to_le_bytes());
    v.extend_from_slice(&r.traffic_seq.to_le_bytes());
    v.extend_from_slice(&r.traffic_count.to_le_bytes());
    v.extend_from_slice(&x.pending_irq.to_le_bytes());
    debug_assert_eq!(v.len(), 16 + BODY_V1);
    v
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (a, rest) = self.0.split_at(N);
        self.0 = rest;
        a.try_into().unwrap_or([0; N])
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// Parse what [`save`] wrote. `EINVAL` for another magic, an unknown
/// version, a wrong length or a value no register can hold.
pub fn load(data: &[u8]) -> Result<(Regs, Extra)> {
    if data.len() < 16 || data[..8] != STATE_MAGIC {
        bail!(
            EINVAL,
            "dma-engine state: {} bytes without the DMAESTAT header",
            data.len()
        );
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    let len = u32::from_le_bytes([data[12], data[13], data[14], data[15]]) as usize;
    if version != STATE_VERSION {
        bail!(
            EINVAL,
            "dma-engine state format {version} is not the supported {STATE_VERSION}"
        );
    }
    if len != BODY_V1 || data.len() != 16 + BODY_V1 {
        bail!(
            EINVAL,
            "dma-engine state: body of {len} bytes in {} bytes, format {STATE_VERSION} has {BODY_V1}",
            data.len()
        );
    }
    let mut rd = Reader(&data[16..]);
    let mut r = Regs {
        scratch: rd.u32(),
        control: rd.u32(),
        int_cause: rd.u32(),
        int_enable: rd.u32(),
        error_code: rd.u32(),
        error_addr: rd.u64(),
        error_count: rd.u32(),
        ring_base: rd.u64(),
        ring_size: rd.u32(),
        ring_head: rd.u32(),
        ring_tail: rd.u32(),
        completed: rd.u32(),
        ..Regs::default()
    };
    let halted = rd.u8();
    r.ring_halted = halted != 0;
    r.traffic_ctrl = rd.u32();
    r.traffic_base = rd.u64();
    r.traffic_size = rd.u64();
    r.traffic_rate = rd.u32();
    r.traffic_seq = rd.u64();
    r.traffic_count = rd.u64();
    let x = Extra {
        pending_irq: rd.u32(),
    };
    use super::regs::*;
    if halted > 1
        || r.control & !CONTROL_RING_ENABLE != 0
        || (r.int_cause | r.int_enable | x.pending_irq) & !INT_ALL != 0
        || r.ring_base & 0x1f != 0
        || r.ring_size > RING_SIZE_MAX
        || r.traffic_ctrl & !TRAFFIC_ENABLE != 0
        || (r.traffic_base | r.traffic_size) & 0x3f != 0
    {
        bail!(
            EINVAL,
            "dma-engine state holds a register value the device cannot have"
        );
    }
    Ok((r, x))
}
