//! Latency histograms built in the kernel: log-linear buckets over
//! nanoseconds, counted in a per-CPU map value, so the I/O path does one
//! add and sends nothing to user space.
//!
//! # Buckets
//!
//! - Linear range, `[0, 1024)` ns: [`LINEAR_BUCKETS`] (64) buckets of
//!   [`UNIT_NS`] (16 ns) each.
//! - Octaves `[2^k, 2^(k+1))` ns for `k` in `10..36`: 26 octaves, each split
//!   into `2^SUB_BITS` (32) equal sub-buckets of width `2^(k-5)` ns, so 832
//!   buckets.
//! - One overflow bucket for everything at or above [`OVERFLOW_NS`]
//!   (`2^36` ns, about 68.7 s).
//!
//! That is 64 + 832 + 1 = 897 buckets, and with `count`, `sum_ns` and
//! `max_ns` a [`LatencyHist`] is 900 `u64`s = 7200 bytes: under 8 KiB.
//! Nothing is dropped: every `u64` lands in some bucket.
//!
//! # Error
//!
//! User space records each bucket as its midpoint, [`bucket_value`]. In an
//! octave the bucket `[lo, lo + w)` has `w = 2^(k-5)` and `lo >= 2^k`, so
//! for any value `v` in it, `|midpoint - v| <= w/2 = 2^(k-6)` and
//! `|midpoint - v| / v <= 2^(k-6) / 2^k = 1/64`, about 1.56%. In the linear
//! range the error is at most 8 ns, which is under 1/64 of `v` from 512 ns
//! up. So from 1 µs to 60 s (below `OVERFLOW_NS`) a reported value is within
//! 1.6% of the truth; the goal is 3%.
//!
//! 16 sub-buckets per octave would not do: the worst case, `v = 2^k` in a
//! bucket of width `2^k/16`, is 1/32 = 3.1% away from the midpoint, and
//! even the best single representative (the harmonic mean of the bucket's
//! ends) leaves 3.03%.

/// Each octave is split into `2^SUB_BITS` sub-buckets.
pub const SUB_BITS: u32 = 5;
/// Sub-buckets per octave.
pub const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// log2 of [`UNIT_NS`].
pub const UNIT_SHIFT: u32 = 4;
/// Width of the finest buckets, those of the linear range.
pub const UNIT_NS: u64 = 1 << UNIT_SHIFT;
/// Buckets of the linear range `[0, LINEAR_BUCKETS * UNIT_NS)` = `[0, 1024)` ns.
/// Its upper half is the octave `[512, 1024)` split into 32 buckets of 16 ns,
/// which is why it holds two octaves' worth of sub-buckets.
pub const LINEAR_BUCKETS: usize = 2 * SUB_BUCKETS;
/// First octave past the linear range: `[2^10, 2^11)` ns.
const FIRST_OCTAVE: u32 = SUB_BITS + 1 + UNIT_SHIFT;
/// Octaves after the linear range, `[2^10, 2^36)` ns.
pub const OCTAVES: usize = 26;
/// Values at or above this (about 68.7 s) go to the overflow bucket.
pub const OVERFLOW_NS: u64 = 1 << (FIRST_OCTAVE as usize + OCTAVES);
/// Index of the overflow bucket, the last one.
pub const OVERFLOW: usize = LINEAR_BUCKETS + OCTAVES * SUB_BUCKETS;
/// Number of buckets, the overflow bucket included.
pub const BUCKETS: usize = OVERFLOW + 1;

/// The bucket that counts `ns`. Branches, shifts and one `leading_zeros`:
/// no loop, no indexing, no panic, so the eBPF verifier accepts it. The
/// result is always below [`BUCKETS`]; callers index with `.get_mut(i)`.
///
/// In eBPF, count through [`LatencyHist::record`] rather than indexing with
/// this directly: the verifier cannot see that the result is in bounds, and
/// LLVM, which can, removes the check `.get_mut` would make (see `record`).
#[inline(always)]
pub fn bucket_of(ns: u64) -> usize {
    if ns >= OVERFLOW_NS {
        return OVERFLOW;
    }
    // In units of UNIT_NS, the linear range is the values below 64 = 2^6.
    let u = ns >> UNIT_SHIFT;
    if u < LINEAR_BUCKETS as u64 {
        return u as usize;
    }
    // `u` is in [2^6, 2^32): its octave `j` is in 6..=31. Wrapping
    // arithmetic throughout, though nothing here can wrap: a debug build
    // must not grow overflow checks, whose panic paths the verifier rejects.
    let j = 63u32.wrapping_sub(u.leading_zeros());
    // The top SUB_BITS + 1 bits of `u` are 1xxxxx: the x's are the sub-bucket.
    let sub = u.wrapping_shr(j.wrapping_sub(SUB_BITS)) as usize & (SUB_BUCKETS - 1);
    let octave = j.wrapping_sub(SUB_BITS + 1) as usize;
    LINEAR_BUCKETS.wrapping_add(octave.wrapping_mul(SUB_BUCKETS)).wrapping_add(sub)
}

