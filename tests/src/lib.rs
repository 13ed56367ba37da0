//! Helpers shared by hcp's integration tests. Tests panic with a message that
//! names what broke; a test that cannot run where it must fails loudly.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hcp::kernel::devnum::DevNum;
use hcp::kernel::dm::device::Dm;
use hcp::kernel::dm::table::{Linear, TargetParams};
use serde_json::Value;

/// Panics unless running as root: these tests attach eBPF programs and make
/// loop and device-mapper devices.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (it creates block devices and loads eBPF): run `cargo xtask test` as root"
    );
}

/// Runs a command, panicking with its stderr when it fails; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A sparse file attached to a free loop device; detached and deleted on drop.
pub struct LoopDevice {
    pub path: PathBuf,
    backing: PathBuf,
}

impl LoopDevice {
    pub fn new(size_bytes: u64) -> LoopDevice {
        Self::with_options(size_bytes, &[])
    }

    /// One that reads and writes its file with direct I/O, asynchronously:
    /// a read it gets fewer bytes for than asked (its file cut short, see
    /// [`LoopDevice::cut_file`]) is completed in part and requeued for the
    /// rest, the one requeue a test can provoke on a loop device. None
    /// when the temporary directory's filesystem takes no direct I/O (tmpfs
    /// before Linux 6.6, as in the test VM's overlay on 6.1).
    pub fn direct_io(size_bytes: u64) -> Option<LoopDevice> {
        use std::os::unix::fs::OpenOptionsExt;
        let probe = std::env::temp_dir().join(format!("hcp-test-{}-{}.dio", std::process::id(), unique()));
        let opened = OpenOptions::new().create(true).write(true).custom_flags(libc::O_DIRECT).open(&probe);
        let _ = fs::remove_file(&probe);
        if opened.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL)) {
            return None;
        }
        opened.expect("a file opened with O_DIRECT");
        let dev = Self::with_options(size_bytes, &["--direct-io=on"]);
        let name = dev.path.file_name().and_then(|n| n.to_str()).expect("a loop device name");
        let dio = fs::read_to_string(format!("/sys/block/{name}/loop/dio")).expect("the loop device's dio flag");
        assert_eq!(dio.trim(), "1", "{} does not use direct I/O on {}", dev.path.display(), dev.backing.display());
        Some(dev)
    }

    fn with_options(size_bytes: u64, options: &[&str]) -> LoopDevice {
        let backing = std::env::temp_dir().join(format!("hcp-test-{}-{}.img", std::process::id(), unique()));
        File::create(&backing).and_then(|f| f.set_len(size_bytes)).expect("create backing file");
        let mut args = vec!["--find", "--show"];
        args.extend(options);
        args.push(backing.to_str().expect("utf-8 path"));
        let path = run("losetup", &args);
        LoopDevice { path: PathBuf::from(path.trim()), backing }
    }

    /// Cuts `bytes` off the end of the device's file; the device keeps its
    /// size, and reads past the file's new end come back short.
    pub fn cut_file(&self, bytes: u64) {
        let file = OpenOptions::new().write(true).open(&self.backing).expect("open the backing file");
        let len = file.metadata().expect("the backing file's size").len();
        file.set_len(len - bytes).expect("cut the backing file");
    }

    /// The kernel's I/O statistics of the device so far (`/sys/block/*/stat`).
    pub fn stat(&self) -> BlockStat {
        let name = self.path.file_name().and_then(|n| n.to_str()).expect("a loop device name");
        BlockStat::parse(&fs::read_to_string(format!("/sys/block/{name}/stat")).expect("the device's stat"))
    }

    pub fn devnum(&self) -> DevNum {
        DevNum::of_block_device(&self.path).expect("loop device number")
    }

    /// A disk with an MBR partition table holding one Linux partition,
    /// from 1 MiB to the end, which the kernel scans: returns the disk and
    /// its partition (`/dev/loopNp1`), a plain partition as `/dev/sdc1` is.
    pub fn partitioned(size_bytes: u64) -> (LoopDevice, PathBuf) {
        let backing = std::env::temp_dir().join(format!("hcp-test-{}-{}.img", std::process::id(), unique()));
        let sectors = size_bytes / 512;
        let mut mbr = [0u8; 512];
        // One primary entry at 446: type 0x83, first LBA, sector count
        // (the CHS fields are unused by Linux).
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&((sectors - 2048) as u32).to_le_bytes());
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        let f = File::create(&backing).expect("create backing file");
        f.set_len(size_bytes).unwrap();
        f.write_all_at(&mbr, 0).unwrap();
        drop(f);
        let path = run("losetup", &["--find", "--show", "--partscan", backing.to_str().expect("utf-8 path")]);
        let disk = LoopDevice { path: PathBuf::from(path.trim()), backing };
        let part = PathBuf::from(format!("{}p1", disk.path.display()));
        // devtmpfs makes the node from a kernel thread: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while DevNum::of_block_device(&part).is_err() {
            assert!(std::time::Instant::now() < deadline, "{} did not appear", part.display());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (disk, part)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// The requests a block device completed, by kind, from its
