//! hcp: point-in-time copy-on-write snapshots of live block devices on the
//! kernel's device-mapper snapshot target, with their cost measured by eBPF.
//!
//! The `hcp` binary is a thin command line over this library.

pub mod autoextend;
pub mod block_io;
pub mod blockdev;
pub mod btf;
pub mod devnum;
pub mod dm;
pub mod enroll;
pub mod error;
pub mod fault;
pub mod freeze;
pub mod freeze_trace;
pub mod guard;
pub mod hdr_log;
pub mod hist;
pub mod io_latency;
pub mod loopdev;
pub mod mount;
pub mod mountinfo;
pub mod passthrough;
pub mod probes;
pub mod prometheus;
pub mod session;
pub mod size;
pub mod state;
pub mod stats;
pub mod trace_pins;
pub mod tracefs;
pub mod write_stall;

pub use hcp_common as common;
