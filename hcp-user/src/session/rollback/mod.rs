//! `hcp rollback SESSION [--now] [--no-wait]`: puts the origin back exactly
//! as it was at the session's snapshot, through the kernel's
//! `snapshot-merge` target, and ends the session.
//!
//! The order (measured in `docs/design/rollback.md`):
//!
//! 1. check everything, changing nothing: the session complete and valid,
//!    its store persistent, no other rollback on the origin, nothing but
//!    hcp's own mount using the snapshot, the origin unmounted (or `--now`
//!    and nothing holding its filesystem), nothing else holding the origin;
//! 2. the final report of a traced session; the session's helpers stopped;
//! 3. the record marked `rolling-back`, with the merge's table line: from
//!    here on the rollback only goes forward (`recover` finishes it);
//! 4. the snapshot unmounted and its device removed (the merge target reads
//!    the store from disk; a live snapshot device would make the resume
//!    fail with the origin left suspended);
//! 5. the origin switched onto `snapshot-merge` under the guard (with
//!    `--now` between its unmount and its mount again: a mounted filesystem
//!    must never see its device change under it). It reads as the snapshot
//!    from here on;
//! 6. the merge waited for, with its progress (unless `--no-wait`);
//! 7. the origin given back its own table (or `snapshot-origin` while other
//!    sessions remain: they stay valid through the merge), then the store
//!    and the record removed, as `remove` does.
//!
//! Steps 4 to 7 are [`carry_on`], which `rollback` run again and `recover`
//! also use: each skips what is done already, so a rollback interrupted
//! anywhere (a kill, a crash, Ctrl-C while waiting) ends the same way.

pub(super) mod merge;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::enroll::Remounted;
use crate::error::{Error, Kind, Result};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::device::{node_path, Dm};
use crate::kernel::dm::table::{Persistence, Snapshot, SnapshotMerge, SnapshotOrigin, TableLine, TargetParams};
use crate::kernel::loopdev::{AttachOptions, LoopDevice};
use crate::kernel::mountinfo::MountTable;
use crate::privilege::require_root;
use crate::state::lock::Lock;
use crate::state::record::{self, Phase, RollbackRecord, Session, SessionState};
use crate::switch::fault;
use merge::MergeState;

use super::inspect::{siblings, state_of};
use super::remove::{check_snapshot_unused, dispose, final_report, find_targets, restore_origin, switch_origin_onto};

pub use merge::MergeProgress;

#[derive(Clone, Debug, Default)]
pub struct RollbackOptions {
    /// The session: an hcp device (`/dev/hcp1`), its mount point, or an
    /// origin that has one session.
    pub target: String,
    /// Unmount a mounted origin for the switch and mount it again at once.
    pub now: bool,
    /// Return once the merge runs.
    pub no_wait: bool,
}

/// A rollback, as printed and as `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct RolledBack {
    pub session: String,
    pub origin: PathBuf,
    /// Bytes of the snapshot's data written back into the origin.
    pub merge_bytes: u64,
    /// Whether it is over: false with `--no-wait` (the merge runs on).
    pub finished: bool,
    /// How long this command waited for the merge.
    pub merge_seconds: Option<f64>,
    /// With `--now`: the origin's filesystem unmounted and mounted again,
    /// and for how long it was away.
    pub remounted: Option<Remounted>,
    /// Whether this was the origin's last session, so its own table is back.
    pub origin_restored: bool,
    /// How long the origin's filesystem was frozen to give it its table back.
    pub frozen_seconds: Option<f64>,
    /// A traced session's final report, written before the rollback.
    pub report: Option<PathBuf>,
    pub seconds: f64,
}

