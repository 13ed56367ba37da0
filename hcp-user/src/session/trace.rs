//! Tracing a session: which of its devices are traced as what, the
//! baseline taken before the snapshot, and the figures read at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hcp_common::bio::{Level, Role};
use hcp_common::IoOp;

use crate::error::{Error, Result};
use crate::figures::analysis::Totals;
use crate::figures::interval::IntervalStats;
use crate::figures::stats::HistoryStatus;
use crate::figures::stats::{self, SessionStats};
use crate::kernel::devnum::DevNum;
use crate::kernel::dm::device::Dm;
use crate::state::counters::{CountersRecord, HistRecord};
use crate::state::history::{self, History};
use crate::state::record::{KernelWindow, RecorderRecord, Session, TraceRecord, TracedDevice, WindowRecord};
use crate::tracer::freeze_trace::{self, FreezeTracer};
use crate::tracer::pins;

/// Starts tracing `devices` (attaching the programs if no session is
/// traced yet); returns the devices newly traced, to undo on failure.
pub(super) fn attach(devices: &[(DevNum, Role, PathBuf)]) -> Result<Vec<DevNum>> {
    pins::ensure_attached(Some(&layout_cache()))
        .map_err(|e| Error::system(format!("attaching hcp's tracing: {e:#}")))?;
    let list: Vec<DevNum> = devices.iter().map(|(d, _, _)| *d).collect();
    pins::add_devices(&list).map_err(|e| Error::system(format!("tracing the session's devices: {e:#}")))
}

/// Where the running kernel's layout is kept between commands (see
/// [`crate::tracer::layout::KernelLayout::find`]): under /run, which a
/// reboot, the usual way to change kernels, empties.
fn layout_cache() -> PathBuf {
    crate::state::dirs::run_dir().join("kernel-layout")
}

