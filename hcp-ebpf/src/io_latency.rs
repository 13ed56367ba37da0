//! I/O latency per device, level and direction (see
//! `hcp_common::bio`): a start is recorded (`in_flight`, in the table when
//! `TABLE`, else in the hash map only) keyed by the bio's or request's
//! address, and its completion becomes a histogram sample.
//! Called by the programs in `block_events`, which hand over the kernel
//! objects themselves (tp_btf), which the classic tracepoint records do not
//! carry.

use aya_ebpf::{bindings::BPF_F_NO_PREALLOC, helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuHashMap};
use hcp_common::bio::{op_of_opf, BioLosses, BioStart, LatKey, Level};
use hcp_common::hist::LatencyHist;

use crate::in_flight;

/// Latency histograms, per CPU so the I/O path never contends on a lock.
/// Not preallocated: a histogram is 7 KiB per CPU, and a preallocated map
/// would take max_entries times that on every CPU (7 MiB each here) where a
/// session uses a handful of keys. User space creates a device's entries
/// when it starts tracing it, so that no sample waits on an allocation; a
/// key it did not foresee is allocated on its first sample (only tp_btf
/// programs, BPF_PROG_TYPE_TRACING, use the map, which the verifier lets
/// allocate at run time), and a failure is counted.
#[map]
static IO_LATENCY: PerCpuHashMap<LatKey, LatencyHist> = PerCpuHashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// A histogram is far bigger than the 512-byte BPF stack: a new key starts
/// from this zeroed static and is then updated in place.
static ZERO_HIST: LatencyHist = LatencyHist::zeroed();

/// What could not be measured, per device (0: not attributable).
#[map]
static IO_LOSSES: PerCpuHashMap<u32, BioLosses> = PerCpuHashMap::with_max_entries(256, 0);

/// A kernel read that failed: not attributable to any device, so charged
/// to device 0, which no block device has, so that it shows up rather than
/// nothing.
#[inline(always)]
pub fn read_error() {
    count_loss(0, |l| l.read_errors += 1);
}

/// `object` (a bio or request of traced device `dev`, operation `opf`)
/// starts.
#[inline(always)]
pub fn on_start<const TABLE: bool>(object: u64, level: Level, dev: u32, opf: u32) {
    let key = LatKey { dev, level: level as u8, op: op_of_opf(opf) as u8, _pad: 0 };
    // SAFETY: a helper without preconditions.
    let start = BioStart { start_ns: unsafe { bpf_ktime_get_ns() }, key };
    match in_flight::record::<TABLE>(object, start) {
        Ok(None) => {}
        // A request issued again while its last issue is still recorded:
        // that one completed (the block layer reuses a request only once it
        // is freed, and a requeue takes its start, `on_requeue`), but its
        // completion never ran the program, which the kernel does not
        // always run without counting a skipped run. A bio queued again is
        // no such sign (a split's remainder is the same bio).
        Ok(Some(old)) => {
            if level == Level::Request {
                count_loss(old.dev, |l| l.completions_unseen += 1);
            }
        }
        Err(in_flight::Full) => count_loss(dev, |l| l.inflight_full += 1),
    }
}

/// Request `object` goes back to its queue, to be issued again: its start
/// is dropped, so that the next issue starts afresh and is not taken for a
/// completion unseen.
#[inline(always)]
pub fn on_requeue<const TABLE: bool>(object: u64) {
    let _ = in_flight::take::<TABLE>(object);
}

/// `object` completes: its latency becomes a sample. `false` when no start
/// was recorded (it started before tracing did, or its device is not
/// traced): the caller knows which, and calls [`unmatched`] for the first.
#[inline(always)]
pub fn on_complete<const TABLE: bool>(object: u64) -> bool {
    let Some(start) = in_flight::take::<TABLE>(object) else {
        return false;
    };
    // SAFETY: a helper without preconditions.
    let elapsed = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.start_ns);
    if IO_LATENCY.get_ptr_mut(start.key).is_none() {
        // By reference: a copy of the histogram would not fit on the stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = IO_LATENCY.insert(start.key, &ZERO_HIST, 0);
    }
    match IO_LATENCY.get_ptr_mut(start.key) {
        // SAFETY: this CPU's copy of our own map value.
        Some(hist) => unsafe { (*hist).record(elapsed) },
        None => count_loss(start.key.dev, |l| l.histogram_full += 1),
    }
    true
}

/// A completion on traced device `dev` whose start was never seen.
#[inline(always)]
pub fn unmatched(dev: u32) {
    count_loss(dev, |l| l.unmatched += 1);
}

#[inline(always)]
fn count_loss(dev: u32, bump: impl FnOnce(&mut BioLosses)) {
    if let Some(losses) = IO_LOSSES.get_ptr_mut(dev) {
        // SAFETY: this CPU's copy of our own map value.
        bump(unsafe { &mut *losses });
    } else {
        let mut losses = BioLosses::default();
        bump(&mut losses);
        let _ = IO_LOSSES.insert(dev, losses, 0);
    }
}
