//! The rules for every file and directory of hcp's state. Records say which
//! devices to remove and which files to delete, so hcp trusts only what root
//! alone could have written: its directories (`/run/hcp`, `/run/hcp/sessions`,
//! and the default store and mount directories) must be real directories
//! owned by root that no one else can write, and a record must be a regular
//! file of root's, opened without following a symlink and checked on the
//! opened descriptor (never by a separate `stat` that a swap could outrun), of
//! sane size, well formed, of this format version, and named after what it
//! describes. Anything else is refused with its path and what to do, and never
//! followed.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// The owner of every directory and file hcp trusts.
pub(crate) const ROOT: u32 = 0;

/// The largest record hcp reads. Real ones are a few KiB; the cap keeps a
/// planted giant file from being read into memory.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Checks one of hcp's own directories (`/run/hcp`, the default store and
/// mount directories) without changing anything; returns whether it exists.
/// A symlink, a non-directory, one owned by another user or one that group
/// or others can write is refused, naming the path and the fix.
pub fn check_private_dir(path: &Path) -> Result<bool> {
    Ok(open_private_dir(path, ROOT, false)?.is_some())
}

/// Makes one of hcp's own directories ready: created 0700 if missing,
/// refused as [`check_private_dir`] says, tightened to 0700 if it is root's
/// and only readable by others.
pub fn ensure_private_dir(path: &Path) -> Result<()> {
    ensure_dir(path, ROOT)
}

pub(super) fn ensure_dir(path: &Path, owner: u32) -> Result<()> {
    let dir = open_private_dir(path, owner, true)?.expect("created");
    let mode = dir.metadata().map_err(|e| Error::io(path.display(), e))?.mode();
    if mode & 0o077 != 0 {
        // Tightening is safe here and refusing would only be a chore: the
        // directory is the owner's (root's), and no one else could write
        // into it (that is refused above), so nothing in it is a stranger's;
        // hcp itself made these 0755 before it made them 0700. A directory
        // others could write is never "fixed" by a chmod: they may have
        // planted something in it already.
        dir.set_permissions(fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("making {} private (chmod 0700)", path.display()), e))?;
    }
    Ok(())
}

/// Opens directory `path` (creating it 0700 first when `create` and it is
/// missing) and checks it on the opened descriptor; `None` when it does not
/// exist and was not to be made.
pub(super) fn open_private_dir(path: &Path, owner: u32, create: bool) -> Result<Option<File>> {
    let shown = path.display();
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
            return Err(Error::refused(format!(
                "{shown} is a symlink (to {target}): hcp keeps its state and files only in a real directory of \
                 root's; remove the link (rm {shown}) and run hcp again"
            )));
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(Error::refused(format!(
                "{shown} is not a directory: hcp keeps its state and files there; move it away and run hcp again"
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Ok(None);
            }
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            }
            match fs::DirBuilder::new().mode(0o700).create(path) {
                Ok(()) => {}
                // Another hcp made it just now: checked below like any other.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("creating {shown}"), e)),
            }
            return open_private_dir(path, owner, false);
        }
        Err(e) => return Err(Error::io(shown, e)),
    }
    // O_NOFOLLOW: a symlink swapped in since the look above fails here.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(format!("opening {shown}"), e))?;
    let meta = dir.metadata().map_err(|e| Error::io(&shown, e))?;
    if meta.uid() != owner {
        return Err(Error::refused(format!(
            "{shown} is owned by uid {}, not {}: hcp will not use a directory another user controls; inspect it, \
             remove it and run hcp again",
            meta.uid(),
            owner_name(owner)
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::refused(format!(
            "{shown} is writable by group or others (mode {:04o}): anyone could plant files in it; inspect it, then \
             `chmod 0700 {shown}` (or remove it) and run hcp again",
            meta.mode() & 0o7777
        )));
    }
    Ok(Some(dir))
}

pub(super) fn owner_name(uid: u32) -> String {
    if uid == ROOT {
        "root".to_string()
    } else {
        format!("uid {uid}")
    }
}

/// Refuses a file of hcp's state (`what`: "session record"), naming it, the
/// problem and the fix.
pub(crate) fn hostile(what: &str, path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::refused(format!(
        "{what} {} {problem}: hcp does not use it; inspect it and delete it, then run hcp again",
        path.display()
    ))
}

/// The bytes of one file of hcp's state, trusted only if `owner` alone
/// could have written it (see the module's header); `None` if it does not
/// exist (or went away since its directory was read: a concurrent remove).
/// `what` names it in errors.
pub(crate) fn read_private_file(path: &Path, owner: u32, what: &str) -> Result<Option<Vec<u8>>> {
    read_private_file_up_to(path, owner, what, MAX_RECORD_BYTES)
}

/// [`read_private_file`], for a file that may be larger than a record (up
/// to `max_bytes`).
pub(crate) fn read_private_file_up_to(path: &Path, owner: u32, what: &str, max_bytes: u64) -> Result<Option<Vec<u8>>> {
    let hostile = |problem: String| hostile(what, path, problem);
    // O_NOFOLLOW: a symlink fails with ELOOP instead of being followed.
    // O_NONBLOCK: opening a planted FIFO must not wait for a writer.
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(hostile("is a symlink".into())),
        // A socket.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Err(hostile("is not a regular file".into())),
        Err(e) => return Err(Error::io(format!("opening {what} {}", path.display()), e)),
    };
    // Checked on the descriptor just opened, so what is read is what was
    // checked.
    let meta = file.metadata().map_err(|e| Error::io(path.display(), e))?;
    if !meta.is_file() {
        return Err(hostile("is not a regular file".into()));
    }
    if meta.uid() != owner {
        return Err(hostile(format!("is owned by uid {}, not {}", meta.uid(), owner_name(owner))));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(hostile(format!("is writable by group or others (mode {:04o})", meta.mode() & 0o7777)));
    }
    let too_big = || hostile(format!("is larger than {} KiB, far more than any record", max_bytes >> 10));
    if meta.len() > max_bytes {
        return Err(too_big());
    }
    let mut text = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))?;
    if text.len() as u64 > max_bytes {
        return Err(too_big());
    }
    Ok(Some(text))
}

