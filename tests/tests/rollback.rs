//! `hcp rollback` end to end, through the real `hcp` binary, on the guest
//! kernel's `snapshot-merge` with real ext4 and xfs (these run in the VM,
//! through `cargo xtask test`, on every guest kernel).
//!
//! Every test compares whole devices: the origin after the rollback must be
//! byte for byte the snapshot as it was before (sha256 of each device).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hcp_tests::{
    assert_files, fault_actions, hcp, hcp_bin, hcp_json, hcp_json_exit, hcp_with_fault, helper_running, open_direct,
    pwrite_all, require_root, run, serial, sha256, suspended, temp_dir, write_files, AlignedBuf, Fs, SystemState,
    Volume,
};
use serde_json::Value;

/// Overwrites `blocks` 4 KiB blocks of `file` (a file or a device of
/// `size` bytes) in place with `byte`, with direct I/O, one block at a time
/// in an order that never writes two neighbours in a row: each becomes a
/// chunk of its own in the store, away from its neighbours, so the merge
/// copies chunk by chunk and takes a while.
fn scatter(file: &Path, size: u64, blocks: u64, byte: u8) {
    let f = open_direct(file);
    let buf = AlignedBuf::new(4096, byte);
    let count = size / 4096;
    for i in 0..blocks {
        // A stride coprime with the count visits distinct blocks.
        pwrite_all(&f, &buf, (i * 7919) % count * 4096);
    }
    f.sync_all().unwrap();
}

/// The device at `dev` holds `image`, byte for byte; else the first
/// differing offsets are named.
fn assert_same_bytes(dev: &Path, image: &Path) {
    if sha256(dev) != sha256(image) {
        let out = std::process::Command::new("cmp").arg("-l").arg(image).arg(dev).output().unwrap();
        let diff: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().take(12).collect();
        panic!("{} differs from the snapshot's image: offset+1, image byte, device byte: {diff:?}", dev.display());
    }
}

/// The changes a session's snapshot must not see: a file rewritten, files
/// added, a file and a directory deleted.
fn change_origin(dir: &Path) {
    fs::write(dir.join("before-0.bin"), b"rewritten after the snapshot").unwrap();
    write_files(dir, "after");
    fs::remove_file(dir.join("before-1.bin")).unwrap();
    fs::remove_dir_all(dir.join("tree")).unwrap();
    run("sync", &[]);
}

/// What the origin holds before the snapshot: files with known contents
/// and a directory tree to be deleted after it.
fn fill_origin(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::create_dir_all(dir.join("tree/deeper")).unwrap();
    fs::write(dir.join("tree/deeper/leaf.txt"), b"a leaf").unwrap();
    write_files(dir, "before")
}

/// The origin shows the snapshot's files and nothing written after it.
fn assert_snapshot_contents(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    assert_files(dir, files);
    assert_eq!(fs::read(dir.join("tree/deeper/leaf.txt")).unwrap(), b"a leaf");
    assert!(!dir.join("after-0.bin").exists(), "a file added after the snapshot is still there");
}

/// The session's id and the snapshot's hash, for a session of `vol`
/// started with `args`.
fn start(vol: &Volume, args: &[&str]) -> (String, Value) {
    let mut all = vec!["start"];
    all.extend_from_slice(args);
    let path = vol.path();
    all.push(path.to_str().unwrap());
    let started = hcp_json(&all);
    (started["session"].as_str().unwrap().to_string(), started)
}

/// Runs `hcp rollback ARGS --json`, asserting success: its progress lines,
/// then its result (the last line).
fn rollback_json(args: &[&str]) -> (Vec<Value>, Value) {
    let mut all = vec!["rollback"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = hcp(&all);
    assert_eq!(out.code, 0, "hcp {all:?}: {}{}", out.stdout, out.stderr);
    let mut lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("hcp {all:?}: not NDJSON ({e}): {l}")))
        .collect();
    let result = lines.pop().expect("a result line");
    assert!(lines.iter().all(|l| l["progress"].is_object()), "{}", out.stdout);
    (lines, result)
}

