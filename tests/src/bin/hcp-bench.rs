//! The in-guest half of `cargo xtask bench`: measures hcp against LVM and
//! against a bare suspend/resume on a scratch virtio disk, and writes every
//! run it took as one JSON document. The host turns that into the report
//! (medians, ratios per pair, targets); this side only measures.
//!
//! Runs as root inside the test VM (device-mapper, no udev), with the host's
//! userland: `hcp` beside this binary, `lvm`, `fio`, `mkfs.ext4`.
//!
//! ```text
//! hcp-bench --disk /dev/vda --out FILE [--parts switch,dirty,write,commands,merge,export]
//!           [--reps 7] [--dirty-mib 0,32,128] [--write-reps 3] [--write-mib 8]
//!           [--chunks 4K,16K,64K]
//!           [--command-reps 5] [--sessions 16] [--merge-reps 3] [--merge-mib 16]
//!           [--export-reps 3] [--export-mib 16]
//! ```
//!
//! The disk becomes an LVM volume group `bench` with an ext4 volume
//! `bench/origin` (mounted, the origin every part snapshots) and
//! `bench/hcpstore`, the block device hcp keeps its changed blocks on: so
//! hcp's and LVM's copy-on-write stores live on the same disk.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hcp::kernel::dm::device::{Dm, Suspend};
use serde_json::{json, Value};

/// LVM without udev: neither wait for it nor expect its rules to make nodes.
const LVM_CONFIG: &str = "activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0}";
const VG: &str = "bench";
/// The origin's dm name (LVM's `<vg>-<lv>`).
const ORIGIN_DM: &str = "bench-origin";
const ORIGIN_MIB: u64 = 256;
/// hcp's store and LVM's snapshot get the same room.
const STORE_MIB: u64 = 160;
const MOUNT: &str = "/mnt/bench-origin";
/// The file fio writes to: laid out before any snapshot, so that every
/// case overwrites allocated blocks.
const FIO_FILE_MIB: u64 = 64;
/// The steady writer of part 1 cycles over this many 4 KiB blocks.
const WRITER_BLOCKS: u64 = 256;
/// Quiet time before and after each command, with the writer running.
const SETTLE: Duration = Duration::from_millis(300);

