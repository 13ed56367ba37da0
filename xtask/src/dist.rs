//! `cargo xtask dist`: the Debian package, `target/dist/hcp_<version>_amd64.deb`.
//!
//! Built with `dpkg-deb` from a staged tree rather than cargo-deb: the tree
//! holds files hcp itself generates (the manual pages and completions come
//! from the built binary, `hcp __manual` and `hcp completions`), the
//! maintainer scripts are ours either way, and dpkg-dev (dpkg-deb,
//! dpkg-shlibdeps) is on every Debian machine, where cargo-deb would be one
//! more tool to build in CI. `Depends:` is computed by dpkg-shlibdeps from
//! the binary's ELF, never written by hand.
//!
//! What goes where (Debian 12's paths):
//! - `/usr/sbin/hcp`, stripped;
//! - `/usr/share/man/man8/hcp.8.gz` and `hcp-<command>.8.gz`;
//! - completions for bash, zsh and fish in their vendor directories;
//! - `/lib/systemd/system/`: `hcp-activate.service` (enabled by postinst),
//!   `hcp-stats.service` and `.timer` (installed, not enabled);
//! - `/usr/share/doc/hcp/`: copyright (both licences), changelog, README;
//! - `/var/lib/hcp` and `/etc/hcp`: made root-only by postinst (not shipped
//!   in the archive: dpkg would own them, and their contents are the
//!   administrator's).
//! - Maintainer scripts in `dist/debian/`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::workspace_root;

#[derive(clap::Args, Default)]
pub struct DistArgs {
    /// Skip the release build (use target/release/hcp as it is).
    #[arg(long)]
    no_build: bool,
    /// Skip lintian.
    #[arg(long)]
    no_lintian: bool,
}

/// The package's name and its maintainer, as Debian's control file wants them.
const PACKAGE: &str = "hcp";
const MAINTAINER: &str = "hcp developers <hcp@hcp-rs.org>";
const MAINTAINER_SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];
const UNITS: &[&str] = &["hcp-activate.service", "hcp-stats.service", "hcp-stats.timer"];

pub fn run(args: &DistArgs) -> Result<()> {
    println!("{}", build(args)?.display());
    Ok(())
}

/// Builds the package and checks it with lintian (unless told not to);
/// returns its path.
pub fn build(args: &DistArgs) -> Result<PathBuf> {
    let root = workspace_root();
    let target = crate::vm::target_dir();
    if !args.no_build {
        let status = Command::new("cargo")
            .args(["build", "--release", "-p", "hcp-user", "--bin", "hcp"])
            .current_dir(&root)
            .status()
            .context("running cargo")?;
        ensure!(status.success(), "the release build failed ({status})");
    }
    let version = version(&root)?;
    let out = target.join("dist");
    let stage = out.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }

    let hcp = stage.join("usr/sbin/hcp");
    copy(&target.join("release/hcp"), &hcp, 0o755)?;
    exec("strip", Command::new("strip").args(["--strip-unneeded", "--remove-section=.comment"]).arg(&hcp))?;

    // The manual, from the binary itself.
    let pages = out.join("man");
    if pages.exists() {
        fs::remove_dir_all(&pages)?;
    }
    fs::create_dir_all(&pages)?;
    exec("hcp __manual", Command::new(&hcp).arg("__manual").arg(&pages).stdout(std::process::Stdio::null()))?;
    let man8 = stage.join("usr/share/man/man8");
    for page in fs::read_dir(&pages)? {
        let page = page?.path();
        gzip_into(&page, &man8)?;
    }

    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/hcp"),
        ("zsh", "usr/share/zsh/vendor-completions/_hcp"),
        ("fish", "usr/share/fish/vendor_completions.d/hcp.fish"),
    ] {
        let script = Command::new(&hcp).args(["completions", shell]).output().context("running hcp completions")?;
        ensure!(script.status.success(), "hcp completions {shell} failed: {}", String::from_utf8_lossy(&script.stderr));
        write(&stage.join(path), &script.stdout, 0o644)?;
    }

    let dist = root.join("dist");
    for unit in UNITS {
        copy(&dist.join(unit), &stage.join("lib/systemd/system").join(unit), 0o644)?;
    }

    let doc = stage.join("usr/share/doc").join(PACKAGE);
    write(&doc.join("copyright"), copyright(&root)?.as_bytes(), 0o644)?;
    let changelog = out.join("changelog");
    fs::write(&changelog, changelog_text(&version, &root)?)?;
    gzip_into(&changelog, &doc)?;
    gzip_into(&root.join("README.md"), &doc)?;

    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    for script in MAINTAINER_SCRIPTS {
        copy(&dist.join("debian").join(script), &debian.join(script), 0o755)?;
    }
    let payload = payload_files(&stage)?;
    write(&debian.join("md5sums"), md5sums(&stage, &payload)?.as_bytes(), 0o644)?;
    let control = control(&version, &depends(&out, &hcp)?, installed_size_kib(&stage, &payload)?);
    write(&debian.join("control"), control.as_bytes(), 0o644)?;

    let deb = out.join(format!("{PACKAGE}_{version}_amd64.deb"));
    exec("dpkg-deb", Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    eprintln!("dist: built {} ({} KiB)", deb.display(), fs::metadata(&deb)?.len() / 1024);
    if !args.no_lintian {
        lintian(&deb)?;
    }
    Ok(deb)
}

/// lintian's verdict: errors fail, warnings are printed.
fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0", "--display-info"])
        .arg(deb)
        .output()
        .context("running lintian (apt-get install lintian)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "lintian found errors in {}", deb.display());
    eprintln!("dist: lintian: no errors ({} other tags)", text.lines().count());
    Ok(())
}

