//! The figures of traced sessions in the Prometheus text exposition format,
//! version 0.0.4, for node_exporter's textfile collector. [`render`] is the
//! one export: any number of sessions in one text, each metric family's
//! `# HELP` and `# TYPE` once, followed by the samples of every session.
//!
//! # Metrics
//!
//! Every sample has a `session` label (`hcp1`); only `hcp_session_info` also
//! names the origin, so that a path does not multiply the series of every
//! family. Values are in base units, seconds and bytes. A figure that is
//! null in the JSON form (see `docs/stats.schema.json`) has no sample, and a
//! family with no sample in any session is left out.
//!
//! | family | type | labels | from the JSON form |
//! |---|---|---|---|
//! | `hcp_session_info` | gauge, always 1 | `session`, `origin` | `session`, `origin` |
//! | `hcp_session_traced_since_timestamp_seconds` | gauge | `session` | `traced_since_unix` (none when 0: untraced) |
//! | `hcp_session_state` | gauge, 1 or 0 | `session`, `state` | `state`: one series per state, 1 for the session's |
//! | `hcp_store_size_bytes`, `hcp_store_used_bytes`, `hcp_store_quota_bytes` | gauge | `session` | `store.size_bytes`, `.used_bytes`, `.quota_bytes` |
//! | `hcp_io_bios_total` | counter | `session`, `kind` | `app_writes.count`, `app_reads.count`, `snapshot_reads.count`, `snapshot_writes.count` |
//! | `hcp_io_bytes_total` | counter | `session`, `kind` | the same, `.bytes` |
//! | `hcp_copy_out_<field>_total` | counter | `session` | each field of `copy_out` |
//! | `hcp_write_amplification_ratio`, `hcp_read_amplification_ratio` | gauge | `session` | `write_amplification`, `read_amplification` |
//! | `hcp_pre_flush_seconds`, `hcp_pre_flush_written_bytes` | gauge | `session` | `freeze.pre_flush.seconds`, `.device_written_bytes` |
//! | `hcp_freeze_call_seconds`, `hcp_frozen_seconds`, `hcp_suspended_seconds` | gauge | `session` | the fields of `freeze` (hcp's clock) |
//! | `hcp_kernel_freeze_call_seconds`, `hcp_kernel_frozen_seconds`, `hcp_kernel_suspended_seconds` | gauge | `session` | the same, `freeze.kernel` |
//! | `hcp_write_stall_max_seconds`, `hcp_write_stall_unfinished_calls`, `hcp_switch_lost_events` | gauge | `session` | `freeze.kernel.longest_write_stall_seconds`, `.writes_still_held`, `.lost_events` |
//! | `hcp_lost_events_total` | counter | `session`, `reason` | each field of `losses` |
//! | `hcp_latency_seconds` | histogram | `session`, `kind` | each [`NamedHistogram`] |
//! | `hcp_latency_max_seconds` | gauge | `session`, `kind` | its exact maximum |
//!
//! `kind` of the I/O counters is one of `app_write`, `app_read`,
//! `snapshot_read` and `snapshot_write`, the names of the latency
//! histograms of the same bios, so that counts, bytes and latency of one
//! kind go together; the histograms add `baseline_app_write` and
//! `real_device_write`. `reason` is a field name of `losses`:
//! `inflight_full`, `histogram_full`, `unmatched`, `read_errors`,
//! `completions_unseen`, `skipped_runs`.
//! The copy-on-write overhead ratios and the percentiles of the JSON form
//! are left out: PromQL gets them from the histograms.
//!
//! The counters count since the snapshot: render stats whose
//! `interval_seconds` is null. Those of a `--follow` interval count that
//! interval only, which Prometheus would take for counter resets.
//!
//! # Buckets
//!
//! The `le` edges of `hcp_latency_seconds` are the powers of two of
//! nanoseconds from 2^10 ns (1.024 µs) to 2^36 ns (about 68.7 s), written
//! in seconds as plain decimals (`0.000001024`), then `+Inf`. Above its
//! linear range, [`hcp_common::hist`] splits each octave `[2^k, 2^(k+1))`
//! into buckets of its own, so every one of these edges is a bucket edge
//! and the cumulative counts are exact, not estimated: a bucket `le` = 2^k
//! ns counts the values below 2^k ns, that is those of at most 2^k - 1 ns
//! (the kernel measures whole nanoseconds). The last edge is
//! [`OVERFLOW_NS`](hcp_common::hist::OVERFLOW_NS): what lies beyond it is
//! counted in `+Inf` only. Finer edges would be exact too, but 27 series
//! per histogram already resolve latency within a factor of two, as
//! `biolatency` does.

use std::fmt::{self, Write as _};
use std::path::Path;

use hcp_common::hist::{bucket_of, LatencyHist, LINEAR_BUCKETS, OCTAVES, UNIT_NS};

use crate::error::{Error, Result};
use crate::figures::stats::{Losses, NamedHistogram, SessionStats, Traffic};
use crate::state::record::SessionState;

/// The `le` edges of `hcp_latency_seconds`, in nanoseconds: 2^10 to 2^36,
/// the first edge of each octave of [`hcp_common::hist`] and the start of
/// its overflow bucket.
pub const LE_NS: [u64; OCTAVES + 1] = {
    let mut edges = [0; OCTAVES + 1];
    let mut k = 0;
    while k < edges.len() {
        edges[k] = (LINEAR_BUCKETS as u64 * UNIT_NS) << k;
        k += 1;
    }
    edges
};

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";
const HISTOGRAM: &str = "histogram";
const NS_PER_S: f64 = 1e9;

/// A figure of one session: a scalar family's sample, if it has one.
type Figure = fn(&SessionStats) -> Option<Value>;

