//! What hcp prints: text in the original hcp's spirit, or one JSON value
//! with `--json`. Every figure says what it counts.

use hcp::enroll::{Activation, Enrolled, EnrolledEntry, FstabChange, Unenrolled};
use hcp::kernel::writeback::PreFlush;
use hcp::session::{
    Applied, Changes, Exported, ListEntry, MergeProgress, Recovered, Removed, RolledBack, Shown, Started,
};
use hcp::size::format_bytes;
use serde::Serialize;

/// The writeback before a freeze, on one line: what it wrote, how long it
/// took, and how much it left for the freeze.
fn pre_flush(p: &PreFlush) -> String {
    let written = p.device_written_bytes.map_or("n/a".to_string(), format_bytes);
    let left = p.dirty_left_bytes.map_or("n/a".to_string(), format_bytes);
    format!(
        "{written} written to the device in {:.3} s ({} syncfs pass{}, {}); {left} dirty system-wide after it",
        p.seconds,
        p.passes,
        if p.passes == 1 { "" } else { "es" },
        p.stopped.describe()
    )
}

fn print_json(value: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("reports serialise"));
}

pub fn started(s: &Started, json: bool) {
    if json {
        return print_json(s);
    }
    println!("Starting Hot Copy: {}", s.origin.display());
    let via = s.store_loop_device.as_ref().map(|l| format!(" (through {})", l.display())).unwrap_or_default();
    println!(
        "Changed blocks stored: {}{via}, quota {}, chunk {}",
        s.store.display(),
        format_bytes(s.quota_bytes),
        format_bytes(s.chunk_bytes)
    );
    if let Some(a) = &s.autoextend {
        println!(
            "Store auto-extend: starts at {}, grows by {}% at {}% use up to the quota (monitor pid {}, log {})",
            format_bytes(s.store_bytes),
            a.growth_percent,
            a.threshold_percent,
            a.pid.map_or("?".to_string(), |p| p.to_string()),
            a.log.display()
        );
    }
    println!("Snapshot completed: {:.3} s", s.timing.snapshot_seconds);
    if let Some(p) = &s.timing.pre_flush {
        println!("Written back before the freeze: {}", pre_flush(p));
    }
    match (s.timing.frozen_seconds, s.timing.freeze_call_seconds) {
        (Some(frozen), Some(call)) => {
            println!("File system frozen: {frozen:.3} s (of which FIFREEZE, flushing it, took {call:.3} s)")
        }
        _ => println!("File system frozen: 0.000 s (not mounted, nothing to freeze)"),
    }
    if let Some(suspended) = s.timing.suspended_seconds {
        println!("Origin suspended: {suspended:.3} s");
    }
    if let Some(k) = &s.timing.kernel {
        let secs = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3} s"));
        println!(
            "In the kernel: FIFREEZE {}, frozen {}, suspended {}; longest write stall {} ({} write/sync calls timed)",
            secs(k.freeze_call_seconds),
            secs(k.frozen_seconds),
            secs(k.suspended_seconds),
            secs(k.longest_write_stall_seconds),
            k.write_calls
        );
    }
    println!("Hot Copy created: {}", s.created);
    println!("Hot Copy created at: {}", s.snapshot.display());
    if let Some(through) = &s.write_through {
        println!(
            "All writes must now go through {}: {} is held by device-mapper and cannot be mounted, and a write to it \
             directly would bypass copy-on-write and corrupt the snapshot",
            through.display(),
            s.origin.display()
        );
    }
    match (&s.mount_point, &s.mount_error) {
        (Some(mp), _) => {
            let mode = if s.read_only { "read-only" } else { "read-write" };
            println!("Mounting {} {mode} ({})", s.snapshot.display(), s.filesystem.as_deref().unwrap_or("?"));
            println!("Hot Copy mounted at: {}", mp.display());
        }
        (None, Some(err)) => eprintln!(
            "hcp: the snapshot could not be mounted ({err}); session {} is kept: mount {} yourself, or remove it with `hcp -r {}`",
            s.session,
            s.snapshot.display(),
            s.snapshot.display()
        ),
        (None, None) => {}
    }
}

