//! Latency histograms read from the kernel ([`LatencyHist`], one per CPU)
//! turned into what hcp reports: an `hdrhistogram`, a summary of
//! percentiles, or a `biolatency`-style terminal histogram.
//!
//! The bucket scheme, and why a reported value is within 1/64 of the truth
//! from 1 µs to 60 s, is documented in [`hcp_common::hist`].

use hcp_common::hist::{bucket_value, BUCKETS, OVERFLOW, OVERFLOW_NS};
use hcp_common::LatencyHist;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Significant figures of the `hdrhistogram` that [`to_hdr`] builds.
///
/// With 3, hdrhistogram keeps every value below 2048 exact and splits each
/// octave `[2^k, 2^(k+1))` above into buckets of `2^(k-10)`. Our bucket
/// values there are midpoints of buckets `2^(k-5)` wide, so multiples of
/// `2^(k-6)`: each one is the lowest value of its own hdrhistogram bucket.
/// So no two of our buckets share one of hdrhistogram's, and
/// `lowest_equivalent` of what a query returns gives back our bucket value
/// exactly ([`summarize`] does that). A plain `value_at_quantile` returns the
/// highest value of that hdrhistogram bucket instead, less than 1/1024 above.
pub const HDR_SIGFIG: u8 = 3;

/// Sums per-CPU copies of one histogram: buckets, counts and sums add up,
/// the maximum is the largest of the maxima.
pub fn merge(per_cpu: impl IntoIterator<Item = LatencyHist>) -> LatencyHist {
    let mut total = LatencyHist::zeroed();
    for h in per_cpu {
        for (t, n) in total.buckets.iter_mut().zip(h.buckets) {
            *t += n;
        }
        total.count += h.count;
        total.sum_ns = total.sum_ns.wrapping_add(h.sum_ns);
        total.max_ns = total.max_ns.max(h.max_ns);
    }
    total
}

/// An `hdrhistogram` of `h`, in nanoseconds: each bucket's count recorded at
/// [`bucket_value`], the overflow bucket at [`OVERFLOW_NS`], the top of the
/// range. That hides how far beyond the range those values went; report
/// [`LatencyHist::overflow`] (or [`Summary::overflow`]) alongside.
pub fn to_hdr(h: &LatencyHist) -> Histogram<u64> {
    let mut hdr = Histogram::new_with_bounds(1, OVERFLOW_NS, HDR_SIGFIG).expect("constant bounds are valid");
    for (i, &n) in h.buckets.iter().enumerate() {
        if n > 0 {
            hdr.record_n(bucket_value(i), n).expect("every bucket value is within the bounds");
        }
    }
    hdr
}

/// Percentiles of one histogram, in nanoseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Exact: from the sum of the values, not from buckets.
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    /// Exact: the largest value recorded.
    pub max_ns: u64,
    /// Values at or above `OVERFLOW_NS` (about 68.7 s). A percentile that
    /// falls among them reads as `OVERFLOW_NS`, a lower bound.
    pub overflow: u64,
}

/// Summarizes `h`. Percentiles are bucket values, within 1/64 of the true
/// percentile from 1 µs to 60 s, and never above the exact maximum. An empty
/// histogram gives all zeros.
pub fn summarize(h: &LatencyHist) -> Summary {
    let hdr = to_hdr(h);
    let at = |q: f64| hdr.lowest_equivalent(hdr.value_at_quantile(q)).min(h.max_ns);
    Summary {
        count: h.count,
        mean_ns: if h.count == 0 { 0.0 } else { h.sum_ns as f64 / h.count as f64 },
        p50_ns: at(0.50),
        p90_ns: at(0.90),
        p99_ns: at(0.99),
        p999_ns: at(0.999),
        max_ns: h.max_ns,
        overflow: h.overflow(),
    }
}

/// The unit of [`render_log2`]'s rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Usecs,
    Msecs,
}

impl Unit {
    pub fn nanos(self) -> u64 {
        match self {
            Unit::Usecs => 1_000,
            Unit::Msecs => 1_000_000,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Unit::Usecs => "usecs",
            Unit::Msecs => "msecs",
        }
    }
}

/// Stars in the widest row.
const STARS: usize = 40;

