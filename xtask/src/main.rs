//! Project tasks, run as `cargo xtask <task>` (alias in .cargo/config.toml).
//!
//! - `setup`: install what a fresh machine lacks (idempotent).
//! - `vm`: run a host command inside a qemu guest booting a Debian kernel.
//! - `test`: every check CI runs: fmt, clippy, unit, host and VM tests.
//! - `demo`: the main job: a snapshot of a busy scratch volume, proven consistent.
//! - `dist`: the Debian package, with manual pages, completions and units.
//! - `bench`: what a snapshot costs, side by side with LVM and a bare suspend.
//! - `layers`: the library's module graph, its depth and any import cycle.

mod bench;
mod boot;
mod demo;
mod dist;
mod initramfs;
mod kernel;
mod layers;
mod setup;
mod test;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hcp project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install packages, toolchain parts and guest kernels this machine lacks.
    Setup(setup::SetupArgs),
    /// Boot a guest kernel and run CMD in the host's userland inside it.
    Vm(vm::VmArgs),
    /// Run every check CI runs.
    Test(test::TestArgs),
    /// Snapshot a busy scratch volume and prove the snapshot consistent.
    Demo(demo::DemoArgs),
    /// Build the Debian package (target/dist/hcp_<version>_amd64.deb) and check it with lintian.
    Dist(dist::DistArgs),
    /// Measure hcp against LVM and a bare suspend; write bench/results.json and bench/RESULTS.md.
    Bench(bench::BenchArgs),
    /// Print the library's module layers; fail on any import cycle.
    Layers(layers::LayersArgs),
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().expect("xtask has a parent dir").to_path_buf()
}

/// Where downloads, unpacked kernels, initramfs images and VM scratch files live.
/// Ignored by git; `cargo xtask setup` fills it.
pub fn cache_dir() -> PathBuf {
    workspace_root().join(".cache")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(args) => setup::run_with(&args).map(|()| 0),
        Task::Vm(args) => vm::run(&args),
        Task::Test(args) => test::run(&args).map(|()| 0),
        Task::Demo(args) => demo::run(&args).map(|()| 0),
        Task::Dist(args) => dist::run(&args).map(|()| 0),
        Task::Bench(args) => bench::run(&args).map(|()| 0),
        Task::Layers(args) => layers::run(&args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
