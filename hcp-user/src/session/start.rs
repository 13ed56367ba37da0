//! `hcp start`: plan everything, prepare everything, then switch the origin
//! inside the shortest window possible.
//!
//! Order matters for the frozen window: every check, the store, the `-real`
//! device, the snapshot's table and the origin's new table are made *before*
//! the filesystem is frozen. Inside the window there are only four ioctls
//! from this one process: FIFREEZE, suspend the origin, resume the snapshot,
//! resume the origin (which swaps in the preloaded `snapshot-origin` table),
//! FITHAW. Anything that fails before the switch is undone in reverse order.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::now_unix;
use crate::error::{Error, Result, ResultExt};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::device::{make_node, Dm};
use crate::kernel::dm::table::{Linear, Persistence, Snapshot, SnapshotOrigin, TargetParams};
use crate::kernel::dm::uuid::{UUID_COW, UUID_ORIGIN, UUID_REAL, UUID_SNAPSHOT};
use crate::kernel::loopdev::{AttachOptions, LoopDevice};
use crate::kernel::mountinfo::MountTable;
use crate::privilege::require_root;
use crate::session::autoextend;
use crate::size::{format_bytes, ChunkSize, Quota};
use crate::state::dirs::{DEFAULT_MOUNT_DIR, DEFAULT_STORE_DIR};
use crate::state::lock::Lock;
use crate::state::record::{
    self, AutoextendRecord, KernelWindow, MountRecord, Origin, Phase, Session, Store, WindowRecord, RECORD_VERSION,
};
use crate::switch::fault;
use hcp_common::bio::Role;

use super::inspect::snapshot_node;

/// The quota when `-q` is not given.
pub const DEFAULT_QUOTA: Quota = Quota::Percent(10);
/// The smallest store hcp accepts: the header, a metadata area and some data.
const MIN_STORE_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub device: String,
    pub mount_point: Option<PathBuf>,
    pub read_only: bool,
    pub skip_mount: bool,
    /// `-c`: a block device, a directory, or a new file path.
    pub store: Option<PathBuf>,
    pub quota: Option<Quota>,
    pub chunk: ChunkSize,
    pub preallocate: bool,
    /// Grow a file store as it fills, up to the quota.
    pub autoextend: Option<autoextend::Spec>,
    /// With `autoextend`: the store's size at the start.
    pub store_size: Option<autoextend::StoreSize>,
    /// Measure what the session costs, in the kernel, for its whole life.
    pub trace: bool,
    /// With `trace`: how long to measure the origin before the snapshot.
    pub baseline: Duration,
    /// With `trace`: where `remove` writes the final report.
    pub report: Option<PathBuf>,
}

impl StartOptions {
    /// The same options with `-m` and `-c` made absolute: they are recorded
    /// for later commands, which may run from anywhere.
    fn with_absolute_paths(&self) -> Result<StartOptions> {
        let absolute = |p: &Option<PathBuf>| {
            p.as_deref()
                .map(|p| std::path::absolute(p).map_err(|e| Error::io(format!("resolving {}", p.display()), e)))
                .transpose()
        };
        Ok(StartOptions { mount_point: absolute(&self.mount_point)?, store: absolute(&self.store)?, ..self.clone() })
    }
}

/// What `start` did, as printed and as `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Started {
    pub session: String,
    pub origin: PathBuf,
    pub snapshot: PathBuf,
    pub store: PathBuf,
    pub store_loop_device: Option<PathBuf>,
    /// The store's size now; it grows up to `quota_bytes` with auto-extend.
    pub store_bytes: u64,
    pub quota_bytes: u64,
    /// With `--autoextend`: the settings and the monitor that applies them.
    pub autoextend: Option<AutoextendRecord>,
    pub chunk_bytes: u64,
    /// Set for a wrapped plain device: the device every write must now go
    /// through.
    pub write_through: Option<PathBuf>,
    pub mount_point: Option<PathBuf>,
    pub read_only: bool,
    pub filesystem: Option<String>,
    /// Why the snapshot could not be mounted (the session is kept).
    pub mount_error: Option<String>,
    pub created: String,
    pub timing: Timing,
}

