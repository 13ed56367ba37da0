//! Mounting a filesystem again, from another device node, exactly as it
//! was mounted: the mount(2) flags and data rebuilt from mountinfo.
//!
//! mountinfo shows two option lists. The per-mount one is a fixed set the
//! VFS prints (`rw`, `nosuid`, `relatime`...), each a mount(2) flag. The
//! per-filesystem one starts with the superblock's `ro`/`rw`, may hold the
//! superblock flags (`sync`, `dirsync`, `lazytime`, `mand`), and then the
//! filesystem's own options as its `show_options` prints them, which are
//! what its mount data accepts (`errors=remount-ro`, `logbsize=32k`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernel::mountinfo::{unescape_option, Mount};

/// A mount, as it can be made again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    pub mount_point: PathBuf,
    pub fs_type: String,
    #[serde(skip)]
    pub flags: libc::c_ulong,
    #[serde(skip)]
    pub data: String,
    /// The options as mountinfo shows them: per mount, then `; superblock:`
    /// and the filesystem's own.
    pub options: String,
}

impl MountSpec {
    /// The spec of `mount`; an error when something about it cannot be
    /// made again by mount(2) (an idmapped mount).
    pub fn of(mount: &Mount) -> Result<MountSpec> {
        let (flags, data) = flags_and_data(&mount.mount_options, &mount.super_options).map_err(|option| {
            Error::refused(format!(
                "{} is mounted with `{option}`, which hcp cannot recreate when it remounts the filesystem: \
                 unmount it and enroll it unmounted",
                mount.mount_point.display()
            ))
        })?;
        Ok(MountSpec {
            mount_point: mount.mount_point.clone(),
            fs_type: mount.fs_type.clone(),
            flags,
            data,
            options: format!("{}; superblock: {}", mount.mount_options, mount.super_options),
        })
    }

    /// Mounts `device` as this spec says.
    pub fn mount(&self, device: &Path) -> Result<()> {
        crate::kernel::mount::mount(device, &self.mount_point, &self.fs_type, self.flags, &self.data)
    }
}

/// The flags and the data string of mount(2); `Err` names an option that
/// cannot be passed.
fn flags_and_data(mount_options: &str, super_options: &str) -> Result<(libc::c_ulong, String), String> {
    let mut flags = 0;
    for option in mount_options.split(',').filter(|o| !o.is_empty()) {
        flags |= match option {
            "rw" => 0,
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            // MS_NOSYMFOLLOW (Linux 5.10), not in every libc crate.
            "nosymfollow" => 256,
            other => return Err(other.to_string()),
        };
    }
    let mut data = Vec::new();
    for option in super_options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "rw" => {}
            "ro" => flags |= libc::MS_RDONLY,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "mand" => flags |= libc::MS_MANDLOCK,
            "lazytime" => flags |= libc::MS_LAZYTIME,
            // An SELinux marker, never a mount option.
            "seclabel" => {}
            other => data.push(unescape_option(other)),
        }
    }
    Ok((flags, data.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_and_xfs_options_split_into_flags_and_data() {
        let (flags, data) = flags_and_data("rw,nosuid,nodev,relatime", "rw,errors=remount-ro").unwrap();
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RELATIME);
        assert_eq!(data, "errors=remount-ro");
        let (flags, data) = flags_and_data("ro,noatime", "ro,attr2,inode64,logbufs=8,logbsize=32k,noquota").unwrap();
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_NOATIME);
        assert_eq!(data, "attr2,inode64,logbufs=8,logbsize=32k,noquota");
        let (flags, data) = flags_and_data("rw", "rw,lazytime,seclabel,sync").unwrap();
        assert_eq!(flags, libc::MS_LAZYTIME | libc::MS_SYNCHRONOUS);
        assert_eq!(data, "");
    }

    #[test]
    fn escaped_values_are_unescaped_and_unknown_mount_flags_refused() {
        let (_, data) = flags_and_data("rw", r"rw,journal_path=/dev/a\040b").unwrap();
        assert_eq!(data, "journal_path=/dev/a b");
        assert_eq!(flags_and_data("rw,idmapped", "rw"), Err("idmapped".to_string()));
    }
}
