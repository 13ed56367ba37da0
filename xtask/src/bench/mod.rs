//! `cargo xtask bench [--quick] [--only PART...]`: what a snapshot costs,
//! measured side by side with what users would use instead, written to
//! `bench/results.json` (every run of every figure, the machine, the
//! kernels and the tools) and rendered from it as `bench/RESULTS.md`.
//!
//! Parts 1-3 (with 1b) need device-mapper and run in the test VM ([`vm`]); parts 4-6
//! run on the host ([`host`]). A run of some parts (`--only`, VM or host
//! parts alike) keeps the other sections of the last results.json, each
//! marked with the run that measured it.

mod host;
pub mod report;
mod vm;

use std::fs;
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::kernel::GuestKernel;
use report::Section;

#[derive(Args)]
pub struct BenchArgs {
    /// A short smoke run: one guest kernel, fewer repetitions, shorter fio runs.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (the other sections of bench/results.json are kept).
    #[arg(long = "only", value_name = "PART", num_args = 1..)]
    only: Vec<Part>,
    /// Guest kernels for the VM parts (repeatable; default: 6.1 and 6.12, 6.1 alone with --quick).
    #[arg(long = "kernel", value_name = "VERSION")]
    kernels: Vec<GuestKernel>,
}

/// A part of the benchmark that can be run alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// 1. The write stall of `hcp start`/`remove` against LVM and a bare suspend (VM).
    Switch,
    /// 1b. The same with 32 and 128 MiB of dirty page cache, and `syncfs` alone (VM).
    Dirty,
    /// 2. fio throughput and latency under an hcp session and an LVM snapshot (VM).
    Write,
    /// 3. `hcp list` and `hcp stats` wall time with 1 and 16 sessions (VM).
    Commands,
    /// 3b. `hcp rollback` against `lvconvert --merge` on the same changes (VM).
    Merge,
    /// 3c. `hcp export` against `dd`, and an incremental's size (VM).
    Export,
    /// 4. fio IOPS untraced, traced by hcp, by bpftrace and by the floor (host).
    Tracing,
    /// 5. Block events per second hcp's tracer handles, and what it loses (host).
    Capacity,
    /// 6. Peak RSS of hcp's commands and the tracer's BPF memory (host).
    Memory,
}

impl Part {
    const ALL: [Part; 8] = [
        Part::Switch,
        Part::Dirty,
        Part::Write,
        Part::Commands,
        Part::Merge,
        Part::Tracing,
        Part::Capacity,
        Part::Memory,
    ];

    /// The part's name on the command line, and in the guest.
    fn name(self) -> &'static str {
        match self {
            Part::Switch => "switch",
            Part::Dirty => "dirty",
            Part::Write => "write",
            Part::Commands => "commands",
            Part::Merge => "merge",
            Part::Export => "export",
            Part::Tracing => "tracing",
            Part::Capacity => "capacity",
            Part::Memory => "memory",
        }
    }

    /// Whether the part runs on the host (eBPF, loop devices) rather than
    /// in the test VM.
    fn on_host(self) -> bool {
        matches!(self, Part::Tracing | Part::Capacity | Part::Memory)
    }

    /// The ids of the sections the part writes start with this.
    fn section_prefix(self) -> &'static str {
        match self {
            Part::Switch => "switch_cost",
            Part::Dirty => "dirty_switch",
            Part::Write => "write_cost",
            Part::Commands => "command_latency",
            Part::Merge => "merge_speed",
            Part::Export => "export_speed",
            Part::Tracing => "tracing_overhead",
            Part::Capacity => "tracer_capacity",
            Part::Memory => "memory",
        }
    }
}

/// Whether a section of an earlier run is kept by a run of `parts`: it is
/// unless one of them measures it anew.
fn kept_by(parts: &[Part], section_id: &str) -> bool {
    !parts.iter().any(|p| section_id.starts_with(p.section_prefix()))
}

/// Where results go, relative to the workspace root.
const RESULTS_JSON: &str = "bench/results.json";
const RESULTS_MD: &str = "bench/RESULTS.md";

/// Which run measured a section.
#[derive(Clone, Debug, PartialEq)]
struct Provenance {
    command: String,
    date: String,
    quick: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    crate::setup::run()?;
    let started = Instant::now();
    let load_at_start = load_average();
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let parts: Vec<Part> = if args.only.is_empty() { Part::ALL.to_vec() } else { args.only.clone() };
    let kernels = match (&args.kernels[..], args.quick) {
        ([], true) => vec![GuestKernel::V6_1],
        ([], false) => vec![GuestKernel::V6_1, GuestKernel::V6_12],
        (k, _) => k.to_vec(),
    };
    let this = Provenance { command: command_line(args), date, quick: args.quick };

