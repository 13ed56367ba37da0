//! `/etc/fstab` (fstab(5)): finding the line that mounts a device, and
//! changing its source, keeping every other line as it was.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const PATH: &str = "/etc/fstab";

/// The option that orders a filesystem's mount after `hcp activate` (and
/// makes it need it): systemd's fstab generator turns it into `Requires=`
/// and `After=`.
pub const REQUIRES_ACTIVATE: &str = "x-systemd.requires=hcp-activate.service";

/// What `enroll --edit-fstab` adds to the line's options (those it lacks).
/// With the mapping required, a disk missing at boot fails
/// `hcp-activate.service`, and so the mount at once; without `nofail`,
/// local-fs.target would fail with it and the machine would stop in
/// emergency mode. `nofail` alone would also drop the mount's ordering
/// before local-fs.target, so services started after it could find an
/// empty mount point while the disk is there; `x-systemd.before=` keeps
/// that order. A missing disk then costs the boot `hcp activate`'s wait,
/// leaves the filesystem unmounted and the unit failed (`systemctl
/// --failed`), and the rest of the machine boots.
pub const BOOT_OPTIONS: &[&str] = &[REQUIRES_ACTIVATE, "nofail", "x-systemd.before=local-fs.target"];

/// One mount line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 1-based.
    pub line: usize,
    pub source: String,
    pub mount_point: String,
    pub fields: Vec<String>,
}

impl Entry {
    pub fn text(&self) -> String {
        self.fields.join(" ")
    }

    /// The options of `options` this line lacks.
    pub fn missing_options<'a>(&self, options: &[&'a str]) -> Vec<&'a str> {
        let present: Vec<&str> = self.fields.get(3).map_or(vec![], |o| o.split(',').collect());
        options.iter().copied().filter(|o| !present.contains(o)).collect()
    }

    /// This line with `source` and with `options` added to (or, when
    /// `add` is false, taken from) its options.
    pub fn changed(&self, source: &str, options: &[&str], add: bool) -> String {
        let mut fields = self.fields.clone();
        fields[0] = source.to_string();
        // (fstab(5) lets the type and options go unsaid.)
        if fields.len() < 3 {
            fields.push("auto".to_string());
        }
        if fields.len() < 4 {
            fields.push("defaults".to_string());
        }
        let mut kept: Vec<&str> = fields[3].split(',').filter(|o| !options.contains(o) && !o.is_empty()).collect();
        if add {
            kept.extend(options);
        }
        if kept.is_empty() {
            kept.push("defaults");
        }
        fields[3] = kept.join(",");
        fields.join("\t")
    }
}

/// The mount lines of fstab text (comments and blank lines skipped).
pub fn entries(text: &str) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
            if fields.len() < 2 || fields[0].starts_with('#') {
                return None;
            }
            Some(Entry { line: i + 1, source: unescape(&fields[0]), mount_point: unescape(&fields[1]), fields })
        })
        .collect()
}

/// fstab's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    crate::kernel::mountinfo::unescape_option(field)
}

/// `text` with line `line` (1-based) replaced by `new_line`.
pub fn replace_line(text: &str, line: usize, new_line: &str) -> String {
    let mut out: Vec<&str> = text.lines().collect();
    out[line - 1] = new_line;
    let mut joined = out.join("\n");
    if text.ends_with('\n') {
        joined.push('\n');
    }
    joined
}

pub fn read() -> Result<String> {
    match std::fs::read_to_string(PATH) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(format!("reading {PATH}"), e)),
    }
}

/// Replaces fstab with `text`, after copying the current one to
/// `/etc/fstab.hcp-<unix time>` (returned). The new file is written beside
/// it and renamed over it, so fstab is never seen half-written.
pub fn write_with_backup(text: &str, now_unix: u64) -> Result<PathBuf> {
    let path = Path::new(PATH);
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    let old = std::fs::read(path).map_err(|e| Error::io(format!("reading {PATH}"), e))?;
    // A new name, never an older backup overwritten (two edits may come
    // within a second).
    let mut n = 0;
    let backup = loop {
        let name = if n == 0 { format!("{PATH}.hcp-{now_unix}") } else { format!("{PATH}.hcp-{now_unix}.{n}") };
        let made = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&name);
        match made {
            Ok(mut f) => {
                f.write_all(&old)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io(format!("backing {PATH} up to {name}"), e))?;
                break PathBuf::from(name);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(Error::io(format!("backing {PATH} up to {name}"), e)),
        }
    };
    let tmp = PathBuf::from(format!("{PATH}.hcp-new"));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open("/etc")?.sync_all()
    };
    write().map_err(|e| Error::io(format!("writing {PATH} (the backup {} is intact)", backup.display()), e))?;
    Ok(backup)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSTAB: &str = "# /etc/fstab\n\
        UUID=1b2c /               ext4 errors=remount-ro 0 1\n\
        \n\
        /dev/sdc1 /srv/my\\040data xfs  defaults,noatime  0 2\n\
        tmpfs /tmp tmpfs nosuid 0 0\n";

    #[test]
    fn entries_skip_comments_and_unescape() {
        let all = entries(FSTAB);
        assert_eq!(all.len(), 3);
        assert_eq!(
            (all[1].line, all[1].source.as_str(), all[1].mount_point.as_str()),
            (4, "/dev/sdc1", "/srv/my data")
        );
    }

    #[test]
    fn a_line_changes_source_and_option_and_nothing_else() {
        let entry = &entries(FSTAB)[1];
        assert_eq!(entry.missing_options(BOOT_OPTIONS), BOOT_OPTIONS);
        let new = entry.changed("/dev/mapper/hcp-sdc1", BOOT_OPTIONS, true);
        assert_eq!(
            new,
            format!(
                "/dev/mapper/hcp-sdc1\t/srv/my\\040data\txfs\tdefaults,noatime,{REQUIRES_ACTIVATE},nofail,\
                 x-systemd.before=local-fs.target\t0\t2"
            )
        );
        let text = replace_line(FSTAB, entry.line, &new);
        assert_eq!(text.lines().count(), FSTAB.lines().count());
        assert!(text.ends_with('\n'));
        assert_eq!(entries(&text)[0], entries(FSTAB)[0]);
        assert!(entries(&text)[1].missing_options(BOOT_OPTIONS).is_empty());
        let back = entries(&text)[1].changed("/dev/sdc1", BOOT_OPTIONS, false);
        assert_eq!(back, "/dev/sdc1\t/srv/my\\040data\txfs\tdefaults,noatime\t0\t2");
        let bare =
            Entry { line: 1, source: "a".into(), mount_point: "/b".into(), fields: vec!["a".into(), "/b".into()] };
        assert_eq!(bare.changed("c", &[REQUIRES_ACTIVATE], false), "c\t/b\tauto\tdefaults");
    }

    #[test]
    fn options_the_line_has_are_neither_added_twice_nor_counted_as_added() {
        let line = "/dev/sdd1 /srv/d ext4 nofail 0 2\n";
        let entry = &entries(line)[0];
        assert_eq!(entry.missing_options(BOOT_OPTIONS), [REQUIRES_ACTIVATE, "x-systemd.before=local-fs.target"]);
        let new = entry.changed("/dev/mapper/hcp-sdd1", BOOT_OPTIONS, true);
        assert_eq!(new.matches("nofail").count(), 1, "{new}");
    }
}