/// The workspace version (`[workspace.package] version`).
fn version(root: &Path) -> Result<String> {
    let toml = fs::read_to_string(root.join("Cargo.toml"))?;
    let after = toml.split_once("[workspace.package]").context("no [workspace.package] in Cargo.toml")?.1;
    after
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .context("no version in [workspace.package]")
}

/// `Depends:` as dpkg-shlibdeps computes it from the binary's dynamic
/// libraries (it wants a debian/control naming the package beside it).
fn depends(out: &Path, binary: &Path) -> Result<String> {
    let src = out.join("shlibdeps");
    fs::create_dir_all(src.join("debian"))?;
    fs::write(src.join("debian/control"), format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"))?;
    let result = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(binary)
        .current_dir(&src)
        .output()
        .context("running dpkg-shlibdeps (apt-get install dpkg-dev)")?;
    ensure!(result.status.success(), "dpkg-shlibdeps failed: {}", String::from_utf8_lossy(&result.stderr));
    let text = String::from_utf8_lossy(&result.stdout);
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    Ok(depends.to_string())
}

fn control(version: &str, depends: &str, installed_size: u64) -> String {
    format!(
        "Package: {PACKAGE}
Version: {version}
Architecture: amd64
Maintainer: {MAINTAINER}
Installed-Size: {installed_size}
Depends: {depends}
Suggests: prometheus-node-exporter
Section: admin
Priority: optional
Homepage: https://github.com/hcp-rs/hcp
Description: copy-on-write snapshots of live block devices, with measured cost
 hcp takes point-in-time snapshots of busy block devices without stopping
 the service, in the manner of Linux Hot Copy: each snapshot is a block
 device (/dev/hcpN), mounted where asked, with its changed blocks kept in a
 file or on a device of its own. The copy-on-write is the kernel's
 device-mapper snapshot target; hcp ships no kernel module.
 .
 With --trace, eBPF programs measure what each snapshot costs the running
 system: the latency it adds to writes, the copy-out traffic, how long the
 filesystem was frozen and the write amplification, as text, JSON,
 Prometheus series and an HTML report.
 .
 Also: rollback to a snapshot (snapshot-merge), full and incremental
 exports for backups, and plain partitions made snapshottable while
 mounted (hcp enroll, with hcp-activate.service at boot).
"
    )
}

/// Debian's machine-readable copyright file, with both licences.
fn copyright(root: &Path) -> Result<String> {
    let mit = fs::read_to_string(root.join("LICENSE-MIT")).context("reading LICENSE-MIT")?;
    let indented = |text: &str| {
        text.lines().map(|l| if l.trim().is_empty() { " .".to_string() } else { format!(" {l}") }).collect::<Vec<_>>()
    };
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: hcp
Source: https://github.com/hcp-rs/hcp

Files: *
Copyright: 2026 The hcp developers
License: MIT or Apache-2.0

Files: hcp-ebpf/*
Copyright: 2026 The hcp developers
License: MIT or GPL-2
Comment: The eBPF programs, embedded in /usr/sbin/hcp and loaded into the
 kernel, are dual-licensed as the kernel requires for the helpers they call.

License: MIT
{}

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

License: GPL-2
 On Debian systems, the full text of the GNU General Public License,
 version 2, is in /usr/share/common-licenses/GPL-2.
",
        indented(&mit).join("\n")
    ))
}

/// A Debian changelog entry for this version, dated by the last commit.
fn changelog_text(version: &str, root: &Path) -> Result<String> {
    let date = Command::new("git")
        .args(["log", "-1", "--format=%aD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "Sun, 06 Dec 2026 00:00:00 +0000".to_string());
    Ok(format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Release {version}: see README.md.gz.\n\n -- {MAINTAINER}  {date}\n"
    ))
}

/// `md5sum`'s lines for the payload.
fn md5sums(stage: &Path, payload: &[PathBuf]) -> Result<String> {
    let out = Command::new("md5sum").args(payload).current_dir(stage).output().context("running md5sum")?;
    ensure!(out.status.success(), "md5sum failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// Installed-Size: KiB of the files, as dpkg-gencontrol counts them
/// (each file rounded up to a KiB).
fn installed_size_kib(stage: &Path, payload: &[PathBuf]) -> Result<u64> {
    let mut kib = 0;
    for f in payload {
        kib += fs::metadata(stage.join(f))?.len().div_ceil(1024);
    }
    Ok(kib)
}

/// The files the package installs (all of `stage` but DEBIAN/), relative
/// to it and sorted.
fn payload_files(stage: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    walk(stage, &mut files)?;
    let mut payload: Vec<PathBuf> = files
        .iter()
        .filter(|f| !f.starts_with(stage.join("DEBIAN")))
        .map(|f| f.strip_prefix(stage).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;
    payload.sort();
    Ok(payload)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().expect("a path in the stage"))?;
    let mut f = fs::File::create(to).with_context(|| format!("writing {}", to.display()))?;
    f.write_all(bytes)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `file` gzipped (-9n: no name or time inside, so builds are reproducible)
/// into `dir` as `<name>.gz`.
fn gzip_into(file: &Path, dir: &Path) -> Result<()> {
    let name = file.file_name().context("a file name")?.to_string_lossy().to_string();
    let out = Command::new("gzip").args(["-9nc"]).arg(file).output().context("running gzip")?;
    ensure!(out.status.success(), "gzip failed on {}", file.display());
    write(&dir.join(format!("{name}.gz")), &out.stdout, 0o644)
}

fn exec(what: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
