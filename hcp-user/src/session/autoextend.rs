//! Store auto-extend: a file store that grows while the snapshot lives, so
//! that a write burst does not fill it and invalidate the snapshot.
//!
//! `hcp start --autoextend 80%:20%` starts the store small (`--store-size`,
//! by default a quarter of the quota) and grows it by 20% of its size each
//! time it is 80% full, never past the quota (`-q`). hcp itself is gone by
//! then, so `start` leaves a monitor behind: the same binary,
//! `hcp __autoextend hcpN`, in a session of its own (a terminal's Ctrl-C or
//! hang-up never reaches it), writing to a root-only log under `/run/hcp/`.
//! Its pid and the settings are in the session record; `remove` (and
//! `recover`) call [`stop`] before they touch any device.
//!
//! One growth step, while writes continue:
//!
//! 1. `fallocate` the new range of the store file: a full filesystem shows
//!    up now, in the log, not as a failed copy-out that drops the snapshot;
//! 2. `LOOP_SET_CAPACITY`: the loop device takes the file's new size;
//! 3. nothing more. dm-snapshot's persistent store reads the size of its COW
//!    device at every allocation (`persistent_prepare_exception` calls
//!    `get_dev_size(dm_snap_cow(store->snap)->bdev)`, as does
//!    `persistent_usage` for the status line) on 6.1 and 6.12 alike, and the
//!    snapshot table's length is the origin's, not the store's: no table
//!    reload, no suspend. Checked in the test VM on both kernels: the status
//!    line's total follows the loop device at once (see the auto-extend VM
//!    test). Each step checks it again and stops with an error in the log
//!    if a kernel ever does not, rather than grow a file nobody uses.
//!
//! The monitor never takes hcp's session lock and never writes the record:
//! commands that change sessions stop it first instead, so nothing races.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::status::SnapshotStatus;
use crate::kernel::loopdev::LoopDevice;
use crate::size::{format_bytes, parse_size, SECTOR_BYTES};
use crate::state::record::{self, Phase, Session};

use super::worker;

/// How often the monitor reads the snapshot's usage. dm-snapshot sends no
/// event as its store fills, so it is polled: a status ioctl and a small
/// record read, cheap enough four times a second. Between two looks the
/// origin can write at most the headroom the threshold leaves (20% of the
/// store at 80%), so a faster writer needs a lower threshold.
pub const POLL: Duration = Duration::from_millis(250);

/// After a failed growth step (a full filesystem), how long before the next
/// try: the log gets one line per try, not four a second.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The hidden subcommand the monitor runs as.
pub const SUBCOMMAND: &str = "__autoextend";

/// The monitor, in messages.
const WHAT: &str = "the auto-extend monitor";

const SPEC_FIX: &str = "give --autoextend THRESHOLD%:GROWTH%, e.g. 80%:20% (grow by 20% when 80% full)";

/// `--autoextend THRESHOLD%:GROWTH%`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Grow when the store is this full, 1 to 99 (percent of its size).
    pub threshold_percent: u32,
    /// Grow by this much of its current size, 1 to 1000.
    pub growth_percent: u32,
}

impl FromStr for Spec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Spec> {
        let bad = |why: &str| Error::usage(format!("invalid --autoextend `{text}`: {why}; {SPEC_FIX}"));
        let (threshold, growth) = text.split_once(':').ok_or_else(|| bad("no `:` between threshold and growth"))?;
        let threshold = whole_percent(threshold).ok_or_else(|| bad("the threshold is not a whole percentage"))?;
        let growth = whole_percent(growth).ok_or_else(|| bad("the growth is not a whole percentage"))?;
        if !(1..=99).contains(&threshold) {
            // At 100% the store is full already: too late to grow.
            return Err(bad("the threshold must be from 1% to 99%"));
        }
        if !(1..=1000).contains(&growth) {
            return Err(bad("the growth must be from 1% to 1000%"));
        }
        Ok(Spec { threshold_percent: threshold, growth_percent: growth })
    }
}

