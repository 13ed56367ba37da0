//! hcp's directories, root's alone: `/run/hcp` (session records and the
//! lock), `/var/lib/hcp` (file stores and reports) and `/var/hcp` (mount
//! points).

use std::path::PathBuf;

/// Where records and the lock live.
pub fn run_dir() -> PathBuf {
    PathBuf::from("/run/hcp")
}

/// Where file stores (and reports) go unless `-c` says otherwise.
pub const DEFAULT_STORE_DIR: &str = "/var/lib/hcp";

/// Where snapshots are mounted unless `-m` says otherwise.
pub const DEFAULT_MOUNT_DIR: &str = "/var/hcp";
