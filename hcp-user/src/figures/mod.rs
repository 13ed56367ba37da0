//! A traced session's figures, computed from the tracer's counters, and the
//! formats they are written in (JSON comes from serde on [`stats`]).

pub mod analysis;
pub mod hdr_log;
pub mod interval;
pub mod prometheus;
pub mod report;
pub mod stats;
