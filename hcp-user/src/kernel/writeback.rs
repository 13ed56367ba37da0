//! Writing a filesystem's dirty data back before it is frozen.
//!
//! FIFREEZE writes back every dirty page of the filesystem while every
//! writer on it waits: with 128 MiB dirty that is hundreds of milliseconds
//! of stall, against a few milliseconds for the switch itself. The same
//! writeback done by `syncfs` beforehand costs writers almost nothing (they
//! keep writing while it runs), and leaves the freeze only what was dirtied
//! during the last pass. So a switch first calls `syncfs` in passes, until
//! little is left dirty, and only then freezes.
//!
//! A writer faster than the disk would keep every pass busy, so the passes
//! are bounded ([`MAX_PASSES`], [`TIME_LIMIT`]); the freeze then takes what
//! is left, as it would have without the pre-flush.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernel::devnum::DevNum;

/// At most this many `syncfs` passes.
pub const MAX_PASSES: u32 = 4;

/// No pass begins after this long: past it the writer is winning, and the
/// freeze takes what is left.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

/// Less than this left dirty, or written by the last pass, and another pass
/// is not worth it: FIFREEZE writes 4 MiB in a few milliseconds on a disk,
/// about what one more `syncfs` and its journal commit would cost.
pub const ENOUGH_BYTES: u64 = 4 << 20;

/// What the pre-flush did, as `start` and `remove` report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreFlush {
    /// `syncfs` calls made.
    pub passes: u32,
    /// From the start of the first `syncfs` to the end of the last.
    pub seconds: f64,
    /// Bytes the filesystem's device completed writing meanwhile (its
    /// `stat` in sysfs): the dirty data, with the metadata and journal
    /// that go with it, and any other writer's I/O to the device. Null
    /// when the device keeps no such count.
    pub device_written_bytes: Option<u64>,
    /// `Dirty` + `Writeback` of the whole system after the last pass
    /// (`/proc/meminfo`): at most this much was left for the freeze to
    /// write. Null when it could not be read.
    pub dirty_left_bytes: Option<u64>,
    /// Why the passes stopped.
    pub stopped: Stopped,
}

/// Why the pre-flush stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stopped {
    /// Less than [`ENOUGH_BYTES`] was left dirty, or written by the last pass.
    Clean,
    /// [`MAX_PASSES`] were made.
    PassLimit,
    /// [`TIME_LIMIT`] had passed.
    TimeLimit,
    /// A signal asked hcp to stop.
    Signal,
}

impl Stopped {
    pub fn describe(self) -> &'static str {
        match self {
            Stopped::Clean => "little was left dirty",
            Stopped::PassLimit => "pass limit reached",
            Stopped::TimeLimit => "time limit reached",
            Stopped::Signal => "stopped by a signal",
        }
    }
}

/// Writes back the dirty data of the filesystem mounted at `mount_point`
/// in `syncfs` passes (see the module's comment); `stop_requested` is asked
/// between passes.
pub fn pre_flush(mount_point: &Path, stop_requested: impl Fn() -> bool) -> Result<PreFlush> {
    let dir = File::open(mount_point).map_err(|e| Error::io(format!("opening {}", mount_point.display()), e))?;
    let device = dir.metadata().ok().map(|m| DevNum::from_user(m.dev()));
    let written = || device.and_then(|d| sectors_written(d).ok()).map(|s| s * 512);
    let begun = Instant::now();
    let first = written();
    let mut passes = 0;
    let (stopped, dirty_left) = loop {
        let before = written();
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(Error::io(format!("writing back {} (syncfs)", mount_point.display()), err));
        }
        passes += 1;
        let wrote = before.zip(written()).map(|(b, a)| a.saturating_sub(b));
        let dirty_left = dirty_bytes().ok();
        let little = |v: Option<u64>| v.is_some_and(|v| v < ENOUGH_BYTES);
        // Asked first: a stop request must be seen even when the pass
        // left little to do.
        if stop_requested() {
            break (Stopped::Signal, dirty_left);
        }
        if little(dirty_left) || little(wrote) {
            break (Stopped::Clean, dirty_left);
        }
        if passes >= MAX_PASSES {
            break (Stopped::PassLimit, dirty_left);
        }
        if begun.elapsed() >= TIME_LIMIT {
            break (Stopped::TimeLimit, dirty_left);
        }
    };
    Ok(PreFlush {
        passes,
        seconds: begun.elapsed().as_secs_f64(),
        device_written_bytes: first.zip(written()).map(|(b, a)| a.saturating_sub(b)),
        dirty_left_bytes: dirty_left,
        stopped,
    })
}

/// Sectors written to `device` since boot (`/sys/dev/block/M:m/stat`).
fn sectors_written(device: DevNum) -> Result<u64> {
    let path = format!("/sys/dev/block/{device}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_sectors_written(&text).ok_or_else(|| Error::system(format!("{path}: unexpected contents {text:?}")))
}

/// The seventh field of a block device's `stat`: sectors written.
fn parse_sectors_written(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(6)?.parse().ok()
}

/// `Dirty` + `Writeback` of `/proc/meminfo`, in bytes: the whole system's
/// page cache not yet on disk.
pub fn dirty_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| Error::io("/proc/meminfo", e))?;
    parse_dirty(&text).ok_or_else(|| Error::system("/proc/meminfo has no Dirty or Writeback line"))
}

fn parse_dirty(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.split(':').next() == Some(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("Dirty")? + field("Writeback")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_written_is_the_seventh_field() {
        // reads, merges, sectors, ms; writes, merges, sectors, ms; ...
        let stat =
            "    5227      113   298778     1564     9138     4620   524680    68492        0    30108    70056\n";
        assert_eq!(parse_sectors_written(stat), Some(524680));
        assert_eq!(parse_sectors_written("1 2 3"), None);
    }

    #[test]
    fn dirty_is_dirty_plus_writeback() {
        let meminfo = "MemTotal:        2015120 kB\nDirty:             131072 kB\nWriteback:          2048 kB\n\
                       WritebackTmp:          7 kB\n";
        assert_eq!(parse_dirty(meminfo), Some((131072 + 2048) * 1024));
        assert_eq!(parse_dirty("Dirty: 5 kB\n"), None, "both lines are needed");
    }

    #[test]
    fn a_pre_flush_of_a_directory_on_any_filesystem_makes_one_pass_at_least() {
        // The host's temporary directory: whatever filesystem it is, syncfs works.
        let flushed = pre_flush(&std::env::temp_dir(), || false).unwrap();
        assert!((1..=MAX_PASSES).contains(&flushed.passes), "{flushed:?}");
        assert!(flushed.seconds >= 0.0);
        let stopped_at_once = pre_flush(&std::env::temp_dir(), || true).unwrap();
        assert_eq!(stopped_at_once.passes, 1, "a stop request ends it after the pass it is in");
        assert_eq!(stopped_at_once.stopped, Stopped::Signal, "and is reported, however little was dirty");
    }
}
