//! Per-device block I/O accounting: bios submitted (`block_bio_queue`),
//! requests completed (`block_rq_complete`), by direction, and bios a
//! stacked device passed down (`block_bio_remap`), by source. Called by the
//! programs in `block_events`, which also time the same events.
//!
//! Devices are those the I/O is for: a partition's own number, not its
//! disk's (which the block tracepoints' records give), since a partition
//! can be an origin's data device or a store; directions are the class of
//! the records' `rwbs`.

use aya_ebpf::{macros::map, maps::PerCpuHashMap};
use hcp_common::{bio::REQUEST_BASED, DevIoStats, IoOp, RemapKey, RemapStats};

use crate::kernel;

/// The traced devices, keyed by the kernel's `dev_t`: user space inserts an
/// entry (zeroed counts, and the device's flags) for each device it wants
/// counted and timed; events of other devices are ignored.
#[map]
static DEV_IO: PerCpuHashMap<u32, DevIoStats> = PerCpuHashMap::with_max_entries(256, 0);

/// Bios passed down from one traced device to another, keyed by both.
#[map]
static DEV_REMAP: PerCpuHashMap<RemapKey, RemapStats> = PerCpuHashMap::with_max_entries(1024, 0);

/// A traced device: its entry's copy on this CPU, found by the one lookup
/// an event makes.
#[derive(Clone, Copy)]
pub struct Traced(*mut DevIoStats);

impl Traced {
    /// Device `dev`, if it is traced (device 0, none, never is).
    #[inline(always)]
    pub fn get(dev: u32) -> Option<Traced> {
        DEV_IO.get_ptr_mut(dev).map(Traced)
    }

    /// Whether the device is request-based (`bio::REQUEST_BASED`).
    #[inline(always)]
    pub fn request_based(self) -> bool {
        // SAFETY: a per-CPU value of our own map, only this CPU touches it.
        unsafe { (*self.0).flags & REQUEST_BASED != 0 }
    }

    /// A bio of `bytes` queued on the device.
    #[inline(always)]
    pub fn bio_queued(self, opf: u32, bytes: u32) {
        // SAFETY: as above.
        let stats = unsafe { &mut *self.0 };
        let op = IoOp::from_opf(opf);
        let bytes = sectors(bytes);
        if let Some(c) = stats.bio_queued.get_mut(op as usize) {
            c.add(bytes);
        }
        if op == IoOp::Write && kernel::is_fua(opf) {
            stats.bio_fua_writes.add(bytes);
        }
    }

    /// A request of the device completed `bytes`: all it had left
    /// (`whole`), or a part, whose bytes count but which is no request of
    /// its own.
    #[inline(always)]
    pub fn rq_completed(self, opf: u32, bytes: u32, whole: bool) {
        // SAFETY: as above.
        let stats = unsafe { &mut *self.0 };
        if let Some(c) = stats.rq_completed.get_mut(IoOp::from_opf(opf) as usize) {
            c.count += u64::from(whole);
            c.bytes += sectors(bytes);
        }
    }
}

/// A bio of `bytes` passed down to device `dev` from device `from`.
#[inline(always)]
pub fn bio_remapped(dev: u32, from: u32, opf: u32, bytes: u32) {
    // Only between traced devices: the target's entry must exist.
    let Some(Traced(stats)) = Traced::get(dev) else { return };
    let key = RemapKey { dev, from };
    if DEV_REMAP.get_ptr_mut(key).is_none() && DEV_REMAP.insert(key, RemapStats::default(), 0).is_err() {
        // SAFETY: this CPU's copy of our own map value.
        unsafe { (*stats).read_errors += 1 };
        return;
    }
    if let Some(remap) = DEV_REMAP.get_ptr_mut(key) {
        // SAFETY: as above.
        if let Some(c) = unsafe { (*remap).ops.get_mut(IoOp::from_opf(opf) as usize) } {
            c.add(sectors(bytes));
        }
    }
}

/// Bytes in whole sectors, as the records' `nr_sector` counts them.
#[inline(always)]
fn sectors(bytes: u32) -> u64 {
    u64::from(bytes >> 9) << 9
}
