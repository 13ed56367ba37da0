//! Per-device block I/O counts and bytes, by direction, counted in the kernel
//! by the `block_bio_queue` and `block_rq_complete` programs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::TracePoint;
use aya::Ebpf;
use hcp_common::{DevIoStats, IO_OPS};

use crate::devnum::DevNum;
use crate::probes;

/// Counts block I/O of a fixed set of devices while it lives; dropping it
/// detaches the programs.
pub struct BlockIoTracer {
    // Owns the programs, and so the links: they detach when it drops.
    _ebpf: Ebpf,
    counts: PerCpuHashMap<MapData, u32, DevIoStats>,
}

impl BlockIoTracer {
    /// Starts counting I/O of `devices` (each given by its device number).
    pub fn attach(devices: &[DevNum]) -> Result<BlockIoTracer> {
        let mut ebpf = probes::load()?;
        let map = ebpf.take_map("DEV_IO").context("eBPF object lacks map DEV_IO")?;
        let mut counts: PerCpuHashMap<MapData, u32, DevIoStats> = PerCpuHashMap::try_from(map)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        // The map is the filter too: a device is counted once it has an entry.
        for dev in devices {
            let zero = PerCpuValues::try_from(vec![DevIoStats::default(); cpus])?;
            counts.insert(dev.to_kernel(), zero, 0).with_context(|| format!("tracing device {dev}"))?;
        }
        for event in ["block_bio_queue", "block_rq_complete"] {
            let prog: &mut TracePoint =
                ebpf.program_mut(event).with_context(|| format!("eBPF object lacks program {event}"))?.try_into()?;
            prog.load().with_context(|| format!("loading program {event}"))?;
            prog.attach("block", event).with_context(|| format!("attaching to tracepoint block:{event}"))?;
        }
        Ok(BlockIoTracer { _ebpf: ebpf, counts })
    }

    /// The counts of every traced device so far, summed over CPUs.
    pub fn read(&self) -> Result<BTreeMap<DevNum, DevIoStats>> {
        let mut out = BTreeMap::new();
        for entry in self.counts.iter() {
            let (dev, per_cpu) = entry?;
            out.insert(DevNum::from_kernel(dev), sum(per_cpu.iter()));
        }
        Ok(out)
    }
}

fn sum<'a>(per_cpu: impl Iterator<Item = &'a DevIoStats>) -> DevIoStats {
    per_cpu.fold(DevIoStats::default(), |mut total, cpu| {
        for op in 0..IO_OPS {
            total.bio_queued[op].count += cpu.bio_queued[op].count;
            total.bio_queued[op].bytes += cpu.bio_queued[op].bytes;
            total.rq_completed[op].count += cpu.rq_completed[op].count;
            total.rq_completed[op].bytes += cpu.rq_completed[op].bytes;
        }
        total.read_errors += cpu.read_errors;
        total
    })
}
