//! A session's latency histograms as an HdrHistogram interval log, the text
//! format of HdrHistogram's `HistogramLogWriter`, which its tools read
//! (`HistogramLogProcessor`, HdrHistogram's log analyzer, the
//! `hdrhistogram` crate's `IntervalLogIterator`). [`write()`] writes one log
//! with one interval line per [`NamedHistogram`], tagged with its name
//! (`app_write`, ...; see [`crate::figures::prometheus`] for the list).
//!
//! Values are nanoseconds, recorded by [`to_hdr`]: each of hcp's buckets at
//! its midpoint, within 1/64 of the values it counts, and everything from
//! [`OVERFLOW_NS`] (about 68.7 s) up at `OVERFLOW_NS`. Histograms are
//! compressed (V2 + DEFLATE), as `HistogramLogWriter` writes them. The log
//! says all that in comments, followed by the format version, `StartTime`
//! and `BaseTime` headers and the column legend, as Java's writer does.
//!
//! Interval timestamps are offsets from `BaseTime`, the start of the
//! period the figures count ([`period`] gives it for a set of stats): each
//! interval starts at 0 and lasts the whole period. The line of
//! `baseline_app_write` carries the same timestamps, though what it counts
//! came before the snapshot.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hcp_common::hist::OVERFLOW_NS;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, IntervalLogWriterError, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::figures::stats::{NamedHistogram, SessionStats};
use crate::tracer::hist::to_hdr;

/// The column legend of Java's `HistogramLogWriter`; readers skip it.
const LEGEND: &str = "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";

/// Writes `stats.histograms` as an interval log of one interval, from
/// `start` (the log's `StartTime` and `BaseTime`) for `interval`.
pub fn write(out: &mut impl Write, stats: &SessionStats, start: SystemTime, interval: Duration) -> io::Result<()> {
    let mut serializer = V2DeflateSerializer::new();
    let mut header = IntervalLogWriterBuilder::new();
    header.add_comment(&format!("hcp latency histograms of session {:?}, origin {:?}", stats.session, stats.origin));
    header.add_comment(&format!(
        "Values are nanoseconds: hcp bucket midpoints, within 1/64 of the values counted; \
         values of {OVERFLOW_NS} ns and more are recorded as {OVERFLOW_NS} ns"
    ));
    for h in &stats.histograms {
        header.add_comment(&format!("{}: {}", h.name, h.help));
    }
    header.add_comment("[Histogram log format version 1.3]").with_start_time(start).with_base_time(start);
    header.begin_log_with(out, &mut serializer)?;
    writeln!(out, "{LEGEND}")?;

    // A builder without headers writes nothing: this goes on after the legend.
    let mut log = IntervalLogWriterBuilder::new().begin_log_with(out, &mut serializer)?;
    for NamedHistogram { name, hist, .. } in &stats.histograms {
        let tag = Tag::new(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} cannot tag an interval")))?;
        log.write_histogram(&to_hdr(hist), Duration::ZERO, interval, Some(tag)).map_err(|e| match e {
            IntervalLogWriterError::IoError(e) => e,
            IntervalLogWriterError::SerializeError(e) => io::Error::other(e),
        })?;
    }
    Ok(())
}

