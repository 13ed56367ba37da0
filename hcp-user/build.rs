//! Builds the eBPF programs (hcp-ebpf, for bpfel-unknown-none, with the
//! nightly toolchain and bpf-linker) into OUT_DIR, where src/tracer/object.rs embeds them.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "hcp-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../hcp-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
