//! The freeze window measured in the kernel: every `FIFREEZE`, `FITHAW` and
//! `DM_DEV_SUSPEND` call of any process (LVM, fsfreeze, dmsetup, hcp), as
//! recorded by the `freeze_ioctl_*` programs (see `hcp_common::freeze`), and
//! the windows they make, per process:
//!
//! - a freeze call: `FIFREEZE` entry to return (writeback of dirty data and
//!   the journal, with new writes already held);
//! - frozen: `FIFREEZE` entry to `FITHAW` return, how long writers stall;
//! - suspended, per dm device: suspend entry to resume return.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`), the clock
//! of `std::time::Instant` and of the I/O latency programs.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, RingBuf};
use aya::programs::TracePoint;
use aya::Ebpf;
use hcp_common::freeze::{FreezeCall, FreezeEvent, FreezeInFlight, FreezeLosses};
use hcp_common::stall::WriteStall;
use serde::{Serialize, Serializer};

use super::{object, pins, write_stall};
use crate::kernel::devnum::DevNum;

/// Records the freeze and suspend calls of every process while it lives,
/// and optionally the write stalls on one filesystem (see
/// [`crate::tracer::write_stall`]); dropping it detaches the programs.
pub struct FreezeTracer {
    // Owns the programs, and so the links.
    _programs: Programs,
    events: RingBuf<MapData>,
    losses: PerCpuArray<MapData, FreezeLosses>,
    stalls: Option<StallMaps>,
}