/// Measured on hcp's monotonic clock.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// From the start of the command until the snapshot was live (with
    /// `--trace`, this includes loading the programs and the baseline).
    pub snapshot_seconds: f64,
    /// From the start of FIFREEZE to the end of FITHAW; null when nothing
    /// was mounted.
    pub frozen_seconds: Option<f64>,
    /// How long the FIFREEZE call itself took (it syncs the filesystem).
    pub freeze_call_seconds: Option<f64>,
    /// From the suspend of the origin to the end of its resume.
    pub suspended_seconds: Option<f64>,
    /// With `--trace`: the same windows measured in the kernel, and the
    /// longest write stall they caused.
    pub kernel: Option<KernelWindow>,
}

/// How the origin is switched.
enum OriginPlan {
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
    fn origin_name(&self) -> &str {
        match self {
            OriginPlan::Live { name, .. } | OriginPlan::Wrap { name, .. } => name,
        }
    }
}

enum StorePlan {
    /// A file hcp creates and attaches through a loop device.
    File { path: PathBuf },
    /// A whole block device, or its first `quota` bytes through `hcpN-cow`.
    Device { dev: BlockDevice, limit: Option<u64> },
}

pub fn start(opts: &StartOptions) -> Result<Started> {
    let begun = Instant::now();
    let opts = &opts.with_absolute_paths()?;
    require_root()?;
    let dm = Dm::open()?;
    let _lock = Lock::acquire()?;
    let sessions = record::load_all()?;
    let mounts = MountTable(crate::kernel::mountinfo::read()?);

    let report = match &opts.report {
        Some(_) if !opts.trace => {
            return Err(Error::usage(
                "--report needs --trace: only a traced session has figures to report; add --trace or drop --report",
            ))
        }
        Some(path) => Some(super::trace::check_report_path(path)?),
        None => None,
    };
    // A partition under a pass-through mapping (enrolled) is snapshotted
    // through the mapping, where its filesystem is mounted.
    let named = crate::kernel::dm::passthrough::acting_device(&dm, BlockDevice::resolve(&opts.device)?)?;
    let plan = plan_origin(&dm, &named, &sessions, &mounts)?;
    let (origin_dev, origin_label) = match &plan {
        OriginPlan::Live { name, .. } => (BlockDevice::from_devnum(dm_devnum(&dm, name)?)?, name.clone()),
        OriginPlan::Wrap { raw, .. } => (raw.clone(), raw.kernel_name.clone()),
    };
    // Leftovers of an hcp that did not finish: on this origin they would
    // get in the way (its table, its `-real`); elsewhere they are only
    // pointed out.
    for (id, problem) in super::inspect::leftovers(&dm, &sessions)? {
        let on_this = sessions.iter().any(|s| s.id == id && s.origin.dm_name == plan.origin_name());
        if on_this {
            return Err(Error::refused(format!(
                "session {id} of this origin is incomplete ({problem}): run `hcp recover` first"
            )));
        }
        eprintln!("hcp: warning: session {id} is incomplete ({problem}): run `hcp recover`");
    }
    let id = next_id(&dm, &sessions)?;
    let quota = opts.quota.unwrap_or(DEFAULT_QUOTA).resolve(origin_dev.size_bytes);
    let min_store = MIN_STORE_BYTES.max(16 * opts.chunk.bytes());
    if quota < min_store {
        return Err(Error::usage(format!(
            "quota {} is too small: a snapshot store needs at least {}; give a larger -q",
            format_bytes(quota),
            format_bytes(min_store)
        )));
    }
    let store_plan = plan_store(opts, &origin_dev, &origin_label, &id, quota, min_store, &mounts)?;
    let device_store = match &store_plan {
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

    fault::configured()?;
    // Everything checked. The record comes first, before anything it
    // describes exists: whatever of it a crash leaves, `hcp recover` finds
    // from here. From here on each change also has its undo.
    let mut undo = Undo::default();
    let snapshot_path = snapshot_node(&id);
    let file_bytes = grow.map_or(quota, |g| g.initial_bytes);
    let (origin_name, origin_path, wrapped, real_label) = match &plan {
        OriginPlan::Live { name, real_name, real, wrapped, .. } => {
            let real_label = if *wrapped { real_path(*real) } else { real_name.clone() };
            (name.clone(), named_origin_path(&named, name), *wrapped, real_label)
        }
        OriginPlan::Wrap { name, raw } => {
            (name.clone(), raw.display_path(), true, raw.display_path().display().to_string())
        }
    };
    let store = planned_store(&store_plan, file_bytes);
    // The ceiling: a growing store's quota, else the store itself.
    let quota_bytes = if grow.is_some() { quota } else { store.size_bytes };
    let mut session = Session {
        version: RECORD_VERSION,
        id: id.clone(),
        phase: Phase::Starting,
        origin: Origin { path: origin_path.clone(), dm_name: origin_name.clone(), real: real_label, wrapped },
        snapshot_path: snapshot_path.clone(),
        store,
        mount: mount_point.as_ref().map(|path| MountRecord {
            path: path.clone(),
            read_only: opts.read_only,
            created_dir: !path.exists(),
        }),
        created_unix: now_unix(),
        chunk_bytes: opts.chunk.bytes(),
        quota_bytes,
        trace: None,
        autoextend: grow.map(|g| AutoextendRecord {
            threshold_percent: g.spec.threshold_percent,
            growth_percent: g.spec.growth_percent,
            pid: None,
            log: autoextend::log_path(&id),
        }),
    };
    record::save(&session)?;
    {
        let id = id.clone();
        undo.push(format!("remove the record of {id}"), move || record::delete(&id));
    }

    let (store, store_dev, store_bytes) = prepare_store(&dm, &store_plan, &id, file_bytes, opts, &mut undo)?;
    zero_header(&store_dev, opts.chunk)?;
    session.store = store;

    let (real_devnum, length) = match &plan {
        OriginPlan::Live { name, real, create_real, real_name, .. } => {
            let real = if *create_real {
                let table = dm.table(name)?;
                let uuid = format!("{UUID_REAL}{name}");
                let real = dm.create(real_name, &truncate_uuid(&uuid), &table)?;
                let dm_ref = &dm;
                let real_name = real_name.clone();
                // Tolerant: restoring a switched origin removes it already.
                undo.push(format!("remove {real_name}"), move || {
                    if dm_ref.exists(&real_name)? {
                        dm_ref.remove(&real_name)?;
                    }
                    Ok(())
                });
                real
            } else {
                *real
            };
            (real, origin_dev.size_sectors())
        }
        OriginPlan::Wrap { raw, .. } => (raw.devnum, raw.size_sectors()),
    };
    let snap = Snapshot {
        origin: real_devnum,
        cow: store_dev.devnum,
        persistent: Persistence::Persistent,
        chunk_sectors: opts.chunk.sectors(),
    };
    let snap_uuid = truncate_uuid(&format!("{UUID_SNAPSHOT}{id}-{origin_name}"));
    let snap_devnum = dm.create_inactive(&id, &snap_uuid, &[snap.table_line(length)])?;
    {
        let dm_ref = &dm;
        let id = id.clone();
        undo.push(format!("remove {id}"), move || dm_ref.remove(&id));
    }
    step("after-snapshot-create")?;
    let origin_table = SnapshotOrigin { origin: real_devnum }.table_line(length);
    if let OriginPlan::Live { name, create_real: true, .. } = &plan {
        dm.load(name, std::slice::from_ref(&origin_table))?;
        let dm_ref = &dm;
        let name = name.clone();
        undo.push(format!("clear the inactive table of {name}"), move || dm_ref.clear_inactive(&name));
        step("after-origin-reload")?;
    }
    if let Some(path) = &mount_point {
        create_mount_dir(path, &mut undo)?;
    }
    record::save(&session)?;
    if let Some(record) = session.autoextend.as_mut() {
        // Started before the switch, like everything else that can fail:
        // it waits for the snapshot to go live, and the first write burst
        // finds it watching. It reads its settings from the record.
        let monitor = autoextend::spawn(&id)?;
        record.pid = Some(monitor.id() as i32);
        let log = record.log.clone();
        undo.push(format!("stop the auto-extend monitor of {id}"), move || {
            let stopped = autoextend::stop_child(monitor);
            let _ = std::fs::remove_file(&log);
            stopped
        });
        record::save(&session)?;
    }

    // Tracing starts before the switch, so that it sees the window.
    let mut traced = Vec::new();
    let (mut baseline, mut at_start, mut switch_tracer) = (None, None, None);
    if opts.trace {
        traced = super::trace::devices_of(&session);
        let added = super::trace::attach(&traced)?;
        undo.push("stop tracing the session's devices".to_string(), move || {
            crate::tracer::pins::remove_devices(&added).map_err(|e| Error::system(format!("{e:#}")))
        });
        if let Some((origin, _, _)) = traced.iter().find(|(_, r, _)| *r == Role::Origin) {
            baseline = super::trace::baseline(*origin, opts.baseline)?;
        }
        if let OriginPlan::Live { mounted_at, .. } = &plan {
            switch_tracer = Some(super::trace::switch_tracer(mounted_at.is_some().then_some(origin_dev.devnum))?);
        }
        // Last, so that nothing written before the switch counts as the
        // session's.
        if traced.iter().any(|(_, r, _)| *r == Role::Origin) {
            let devnums: Vec<_> = traced.iter().map(|(d, _, _)| *d).collect();
            at_start = Some(super::trace::counters_now(&devnums)?);
        }
    }

    step("after-prepare")?;
    // The switch.
    let mut timing = Timing {
        snapshot_seconds: 0.0,
        frozen_seconds: None,
        freeze_call_seconds: None,
        suspended_seconds: None,
        kernel: None,
    };
    match &plan {
        OriginPlan::Live { name, create_real, mounted_at, .. } => {
            if *create_real {
                // Anything failing once the origin runs on its new table
                // (before the thaw, say) must give it its own table back
                // before the rest is undone.
                let dm_ref = &dm;
                let (origin, real) = (name.clone(), session.origin.real.clone());
                undo.push(format!("give {name} its own table back"), move || {
                    super::remove::restore_origin_table(dm_ref, &origin, &real).map(drop)
                });
            }
            let window = crate::switch::window::switch(
                &dm,
                name,
                mounted_at.as_deref(),
                *create_real,
                &crate::switch::window::START_STEPS,
                || dm.resume(&id),
            )?;
            timing.frozen_seconds = window.frozen.map(|d| d.as_secs_f64());
            timing.freeze_call_seconds = window.freeze_call.map(|d| d.as_secs_f64());
            timing.suspended_seconds = Some(window.suspended.as_secs_f64());
        }
        OriginPlan::Wrap { name, raw } => {
            // Nothing can write yet: the wrapper does not exist. Activate the
            // snapshot first, so the first write through the wrapper is
            // already copied aside.
            dm.resume(&id)?;
            let uuid = truncate_uuid(&format!("{UUID_ORIGIN}{}", raw.kernel_name));
            dm.create(name, &uuid, &[origin_table])?;
        }
    }
    undo.disarm();
    timing.snapshot_seconds = begun.elapsed().as_secs_f64();
    if let Some(mut tracer) = switch_tracer {
        // The snapshot is live: a failure to read the tracer loses only its
        // figures.
        match super::trace::kernel_window(&mut tracer, &origin_name, crate::tracer::freeze_trace::monotonic_ns()) {
            Ok(kernel) => timing.kernel = Some(kernel),
            Err(e) => eprintln!("hcp: the switch's kernel figures are missing: {e}"),
        }
    }

    make_node(&snapshot_path, snap_devnum)?;
    if opts.trace {
        // A wrapped device's origin exists only now; nothing was written
        // through it yet, so its histogram starts empty.
        let now = super::trace::devices_of(&session);
        let late: Vec<_> = now.iter().filter(|d| !traced.iter().any(|t| t.0 == d.0)).cloned().collect();
        if !late.is_empty() {
            super::trace::attach(&late)?;
        }
        let window = WindowRecord {
            freeze_call_seconds: timing.freeze_call_seconds,
            frozen_seconds: timing.frozen_seconds,
            suspended_seconds: timing.suspended_seconds,
            kernel: timing.kernel.clone(),
        };
        session.trace = Some(super::trace::record(&now, baseline, at_start, Some(window), report));
    }
    session.phase = Phase::Active;
    record::save(&session)?;

    let mut started = Started {
        session: id.clone(),
        origin: origin_path,
        snapshot: snapshot_path.clone(),
        store: session.store.path.clone(),
        store_loop_device: session.store.loop_device.clone(),
        store_bytes,
        quota_bytes: session.quota_bytes,
        autoextend: session.autoextend.clone(),
        chunk_bytes: opts.chunk.bytes(),
        write_through: matches!(plan, OriginPlan::Wrap { .. })
            .then(|| crate::kernel::dm::device::node_path(&origin_name)),
        mount_point: None,
        read_only: opts.read_only,
        filesystem: None,
        mount_error: None,
        created: crate::clock::format_time(session.created_unix),
        timing,
    };
    if let Some(record) = &session.mount {
        match crate::kernel::mount::mount_snapshot(&snapshot_path, &record.path, opts.read_only) {
            Ok(fs) => {
                started.mount_point = Some(record.path.clone());
                started.filesystem = Some(fs);
            }
            Err(e) => {
                // The session stays: the snapshot is good, only the mount failed.
                started.mount_error = Some(e.to_string());
                if record.created_dir {
                    let _ = std::fs::remove_dir(&record.path);
                }
                session.mount = None;
                record::save(&session)?;
            }
        }
    }
    Ok(started)
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

/// An exclusive open fails with EBUSY when anything holds the device:
/// a mount, dm, md, or a program that opened it with O_EXCL.
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
        Ok(_) => Ok(()),
        Err(_) if path.parent().is_some_and(|p| p.exists()) || path.starts_with(DEFAULT_MOUNT_DIR) => Ok(()),
        Err(_) => Err(Error::usage(format!(
            "mount point {}: its parent directory does not exist; create it or give another -m",
            path.display()
        ))),
    }
}

