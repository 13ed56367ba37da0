//! What a traced session costs, computed from the kernel's counters: the
//! `hcp stats` report and the final report `hcp remove` writes. The JSON
//! form is versioned (`schema`) and described by `docs/stats.schema.json`.
//!
//! Every figure says what it counts; losses are reported with every set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hcp_common::bio::{BioLosses, LatKey, Level};
use hcp_common::hist::{LatencyHist, BUCKETS};
use hcp_common::RemapStats;
use hcp_common::{DevIoStats, IoOp, OpCount, IO_OPS};
use serde::Deserialize;
use serde::Serialize;

use crate::devnum::DevNum;
use crate::hist::{summarize, Summary};
use crate::state::{HistRecord, Session};
use crate::trace_pins::Counters;

/// The `schema` value of the JSON form; bumped on incompatible changes.
pub const SCHEMA: &str = "hcp-stats/1";

#[derive(Clone, Debug, Serialize)]
pub struct SessionStats {
    pub schema: &'static str,
    pub session: String,
    pub origin: PathBuf,
    pub traced_since_unix: u64,
    pub read_at_unix: u64,
    /// With `--follow`: the figures count this interval only (seconds);
    /// null: they count since the snapshot.
    pub interval_seconds: Option<f64>,
    /// The session's state as `hcp list` reports it (`invalid`: the store
    /// filled and dm-snapshot dropped the snapshot); null when it was not
    /// read from device-mapper (see [`compute`]).
    pub state: Option<crate::session::SessionState>,
    /// The store: its size now (it grows with auto-extend), use and quota;
    /// null when not read, like `state`.
    pub store: Option<StoreUse>,
    /// Application I/O on the origin device (bios), since the snapshot.
    pub app_writes: Traffic,
    pub app_reads: Traffic,
    /// I/O on the snapshot device, counted apart from copy-out.
    pub snapshot_reads: Traffic,
    pub snapshot_writes: Traffic,
    pub copy_out: CopyOut,
    /// (bytes written to the real device + bytes written to the store) /
    /// bytes applications wrote to the origin; null before any write.
    pub write_amplification: Option<f64>,
    /// (bytes read from the real device + from the store) / bytes read from
    /// the origin and the snapshot; null before any read.
    pub read_amplification: Option<f64>,
    pub cow_overhead: CowOverhead,
    pub freeze: Freeze,
    pub devices: Vec<DeviceStats>,
    /// Events that could not be measured, over all the session's devices.
    pub losses: Losses,
    /// The latency histograms behind the summaries above, for the terminal
    /// display and the Prometheus and HdrHistogram exports.
    #[serde(skip)]
    pub histograms: Vec<NamedHistogram>,
}

/// How full a session's store is, read from its snapshot's status line.
#[derive(Clone, Debug, Serialize)]
pub struct StoreUse {
    pub size_bytes: u64,
    /// Allocated, data and metadata; null unless the snapshot is active.
    pub used_bytes: Option<u64>,
    pub use_percent: Option<f64>,
    /// The most it may take: its size, unless it grows (`--autoextend`).
    pub quota_bytes: u64,
    pub autoextend: bool,
}

/// One of a session's latency histograms, named for export.
#[derive(Clone, Debug)]
pub struct NamedHistogram {
    /// What it times, as a metric-name fragment: `app_write`, `app_read`,
    /// `snapshot_read`, `snapshot_write`, `baseline_app_write` (origin
    /// writes in the `--baseline` period), `real_device_write` (the real
    /// device's own service time).
    pub name: &'static str,
    /// One line for humans (Prometheus `# HELP`, HdrHistogram log tags).
    pub help: &'static str,
    pub hist: LatencyHist,
}

/// Bios of one kind: how many, how many bytes, and their latency from
/// submission to completion (null when none was seen).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Traffic {
    pub count: u64,
    pub bytes: u64,
    pub latency: Option<Summary>,
}

/// What the copy-on-write engine moved: I/O submitted to the real device and
/// the store directly (by dm-snapshot's copier and its exception store),
/// not passed down from the origin or the snapshot. Reads only on the real
/// device: origin writes held for a copy are resubmitted by dm-snapshot
/// itself, so they too reach the real device without a remap event.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyOut {
    /// Bytes read from the real device to be copied into the store.
    pub read_bytes: u64,
    /// Read bios of those copies (one per chunk unless a chunk was split).
    pub chunk_copies: u64,
    /// Bytes of copied chunks written to the store.
    pub store_data_bytes: u64,
    /// Metadata commits to the store (FUA writes) and their bytes.
    pub store_metadata_writes: u64,
    pub store_metadata_bytes: u64,
}