/// `80%` -> 80; only digits before the `%` (u32's own parser would take
/// `+80`).
fn whole_percent(text: &str) -> Option<u32> {
    let digits = text.trim().strip_suffix('%')?.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `--store-size`: the store's size at the start, in bytes or as a
/// percentage of the quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreSize {
    Bytes(u64),
    /// Of the quota, 1 to 100.
    PercentOfQuota(u32),
}

impl FromStr for StoreSize {
    type Err = Error;

    fn from_str(text: &str) -> Result<StoreSize> {
        let fix = "give a size (4M, 1G) or a percentage of the quota (25%)";
        if text.trim().ends_with('%') {
            return match whole_percent(text) {
                Some(percent @ 1..=100) => Ok(StoreSize::PercentOfQuota(percent)),
                _ => Err(Error::usage(format!(
                    "invalid --store-size `{text}`: a percentage of the quota must be from 1% to 100%; {fix}"
                ))),
            };
        }
        match parse_size(text).map_err(|e| Error::usage(format!("{}; or a percentage of the quota, e.g. 25%", e)))? {
            0 => Err(Error::usage(format!("invalid --store-size `{text}`: a store cannot be empty; {fix}"))),
            bytes => Ok(StoreSize::Bytes(bytes)),
        }
    }
}

/// What `start` does about auto-extend, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub spec: Spec,
    /// The store file's size at the start, a whole number of chunks below
    /// the quota.
    pub initial_bytes: u64,
}

/// Checks `--autoextend` and `--store-size` against the store and the
/// quota, in one place: None when the store does not grow (then it is the
/// quota from the start, as without auto-extend).
///
/// `device_store` names the block device given as `-c`, if one was: a
/// device cannot grow.
pub fn plan(
    spec: Option<Spec>,
    store_size: Option<StoreSize>,
    device_store: Option<&Path>,
    quota: u64,
    min_store: u64,
    chunk: u64,
) -> Result<Option<Plan>> {
    let Some(spec) = spec else {
        if store_size.is_some() {
            return Err(Error::usage(
                "--store-size needs --autoextend: without it the store is as large as the quota from the start \
                 (set that with -q)",
            ));
        }
        return Ok(None);
    };
    if let Some(device) = device_store {
        return Err(Error::usage(format!(
            "--autoextend grows a store file, and {} is a block device, which hcp cannot grow: give a directory or a \
             new file path for -c, or leave out --autoextend",
            device.display()
        )));
    }
    let wanted = match store_size {
        // Room for a quarter of the quota before the first growth step.
        None => (quota / 4).max(min_store),
        Some(StoreSize::Bytes(bytes)) => bytes,
        Some(StoreSize::PercentOfQuota(percent)) => {
            (u128::from(quota) * u128::from(percent)).div_ceil(100).try_into().unwrap_or(u64::MAX)
        }
    };
    if wanted < min_store {
        return Err(Error::usage(format!(
            "--store-size {} is too small: a snapshot store needs at least {}",
            format_bytes(wanted),
            format_bytes(min_store)
        )));
    }
    // Whole chunks: dm-snapshot allocates the store a chunk at a time.
    let initial = round_up(wanted, chunk).min(quota);
    if initial >= quota {
        return Err(Error::usage(format!(
            "with --autoextend the store starts below the quota and grows to it, but it would start at the quota ({}): \
             give a larger -q or a smaller --store-size",
            format_bytes(quota)
        )));
    }
    Ok(Some(Plan { spec, initial_bytes: initial }))
}

fn round_up(bytes: u64, unit: u64) -> u64 {
    bytes.div_ceil(unit).saturating_mul(unit)
}

/// Whether a store `allocated` of `total` sectors full has reached
/// `threshold_percent`.
pub fn needs_growth(allocated: u64, total: u64, threshold_percent: u32) -> bool {
    total > 0 && u128::from(allocated) * 100 >= u128::from(total) * u128::from(threshold_percent)
}

/// The size a store of `current` bytes grows to: `growth_percent` of it
/// more, at least one chunk, rounded up to whole chunks, never past
/// `quota`; None once it is at the quota.
pub fn next_size(current: u64, growth_percent: u32, quota: u64, chunk: u64) -> Option<u64> {
    if current >= quota {
        return None;
    }
    let step = (u128::from(current) * u128::from(growth_percent)).div_ceil(100).max(u128::from(chunk));
    let target = (u128::from(current) + step).div_ceil(u128::from(chunk)) * u128::from(chunk);
    Some(target.min(u128::from(quota)) as u64)
}