    let mut sections = Vec::new();
    let mut guest_kernels = Vec::new();
    let (host_parts, vm_parts): (Vec<Part>, Vec<Part>) = parts.iter().partition(|p| p.on_host());
    if !vm_parts.is_empty() {
        let names: Vec<&str> = vm_parts.iter().map(|p| p.name()).collect();
        let (s, g) = vm::run(args.quick, &names, &kernels)?;
        sections.extend(s);
        guest_kernels.extend(g);
    }
    if !host_parts.is_empty() {
        sections.extend(host::run(args.quick, &host_parts)?);
    }

    let root = crate::workspace_root();
    let json_path = root.join(RESULTS_JSON);
    let mut measured: Vec<(Section, Provenance)> = sections.into_iter().map(|s| (s, this.clone())).collect();
    if !args.only.is_empty() {
        // Keep what this run did not measure, marked with the run that did.
        let (kept, kernels_then) = previous_sections(&json_path);
        measured.extend(kept.into_iter().filter(|(s, _)| kept_by(&parts, &s.id)));
        for k in kernels_then {
            if !guest_kernels.contains(&k) {
                guest_kernels.push(k);
            }
        }
        measured.sort_by_key(|(s, _)| rank(&s.id));
    }
    let doc = Document {
        run: this,
        seconds: started.elapsed().as_secs_f64(),
        machine: machine(load_at_start),
        guest_kernels,
        tools: tools(),
        sections: measured,
    };
    fs::create_dir_all(root.join("bench"))?;
    fs::write(&json_path, serde_json::to_string_pretty(&doc.to_json())? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = root.join(RESULTS_MD);
    fs::write(&md_path, doc.to_markdown()).with_context(|| format!("writing {}", md_path.display()))?;
    let (met, all) = doc.targets_met();
    eprintln!(
        "xtask bench: done in {:.0} s; targets met: {met} of {all}; wrote {} and {}",
        doc.seconds,
        json_path.display(),
        md_path.display()
    );
    Ok(())
}

fn command_line(args: &BenchArgs) -> String {
    let mut cmd = String::from("cargo xtask bench");
    if args.quick {
        cmd += " --quick";
    }
    if !args.only.is_empty() {
        cmd += " --only";
        for p in &args.only {
            cmd = cmd + " " + p.name();
        }
    }
    for k in &args.kernels {
        cmd += &format!(" --kernel {k}");
    }
    cmd
}

/// Where a section goes in the report: parts in their order (a stable sort
/// keeps kernels in their order within a part), anything unknown last.
fn rank(id: &str) -> usize {
    Part::ALL.iter().position(|p| id.starts_with(p.section_prefix())).unwrap_or(Part::ALL.len())
}

/// The sections of an earlier results.json, with the run that measured
/// each, and its guest kernels.
fn previous_sections(path: &std::path::Path) -> (Vec<(Section, Provenance)>, Vec<String>) {
    let Some(doc) = fs::read_to_string(path).ok().and_then(|s| serde_json::from_str::<Value>(&s).ok()) else {
        return (Vec::new(), Vec::new());
    };
    let kernels = doc["guest_kernels"]
        .as_array()
        .map(|k| k.iter().filter_map(|k| Some(k.as_str()?.to_string())).collect())
        .unwrap_or_default();
    let Some(sections) = doc["sections"].as_array() else {
        return (Vec::new(), kernels);
    };
    let sections = sections
        .iter()
        .filter_map(|v| {
            let m = &v["measured_by"];
            let prov = Provenance {
                command: m["command"].as_str()?.into(),
                date: m["date"].as_str()?.into(),
                quick: m["quick"].as_bool()?,
            };
            Some((Section::from_json(v)?, prov))
        })
        .collect();
    (sections, kernels)
}

/// Everything one results.json holds.
struct Document {
    run: Provenance,
    seconds: f64,
    machine: Value,
    guest_kernels: Vec<String>,
    tools: Value,
    sections: Vec<(Section, Provenance)>,
}

impl Document {
    fn to_json(&self) -> Value {
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|(s, p)| {
                let mut v = s.to_json();
                v["measured_by"] = json!({"command": p.command, "date": p.date, "quick": p.quick});
                v
            })
            .collect();
        json!({
            "schema": "hcp-bench/1",
            "command": self.run.command,
            "date": self.run.date,
            "quick": self.run.quick,
            "seconds": self.seconds,
            "machine": self.machine,
            "guest_kernels": self.guest_kernels,
            "tools": self.tools,
            "sections": sections,
        })
    }

    fn targets_met(&self) -> (usize, usize) {
        let targets = self.sections.iter().flat_map(|(s, _)| &s.targets);
        (targets.clone().filter(|t| t.met).count(), targets.count())
    }

