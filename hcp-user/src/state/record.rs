//! Session records under `/run/hcp/sessions/`: one JSON file per session,
//! written atomically (write, fsync, rename) and trusted only as
//! [`super::private`] says.
//!
//! `/run` is a tmpfs, so records vanish on reboot together with the dm
//! devices they describe: sessions do not survive a reboot (nor did the
//! original's).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::counters::{CountersRecord, HistRecord};
use super::dirs::run_dir;
use super::private::{
    check_private_dir, ensure_private_dir, hostile, open_private_dir, parse_record, read_private_file,
    write_private_file, ROOT,
};
use crate::error::{Error, Result};
use crate::kernel::writeback::PreFlush;

/// The version of the record format below; bumped on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

fn sessions_dir() -> PathBuf {
    run_dir().join("sessions")
}

/// Whether `id` is a session name hcp makes: `hcp` and a number from 1,
/// without leading zeros. Nothing else is a session, whatever a file says.
pub fn is_session_id(id: &str) -> bool {
    id.strip_prefix("hcp").is_some_and(|n| {
        !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok()
    })
}

/// Where a session is in its life. A record that is not `Active` after its
/// command ended marks a half-made or half-removed session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Active,
    Removing,
    /// Its origin is being put back to the snapshot (`hcp rollback`): from
    /// this phase on the session only goes forward, through the merge, to
    /// its end; `rollback` below says how.
    #[serde(rename = "rolling-back")]
    RollingBack,
}

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
    /// The snapshot's point in time: the end of the switch (seconds since
    /// the Unix epoch, wall clock); None until then, and in records of
    /// older hcp. `created_unix` stays the command's start: it tells this
    /// session from a later one of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_unix: Option<f64>,
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
    /// Set with the phase `rolling-back`: what the rest of the rollback
    /// needs once the snapshot device is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRecord>,
}

impl Session {
    /// The devices a traced session's record names: those its figures are
    /// computed from.
    pub fn traced_devnums(&self) -> Vec<crate::kernel::devnum::DevNum> {
        let devices = self.trace.iter().flat_map(|t| &t.devices);
        devices.filter_map(|d| d.devnum.parse().ok()).collect()
    }
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

/// A rollback under way (see `session::rollback`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// The origin's table during the merge, the snapshot's own line with
    /// its target renamed: `0 <len> snapshot-merge <real> <store> P <chunk>`.
    /// Loading it again continues an interrupted merge from the store.
    pub merge_table: String,
    /// Sectors of origin data the store held when the rollback began: the
    /// merge's progress is measured against it.
    pub data_sectors: u64,
    /// When the rollback began (seconds since the Unix epoch).
    pub started_unix: f64,
    /// The snapshot device has been removed: there is no way back.
    pub snapshot_removed: bool,
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
    pub at_start: Option<CountersRecord>,
    /// The switch, on hcp's monotonic clock.
    pub window: Option<WindowRecord>,
    /// Where `remove` writes the final report (`--report`); None: under
    /// `/var/lib/hcp/reports/`.
    #[serde(default)]
    pub report: Option<PathBuf>,
    /// The recorder of the session's history; None for a session traced
    /// without one (older hcp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder: Option<RecorderRecord>,
}

/// The process that records a traced session's history (see
/// `session::recorder`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecorderRecord {
    /// `hcp __record hcpN`; None until it runs.
    pub pid: Option<i32>,
    /// Seconds between two of its reads.
    pub interval_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracedDevice {
    /// `origin`, `real`, `store` or `snapshot`.
    pub role: String,
    /// `MAJOR:MINOR`
    pub devnum: String,
    pub path: PathBuf,
}

/// The switch, timed on hcp's monotonic clock around its calls, and by the
/// kernel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// The writeback before the freeze; null for a session started before
    /// hcp had it, or traced after its start.
    #[serde(default)]
    pub pre_flush: Option<PreFlush>,
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
    if !check_private_dir(&run_dir())? {
        return Ok(Vec::new());
    }
    load_all_in(&sessions_dir(), ROOT)
}

