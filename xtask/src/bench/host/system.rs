//! Loop devices over files in /dev/shm, and the kernel's figures in /proc and
//! /sys: completed I/Os, CPU time, the release; and the tools' versions.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// Size of each loop device's backing file in /dev/shm.
pub(super) const LOOP_BYTES: u64 = 256 << 20;

/// A device number as `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DevId {
    pub(super) major: u32,
    pub(super) minor: u32,
}

impl DevId {
    fn parse(text: &str) -> Result<DevId> {
        let (major, minor) = text.trim().split_once(':').with_context(|| format!("`{text}` is not major:minor"))?;
        Ok(DevId { major: major.parse()?, minor: minor.parse()? })
    }

    /// The kernel-internal `dev_t` that tracepoints record.
    pub(super) fn kernel(self) -> u32 {
        (self.major << 20) | self.minor
    }
}

impl std::fmt::Display for DevId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A loop device over a file in /dev/shm, filled so that no write of a run
/// allocates memory; detached and deleted on drop.
pub(super) struct LoopDevice {
    pub(super) path: PathBuf,
    pub(super) id: DevId,
    backing: PathBuf,
}

impl LoopDevice {
    pub(super) fn new(n: usize) -> Result<LoopDevice> {
        let backing = PathBuf::from(format!("/dev/shm/hcp-bench-{}-{n}.img", std::process::id()));
        let mut file = File::create(&backing).with_context(|| format!("creating {}", backing.display()))?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..LOOP_BYTES / chunk.len() as u64 {
            file.write_all(&chunk)?;
        }
        drop(file);
        let out = Command::new("losetup").args(["--find", "--show"]).arg(&backing).output().context("losetup")?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&backing);
            bail!("losetup --find --show failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let mut device = LoopDevice { path, id: DevId { major: 0, minor: 0 }, backing };
        device.id = DevId::parse(&std::fs::read_to_string(device.sys().join("dev"))?)?;
        Ok(device)
    }

    fn sys(&self) -> PathBuf {
        Path::new("/sys/block").join(self.path.file_name().unwrap_or_default())
    }

    /// Reads and writes the kernel has completed on the device so far.
    pub(super) fn completed_ios(&self) -> Result<u64> {
        let path = self.sys().join("stat");
        parse_block_stat(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// Completed reads + writes + discards from a /sys/block/*/stat line
/// (Documentation/block/stat.rst: fields 1, 5 and 12).
fn parse_block_stat(text: &str) -> Result<u64> {
    let fields: Vec<u64> =
        text.split_whitespace().map(str::parse::<u64>).collect::<Result<_, _>>().context("a block stat field")?;
    ensure!(fields.len() >= 11, "a block stat line has at least 11 fields: `{}`", text.trim());
    Ok(fields[0] + fields[4] + fields.get(11).copied().unwrap_or(0))
}

/// CPU time of all CPUs, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CpuTimes {
    pub(super) busy: u64,
    pub(super) total: u64,
}

impl CpuTimes {
    pub(super) fn now() -> Result<CpuTimes> {
        parse_proc_stat(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
    }
}

/// The `cpu` line of /proc/stat: busy = user + nice + system + irq +
/// softirq + steal (guest time is already in user); total adds idle and
/// iowait.
fn parse_proc_stat(text: &str) -> Result<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .context("a /proc/stat field")?;
    ensure!(v.len() >= 8, "the cpu line of /proc/stat has at least 8 fields: `{line}`");
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok(CpuTimes { busy, total: busy + v[3] + v[4] })
}

pub(super) fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

pub(super) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |s| format!("Linux {}", s.trim()))
}

pub(super) fn tool_version(tool: &str) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| format!("{tool} ?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_and_total() {
        let text = "cpu  100 5 50 1000 20 3 7 2 9 0\ncpu0 50 2 25 500 10 1 3 1 4 0\nintr 12345\n";
        assert_eq!(parse_proc_stat(text).unwrap(), CpuTimes { busy: 167, total: 1187 });
        assert!(parse_proc_stat("cpu0 1 2 3\n").is_err(), "the aggregate line is required");
        assert!(parse_proc_stat("cpu  1 2 3\n").is_err(), "too few fields");
    }

    #[test]
    fn block_stat_completed_ios() {
        // reads, merges, sectors, ticks; writes ...; in flight, io ticks,
        // queue time; discards ...; flushes ... (kernel 5.5+: 17 fields).
        let text = "    1200        3    9600      50   345678        0  2765424    9000        0    4000    9050      7        0       56        1        0        0\n";
        assert_eq!(parse_block_stat(text).unwrap(), 1200 + 345678 + 7);
        // Kernels before 4.18 print 11 fields.
        assert_eq!(parse_block_stat("1 0 8 0 2 0 16 0 0 0 0").unwrap(), 3);
        assert!(parse_block_stat("1 2 3").is_err());
    }

    #[test]
    fn device_numbers() {
        let id = DevId::parse("7:3\n").unwrap();
        assert_eq!((id.to_string(), id.kernel()), ("7:3".to_string(), (7 << 20) | 3));
        assert!(DevId::parse("7").is_err());
    }
}
