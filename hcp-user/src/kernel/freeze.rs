//! Filesystem freeze (`FIFREEZE`) with a thaw that cannot be forgotten.
//!
//! A snapshot of a mounted filesystem is consistent only if the filesystem
//! is quiesced when the snapshot is taken: freezing flushes dirty data and
//! the journal and holds new writes until the thaw. A filesystem left frozen
//! hangs every writer on it, so [`Frozen`] thaws on drop (an error or a
//! panic) and blocks the usual termination signals while the filesystem is
//! frozen. SIGKILL (and SIGSTOP) cannot be blocked; a separate guard process
//! that thaws when hcp dies covers those.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::kernel::mountinfo::{self, MountTable};
use crate::kernel::signals::SignalBlock;

// The ioctl numbers are shared with the kernel-side freeze tracer, which
// must recognise the same calls.
use hcp_common::freeze::{FIFREEZE, FITHAW};

/// A frozen filesystem; thawed by [`Frozen::thaw`] or, failing that, on drop.
///
/// Holds a [`SignalBlock`] from before the freeze until after the thaw, so
/// Ctrl-C or `kill` between the two takes effect only once the filesystem is
/// thawed. Like the block, it must be thawed or dropped on the thread that
/// froze.
pub struct Frozen {
    mount_point: PathBuf,
    /// The mount point directory, open; None once thawed.
    dir: Option<File>,
    /// When FIFREEZE was called: new writes are held from then on, while it
    /// flushes what is dirty.
    pub freeze_started: Instant,
    /// How long the FIFREEZE call took. Most of it is the filesystem writing
    /// back dirty data and its journal; writers are already held back during
    /// it, so the time they stall is this plus what [`Frozen::thaw`] returns.
    pub freeze_call: Duration,
    // Last, so it is dropped after Drop::drop has thawed.
    _signals: SignalBlock,
}

impl Frozen {
    /// Freezes the filesystem mounted at `mount_point`.
    ///
    /// `mount_point` must be where a filesystem is mounted (a bind mount
    /// counts): FIFREEZE acts on whatever filesystem holds the directory, and
    /// a mistyped path inside the root filesystem would freeze that.
    pub fn freeze(mount_point: &Path) -> Result<Frozen> {
        let signals = SignalBlock::new()?;
        let dir = open_mount_point(mount_point)?;
        check_mount_root(&dir, mount_point)?;

        let start = Instant::now();
        // SAFETY: FIFREEZE takes no argument.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE as libc::Ioctl, 0) };
        let freeze_call = start.elapsed();
        if rc != 0 {
            let err = io::Error::last_os_error();
            let shown = mount_point.display();
            return Err(match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) => Error::refused(format!(
                    "filesystem {shown}{} does not support freezing; snapshot it unmounted or read-only instead",
                    fs_type(mount_point).map(|t| format!(" ({t})")).unwrap_or_default()
                )),
                Some(libc::EBUSY) => Error::busy(format!(
                    "{shown} is already frozen (by another tool?); thaw it with fsfreeze --unfreeze {shown} once \
                     that tool is done"
                )),
                Some(libc::EPERM) => Error::io(format!("freezing {shown} (needs root)"), err),
                _ => Error::io(format!("freezing {shown}"), err),
            });
        }
        Ok(Frozen {
            mount_point: mount_point.to_path_buf(),
            dir: Some(dir),
            freeze_started: start,
            freeze_call,
            _signals: signals,
        })
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Thaws the filesystem; returns how long writers were held: from the
    /// start of FIFREEZE to the end of FITHAW. Signals held back meanwhile are
    /// delivered when this returns.
    pub fn thaw(mut self) -> Result<Duration> {
        let dir = self.dir.take().expect("only thaw and drop take the directory, and both consume the Frozen");
        let result = thaw_fd(&dir);
        let frozen_for = self.freeze_started.elapsed();
        match result {
            Ok(()) => Ok(frozen_for),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(Error::system(format!(
                "thawing {}: it was no longer frozen (someone else thawed it)",
                self.mount_point.display()
            ))),
            Err(e) => Err(Error::io(
                format!(
                    "thawing {} (check it with fsfreeze --unfreeze {})",
                    self.mount_point.display(),
                    self.mount_point.display()
                ),
                e,
            )),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        let result = thaw_fd(&dir);
        let shown = self.mount_point.display();
        match result {
            Ok(()) => eprintln!(
                "hcp: thawed {shown} after {:.3?} frozen: it was still frozen when hcp gave it up (error or panic)",
                self.freeze_started.elapsed()
            ),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => eprintln!("hcp: could not thaw {shown}: {e}; thaw it by hand: fsfreeze --unfreeze {shown}"),
        }
    }
}

