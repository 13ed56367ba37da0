//! Session records under `/run/hcp/`: one JSON file per session, written
//! atomically (write, fsync, rename), and a lock that serialises every hcp
//! command that changes sessions.
//!
//! `/run` is a tmpfs, so records vanish on reboot together with the dm
//! devices they describe: sessions do not survive a reboot (nor did the
//! original's).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The version of the record format below; bumped on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

/// Where records and the lock live.
pub fn run_dir() -> PathBuf {
    PathBuf::from("/run/hcp")
}

fn sessions_dir() -> PathBuf {
    run_dir().join("sessions")
}

/// Where a session is in its life. A record that is not `Active` after its
/// command ended marks a half-made or half-removed session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Active,
    Removing,
}

/// Everything needed to list, show and remove a session, and to undo it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub version: u32,
    /// `hcpN`: also the snapshot's dm name.
    pub id: String,
    pub phase: Phase,
    pub origin: Origin,
    /// The snapshot device node, `/dev/hcpN`.
    pub snapshot_path: PathBuf,
    pub store: Store,
    pub mount: Option<MountRecord>,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub chunk_bytes: u64,
    pub quota_bytes: u64,
    /// Set while the session is traced (`--trace`, `hcp trace attach`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceRecord>,
    /// Set when the store grows on demand (`--autoextend`); `quota_bytes`
    /// is then the ceiling it grows to and `store.size_bytes` its size at
    /// the start. Records without it (older hcp) read as not growing, so
    /// the format version stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoextend: Option<AutoextendRecord>,
}

/// The auto-extend settings of a session and the monitor that applies them
/// (see the `autoextend` module).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoextendRecord {
    /// Grow when the store is this full (percent of its current size).
    pub threshold_percent: u32,
    /// Grow by this much of its current size (capped at the quota).
    pub growth_percent: u32,
    /// The monitor process (`hcp __autoextend hcpN`); None until it runs.
    pub pid: Option<i32>,
    /// Where the monitor writes what it does.
    pub log: PathBuf,
}

/// What a traced session needs to report later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    pub since_unix: u64,
    pub devices: Vec<TracedDevice>,
    /// The origin's write latency before the snapshot (`--baseline`).
    pub baseline: Option<HistRecord>,
    /// Every counter of the session's devices as the snapshot went live:
    /// the session's own figures are what was counted since.
    pub at_start: Option<crate::stats::CountersRecord>,
    /// The switch, on hcp's monotonic clock.
    pub window: Option<WindowRecord>,
    /// Where `remove` writes the final report (`--report`); None: under
    /// `/var/lib/hcp/reports/`.
    #[serde(default)]
    pub report: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracedDevice {
    /// `origin`, `real`, `store` or `snapshot`.
    pub role: String,
    /// `MAJOR:MINOR`
    pub devnum: String,
    pub path: PathBuf,
}

/// A latency histogram, sparse: `(bucket, count)` for non-empty buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistRecord {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub buckets: Vec<(u32, u64)>,
}

/// The switch, timed on hcp's monotonic clock around its calls, and by the
/// kernel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub freeze_call_seconds: Option<f64>,
    pub frozen_seconds: Option<f64>,
    pub suspended_seconds: Option<f64>,
    /// The same windows measured in the kernel, with the write stalls they
    /// caused; null for a session traced after its start.
    #[serde(default)]
    pub kernel: Option<KernelWindow>,
}

/// The switch as the kernel saw it: hcp's own calls at the ioctl syscall
/// tracepoints (entry to return, so never longer than hcp's clock around
/// them), and the write and sync calls of every process on the origin's
/// filesystem (see `hcp_common::stall`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelWindow {
    /// FIFREEZE, entry to return.
    pub freeze_call_seconds: Option<f64>,
    /// FIFREEZE entry to FITHAW return.
    pub frozen_seconds: Option<f64>,
    /// Suspend of the origin, entry, to its resume, return.
    pub suspended_seconds: Option<f64>,
    /// The longest write or sync system call on the origin's filesystem,
    /// from just before the freeze until every call the freeze held had
    /// returned: what a writing application felt. Null when the origin was
    /// not mounted (nothing to freeze).
    pub longest_write_stall_seconds: Option<f64>,
    /// The write and sync calls timed for it.
    pub write_calls: u64,
    /// Calls held by the freeze that had not returned 2 s after the thaw:
    /// the longest stall may be longer than reported.
    pub writes_still_held: u64,
    /// Events not recorded (full ring or map, unreadable fields): a window
    /// or stall may be missing.
    pub lost_events: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// What the user named, resolved: `/dev/mapper/vg0-data`, `/dev/vdb`.
    pub path: PathBuf,
    /// The dm device that carries the `snapshot-origin` table.
    pub dm_name: String,
    /// The device that holds the data, below the origin: `<name>-real` for a
    /// dm origin, the raw device for a wrapped plain device.
    pub real: String,
    /// Set when hcp wrapped a plain device in an origin dm device of its own
    /// (removed with the last session); unset for a dm device hcp slid
    /// `-real` under (its table is restored with the last session).
    pub wrapped: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// The file or block device that holds the changed blocks.
    pub path: PathBuf,
    /// The loop device a file store is attached through.
    pub loop_device: Option<PathBuf>,
    /// Whether hcp created the file (and so deletes it on remove).
    pub created_file: bool,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub path: PathBuf,
    pub read_only: bool,
    /// Whether hcp created the directory (and so removes it on remove).
    pub created_dir: bool,
}