pub fn list(entries: &[ListEntry], enrolled: &[EnrolledEntry], json: bool) {
    if json {
        return print_json(&serde_json::json!({ "sessions": entries, "enrolled": enrolled }));
    }
    if entries.is_empty() {
        println!("No active Hot Copy sessions.");
    }
    list_sessions(entries);
    if !enrolled.is_empty() {
        println!("Enrolled devices:");
        for e in enrolled {
            let state = match (e.active, &e.mounted_at) {
                (false, _) => "mapping missing: run `hcp activate`".to_string(),
                (true, Some(mp)) => format!("mounted at {}", mp.display()),
                (true, None) => "not mounted".to_string(),
            };
            let sessions = if e.sessions.is_empty() {
                "no sessions".to_string()
            } else {
                format!("sessions {}", e.sessions.join(", "))
            };
            println!(" {} -> {}: {state}, {sessions}", e.device.display(), e.mapping.display());
        }
    }
}

fn list_sessions(entries: &[ListEntry]) {
    for e in entries {
        println!("****** {} ******", e.session);
        println!(" Real Device:           {}", e.real_device.display());
        println!(" Virtual Device:        {}", e.virtual_device.display());
        let via = e.store_loop_device.as_ref().map(|l| format!(" (through {})", l.display())).unwrap_or_default();
        println!(" Changed Blocks Stored: {}{via}", e.store.display());
        match &e.mount_point {
            Some(mp) => println!(" Mounted:               {}", mp.display()),
            None => println!(" Mounted:               no"),
        }
        println!(" Time Created:          {}", e.created);
        match e.changed_bytes {
            Some(b) => println!(" Changed Blocks:        {} ({b} bytes)", format_bytes(b)),
            None => println!(" Changed Blocks:        unknown"),
        }
        match (e.store_used_bytes, e.store_use_percent) {
            (Some(used), Some(pct)) => {
                println!(
                    " Store Use:             {pct:.1}% ({} of {}, with metadata)",
                    format_bytes(used),
                    format_bytes(e.store_bytes)
                )
            }
            _ => println!(" Store Use:             unknown (of {})", format_bytes(e.store_bytes)),
        }
        match &e.autoextend {
            Some(a) => println!(
                " Store Size:            {} of a quota of {}, grows by {}% at {}% use ({})",
                format_bytes(e.store_bytes),
                format_bytes(e.quota_bytes),
                a.growth_percent,
                a.threshold_percent,
                match (a.monitor_running, a.monitor_pid) {
                    (true, Some(pid)) => format!("monitor pid {pid}"),
                    _ => format!("monitor not running; see {}", a.log.display()),
                }
            ),
            None => println!(" Store Size:            {} (the quota)", format_bytes(e.store_bytes)),
        }
        let state = serde_json::to_value(e.state).expect("state").as_str().unwrap_or("?").to_string();
        match e.merge_percent {
            Some(pct) => {
                println!(" State:                 {state} ({pct:.1}% of the snapshot's data back in the origin)")
            }
            None => println!(" State:                 {state}"),
        }
        if let Some(problem) = &e.problem {
            println!(" Problem:               {problem}: run `hcp recover`");
        }
    }
}

