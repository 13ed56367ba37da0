//! The embedded eBPF object (built from hcp-ebpf by build.rs), loaded with
//! its read-only globals filled in for the running kernel.
//!
//! One object holds every program; each user loads it for one purpose and
//! shrinks the maps that purpose never touches, since the kernel allocates
//! every map of a loaded object whether or not its programs run.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use aya::programs::BtfTracePoint;
use aya::{Ebpf, EbpfLoader};
use hcp_common::bio::IN_FLIGHT_SLOTS;

use super::layout::KernelLayout;
use super::probe::InFlightMode;
use crate::kernel::hidden_dir;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hcp-ebpf"));

/// The object's identity (a hash of it, made by build.rs): programs pinned
/// by another build of hcp are told apart by it.
pub const OBJECT_ID: &str = include_str!(concat!(env!("OUT_DIR"), "/hcp-ebpf.id"));

/// What the loaded object is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The block I/O programs, pinned for every traced session.
    BlockIo,
    /// The freeze programs (and with `stalls` the write-stall programs),
    /// for one switch or one test.
    Switch { stalls: bool },
    /// Both, for the pins: the block I/O programs attached for every traced
    /// session, the switch's loaded once and attached by each start for its
    /// switch (those the kernel has the tracepoints for).
    Pinned,
}

/// The block I/O programs (hcp-ebpf's `block_events`: tp_btf, one per
/// event, each counting and timing) and the events they attach to, in the
/// order they are attached: a request's requeue and completion before its
/// issue, so that no request issued while they attach has its start
/// recorded with nothing yet to take it (it would be counted as a
/// completion unseen). `(program with the in-flight table, program with
/// the hash map only, event)`: see [`InFlightMode`].
pub const BLOCK_PROGRAMS: [(&str, &str, &str); 6] = [
    ("bio_queue", "bio_queue_hm", "block_bio_queue"),
    ("bio_remap", "bio_remap_hm", "block_bio_remap"),
    ("bio_complete", "bio_complete_hm", "block_bio_complete"),
    ("rq_requeue", "rq_requeue_hm", "block_rq_requeue"),
    ("rq_complete", "rq_complete_hm", "block_rq_complete"),
    ("rq_issue", "rq_issue_hm", "block_rq_issue"),
];

/// The block I/O programs of `mode`, `(program, event)`, in the order they
/// are attached.
pub fn block_programs(mode: InFlightMode) -> impl Iterator<Item = (&'static str, &'static str)> {
    BLOCK_PROGRAMS.into_iter().map(move |(table, hash_map, event)| match mode {
        InFlightMode::Table => (table, event),
        InFlightMode::HashMap => (hash_map, event),
    })
}

/// The in-flight hash map's size when it holds every start (the hash-map
/// mode): as many as the table has slots would cost 5 MiB preallocated;
/// this many are some hundred times the deepest queues of a session's
/// devices, and a start beyond is a counted loss (`inflight_full`).
const HASH_MAP_STARTS: u32 = 16384;

/// The switch's programs, `(program, category, event)`, in the order they
/// are attached: exits first, since an entry seen without its exit would
/// leave a stale in-flight record for the thread's next exit to take. The
/// freeze programs trace every `FIFREEZE`, `FITHAW` and `DM_DEV_SUSPEND`.
pub const FREEZE_PROGRAMS: [(&str, &str, &str); 2] =
    [("freeze_ioctl_exit", "syscalls", "sys_exit_ioctl"), ("freeze_ioctl_enter", "syscalls", "sys_enter_ioctl")];
/// The write-stall programs (attached between the freeze programs' exit and
/// entry, in this order).
pub const STALL_PROGRAMS: [(&str, &str, &str); 2] =
    [("write_stall_exit", "raw_syscalls", "sys_exit"), ("write_stall_enter", "raw_syscalls", "sys_enter")];

/// The programs a switch attaches, in order: the freeze programs, and with
/// `stalls` the write-stall programs between their exit and their entry.
pub fn switch_programs(stalls: bool) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut programs = vec![FREEZE_PROGRAMS[0]];
    if stalls {
        programs.extend(STALL_PROGRAMS);
    }
    programs.push(FREEZE_PROGRAMS[1]);
    programs
}

