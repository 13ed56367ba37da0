//! `cargo xtask vm -- CMD ARGS...`: boots a Debian kernel under qemu (TCG: the
//! host has no device-mapper and no usable KVM) and runs CMD inside it, in the
//! host's own userland.
//!
//! What CMD sees (guest_init.sh sets it up):
//! - the host's / at the same paths, read-only over 9p, writable through an
//!   overlay whose upper layer is guest RAM: writes work anywhere and the host
//!   never sees them (O_DIRECT does not work there: use a --disk);
//! - `/hcp-vm-out` (`$HCP_VM_OUT`): the one directory shared with the host, for
//!   results; on the host it is `.cache/vm/<run>/out` (printed at the end);
//! - virtio disks in this order: the `--attach FILE` images (kept), then the
//!   `--disk SIZE`s, empty and sparse (deleted afterwards): /dev/vda,
//!   /dev/vdb, ...; a `--root-disk` comes last, after all of them;
//! - proc, sys, devtmpfs (no udev), devpts, /dev/shm, a fresh /run, tracefs,
//!   debugfs, bpffs, cgroup2; the guest's modules with busybox as /sbin/modprobe,
//!   and dm_mod, dm_snapshot, loop, ext4, xfs, virtio_blk, 9p, overlay loaded;
//! - the caller's directory, argv (exec'd as is, no shell in between) and
//!   environment minus [`ENV_DENY`], plus: `<target>/{debug,release}` first on
//!   PATH, `HCP_VM_OUT`, and `DM_DISABLE_UDEV=1` unless set (libdevmapper tools
//!   then make the /dev/mapper nodes themselves instead of waiting for udev);
//! - stdin is /dev/null; stdout and stderr stream live to the caller's.
//!
//! With `--root-disk FILE` the overlay's upper layer (the root's writes) is
//! on the ext4 in FILE instead of guest RAM, so a later run with the same FILE
//! sees everything an earlier one wrote (/etc, installed packages, enabled
//! units); FILE is made (2 GiB sparse, `mkfs.ext4`) if it does not exist, and
//! kept. The kernel's writes to kept disks are synced before the guest exits.
//!
//! With `--systemd`, after the same set-up the guest's PID 1 becomes the
//! host's systemd in that root (guest_init.sh, `boot_systemd`), and CMD runs,
//! as above, from the service `hcp-vm-command`, wanted by and ordered after
//! multi-user.target and the default target, once the boot is complete
//! (`systemctl is-system-running` says `running` or `degraded`); its end
//! powers the guest off cleanly. What else is different then:
//! - systemd-udevd runs: /dev/disk/by-*, /dev/mapper nodes; coldplug covers
//!   block and misc devices only; system services do not see
//!   `DM_DISABLE_UDEV` (CMD still gets it, from the caller's environment rules);
//! - /etc/fstab (the host's, or what an earlier run left in a root disk) is
//!   mounted by systemd; a failed boot (emergency or rescue mode) powers off
//!   and fails the run, with the journal in the console log;
//! - hostname `hcp-vm`, a fixed machine-id, a volatile journal (also copied
//!   to the console log);
//! - units pointless here are masked for the boot (gettys, timers, dbus,
//!   logind, utmp, lvm2-monitor, the host's own services: the list is in
//!   guest_init.sh); `systemctl unmask --runtime UNIT` undoes one;
//! - the control share is at /run/hcp-vm-ctl.
//!
//! The exit status is CMD's (0-255). Harness failures (kernel panic, timeout,
//! lost status, guest init) are errors that name the guest console log,
//! `.cache/vm/<run>/console.log`. `--disk` disks and control files are
//! removed after the run, the log and the output dir are kept; runs idle for a day are
//! pruned.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::initramfs;
use crate::kernel::{self, GuestKernel, Unpacked};

