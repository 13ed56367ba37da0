//! The recorder of a traced session's history (`hcp __record hcpN`): a
//! process of its own, like the auto-extend monitor, that reads the pinned
//! counters on a fixed schedule and appends the figures of each interval to
//! `/var/lib/hcp/history/hcpN.ndjson` (see `state::history`).
//!
//! Why a process and not per-time-slot counters in the kernel: the programs
//! stay as cheap as they are (no slot arithmetic and no second set of
//! histograms per event), the kernel's memory stays what it is (a slot of
//! every histogram of every device for each interval kept would take
//! hundreds of MiB for a day at 1 s), and coarsening old intervals, which
//! keeps a week within a few MiB, needs user space anyway.
//!
//! A start starts it once the snapshot is live (a process start the
//! snapshot need not wait for) and it waits, blocked, until that start is
//! done with the record (see `worker::wait_for_starter`); its
//! first interval begins at the counters recorded at the switch, so the
//! intervals add up to the session's totals. It only reads the counters, so
//! `hcp stats` and `--follow` beside it change nothing of it. `remove` stops
//! it (it records the last, partial interval on SIGTERM) before the final
//! report; it exits by itself when its session's record goes.

use std::process::Child;
use std::time::{Duration, Instant};

use super::worker;
use crate::error::{Error, Result};
use crate::figures::interval;
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::device::Dm;
use crate::state::counters::{record_counters, CountersRecord};
use crate::state::history::{self, History};
use crate::state::record::{self, Phase, RecorderRecord, Session};
use crate::tracer::pins;

/// The hidden subcommand the recorder runs as.
pub const SUBCOMMAND: &str = "__record";

/// The recorder, in messages.
const WHAT: &str = "the history recorder";

/// The recording interval unless `--history-interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the recorder merges old intervals and rewrites the file, in
/// intervals.
const COARSEN_EVERY: u64 = 60;

/// Where the recorder's own messages go.
pub fn log_path(id: &str) -> std::path::PathBuf {
    crate::state::dirs::run_dir().join("recorder").join(format!("{id}.log"))
}

/// Starts the recorder of live session `id`, recording every `interval`
/// (zero: [`DEFAULT_INTERVAL`]): its record for the session's, and the
/// child, which waits until it is dropped (its stdin's end) before it reads
/// the session's record, so the caller saves the record first. Should it
/// not start, the session stands without a history, and says so; its
/// totals are kept by the kernel whatever the recorder does.
pub fn start(id: &str, interval: Duration) -> (RecorderRecord, Option<Child>) {
    let interval_seconds = Some(interval).filter(|d| !d.is_zero()).unwrap_or(DEFAULT_INTERVAL).as_secs_f64();
    match worker::spawn(SUBCOMMAND, id, &log_path(id), WHAT) {
        Ok(child) => (RecorderRecord { pid: Some(child.id() as i32), interval_seconds }, Some(child)),
        Err(e) => {
            eprintln!("hcp: {id} is traced, but its history recorder did not start ({e}): `hcp stats` gives its totals, `hcp stats --history` nothing");
            (RecorderRecord { pid: None, interval_seconds }, None)
        }
    }
}

/// Stops the recorder of `session` if it runs, once it has recorded the
/// interval in progress. Found by its command line when the record has no
/// pid: a start killed between the recorder's start and the record's save
/// leaves one waiting.
pub fn stop(session: &Session) -> Result<()> {
    match recorder_pid(session).or_else(|| worker::find(SUBCOMMAND, &session.id)) {
        Some(pid) => worker::stop(pid, SUBCOMMAND, &session.id, WHAT),
        None => Ok(()),
    }
}

/// Stops a recorder this process started (a failed `start` undoing itself).
pub fn stop_child(child: Child) -> Result<()> {
    worker::stop_child(child, WHAT)
}

/// Whether the recorder of `session` runs.
pub fn running(session: &Session) -> bool {
    recorder_pid(session).is_some_and(|pid| worker::is_running(pid, SUBCOMMAND, &session.id))
}

fn recorder_pid(session: &Session) -> Option<i32> {
    session.trace.as_ref()?.recorder.as_ref()?.pid
}

