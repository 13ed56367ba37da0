//! `hcp remove`: unmount, drop the snapshot, and with an origin's last
//! snapshot give the origin back its own table, in the same kind of short
//! window as `start`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::table::TableLine;
use crate::kernel::loopdev::LoopDevice;
use crate::kernel::mountinfo::MountTable;
use crate::kernel::writeback::PreFlush;
use crate::privilege::require_root;
use crate::state::lock::Lock;
use crate::state::record::{self, MountRecord, Phase, Session, SessionState};
use crate::switch::fault;

use super::inspect::{is_origin_of, is_switched, siblings};
use super::rollback::merge::{self, MergeState};
use crate::switch::window::{Window, RESTORE_STEPS};

#[derive(Clone, Debug, Default)]
pub struct RemoveOptions {
    /// An hcp device (`/dev/hcp1`, `hcp1`), a snapshot's mount point, or an
    /// origin (meaning all of its sessions).
    pub target: String,
    /// Keep the store file instead of deleting it.
    pub keep_store: bool,
    /// Where to write a traced session's final report, instead of where its
    /// start said (one session only).
    pub report: Option<PathBuf>,
}

/// One removed session, as printed and as `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    pub session: String,
    pub origin: PathBuf,
    /// Whether this was the origin's last session, so its own table is back.
    pub origin_restored: bool,
    /// The store file, when it was kept.
    pub kept_store: Option<PathBuf>,
    /// How long the origin's filesystem was frozen to restore its table.
    pub frozen_seconds: Option<f64>,
    /// The writeback before that freeze.
    pub pre_flush: Option<PreFlush>,
    /// A traced session's final report.
    pub report: Option<PathBuf>,
    /// The snapshot had been invalidated (its store filled) before it was
    /// removed: whatever was read from it since is incomplete.
    pub snapshot_invalidated: bool,
    /// With auto-extend, the monitor's log, kept when the snapshot had been
    /// invalidated (it tells how the store grew and filled).
    pub autoextend_log: Option<PathBuf>,
    pub seconds: f64,
}

pub fn remove(opts: &RemoveOptions) -> Result<Vec<Removed>> {
    require_root()?;
    let dm = Dm::open()?;
    fault::configured()?;
    let _lock = Lock::acquire()?;
    let mut sessions = record::load_all()?;
    let targets = find_targets(&opts.target, &sessions)?;
    // A rollback cannot be undone once it has begun; it can only finish.
    if let Some(s) = sessions.iter().find(|s| targets.contains(&s.id) && s.phase == Phase::RollingBack) {
        return Err(Error::refused(format!(
            "{} is rolling back (its origin merges the snapshot back): it ends with the merge; `hcp rollback {}` \
             waits for it and finishes",
            s.id, s.id
        )));
    }
    // Removing a half-made session finishes it; others are pointed out.
    for (id, problem) in super::inspect::leftovers(&dm, &sessions)? {
        if !targets.contains(&id) {
            eprintln!("hcp: warning: session {id} is incomplete ({problem}): run `hcp recover`");
        }
    }
    let report = match &opts.report {
        Some(_) if targets.len() > 1 => {
            return Err(Error::usage(format!(
                "{} has {} sessions and --report names one file: remove them one by one (`hcp -l` lists them)",
                opts.target,
                targets.len()
            )))
        }
        Some(path) => Some(super::trace::check_report_path(path)?),
        None => None,
    };
    let mut removed = Vec::new();
    // Newest first, so an origin's table comes back with its last session.
    for id in targets.into_iter().rev() {
        let session = sessions.iter().find(|s| s.id == id).cloned().expect("target from sessions");
        removed.push(remove_one(&dm, &session, &sessions, opts.keep_store, report.as_deref())?);
        sessions.retain(|s| s.id != id);
    }
    Ok(removed)
}

/// The sessions `target` names, in ascending order.
pub(super) fn find_targets(target: &str, sessions: &[Session]) -> Result<Vec<String>> {
    // TARGET is only ever compared with what records and the kernel say:
    // no name or path is made from it.
    if target.trim().is_empty() {
        return Err(Error::usage(
            "the TARGET is empty: give an hcp device (/dev/hcp1), its mount point or its origin (`hcp -l` lists them)",
        ));
    }
    let by_id = target.strip_prefix("/dev/").unwrap_or(target);
    if let Some(s) = sessions.iter().find(|s| s.id == by_id) {
        return Ok(vec![s.id.clone()]);
    }
    let path = Path::new(target);
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(s) = sessions.iter().find(|s| s.mount.as_ref().is_some_and(|m| m.path == canonical || m.path == path)) {
        return Ok(vec![s.id.clone()]);
    }
    if let Ok(dev) = BlockDevice::resolve(target) {
        // An enrolled partition's sessions are its mapping's.
        let dev = match Dm::open() {
            Ok(dm) => crate::kernel::dm::passthrough::acting_device(&dm, dev)?,
            Err(_) => dev,
        };
        let of_origin: Vec<String> = sessions.iter().filter(|s| is_origin_of(s, &dev)).map(|s| s.id.clone()).collect();
        if !of_origin.is_empty() {
            return Ok(of_origin);
        }
    }
    Err(Error::not_found(format!(
        "no hcp session for {target}: give an hcp device (/dev/hcp1), its mount point or its origin (`hcp -l` lists the sessions)"
    )))
}