/// The maps the switch's programs use.
pub const SWITCH_MAP_NAMES: [&str; 6] =
    ["FREEZE_INFLIGHT", "FREEZE_EVENTS", "FREEZE_LOSSES", "STALL_TARGET", "STALL_INFLIGHT", "WRITE_STALL"];

/// The maps only the block I/O programs use.
const BLOCK_IO_MAPS: [&str; 7] =
    ["DEV_IO", "DEV_REMAP", "IN_FLIGHT", "IO_START", "IO_START_USE", "IO_LATENCY", "IO_LOSSES"];
/// The maps only the switch programs use, with their smallest sizes (a ring
/// buffer's size is in bytes, a page at least).
const SWITCH_MAPS: [(&str, u32); 3] = [("FREEZE_INFLIGHT", 1), ("FREEZE_EVENTS", 4096), ("STALL_INFLIGHT", 1)];

/// The raw tracepoints of [`BLOCK_PROGRAMS`].
pub fn block_events() -> Vec<&'static str> {
    BLOCK_PROGRAMS.iter().map(|(_, _, e)| *e).collect()
}

/// The running kernel's layout for the block programs (and the switch's,
/// when the kernel has their tracepoints), found anew.
pub fn kernel_layout() -> Result<KernelLayout> {
    KernelLayout::find(&block_events(), None)
}

/// Loads every map of the object and parses its programs (nothing is loaded
/// into the kernel's verifier or attached yet).
pub fn load(purpose: Purpose) -> Result<Ebpf> {
    load_with(purpose, IN_FLIGHT_SLOTS, &kernel_layout()?)
}

/// [`load`], with an in-flight table of `slots` (a power of two, at most
/// [`IN_FLIGHT_SLOTS`]): fewer make objects share slots, which tests use to
/// drive the overflow map's path.
pub fn load_with_in_flight_slots(purpose: Purpose, slots: u32) -> Result<Ebpf> {
    load_with(purpose, slots, &kernel_layout()?)
}

/// [`load_with_in_flight_slots`] for a kernel `layout` found already (whose
/// `in_flight` mode sizes the in-flight maps).
pub fn load_with(purpose: Purpose, slots: u32, layout: &KernelLayout) -> Result<Ebpf> {
    ensure!(
        slots.is_power_of_two() && slots <= IN_FLIGHT_SLOTS,
        "in-flight slots: a power of two up to {IN_FLIGHT_SLOTS}"
    );
    // Layouts of programs this load will not attach stay zeroed: their
    // tracepoints' formats need not even exist (a kernel without syscall
    // tracepoints still traces block I/O).
    let missing = |why: &String| anyhow::anyhow!("{why}");
    let (ioctl, stall) = match purpose {
        Purpose::BlockIo => Default::default(),
        Purpose::Switch { stalls } => (
            layout.ioctl.clone().map_err(|e| missing(&e))?,
            if stalls { layout.stall.clone().map_err(|e| missing(&e))? } else { Default::default() },
        ),
        Purpose::Pinned => (layout.ioctl.clone().unwrap_or_default(), layout.stall.clone().unwrap_or_default()),
    };
    let mut loader = loader_without_btf();
    loader.override_global("BIO_LAYOUT", &layout.bio, true);
    loader.override_global("IOCTL_TP_LAYOUT", &ioctl, true);
    loader.override_global("STALL_LAYOUT", &stall, true);
    let in_flight_mask = slots - 1;
    loader.override_global("IN_FLIGHT_MASK", &in_flight_mask, true);
    // The hash-map mode has no table, and every start in the hash map.
    let size_in_flight = |loader: &mut EbpfLoader| match layout.in_flight {
        InFlightMode::Table => {
            loader.map_max_entries("IN_FLIGHT", slots);
        }
        InFlightMode::HashMap => {
            loader.map_max_entries("IN_FLIGHT", 1);
            loader.map_max_entries("IO_START", HASH_MAP_STARTS);
        }
    };
    match purpose {
        Purpose::BlockIo => {
            size_in_flight(&mut loader);
            for (map, size) in SWITCH_MAPS {
                loader.map_max_entries(map, size);
            }
        }
        Purpose::Switch { .. } => {
            for map in BLOCK_IO_MAPS {
                loader.map_max_entries(map, 1);
            }
        }
        Purpose::Pinned => size_in_flight(&mut loader),
    }
    loader.load(OBJECT).context("loading hcp's eBPF programs (needs root, or CAP_BPF and CAP_PERFMON)")
}

