//! Loop devices made with hcp's own ioctls, and filesystem freeze with its
//! guaranteed thaw, on a real kernel (the host's, and the guests').

use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hcp::error::Kind;
use hcp::kernel::freeze::{thaw_mount_point, Frozen};
use hcp::kernel::loopdev::{AttachOptions, LoopDevice};
use hcp_tests::{open_direct, pread_exact, pwrite_all, require_root, run, AlignedBuf};

const MIB: u64 = 1 << 20;

/// A fresh directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        use std::sync::atomic::AtomicU32;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hcp-loop-freeze-{}-{test}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(std::fs::canonicalize(&dir).expect("canonical temp dir"))
    }

    /// A sparse file of `size` bytes in the directory.
    fn sparse_file(&self, name: &str, size: u64) -> PathBuf {
        let path = self.0.join(name);
        File::create(&path).and_then(|f| f.set_len(size)).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loop device detached on drop unless the test detached it itself.
struct Attached(Option<LoopDevice>);

impl Attached {
    fn new(file: &Path, opts: AttachOptions) -> Attached {
        Attached(Some(LoopDevice::attach(file, opts).unwrap_or_else(|e| panic!("attach {}: {e}", file.display()))))
    }

    fn dev(&self) -> &LoopDevice {
        self.0.as_ref().expect("still attached")
    }

    fn take(&mut self) -> LoopDevice {
        self.0.take().expect("still attached")
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(dev) = self.0.take() {
            let _ = dev.detach();
        }
    }
}

/// A filesystem mounted on a directory; thawed (in case a test left it
/// frozen) and unmounted on drop.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(device: &Path, dir: &Path, fs_type: &str) -> Mounted {
        std::fs::create_dir_all(dir).expect("create mount point");
        let c = |s: &[u8]| std::ffi::CString::new(s).expect("no NUL");
        let (source, target, fs) =
            (c(device.as_os_str().as_bytes()), c(dir.as_os_str().as_bytes()), c(fs_type.as_bytes()));
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
        assert_eq!(rc, 0, "mount {} on {}: {}", device.display(), dir.display(), std::io::Error::last_os_error());
        Mounted { dir: dir.to_path_buf() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = thaw_mount_point(&self.dir);
        let target = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            // SAFETY: as above.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// An ext4 filesystem on a fresh loop device, mounted. Fields drop in
/// order: unmount, detach, remove the directory.
struct Ext4 {
    mount: Mounted,
    loop_dev: Attached,
    _dir: TempDir,
}

impl Ext4 {
    fn new(test: &str) -> Ext4 {
        let dir = TempDir::new(test);
        let image = dir.sparse_file("fs.img", 64 * MIB);
        let loop_dev = Attached::new(&image, AttachOptions::default());
        let device = loop_dev.dev().path.to_str().expect("utf-8 device path").to_string();
        run("/usr/sbin/mkfs.ext4", &["-q", "-F", &device]);
        let mount = Mounted::new(&loop_dev.dev().path, &dir.0.join("mnt"), "ext4");
        Ext4 { mount, loop_dev, _dir: dir }
    }

    fn mount_point(&self) -> &Path {
        &self.mount.dir
    }
}

/// A thread doing small `pwrite` + `fsync` rounds to a file, counting the
/// rounds completed; stopped and joined on drop.
struct Writer {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Writer {
    fn start(path: PathBuf) -> Writer {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (done.clone(), stop.clone());
        let thread = std::thread::spawn(move || -> std::io::Result<()> {
            let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            let block = [0x5au8; 4096];
            let mut round = 0u64;
            while !s.load(Ordering::Relaxed) {
                // Rewrites 64 blocks over and over, so the file stays small.
                file.write_all_at(&block, (round % 64) * 4096)?;
                file.sync_all()?;
                round += 1;
                d.store(round, Ordering::Release);
            }
            Ok(())
        });
        Writer { done, stop, thread: Some(thread) }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("not joined yet");
        thread.join().expect("writer thread panicked").expect("writer I/O");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sysfs(number: u32, attr: &str) -> String {
    let path = format!("/sys/block/loop{number}/{attr}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}")).trim().to_string()
}

/// Whether `device` is attached to `file` now. Compared with the file, not
/// just "attached", because a parallel test may reuse a freed device number.
fn attached_to(device: &Path, file: &Path) -> bool {
    LoopDevice::backing_file(device).expect("backing_file").as_deref() == Some(file)
}

#[test]
fn attach_write_grow_detach() {
    require_root();
    let dir = TempDir::new("attach");
    let file = dir.sparse_file("store.img", 64 * MIB);
    let mut attached = Attached::new(&file, AttachOptions::default());
    let dev = attached.dev();
    assert_eq!(dev.path, PathBuf::from(format!("/dev/loop{}", dev.number)));

    // Named both ways, the device reports the file.
    assert!(attached_to(&dev.path, &file), "backing_file of {}", dev.path.display());
    let devnum = dev.devnum().expect("devnum");
    assert_eq!(devnum.major, 7);
    assert_eq!(LoopDevice::backing_file(devnum).expect("backing_file by number").as_deref(), Some(file.as_path()));
    assert_eq!(LoopDevice::backing_file(Path::new("/dev/null")).expect("not a block device"), None);
    let found = LoopDevice::find_by_backing_file(&file).expect("find_by_backing_file");
    assert_eq!(found.iter().map(|d| d.number).collect::<Vec<_>>(), vec![dev.number]);
    assert_eq!(dev.size_bytes().expect("size"), 64 * MIB);

    // Blocks written through the device land in the file, and read back.
    let block = AlignedBuf::new(4096, 0xc3);
    let device = open_direct(&dev.path);
    pwrite_all(&device, &block, 5 * MIB);
    let mut back = AlignedBuf::new(4096, 0);
    pread_exact(&device, &mut back, 5 * MIB);
    assert_eq!(back.bytes(), block.bytes(), "read back through the loop device");
    drop(device);
    let mut in_file = vec![0u8; 4096];
    File::open(&file).and_then(|f| f.read_exact_at(&mut in_file, 5 * MIB)).expect("read the backing file");
    assert_eq!(&in_file[..], block.bytes(), "data in the backing file");

    // The file grows; the device follows after set_capacity.
    File::options().write(true).open(&file).and_then(|f| f.set_len(96 * MIB)).expect("grow the backing file");
    dev.set_capacity().expect("set_capacity");
    assert_eq!(sysfs(dev.number, "size"), (96 * MIB / 512).to_string());
    assert_eq!(dev.size_bytes().expect("size"), 96 * MIB);

    let dev = attached.take();
    let path = dev.path.clone();
    dev.detach().expect("detach");
    assert!(!attached_to(&path, &file), "{} still attached after detach", path.display());
    assert!(
        LoopDevice::find_by_backing_file(&file).expect("find_by_backing_file").is_empty(),
        "a loop device still has {}",
        file.display()
    );
}

#[test]
fn read_only_device_refuses_writes() {
    require_root();
    let dir = TempDir::new("ro");
    let file = dir.sparse_file("ro.img", 16 * MIB);
    let attached = Attached::new(&file, AttachOptions { read_only: true, ..AttachOptions::default() });
    let dev = attached.dev();
    assert_eq!(sysfs(dev.number, "ro"), "1");
    // Depending on the kernel the open or the write fails.
    let written = OpenOptions::new()
        .write(true)
        .open(&dev.path)
        .and_then(|f| f.write_all_at(&[1u8; 4096], 0).and_then(|()| f.sync_all()));
    assert!(written.is_err(), "a write to a read-only loop device succeeded");
}

#[test]
fn direct_io_attach() {
    require_root();
    let dir = TempDir::new("dio");
    let file = dir.sparse_file("dio.img", 16 * MIB);
    let attached = Attached::new(&file, AttachOptions { direct_io: true, ..AttachOptions::default() });
    let dev = attached.dev();
    // Direct I/O where the file's filesystem can do it (the host), buffered
    // where it cannot (the VM's overlay over tmpfs); the device works either way.
    let supported = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&file).is_ok();
    assert_eq!(sysfs(dev.number, "loop/dio"), if supported { "1" } else { "0" }, "O_DIRECT supported: {supported}");
    let block = AlignedBuf::new(4096, 0x17);
    let device = open_direct(&dev.path);
    pwrite_all(&device, &block, 0);
    let mut back = AlignedBuf::new(4096, 0);
    pread_exact(&device, &mut back, 0);
    assert_eq!(back.bytes(), block.bytes());
}

#[test]
fn autoclear_detaches_on_last_close() {
    require_root();
    let dir = TempDir::new("autoclear");
    let file = dir.sparse_file("auto.img", 16 * MIB);
    let autoclear = AttachOptions { autoclear: true, ..AttachOptions::default() };

    // Another opener (device-mapper, in hcp) keeps it attached after the
    // LoopDevice is dropped; its close detaches it.
    let mut attached = Attached::new(&file, autoclear);
    let dev = attached.take();
    let path = dev.path.clone();
    assert_eq!(sysfs(dev.number, "loop/autoclear"), "1");
    let opener = File::open(&path).expect("open the loop device");
    drop(dev);
    assert!(attached_to(&path, &file), "detached while still open elsewhere");
    drop(opener);
    wait_until("the autoclear device detaches", Duration::from_secs(5), || !attached_to(&path, &file));

    // With no other opener, dropping the LoopDevice detaches it.
    let mut attached = Attached::new(&file, autoclear);
    let dev = attached.take();
    let path = dev.path.clone();
    assert!(attached_to(&path, &file));
    drop(dev);
    wait_until("the unopened autoclear device detaches", Duration::from_secs(5), || !attached_to(&path, &file));
}

#[test]
fn freeze_holds_writers_until_thaw() {
    require_root();
    let fs = Ext4::new("freeze");
    let writer = Writer::start(fs.mount_point().join("data"));
    wait_until("the writer gets going", Duration::from_secs(10), || writer.done() >= 3);

    let frozen = Frozen::freeze(fs.mount_point()).expect("freeze");
    assert!(frozen.freeze_call > Duration::ZERO);
    // A round that was past its write when the freeze began may still finish.
    std::thread::sleep(Duration::from_millis(100));
    let first = writer.done();
    std::thread::sleep(Duration::from_millis(300));
    let second = writer.done();
    assert_eq!(first, second, "the writer completed rounds while the filesystem was frozen");

    let frozen_for = frozen.thaw().expect("thaw");
    assert!(frozen_for >= Duration::from_millis(400), "frozen for only {frozen_for:?}");
    wait_until("the writer resumes after the thaw", Duration::from_secs(10), || writer.done() > second);
    writer.finish();
}

#[test]
fn frozen_dropped_without_thaw_is_thawed() {
    require_root();
    let fs = Ext4::new("drop");
    let mount_point = fs.mount_point().to_path_buf();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _frozen = Frozen::freeze(&mount_point).expect("freeze");
        panic!("deliberate panic while {} is frozen", mount_point.display());
    }));
    assert!(outcome.is_err(), "the closure panics");

    // Writable again: a write + fsync finishes (on another thread, so a
    // filesystem left frozen fails the test instead of hanging it).
    let path = mount_point.join("after-panic");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = File::create(&path).and_then(|f| {
            f.write_all_at(b"thawed", 0)?;
            f.sync_all()
        });
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a write did not finish in 10 s: the filesystem was left frozen")
        .expect("write + fsync after the drop-thaw");
    assert!(!thaw_mount_point(&mount_point).expect("thaw_mount_point"), "the filesystem was still frozen");
}

