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
//! Attached by user space in the order of `hcp::tracer::object::BLOCK_PROGRAMS`.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use hcp_common::bio::Level;

use crate::{block_io, block_io::Traced, io_latency, kernel};

#[btf_tracepoint(function = "block_bio_queue")]
pub fn bio_queue(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct bio *bio)
    let bio: u64 = ctx.arg(0);
    match kernel::bio(bio) {
        Some(b) => {
            let Some(dev) = Traced::get(b.dev) else { return 0 };
            dev.bio_queued(b.opf, b.bytes);
            // A request-based device's bios are never completed at this
            // level: its requests are timed (see `bio::REQUEST_BASED`).
            if !dev.request_based() {
                io_latency::on_start(bio, Level::Bio, b.dev, b.opf);
            }
        }
        None => io_latency::read_error(),
    }
    0
}

#[btf_tracepoint(function = "block_bio_remap")]
pub fn bio_remap(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct bio *bio, dev_t dev, sector_t from): `bio` already
    // points at the device it is passed down to; `dev` is where it was.
    let bio: u64 = ctx.arg(0);
    let from: u64 = ctx.arg(1);
    match kernel::bio(bio) {
        // A partition's own remap onto its disk keeps the bio's device (the
        // partition): not a pass-down between devices.
        Some(b) if b.dev == from as u32 => {}
        Some(b) => block_io::bio_remapped(b.dev, from as u32, b.opf, b.bytes),
        None => io_latency::read_error(),
    }
    0
}

#[btf_tracepoint(function = "block_bio_complete")]
pub fn bio_complete(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct request_queue *q, struct bio *bio)
    let bio: u64 = ctx.arg(1);
    if !io_latency::on_complete(bio) {
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

#[btf_tracepoint(function = "block_rq_issue")]
pub fn rq_issue(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct request *rq)
    let rq: u64 = ctx.arg(0);
    match kernel::request_part(rq) {
        Some((dev, opf)) if Traced::get(dev).is_some() => io_latency::on_start(rq, Level::Request, dev, opf),
        Some(_) => {}
        None => io_latency::read_error(),
    }
    0
}

#[btf_tracepoint(function = "block_rq_requeue")]
pub fn rq_requeue(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct request *rq): neither completed nor counted, to be
    // issued again (a driver out of resources, a partial completion).
    io_latency::on_requeue(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn rq_complete(ctx: BtfTracePointContext) -> i32 {
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
    if !io_latency::on_complete(rq) && traced.is_some() && matches!(part, Some((p, _)) if p == dev) {
        io_latency::unmatched(dev);
    }
    0
}
