//! Termination signals held back while hcp holds a filesystem or a device:
//! Ctrl-C, `kill` or a shutdown between a freeze and its thaw takes effect
//! only once the thaw is done, and a long command checks between its steps
//! whether one is pending, to undo what it did.

use std::fmt;
use std::io;
use std::marker::PhantomData;

use crate::error::{Error, Result};

/// The signals a [`SignalBlock`] holds back: the ones whose default action
/// ends or stops the process and that a user or an init system sends
/// (Ctrl-C, Ctrl-\, Ctrl-Z, hang-up, `kill`, shutdown). Stopping the process
/// with SIGTSTP while a filesystem is frozen would leave it frozen until the
/// process is continued.
pub const BLOCKED_SIGNALS: [libc::c_int; 5] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGTSTP];

/// Blocks [`BLOCKED_SIGNALS`] for the calling thread until dropped, then
/// restores the thread's previous signal mask; signals that arrived
/// meanwhile stay pending and are delivered then.
///
/// A signal mask is per thread: a signal sent to the process goes to any
/// thread that does not block it, and its default action ends the whole
/// process. A multi-threaded program should therefore block these signals
/// before it starts its other threads (they inherit the mask), or handle
/// them. The guard must be dropped on the thread that made it, so it is
/// neither `Send` nor `Sync`. SIGKILL and SIGSTOP cannot be blocked.
pub struct SignalBlock {
    previous: libc::sigset_t,
    _same_thread: PhantomData<*const ()>,
}

impl SignalBlock {
    pub fn new() -> Result<SignalBlock> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t and every signal number is valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for sig in BLOCKED_SIGNALS {
                libc::sigaddset(&mut set, sig);
            }
        }
        // SAFETY: valid sigset_t pointers; pthread_sigmask returns an error
        // number rather than setting errno.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous) };
        if rc != 0 {
            return Err(Error::io("blocking termination signals (pthread_sigmask)", io::Error::from_raw_os_error(rc)));
        }
        Ok(SignalBlock { previous, _same_thread: PhantomData })
    }
}

impl Drop for SignalBlock {
    fn drop(&mut self) {
        // SAFETY: `previous` was filled in by pthread_sigmask in new().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut()) };
    }
}

impl fmt::Debug for SignalBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignalBlock")
    }
}

/// Clears the calling thread's signal mask: for hcp's helper processes,
/// which inherit the mask of the command that started them.
pub fn unblock_all_signals() {
    // SAFETY: an empty, initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The signals that ask hcp to stop (not SIGTSTP, which only pauses it).
const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// A signal asking hcp to stop that is pending, held back by a
/// [`SignalBlock`]: a long command checks between its steps, undoes what it
/// did, and the signal ends the process once the block is dropped.
pub fn pending_stop_signal() -> Option<&'static str> {
    // SAFETY: sigset_t is plain data, filled in by sigpending.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid sigset_t pointer.
    if unsafe { libc::sigpending(&mut set) } != 0 {
        return None;
    }
    // SAFETY: `set` was filled in above; the signal numbers are valid.
    let pending = STOP_SIGNALS.into_iter().find(|sig| unsafe { libc::sigismember(&set, *sig) } == 1)?;
    Some(match pending {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "SIGQUIT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked_now() -> libc::sigset_t {
        // SAFETY: plain data, filled in by pthread_sigmask.
        let mut cur: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a null set only queries the mask.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) };
        assert_eq!(rc, 0);
        cur
    }

    fn is_member(set: &libc::sigset_t, sig: libc::c_int) -> bool {
        // SAFETY: a valid set and signal number.
        unsafe { libc::sigismember(set, sig) == 1 }
    }

    #[test]
    fn signal_block_holds_signals_and_restores_the_mask() {
        // Runs on its own test thread, so the mask change stays here.
        let before = blocked_now();
        {
            let _block = SignalBlock::new().unwrap();
            let now = blocked_now();
            for sig in BLOCKED_SIGNALS {
                assert!(is_member(&now, sig), "signal {sig} not blocked");
            }
            // A signal sent to this thread now stays pending instead of
            // ending the test process; take it back with sigtimedwait.
            // SAFETY: signalling our own thread with a valid signal.
            assert_eq!(unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) }, 0);
            // SAFETY: plain data, filled in by sigpending.
            let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointer.
            assert_eq!(unsafe { libc::sigpending(&mut pending) }, 0);
            assert!(is_member(&pending, libc::SIGHUP), "SIGHUP should be pending while blocked");
            // SAFETY: plain data, initialised below.
            let mut hup: libc::sigset_t = unsafe { std::mem::zeroed() };
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: valid set, signal and pointers.
            let got = unsafe {
                libc::sigemptyset(&mut hup);
                libc::sigaddset(&mut hup, libc::SIGHUP);
                libc::sigtimedwait(&hup, std::ptr::null_mut(), &zero)
            };
            assert_eq!(got, libc::SIGHUP);
        }
        let after = blocked_now();
        for sig in BLOCKED_SIGNALS {
            assert_eq!(is_member(&after, sig), is_member(&before, sig), "signal {sig}: mask not restored");
        }
    }
}