/// Where the monitor of session `id` writes: root-only, under `/run/hcp/`,
/// so it goes with the records on a reboot.
pub fn log_path(id: &str) -> PathBuf {
    crate::state::dirs::run_dir().join("autoextend").join(format!("{id}.log"))
}

/// Starts the monitor of session `id`, whose record (with its auto-extend
/// settings) must be saved already. The caller records the pid.
pub fn spawn(id: &str) -> Result<Child> {
    worker::spawn(SUBCOMMAND, id, &log_path(id), WHAT)
}

/// Stops the monitor of `session` if it runs, and waits until it has
/// exited: it finishes a growth step in progress first, so the store and
/// its loop device are never left half-grown. Killed if it takes longer
/// than a few seconds. For every command that changes a session's devices
/// (`remove`, `recover`), before it touches them.
pub fn stop(session: &Session) -> Result<()> {
    let Some(pid) = session.autoextend.as_ref().and_then(|a| a.pid) else { return Ok(()) };
    worker::stop(pid, SUBCOMMAND, &session.id, WHAT)
}

/// Stops a monitor this process started (a failed `start` undoing itself).
pub fn stop_child(child: Child) -> Result<()> {
    worker::stop_child(child, WHAT)
}

/// Whether the monitor of `session` runs (for `list`).
pub fn running(session: &Session) -> bool {
    session.autoextend.as_ref().and_then(|a| a.pid).is_some_and(|pid| worker::is_running(pid, SUBCOMMAND, &session.id))
}

/// The monitor (`hcp __autoextend ID`): watches session `id` until it is
/// removed or its snapshot is invalid. Returns the exit status: 0 when the
/// session ended or it was stopped, 1 on an error it cannot go on from.
pub fn serve(id: &str) -> i32 {
    worker::on_stop_signals();
    match Monitor::new(id).and_then(|mut m| m.run()) {
        Ok(why) => {
            worker::log(&format!("stopped: {why}"));
            0
        }
        Err(e) => {
            worker::log(&format!("error: {e}; the store no longer grows"));
            1
        }
    }
}

/// What one look at the snapshot asks for next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Look again after [`POLL`].
    Wait,
    /// The store grew: look again at once, in case a burst needs more.
    Again,
    /// The session is over for the monitor; why.
    Done(String),
}

struct Monitor {
    id: String,
    /// Identity of the session the monitor was started for: a record of the
    /// same id made later is another session's.
    created_unix: u64,
    store: PathBuf,
    loop_device: LoopDevice,
    threshold_percent: u32,
    growth_percent: u32,
    quota: u64,
    chunk: u64,
    dm: Dm,
    /// When the last growth step failed, to space out retries.
    failed_at: Option<Instant>,
    /// Said once: the store is at its quota.
    told_at_quota: bool,
}

impl Monitor {
    fn new(id: &str) -> Result<Monitor> {
        let session = record::load_one(id)?.ok_or_else(|| Error::not_found(format!("no session record for {id}")))?;
        let settings = session
            .autoextend
            .clone()
            .ok_or_else(|| Error::usage(format!("session {id} was started without --autoextend")))?;
        let lo_path = session
            .store
            .loop_device
            .clone()
            .ok_or_else(|| Error::usage(format!("the store of {id} is not a file: it cannot grow")))?;
        let loop_device = LoopDevice::find_by_backing_file(&session.store.path)?
            .into_iter()
            .find(|l| l.path == lo_path)
            .ok_or_else(|| {
                Error::not_found(format!("{} is not attached to {}", lo_path.display(), session.store.path.display()))
            })?;
        worker::log(&format!(
            "watching {id}: store {} (through {}), grow by {}% at {}% use, up to the quota of {}",
            session.store.path.display(),
            lo_path.display(),
            settings.growth_percent,
            settings.threshold_percent,
            format_bytes(session.quota_bytes)
        ));
        Ok(Monitor {
            id: id.to_string(),
            created_unix: session.created_unix,
            store: session.store.path,
            loop_device,
            threshold_percent: settings.threshold_percent,
            growth_percent: settings.growth_percent,
            quota: session.quota_bytes,
            chunk: session.chunk_bytes,
            dm: Dm::open()?,
            failed_at: None,
            told_at_quota: false,
        })
    }

