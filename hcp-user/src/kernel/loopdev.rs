//! Loop devices, attached and detached with the loop driver's own ioctls.
//!
//! hcp keeps a snapshot's changed blocks (the copy-on-write store) in an
//! ordinary file, but device-mapper's snapshot target needs a block device
//! for its exception store, so the file is attached to a loop device.
//!
//! A [`LoopDevice`] is a name for an attached device, not an owner of it:
//! a snapshot session outlives the hcp process that made it, so nothing here
//! detaches on drop. [`LoopDevice::detach`] is explicit; a device attached
//! with [`AttachOptions::autoclear`] is detached by the kernel itself when its
//! last opener closes it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::kernel::devnum::DevNum;

/// The block major of loop devices (`LOOP_MAJOR` in linux/major.h).
pub const LOOP_MAJOR: u32 = 7;

const LOOP_CONTROL: &str = "/dev/loop-control";
/// `/dev/loop-control` is misc device 10:237 (`LOOP_CTRL_MINOR`).
const MISC_MAJOR: u32 = 10;
const LOOP_CTRL_MINOR: u32 = 237;

// Request numbers from linux/loop.h. They predate the _IOC encoding, so they
// are the same on every architecture.
const LOOP_SET_FD: libc::Ioctl = 0x4C00;
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_SET_STATUS64: libc::Ioctl = 0x4C04;
const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;
const LOOP_SET_CAPACITY: libc::Ioctl = 0x4C07;
const LOOP_SET_DIRECT_IO: libc::Ioctl = 0x4C08;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
/// The flags `LOOP_SET_STATUS64` accepts (`LOOP_SET_STATUS_SETTABLE_FLAGS`
/// without partition scanning, which hcp never wants on a store).
const LO_FLAGS_SET_STATUS_SETTABLE: u32 = LO_FLAGS_AUTOCLEAR;

/// How often [`LoopDevice::attach`] starts over when another process takes
/// the device `LOOP_CTL_GET_FREE` handed out before we could configure it.
const ATTACH_ATTEMPTS: u32 = 8;
/// How often [`LoopDevice::detach`] repeats `LOOP_CLR_FD` on kernels that
/// answer EBUSY while a transient opener (udev's probe) has the device open.
const DETACH_ATTEMPTS: u32 = 20;

/// `struct loop_info64` from linux/loop.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` from linux/loop.h, the argument of `LOOP_CONFIGURE`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

impl LoopInfo64 {
    fn zeroed() -> LoopInfo64 {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// How to attach a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// The device refuses writes (and the file is opened read-only).
    pub read_only: bool,
    /// The loop driver reads and writes the file with direct I/O, so store
    /// blocks are not cached twice (once for the loop device, once for the
    /// file). Asked only where the file opens with `O_DIRECT`: on a file the
    /// kernel cannot do it for (overlayfs over tmpfs, on 6.1) it can accept
    /// the flag and then fail every I/O. `/sys/block/loopN/loop/dio` says
    /// which mode won.
    pub direct_io: bool,
    /// The kernel detaches the device when its last opener closes it
    /// (`LO_FLAGS_AUTOCLEAR`). hcp attaches stores this way so that removing
    /// the device-mapper snapshot, which is the store's only long-term
    /// opener, also frees the loop device, whoever removes it (hcp, dmsetup,
    /// a reboot script) and even if the hcp that attached it is long gone;
    /// no loop device is left pinning a deleted store file.
    ///
    /// The returned [`LoopDevice`] keeps the device open until it is dropped,
    /// so the device stays attached while the caller hands it to
    /// device-mapper; dropping it before anything else has opened the device
    /// detaches it.
    pub autoclear: bool,
}

/// A block device named by its node or by its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device<'a> {
    Node(&'a Path),
    Number(DevNum),
}

impl<'a> From<&'a Path> for Device<'a> {
    fn from(path: &'a Path) -> Device<'a> {
        Device::Node(path)
    }
}

impl<'a> From<&'a PathBuf> for Device<'a> {
    fn from(path: &'a PathBuf) -> Device<'a> {
        Device::Node(path)
    }
}

impl From<DevNum> for Device<'_> {
    fn from(dev: DevNum) -> Device<'static> {
        Device::Number(dev)
    }
}

