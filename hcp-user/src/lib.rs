//! hcp: point-in-time copy-on-write snapshots of live block devices on the
//! kernel's device-mapper snapshot target, with their cost measured by eBPF.
//!
//! The `hcp` binary is a thin command line over this library. The folders
//! are layers, each using only those listed before it (`cargo xtask layers`
//! checks that no module reaches up):
//!
//! - [`kernel`]: the kernel interfaces hcp drives (device-mapper, loop
//!   devices, block devices, mounts, `FIFREEZE`, signals);
//! - [`tracer`]: the user-space half of the eBPF tracer (the embedded object,
//!   the kernel layouts it needs, its pins and one module per program family);
//! - [`state`]: what hcp keeps on disk (session records, the lock, the
//!   root-only file rules);
//! - [`figures`]: a session's figures computed from the tracer's counters,
//!   and each output format;
//! - [`switch`]: changing a live device's table safely (the window, the
//!   guard process, fault injection);
//! - [`enroll`]: plain partitions made snapshottable while mounted;
//! - [`session`]: the commands on snapshot sessions.

pub mod clock;
pub mod error;
pub mod privilege;
pub mod size;

pub mod kernel;
pub mod tracer;

pub mod state;

pub mod figures;
pub mod switch;

pub mod enroll;
pub mod session;

pub use hcp_common as common;
