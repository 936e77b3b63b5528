//! The kernel's `/proc/<pid>/task/<tid>/fail-nth` file as an engine file
//! ([`FailNthFile`]) over the counters of [`crate::inject`], for the
//! preload to open in place of the real one.

use parking_lot::Mutex;

use crate::files::{self, EngineFile};
use crate::inject::{fail_nth, set_fail_nth};
use crate::Result;

/// The kernel's `/proc/<pid>/task/<tid>/fail-nth` file of thread `tid`:
/// reading gives the remaining count and a newline (at the file position:
/// `pread` honours its offset), writing a number (decimal, `0x` hex or `0`
/// octal, one trailing newline allowed) arms the thread.
#[derive(Debug)]
pub struct FailNthFile {
    tid: i32,
    pos: Mutex<u64>,
}

impl FailNthFile {
    /// The file of thread `tid` (of this process).
    pub fn new(tid: i32) -> FailNthFile {
        FailNthFile {
            tid,
            pos: Mutex::new(0),
        }
    }

    /// The thread the file is about.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    fn alive(&self) -> Result<()> {
        // SAFETY: signal 0 only checks that the thread exists.
        let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), self.tid, 0) };
        if r != 0 {
            crate::bail!(ESRCH, "thread {} has exited", self.tid);
        }
        Ok(())
    }

    /// `simple_read_from_buffer` of "N\n" at `pos`.
    fn read_from(&self, buf: &mut [u8], pos: u64) -> Result<usize> {
        self.alive()?;
        let text = format!("{}\n", fail_nth(self.tid));
        let bytes = text.as_bytes();
        let Ok(pos) = usize::try_from(pos) else {
            return Ok(0);
        };
        if pos >= bytes.len() {
            return Ok(0);
        }
        let n = buf.len().min(bytes.len() - pos);
        buf[..n].copy_from_slice(&bytes[pos..pos + n]);
        Ok(n)
    }

    fn write_value(&self, buf: &[u8]) -> Result<usize> {
        let n = parse_uint(buf)?;
        self.alive()?;
        set_fail_nth(self.tid, n);
        Ok(buf.len())
    }
}

/// The kernel's `kstrtouint_from_user(buf, count, 0, &n)`: at most 22
/// bytes are looked at, an optional `+`, base from the prefix (`0x` hex,
/// `0` octal, decimal), one optional trailing newline. `EINVAL` for
/// anything else, `ERANGE` past `u32::MAX`.
fn parse_uint(buf: &[u8]) -> Result<u32> {
    let s = &buf[..buf.len().min(22)];
    let s = s.strip_suffix(b"\n").unwrap_or(s);
    let s = s.strip_prefix(b"+").unwrap_or(s);
    let (digits, radix) = if s.len() > 2 && (s.starts_with(b"0x") || s.starts_with(b"0X")) {
        (&s[2..], 16)
    } else if s.len() > 1 && s[0] == b'0' {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        crate::bail!(EINVAL, "fail-nth: no number written");
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = match (c as char).to_digit(radix) {
            Some(d) => d as u64,
            None => crate::bail!(
                EINVAL,
                "fail-nth: {:?} is not a number",
                String::from_utf8_lossy(buf)
            ),
        };
        v = v * radix as u64 + d;
        if v > u32::MAX as u64 {
            crate::bail!(ERANGE, "fail-nth: the value is above UINT_MAX");
        }
    }
    Ok(v as u32)
}

impl EngineFile for FailNthFile {
    fn kind(&self) -> &'static str {
        "fail-nth"
    }

    fn read(&self, buf: &mut [u8], _nonblock: bool) -> Result<usize> {
        let mut pos = self.pos.lock();
        let n = self.read_from(buf, *pos)?;
        *pos += n as u64;
        Ok(n)
    }

    fn write(&self, buf: &[u8]) -> Result<usize> {
        self.write_value(buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, _nonblock: bool) -> Result<usize> {
        self.read_from(buf, offset)
    }

    fn write_at(&self, buf: &[u8], _offset: u64) -> Result<usize> {
        self.write_value(buf)
    }

    fn positional(&self) -> bool {
        true
    }

    /// The kernel's `kstrtouint_from_user` looks at a bounded prefix and the
    /// write consumes the whole count: copy only that prefix.
    fn write_user(&self, buf: files::UserBuf<'_>) -> Result<usize> {
        let mut tmp = [0u8; 22];
        let n = buf.len.min(tmp.len());
        buf.copy_in(0, &mut tmp[..n])?;
        self.write_value(&tmp[..n])?;
        Ok(buf.len)
    }

    fn write_user_at(&self, buf: files::UserBuf<'_>, _offset: u64) -> Result<usize> {
        self.write_user(buf)
    }

    fn poll_events(&self) -> i16 {
        // a regular proc file: always readable
        libc::POLLIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::{armed, fail_nth_current, gettid};

    #[test]
    fn inject_parse_like_kstrtouint() {
        assert_eq!(parse_uint(b"12").unwrap(), 12);
        assert_eq!(parse_uint(b"12\n").unwrap(), 12);
        assert_eq!(parse_uint(b"0").unwrap(), 0);
        assert_eq!(parse_uint(b"0x10").unwrap(), 16);
        assert_eq!(parse_uint(b"010").unwrap(), 8);
        assert_eq!(parse_uint(b"+7").unwrap(), 7);
        assert_eq!(parse_uint(b"4294967295").unwrap(), u32::MAX);
        assert_eq!(
            parse_uint(b"4294967296").unwrap_err().errno().0,
            libc::ERANGE
        );
        for bad in [&b""[..], b"\n", b"-1", b"1 ", b"1\n\n", b"abc", b"09"] {
            assert_eq!(
                parse_uint(bad).unwrap_err().errno().0,
                libc::EINVAL,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn inject_file_protocol() {
        let f = FailNthFile::new(gettid());
        assert_eq!(f.write(b"7").unwrap(), 1);
        let mut b = [0u8; 16];
        assert_eq!(f.read_at(&mut b, 0, false).unwrap(), 2);
        assert_eq!(&b[..2], b"7\n");
        assert_eq!(f.read_at(&mut b, 1, false).unwrap(), 1);
        assert_eq!(f.read_at(&mut b, 2, false).unwrap(), 0);
        assert_eq!(f.read(&mut b[..1], false).unwrap(), 1);
        assert_eq!(f.read(&mut b, false).unwrap(), 1);
        assert_eq!(b[0], b'\n');
        assert_eq!(f.read(&mut b, false).unwrap(), 0, "EOF");
        assert_eq!(f.write_at(b"0", 5).unwrap(), 1);
        assert_eq!(f.read_at(&mut b, 0, false).unwrap(), 2);
        assert_eq!(&b[..2], b"0\n");
        assert!(!armed() || fail_nth_current() == 0);
        assert_eq!(f.write(b"x").unwrap_err().errno().0, libc::EINVAL);
    }
}