impl fmt::Debug for Frozen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frozen")
            .field("mount_point", &self.mount_point)
            .field("thawed", &self.dir.is_none())
            .field("freeze_started", &self.freeze_started)
            .field("freeze_call", &self.freeze_call)
            .finish()
    }
}

/// Thaws the filesystem at `mount_point` whoever froze it, for recovery
/// after a process that froze it died. Returns false if it was not frozen.
pub fn thaw_mount_point(mount_point: &Path) -> Result<bool> {
    let dir = open_mount_point(mount_point)?;
    match thaw_fd(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(Error::io(format!("thawing {}", mount_point.display()), e)),
    }
}

fn thaw_fd(dir: &File) -> io::Result<()> {
    // SAFETY: FITHAW takes no argument.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW as libc::Ioctl, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_mount_point(mount_point: &Path) -> Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(mount_point).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ENOTDIR) => Error::usage(format!(
                "{} is not a directory; name the directory the filesystem is mounted on",
                mount_point.display()
            )),
            Some(libc::ENOENT) => Error::not_found(format!("mount point {}: no such directory", mount_point.display())),
            _ => Error::io(format!("opening mount point {}", mount_point.display()), e),
        }
    })
}

/// Refuses a directory that is not the root of a mount.
fn check_mount_root(dir: &File, mount_point: &Path) -> Result<()> {
    let is_root = match statx_mount_root(dir) {
        Some(is_root) => is_root,
        // Before Linux 5.8: a mount root is on another device than its
        // parent, or is its own parent (`/`).
        None => {
            let meta = dir.metadata().map_err(|e| Error::io(mount_point.display(), e))?;
            let parent = std::fs::metadata(mount_point.join(".."))
                .map_err(|e| Error::io(format!("{}/..", mount_point.display()), e))?;
            meta.dev() != parent.dev() || meta.ino() == parent.ino()
        }
    };
    if is_root {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{} is not a mount point: freezing acts on a whole filesystem, so name the directory it is mounted on \
             (see findmnt --target {})",
            mount_point.display(),
            mount_point.display()
        )))
    }
}

/// STATX_ATTR_MOUNT_ROOT (Linux 5.8), None where the kernel does not say.
fn statx_mount_root(dir: &File) -> Option<bool> {
    // SAFETY: statx is plain data, filled in by the call.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: valid fd, NUL-terminated empty path with AT_EMPTY_PATH, valid buffer.
    let rc = unsafe { libc::statx(dir.as_raw_fd(), empty.as_ptr(), libc::AT_EMPTY_PATH, 0, &mut stx) };
    let attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if rc != 0 || stx.stx_attributes_mask & attr == 0 {
        return None;
    }
    Some(stx.stx_attributes & attr != 0)
}

/// The type of the filesystem mounted at `mount_point`, for messages.
fn fs_type(mount_point: &Path) -> Option<String> {
    let canonical = std::fs::canonicalize(mount_point).ok()?;
    let table = MountTable(mountinfo::read().ok()?);
    table.mount_at(&canonical).map(|mount| mount.fs_type.clone())
}
