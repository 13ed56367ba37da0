//! The guard: a second process, started before the switch, that resumes the
//! origin and thaws its filesystem if hcp dies inside the switch (SIGKILL,
//! a crash) or the switch outlives its deadline (a hung kernel call).
//!
//! In-process cleanup (drop guards, blocked signals) covers errors, panics
//! and Ctrl-C, but nothing in a process survives SIGKILL. The guard is the
//! same `hcp` binary (`hcp __guard`), in its own session so a terminal's
//! signals do not reach it, holding the read end of a pipe whose write end
//! only hcp holds:
//!
//! - hcp writes `done` when the switch is over: the guard exits;
//! - the pipe reaches end-of-file without it (hcp died; the kernel closes
//!   a dead process's descriptors): the guard restores;
//! - the deadline passes first: the guard kills hcp (so it cannot race the
//!   restore), then restores.
//!
//! Restoring rolls the switch back: drop the origin's preloaded table and
//! resume it (its old table again, or the new one if the switch had
//! completed, which resume then leaves alone), then thaw. Resume comes first:
//! a thaw writes the superblock, which would wait on a suspended device. The
//! half-made session left behind is for `hcp recover`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::kernel::dm::device::Dm;

/// How long the switch may take before the guard aborts it, unless
/// `HCP_SWITCH_TIMEOUT` (seconds) says otherwise. The switch holds writers
/// for a FIFREEZE (writing back dirty data) and three dm ioctls: seconds
/// on a busy machine, never a minute.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// What the guard restores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// dm devices to resume, with their inactive tables dropped.
    pub resume: Vec<String>,
    /// Mount points to thaw, after the resumes.
    pub thaw: Vec<PathBuf>,
    /// A filesystem between its unmount and its mount again (`enroll
    /// --now`), to be mounted if nothing is.
    pub remount: Option<Remount>,
    pub deadline: Duration,
}

/// A filesystem to mount at `mount_point` unless one of `from` is mounted
/// there already: from the first of `from` that mounts. (Of a partition
/// and its pass-through mapping only one can be mounted: while the mapping
/// exists it holds the partition exclusively, so the order does not matter.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub flags: libc::c_ulong,
    pub data: String,
    pub from: Vec<PathBuf>,
}

impl Plan {
    /// The `hcp __guard` arguments of this plan.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["__guard".to_string(), "--deadline-ms".to_string(), self.deadline.as_millis().to_string()];
        args.extend(["--parent".to_string(), std::process::id().to_string()]);
        for name in &self.resume {
            args.extend(["--resume".to_string(), name.clone()]);
        }
        for path in &self.thaw {
            args.extend(["--thaw".to_string(), path.display().to_string()]);
        }
        if let Some(r) = &self.remount {
            args.extend(["--mount-at".to_string(), r.mount_point.display().to_string()]);
            args.extend(["--mount-type".to_string(), r.fs_type.clone()]);
            args.push(format!("--mount-flags={}", r.flags));
            args.push(format!("--mount-data={}", r.data));
            for from in &r.from {
                args.extend(["--mount-from".to_string(), from.display().to_string()]);
            }
        }
        args
    }
}

/// The deadline of a switch: `HCP_SWITCH_TIMEOUT` seconds, or the default.
pub fn deadline() -> Result<Duration> {
    match std::env::var("HCP_SWITCH_TIMEOUT") {
        Ok(s) => s
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| Error::usage(format!("HCP_SWITCH_TIMEOUT={s}: give a number of seconds above 0"))),
        Err(_) => Ok(DEFAULT_DEADLINE),
    }
}

/// hcp's end of a running guard.
pub struct Guard {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Guard {
    /// Starts the guard and waits until it is watching.
    pub fn spawn(plan: &Plan) -> Result<Guard> {
        let exe = std::env::current_exe().map_err(|e| Error::io("finding hcp's own binary for the guard", e))?;
        let mut child = Command::new(exe)
            .args(plan.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("starting the guard process", e))?;
        // The guard says `ready` once it watches the pipe, so the switch
        // never begins unguarded.
        let mut ready = [0u8; 6];
        let mut out = child.stdout.take().expect("piped");
        if out.read_exact(&mut ready).is_err() || &ready != b"ready\n" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::system("the guard process did not start"));
        }
        Ok(Guard { pipe: child.stdin.take(), child })
    }

    /// The switch is over: the guard exits without touching anything. An
    /// error if it had already restored (the deadline passed).
    pub fn disarm(mut self) -> Result<()> {
        let pipe = self.pipe.take();
        let told = pipe.map(|mut p| p.write_all(b"done\n").and_then(|()| p.flush()));
        let status = self.child.wait().map_err(|e| Error::io("waiting for the guard process", e))?;
        match (told, status.code()) {
            (Some(Ok(())), Some(0)) => Ok(()),
            _ => Err(Error::system(format!(
                "the switch outlived its deadline and the guard rolled it back (guard: {status}); \
                 run `hcp recover`"
            ))),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.pipe.take().is_some() {
            // Not disarmed (an error or a panic inside the switch): closing
            // the pipe makes the guard restore; wait for it, so that hcp
            // reports only after the origin is running again.
            let _ = self.child.wait();
        }
    }
}