#[derive(clap::Args)]
pub struct VmArgs {
    /// Guest kernel: Debian 12's 6.1 or 6.12, or Debian 11's 5.10.
    #[arg(long, default_value = "6.1")]
    pub kernel: GuestKernel,
    /// Add an empty sparse virtio disk, deleted after the run: 64M, 1G, 512K
    /// or bytes. They follow the --attach ones: /dev/vda, /dev/vdb, ...
    #[arg(long = "disk", value_name = "SIZE")]
    pub disks: Vec<String>,
    /// Attach an existing image file as a virtio disk, kept after the run.
    /// These come first: /dev/vda, /dev/vdb, ... in the order given.
    #[arg(long = "attach", value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Keep the root's writes in this image file (an ext4 made here, 2 GiB
    /// sparse, if the file does not exist), so later runs with the same file
    /// see them. It is the last virtio disk, after every --attach and --disk.
    #[arg(long, value_name = "FILE")]
    pub root_disk: Option<PathBuf>,
    /// Boot with systemd as PID 1 (the host's, in the guest's root); the
    /// command runs as a service once the boot is complete, then the guest
    /// powers off.
    #[arg(long)]
    pub systemd: bool,
    /// Keep address-space layout randomization in the guest. Off by default:
    /// QEMU 7.2's TCG keys the code it translates by virtual address, so
    /// under randomization each process translates all the code it runs
    /// anew (hcp's argument parsing took 120 ms randomized, 15 ms not, in
    /// the 6.12 guest), which only slows the tests. The bench keeps it, so
    /// that its figures compare with earlier runs.
    #[arg(long)]
    pub aslr: bool,
    /// Kill the guest after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Guest memory in MiB (the overlay's writes live there too).
    #[arg(long, default_value_t = 2048)]
    pub mem: u32,
    /// Guest CPUs. One by default: with two, multi-threaded TCG lets one
    /// vCPU run kernel text that the other is live-patching (static keys,
    /// flipped whenever a tracepoint or BPF program is attached), and the
    /// guest oopses on a stray int3 now and then. A single vCPU cannot race.
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Put target/release (else target/debug) first on the guest's PATH.
    #[arg(long)]
    pub release: bool,
    /// Skip building hcp first.
    #[arg(long)]
    pub no_build: bool,
    /// Copy the guest console to stderr.
    #[arg(long)]
    pub verbose: bool,
    /// The command and its arguments, exec'd in the guest; it finds the
    /// directory shared with the host for results in $HCP_VM_OUT.
    #[arg(required = true, last = true)]
    pub cmd: Vec<String>,
}

/// Where the output share is mounted in the guest.
const GUEST_OUT: &str = "/hcp-vm-out";
/// The size of the image `--root-disk` makes when the file does not exist.
const ROOT_DISK_SIZE: u64 = 2 << 30;
/// The guest's /etc/machine-id under systemd (`systemd.machine_id=`): the
/// same in every run, whatever the host's holds.
const MACHINE_ID: &str = "6863702d766d00000000000000000001";
/// Caller variables not passed to the guest: terminal, display and session
/// plumbing that means nothing there, and the per-crate variables cargo set
/// for xtask itself. A trailing `*` matches a prefix.
const ENV_DENY: &[&str] = &[
    "TERM",
    "TERMCAP",
    "COLORTERM",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "XDG_SESSION_*",
    "SSH_*",
    "GPG_AGENT_INFO",
    "TMUX",
    "TMUX_PANE",
    "STY",
    "WINDOWID",
    "SHLVL",
    "_",
    "CARGO_PKG_*",
    "CARGO_MANIFEST_*",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];
/// How often the command's output files are checked for new bytes.
const POLL: Duration = Duration::from_millis(20);
/// Runs untouched for this long are deleted when the next run starts.
const KEEP_RUNS: Duration = Duration::from_secs(24 * 3600);
/// Console lines printed with a failure.
const TAIL_LINES: usize = 30;

pub fn run(args: &VmArgs) -> Result<i32> {
    run_keeping_output(args).map(|(code, _)| code)
}