/// The families with one unlabelled (but for `session`) sample per session.
const SCALARS: [(&str, &str, &str, Figure); 22] = [
    ("hcp_session_traced_since_timestamp_seconds", GAUGE, "Unix time since which the session is traced", |s| {
        (s.traced_since_unix > 0).then_some(Value::Int(s.traced_since_unix))
    }),
    ("hcp_copy_out_read_bytes_total", COUNTER, "Bytes read from the real device to be copied into the store", |s| {
        Some(Value::Int(s.copy_out.read_bytes))
    }),
    (
        "hcp_copy_out_chunk_copies_total",
        COUNTER,
        "Read bios of chunks copied into the store (one per chunk unless a chunk was split)",
        |s| Some(Value::Int(s.copy_out.chunk_copies)),
    ),
    ("hcp_copy_out_store_data_bytes_total", COUNTER, "Bytes of copied chunks written to the store", |s| {
        Some(Value::Int(s.copy_out.store_data_bytes))
    }),
    ("hcp_copy_out_store_metadata_writes_total", COUNTER, "Metadata commits to the store (FUA writes)", |s| {
        Some(Value::Int(s.copy_out.store_metadata_writes))
    }),
    ("hcp_copy_out_store_metadata_bytes_total", COUNTER, "Bytes of metadata commits to the store", |s| {
        Some(Value::Int(s.copy_out.store_metadata_bytes))
    }),
    (
        "hcp_write_amplification_ratio",
        GAUGE,
        "Bytes written to the real device and the store per byte applications wrote to the origin",
        |s| s.write_amplification.map(Value::Float),
    ),
    (
        "hcp_read_amplification_ratio",
        GAUGE,
        "Bytes the real device and the store read for origin and snapshot reads per byte those reads asked for (copy-out not counted)",
        |s| s.read_amplification.map(Value::Float),
    ),
    (
        "hcp_pre_flush_seconds",
        GAUGE,
        "How long the writeback before the snapshot's freeze took (syncfs passes, writers not held), on hcp's clock",
        |s| s.freeze.pre_flush.as_ref().map(|p| Value::Float(p.seconds)),
    ),
    (
        "hcp_pre_flush_written_bytes",
        GAUGE,
        "Bytes the origin device completed writing during the writeback before the snapshot's freeze",
        |s| s.freeze.pre_flush.as_ref()?.device_written_bytes.map(Value::Int),
    ),
    ("hcp_freeze_call_seconds", GAUGE, "How long FIFREEZE took at the snapshot, on hcp's clock", |s| {
        s.freeze.freeze_call_seconds.map(Value::Float)
    }),
    (
        "hcp_frozen_seconds",
        GAUGE,
        "How long the origin's filesystem stayed frozen at the snapshot, on hcp's clock",
        |s| s.freeze.frozen_seconds.map(Value::Float),
    ),
    (
        "hcp_suspended_seconds",
        GAUGE,
        "How long the origin device stayed suspended at the snapshot, on hcp's clock",
        |s| s.freeze.suspended_seconds.map(Value::Float),
    ),
    ("hcp_kernel_freeze_call_seconds", GAUGE, "How long FIFREEZE took at the snapshot, in the kernel", |s| {
        s.freeze.kernel.as_ref()?.freeze_call_seconds.map(Value::Float)
    }),
    (
        "hcp_kernel_frozen_seconds",
        GAUGE,
        "How long the origin's filesystem stayed frozen at the snapshot, in the kernel",
        |s| s.freeze.kernel.as_ref()?.frozen_seconds.map(Value::Float),
    ),
    (
        "hcp_kernel_suspended_seconds",
        GAUGE,
        "How long the origin device stayed suspended at the snapshot, in the kernel",
        |s| s.freeze.kernel.as_ref()?.suspended_seconds.map(Value::Float),
    ),
    (
        "hcp_write_stall_max_seconds",
        GAUGE,
        "The longest write or sync system call on the origin's filesystem around the snapshot's freeze",
        |s| s.freeze.kernel.as_ref()?.longest_write_stall_seconds.map(Value::Float),
    ),
    (
        "hcp_write_stall_unfinished_calls",
        GAUGE,
        "Calls held by the freeze still not returned 2 s after the thaw (the stall is then a lower bound)",
        |s| Some(Value::Int(s.freeze.kernel.as_ref()?.writes_still_held)),
    ),
    ("hcp_switch_lost_events", GAUGE, "Freeze, suspend and write-stall events not recorded at the snapshot", |s| {
        Some(Value::Int(s.freeze.kernel.as_ref()?.lost_events))
    }),
    ("hcp_store_size_bytes", GAUGE, "The store's size now (it grows with --autoextend)", |s| {
        Some(Value::Int(s.store.as_ref()?.size_bytes))
    }),
    (
        "hcp_store_used_bytes",
        GAUGE,
        "Store bytes in use, data and metadata (none once the snapshot is invalid): at the size, dm drops the \
         snapshot",
        |s| s.store.as_ref()?.used_bytes.map(Value::Int),
    ),
    ("hcp_store_quota_bytes", GAUGE, "The most the store may take (its size, unless it grows)", |s| {
        Some(Value::Int(s.store.as_ref()?.quota_bytes))
    }),
];

/// The values of `hcp_session_state`'s `state` label, as in `list`.
const STATES: [SessionState; 6] = [
    SessionState::Active,
    SessionState::Invalid,
    SessionState::Merging,
    SessionState::Starting,
    SessionState::Removing,
    SessionState::Incomplete,
];

/// The traffic of one kind of a session.
type Kind = fn(&SessionStats) -> &Traffic;

/// The `kind`s of `hcp_io_bios_total` and `hcp_io_bytes_total`.
const IO_KINDS: [(&str, Kind); 4] = [
    ("app_write", |s| &s.app_writes),
    ("app_read", |s| &s.app_reads),
    ("snapshot_read", |s| &s.snapshot_reads),
    ("snapshot_write", |s| &s.snapshot_writes),
];

/// The `reason`s of `hcp_lost_events_total`: `skipped_runs` only where
/// the kernel counts them (a series absent, not a 0 it cannot vouch for).
fn loss_reasons(l: &Losses) -> impl Iterator<Item = (&'static str, u64)> {
    [
        ("inflight_full", Some(l.inflight_full)),
        ("histogram_full", Some(l.histogram_full)),
        ("unmatched", Some(l.unmatched)),
        ("read_errors", Some(l.read_errors)),
        ("completions_unseen", Some(l.completions_unseen)),
        ("skipped_runs", l.skipped_runs),
    ]
    .into_iter()
    .filter_map(|(reason, n)| Some((reason, n?)))
}

/// Writes `text` to `path` for node_exporter's textfile collector: a
/// world-readable file (the exporter does not run as root), replaced by a
/// rename, so a scrape sees the last complete file and never half of one.
/// The temporary name starts with a dot and lacks `.prom`: the collector
/// skips it.
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::usage(format!("--output {}: give a file name, such as hcp.prom", path.display())))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::usage(format!(
            "--output {}: {} is not a directory: make it, or give the textfile collector's directory",
            path.display(),
            dir.display()
        )));
    }
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    // World-readable: the collector reads it as its own user.
    crate::state::private::replace_file(&tmp, path, text.as_bytes(), 0o644)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// `stats` in the text exposition format, one family after another. Give
