//! I/O latency on each traced device, at the level where the device
//! completes I/O, keyed by the kernel object itself (never
//! by sector) so that split, remapped or reordered I/O never pairs the wrong
//! start with an end:
//!
//! - bio-based devices (device-mapper: the origin, `-real`, the snapshot)
//!   complete bios: `block_bio_queue` to `block_bio_complete`;
//! - request-based (blk-mq) devices (a loop store, a disk) complete requests,
//!   and the block layer traces no bio completion there: `block_rq_issue` to
//!   `block_rq_complete`, the device's service time, as biolatency measures.

use crate::IoOp;

/// In a `DEV_IO` value's flags: the device is request-based (blk-mq). Its
/// bios never reach `block_bio_complete`, so the bio-level program records
/// no start for them (each would hold its in-flight slot for ever); its
/// requests are timed instead.
pub const REQUEST_BASED: u32 = 1;

/// The part a device plays in a session. Everything in the kernel is keyed
/// by device (the `DEV_IO` map holds the traced ones), so that sessions
/// sharing an origin share its figures; user space sums a session's
/// devices, by role.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The origin dm device applications write to.
    Origin = 0,
    /// The device under the origin that holds its data (`<name>-real`, or
    /// the raw device under hcp's wrapper).
    Real = 1,
    /// The changed-blocks store (its loop device, or the block device).
    Store = 2,
    /// The snapshot device, `/dev/hcpN`.
    Snapshot = 3,
}

pub const ROLES: usize = 4;

impl Role {
    pub const ALL: [Role; ROLES] = [Role::Origin, Role::Real, Role::Store, Role::Snapshot];

    pub fn name(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Real => "real",
            Role::Store => "store",
            Role::Snapshot => "snapshot",
        }
    }
}

/// What a latency sample spans.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// A bio, from submission to completion (bio-based devices).
    Bio = 0,
    /// A request, from issue to the device to completion (blk-mq devices).
    Request = 1,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Bio => "bio",
            Level::Request => "request",
        }
    }
}

/// Key of the latency histograms: one per device, level and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LatKey {
    /// The kernel's `dev_t`.
    pub dev: u32,
    /// A [`Level`].
    pub level: u8,
    /// An [`IoOp`].
    pub op: u8,
    pub _pad: u16,
}

/// When a bio or request in flight started, and the histogram its
/// completion goes to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BioStart {
    pub start_ns: u64,
    pub key: LatKey,
}

/// A slot of the in-flight table (`IN_FLIGHT`): which bio or request holds
/// it (a number made of its address; 0: free), and its start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlightSlot {
    pub object: u64,
    pub start_ns: u64,
    pub key: LatKey,
}

/// log2 of the in-flight table's slots. With n objects in flight, about
/// n²/2 / slots pairs share a slot (then one of them goes to the hash map):
/// 0.1 of a pair at queue depth 128.
pub const IN_FLIGHT_BITS: u32 = 16;
pub const IN_FLIGHT_SLOTS: u32 = 1 << IN_FLIGHT_BITS;

/// Indices of the `IO_START_USE` array: how many entries the overflow map
/// (`IO_START`) holds now, and how many starts it took so far.
pub const OVERFLOW_IN_USE: u32 = 0;
pub const OVERFLOW_EVER: u32 = 1;

/// The slot of the object numbered `object` (from its address) in a table
/// of [`IN_FLIGHT_SLOTS`] (of fewer, a power of two: the low bits of this):
/// Fibonacci hashing,
/// whose top bits depend on every bit of the address, so that objects
/// allocated at a fixed stride (requests of one tag set, bios of one slab)
/// spread over the table.
#[inline(always)]
pub fn in_flight_slot(object: u64) -> u32 {
    ((object >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - IN_FLIGHT_BITS)) as u32
}

/// How the running kernel names the device a bio is for, in
/// [`BioLayout::bio_device`].
///
/// Linux 5.11 and later: `bio->bi_bdev`, a `struct block_device`, the
/// partition's own when the bio is for a partition.
pub const BIO_BDEV: u32 = 0;
/// Linux 5.10 and earlier: `bio->bi_disk` and `bio->bi_partno`; partition
/// `n` is `bi_disk->part_tbl->part[n]`, a `struct hd_struct`, and 0 the
/// whole disk.
pub const BIO_DISK: u32 = 1;

