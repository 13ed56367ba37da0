//! `hcp list` and `hcp show`: the sessions from their records, with the
//! live state of each snapshot from its dm status line.

use std::path::PathBuf;

use serde::Serialize;

use crate::blockdev::BlockDevice;
use crate::dm::device::Dm;
use crate::dm::status::SnapshotStatus;
use crate::error::{Error, Result};
use crate::state::{self, Phase, Session};

use super::{format_time, is_origin_of};

/// A session's state as `list` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Active,
    /// The store filled: dm dropped the snapshot. The origin is unaffected.
    Invalid,
    Merging,
    /// A start or remove did not finish (see `hcp recover`).
    Incomplete,
    /// The record exists but its snapshot device does not.
    Missing,
}

/// One session as `list` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ListEntry {
    pub session: String,
    pub real_device: PathBuf,
    pub virtual_device: PathBuf,
    pub store: PathBuf,
    pub store_loop_device: Option<PathBuf>,
    pub mount_point: Option<PathBuf>,
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
    let sessions = state::load_all()?;
    let dm = if sessions.is_empty() { None } else { Some(Dm::open()?) };
    sessions.iter().map(|s| entry(dm.as_ref().expect("dm opened for sessions"), s)).collect()
}

/// A session's state and its snapshot's parsed status line, read live
/// from device-mapper.
pub(crate) fn state_of(dm: &Dm, s: &Session) -> Result<(SessionState, Option<SnapshotStatus>)> {
    let status = if dm.exists(&s.id)? { snapshot_status(dm, &s.id)? } else { None };
    let state = match (s.phase, &status) {
        (Phase::Starting | Phase::Removing, _) => SessionState::Incomplete,
        (Phase::Active, None) => SessionState::Missing,
        (Phase::Active, Some((_, SnapshotStatus::Invalid | SnapshotStatus::Overflow))) => SessionState::Invalid,
        (Phase::Active, Some((target, _))) if target == "snapshot-merge" => SessionState::Merging,
        (Phase::Active, Some(_)) => SessionState::Active,
    };
    Ok((state, status.map(|(_, st)| st)))
}

/// The store's size now. dm-snapshot's own figure (the status line's
/// total, the COW device's size) while it has one; else the file's, which
/// a growing store's loop device follows; else the recorded size.
pub(crate) fn store_bytes_now(s: &Session, status: Option<&SnapshotStatus>) -> u64 {
    match status {
        Some(SnapshotStatus::Active { total, .. }) => total * crate::size::SECTOR_BYTES,
        _ if s.store.created_file => std::fs::metadata(&s.store.path).map_or(s.store.size_bytes, |m| m.len()),
        _ => s.store.size_bytes,
    }
}

fn entry(dm: &Dm, s: &Session) -> Result<ListEntry> {
    let (state, status) = state_of(dm, s)?;
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
        created: format_time(s.created_unix),
        created_unix: s.created_unix,
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
            monitor_running: crate::autoextend::running(s),
            log: a.log.clone(),
        }),
        chunk_bytes: s.chunk_bytes,
        state,
    })
}

/// The target type and parsed status of a snapshot's one target.
fn snapshot_status(dm: &Dm, id: &str) -> Result<Option<(String, SnapshotStatus)>> {
    let lines = dm.status(id)?;
    match lines.as_slice() {
        [(target, text)] => Ok(Some((target.clone(), text.parse()?))),
        // A device without a table (a half-made session).
        _ => Ok(None),
    }
}

/// The hcp devices of `device`, as `show` reports them.
#[derive(Clone, Debug, Serialize)]
pub struct Shown {
    pub device: PathBuf,
    pub snapshots: Vec<PathBuf>,
}

pub fn show(device: &str) -> Result<Shown> {
    let dev = BlockDevice::resolve(device)?;
    let sessions = state::load_all()?;
    let snapshots: Vec<PathBuf> =
        sessions.iter().filter(|s| is_origin_of(s, &dev)).map(|s| s.snapshot_path.clone()).collect();
    if snapshots.is_empty() {
        return Err(Error::not_found(format!("{device} has no hcp sessions (`hcp -l` lists them all)")));
    }
    Ok(Shown { device: dev.display_path(), snapshots })
}
