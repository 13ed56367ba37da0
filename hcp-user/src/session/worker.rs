//! A session's helper processes (`hcp __autoextend ID`, `hcp __record ID`):
//! started in a session of their own with their output in a log, known by
//! their command line (a pid alone could be reused), asked to stop with
//! SIGTERM, which they answer by finishing the step in progress, and killed
//! if they take too long.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a stop waits for a worker to finish its step and exit before it
/// kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts `hcp SUBCOMMAND ID`, its stdout and stderr to `log` (made 0600 in
/// a 0700 directory). The caller records the pid. The worker's stdin is a
/// pipe whose other end the returned `Child` holds: dropping it (or the
/// starter's exit, however it ends) is the worker's cue that its starter
/// is done ([`wait_for_starter`]).
pub fn spawn(subcommand: &str, id: &str, log: &Path, what: &str) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| Error::io(format!("finding hcp's own binary for {what}"), e))?;
    if let Some(dir) = log.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| Error::io(log.display(), e))?;
    let mut command = Command::new(exe);
    command.args([subcommand, id]).stdin(Stdio::piped()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours. In
    // a session of its own from its first instruction, the worker gets no
    // signal meant for the terminal hcp was started from.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    command.spawn().map_err(|e| Error::io(format!("starting {what}"), e))
}

/// Stops the worker `pid` (`hcp SUBCOMMAND ID`) if it runs, and waits until
/// it has exited.
pub fn stop(pid: i32, subcommand: &str, id: &str, what: &str) -> Result<()> {
    if !is_running(pid, subcommand, id) {
        return Ok(()); // exited already (or the pid is someone else's now)
    }
    for (signal, wait) in [(libc::SIGTERM, STOP_TIMEOUT), (libc::SIGKILL, Duration::from_secs(2))] {
        // SAFETY: kill has no memory effects; the pid was checked to be our
        // worker just now.
        unsafe { libc::kill(pid, signal) };
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if !is_running(pid, subcommand, id) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(Error::system(format!(
        "{what} of {id} (pid {pid}) does not exit even on SIGKILL: it is stuck in the kernel; retry later"
    )))
}

/// Stops a worker this process started (a failed `start` undoing itself),
/// as [`stop`] does, and reaps it.
pub fn stop_child(mut child: Child, what: &str) -> Result<()> {
    for (signal, wait) in [(libc::SIGTERM, STOP_TIMEOUT), (libc::SIGKILL, Duration::from_secs(2))] {
        // SAFETY: kill has no memory effects; the child is ours and not yet
        // reaped, so its pid cannot have been reused.
        unsafe { libc::kill(child.id() as i32, signal) };
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if child.try_wait().map_err(|e| Error::io(format!("waiting for {what}"), e))?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(Error::system(format!("{what} (pid {}) does not exit even on SIGKILL", child.id())))
}

/// A live `hcp SUBCOMMAND ID`, found among all processes: for a worker
/// whose pid was never recorded (its command was killed before it could).
pub fn find(subcommand: &str, id: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| is_running(*pid, subcommand, id))
}

/// Whether `pid` is a live `hcp SUBCOMMAND ID`. An exited worker whose
/// parent has not reaped it yet (a zombie) no longer runs.
pub fn is_running(pid: i32, subcommand: &str, id: &str) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
    is_worker_cmdline(&cmdline, subcommand, id) && process_state(&stat).is_some_and(|s| s != 'Z' && s != 'X')
}

/// `/proc/PID/cmdline` (NUL-separated) is `<exe> SUBCOMMAND ID`.
fn is_worker_cmdline(cmdline: &[u8], subcommand: &str, id: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.len() >= 3 && args[1] == subcommand.as_bytes() && args[2] == id.as_bytes()
}

/// The state letter of `/proc/PID/stat`: the first field after the command
/// name, which is in parentheses and may itself hold spaces and `)`.
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Set by SIGTERM (and SIGINT, SIGHUP) once [`on_stop_signals`] ran.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// For a worker's main: SIGTERM, SIGINT and SIGHUP ask it to stop
/// ([`stop_requested`]) instead of ending it mid-step.
pub fn on_stop_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(signal, on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

/// Whether the worker was asked to stop.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// One line of a worker's log (its stdout), timestamped.
pub fn log(line: &str) {
    use std::io::Write;
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{now} {line}");
    let _ = out.flush();
}

/// Waits until the process that started this worker has closed its end of
/// the worker's stdin (see [`spawn`]), or the worker is asked to stop.
/// Blocked in the kernel meanwhile: a start on a machine with one CPU
/// shares it with nothing of the worker's until the session is live.
pub fn wait_for_starter() {
    let mut fd = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
    while !stop_requested() {
        // SAFETY: one valid pollfd, for the duration of the call.
        match unsafe { libc::poll(&mut fd, 1, 100) } {
            0 => {} // the starter is still at work
            ready if ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            // Readable (EOF, or a stdin that is not our pipe: a worker
            // started by hand), hung up, or an error: nothing to wait for.
            _ => return,
        }
    }
}

/// Sleeps until `until`, waking early when asked to stop.
pub fn pause_until(until: Instant) {
    while !stop_requested() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(25).min(until.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_told_apart() {
        assert!(is_worker_cmdline(b"/usr/bin/hcp\0__autoextend\0hcp3\0", "__autoextend", "hcp3"));
        assert!(!is_worker_cmdline(b"/usr/bin/hcp\0__autoextend\0hcp31\0", "__autoextend", "hcp3"));
        assert!(!is_worker_cmdline(b"/usr/bin/hcp\0__record\0hcp3\0", "__autoextend", "hcp3"));
        assert!(!is_worker_cmdline(b"", "__autoextend", "hcp3"));
        assert_eq!(process_state("1234 (hcp) S 1 1234"), Some('S'));
        assert_eq!(process_state("1234 (a) b) Z 1 1234"), Some('Z'));
        assert_eq!(process_state(""), None);
        assert!(!is_running(i32::MAX, "__autoextend", "hcp1"), "no such process");
    }
}
