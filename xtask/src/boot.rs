//! The boot test (`tests/tests/boot.rs`): hcp installed from its package,
//! a partition enrolled, then real boots with systemd as PID 1, on one guest
//! kernel. Three VM runs share the guest's root (`vm --root-disk`) and the
//! data disk (`vm --attach`), both made fresh for each kernel:
//! `prepare` (the plain VM), `enrolled` (booted, the disk there) and
//! `missing` (booted without the disk). Each run is one test of the boot
//! binary, chosen by name and by `HCP_BOOT_PHASE`.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

use crate::kernel::GuestKernel;

/// The data disk: room for a partition with a small ext4.
const DATA_DISK_BYTES: u64 = 256 << 20;
/// Per run: a boot, the wait for a missing disk (`hcp activate --wait
/// 30s`) and the phase; a healthy run takes a minute or two under TCG.
const RUN_TIMEOUT_SECS: u64 = 600;

/// The phases in order: the name, whether systemd boots, whether the data
/// disk is attached.
const PHASES: &[(&str, bool, bool)] = &[("prepare", false, true), ("enrolled", true, true), ("missing", true, false)];

/// Runs every phase on `kernel`, with `binary` (the boot test's executable)
/// and `deb` (the package), writing the VMs' output to `log`.
pub fn run(kernel: GuestKernel, binary: &Path, deb: &Path, log: &File) -> Result<()> {
    let dir = crate::cache_dir().join("boot-test").join(kernel.to_string());
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let root = dir.join("root.img");
    let data = dir.join("data.img");
    File::create(&data)
        .and_then(|f| f.set_len(DATA_DISK_BYTES))
        .with_context(|| format!("creating {}", data.display()))?;

    // A phase renamed in one place only would match no test, and libtest
    // passes an empty run.
    let listed = Command::new(binary).args(["--list", "--ignored"]).output().context("listing the boot test")?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for (phase, ..) in PHASES {
        ensure!(listed.lines().any(|l| l == format!("{phase}: test")), "the boot test has no phase `{phase}`");
    }

    let exe = std::env::current_exe().context("finding xtask's own binary")?;
    for &(phase, systemd, with_disk) in PHASES {
        let mut vm = Command::new(&exe);
        vm.args(["vm", "--kernel", &kernel.to_string(), "--no-build", "--timeout", &RUN_TIMEOUT_SECS.to_string()])
            .arg("--root-disk")
            .arg(&root);
        if with_disk {
            vm.arg("--attach").arg(&data);
        }
        if systemd {
            vm.arg("--systemd");
        }
        vm.arg("--")
            .arg(binary)
            .args(["--include-ignored", "--exact", phase])
            .env("HCP_BOOT_PHASE", phase)
            .env("HCP_DEB", deb)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        let status = vm.status().context("starting a VM")?;
        ensure!(status.success(), "the boot test's phase `{phase}` failed on Linux {kernel} ({status})");
    }
    // The images are a few hundred MiB of written blocks: not kept.
    fs::remove_dir_all(&dir).ok();
    Ok(())
}
