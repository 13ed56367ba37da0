//! Block device numbers, in the two encodings that meet in hcp.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A device number as `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// The device number of the block device node at `path`.
    pub fn of_block_device(path: &Path) -> Result<DevNum> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if !meta.file_type().is_block_device() {
            bail!("{} is not a block device", path.display());
        }
        Ok(DevNum::from_user(meta.rdev()))
    }

    /// From the user-space `dev_t` of `stat(2)` (glibc's encoding).
    pub fn from_user(rdev: u64) -> DevNum {
        DevNum { major: libc::major(rdev), minor: libc::minor(rdev) }
    }

    /// The kernel-internal `dev_t` that tracepoints record
    /// (`MKDEV(ma, mi) = ma << 20 | mi`), which differs from user space's.
    pub fn to_kernel(self) -> u32 {
        (self.major << 20) | (self.minor & 0xf_ffff)
    }

    pub fn from_kernel(dev: u32) -> DevNum {
        DevNum { major: dev >> 20, minor: dev & 0xf_ffff }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl std::str::FromStr for DevNum {
    type Err = crate::error::Error;

    /// `major:minor`, as the kernel prints it in tables and mountinfo.
    fn from_str(text: &str) -> Result<DevNum, Self::Err> {
        // Digits only: `u32::from_str` would also take a sign.
        let number = |part: &str| Some(part).filter(|p| p.bytes().all(|b| b.is_ascii_digit()))?.parse().ok();
        let (major, minor) = text.split_once(':').unwrap_or_default();
        match (number(major), number(minor)) {
            (Some(major), Some(minor)) => Ok(DevNum { major, minor }),
            _ => Err(crate::error::Error::usage(format!(
                "`{text}` is not a device number; write major:minor, e.g. 253:1"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DevNum;

    #[test]
    fn kernel_encoding_round_trips() {
        for (ma, mi) in [(7, 0), (253, 3), (259, 1_048_575), (8, 17)] {
            let d = DevNum { major: ma, minor: mi };
            assert_eq!(DevNum::from_kernel(d.to_kernel()), d);
        }
        assert_eq!(DevNum { major: 253, minor: 3 }.to_kernel(), (253 << 20) | 3);
    }

    #[test]
    fn user_encoding_differs_from_kernel_encoding() {
        // glibc: minor's low byte in bits 0-7, major in bits 8-19.
        let rdev = libc::makedev(253, 3);
        assert_eq!(DevNum::from_user(rdev), DevNum { major: 253, minor: 3 });
        assert_ne!(rdev as u32, DevNum { major: 253, minor: 3 }.to_kernel());
        assert_eq!(DevNum { major: 8, minor: 17 }.to_string(), "8:17");
    }

    #[test]
    fn parses_what_it_displays() {
        let d = DevNum { major: 253, minor: 1 };
        assert_eq!(d.to_string().parse::<DevNum>().unwrap(), d);
        for bad in ["", "253", "253:", ":1", "253:1:0", "+253:1", "a:b", "253:4294967296"] {
            assert!(bad.parse::<DevNum>().is_err(), "{bad}");
        }
    }
}
