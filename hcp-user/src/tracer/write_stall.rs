//! Application write stalls around the switch, from the `write_stall_*`
//! programs (see `hcp_common::stall`): their figures merged over CPUs.

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use hcp_common::stall::WriteStall;

/// The figures so far, summed over CPUs.
pub fn read(stall: &PerCpuArray<MapData, WriteStall>) -> Result<WriteStall> {
    let per_cpu = stall.get(&0, 0).context("reading WRITE_STALL")?;
    Ok(per_cpu.iter().fold(WriteStall::default(), |mut total, s| {
        total.merge(s);
        total
    }))
}

/// How many traced calls entered before `before_ns` and have not returned.
pub fn in_flight_before(inflight: &HashMap<MapData, u64, u64>, before_ns: u64) -> usize {
    inflight.iter().filter_map(|entry| entry.ok()).filter(|(_, entered)| *entered < before_ns).count()
}
