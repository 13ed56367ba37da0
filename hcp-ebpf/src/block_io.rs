//! Per-device block I/O accounting: bios submitted (`block:block_bio_queue`)
//! and requests completed (`block:block_rq_complete`), by direction.
//!
//! Field offsets come from the tracepoints' `format` files, read by user space
//! and written into `BLOCK_TP_LAYOUT` before load, so one object works on
//! every kernel whatever the record layout.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuHashMap,
    programs::TracePointContext,
};
use hcp_common::{BlockTpLayout, DevIoStats, IoOp, OpCount, TpFields, IO_OPS};

/// Set by user space before load (a `volatile const` in C terms).
#[no_mangle]
static BLOCK_TP_LAYOUT: BlockTpLayout = BlockTpLayout {
    bio_queue: TpFields { dev: 0, nr_sector: 0, rwbs: 0, _pad: 0 },
    rq_complete: TpFields { dev: 0, nr_sector: 0, rwbs: 0, _pad: 0 },
};

/// Keyed by the kernel's `dev_t`. User space inserts a zeroed entry for each
/// device it wants counted; events of other devices are ignored.
#[map]
static DEV_IO: PerCpuHashMap<u32, DevIoStats> = PerCpuHashMap::with_max_entries(256, 0);

#[tracepoint]
pub fn block_bio_queue(ctx: TracePointContext) -> u32 {
    // SAFETY: a read of a global that only user space writes, before load.
    let fields = unsafe { core::ptr::read_volatile(&BLOCK_TP_LAYOUT.bio_queue) };
    account(&ctx, &fields, |s| &mut s.bio_queued);
    0
}

#[tracepoint]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    // SAFETY: as above.
    let fields = unsafe { core::ptr::read_volatile(&BLOCK_TP_LAYOUT.rq_complete) };
    account(&ctx, &fields, |s| &mut s.rq_completed);
    0
}

#[inline(always)]
fn account(ctx: &TracePointContext, fields: &TpFields, counts: impl FnOnce(&mut DevIoStats) -> &mut [OpCount; IO_OPS]) {
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
    let op = IoOp::from_rwbs(&rwbs) as usize;
    if let Some(c) = counts(stats).get_mut(op) {
        c.add(u64::from(nr_sector) << 9);
    }
}
