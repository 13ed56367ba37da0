//! Enrollment: making a plain partition snapshottable while mounted, with no
//! kernel module.
//!
//! Device-mapper cannot be slid under a filesystem already mounted on a
//! plain partition: the partition has no table to swap. So a partition is
//! enrolled once: a pass-through mapping, dm-linear over the whole device
//! (`hcp-<name>`, UUID `HCP-ENROLLED-<name>`), is made, and the filesystem
//! is mounted through it from then on. Every later snapshot is then of a dm
//! device, taken live like an LVM volume's. The mapping adds no copy and no
//! queue: dm-linear remaps each bio's sector and passes it down.
//!
//! - `enroll`: an unmounted device gets its mapping; a mounted one
//!   (`--now`) is unmounted, mapped and mounted again through the mapping,
//!   at the same place with the same options, the one planned
//!   interruption, which is measured. Any failure in between puts the
//!   original mount back.
//! - `activate`: recreates missing mappings at boot, from the records in
//!   `/etc/hcp/enrolled/` (see [`record`]), before filesystems are mounted.
//! - `unenroll`: the reverse.
//!
//! The filesystem on the mapping and on the raw device is the same, UUID
//! included, so fstab must name the mapping (`/dev/mapper/hcp-<name>`), not
//! `UUID=`, which could match either; `enroll` says so and `--edit-fstab`
//! makes the change.

mod fstab;
mod openers;
mod record;
mod remount;

pub use openers::Opener;
pub use record::{Enrollment, CONFIG_DIR, UUID_ENROLLED};
pub use remount::MountSpec;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::table::{Linear, TargetParams};
use crate::kernel::mountinfo::{self, Mount, MountTable};
use crate::privilege::require_root;
use crate::switch::fault;

/// The systemd unit that runs `hcp activate` at boot.
pub const ACTIVATE_UNIT: &str = "hcp-activate.service";

pub struct EnrollOptions {
    pub device: String,
    /// Remount a mounted filesystem through the mapping now.
    pub now: bool,
    pub edit_fstab: bool,
}

/// What `enroll` did.
#[derive(Clone, Debug, Serialize)]
pub struct Enrolled {
    /// The enrolled device, by its kernel name.
    pub device: PathBuf,
    pub mapping: PathBuf,
    /// How `activate` finds the device again.
    pub identified_by: PathBuf,
    pub record: PathBuf,
    /// With `--now` on a mounted filesystem: the remount.
    pub remounted: Option<Remounted>,
    pub fstab: FstabChange,
    pub boot_unit: &'static str,
}

/// A filesystem moved from one device node to another by unmounting and
/// mounting it again.
#[derive(Clone, Debug, Serialize)]
pub struct Remounted {
    #[serde(flatten)]
    pub mount: MountSpec,
    /// The device now mounted.
    pub device: PathBuf,
    /// From the start of the unmount to the end of the mount: how long the
    /// mount point showed no filesystem (the planned interruption).
    pub downtime_seconds: f64,
}

/// The fstab line that mounts the filesystem at boot, and how it must read.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FstabChange {
    pub path: &'static str,
    /// 1-based; `None` when fstab has no line for it.
    pub line: Option<usize>,
    pub current: Option<String>,
    /// The line as it must read (with `--edit-fstab`: as it now reads);
    /// `None` with a `current` line that needs no change.
    pub wanted: Option<String>,
    pub edited: bool,
    /// The copy of fstab made before editing it.
    pub backup: Option<PathBuf>,
}

pub struct UnenrollOptions {
    pub device: String,
    pub now: bool,
    pub edit_fstab: bool,
}

/// What `unenroll` did.
#[derive(Clone, Debug, Serialize)]
pub struct Unenrolled {
    pub device: PathBuf,
    /// The mapping removed (`None` if it did not exist).
    pub mapping_removed: Option<PathBuf>,
    pub remounted: Option<Remounted>,
    pub fstab: FstabChange,
}

/// One enrolled device as `activate` found and left it.
#[derive(Clone, Debug, Serialize)]
pub struct Activation {
    pub mapping: PathBuf,
    pub device: PathBuf,
    /// `created`, `present` or `failed`.
    pub state: &'static str,
    pub error: Option<String>,
    #[serde(skip)]
    pub error_kind: Option<crate::error::Kind>,
}