/// Every record in `dir`, which must be owned by `owner` as every record in
/// it must.
fn load_all_in(dir: &Path, owner: u32) -> Result<Vec<Session>> {
    if open_private_dir(dir, owner, false)?.is_none() {
        return Ok(Vec::new());
    }
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
    let mut sessions = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir.display(), e))?.path();
        // (A write's temporary file, `.hcpN.json.tmp`, is not a record.)
        if path.extension().is_some_and(|x| x == "json") {
            sessions.extend(load(&path, owner)?);
        }
    }
    sessions.sort_by_key(|s| session_number(&s.id));
    Ok(sessions)
}

/// One record; `None` if it went away since its directory was read (a
/// concurrent remove).
fn load(path: &Path, owner: u32) -> Result<Option<Session>> {
    const WHAT: &str = "session record";
    let hostile = |problem: String| hostile(WHAT, path, problem);
    let Some(text) = read_private_file(path, owner, WHAT)? else {
        return Ok(None);
    };
    let stem = path.file_stem().and_then(OsStr::to_str).unwrap_or_default();
    if !is_session_id(stem) {
        return Err(hostile("is not named after an hcp session (hcpN.json)".into()));
    }
    let session: Session = parse_record(&text, RECORD_VERSION, hostile)?;
    if session.id != stem {
        return Err(hostile(format!("describes session {:?}, not {stem}", session.id)));
    }
    if session.snapshot_path != Path::new("/dev").join(&session.id) {
        return Err(hostile(format!(
            "names {} as its snapshot, not /dev/{}",
            session.snapshot_path.display(),
            session.id
        )));
    }
    Ok(Some(session))
}

/// The record of session `id`, if there is one (checked as every record).
pub fn load_one(id: &str) -> Result<Option<Session>> {
    load(&sessions_dir().join(format!("{id}.json")), ROOT)
}

/// Writes a record so that a reader (or a crash) sees the old or the new
/// one, never a torn one.
pub fn save(session: &Session) -> Result<()> {
    ensure_private_dir(&run_dir())?;
    save_in(&sessions_dir(), ROOT, session)
}

fn save_in(dir: &Path, owner: u32, session: &Session) -> Result<()> {
    if !is_session_id(&session.id) {
        return Err(Error::system(format!("refusing to write a record for {:?}, not an hcp session", session.id)));
    }
    let text = serde_json::to_string_pretty(session).expect("records serialise");
    write_private_file(dir, owner, &format!("{}.json", session.id), text.as_bytes(), "session record")
}

pub fn delete(id: &str) -> Result<()> {
    if !is_session_id(id) {
        return Err(Error::system(format!("refusing to delete a record for {id:?}, not an hcp session")));
    }
    // unlink never follows a symlink.
    let path = sessions_dir().join(format!("{id}.json"));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing session record {}", path.display()), e)),
    }
}

/// Where a rollback's record is kept beside `/run`: `/run` goes with a
/// reboot, and a merge the reboot interrupted must still be found and
/// finished, its origin being half merged until then. A copy of the
/// session's record as the rollback began, deleted once the origin has its
/// table back.
fn rollbacks_dir() -> PathBuf {
    Path::new(super::dirs::DEFAULT_STORE_DIR).join("rollbacks")
}

/// Keeps `session`'s record (phase `rolling-back`) where it survives a
/// reboot.
pub fn save_rollback(session: &Session) -> Result<()> {
    ensure_private_dir(Path::new(super::dirs::DEFAULT_STORE_DIR))?;
    save_in(&rollbacks_dir(), ROOT, session)
}

/// Every rollback kept by [`save_rollback`], by session number.
pub fn load_rollbacks() -> Result<Vec<Session>> {
    if !check_private_dir(Path::new(super::dirs::DEFAULT_STORE_DIR))? {
        return Ok(Vec::new());
    }
    load_all_in(&rollbacks_dir(), ROOT)
}

pub fn delete_rollback(id: &str) -> Result<()> {
    if !is_session_id(id) {
        return Err(Error::system(format!("refusing to delete a rollback record for {id:?}, not an hcp session")));
    }
    let path = rollbacks_dir().join(format!("{id}.json"));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing rollback record {}", path.display()), e)),
    }
}

