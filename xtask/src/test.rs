//! `cargo xtask test`: everything CI checks, in the order that fails fastest:
//! set-up, formatting, lints (user and eBPF crates), unit and host
//! integration tests, then the integration tests again inside the VM on each
//! guest kernel, where device-mapper exists.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use crate::kernel::GuestKernel;
use crate::{setup, workspace_root};

#[derive(Args)]
pub struct TestArgs {
    /// Guest kernels for the VM tests (repeatable; default: 5.10, 6.1 and 6.12).
    #[arg(long = "kernel", value_name = "VERSION")]
    kernels: Vec<GuestKernel>,
    /// Skip the VM tests (a quicker loop while developing; CI never skips).
    #[arg(long)]
    no_vm: bool,
    /// Only the boot test: build the package and boot it on each kernel
    /// (set-up, lints and the other tests are skipped).
    #[arg(long, conflicts_with = "no_vm")]
    boot_only: bool,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let started = Instant::now();
    let kernels = if args.kernels.is_empty() { GuestKernel::TESTED.to_vec() } else { args.kernels.clone() };
    if args.boot_only {
        return boot_only(&kernels);
    }
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
    // The hcp binary the integration tests run (target/debug/hcp), on the
    // host and in the VM: `cargo test` builds a package's binaries only for
    // that package's own tests, and the integration tests are a crate apart.
    cargo("build hcp", &["build", "-p", "hcp-user", "--bin", "hcp"])?;
    // Unit tests, and the integration tests that need root and loop devices
    // (eBPF on the host kernel). Device-mapper tests are #[ignore]d here.
    cargo("unit and host tests", &["test"])?;
    if !args.no_vm {
        let binaries = integration_test_binaries()?;
        // The package, checked by lintian, for the boot test to install.
        let step = Instant::now();
        let deb = crate::dist::build(&crate::dist::DistArgs::default())?;
        eprintln!("xtask test: package and lintian: ok ({:.0} s)", step.elapsed().as_secs_f64());
        let reports = vm_tests(&kernels, &binaries, &deb)?;
        report_view(&reports)?;
    }
    eprintln!("xtask test: all checks passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `--boot-only`: the package, then the boot test on each kernel, one
/// after the other.
fn boot_only(kernels: &[GuestKernel]) -> Result<()> {
    let binaries = integration_test_binaries()?;
    let deb = crate::dist::build(&crate::dist::DistArgs::default())?;
    for &kernel in kernels {
        if !kernel.boots_host_userland() {
            eprintln!("xtask test: boot test on Linux {kernel}: not run (it boots Debian 12's userland)");
            continue;
        }
        let step = Instant::now();
        let log_path = crate::cache_dir().join(format!("boot-test-{kernel}.log"));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let result = crate::boot::run(kernel, &binaries.boot, &deb, &log);
        eprint!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
        result?;
        eprintln!("xtask test: boot test on Linux {kernel}: ok ({:.0} s)", step.elapsed().as_secs_f64());
    }
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

/// Integration test targets the VM suite leaves out: `cargo xtask test`
/// runs them in steps of their own (the report view, the boot test), or
/// they need nothing of the guest's (the manual pages and completions,
/// checked by the host tests; rendering them under emulation costs a
/// minute per kernel).
const HOST_RUN: &[&str] = &["report_view", "boot", "manual"];

/// The integration tests' executables, as cargo reports them.
struct TestBinaries {
    /// The VM suite: every target but [`HOST_RUN`]'s.
    suite: Vec<PathBuf>,
    /// The boot test's phases.
    boot: PathBuf,
}

/// Builds the integration tests and returns their executables.
fn integration_test_binaries() -> Result<TestBinaries> {
    let out = Command::new("cargo")
        .args(["test", "--package", "hcp-tests", "--tests", "--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("building the integration tests failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut binaries = Vec::new();
    let mut boot = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Integration test targets only: the crate's own (empty) unit test
        // binary would end the VM's output on "0 passed".
        let is_test = msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        if let (true, Some(exe)) = (is_test, msg["executable"].as_str()) {
            if name == "boot" {
                boot = Some(PathBuf::from(exe));
            } else if !HOST_RUN.contains(&name) {
                binaries.push(PathBuf::from(exe));
            }
        }
    }
    if binaries.is_empty() {
        bail!("cargo built no integration test binaries for hcp-tests");
    }
    Ok(TestBinaries { suite: binaries, boot: boot.context("cargo built no boot test")? })
}

/// Runs every integration test binary, ignored (dm) tests included, inside
/// the guest, on each kernel, then the boot test there where it boots a real
/// system (see `boot.rs`, `GuestKernel::boots_host_userland`). The binaries
/// are the host's own, seen through the VM's view of the host root.
///
/// The kernels run side by side, one vCPU each (see `vm --smp`): the
/// emulation is bound by the CPU, and three guests keep two cores busy until
/// the last one ends, where two slots, one running two kernels in turn,
/// would leave a core idle for the length of a suite. Each writes to a log
/// of its own, printed whole once it ends, so outputs never interleave.
fn vm_tests(kernels: &[GuestKernel], binaries: &TestBinaries, deb: &Path) -> Result<Vec<PathBuf>> {
    let step = Instant::now();
    let logs = crate::cache_dir().join("vm-tests");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let outcomes: Vec<(GuestKernel, PathBuf, Result<()>)> = std::thread::scope(|scope| {
        let slots: Vec<_> = kernels
            .iter()
            .map(|&kernel| {
                let log_path = logs.join(format!("linux-{kernel}.log"));
                eprintln!("xtask test: VM tests on Linux {kernel}: running, output in {}", log_path.display());
                let log = log_path.clone();
                let slot = scope.spawn(move || -> Result<()> {
                    let log = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
                    suite(kernel, &binaries.suite, &log)?;
                    if !kernel.boots_host_userland() {
                        return Ok(());
                    }
                    crate::boot::run(kernel, &binaries.boot, deb, &log)
                });
                (kernel, log_path, slot)
            })
            .collect();
        slots
            .into_iter()
            .map(|(kernel, log_path, slot)| {
                let result = slot.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the VM slot panicked")));
                (kernel, log_path, result)
            })
            .collect()
    });
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for (kernel, log_path, result) in outcomes {
        eprintln!("xtask test: ===== VM tests on Linux {kernel} =====");
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        eprint!("{output}");
        let verdict = result.as_ref().map_or_else(|e| format!("failed: {e:#}"), |()| "ok".to_string());
        eprintln!("xtask test: VM tests on Linux {kernel}: {verdict} after {:.0} s", step.elapsed().as_secs_f64());
        if result.is_err() {
            failed.push(kernel.to_string());
        }
        // The HTML report the history test left in the guest's $HCP_VM_OUT
        // (the suite's run: the first VM of the log).
        let out_dir = output.lines().find_map(|l| l.rsplit_once("; output dir ").map(|(_, d)| d.trim()));
        reports.extend(out_dir.map(|d| PathBuf::from(d).join("report.html")).filter(|p| p.exists()));
    }
    if !failed.is_empty() {
        bail!("VM tests failed on Linux {}", failed.join(" and "));
    }
    if reports.len() != kernels.len() {
        bail!("the VM tests left {} HTML reports for {} kernels (see the history test)", reports.len(), kernels.len());
    }
    Ok(reports)
}

/// The VM suite on `kernel`: one guest runs every binary, against the
/// optimised `hcp` the package was just made of (`HCP_BIN`, see
/// `hcp_tests::hcp_bin`): what ships, and under emulation about twice as
/// quick as the debug build for tests that run hcp often (measured on 6.12:
/// the bad-input table 38 s to 21 s, the start and remove fault matrices
/// with a traced session 65 s to 36 s). The host tests keep the debug build,
/// its overflow checks and debug assertions.
fn suite(kernel: GuestKernel, binaries: &[PathBuf], log: &std::fs::File) -> Result<()> {
    let script = r#"for t in "$@"; do echo "== $t"; "$t" --include-ignored || exit 1; done"#;
    let exe = std::env::current_exe().context("finding xtask's own binary")?;
    let hcp = crate::vm::target_dir().join("release/hcp");
    ensure!(hcp.exists(), "{} is missing: the package's release build makes it", hcp.display());
    let status = Command::new(&exe)
        .env("HCP_BIN", &hcp)
        .args(["vm", "--kernel", &kernel.to_string(), "--timeout", "2100", "--no-build", "--"])
        .args(["sh", "-c", script, "sh"])
        .args(binaries)
        .stdout(log.try_clone().context("duplicating the log")?)
        .stderr(log.try_clone().context("duplicating the log")?)
        .status()
        .context("starting a VM")?;
    anyhow::ensure!(status.success(), "the VM suite failed ({status})");
    Ok(())
}

/// Renders the reports of real sessions the VM tests made in headless
/// Chromium, as a person would open them (tests/tests/report_view.rs).
fn report_view(reports: &[PathBuf]) -> Result<()> {
    let step = Instant::now();
    let list = std::env::join_paths(reports).context("joining the reports' paths")?;
    let status = Command::new("cargo")
        .args(["test", "--package", "hcp-tests", "--test", "report_view", "--", "--include-ignored"])
        .env("HCP_REPORTS", list)
        .current_dir(workspace_root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("the reports did not render as they should ({status})");
    }
    eprintln!("xtask test: reports rendered in Chromium: ok ({:.0} s)", step.elapsed().as_secs_f64());
    Ok(())
}
