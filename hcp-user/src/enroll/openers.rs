//! Which processes hold a filesystem: what must be closed before it can be
//! unmounted, named so the operator can act (as `fuser -vm` would).
//!
//! A process holds a filesystem through an open file, its working or root
//! directory, its executable or a mapped file; each shows in `/proc/PID` as
//! a link or a `maps` line whose device number is the filesystem's.

use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::kernel::devnum::DevNum;

/// A process using the filesystem, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Opener {
    pub pid: u32,
    pub command: String,
    /// `open file /data/db.sqlite`, `working directory`, `mapped file ...`.
    pub uses: String,
}

/// Every process (but this one) holding files of filesystem `dev`.
/// Processes that exit while being read are skipped.
pub fn of(dev: DevNum) -> Vec<Opener> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut openers: Vec<Opener> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let uses = uses_of(pid, dev)?;
            let command = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end().to_string();
            Some(Opener { pid, command, uses })
        })
        .collect();
    openers.sort_by_key(|o| o.pid);
    openers
}

/// How `pid` holds `dev`, the first way found.
fn uses_of(pid: u32, dev: DevNum) -> Option<String> {
    let proc = Path::new("/proc").join(pid.to_string());
    let on_dev = |link: &Path| {
        fs::metadata(link).is_ok_and(|m| DevNum::from_user(std::os::unix::fs::MetadataExt::dev(&m)) == dev)
    };
    for (link, what) in [("cwd", "working directory"), ("root", "root directory"), ("exe", "executable")] {
        if on_dev(&proc.join(link)) {
            return Some(what.to_string());
        }
    }
    if let Ok(fds) = fs::read_dir(proc.join("fd")) {
        for fd in fds.flatten() {
            if on_dev(&fd.path()) {
                let target = fs::read_link(fd.path()).map(|t| t.display().to_string()).unwrap_or_default();
                return Some(format!("open file {target}"));
            }
        }
    }
    let maps = fs::read_to_string(proc.join("maps")).ok()?;
    maps.lines().find_map(|line| mapped_file(line, dev))
}

/// `7f.. r--p 00000000 fd:01 1234 /usr/lib/x.so`: the file, if `maps` line
/// `line` maps one of `dev`'s (the device is in hex there).
fn mapped_file(line: &str, dev: DevNum) -> Option<String> {
    let mut fields = line.split_whitespace();
    let device = fields.nth(3)?;
    let inode = fields.next()?;
    let (major, minor) = device.split_once(':')?;
    let here = DevNum { major: u32::from_str_radix(major, 16).ok()?, minor: u32::from_str_radix(minor, 16).ok()? };
    (here == dev && inode != "0").then(|| format!("mapped file {}", fields.collect::<Vec<_>>().join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_name_files_of_the_device_only() {
        let dev = DevNum { major: 253, minor: 17 };
        let line = "7f0c1a000000-7f0c1a021000 r--p 00000000 fd:11 131 /data/lib/libx.so.1";
        assert_eq!(mapped_file(line, dev).as_deref(), Some("mapped file /data/lib/libx.so.1"));
        assert_eq!(mapped_file("7f0c-7f0d rw-p 00000000 00:00 0 [heap]", dev), None);
        assert_eq!(mapped_file("7f0c-7f0d r--p 00000000 08:01 99 /usr/lib/a.so", dev), None);
    }

    #[test]
    fn this_process_is_found_by_its_working_directory() {
        // Run as a child: a process never lists itself.
        let cwd = std::env::current_dir().unwrap();
        let dev = DevNum::from_user(std::os::unix::fs::MetadataExt::dev(&fs::metadata(&cwd).unwrap()));
        let mut child = std::process::Command::new("sleep").arg("5").current_dir(&cwd).spawn().unwrap();
        let found = of(dev).into_iter().find(|o| o.pid == child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        let found = found.expect("the child holds its working directory's filesystem");
        assert_eq!(found.command, "sleep");
    }
}