/// Rollbacks a reboot interrupted: kept, with no session record of the
/// same session in `/run` (same name and start time).
pub fn interrupted_rollbacks(sessions: &[Session]) -> Result<Vec<Session>> {
    let same = |a: &Session, b: &Session| a.id == b.id && a.created_unix == b.created_unix;
    Ok(load_rollbacks()?.into_iter().filter(|r| !sessions.iter().any(|s| same(s, r))).collect())
}

/// `hcp7` -> 7 (records of other names sort last).
pub fn session_number(id: &str) -> u32 {
    id.strip_prefix("hcp").and_then(|n| n.parse().ok()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::state::private::test_support::{assert_refused, chown, me, mode, temp_dir};
    use crate::state::private::MAX_RECORD_BYTES;

    #[test]
    fn session_numbers_sort_numerically() {
        assert_eq!(session_number("hcp0"), 0);
        assert_eq!(session_number("hcp12"), 12);
        assert_eq!(session_number("other"), u32::MAX);
    }

    #[test]
    fn only_hcp_and_a_number_is_a_session_id() {
        for id in ["hcp1", "hcp12", "hcp4294967295"] {
            assert!(is_session_id(id), "{id}");
        }
        for id in ["", "hcp", "hcp0", "hcp01", "hcp-1", "hcp1;reboot", "../../etc", "hcp1\n", "HCP1", "hcp4294967296"] {
            assert!(!is_session_id(id), "{id:?}");
        }
    }

    fn sample(id: &str) -> Session {
        Session {
            version: RECORD_VERSION,
            id: id.into(),
            phase: Phase::Active,
            origin: Origin {
                path: "/dev/mapper/vg0-data".into(),
                dm_name: "vg0-data".into(),
                real: "vg0-data-real".into(),
                wrapped: false,
            },
            snapshot_path: Path::new("/dev").join(id),
            store: Store {
                path: "/var/lib/hcp/vg0-data.hcp1.cow".into(),
                loop_device: Some("/dev/loop3".into()),
                created_file: true,
                size_bytes: 1 << 30,
            },
            mount: Some(MountRecord { path: "/var/hcp/vg0-data_hcp1".into(), read_only: false, created_dir: true }),
            created_unix: 1_800_000_000,
            snapshot_unix: None,
            chunk_bytes: 4096,
            quota_bytes: 1 << 30,
            trace: None,
            autoextend: Some(AutoextendRecord {
                threshold_percent: 80,
                growth_percent: 20,
                pid: Some(4242),
                log: "/run/hcp/autoextend/hcp1.log".into(),
            }),
            rollback: None,
        }
    }

    #[test]
    fn a_rollback_round_trips_with_its_phase() {
        let mut s = sample("hcp2");
        s.phase = Phase::RollingBack;
        s.rollback = Some(RollbackRecord {
            merge_table: "0 262144 snapshot-merge 254:1 7:3 P 8".into(),
            data_sectors: 131_072,
            started_unix: 1_800_000_100.5,
            snapshot_removed: true,
        });
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"phase\":\"rolling-back\""), "{text}");
        assert_eq!(serde_json::from_str::<Session>(&text).unwrap(), s);
        // Records written before rollbacks existed have no such field.
        let old = serde_json::to_string(&sample("hcp3")).unwrap();
        assert!(!old.contains("rollback"), "{old}");
    }

    #[test]
    fn records_round_trip_through_json() {
        let s = sample("hcp1");
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"phase\":\"active\""), "{text}");
        assert_eq!(serde_json::from_str::<Session>(&text).unwrap(), s);
    }

    #[test]
    fn records_are_saved_private_and_read_back() {
        let dir = temp_dir("records").join("sessions");
        for id in ["hcp2", "hcp10", "hcp1"] {
            save_in(&dir, me(), &sample(id)).unwrap();
        }
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("hcp1.json")), 0o600);
        let ids: Vec<String> = load_all_in(&dir, me()).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["hcp1", "hcp2", "hcp10"]);
        // A crashed write's temporary file is not a record, and is replaced.
        fs::write(dir.join(".hcp3.json.tmp"), b"{").unwrap();
        assert_eq!(load_all_in(&dir, me()).unwrap().len(), 3);
        save_in(&dir, me(), &sample("hcp3")).unwrap();
        assert_eq!(load_all_in(&dir, me()).unwrap().len(), 4);
        assert!(save_in(&dir, me(), &sample("../x")).is_err(), "only hcpN records are written");
        assert!(load_all_in(&dir.join("missing"), me()).unwrap().is_empty());
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn hostile_records_are_refused_and_never_followed() {
        let elsewhere = temp_dir("elsewhere");
        let good = elsewhere.join("hcp1.json");
        fs::write(&good, serde_json::to_vec(&sample("hcp1")).unwrap()).unwrap();
        let record = |s: &Session| serde_json::to_vec(s).unwrap();
        let mut wrong_version = serde_json::to_value(sample("hcp1")).unwrap();
        wrong_version["version"] = 99.into();
        let mut bad_snapshot = sample("hcp1");
        bad_snapshot.snapshot_path = "/etc/passwd".into();
        let mut huge = record(&sample("hcp1"));
        huge.resize(MAX_RECORD_BYTES as usize + 1, b' ');

        // (file name, how to make it, what the refusal says)
        type Make = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Make, &str)> = vec![
            ("hcp1.json", Box::new(move |p| std::os::unix::fs::symlink(&good, p).unwrap()), "is a symlink"),
            (
                "hcp1.json",
                Box::new(|p| std::os::unix::fs::symlink("/nonexistent/hcp1.json", p).unwrap()),
                "is a symlink",
            ),
            ("hcp1.json", Box::new(|p| fs::create_dir(p).unwrap()), "is not a regular file"),
            (
                "hcp1.json",
                Box::new(|p| {
                    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                    // SAFETY: a valid NUL-terminated path.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                }),
                "is not a regular file",
            ),
            (
                "hcp1.json",
                Box::new(move |p| {
                    fs::write(p, record(&sample("hcp1"))).unwrap();
                    fs::set_permissions(p, fs::Permissions::from_mode(0o666)).unwrap();
                }),
                "writable by group or others",
            ),
            ("hcp1.json", Box::new(move |p| fs::write(p, &huge).unwrap()), "is larger than"),
            ("hcp1.json", Box::new(|p| fs::write(p, b"{\"version\": 1, \"id\": ").unwrap()), "is not valid JSON"),
            ("hcp1.json", Box::new(|p| fs::write(p, b"").unwrap()), "is not valid JSON"),
            (
                "hcp1.json",
                Box::new(move |p| fs::write(p, serde_json::to_vec(&wrong_version).unwrap()).unwrap()),
                "format version 99",
            ),
            ("hcp1.json", Box::new(|p| fs::write(p, b"{\"version\": 1}").unwrap()), "is not such a record"),
            (
                "hcp7.json",
                Box::new(move |p| fs::write(p, record(&sample("hcp1"))).unwrap()),
                "describes session \"hcp1\"",
            ),
            ("evil.json", Box::new(move |p| fs::write(p, record(&sample("hcp1"))).unwrap()), "is not named after"),
            ("hcp01.json", Box::new(move |p| fs::write(p, record(&sample("hcp01"))).unwrap()), "is not named after"),
            (
                "hcp1.json",
                Box::new(move |p| fs::write(p, record(&bad_snapshot)).unwrap()),
                "names /etc/passwd as its snapshot",
            ),
        ];
        for (name, make, problem) in cases {
            let dir = temp_dir("hostile");
            let path = dir.join(name);
            make(&path);
            assert_refused(load_all_in(&dir, me()), &path, problem, "inspect it and delete it");
        }

        // Another user's record (a root test can give one away; otherwise
        // this user's own record is another user's to an hcp that expects
        // someone else).
        let dir = temp_dir("foreign");
        let path = dir.join("hcp1.json");
        fs::write(&path, record(&sample("hcp1"))).unwrap();
        if me() == 0 {
            chown(&path, 65534);
            assert_refused(load_all_in(&dir, 0), &path, "is owned by uid 65534, not root", "delete it");
        } else {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            assert_refused(load(&path, me() + 1), &path, "is owned by uid", "delete it");
        }
        // The directory itself, symlinked.
        let link = temp_dir("link").join("sessions");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert_refused(load_all_in(&link, me()), &link, "is a symlink", "remove the link");
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
