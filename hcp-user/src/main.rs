//! The `hcp` command line: parses arguments into options, calls the library,
//! prints the result (as text, or as JSON with `--json`), and turns errors
//! into one line and a documented exit status.

mod cli;
mod manual;
mod render;

use std::process::ExitCode;

use clap::Parser;
use hcp::error::{Error, Kind};
use hcp::kernel::signals::SignalBlock;
use hcp::state::record::SessionState;

use cli::{Action, Cli, StatsFormat};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help
        Err(e) => {
            // One line, like every other hcp error; usage errors exit 2.
            // clap puts what is missing on the lines after the first; its
            // usage and tips are left to --help.
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            eprintln!("hcp: {} (see hcp --help)", line.join(" ").trim_start_matches("error: "));
            return ExitCode::from(hcp::error::Kind::Usage.exit_code());
        }
    };
    let json = cli.json;
    let action = match cli.action() {
        Ok(action) => action,
        Err(e) => return fail(e, json),
    };
    // Commands that only print die quietly, as Unix tools do, when their
    // reader goes away (`hcp stats | head`), instead of panicking in
    // println!. Not the others: an early end there would leave work undone.
    if matches!(
        action,
        Action::List(..)
            | Action::Show(..)
            | Action::Changes(..)
            | Action::Stats(..)
            | Action::History(..)
            | Action::Version(..)
            | Action::Completions(..)
    ) {
        // SAFETY: restoring the default action of a signal Rust ignores.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // Commands that change sessions hold Ctrl-C, SIGTERM and SIGHUP back
    // for their whole run: `start` checks for them between its steps and
    // stops there, undoing what it made; `remove` and `recover` finish (a
    // half-removed session helps nobody), as does `rollback` (forward only;
    // a signal while it waits ends the wait, not the merge), and the enrollment commands (a
    // filesystem between its unmount and its mount must be mounted again).
    // Either way the signal ends the process only once this block is
    // dropped, after hcp said what it did.
    let _signals = match &action {
        Action::Start(..)
        | Action::Remove(..)
        | Action::Rollback(..)
        | Action::Recover(..)
        | Action::Enroll(..)
        | Action::Unenroll(..) => match SignalBlock::new() {
            Ok(block) => Some(block),
            Err(e) => return fail(e, json),
        },
        _ => None,
    };
    match run(action) {
        Ok(code) => code,
        Err(e) => fail(e, json),
    }
}

/// An error as one line on stderr (and an object with `--json`), and its
/// exit status.
fn fail(e: Error, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "error": e.message(), "exit_code": e.kind.exit_code() }));
    }
    eprintln!("hcp: {}", hcp::error::one_line(e.message()));
    ExitCode::from(e.kind.exit_code())
}

