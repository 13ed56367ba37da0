//! Helpers shared by hcp's integration tests. Tests panic with a message that
//! names what broke; a test that cannot run where it must fails loudly.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use hcp::devnum::DevNum;

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
        let backing = std::env::temp_dir().join(format!("hcp-test-{}-{}.img", std::process::id(), unique()));
        File::create(&backing).and_then(|f| f.set_len(size_bytes)).expect("create backing file");
        let path = run("losetup", &["--find", "--show", backing.to_str().expect("utf-8 path")]);
        LoopDevice { path: PathBuf::from(path.trim()), backing }
    }

    pub fn devnum(&self) -> DevNum {
        DevNum::of_block_device(&self.path).expect("loop device number")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.backing);
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
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/stats.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the stats schema")).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "stats do not match docs/stats.schema.json:\n{}\n{value:#}", errors.join("\n"));
}
