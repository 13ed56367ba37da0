//! `hcp remove`: unmount, drop the snapshot, and with an origin's last
//! snapshot give the origin back its own table, in the same kind of short
//! window as `start`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::blockdev::BlockDevice;
use crate::dm::device::{Dm, Suspend};
use crate::error::{Error, Result};
use crate::freeze::{Frozen, SignalBlock};
use crate::loopdev::LoopDevice;
use crate::mountinfo::MountTable;
use crate::state::{self, Lock, Phase, Session};

use super::{is_origin_of, require_root, siblings};

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
    let _lock = Lock::acquire()?;
    let mut sessions = state::load_all()?;
    let targets = find_targets(&opts.target, &sessions)?;
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
fn find_targets(target: &str, sessions: &[Session]) -> Result<Vec<String>> {
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
        let of_origin: Vec<String> = sessions.iter().filter(|s| is_origin_of(s, &dev)).map(|s| s.id.clone()).collect();
        if !of_origin.is_empty() {
            return Ok(of_origin);
        }
    }
    Err(Error::not_found(format!(
        "no hcp session for {target}: give an hcp device (/dev/hcp1), its mount point or its origin (`hcp -l` lists the sessions)"
    )))
}

fn remove_one(
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
                crate::dm::device::node_path(&session.origin.dm_name).display()
            )));
        }
    }
    // Our own mount is the one opener we undo; any other (a mount
    // elsewhere, a program reading the snapshot) makes removal wait.
    let mounts = MountTable(crate::mountinfo::read()?);
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
    // Nothing was changed yet. The monitor goes first: it must not grow the
    // store while the session is taken apart.
    crate::autoextend::stop(session)?;
    let snapshot_invalidated = super::report::state_of(dm, session)?.0 == super::SessionState::Invalid;
    if let Some(m) = our_mount {
        crate::mount::unmount(&m.path)?;
    }
    // The final figures, while every device is still there.
    // (Tracing must never stand in the way of a removal: failures warn.)
    let report = session.trace.as_ref().and_then(|_| {
        super::trace::write_report(session, report)
            .map_err(|e| eprintln!("hcp: warning: no final report for {}: {e}", session.id))
            .ok()
    });
    let mut record = session.clone();
    record.phase = Phase::Removing;
    state::save(&record)?;
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
    let cow = format!("{}-cow", session.id);
    if dm.exists(&cow)? {
        dm.remove(&cow)?;
    }
    let mut frozen_seconds = None;
    if last {
        frozen_seconds = restore_origin(dm, session)?;
    }
    if let Some(lo) = &session.store.loop_device {
        if let Some(lo) = LoopDevice::find_by_backing_file(&session.store.path)?.into_iter().find(|l| &l.path == lo) {
            lo.detach()?;
        }
    }
    let kept_store = if session.store.created_file && !keep_store {
        match std::fs::remove_file(&session.store.path) {
            Ok(()) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("deleting store {}", session.store.path.display()), e)),
        }
    } else {
        session.store.created_file.then(|| session.store.path.clone())
    };
    state::delete(&session.id)?;
    let autoextend_log = session.autoextend.as_ref().and_then(|a| {
        if snapshot_invalidated && a.log.exists() {
            return Some(a.log.clone());
        }
        let _ = std::fs::remove_file(&a.log);
        None
    });
    Ok(Removed {
        session: session.id.clone(),
        origin: session.origin.path.clone(),
        origin_restored: last,
        kept_store,
        frozen_seconds,
        report,
        snapshot_invalidated,
        autoextend_log,
        seconds: begun.elapsed().as_secs_f64(),
    })
}

fn snapshot_devnum(session: &Session) -> crate::devnum::DevNum {
    crate::devnum::DevNum::of_block_device(&session.snapshot_path)
        .unwrap_or(crate::devnum::DevNum { major: 0, minor: 0 })
}

/// Gives the origin back the table it had before its first snapshot (the
/// one `-real` carries), or removes hcp's wrapper of a plain device.
/// Returns how long the filesystem was frozen.
fn restore_origin(dm: &Dm, session: &Session) -> Result<Option<f64>> {
    let origin = &session.origin.dm_name;
    if session.origin.wrapped {
        if dm.exists(origin)? {
            dm.remove(origin)?;
        }
        return Ok(None);
    }
    let real = &session.origin.real;
    if !dm.exists(real)? {
        return Err(Error::system(format!("{real}, the data under origin {origin}, is missing: run `hcp recover`")));
    }
    let table = dm.table(real)?;
    dm.load(origin, &table)?;
    let mounts = MountTable(crate::mountinfo::read()?);
    let origin_dev = BlockDevice::resolve(&crate::dm::device::node_path(origin).display().to_string())?;
    let mounted_at = mounts.mounts_of(origin_dev.devnum).first().map(|m| m.mount_point.clone());

    let signals = SignalBlock::new()?;
    let frozen = mounted_at.as_deref().map(Frozen::freeze).transpose()?;
    let how = if frozen.is_some() { Suspend::SkipLockfs } else { Suspend::Lockfs };
    let switched = dm.suspend(origin, how).and_then(|()| {
        let resumed = dm.resume(origin);
        if resumed.is_err() {
            let _ = dm.clear_inactive(origin);
            let _ = dm.resume(origin);
        }
        resumed
    });
    let thawed = frozen.map(Frozen::thaw).transpose();
    drop(signals);
    if switched.is_err() {
        let _ = dm.clear_inactive(origin);
    }
    switched?;
    let frozen = thawed?;
    dm.remove(real)?;
    Ok(frozen.map(|d| d.as_secs_f64()))
}
