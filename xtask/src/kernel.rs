//! Guest kernels for `cargo xtask vm`: Debian's stock kernel packages, only
//! downloaded and unpacked (never installed: no postinst, no /boot changes).
//!
//! 6.1 and 6.12 are Debian 12's, found through the host's apt. 5.10 is
//! Debian 11's, which the host's (Debian 12) apt lists do not name: it is
//! found in the archive's own package indexes and fetched with curl, its
//! SHA256 checked against the index.
//!
//! Layout under `<cache>/kernels/<5.10|6.1|6.12>/`:
//! - `resolved`: `<apt lists stamp> <package>`, the last apt-cache answer; for
//!   5.10 `archive <unix time> <package> <version> <url> <sha256>`, the last
//!   look into the archive's indexes (redone after a day)
//! - `root/`:    the unpacked .deb (`lib/modules/<release>`, `boot/`)
//! - `vmlinux`:  the uncompressed ELF kernel taken out of the bzImage
//! - `unpacked`: name of the package `root/` and `vmlinux` come from (written
//!   last); for 5.10, `<package> <version>`

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// Where apt keeps the package lists; `apt-get update` renames fresh lists
/// into it, which changes its mtime.
const APT_LISTS: &str = "/var/lib/apt/lists";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestKernel {
    /// Debian 11's kernel: the newest `linux-image-5.10.0-N-amd64` in
    /// bullseye and bullseye-security, taken from Debian's archive.
    #[value(name = "5.10")]
    V5_10,
    /// Debian 12's default kernel: what `linux-image-amd64` depends on.
    #[value(name = "6.1")]
    V6_1,
    /// The newer kernel Debian 12 ships: what `linux-image-6.12-amd64` depends on.
    #[value(name = "6.12")]
    V6_12,
}

/// Where a guest kernel's package is found.
enum Source {
    /// The host's apt: the concrete package behind this meta-package.
    Apt(&'static str),
    /// Debian's archive, read directly: the newest `<prefix>N-amd64` of these
    /// suites (archive root, suite).
    Archive { prefix: &'static str, suites: &'static [(&'static str, &'static str)] },
}

/// Debian 11's kernels. bullseye-updates carries none; the security suite
/// lives in its own archive (`/debian/dists/bullseye-security` is a 404).
const BULLSEYE: &[(&str, &str)] =
    &[("https://deb.debian.org/debian", "bullseye"), ("https://deb.debian.org/debian-security", "bullseye-security")];

/// How long an answer from the archive's indexes is kept.
const ARCHIVE_RECHECK: Duration = Duration::from_secs(24 * 3600);

impl GuestKernel {
    /// The kernels `cargo xtask test` runs the VM suite on, oldest first.
    pub const TESTED: [GuestKernel; 3] = [GuestKernel::V5_10, GuestKernel::V6_1, GuestKernel::V6_12];

    /// Whether the boot test runs on it: it boots the host's userland
    /// (Debian 12's systemd) with systemd as PID 1, which is a real system
    /// on Debian 12's kernels only; Debian 11's kernel ran Debian 11's.
    pub fn boots_host_userland(self) -> bool {
        self != GuestKernel::V5_10
    }