/// An enrolled device, as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EnrolledEntry {
    pub mapping: PathBuf,
    /// The device under the mapping, or where the record says it is.
    pub device: PathBuf,
    pub active: bool,
    pub mounted_at: Option<PathBuf>,
    pub sessions: Vec<String>,
}

pub fn enroll(opts: &EnrollOptions) -> Result<Enrolled> {
    require_root()?;
    fault::configured()?;
    let dm = Dm::open()?;
    let _lock = crate::state::lock::Lock::acquire()?;
    let raw = BlockDevice::resolve(&opts.device)?;
    let shown = raw.display_path();
    let records = record::load_all()?;
    // A record of this device whose mapping is missing, and was never made
    // (hcp died between the two) or was lost: enrolling again completes it
    // under the same name.
    let stale = records
        .iter()
        .find(|r| !dm.exists(&r.name).unwrap_or(true) && find_device(r).is_ok_and(|d| d.devnum == raw.devnum));
    check_enrollable(&dm, &raw, &records)?;
    let name = stale.map_or_else(|| format!("hcp-{}", raw.kernel_name), |r| r.name.clone());
    if !record::is_mapping_name(&name) {
        return Err(Error::refused(format!(
            "{} has a kernel name hcp cannot make a dm name of ({name}): enroll a device with a shorter, plain name",
            shown.display()
        )));
    }
    if let Some(other) = records.iter().find(|r| r.name == name && Some(*r) != stale) {
        return Err(Error::refused(format!(
            "an enrollment named {name} exists already, for {} (the kernel has since named another device {}): \
             unenroll it first (`hcp unenroll {}`)",
            other.device.display(),
            raw.kernel_name,
            other.mapping_path().display()
        )));
    }
    if dm.exists(&name)? {
        return Err(Error::refused(format!(
            "a dm device {name} exists already and enrolling {} needs that name: remove it (`dmsetup remove {name}`) \
             if it is a leftover",
            shown.display()
        )));
    }
    let mounts = MountTable(mountinfo::read()?);
    let spec = match (mounts.mounts_of(raw.devnum).as_slice(), opts.now) {
        ([], _) => None,
        ([mount], true) => Some(check_remountable(mount, &mounts, raw.devnum)?),
        ([mount], false) => {
            return Err(Error::refused(format!(
                "{} is mounted at {}: enrolling it remounts it through the mapping, a short planned interruption; \
                 run `hcp enroll --now {}` (or unmount it and run `hcp enroll {}`)",
                shown.display(),
                mount.mount_point.display(),
                shown.display(),
                shown.display()
            )))
        }
        (many, _) => return Err(mounted_in_many(&shown, many)),
    };
    if spec.is_none() {
        crate::kernel::blockdev::check_not_open_exclusively(&shown)?;
    }
    let fs_uuid = crate::kernel::mount::fs_uuid(&shown).ok().flatten();
    let mut record = Enrollment {
        version: record::RECORD_VERSION,
        name: name.clone(),
        device: stable_path(&raw),
        kernel_path: shown.clone(),
        size_sectors: raw.size_sectors(),
        fs_uuid,
        enrolled_unix: crate::clock::now_unix(),
        // (Enrolling again keeps what fstab named before the first time.)
        fstab_source: stale.and_then(|r| r.fstab_source.clone()),
        fstab_added: stale.map(|r| r.fstab_added.clone()).unwrap_or_default(),
    };
    let fstab_text = fstab::read()?;
    let mapping = record.mapping_path();
    let entry = fstab::entries(&fstab_text).into_iter().find(|e| {
        denotes(&e.source, &raw, record.fs_uuid.as_deref())
            || Path::new(&e.source) == mapping
            || spec.as_ref().is_some_and(|s| Path::new(&e.mount_point) == s.mount_point)
    });
    let names_mapping = entry.as_ref().is_some_and(|e| Path::new(&e.source) == mapping);
    let wanted = entry
        .as_ref()
        .filter(|_| !names_mapping)
        .map(|e| e.changed(&mapping.display().to_string(), fstab::BOOT_OPTIONS, true));
    if opts.edit_fstab && names_mapping {
        return Err(Error::usage(format!(
            "--edit-fstab: {} names {} already; enroll without it",
            fstab::PATH,
            mapping.display()
        )));
    }
    if opts.edit_fstab {
        let Some(entry) = &entry else {
            return Err(Error::usage(format!(
                "--edit-fstab: {} has no line for {} to change; enroll without it and add the line yourself",
                fstab::PATH,
                shown.display()
            )));
        };
        record.fstab_source = Some(entry.fields[0].clone());
    }
    // What the line gains, whether hcp edits it or prints it for the
    // administrator to: unenroll takes exactly that away again.
    if let Some(entry) = entry.as_ref().filter(|_| !names_mapping) {
        record.fstab_added = entry.missing_options(fstab::BOOT_OPTIONS).into_iter().map(String::from).collect();
    }

    // The record first: if hcp dies from here on, `hcp activate` (or
    // `unenroll`) finds an enrollment to complete or undo.
    record::save(&record)?;
    // Taken back if the mapping is not made, whether by an error or a panic
    // (an earlier, incomplete enrollment stays as it was).
    let unsaved = Unsave(stale.is_none().then_some(&record));
    let remounted = match &spec {
        None => create_mapping(&dm, &record, raw.devnum).map(|_| None)?,
        Some(spec) => Some(move_mount(
            spec,
            (&shown, &mapping),
            &mut || create_mapping(&dm, &record, raw.devnum).map(|_| ()),
            &mut || remove_mapping(&dm, &name),
            ("enroll-after-unmount", "enroll-after-create"),
        )?),
    };
    unsaved.keep();
    let mut fstab = FstabChange {
        path: fstab::PATH,
        line: entry.as_ref().map(|e| e.line),
        current: entry.as_ref().map(|e| e.text()),
        wanted,
        ..FstabChange::default()
    };
    if opts.edit_fstab {
        let (entry, wanted) = (entry.expect("checked above"), fstab.wanted.clone().expect("with the entry"));
        let text = fstab::replace_line(&fstab_text, entry.line, &wanted);
        fstab.backup = Some(fstab::write_with_backup(&text, record.enrolled_unix).map_err(|e| {
            e.context(format!("{} is enrolled and mapped, but fstab was not changed", shown.display()))
        })?);
        fstab.edited = true;
    }
    Ok(Enrolled {
        device: shown,
        mapping,
        identified_by: record.device.clone(),
        record: record.record_path(),
        remounted,
        fstab,
        boot_unit: ACTIVATE_UNIT,
    })
}