/// [`run`], also returning the host directory that was the guest's
/// `$HCP_VM_OUT`, where the command left its results.
pub fn run_keeping_output(args: &VmArgs) -> Result<(i32, PathBuf)> {
    let disk_sizes =
        args.disks.iter().map(|s| parse_size(s).with_context(|| format!("--disk {s}"))).collect::<Result<Vec<_>>>()?;
    let bin_dir = target_dir().join(if args.release { "release" } else { "debug" });
    if !args.no_build {
        build_hcp(args.release)?;
    }
    for file in &args.attach {
        ensure!(file.is_file(), "--attach {}: no such image file", file.display());
    }
    if let Some(file) = &args.root_disk {
        ensure_root_disk(file)?;
    }
    let kernel = kernel::ensure(args.kernel)?;
    let initrd = initramfs::ensure(&kernel)?;

    let scratch = Scratch::create(disk_sizes.len())?;
    for (path, &size) in scratch.disks.iter().zip(&disk_sizes) {
        File::create(path).and_then(|f| f.set_len(size)).with_context(|| format!("creating {}", path.display()))?;
    }
    let command = command_script(&args.cmd, &guest_env(&bin_dir)?)?;
    fs::write(scratch.ctl.join("command"), command)?;
    for f in ["stdout", "stderr"] {
        File::create(scratch.ctl.join(f))?;
    }

    let qemu = qemu_command(args, &kernel, &initrd, &scratch);
    let boot = boot(qemu, args, &scratch)?;

    let outcome = outcome(&boot, args.timeout, &scratch);
    let to_command = boot.command_start.map_or("?".into(), |t| format!("{:.1}", t.as_secs_f64()));
    let result = match &outcome {
        Ok(rc) => format!("exit {rc}"),
        Err(_) => "failed".into(),
    };
    eprintln!(
        "xtask vm: kernel {}, qemu start to command {to_command} s, total {:.1} s, {result}; output dir {}",
        kernel.release,
        boot.total.as_secs_f64(),
        scratch.out.display()
    );
    outcome.map(|code| (code, scratch.out.clone()))
}

