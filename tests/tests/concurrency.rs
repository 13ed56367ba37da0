//! Several hcp at once, as an operator with many volumes runs them: starts
//! on the same origin and on different ones, and removes, all racing. hcp
//! queues them on its lock (as LVM's commands queue on theirs), so every
//! one succeeds; afterwards the records, the live dm devices and the data
//! agree, and removing everything leaves nothing behind. (In the VM,
//! through `cargo xtask test`.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use hcp_tests::{
    assert_files, hcp_bin, hcp_json, require_root, run, serial, write_files, Fs, Output, SystemState, Volume,
};
use serde_json::Value;

/// Starts `hcp ARGS --json` without waiting for it (the default lock wait).
fn spawn(args: &[String]) -> Child {
    Command::new(hcp_bin())
        .args(args)
        .arg("--json")
        .env_remove("HCP_LOCK_TIMEOUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hcp")
}

/// Runs every command at once; asserts each succeeded quietly and returns
/// its JSON output.
fn all_at_once(commands: &[Vec<String>]) -> Vec<Value> {
    let began = Instant::now();
    let children: Vec<Child> = commands.iter().map(|args| spawn(args)).collect();
    let outputs: Vec<Output> =
        children.into_iter().map(|c| c.wait_with_output().expect("wait for hcp").into()).collect();
    eprintln!("{} hcp commands at once took {:.1} s", commands.len(), began.elapsed().as_secs_f64());
    commands
        .iter()
        .zip(outputs)
        .map(|(args, out)| {
            assert_eq!(out.code, 0, "hcp {args:?} failed: {}", out.stderr);
            assert!(out.stderr.is_empty(), "hcp {args:?} said: {}", out.stderr);
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("hcp {args:?}: no JSON ({e}): {}", out.stdout))
        })
        .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Overwrites every file of `files` in `dir` in place (so each old block is
/// copied aside first), and flushes it to the device.
fn overwrite(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    for (name, data) in files {
        let inverted: Vec<u8> = data.iter().map(|b| !b).collect();
        let mut f = fs::OpenOptions::new().write(true).open(dir.join(name)).unwrap();
        f.write_all(&inverted).unwrap();
        f.sync_all().unwrap();
    }
}

fn write_head(dev: &Path, byte: u8) {
    let mut f = fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all(&vec![byte; 1 << 20]).unwrap();
    f.sync_all().unwrap();
}

fn read_head(dev: &Path) -> Vec<u8> {
    let mut head = vec![0u8; 1 << 20];
    fs::File::open(dev).unwrap().read_exact(&mut head).unwrap();
    head
}

fn ids<'a>(sessions: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    sessions.into_iter().map(|s| s["session"].as_str().unwrap().to_string()).collect()
}

/// The session names dm knows, from `dmsetup ls`.
fn dm_sessions() -> BTreeSet<String> {
    let listed = run("dmsetup", &["ls"]);
    listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| hcp::state::record::is_session_id(name))
        .map(String::from)
        .collect()
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn hcp_commands_racing_on_shared_and_separate_origins_leave_consistent_state() {
    require_root();
    let _serial = serial();
    let mut a = Volume::new("t-cc-a", 48);
    let dir_a = a.mount(Fs::Ext4);
    let mut b = Volume::new("t-cc-b", 48);
    let dir_b = b.mount(Fs::Ext4);
    let c = Volume::new("t-cc-c", 32);
    let files_a = write_files(&dir_a, "a");
    let files_b = write_files(&dir_b, "b");
    write_head(&c.path(), 0x11);
    let clean = SystemState::take();
    assert!(clean.records.is_empty(), "no sessions to begin with: {:?}", clean.records);
    let (pa, pb, pc) = (a.path().display().to_string(), b.path().display().to_string(), c.path().display().to_string());

    // Sessions that go while others come.
    let b_old = hcp_json(&["start", "-o", &pb]);
    let c_old = hcp_json(&["start", "--skip-mount", &pc]);

    // Six at once: the same origin twice, an origin losing one session
    // while it gains another, and a plain start.
    let started = all_at_once(&[
        strings(&["start", &pa]),
        strings(&["start", "-o", &pa]),
        strings(&["start", &pb]),
        strings(&["remove", b_old["snapshot"].as_str().unwrap()]),
        strings(&["start", "--skip-mount", &pc]),
        strings(&["remove", c_old["snapshot"].as_str().unwrap()]),
    ]);
    let sessions: Vec<&Value> = [0, 1, 2, 4].iter().map(|i| &started[*i]).collect();
    for (removed, old) in [(&started[3], &b_old), (&started[5], &c_old)] {
        assert_eq!(removed[0]["session"], old["session"], "{removed}");
    }

    // Records, `hcp -l` and dm agree.
    let listed = hcp_json(&["list"])["sessions"].clone();
    let listed = listed.as_array().expect("a list");
    let started_ids = ids(sessions.iter().copied());
    assert_eq!(started_ids.len(), 4, "four distinct sessions: {started_ids:?}");
    assert_eq!(ids(listed), started_ids, "hcp -l lists what was started");
    assert_eq!(dm_sessions(), started_ids, "dmsetup ls shows exactly the sessions");
    for entry in listed {
        assert_eq!(entry["state"], "active", "{entry}");
    }
    let mut records = BTreeSet::new();
    for file in fs::read_dir("/run/hcp/sessions").unwrap() {
        let path = file.unwrap().path();
        let record: Value = serde_json::from_slice(&fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let id = record["id"].as_str().unwrap().to_string();
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), format!("{id}.json"));
        assert_eq!(record["phase"], "active", "{record}");
        records.insert(id);
    }
    assert_eq!(records, started_ids, "one record per session, nothing half-made");
    for s in &sessions {
        // Each store is attached where its record says.
        let lo = s["store_loop_device"].as_str().expect("a file store");
        let name = Path::new(lo).file_name().unwrap().to_str().unwrap();
        let backing = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).unwrap();
        assert_eq!(backing.trim(), s["store"].as_str().unwrap(), "{s}");
    }
    let per_origin = |path: &str| listed.iter().filter(|e| e["real_device"] == path).count();
    assert_eq!((per_origin(&pa), per_origin(&pb), per_origin(&pc)), (2, 1, 1), "{listed:?}");

    // Every snapshot holds its origin's data as it was, after the origins
    // are overwritten.
    overwrite(&dir_a, &files_a);
    overwrite(&dir_b, &files_b);
    write_head(&c.path(), 0x22);
    run("sync", &[]);
    for (s, files) in [(sessions[0], &files_a), (sessions[1], &files_a), (sessions[2], &files_b)] {
        assert_files(Path::new(s["mount_point"].as_str().expect("mounted")), files);
    }
    assert!(read_head(Path::new(sessions[3]["snapshot"].as_str().unwrap())).iter().all(|b| *b == 0x11));
    assert!(read_head(&c.path()).iter().all(|b| *b == 0x22), "the origin has the new data");

    // Everything removed, all at once: nothing is left.
    let removed = all_at_once(&[strings(&["remove", &pa]), strings(&["remove", &pb]), strings(&["remove", &pc])]);
    let removed_ids: BTreeSet<String> =
        removed.iter().flat_map(|r| r.as_array().unwrap()).map(|r| r["session"].as_str().unwrap().into()).collect();
    assert_eq!(removed_ids, started_ids);
    assert!(dm_sessions().is_empty(), "no snapshot left in dm");
    assert_eq!(
        SystemState::take(),
        clean,
        "no hcp dm device, loop device, mount, store file, mount point or record left, and every table restored"
    );
}
