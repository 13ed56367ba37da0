//! Mounting a snapshot: filesystem detection and the options each filesystem
//! needs on a snapshot.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Filesystems recognised by their superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    /// ext2, ext3 and ext4 (the ext4 driver mounts all three).
    Ext4,
    Xfs,
    Btrfs,
}

impl FsType {
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Btrfs => "btrfs",
        }
    }

    /// Recognises a filesystem from the first 68 KiB of a device.
    pub fn detect(head: &[u8]) -> Option<FsType> {
        let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
        if at(0, b"XFSB") {
            Some(FsType::Xfs)
        } else if at(1024 + 56, &[0x53, 0xef]) {
            Some(FsType::Ext4)
        } else if at(0x10040, b"_BHRfS_M") {
            Some(FsType::Btrfs)
        } else {
            None
        }
    }

    /// The filesystem UUID in a head that [`FsType::detect`] recognised, as
    /// blkid and fstab's `UUID=` spell it.
    pub fn uuid(self, head: &[u8]) -> Option<String> {
        // ext4's s_uuid at 0x68 of the superblock (at 1024); XFS's sb_uuid
        // at 32; btrfs's fsid at 0x20 of the superblock (at 64 KiB).
        let at = match self {
            FsType::Ext4 => 1024 + 0x68,
            FsType::Xfs => 32,
            FsType::Btrfs => 0x10000 + 0x20,
        };
        let b = head.get(at..at + 16)?;
        let hex = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
        Some(format!("{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16)))
    }

    /// Data options a snapshot of this filesystem needs. An XFS snapshot
    /// carries the origin's UUID, which XFS refuses to mount twice without
    /// `nouuid`; read-only, it cannot replay its log, so `norecovery` (the
    /// log is clean anyway: the origin was frozen when the snapshot was taken).
    pub fn snapshot_options(self, read_only: bool) -> &'static str {
        match (self, read_only) {
            (FsType::Xfs, true) => "nouuid,norecovery",
            (FsType::Xfs, false) => "nouuid",
            _ => "",
        }
    }
}

/// Reads the head of `device` and recognises its filesystem.
pub fn detect(device: &Path) -> Result<Option<FsType>> {
    Ok(FsType::detect(&head_of(device)?))
}

/// The UUID of the filesystem on `device`, if hcp recognises it.
pub fn fs_uuid(device: &Path) -> Result<Option<String>> {
    let head = head_of(device)?;
    Ok(FsType::detect(&head).and_then(|fs| fs.uuid(&head)))
}

/// The first 68 KiB of `device` (less if it is smaller): every superblock
/// hcp recognises lies within.
fn head_of(device: &Path) -> Result<Vec<u8>> {
    let file = File::open(device).map_err(|e| Error::io(format!("opening {}", device.display()), e))?;
    let mut head = vec![0u8; 0x11000];
    let n = read_up_to(&file, &mut head).map_err(|e| Error::io(format!("reading {}", device.display()), e))?;
    head.truncate(n);
    Ok(head)
}

fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Mounts a snapshot device at `target`; returns the filesystem type used.
/// Unrecognised filesystems are tried with every block filesystem the
/// kernel knows, as mount(8) does without `-t`.
pub fn mount_snapshot(device: &Path, target: &Path, read_only: bool) -> Result<String> {
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    if let Some(fs) = detect(device)? {
        mount(device, target, fs.name(), flags, fs.snapshot_options(read_only))?;
        return Ok(fs.name().to_string());
    }
    let mut last = None;
    for fs in block_filesystems() {
        match mount(device, target, &fs, flags, "") {
            Ok(()) => return Ok(fs),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::system(format!("no filesystem recognised on {}: it cannot be mounted", device.display()))
    }))
}

/// The filesystems of `/proc/filesystems` that need a block device.
fn block_filesystems() -> Vec<String> {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

pub(crate) fn mount(device: &Path, target: &Path, fs: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let c = |s: &[u8]| CString::new(s).map_err(|_| Error::usage("a path contains a NUL byte"));
    let (src, dst, fstype, opts) = (
        c(device.as_os_str().as_encoded_bytes())?,
        c(target.as_os_str().as_encoded_bytes())?,
        c(fs.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fstype.as_ptr(), flags, opts.as_ptr().cast()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::io(format!("mounting {} ({fs}) at {}", device.display(), target.display()), err));
    }
    Ok(())
}

/// Unmounts `target`; a busy mount is an error that says how to find the
/// user.
pub fn unmount(target: &Path) -> Result<()> {
    let dst =
        CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| Error::usage("a path contains a NUL byte"))?;
    // SAFETY: valid NUL-terminated string.
    if unsafe { libc::umount2(dst.as_ptr(), 0) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EBUSY) => Error::busy(format!(
                "{} is in use: close what uses it (`fuser -vm {}` lists the processes) and retry",
                target.display(),
                target.display()
            )),
            _ => Error::io(format!("unmounting {}", target.display()), err),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::FsType;

    #[test]
    fn recognises_superblocks() {
        let mut head = vec![0u8; 0x11000];
        assert_eq!(FsType::detect(&head), None);
        head[1024 + 56] = 0x53;
        head[1024 + 57] = 0xef;
        assert_eq!(FsType::detect(&head), Some(FsType::Ext4));
        head[..4].copy_from_slice(b"XFSB");
        assert_eq!(FsType::detect(&head), Some(FsType::Xfs));
        let mut btrfs = vec![0u8; 0x11000];
        btrfs[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        assert_eq!(FsType::detect(&btrfs), Some(FsType::Btrfs));
        assert_eq!(FsType::detect(&btrfs[..100]), None, "a short read is no filesystem");
    }

    #[test]
    fn uuids_read_as_blkid_prints_them() {
        let mut head = vec![0u8; 0x11000];
        head[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        let uuid: Vec<u8> = (0x10..0x20).collect();
        head[1024 + 0x68..1024 + 0x78].copy_from_slice(&uuid);
        assert_eq!(FsType::Ext4.uuid(&head).as_deref(), Some("10111213-1415-1617-1819-1a1b1c1d1e1f"));
        head[32..48].copy_from_slice(&uuid);
        assert_eq!(FsType::Xfs.uuid(&head).as_deref(), Some("10111213-1415-1617-1819-1a1b1c1d1e1f"));
        assert_eq!(FsType::Xfs.uuid(&head[..40]), None);
    }

    #[test]
    fn xfs_snapshots_get_nouuid() {
        assert_eq!(FsType::Xfs.snapshot_options(false), "nouuid");
        assert_eq!(FsType::Xfs.snapshot_options(true), "nouuid,norecovery");
        assert_eq!(FsType::Ext4.snapshot_options(true), "");
    }
}
