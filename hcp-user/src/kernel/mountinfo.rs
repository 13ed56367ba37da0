//! Mounts, from `/proc/self/mountinfo` (proc(5)).
//!
//! mountinfo rather than `/proc/mounts`: it gives each mount's device number,
//! which is how hcp finds where a device is mounted whatever name it was
//! mounted by, and the root a bind mount shows.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, ResultExt};
use crate::kernel::devnum::DevNum;

const PATH: &str = "/proc/self/mountinfo";

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_id: u32,
    pub parent_id: u32,
    /// The `st_dev` of files in the mount: the block device for disk
    /// filesystems (btrfs shows an anonymous device instead).
    pub dev: DevNum,
    /// The directory of the filesystem the mount shows: `/` unless it is a
    /// bind mount of a subdirectory.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options, still escaped: unescaping would make a `,` inside
    /// a value look like a separator.
    pub mount_options: String,
    pub fs_type: String,
    /// What the filesystem names as its source: `/dev/sda1`, `tmpfs`, `none`.
    pub source: String,
    /// Per-filesystem options, still escaped like `mount_options`.
    pub super_options: String,
}

/// The mounts of this process's mount namespace.
pub fn read() -> Result<Vec<Mount>> {
    let text = std::fs::read(PATH).map_err(|e| Error::io(format!("reading {PATH}"), e))?;
    parse(&text).context(PATH)
}