struct Args {
    disk: PathBuf,
    out: PathBuf,
    parts: Vec<String>,
    reps: usize,
    write_reps: usize,
    write_mib: u64,
    chunks: Vec<String>,
    /// The dirty part: MiB left dirty before each command (0: clean).
    dirty_mib: Vec<u64>,
    command_reps: usize,
    sessions: usize,
    merge_reps: usize,
    /// The merge part: MiB of scattered 4 KiB blocks rewritten under the
    /// snapshot before each merge.
    merge_mib: u64,
    export_reps: usize,
    /// The export part: MiB of scattered 4 KiB blocks changed between the
    /// two sessions of the incremental.
    export_mib: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        disk: PathBuf::from("/dev/vda"),
        out: PathBuf::new(),
        parts: vec![
            "switch".into(),
            "dirty".into(),
            "write".into(),
            "commands".into(),
            "merge".into(),
            "export".into(),
        ],
        reps: 7,
        write_reps: 3,
        write_mib: 8,
        chunks: vec!["4K".into(), "16K".into(), "64K".into()],
        dirty_mib: vec![0, 32, 128],
        command_reps: 5,
        sessions: 16,
        merge_reps: 3,
        merge_mib: 16,
        export_reps: 3,
        export_mib: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let list = || value.split(',').map(str::to_string).collect::<Vec<_>>();
        match flag.as_str() {
            "--disk" => a.disk = PathBuf::from(&value),
            "--out" => a.out = PathBuf::from(&value),
            "--parts" => a.parts = list(),
            "--reps" => a.reps = value.parse()?,
            "--write-reps" => a.write_reps = value.parse()?,
            "--write-mib" => a.write_mib = value.parse()?,
            "--chunks" => a.chunks = list(),
            "--dirty-mib" => a.dirty_mib = list().iter().map(|m| m.parse()).collect::<Result<_, _>>()?,
            "--command-reps" => a.command_reps = value.parse()?,
            "--sessions" => a.sessions = value.parse()?,
            "--merge-reps" => a.merge_reps = value.parse()?,
            "--merge-mib" => a.merge_mib = value.parse()?,
            "--export-reps" => a.export_reps = value.parse()?,
            "--export-mib" => a.export_mib = value.parse()?,
            _ => bail!("unknown option {flag}"),
        }
    }
    ensure!(!a.out.as_os_str().is_empty(), "--out FILE is required");
    ensure!(
        a.sessions >= 1 && a.reps >= 1 && a.write_reps >= 1 && a.command_reps >= 1 && a.merge_reps >= 1,
        "counts must be at least 1"
    );
    ensure!(a.merge_mib >= 1 && a.merge_mib <= ORIGIN_MIB / 2, "--merge-mib: from 1 to half the origin");
    ensure!(a.export_mib >= 1 && a.export_mib <= FIO_FILE_MIB / 2, "--export-mib: from 1 to half fio's file");
    ensure!(a.export_reps >= 1, "counts must be at least 1");
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hcp-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string();
    setup(&args.disk)?;
    let mut doc = json!({ "kernel": kernel });
    for part in &args.parts {
        let part_started = Instant::now();
        say(&format!("part {part}"));
        let result = match part.as_str() {
            "switch" => switch_cost(args.reps),
            "write" => write_cost(args.write_reps, args.write_mib, &args.chunks),
            "dirty" => dirty_cost(args.reps, &args.dirty_mib),
            "commands" => command_latency(args.command_reps, args.sessions),
            "merge" => merge_speed(args.merge_reps, args.merge_mib),
            "export" => export_speed(args.export_reps, args.export_mib),
            _ => bail!("unknown part {part}: switch, dirty, write, commands, merge or export"),
        };
        // Whatever a failed part left must not disturb the next one.
        cleanup();
        let value = result.with_context(|| format!("part {part}"))?;
        doc[part] = value;
        doc[part]["seconds"] = json!(part_started.elapsed().as_secs_f64());
    }
    doc["seconds"] = json!(started.elapsed().as_secs_f64());
    fs::write(&args.out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    say(&format!("done in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

fn say(what: &str) {
    eprintln!("hcp-bench: {what}");
}

// ---------------------------------------------------------------- set-up

fn lvm(args: &[&str]) -> Result<String> {
    let (sub, rest) = args.split_first().expect("an lvm command");
    let out = Command::new("/usr/sbin/lvm")
        .arg(sub)
        .args(["--config", LVM_CONFIG])
        .args(rest)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .context("running lvm (apt-get install lvm2)")?;
    ensure!(out.status.success(), "lvm {} failed ({}): {}", args.join(" "), out.status, stderr(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    ensure!(out.status.success(), "{cmd} {} failed ({}): {}", args.join(" "), out.status, stderr(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")
}

/// The volume group, the origin with ext4 mounted, hcp's store, and the
/// file fio writes to.
fn setup(disk: &Path) -> Result<()> {
    // The host's disk image is sparse: a first write to a block costs the
    // host an allocation, later ones do not. Touch every block the volumes
    // will use, so that no case pays for being first.
    let touched = (ORIGIN_MIB + 2 * STORE_MIB + 64) << 20;
    fill(disk, touched).with_context(|| format!("writing {}", disk.display()))?;
    let disk = disk.to_str().context("disk path")?;
    lvm(&["pvcreate", "-q", "-y", disk])?;
    lvm(&["vgcreate", "-q", VG, disk])?;
    lvm(&["lvcreate", "-q", "-y", "-n", "origin", "-L", &format!("{ORIGIN_MIB}M"), VG])?;
    lvm(&["lvcreate", "-q", "-y", "-n", "hcpstore", "-L", &format!("{STORE_MIB}M"), VG])?;
    // Inode tables and journal written now: a lazy init thread would write
    // to the origin in the background, in the middle of the measurements.
    sh("/usr/sbin/mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &origin_path()])?;
    fs::create_dir_all(MOUNT)?;
    sh("/usr/bin/mount", &[&origin_path(), MOUNT])?;
    fill(&Path::new(MOUNT).join("fio.dat"), FIO_FILE_MIB << 20)?;
    Ok(())
}

fn origin_path() -> String {
    format!("/dev/{VG}/origin")
}

fn store_path() -> String {
    format!("/dev/{VG}/hcpstore")
}

/// Writes `bytes` of non-zero data to a file (made if missing) or a block
/// device, and syncs it.
fn fill(path: &Path, bytes: u64) -> Result<()> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let block = vec![0x5au8; 1 << 20];
    for off in (0..bytes).step_by(block.len()) {
        f.write_all_at(&block, off)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Removes any hcp session of the origin and LVM snapshot (best effort).
fn cleanup() {
    let _ = Command::new(hcp_bin()).args(["remove", &origin_path()]).output();
    let _ = lvm(&["lvremove", "-f", "-q", &format!("{VG}/snap")]);
}

fn hcp_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("hcp")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("hcp"))
}

/// Runs hcp with `--json`; returns its output and the command's wall time.
fn hcp_json(args: &[&str]) -> Result<(Value, Duration)> {
    let t = Instant::now();
    let out = Command::new(hcp_bin()).args(args).arg("--json").output().context("running hcp")?;
    let wall = t.elapsed();
    ensure!(out.status.success(), "hcp {} failed ({}): {}", args.join(" "), out.status, stderr(&out));
    let v = serde_json::from_slice(&out.stdout).with_context(|| format!("hcp {} printed no JSON", args.join(" ")))?;
    Ok((v, wall))
}

/// Runs an lvm command; returns its wall time.
fn timed_lvm(args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    lvm(args)?;
    Ok(t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn secs_to_ms(v: &Value) -> Value {
    v.as_f64().map_or(Value::Null, |s| json!(s * 1e3))
}

// ---------------------------------------------------------------- part 1

/// A steady writer on the mounted origin: 4 KiB pwrite + fdatasync in a
/// loop over a preallocated file, the completion time of every write kept.
struct Writer {
    base: Instant,
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<u64>>>,
    handle: Option<thread::JoinHandle<Result<()>>>,
}

impl Writer {
    fn start(path: &Path) -> Result<Writer> {
        fill(path, WRITER_BLOCKS * 4096)?;
        let file = OpenOptions::new().write(true).open(path)?;
        let base = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::with_capacity(1 << 18)));
        let (s, d) = (stop.clone(), done.clone());
        let handle = thread::spawn(move || -> Result<()> {
            let block = [0xa5u8; 4096];
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                file.write_all_at(&block, (i % WRITER_BLOCKS) * 4096)?;
                file.sync_data()?;
                let t = base.elapsed().as_nanos() as u64;
                d.lock().expect("writer log").push(t);
                i += 1;
            }
            Ok(())
        });
        Ok(Writer { base, stop, done, handle: Some(handle) })
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The longest gap between completed writes that overlaps `from..to`,
    /// once a write has completed after `to`.
    fn longest_gap(&self, from: u64, to: u64) -> Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let done = self.done.lock().expect("writer log");
                if done.last().is_some_and(|&t| t > to) {
                    let gap = longest_gap(&done, from, to).context("no writes around the command")?;
                    return Ok(Duration::from_nanos(gap));
                }
            }
            ensure!(Instant::now() < deadline, "the writer completed no write for 60 s after the command");
            ensure!(!self.handle.as_ref().is_some_and(|h| h.is_finished()), "the writer stopped");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("writer thread")?;
        let n = self.done.lock().expect("writer log").len() as u64;
        Ok(n)
    }
}

/// The longest `t[i] - t[i-1]` among the gaps that overlap `from..to`
/// (completion times in ascending order).
fn longest_gap(times: &[u64], from: u64, to: u64) -> Option<u64> {
    times.windows(2).filter(|w| w[1] > from && w[0] < to).map(|w| w[1] - w[0]).max()
}

/// One timed command with the writer running: the stall it caused, and the
/// longest gap just before it (the writer undisturbed).
fn under_writer<T>(writer: &Writer, f: impl FnOnce() -> Result<T>) -> Result<(T, f64, f64)> {
    thread::sleep(SETTLE);
    let from = writer.now();
    let value = f()?;
    let to = writer.now();
    thread::sleep(SETTLE);
    let stall = writer.longest_gap(from, to)?;
    let idle = writer.longest_gap(from.saturating_sub(SETTLE.as_nanos() as u64), from.saturating_sub(1))?;
    Ok((value, ms(stall), ms(idle)))
}

fn switch_cost(reps: usize) -> Result<Value> {
    let writer = Writer::start(&Path::new(MOUNT).join("writer.dat"))?;
    let result = switch_reps(&writer, reps);
    let writes = writer.stop()?;
    let mut value = result?;
    value["writes"] = json!(writes);
    Ok(value)
}

fn switch_reps(writer: &Writer, reps: usize) -> Result<Value> {
    let cases = ["hcp", "lvm", "floor"];
    let dm = Dm::open()?;
    let mut runs = Vec::new();
    let mut lvs_checked = None;
    for rep in 0..reps {
        // A then B then C, the next repetition starting one further on.
        let order: Vec<&str> = (0..cases.len()).map(|i| cases[(rep + i) % cases.len()]).collect();
        say(&format!("switch: repetition {}/{reps}: {}", rep + 1, order.join(", ")));
        let mut run = json!({ "order": order });
        for case in &order {
            run[*case] = match *case {
                "hcp" => {
                    let ((started, wall), stall, idle) = under_writer(writer, || {
                        hcp_json(&["start", "--skip-mount", "--chunk-size", "4K", "-c", &store_path(), &origin_path()])
                    })?;
                    let session = started["session"].as_str().context("start printed no session")?.to_string();
                    let ((removed, remove_wall), remove_stall, _) =
                        under_writer(writer, || hcp_json(&["remove", &session]))?;
                    let t = &started["timing"];
                    json!({
                        "start_stall_ms": stall, "idle_gap_ms": idle, "start_wall_ms": ms(wall),
                        "frozen_ms": secs_to_ms(&t["frozen_seconds"]),
                        "freeze_call_ms": secs_to_ms(&t["freeze_call_seconds"]),
                        "suspended_ms": secs_to_ms(&t["suspended_seconds"]),
                        "snapshot_ms": secs_to_ms(&t["snapshot_seconds"]),
                        "remove_stall_ms": remove_stall, "remove_wall_ms": ms(remove_wall),
                        "remove_frozen_ms": secs_to_ms(&removed[0]["frozen_seconds"]),
                        "remove_seconds_ms": secs_to_ms(&removed[0]["seconds"]),
                    })
                }
                "lvm" => {
                    let snap = format!("{VG}/snap");
                    let origin = origin_path();
                    let create: [&str; 11] =
                        ["lvcreate", "-q", "-y", "-s", "-n", "snap", "-L", "64M", "--chunksize", "4k", &origin];
                    let (wall, stall, idle) = under_writer(writer, || timed_lvm(&create))?;
                    if lvs_checked.is_none() {
                        // LVM itself must see the snapshot it made.
                        let lvs = lvm(&["lvs", "--noheadings", "-o", "lv_name,origin", VG])?;
                        let ok = lvs.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["snap", "origin"]);
                        ensure!(ok, "lvs does not show the snapshot of origin: {lvs}");
                        lvs_checked = Some(lvs.trim().to_string());
                    }
                    let (remove_wall, remove_stall, _) =
                        under_writer(writer, || timed_lvm(&["lvremove", "-q", "-f", &snap]))?;
                    json!({
                        "start_stall_ms": stall, "idle_gap_ms": idle, "start_wall_ms": ms(wall),
                        "remove_stall_ms": remove_stall, "remove_wall_ms": ms(remove_wall),
                    })
                }
                _ => {
                    // The floor: suspend (dm freezes the filesystem: lockfs)
                    // and resume, from this one process.
                    let (window, stall, idle) = under_writer(writer, || {
                        let t = Instant::now();
                        dm.suspend(ORIGIN_DM, Suspend::Lockfs)?;
                        dm.resume(ORIGIN_DM)?;
                        Ok(t.elapsed())
                    })?;
                    json!({ "start_stall_ms": stall, "idle_gap_ms": idle, "window_ms": ms(window) })
                }
            };
        }
        runs.push(run);
    }
    Ok(json!({ "runs": runs, "lvs": lvs_checked }))
}

// ------------------------------------------------------- part 1b: dirty

/// The file the dirty part leaves dirty before each command.
const DIRTY_FILE: &str = "dirty.dat";

/// The switch with dirty page cache: part 1's writer, plus a buffered
/// writer that leaves `mib` MiB dirty on the origin just before each
/// command. Cases: hcp start, lvcreate, the floor, and `syncfs` alone (the
/// writeback's own cost to the writer, nothing frozen).
fn dirty_cost(reps: usize, dirty_mib: &[u64]) -> Result<Value> {
    let writer = Writer::start(&Path::new(MOUNT).join("writer.dat"))?;
    let result = dirty_reps(&writer, reps, dirty_mib);
    let writes = writer.stop()?;
    let _ = fs::remove_file(Path::new(MOUNT).join(DIRTY_FILE));
    let mut value = result?;
    value["writes"] = json!(writes);
    Ok(value)
}

fn dirty_reps(writer: &Writer, reps: usize, dirty_mib: &[u64]) -> Result<Value> {
    let cases = ["hcp", "lvm", "floor", "syncfs"];
    let dm = Dm::open()?;
    let dirty_path = Path::new(MOUNT).join(DIRTY_FILE);
    // Laid out (and synced) once: each command then finds the same blocks
    // rewritten, dirty, and no allocation to make.
    fill(&dirty_path, dirty_mib.iter().copied().max().unwrap_or(0) << 20)?;
    let mut runs = Vec::new();
    for rep in 0..reps {
        let mut run = json!({});
        for k in 0..dirty_mib.len() {
            // Both orders rotate: the amounts, and the cases within each.
            let mib = dirty_mib[(rep + k) % dirty_mib.len()];
            let order: Vec<&str> = (0..cases.len()).map(|i| cases[(rep + k + i) % cases.len()]).collect();
            say(&format!("dirty: repetition {}/{reps}, {mib} MiB dirty: {}", rep + 1, order.join(", ")));
            let mut at = json!({ "order": order });
            for case in &order {
                let command = |f: &mut dyn FnMut() -> Result<Value>| dirty_command(writer, &dirty_path, mib, f);
                at[*case] = match *case {
                    "hcp" => {
                        let v = command(&mut || {
                            let args =
                                ["start", "--skip-mount", "--chunk-size", "4K", "-c", &store_path(), &origin_path()];
                            let (started, wall) = hcp_json(&args)?;
                            let t = &started["timing"];
                            Ok(json!({
                                "session": started["session"], "wall_ms": ms(wall),
                                "frozen_ms": secs_to_ms(&t["frozen_seconds"]),
                                "freeze_call_ms": secs_to_ms(&t["freeze_call_seconds"]),
                                "pre_flush": t["pre_flush"],
                            }))
                        })?;
                        hcp_json(&["remove", v["session"].as_str().context("start printed no session")?])?;
                        v
                    }
                    "lvm" => {
                        let origin = origin_path();
                        let create: [&str; 11] =
                            ["lvcreate", "-q", "-y", "-s", "-n", "snap", "-L", "64M", "--chunksize", "4k", &origin];
                        let v = command(&mut || Ok(json!({ "wall_ms": ms(timed_lvm(&create)?) })))?;
                        timed_lvm(&["lvremove", "-q", "-f", &format!("{VG}/snap")])?;
                        v
                    }
                    "floor" => command(&mut || {
                        let t = Instant::now();
                        dm.suspend(ORIGIN_DM, Suspend::Lockfs)?;
                        dm.resume(ORIGIN_DM)?;
                        Ok(json!({ "wall_ms": ms(t.elapsed()) }))
                    })?,
                    _ => command(&mut || {
                        let t = Instant::now();
                        syncfs(Path::new(MOUNT))?;
                        Ok(json!({ "wall_ms": ms(t.elapsed()) }))
                    })?,
                };
            }
            run[mib.to_string()] = at;
        }
        runs.push(run);
    }
    Ok(json!({ "runs": runs, "dirty_mib": dirty_mib }))
}

/// `f` under the writer with `mib` MiB of `path` left dirty before it
/// (then part 1's quiet time: far below the kernel's 30 s expiry, and its
/// background threshold is above 128 MiB in a 2 GiB guest, so the data
/// stays dirty). Adds the stall, the idle gap and the system's dirty bytes
/// as the command began to what `f` returns.
fn dirty_command(writer: &Writer, path: &Path, mib: u64, f: &mut dyn FnMut() -> Result<Value>) -> Result<Value> {
    dirty_file(path, mib << 20)?;
    let mut dirty_at_command = 0;
    let (mut value, stall, idle) = under_writer(writer, || {
        dirty_at_command = hcp::kernel::writeback::dirty_bytes()?;
        f()
    })?;
    value["stall_ms"] = json!(stall);
    value["idle_gap_ms"] = json!(idle);
    value["dirty_bytes_at_command"] = json!(dirty_at_command);
    Ok(value)
}

/// Rewrites the first `bytes` of `path` through the page cache and leaves
/// them dirty (no sync).
fn dirty_file(path: &Path, bytes: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    let block = vec![0x3cu8; 1 << 20];
    for off in (0..bytes).step_by(block.len()) {
        f.write_all_at(&block, off)?;
    }
    Ok(())
}

fn syncfs(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir)?;
    // SAFETY: syncfs on a descriptor we own.
    ensure!(
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } == 0,
        "syncfs: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

// ---------------------------------------------------------------- part 2

struct Workload {
    id: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: &'static str,
    /// The region written, as a multiple of `--write-mib`.
    scale: u64,
}

const WORKLOADS: [Workload; 2] = [
    Workload { id: "randwrite_4k", rw: "randwrite", bs: "4k", iodepth: "4", scale: 1 },
    Workload { id: "seqwrite_1m", rw: "write", bs: "1M", iodepth: "2", scale: 4 },
];

/// fio writes every block of the file's first `mib` MiB exactly once (a
/// random order is fio's random map with its fixed seed, the same in every
/// run), so every run under a new snapshot copies out the same chunks: the
/// same work, whose time is what differs. A time-based run would not be:
/// how much of it is spent on first writes (copied) or on rewrites (not)
/// depends on its own speed, which made single ratios range over 100×.
fn fio(w: &Workload, mib: u64) -> Result<Value> {
    let file = Path::new(MOUNT).join("fio.dat");
    let out = Command::new("/usr/bin/fio")
        .args(["--name=bench", "--direct=1", "--ioengine=libaio", "--randrepeat=1", "--output-format=json"])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={}M", mib * w.scale))
        .arg(format!("--rw={}", w.rw))
        .arg(format!("--bs={}", w.bs))
        .arg(format!("--iodepth={}", w.iodepth))
        .output()
        .context("running fio (apt-get install fio)")?;
    ensure!(out.status.success(), "fio failed ({}): {}", out.status, stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before its JSON.
    let json_start = text.find('{').context("fio printed no JSON")?;
    let v: Value = serde_json::from_str(&text[json_start..]).context("parsing fio's JSON")?;
    let wr = &v["jobs"][0]["write"];
    let written = wr["io_bytes"].as_u64().context("fio reported no bytes written")?;
    ensure!(written == (mib * w.scale) << 20, "fio wrote {written} bytes, not the {} MiB asked", mib * w.scale);
    let pct = |p: &str| wr["clat_ns"]["percentile"][p].as_f64().map_or(Value::Null, |ns| json!(ns / 1e3));
    Ok(json!({
        "iops": wr["iops"], "bw_mib_s": wr["bw_bytes"].as_f64().map(|b| b / (1u64 << 20) as f64),
        "p50_us": pct("50.000000"), "p99_us": pct("99.000000"), "ios": wr["total_ios"], "runtime_ms": wr["runtime"],
    }))
}

fn write_cost(reps: usize, mib: u64, chunks: &[String]) -> Result<Value> {
    ensure!(
        mib * WORKLOADS.iter().map(|w| w.scale).max().unwrap_or(1) <= FIO_FILE_MIB,
        "--write-mib: at most the file"
    );
    // hcp untraced against LVM (the same kernel engine, so the comparison
    // is of what each tool sets up), and hcp traced for its tracer's
    // figures and what tracing costs on top.
    let modes = ["none", "hcp", "hcp_traced", "lvm"];
    let mut runs = Vec::new();
    let mut turn = 0;
    for rep in 0..reps {
        for w in &WORKLOADS {
            for chunk in chunks {
                let order: Vec<&str> = (0..modes.len()).map(|i| modes[(turn + i) % modes.len()]).collect();
                turn += 1;
                say(&format!("write: repetition {}/{reps}: {} chunk {chunk}: {}", rep + 1, w.id, order.join(", ")));
                let mut run = json!({ "rep": rep, "workload": w.id, "chunk": chunk, "order": order });
                for mode in &order {
                    run[*mode] = write_case(mode, w, chunk, mib).with_context(|| format!("{} with {mode}", w.id))?;
                }
                runs.push(run);
            }
        }
    }
    Ok(json!({ "runs": runs, "write_mib": mib, "file_mib": FIO_FILE_MIB }))
}

fn write_case(mode: &str, w: &Workload, chunk: &str, mib: u64) -> Result<Value> {
    match mode {
        "none" => Ok(json!({ "fio": fio(w, mib)? })),
        "hcp" => {
            let (started, _) =
                hcp_json(&["start", "--skip-mount", "--chunk-size", chunk, "-c", &store_path(), &origin_path()])?;
            let session = started["session"].as_str().context("start printed no session")?.to_string();
            let fio = fio(w, mib);
            hcp_json(&["remove", &session])?;
            Ok(json!({ "fio": fio? }))
        }
        "hcp_traced" => {
            let (started, _) = hcp_json(&[
                "start",
                "--skip-mount",
                "--trace",
                "--baseline",
                "0s",
                "--chunk-size",
                chunk,
                "-c",
                &store_path(),
                &origin_path(),
            ])?;
            let session = started["session"].as_str().context("start printed no session")?.to_string();
            let fio = fio(w, mib);
            let stats = hcp_json(&["stats", &session]).map(|(s, _)| s);
            hcp_json(&["remove", &session])?;
            let (fio, stats) = (fio?, stats?);
            let lat = &stats["app_writes"]["latency"];
            let us = |k: &str| lat[k].as_f64().map_or(Value::Null, |ns| json!(ns / 1e3));
            Ok(json!({
                "fio": fio,
                "tracer": {
                    "p50_us": us("p50_ns"), "p99_us": us("p99_ns"), "count": lat["count"],
                    "write_amplification": stats["write_amplification"], "state": stats["state"],
                    "chunk_copies": stats["copy_out"]["chunk_copies"],
                },
            }))
        }
        _ => {
            let snap = format!("{VG}/snap");
            let size = format!("{STORE_MIB}M");
            lvm(&["lvcreate", "-q", "-y", "-s", "-n", "snap", "-L", &size, "--chunksize", chunk, &origin_path()])?;
            let fio = fio(w, mib);
            let used = lvm(&["lvs", "--noheadings", "-o", "snap_percent", &snap]).map(|s| s.trim().to_string());
            lvm(&["lvremove", "-q", "-f", &snap])?;
            Ok(json!({ "fio": fio?, "snap_percent": used.ok() }))
        }
    }
}

// ---------------------------------------------------------------- part 3

fn command_latency(reps: usize, sessions: usize) -> Result<Value> {
    let (starts, cold_traced_ms) = start_latency(reps)?;
    let start_one = || -> Result<String> {
        let (v, _) = hcp_json(&["start", "--skip-mount", "--trace", "--baseline", "0s", "-q", "8M", &origin_path()])?;
        Ok(v["session"].as_str().context("start printed no session")?.to_string())
    };
    let first = start_one()?;
    let mut results = Vec::new();
    let mut counts = vec![1];
    if sessions > 1 {
        counts.push(sessions);
    }
    for &count in &counts {
        while session_count()? < count {
            start_one()?;
        }
        say(&format!("commands: {count} sessions"));
        let cmds: [(&str, Vec<&str>); 3] = [
            ("version", vec!["version"]),
            ("list", vec!["list", "--json"]),
            ("stats", vec!["stats", "--json", first.as_str()]),
        ];
        for rep in 0..reps {
            let mut run = json!({ "sessions": count, "rep": rep });
            for i in 0..cmds.len() {
                let (name, args) = &cmds[(rep + i) % cmds.len()];
                let t = Instant::now();
                let out = Command::new(hcp_bin()).args(args).output()?;
                let wall = t.elapsed();
                ensure!(out.status.success(), "hcp {} failed ({}): {}", args.join(" "), out.status, stderr(&out));
                run[*name] = json!(ms(wall));
            }
            results.push(run);
        }
    }
    hcp_json(&["remove", &origin_path()])?;
    Ok(json!({ "runs": results, "starts": starts, "cold_traced_ms": cold_traced_ms }))
}

/// `hcp start` plain and with `--trace --baseline 0s`, `reps` pairs (the
/// order alternating). The traced side is three starts: one that loads the
/// programs (`hcp trace unload` just before), its session removed; one
/// with the programs loaded and detached, as every traced start after the
/// first of a boot; and a second traced session beside it (the programs
/// attached already). Every session is removed before the next pair. The
/// figure is the start's own `timing.snapshot_seconds`: from its beginning
/// until the snapshot was live. First one traced start with nothing kept
/// (no kernel layout, nothing loaded: as after a boot), not a pair.
fn start_latency(reps: usize) -> Result<(Vec<Value>, Value)> {
    let origin = origin_path();
    let snapshot_ms = |traced: bool| -> Result<f64> {
        let mut args = vec!["start", "--skip-mount", "-q", "8M"];
        if traced {
            args.extend(["--trace", "--baseline", "0s"]);
        }
        args.push(&origin);
        let (v, _) = hcp_json(&args)?;
        v["timing"]["snapshot_seconds"].as_f64().map(|s| s * 1e3).context("start printed no timing.snapshot_seconds")
    };
    let remove = || hcp_json(&["remove", &origin]).map(drop);
    let unload = || hcp_json(&["trace", "unload"]).map(drop);
    unload()?;
    let _ = fs::remove_file("/run/hcp/kernel-layout");
    let cold = snapshot_ms(true)?;
    remove()?;
    let mut runs = Vec::new();
    for rep in 0..reps {
        say(&format!("commands: start, pair {}", rep + 1));
        let mut run = json!({ "rep": rep });
        for traced in if rep % 2 == 0 { [false, true] } else { [true, false] } {
            if traced {
                unload()?;
                run["traced_load"] = json!(snapshot_ms(true)?);
                remove()?;
                run["traced"] = json!(snapshot_ms(true)?);
                run["traced_second"] = json!(snapshot_ms(true)?);
            } else {
                run["plain"] = json!(snapshot_ms(false)?);
            }
            remove()?;
        }
        runs.push(run);
    }
    Ok((runs, json!(cold)))
}

// ---------------------------------------------------------------- part 3b

/// Rolling back: `hcp rollback` against `lvconvert --merge`, the same
/// kernel target under both, on the same changes. Per repetition, in
/// alternating order: a snapshot of the unmounted origin with 4 KiB chunks,
/// `mib` MiB of its 4 KiB blocks rewritten with direct I/O in a scattered
/// order (the same blocks and order every time: each becomes a chunk of its
/// own, merged one by one), then the command. The origin's status is read
/// every 20 ms, for when the kernel reported the merge done; the command's
/// wall time includes the rest (hcp: its checks and the end of the
/// session; LVM: its polling, every second). Every merge is checked: the
/// origin's sha256 afterwards must be its sha256 at the snapshot.
fn merge_speed(reps: usize, mib: u64) -> Result<Value> {
    // `lvconvert --merge` of an open origin only schedules the merge for
    // its next activation, and hcp refuses a mounted origin without --now.
    sh("/usr/bin/umount", &[MOUNT])?;
    let result = merge_reps(reps, mib);
    sh("/usr/bin/mount", &[&origin_path(), MOUNT])?;
    result
}

fn merge_reps(reps: usize, mib: u64) -> Result<Value> {
    let mut runs = Vec::new();
    for rep in 0..reps {
        let order = if rep % 2 == 0 { ["hcp", "lvm"] } else { ["lvm", "hcp"] };
        say(&format!("merge: repetition {}/{reps}: {}", rep + 1, order.join(", ")));
        let mut run = json!({ "rep": rep, "order": order });
        for mode in order {
            run[mode] = merge_case(mode, mib).with_context(|| format!("the {mode} merge"))?;
        }
        runs.push(run);
    }
    Ok(json!({ "runs": runs, "merge_mib": mib, "chunk": "4K" }))
}

fn merge_case(mode: &str, mib: u64) -> Result<Value> {
    let origin = origin_path();
    let sha = || -> Result<String> {
        let out = sh("/usr/bin/sha256sum", &[&origin])?;
        Ok(out.split_whitespace().next().context("sha256sum printed nothing")?.to_string())
    };
    let at_snapshot = sha()?;
    let mut cmd = if mode == "hcp" {
        let (started, _) = hcp_json(&["start", "--skip-mount", "--chunk-size", "4K", "-c", &store_path(), &origin])?;
        let session = started["session"].as_str().context("start printed no session")?.to_string();
        let mut cmd = Command::new(hcp_bin());
        cmd.args(["rollback", "--json", &session]);
        cmd
    } else {
        let size = format!("{STORE_MIB}M");
        lvm(&["lvcreate", "-q", "-y", "-s", "-n", "snap", "-L", &size, "--chunksize", "4K", &origin])?;
        let mut cmd = Command::new("/usr/sbin/lvm");
        cmd.args(["lvconvert", "--config", LVM_CONFIG, "--merge", "--interval", "1", &format!("{VG}/snap")]);
        cmd.env("LVM_SUPPRESS_FD_WARNINGS", "1");
        cmd
    };
    let blocks = scatter(Path::new(&origin), ORIGIN_MIB << 20, mib)?;
    let dm = Dm::open()?;
    let t = Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
    let mut merged = None;
    let status = loop {
        if merged.is_none() && merge_done(&dm)? {
            merged = Some(t.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let wall = t.elapsed();
    let out = child.wait_with_output()?;
    ensure!(status.success(), "{mode} failed ({status}): {}", stderr(&out));
    let merged = merged.context("the merge was never seen done")?;
    ensure!(sha()? == at_snapshot, "{mode}: the origin is not as it was at the snapshot after the merge");
    Ok(json!({ "merge_s": merged.as_secs_f64(), "wall_s": wall.as_secs_f64(), "blocks": blocks }))
}

/// Rewrites `mib` MiB of the 4 KiB blocks of the first `region` bytes of
/// `dev` (a device or a laid-out file) with direct I/O, in an order that
/// never writes two neighbours in a row; returns how many.
fn scatter(dev: &Path, region: u64, mib: u64) -> Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(dev)?;
    let mut raw = vec![0xa5u8; 8192];
    let skip = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skip..skip + 4096];
    let count = region / 4096;
    let blocks = (mib << 20) / 4096;
    for i in 0..blocks {
        // A stride coprime with the count visits distinct blocks.
        f.write_all_at(buf, (i * 7919) % count * 4096)?;
    }
    f.sync_all()?;
    Ok(blocks)
}

/// Whether the origin runs a `snapshot-merge` that has merged everything.
fn merge_done(dm: &Dm) -> Result<bool> {
    let status = dm.status(ORIGIN_DM)?;
    Ok(match status.as_slice() {
        [(target, text)] if target == "snapshot-merge" => {
            text.parse::<hcp::kernel::dm::status::SnapshotStatus>().is_ok_and(|s| s.merge_done())
        }
        _ => false,
    })
}

// ---------------------------------------------------------------- part 3c

/// Backups: a full `hcp export` of a snapshot of the (mounted, quiet)
/// origin (its store on the LV) against `dd` of the same snapshot device
/// (both reading with direct I/O, 4 MiB at a time, leaving zeros as holes,
/// into the guest's tmpfs), in alternating order; then an incremental (file
/// stores): a session, `mib` MiB
/// of fio's file rewritten in scattered 4 KiB blocks, a second session, and
/// `hcp export --changed-since`, its size against the changed chunks
/// `hcp changes` lists.
fn export_speed(reps: usize, mib: u64) -> Result<Value> {
    let image = Path::new("/tmp/bench-export.img");
    // The incremental's two sessions live at once: file stores (the LV
    // store holds one session).
    let start = |store: &[&str]| -> Result<String> {
        let mut args = vec!["start", "--skip-mount", "--chunk-size", "4K"];
        args.extend_from_slice(store);
        let origin = origin_path();
        args.push(&origin);
        let (v, _) = hcp_json(&args)?;
        Ok(v["session"].as_str().context("start printed no session")?.to_string())
    };
    let lv_store = store_path();
    let on_lv: [&str; 2] = ["-c", &lv_store];
    let in_file: [&str; 2] = ["-q", "64M"];
    let mut runs = Vec::new();
    for rep in 0..reps {
        let order = if rep % 2 == 0 { ["hcp", "dd"] } else { ["dd", "hcp"] };
        say(&format!("export: repetition {}/{reps}: {}", rep + 1, order.join(", ")));
        let id = start(&on_lv)?;
        let snapshot = format!("/dev/{id}");
        let mut run = json!({ "rep": rep, "order": order, "bytes": ORIGIN_MIB << 20 });
        for tool in order {
            let t = Instant::now();
            if tool == "hcp" {
                hcp_json(&["export", &id, "--to", image.to_str().context("path")?])?;
            } else {
                let of = format!("of={}", image.display());
                sh(
                    "/usr/bin/dd",
                    &[&format!("if={snapshot}"), &of, "bs=4M", "iflag=direct", "conv=sparse", "status=none"],
                )?;
            }
            run[tool] = json!({ "seconds": t.elapsed().as_secs_f64() });
            fs::remove_file(image)?;
        }
        hcp_json(&["remove", &id])?;
        // The incremental.
        let older = start(&in_file)?;
        scatter(&Path::new(MOUNT).join("fio.dat"), FIO_FILE_MIB << 20, mib)?;
        let newer = start(&in_file)?;
        let (changes, _) = hcp_json(&["changes", &older])?;
        let delta = Path::new("/tmp/bench-export.delta");
        let t = Instant::now();
        let (made, _) =
            hcp_json(&["export", &newer, "--changed-since", &older, "--to", delta.to_str().context("path")?])?;
        let seconds = t.elapsed().as_secs_f64();
        run["delta"] = json!({
            "seconds": seconds,
            "bytes": fs::metadata(delta)?.len(),
            "changed_bytes": changes["changed_bytes"],
            "data_bytes": made["changed_bytes"],
            "extents": changes["extents"].as_array().map(Vec::len),
        });
        fs::remove_file(delta)?;
        hcp_json(&["remove", &newer])?;
        hcp_json(&["remove", &older])?;
        runs.push(run);
    }
    Ok(json!({ "runs": runs, "export_mib": mib, "origin_mib": ORIGIN_MIB }))
}

fn session_count() -> Result<usize> {
    let (v, _) = hcp_json(&["list"])?;
    Ok(v["sessions"].as_array().map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::longest_gap;

    #[test]
    fn longest_gap_counts_gaps_overlapping_the_window() {
        let t = [0, 10, 20, 100, 110, 300, 310];
        // The 20..100 gap overlaps 50..60; 110..300 starts after it.
        assert_eq!(longest_gap(&t, 50, 60), Some(80));
        // A window spanning two gaps takes the longer.
        assert_eq!(longest_gap(&t, 90, 200), Some(190));
        // Gaps that end at or before the window's start do not count.
        assert_eq!(longest_gap(&t, 20, 25), Some(80));
        assert_eq!(longest_gap(&t, 400, 500), None);
    }
}