    /// Looks until the session is over; returns why it ended.
    fn run(&mut self) -> Result<String> {
        loop {
            if worker::stop_requested() {
                return Ok("asked to stop".to_string());
            }
            match self.look()? {
                Next::Again => {}
                Next::Wait => pause(POLL),
                Next::Done(why) => return Ok(why),
            }
        }
    }

    /// One look at the session: is it still there, and how full is its store?
    fn look(&mut self) -> Result<Next> {
        match record::load_one(&self.id)? {
            None => return Ok(Next::Done("the session was removed".to_string())),
            Some(s) if s.created_unix != self.created_unix || s.store.path != self.store => {
                return Ok(Next::Done("the session was removed (its id now names another)".to_string()))
            }
            Some(s) if s.phase == Phase::Removing => return Ok(Next::Done("the session is being removed".to_string())),
            Some(_) => {}
        }
        if !self.dm.exists(&self.id)? {
            return Ok(Next::Done(format!("the snapshot device {} is gone", self.id)));
        }
        let (allocated, total) = match snapshot_status(&self.dm, &self.id)? {
            // Created but not resumed yet: `start` is still switching.
            None => return Ok(Next::Wait),
            Some(SnapshotStatus::Active { allocated, total, .. }) => (allocated, total),
            Some(SnapshotStatus::Invalid | SnapshotStatus::Overflow) => {
                return Ok(Next::Done(format!(
                    "the snapshot is invalid: its store filled at {} (quota {}) and dm-snapshot dropped it; the \
                     origin is unaffected",
                    format_bytes(self.store_len()?),
                    format_bytes(self.quota)
                )))
            }
            Some(other) => return Ok(Next::Done(format!("the snapshot reports {other:?}"))),
        };
        if !needs_growth(allocated, total, self.threshold_percent) {
            return Ok(Next::Wait);
        }
        if self.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return Ok(Next::Wait);
        }
        let current = self.store_len()?;
        let Some(target) = next_size(current, self.growth_percent, self.quota, self.chunk) else {
            if !self.told_at_quota {
                self.told_at_quota = true;
                worker::log(&format!(
                    "the store is {:.1}% full and at its quota of {}: it cannot grow further, and the snapshot is \
                     invalidated if it fills",
                    percent(allocated, total),
                    format_bytes(self.quota)
                ));
            }
            return Ok(Next::Wait);
        };
        match self.grow(current, target) {
            Ok(()) => {
                self.failed_at = None;
                let seen = match snapshot_status(&self.dm, &self.id)? {
                    Some(SnapshotStatus::Active { total, .. }) => total * SECTOR_BYTES,
                    _ => return Ok(Next::Again), // invalid meanwhile: the next look says so
                };
                worker::log(&format!(
                    "grew the store from {} to {} at {:.1}% use ({} of {} sectors); dm-snapshot now sees {}",
                    format_bytes(current),
                    format_bytes(target),
                    percent(allocated, total),
                    allocated,
                    total,
                    format_bytes(seen)
                ));
                if seen < target / SECTOR_BYTES * SECTOR_BYTES {
                    return Err(Error::system(format!(
                        "dm-snapshot still sees {} after the loop device grew to {}: this kernel does not re-read \
                         the store's size",
                        format_bytes(seen),
                        format_bytes(target)
                    )));
                }
                Ok(Next::Again)
            }
            Err(e) => {
                self.failed_at = Some(Instant::now());
                worker::log(&format!(
                    "could not grow the store from {} to {} ({:.1}% full): {e}; retrying in {} s",
                    format_bytes(current),
                    format_bytes(target),
                    percent(allocated, total),
                    RETRY_AFTER.as_secs()
                ));
                Ok(Next::Wait)
            }
        }
    }

    fn store_len(&self) -> Result<u64> {
        std::fs::metadata(&self.store).map(|m| m.len()).map_err(|e| Error::io(self.store.display(), e))
    }

    /// The growth step: allocate the file's new range, then the loop device
    /// takes the new size (see the module documentation for why that is
    /// all).
    fn grow(&self, from: u64, to: u64) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .open(&self.store)
            .map_err(|e| Error::io(format!("opening {}", self.store.display()), e))?;
        allocate(&file, &self.store, from, to)?;
        self.loop_device.set_capacity()
    }
}

