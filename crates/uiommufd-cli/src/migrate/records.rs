//! The `dma-engine`'s traffic records (docs/devices/dma-engine.md): a
//! record is a pure function of its sequence number, so either side can
//! write or check one on its own.

/// Bytes per record.
pub const RECORD: u64 = 64;
/// BAR0 `TRAFFIC_SEQ`: the sequence number of the next record.
pub const TRAFFIC_SEQ: u64 = 0xa0;
/// BAR0 `TRAFFIC_COUNT`: records written since reset.
pub const TRAFFIC_COUNT: u64 = 0xa8;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The record with sequence number `seq`.
pub fn record(seq: u64) -> [u8; RECORD as usize] {
    let mut r = [0u8; RECORD as usize];
    r[0..4].copy_from_slice(&0x5254_4d44u32.to_le_bytes());
    r[4..8].copy_from_slice(&1u32.to_le_bytes());
    r[8..16].copy_from_slice(&seq.to_le_bytes());
    for i in 0..6u64 {
        let at = 16 + 8 * i as usize;
        r[at..at + 8]
            .copy_from_slice(&splitmix64(seq.wrapping_mul(8).wrapping_add(i)).to_le_bytes());
    }
    r
}

/// Where record `seq` goes in a window of `size` bytes at offset 0.
pub fn slot(seq: u64, size: u64) -> u64 {
    (seq % (size / RECORD)) * RECORD
}

#[cfg(test)]
mod tests {
    #[test]
    fn documented_first_word() {
        let r = super::record(0);
        assert_eq!(
            u64::from_le_bytes(r[16..24].try_into().unwrap()),
            0xe220_a839_7b1d_cdaf
        );
    }
}
