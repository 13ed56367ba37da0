//! Attaching programs that are already loaded and pinned, with the
//! kernel's own calls: open the pin (`BPF_OBJ_GET`), attach, and pin the
//! link where it must outlive the command (`BPF_OBJ_PIN`).
//!
//! Why not aya's `from_pin` and `attach`: `from_pin` asks the kernel for
//! the program's name, and the first such question in a process makes aya
//! probe some twenty kernel features (BTF loads, program loads, map
//! creates) that a program loaded and verified long before never needs;
//! that, and aya's generic link bookkeeping, took 30-50 ms of every traced
//! start in the 6.12 guest. Loading stays with aya (`object`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};

// The bpf(2) commands used here (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;

/// `bpf_attr` as `BPF_OBJ_PIN` and `BPF_OBJ_GET` read it.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `bpf_attr` as `BPF_RAW_TRACEPOINT_OPEN` reads it.
#[repr(C)]
#[derive(Default)]
struct RawTracepointAttr {
    /// A tracepoint's name; 0 for a BTF-typed program (`tp_btf`), which
    /// names its tracepoint in its own `attach_btf_id`.
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// The first 64 bytes of `perf_event_attr` (`PERF_ATTR_SIZE_VER0`), all a
/// tracepoint event needs; the kernel zeroes the rest.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The bitfield (`disabled`, `inherit`, ...): all 0, enabled at open.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
// _IO('$', 0) and _IOW('$', 8, __u32) (include/uapi/linux/perf_event.h).
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// bpf(2) with `attr`; the new file descriptor (or 0) it returns.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a `bpf_attr` prefix of its own size, as the kernel
    // reads it for `cmd`; any pointer in it outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A descriptor a call just returned, owned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a new descriptor the kernel returned to this caller only.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).with_context(|| format!("{} holds a NUL byte", path.display()))
}

/// The BPF object (program, map or link) pinned at `path`.
pub fn get_pinned(path: &Path) -> Result<OwnedFd> {
    let name = c_path(path)?;
    let mut attr = ObjAttr { pathname: name.as_ptr() as u64, ..ObjAttr::default() };
    let fd = bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("opening pinned {}", path.display()))?;
    Ok(owned(fd))
}

/// Pins the BPF object `fd` at `path`, where it lives on without a process.
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let name = c_path(path)?;
    let mut attr = ObjAttr { pathname: name.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..ObjAttr::default() };
    bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}

/// Attaches a loaded `tp_btf` program to the tracepoint it was loaded for;
/// the link, which detaches it when its last reference goes.
pub fn btf_tracepoint(program: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut attr = RawTracepointAttr { prog_fd: program.as_raw_fd() as u32, ..RawTracepointAttr::default() };
    Ok(owned(bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)?))
}

/// Attaches a loaded tracepoint program to `category:event` (its id read
/// under `tracefs`) through a perf event on CPU 0, as bcc does: the
/// program runs on every CPU, the event only carries it. The event, which
/// detaches the program when closed.
pub fn tracepoint(program: BorrowedFd<'_>, tracefs: &Path, category: &str, event: &str) -> Result<OwnedFd> {
    let id_path = tracefs.join("events").join(category).join(event).join("id");
    let id: u64 = std::fs::read_to_string(&id_path)
        .with_context(|| format!("reading {}", id_path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {}", id_path.display()))?;
    let mut attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    let (pid, cpu, group) = (-1, 0, -1);
    // SAFETY: a valid perf_event_attr of the size it gives.
    let fd = unsafe {
        libc::syscall(libc::SYS_perf_event_open, &mut attr as *mut PerfEventAttr, pid, cpu, group, PERF_FLAG_FD_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("opening a perf event on {category}:{event}"));
    }
    let event_fd = owned(fd);
    for (request, arg, what) in [
        (PERF_EVENT_IOC_SET_BPF, program.as_raw_fd(), "setting the program on"),
        (PERF_EVENT_IOC_ENABLE, 0, "enabling"),
    ] {
        // SAFETY: a perf event descriptor and an integer argument.
        if unsafe { libc::ioctl(event_fd.as_raw_fd(), request, arg) } != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("{what} {category}:{event}"));
        }
    }
    Ok(event_fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<ObjAttr>(), 16);
        assert_eq!(std::mem::size_of::<RawTracepointAttr>(), 16);
        // PERF_ATTR_SIZE_VER0
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 64);
    }

    #[test]
    fn ioctl_numbers_follow_the_kernels_macros() {
        // _IO(type, nr) and _IOW(type, nr, size) of asm-generic/ioctl.h.
        let io = |kind: u8, nr: libc::c_ulong| (libc::c_ulong::from(kind) << 8) | nr;
        let iow = |kind: u8, nr: libc::c_ulong, size: libc::c_ulong| (1 << 30) | (size << 16) | io(kind, nr);
        assert_eq!(PERF_EVENT_IOC_ENABLE, io(b'$', 0));
        assert_eq!(PERF_EVENT_IOC_SET_BPF, iow(b'$', 8, 4));
    }
}