/// Extends `file` from `from` to `to` bytes with blocks allocated now, so a
/// full filesystem fails here rather than on a later copy-out into the
/// store. Filesystems without fallocate get a sparse extension.
fn allocate(file: &File, path: &Path, from: u64, to: u64) -> Result<()> {
    let (offset, len) = match (libc::off_t::try_from(from), libc::off_t::try_from(to - from)) {
        (Ok(offset), Ok(len)) => (offset, len),
        _ => return Err(Error::system(format!("store size {to} is beyond what a file offset holds"))),
    };
    // SAFETY: fallocate on a descriptor we own; mode 0 also extends the size.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => file.set_len(to).map_err(|e| Error::io(format!("growing {}", path.display()), e)),
        Some(libc::ENOSPC) => Err(Error::system(format!(
            "the filesystem of {} is full (no room for {} more)",
            path.display(),
            format_bytes(to - from)
        ))),
        _ => Err(Error::io(format!("allocating {} in {}", format_bytes(to - from), path.display()), err)),
    }
}

/// The parsed status of a snapshot's one target; None without a live table.
fn snapshot_status(dm: &Dm, id: &str) -> Result<Option<SnapshotStatus>> {
    match dm.status(id)?.as_slice() {
        [(_, text)] => text.parse().map(Some),
        _ => Ok(None),
    }
}

fn percent(allocated: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        allocated as f64 * 100.0 / total as f64
    }
}

