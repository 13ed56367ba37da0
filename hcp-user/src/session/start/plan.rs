//! The plan of a start: everything checked, and every name and size
//! decided, before anything is made. Nothing here changes the system, so a
//! refusal leaves it as it was.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::table::{SnapshotOrigin, TargetParams};
use crate::kernel::dm::uuid::{UUID_COW, UUID_ORIGIN, UUID_REAL, UUID_SNAPSHOT};
use crate::kernel::mountinfo::MountTable;
use crate::session::autoextend;
use crate::size::{format_bytes, Quota};
use crate::state::dirs::{DEFAULT_MOUNT_DIR, DEFAULT_STORE_DIR};
use crate::state::record::{self, Phase, Session};

use super::options::StartOptions;

/// What a start will do, decided before it does anything.
pub(super) struct Plan {
    /// `hcpN`: the session's name and its snapshot's dm name.
    pub id: String,
    /// The device the user named, as hcp acts on it (an enrolled partition
    /// through its mapping).
    pub named: BlockDevice,
    pub origin: OriginPlan,
    /// The device whose contents the snapshot keeps.
    pub origin_dev: BlockDevice,
    pub store: StorePlan,
    /// The most the store may take.
    pub quota: u64,
    /// Set when the store grows as it fills.
    pub grow: Option<autoextend::Plan>,
    /// The size of a store file as made: the quota, or less when it grows.
    pub file_bytes: u64,
    pub mount_point: Option<PathBuf>,
    /// Where `remove` writes a traced session's final report.
    pub report: Option<PathBuf>,
}

/// Checks the options against the system and decides every name and size.
pub(super) fn plan(dm: &Dm, opts: &StartOptions) -> Result<Plan> {
    let sessions = record::load_all()?;
    let mounts = MountTable(crate::kernel::mountinfo::read()?);

    let report = match &opts.report {
        Some(_) if !opts.trace => {
            return Err(Error::usage(
                "--report needs --trace: only a traced session has figures to report; add --trace or drop --report",
            ))
        }
        Some(path) => Some(crate::session::trace::check_report_path(path)?),
        None => None,
    };
    // A partition under a pass-through mapping (enrolled) is snapshotted
    // through the mapping, where its filesystem is mounted.
    let named = crate::kernel::dm::passthrough::acting_device(dm, BlockDevice::resolve(&opts.device)?)?;
    let origin = plan_origin(dm, &named, &sessions, &mounts)?;
    let (origin_dev, origin_label) = match &origin {
        OriginPlan::Live { name, .. } => (BlockDevice::from_devnum(dm_devnum(dm, name)?)?, name.clone()),
        OriginPlan::Wrap { raw, .. } => (raw.clone(), raw.kernel_name.clone()),
    };
    // Leftovers of an hcp that did not finish: on this origin they would
    // get in the way (its table, its `-real`); elsewhere they are only
    // pointed out.
    for (id, problem) in crate::session::inspect::leftovers(dm, &sessions)? {
        let on_this = sessions.iter().any(|s| s.id == id && s.origin.dm_name == origin.origin_name());
        if on_this {
            return Err(Error::refused(format!(
                "session {id} of this origin is incomplete ({problem}): run `hcp recover` first"
            )));
        }
        eprintln!("hcp: warning: session {id} is incomplete ({problem}): run `hcp recover`");
    }
    // A rollback a reboot interrupted left this origin half merged: only
    // `recover` may touch it. Its session's name stays taken until then.
    let kept = record::load_rollbacks()?;
    let interrupted = record::interrupted_rollbacks(&sessions)?;
    if let Some(r) = interrupted.iter().find(|r| r.origin.dm_name == origin.origin_name()) {
        return Err(Error::refused(format!(
            "{} was being rolled back to {} when the machine went down: its data is half merged; run `hcp recover` \
             to finish the rollback first",
            r.origin.path.display(),
            r.id
        )));
    }
    let taken: Vec<Session> = sessions.iter().chain(&kept).cloned().collect();
    let id = next_id(dm, &taken)?;
    let quota = opts.quota.unwrap_or(DEFAULT_QUOTA).resolve(origin_dev.size_bytes);
    let min_store = MIN_STORE_BYTES.max(16 * opts.chunk.bytes());
    if quota < min_store {
        return Err(Error::usage(format!(
            "quota {} is too small: a snapshot store needs at least {}; give a larger -q",
            format_bytes(quota),
            format_bytes(min_store)
        )));
    }
    let store = plan_store(opts, &origin_dev, &origin_label, &id, quota, min_store, &mounts)?;
    let device_store = match &store {
        StorePlan::Device { .. } => opts.store.as_deref(),
        StorePlan::File { .. } => None,
    };
    let grow = autoextend::plan(opts.autoextend, opts.store_size, device_store, quota, min_store, opts.chunk.bytes())?;
    let mount_point = if opts.skip_mount {
        None
    } else {
        let path = opts
            .mount_point
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_MOUNT_DIR).join(format!("{origin_label}_{id}")));
        check_mount_point(&path, &mounts)?;
        Some(path)
    };
    let file_bytes = grow.map_or(quota, |g| g.initial_bytes);
    Ok(Plan { id, named, origin, origin_dev, store, quota, grow, file_bytes, mount_point, report })
}

