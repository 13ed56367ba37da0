//! A traced session's history: its figures per interval, as the recorder
//! (`session::recorder`) keeps them in `/var/lib/hcp/history/hcpN.ndjson`.
//!
//! Each interval holds counts and sparse histograms, never percentiles, so
//! that intervals merge exactly: the history stays bounded by merging older
//! intervals into coarser ones, tier by tier ([`TIERS`]), and every figure of
//! a merged interval is what it would have been had it been recorded so.
//! A day at 1 s intervals keeps about 2,600 intervals; a week about 3,400.
//!
//! The file is NDJSON: a header line, then one interval per line, oldest
//! first. The recorder appends a line per interval (one `write`, so a crash
//! leaves at most a torn last line, which readers skip) and rewrites the
//! file atomically when it merges (about once a minute).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::counters::{Count, HistRecord};
use super::dirs::DEFAULT_STORE_DIR;
use super::private::{ensure_private_dir, hostile, read_private_file_up_to, write_private_file, ROOT};
use crate::error::{Error, Result};

/// The version of the file format below.
pub const HISTORY_VERSION: u32 = 1;

/// The largest history file hcp reads: far above what the tiers keep.
const MAX_HISTORY_BYTES: u64 = 64 << 20;

/// How the history is coarsened: `(resolution, kept for)` in multiples of
/// the recording interval, finest first. An interval older than its tier's
/// span is merged into the next tier's resolution; the last tier keeps
/// everything. At 1 s: 1 s for the last 10 minutes, 10 s for the last 2
/// hours, 1 minute for the last day, then 10 minutes.
pub const TIERS: [(u32, u32); 4] = [(1, 600), (10, 7_200), (60, 86_400), (600, u32::MAX)];

/// The first line of a history file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub session: String,
    /// The recording interval, seconds.
    pub interval_seconds: f64,
    /// The origin's write latency in the `--baseline` period before the
    /// snapshot, kept here so that the history alone can be drawn against
    /// it (`hcp report`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<HistRecord>,
}

/// One interval of a session's life: what was counted between `start_unix`
/// and `end_unix` (wall clock, seconds since the Unix epoch).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub start_unix: f64,
    pub end_unix: f64,
    /// Application bios on the origin, and their latency.
    pub app_writes: Timed,
    pub app_reads: Timed,
    /// Bios on the snapshot device.
    pub snapshot_reads: Timed,
    pub snapshot_writes: Timed,
    /// Chunks the copy-on-write engine read from the real device to copy
    /// them into the store, and the bytes.
    pub copy_out: Count,
    /// Bytes of copied chunks written to the store, and its metadata commits.
    pub store_data_bytes: u64,
    pub store_metadata: Count,
    /// Bytes written to the real device and the store (write amplification's
    /// numerator) and bytes read from them for origin and snapshot reads
    /// (read amplification's).
    pub device_write_bytes: u64,
    pub device_read_bytes: u64,
    /// The store at the interval's end: allocated bytes and size; null when
    /// device-mapper could not say (an invalid snapshot).
    pub store_used_bytes: Option<u64>,
    pub store_size_bytes: Option<u64>,
    /// Events neither counted nor timed in the interval (every kind of loss
    /// `hcp stats` reports, summed).
    pub lost_events: u64,
}

/// Bios of one kind: how many, their bytes, and their latency.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    pub count: u64,
    pub bytes: u64,
    pub latency: HistRecord,
}

impl Interval {
    /// Seconds the interval covers.
    pub fn seconds(&self) -> f64 {
        (self.end_unix - self.start_unix).max(0.0)
    }

    /// Adds `later`, the interval that follows this one: counts add, the
    /// store is as it was at the end.
    pub fn absorb(&mut self, later: &Interval) {
        self.end_unix = later.end_unix;
        for (a, b) in [
            (&mut self.app_writes, &later.app_writes),
            (&mut self.app_reads, &later.app_reads),
            (&mut self.snapshot_reads, &later.snapshot_reads),
            (&mut self.snapshot_writes, &later.snapshot_writes),
        ] {
            a.count += b.count;
            a.bytes += b.bytes;
            a.latency.merge(&b.latency);
        }
        let add = |a: &mut Count, b: &Count| {
            a.count += b.count;
            a.bytes += b.bytes;
        };
        add(&mut self.copy_out, &later.copy_out);
        add(&mut self.store_metadata, &later.store_metadata);
        self.store_data_bytes += later.store_data_bytes;
        self.device_write_bytes += later.device_write_bytes;
        self.device_read_bytes += later.device_read_bytes;
        self.store_used_bytes = later.store_used_bytes.or(self.store_used_bytes);
        self.store_size_bytes = later.store_size_bytes.or(self.store_size_bytes);
        self.lost_events += later.lost_events;
    }
}

