//! Fault injection, a testing aid: `HCP_FAULT=STEP:ACTION` makes hcp fail on
//! purpose at one step of `start`, `remove`, `rollback`, `enroll` or `unenroll`, to
//! prove that no failure anywhere leaves a filesystem frozen, a device
//! suspended, a filesystem unmounted or the origin's data changed.
//!
//! Steps of `start`, in order: `after-snapshot-create` (the record, the
//! store and `-real` made; the snapshot device exists, inactive),
//! `after-origin-reload` (the origin's new table is loaded, inactive),
//! `after-prepare` (everything made and tracing attached; nothing switched),
//! `after-pre-flush` (the filesystem written back, not yet frozen),
//! `after-freeze`, `after-suspend`, `before-resume` (the snapshot is active,
//! the origin still suspended), `before-thaw` (the origin switched, the
//! filesystem still frozen).
//!
//! Steps of `remove`, in order: `remove-after-unmount`,
//! `remove-after-record` (marked as being removed), `remove-after-snapshot-remove`,
//! `remove-after-origin-reload` (the origin's own table loaded, inactive),
//! `remove-after-pre-flush`, `remove-after-freeze`, `remove-after-suspend`, `remove-before-thaw`,
//! `remove-after-store-detach`. The origin steps come only with an
//! origin's last session.
//!
//! Steps of `rollback`, in order: `rollback-after-record` (marked as
//! rolling back, nothing else changed), `rollback-after-unmount` (the
//! snapshot unmounted, with `--now` the origin too),
//! `rollback-after-snapshot-remove` (the snapshot device gone, the merge
//! table loaded, inactive), `rollback-after-suspend`, `rollback-after-resume`
//! (the merge runs; with `--now` the origin not yet mounted again),
//! `rollback-before-finish` (the merge done, the origin not yet given its
//! table back); the end of a rollback then passes `remove`'s origin and
//! store steps.
//!
//! Step of `apply`: `apply-after-frame` (a frame of the delta written and
//! synced, the next not begun).
//!
//! Steps of `enroll --now`: `enroll-after-unmount` (the filesystem is
//! unmounted, nothing made), `enroll-after-create` (the mapping exists, not
//! yet mounted); of `unenroll --now`: `unenroll-after-unmount`,
//! `unenroll-after-remove` (the mapping is gone, the raw device not yet
//! mounted).
//!
//! Actions: `error` (fail as a system call would), `panic`, `kill`
//! (SIGKILL to hcp itself: nothing of hcp runs after it) and `hang` (sleep
//! until killed, as a stuck kernel call would). The variable is checked
//! when hcp starts: a step or action it does not know is an error, so a
//! typo never passes for a test of nothing.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Every step a fault can be injected at: `start`'s, then `remove`'s.
pub const STEPS: [&str; 28] = [
    "after-snapshot-create",
    "after-origin-reload",
    "after-prepare",
    "after-pre-flush",
    "after-freeze",
    "after-suspend",
    "before-resume",
    "before-thaw",
    "remove-after-unmount",
    "remove-after-record",
    "remove-after-snapshot-remove",
    "remove-after-origin-reload",
    "remove-after-pre-flush",
    "remove-after-freeze",
    "remove-after-suspend",
    "remove-before-thaw",
    "remove-after-store-detach",
    "enroll-after-unmount",
    "enroll-after-create",
    "unenroll-after-unmount",
    "unenroll-after-remove",
    "rollback-after-record",
    "rollback-after-unmount",
    "rollback-after-snapshot-remove",
    "rollback-after-suspend",
    "rollback-after-resume",
    "rollback-before-finish",
    "apply-after-frame",
];

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Error,
    Panic,
    Kill,
    Hang,
}

/// The environment variable.
pub const VAR: &str = "HCP_FAULT";

/// `STEP:ACTION`, checked.
pub fn parse(spec: &str) -> Result<(&'static str, Action)> {
    let bad = |why: String| Error::usage(format!("{VAR}={spec}: {why}"));
    let (step, action) =
        spec.split_once(':').ok_or_else(|| bad("give STEP:ACTION, such as after-suspend:kill".to_string()))?;
    let step = STEPS
        .iter()
        .find(|s| **s == step)
        .ok_or_else(|| bad(format!("unknown step {step:?}; the steps are {}", STEPS.join(", "))))?;
    let action = match action {
        "error" => Action::Error,
        "panic" => Action::Panic,
        "kill" => Action::Kill,
        "hang" => Action::Hang,
        other => return Err(bad(format!("unknown action {other:?}; the actions are error, panic, kill, hang"))),
    };
    Ok((step, action))
}

/// The fault `HCP_FAULT` asks for, if any; checked once.
pub fn configured() -> Result<Option<(&'static str, Action)>> {
    static CONFIGURED: OnceLock<std::result::Result<Option<(&'static str, Action)>, String>> = OnceLock::new();
    let parsed = CONFIGURED.get_or_init(|| match std::env::var(VAR) {
        Ok(spec) if !spec.is_empty() => parse(&spec).map(Some).map_err(|e| e.message().to_string()),
        _ => Ok(None),
    });
    parsed.clone().map_err(Error::usage)
}

/// Called at each step: fails there if `HCP_FAULT` names it.
pub fn at(step: &'static str) -> Result<()> {
    debug_assert!(STEPS.contains(&step), "undeclared fault step {step}");
    let Some((wanted, action)) = configured()? else { return Ok(()) };
    if wanted != step {
        return Ok(());
    }
    eprintln!("hcp: {VAR}: injecting {action:?} at {step}");
    match action {
        Action::Error => Err(Error::system(format!("injected fault at {step} ({VAR})"))),
        Action::Panic => panic!("injected panic at {step} ({VAR})"),
        Action::Kill => {
            // SAFETY: signalling our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL is not delivered late")
        }
        Action::Hang => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        assert_eq!(parse("after-suspend:kill").unwrap(), ("after-suspend", Action::Kill));
        assert_eq!(parse("before-thaw:hang").unwrap(), ("before-thaw", Action::Hang));
        for bad in ["after-suspend", "after-suspnd:kill", "after-suspend:explode", ":", ""] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind, crate::error::Kind::Usage, "{bad}");
            assert!(err.message().contains("HCP_FAULT"), "{err}");
        }
    }
}
