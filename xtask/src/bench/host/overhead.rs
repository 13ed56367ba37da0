//! Part 4 of `cargo xtask bench`, tracing overhead: fio on one loop device
//! untraced, traced by hcp, by bpftrace and by the floor, in rotating rounds.

use anyhow::{ensure, Context, Result};

use super::fio::{fio, FIO_LOAD_TEXT};
use super::runs::{measured_run, Case, TracedRuns};
use super::system::{kernel_release, tool_version, LoopDevice, LOOP_BYTES};
use super::tracers::{in_flight_mode, modes_text, recursion_misses, DevCounts};
use super::{Bins, Plan};
use crate::bench::report::{significant, Figure, Section, Target};

pub(super) fn tracing_overhead(bins: &Bins, plan: &Plan) -> Result<(Section, TracedRuns)> {
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
    let mut modes = Vec::new();

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
                counts
                    .check_against(run.kernel_ios[0], skipped)
                    .with_context(|| format!("overhead round {}/{}, traced by hcp", round + 1, plan.rounds))?;
                modes.push(in_flight_mode(&after)?);
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
         program on each of block_bio_queue, block_bio_remap, block_bio_complete, block_rq_issue, \
         block_rq_complete and block_rq_requeue, counting and timing; in-flight mode: {mode}), the device \
         added as a session's; \
         a round fails if the requests hcp counted differ from those the kernel completed \
         (/sys/block/*/stat) by more than the losses it reported. \
         bpftrace ({bpftrace}): request latency from block_rq_issue to block_rq_complete (classic tracepoints, \
         keyed by device and sector, filtered to the device) into a histogram per device, biolatency's job. \
         Floor: empty programs on exactly hcp's six events with hcp's attach type (tp_btf), loaded alone. \
         CPU per I/O: the busy time of all CPUs (user, nice, system, irq, softirq, steal in /proc/stat) over \
         the fio run, divided by the I/Os fio did: it includes the loop device's worker and the programs \
         wherever they run, and any other load on the machine; fio's own time misses the loop worker. ({fio})",
        mode = modes_text(&modes),
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
