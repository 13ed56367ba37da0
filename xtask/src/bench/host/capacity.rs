//! Part 5 of `cargo xtask bench`, tracer capacity: several loop devices at
//! fio's full speed, traced by hcp, every event checked against the kernel's.

use anyhow::{Context, Result};

use super::fio::{fio, FIO_LOAD_TEXT};
use super::runs::{measured_run, Case, TracedRuns};
use super::system::{LoopDevice, LOOP_BYTES};
use super::tracers::{in_flight_mode, modes_text, recursion_misses, unattributed_losses, DevCounts};
use super::{Bins, Plan, CAPACITY_DEVICES};
use crate::bench::report::{significant, Figure, Section, Target};

pub(super) fn tracer_capacity(bins: &Bins, plan: &Plan) -> Result<(Section, TracedRuns)> {
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
    let mut modes = Vec::new();

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
            modes.push(in_flight_mode(&after)?);
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
         only in the program's recursion_misses, which is read too. In-flight mode: {mode}.",
        mode = modes_text(&modes),
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
