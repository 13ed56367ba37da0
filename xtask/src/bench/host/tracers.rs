//! The tracers a host run is measured under: hcp's, through the hcp-trace-bench
//! driver spoken to over pipes (and what its reports say), and a bpftrace child.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::system::{DevId, LoopDevice};

/// Where hcp pins its tracer: the benchmark needs it to itself.
pub(super) const PIN_DIR: &str = "/sys/fs/bpf/hcp";

pub(super) enum Tracer {
    Nothing,
    Driver(Driver),
    Bpftrace(Bpftrace),
}

/// hcp-trace-bench, spoken to line by line.
pub(super) struct Driver {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// It pins hcp's tracer: whatever it leaves there is ours to remove.
    pins: bool,
}

impl Driver {
    pub(super) fn start(bin: &Path, mode: &str, devices: &[LoopDevice]) -> Result<Driver> {
        let pins = mode == "hcp";
        ensure!(!(pins && Path::new(PIN_DIR).exists()), "{PIN_DIR} exists: someone else's tracing is attached");
        let mut child = Command::new(bin)
            .arg(mode)
            .args(devices.iter().map(|d| &d.path))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let lines = line_reader(child.stdout.take().context("no stdout")?);
        let stdin = child.stdin.take();
        let mut driver = Driver { child: Some(child), stdin, lines, pins };
        let ready = driver.next_json(Duration::from_secs(60)).context("waiting for hcp-trace-bench to attach")?;
        ensure!(ready["ready"] == true, "hcp-trace-bench said {ready}");
        Ok(driver)
    }

    pub(super) fn read(&mut self) -> Result<Value> {
        self.request("read")?;
        self.next_json(Duration::from_secs(30))
    }

    /// Its last report; it detaches and exits.
    pub(super) fn stop(mut self) -> Result<Value> {
        self.request("stop")?;
        self.stdin = None;
        let last = self.next_json(Duration::from_secs(30))?;
        let status = wait_for(self.child.as_mut().context("driver gone")?, Duration::from_secs(30))?;
        ensure!(status.success(), "hcp-trace-bench exited with {status}");
        self.child = None;
        Ok(last)
    }

    fn request(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("driver stdin closed")?;
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).context("writing to hcp-trace-bench")
    }

    fn next_json(&mut self, timeout: Duration) -> Result<Value> {
        let line = self.lines.recv_timeout(timeout).context("hcp-trace-bench said nothing (see its stderr above)")?;
        serde_json::from_str(&line).with_context(|| format!("hcp-trace-bench printed `{line}`"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A driver that died before it detached leaves the pins behind.
        if self.pins && Path::new(PIN_DIR).exists() {
            let _ = std::fs::remove_dir_all(PIN_DIR);
        }
    }
}

/// What hcp counted on one device (from a driver report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct DevCounts {
    pub(super) bios: u64,
    pub(super) requests: u64,
    /// Request latency samples: requests whose issue and completion were seen.
    pub(super) samples: u64,
    /// Every loss counter of the device.
    pub(super) lost: u64,
}

impl DevCounts {
    pub(super) fn of(report: &Value, dev: &DevId) -> Result<DevCounts> {
        let d = &report["devices"][dev.to_string()];
        ensure!(d.is_object(), "the driver reported nothing for device {dev}: {report}");
        let n = |v: &Value| v.as_u64().with_context(|| format!("not a count: {v} in {d}"));
        let losses = &d["losses"];
        Ok(DevCounts {
            bios: n(&d["bios_queued"])?,
            requests: n(&d["requests_completed"])?,
            samples: n(&d["request_latency_samples"])?,
            lost: n(&losses["inflight_full"])?
                + n(&losses["histogram_full"])?
                + n(&losses["unmatched"])?
                + n(&losses["read_errors"])?
                + n(&losses["completions_unseen"])?
                + n(&d["record_read_errors"])?,
        })
    }

    /// Whether the requests counted add up to the `kernel`'s completed ones
    /// (`/sys/block/*/stat`, reads, writes and discards: the load has no
    /// flushes) but for the losses reported, the device's and `skipped`
    /// runs of the programs: a difference no loss counter names is a hidden
    /// loss, which fails the run.
    pub(super) fn check_against(&self, kernel: u64, skipped: u64) -> Result<()> {
        let reported = self.lost + skipped;
        ensure!(
            self.requests.abs_diff(kernel) <= reported,
            "hcp counted {} requests where the kernel completed {} ({} {}), but reported only {} lost and {} skipped",
            self.requests,
            kernel,
            self.requests.abs_diff(kernel),
            if self.requests < kernel { "fewer" } else { "more" },
            self.lost,
            skipped
        );
        Ok(())
    }