/// each session once: two entries of one session would repeat its series.
pub fn render(stats: &[SessionStats]) -> String {
    let mut out = String::new();

    let mut info = Family::new("hcp_session_info", GAUGE, "A traced snapshot session and its origin device; always 1");
    for s in stats {
        info.sample(&s.session, "", &[("origin", &s.origin.to_string_lossy())], Value::Int(1));
    }
    info.write_to(&mut out);

    // One series per state, 1 for the session's: an alert on
    // `hcp_session_state{state="invalid"} == 1` needs no regex.
    let mut state = Family::new("hcp_session_state", GAUGE, "The session's state (1) and the others (0), as hcp -l");
    for s in stats {
        if let Some(now) = s.state {
            for st in STATES {
                let name =
                    serde_json::to_value(st).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                state.sample(&s.session, "", &[("state", &name)], Value::Int(u64::from(st == now)));
            }
        }
    }
    state.write_to(&mut out);

    let mut bios =
        Family::new("hcp_io_bios_total", COUNTER, "Bios of applications on the origin and of the snapshot device");
    let mut bytes = Family::new("hcp_io_bytes_total", COUNTER, "Bytes of the bios counted by hcp_io_bios_total");
    for s in stats {
        for (kind, traffic) in IO_KINDS {
            bios.sample(&s.session, "", &[("kind", kind)], Value::Int(traffic(s).count));
            bytes.sample(&s.session, "", &[("kind", kind)], Value::Int(traffic(s).bytes));
        }
    }
    bios.write_to(&mut out);
    bytes.write_to(&mut out);

    for (name, kind, help, figure) in SCALARS {
        let mut f = Family::new(name, kind, help);
        for s in stats {
            if let Some(v) = figure(s) {
                f.sample(&s.session, "", &[], v);
            }
        }
        f.write_to(&mut out);
    }

    let mut lost = Family::new("hcp_lost_events_total", COUNTER, "Events hcp could not measure, by reason");
    for s in stats {
        for (reason, n) in loss_reasons(&s.losses) {
            lost.sample(&s.session, "", &[("reason", reason)], Value::Int(n));
        }
    }
    lost.write_to(&mut out);

    let mut latency = Family::new(
        "hcp_latency_seconds",
        HISTOGRAM,
        "Block I/O latency by kind: app_write, app_read, snapshot_read, snapshot_write (bio submission to \
         completion), baseline_app_write (origin writes before the snapshot), real_device_write",
    );
    let mut max = Family::new("hcp_latency_max_seconds", GAUGE, "The largest latency of hcp_latency_seconds, exact");
    for s in stats {
        for h in &s.histograms {
            histogram(&mut latency, &s.session, h);
            max.sample(&s.session, "", &[("kind", h.name)], Value::Float(h.hist.max_ns as f64 / NS_PER_S));
        }
    }
    latency.write_to(&mut out);
    max.write_to(&mut out);
    out
}

/// The samples of one histogram: cumulative counts at [`LE_NS`] and `+Inf`,
/// the sum of the values and their count. `+Inf` and `_count` are the
/// buckets' total, which is `count` but for a read that raced an update.
fn histogram(f: &mut Family, session: &str, named: &NamedHistogram) {
    let h: &LatencyHist = &named.hist;
    let kind = ("kind", named.name);
    let (mut below, mut from) = (0, 0);
    for edge in LE_NS {
        // `edge` opens bucket `to`: the buckets before it hold the values below.
        let to = bucket_of(edge);
        below += h.buckets[from..to].iter().sum::<u64>();
        from = to;
        f.sample(
            session,
            "_bucket",
            &[kind, ("le", &Value::Float(edge as f64 / NS_PER_S).to_string())],
            Value::Int(below),
        );
    }
    let total = h.buckets.iter().sum();
    f.sample(session, "_bucket", &[kind, ("le", "+Inf")], Value::Int(total));
    f.sample(session, "_sum", &[kind], Value::Float(h.sum_ns as f64 / NS_PER_S));
    f.sample(session, "_count", &[kind], Value::Int(total));
}

/// A sample value: counts print as integers, anything else as a decimal or
/// as Prometheus spells the non-finite values.
#[derive(Clone, Copy, Debug)]
enum Value {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) if x.is_nan() => f.write_str("NaN"),
            Value::Float(x) if x.is_infinite() => f.write_str(if x > 0.0 { "+Inf" } else { "-Inf" }),
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

/// One metric family. Its samples are gathered before it is written, so
/// that a family with none is left out whole.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: String,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family { name, kind, help, samples: String::new() }
    }

    /// A sample of the series `name` + `suffix` (`_bucket`, `_sum`, `_count`
    /// of a histogram), labelled `session` and then `labels`.
    fn sample(&mut self, session: &str, suffix: &str, labels: &[(&str, &str)], value: Value) {
        let s = &mut self.samples;
        let _ = write!(s, "{}{suffix}{{session=\"{}\"", self.name, escape_label(session));
        for (name, v) in labels {
            let _ = write!(s, ",{name}=\"{}\"", escape_label(v));
        }
        let _ = writeln!(s, "}} {value}");
    }

    fn write_to(self, out: &mut String) {
        if !self.samples.is_empty() {
            let _ = writeln!(out, "# HELP {} {}", self.name, self.help.replace('\\', r"\\").replace('\n', r"\n"));
            let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
            out.push_str(&self.samples);
        }
    }
}

