//! One interval of a session's history: recorded from the figures of that
//! interval (the recorder computes them as `--follow` does), and printed
//! with the same names and meanings as `hcp stats` uses (`app_writes`,
//! `copy_out`, `write_amplification`, ...).

use serde::Serialize;

use super::stats::{CopyOut, SessionStats, Traffic};
use crate::state::counters::{from_record, to_record, Count};
use crate::state::history::{Interval, Timed};
use crate::tracer::hist::summarize;

/// The `schema` value of an interval's JSON form.
pub const SCHEMA: &str = "hcp-stats-interval/1";

/// The record of an interval whose figures are `stats` (computed over the
/// interval alone), from `start_unix` to `end_unix`.
pub fn record(stats: &SessionStats, start_unix: f64, end_unix: f64) -> Interval {
    let hist = |name: &str| stats.histograms.iter().find(|h| h.name == name).map(|h| to_record(&h.hist));
    let timed =
        |t: &Traffic, name: &str| Timed { count: t.count, bytes: t.bytes, latency: hist(name).unwrap_or_default() };
    // The devices under the snapshot: what reaches them is what the engine does.
    let under = || stats.devices.iter().filter(|d| d.role == "real" || d.role == "store");
    let device_write_bytes = under().filter_map(|d| d.bios.get("write")).map(|c| c.bytes).sum();
    let device_read_bytes = under()
        .flat_map(|d| &d.passed_down)
        .filter(|p| p.from_role == "origin" || p.from_role == "snapshot")
        .filter_map(|p| p.ops.get("read"))
        .map(|c| c.bytes)
        .sum();
    let l = &stats.losses;
    Interval {
        start_unix,
        end_unix,
        app_writes: timed(&stats.app_writes, "app_write"),
        app_reads: timed(&stats.app_reads, "app_read"),
        snapshot_reads: timed(&stats.snapshot_reads, "snapshot_read"),
        snapshot_writes: timed(&stats.snapshot_writes, "snapshot_write"),
        copy_out: Count { count: stats.copy_out.chunk_copies, bytes: stats.copy_out.read_bytes },
        store_data_bytes: stats.copy_out.store_data_bytes,
        store_metadata: Count {
            count: stats.copy_out.store_metadata_writes,
            bytes: stats.copy_out.store_metadata_bytes,
        },
        device_write_bytes,
        device_read_bytes,
        store_used_bytes: stats.store.as_ref().and_then(|s| s.used_bytes),
        store_size_bytes: stats.store.as_ref().map(|s| s.size_bytes),
        lost_events: l.inflight_full
            + l.histogram_full
            + l.unmatched
            + l.read_errors
            + l.completions_unseen
            + l.skipped_runs.unwrap_or(0),
    }
}

/// An interval as `hcp stats --history --json` prints it: one line each.
#[derive(Clone, Debug, Serialize)]
pub struct IntervalStats {
    pub schema: &'static str,
    pub session: String,
    pub start_unix: f64,
    pub end_unix: f64,
    pub interval_seconds: f64,
    pub app_writes: Traffic,
    pub app_reads: Traffic,
    pub snapshot_reads: Traffic,
    pub snapshot_writes: Traffic,
    pub copy_out: CopyOut,
    /// As in `hcp stats`: (bytes written to the real device and the store) /
    /// bytes applications wrote to the origin; null without writes.
    pub write_amplification: Option<f64>,
    /// As in `hcp stats`: bytes the real device and the store read for
    /// origin and snapshot reads / bytes those reads asked for; null without
    /// reads.
    pub read_amplification: Option<f64>,
    /// The store at the interval's end, allocated (data and metadata) and
    /// its size; null when device-mapper could not say.
    pub store_used_bytes: Option<u64>,
    pub store_size_bytes: Option<u64>,
    /// Events neither counted nor timed in the interval, every kind summed
    /// (`hcp stats` gives them by kind for the whole session).
    pub lost_events: u64,
}

/// The figures of interval `iv` of session `session`.
pub fn figures(session: &str, iv: &Interval) -> IntervalStats {
    let traffic = |t: &Timed| Traffic {
        count: t.count,
        bytes: t.bytes,
        latency: Some(from_record(&t.latency)).filter(|h| h.count > 0).map(|h| summarize(&h)),
    };
    let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    IntervalStats {
        schema: SCHEMA,
        session: session.to_string(),
        start_unix: iv.start_unix,
        end_unix: iv.end_unix,
        interval_seconds: iv.seconds(),
        app_writes: traffic(&iv.app_writes),
        app_reads: traffic(&iv.app_reads),
        snapshot_reads: traffic(&iv.snapshot_reads),
        snapshot_writes: traffic(&iv.snapshot_writes),
        copy_out: CopyOut {
            read_bytes: iv.copy_out.bytes,
            chunk_copies: iv.copy_out.count,
            store_data_bytes: iv.store_data_bytes,
            store_metadata_writes: iv.store_metadata.count,
            store_metadata_bytes: iv.store_metadata.bytes,
        },
        write_amplification: ratio(iv.device_write_bytes, iv.app_writes.bytes),
        read_amplification: ratio(iv.device_read_bytes, iv.app_reads.bytes + iv.snapshot_reads.bytes),
        store_used_bytes: iv.store_used_bytes,
        store_size_bytes: iv.store_size_bytes,
        lost_events: iv.lost_events,
    }
}
