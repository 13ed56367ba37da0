//! `cargo xtask demo`: the main job on an embedded default. On a fresh
//! machine it sets itself up, then snapshots a busy scratch LVM volume and
//! proves the snapshot consistent (see demo.sh). Where the host kernel has
//! no device-mapper, all of it runs inside the test VM.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use clap::Args;

use crate::kernel::GuestKernel;
use crate::{setup, vm};

const SCRIPT: &str = include_str!("demo.sh");

#[derive(Args)]
pub struct DemoArgs {
    /// Guest kernel for the demo (when the host has no device-mapper).
    #[arg(long, default_value = "6.1")]
    kernel: GuestKernel,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    setup::run()?;
    if Path::new("/dev/mapper/control").exists() {
        return run_here();
    }
    eprintln!("xtask demo: this kernel has no device-mapper; running the demo in a VM (Linux {})", args.kernel);
    let (code, out) = vm::run_keeping_output(&vm::VmArgs {
        kernel: args.kernel,
        disks: vec!["256M".to_string()],
        timeout: 600,
        mem: 2048,
        smp: 1,
        aslr: false,
        // Optimised, as users run it: a debug build takes seconds longer to
        // load the tracer, which the demo's figures would show.
        release: true,
        no_build: false,
        verbose: false,
        attach: vec![],
        root_disk: None,
        systemd: false,
        cmd: vec!["bash".into(), "-c".into(), SCRIPT.into(), "demo.sh".into(), "/dev/vda".into()],
    })?;
    if code != 0 {
        bail!("the demo failed (exit status {code})");
    }
    let report = crate::cache_dir().join("demo-report.html");
    std::fs::copy(out.join("report.html"), &report)?;
    eprintln!("xtask demo: the report: {} (open it in a browser)", report.display());
    Ok(())
}

/// The host has device-mapper: run the demo here, on a scratch loop device.
fn run_here() -> Result<()> {
    eprintln!("xtask demo: this kernel has device-mapper; running the demo here on a scratch loop device");
    let root = crate::workspace_root();
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "hcp-user", "--bin", "hcp"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("building hcp failed");
    }
    let image = crate::cache_dir().join("demo-scratch.img");
    std::fs::create_dir_all(crate::cache_dir())?;
    std::fs::File::create(&image)?.set_len(256 << 20)?;
    let out = Command::new("losetup").arg("--find").arg("--show").arg(&image).output()?;
    if !out.status.success() {
        bail!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let disk = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = format!("{}:{}", root.join("target/release").display(), std::env::var("PATH").unwrap_or_default());
    let status = Command::new("bash").args(["-c", SCRIPT, "demo.sh", &disk]).env("PATH", path).status();
    // The volume group lives on the scratch device: take it down before detaching.
    let _ = Command::new("lvm").args(["vgchange", "-an", "demo"]).status();
    let _ = Command::new("losetup").args(["-d", &disk]).status();
    let _ = std::fs::remove_file(&image);
    if !status?.success() {
        bail!("the demo failed");
    }
    Ok(())
}