/// The qemu invocation: TCG always (KVM is unusable on these hosts), the
/// kernel booted directly, the serial console on stdout, three 9p shares.
/// The virtio disks in order: the --attach images, the --disk scratch
/// disks, the root disk.
fn qemu_command(args: &VmArgs, kernel: &Unpacked, initrd: &Path, scratch: &Scratch) -> Command {
    let drives: Vec<&Path> = args
        .attach
        .iter()
        .map(PathBuf::as_path)
        .chain(scratch.disks.iter().map(PathBuf::as_path))
        .chain(args.root_disk.as_deref())
        .collect();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .args(["-smp", &args.smp.to_string(), "-m", &args.mem.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(initrd)
        // acpi=noirq: routing PCI interrupts through ACPI's AML interpreter
        // costs about 0.4 s per virtio device under TCG.
        // tsc=unstable: TCG's TSC fails the kernel's checks anyway (it ends up
        // on hpet); saying so up front spares the late flip of the
        // sched_clock static key, whose live code patching sometimes oopses
        // (int3) under multi-threaded TCG.
        .arg("-append")
        .arg(kernel_command_line(args, drives.len()));
    for disk in drives {
        let file = qemu_opt(disk);
        qemu.arg("-drive").arg(format!("file={file},if=virtio,format=raw,cache=unsafe"));
    }
    for (tag, dir, extra) in [
        ("hostroot", Path::new("/"), ",readonly=on,multidevs=remap"),
        ("hcpctl", &scratch.ctl, ""),
        ("hcpout", &scratch.out, ""),
    ] {
        let path = qemu_opt(dir);
        qemu.arg("-virtfs").arg(format!("local,path={path},mount_tag={tag},security_model=none{extra}"));
    }
    // The exit status's second channel (see guest_init.sh).
    qemu.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    qemu
}

/// The guest kernel's command line; the `hcp_vm.*` words are guest_init.sh's.
fn kernel_command_line(args: &VmArgs, drives: usize) -> String {
    let mut line = "console=ttyS0 quiet panic=-1 acpi=noirq tsc=unstable".to_owned();
    if !args.aslr {
        line += " norandmaps";
    }
    if let Some(root) = args.root_disk.as_ref().map(|_| virtio_disk_name(drives - 1)) {
        line += &format!(" hcp_vm.root={root}");
    }
    if args.root_disk.is_some() || !args.attach.is_empty() {
        line += " hcp_vm.sync=1";
    }
    if args.systemd {
        line += &format!(" hcp_vm.systemd=1 systemd.machine_id={MACHINE_ID} systemd.hostname=hcp-vm");
        // The journal on the console: the console log then tells why a boot failed.
        line += " systemd.journald.forward_to_console=1";
        if args.verbose {
            line += " systemd.show_status=1";
        }
    }
    line
}

/// `vda` for the first virtio disk, `vdb` for the second, ..., `vdaa` after `vdz`.
fn virtio_disk_name(index: usize) -> String {
    let letter = |i: usize| char::from(b'a' + (i % 26) as u8);
    match index / 26 {
        0 => format!("vd{}", letter(index)),
        n => format!("vd{}{}", letter(n - 1), letter(index)),
    }
}

/// Makes `path` a sparse [`ROOT_DISK_SIZE`] image holding an empty ext4,
/// unless it exists.
fn ensure_root_disk(path: &Path) -> Result<()> {
    if path.exists() {
        ensure!(path.is_file(), "--root-disk {}: not an image file", path.display());
        return Ok(());
    }
    // A private name until mkfs is done: an interrupted run leaves no half-made disk.
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".partial.{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let made = File::create(&partial)
        .and_then(|f| f.set_len(ROOT_DISK_SIZE))
        .with_context(|| format!("creating {}", partial.display()))
        .and_then(|()| {
            let status = Command::new("mkfs.ext4")
                .args(["-F", "-q", "-L", "hcp-vm-root"])
                .arg(&partial)
                .status()
                .context("running mkfs.ext4 (apt-get install e2fsprogs)")?;
            ensure!(status.success(), "mkfs.ext4 failed ({status}) on {}", partial.display());
            Ok(())
        })
        .and_then(|()| fs::rename(&partial, path).with_context(|| format!("renaming to {}", path.display())));
    if made.is_err() {
        fs::remove_file(&partial).ok();
    }
    made.with_context(|| format!("making the root disk {}", path.display()))
}

/// What happened to qemu.
struct Boot {
    /// None if it was killed at the timeout.
    status: Option<ExitStatus>,
    /// When the guest's init said it starts the command, from qemu start.
    command_start: Option<Duration>,
    /// qemu start to exit.
    total: Duration,
}

/// Runs qemu to its end or the timeout, streaming the command's output and
/// logging the console.
fn boot(mut qemu: Command, args: &VmArgs, scratch: &Scratch) -> Result<Boot> {
    let log = File::create(&scratch.console).with_context(|| format!("creating {}", scratch.console.display()))?;
    let start = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let serial = child.stdout.take().expect("piped");
    let console = log_console(serial, log, start, args.verbose);
    let done = Arc::new(AtomicBool::new(false));
    let followers = [
        follow(scratch.ctl.join("stdout"), io::stdout(), done.clone()),
        follow(scratch.ctl.join("stderr"), io::stderr(), done.clone()),
    ];

    let deadline = start + Duration::from_secs(args.timeout);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            break None;
        }
        thread::sleep(POLL);
    };
    let total = start.elapsed();

    done.store(true, Ordering::Release);
    for f in followers {
        if let Err(e) = f.join().expect("output follower panicked") {
            eprintln!("xtask vm: warning: streaming the command's output: {e}");
        }
    }
    let command_start = console.join().expect("console logger panicked")?;
    Ok(Boot { status, command_start, total })
}

