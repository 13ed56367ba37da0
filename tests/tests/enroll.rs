//! Enrollment of plain partitions (`hcp enroll`, `activate`, `unenroll`),
//! in the VM on real kernel partitions (of a loop disk with an MBR), with
//! ext4 and xfs: mapping, live snapshots by the partition's own name, the
//! remount of a mounted filesystem and its undo on failure, and bad input.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use hcp::kernel::devnum::DevNum;
use hcp::kernel::dm::device::Dm;
use hcp::kernel::mountinfo::{Mount, MountTable};
use hcp_tests::{
    assert_files, fault_actions, hcp, hcp_bin, hcp_json, helper_running, require_root, run, serial, temp_dir,
    write_files, Fs, LoopDevice, Output, SystemState, Volume,
};
use serde_json::Value;

/// The mount at `dir`.
fn mount_at(dir: &Path) -> Mount {
    let table = MountTable(hcp::kernel::mountinfo::read().unwrap());
    let dir = fs::canonicalize(dir).unwrap();
    table.mount_at(&dir).unwrap_or_else(|| panic!("nothing mounted at {}", dir.display())).clone()
}

fn devnum(path: &Path) -> DevNum {
    DevNum::of_block_device(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn enrolled() -> Vec<Value> {
    hcp_json(&["list"])["enrolled"].as_array().expect("an enrolled list").clone()
}

fn hcp_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(hcp_bin());
    cmd.args(args).env("RUST_BACKTRACE", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run hcp").into()
}

/// Runs `args` with fault `fault` injected (a hang is ended by the guard
/// after 1.5 s); afterwards the filesystem must be mounted at `dir` again,
/// from `part` or from `mapping`: returns whether from the mapping.
fn remounted_after_fault(args: &[&str], fault: &str, dir: &Path, part: &Path, mapping: &Path) -> bool {
    let out = hcp_env(args, &[("HCP_FAULT", fault), ("HCP_SWITCH_TIMEOUT", "1.5")]);
    assert_ne!(out.code, 0, "{fault}: hcp must fail: {}", out.stderr);
    // The guard may still be mounting as hcp's end is seen.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while helper_running("__guard", None) {
        assert!(std::time::Instant::now() < deadline, "{fault}: the guard is still running");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let m = mount_at(dir);
    let from_mapping = DevNum::of_block_device(mapping).ok() == Some(m.dev);
    assert!(
        from_mapping || m.dev == devnum(part),
        "{fault}: mounted from the partition or its mapping: {}",
        out.stderr
    );
    from_mapping
}

/// A refusal: `code`, one line on stderr saying `says`.
fn assert_refused(out: &Output, code: i32, says: &str) {
    assert_eq!(out.code, code, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    assert!(out.stderr.contains(says), "{says:?} in: {}", out.stderr);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn an_enrolled_ext4_partition_is_snapshotted_live_by_its_own_name() {
    enrolled_partition_is_snapshotted_live(Fs::Ext4);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn an_enrolled_xfs_partition_is_snapshotted_live_by_its_own_name() {
    enrolled_partition_is_snapshotted_live(Fs::Xfs);
}

fn enrolled_partition_is_snapshotted_live(fs_type: Fs) {
    require_root();
    let _serial = serial();
    // mkfs.xfs wants 300 MB at least; the backing file is sparse.
    let (_disk, part) = LoopDevice::partitioned(322 << 20);
    let part_s = part.to_str().unwrap();
    fs_type.mkfs(&part);
    let before_all = SystemState::take();

    let e = hcp_json(&["enroll", part_s]);
    let mapping = PathBuf::from(e["mapping"].as_str().unwrap());
    let name = mapping.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(name, format!("hcp-{}", part.file_name().unwrap().to_str().unwrap()), "{e}");
    assert!(e["remounted"].is_null(), "nothing was mounted: {e}");
    let dm = Dm::open().unwrap();
    assert_eq!(
        dm.table(&name).unwrap().iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        vec![format!("0 {} linear {} 0", (322 << 11) - 2048, devnum(&part))],
        "dm-linear over the whole partition"
    );
    let listed = enrolled();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["device"].as_str(), listed[0]["active"].as_bool()), (Some(part_s), Some(true)));

    // Mounted through the mapping, in use, and snapshotted by the
    // partition's own name.
    let dir = temp_dir("enrolled-mnt");
    run("mount", &[mapping.to_str().unwrap(), dir.to_str().unwrap()]);
    let before = write_files(&dir, "before");
    let held = File::open(dir.join("before-0.bin")).unwrap();
    let read_only = fs_type == Fs::Xfs;
    let started = hcp_json(&if read_only { vec!["start", "-o", part_s] } else { vec!["start", part_s] });
    assert_eq!(started["origin"], mapping.to_str().unwrap(), "the mapping is the origin: {started}");
    assert!(started["timing"]["frozen_seconds"].as_f64().unwrap() > 0.0, "frozen, so live: {started}");
    let id = started["session"].as_str().unwrap().to_string();
    let snap_dir = PathBuf::from(started["mount_point"].as_str().unwrap());
    let after = write_files(&dir, "after");
    for name in before.keys() {
        fs::write(dir.join(name), b"overwritten").unwrap();
    }
    run("sync", &[]);
    assert_files(&snap_dir, &before);
    assert!(!snap_dir.join("after-0.bin").exists(), "a later file leaked into the snapshot");
    assert_files(&dir, &after);

    let shown = hcp_json(&["show", part_s]);
    assert_eq!(shown["snapshots"], serde_json::json!([started["snapshot"]]), "show finds it by the partition: {shown}");
    let listed = enrolled();
    assert_eq!(listed[0]["sessions"], serde_json::json!([id]), "{listed:?}");
    assert_eq!(listed[0]["mounted_at"], fs::canonicalize(&dir).unwrap().to_str().unwrap(), "{listed:?}");
    assert_refused(&hcp(&["unenroll", part_s]), 4, &id);

    let removed = hcp_json(&["remove", part_s]);
    assert_eq!(removed.as_array().unwrap().len(), 1, "{removed}");
    assert_eq!(removed[0]["origin_restored"], true, "{removed}");
    drop(held);
    run("umount", &[dir.to_str().unwrap()]);
    let u = hcp_json(&["unenroll", part_s]);
    assert_eq!(u["mapping_removed"], mapping.to_str().unwrap(), "{u}");
    assert!(!dm.exists(&name).unwrap(), "the mapping is gone");
    assert!(enrolled().is_empty());
    assert_eq!(SystemState::take(), before_all, "nothing left behind");
    fs_type.fsck(&part);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn enroll_now_moves_a_mounted_ext4_filesystem_in_place_and_back() {
    enroll_now_moves_a_mounted_filesystem(Fs::Ext4, "noatime,nodev,errors=remount-ro");
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn enroll_now_moves_a_mounted_xfs_filesystem_in_place_and_back() {
    enroll_now_moves_a_mounted_filesystem(Fs::Xfs, "noatime,nodev,logbsize=64k");
}

fn enroll_now_moves_a_mounted_filesystem(fs_type: Fs, options: &str) {
    require_root();
    let _serial = serial();
    let (_disk, part) = LoopDevice::partitioned(322 << 20);
    let part_s = part.to_str().unwrap();
    fs_type.mkfs(&part);
    let dir = temp_dir("enroll-now");
    run("mount", &["-o", options, part_s, dir.to_str().unwrap()]);
    let files = write_files(&dir, "before");
    let raw_mount = mount_at(&dir);
    assert_eq!(raw_mount.dev, devnum(&part));
    let same_options = |m: &Mount, what: &str| {
        assert_eq!(
            (&m.mount_options, &m.super_options),
            (&raw_mount.mount_options, &raw_mount.super_options),
            "{what}: the same options"
        );
    };
    let before = SystemState::take();

    // Refused, changing nothing: without --now, and while a process holds
    // a file open.
    assert_refused(&hcp(&["enroll", part_s]), 5, &format!("hcp enroll --now {part_s}"));
    let mut holder = std::process::Command::new("sleep")
        .arg("600")
        .stdin(File::open(dir.join("before-0.bin")).unwrap())
        .spawn()
        .unwrap();
    let out = hcp(&["enroll", "--now", part_s]);
    assert_refused(&out, 4, &format!("{} (sleep, open file {}", holder.id(), dir.join("before-0.bin").display()));
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(SystemState::take(), before, "a refusal changes nothing");

    // A failure after the unmount puts the original mount back: hcp itself
    // on an error or a panic, its guard when hcp is killed or hangs (it then
    // mounts whichever device can be: the partition, or the mapping if it
    // was made; the test then finishes or undoes the enrollment as an
    // operator would).
    let mapping = PathBuf::from(format!("/dev/mapper/hcp-{}", part.file_name().unwrap().to_str().unwrap()));
    for step in ["enroll-after-unmount", "enroll-after-create"] {
        for action in fault_actions() {
            let fault = format!("{step}:{action}");
            let through_mapping = remounted_after_fault(&["enroll", "--now", part_s], &fault, &dir, &part, &mapping);
            same_options(&mount_at(&dir), &fault);
            assert_files(&dir, &files);
            match action {
                "error" | "panic" => assert!(!through_mapping, "{fault}: hcp undid it"),
                _ if through_mapping => _ = hcp_json(&["unenroll", "--now", part_s]),
                _ if !enrolled().is_empty() => _ = hcp_json(&["unenroll", part_s]),
                _ => {}
            }
            assert_eq!(SystemState::take(), before, "{fault}: as before");
        }
    }

    let e = hcp_json(&["enroll", "--now", part_s]);
    assert_eq!(e["mapping"], mapping.to_str().unwrap());
    let downtime = e["remounted"]["downtime_seconds"].as_f64().expect("the downtime");
    eprintln!("{fs_type:?}: enroll --now: unmounted for {downtime:.3} s ({options})");
    assert!(downtime > 0.0, "{e}");
    let m = mount_at(&dir);
    assert_eq!(m.dev, devnum(&mapping), "mounted through the mapping at the same place");
    same_options(&m, "enroll --now");
    assert_files(&dir, &files);
    let later = write_files(&dir, "later");

    // Live snapshots by the partition's name.
    let started = hcp_json(&["start", "--skip-mount", part_s]);
    assert_eq!(started["origin"], mapping.to_str().unwrap(), "{started}");
    assert!(started["timing"]["frozen_seconds"].as_f64().unwrap() > 0.0, "{started}");
    hcp_json(&["remove", started["snapshot"].as_str().unwrap()]);

    // Unenrolling: refused while mounted without --now; a failure puts the
    // mapping's mount back; then the plain mount returns.
    assert_refused(&hcp(&["unenroll", part_s]), 5, "hcp unenroll --now");
    for step in ["unenroll-after-unmount", "unenroll-after-remove"] {
        for action in fault_actions() {
            let fault = format!("{step}:{action}");
            let through_mapping = remounted_after_fault(&["unenroll", "--now", part_s], &fault, &dir, &part, &mapping);
            same_options(&mount_at(&dir), &fault);
            assert_files(&dir, &files);
            assert_eq!(enrolled().len(), 1, "{fault}: still enrolled");
            if !through_mapping {
                assert!(!matches!(action, "error" | "panic"), "{fault}: hcp undid it");
                // Killed with the mapping gone: enrolling again completes
                // the half-kept enrollment.
                hcp_json(&["enroll", "--now", part_s]);
            }
            assert_eq!(mount_at(&dir).dev, devnum(&mapping), "{fault}");
        }
    }
    let u = hcp_json(&["unenroll", "--now", part_s]);
    eprintln!("{fs_type:?}: unenroll --now: unmounted for {:.3} s", u["remounted"]["downtime_seconds"]);
    let m = mount_at(&dir);
    assert_eq!(m.dev, devnum(&part), "the plain mount is back");
    same_options(&m, "unenroll --now");
    assert_files(&dir, &files);
    assert_files(&dir, &later);
    run("umount", &[dir.to_str().unwrap()]);
    fs_type.fsck(&part);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn activate_recreates_a_missing_mapping_and_fstab_is_edited_both_ways() {
    require_root();
    let _serial = serial();
    let (_disk, part) = LoopDevice::partitioned(64 << 20);
    let part_s = part.to_str().unwrap();
    Fs::Ext4.mkfs(&part);
    let fstab_before = fs::read_to_string("/etc/fstab").unwrap_or_default();
    let line = format!("{part_s} /srv/enrolled-data ext4 defaults,noatime 0 2");
    fs::write("/etc/fstab", format!("{fstab_before}{line}\n")).unwrap();
    let with_line = fs::read_to_string("/etc/fstab").unwrap();

    let e = hcp_json(&["enroll", "--edit-fstab", part_s]);
    let mapping = e["mapping"].as_str().unwrap().to_string();
    let name = mapping.trim_start_matches("/dev/mapper/").to_string();
    let fstab = fs::read_to_string("/etc/fstab").unwrap();
    // The mapping required, and a missing disk no stop to the boot (fstab.rs).
    let options = "defaults,noatime,x-systemd.requires=hcp-activate.service,nofail,x-systemd.before=local-fs.target";
    let wanted = format!("{mapping}\t/srv/enrolled-data\text4\t{options}\t0\t2");
    assert_eq!(fstab, with_line.replace(&line, &wanted), "only that line changed: {e}");
    let backup = PathBuf::from(e["fstab"]["backup"].as_str().expect("a backup"));
    assert_eq!(fs::read_to_string(&backup).unwrap(), with_line);

    // The mapping removed by hand (as after a reboot): activate makes it,
    // and a second run changes nothing.
    let dm = Dm::open().unwrap();
    let table = dm.table(&name).unwrap();
    run("dmsetup", &["remove", &name]);
    assert_eq!(enrolled()[0]["active"], false);
    assert_refused(&hcp(&["start", part_s]), 5, "run `hcp activate`");
    let first = hcp_json(&["activate"]);
    assert_eq!(first[0]["state"], "created", "{first}");
    assert_eq!(dm.table(&name).unwrap(), table);
    let state = SystemState::take();
    let second = hcp_json(&["activate"]);
    assert_eq!(second[0]["state"], "present", "{second}");
    assert_eq!(SystemState::take(), state, "a second activate changes nothing");

    // A mapping that cannot be made is reported, and activate says so in
    // its status: the partition mounted without it.
    run("dmsetup", &["remove", &name]);
    let dir = temp_dir("raw-mounted");
    run("mount", &[part_s, dir.to_str().unwrap()]);
    let out = hcp(&["activate"]);
    assert_eq!(out.code, 5, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("FAILED") && out.stdout.contains("without its mapping"), "{}", out.stdout);
    run("umount", &[dir.to_str().unwrap()]);
    // Enrolling again completes an enrollment whose mapping is missing, as
    // activate would; fstab names the mapping already.
    let again = hcp_json(&["enroll", part_s]);
    assert_eq!(again["mapping"], mapping.as_str(), "{again}");
    assert_eq!((again["fstab"]["line"].as_u64().is_some(), &again["fstab"]["wanted"]), (true, &Value::Null), "{again}");
    assert_eq!(dm.table(&name).unwrap(), table);

    let u = hcp_json(&["unenroll", "--edit-fstab", part_s]);
    assert_eq!(fs::read_to_string("/etc/fstab").unwrap(), with_line.replace(&line, &line.replace(' ', "\t")), "{u}");
    assert!(!dm.exists(&name).unwrap());
    fs::write("/etc/fstab", fstab_before).unwrap();
    for f in [backup, PathBuf::from(u["fstab"]["backup"].as_str().unwrap())] {
        fs::remove_file(f).unwrap();
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn bad_enrollments_are_refused_in_one_line_and_change_nothing() {
    require_root();
    let _serial = serial();
    let vol = Volume::new("t-enroll-dm", 16);
    let (disk, part) = LoopDevice::partitioned(64 << 20);
    let part_s = part.to_str().unwrap();
    Fs::Ext4.mkfs(&part);
    let dir = temp_dir("enroll-bad");
    run("mount", &[part_s, dir.to_str().unwrap()]);
    let (_other_disk, other) = LoopDevice::partitioned(16 << 20);
    let (vol_s, disk_s, other_s) = (vol.path(), disk.path.to_str().unwrap().to_string(), other.to_str().unwrap());
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (vec!["enroll", vol_s.to_str().unwrap()], 2, "is a device-mapper device".to_string()),
        (vec!["enroll", &disk_s], 2, format!("whole disk with partitions ({part_s} in use)")),
        (vec!["enroll", "/dev/nonexistent9"], 3, "does not exist".to_string()),
        (vec!["enroll", part_s], 5, format!("run `hcp enroll --now {part_s}`")),
        (vec!["unenroll", other_s], 3, "is not enrolled".to_string()),
        (vec!["unenroll", "--now", vol_s.to_str().unwrap()], 3, "is not enrolled".to_string()),
        (vec!["enroll", "--edit-fstab", other_s], 2, "has no line for".to_string()),
    ];
    let before = SystemState::take();
    let fstab = fs::read("/etc/fstab").ok();
    for (args, code, says) in &cases {
        assert_refused(&hcp(args), *code, says);
        assert_eq!(SystemState::take(), before, "{args:?} changed nothing");
        assert_eq!(fs::read("/etc/fstab").ok(), fstab);
    }
    // Any device mapped whole by one dm-linear device is snapshotted through
    // it, with no enrollment, which is refused.
    let under = vol.loop_dev.path.to_str().unwrap();
    assert_refused(&hcp(&["enroll", under]), 5, &format!("is mapped whole by {} already", vol_s.display()));
    let started = hcp_json(&["start", "--skip-mount", under]);
    assert_eq!(started["origin"], vol_s.to_str().unwrap(), "{started}");
    let removed = hcp_json(&["remove", under]);
    assert_eq!(removed[0]["session"], started["session"], "{removed}");
    assert_eq!(SystemState::take(), before);

    // Enrolled already: refused, by the partition and by the mapping.
    hcp_json(&["enroll", other_s]);
    let enrolled_state = SystemState::take();
    assert_refused(&hcp(&["enroll", other_s]), 5, "is enrolled already, as /dev/mapper/hcp-");
    let mapping = format!("/dev/mapper/hcp-{}", other.file_name().unwrap().to_str().unwrap());
    assert_refused(&hcp(&["enroll", &mapping]), 5, "is the mapping of an enrolled device already");
    assert_eq!(SystemState::take(), enrolled_state);
    hcp_json(&["unenroll", &mapping]);
    assert!(enrolled().is_empty());
    run("umount", &[dir.to_str().unwrap()]);
}
