//! hcp installed from its package and enrolled, across real boots with
//! systemd as PID 1. `cargo xtask test` runs these phases in order, each in
//! its own VM run on one kernel, with the guest's root (the overlay's upper
//! layer) and the data disk kept from one run to the next:
//!
//! 1. `prepare` (the plain VM, no systemd): a partition on /dev/vda with
//!    ext4 mounted from fstab, the package installed with `dpkg -i`, the
//!    partition enrolled with `--now --edit-fstab`, the Prometheus timer
//!    enabled; `dpkg -r` refused while the partition is enrolled.
//! 2. `enrolled` (booted with systemd, the disk there): the package's
//!    hcp-activate.service mapped the partition before fstab mounted it
//!    through the mapping; `hcp start` by the partition's name snapshots it
//!    live; the timer's service writes the Prometheus file.
//! 3. `missing` (booted with systemd, the disk left out): the boot reaches
//!    its target, the unit is failed, `hcp activate` names the device; then
//!    the package is purged with `HCP_REMOVE_ANYWAY=1`, keeping the data.
//!
//! They are not VM-suite tests (the suite's single run would take them in
//! the wrong order, without the reboots): `cargo xtask test` leaves them out
//! of it by name, and each refuses to run without `HCP_BOOT_PHASE` naming
//! it, so nothing here can pass by not running.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hcp_tests::{require_root, run, sha256, Output};
use serde_json::Value;

/// The package's binary, never the build tree's.
const HCP: &str = "/usr/sbin/hcp";
const DISK: &str = "/dev/vda";
const PART: &str = "/dev/vda1";
const MOUNT: &str = "/srv/data";
const MAPPING: &str = "/dev/mapper/hcp-vda1";
const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
/// A file written before the first boot, checked after each.
const PROBE: &str = "/srv/data/probe.bin";
/// Its sha256, kept on the persistent root.
const PROBE_SUM: &str = "/root/hcp-boot-probe.sha256";

fn phase(name: &str) {
    require_root();
    let given = std::env::var("HCP_BOOT_PHASE").unwrap_or_default();
    assert_eq!(given, name, "run by `cargo xtask test`, which sets HCP_BOOT_PHASE to the phase (see the module doc)");
}

fn hcp(args: &[&str]) -> Output {
    Command::new(HCP).args(args).output().expect("run /usr/sbin/hcp").into()
}

fn hcp_json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = hcp(&all);
    let value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("hcp {args:?}: not JSON ({e}): {}{}", out.stdout, out.stderr));
    (out.code, value)
}

fn sh(script: &str) -> Output {
    Command::new("sh").args(["-c", script]).output().expect("run sh").into()
}

/// `systemctl show UNIT -p PROPERTY --value`.
fn unit_property(unit: &str, property: &str) -> String {
    run("systemctl", &["show", unit, "-p", property, "--value"]).trim().to_string()
}

/// The mountinfo line of `mount_point`, if mounted.
fn mountinfo_line(mount_point: &str) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find(|l| l.split(' ').nth(4) == Some(mount_point)).map(str::to_string)
}

/// The boot as systemd sees it once its jobs are done: `running` or
/// `degraded`, with the failed units.
fn settled_boot() -> (String, String) {
    let state = sh("systemctl is-system-running --wait").stdout.trim().to_string();
    let failed = run("systemctl", &["list-units", "--failed", "--plain", "--no-legend"]);
    (state, failed)
}