/// Origin write latency during the session against references.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CowOverhead {
    /// Origin writes in the `--baseline` period before the snapshot.
    pub baseline: Option<Summary>,
    /// Origin writes since the snapshot.
    pub during: Option<Summary>,
    /// The real device's own service time for writes (its requests, or its
    /// bios when it is a dm device), the cost floor under the origin.
    pub real_device: Option<Summary>,
    /// during / baseline, per percentile (null without a baseline).
    pub ratio_to_baseline: Option<Ratios>,
    /// during / real_device, per percentile.
    pub ratio_to_real_device: Option<Ratios>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The switch: how long FIFREEZE took, how long the filesystem stayed
/// frozen and the origin suspended, on hcp's clock; null where it did not
/// happen (an unmounted origin is not frozen) or was not seen (a session
/// traced after its start).
pub type Freeze = crate::state::WindowRecord;

#[derive(Clone, Debug, Serialize)]
pub struct DeviceStats {
    pub role: String,
    pub device: PathBuf,
    pub devnum: String,
    /// Bios queued to the device, by direction.
    pub bios: BTreeMap<&'static str, Count>,
    /// Requests the device completed (request-based devices only).
    pub requests: BTreeMap<&'static str, Count>,
    pub fua_writes: Count,
    /// Bios passed down to this device by another traced device.
    pub passed_down: Vec<PassedDown>,
    /// Latency at the level the device completes I/O.
    pub latency: Vec<LevelLatency>,
    pub losses: Losses,
}

/// How many I/Os, and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub count: u64,
    pub bytes: u64,
}

impl From<OpCount> for Count {
    fn from(c: OpCount) -> Count {
        Count { count: c.count, bytes: c.bytes }
    }
}

impl From<Count> for OpCount {
    fn from(c: Count) -> OpCount {
        OpCount { count: c.count, bytes: c.bytes }
    }
}

