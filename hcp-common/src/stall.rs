//! Application write stalls around the switch: how long write and sync
//! system calls on the origin's filesystem took while hcp froze it.
//!
//! A frozen filesystem holds writers in the VFS, before any bio exists, so
//! block tracepoints cannot see the stall an application feels; its system
//! calls can. The `write_stall_*` programs run at `raw_syscalls:sys_enter`
//! and `sys_exit` only while `hcp start` switches a mounted origin: the
//! entry of a call in [`WRITE_SYSCALLS`] on a file of the filesystem named
//! in `STALL_TARGET` records its time in `STALL_INFLIGHT` by thread, and
//! its exit folds the duration into [`WriteStall`].
//!
//! Not seen: writes through a shared mapping (page faults), io_uring and
//! AIO, 32-bit compat system calls, and calls that entered before the
//! programs were attached (their exits are counted as unmatched).

/// x86_64 numbers of the system calls that write file data or wait for it
/// to reach the disk, each taking the file descriptor as its first
/// argument: write, pwrite64, writev, fsync, fdatasync, sync_file_range,
/// pwritev, pwritev2. (The eBPF target cannot know the host's architecture;
/// user space refuses to attach on another.)
pub const WRITE_SYSCALLS: [u64; 8] = [1, 18, 20, 74, 75, 277, 296, 328];

/// Offsets of the fields read from the `raw_syscalls` tracepoint records
/// (their `format` files) and of the kernel structs walked from the current
/// task to the device of a file descriptor's filesystem (the kernel's BTF):
/// `task->files->fdt->fd[fd]->f_inode->i_sb->s_dev`. The read-only global
/// `STALL_LAYOUT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallLayout {
    /// `sys_enter`: `long id`
    pub enter_id: u32,
    /// `sys_enter`: `unsigned long args[6]`
    pub enter_args: u32,
    /// `sys_exit`: `long ret` (unused: a failed call stalled as long)
    pub exit_ret: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
}

/// The durations seen, in the single-entry per-CPU array `WRITE_STALL`;
/// user space sums the counts and takes the largest maximum.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStall {
    /// Calls on the target filesystem that returned.
    pub calls: u64,
    /// Sum of their durations.
    pub total_ns: u64,
    /// The longest, entry to return.
    pub max_ns: u64,
    /// When the longest one entered (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub max_enter_ns: u64,
    /// The process that made it.
    pub max_pid: u32,
    pub _pad: u32,
    /// Calls not followed: the in-flight map was full.
    pub inflight_full: u64,
    /// Failed reads of a record field or of the fd's file.
    pub read_errors: u64,
}

impl WriteStall {
    /// Adds another CPU's figures to these.
    pub fn merge(&mut self, other: &WriteStall) {
        self.calls += other.calls;
        self.total_ns += other.total_ns;
        if other.max_ns > self.max_ns {
            self.max_ns = other.max_ns;
            self.max_enter_ns = other.max_enter_ns;
            self.max_pid = other.max_pid;
        }
        self.inflight_full += other.inflight_full;
        self.read_errors += other.read_errors;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers without padding holes.
    unsafe impl aya::Pod for super::StallLayout {}
    unsafe impl aya::Pod for super::WriteStall {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_the_longest_and_its_process() {
        let mut a =
            WriteStall { calls: 3, total_ns: 30, max_ns: 20, max_enter_ns: 5, max_pid: 7, ..Default::default() };
        let b = WriteStall {
            calls: 1,
            total_ns: 50,
            max_ns: 50,
            max_enter_ns: 9,
            max_pid: 8,
            read_errors: 1,
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!((a.calls, a.total_ns, a.max_ns, a.max_enter_ns, a.max_pid, a.read_errors), (4, 80, 50, 9, 8, 1));
        a.merge(&WriteStall { calls: 1, max_ns: 10, max_pid: 9, ..Default::default() });
        assert_eq!(a.max_pid, 8, "a shorter call does not take over");
    }
}
