//! I/O latency histograms per session, role, level and direction, built in
//! the kernel by the `io_latency` programs (see `hcp_common::bio`).

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf};
use hcp_common::bio::{BioLosses, DevRole, LatKey};
use hcp_common::LatencyHist;

use crate::devnum::DevNum;
use crate::probes;

/// Measures I/O latency of a fixed set of devices while it lives; dropping
/// it detaches the programs.
pub struct IoLatencyTracer {
    // Owns the programs, and so the links.
    _ebpf: Ebpf,
    latency: PerCpuHashMap<MapData, LatKey, LatencyHist>,
    losses: PerCpuHashMap<MapData, u32, BioLosses>,
}

impl IoLatencyTracer {
    /// Starts measuring `devices`, each with the session and role it is
    /// charged to.
    pub fn attach(devices: &[(DevNum, DevRole)]) -> Result<IoLatencyTracer> {
        let mut ebpf = probes::load()?;
        let mut roles: HashMap<MapData, u32, DevRole> =
            HashMap::try_from(ebpf.take_map("DEV_ROLE").context("eBPF object lacks map DEV_ROLE")?)?;
        for (dev, role) in devices {
            roles.insert(dev.to_kernel(), role, 0).with_context(|| format!("tracing device {dev}"))?;
        }
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
        for (program, event) in [
            ("bio_queue", "block_bio_queue"),
            ("bio_complete", "block_bio_complete"),
            ("rq_issue", "block_rq_issue"),
            ("rq_complete", "block_rq_complete"),
        ] {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("eBPF object lacks program {program}"))?
                .try_into()?;
            prog.load(event, &btf).with_context(|| format!("loading program {program}"))?;
            prog.attach().with_context(|| format!("attaching to tp_btf {event}"))?;
        }
        let latency = PerCpuHashMap::try_from(ebpf.take_map("IO_LATENCY").context("map IO_LATENCY")?)?;
        let losses = PerCpuHashMap::try_from(ebpf.take_map("IO_LOSSES").context("map IO_LOSSES")?)?;
        Ok(IoLatencyTracer { _ebpf: ebpf, latency, losses })
    }

    /// Every histogram so far, merged over CPUs.
    pub fn histograms(&self) -> Result<Vec<(LatKey, LatencyHist)>> {
        let mut out = Vec::new();
        for entry in self.latency.iter() {
            let (key, per_cpu) = entry?;
            out.push((key, crate::hist::merge(per_cpu.iter().copied())));
        }
        Ok(out)
    }

    /// What could not be measured for `session` (0: not attributable).
    pub fn losses(&self, session: u32) -> Result<BioLosses> {
        match self.losses.get(&session, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().fold(BioLosses::default(), |mut total, l| {
                total.inflight_full += l.inflight_full;
                total.histogram_full += l.histogram_full;
                total.unmatched += l.unmatched;
                total.read_errors += l.read_errors;
                total
            })),
            Err(aya::maps::MapError::KeyNotFound) => Ok(BioLosses::default()),
            Err(e) => Err(e.into()),
        }
    }
}
