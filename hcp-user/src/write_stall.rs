//! Application write stalls around the switch, from the `write_stall_*`
//! programs (see `hcp_common::stall`): the record offsets they read, and
//! their figures merged over CPUs.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use hcp_common::stall::{StallLayout, WriteStall};

use crate::btf::KernelBtf;
use crate::probes::sized_offset;
use crate::tracefs;

/// The offsets the programs read, for `probes::load`.
pub fn layout(tracefs: &Path, btf: &KernelBtf) -> Result<StallLayout> {
    anyhow::ensure!(cfg!(target_arch = "x86_64"), "write stalls are traced by x86_64 system call numbers only");
    let enter = tracefs::Format::read(tracefs, "raw_syscalls", "sys_enter")
        .context("the raw_syscalls tracepoints are missing (the kernel needs CONFIG_FTRACE_SYSCALLS)")?;
    let exit = tracefs::Format::read(tracefs, "raw_syscalls", "sys_exit")?;
    Ok(StallLayout {
        enter_id: enter.offset_of("id", 8)?,
        enter_args: enter.offset_of("args", 48)?,
        exit_ret: exit.offset_of("ret", 8)?,
        task_files: sized_offset(btf, "task_struct.files", 8)?,
        files_fdt: sized_offset(btf, "files_struct.fdt", 8)?,
        fdt_max_fds: sized_offset(btf, "fdtable.max_fds", 4)?,
        fdt_fd: sized_offset(btf, "fdtable.fd", 8)?,
        file_inode: sized_offset(btf, "file.f_inode", 8)?,
        inode_sb: sized_offset(btf, "inode.i_sb", 8)?,
        sb_dev: sized_offset(btf, "super_block.s_dev", 4)?,
    })
}

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
