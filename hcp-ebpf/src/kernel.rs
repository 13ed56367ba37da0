//! What the block programs read from the kernel objects their tracepoints
//! hand over: a bio's or request's device and operation, at offsets from
//! the running kernel's BTF (aya's Rust programs get no CO-RE relocations),
//! which user space writes into `BIO_LAYOUT` before load.
//!
//! The reads are plain loads, not `bpf_probe_read_kernel` calls: tp_btf
//! programs get typed pointers, and because `BIO_LAYOUT` is a frozen
//! read-only global the verifier knows each offset as a constant, checks
//! the load against the kernel's BTF when the program is loaded (an offset
//! that lands on no member of the right size is refused then, not read as
//! garbage later) and makes it a load guarded by the exception table. A
//! helper call per field was most of what these programs cost per I/O.
//!
//! Such a load cannot fail; a bad pointer reads as 0. No block device has
//! device number 0, so a non-NULL `block_device` whose number reads 0 is a
//! failed read, which the callers count (`None`). The one exception, a
//! partition's number on Linux 5.10, is read with the helper
//! ([`partition_devt`]).
//!
//! Members and tracepoint prototypes moved in Linux 5.11 (a bio names its
//! device by `bi_bdev`, no longer `bi_disk` and `bi_partno`; the queue
//! argument left `block_bio_queue` and `block_bio_remap`): `BIO_LAYOUT`
//! says which the running kernel has, and the programs read that way.

use core::arch::asm;

use aya_ebpf::helpers::bpf_probe_read_kernel;
use aya_ebpf::programs::BtfTracePointContext;
use aya_ebpf::EbpfContext;
use hcp_common::bio::{BioLayout, BIO_DISK};

/// Set by user space before load.
#[no_mangle]
static BIO_LAYOUT: BioLayout = BioLayout {
    bio_device: 0,
    bio_bdev: 0,
    bio_disk: 0,
    bio_partno: 0,
    disk_part_tbl: 0,
    part_tbl_part: 0,
    part_dev: 0,
    bio_opf: 0,
    bio_size: 0,
    disk_major: 0,
    disk_first_minor: 0,
    rq_part: 0,
    rq_cmd_flags: 0,
    rq_data_len: 0,
    rq_disk_via_queue: 0,
    rq_q: 0,
    queue_disk: 0,
    rq_disk: 0,
    req_fua: 0,
    bio_queue_arg: 0,
    bio_remap_arg: 0,
    bio_remap_dev_arg: 0,
};

/// One field of `BIO_LAYOUT`, read as the program runs: a volatile read,
/// or LLVM would fold in the zero it was compiled with. One field at a
/// time, so that each event loads only the offsets it uses.
macro_rules! layout {
    ($field:ident) => {
        read_layout(&raw const BIO_LAYOUT.$field)
    };
}

#[inline(always)]
fn read_layout(field: *const u32) -> u32 {
    // SAFETY: a field of `BIO_LAYOUT`, a read-only global written by user
    // space before load.
    unsafe { core::ptr::read_volatile(field) }
}

/// `*(base + offset)`, a BTF-checked load (see the module comment).
///
/// # Safety
/// `base` is a kernel object's address from a tp_btf argument or a load of
/// this kind, and `offset` a member of its type from `BIO_LAYOUT`: the
/// verifier refuses the program otherwise.
#[inline(always)]
unsafe fn load<T>(base: u64, offset: u32) -> T {
    core::ptr::read_volatile((base + u64::from(offset)) as *const T)
}

/// A kernel object's address (a tp_btf pointer argument) as a plain number
/// that identifies it, for hashing and storing: its distance from a fixed
/// address of our own. The verifier refuses any arithmetic on a kernel
/// pointer but one, the difference of two pointers, which it lets programs
/// loaded with CAP_PERFMON make, and which is then a number like any other.
#[inline(always)]
pub fn object_id(object: u64) -> u64 {
    object.wrapping_sub(&raw const BIO_LAYOUT as u64)
}

