//! Snapshot sessions: start, remove, list and show, on dm-snapshot.
//!
//! A session is one snapshot of one origin:
//!
//! ```text
//!   /dev/hcpN  = dm "hcpN"   : snapshot <real> <store> P <chunk>
//!   origin     = dm <name>   : snapshot-origin <real>
//!   <real>                   : the origin's data, under the origin
//! ```
//!
//! For a device-mapper origin (an LVM LV, any dm table) `<real>` is a new dm
//! device `<name>-real` carrying the origin's former table, slid under the
//! live origin as LVM does. A plain device that nothing holds is itself the
//! `<real>`, wrapped in an origin dm device `hcp-<kernel name>` of hcp's own.

mod recover;
mod remove;
mod report;
mod start;
mod trace;
mod window;

pub use recover::{recover, Recovered};
pub use remove::{remove, RemoveOptions, Removed};
pub use report::{list, show, AutoextendEntry, ListEntry, SessionState, Shown};
pub use start::{start, StartOptions, Started};
pub use trace::{
    attach_session as trace_attach, follow as follow_stats, histogram_log_path, report_path, stats, stats_all,
};

use std::path::{Path, PathBuf};

use crate::blockdev::BlockDevice;
use crate::devnum::DevNum;
use crate::error::{Error, Kind, Result};
use crate::state::Session;

/// dm UUID prefixes that mark hcp's own devices, so that hcp recognises them
/// from the live dm tables alone, whatever its records say.
pub const UUID_SNAPSHOT: &str = "HCP-SNAP-";
pub const UUID_REAL: &str = "HCP-REAL-";
pub const UUID_ORIGIN: &str = "HCP-ORIGIN-";
pub const UUID_COW: &str = "HCP-COW-";

/// Where file stores go unless `-c` says otherwise.
pub const DEFAULT_STORE_DIR: &str = "/var/lib/hcp";
/// Where snapshots are mounted unless `-m` says otherwise.
pub const DEFAULT_MOUNT_DIR: &str = "/var/hcp";

/// hcp changes device-mapper tables, freezes filesystems and mounts, and
/// its records are root's alone: all need root. Checked first, so an
/// unprivileged call changes nothing.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::new(
            Kind::Permission,
            "hcp must run as root (it changes device-mapper tables and keeps root-only state): run it with sudo",
        ));
    }
    Ok(())
}

/// `/dev/hcpN`.
pub fn snapshot_node(id: &str) -> PathBuf {
    Path::new("/dev").join(id)
}

/// Whether `dev` (the device a user named) is the origin of `session`: the
/// origin dm device, or the raw device under an hcp wrapper.
fn is_origin_of(session: &Session, dev: &BlockDevice) -> bool {
    dev.dm.as_ref().is_some_and(|dm| dm.name == session.origin.dm_name)
        || (session.origin.wrapped && raw_devnum(session) == Some(dev.devnum))
}

/// The raw device under an hcp wrapper.
fn raw_devnum(session: &Session) -> Option<DevNum> {
    DevNum::of_block_device(Path::new(&session.origin.real)).ok()
}

/// Sessions of the same origin as `session`, other than itself.
fn siblings<'a>(sessions: &'a [Session], session: &Session) -> Vec<&'a Session> {
    sessions.iter().filter(|s| s.id != session.id && s.origin.dm_name == session.origin.dm_name).collect()
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// RFC 3339 UTC time of a record's creation.
pub fn format_time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix)).to_string()
}
