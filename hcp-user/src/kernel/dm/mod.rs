//! Device-mapper: devices by name over the `devicemapper` crate, the table
//! lines for the snapshot targets and the status lines the kernel reports for
//! them (the crate has no snapshot targets), the persistent exception
//! store's on-disk format, the dm UUIDs that mark hcp's
//! own devices, and pass-through mappings.

pub mod device;
pub mod exception_store;
pub mod passthrough;
pub mod status;
pub mod table;
pub mod uuid;
