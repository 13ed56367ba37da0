//! Part 6 of `cargo xtask bench`, memory: peak RSS of hcp's host commands and
//! of the tracer's loader, and the BPF memory of a traced device set.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

use super::runs::TracedRuns;
use super::tracers::BpfMemory;
use super::{Bins, Plan, CAPACITY_DEVICES};
use crate::bench::report::{significant, Figure, Section};

/// The hcp commands that run on a host without device-mapper.
const COMMANDS: &[&[&str]] = &[&["version"], &["--help"], &["list"], &["list", "--json"], &["stats", "--prometheus"]];

pub(super) fn memory(bins: &Bins, plan: &Plan, one: &TracedRuns, several: &TracedRuns) -> Result<Section> {
    let mut figures = Vec::new();
    let mut refused = Vec::new();
    for args in COMMANDS {
        let name = args.iter().map(|a| a.trim_start_matches('-')).collect::<Vec<_>>().join("_");
        let mut f =
            Figure::new(&format!("peak_rss_kib/hcp_{name}"), &format!("peak RSS of `hcp {}`", args.join(" ")), "KiB");
        for _ in 0..plan.rss_repeats {
            let (code, rss) = peak_rss(Command::new(&bins.hcp).args(*args))?;
            if code != 0 {
                refused.push(format!("`hcp {}` (exit {code})", args.join(" ")));
                break;
            }
            f.runs.push(rss as f64);
        }
        if !f.runs.is_empty() {
            figures.push(f);
        }
    }
    let mut breakdown = String::new();
    for (runs, devices) in [(one, 1), (several, CAPACITY_DEVICES)] {
        let mut rss = Figure::new(
            &format!("peak_rss_kib/tracer_{devices}dev"),
            &format!(
                "peak RSS of the process that loads, attaches and pins hcp's tracer for {devices} device(s) and reads its maps (hcp-trace-bench, the library calls of `hcp trace attach`)"
            ),
            "KiB",
        );
        let mut maps = Figure::new(
            &format!("bpf_map_kib/{devices}dev"),
            &format!("kernel memory of every map hcp's programs use, {devices} device(s) traced, after the load (fdinfo memlock)"),
            "KiB",
        );
        let mut programs = Figure::new(
            &format!("bpf_prog_kib/{devices}dev"),
            "kernel memory of hcp's six programs (fdinfo memlock)",
            "KiB",
        );
        for report in &runs.reports {
            let mem = BpfMemory::of(report)?;
            rss.runs.push(report["max_rss_kib"].as_f64().context("no max_rss_kib")?);
            maps.runs.push(mem.map_bytes() as f64 / 1024.0);
            programs.runs.push(mem.program_bytes as f64 / 1024.0);
        }
        if let Some(last) = runs.reports.last() {
            let mem = BpfMemory::of(last)?;
            let parts: Vec<String> = mem
                .maps
                .iter()
                .map(|(name, bytes)| format!("{name} {} KiB", significant(*bytes as f64 / 1024.0)))
                .collect();
            breakdown.push_str(&format!(" With {devices} device(s): {}.", parts.join(", ")));
        }
        figures.extend([rss, maps, programs]);
    }
    let (history, history_note) = history_model(bins)?;
    figures.extend(history);
    let refused = if refused.is_empty() {
        String::new()
    } else {
        format!(" Not measured (they need device-mapper or a session, which the host lacks): {}.", refused.join(", "))
    };
    let method = format!(
        "Peak RSS (the kernel's ru_maxrss, from wait4) of the release `hcp` binary's commands that run on the \
         host, without device-mapper or sessions, {repeats} run(s) each.{refused} The tracer's loader is the \
         benchmark driver, which makes the same library calls as `hcp start --trace` (load the object with \
         this kernel's offsets from tracefs and BTF, attach, pin, add the devices) and then reads every map, \
         as `hcp stats` does; its figure is from the traced runs of the two parts above (or, when they are not run, one short traced run of its own for each device count). BPF memory: the \
         `memlock` of each map and program of the pinned set, read from /proc/self/fdinfo while the \
         devices are traced, after the load (the latency histograms are allocated per key, on first use).\
         {breakdown} {history_note}",
        repeats = plan.rss_repeats,
    );
    Ok(Section { id: "memory".into(), title: "Memory (host)".into(), method, figures, targets: Vec::new() })
}

/// Runs a command to its end, output discarded; its exit code and peak RSS
/// in KiB.
fn peak_rss(cmd: &mut Command) -> Result<(i32, u64)> {
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting hcp")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the child is ours and not waited for yet (std's Child is
    // never waited on: dropping it neither waits nor kills).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(reaped == pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Ok((code, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

/// A session's history after 24 h at 1 s: the driver builds it with the
/// recorder's own code (see hcp-trace-bench `history`).
fn history_model(bins: &Bins) -> Result<(Vec<Figure>, String)> {
    let out = Command::new(&bins.driver).args(["history", "86400"]).output().context("running hcp-trace-bench")?;
    ensure!(out.status.success(), "hcp-trace-bench history: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("hcp-trace-bench history's report")?;
    let n = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
    let mut disk = Figure::new("history_kib/24h_1s", "a session's history file after 24 h at 1 s intervals", "KiB");
    disk.runs.push(n("bytes")? / 1024.0);
    let mut rss = Figure::new(
        "peak_rss_kib/history_24h_1s",
        "peak RSS of a process holding that history (the recorder's state), with the library loaded",
        "KiB",
    );
    rss.runs.push(n("max_rss_kib")?);
    let note = format!(
        "The history: a day at 1 s intervals is built by the recorder's code (an interval a second, merged into \
         coarser ones every minute) from intervals shaped like a busy session's (three latency histograms of a \
         dozen buckets each); it keeps {} intervals.",
        n("intervals")?
    );
    Ok((vec![disk, rss], note))
}
