//! Device-mapper devices by name: the few operations hcp needs, over the
//! `devicemapper` crate's ioctls, with errors that say which device and what.
//!
//! Nodes: with udev, `/dev/mapper/<name>` appears by itself; without it (the
//! test VM, minimal systems) nothing makes it, so `create` makes the node from
//! the device number and `remove` deletes the node it made.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use devicemapper::{DevId, DmError, DmFlags, DmName, DmOptions, DmUuid, DM};

use crate::error::{Error, Kind, Result};
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::table::TableLine;

/// How a suspend treats the filesystem and in-flight I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suspend {
    /// dm freezes the filesystem itself (`freeze_bdev`) and flushes I/O.
    Lockfs,
    /// The caller froze the filesystem already (FIFREEZE): dm must not try
    /// again, which would fail with EBUSY. In-flight I/O is still flushed.
    SkipLockfs,
}

pub struct Dm {
    dm: DM,
}

impl Dm {
    pub fn open() -> Result<Dm> {
        DM::new().map(|dm| Dm { dm }).map_err(|e| match errno(&e) {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) | None => Error::refused(
                "this kernel has no device-mapper (/dev/mapper/control cannot be opened): load it with `modprobe dm_snapshot`",
            ),
            Some(_) => Error::new(Kind::Permission, format!("opening /dev/mapper/control: {}: run hcp as root", describe(&e))),
        })
    }

    /// Creates device `name` with `table` and activates it; returns its
    /// device number. The device is removed again if any step fails.
    pub fn create(&self, name: &str, uuid: &str, table: &[TableLine]) -> Result<DevNum> {
        let devnum = self.create_inactive(name, uuid, table)?;
        if let Err(e) = self.resume(name) {
            let _ = self.remove(name);
            return Err(e);
        }
        Ok(devnum)
    }

    /// Creates device `name` with `table` loaded but not active: it becomes
    /// active on [`Dm::resume`], which is how a snapshot is prepared before
    /// the frozen window and switched on inside it.
    pub fn create_inactive(&self, name: &str, uuid: &str, table: &[TableLine]) -> Result<DevNum> {
        let dm_name = dm_name(name)?;
        let dm_uuid = DmUuid::new(uuid).map_err(|e| Error::usage(format!("bad dm uuid {uuid}: {e}")))?;
        let info = self
            .dm
            .device_create(dm_name, Some(dm_uuid), DmOptions::default())
            .map_err(|e| dm_error(&format!("creating dm device {name}"), &e))?;
        let devnum = DevNum { major: info.device().major, minor: info.device().minor };
        if let Err(e) = self.load(name, table).and_then(|()| ensure_node(name, devnum)) {
            let _ = self.remove(name);
            return Err(e);
        }
        Ok(devnum)
    }

    /// Loads `table` into the inactive slot of `name`; it takes over on the
    /// next resume.
    pub fn load(&self, name: &str, table: &[TableLine]) -> Result<()> {
        let targets: Vec<_> = table.iter().map(TableLine::to_tuple).collect();
        self.dm
            .table_load(&DevId::Name(dm_name(name)?), &targets, DmOptions::default())
            .map(drop)
            .map_err(|e| dm_error(&format!("loading table of {name} ({})", join(table)), &e))
    }

    /// Drops the inactive table of `name` (one loaded but never resumed).
    pub fn clear_inactive(&self, name: &str) -> Result<()> {
        self.dm
            .table_clear(&DevId::Name(dm_name(name)?))
            .map(drop)
            .map_err(|e| dm_error(&format!("clearing the inactive table of {name}"), &e))
    }

    /// How many openers `name` has (mounts, dm devices stacked on it,
    /// processes).
    pub fn open_count(&self, name: &str) -> Result<i32> {
        self.dm
            .device_info(&DevId::Name(dm_name(name)?))
            .map(|info| info.open_count())
            .map_err(|e| dm_error(&format!("looking up dm device {name}"), &e))
    }

    /// The device number of `name`.
    pub fn devnum(&self, name: &str) -> Result<DevNum> {
        self.dm
            .device_info(&DevId::Name(dm_name(name)?))
            .map(|info| {
                let dev = info.device();
                DevNum { major: dev.major, minor: dev.minor }
            })
            .map_err(|e| dm_error(&format!("looking up dm device {name}"), &e))
    }

    pub fn suspend(&self, name: &str, how: Suspend) -> Result<()> {
        let mut flags = DmFlags::DM_SUSPEND;
        if how == Suspend::SkipLockfs {
            flags |= DmFlags::DM_SKIP_LOCKFS;
        }
        self.dm
            .device_suspend(&DevId::Name(dm_name(name)?), DmOptions::default().set_flags(flags))
            .map(drop)
            .map_err(|e| dm_error(&format!("suspending {name}"), &e))
    }

    /// Resumes `name`, activating its inactive table if one is loaded.
    pub fn resume(&self, name: &str) -> Result<()> {
        self.dm
            .device_suspend(&DevId::Name(dm_name(name)?), DmOptions::default())
            .map(drop)
            .map_err(|e| dm_error(&format!("resuming {name}"), &e))
    }

    /// Removes `name` and the `/dev/mapper` node hcp made for it.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.dm
            .device_remove(&DevId::Name(dm_name(name)?), DmOptions::default())
            .map_err(|e| dm_error(&format!("removing dm device {name}"), &e))?;
        remove_node(name);
        Ok(())
    }

    /// The active table of `name`.
    pub fn table(&self, name: &str) -> Result<Vec<TableLine>> {
        self.table_status(name, DmFlags::DM_STATUS_TABLE).map(|lines| {
            lines
                .into_iter()
                .map(|(start, length, target_type, params)| TableLine { start, length, target_type, params })
                .collect()
        })
    }

    /// The status line of each target of `name`'s active table, as
    /// `(target type, status text)`.
    pub fn status(&self, name: &str) -> Result<Vec<(String, String)>> {
        // DM_NOFLUSH: a status query must never write metadata out.
        self.table_status(name, DmFlags::DM_NOFLUSH).map(|lines| lines.into_iter().map(|(_, _, t, s)| (t, s)).collect())
    }

    fn table_status(&self, name: &str, flags: DmFlags) -> Result<Vec<(u64, u64, String, String)>> {
        self.dm
            .table_status(&DevId::Name(dm_name(name)?), DmOptions::default().set_flags(flags))
            .map(|(_, lines)| lines)
            .map_err(|e| dm_error(&format!("reading table of {name}"), &e))
    }

    /// Whether a dm device called `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        match self.dm.device_info(&DevId::Name(dm_name(name)?)) {
            Ok(_) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENXIO) => Ok(false),
            Err(e) => Err(dm_error(&format!("looking up dm device {name}"), &e)),
        }
    }

    /// Every dm device: name, device number and UUID.
    pub fn list(&self) -> Result<Vec<(String, DevNum, String)>> {
        let devices = self.dm.list_devices().map_err(|e| dm_error("listing dm devices", &e))?;
        let mut out = Vec::new();
        for (name, dev, _) in devices {
            let uuid = self
                .dm
                .device_info(&DevId::Name(&name))
                .ok()
                .and_then(|i| i.uuid().map(|u| u.to_string()))
                .unwrap_or_default();
            out.push((name.to_string(), DevNum { major: dev.major, minor: dev.minor }, uuid));
        }
        Ok(out)
    }
}

