// The programs are in the `hcp-ebpf` binary (src/main.rs), built for the BPF
// target by hcp-user/build.rs. This empty library only lets hcp-user name the
// crate as a build dependency, so cargo rebuilds the object when it changes.
#![no_std]
