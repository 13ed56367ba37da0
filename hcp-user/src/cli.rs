//! Arguments, in both forms: the original hcp's flags (`hcp [-m DIR] [-o]
//! [-c STORE] [-q QUOTA] DEVICE`, `hcp -l`, `hcp -r TARGET`, `hcp -s DEVICE`,
//! `hcp -v`) and subcommands (`hcp start | list | remove | rollback | show | version`)
//! taking the same options. Both become one [`Action`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hcp::enroll::{EnrollOptions, UnenrollOptions};
use hcp::error::Error;
use hcp::session::autoextend::{Spec, StoreSize};
use hcp::session::{ExportOptions, RemoveOptions, RollbackOptions, StartOptions};
use hcp::size::{ChunkSize, Quota};

#[derive(Parser)]
#[command(
    name = "hcp",
    about = "Point-in-time copy-on-write snapshots of live block devices (device-mapper), with their cost measured by eBPF",
    disable_version_flag = true,
    long_about = "Point-in-time copy-on-write snapshots of live block devices, taken without stopping \
                  the service: the kernel's device-mapper snapshot targets do the copy-on-write, and hcp's \
                  eBPF programs measure what each snapshot costs the running system (COW latency, copy-out \
                  traffic, the freeze, write amplification).\n\n\
                  Sessions are started, listed, shown and removed with the original Linux Hot Copy's flags \
                  (hcp DEVICE, -l, -s, -r) or with the commands below. Each session's snapshot is a block \
                  device, /dev/hcpN, mounted read-write (or read-only with -o) at /var/hcp/<device>_hcpN \
                  unless -m says where; the blocks the origin changes are kept in a store, a file or a \
                  device of its own, within a quota.",
    args_conflicts_with_subcommands = true,
    after_help = crate::manual::after_help()
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// List active Hot Copy sessions.
    #[arg(short = 'l', long = "list")]
    list: bool,

    /// Remove the Hot Copy session(s) of TARGET: an hcp device, its mount point, or an origin.
    #[arg(short = 'r', long = "remove", value_name = "TARGET")]
    remove: Option<String>,

    /// Show the Hot Copy devices of DEVICE.
    #[arg(short = 's', long = "show-hcp-device", value_name = "DEVICE")]
    show: Option<String>,

    /// Show hcp's version.
    #[arg(short = 'v', long = "version")]
    version: bool,

    /// With -r: keep the store file.
    #[arg(long)]
    keep_store: bool,

    #[command(flatten)]
    start: StartArgs,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Start a session: snapshot DEVICE and mount the snapshot.
    Start(StartArgs),
    /// List active sessions.
    List,
    /// Remove the session(s) of TARGET: an hcp device, its mount point, or an origin.
    Remove {
        target: String,
        /// Keep the store file.
        #[arg(long)]
        keep_store: bool,
        /// Write a traced session's final report to FILE (JSON; its
        /// histograms go to FILE.hlog) instead of where its start said.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Put the origin back exactly as it was at SESSION's snapshot (the
    /// kernel's snapshot-merge), and end the session. The origin reads as
    /// the snapshot as soon as the merge starts; the merge then runs in the
    /// background, and cannot be undone.
    Rollback {
        /// The session: an hcp device (/dev/hcpN), its mount point, or an
        /// origin that has one session.
        session: String,
        /// If the origin is mounted: unmount it (refused while processes
        /// hold it), start the merge and mount it again at once, at the same
        /// place with the same options (a short interruption, reported).
        #[arg(long)]
        now: bool,
        /// Return once the merge runs (`hcp -l` shows it merging); `hcp
        /// rollback` with the same session, or `hcp recover`, waits for it
        /// and ends the session.
        #[arg(long)]
        no_wait: bool,
    },
    /// The origin's extents written since SESSION's snapshot, from its
    /// exception store: what an incremental backup must copy.
    Changes {
        /// The session (/dev/hcpN).
        session: String,
    },
    /// Write SESSION's snapshot as a raw image to FILE (blocks of zeros left
    /// as holes) or to standard output (`--to -`), with a progress bar on a
    /// terminal. A file is named FILE.partial until it is complete.
    Export {
        /// The session (/dev/hcpN).
        session: String,
        /// The image file (new), or `-` for standard output.
        #[arg(long, value_name = "FILE|-")]
        to: PathBuf,
        /// Write a delta instead: the chunks changed since OLDER's snapshot
        /// (an older session of the same origin, kept until this one
        /// exists), read from SESSION's, for `hcp apply`.
        #[arg(long, value_name = "OLDER")]
        changed_since: Option<String>,
    },
    /// Bring IMAGE, a full image of a delta's base (`hcp export --to`), to
    /// the delta's point in time, in place. Checks the whole image against
    /// the delta before it writes; safe to run again after an interruption.
    Apply {
        /// The delta (`hcp export --changed-since`).
        delta: PathBuf,
        /// The image to bring forward.
        image: PathBuf,
    },
    /// Show the hcp devices of DEVICE.
    Show { device: String },
    /// Write the report to look at: one HTML file (offline, no JavaScript)
    /// with the answers, the plots and the numbers behind them.
    Report {
        /// A traced session (/dev/hcpN), or a final report (FILE.json, with
        /// FILE.json.history.ndjson beside it).
        target: String,
        /// Where to write it [default: beside the final report, FILE.html].
        #[arg(short = 'o', long = "output", value_name = "FILE.html")]
        output: Option<PathBuf>,
    },
    /// What a traced session costs: COW overhead, copy-out, amplification.
    Stats {
        /// The session (/dev/hcpN); with --prometheus, every traced session
        /// when left out.
        session: Option<String>,
        /// Print one JSON line (NDJSON) per interval with the figures of
        /// that interval, until the session is removed.
        #[arg(long, conflicts_with_all = ["prometheus", "hdr_log", "history"])]
        follow: bool,
        /// Print the session's recorded history: its figures per interval
        /// since the snapshot (with --json: one JSON line per interval).
        #[arg(long, conflicts_with_all = ["prometheus", "hdr_log"])]
        history: bool,
        /// With --history: from this time on: RFC 3339 (2026-12-06T10:00:00Z),
        /// seconds since the epoch, or a duration back from now (10m).
        #[arg(long, value_name = "TIME", requires = "history")]
        since: Option<String>,
        /// With --history: up to this time (as --since).
        #[arg(long, value_name = "TIME", requires = "history")]
        until: Option<String>,
        /// Print the Prometheus text exposition format (for node_exporter's
        /// textfile collector).
        #[arg(long, conflicts_with = "hdr_log")]
        prometheus: bool,
        /// With --prometheus: write FILE (world-readable, replaced at once:
        /// a scraper never reads half of it) instead of standard output,
        /// e.g. /var/lib/prometheus/node-exporter/hcp.prom.
        #[arg(long, value_name = "FILE", requires = "prometheus")]
        output: Option<PathBuf>,
        /// Print the latency histograms as an HdrHistogram interval log
        /// (values in nanoseconds).
        #[arg(long)]
        hdr_log: bool,
        /// The store a session this long would need, at the rates measured
        /// (in the analysis): 8h, 30m.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with_all = ["follow", "history"])]
        window: Option<std::time::Duration>,
        /// With --follow: the interval.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
    /// Tracing of a running session.
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
    /// Clean up after an hcp that did not finish (killed, crashed, power
    /// cut): roll back half-made sessions, finish half-removed ones, remove
    /// hcp devices without a session. Complete sessions are left alone.
    Recover,
    /// Enroll a plain partition once, so that it can be snapshotted while
    /// mounted: a pass-through dm-linear mapping (hcp-<name>) through which
    /// its filesystem is mounted from then on.
    Enroll {
        /// The partition (or any plain device), by any name: /dev/sdc1, /dev/disk/by-*, MAJOR:MINOR.
        device: String,
        /// If it is mounted: unmount it, map it and mount it again through
        /// the mapping, at the same place with the same options (a short
        /// planned interruption, measured and reported).
        #[arg(long)]
        now: bool,
        /// Change the /etc/fstab line that mounts it to name the mapping,
        /// as boot needs: mounted after hcp-activate.service, and `nofail`
        /// so that a missing disk does not stop the boot (keeping a backup).
        #[arg(long)]
        edit_fstab: bool,
    },
    /// Undo `hcp enroll`: remove the mapping (refused while sessions exist).
    Unenroll {
        /// The enrolled device or its mapping.
        device: String,
        /// If it is mounted through the mapping: mount it from the device
        /// itself again, at the same place with the same options.
        #[arg(long)]
        now: bool,
        /// Change the /etc/fstab line back to name the device, without the
        /// options enroll added (keeping a backup).
        #[arg(long)]
        edit_fstab: bool,
    },
    /// Make the mapping of every enrolled device that lacks one (at boot,
    /// before filesystems are mounted: hcp-activate.service). Running it
    /// again changes nothing.
    Activate {
        /// Wait this long for an enrolled device that is not there yet.
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Show hcp's version.
    Version,
    /// Print a completion script for SHELL: bash, zsh, fish, elvish or
    /// powershell (the package installs bash's, zsh's and fish's).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The manual pages, written into DIR (`cargo xtask dist`); not for users.
    #[command(name = "__manual", hide = true)]
    Manual { dir: PathBuf },
    /// The auto-extend monitor of a session (see the `autoextend` module);
    /// not for users.
    #[command(name = "__autoextend", hide = true)]
    Autoextend { session: String },
    /// The history recorder of a traced session (see the `recorder`
    /// module); not for users.
    #[command(name = "__record", hide = true)]
    Record { session: String },
    /// The guard process of a switch (see the `guard` module); not for users.
    #[command(name = "__guard", hide = true)]
    Guard {
        #[arg(long)]
        deadline_ms: u64,
        #[arg(long)]
        parent: i32,
        #[arg(long)]
        resume: Vec<String>,
        #[arg(long)]
        thaw: Vec<PathBuf>,
        #[arg(long)]
        mount_at: Option<PathBuf>,
        #[arg(long, default_value = "")]
        mount_type: String,
        #[arg(long, default_value_t = 0)]
        mount_flags: libc::c_ulong,
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        mount_data: String,
        #[arg(long)]
        mount_from: Vec<PathBuf>,
    },
}

#[derive(Args, Clone, Default)]
struct StartArgs {
    /// Mount the snapshot at DIR [default: /var/hcp/<device>_hcpN].
    #[arg(short = 'm', long = "mount-point", value_name = "DIR")]
    mount_point: Option<PathBuf>,

    /// Mount the snapshot read-only.
    #[arg(short = 'o', long = "read-only")]
    read_only: bool,

    /// Do not mount the snapshot.
    #[arg(long, conflicts_with_all = ["mount_point", "read_only"])]
    skip_mount: bool,

    /// Where changed blocks go: a block device, a directory, or a new file path
    /// [default: a file under /var/lib/hcp/].
    #[arg(short = 'c', long = "changed-blocks", value_name = "STORE")]
    store: Option<PathBuf>,

    /// Room for changed blocks: a size (512M, 2G) or a percentage of the
    /// origin (10%) [default: 10%]. A full store invalidates the snapshot;
    /// the origin keeps working.
    // (Values may start with `-`, so that `-q -5G` is refused as a negative
    // size rather than as an unknown option.)
    #[arg(short = 'q', long = "quota", value_name = "QUOTA", allow_hyphen_values = true)]
    quota: Option<Quota>,

    /// Copy-on-write unit: a power of two from 4K to 1M [default: 4K].
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    chunk_size: Option<ChunkSize>,

    /// Allocate the whole store file now rather than as it fills.
    #[arg(long)]
    preallocate: bool,

    /// Grow a store file as it fills: when THRESHOLD% of it is used, by
    /// GROWTH% of its size, never past the quota (-q), e.g. 80%:20%. A
    /// monitor process does it for the session's life.
    #[arg(long, value_name = "THRESHOLD%:GROWTH%")]
    autoextend: Option<Spec>,

    /// With --autoextend: the store's size at the start, a size (4M) or a
    /// percentage of the quota (25%) [default: 25%, at least 1M].
    #[arg(long, value_name = "SIZE|N%")]
    store_size: Option<StoreSize>,

    /// Measure, in the kernel, what the session costs for its whole life
    /// (see `hcp stats`).
    #[arg(long)]
    trace: bool,

    /// With --trace: measure the origin's write latency for this long before
    /// taking the snapshot, as the baseline of the COW overhead (0 skips)
    /// [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    baseline: Option<std::time::Duration>,

    /// With --trace: where the final report goes when the session is
    /// removed (JSON; its histograms go to FILE.hlog, its history to
    /// FILE.history.ndjson) [default: /var/lib/hcp/reports/hcpN-<time>.json].
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// With --trace: how often the session's figures are recorded into its
    /// history (`hcp stats --history`) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    history_interval: Option<std::time::Duration>,

    /// The device to snapshot: a path, a symlink (/dev/disk/by-*, /dev/VG/LV) or MAJOR:MINOR.
    device: Option<String>,
}

impl StartArgs {
    /// The first option given that only starting a session takes: in the
    /// original's flag form, `-r`, `-l`, `-s` and `-v` share the command
    /// line with them, and would silently ignore them.
    fn start_only_option(&self) -> Option<String> {
        let given = [
            (self.mount_point.is_some(), "-m"),
            (self.read_only, "-o"),
            (self.skip_mount, "--skip-mount"),
            (self.store.is_some(), "-c"),
            (self.quota.is_some(), "-q"),
            (self.chunk_size.is_some(), "--chunk-size"),
            (self.preallocate, "--preallocate"),
            (self.trace, "--trace"),
            (self.baseline.is_some(), "--baseline"),
            (self.history_interval.is_some(), "--history-interval"),
        ];
        given
            .iter()
            .find(|(given, _)| *given)
            .map(|(_, name)| name.to_string())
            .or_else(|| self.device.as_ref().map(|d| format!("the extra argument `{d}`")))
    }
}

#[derive(Subcommand)]
enum TraceCommand {
    /// Start tracing SESSION (started without --trace).
    Attach { session: String },
    /// Free the tracing programs and their maps, which stay loaded
    /// (detached, running on nothing) once no session is traced, so that
    /// the next traced start need not load and verify them again.
    Unload,
}

/// How `hcp stats` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsFormat {
    Text,
    Json,
    Prometheus,
    HdrLog,
}

/// What to do, with its options; the `bool` is `--json`.
pub enum Action {
    Recover(bool),
    Enroll(EnrollOptions, bool),
    Unenroll(UnenrollOptions, bool),
    Activate(std::time::Duration, bool),
    /// `stats`: the session (every traced one with --prometheus alone), the
    /// format, and `--window`.
    Stats(Option<String>, StatsFormat, Option<std::time::Duration>),
    /// `stats --prometheus --output FILE`: every traced session's series, into FILE.
    PrometheusFile(PathBuf),
    FollowStats(String, std::time::Duration),
    /// `stats --history`: the session, the times (`--since`, `--until`) as
    /// seconds since the epoch, and `--json`.
    History(String, Option<f64>, Option<f64>, bool),
    TraceAttach(String, bool),
    TraceUnload(bool),
    Report(String, Option<PathBuf>, bool),
    Start(StartOptions, bool),
    List(bool),
    Remove(RemoveOptions, bool),
    Rollback(RollbackOptions, bool),
    Changes(String, bool),
    Export(ExportOptions, bool),
    Apply(PathBuf, PathBuf, bool),
    Show(String, bool),
    Version(bool),
    Completions(clap_complete::Shell),
    Manual(PathBuf),
    Guard(hcp::switch::guard::Plan, i32),
    Autoextend(String),
    Record(String),
}

impl Cli {
    pub fn action(self) -> Result<Action, Error> {
        let json = self.json;
        if self.command.is_none() {
            check_flag_form(&self)?;
        }
        Ok(match self.command {
            Some(Command::Start(args)) => Action::Start(start_options(args)?, json),
            Some(Command::List) => Action::List(json),
            Some(Command::Remove { target, keep_store, report }) => {
                Action::Remove(RemoveOptions { target, keep_store, report }, json)
            }
            Some(Command::Rollback { session, now, no_wait }) => {
                Action::Rollback(RollbackOptions { target: session, now, no_wait }, json)
            }
            Some(Command::Changes { session }) => Action::Changes(session, json),
            Some(Command::Export { session, to, changed_since }) => {
                Action::Export(ExportOptions { target: session, to, changed_since }, json)
            }
            Some(Command::Apply { delta, image }) => Action::Apply(delta, image, json),
            Some(Command::Show { device }) => Action::Show(device, json),
            Some(Command::Report { target, output }) => Action::Report(target, output, json),
            Some(Command::Stats {
                session,
                follow,
                interval,
                prometheus,
                output,
                hdr_log,
                history,
                since,
                until,
                window,
            }) => {
                if history {
                    let Some(session) = session else {
                        return Err(Error::usage("give the SESSION whose history to print (`hcp -l` lists them)"));
                    };
                    let now = std::time::SystemTime::now();
                    let since = since.map(|t| parse_time(&t, "--since", now)).transpose()?;
                    let until = until.map(|t| parse_time(&t, "--until", now)).transpose()?;
                    if let (Some(s), Some(u)) = (since, until) {
                        if s >= u {
                            return Err(Error::usage("--since is not before --until: give an earlier --since"));
                        }
                    }
                    return Ok(Action::History(session, since, until, json));
                }
                if follow && interval.is_zero() {
                    return Err(Error::usage("--interval 0 would print without pause: give a duration such as 1s"));
                }
                let format = match (json, prometheus, hdr_log) {
                    (true, true, _) | (true, _, true) => {
                        return Err(Error::usage("--json cannot be combined with --prometheus or --hdr-log: pick one"))
                    }
                    (_, true, _) => StatsFormat::Prometheus,
                    (_, _, true) => StatsFormat::HdrLog,
                    (true, ..) => StatsFormat::Json,
                    _ => StatsFormat::Text,
                };
                if let Some(file) = output {
                    if session.is_some() {
                        return Err(Error::usage(
                            "--output writes every traced session's series: drop the SESSION (or --output)",
                        ));
                    }
                    return Ok(Action::PrometheusFile(file));
                }
                match (session, follow) {
                    (Some(session), true) => Action::FollowStats(session, interval),
                    (None, _) if format != StatsFormat::Prometheus => {
                        return Err(Error::usage("give the SESSION (/dev/hcpN; `hcp -l` lists them)"))
                    }
                    (session, _) => Action::Stats(session, format, window),
                }
            }
            Some(Command::Trace { command: TraceCommand::Attach { session } }) => Action::TraceAttach(session, json),
            Some(Command::Trace { command: TraceCommand::Unload }) => Action::TraceUnload(json),
            Some(Command::Version) => Action::Version(json),
            Some(Command::Completions { shell }) => Action::Completions(shell),
            Some(Command::Manual { dir }) => Action::Manual(dir),
            Some(Command::Recover) => Action::Recover(json),
            Some(Command::Enroll { device, now, edit_fstab }) => {
                Action::Enroll(EnrollOptions { device, now, edit_fstab }, json)
            }
            Some(Command::Unenroll { device, now, edit_fstab }) => {
                Action::Unenroll(UnenrollOptions { device, now, edit_fstab }, json)
            }
            Some(Command::Activate { wait }) => Action::Activate(wait, json),
            Some(Command::Autoextend { session }) => Action::Autoextend(session),
            Some(Command::Record { session }) => Action::Record(session),
            Some(Command::Guard {
                deadline_ms,
                parent,
                resume,
                thaw,
                mount_at,
                mount_type,
                mount_flags,
                mount_data,
                mount_from,
            }) => Action::Guard(
                hcp::switch::guard::Plan {
                    resume,
                    thaw,
                    remount: mount_at.map(|mount_point| hcp::switch::guard::Remount {
                        mount_point,
                        fs_type: mount_type,
                        flags: mount_flags,
                        data: mount_data,
                        from: mount_from,
                    }),
                    deadline: std::time::Duration::from_millis(deadline_ms),
                },
                parent,
            ),
            None if self.list => Action::List(json),
            None if self.version => Action::Version(json),
            None => match (self.remove, self.show) {
                (Some(target), _) => Action::Remove(
                    RemoveOptions { target, keep_store: self.keep_store, report: self.start.report },
                    json,
                ),
                (None, Some(device)) => Action::Show(device, json),
                (None, None) => Action::Start(start_options(self.start)?, json),
            },
        })
    }
}

/// The original's flag form (`-l`, `-r TARGET`, `-s DEVICE`, `-v`, or a
/// start) shares one command line: refuses what one of them would silently
/// ignore.
fn check_flag_form(cli: &Cli) -> Result<(), Error> {
    let commands: Vec<&str> =
        [(cli.list, "-l"), (cli.remove.is_some(), "-r"), (cli.show.is_some(), "-s"), (cli.version, "-v")]
            .into_iter()
            .filter_map(|(given, name)| given.then_some(name))
            .collect();
    if commands.len() > 1 {
        return Err(Error::usage(format!("{} are separate commands: give one of them", commands.join(" and "))));
    }
    if let Some(command) = commands.first() {
        if let Some(option) = cli.start.start_only_option() {
            return Err(Error::usage(format!(
                "{option} only applies when starting a session, not with {command}: drop it"
            )));
        }
        if cli.start.report.is_some() && *command != "-r" {
            return Err(Error::usage(format!(
                "--report only applies when starting or removing a session, not with {command}: drop it"
            )));
        }
    }
    if cli.keep_store && commands.first() != Some(&"-r") {
        return Err(Error::usage("--keep-store only applies with -r (removing a session): drop it"));
    }
    Ok(())
}

fn start_options(args: StartArgs) -> Result<StartOptions, Error> {
    let Some(device) = args.device else {
        return Err(Error::usage("give the DEVICE to snapshot, or one of -l, -r, -s, -v (see hcp --help)"));
    };
    if args.baseline.is_some() && !args.trace {
        return Err(Error::usage(
            "--baseline needs --trace: it is how long a traced session measures the origin before the snapshot; add \
             --trace or drop --baseline",
        ));
    }
    if args.history_interval.is_some() && !args.trace {
        return Err(Error::usage(
            "--history-interval needs --trace: only a traced session records a history; add --trace or drop \
             --history-interval",
        ));
    }
    if args.history_interval.is_some_and(|d| d < std::time::Duration::from_millis(100)) {
        return Err(Error::usage("--history-interval below 0.1 s: give a longer interval, such as 1s"));
    }
    Ok(StartOptions {
        device,
        mount_point: args.mount_point,
        read_only: args.read_only,
        skip_mount: args.skip_mount,
        store: args.store,
        quota: args.quota,
        chunk: args.chunk_size.unwrap_or_default(),
        preallocate: args.preallocate,
        autoextend: args.autoextend,
        store_size: args.store_size,
        trace: args.trace,
        baseline: args.baseline.unwrap_or(std::time::Duration::from_secs(3)),
        report: args.report,
        history_interval: args.history_interval.unwrap_or_default(),
    })
}

/// A time as `--since` and `--until` take it, in seconds since the epoch:
/// RFC 3339, seconds since the epoch, or a duration back from `now`.
fn parse_time(text: &str, flag: &str, now: std::time::SystemTime) -> Result<f64, Error> {
    let epoch = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(epoch(t));
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(epoch(now) - ago.as_secs_f64());
    }
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs),
        _ => Err(Error::usage(format!(
            "{flag} {text}: give a time (2026-12-06T10:00:00Z), seconds since the epoch, or a duration back from now (10m)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(args: &[&str]) -> Action {
        Cli::try_parse_from(std::iter::once("hcp").chain(args.iter().copied()))
            .expect("parses")
            .action()
            .expect("an action")
    }

    #[test]
    fn original_flags_and_subcommands_agree() {
        for args in [
            &["-m", "/mnt/x", "-o", "-c", "/dev/sdc", "-q", "2G", "/dev/sdb1"][..],
            &["start", "-m", "/mnt/x", "-o", "-c", "/dev/sdc", "-q", "2G", "/dev/sdb1"],
        ] {
            let Action::Start(o, false) = action(args) else { panic!("{args:?} is not a start") };
            assert_eq!(o.device, "/dev/sdb1");
            assert_eq!(o.mount_point, Some(PathBuf::from("/mnt/x")));
            assert!(o.read_only);
            assert_eq!(o.store, Some(PathBuf::from("/dev/sdc")));
            assert_eq!(o.quota, Some(Quota::Bytes(2 << 30)));
        }
        assert!(matches!(action(&["-l"]), Action::List(false)));
        assert!(matches!(action(&["list", "--json"]), Action::List(true)));
        assert!(
            matches!(action(&["-r", "/dev/hcp1"]), Action::Remove(RemoveOptions { ref target, keep_store: false, .. }, false) if target == "/dev/hcp1")
        );
        assert!(matches!(
            action(&["remove", "--keep-store", "hcp1"]),
            Action::Remove(RemoveOptions { keep_store: true, .. }, _)
        ));
        assert!(matches!(action(&["-s", "/dev/sdb1"]), Action::Show(ref d, false) if d == "/dev/sdb1"));
        assert!(matches!(action(&["show", "/dev/sdb1", "--json"]), Action::Show(_, true)));
        assert!(matches!(action(&["-v"]), Action::Version(false)));
        assert!(matches!(action(&["version"]), Action::Version(false)));
    }

    fn action_error(args: &[&str]) -> String {
        match Cli::try_parse_from(std::iter::once("hcp").chain(args.iter().copied())).expect("parses").action() {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => {
                assert_eq!(e.kind, hcp::error::Kind::Usage, "{args:?}: {e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn options_a_command_would_ignore_are_refused() {
        for (args, says) in [
            (&["-r", "hcp1", "--skip-mount"][..], "--skip-mount only applies when starting a session, not with -r"),
            (&["-r", "hcp1", "-q", "1G"], "-q only applies when starting a session, not with -r"),
            (&["-l", "--chunk-size", "8K"], "--chunk-size only applies when starting a session, not with -l"),
            (&["-s", "/dev/x", "--trace"], "--trace only applies when starting a session, not with -s"),
            (&["-r", "hcp1", "/dev/x"], "the extra argument `/dev/x` only applies when starting"),
            (&["-l", "-r", "hcp1"], "-l and -r are separate commands"),
            (&["-v", "-s", "/dev/x"], "-s and -v are separate commands"),
            (&["--keep-store", "/dev/x"], "--keep-store only applies with -r"),
            (
                &["-l", "--report", "/tmp/r.json"],
                "--report only applies when starting or removing a session, not with -l",
            ),
            (&["--baseline", "1s", "/dev/x"], "--baseline needs --trace"),
            (&["stats", "hcp1", "--follow", "--interval", "0s"], "--interval 0"),
            (&["--history-interval", "5s", "/dev/x"], "--history-interval needs --trace"),
            (&["start", "--trace", "--history-interval", "1ms", "/dev/x"], "below 0.1 s"),
            (&["stats", "--history"], "give the SESSION whose history"),
            (&["stats", "hcp1", "--history", "--since", "yesterday"], "--since yesterday: give a time"),
            (&["stats", "hcp1", "--history", "--since", "5m", "--until", "10m"], "--since is not before --until"),
            (&["-m", "/mnt/x"], "give the DEVICE"),
        ] {
            let err = action_error(args);
            assert!(err.contains(says), "{args:?}: {err}");
        }
        // What the flag form does take.
        assert!(matches!(
            action(&["-r", "hcp1", "--keep-store", "--report", "/tmp/r.json"]),
            Action::Remove(RemoveOptions { keep_store: true, report: Some(_), .. }, _)
        ));
        let Action::Start(o, _) = action(&["--trace", "/dev/x"]) else { panic!("a start") };
        assert_eq!((o.baseline, o.chunk), (std::time::Duration::from_secs(3), ChunkSize::default()));
    }

    #[test]
    fn autoextend_options() {
        for args in [
            &["--autoextend", "80%:20%", "--store-size", "25%", "/dev/x"][..],
            &["start", "--autoextend", "80%:20%", "--store-size", "25%", "/dev/x"],
        ] {
            let Action::Start(o, _) = action(args) else { panic!("{args:?} is not a start") };
            assert_eq!(o.autoextend, Some(Spec { threshold_percent: 80, growth_percent: 20 }));
            assert_eq!(o.store_size, Some(StoreSize::PercentOfQuota(25)));
        }
        let Action::Start(o, _) = action(&["/dev/x"]) else { panic!("a start") };
        assert_eq!((o.autoextend, o.store_size), (None, None));
        assert!(matches!(action(&["__autoextend", "hcp3"]), Action::Autoextend(ref id) if id == "hcp3"));
        for bad in [&["--autoextend", "80", "/dev/x"][..], &["--autoextend", "80%:20%", "--store-size", "0", "/dev/x"]]
        {
            let err = Cli::try_parse_from(std::iter::once("hcp").chain(bad.iter().copied())).err().expect("refused");
            assert!(err.to_string().contains("invalid"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn malformed_options_are_rejected_by_the_parser() {
        for args in [
            &["-q", "lots", "/dev/x"][..],
            &["-q", "0", "/dev/x"],
            &["--chunk-size", "3K", "/dev/x"],
            &["--skip-mount", "-o", "/dev/x"],
            &["-q", "-5G", "/dev/x"],
            &["--chunk-size", "-4K", "/dev/x"],
        ] {
            assert!(Cli::try_parse_from(std::iter::once("hcp").chain(args.iter().copied())).is_err(), "{args:?}");
        }
    }

    #[test]
    fn history_times_are_absolute_relative_or_epoch_seconds() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(parse_time("2027-01-15T08:00:00Z", "--since", now).unwrap(), 1_800_000_000.0);
        assert_eq!(parse_time("10m", "--since", now).unwrap(), 1_800_000_000.0 - 600.0);
        assert_eq!(parse_time("1799999999.5", "--since", now).unwrap(), 1_799_999_999.5);
        assert!(parse_time("-3", "--since", now).is_err());
        assert!(matches!(
            action(&["stats", "hcp2", "--history", "--json", "--since", "1h"]),
            Action::History(ref s, Some(_), None, true) if s == "hcp2"
        ));
        let Action::Start(o, _) = action(&["--trace", "--history-interval", "5s", "/dev/x"]) else { panic!("a start") };
        assert_eq!(o.history_interval, std::time::Duration::from_secs(5));
    }
}
