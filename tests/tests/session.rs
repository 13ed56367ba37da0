//! Snapshot sessions end to end, through the real `hcp` binary, on the guest
//! kernel's dm-snapshot with real ext4 and xfs (these run in the VM, through
//! `cargo xtask test`, on every guest kernel).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hcp::kernel::dm::device::Dm;
use hcp::tracer::probe::InFlightMode;
use hcp_tests::{
    assert_files, assert_matches_stats_schema, fault_actions, hcp, hcp_bin, hcp_json, hcp_json_exit, hcp_with_fault,
    helper_running, require_root, run, serial, suspended, temp_dir, write_direct, write_files, Fs, LoopDevice,
    SystemState, Volume,
};
use serde_json::Value;

/// A writer that keeps appending and fsyncing to a file on the origin.
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: PathBuf) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (s, w) = (stop.clone(), writes.clone());
        let handle = thread::spawn(move || {
            let mut f = fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
            while !s.load(Ordering::Relaxed) {
                f.write_all(&[0x77; 4096]).unwrap();
                f.sync_data().unwrap();
                w.fetch_add(1, Ordering::Relaxed);
            }
        });
        Writer { stop, writes, handle: Some(handle) }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("writer thread");
        self.writes.load(Ordering::Relaxed)
    }
}

fn live_snapshot_is_consistent(fs_type: Fs) {
    require_root();
    let _serial = serial();
    // mkfs.xfs wants 300 MB at least; the backing file is sparse.
    let mut vol = Volume::new(&format!("t-live-{fs_type:?}").to_lowercase(), 320);
    let origin_dir = vol.mount(fs_type);
    let before = write_files(&origin_dir, "before");
    let table_before = vol.table();
    let writer = Writer::start(origin_dir.join("stream.log"));
    thread::sleep(Duration::from_millis(300));

    // xfs read-only takes the `nouuid,norecovery` path, ext4 read-write.
    let read_only = fs_type == Fs::Xfs;
    let started = hcp_json(&["start", if read_only { "-o" } else { "--chunk-size=16K" }, vol.path().to_str().unwrap()]);
    let written_during = writer.stop();
    assert!(written_during > 0, "the writer made progress");
    let snap = PathBuf::from(started["snapshot"].as_str().expect("snapshot path"));
    let mount = PathBuf::from(started["mount_point"].as_str().expect("mounted"));
    assert!(snap.starts_with("/dev/") && snap.file_name().unwrap().to_str().unwrap().starts_with("hcp"), "{started}");
    assert!(started["timing"]["frozen_seconds"].as_f64().expect("frozen, since mounted") > 0.0, "{started}");
    assert!(started["timing"]["suspended_seconds"].as_f64().unwrap() > 0.0, "{started}");
    assert_eq!(started["filesystem"], if fs_type == Fs::Ext4 { "ext4" } else { "xfs" });
    assert_eq!(started["read_only"], read_only);
    let probe = fs::write(PathBuf::from(started["mount_point"].as_str().unwrap()).join("probe"), b"x");
    assert_eq!(probe.is_err(), read_only, "a read-only mount refuses writes, a writable one takes them: {probe:?}");

    // The origin moves on; the snapshot keeps what was there.
    let after = write_files(&origin_dir, "after");
    for name in before.keys() {
        fs::write(origin_dir.join(name), b"overwritten").unwrap();
    }
    run("sync", &[]);
    assert_files(&mount, &before);
    assert!(!mount.join("after-0.bin").exists(), "a file written after the start leaked into the snapshot");
    assert_files(&origin_dir, &after);
    let snap_log = fs::metadata(mount.join("stream.log")).unwrap().len();
    let origin_log = fs::metadata(origin_dir.join("stream.log")).unwrap().len();
    assert!(origin_log > snap_log, "origin log {origin_log} bytes, snapshot's {snap_log}: the origin moved on");

    let listed = hcp_json(&["list"])["sessions"].clone();
    let entry = listed.as_array().unwrap().iter().find(|e| e["virtual_device"] == started["snapshot"]).expect("listed");
    assert_eq!(entry["state"], "active", "{entry}");
    assert!(entry["changed_bytes"].as_u64().unwrap() >= 8 * 64 * 1024, "overwrites were copied aside: {entry}");
    assert_eq!(entry["real_device"], vol.path().to_str().unwrap());

    // fsck of the snapshot, unmounted.
    run("umount", &[mount.to_str().unwrap()]);
    fs_type.fsck(&snap);

    let removed = hcp_json(&["remove", snap.to_str().unwrap()]);
    assert_eq!(removed[0]["origin_restored"], true, "{removed}");
    assert_eq!(vol.table(), table_before, "the origin's table is back as it was");
    assert!(!snap.exists(), "{} is gone", snap.display());
    assert!(!PathBuf::from(started["store"].as_str().unwrap()).exists(), "store file deleted");
    assert!(SystemState::take().records.is_empty(), "no session records left");
    assert_files(&origin_dir, &after);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn live_snapshot_of_mounted_ext4_is_consistent() {
    live_snapshot_is_consistent(Fs::Ext4);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn live_snapshot_of_mounted_xfs_is_consistent() {
    live_snapshot_is_consistent(Fs::Xfs);
}

/// Contents of the `i`th file of the dirty-data test: distinct per file
/// and per 4 KiB block, so a block out of place or from another file shows.
fn dirty_contents(i: u64, bytes: u64) -> Vec<u8> {
    // Block by block: fast enough in a debug build on an emulated CPU, so
    // the data is still dirty when the start comes.
    let mut out = Vec::with_capacity(bytes as usize);
    for block in 0..bytes.div_ceil(4096) {
        let len = (bytes - block * 4096).min(4096) as usize;
        out.extend(std::iter::repeat_n((block as u8) ^ (i as u8).wrapping_mul(37), len));
        out[(block * 4096) as usize] = (block >> 8) as u8;
    }
    out
}

/// A start with much of the filesystem dirty in the page cache: the
/// pre-flush writes it back before the freeze, and the snapshot holds every
/// byte written before the start.
fn dirty_data_is_written_back_before_the_freeze(fs_type: Fs) {
    require_root();
    let _serial = serial();
    let mut vol = Volume::new(&format!("t-dirty-{fs_type:?}").to_lowercase(), 320);
    let dir = vol.mount(fs_type);
    // 48 MiB, buffered and not synced: below the kernel's background
    // writeback threshold in a 2 GiB guest, so still dirty at the start.
    const FILES: u64 = 6;
    const FILE_BYTES: u64 = 8 << 20;
    let dirty_bytes = || hcp::kernel::writeback::dirty_bytes().unwrap();
    let dirty_before = dirty_bytes();
    for i in 0..FILES {
        fs::write(dir.join(format!("dirty-{i}.bin")), dirty_contents(i, FILE_BYTES)).unwrap();
    }
    // Some may be written back already (xfs starts early); enough must be
    // left for the test to mean something.
    let dirtied = dirty_bytes().saturating_sub(dirty_before);
    assert!(
        dirtied >= 8 << 20,
        "the test needs dirty data: {dirty_before} bytes dirty before writing, {dirtied} more after"
    );

    let started = hcp_json(&["start", "--skip-mount", vol.path().to_str().unwrap()]);
    let timing = &started["timing"];
    let pre = &timing["pre_flush"];
    eprintln!("pre-flush: {pre}; frozen {}", timing["frozen_seconds"]);
    let passes = pre["passes"].as_u64().expect("the pre-flush ran: the origin is mounted");
    assert!((1..=u64::from(hcp::kernel::writeback::MAX_PASSES)).contains(&passes), "{pre}");
    let seconds = pre["seconds"].as_f64().unwrap();
    // Each pass begins before the time limit; the last may run past it.
    assert!(seconds > 0.0 && seconds < timing["snapshot_seconds"].as_f64().unwrap(), "{timing}");
    assert!(["clean", "pass-limit", "time-limit"].contains(&pre["stopped"].as_str().unwrap()), "{pre}");
    // The dirty data went to the device in the pre-flush (at least half of
    // what was still dirty at the check above), not in FIFREEZE.
    let written = pre["device_written_bytes"].as_u64().expect("a dm device keeps write counts");
    assert!(written >= dirtied / 2, "{written} bytes written back, {dirtied} were dirty: {pre}");
    assert!(pre["dirty_left_bytes"].as_u64().is_some(), "{pre}");
    assert!(timing["frozen_seconds"].as_f64().unwrap() > 0.0, "{timing}");

    // The snapshot: clean, and every byte written before the start.
    let snap = PathBuf::from(started["snapshot"].as_str().unwrap());
    fs_type.fsck(&snap);
    let mnt = temp_dir("dirty-snap");
    let options = if fs_type == Fs::Xfs { "ro,nouuid" } else { "ro" };
    run("mount", &["-o", options, snap.to_str().unwrap(), mnt.to_str().unwrap()]);
    for i in 0..FILES {
        let got = fs::read(mnt.join(format!("dirty-{i}.bin"))).unwrap();
        assert!(got == dirty_contents(i, FILE_BYTES), "dirty-{i}.bin differs in the snapshot");
    }
    run("umount", &[mnt.to_str().unwrap()]);

    // The remove's switch writes back first too.
    fs::write(dir.join("after.bin"), dirty_contents(99, 4 << 20)).unwrap();
    let removed = hcp_json(&["remove", snap.to_str().unwrap()]);
    assert!(removed[0]["pre_flush"]["passes"].as_u64().is_some_and(|p| p >= 1), "{removed}");
    assert!(removed[0]["frozen_seconds"].as_f64().is_some(), "{removed}");
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn dirty_data_on_ext4_is_written_back_before_the_freeze() {
    dirty_data_is_written_back_before_the_freeze(Fs::Ext4);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn dirty_data_on_xfs_is_written_back_before_the_freeze() {
    dirty_data_is_written_back_before_the_freeze(Fs::Xfs);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn two_sessions_of_one_origin_removed_in_either_order() {
    require_root();
    let _serial = serial();
    for first_removed in [0usize, 1] {
        let mut vol = Volume::new(&format!("t-two-{first_removed}"), 64);
        let dir = vol.mount(Fs::Ext4);
        let table_before = vol.table();
        let v1 = write_files(&dir, "one");
        let a = hcp_json(&["start", "-o", vol.path().to_str().unwrap()]);
        let v2 = write_files(&dir, "two");
        let b = hcp_json(&["start", vol.path().to_str().unwrap()]);
        let (ma, mb) =
            (PathBuf::from(a["mount_point"].as_str().unwrap()), PathBuf::from(b["mount_point"].as_str().unwrap()));
        assert_files(&ma, &v1);
        assert!(!ma.join("two-0.bin").exists());
        assert_files(&mb, &v1);
        assert_files(&mb, &v2);
        let shown = hcp_json(&["show", vol.path().to_str().unwrap()]);
        assert_eq!(shown["snapshots"].as_array().unwrap().len(), 2, "{shown}");

        let order = if first_removed == 0 { [&a, &b] } else { [&b, &a] };
        // By its mount point this time; the other by its device.
        let r1 = hcp_json(&["remove", order[0]["mount_point"].as_str().unwrap()]);
        assert_eq!(r1[0]["origin_restored"], false, "{r1}");
        assert_ne!(vol.table(), table_before, "the origin is still a snapshot origin");
        let survivor = if first_removed == 0 { (&mb, &v2) } else { (&ma, &v1) };
        assert_files(survivor.0, survivor.1);
        let r2 = hcp_json(&["remove", order[1]["snapshot"].as_str().unwrap()]);
        assert_eq!(r2[0]["origin_restored"], true, "{r2}");
        assert_eq!(vol.table(), table_before);
        assert_files(&dir, &v2);
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_full_store_invalidates_the_snapshot_not_the_origin() {
    require_root();
    let _serial = serial();
    let mut vol = Volume::new("t-full", 64);
    let dir = vol.mount(Fs::Ext4);
    write_files(&dir, "base");
    let started = hcp_json(&["start", "--skip-mount", "-q", "2M", vol.path().to_str().unwrap()]);
    // Overwrite far more than 2 MiB of existing data.
    let big = vec![0x42u8; 16 << 20];
    fs::write(dir.join("big.bin"), &big).unwrap();
    run("sync", &[]);
    // An invalid session is listed, and makes the listing exit 7.
    let listed = hcp_json_exit(&["list"], 7)["sessions"].clone();
    let entry = listed.as_array().unwrap().iter().find(|e| e["session"] == started["session"]).unwrap();
    assert_eq!(entry["state"], "invalid", "{entry}");
    // The origin keeps working.
    fs::write(dir.join("still.txt"), b"writable").unwrap();
    run("sync", &[]);
    assert_eq!(fs::read(dir.join("big.bin")).unwrap(), big);
    let removed = hcp_json_exit(&["remove", "--keep-store", started["session"].as_str().unwrap()], 7);
    assert_eq!(removed[0]["snapshot_invalidated"], true, "{removed}");
    let store = PathBuf::from(started["store"].as_str().unwrap());
    assert_eq!(removed[0]["kept_store"], store.to_str().unwrap(), "{removed}");
    assert!(store.exists(), "--keep-store keeps {}", store.display());
    fs::remove_file(&store).unwrap();
    assert!(SystemState::take().records.is_empty());
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_plain_device_is_wrapped_and_its_raw_mount_refused() {
    require_root();
    let _serial = serial();
    let raw = LoopDevice::new(32 << 20);
    let pattern = vec![0x11u8; 1 << 20];
    fs::OpenOptions::new().write(true).open(&raw.path).unwrap().write_all(&pattern).unwrap();
    let started = hcp_json(&["start", "--skip-mount", raw.path.to_str().unwrap()]);
    let through = PathBuf::from(started["write_through"].as_str().expect("a device to write through"));
    assert!(through.exists(), "{}", through.display());

    let new = vec![0x22u8; 1 << 20];
    let mut w = fs::OpenOptions::new().write(true).open(&through).unwrap();
    w.write_all(&new).unwrap();
    w.sync_all().unwrap();
    drop(w);
    let snap = PathBuf::from(started["snapshot"].as_str().unwrap());
    let mut head = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut fs::File::open(&snap).unwrap(), &mut head).unwrap();
    assert!(head == pattern, "the snapshot keeps the old content");
    let mut raw_head = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut fs::File::open(&raw.path).unwrap(), &mut raw_head).unwrap();
    assert!(raw_head == new, "writes through the origin reached the disk");

    // dm holds the raw device: mounting it (or opening it exclusively) fails.
    let dir = temp_dir("raw-mount");
    let mount =
        std::process::Command::new("mount").args([raw.path.to_str().unwrap(), dir.to_str().unwrap()]).output().unwrap();
    assert!(!mount.status.success(), "mounting the wrapped raw device must fail");

    hcp_json(&["remove", snap.to_str().unwrap()]);
    assert!(!through.exists(), "the wrapper is removed with the last session");
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_traced_session_reports_what_it_costs() {
    require_root();
    let _serial = serial();
    let mut vol = Volume::new("t-trace", 96);
    let dir = vol.mount(Fs::Ext4);
    let big = vec![0x5au8; 8 << 20];
    fs::write(dir.join("data.bin"), &big).unwrap();
    run("sync", &[]);
    let writer = Writer::start(dir.join("stream.log"));
    let report_dir = temp_dir("t-trace-report");
    let report_path = report_dir.join("final.json");
    let started = hcp_json(&[
        "start",
        "--trace",
        "--baseline",
        "1s",
        "--report",
        report_path.to_str().unwrap(),
        "--skip-mount",
        vol.path().to_str().unwrap(),
    ]);
    let writes = writer.stop();
    let id = started["session"].as_str().unwrap().to_string();

    // Overwrite 4 MiB of data that existed at the snapshot: each chunk is
    // copied to the store before the new data lands.
    let mut f = fs::OpenOptions::new().write(true).open(dir.join("data.bin")).unwrap();
    f.write_all(&vec![0xa5u8; 4 << 20]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let s = hcp_json(&["stats", &id]);
    assert_eq!(s["schema"], "hcp-stats/1", "{s}");
    assert_matches_stats_schema(&s);
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v} in {s}"));
    assert!(n(&s["app_writes"]["bytes"]) >= 4 << 20, "application writes counted: {}", s["app_writes"]);
    let copy = &s["copy_out"];
    assert!(n(&copy["read_bytes"]) >= 4 << 20, "the overwritten chunks were read for copy-out: {copy}");
    assert!(n(&copy["chunk_copies"]) >= 1024, "{copy}");
    assert!(n(&copy["store_data_bytes"]) >= 4 << 20, "and written to the store: {copy}");
    assert!(n(&copy["store_metadata_writes"]) > 0, "metadata commits: {copy}");
    // Above 1: the copies add to the writes. (The writer's journal rewrites
    // after the snapshot, a number that depends on timing, pull it towards
    // 1; the exact figure is asserted on a raw origin below.)
    let wa = s["write_amplification"].as_f64().expect("write amplification");
    assert!(wa > 1.0, "copy-on-write at least adds the copies: {wa}");
    let overhead = &s["cow_overhead"];
    assert!(
        overhead["baseline"]["count"].as_u64().unwrap_or(0) > 0,
        "the writer was measured before the snapshot: {overhead}"
    );
    assert!(overhead["during"]["count"].as_u64().unwrap_or(0) > 0, "{overhead}");
    assert!(overhead["ratio_to_baseline"]["p50"].as_f64().is_some(), "{overhead}");
    let freeze = &s["freeze"];
    let secs = |k: &str| freeze[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {freeze}"));
    assert!(secs("frozen_seconds") > 0.0, "the origin was mounted, so frozen: {freeze}");
    assert!(secs("suspended_seconds") > 0.0 && secs("freeze_call_seconds") > 0.0, "{freeze}");
    // The kernel times each window from syscall entry to return, inside
    // hcp's clock around the same calls. Tolerance: 100 ms, for a process
    // preempted between its clock read and the call on the emulated
    // single-CPU guest (a few ms is typical there, about 15 us on hardware).
    let kernel = &freeze["kernel"];
    for k in ["freeze_call_seconds", "frozen_seconds", "suspended_seconds"] {
        let (by_hcp, in_kernel) = (secs(k), kernel[k].as_f64().unwrap_or_else(|| panic!("kernel {k}: {kernel}")));
        assert!(in_kernel > 0.0 && in_kernel <= by_hcp, "{k}: kernel {in_kernel} s within hcp's {by_hcp} s");
        assert!(by_hcp - in_kernel < 0.1, "{k}: kernel {in_kernel} s agrees with hcp's {by_hcp} s within 100 ms");
    }
    // The writer was held by the freeze. A write() entering after FIFREEZE
    // began waits for the thaw; the call it made before (an fdatasync, which
    // waits for the freeze's own writeback) covers the rest. So at most two
    // calls span the frozen time and the longer is at least half of it; none
    // lasts much beyond the thaw.
    let stall = kernel["longest_write_stall_seconds"].as_f64().expect("a write stall was measured");
    let frozen = kernel["frozen_seconds"].as_f64().unwrap();
    eprintln!("kernel window: {kernel}; writer made {writes} writes");
    assert!(stall >= frozen / 2.0 && stall <= frozen + 1.0, "stall {stall} s, frozen {frozen} s: {kernel}");
    assert!(n(&kernel["write_calls"]) > 0, "{kernel}");
    assert_eq!((n(&kernel["writes_still_held"]), n(&kernel["lost_events"])), (0, 0), "{kernel}");
    assert_eq!(started["timing"]["kernel"], *kernel, "start reports the figures it records");
    assert_eq!(n(&s["losses"]["inflight_full"]) + n(&s["losses"]["histogram_full"]), 0, "{}", s["losses"]);
    assert_eq!(n(&s["losses"]["read_errors"]), 0, "{}", s["losses"]);
    // Runs the kernel skipped are reported for the session, never hidden:
    // counted, or (a kernel that keeps no count) named as not measured; a
    // device's losses leave them out (they are not attributable).
    let not_measured: Vec<&str> =
        s["not_measured"].as_array().expect("not_measured").iter().filter_map(|n| n["figure"].as_str()).collect();
    assert!(
        s["losses"]["skipped_runs"].is_u64() != not_measured.contains(&"losses.skipped_runs"),
        "{} / {}",
        s["losses"],
        s["not_measured"]
    );
    // The in-flight mode is the one the kernel allows, and says so.
    assert_eq!(s["in_flight"], InFlightMode::for_running_kernel().name(), "{}", s["in_flight"]);
    let devices = s["devices"].as_array().expect("per-device figures");
    assert!(
        !devices.is_empty()
            && devices.iter().all(|d| d["losses"].is_object() && d["losses"].get("skipped_runs").is_none()),
        "{}",
        s["devices"]
    );

    // Reads of the snapshot are counted apart and never pass for copy-out.
    let snap = started["snapshot"].as_str().unwrap();
    let mut head = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut fs::File::open(snap).unwrap(), &mut head).unwrap();
    let after = hcp_json(&["stats", &id]);
    assert!(n(&after["snapshot_reads"]["bytes"]) >= 1 << 20, "{}", after["snapshot_reads"]);
    // The mounted filesystem's own writeback (a journal commit) may copy
    // out a chunk meanwhile; the 1 MiB read must not show there. (The raw
    // origin's test below asserts equality.)
    let copied = n(&after["copy_out"]["read_bytes"]) - n(&s["copy_out"]["read_bytes"]);
    assert!(copied < 1 << 20, "snapshot reads are not copy-out: {} then {}", s["copy_out"], after["copy_out"]);

    // --follow: one JSON line per interval, each with that interval's figures.
    // The filesystem's own writeback (a journal commit, an inode update) may
    // copy a chunk at any time, so each line is checked against the totals
    // read around the whole follow: cumulative figures would repeat the
    // thousand-plus copies above in every line.
    let copies = |v: &Value| n(&v["copy_out"]["chunk_copies"]);
    let total_before = copies(&hcp_json(&["stats", &id]));
    let mut follow = std::process::Command::new(hcp_bin())
        .args(["stats", &id, "--follow", "--interval", "300ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("hcp stats --follow");
    // Three lines, read as they come (no timing assumed), then stop it.
    let reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    let lines: Vec<Value> = std::io::BufRead::lines(reader)
        .take(3)
        .map(|l| l.expect("a line"))
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    follow.kill().unwrap();
    follow.wait().unwrap();
    let total_after = copies(&hcp_json(&["stats", &id]));
    assert_eq!(lines.len(), 3, "a line per interval: {lines:?}");
    for line in &lines {
        assert_matches_stats_schema(line);
        // On a fixed schedule: a read that came late makes the next
        // interval as much shorter, never drifting.
        assert!(line["interval_seconds"].as_f64().unwrap() >= 0.15, "{line}");
    }
    let in_lines: u64 = lines.iter().map(copies).sum();
    assert!(
        in_lines <= total_after - total_before,
        "the lines count only their intervals: {in_lines} copies in them, {total_before} -> {total_after} in total"
    );

    let text = hcp(&["stats", &id]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("Write amplification") && text.stdout.contains("COW overhead"), "{}", text.stdout);

    // Prometheus: native histograms whose +Inf bucket is the JSON count,
    // and the switch on both clocks.
    // (The filesystem's own writeback may add writes at any time: the
    // count is bracketed by JSON reads before and after.)
    let before = n(&hcp_json(&["stats", &id])["app_writes"]["latency"]["count"]);
    let prom = hcp(&["stats", &id, "--prometheus"]);
    assert_eq!(prom.code, 0, "{}", prom.stderr);
    let sample = |name: &str| -> f64 {
        let line =
            prom.stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}: {}", prom.stdout));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let count = sample(&format!("hcp_latency_seconds_count{{session=\"{id}\",kind=\"app_write\"}}"));
    let inf = sample(&format!("hcp_latency_seconds_bucket{{session=\"{id}\",kind=\"app_write\",le=\"+Inf\"}}"));
    let after = n(&hcp_json(&["stats", &id])["app_writes"]["latency"]["count"]);
    assert_eq!(count, inf);
    assert!((before..=after).contains(&(count as u64)), "{before} <= {count} <= {after}: {}", prom.stdout);
    assert_eq!(
        sample(&format!("hcp_kernel_frozen_seconds{{session=\"{id}\"}}")),
        kernel["frozen_seconds"].as_f64().unwrap()
    );
    assert!(hcp(&["stats", "--prometheus"]).stdout.contains(&format!("session=\"{id}\"")), "every session by default");

    // The HdrHistogram interval log reads back with the same counts.
    let log = std::process::Command::new(hcp_bin()).args(["stats", &id, "--hdr-log"]).output().unwrap();
    assert!(log.status.success(), "{}", String::from_utf8_lossy(&log.stderr));
    let logged = hdr_log_counts(&log.stdout);
    let later = n(&hcp_json(&["stats", &id])["app_writes"]["latency"]["count"]);
    let app_write = logged.get("app_write").copied().unwrap_or_else(|| panic!("no app_write: {logged:?}"));
    assert!((count as u64..=later).contains(&app_write), "{count} <= {app_write} <= {later}: {logged:?}");

    // The programs are in use: unloading them is refused, in one line.
    let refused = hcp_tests::hcp(&["trace", "unload"]);
    assert_eq!(refused.code, 4, "busy: {}{}", refused.stdout, refused.stderr);
    assert_eq!(refused.stderr.trim().lines().count(), 1, "{}", refused.stderr);
    assert!(refused.stderr.contains(&id) && refused.stderr.contains("hcp remove"), "{}", refused.stderr);
    assert!(Path::new("/sys/fs/bpf/hcp/links").is_dir(), "still attached after the refusal");
    let removed = hcp_json(&["remove", &id]);
    let report = PathBuf::from(removed[0]["report"].as_str().expect("a final report"));
    assert_eq!(report, report_path, "the report goes where --report said");
    let final_stats: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(final_stats["session"], id.as_str());
    assert_matches_stats_schema(&final_stats);
    assert_eq!(final_stats["freeze"]["kernel"], *kernel, "the switch is in the final report");
    let final_log =
        hdr_log_counts(&fs::read(report_dir.join("final.json.hlog")).expect("the histograms beside the report"));
    assert_eq!(final_log.get("app_write").copied(), final_stats["app_writes"]["latency"]["count"].as_u64());
    assert!(!Path::new("/sys/fs/bpf/hcp/links").exists(), "the last traced session's removal detaches the programs");
    assert!(Path::new("/sys/fs/bpf/hcp/programs").is_dir(), "and leaves them loaded for the next traced start");
    assert_eq!(hcp_json(&["trace", "unload"])["unloaded"], true);
    assert!(!Path::new("/sys/fs/bpf/hcp").exists(), "unloaded: nothing of hcp's left in bpffs");
    assert_eq!(hcp_json(&["trace", "unload"])["unloaded"], false, "nothing to unload the second time");
    fs::remove_dir_all(report_dir).unwrap();
}

/// The total count of each tagged histogram of an HdrHistogram interval log.
fn hdr_log_counts(log: &[u8]) -> BTreeMap<String, u64> {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let text = std::str::from_utf8(log).expect("a text log");
    let mut counts = BTreeMap::new();
    for entry in IntervalLogIterator::new(text.as_bytes()) {
        if let LogEntry::Interval(h) = entry.expect("a well-formed log entry") {
            use base64::Engine as _;
            let decoded =
                base64::engine::general_purpose::STANDARD.decode(h.encoded_histogram()).expect("base64 histogram");
            let hist: hdrhistogram::Histogram<u64> =
                Deserializer::new().deserialize(&mut decoded.as_slice()).expect("a V2 histogram");
            counts.insert(h.tag().map(|t| t.as_str().to_string()).unwrap_or_default(), hist.len());
        }
    }
    counts
}

/// Bytes of the origin written with O_DIRECT, `mib` MiB from `offset_mib`.

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn copy_out_and_amplification_are_exact_on_a_raw_origin() {
    require_root();
    let _serial = serial();
    let vol = Volume::new("t-exact", 64);
    let dev = vol.path();
    write_direct(&dev, 0, 32, 0x11);
    let started =
        hcp_json(&["start", "--trace", "--baseline", "0", "--skip-mount", "-q", "32M", dev.to_str().unwrap()]);
    let id = started["session"].as_str().unwrap().to_string();
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"));

    // X MiB of fresh data: every 4 KiB chunk is copied out once.
    const X: u64 = 8;
    write_direct(&dev, 0, X, 0x22);
    let s = hcp_json(&["stats", &id]);
    assert_matches_stats_schema(&s);
    assert_eq!((n(&s["app_writes"]["count"]), n(&s["app_writes"]["bytes"])), (X, X << 20), "{}", s["app_writes"]);
    let copy = &s["copy_out"];
    assert_eq!(n(&copy["read_bytes"]), X << 20, "copy-out reads: {copy}");
    assert_eq!(n(&copy["chunk_copies"]), (X << 20) / 4096, "one copy per chunk: {copy}");
    let data = n(&copy["store_data_bytes"]);
    assert!((X << 20..=(X << 20) + (256 << 10)).contains(&data), "store data, up to metadata: {copy}");
    assert!(n(&copy["store_metadata_writes"]) > 0, "{copy}");
    let wa = s["write_amplification"].as_f64().unwrap();
    eprintln!("{X} MiB fresh: write amplification {wa}, copy-out {copy}");
    assert!((2.0..=2.1).contains(&wa), "write amplification {wa}: origin + store, over application bytes");

    // The same blocks again: nothing left to copy.
    write_direct(&dev, 0, X, 0x33);
    let again = hcp_json(&["stats", &id]);
    assert_eq!(
        again["copy_out"]["read_bytes"], copy["read_bytes"],
        "rewriting adds no copy-out: {}",
        again["copy_out"]
    );
    assert_eq!(again["copy_out"]["chunk_copies"], copy["chunk_copies"]);
    assert_eq!(n(&again["app_writes"]["bytes"]), 2 * (X << 20));

    // Reading the whole snapshot (changed chunks from the store, the rest
    // from the real device) is counted apart and copies nothing.
    let snap = started["snapshot"].as_str().unwrap();
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::open(snap).unwrap(), &mut all).unwrap();
    assert!(all[..(X << 20) as usize].iter().all(|b| *b == 0x11), "the snapshot holds the old data");
    let read = hcp_json(&["stats", &id]);
    assert!(n(&read["snapshot_reads"]["bytes"]) >= 64 << 20, "{}", read["snapshot_reads"]);
    assert_eq!(
        read["copy_out"]["read_bytes"], copy["read_bytes"],
        "snapshot reads are not copy-out: {}",
        read["copy_out"]
    );
    assert_eq!(n(&read["losses"]["inflight_full"]) + n(&read["losses"]["histogram_full"]), 0, "{}", read["losses"]);
    hcp_json(&["remove", &id]);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn copy_out_is_counted_on_a_partition() {
    // A partition's I/O is its own, not its disk's: a wrapped partition's
    // copy-out reads come from the partition.
    require_root();
    let _serial = serial();
    let (_disk, part) = LoopDevice::partitioned(64 << 20);
    let started =
        hcp_json(&["start", "--trace", "--baseline", "0", "--skip-mount", "-q", "32M", part.to_str().unwrap()]);
    let id = started["session"].as_str().unwrap().to_string();
    let through = PathBuf::from(started["write_through"].as_str().expect("a wrapped partition"));
    const X: u64 = 4;
    write_direct(&through, 0, X, 0x44);
    let s = hcp_json(&["stats", &id]);
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v} in {s}"));
    assert_eq!(n(&s["app_writes"]["bytes"]), X << 20, "{}", s["app_writes"]);
    assert_eq!(n(&s["copy_out"]["read_bytes"]), X << 20, "copy-out read from the partition: {}", s["copy_out"]);
    let real = s["devices"].as_array().unwrap().iter().find(|d| d["role"] == "real").expect("the partition is traced");
    assert_eq!(real["device"], part.to_str().unwrap(), "{real}");
    assert_eq!(n(&real["bios"]["read"]["bytes"]), X << 20, "{real}");
    hcp_json(&["remove", &id]);
}

/// Steps inside a freeze window: a hang there is ended by the guard.
const WINDOW_STEPS: [&str; 7] = [
    "after-freeze",
    "after-suspend",
    "before-resume",
    "before-thaw",
    "remove-after-freeze",
    "remove-after-suspend",
    "remove-before-thaw",
];

/// What every failure must leave: the origin running and writable within
/// 2 s, its files intact; after `hcp recover` (run unless `clean`, when
/// hcp must have undone everything itself), the system as `before`.
fn assert_recovered(
    case: &str,
    name: &str,
    dir: &Path,
    files: &BTreeMap<PathBuf, Vec<u8>>,
    before: &SystemState,
    clean: bool,
) {
    // A guard may be finishing its restore as hcp's exit is seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while suspended(name) && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(!suspended(name), "{case}: {name} left suspended");
    let write_start = std::time::Instant::now();
    let mut f = fs::File::create(dir.join("after.txt")).unwrap();
    f.write_all(case.as_bytes()).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let took = write_start.elapsed();
    assert!(took < Duration::from_secs(2), "{case}: a write to the origin took {took:?}");
    fs::remove_file(dir.join("after.txt")).unwrap();
    assert_files(dir, files);
    let recovered = hcp_json(&["recover"]);
    let items = recovered.as_array().expect("recover prints a list");
    if clean {
        assert!(items.is_empty(), "{case}: hcp undid everything itself, yet recover found {recovered}");
    } else {
        assert!(!items.is_empty(), "{case}: recover found nothing to do");
    }
    assert!(items.iter().all(|r| r["ok"] == true), "{case}: {recovered}");
    assert_eq!(&SystemState::take(), before, "{case}: after recover: {recovered}");
    for helper in ["__autoextend", "__guard"] {
        assert!(!helper_running(helper, None), "{case}: an hcp {helper} process outlived it");
    }
    assert_files(dir, files);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_failed_start_never_leaves_the_origin_frozen_suspended_or_changed() {
    require_root();
    let _serial = serial();
    let name = "t-fault-start";
    let mut vol = Volume::new(name, 32);
    let dir = vol.mount(Fs::Ext4);
    let files = write_files(&dir, "before");
    let before = SystemState::take();
    let vol_path = vol.path().to_str().unwrap().to_string();
    let steps = &hcp::switch::fault::STEPS[..8];
    assert!(steps.iter().all(|s| s.starts_with("after-") || s.starts_with("before-")), "{steps:?}");
    for step in steps {
        for action in fault_actions() {
            let case = format!("{step}:{action}");
            let started = std::time::Instant::now();
            // With a growing store, so that its monitor must go too.
            let stderr = hcp_with_fault(
                &WINDOW_STEPS,
                &["start", "--skip-mount", "--autoextend=80%:20%", &vol_path],
                step,
                action,
            );
            let ended = started.elapsed();
            // An error or a panic is undone in-process, whatever the step;
            // a killed hcp leaves a session `list` calls incomplete.
            let clean = matches!(action, "error" | "panic");
            if !clean {
                let listed = hcp_json(&["list"])["sessions"].clone();
                assert!(
                    listed.as_array().unwrap().iter().any(|s| s["state"] == "incomplete"),
                    "{case}: list shows the leftover: {listed} ({stderr})"
                );
            }
            assert_recovered(&case, name, &dir, &files, &before, clean);
            eprintln!("{case}: hcp ended after {ended:?}; recovered");
        }
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_failed_remove_is_finished_by_recover() {
    require_root();
    let _serial = serial();
    let name = "t-fault-remove";
    let mut vol = Volume::new(name, 32);
    let dir = vol.mount(Fs::Ext4);
    let files = write_files(&dir, "before");
    let before = SystemState::take();
    let vol_path = vol.path().to_str().unwrap().to_string();
    let steps: Vec<&str> = hcp::switch::fault::STEPS.iter().copied().filter(|s| s.starts_with("remove-")).collect();
    assert_eq!(steps.len(), 9, "{steps:?}");
    for step in &steps {
        for action in fault_actions() {
            let case = format!("{step}:{action}");
            // A complete session, its snapshot mounted, taken after a write
            // the snapshot must hold.
            let started = hcp_json(&["start", "--autoextend=80%:20%", &vol_path]);
            let mount = PathBuf::from(started["mount_point"].as_str().expect("mounted"));
            assert_files(&mount, &files);
            let id = started["session"].as_str().unwrap().to_string();
            let stderr = hcp_with_fault(&WINDOW_STEPS, &["remove", &id], step, action);
            if *step == "remove-after-unmount" {
                // Failed before the session was marked as going: it is still
                // complete (unmounted), and `remove` takes it from there.
                let listed = hcp_json(&["list"])["sessions"].clone();
                assert_eq!(listed[0]["state"], "active", "{case}: {listed} ({stderr})");
                hcp_json(&["remove", &id]);
                assert_recovered(&case, name, &dir, &files, &before, true);
            } else {
                assert_recovered(&case, name, &dir, &files, &before, false);
            }
            assert!(!mount.exists(), "{case}: the mount point hcp made is gone ({stderr})");
            eprintln!("{case}: recovered");
        }
    }
}

/// `fio` writing to `dir` until dropped: random 4 KiB writes with an
/// fsync every 16, rate-limited so that the emulated guest keeps up; one
/// process (`--thread`), so that killing it ends every job.
struct Fio(std::process::Child);

impl Fio {
    fn start(dir: &Path) -> Fio {
        let child = std::process::Command::new("fio")
            .args([
                "--name=load",
                &format!("--directory={}", dir.display()),
                "--size=8M",
                "--rw=randwrite",
                "--bs=4k",
                "--ioengine=psync",
                "--thread",
                "--fsync=16",
                "--rate=2m",
                "--time_based",
                "--runtime=3600",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run fio");
        Fio(child)
    }

    /// Panics unless fio is still writing (it stops on any I/O error).
    fn assert_running(&mut self, when: &str) {
        assert!(self.0.try_wait().unwrap().is_none(), "fio stopped {when}");
    }
}

impl Drop for Fio {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `hcp __autoextend <id>` runs (an exited one not yet reaped, a
/// zombie, does not).
fn monitor_running(id: &str) -> bool {
    helper_running("__autoextend", Some(id))
}

/// `allocated/total` sectors of snapshot `id`, None once it is invalid.
fn snapshot_use(id: &str) -> Option<(u64, u64)> {
    let lines = Dm::open().unwrap().status(id).unwrap();
    let (_, text) = lines.first().expect("a snapshot table");
    let (allocated, rest) = text.split_once('/')?;
    Some((allocated.parse().unwrap(), rest.split_whitespace().next()?.parse().unwrap()))
}

/// What a session leaves once removed: nothing at all.
fn assert_session_gone(started: &Value) {
    let id = started["session"].as_str().unwrap();
    assert!(!monitor_running(id), "the auto-extend monitor of {id} outlived its session");
    assert!(!Dm::open().unwrap().exists(id).unwrap(), "dm device {id} left behind");
    assert!(!Path::new(&format!("/run/hcp/sessions/{id}.json")).exists(), "record of {id} left behind");
    let lo = started["store_loop_device"].as_str().expect("a file store's loop device");
    let number = lo.trim_start_matches("/dev/loop");
    assert!(!Path::new(&format!("/sys/block/loop{number}/loop/backing_file")).exists(), "{lo} still attached");
    assert!(!Path::new(started["store"].as_str().unwrap()).exists(), "store file left behind");
}

/// Overwrites the first `bytes` of `dev` with O_DIRECT writes of `piece`
/// bytes. With `wait_for_growth`, after each piece that takes the store past
/// `threshold` percent, waits (at most `max_wait`) until the monitor has
/// grown it back below: a burst paced so that a 250 ms poll can follow it
/// under emulation. Returns how long it waited in all.
fn paced_burst(
    dev: &Path,
    id: &str,
    bytes: u64,
    piece: usize,
    wait_for_growth: Option<u64>,
    max_wait: Duration,
) -> Duration {
    let f = hcp_tests::open_direct(dev);
    let buf = hcp_tests::AlignedBuf::new(piece, 0xa5);
    let mut waited = Duration::ZERO;
    for offset in (0..bytes).step_by(piece) {
        hcp_tests::pwrite_all(&f, &buf, offset);
        let Some(threshold) = wait_for_growth else { continue };
        let began = std::time::Instant::now();
        while began.elapsed() < max_wait {
            match snapshot_use(id) {
                Some((allocated, total)) if allocated * 100 >= total * threshold => {
                    thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        waited += began.elapsed();
    }
    waited
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn twenty_cycles_under_fio_leave_clean_snapshots_and_nothing_behind() {
    require_root();
    let _serial = serial();
    let mut vol = Volume::new("t-soak", 64);
    let dir = vol.mount(Fs::Ext4);
    let table_before = vol.table();
    let before = SystemState::take();
    let mut fio = Fio::start(&dir);
    thread::sleep(Duration::from_millis(500));
    let vol_path = vol.path().to_str().unwrap().to_string();
    for cycle in 1..=20 {
        // A store as large as the origin: it never fills, however slow the
        // fsck below.
        let started = hcp_json(&["start", "--skip-mount", "-q", "100%", &vol_path]);
        let snap = PathBuf::from(started["snapshot"].as_str().unwrap());
        fio.assert_running(&format!("at cycle {cycle}"));
        // The snapshot holds the filesystem as the freeze left it: clean.
        Fs::Ext4.fsck(&snap);
        hcp_json(&["remove", snap.to_str().unwrap()]);
        eprintln!("cycle {cycle}: frozen {:.3} s, fsck clean", started["timing"]["frozen_seconds"]);
    }
    fio.assert_running("at the end");
    drop(fio);
    assert_eq!(vol.table(), table_before);
    assert_eq!(SystemState::take(), before, "20 cycles leaked something");
    assert!(!Path::new("/sys/fs/bpf/hcp/links").exists(), "no programs attached");
    assert!(hcp_json(&["recover"]).as_array().unwrap().is_empty(), "recover finds nothing");
}

/// A `sqlite3` shell committing numbered rows one at a time; `acked` is
/// how many it has reported committed.
struct SqliteWriter {
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl SqliteWriter {
    fn start(db: &Path) -> SqliteWriter {
        use std::io::BufRead;
        let mut child = std::process::Command::new("sqlite3")
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run sqlite3");
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut send = move |sql: &str| {
            writeln!(stdin, "{sql}").unwrap();
            stdin.flush().unwrap();
        };
        send("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
        assert_eq!(lines.next().unwrap().unwrap(), "wal");
        send("CREATE TABLE t(n INTEGER PRIMARY KEY, payload BLOB NOT NULL);");
        let (acked, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (a, s) = (acked.clone(), stop.clone());
        let handle = thread::spawn(move || {
            // Lockstep: each commit is acknowledged (the shell runs the
            // SELECT only after the INSERT's COMMIT returned) before the
            // next is sent, so `acked` never runs ahead of the disk.
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                send(&format!("BEGIN; INSERT INTO t VALUES({n}, randomblob(3000)); COMMIT; SELECT 'ok', {n};"));
                assert_eq!(lines.next().unwrap().unwrap(), format!("ok|{n}"));
                a.store(n, Ordering::SeqCst);
            }
            send(".quit");
            child.wait().unwrap();
        });
        SqliteWriter { acked, stop, handle: Some(handle) }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_live_sqlite_database_in_wal_mode_is_snapshotted_at_a_commit() {
    require_root();
    let _serial = serial();
    let mut vol = Volume::new("t-sqlite", 64);
    let dir = vol.mount(Fs::Ext4);
    let writer = SqliteWriter::start(&dir.join("live.db"));
    while writer.acked() < 50 {
        thread::sleep(Duration::from_millis(20));
    }
    let acked_before = writer.acked();
    let started = hcp_json(&["start", "-o", vol.path().to_str().unwrap()]);
    let acked_after = writer.acked();
    thread::sleep(Duration::from_millis(300));
    drop(writer);
    let mount = PathBuf::from(started["mount_point"].as_str().expect("mounted"));

    // What a backup does: copy the database and its WAL out of the
    // snapshot; SQLite replays the WAL's committed frames on open.
    let copy = temp_dir("sqlite-copy");
    for file in ["live.db", "live.db-wal"] {
        fs::copy(mount.join(file), copy.join(file)).unwrap_or_else(|e| panic!("{file} in the snapshot: {e}"));
    }
    let db = copy.join("live.db");
    let check = run("sqlite3", &[db.to_str().unwrap(), "PRAGMA integrity_check;"]);
    assert_eq!(check.trim(), "ok", "integrity_check of the snapshot's copy");
    let counted =
        run("sqlite3", &[db.to_str().unwrap(), "SELECT count(*), coalesce(min(n), 0), coalesce(max(n), 0) FROM t;"]);
    let [count, min, max]: [u64; 3] =
        counted.trim().split('|').map(|x| x.parse().unwrap()).collect::<Vec<_>>().try_into().unwrap();
    eprintln!("snapshot holds rows 1..={max}; committed before start {acked_before}, by its end {acked_after}");
    // A prefix: rows 1..=max, none missing, none torn.
    assert!(min == 1 && count == max, "rows {min}..={max}, {count} of them: not a prefix");
    // Every commit acknowledged before the start is in it; nothing
    // committed after the start returned can be.
    assert!(max >= acked_before, "the snapshot lost committed rows: {max} < {acked_before}");
    assert!(max <= acked_after + 1, "the snapshot holds rows committed after it: {max} > {acked_after}");
    hcp_json(&["remove", started["session"].as_str().unwrap()]);
}

/// A mounted ext4 volume whose writes each take `write_delay_ms` (dm's
/// `delay` target over a loop device): writing back its dirty data takes
/// seconds. Unmounted and removed when dropped.
struct SlowVolume {
    name: String,
    mount: PathBuf,
    _loop: LoopDevice,
}

impl SlowVolume {
    fn new(name: &str, mib: u64, write_delay_ms: u32) -> SlowVolume {
        let lo = LoopDevice::new(mib << 20);
        // Made before the delay, which would make mkfs take minutes.
        Fs::Ext4.mkfs(&lo.path);
        let dev = lo.devnum();
        let line = hcp::kernel::dm::table::TableLine {
            start: 0,
            length: mib << 11,
            target_type: "delay".into(),
            params: format!("{dev} 0 0 {dev} 0 {write_delay_ms}"),
        };
        Dm::open().unwrap().create(name, &format!("TEST-{name}"), &[line]).expect("create a dm-delay volume");
        let mount = temp_dir(&format!("{name}-mnt"));
        run("mount", &[&format!("/dev/mapper/{name}"), mount.to_str().unwrap()]);
        SlowVolume { name: name.to_string(), mount, _loop: lo }
    }

    fn path(&self) -> String {
        format!("/dev/mapper/{}", self.name)
    }
}

impl Drop for SlowVolume {
    fn drop(&mut self) {
        let _ = hcp(&["remove", &self.path()]);
        let _ = std::process::Command::new("umount").arg(&self.mount).status();
        let _ = Dm::open().map(|dm| dm.remove(&self.name));
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn ctrl_c_during_the_pre_flush_undoes_the_start_with_nothing_frozen() {
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let _serial = serial();
    let vol = SlowVolume::new("t-slow", 64, 300);
    let dir = vol.mount.clone();
    let files = write_files(&dir, "before");
    let before = SystemState::take();
    // Dirty data for the pre-flush to write back, 300 ms a write.
    fs::write(dir.join("dirty.bin"), dirty_contents(1, 16 << 20)).unwrap();

    let child = std::process::Command::new(hcp_bin())
        .args(["start", "--skip-mount", &vol.path()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signalled once it is inside syncfs (x86_64 system call 306): the
    // pre-flush, since nothing else in a start calls it.
    let syscall = format!("/proc/{}/syscall", child.id());
    let waited = std::time::Instant::now();
    while !fs::read_to_string(&syscall).is_ok_and(|s| s.starts_with("306 ")) {
        assert!(waited.elapsed() < Duration::from_secs(60), "hcp start never called syncfs");
        thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "ended by the signal, after its undo: {stderr}");
    assert!(stderr.contains("SIGINT during the pre-flush"), "{stderr}");
    assert_eq!(SystemState::take(), before, "everything undone: {stderr}");
    assert!(hcp_json(&["recover"]).as_array().unwrap().is_empty(), "nothing for recover");
    // Never frozen: a write and its sync go through.
    fs::write(dir.join("after.bin"), b"after").unwrap();
    run("sync", &["-f", dir.join("after.bin").to_str().unwrap()]);
    assert_files(&dir, &files);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn ctrl_c_stops_a_start_cleanly_and_waits_out_a_switch() {
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let _serial = serial();
    let mut vol = Volume::new("t-sigint", 32);
    let dir = vol.mount(Fs::Ext4);
    let files = write_files(&dir, "before");
    let before = SystemState::take();
    let vol_path = vol.path().to_str().unwrap().to_string();

    // A traced start spends its baseline measuring the origin: Ctrl-C there.
    let child = std::process::Command::new(hcp_bin())
        .args(["start", "--trace", "--baseline", "30s", "--skip-mount", &vol_path])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(2500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let sent = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("start ended {:?} after SIGINT: {stderr}", sent.elapsed());
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "ended by the signal, after its undo: {stderr}");
    assert!(stderr.contains("SIGINT during the baseline"), "{stderr}");
    // Long before the baseline's end (27.5 s after the signal). The undo
    // takes 0.2 s in a release build, seconds in a debug one (unpinning
    // the programs, on an emulated CPU).
    assert!(sent.elapsed() < Duration::from_secs(15), "stopped at once, not after the baseline: {:?}", sent.elapsed());
    assert_eq!(SystemState::take(), before, "everything undone: {stderr}");
    assert!(!Path::new("/sys/fs/bpf/hcp/links").exists(), "tracing detached");
    assert!(hcp_json(&["recover"]).as_array().unwrap().is_empty(), "nothing for recover");
    assert_files(&dir, &files);

    // A remove, hung inside its origin switch by a fault and signalled:
    // the signal waits; the guard's deadline ends the hang; what is left
    // is a half-removed session, which recover finishes.
    let started = hcp_json(&["start", "--skip-mount", &vol_path]);
    let mut child = std::process::Command::new(hcp_bin())
        .args(["remove", started["session"].as_str().unwrap()])
        .env("HCP_FAULT", "remove-after-suspend:hang")
        .env("HCP_SWITCH_TIMEOUT", "2")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1000));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "SIGTERM is held back inside the switch");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the guard ended the hang: {status}");
    assert!(!suspended("t-sigint"), "the guard resumed the origin");
    let recovered = hcp_json(&["recover"]);
    assert_eq!(recovered.as_array().unwrap().len(), 1, "{recovered}");
    assert_eq!(SystemState::take(), before, "{recovered}");
    assert_files(&dir, &files);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_write_burst_three_times_the_store_survives_with_autoextend_and_invalidates_without() {
    require_root();
    let _serial = serial();
    const MIB: u64 = 1 << 20;
    const BURST: u64 = 3 * MIB;
    // Below the headroom 80%:20% leaves in the smallest store (20% of 1 MiB).
    const PIECE: usize = 128 << 10;
    let vol = Volume::new("t-grow", 16);
    let dev = vol.path();
    let dev_s = dev.to_str().unwrap();
    write_direct(&dev, 0, 16, 0x5a);

    // With auto-extend: a 1 MiB store that may grow to 8 MiB.
    let began = std::time::Instant::now();
    let started =
        hcp_json(&["start", "--skip-mount", "--autoextend", "80%:20%", "--store-size", "1M", "-q", "8M", dev_s]);
    let id = started["session"].as_str().unwrap().to_string();
    assert_eq!((started["store_bytes"].as_u64(), started["quota_bytes"].as_u64()), (Some(MIB), Some(8 * MIB)));
    let log = PathBuf::from(started["autoextend"]["log"].as_str().expect("the monitor's log"));
    assert!(monitor_running(&id), "the monitor runs once start has returned");
    let waited = paced_burst(&dev, &id, BURST, PIECE, Some(80), Duration::from_secs(2));
    let listed = hcp_json(&["list"])["sessions"].clone();
    let entry = listed.as_array().unwrap().iter().find(|e| e["session"] == id.as_str()).unwrap().clone();
    let log_text = fs::read_to_string(&log).unwrap();
    eprintln!("burst of {BURST} bytes with auto-extend: waited {waited:?} for the monitor\n{log_text}{entry:#}");
    assert_eq!(entry["state"], "active", "{entry}");
    let size = entry["store_bytes"].as_u64().unwrap();
    assert!(size > BURST && size <= 8 * MIB, "the store grew past the burst, within the quota: {entry}");
    let store = PathBuf::from(started["store"].as_str().unwrap());
    assert_eq!(fs::metadata(&store).unwrap().len(), size, "dm-snapshot sees the whole file");
    assert_eq!(entry["autoextend"]["monitor_running"], true, "{entry}");
    let steps = log_text.lines().filter(|l| l.contains("grew the store")).count();
    assert!(steps >= 3, "{steps} growth steps:\n{log_text}");
    // The snapshot still holds the data from before the burst.
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::open(format!("/dev/{id}")).unwrap(), &mut all).unwrap();
    assert_eq!(all.len() as u64, 16 * MIB);
    assert!(all.iter().all(|b| *b == 0x5a), "the snapshot changed under the burst");
    let out = hcp(&["remove", &id]);
    assert_eq!(out.code, 0, "remove: {}{}", out.stdout, out.stderr);
    assert_session_gone(&started);
    assert!(!log.exists(), "the log of a valid session goes with it");
    eprintln!("auto-extend case: {:?}", began.elapsed());

    // Without: the same burst fills the 1 MiB store and drops the snapshot.
    let began = std::time::Instant::now();
    write_direct(&dev, 0, 16, 0x5a);
    let started = hcp_json(&["start", "--skip-mount", "--trace", "--baseline", "0", "-q", "1M", dev_s]);
    let id = started["session"].as_str().unwrap().to_string();
    assert!(started["autoextend"].is_null(), "{started}");
    paced_burst(&dev, &id, BURST, PIECE, None, Duration::ZERO);
    assert_eq!(snapshot_use(&id), None, "the snapshot is invalid");
    for args in [&["list", "--json"][..], &["stats", &id, "--json"]] {
        let out = hcp(args);
        assert_eq!(out.code, 7, "hcp {args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("invalid") && out.stderr.contains(&id), "hcp {args:?}: {}", out.stderr);
        let value: Value = serde_json::from_str(&out.stdout).unwrap();
        let value = if args[0] == "list" { value["sessions"].clone() } else { value };
        let state = match &value {
            Value::Array(entries) => entries.iter().find(|e| e["session"] == id.as_str()).unwrap()["state"].clone(),
            stats => {
                assert_matches_stats_schema(stats);
                stats["state"].clone()
            }
        };
        assert_eq!(state, "invalid", "hcp {args:?}: {value}");
    }
    // `stats --follow` prints the interval in which the snapshot ended and
    // stops there, with the same status.
    let mut follow = std::process::Command::new(hcp_bin())
        .args(["stats", &id, "--follow", "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while follow.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "stats --follow kept following an invalid session");
        thread::sleep(Duration::from_millis(50));
    }
    let out: hcp_tests::Output = follow.wait_with_output().unwrap().into();
    assert_eq!(out.code, 7, "stats --follow: {}{}", out.stdout, out.stderr);
    let lines: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert_eq!(lines[0]["state"], "invalid", "{}", out.stdout);
    // The origin works on and keeps every write.
    write_direct(&dev, 8, 1, 0x77);
    let mut origin = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::open(&dev).unwrap(), &mut origin).unwrap();
    let (burst, rest) = origin.split_at(BURST as usize);
    assert!(burst.iter().all(|b| *b == 0xa5), "the burst reached the origin");
    assert!(rest[..(5 * MIB) as usize].iter().all(|b| *b == 0x5a));
    assert!(rest[(5 * MIB) as usize..(6 * MIB) as usize].iter().all(|b| *b == 0x77), "written after the overflow");
    let out = hcp(&["remove", &id, "--json"]);
    assert_eq!(out.code, 7, "remove: {}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("invalidated because its store filled"), "{}", out.stderr);
    let removed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(removed[0]["snapshot_invalidated"], true, "{removed}");
    assert_session_gone(&started);
    eprintln!("overflow case: {:?}", began.elapsed());
}