/// Creates the mount point if missing (0700: a writable snapshot may hold
/// files their owners could not otherwise reach); returns whether it did.
fn create_mount_dir<'a>(path: &Path, undo: &mut Undo<'a>) -> Result<bool> {
    if path.starts_with(DEFAULT_MOUNT_DIR) {
        crate::state::private::ensure_private_dir(Path::new(DEFAULT_MOUNT_DIR))?;
    }
    if path.exists() {
        return Ok(false);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(format!("creating mount point {}", path.display()), e))?;
    let owned = path.to_path_buf();
    undo.push(format!("remove {}", path.display()), move || {
        std::fs::remove_dir(&owned).map_err(|e| Error::io(owned.display(), e))
    });
    Ok(true)
}

/// The record of the store `plan` makes, before it is made, a file store of
/// `file_bytes` (its loop device is added once attached).
fn planned_store(plan: &StorePlan, file_bytes: u64) -> Store {
    match plan {
        StorePlan::File { path } => {
            Store { path: path.clone(), loop_device: None, created_file: true, size_bytes: file_bytes }
        }
        StorePlan::Device { dev, limit } => Store {
            path: dev.display_path(),
            loop_device: None,
            created_file: false,
            size_bytes: limit.unwrap_or(dev.size_bytes),
        },
    }
}

