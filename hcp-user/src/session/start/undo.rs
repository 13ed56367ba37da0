//! Undoing a start that fails before its snapshot is live: the undo list,
//! and the steps where a pending signal or an injected fault stops it.

use crate::error::{Error, Result};
use crate::switch::fault;

/// Undo steps, run in reverse order unless disarmed: on an error return and
/// on a panic alike.
#[derive(Default)]
pub(super) struct Undo<'a> {
    steps: Vec<(String, UndoStep<'a>)>,
}

type UndoStep<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

impl<'a> Undo<'a> {
    pub(super) fn push(&mut self, what: String, step: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((what, Box::new(step)));
    }

    pub(super) fn disarm(&mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some((what, step)) = self.steps.pop() {
            if let Err(e) = step() {
                eprintln!("hcp: while undoing a failed start, could not {what}: {e}");
            }
        }
    }
}

/// A step of the preparation: where a pending Ctrl-C or SIGTERM (held back
/// since the command began, see `main`) stops the start, everything made
/// so far undone, and where a fault can be injected.
pub(super) fn step(name: &'static str) -> Result<()> {
    if let Some(signal) = crate::kernel::signals::pending_stop_signal() {
        return Err(Error::new(
            crate::error::Kind::Interrupted,
            format!("{signal}: stopped before the snapshot went live; everything it made is undone"),
        ));
    }
    fault::at(name)
}
