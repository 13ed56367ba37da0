//! Write stalls around the switch (see `hcp_common::stall`): the entry of a
//! write or sync system call on a file of the target filesystem records its
//! time by thread; its exit folds the duration into `WRITE_STALL`.
//!
//! Attached by `hcp start` only for the switch of a mounted origin, since
//! any syscall tracepoint puts every system call of the machine on the
//! slower traced path.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::TracePointContext,
};
use hcp_common::stall::{StallLayout, WriteStall, WRITE_SYSCALLS};

/// Set by user space before load.
#[no_mangle]
static STALL_LAYOUT: StallLayout = StallLayout {
    enter_id: 0,
    enter_args: 0,
    exit_ret: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    inode_sb: 0,
    sb_dev: 0,
};

/// The filesystem's device (kernel `dev_t`), at index 0.
#[map]
static STALL_TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// Calls in flight on the target filesystem: entry time by `pid_tgid`.
/// Writers held by a freeze are few; a full map is counted.
#[map]
static STALL_INFLIGHT: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

#[map]
static WRITE_STALL: PerCpuArray<WriteStall> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn write_stall_enter(ctx: TracePointContext) -> u32 {
    let layout = layout();
    // SAFETY: the offset comes from the tracepoint's own format file.
    let Ok(id) = (unsafe { ctx.read_at::<u64>(layout.enter_id as usize) }) else {
        bump(|s| s.read_errors += 1);
        return 0;
    };
    if !WRITE_SYSCALLS.contains(&id) {
        return 0; // every other system call of the machine
    }
    // SAFETY: as above; args[0] is the file descriptor.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(layout.enter_args as usize) }) else {
        bump(|s| s.read_errors += 1);
        return 0;
    };
    let Some(dev) = fd_device(fd, &layout) else {
        bump(|s| s.read_errors += 1);
        return 0;
    };
    // SAFETY: index 0 of our own one-entry array.
    if STALL_TARGET.get(0).copied() != Some(dev) {
        return 0;
    }
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if STALL_INFLIGHT.insert(bpf_get_current_pid_tgid(), now, 0).is_err() {
        bump(|s| s.inflight_full += 1);
    }
    0
}

#[tracepoint]
pub fn write_stall_exit(_ctx: TracePointContext) -> u32 {
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is deleted.
    let Some(entered) = (unsafe { STALL_INFLIGHT.get(pid_tgid) }).copied() else {
        return 0; // not a traced call
    };
    let _ = STALL_INFLIGHT.remove(pid_tgid);
    let took = now.saturating_sub(entered);
    bump(|s| {
        s.calls += 1;
        s.total_ns += took;
        if took > s.max_ns {
            s.max_ns = took;
            s.max_enter_ns = entered;
            s.max_pid = (pid_tgid >> 32) as u32;
        }
    });
    0
}

/// The device of the filesystem holding the current task's open file `fd`:
/// `task->files->fdt->fd[fd]->f_inode->i_sb->s_dev`. 0 for a descriptor
/// that is not open; `None` when a read failed.
#[inline(always)]
fn fd_device(fd: u64, l: &StallLayout) -> Option<u32> {
    // SAFETY: every read goes through bpf_probe_read_kernel, which fails
    // cleanly on a bad address; the offsets come from this kernel's BTF. The
    // table may change under us (RCU): a stale read is harmless here.
    unsafe {
        let read_ptr = |at: u64| bpf_probe_read_kernel(at as *const u64).ok();
        let task = bpf_get_current_task();
        let files = read_ptr(task + u64::from(l.task_files))?;
        let fdt = read_ptr(files + u64::from(l.files_fdt))?;
        let max_fds: u32 = bpf_probe_read_kernel((fdt + u64::from(l.fdt_max_fds)) as *const u32).ok()?;
        if fd >= u64::from(max_fds) {
            return Some(0);
        }
        let fds = read_ptr(fdt + u64::from(l.fdt_fd))?;
        let file = read_ptr(fds + fd * 8)?;
        if file == 0 {
            return Some(0);
        }
        let inode = read_ptr(file + u64::from(l.file_inode))?;
        let sb = read_ptr(inode + u64::from(l.inode_sb))?;
        bpf_probe_read_kernel((sb + u64::from(l.sb_dev)) as *const u32).ok()
    }
}

#[inline(always)]
fn layout() -> StallLayout {
    // SAFETY: a read-only global written by user space before load.
    unsafe { core::ptr::read_volatile(&STALL_LAYOUT) }
}

#[inline(always)]
fn bump(update: impl FnOnce(&mut WriteStall)) {
    if let Some(stall) = WRITE_STALL.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of our own map value.
        update(unsafe { &mut *stall });
    }
}
