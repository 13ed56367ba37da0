//! Per-device block I/O accounting: bios submitted (`block:block_bio_queue`),
//! requests completed (`block:block_rq_complete`), by direction, and bios a
//! stacked device passed down (`block:block_bio_remap`), by source.
//!
//! Field offsets come from the tracepoints' `format` files, read by user space
//! and written into `BLOCK_TP_LAYOUT` before load, so one object works on
//! every kernel whatever the record layout.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuHashMap,
    programs::TracePointContext,
};
use hcp_common::{BlockTpLayout, DevIoStats, IoOp, RemapKey, RemapStats, TpFields};

/// Set by user space before load (a `volatile const` in C terms).
#[no_mangle]
static BLOCK_TP_LAYOUT: BlockTpLayout = BlockTpLayout {
    bio_queue: TpFields { dev: 0, nr_sector: 0, rwbs: 0, old_dev: 0 },
    rq_complete: TpFields { dev: 0, nr_sector: 0, rwbs: 0, old_dev: 0 },
    bio_remap: TpFields { dev: 0, nr_sector: 0, rwbs: 0, old_dev: 0 },
};

/// Keyed by the kernel's `dev_t`. User space inserts a zeroed entry for each
/// device it wants counted; events of other devices are ignored.
#[map]
static DEV_IO: PerCpuHashMap<u32, DevIoStats> = PerCpuHashMap::with_max_entries(256, 0);

/// Bios passed down from one traced device to another, keyed by both.
#[map]
static DEV_REMAP: PerCpuHashMap<RemapKey, RemapStats> = PerCpuHashMap::with_max_entries(1024, 0);

#[tracepoint]
pub fn block_bio_queue(ctx: TracePointContext) -> u32 {
    // SAFETY: a read of a global that only user space writes, before load.
    let fields = unsafe { core::ptr::read_volatile(&BLOCK_TP_LAYOUT.bio_queue) };
    account(&ctx, &fields, |s, op, rwbs, bytes| {
        if let Some(c) = s.bio_queued.get_mut(op) {
            c.add(bytes);
        }
        if IoOp::is_fua_write(rwbs) {
            s.bio_fua_writes.add(bytes);
        }
    });
    0
}

#[tracepoint]
pub fn block_bio_remap(ctx: TracePointContext) -> u32 {
    // SAFETY: as above.
    let fields = unsafe { core::ptr::read_volatile(&BLOCK_TP_LAYOUT.bio_remap) };
    // SAFETY: the offsets come from the tracepoint's own format file.
    let read = unsafe {
        (
            ctx.read_at::<u32>(fields.dev as usize),
            ctx.read_at::<u32>(fields.old_dev as usize),
            ctx.read_at::<u32>(fields.nr_sector as usize),
            ctx.read_at::<[u8; 8]>(fields.rwbs as usize),
        )
    };
    let (Ok(dev), Ok(from), Ok(nr_sector), Ok(rwbs)) = read else {
        return 0;
    };
    // Only between traced devices: the target's entry must exist.
    let Some(stats) = DEV_IO.get_ptr_mut(dev) else { return 0 };
    let key = RemapKey { dev, from };
    if DEV_REMAP.get_ptr_mut(key).is_none() && DEV_REMAP.insert(key, RemapStats::default(), 0).is_err() {
        // SAFETY: this CPU's copy of our own map value.
        unsafe { (*stats).read_errors += 1 };
        return 0;
    }
    if let Some(remap) = DEV_REMAP.get_ptr_mut(key) {
        let op = IoOp::from_rwbs(&rwbs) as usize;
        // SAFETY: as above.
        if let Some(c) = unsafe { (*remap).ops.get_mut(op) } {
            c.add(u64::from(nr_sector) << 9);
        }
    }
    0
}

#[tracepoint]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    // SAFETY: as above.
    let fields = unsafe { core::ptr::read_volatile(&BLOCK_TP_LAYOUT.rq_complete) };
    account(&ctx, &fields, |s, op, _, bytes| {
        if let Some(c) = s.rq_completed.get_mut(op) {
            c.add(bytes);
        }
    });
    0
}

#[inline(always)]
fn account(ctx: &TracePointContext, fields: &TpFields, update: impl FnOnce(&mut DevIoStats, usize, &[u8; 8], u64)) {
    // SAFETY: the offsets come from the tracepoint's own format file.
    let Ok(dev) = (unsafe { ctx.read_at::<u32>(fields.dev as usize) }) else {
        return; // no device, no entry to charge the loss to
    };
    let Some(stats) = DEV_IO.get_ptr_mut(dev) else {
        return; // not a traced device
    };
    // SAFETY: a per-CPU value of our own map, only this CPU touches it.
    let stats = unsafe { &mut *stats };
    let (Ok(nr_sector), Ok(rwbs)) = (unsafe { ctx.read_at::<u32>(fields.nr_sector as usize) }, unsafe {
        ctx.read_at::<[u8; 8]>(fields.rwbs as usize)
    }) else {
        stats.read_errors += 1;
        return;
    };
    update(stats, IoOp::from_rwbs(&rwbs) as usize, &rwbs, u64::from(nr_sector) << 9);
}
