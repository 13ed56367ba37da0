//! I/O latency histograms per device, level and direction, built in the
//! kernel by the `io_latency` programs (see `hcp_common::bio`).

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::Ebpf;
use hcp_common::bio::{device_flags, BioLosses, BioStart, LatKey, Role};
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
    starts: HashMap<MapData, u64, BioStart>,
}

impl IoLatencyTracer {
    /// Starts measuring `devices`, each with the role it plays.
    pub fn attach(devices: &[(DevNum, Role)]) -> Result<IoLatencyTracer> {
        let mut ebpf = probes::load(probes::Purpose::BlockIo)?;
        let mut traced: HashMap<MapData, u32, u32> =
            HashMap::try_from(ebpf.take_map("IO_DEVICES").context("eBPF object lacks map IO_DEVICES")?)?;
        for (dev, role) in devices {
            traced
                .insert(dev.to_kernel(), device_flags(*role, crate::blockdev::is_request_based(*dev)), 0)
                .with_context(|| format!("tracing device {dev}"))?;
        }
        probes::attach_block_programs(&mut ebpf)?;
        let latency = PerCpuHashMap::try_from(ebpf.take_map("IO_LATENCY").context("map IO_LATENCY")?)?;
        let losses = PerCpuHashMap::try_from(ebpf.take_map("IO_LOSSES").context("map IO_LOSSES")?)?;
        let starts = HashMap::try_from(ebpf.take_map("IO_START").context("map IO_START")?)?;
        Ok(IoLatencyTracer { _ebpf: ebpf, latency, losses, starts })
    }

    /// Every histogram so far, merged over CPUs, sorted by key.
    /// How many bios and requests are recorded as in flight: once the
    /// I/O is over, none (a start that never completes would fill the map).
    pub fn in_flight(&self) -> Result<usize> {
        Ok(self.starts.keys().collect::<Result<Vec<u64>, _>>()?.len())
    }

    pub fn histograms(&self) -> Result<Vec<(LatKey, LatencyHist)>> {
        histograms(&self.latency)
    }

    /// What could not be measured on `dev`; `None` for what could not be
    /// attributed to any device.
    pub fn losses(&self, dev: Option<DevNum>) -> Result<BioLosses> {
        losses(&self.losses, dev)
    }
}

/// The histograms of an `IO_LATENCY` map, merged over CPUs, sorted by key.
pub fn histograms(map: &PerCpuHashMap<MapData, LatKey, LatencyHist>) -> Result<Vec<(LatKey, LatencyHist)>> {
    let mut out = Vec::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry?;
        out.push((key, crate::hist::merge(per_cpu.iter().copied())));
    }
    out.sort_by_key(|(k, _)| *k);
    Ok(out)
}

/// The losses of `dev` (`None`: device 0, the unattributable) in an
/// `IO_LOSSES` map, summed over CPUs.
pub fn losses(map: &PerCpuHashMap<MapData, u32, BioLosses>, dev: Option<DevNum>) -> Result<BioLosses> {
    let key = dev.map_or(0, DevNum::to_kernel);
    match map.get(&key, 0) {
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