/// The history of one session, tier by tier (finest last in time).
#[derive(Clone, Debug)]
pub struct History {
    pub header: Header,
    /// `tiers[i]` holds intervals of `TIERS[i]`'s resolution, oldest first;
    /// every interval of tier i+1 is older than every one of tier i.
    tiers: Vec<Vec<Interval>>,
}

impl History {
    pub fn new(session: &str, interval_seconds: f64) -> History {
        History {
            header: Header { version: HISTORY_VERSION, session: session.to_string(), interval_seconds, baseline: None },
            tiers: vec![Vec::new(); TIERS.len()],
        }
    }

    /// Every interval, oldest first.
    pub fn intervals(&self) -> impl Iterator<Item = &Interval> {
        self.tiers.iter().rev().flatten()
    }

    pub fn len(&self) -> usize {
        self.tiers.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, interval: Interval) {
        self.tiers[0].push(interval);
    }

    /// Merges what has outlived its tier into the next one, as of `now_unix`;
    /// returns whether anything changed (and the file must be rewritten).
    pub fn coarsen(&mut self, now_unix: f64) -> bool {
        let base = self.header.interval_seconds;
        let mut changed = false;
        for i in 0..TIERS.len() - 1 {
            let keep_for = f64::from(TIERS[i].1) * base;
            let resolution = f64::from(TIERS[i + 1].0) * base;
            let old = self.tiers[i].iter().take_while(|iv| iv.end_unix <= now_unix - keep_for).count();
            if old == 0 {
                continue;
            }
            changed = true;
            let moved: Vec<Interval> = self.tiers[i].drain(..old).collect();
            for iv in moved {
                let next = &mut self.tiers[i + 1];
                // Same slot of the coarser resolution, counted from the
                // epoch so that slots line up whatever the session's start.
                let slot = |t: f64| (t / resolution).floor();
                match next.last_mut() {
                    Some(last) if slot(last.start_unix) == slot(iv.start_unix) => last.absorb(&iv),
                    _ => next.push(iv),
                }
            }
        }
        changed
    }

    /// The file's text: the header and every interval, oldest first.
    pub fn to_ndjson(&self) -> String {
        let mut text = serde_json::to_string(&self.header).expect("headers serialise");
        text.push('\n');
        for iv in self.intervals() {
            text.push_str(&serde_json::to_string(iv).expect("intervals serialise"));
            text.push('\n');
        }
        text
    }

    /// Reads a history file's text. The intervals keep their file order;
    /// a torn last line (a recorder killed mid-write) is skipped.
    pub fn parse(text: &str, path: &Path) -> Result<History> {
        let mut lines = text.lines();
        let header: Header = lines
            .next()
            .and_then(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| hostile("session history", path, "has no valid header line"))?;
        if header.version != HISTORY_VERSION {
            return Err(hostile(
                "session history",
                path,
                format!("has format version {}, and this hcp reads {HISTORY_VERSION}", header.version),
            ));
        }
        let all: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        let mut history = History::new(&header.session, header.interval_seconds);
        history.header = header;
        for (n, line) in all.iter().enumerate() {
            match serde_json::from_str::<Interval>(line) {
                Ok(iv) => history.tiers[0].push(iv),
                Err(_) if n + 1 == all.len() && !text.ends_with('\n') => {} // torn last line
                Err(e) => {
                    return Err(hostile("session history", path, format!("line {} is not an interval ({e})", n + 2)))
                }
            }
        }
        Ok(history)
    }
}

/// Where the history of session `id` is kept.
pub fn path(id: &str) -> PathBuf {
    dir().join(format!("{id}.ndjson"))
}

fn dir() -> PathBuf {
    Path::new(DEFAULT_STORE_DIR).join("history")
}

/// Writes the whole history, atomically.
pub fn save(history: &History) -> Result<()> {
    ensure_private_dir(Path::new(DEFAULT_STORE_DIR))?;
    let name = format!("{}.ndjson", history.header.session);
    write_private_file(&dir(), ROOT, &name, history.to_ndjson().as_bytes(), "session history")
}

/// Appends one interval to the file [`save`] wrote, in one write.
pub fn append(id: &str, interval: &Interval) -> Result<()> {
    let path = path(id);
    let mut line = serde_json::to_string(interval).expect("intervals serialise");
    line.push('\n');
    let mut f = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io(format!("opening session history {}", path.display()), e))?;
    f.write_all(line.as_bytes()).map_err(|e| Error::io(format!("writing session history {}", path.display()), e))
}