/// The quota when `-q` is not given.
const DEFAULT_QUOTA: Quota = Quota::Percent(10);

/// The smallest store hcp accepts: the header, a metadata area and some data.
const MIN_STORE_BYTES: u64 = 1 << 20;

/// How the origin is switched.
pub(super) enum OriginPlan {
    /// A dm device: switched live. `create_real` is set for its first
    /// session: `-real` is made from its table and the origin reloaded.
    Live {
        name: String,
        real_name: String,
        real: DevNum,
        create_real: bool,
        wrapped: bool,
        mounted_at: Option<PathBuf>,
    },
    /// A plain device nothing holds: wrapped in an origin of hcp's own.
    Wrap { name: String, raw: BlockDevice },
}

impl OriginPlan {
    /// The dm device that carries (or will carry) `snapshot-origin`.
    pub(super) fn origin_name(&self) -> &str {
        match self {
            OriginPlan::Live { name, .. } | OriginPlan::Wrap { name, .. } => name,
        }
    }
}

pub(super) enum StorePlan {
    /// A file hcp creates and attaches through a loop device.
    File { path: PathBuf },
    /// A whole block device, or its first `quota` bytes through `hcpN-cow`.
    Device { dev: BlockDevice, limit: Option<u64> },
}

/// Decides how the origin is switched, refusing what cannot work.
fn plan_origin(dm: &Dm, named: &BlockDevice, sessions: &[Session], mounts: &MountTable) -> Result<OriginPlan> {
    let shown = named.display_path();
    let Some(ident) = &named.dm else {
        // A plain device. Already wrapped by hcp: snapshot through the wrapper.
        for holder in named.holders() {
            let h = BlockDevice::from_devnum(holder)?;
            if let Some(hdm) = h.dm.as_ref().filter(|d| d.uuid.starts_with(UUID_ORIGIN)) {
                return live_plan(dm, &h, &hdm.name, sessions, mounts);
            }
        }
        let holders: Vec<BlockDevice> =
            named.holders().into_iter().filter_map(|h| BlockDevice::from_devnum(h).ok()).collect();
        if let Some(hdm) = holders
            .iter()
            .filter_map(|h| h.dm.as_ref())
            .find(|d| d.uuid.starts_with(UUID_SNAPSHOT) || d.uuid.starts_with(UUID_COW))
        {
            return Err(Error::usage(format!(
                "{} is the store of hcp session {}: snapshots of hcp's own devices are not supported; snapshot the \
                 origin instead (`hcp -l` lists them)",
                shown.display(),
                hdm.name.trim_end_matches("-cow")
            )));
        }
        if let Some(m) = mounts.mounts_of(named.devnum).first() {
            return Err(Error::refused(format!(
                "{} is mounted at {} and is not enrolled: device-mapper cannot be slid under a mounted plain \
                 partition. Enroll it once (`hcp enroll --now {}` remounts it through a pass-through mapping, a \
                 short planned interruption), then snapshot it live",
                shown.display(),
                m.mount_point.display(),
                shown.display()
            )));
        }
        if let Some(holder) = holders.first() {
            // Under an origin of hcp's, through its `-real`: that origin is
            // the device to snapshot.
            let suggested = match &holder.dm {
                Some(d) if d.uuid.starts_with(UUID_REAL) => {
                    crate::kernel::dm::device::node_path(d.name.strip_suffix("-real").unwrap_or(&d.name))
                }
                _ => holder.display_path(),
            };
            return Err(Error::busy(format!(
                "{} is in use by device {} built on it: snapshot {} instead",
                shown.display(),
                holder.display_path().display(),
                suggested.display()
            )));
        }
        if let Some(enrolled) = crate::enroll::enrollment_of(named)? {
            return Err(Error::refused(format!(
                "{} is enrolled, but its mapping {} is missing: run `hcp activate`, mount the filesystem through the \
                 mapping, then snapshot it",
                shown.display(),
                enrolled.mapping_path().display()
            )));
        }
        crate::kernel::blockdev::check_not_open_exclusively(&shown)?;
        return Ok(OriginPlan::Wrap { name: format!("hcp-{}", named.kernel_name), raw: named.clone() });
    };
    for (prefix, what) in [
        (UUID_SNAPSHOT, "an hcp snapshot"),
        (UUID_COW, "an hcp store"),
        (UUID_REAL, "the data device under an hcp origin"),
    ] {
        if ident.uuid.starts_with(prefix) {
            return Err(Error::usage(format!(
                "{} is {what}: snapshots of hcp's own devices are not supported; snapshot the origin instead (`hcp -l` lists them)",
                shown.display()
            )));
        }
    }
    live_plan(dm, named, &ident.name, sessions, mounts)
}

