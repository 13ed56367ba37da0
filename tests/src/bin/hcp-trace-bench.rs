//! Benchmark driver for `cargo xtask bench` on the host, where hcp has no
//! session (no device-mapper): attaches hcp's block I/O tracer to given
//! block devices, as a traced session does, or the benchmark floor, and
//! reports what the tracer counted.
//!
//! ```text
//! hcp-trace-bench hcp DEVICE...    hcp's tracer (the pinned set under /sys/fs/bpf/hcp)
//! hcp-trace-bench floor            empty programs on the same events, same attach type
//! hcp-trace-bench history SECONDS  a session's history of SECONDS at 1 s, kept as the recorder keeps it
//! ```
//!
//! `history` prints one JSON line, its size on disk and in memory, and exits.
//!
//! Once attached it prints one JSON line, `{"ready": true}`. Then each line
//! `read` on stdin prints a JSON line of the counters so far; `stop` or the
//! end of stdin prints the last such line, detaches and exits.

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::MapInfo;
use aya::Ebpf;
use hcp::common::bio::{BioLosses, Level};
use hcp::kernel::devnum::DevNum;
use hcp::tracer::{object, pins};
use serde_json::{json, Value};

/// The floor's programs (hcp-ebpf/src/floor.rs, tp_btf) and their events:
/// those of `object::BLOCK_PROGRAMS`.
const FLOOR: [(&str, &str); 6] = [
    ("floor_bio_queue", "block_bio_queue"),
    ("floor_bio_remap", "block_bio_remap"),
    ("floor_bio_complete", "block_bio_complete"),
    ("floor_rq_requeue", "block_rq_requeue"),
    ("floor_rq_complete", "block_rq_complete"),
    ("floor_rq_issue", "block_rq_issue"),
];

fn main() {
    if let Err(e) = run() {
        eprintln!("hcp-trace-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, devices)) = args.split_first() else {
        bail!("usage: hcp-trace-bench hcp DEVICE... | hcp-trace-bench floor");
    };
    match mode.as_str() {
        "hcp" => {
            let devices = devices.iter().map(|d| DevNum::of_block_device(Path::new(d))).collect::<Result<Vec<_>>>()?;
            anyhow::ensure!(!devices.is_empty(), "name the devices to trace");
            let tracer = HcpTracer::attach(&devices)?;
            serve(|| tracer.report())
        }
        "floor" => {
            anyhow::ensure!(devices.is_empty(), "the floor traces every device; it takes no devices");
            let _floor = attach_floor()?;
            serve(|| Ok(json!({ "max_rss_kib": max_rss_kib() })))
        }
        "history" => {
            let [seconds] = devices else { bail!("usage: hcp-trace-bench history SECONDS") };
            history_model(seconds.parse().context("SECONDS")?)
        }
        other => bail!("unknown mode `{other}`: hcp, floor or history"),
    }
}

/// Says it is ready, then answers `read` lines until `stop` or the end of
/// stdin, with a last report.
fn serve(report: impl Fn() -> Result<Value>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", json!({ "ready": true }))?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "read" => {
                writeln!(out, "{}", report()?)?;
                out.flush()?;
            }
            "stop" => break,
            "" => {}
            other => bail!("unknown request `{other}`: read or stop"),
        }
    }
    writeln!(out, "{}", report()?)?;
    out.flush()?;
    Ok(())
}

/// hcp's tracer as a traced session has it: the pinned set, with the
/// devices added; removing them at the end detaches it, and it is unloaded
/// too if this run loaded it.
struct HcpTracer {
    devices: Vec<DevNum>,
    loaded_here: bool,
}

impl HcpTracer {
    fn attach(devices: &[DevNum]) -> Result<HcpTracer> {
        // Someone else's tracing (a traced session, a test) is not ours to
        // add to or to detach.
        if pins::attached() {
            bail!(
                "hcp's tracing is already attached ({}): the benchmark needs it to itself (`hcp recover` removes leftovers)",
                pins::pin_dir().display()
            );
        }
        let loaded_here = !pins::loaded();
        pins::ensure_attached(None)?;
        let tracer = HcpTracer { devices: devices.to_vec(), loaded_here };
        pins::add_devices(devices)?;
        Ok(tracer)
    }

    fn report(&self) -> Result<Value> {
        let counters = pins::read()?;
        let mut devices = serde_json::Map::new();
        for dev in &self.devices {
            let io = counters.io.get(dev).copied().unwrap_or_default();
            let samples = |level: Level| -> u64 {
                counters
                    .latency
                    .iter()
                    .filter(|(k, _)| k.dev == dev.to_kernel() && k.level == level as u8)
                    .map(|(_, h)| h.count)
                    .sum()
            };
            let losses = counters.losses.get(dev).copied().unwrap_or_default();
            devices.insert(
                dev.to_string(),
                json!({
                    "bios_queued": io.bio_queued.iter().map(|c| c.count).sum::<u64>(),
                    "requests_completed": io.rq_completed.iter().map(|c| c.count).sum::<u64>(),
                    "request_latency_samples": samples(Level::Request),
                    "bio_latency_samples": samples(Level::Bio),
                    "record_read_errors": io.read_errors,
                    "losses": losses_json(&losses),
                }),
            );
        }
        Ok(json!({
            "devices": devices,
            "in_flight": pins::in_flight_mode()?.name(),
            "unattributed_losses": losses_json(&counters.unattributed),
            "bpf": bpf_memory()?,
            "max_rss_kib": max_rss_kib(),
        }))
    }
}