pub fn unenroll(opts: &UnenrollOptions) -> Result<Unenrolled> {
    require_root()?;
    fault::configured()?;
    let dm = Dm::open()?;
    let _lock = crate::state::lock::Lock::acquire()?;
    let named = BlockDevice::resolve(&opts.device)?;
    let records = record::load_all()?;
    let record = records
        .iter()
        .find(|r| {
            named.dm.as_ref().is_some_and(|d| d.name == r.name)
                || mapped_device(&dm, r).ok().flatten() == Some(named.devnum)
                || (!dm.exists(&r.name).unwrap_or(true) && find_device(r).is_ok_and(|d| d.devnum == named.devnum))
        })
        .ok_or_else(|| {
            Error::not_found(format!(
                "{} is not enrolled: give an enrolled device or its mapping (`hcp list` shows them)",
                opts.device
            ))
        })?;
    let sessions: Vec<String> = crate::state::record::load_all()?
        .into_iter()
        .filter(|s| s.origin.dm_name == record.name)
        .map(|s| s.id)
        .collect();
    if !sessions.is_empty() {
        return Err(Error::busy(format!(
            "{} has sessions ({}): remove them first (`hcp -r {}`)",
            record.mapping_path().display(),
            sessions.join(", "),
            record.mapping_path().display()
        )));
    }
    if dm.exists(&record.name)? && dm.table(&record.name)?.iter().any(|l| l.target_type != "linear") {
        return Err(Error::refused(format!(
            "{} carries a snapshot that no session record accounts for: run `hcp recover` first",
            record.mapping_path().display()
        )));
    }
    let mapping = record.mapping_path();
    let mut mapping_removed = None;
    let mut remounted = None;
    let raw = match mapped_device(&dm, record)? {
        Some(raw_devnum) => {
            let raw = BlockDevice::from_devnum(raw_devnum)?.display_path();
            let mapped = dm.devnum(&record.name)?;
            let mounts = MountTable(mountinfo::read()?);
            match (mounts.mounts_of(mapped).as_slice(), opts.now) {
                ([], _) => remove_mapping(&dm, &record.name)?,
                ([mount], true) => {
                    let spec = check_remountable(mount, &mounts, mapped)?;
                    remounted = Some(move_mount(
                        &spec,
                        (&mapping, &raw),
                        &mut || remove_mapping(&dm, &record.name),
                        &mut || create_mapping(&dm, record, raw_devnum).map(|_| ()),
                        ("unenroll-after-unmount", "unenroll-after-remove"),
                    )?);
                }
                ([mount], false) => {
                    return Err(Error::refused(format!(
                        "{} is mounted at {}: unenrolling remounts it from {}, a short planned interruption; run \
                         `hcp unenroll --now {}` (or unmount it first)",
                        mapping.display(),
                        mount.mount_point.display(),
                        raw.display(),
                        opts.device
                    )))
                }
                (many, _) => return Err(mounted_in_many(&mapping, many)),
            }
            mapping_removed = Some(mapping.clone());
            raw
        }
        None if dm.exists(&record.name)? => {
            return Err(Error::refused(format!(
                "{} has a table hcp did not make (not one linear line over a whole device): inspect it \
                 (`dmsetup table {}`) and remove it by hand",
                mapping.display(),
                record.name
            )))
        }
        None => record.device.clone(),
    };
    record::delete(record)?;
    let fstab_text = fstab::read()?;
    // Only a line naming the mapping has anything to change back.
    let entry = fstab::entries(&fstab_text).into_iter().find(|e| Path::new(&e.source) == mapping);
    let source = record.fstab_source.clone().unwrap_or_else(|| raw.display().to_string());
    let added: Vec<&str> = match record.fstab_added.is_empty() {
        true => vec![fstab::REQUIRES_ACTIVATE],
        false => record.fstab_added.iter().map(String::as_str).collect(),
    };
    let mut fstab = FstabChange {
        path: fstab::PATH,
        line: entry.as_ref().map(|e| e.line),
        current: entry.as_ref().map(|e| e.text()),
        wanted: entry.as_ref().map(|e| e.changed(&source, &added, false)),
        ..FstabChange::default()
    };
    if opts.edit_fstab {
        if let (Some(entry), Some(wanted)) = (&entry, &fstab.wanted) {
            let text = fstab::replace_line(&fstab_text, entry.line, wanted);
            fstab.backup = Some(
                fstab::write_with_backup(&text, crate::clock::now_unix())
                    .map_err(|e| e.context(format!("{} is unenrolled, but fstab was not changed", raw.display())))?,
            );
            fstab.edited = true;
        }
    }
    Ok(Unenrolled { device: raw, mapping_removed, remounted, fstab })
}