/// The identity of a backing file, as `LOOP_GET_STATUS64` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId { dev: meta.dev(), ino: meta.ino() }
    }
}

/// An attached loop device, `/dev/loop<number>`.
///
/// Dropping it does not detach the device (see the module documentation).
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    pub number: u32,
    /// The backing file this value was attached to or found by, checked again
    /// before detaching so that a device number the kernel has since reused
    /// for someone else's file is left alone.
    backing: Option<FileId>,
    /// An open handle on an autoclear device, which keeps it attached until
    /// this value is dropped (see [`AttachOptions::autoclear`]).
    hold: Option<File>,
}

impl LoopDevice {
    /// Attaches `file` (a regular file or a block device) to a free loop
    /// device.
    ///
    /// Uses `LOOP_CONFIGURE` (Linux 5.8), which binds the file and sets the
    /// flags and name in one step, so no other process ever sees the device
    /// half-configured; older kernels get `LOOP_SET_FD` then
    /// `LOOP_SET_STATUS64`. If another process binds the device
    /// `LOOP_CTL_GET_FREE` handed out before we do (the kernel answers EBUSY),
    /// this asks for another one, a few times.
    pub fn attach(file: &Path, opts: AttachOptions) -> Result<LoopDevice> {
        let backing_path =
            std::fs::canonicalize(file).map_err(|e| Error::io(format!("loop backing file {}", file.display()), e))?;
        let backing = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&backing_path)
            .map_err(|e| Error::io(format!("opening loop backing file {}", backing_path.display()), e))?;
        let meta =
            backing.metadata().map_err(|e| Error::io(format!("loop backing file {}", backing_path.display()), e))?;
        if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
            return Err(Error::usage(format!(
                "{} is neither a regular file nor a block device, so it cannot back a loop device; name a file",
                backing_path.display()
            )));
        }
        let opts = AttachOptions { direct_io: opts.direct_io && opens_direct(&backing_path), ..opts };
        let control = open_loop_control()?;

        for attempt in 0..ATTACH_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(10 * u64::from(attempt)));
            }
            let number = get_free(&control)?;
            let path = ensure_node(Path::new("/dev"), number, sysfs_devnum(number))?;
            let device = match open_device(&path, !opts.read_only, false) {
                Ok(device) => device,
                // Bound and being torn down by someone else between
                // LOOP_CTL_GET_FREE and our open: ask for another.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => continue,
                Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
            };
            match configure(&device, &backing, &backing_path, opts) {
                Ok(()) => {
                    return Ok(LoopDevice {
                        path,
                        number,
                        backing: Some(FileId::of(&meta)),
                        hold: opts.autoclear.then_some(device),
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
                Err(e) => {
                    return Err(Error::io(format!("attaching {} to {}", backing_path.display(), path.display()), e))
                }
            }
        }
        Err(Error::busy(format!(
            "attaching {}: other processes took each of the {ATTACH_ATTEMPTS} free loop devices offered before \
             it could be configured; retry when fewer loop devices are being set up",
            backing_path.display()
        )))
    }

    /// `/dev/loop<number>`, unchecked: nothing is opened or verified.
    /// [`LoopDevice::detach`] on such a value detaches whatever is attached
    /// to that number; prefer [`LoopDevice::find_by_backing_file`], which
    /// remembers the file and checks it again before detaching.
    pub fn from_number(number: u32) -> LoopDevice {
        LoopDevice { path: node_path(Path::new("/dev"), number), number, backing: None, hold: None }
    }

    /// The device number, from `/sys/block/loopN/dev` (the minor is not
    /// always N: with the loop driver's `max_part` it is N shifted left).
    pub fn devnum(&self) -> Result<DevNum> {
        match sysfs_devnum(self.number) {
            Some(dev) => Ok(dev),
            None => {
                let meta = std::fs::metadata(&self.path)
                    .map_err(|e| Error::io(format!("loop device {}", self.path.display()), e))?;
                Ok(DevNum::from_user(meta.rdev()))
            }
        }
    }

    /// The device's size in bytes, from `/sys/block/loopN/size`.
    pub fn size_bytes(&self) -> Result<u64> {
        let path = PathBuf::from(format!("/sys/block/loop{}/size", self.number));
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
        let sectors: u64 = text
            .trim()
            .parse()
            .map_err(|_| Error::system(format!("{}: not a sector count: {:?}", path.display(), text.trim())))?;
        Ok(sectors * 512)
    }

    /// Detaches the device (`LOOP_CLR_FD`).
    ///
    /// Refused with [`Kind::Busy`](crate::error::Kind::Busy) while the device
    /// is mounted or has a device-mapper device on it: both hold it
    /// exclusively, so our exclusive open fails. Other, non-exclusive openers
    /// do not block it: since Linux 3.7 the kernel then only marks the device
    /// autoclear and detaches it when the last of them closes. Older kernels
    /// answered EBUSY instead, most often because udev's blkid probe had the
    /// new device open for a moment, so EBUSY is retried for a while.
    pub fn detach(mut self) -> Result<()> {
        // Closed only after LOOP_CLR_FD, so an autoclear device is not
        // detached (and its number reused) under us before we check it.
        let _hold = self.hold.take();
        let device = match open_device(&self.path, false, true) {
            Ok(device) => device,
            Err(e) => {
                return Err(match e.raw_os_error() {
                    Some(libc::EBUSY) => Error::busy(format!(
                        "cannot detach {}: it is in use ({}); unmount it or remove the device stacked on it first",
                        self.path.display(),
                        users(self.number)
                    )),
                    Some(libc::ENXIO) | Some(libc::ENOENT) => Error::not_found(format!(
                        "{} is not attached (it is being detached already)",
                        self.path.display()
                    )),
                    _ => Error::io(format!("opening {}", self.path.display()), e),
                })
            }
        };
        if let Some(expected) = self.backing {
            match status(&device) {
                Ok(info) => {
                    let found = FileId { dev: info.lo_device, ino: info.lo_inode };
                    if found != expected {
                        return Err(Error::refused(format!(
                            "{} is now attached to another file ({}), not the one this handle was made for; \
                             leaving it alone",
                            self.path.display(),
                            LoopDevice::backing_file(&self.path)
                                .ok()
                                .flatten()
                                .map_or_else(|| "unknown".to_string(), |p| p.display().to_string())
                        )));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Err(not_attached(&self.path)),
                Err(e) => return Err(Error::io(format!("reading the status of {}", self.path.display()), e)),
            }
        }
        for attempt in 0..DETACH_ATTEMPTS {
            // SAFETY: LOOP_CLR_FD takes no argument.
            match unsafe { ioctl_value(&device, LOOP_CLR_FD, 0) } {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Err(not_attached(&self.path)),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt + 1 < DETACH_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(Error::io(
                        format!(
                            "detaching {} (another process has it open: {})",
                            self.path.display(),
                            users(self.number)
                        ),
                        e,
                    ))
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// The file attached to `device`, from `/sys/dev/block/M:m/loop/backing_file`;
    /// `None` when it is not a loop device or nothing is attached.
    ///
    /// This is the kernel's path of the open file: if the file has been
    /// deleted since, it ends in " (deleted)".
    pub fn backing_file<'a>(device: impl Into<Device<'a>>) -> Result<Option<PathBuf>> {
        let dev = match device.into() {
            Device::Number(dev) => dev,
            Device::Node(path) => {
                let meta = std::fs::metadata(path).map_err(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Error::not_found(format!("{}: no such device node", path.display()))
                    } else {
                        Error::io(path.display(), e)
                    }
                })?;
                if !meta.file_type().is_block_device() {
                    return Ok(None);
                }
                DevNum::from_user(meta.rdev())
            }
        };
        read_backing_file(&PathBuf::from(format!("/sys/dev/block/{dev}")))
    }

    /// Re-reads the backing file's size (`LOOP_SET_CAPACITY`), after the file
    /// has grown, so the device grows with it while in use.
    pub fn set_capacity(&self) -> Result<()> {
        let opened;
        let device = match &self.hold {
            Some(hold) => hold,
            None => {
                opened = open_device(&self.path, false, false)
                    .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))?;
                &opened
            }
        };
        // SAFETY: LOOP_SET_CAPACITY takes no argument.
        match unsafe { ioctl_value(device, LOOP_SET_CAPACITY, 0) } {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Err(not_attached(&self.path)),
            Err(e) => Err(Error::io(format!("resizing {} to its backing file", self.path.display()), e)),
        }
    }

    /// Every loop device `file` is attached to, by number. A device matches
    /// when its backing path is `file`'s canonical path or names the same
    /// inode (a file reached through another mount or a renamed file).
    pub fn find_by_backing_file(file: &Path) -> Result<Vec<LoopDevice>> {
        let meta =
            std::fs::metadata(file).map_err(|e| Error::io(format!("loop backing file {}", file.display()), e))?;
        let id = FileId::of(&meta);
        let canonical = std::fs::canonicalize(file).map_err(|e| Error::io(file.display(), e))?;
        let entries = std::fs::read_dir("/sys/block").map_err(|e| Error::io("listing /sys/block", e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing /sys/block", e))?;
            let Some(number) = loop_number(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let Some(backing) = read_backing_file(&entry.path())? else {
                continue;
            };
            let same = backing == canonical || std::fs::metadata(&backing).is_ok_and(|m| FileId::of(&m) == id);
            if same {
                found.push(LoopDevice {
                    path: node_path(Path::new("/dev"), number),
                    number,
                    backing: Some(id),
                    hold: None,
                });
            }
        }
        found.sort_by_key(|d| d.number);
        Ok(found)
    }
}

fn not_attached(path: &Path) -> Error {
    Error::not_found(format!("{} is not attached to a file", path.display()))
}

/// `loop<N>` → N; anything else (including partitions `loop0p1`) → None.
fn loop_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("loop")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn node_path(dev_dir: &Path, number: u32) -> PathBuf {
    dev_dir.join(format!("loop{number}"))
}

/// `<sysfs device dir>/loop/backing_file`, None when absent (not a loop
/// device, or not attached: the `loop` directory exists only while bound).
fn read_backing_file(sysfs_dir: &Path) -> Result<Option<PathBuf>> {
    let path = sysfs_dir.join("loop/backing_file");
    match std::fs::read(&path) {
        Ok(mut bytes) => {
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
        }
        // ENXIO: detached between the lookup and the read.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// `/sys/block/loopN/dev` ("7:3"), None when unreadable.
fn sysfs_devnum(number: u32) -> Option<DevNum> {
    let text = std::fs::read_to_string(format!("/sys/block/loop{number}/dev")).ok()?;
    text.trim().parse().ok()
}

/// `lo_file_name`: the path's first bytes, NUL-terminated, cut at a
/// character boundary so readers never see half a UTF-8 sequence. Purely a
/// label (`losetup` shows it); the full path is in sysfs.
fn file_name_field(path: &Path) -> [u8; LO_NAME_SIZE] {
    let bytes = path.as_os_str().as_bytes();
    let mut len = bytes.len().min(LO_NAME_SIZE - 1);
    if let Ok(text) = std::str::from_utf8(bytes) {
        while !text.is_char_boundary(len) {
            len -= 1;
        }
    }
    let mut field = [0u8; LO_NAME_SIZE];
    field[..len].copy_from_slice(&bytes[..len]);
    field
}

fn config_flags(opts: AttachOptions) -> u32 {
    let mut flags = 0;
    if opts.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if opts.autoclear {
        flags |= LO_FLAGS_AUTOCLEAR;
    }
    if opts.direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    flags
}

/// Whether `path` can be opened for direct I/O.
fn opens_direct(path: &Path) -> bool {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECT | libc::O_CLOEXEC).open(path).is_ok()
}

/// Binds `backing` to the open loop device.
fn configure(device: &File, backing: &File, backing_path: &Path, opts: AttachOptions) -> io::Result<()> {
    let mut info = LoopInfo64::zeroed();
    info.lo_flags = config_flags(opts);
    info.lo_file_name = file_name_field(backing_path);
    let config = LoopConfig { fd: backing.as_raw_fd() as u32, block_size: 0, info, reserved: [0; 8] };
    // SAFETY: LOOP_CONFIGURE reads a struct loop_config, which `config` is.
    match unsafe { ioctl_ptr(device, LOOP_CONFIGURE, &config) } {
        Ok(_) => Ok(()),
        // Kernels before 5.8 do not know LOOP_CONFIGURE.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) => {
            configure_legacy(device, backing, info, opts)
        }
        Err(e) => Err(e),
    }
}

/// `LOOP_SET_FD`, then `LOOP_SET_STATUS64` for the name and flags.
fn configure_legacy(device: &File, backing: &File, mut info: LoopInfo64, opts: AttachOptions) -> io::Result<()> {
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor as its argument.
    unsafe { ioctl_value(device, LOOP_SET_FD, backing.as_raw_fd() as libc::c_ulong) }?;
    // LOOP_SET_FD makes the device read-only by itself when the file or the
    // device is open read-only, which they are for `read_only`.
    info.lo_flags &= LO_FLAGS_SET_STATUS_SETTABLE;
    // SAFETY: LOOP_SET_STATUS64 reads a struct loop_info64, which `info` is.
    if let Err(e) = unsafe { ioctl_ptr(device, LOOP_SET_STATUS64, &info) } {
        // SAFETY: LOOP_CLR_FD takes no argument.
        let _ = unsafe { ioctl_value(device, LOOP_CLR_FD, 0) };
        return Err(e);
    }
    if opts.direct_io {
        // Best effort, as with LOOP_CONFIGURE: kernels before 4.4 lack it and
        // some filesystems cannot do direct I/O.
        // SAFETY: LOOP_SET_DIRECT_IO takes an integer argument.
        let _ = unsafe { ioctl_value(device, LOOP_SET_DIRECT_IO, 1) };
    }
    Ok(())
}

fn status(device: &File) -> io::Result<LoopInfo64> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: LOOP_GET_STATUS64 writes a struct loop_info64 into `info`.
    unsafe { ioctl_ptr(device, LOOP_GET_STATUS64, (&mut info as *mut LoopInfo64).cast_const()) }?;
    Ok(info)
}

/// Opens `/dev/loop-control`, creating the node when there is none (a
/// `/dev` without devtmpfs or udev).
fn open_loop_control() -> Result<File> {
    let open = || OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(LOOP_CONTROL);
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            mknod(Path::new(LOOP_CONTROL), libc::S_IFCHR, DevNum { major: MISC_MAJOR, minor: LOOP_CTRL_MINOR })?;
            open()
        }
        other => other,
    };
    file.map_err(|e| {
        Error::io(format!("opening {LOOP_CONTROL} (is the loop driver built in or loaded? modprobe loop)"), e)
    })
}

