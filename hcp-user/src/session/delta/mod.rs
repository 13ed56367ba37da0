//! Incremental backups: `hcp export NEWER --changed-since OLDER` writes a
//! delta (see [`format`]) of every chunk OLDER's exception store lists,
//! read from NEWER's snapshot; `hcp apply` brings an image of OLDER's point
//! in time to NEWER's.
//!
//! Why OLDER's list is enough: every write to the origin after OLDER's
//! snapshot copied its chunk to OLDER's store, committed before the write
//! completed, and NEWER's start froze the filesystem after every write
//! before it had completed. So the list, read any time after NEWER's
//! start, holds every chunk changed between the two points in time (and
//! perhaps some changed after NEWER's, or written by OLDER's own mount:
//! their bytes from NEWER's snapshot are right all the same).

pub mod apply;
pub mod format;

use std::io::Write;

use crate::error::{Error, Result};
use crate::kernel::direct_io::{self, AlignedBuf};
use crate::kernel::dm::exception_store;
use crate::state::record::Session;
use std::os::unix::fs::FileExt;

use format::{Header, PointInTime};

/// Writes the delta from `older`'s point in time to `newer`'s; returns its
/// header and size. `on_progress(done, total)` counts data bytes.
pub fn write(
    out: &mut dyn Write,
    newer: &Session,
    older: &Session,
    on_progress: &mut dyn FnMut(u64, u64),
) -> Result<(Header, u64)> {
    if newer.origin.dm_name != older.origin.dm_name {
        return Err(Error::usage(format!(
            "{} and {} are snapshots of different devices ({} and {}): a delta is between two snapshots of one",
            older.id,
            newer.id,
            older.origin.path.display(),
            newer.origin.path.display()
        )));
    }
    let (t_old, t_new) = (point_in_time(older), point_in_time(newer));
    if t_old.unix >= t_new.unix {
        return Err(Error::usage(format!(
            "{} ({}) is not older than {} ({}): give the older session to --changed-since",
            older.id, t_old.time, newer.id, t_new.time
        )));
    }
    let contents = super::changes::read_store(older)?;
    let chunks: Vec<u64> = contents.exceptions.iter().map(|e| e.old_chunk).collect();
    let extents = exception_store::extents(&chunks, older.chunk_bytes);
    let frames = format::frames(&extents);
    let (base_dev, device_bytes) = direct_io::open_for_reading(&older.snapshot_path)?;
    let (new_dev, new_bytes) = direct_io::open_for_reading(&newer.snapshot_path)?;
    if new_bytes != device_bytes {
        return Err(Error::usage(format!("{} and {} differ in size: the device was resized", older.id, newer.id)));
    }
    let data_bytes: u64 = extents.iter().map(|(_, l)| l).sum();
    let header = Header {
        device_bytes,
        chunk_bytes: older.chunk_bytes,
        origin: newer.origin.path.display().to_string(),
        base: t_old,
        target: t_new,
        frames: frames.len() as u32,
        extents: frames.iter().map(|f| f.len() as u64).sum(),
        data_bytes,
    };
    let mut buf = AlignedBuf::new(format::FRAME_DATA as usize);
    let mut done = 0;
    let mut gather = |dev: &std::fs::File, frame: &[(u64, u64)], what: &str| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for &(offset, length) in frame {
            let part = &mut buf.bytes_mut()[..length as usize];
            dev.read_exact_at(part, offset).map_err(|e| Error::io(format!("reading {what} at byte {offset}"), e))?;
            out.extend_from_slice(part);
        }
        Ok(out)
    };
    let written = format::write(out, &header, &frames, |frame| {
        let base = gather(&base_dev, frame, &older.id)?;
        let data = gather(&new_dev, frame, &newer.id)?;
        done += data.len() as u64;
        on_progress(done, data_bytes);
        Ok((base, data))
    })?;
    Ok((header, written))
}

fn point_in_time(s: &Session) -> PointInTime {
    let unix = s.snapshot_unix.unwrap_or(s.created_unix as f64);
    PointInTime { session: s.id.clone(), time: crate::clock::format_time(unix as u64), unix }
}
