//! What a traced session costs, computed from the kernel's counters: the
//! `hcp stats` report and the final report `hcp remove` writes. The JSON
//! form is versioned (`schema`) and described by `docs/stats.schema.json`.
//!
//! Every figure says what it counts; losses are reported with every set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hcp_common::bio::{BioLosses, LatKey, Level};
use hcp_common::hist::LatencyHist;
use hcp_common::{DevIoStats, IoOp, OpCount, IO_OPS};
use serde::Serialize;

use crate::kernel::devnum::DevNum;
use crate::state::counters::{from_record, since, Count};
use crate::state::record::Session;
use crate::tracer::hist::{summarize, Summary};
use crate::tracer::pins::Counters;
use crate::tracer::probe::InFlightMode;

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
    pub state: Option<crate::state::record::SessionState>,
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
    /// Bytes the real device and the store read for origin and snapshot
    /// reads (the bios those passed down) / bytes the origin and snapshot
    /// reads asked for; null before any read. Copy-out reads are not
    /// counted: they serve writes, and `copy_out` has them.
    pub read_amplification: Option<f64>,
    pub cow_overhead: CowOverhead,
    pub freeze: Freeze,
    pub devices: Vec<DeviceStats>,
    /// Events that could not be measured, over all the session's devices.
    pub losses: Losses,
    /// How the kernel's programs kept the starts of I/O in flight
    /// (`table`, or `hash_map` on kernels that refuse BPF atomics); null
    /// when not read from the kernel.
    pub in_flight: Option<InFlightMode>,
    /// Figures this kernel cannot give, each with why: they are absent from
    /// the figures above, never a number that would be wrong.
    pub not_measured: Vec<NotMeasured>,
    /// The session's recorded history (`hcp stats --history`); null for a
    /// session traced without a recorder, and in per-interval figures.
    pub history: Option<HistoryStatus>,
    /// The answers to the rollout questions, from these figures and the
    /// history; null without a history.
    pub analysis: Option<super::analysis::Analysis>,
    /// The latency histograms behind the summaries above, for the terminal
    /// display and the Prometheus and HdrHistogram exports.
    #[serde(skip)]
    pub histograms: Vec<NamedHistogram>,
}

/// What a session's history holds, and whether its recorder still runs: a
/// recorder that died leaves a history that stops where it did.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryStatus {
    pub path: PathBuf,
    pub interval_seconds: f64,
    /// Intervals kept (older ones merged into coarser ones).
    pub intervals: usize,
    /// The end of the last interval recorded; null before the first.
    pub recorded_until_unix: Option<f64>,
    pub recorder_running: bool,
    /// Why the history could not be read, if it could not.
    pub problem: Option<String>,
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
pub type Freeze = crate::state::record::WindowRecord;

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

/// A figure the running kernel cannot give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotMeasured {
    /// Its path in this JSON (`losses.skipped_runs`).
    pub figure: &'static str,
    pub reason: &'static str,
}

/// Why [`Losses::skipped_runs`] is absent: the kernel keeps no count.
pub const SKIPPED_RUNS_NOT_COUNTED: NotMeasured = NotMeasured {
    figure: "losses.skipped_runs",
    reason: "this kernel keeps no count of the BPF program runs it skips (no recursion_misses in the programs' \
             fdinfo; Linux 5.12+)",
};

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
    /// Requests that completed without the completion program running (the
    /// kernel skips it now and then without counting a skipped run), found
    /// when the request is issued again: in neither the request counts nor
    /// the latency.
    pub completions_unseen: u64,
    /// For the session only: runs of the tracing programs the kernel
    /// skipped, each an event neither counted nor timed (see
    /// `pins::Counters::skipped_runs`), on any traced device: those of
    /// other sessions' devices too, since one device's cannot be told apart.
    /// Absent where the kernel keeps no such count (see `not_measured`),
    /// and on each device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_runs: Option<u64>,
}

impl Losses {
    fn add(&mut self, l: &BioLosses) {
        self.inflight_full += l.inflight_full;
        self.histogram_full += l.histogram_full;
        self.unmatched += l.unmatched;
        self.read_errors += l.read_errors;
        self.completions_unseen += l.completions_unseen;
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
    // Reads the origin and the snapshot passed down: copy-out's own reads
    // are the write side's (in `copy_out`), not caused by any read.
    let remapped_reads =
        [passed(real, origin, IoOp::Read), passed(real, snapshot, IoOp::Read), passed(store, snapshot, IoOp::Read)];
    let read_amplification =
        ratio(remapped_reads.iter().map(|c| c.bytes).sum(), app_reads.bytes + snapshot_reads.bytes);

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
    let mut losses = Losses { skipped_runs: counters.skipped_runs, ..Losses::default() };
    let not_measured = if counters.skipped_runs.is_none() { vec![SKIPPED_RUNS_NOT_COUNTED] } else { Vec::new() };
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
        in_flight: counters.in_flight,
        not_measured,
        history: None,
        analysis: None,
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
