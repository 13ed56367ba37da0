//! Builds the eBPF programs (hcp-ebpf, for bpfel-unknown-none, with the
//! nightly toolchain and bpf-linker) into OUT_DIR, where src/tracer/object.rs
//! embeds them, with an identity of the object beside them (`hcp-ebpf.id`:
//! its FNV-1a hash), by which programs it pinned are told from another
//! build's.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "hcp-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../hcp-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let object = std::fs::read(out.join("hcp-ebpf"))?;
    let hash = object.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    std::fs::write(out.join("hcp-ebpf.id"), format!("{hash:016x}"))?;
    Ok(())
}