    pub(super) fn since(&self, before: &DevCounts) -> DevCounts {
        DevCounts {
            bios: self.bios.saturating_sub(before.bios),
            requests: self.requests.saturating_sub(before.requests),
            samples: self.samples.saturating_sub(before.samples),
            lost: self.lost.saturating_sub(before.lost),
        }
    }
}

/// The kernel's count of skipped runs of hcp's programs so far (a kernel
/// that keeps none, before 5.12, reports null: not something the host
/// benchmark can vouch for).
pub(super) fn recursion_misses(report: &Value) -> Result<u64> {
    report["bpf"]["recursion_misses"]
        .as_u64()
        .with_context(|| format!("no recursion_misses in {}: this kernel does not count skipped runs", report["bpf"]))
}

/// How hcp's programs kept the starts of I/O in flight in the run
/// (`table`, or `hash_map` where the kernel refuses BPF atomics).
pub(super) fn in_flight_mode(report: &Value) -> Result<String> {
    report["in_flight"].as_str().map(str::to_string).with_context(|| format!("no in_flight in {report}"))
}

/// The in-flight modes of a part's traced runs, for its method: the one
/// mode, or every run's if they differ (they should not: one kernel).
pub(super) fn modes_text(modes: &[String]) -> String {
    let mut distinct = modes.to_vec();
    distinct.sort();
    distinct.dedup();
    match distinct.as_slice() {
        [] => "none ran".to_string(),
        [one] => format!("`{one}` (chosen by the kernel's verifier: `table` where BPF atomics load)"),
        _ => format!("runs differ: {}", modes.join(", ")),
    }
}

pub(super) fn unattributed_losses(report: &Value) -> Result<u64> {
    let l = &report["unattributed_losses"];
    ["inflight_full", "histogram_full", "unmatched", "read_errors", "completions_unseen"]
        .iter()
        .map(|k| l[k].as_u64().with_context(|| format!("no {k} in {l}")))
        .sum()
}

/// The BPF memory in a driver report.
pub(super) struct BpfMemory {
    pub(super) program_bytes: u64,
    /// `(name, bytes)`
    pub(super) maps: Vec<(String, u64)>,
}