/// `hcp activate`: makes the mapping of every enrolled device that lacks
/// one. Each device is reported; one that cannot be mapped (absent, or
/// mounted without its mapping) does not stop the others. A device not
/// there yet is waited for up to `wait` (at boot, udev may still be making
/// its node).
pub fn activate(wait: std::time::Duration) -> Result<Vec<Activation>> {
    require_root()?;
    let dm = Dm::open()?;
    let _lock = crate::state::lock::Lock::acquire()?;
    let deadline = Instant::now() + wait;
    let mut report = Vec::new();
    for record in record::load_all()? {
        let (state, error) = if dm.exists(&record.name)? {
            ("present", None)
        } else {
            let mut found = find_device(&record);
            while found.is_err() && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
                found = find_device(&record);
            }
            match found.and_then(|raw| {
                check_activatable(&record, &raw)?;
                create_mapping(&dm, &record, raw.devnum)
            }) {
                Ok(_) => ("created", None),
                Err(e) => ("failed", Some(e)),
            }
        };
        report.push(Activation {
            mapping: record.mapping_path(),
            device: record.device.clone(),
            state,
            error_kind: error.as_ref().map(|e| e.kind),
            error: error.map(|e| e.message().to_string()),
        });
    }
    Ok(report)
}

/// The enrollment of plain device `dev`, if it has one.
pub fn enrollment_of(dev: &BlockDevice) -> Result<Option<Enrollment>> {
    Ok(record::load_all()?.into_iter().find(|r| find_device(r).is_ok_and(|d| d.devnum == dev.devnum)))
}

