//! `hcp report`: the HTML report of a traced session, live or from the
//! final report `remove` wrote (its JSON and the history beside it).

use std::path::{Path, PathBuf};

use super::trace;
use crate::error::{Error, Result};
use crate::figures::analysis::Analysis;
use crate::figures::report::{self, ReportData};
use crate::figures::stats::SessionStats;
use crate::state::history::{self, History};
use crate::state::record::{Session, WindowRecord};

/// Writes the report of `target` (a session, or a final report's JSON) to
/// `out`, by default beside the final report (`FILE.html`); returns its path.
pub fn report(target: &str, out: Option<&Path>) -> Result<PathBuf> {
    let as_file = Path::new(target);
    let (data, default_out) = if target.ends_with(".json") && as_file.is_file() {
        (saved(as_file)?, trace::html_report_path(as_file))
    } else {
        let sessions = crate::state::record::load_all()?;
        let session = trace::find(&sessions, target)?;
        let stats = trace::read(session)?;
        (live(session, &stats)?, trace::html_report_path(&trace::report_path(session)))
    };
    let path = out.map_or(default_out, Path::to_path_buf);
    write(&data, &path)?;
    Ok(path)
}

/// Writes `data` as HTML to `path`.
pub(super) fn write(data: &ReportData, path: &Path) -> Result<()> {
    let html = report::html(data)?;
    if path.starts_with(crate::state::dirs::DEFAULT_STORE_DIR) {
        crate::state::private::ensure_private_dir(Path::new(crate::state::dirs::DEFAULT_STORE_DIR))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::write(path, html).map_err(|e| Error::io(format!("writing report {}", path.display()), e))
}

/// What the report of a live `session` shows, from its figures `stats`.
pub(super) fn live(session: &Session, stats: &SessionStats) -> Result<ReportData> {
    let no_history = || {
        Error::usage(format!(
            "session {} has no recorded history to draw: only sessions started with --trace have one",
            session.id
        ))
    };
    let analysis = stats.analysis.clone().ok_or_else(no_history)?;
    let history = history::load(&session.id)?.ok_or_else(no_history)?;
    Ok(ReportData {
        session: session.id.clone(),
        origin: session.origin.path.display().to_string(),
        analysis,
        switch: stats.freeze.clone(),
        baseline: session.trace.as_ref().and_then(|t| t.baseline.clone()),
        history: history.intervals().cloned().collect(),
    })
}

/// What a final report shows: its JSON, and the history `remove` kept
/// beside it.
fn saved(json: &Path) -> Result<ReportData> {
    let text = std::fs::read(json).map_err(|e| Error::io(format!("reading {}", json.display()), e))?;
    let bad = |why: String| Error::usage(format!("{} is not a final report of hcp: {why}", json.display()));
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    if value["schema"] != crate::figures::stats::SCHEMA {
        return Err(bad(format!("its schema is {}, not {}", value["schema"], crate::figures::stats::SCHEMA)));
    }
    let field = |name: &str| value.get(name).cloned().ok_or_else(|| bad(format!("it has no `{name}`")));
    let analysis: Analysis = serde_json::from_value(field("analysis")?)
        .map_err(|_| bad("it has no analysis (a session traced without a history)".to_string()))?;
    let switch: WindowRecord = serde_json::from_value(field("freeze")?).map_err(|e| bad(format!("freeze: {e}")))?;
    let history_path = trace::history_copy_path(json);
    let history_text = std::fs::read_to_string(&history_path).map_err(|e| {
        Error::io(format!("reading the session's history {} (kept beside the report)", history_path.display()), e)
    })?;
    let history = History::parse(&history_text, &history_path)?;
    Ok(ReportData {
        session: value["session"].as_str().unwrap_or("?").to_string(),
        origin: value["origin"].as_str().unwrap_or("?").to_string(),
        analysis,
        switch,
        baseline: history.header.baseline.clone(),
        history: history.intervals().cloned().collect(),
    })
}
