//! Tracing a session: which of its devices are traced as what, the
//! baseline taken before the snapshot, and the figures read at the end.

use std::path::PathBuf;
use std::time::Duration;

use hcp_common::bio::{Level, Role};
use hcp_common::IoOp;

use crate::devnum::DevNum;
use crate::error::{Error, Result};
use crate::state::{HistRecord, Session, TraceRecord, TracedDevice, WindowRecord};
use crate::stats::{self, CountersRecord, SessionStats};
use crate::trace_pins;

/// Starts tracing `devices` (attaching the programs if no session is
/// traced yet); returns the devices newly traced, to undo on failure.
pub(super) fn attach(devices: &[(DevNum, Role, PathBuf)]) -> Result<Vec<DevNum>> {
    trace_pins::ensure_attached().map_err(|e| Error::system(format!("attaching hcp's tracing: {e:#}")))?;
    let list: Vec<(DevNum, Role)> = devices.iter().map(|(d, r, _)| (*d, *r)).collect();
    trace_pins::add_devices(&list).map_err(|e| Error::system(format!("tracing the session's devices: {e:#}")))
}

/// The origin's write latency over `baseline` (None for zero), then every
/// counter of `devices` as the snapshot is about to go live.
pub(super) fn baseline(
    origin: DevNum,
    baseline: Duration,
    devices: &[DevNum],
) -> Result<(Option<HistRecord>, CountersRecord)> {
    let read_hist = || {
        trace_pins::histogram(origin, Level::Bio, IoOp::Write)
            .map_err(|e| Error::system(format!("reading the origin's latency: {e:#}")))
    };
    let base = if baseline.is_zero() {
        None
    } else {
        let before = read_hist()?;
        std::thread::sleep(baseline);
        Some(stats::to_record(&stats::subtract(&read_hist()?, &before)))
    };
    let now = trace_pins::read().map_err(|e| Error::system(format!("reading hcp's tracing maps: {e:#}")))?;
    Ok((base, stats::record_counters(&now, devices)))
}

/// The trace record of a session's devices.
pub(super) fn record(
    devices: &[(DevNum, Role, PathBuf)],
    baseline: Option<HistRecord>,
    at_start: Option<CountersRecord>,
    window: Option<WindowRecord>,
) -> TraceRecord {
    TraceRecord {
        since_unix: super::now_unix(),
        devices: devices
            .iter()
            .map(|(d, r, p)| TracedDevice { role: r.name().to_string(), devnum: d.to_string(), path: p.clone() })
            .collect(),
        baseline,
        at_start,
        window,
    }
}

/// The session's figures so far.
pub fn read(session: &Session) -> Result<SessionStats> {
    if session.trace.is_none() {
        return Err(Error::usage(format!(
            "session {} is not traced: start sessions with --trace, or run `hcp trace attach {}`",
            session.id, session.id
        )));
    }
    let counters = trace_pins::read().map_err(|e| Error::system(format!("reading hcp's tracing maps: {e:#}")))?;
    Ok(stats::compute(session, &counters, super::now_unix()))
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
    trace_pins::remove_devices(&own).map_err(|e| Error::system(format!("detaching the session's tracing: {e:#}")))
}

/// Where `remove` writes a traced session's final report.
pub fn report_path(session: &Session) -> PathBuf {
    PathBuf::from(super::DEFAULT_STORE_DIR)
        .join("reports")
        .join(format!("{}-{}.json", session.id, session.created_unix))
}

/// Writes the final report of `session`; returns its path.
pub(super) fn write_report(session: &Session) -> Result<PathBuf> {
    let stats = read(session)?;
    let path = report_path(session);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let text = serde_json::to_string_pretty(&stats).expect("stats serialise");
    std::fs::write(&path, text).map_err(|e| Error::io(format!("writing report {}", path.display()), e))?;
    Ok(path)
}

/// The devices of `session` that exist now, with their roles. Read from the
/// nodes the record names, so it serves a session being started and one
/// already running alike.
pub(super) fn devices_of(session: &Session) -> Vec<(DevNum, Role, PathBuf)> {
    let mapper = crate::dm::device::node_path;
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

/// `hcp stats TARGET`: the figures of a traced session.
pub fn stats(target: &str) -> Result<SessionStats> {
    let sessions = crate::state::load_all()?;
    read(find(&sessions, target)?)
}

/// `hcp stats TARGET --follow`: calls `emit` with the figures of each
/// `interval` (what was counted during it), until the session is removed or
/// `emit` returns false.
pub fn follow(target: &str, interval: Duration, mut emit: impl FnMut(&SessionStats) -> bool) -> Result<()> {
    let sessions = crate::state::load_all()?;
    let mut session = find(&sessions, target)?.clone();
    read(&session)?; // traced at all?
    let devices: Vec<DevNum> = devices_of(&session).into_iter().map(|(d, _, _)| d).collect();
    let read_counters = || trace_pins::read().map_err(|e| Error::system(format!("reading hcp's tracing maps: {e:#}")));
    let mut before = stats::record_counters(&read_counters()?, &devices);
    loop {
        let began = std::time::Instant::now();
        std::thread::sleep(interval);
        if !crate::state::load_all()?.iter().any(|s| s.id == session.id) {
            return Ok(()); // removed: its final report is written
        }
        let now = read_counters()?;
        if let Some(trace) = session.trace.as_mut() {
            trace.at_start = Some(before);
        }
        let mut figures = stats::compute(&session, &now, super::now_unix());
        figures.interval_seconds = Some(began.elapsed().as_secs_f64());
        if !emit(&figures) {
            return Ok(());
        }
        before = stats::record_counters(&now, &devices);
    }
}

/// `hcp trace attach TARGET`: starts tracing a running session (without a
/// baseline or the switch, which are over).
pub fn attach_session(target: &str) -> Result<PathBuf> {
    super::require_root()?;
    let _lock = crate::state::Lock::acquire()?;
    let sessions = crate::state::load_all()?;
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
        Some(origin) => Some(baseline(origin, Duration::ZERO, &devnums)?.1),
        None => None,
    };
    session.trace = Some(record(&devices, None, at_start, None));
    crate::state::save(&session)?;
    Ok(session.snapshot_path.clone())
}

fn find<'a>(sessions: &'a [Session], target: &str) -> Result<&'a Session> {
    let id = target.strip_prefix("/dev/").unwrap_or(target);
    sessions.iter().find(|s| s.id == id).ok_or_else(|| {
        Error::not_found(format!("no hcp session {target}: give an hcp device such as /dev/hcp1 (`hcp -l` lists them)"))
    })
}