/// Every enrolled device, with its mapping's state, for `list`.
pub fn list() -> Result<Vec<EnrolledEntry>> {
    let records = record::load_all()?;
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let dm = Dm::open()?;
    let mounts = MountTable(mountinfo::read()?);
    let sessions = crate::state::record::load_all()?;
    records
        .iter()
        .map(|r| {
            let active = dm.exists(&r.name)?;
            let device = match mapped_device(&dm, r)? {
                Some(raw) => BlockDevice::from_devnum(raw)?.display_path(),
                None => r.device.clone(),
            };
            let mounted_at = if active {
                mounts.mounts_of(dm.devnum(&r.name)?).first().map(|m| m.mount_point.clone())
            } else {
                None
            };
            Ok(EnrolledEntry {
                mapping: r.mapping_path(),
                device,
                active,
                mounted_at,
                sessions: sessions.iter().filter(|s| s.origin.dm_name == r.name).map(|s| s.id.clone()).collect(),
            })
        })
        .collect()
}

/// An enrollment record that is deleted again when dropped unless kept.
struct Unsave<'a>(Option<&'a Enrollment>);

impl Unsave<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Unsave<'_> {
    fn drop(&mut self) {
        if let Some(record) = self.0 {
            if let Err(e) = record::delete(record) {
                eprintln!("hcp: warning: {}", e.message());
            }
        }
    }
}

/// Refuses what cannot or need not be enrolled, naming what to do instead.
fn check_enrollable(dm: &Dm, raw: &BlockDevice, records: &[Enrollment]) -> Result<()> {
    let shown = raw.display_path();
    if let Some(ident) = &raw.dm {
        if ident.uuid.starts_with(UUID_ENROLLED) {
            return Err(Error::refused(format!(
                "{} is the mapping of an enrolled device already: snapshot it with `hcp start {}`",
                shown.display(),
                shown.display()
            )));
        }
        return Err(Error::usage(format!(
            "{} is a device-mapper device: hcp snapshots it live as it is, with no enrollment; run `hcp start {}`",
            shown.display(),
            shown.display()
        )));
    }
    let partitions = partitions_of(raw);
    if !partitions.is_empty() {
        let in_use: Vec<String> =
            partitions.iter().filter(|p| is_in_use(p)).map(|p| p.display_path().display().to_string()).collect();
        let state = if in_use.is_empty() { String::new() } else { format!(" ({} in use)", in_use.join(", ")) };
        return Err(Error::usage(format!(
            "{} is a whole disk with partitions{state}: enroll the partition that holds the filesystem, e.g. \
             `hcp enroll {}`",
            shown.display(),
            partitions[0].display_path().display()
        )));
    }
    if let Some(holder) = crate::kernel::dm::passthrough::holder_of(dm, raw)? {
        let enrolled = records.iter().any(|r| holder.dm.as_ref().is_some_and(|d| d.name == r.name))
            || holder.dm.as_ref().is_some_and(|d| d.uuid.starts_with(UUID_ENROLLED));
        return Err(Error::refused(if enrolled {
            format!(
                "{} is enrolled already, as {}: snapshot it with `hcp start {}`",
                shown.display(),
                holder.display_path().display(),
                shown.display()
            )
        } else {
            format!(
                "{} is mapped whole by {} already: hcp snapshots it through that mapping with no enrollment; run \
                 `hcp start {}`",
                shown.display(),
                holder.display_path().display(),
                shown.display()
            )
        }));
    }
    if let Some(&holder) = raw.holders().first() {
        let holder = BlockDevice::from_devnum(holder)?;
        return Err(Error::busy(format!(
            "{} is in use by {}, built on it: enroll only a device that holds a filesystem directly",
            shown.display(),
            holder.display_path().display()
        )));
    }
    Ok(())
}