/// Session `id` of `hcp list --json`.
fn listed_session<'a>(listed: &'a Value, id: &str) -> &'a Value {
    let sessions = listed["sessions"].as_array().unwrap();
    sessions.iter().find(|s| s["session"] == id).unwrap_or_else(|| panic!("{id} is not listed: {listed}"))
}

/// Nothing of a rolled-back session left, and the origin on its own table.
fn assert_session_gone(vol: &Volume, table: &str, before: &SystemState) {
    assert_eq!(vol.table(), table, "the origin's own table, byte for byte");
    let now = SystemState::take();
    assert_eq!(
        (&now.dm, &now.loops, &now.records, &now.files),
        (&before.dm, &before.loops, &before.records, &before.files)
    );
    // No session is traced any more: the programs are detached (they may
    // stay loaded, see `tracer::pins`).
    assert!(!Path::new("/sys/fs/bpf/hcp/links").exists(), "the tracing programs outlived the rollback, attached");
    for helper in ["__autoextend", "__record", "__guard"] {
        assert!(!helper_running(helper, None), "an hcp {helper} process outlived the rollback");
    }
    let kept = fs::read_dir("/var/lib/hcp/rollbacks").map(|d| d.count()).unwrap_or(0);
    assert_eq!(kept, 0, "the rollback's record kept for a reboot is gone");
}