/// A label value as the format quotes it: backslash, double quote and line
/// feed escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use hcp_common::bio::{BioLosses, LatKey, Level};
    use hcp_common::hist::{bucket_high, bucket_low, OVERFLOW, OVERFLOW_NS};
    use hcp_common::{DevIoStats, IoOp, OpCount};

    use super::*;
    use crate::figures::stats::compute;
    use crate::kernel::devnum::DevNum;
    use crate::state::record::{Origin, Phase, Session, Store, TraceRecord, TracedDevice, RECORD_VERSION};
    use crate::tracer::pins::Counters;

    /// One sample line, parsed after the 0.0.4 grammar.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    impl Sample {
        fn label(&self, name: &str) -> Option<&str> {
            self.labels.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    fn is_name(s: &str, colon: bool) -> bool {
        let ok = |c: char, first: bool| {
            c == '_' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit()) || (colon && c == ':')
        };
        s.chars().enumerate().all(|(i, c)| ok(c, i == 0)) && !s.is_empty()
    }

    fn parse_value(v: &str) -> f64 {
        match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => {
                assert!(v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)), "value {v:?}");
                v.parse().unwrap_or_else(|e| panic!("value {v:?}: {e}"))
            }
        }
    }

    /// `name{label="value",...} value`, label values unescaped.
    fn parse_sample(line: &str) -> Sample {
        let end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line:?}"));
        let name = &line[..end];
        assert!(is_name(name, true), "metric name {name:?} in {line:?}");
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                let eq = rest.find('=').unwrap_or_else(|| panic!("label without '=' in {line:?}"));
                let label = &rest[..eq];
                assert!(is_name(label, false), "label name {label:?} in {line:?}");
                rest = rest[eq + 1..].strip_prefix('"').unwrap_or_else(|| panic!("unquoted label in {line:?}"));
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let close = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value in {line:?}"),
                    }
                };
                labels.push((label.to_string(), value));
                rest = &rest[close + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else {
                    rest = rest.strip_prefix('}').unwrap_or_else(|| panic!("labels not closed in {line:?}"));
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        Sample { name: name.to_string(), labels, value: parse_value(value) }
    }

    /// Checks the structure of `text` and returns its samples: every line
    /// a HELP, then the TYPE of the same family, once per family, then that
    /// family's samples; counters end in `_total`; `session` first on every
    /// sample; no series twice.
    fn check(text: &str) -> Vec<Sample> {
        assert!(text.is_empty() || text.ends_with('\n'), "the last line is not ended");
        let (mut families, mut series) = (BTreeSet::new(), BTreeSet::new());
        let mut current: Option<(String, String)> = None;
        let mut help: Option<String> = None;
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("# HELP ") {
                let (name, doc) = h.split_once(' ').unwrap_or_else(|| panic!("HELP without text: {line:?}"));
                assert!(!doc.is_empty() && help.is_none(), "{line:?}");
                help = Some(name.to_string());
            } else if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap_or_else(|| panic!("TYPE without type: {line:?}"));
                assert_eq!(help.take().as_deref(), Some(name), "TYPE not right after its HELP: {line:?}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line:?}");
                assert!(is_name(name, true) && name.starts_with("hcp_"), "{line:?}");
                assert_eq!(
                    kind == "counter",
                    name.ends_with("_total"),
                    "counters, and only they, end in _total: {line:?}"
                );
                assert!(families.insert(name.to_string()), "family {name} typed twice");
                current = Some((name.to_string(), kind.to_string()));
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "stray line {line:?}");
                assert!(help.is_none(), "HELP without TYPE before {line:?}");
                let s = parse_sample(line);
                let (family, kind) = current.as_ref().unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
                let base = match kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"].iter().find_map(|x| s.name.strip_suffix(x)),
                    _ => Some(s.name.as_str()),
                };
                assert_eq!(base, Some(family.as_str()), "{line:?} is not a sample of {family}");
                assert_eq!(s.labels.first().map(|(n, _)| n.as_str()), Some("session"), "{line:?}");
                assert_eq!(s.label("origin").is_some(), family == "hcp_session_info", "{line:?}");
                let key = format!("{}{:?}", s.name, s.labels);
                assert!(series.insert(key), "series twice: {line:?}");
                samples.push(s);
            }
        }
        assert!(help.is_none(), "HELP at the end without TYPE");
        samples
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
        samples.iter().find(|s| s.name == name && labels.iter().all(|(n, v)| s.label(n) == Some(v)))
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        find(samples, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}")).value
    }

    /// Buckets of each (session, kind), in order: `le` rising, counts never
    /// falling, `+Inf` last and equal to `_count`. Returns them by series.
    fn check_histograms(samples: &[Sample]) -> BTreeMap<(String, String), Vec<(f64, f64)>> {
        let mut by_series: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == "hcp_latency_seconds_bucket") {
            let key = (s.label("session").unwrap().to_string(), s.label("kind").unwrap().to_string());
            by_series.entry(key).or_default().push((parse_value(s.label("le").unwrap()), s.value));
        }
        for ((session, kind), buckets) in &by_series {
            let labels = [("session", session.as_str()), ("kind", kind.as_str())];
            for w in buckets.windows(2) {
                assert!(w[0].0 < w[1].0, "{labels:?}: le not rising: {w:?}");
                assert!(w[0].1 <= w[1].1, "{labels:?}: not cumulative: {w:?}");
            }
            assert_eq!(buckets.len(), LE_NS.len() + 1, "{labels:?}");
            let (le, inf) = *buckets.last().unwrap();
            assert_eq!(le, f64::INFINITY, "{labels:?}: +Inf is not last");
            assert_eq!(inf, value(samples, "hcp_latency_seconds_count", &labels), "{labels:?}: +Inf != _count");
            assert!(find(samples, "hcp_latency_seconds_sum", &labels).is_some(), "{labels:?}: no _sum");
        }
        by_series
    }

    /// A traced session of four devices: origin 253:0, real 253:1, store
    /// 7:3, snapshot 253:2, traced since 1 700 000 000.
    pub(crate) fn session(id: &str, origin: &str) -> Session {
        let devices =
            [("origin", "253:0"), ("real", "253:1"), ("store", "7:3"), ("snapshot", "253:2")].map(|(role, devnum)| {
                TracedDevice { role: role.into(), devnum: devnum.into(), path: format!("/dev/{role}").into() }
            });
        Session {
            version: RECORD_VERSION,
            id: id.into(),
            phase: Phase::Active,
            origin: Origin { path: origin.into(), dm_name: "vg-lv".into(), real: "vg-lv-real".into(), wrapped: false },
            snapshot_path: "/dev/hcp1".into(),
            store: Store {
                path: "/var/lib/hcp/x.cow".into(),
                loop_device: Some("/dev/loop3".into()),
                created_file: true,
                size_bytes: 1 << 20,
            },
            mount: None,
            created_unix: 1,
            snapshot_unix: None,
            chunk_bytes: 4096,
            quota_bytes: 1 << 20,
            trace: Some(TraceRecord {
                since_unix: 1_700_000_000,
                devices: devices.to_vec(),
                baseline: None,
                at_start: None,
                window: None,
                report: None,
                recorder: None,
            }),
            autoextend: None,
            rollback: None,
        }
    }

    fn hist(values: impl IntoIterator<Item = u64>) -> LatencyHist {
        let mut h = LatencyHist::zeroed();
        for v in values {
            h.record(v);
        }
        h
    }

    /// A session that wrote 3 bios of 4 KiB to the origin, costing 2 of
    /// 4 KiB on the real device and one of 8 KiB on the store, with losses.
    fn counters() -> Counters {
        let dev = |s: &str| s.parse::<DevNum>().unwrap();
        let io = |op: IoOp, count, bytes| {
            let mut s = DevIoStats::default();
            s.bio_queued[op as usize] = OpCount { count, bytes };
            s
        };
        let mut c = Counters::default();
        c.io.insert(dev("253:0"), io(IoOp::Write, 3, 12288));
        c.io.insert(dev("253:1"), io(IoOp::Write, 2, 8192));
        c.io.insert(dev("7:3"), io(IoOp::Write, 1, 8192));
        let key = LatKey { dev: dev("253:0").to_kernel(), level: Level::Bio as u8, op: IoOp::Write as u8, _pad: 0 };
        c.latency.push((key, hist([3_000, 40_000, 2_000_000])));
        c.losses.insert(
            dev("253:0"),
            BioLosses { inflight_full: 2, histogram_full: 0, unmatched: 5, read_errors: 0, completions_unseen: 3 },
        );
        c.skipped_runs = Some(7);
        c
    }

    #[test]
    fn every_le_is_a_bucket_edge() {
        assert_eq!(LE_NS[0], 1024);
        assert_eq!(LE_NS[LE_NS.len() - 1], OVERFLOW_NS);
        for (k, edge) in LE_NS.iter().enumerate() {
            assert_eq!(*edge, 1 << (k + 10));
            let i = bucket_of(*edge);
            assert_eq!(bucket_low(i), *edge, "{edge} ns opens bucket {i}");
            assert!(i > 0 && bucket_high(i - 1) == *edge, "{edge} ns closes bucket {}", i - 1);
        }
        assert_eq!(bucket_of(OVERFLOW_NS), OVERFLOW);
    }

    #[test]
    fn le_values_are_plain_decimal_seconds() {
        let text = render(&[compute(&session("hcp1", "/dev/vdb"), &counters(), 2)]);
        let les: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("hcp_latency_seconds_bucket"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(les.len(), LE_NS.len() + 1);
        assert_eq!((les[0], les[10], les[26], les[27]), ("0.000001024", "0.001048576", "68.719476736", "+Inf"));
        for (le, edge) in les.iter().zip(LE_NS) {
            assert_eq!(le.parse::<f64>().unwrap(), edge as f64 / 1e9, "{le}");
        }
    }

    #[test]
    fn bucket_counts_are_exact() {
        // Values on and around every edge, and a spread between them.
        let mut values = vec![0, 1, 1023, 1024, 1025, OVERFLOW_NS - 1, OVERFLOW_NS, u64::MAX];
        for edge in LE_NS {
            values.extend([edge - 1, edge, edge + 1]);
        }
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            values.push((x >> 28) % (OVERFLOW_NS * 2));
        }
        let h = hist(values.iter().copied());
        let mut stats = compute(&session("hcp1", "/dev/vdb"), &Counters::default(), 2);
        stats.histograms = vec![NamedHistogram { name: "app_write", help: "test", hist: h }];
        let text = render(&[stats]);
        let samples = check(&text);
        let buckets = &check_histograms(&samples)[&("hcp1".to_string(), "app_write".to_string())];
        for ((le, n), edge) in buckets.iter().zip(LE_NS) {
            // `le` is inclusive: at most edge - 1 ns, in whole nanoseconds.
            let want = values.iter().filter(|v| **v < edge).count();
            assert_eq!(*n, want as f64, "le {le} ({edge} ns)");
        }
        let labels = [("session", "hcp1"), ("kind", "app_write")];
        assert_eq!(buckets[LE_NS.len()].1, values.len() as f64);
        assert_eq!(value(&samples, "hcp_latency_seconds_count", &labels), values.len() as f64);
        assert_eq!(value(&samples, "hcp_latency_seconds_sum", &labels), h.sum_ns as f64 / 1e9);
        assert_eq!(value(&samples, "hcp_latency_max_seconds", &labels), u64::MAX as f64 / 1e9);
    }

    #[test]
    fn figures_of_a_session() {
        let mut stats = compute(&session("hcp1", "/dev/vdb"), &counters(), 2);
        stats.freeze.frozen_seconds = Some(0.25);
        stats.freeze.suspended_seconds = Some(0.125);
        stats.state = Some(SessionState::Invalid);
        stats.store = Some(crate::figures::stats::StoreUse {
            size_bytes: 1 << 20,
            used_bytes: None,
            use_percent: None,
            quota_bytes: 4 << 20,
            autoextend: true,
        });
        let text = render(&[stats]);
        let samples = check(&text);
        let one = [("session", "hcp1")];
        let kind = |k| [("session", "hcp1"), ("kind", k)];
        assert_eq!(value(&samples, "hcp_session_info", &[("session", "hcp1"), ("origin", "/dev/vdb")]), 1.0);
        assert_eq!(value(&samples, "hcp_session_traced_since_timestamp_seconds", &one), 1.7e9);
        assert_eq!(value(&samples, "hcp_io_bios_total", &kind("app_write")), 3.0);
        assert_eq!(value(&samples, "hcp_io_bytes_total", &kind("app_write")), 12288.0);
        assert_eq!(value(&samples, "hcp_io_bios_total", &kind("snapshot_read")), 0.0);
        assert_eq!(value(&samples, "hcp_copy_out_store_data_bytes_total", &one), 8192.0);
        assert_eq!(value(&samples, "hcp_write_amplification_ratio", &one), 16384.0 / 12288.0);
        assert_eq!(value(&samples, "hcp_frozen_seconds", &one), 0.25);
        assert_eq!(value(&samples, "hcp_session_state", &[("session", "hcp1"), ("state", "invalid")]), 1.0);
        assert_eq!(value(&samples, "hcp_session_state", &[("session", "hcp1"), ("state", "active")]), 0.0);
        assert_eq!(samples.iter().filter(|s| s.name == "hcp_session_state").count(), 6, "one series per state");
        assert_eq!(value(&samples, "hcp_store_size_bytes", &one), 1048576.0);
        assert_eq!(value(&samples, "hcp_store_quota_bytes", &one), 4194304.0);
        assert_eq!(value(&samples, "hcp_suspended_seconds", &one), 0.125);
        assert_eq!(value(&samples, "hcp_lost_events_total", &[("reason", "inflight_full")]), 2.0);
        assert_eq!(value(&samples, "hcp_lost_events_total", &[("reason", "unmatched")]), 5.0);
        assert_eq!(value(&samples, "hcp_lost_events_total", &[("reason", "completions_unseen")]), 3.0);
        assert_eq!(value(&samples, "hcp_lost_events_total", &[("reason", "skipped_runs")]), 7.0);
        assert_eq!(value(&samples, "hcp_latency_seconds_count", &kind("app_write")), 3.0);
        assert_eq!(value(&samples, "hcp_latency_seconds_sum", &kind("app_write")), 2_043_000.0 / 1e9);
        assert_eq!(value(&samples, "hcp_latency_max_seconds", &kind("app_write")), 0.002);
        assert_eq!(value(&samples, "hcp_latency_seconds_bucket", &[("kind", "app_write"), ("le", "0.000004096")]), 1.0);
        assert_eq!(value(&samples, "hcp_latency_seconds_bucket", &[("kind", "app_write"), ("le", "0.000065536")]), 2.0);
        assert_eq!(value(&samples, "hcp_latency_seconds_bucket", &[("kind", "app_write"), ("le", "0.002097152")]), 3.0);
        check_histograms(&samples);
        // Null figures have no sample, and families without one are left out.
        for absent in ["hcp_read_amplification_ratio", "hcp_freeze_call_seconds", "hcp_store_used_bytes"] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        assert!(find(&samples, "hcp_latency_seconds_count", &kind("app_read")).is_none());
    }

    /// A kernel that keeps no count of skipped runs (Linux 5.10): the
    /// figure is named as not measured, absent from the JSON and from the
    /// Prometheus series, never a 0.
    #[test]
    fn skipped_runs_a_kernel_does_not_count_are_absent_not_zero() {
        let mut c = counters();
        c.skipped_runs = None;
        c.in_flight = Some(crate::tracer::probe::InFlightMode::HashMap);
        let stats = compute(&session("hcp1", "/dev/vdb"), &c, 2);
        assert_eq!(stats.not_measured, vec![crate::figures::stats::SKIPPED_RUNS_NOT_COUNTED]);
        assert_eq!(stats.in_flight, Some(crate::tracer::probe::InFlightMode::HashMap));
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["in_flight"], "hash_map", "the name the schema and the layout cache use");
        assert!(json["losses"].get("skipped_runs").is_none(), "{}", json["losses"]);
        assert_eq!(json["not_measured"][0]["figure"], "losses.skipped_runs");
        let samples = check(&render(&[stats]));
        assert!(find(&samples, "hcp_lost_events_total", &[("reason", "skipped_runs")]).is_none());
        assert_eq!(value(&samples, "hcp_lost_events_total", &[("reason", "unmatched")]), 5.0, "the others stay");

        let counted = compute(&session("hcp1", "/dev/vdb"), &counters(), 2);
        assert!(counted.not_measured.is_empty(), "{:?}", counted.not_measured);
    }

    #[test]
    fn sessions_share_each_family() {
        let a = compute(&session("hcp1", "/dev/vdb"), &counters(), 2);
        let b = compute(&session("hcp2", "/dev/vdc"), &counters(), 2);
        let text = render(&[a, b]);
        let samples = check(&text);
        assert_eq!(text.matches("# TYPE hcp_latency_seconds histogram\n").count(), 1);
        for s in ["hcp1", "hcp2"] {
            assert_eq!(value(&samples, "hcp_io_bios_total", &[("session", s), ("kind", "app_write")]), 3.0);
            assert!(find(&samples, "hcp_latency_seconds_count", &[("session", s)]).is_some());
        }
        assert_eq!(check_histograms(&samples).len(), 2);
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let id = "hcp\"1\\\n} 0\nhcp_fake 1";
        let origin = "/dev/a\"b\\c\nd";
        let text = render(&[compute(&session(id, origin), &counters(), 2)]);
        assert!(text.contains(r#"{session="hcp\"1\\\n} 0\nhcp_fake 1",origin="/dev/a\"b\\c\nd"} 1"#), "{text}");
        let samples = check(&text);
        assert!(samples.iter().all(|s| s.label("session") == Some(id)));
        assert_eq!(value(&samples, "hcp_session_info", &[("origin", origin)]), 1.0);
        assert!(!samples.iter().any(|s| s.name == "hcp_fake"));
    }

    #[test]
    fn non_finite_values_are_spelled_as_prometheus_does() {
        let v = |x: f64| Value::Float(x).to_string();
        assert_eq!((v(f64::NAN), v(f64::INFINITY), v(f64::NEG_INFINITY)), ("NaN".into(), "+Inf".into(), "-Inf".into()));
        assert_eq!((v(0.5), v(1.0), Value::Int(7).to_string()), ("0.5".into(), "1".into(), "7".into()));
    }

    /// The Grafana dashboard fleet operators import.
    const DASHBOARD: &str = include_str!("../../../dist/grafana/hcp.json");

    /// PromQL's functions and aggregation operators, and Grafana's
    /// `label_values` (of its variable queries).
    const FUNCTIONS: &str = "abs absent absent_over_time acos acosh asin asinh atan atanh avg avg_over_time \
        bottomk ceil changes clamp clamp_max clamp_min cos cosh count count_over_time count_values day_of_month \
        day_of_week day_of_year days_in_month deg delta deriv double_exponential_smoothing end exp floor group \
        histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar \
        histogram_sum holt_winters hour idelta increase irate label_join label_replace label_values last_over_time \
        limit_ratio limitk ln log10 log2 mad_over_time max max_over_time min min_over_time minute month \
        predict_linear present_over_time quantile quantile_over_time rad rate resets round scalar sgn sin sinh sort \
        sort_by_label sort_by_label_desc sort_desc sqrt start stddev stddev_over_time stdvar stdvar_over_time sum \
        sum_over_time tan tanh time timestamp topk vector year";

    /// Words that take a list of label names in parentheses.
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

    /// Words that are neither a series nor a function.
    const KEYWORDS: &[&str] = &["bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"];

    /// Labels whose every value hcp names itself: a matcher on one of them
    /// must name a value render writes.
    const CLOSED_LABELS: &[&str] = &["kind", "state", "reason"];

    #[derive(Debug, PartialEq)]
    enum Token {
        Ident(String),
        Str(String),
        /// A Grafana variable: `$instance`, `${session}`, `$__rate_interval`.
        Var,
        /// A range or subquery in brackets, or a number or a duration.
        Literal,
        Punct(String),
    }

    /// `expr` in tokens: enough of PromQL's lexer to find every name in it.
    fn tokens(expr: &str) -> Result<Vec<Token>, String> {
        let c: Vec<char> = expr.chars().collect();
        let word = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
        let (mut i, mut out) = (0, Vec::new());
        while i < c.len() {
            let ch = c[i];
            if ch.is_whitespace() {
                i += 1;
            } else if ch == '#' {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            } else if ['"', '\'', '`'].contains(&ch) {
                let mut s = String::new();
                i += 1;
                loop {
                    match c.get(i) {
                        None => return Err(format!("unterminated string in {expr:?}")),
                        Some('\\') if ch != '`' => {
                            s.extend(c.get(i + 1));
                            i += 2;
                        }
                        Some(q) if *q == ch => {
                            i += 1;
                            break;
                        }
                        Some(x) => {
                            s.push(*x);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Str(s));
            } else if ch == '$' {
                i += 1;
                if c.get(i) == Some(&'{') {
                    i += c[i..].iter().position(|x| *x == '}').ok_or(format!("unclosed ${{ in {expr:?}"))? + 1;
                } else {
                    while i < c.len() && word(c[i]) && c[i] != ':' {
                        i += 1;
                    }
                }
                out.push(Token::Var);
            } else if ch == '[' {
                i += c[i..].iter().position(|x| *x == ']').ok_or(format!("unclosed [ in {expr:?}"))? + 1;
                out.push(Token::Literal);
            } else if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)) {
                while i < c.len() && (word(c[i]) || c[i] == '.') {
                    i += 1;
                }
                out.push(Token::Literal);
            } else if word(ch) {
                let start = i;
                while i < c.len() && word(c[i]) {
                    i += 1;
                }
                out.push(Token::Ident(c[start..i].iter().collect()));
            } else {
                let two: String = c[i..(i + 2).min(c.len())].iter().collect();
                let n = if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) { 2 } else { 1 };
                out.push(Token::Punct(c[i..i + n].iter().collect()));
                i += n;
            }
        }
        Ok(out)
    }

    /// The series and labels an exposition holds, to check queries against.
    struct Exports {
        series: BTreeSet<String>,
        /// Each label with the values it takes.
        labels: BTreeMap<String, BTreeSet<String>>,
    }

    impl Exports {
        /// Those of `text`, with the labels Prometheus adds on a scrape.
        fn of(text: &str) -> Exports {
            let mut e = Exports { series: BTreeSet::new(), labels: BTreeMap::new() };
            for s in check(text) {
                for (name, value) in &s.labels {
                    e.labels.entry(name.clone()).or_default().insert(value.clone());
                }
                e.series.insert(s.name);
            }
            for added in ["instance", "job", "__name__"] {
                e.labels.entry(added.to_string()).or_default();
            }
            e
        }

        fn label(&self, name: &str, expr: &str) -> Result<(), String> {
            match self.labels.contains_key(name) {
                true => Ok(()),
                false => Err(format!("label {name:?} is not one hcp exports, in {expr:?}")),
            }
        }

        /// Every name in PromQL `expr`, a query of a panel, is a series hcp
        /// writes, a label of them, a function or a keyword; every value a
        /// matcher compares a closed label with is one hcp writes.
        fn check(&self, expr: &str) -> Result<(), String> {
            let t = tokens(expr)?;
            let punct = |i: usize, p: &str| t.get(i) == Some(&Token::Punct(p.to_string()));
            let (mut i, mut in_braces) = (0, false);
            while i < t.len() {
                match &t[i] {
                    Token::Punct(p) if p == "{" => in_braces = true,
                    Token::Punct(p) if p == "}" => in_braces = false,
                    Token::Ident(label) if in_braces => {
                        self.label(label, expr)?;
                        let op = match t.get(i + 1) {
                            Some(Token::Punct(op)) if ["=", "!=", "=~", "!~"].contains(&op.as_str()) => op,
                            other => return Err(format!("{label} is followed by {other:?}, not a match, in {expr:?}")),
                        };
                        match t.get(i + 2) {
                            Some(Token::Str(v)) if op == "=" && label == "__name__" && !self.series.contains(v) => {
                                return Err(format!("{v:?} is not a series hcp exports, in {expr:?}"))
                            }
                            Some(Token::Str(v))
                                if op == "="
                                    && CLOSED_LABELS.contains(&label.as_str())
                                    && !self.labels[label].contains(v) =>
                            {
                                return Err(format!("hcp writes no {label}={v:?}, in {expr:?}"))
                            }
                            Some(Token::Str(_) | Token::Var) => {}
                            other => return Err(format!("{label}{op} is followed by {other:?}, in {expr:?}")),
                        }
                        i += 3;
                        continue;
                    }
                    Token::Ident(word) if LABEL_LISTS.contains(&word.as_str()) && punct(i + 1, "(") => {
                        i += 2;
                        while !punct(i, ")") {
                            match t.get(i) {
                                Some(Token::Ident(label)) => self.label(label, expr)?,
                                Some(Token::Punct(p)) if p == "," => {}
                                other => return Err(format!("{other:?} in the labels of {word}, in {expr:?}")),
                            }
                            i += 1;
                        }
                    }
                    // (`group_left` may come without its list.)
                    Token::Ident(word)
                        if KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                            || LABEL_LISTS.contains(&word.as_str()) => {}
                    Token::Ident(word) if FUNCTIONS.split_whitespace().any(|f| f == word) => {}
                    Token::Ident(word) if punct(i + 1, "(") => {
                        return Err(format!("{word}() is not a PromQL function, in {expr:?}"))
                    }
                    Token::Ident(name) if !self.series.contains(name) => {
                        return Err(format!("{name} is not a series hcp exports, in {expr:?}"))
                    }
                    _ => {}
                }
                i += 1;
            }
            Ok(())
        }
    }

    /// The stats of a session with every figure known, so that render
    /// writes every family.
    fn fully_populated() -> SessionStats {
        let mut stats = compute(&session("hcp1", "/dev/vdb"), &counters(), 2);
        stats.state = Some(SessionState::Active);
        stats.read_amplification = Some(1.5);
        stats.store = Some(crate::figures::stats::StoreUse {
            size_bytes: 1 << 20,
            used_bytes: Some(1 << 19),
            use_percent: Some(50.0),
            quota_bytes: 4 << 20,
            autoextend: true,
        });
        stats.freeze = serde_json::from_value(serde_json::json!({
            "pre_flush": {"passes": 2, "seconds": 0.5, "device_written_bytes": 4096, "dirty_left_bytes": 0,
                          "stopped": "clean"},
            "freeze_call_seconds": 0.01, "frozen_seconds": 0.25, "suspended_seconds": 0.125,
            "kernel": {"freeze_call_seconds": 0.009, "frozen_seconds": 0.24, "suspended_seconds": 0.12,
                       "longest_write_stall_seconds": 0.3, "write_calls": 9, "writes_still_held": 0,
                       "lost_events": 0},
        }))
        .expect("a window record");
        stats.histograms =
            ["app_write", "app_read", "snapshot_read", "snapshot_write", "baseline_app_write", "real_device_write"]
                .map(|name| NamedHistogram { name, help: "test", hist: hist([3_000, 40_000]) })
                .to_vec();
        stats
    }

    /// Every query of `dashboard`, with the title of the row it is under
    /// ("" for the variables').
    fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for v in dashboard["templating"]["list"].as_array().expect("templating.list") {
            let query = v["query"].get("query").unwrap_or(&v["query"]);
            for q in [query, &v["definition"]].into_iter().filter_map(|q| q.as_str()) {
                out.push((String::new(), q.to_string()));
            }
        }
        let mut row = String::new();
        let mut panels: Vec<&serde_json::Value> = Vec::new();
        for p in dashboard["panels"].as_array().expect("panels") {
            panels.push(p);
            // A collapsed row holds its panels.
            panels.extend(p["panels"].as_array().into_iter().flatten());
        }
        for p in panels {
            if p["type"] == "row" {
                row = p["title"].as_str().expect("a row's title").to_string();
                continue;
            }
            let title = &p["title"];
            assert!(p["description"].as_str().is_some_and(|d| !d.is_empty()), "panel {title} says nothing");
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no targets"));
            assert!(!targets.is_empty(), "panel {title} has no queries");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("a target of {title} without expr"));
                out.push((row.clone(), expr.to_string()));
            }
        }
        out
    }

    /// A Grafana variable query: `label_values(EXPR, LABEL)` or a PromQL
    /// expression.
    fn check_variable(exports: &Exports, query: &str) -> Result<(), String> {
        match query.trim().strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
            Some(args) => {
                let (expr, label) = args.rsplit_once(',').unwrap_or(("", args));
                exports.label(label.trim(), query)?;
                exports.check(expr)
            }
            None => exports.check(query),
        }
    }

    #[test]
    fn the_dashboard_asks_only_for_what_hcp_exports() {
        let text = render(&[fully_populated()]);
        let exports = Exports::of(&text);
        // The fixture writes every family, or the check below would miss some.
        assert_eq!(text.matches("# TYPE ").count(), SCALARS.len() + 7, "{text}");
        for s in ["hcp_latency_seconds_bucket", "hcp_latency_seconds_count", "hcp_store_used_bytes"] {
            assert!(exports.series.contains(s), "{s}");
        }

        // The checker tells a wrong query.
        let good = r#"sum by (le, instance) (rate(hcp_latency_seconds_bucket{kind="app_write", session=~"$session"}[$__rate_interval]))"#;
        assert_eq!(exports.check(good), Ok(()));
        for bad in [
            "hcp_no_such_series",
            r#"rate(hcp_no_such_series_total{session=~"${session}"}[5m])"#,
            r#"hcp_io_bytes_total{foo="x"}"#,
            "sum by (foo) (hcp_io_bytes_total)",
            "hcp_session_info * on (session) group_left (foo) hcp_session_state",
            r#"hcp_latency_seconds{kind="app_write"}"#,
            r#"hcp_io_bytes_total{kind="app_writes"}"#,
            r#"hcp_session_state{state="broken"}"#,
            r#"{__name__="hcp_no_such_series"}"#,
            "no_such_function(hcp_io_bytes_total)",
        ] {
            assert!(exports.check(bad).is_err(), "{bad} passed");
        }
        assert!(check_variable(&exports, "label_values(hcp_session_info, foo)").is_err());
        assert!(check_variable(&exports, "label_values(hcp_no_such_series, instance)").is_err());

        let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dist/grafana/hcp.json is JSON");
        assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS", "importable with a data source of one's own");
        let variables: Vec<&str> =
            dashboard["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(variables, ["instance", "session"]);
        let queries = dashboard_queries(&dashboard);
        for (row, q) in &queries {
            let checked = if row.is_empty() { check_variable(&exports, q) } else { exports.check(q) };
            checked.unwrap_or_else(|e| panic!("dist/grafana/hcp.json: {e}"));
        }

        // Each rollout question has its row, and the row asks for its figures.
        let questions: [(&str, &[&str]); 6] = [
            ("Sessions", &["hcp_session_info", "hcp_session_state"]),
            ("Write latency", &[r#"kind="app_write""#, r#"kind="baseline_app_write""#, "histogram_quantile"]),
            ("Switch", &["hcp_write_stall_max_seconds", "hcp_kernel_frozen_seconds"]),
            ("Copy-out", &["hcp_copy_out_read_bytes_total", "hcp_copy_out_store_data_bytes_total"]),
            ("Store", &["hcp_store_used_bytes", "hcp_store_quota_bytes", "deriv("]),
            ("Losses", &["hcp_lost_events_total", "hcp_switch_lost_events"]),
        ];
        for (row, needles) in questions {
            let asked: Vec<&str> =
                queries.iter().filter(|(r, _)| r.starts_with(row)).map(|(_, q)| q.as_str()).collect();
            for needle in needles {
                assert!(asked.iter().any(|q| q.contains(needle)), "no query under row {row:?} asks for {needle}");
            }
        }
    }
}