/// The spec of `mount`, once nothing stands in the way of unmounting it:
/// no process holding it, no mount beneath it.
pub fn check_remountable(mount: &Mount, mounts: &MountTable, dev: DevNum) -> Result<MountSpec> {
    let spec = MountSpec::of(mount)?;
    let nested: Vec<String> = mounts
        .0
        .iter()
        .filter(|m| m.parent_id == mount.mount_id)
        .map(|m| m.mount_point.display().to_string())
        .collect();
    if !nested.is_empty() {
        return Err(Error::busy(format!(
            "{} has filesystems mounted inside it ({}): unmount them first, then run hcp again",
            mount.mount_point.display(),
            nested.join(", ")
        )));
    }
    let openers = openers::of(dev);
    if !openers.is_empty() {
        let named: Vec<String> = openers.iter().map(|o| format!("{} ({}, {})", o.pid, o.command, o.uses)).collect();
        return Err(Error::busy(format!(
            "{} is in use by {} process{}: {}; stop {} (the filesystem must be unmounted for a moment), then run hcp \
             again",
            mount.mount_point.display(),
            openers.len(),
            if openers.len() == 1 { "" } else { "es" },
            named.join("; "),
            if openers.len() == 1 { "it" } else { "them" }
        )));
    }
    Ok(spec)
}

fn mounted_in_many(device: &Path, mounts: &[&Mount]) -> Error {
    let points: Vec<String> = mounts.iter().map(|m| m.mount_point.display().to_string()).collect();
    Error::refused(format!(
        "{} is mounted in {} places ({}): hcp remounts a filesystem mounted once; unmount the others (bind mounts \
         included) and run hcp again",
        device.display(),
        mounts.len(),
        points.join(", ")
    ))
}

/// Unmounts `spec`'s filesystem from `from`, runs `switch` (which makes
/// `to` ready) and mounts it from `to` as it was. If anything fails after
/// the unmount, or panics, `switch_back` undoes `switch` and the
/// filesystem is mounted from `from` again, so that it is never left
/// unmounted. The fault steps are those after the unmount and after the
/// switch.
pub fn move_mount(
    spec: &MountSpec,
    (from, to): (&Path, &Path),
    switch: &mut dyn FnMut() -> Result<()>,
    switch_back: &mut dyn FnMut() -> Result<()>,
    (after_unmount, after_switch): (&'static str, &'static str),
) -> Result<Remounted> {
    // Dirty data goes to disk while the filesystem is still in use, so
    // that the unmount itself has little left to write.
    sync_filesystem(&spec.mount_point)?;
    // If hcp dies (SIGKILL) or hangs from here to the mount, the guard
    // mounts the filesystem again, from whichever device can be mounted.
    let guard = crate::switch::guard::Guard::spawn(&crate::switch::guard::Plan {
        remount: Some(crate::switch::guard::Remount {
            mount_point: spec.mount_point.clone(),
            fs_type: spec.fs_type.clone(),
            flags: spec.flags,
            data: spec.data.clone(),
            from: vec![from.to_path_buf(), to.to_path_buf()],
        }),
        deadline: crate::switch::guard::deadline()?,
        ..Default::default()
    })?;
    let began = Instant::now();
    crate::kernel::mount::unmount(&spec.mount_point)?;
    let mut put_back = PutBack { spec, from, switch_back, switched: false, done: false };
    fault::at(after_unmount).map_err(|e| put_back.undo(e))?;
    switch().map_err(|e| put_back.undo(e))?;
    put_back.switched = true;
    fault::at(after_switch).map_err(|e| put_back.undo(e))?;
    spec.mount(to).map_err(|e| put_back.undo(e))?;
    let downtime = began.elapsed();
    put_back.done = true;
    guard.disarm()?;
    Ok(Remounted { mount: spec.clone(), device: to.to_path_buf(), downtime_seconds: downtime.as_secs_f64() })
}