/// Where the kernel's BTF is, for aya (`Btf::from_sys_fs`).
const KERNEL_BTF_DIR: &str = "/sys/kernel/btf";

/// A loader that relocates nothing against the kernel's BTF: the object
/// has no CO-RE relocations (the layouts stand in for them).
///
/// aya's `EbpfLoader::new` reads and parses the kernel's whole BTF
/// (`/sys/kernel/btf/vmlinux`, 5 MB) before its caller can say it wants
/// none: about half a second of a traced start under emulation, and all
/// of it thrown away. So the loader is made on a thread that sees
/// `/sys/kernel/btf` empty ([`hidden_dir`]), where aya's read fails and
/// it takes the kernel to have no BTF. Where that view cannot be had, the
/// loader is made as aya makes it, and pays the parse.
fn loader_without_btf() -> EbpfLoader<'static> {
    let mut loader =
        hidden_dir::without_dir(Path::new(KERNEL_BTF_DIR), EbpfLoader::new).unwrap_or_else(|_| EbpfLoader::new());
    loader.btf(None);
    loader
}

/// An aya `Btf` holding the `btf_trace_` typedefs of `layout` at the
/// kernel's type ids, every other id a placeholder: a `tp_btf` load reads
/// nothing of it but the id of its event's typedef (the kernel gets only
/// that id), and parsing the kernel's own BTF again would read all 5 MB.
pub fn tp_btf(layout: &KernelLayout) -> Result<aya::Btf> {
    const PTR: u32 = 2;
    const TYPEDEF: u32 = 8;
    let mut strings = vec![0u8];
    let mut named = std::collections::BTreeMap::new();
    for (event, id) in &layout.tp_btf {
        named.insert(*id, strings.len() as u32);
        strings.extend_from_slice(format!("btf_trace_{event}").as_bytes());
        strings.push(0);
    }
    let last = named.keys().next_back().copied().unwrap_or(0);
    let mut types = Vec::with_capacity(last as usize * 12);
    for id in 1..=last {
        let (name, kind) = named.get(&id).map_or((0, PTR), |&name| (name, TYPEDEF));
        for word in [name, kind << 24, 0] {
            types.extend_from_slice(&word.to_ne_bytes());
        }
    }
    let mut blob = Vec::with_capacity(24 + types.len() + strings.len());
    blob.extend_from_slice(&0xeb9f_u16.to_ne_bytes());
    blob.extend_from_slice(&[1, 0]);
    for word in [24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        blob.extend_from_slice(&u32::to_ne_bytes(word));
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&strings);
    aya::Btf::parse(&blob, aya::Endianness::default()).context("building the tracepoints' BTF ids")
}

/// Loads and attaches the block I/O programs of a loaded object; they
/// detach when it drops, unless their links are taken.
pub fn attach_block_programs(ebpf: &mut Ebpf, layout: &KernelLayout) -> Result<()> {
    let btf = tp_btf(layout)?;
    for (program, event) in block_programs(layout.in_flight) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_is_made_where_aya_cannot_read_the_kernels_btf() {
        let vmlinux = Path::new(KERNEL_BTF_DIR).join("vmlinux");
        if crate::privilege::require_root().is_err() || !vmlinux.exists() {
            eprintln!("skipped: needs root and a kernel with BTF");
            return;
        }
        assert!(aya::Btf::from_sys_fs().is_ok(), "readable outside");
        let inside = hidden_dir::without_dir(Path::new(KERNEL_BTF_DIR), || aya::Btf::from_sys_fs().is_ok()).unwrap();
        assert!(!inside, "aya's own reader found the kernel's BTF where the loader is made");
    }
}
