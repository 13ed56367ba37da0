//! The embedded eBPF object (built from hcp-ebpf by build.rs), loaded with
//! its read-only globals filled in for the running kernel.
//!
//! One object holds every program; each user loads it for one purpose and
//! shrinks the maps that purpose never touches, since the kernel allocates
//! every map of a loaded object whether or not its programs run.

use anyhow::{ensure, Context, Result};
use aya::programs::BtfTracePoint;
use aya::{Ebpf, EbpfLoader};
use hcp_common::bio::IN_FLIGHT_SLOTS;

use super::btf::KernelBtf;
use super::{layout, tracefs};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hcp-ebpf"));

/// What the loaded object is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The block I/O programs, pinned for every traced session.
    BlockIo,
    /// The freeze programs (and with `stalls` the write-stall programs),
    /// for one switch or one test.
    Switch { stalls: bool },
}

/// The block I/O programs (hcp-ebpf's `block_events`: tp_btf, one per
/// event, each counting and timing) and the events they attach to, in the
/// order they are attached: a request's requeue and completion before its
/// issue, so that no request issued while they attach has its start
/// recorded with nothing yet to take it (it would be counted as a
/// completion unseen).
pub const BLOCK_PROGRAMS: [(&str, &str); 6] = [
    ("bio_queue", "block_bio_queue"),
    ("bio_remap", "block_bio_remap"),
    ("bio_complete", "block_bio_complete"),
    ("rq_requeue", "block_rq_requeue"),
    ("rq_complete", "block_rq_complete"),
    ("rq_issue", "block_rq_issue"),
];

/// The maps only the block I/O programs use.
const BLOCK_IO_MAPS: [&str; 7] =
    ["DEV_IO", "DEV_REMAP", "IN_FLIGHT", "IO_START", "IO_START_USE", "IO_LATENCY", "IO_LOSSES"];
/// The maps only the switch programs use, with their smallest sizes (a ring
/// buffer's size is in bytes, a page at least).
const SWITCH_MAPS: [(&str, u32); 3] = [("FREEZE_INFLIGHT", 1), ("FREEZE_EVENTS", 4096), ("STALL_INFLIGHT", 1)];

/// Loads every map of the object and parses its programs (nothing is loaded
/// into the kernel's verifier or attached yet).
pub fn load(purpose: Purpose) -> Result<Ebpf> {
    load_with_in_flight_slots(purpose, IN_FLIGHT_SLOTS)
}

/// [`load`], with an in-flight table of `slots` (a power of two, at most
/// [`IN_FLIGHT_SLOTS`]): fewer make objects share slots, which tests use to
/// drive the overflow map's path.
pub fn load_with_in_flight_slots(purpose: Purpose, slots: u32) -> Result<Ebpf> {
    ensure!(
        slots.is_power_of_two() && slots <= IN_FLIGHT_SLOTS,
        "in-flight slots: a power of two up to {IN_FLIGHT_SLOTS}"
    );
    let btf = KernelBtf::load()?;
    let bio = layout::bio(&btf)?;
    // Layouts of programs this load will not attach stay zeroed: their
    // tracepoints' formats need not even exist (a kernel without syscall
    // tracepoints still traces block I/O).
    let (ioctl, stall) = match purpose {
        Purpose::BlockIo => Default::default(),
        Purpose::Switch { stalls } => {
            let tracefs = tracefs::root()?;
            (layout::ioctl(&tracefs)?, if stalls { layout::stall(&tracefs, &btf)? } else { Default::default() })
        }
    };
    let mut loader = EbpfLoader::new();
    loader.override_global("BIO_LAYOUT", &bio, true);
    loader.override_global("IOCTL_TP_LAYOUT", &ioctl, true);
    loader.override_global("STALL_LAYOUT", &stall, true);
    let in_flight_mask = slots - 1;
    loader.override_global("IN_FLIGHT_MASK", &in_flight_mask, true);
    match purpose {
        Purpose::BlockIo => {
            loader.map_max_entries("IN_FLIGHT", slots);
            for (map, size) in SWITCH_MAPS {
                loader.map_max_entries(map, size);
            }
        }
        Purpose::Switch { .. } => {
            for map in BLOCK_IO_MAPS {
                loader.map_max_entries(map, 1);
            }
        }
    }
    loader.load(OBJECT).context("loading hcp's eBPF programs (needs root, or CAP_BPF and CAP_PERFMON)")
}

/// Loads and attaches the block I/O programs of a loaded object; they
/// detach when it drops, unless their links are taken.
pub fn attach_block_programs(ebpf: &mut Ebpf) -> Result<()> {
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
    for (program, event) in BLOCK_PROGRAMS {
        load_block_program(ebpf, program, event, &btf)?
            .attach()
            .with_context(|| format!("attaching to tp_btf {event}"))?;
    }
    Ok(())
}

/// Loads one block I/O program (or a benchmark floor's) into the kernel.
pub fn load_block_program<'a>(
    ebpf: &'a mut Ebpf,
    program: &str,
    event: &str,
    btf: &aya::Btf,
) -> Result<&'a mut BtfTracePoint> {
    let prog: &mut BtfTracePoint =
        ebpf.program_mut(program).with_context(|| format!("eBPF object lacks program {program}"))?.try_into()?;
    prog.load(event, btf).with_context(|| format!("loading program {program}"))?;
    Ok(prog)
}