    fn to_markdown(&self) -> String {
        let m = &self.machine;
        let mut md = String::from("# hcp benchmark results\n\n");
        md += "Generated from `bench/results.json` by `cargo xtask bench`; do not edit by hand.\n\n";
        md += &format!(
            "- **Produced by** `{}` on {}, in {:.0} s{}.\n",
            self.run.command,
            self.run.date,
            self.seconds,
            if self.run.quick {
                " — a **quick run** (a smoke run: one kernel, fewer repetitions, shorter fio runs; \
                 the spread is wider than a full run's)"
            } else {
                ""
            }
        );
        md += &format!(
            "- **Machine**: {} ({} cores), host Linux {}; the VM parts run under {}.\n",
            m["cpu_model"].as_str().unwrap_or("?"),
            m["cores"],
            m["host_kernel"].as_str().unwrap_or("?"),
            m["vm"].as_str().unwrap_or("?")
        );
        if let (Some(start), Some(end)) = (m["load_at_start"].as_f64(), m["load_at_end"].as_f64()) {
            md += &format!(
                "- **Host load** (1-minute average) at the start and end of the run: {start:.2} and {end:.2}; \
                 the run itself keeps about one core busy, so a higher load means other work shared the machine \
                 and widened the spread.\n"
            );
        }
        if !self.guest_kernels.is_empty() {
            md += &format!("- **Guest kernels**: {} (Debian's own builds).\n", self.guest_kernels.join(", "));
        }
        let tools: Vec<String> = ["hcp", "lvm", "fio", "bpftrace", "qemu"]
            .iter()
            .map(|t| self.tools[*t].as_str().map_or(format!("{t}: not installed"), str::to_string))
            .collect();
        md += &format!("- **Tools**: {}.\n\n", tools.join("; "));
        md += "**How to read this.** The VM is software-emulated (qemu TCG, no KVM): its absolute times are \
               those of an emulated machine, many times slower than real hardware, and only the *ratios* mean \
               anything. Every ratio is taken per pair of runs measured side by side in one loop (A, B, A, B, \
               ..., the order rotating each repetition), and the median, min and max of those per-pair ratios \
               are reported, never a ratio of medians. Every figure lists how many runs it has; every run is \
               in `bench/results.json`.\n\n";
        let (met, all) = self.targets_met();
        if all > 0 {
            md += &format!(
                "## Targets: {met} of {all} met\n\n| section | target | measured (median) | met |\n|---|---|---|---|\n"
            );
            for (s, _) in &self.sections {
                for t in &s.targets {
                    let met = if t.met { "yes" } else { "**no**" };
                    md += &format!("| {} | {} | {} | {met} |\n", s.title, t.what, t.measured);
                }
            }
            md.push('\n');
        }
        for (s, p) in &self.sections {
            if *p != self.run {
                md += &format!(
                    "*The next section is from an earlier run: `{}` on {}{}.*\n\n",
                    p.command,
                    p.date,
                    if p.quick { " (quick)" } else { "" }
                );
            }
            md += &s.to_markdown();
            md.push('\n');
        }
        md
    }
}

/// The host's 1-minute load average: what else shared the machine.
fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// The host: CPU, cores, kernel, how the VM runs, and how busy the host
/// was at the start and end of the run.
fn machine(load_at_start: Option<f64>) -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
    });
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).ok();
    json!({
        "cpu_model": cpu,
        "cores": cores,
        "host_kernel": kernel,
        // vm.rs always forces TCG: KVM is unusable on these hosts (see README).
        "accel": "tcg",
        "vm": "qemu TCG (software emulation, multi-threaded; 1 vCPU, 2 GiB)",
        "load_at_start": load_at_start,
        "load_at_end": load_average(),
    })
}