/// Creates and attaches a file store of `file_bytes`, or readies a device
/// store; returns the record, the block device dm will use, and its size.
fn prepare_store<'a>(
    dm: &'a Dm,
    plan: &StorePlan,
    id: &str,
    file_bytes: u64,
    opts: &StartOptions,
    undo: &mut Undo<'a>,
) -> Result<(Store, BlockDevice, u64)> {
    match plan {
        StorePlan::File { path } => {
            if let Some(dir) = path.parent() {
                if dir.starts_with(DEFAULT_STORE_DIR) {
                    crate::state::private::ensure_private_dir(Path::new(DEFAULT_STORE_DIR))?;
                }
                if !dir.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                }
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::io(format!("creating store file {}", path.display()), e))?;
            let owned = path.clone();
            undo.push(format!("delete {}", path.display()), move || {
                std::fs::remove_file(&owned).map_err(|e| Error::io(owned.display(), e))
            });
            size_store_file(&file, path, file_bytes, opts.preallocate)?;
            drop(file);
            let lo = LoopDevice::attach(path, AttachOptions { read_only: false, direct_io: true, autoclear: false })
                .context(format!("attaching store {}", path.display()))?;
            let lo_path = lo.path.clone();
            let dev = BlockDevice::from_devnum(lo.devnum()?)?;
            undo.push(format!("detach {}", lo_path.display()), move || lo.detach());
            Ok((Store { loop_device: Some(lo_path), ..planned_store(plan, file_bytes) }, dev, file_bytes))
        }
        StorePlan::Device { dev, limit: None } => Ok((planned_store(plan, file_bytes), dev.clone(), dev.size_bytes)),
        StorePlan::Device { dev, limit: Some(bytes) } => {
            // Only the first `bytes` of the device, so the quota holds.
            let name = format!("{id}-cow");
            let line = Linear { device: dev.devnum, offset: 0 }.table_line(bytes >> 9);
            let devnum = dm.create(&name, &truncate_uuid(&format!("{UUID_COW}{id}")), &[line])?;
            let owned = name.clone();
            undo.push(format!("remove {name}"), move || dm.remove(&owned));
            Ok((planned_store(plan, file_bytes), BlockDevice::from_devnum(devnum)?, *bytes))
        }
    }
}

