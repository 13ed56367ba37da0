//! A traced session's history, end to end: the recorder started with the
//! session, a workload with known phases, and the intervals read back with
//! `hcp stats --history` (in the VM, on every guest kernel).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hcp_tests::{
    assert_matches_interval_schema, assert_matches_stats_schema, hcp, hcp_bin, hcp_json, helper_running, require_root,
    serial, temp_dir, write_direct, Volume,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Writes `mib_per_s` MiB each second for `seconds`, from `offset_mib`
/// on (fresh data: every chunk is copied out once); returns the phase's
/// wall-clock span and the MiB written.
fn phase(dev: &Path, offset_mib: u64, mib_per_s: u64, seconds: u64) -> (f64, f64, u64) {
    let start = now_unix();
    let began = Instant::now();
    for s in 0..seconds {
        write_direct(dev, offset_mib + s * mib_per_s, mib_per_s, 0x40 + s as u8);
        std::thread::sleep((began + Duration::from_secs(s + 1)).saturating_duration_since(Instant::now()));
    }
    (start, now_unix(), mib_per_s * seconds)
}

/// The intervals of `session`'s history, each checked against the schema.
fn history(session: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["stats", session, "--history", "--json"];
    args.extend_from_slice(extra);
    let out = hcp(&args);
    assert_eq!(out.code, 0, "hcp {args:?}: {}{}", out.stdout, out.stderr);
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert_matches_interval_schema(&v);
            v
        })
        .collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Application bytes written per second over the intervals that lie within
/// `[from, to]` (whole intervals only), and how many there were.
fn rate_within(intervals: &[Value], from: f64, to: f64) -> (f64, usize) {
    let inside: Vec<&Value> =
        intervals.iter().filter(|iv| f(&iv["start_unix"]) >= from && f(&iv["end_unix"]) <= to).collect();
    let bytes: u64 = inside.iter().map(|iv| n(&iv["app_writes"]["bytes"])).sum();
    let secs: f64 = inside.iter().map(|iv| f(&iv["interval_seconds"])).sum();
    (if secs > 0.0 { bytes as f64 / secs } else { 0.0 }, inside.len())
}

