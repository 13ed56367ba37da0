//! `hcp list` and `hcp show`: the sessions from their records, with the
//! live state of each snapshot from its dm status line.

use std::path::PathBuf;

use serde::Serialize;

use crate::blockdev::BlockDevice;
use crate::dm::device::Dm;
use crate::dm::status::SnapshotStatus;
use crate::error::{Error, Result};
use crate::state::{self, Phase, Session};

use super::remove::is_switched;
use super::{format_time, is_origin_of, UUID_COW, UUID_ORIGIN, UUID_REAL, UUID_SNAPSHOT};

/// A session's state as `list` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Active,
    /// The store filled: dm dropped the snapshot. The origin is unaffected.
    Invalid,
    Merging,
    /// Being made or removed by an hcp running now.
    Starting,
    Removing,
    /// A start or remove did not finish, or a piece of the session is
    /// missing or changed (`problem` says which): `hcp recover` clears it.
    Incomplete,
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
    let sessions = state::load_all()?;
    let dm = match Dm::open() {
        Ok(dm) => dm,
        // Nothing to list, and nothing to look for without device-mapper.
        Err(_) if sessions.is_empty() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let in_progress = state::lock_holder().is_some();
    let entries = sessions.iter().map(|s| entry(&dm, s, in_progress)).collect::<Result<Vec<_>>>()?;
    for orphan in orphans(&dm, &sessions)? {
        eprintln!("hcp: {orphan}: run `hcp recover`");
    }
    Ok(entries)
}

/// A session's state and its snapshot's parsed status line, read live
/// from device-mapper (for a command holding the lock: a record not
/// `active` is a leftover).
pub(crate) fn state_of(dm: &Dm, s: &Session) -> Result<(SessionState, Option<SnapshotStatus>)> {
    assess(dm, s, false).map(|(state, status, _)| (state, status))
}

/// The state, the status line and what is wrong, if anything; a record
/// not `active` is a command `in_progress` unless it is not.
fn assess(dm: &Dm, s: &Session, in_progress: bool) -> Result<(SessionState, Option<SnapshotStatus>, Option<String>)> {
    let status = if dm.exists(&s.id)? { snapshot_status(dm, &s.id)? } else { None };
    let problem = if in_progress && s.phase != Phase::Active { None } else { problem(dm, s)? };
    let state = match (s.phase, &status) {
        _ if problem.is_some() => SessionState::Incomplete,
        (Phase::Starting, _) => SessionState::Starting,
        (Phase::Removing, _) => SessionState::Removing,
        (Phase::Active, Some((_, SnapshotStatus::Invalid | SnapshotStatus::Overflow))) => SessionState::Invalid,
        (Phase::Active, Some((target, _))) if target == "snapshot-merge" => SessionState::Merging,
        (Phase::Active, _) => SessionState::Active,
    };
    Ok((state, status.map(|(_, st)| st), problem))
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
        problem,
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

/// What is wrong with a session whose command is not running: None for a
/// complete one. (The caller knows whether its command may be running.)
pub(super) fn problem(dm: &Dm, s: &Session) -> Result<Option<String>> {
    match s.phase {
        Phase::Starting => return Ok(Some("its start did not finish".to_string())),
        Phase::Removing => return Ok(Some("its removal did not finish".to_string())),
        Phase::Active => {}
    }
    if !dm.exists(&s.id)? {
        return Ok(Some(format!("its snapshot device {} is missing", s.id)));
    }
    if dm.status(&s.id)?.is_empty() {
        return Ok(Some(format!("its snapshot device {} has no active table", s.id)));
    }
    let origin = &s.origin.dm_name;
    if !dm.exists(origin)? {
        return Ok(Some(format!("its origin device {origin} is missing")));
    }
    if !s.origin.wrapped {
        match is_switched(dm, origin, &s.origin.real) {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Some(format!(
                    "its origin {origin} no longer runs on snapshot-origin: the snapshot stopped following its writes"
                )))
            }
            Err(e) => return Ok(Some(e.message().to_string())),
        }
    }
    Ok(None)
}

/// hcp's dm devices (known by their UUIDs) that no session record accounts
/// for, each described in a line.
pub(super) fn orphans(dm: &Dm, sessions: &[Session]) -> Result<Vec<Orphan>> {
    let mut found = Vec::new();
    for (name, _, uuid) in dm.list()? {
        let kind = if uuid.starts_with(UUID_SNAPSHOT) {
            (!sessions.iter().any(|s| s.id == name)).then_some(OrphanKind::Snapshot)
        } else if uuid.starts_with(UUID_COW) {
            (!sessions.iter().any(|s| format!("{}-cow", s.id) == name)).then_some(OrphanKind::StoreLimit)
        } else if let Some(origin) = uuid.strip_prefix(UUID_REAL) {
            (!sessions.iter().any(|s| !s.origin.wrapped && s.origin.real == name))
                .then(|| OrphanKind::Real { origin: origin.to_string() })
        } else if uuid.starts_with(UUID_ORIGIN) {
            (!sessions.iter().any(|s| s.origin.wrapped && s.origin.dm_name == name)).then_some(OrphanKind::Wrapper)
        } else {
            None
        };
        if let Some(kind) = kind {
            found.push(Orphan { name, kind });
        }
    }
    // Snapshots first: the devices under them are free only once they go.
    found.sort_by_key(|o| o.kind.order());
    Ok(found)
}

/// An hcp dm device without a session.
#[derive(Clone, Debug)]
pub(super) struct Orphan {
    pub name: String,
    pub kind: OrphanKind,
}

#[derive(Clone, Debug)]
pub(super) enum OrphanKind {
    Snapshot,
    /// `hcpN-cow`: a store device's first bytes, for a quota.
    StoreLimit,
    /// `<origin>-real`, the data under `origin`.
    Real {
        origin: String,
    },
    /// `hcp-<device>`, the origin hcp made for a plain device.
    Wrapper,
}

impl OrphanKind {
    fn order(&self) -> u8 {
        match self {
            OrphanKind::Snapshot => 0,
            OrphanKind::StoreLimit => 1,
            OrphanKind::Real { .. } => 2,
            OrphanKind::Wrapper => 3,
        }
    }
}

impl std::fmt::Display for Orphan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.kind {
            OrphanKind::Snapshot => "an hcp snapshot".to_string(),
            OrphanKind::StoreLimit => "an hcp store's quota device".to_string(),
            OrphanKind::Real { origin } => format!("the data under origin {origin}"),
            OrphanKind::Wrapper => "hcp's origin for a plain device".to_string(),
        };
        write!(f, "dm device {} ({what}) has no session record", self.name)
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
    // An enrolled partition's sessions are its mapping's.
    let dev = match Dm::open() {
        Ok(dm) => crate::passthrough::acting_device(&dm, dev)?,
        Err(_) => dev,
    };
    let of_dev: Vec<&Session> = sessions.iter().filter(|s| is_origin_of(s, &dev)).collect();
    if state::lock_holder().is_none() {
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
