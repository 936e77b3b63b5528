//! Traffic records: a deterministic stream any reader can check record by
//! record, and the clock that paces it.

use std::time::{Duration, Instant};

/// Bytes of a record.
pub const RECORD_SIZE: u64 = 64;
/// A record's magic (bytes `D M T R`).
pub const RECORD_MAGIC: u32 = 0x5254_4d44;
/// A record's format.
pub const RECORD_FORMAT: u32 = 1;
/// Payload words of a record.
pub const PAYLOAD_WORDS: usize = 6;
/// How far behind the clock may fall before it restarts instead of
/// bursting to catch up.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// The splitmix64 output function.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Record number `seq`.
pub fn record(seq: u64) -> [u8; 64] {
    let mut r = [0u8; 64];
    r[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    r[4..8].copy_from_slice(&RECORD_FORMAT.to_le_bytes());
    r[8..16].copy_from_slice(&seq.to_le_bytes());
    for i in 0..PAYLOAD_WORDS {
        let w = splitmix64(seq.wrapping_mul(8).wrapping_add(i as u64));
        r[16 + 8 * i..24 + 8 * i].copy_from_slice(&w.to_le_bytes());
    }
    r
}

/// Check the 64 bytes found in slot `slot` of a window of `records`
/// records: `Ok(Some(seq))` for a valid record, `Ok(None)` for a slot
/// never written (all zero), `Err` saying what is wrong otherwise.
pub fn check(bytes: &[u8], slot: u64, records: u64) -> Result<Option<u64>, String> {
    let Ok(b) = <&[u8; 64]>::try_from(bytes) else {
        return Err(format!("a record is 64 bytes, not {}", bytes.len()));
    };
    if b.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    let seq = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    if records == 0 || seq % records != slot {
        return Err(format!(
            "record {seq} found in slot {slot} of a {records}-record window"
        ));
    }
    if b != &record(seq) {
        return Err(format!(
            "record {seq} has the wrong magic, format or payload"
        ));
    }
    Ok(Some(seq))
}

/// The pacing clock: record `done` after `start` is due at
/// `start + done / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// When the stream (re)started.
    pub start: Instant,
    /// Records written since.
    pub done: u64,
}

impl Clock {
    /// A clock starting now.
    pub fn new(now: Instant) -> Clock {
        Clock {
            start: now,
            done: 0,
        }
    }

    /// How many records are due by `now` at `rate` (> 0) records per
    /// second and not written yet.
    pub fn due_by(&self, now: Instant, rate: u32) -> u64 {
        let el = now.saturating_duration_since(self.start).as_nanos();
        let total = el * rate as u128 / 1_000_000_000 + 1;
        u64::try_from(total)
            .unwrap_or(u64::MAX)
            .saturating_sub(self.done)
    }

    /// When the next record is due at `rate` records per second (> 0).
    pub fn due(&self, rate: u32) -> Instant {
        let ns = (self.done as u128 * 1_000_000_000) / rate.max(1) as u128;
        let ns = u64::try_from(ns).unwrap_or(u64::MAX / 2);
        self.start
            .checked_add(Duration::from_nanos(ns))
            .unwrap_or(self.start + Duration::from_secs(1 << 30))
    }
}
