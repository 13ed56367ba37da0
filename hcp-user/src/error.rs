//! hcp's error type: what went wrong, in one line that names the thing and
//! the fix, and a kind that fixes the process exit status.

use std::fmt;

/// The class of an error; each has a documented, stable exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Something failed on the system (an ioctl, a mount, I/O): exit 1.
    System,
    /// Bad input: a malformed argument, a path that is not what it must be: exit 2.
    Usage,
    /// The named session or device does not exist: exit 3.
    NotFound,
    /// The device or store is in use, or another hcp holds the lock: exit 4.
    Busy,
    /// The request cannot work on this device as it is (a mounted plain
    /// partition, a store on the origin), or hcp's state is not safe to use
    /// (a record or directory of hcp's that is a symlink, another user's,
    /// writable by others or malformed): exit 5.
    Refused,
    /// Needs root: exit 6.
    Permission,
    /// The command did its work, but a session it reports on or removed is
    /// invalid: its store filled and dm-snapshot dropped the snapshot (the
    /// origin is unaffected): exit 7.
    Invalid,
    /// Stopped by a signal (Ctrl-C, SIGTERM) before it changed anything
    /// lasting: 130, as a shell reports a Ctrl-C. (The signal itself then
    /// ends the process, once hcp has undone its work and said so.)
    Interrupted,
}

impl Kind {
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::System => 1,
            Kind::Usage => 2,
            Kind::NotFound => 3,
            Kind::Busy => 4,
            Kind::Refused => 5,
            Kind::Permission => 6,
            Kind::Invalid => 7,
            Kind::Interrupted => 130,
        }
    }
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    pub fn system(message: impl Into<String>) -> Error {
        Error::new(Kind::System, message)
    }

    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, message)
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, message)
    }

    pub fn busy(message: impl Into<String>) -> Error {
        Error::new(Kind::Busy, message)
    }

    pub fn refused(message: impl Into<String>) -> Error {
        Error::new(Kind::Refused, message)
    }

    /// An OS error, with what was being done: "{what}: {err}". EPERM and
    /// EACCES become [`Kind::Permission`].
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Error {
        let kind = match err.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Kind::Permission,
            Some(libc::EBUSY) => Kind::Busy,
            _ => Kind::System,
        };
        Error::new(kind, format!("{what}: {err}"))
    }

    /// The same error with `context: ` in front.
    pub fn context(self, context: impl fmt::Display) -> Error {
        Error { kind: self.kind, message: format!("{context}: {}", self.message) }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// `text` on one line: control characters (a newline in a device name a
/// user typed) are shown escaped, so an error is always exactly one line.
pub fn one_line(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Adds context to any `Result<T, Error>`.
pub trait ResultExt<T> {
    fn context(self, context: impl fmt::Display) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_control_characters_only() {
        assert_eq!(one_line("no hcp session for hcp1\nrm -rf /"), "no hcp session for hcp1\\nrm -rf /");
        assert_eq!(one_line("tab\there\r\u{1b}[31m"), "tab\\there\\r\\u{1b}[31m");
        assert_eq!(one_line("/dev/mapper/vg0-data: näme ok"), "/dev/mapper/vg0-data: näme ok");
    }
}