/// `/dev/mapper/<name>`.
pub fn node_path(name: &str) -> PathBuf {
    Path::new("/dev/mapper").join(name)
}

/// Makes `/dev/mapper/<name>` when nothing else (udev) has.
fn ensure_node(name: &str, devnum: DevNum) -> Result<()> {
    make_node(&node_path(name), devnum)
}

/// Makes block device node `path` for `devnum` unless a node for that device
/// is already there (udev may be quicker); replaces a stale one.
pub fn make_node(path: &Path, devnum: DevNum) -> Result<()> {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.file_type().is_block_device() && DevNum::of_block_device(path).ok() == Some(devnum) {
            return Ok(());
        }
        std::fs::remove_file(path).map_err(|e| Error::io(format!("removing stale node {}", path.display()), e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::usage(format!("bad path {}", path.display())))?;
    let dev = libc::makedev(devnum.major, devnum.minor);
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFBLK | 0o660, dev) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(Error::io(format!("creating device node {}", path.display()), err));
        }
    }
    Ok(())
}

/// Removes `/dev/mapper/<name>` if it is still there (udev may have done it).
fn remove_node(name: &str) {
    let path = node_path(name);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_block_device()) {
        let _ = std::fs::remove_file(path);
    }
}

fn dm_name(name: &str) -> Result<&DmName> {
    DmName::new(name).map_err(|e| Error::usage(format!("bad dm device name {name}: {e}")))
}

fn join(table: &[TableLine]) -> String {
    table.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("; ")
}

/// The errno behind a devicemapper error, if it was an ioctl failure.
fn errno(e: &DmError) -> Option<i32> {
    match e {
        DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => Some(**errno as i32),
        DmError::Core(devicemapper::errors::Error::ContextInit(_)) => None,
        _ => None,
    }
}

/// A one-line description: the OS error where there is one, instead of the
/// crate's dump of ioctl headers.
fn describe(e: &DmError) -> String {
    match errno(e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    }
}

fn dm_error(what: &str, e: &DmError) -> Error {
    match errno(e) {
        Some(n) => Error::io(what, std::io::Error::from_raw_os_error(n)),
        None => Error::system(format!("{what}: {e}")),
    }
}