/// `/sys/block/*/stat` line (Documentation/block/stat.rst: fields 1, 5, 12
/// and 16). An empty write with a preflush (an fsync of the device) counts
/// there twice: as a write of nothing, and as the flush request the block
/// layer sends for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStat {
    pub reads: u64,
    pub writes: u64,
    pub discards: u64,
    pub flushes: u64,
}

impl BlockStat {
    pub fn parse(line: &str) -> BlockStat {
        let f: Vec<u64> = line.split_whitespace().map(|v| v.parse().expect("a number")).collect();
        assert!(f.len() >= 17, "a stat line of 17 fields (Linux 5.5 and later): `{line}`");
        BlockStat { reads: f[0], writes: f[4], discards: f[11], flushes: f[15] }
    }

    /// What was completed since `before`.
    pub fn since(&self, before: &BlockStat) -> BlockStat {
        BlockStat {
            reads: self.reads - before.reads,
            writes: self.writes - before.writes,
            discards: self.discards - before.discards,
            flushes: self.flushes - before.flushes,
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A zeroed buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    pub fn new(len: usize, fill: u8) -> AlignedBuf {
        let layout = Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: non-zero size (checked by callers' use), freed in Drop with the same layout.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        let mut buf = AlignedBuf { ptr, layout };
        buf.bytes_mut().fill(fill);
        buf
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() bytes for the buffer's life.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// Opens a block device for O_DIRECT reads and writes, so every call is one
/// bio that bypasses the page cache.
pub fn open_direct(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()))
}

pub fn pwrite_all(f: &File, buf: &AlignedBuf, offset: u64) {
    f.write_all_at(buf.bytes(), offset).unwrap_or_else(|e| panic!("pwrite at {offset}: {e}"));
}

pub fn pread_exact(f: &File, buf: &mut AlignedBuf, offset: u64) {
    f.read_exact_at(buf.bytes_mut(), offset).unwrap_or_else(|e| panic!("pread at {offset}: {e}"));
}

/// Validates `value` against the JSON Schema of `hcp stats --json`
/// (docs/stats.schema.json), panicking with every violation.
pub fn assert_matches_stats_schema(value: &serde_json::Value) {
    assert_matches_schema(stats_schema(), value);
}

/// Asserts that `value` is one line of `hcp stats --history --json`, as
/// `$defs/interval` of docs/stats.schema.json describes it.
pub fn assert_matches_interval_schema(value: &serde_json::Value) {
    let root = stats_schema();
    assert_matches_schema(serde_json::json!({ "$ref": "#/$defs/interval", "$defs": root["$defs"] }), value);
}

fn stats_schema() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/stats.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read the stats schema")).expect("schema is JSON")
}

fn assert_matches_schema(schema: serde_json::Value, value: &serde_json::Value) {
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "stats do not match docs/stats.schema.json:\n{}\n{value:#}", errors.join("\n"));
}

/// The tests of one binary that make sessions take turns: each compares
/// the whole system's state before and after, which another test's
/// sessions would change. (Each binary runs alone in the VM.)
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `hcp` binary the tests run: `$HCP_BIN` when set (`cargo xtask test`
/// points the VM suite at the optimised build the package is made of: what
/// ships, and much quicker under emulation), else the one built beside this
/// test binary (target/<profile>/hcp).
pub fn hcp_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HCP_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.exists(), "HCP_BIN={} does not exist", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("hcp");
    assert!(bin.exists(), "{} is missing: build it first (cargo build -p hcp-user)", bin.display());
    bin
}

/// What an hcp command did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

pub fn hcp(args: &[&str]) -> Output {
    std::process::Command::new(hcp_bin()).args(args).output().expect("run hcp").into()
}

/// Runs hcp with `--json`, asserting success, and parses its output.
pub fn hcp_json(args: &[&str]) -> Value {
    hcp_json_exit(args, 0)
}

/// Runs hcp with `--json`, asserting exit status `code` (7: a session
/// reported on is invalid, with the output printed all the same), and
/// parses its output.
pub fn hcp_json_exit(args: &[&str], code: i32) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = hcp(&all);
    assert_eq!(out.code, code, "hcp {args:?}: {}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("hcp {args:?} printed no JSON ({e}): {}", out.stdout))
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fs {
    Ext4,
    Xfs,
}

impl Fs {
    /// The size of a small test volume with this filesystem: xfs refuses
    /// less than 300 MiB; ext4 gets 64, which keeps hashing and merging it
    /// quick under emulation.
    pub fn volume_mib(self) -> u64 {
        match self {
            Fs::Ext4 => 64,
            Fs::Xfs => 320,
        }
    }

    pub fn mkfs(self, dev: &Path) {
        let dev = dev.to_str().unwrap();
        match self {
            // Inode tables and journal written now, not by a kernel thread
            // in the background: such writes would reach the origin at any
            // time and turn up as copy-out no test asked for.
            Fs::Ext4 => run("/usr/sbin/mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev]),
            Fs::Xfs => run("/usr/sbin/mkfs.xfs", &["-q", "-f", dev]),
        };
    }

    /// A read-only check of a filesystem that is not mounted. A frozen XFS
    /// keeps a dirty (covered) log, which `xfs_repair -n` will not ignore:
    /// replay it first by mounting and unmounting, as an admin would.
    pub fn fsck(self, dev: &Path) {
        let dev = dev.to_str().unwrap();
        match self {
            Fs::Ext4 => run("/usr/sbin/e2fsck", &["-fn", dev]),
            Fs::Xfs => {
                let dir = temp_dir("xfs-replay");
                run("mount", &["-o", "nouuid", dev, dir.to_str().unwrap()]);
                run("umount", &[dir.to_str().unwrap()]);
                run("/usr/sbin/xfs_repair", &["-n", dev])
            }
        };
    }
}

/// A dm-linear volume over a loop device: what an LVM LV looks like to hcp.
pub struct Volume {
    pub name: String,
    pub loop_dev: LoopDevice,
    mount: Option<PathBuf>,
}

impl Volume {
    pub fn new(name: &str, mib: u64) -> Volume {
        let loop_dev = LoopDevice::new(mib << 20);
        let dm = Dm::open().expect("device-mapper (these tests run in the VM)");
        let line = Linear { device: loop_dev.devnum(), offset: 0 }.table_line(mib << 11);
        dm.create(name, &format!("TEST-{name}"), &[line]).expect("create test volume");
        Volume { name: name.to_string(), loop_dev, mount: None }
    }

    /// One full of random data, no filesystem: changes to it are written
    /// to the device directly.
    pub fn random(name: &str, mib: u64) -> Volume {
        let vol = Volume::new(name, mib);
        let of = format!("of={}", vol.path().display());
        run("dd", &["if=/dev/urandom", &of, "bs=1M", &format!("count={mib}"), "oflag=direct", "status=none"]);
        vol
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/mapper/{}", self.name))
    }

    pub fn table(&self) -> String {
        let dm = Dm::open().unwrap();
        dm.table(&self.name).unwrap().iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
    }

    pub fn mount(&mut self, fs: Fs) -> PathBuf {
        fs.mkfs(&self.path());
        let dir = temp_dir(&format!("{}-mnt", self.name));
        run("mount", &[self.path().to_str().unwrap(), dir.to_str().unwrap()]);
        self.mount = Some(dir.clone());
        dir
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        // Whatever a failed test left: sessions first, then the volume.
        let _ = hcp(&["remove", self.path().to_str().unwrap()]);
        if let Some(dir) = &self.mount {
            let _ = std::process::Command::new("umount").arg(dir).status();
        }
        if let Ok(dm) = Dm::open() {
            let _ = dm.remove(&self.name);
        }
        let _ = &self.loop_dev;
    }
}

/// A new directory under the temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir =
        std::env::temp_dir().join(format!("hcp-{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Files with known checksums (here: known contents).
pub fn write_files(dir: &Path, tag: &str) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..8u32 {
        let data: Vec<u8> = (0..(64 * 1024 + i * 4099)).map(|b| (b as u8) ^ (i as u8) ^ tag.len() as u8).collect();
        let path = dir.join(format!("{tag}-{i}.bin"));
        fs::write(&path, &data).unwrap();
        files.insert(PathBuf::from(path.file_name().unwrap()), data);
    }
    run("sync", &[]);
    files
}

pub fn assert_files(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    for (name, data) in files {
        let got = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{} in {}: {e}", name.display(), dir.display()));
        assert!(got == *data, "{} differs in {}", name.display(), dir.display());
    }
}

/// What a failed command must leave unchanged: dm devices and their
/// tables, loop devices, mounts, session records, and what is in hcp's
/// default store and mount directories.
#[derive(Debug, PartialEq)]
pub struct SystemState {
    pub dm: Vec<String>,
    pub loops: Vec<String>,
    pub mounts: Vec<String>,
    pub records: Vec<String>,
    pub files: Vec<String>,
}

impl SystemState {
    pub fn take() -> SystemState {
        let dm = Dm::open().unwrap();
        let mut names: Vec<String> = dm
            .list()
            .unwrap()
            .into_iter()
            .map(|(n, _, _)| {
                format!("{n}: {}", dm.table(&n).unwrap().iter().map(|l| l.to_string()).collect::<Vec<_>>().join("; "))
            })
            .collect();
        names.sort();
        let mut loops: Vec<String> = fs::read_dir("/sys/block")
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                let b = fs::read_to_string(p.join("loop/backing_file")).ok()?;
                Some(format!("{}={}", p.file_name()?.to_str()?, b.trim()))
            })
            .collect();
        loops.sort();
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .map(|l| l.split(' ').skip(2).take(3).collect::<Vec<_>>().join(" "))
            .collect();
        let names_in = |dir: &str| -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(dir)
                .map(|d| d.filter_map(|e| Some(format!("{dir}/{}", e.ok()?.file_name().to_str()?))).collect())
                .unwrap_or_default();
            names.sort();
            names
        };
        let records = names_in("/run/hcp/sessions").into_iter().map(|n| n["/run/hcp/sessions/".len()..].to_string());
        // The history and rollback directories stay once made; what is in
        // them counts.
        let mut files = [
            names_in("/var/lib/hcp"),
            names_in("/var/lib/hcp/history"),
            names_in("/var/lib/hcp/rollbacks"),
            names_in("/var/hcp"),
            names_in("/etc/hcp/enrolled"),
        ]
        .concat();
        files.retain(|f| f != "/var/lib/hcp/history" && f != "/var/lib/hcp/rollbacks");
        SystemState { dm: names, loops, mounts, records: records.collect(), files }
    }
}

/// Whether hcp's helper process `kind` (`__autoextend`, `__guard`) runs,
/// for session `id` or any.
pub fn helper_running(kind: &str, id: Option<&str>) -> bool {
    fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|e| {
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        args.len() >= 3
            && args[1] == kind.as_bytes()
            && id.is_none_or(|id| args[2] == id.as_bytes())
            && !matches!(state, Some('Z' | 'X'))
    })
}

