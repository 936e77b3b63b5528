//! The device's migration data stream, as written to and read from the
//! data fds (v2) or the data window of the migration region (v1).
//!
//! A stream is a sequence of records: magic `"UIMD"` (u32 LE), kind (u32
//! LE: 1 = a pre-copy snapshot taken while the device ran, 2 = the final
//! state taken while it was stopped), payload length (u64 LE), payload
//! (what [`crate::vfio::model::PciModel::save_state`] produced). The
//! destination keeps the last complete record and loads it when it
//! leaves RESUMING; the final record must be there by then, so a stream
//! cut short is refused instead of resuming a device from a stale state.

use crate::{bail, Result};

/// Record magic.
pub const MAGIC: u32 = u32::from_le_bytes(*b"UIMD");
/// A snapshot taken while the device was running (pre-copy).
pub const KIND_PRECOPY: u32 = 1;
/// The state taken while the device was stopped.
pub const KIND_FINAL: u32 = 2;
/// Header bytes of a record.
pub const HEADER: usize = 16;
/// The largest payload a destination accepts: device state, not memory.
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// One record, header and payload, as bytes.
pub fn record(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.extend_from_slice(&MAGIC.to_le_bytes());
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// The receiving end: bytes in any chunking, records out.
#[derive(Debug, Default)]
pub struct Receiver {
    /// Bytes of the record being received.
    partial: Vec<u8>,
    /// The last complete record: its kind and payload.
    last: Option<(u32, Vec<u8>)>,
    /// Total bytes taken.
    total: u64,
}

impl Receiver {
    /// Take `data`, a piece of the stream. `EINVAL` for a corrupt header
    /// (nothing of `data` is kept then).
    pub fn push(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.partial.len() < HEADER {
                let n = (HEADER - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.partial.len() < HEADER {
                    break;
                }
                let magic = u32::from_le_bytes(self.partial[0..4].try_into().unwrap());
                let kind = u32::from_le_bytes(self.partial[4..8].try_into().unwrap());
                let len = u64::from_le_bytes(self.partial[8..16].try_into().unwrap());
                if magic != MAGIC || !(KIND_PRECOPY..=KIND_FINAL).contains(&kind) {
                    self.partial.clear();
                    bail!(
                        EINVAL,
                        "migration stream corrupt at byte {}: bad record header (magic {magic:#x}, kind {kind})",
                        self.total
                    );
                }
                if len > MAX_PAYLOAD {
                    self.partial.clear();
                    bail!(
                        EINVAL,
                        "migration stream record of {len} bytes is larger than any device state ({MAX_PAYLOAD})"
                    );
                }
            }
            let len = u64::from_le_bytes(self.partial[8..16].try_into().unwrap()) as usize;
            let want = HEADER + len - self.partial.len();
            let n = want.min(data.len());
            self.partial.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.total += n as u64;
            if self.partial.len() == HEADER + len {
                let kind = u32::from_le_bytes(self.partial[4..8].try_into().unwrap());
                let payload = self.partial.split_off(HEADER);
                self.partial.clear();
                self.last = Some((kind, payload));
            }
        }
        Ok(())
    }

    /// The state to load: the payload of the last record, which must be
    /// complete and final. `EINVAL` otherwise.
    pub fn finish(&self) -> Result<&[u8]> {
        if !self.partial.is_empty() {
            bail!(
                EINVAL,
                "migration stream ends inside a record ({} bytes of it received)",
                self.partial.len()
            );
        }
        match &self.last {
            Some((KIND_FINAL, p)) => Ok(p),
            Some(_) => bail!(
                EINVAL,
                "migration stream has no final device state (only a pre-copy snapshot)"
            ),
            None => bail!(
                EINVAL,
                "migration stream is empty: no device state to resume"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_chunking_and_bad_streams() {
        let mut s = record(KIND_PRECOPY, b"early");
        s.extend(record(KIND_FINAL, b"the final state"));
        for chunk in [1, 3, 16, 17, 1000] {
            let mut r = Receiver::default();
            for c in s.chunks(chunk) {
                r.push(c).unwrap();
            }
            assert_eq!(r.finish().unwrap(), b"the final state");
        }
        let mut r = Receiver::default();
        r.push(&s[..s.len() - 1]).unwrap();
        assert!(r.finish().is_err());
        let mut r = Receiver::default();
        r.push(&record(KIND_PRECOPY, b"x")).unwrap();
        assert!(r.finish().is_err());
        assert!(Receiver::default().finish().is_err());
        let mut bad = s.clone();
        bad[0] ^= 1;
        assert!(Receiver::default().push(&bad).is_err());
        let mut huge = record(KIND_FINAL, b"");
        huge[8..16].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(Receiver::default().push(&huge).is_err());
    }
}
