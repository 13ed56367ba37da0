//! The embedded eBPF object (built from hcp-ebpf by build.rs), loaded with
//! its read-only globals filled in for the running kernel.
//!
//! One object holds every program; each user loads it for one purpose and
//! shrinks the maps that purpose never touches, since the kernel allocates
//! every map of a loaded object whether or not its programs run.

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use hcp_common::bio::BioLayout;
use hcp_common::{BlockTpLayout, TpFields};

use crate::btf::KernelBtf;
use crate::tracefs;

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

/// The maps only the block I/O programs use.
const BLOCK_IO_MAPS: [&str; 6] = ["DEV_IO", "DEV_REMAP", "IO_DEVICES", "IO_START", "IO_LATENCY", "IO_LOSSES"];
/// The maps only the switch programs use, with their smallest sizes (a ring
/// buffer's size is in bytes, a page at least).
const SWITCH_MAPS: [(&str, u32); 3] = [("FREEZE_INFLIGHT", 1), ("FREEZE_EVENTS", 4096), ("STALL_INFLIGHT", 1)];

/// Loads every map of the object and parses its programs (nothing is loaded
/// into the kernel's verifier or attached yet).
pub fn load(purpose: Purpose) -> Result<Ebpf> {
    let tracefs = tracefs::root()?;
    let btf = KernelBtf::load()?;
    let layout = BlockTpLayout {
        bio_queue: block_fields(&tracefs, "block_bio_queue")?,
        rq_complete: block_fields(&tracefs, "block_rq_complete")?,
        bio_remap: TpFields {
            old_dev: tracefs::Format::read(&tracefs, "block", "block_bio_remap")?.offset_of("old_dev", 4)?,
            ..block_fields(&tracefs, "block_bio_remap")?
        },
    };
    let bio = bio_layout(&btf)?;
    // Layouts of programs this load will not attach stay zeroed: their
    // tracepoints' formats need not even exist (a kernel without syscall
    // tracepoints still traces block I/O).
    let (ioctl, stall) = match purpose {
        Purpose::BlockIo => Default::default(),
        Purpose::Switch { stalls } => (
            crate::freeze_trace::tp_layout(&tracefs)?,
            if stalls { crate::write_stall::layout(&tracefs, &btf)? } else { Default::default() },
        ),
    };
    let mut loader = EbpfLoader::new();
    loader
        .override_global("BLOCK_TP_LAYOUT", &layout, true)
        .override_global("BIO_LAYOUT", &bio, true)
        .override_global("IOCTL_TP_LAYOUT", &ioctl, true)
        .override_global("STALL_LAYOUT", &stall, true);
    match purpose {
        Purpose::BlockIo => {
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

/// The offsets of the kernel struct fields the bio programs read.
fn bio_layout(btf: &KernelBtf) -> Result<BioLayout> {
    Ok(BioLayout {
        bio_bdev: sized_offset(btf, "bio.bi_bdev", 8)?,
        bio_opf: sized_offset(btf, "bio.bi_opf", 4)?,
        bdev_dev: sized_offset(btf, "block_device.bd_dev", 4)?,
        rq_part: sized_offset(btf, "request.part", 8)?,
        rq_cmd_flags: sized_offset(btf, "request.cmd_flags", 4)?,
        _pad: 0,
    })
}

/// The offset of the kernel struct member `path`, checked to be `size`
/// bytes, the width the program reads.
pub fn sized_offset(btf: &KernelBtf, path: &str, size: u32) -> Result<u32> {
    let found = btf.member_size(path)?;
    anyhow::ensure!(found == size, "kernel field {path} is {found} bytes, hcp reads {size}");
    Ok(btf.member_offset(path)?)
}

fn block_fields(tracefs: &std::path::Path, event: &str) -> Result<TpFields> {
    let format = tracefs::Format::read(tracefs, "block", event)?;
    Ok(TpFields {
        dev: format.offset_of("dev", 4)?,
        nr_sector: format.offset_of("nr_sector", 4)?,
        // Only the first bytes (flags and op letter) are decoded; the array
        // has been 8 or 10 bytes depending on the kernel.
        rwbs: format.offset_of("rwbs", 8)?,
        old_dev: 0,
    })
}
