//! The freeze window as the kernel sees it: the `FIFREEZE`, `FITHAW` and
//! `DM_DEV_SUSPEND` ioctls of any process, caught at the ioctl syscall
//! tracepoints (`syscalls:sys_enter_ioctl`, `syscalls:sys_exit_ioctl`).
//! There is no freeze or dm-suspend tracepoint; these two fire on every
//! kernel hcp supports and see LVM, `fsfreeze`, `dmsetup` and hcp alike.
//!
//! Each call becomes one [`FreezeEvent`] when it returns, carrying both its
//! entry and exit time (`bpf_ktime_get_ns`, i.e. `CLOCK_MONOTONIC`), so
//! user space can line the window up with I/O latency samples.

/// `_IOWR(ty, nr, size)` in the generic `_IOC` encoding (asm-generic/ioctl.h:
/// x86, arm64, riscv). The eBPF program cannot know the host's architecture
/// (its target is `bpf`), so these are the numbers of that encoding; powerpc,
/// mips and sparc lay the direction and size bits out differently.
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `FIFREEZE`, `_IOWR('X', 119, int)` in linux/fs.h.
pub const FIFREEZE: u32 = iowr(b'X', 119, 4);
/// `FITHAW`, `_IOWR('X', 120, int)`.
pub const FITHAW: u32 = iowr(b'X', 120, 4);

/// `DM_NAME_LEN` in linux/dm-ioctl.h, NUL included.
pub const DM_NAME_LEN: usize = 128;
/// `DM_UUID_LEN`.
pub const DM_UUID_LEN: usize = 129;

/// `struct dm_ioctl` of linux/dm-ioctl.h, only for its size and the offsets
/// of the fields the program reads; nothing builds one.
#[repr(C)]
#[allow(dead_code)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `DM_DEV_SUSPEND`, `_IOWR(DM_IOCTL = 0xfd, DM_DEV_SUSPEND_CMD = 6, struct
/// dm_ioctl)`: both suspend (with [`DM_SUSPEND_FLAG`]) and resume (without).
pub const DM_DEV_SUSPEND: u32 = iowr(0xfd, 6, core::mem::size_of::<DmIoctl>());
/// Offset of `__u32 flags` in `struct dm_ioctl`.
pub const DM_FLAGS_OFFSET: usize = core::mem::offset_of!(DmIoctl, flags);
/// Offset of `char name[DM_NAME_LEN]` in `struct dm_ioctl`.
pub const DM_NAME_OFFSET: usize = core::mem::offset_of!(DmIoctl, name);
/// `DM_SUSPEND_FLAG`: set in `flags` to suspend, clear to resume.
pub const DM_SUSPEND_FLAG: u32 = 1 << 1;

/// What a traced ioctl call did.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FreezeCall {
    /// `FIFREEZE`: writes are held from its entry; it returns once dirty
    /// data and the journal are on disk.
    Freeze = 0,
    /// `FITHAW`: writes go on once it returns.
    Thaw = 1,
    /// `DM_DEV_SUSPEND` with `DM_SUSPEND_FLAG`: I/O to the dm device is held.
    Suspend = 2,
    /// `DM_DEV_SUSPEND` without it: the device resumes, switching to its
    /// inactive table if one is loaded (which is also how a new device is
    /// first activated).
    Resume = 3,
}

impl FreezeCall {
    pub const ALL: [FreezeCall; 4] = [FreezeCall::Freeze, FreezeCall::Thaw, FreezeCall::Suspend, FreezeCall::Resume];

    pub fn from_u32(value: u32) -> Option<FreezeCall> {
        FreezeCall::ALL.into_iter().find(|c| *c as u32 == value)
    }

    /// Whether it is a dm call, which names a dm device.
    pub fn is_dm(self) -> bool {
        matches!(self, FreezeCall::Suspend | FreezeCall::Resume)
    }

    pub fn name(self) -> &'static str {
        match self {
            FreezeCall::Freeze => "freeze",
            FreezeCall::Thaw => "thaw",
            FreezeCall::Suspend => "suspend",
            FreezeCall::Resume => "resume",
        }
    }
}

