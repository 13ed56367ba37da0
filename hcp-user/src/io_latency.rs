//! I/O latency histograms per device, level and direction, built in the
//! kernel by the `io_latency` programs (see `hcp_common::bio`).

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuHashMap};
use aya::Ebpf;
use hcp_common::bio::{device_flags, BioLosses, BioStart, InFlightSlot, LatKey, Role, IN_FLIGHT_SLOTS};
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
    slots: Array<MapData, InFlightSlot>,
    starts: HashMap<MapData, u64, BioStart>,
    starts_use: Array<MapData, u64>,
}

impl IoLatencyTracer {
    /// Starts measuring `devices`, each with the role it plays.
    pub fn attach(devices: &[(DevNum, Role)]) -> Result<IoLatencyTracer> {
        Self::attach_with_in_flight_slots(devices, IN_FLIGHT_SLOTS)
    }

    /// [`Self::attach`] with an in-flight table of `slots` (see
    /// [`probes::load_with_in_flight_slots`]).
    pub fn attach_with_in_flight_slots(devices: &[(DevNum, Role)], slots: u32) -> Result<IoLatencyTracer> {
        let mut ebpf = probes::load_with_in_flight_slots(probes::Purpose::BlockIo, slots)?;
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
        let slots = Array::try_from(ebpf.take_map("IN_FLIGHT").context("map IN_FLIGHT")?)?;
        let starts = HashMap::try_from(ebpf.take_map("IO_START").context("map IO_START")?)?;
        let starts_use = Array::try_from(ebpf.take_map("IO_START_USE").context("map IO_START_USE")?)?;
        Ok(IoLatencyTracer { _ebpf: ebpf, latency, losses, slots, starts, starts_use })
    }

    /// How many bios and requests are recorded as in flight, in the table
    /// and in the hash map: once the I/O is over, none (a start that never
    /// completes would hold its slot, or fill the map).
    pub fn in_flight(&self) -> Result<usize> {
        let mut held = 0;
        for slot in self.slots.iter() {
            held += usize::from(slot?.object != 0);
        }
        Ok(held + self.starts.keys().collect::<Result<Vec<u64>, _>>()?.len())
    }

    /// How many starts went to the overflow map so far, their slot held by
    /// another object in flight.
    pub fn overflowed(&self) -> Result<u64> {
        Ok(self.starts_use.get(&1, 0)?)
    }

    /// Every histogram so far, merged over CPUs, sorted by key.
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