fn size_store_file(file: &File, path: &Path, bytes: u64, preallocate: bool) -> Result<()> {
    if preallocate {
        let len = libc::off_t::try_from(bytes).map_err(|_| Error::usage("quota too large"))?;
        // SAFETY: fallocate on a file we own.
        let rc = unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(file), 0, 0, len) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ENOSPC) => Error::usage(format!(
                    "not enough free space for a preallocated store of {} at {}: give a smaller -q or another -c",
                    format_bytes(bytes),
                    path.display()
                )),
                _ => Error::io(format!("preallocating {}", path.display()), err),
            });
        }
        Ok(())
    } else {
        file.set_len(bytes).map_err(|e| Error::io(format!("sizing store file {}", path.display()), e))
    }
}

/// dm-snapshot reads the store's first chunk as its header: a stale one
/// from an earlier use would bring back old exceptions. A new file is all
/// zeroes already; a device is zeroed here.
fn zero_header(store: &BlockDevice, chunk: ChunkSize) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let path = store.display_path();
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening store {}", path.display()), e))?;
    f.write_all_at(&vec![0u8; chunk.bytes() as usize], 0)
        .and_then(|()| f.sync_data())
        .map_err(|e| Error::io(format!("clearing the header of store {}", path.display()), e))
}

/// A step of the preparation: where a pending Ctrl-C or SIGTERM (held back
/// since the command began, see `main`) stops the start, everything made
/// so far undone, and where a fault can be injected.
fn step(name: &'static str) -> Result<()> {
    if let Some(signal) = crate::kernel::signals::pending_stop_signal() {
        return Err(Error::new(
            crate::error::Kind::Interrupted,
            format!("{signal}: stopped before the snapshot went live; everything it made is undone"),
        ));
    }
    fault::at(name)
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

/// The origin as the user should see it in listings.
fn named_origin_path(named: &BlockDevice, origin_name: &str) -> PathBuf {
    match &named.dm {
        Some(_) => crate::kernel::dm::device::node_path(origin_name),
        None => named.display_path(),
    }
}

fn real_path(devnum: DevNum) -> String {
    BlockDevice::from_devnum(devnum)
        .map(|d| d.display_path().display().to_string())
        .unwrap_or_else(|_| devnum.to_string())
}

/// dm UUIDs hold at most 128 bytes.
fn truncate_uuid(uuid: &str) -> String {
    uuid.chars().take(128).collect()
}

/// Undo steps, run in reverse order unless disarmed: on an error return and
/// on a panic alike.
#[derive(Default)]
struct Undo<'a> {
    steps: Vec<(String, UndoStep<'a>)>,
}

type UndoStep<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

impl<'a> Undo<'a> {
    fn push(&mut self, what: String, step: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((what, Box::new(step)));
    }

    fn disarm(&mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some((what, step)) = self.steps.pop() {
            if let Err(e) = step() {
                eprintln!("hcp: while undoing a failed start, could not {what}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_point_and_store_are_recorded_absolute() {
        let opts = StartOptions {
            mount_point: Some("snap/mnt".into()),
            store: Some("/srv/cow".into()),
            ..StartOptions::default()
        };
        let abs = opts.with_absolute_paths().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(abs.mount_point, Some(cwd.join("snap/mnt")));
        assert_eq!(abs.store, Some(PathBuf::from("/srv/cow")));
        assert_eq!(StartOptions::default().with_absolute_paths().unwrap().mount_point, None);
    }
}
