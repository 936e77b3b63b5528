//! The one error type of the engine.
//!
//! Every failure carries the errno the Linux 6.12 kernel returns for it and a
//! human reason. Handlers return the errno through the ABI and log the reason
//! (`UIOMMUFD_LOG=debug`), so where the kernel answers a bare `EINVAL` we can
//! say which rule was broken.

use std::borrow::Cow;
use std::fmt;

/// A positive errno value (`libc::EINVAL`, ...).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The symbolic name (`"EINVAL"`), or `"E?"` for values we never return.
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::EPERM => "EPERM",
            libc::EACCES => "EACCES",
            libc::ESPIPE => "ESPIPE",
            libc::EBADFD => "EBADFD",
            libc::EBADE => "EBADE",
            libc::ENOSYS => "ENOSYS",
            libc::ENOENT => "ENOENT",
            libc::EIO => "EIO",
            libc::E2BIG => "E2BIG",
            libc::EBADF => "EBADF",
            libc::ENOMEM => "ENOMEM",
            libc::EFAULT => "EFAULT",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EINVAL => "EINVAL",
            libc::ENOSPC => "ENOSPC",
            libc::ENOTTY => "ENOTTY",
            libc::ERANGE => "ERANGE",
            libc::EOVERFLOW => "EOVERFLOW",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EADDRINUSE => "EADDRINUSE",
            libc::EMSGSIZE => "EMSGSIZE",
            libc::EAGAIN => "EAGAIN",
            libc::ENODEV => "ENODEV",
            libc::EMFILE => "EMFILE",
            libc::EDEADLK => "EDEADLK",
            _ => "E?",
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An engine failure: the kernel's errno plus the rule that was broken.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{errno}: {reason}")]
pub struct Error {
    errno: Errno,
    reason: Cow<'static, str>,
}

impl Error {
    /// A new error with `errno` (a `libc::E*` constant) and a reason.
    pub fn new(errno: i32, reason: impl Into<Cow<'static, str>>) -> Self {
        Error {
            errno: Errno(errno),
            reason: reason.into(),
        }
    }

    /// The errno the kernel would return.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// Why the call failed, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// `EFAULT` for a user pointer that could not be read or written.
    pub fn fault(what: &'static str) -> Self {
        Error::new(libc::EFAULT, what)
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The errno of `r`, which must be an error (panics on `Ok`): what the
/// crate's unit tests compare.
#[cfg(test)]
pub(crate) fn errno<T: fmt::Debug>(r: Result<T>) -> i32 {
    r.unwrap_err().errno().0
}

/// Return early with an [`Error`]: `bail!(EINVAL, "length {} is zero", len)`.
#[macro_export]
macro_rules! bail {
    ($errno:ident, $($fmt:tt)+) => {
        return Err($crate::Error::new(libc::$errno, format!($($fmt)+)))
    };
}

/// Build an [`Error`] without returning: `err!(ENOENT, "no object {}", id)`.
#[macro_export]
macro_rules! err {
    ($errno:ident, $($fmt:tt)+) => {
        $crate::Error::new(libc::$errno, format!($($fmt)+))
    };
}