/// `block_bio_queue`'s bio.
#[inline(always)]
pub fn bio_queue_bio(ctx: &BtfTracePointContext) -> u64 {
    arg(ctx, layout!(bio_queue_arg))
}

/// `block_bio_remap`'s bio, and the `dev_t` it was remapped from.
#[inline(always)]
pub fn bio_remap_args(ctx: &BtfTracePointContext) -> (u64, u64) {
    (arg(ctx, layout!(bio_remap_arg)), arg(ctx, layout!(bio_remap_dev_arg)))
}

/// Argument `index` (0 to 3) of a tp_btf program. The verifier allows
/// context loads only at an offset fixed in the instruction, not at an
/// address computed from the index: each index has a load of its own, and
/// since `index` comes from `BIO_LAYOUT` (a constant to the verifier) it
/// follows only that one. Written as assembly because LLVM would otherwise
/// merge the four loads into one at a computed address.
#[inline(always)]
fn arg(ctx: &BtfTracePointContext, index: u32) -> u64 {
    let args = ctx.as_ptr();
    let value: u64;
    // SAFETY: a tp_btf context is the array of the tracepoint's arguments;
    // the verifier refuses a load beyond those the prototype has.
    unsafe {
        match index {
            0 => asm!("{0} = *(u64 *)({1} + 0)", out(reg) value, in(reg) args, options(readonly, nostack)),
            1 => asm!("{0} = *(u64 *)({1} + 8)", out(reg) value, in(reg) args, options(readonly, nostack)),
            2 => asm!("{0} = *(u64 *)({1} + 16)", out(reg) value, in(reg) args, options(readonly, nostack)),
            _ => asm!("{0} = *(u64 *)({1} + 24)", out(reg) value, in(reg) args, options(readonly, nostack)),
        }
    }
    value
}

/// Whether a partition's bios reach `block_bio_queue` as their disk's:
/// kernels before 5.11 remap a bio from the partition to its disk
/// (`bi_partno` = 0) before that event, and trace the remap before they do.
#[inline(always)]
pub fn partition_bios_queued_at_remap() -> bool {
    layout!(bio_device) == BIO_DISK
}

/// What a bio is, for counting and timing.
#[derive(Clone, Copy)]
pub struct Bio {
    /// `bi_bdev->bd_dev`: the device the bio is for, a partition's own
    /// number (latency is kept per device, partitions included). 0: none.
    pub dev: u32,
    /// `bi_opf`: operation and flags.
    pub opf: u32,
    /// `bi_iter.bi_size`: its size in bytes.
    pub bytes: u32,
}

/// The bio at `bio`; `None` when a read failed.
#[inline(always)]
pub fn bio(bio: u64) -> Option<Bio> {
    // SAFETY: `bio` is a tracepoint's `struct bio *`, the offsets its
    // members'; what is read from it, the objects it points to.
    unsafe {
        let (opf, bytes) = (load::<u32>(bio, layout!(bio_opf)), load::<u32>(bio, layout!(bio_size)));
        // A constant for the verifier (`BIO_LAYOUT` is frozen): it follows
        // only the running kernel's branch, whose members exist.
        let dev = if layout!(bio_device) == BIO_DISK {
            let disk = load::<u64>(bio, layout!(bio_disk));
            if disk == 0 {
                return Some(Bio { dev: 0, opf, bytes });
            }
            match load::<u8>(bio, layout!(bio_partno)) {
                0 => disk_devt(disk),
                partno => partition_devt(disk, partno)?,
            }
        } else {
            let bdev = load::<u64>(bio, layout!(bio_bdev));
            if bdev == 0 {
                return Some(Bio { dev: 0, opf, bytes });
            }
            load::<u32>(bdev, layout!(part_dev))
        };
        // Every block device has a number: 0 is a failed read.
        (dev != 0).then_some(Bio { dev, opf, bytes })
    }
}

