//! The preparation of a start: every device and file the snapshot needs,
//! made before the switch so that the window holds nothing but the switch
//! itself. The session's record comes first, before anything it describes
//! exists: whatever of it a crash leaves, `hcp recover` finds from there.
//! Each change pushes its undo.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use hcp_common::bio::Role;

use crate::clock::now_unix;
use crate::error::{Error, Result};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::table::{Persistence, Snapshot, SnapshotOrigin, TableLine, TargetParams};
use crate::kernel::dm::uuid::{self, UUID_REAL, UUID_SNAPSHOT};
use crate::session::autoextend;
use crate::session::inspect::snapshot_node;
use crate::session::trace;
use crate::state::counters::{CountersRecord, HistRecord};
use crate::state::dirs::DEFAULT_MOUNT_DIR;
use crate::state::record::{self, AutoextendRecord, MountRecord, Origin, Phase, Session, RECORD_VERSION};
use crate::tracer::freeze_trace::FreezeTracer;

use super::options::StartOptions;
use super::plan::{OriginPlan, Plan};
use super::store;
use super::undo::{step, Undo};

/// Everything made, nothing live yet.
pub(super) struct Prepared {
    /// The record, `starting`, naming everything made.
    pub session: Session,
    /// The store's size now.
    pub store_bytes: u64,
    /// The snapshot device, its table loaded and not yet resumed.
    pub snapshot: DevNum,
    /// The origin's `snapshot-origin` table (preloaded into a live origin's
    /// inactive slot; a wrapped device's origin is made with it).
    pub origin_table: TableLine,
    /// With `--trace`: tracing set up before the switch, so that it sees it.
    pub tracing: Option<Tracing>,
}

/// A traced session's tracing, as the switch finds it.
pub(super) struct Tracing {
    /// The devices traced before the switch, each with its role.
    pub traced: Vec<(DevNum, Role, PathBuf)>,
    /// The origin's write latency before the snapshot (`--baseline`).
    pub baseline: Option<HistRecord>,
    /// Every counter of the traced devices just before the switch.
    pub at_start: Option<CountersRecord>,
    /// The freeze and write-stall programs, for a live origin: attached by
    /// the switch itself, once its guard is up (see `super::switch`).
    pub switch_tracer: Option<FreezeTracer>,
}

pub(super) fn prepare<'a>(dm: &'a Dm, opts: &StartOptions, plan: &Plan, undo: &mut Undo<'a>) -> Result<Prepared> {
    let mut session = new_record(opts, plan);
    record::save(&session)?;
    {
        let id = plan.id.clone();
        undo.push(format!("remove the record of {id}"), move || record::delete(&id));
    }
    let (store, store_dev, store_bytes) = store::prepare(dm, &plan.store, &plan.id, plan.file_bytes, opts, undo)?;
    store::zero_header(&store_dev, opts.chunk)?;
    session.store = store;
    let (snapshot, origin_table) = make_devices(dm, opts, plan, store_dev.devnum, undo)?;
    if let Some(path) = &plan.mount_point {
        create_mount_dir(path, undo)?;
    }
    record::save(&session)?;
    start_monitor(&mut session, undo)?;
    let tracing = if opts.trace { Some(start_tracing(opts, &session, undo)?) } else { None };
    Ok(Prepared { session, store_bytes, snapshot, origin_table, tracing })
}

/// The session's record as the start begins.
fn new_record(opts: &StartOptions, plan: &Plan) -> Session {
    let (origin_name, origin_path, wrapped, real_label) = match &plan.origin {
        OriginPlan::Live { name, real_name, real, wrapped, .. } => {
            let real_label = if *wrapped { real_path(*real) } else { real_name.clone() };
            (name.clone(), named_origin_path(&plan.named, name), *wrapped, real_label)
        }
        OriginPlan::Wrap { name, raw } => {
            (name.clone(), raw.display_path(), true, raw.display_path().display().to_string())
        }
    };
    let store = store::planned(&plan.store, plan.file_bytes);
    // The ceiling: a growing store's quota, else the store itself.
    let quota_bytes = if plan.grow.is_some() { plan.quota } else { store.size_bytes };
    let id = &plan.id;
    Session {
        version: RECORD_VERSION,
        id: id.clone(),
        phase: Phase::Starting,
        origin: Origin { path: origin_path, dm_name: origin_name, real: real_label, wrapped },
        snapshot_path: snapshot_node(id),
        store,
        mount: plan.mount_point.as_ref().map(|path| MountRecord {
            path: path.clone(),
            read_only: opts.read_only,
            created_dir: !path.exists(),
        }),
        created_unix: now_unix(),
        snapshot_unix: None,
        chunk_bytes: opts.chunk.bytes(),
        quota_bytes,
        trace: None,
        autoextend: plan.grow.map(|g| AutoextendRecord {
            threshold_percent: g.spec.threshold_percent,
            growth_percent: g.spec.growth_percent,
            pid: None,
            log: autoextend::log_path(id),
        }),
        rollback: None,
    }
}

