//! I/O latency histograms per device, level and direction, built in the
//! kernel by the `io_latency` programs (see `hcp_common::bio`).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues};
use aya::Ebpf;
use hcp_common::bio::{BioLosses, BioStart, InFlightSlot, LatKey, Level, IN_FLIGHT_SLOTS, OVERFLOW_EVER};
use hcp_common::{DevIoStats, IoOp, LatencyHist};

use crate::kernel::devnum::DevNum;
use crate::tracer::layout::KernelLayout;
use crate::tracer::object;
use crate::tracer::probe::InFlightMode;

/// Measures I/O latency of a fixed set of devices while it lives; dropping
/// it detaches the programs.
pub struct IoLatencyTracer {
    // Owns the programs, and so the links.
    _ebpf: Ebpf,
    traced: PerCpuHashMap<MapData, u32, DevIoStats>,
    latency: PerCpuHashMap<MapData, LatKey, LatencyHist>,
    losses: PerCpuHashMap<MapData, u32, BioLosses>,
    slots: Array<MapData, InFlightSlot>,
    starts: HashMap<MapData, u64, BioStart>,
    starts_use: Array<MapData, u64>,
}

impl IoLatencyTracer {
    /// Starts measuring `devices`.
    pub fn attach(devices: &[DevNum]) -> Result<IoLatencyTracer> {
        Self::attach_with_in_flight_slots(devices, IN_FLIGHT_SLOTS)
    }

    /// [`Self::attach`] with an in-flight table of `slots` (see
    /// [`object::load_with_in_flight_slots`]).
    pub fn attach_with_in_flight_slots(devices: &[DevNum], slots: u32) -> Result<IoLatencyTracer> {
        let layout = object::kernel_layout()?;
        Self::attach_with(devices, slots, &layout)
    }

    /// [`Self::attach`] in the in-flight `mode` given, which the kernel must
    /// allow (tests of each mode).
    pub fn attach_in_mode(devices: &[DevNum], slots: u32, mode: InFlightMode) -> Result<IoLatencyTracer> {
        let layout = KernelLayout { in_flight: mode, ..object::kernel_layout()? };
        Self::attach_with(devices, slots, &layout)
    }

    fn attach_with(devices: &[DevNum], slots: u32, layout: &KernelLayout) -> Result<IoLatencyTracer> {
        let mut ebpf = object::load_with(object::Purpose::BlockIo, slots, layout)?;
        let mut traced = PerCpuHashMap::try_from(ebpf.take_map("DEV_IO").context("eBPF object lacks map DEV_IO")?)?;
        let mut latency = PerCpuHashMap::try_from(ebpf.take_map("IO_LATENCY").context("map IO_LATENCY")?)?;
        add_histograms(&mut latency, devices)?;
        crate::tracer::block_io::add_devices(&mut traced, devices)?;
        object::attach_block_programs(&mut ebpf, layout)?;
        let losses = PerCpuHashMap::try_from(ebpf.take_map("IO_LOSSES").context("map IO_LOSSES")?)?;
        let slots = Array::try_from(ebpf.take_map("IN_FLIGHT").context("map IN_FLIGHT")?)?;
        let starts = HashMap::try_from(ebpf.take_map("IO_START").context("map IO_START")?)?;
        let starts_use = Array::try_from(ebpf.take_map("IO_START_USE").context("map IO_START_USE")?)?;
        Ok(IoLatencyTracer { _ebpf: ebpf, traced, latency, losses, slots, starts, starts_use })
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
        Ok(self.starts_use.get(&OVERFLOW_EVER, 0)?)
    }

    /// The counts of every traced device so far, summed over CPUs: those
    /// the latency is to add up with.
    pub fn counts(&self) -> Result<BTreeMap<DevNum, DevIoStats>> {
        crate::tracer::block_io::read_counts(&self.traced, None)
    }

    /// Every histogram with samples so far, merged over CPUs, sorted by key.
    pub fn histograms(&self) -> Result<Vec<(LatKey, LatencyHist)>> {
        histograms(&self.latency, None)
    }

    /// What could not be measured on `dev`; `None` for what could not be
    /// attributed to any device.
    pub fn losses(&self, dev: Option<DevNum>) -> Result<BioLosses> {
        losses(&self.losses, dev)
    }
}

/// Creates the zeroed histograms `devices` will fill, one per direction at
/// the level each device completes I/O, before the devices are traced: the
/// programs then never allocate on the I/O path, where an allocation can
/// fail and lose the sample. (A new entry of a map that is not
/// preallocated comes from a per-CPU cache the kernel refills later; on
/// Linux 6.1 it holds a single value this large, and a bio completing
/// right after its request finds it empty.) The programs still create any
/// other key they meet.
pub fn add_histograms(map: &mut PerCpuHashMap<MapData, LatKey, LatencyHist>, devices: &[DevNum]) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    for dev in devices {
        let level = if crate::kernel::blockdev::is_request_based(*dev) { Level::Request } else { Level::Bio };
        for op in IoOp::ALL {
            let key = LatKey { dev: dev.to_kernel(), level: level as u8, op: op as u8, _pad: 0 };
            insert_zeroed_waiting_for_the_cache(map, key, cpus)
                .with_context(|| format!("creating the latency histograms of {dev}"))?;
        }
    }
    Ok(())
}

/// Inserts a zeroed histogram into a map that is not preallocated. Its new
/// entries come from a per-CPU cache that the kernel refills
/// asynchronously (an irq_work), and an update that finds the cache empty
/// fails at once with ENOMEM, however much memory is free: back-to-back
/// inserts of values this large (the cache holds one) can. The refill runs
/// within milliseconds; wait for it.
fn insert_zeroed_waiting_for_the_cache(
    map: &mut PerCpuHashMap<MapData, LatKey, LatencyHist>,
    key: LatKey,
    cpus: usize,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match map.insert(key, PerCpuValues::try_from(vec![LatencyHist::zeroed(); cpus])?, 0) {
            Ok(()) => return Ok(()),
            Err(MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOMEM) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The histograms of an `IO_LATENCY` map with samples, merged over CPUs,
/// sorted by key: of `only` those devices (every level and direction, by
/// key), or of every device in it.
pub fn histograms(
    map: &PerCpuHashMap<MapData, LatKey, LatencyHist>,
    only: Option<&[DevNum]>,
) -> Result<Vec<(LatKey, LatencyHist)>> {
    let mut found = Vec::new();
    match only {
        Some(devices) => {
            for dev in devices {
                for level in [Level::Bio, Level::Request] {
                    for op in IoOp::ALL {
                        let key = LatKey { dev: dev.to_kernel(), level: level as u8, op: op as u8, _pad: 0 };
                        match map.get(&key, 0) {
                            Ok(per_cpu) => found.push((key, crate::tracer::hist::merge(per_cpu.iter().copied()))),
                            Err(MapError::KeyNotFound) => {}
                            Err(e) => return Err(e).with_context(|| format!("reading the latency of {dev}")),
                        }
                    }
                }
            }
        }
        None => {
            for entry in map.iter() {
                let (key, per_cpu) = entry?;
                found.push((key, crate::tracer::hist::merge(per_cpu.iter().copied())));
            }
        }
    }
    // Those made in advance (`add_histograms`) and still empty are no figure.
    found.retain(|(_, hist)| hist.count > 0);
    found.sort_by_key(|(k, _)| *k);
    Ok(found)
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
            total.completions_unseen += l.completions_unseen;
            total
        })),
        Err(aya::maps::MapError::KeyNotFound) => Ok(BioLosses::default()),
        Err(e) => Err(e.into()),
    }
}