/// With `traced`, the session is traced (its final report must be
/// written before the rollback).
fn rollback_of_an_unmounted_origin(fs_type: Fs, traced: bool) {
    require_root();
    let _serial = serial();
    let mut vol = Volume::new(&format!("t-rb-off-{fs_type:?}").to_lowercase(), fs_type.volume_mib());
    let dir = vol.mount(fs_type);
    let files = fill_origin(&dir);
    let table = vol.table();
    let reports = Path::new("/var/lib/hcp/reports");
    let had_reports = reports.exists();
    let before = SystemState::take();
    // With a growing store and its snapshot mounted read-only (no writes of
    // its own): every helper must go with the rollback.
    let mut args = vec!["-o", "--autoextend=80%:20%"];
    if traced {
        args.extend(["--trace", "--baseline", "0"]);
    }
    let (id, started) = start(&vol, &args);
    let snap_mount = PathBuf::from(started["mount_point"].as_str().expect("mounted"));
    change_origin(&dir);
    let snapshot = sha256(Path::new("/dev").join(&id).as_path());
    run("umount", &[dir.to_str().unwrap()]);
    let changed = sha256(&vol.path());
    assert_ne!(changed, snapshot, "the origin changed after the snapshot");

    let (progress, done) = rollback_json(&[&id]);
    assert_eq!(progress.last().unwrap()["progress"]["percent"], 100.0, "{progress:?}");
    assert_eq!(done["finished"], true, "{done}");
    assert_eq!(done["origin_restored"], true, "{done}");
    assert!(done["merge_bytes"].as_u64().unwrap() > 0, "{done}");
    if traced {
        let report = PathBuf::from(done["report"].as_str().unwrap_or_else(|| panic!("a final report: {done}")));
        let figures: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        assert_eq!(figures["session"], id.as_str(), "{figures}");
        // The report is the test's, not part of the system's state.
        let stem = report.file_stem().unwrap().to_str().unwrap().to_string();
        for entry in fs::read_dir(report.parent().unwrap()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_str().unwrap().starts_with(&stem) {
                fs::remove_file(path).unwrap();
            }
        }
        if !had_reports {
            let _ = fs::remove_dir(reports);
        }
    } else {
        assert!(done["report"].is_null(), "{done}");
    }
    assert_eq!(sha256(&vol.path()), snapshot, "the origin is the snapshot, byte for byte");
    assert!(!snap_mount.exists(), "the snapshot's mount point is gone");
    assert_session_gone(&vol, &table, &before);
    fs_type.fsck(&vol.path());
    run("mount", &[vol.path().to_str().unwrap(), dir.to_str().unwrap()]);
    assert_snapshot_contents(&dir, &files);
    assert_eq!(SystemState::take(), before);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn rollback_puts_an_unmounted_ext4_origin_back_as_the_snapshot() {
    rollback_of_an_unmounted_origin(Fs::Ext4, true);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn rollback_puts_an_unmounted_xfs_origin_back_as_the_snapshot() {
    rollback_of_an_unmounted_origin(Fs::Xfs, false);
}

/// The size of the file whose scattered rewrite makes the merge take
/// seconds, and how many of its blocks are rewritten.
const BIG: u64 = 32 << 20;
const REWRITTEN_BLOCKS: u64 = 4000;

/// `hcp rollback --now` of a mounted origin that a service keeps reading:
/// progress lines rise to 100%, every read during the merge sees the
/// snapshot, and the device ends as the snapshot.
fn rollback_now_of_a_mounted_origin(fs_type: Fs) {
    require_root();
    let _serial = serial();
    // (Room for BIG beside the files on ext4 too.)
    let mut vol = Volume::new(&format!("t-rb-now-{fs_type:?}").to_lowercase(), fs_type.volume_mib().max(96));
    let dir = vol.mount(fs_type);
    let mut files = fill_origin(&dir);
    let big: Vec<u8> = (0..BIG).map(|i| (i / 4096) as u8 ^ 0x5a).collect();
    fs::write(dir.join("big.bin"), &big).unwrap();
    files.insert(PathBuf::from("big.bin"), big.clone());
    run("sync", &[]);
    let table = vol.table();
    let before = SystemState::take();
    let (id, _) = start(&vol, &["--skip-mount", "--chunk-size", "4K", "-q", "64M"]);
    let snap = Path::new("/dev").join(&id);
    scatter(&dir.join("big.bin"), BIG, REWRITTEN_BLOCKS, 0xee);
    change_origin(&dir);
    // The snapshot's journal or log replayed as any mount of it would, so
    // that mounting the result again writes nothing (its hash is final).
    let replay = temp_dir("rb-replay");
    let opts = if fs_type == Fs::Xfs { "nouuid" } else { "defaults" };
    run("mount", &["-o", opts, snap.to_str().unwrap(), replay.to_str().unwrap()]);
    assert_snapshot_contents(&replay, &files);
    run("umount", &[replay.to_str().unwrap()]);
    let image = temp_dir("rb-image").join("snapshot.img");
    run(
        "dd",
        &[&format!("if={}", snap.display()), &format!("of={}", image.display()), "bs=1M", "conv=sparse", "status=none"],
    );
    // The service now only reads: the filesystem mounted read-only, and so
    // that the device can be compared byte for byte after the rollback
    // (which mounts it again with the same options), a mount that writes
    // nothing at all: XFS writes its log and superblock at a read-only mount
    // unless told `norecovery`.
    match fs_type {
        Fs::Ext4 => run("mount", &["-o", "remount,ro", dir.to_str().unwrap()]),
        Fs::Xfs => {
            run("umount", &[dir.to_str().unwrap()]);
            run("mount", &["-o", "ro,norecovery", vol.path().to_str().unwrap(), dir.to_str().unwrap()])
        }
    };

    let mut child = std::process::Command::new(hcp_bin())
        .args(["rollback", "--now", "--json", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut reader = None;
    let mut percents = Vec::new();
    let mut last = Value::Null;
    for line in stdout.lines() {
        let line = line.unwrap();
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not NDJSON ({e}): {line}"));
        if let Some(p) = value.get("progress") {
            percents.push(p["percent"].as_f64().unwrap());
            // The origin is mounted again once the merge runs: the service
            // reads it while it merges.
            reader.get_or_insert_with(|| {
                let (stop, reads, dir, files) = (stop.clone(), reads.clone(), dir.clone(), files.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Uncached reads: from the device, merged or not.
                        run("sh", &["-c", "echo 3 > /proc/sys/vm/drop_caches"]);
                        assert_snapshot_contents(&dir, &files);
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
            });
        } else {
            last = value;
        }
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stop.store(true, Ordering::Relaxed);
    reader.expect("progress lines").join().expect("every read during the merge saw the snapshot");
    assert!(status.success(), "{stderr}");
    assert!(reads.load(Ordering::Relaxed) > 0, "the origin was read during the merge");
    assert!(percents.len() >= 3, "a merge of seconds reports as it goes: {percents:?}");
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "progress only rises: {percents:?}");
    assert_eq!(percents.last(), Some(&100.0), "{percents:?}");
    assert!(percents[0] < 100.0, "the first line comes before the end: {percents:?}");
    assert_eq!(last["finished"], true, "{last}");
    let remounted = &last["remounted"];
    assert_eq!(remounted["mount_point"], dir.to_str().unwrap(), "{last}");
    assert!(remounted["downtime_seconds"].as_f64().unwrap() > 0.0, "{last}");

    assert_snapshot_contents(&dir, &files);
    run("umount", &[dir.to_str().unwrap()]);
    assert_same_bytes(&vol.path(), &image);
    fs::remove_file(&image).unwrap();
    assert_session_gone(&vol, &table, &before);
    fs_type.fsck(&vol.path());
    run("mount", &[vol.path().to_str().unwrap(), dir.to_str().unwrap()]);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn rollback_now_of_a_mounted_ext4_origin_being_read() {
    rollback_now_of_a_mounted_origin(Fs::Ext4);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn rollback_now_of_a_mounted_xfs_origin_being_read() {
    rollback_now_of_a_mounted_origin(Fs::Xfs);
}

/// An unmounted origin, a session of it with scattered changes since: the
/// id and the snapshot's hash.
fn unmounted_with_changes(vol: &Volume, blocks: u64) -> (String, String) {
    let (id, _) = start(vol, &["--skip-mount", "--chunk-size", "4K", "-q", "48M"]);
    scatter(&vol.path(), 64 << 20, blocks, 0xc3);
    let snapshot = sha256(&Path::new("/dev").join(&id));
    (id, snapshot)
}

/// dm-snapshot's copy throttle (`snapshot_copy_throttle`, the percent of
/// time its kcopyd client may spend copying, merges included) held low
/// while it lives, restored when it drops. How fast a merge of a few
/// thousand chunks ends differs between kernels (on 5.10 it could end
/// between a kill and the next command); throttled, it is still going
/// when the test acts on it.
struct MergeThrottle(String);

const COPY_THROTTLE: &str = "/sys/module/dm_snapshot/parameters/snapshot_copy_throttle";

impl MergeThrottle {
    fn new(percent: u32) -> MergeThrottle {
        let was = fs::read_to_string(COPY_THROTTLE).expect("dm_snapshot's copy throttle");
        fs::write(COPY_THROTTLE, percent.to_string()).unwrap();
        MergeThrottle(was.trim().to_string())
    }
}

impl Drop for MergeThrottle {
    fn drop(&mut self) {
        let _ = fs::write(COPY_THROTTLE, &self.0);
    }
}

/// Starts `hcp rollback ID` and kills it (SIGKILL) at its first progress
/// line, the merge running (throttled by the caller's [`MergeThrottle`]).
fn kill_while_merging(id: &str) {
    let mut child = std::process::Command::new(hcp_bin())
        .args(["rollback", "--json", id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().expect("a progress line").unwrap()).unwrap();
    let percent = first["progress"]["percent"].as_f64().expect("a progress line");
    assert!(percent < 100.0, "killed while merging ({first}): give the merge more to do");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_rollback_killed_while_merging_is_finished_by_recover() {
    require_root();
    let _serial = serial();
    let vol = Volume::random("t-rb-kill", 64);
    let table = vol.table();
    let before = SystemState::take();
    let (id, snapshot) = unmounted_with_changes(&vol, 4000);
    let throttle = MergeThrottle::new(5);
    kill_while_merging(&id);
    assert!(!suspended("t-rb-kill"));
    let listed = hcp_json(&["list"]);
    let session = listed_session(&listed, &id);
    assert_eq!(session["state"], "merging", "{listed}");
    assert!(session["merge_percent"].as_f64().is_some(), "{listed}");
    // Starting another session, removing this one, or rolling back another
    // of the origin are refused while it merges.
    assert_eq!(hcp(&["start", "--skip-mount", vol.path().to_str().unwrap()]).code, 4);
    assert_eq!(hcp(&["remove", &id]).code, 5);
    drop(throttle);

    let recovered = hcp_json(&["recover"]);
    let items = recovered.as_array().unwrap();
    assert!(items.iter().any(|r| r["item"] == id.as_str() && r["ok"] == true), "{recovered}");
    assert_eq!(sha256(&vol.path()), snapshot, "the origin is the snapshot, byte for byte");
    assert_session_gone(&vol, &table, &before);
    assert_eq!(SystemState::take(), before);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn rollback_with_no_wait_merges_in_the_background_and_a_second_call_finishes() {
    require_root();
    let _serial = serial();
    let vol = Volume::random("t-rb-nowait", 64);
    let table = vol.table();
    let before = SystemState::take();
    // An older session, then the one rolled back to, then more changes.
    let (older, older_hash) = unmounted_with_changes(&vol, 500);
    let (id, snapshot) = unmounted_with_changes(&vol, 1500);
    assert_ne!(older_hash, snapshot);
    let (progress, started) = rollback_json(&["--no-wait", &id]);
    assert!(progress.is_empty(), "--no-wait does not wait: {progress:?}");
    assert_eq!(started["finished"], false, "{started}");
    let listed = hcp_json(&["list"]);
    assert_eq!(listed_session(&listed, &id)["state"], "merging", "{listed}");
    assert_eq!(listed_session(&listed, &older)["state"], "active", "the other session stays valid: {listed}");
    // One rollback per origin at a time.
    let out = hcp(&["rollback", &older]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let (_, done) = rollback_json(&[&id]);
    assert_eq!(done["finished"], true, "{done}");
    assert_eq!(done["origin_restored"], false, "another session remains: {done}");
    assert_eq!(sha256(&vol.path()), snapshot, "the origin is the snapshot, byte for byte");
    // The other session kept its point in time through the merge.
    assert_eq!(sha256(&Path::new("/dev").join(&older)), older_hash);
    let listed = hcp_json(&["list"]);
    assert_eq!(listed_session(&listed, &older)["state"], "active", "{listed}");
    // And it can be rolled back to in its turn.
    rollback_json(&[&older]);
    assert_eq!(sha256(&vol.path()), older_hash);
    assert_session_gone(&vol, &table, &before);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_rollback_interrupted_by_a_reboot_is_finished_by_recover() {
    require_root();
    let _serial = serial();
    let name = "t-rb-boot";
    let vol = Volume::random(name, 64);
    let table = vol.table();
    let before = SystemState::take();
    let (id, snapshot) = unmounted_with_changes(&vol, 4000);
    let record: Value = serde_json::from_slice(&fs::read(format!("/run/hcp/sessions/{id}.json")).unwrap()).unwrap();
    let store = record["store"]["path"].as_str().unwrap().to_string();
    let throttle = MergeThrottle::new(5);
    kill_while_merging(&id);
    // What a reboot leaves: the origin activated on its own table (as LVM
    // would) over half-merged data, none of hcp's devices, an empty /run.
    run("dmsetup", &["load", name, "--table", &table]);
    run("dmsetup", &["suspend", name]);
    run("dmsetup", &["resume", name]);
    run("dmsetup", &["remove", &format!("{name}-real")]);
    let loops = run("losetup", &["-j", &store]);
    for lo in loops.lines().filter_map(|l| l.split(':').next()) {
        run("losetup", &["-d", lo]);
    }
    fs::remove_file(format!("/run/hcp/sessions/{id}.json")).unwrap();
    drop(throttle);
    assert_ne!(sha256(&vol.path()), snapshot, "the reboot left the origin half merged");

    // Said loudly, and nothing may snapshot the half-merged origin.
    let listed = hcp(&["list"]);
    assert!(listed.stderr.contains("half merged") && listed.stderr.contains("hcp recover"), "{}", listed.stderr);
    let out = hcp(&["start", "--skip-mount", vol.path().to_str().unwrap()]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("half merged"), "{}", out.stderr);

    let recovered = hcp_json(&["recover"]);
    let items = recovered.as_array().unwrap();
    assert!(items.iter().all(|r| r["ok"] == true) && items.len() >= 2, "{recovered}");
    assert_eq!(sha256(&vol.path()), snapshot, "the origin is the snapshot, byte for byte");
    assert_session_gone(&vol, &table, &before);
    assert_eq!(SystemState::take(), before);
}

/// Steps a hang in is ended by the guard (inside the merge's switch).
const GUARDED_STEPS: [&str; 1] = ["rollback-after-suspend"];

/// Every rollback step × error, panic, kill, hang (see [`fault_actions`]),
/// on a mounted origin (`--now`): the origin ends usable, and after `hcp
/// recover` fully rolled back (a rollback goes forward only), with nothing
/// of the session left.
#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_failed_rollback_never_leaves_the_origin_half_merged() {
    require_root();
    let _serial = serial();
    let name = "t-rb-fault";
    let mut vol = Volume::new(name, 32);
    let dir = vol.mount(Fs::Ext4);
    let files = fill_origin(&dir);
    let table = vol.table();
    let before = SystemState::take();
    let steps: Vec<&str> = hcp::switch::fault::STEPS.iter().copied().filter(|s| s.starts_with("rollback-")).collect();
    assert_eq!(steps.len(), 6, "{steps:?}");
    for step in &steps {
        for action in fault_actions() {
            let case = format!("{step}:{action}");
            let (id, _) = start(&vol, &["-o"]);
            change_origin(&dir);
            let stderr = hcp_with_fault(&GUARDED_STEPS, &["rollback", "--now", &id], step, action);
            // A guard may be finishing its restore as hcp's exit is seen.
            let deadline = Instant::now() + Duration::from_secs(3);
            while suspended(name) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            assert!(!suspended(name), "{case}: {name} left suspended ({stderr})");
            // The filesystem is mounted (again) wherever hcp stopped.
            let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(mounts.contains(&format!(" {} ", dir.display())), "{case}: origin not mounted: {stderr}");
            let recovered = hcp_json(&["recover"]);
            assert!(recovered.as_array().unwrap().iter().all(|r| r["ok"] == true), "{case}: {recovered}");
            // Fully rolled back: the snapshot's files, none of the changes.
            run("sh", &["-c", "echo 3 > /proc/sys/vm/drop_caches"]);
            assert_snapshot_contents(&dir, &files);
            assert_eq!(vol.table(), table, "{case}");
            assert_eq!(SystemState::take(), before, "{case}: after recover: {recovered}");
            for helper in ["__autoextend", "__guard"] {
                assert!(!helper_running(helper, None), "{case}: an hcp {helper} process outlived it");
            }
            eprintln!("{case}: rolled back by recover");
        }
    }
    run("umount", &[dir.to_str().unwrap()]);
    Fs::Ext4.fsck(&vol.path());
    run("mount", &[vol.path().to_str().unwrap(), dir.to_str().unwrap()]);
}

/// Bad input: one line, its exit status, nothing changed.
#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn rollbacks_that_cannot_be_done_are_refused_with_nothing_changed() {
    require_root();
    let _serial = serial();
    let mut vol = Volume::new("t-rb-bad", 64);
    let dir = vol.mount(Fs::Ext4);
    fill_origin(&dir);
    let (id, _) = start(&vol, &["--skip-mount"]);
    let holder = dir.join("held.txt");
    fs::write(&holder, b"held").unwrap();
    let mut sleeper = std::process::Command::new("sh")
        .args(["-c", &format!("exec sleep 60 3<{}", holder.display())])
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let state = SystemState::take();
    let cases: [(&[&str], i32, &str); 4] = [
        (&["rollback", &id], 5, "--now"),
        (&["rollback", "--now", &id], 4, "in use by"),
        (&["rollback", "/dev/hcp999"], 3, "no hcp session"),
        (&["rollback", ""], 2, "empty"),
    ];
    for (args, code, says) in cases {
        let out = hcp(args);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: one line: {}", out.stderr);
        assert_eq!(SystemState::take(), state, "{args:?} changed nothing");
    }
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    hcp_json(&["remove", &id]);

    // A snapshot whose store filled: the data is not there to roll back to.
    run("umount", &[dir.to_str().unwrap()]);
    let (id, _) = start(&vol, &["--skip-mount", "-q", "2M"]);
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", vol.path().display()),
            "bs=1M",
            "count=8",
            "oflag=direct",
            "status=none",
        ],
    );
    let state = SystemState::take();
    let out = hcp(&["rollback", &id]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(out.stderr.contains("invalid"), "{}", out.stderr);
    assert_eq!(SystemState::take(), state);
    hcp_json_exit(&["remove", &id], 7);
}