/// The smallest value bucket `i` counts. An `i` past the last bucket is
/// taken as the overflow bucket.
pub const fn bucket_low(i: usize) -> u64 {
    if i >= OVERFLOW {
        return OVERFLOW_NS;
    }
    if i < LINEAR_BUCKETS {
        return i as u64 * UNIT_NS;
    }
    let octave = (i - LINEAR_BUCKETS) / SUB_BUCKETS;
    let sub = (i - LINEAR_BUCKETS) % SUB_BUCKETS;
    // Octave FIRST_OCTAVE + octave, whose sub-buckets are 2^(octave + 5) wide.
    ((SUB_BUCKETS + sub) as u64) << (octave as u32 + UNIT_SHIFT + 1)
}

/// The end (exclusive) of bucket `i`: the start of the next one. The
/// overflow bucket has no end that fits a `u64`; it reports `u64::MAX`.
pub const fn bucket_high(i: usize) -> u64 {
    if i >= OVERFLOW {
        u64::MAX
    } else {
        bucket_low(i + 1)
    }
}

/// The value user space records for bucket `i`: its midpoint, or
/// [`OVERFLOW_NS`] for the overflow bucket (a lower bound of what it holds).
pub const fn bucket_value(i: usize) -> u64 {
    if i >= OVERFLOW {
        return OVERFLOW_NS;
    }
    let low = bucket_low(i);
    low + (bucket_high(i) - low) / 2
}

/// A latency histogram: the value of a per-CPU map, updated by one CPU at a
/// time, so plain adds suffice. User space sums the CPUs' copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    /// Counts by [`bucket_of`]; the last is the overflow bucket.
    pub buckets: [u64; BUCKETS],
    /// Values recorded.
    pub count: u64,
    /// Sum of the values recorded, exact (wraps after 584 years of latency).
    pub sum_ns: u64,
    /// The largest value recorded, exact.
    pub max_ns: u64,
}

impl LatencyHist {
    pub const fn zeroed() -> Self {
        LatencyHist { buckets: [0; BUCKETS], count: 0, sum_ns: 0, max_ns: 0 }
    }

    #[inline(always)]
    pub fn record(&mut self, ns: u64) {
        // LLVM proves `bucket_of` below BUCKETS and drops the bounds check of
        // `get_mut`; the verifier cannot follow that proof through the
        // expanded `leading_zeros` and rejects the access as unbounded. A
        // volatile read hides the index from LLVM, so the check stays and
        // the verifier learns the bound from it.
        let i = bucket_of(ns);
        // SAFETY: a read of a local.
        let i = unsafe { core::ptr::read_volatile(&i) };
        if let Some(slot) = self.buckets.get_mut(i) {
            *slot = slot.wrapping_add(1);
        }
        self.count = self.count.wrapping_add(1);
        self.sum_ns = self.sum_ns.wrapping_add(ns);
        if ns > self.max_ns {
            self.max_ns = ns;
        }
    }

