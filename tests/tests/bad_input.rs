//! Bad input of every kind, through the real `hcp` binary on device-mapper
//! (these run in the VM, through `cargo xtask test`): devices, stores,
//! quotas and sizes, mount points, session names, option combinations and
//! hostile state files. Each is refused with its documented exit status
//! (see `hcp --help`) and exactly one line on stderr that names the cause
//! and the fix, and leaves the system as it was.

use std::fs;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hcp::kernel::dm::device::Dm;
use hcp::kernel::dm::table::{Linear, TargetParams};
use hcp_tests::{hcp_bin, hcp_json, require_root, run, serial, temp_dir, Fs, LoopDevice, Output, SystemState, Volume};
use serde_json::Value;

const SESSIONS: &str = "/run/hcp/sessions";

/// A hostile file planted before a case and taken away after it.
struct Plant {
    make: Box<dyn Fn()>,
    undo: Box<dyn Fn()>,
}

struct Case {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    code: i32,
    /// What the message must say about the cause, and about the fix.
    cause: String,
    fix: &'static str,
    plant: Option<Plant>,
}

fn case(args: &[&str], code: i32, cause: &str, fix: &'static str) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        code,
        cause: cause.to_string(),
        fix,
        plant: None,
    }
}

impl Case {
    fn env(mut self, name: &'static str, value: &str) -> Case {
        self.env.push((name, value.to_string()));
        self
    }

    fn planted(mut self, make: impl Fn() + 'static, undo: impl Fn() + 'static) -> Case {
        self.plant = Some(Plant { make: Box::new(make), undo: Box::new(undo) });
        self
    }
}

fn run_hcp(args: &[String], env: &[(&str, String)]) -> Output {
    let mut cmd = std::process::Command::new(hcp_bin());
    cmd.args(args).env_remove("HCP_LOCK_TIMEOUT").env_remove("HCP_FAULT");
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.output().expect("run hcp").into()
}

/// A copy of a live record, renamed to session `id`: a record hcp would
/// take for real if it did not check where it came from.
fn record_as(template: &Value, id: &str) -> Vec<u8> {
    let mut record = template.clone();
    record["id"] = id.into();
    record["snapshot_path"] = format!("/dev/{id}").into();
    serde_json::to_vec_pretty(&record).unwrap()
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    run("chown", &["-h", &format!("{uid}:{uid}"), path.to_str().unwrap()]);
}

/// Moves `path` aside (if it exists) and puts a symlink to `target` there;
/// the returned closure puts everything back.
fn symlink_over(path: &'static str, target: PathBuf) -> (impl Fn(), impl Fn()) {
    let aside = format!("{path}.aside");
    let aside2 = aside.clone();
    let make = move || {
        if Path::new(path).exists() {
            fs::rename(path, &aside).unwrap();
        }
        symlink(&target, path).unwrap();
    };
    let undo = move || {
        fs::remove_file(path).unwrap();
        if Path::new(&aside2).exists() {
            fs::rename(&aside2, path).unwrap();
        }
    };
    (make, undo)
}

