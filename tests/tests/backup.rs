//! Backups from a snapshot, end to end (these run in the VM, through `cargo
//! xtask test`, on every guest kernel): `hcp changes`, the extents it reads
//! from a session's exception store, against writes at known offsets and
//! against a chunk by chunk comparison of the origin with its snapshot;
//! `hcp export`, the image against the snapshot device.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use hcp_tests::{
    hcp, hcp_bin, hcp_json, open_direct, pread_exact, pwrite_all, require_root, run, serial, sha256, temp_dir,
    write_direct, write_files, AlignedBuf, Fs, Volume,
};
use serde_json::Value;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The smallest volume of each filesystem (mkfs.xfs wants 300 MB): every
/// test below reads its devices whole, which emulation makes slow.
fn start(vol: &Volume, chunk: &str) -> String {
    let started =
        hcp_json(&["start", "--skip-mount", "--chunk-size", chunk, "-q", "48M", vol.path().to_str().unwrap()]);
    started["session"].as_str().unwrap().to_string()
}

fn extents(changes: &Value) -> Vec<(u64, u64)> {
    let list = changes["extents"].as_array().unwrap_or_else(|| panic!("no extents: {changes}"));
    list.iter().map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap())).collect()
}

/// Writes `len` bytes of `byte` at `offset` of `dev`, with direct I/O.
fn write_at(dev: &Path, offset: u64, len: u64, byte: u8) {
    let f = open_direct(dev);
    pwrite_all(&f, &AlignedBuf::new(len as usize, byte), offset);
    f.sync_all().unwrap();
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn changes_lists_exactly_the_chunks_written_at_known_offsets() {
    require_root();
    let _serial = serial();
    let vol = Volume::new("t-chg-known", 64);
    let dev = vol.path();
    for (chunk, chunk_bytes) in [("4K", 4 * KIB), ("16K", 16 * KIB)] {
        let id = start(&vol, chunk);
        let none = hcp_json(&["changes", &id]);
        assert_eq!((none["changed_chunks"].as_u64(), extents(&none).len()), (Some(0), 0), "{none}");
        write_at(&dev, 0, 4 * KIB, 1);
        write_at(&dev, MIB, 8 * KIB, 2);
        // Adjacent to the last: one extent with it.
        write_at(&dev, MIB + 8 * KIB, 4 * KIB, 3);
        write_at(&dev, 10 * MIB, 64 * KIB, 4);
        // A second write to a changed chunk is not copied again.
        write_at(&dev, 0, 4 * KIB, 5);
        // Inside a 16 KiB chunk, off its start: the whole chunk is listed.
        write_at(&dev, 40 * MIB + 20 * KIB, 4 * KIB, 6);
        let changes = hcp_json(&["changes", &id]);
        let round = |offset: u64, len: u64| {
            let start = offset / chunk_bytes * chunk_bytes;
            (start, (offset + len).div_ceil(chunk_bytes) * chunk_bytes - start)
        };
        let expected = vec![
            round(0, 4 * KIB),
            round(MIB, 12 * KIB),
            round(10 * MIB, 64 * KIB),
            round(40 * MIB + 20 * KIB, 4 * KIB),
        ];
        assert_eq!(extents(&changes), expected, "chunk {chunk}: {changes}");
        let bytes: u64 = expected.iter().map(|(_, l)| l).sum();
        assert_eq!(changes["changed_bytes"].as_u64(), Some(bytes), "{changes}");
        assert_eq!(changes["changed_chunks"].as_u64(), Some(bytes / chunk_bytes), "{changes}");
        assert_eq!(changes["in_flight_chunks"].as_u64(), Some(0), "a quiet origin: {changes}");
        assert_eq!(changes["allocated_chunks"], changes["changed_chunks"], "{changes}");
        hcp_json(&["remove", &id]);
    }
}

/// The chunks in which two devices differ, read with direct I/O, a MiB at
/// a time.
fn differing_chunks(a: &Path, b: &Path, size: u64, chunk_bytes: u64) -> BTreeSet<u64> {
    let (fa, fb) = (open_direct(a), open_direct(b));
    let (mut ba, mut bb) = (AlignedBuf::new(MIB as usize, 0), AlignedBuf::new(MIB as usize, 0));
    let mut out = BTreeSet::new();
    for m in 0..size / MIB {
        pread_exact(&fa, &mut ba, m * MIB);
        pread_exact(&fb, &mut bb, m * MIB);
        let pairs = ba.bytes().chunks(chunk_bytes as usize).zip(bb.bytes().chunks(chunk_bytes as usize));
        for (i, (x, y)) in pairs.enumerate() {
            if x != y {
                out.insert(m * MIB / chunk_bytes + i as u64);
            }
        }
    }
    out
}

fn filesystem_changes_cover_every_differing_chunk(fs_type: Fs) {
    require_root();
    let _serial = serial();
    let mib = fs_type.volume_mib();
    let mut vol = Volume::new(&format!("t-chg-fs-{fs_type:?}").to_lowercase(), mib);
    let dir = vol.mount(fs_type);
    write_files(&dir, "before");
    let id = start(&vol, "4K");
    write_files(&dir, "after");
    fs::write(dir.join("before-2.bin"), vec![0xabu8; 200 * 1024]).unwrap();
    fs::remove_file(dir.join("before-3.bin")).unwrap();
    run("sync", &[]);
    // Frozen: nothing is written while the list is read and the devices
    // compared.
    run("fsfreeze", &["-f", dir.to_str().unwrap()]);
    let changes = hcp_json(&["changes", &id]);
    let snapshot = Path::new("/dev").join(&id);
    let differ = differing_chunks(&vol.path(), &snapshot, mib * MIB, 4 * KIB);
    run("fsfreeze", &["-u", dir.to_str().unwrap()]);
    let listed: BTreeSet<u64> = extents(&changes)
        .into_iter()
        .flat_map(|(offset, length)| (offset / (4 * KIB))..((offset + length) / (4 * KIB)))
        .collect();
    assert!(!differ.is_empty());
    let missing: Vec<&u64> = differ.difference(&listed).collect();
    assert!(missing.is_empty(), "chunks that differ but are not listed: {missing:?} ({changes})");
    // Nothing beyond what the store holds.
    assert_eq!(changes["in_flight_chunks"].as_u64(), Some(0), "{changes}");
    assert_eq!(changes["changed_chunks"].as_u64(), Some(listed.len() as u64), "{changes}");
    assert_eq!(changes["allocated_chunks"], changes["changed_chunks"], "{changes}");
    hcp_json(&["remove", &id]);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn ext4_changes_cover_every_chunk_that_differs_from_the_snapshot() {
    filesystem_changes_cover_every_differing_chunk(Fs::Ext4);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn xfs_changes_cover_every_chunk_that_differs_from_the_snapshot() {
    filesystem_changes_cover_every_differing_chunk(Fs::Xfs);
}

/// A full export of a snapshot taken, and read, while a writer keeps
/// changing the origin: the image is the snapshot device, byte for byte, to
/// a file (with holes) and to standard output, and its filesystem is clean.
fn full_export_under_a_writer(fs_type: Fs) {
    require_root();
    let _serial = serial();
    let mib = fs_type.volume_mib();
    let mut vol = Volume::new(&format!("t-exp-{fs_type:?}").to_lowercase(), mib);
    let dir = vol.mount(fs_type);
    write_files(&dir, "before");
    // The writer rewrites the same 256 blocks: each is copied to the store
    // once, so the store holds out however long the export takes.
    fs::write(dir.join("stream.dat"), vec![0u8; MIB as usize]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), dir.join("stream.dat"));
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(path).unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all_at(&[i as u8; 4096], i % 256 * 4096).unwrap();
                f.sync_data().unwrap();
                i += 1;
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let id = start(&vol, "16K");
    let snapshot = Path::new("/dev").join(&id);
    let image = temp_dir("export").join("snapshot.img");
    let done = hcp_json(&["export", &id, "--to", image.to_str().unwrap()]);
    assert_eq!(done["bytes"].as_u64(), Some(mib * MIB), "{done}");
    assert!(done["hole_bytes"].as_u64().unwrap() > 0, "an almost empty filesystem leaves holes: {done}");
    assert_eq!(fs::metadata(&image).unwrap().len(), mib * MIB);
    assert!(!hcp::session::partial_path(&image).exists());
    // Standard output is the same read path with another sink, whatever the
    // filesystem: checked on the small ext4 volume only (a second pass
    // over xfs's 320 MiB costs most of a minute under emulation).
    let piped = (fs_type == Fs::Ext4)
        .then(|| run("sh", &["-c", &format!("{} export {id} --to - | sha256sum", hcp_bin().display())]));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let expected = sha256(&snapshot);
    assert_eq!(sha256(&image), expected, "the image is the snapshot device");
    if let Some(piped) = piped {
        assert_eq!(piped.split_whitespace().next(), Some(expected.as_str()), "standard output too");
    }
    // Not over an existing file.
    let again = hcp(&["export", &id, "--to", image.to_str().unwrap()]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    hcp_json(&["remove", &id]);
    fs_type.fsck(&image);
    fs::remove_file(&image).unwrap();
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_full_ext4_export_under_a_writer_is_the_snapshot() {
    full_export_under_a_writer(Fs::Ext4);
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn a_full_xfs_export_under_a_writer_is_the_snapshot() {
    full_export_under_a_writer(Fs::Xfs);
}

/// A snapshot invalidated in the middle of an export: the export fails;
/// one invalid before it makes nothing.
#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn an_export_of_an_invalidated_snapshot_fails_and_makes_no_image() {
    require_root();
    let _serial = serial();
    let vol = Volume::new("t-exp-invalid", 64);
    let started = hcp_json(&["start", "--skip-mount", "-q", "2M", vol.path().to_str().unwrap()]);
    let id = started["session"].as_str().unwrap().to_string();
    // Reading slowly from the pipe holds the export after its first block.
    let mut child = std::process::Command::new(hcp_bin())
        .args(["export", &id, "--to", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    write_direct(&vol.path(), 0, 8, 0x42);
    std::io::copy(&mut out, &mut std::io::sink()).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "an export across an invalidation fails: {stderr}");
    assert!(stderr.contains("invalid"), "{stderr}");
    // Invalid before: refused, no file made.
    let image = temp_dir("export-invalid").join("x.img");
    let out = hcp(&["export", &id, "--to", image.to_str().unwrap()]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(!image.exists() && !hcp::session::partial_path(&image).exists());
    let removed = hcp(&["remove", &id]);
    assert_eq!(removed.code, 7, "{}", removed.stderr);
}

/// Full at T1, writes, a second session at T2, more writes, the delta
/// from T1 to T2 applied to the full image: the image is the second
/// snapshot. A wrong base is refused untouched; an apply killed midway and
/// run again ends the same; a finished one run again changes nothing.
#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn an_incremental_chain_brings_a_full_image_to_the_newer_snapshot() {
    require_root();
    let _serial = serial();
    let vol = Volume::random("t-inc", 64);
    let dev = vol.path();
    let session = |what: &str| {
        let started = hcp_json(&["start", "--skip-mount", "--chunk-size", "4K", "-q", "32M", dev.to_str().unwrap()]);
        let id = started["session"].as_str().unwrap().to_string();
        eprintln!("{what}: {id}");
        id
    };
    let dir = temp_dir("incremental");
    let full = dir.join("full.img");
    let older = session("T1");
    hcp_json(&["export", &older, "--to", full.to_str().unwrap()]);
    // Between the two: 6 MiB in one run (two frames) and scattered blocks.
    write_direct(&dev, 20, 6, 0x11);
    for i in 0..40u64 {
        write_at(&dev, (i * 7919 % 16384) * 4 * KIB, 4 * KIB, i as u8);
    }
    let newer = session("T2");
    // After the second: more writes, some over the same places.
    write_direct(&dev, 22, 2, 0x22);
    write_direct(&dev, 40, 1, 0x33);
    let expected = sha256(&Path::new("/dev").join(&newer));

    let delta = dir.join("t1-t2.delta");
    let made = hcp_json(&["export", &newer, "--changed-since", &older, "--to", delta.to_str().unwrap()]);
    assert_eq!(made["base"]["session"], older.as_str(), "{made}");
    let changed = made["changed_bytes"].as_u64().unwrap();
    assert!(changed >= 6 * MIB + 40 * 4 * KIB, "{made}");
    let size = fs::metadata(&delta).unwrap().len();
    assert_eq!(made["bytes"].as_u64(), Some(size), "{made}");
    assert!(size <= changed + changed / 100, "a delta of {size} bytes for {changed} bytes of chunks: over 1%");

    // A wrong base of the right size: refused, untouched.
    let wrong = dir.join("zeros.img");
    fs::File::create(&wrong).unwrap().set_len(64 * MIB).unwrap();
    let wrong_before = sha256(&wrong);
    let out = hcp(&["apply", delta.to_str().unwrap(), wrong.to_str().unwrap()]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("is not this delta's base"), "{}", out.stderr);
    assert_eq!(sha256(&wrong), wrong_before, "nothing changed");
    assert!(!hcp::session::apply_marker_path(&wrong).exists());
    // The wrong size.
    fs::File::create(&wrong).unwrap().set_len(MIB).unwrap();
    assert_eq!(hcp(&["apply", delta.to_str().unwrap(), wrong.to_str().unwrap()]).code, 2);

    // Killed after its first frame, then run again.
    let copy = dir.join("copy.img");
    fs::copy(&full, &copy).unwrap();
    let killed = std::process::Command::new(hcp_bin())
        .args(["apply", delta.to_str().unwrap(), copy.to_str().unwrap()])
        .env("HCP_FAULT", "apply-after-frame:kill")
        .output()
        .unwrap();
    assert!(!killed.status.success());
    assert!(hcp::session::apply_marker_path(&copy).exists(), "the frame being written is named");
    assert_ne!(sha256(&copy), expected);
    let resumed = hcp_json(&["apply", delta.to_str().unwrap(), copy.to_str().unwrap()]);
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert!(resumed["already_applied_frames"].as_u64().unwrap() >= 1, "{resumed}");
    assert_eq!(sha256(&copy), expected, "the killed and resumed apply ends as the newer snapshot");
    assert!(!hcp::session::apply_marker_path(&copy).exists());

    let applied = hcp_json(&["apply", delta.to_str().unwrap(), full.to_str().unwrap()]);
    assert_eq!(applied["resumed"], false, "{applied}");
    assert_eq!(sha256(&full), expected, "the image is the newer snapshot");
    let again = hcp_json(&["apply", delta.to_str().unwrap(), full.to_str().unwrap()]);
    assert_eq!(again["written_frames"], 0, "applied already: nothing to write: {again}");
    assert_eq!(sha256(&full), expected);
    hcp_json(&["remove", &newer]);
    hcp_json(&["remove", &older]);
    fs::remove_dir_all(&dir).unwrap();
}