/// The origin's write latency over `baseline` (None for zero).
pub(super) fn baseline(origin: DevNum, baseline: Duration) -> Result<Option<HistRecord>> {
    if baseline.is_zero() {
        return Ok(None);
    }
    let read_hist = || {
        pins::histogram(origin, Level::Bio, IoOp::Write)
            .map_err(|e| Error::system(format!("reading the origin's latency: {e:#}")))
    };
    let before = read_hist()?;
    // In slices: a Ctrl-C held back meanwhile stops the start at once.
    let until = std::time::Instant::now() + baseline;
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
        if let Some(signal) = crate::kernel::signals::pending_stop_signal() {
            return Err(Error::new(
                crate::error::Kind::Interrupted,
                format!(
                    "{signal} during the baseline: stopped before the snapshot went live; everything it made is undone"
                ),
            ));
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    Ok(Some(crate::state::counters::to_record(&crate::tracer::hist::subtract(&read_hist()?, &before))))
}

/// Every counter of `devices` now: taken as the snapshot is about to go
/// live, the session's own figures are what is counted after it.
pub(super) fn counters_now(devices: &[DevNum]) -> Result<CountersRecord> {
    let now = pins::read_for(devices).map_err(|e| Error::system(format!("reading hcp's tracing maps: {e:#}")))?;
    Ok(crate::state::counters::record_counters(&now, devices))
}

/// The tracer of the switch: this process's freeze and suspend calls and,
/// for a mounted origin (`fs_dev`, its device), the write stalls they cause.
/// Attached for the switch only: syscall tracepoints slow every system
/// call of the machine while attached. The programs pinned with the block
/// programs are attached if there (see [`pins`]), else loaded anew.
pub(super) fn switch_tracer(fs_dev: Option<DevNum>) -> Result<FreezeTracer> {
    let attached = FreezeTracer::attach_pinned(fs_dev).and_then(|pinned| match (pinned, fs_dev) {
        (Some(tracer), _) => Ok(tracer),
        (None, Some(dev)) => FreezeTracer::attach_with_stalls(dev),
        (None, None) => FreezeTracer::attach(),
    });
    attached.map_err(|e| Error::system(format!("attaching the freeze tracer: {e:#}")))
}

/// How long writers held by a freeze may take to return after the thaw
/// before the stall is reported as a lower bound.
const SETTLE: Duration = Duration::from_secs(2);

/// What the kernel saw of the switch this process made of `origin` (a dm
/// name), which ended (thawed) at `ended_ns` on CLOCK_MONOTONIC.
pub(super) fn kernel_window(tracer: &mut FreezeTracer, origin: &str, ended_ns: u64) -> Result<KernelWindow> {
    let still_held = tracer.settle_stalls(ended_ns, std::time::Instant::now() + SETTLE);
    let failed = |e: anyhow::Error| Error::system(format!("reading the freeze tracer: {e:#}"));
    let events = tracer.events().map_err(failed)?;
    let stalls = tracer.stalls().map_err(failed)?;
    let losses = tracer.losses().map_err(failed)?;
    let windows = freeze_trace::windows(&events);
    let ours = windows.process(std::process::id()).cloned().unwrap_or_default();
    let secs = |ns: u64| ns as f64 / 1e9;
    Ok(KernelWindow {
        freeze_call_seconds: ours.freeze_calls.last().map(|s| secs(s.duration_ns)),
        frozen_seconds: ours.frozen.last().map(|s| secs(s.duration_ns)),
        suspended_seconds: ours.suspended.iter().rev().find(|s| s.dm_name == origin).map(|s| secs(s.span.duration_ns)),
        longest_write_stall_seconds: stalls.map(|s| secs(s.max_ns)),
        write_calls: stalls.map_or(0, |s| s.calls),
        writes_still_held: still_held as u64,
        lost_events: losses.ring_full
            + losses.inflight_full
            + losses.read_errors
            + stalls.map_or(0, |s| s.inflight_full + s.read_errors),
    })
}

/// The trace record of a session's devices.
pub(super) fn record(
    devices: &[(DevNum, Role, PathBuf)],
    baseline: Option<HistRecord>,
    at_start: Option<CountersRecord>,
    window: Option<WindowRecord>,
    report: Option<PathBuf>,
) -> TraceRecord {
    TraceRecord {
        since_unix: crate::clock::now_unix(),
        devices: devices
            .iter()
            .map(|(d, r, p)| TracedDevice { role: r.name().to_string(), devnum: d.to_string(), path: p.clone() })
            .collect(),
        baseline,
        at_start,
        window,
        report,
        recorder: None,
    }
}

/// The session's figures so far.
pub fn read(session: &Session) -> Result<SessionStats> {
    read_with_window(session, None)
}

/// [`read`], with the store a session of `window` would need.
fn read_with_window(session: &Session, window: Option<Duration>) -> Result<SessionStats> {
    if session.trace.is_none() {
        return Err(Error::usage(format!(
            "session {} is not traced: start sessions with --trace, or run `hcp trace attach {}`",
            session.id, session.id
        )));
    }
    let counters = pins::read_for(&session.traced_devnums())
        .map_err(|e| Error::system(format!("reading hcp's tracing maps: {e:#}")))?;
    let stats = super::inspect::with_live_state(
        stats::compute(session, &counters, crate::clock::now_unix()),
        &Dm::open()?,
        session,
    )?;
    Ok(with_history(stats, session, window))
}

/// `stats` with what the session's history holds, whether its recorder
/// runs, and the analysis (with the store a `window` would need).
fn with_history(mut stats: SessionStats, session: &Session, window: Option<Duration>) -> SessionStats {
    let Some(recorder) = session.trace.as_ref().and_then(|t| t.recorder.as_ref()) else { return stats };
    let loaded = history::load(&session.id);
    stats.history = Some(history_status(session, recorder, &loaded));
    if let Ok(Some(h)) = &loaded {
        let intervals: Vec<_> = h.intervals().cloned().collect();
        if !intervals.is_empty() {
            let window = window.map(|w| w.as_secs_f64());
            let totals = Totals {
                baseline: stats.cow_overhead.baseline.as_ref(),
                during: stats.cow_overhead.during.as_ref(),
                switch: &stats.freeze,
                write_amplification: stats.write_amplification,
                store_used_bytes: stats.store.as_ref().and_then(|s| s.used_bytes),
                store_quota_bytes: stats.store.as_ref().map_or(session.quota_bytes, |s| s.quota_bytes),
            };
            stats.analysis = Some(crate::figures::analysis::analyze(&totals, &intervals, window));
        }
    }
    stats
}

/// What the history `loaded` of `session` holds, and whether its recorder
/// runs.
fn history_status(session: &Session, recorder: &RecorderRecord, loaded: &Result<Option<History>>) -> HistoryStatus {
    let history = loaded.as_ref().ok().and_then(Option::as_ref);
    HistoryStatus {
        path: history::path(&session.id),
        interval_seconds: recorder.interval_seconds,
        intervals: history.map_or(0, History::len),
        recorded_until_unix: history.and_then(|h| h.intervals().last().map(|iv| iv.end_unix)),
        recorder_running: super::recorder::running(session),
        problem: loaded.as_ref().err().map(|e| e.message().to_string()),
    }
}

/// Stops tracing `session`'s devices that no other traced session uses.
pub(super) fn detach(session: &Session, others: &[Session]) -> Result<()> {
    let Some(trace) = &session.trace else { return Ok(()) };
    let shared: Vec<&str> = others
        .iter()
        .filter(|s| s.id != session.id)
        .filter_map(|s| s.trace.as_ref())
        .flat_map(|t| t.devices.iter().map(|d| d.devnum.as_str()))
        .collect();
    let own: Vec<DevNum> = trace
        .devices
        .iter()
        .filter(|d| !shared.contains(&d.devnum.as_str()))
        .filter_map(|d| d.devnum.parse().ok())
        .collect();
    pins::remove_devices(&own).map_err(|e| Error::system(format!("detaching the session's tracing: {e:#}")))
}

/// Where `remove` writes a traced session's final report: where `--report`
/// said, else under `/var/lib/hcp/reports/`.
pub fn report_path(session: &Session) -> PathBuf {
    session.trace.as_ref().and_then(|t| t.report.clone()).unwrap_or_else(|| {
        PathBuf::from(crate::state::dirs::DEFAULT_STORE_DIR)
            .join("reports")
            .join(format!("{}-{}.json", session.id, session.created_unix))
    })
}

/// The file of the report's histograms, in HdrHistogram's interval-log
/// format: the report's path with `.hlog` added.
pub fn histogram_log_path(report: &Path) -> PathBuf {
    let mut name = report.as_os_str().to_owned();
    name.push(".hlog");
    PathBuf::from(name)
}

/// The report to look at beside the final report: `FILE.json` becomes
/// `FILE.html` (any other name gets `.html` added).
pub fn html_report_path(report: &Path) -> PathBuf {
    if report.extension().is_some_and(|e| e == "json") {
        return report.with_extension("html");
    }
    let mut name = report.as_os_str().to_owned();
    name.push(".html");
    PathBuf::from(name)
}

/// The session's history beside its report: the report's path with
/// `.history.ndjson` added.
pub fn history_copy_path(report: &Path) -> PathBuf {
    let mut name = report.as_os_str().to_owned();
    name.push(".history.ndjson");
    PathBuf::from(name)
}

/// `--report FILE`, checked before anything changes and made absolute (the
/// report is written later, maybe from another directory): its directory
/// must exist, and neither it nor its `.hlog` may (hcp does not overwrite
/// files it did not make).
pub(super) fn check_report_path(path: &Path) -> Result<PathBuf> {
    let bad = |why: &str| Error::usage(format!("--report {}: {why}", path.display()));
    let absolute = std::path::absolute(path).map_err(|_| bad("not a usable path"))?;
    let Some(name) = absolute.file_name() else { return Err(bad("give a file name, not a directory")) };
    let dir = absolute.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(bad(&format!("directory {} does not exist: create it first", dir.display())));
    }
    if absolute.is_dir() {
        return Err(bad("is a directory: give a file name in it"));
    }
    let html = html_report_path(&absolute);
    for existing in [absolute.clone(), histogram_log_path(&absolute), history_copy_path(&absolute), html] {
        if fs_entry_exists(&existing) {
            return Err(bad(&format!(
                "{} exists already: give a new file name (hcp does not overwrite files)",
                existing.display()
            )));
        }
    }
    Ok(dir.join(name))
}

