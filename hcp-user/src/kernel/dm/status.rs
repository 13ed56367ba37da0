//! The status of the `snapshot` and `snapshot-merge` targets, as the kernel
//! prints it (drivers/md/dm-snap.c, `snapshot_status`, STATUSTYPE_INFO).

use std::str::FromStr;

use super::table::unexpected;
use crate::error::{Error, Result};
use crate::size::SECTOR_BYTES;

/// A snapshot's state, the params of its `dmsetup status` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// `<allocated>/<total> <metadata>`, in sectors of the COW device:
    /// `allocated` counts data and metadata, `total` is the COW device's size.
    Active { allocated: u64, total: u64, metadata: u64 },
    /// The snapshot was dropped: its COW device filled up or failed.
    Invalid,
    /// The COW device filled up (persistence `PO` only); the snapshot keeps
    /// what it had but takes no more changes.
    Overflow,
    /// A `snapshot-merge` stopped on an error.
    MergeFailed,
    /// The exception store does not report its usage.
    Unknown,
}

impl SnapshotStatus {
    /// COW space in use, metadata included; `None` unless active.
    pub fn used_bytes(&self) -> Option<u64> {
        match *self {
            SnapshotStatus::Active { allocated, .. } => Some(allocated * SECTOR_BYTES),
            _ => None,
        }
    }

    /// How full the COW device is, 0.0 to 100.0; `None` unless active.
    pub fn use_percent(&self) -> Option<f64> {
        match *self {
            SnapshotStatus::Active { allocated, total, .. } if total > 0 => {
                Some(allocated as f64 * 100.0 / total as f64)
            }
            _ => None,
        }
    }

    /// For a `snapshot-merge` target: every data chunk is back in the origin,
    /// so only metadata is left allocated.
    pub fn merge_done(&self) -> bool {
        matches!(*self, SnapshotStatus::Active { allocated, metadata, .. } if allocated == metadata)
    }
}

impl FromStr for SnapshotStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<SnapshotStatus> {
        let status = match text.trim() {
            "Invalid" => Some(SnapshotStatus::Invalid),
            "Overflow" => Some(SnapshotStatus::Overflow),
            "Merge failed" => Some(SnapshotStatus::MergeFailed),
            "Unknown" => Some(SnapshotStatus::Unknown),
            usage => parse_usage(usage),
        };
        status.ok_or_else(|| {
            unexpected(
                "snapshot status",
                text,
                "<allocated>/<total> <metadata>, Invalid, Overflow, Merge failed or Unknown",
            )
        })
    }
}

/// `<allocated>/<total> <metadata>`.
fn parse_usage(text: &str) -> Option<SnapshotStatus> {
    let (allocated, rest) = text.split_once('/')?;
    let (total, metadata) = rest.split_once(' ')?;
    Some(SnapshotStatus::Active {
        allocated: allocated.parse().ok()?,
        total: total.parse().ok()?,
        metadata: metadata.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::dm::table::TableLine;

    fn status(text: &str) -> SnapshotStatus {
        text.parse().unwrap()
    }

    #[test]
    fn active_snapshot() {
        let line: TableLine = "0 8388608 snapshot 397896/2097152 1560".parse().unwrap();
        let s = status(&line.params);
        assert_eq!(s, SnapshotStatus::Active { allocated: 397_896, total: 2_097_152, metadata: 1560 });
        assert_eq!(s.used_bytes(), Some(397_896 * 512));
        let percent = s.use_percent().unwrap();
        assert!((percent - 18.97).abs() < 0.01, "{percent}");
        assert!(!s.merge_done());
    }

    #[test]
    fn fresh_persistent_snapshot() {
        // The header chunk and the first metadata area, at 8 sectors a chunk.
        let s = status("16/2097152 16");
        assert_eq!(s.used_bytes(), Some(8192));
        assert!(s.use_percent().unwrap() < 0.001);
    }

    #[test]
    fn transient_snapshot_has_no_metadata() {
        assert_eq!(status("0/204800 0"), SnapshotStatus::Active { allocated: 0, total: 204_800, metadata: 0 });
    }

    #[test]
    fn states_without_usage() {
        for (text, s) in [
            ("Invalid", SnapshotStatus::Invalid),
            ("Overflow", SnapshotStatus::Overflow),
            ("Merge failed", SnapshotStatus::MergeFailed),
            ("Unknown", SnapshotStatus::Unknown),
        ] {
            assert_eq!(status(text), s);
            assert_eq!(s.used_bytes(), None);
            assert_eq!(s.use_percent(), None);
            assert!(!s.merge_done());
        }
    }

    #[test]
    fn merge_progress() {
        assert!(!status("281688/2097152 1104").merge_done());
        assert!(!status("180480/2097152 712").merge_done());
        assert!(status("16/2097152 16").merge_done());
        let line: TableLine = "0 8388608 snapshot-merge 16/2097152 16\n".parse().unwrap();
        assert!(status(&line.params).merge_done());
    }

    #[test]
    fn bad_status() {
        for text in ["", "16/2097152", "16 2097152 16", "16/2097152 x", "Merge", "invalid", "-1/2 0"] {
            let err = text.parse::<SnapshotStatus>().unwrap_err();
            assert!(err.to_string().contains("snapshot status"), "{err}");
        }
    }
}
