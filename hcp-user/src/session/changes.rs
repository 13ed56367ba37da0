//! `hcp changes SESSION`: the origin's extents written since the session's
//! snapshot, read from the session's persistent exception store (see
//! [`crate::kernel::dm::exception_store`]), the list a backup needs to copy
//! only what changed. Reads only; takes no lock.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::exception_store::{self, Contents};
use crate::kernel::dm::status::SnapshotStatus;
use crate::privilege::require_root;
use crate::size::SECTOR_BYTES;
use crate::state::record::{self, Phase, Session};

use super::inspect::state_of;

/// What `hcp changes` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Changes {
    pub session: String,
    pub origin: PathBuf,
    pub origin_bytes: u64,
    pub chunk_bytes: u64,
    /// The snapshot's point in time (RFC 3339): the extents are what was
    /// written since.
    pub since: String,
    /// Chunks the store holds, committed: each origin chunk written since the
    /// snapshot (or written on the snapshot itself, by its own mount),
    /// copied aside once, at its first write.
    pub changed_chunks: u64,
    pub changed_bytes: u64,
    /// Data chunks the kernel reports allocated in the store (its status
    /// line), committed or not.
    pub allocated_chunks: u64,
    /// Allocated but not yet committed: writes in flight as the store was
    /// read, whose chunks the list may lack. 0 on a quiet origin.
    pub in_flight_chunks: u64,
    /// The chunks as byte ranges of the origin, adjacent ones merged, in
    /// order.
    pub extents: Vec<Extent>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

/// The changes since `target`'s snapshot.
pub fn changes(target: &str) -> Result<Changes> {
    require_root()?;
    let dm = Dm::open()?;
    let sessions = record::load_all()?;
    let session = super::trace::find(&sessions, target)?;
    if session.phase != Phase::Active {
        return Err(Error::refused(format!(
            "{} is not an active session (it is {}): its store is not a snapshot's any more",
            session.id,
            serde_json::to_value(session.phase).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        )));
    }
    // The kernel's count first: a store read after it holds at least as
    // many committed exceptions as were allocated before, less those in
    // flight.
    let allocated = allocated_chunks(&dm, session)?;
    let contents = read_store(session)?;
    if contents.header.is_some_and(|h| !h.valid) {
        return Err(invalid(session));
    }
    let chunks: Vec<u64> = contents.exceptions.iter().map(|e| e.old_chunk).collect();
    let changed = chunks.len() as u64;
    let extents = exception_store::extents(&chunks, session.chunk_bytes)
        .into_iter()
        .map(|(offset, length)| Extent { offset, length })
        .collect();
    Ok(Changes {
        session: session.id.clone(),
        origin: session.origin.path.clone(),
        origin_bytes: dm.table(&session.id)?.iter().map(|l| l.length).sum::<u64>() * SECTOR_BYTES,
        chunk_bytes: session.chunk_bytes,
        since: crate::clock::format_time(session.snapshot_unix.map_or(session.created_unix, |t| t as u64)),
        changed_chunks: changed,
        changed_bytes: changed * session.chunk_bytes,
        allocated_chunks: allocated,
        in_flight_chunks: allocated.saturating_sub(changed),
        extents,
    })
}

/// Data chunks allocated in the store, from the snapshot's status.
fn allocated_chunks(dm: &Dm, session: &Session) -> Result<u64> {
    match state_of(dm, session)?.1 {
        Some(SnapshotStatus::Active { allocated, metadata, .. }) => {
            Ok(allocated.saturating_sub(metadata) * SECTOR_BYTES / session.chunk_bytes)
        }
        Some(SnapshotStatus::Invalid | SnapshotStatus::Overflow) => Err(invalid(session)),
        other => Err(Error::system(format!("{} reports no store usage ({other:?})", session.id))),
    }
}

fn invalid(session: &Session) -> Error {
    Error::new(
        Kind::Invalid,
        format!(
            "{} is invalid (its store filled): the changes since its snapshot are no longer all recorded; remove \
             it with `hcp -r {}`",
            session.id, session.id
        ),
    )
}

/// The store's contents, from the device the snapshot reads it through:
/// the loop device of a file store, or the block device.
pub(super) fn read_store(session: &Session) -> Result<Contents> {
    let dev = session.store.loop_device.as_ref().unwrap_or(&session.store.path);
    exception_store::read(dev, session.chunk_bytes)
}