/// Bytes, not `str`: paths are raw bytes there apart from the escapes, and
/// need not be UTF-8.
pub fn parse(text: &[u8]) -> Result<Vec<Mount>> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| {
            parse_line(line).ok_or_else(|| {
                Error::system(format!(
                    "line {} is not a mountinfo line as proc(5) describes it: `{}`",
                    index + 1,
                    String::from_utf8_lossy(line)
                ))
            })
        })
        .collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`:
/// six fields, optional fields up to a lone `-`, then three more.
fn parse_line(line: &[u8]) -> Option<Mount> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let separator = 6 + fields.get(6..)?.iter().position(|&field| field == b"-")?;
    let [mount_id, parent_id, dev, root, mount_point, mount_options, ..] = fields[..separator] else {
        return None;
    };
    let [fs_type, source, super_options] = fields[separator + 1..] else {
        return None;
    };
    let number = |field: &[u8]| std::str::from_utf8(field).ok()?.parse().ok();
    Some(Mount {
        mount_id: number(mount_id)?,
        parent_id: number(parent_id)?,
        dev: std::str::from_utf8(dev).ok()?.parse().ok()?,
        root: path(root),
        mount_point: path(mount_point),
        mount_options: String::from_utf8_lossy(mount_options).into_owned(),
        fs_type: text(fs_type),
        source: text(source),
        super_options: String::from_utf8_lossy(super_options).into_owned(),
    })
}

fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

/// One option of `mount_options` or `super_options` (split at `,` first),
/// unescaped.
pub fn unescape_option(option: &str) -> String {
    text(option.as_bytes())
}

/// Undoes the kernel's octal escapes (`\040` for a space; also tab, newline
/// and backslash), which keep fields free of the separators.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    loop {
        match rest {
            [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', tail @ ..] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                rest = tail;
            }
            [byte, tail @ ..] => {
                out.push(*byte);
                rest = tail;
            }
            [] => return out,
        }
    }
}

/// The mounts of a namespace, for lookups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountTable(pub Vec<Mount>);

impl MountTable {
    /// Every mount of `dev`, in mount order; more than one when it is bind
    /// mounted or mounted twice.
    pub fn mounts_of(&self, dev: DevNum) -> Vec<&Mount> {
        self.0.iter().filter(|mount| mount.dev == dev).collect()
    }

    /// The mount visible at `path`, which must be canonical (no symlinks,
    /// no `..`): with mounts stacked on one point, the one nothing else is
    /// mounted on.
    pub fn mount_at(&self, path: &Path) -> Option<&Mount> {
        let here: Vec<&Mount> = self.0.iter().filter(|mount| mount.mount_point == path).collect();
        here.iter().copied().find(|mount| !here.iter().any(|over| over.parent_id == mount.mount_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDA1: DevNum = DevNum { major: 8, minor: 1 };
    const DATA: DevNum = DevNum { major: 253, minor: 3 };

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
36 22 253:3 / /mnt/my\\040data rw,relatime shared:30 master:4 - xfs /dev/mapper/vg-data rw,attr2,inode64,noquota
37 22 253:3 /exports/home /srv/nfs/home rw,relatime shared:30 - xfs /dev/mapper/vg-data rw,attr2,inode64,noquota
38 22 0:45 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw,size=8388608k
39 38 0:46 / /tmp rw - tmpfs tmpfs rw
40 22 7:0 / /media/back\\134slash\\011tab rw - ext4 /dev/disk/by-label/my\\040disk rw
";

    fn table() -> MountTable {
        MountTable(parse(MOUNTINFO.as_bytes()).unwrap())
    }

    #[test]
    fn parses_every_field() {
        let mounts = table().0;
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[0],
            Mount {
                mount_id: 22,
                parent_id: 1,
                dev: SDA1,
                root: PathBuf::from("/"),
                mount_point: PathBuf::from("/"),
                mount_options: "rw,relatime".to_string(),
                fs_type: "ext4".to_string(),
                source: "/dev/sda1".to_string(),
                super_options: "rw,errors=remount-ro".to_string(),
            }
        );
        assert_eq!(mounts[4].mount_options, "rw,nosuid,nodev", "no optional fields");
        assert_eq!(mounts[4].super_options, "rw,size=8388608k");
    }

    #[test]
    fn unescapes_paths_and_source() {
        let mounts = table().0;
        assert_eq!(mounts[2].mount_point, Path::new("/mnt/my data"));
        assert_eq!(mounts[6].mount_point, Path::new("/media/back\\slash\ttab"));
        assert_eq!(mounts[6].source, "/dev/disk/by-label/my disk");
        assert_eq!(unescape(b"a\\b\\09\\400"), b"a\\b\\09\\400", "not escapes: left alone");
    }

    #[test]
    fn paths_need_not_be_utf8() {
        let mounts = parse(b"50 22 8:2 / /mnt/\xff\\040x rw - ext4 /dev/sda2 rw\n").unwrap();
        assert_eq!(mounts[0].mount_point.as_os_str().as_encoded_bytes(), b"/mnt/\xff x");
    }

    #[test]
    fn bind_mounts_are_mounts_of_the_same_device() {
        let table = table();
        let data: Vec<_> = table.mounts_of(DATA).iter().map(|m| (m.root.clone(), m.mount_point.clone())).collect();
        assert_eq!(
            data,
            [
                (PathBuf::from("/"), PathBuf::from("/mnt/my data")),
                (PathBuf::from("/exports/home"), PathBuf::from("/srv/nfs/home")),
            ]
        );
        assert!(table.mounts_of(DevNum { major: 9, minor: 9 }).is_empty());
    }

    #[test]
    fn mount_at_finds_the_visible_mount() {
        let table = table();
        assert_eq!(table.mount_at(Path::new("/")).unwrap().dev, SDA1);
        assert_eq!(table.mount_at(Path::new("/mnt/my data/")).unwrap().dev, DATA);
        assert_eq!(table.mount_at(Path::new("/tmp")).unwrap().mount_id, 39, "the top of the stack");
        assert!(table.mount_at(Path::new("/mnt")).is_none());
    }

    #[test]
    fn bad_lines_are_errors_that_show_the_line() {
        for line in [
            "22 1 8:1 / / rw,relatime shared:1 ext4 /dev/sda1 rw",
            "22 1 8:1 / / rw - ext4 /dev/sda1",
            "22 1 8:1 / / rw - ext4 /dev/sda1 rw extra",
            "22 1 8:1 / / - ext4 /dev/sda1 rw",
            "x 1 8:1 / / rw - ext4 /dev/sda1 rw",
            "22 1 8 / / rw - ext4 /dev/sda1 rw",
        ] {
            let text = format!("23 22 0:21 / /proc rw - proc proc rw\n{line}\n");
            let err = parse(text.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("line 2 "), "{err}");
            assert!(err.to_string().contains(line), "{err}");
        }
        assert_eq!(parse(b"").unwrap(), vec![]);
    }

    #[test]
    fn reads_this_process_mounts() {
        assert!(!read().unwrap().is_empty());
    }
}