    fn source(self) -> Source {
        match self {
            GuestKernel::V5_10 => Source::Archive { prefix: "linux-image-5.10.0-", suites: BULLSEYE },
            GuestKernel::V6_1 => Source::Apt("linux-image-amd64"),
            GuestKernel::V6_12 => Source::Apt("linux-image-6.12-amd64"),
        }
    }
}

impl fmt::Display for GuestKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestKernel::V5_10 => "5.10",
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

/// The package to unpack and how to get it.
struct Resolved {
    /// What the `unpacked` marker holds once it is unpacked.
    marker: String,
    package: String,
    fetch: Fetch,
}

enum Fetch {
    /// `apt-get download <package>`.
    Apt,
    /// curl, then the file's SHA256 checked.
    Url { url: String, sha256: String },
}

/// Idempotent: downloads (apt-get download or curl, in a temp dir under the
/// cache) and unpacks (dpkg-deb -x) only what's missing; with everything
/// present it returns in milliseconds and touches nothing.
pub fn ensure(k: GuestKernel) -> Result<Unpacked> {
    ensure_with(k, false)
}

/// [`ensure`]; with `refresh`, a kernel taken from Debian's archive is looked
/// up again there now rather than within a day (apt's kernels follow apt's
/// lists, refreshed by `apt-get update`).
pub fn ensure_with(k: GuestKernel, refresh: bool) -> Result<Unpacked> {
    let dir = crate::cache_dir().join("kernels").join(k.to_string());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let resolved = match k.source() {
        Source::Apt(meta) => resolve(k, meta, &dir)?,
        Source::Archive { prefix, suites } => resolve_archive(k, prefix, suites, &dir, refresh)?,
    };
    let marker = dir.join("unpacked");
    let unpacked_is = |p: &str| fs::read_to_string(&marker).is_ok_and(|m| m == p) && dir.join("vmlinux").is_file();
    if !unpacked_is(&resolved.marker) {
        // Two `cargo xtask vm` may start at once on a fresh cache: one unpacks,
        // the other waits for it and then finds everything in place.
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
        if !unpacked_is(&resolved.marker) {
            unpack(&resolved, &dir)?;
            fs::write(&marker, &resolved.marker).with_context(|| format!("writing {}", marker.display()))?;
        }
    }
    let root = dir.join("root");
    Ok(Unpacked { release: release_of(&root)?, root, vmlinux: dir.join("vmlinux") })
}

/// The concrete package behind the meta-package, e.g. `linux-image-6.1.0-41-amd64`.
/// apt-cache takes about a second here (Docker-style images turn off apt's
/// binary cache), so its answer is kept until apt's lists change.
fn resolve(k: GuestKernel, meta: &str, dir: &Path) -> Result<Resolved> {
    let stamp = fs::metadata(APT_LISTS)
        .and_then(|m| m.modified())
        .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string())
        .with_context(|| format!("reading {APT_LISTS}: run `apt-get update` (or `cargo xtask setup`)"))?;
    let cache = dir.join("resolved");
    if let Some(package) =
        fs::read_to_string(&cache).ok().and_then(|s| Some(s.strip_prefix(&stamp)?.strip_prefix(' ')?.to_owned()))
    {
        return Ok(Resolved { marker: package.clone(), package, fetch: Fetch::Apt });
    }

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
    Ok(Resolved { marker: package.clone(), package, fetch: Fetch::Apt })
}

/// The answer [`resolve_archive`] kept in `resolved`, with its time.
fn read_archive_answer(cache: &Path) -> Option<(u64, ArchivePackage)> {
    let kept = fs::read_to_string(cache).ok()?;
    let mut w = kept.split_whitespace();
    if w.next() != Some("archive") {
        return None;
    }
    let at = w.next()?.parse().ok()?;
    let mut field = || w.next().map(str::to_owned);
    Some((at, ArchivePackage { package: field()?, version: field()?, url: field()?, sha256: field()? }))
}

/// One package of an archive's index.
#[derive(Clone, Debug, PartialEq)]
struct ArchivePackage {
    package: String,
    version: String,
    url: String,
    sha256: String,
}

/// The newest kernel of `prefix` (`linux-image-5.10.0-`) in the archive's
/// suites, e.g. `linux-image-5.10.0-46-amd64` from bullseye-security. The
/// answer is kept for a day ([`ARCHIVE_RECHECK`]) or until `refresh`; when the
/// archive cannot be read, an earlier answer is used with a warning (and
/// kept for another day).
fn resolve_archive(
    k: GuestKernel,
    prefix: &str,
    suites: &[(&str, &str)],
    dir: &Path,
    refresh: bool,
) -> Result<Resolved> {
    let cache = dir.join("resolved");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let kept = read_archive_answer(&cache);
    let to_resolved = |p: ArchivePackage| Resolved {
        marker: format!("{} {}", p.package, p.version),
        package: p.package,
        fetch: Fetch::Url { url: p.url, sha256: p.sha256 },
    };
    if let Some((at, p)) = &kept {
        if !refresh && now.saturating_sub(*at) < ARCHIVE_RECHECK.as_secs() {
            return Ok(to_resolved(p.clone()));
        }
    }

    // An earlier answer stands when the archive cannot be read (offline),
    // and is kept as if new: the next look is a day away, not every run.
    let p = match (newest_in_archive(prefix, suites), kept) {
        (Ok(p), _) => p,
        (Err(e), Some((_, p))) => {
            eprintln!(
                "xtask: warning: could not look up guest kernel {k} in Debian's archive ({e:#}); \
                 using {} {} found earlier",
                p.package, p.version
            );
            p
        }
        (Err(e), None) => return Err(e.context(format!("finding guest kernel {k} in Debian's archive"))),
    };
    let line = format!("archive {now} {} {} {} {}", p.package, p.version, p.url, p.sha256);
    // Runs may start side by side: each writes its own file, then renames.
    let partial = cache.with_extension(format!("partial.{}", std::process::id()));
    fs::write(&partial, line).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &cache).with_context(|| format!("writing {}", cache.display()))?;
    Ok(to_resolved(p))
}

