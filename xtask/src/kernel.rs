//! Guest kernels for `cargo xtask vm`: Debian's stock kernel packages, only
//! downloaded and unpacked (never installed: no postinst, no /boot changes).
//!
//! Layout under `<cache>/kernels/<6.1|6.12>/`:
//! - `resolved`: `<apt lists stamp> <package>`, the last apt-cache answer
//! - `root/`:    the unpacked .deb (`lib/modules/<release>`, `boot/`)
//! - `vmlinux`:  the uncompressed ELF kernel taken out of the bzImage
//! - `unpacked`: name of the package `root/` and `vmlinux` come from (written last)

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};

/// Where apt keeps the package lists; `apt-get update` renames fresh lists
/// into it, which changes its mtime.
const APT_LISTS: &str = "/var/lib/apt/lists";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestKernel {
    /// Debian 12's default kernel: what `linux-image-amd64` depends on.
    #[value(name = "6.1")]
    V6_1,
    /// The newer kernel Debian 12 ships: what `linux-image-6.12-amd64` depends on.
    #[value(name = "6.12")]
    V6_12,
}

impl GuestKernel {
    fn meta_package(self) -> &'static str {
        match self {
            GuestKernel::V6_1 => "linux-image-amd64",
            GuestKernel::V6_12 => "linux-image-6.12-amd64",
        }
    }
}

impl fmt::Display for GuestKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestKernel::V6_1 => "6.1",
            GuestKernel::V6_12 => "6.12",
        })
    }
}

/// An unpacked guest kernel.
pub struct Unpacked {
    /// `uname -r` of the guest, e.g. `6.1.0-41-amd64`.
    pub release: String,
    /// The unpacked package: `lib/modules/<release>`, `boot/config-<release>`.
    pub root: PathBuf,
    /// Uncompressed ELF kernel, booted through its PVH entry point.
    pub vmlinux: PathBuf,
}

/// Idempotent: downloads (apt-get download, in a temp dir under the cache) and
/// unpacks (dpkg-deb -x) only what's missing; with everything present it
/// returns in milliseconds and touches nothing.
pub fn ensure(k: GuestKernel) -> Result<Unpacked> {
    let dir = crate::cache_dir().join("kernels").join(k.to_string());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let package = resolve(k, &dir)?;
    let marker = dir.join("unpacked");
    let unpacked_is = |p: &str| fs::read_to_string(&marker).is_ok_and(|m| m == p) && dir.join("vmlinux").is_file();
    if !unpacked_is(&package) {
        // Two `cargo xtask vm` may start at once on a fresh cache: one unpacks,
        // the other waits for it and then finds everything in place.
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
        if !unpacked_is(&package) {
            unpack(&package, &dir)?;
            fs::write(&marker, &package).with_context(|| format!("writing {}", marker.display()))?;
        }
    }
    let root = dir.join("root");
    Ok(Unpacked { release: release_of(&root)?, root, vmlinux: dir.join("vmlinux") })
}

/// The concrete package behind the meta-package, e.g. `linux-image-6.1.0-41-amd64`.
/// apt-cache takes about a second here (Docker-style images turn off apt's
/// binary cache), so its answer is kept until apt's lists change.
fn resolve(k: GuestKernel, dir: &Path) -> Result<String> {
    let stamp = fs::metadata(APT_LISTS)
        .and_then(|m| m.modified())
        .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string())
        .with_context(|| format!("reading {APT_LISTS}: run `apt-get update` (or `cargo xtask setup`)"))?;
    let cache = dir.join("resolved");
    if let Some(package) =
        fs::read_to_string(&cache).ok().and_then(|s| Some(s.strip_prefix(&stamp)?.strip_prefix(' ')?.to_owned()))
    {
        return Ok(package);
    }

    let meta = k.meta_package();
    let out = Command::new("apt-cache")
        .args(["depends", meta])
        .stderr(Stdio::null())
        .output()
        .context("running apt-cache (is this a Debian host?)")?;
    let package = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.strip_prefix("linux-image-").is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())))
        .map(str::to_owned);
    let Some(package) = package else {
        bail!(
            "apt-cache knows no kernel package behind {meta} (guest kernel {k}): \
             run `apt-get update` (or `cargo xtask setup`)"
        );
    };
    fs::write(&cache, format!("{stamp} {package}")).with_context(|| format!("writing {}", cache.display()))?;
    Ok(package)
}