/// Rolls the origin of `opts.target` back to the session's snapshot;
/// `on_progress` sees the merge's progress while hcp waits for it.
pub fn rollback(opts: &RollbackOptions, on_progress: &mut dyn FnMut(&MergeProgress)) -> Result<RolledBack> {
    let begun = Instant::now();
    require_root()?;
    let dm = Dm::open()?;
    fault::configured()?;
    let lock = Lock::acquire()?;
    let sessions = record::load_all()?;
    let ids = find_targets(&opts.target, &sessions)?;
    let [id] = ids.as_slice() else {
        return Err(Error::usage(format!(
            "{} has {} sessions: name the one to roll back to, as /dev/hcpN (`hcp -l` lists them)",
            opts.target,
            ids.len()
        )));
    };
    let session = sessions.iter().find(|s| &s.id == id).expect("target from sessions");
    match session.phase {
        // Begun before (`--no-wait`, or interrupted): wait and finish.
        Phase::RollingBack => {
            let done = carry_on(&dm, session, &sessions)?;
            return wait_and_finish(&dm, session, done, lock, !opts.no_wait, begun, on_progress);
        }
        Phase::Active => {}
        Phase::Starting | Phase::Removing => {
            return Err(Error::refused(format!(
                "{id} is incomplete (its {} did not finish): run `hcp recover`",
                if session.phase == Phase::Starting { "start" } else { "removal" }
            )))
        }
    }
    let merge = check(&dm, session, &sessions, opts.now)?;
    // Nothing was changed yet. The session's helpers go first: the store
    // must not grow under the merge, and the history ends where the final
    // report's figures do.
    crate::session::autoextend::stop(session)?;
    crate::session::recorder::stop(session)?;
    let report = final_report(session, None);
    let mut record = session.clone();
    record.phase = Phase::RollingBack;
    record.rollback = Some(RollbackRecord {
        merge_table: merge.line.to_string(),
        data_sectors: merge.data_sectors,
        started_unix: crate::clock::now_unix() as f64,
        snapshot_removed: false,
    });
    record::save(&record)?;
    record::save_rollback(&record)?;
    fault::at("rollback-after-record")?;
    let mut done = carry_on(&dm, &record, &sessions)?;
    done.report = report;
    wait_and_finish(&dm, &record, done, lock, !opts.no_wait, begun, on_progress)
}

/// Unless told not to wait: waits for the merge without the lock (other
/// hcp commands go on meanwhile), then takes it again and, unless another
/// hcp finished the session meanwhile, [`finish`]es it.
fn wait_and_finish(
    dm: &Dm,
    session: &Session,
    mut done: RolledBack,
    lock: Lock,
    wait: bool,
    begun: Instant,
    on_progress: &mut dyn FnMut(&MergeProgress),
) -> Result<RolledBack> {
    if wait {
        drop(lock);
        let data_sectors = session.rollback.as_ref().map_or(0, |rb| rb.data_sectors);
        done.merge_seconds = Some(merge::wait(dm, &session.origin.dm_name, data_sectors, on_progress)?.as_secs_f64());
        let _lock = Lock::acquire()?;
        let sessions = record::load_all()?;
        let same = |s: &&Session| s.id == session.id && s.created_unix == session.created_unix;
        match sessions.iter().find(same) {
            Some(now) if now.phase == Phase::RollingBack => {
                let (restored, frozen) = finish(dm, now, &sessions)?;
                done.origin_restored = restored;
                done.frozen_seconds = frozen;
            }
            // `recover`, or another `rollback`, finished it first.
            _ => {}
        }
        done.finished = true;
    }
    done.seconds = begun.elapsed().as_secs_f64();
    Ok(done)
}

/// The merge a session's rollback would run, as checked.
struct MergePlan {
    line: TableLine,
    data_sectors: u64,
}

/// Every reason not to roll back, before anything changes.
fn check(dm: &Dm, session: &Session, sessions: &[Session], now: bool) -> Result<MergePlan> {
    let id = &session.id;
    if let Some(problem) = super::inspect::problem(dm, session)? {
        return Err(Error::refused(format!("{id} is incomplete ({problem}): run `hcp recover`")));
    }
    if let Some(other) = siblings(sessions, session).into_iter().find(|s| s.phase == Phase::RollingBack) {
        return Err(Error::busy(format!(
            "{} is already being rolled back to {}: one rollback at a time; `hcp rollback {}` waits for it",
            session.origin.path.display(),
            other.id,
            other.id
        )));
    }
    let (state, status) = state_of(dm, session)?;
    if state == SessionState::Invalid {
        return Err(Error::new(
            Kind::Invalid,
            format!(
                "{id} is invalid (its store filled, so the snapshot's data is not all there): it cannot be rolled \
                 back to; remove it with `hcp -r {id}`"
            ),
        ));
    }
    let table = dm.table(id)?;
    let [line] = table.as_slice() else {
        return Err(Error::system(format!("{id} has an unexpected table: run `hcp recover`")));
    };
    let snapshot = Snapshot::from_line(line)?;
    if snapshot.persistent == Persistence::Transient {
        return Err(Error::refused(format!(
            "{id} keeps its changed blocks in memory only (non-persistent): the kernel can merge only a persistent \
             store"
        )));
    }
    let data_sectors = match status {
        Some(crate::kernel::dm::status::SnapshotStatus::Active { allocated, metadata, .. }) => {
            allocated.saturating_sub(metadata)
        }
        other => return Err(Error::system(format!("{id} reports no store usage ({other:?}): cannot plan a merge"))),
    };
    check_snapshot_unused(dm, session)?;
    check_origin(dm, session, now)?;
    Ok(MergePlan { line: SnapshotMerge(snapshot).table_line(line.length), data_sectors })
}