    /// How many values were at or above [`OVERFLOW_NS`].
    pub fn overflow(&self) -> u64 {
        self.buckets[OVERFLOW]
    }
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self::zeroed()
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] and nothing but u64s, so no padding.
    unsafe impl aya::Pod for super::LatencyHist {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;
    const S: u64 = 1_000_000_000;

    fn assert_within_3_percent(v: u64) {
        let i = bucket_of(v);
        let r = bucket_value(i);
        let err = r.abs_diff(v) as f64 / v as f64;
        assert!(err <= 0.03, "{v} ns: bucket {i} reports {r} ns, {:.3}% off", err * 100.0);
        // The arithmetic in the module documentation promises more.
        assert!(err <= 1.0 / 64.0, "{v} ns: bucket {i} reports {r} ns, {:.3}% off", err * 100.0);
    }

    #[test]
    fn sizes_match_the_documented_arithmetic() {
        assert_eq!(OVERFLOW_NS, 1 << 36);
        assert_eq!(BUCKETS, 897);
        assert_eq!(core::mem::size_of::<LatencyHist>(), 7200);
        const { assert!(60 * S < OVERFLOW_NS) };
    }

    #[test]
    fn error_is_within_3_percent_from_1_us_to_60_s_on_a_fine_grid() {
        // A geometric grid with 20 000 points per decade, about 156 000 in all.
        let (lo, hi) = ((US as f64).ln(), ((60 * S) as f64).ln());
        let steps = 156_000;
        for n in 0..=steps {
            let v = (lo + (hi - lo) * n as f64 / steps as f64).exp().round() as u64;
            assert_within_3_percent(v.clamp(US, 60 * S));
        }
    }

    #[test]
    fn error_is_within_3_percent_at_every_bucket_edge_in_range() {
        for i in 0..OVERFLOW {
            for v in [bucket_low(i), bucket_high(i) - 1] {
                if (US..=60 * S).contains(&v) {
                    assert_within_3_percent(v);
                }
            }
        }
        assert_within_3_percent(US);
        assert_within_3_percent(60 * S);
    }

    #[test]
    fn linear_range_is_within_8_ns() {
        for v in 0..1024 {
            assert!(bucket_value(bucket_of(v)).abs_diff(v) <= UNIT_NS / 2, "{v} ns");
        }
    }

    #[test]
    fn buckets_partition_all_values_without_gaps_or_overlaps() {
        assert_eq!(bucket_low(0), 0);
        for i in 0..OVERFLOW {
            let (low, high) = (bucket_low(i), bucket_high(i));
            assert!(low < high, "bucket {i}: [{low}, {high})");
            assert_eq!(high, bucket_low(i + 1), "bucket {i}");
            assert_eq!(bucket_of(low), i, "low edge of bucket {i}");
            assert_eq!(bucket_of(high - 1), i, "high edge of bucket {i}");
            assert!((low..high).contains(&bucket_value(i)), "bucket {i}");
        }
        assert_eq!(bucket_high(OVERFLOW - 1), OVERFLOW_NS);
        assert_eq!(bucket_high(OVERFLOW), u64::MAX);
    }

    #[test]
    fn bucket_of_is_monotonic() {
        let mut last = 0;
        let mut check = |v: u64| {
            let i = bucket_of(v);
            assert!(i >= last, "{v} ns went back from bucket {last} to {i}");
            assert!(i < BUCKETS);
            last = i;
        };
        for v in 0..100_000 {
            check(v);
        }
        let mut v = 100_000u64;
        while let Some(next) = v.checked_add(v / 997 + 1) {
            check(next);
            v = next;
        }
        check(u64::MAX);
    }

    #[test]
    fn overflow_and_the_bottom_are_counted_not_dropped() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(OVERFLOW_NS - 1), OVERFLOW - 1);
        assert_eq!(bucket_of(OVERFLOW_NS), OVERFLOW);
        assert_eq!(bucket_of(u64::MAX), OVERFLOW);
        assert_eq!(bucket_value(OVERFLOW), OVERFLOW_NS);
        assert_eq!(bucket_low(OVERFLOW + 7), OVERFLOW_NS);

        let mut h = LatencyHist::zeroed();
        h.record(0);
        h.record(100 * S);
        h.record(u64::MAX);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.overflow(), 2);
        assert_eq!(h.buckets.iter().sum::<u64>(), 3);
    }

    #[test]
    fn record_updates_count_sum_and_max() {
        let mut h = LatencyHist::zeroed();
        for v in [5 * US, 3 * US, 7 * US, 3 * US] {
            h.record(v);
        }
        assert_eq!(h.count, 4);
        assert_eq!(h.sum_ns, 18 * US);
        assert_eq!(h.max_ns, 7 * US);
        assert_eq!(h.buckets[bucket_of(3 * US)], 2);
        assert_eq!(h.buckets[bucket_of(5 * US)], 1);
        assert_eq!(h.buckets[bucket_of(7 * US)], 1);
        assert_eq!(h.buckets.iter().sum::<u64>(), 4);
    }
}
