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

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::report::{significant, Figure, Section, Target};
use super::Part;
use crate::workspace_root;

/// Where hcp pins its tracer: the benchmark needs it to itself.
const PIN_DIR: &str = "/sys/fs/bpf/hcp";

/// How long and how often each part runs.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Seconds of fio per measured run.
    runtime_s: u32,
    /// Rounds of the overhead part (each round runs every case once).
    rounds: usize,
    /// Rounds of the capacity part (untraced and traced once each).
    capacity_rounds: usize,
    /// Runs of each hcp command for its peak RSS.
    rss_repeats: usize,
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

/// The fio load of both fio parts: 4 KiB random writes, O_DIRECT, libaio at
/// queue depth 32, one job per device.
const FIO_LOAD: &[&str] = &[
    "--ioengine=libaio",
    "--direct=1",
    "--rw=randwrite",
    "--bs=4k",
    "--iodepth=32",
    "--norandommap",
    "--randrepeat=0",
    "--time_based",
];
const FIO_LOAD_TEXT: &str = "fio 4 KiB random writes, O_DIRECT, libaio at queue depth 32, one job per device";

/// Size of each loop device's backing file in /dev/shm.
const LOOP_BYTES: u64 = 256 << 20;

/// Devices the capacity part drives at once.
const CAPACITY_DEVICES: usize = 4;

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
struct Bins {
    hcp: PathBuf,
    driver: PathBuf,
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

// ---------------------------------------------------------------------------
// Part 4: tracing overhead

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    None,
    Hcp,
    Bpftrace,
    Floor,
}

impl Case {
    const ALL: [Case; 4] = [Case::None, Case::Hcp, Case::Bpftrace, Case::Floor];

    fn name(self) -> &'static str {
        match self {
            Case::None => "none",
            Case::Hcp => "hcp",
            Case::Bpftrace => "bpftrace",
            Case::Floor => "floor",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Case::None => "untraced",
            Case::Hcp => "traced by hcp",
            Case::Bpftrace => "traced by the bpftrace latency script",
            Case::Floor => "with the floor's empty programs attached",
        }
    }
}

/// The bpftrace baseline: biolatency in the form bpftrace users write it
/// with tracepoints (kprobes, which bpftrace's own biolatency.bt uses, are
/// not available on every kernel, this host's included): request issue to
/// completion, keyed by device and sector, a histogram per device, for the
/// traced device only. `ready` is printed once every probe is attached.
fn bpftrace_script(kernel_dev: u32) -> String {
    format!(
        "BEGIN {{ printf(\"ready\\n\"); }}\n\
         tracepoint:block:block_rq_issue /args->dev == {kernel_dev}/ {{ @start[args->dev, args->sector] = nsecs; }}\n\
         tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/ {{\n\
         \x20 @usecs[args->dev] = hist((nsecs - @start[args->dev, args->sector]) / 1000);\n\
         \x20 delete(@start[args->dev, args->sector]);\n\
         }}\n\
         END {{ clear(@start); }}\n"
    )
}

/// What the other parts use from a traced run: the driver's last report.
struct TracedRuns {
    reports: Vec<Value>,
}

/// One short hcp-traced fio run on `devices` loop devices, for the memory
/// part when the parts that would have made such runs are not run.
fn traced_runs(bins: &Bins, devices: usize) -> Result<TracedRuns> {
    let devices = (0..devices).map(LoopDevice::new).collect::<Result<Vec<_>>>()?;
    let run = measured_run(Case::Hcp, bins, &devices, 2)?;
    Ok(TracedRuns { reports: vec![run.trace.context("the traced run made no report")?] })
}