/// Removes one session, every piece of it that exists: a complete one
/// (`remove`), or a half-made or half-removed one (`recover`), in the order
/// that keeps the origin safe. Fails, changing nothing, while something
/// else uses the snapshot or the wrapper that goes with it.
pub(super) fn remove_one(
    dm: &Dm,
    session: &Session,
    sessions: &[Session],
    keep_store: bool,
    report: Option<&Path>,
) -> Result<Removed> {
    let begun = Instant::now();
    let last = siblings(sessions, session).is_empty();
    if last && session.origin.wrapped && dm.exists(&session.origin.dm_name)? {
        // The wrapper goes with the last session; it cannot while in use.
        if dm.open_count(&session.origin.dm_name)? > 0 {
            return Err(Error::busy(format!(
                "{} is in use (mounted or open): unmount it first; it is removed with its last snapshot",
                crate::kernel::dm::device::node_path(&session.origin.dm_name).display()
            )));
        }
    }
    let our_mount = check_snapshot_unused(dm, session)?;
    // Nothing was changed yet. The monitor goes first: it must not grow the
    // store while the session is taken apart.
    crate::session::autoextend::stop(session)?;
    // The recorder records the interval in progress as it stops: the
    // history ends where the final report's figures do.
    crate::session::recorder::stop(session)?;
    let snapshot_invalidated = super::inspect::state_of(dm, session)?.0 == SessionState::Invalid;
    if let Some(m) = our_mount {
        crate::kernel::mount::unmount(&m.path)?;
    }
    fault::at("remove-after-unmount")?;
    // The final figures, while every device is still there.
    let report = final_report(session, report);
    // From here on the session only goes: a crash leaves it for `recover`
    // to finish, never to bring back.
    let mut record = session.clone();
    record.phase = Phase::Removing;
    record::save(&record)?;
    fault::at("remove-after-record")?;
    if let Err(e) = super::trace::detach(session, sessions) {
        eprintln!("hcp: warning: {e}");
    }

    if let Some(m) = &session.mount {
        if m.created_dir {
            let _ = std::fs::remove_dir(&m.path);
        }
    }
    if dm.exists(&session.id)? {
        dm.remove(&session.id)?;
    }
    let _ = std::fs::remove_file(&session.snapshot_path);
    fault::at("remove-after-snapshot-remove")?;
    let window = if last { restore_origin(dm, session)? } else { None };
    let (frozen_seconds, pre_flush) = match window {
        Some(w) => (w.frozen.map(|d| d.as_secs_f64()), w.pre_flush),
        None => (None, None),
    };
    let (kept_store, autoextend_log) = dispose(dm, session, keep_store, snapshot_invalidated)?;
    Ok(Removed {
        session: session.id.clone(),
        origin: session.origin.path.clone(),
        origin_restored: last,
        kept_store,
        frozen_seconds,
        pre_flush,
        report,
        snapshot_invalidated,
        autoextend_log,
        seconds: begun.elapsed().as_secs_f64(),
    })
}

/// The snapshot's mount of hcp's own, if it is there, once nothing else
/// uses the snapshot: our own mount is the one opener hcp undoes; any other
/// (a mount elsewhere, a program reading the snapshot) makes hcp wait.
pub(super) fn check_snapshot_unused<'a>(dm: &Dm, session: &'a Session) -> Result<Option<&'a MountRecord>> {
    let mounts = MountTable(crate::kernel::mountinfo::read()?);
    let our_mount = session
        .mount
        .as_ref()
        .filter(|m| mounts.mount_at(&m.path).is_some_and(|mount| mount.dev == snapshot_devnum(session)));
    if dm.exists(&session.id)? && dm.open_count(&session.id)? > i32::from(our_mount.is_some()) {
        return Err(Error::busy(format!(
            "{} is in use (mounted elsewhere or open by a program): close it and retry (`fuser -v {}` lists the \
             processes)",
            session.snapshot_path.display(),
            session.snapshot_path.display()
        )));
    }
    Ok(our_mount)
}

/// Writes a traced session's final report (and the HTML report beside it)
/// while every device is still there. Tracing must never stand in the way
/// of a removal or a rollback: failures warn.
pub(super) fn final_report(session: &Session, to: Option<&Path>) -> Option<PathBuf> {
    session.trace.as_ref().filter(|_| session.phase == Phase::Active)?;
    let (path, stats) = super::trace::write_report(session, to)
        .map_err(|e| eprintln!("hcp: warning: no final report for {}: {e}", session.id))
        .ok()?;
    // The report to look at, beside it (a session without a history has
    // none).
    if stats.analysis.is_some() {
        let html = super::trace::html_report_path(&path);
        if let Err(e) = super::report::live(session, &stats).and_then(|d| super::report::write(&d, &html)) {
            eprintln!("hcp: warning: no HTML report for {}: {e}", session.id);
        }
    }
    Some(path)
}

