//! The emulated kernel version (the *uAPI level*) of a context.
//!
//! Each context answers as one Linux release would: a command that release
//! does not have is `ENOTTY`, a flag it does not know gets the errno its
//! handler gives, and a rule that changed between releases follows the
//! release chosen. The level is fixed when the context is created, from
//! `UIOMMUFD_UAPI` (e.g. `6.12`, `6.13`, … `7.2`) or by
//! [`crate::Context::new_at`] / [`crate::Context::with_memory_at`]; the
//! default is [`UapiLevel::NEWEST`].
//!
//! The dispatcher's table ([`crate::dispatch`]) says for each command the
//! level it appeared in; handlers ask [`UapiLevel::at_least`] for the rules
//! that changed later.

use std::fmt;
use std::str::FromStr;

/// One Linux release, `major.minor`, whose iommufd uAPI a context speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UapiLevel {
    major: u8,
    minor: u8,
}

impl UapiLevel {
    /// Linux 6.12: the base level (the iommufd of Debian's 6.12 kernel).
    pub const V6_12: UapiLevel = UapiLevel::new(6, 12);
    /// Linux 6.13: `IOMMU_IOAS_MAP_FILE`, `IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC`.
    pub const V6_13: UapiLevel = UapiLevel::new(6, 13);
    /// Linux 6.14: `IOMMU_IOAS_CHANGE_PROCESS`.
    pub const V6_14: UapiLevel = UapiLevel::new(6, 14);
    /// Linux 6.15: `IOMMU_VEVENTQ_ALLOC`, `IOMMU_HWPT_ALLOC_PASID`.
    pub const V6_15: UapiLevel = UapiLevel::new(6, 15);
    /// Linux 6.16.
    pub const V6_16: UapiLevel = UapiLevel::new(6, 16);
    /// Linux 6.17: `IOMMU_HW_QUEUE_ALLOC`, `IOMMU_HW_INFO_FLAG_INPUT_TYPE`.
    pub const V6_17: UapiLevel = UapiLevel::new(6, 17);
    /// Linux 6.18.
    pub const V6_18: UapiLevel = UapiLevel::new(6, 18);
    /// Linux 6.19: `IOMMU_IOAS_MAP_FILE` of a dma-buf (and the selftest's
    /// `DMABUF_GET` / `DMABUF_REVOKE`); the file map checks `length` and
    /// `start + length` before it looks the fd up.
    pub const V6_19: UapiLevel = UapiLevel::new(6, 19);
    /// Linux 7.0.
    pub const V7_0: UapiLevel = UapiLevel::new(7, 0);
    /// Linux 7.1.
    pub const V7_1: UapiLevel = UapiLevel::new(7, 1);
    /// Linux 7.2 (Debian's `linux-source-7.2`, 7.2.12).
    pub const V7_2: UapiLevel = UapiLevel::new(7, 2);

    /// Every level a context can be set to, oldest first.
    pub const ALL: [UapiLevel; 11] = [
        Self::V6_12,
        Self::V6_13,
        Self::V6_14,
        Self::V6_15,
        Self::V6_16,
        Self::V6_17,
        Self::V6_18,
        Self::V6_19,
        Self::V7_0,
        Self::V7_1,
        Self::V7_2,
    ];
    /// The oldest level.
    pub const OLDEST: UapiLevel = Self::V6_12;
    /// The newest level, and the default.
    pub const NEWEST: UapiLevel = Self::V7_2;
    /// The variable that chooses the level of new contexts.
    pub const ENV: &'static str = "UIOMMUFD_UAPI";

    const fn new(major: u8, minor: u8) -> UapiLevel {
        UapiLevel { major, minor }
    }

    /// The release's major number.
    pub fn major(self) -> u8 {
        self.major
    }

    /// The release's minor number.
    pub fn minor(self) -> u8 {
        self.minor
    }

    /// Whether this level has what appeared in `since`.
    pub fn at_least(self, since: UapiLevel) -> bool {
        self >= since
    }

    /// The level named by [`UapiLevel::ENV`], or [`UapiLevel::NEWEST`] when
    /// it is unset. A value that names no level is logged and ignored (the
    /// default is used): a typo must not silently give an old kernel.
    pub fn from_env() -> UapiLevel {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.trim().is_empty() => match v.parse() {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("{}: {e}; using {}", Self::ENV, Self::NEWEST);
                    Self::NEWEST
                }
            },
            _ => Self::NEWEST,
        }
    }
}

impl Default for UapiLevel {
    fn default() -> Self {
        Self::NEWEST
    }
}

impl fmt::Display for UapiLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why a string names no level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLevelError(String);

impl fmt::Display for ParseLevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseLevelError {}

impl FromStr for UapiLevel {
    type Err = ParseLevelError;

    /// `"6.13"`, `"7.2"`; also `"v7.2"` and a full release such as
    /// `"6.13.4"` (the patch number is ignored: stable releases keep the uAPI).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let mut it = t.split('.');
        let num = |p: Option<&str>| p.and_then(|x| x.parse::<u8>().ok());
        let (Some(major), Some(minor)) = (num(it.next()), num(it.next())) else {
            return Err(ParseLevelError(format!(
                "{s:?} is not a MAJOR.MINOR release"
            )));
        };
        if let Some(patch) = it.next() {
            if patch.parse::<u32>().is_err() || it.next().is_some() {
                return Err(ParseLevelError(format!(
                    "{s:?} is not a MAJOR.MINOR release"
                )));
            }
        }
        let l = UapiLevel::new(major, minor);
        if !Self::ALL.contains(&l) {
            return Err(ParseLevelError(format!(
                "{l} is not an emulated level ({}..={})",
                Self::OLDEST,
                Self::NEWEST
            )));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!("6.12".parse(), Ok(UapiLevel::V6_12));
        assert_eq!(" v7.2 ".parse(), Ok(UapiLevel::V7_2));
        assert_eq!("6.13.4".parse(), Ok(UapiLevel::V6_13));
        assert!("6.11".parse::<UapiLevel>().is_err());
        assert!("7.3".parse::<UapiLevel>().is_err());
        assert!("6".parse::<UapiLevel>().is_err());
        assert!("6.13.x".parse::<UapiLevel>().is_err());
        assert!("six".parse::<UapiLevel>().is_err());
        assert!(UapiLevel::V6_19 < UapiLevel::V7_0);
        assert!(UapiLevel::V7_2.at_least(UapiLevel::V6_13));
        assert!(!UapiLevel::V6_12.at_least(UapiLevel::V6_13));
        assert!(UapiLevel::ALL.windows(2).all(|w| w[0] < w[1]));
        for l in UapiLevel::ALL {
            assert_eq!(l.to_string().parse(), Ok(l));
        }
        assert_eq!(UapiLevel::default(), UapiLevel::NEWEST);
    }
}
