//! What hcp says about itself beyond each option's line: examples, exit
//! statuses, files and environment. `--help` shows them (see
//! [`after_help`]), the manual pages carry them, and both, like the shell
//! completions, come from cli.rs's clap definitions, so no page can
//! describe an option hcp does not take.
//!
//! `cargo xtask dist` writes the pages with the hidden `hcp __manual DIR`;
//! `hcp completions SHELL` prints a completion script.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;
use hcp::error::Kind;

use crate::cli::Cli;

/// Each a task and the command lines that do it.
const EXAMPLES: &[(&str, &[&str])] = &[
    (
        "Start a session",
        &["hcp /dev/vg0/data          (or: hcp start /dev/vg0/data)", "hcp -m /mnt/snap -o -c /dev/sdc /dev/vg0/data"],
    ),
    ("List sessions", &["hcp -l                     (or: hcp list --json)"]),
    ("Show a device's", &["hcp -s /dev/vg0/data"]),
    ("Remove a session", &["hcp -r /dev/hcp1           (or an origin: all of its sessions)"]),
    ("Measure its cost", &["hcp start --trace /dev/vg0/data", "hcp stats /dev/hcp1; hcp report /dev/hcp1"]),
    ("Roll back to one", &["hcp rollback /dev/hcp1     (--now if the origin is mounted)"]),
    ("Back it up", &["hcp export /dev/hcp1 --to - | zstd > data.img.zst"]),
    ("Then incrementally", &["hcp export /dev/hcp2 --changed-since hcp1 --to d.delta", "hcp apply d.delta data.img"]),
    ("Clean up leftovers", &["hcp recover"]),
    ("A mounted partition", &["hcp enroll --now /dev/sdc1   (once; then: hcp start /dev/sdc1)"]),
];

/// The exit statuses, by the error kind that gives each (error.rs owns the
/// numbers).
const EXIT_STATUSES: &[(Option<Kind>, &str)] = &[
    (None, "success"),
    (Some(Kind::System), "a system call failed (or a started session could not be mounted: it is kept)"),
    (Some(Kind::Usage), "bad input: a malformed option, a path that is not what it must be"),
    (Some(Kind::NotFound), "no such session or device"),
    (Some(Kind::Busy), "busy: the device or store is in use, or another hcp is changing sessions"),
    (
        Some(Kind::Refused),
        "refused: cannot work on this device as it is (a mounted plain partition, a store on the origin, a kernel \
         without device-mapper), or hcp's own state is unsafe (a record or directory that is a symlink, another \
         user's, writable by others or malformed)",
    ),
    (Some(Kind::Permission), "permission: hcp must run as root"),
    (
        Some(Kind::Invalid),
        "invalid: a session listed (-l), shown (stats) or removed had its snapshot invalidated because its store \
         filled (the origin is unaffected): the command itself did its work; or a rollback to such a session \
         (refused)",
    ),
];

/// After the statuses: how signals end hcp.
const SIGNALS: &str = "A start stopped by Ctrl-C or SIGTERM undoes its work, then ends by that signal (a shell \
                       shows 130 or 143). A rollback stopped so while it waits leaves the merge running in the \
                       kernel (`hcp rollback` again waits).";

/// After an interruption.
const RECOVERY: &str = "After an hcp that did not finish (killed, crashed), `hcp recover` rolls back half-made \
                        sessions and finishes half-removed ones; `hcp -l` shows them as incomplete.";

/// What hcp keeps where.
const FILES: &[(&str, &str)] = &[
    ("/dev/hcpN", "a session's snapshot device (the original's names)"),
    ("/run/hcp/", "session records, the lock, the tracer's kernel layout; gone at boot, with the sessions"),
    ("/var/lib/hcp/", "file stores unless -c says otherwise; reports/ (final reports of traced sessions), history/"),
    (
        "/var/lib/hcp/rollbacks/",
        "a rollback in progress, kept across a reboot so that `hcp recover` can finish its merge",
    ),
    ("/var/hcp/", "default mount points of snapshots, /var/hcp/<device>_hcpN"),
    (
        "/etc/hcp/enrolled/",
        "enrolled partitions (`hcp enroll`), one record each; hcp-activate.service maps them at boot",
    ),
    ("/etc/fstab", "changed by enroll and unenroll --edit-fstab, the old one kept as /etc/fstab.hcp-<unix time>"),
    (
        "/sys/fs/bpf/hcp/",
        "the tracer's pinned programs and maps, shared by every traced session; loaded until `hcp trace unload` or a reboot",
    ),
];

/// The variables hcp reads.
const ENVIRONMENT: &[(&str, &str)] = &[
    ("HCP_LOCK_TIMEOUT", "seconds to wait for another hcp's lock (default 30; 0 fails at once)"),
    (
        "HCP_SWITCH_TIMEOUT",
        "seconds the switch (freeze, suspend, resume, thaw) may take before its guard undoes it (default 60)",
    ),
    ("HCP_FAULT", "STEP:ACTION, fault injection for hcp's own tests; never set it on a system you care about"),
];

