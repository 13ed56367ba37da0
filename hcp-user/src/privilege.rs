//! The one privilege check: hcp runs as root or not at all.

use crate::error::{Error, Kind, Result};

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
