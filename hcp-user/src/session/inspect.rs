//! Sessions as the kernel has them now: each one's state from its dm status
//! line, what is wrong with one whose command did not finish, hcp's dm
//! devices that no record accounts for, and which sessions a device is the
//! origin of. Read by every command; changes nothing.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::figures::stats::{self, SessionStats, StoreUse};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::status::SnapshotStatus;
use crate::kernel::dm::table::{SnapshotMerge, SnapshotOrigin, TargetParams};
use crate::kernel::dm::uuid::{UUID_COW, UUID_ORIGIN, UUID_REAL, UUID_SNAPSHOT};
use crate::state::record::{Phase, Session, SessionState};
use crate::tracer::pins;

use super::rollback::merge::{self, MergeState};

/// `/dev/hcpN`.
pub fn snapshot_node(id: &str) -> PathBuf {
    Path::new("/dev").join(id)
}

/// Whether `dev` (the device a user named) is the origin of `session`: the
/// origin dm device, or the raw device under an hcp wrapper.
pub(super) fn is_origin_of(session: &Session, dev: &BlockDevice) -> bool {
    dev.dm.as_ref().is_some_and(|dm| dm.name == session.origin.dm_name)
        || (session.origin.wrapped && raw_devnum(session) == Some(dev.devnum))
}

/// The raw device under an hcp wrapper.
fn raw_devnum(session: &Session) -> Option<DevNum> {
    DevNum::of_block_device(Path::new(&session.origin.real)).ok()
}

/// Sessions of the same origin as `session`, other than itself.
pub(super) fn siblings<'a>(sessions: &'a [Session], session: &Session) -> Vec<&'a Session> {
    sessions.iter().filter(|s| s.id != session.id && s.origin.dm_name == session.origin.dm_name).collect()
}

/// A session's state and its snapshot's parsed status line, read live
/// from device-mapper (for a command holding the lock: a record not
/// `active` is a leftover).
pub(crate) fn state_of(dm: &Dm, s: &Session) -> Result<(SessionState, Option<SnapshotStatus>)> {
    assess(dm, s, false).map(|(state, status, _)| (state, status))
}

/// The state, the status line and what is wrong, if anything; a record
/// not `active` is a command `in_progress` unless it is not.
pub(super) fn assess(
    dm: &Dm,
    s: &Session,
    in_progress: bool,
) -> Result<(SessionState, Option<SnapshotStatus>, Option<String>)> {
    let status = if dm.exists(&s.id)? { snapshot_status(dm, &s.id)? } else { None };
    let problem = if in_progress && s.phase != Phase::Active { None } else { problem(dm, s)? };
    let state = match (s.phase, &status) {
        _ if problem.is_some() => SessionState::Incomplete,
        (Phase::Starting, _) => SessionState::Starting,
        (Phase::Removing, _) => SessionState::Removing,
        (Phase::RollingBack, _) => SessionState::Merging,
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
        Phase::RollingBack => return rollback_problem(dm, s),
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

/// What is wrong with a rollback: nothing while the kernel merges (a
/// rollback with `--no-wait`, or one being waited for).
fn rollback_problem(dm: &Dm, s: &Session) -> Result<Option<String>> {
    let origin = &s.origin.dm_name;
    let merging = dm.exists(origin)? && !dm.status(origin)?.is_empty();
    Ok(match merging.then(|| merge::state(dm, origin)).transpose()?.flatten() {
        Some(MergeState::Running { .. } | MergeState::Done) => None,
        Some(MergeState::Failed(why)) => Some(format!("its rollback stopped: {why}")),
        None => Some("its rollback did not finish (the origin is not merging yet)".to_string()),
    })
}

/// The merge of a session being rolled back, as a percentage of the data
/// its store held when the rollback began; None when it is not merging.
pub(super) fn merge_percent(dm: &Dm, s: &Session) -> Result<Option<f64>> {
    let Some(rb) = s.rollback.as_ref().filter(|_| s.phase == Phase::RollingBack) else { return Ok(None) };
    if !dm.exists(&s.origin.dm_name)? {
        return Ok(None);
    }
    Ok(match merge::state(dm, &s.origin.dm_name)? {
        Some(MergeState::Done) => Some(100.0),
        Some(MergeState::Running { data_sectors_left }) if rb.data_sectors > 0 => {
            let left = data_sectors_left.min(rb.data_sectors);
            Some((rb.data_sectors - left) as f64 * 100.0 / rb.data_sectors as f64)
        }
        Some(MergeState::Running { .. }) => Some(100.0),
        _ => None,
    })
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

/// Whether `origin` runs on hcp's `snapshot-origin` over `real`, or on the
/// `snapshot-merge` of a rollback over it (which takes `snapshot-origin`'s
/// place: other snapshots of the origin go on as before). Refuses either
/// over anything else: that is not hcp's to undo.
pub(super) fn is_switched(dm: &Dm, origin: &str, real: &str) -> Result<bool> {
    let table = dm.table(origin)?;
    let [line] = table.as_slice() else { return Ok(false) };
    let over = match line.target_type.as_str() {
        SnapshotOrigin::TARGET => SnapshotOrigin::from_line(line)?.origin,
        SnapshotMerge::TARGET => SnapshotMerge::from_line(line)?.0.origin,
        _ => return Ok(false),
    };
    if !dm.exists(real)? || dm.devnum(real)? != over {
        return Err(Error::refused(format!(
            "origin {origin} runs on {} over {over}, not over hcp's {real}: hcp leaves it alone; \
             inspect it with `dmsetup table {origin}`",
            line.target_type
        )));
    }
    Ok(true)
}

/// Records whose command did not finish, or whose pieces are missing:
/// each with what is wrong. Only meaningful under the lock.
pub(super) fn leftovers(dm: &Dm, sessions: &[Session]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for s in sessions {
        if let Some(p) = problem(dm, s)? {
            out.push((s.id.clone(), p));
        }
    }
    Ok(out)
}

/// `stats` with what device-mapper says now: the session's state (is the
/// snapshot still valid?) and how full its store is.
pub(super) fn with_live_state(mut stats: SessionStats, dm: &Dm, session: &Session) -> Result<SessionStats> {
    let (state, status) = state_of(dm, session)?;
    stats.state = Some(state);
    stats.store = Some(StoreUse {
        size_bytes: store_bytes_now(session, status.as_ref()),
        used_bytes: status.and_then(|s| s.used_bytes()),
        use_percent: status.and_then(|s| s.use_percent()),
        quota_bytes: session.quota_bytes,
        autoextend: session.autoextend.is_some(),
    });
    Ok(stats)
}

/// The session's figures from `counters`, with device-mapper's view of its
/// store where it can be read (the recorder's per-interval figures).
pub(super) fn live_figures(session: &Session, counters: &pins::Counters, dm: &Dm) -> SessionStats {
    let stats = stats::compute(session, counters, crate::clock::now_unix());
    with_live_state(stats.clone(), dm, session).unwrap_or(stats)
}
