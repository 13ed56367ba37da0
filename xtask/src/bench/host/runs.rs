//! One measured fio run of the host parts: the load under one case (untraced,
//! or traced by hcp, bpftrace or the floor), with the CPU time around it.

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::fio::{fio, FioRun};
use super::system::{clock_ticks_per_s, CpuTimes, LoopDevice};
use super::tracers::{bpftrace_script, Bpftrace, Driver, Tracer};
use super::Bins;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Case {
    None,
    Hcp,
    Bpftrace,
    Floor,
}

impl Case {
    pub(super) const ALL: [Case; 4] = [Case::None, Case::Hcp, Case::Bpftrace, Case::Floor];

    pub(super) fn name(self) -> &'static str {
        match self {
            Case::None => "none",
            Case::Hcp => "hcp",
            Case::Bpftrace => "bpftrace",
            Case::Floor => "floor",
        }
    }

    pub(super) fn what(self) -> &'static str {
        match self {
            Case::None => "untraced",
            Case::Hcp => "traced by hcp",
            Case::Bpftrace => "traced by the bpftrace latency script",
            Case::Floor => "with the floor's empty programs attached",
        }
    }
}

/// What the other parts use from a traced run: the driver's last report.
pub(super) struct TracedRuns {
    pub(super) reports: Vec<Value>,
}

/// One short hcp-traced fio run on `devices` loop devices, for the memory
/// part when the parts that would have made such runs are not run.
pub(super) fn traced_runs(bins: &Bins, devices: usize) -> Result<TracedRuns> {
    let devices = (0..devices).map(LoopDevice::new).collect::<Result<Vec<_>>>()?;
    let run = measured_run(Case::Hcp, bins, &devices, 2)?;
    Ok(TracedRuns { reports: vec![run.trace.context("the traced run made no report")?] })
}

/// One fio run under one case, with the machine's CPU time around it.
pub(super) struct MeasuredRun {
    pub(super) fio: FioRun,
    /// Busy CPU time of all CPUs during the fio run.
    pub(super) busy_ns: f64,
    /// Fraction of all CPUs' time that was busy.
    pub(super) busy_fraction: f64,
    /// The driver's reports before and after fio (hcp only).
    pub(super) trace_before: Option<Value>,
    pub(super) trace: Option<Value>,
    /// The kernel's completed I/Os per device during the run.
    pub(super) kernel_ios: Vec<u64>,
}

pub(super) fn measured_run(case: Case, bins: &Bins, devices: &[LoopDevice], runtime_s: u32) -> Result<MeasuredRun> {
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