impl Drop for HcpTracer {
    fn drop(&mut self) {
        if let Err(e) = pins::remove_devices(&self.devices) {
            eprintln!("hcp-trace-bench: detaching: {e:#}");
        }
        if self.loaded_here {
            if let Err(e) = pins::unload() {
                eprintln!("hcp-trace-bench: unloading: {e:#}");
            }
        }
    }
}

fn losses_json(l: &BioLosses) -> Value {
    json!({
        "inflight_full": l.inflight_full,
        "histogram_full": l.histogram_full,
        "unmatched": l.unmatched,
        "read_errors": l.read_errors,
        "completions_unseen": l.completions_unseen,
    })
}

/// The floor's programs, loaded and attached as hcp's are; they detach
/// when it drops.
fn attach_floor() -> Result<Ebpf> {
    let mut ebpf = object::load(object::Purpose::BlockIo)?;
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    for (program, event) in FLOOR {
        let prog = object::load_block_program(&mut ebpf, program, event, &btf)?;
        prog.attach().with_context(|| format!("attaching {program} to tp_btf {event}"))?;
    }
    Ok(ebpf)
}

/// The kernel memory of the pinned programs and of every map they use,
/// from the `memlock:` lines of their fdinfo (on 5.x+ kernels the memory
/// actually charged: a map not preallocated counts what it holds), and the
/// runs the kernel skipped.
fn bpf_memory() -> Result<Value> {
    let programs = pins::programs()?;
    let mut program_bytes = 0u64;
    let mut map_ids = Vec::new();
    for info in &programs {
        program_bytes += u64::from(info.memory_locked()?);
        map_ids.extend(info.map_ids()?.unwrap_or_default());
    }
    map_ids.sort_unstable();
    map_ids.dedup();
    let mut maps = Vec::new();
    for id in map_ids {
        let info = MapInfo::from_id(id)?;
        let memlock =
            pins::fdinfo_field(info.fd()?.as_fd(), "memlock")?.context("a map's fdinfo has no memlock line")?;
        maps.push(json!({ "id": id, "name": info.name_as_str().unwrap_or("?"), "memlock": memlock }));
    }
    Ok(json!({
        "programs": programs.len(),
        "program_bytes": program_bytes,
        "recursion_misses": pins::skipped_runs(&programs)?,
        "maps": maps,
    }))
}

/// This process's peak resident set so far, in KiB.
fn max_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss
}

/// The history a session of `seconds` at 1 s leaves, built by the library
/// code the recorder runs (push an interval a second, coarsen every minute)
/// from intervals shaped like a busy session's: writes, reads and snapshot
/// reads each with a latency histogram spread over a dozen buckets, and
/// copy-out and the store growing. Prints its size in the file, the
/// intervals kept, and this process's peak RSS.
fn history_model(seconds: u32) -> Result<()> {
    use hcp::state::counters::{to_record, Count};
    use hcp::state::history::{History, Interval, Timed};
    let timed = |count: u64, spread: u64| {
        let mut h = hcp::common::LatencyHist::zeroed();
        for i in 0..count {
            h.record(20_000 + (i * 7_919 % 12) * spread);
        }
        Timed { count, bytes: count * 4096, latency: to_record(&h) }
    };
    let start = 1_800_000_000.0;
    let mut history = History::new("hcp1", 1.0);
    for i in 0..seconds {
        let t = start + f64::from(i);
        history.push(Interval {
            start_unix: t,
            end_unix: t + 1.0,
            app_writes: timed(400 + u64::from(i % 97), 40_000),
            app_reads: timed(300 + u64::from(i % 89), 15_000),
            snapshot_reads: timed(50, 25_000),
            snapshot_writes: Timed::default(),
            copy_out: Count { count: 25, bytes: 25 << 16 },
            store_data_bytes: 25 << 16,
            store_metadata: Count { count: 1, bytes: 4096 },
            device_write_bytes: 3 << 20,
            device_read_bytes: 2 << 20,
            store_used_bytes: Some(u64::from(i) << 20),
            store_size_bytes: Some(1 << 40),
            lost_events: 0,
        });
        if i % 60 == 59 {
            history.coarsen(t + 1.0);
        }
    }
    history.coarsen(start + f64::from(seconds));
    let bytes = history.to_ndjson().len();
    println!("{}", json!({ "intervals": history.len(), "bytes": bytes, "max_rss_kib": max_rss_kib() }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_covers_exactly_the_tracers_events() {
        let floor: Vec<&str> = FLOOR.iter().map(|(_, e)| *e).collect();
        let hcp: Vec<&str> = object::BLOCK_PROGRAMS.iter().map(|(_, _, e)| *e).collect();
        assert_eq!(floor, hcp, "tp_btf, one program per event");
    }
}