fn tracing_overhead(bins: &Bins, plan: &Plan) -> Result<(Section, TracedRuns)> {
    let device = LoopDevice::new(0)?;
    let devices = std::slice::from_ref(&device);
    // Not measured: the first run after the device appears.
    fio(devices, 1)?;

    let mut iops: Vec<Figure> = Case::ALL
        .iter()
        .map(|c| Figure::new(&format!("iops/{}", c.name()), &format!("fio IOPS, {}", c.what()), "IOPS"))
        .collect();
    let mut ratios: Vec<Figure> = Case::ALL[1..]
        .iter()
        .map(|c| {
            Figure::new(
                &format!("iops_ratio/{}", c.name()),
                &format!("IOPS {} / IOPS untraced, same round", c.what()),
                "x",
            )
        })
        .collect();
    let mut overheads: Vec<Figure> = Case::ALL[1..]
        .iter()
        .map(|c| Figure::new(&format!("overhead/{}", c.name()), &format!("1 - iops_ratio/{}", c.name()), "x"))
        .collect();
    let mut cpu: Vec<Figure> = Case::ALL
        .iter()
        .map(|c| {
            Figure::new(
                &format!("cpu_ns_per_io/{}", c.name()),
                &format!("busy CPU time of the whole machine (/proc/stat) / I/Os, {}", c.what()),
                "ns",
            )
        })
        .collect();
    let mut fio_cpu: Vec<Figure> = Case::ALL
        .iter()
        .map(|c| {
            Figure::new(
                &format!("fio_cpu_ns_per_io/{}", c.name()),
                &format!("fio's own user + system time / I/Os, {}", c.what()),
                "ns",
            )
        })
        .collect();
    let mut traced = TracedRuns { reports: Vec::new() };

    for round in 0..plan.rounds {
        let mut round_iops = [0.0f64; Case::ALL.len()];
        // Each round starts one case later, so no case always runs first.
        for k in 0..Case::ALL.len() {
            let i = (round + k) % Case::ALL.len();
            let case = Case::ALL[i];
            let run = measured_run(case, bins, devices, plan.runtime_s)?;
            eprintln!(
                "bench (host): overhead round {}/{}: {:<8} {:>9.0} IOPS",
                round + 1,
                plan.rounds,
                case.name(),
                run.fio.iops
            );
            round_iops[i] = run.fio.iops;
            iops[i].runs.push(run.fio.iops);
            cpu[i].runs.push(run.busy_ns / run.fio.ios as f64);
            fio_cpu[i].runs.push(run.fio.cpu_s * 1e9 / run.fio.ios as f64);
            if let (Some(before), Some(after)) = (&run.trace_before, run.trace) {
                let counts = DevCounts::of(&after, &device.id)?.since(&DevCounts::of(before, &device.id)?);
                // The tracer must have seen the load it is charged for; the
                // capacity part checks every event.
                ensure!(counts.requests > 0, "hcp counted no request on {}", device.path.display());
                let skipped = recursion_misses(&after)?.saturating_sub(recursion_misses(before)?);
                if counts.requests != run.kernel_ios[0] || counts.lost > 0 || skipped > 0 {
                    eprintln!(
                        "bench (host): hcp counted {} requests where the kernel completed {}; lost {}, skipped runs {}",
                        counts.requests, run.kernel_ios[0], counts.lost, skipped
                    );
                }
                traced.reports.push(after);
            }
        }
        for i in 1..Case::ALL.len() {
            let ratio = round_iops[i] / round_iops[0];
            ratios[i - 1].runs.push(ratio);
            overheads[i - 1].runs.push(1.0 - ratio);
        }
    }

    let median = |name: &str| overheads.iter().find(|f| f.name == name).and_then(Figure::median).unwrap_or(f64::NAN);
    let (hcp, bpftrace, floor) = (median("overhead/hcp"), median("overhead/bpftrace"), median("overhead/floor"));
    let cpu_median = |name: &str| cpu.iter().find(|f| f.name == name).and_then(Figure::median).unwrap_or(f64::NAN);
    let targets = vec![
        Target {
            what: "hcp's overhead <= 0.5 x bpftrace's".into(),
            measured: format!(
                "hcp {}, bpftrace {} (limit {})",
                significant(hcp),
                significant(bpftrace),
                significant(0.5 * bpftrace)
            ),
            met: hcp <= 0.5 * bpftrace,
        },
        Target {
            what: "hcp's overhead <= 1.5 x the floor's".into(),
            measured: format!(
                "hcp {}, floor {} (limit {}){}; CPU per I/O over untraced's (medians): hcp {:+.0} ns, floor {:+.0} ns",
                significant(hcp),
                significant(floor),
                significant(1.5 * floor),
                if floor <= 0.0 { ", the floor's own overhead lost in the run-to-run noise" } else { "" },
                cpu_median("cpu_ns_per_io/hcp") - cpu_median("cpu_ns_per_io/none"),
                cpu_median("cpu_ns_per_io/floor") - cpu_median("cpu_ns_per_io/none"),
            ),
            met: hcp <= 1.5 * floor,
        },
    ];
    let method = format!(
        "{FIO_LOAD_TEXT}, {runtime} s per run, on one loop device over a {size} MiB file in /dev/shm (tmpfs), \
         on the host ({kernel}, {cpus} CPUs). {rounds} rounds; each round runs every case once, untraced, \
         traced by hcp, traced by bpftrace, and the floor, the starting case rotating from round to round, \
         so every case sees the same background noise. Ratios are taken within a round; overhead = 1 - ratio. \
         hcp: its tracer as a traced session attaches it (the pinned set under /sys/fs/bpf/hcp: one tp_btf \
         program on each of block_bio_queue, block_bio_remap, block_bio_complete, block_rq_issue and \
         block_rq_complete, counting and timing), the device added as a session's. \
         bpftrace ({bpftrace}): request latency from block_rq_issue to block_rq_complete (classic tracepoints, \
         keyed by device and sector, filtered to the device) into a histogram per device, biolatency's job. \
         Floor: empty programs on exactly hcp's five events with hcp's attach type (tp_btf), loaded alone. \
         CPU per I/O: the busy time of all CPUs (user, nice, system, irq, softirq, steal in /proc/stat) over \
         the fio run, divided by the I/Os fio did: it includes the loop device's worker and the programs \
         wherever they run, and any other load on the machine; fio's own time misses the loop worker. ({fio})",
        runtime = plan.runtime_s,
        size = LOOP_BYTES >> 20,
        kernel = kernel_release(),
        cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
        rounds = plan.rounds,
        bpftrace = tool_version("bpftrace"),
        fio = tool_version("fio"),
    );
    let mut figures = iops;
    figures.extend(ratios);
    figures.extend(overheads);
    figures.extend(cpu);
    figures.extend(fio_cpu);
    let section =
        Section { id: "tracing_overhead".into(), title: "Tracing overhead (host)".into(), method, figures, targets };
    Ok((section, traced))
}

