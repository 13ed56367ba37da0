//! The freeze window as the kernel sees it: the ioctl tracepoint programs
//! record exactly the FIFREEZE/FITHAW of this process (host and guests), and
//! the DM_DEV_SUSPEND calls of a dm device, named either way (guests only).

use std::path::PathBuf;
use std::time::Duration;

use devicemapper::{DevId, DmFlags, DmOptions, DmUuid, DM};
use hcp::common::freeze::FreezeCall;
use hcp::kernel::dm::device::{Dm, Suspend};
use hcp::kernel::dm::table::{Linear, TargetParams};
use hcp::kernel::freeze::{thaw_mount_point, Frozen};
use hcp::tracer::freeze_trace::{monotonic_ns, windows, Call, FreezeTracer, ProcessWindows};
use hcp_tests::{require_root, run, LoopDevice};

const MS: u64 = 1_000_000;

/// An ext4 on a loop device, mounted on a fresh directory; thawed (should
/// a test have left it frozen), unmounted and removed on drop.
struct Ext4 {
    mount_point: PathBuf,
    loop_dev: LoopDevice,
}

impl Ext4 {
    fn new() -> Ext4 {
        let loop_dev = LoopDevice::new(64 << 20);
        let device = loop_dev.path.to_str().expect("utf-8 device path");
        run("/usr/sbin/mkfs.ext4", &["-q", "-F", device]);
        // Tests of this binary run in parallel, each with its own.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mount_point = std::env::temp_dir().join(format!("hcp-freeze-trace-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&mount_point).expect("create mount point");
        run("mount", &[device, mount_point.to_str().expect("utf-8 path")]);
        Ext4 { mount_point, loop_dev }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = thaw_mount_point(&self.mount_point);
        let _ = std::process::Command::new("umount").arg(&self.mount_point).status();
        let _ = std::fs::remove_dir(&self.mount_point);
    }
}

/// The calls of this thread (tests of this binary run on parallel threads
/// of one process), decoded, and their windows.
fn mine(tracer: &mut FreezeTracer) -> (Vec<Call>, ProcessWindows) {
    // SAFETY: no preconditions.
    let me = unsafe { libc::gettid() } as u32;
    let events: Vec<_> =
        tracer.events().expect("drain the freeze events").into_iter().filter(|e| e.tid == me).collect();
    let calls = events.iter().filter_map(Call::decode).collect();
    let windows = windows(&events).process(std::process::id()).cloned().unwrap_or_default();
    (calls, windows)
}