/// Offsets inside kernel structs, read from the running kernel's BTF by
/// user space and written into the read-only global `BIO_LAYOUT`, the one
/// request flag the programs test, and where the tracepoints that changed
/// their prototypes hand over their arguments. Members the running kernel
/// does not have stay 0, on the branch the programs never take there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BioLayout {
    /// [`BIO_BDEV`] or [`BIO_DISK`].
    pub bio_device: u32,
    /// `struct bio` -> `struct block_device *bi_bdev` ([`BIO_BDEV`])
    pub bio_bdev: u32,
    /// `struct bio` -> `struct gendisk *bi_disk` ([`BIO_DISK`])
    pub bio_disk: u32,
    /// `struct bio` -> `u8 bi_partno` ([`BIO_DISK`])
    pub bio_partno: u32,
    /// `struct gendisk` -> `struct disk_part_tbl *part_tbl` ([`BIO_DISK`])
    pub disk_part_tbl: u32,
    /// `struct disk_part_tbl` -> `struct hd_struct *part[]` ([`BIO_DISK`])
    pub part_tbl_part: u32,
    /// The `dev_t` of a partition object, the type `request.part` points
    /// to: `block_device.bd_dev` ([`BIO_BDEV`]), `hd_struct.__dev.devt`
    /// ([`BIO_DISK`]).
    pub part_dev: u32,
    /// `struct bio` -> `blk_opf_t bi_opf`
    pub bio_opf: u32,
    /// `struct bio` -> `bi_iter.bi_size` (bytes left to do: all of them
    /// when the bio is queued or remapped)
    pub bio_size: u32,
    /// `struct gendisk` -> `int major`
    pub disk_major: u32,
    /// `struct gendisk` -> `int first_minor`
    pub disk_first_minor: u32,
    /// `struct request` -> `part`, a partition object (see `part_dev`)
    pub rq_part: u32,
    /// `struct request` -> `blk_opf_t cmd_flags`
    pub rq_cmd_flags: u32,
    /// `struct request` -> `unsigned int __data_len` (bytes left to
    /// complete: `blk_rq_bytes()`)
    pub rq_data_len: u32,
    /// 1: a request's disk is `rq->q->disk` (`rq_q`, `queue_disk`), on
    /// kernels whose queue knows its disk; 0: `rq->rq_disk` (`rq_disk`),
    /// on those before.
    pub rq_disk_via_queue: u32,
    /// `struct request` -> `struct request_queue *q`
    pub rq_q: u32,
    /// `struct request_queue` -> `struct gendisk *disk`
    pub queue_disk: u32,
    /// `struct request` -> `struct gendisk *rq_disk`
    pub rq_disk: u32,
    /// `REQ_FUA` (`1 << __REQ_FUA`), the bit of `bi_opf` and `cmd_flags`
    /// that marks a forced-unit-access write.
    pub req_fua: u32,
    /// Which of `block_bio_queue`'s arguments is the bio (Linux 5.10 passes
    /// the queue first).
    pub bio_queue_arg: u32,
    /// Which of `block_bio_remap`'s arguments is the bio, and which the
    /// `dev_t` it was remapped from.
    pub bio_remap_arg: u32,
    pub bio_remap_dev_arg: u32,
}

/// Events that could not be measured, per device. Reported beside every
/// figure set, so that a loss is visible.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BioLosses {
    /// Starts not recorded: their in-flight slot was taken and the overflow
    /// map (`IO_START`) full.
    pub inflight_full: u64,
    /// Samples dropped because the histogram map was full.
    pub histogram_full: u64,
    /// Completions of a traced device whose start was never seen (the bio
    /// was queued before tracing began, or its start was lost).
    pub unmatched: u64,
    /// Kernel struct reads that failed. The device is unknown then: these
    /// are counted under device 0, which no block device has.
    pub read_errors: u64,
    /// Requests that completed without the completion program running:
    /// each found when the request is issued again while its last issue is
    /// still recorded. Neither counted in `rq_completed` nor timed. The
    /// kernel does this rarely (on Linux 6.18, up to a few tens per million
    /// requests on a busy loop device) and counts no skipped run for it.
    pub completions_unseen: u64,
}

/// The `REQ_OP_*` in the low bits of `bi_opf` or a request's `cmd_flags`
/// (`REQ_OP_BITS` = 8) as an
/// [`IoOp`]: read 0, write 1, flush 2, discard 3, secure erase 5, write
/// zeroes 9, zone append 13.
#[inline(always)]
pub fn op_of_opf(opf: u32) -> IoOp {
    match opf & 0xff {
        0 => IoOp::Read,
        1 | 9 | 13 => IoOp::Write,
        3 | 5 => IoOp::Discard,
        _ => IoOp::Other,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers without padding holes.
    unsafe impl aya::Pod for super::LatKey {}
    unsafe impl aya::Pod for super::BioLayout {}
    unsafe impl aya::Pod for super::BioLosses {}
    unsafe impl aya::Pod for super::BioStart {}
    unsafe impl aya::Pod for super::InFlightSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opf_ops() {
        assert_eq!(op_of_opf(0), IoOp::Read);
        assert_eq!(op_of_opf(1 | 1 << 11 | 1 << 17), IoOp::Write, "flags above the op bits are ignored");
        assert_eq!(op_of_opf(2), IoOp::Other);
        assert_eq!(op_of_opf(3), IoOp::Discard);
        assert_eq!(op_of_opf(9), IoOp::Write);
    }

    #[test]
    fn in_flight_slots_spread_strided_objects() {
        // Requests of one tag set: 128 of them, 320 bytes apart; bios of one
        // slab, 256 apart. Each within range, and hardly any two sharing.
        for (base, stride) in [(0xffff_8881_0a2c_0000u64, 320u64), (0xffff_8881_3f00_1000, 256)] {
            let mut slots = [0u32; 128];
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = in_flight_slot(base + i as u64 * stride);
                assert!(*slot < IN_FLIGHT_SLOTS);
            }
            slots.sort_unstable();
            let distinct = 1 + slots.windows(2).filter(|w| w[0] != w[1]).count();
            assert!(distinct >= 126, "{distinct} distinct slots of 128");
        }
    }
}
