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
//! failed read, which the callers count (`None`).

use hcp_common::bio::BioLayout;

/// Set by user space before load.
#[no_mangle]
static BIO_LAYOUT: BioLayout = BioLayout {
    bio_bdev: 0,
    bio_opf: 0,
    bio_size: 0,
    bdev_dev: 0,
    disk_major: 0,
    disk_first_minor: 0,
    rq_part: 0,
    rq_cmd_flags: 0,
    rq_data_len: 0,
    rq_q: 0,
    queue_disk: 0,
    req_fua: 0,
};

#[inline(always)]
fn layout() -> BioLayout {
    // SAFETY: a read-only global written by user space before load.
    unsafe { core::ptr::read_volatile(&BIO_LAYOUT) }
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
    let l = layout();
    // SAFETY: `bio` is a tracepoint's `struct bio *`, the offsets its members'.
    unsafe {
        let opf = load::<u32>(bio, l.bio_opf);
        let bytes = load::<u32>(bio, l.bio_size);
        let bdev = load::<u64>(bio, l.bio_bdev);
        if bdev == 0 {
            return Some(Bio { dev: 0, opf, bytes });
        }
        // Every block device has a number.
        match load::<u32>(bdev, l.bdev_dev) {
            0 => None,
            dev => Some(Bio { dev, opf, bytes }),
        }
    }
}

/// A request's device (`part->bd_dev`, 0 when it has none, as some flush
/// requests) and operation (`cmd_flags`); `None` when a read failed.
#[inline(always)]
pub fn request_part(rq: u64) -> Option<(u32, u32)> {
    let l = layout();
    // SAFETY: `rq` is a tracepoint's `struct request *`, the offsets its
    // members'.
    unsafe {
        let opf = load::<u32>(rq, l.rq_cmd_flags);
        let part = load::<u64>(rq, l.rq_part);
        if part == 0 {
            return Some((0, opf));
        }
        match load::<u32>(part, l.bdev_dev) {
            0 => None,
            dev => Some((dev, opf)),
        }
    }
}

/// A request's operation and flags (`cmd_flags`).
#[inline(always)]
pub fn request_opf(rq: u64) -> u32 {
    // SAFETY: as in `request_part`.
    unsafe { load::<u32>(rq, layout().rq_cmd_flags) }
}

/// The bytes of a request not completed yet (`blk_rq_bytes(rq)`): at
/// `block_rq_complete`, before the completion is applied, so a completion
/// of fewer is partial (the driver completes or requeues the rest).
#[inline(always)]
pub fn request_bytes_left(rq: u64) -> u32 {
    // SAFETY: as in `request_part`.
    unsafe { load::<u32>(rq, layout().rq_data_len) }
}

/// The number of the disk a request is for, `disk_devt(rq->q->disk)`, as
/// the block tracepoints' records give it; 0 when the queue has no disk.
#[inline(always)]
pub fn request_disk(rq: u64) -> u32 {
    let l = layout();
    // SAFETY: as in `request_part`; `q` is a `struct request_queue *`.
    unsafe {
        let q = load::<u64>(rq, l.rq_q);
        if q == 0 {
            return 0;
        }
        disk_devt(load::<u64>(q, l.queue_disk))
    }
}

/// Whether `opf` has `REQ_FUA`.
#[inline(always)]
pub fn is_fua(opf: u32) -> bool {
    opf & layout().req_fua != 0
}

/// `disk_devt(disk)`: `MKDEV(major, first_minor)`, the kernel's `dev_t`
/// (major in the top 12 bits, minor in the low 20); 0 for no disk.
#[inline(always)]
fn disk_devt(disk: u64) -> u32 {
    if disk == 0 {
        return 0;
    }
    let l = layout();
    // SAFETY: `disk` is a `struct gendisk *` read by a load of this kind.
    let (major, minor) = unsafe { (load::<u32>(disk, l.disk_major), load::<u32>(disk, l.disk_first_minor)) };
    (major << 20) | minor
}