/// One fio run under one case, with the machine's CPU time around it.
struct MeasuredRun {
    fio: FioRun,
    /// Busy CPU time of all CPUs during the fio run.
    busy_ns: f64,
    /// Fraction of all CPUs' time that was busy.
    busy_fraction: f64,
    /// The driver's reports before and after fio (hcp only).
    trace_before: Option<Value>,
    trace: Option<Value>,
    /// The kernel's completed I/Os per device during the run.
    kernel_ios: Vec<u64>,
}

fn measured_run(case: Case, bins: &Bins, devices: &[LoopDevice], runtime_s: u32) -> Result<MeasuredRun> {
    let mut tracer = match case {
        Case::None => Tracer::Nothing,
        Case::Hcp => Tracer::Driver(Driver::start(&bins.driver, "hcp", devices)?),
        Case::Floor => Tracer::Driver(Driver::start(&bins.driver, "floor", &[])?),
        Case::Bpftrace => {
            ensure!(devices.len() == 1, "the bpftrace script traces one device");
            Tracer::Bpftrace(Bpftrace::start(&bpftrace_script(devices[0].id.kernel()))?)
        }
    };
    let trace_before = match (&mut tracer, case) {
        (Tracer::Driver(d), Case::Hcp) => Some(d.read()?),
        _ => None,
    };
    let kernel_before = devices.iter().map(LoopDevice::completed_ios).collect::<Result<Vec<_>>>()?;
    let cpu_before = CpuTimes::now()?;
    let fio = fio(devices, runtime_s)?;
    let cpu_after = CpuTimes::now()?;
    let kernel_after = devices.iter().map(LoopDevice::completed_ios).collect::<Result<Vec<_>>>()?;
    let trace = match tracer {
        Tracer::Nothing => None,
        Tracer::Driver(d) => Some(d.stop()?).filter(|_| case == Case::Hcp),
        Tracer::Bpftrace(b) => {
            let out = b.stop()?;
            ensure!(out.contains("@usecs"), "bpftrace printed no latency histogram:\n{out}");
            None
        }
    };
    let busy = cpu_after.busy.saturating_sub(cpu_before.busy);
    let total = cpu_after.total.saturating_sub(cpu_before.total).max(1);
    Ok(MeasuredRun {
        fio,
        busy_ns: busy as f64 * 1e9 / clock_ticks_per_s(),
        busy_fraction: busy as f64 / total as f64,
        trace_before,
        trace,
        kernel_ios: kernel_after.iter().zip(&kernel_before).map(|(a, b)| a.saturating_sub(*b)).collect(),
    })
}

// ---------------------------------------------------------------------------
// Part 5: tracer capacity