/// Sleeps for `period`, waking early when asked to stop.
fn pause(period: Duration) {
    worker::pause_until(Instant::now() + period);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    const MIB: u64 = 1 << 20;

    #[test]
    fn specs() {
        assert_eq!("80%:20%".parse::<Spec>().unwrap(), Spec { threshold_percent: 80, growth_percent: 20 });
        assert_eq!(" 1% : 1000% ".parse::<Spec>().unwrap(), Spec { threshold_percent: 1, growth_percent: 1000 });
        assert_eq!("99%:5%".parse::<Spec>().unwrap().threshold_percent, 99);
    }

    #[test]
    fn malformed_specs_name_the_fix() {
        for (text, problem) in [
            ("80%", "no `:`"),
            ("80:20", "threshold is not"),
            ("80%:20", "growth is not"),
            ("80%:20%:5%", "growth is not"),
            ("+80%:20%", "threshold is not"),
            ("80.5%:20%", "threshold is not"),
            ("-5%:20%", "threshold is not"),
            ("%:20%", "threshold is not"),
            ("", "no `:`"),
            ("0%:20%", "from 1% to 99%"),
            ("100%:20%", "from 1% to 99%"),
            ("80%:0%", "from 1% to 1000%"),
            ("80%:1001%", "from 1% to 1000%"),
            ("99999999999%:20%", "threshold is not"),
        ] {
            let err = text.parse::<Spec>().unwrap_err();
            assert_eq!(err.kind, Kind::Usage, "{text}");
            let message = err.to_string();
            assert!(message.contains(problem), "{text}: {message}");
            assert!(message.contains(&format!("`{text}`")), "names the text: {message}");
            assert!(message.contains("e.g. 80%:20%"), "names the fix: {message}");
        }
    }

    #[test]
    fn store_sizes() {
        assert_eq!("4M".parse::<StoreSize>().unwrap(), StoreSize::Bytes(4 * MIB));
        assert_eq!("25%".parse::<StoreSize>().unwrap(), StoreSize::PercentOfQuota(25));
        for bad in ["0", "0%", "101%", "x%", "lots", "-1M"] {
            let err = bad.parse::<StoreSize>().unwrap_err();
            assert_eq!(err.kind, Kind::Usage, "{bad}");
        }
    }

    #[test]
    fn plans() {
        let spec = Some(Spec { threshold_percent: 80, growth_percent: 20 });
        let plan = |size, device: Option<&Path>, quota| plan(spec, size, device, quota, MIB, 4096);
        // Default: a quarter of the quota, at least the minimum store.
        assert_eq!(plan(None, None, 64 * MIB).unwrap().unwrap().initial_bytes, 16 * MIB);
        assert_eq!(plan(None, None, 2 * MIB).unwrap().unwrap().initial_bytes, MIB);
        assert_eq!(plan(Some(StoreSize::Bytes(2 * MIB)), None, 8 * MIB).unwrap().unwrap().initial_bytes, 2 * MIB);
        assert_eq!(plan(Some(StoreSize::PercentOfQuota(50)), None, 8 * MIB).unwrap().unwrap().initial_bytes, 4 * MIB);
        // Whole chunks.
        assert_eq!(plan(Some(StoreSize::Bytes(MIB + 1)), None, 8 * MIB).unwrap().unwrap().initial_bytes, MIB + 4096);
        // Without --autoextend: nothing to plan, and --store-size is refused.
        assert_eq!(super::plan(None, None, None, 8 * MIB, MIB, 4096).unwrap(), None);
        let err = super::plan(None, Some(StoreSize::Bytes(MIB)), None, 8 * MIB, MIB, 4096).unwrap_err();
        assert!(err.to_string().contains("--store-size needs --autoextend"), "{err}");

        for (size, device, quota, problem) in [
            (None, Some(Path::new("/dev/sdc")), 8 * MIB, "block device"),
            (Some(StoreSize::Bytes(512 << 10)), None, 8 * MIB, "too small"),
            (Some(StoreSize::Bytes(8 * MIB)), None, 8 * MIB, "larger -q"),
            (Some(StoreSize::Bytes(9 * MIB)), None, 8 * MIB, "larger -q"),
            (Some(StoreSize::PercentOfQuota(100)), None, 8 * MIB, "larger -q"),
            (None, None, MIB, "larger -q"),
        ] {
            let err = plan(size, device, quota).unwrap_err();
            assert_eq!(err.kind, Kind::Usage, "{size:?} {device:?}");
            assert!(err.to_string().contains(problem), "{size:?}: {err}");
        }
    }

    #[test]
    fn growth_arithmetic() {
        // 20% of 1 MiB, rounded up to whole 4 KiB chunks.
        let grown = next_size(MIB, 20, 8 * MIB, 4096).unwrap();
        assert_eq!(grown, 1_261_568);
        assert_eq!(grown % 4096, 0);
        assert!(grown >= MIB + MIB / 5);
        // Capped at the quota, then no more.
        assert_eq!(next_size(7 * MIB, 20, 8 * MIB, 4096), Some(8 * MIB));
        assert_eq!(next_size(8 * MIB, 20, 8 * MIB, 4096), None);
        assert_eq!(next_size(9 * MIB, 20, 8 * MIB, 4096), None);
        // At least one chunk, however small the percentage.
        assert_eq!(next_size(MIB, 1, 8 * MIB, 64 << 10), Some(MIB + (64 << 10)));
        // A quota that is not whole chunks is still the ceiling.
        assert_eq!(next_size(8 * MIB, 20, 8 * MIB + 100, 4096), Some(8 * MIB + 100));
        // No overflow near the top.
        assert_eq!(next_size(u64::MAX / 2, 1000, u64::MAX, 4096), Some(u64::MAX));
        // Three growth steps from 1 MiB by 20%: about 1.73 MiB.
        let mut size = MIB;
        for _ in 0..3 {
            size = next_size(size, 20, 8 * MIB, 4096).unwrap();
        }
        assert!((1_810_000..1_830_000).contains(&size), "{size}");
    }

    #[test]
    fn thresholds() {
        assert!(!needs_growth(0, 0, 80), "no size, nothing to grow");
        assert!(!needs_growth(79, 100, 80));
        assert!(needs_growth(80, 100, 80));
        assert!(needs_growth(100, 100, 80));
        assert!(needs_growth(1, 100, 1));
        assert!(!needs_growth(u64::MAX / 2, u64::MAX, 99), "no overflow");
    }
}