/// `--help`'s text after the options.
pub fn after_help() -> String {
    let mut s = String::from("Examples:\n");
    for (what, commands) in EXAMPLES {
        for (i, command) in commands.iter().enumerate() {
            let label = if i == 0 { format!("{what}:") } else { String::new() };
            s += &format!("  {label:<20} {command}\n");
        }
    }
    s += "\nExit status:\n";
    for (code, text) in exit_statuses() {
        s += &format!("  {code:<3}{}\n", wrap(text, 74).join("\n     "));
    }
    s += &format!("  {}\n\n{}", wrap(SIGNALS, 76).join("\n  "), wrap(RECOVERY, 78).join("\n"));
    s
}

fn exit_statuses() -> impl Iterator<Item = (u8, &'static str)> {
    EXIT_STATUSES.iter().map(|&(kind, text)| (kind.map_or(0, Kind::exit_code), text))
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// `hcp completions SHELL`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut without_hidden(&Cli::command()), "hcp", out);
}

/// `cmd` without its hidden commands (hcp's helper processes), which
/// clap_complete would offer otherwise. Clap cannot drop a subcommand, so
/// the command is rebuilt from its parts (which takes clap's `string`
/// feature: names that are not `&'static`).
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(without_hidden));
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    out
}

/// Writes hcp(8) and one page per command (hcp-start(8), ...) into `dir`;
/// returns their paths.
pub fn write_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![write_page(dir, &cmd, true)?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(write_page(dir, sub, false)?);
        for subsub in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages.push(write_page(dir, subsub, false)?);
        }
    }
    Ok(pages)
}

/// One page: clap_mangen's sections from the definitions, then ours (the
/// help's after-text is not repeated as clap_mangen's "EXTRA": hcp(8) has
/// it as proper sections, and a command's page points there).
fn write_page(dir: &Path, cmd: &clap::Command, top: bool) -> io::Result<PathBuf> {
    let man = Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("hcp {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut w = BufWriter::new(File::create(&path)?);
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut w)?;
    }
    let mut roff = Roff::new();
    if top {
        top_sections(&mut roff);
    } else {
        section(&mut roff, "EXIT STATUS");
        roff.text([roman("0 on success; otherwise as in "), bold("hcp"), roman("(8), which lists every status.")]);
        section(&mut roff, "SEE ALSO");
        roff.text([bold("hcp"), roman("(8)")]);
    }
    roff.to_writer(&mut w)?;
    w.flush()?;
    Ok(path)
}

/// hcp(8)'s own sections.
fn top_sections(roff: &mut Roff) {
    section(roff, "EXAMPLES");
    for (what, commands) in EXAMPLES {
        roff.control("TP", []);
        roff.text([roman(*what)]);
        for (i, command) in commands.iter().enumerate() {
            if i > 0 {
                roff.control("br", []);
            }
            roff.text([bold(*command)]);
        }
    }
    section(roff, "EXIT STATUS");
    for (code, text) in exit_statuses() {
        tagged(roff, [bold(code.to_string())], text);
    }
    roff.control("PP", []).text([roman(SIGNALS)]);
    roff.control("PP", []).text([roman(RECOVERY)]);
    section(roff, "FILES");
    for (path, text) in FILES {
        tagged(roff, [italic(*path)], text);
    }
    section(roff, "ENVIRONMENT");
    for (name, text) in ENVIRONMENT {
        tagged(roff, [bold(*name)], text);
    }
    section(roff, "SEE ALSO");
    let pages = ["dmsetup(8)", "lvcreate(8)", "fsfreeze(8)", "systemd.mount(5)", "fstab(5)"];
    roff.text([roman(pages.join(", "))]);
    roff.control("PP", []).text([roman(
        "The kernel's device-mapper snapshot documentation: \
         Documentation/admin-guide/device-mapper/snapshot.rst",
    )]);
}

fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

/// A `.TP` paragraph: `tag`, then `text` indented.
fn tagged(roff: &mut Roff, tag: impl Into<Vec<Inline>>, text: &str) {
    roff.control("TP", []).text(tag).text([roman(text)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_exit_status_once() {
        let help = after_help();
        for code in [0, 1, 2, 3, 4, 5, 6, 7] {
            assert_eq!(help.matches(&format!("\n  {code:<3}")).count(), 1, "{code} in\n{help}");
        }
        assert!(help.lines().all(|l| l.len() <= 100), "{help}");
    }

    #[test]
    fn wrap_breaks_at_spaces_within_the_width() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("averylongword x", 4), ["averylongword", "x"]);
    }
}
