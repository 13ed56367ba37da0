//! The user-space half of the eBPF tracer: the embedded object and the
//! kernel layouts its programs need, the pins that keep block I/O tracing
//! alive between commands, and one module per program family.

pub mod attach;
pub mod block_io;
pub mod btf;
pub mod freeze_trace;
pub mod hist;
pub mod io_latency;
pub mod layout;
pub mod object;
pub mod pins;
pub mod probe;
pub mod tracefs;
pub mod write_stall;