fn live_plan(
    dm: &Dm,
    origin: &BlockDevice,
    name: &str,
    sessions: &[Session],
    mounts: &MountTable,
) -> Result<OriginPlan> {
    let mounted_at = mounts.mounts_of(origin.devnum).first().map(|m| m.mount_point.clone());
    let table = dm.table(name)?;
    let wrapped = origin.dm.as_ref().is_some_and(|d| d.uuid.starts_with(UUID_ORIGIN));
    let real_name = format!("{name}-real");
    if let Some(s) = sessions.iter().find(|s| s.origin.dm_name == name && s.phase == Phase::RollingBack) {
        return Err(Error::busy(format!(
            "{} is being rolled back to {}: snapshot it once the rollback is over (`hcp rollback {}` waits for it)",
            origin.display_path().display(),
            s.id,
            s.id
        )));
    }
    if wrapped || sessions.iter().any(|s| s.origin.dm_name == name) {
        // Already an origin of hcp's: further snapshots share its real device.
        let [line] = table.as_slice() else {
            return Err(Error::system(format!("origin {name} has an unexpected table; run `hcp recover`")));
        };
        let real = SnapshotOrigin::from_line(line)?.origin;
        return Ok(OriginPlan::Live {
            name: name.to_string(),
            real_name,
            real,
            create_real: false,
            wrapped,
            mounted_at,
        });
    }
    if let Some(line) = table.iter().find(|l| l.target_type.starts_with("snapshot")) {
        return Err(Error::refused(format!(
            "{name} is already part of a snapshot made by another tool (its table has a `{}` target): remove that \
             snapshot first (e.g. lvremove), or snapshot another volume",
            line.target_type
        )));
    }
    if table.is_empty() {
        return Err(Error::refused(format!("{name} has no table loaded: there is nothing to snapshot")));
    }
    // DM_NAME_LEN is 128 with its NUL: `<name>-real` must fit.
    if real_name.len() > 127 {
        return Err(Error::refused(format!(
            "the dm name {name} is too long for hcp's `{name}-real` beside it (at most 122 characters): rename the \
             volume (e.g. lvrename) or snapshot another"
        )));
    }
    if dm.exists(&real_name)? {
        return Err(Error::refused(format!(
            "a dm device {real_name} exists already and hcp needs that name: remove it if it is a leftover \
             (`hcp recover`, or `dmsetup remove {real_name}`)"
        )));
    }
    Ok(OriginPlan::Live {
        name: name.to_string(),
        real_name,
        real: DevNum { major: 0, minor: 0 },
        create_real: true,
        wrapped: false,
        mounted_at,
    })
}

fn plan_store(
    opts: &StartOptions,
    origin: &BlockDevice,
    origin_label: &str,
    id: &str,
    quota: u64,
    min_store: u64,
    mounts: &MountTable,
) -> Result<StorePlan> {
    let file_name = format!("{origin_label}.{id}.cow");
    let Some(given) = &opts.store else {
        let path = Path::new(DEFAULT_STORE_DIR).join(file_name);
        check_file_store(&path, origin)?;
        return Ok(StorePlan::File { path });
    };
    let meta = std::fs::metadata(given);
    if let Ok(meta) = &meta {
        if meta.file_type().is_block_device() {
            return plan_device_store(given, origin, quota, opts.quota.is_some(), min_store, mounts);
        }
        if meta.is_dir() {
            let path = given.join(file_name);
            check_file_store(&path, origin)?;
            return Ok(StorePlan::File { path });
        }
        return Err(Error::usage(format!(
            "store {} exists: give a block device, a directory, or a new file path for -c",
            given.display()
        )));
    }
    check_file_store(given, origin)?;
    Ok(StorePlan::File { path: given.clone() })
}

