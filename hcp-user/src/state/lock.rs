//! The lock that serialises every hcp command that changes sessions:
//! `/run/hcp/lock`, an exclusive `flock` held for the command's life.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::dirs::run_dir;
use super::private::{ensure_dir, owner_name, ROOT};
use crate::error::{Error, Result};

/// How long a command waits for another hcp's lock unless
/// `HCP_LOCK_TIMEOUT` (seconds) says otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

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
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::error::Kind;
    use crate::state::private::test_support::{assert_refused, me, mode, temp_dir};

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
}
