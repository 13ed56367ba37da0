//! Tracing that outlives the command that started it: the programs' links
//! and maps are pinned in bpffs under `/sys/fs/bpf/hcp/`, shared by every
//! traced session and keyed by device.
//!
//! Why pins and not a tracer process per session: the kernel keeps a pinned
//! link attached with no process to supervise, restart or leak; any later
//! hcp command (stats, remove) opens the pinned maps. The programs are
//! loaded (and verified) once, pinned unattached under `programs/`, and
//! attached by their links under `links/` while a session is traced; later
//! sessions only add devices. The last traced session's removal unpins the
//! links, which detaches the programs (they run on nothing), and leaves
//! them loaded, so that the next traced start only attaches them: loading
//! and verifying took 200-400 ms of a traced start in the 6.x guests, an
//! attach a few. `hcp trace unload` (or a reboot) frees them.
//!
//! The switch's programs (`freeze_trace`) are loaded with them and pinned
//! unattached, with their maps, under `switch/`: each traced start attaches
//! them for its own switch only (they trace system calls, which slows every
//! process while attached), without loading or verifying them again.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData, PerCpuHashMap};
use aya::programs::{ProgramInfo, TracePoint};
use hcp_common::bio::{BioLosses, BioStart, LatKey, Level, OVERFLOW_IN_USE};
use hcp_common::{DevIoStats, IoOp, LatencyHist, RemapKey, RemapStats};

use super::layout::KernelLayout;
use super::probe::InFlightMode;
use super::{attach, block_io, io_latency, object};
use crate::kernel::devnum::DevNum;

/// Where the links and maps are pinned.
pub fn pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/hcp")
}

/// The maps user space reads or fills: the counters, and the starts in
/// flight, which an attach resets ([`reset_in_flight`]).
const MAPS: [&str; 7] = ["DEV_IO", "DEV_REMAP", "IO_LATENCY", "IO_LOSSES", "IN_FLIGHT", "IO_START", "IO_START_USE"];

/// Everything the kernel counted for the traced devices.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub io: BTreeMap<DevNum, DevIoStats>,
    /// `(to, from)`
    pub remaps: BTreeMap<(DevNum, DevNum), RemapStats>,
    pub latency: Vec<(LatKey, LatencyHist)>,
    pub losses: BTreeMap<DevNum, BioLosses>,
    /// Losses no device could be named for.
    pub unattributed: BioLosses,
    /// Runs of the programs the kernel skipped, each an event neither
    /// counted nor timed: the kernel does not run a program on a CPU where
    /// it is already running (an I/O completing in an interrupt while the
    /// program handles another there), and counts each such run as the
    /// program's `recursion_misses` (Linux 5.12+). Shared by every traced
    /// device, so no device can be named. `None` where the kernel keeps no
    /// such count: not measured, rather than a 0 it cannot vouch for.
    pub skipped_runs: Option<u64>,
    /// How the attached programs keep the starts of I/O in flight; `None`
    /// when not read from the kernel.
    pub in_flight: Option<InFlightMode>,
}

/// Whether the programs are attached (their links pinned).
pub fn attached() -> bool {
    pin_dir().join("links").is_dir()
}

/// Whether the programs are loaded (pinned, attached or not).
pub fn loaded() -> bool {
    programs_dir().is_dir()
}

/// Where the block programs are pinned, loaded.
fn programs_dir() -> PathBuf {
    pin_dir().join("programs")
}

/// Where the switch's programs are pinned (unattached).
pub fn switch_dir() -> PathBuf {
    pin_dir().join("switch")
}

/// Attaches the programs, loading them first unless they are loaded. The
/// kernel's layout is read from `layout_cache` (see [`KernelLayout::find`])
/// when it was written for the running kernel.
pub fn ensure_attached(layout_cache: Option<&Path>) -> Result<()> {
    if attached() {
        return Ok(());
    }
    // Detached programs another build of hcp loaded (before an upgrade, say)
    // may not share this build's maps and layouts: replaced.
    if loaded() && !pin_dir().join(object_marker()).is_dir() {
        unload()?;
    }
    if !loaded() {
        ensure_bpffs()?;
        load(layout_cache)?;
    }
    attach_loaded()
}

/// The name of an empty directory, beside the pins, naming the object the
/// programs were loaded from (bpffs holds no plain files).
fn object_marker() -> String {
    format!("object-{}", object::OBJECT_ID)
}

