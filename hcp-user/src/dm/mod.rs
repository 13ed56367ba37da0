//! The text side of device-mapper: table lines for the snapshot targets and
//! the status lines the kernel reports for them. The ioctls themselves go
//! through the `devicemapper` crate, which has no snapshot targets.

pub mod device;
pub mod status;
pub mod table;