/// The programs a tracer attached: an object of its own, or the pinned
/// ones (the perf events that carry them are the tracer's; the programs
/// stay pinned).
enum Programs {
    Loaded(#[allow(dead_code)] Ebpf),
    Pinned(#[allow(dead_code)] Vec<OwnedFd>),
}

struct StallMaps {
    _target: Array<MapData, u32>,
    figures: PerCpuArray<MapData, WriteStall>,
    inflight: HashMap<MapData, u64, u64>,
}

impl FreezeTracer {
    /// Freeze and suspend calls only.
    pub fn attach() -> Result<FreezeTracer> {
        Self::attach_to(None)
    }

    /// Also the write and sync system calls on the filesystem of device
    /// `fs_dev`, as long as the tracer lives.
    pub fn attach_with_stalls(fs_dev: DevNum) -> Result<FreezeTracer> {
        Self::attach_to(Some(fs_dev))
    }

    fn attach_to(fs_dev: Option<DevNum>) -> Result<FreezeTracer> {
        // Fails, naming what is missing, without the syscall tracepoints'
        // formats (or, for stalls, the kernel fields the walk reads).
        let mut ebpf = object::load(object::Purpose::Switch { stalls: fs_dev.is_some() })?;
        for (program, category, event) in object::switch_programs(fs_dev.is_some()) {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("eBPF object lacks program {program}"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading program {program}"))?;
            attach_tracepoint(prog, category, event)?;
        }
        let stalls = match fs_dev {
            Some(dev) => {
                // Kept open: the programs refer to it.
                let mut target: Array<MapData, u32> =
                    Array::try_from(ebpf.take_map("STALL_TARGET").context("eBPF object lacks map STALL_TARGET")?)?;
                target.set(0, dev.to_kernel(), 0).context("setting the stall tracer's filesystem")?;
                let figures =
                    PerCpuArray::try_from(ebpf.take_map("WRITE_STALL").context("eBPF object lacks map WRITE_STALL")?)?;
                let inflight = HashMap::try_from(
                    ebpf.take_map("STALL_INFLIGHT").context("eBPF object lacks map STALL_INFLIGHT")?,
                )?;
                Some(StallMaps { _target: target, figures, inflight })
            }
            None => None,
        };
        let events = RingBuf::try_from(ebpf.take_map("FREEZE_EVENTS").context("eBPF object lacks map FREEZE_EVENTS")?)?;
        let losses =
            PerCpuArray::try_from(ebpf.take_map("FREEZE_LOSSES").context("eBPF object lacks map FREEZE_LOSSES")?)?;
        Ok(FreezeTracer { _programs: Programs::Loaded(ebpf), events, losses, stalls })
    }

    /// [`Self::attach`] (with `fs_dev`: [`Self::attach_with_stalls`]) from
    /// the programs the first traced session pinned (see
    /// [`crate::tracer::pins`]), neither loaded nor verified again; None if
    /// they are not pinned. Their maps are cleared first of what an earlier
    /// switch left: only one switch at a time may use them (`hcp start`
    /// holds hcp's lock).
    pub fn attach_pinned(fs_dev: Option<DevNum>) -> Result<Option<FreezeTracer>> {
        let wanted = object::switch_programs(fs_dev.is_some());
        let mut programs = Vec::new();
        for (program, _, _) in &wanted {
            match pins::switch_program(program)? {
                Some(p) => programs.push(p),
                None => return Ok(None),
            }
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let mut events: RingBuf<MapData> = pins::switch_map("FREEZE_EVENTS")?;
        while events.next().is_some() {}
        let mut losses: PerCpuArray<MapData, FreezeLosses> = pins::switch_map("FREEZE_LOSSES")?;
        losses.set(0, PerCpuValues::try_from(vec![FreezeLosses::default(); cpus])?, 0)?;
        let mut freeze_inflight: HashMap<MapData, u64, FreezeInFlight> = pins::switch_map("FREEZE_INFLIGHT")?;
        clear(&mut freeze_inflight)?;
        let stalls = match fs_dev {
            Some(dev) => {
                let mut target: Array<MapData, u32> = pins::switch_map("STALL_TARGET")?;
                target.set(0, dev.to_kernel(), 0).context("setting the stall tracer's filesystem")?;
                let mut figures: PerCpuArray<MapData, WriteStall> = pins::switch_map("WRITE_STALL")?;
                figures.set(0, PerCpuValues::try_from(vec![WriteStall::default(); cpus])?, 0)?;
                let mut inflight: HashMap<MapData, u64, u64> = pins::switch_map("STALL_INFLIGHT")?;
                clear(&mut inflight)?;
                Some(StallMaps { _target: target, figures, inflight })
            }
            None => None,
        };
        let tracefs = super::tracefs::root()?;
        let mut attached = Vec::new();
        for (prog, (_, category, event)) in programs.iter().zip(&wanted) {
            attached.push(
                super::attach::tracepoint(prog.as_fd(), &tracefs, category, event)
                    .with_context(|| attach_failed(category, event))?,
            );
        }
        Ok(Some(FreezeTracer { _programs: Programs::Pinned(attached), events, losses, stalls }))
    }

    /// The write stalls so far (None without a stall target).
    pub fn stalls(&self) -> Result<Option<WriteStall>> {
        self.stalls.as_ref().map(|s| write_stall::read(&s.figures)).transpose()
    }

    /// Waits until every traced write call that entered before `before_ns`
    /// (CLOCK_MONOTONIC) has returned, or `deadline` passes; returns how many
    /// are still in flight. Writers held by a freeze return soon after the
    /// thaw; their durations are the stalls.
    pub fn settle_stalls(&self, before_ns: u64, deadline: Instant) -> usize {
        let Some(stalls) = &self.stalls else { return 0 };
        loop {
            let left = write_stall::in_flight_before(&stalls.inflight, before_ns);
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The calls that returned since the last drain, in the order they
    /// returned.
    pub fn events(&mut self) -> Result<Vec<FreezeEvent>> {
        let mut out = Vec::new();
        while let Some(record) = self.events.next() {
            if record.len() < std::mem::size_of::<FreezeEvent>() {
                bail!("a freeze event record of {} bytes, expected {}", record.len(), size_of::<FreezeEvent>());
            }
            // SAFETY: the program writes whole FreezeEvents (plain data, any
            // bit pattern valid); the length was checked.
            out.push(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<FreezeEvent>()) });
        }
        Ok(out)
    }

    /// What the programs could not record so far, summed over CPUs.
    pub fn losses(&self) -> Result<FreezeLosses> {
        let per_cpu = self.losses.get(&0, 0).context("reading FREEZE_LOSSES")?;
        Ok(per_cpu.iter().fold(FreezeLosses::default(), |mut total, l| {
            total.ring_full += l.ring_full;
            total.inflight_full += l.inflight_full;
            total.read_errors += l.read_errors;
            total
        }))
    }
}

fn attach_tracepoint(prog: &mut TracePoint, category: &str, event: &str) -> Result<()> {
    prog.attach(category, event).with_context(|| attach_failed(category, event))?;
    Ok(())
}

fn attach_failed(category: &str, event: &str) -> String {
    format!("attaching to tracepoint {category}:{event} (needs CONFIG_FTRACE_SYSCALLS)")
}

/// Removes every entry of a hash map.
fn clear<V: aya::Pod>(map: &mut HashMap<MapData, u64, V>) -> Result<()> {
    for key in map.keys().collect::<Result<Vec<u64>, _>>()? {
        let _ = map.remove(&key);
    }
    Ok(())
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the programs'
/// `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A traced call, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Call {
    #[serde(serialize_with = "call_name")]
    pub call: FreezeCall,
    pub pid: u32,
    pub tid: u32,
    pub fd: u32,
    /// The dm device, for suspend and resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dm_name: Option<String>,
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// 0, or a negative errno.
    pub ret: i64,
}

impl Call {
    /// None for a record whose call is unknown (not written by the programs
    /// this crate embeds).
    pub fn decode(event: &FreezeEvent) -> Option<Call> {
        let call = FreezeCall::from_u32(event.call)?;
        let dm_name = call.is_dm().then(|| {
            let len = event.dm_name.iter().position(|&b| b == 0).unwrap_or(event.dm_name.len());
            String::from_utf8_lossy(&event.dm_name[..len]).into_owned()
        });
        Some(Call {
            call,
            pid: event.pid,
            tid: event.tid,
            fd: event.fd,
            dm_name,
            enter_ns: event.enter_ns,
            exit_ns: event.exit_ns,
            ret: event.ret,
        })
    }
}

fn call_name<S: Serializer>(call: &FreezeCall, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(call.name())
}

/// An interval of CLOCK_MONOTONIC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ns: u64,
}

impl Span {
    fn new(start_ns: u64, end_ns: u64) -> Span {
        Span { start_ns, end_ns, duration_ns: end_ns.saturating_sub(start_ns) }
    }
}

/// How long one dm device stayed suspended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suspended {
    pub dm_name: String,
    #[serde(flatten)]
    pub span: Span,
}

/// The windows of one process, each list in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessWindows {
    pub pid: u32,
    /// Each successful `FIFREEZE`, entry to return.
    pub freeze_calls: Vec<Span>,
    /// `FIFREEZE` entry to the return of the `FITHAW` that ended it.
    pub frozen: Vec<Span>,
    /// Suspend entry to the return of the resume of the same dm device.
    pub suspended: Vec<Suspended>,
    /// Successful calls without a partner in this process: a freeze or
    /// suspend still in force when the events were read, or ended by
    /// another process (`fsfreeze --freeze` and `--unfreeze` are two
    /// processes); a thaw or resume of something frozen or suspended before
    /// tracing began, or by another process; a resume that activates a new
    /// device (it was never suspended); a suspend of a device already
    /// suspended by an earlier one.
    pub unpaired: Vec<Call>,
    /// Calls that failed: they began or ended nothing.
    pub failed: Vec<Call>,
}

/// The windows of every process that made a traced call, by pid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Windows {
    pub processes: Vec<ProcessWindows>,
}