/// The counters of a session's devices at one moment, as kept in its
/// record, so that its figures can be told from what came before.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CountersRecord {
    pub io: Vec<IoRecord>,
    pub remaps: Vec<RemapRecord>,
    pub latency: Vec<LatRecord>,
    pub losses: Vec<LossRecord>,
    /// `Counters::skipped_runs` (absent from records of older versions).
    #[serde(default)]
    pub skipped_runs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoRecord {
    pub dev: String,
    pub bios: [Count; IO_OPS],
    pub requests: [Count; IO_OPS],
    pub fua: Count,
    pub read_errors: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemapRecord {
    pub to: String,
    pub from: String,
    pub ops: [Count; IO_OPS],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatRecord {
    pub dev: String,
    pub level: u8,
    pub op: u8,
    pub hist: HistRecord,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    pub dev: String,
    pub inflight_full: u64,
    pub histogram_full: u64,
    pub unmatched: u64,
    pub read_errors: u64,
}

/// The record of `c`, for `devices` only.
pub fn record_counters(c: &Counters, devices: &[DevNum]) -> CountersRecord {
    let ours = |d: &DevNum| devices.contains(d);
    let counts = |ops: &[OpCount; IO_OPS]| ops.map(Count::from);
    CountersRecord {
        io: c
            .io
            .iter()
            .filter(|(d, _)| ours(d))
            .map(|(d, s)| IoRecord {
                dev: d.to_string(),
                bios: counts(&s.bio_queued),
                requests: counts(&s.rq_completed),
                fua: s.bio_fua_writes.into(),
                read_errors: s.read_errors,
            })
            .collect(),
        remaps: c
            .remaps
            .iter()
            .filter(|((to, _), _)| ours(to))
            .map(|((to, from), r)| RemapRecord { to: to.to_string(), from: from.to_string(), ops: counts(&r.ops) })
            .collect(),
        latency: c
            .latency
            .iter()
            .filter(|(k, _)| ours(&DevNum::from_kernel(k.dev)))
            .map(|(k, h)| LatRecord {
                dev: DevNum::from_kernel(k.dev).to_string(),
                level: k.level,
                op: k.op,
                hist: to_record(h),
            })
            .collect(),
        losses: c
            .losses
            .iter()
            .filter(|(d, _)| ours(d))
            .map(|(d, l)| LossRecord {
                dev: d.to_string(),
                inflight_full: l.inflight_full,
                histogram_full: l.histogram_full,
                unmatched: l.unmatched,
                read_errors: l.read_errors,
            })
            .collect(),
        skipped_runs: c.skipped_runs,
    }
}

/// What `now` counted beyond `before` (an earlier record of the same
/// devices). Devices, remaps and histograms absent from `before` are new.
pub fn since(now: &Counters, before: &CountersRecord) -> Counters {
    let sub = |a: OpCount, b: Count| OpCount {
        count: a.count.saturating_sub(b.count),
        bytes: a.bytes.saturating_sub(b.bytes),
    };
    let sub_ops = |a: &[OpCount; IO_OPS], b: &[Count; IO_OPS]| core::array::from_fn(|i| sub(a[i], b[i]));
    let parse = |s: &str| s.parse::<DevNum>().ok();
    let mut out = now.clone();
    for r in &before.io {
        if let Some(s) = parse(&r.dev).and_then(|d| out.io.get_mut(&d)) {
            s.bio_queued = sub_ops(&s.bio_queued, &r.bios);
            s.rq_completed = sub_ops(&s.rq_completed, &r.requests);
            s.bio_fua_writes = sub(s.bio_fua_writes, r.fua);
            s.read_errors = s.read_errors.saturating_sub(r.read_errors);
        }
    }
    for r in &before.remaps {
        if let (Some(to), Some(from)) = (parse(&r.to), parse(&r.from)) {
            if let Some(s) = out.remaps.get_mut(&(to, from)) {
                *s = RemapStats { ops: sub_ops(&s.ops, &r.ops) };
            }
        }
    }
    for r in &before.latency {
        let Some(dev) = parse(&r.dev) else { continue };
        let key = LatKey { dev: dev.to_kernel(), level: r.level, op: r.op, _pad: 0 };
        if let Some((_, h)) = out.latency.iter_mut().find(|(k, _)| *k == key) {
            *h = subtract(h, &from_record(&r.hist));
        }
    }
    for r in &before.losses {
        if let Some(l) = parse(&r.dev).and_then(|d| out.losses.get_mut(&d)) {
            l.inflight_full = l.inflight_full.saturating_sub(r.inflight_full);
            l.histogram_full = l.histogram_full.saturating_sub(r.histogram_full);
            l.unmatched = l.unmatched.saturating_sub(r.unmatched);
            l.read_errors = l.read_errors.saturating_sub(r.read_errors);
        }
    }
    out.skipped_runs = now.skipped_runs.saturating_sub(before.skipped_runs);
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct PassedDown {
    pub from_role: String,
    pub from_devnum: String,
    pub ops: BTreeMap<&'static str, Count>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LevelLatency {
    /// `bio` or `request`.
    pub level: &'static str,
    pub op: &'static str,
    pub summary: Summary,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Losses {
    /// Starts not recorded: the in-flight table's slot was taken and its
    /// overflow map full.
    pub inflight_full: u64,
    /// Samples not recorded: the histogram map was full.
    pub histogram_full: u64,
    /// Completions whose start was never seen: I/O in flight when tracing
    /// began, and requests the block layer completes without issuing them
    /// as such (a write with preflush and FUA on a device with a write
    /// cache is issued as a flush sequence).
    pub unmatched: u64,
    /// Kernel reads that failed; for the session: those of any device, which
    /// cannot be attributed.
    pub read_errors: u64,
    /// For the session only: runs of the tracing programs the kernel
    /// skipped, each an event neither counted nor timed (see
    /// `trace_pins::Counters::skipped_runs`), on any traced device: those of
    /// other sessions' devices too, since one device's cannot be told apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_runs: Option<u64>,
}

impl Losses {
    fn add(&mut self, l: &BioLosses) {
        self.inflight_full += l.inflight_full;
        self.histogram_full += l.histogram_full;
        self.unmatched += l.unmatched;
        self.read_errors += l.read_errors;
    }
}

/// The stats of `session` from `counters`: what was counted since the
/// snapshot went live. `state` and `store` are left null: they come from
/// device-mapper, which the caller reads (`session::stats` does).
pub fn compute(session: &Session, counters: &Counters, now_unix: u64) -> SessionStats {
    let trace = session.trace.as_ref();
    let since_start = trace.and_then(|t| t.at_start.as_ref()).map(|r| since(counters, r));
    let counters = since_start.as_ref().unwrap_or(counters);
    let devices: Vec<(String, DevNum, PathBuf)> = trace
        .map(|t| {
            t.devices.iter().filter_map(|d| Some((d.role.clone(), d.devnum.parse().ok()?, d.path.clone()))).collect()
        })
        .unwrap_or_default();
    let dev_of = |role: &str| devices.iter().find(|(r, _, _)| r == role).map(|(_, d, _)| *d);
    let io = |dev: Option<DevNum>| dev.and_then(|d| counters.io.get(&d)).copied().unwrap_or_default();
    let hist = |dev: Option<DevNum>, level: Level, op: IoOp| -> Option<LatencyHist> {
        let dev = dev?.to_kernel();
        let key = LatKey { dev, level: level as u8, op: op as u8, _pad: 0 };
        counters.latency.iter().find(|(k, _)| *k == key).map(|(_, h)| *h)
    };
    let passed = |to: Option<DevNum>, from: Option<DevNum>, op: IoOp| -> OpCount {
        match (to, from) {
            (Some(to), Some(from)) => counters.remaps.get(&(to, from)).map(|r| r.ops[op as usize]).unwrap_or_default(),
            _ => OpCount::default(),
        }
    };
    let (origin, real, store, snapshot) = (dev_of("origin"), dev_of("real"), dev_of("store"), dev_of("snapshot"));

    let during = hist(origin, Level::Bio, IoOp::Write);
    let traffic = |dev: Option<DevNum>, op: IoOp, latency: Option<LatencyHist>| {
        let c = io(dev).bio_queued[op as usize];
        Traffic { count: c.count, bytes: c.bytes, latency: latency.filter(|h| h.count > 0).map(|h| summarize(&h)) }
    };
    let app_writes = traffic(origin, IoOp::Write, during);
    let app_reads = traffic(origin, IoOp::Read, hist(origin, Level::Bio, IoOp::Read));
    let snapshot_reads = traffic(snapshot, IoOp::Read, hist(snapshot, Level::Bio, IoOp::Read));
    let snapshot_writes = traffic(snapshot, IoOp::Write, hist(snapshot, Level::Bio, IoOp::Write));

    let (real_io, store_io) = (io(real), io(store));
    let direct = |total: OpCount, passed: &[OpCount]| OpCount {
        count: total.count.saturating_sub(passed.iter().map(|p| p.count).sum()),
        bytes: total.bytes.saturating_sub(passed.iter().map(|p| p.bytes).sum()),
    };
    let real_direct_reads = direct(
        real_io.bio_queued[IoOp::Read as usize],
        &[passed(real, origin, IoOp::Read), passed(real, snapshot, IoOp::Read)],
    );
    let store_direct_writes = direct(
        store_io.bio_queued[IoOp::Write as usize],
        &[passed(store, snapshot, IoOp::Write), store_io.bio_fua_writes],
    );
    let copy_out = CopyOut {
        read_bytes: real_direct_reads.bytes,
        chunk_copies: real_direct_reads.count,
        store_data_bytes: store_direct_writes.bytes,
        store_metadata_writes: store_io.bio_fua_writes.count,
        store_metadata_bytes: store_io.bio_fua_writes.bytes,
    };
    let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    let write_amplification = ratio(
        real_io.bio_queued[IoOp::Write as usize].bytes + store_io.bio_queued[IoOp::Write as usize].bytes,
        app_writes.bytes,
    );
    let read_amplification = ratio(
        real_io.bio_queued[IoOp::Read as usize].bytes + store_io.bio_queued[IoOp::Read as usize].bytes,
        app_reads.bytes + snapshot_reads.bytes,
    );

    let baseline =
        trace.and_then(|t| t.baseline.as_ref()).map(from_record).filter(|h| h.count > 0).map(|h| summarize(&h));
    let real_hist = hist(real, Level::Request, IoOp::Write).or_else(|| hist(real, Level::Bio, IoOp::Write));
    let real_device = real_hist.filter(|h| h.count > 0).map(|h| summarize(&h));
    let during_summary = app_writes.latency.clone();
    let cow_overhead = CowOverhead {
        ratio_to_baseline: during_summary.as_ref().zip(baseline.as_ref()).map(|(d, b)| ratios(d, b)),
        ratio_to_real_device: during_summary.as_ref().zip(real_device.as_ref()).map(|(d, r)| ratios(d, r)),
        baseline,
        during: during_summary.clone(),
        real_device,
    };
    let freeze = trace.and_then(|t| t.window.clone()).unwrap_or_default();
    let histograms = [
        ("app_write", "Application writes to the origin, bio submission to completion", during),
        (
            "app_read",
            "Application reads of the origin, bio submission to completion",
            hist(origin, Level::Bio, IoOp::Read),
        ),
        (
            "snapshot_read",
            "Reads of the snapshot device, bio submission to completion",
            hist(snapshot, Level::Bio, IoOp::Read),
        ),
        (
            "snapshot_write",
            "Writes to the snapshot device, bio submission to completion",
            hist(snapshot, Level::Bio, IoOp::Write),
        ),
        (
            "baseline_app_write",
            "Application writes to the origin in the baseline period before the snapshot",
            trace.and_then(|t| t.baseline.as_ref()).map(from_record),
        ),
        (
            "real_device_write",
            "Writes serviced by the real origin device (requests, or bios of a dm device)",
            real_hist,
        ),
    ]
    .into_iter()
    .filter_map(|(name, help, h)| Some(NamedHistogram { name, help, hist: h.filter(|h| h.count > 0)? }))
    .collect();

    let role_of = |dev: DevNum| devices.iter().find(|(_, d, _)| *d == dev).map(|(r, _, _)| r.clone());
    let mut losses = Losses { skipped_runs: Some(counters.skipped_runs), ..Losses::default() };
    losses.read_errors += counters.unattributed.read_errors;
    let device_stats = devices
        .iter()
        .map(|(role, dev, path)| {
            let s: DevIoStats = io(Some(*dev));
            let mut dev_losses = Losses::default();
            if let Some(l) = counters.losses.get(dev) {
                dev_losses.add(l);
                losses.add(l);
            }
            DeviceStats {
                role: role.clone(),
                device: path.clone(),
                devnum: dev.to_string(),
                bios: by_op(&s.bio_queued),
                requests: by_op(&s.rq_completed),
                fua_writes: s.bio_fua_writes.into(),
                passed_down: counters
                    .remaps
                    .iter()
                    .filter(|((to, _), _)| to == dev)
                    .map(|((_, from), r)| PassedDown {
                        from_role: role_of(*from).unwrap_or_else(|| "untraced".to_string()),
                        from_devnum: from.to_string(),
                        ops: by_op(&r.ops),
                    })
                    .collect(),
                latency: counters
                    .latency
                    .iter()
                    .filter(|(k, h)| k.dev == dev.to_kernel() && h.count > 0)
                    .map(|(k, h)| LevelLatency {
                        level: if k.level == Level::Request as u8 { "request" } else { "bio" },
                        op: IoOp::ALL.get(usize::from(k.op)).map_or("other", |op| op.name()),
                        summary: summarize(h),
                    })
                    .collect(),
                losses: dev_losses,
            }
        })
        .collect();
    SessionStats {
        schema: SCHEMA,
        session: session.id.clone(),
        origin: session.origin.path.clone(),
        traced_since_unix: trace.map_or(0, |t| t.since_unix),
        read_at_unix: now_unix,
        interval_seconds: None,
        state: None,
        store: None,
        app_writes,
        app_reads,
        snapshot_reads,
        snapshot_writes,
        copy_out,
        write_amplification,
        read_amplification,
        cow_overhead,
        freeze,
        devices: device_stats,
        losses,
        histograms,
    }
}

fn by_op(ops: &[OpCount; IO_OPS]) -> BTreeMap<&'static str, Count> {
    IoOp::ALL.iter().map(|op| (op.name(), ops[*op as usize].into())).filter(|(_, c): &(_, Count)| c.count > 0).collect()
}

fn ratios(a: &Summary, b: &Summary) -> Ratios {
    let r = |x: u64, y: u64| if y == 0 { 0.0 } else { x as f64 / y as f64 };
    Ratios {
        p50: r(a.p50_ns, b.p50_ns),
        p90: r(a.p90_ns, b.p90_ns),
        p99: r(a.p99_ns, b.p99_ns),
        p999: r(a.p999_ns, b.p999_ns),
        max: r(a.max_ns, b.max_ns),
    }
}

/// A sparse record of a histogram.
pub fn to_record(h: &LatencyHist) -> HistRecord {
    HistRecord {
        count: h.count,
        sum_ns: h.sum_ns,
        max_ns: h.max_ns,
        buckets: h.buckets.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i as u32, *c)).collect(),
    }
}

pub fn from_record(r: &HistRecord) -> LatencyHist {
    let mut h = LatencyHist::zeroed();
    h.count = r.count;
    h.sum_ns = r.sum_ns;
    h.max_ns = r.max_ns;
    for (i, c) in &r.buckets {
        if let Some(b) = h.buckets.get_mut(*i as usize) {
            *b = *c;
        }
    }
    h
}

/// The samples in `now` that were not yet in `before` (an earlier read of
/// the same histogram). The maximum is exact when it grew; otherwise it is
/// bounded by the highest bucket that grew.
pub fn subtract(now: &LatencyHist, before: &LatencyHist) -> LatencyHist {
    let mut h = LatencyHist::zeroed();
    for i in 0..BUCKETS {
        h.buckets[i] = now.buckets[i].saturating_sub(before.buckets[i]);
    }
    h.count = now.count.saturating_sub(before.count);
    h.sum_ns = now.sum_ns.saturating_sub(before.sum_ns);
    h.max_ns = if now.max_ns > before.max_ns {
        now.max_ns
    } else {
        h.buckets
            .iter()
            .rposition(|c| *c > 0)
            .map_or(0, |i| hcp_common::hist::bucket_high(i).saturating_sub(1).min(now.max_ns))
    };
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> LatencyHist {
        let mut h = LatencyHist::zeroed();
        for v in values {
            h.record(*v);
        }
        h
    }

    #[test]
    fn figures_count_only_what_came_after_the_record() {
        let dev = DevNum { major: 253, minor: 4 };
        let mut c = Counters::default();
        let mut io = DevIoStats::default();
        io.bio_queued[IoOp::Write as usize] = OpCount { count: 10, bytes: 40960 };
        c.io.insert(dev, io);
        c.latency.push((LatKey { dev: dev.to_kernel(), level: 0, op: IoOp::Write as u8, _pad: 0 }, hist(&[5_000; 10])));
        c.skipped_runs = 4;
        let before = record_counters(&c, &[dev]);
        assert_eq!(record_counters(&c, &[DevNum { major: 1, minor: 1 }]).io.len(), 0, "other devices are left out");

        c.io.get_mut(&dev).unwrap().bio_queued[IoOp::Write as usize] = OpCount { count: 13, bytes: 53248 };
        c.latency[0].1.record(7_000);
        let other = DevNum { major: 7, minor: 0 };
        c.io.insert(other, io);
        c.skipped_runs = 9;
        let d = since(&c, &before);
        assert_eq!(d.skipped_runs, 5, "skipped runs since the record");
        assert_eq!(d.io[&dev].bio_queued[IoOp::Write as usize], OpCount { count: 3, bytes: 12288 });
        assert_eq!(d.io[&other], io, "a device absent from the record counts from zero");
        assert_eq!(d.latency[0].1.count, 1);
        assert_eq!(d.latency[0].1.max_ns, 7_000);
        let json = serde_json::to_string(&before).unwrap();
        assert_eq!(serde_json::from_str::<CountersRecord>(&json).unwrap(), before, "records survive the session file");
        let old = r#"{"io": [], "remaps": [], "latency": [], "losses": []}"#;
        assert_eq!(serde_json::from_str::<CountersRecord>(old).unwrap().skipped_runs, 0, "an older record reads");
    }

    #[test]
    fn records_round_trip() {
        let h = hist(&[1_000, 2_000, 2_000, 5_000_000]);
        assert_eq!(from_record(&to_record(&h)), h);
        assert_eq!(to_record(&h).buckets.len(), 3, "sparse: only non-empty buckets");
    }

    #[test]
    fn subtraction_keeps_only_new_samples() {
        let before = hist(&[10_000, 20_000]);
        let mut now = before;
        now.record(30_000);
        now.record(1_000_000);
        let d = subtract(&now, &before);
        assert_eq!(d.count, 2);
        assert_eq!(d.sum_ns, 1_030_000);
        assert_eq!(d.max_ns, 1_000_000, "a new maximum is exact");
        assert_eq!(d.buckets.iter().sum::<u64>(), 2);

        let big = hist(&[9_000_000]);
        let mut later = big;
        later.record(50_000);
        let d = subtract(&later, &big);
        assert_eq!(d.count, 1);
        assert!(d.max_ns >= 50_000 && d.max_ns <= 51_000, "bounded by the bucket that grew: {}", d.max_ns);
    }
}