/// Downloads `package`, unpacks it to `dir/root` and extracts `dir/vmlinux`.
fn unpack(package: &str, dir: &Path) -> Result<()> {
    eprintln!("xtask: fetching guest kernel {package}");
    let download = dir.join("download");
    let root = dir.join("root");
    for stale in [&download, &root] {
        remove_dir_if_present(stale)?;
    }
    fs::create_dir_all(&download)?;
    run(Command::new("apt-get")
        // As root apt drops to user _apt to fetch, which cannot write here.
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
        .current_dir(&download))
    .context("downloading the guest kernel; if apt cannot find it, run `apt-get update` (or `cargo xtask setup`)")?;
    let deb = fs::read_dir(&download)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;

    let staging = dir.join("root.partial");
    remove_dir_if_present(&staging)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    fs::rename(&staging, &root)?;
    fs::remove_dir_all(&download)?;

    let release = release_of(&root)?;
    extract_vmlinux(&root.join(format!("boot/vmlinuz-{release}")), &dir.join("vmlinux"))
}

/// `uname -r` of an unpacked kernel: the one directory under `lib/modules`.
fn release_of(root: &Path) -> Result<String> {
    let modules = root.join("lib/modules");
    let mut names = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<_>>>()?;
    anyhow::ensure!(names.len() == 1, "expected one kernel release in {}, found {names:?}", modules.display());
    Ok(names.remove(0))
}

/// Writes the ELF kernel inside a bzImage to `out`. Booting it directly (PVH)
/// skips the in-guest decompression, about 6 s under TCG.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let payload = bzimage_payload(&image).with_context(|| format!("parsing {}", bzimage.display()))?;
    // The kernel build appends the uncompressed size (4 bytes) to the stream.
    let stream = &payload[..payload.len().saturating_sub(4)];
    // Debian compresses 6.1 with xz and 6.12 with zstd.
    let (tool, package) = if stream.starts_with(b"\xfd7zXZ\0") {
        ("xz", "xz-utils")
    } else if stream.starts_with(b"\x28\xb5\x2f\xfd") {
        ("zstd", "zstd")
    } else {
        bail!(
            "{}: unknown compression (stream starts with {:02x?})",
            bzimage.display(),
            &stream[..stream.len().min(6)]
        );
    };

    let partial = out.with_extension("partial");
    let mut child = Command::new(tool)
        .args(["-dcq"])
        .stdin(Stdio::piped())
        .stdout(File::create(&partial)?)
        .spawn()
        .with_context(|| format!("running {tool} (apt-get install {package})"))?;
    let written = child.stdin.take().expect("piped").write_all(stream);
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "{tool} failed ({status}) on the kernel in {}", bzimage.display());
    written?;
    let mut magic = [0u8; 4];
    io::Read::read_exact(&mut File::open(&partial)?, &mut magic)?;
    anyhow::ensure!(&magic == b"\x7fELF", "{}: decompressed kernel is not ELF", bzimage.display());
    fs::rename(&partial, out)?;
    Ok(())
}

/// The compressed kernel inside a bzImage (x86 boot protocol 2.08+).
fn bzimage_payload(image: &[u8]) -> Result<&[u8]> {
    let u16_at = |o: usize| image.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| image.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    anyhow::ensure!(image.get(0x202..0x206) == Some(b"HdrS"), "not a bzImage (no HdrS)");
    anyhow::ensure!(u16_at(0x206).unwrap_or(0) >= 0x208, "boot protocol before 2.08");
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248).unwrap_or(0);
    let len = u32_at(0x24c).unwrap_or(0);
    image.get(start..start + len).context("payload lies outside the file")
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", dir.display())),
        _ => Ok(()),
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}