/// `hcp stats --follow --json`, read line by line in a thread.
struct Follow {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follow {
    fn start(session: &str) -> Follow {
        let mut child = Command::new(hcp_bin())
            .args(["stats", session, "--follow", "--json", "--interval", "1s"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run hcp stats --follow");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Follow { child, lines }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn the_history_shows_each_phase_and_adds_up_to_the_totals() {
    require_root();
    let _serial = serial();
    let vol = Volume::new("t-history", 96);
    let dev = vol.path();
    let report = temp_dir("t-history-report").join("final.json");
    let started = hcp_json(&[
        "start",
        "--trace",
        "--baseline",
        "0",
        "--skip-mount",
        "-q",
        "80M",
        "--report",
        report.to_str().unwrap(),
        dev.to_str().unwrap(),
    ]);
    let id = started["session"].as_str().unwrap().to_string();
    let point_in_time = f(&started["created_unix"]);
    assert!(helper_running("__record", Some(&id)), "the recorder runs with the session");

    // A `--follow` beside the recorder, and `hcp stats` reads meanwhile:
    // neither may take anything from the history.
    let follow = Follow::start(&id);
    // Its first line comes one interval after its first read: from then on
    // it sees every write.
    let first = follow.lines.recv_timeout(Duration::from_secs(20)).expect("--follow prints within an interval");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(n(&first["app_writes"]["bytes"]), 0, "nothing written yet: {first}");
    let (light_from, light_to, light_mib) = phase(&dev, 0, 1, 7);
    let mid = hcp_json(&["stats", &id]);
    assert_matches_stats_schema(&mid);
    let (heavy_from, heavy_to, heavy_mib) = phase(&dev, 8, 8, 7);
    let idle_from = now_unix();
    std::thread::sleep(Duration::from_secs(7));
    let idle_to = now_unix();

    let stats = hcp_json(&["stats", &id]);
    assert_matches_stats_schema(&stats);
    let h = &stats["history"];
    assert_eq!(h["recorder_running"], true, "{h}");
    assert!(n(&h["intervals"]) >= 14, "one interval a second: {h}");
    let intervals = history(&id, &[]);

    // The intervals follow each other from the snapshot on, without gap.
    assert!((f(&intervals[0]["start_unix"]) - point_in_time).abs() < 0.01, "the first begins at the switch");
    for w in intervals.windows(2) {
        assert_eq!(w[0]["end_unix"], w[1]["start_unix"], "contiguous: {} then {}", w[0], w[1]);
    }

    // Each phase shows in its own intervals.
    let (light, n_light) = rate_within(&intervals, light_from + 1.0, light_to);
    let (heavy, n_heavy) = rate_within(&intervals, heavy_from + 1.0, heavy_to);
    let (idle, n_idle) = rate_within(&intervals, idle_from + 1.0, idle_to);
    eprintln!("light {light:.0} B/s ({n_light}), heavy {heavy:.0} B/s ({n_heavy}), idle {idle} ({n_idle})");
    assert!(n_light >= 2 && n_heavy >= 2 && n_idle >= 2, "intervals in each phase: {n_light} {n_heavy} {n_idle}");
    assert!((0.4 * MIB as f64..=2.5 * MIB as f64).contains(&light), "light phase: {light} B/s");
    assert!((3.0 * MIB as f64..=20.0 * MIB as f64).contains(&heavy), "heavy phase: {heavy} B/s");
    assert_eq!(idle, 0.0, "nothing written in the idle phase");
    let busiest = intervals.iter().max_by_key(|iv| n(&iv["app_writes"]["bytes"])).unwrap();
    assert!(
        f(&busiest["start_unix"]) >= heavy_from - 1.0 && f(&busiest["end_unix"]) <= heavy_to + 1.0,
        "the busiest interval is in the heavy phase: {busiest}"
    );
    let copied_in = |from: f64, to: f64| -> u64 {
        intervals
            .iter()
            .filter(|iv| f(&iv["start_unix"]) >= from && f(&iv["end_unix"]) <= to)
            .map(|iv| n(&iv["copy_out"]["read_bytes"]))
            .sum()
    };
    assert_eq!(copied_in(idle_from + 1.0, idle_to), 0, "no copy-out when nothing is written");
    assert!(copied_in(heavy_from, heavy_to + 1.0) > 0, "copy-out in the heavy phase");

    // The intervals add up to the session's totals: nothing lost or counted
    // twice across the reads beside them (the last ones were idle, so the
    // history is complete up to this read).
    let sum = |path: &[&str]| -> u64 { intervals.iter().map(|iv| n(path.iter().fold(iv, |v, k| &v[*k]))).sum() };
    for path in [
        &["app_writes", "count"][..],
        &["app_writes", "bytes"],
        &["app_reads", "bytes"],
        &["copy_out", "read_bytes"],
        &["copy_out", "chunk_copies"],
        &["copy_out", "store_data_bytes"],
        &["copy_out", "store_metadata_writes"],
    ] {
        let total = n(path.iter().fold(&stats, |v, k| &v[*k]));
        assert_eq!(sum(path), total, "{path:?}: the intervals add up to the total");
    }
    assert_eq!(n(&stats["app_writes"]["bytes"]), (light_mib + heavy_mib) * MIB, "every write counted");
    let latency_samples: u64 = intervals.iter().filter_map(|iv| iv["app_writes"]["latency"]["count"].as_u64()).sum();
    assert_eq!(latency_samples, n(&stats["app_writes"]["latency"]["count"]), "every latency sample in an interval");
    let last = intervals.last().unwrap();
    assert_eq!(last["store_used_bytes"], stats["store"]["used_bytes"], "the store as it is now");

    // --follow's lines, on a fixed schedule, sum to what it saw: its own
    // window of the same totals.
    let follow_lines: Vec<Value> = follow.lines.try_iter().map(|l| serde_json::from_str(&l).unwrap()).collect();
    drop(follow);
    assert!(follow_lines.len() >= 10, "one line a second: {}", follow_lines.len());
    let followed: u64 = follow_lines.iter().map(|l| n(&l["app_writes"]["bytes"])).sum();
    assert_eq!(followed, (light_mib + heavy_mib) * MIB, "--follow saw every write once");

    // --since / --until select a part.
    let part = history(&id, &["--since", &format!("{heavy_from}"), "--until", &format!("{heavy_to}")]);
    assert!(!part.is_empty() && part.len() < intervals.len(), "{} of {}", part.len(), intervals.len());
    assert!(part.iter().all(|iv| f(&iv["end_unix"]) > heavy_from && f(&iv["start_unix"]) < heavy_to));
    let text = hcp(&["stats", &id, "--history"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("writes/s") && text.stdout.lines().count() >= intervals.len(), "{}", text.stdout);

    // The analysis rests on the same figures: the store a window needs is
    // the rate measured times the window.
    let sized = hcp_json(&["stats", &id, "--window", "1h"]);
    assert_matches_stats_schema(&sized);
    let a = &sized["analysis"];
    let mean = f(&a["store"]["mean_bytes_per_s"]);
    let (first_start, last) = (f(&intervals[0]["start_unix"]), sized_last_used(&id));
    assert!(mean > 0.0 && (mean - last.1 / (last.0 - first_start)).abs() <= 0.1 * mean, "mean rate {mean}: {a}");
    assert_eq!(n(&a["store"]["window"]["needed_bytes_at_mean_rate"]), (mean * 3600.0) as u64, "{a}");
    assert!(
        n(&a["store"]["window"]["needed_bytes_at_peak_rate"]) >= n(&a["store"]["window"]["needed_bytes_at_mean_rate"])
    );
    assert!(f(&a["copy_out"]["peak_mib_per_s"]) >= 3.0, "the heavy phase's copy-out: {}", a["copy_out"]);
    for q in ["write_latency", "switch", "store"] {
        assert!(a["verdicts"][q].as_str().is_some_and(|v| v.len() > 20), "{q}: {a}");
    }
    assert!(a["verdicts"]["store"].as_str().unwrap().contains("a window of 1h needs"), "{a}");

    // The report to look at, of the live session: every plot drawn.
    let live_html = temp_dir("t-history-live").join("live.html");
    let written = hcp_json(&["report", &id, "-o", live_html.to_str().unwrap()]);
    assert_eq!(written["report"], live_html.to_str().unwrap(), "{written}");
    let html = std::fs::read_to_string(&live_html).unwrap();
    assert_eq!(html.matches("<svg").count(), 5, "five plots");
    assert!(html.contains(a["verdicts"]["switch"].as_str().unwrap().split(" (").next().unwrap()), "the verdicts");

    // Removal stops the recorder after its last interval, keeps the history
    // beside the final report, and leaves nothing of it behind.
    let removed = hcp_json(&["remove", &id]);
    assert_eq!(removed[0]["report"], report.to_str().unwrap(), "{removed}");
    let copy = std::fs::read_to_string(format!("{}.history.ndjson", report.display())).expect("history beside report");
    assert!(copy.lines().count() > intervals.len(), "header and every interval: {copy}");
    assert!(!helper_running("__record", Some(&id)), "the recorder stopped");
    // The final report's HTML beside it, and the same drawn again from the
    // files alone (`hcp report FILE.json`).
    let final_html = report.with_extension("html");
    let html = std::fs::read_to_string(&final_html).expect("the HTML report beside the final report");
    assert_eq!(html.matches("<svg").count(), 5, "five plots");
    let again = temp_dir("t-history-again").join("again.html");
    hcp_json(&["report", report.to_str().unwrap(), "-o", again.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&again).unwrap().matches("<svg").count(), 5);
    // For the host to render in Chromium after the VM tests (`cargo xtask
    // test`): a report of a real session.
    if let Ok(out) = std::env::var("HCP_VM_OUT") {
        std::fs::copy(&final_html, Path::new(&out).join("report.html")).unwrap();
    }
    assert!(!Path::new(&format!("/var/lib/hcp/history/{id}.ndjson")).exists(), "the live history is gone");
    assert!(!Path::new(&format!("/run/hcp/recorder/{id}.log")).exists(), "and the recorder's log");
}

/// The end and store use of the last interval recorded.
fn sized_last_used(session: &str) -> (f64, f64) {
    let last = history(session, &[]).pop().expect("an interval");
    (f(&last["end_unix"]), n(&last["store_used_bytes"]) as f64)
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn the_time_to_full_foretells_when_the_store_fills() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    require_root();
    let _serial = serial();
    let vol = Volume::new("t-fill", 96);
    let dev = vol.path();
    let started =
        hcp_json(&["start", "--trace", "--baseline", "0", "--skip-mount", "-q", "40M", dev.to_str().unwrap()]);
    let id = started["session"].as_str().unwrap().to_string();

    // A steady writer of fresh data, 2 MiB/s, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, dev) = (stop.clone(), dev.clone());
        std::thread::spawn(move || {
            let began = Instant::now();
            for i in 0..90u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                write_direct(&dev, i, 1, 0x70);
                std::thread::sleep(
                    (began + Duration::from_millis(500 * (i + 1))).saturating_duration_since(Instant::now()),
                );
            }
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    let asked = now_unix();
    let s = hcp_json(&["stats", &id]);
    let store = &s["analysis"]["store"];
    let predicted = f(&store["full_at_unix"]);
    eprintln!("at {asked:.1}: {store}");
    // Then wait for dm-snapshot to drop the snapshot.
    let filled = loop {
        let list = hcp(&["list", "--json"]);
        let v: Value = serde_json::from_str(&list.stdout).unwrap();
        if v["sessions"].as_array().unwrap().iter().any(|e| e["session"] == id.as_str() && e["state"] == "invalid") {
            break now_unix();
        }
        assert!(now_unix() - asked < 120.0, "the store never filled");
        std::thread::sleep(Duration::from_millis(250));
    };
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let (foretold, actual) = (predicted - asked, filled - asked);
    eprintln!("time to full: foretold {foretold:.1} s, filled after {actual:.1} s");
    assert!((foretold - actual).abs() <= 0.25 * actual, "foretold {foretold:.1} s, filled after {actual:.1} s");
    let out = hcp(&["remove", &id]);
    assert_eq!(out.code, 7, "an invalid session is removed with status 7: {}", out.stderr);
}