/// The origin may be switched: nothing holds it but, with `--now`, the
/// filesystem hcp will unmount (and nothing holds that).
fn check_origin(dm: &Dm, session: &Session, now: bool) -> Result<()> {
    let origin = &session.origin.dm_name;
    let node = node_path(origin);
    let dev = dm.devnum(origin)?;
    let mounts = MountTable(crate::kernel::mountinfo::read()?);
    let mounted = mounts.mounts_of(dev);
    match (mounted.as_slice(), now) {
        ([], _) => {}
        ([m], false) => {
            return Err(Error::refused(format!(
                "{} is mounted at {}: its filesystem must not see the device change under it; unmount it and \
                 retry, or add --now (hcp unmounts it, starts the merge and mounts it again at once)",
                session.origin.path.display(),
                m.mount_point.display()
            )))
        }
        ([_], true) if session.origin.wrapped => {
            return Err(Error::refused(format!(
                "{} is mounted through hcp's own {}, which goes with its last session: unmount it and retry \
                 without --now",
                session.origin.path.display(),
                node.display()
            )))
        }
        ([m], true) => {
            crate::enroll::check_remountable(m, &mounts, dev)?;
        }
        (many, _) => {
            let points: Vec<String> = many.iter().map(|m| m.mount_point.display().to_string()).collect();
            return Err(Error::refused(format!(
                "{} is mounted in {} places ({}): unmount it everywhere and retry",
                session.origin.path.display(),
                many.len(),
                points.join(", ")
            )));
        }
    }
    let opened = dm.open_count(origin)?;
    if opened > i32::try_from(mounted.len()).unwrap_or(i32::MAX) {
        return Err(Error::busy(format!(
            "{} is open by a program (not through a mount): its data is about to change under it; close it and \
             retry (`fuser -v {}` lists the processes)",
            node.display(),
            node.display()
        )));
    }
    Ok(())
}

/// Steps 4 and 5 for a session marked `rolling-back`, each skipped when it
/// is done: the snapshot unmounted and removed, the origin on the merge
/// (mounted again at once if it was mounted). The merge runs when it
/// returns.
pub(super) fn carry_on(dm: &Dm, session: &Session, sessions: &[Session]) -> Result<RolledBack> {
    let Some(rb) = &session.rollback else {
        return Err(Error::system(format!("the record of {} lacks its rollback: run `hcp recover`", session.id)));
    };
    let origin = &session.origin.dm_name;
    if !dm.exists(origin)? {
        return Err(Error::system(format!(
            "{origin}, whose data is being merged back from {}, is gone: create it again with `dmsetup create \
             {origin} --table '{}'`, then run `hcp recover` (the merge continues from the store)",
            session.id, rb.merge_table
        )));
    }
    if let Err(e) = super::trace::detach(session, sessions) {
        eprintln!("hcp: warning: {e}");
    }
    let mut remounted = None;
    if merge::state(dm, origin)?.is_none() {
        remounted = start_merge(dm, session)?;
    } else {
        // A switch killed between its suspend and its resume leaves the
        // origin suspended on the merge; resuming a running device changes
        // nothing.
        dm.resume(origin)?;
    }
    if let Some(MergeState::Failed(why)) = merge::state(dm, origin)? {
        return Err(Error::system(format!(
            "rolling back {} to {}: {why}; the store is kept for `hcp recover`",
            session.origin.path.display(),
            session.id
        )));
    }
    Ok(RolledBack {
        session: session.id.clone(),
        origin: session.origin.path.clone(),
        merge_bytes: rb.data_sectors * crate::size::SECTOR_BYTES,
        finished: false,
        merge_seconds: None,
        remounted,
        origin_restored: false,
        frozen_seconds: None,
        report: None,
        seconds: 0.0,
    })
}

