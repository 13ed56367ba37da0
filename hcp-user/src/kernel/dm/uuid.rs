//! dm UUID prefixes that mark hcp's own devices, so that hcp recognises them
//! from the live dm tables alone, whatever its records say.

pub const UUID_SNAPSHOT: &str = "HCP-SNAP-";
pub const UUID_REAL: &str = "HCP-REAL-";
pub const UUID_ORIGIN: &str = "HCP-ORIGIN-";
pub const UUID_COW: &str = "HCP-COW-";

/// `uuid` cut to the 128 characters a dm UUID holds.
pub fn truncate(uuid: &str) -> String {
    uuid.chars().take(128).collect()
}
