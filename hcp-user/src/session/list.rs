//! `hcp list` and `hcp show`: the sessions from their records, with the
//! live state of each snapshot from its dm status line.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::status::SnapshotStatus;
use crate::state::record::{self, Session, SessionState};

use super::inspect::{assess, is_origin_of, merge_percent, orphans, problem, store_bytes_now};
use crate::clock::format_time;

/// One session as `list` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ListEntry {
    pub session: String,
    pub real_device: PathBuf,
    pub virtual_device: PathBuf,
    pub store: PathBuf,
    pub store_loop_device: Option<PathBuf>,
    pub mount_point: Option<PathBuf>,
    /// The snapshot's point in time: the end of the switch (for a session
    /// not live yet, and records of older hcp: the command's start).
    pub created: String,
    pub created_unix: u64,
    /// Bytes of origin data copied into the store since the snapshot
    /// (allocated store space less its metadata); null when unknown.
    pub changed_bytes: Option<u64>,
    /// Store space allocated (data and metadata), of `store_bytes`.
    pub store_used_bytes: Option<u64>,
    /// The store's size now: with auto-extend it grows, up to
    /// `quota_bytes`.
    pub store_bytes: u64,
    pub store_use_percent: Option<f64>,
    /// The most the store may take: its size, unless it grows.
    pub quota_bytes: u64,
    /// Set when the store grows as it fills (`--autoextend`).
    pub autoextend: Option<AutoextendEntry>,
    pub chunk_bytes: u64,
    pub state: SessionState,
    /// While `merging` (a rollback): how much of the snapshot's data is back
    /// in the origin.
    pub merge_percent: Option<f64>,
    /// What is wrong with an incomplete session, and so what `hcp recover`
    /// will do about it.
    pub problem: Option<String>,
}

/// A growing store's settings and its monitor, as `list` reports them.
#[derive(Clone, Debug, Serialize)]
pub struct AutoextendEntry {
    pub threshold_percent: u32,
    pub growth_percent: u32,
    pub monitor_pid: Option<i32>,
    /// Whether the monitor runs: it stops by itself once the snapshot is
    /// invalid; an active session without it no longer grows.
    pub monitor_running: bool,
    pub log: PathBuf,
}

pub fn list() -> Result<Vec<ListEntry>> {
    // Listing changes nothing, so it takes no lock and needs dm only to
    // read states.
    let sessions = record::load_all()?;
    let dm = match Dm::open() {
        Ok(dm) => dm,
        // Nothing to list, and nothing to look for without device-mapper.
        Err(_) if sessions.is_empty() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let in_progress = crate::state::lock::lock_holder().is_some();
    let entries = sessions.iter().map(|s| entry(&dm, s, in_progress)).collect::<Result<Vec<_>>>()?;
    for orphan in orphans(&dm, &sessions)? {
        eprintln!("hcp: {orphan}: run `hcp recover`");
    }
    for r in record::interrupted_rollbacks(&sessions)? {
        eprintln!(
            "hcp: warning: {} was being rolled back to {} when the machine went down: its data is half merged \
             (neither the snapshot's nor the later one); run `hcp recover` before using it",
            r.origin.path.display(),
            r.id
        );
    }
    Ok(entries)
}

fn entry(dm: &Dm, s: &Session, in_progress: bool) -> Result<ListEntry> {
    let (state, status, problem) = assess(dm, s, in_progress)?;
    let active = status.as_ref().and_then(|st| match st {
        SnapshotStatus::Active { allocated, total, metadata } => Some((*allocated, *total, *metadata)),
        _ => None,
    });
    Ok(ListEntry {
        session: s.id.clone(),
        real_device: s.origin.path.clone(),
        virtual_device: s.snapshot_path.clone(),
        store: s.store.path.clone(),
        store_loop_device: s.store.loop_device.clone(),
        mount_point: s.mount.as_ref().map(|m| m.path.clone()),
        created: format_time(point_in_time(s)),
        created_unix: point_in_time(s),
        changed_bytes: active.map(|(allocated, _, metadata)| allocated.saturating_sub(metadata) << 9),
        store_used_bytes: active.map(|(allocated, _, _)| allocated << 9),
        store_bytes: store_bytes_now(s, status.as_ref()),
        store_use_percent: active.map(
            |(allocated, total, _)| {
                if total == 0 {
                    0.0
                } else {
                    allocated as f64 * 100.0 / total as f64
                }
            },
        ),
        quota_bytes: s.quota_bytes,
        autoextend: s.autoextend.as_ref().map(|a| AutoextendEntry {
            threshold_percent: a.threshold_percent,
            growth_percent: a.growth_percent,
            monitor_pid: a.pid,
            monitor_running: crate::session::autoextend::running(s),
            log: a.log.clone(),
        }),
        chunk_bytes: s.chunk_bytes,
        state,
        merge_percent: merge_percent(dm, s)?,
        problem,
    })
}

/// The hcp devices of `device`, as `show` reports them.
#[derive(Clone, Debug, Serialize)]
pub struct Shown {
    pub device: PathBuf,
    pub snapshots: Vec<PathBuf>,
}

pub fn show(device: &str) -> Result<Shown> {
    let dev = BlockDevice::resolve(device)?;
    let sessions = record::load_all()?;
    // An enrolled partition's sessions are its mapping's.
    let dev = match Dm::open() {
        Ok(dm) => crate::kernel::dm::passthrough::acting_device(&dm, dev)?,
        Err(_) => dev,
    };
    let of_dev: Vec<&Session> = sessions.iter().filter(|s| is_origin_of(s, &dev)).collect();
    if crate::state::lock::lock_holder().is_none() {
        if let Ok(dm) = Dm::open() {
            for s in &of_dev {
                if let Some(problem) = problem(&dm, s)? {
                    eprintln!("hcp: warning: session {} is incomplete ({problem}): run `hcp recover`", s.id);
                }
            }
        }
    }
    let snapshots: Vec<PathBuf> = of_dev.iter().map(|s| s.snapshot_path.clone()).collect();
    if snapshots.is_empty() {
        return Err(Error::not_found(format!(
            "{device} has no hcp sessions: give an origin that has some (`hcp -l` lists them all)"
        )));
    }
    Ok(Shown { device: dev.display_path(), snapshots })
}

/// The snapshot's point in time, in whole seconds.
fn point_in_time(s: &Session) -> u64 {
    s.snapshot_unix.map_or(s.created_unix, |t| t as u64)
}