#[test]
fn sees_this_process_freeze_and_thaw_with_the_frozen_time() {
    require_root();
    let fs = Ext4::new();
    let mut tracer = FreezeTracer::attach().expect("attach the freeze tracer");

    let before = monotonic_ns();
    let frozen = Frozen::freeze(&fs.mount_point).expect("freeze");
    let freeze_call = frozen.freeze_call;
    std::thread::sleep(Duration::from_millis(200));
    let frozen_for = frozen.thaw().expect("thaw").as_nanos() as u64;
    let after = monotonic_ns();

    let (calls, w) = mine(&mut tracer);
    // Other tests of this binary (the dm one, in the VM) run alongside and
    // make dm calls; only freeze and thaw are this test's.
    let fs_calls: Vec<&Call> = calls.iter().filter(|c| !c.call.is_dm()).collect();
    assert_eq!(
        fs_calls.iter().map(|c| c.call).collect::<Vec<_>>(),
        vec![FreezeCall::Freeze, FreezeCall::Thaw],
        "one FIFREEZE and one FITHAW: {calls:?}"
    );
    for call in &fs_calls {
        assert_eq!(call.ret, 0, "{call:?}");
        assert!(
            before <= call.enter_ns && call.enter_ns <= call.exit_ns && call.exit_ns <= after,
            "{call:?} within the test's [{before}, {after}] ns"
        );
        assert_eq!(call.dm_name, None);
    }
    assert_eq!(fs_calls[0].fd, fs_calls[1].fd, "Frozen thaws through the descriptor it froze with");

    assert_eq!(w.freeze_calls.len(), 1, "{w:?}");
    let kernel_call = w.freeze_calls[0].duration_ns;
    let user_call = freeze_call.as_nanos() as u64;
    assert!(kernel_call <= user_call, "FIFREEZE took {kernel_call} ns in the kernel, {user_call} ns around the call");

    assert_eq!(w.frozen.len(), 1, "{w:?}");
    let kernel = w.frozen[0].duration_ns;
    eprintln!(
        "FIFREEZE {kernel_call} ns in the kernel ({user_call} ns around the call); frozen {kernel} ns in the kernel \
         ({frozen_for} ns by Frozen::thaw)"
    );
    assert!(kernel >= 200 * MS, "frozen for {kernel} ns, slept 200 ms");
    // The kernel's span (syscall entry to exit) nests inside the one user
    // space measures around the calls: some 15 us longer on the host, a few
    // ms in the emulated VM. How much longer depends on the machine's load,
    // so only the nesting is asserted.
    assert!(kernel <= frozen_for, "frozen {kernel} ns in the kernel, {frozen_for} ns by Frozen::thaw");
    assert!(w.unpaired.iter().chain(&w.failed).all(|c| c.call.is_dm()), "{w:?}");
    assert_eq!(tracer.losses().expect("losses"), Default::default(), "nothing lost");
}

/// A dm device removed on drop, so a failed assertion leaves nothing behind.
struct DmDevice<'a> {
    dm: &'a Dm,
    name: &'a str,
}

