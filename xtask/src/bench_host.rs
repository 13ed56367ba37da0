//! Temporary: `cargo xtask bench-host [--quick]` runs the host part of the
//! benchmark on its own until `bench/mod.rs` (`cargo xtask bench`) declares
//! `mod host;` and calls `host::run`. Delete this file, its `mod` line and
//! its task in main.rs then.

#[path = "bench/host.rs"]
mod host;
// (`Section::figure` is for mod.rs.)
#[allow(dead_code)]
#[path = "bench/report.rs"]
mod report;

use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchHostArgs {
    /// A short smoke run.
    #[arg(long)]
    quick: bool,
}

/// Prints the sections as Markdown, and writes them as JSON to
/// `.cache/bench-host.json`.
pub fn run(args: &BenchHostArgs) -> Result<()> {
    let sections = host::run(args.quick)?;
    for s in &sections {
        println!("{}", s.to_markdown());
    }
    let json = serde_json::Value::Array(sections.iter().map(report::Section::to_json).collect());
    let path = crate::cache_dir().join("bench-host.json");
    std::fs::create_dir_all(crate::cache_dir())?;
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!("bench-host: JSON in {}", path.display());
    Ok(())
}
