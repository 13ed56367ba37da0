//! Session records under `/run/hcp/`: one JSON file per session, written
//! atomically (write, fsync, rename), and a lock that serialises every hcp
//! command that changes sessions.
//!
//! `/run` is a tmpfs, so records vanish on reboot together with the dm
//! devices they describe: sessions do not survive a reboot (nor did the
//! original's).
//!
//! Records say which devices to remove and which files to delete, so hcp
//! trusts only what root alone could have written: its directories
//! (`/run/hcp`, `/run/hcp/sessions`, and the default store and mount
//! directories) must be real directories owned by root that no one else can
//! write, and a record must be a regular file of root's, opened without
//! following a symlink and checked on the opened descriptor (never by a
//! separate `stat` that a swap could outrun), of sane size, well formed, of
//! this format version, and named after the session it describes. Anything
//! else is refused with its path and what to do, and never followed.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The version of the record format below; bumped on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

/// The owner of every directory and file hcp trusts.
pub(crate) const ROOT: u32 = 0;

/// The largest record hcp reads. Real ones are a few KiB; the cap keeps a
/// planted giant file from being read into memory.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// How long a command waits for another hcp's lock unless
/// `HCP_LOCK_TIMEOUT` (seconds) says otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where records and the lock live.
pub fn run_dir() -> PathBuf {
    PathBuf::from("/run/hcp")
}

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

/// Checks one of hcp's own directories (`/run/hcp`, the default store and
/// mount directories) without changing anything; returns whether it exists.
/// A symlink, a non-directory, one owned by another user or one that group
/// or others can write is refused, naming the path and the fix.
pub fn check_private_dir(path: &Path) -> Result<bool> {
    Ok(open_private_dir(path, ROOT, false)?.is_some())
}

/// Makes one of hcp's own directories ready: created 0700 if missing,
/// refused as [`check_private_dir`] says, tightened to 0700 if it is root's
/// and only readable by others.
pub fn ensure_private_dir(path: &Path) -> Result<()> {
    ensure_dir(path, ROOT)
}

fn ensure_dir(path: &Path, owner: u32) -> Result<()> {
    let dir = open_private_dir(path, owner, true)?.expect("created");
    let mode = dir.metadata().map_err(|e| Error::io(path.display(), e))?.mode();
    if mode & 0o077 != 0 {
        // Tightening is safe here and refusing would only be a chore: the
        // directory is the owner's (root's), and no one else could write
        // into it (that is refused above), so nothing in it is a stranger's;
        // hcp itself made these 0755 before it made them 0700. A directory
        // others could write is never "fixed" by a chmod: they may have
        // planted something in it already.
        dir.set_permissions(fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("making {} private (chmod 0700)", path.display()), e))?;
    }
    Ok(())
}