/// The newest `<prefix>N-amd64` in the `main/binary-amd64` indexes of
/// `suites`: the highest N, then the highest version (`dpkg --compare-versions`).
fn newest_in_archive(prefix: &str, suites: &[(&str, &str)]) -> Result<ArchivePackage> {
    let mut found = Vec::new();
    for (archive, suite) in suites {
        let url = format!("{archive}/dists/{suite}/main/binary-amd64/Packages.xz");
        let xz = Command::new("curl")
            .args(["-fsSL", "--retry", "2", "--connect-timeout", "15", "--max-time", "300", &url])
            .stderr(Stdio::inherit())
            .output()
            .context("running curl (apt-get install curl)")?;
        anyhow::ensure!(xz.status.success(), "curl {url} failed ({})", xz.status);
        let index = decompress("xz", "xz-utils", &xz.stdout).with_context(|| format!("decompressing {url}"))?;
        found.extend(kernels_in_index(&String::from_utf8_lossy(&index), prefix, archive));
    }
    let mut newest: Option<ArchivePackage> = None;
    for p in found {
        let newer = match &newest {
            None => true,
            Some(n) => match abi(&p.package, prefix).cmp(&abi(&n.package, prefix)) {
                std::cmp::Ordering::Equal => Command::new("dpkg")
                    .args(["--compare-versions", &p.version, "gt", &n.version])
                    .status()
                    .context("running dpkg --compare-versions")?
                    .success(),
                o => o.is_gt(),
            },
        };
        if newer {
            newest = Some(p);
        }
    }
    newest.with_context(|| format!("no {prefix}N-amd64 package in {suites:?}"))
}

/// The ABI number N of `<prefix>N-amd64`.
fn abi(package: &str, prefix: &str) -> u32 {
    package.strip_prefix(prefix).and_then(|r| r.strip_suffix("-amd64")).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The `<prefix>N-amd64` stanzas of a Packages index. That package (from
/// linux-signed-amd64) holds `/boot/vmlinuz-*` and `/lib/modules`, as 6.1's
/// does; `-unsigned`, `-dbg` and the cloud and rt flavours are not it.
fn kernels_in_index(index: &str, prefix: &str, archive: &str) -> Vec<ArchivePackage> {
    index
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(|v| v.trim().to_owned())
            };
            let package = field("Package")?;
            let n = package.strip_prefix(prefix)?.strip_suffix("-amd64")?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(ArchivePackage {
                version: field("Version")?,
                url: format!("{archive}/{}", field("Filename")?),
                sha256: field("SHA256")?,
                package,
            })
        })
        .collect()
}