/// The guard's side (`hcp __guard`): watches stdin until `done`, end of file
/// or the deadline. Returns the exit status: 0 disarmed, 3 restored.
pub fn serve(plan: &Plan, parent: i32) -> i32 {
    let started = Instant::now();
    let mut stdin = std::io::stdin().lock();
    // SAFETY: setsid has no preconditions; in a new session of its own, the
    // guard gets no signal meant for hcp's terminal.
    unsafe { libc::setsid() };
    println!("ready");
    let mut got = Vec::new();
    let restore_why = loop {
        let left = plan.deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            // hcp is stuck: stop it before restoring, so it cannot race us.
            // SAFETY: signalling the process that started us.
            unsafe { libc::kill(parent, libc::SIGKILL) };
            break format!("the switch outlived its {:?} deadline; hcp (pid {parent}) was killed", plan.deadline);
        }
        let mut fds = libc::pollfd { fd: stdin.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut fds, 1, ms) } <= 0 {
            continue; // timeout (checked above) or EINTR
        }
        let mut buf = [0u8; 16];
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break "hcp ended inside the switch".to_string(),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.starts_with(b"done\n") {
                    return 0;
                }
            }
        }
    };
    eprintln!(
        "hcp guard: {restore_why}: resuming {:?}, thawing {:?}, mounting {:?}",
        plan.resume,
        plan.thaw,
        plan.remount.as_ref().map(|r| &r.mount_point)
    );
    restore(plan);
    3
}

/// Mounts `r`'s filesystem unless it is mounted.
fn remount(r: &Remount) {
    let devs: Vec<crate::kernel::devnum::DevNum> =
        r.from.iter().filter_map(|p| crate::kernel::devnum::DevNum::of_block_device(p).ok()).collect();
    let table = crate::kernel::mountinfo::read().map(crate::kernel::mountinfo::MountTable);
    if table.is_ok_and(|t| t.mount_at(&r.mount_point).is_some_and(|m| devs.contains(&m.dev))) {
        return;
    }
    // A device that another guard is still resuming refuses mounts while
    // it is suspended (the kernel's "blockdev is frozen", EBUSY): tried
    // again for a while before giving up.
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut failed = Vec::new();
    loop {
        failed.clear();
        for from in &r.from {
            match crate::kernel::mount::mount(from, &r.mount_point, &r.fs_type, r.flags, &r.data) {
                Ok(()) => return eprintln!("hcp guard: mounted {} at {}", from.display(), r.mount_point.display()),
                Err(e) => failed.push(e),
            }
        }
        if Instant::now() > give_up || !failed.iter().any(|e| e.kind == crate::error::Kind::Busy) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed: Vec<&str> = failed.iter().map(|e| e.message()).collect();
    eprintln!(
        "hcp guard: {}; mount it by hand: mount -t {} -o {} {} {}",
        failed.join("; "),
        r.fs_type,
        if r.data.is_empty() { "defaults" } else { &r.data },
        r.from.first().map(|p| p.display().to_string()).unwrap_or_default(),
        r.mount_point.display()
    );
}

/// Resumes, then thaws, then mounts; every step is tried whatever the
/// others did.
fn restore(plan: &Plan) {
    match Dm::open() {
        Ok(dm) => {
            for name in &plan.resume {
                // No inactive table (none loaded, or the switch completed)
                // is not an error worth reporting.
                let _ = dm.clear_inactive(name);
                if let Err(e) = dm.resume(name) {
                    eprintln!("hcp guard: resuming {name}: {e}; resume it by hand: dmsetup resume {name}");
                }
            }
        }
        Err(e) => eprintln!("hcp guard: {e}; resume by hand: dmsetup resume {}", plan.resume.join(" ")),
    }
    for path in &plan.thaw {
        match crate::kernel::freeze::thaw_mount_point(path) {
            Ok(_) => {}
            Err(e) => eprintln!(
                "hcp guard: thawing {}: {e}; thaw it by hand: fsfreeze --unfreeze {}",
                path.display(),
                path.display()
            ),
        }
    }
    if let Some(r) = &plan.remount {
        remount(r);
    }
}