/// The way back to the original mount while a remount is under way: taken
/// on an error, and on a panic from its `Drop`.
struct PutBack<'a> {
    spec: &'a MountSpec,
    from: &'a Path,
    switch_back: &'a mut dyn FnMut() -> Result<()>,
    /// The switch is made, so it must be undone first.
    switched: bool,
    /// Finished, or put back already.
    done: bool,
}

impl PutBack<'_> {
    /// Puts the original mount back; `e` with how that went.
    fn undo(&mut self, e: Error) -> Error {
        self.done = true;
        match self.restore() {
            Ok(()) => e.context(format!("the filesystem is mounted from {} again, as before", self.from.display())),
            Err(undo) => Error::system(format!(
                "{}; and putting the original mount back failed too: {} (mount {} at {} by hand)",
                e.message(),
                undo.message(),
                self.from.display(),
                self.spec.mount_point.display()
            )),
        }
    }

    fn restore(&mut self) -> Result<()> {
        if self.switched {
            (self.switch_back)()?;
        }
        self.spec.mount(self.from)
    }
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        // A panic between the unmount and the mount.
        if !self.done {
            if let Err(e) = self.restore() {
                eprintln!("hcp: putting the original mount back failed: {}", e.message());
            }
        }
    }
}

/// Makes `record`'s mapping over `raw`: one linear line, the whole device.
fn create_mapping(dm: &Dm, record: &Enrollment, raw: DevNum) -> Result<DevNum> {
    let line = Linear { device: raw, offset: 0 }.table_line(record.size_sectors);
    dm.create(&record.name, &record.uuid(), &[line]).map_err(|e| match e.kind {
        crate::error::Kind::Busy => Error::busy(format!(
            "{} is in use (opened exclusively by a program or the kernel): stop what uses it and retry ({})",
            record.device.display(),
            e.message()
        )),
        _ => e,
    })
}

fn remove_mapping(dm: &Dm, name: &str) -> Result<()> {
    if dm.open_count(name)? > 0 {
        return Err(Error::busy(format!(
            "{} is open (mounted, or used by a program): stop what uses it and retry",
            crate::kernel::dm::device::node_path(name).display()
        )));
    }
    dm.remove(name)?;
    let _ = std::fs::remove_file(crate::kernel::dm::device::node_path(name));
    Ok(())
}

/// The device `record`'s mapping maps, if the mapping exists and is the
/// pass-through hcp made (a session moves it to `-real`: followed).
fn mapped_device(dm: &Dm, record: &Enrollment) -> Result<Option<DevNum>> {
    if !dm.exists(&record.name)? {
        return Ok(None);
    }
    let real = format!("{}-real", record.name);
    let table = match dm.table(&record.name)?.as_slice() {
        [line] if line.target_type == "snapshot-origin" && dm.exists(&real)? => dm.table(&real)?,
        other => other.to_vec(),
    };
    Ok(match table.as_slice() {
        [line] => Linear::from_line(line).ok().filter(|l| l.offset == 0).map(|l| l.device),
        _ => None,
    })
}

/// The device `record` names, found by its stable path.
fn find_device(record: &Enrollment) -> Result<BlockDevice> {
    BlockDevice::resolve(&record.device.display().to_string()).map_err(|_| {
        Error::not_found(format!(
            "{} (enrolled as {}) is not there: attach the disk, or `hcp unenroll {}` if it is gone for good",
            record.device.display(),
            record.mapping_path().display(),
            record.mapping_path().display()
        ))
    })
}

