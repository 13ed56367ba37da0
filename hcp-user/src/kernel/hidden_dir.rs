//! Running code that must not see a directory: on a thread of its own,
//! in a private mount namespace where the directory is an empty tmpfs.
//!
//! For a library that reads a fixed path whether or not its caller wants
//! what it reads (aya's loader and the kernel's BTF: see
//! `tracer::object`). Only the thread's own view changes: the namespace is
//! unshared by that thread alone, made private before anything is mounted
//! in it (so that nothing propagates back to the machine's), and goes away
//! with the thread.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Runs `f` on a new thread that sees `dir` empty, and returns what it
/// returns. `Err` (with `f` not run) when the thread could not be given
/// that view: no privilege to unshare or mount (hcp runs as root; a
/// container's seccomp profile may still refuse), or `dir` missing.
pub fn without_dir<T: Send>(dir: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope.spawn(|| hide(dir).map(|()| f())).join().expect("the hidden-directory thread panicked")
    })
}

/// Gives the calling thread a private mount namespace with an empty
/// read-only tmpfs over `dir`.
fn hide(dir: &Path) -> std::io::Result<()> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: plain system calls on this thread, with NUL-terminated
    // strings that outlive them and no data argument.
    unsafe {
        // CLONE_NEWNS implies CLONE_FS: this thread's root and working
        // directory are copied, the other threads' untouched.
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // A namespace made by unshare shares its mounts' propagation with
        // the one it was copied from: made private first, or the tmpfs
        // below would appear over `dir` for the whole machine.
        check(libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(c"hcp-hidden".as_ptr(), path.as_ptr(), c"tmpfs".as_ptr(), libc::MS_RDONLY, std::ptr::null()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_empty_on_the_thread_only() {
        if crate::privilege::require_root().is_err() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("hcp-hidden-dir-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kept"), b"x").unwrap();
        let seen = without_dir(&dir, || std::fs::read_dir(&dir).unwrap().count()).unwrap();
        let kept = dir.join("kept").exists();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(seen, 0, "the thread sees the directory empty");
        assert!(kept, "the caller still sees its files");
        assert!(!mounts.contains("hcp-hidden"), "nothing is mounted in the caller's namespace: {mounts}");
    }

    #[test]
    fn a_missing_directory_is_an_error_and_f_does_not_run() {
        let ran = std::sync::atomic::AtomicBool::new(false);
        let got =
            without_dir(Path::new("/nonexistent/hcp-test"), || ran.store(true, std::sync::atomic::Ordering::SeqCst));
        assert!(got.is_err());
        assert!(!ran.into_inner());
    }
}
