//! The one place an origin is switched to a new table while live: write
//! back its filesystem's dirty data, freeze it, suspend it, (activate a
//! snapshot), resume it on the table loaded beforehand, thaw. `start` switches an origin onto
//! `snapshot-origin`; `remove` and `recover` switch it back onto its own
//! table. Both get the same protection:
//!
//! - a guard process ([`crate::switch::guard`]) that resumes and thaws if hcp dies
//!   inside or a deadline passes;
//! - signals blocked, so Ctrl-C waits for the thaw;
//! - drop guards that, on an error or a panic, drop the preloaded table,
//!   resume the origin on its old one, then thaw, in that order (a thaw
//!   writes the superblock, which would wait on a suspended device).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Kind, Result};
use crate::kernel::dm::device::{Dm, Suspend};
use crate::kernel::freeze::Frozen;
use crate::kernel::signals::{pending_stop_signal, SignalBlock};
use crate::kernel::writeback::{self, PreFlush, Stopped};
use crate::switch::fault;

/// The fault-injection steps of one kind of switch (see
/// [`crate::switch::fault`]), and what a stop signal before the freeze does.
pub struct Steps {
    pub after_pre_flush: &'static str,
    /// Whether a Ctrl-C during the pre-flush abandons the switch (a start,
    /// undone), or only cuts the pre-flush short (a remove, which must
    /// finish what it began).
    pub abandon_on_signal: bool,
    pub after_freeze: &'static str,
    pub after_suspend: &'static str,
    pub before_resume: &'static str,
    pub before_thaw: &'static str,
}

pub const START_STEPS: Steps = Steps {
    after_pre_flush: "after-pre-flush",
    abandon_on_signal: true,
    after_freeze: "after-freeze",
    after_suspend: "after-suspend",
    before_resume: "before-resume",
    before_thaw: "before-thaw",
};

/// Restoring an origin has nothing between its suspend and resume, so one
/// step stands for both.
pub const RESTORE_STEPS: Steps = Steps {
    after_pre_flush: "remove-after-pre-flush",
    abandon_on_signal: false,
    after_freeze: "remove-after-freeze",
    after_suspend: "remove-after-suspend",
    before_resume: "remove-after-suspend",
    before_thaw: "remove-before-thaw",
};

/// Starting a rollback's merge: nothing is mounted, so there is no
/// pre-flush or freeze, and nothing to abandon (the snapshot device is
/// gone by then).
pub const ROLLBACK_STEPS: Steps = Steps {
    after_pre_flush: "rollback-after-snapshot-remove",
    abandon_on_signal: false,
    after_freeze: "rollback-after-snapshot-remove",
    after_suspend: "rollback-after-suspend",
    before_resume: "rollback-after-suspend",
    before_thaw: "rollback-after-resume",
};

/// How long each part of a switch took, on hcp's monotonic clock.
pub struct Window {
    /// The writeback before the freeze; None when nothing was mounted.
    pub pre_flush: Option<PreFlush>,
    /// FIFREEZE to the end of FITHAW; None when nothing was mounted.
    pub frozen: Option<Duration>,
    /// The FIFREEZE call itself (it writes back dirty data).
    pub freeze_call: Option<Duration>,
    /// The origin's suspend to the end of its resume.
    pub suspended: Duration,
}

/// Switches `origin` (its new table loaded, inactive, when `reloaded`) with
/// its filesystem at `mounted_at` written back, then frozen, running
/// `between` while it is suspended. `armed` runs once the guard is up, just
/// before the freeze: a traced start attaches its switch tracer there (see
/// `session::trace::switch_tracer`). On failure the origin is running on
/// its old table and thawed before the error returns.
pub fn switch(
    dm: &Dm,
    origin: &str,
    mounted_at: Option<&Path>,
    reloaded: bool,
    steps: &Steps,
    armed: impl FnOnce() -> Result<()>,
    between: impl FnOnce() -> Result<()>,
) -> Result<Window> {
    // Outside the window: writers keep going while it runs, and nothing is
    // held, so the guard is not needed yet.
    let pre_flush = mounted_at.map(|at| writeback::pre_flush(at, || pending_stop_signal().is_some())).transpose()?;
    fault::at(steps.after_pre_flush)?;
    // The last point where a start can still be abandoned with nothing
    // held: a signal that came during the pre-flush (or just before it)
    // stops it here.
    if let Some(signal) = pending_stop_signal().filter(|_| steps.abandon_on_signal) {
        let during = if pre_flush.as_ref().is_some_and(|p| p.stopped == Stopped::Signal) {
            "during the pre-flush"
        } else {
            "before the freeze"
        };
        return Err(Error::new(
            Kind::Interrupted,
            format!("{signal} {during}: stopped before the snapshot went live; everything it made is undone"),
        ));
    }
    let plan = crate::switch::guard::Plan {
        resume: vec![origin.to_string()],
        thaw: mounted_at.map(Path::to_path_buf).into_iter().collect(),
        remount: None,
        deadline: crate::switch::guard::deadline()?,
    };
    // Dropped last: by then hcp has restored what it could itself.
    let guard = crate::switch::guard::Guard::spawn(&plan)?;
    armed()?;
    // Ctrl-C between freeze and thaw must not leave the filesystem frozen:
    // signals wait until the window is over.
    let signals = SignalBlock::new()?;
    let frozen = mounted_at.map(Frozen::freeze).transpose()?;
    fault::at(steps.after_freeze)?;
    // A frozen filesystem must not be frozen again by the suspend (it
    // would fail); an unmounted origin is suspended with its own lockfs.
    let how = if frozen.is_some() { Suspend::SkipLockfs } else { Suspend::Lockfs };
    let suspend_start = Instant::now();
    dm.suspend(origin, how)?;
    // Declared after `frozen`, so dropped (resumed) before it is thawed.
    let mut held = Held { dm, origin, reloaded, armed: true };
    fault::at(steps.after_suspend)?;
    between()?;
    fault::at(steps.before_resume)?;
    dm.resume(origin)?;
    held.armed = false;
    let suspended = suspend_start.elapsed();
    fault::at(steps.before_thaw)?;
    let freeze_call = frozen.as_ref().map(|f| f.freeze_call);
    let frozen = frozen.map(Frozen::thaw).transpose()?;
    drop(signals);
    guard.disarm()?;
    Ok(Window { pre_flush, frozen, freeze_call, suspended })
}

/// A suspended origin: unless disarmed, resumed with its old table (the
/// preloaded one dropped) when it goes out of scope, on an error or a panic.
struct Held<'a> {
    dm: &'a Dm,
    origin: &'a str,
    reloaded: bool,
    armed: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.reloaded {
            let _ = self.dm.clear_inactive(self.origin);
        }
        if let Err(e) = self.dm.resume(self.origin) {
            eprintln!("hcp: could not resume {}: {e}; resume it by hand: dmsetup resume {}", self.origin, self.origin);
        }
    }
}