impl BpfMemory {
    pub(super) fn of(report: &Value) -> Result<BpfMemory> {
        let bpf = &report["bpf"];
        let maps = bpf["maps"]
            .as_array()
            .with_context(|| format!("no maps in {bpf}"))?
            .iter()
            .map(|m| {
                Ok((
                    m["name"].as_str().unwrap_or("?").to_string(),
                    m["memlock"].as_u64().with_context(|| format!("no memlock in {m}"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BpfMemory { program_bytes: bpf["program_bytes"].as_u64().context("no program_bytes")?, maps })
    }

    pub(super) fn map_bytes(&self) -> u64 {
        self.maps.iter().map(|(_, b)| b).sum()
    }
}

/// The bpftrace baseline: biolatency in the form bpftrace users write it
/// with tracepoints (kprobes, which bpftrace's own biolatency.bt uses, are
/// not available on every kernel, this host's included): request issue to
/// completion, keyed by device and sector, a histogram per device, for the
/// traced device only. `ready` is printed once every probe is attached.
pub(super) fn bpftrace_script(kernel_dev: u32) -> String {
    format!(
        "BEGIN {{ printf(\"ready\\n\"); }}\n\
         tracepoint:block:block_rq_issue /args->dev == {kernel_dev}/ {{ @start[args->dev, args->sector] = nsecs; }}\n\
         tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/ {{\n\
         \x20 @usecs[args->dev] = hist((nsecs - @start[args->dev, args->sector]) / 1000);\n\
         \x20 delete(@start[args->dev, args->sector]);\n\
         }}\n\
         END {{ clear(@start); }}\n"
    )
}

/// bpftrace running a script; stopped with SIGINT, as a user stops it.
pub(super) struct Bpftrace {
    child: Child,
    lines: Receiver<String>,
    /// Shown only when it fails: it always warns that it could not raise
    /// RLIMIT_MEMLOCK, which these kernels do not need.
    errors: Receiver<String>,
}

impl Bpftrace {
    pub(super) fn start(script: &str) -> Result<Bpftrace> {
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bpftrace")?;
        let lines = line_reader(child.stdout.take().context("no stdout")?);
        let errors = line_reader(child.stderr.take().context("no stderr")?);
        let bpftrace = Bpftrace { child, lines, errors };
        loop {
            match bpftrace.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.trim() == "ready" => return Ok(bpftrace),
                Ok(_) => {}
                Err(_) => bail!("bpftrace did not attach in 60 s: {}", bpftrace.stderr()),
            }
        }
    }

    fn stderr(&self) -> String {
        self.errors.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Everything it printed after `ready` (its maps, at exit).
    pub(super) fn stop(mut self) -> Result<String> {
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = wait_for(&mut self.child, Duration::from_secs(30))?;
        ensure!(status.success(), "bpftrace exited with {status}: {}", self.stderr());
        // Until its output ends (the reader's channel disconnects).
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            out.push(line);
        }
        Ok(out.join("\n"))
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lines a child prints, through a channel (so reads can time out).
fn line_reader(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > until {
            let _ = child.kill();
            bail!("a child process did not exit within {} s: killed", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_reports_become_counts() {
        let report: Value = serde_json::from_str(
            r#"{"devices": {"7:0": {"bios_queued": 10, "requests_completed": 9, "request_latency_samples": 9,
                "bio_latency_samples": 0, "record_read_errors": 1,
                "losses": {"inflight_full": 2, "histogram_full": 0, "unmatched": 3, "read_errors": 0, "completions_unseen": 4}}},
                "unattributed_losses": {"inflight_full": 0, "histogram_full": 0, "unmatched": 0, "read_errors": 4, "completions_unseen": 0},
                "in_flight": "table",
                "bpf": {"programs": 7, "program_bytes": 8192, "recursion_misses": 3, "maps": [{"id": 1, "name": "IO_START", "memlock": 1000},
                {"id": 2, "name": "DEV_IO", "memlock": 24}]}, "max_rss_kib": 9000}"#,
        )
        .unwrap();
        let dev = DevId { major: 7, minor: 0 };
        let counts = DevCounts::of(&report, &dev).unwrap();
        assert_eq!(counts, DevCounts { bios: 10, requests: 9, samples: 9, lost: 10 });
        assert_eq!(counts.since(&DevCounts { bios: 4, requests: 4, samples: 3, lost: 6 }).bios, 6);
        assert_eq!(counts.since(&DevCounts { bios: 4, requests: 4, samples: 3, lost: 6 }).lost, 4);
        assert!(DevCounts::of(&report, &DevId { major: 7, minor: 1 }).is_err(), "an untraced device");
        assert_eq!(unattributed_losses(&report).unwrap(), 4);
        assert_eq!(recursion_misses(&report).unwrap(), 3);
        assert_eq!(in_flight_mode(&report).unwrap(), "table");
        let mem = BpfMemory::of(&report).unwrap();
        assert_eq!((mem.program_bytes, mem.map_bytes()), (8192, 1024));
    }

    #[test]
    fn counts_must_add_up_to_the_kernels_but_for_reported_losses() {
        let counts = DevCounts { bios: 100, requests: 90, samples: 90, lost: 4 };
        assert!(DevCounts { lost: 0, ..counts }.check_against(90, 0).is_ok(), "exact");
        assert!(counts.check_against(94, 0).is_ok(), "4 fewer, 4 lost");
        assert!(counts.check_against(96, 2).is_ok(), "6 fewer, 4 lost and 2 skipped");
        let err = counts.check_against(95, 0).unwrap_err().to_string();
        assert!(err.contains("90 requests where the kernel completed 95 (5 fewer)"), "{err}");
        assert!(err.contains("4 lost and 0 skipped"), "{err}");
        assert!(counts.check_against(85, 0).is_err(), "5 more than the kernel's is no loss either");
    }

    #[test]
    fn the_bpftrace_script_filters_the_device() {
        let script = bpftrace_script((7 << 20) | 2);
        assert!(script.contains("args->dev == 7340034"), "{script}");
        assert!(script.contains("hist("), "{script}");
    }
}
