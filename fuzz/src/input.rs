//! A byte reader that never fails: past the end of the input every read
//! yields zeros, so any byte string decodes to some program.

/// Fuzzer bytes, consumed front to back.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// Fill `out` with the next bytes (zeros past the end).
    pub fn fill(&mut self, out: &mut [u8]) {
        let n = out.len().min(self.remaining());
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        out[n..].fill(0);
        self.pos += n;
    }

    /// The next `n` bytes (zero padded).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.fill(&mut b);
        b[0]
    }

    /// Two bytes, little endian.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        self.fill(&mut b);
        u16::from_le_bytes(b)
    }

    /// Four bytes, little endian.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_le_bytes(b)
    }

    /// Eight bytes, little endian.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// A value in `0..n` (`n > 0`) from one byte (two when `n > 256`).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        if n <= 256 {
            self.u8() as usize % n
        } else {
            self.u16() as usize % n
        }
    }

    /// True once in `n` (by one byte).
    pub fn one_in(&mut self, n: u8) -> bool {
        self.u8().is_multiple_of(n)
    }

    /// One bit's worth of choice.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// An element of `choices` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len())]
    }
}

/// Whether `UIOMMUFD_FUZZ_TRACE` is set: the harnesses then print every
/// step to stderr (to read a crashing input as a program).
pub fn tracing() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UIOMMUFD_FUZZ_TRACE").is_some())
}