/// Versions of what was measured and what measured it (null: not installed).
fn tools() -> Value {
    let first_line = |cmd: &str, args: &[&str]| -> Option<String> {
        let out = Command::new(cmd).args(args).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
    };
    let hcp = vm::target_bin("hcp");
    json!({
        "hcp": first_line(&hcp.display().to_string(), &["version"]),
        "lvm": first_line("lvm", &["version"]).map(|l| l.replace("LVM version:", "LVM").split_whitespace().collect::<Vec<_>>().join(" ")),
        "fio": first_line("fio", &["--version"]),
        "bpftrace": first_line("bpftrace", &["--version"]),
        "qemu": first_line("qemu-system-x86_64", &["--version"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::{Figure, Target};

    fn doc(sections: Vec<(Section, Provenance)>, run: Provenance) -> Document {
        Document {
            run,
            seconds: 12.0,
            machine: json!({"cpu_model": "cpu", "cores": 2, "host_kernel": "6.18", "vm": "qemu TCG"}),
            guest_kernels: vec!["6.1.0-41-amd64".into()],
            tools: json!({"hcp": "hcp 0.1.0", "lvm": null}),
            sections,
        }
    }

    fn section(id: &str, met: bool) -> Section {
        Section {
            id: id.into(),
            title: format!("Title {id}"),
            method: "m".into(),
            figures: vec![Figure::with_runs("f", "w", "ms", vec![1.0, 2.0, 3.0])],
            targets: vec![Target { what: "t".into(), measured: "x".into(), met }],
        }
    }

    #[test]
    fn markdown_says_how_it_was_made_and_counts_targets() {
        let now = Provenance {
            command: "cargo xtask bench --quick".into(),
            date: "2026-11-27T12:00:00Z".into(),
            quick: true,
        };
        let old = Provenance { command: "cargo xtask bench".into(), date: "2026-11-26T12:00:00Z".into(), quick: false };
        let d = doc(vec![(section("a/6.1", true), now.clone()), (section("b/6.1", false), old)], now);
        let md = d.to_markdown();
        assert!(md.contains("`cargo xtask bench --quick` on 2026-11-27T12:00:00Z"), "{md}");
        assert!(md.contains("quick run"), "{md}");
        assert!(md.contains("TCG"), "{md}");
        assert!(md.contains("Targets: 1 of 2 met"), "{md}");
        assert!(md.contains("earlier run: `cargo xtask bench` on 2026-11-26"), "{md}");
        assert!(md.contains("hcp 0.1.0; lvm: not installed"), "{md}");
        assert_eq!(d.targets_met(), (1, 2));
    }

    #[test]
    fn results_json_round_trips_sections_with_their_run() {
        let now = Provenance { command: "cargo xtask bench".into(), date: "2026-11-27T12:00:00Z".into(), quick: false };
        let d = doc(vec![(section("switch_cost/6.1", true), now.clone())], now.clone());
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.json");
        fs::write(&path, serde_json::to_string(&d.to_json()).unwrap()).unwrap();
        let (back, kernels) = previous_sections(&path);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(kernels, vec!["6.1.0-41-amd64".to_string()]);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1, now);
        assert_eq!(back[0].0.to_json(), d.sections[0].0.to_json());
    }

    #[test]
    fn sections_keep_the_order_of_the_parts() {
        let mut ids = vec![
            "dirty_switch/6.1",
            "memory",
            "command_latency/6.1",
            "tracer_capacity",
            "tracing_overhead",
            "switch_cost/6.1",
            "write_cost/x/6.1",
        ];
        ids.sort_by_key(|id| rank(id));
        assert_eq!(
            ids,
            vec![
                "switch_cost/6.1",
                "dirty_switch/6.1",
                "write_cost/x/6.1",
                "command_latency/6.1",
                "tracing_overhead",
                "tracer_capacity",
                "memory"
            ]
        );
    }

    #[test]
    fn only_takes_host_parts_too() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        use clap::Parser;
        let cli = Cli::try_parse_from(["bench", "--quick", "--only", "tracing", "memory", "--only", "switch"]).unwrap();
        assert_eq!(cli.bench.only, vec![Part::Tracing, Part::Memory, Part::Switch]);
        assert!(Cli::try_parse_from(["bench", "--only", "host"]).is_err(), "not a part");
        let (host, vm): (Vec<Part>, Vec<Part>) = cli.bench.only.iter().partition(|p| p.on_host());
        assert_eq!((host, vm), (vec![Part::Tracing, Part::Memory], vec![Part::Switch]));
        assert_eq!(command_line(&cli.bench), "cargo xtask bench --quick --only tracing memory switch");
    }

    #[test]
    fn a_run_of_some_parts_keeps_the_other_sections() {
        let only = [Part::Tracing];
        assert!(!kept_by(&only, "tracing_overhead"));
        for id in
            ["switch_cost/6.1", "write_cost/randwrite_4k/6.12", "command_latency/6.1", "tracer_capacity", "memory"]
        {
            assert!(kept_by(&only, id), "{id}");
        }
        let only = [Part::Write, Part::Capacity, Part::Memory];
        for (id, kept) in [
            ("write_cost/seqwrite_1m/6.1", false),
            ("tracer_capacity", false),
            ("memory", false),
            ("switch_cost/6.1", true),
        ] {
            assert_eq!(kept_by(&only, id), kept, "{id}");
        }
    }

    #[test]
    fn command_line_names_the_options() {
        let args =
            BenchArgs { quick: true, only: vec![Part::Switch, Part::Commands], kernels: vec![GuestKernel::V6_12] };
        assert_eq!(command_line(&args), "cargo xtask bench --quick --only switch commands --kernel 6.12");
    }
}