/// The recorder (`hcp __record ID`). Returns the exit status: 0 when the
/// session ended or it was stopped, 1 on an error it cannot go on from.
pub fn serve(id: &str) -> i32 {
    worker::on_stop_signals();
    match record_session(id) {
        Ok(why) => {
            worker::log(&format!("stopped: {why}"));
            0
        }
        Err(e) => {
            worker::log(&format!("error: {e}; the history stops here"));
            1
        }
    }
}

/// Records until the session goes or the recorder is asked to stop.
fn record_session(id: &str) -> Result<String> {
    let Some(session) = wait_until_live(id)? else {
        return Ok("the session ended before it went live".to_string());
    };
    let trace = session.trace.as_ref().expect("a live traced session");
    let interval = trace.recorder.as_ref().map_or(DEFAULT_INTERVAL.as_secs_f64(), |r| r.interval_seconds);
    let every = Duration::from_secs_f64(interval);
    let devices: Vec<DevNum> = trace.devices.iter().filter_map(|d| d.devnum.parse().ok()).collect();
    let mut before: CountersRecord = trace.at_start.clone().expect("waited for at_start");
    // Traced from the switch: the history starts there; traced later
    // (`hcp trace attach`): when tracing began.
    let mut start_unix = match (&trace.window, session.snapshot_unix) {
        (Some(_), Some(switched)) => switched,
        _ => trace.since_unix as f64,
    };
    let mut history = History::new(id, interval);
    history.header.baseline = trace.baseline.clone();
    history::save(&history)?;
    worker::log(&format!("recording every {interval} s to {}", history::path(id).display()));
    let dm = Dm::open()?;
    let began = Instant::now();
    let mut tick: u64 = 1;
    loop {
        // A fixed schedule: interval k ends at k intervals after the start,
        // whatever each one took, so the intervals never drift.
        worker::pause_until(began + every.mul_f64(tick as f64));
        let stopping = worker::stop_requested();
        match record::load_one(id)? {
            Some(s) if s.created_unix == session.created_unix && s.phase == Phase::Active => {}
            _ => return Ok("the session was removed".to_string()),
        }
        let now = pins::read_for(&session.traced_devnums())
            .map_err(|e| Error::system(format!("reading hcp's tracing maps: {e:#}")))?;
        let end_unix = wall_clock();
        let mut since_before = session.clone();
        if let Some(t) = since_before.trace.as_mut() {
            t.at_start = Some(before);
        }
        let stats = super::inspect::live_figures(&since_before, &now, &dm);
        let iv = interval::record(&stats, start_unix, end_unix);
        history::append(id, &iv)?;
        history.push(iv);
        before = record_counters(&now, &devices);
        start_unix = end_unix;
        if stopping {
            history.coarsen(end_unix);
            history::save(&history)?;
            return Ok("asked to stop".to_string());
        }
        if tick.is_multiple_of(COARSEN_EVERY) && history.coarsen(end_unix) {
            history::save(&history)?;
        }
        // Behind schedule (a stalled machine): the next interval ends at the
        // next slot to come, and this one was simply longer.
        tick = tick.max(began.elapsed().as_secs_f64().div_euclid(interval) as u64) + 1;
    }
}

/// The session once live, or None if it went before (a failed start).
/// Its start is done first (live or undone), unless it was killed.
fn wait_until_live(id: &str) -> Result<Option<Session>> {
    worker::wait_for_starter();
    let mut first_seen: Option<u64> = None;
    loop {
        match record::load_one(id)? {
            Some(s) if first_seen.is_some_and(|c| c != s.created_unix) => return Ok(None), // another session now
            Some(s) if s.phase == Phase::Active && s.trace.as_ref().is_some_and(|t| t.at_start.is_some()) => {
                return Ok(Some(s))
            }
            Some(s) if s.phase == Phase::Removing => return Ok(None),
            Some(s) => first_seen = Some(s.created_unix),
            None => return Ok(None),
        }
        if worker::stop_requested() {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds since the Unix epoch, with fractions.
pub fn wall_clock() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
