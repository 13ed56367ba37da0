//! Per-device block I/O counts and bytes, by direction, counted in the kernel
//! by the block programs (`object::BLOCK_PROGRAMS`): bios queued, requests
//! completed, FUA writes, and bios passed down from one traced device to
//! another.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{MapData, MapError, PerCpuHashMap, PerCpuValues};
use aya::Ebpf;
use hcp_common::{bio::REQUEST_BASED, DevIoStats, OpCount, RemapKey, RemapStats, IO_OPS};

use crate::kernel::devnum::DevNum;
use crate::tracer::object;

/// Counts block I/O of a fixed set of devices while it lives; dropping it
/// detaches the programs.
pub struct BlockIoTracer {
    // Owns the programs, and so the links: they detach when it drops.
    _ebpf: Ebpf,
    counts: PerCpuHashMap<MapData, u32, DevIoStats>,
    remaps: PerCpuHashMap<MapData, RemapKey, RemapStats>,
}

impl BlockIoTracer {
    /// Starts counting I/O of `devices` (each given by its device number).
    pub fn attach(devices: &[DevNum]) -> Result<BlockIoTracer> {
        let layout = object::kernel_layout()?;
        let mut ebpf = object::load_with(object::Purpose::BlockIo, hcp_common::bio::IN_FLIGHT_SLOTS, &layout)?;
        let mut counts = PerCpuHashMap::try_from(ebpf.take_map("DEV_IO").context("eBPF object lacks map DEV_IO")?)?;
        add_devices(&mut counts, devices)?;
        object::attach_block_programs(&mut ebpf, &layout)?;
        let remaps = PerCpuHashMap::try_from(ebpf.take_map("DEV_REMAP").context("eBPF object lacks map DEV_REMAP")?)?;
        Ok(BlockIoTracer { _ebpf: ebpf, counts, remaps })
    }

    /// The counts of every traced device so far, summed over CPUs.
    pub fn read(&self) -> Result<BTreeMap<DevNum, DevIoStats>> {
        read_counts(&self.counts, None)
    }

    /// Bios passed down between traced devices, `(to, from)`, by direction.
    pub fn remaps(&self) -> Result<BTreeMap<(DevNum, DevNum), RemapStats>> {
        read_remaps(&self.remaps)
    }
}

/// Starts counting and timing `devices`: the `DEV_IO` map is the set of
/// traced devices, a device is traced once it has an entry.
pub fn add_devices(map: &mut PerCpuHashMap<MapData, u32, DevIoStats>, devices: &[DevNum]) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    for dev in devices {
        let flags = if crate::kernel::blockdev::is_request_based(*dev) { REQUEST_BASED } else { 0 };
        let zero = PerCpuValues::try_from(vec![DevIoStats { flags, ..DevIoStats::default() }; cpus])?;
        map.insert(dev.to_kernel(), zero, 0).with_context(|| format!("tracing device {dev}"))?;
    }
    Ok(())
}

/// A `DEV_IO` map's counts, summed over CPUs: of `only` those devices, or
/// of every device in it.
pub fn read_counts(
    map: &PerCpuHashMap<MapData, u32, DevIoStats>,
    only: Option<&[DevNum]>,
) -> Result<BTreeMap<DevNum, DevIoStats>> {
    let mut out = BTreeMap::new();
    match only {
        Some(devices) => {
            for dev in devices {
                match map.get(&dev.to_kernel(), 0) {
                    Ok(per_cpu) => {
                        out.insert(*dev, sum(per_cpu.iter()));
                    }
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).with_context(|| format!("reading the counts of {dev}")),
                }
            }
        }
        None => {
            for entry in map.iter() {
                let (dev, per_cpu) = entry?;
                out.insert(DevNum::from_kernel(dev), sum(per_cpu.iter()));
            }
        }
    }
    Ok(out)
}

/// One device's counts, summed over CPUs.
fn sum<'a>(per_cpu: impl Iterator<Item = &'a DevIoStats>) -> DevIoStats {
    per_cpu.fold(DevIoStats::default(), |mut total, cpu| {
        add_ops(&mut total.bio_queued, &cpu.bio_queued);
        add_ops(&mut total.rq_completed, &cpu.rq_completed);
        add(&mut total.bio_fua_writes, &cpu.bio_fua_writes);
        total.read_errors += cpu.read_errors;
        total.flags = cpu.flags;
        total
    })
}

/// A `DEV_REMAP` map's counts, `(to, from)`, summed over CPUs.
pub fn read_remaps(
    map: &PerCpuHashMap<MapData, RemapKey, RemapStats>,
) -> Result<BTreeMap<(DevNum, DevNum), RemapStats>> {
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry?;
        let total = per_cpu.iter().fold(RemapStats::default(), |mut total, cpu| {
            add_ops(&mut total.ops, &cpu.ops);
            total
        });
        out.insert((DevNum::from_kernel(key.dev), DevNum::from_kernel(key.from)), total);
    }
    Ok(out)
}

fn add(total: &mut OpCount, more: &OpCount) {
    total.count += more.count;
    total.bytes += more.bytes;
}

fn add_ops(total: &mut [OpCount; IO_OPS], more: &[OpCount; IO_OPS]) {
    for (t, m) in total.iter_mut().zip(more) {
        add(t, m);
    }
}
