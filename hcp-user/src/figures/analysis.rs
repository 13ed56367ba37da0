//! The answer to the three questions asked before a rollout, computed from
//! a session's totals and its history: what does a snapshot do to write
//! latency, how long do applications stall at the switch, and how large
//! must the store be for the backup window? Each answer carries the figures
//! it rests on, the assumption it makes, and one line in plain words.

use serde::{Deserialize, Serialize};

use crate::state::counters::from_record;
use crate::state::history::Interval;
use crate::state::record::WindowRecord;
use crate::tracer::hist::{summarize, Summary};

/// Intervals with fewer write samples than this are not candidates for the
/// worst interval: a p99 of a handful of writes says little.
const MIN_SAMPLES_FOR_WORST: u64 = 20;

/// The store's recent growth rate is taken over this much of the end of the
/// history (or all of it when shorter).
const RECENT_SECONDS: f64 = 60.0;

/// Copy-out has levelled off when it stayed below this share of its peak
/// rate for at least [`LEVEL_SECONDS`] of writing.
const LEVEL_SHARE: f64 = 0.25;
const LEVEL_SECONDS: f64 = 10.0;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Analysis {
    pub write_latency: WriteLatency,
    pub switch: Switch,
    pub copy_out: CopyOutCourse,
    pub store: StoreSizing,
    /// One line per question, in plain words.
    pub verdicts: Verdicts,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdicts {
    pub write_latency: String,
    pub switch: String,
    pub store: String,
}

/// Three percentiles of write latency, nanoseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ratios3 {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteLatency {
    /// Origin writes in the `--baseline` period, before the snapshot.
    pub baseline: Option<Percentiles>,
    /// Origin writes since the snapshot.
    pub during: Option<Percentiles>,
    /// during / baseline; null without a baseline.
    pub ratio: Option<Ratios3>,
    /// The interval with the highest p99 among those with at least 20
    /// writes, and its ratios to the baseline.
    pub worst_interval: Option<WorstInterval>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorstInterval {
    pub start_unix: f64,
    pub end_unix: f64,
    pub writes: u64,
    pub latency: Percentiles,
    pub ratio: Option<Ratios3>,
}

/// The switch, as the kernel saw it (hcp's own clock where the kernel's
/// figures are missing).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Switch {
    pub frozen_seconds: Option<f64>,
    pub suspended_seconds: Option<f64>,
    /// The longest write or sync call of any application on the origin's
    /// filesystem around the switch.
    pub longest_write_stall_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopyOutCourse {
    /// Bytes copied out per second over the whole history, and in its
    /// busiest interval.
    pub mean_mib_per_s: f64,
    pub peak_mib_per_s: f64,
    pub peak_at_unix: Option<f64>,
    /// When copy-out fell below a quarter of its peak for good (10 s of
    /// writing at least): the working set had been copied once. Null while
    /// it has not.
    pub levelled_off_at_unix: Option<f64>,
    pub write_amplification: Option<f64>,
    /// Write amplification in the history's first and last minute.
    pub write_amplification_first_minute: Option<f64>,
    pub write_amplification_last_minute: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreSizing {
    pub used_bytes: Option<u64>,
    /// The most the store may take (its size, or the quota it grows to).
    pub quota_bytes: u64,
    /// Store growth, bytes per second: over the last minute of the history,
    /// since the snapshot, and in the fastest interval.
    pub recent_bytes_per_s: Option<f64>,
    pub mean_bytes_per_s: Option<f64>,
    pub peak_bytes_per_s: Option<f64>,
    /// At the recent rate: seconds until the store is full, and when;
    /// null when it is not growing.
    pub time_to_full_seconds: Option<f64>,
    pub full_at_unix: Option<f64>,
    /// With `--window`: the store a session that long would need.
    pub window: Option<WindowSizing>,
    pub assumption: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowSizing {
    pub seconds: f64,
    /// At the mean growth rate since the snapshot, and at the peak rate.
    pub needed_bytes_at_mean_rate: Option<u64>,
    pub needed_bytes_at_peak_rate: Option<u64>,
}

const STORE_ASSUMPTION: &str = "the store grows at the rate measured: the recent rate (last minute) for the time to \
     full, the mean and peak rates since the snapshot for a window; rewriting chunks already copied adds nothing, so \
     a workload that keeps to its working set needs less than this";

/// What the analysis takes from a session's totals (`hcp stats`).
pub struct Totals<'a> {
    /// Origin write latency in the `--baseline` period, and since the
    /// snapshot.
    pub baseline: Option<&'a Summary>,
    pub during: Option<&'a Summary>,
    pub switch: &'a WindowRecord,
    pub write_amplification: Option<f64>,
    /// The store now: allocated bytes, and the most it may take.
    pub store_used_bytes: Option<u64>,
    pub store_quota_bytes: u64,
}

/// The analysis of a session's `totals` and `history` (its intervals,
/// oldest first), with the store a `window_seconds` session would need.
pub fn analyze(totals: &Totals, history: &[Interval], window_seconds: Option<f64>) -> Analysis {
    let write_latency = write_latency(totals, history);
    let (w, k) = (totals.switch, totals.switch.kernel.as_ref());
    let switch = Switch {
        frozen_seconds: k.and_then(|k| k.frozen_seconds).or(w.frozen_seconds),
        suspended_seconds: k.and_then(|k| k.suspended_seconds).or(w.suspended_seconds),
        longest_write_stall_seconds: k.and_then(|k| k.longest_write_stall_seconds),
    };
    let copy_out = copy_out_course(totals, history);
    let store = store_sizing(totals, history, window_seconds);
    let verdicts = Verdicts {
        write_latency: latency_verdict(&write_latency),
        switch: switch_verdict(&switch),
        store: store_verdict(&store, &copy_out),
    };
    Analysis { write_latency, switch, copy_out, store, verdicts }
}

fn percentiles(s: &Summary) -> Percentiles {
    Percentiles { p50_ns: s.p50_ns, p99_ns: s.p99_ns, p999_ns: s.p999_ns }
}

fn ratios(a: &Percentiles, b: &Percentiles) -> Ratios3 {
    let r = |x: u64, y: u64| if y == 0 { 0.0 } else { x as f64 / y as f64 };
    Ratios3 { p50: r(a.p50_ns, b.p50_ns), p99: r(a.p99_ns, b.p99_ns), p999: r(a.p999_ns, b.p999_ns) }
}

fn write_latency(totals: &Totals, history: &[Interval]) -> WriteLatency {
    let baseline = totals.baseline.map(percentiles);
    let during = totals.during.map(percentiles);
    let ratio = during.as_ref().zip(baseline.as_ref()).map(|(d, b)| ratios(d, b));
    let worst_interval = history
        .iter()
        .filter(|iv| iv.app_writes.latency.count >= MIN_SAMPLES_FOR_WORST)
        .map(|iv| (iv, percentiles(&summarize(&from_record(&iv.app_writes.latency)))))
        .max_by_key(|(_, p)| p.p99_ns)
        .map(|(iv, latency)| WorstInterval {
            start_unix: iv.start_unix,
            end_unix: iv.end_unix,
            writes: iv.app_writes.count,
            ratio: baseline.as_ref().map(|b| ratios(&latency, b)),
            latency,
        });
    WriteLatency { baseline, during, ratio, worst_interval }
}

const MIB: f64 = 1048576.0;

fn copy_out_course(totals: &Totals, history: &[Interval]) -> CopyOutCourse {
    let secs: f64 = history.iter().map(Interval::seconds).sum();
    let bytes: u64 = history.iter().map(|iv| iv.copy_out.bytes).sum();
    let rate = |iv: &Interval| if iv.seconds() > 0.0 { iv.copy_out.bytes as f64 / iv.seconds() } else { 0.0 };
    let peak = history.iter().max_by(|a, b| rate(a).total_cmp(&rate(b)));
    let peak_rate = peak.map_or(0.0, rate);
    // After the peak: the start of the last run of writing intervals, at
    // least LEVEL_SECONDS long, all below LEVEL_SHARE of the peak, that
    // lasts to the end.
    let levelled_off_at_unix = peak.filter(|_| peak_rate > 0.0).and_then(|p| {
        let after: Vec<&Interval> = history.iter().filter(|iv| iv.start_unix >= p.end_unix).collect();
        let tail_start = after.iter().rposition(|iv| rate(iv) >= LEVEL_SHARE * peak_rate).map_or(0, |i| i + 1);
        let tail = &after[tail_start..];
        let writing: f64 = tail.iter().filter(|iv| iv.app_writes.bytes > 0).map(|iv| iv.seconds()).sum();
        (writing >= LEVEL_SECONDS).then(|| tail[0].start_unix)
    });
    let amplification_over = |ivs: &[&Interval]| {
        let app: u64 = ivs.iter().map(|iv| iv.app_writes.bytes).sum();
        let dev: u64 = ivs.iter().map(|iv| iv.device_write_bytes).sum();
        (app > 0).then(|| dev as f64 / app as f64)
    };
    let (first, last) = (history.first(), history.last());
    let first_minute: Vec<&Interval> =
        history.iter().filter(|iv| first.is_some_and(|f| iv.end_unix <= f.start_unix + 60.0)).collect();
    let last_minute: Vec<&Interval> =
        history.iter().filter(|iv| last.is_some_and(|l| iv.start_unix >= l.end_unix - 60.0)).collect();
    CopyOutCourse {
        mean_mib_per_s: if secs > 0.0 { bytes as f64 / secs / MIB } else { 0.0 },
        peak_mib_per_s: peak_rate / MIB,
        peak_at_unix: peak.filter(|_| peak_rate > 0.0).map(|p| p.start_unix),
        levelled_off_at_unix,
        write_amplification: totals.write_amplification,
        write_amplification_first_minute: amplification_over(&first_minute),
        write_amplification_last_minute: amplification_over(&last_minute),
    }
}

fn store_sizing(totals: &Totals, history: &[Interval], window_seconds: Option<f64>) -> StoreSizing {
    let (quota_bytes, used_bytes) = (totals.store_quota_bytes, totals.store_used_bytes);
    // (time, used) at the end of each interval that knows the store.
    let points: Vec<(f64, f64)> =
        history.iter().filter_map(|iv| Some((iv.end_unix, iv.store_used_bytes? as f64))).collect();
    let growth = |from: &(f64, f64), to: &(f64, f64)| {
        let dt = to.0 - from.0;
        (dt > 0.0).then(|| ((to.1 - from.1) / dt).max(0.0))
    };
    let start = history.first().map(|iv| iv.start_unix);
    // From the snapshot, when the store held only its header.
    let mean_bytes_per_s = points.last().zip(start).and_then(|(last, t0)| {
        let t = last.0 - t0;
        (t > 0.0).then(|| last.1 / t)
    });
    let recent_bytes_per_s = points.last().and_then(|last| {
        let from = points.iter().find(|p| p.0 >= last.0 - RECENT_SECONDS).filter(|p| p.0 < last.0)?;
        growth(from, last)
    });
    let peak_bytes_per_s = points.windows(2).filter_map(|w| growth(&w[0], &w[1])).max_by(f64::total_cmp);
    let time_to_full_seconds = recent_bytes_per_s
        .filter(|r| *r > 0.0)
        .zip(used_bytes)
        .map(|(rate, used)| quota_bytes.saturating_sub(used) as f64 / rate);
    let full_at_unix = time_to_full_seconds.zip(points.last()).map(|(t, last)| last.0 + t);
    let window = window_seconds.map(|w| WindowSizing {
        seconds: w,
        needed_bytes_at_mean_rate: mean_bytes_per_s.map(|r| (r * w) as u64),
        needed_bytes_at_peak_rate: peak_bytes_per_s.map(|r| (r * w) as u64),
    });
    StoreSizing {
        used_bytes,
        quota_bytes,
        recent_bytes_per_s,
        mean_bytes_per_s,
        peak_bytes_per_s,
        time_to_full_seconds,
        full_at_unix,
        window,
        assumption: STORE_ASSUMPTION.to_string(),
    }
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn latency_verdict(l: &WriteLatency) -> String {
    let Some(during) = &l.during else {
        return "No application wrote to the origin since the snapshot: its write cost is not measured yet.".into();
    };
    let worst = l.worst_interval.as_ref().map_or(String::new(), |w| match &w.ratio {
        Some(r) => format!("; the worst interval reached p99 {} ({:.1}x)", ms(w.latency.p99_ns), r.p99),
        None => format!("; the worst interval reached p99 {}", ms(w.latency.p99_ns)),
    });
    match (&l.baseline, &l.ratio) {
        (Some(b), Some(r)) => format!(
            "Writes took {:.1}x as long at p99 under the snapshot ({} against {} before it; p50 {:.1}x){worst}.",
            r.p99,
            ms(during.p99_ns),
            ms(b.p99_ns),
            r.p50
        ),
        _ => format!(
            "Writes under the snapshot: p50 {}, p99 {}{worst}; no baseline was measured to compare (--baseline).",
            ms(during.p50_ns),
            ms(during.p99_ns)
        ),
    }
}

fn switch_verdict(s: &Switch) -> String {
    let secs = |v: Option<f64>| v.map_or("not measured".to_string(), |v| format!("{:.0} ms", v * 1e3));
    match s.longest_write_stall_seconds {
        Some(stall) => format!(
            "Applications stalled at most {:.0} ms at the switch (filesystem frozen {}, origin suspended {}).",
            stall * 1e3,
            secs(s.frozen_seconds),
            secs(s.suspended_seconds)
        ),
        None => format!(
            "The origin was suspended {} and its filesystem frozen {}; application stalls were not measured (an \
             unmounted origin, or a session traced after its start).",
            secs(s.suspended_seconds),
            secs(s.frozen_seconds)
        ),
    }
}

fn store_verdict(s: &StoreSizing, c: &CopyOutCourse) -> String {
    let size = |b: f64| crate::size::format_bytes(b as u64);
    let fill = match (s.time_to_full_seconds, s.recent_bytes_per_s) {
        (Some(t), Some(rate)) => format!(
            "at the last minute's rate ({}/s) the store is full in {}",
            size(rate),
            humantime::format_duration(std::time::Duration::from_secs(t as u64))
        ),
        _ => "the store is not growing now".to_string(),
    };
    let window = s.window.as_ref().map_or(String::new(), |w| {
        format!(
            "; a window of {} needs {} at the mean rate ({} at the peak rate)",
            humantime::format_duration(std::time::Duration::from_secs(w.seconds as u64)),
            w.needed_bytes_at_mean_rate.map_or("?".to_string(), |b| size(b as f64)),
            w.needed_bytes_at_peak_rate.map_or("?".to_string(), |b| size(b as f64))
        )
    });
    let levelled = if c.levelled_off_at_unix.is_some() { "; copy-out has levelled off" } else { "" };
    let mut line = format!(
        "{}{fill}{window}{levelled}.",
        s.used_bytes.map_or(String::new(), |u| format!("{} of {} used; ", size(u as f64), size(s.quota_bytes as f64)))
    );
    if let Some(first) = line.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::counters::to_record;
    use crate::state::history::Timed;
    use crate::tracer::hist::from_samples;

    /// A session that writes `mib` MiB of fresh data a second with `lat`
    /// latency, its store growing by as much.
    fn intervals(phases: &[(u32, u64, u64)]) -> Vec<Interval> {
        let mut out = Vec::new();
        let (mut t, mut used) = (1_000.0, 0u64);
        for &(secs, mib, lat) in phases {
            for _ in 0..secs {
                used += mib << 20;
                out.push(Interval {
                    start_unix: t,
                    end_unix: t + 1.0,
                    app_writes: Timed {
                        count: mib * 256,
                        bytes: mib << 20,
                        latency: to_record(&from_samples(&vec![lat; (mib * 256) as usize])),
                    },
                    copy_out: crate::state::counters::Count { count: mib * 256, bytes: mib << 20 },
                    device_write_bytes: 2 * (mib << 20),
                    store_used_bytes: Some(used),
                    ..Interval::default()
                });
                t += 1.0;
            }
        }
        out
    }

    fn totals(window: &WindowRecord, quota: u64, used: u64) -> Totals<'_> {
        Totals {
            baseline: None,
            during: None,
            switch: window,
            write_amplification: None,
            store_used_bytes: Some(used),
            store_quota_bytes: quota,
        }
    }

    #[test]
    fn the_store_fills_when_the_rate_says_and_a_window_needs_the_rate_times_its_length() {
        let h = intervals(&[(60, 1, 100_000), (60, 2, 300_000)]);
        let used = 180 << 20;
        let a = analyze(&totals(&WindowRecord::default(), 512 << 20, used), &h, Some(3600.0));
        let recent = a.store.recent_bytes_per_s.unwrap();
        assert!((recent - 2.0 * 1048576.0).abs() < 1.0, "the last minute's rate: {recent}");
        let ttf = a.store.time_to_full_seconds.unwrap();
        assert!((ttf - 166.0).abs() < 0.5, "(512 - 180) MiB at 2 MiB/s: {ttf}");
        let w = a.store.window.as_ref().unwrap();
        let mean = a.store.mean_bytes_per_s.unwrap();
        assert!((mean - 1.5 * 1048576.0).abs() < 0.1 * 1048576.0, "{mean}");
        assert_eq!(w.needed_bytes_at_mean_rate, Some((mean * 3600.0) as u64));
        assert!(w.needed_bytes_at_peak_rate.unwrap() >= w.needed_bytes_at_mean_rate.unwrap());
        assert!(a.verdicts.store.contains("full in 2m 46s"), "{}", a.verdicts.store);
        assert!(a.verdicts.store.contains("a window of 1h needs"), "{}", a.verdicts.store);
    }

    #[test]
    fn the_worst_interval_and_the_levelling_off_are_found() {
        // Copy-out at 4 MiB/s, then writes that copy nothing (the working
        // set copied once) for 20 s.
        let mut h = intervals(&[(10, 4, 200_000), (5, 1, 2_000_000)]);
        let mut calm = intervals(&[(20, 1, 100_000)]);
        for (i, iv) in calm.iter_mut().enumerate() {
            iv.start_unix = 1_015.0 + i as f64;
            iv.end_unix = iv.start_unix + 1.0;
            iv.copy_out = Default::default();
        }
        h.extend(calm);
        let a = analyze(&totals(&WindowRecord::default(), 1 << 30, 1 << 20), &h, None);
        let worst = a.write_latency.worst_interval.unwrap();
        assert!((1_010.0..1_015.0).contains(&worst.start_unix), "{worst:?}");
        assert!(worst.latency.p99_ns >= 1_900_000, "{worst:?}");
        assert_eq!(a.copy_out.levelled_off_at_unix, Some(1_015.0));
        assert!((a.copy_out.peak_mib_per_s - 4.0).abs() < 1e-9);
        assert_eq!(a.copy_out.write_amplification_first_minute, Some(2.0));
    }
}