#[test]
#[ignore = "a phase of the boot test: cargo xtask test runs it in its own VM"]
fn prepare() {
    phase("prepare");
    // The data disk: one partition, ext4, mounted from fstab.
    let sfdisk = Command::new("sfdisk")
        .args(["--quiet", DISK])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"label: dos\n,,83\n")?;
            c.wait()
        })
        .expect("run sfdisk");
    assert!(sfdisk.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(PART).exists() {
        assert!(Instant::now() < deadline, "{PART} did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    run("mkfs.ext4", &["-q", "-F", PART]);
    fs::create_dir_all(MOUNT).unwrap();
    let fstab = fs::read_to_string("/etc/fstab").unwrap_or_default();
    fs::write("/etc/fstab", format!("{fstab}{PART}\t{MOUNT}\text4\tdefaults,noatime\t0\t2\n")).unwrap();
    run("mount", &[MOUNT]);
    run("dd", &["if=/dev/urandom", &format!("of={PROBE}"), "bs=1M", "count=8", "status=none"]);
    fs::write(PROBE_SUM, sha256(Path::new(PROBE))).unwrap();

    // The package, as an operator installs it. (man-db's trigger would
    // re-index every page of the host's userland under emulation: off, as
    // its debconf question man-db/auto-update would turn it off.)
    let _ = fs::remove_file("/var/lib/man-db/auto-update");
    let deb = std::env::var("HCP_DEB").expect("HCP_DEB: the package to install");
    let install = Command::new("dpkg").args(["-i", &deb]).output().unwrap();
    assert!(install.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&install.stderr));
    assert!(Path::new(HCP).exists());
    for dir in ["/var/lib/hcp", "/etc/hcp"] {
        let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{dir} is root-only");
    }
    assert!(
        Path::new("/etc/systemd/system/sysinit.target.wants/hcp-activate.service").exists(),
        "postinst enabled hcp-activate.service"
    );
    assert!(
        !Path::new("/etc/systemd/system/timers.target.wants/hcp-stats.timer").exists(),
        "the Prometheus timer is installed, not enabled"
    );
    let page = run("man", &["-w", "hcp-enroll"]);
    assert_eq!(page.trim(), "/usr/share/man/man8/hcp-enroll.8.gz");

    // Enrolled live, fstab edited to mount through the mapping.
    let (code, enrolled) = hcp_json(&["enroll", "--now", "--edit-fstab", PART]);
    assert_eq!(code, 0, "{enrolled}");
    assert_eq!(enrolled["mapping"], MAPPING, "{enrolled}");
    let fstab = fs::read_to_string("/etc/fstab").unwrap();
    let line =
        fstab.lines().find(|l| l.starts_with(MAPPING)).unwrap_or_else(|| panic!("no line for {MAPPING}:\n{fstab}"));
    for option in ["x-systemd.requires=hcp-activate.service", "nofail", "x-systemd.before=local-fs.target"] {
        assert!(line.contains(option), "{line}");
    }

    // Removing the package now would leave the boot without the mapping.
    let remove = Command::new("dpkg").args(["-r", "hcp"]).output().unwrap();
    let said = String::from_utf8_lossy(&remove.stderr);
    assert!(!remove.status.success(), "dpkg -r went through with an enrolled partition");
    assert!(said.contains("refusing to remove hcp") && said.contains("hcp unenroll"), "{said}");
    // (dpkg now records the wish, "deinstall"; the package stays installed.)
    let status = run("dpkg-query", &["-W", "-f=${Status}", "hcp"]);
    assert!(status.ends_with(" ok installed"), "{status}");
    assert!(Path::new(HCP).exists());

    // The Prometheus timer, where node_exporter would collect.
    fs::create_dir_all(TEXTFILE_DIR).unwrap();
    run("systemctl", &["enable", "hcp-stats.timer"]);
    run("sync", &[]);
}

#[test]
#[ignore = "a phase of the boot test: cargo xtask test runs it in its own VM"]
fn enrolled() {
    phase("enrolled");
    let (state, failed) = settled_boot();
    assert!(state == "running" || state == "degraded", "the boot ended {state}");
    assert!(!failed.contains("hcp-activate"), "failed units: {failed}");
    assert_eq!(unit_property("hcp-activate.service", "FragmentPath"), "/lib/systemd/system/hcp-activate.service");
    assert_eq!(unit_property("hcp-activate.service", "ActiveState"), "active");
    assert_eq!(unit_property("hcp-activate.service", "Result"), "success");

    // fstab mounted the filesystem through the mapping.
    let line = mountinfo_line(MOUNT).unwrap_or_else(|| panic!("{MOUNT} is not mounted; failed units: {failed}"));
    assert!(line.contains(MAPPING), "mounted from elsewhere: {line}");
    assert_eq!(sha256(Path::new(PROBE)), fs::read_to_string(PROBE_SUM).unwrap());
    let (code, list) = hcp_json(&["list"]);
    assert_eq!(code, 0, "{list}");
    let entry = &list["enrolled"][0];
    assert_eq!((entry["mapping"].as_str(), entry["active"].as_bool()), (Some(MAPPING), Some(true)), "{list}");

    // A live snapshot by the partition's own name, traced, and the timer's
    // service writing its series.
    let (code, started) = hcp_json(&["start", "--trace", "--baseline", "0", "-o", PART]);
    assert_eq!(code, 0, "{started}");
    let snapshot_mount = started["mount_point"].as_str().unwrap_or_else(|| panic!("no mount point: {started}"));
    let in_snapshot = Path::new(snapshot_mount).join("probe.bin");
    assert_eq!(sha256(&in_snapshot), fs::read_to_string(PROBE_SUM).unwrap());
    assert_eq!(unit_property("hcp-stats.timer", "ActiveState"), "active", "enabled in phase 1");
    run("systemctl", &["start", "hcp-stats.service"]);
    assert_eq!(unit_property("hcp-stats.service", "Result"), "success");
    let prom = Path::new(TEXTFILE_DIR).join("hcp.prom");
    let text = fs::read_to_string(&prom).unwrap();
    let session = started["session"].as_str().unwrap_or_default().trim_start_matches("/dev/");
    assert!(text.contains(&format!("hcp_session_info{{session=\"{session}\"")), "{text}");
    assert_eq!(fs::metadata(&prom).unwrap().permissions().mode() & 0o777, 0o644);
    let removed = hcp(&["-r", PART]);
    assert_eq!(removed.code, 0, "{}{}", removed.stdout, removed.stderr);
}

#[test]
#[ignore = "a phase of the boot test: cargo xtask test runs it in its own VM"]
fn missing() {
    phase("missing");
    // The root disk is the only one now: /dev/vda, unpartitioned.
    assert!(!Path::new(PART).exists(), "this boot is run without the data disk");
    // The command starts once the boot reached multi-user.target; the
    // mapping's device may still be waited for in the background (the
    // mount is `nofail`), so the boot is not settled, and need not be.
    assert_eq!(unit_property("multi-user.target", "ActiveState"), "active", "the boot reached its target");
    assert_eq!(unit_property("hcp-activate.service", "ActiveState"), "failed");
    assert_eq!(unit_property("hcp-activate.service", "Result"), "exit-code");
    let failed = run("systemctl", &["list-units", "--failed", "--plain", "--no-legend"]);
    assert!(failed.contains("hcp-activate.service"), "{failed}");
    assert!(mountinfo_line(MOUNT).is_none(), "{MOUNT} is mounted without its disk");

    let (code, report) = hcp_json(&["activate"]);
    assert_ne!(code, 0, "{report}");
    let error = report[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("is not there") && error.contains("attach the disk"), "{report}");

    // Purged by an operator who insists: it goes, warning loudly, and what
    // holds data stays (the enrollment record, the backup of fstab).
    let records: Vec<_> = fs::read_dir("/etc/hcp/enrolled").unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let purge = Command::new("dpkg").args(["--purge", "hcp"]).env("HCP_REMOVE_ANYWAY", "1").output().unwrap();
    let said = String::from_utf8_lossy(&purge.stderr);
    assert!(purge.status.success(), "dpkg --purge: {said}");
    assert!(
        said.contains("WARNING: removing hcp although it still has") && said.contains("enrolled partitions"),
        "{said}"
    );
    assert!(said.contains("kept /etc/hcp"), "{said}");
    assert!(!Path::new(HCP).exists());
    assert!(!Path::new("/lib/systemd/system/hcp-activate.service").exists());
    assert!(!Path::new("/etc/systemd/system/sysinit.target.wants/hcp-activate.service").exists());
    assert!(records[0].exists(), "purging removed the enrollment record");
    let backups = fs::read_dir("/etc")
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("fstab.hcp-"));
    assert_eq!(backups.count(), 1, "the fstab backup --edit-fstab made is kept");
}