fn run(action: Action) -> Result<ExitCode, Error> {
    // Every command but these reads root's state (and most change devices):
    // checked before anything else, so an unprivileged call gets one clear
    // error and changes nothing.
    if !matches!(action, Action::Version(_) | Action::Guard(..)) {
        hcp::privilege::require_root()?;
    }
    match action {
        Action::Start(opts, json) => {
            let started = hcp::session::start(&opts)?;
            render::started(&started, json);
            // The session stands, but the caller asked for a mount it did not get.
            Ok(if started.mount_error.is_some() { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Action::List(json) => {
            let entries = hcp::session::list()?;
            render::list(&entries, &hcp::enroll::list()?, json);
            let invalid = entries.iter().filter(|e| e.state == SessionState::Invalid).map(|e| e.session.as_str());
            Ok(invalid_exit(invalid, "remove it with `hcp -r`"))
        }
        Action::Remove(opts, json) => {
            let removed = hcp::session::remove(&opts)?;
            render::removed(&removed, json);
            let invalid: Vec<&str> =
                removed.iter().filter(|r| r.snapshot_invalidated).map(|r| r.session.as_str()).collect();
            if invalid.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            // Everything is removed; what was read from the snapshot is not
            // to be trusted, which a script must not miss.
            eprintln!(
                "hcp: {} had been invalidated because its store filled, so anything read from it since is \
                 incomplete (the session is removed completely)",
                invalid.join(", ")
            );
            Ok(ExitCode::from(Kind::Invalid.exit_code()))
        }
        Action::Rollback(opts, json) => {
            let mut bar = render::Progress::new(json, "merging");
            let done = hcp::session::rollback(&opts, &mut |p| {
                if json {
                    render::merge_progress_line(p);
                }
                bar.show(p.merged_bytes, p.total_bytes);
            });
            drop(bar);
            render::rolled_back(&done?, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::Changes(session, json) => {
            render::changes(&hcp::session::changes(&session)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::Export(opts, json) => {
            let to_stdout = opts.to.as_os_str() == "-";
            let mut bar = render::Progress::new(json, "exporting");
            let done = hcp::session::export(&opts, &mut |done, total| bar.show(done, total));
            drop(bar);
            render::exported(&done?, json, to_stdout);
            Ok(ExitCode::SUCCESS)
        }
        Action::Apply(delta, image, json) => {
            let mut bar = render::Progress::new(json, "applying");
            let done = hcp::session::apply(&delta, &image, &mut |done, total| bar.show(done, total));
            drop(bar);
            render::applied(&done?, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::Show(device, json) => {
            render::shown(&hcp::session::show(&device)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::Stats(session, format, window) => {
            let named = session.is_some();
            let all = match session {
                Some(session) => vec![hcp::session::stats(&session, window)?],
                None => hcp::session::stats_all()?,
            };
            match format {
                StatsFormat::Text | StatsFormat::Json => render::stats(&all[0], format == StatsFormat::Json),
                StatsFormat::Prometheus => print!("{}", hcp::figures::prometheus::render(&all)),
                StatsFormat::HdrLog => {
                    let (start, interval) = hcp::figures::hdr_log::period(&all[0]);
                    hcp::figures::hdr_log::write(&mut std::io::stdout().lock(), &all[0], start, interval)
                        .map_err(|e| Error::io("writing the histogram log", e))?;
                }
            }
            warn_incomplete(&all);
            // Scraping every session (--prometheus alone) reports their
            // states as figures; naming an invalid one is an error too.
            let invalid = all.iter().filter(|s| named && s.state == Some(SessionState::Invalid));
            Ok(invalid_exit(invalid.map(|s| s.session.as_str()), "its figures stop where it was dropped"))
        }
        Action::PrometheusFile(file) => {
            let all = hcp::session::stats_all()?;
            hcp::figures::prometheus::write_textfile(&file, &hcp::figures::prometheus::render(&all))?;
            warn_incomplete(&all);
            Ok(ExitCode::SUCCESS)
        }
        Action::FollowStats(session, interval) => {
            use std::io::Write;
            let mut invalid = None;
            hcp::session::follow_stats(&session, interval, |figures| {
                // A closed pipe (the reader went away) ends the stream.
                let line = serde_json::to_string(figures).expect("stats serialise");
                let written = writeln!(std::io::stdout(), "{line}").and_then(|()| std::io::stdout().flush()).is_ok();
                // So does the snapshot's end: its figures stop there, and
                // the exit status says so, as for `hcp stats`.
                if figures.state == Some(SessionState::Invalid) {
                    invalid = Some(figures.session.clone());
                }
                written && invalid.is_none()
            })?;
            Ok(invalid_exit(invalid.iter().map(String::as_str), "its figures stop where it was dropped"))
        }
        Action::History(session, since, until, json) => {
            let (intervals, status) = hcp::session::history(&session, since, until)?;
            render::history(&intervals, &status, json);
            if !status.recorder_running {
                eprintln!(
                    "hcp: warning: the history recorder of {session} is not running: the history stops at {}",
                    status.recorded_until_unix.map_or("its start".to_string(), |t| hcp::clock::format_time(t as u64))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Report(target, output, json) => {
            let path = hcp::session::report(&target, output.as_deref())?;
            render::report_written(&path, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::TraceAttach(session, json) => {
            let snapshot = hcp::session::trace_attach(&session)?;
            render::trace_attached(&snapshot, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::TraceUnload(json) => {
            render::trace_unloaded(hcp::session::trace_unload()?, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::Guard(plan, parent) => {
            // Started from inside a switch, it inherited hcp's blocked
            // signals; it must not hold them for hcp's sake.
            hcp::kernel::signals::unblock_all_signals();
            Ok(ExitCode::from(hcp::switch::guard::serve(&plan, parent) as u8))
        }
        Action::Recover(json) => {
            let recovered = hcp::session::recover()?;
            render::recovered(&recovered, json);
            // Everything found is reported; the status is that of the first
            // thing that could not be cleaned up.
            Ok(match recovered.iter().find_map(|r| r.error_kind) {
                Some(kind) => ExitCode::from(kind.exit_code()),
                None => ExitCode::SUCCESS,
            })
        }
        Action::Enroll(opts, json) => {
            render::enrolled(&hcp::enroll::enroll(&opts)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::Unenroll(opts, json) => {
            render::unenrolled(&hcp::enroll::unenroll(&opts)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Action::Activate(wait, json) => {
            let report = hcp::enroll::activate(wait)?;
            render::activated(&report, json);
            // Every device is reported; the status is the first failure's.
            Ok(match report.iter().find_map(|a| a.error_kind) {
                Some(kind) => ExitCode::from(kind.exit_code()),
                None => ExitCode::SUCCESS,
            })
        }
        Action::Autoextend(session) => {
            // Started by `start`, it inherited its blocked signals; `remove`
            // stops it with SIGTERM.
            hcp::kernel::signals::unblock_all_signals();
            Ok(ExitCode::from(hcp::session::autoextend::serve(&session) as u8))
        }
        Action::Record(session) => {
            // Started by `start`, it inherited its blocked signals; `remove`
            // stops it with SIGTERM.
            hcp::kernel::signals::unblock_all_signals();
            Ok(ExitCode::from(hcp::session::recorder::serve(&session) as u8))
        }
        Action::Completions(shell) => {
            manual::completions(shell, &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Action::Manual(dir) => {
            for page in
                manual::write_pages(&dir).map_err(|e| Error::io(format!("writing pages into {}", dir.display()), e))?
            {
                println!("{}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Version(json) => {
            render::version(json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Success, or exit status 7 (after the output, which reports the state)
/// with one line naming the `invalid` sessions and what to do.
fn invalid_exit<'a>(invalid: impl Iterator<Item = &'a str>, advice: &str) -> ExitCode {
    let invalid: Vec<&str> = invalid.collect();
    if invalid.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "hcp: {} {} invalid: the store filled and dm-snapshot dropped the snapshot (the origin is unaffected); {advice}",
        invalid.join(", "),
        if invalid.len() == 1 { "is" } else { "are" }
    );
    ExitCode::from(Kind::Invalid.exit_code())
}

/// Sessions a scrape found half made or half removed.
fn warn_incomplete(all: &[hcp::figures::stats::SessionStats]) {
    for s in all.iter().filter(|s| s.state == Some(SessionState::Incomplete)) {
        eprintln!("hcp: warning: session {} is incomplete: run `hcp recover`", s.session);
    }
}
