//! The tracer's counters as a session record keeps them: every counter of
//! the session's devices at one moment (the snapshot going live, or the last
//! `--follow` read), so that its figures can be told from what came before.

use hcp_common::bio::LatKey;
use hcp_common::hist::LatencyHist;
use hcp_common::{OpCount, RemapStats, IO_OPS};
use serde::{Deserialize, Serialize};

use crate::kernel::devnum::DevNum;
use crate::tracer::hist::subtract;
use crate::tracer::pins::Counters;

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
    /// `Counters::skipped_runs` (absent from records of older versions; 0
    /// where the kernel does not count them, which the live counters say).
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
    /// Absent from records of older versions.
    #[serde(default)]
    pub completions_unseen: u64,
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
                completions_unseen: l.completions_unseen,
            })
            .collect(),
        skipped_runs: c.skipped_runs.unwrap_or(0),
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
            l.completions_unseen = l.completions_unseen.saturating_sub(r.completions_unseen);
        }
    }
    out.skipped_runs = now.skipped_runs.map(|n| n.saturating_sub(before.skipped_runs));
    out
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

/// A latency histogram, sparse: `(bucket, count)` for non-empty buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistRecord {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub buckets: Vec<(u32, u64)>,
}

impl HistRecord {
    /// Adds the samples of `other`, as [`crate::tracer::hist::merge`] does
    /// for full histograms, without unpacking either.
    pub fn merge(&mut self, other: &HistRecord) {
        self.count += other.count;
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        let mut merged = Vec::with_capacity(self.buckets.len().max(other.buckets.len()));
        let (mut a, mut b) = (self.buckets.iter().peekable(), other.buckets.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => (x.0, x.1 + y.1),
                (Some(&&x), Some(y)) if x.0 < y.0 => x,
                (Some(_), Some(&&y)) => y,
                (Some(&&x), None) => x,
                (None, Some(&&y)) => y,
                (None, None) => break,
            };
            if a.peek().is_some_and(|x| x.0 == next.0) {
                a.next();
            }
            if b.peek().is_some_and(|y| y.0 == next.0) {
                b.next();
            }
            merged.push(next);
        }
        self.buckets = merged;
    }
}

#[cfg(test)]
mod tests {
    use hcp_common::{DevIoStats, IoOp};

    use super::*;
    use crate::tracer::hist::from_samples;

    #[test]
    fn figures_count_only_what_came_after_the_record() {
        let dev = DevNum { major: 253, minor: 4 };
        let mut c = Counters::default();
        let mut io = DevIoStats::default();
        io.bio_queued[IoOp::Write as usize] = OpCount { count: 10, bytes: 40960 };
        c.io.insert(dev, io);
        c.latency.push((
            LatKey { dev: dev.to_kernel(), level: 0, op: IoOp::Write as u8, _pad: 0 },
            from_samples(&[5_000; 10]),
        ));
        c.skipped_runs = Some(4);
        let before = record_counters(&c, &[dev]);
        assert_eq!(record_counters(&c, &[DevNum { major: 1, minor: 1 }]).io.len(), 0, "other devices are left out");

        c.io.get_mut(&dev).unwrap().bio_queued[IoOp::Write as usize] = OpCount { count: 13, bytes: 53248 };
        c.latency[0].1.record(7_000);
        let other = DevNum { major: 7, minor: 0 };
        c.io.insert(other, io);
        c.skipped_runs = Some(9);
        let d = since(&c, &before);
        assert_eq!(d.skipped_runs, Some(5), "skipped runs since the record");
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
    fn sparse_records_merge_as_full_histograms_do() {
        let (a, b) = (from_samples(&[1_000, 2_000, 2_000, 9_000_000]), from_samples(&[2_000, 40_000, 9_000_000, 1]));
        let mut merged = to_record(&a);
        merged.merge(&to_record(&b));
        assert_eq!(from_record(&merged), crate::tracer::hist::merge([a, b]));
        let mut empty = HistRecord::default();
        empty.merge(&to_record(&a));
        assert_eq!(from_record(&empty), a);
    }

    #[test]
    fn records_round_trip() {
        let h = from_samples(&[1_000, 2_000, 2_000, 5_000_000]);
        assert_eq!(from_record(&to_record(&h)), h);
        assert_eq!(to_record(&h).buckets.len(), 3, "sparse: only non-empty buckets");
    }
}
