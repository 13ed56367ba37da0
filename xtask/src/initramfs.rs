//! The guest's initramfs: busybox, the guest kernel's modules with their
//! dependencies, modules.dep, `/boot/config-<release>` and the init script.
//! Nothing else: the command runs in the host's userland (see guest_init.sh).
//!
//! It is an uncompressed newc cpio (decompressing costs seconds under TCG),
//! cached as `<cache>/initramfs/<release>-<key>.cpio` where the key hashes
//! everything that decides its content.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::kernel::Unpacked;

/// PID 1 of the guest.
const INIT: &str = include_str!("guest_init.sh");
/// Static busybox from the host's busybox-static package: shell, mount,
/// modprobe (also as the kernel's /sbin/modprobe) and depmod.
const BUSYBOX: &str = "/usr/bin/busybox";
/// Shipped besides every `drivers/md/dm-*.ko`; dependencies come along.
const MODULES: &[&str] =
    &["virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay", "loop", "ext4", "xfs", "crc32c_generic"];
/// Shipped when the kernel has them as modules.
const OPTIONAL_MODULES: &[&str] = &["crc32c_intel"];

/// The cpio for kernel `k`, built unless cached.
pub fn ensure(k: &Unpacked) -> Result<PathBuf> {
    let dir = crate::cache_dir().join("initramfs");
    let image = dir.join(format!("{}-{:016x}.cpio", k.release, key(k)?));
    if image.exists() {
        return Ok(image);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Private names until the rename: concurrent runs may build at once.
    let stage = dir.join(format!("stage.{}", std::process::id()));
    let partial = image.with_extension(format!("partial.{}", std::process::id()));
    let built = stage_tree(k, &stage).and_then(|()| write_cpio(&stage, &partial));
    fs::remove_dir_all(&stage).ok();
    built.with_context(|| format!("building the initramfs for {}", k.release))?;
    fs::rename(&partial, &image)?;

    // Images of this release built from older inputs are dead weight.
    let prefix = format!("{}-", k.release);
    for old in fs::read_dir(&dir)? {
        let old = old?.path();
        let name = old.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".cpio") && old != image {
            fs::remove_file(&old).ok();
        }
    }
    Ok(image)
}

/// Hash of the inputs: this builder, the init script, the unpacked kernel
/// (re-unpacking rewrites vmlinux) and busybox.
fn key(k: &Unpacked) -> Result<u64> {
    let mut h = DefaultHasher::new();
    (include_str!("initramfs.rs"), INIT, &k.release).hash(&mut h);
    for file in [&k.vmlinux, Path::new(BUSYBOX)] {
        let m = fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
        (m.len(), m.mtime(), m.mtime_nsec()).hash(&mut h);
    }
    Ok(h.finish())
}

/// Lays out the initramfs in `stage`.
fn stage_tree(k: &Unpacked, stage: &Path) -> Result<()> {
    let rel = &k.release;
    let src = k.root.join("lib/modules").join(rel);
    let dst = stage.join("lib/modules").join(rel);
    if stage.exists() {
        fs::remove_dir_all(stage)?;
    }
    // Mount points of the init script.
    for d in ["bin", "sbin", "boot", "dev", "proc", "sys", "ctl", "ro", "rw", "newroot"] {
        fs::create_dir_all(stage.join(d))?;
    }

    for (path, ko) in resolve_modules(&src)?.values() {
        let rel = path.strip_prefix(&src)?.to_str().context("non-UTF-8 module path")?;
        let to = dst.join(rel.trim_end_matches(".xz"));
        fs::create_dir_all(to.parent().expect("module path has a parent"))?;
        fs::write(&to, ko).with_context(|| format!("writing {}", to.display()))?;
    }
    for f in ["modules.builtin", "modules.order"] {
        fs::copy(src.join(f), dst.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let depmod = Command::new(BUSYBOX)
        .arg("depmod")
        .arg("-b")
        .arg(stage)
        .arg(rel)
        .status()
        .context("running busybox depmod (apt-get install busybox-static)")?;
    anyhow::ensure!(depmod.success(), "busybox depmod failed ({depmod})");

    fs::copy(BUSYBOX, stage.join("bin/busybox"))
        .with_context(|| format!("copying {BUSYBOX} (apt-get install busybox-static)"))?;
    std::os::unix::fs::symlink("busybox", stage.join("bin/sh"))?;
    // The kernel runs /sbin/modprobe for modules it wants (dm targets, crc32c).
    std::os::unix::fs::symlink("../bin/busybox", stage.join("sbin/modprobe"))?;
    fs::copy(k.root.join(format!("boot/config-{rel}")), stage.join(format!("boot/config-{rel}")))
        .context("copying the kernel config")?;
    let init = stage.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Module name (`-` spelled `_`) to its file and uncompressed contents, for
/// everything to ship: every `drivers/md/dm-*`, [`MODULES`],
/// [`OPTIONAL_MODULES`] and what they depend on.
fn resolve_modules(modules_dir: &Path) -> Result<BTreeMap<String, (PathBuf, Vec<u8>)>> {
    let mut all = BTreeMap::new();
    index_modules(&modules_dir.join("kernel"), &mut all)?;
    let builtin: BTreeSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Some(norm(l.rsplit('/').next()?.strip_suffix(".ko")?)))
        .collect();

    let mut queue: VecDeque<String> = MODULES.iter().map(|m| norm(m)).collect();
    let md = modules_dir.join("kernel/drivers/md");
    queue.extend(
        all.iter()
            .filter(|(name, path)| name.starts_with("dm_") && path.starts_with(&md))
            .map(|(name, _)| name.clone()),
    );
    queue.extend(OPTIONAL_MODULES.iter().map(|m| norm(m)).filter(|m| all.contains_key(m)));

    let mut shipped = BTreeMap::new();
    let mut seen = BTreeSet::new();
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(path) = all.get(&name) else {
            if builtin.contains(&name) {
                continue;
            }
            bail!("module {name} is neither in {} nor built in", modules_dir.display());
        };
        let ko = read_module(path)?;
        queue.extend(depends(&ko).map(norm));
        shipped.insert(name, (path.clone(), ko));
    }
    Ok(shipped)
}

/// Adds every module under `dir` to `index`, keyed by module name.
fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = file.strip_suffix(".ko").or(file.strip_suffix(".ko.xz")) {
            index.insert(norm(name), path);
        }
    }
    Ok(())
}

