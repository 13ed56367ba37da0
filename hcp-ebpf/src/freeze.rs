//! The freeze window: `FIFREEZE`, `FITHAW` and `DM_DEV_SUSPEND` calls of any
//! process, from the ioctl syscall tracepoints (see `hcp_common::freeze`).
//!
//! The entry records the call in `FREEZE_INFLIGHT`, keyed by the thread; the
//! exit takes it out and emits one `FreezeEvent` with both times into the
//! `FREEZE_EVENTS` ring buffer. The path is rare (a handful of calls per
//! snapshot), so a ring buffer user space drains afterwards is enough; a
//! full ring is counted in `FREEZE_LOSSES`, never silent.
//!
//! Record offsets come from the tracepoints' `format` files, via user space,
//! in `IOCTL_TP_LAYOUT`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use hcp_common::freeze::{
    FreezeCall, FreezeEvent, FreezeInFlight, FreezeLosses, IoctlTpLayout, DM_DEV_SUSPEND, DM_FLAGS_OFFSET,
    DM_NAME_OFFSET, DM_SUSPEND_FLAG, FIFREEZE, FITHAW,
};

/// Set by user space before load.
#[no_mangle]
static IOCTL_TP_LAYOUT: IoctlTpLayout = IoctlTpLayout { enter_fd: 0, enter_cmd: 0, enter_arg: 0, exit_ret: 0 };

/// Traced calls between entry and exit, by `pid_tgid`. Only threads inside
/// one of the three ioctls have an entry, so a few are plenty; every loader
/// of the object allocates the map, so it is kept small.
#[map]
static FREEZE_INFLIGHT: HashMap<u64, FreezeInFlight> = HashMap::with_max_entries(128, 0);

/// Finished calls. 64 KiB holds about 370 records, where a snapshot makes a
/// handful; a ring user space leaves undrained for long fills and counts.
#[map]
static FREEZE_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// What could not be recorded (one entry).
#[map]
static FREEZE_LOSSES: PerCpuArray<FreezeLosses> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn freeze_ioctl_enter(ctx: TracePointContext) -> u32 {
    let layout = layout();
    // SAFETY: the offset comes from the tracepoint's own format file.
    let Ok(cmd) = (unsafe { ctx.read_at::<u32>(layout.enter_cmd as usize) }) else {
        count_loss(|l| l.read_errors += 1);
        return 0;
    };
    if !matches!(cmd, FIFREEZE | FITHAW | DM_DEV_SUSPEND) {
        return 0; // every other ioctl of the system: the common case
    }
    // SAFETY: as above.
    let (Ok(fd), Ok(arg)) = (unsafe { ctx.read_at::<u32>(layout.enter_fd as usize) }, unsafe {
        ctx.read_at::<u64>(layout.enter_arg as usize)
    }) else {
        count_loss(|l| l.read_errors += 1);
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut inflight = FreezeInFlight { arg, event: FreezeEvent::zeroed() };
    let event = &mut inflight.event;
    event.pid = (pid_tgid >> 32) as u32;
    event.tid = pid_tgid as u32;
    event.fd = fd;
    event.call = match cmd {
        FIFREEZE => FreezeCall::Freeze,
        FITHAW => FreezeCall::Thaw,
        _ => {
            // SAFETY: bpf_probe_read_user fails cleanly on a bad pointer (the
            // ioctl itself then fails with EFAULT).
            let Ok(flags) = (unsafe { bpf_probe_read_user((arg + DM_FLAGS_OFFSET as u64) as *const u32) }) else {
                count_loss(|l| l.read_errors += 1);
                return 0;
            };
            // The name as asked; empty when the caller named the device by
            // UUID or number, in which case the exit reads it back.
            // SAFETY: as above; the buffer is DM_NAME_LEN bytes.
            if unsafe { bpf_probe_read_user_buf((arg + DM_NAME_OFFSET as u64) as *const u8, &mut event.dm_name) }
                .is_err()
            {
                count_loss(|l| l.read_errors += 1);
                return 0;
            }
            if flags & DM_SUSPEND_FLAG != 0 {
                FreezeCall::Suspend
            } else {
                FreezeCall::Resume
            }
        }
    } as u32;
    // Taken last, so the window is the ioctl's own time, not this program's.
    // SAFETY: a helper without preconditions.
    event.enter_ns = unsafe { bpf_ktime_get_ns() };
    // By reference: a by-value argument would be one more copy on the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = FREEZE_INFLIGHT.insert(pid_tgid, &inflight, 0);
    if inserted.is_err() {
        count_loss(|l| l.inflight_full += 1);
    }
    0
}

#[tracepoint]
pub fn freeze_ioctl_exit(ctx: TracePointContext) -> u32 {
    // First, so the time excludes what follows.
    // SAFETY: a helper without preconditions.
    let exit_ns = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // The exit of every ioctl of the system comes here; only the traced
    // calls' threads have an entry.
    let Some(inflight) = FREEZE_INFLIGHT.get_ptr(pid_tgid) else {
        return 0;
    };
    emit(&ctx, inflight, exit_ns);
    let _ = FREEZE_INFLIGHT.remove(pid_tgid);
    0
}

#[inline(always)]
fn emit(ctx: &TracePointContext, inflight: *const FreezeInFlight, exit_ns: u64) {
    // SAFETY: the offset comes from the tracepoint's own format file.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(layout().exit_ret as usize) }) else {
        count_loss(|l| l.read_errors += 1);
        return;
    };
    let Some(mut entry) = FREEZE_EVENTS.reserve::<FreezeEvent>(0) else {
        count_loss(|l| l.ring_full += 1);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `inflight` is our own map's value, valid for the whole program;
    // `event` is a reserved record of the ring, ours until submitted. Copied
    // memory to memory: a FreezeEvent is a third of the BPF stack.
    unsafe {
        core::ptr::copy_nonoverlapping(&(*inflight).event, event, 1);
        (*event).exit_ns = exit_ns;
        (*event).ret = ret;
        let call = (*event).call;
        let dm = call == FreezeCall::Suspend as u32 || call == FreezeCall::Resume as u32;
        // On success dm has written the device's name into the caller's
        // struct dm_ioctl, however the caller named it.
        if dm && ret == 0 && (*event).dm_name[0] == 0 {
            let name = (*inflight).arg + DM_NAME_OFFSET as u64;
            if bpf_probe_read_user_buf(name as *const u8, &mut (*event).dm_name).is_err() {
                count_loss(|l| l.read_errors += 1);
            }
        }
    }
    entry.submit(0);
}

#[inline(always)]
fn layout() -> IoctlTpLayout {
    // SAFETY: a read-only global written by user space before load.
    unsafe { core::ptr::read_volatile(&IOCTL_TP_LAYOUT) }
}

#[inline(always)]
fn count_loss(bump: impl FnOnce(&mut FreezeLosses)) {
    if let Some(losses) = FREEZE_LOSSES.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of our own map value.
        bump(unsafe { &mut *losses });
    }
}