/// Runs hcp with `HCP_FAULT=step:action`, as a failed run would end: a
/// hang at a step outside `guarded` (the steps whose hang the guard ends:
/// nothing held) is killed after a while, as an operator would. Returns
/// stderr.
pub fn hcp_with_fault(guarded: &[&str], args: &[&str], step: &str, action: &str) -> String {
    let mut cmd = std::process::Command::new(hcp_bin());
    cmd.args(args)
        .env("HCP_FAULT", format!("{step}:{action}"))
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if action == "hang" {
        // Only here: the guard would cut short hcp's own undo otherwise.
        cmd.env("HCP_SWITCH_TIMEOUT", "1.5");
    }
    let mut child = cmd.spawn().expect("run hcp");
    // stderr is read as it comes: a hang is ended only once hcp said it
    // reached the step, however long a loaded machine took to get there.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pipe = std::io::BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut pipe, &mut line).is_ok_and(|n| n > 0) {
            if line.contains("injecting") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            line.clear();
        }
        all
    });
    // Only a hang outside a window is ended from here, once reached; anything
    // else ends by itself (its undo can take seconds on a loaded, emulated
    // machine).
    let killed_here = action == "hang" && !guarded.contains(&step);
    let started = std::time::Instant::now();
    let limit = std::time::Duration::from_secs(if killed_here { 60 } else { 30 });
    let mut reached: Option<std::time::Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if killed_here && reached.is_none() && rx.try_recv().is_ok() {
            reached = Some(std::time::Instant::now());
        }
        // Hung for a while at the step, as an operator would see it.
        if reached.is_some_and(|t| t.elapsed() > std::time::Duration::from_millis(500)) {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        assert!(started.elapsed() < limit, "{step}:{action}: hcp still running after {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "{step}:{action}: hcp must fail: {stderr}");
    if action == "hang" && guarded.contains(&step) {
        assert!(stderr.contains("deadline"), "{step}:{action}: the guard ended the hang: {stderr}");
    }
    stderr
}

/// The sha256 of a file or a whole device, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    out.split_whitespace().next().expect("a sum").to_string()
}

