//! The kernel interfaces hcp drives: device-mapper, loop devices, block
//! devices and their numbers, reads below the page cache, mounts, writeback, filesystem freezes and
//! signals.
//! Nothing here knows what a session is.

pub mod blockdev;
pub mod devnum;
pub mod direct_io;
pub mod dm;
pub mod freeze;
pub mod hidden_dir;
pub mod loopdev;
pub mod mount;
pub mod mountinfo;
pub mod signals;
pub mod writeback;