fn get_free(control: &File) -> Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
    let number = unsafe { ioctl_value(control, LOOP_CTL_GET_FREE, 0) }.map_err(|e| {
        Error::io(format!("finding a free loop device ({LOOP_CONTROL}; the loop driver's max_loop may be reached)"), e)
    })?;
    u32::try_from(number).map_err(|_| Error::system(format!("{LOOP_CONTROL} returned loop device {number}")))
}

/// Makes sure `<dev_dir>/loop<number>` is the block device node for `dev`
/// (when known), creating it when missing; returns its path.
fn ensure_node(dev_dir: &Path, number: u32, dev: Option<DevNum>) -> Result<PathBuf> {
    let path = node_path(dev_dir, number);
    let dev = dev.unwrap_or(DevNum { major: LOOP_MAJOR, minor: number });
    match std::fs::metadata(&path) {
        Ok(meta) if meta.file_type().is_block_device() => {
            let found = DevNum::from_user(meta.rdev());
            if found != dev {
                return Err(Error::system(format!(
                    "{} is block device {found}, but loop device {number} is {dev}; remove the stale node",
                    path.display()
                )));
            }
            Ok(path)
        }
        Ok(_) => Err(Error::system(format!(
            "{} exists but is not a block device; remove it so the loop device node can be made",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            mknod(&path, libc::S_IFBLK, dev)?;
            Ok(path)
        }
        Err(e) => Err(Error::io(path.display(), e)),
    }
}

/// Creates a device node, mode 0660; one made meanwhile by someone else
/// (udev, another hcp) is fine.
fn mknod(path: &Path, kind: libc::mode_t, dev: DevNum) -> Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::usage(format!("{}: path contains a NUL byte", path.display())))?;
    // SAFETY: c_path is a valid NUL-terminated string.
    let rc = unsafe { libc::mknod(c_path.as_ptr(), kind | 0o660, libc::makedev(dev.major, dev.minor)) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(Error::io(format!("creating device node {} ({dev})", path.display()), err));
        }
    }
    Ok(())
}