/// Loads the programs and pins them, unattached, with their maps.
fn load(layout_cache: Option<&Path>) -> Result<()> {
    let dir = pin_dir();
    // A half-made directory (a crash between mkdir and the last pin) holds
    // nothing a new load could reuse.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    // (bpffs refuses names with a dot.)
    let staging = dir.with_file_name("hcp-new");
    let _ = std::fs::remove_dir_all(&staging);
    for sub in ["programs".to_string(), "maps".to_string(), object_marker()] {
        std::fs::create_dir_all(staging.join(sub)).with_context(|| format!("creating {}", staging.display()))?;
    }

    let layout = KernelLayout::find(&object::block_events(), layout_cache)?;
    let mut ebpf = object::load_with(object::Purpose::Pinned, hcp_common::bio::IN_FLIGHT_SLOTS, &layout)?;
    for name in MAPS {
        let map = ebpf.map(name).with_context(|| format!("eBPF object lacks map {name}"))?;
        map.pin(staging.join("maps").join(name)).with_context(|| format!("pinning map {name}"))?;
    }
    let btf = object::tp_btf(&layout)?;
    for (program, event) in object::block_programs(layout.in_flight) {
        object::load_block_program(&mut ebpf, program, event, &btf)?
            .pin(staging.join("programs").join(program))
            .with_context(|| format!("pinning program {program}"))?;
    }
    // Without them (a kernel without syscall tracepoints, say) each start
    // loads its own, and says what is missing.
    if layout.ioctl.is_ok() && pin_switch_programs(&mut ebpf, &staging.join("switch"), layout.stall.is_ok()).is_err() {
        let _ = std::fs::remove_dir_all(staging.join("switch"));
    }
    // Visible all at once: `loaded()` never sees a half-pinned set.
    std::fs::rename(&staging, &dir).with_context(|| format!("moving pins to {}", dir.display()))?;
    Ok(())
}

/// Attaches the loaded programs from their pins, in [`object::BLOCK_PROGRAMS`]'
/// order, and pins their links.
fn attach_loaded() -> Result<()> {
    let mode = in_flight_mode()?;
    reset_in_flight()?;
    let links = pin_dir().join("links");
    let staging = pin_dir().join("links-new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    for (program, event) in object::block_programs(mode) {
        let prog = attach::get_pinned(&programs_dir().join(program))?;
        let link = attach::btf_tracepoint(prog.as_fd()).with_context(|| format!("attaching to tp_btf {event}"))?;
        attach::pin(link.as_fd(), &staging.join(program))?;
    }
    // Visible all at once: `attached()` never sees a half-attached set.
    std::fs::rename(&staging, &links).with_context(|| format!("moving links to {}", links.display()))?;
    Ok(())
}

/// Forgets the starts recorded before the programs were last detached.
/// Whatever was in flight then had its completion go unseen, and its
/// record would time a later request at the same address (blk-mq reuses
/// its requests) from that old start. Run while nothing is attached: the
/// in-flight table zeroed through a mapping of it (it is made mmapable for
/// this: 65536 updates would take a second under emulation), the hash map
/// emptied, its use count set to 0.
fn reset_in_flight() -> Result<()> {
    let path = pin_dir().join("maps").join("IN_FLIGHT");
    let table = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let info = table.info()?;
    let len = info.max_entries() as usize * info.value_size() as usize;
    if len > 0 {
        // SAFETY: a shared mapping of the map's own memory, `len` bytes
        // (the kernel rounds the map up to whole pages), written with
        // zeros (a free slot) and unmapped before the fd goes.
        unsafe {
            let fd = table.fd().as_fd().as_raw_fd();
            let at = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            if at == libc::MAP_FAILED {
                bail!("mapping the in-flight table: {}", std::io::Error::last_os_error());
            }
            std::ptr::write_bytes(at.cast::<u8>(), 0, len);
            libc::munmap(at, len);
        }
    }
    let mut starts: aya::maps::HashMap<MapData, u64, BioStart> = open("IO_START")?;
    for key in starts.keys().collect::<Result<Vec<u64>, _>>()? {
        let _ = starts.remove(&key);
    }
    let mut starts_use: aya::maps::Array<MapData, u64> = open("IO_START_USE")?;
    starts_use.set(OVERFLOW_IN_USE, 0, 0)?;
    Ok(())
}

