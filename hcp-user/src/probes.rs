//! The embedded eBPF object (built from hcp-ebpf by build.rs), loaded with
//! its read-only globals filled in for the running kernel.

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use hcp_common::bio::BioLayout;
use hcp_common::{BlockTpLayout, TpFields};

use crate::tracefs;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hcp-ebpf"));

/// Loads every program and map of the object into the kernel (nothing is
/// attached yet).
pub fn load() -> Result<Ebpf> {
    let tracefs = tracefs::root()?;
    let layout = BlockTpLayout {
        bio_queue: block_fields(&tracefs, "block_bio_queue")?,
        rq_complete: block_fields(&tracefs, "block_rq_complete")?,
        bio_remap: TpFields {
            old_dev: tracefs::Format::read(&tracefs, "block", "block_bio_remap")?.offset_of("old_dev", 4)?,
            ..block_fields(&tracefs, "block_bio_remap")?
        },
    };
    let bio = bio_layout()?;
    EbpfLoader::new()
        .override_global("BLOCK_TP_LAYOUT", &layout, true)
        .override_global("BIO_LAYOUT", &bio, true)
        // Without syscall tracepoints the rest still loads; FreezeTracer reports it.
        .override_global("IOCTL_TP_LAYOUT", &crate::freeze_trace::tp_layout(&tracefs).unwrap_or_default(), true)
        .load(OBJECT)
        .context("loading hcp's eBPF programs (needs root, or CAP_BPF and CAP_PERFMON)")
}

/// The offsets of the kernel struct fields the bio programs read.
fn bio_layout() -> Result<BioLayout> {
    let btf = crate::btf::KernelBtf::load()?;
    let offset = |path: &str, size: u32| -> Result<u32> {
        let found = btf.member_size(path)?;
        anyhow::ensure!(found == size, "kernel field {path} is {found} bytes, hcp reads {size}");
        Ok(btf.member_offset(path)?)
    };
    Ok(BioLayout {
        bio_bdev: offset("bio.bi_bdev", 8)?,
        bio_opf: offset("bio.bi_opf", 4)?,
        bdev_dev: offset("block_device.bd_dev", 4)?,
        rq_part: offset("request.part", 8)?,
        rq_cmd_flags: offset("request.cmd_flags", 4)?,
        _pad: 0,
    })
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
