//! `hcp apply DELTA IMAGE`: brings IMAGE, a full image of the delta's base
//! point in time, to its target's, in place.
//!
//! Nothing is written until the whole delta has been read and every frame
//! of it checked against the image: each frame's extents in the image must
//! hold the base's bytes (its hash in the delta) or already the delta's own
//! (applied by an earlier run). Anything else is a wrong base, refused
//! with the image untouched.
//!
//! Safe to run again after an interruption: frames are written in order,
//! each made durable (fdatasync) before the next, and the frame being
//! written is named first in `IMAGE.applying` (made durable too). A run
//! that finds that file accepts anything in that one frame (it may be half
//! written) and writes it again; frames before it hold the delta's bytes,
//! frames after it the base's. The file goes once the image is complete.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::switch::fault;

use super::format::{self, Frame, Header, PointInTime};

/// What `hcp apply` did.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub image: PathBuf,
    /// The point in time the image now holds.
    pub target: PointInTime,
    pub frames: u32,
    /// Frames written by this run.
    pub written_frames: u32,
    /// Frames an earlier, interrupted run had written already.
    pub already_applied_frames: u32,
    pub bytes_written: u64,
    /// Whether this run finished what an interrupted one began.
    pub resumed: bool,
    pub seconds: f64,
}

/// `IMAGE.applying`: the frame an apply is writing.
pub fn marker_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".applying");
    PathBuf::from(name)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Marker {
    target_session: String,
    target_unix: f64,
    frame: u32,
}

/// A frame's state in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Base,
    Applied,
    /// Neither: a wrong base, or the frame an interrupted run was writing.
    Other,
}

pub fn apply(delta_path: &Path, image_path: &Path, on_progress: &mut dyn FnMut(u64, u64)) -> Result<Applied> {
    let begun = Instant::now();
    let delta = File::open(delta_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::usage(format!(
            "DELTA {} does not exist: give a delta `hcp export --changed-since` made",
            delta_path.display()
        )),
        _ => Error::io(format!("opening {}", delta_path.display()), e),
    })?;
    let mut delta = BufReader::with_capacity(1 << 20, delta);
    let header = format::read_header(&mut delta)?;
    let image = open_image(image_path, &header)?;
    let marker_file = marker_path(image_path);
    let marker = read_marker(&marker_file, &header)?;

    // Read everything, and check every frame, before writing anything.
    let first_frame = delta.stream_position().map_err(|e| Error::io("reading the delta", e))?;
    let mut frames: Vec<(Frame, State)> = Vec::new();
    let mut seen = (0u32, 0u64, 0u64);
    while let Some(frame) = format::read_frame(&mut delta, &header, seen)? {
        let state = state_in(&image, image_path, &frame)?;
        delta.seek_relative(frame.data_bytes as i64).map_err(|e| Error::io("reading the delta", e))?;
        seen = (seen.0 + 1, seen.1 + frame.extents.len() as u64, seen.2 + frame.data_bytes);
        frames.push((frame, state));
    }
    check_base(&frames, marker.as_ref().map(|m| m.frame), image_path, &header)?;

    delta.seek(SeekFrom::Start(first_frame)).map_err(|e| Error::io("reading the delta", e))?;
    let total: u64 = frames.iter().filter(|(_, s)| *s != State::Applied).map(|(f, _)| f.data_bytes).sum();
    let (mut written, mut written_frames, mut done) = (0u64, 0u32, 0u64);
    let mut data = Vec::new();
    for (i, (frame, state)) in frames.iter().enumerate() {
        // The frame's head again (checked already), then its data.
        format::read_frame(&mut delta, &header, (0, 0, 0))?;
        if *state == State::Applied {
            delta.seek_relative(frame.data_bytes as i64).map_err(|e| Error::io("reading the delta", e))?;
            continue;
        }
        data.resize(frame.data_bytes as usize, 0);
        delta.read_exact(&mut data).map_err(|e| Error::io("reading the delta's data", e))?;
        if format::hash(&data) != frame.data_sha256 {
            return Err(Error::system(format!(
                "{}: frame {i}'s data does not match its checksum (the delta is damaged); the image holds the \
                 frames before it: run `hcp apply` again with an intact copy",
                delta_path.display()
            )));
        }
        write_marker(&marker_file, &header, i as u32)?;
        let mut at = 0usize;
        for &(offset, length) in &frame.extents {
            image
                .write_all_at(&data[at..at + length as usize], offset)
                .map_err(|e| Error::io(format!("writing {} at byte {offset}", image_path.display()), e))?;
            at += length as usize;
        }
        image.sync_data().map_err(|e| Error::io(format!("syncing {}", image_path.display()), e))?;
        written += frame.data_bytes;
        written_frames += 1;
        done += frame.data_bytes;
        on_progress(done, total);
        fault::at("apply-after-frame")?;
    }
    let _ = std::fs::remove_file(&marker_file);
    Ok(Applied {
        image: image_path.to_path_buf(),
        target: header.target.clone(),
        frames: header.frames,
        written_frames,
        already_applied_frames: frames.iter().filter(|(_, s)| *s == State::Applied).count() as u32,
        bytes_written: written,
        resumed: marker.is_some(),
        seconds: begun.elapsed().as_secs_f64(),
    })
}