pub fn enrolled(e: &Enrolled, json: bool) {
    if json {
        return print_json(e);
    }
    println!("Enrolled {} as {} (record {}).", e.device.display(), e.mapping.display(), e.record.display());
    match &e.remounted {
        Some(r) => println!(
            "Remounted {} through {} ({}, {}): the filesystem was unmounted for {:.3} s.",
            r.mount.mount_point.display(),
            r.device.display(),
            r.mount.fs_type,
            r.mount.options,
            r.downtime_seconds
        ),
        None => println!("Mount its filesystem through {} from now on.", e.mapping.display()),
    }
    println!("At boot the mapping must exist before the filesystem is mounted:");
    println!("  1. systemctl enable {}   (runs `hcp activate` before local filesystems)", e.boot_unit);
    let what = format!("name {} instead of the device (both carry the same filesystem UUID)", e.mapping.display());
    let missing = format!("{} has no line for it: the line that mounts it must {what}", e.fstab.path);
    fstab_change(&e.fstab, "  2. ", &what, &missing);
}

pub fn unenrolled(u: &Unenrolled, json: bool) {
    if json {
        return print_json(u);
    }
    match &u.mapping_removed {
        Some(m) => println!("Unenrolled {}: mapping {} removed.", u.device.display(), m.display()),
        None => println!("Unenrolled {} (its mapping did not exist).", u.device.display()),
    }
    if let Some(r) = &u.remounted {
        println!(
            "Remounted {} from {}: the filesystem was unmounted for {:.3} s.",
            r.mount.mount_point.display(),
            r.device.display(),
            r.downtime_seconds
        );
    }
    let missing = format!("{} has no line naming the mapping: nothing to change there", u.fstab.path);
    fstab_change(&u.fstab, "", &format!("name {} again", u.device.display()), &missing);
}

/// The fstab line to change (or changed), as a diff, after `prefix`;
/// `missing` when fstab has no line to change.
fn fstab_change(f: &FstabChange, prefix: &str, what: &str, missing: &str) {
    let indent = " ".repeat(prefix.len());
    match (&f.line, &f.current, &f.wanted) {
        (Some(line), Some(current), Some(wanted)) => {
            let verb = if f.edited { "now reads" } else { "must read" };
            println!("{prefix}{} line {line} {verb} ({what}):", f.path);
            println!("{indent}- {current}");
            println!("{indent}+ {wanted}");
            match &f.backup {
                Some(b) => println!("{indent}(the previous {} is kept as {})", f.path, b.display()),
                None => println!("{indent}(`--edit-fstab` makes this change, keeping a backup)"),
            }
        }
        (Some(line), Some(_), None) => {
            println!("{prefix}{} line {line} is as it must be: nothing to change there", f.path)
        }
        _ => println!("{prefix}{missing}"),
    }
}

pub fn activated(report: &[Activation], json: bool) {
    if json {
        return print_json(&report);
    }
    if report.is_empty() {
        println!("No enrolled devices.");
    }
    for a in report {
        match &a.error {
            Some(e) => println!("{} ({}): FAILED: {e}", a.mapping.display(), a.device.display()),
            None => println!("{} ({}): {}", a.mapping.display(), a.device.display(), a.state),
        }
    }
}

pub fn recovered(recovered: &[Recovered], json: bool) {
    if json {
        return print_json(&recovered);
    }
    if recovered.is_empty() {
        println!("Nothing to recover: every session is complete.");
        return;
    }
    for r in recovered {
        let mark = if r.ok { "done" } else { "FAILED" };
        println!("{}: {}: {mark}: {}", r.item, r.found, r.done);
    }
}

pub fn removed(removed: &[Removed], json: bool) {
    if json {
        return print_json(&removed);
    }
    for r in removed {
        let restored =
            if r.origin_restored { format!("; {} has its own table back", r.origin.display()) } else { String::new() };
        let frozen = r.frozen_seconds.map(|f| format!(", file system frozen {f:.3} s")).unwrap_or_default();
        println!("Hot Copy session {} has been stopped ({:.3} s{frozen}){restored}.", r.session, r.seconds);
        if let Some(p) = &r.pre_flush {
            println!("Written back before the freeze: {}", pre_flush(p));
        }
        if let Some(store) = &r.kept_store {
            println!("Store kept: {}", store.display());
        }
        if let Some(log) = &r.autoextend_log {
            println!("Auto-extend log kept: {}", log.display());
        }
    }
}