/// A file store must not live on the origin: every write to the store
/// would itself be copied aside into the store.
fn check_file_store(path: &Path, origin: &BlockDevice) -> Result<()> {
    if path.starts_with(DEFAULT_STORE_DIR) {
        crate::state::private::check_private_dir(Path::new(DEFAULT_STORE_DIR))?;
    }
    // (A dangling symlink is something there too.)
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::usage(format!("store file {} exists already: give a new path for -c", path.display())));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // The default directory is made on demand; check where it would live.
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
    if !dir.exists() && !dir.starts_with(DEFAULT_STORE_DIR) {
        return Err(Error::usage(format!(
            "directory {} for the store does not exist: create it or give another -c",
            dir.display()
        )));
    }
    let fs_dev = DevNum::from_user(std::fs::metadata(existing).map_err(|e| Error::io(existing.display(), e))?.dev());
    if let Ok(fs_bd) = BlockDevice::from_devnum(fs_dev) {
        if fs_bd.stacked_on(origin.devnum) {
            return Err(Error::refused(format!(
                "store {} would be on the origin {} itself: copy-on-write into the origin recurses; put the store on \
                 another device (-c /other/dir or -c /dev/sdX)",
                path.display(),
                origin.display_path().display()
            )));
        }
    }
    Ok(())
}

fn plan_device_store(
    given: &Path,
    origin: &BlockDevice,
    quota: u64,
    quota_given: bool,
    min_store: u64,
    mounts: &MountTable,
) -> Result<StorePlan> {
    let dev = BlockDevice::resolve(&given.display().to_string())?;
    if dev.stacked_on(origin.devnum) || origin.stacked_on(dev.devnum) {
        return Err(Error::refused(format!(
            "store {} is the origin or shares its blocks: copy-on-write into the origin recurses; give a separate device",
            given.display()
        )));
    }
    if let Some(m) = mounts.mounts_of(dev.devnum).first() {
        return Err(Error::busy(format!(
            "store {} is mounted at {}: unmount it or give another device (its contents would be overwritten)",
            given.display(),
            m.mount_point.display()
        )));
    }
    if let Some(holder) = dev.holders().first() {
        return Err(Error::busy(format!("store {} is in use by device {holder}: give a free device", given.display())));
    }
    crate::kernel::blockdev::check_not_open_exclusively(given)?;
    if dev.size_bytes < min_store {
        return Err(Error::usage(format!(
            "store {} is too small ({}): a snapshot store needs at least {}; give a larger device",
            given.display(),
            format_bytes(dev.size_bytes),
            format_bytes(min_store)
        )));
    }
    if quota_given && quota > dev.size_bytes {
        return Err(Error::usage(format!(
            "quota {} is larger than the store device {} ({}): give a smaller -q or a larger device",
            format_bytes(quota),
            given.display(),
            format_bytes(dev.size_bytes)
        )));
    }
    let limit = (quota_given && quota < dev.size_bytes).then_some(quota);
    Ok(StorePlan::Device { dev, limit })
}

/// The snapshot's mount point: a directory that is not a mount point
/// already, or a new path whose parent exists (or under hcp's own
/// directory, made on demand).
fn check_mount_point(path: &Path, mounts: &MountTable) -> Result<()> {
    if path.starts_with(DEFAULT_MOUNT_DIR) {
        crate::state::private::check_private_dir(Path::new(DEFAULT_MOUNT_DIR))?;
    }
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(Error::usage(format!(
            "mount point {} is not a directory: give a directory (or a new path) with -m",
            path.display()
        ))),
        Ok(_) if mounts.mount_at(path).is_some() => {
            Err(Error::busy(format!("{} is a mount point already: give another directory with -m", path.display())))
        }
        // The snapshot would hide what is there (`-m /etc`) for the
        // session's whole life, from every service that reads it.
        Ok(_) if std::fs::read_dir(path).map_err(|e| Error::io(path.display(), e))?.next().is_some() => {
            Err(Error::usage(format!(
                "mount point {} is not empty: the snapshot would hide its files while mounted; give an empty or new \
                 directory with -m",
                path.display()
            )))
        }
        Ok(_) => Ok(()),
        Err(_) if path.parent().is_some_and(|p| p.exists()) || path.starts_with(DEFAULT_MOUNT_DIR) => Ok(()),
        Err(_) => Err(Error::usage(format!(
            "mount point {}: its parent directory does not exist; create it or give another -m",
            path.display()
        ))),
    }
}

/// The lowest `hcpN` (N from 1) that no session and no dm device uses.
fn next_id(dm: &Dm, sessions: &[Session]) -> Result<String> {
    for n in 1..10_000 {
        let id = format!("hcp{n}");
        if !sessions.iter().any(|s| s.id == id) && !dm.exists(&id)? {
            return Ok(id);
        }
    }
    Err(Error::busy("no free hcp device number below 10000: remove old sessions"))
}

fn dm_devnum(dm: &Dm, name: &str) -> Result<DevNum> {
    DevNum::of_block_device(&crate::kernel::dm::device::node_path(name)).or_else(|_| {
        dm.list()?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, d, _)| d)
            .ok_or_else(|| Error::not_found(format!("no dm device {name}")))
    })
}