/// The image, opened for writing, once its size is the delta's device's.
fn open_image(path: &Path, header: &Header) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::usage(format!("IMAGE {} does not exist: give the image of the delta's base", path.display()))
        }
        _ => Error::io(format!("IMAGE {}", path.display()), e),
    })?;
    if !meta.is_file() {
        return Err(Error::usage(format!(
            "IMAGE {}: give an image file (as `hcp export --to FILE` makes)",
            path.display()
        )));
    }
    if meta.len() != header.device_bytes {
        return Err(Error::usage(format!(
            "{} is {} bytes, and the delta is for a device of {}: not its base image",
            path.display(),
            meta.len(),
            header.device_bytes
        )));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// The frame's state in the image.
fn state_in(image: &File, path: &Path, frame: &Frame) -> Result<State> {
    let mut bytes = vec![0u8; frame.data_bytes as usize];
    let mut at = 0usize;
    for &(offset, length) in &frame.extents {
        image
            .read_exact_at(&mut bytes[at..at + length as usize], offset)
            .map_err(|e| Error::io(format!("reading {} at byte {offset}", path.display()), e))?;
        at += length as usize;
    }
    let h = format::hash(&bytes);
    Ok(if h == frame.data_sha256 {
        State::Applied
    } else if h == frame.base_sha256 {
        State::Base
    } else {
        State::Other
    })
}

/// The image is the delta's base: every frame holds the base's bytes, or
/// the delta's own before the one an interrupted run was writing (which may
/// hold anything).
fn check_base(frames: &[(Frame, State)], interrupted_at: Option<u32>, image: &Path, header: &Header) -> Result<()> {
    let wrong: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(i, (_, s))| *s == State::Other && interrupted_at != Some(*i as u32))
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = wrong.first() {
        return Err(Error::refused(format!(
            "{} is not this delta's base ({} at {}): {} of its {} frames hold neither the base's bytes nor the \
             delta's (the first at byte {}); nothing was changed",
            image.display(),
            header.base.session,
            header.base.time,
            wrong.len(),
            frames.len(),
            frames[first].0.extents[0].0
        )));
    }
    Ok(())
}

/// The marker an interrupted apply of this delta left, if any.
fn read_marker(path: &Path, header: &Header) -> Result<Option<Marker>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let marker: Marker = serde_json::from_slice(&text)
        .map_err(|e| Error::refused(format!("{} is not hcp's ({e}): inspect it and delete it", path.display())))?;
    if marker.target_session != header.target.session || marker.target_unix != header.target.unix {
        return Err(Error::refused(format!(
            "{} says another delta (to {}) was being applied to this image: finish that one first, or delete the \
             file if the image was replaced",
            path.display(),
            marker.target_session
        )));
    }
    Ok(Some(marker))
}

/// Names frame `frame` as the one being written, durably, before it is.
fn write_marker(path: &Path, header: &Header, frame: u32) -> Result<()> {
    let marker = Marker { target_session: header.target.session.clone(), target_unix: header.target.unix, frame };
    let write = || -> std::io::Result<()> {
        let mut f = File::create(path)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(&marker).expect("markers serialise"))?;
        f.sync_all()
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
