//! Per-device block I/O accounting, filled by the programs on the
//! `block_bio_queue`, `block_rq_complete` and `block_bio_remap` events.

/// The direction class of a block I/O, decoded from the tracepoint's `rwbs`
/// string (see [`IoOp::from_rwbs`]). Used as an index into per-class arrays.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    Read = 0,
    Write = 1,
    /// Discard and secure erase: `bytes` is the size of the discarded range.
    Discard = 2,
    /// Flushes and anything else that carries no data.
    Other = 3,
}

/// Number of [`IoOp`] classes.
pub const IO_OPS: usize = 4;

impl IoOp {
    pub const ALL: [IoOp; IO_OPS] = [IoOp::Read, IoOp::Write, IoOp::Discard, IoOp::Other];

    /// Decodes the kernel's `rwbs` string (`blk_fill_rwbs()`): an optional
    /// `F` for a preflush, then one operation letter (`W`rite, `R`ead,
    /// `D`iscard, `F`lush, `N`one), then flag letters (`F`UA, `A`head,
    /// `S`ync, `M`eta). So a leading `F` is the preflush only when an
    /// operation letter follows it; otherwise it is the flush operation.
    #[inline(always)]
    pub fn from_rwbs(rwbs: &[u8; 8]) -> IoOp {
        let op = if rwbs[0] == b'F' && matches!(rwbs[1], b'W' | b'R' | b'D' | b'F' | b'N') { rwbs[1] } else { rwbs[0] };
        match op {
            b'R' => IoOp::Read,
            b'W' => IoOp::Write,
            b'D' => IoOp::Discard,
            _ => IoOp::Other,
        }
    }

    /// The class of `opf` (a bio's `bi_opf`, a request's `cmd_flags`) as
    /// [`IoOp::from_rwbs`] gives it for the `rwbs` the kernel makes of it
    /// (`blk_fill_rwbs()`): read 0, write 1, discard 3, secure erase 5;
    /// everything else (flush 2, write zeroes 9, zone append 13, ...) prints
    /// as `F` or `N` there, so `Other`. The per-device counts keep the
    /// classes the block tracepoints' records have always given them.
    #[inline(always)]
    pub fn from_opf(opf: u32) -> IoOp {
        match opf & 0xff {
            0 => IoOp::Read,
            1 => IoOp::Write,
            3 | 5 => IoOp::Discard,
            _ => IoOp::Other,
        }
    }

    /// Whether `rwbs` is a FUA write (an `F` after the operation letter):
    /// how dm-snapshot commits its store's metadata, which sets it apart from
    /// the data chunks it copies.
    #[inline(always)]
    pub fn is_fua_write(rwbs: &[u8; 8]) -> bool {
        let op_at = if rwbs[0] == b'F' && matches!(rwbs[1], b'W' | b'R' | b'D' | b'F' | b'N') { 1 } else { 0 };
        rwbs[op_at] == b'W' && (rwbs[op_at + 1] == b'F' || rwbs[op_at + 2] == b'F')
    }

    pub fn name(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Discard => "discard",
            IoOp::Other => "other",
        }
    }
}

/// How many I/Os of one class were seen, and how many bytes they carried
/// (`nr_sector * 512`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCount {
    pub count: u64,
    pub bytes: u64,
}

impl OpCount {
    #[inline(always)]
    pub fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// Value of the per-CPU `DEV_IO` map, keyed by the kernel's `dev_t`
/// (`major << 20 | minor`). A device is counted and timed only while user
/// space keeps an entry for it: the map is the set of traced devices and
/// their counts, both found with the one lookup each event makes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevIoStats {
    /// Bios submitted to the device (`block_bio_queue`), by [`IoOp`].
    /// Fires for bio-based devices (device-mapper) and blk-mq devices alike.
    pub bio_queued: [OpCount; IO_OPS],
    /// Requests completed by the device (`block_rq_complete`), by [`IoOp`]:
    /// each once, when its last bytes complete, as the kernel's statistics
    /// count it, with the bytes of any partial completion before.
    /// Only request-based (blk-mq) devices complete requests; a dm device
    /// never shows up here.
    pub rq_completed: [OpCount; IO_OPS],
    /// The FUA writes among `bio_queued[Write]` (`REQ_FUA`; see [`IoOp::is_fua_write`] for its `rwbs` form).
    pub bio_fua_writes: OpCount,
    /// Events of this device that could not be counted in full: a remap
    /// whose `DEV_REMAP` entry could not be made (the map full). Counted so
    /// that a loss is visible, never silent. (Kernel reads that fail are
    /// not attributable to a device: they are counted with the latency
    /// losses, under device 0.)
    pub read_errors: u64,
    /// What the programs need to know of the device ([`crate::bio::REQUEST_BASED`]),
    /// the same in every CPU's copy: written by user space when it adds the
    /// device, only read by the programs.
    pub flags: u32,
    pub _pad: u32,
}

