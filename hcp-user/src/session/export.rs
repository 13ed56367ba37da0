//! `hcp export SESSION --to FILE|-`: the snapshot's contents as a raw
//! image, streamed a block at a time; with `--changed-since OLDER`, a delta
//! (see `delta`) instead. To a file, blocks of zeros become
//! holes (the image takes the room of the data only); to standard output
//! every byte is written (`| zstd | ssh ...`).
//!
//! Never a silently wrong image: the session must be valid before, the
//! reads fail if the snapshot is invalidated during the export (dm returns
//! EIO), and its state is checked again after. A file is written as
//! `FILE.partial` and renamed to `FILE` only then; whatever stops the export
//! first (an error, a signal) leaves the name saying it is incomplete.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::kernel::direct_io::{self, AlignedBuf};
use crate::kernel::dm::device::Dm;
use crate::privilege::require_root;
use crate::state::record::{self, Phase, Session, SessionState};

use super::delta::format::PointInTime;
use super::inspect::state_of;

/// Bytes read and written at a time.
const BLOCK: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The session (/dev/hcpN).
    pub target: String,
    /// The image file, or `-` for standard output.
    pub to: PathBuf,
    /// An older session of the same origin: write a delta from its point
    /// in time instead of a full image (see `delta`).
    pub changed_since: Option<String>,
}

/// What `hcp export` did.
#[derive(Clone, Debug, Serialize)]
pub struct Exported {
    pub session: String,
    /// The image file; null for standard output.
    pub to: Option<PathBuf>,
    /// What was written: the snapshot's size for an image (holes
    /// included), the file's for a delta.
    pub bytes: u64,
    /// A delta's: the point in time it starts from, and the bytes of data
    /// it carries (the chunks changed since).
    pub base: Option<PointInTime>,
    pub changed_bytes: Option<u64>,
    /// Of those, left as holes in the file (blocks of zeros); 0 to
    /// standard output.
    pub hole_bytes: u64,
    pub seconds: f64,
    /// `bytes` per second of `seconds`, in MiB.
    pub mib_per_second: f64,
}

impl ExportOptions {
    fn to_stdout(&self) -> bool {
        self.to.as_os_str() == "-"
    }
}

/// `FILE.partial`, where an image is written until it is complete.
pub fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Exports `opts.target`'s snapshot; `on_progress(done, total)` sees each
/// block.
pub fn export(opts: &ExportOptions, on_progress: &mut dyn FnMut(u64, u64)) -> Result<Exported> {
    let begun = Instant::now();
    require_root()?;
    let dm = Dm::open()?;
    let sessions = record::load_all()?;
    let session = super::trace::find(&sessions, &opts.target)?;
    check_valid(&dm, session)?;
    let older = opts.changed_since.as_deref().map(|t| super::trace::find(&sessions, t)).transpose()?;
    if let Some(older) = older {
        check_valid(&dm, older)?;
    }
    let mut out = Output::open(opts)?;
    if let Some(older) = older {
        let (header, bytes) = super::delta::write(out.stream(), session, older, on_progress)?;
        // Both valid to the end, or the delta is not what it says.
        check_valid(&dm, older)?;
        check_valid(&dm, session)?;
        let to = out.finish(bytes)?;
        let seconds = begun.elapsed().as_secs_f64();
        return Ok(Exported {
            session: session.id.clone(),
            to,
            bytes,
            base: Some(header.base),
            changed_bytes: Some(header.data_bytes),
            hole_bytes: 0,
            seconds,
            mib_per_second: bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9),
        });
    }
    let (source, bytes) = direct_io::open_for_reading(&session.snapshot_path)?;
    let mut buf = AlignedBuf::new(BLOCK);
    let mut hole_bytes = 0;
    let mut at = 0;
    while at < bytes {
        let len = BLOCK.min((bytes - at) as usize);
        let block = &mut buf.bytes_mut()[..len];
        if let Err(e) = source.read_exact_at(block, at) {
            // dm fails every read of a snapshot it invalidated: say so.
            check_valid(&dm, session).map_err(|invalid| invalid.context("during the export"))?;
            return Err(Error::io(format!("reading {} at byte {at}", session.snapshot_path.display()), e));
        }
        hole_bytes += out.write(block, at)?;
        at += len as u64;
        on_progress(at, bytes);
    }
    // Valid to the end, or the image is not the snapshot's.
    check_valid(&dm, session)?;
    let to = out.finish(bytes)?;
    let seconds = begun.elapsed().as_secs_f64();
    Ok(Exported {
        session: session.id.clone(),
        to,
        bytes,
        base: None,
        changed_bytes: None,
        hole_bytes,
        seconds,
        mib_per_second: bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9),
    })
}