/// Everything of a session that outlives its snapshot device: the store's
/// quota device, its loop devices and file (kept with `keep_store`), its
/// history and logs, and last its record. Returns the kept store file and
/// the auto-extend log, kept when the snapshot had been invalidated (it
/// tells how the store grew and filled).
pub(super) fn dispose(
    dm: &Dm,
    session: &Session,
    keep_store: bool,
    snapshot_invalidated: bool,
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    let cow = format!("{}-cow", session.id);
    if dm.exists(&cow)? {
        dm.remove(&cow)?;
    }
    if session.store.created_file || session.store.loop_device.is_some() {
        // Every loop device on the store file: the record may predate the
        // attach (a start that died there).
        for lo in LoopDevice::find_by_backing_file(&session.store.path)? {
            lo.detach()?;
        }
    }
    fault::at("remove-after-store-detach")?;
    let kept_store = if session.store.created_file && !keep_store {
        match std::fs::remove_file(&session.store.path) {
            Ok(()) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("deleting store {}", session.store.path.display()), e)),
        }
    } else {
        session.store.created_file.then(|| session.store.path.clone()).filter(|p| p.exists())
    };
    // Before the record: a crash between the two leaves the record, and
    // `recover` deletes the history with it.
    crate::state::history::delete(&session.id)?;
    let _ = std::fs::remove_file(crate::session::recorder::log_path(&session.id));
    record::delete(&session.id)?;
    let autoextend_log = session.autoextend.as_ref().and_then(|a| {
        if snapshot_invalidated && a.log.exists() {
            return Some(a.log.clone());
        }
        let _ = std::fs::remove_file(&a.log);
        None
    });
    Ok((kept_store, autoextend_log))
}

fn snapshot_devnum(session: &Session) -> crate::kernel::devnum::DevNum {
    crate::kernel::devnum::DevNum::of_block_device(&session.snapshot_path)
        .unwrap_or(crate::kernel::devnum::DevNum { major: 0, minor: 0 })
}

/// Gives the origin back the table it had before its first snapshot (the
/// one `-real` carries) and removes `-real`, or removes hcp's wrapper of a
/// plain device. Whatever of that is already done is skipped, so a start
/// that died before the switch, or a remove that died inside it, ends the
/// same way. Returns the switch, if there was one.
pub(super) fn restore_origin(dm: &Dm, session: &Session) -> Result<Option<Window>> {
    let origin = &session.origin.dm_name;
    if session.origin.wrapped {
        if dm.exists(origin)? {
            dm.remove(origin)?;
        }
        return Ok(None);
    }
    let window = restore_origin_table(dm, origin, &session.origin.real)?;
    if dm.exists(&session.origin.real)? {
        dm.remove(&session.origin.real)?;
    }
    Ok(window)
}

/// Switches a dm origin back onto its own table if it runs on
/// `snapshot-origin`, or drops a new table loaded but never switched to.
/// `-real` stays (the caller removes it once nothing uses it). Returns the
/// switch, if there was one.
pub(super) fn restore_origin_table(dm: &Dm, origin: &str, real: &str) -> Result<Option<Window>> {
    if !dm.exists(origin)? {
        return Ok(None);
    }
    if !is_switched(dm, origin, real)? {
        // A start that loaded the origin's new table but never switched.
        let _ = dm.clear_inactive(origin);
        return Ok(None);
    }
    // Half merged, the origin's data is neither the snapshot's nor its own:
    // only the merge may go on from there.
    if let Some(MergeState::Running { .. } | MergeState::Failed(_)) = merge::state(dm, origin)? {
        return Err(Error::refused(format!(
            "{origin} is merging a snapshot back (a rollback): giving it its own table now would leave its data \
             half merged; `hcp recover` finishes the rollback"
        )));
    }
    let table = dm.table(real)?;
    switch_origin_onto(dm, origin, &table).map(Some)
}

/// Switches the live `origin` onto `table` (loaded first), its filesystem,
/// if mounted, written back and frozen around the switch.
pub(super) fn switch_origin_onto(dm: &Dm, origin: &str, table: &[TableLine]) -> Result<Window> {
    dm.load(origin, table)?;
    fault::at("remove-after-origin-reload")?;
    let mounts = MountTable(crate::kernel::mountinfo::read()?);
    let mounted_at = mounts.mounts_of(dm.devnum(origin)?).first().map(|m| m.mount_point.clone());
    crate::switch::window::switch(dm, origin, mounted_at.as_deref(), true, &RESTORE_STEPS, || Ok(()), || Ok(()))
}