/// The `-real` device (for a live origin's first session), the snapshot
/// (loaded, not resumed) and the origin's new table (preloaded into a live
/// origin's inactive slot). Returns the snapshot and that table.
fn make_devices<'a>(
    dm: &'a Dm,
    opts: &StartOptions,
    plan: &Plan,
    store: DevNum,
    undo: &mut Undo<'a>,
) -> Result<(DevNum, TableLine)> {
    let id = &plan.id;
    let (real_devnum, length) = match &plan.origin {
        OriginPlan::Live { name, real, create_real, real_name, .. } => {
            let real = if *create_real {
                let table = dm.table(name)?;
                let real = dm.create(real_name, &uuid::truncate(&format!("{UUID_REAL}{name}")), &table)?;
                let real_name = real_name.clone();
                // Tolerant: restoring a switched origin removes it already.
                undo.push(format!("remove {real_name}"), move || {
                    if dm.exists(&real_name)? {
                        dm.remove(&real_name)?;
                    }
                    Ok(())
                });
                real
            } else {
                *real
            };
            (real, plan.origin_dev.size_sectors())
        }
        OriginPlan::Wrap { raw, .. } => (raw.devnum, raw.size_sectors()),
    };
    let snap = Snapshot {
        origin: real_devnum,
        cow: store,
        persistent: Persistence::Persistent,
        chunk_sectors: opts.chunk.sectors(),
    };
    let snap_uuid = uuid::truncate(&format!("{UUID_SNAPSHOT}{id}-{}", plan.origin.origin_name()));
    let snapshot = dm.create_inactive(id, &snap_uuid, &[snap.table_line(length)])?;
    {
        let id = id.clone();
        undo.push(format!("remove {id}"), move || dm.remove(&id));
    }
    step("after-snapshot-create")?;
    let origin_table = SnapshotOrigin { origin: real_devnum }.table_line(length);
    if let OriginPlan::Live { name, create_real: true, .. } = &plan.origin {
        dm.load(name, std::slice::from_ref(&origin_table))?;
        let name = name.clone();
        undo.push(format!("clear the inactive table of {name}"), move || dm.clear_inactive(&name));
        step("after-origin-reload")?;
    }
    Ok((snapshot, origin_table))
}

/// A growing store's monitor, started before the switch like everything
/// else that can fail: it waits for the snapshot to go live, and the first
/// write burst finds it watching. It reads its settings from the record.
fn start_monitor(session: &mut Session, undo: &mut Undo<'_>) -> Result<()> {
    let id = session.id.clone();
    let Some(record) = session.autoextend.as_mut() else { return Ok(()) };
    let monitor = autoextend::spawn(&id)?;
    record.pid = Some(monitor.id() as i32);
    let log = record.log.clone();
    undo.push(format!("stop the auto-extend monitor of {id}"), move || {
        let stopped = autoextend::stop_child(monitor);
        let _ = std::fs::remove_file(&log);
        stopped
    });
    record::save(session)
}

/// Tracing starts before the switch, so that it sees the window: the
/// session's devices added to the pinned block programs, the baseline
/// measured, and the counters read last, so that nothing written before
/// the switch counts as the session's. The switch attaches its own
/// programs; the history recorder starts once the snapshot is live (see
/// `super::finish`).
fn start_tracing(opts: &StartOptions, session: &Session, undo: &mut Undo<'_>) -> Result<Tracing> {
    let traced = trace::devices_of(session);
    let added = trace::attach(&traced)?;
    undo.push("stop tracing the session's devices".to_string(), move || {
        crate::tracer::pins::remove_devices(&added).map_err(|e| Error::system(format!("{e:#}")))
    });
    let origin = traced.iter().find(|(_, r, _)| *r == Role::Origin).map(|(d, _, _)| *d);
    let baseline = match origin {
        Some(origin) => trace::baseline(origin, opts.baseline)?,
        None => None,
    };
    let at_start = match origin {
        Some(_) => {
            let devnums: Vec<_> = traced.iter().map(|(d, _, _)| *d).collect();
            Some(trace::counters_now(&devnums)?)
        }
        None => None,
    };
    Ok(Tracing { traced, baseline, at_start, switch_tracer: None })
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
