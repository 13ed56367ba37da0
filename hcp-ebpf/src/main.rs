//! hcp's kernel-side programs. Each program is one small handler; maps and
//! read-only globals (set by user space before load) are the whole interface.
#![no_std]
#![no_main]
// BPF's atomic instructions (see `atomic`).
#![feature(core_intrinsics)]
// Context loads at fixed offsets (see `kernel::arg`).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod atomic;
mod block_events;
mod block_io;
mod floor;
mod freeze;
mod in_flight;
mod io_latency;
mod kernel;
mod write_stall;

/// tp_btf and bpf_probe_read_kernel need a GPL-compatible license.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here.
    loop {}
}
