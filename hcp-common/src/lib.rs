//! Types shared by hcp's eBPF programs (`hcp-ebpf`) and its user-space side
//! (`hcp-user`). Everything here is `#[repr(C)]` plain data: these structs are
//! the layout of map keys and values, and of the read-only globals user space
//! writes into the object before it is loaded.
//!
//! `no_std`; the `user` feature adds `aya::Pod` so user space can move the
//! types in and out of maps.
#![no_std]

pub mod bio;
pub mod block;
pub mod freeze;
pub mod hist;
pub mod stall;

pub use block::{DevIoStats, IoOp, OpCount, RemapKey, RemapStats, IO_OPS};
pub use hist::LatencyHist;
