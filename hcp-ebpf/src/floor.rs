//! Benchmark floors, never attached by hcp itself: empty programs on exactly
//! the events and attach types of the block I/O tracer (`block_io`: classic
//! tracepoints; `io_latency`: tp_btf). Attached alone, they measure what
//! merely running a program on those events costs, the least any tracer of
//! them can cost (`cargo xtask bench`, tracing overhead). Only the benchmark
//! driver (`hcp-trace-bench floor`) loads them.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

#[tracepoint]
pub fn floor_tp_bio_queue(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_tp_rq_complete(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_tp_bio_remap(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "block_bio_queue")]
pub fn floor_bio_queue(_ctx: BtfTracePointContext) -> i32 {
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

#[btf_tracepoint(function = "block_rq_complete")]
pub fn floor_rq_complete(_ctx: BtfTracePointContext) -> i32 {
    0
}
