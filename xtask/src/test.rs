//! `cargo xtask test`: everything CI checks, in the order that fails fastest:
//! set-up, formatting, lints (user and eBPF crates), unit and host
//! integration tests, then the integration tests again inside the VM on each
//! guest kernel, where device-mapper exists.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::kernel::GuestKernel;
use crate::{setup, vm, workspace_root};

#[derive(Args)]
pub struct TestArgs {
    /// Guest kernels for the VM tests (repeatable; default: 6.1 and 6.12).
    #[arg(long = "kernel", value_name = "VERSION")]
    kernels: Vec<GuestKernel>,
    /// Skip the VM tests (a quicker loop while developing; CI never skips).
    #[arg(long)]
    no_vm: bool,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let started = Instant::now();
    setup::run()?;
    cargo("format", &["fmt", "--all", "--check"])?;
    cargo("lint (user space)", &["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cargo(
        "lint (eBPF)",
        &[
            "+nightly",
            "clippy",
            "--package",
            "hcp-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // Unit tests, and the integration tests that need root and loop devices
    // (eBPF on the host kernel). Device-mapper tests are #[ignore]d here.
    cargo("unit and host tests", &["test"])?;
    if !args.no_vm {
        let binaries = integration_test_binaries()?;
        let kernels =
            if args.kernels.is_empty() { vec![GuestKernel::V6_1, GuestKernel::V6_12] } else { args.kernels.clone() };
        for kernel in kernels {
            vm_tests(kernel, &binaries)?;
        }
    }
    eprintln!("xtask test: all checks passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn cargo(what: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask test: {what}: cargo {}", args.join(" "));
    let step = Instant::now();
    let status = Command::new("cargo").args(args).current_dir(workspace_root()).status().context("running cargo")?;
    if !status.success() {
        bail!("{what} failed: `cargo {}` exited with {status}", args.join(" "));
    }
    eprintln!("xtask test: {what}: ok ({:.0} s)", step.elapsed().as_secs_f64());
    Ok(())
}

/// Builds the integration tests and returns their executables, as cargo
/// reports them.
fn integration_test_binaries() -> Result<Vec<PathBuf>> {
    let out = Command::new("cargo")
        .args(["test", "--package", "hcp-tests", "--tests", "--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("building the integration tests failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Integration test targets only: the crate's own (empty) unit test
        // binary would end the VM's output on "0 passed".
        let is_test = msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(exe)) = (is_test, msg["executable"].as_str()) {
            binaries.push(PathBuf::from(exe));
        }
    }
    if binaries.is_empty() {
        bail!("cargo built no integration test binaries for hcp-tests");
    }
    Ok(binaries)
}

/// Runs every integration test binary, ignored (dm) tests included, inside
/// the guest. The binaries are the host's own, seen through the VM's view of
/// the host root.
fn vm_tests(kernel: GuestKernel, binaries: &[PathBuf]) -> Result<()> {
    eprintln!("xtask test: VM tests on Linux {kernel}");
    let step = Instant::now();
    let mut cmd: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        r#"for t in "$@"; do echo "== $t"; "$t" --include-ignored || exit 1; done"#.into(),
        "sh".into(),
    ];
    cmd.extend(binaries.iter().map(|b| b.display().to_string()));
    let args = vm::VmArgs {
        kernel,
        disks: Vec::new(),
        timeout: 900,
        mem: 2048,
        smp: 1,
        release: false,
        no_build: false,
        verbose: false,
        cmd,
    };
    let code = vm::run(&args)?;
    if code != 0 {
        bail!("VM tests on Linux {kernel} failed (exit status {code})");
    }
    eprintln!("xtask test: VM tests on Linux {kernel}: ok ({:.0} s)", step.elapsed().as_secs_f64());
    Ok(())
}
