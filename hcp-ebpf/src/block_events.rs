//! The block I/O programs: one tp_btf program per block event, each doing
//! all hcp does on it: counting (`block_io`) and timing (`io_latency`).
//!
//! Why tp_btf for all of it, one program per event: a classic tracepoint
//! program makes the kernel build the event's record first (`rwbs` string
//! and all) and is skipped whenever any other tracing program is running on
//! the CPU (a completion interrupting a submission's program), counted only
//! in the program's `recursion_misses`; a tp_btf program gets the event's
//! arguments as they are, and is skipped only if it interrupts itself. And
//! each program attached to an event is one more indirect call on every
//! I/O: one program per event does the work of both.
//!
//! Each program that records or takes a start comes twice: as itself,
//! keeping starts in the in-flight table, and with `_hm`, keeping them in
//! the hash map only, for kernels that refuse the table's atomic
//! instructions (see `in_flight`). User space loads one set.
//!
//! Attached by user space in the order of `hcp::tracer::object::BLOCK_PROGRAMS`.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use hcp_common::bio::Level;

use crate::{block_io, block_io::Traced, io_latency, kernel};

/// One program per in-flight mode: `$table` keeps starts in the in-flight
/// table, `$hash_map` in the hash map only (see the module comment).
macro_rules! both_modes {
    ($event:literal, $table:ident, $hash_map:ident, $handler:ident) => {
        #[btf_tracepoint(function = $event)]
        pub fn $table(ctx: BtfTracePointContext) -> i32 {
            $handler::<true>(&ctx)
        }

        #[btf_tracepoint(function = $event)]
        pub fn $hash_map(ctx: BtfTracePointContext) -> i32 {
            $handler::<false>(&ctx)
        }
    };
}

both_modes!("block_bio_queue", bio_queue, bio_queue_hm, on_bio_queue);
both_modes!("block_bio_complete", bio_complete, bio_complete_hm, on_bio_complete);
both_modes!("block_rq_issue", rq_issue, rq_issue_hm, on_rq_issue);
both_modes!("block_rq_requeue", rq_requeue, rq_requeue_hm, on_rq_requeue);
both_modes!("block_rq_complete", rq_complete, rq_complete_hm, on_rq_complete);

#[inline(always)]
fn on_bio_queue<const TABLE: bool>(ctx: &BtfTracePointContext) -> i32 {
    // TP_PROTO(struct bio *bio); Linux 5.10: (struct request_queue *q,
    // struct bio *bio).
    let bio = kernel::bio_queue_bio(ctx);
    match kernel::bio(bio) {
        Some(b) => queued::<TABLE>(bio, b),
        None => io_latency::read_error(),
    }
    0
}

/// Bio `bio` (`b`) is queued on its device.
#[inline(always)]
fn queued<const TABLE: bool>(bio: u64, b: kernel::Bio) {
    let Some(dev) = Traced::get(b.dev) else { return };
    dev.bio_queued(b.opf, b.bytes);
    // A request-based device's bios are never completed at this level: its
    // requests are timed (see `bio::REQUEST_BASED`).
    if !dev.request_based() {
        io_latency::on_start::<TABLE>(bio, Level::Bio, b.dev, b.opf);
    }
}

both_modes!("block_bio_remap", bio_remap, bio_remap_hm, on_bio_remap);

#[inline(always)]
fn on_bio_remap<const TABLE: bool>(ctx: &BtfTracePointContext) -> i32 {
    // TP_PROTO(struct bio *bio, dev_t dev, sector_t from), the queue first
    // on Linux 5.10: `bio` already points at the device it is passed down
    // to; `dev` is where it was.
    let (bio, from) = kernel::bio_remap_args(ctx);
    match kernel::bio(bio) {
        // A partition's own remap onto its disk keeps the bio's device (the
        // partition): not a pass-down between devices. Before Linux 5.11 it
        // is the partition's last event: the bio is on the disk by its
        // queue event, so it is counted for the partition here, as the
        // queue event counts it on later kernels. (Its disk counts it too
        // there, if traced: a disk whose partition is in use cannot be.)
        Some(b) if b.dev == from as u32 => {
            if kernel::partition_bios_queued_at_remap() {
                queued::<TABLE>(bio, b);
            }
        }
        Some(b) => block_io::bio_remapped(b.dev, from as u32, b.opf, b.bytes),
        None => io_latency::read_error(),
    }
    0
}

#[inline(always)]
fn on_bio_complete<const TABLE: bool>(ctx: &BtfTracePointContext) -> i32 {
    // TP_PROTO(struct request_queue *q, struct bio *bio)
    let bio: u64 = ctx.arg(1);
    if !io_latency::on_complete::<TABLE>(bio) {
        // The bio's device now may be another than at its start (a
        // partition's bio is on its disk by now): only a traced one's
        // completion without a start is a loss.
        match kernel::bio(bio) {
            Some(b) if Traced::get(b.dev).is_some() => io_latency::unmatched(b.dev),
            Some(_) => {}
            None => io_latency::read_error(),
        }
    }
    0
}

#[inline(always)]
fn on_rq_issue<const TABLE: bool>(ctx: &BtfTracePointContext) -> i32 {
    // TP_PROTO(struct request *rq)
    let rq: u64 = ctx.arg(0);
    match kernel::request_part(rq) {
        Some((dev, opf)) if Traced::get(dev).is_some() => io_latency::on_start::<TABLE>(rq, Level::Request, dev, opf),
        Some(_) => {}
        None => io_latency::read_error(),
    }
    0
}

#[inline(always)]
fn on_rq_requeue<const TABLE: bool>(ctx: &BtfTracePointContext) -> i32 {
    // TP_PROTO(struct request *rq): neither completed nor counted, to be
    // issued again (a driver out of resources, a partial completion).
    io_latency::on_requeue::<TABLE>(ctx.arg(0));
    0
}

#[inline(always)]
fn on_rq_complete<const TABLE: bool>(ctx: &BtfTracePointContext) -> i32 {
    // TP_PROTO(struct request *rq, blk_status_t error, unsigned int nr_bytes)
    let rq: u64 = ctx.arg(0);
    let nr_bytes = ctx.arg::<u64>(2) as u32;
    // A partial completion (a loop device's short read, requeued for the
    // rest) is not the request's end: its bytes count, and the request
    // once, when its last bytes complete, as the kernel's own statistics
    // count it; its start waits for that end too.
    let whole = nr_bytes >= kernel::request_bytes_left(rq);
    // Counted for the partition the request is for, else its disk; timed
    // only with a partition (requests without one, as some flushes, have
    // no start recorded).
    let part = kernel::request_part(rq);
    let dev = match part {
        Some((dev, _)) if dev != 0 => dev,
        _ => kernel::request_disk(rq),
    };
    let traced = Traced::get(dev);
    if let Some(t) = traced {
        t.rq_completed(kernel::request_opf(rq), nr_bytes, whole);
    }
    if !whole {
        return 0;
    }
    // Always looked for, even on a device no longer traced: a start
    // recorded before would otherwise hold its slot.
    if !io_latency::on_complete::<TABLE>(rq) && traced.is_some() && matches!(part, Some((p, _)) if p == dev) {
        io_latency::unmatched(dev);
    }
    0
}