impl Drop for DmDevice<'_> {
    fn drop(&mut self) {
        let _ = self.dm.resume(self.name);
        let _ = self.dm.remove(self.name);
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn sees_dm_suspend_and_resume_named_by_name_or_uuid() {
    require_root();
    let dm = Dm::open().unwrap_or_else(|e| panic!("{e}: this test runs in the VM (`cargo xtask test`)"));
    let backing = LoopDevice::new(8 << 20);
    let name = format!("hcp-test-freeze-trace-{}", std::process::id());
    let uuid = format!("TEST-{name}");
    let mut tracer = FreezeTracer::attach().expect("attach the freeze tracer");

    let line = Linear { device: backing.devnum(), offset: 0 }.table_line(8 << 11);
    dm.create(&name, &uuid, &[line]).expect("create a linear dm device");
    let _device = DmDevice { dm: &dm, name: &name };

    // By name, as hcp does.
    dm.suspend(&name, Suspend::Lockfs).expect("suspend by name");
    std::thread::sleep(Duration::from_millis(100));
    dm.resume(&name).expect("resume by name");

    // By UUID, as LVM does: the name is empty in the request, and the
    // program takes the one the kernel writes back.
    let raw = DM::new().expect("open /dev/mapper/control");
    let dm_uuid = DmUuid::new(&uuid).expect("valid uuid");
    raw.device_suspend(&DevId::Uuid(dm_uuid), DmOptions::default().set_flags(DmFlags::DM_SUSPEND))
        .expect("suspend by uuid");
    std::thread::sleep(Duration::from_millis(50));
    raw.device_suspend(&DevId::Uuid(dm_uuid), DmOptions::default()).expect("resume by uuid");

    let (calls, w) = mine(&mut tracer);
    let ours = |c: &&Call| c.dm_name.as_deref() == Some(name.as_str());
    let ours_calls: Vec<&Call> = calls.iter().filter(ours).collect();
    let (suspend, resume) = (FreezeCall::Suspend, FreezeCall::Resume);
    assert_eq!(
        ours_calls.iter().map(|c| c.call).collect::<Vec<_>>(),
        vec![resume, suspend, resume, suspend, resume],
        "activation, then two suspend/resume pairs, every one named: {calls:?}"
    );
    let suspended: Vec<_> = w.suspended.iter().filter(|s| s.dm_name == name).collect();
    assert_eq!(suspended.len(), 2, "{w:?}");
    eprintln!(
        "{name} suspended {} ns (by name), {} ns (by uuid)",
        suspended[0].span.duration_ns, suspended[1].span.duration_ns
    );
    assert!(suspended[0].span.duration_ns >= 100 * MS, "{:?}", suspended[0]);
    assert!(suspended[1].span.duration_ns >= 50 * MS, "{:?}", suspended[1]);
    assert!(suspended[0].span.end_ns <= suspended[1].span.start_ns, "{w:?}");
    // Activating the new device is a resume without a suspend: reported.
    let unpaired: Vec<_> = w.unpaired.iter().filter(ours).collect();
    assert_eq!(unpaired.iter().map(|c| c.call).collect::<Vec<_>>(), vec![resume], "{w:?}");
    assert!(!w.failed.iter().any(|c| ours(&c)), "{w:?}");
    assert_eq!(tracer.losses().expect("losses"), Default::default(), "nothing lost");
}

#[test]
fn a_writer_held_by_a_freeze_is_the_longest_write_stall() {
    require_root();
    let fs = Ext4::new();
    let fs_dev = hcp::kernel::devnum::DevNum::of_block_device(&fs.loop_dev.path).expect("the loop device's number");
    let tracer = FreezeTracer::attach_with_stalls(fs_dev).expect("attach the stall tracer");
    let path = fs.mount_point.join("log");
    let mut file = std::fs::File::create(&path).expect("create a file");

    // Writes before the freeze: traced, and quick.
    for _ in 0..5 {
        std::io::Write::write_all(&mut file, &[7u8; 4096]).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let before = tracer.stalls().expect("read").expect("a stall target");
    assert_eq!(before.calls, 10, "five writes and five fdatasyncs: {before:?}");

    // A writer that starts while the filesystem is frozen waits for the thaw.
    let frozen = Frozen::freeze(&fs.mount_point).expect("freeze");
    let writer = std::thread::spawn(move || {
        std::io::Write::write_all(&mut file, &[9u8; 4096]).expect("write while frozen");
        file.sync_data().expect("fdatasync");
    });
    std::thread::sleep(Duration::from_millis(300));
    let frozen_for = frozen.thaw().expect("thaw").as_nanos() as u64;
    let thawed = monotonic_ns();
    let left = tracer.settle_stalls(thawed, std::time::Instant::now() + Duration::from_secs(5));
    writer.join().expect("the writer returned");
    assert_eq!(left, 0, "the held writer returned after the thaw");

    let after = tracer.stalls().expect("read").expect("a stall target");
    assert_eq!(after.calls, 12, "the held write and its fdatasync: {after:?}");
    eprintln!("longest write stall {} ns; frozen {frozen_for} ns", after.max_ns);
    assert!(after.max_ns >= 250 * MS, "the write waited most of the 300 ms freeze: {after:?}");
    assert!(after.max_ns <= frozen_for, "and no longer than the filesystem was frozen: {after:?}");
    assert_eq!(after.max_pid, std::process::id());
    assert_eq!((after.inflight_full, after.read_errors), (0, 0), "{after:?}");

    // A file elsewhere (the test binary's directory) is not counted.
    let mut other = tempfile_elsewhere();
    std::io::Write::write_all(&mut other, &[1u8; 4096]).expect("write elsewhere");
    other.sync_data().expect("fdatasync elsewhere");
    assert_eq!(tracer.stalls().expect("read").expect("a stall target").calls, 12, "another filesystem's writes");
}

fn tempfile_elsewhere() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("hcp-stall-elsewhere-{}", std::process::id()));
    let file = std::fs::File::create(&path).expect("create a file in the temp dir");
    let _ = std::fs::remove_file(&path);
    file
}