/// One traced ioctl call, from entry to return: the record of the
/// `FREEZE_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreezeEvent {
    /// A [`FreezeCall`] as u32.
    pub call: u32,
    /// The process (thread group id): what the windows are paired within.
    pub pid: u32,
    /// The thread.
    pub tid: u32,
    /// The file descriptor the ioctl was issued on: the mount point's
    /// directory for freeze and thaw, `/dev/mapper/control` for dm calls.
    pub fd: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at syscall entry.
    pub enter_ns: u64,
    /// The same clock at syscall exit.
    pub exit_ns: u64,
    /// The syscall's return value: 0, or a negative errno.
    pub ret: i64,
    /// For dm calls, the device's name, NUL-padded; zero otherwise. A call
    /// that named the device by UUID or number (as LVM does) carries the
    /// name the kernel wrote back on success.
    pub dm_name: [u8; DM_NAME_LEN],
}

impl FreezeEvent {
    pub const fn zeroed() -> FreezeEvent {
        FreezeEvent { call: 0, pid: 0, tid: 0, fd: 0, enter_ns: 0, exit_ns: 0, ret: 0, dm_name: [0; DM_NAME_LEN] }
    }
}

/// A call between its entry and its return, in `FREEZE_INFLIGHT` keyed by
/// `pid_tgid` (a thread has at most one syscall in flight).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreezeInFlight {
    /// The `struct dm_ioctl` in user memory (dm calls), where the kernel
    /// writes the device's name back.
    pub arg: u64,
    /// What is known at entry; the exit fills in the rest.
    pub event: FreezeEvent,
}

/// Offsets of the fields read from the ioctl syscall tracepoints' records,
/// from their tracefs `format` files: the read-only global
/// `IOCTL_TP_LAYOUT`. Syscall arguments are stored 8 bytes wide whatever
/// their C type; the programs read the low 4 bytes of `fd` and `cmd`
/// (little-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoctlTpLayout {
    /// `sys_enter_ioctl`: `unsigned int fd`
    pub enter_fd: u32,
    /// `sys_enter_ioctl`: `unsigned int cmd`
    pub enter_cmd: u32,
    /// `sys_enter_ioctl`: `unsigned long arg`
    pub enter_arg: u32,
    /// `sys_exit_ioctl`: `long ret`
    pub exit_ret: u32,
}

/// What could not be recorded, in the single-entry per-CPU array
/// `FREEZE_LOSSES`. Reported with the events, so a missing call is visible.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreezeLosses {
    /// Calls whose record did not fit in the ring buffer (user space did not
    /// drain it in time).
    pub ring_full: u64,
    /// Calls not followed because the in-flight map was full.
    pub inflight_full: u64,
    /// Failed reads: of a tracepoint record field (the call is lost), of a
    /// `struct dm_ioctl` at entry (the call is lost: suspend or resume is
    /// unknown), or of the name written back at exit (the call is recorded
    /// without a name).
    pub read_errors: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays without padding holes.
    unsafe impl aya::Pod for super::FreezeEvent {}
    unsafe impl aya::Pod for super::FreezeInFlight {}
    unsafe impl aya::Pod for super::IoctlTpLayout {}
    unsafe impl aya::Pod for super::FreezeLosses {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_headers() {
        // Printed by a C program including linux/fs.h and linux/dm-ioctl.h
        // on x86_64.
        assert_eq!(FIFREEZE, 0xC004_5877);
        assert_eq!(FITHAW, 0xC004_5878);
        assert_eq!(core::mem::size_of::<DmIoctl>(), 312);
        assert_eq!(DM_DEV_SUSPEND, 0xC138_FD06);
        assert_eq!(DM_FLAGS_OFFSET, 28);
        assert_eq!(DM_NAME_OFFSET, 48);
        assert_eq!(core::mem::offset_of!(DmIoctl, uuid), 176);
    }

    #[test]
    fn records_have_no_padding() {
        assert_eq!(core::mem::size_of::<FreezeEvent>(), 4 * 4 + 3 * 8 + DM_NAME_LEN);
        assert_eq!(core::mem::size_of::<FreezeInFlight>(), 8 + core::mem::size_of::<FreezeEvent>());
    }

    #[test]
    fn calls_round_trip() {
        for call in FreezeCall::ALL {
            assert_eq!(FreezeCall::from_u32(call as u32), Some(call));
        }
        assert_eq!(FreezeCall::from_u32(4), None);
        assert!(FreezeCall::Resume.is_dm() && !FreezeCall::Thaw.is_dm());
    }
}