/// Whether dm device `name` is suspended (`dmsetup info`).
pub fn suspended(name: &str) -> bool {
    let out =
        std::process::Command::new("dmsetup").args(["info", "-c", "--noheadings", "-o", "suspended", name]).output();
    let out = out.expect("dmsetup info");
    String::from_utf8_lossy(&out.stdout).trim() == "Suspended"
}

/// Writes `mib` MiB of `byte` at `offset_mib` MiB into `dev`, with O_DIRECT
/// (1 MiB a write), so that every byte reaches the device at once.
pub fn write_direct(dev: &Path, offset_mib: u64, mib: u64, byte: u8) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(dev).unwrap();
    // O_DIRECT wants an aligned buffer: a Vec of u64s is 8-aligned, so
    // over-allocate and take a 4 KiB-aligned window.
    let mut raw = vec![0u8; (1 << 20) + 4096];
    let skip = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skip..skip + (1 << 20)];
    buf.fill(byte);
    for i in 0..mib {
        f.write_all_at(buf, (offset_mib + i) << 20).unwrap();
    }
}

/// The fault actions (`HCP_FAULT=STEP:ACTION`) this kernel's fault tests
/// run. All four on every kernel take minutes of CI per kernel, so they are
/// shared out: every step × action runs on exactly one of the three guest
/// kernels, and each kernel runs at least one action undone from outside
/// hcp or inside it: 6.1 error and kill, 6.12 panic, 5.10 hang (the guard
/// ending a hang inside the switch's window). `HCP_TEST_ALL_FAULTS=1` runs
/// all four here.
pub fn fault_actions() -> Vec<&'static str> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    if std::env::var_os("HCP_TEST_ALL_FAULTS").is_some() {
        vec!["error", "panic", "kill", "hang"]
    } else if release.starts_with("6.1.") {
        vec!["error", "kill"]
    } else if release.starts_with("5.10.") {
        vec!["hang"]
    } else {
        vec!["panic"]
    }
}

#[cfg(test)]
mod tests {
    use super::BlockStat;

    #[test]
    fn block_stat_lines() {
        // reads, merges, sectors, ticks; writes ...; in flight, io ticks,
        // queue time; discards, merges, sectors, ticks; flushes, ticks.
        let line = "    2470        0    36620       92   139022     3638  1272458    35545        0     1760    35916       40        0  2621480        0     2970      278\n";
        let stat = BlockStat::parse(line);
        assert_eq!(stat, BlockStat { reads: 2470, writes: 139022, discards: 40, flushes: 2970 });
        let before = BlockStat { reads: 2400, writes: 139000, discards: 40, flushes: 2960 };
        assert_eq!(stat.since(&before), BlockStat { reads: 70, writes: 22, discards: 0, flushes: 10 });
    }

    #[test]
    #[should_panic(expected = "17 fields")]
    fn block_stat_lines_of_old_kernels_are_refused() {
        BlockStat::parse("1 0 8 0 2 0 16 0 0 0 0");
    }
}
