//! The `dma-engine`'s traffic records (docs/devices/dma-engine.md), as the
//! migration checks them: a record is a pure function of its sequence
//! number (the model's own [`traffic::record`]), so either side can write
//! or check one on its own.

use uiommufd::devices::dma_engine::{regs, traffic};

/// Bytes per record.
pub const RECORD: u64 = traffic::RECORD_SIZE;
/// BAR0 `TRAFFIC_SEQ`: the sequence number of the next record.
pub const TRAFFIC_SEQ: u64 = regs::TRAFFIC_SEQ;
/// BAR0 `TRAFFIC_COUNT`: records written since reset.
pub const TRAFFIC_COUNT: u64 = regs::TRAFFIC_COUNT;

/// The record with sequence number `seq`.
pub fn record(seq: u64) -> [u8; RECORD as usize] {
    traffic::record(seq)
}

/// Where record `seq` goes in a window of `size` bytes at offset 0.
pub fn slot(seq: u64, size: u64) -> u64 {
    (seq % (size / RECORD)) * RECORD
}