pub fn rolled_back(r: &RolledBack, json: bool) {
    if json {
        // One line, after the progress lines: the output is NDJSON.
        return println!("{}", serde_json::to_string(r).expect("reports serialise"));
    }
    if let Some(m) = &r.remounted {
        println!(
            "{} was unmounted for {:.3} s and mounted again on the merge ({}): it shows the snapshot's contents.",
            m.mount.mount_point.display(),
            m.downtime_seconds,
            m.mount.fs_type
        );
    }
    let merged = format_bytes(r.merge_bytes);
    if !r.finished {
        println!(
            "{} is being rolled back to {}: {merged} to merge, in the kernel; it reads as the snapshot already. \
             `hcp -l` shows the progress; `hcp rollback {}` waits for it and ends the session.",
            r.origin.display(),
            r.session,
            r.session
        );
        return;
    }
    let took = r.merge_seconds.map(|s| format!(" in {s:.1} s")).unwrap_or_default();
    let restored = if r.origin_restored { "; it has its own table back" } else { "; its other sessions remain" };
    let frozen = r.frozen_seconds.map(|f| format!(" (file system frozen {f:.3} s for it)")).unwrap_or_default();
    println!(
        "{} is rolled back to {}: {merged} merged back{took}{restored}{frozen}. Session {} has ended ({:.1} s in all).",
        r.origin.display(),
        r.session,
        r.session,
        r.seconds
    );
    if let Some(report) = &r.report {
        println!("Final report (up to the rollback): {}", report.display());
    }
}