/// Every record, sorted by session number.
pub fn load_all() -> Result<Vec<Session>> {
    let dir = sessions_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    let mut sessions = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir.display(), e))?.path();
        if path.extension().is_some_and(|x| x == "json") {
            sessions.push(load(&path)?);
        }
    }
    sessions.sort_by_key(|s| session_number(&s.id));
    Ok(sessions)
}

fn load(path: &Path) -> Result<Session> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
    let session: Session = serde_json::from_str(&text)
        .map_err(|e| Error::system(format!("session record {} is unreadable: {e}", path.display())))?;
    if session.version != RECORD_VERSION {
        return Err(Error::system(format!(
            "session record {} has format version {}, this hcp reads {RECORD_VERSION}",
            path.display(),
            session.version
        )));
    }
    Ok(session)
}

/// The record of session `id`, if there is one.
pub fn load_one(id: &str) -> Result<Option<Session>> {
    let path = sessions_dir().join(format!("{id}.json"));
    if !path.exists() {
        return Ok(None);
    }
    match load(&path) {
        Ok(session) => Ok(Some(session)),
        // Deleted between the check and the read.
        Err(_) if !path.exists() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a record so that a reader (or a crash) sees the old or the new
/// one, never a torn one.
pub fn save(session: &Session) -> Result<()> {
    let dir = sessions_dir();
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(format!("{}.json", session.id));
    let tmp = dir.join(format!(".{}.json.tmp", session.id));
    let text = serde_json::to_string_pretty(session).expect("records serialise");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&dir)?.sync_all()
    };
    write().map_err(|e| Error::io(format!("writing session record {}", path.display()), e))
}

pub fn delete(id: &str) -> Result<()> {
    let path = sessions_dir().join(format!("{id}.json"));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing session record {}", path.display()), e)),
    }
}

/// `hcp7` -> 7 (records of other names sort last).
pub fn session_number(id: &str) -> u32 {
    id.strip_prefix("hcp").and_then(|n| n.parse().ok()).unwrap_or(u32::MAX)
}

/// An exclusive lock on `/run/hcp/lock`, held while a command changes
/// sessions; released when dropped (or when the process dies).
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock, or fails at once naming the process that holds it:
    /// two starts racing on one device must not both proceed.
    pub fn acquire() -> Result<Lock> {
        let dir = run_dir();
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(path.display(), e))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::busy(format!(
                    "another hcp command (pid {}) is changing sessions: retry when it has finished",
                    holder.trim()
                )));
            }
            return Err(Error::io(format!("locking {}", path.display()), err));
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .map_err(|e| Error::io(path.display(), e))?;
        Ok(Lock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_numbers_sort_numerically() {
        assert_eq!(session_number("hcp0"), 0);
        assert_eq!(session_number("hcp12"), 12);
        assert_eq!(session_number("other"), u32::MAX);
    }

    #[test]
    fn records_round_trip_through_json() {
        let s = Session {
            version: RECORD_VERSION,
            id: "hcp1".into(),
            phase: Phase::Active,
            origin: Origin {
                path: "/dev/mapper/vg0-data".into(),
                dm_name: "vg0-data".into(),
                real: "vg0-data-real".into(),
                wrapped: false,
            },
            snapshot_path: "/dev/hcp1".into(),
            store: Store {
                path: "/var/lib/hcp/vg0-data.hcp1.cow".into(),
                loop_device: Some("/dev/loop3".into()),
                created_file: true,
                size_bytes: 1 << 30,
            },
            mount: Some(MountRecord { path: "/var/hcp/vg0-data_hcp1".into(), read_only: false, created_dir: true }),
            created_unix: 1_800_000_000,
            chunk_bytes: 4096,
            quota_bytes: 1 << 30,
            trace: None,
            autoextend: Some(AutoextendRecord {
                threshold_percent: 80,
                growth_percent: 20,
                pid: Some(4242),
                log: "/run/hcp/autoextend/hcp1.log".into(),
            }),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"phase\":\"active\""), "{text}");
        assert_eq!(serde_json::from_str::<Session>(&text).unwrap(), s);
    }

    #[test]
    fn records_without_autoextend_still_read() {
        // A record as hcp wrote it before auto-extend existed.
        let text = r#"{"version":1,"id":"hcp2","phase":"active",
            "origin":{"path":"/dev/vdb","dm_name":"hcp-vdb","real":"/dev/vdb","wrapped":true},
            "snapshot_path":"/dev/hcp2",
            "store":{"path":"/var/lib/hcp/vdb.hcp2.cow","loop_device":"/dev/loop0","created_file":true,"size_bytes":1048576},
            "mount":null,"created_unix":1,"chunk_bytes":4096,"quota_bytes":1048576}"#;
        let s: Session = serde_json::from_str(text).unwrap();
        assert_eq!(s.autoextend, None);
        assert!(!serde_json::to_string(&s).unwrap().contains("autoextend"), "absent, not null");
    }
}
