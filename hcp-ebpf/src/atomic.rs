//! The BPF atomic instructions the in-flight table needs, on 64-bit words
//! in map values.
//!
//! `core::sync::atomic` offers no read-modify-write on the BPF target (its
//! spec declares no compare-and-swap, for the sake of the oldest BPF ISA),
//! but the kernels hcp supports all have BPF_ATOMIC (5.12 and later), which
//! LLVM emits for these intrinsics: cmpxchg, xchg and fetch-add. Every one
//! of them is a full barrier in the kernel's BPF memory model.

use core::intrinsics::{atomic_cxchg, atomic_xadd, atomic_xchg, AtomicOrdering};

/// Sets `*word` to `new` if it is `old`; returns what it was.
///
/// # Safety
/// `word` is valid and 8-byte aligned: a member of a map value.
#[inline(always)]
pub unsafe fn compare_exchange(word: *mut u64, old: u64, new: u64) -> u64 {
    atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(word, old, new).0
}

/// Sets `*word` to `new`; returns what it was.
///
/// # Safety
/// As for [`compare_exchange`].
#[inline(always)]
pub unsafe fn exchange(word: *mut u64, new: u64) -> u64 {
    atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(word, new)
}

/// Adds `delta` (wrapping: `u64::MAX` subtracts one) to `*word`.
///
/// # Safety
/// As for [`compare_exchange`].
#[inline(always)]
pub unsafe fn add(word: *mut u64, delta: u64) {
    atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(word, delta);
}