/// Unmounts and removes the snapshot, and switches the origin onto the
/// merge: with its filesystem unmounted and mounted again around the switch
/// if it is mounted. Returns that remount.
fn start_merge(dm: &Dm, session: &Session) -> Result<Option<Remounted>> {
    let origin = &session.origin.dm_name;
    if let Some(m) = check_snapshot_unused(dm, session)? {
        crate::kernel::mount::unmount(&m.path)?;
    }
    if let Some(m) = session.mount.as_ref().filter(|m| m.created_dir) {
        let _ = std::fs::remove_dir(&m.path);
    }
    let rb = session.rollback.as_ref().expect("checked by the caller");
    let line: TableLine = rb.merge_table.parse()?;
    let mut switch = || -> Result<()> {
        if dm.exists(&session.id)? {
            dm.remove(&session.id)?;
        }
        let _ = std::fs::remove_file(&session.snapshot_path);
        if !rb.snapshot_removed {
            let mut record = session.clone();
            record.rollback = Some(RollbackRecord { snapshot_removed: true, ..rb.clone() });
            record::save(&record)?;
        }
        merge::switch_to_merge(dm, origin, &line).map(drop)
    };
    let dev = dm.devnum(origin)?;
    let mounts = MountTable(crate::kernel::mountinfo::read()?);
    let Some(mount) = mounts.mounts_of(dev).first().copied() else {
        fault::at("rollback-after-unmount")?;
        switch()?;
        return Ok(None);
    };
    // Mounted: `rollback --now`, or `recover` after a kill that the guard
    // answered by mounting the origin again.
    let spec = crate::enroll::check_remountable(mount, &mounts, dev)?;
    let node = node_path(origin);
    // If the switch fails, the filesystem is mounted again from the same
    // device: on the merge if it had begun (the snapshot's contents), else
    // on its own data, untouched; the record says what is left to do.
    let remounted = crate::enroll::move_mount(
        &spec,
        (&node, &node),
        &mut switch,
        &mut || Ok(()),
        ("rollback-after-unmount", "rollback-after-resume"),
    )
    .map_err(|e| e.context(format!("`hcp recover` finishes the rollback to {}", session.id)))?;
    Ok(Some(remounted))
}

/// The merge is done: the origin back on its own table (the last session)
/// or on `snapshot-origin` over its data (others remain), then the store
/// and the record gone. Returns whether the origin has its own table back,
/// and how long a mounted origin was frozen for it.
pub(super) fn finish(dm: &Dm, session: &Session, sessions: &[Session]) -> Result<(bool, Option<f64>)> {
    fault::at("rollback-before-finish")?;
    let origin = &session.origin.dm_name;
    let merging = match merge::state(dm, origin)? {
        Some(MergeState::Running { .. } | MergeState::Failed(_)) => {
            return Err(Error::system(format!("{origin}: the merge is not done; `hcp recover` finishes it")))
        }
        state => state.is_some(),
    };
    let last = siblings(sessions, session).is_empty();
    let window = if last {
        restore_origin(dm, session)?
    } else if merging {
        let real = real_devnum(dm, session)?;
        let length = dm.table(origin)?.first().map_or(0, |l| l.length);
        Some(switch_origin_onto(dm, origin, &[SnapshotOrigin { origin: real }.table_line(length)])?)
    } else {
        None
    };
    // The origin has its table back: from here on nothing is half merged,
    // whatever happens to the machine.
    record::delete_rollback(&session.id)?;
    dispose(dm, session, false, false)?;
    Ok((last, window.and_then(|w| w.frozen).map(|d| d.as_secs_f64())))
}

