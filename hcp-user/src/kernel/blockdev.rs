//! Block devices as hcp meets them: resolved from any spelling a user types,
//! and described from sysfs (size, device-mapper identity, what is stacked on
//! what).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::kernel::devnum::DevNum;

/// A block device, identified by its number (paths are only spellings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    pub devnum: DevNum,
    /// The kernel's name: `vdb`, `vdb1`, `loop3`, `dm-2`.
    pub kernel_name: String,
    pub size_bytes: u64,
    /// Set when this is a device-mapper device.
    pub dm: Option<DmIdentity>,
}

/// A device-mapper device's name and UUID (empty when it has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmIdentity {
    pub name: String,
    pub uuid: String,
}

impl BlockDevice {
    /// Resolves a device from a path (`/dev/vdb1`), any symlink to one
    /// (`/dev/disk/by-uuid/...`, `/dev/vg0/data`, `/dev/mapper/vg0-data`) or
    /// `MAJOR:MINOR`.
    pub fn resolve(spec: &str) -> Result<BlockDevice> {
        if spec.trim().is_empty() {
            return Err(Error::usage(
                "the device name is empty: give a block device such as /dev/vg0/data or /dev/sdb1",
            ));
        }
        if let Some(devnum) = parse_devnum(spec) {
            return BlockDevice::from_devnum(devnum).map_err(|_| {
                Error::not_found(format!("no block device {spec}: give an existing one (`lsblk` lists them)"))
            });
        }
        let path = Path::new(spec);
        if fs::symlink_metadata(path).is_err() {
            return Err(Error::not_found(format!(
                "{spec} does not exist: give a block device such as /dev/vg0/data or /dev/sdb1 (`lsblk` lists them)"
            )));
        }
        let devnum = DevNum::of_block_device(path).map_err(|_| {
            Error::usage(format!(
                "{spec} is not a block device: give a block device such as /dev/vg0/data or /dev/sdb1"
            ))
        })?;
        BlockDevice::from_devnum(devnum)
    }

    pub fn from_devnum(devnum: DevNum) -> Result<BlockDevice> {
        let sys = sys_dir(devnum);
        let target =
            fs::read_link(&sys).map_err(|e| Error::io(format!("block device {devnum} ({})", sys.display()), e))?;
        let kernel_name = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::system(format!("unexpected sysfs link {}", target.display())))?
            .to_string();
        let sectors: u64 = read_attr(&sys.join("size"))?
            .parse()
            .map_err(|_| Error::system(format!("unreadable size of block device {devnum}")))?;
        let dm = match fs::read_to_string(sys.join("dm/name")) {
            Ok(name) => Some(DmIdentity {
                name: name.trim().to_string(),
                uuid: fs::read_to_string(sys.join("dm/uuid")).unwrap_or_default().trim().to_string(),
            }),
            Err(_) => None,
        };
        Ok(BlockDevice { devnum, kernel_name, size_bytes: sectors << 9, dm })
    }

    pub fn size_sectors(&self) -> u64 {
        self.size_bytes >> 9
    }

    /// The name users know: `/dev/mapper/<name>` for dm devices (it exists
    /// with or without udev once hcp or libdevmapper made the node), else
    /// `/dev/<kernel name>`.
    pub fn display_path(&self) -> PathBuf {
        match &self.dm {
            Some(dm) => Path::new("/dev/mapper").join(&dm.name),
            None => Path::new("/dev").join(&self.kernel_name),
        }
    }

    /// Devices this one is built on (`slaves/` in sysfs), one level down.
    pub fn slaves(&self) -> Vec<DevNum> {
        list_devnums(&sys_dir(self.devnum).join("slaves"))
    }

    /// Devices built on this one (`holders/`): dm devices, md arrays.
    pub fn holders(&self) -> Vec<DevNum> {
        list_devnums(&sys_dir(self.devnum).join("holders"))
    }

    /// Whether `other` is this device or lies anywhere beneath it.
    pub fn stacked_on(&self, other: DevNum) -> bool {
        stacked_on(self.devnum, other, 0)
    }

    /// Whether this is a partition of a disk.
    pub fn is_partition(&self) -> bool {
        sys_dir(self.devnum).join("partition").exists()
    }
}

/// Refuses a device some program or the kernel holds open exclusively
/// (`O_EXCL` on a block device fails with EBUSY then): a mounted
/// filesystem, a dm table, an md array, a program's own claim.
pub fn check_not_open_exclusively(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(Error::busy(format!(
            "{} is in use (opened exclusively by a program or the kernel): stop what uses it and retry",
            path.display()
        ))),
        Err(e) => Err(Error::io(format!("opening {}", path.display()), e)),
    }
}

fn stacked_on(dev: DevNum, other: DevNum, depth: u32) -> bool {
    // Stacks are shallow; the bound only guards against a sysfs loop.
    dev == other
        || (depth < 16
            && list_devnums(&sys_dir(dev).join("slaves")).into_iter().any(|s| stacked_on(s, other, depth + 1)))
}

/// Whether the device is request-based (blk-mq: a disk, a loop device, a
/// partition of one), as opposed to bio-based (device-mapper, md). The
/// block layer traces bio completions only on bio-based devices.
pub fn is_request_based(devnum: DevNum) -> bool {
    let dir = sys_dir(devnum);
    // A partition's queue is its disk's (`..` after the sysfs symlink).
    let queue_of = if dir.join("partition").exists() { dir.join("..") } else { dir };
    queue_of.join("mq").exists()
}

fn sys_dir(devnum: DevNum) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{devnum}"))
}

fn read_attr(path: &Path) -> Result<String> {
    fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| Error::io(path.display(), e))
}

/// The device numbers of the block devices named in a sysfs directory of
/// links (`slaves/`, `holders/`).
fn list_devnums(dir: &Path) -> Vec<DevNum> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<DevNum> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read_to_string(e.path().join("dev")).ok())
        .filter_map(|s| parse_devnum(s.trim()))
        .collect();
    out.sort();
    out
}

/// `MAJOR:MINOR`, as sysfs and users write it.
fn parse_devnum(s: &str) -> Option<DevNum> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_minor_only() {
        assert_eq!(parse_devnum("253:3"), Some(DevNum { major: 253, minor: 3 }));
        assert_eq!(parse_devnum("/dev/sda"), None);
        assert_eq!(parse_devnum("8:"), None);
        assert_eq!(parse_devnum("a:1"), None);
    }

    #[test]
    fn missing_and_non_block_paths_are_named_errors() {
        let err = BlockDevice::resolve("/nonexistent/dev").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::NotFound);
        assert!(err.message().contains("/nonexistent/dev does not exist"), "{err}");
        let err = BlockDevice::resolve("/proc/self/status").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::Usage);
        assert!(err.message().contains("is not a block device"), "{err}");
        let err = BlockDevice::resolve("").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::Usage);
        assert!(err.message().contains("the device name is empty: give a block device"), "{err}");
    }
}