#[test]
fn freeze_errors_name_the_problem() {
    require_root();
    let fs = Ext4::new("errors");
    let sub = fs.mount_point().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");

    let err = Frozen::freeze(&sub).expect_err("a directory that is not a mount point");
    assert_eq!(err.kind, Kind::Usage, "{err}");
    assert!(err.message().contains("not a mount point"), "{err}");

    let frozen = Frozen::freeze(fs.mount_point()).expect("freeze");
    let err = Frozen::freeze(fs.mount_point()).expect_err("freezing twice");
    assert_eq!(err.kind, Kind::Busy, "{err}");
    assert!(err.message().contains("already frozen"), "{err}");
    frozen.thaw().expect("thaw");

    let err = Frozen::freeze(Path::new("/proc")).expect_err("procfs cannot be frozen");
    assert_eq!(err.kind, Kind::Refused, "{err}");
    assert!(err.message().contains("does not support freezing"), "{err}");
    assert!(err.message().contains("(proc)"), "{err}");

    let err = Frozen::freeze(&fs.mount_point().join("missing")).expect_err("no such directory");
    assert_eq!(err.kind, Kind::NotFound, "{err}");

    // A mounted loop device is not detached behind the filesystem's back.
    let err = LoopDevice::from_number(fs.loop_dev.dev().number).detach().expect_err("detaching a mounted loop device");
    assert_eq!(err.kind, Kind::Busy, "{err}");
    assert!(err.message().contains("in use"), "{err}");
}