fn tracer_capacity(bins: &Bins, plan: &Plan) -> Result<(Section, TracedRuns)> {
    let devices = (0..CAPACITY_DEVICES).map(LoopDevice::new).collect::<Result<Vec<_>>>()?;
    fio(&devices, 1)?;

    let mut untraced_iops = Figure::new("iops/none", "fio IOPS, all devices, untraced", "IOPS");
    let mut traced_iops = Figure::new("iops/hcp", "fio IOPS, all devices, traced by hcp", "IOPS");
    let mut ratio = Figure::new("iops_ratio/hcp", "traced / untraced IOPS, same round", "x");
    let mut events = Figure::new(
        "events_per_s/hcp",
        "block events hcp's programs handled on the traced devices per second: bios queued + requests \
         issued (latency samples) + requests completed",
        "events/s",
    );
    let mut requests = Figure::new("requests_per_s/hcp", "requests hcp counted completed per second", "req/s");
    let mut lost = Figure::new(
        "lost_events/hcp",
        "hcp's loss counters: in-flight map full, histogram map full, completions without a start, failed reads",
        "events",
    );
    let mut uncounted = Figure::new(
        "uncounted_requests/hcp",
        "|requests the kernel completed (/sys/block/*/stat) - requests hcp counted completed|",
        "requests",
    );
    let mut unsampled =
        Figure::new("unsampled_requests/hcp", "|requests hcp counted completed - request latency samples|", "requests");
    let mut skipped = Figure::new(
        "skipped_runs/hcp",
        "runs of hcp's programs the kernel skipped because a BPF program was already running on that CPU \
         (recursion_misses in the programs' fdinfo)",
        "runs",
    );
    let mut busy = Figure::new("cpu_busy/hcp", "fraction of all CPUs' time busy during the traced runs", "x");
    let mut traced = TracedRuns { reports: Vec::new() };

    for round in 0..plan.capacity_rounds {
        let order = if round % 2 == 0 { [Case::None, Case::Hcp] } else { [Case::Hcp, Case::None] };
        let mut round_iops = [0.0f64; 2];
        for case in order {
            let run = measured_run(case, bins, &devices, plan.runtime_s)?;
            eprintln!(
                "bench (host): capacity round {}/{}: {:<5} {:>9.0} IOPS",
                round + 1,
                plan.capacity_rounds,
                case.name(),
                run.fio.iops
            );
            if case == Case::None {
                round_iops[0] = run.fio.iops;
                untraced_iops.runs.push(run.fio.iops);
                continue;
            }
            round_iops[1] = run.fio.iops;
            traced_iops.runs.push(run.fio.iops);
            busy.runs.push(run.busy_fraction);
            let (before, after) = (run.trace_before.context("no first read")?, run.trace.context("no last read")?);
            let (mut n_events, mut n_requests, mut n_lost) = (0u64, 0u64, 0u64);
            let (mut n_uncounted, mut n_unsampled) = (0u64, 0u64);
            for (device, kernel_ios) in devices.iter().zip(&run.kernel_ios) {
                let d = DevCounts::of(&after, &device.id)?.since(&DevCounts::of(&before, &device.id)?);
                n_events += d.bios + d.samples + d.requests;
                n_requests += d.requests;
                n_lost += d.lost;
                n_uncounted += d.requests.abs_diff(*kernel_ios);
                n_unsampled += d.requests.abs_diff(d.samples);
            }
            n_lost += unattributed_losses(&after)?.saturating_sub(unattributed_losses(&before)?);
            events.runs.push(n_events as f64 / run.fio.runtime_s);
            requests.runs.push(n_requests as f64 / run.fio.runtime_s);
            lost.runs.push(n_lost as f64);
            uncounted.runs.push(n_uncounted as f64);
            unsampled.runs.push(n_unsampled as f64);
            skipped.runs.push(recursion_misses(&after)?.saturating_sub(recursion_misses(&before)?) as f64);
            traced.reports.push(after);
        }
        ratio.runs.push(round_iops[1] / round_iops[0]);
    }

    let all_zero = |f: &Figure| !f.runs.is_empty() && f.runs.iter().all(|v| *v == 0.0);
    let targets = vec![Target {
        what: format!("no lost, uncounted or skipped event with {CAPACITY_DEVICES} devices at fio's full speed"),
        measured: format!(
            "{} events/s; worst run: lost {}, uncounted {}, unsampled {}, skipped {}",
            events.median().map_or("–".into(), significant),
            lost.max().map_or("–".into(), significant),
            uncounted.max().map_or("–".into(), significant),
            unsampled.max().map_or("–".into(), significant),
            skipped.max().map_or("–".into(), significant),
        ),
        met: all_zero(&lost) && all_zero(&uncounted) && all_zero(&unsampled) && all_zero(&skipped),
    }];
    let method = format!(
        "{FIO_LOAD_TEXT}, on {CAPACITY_DEVICES} loop devices over {size} MiB files in /dev/shm at once, \
         {runtime} s per run, {rounds} rounds of one untraced and one hcp-traced run (order alternating). \
         hcp's counters are read just before and just after fio; the kernel's own count of completed \
         requests per device (/sys/block/*/stat) is the reference every request must be in. This is the \
         highest load fio drives here: {cpus} CPUs run fio and the loop workers, so `cpu_busy` near 1 means \
         the machine, not the tracer, sets the rate; the tracer's own limits are its in-flight table (65536 \
         slots, and 8192 more entries for starts whose slot is taken) and its histogram map (1024 keys), \
         far from full at this load. \
         hcp's programs are tp_btf programs, which the kernel skips only when one would interrupt itself \
         on a CPU (the same event firing in an interrupt while its program runs): such a run is counted \
         only in the program's recursion_misses, which is read too.",
        size = LOOP_BYTES >> 20,
        runtime = plan.runtime_s,
        rounds = plan.capacity_rounds,
        cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let section = Section {
        id: "tracer_capacity".into(),
        title: "Tracer capacity (host)".into(),
        method,
        figures: vec![untraced_iops, traced_iops, ratio, events, requests, lost, uncounted, unsampled, skipped, busy],
        targets,
    };
    Ok((section, traced))
}

/// What hcp counted on one device (from a driver report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DevCounts {
    bios: u64,
    requests: u64,
    /// Request latency samples: requests whose issue and completion were seen.
    samples: u64,
    /// Every loss counter of the device.
    lost: u64,
}

