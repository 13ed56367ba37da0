//! The kernel's half of a rollback: the origin switched onto
//! `snapshot-merge`, and the merge's progress read from its status line.
//!
//! `snapshot-merge` takes the snapshot's exception store and copies its
//! chunks back into the origin's data in the background, batch by batch,
//! dropping each merged exception from the store and committing it. The
//! origin reads as the snapshot from the moment the target is resumed
//! (chunks not merged yet are read from the store). The status line is a
//! snapshot's, `<allocated>/<total> <metadata>` in sectors of the store,
//! and the merge is over when only metadata is left allocated (see
//! `docs/design/rollback.md`, measured on 6.1 and 6.12).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::status::SnapshotStatus;
use crate::kernel::dm::table::{SnapshotMerge, TableLine, TargetParams};
use crate::kernel::signals::pending_stop_signal;
use crate::size::SECTOR_BYTES;
use crate::switch::window::{self, Window, ROLLBACK_STEPS};

/// How often the status line is read while waiting.
const POLL: Duration = Duration::from_millis(250);

/// Where a merge is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeState {
    /// Sectors of data still in the store.
    Running {
        data_sectors_left: u64,
    },
    Done,
    /// The kernel stopped (or never began) it: why, in its words.
    Failed(String),
}

/// The state of the merge `origin` runs, or None when its table is not
/// `snapshot-merge`.
pub fn state(dm: &Dm, origin: &str) -> Result<Option<MergeState>> {
    let status = dm.status(origin)?;
    let [(target, text)] = status.as_slice() else { return Ok(None) };
    if target != SnapshotMerge::TARGET {
        return Ok(None);
    }
    Ok(Some(match text.parse::<SnapshotStatus>()? {
        s if s.merge_done() => MergeState::Done,
        SnapshotStatus::Active { allocated, metadata, .. } => {
            MergeState::Running { data_sectors_left: allocated.saturating_sub(metadata) }
        }
        SnapshotStatus::Invalid => {
            MergeState::Failed("the snapshot is invalid (`snapshot-merge Invalid`): nothing can be merged".into())
        }
        SnapshotStatus::MergeFailed => MergeState::Failed(
            "the kernel stopped the merge on an I/O error (`Merge failed`; see dmesg): the origin is part merged"
                .into(),
        ),
        other => MergeState::Failed(format!("unexpected merge status {other:?}")),
    }))
}

/// Switches the live, unmounted `origin` onto `merge` under the guard (no
/// freeze: nothing is mounted). The merge starts at the resume.
pub fn switch_to_merge(dm: &Dm, origin: &str, merge: &TableLine) -> Result<Window> {
    // A merge table left loaded by an hcp that died here would make this
    // load fail (the kernel allows one merge per origin, loaded or live).
    let _ = dm.clear_inactive(origin);
    dm.load(origin, std::slice::from_ref(merge))?;
    window::switch(dm, origin, None, true, &ROLLBACK_STEPS, || Ok(()), || Ok(())).inspect_err(|_| {
        // Failed before its suspend: the table is still loaded, inactive.
        let _ = dm.clear_inactive(origin);
    })
}

/// A merge's progress, as `rollback` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct MergeProgress {
    /// Bytes of snapshot data the merge writes back in all.
    pub total_bytes: u64,
    /// Of those, written back so far.
    pub merged_bytes: u64,
    pub percent: f64,
    /// Since this command began waiting.
    pub elapsed_seconds: f64,
    /// The mean rate since then; null until something was merged.
    pub bytes_per_second: Option<f64>,
    /// At that rate; null until it is known.
    pub seconds_left: Option<f64>,
}

impl MergeProgress {
    fn new(total_sectors: u64, left_sectors: u64, merged_at_start: u64, elapsed: Duration) -> MergeProgress {
        let total_bytes = total_sectors * SECTOR_BYTES;
        // Data written to the origin during the merge is copied out to the
        // store only by other snapshots, never this one, so what is left
        // only shrinks; clamped all the same.
        let merged_bytes = total_sectors.saturating_sub(left_sectors) * SECTOR_BYTES;
        let percent = if total_bytes == 0 { 100.0 } else { merged_bytes as f64 * 100.0 / total_bytes as f64 };
        let seconds = elapsed.as_secs_f64();
        let here = merged_bytes.saturating_sub(merged_at_start);
        let rate = (here > 0 && seconds > 0.0).then(|| here as f64 / seconds);
        MergeProgress {
            total_bytes,
            merged_bytes,
            percent,
            elapsed_seconds: seconds,
            bytes_per_second: rate,
            seconds_left: rate.map(|r| (total_bytes - merged_bytes) as f64 / r),
        }
    }
}

/// Waits for the merge on `origin` to finish, reporting its progress (out
/// of `total_sectors`, the data the store held when the rollback began)
/// at each read. A stop signal ends the wait, not the merge.
pub fn wait(
    dm: &Dm,
    origin: &str,
    total_sectors: u64,
    on_progress: &mut dyn FnMut(&MergeProgress),
) -> Result<Duration> {
    let began = Instant::now();
    let mut merged_at_start = None;
    let mut total_sectors = total_sectors;
    loop {
        let left = match state(dm, origin)? {
            Some(MergeState::Running { data_sectors_left }) => {
                // The snapshot's own unmount may have added a few chunks
                // since the total was taken: it is at least what is left at
                // the first read.
                if merged_at_start.is_none() {
                    total_sectors = total_sectors.max(data_sectors_left);
                }
                data_sectors_left.min(total_sectors)
            }
            Some(MergeState::Done) => 0,
            Some(MergeState::Failed(why)) => return Err(Error::system(format!("rolling back {origin}: {why}"))),
            None => return Err(Error::system(format!("{origin} stopped merging before the merge was done"))),
        };
        let start = *merged_at_start.get_or_insert((total_sectors - left) * SECTOR_BYTES);
        on_progress(&MergeProgress::new(total_sectors, left, start, began.elapsed()));
        if left == 0 {
            return Ok(began.elapsed());
        }
        if let Some(signal) = pending_stop_signal() {
            return Err(Error::new(
                Kind::Interrupted,
                format!(
                    "{signal}: stopped waiting; the merge goes on in the kernel (the origin already reads as the \
                     snapshot): `hcp rollback` with the same session waits for it and finishes"
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_what_was_merged_of_the_data_at_the_start() {
        let p = MergeProgress::new(1000, 250, 0, Duration::from_secs(3));
        assert_eq!(p.total_bytes, 512_000);
        assert_eq!(p.merged_bytes, 384_000);
        assert!((p.percent - 75.0).abs() < 1e-9);
        assert!((p.bytes_per_second.unwrap() - 128_000.0).abs() < 1e-6);
        assert!((p.seconds_left.unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_rate_counts_only_what_this_wait_saw_merged() {
        // Half was merged before this command began waiting (--no-wait,
        // then rollback again): the rate is of the rest.
        let p = MergeProgress::new(1000, 250, 256_000, Duration::from_secs(1));
        assert!((p.bytes_per_second.unwrap() - 128_000.0).abs() < 1e-6);
        let first = MergeProgress::new(1000, 500, 256_000, Duration::ZERO);
        assert_eq!(first.bytes_per_second, None);
        assert_eq!(first.seconds_left, None);
    }

    #[test]
    fn nothing_to_merge_is_done() {
        let p = MergeProgress::new(0, 0, 0, Duration::ZERO);
        assert_eq!(p.percent, 100.0);
        assert_eq!(p.merged_bytes, 0);
    }
}
