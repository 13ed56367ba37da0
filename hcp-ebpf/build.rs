//! Fails early, with the fix, when bpf-linker is missing, and rebuilds the
//! eBPF object when bpf-linker changes (it is built against the nightly's LLVM).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => panic!("bpf-linker not found on PATH: run `cargo xtask setup`"),
    }
}