fn open_device(path: &Path, write: bool, exclusive: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if exclusive {
        // On a block device, O_EXCL fails with EBUSY while the device is
        // mounted or claimed by device-mapper, md and the like.
        flags |= libc::O_EXCL;
    }
    OpenOptions::new().read(true).write(write).custom_flags(flags).open(path)
}

/// Who is on loop device `number`, for messages: its sysfs holders, or a hint.
fn users(number: u32) -> String {
    let holders: Vec<String> = std::fs::read_dir(format!("/sys/block/loop{number}/holders"))
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if holders.is_empty() {
        "mounted, or opened exclusively by another program".to_string()
    } else {
        format!("held by {}", holders.join(", "))
    }
}

/// ioctl with an integer argument.
///
/// # Safety
/// `request` must take an integer argument (or none).
unsafe fn ioctl_value(fd: &File, request: libc::Ioctl, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    let rc = libc::ioctl(fd.as_raw_fd(), request, arg);
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// ioctl with a pointer argument.
///
/// # Safety
/// `request` must read (and, through a `*mut`, may write) exactly a `T`.
unsafe fn ioctl_ptr<T>(fd: &File, request: libc::Ioctl, arg: *const T) -> io::Result<libc::c_int> {
    let rc = libc::ioctl(fd.as_raw_fd(), request, arg);
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn structs_match_linux_loop_h() {
        assert_eq!(size_of::<LoopInfo64>(), 232);
        assert_eq!(offset_of!(LoopInfo64, lo_number), 40);
        assert_eq!(offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(offset_of!(LoopInfo64, lo_file_name), 56);
        assert_eq!(offset_of!(LoopInfo64, lo_crypt_name), 120);
        assert_eq!(offset_of!(LoopInfo64, lo_encrypt_key), 184);
        assert_eq!(offset_of!(LoopInfo64, lo_init), 216);
        assert_eq!(size_of::<LoopConfig>(), 304);
        assert_eq!(offset_of!(LoopConfig, info), 8);
        assert_eq!(offset_of!(LoopConfig, reserved), 240);
    }

    #[test]
    fn ioctl_numbers_match_linux_loop_h() {
        assert_eq!([LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS64, LOOP_GET_STATUS64], [0x4C00, 0x4C01, 0x4C04, 0x4C05]);
        assert_eq!(
            [LOOP_SET_CAPACITY, LOOP_SET_DIRECT_IO, LOOP_CONFIGURE, LOOP_CTL_GET_FREE],
            [0x4C07, 0x4C08, 0x4C0A, 0x4C82]
        );
    }

    #[test]
    fn flags_follow_options() {
        assert_eq!(config_flags(AttachOptions::default()), 0);
        let all = AttachOptions { read_only: true, direct_io: true, autoclear: true };
        assert_eq!(config_flags(all), 1 | 4 | 16);
        // Only autoclear survives into LOOP_SET_STATUS64 on old kernels.
        assert_eq!(config_flags(all) & LO_FLAGS_SET_STATUS_SETTABLE, 4);
    }

    #[test]
    fn file_name_is_nul_terminated_and_cut_at_a_char_boundary() {
        let short = file_name_field(Path::new("/var/lib/hcp/store"));
        assert_eq!(&short[..18], b"/var/lib/hcp/store");
        assert!(short[18..].iter().all(|&b| b == 0));

        let long = format!("/{}", "x".repeat(100));
        let field = file_name_field(Path::new(&long));
        assert_eq!(&field[..63], &long.as_bytes()[..63]);
        assert_eq!(field[63], 0);

        // 62 ASCII bytes then 'é' (2 bytes): byte 63 would split it.
        let accented = format!("/{}é", "a".repeat(61));
        let field = file_name_field(Path::new(&accented));
        assert_eq!(&field[..62], &accented.as_bytes()[..62]);
        assert_eq!(field[62], 0);
        assert!(std::str::from_utf8(&field[..62]).is_ok());

        // Not UTF-8 at all: plain byte cut.
        let raw = std::ffi::OsStr::from_bytes(&[0xff; 80]);
        let field = file_name_field(Path::new(raw));
        assert_eq!(&field[..63], &[0xff; 63]);
        assert_eq!(field[63], 0);
    }

    #[test]
    fn loop_names() {
        assert_eq!(loop_number("loop0"), Some(0));
        assert_eq!(loop_number("loop127"), Some(127));
        assert_eq!(loop_number("loop0p1"), None);
        assert_eq!(loop_number("loop"), None);
        assert_eq!(loop_number("loop-control"), None);
        assert_eq!(loop_number("sda"), None);
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// The pre-5.8 path, which the kernels hcp is tested on never take.
    #[test]
    fn legacy_configure_attaches_with_name_and_flags() {
        if !is_root() {
            eprintln!("skipped: attaching a loop device needs root");
            return;
        }
        let file = std::env::temp_dir().join(format!("hcp-loopdev-legacy-{}.img", std::process::id()));
        File::create(&file).and_then(|f| f.set_len(1 << 20)).unwrap();
        let backing = OpenOptions::new().read(true).write(true).open(&file).unwrap();
        let control = open_loop_control().unwrap();
        let opts = AttachOptions { autoclear: true, ..AttachOptions::default() };
        let mut info = LoopInfo64::zeroed();
        info.lo_flags = config_flags(opts);
        info.lo_file_name = file_name_field(&file);
        // Another process may take the free device first: retry like attach.
        let (number, device) = (0..ATTACH_ATTEMPTS)
            .find_map(|_| {
                let number = get_free(&control).unwrap();
                let path = ensure_node(Path::new("/dev"), number, sysfs_devnum(number)).unwrap();
                let device = open_device(&path, true, false).ok()?;
                match configure_legacy(&device, &backing, info, opts) {
                    Ok(()) => Some((number, device)),
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => None,
                    Err(e) => panic!("legacy configure of loop{number}: {e}"),
                }
            })
            .expect("a free loop device");
        let got = status(&device).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((got.lo_device, got.lo_inode), (meta.dev(), meta.ino()));
        assert_eq!(got.lo_flags & LO_FLAGS_AUTOCLEAR, LO_FLAGS_AUTOCLEAR);
        assert_eq!(&got.lo_file_name[..], &file_name_field(&file)[..]);
        let sysfs = PathBuf::from(format!("/sys/block/loop{number}"));
        assert_eq!(read_backing_file(&sysfs).unwrap().as_deref(), Some(file.as_path()));
        // Autoclear: closing the only opener detaches it.
        drop(device);
        assert_ne!(read_backing_file(&sysfs).unwrap().as_deref(), Some(file.as_path()));
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn missing_node_is_created() {
        if !is_root() {
            eprintln!("skipped: mknod needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("hcp-loopdev-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = DevNum { major: 7, minor: 200 };
        let path = ensure_node(&dir, 200, Some(dev)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_block_device());
        assert_eq!(DevNum::from_user(meta.rdev()), dev);
        // Present and right: kept.
        assert_eq!(ensure_node(&dir, 200, Some(dev)).unwrap(), path);
        // Present and wrong: refused.
        let err = ensure_node(&dir, 200, Some(DevNum { major: 7, minor: 201 })).unwrap_err();
        assert!(err.message().contains("stale node"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