fn check_valid(dm: &Dm, session: &Session) -> Result<()> {
    if session.phase != Phase::Active {
        return Err(Error::refused(format!("{} is not an active session: nothing to export", session.id)));
    }
    match state_of(dm, session)?.0 {
        SessionState::Active => Ok(()),
        SessionState::Invalid => Err(Error::new(
            Kind::Invalid,
            format!(
                "{} is invalid (its store filled): its contents are not the snapshot's; no image is made from it",
                session.id
            ),
        )),
        other => Err(Error::refused(format!("{} is {other:?}, not active: nothing to export", session.id))),
    }
}

/// Where the image goes.
enum Output {
    Stdout(std::io::Stdout),
    File { file: File, partial: PathBuf, to: PathBuf },
}

impl Output {
    fn open(opts: &ExportOptions) -> Result<Output> {
        if opts.to_stdout() {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                return Err(Error::usage(
                    "--to - writes the image to standard output, which is a terminal: pipe it (| zstd > image.zst) or \
                     give --to FILE",
                ));
            }
            return Ok(Output::Stdout(std::io::stdout()));
        }
        let to = std::path::absolute(&opts.to).map_err(|e| Error::io(format!("--to {}", opts.to.display()), e))?;
        let bad = |why: String| Error::usage(format!("--to {}: {why}", opts.to.display()));
        match to.parent() {
            Some(dir) if dir.is_dir() => {}
            Some(dir) => return Err(bad(format!("directory {} does not exist: create it first", dir.display()))),
            None => return Err(bad("give a file name".into())),
        }
        let partial = partial_path(&to);
        for existing in [&to, &partial] {
            if std::fs::symlink_metadata(existing).is_ok() {
                return Err(bad(format!(
                    "{} exists already: give a new file name (hcp does not overwrite files)",
                    existing.display()
                )));
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| Error::io(format!("creating {}", partial.display()), e))?;
        Ok(Output::File { file, partial, to })
    }

    /// The output as a stream, from its start.
    fn stream(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(out) => out,
            Output::File { file, .. } => file,
        }
    }

    /// Writes `block` at `at`; returns the bytes left as a hole.
    fn write(&mut self, block: &[u8], at: u64) -> Result<u64> {
        match self {
            Output::Stdout(out) => {
                out.write_all(block).map_err(|e| Error::io("writing the image to standard output", e))?;
                Ok(0)
            }
            // A new file reads as zeros where nothing was written.
            Output::File { .. } if all_zeros(block) => Ok(block.len() as u64),
            Output::File { file, partial, .. } => {
                file.write_all_at(block, at).map_err(|e| Error::io(format!("writing {}", partial.display()), e))?;
                Ok(0)
            }
        }
    }

    /// Flushes the image and gives a file its final name.
    fn finish(self, bytes: u64) -> Result<Option<PathBuf>> {
        match self {
            Output::Stdout(mut out) => {
                out.flush().map_err(|e| Error::io("writing the image to standard output", e))?;
                Ok(None)
            }
            Output::File { file, partial, to } => {
                // Trailing zeros are a hole too: the length says where the
                // image ends.
                file.set_len(bytes).map_err(|e| Error::io(format!("sizing {}", partial.display()), e))?;
                file.sync_all().map_err(|e| Error::io(format!("syncing {}", partial.display()), e))?;
                std::fs::rename(&partial, &to)
                    .map_err(|e| Error::io(format!("renaming {} to {}", partial.display(), to.display()), e))?;
                Ok(Some(to))
            }
        }
    }
}

/// Whether `block` is all zeros, tested a word at a time (every block of
/// an export to a file is tested).
fn all_zeros(block: &[u8]) -> bool {
    let words = block.chunks_exact(8);
    let tail = words.remainder();
    tail.iter().all(|b| *b == 0) && words.into_iter().all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

#[cfg(test)]
mod tests {
    use super::all_zeros;

    #[test]
    fn zeros_are_found_to_the_last_byte() {
        let mut block = vec![0u8; 4096 + 3];
        assert!(all_zeros(&block));
        for at in [0, 7, 8, 4095, 4098] {
            block[at] = 1;
            assert!(!all_zeros(&block), "{at}");
            block[at] = 0;
        }
        assert!(all_zeros(&[]));
    }
}