/// Refuses to map a device that is not the one enrolled, or that is in use
/// without its mapping.
fn check_activatable(record: &Enrollment, raw: &BlockDevice) -> Result<()> {
    let shown = raw.display_path();
    if raw.size_sectors() != record.size_sectors {
        return Err(Error::refused(format!(
            "{} has {} sectors, but {} was enrolled with {}: not the same device (or it was resized); check it, then              unenroll and enroll it again",
            shown.display(),
            raw.size_sectors(),
            record.name,
            record.size_sectors
        )));
    }
    let found = crate::kernel::mount::fs_uuid(&shown).ok().flatten();
    if let (Some(enrolled), Some(found)) = (&record.fs_uuid, &found) {
        if enrolled != found {
            return Err(Error::refused(format!(
                "{} holds filesystem {found}, but {} was enrolled with filesystem {enrolled}: not the same device;                  check it, then unenroll and enroll it again",
                shown.display(),
                record.name
            )));
        }
    }
    let mounts = MountTable(mountinfo::read()?);
    if let Some(m) = mounts.mounts_of(raw.devnum).first() {
        return Err(Error::refused(format!(
            "{} is mounted at {} without its mapping: {} must name {} (`hcp enroll` printed the line), then reboot or \
             unmount it and run `hcp activate`",
            shown.display(),
            m.mount_point.display(),
            fstab::PATH,
            record.mapping_path().display()
        )));
    }
    if let Some(&holder) = raw.holders().first() {
        return Err(Error::busy(format!(
            "{} is in use by {}: stop that first",
            shown.display(),
            BlockDevice::from_devnum(holder)?.display_path().display()
        )));
    }
    Ok(())
}

/// The most stable name of `dev` that udev made, by partition UUID, then
/// by id, then by path; else its kernel path.
fn stable_path(dev: &BlockDevice) -> PathBuf {
    for dir in ["/dev/disk/by-partuuid", "/dev/disk/by-id", "/dev/disk/by-path"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| DevNum::of_block_device(p).ok() == Some(dev.devnum))
            .collect();
        names.sort();
        if let Some(name) = names.into_iter().next() {
            return name;
        }
    }
    dev.display_path()
}

/// Whether fstab source `source` (a path, `UUID=`, `PARTUUID=`, `LABEL=`,
/// `PARTLABEL=`) names `dev`, whose filesystem has UUID `fs_uuid`.
fn denotes(source: &str, dev: &BlockDevice, fs_uuid: Option<&str>) -> bool {
    let unquoted = |v: &str| v.trim_matches('"').to_string();
    if let Some(uuid) = source.strip_prefix("UUID=") {
        return fs_uuid.is_some_and(|u| u.eq_ignore_ascii_case(&unquoted(uuid)));
    }
    let path = match source.split_once('=') {
        Some(("PARTUUID", v)) => Path::new("/dev/disk/by-partuuid").join(unquoted(v).to_lowercase()),
        Some(("LABEL", v)) => Path::new("/dev/disk/by-label").join(unquoted(v)),
        Some(("PARTLABEL", v)) => Path::new("/dev/disk/by-partlabel").join(unquoted(v)),
        _ => PathBuf::from(source),
    };
    DevNum::of_block_device(&path).ok() == Some(dev.devnum)
}

/// The partitions of a whole disk (none for a partition or a disk without).
fn partitions_of(disk: &BlockDevice) -> Vec<BlockDevice> {
    let sys = Path::new("/sys/class/block").join(&disk.kernel_name);
    let Ok(entries) = std::fs::read_dir(&sys) else { return Vec::new() };
    let mut parts: Vec<BlockDevice> = entries
        .flatten()
        .filter(|e| e.path().join("partition").exists())
        .filter_map(|e| {
            let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
            BlockDevice::from_devnum(dev.trim().parse().ok()?).ok()
        })
        .collect();
    parts.sort_by(|a, b| a.kernel_name.cmp(&b.kernel_name));
    parts
}

/// Mounted, or held by a device built on it.
fn is_in_use(dev: &BlockDevice) -> bool {
    !dev.holders().is_empty() || mountinfo::read().is_ok_and(|m| !MountTable(m).mounts_of(dev.devnum).is_empty())
}

/// syncfs(2) on the filesystem mounted at `mount_point`.
fn sync_filesystem(mount_point: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir =
        std::fs::File::open(mount_point).map_err(|e| Error::io(format!("opening {}", mount_point.display()), e))?;
    // SAFETY: a valid descriptor, open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io(format!("syncing {}", mount_point.display()), std::io::Error::last_os_error()));
    }
    Ok(())
}