/// The history of session `id`, if it has one (checked as every file of
/// hcp's state).
pub fn load(id: &str) -> Result<Option<History>> {
    let path = path(id);
    let Some(bytes) = read_private_file_up_to(&path, ROOT, "session history", MAX_HISTORY_BYTES)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|_| hostile("session history", &path, "is not UTF-8 text"))?;
    History::parse(&text, &path).map(Some)
}

/// Deletes the history of session `id`; a missing one is fine.
pub fn delete(id: &str) -> Result<()> {
    let path = path(id);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing session history {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::counters::{from_record, to_record};
    use crate::tracer::hist::from_samples;

    fn interval(start: f64, writes: u64, latency_ns: u64) -> Interval {
        Interval {
            start_unix: start,
            end_unix: start + 1.0,
            app_writes: Timed {
                count: writes,
                bytes: writes * 4096,
                latency: to_record(&from_samples(&vec![latency_ns; writes as usize])),
            },
            copy_out: Count { count: writes / 2, bytes: writes / 2 * 65536 },
            store_used_bytes: Some(start as u64),
            store_size_bytes: Some(1 << 30),
            lost_events: 1,
            ..Interval::default()
        }
    }

    #[test]
    fn coarsening_keeps_every_count_and_sample() {
        let mut h = History::new("hcp1", 1.0);
        let start = 1_800_000_000.0;
        let n: u32 = 3 * 3600;
        for i in 0..n {
            h.push(interval(start + f64::from(i), u64::from(i % 7), 1_000 * u64::from(1 + i % 5)));
        }
        let now = start + f64::from(n);
        assert!(h.coarsen(now));
        assert!(!h.coarsen(now), "nothing more to merge at the same moment");
        // The last 10 minutes at 1 s, the rest of the last 2 hours at 10 s,
        // the hour before at 1 minute.
        assert_eq!(h.tiers[0].len(), 600);
        assert_eq!(h.tiers[1].len(), 660);
        assert_eq!(h.tiers[2].len(), 60);
        let total = |h: &History| {
            h.intervals().fold(Interval::default(), |mut acc, iv| {
                acc.absorb(iv);
                acc
            })
        };
        let sum = total(&h);
        let expected_writes: u64 = (0..n).map(|i| u64::from(i % 7)).sum();
        assert_eq!(sum.app_writes.count, expected_writes);
        assert_eq!(from_record(&sum.app_writes.latency).count, expected_writes, "every sample kept");
        assert_eq!(sum.lost_events, u64::from(n));
        assert_eq!(sum.store_used_bytes, Some((now - 1.0) as u64), "the store as at the end");
        // Oldest first, no overlap, no gap.
        let ivs: Vec<&Interval> = h.intervals().collect();
        assert_eq!(ivs[0].start_unix, start);
        assert!(ivs.windows(2).all(|w| w[0].end_unix == w[1].start_unix), "contiguous");
        assert_eq!(ivs.last().unwrap().end_unix, now);
    }

    #[test]
    fn a_week_stays_within_a_few_mib() {
        let mut h = History::new("hcp1", 1.0);
        let start = 1_800_000_000.0;
        for i in 0..7 * 86_400u32 {
            h.push(interval(start + f64::from(i), 10, 2_000 + u64::from(i % 3) * 1_000));
            if i % 60 == 0 {
                h.coarsen(start + f64::from(i) + 1.0);
            }
        }
        h.coarsen(start + 7.0 * 86_400.0);
        let bytes = h.to_ndjson().len();
        eprintln!("a week at 1 s: {} intervals, {bytes} bytes", h.len());
        // 600 + 660 + 1,320 + 864.
        assert_eq!(h.len(), 3_444);
        assert!(bytes < 3 << 20, "{bytes} bytes");
    }

    #[test]
    fn files_round_trip_and_a_torn_last_line_is_skipped() {
        let mut h = History::new("hcp4", 1.0);
        h.push(interval(10.0, 4, 3_000));
        h.push(interval(11.0, 6, 5_000));
        let text = h.to_ndjson();
        let back = History::parse(&text, Path::new("x")).unwrap();
        assert_eq!(back.header, h.header);
        assert_eq!(back.intervals().cloned().collect::<Vec<_>>(), h.intervals().cloned().collect::<Vec<_>>());
        let torn = &text[..text.len() - 20];
        assert_eq!(History::parse(torn, Path::new("x")).unwrap().len(), 1);
        let bad = text.replacen("{\"start_unix\"", "{\"start_unix\":\"x\"}\n{\"start_unix\"", 1);
        let err = History::parse(&bad, Path::new("/h")).unwrap_err();
        assert!(err.message().contains("line 2 is not an interval"), "{err}");
    }
}