impl DevCounts {
    fn of(report: &Value, dev: &DevId) -> Result<DevCounts> {
        let d = &report["devices"][dev.to_string()];
        ensure!(d.is_object(), "the driver reported nothing for device {dev}: {report}");
        let n = |v: &Value| v.as_u64().with_context(|| format!("not a count: {v} in {d}"));
        let losses = &d["losses"];
        Ok(DevCounts {
            bios: n(&d["bios_queued"])?,
            requests: n(&d["requests_completed"])?,
            samples: n(&d["request_latency_samples"])?,
            lost: n(&losses["inflight_full"])?
                + n(&losses["histogram_full"])?
                + n(&losses["unmatched"])?
                + n(&losses["read_errors"])?
                + n(&d["record_read_errors"])?,
        })
    }

    fn since(&self, before: &DevCounts) -> DevCounts {
        DevCounts {
            bios: self.bios.saturating_sub(before.bios),
            requests: self.requests.saturating_sub(before.requests),
            samples: self.samples.saturating_sub(before.samples),
            lost: self.lost.saturating_sub(before.lost),
        }
    }
}

/// The kernel's count of skipped runs of hcp's programs so far.
fn recursion_misses(report: &Value) -> Result<u64> {
    report["bpf"]["recursion_misses"].as_u64().with_context(|| format!("no recursion_misses in {}", report["bpf"]))
}

fn unattributed_losses(report: &Value) -> Result<u64> {
    let l = &report["unattributed_losses"];
    ["inflight_full", "histogram_full", "unmatched", "read_errors"]
        .iter()
        .map(|k| l[k].as_u64().with_context(|| format!("no {k} in {l}")))
        .sum()
}

// ---------------------------------------------------------------------------
// Part 6: memory

/// The hcp commands that run on a host without device-mapper.
const COMMANDS: &[&[&str]] = &[&["version"], &["--help"], &["list"], &["list", "--json"], &["stats", "--prometheus"]];

fn memory(bins: &Bins, plan: &Plan, one: &TracedRuns, several: &TracedRuns) -> Result<Section> {
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
            "kernel memory of hcp's five programs (fdinfo memlock)",
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
         {breakdown}",
        repeats = plan.rss_repeats,
    );
    Ok(Section { id: "memory".into(), title: "Memory (host)".into(), method, figures, targets: Vec::new() })
}

/// The BPF memory in a driver report.
struct BpfMemory {
    program_bytes: u64,
    /// `(name, bytes)`
    maps: Vec<(String, u64)>,
}

