//! Enrollment records: `/etc/hcp/enrolled/<mapping>.json`, one per enrolled
//! device, read and written as carefully as session records (see `state`).
//!
//! Unlike session records (in `/run`, gone at reboot with the devices they
//! describe), these are configuration: they outlive reboots, so that
//! `hcp activate` can recreate each mapping before the filesystems are
//! mounted.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::private::ROOT;

/// The version of the record format below.
pub const RECORD_VERSION: u32 = 1;

/// Where hcp's configuration lives.
pub const CONFIG_DIR: &str = "/etc/hcp";

/// The dm UUID prefix of enrolled mappings, which marks them as hcp's
/// (and as configuration: `hcp recover` never removes them).
pub const UUID_ENROLLED: &str = "HCP-ENROLLED-";

const WHAT: &str = "enrollment record";

fn dir() -> PathBuf {
    Path::new(CONFIG_DIR).join("enrolled")
}

/// One enrolled device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub version: u32,
    /// The mapping's dm name, `hcp-<kernel name at enrollment>`. It never
    /// changes, even when the kernel names the device differently after a
    /// reboot: fstab names the filesystem by it.
    pub name: String,
    /// How the device is found again: its most stable name
    /// (`/dev/disk/by-partuuid/...`, then `by-id`, then `by-path`), or its
    /// kernel path when udev made none.
    pub device: PathBuf,
    /// The kernel's path at enrollment (for people reading the record).
    pub kernel_path: PathBuf,
    /// Checked before a mapping is recreated: a different device under the
    /// same name is never mapped.
    pub size_sectors: u64,
    /// The filesystem UUID found at enrollment, checked likewise.
    pub fs_uuid: Option<String>,
    pub enrolled_unix: u64,
    /// fstab's source field for the filesystem before `--edit-fstab`
    /// changed it to the mapping; `unenroll --edit-fstab` puts it back.
    pub fstab_source: Option<String>,
    /// The options `--edit-fstab` added to the line (those of
    /// [`BOOT_OPTIONS`](super::fstab::BOOT_OPTIONS) it lacked);
    /// `unenroll --edit-fstab` takes exactly these away. Empty in records of
    /// an hcp that added only the `x-systemd.requires=` option.
    #[serde(default)]
    pub fstab_added: Vec<String>,
}

impl Enrollment {
    pub fn uuid(&self) -> String {
        format!("{UUID_ENROLLED}{}", self.name)
    }

    /// `/dev/mapper/<name>`.
    pub fn mapping_path(&self) -> PathBuf {
        crate::kernel::dm::device::node_path(&self.name)
    }

    pub fn record_path(&self) -> PathBuf {
        dir().join(format!("{}.json", self.name))
    }
}

/// Whether `name` is a mapping name hcp makes: `hcp-` and a kernel name
/// (letters, digits, `_`, `-`, `.`, not starting with `.`), short enough for
/// dm's 127 bytes with the `-real` a session adds.
pub fn is_mapping_name(name: &str) -> bool {
    name.strip_prefix("hcp-").is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('.')
            && name.len() <= 122
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    })
}

/// Every enrollment, sorted by name.
pub fn load_all() -> Result<Vec<Enrollment>> {
    if !crate::state::private::check_private_dir(Path::new(CONFIG_DIR))?
        || !crate::state::private::check_private_dir(&dir())?
    {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir()).map_err(|e| Error::io(dir().display(), e))?;
    let mut all = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir().display(), e))?.path();
        if path.extension().is_some_and(|x| x == "json") {
            all.extend(load(&path)?);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

fn load(path: &Path) -> Result<Option<Enrollment>> {
    let hostile = |problem: String| crate::state::private::hostile(WHAT, path, problem);
    let Some(text) = crate::state::private::read_private_file(path, ROOT, WHAT)? else {
        return Ok(None);
    };
    let record: Enrollment = crate::state::private::parse_record(&text, RECORD_VERSION, hostile)?;
    let stem = path.file_stem().and_then(OsStr::to_str).unwrap_or_default();
    if !is_mapping_name(stem) || record.name != stem {
        return Err(hostile(format!("describes mapping {:?}, not {stem:?}", record.name)));
    }
    Ok(Some(record))
}

pub fn save(record: &Enrollment) -> Result<()> {
    if !is_mapping_name(&record.name) {
        return Err(Error::system(format!("refusing to write an enrollment for {:?}", record.name)));
    }
    crate::state::private::ensure_private_dir(Path::new(CONFIG_DIR))?;
    let text = serde_json::to_string_pretty(record).expect("records serialise");
    crate::state::private::write_private_file(&dir(), ROOT, &format!("{}.json", record.name), text.as_bytes(), WHAT)
}

pub fn delete(record: &Enrollment) -> Result<()> {
    match std::fs::remove_file(record.record_path()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {WHAT} {}", record.record_path().display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_names_are_checked() {
        for good in ["hcp-sdc1", "hcp-nvme0n1p2", "hcp-loop3p1", "hcp-md0_x.y"] {
            assert!(is_mapping_name(good), "{good}");
        }
        for bad in ["sdc1", "hcp-", "hcp-.x", "hcp-../x", "hcp-a b", "hcp-a/b", &format!("hcp-{}", "a".repeat(119))] {
            assert!(!is_mapping_name(bad), "{bad}");
        }
    }
}