impl Windows {
    pub fn process(&self, pid: u32) -> Option<&ProcessWindows> {
        self.processes.iter().find(|p| p.pid == pid)
    }
}

/// Pairs the calls of each process into windows. A thaw ends the open
/// freeze made on the same file descriptor if there is one, else the
/// earliest open freeze; a resume ends the open suspend of the same dm
/// device. Nothing is dropped: a call that pairs with nothing is listed in
/// `unpaired`, a failed one in `failed`.
pub fn windows(events: &[FreezeEvent]) -> Windows {
    let mut calls: Vec<Call> = events.iter().filter_map(Call::decode).collect();
    // The ring holds calls in the order they returned; pair in the order
    // they began (threads of one process may overlap).
    calls.sort_by_key(|c| (c.pid, c.enter_ns, c.exit_ns));
    let mut by_pid: BTreeMap<u32, Vec<Call>> = BTreeMap::new();
    for call in calls {
        by_pid.entry(call.pid).or_default().push(call);
    }
    Windows { processes: by_pid.into_iter().map(|(pid, calls)| process_windows(pid, calls)).collect() }
}

fn process_windows(pid: u32, calls: Vec<Call>) -> ProcessWindows {
    let mut out = ProcessWindows { pid, ..ProcessWindows::default() };
    let mut open_freezes: Vec<Call> = Vec::new();
    let mut open_suspends: BTreeMap<String, Call> = BTreeMap::new();
    for call in calls {
        if call.ret != 0 {
            out.failed.push(call);
            continue;
        }
        match call.call {
            FreezeCall::Freeze => {
                out.freeze_calls.push(Span::new(call.enter_ns, call.exit_ns));
                open_freezes.push(call);
            }
            FreezeCall::Thaw => {
                let found = open_freezes.iter().position(|f| f.fd == call.fd);
                let found = found.or((!open_freezes.is_empty()).then_some(0));
                match found {
                    Some(i) => {
                        let freeze = open_freezes.remove(i);
                        out.frozen.push(Span::new(freeze.enter_ns, call.exit_ns));
                    }
                    None => out.unpaired.push(call),
                }
            }
            FreezeCall::Suspend => match open_suspends.entry(call.dm_name.clone().unwrap_or_default()) {
                Entry::Vacant(open) => {
                    open.insert(call);
                }
                Entry::Occupied(_) => out.unpaired.push(call),
            },
            FreezeCall::Resume => {
                let name = call.dm_name.clone().unwrap_or_default();
                match open_suspends.remove(&name) {
                    Some(suspend) => {
                        out.suspended.push(Suspended { dm_name: name, span: Span::new(suspend.enter_ns, call.exit_ns) })
                    }
                    None => out.unpaired.push(call),
                }
            }
        }
    }
    out.unpaired.extend(open_freezes);
    out.unpaired.extend(open_suspends.into_values());
    out.unpaired.sort_by_key(|c| (c.enter_ns, c.exit_ns));
    out.frozen.sort_by_key(|s| s.start_ns);
    out.suspended.sort_by_key(|s| s.span.start_ns);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcp_common::freeze::DM_NAME_LEN;

    const MS: u64 = 1_000_000;

    fn event(call: FreezeCall, pid: u32, enter_ms: u64, exit_ms: u64) -> FreezeEvent {
        FreezeEvent {
            call: call as u32,
            pid,
            tid: pid,
            fd: 3,
            enter_ns: enter_ms * MS,
            exit_ns: exit_ms * MS,
            ..FreezeEvent::zeroed()
        }
    }

    fn dm(call: FreezeCall, pid: u32, name: &str, enter_ms: u64, exit_ms: u64) -> FreezeEvent {
        let mut e = event(call, pid, enter_ms, exit_ms);
        e.fd = 4;
        e.dm_name[..name.len()].copy_from_slice(name.as_bytes());
        e
    }

    fn span(start_ms: u64, end_ms: u64) -> Span {
        Span::new(start_ms * MS, end_ms * MS)
    }

    fn kinds(calls: &[Call]) -> Vec<(FreezeCall, Option<&str>)> {
        calls.iter().map(|c| (c.call, c.dm_name.as_deref())).collect()
    }

    #[test]
    fn an_hcp_start_makes_one_of_each_window() {
        use FreezeCall::*;
        // hcp start: freeze, suspend the origin, resume the (new) snapshot,
        // resume the origin, thaw; records arrive in return order.
        let events = [
            event(Freeze, 10, 100, 130),
            dm(Suspend, 10, "vg-lv", 131, 140),
            dm(Resume, 10, "hcp0", 141, 150),
            dm(Resume, 10, "vg-lv", 151, 160),
            event(Thaw, 10, 161, 170),
        ];
        let w = windows(&events);
        assert_eq!(w.processes.len(), 1);
        let p = w.process(10).unwrap();
        assert_eq!(p.freeze_calls, vec![span(100, 130)]);
        assert_eq!(p.frozen, vec![span(100, 170)]);
        assert_eq!(p.frozen[0].duration_ns, 70 * MS);
        assert_eq!(p.suspended, vec![Suspended { dm_name: "vg-lv".into(), span: span(131, 160) }]);
        // Activating the snapshot resumes a device that was never suspended.
        assert_eq!(kinds(&p.unpaired), vec![(Resume, Some("hcp0"))]);
        assert!(p.failed.is_empty());
    }

    #[test]
    fn unpaired_calls_are_reported_not_dropped() {
        use FreezeCall::*;
        let events = [
            // Thawed by a process that did not freeze (fsfreeze --unfreeze).
            event(Thaw, 7, 10, 11),
            // Frozen and still frozen when the events were read.
            event(Freeze, 8, 20, 25),
            // Suspended, never resumed; resumed, never suspended.
            dm(Suspend, 8, "a", 30, 31),
            dm(Resume, 8, "b", 40, 41),
        ];
        let w = windows(&events);
        let p7 = w.process(7).unwrap();
        assert_eq!(kinds(&p7.unpaired), vec![(Thaw, None)]);
        assert!(p7.frozen.is_empty() && p7.freeze_calls.is_empty());
        let p8 = w.process(8).unwrap();
        assert_eq!(p8.freeze_calls, vec![span(20, 25)], "the call itself completed");
        assert!(p8.frozen.is_empty() && p8.suspended.is_empty());
        assert_eq!(kinds(&p8.unpaired), vec![(Freeze, None), (Suspend, Some("a")), (Resume, Some("b"))]);
    }

    #[test]
    fn processes_are_paired_apart() {
        use FreezeCall::*;
        // Two processes freezing and thawing at overlapping times.
        let events = [
            event(Freeze, 1, 0, 5),
            event(Freeze, 2, 2, 6),
            event(Thaw, 2, 8, 9),
            event(Thaw, 1, 10, 12),
            dm(Suspend, 1, "x", 20, 21),
            dm(Resume, 2, "x", 22, 23),
        ];
        let w = windows(&events);
        assert_eq!(w.process(1).unwrap().frozen, vec![span(0, 12)]);
        assert_eq!(w.process(2).unwrap().frozen, vec![span(2, 9)]);
        assert_eq!(kinds(&w.process(1).unwrap().unpaired), vec![(Suspend, Some("x"))]);
        assert_eq!(kinds(&w.process(2).unwrap().unpaired), vec![(Resume, Some("x"))]);
    }

    #[test]
    fn devices_are_paired_by_name() {
        use FreezeCall::*;
        // LVM-style: two devices suspended, resumed in the other order.
        let events = [
            dm(Suspend, 5, "vg-lv", 0, 1),
            dm(Suspend, 5, "vg-lv-real", 2, 3),
            dm(Resume, 5, "vg-lv-real", 4, 5),
            dm(Resume, 5, "vg-lv", 6, 7),
        ];
        let p = windows(&events).processes.remove(0);
        assert_eq!(
            p.suspended,
            vec![
                Suspended { dm_name: "vg-lv".into(), span: span(0, 7) },
                Suspended { dm_name: "vg-lv-real".into(), span: span(2, 5) },
            ]
        );
        assert!(p.unpaired.is_empty());
    }

    #[test]
    fn failed_calls_begin_and_end_nothing() {
        use FreezeCall::*;
        let mut busy = event(Freeze, 3, 5, 6);
        busy.ret = -i64::from(libc::EBUSY);
        let mut einval = event(Thaw, 3, 30, 31);
        einval.ret = -i64::from(libc::EINVAL);
        let events = [event(Freeze, 3, 0, 1), busy, event(Thaw, 3, 10, 12), einval];
        let p = windows(&events).processes.remove(0);
        assert_eq!(p.frozen, vec![span(0, 12)], "the failed freeze neither opened nor spoiled the window");
        assert_eq!(p.freeze_calls, vec![span(0, 1)]);
        assert_eq!(kinds(&p.failed), vec![(Freeze, None), (Thaw, None)]);
        assert_eq!(p.failed[0].ret, -i64::from(libc::EBUSY));
        assert!(p.unpaired.is_empty());
    }

    #[test]
    fn a_thaw_ends_the_freeze_made_on_its_descriptor() {
        use FreezeCall::*;
        // One process freezes two filesystems and thaws the second first.
        let mut a = event(Freeze, 4, 0, 1);
        a.fd = 10;
        let mut b = event(Freeze, 4, 2, 3);
        b.fd = 11;
        let mut thaw_b = event(Thaw, 4, 4, 5);
        thaw_b.fd = 11;
        let mut thaw_a = event(Thaw, 4, 6, 7);
        thaw_a.fd = 10;
        let p = windows(&[a, b, thaw_b, thaw_a]).processes.remove(0);
        assert_eq!(p.frozen, vec![span(0, 7), span(2, 5)]);
    }

    #[test]
    fn a_second_suspend_of_a_suspended_device_is_unpaired() {
        use FreezeCall::*;
        let events = [dm(Suspend, 6, "d", 0, 1), dm(Suspend, 6, "d", 2, 3), dm(Resume, 6, "d", 4, 5)];
        let p = windows(&events).processes.remove(0);
        assert_eq!(p.suspended, vec![Suspended { dm_name: "d".into(), span: span(0, 5) }]);
        assert_eq!(p.unpaired.len(), 1);
        assert_eq!(p.unpaired[0].enter_ns, 2 * MS);
    }

    #[test]
    fn names_are_decoded_up_to_the_nul_and_unknown_records_skipped() {
        let full = "n".repeat(DM_NAME_LEN);
        let mut e = dm(FreezeCall::Resume, 1, &full, 0, 1);
        assert_eq!(Call::decode(&e).unwrap().dm_name.as_deref(), Some(full.as_str()), "a name without NUL");
        e.call = 99;
        assert_eq!(Call::decode(&e), None);
        assert_eq!(Call::decode(&event(FreezeCall::Freeze, 1, 0, 1)).unwrap().dm_name, None);
    }

    #[test]
    fn serialises_names_and_nanoseconds() {
        let events = [event(FreezeCall::Freeze, 9, 1, 2), event(FreezeCall::Thaw, 9, 3, 4)];
        let json = serde_json::to_value(windows(&events)).unwrap();
        let p = &json["processes"][0];
        assert_eq!(p["pid"], 9);
        assert_eq!(p["frozen"][0]["duration_ns"], 3 * MS);
        let unpaired = serde_json::to_value(Call::decode(&events[0]).unwrap()).unwrap();
        assert_eq!(unpaired["call"], "freeze");
        assert!(unpaired.get("dm_name").is_none());
        let suspended = serde_json::to_value(Suspended { dm_name: "x".into(), span: span(1, 2) }).unwrap();
        assert_eq!(suspended["dm_name"], "x");
        assert_eq!(suspended["duration_ns"], MS);
    }
}
