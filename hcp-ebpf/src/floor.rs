//! Benchmark floors, never attached by hcp itself: empty programs on
//! exactly the events and attach type of the block I/O programs
//! (`block_events`: tp_btf, one program per event). Attached alone, they
//! measure what merely running a program on those events costs, the least
//! any tracer of them can cost (`cargo xtask bench`, tracing overhead).
//! Only the benchmark driver (`hcp-trace-bench floor`) loads them.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "block_bio_queue")]
pub fn floor_bio_queue(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "block_bio_remap")]
pub fn floor_bio_remap(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "block_bio_complete")]
pub fn floor_bio_complete(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn floor_rq_issue(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "block_rq_requeue")]
pub fn floor_rq_requeue(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn floor_rq_complete(_ctx: BtfTracePointContext) -> i32 {
    0
}