/// A progress bar on standard error when it is a terminal (and not
/// `--json`): percent, bytes done, rate and time left.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// `verb` says what is going on: `merging`, `exporting`.
    pub fn new(json: bool, verb: &str) -> Progress {
        use std::io::IsTerminal;
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let template = format!(
                "{verb} {{bar:30}} {{percent:>3}}%  {{bytes}}/{{total_bytes}}, {{binary_bytes_per_sec}}, {{eta}} left"
            );
            bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("a valid template"));
            bar
        });
        Progress { bar }
    }

    pub fn show(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A merge's progress with `--json`: one line per status read.
pub fn merge_progress_line(p: &MergeProgress) {
    println!("{}", serde_json::json!({ "progress": p }));
}

pub fn exported(e: &Exported, json: bool, to_stdout: bool) {
    // With the image on standard output, the summary goes to standard error.
    let text = if json {
        serde_json::to_string_pretty(e).expect("reports serialise")
    } else {
        let what = match (&e.base, e.changed_bytes) {
            (Some(base), Some(changed)) => {
                format!("the delta since {} ({}, {} of changed chunks)", base.session, base.time, format_bytes(changed))
            }
            _ => "the image".to_string(),
        };
        format!(
            "{} exported ({what}) to {}: {} in {:.1} s ({:.1} MiB/s){}.",
            e.session,
            e.to.as_ref().map_or("standard output".to_string(), |p| p.display().to_string()),
            format_bytes(e.bytes),
            e.seconds,
            e.mib_per_second,
            if e.hole_bytes > 0 {
                format!(", {} of zeros left as holes", format_bytes(e.hole_bytes))
            } else {
                String::new()
            }
        )
    };
    if to_stdout {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

pub fn applied(a: &Applied, json: bool) {
    if json {
        return print_json(a);
    }
    let resumed = if a.resumed { " (finishing an interrupted run)" } else { "" };
    println!(
        "{} now holds {} at {}{resumed}: {} of {} frames written ({}), {} applied before; {:.1} s.",
        a.image.display(),
        a.target.session,
        a.target.time,
        a.written_frames,
        a.frames,
        format_bytes(a.bytes_written),
        a.already_applied_frames,
        a.seconds
    );
}

pub fn changes(c: &Changes, json: bool) {
    if json {
        return print_json(c);
    }
    println!(
        "{} since {} ({}): {} in {} chunk{} of {}, {} extent{}:",
        c.origin.display(),
        c.since,
        c.session,
        format_bytes(c.changed_bytes),
        c.changed_chunks,
        if c.changed_chunks == 1 { "" } else { "s" },
        format_bytes(c.chunk_bytes),
        c.extents.len(),
        if c.extents.len() == 1 { "" } else { "s" }
    );
    for e in &c.extents {
        println!("  offset {:>14}  length {:>12}  ({})", e.offset, e.length, format_bytes(e.length));
    }
    if c.in_flight_chunks > 0 {
        println!(
            "{} more chunk{} allocated by writes still in flight, not yet in the list: run it again once the origin \
             is quiet.",
            c.in_flight_chunks,
            if c.in_flight_chunks == 1 { "" } else { "s" }
        );
    }
}

pub fn shown(s: &Shown, json: bool) {
    if json {
        return print_json(s);
    }
    for snap in &s.snapshots {
        println!("{}", snap.display());
    }
}

pub fn version(json: bool) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if json {
        return print_json(&serde_json::json!({ "hcp": env!("CARGO_PKG_VERSION"), "kernel": kernel.trim() }));
    }
    println!("hcp {} (kernel {})", env!("CARGO_PKG_VERSION"), kernel.trim());
}

pub fn trace_attached(snapshot: &std::path::Path, json: bool) {
    if json {
        return print_json(&serde_json::json!({ "traced": snapshot }));
    }
    println!("Tracing {}: `hcp stats {}` shows what it costs", snapshot.display(), snapshot.display());
}

pub fn trace_unloaded(was_loaded: bool, json: bool) {
    if json {
        return print_json(&serde_json::json!({ "unloaded": was_loaded }));
    }
    if was_loaded {
        println!("Unloaded hcp's tracing programs and maps (the next traced start loads them again)");
    } else {
        println!("hcp's tracing was not loaded: nothing to unload");
    }
}

pub fn stats(s: &hcp::figures::stats::SessionStats, json: bool) {
    use hcp::tracer::hist::Summary;
    if json {
        return print_json(s);
    }
    let ms = |ns: u64| format!("{:.3}", ns as f64 / 1e6);
    let lat = |l: &Option<Summary>| match l {
        Some(l) => format!(
            "latency ms p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(l.p50_ns),
            ms(l.p90_ns),
            ms(l.p99_ns),
            ms(l.p999_ns),
            ms(l.max_ns)
        ),
        None => "no samples".to_string(),
    };
    let traffic = |name: &str, t: &hcp::figures::stats::Traffic| {
        println!("{name:<20} {:>9} bios {:>11}   {}", t.count, format_bytes(t.bytes), lat(&t.latency))
    };
    println!(
        "{}: origin {}, traced since {}",
        s.session,
        s.origin.display(),
        hcp::clock::format_time(s.traced_since_unix)
    );
    if let Some(state) = s.state {
        let name = serde_json::to_value(state).expect("state");
        let why = match state {
            hcp::state::record::SessionState::Invalid => {
                ": the store filled and dm-snapshot dropped the snapshot (the origin is unaffected)"
            }
            _ => "",
        };
        println!("State                {}{why}", name.as_str().unwrap_or("?"));
    }
    if let Some(st) = &s.store {
        let used = match (st.used_bytes, st.use_percent) {
            (Some(used), Some(pct)) => {
                format!("{} used ({pct:.1}%) of {}", format_bytes(used), format_bytes(st.size_bytes))
            }
            _ => format!("{}, use unknown", format_bytes(st.size_bytes)),
        };
        let grows =
            if st.autoextend { format!(", grows up to {}", format_bytes(st.quota_bytes)) } else { String::new() };
        println!("Store                {used}{grows}");
    }
    traffic("Application writes", &s.app_writes);
    traffic("Application reads", &s.app_reads);
    traffic("Snapshot reads", &s.snapshot_reads);
    traffic("Snapshot writes", &s.snapshot_writes);
    let c = &s.copy_out;
    println!(
        "Copy-out             {} read from the real device in {} chunk copies; {} of data and {} metadata commits ({}) written to the store",
        format_bytes(c.read_bytes),
        c.chunk_copies,
        format_bytes(c.store_data_bytes),
        c.store_metadata_writes,
        format_bytes(c.store_metadata_bytes)
    );
    let amp = |a: Option<f64>| a.map_or("n/a (no I/O yet)".to_string(), |a| format!("{a:.2}"));
    println!(
        "Write amplification  {}  ((real device + store writes) / application writes)",
        amp(s.write_amplification)
    );
    println!(
        "Read amplification   {}  (real device + store reads for them / origin and snapshot reads; copy-out apart)",
        amp(s.read_amplification)
    );
    println!("COW overhead (write latency, ms):   p50      p90      p99    p99.9      max");
    let row = |name: &str, l: &Option<Summary>| {
        if let Some(l) = l {
            println!(
                "  {name:<30} {:>8} {:>8} {:>8} {:>8} {:>8}",
                ms(l.p50_ns),
                ms(l.p90_ns),
                ms(l.p99_ns),
                ms(l.p999_ns),
                ms(l.max_ns)
            );
        }
    };
    let o = &s.cow_overhead;
    row("baseline (before the snapshot)", &o.baseline);
    row("during the session", &o.during);
    row("real device service time", &o.real_device);
    for (name, r) in [("ratio to baseline", &o.ratio_to_baseline), ("ratio to real device", &o.ratio_to_real_device)] {
        if let Some(r) = r {
            println!("  {name:<30} {:>7.2}x {:>7.2}x {:>7.2}x {:>7.2}x {:>7.2}x", r.p50, r.p90, r.p99, r.p999, r.max);
        }
    }
    let f = &s.freeze;
    let secs = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3} s"));
    if let Some(p) = &f.pre_flush {
        println!("Pre-flush            {}", pre_flush(p));
    }
    println!(
        "Switch (hcp's clock) FIFREEZE {}, file system frozen {}, origin suspended {}",
        secs(f.freeze_call_seconds),
        secs(f.frozen_seconds),
        secs(f.suspended_seconds)
    );
    if let Some(k) = &f.kernel {
        println!(
            "Switch (kernel)      FIFREEZE {}, file system frozen {}, origin suspended {}",
            secs(k.freeze_call_seconds),
            secs(k.frozen_seconds),
            secs(k.suspended_seconds)
        );
        println!(
            "Write stall          longest {} over {} write/sync calls on the origin's file system{}{}",
            secs(k.longest_write_stall_seconds),
            k.write_calls,
            if k.writes_still_held > 0 {
                format!(" ({} still held 2 s after the thaw: a lower bound)", k.writes_still_held)
            } else {
                String::new()
            },
            if k.lost_events > 0 { format!(" ({} events lost)", k.lost_events) } else { String::new() }
        );
    }
    let l = &s.losses;
    println!(
        "Not measured         {} starts (no room in the in-flight table or map), {} samples (histogram map full), {} completions without a start, {} unreadable events, {} completions unseen, {}",
        l.inflight_full,
        l.histogram_full,
        l.unmatched,
        l.read_errors,
        l.completions_unseen,
        match l.skipped_runs {
            Some(n) => format!("{n} events the kernel skipped (all traced devices)"),
            None => "events the kernel skipped: not counted by this kernel".to_string(),
        }
    );
    for n in &s.not_measured {
        println!("                     {}: {}", n.figure, n.reason);
    }
    if let Some(mode) = s.in_flight.filter(|m| *m != hcp::tracer::probe::InFlightMode::Table) {
        println!("Tracer               {}", mode.describe());
    }
    if let Some(h) = &s.history {
        let until = h.recorded_until_unix.map_or("nothing yet".to_string(), |t| hcp::clock::format_time(t as u64));
        println!(
            "History              {} intervals of {} s, up to {until}, in {} (`hcp stats {} --history`); recorder {}",
            h.intervals,
            h.interval_seconds,
            h.path.display(),
            s.session,
            if h.recorder_running { "running" } else { "NOT running: the history stops there" }
        );
    }
    if let Some(a) = &s.analysis {
        let c = &a.copy_out;
        println!("\nThe answer:");
        println!("  Write latency  {}", a.verdicts.write_latency);
        println!("  Switch         {}", a.verdicts.switch);
        println!("  Store          {}", a.verdicts.store);
        println!(
            "  Copy-out       {:.2} MiB/s on average, {:.2} MiB/s at its peak{}; write amplification {}",
            c.mean_mib_per_s,
            c.peak_mib_per_s,
            c.levelled_off_at_unix
                .map_or(String::new(), |t| format!(", levelled off at {}", hcp::clock::format_time(t as u64))),
            c.write_amplification.map_or("n/a".to_string(), |w| format!("{w:.2}"))
        );
    }
    if let Some(h) = s.histograms.iter().find(|h| h.name == "app_write").map(|h| &h.hist) {
        println!("\nApplication write latency since the snapshot:");
        print!("{}", hcp::tracer::hist::render_log2(h, hcp::tracer::hist::Unit::Usecs));
    }
}

/// `hcp stats --history`: a line per interval, or a JSON line each.
pub fn history(
    intervals: &[hcp::figures::interval::IntervalStats],
    status: &hcp::figures::stats::HistoryStatus,
    json: bool,
) {
    if json {
        for iv in intervals {
            println!("{}", serde_json::to_string(iv).expect("intervals serialise"));
        }
        return;
    }
    println!(
        "History of {} ({} intervals shown of {} kept, recorded every {} s; older ones merged into coarser ones)",
        intervals.first().map_or("the session", |iv| iv.session.as_str()),
        intervals.len(),
        status.intervals,
        status.interval_seconds
    );
    println!(
        "{:<20} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>6}",
        "interval start (UTC)",
        "seconds",
        "writes/s",
        "MiB/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "copy MiB/s",
        "store used",
        "lost"
    );
    let mib_s = |bytes: u64, secs: f64| if secs > 0.0 { bytes as f64 / 1048576.0 / secs } else { 0.0 };
    for iv in intervals {
        let secs = iv.interval_seconds;
        let lat = iv.app_writes.latency.as_ref();
        let ms = |f: fn(&hcp::tracer::hist::Summary) -> u64| {
            lat.map_or("-".to_string(), |l| format!("{:.3}", f(l) as f64 / 1e6))
        };
        let time = hcp::clock::format_time(iv.start_unix as u64);
        println!(
            "{:<20} {:>7.1} {:>9.1} {:>9.2} {:>9} {:>9} {:>9} {:>10.2} {:>10} {:>6}",
            time.trim_end_matches('Z').replace('T', " "),
            secs,
            if secs > 0.0 { iv.app_writes.count as f64 / secs } else { 0.0 },
            mib_s(iv.app_writes.bytes, secs),
            ms(|l| l.p50_ns),
            ms(|l| l.p99_ns),
            ms(|l| l.max_ns),
            mib_s(iv.copy_out.read_bytes, secs),
            iv.store_used_bytes.map_or("-".to_string(), format_bytes),
            iv.lost_events
        );
    }
}

/// `hcp report`: where the report went.
pub fn report_written(path: &std::path::Path, json: bool) {
    if json {
        return print_json(&serde_json::json!({ "report": path }));
    }
    println!("Report written to {} (open it in a browser; it needs no network)", path.display());
}