/// Key of the `DEV_REMAP` map: bios that a stacked device (`from`, e.g. a dm
/// origin or snapshot) passed down to `dev`. What `dev` queued beyond these
/// was submitted to it directly, e.g. by dm-snapshot's copier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemapKey {
    pub dev: u32,
    pub from: u32,
}

/// Value of `DEV_REMAP`, by [`IoOp`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemapStats {
    pub ops: [OpCount; IO_OPS],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers without padding holes.
    unsafe impl aya::Pod for super::DevIoStats {}
    unsafe impl aya::Pod for super::RemapKey {}
    unsafe impl aya::Pod for super::RemapStats {}
}

#[cfg(test)]
mod tests {
    use super::IoOp;

    fn rwbs(s: &str) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..s.len()].copy_from_slice(s.as_bytes());
        b
    }

    #[test]
    fn decodes_rwbs_strings_the_kernel_prints() {
        for (s, op) in [
            ("R", IoOp::Read),
            ("RA", IoOp::Read),
            ("RM", IoOp::Read),
            ("RSM", IoOp::Read),
            ("W", IoOp::Write),
            ("WS", IoOp::Write),
            ("WFS", IoOp::Write),   // FUA write
            ("FWS", IoOp::Write),   // preflush + write
            ("FWFSM", IoOp::Write), // preflush + FUA metadata write
            ("D", IoOp::Discard),
            ("DE", IoOp::Discard), // secure erase
            ("FD", IoOp::Discard),
            ("F", IoOp::Other),  // REQ_OP_FLUSH
            ("FS", IoOp::Other), // REQ_OP_FLUSH | sync
            ("FN", IoOp::Other), // preflush without data
            ("N", IoOp::Other),
            ("FR", IoOp::Read),
            ("", IoOp::Other),
        ] {
            assert_eq!(IoOp::from_rwbs(&rwbs(s)), op, "rwbs {s:?}");
        }
    }

    #[test]
    fn fua_writes_are_told_apart() {
        for (s, fua) in [
            ("WFS", true),
            ("FWFS", true),
            ("WF", true),
            ("W", false),
            ("WS", false),
            ("FWS", false),
            ("RF", false),
            ("F", false),
        ] {
            assert_eq!(IoOp::is_fua_write(&rwbs(s)), fua, "rwbs {s:?}");
        }
    }

    #[test]
    fn opf_classes_match_the_rwbs_the_kernel_makes_of_them() {
        // (opf, the rwbs blk_fill_rwbs() prints for it), REQ_FUA = 1 << 17,
        // REQ_PREFLUSH = 1 << 18, REQ_SYNC = 1 << 11, REQ_META = 1 << 12.
        let (fua, preflush, sync, meta) = (1 << 17, 1 << 18, 1 << 11, 1 << 12);
        for (opf, s) in [
            (0, "R"),
            (sync | meta, "RSM"),
            (1, "W"),
            (1 | sync, "WS"),
            (1 | fua | sync, "WFS"),
            (1 | preflush | sync, "FWS"),
            (1 | preflush | fua | sync | meta, "FWFSM"),
            (2, "F"),
            (2 | preflush, "FF"),
            (2 | sync, "FS"),
            (3, "D"),
            (5, "DE"),
            (9, "N"),         // write zeroes
            (13, "N"),        // zone append
            (34, "N"),        // a driver-private op
            (preflush, "FR"), // read (0) with a preflush
        ] {
            assert_eq!(IoOp::from_opf(opf), IoOp::from_rwbs(&rwbs(s)), "opf {opf:#x}, rwbs {s:?}");
        }
    }

    #[test]
    fn op_indices_match_all() {
        for (i, op) in IoOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }
}