/// A record of format `version` from JSON `text`; anything else is refused
/// through `hostile`.
pub(crate) fn parse_record<T: serde::de::DeserializeOwned>(
    text: &[u8],
    version: u32,
    hostile: impl Fn(String) -> Error,
) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| hostile(format!("is not valid JSON ({e})")))?;
    let found = value.get("version").and_then(serde_json::Value::as_u64);
    if found != Some(u64::from(version)) {
        let found = found.map_or_else(|| "none".to_string(), |v| v.to_string());
        return Err(hostile(format!("has format version {found}, and this hcp reads {version}")));
    }
    serde_json::from_value(value).map_err(|e| hostile(format!("is not such a record ({e})")))
}

/// Writes `dir/name` (0600, in a private directory made if missing) so that
/// a reader, or a crash, sees the old or the new file, never a torn one.
pub(crate) fn write_private_file(dir: &Path, owner: u32, name: &str, text: &[u8], what: &str) -> Result<()> {
    ensure_dir(dir, owner)?;
    let path = dir.join(name);
    replace_file(&dir.join(format!(".{name}.tmp")), &path, text, 0o600)
        .map_err(|e| Error::io(format!("writing {what} {}", path.display()), e))
}

/// Replaces `path` with `bytes` (mode `mode`, whatever the umask) through
/// `tmp`, a name beside it, so that a reader, or a crash, sees the old or
/// the new file, never a torn one. A failed write takes `tmp` away.
pub(crate) fn replace_file(tmp: &Path, path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let write = || -> std::io::Result<()> {
        // A leftover of a crashed write goes first: the new one is made
        // with O_EXCL, which never follows a symlink either.
        match fs::remove_file(tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(tmp);
    })
}

/// Helpers for the tests of every file rule (records, the lock).
#[cfg(test)]
pub(crate) mod test_support {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use crate::error::{Kind, Result};

    /// A fresh directory of the test's own (no tempfile crate here).
    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hcp-state-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    pub(crate) fn me() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    pub(crate) fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    pub(crate) fn chown(path: &Path, uid: u32) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, uid) }, 0, "chown {}", path.display());
    }

    /// A refusal: exit 5, one line naming `path`, the problem and a fix.
    #[track_caller]
    pub(crate) fn assert_refused<T>(result: Result<T>, path: &Path, problem: &str, fix: &str) {
        let Err(err) = result else { panic!("{} was accepted", path.display()) };
        assert_eq!(err.kind, Kind::Refused, "{err}");
        let text = err.message();
        assert!(text.contains(&path.display().to_string()), "names {}: {text}", path.display());
        assert!(text.contains(problem), "says {problem:?}: {text}");
        assert!(text.contains(fix), "says {fix:?}: {text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::test_support::{assert_refused, me, mode, temp_dir};
    use super::*;

    #[test]
    fn private_dirs_are_made_0700_and_tightened_but_never_taken_over() {
        let base = temp_dir("dirs");
        let dir = base.join("new");
        assert!(open_private_dir(&dir, me(), false).unwrap().is_none(), "a missing directory is not made by a check");
        ensure_dir(&dir, me()).unwrap();
        assert_eq!(mode(&dir), 0o700);

        // Ours and only readable by others (an older hcp's 0755): a check
        // changes nothing, a use tightens it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(open_private_dir(&dir, me(), false).unwrap().is_some());
        assert_eq!(mode(&dir), 0o755);
        ensure_dir(&dir, me()).unwrap();
        assert_eq!(mode(&dir), 0o700);

        for writable in [0o777, 0o770, 0o1777] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(writable)).unwrap();
            assert_refused(ensure_dir(&dir, me()), &dir, "writable by group or others", "chmod 0700");
            assert_eq!(mode(&dir), writable, "left as it was");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();

        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_refused(ensure_dir(&link, me()), &link, "is a symlink", "remove the link");
        assert_refused(open_private_dir(&link, me(), false), &link, "is a symlink", "remove the link");
        let dangling = base.join("dangling");
        std::os::unix::fs::symlink(base.join("nowhere"), &dangling).unwrap();
        assert_refused(ensure_dir(&dangling, me()), &dangling, "is a symlink", "remove the link");
        assert!(!base.join("nowhere").exists(), "a dangling link's target is never made");

        let file = base.join("file");
        fs::write(&file, b"x").unwrap();
        assert_refused(ensure_dir(&file, me()), &file, "is not a directory", "move it away");

        // Another user's: refused whatever its mode.
        assert_refused(ensure_dir(&dir, me() + 1), &dir, "is owned by uid", "remove it");
        assert_eq!(mode(&dir), 0o700);
        fs::remove_dir_all(&base).unwrap();
    }
}