/// A rollback a reboot interrupted: its record kept under `/var/lib/hcp`,
/// its devices gone with the boot, and its origin back on its own table
/// (activated by LVM, say) over half-merged data. Attaches the store again,
/// slides `-real` under the origin again (or makes hcp's wrapper again) and
/// loads the merge, which the kernel continues from the store; returns the
/// session, recorded in `/run` again, for [`carry_on`] and [`finish`].
/// Refused while anything has the origin's data mounted.
pub(super) fn restart_after_reboot(dm: &Dm, kept: &Session) -> Result<Session> {
    let mut session = kept.clone();
    let Some(rb) = session.rollback.clone() else {
        return Err(Error::system(format!("the kept rollback record of {} lacks its rollback", kept.id)));
    };
    let old: TableLine = rb.merge_table.parse()?;
    let params = SnapshotMerge::from_line(&old)?.0;
    let origin = session.origin.dm_name.clone();
    let mounts = MountTable(crate::kernel::mountinfo::read()?);
    let half_merged = |dev: DevNum, shown: &Path| -> Result<()> {
        match mounts.mounts_of(dev).first() {
            Some(m) => Err(Error::refused(format!(
                "{} is mounted at {} over half-merged data (a rollback to {} was interrupted by the reboot): \
                 unmount it, then run `hcp recover` to finish the rollback",
                shown.display(),
                m.mount_point.display(),
                kept.id
            ))),
            None => Ok(()),
        }
    };
    let raw = session.origin.wrapped.then(|| BlockDevice::resolve(&session.origin.real)).transpose()?;
    let real = if let Some(raw) = &raw {
        half_merged(raw.devnum, Path::new(&session.origin.real))?;
        raw.devnum
    } else {
        if !dm.exists(&origin)? {
            return Err(Error::not_found(format!(
                "{origin}, being rolled back to {} when the machine went down, is not there: activate it (for \
                 LVM: vgchange -ay; an enrolled partition: hcp activate), then run `hcp recover` again",
                kept.id
            )));
        }
        half_merged(dm.devnum(&origin)?, &session.origin.path)?;
        let real = &session.origin.real;
        if !dm.exists(real)? {
            let table = dm.table(&origin)?;
            if let Some(l) = table.iter().find(|l| l.target_type.starts_with("snapshot")) {
                return Err(Error::system(format!(
                    "{origin} runs on `{}` after the reboot, not on its own table: inspect it (`dmsetup table \
                     {origin}`)",
                    l.target_type
                )));
            }
            let uuid = crate::kernel::dm::uuid::truncate(&format!("{}{origin}", crate::kernel::dm::uuid::UUID_REAL));
            dm.create(real, &uuid, &table)?;
        }
        dm.devnum(real)?
    };
    let cow = attach_store(&mut session)?;
    let line = SnapshotMerge(Snapshot { origin: real, cow, ..params }).table_line(old.length);
    session.rollback = Some(RollbackRecord { merge_table: line.to_string(), snapshot_removed: true, ..rb });
    // In /run again: from here on an interruption is one of this boot.
    record::save(&session)?;
    if let Some(raw) = &raw {
        let uuid =
            crate::kernel::dm::uuid::truncate(&format!("{}{}", crate::kernel::dm::uuid::UUID_ORIGIN, raw.kernel_name));
        dm.create(&origin, &uuid, std::slice::from_ref(&line))?;
    } else {
        merge::switch_to_merge(dm, &origin, &line)?;
    }
    Ok(session)
}

/// The device of a kept session's store: a file store attached through a
/// loop device again (recorded in `session`), else the block device itself
/// (a quota's limit device is not needed: a merge only shrinks the store).
fn attach_store(session: &mut Session) -> Result<DevNum> {
    let store = &session.store.path;
    if !store.exists() {
        return Err(Error::system(format!(
            "the store {} of the rollback to {} is gone: the origin's data stays half merged and only a backup can \
             bring it back",
            store.display(),
            session.id
        )));
    }
    if !(session.store.created_file || session.store.loop_device.is_some()) {
        return DevNum::of_block_device(store).map_err(|e| Error::system(format!("{e:#}")));
    }
    let lo = match LoopDevice::find_by_backing_file(store)?.into_iter().next() {
        Some(lo) => lo,
        None => LoopDevice::attach(store, AttachOptions { read_only: false, direct_io: true, autoclear: false })
            .map_err(|e| Error::system(format!("attaching store {}: {e:#}", store.display())))?,
    };
    session.store.loop_device = Some(lo.path.clone());
    lo.devnum()
}

/// The device holding the origin's data: `-real`, or the raw device under
/// hcp's wrapper.
fn real_devnum(dm: &Dm, session: &Session) -> Result<DevNum> {
    if session.origin.wrapped {
        DevNum::of_block_device(Path::new(&session.origin.real)).map_err(|e| Error::system(format!("{e:#}")))
    } else {
        dm.devnum(&session.origin.real)
    }
}
