//! The host part of `cargo xtask bench`: what hcp's tracer costs and holds,
//! on the host kernel (eBPF, loop devices, no device-mapper).
//!
//! - Tracing overhead: fio on a loop device over tmpfs, untraced, traced by
//!   hcp, by a bpftrace latency script, and by the floor (empty programs on
//!   hcp's events, attached the same way), in alternating rounds.
//! - Tracer capacity: several loop devices at fio's full speed, traced by
//!   hcp, every event accounted for against the kernel's own counts.
//! - Memory: peak RSS of the hcp commands that run on the host and of the
//!   tracer's loader, and the BPF memory of a traced device set.
//!
//! hcp has no session on the host, so its tracer is attached by a small
//! driver (`hcp-trace-bench`, in the hcp-tests crate) through the same
//! library calls a traced session makes.
//!
//! Here: the run, its plan and its binaries. The parts are in [`overhead`],
//! [`capacity`] and [`memory`](mod@memory), made of measured runs
//! ([`runs`]) of [`fio`] on loop devices ([`system`]) under the [`tracers`].

mod capacity;
mod fio;
mod memory;
mod overhead;
mod runs;
mod system;
mod tracers;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::report::Section;
use super::Part;
use crate::workspace_root;
use capacity::tracer_capacity;
use memory::memory;
use overhead::tracing_overhead;
use runs::traced_runs;
use tracers::PIN_DIR;

/// How long and how often each part runs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    /// Seconds of fio per measured run.
    pub(super) runtime_s: u32,
    /// Rounds of the overhead part (each round runs every case once).
    pub(super) rounds: usize,
    /// Rounds of the capacity part (untraced and traced once each).
    pub(super) capacity_rounds: usize,
    /// Runs of each hcp command for its peak RSS.
    pub(super) rss_repeats: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan { runtime_s: 3, rounds: 2, capacity_rounds: 1, rss_repeats: 1 }
        } else {
            Plan { runtime_s: 10, rounds: 10, capacity_rounds: 3, rss_repeats: 3 }
        }
    }
}

/// Devices the capacity part drives at once.
pub(super) const CAPACITY_DEVICES: usize = 4;

/// Runs the host `parts` (of [`Part::Tracing`], [`Part::Capacity`] and
/// [`Part::Memory`]), in that order.
pub fn run(quick: bool, parts: &[Part]) -> Result<Vec<Section>> {
    let plan = Plan::new(quick);
    preflight()?;
    let bins = Bins::build()?;
    let mut sections = Vec::new();
    let mut one = None;
    if parts.contains(&Part::Tracing) {
        let (section, traced) = timed("tracing overhead", || tracing_overhead(&bins, &plan))?;
        sections.push(section);
        one = Some(traced);
    }
    let mut several = None;
    if parts.contains(&Part::Capacity) {
        let (section, traced) = timed("tracer capacity", || tracer_capacity(&bins, &plan))?;
        sections.push(section);
        several = Some(traced);
    }
    if parts.contains(&Part::Memory) {
        // The memory part reads the BPF memory and the loader's RSS off
        // traced runs: those of the parts above, or short ones of its own.
        let one = match one {
            Some(runs) => runs,
            None => timed("memory: a traced run on 1 device", || traced_runs(&bins, 1))?,
        };
        let several = match several {
            Some(runs) => runs,
            None => timed("memory: a traced run on several devices", || traced_runs(&bins, CAPACITY_DEVICES))?,
        };
        sections.push(timed("memory", || memory(&bins, &plan, &one, &several))?);
    }
    Ok(sections)
}

fn timed<T>(what: &str, part: impl FnOnce() -> Result<T>) -> Result<T> {
    let began = Instant::now();
    eprintln!("bench (host): {what}...");
    let out = part().with_context(|| format!("benchmark part `{what}`"))?;
    eprintln!("bench (host): {what}: {:.0} s", began.elapsed().as_secs_f64());
    Ok(out)
}

fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the host benchmark needs root (loop devices, eBPF)");
    for (tool, why) in [("fio", "the load"), ("bpftrace", "the baseline tracer"), ("losetup", "loop devices")] {
        let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        ensure!(found.is_ok_and(|s| s.success()), "{tool} (for {why}) is missing: run `cargo xtask setup`");
    }
    ensure!(Path::new("/dev/shm").is_dir(), "/dev/shm (a tmpfs for the loop devices' files) is missing");
    ensure!(
        !Path::new(PIN_DIR).exists(),
        "hcp's tracing is attached ({PIN_DIR}): the benchmark needs it to itself; remove the traced sessions or run `hcp recover`"
    );
    Ok(())
}

/// The release binaries the benchmark runs.
pub(super) struct Bins {
    pub(super) hcp: PathBuf,
    pub(super) driver: PathBuf,
}

impl Bins {
    fn build() -> Result<Bins> {
        eprintln!("bench (host): building hcp and hcp-trace-bench (release)");
        let out = Command::new("cargo")
            .args(["build", "--release", "--bin", "hcp", "--bin", "hcp-trace-bench"])
            .arg("--message-format=json-render-diagnostics")
            .current_dir(workspace_root())
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo")?;
        ensure!(out.status.success(), "cargo build --release failed ({})", out.status);
        let executables = executables(&String::from_utf8_lossy(&out.stdout));
        let find = |name: &str| {
            executables
                .iter()
                .find(|p| p.file_name().is_some_and(|n| n == name))
                .cloned()
                .with_context(|| format!("cargo built no `{name}` executable"))
        };
        Ok(Bins { hcp: find("hcp")?, driver: find("hcp-trace-bench")? })
    }
}

/// The executables in cargo's JSON messages.
fn executables(messages: &str) -> Vec<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_from_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"hcp"},"executable":"/t/release/hcp"}
{"reason":"compiler-artifact","target":{"name":"hcp"},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(executables(messages), vec![PathBuf::from("/t/release/hcp")]);
    }

    #[test]
    fn quick_is_shorter() {
        let (q, f) = (Plan::new(true), Plan::new(false));
        assert!(q.runtime_s < f.runtime_s && q.rounds < f.rounds);
    }
}