/// A module's ELF. Debian's 6.12 ships them xz-compressed; they go into the
/// initramfs uncompressed, so the guest spends no time on xz.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz").arg("-dcq").arg(path).output().context("running xz (apt-get install xz-utils)")?;
        anyhow::ensure!(out.status.success(), "xz failed ({}) on {}", out.status, path.display());
        Ok(out.stdout)
    } else {
        fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// The `depends=` list from a module's `.modinfo` (NUL-separated `key=value`).
fn depends(ko: &[u8]) -> impl Iterator<Item = &str> {
    const KEY: &[u8] = b"\0depends=";
    let value = ko
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| {
            let rest = &ko[at + KEY.len()..];
            &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
        })
        .unwrap_or_default();
    std::str::from_utf8(value).unwrap_or_default().split(',').filter(|d| !d.is_empty())
}

/// Module names treat `-` and `_` alike; `_` is the kernel's spelling.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Writes `stage` as an uncompressed newc cpio, plus a `/dev/console` node so
/// init has its stdio before devtmpfs is mounted.
fn write_cpio(stage: &Path, out: &Path) -> Result<()> {
    let mut w = Newc { out: BufWriter::new(File::create(out)?), ino: 0 };
    w.tree(stage, stage)?;
    w.entry("dev/console", 0o020600, (5, 1), &[])?;
    w.entry("TRAILER!!!", 0, (0, 0), &[])?;
    w.out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

struct Newc {
    out: BufWriter<File>,
    ino: u32,
}

impl Newc {
    /// Adds everything below `dir` (directories before their contents).
    fn tree(&mut self, stage: &Path, dir: &Path) -> Result<()> {
        let mut entries = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = path.strip_prefix(stage)?.to_str().context("non-UTF-8 path")?;
            let meta = fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            if kind.is_dir() {
                self.entry(name, 0o040755, (0, 0), &[])?;
                self.tree(stage, &path)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&path)?;
                let target = target.to_str().context("non-UTF-8 link")?;
                self.entry(name, 0o120777, (0, 0), target.as_bytes())?;
            } else {
                let mode = 0o100000 | (meta.mode() & 0o777);
                self.entry(name, mode, (0, 0), &fs::read(&path)?)?;
            }
        }
        Ok(())
    }

    /// One newc record: 110-byte ASCII header, name, data; each NUL-padded to 4 bytes.
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        self.ino += 1;
        let size = u32::try_from(data.len()).context("file too large for newc")?;
        let namesize = name.len() as u32 + 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        let pad = |n: usize| vec![0u8; (4 - n % 4) % 4];
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.out.write_all(&pad(header.len() + name.len() + 1))?;
        self.out.write_all(data)?;
        self.out.write_all(&pad(data.len()))?;
        Ok(())
    }
}