/// The number of partition `partno` of `disk` on a [`BIO_DISK`] kernel:
/// `disk->part_tbl->part[partno]->__dev.devt`. The verifier checks loads at
/// constant offsets only, and the index is not one: the slot and the
/// partition are read with `bpf_probe_read_kernel` (two helper calls, for
/// the bios of partitions only). `None` when a read fails.
#[inline(always)]
fn partition_devt(disk: u64, partno: u8) -> Option<u32> {
    // SAFETY: `disk` is a `struct gendisk *` from a checked load.
    let table = unsafe { load::<u64>(disk, layout!(disk_part_tbl)) };
    if table == 0 {
        return None;
    }
    let slot = table + u64::from(layout!(part_tbl_part)) + u64::from(partno) * 8;
    // SAFETY: the helper reads any address, and fails on a bad one.
    let part = unsafe { bpf_probe_read_kernel(slot as *const u64) }.ok()?;
    if part == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((part + u64::from(layout!(part_dev))) as *const u32) }.ok()
}

/// A request's device (`part`'s number, 0 when it has none, as some flush
/// requests) and operation (`cmd_flags`); `None` when a read failed.
#[inline(always)]
pub fn request_part(rq: u64) -> Option<(u32, u32)> {
    // SAFETY: `rq` is a tracepoint's `struct request *`, the offsets its
    // members'.
    unsafe {
        let opf = load::<u32>(rq, layout!(rq_cmd_flags));
        let part = load::<u64>(rq, layout!(rq_part));
        if part == 0 {
            return Some((0, opf));
        }
        match load::<u32>(part, layout!(part_dev)) {
            0 => None,
            dev => Some((dev, opf)),
        }
    }
}

/// A request's operation and flags (`cmd_flags`).
#[inline(always)]
pub fn request_opf(rq: u64) -> u32 {
    // SAFETY: as in `request_part`.
    unsafe { load::<u32>(rq, layout!(rq_cmd_flags)) }
}

/// The bytes of a request not completed yet (`blk_rq_bytes(rq)`): at
/// `block_rq_complete`, before the completion is applied, so a completion
/// of fewer is partial (the driver completes or requeues the rest).
#[inline(always)]
pub fn request_bytes_left(rq: u64) -> u32 {
    // SAFETY: as in `request_part`.
    unsafe { load::<u32>(rq, layout!(rq_data_len)) }
}

/// The number of the disk a request is for (`disk_devt(rq->q->disk)`, or
/// `rq->rq_disk` on kernels before), as the block tracepoints' records
/// give it; 0 when it has none.
#[inline(always)]
pub fn request_disk(rq: u64) -> u32 {
    // SAFETY: as in `request_part`; `q` is a `struct request_queue *`.
    unsafe {
        if layout!(rq_disk_via_queue) == 0 {
            return disk_devt(load::<u64>(rq, layout!(rq_disk)));
        }
        let q = load::<u64>(rq, layout!(rq_q));
        if q == 0 {
            return 0;
        }
        disk_devt(load::<u64>(q, layout!(queue_disk)))
    }
}

/// Whether `opf` has `REQ_FUA`.
#[inline(always)]
pub fn is_fua(opf: u32) -> bool {
    opf & layout!(req_fua) != 0
}

/// `disk_devt(disk)`: `MKDEV(major, first_minor)`, the kernel's `dev_t`
/// (major in the top 12 bits, minor in the low 20); 0 for no disk.
#[inline(always)]
fn disk_devt(disk: u64) -> u32 {
    if disk == 0 {
        return 0;
    }
    // SAFETY: `disk` is a `struct gendisk *` read by a load of this kind.
    let (major, minor) =
        unsafe { (load::<u32>(disk, layout!(disk_major)), load::<u32>(disk, layout!(disk_first_minor))) };
    (major << 20) | minor
}