impl BpfMemory {
    fn of(report: &Value) -> Result<BpfMemory> {
        let bpf = &report["bpf"];
        let maps = bpf["maps"]
            .as_array()
            .with_context(|| format!("no maps in {bpf}"))?
            .iter()
            .map(|m| {
                Ok((
                    m["name"].as_str().unwrap_or("?").to_string(),
                    m["memlock"].as_u64().with_context(|| format!("no memlock in {m}"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BpfMemory { program_bytes: bpf["program_bytes"].as_u64().context("no program_bytes")?, maps })
    }

    fn map_bytes(&self) -> u64 {
        self.maps.iter().map(|(_, b)| b).sum()
    }
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

// ---------------------------------------------------------------------------
// Tracers

enum Tracer {
    Nothing,
    Driver(Driver),
    Bpftrace(Bpftrace),
}

/// hcp-trace-bench, spoken to line by line.
struct Driver {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// It pins hcp's tracer: whatever it leaves there is ours to remove.
    pins: bool,
}

impl Driver {
    fn start(bin: &Path, mode: &str, devices: &[LoopDevice]) -> Result<Driver> {
        let pins = mode == "hcp";
        ensure!(!(pins && Path::new(PIN_DIR).exists()), "{PIN_DIR} exists: someone else's tracing is attached");
        let mut child = Command::new(bin)
            .arg(mode)
            .args(devices.iter().map(|d| &d.path))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let lines = line_reader(child.stdout.take().context("no stdout")?);
        let stdin = child.stdin.take();
        let mut driver = Driver { child: Some(child), stdin, lines, pins };
        let ready = driver.next_json(Duration::from_secs(60)).context("waiting for hcp-trace-bench to attach")?;
        ensure!(ready["ready"] == true, "hcp-trace-bench said {ready}");
        Ok(driver)
    }

    fn read(&mut self) -> Result<Value> {
        self.request("read")?;
        self.next_json(Duration::from_secs(30))
    }

    /// Its last report; it detaches and exits.
    fn stop(mut self) -> Result<Value> {
        self.request("stop")?;
        self.stdin = None;
        let last = self.next_json(Duration::from_secs(30))?;
        let status = wait_for(self.child.as_mut().context("driver gone")?, Duration::from_secs(30))?;
        ensure!(status.success(), "hcp-trace-bench exited with {status}");
        self.child = None;
        Ok(last)
    }

    fn request(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("driver stdin closed")?;
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).context("writing to hcp-trace-bench")
    }

    fn next_json(&mut self, timeout: Duration) -> Result<Value> {
        let line = self.lines.recv_timeout(timeout).context("hcp-trace-bench said nothing (see its stderr above)")?;
        serde_json::from_str(&line).with_context(|| format!("hcp-trace-bench printed `{line}`"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A driver that died before it detached leaves the pins behind.
        if self.pins && Path::new(PIN_DIR).exists() {
            let _ = std::fs::remove_dir_all(PIN_DIR);
        }
    }
}

/// bpftrace running a script; stopped with SIGINT, as a user stops it.
struct Bpftrace {
    child: Child,
    lines: Receiver<String>,
    /// Shown only when it fails: it always warns that it could not raise
    /// RLIMIT_MEMLOCK, which these kernels do not need.
    errors: Receiver<String>,
}

impl Bpftrace {
    fn start(script: &str) -> Result<Bpftrace> {
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bpftrace")?;
        let lines = line_reader(child.stdout.take().context("no stdout")?);
        let errors = line_reader(child.stderr.take().context("no stderr")?);
        let bpftrace = Bpftrace { child, lines, errors };
        loop {
            match bpftrace.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.trim() == "ready" => return Ok(bpftrace),
                Ok(_) => {}
                Err(_) => bail!("bpftrace did not attach in 60 s: {}", bpftrace.stderr()),
            }
        }
    }

    fn stderr(&self) -> String {
        self.errors.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Everything it printed after `ready` (its maps, at exit).
    fn stop(mut self) -> Result<String> {
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = wait_for(&mut self.child, Duration::from_secs(30))?;
        ensure!(status.success(), "bpftrace exited with {status}: {}", self.stderr());
        // Until its output ends (the reader's channel disconnects).
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            out.push(line);
        }
        Ok(out.join("\n"))
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lines a child prints, through a channel (so reads can time out).
fn line_reader(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > until {
            let _ = child.kill();
            bail!("a child process did not exit within {} s: killed", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// fio

/// What one fio run did, summed over its jobs.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FioRun {
    ios: u64,
    iops: f64,
    /// The longest job's run time.
    runtime_s: f64,
    /// fio's own user + system CPU time.
    cpu_s: f64,
}

fn fio(devices: &[LoopDevice], runtime_s: u32) -> Result<FioRun> {
    let mut cmd = Command::new("fio");
    cmd.arg("--output-format=json").args(FIO_LOAD).arg(format!("--runtime={runtime_s}s"));
    for (i, d) in devices.iter().enumerate() {
        cmd.arg(format!("--name=dev{i}")).arg(format!("--filename={}", d.path.display()));
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("running fio")?;
    ensure!(out.status.success(), "fio failed ({})", out.status);
    let run = parse_fio(&String::from_utf8_lossy(&out.stdout))?;
    ensure!(run.ios > 0, "fio did no I/O");
    Ok(run)
}

/// fio's `--output-format=json` (some versions print notes before it).
fn parse_fio(text: &str) -> Result<FioRun> {
    let start = text.find('{').context("no JSON in fio's output")?;
    let json: Value = serde_json::from_str(&text[start..]).context("parsing fio's JSON")?;
    let jobs = json["jobs"].as_array().context("no jobs in fio's JSON")?;
    ensure!(!jobs.is_empty(), "no jobs in fio's JSON");
    let mut run = FioRun { ios: 0, iops: 0.0, runtime_s: 0.0, cpu_s: 0.0 };
    for job in jobs {
        let num = |v: &Value| v.as_f64().with_context(|| format!("fio's JSON lacks a number: {v}"));
        ensure!(job["error"].as_i64() == Some(0), "fio job {} failed: error {}", job["jobname"], job["error"]);
        let runtime_s = num(&job["job_runtime"])? / 1000.0;
        for dir in ["read", "write", "trim"] {
            run.ios += job[dir]["total_ios"].as_u64().unwrap_or(0);
            run.iops += job[dir]["iops"].as_f64().unwrap_or(0.0);
        }
        run.runtime_s = run.runtime_s.max(runtime_s);
        run.cpu_s += (num(&job["usr_cpu"])? + num(&job["sys_cpu"])?) / 100.0 * runtime_s;
    }
    Ok(run)
}

// ---------------------------------------------------------------------------
// Loop devices, /proc and /sys

/// A device number as `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DevId {
    major: u32,
    minor: u32,
}

impl DevId {
    fn parse(text: &str) -> Result<DevId> {
        let (major, minor) = text.trim().split_once(':').with_context(|| format!("`{text}` is not major:minor"))?;
        Ok(DevId { major: major.parse()?, minor: minor.parse()? })
    }

    /// The kernel-internal `dev_t` that tracepoints record.
    fn kernel(self) -> u32 {
        (self.major << 20) | self.minor
    }
}

impl std::fmt::Display for DevId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A loop device over a file in /dev/shm, filled so that no write of a run
/// allocates memory; detached and deleted on drop.
struct LoopDevice {
    path: PathBuf,
    id: DevId,
    backing: PathBuf,
}

impl LoopDevice {
    fn new(n: usize) -> Result<LoopDevice> {
        let backing = PathBuf::from(format!("/dev/shm/hcp-bench-{}-{n}.img", std::process::id()));
        let mut file = File::create(&backing).with_context(|| format!("creating {}", backing.display()))?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..LOOP_BYTES / chunk.len() as u64 {
            file.write_all(&chunk)?;
        }
        drop(file);
        let out = Command::new("losetup").args(["--find", "--show"]).arg(&backing).output().context("losetup")?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&backing);
            bail!("losetup --find --show failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let mut device = LoopDevice { path, id: DevId { major: 0, minor: 0 }, backing };
        device.id = DevId::parse(&std::fs::read_to_string(device.sys().join("dev"))?)?;
        Ok(device)
    }

    fn sys(&self) -> PathBuf {
        Path::new("/sys/block").join(self.path.file_name().unwrap_or_default())
    }

    /// Reads and writes the kernel has completed on the device so far.
    fn completed_ios(&self) -> Result<u64> {
        let path = self.sys().join("stat");
        parse_block_stat(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// Completed reads + writes + discards from a /sys/block/*/stat line
/// (Documentation/block/stat.rst: fields 1, 5 and 12).
fn parse_block_stat(text: &str) -> Result<u64> {
    let fields: Vec<u64> =
        text.split_whitespace().map(str::parse::<u64>).collect::<Result<_, _>>().context("a block stat field")?;
    ensure!(fields.len() >= 11, "a block stat line has at least 11 fields: `{}`", text.trim());
    Ok(fields[0] + fields[4] + fields.get(11).copied().unwrap_or(0))
}

/// CPU time of all CPUs, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn now() -> Result<CpuTimes> {
        parse_proc_stat(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
    }
}

/// The `cpu` line of /proc/stat: busy = user + nice + system + irq +
/// softirq + steal (guest time is already in user); total adds idle and
/// iowait.
fn parse_proc_stat(text: &str) -> Result<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .context("a /proc/stat field")?;
    ensure!(v.len() >= 8, "the cpu line of /proc/stat has at least 8 fields: `{line}`");
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok(CpuTimes { busy, total: busy + v[3] + v[4] })
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |s| format!("Linux {}", s.trim()))
}

fn tool_version(tool: &str) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| format!("{tool} ?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_json_is_summed_over_jobs() {
        let text = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [
    { "jobname" : "dev0", "error" : 0, "job_runtime" : 10001, "usr_cpu" : 10.0, "sys_cpu" : 40.0,
      "read" : { "total_ios" : 0, "iops" : 0.0 },
      "write" : { "total_ios" : 1000000, "iops" : 99990.0 },
      "trim" : { "total_ios" : 0, "iops" : 0.0 } },
    { "jobname" : "dev1", "error" : 0, "job_runtime" : 9000, "usr_cpu" : 20.0, "sys_cpu" : 30.0,
      "read" : { "total_ios" : 10, "iops" : 1.0 },
      "write" : { "total_ios" : 500000, "iops" : 55555.5 },
      "trim" : { "total_ios" : 0, "iops" : 0.0 } }
  ]
}"#;
        let run = parse_fio(text).expect("parses");
        assert_eq!(run.ios, 1_500_010);
        assert!((run.iops - 155_546.5).abs() < 1e-6, "{run:?}");
        assert!((run.runtime_s - 10.001).abs() < 1e-9, "{run:?}");
        assert!((run.cpu_s - (0.5 * 10.001 + 0.5 * 9.0)).abs() < 1e-9, "{run:?}");
    }

    #[test]
    fn failed_or_empty_fio_runs_are_refused() {
        assert!(parse_fio("fio: no such file").is_err());
        assert!(parse_fio(r#"{"jobs": []}"#).is_err());
        let failed = r#"{"jobs": [{"jobname": "d", "error": 5, "job_runtime": 1, "usr_cpu": 0, "sys_cpu": 0}]}"#;
        assert!(parse_fio(failed).unwrap_err().to_string().contains("error 5"));
    }

    #[test]
    fn proc_stat_busy_and_total() {
        let text = "cpu  100 5 50 1000 20 3 7 2 9 0\ncpu0 50 2 25 500 10 1 3 1 4 0\nintr 12345\n";
        assert_eq!(parse_proc_stat(text).unwrap(), CpuTimes { busy: 167, total: 1187 });
        assert!(parse_proc_stat("cpu0 1 2 3\n").is_err(), "the aggregate line is required");
        assert!(parse_proc_stat("cpu  1 2 3\n").is_err(), "too few fields");
    }

    #[test]
    fn block_stat_completed_ios() {
        // reads, merges, sectors, ticks; writes ...; in flight, io ticks,
        // queue time; discards ...; flushes ... (kernel 5.5+: 17 fields).
        let text = "    1200        3    9600      50   345678        0  2765424    9000        0    4000    9050      7        0       56        1        0        0\n";
        assert_eq!(parse_block_stat(text).unwrap(), 1200 + 345678 + 7);
        // Kernels before 4.18 print 11 fields.
        assert_eq!(parse_block_stat("1 0 8 0 2 0 16 0 0 0 0").unwrap(), 3);
        assert!(parse_block_stat("1 2 3").is_err());
    }

    #[test]
    fn device_numbers() {
        let id = DevId::parse("7:3\n").unwrap();
        assert_eq!((id.to_string(), id.kernel()), ("7:3".to_string(), (7 << 20) | 3));
        assert!(DevId::parse("7").is_err());
    }

    #[test]
    fn driver_reports_become_counts() {
        let report: Value = serde_json::from_str(
            r#"{"devices": {"7:0": {"bios_queued": 10, "requests_completed": 9, "request_latency_samples": 9,
                "bio_latency_samples": 0, "record_read_errors": 1,
                "losses": {"inflight_full": 2, "histogram_full": 0, "unmatched": 3, "read_errors": 0}}},
                "unattributed_losses": {"inflight_full": 0, "histogram_full": 0, "unmatched": 0, "read_errors": 4},
                "bpf": {"programs": 7, "program_bytes": 8192, "recursion_misses": 3, "maps": [{"id": 1, "name": "IO_START", "memlock": 1000},
                {"id": 2, "name": "DEV_IO", "memlock": 24}]}, "max_rss_kib": 9000}"#,
        )
        .unwrap();
        let dev = DevId { major: 7, minor: 0 };
        let counts = DevCounts::of(&report, &dev).unwrap();
        assert_eq!(counts, DevCounts { bios: 10, requests: 9, samples: 9, lost: 6 });
        assert_eq!(counts.since(&DevCounts { bios: 4, requests: 4, samples: 3, lost: 6 }).bios, 6);
        assert!(DevCounts::of(&report, &DevId { major: 7, minor: 1 }).is_err(), "an untraced device");
        assert_eq!(unattributed_losses(&report).unwrap(), 4);
        assert_eq!(recursion_misses(&report).unwrap(), 3);
        let mem = BpfMemory::of(&report).unwrap();
        assert_eq!((mem.program_bytes, mem.map_bytes()), (8192, 1024));
    }

    #[test]
    fn executables_from_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"hcp"},"executable":"/t/release/hcp"}
{"reason":"compiler-artifact","target":{"name":"hcp"},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(executables(messages), vec![PathBuf::from("/t/release/hcp")]);
    }

    #[test]
    fn the_bpftrace_script_filters_the_device() {
        let script = bpftrace_script((7 << 20) | 2);
        assert!(script.contains("args->dev == 7340034"), "{script}");
        assert!(script.contains("hist("), "{script}");
    }

    #[test]
    fn quick_is_shorter() {
        let (q, f) = (Plan::new(true), Plan::new(false));
        assert!(q.runtime_s < f.runtime_s && q.rounds < f.rounds);
    }
}