/// Downloads the package, unpacks it to `dir/root` and extracts `dir/vmlinux`.
fn unpack(resolved: &Resolved, dir: &Path) -> Result<()> {
    let package = &resolved.package;
    eprintln!("xtask: fetching guest kernel {package}");
    let download = dir.join("download");
    let root = dir.join("root");
    for stale in [&download, &root] {
        remove_dir_if_present(stale)?;
    }
    fs::create_dir_all(&download)?;
    let deb = match &resolved.fetch {
        Fetch::Apt => {
            run(Command::new("apt-get")
                // As root apt drops to user _apt to fetch, which cannot write here.
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
                .current_dir(&download))
            .context(
                "downloading the guest kernel; if apt cannot find it, run `apt-get update` (or `cargo xtask setup`)",
            )?;
            fs::read_dir(&download)?
                .filter_map(|e| Some(e.ok()?.path()))
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?
        }
        Fetch::Url { url, sha256 } => {
            let deb = download.join(format!("{package}.deb"));
            run(Command::new("curl")
                .args(["-fsSL", "--retry", "3", "--connect-timeout", "20", "-o"])
                .arg(&deb)
                .arg(url))
            .with_context(|| format!("downloading {url}"))?;
            let out = Command::new("sha256sum").arg(&deb).output().context("running sha256sum")?;
            let got = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned();
            anyhow::ensure!(
                out.status.success() && got == *sha256,
                "{url}: SHA256 {got}, but the archive's index says {sha256}"
            );
            deb
        }
    };

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

/// `tool -dcq` over `data` in memory.
fn decompress(tool: &str, package: &str, data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .arg("-dcq")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool} (apt-get install {package})"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let out = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(data));
        let out = child.wait_with_output();
        (writer.join().expect("writer thread"), out)
    });
    let (written, out) = (out.0, out.1?);
    anyhow::ensure!(out.status.success(), "{tool} failed ({})", out.status);
    written?;
    Ok(out.stdout)
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

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "\
Package: linux-image-5.10.0-46-amd64-dbg
Version: 5.10.262-1
Filename: pool/updates/main/l/linux/linux-image-5.10.0-46-amd64-dbg_5.10.262-1_amd64.deb
SHA256: 1111

Package: linux-image-5.10.0-46-amd64-unsigned
Version: 5.10.262-1
Filename: pool/updates/main/l/linux/linux-image-5.10.0-46-amd64-unsigned_5.10.262-1_amd64.deb
SHA256: 2222

Package: linux-image-5.10.0-46-amd64
Source: linux-signed-amd64 (5.10.262+1)
Version: 5.10.262-1
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-5.10.0-46-amd64_5.10.262-1_amd64.deb
Size: 56995900
SHA256: 6d89

Package: linux-image-5.10.0-46-cloud-amd64
Version: 5.10.262-1
Filename: pool/x.deb
SHA256: 3333

Package: linux-image-5.10.0-9-amd64
Version: 5.10.70-1
Filename: pool/y.deb
SHA256: 4444
";

    #[test]
    fn the_index_yields_the_signed_image_packages_only() {
        let found = kernels_in_index(INDEX, "linux-image-5.10.0-", "https://a/debian-security");
        assert_eq!(
            found,
            [
                ArchivePackage {
                    package: "linux-image-5.10.0-46-amd64".into(),
                    version: "5.10.262-1".into(),
                    url: "https://a/debian-security/pool/updates/main/l/linux-signed-amd64/\
                          linux-image-5.10.0-46-amd64_5.10.262-1_amd64.deb"
                        .into(),
                    sha256: "6d89".into(),
                },
                ArchivePackage {
                    package: "linux-image-5.10.0-9-amd64".into(),
                    version: "5.10.70-1".into(),
                    url: "https://a/debian-security/pool/y.deb".into(),
                    sha256: "4444".into(),
                },
            ]
        );
        assert_eq!(abi("linux-image-5.10.0-46-amd64", "linux-image-5.10.0-"), 46);
        assert!(
            abi("linux-image-5.10.0-46-amd64", "linux-image-5.10.0-") > abi(&found[1].package, "linux-image-5.10.0-")
        );
    }

    #[test]
    fn a_kept_archive_answer_reads_back() {
        let dir = std::env::temp_dir().join(format!("xtask-kernel-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("resolved");
        fs::write(&cache, "archive 1765000000 linux-image-5.10.0-46-amd64 5.10.262-1 https://a/b.deb 6d89").unwrap();
        let (at, p) = read_archive_answer(&cache).unwrap();
        assert_eq!(
            (at, p.package.as_str(), p.version.as_str()),
            (1765000000, "linux-image-5.10.0-46-amd64", "5.10.262-1")
        );
        // An apt answer (6.1's format) is not an archive answer.
        fs::write(&cache, "1796532921749356496 linux-image-6.1.0-57-amd64").unwrap();
        assert!(read_archive_answer(&cache).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