/// Copies the serial console to `log` with timestamps (and to stderr if
/// `verbose`); returns when, after qemu start, init announced the command.
fn log_console(
    serial: impl Read + Send + 'static,
    mut log: File,
    start: Instant,
    verbose: bool,
) -> JoinHandle<io::Result<Option<Duration>>> {
    thread::spawn(move || {
        let mut command_start = None;
        for line in BufReader::new(serial).split(b'\n') {
            let line = line?;
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            let t = start.elapsed();
            writeln!(log, "[{:7.3}] {line}", t.as_secs_f64())?;
            if verbose {
                eprintln!("{line}");
            }
            if command_start.is_none() && line.contains("hcp-vm: command start") {
                command_start = Some(t);
            }
        }
        Ok(command_start)
    })
}

/// Copies what the guest appends to `path` into `sink` until `done`, then
/// drains it. The guest writes through 9p with cache=none, so every write is
/// in the host file when it returns.
fn follow(path: PathBuf, mut sink: impl Write + Send + 'static, done: Arc<AtomicBool>) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut file = File::open(&path)?;
        let mut buf = vec![0; 64 << 10];
        loop {
            // Read after seeing `done`, so the last pass gets everything.
            let last = done.load(Ordering::Acquire);
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sink.write_all(&buf[..n])?;
            }
            sink.flush()?;
            if last {
                return Ok(());
            }
            thread::sleep(POLL);
        }
    })
}

/// The command's exit status, or what went wrong.
fn outcome(boot: &Boot, timeout: u64, scratch: &Scratch) -> Result<i32> {
    let Some(status) = boot.status else {
        return Err(failure(&format!("the guest timed out after {timeout} s (--timeout); qemu was killed"), scratch));
    };
    if let Some(rc) = fs::read_to_string(scratch.ctl.join("status")).ok().and_then(|s| s.trim().parse().ok()) {
        return Ok(rc);
    }
    // isa-debug-exit: qemu exits (value << 1) | 1; values above 127 read as 127.
    if let Some(code) = status.code().filter(|c| c & 1 == 1) {
        eprintln!("xtask vm: warning: no status file from the guest; exit status from isa-debug-exit");
        return Ok(code >> 1);
    }
    let console = fs::read_to_string(&scratch.console).unwrap_or_default();
    let find =
        |marker: &str| console.lines().find_map(|l| l.find(marker).map(|at| l[at + marker.len()..].trim().to_owned()));
    let what = if let Some(why) = find("hcp-vm: init failed:") {
        format!("the guest's init failed: {why}")
    } else if status.code() == Some(0) {
        // panic=-1 reboots at once, and -no-reboot turns that into qemu exiting 0.
        match find("Kernel panic - not syncing:") {
            Some(why) => format!("kernel panic in the guest: {why}"),
            None => "the guest rebooted or powered off before the command ended".to_owned(),
        }
    } else {
        format!("lost the command's exit status: qemu exited ({status}) and the guest wrote none")
    };
    Err(failure(&what, scratch))
}

/// An error naming the console log, with its last lines.
fn failure(what: &str, scratch: &Scratch) -> anyhow::Error {
    let console = fs::read_to_string(&scratch.console).unwrap_or_default();
    let lines: Vec<&str> = console.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    anyhow!("{what}\nguest console log: {} (last lines below)\n{tail}", scratch.console.display())
}

/// The guest's environment: the caller's minus [`ENV_DENY`], plus ours.
fn guest_env(bin_dir: &Path) -> Result<BTreeMap<OsString, OsString>> {
    let denied = |name: &OsStr| {
        ENV_DENY.iter().any(|d| match d.strip_suffix('*') {
            Some(prefix) => name.as_bytes().starts_with(prefix.as_bytes()),
            None => name == *d,
        })
    };
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().filter(|(k, _)| !denied(k)).collect();
    let path = env.remove(OsStr::new("PATH")).unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(std::env::split_paths(&path)))
        .context("joining PATH for the guest")?;
    env.insert("PATH".into(), path);
    env.entry("HOME".into()).or_insert_with(|| "/root".into());
    env.entry("DM_DISABLE_UDEV".into()).or_insert_with(|| "1".into());
    env.insert("HCP_VM_OUT".into(), GUEST_OUT.into());
    Ok(env)
}

