//! fio, the load of the host parts: 4 KiB random writes on loop devices, its
//! JSON output summed over jobs.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::system::LoopDevice;

/// The fio load of both fio parts: 4 KiB random writes, O_DIRECT, libaio at
/// queue depth 32, one job per device.
const FIO_LOAD: &[&str] = &[
    "--ioengine=libaio",
    "--direct=1",
    "--rw=randwrite",
    "--bs=4k",
    "--iodepth=32",
    "--norandommap",
    "--randrepeat=0",
    "--time_based",
];
pub(super) const FIO_LOAD_TEXT: &str =
    "fio 4 KiB random writes, O_DIRECT, libaio at queue depth 32, one job per device";

/// What one fio run did, summed over its jobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct FioRun {
    pub(super) ios: u64,
    pub(super) iops: f64,
    /// The longest job's run time.
    pub(super) runtime_s: f64,
    /// fio's own user + system CPU time.
    pub(super) cpu_s: f64,
}

pub(super) fn fio(devices: &[LoopDevice], runtime_s: u32) -> Result<FioRun> {
    let mut cmd = Command::new("fio");
    cmd.arg("--output-format=json").args(FIO_LOAD).arg(format!("--runtime={runtime_s}s"));
    for (i, d) in devices.iter().enumerate() {
        cmd.arg(format!("--name=dev{i}")).arg(format!("--filename={}", d.path.display()));
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("running fio")?;
    ensure!(out.status.success(), "fio failed ({})", out.status);
    let run = parse_fio(&String::from_utf8_lossy(&out.stdout))?;
    ensure!(run.ios > 0, "fio did no I/O");
    Ok(run)
}

/// fio's `--output-format=json` (some versions print notes before it).
fn parse_fio(text: &str) -> Result<FioRun> {
    let start = text.find('{').context("no JSON in fio's output")?;
    let json: Value = serde_json::from_str(&text[start..]).context("parsing fio's JSON")?;
    let jobs = json["jobs"].as_array().context("no jobs in fio's JSON")?;
    ensure!(!jobs.is_empty(), "no jobs in fio's JSON");
    let mut run = FioRun { ios: 0, iops: 0.0, runtime_s: 0.0, cpu_s: 0.0 };
    for job in jobs {
        let num = |v: &Value| v.as_f64().with_context(|| format!("fio's JSON lacks a number: {v}"));
        ensure!(job["error"].as_i64() == Some(0), "fio job {} failed: error {}", job["jobname"], job["error"]);
        let runtime_s = num(&job["job_runtime"])? / 1000.0;
        for dir in ["read", "write", "trim"] {
            run.ios += job[dir]["total_ios"].as_u64().unwrap_or(0);
            run.iops += job[dir]["iops"].as_f64().unwrap_or(0.0);
        }
        run.runtime_s = run.runtime_s.max(runtime_s);
        run.cpu_s += (num(&job["usr_cpu"])? + num(&job["sys_cpu"])?) / 100.0 * runtime_s;
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_json_is_summed_over_jobs() {
        let text = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [
    { "jobname" : "dev0", "error" : 0, "job_runtime" : 10001, "usr_cpu" : 10.0, "sys_cpu" : 40.0,
      "read" : { "total_ios" : 0, "iops" : 0.0 },
      "write" : { "total_ios" : 1000000, "iops" : 99990.0 },
      "trim" : { "total_ios" : 0, "iops" : 0.0 } },
    { "jobname" : "dev1", "error" : 0, "job_runtime" : 9000, "usr_cpu" : 20.0, "sys_cpu" : 30.0,
      "read" : { "total_ios" : 10, "iops" : 1.0 },
      "write" : { "total_ios" : 500000, "iops" : 55555.5 },
      "trim" : { "total_ios" : 0, "iops" : 0.0 } }
  ]
}"#;
        let run = parse_fio(text).expect("parses");
        assert_eq!(run.ios, 1_500_010);
        assert!((run.iops - 155_546.5).abs() < 1e-6, "{run:?}");
        assert!((run.runtime_s - 10.001).abs() < 1e-9, "{run:?}");
        assert!((run.cpu_s - (0.5 * 10.001 + 0.5 * 9.0)).abs() < 1e-9, "{run:?}");
    }

    #[test]
    fn failed_or_empty_fio_runs_are_refused() {
        assert!(parse_fio("fio: no such file").is_err());
        assert!(parse_fio(r#"{"jobs": []}"#).is_err());
        let failed = r#"{"jobs": [{"jobname": "d", "error": 5, "job_runtime": 1, "usr_cpu": 0, "sys_cpu": 0}]}"#;
        assert!(parse_fio(failed).unwrap_err().to_string().contains("error 5"));
    }
}