/// Whether anything, even a dangling symlink, is at `path`.
fn fs_entry_exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Writes the final report of `session` (to `to`, else where
/// [`report_path`] says) and its histograms and history beside it; returns
/// the report's path and figures.
pub(super) fn write_report(session: &Session, to: Option<&Path>) -> Result<(PathBuf, SessionStats)> {
    let stats = read(session)?;
    let path = to.map_or_else(|| report_path(session), Path::to_path_buf);
    if path.starts_with(crate::state::dirs::DEFAULT_STORE_DIR) {
        crate::state::private::ensure_private_dir(Path::new(crate::state::dirs::DEFAULT_STORE_DIR))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let text = serde_json::to_string_pretty(&stats).expect("stats serialise");
    std::fs::write(&path, text).map_err(|e| Error::io(format!("writing report {}", path.display()), e))?;
    let log = histogram_log_path(&path);
    let (start, interval) = crate::figures::hdr_log::period(&stats);
    let mut out = Vec::new();
    crate::figures::hdr_log::write(&mut out, &stats, start, interval)
        .and_then(|()| std::fs::write(&log, out))
        .map_err(|e| Error::io(format!("writing histogram log {}", log.display()), e))?;
    if let Some(h) = history::load(&session.id)? {
        let copy = history_copy_path(&path);
        std::fs::write(&copy, h.to_ndjson())
            .map_err(|e| Error::io(format!("writing the session's history {}", copy.display()), e))?;
    }
    Ok((path, stats))
}

/// The figures of every traced session (for `--prometheus` without a
/// session).
pub fn stats_all() -> Result<Vec<SessionStats>> {
    let sessions = crate::state::record::load_all()?;
    let traced: Vec<&Session> = sessions.iter().filter(|s| s.trace.is_some()).collect();
    if traced.is_empty() {
        return Ok(Vec::new());
    }
    let counters = pins::read().map_err(|e| Error::system(format!("reading hcp's tracing maps: {e:#}")))?;
    let dm = Dm::open()?;
    traced
        .into_iter()
        .map(|s| {
            super::inspect::with_live_state(stats::compute(s, &counters, crate::clock::now_unix()), &dm, s)
                .map(|st| with_history(st, s, None))
        })
        .collect()
}

/// The devices of `session` that exist now, with their roles. Read from the
/// nodes the record names, so it serves a session being started and one
/// already running alike.
pub(super) fn devices_of(session: &Session) -> Vec<(DevNum, Role, PathBuf)> {
    let mapper = crate::kernel::dm::device::node_path;
    let real = if session.origin.wrapped { PathBuf::from(&session.origin.real) } else { mapper(&session.origin.real) };
    let cow = mapper(&format!("{}-cow", session.id));
    let store = match &session.store.loop_device {
        Some(lo) => lo.clone(),
        None if cow.exists() => cow,
        None => session.store.path.clone(),
    };
    [
        (mapper(&session.origin.dm_name), Role::Origin),
        (real, Role::Real),
        (store, Role::Store),
        (mapper(&session.id), Role::Snapshot),
    ]
    .into_iter()
    .filter_map(|(path, role)| Some((DevNum::of_block_device(&path).ok()?, role, path)))
    .collect()
}

/// `hcp stats TARGET [--window DURATION]`: the figures of a traced session,
/// with the store a session of `window` would need.
pub fn stats(target: &str, window: Option<Duration>) -> Result<SessionStats> {
    let sessions = crate::state::record::load_all()?;
    let session = find(&sessions, target)?;
    read_with_window(session, window)
}

/// `hcp stats TARGET --follow`: calls `emit` with the figures of each
/// `interval` (what was counted during it), until the session is removed or
/// `emit` returns false.
pub fn follow(target: &str, interval: Duration, mut emit: impl FnMut(&SessionStats) -> bool) -> Result<()> {
    let sessions = crate::state::record::load_all()?;
    let mut session = find(&sessions, target)?.clone();
    read(&session)?; // traced at all?
    let devices: Vec<DevNum> = devices_of(&session).into_iter().map(|(d, _, _)| d).collect();
    let dm = Dm::open()?;
    let read_counters =
        || pins::read_for(&devices).map_err(|e| Error::system(format!("reading hcp's tracing maps: {e:#}")));
    let mut before = crate::state::counters::record_counters(&read_counters()?, &devices);
    // A fixed schedule: line k covers up to k intervals after the first
    // read, however long each read and print took, so lines never drift.
    let first = std::time::Instant::now();
    let mut began = first;
    let mut tick: u32 = 1;
    loop {
        let due = first + interval * tick;
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        if !crate::state::record::load_all()?.iter().any(|s| s.id == session.id) {
            return Ok(()); // removed: its final report is written
        }
        let now = read_counters()?;
        if let Some(trace) = session.trace.as_mut() {
            trace.at_start = Some(before);
        }
        let mut figures =
            super::inspect::with_live_state(stats::compute(&session, &now, crate::clock::now_unix()), &dm, &session)?;
        let read_at = std::time::Instant::now();
        figures.interval_seconds = Some(read_at.duration_since(began).as_secs_f64());
        began = read_at;
        if !emit(&figures) {
            return Ok(());
        }
        before = crate::state::counters::record_counters(&now, &devices);
        // Behind schedule (a stalled machine): skip to the next slot to come.
        tick = tick.max((first.elapsed().as_secs_f64() / interval.as_secs_f64()) as u32) + 1;
    }
}

/// `hcp stats TARGET --history`: the session's recorded intervals that end
/// after `since` and begin before `until` (seconds since the epoch), oldest
/// first, and what the history holds (whether its recorder still runs).
pub fn history(target: &str, since: Option<f64>, until: Option<f64>) -> Result<(Vec<IntervalStats>, HistoryStatus)> {
    let sessions = crate::state::record::load_all()?;
    let session = find(&sessions, target)?;
    let Some(recorder) = session.trace.as_ref().and_then(|t| t.recorder.as_ref()) else {
        return Err(Error::usage(format!(
            "session {} has no recorded history: it is not traced (start sessions with --trace), or was traced by \
             an older hcp; `hcp stats {}` gives its totals",
            session.id, session.id
        )));
    };
    let loaded = history::load(&session.id);
    let status = history_status(session, recorder, &loaded);
    let Some(h) = loaded.map_err(|e| Error::refused(e.message().to_string()))? else {
        return Ok((Vec::new(), status));
    };
    let shown = h
        .intervals()
        .filter(|iv| since.is_none_or(|s| iv.end_unix > s) && until.is_none_or(|u| iv.start_unix < u))
        .map(|iv| crate::figures::interval::figures(&session.id, iv))
        .collect();
    Ok((shown, status))
}

/// `hcp trace unload`: frees the tracing programs and maps that stay
/// loaded, detached, once no session is traced (see [`pins`]). Returns
/// whether anything was loaded. Refused while a session is traced.
pub fn unload() -> Result<bool> {
    crate::privilege::require_root()?;
    let _lock = crate::state::lock::Lock::acquire()?;
    let traced: Vec<String> =
        crate::state::record::load_all()?.into_iter().filter(|s| s.trace.is_some()).map(|s| s.id).collect();
    if !traced.is_empty() {
        return Err(Error::busy(format!(
            "{} traced ({}): the programs are in use; `hcp remove` the traced sessions first",
            if traced.len() == 1 { "a session is" } else { "sessions are" },
            traced.join(", ")
        )));
    }
    let loaded = pins::pin_dir().exists();
    pins::unload().map_err(|e| Error::system(format!("unloading hcp's tracing: {e:#}")))?;
    Ok(loaded)
}

/// `hcp trace attach TARGET`: starts tracing a running session (without a
/// baseline or the switch, which are over).
pub fn attach_session(target: &str) -> Result<PathBuf> {
    crate::privilege::require_root()?;
    let _lock = crate::state::lock::Lock::acquire()?;
    let sessions = crate::state::record::load_all()?;
    let mut session = find(&sessions, target)?.clone();
    if session.trace.is_some() {
        return Err(Error::usage(format!(
            "session {} is traced already: `hcp stats {}` shows it",
            session.id, session.id
        )));
    }
    let devices = devices_of(&session);
    attach(&devices)?;
    let origin = devices.iter().find(|(_, r, _)| *r == Role::Origin).map(|(d, _, _)| *d);
    let devnums: Vec<DevNum> = devices.iter().map(|(d, _, _)| *d).collect();
    let at_start = match origin {
        Some(_) => Some(counters_now(&devnums)?),
        None => None,
    };
    let mut trace = record(&devices, None, at_start, None, None);
    // Live already: the recorder starts at once, from the counters above.
    let (recorder, child) = super::recorder::start(&session.id, Duration::ZERO);
    trace.recorder = Some(recorder);
    session.trace = Some(trace);
    if let Err(e) = crate::state::record::save(&session) {
        // It would wait for a record that never says it is traced.
        if let Some(child) = child {
            let _ = super::recorder::stop_child(child);
        }
        return Err(e);
    }
    // The recorder reads the record once this is dropped.
    drop(child);
    Ok(session.snapshot_path.clone())
}

pub(super) fn find<'a>(sessions: &'a [Session], target: &str) -> Result<&'a Session> {
    let id = target.strip_prefix("/dev/").unwrap_or(target);
    sessions.iter().find(|s| s.id == id).ok_or_else(|| {
        Error::not_found(format!("no hcp session {target}: give an hcp device such as /dev/hcp1 (`hcp -l` lists them)"))
    })
}