/// `/ctl/command` for the guest's init: sets `"$@"` to the command line it
/// runs in the command's root. That is the host's env(1), so no shell stands
/// between the caller's argv and exec, and variables whose names no shell
/// accepts (`BASH_FUNC_f%%`) get through; every word is single-quoted.
fn command_script(argv: &[String], env: &BTreeMap<OsString, OsString>) -> Result<Vec<u8>> {
    let program = argv.first().context("no command given")?;
    // env(1) would take a first word with `=` for one more variable.
    ensure!(
        !program.contains('='),
        "the command {program:?} contains '=': set variables in the environment of `cargo xtask vm` instead"
    );
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut words =
        vec![b"/usr/bin/env".to_vec(), b"-i".to_vec(), b"-C".to_vec(), cwd.into_os_string().into_vec(), b"--".to_vec()];
    words.extend(env.iter().map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat()));
    words.extend(argv.iter().map(|a| a.as_bytes().to_vec()));

    let mut s = b"# Written by `cargo xtask vm`, sourced by the guest's init.\nset --".to_vec();
    for w in &words {
        s.extend_from_slice(b" \\\n\t");
        s.extend(sh_quote(w));
    }
    s.push(b'\n');
    Ok(s)
}

/// `s` single-quoted for sh: inside, only `'` itself needs care.
fn sh_quote(s: &[u8]) -> Vec<u8> {
    let mut q = vec![b'\''];
    for &b in s {
        match b {
            b'\'' => q.extend_from_slice(b"'\\''"),
            _ => q.push(b),
        }
    }
    q.push(b'\'');
    q
}

/// `64M`, `1G`, `512K` or plain bytes; a whole number of 512-byte sectors.
fn parse_size(s: &str) -> Result<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => bail!("unknown unit {unit:?}: use K, M, G, T or plain bytes"),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .context("expected a size like 64M, 1G, 512K or plain bytes")?;
    ensure!(bytes > 0 && bytes % 512 == 0, "a disk needs a positive multiple of 512 bytes");
    Ok(bytes)
}

/// A path as a qemu option value (commas are doubled).
fn qemu_opt(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Cargo's target directory for the workspace.
pub fn target_dir() -> PathBuf {
    let root = crate::workspace_root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d))
}

fn build_hcp(release: bool) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(crate::workspace_root()).args(["build", "-p", "hcp-user", "--bin", "hcp"]);
    if release {
        build.arg("--release");
    }
    let status = build.status().context("running cargo build")?;
    ensure!(status.success(), "building hcp failed ({status}); fix it, or pass --no-build to run without building");
    Ok(())
}

/// One run's files under `.cache/vm/<run>/`.
struct Scratch {
    /// Control share (`hcpctl`): command, stdout, stderr, status.
    ctl: PathBuf,
    /// Output share (`hcpout`).
    out: PathBuf,
    /// The serial console, timestamped.
    console: PathBuf,
    disks: Vec<PathBuf>,
}

impl Scratch {
    fn create(disks: usize) -> Result<Scratch> {
        let runs = crate::cache_dir().join("vm");
        prune(&runs);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
        let dir = runs.join(format!("{}-{}", now.as_secs(), std::process::id()));
        let ctl = dir.join("ctl");
        let out = dir.join("out");
        for d in [&ctl, &out] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(Scratch {
            ctl,
            out,
            console: dir.join("console.log"),
            disks: (0..disks).map(|i| dir.join(format!("disk{i}.img"))).collect(),
        })
    }
}

impl Drop for Scratch {
    /// Disk images can be big and control files were streamed already.
    fn drop(&mut self) {
        for d in &self.disks {
            fs::remove_file(d).ok();
        }
        fs::remove_dir_all(&self.ctl).ok();
    }
}

/// Deletes runs nothing touched for [`KEEP_RUNS`] (best effort).
fn prune(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for e in entries.flatten() {
        let idle = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if idle.is_some_and(|idle| idle > KEEP_RUNS) {
            fs::remove_dir_all(e.path()).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_disk_names_follow_the_kernels() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52].into_iter().map(virtio_disk_name).collect();
        assert_eq!(names, ["vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba"]);
    }
}
