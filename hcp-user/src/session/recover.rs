//! `hcp recover`: finds what an hcp that did not finish left behind, from
//! the session records and the live dm tables, and brings each to a clean
//! state.
//!
//! - A start that did not finish is rolled back: the command failed, so no
//!   session must remain. (Its record is written before anything it
//!   describes exists, so nothing a start makes escapes it.)
//! - A removal that did not finish is rolled forward.
//! - A rollback, interrupted or left to run (`--no-wait`), is carried
//!   forward: its merge started again from the store if it stopped, waited
//!   for, and the session ended (see `rollback`); one a reboot interrupted
//!   (its record kept under `/var/lib/hcp`, its origin half merged) is
//!   loaded again first.
//! - A session with a piece missing or changed under it (its snapshot
//!   device gone, its origin no longer on `snapshot-origin`) can no longer
//!   be trusted: it is removed.
//! - hcp's dm devices that no record accounts for (known by their UUIDs)
//!   are removed, an origin given back its own table first.
//!
//! All of it is [`remove_one`]'s work: every step of a removal skips what
//! is already done, so one path serves a complete session and every
//! half-made one. Complete sessions are left alone. What cannot be done
//! (a snapshot something still reads) is reported and the rest goes on.

use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::kernel::dm::device::Dm;
use crate::privilege::require_root;
use crate::state::lock::Lock;
use crate::state::record::{self, Phase, Session};

use super::inspect::{is_switched, orphans, problem, OrphanKind};
use super::remove::{remove_one, restore_origin_table};
use super::rollback;

/// One thing `recover` found, and what it did about it.
#[derive(Clone, Debug, Serialize)]
pub struct Recovered {
    /// A session (`hcp3`) or a dm device without one.
    pub item: String,
    pub found: String,
    /// What was done, or why it could not be.
    pub done: String,
    pub ok: bool,
    /// Why it failed, for the exit status.
    #[serde(skip)]
    pub error_kind: Option<Kind>,
}

pub fn recover() -> Result<Vec<Recovered>> {
    require_root()?;
    let dm = Dm::open()?;
    // Held, so no other start or remove is under way: every record not
    // `active` is a leftover.
    let _lock = Lock::acquire()?;
    let mut sessions = record::load_all()?;
    let mut out = Vec::new();
    // Rollbacks a reboot interrupted: their merges loaded again, then
    // finished below with the others.
    for kept in record::interrupted_rollbacks(&sessions)? {
        let found =
            format!("a rollback of {} interrupted by a reboot, its data half merged", kept.origin.path.display());
        match rollback::restart_after_reboot(&dm, &kept) {
            Ok(session) => {
                out.push(done(&kept.id, found, "merge loaded again: the kernel continues it from the store".into()));
                sessions.push(session);
            }
            Err(e) => out.push(failed(&kept.id, found, e)),
        }
    }
    sessions.sort_by_key(|s| record::session_number(&s.id));
    // Newest first, so an origin gets its table back with its last session.
    for session in sessions.clone().iter().rev() {
        if session.phase == Phase::RollingBack {
            let found = problem(&dm, session)?.unwrap_or_else(|| "rolling back, the merge running".to_string());
            match finish_rollback(&dm, session, &sessions) {
                Ok(restored) => {
                    let restored = if restored { ", origin given its own table back" } else { "" };
                    out.push(done(&session.id, found, format!("merge waited for, session ended{restored}")));
                    sessions.retain(|s| s.id != session.id);
                }
                Err(e) => out.push(failed(&session.id, found, e)),
            }
            continue;
        }
        let Some(found) = problem(&dm, session)? else { continue };
        match remove_one(&dm, session, &sessions, false, None) {
            Ok(removed) => {
                let restored = if removed.origin_restored { ", origin given its own table back" } else { "" };
                out.push(done(&session.id, found, format!("removed{restored}")));
                sessions.retain(|s| s.id != session.id);
            }
            Err(e) => out.push(failed(&session.id, found, e)),
        }
    }
    for orphan in orphans(&dm, &sessions)? {
        let found = orphan.to_string();
        match remove_orphan(&dm, &orphan.name, &orphan.kind) {
            Ok(what) => out.push(done(&orphan.name, found, what)),
            Err(e) => out.push(failed(&orphan.name, found, e)),
        }
    }
    if crate::tracer::pins::attached() && !sessions.iter().any(|s| s.trace.is_some()) {
        let item = crate::tracer::pins::pin_dir().display().to_string();
        let found = "tracing programs attached for no session".to_string();
        match crate::tracer::pins::detach() {
            Ok(()) => {
                out.push(done(&item, found, "detached (still loaded: `hcp trace unload` frees them)".to_string()))
            }
            Err(e) => out.push(failed(&item, found, Error::system(format!("{e:#}")))),
        }
    }
    Ok(out)
}

/// A rollback goes forward only: its merge started (again, from the
/// store, if it was interrupted), waited for, and the session ended.
/// Returns whether the origin got its own table back.
fn finish_rollback(dm: &Dm, session: &Session, sessions: &[Session]) -> Result<bool> {
    rollback::carry_on(dm, session, sessions)?;
    let data_sectors = session.rollback.as_ref().map_or(0, |rb| rb.data_sectors);
    rollback::merge::wait(dm, &session.origin.dm_name, data_sectors, &mut |_| {})?;
    rollback::finish(dm, session, sessions).map(|(restored, _)| restored)
}

fn remove_orphan(dm: &Dm, name: &str, kind: &OrphanKind) -> Result<String> {
    if let OrphanKind::Real { origin } = kind {
        let switched = dm.exists(origin)? && is_switched(dm, origin, name)?;
        if dm.exists(origin)? {
            restore_origin_table(dm, origin, name)?;
        }
        dm.remove(name)?;
        return Ok(if switched { format!("{origin} given its own table back; removed") } else { "removed".into() });
    }
    if dm.open_count(name)? > 0 {
        return Err(Error::busy(format!(
            "{} is in use (mounted or open): unmount or close it, then run `hcp recover` again",
            crate::kernel::dm::device::node_path(name).display()
        )));
    }
    dm.remove(name)?;
    Ok("removed".into())
}

fn done(item: &str, found: String, done: String) -> Recovered {
    Recovered { item: item.to_string(), found, done, ok: true, error_kind: None }
}

fn failed(item: &str, found: String, e: Error) -> Recovered {
    Recovered { item: item.to_string(), found, done: e.message().to_string(), ok: false, error_kind: Some(e.kind) }
}