/// Loads the switch's programs (the write-stall ones with `stalls`) and
/// pins them unattached in `dir`, with their maps.
fn pin_switch_programs(ebpf: &mut aya::Ebpf, dir: &Path, stalls: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in object::SWITCH_MAP_NAMES {
        let map = ebpf.map(name).with_context(|| format!("eBPF object lacks map {name}"))?;
        map.pin(dir.join(name)).with_context(|| format!("pinning map {name}"))?;
    }
    for (program, _, _) in object::switch_programs(stalls) {
        let prog: &mut TracePoint =
            ebpf.program_mut(program).with_context(|| format!("eBPF object lacks program {program}"))?.try_into()?;
        prog.load().with_context(|| format!("loading program {program}"))?;
        prog.pin(dir.join(program)).with_context(|| format!("pinning program {program}"))?;
    }
    Ok(())
}

/// The switch's pinned program `name`, if pinned.
pub fn switch_program(name: &str) -> Result<Option<OwnedFd>> {
    let path = switch_dir().join(name);
    if !path.exists() {
        return Ok(None);
    }
    attach::get_pinned(&path).map(Some)
}

/// Opens the switch's pinned map `name`.
pub fn switch_map<T: TryFrom<Map, Error = aya::maps::MapError>>(name: &str) -> Result<T> {
    open_at(&switch_dir().join(name))
}

/// Starts tracing `devices`; returns those that were not traced yet. A
/// device already traced (an origin shared with another traced session)
/// keeps its counts.
pub fn add_devices(devices: &[DevNum]) -> Result<Vec<DevNum>> {
    let mut io: PerCpuHashMap<MapData, u32, DevIoStats> = open("DEV_IO")?;
    let existing = io.keys().collect::<Result<Vec<u32>, _>>()?;
    let new: Vec<DevNum> = devices.iter().copied().filter(|d| !existing.contains(&d.to_kernel())).collect();
    io_latency::add_histograms(&mut open("IO_LATENCY")?, &new)?;
    block_io::add_devices(&mut io, &new)?;
    Ok(new)
}

/// The latency histogram of `dev` at `level` for `op` so far (empty if none).
pub fn histogram(dev: DevNum, level: Level, op: IoOp) -> Result<LatencyHist> {
    let map: PerCpuHashMap<MapData, LatKey, LatencyHist> = open("IO_LATENCY")?;
    let key = LatKey { dev: dev.to_kernel(), level: level as u8, op: op as u8, _pad: 0 };
    match map.get(&key, 0) {
        Ok(per_cpu) => Ok(crate::tracer::hist::merge(per_cpu.iter().copied())),
        Err(aya::maps::MapError::KeyNotFound) => Ok(LatencyHist::zeroed()),
        Err(e) => Err(e.into()),
    }
}

/// Stops tracing `devices`, dropping their counts; with the last traced
/// device gone, unpins everything, which detaches the programs.
pub fn remove_devices(devices: &[DevNum]) -> Result<()> {
    let mut io: PerCpuHashMap<MapData, u32, DevIoStats> = open("DEV_IO")?;
    let mut latency: PerCpuHashMap<MapData, LatKey, LatencyHist> = open("IO_LATENCY")?;
    let mut losses: PerCpuHashMap<MapData, u32, BioLosses> = open("IO_LOSSES")?;
    let mut remaps: PerCpuHashMap<MapData, RemapKey, RemapStats> = open("DEV_REMAP")?;
    let gone: Vec<u32> = devices.iter().map(|d| d.to_kernel()).collect();
    for dev in &gone {
        let _ = io.remove(dev);
        let _ = losses.remove(dev);
    }
    for key in latency.keys().collect::<Result<Vec<LatKey>, _>>()? {
        if gone.contains(&key.dev) {
            let _ = latency.remove(&key);
        }
    }
    for key in remaps.keys().collect::<Result<Vec<RemapKey>, _>>()? {
        if gone.contains(&key.dev) || gone.contains(&key.from) {
            let _ = remaps.remove(&key);
        }
    }
    if io.keys().next().is_none() {
        detach()?;
    }
    Ok(())
}

/// Unpins the links: the programs detach, and stay loaded for the next
/// traced start.
pub fn detach() -> Result<()> {
    let links = pin_dir().join("links");
    match std::fs::remove_dir_all(&links) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", links.display())),
    }
}

