//! Starts of the bios and requests in flight on traced devices, by the
//! object's address (as `kernel::object_id` numbers it), from their start
//! event to their completion.
//!
//! Most live in `IN_FLIGHT`, a direct-mapped table: an array indexed by a
//! hash of the address, each slot claimed with an atomic compare-and-swap
//! and given back with an atomic exchange. The few whose slot is held by
//! another object in flight go to `IO_START`, a hash map, instead. Why not
//! the hash map alone, as biolatency does: its insert takes a bucket lock
//! and an element off a free list, and its delete gives both back; on the
//! host benchmark these were half of what the tracer cost per I/O. An array
//! lookup is an address computation (the verifier inlines it), so the
//! table's cost is two atomic instructions per I/O.
//!
//! A start and its completion are causally ordered (the object is handed on
//! only after its start event's program has run), so a slot is only ever
//! contended by different objects, which the compare-and-swap settles.
//!
//! An object that starts again while its start is still recorded gets the
//! new start, and [`record`] hands back the old one's key: a bio queued
//! again (a split's remainder), or a request whose completion never reached
//! its program (requeues take their start first, so a request issued again
//! is one completed unseen), which the caller counts.
//!
//! Kernels before 5.12 refuse the compare-and-swap and the exchange (BPF
//! atomics), in any program that holds them: there the programs are built
//! with `TABLE = false` (user space loads that set, the `_hm` programs of
//! `block_events`), and keep every start in `IO_START`, sized for it at
//! load, as biolatency does: slower, and as exact.
//!
//! Left as it is, being rarer than either alone: a request whose first
//! start went to the hash map (its slot taken) and that is issued again
//! into its slot, now free, completes from the slot and leaves its hash
//! entry behind; completions then look in the hash map for ever, which
//! costs time, not correctness.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap},
};
use hcp_common::bio::{
    in_flight_slot, BioStart, InFlightSlot, LatKey, IN_FLIGHT_SLOTS, OVERFLOW_EVER, OVERFLOW_IN_USE,
};

use crate::{atomic, kernel};

/// Mmapable, so that user space can zero it in one go before the programs
/// are attached again (see hcp-user's `tracer::pins`).
#[map]
static IN_FLIGHT: Array<InFlightSlot> = Array::with_max_entries(IN_FLIGHT_SLOTS, BPF_F_MMAPABLE);

/// The table's size less one (a power of two): user space sets it with the
/// table's size at load, smaller only in the tests of the hash map's path.
#[no_mangle]
static IN_FLIGHT_MASK: u32 = IN_FLIGHT_SLOTS - 1;

#[inline(always)]
fn slot_of(object: u64) -> u32 {
    // SAFETY: a read-only global written by user space before load.
    in_flight_slot(object) & unsafe { core::ptr::read_volatile(&IN_FLIGHT_MASK) }
}

/// Starts whose slot was taken. Sized for deep queues on several devices;
/// a full map is the caller's loss to count.
#[map]
static IO_START: HashMap<u64, BioStart> = HashMap::with_max_entries(8192, 0);

/// `IO_START`'s use: the entries it holds now ([`OVERFLOW_IN_USE`]), so
/// that a completion looks there only when something is (almost never),
/// and the starts it took so far ([`OVERFLOW_EVER`]), for user space to see
/// how often slots are shared.
#[map]
static IO_START_USE: Array<u64> = Array::with_max_entries(2, 0);

/// Why a start could not be recorded.
pub struct Full;

/// Records that `object` started: `Ok(Some(key))` when a start of the same
/// object was still recorded, which the new one replaces (see the module
/// comment); `Err` when neither its slot (with `TABLE`) nor the hash map
/// had room.
#[inline(always)]
pub fn record<const TABLE: bool>(object: u64, start: BioStart) -> Result<Option<LatKey>, Full> {
    let object = kernel::object_id(object);
    if !TABLE {
        return match IO_START.insert(object, start, u64::from(BPF_NOEXIST)) {
            Ok(()) => Ok(None),
            Err(EEXIST) => replace(object, start),
            Err(_) => Err(Full),
        };
    }
    if let Some(slot) = IN_FLIGHT.get_ptr_mut(slot_of(object)) {
        // SAFETY: a member of our own array's value, 8-byte aligned.
        let held = unsafe { atomic::compare_exchange(&raw mut (*slot).object, 0, object) };
        if held == 0 || held == object {
            // SAFETY: the slot is ours until `take` gives it back.
            let replaced = unsafe {
                let replaced = (held == object).then(|| (*slot).key);
                (*slot).start_ns = start.start_ns;
                (*slot).key = start.key;
                replaced
            };
            return Ok(replaced);
        }
    }
    match IO_START.insert(object, start, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            for counter in [OVERFLOW_IN_USE, OVERFLOW_EVER] {
                if let Some(count) = IO_START_USE.get_ptr_mut(counter) {
                    // SAFETY: our own array's value.
                    unsafe { atomic::add(count, 1) };
                }
            }
            Ok(None)
        }
        // Already there: the new start, not a second entry to count.
        Err(EEXIST) => replace(object, start),
        Err(_) => Err(Full),
    }
}

/// `object`'s start in `IO_START` replaced by `start`; the old one's key.
#[inline(always)]
fn replace(object: u64, start: BioStart) -> Result<Option<LatKey>, Full> {
    // SAFETY: copied out before the entry is overwritten.
    let replaced = unsafe { IO_START.get(object) }.map(|s| s.key);
    IO_START.insert(object, start, u64::from(BPF_EXIST)).map_err(|_| Full)?;
    Ok(replaced)
}

/// The kernel's -EEXIST, as map helpers return it.
const EEXIST: i32 = -17;

/// The start of `object`, which completes, removed; `None` if none was
/// recorded (it started before tracing did, or on an untraced device).
#[inline(always)]
pub fn take<const TABLE: bool>(object: u64) -> Option<BioStart> {
    let object = kernel::object_id(object);
    if !TABLE {
        // SAFETY: the value is copied out before the entry is deleted.
        let start = (unsafe { IO_START.get(object) }).copied()?;
        let _ = IO_START.remove(object);
        return Some(start);
    }
    if let Some(slot) = IN_FLIGHT.get_ptr_mut(slot_of(object)) {
        // SAFETY: our own array's value; only `object`'s completion reads
        // the slot while `object` holds it, and reads it before giving it
        // back (the exchange is a barrier).
        unsafe {
            if core::ptr::read_volatile(&raw const (*slot).object) == object {
                let start = BioStart { start_ns: (*slot).start_ns, key: (*slot).key };
                atomic::exchange(&raw mut (*slot).object, 0);
                return Some(start);
            }
        }
    }
    let used = IO_START_USE.get_ptr_mut(OVERFLOW_IN_USE)?;
    // SAFETY: our own array's value.
    if unsafe { core::ptr::read_volatile(used) } == 0 {
        return None;
    }
    // SAFETY: the value is copied out before the entry is deleted.
    let start = (unsafe { IO_START.get(object) }).copied()?;
    if IO_START.remove(object).is_ok() {
        // SAFETY: as above.
        unsafe { atomic::add(used, u64::MAX) };
    }
    Some(start)
}