/// Opens directory `path` (creating it 0700 first when `create` and it is
/// missing) and checks it on the opened descriptor; `None` when it does not
/// exist and was not to be made.
fn open_private_dir(path: &Path, owner: u32, create: bool) -> Result<Option<File>> {
    let shown = path.display();
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
            return Err(Error::refused(format!(
                "{shown} is a symlink (to {target}): hcp keeps its state and files only in a real directory of \
                 root's; remove the link (rm {shown}) and run hcp again"
            )));
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(Error::refused(format!(
                "{shown} is not a directory: hcp keeps its state and files there; move it away and run hcp again"
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Ok(None);
            }
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            }
            match fs::DirBuilder::new().mode(0o700).create(path) {
                Ok(()) => {}
                // Another hcp made it just now: checked below like any other.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("creating {shown}"), e)),
            }
            return open_private_dir(path, owner, false);
        }
        Err(e) => return Err(Error::io(shown, e)),
    }
    // O_NOFOLLOW: a symlink swapped in since the look above fails here.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(format!("opening {shown}"), e))?;
    let meta = dir.metadata().map_err(|e| Error::io(&shown, e))?;
    if meta.uid() != owner {
        return Err(Error::refused(format!(
            "{shown} is owned by uid {}, not {}: hcp will not use a directory another user controls; inspect it, \
             remove it and run hcp again",
            meta.uid(),
            owner_name(owner)
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::refused(format!(
            "{shown} is writable by group or others (mode {:04o}): anyone could plant files in it; inspect it, then \
             `chmod 0700 {shown}` (or remove it) and run hcp again",
            meta.mode() & 0o7777
        )));
    }
    Ok(Some(dir))
}

fn owner_name(uid: u32) -> String {
    if uid == ROOT {
        "root".to_string()
    } else {
        format!("uid {uid}")
    }
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

/// Refuses a file of hcp's state (`what`: "session record"), naming it, the
/// problem and the fix.
pub(crate) fn hostile(what: &str, path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::refused(format!(
        "{what} {} {problem}: hcp does not use it; inspect it and delete it, then run hcp again",
        path.display()
    ))
}

/// The bytes of one file of hcp's state, trusted only if `owner` alone
/// could have written it (see the module's header); `None` if it does not
/// exist (or went away since its directory was read: a concurrent remove).
/// `what` names it in errors.
pub(crate) fn read_private_file(path: &Path, owner: u32, what: &str) -> Result<Option<Vec<u8>>> {
    let hostile = |problem: String| hostile(what, path, problem);
    // O_NOFOLLOW: a symlink fails with ELOOP instead of being followed.
    // O_NONBLOCK: opening a planted FIFO must not wait for a writer.
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(hostile("is a symlink".into())),
        // A socket.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Err(hostile("is not a regular file".into())),
        Err(e) => return Err(Error::io(format!("opening {what} {}", path.display()), e)),
    };
    // Checked on the descriptor just opened, so what is read is what was
    // checked.
    let meta = file.metadata().map_err(|e| Error::io(path.display(), e))?;
    if !meta.is_file() {
        return Err(hostile("is not a regular file".into()));
    }
    if meta.uid() != owner {
        return Err(hostile(format!("is owned by uid {}, not {}", meta.uid(), owner_name(owner))));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(hostile(format!("is writable by group or others (mode {:04o})", meta.mode() & 0o7777)));
    }
    let too_big = || hostile(format!("is larger than {} KiB, far more than any record", MAX_RECORD_BYTES >> 10));
    if meta.len() > MAX_RECORD_BYTES {
        return Err(too_big());
    }
    let mut text = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))?;
    if text.len() as u64 > MAX_RECORD_BYTES {
        return Err(too_big());
    }
    Ok(Some(text))
}

/// A record of format `version` from JSON `text`; anything else is refused
/// through `hostile`.
pub(crate) fn parse_record<T: serde::de::DeserializeOwned>(
    text: &[u8],
    version: u32,
    hostile: impl Fn(String) -> Error,
) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| hostile(format!("is not valid JSON ({e})")))?;
    let found = value.get("version").and_then(serde_json::Value::as_u64);
    if found != Some(u64::from(version)) {
        let found = found.map_or_else(|| "none".to_string(), |v| v.to_string());
        return Err(hostile(format!("has format version {found}, and this hcp reads {version}")));
    }
    serde_json::from_value(value).map_err(|e| hostile(format!("is not such a record ({e})")))
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