/// A terminal histogram in the layout of libbpf-tools' `biolatency`: one row
/// per power of two of `unit`, `lo -> hi` inclusive, row 0 holding 0 and 1,
/// empty rows before the first and after the last count left out. Values
/// are truncated to the unit, as `biolatency` does.
///
/// Each fine bucket goes whole to the row of its [`bucket_value`], so a
/// value within about 1.6% of a row's edge may be counted in the next row.
/// Overflow gets its own last row, from `OVERFLOW_NS` to the exact maximum.
/// An empty histogram renders as an empty string.
pub fn render_log2(h: &LatencyHist, unit: Unit) -> String {
    let mut rows = [0u64; 64];
    for (i, &n) in h.buckets.iter().enumerate().take(OVERFLOW) {
        let v = bucket_value(i) / unit.nanos();
        rows[v.checked_ilog2().unwrap_or(0) as usize] += n;
    }
    let overflow = h.overflow();
    let widest = rows.iter().copied().max().unwrap_or(0).max(overflow);
    if widest == 0 {
        return String::new();
    }

    let mut out = format!("{:5}{:<19} : count    distribution\n", "", unit.label());
    let mut row = |lo: u64, hi: u64, n: u64| {
        let stars = (u128::from(n) * STARS as u128 / u128::from(widest)) as usize;
        out += &format!("{lo:>10} -> {hi:<10} : {n:<8} |{}{}|\n", "*".repeat(stars), " ".repeat(STARS - stars));
    };
    if let (Some(first), Some(last)) = (rows.iter().position(|&n| n > 0), rows.iter().rposition(|&n| n > 0)) {
        for (r, &n) in rows.iter().enumerate().take(last + 1).skip(first) {
            let lo = if r == 0 { 0 } else { 1 << r };
            row(lo, u64::MAX >> (63 - r), n);
        }
    }
    if overflow > 0 {
        let lo = OVERFLOW_NS / unit.nanos();
        row(lo, (h.max_ns / unit.nanos()).max(lo), overflow);
    }
    out
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

/// A histogram of `values` (nanoseconds), for tests.
#[cfg(test)]
pub(crate) fn from_samples(values: &[u64]) -> LatencyHist {
    let mut h = LatencyHist::zeroed();
    for v in values {
        h.record(*v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcp_common::hist::{bucket_of, BUCKETS};

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn hist(values: impl IntoIterator<Item = u64>) -> LatencyHist {
        let mut h = LatencyHist::zeroed();
        for v in values {
            h.record(v);
        }
        h
    }

    fn assert_within_3_percent(what: &str, got: u64, want: u64) {
        let err = got.abs_diff(want) as f64 / want as f64;
        assert!(err <= 0.03, "{what}: {got} ns, want {want} ns ({:.2}% off)", err * 100.0);
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_largest_max() {
        let a = hist([10 * US, 20 * US]);
        let b = hist([10 * US, 100 * S]);
        let c = LatencyHist::zeroed();
        let m = merge([a, b, c]);
        assert_eq!(m, hist([10 * US, 20 * US, 10 * US, 100 * S]));
        assert_eq!(m.count, 4);
        assert_eq!(m.sum_ns, 40 * US + 100 * S);
        assert_eq!(m.max_ns, 100 * S);
        assert_eq!(m.buckets[bucket_of(10 * US)], 2);
        assert_eq!(m.overflow(), 1);
        assert_eq!(merge([]), LatencyHist::zeroed());
    }

    #[test]
    fn hdr_gives_back_every_bucket_value_exactly() {
        let mut h = LatencyHist::zeroed();
        for (i, n) in h.buckets.iter_mut().enumerate() {
            *n = i as u64 % 3 + 1;
        }
        let hdr = to_hdr(&h);
        assert_eq!(hdr.len(), h.buckets.iter().sum::<u64>());
        for (i, &n) in h.buckets.iter().enumerate() {
            let v = bucket_value(i);
            assert_eq!(hdr.lowest_equivalent(v), v, "bucket {i}");
            assert_eq!(hdr.count_at(v), n, "bucket {i}: another bucket shares its hdrhistogram bucket");
            let slack = hdr.highest_equivalent(v) - v;
            assert!(slack as f64 <= v as f64 / 1024.0, "bucket {i}: {v} ns, hdrhistogram adds {slack}");
        }
        assert_eq!(BUCKETS, h.buckets.len());
    }

    #[test]
    fn overflow_is_recorded_at_the_top_and_counted() {
        let h = hist([5 * US, 90 * S, 200 * S]);
        let hdr = to_hdr(&h);
        assert_eq!(hdr.len(), 3);
        assert_eq!(hdr.count_at(OVERFLOW_NS), 2);
        let s = summarize(&h);
        assert_eq!(s.overflow, 2);
        assert_eq!(s.max_ns, 200 * S);
        assert_eq!(s.p90_ns, OVERFLOW_NS);
    }

    #[test]
    fn uniform_100_to_200_us() {
        let values: Vec<u64> = (0..1000).map(|i| 100 * US + i * 100).collect();
        let s = summarize(&hist(values.iter().copied()));
        assert_eq!(s.count, 1000);
        assert_eq!(s.mean_ns, values.iter().sum::<u64>() as f64 / 1000.0);
        assert_within_3_percent("p50", s.p50_ns, 150 * US);
        assert_within_3_percent("p90", s.p90_ns, 190 * US);
        assert_within_3_percent("p99", s.p99_ns, 199 * US);
        assert_within_3_percent("p99.9", s.p999_ns, 199_900);
        assert_eq!(s.max_ns, 199_900);
        assert!(s.p999_ns <= s.max_ns);
        assert_eq!(s.overflow, 0);
    }

    #[test]
    fn log_uniform_1_us_to_60_s() {
        // 6001 values, evenly spaced in log from 1 µs to 60 s: the true
        // percentile q is the value at position q * 6000.
        let n = 6000;
        let at = |k: u64| ((US as f64).ln() + ((60 * S) as f64 / US as f64).ln() * k as f64 / n as f64).exp() as u64;
        let s = summarize(&hist((0..=n).map(at)));
        assert_within_3_percent("p50", s.p50_ns, at(n / 2));
        assert_within_3_percent("p90", s.p90_ns, at(n * 9 / 10));
        assert_within_3_percent("p99", s.p99_ns, at(n * 99 / 100));
        assert_within_3_percent("p99.9", s.p999_ns, at(n * 999 / 1000));
        assert_eq!(s.max_ns, at(n));
    }

    #[test]
    fn a_single_value_reports_itself_within_3_percent() {
        let s = summarize(&hist([2 * MS]));
        assert_eq!((s.count, s.mean_ns, s.max_ns), (1, 2e6, 2 * MS));
        for p in [s.p50_ns, s.p90_ns, s.p99_ns, s.p999_ns] {
            assert_within_3_percent("percentile", p, 2 * MS);
            assert!(p <= s.max_ns);
        }
    }

    #[test]
    fn an_empty_histogram_summarizes_to_zeros() {
        let s = summarize(&LatencyHist::zeroed());
        assert_eq!(
            s,
            Summary { count: 0, mean_ns: 0.0, p50_ns: 0, p90_ns: 0, p99_ns: 0, p999_ns: 0, max_ns: 0, overflow: 0 }
        );
        assert_eq!(render_log2(&LatencyHist::zeroed(), Unit::Usecs), "");
    }

    #[test]
    fn renders_like_biolatency() {
        let h = hist([3 * US, 5 * US, 5 * US, 20 * US, 20 * US, 20 * US, 20 * US]);
        assert_eq!(
            render_log2(&h, Unit::Usecs),
            "     usecs               : count    distribution\n\
             \x20        2 -> 3          : 1        |**********                              |\n\
             \x20        4 -> 7          : 2        |********************                    |\n\
             \x20        8 -> 15         : 0        |                                        |\n\
             \x20       16 -> 31         : 4        |****************************************|\n"
        );
    }

    #[test]
    fn renders_overflow_as_its_own_last_row() {
        let h = hist([MS / 2, 100 * S]);
        assert_eq!(
            render_log2(&h, Unit::Msecs),
            "     msecs               : count    distribution\n\
             \x20        0 -> 1          : 1        |****************************************|\n\
             \x20    68719 -> 100000     : 1        |****************************************|\n"
        );
    }

    #[test]
    fn subtraction_keeps_only_new_samples() {
        let before = from_samples(&[10_000, 20_000]);
        let mut now = before;
        now.record(30_000);
        now.record(1_000_000);
        let d = subtract(&now, &before);
        assert_eq!(d.count, 2);
        assert_eq!(d.sum_ns, 1_030_000);
        assert_eq!(d.max_ns, 1_000_000, "a new maximum is exact");
        assert_eq!(d.buckets.iter().sum::<u64>(), 2);

        let big = from_samples(&[9_000_000]);
        let mut later = big;
        later.record(50_000);
        let d = subtract(&later, &big);
        assert_eq!(d.count, 1);
        assert!(d.max_ns >= 50_000 && d.max_ns <= 51_000, "bounded by the bucket that grew: {}", d.max_ns);
    }
}