fn chmod(path: &str, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn bad_input_is_refused_in_one_line_and_changes_nothing() {
    require_root();
    let _serial = serial();
    let mut vol = Volume::new("t-bad", 64);
    let dir = vol.mount(Fs::Ext4);
    let plain = LoopDevice::new(16 << 20);
    Fs::Ext4.mkfs(&plain.path);
    let plain_mnt = temp_dir("plain-mnt");
    run("mount", &[plain.path.to_str().unwrap(), plain_mnt.to_str().unwrap()]);
    let session = hcp_json(&["start", "--skip-mount", vol.path().to_str().unwrap()]);
    let id = session["session"].as_str().unwrap().to_string();
    let hcp_dev = session["snapshot"].as_str().unwrap().to_string();
    let store_loop = session["store_loop_device"].as_str().expect("a file store on a loop device").to_string();
    let template: Value = serde_json::from_slice(&fs::read(format!("{SESSIONS}/{id}.json")).unwrap()).unwrap();
    let a_file = dir.join("regular-file");
    fs::write(&a_file, b"x").unwrap();
    let vol_path = vol.path().to_str().unwrap().to_string();
    let real = format!("/dev/mapper/{}-real", vol.name);
    let tiny = LoopDevice::new(512 << 10);
    let free = LoopDevice::new(16 << 20);
    // A device mapped whole by one dm-linear device is snapshotted through
    // it (see the enroll tests); one mapped in part is in use.
    let half = LoopDevice::new(16 << 20);
    let half_line = Linear { device: half.devnum(), offset: 0 }.table_line(8 << 11);
    Dm::open().unwrap().create("t-bad-half", "TEST-t-bad-half", &[half_line]).unwrap();
    let partly_mapped = half.path.to_str().unwrap().to_string();
    let under = vol.loop_dev.path.to_str().unwrap().to_string();
    let (plain_dev, plain_mnt_s, a_file_s) =
        (plain.path.to_str().unwrap(), plain_mnt.to_str().unwrap(), a_file.to_str().unwrap());
    let on_origin = dir.join("store.cow");
    let elsewhere = temp_dir("hostile");
    // An application's directory: its config would be hidden under a mount.
    let app_dir = temp_dir("app");
    fs::write(app_dir.join("config"), b"port=8080\n").unwrap();
    let v = vol_path.as_str();

    let record = |name: &str| PathBuf::from(format!("{SESSIONS}/{name}"));
    let remove = |path: PathBuf| move || fs::remove_file(&path).unwrap();
    let h90 = record("hcp90.json");
    let good90 = record_as(&template, "hcp90");
    let lock_target = elsewhere.join("lock-target");
    fs::write(&lock_target, b"untouched").unwrap();

    let mut cases = vec![
        // Devices.
        case(
            &["start", "/dev/nonexistent-hcp-test"],
            3,
            "/dev/nonexistent-hcp-test does not exist",
            "give a block device",
        ),
        case(&["start", "/proc/self/status"], 2, "is not a block device", "give a block device"),
        case(&["start", &hcp_dev], 2, "is an hcp snapshot", "snapshot the origin instead"),
        case(&["start", &real], 2, "is the data device under an hcp origin", "snapshot the origin instead"),
        case(&["start", &store_loop], 2, &format!("is the store of hcp session {id}"), "snapshot the origin instead"),
        case(&["start", plain_dev], 5, "is mounted at", "hcp enroll --now"),
        case(
            &["start", &partly_mapped],
            4,
            "is in use by device /dev/mapper/t-bad-half built on it",
            "snapshot /dev/mapper/t-bad-half",
        ),
        case(&["start", "4095:4095"], 3, "no block device 4095:4095", "give an existing one"),
        case(&["start", ""], 2, "the device name is empty", "give a block device"),
        case(&["start", "/dev/hcp1\nreboot"], 3, "/dev/hcp1\\nreboot does not exist", "give a block device"),
        // Stores.
        case(&["start", "-c", on_origin.to_str().unwrap(), v], 5, "on the origin", "put the store on another device"),
        case(&["start", "-c", dir.to_str().unwrap(), v], 5, "on the origin", "put the store on another device"),
        case(&["start", "-c", plain_dev, v], 4, "is mounted at", "unmount it or give another device"),
        case(&["start", "-c", tiny.path.to_str().unwrap(), v], 2, "is too small", "give a larger device"),
        case(&["start", "-c", a_file_s, v], 2, "exists", "give a block device, a directory, or a new file path"),
        case(&["start", "-c", "/nonexistent-hcp-dir/s.cow", v], 2, "does not exist", "create it or give another -c"),
        case(&["start", "-c", v, v], 5, "is the origin or shares its blocks", "give a separate device"),
        case(&["start", "-c", &under, v], 5, "is the origin or shares its blocks", "give a separate device"),
        case(&["start", "-c", free.path.to_str().unwrap(), "-q", "1G", v], 2, "is larger than the store", "smaller -q"),
        // Quotas, sizes and chunk sizes.
        case(&["start", "-q", "lots", v], 2, "invalid size `lots`", "e.g."),
        case(&["start", "-q", "4K", v], 2, "quota 4 KiB is too small", "give a larger -q"),
        case(&["start", "-q", "0", v], 2, "it must leave room for changes", "e.g. 512M or 10%"),
        case(&["start", "-q", "-5G", v], 2, "a size cannot be negative", "e.g."),
        case(&["start", "-q", "200%", v], 2, "a percentage must be a whole number from 1 to 100", "e.g. 10%"),
        case(&["start", "-q", "0%", v], 2, "a percentage must be a whole number from 1 to 100", "e.g. 10%"),
        case(&["start", "--chunk-size", "3K", v], 2, "invalid chunk size `3K`", "a power of two from 4K to 1M"),
        case(&["start", "--chunk-size", "2M", v], 2, "invalid chunk size `2M`", "a power of two from 4K to 1M"),
        case(&["start", "--chunk-size", "0", v], 2, "invalid chunk size `0`", "a power of two from 4K to 1M"),
        // Mount points.
        case(&["start", "-m", a_file_s, v], 2, "is not a directory", "give a directory"),
        case(&["start", "-m", plain_mnt_s, v], 4, "is a mount point already", "give another directory"),
        case(&["start", "-m", "/etc", v], 2, "mount point /etc is not empty", "give an empty or new directory"),
        case(&["start", "-m", app_dir.to_str().unwrap(), v], 2, "is not empty: the snapshot would hide", "-m"),
        case(&["start", "-m", "/nonexistent-hcp/x/y", v], 2, "its parent directory does not exist", "create it"),
        // Session names.
        case(&["remove", "/dev/hcp999"], 3, "no hcp session for /dev/hcp999", "give an hcp device"),
        case(&["remove", "../../etc"], 3, "no hcp session for ../../etc", "give an hcp device"),
        case(&["remove", "hcp1;reboot"], 3, "no hcp session for hcp1;reboot", "give an hcp device"),
        case(&["-r", "hcp1\nreboot"], 3, "no hcp session for hcp1\\nreboot", "give an hcp device"),
        case(&["remove", ""], 2, "the TARGET is empty", "give an hcp device"),
        case(&["rollback", "/dev/hcp999"], 3, "no hcp session for /dev/hcp999", "give an hcp device"),
        case(&["rollback", ""], 2, "the TARGET is empty", "give an hcp device"),
        case(&["rollback", "--now"], 2, "required arguments were not provided", "see hcp --help"),
        case(&["show", plain_dev], 3, "has no hcp sessions", "give an origin that has some"),
        case(&["stats", "hcp999"], 3, "no hcp session hcp999", "give an hcp device"),
        case(&["changes", "/dev/hcp999"], 3, "no hcp session /dev/hcp999", "give an hcp device"),
        case(&["export", "hcp999", "--to", "/tmp/hcp-x.img"], 3, "no hcp session hcp999", "give an hcp device"),
        case(&["apply", "/nonexistent-hcp/d", "/nonexistent-hcp/i"], 2, "does not exist", "give a delta"),
        case(&["trace", "attach", "../../x"], 3, "no hcp session ../../x", "give an hcp device"),
        case(&["trace", "unload", "hcp1"], 2, "unexpected argument 'hcp1'", "see hcp --help"),
        // Option combinations.
        case(&["start"], 2, "give the DEVICE to snapshot", "see hcp --help"),
        case(&["start", "--report", "/tmp/r.json", v], 2, "--report needs --trace", "add --trace or drop --report"),
        case(&["start", "--baseline", "1s", v], 2, "--baseline needs --trace", "add --trace or drop --baseline"),
        case(&["-r", &hcp_dev, "--skip-mount"], 2, "--skip-mount only applies when starting a session", "drop it"),
        case(&["-r", &hcp_dev, "-c", "/tmp"], 2, "-c only applies when starting a session", "drop it"),
        case(&["-l", "-r", &hcp_dev], 2, "-l and -r are separate commands", "give one of them"),
        case(&["--keep-store", v], 2, "--keep-store only applies with -r", "drop it"),
        case(&["start", "--skip-mount", "-o", v], 2, "cannot be used with", "see hcp --help"),
        case(&["start", "--trace", "--report", a_file_s, v], 2, "exists already", "give a new file name"),
        case(&["start", "--trace", "--report", "/nonexistent-hcp/r.json", v], 2, "does not exist", "create it first"),
        case(&["stats", &id, "--json", "--prometheus"], 2, "cannot be combined", "pick one"),
        case(&["stats", &id, "--follow", "--interval", "0s"], 2, "--interval 0", "give a duration"),
        case(&["stats", &id, "--prometheus", "--output", a_file_s], 2, "every traced session", "drop the SESSION"),
        case(&["stats", "--prometheus", "--output", "/nonexistent-hcp/hcp.prom"], 2, "is not a directory", "make it"),
        case(&["stats", "--output", "/tmp/hcp.prom"], 2, "required arguments were not provided", "see hcp --help"),
        case(&["completions", "tcsh"], 2, "invalid value 'tcsh'", "see hcp --help"),
        case(&["start", v], 2, "HCP_LOCK_TIMEOUT=soon", "give a number of seconds").env("HCP_LOCK_TIMEOUT", "soon"),
        case(&["start", v], 2, "HCP_FAULT=nowhere:error: unknown step", "the steps are")
            .env("HCP_FAULT", "nowhere:error"),
    ];

    // Hostile state files: refused, never followed, nothing else changed.
    let hostile = "inspect it and delete it";
    {
        let (target, link) = (elsewhere.join("hcp90.json"), h90.clone());
        let good = good90.clone();
        cases.push(case(&["start", v], 5, &format!("{} is a symlink", h90.display()), hostile).planted(
            move || {
                fs::write(&target, &good).unwrap();
                symlink(&target, &link).unwrap();
            },
            remove(h90.clone()),
        ));
    }
    for (args, mode, uid, cause) in [
        (vec!["start", v], 0o600, 65534, "is owned by uid 65534, not root"),
        (vec!["remove", hcp_dev.as_str()], 0o600, 65534, "is owned by uid 65534, not root"),
        (vec!["start", v], 0o666, 0, "is writable by group or others (mode 0666)"),
        (vec!["list"], 0o620, 0, "is writable by group or others (mode 0620)"),
    ] {
        let (path, good) = (h90.clone(), good90.clone());
        cases.push(case(&args, 5, &format!("{} {cause}", h90.display()), hostile).planted(
            move || {
                write_mode(&path, &good, mode);
                chown(&path, uid);
            },
            remove(h90.clone()),
        ));
    }
    let mut wrong_version = template.clone();
    wrong_version["version"] = 2.into();
    wrong_version["id"] = "hcp90".into();
    wrong_version["snapshot_path"] = "/dev/hcp90".into();
    for (name, content, cause, args) in [
        ("hcp90.json", b"{\"version\": 1, \"id\": \"hcp90\", ".to_vec(), "is not valid JSON", vec!["start", v]),
        ("hcp90.json", b"\0\0\0\0".to_vec(), "is not valid JSON", vec!["list"]),
        ("hcp90.json", serde_json::to_vec(&wrong_version).unwrap(), "has format version 2", vec!["start", v]),
        ("hcp90.json", record_as(&template, "hcp91"), "describes session \"hcp91\", not hcp90", vec!["start", v]),
        ("evil.json", record_as(&template, "evil"), "is not named after an hcp session", vec!["start", v]),
        ("hcp90.json", vec![b' '; 2 << 20], "is larger than 1024 KiB", vec!["start", v]),
    ] {
        let path = record(name);
        let shown = path.display().to_string();
        let undo = remove(path.clone());
        cases.push(
            case(&args, 5, &format!("{shown} {cause}"), hostile)
                .planted(move || write_mode(&path, &content, 0o600), undo),
        );
    }
    {
        let path = h90.clone();
        cases.push(case(&["start", v], 5, &format!("{} is not a regular file", h90.display()), hostile).planted(
            move || {
                run("mkfifo", &["-m", "0600", path.to_str().unwrap()]);
            },
            remove(h90.clone()),
        ));
    }
    {
        let real_dir = elsewhere.join("sessions");
        fs::create_dir(&real_dir).unwrap();
        fs::set_permissions(&real_dir, fs::Permissions::from_mode(0o700)).unwrap();
        let (make, undo) = symlink_over(SESSIONS, real_dir);
        cases.push(case(&["start", v], 5, "/run/hcp/sessions is a symlink", "remove the link").planted(make, undo));
    }
    {
        let (make, undo) = symlink_over("/run/hcp/lock", lock_target.clone());
        cases.push(case(&["start", v], 5, "lock file /run/hcp/lock is a symlink", "delete it").planted(make, undo));
    }
    cases.push(
        case(&["start", v], 5, "/run/hcp is writable by group or others", "chmod 0700")
            .planted(|| chmod("/run/hcp", 0o777), || chmod("/run/hcp", 0o700)),
    );
    cases.push(
        case(&["start", v], 5, "/var/lib/hcp is writable by group or others", "chmod 0700")
            .planted(|| chmod("/var/lib/hcp", 0o1777), || chmod("/var/lib/hcp", 0o700)),
    );
    {
        let target = elsewhere.join("mounts");
        fs::create_dir(&target).unwrap();
        let (make, undo) = symlink_over("/var/hcp", target);
        cases.push(case(&["start", v], 5, "/var/hcp is a symlink", "remove the link").planted(make, undo));
    }

    let count = cases.len();
    let began = Instant::now();
    for Case { args, env, code, cause, fix, plant } in cases {
        if let Some(plant) = &plant {
            (plant.make)();
        }
        let before = SystemState::take();
        let out = run_hcp(&args, &env);
        let after = SystemState::take();
        if let Some(plant) = &plant {
            (plant.undo)();
        }
        let stderr = out.stderr.as_str();
        eprintln!("hcp {args:?} -> {}: {}", out.code, stderr.trim_end());
        assert_eq!(out.code, code, "hcp {args:?} {env:?}: exit {}, stderr: {stderr}", out.code);
        assert_eq!(stderr.lines().count(), 1, "hcp {args:?}: one line of error: {stderr:?}");
        assert!(stderr.starts_with("hcp: "), "hcp {args:?}: {stderr}");
        assert!(stderr.contains(cause.as_str()), "hcp {args:?}: stderr names the cause {cause:?}: {stderr}");
        assert!(stderr.contains(fix), "hcp {args:?}: stderr names the fix {fix:?}: {stderr}");
        assert_eq!(after, before, "hcp {args:?} changed the system: {stderr}");
    }
    eprintln!("{count} bad inputs refused in {:.1} s", began.elapsed().as_secs_f64());
    assert!(count >= 25);
    assert_eq!(fs::read(&lock_target).unwrap(), b"untouched", "the lock's symlink was never followed");
    // Tightened, never loosened: hcp's own directories are root's alone.
    for dir in ["/run/hcp", SESSIONS, "/var/lib/hcp"] {
        let mode = fs::symlink_metadata(dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{dir}");
    }

    run("umount", &[plain_mnt_s]);
    hcp_json(&["remove", &hcp_dev]);
    Dm::open().unwrap().remove("t-bad-half").unwrap();
    fs::remove_dir_all(&elsewhere).unwrap();
}

/// Holds hcp's lock as another hcp would, until dropped.
struct HeldLock {
    _file: fs::File,
}

impl HeldLock {
    fn take() -> HeldLock {
        fs::create_dir_all("/run/hcp").unwrap();
        chmod("/run/hcp", 0o700);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open("/run/hcp/lock")
            .unwrap();
        // SAFETY: flock on our own descriptor.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        HeldLock { _file: file }
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_start_waits_for_another_hcp_and_gives_up_in_time() {
    require_root();
    let _serial = serial();
    let vol = Volume::new("t-lock", 32);
    let args: Vec<String> = ["start", "--skip-mount", vol.path().to_str().unwrap(), "--json"].map(String::from).into();
    let held = HeldLock::take();
    let before = SystemState::take();

    // HCP_LOCK_TIMEOUT=0: fails at once.
    let began = Instant::now();
    let out = run_hcp(&args[..3], &[("HCP_LOCK_TIMEOUT", "0".into())]);
    assert_eq!(out.code, 4, "racing start: {}", out.stderr);
    // (The test holds the lock, not an hcp: its pid is not passed off as one.)
    assert!(out.stderr.contains("held by a process that is not a running hcp") && out.stderr.contains("retry when"));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(began.elapsed() < Duration::from_secs(3), "at once: {:?}", began.elapsed());
    // A bounded wait: gives up after it, saying how to wait longer.
    let began = Instant::now();
    let out = run_hcp(&args[..3], &[("HCP_LOCK_TIMEOUT", "1".into())]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(began.elapsed() >= Duration::from_secs(1), "waited: {:?}", began.elapsed());
    assert!(out.stderr.contains("waited 1 s; HCP_LOCK_TIMEOUT=SECONDS waits longer"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(SystemState::take(), before, "a start that gave up changed nothing");

    // The default: waits, and goes ahead once the lock is free.
    let waiting = std::process::Command::new(hcp_bin())
        .args(&args)
        .env_remove("HCP_LOCK_TIMEOUT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut waiting = waiting;
    assert!(waiting.try_wait().unwrap().is_none(), "the start waits for the lock");
    assert_eq!(SystemState::take(), before, "nothing changes while it waits");
    drop(held);
    let out: Output = waiting.wait_with_output().unwrap().into();
    assert_eq!(out.code, 0, "the waiting start went ahead: {}", out.stderr);
    let started: Value = serde_json::from_str(&out.stdout).unwrap();
    let removed = hcp_json(&["remove", started["session"].as_str().unwrap()]);
    assert_eq!(removed[0]["origin_restored"], true, "{removed}");
    assert_eq!(SystemState::take(), before);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn only_root_may_run_hcp() {
    require_root();
    let _serial = serial();
    let before = SystemState::take();
    for args in [&["start", "/dev/mapper/t-none"][..], &["-l"], &["remove", "hcp1"], &["stats", "--prometheus"]] {
        let out: Output = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(hcp_bin())
            .args(args)
            .output()
            .unwrap()
            .into();
        assert_eq!(out.code, 6, "non-root {args:?}: {}", out.stderr);
        assert!(out.stderr.contains("must run as root") && out.stderr.contains("sudo"), "{}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
    assert_eq!(SystemState::take(), before);
    // What needs nothing of root's still works.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(hcp_bin())
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