/// Writes `dir/name` (0600, in a private directory made if missing) so that
/// a reader, or a crash, sees the old or the new file, never a torn one.
pub(crate) fn write_private_file(dir: &Path, owner: u32, name: &str, text: &[u8], what: &str) -> Result<()> {
    ensure_dir(dir, owner)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        // A leftover of a crashed write goes first: the new one is made
        // with O_EXCL, which never follows a symlink either.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| Error::io(format!("writing {what} {}", path.display()), e))
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
    /// Takes the lock, waiting for another hcp that holds it up to
    /// `HCP_LOCK_TIMEOUT` seconds (default 30; 0 fails at once), as LVM's
    /// commands queue on their locks: an operator may well start several
    /// hcp at once. Then fails naming the process that holds it.
    ///
    /// Every command takes it before it changes anything, so no hcp ever
    /// waits here with a filesystem frozen.
    pub fn acquire() -> Result<Lock> {
        Lock::acquire_in(&run_dir(), ROOT, lock_timeout()?)
    }

    fn acquire_in(dir: &Path, owner: u32, timeout: Duration) -> Result<Lock> {
        ensure_dir(dir, owner)?;
        let path = dir.join("lock");
        let shown = path.display();
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::refused(format!(
                    "lock file {shown} is a symlink: hcp never follows one; delete it (rm {shown}) and run hcp again"
                )))
            }
            // A directory (EISDIR for a write open) or a socket (ENXIO).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::ENXIO)) => {
                return Err(Error::refused(format!(
                    "lock file {shown} is not a regular file: hcp does not use it; delete it (rm -r {shown}) and run \
                     hcp again"
                )))
            }
            Err(e) => return Err(Error::io(format!("opening lock file {shown}"), e)),
        };
        let meta = file.metadata().map_err(|e| Error::io(&shown, e))?;
        let problem = if !meta.is_file() {
            Some("is not a regular file".to_string())
        } else if meta.uid() != owner {
            Some(format!("is owned by uid {}, not {}", meta.uid(), owner_name(owner)))
        } else if meta.mode() & 0o022 != 0 {
            Some(format!("is writable by group or others (mode {:04o})", meta.mode() & 0o7777))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::refused(format!(
                "lock file {shown} {problem}: hcp does not use it; delete it (rm {shown}) and run hcp again"
            )));
        }
        if meta.mode() & 0o077 != 0 {
            // Root's and only readable by others: tightened, as the
            // directories are (see `ensure_dir`).
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(format!("making {shown} private (chmod 0600)"), e))?;
        }
        // Polled rather than a blocking flock under a timer: a timer needs
        // a signal handler (SIGALRM) in a process that also blocks signals
        // around the switch, and a blocking flock in a helper thread cannot
        // be called off. A waiter notices a release within one poll.
        const POLL: Duration = Duration::from_millis(20);
        let began = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(format!("locking {shown}"), err));
            }
            let waited = began.elapsed();
            if waited >= timeout {
                let mut holder = [0u8; 16];
                let n = file.read_at(&mut holder, 0).unwrap_or(0);
                let holder = std::str::from_utf8(&holder[..n]).unwrap_or_default().trim();
                // The pid written by the last hcp to take the lock: the
                // holder's only if that process is an hcp still running
                // (anything may flock the file).
                let waited = if timeout.is_zero() {
                    String::new()
                } else {
                    format!(" (waited {:.0} s; HCP_LOCK_TIMEOUT=SECONDS waits longer)", waited.as_secs_f64())
                };
                return Err(Error::busy(match holder.parse::<u32>() {
                    Ok(pid) if is_hcp_process(pid) => format!(
                        "another hcp command (pid {pid}) is changing sessions: retry when it has finished{waited}"
                    ),
                    _ => format!(
                        "{shown} is held by a process that is not a running hcp (`fuser -v {shown}` names it): \
                         retry when it has let go{waited}"
                    ),
                }));
            }
            std::thread::sleep(POLL.min(timeout - waited));
        }
        file.set_len(0)
            .and_then(|()| file.write_all_at(std::process::id().to_string().as_bytes(), 0))
            .map_err(|e| Error::io(&shown, e))?;
        Ok(Lock { _file: file })
    }
}

/// Whether `pid` is a running hcp.
fn is_hcp_process(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "hcp")
}

