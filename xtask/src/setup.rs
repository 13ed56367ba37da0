//! `cargo xtask setup`: installs what a fresh machine of the project's kind
//! lacks, and nothing more. Every step first checks; a run with everything
//! present changes nothing and takes well under five seconds.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::kernel::{self, GuestKernel};

/// Debian packages, each with what needs it.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "the test VM"),
    ("busybox-static", "the test VM's init"),
    ("udev", "the test VM booted with systemd (cargo xtask vm --systemd)"),
    ("fdisk", "partitioning test disks (sfdisk)"),
    ("xz-utils", "unpacking the 5.10 and 6.1 guest kernels, the 6.12 modules and Debian 11's package index"),
    ("curl", "fetching the 5.10 guest kernel from Debian 11's archive"),
    ("zstd", "unpacking the 6.12 guest kernel"),
    ("libdevmapper-dev", "the devicemapper crate"),
    ("pkg-config", "the devicemapper crate's build"),
    ("clang", "bindgen in the devicemapper crate's build"),
    ("dmsetup", "tests and inspection of dm tables"),
    ("e2fsprogs", "ext4 in tests"),
    ("xfsprogs", "xfs in tests"),
    ("fio", "write load in tests and benchmarks"),
    ("sqlite3", "a live database in tests"),
    ("lvm2", "LVM snapshots, the benchmark baseline"),
    ("bpftrace", "the tracing-overhead benchmark's baseline"),
    ("chromium", "rendering hcp's HTML report in tests, as a person sees it"),
    ("dpkg-dev", "the package: dpkg-shlibdeps computes its Depends"),
    ("lintian", "checking the package"),
    ("man-db", "rendering the manual pages in tests"),
    ("systemd", "the test VM's boots with systemd as PID 1"),
];

/// The nightly toolchain builds the eBPF crate (`-Z build-std=core`).
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// bpf-linker is pinned: 0.13.0 is the release that links with the nightly's
/// LLVM 22 (see README, "Toolchains").
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args)]
pub struct SetupArgs {
    /// Look up the newest 5.10 guest kernel in Debian 11's archive now (it
    /// is otherwise looked up at most once a day; 6.1 and 6.12 follow apt's
    /// lists, which `apt-get update` refreshes).
    #[arg(long)]
    pub refresh_kernels: bool,
}

pub fn run() -> Result<()> {
    run_with(&SetupArgs { refresh_kernels: false })
}

pub fn run_with(args: &SetupArgs) -> Result<()> {
    let started = Instant::now();
    debian_packages()?;
    nightly_components()?;
    bpf_linker()?;
    for k in GuestKernel::TESTED {
        let unpacked = kernel::ensure_with(k, args.refresh_kernels)?;
        eprintln!("setup: guest kernel {k}: {}", unpacked.release);
    }
    eprintln!("setup: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn debian_packages() -> Result<()> {
    let names: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).collect();
    // One dpkg-query for all: unknown packages go to stderr, which is fine.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(&names)
        .output()
        .context("running dpkg-query: this needs a Debian-based machine")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(n, _)| !installed.contains(n)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (name, why) in &missing {
        eprintln!("setup: installing {name} (for {why})");
    }
    let missing: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
    if !is_root() {
        bail!(
            "missing Debian packages: {}; install them as root: apt-get install --no-install-recommends {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").args(["update", "-q"]), "apt-get update")?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )
}

fn nightly_components() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup: install rustup and a nightly toolchain (rustup toolchain install nightly)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: the eBPF crate needs one; install it with `rustup toolchain install nightly` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    for component in NIGHTLY_COMPONENTS {
        if !installed.lines().any(|l| l.starts_with(&format!("{component}-")) || l == *component) {
            eprintln!("setup: adding {component} to the nightly toolchain");
            run_cmd(
                Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]),
                "rustup component add",
            )?;
        }
    }
    Ok(())
}

/// bpf-linker must be built against the nightly's own libLLVM (the .so name
/// embeds the rustc version, so a nightly update breaks an old build: the
/// `--version` probe below then fails to load and we rebuild). A plain
/// `cargo install bpf-linker` would pick Debian's LLVM 14 and fail.
fn bpf_linker() -> Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if works {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM (about 2 minutes)");
    let sysroot = capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|n| {
            Some(n.strip_prefix("lib")?.strip_suffix(".so")?.to_string())
                .filter(|n| n.starts_with("LLVM-") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM-*-rust-*.so in {}: is the nightly toolchain complete?", lib.display()))?;
    let major = llvm.trim_start_matches("LLVM-").split('-').next().unwrap_or_default().to_string();
    let rustflags = format!("-L native={0} -l dylib={llvm} -C link-arg=-Wl,-rpath,{0}", lib.display());
    run_cmd(
        Command::new("cargo")
            .env("CARGO_TARGET_DIR", crate::cache_dir().join("bpf-linker-build"))
            .env("RUSTFLAGS", rustflags)
            .args(["+nightly", "install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
            .args(["--no-default-features", "--features", &format!("llvm-{major},no-llvm-linking")]),
        "cargo install bpf-linker",
    )?;
    let version = capture(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed into cargo's bin directory, which must be on PATH")?;
    eprintln!("setup: {}", version.trim());
    Ok(())
}

fn is_root() -> bool {
    capture(Command::new("id").arg("-u")).is_ok_and(|id| id.trim() == "0")
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