/// The period `stats` count: a `--follow` interval, ending when they were
/// read, or else from the start of tracing until then. Whole seconds, as
/// the stats keep them.
pub fn period(stats: &SessionStats) -> (SystemTime, Duration) {
    let read_at = UNIX_EPOCH + Duration::from_secs(stats.read_at_unix);
    match stats.interval_seconds {
        Some(s) => {
            let length = Duration::try_from_secs_f64(s).unwrap_or_default();
            (read_at.checked_sub(length).unwrap_or(UNIX_EPOCH), length)
        }
        None => {
            let since = UNIX_EPOCH + Duration::from_secs(stats.traced_since_unix);
            (since, read_at.duration_since(since).unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use hcp_common::hist::bucket_value;
    use hcp_common::LatencyHist;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::Histogram;

    use super::*;
    use crate::figures::prometheus::tests::session;
    use crate::figures::stats::compute;
    use crate::tracer::pins::Counters;

    fn stats(histograms: Vec<NamedHistogram>) -> SessionStats {
        let mut s = compute(&session("hcp1", "/dev/vdb"), &Counters::default(), 1_700_000_090);
        s.origin = "/dev/vdb\n#[BaseTime: 1.0 (seconds since epoch)]".into();
        s.histograms = histograms;
        s
    }

    fn named(name: &'static str, values: &[u64]) -> NamedHistogram {
        let mut hist = LatencyHist::zeroed();
        for v in values {
            hist.record(*v);
        }
        NamedHistogram { name, help: "what it times", hist }
    }

    #[test]
    fn histograms_read_back_as_written() {
        let s = stats(vec![
            named("app_write", &[3_000, 40_000, 2_000_000, 2_000_000]),
            named("snapshot_read", &[700, 90_000_000_000]),
            named("real_device_write", &[1]),
        ]);
        let (start, interval) = period(&s);
        assert_eq!((start, interval), (UNIX_EPOCH + Duration::from_secs(1_700_000_000), Duration::from_secs(90)));
        let mut log = Vec::new();
        write(&mut log, &s, start, interval).unwrap();
        let text = String::from_utf8(log.clone()).unwrap();
        assert!(text.starts_with("#hcp latency histograms of session \"hcp1\""), "{text}");
        assert!(text.contains("\n#Values are nanoseconds"), "{text}");
        assert!(text.contains(&format!("\n{LEGEND}\nTag=app_write,0.000,90.000,")), "{text}");

        let mut entries = IntervalLogIterator::new(&log).map(|e| e.expect("the log parses"));
        let since_epoch = Duration::from_secs(1_700_000_000);
        assert_eq!(entries.next(), Some(LogEntry::StartTime(since_epoch)));
        assert_eq!(entries.next(), Some(LogEntry::BaseTime(since_epoch)), "the origin's newline made a header");
        let mut read = 0;
        for (entry, source) in entries.zip(&s.histograms) {
            let LogEntry::Interval(i) = entry else { panic!("{entry:?} is not an interval") };
            let want = to_hdr(&source.hist);
            assert_eq!(i.tag().as_deref(), Some(source.name));
            assert_eq!((i.start_timestamp(), i.duration()), (Duration::ZERO, interval));
            assert_eq!(i.max(), want.max() as f64, "{}", source.name);
            let bytes = base64::engine::general_purpose::STANDARD.decode(i.encoded_histogram()).unwrap();
            let got: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
            assert_eq!(got.len(), source.hist.count, "{}", source.name);
            assert_eq!(got.max(), want.max(), "{}", source.name);
            for (b, n) in source.hist.buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
                assert_eq!(got.count_at(bucket_value(b)), *n, "{}: bucket {b}", source.name);
            }
            read += 1;
        }
        assert_eq!(read, 3);
        assert_eq!(IntervalLogIterator::new(&log).count(), 5, "two headers and three intervals, nothing else");
    }

    #[test]
    fn no_histograms_make_a_log_of_headers() {
        let mut log = Vec::new();
        write(&mut log, &stats(Vec::new()), UNIX_EPOCH, Duration::from_secs(1)).unwrap();
        let entries: Vec<_> = IntervalLogIterator::new(&log).collect();
        assert_eq!(entries, [Ok(LogEntry::StartTime(Duration::ZERO)), Ok(LogEntry::BaseTime(Duration::ZERO))]);
    }

    #[test]
    fn a_follow_interval_ends_when_read() {
        let mut s = stats(Vec::new());
        s.interval_seconds = Some(2.5);
        let read_at = UNIX_EPOCH + Duration::from_secs(1_700_000_090);
        assert_eq!(period(&s), (read_at - Duration::from_millis(2500), Duration::from_millis(2500)));
    }
}