/// The pid of the hcp command changing sessions now, if one is: a reader
/// that takes no lock (`list`) tells a start in progress from one that
/// died this way.
pub fn lock_holder() -> Option<String> {
    let path = run_dir().join("lock");
    // As `Lock::acquire`: never through a symlink, never blocked on a FIFO.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path).ok()?;
    // SAFETY: flock on a file descriptor we own; a shared lock is released
    // with the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return None;
    }
    Some(fs::read_to_string(&path).unwrap_or_default().trim().to_string())
}

/// How long to wait for the lock: `HCP_LOCK_TIMEOUT` seconds, or the default.
pub fn lock_timeout() -> Result<Duration> {
    parse_lock_timeout(std::env::var("HCP_LOCK_TIMEOUT").ok().as_deref())
}

fn parse_lock_timeout(value: Option<&str>) -> Result<Duration> {
    let Some(text) = value else { return Ok(DEFAULT_LOCK_TIMEOUT) };
    text.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64).ok_or_else(
        || {
            Error::usage(format!(
                "HCP_LOCK_TIMEOUT={text}: give a number of seconds to wait for another hcp (0 fails at once)"
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

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
            chunk_bytes: 4096,
            quota_bytes: 1 << 30,
            trace: None,
            autoextend: Some(AutoextendRecord {
                threshold_percent: 80,
                growth_percent: 20,
                pid: Some(4242),
                log: "/run/hcp/autoextend/hcp1.log".into(),
            }),
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let s = sample("hcp1");
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"phase\":\"active\""), "{text}");
        assert_eq!(serde_json::from_str::<Session>(&text).unwrap(), s);
    }

    /// A fresh directory of the test's own (no tempfile crate here).
    fn temp_dir(name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hcp-state-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn me() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn chown(path: &Path, uid: u32) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, uid) }, 0, "chown {}", path.display());
    }

    /// A refusal: exit 5, one line naming `path`, the problem and a fix.
    #[track_caller]
    fn assert_refused<T>(result: Result<T>, path: &Path, problem: &str, fix: &str) {
        let Err(err) = result else { panic!("{} was accepted", path.display()) };
        assert_eq!(err.kind, Kind::Refused, "{err}");
        let text = err.message();
        assert!(text.contains(&path.display().to_string()), "names {}: {text}", path.display());
        assert!(text.contains(problem), "says {problem:?}: {text}");
        assert!(text.contains(fix), "says {fix:?}: {text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn private_dirs_are_made_0700_and_tightened_but_never_taken_over() {
        let base = temp_dir("dirs");
        let dir = base.join("new");
        assert!(open_private_dir(&dir, me(), false).unwrap().is_none(), "a missing directory is not made by a check");
        ensure_dir(&dir, me()).unwrap();
        assert_eq!(mode(&dir), 0o700);

        // Ours and only readable by others (an older hcp's 0755): a check
        // changes nothing, a use tightens it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(open_private_dir(&dir, me(), false).unwrap().is_some());
        assert_eq!(mode(&dir), 0o755);
        ensure_dir(&dir, me()).unwrap();
        assert_eq!(mode(&dir), 0o700);

        for writable in [0o777, 0o770, 0o1777] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(writable)).unwrap();
            assert_refused(ensure_dir(&dir, me()), &dir, "writable by group or others", "chmod 0700");
            assert_eq!(mode(&dir), writable, "left as it was");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();

        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_refused(ensure_dir(&link, me()), &link, "is a symlink", "remove the link");
        assert_refused(open_private_dir(&link, me(), false), &link, "is a symlink", "remove the link");
        let dangling = base.join("dangling");
        std::os::unix::fs::symlink(base.join("nowhere"), &dangling).unwrap();
        assert_refused(ensure_dir(&dangling, me()), &dangling, "is a symlink", "remove the link");
        assert!(!base.join("nowhere").exists(), "a dangling link's target is never made");

        let file = base.join("file");
        fs::write(&file, b"x").unwrap();
        assert_refused(ensure_dir(&file, me()), &file, "is not a directory", "move it away");

        // Another user's: refused whatever its mode.
        assert_refused(ensure_dir(&dir, me() + 1), &dir, "is owned by uid", "remove it");
        assert_eq!(mode(&dir), 0o700);
        fs::remove_dir_all(&base).unwrap();
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
    fn the_lock_is_waited_for_up_to_the_timeout() {
        let dir = temp_dir("lock");
        let held = Lock::acquire_in(&dir, me(), Duration::ZERO).unwrap();
        assert_eq!(mode(&dir.join("lock")), 0o600);
        assert_eq!(fs::read_to_string(dir.join("lock")).unwrap(), std::process::id().to_string());

        let began = Instant::now();
        let err = Lock::acquire_in(&dir, me(), Duration::ZERO).err().expect("busy");
        assert!(began.elapsed() < Duration::from_millis(200), "0 fails at once");
        assert_eq!(err.kind, Kind::Busy, "{err}");
        // The holder (this test) is not an hcp process: its pid is not
        // passed off as an hcp command's.
        let pid = std::process::id();
        assert!(!err.message().contains(&format!("pid {pid}")), "{err}");
        assert!(err.message().contains("is held by a process that is not a running hcp"), "{err}");
        assert!(!err.message().contains("waited"), "{err}");

        let began = Instant::now();
        let err = Lock::acquire_in(&dir, me(), Duration::from_millis(300)).err().expect("busy");
        assert!(began.elapsed() >= Duration::from_millis(300), "waited the timeout");
        assert!(err.message().contains("HCP_LOCK_TIMEOUT"), "{err}");

        // Released while a second waits: it gets the lock.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let began = Instant::now();
        let _second = Lock::acquire_in(&dir, me(), Duration::from_secs(10)).expect("the lock once released");
        assert!(began.elapsed() >= Duration::from_millis(150) && began.elapsed() < Duration::from_secs(5));
        release.join().unwrap();
    }

    #[test]
    fn a_hostile_lock_file_is_refused() {
        let dir = temp_dir("hostile-lock");
        let lock = dir.join("lock");
        std::os::unix::fs::symlink("/etc/passwd", &lock).unwrap();
        assert_refused(Lock::acquire_in(&dir, me(), Duration::ZERO), &lock, "is a symlink", "delete it");
        fs::remove_file(&lock).unwrap();
        fs::create_dir(&lock).unwrap();
        assert_refused(Lock::acquire_in(&dir, me(), Duration::ZERO), &lock, "is not a regular file", "delete it");
        fs::remove_dir(&lock).unwrap();
        fs::write(&lock, b"").unwrap();
        fs::set_permissions(&lock, fs::Permissions::from_mode(0o666)).unwrap();
        assert_refused(Lock::acquire_in(&dir, me(), Duration::ZERO), &lock, "writable by group or others", "delete it");
        // Only readable by others: root's own, tightened.
        fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).unwrap();
        drop(Lock::acquire_in(&dir, me(), Duration::ZERO).unwrap());
        assert_eq!(mode(&lock), 0o600);
        // The directory's checks apply too.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert_refused(Lock::acquire_in(&dir, me(), Duration::ZERO), &dir, "writable by group or others", "chmod");
    }

    #[test]
    fn the_lock_timeout_is_seconds() {
        assert_eq!(parse_lock_timeout(None).unwrap(), DEFAULT_LOCK_TIMEOUT);
        assert_eq!(parse_lock_timeout(Some("2.5")).unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_lock_timeout(Some("0")).unwrap(), Duration::ZERO);
        for bad in ["abc", "-1", "inf", "NaN", ""] {
            let err = parse_lock_timeout(Some(bad)).unwrap_err();
            assert_eq!(err.kind, Kind::Usage);
            assert!(err.message().contains("HCP_LOCK_TIMEOUT") && err.message().contains("give a number"), "{err}");
        }
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
