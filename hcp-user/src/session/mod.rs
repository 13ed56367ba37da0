//! Snapshot sessions: start, remove, list and show, and roll back, on
//! dm-snapshot.
//!
//! A session is one snapshot of one origin:
//!
//! ```text
//!   /dev/hcpN  = dm "hcpN"   : snapshot <real> <store> P <chunk>
//!   origin     = dm <name>   : snapshot-origin <real>
//!   <real>                   : the origin's data, under the origin
//! ```
//!
//! For a device-mapper origin (an LVM LV, any dm table) `<real>` is a new dm
//! device `<name>-real` carrying the origin's former table, slid under the
//! live origin as LVM does. A plain device that nothing holds is itself the
//! `<real>`, wrapped in an origin dm device `hcp-<kernel name>` of hcp's own.

pub mod autoextend;
mod changes;
mod delta;
mod export;
mod inspect;
mod list;
pub mod recorder;
mod recover;
mod remove;
mod report;
mod rollback;
mod start;
mod trace;
mod worker;

pub use changes::{changes, Changes, Extent};
pub use delta::apply::{apply, marker_path as apply_marker_path, Applied};
pub use export::{export, partial_path, ExportOptions, Exported};
pub use inspect::snapshot_node;
pub use list::{list, show, AutoextendEntry, ListEntry, Shown};
pub use recover::{recover, Recovered};
pub use remove::{remove, RemoveOptions, Removed};
pub use report::report;
pub use rollback::{rollback, MergeProgress, RollbackOptions, RolledBack};
pub use start::{start, StartOptions, Started};
pub use trace::{
    attach_session as trace_attach, follow as follow_stats, histogram_log_path, history, history_copy_path,
    report_path, stats, stats_all, unload as trace_unload,
};