/// Unpins everything: the programs detach and are unloaded, and the maps
/// are freed once nothing holds them.
pub fn unload() -> Result<()> {
    let dir = pin_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Reads every counter of the traced devices.
pub fn read() -> Result<Counters> {
    read_devices(None)
}

/// [`read`] of `devices` only (and of what no device can be named for): a
/// few lookups instead of every traced device's maps, for the figures of
/// one session.
pub fn read_for(devices: &[DevNum]) -> Result<Counters> {
    read_devices(Some(devices))
}

fn read_devices(only: Option<&[DevNum]>) -> Result<Counters> {
    let io = block_io::read_counts(&open("DEV_IO")?, only)?;
    let mut remaps = block_io::read_remaps(&open("DEV_REMAP")?)?;
    if let Some(devices) = only {
        remaps.retain(|(to, _), _| devices.contains(to));
    }
    let latency = io_latency::histograms(&open("IO_LATENCY")?, only)?;
    let loss_map: PerCpuHashMap<MapData, u32, BioLosses> = open("IO_LOSSES")?;
    let mut losses = BTreeMap::new();
    for dev in io.keys() {
        losses.insert(*dev, io_latency::losses(&loss_map, Some(*dev))?);
    }
    let unattributed = io_latency::losses(&loss_map, None)?;
    let skipped_runs = skipped_runs(&programs()?)?;
    Ok(Counters { io, remaps, latency, losses, unattributed, skipped_runs, in_flight: Some(in_flight_mode()?) })
}

/// The runs of `programs` the kernel skipped (see [`Counters::skipped_runs`]):
/// the sum of their fdinfo's `recursion_misses`; `None` when the kernel
/// shows none (before Linux 5.12).
pub fn skipped_runs(programs: &[ProgramInfo]) -> Result<Option<u64>> {
    let mut total = Some(0);
    for program in programs {
        let misses = fdinfo_field(program.fd()?.as_fd(), "recursion_misses")?;
        total = total.zip(misses).map(|(t, m)| t + m);
    }
    Ok(total)
}

/// The in-flight mode of the loaded programs, told by which are pinned
/// (the hash-map mode's programs have names of their own).
pub fn in_flight_mode() -> Result<InFlightMode> {
    let programs = programs_dir();
    let (table, hash_map, _) = object::BLOCK_PROGRAMS[0];
    if programs.join(hash_map).exists() {
        Ok(InFlightMode::HashMap)
    } else if programs.join(table).exists() {
        Ok(InFlightMode::Table)
    } else {
        bail!("hcp's tracing is not loaded ({} holds no {table}): start a session with --trace", programs.display())
    }
}

/// The loaded block programs, as the kernel describes them.
pub fn programs() -> Result<Vec<ProgramInfo>> {
    let dir = programs_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        out.push(ProgramInfo::from_pin(&path).with_context(|| format!("opening {}", path.display()))?);
    }
    Ok(out)
}

/// A numeric field of a BPF object's fdinfo (`recursion_misses:\t3`);
/// `None` when the kernel does not show it.
pub fn fdinfo_field(fd: BorrowedFd<'_>, name: &str) -> Result<Option<u64>> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(fdinfo_value(&text, name))
}

/// The decimal field `name` of an fdinfo text.
fn fdinfo_value(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(name: &str) -> Result<T> {
    open_at(&pin_dir().join("maps").join(name))
}

fn open_at<T: TryFrom<Map, Error = aya::maps::MapError>>(path: &Path) -> Result<T> {
    if !path.exists() {
        bail!("no hcp tracing is attached ({} is missing): start a session with --trace", path.display());
    }
    let data = MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?.try_into()?)
}

/// bpffs at /sys/fs/bpf, mounted if it is not (minimal systems, containers).
fn ensure_bpffs() -> Result<()> {
    let target = Path::new("/sys/fs/bpf");
    let mounts = crate::kernel::mountinfo::read()?;
    if mounts.iter().any(|m| m.mount_point == target && m.fs_type == "bpf") {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dst, fs) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
        bail!("bpffs is not mounted and mounting it at /sys/fs/bpf failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2069\nmap_type:\t5\n\
                      key_size:\t4\nvalue_size:\t96\nmax_entries:\t256\nmap_flags:\t0x0\n\
                      map_extra:\t0x0\nmemlock:\t201024\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(fdinfo_value(fdinfo, "memlock"), Some(201024));
        assert_eq!(fdinfo_value(fdinfo, "map_id"), Some(42));
        assert_eq!(fdinfo_value(fdinfo, "map_flags"), None, "not a decimal number");
        assert_eq!(fdinfo_value(fdinfo, "mem"), None, "whole names only");
        assert_eq!(fdinfo_value("", "memlock"), None);
    }
}
