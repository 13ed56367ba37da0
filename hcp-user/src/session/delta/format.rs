//! hcp's delta file, version 1: what changed on a device between two
//! snapshots, streamable (written front to back, nothing patched later).
//!
//! ```text
//! "HCPDELTA"  u32 version (1)  u32 header length  header (JSON, see `Header`)
//! frame*      "FRAM"  u32 extents  u64 data bytes
//!             extents × (u64 offset, u64 length)        (ascending, disjoint)
//!             [32] sha256 of the base's bytes of those extents, in order
//!             [32] sha256 of the data
//!             data: the extents' new bytes, in order
//! end         "DEND"  u32 frames  u64 extents  u64 data bytes
//! ```
//!
//! All integers little-endian. A frame holds up to [`FRAME_DATA`] bytes of
//! data, so 16 bytes per extent and 80 per frame are the whole overhead
//! beyond the header (about 0.4% for scattered 4 KiB chunks). The base's
//! hash of each frame is the delta's fingerprint of its base: `apply`
//! checks the image holds exactly those bytes (or the delta's own, where an
//! earlier run applied them) before it changes anything. The end record
//! makes a truncated delta detectable.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"HCPDELTA";
pub const VERSION: u32 = 1;
const FRAME: &[u8; 4] = b"FRAM";
const END: &[u8; 4] = b"DEND";
/// The most data a frame holds.
pub const FRAME_DATA: u64 = 4 << 20;
/// A header longer than this is not one of ours.
const MAX_HEADER: u32 = 1 << 20;

/// The delta's header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The device's size: the image's, before and after.
    pub device_bytes: u64,
    /// The base session's chunk size: the extents' granularity.
    pub chunk_bytes: u64,
    pub origin: String,
    /// The image this applies to: the device at the base session's point
    /// in time.
    pub base: PointInTime,
    /// What it makes of it.
    pub target: PointInTime,
    pub frames: u32,
    pub extents: u64,
    pub data_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointInTime {
    pub session: String,
    /// RFC 3339, and seconds since the Unix epoch.
    pub time: String,
    pub unix: f64,
}

/// One frame's extents, `(offset, length)`.
pub type Extents = Vec<(u64, u64)>;

/// Splits `extents` (ascending, disjoint) into frames of at most
/// [`FRAME_DATA`] bytes of data, cutting an extent that does not fit.
pub fn frames(extents: &[(u64, u64)]) -> Vec<Extents> {
    let mut out: Vec<Extents> = Vec::new();
    let mut current: Extents = Vec::new();
    let mut room = FRAME_DATA;
    for &(mut offset, mut length) in extents {
        while length > 0 {
            if room == 0 {
                out.push(std::mem::take(&mut current));
                room = FRAME_DATA;
            }
            let take = length.min(room);
            current.push((offset, take));
            offset += take;
            length -= take;
            room -= take;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Writes a delta to `out`: the header, then each frame as `frame_data`
/// gives it (the base's bytes and the new bytes of the frame's extents,
/// each concatenated in order), then the end record. Returns the bytes
/// written.
pub fn write(
    out: &mut dyn Write,
    header: &Header,
    frames: &[Extents],
    mut frame_data: impl FnMut(&[(u64, u64)]) -> Result<(Vec<u8>, Vec<u8>)>,
) -> Result<u64> {
    let io = |e| Error::io("writing the delta", e);
    let json = serde_json::to_vec(header).expect("headers serialise");
    let mut written = 0u64;
    let mut put = |out: &mut dyn Write, bytes: &[u8]| -> Result<()> {
        written += bytes.len() as u64;
        out.write_all(bytes).map_err(io)
    };
    put(out, MAGIC)?;
    put(out, &VERSION.to_le_bytes())?;
    put(out, &(json.len() as u32).to_le_bytes())?;
    put(out, &json)?;
    let (mut extents, mut data_bytes) = (0u64, 0u64);
    for frame in frames {
        let (base, data) = frame_data(frame)?;
        let len: u64 = frame.iter().map(|(_, l)| l).sum();
        if base.len() as u64 != len || data.len() as u64 != len {
            return Err(Error::system("a frame's data is not the length of its extents"));
        }
        put(out, FRAME)?;
        put(out, &(frame.len() as u32).to_le_bytes())?;
        put(out, &len.to_le_bytes())?;
        for (offset, length) in frame {
            put(out, &offset.to_le_bytes())?;
            put(out, &length.to_le_bytes())?;
        }
        put(out, &sha256(&base))?;
        put(out, &sha256(&data))?;
        put(out, &data)?;
        extents += frame.len() as u64;
        data_bytes += len;
    }
    put(out, END)?;
    put(out, &(frames.len() as u32).to_le_bytes())?;
    put(out, &extents.to_le_bytes())?;
    put(out, &data_bytes.to_le_bytes())?;
    out.flush().map_err(io)?;
    Ok(written)
}

/// A frame as read: its extents and hashes; its data follows in the
/// stream (`data_bytes` of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub extents: Extents,
    pub data_bytes: u64,
    pub base_sha256: [u8; 32],
    pub data_sha256: [u8; 32],
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::usage(format!("not a complete hcp delta: {why}"))
}

fn read_exact<const N: usize>(input: &mut impl Read, what: &str) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    input.read_exact(&mut b).map_err(|e| bad(format!("{what}: {e}")))?;
    Ok(b)
}

/// Reads and checks the magic, the version and the header.
pub fn read_header(input: &mut impl Read) -> Result<Header> {
    if &read_exact::<8>(input, "its magic")? != MAGIC {
        return Err(Error::usage("not an hcp delta (it does not begin with HCPDELTA)"));
    }
    let version = u32::from_le_bytes(read_exact(input, "its version")?);
    if version != VERSION {
        return Err(Error::usage(format!("an hcp delta of version {version}; this hcp reads version {VERSION}")));
    }
    let len = u32::from_le_bytes(read_exact(input, "its header length")?);
    if len > MAX_HEADER {
        return Err(bad(format!("a header of {len} bytes")));
    }
    let mut json = vec![0u8; len as usize];
    input.read_exact(&mut json).map_err(|e| bad(format!("its header: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| bad(format!("its header: {e}")))
}

/// What follows: the next frame (its data not read), or None at the end
/// record, which must agree with `header`.
pub fn read_frame(input: &mut impl Read, header: &Header, seen: (u32, u64, u64)) -> Result<Option<Frame>> {
    let tag = read_exact::<4>(input, "a frame")?;
    if &tag == END {
        let frames = u32::from_le_bytes(read_exact(input, "the end record")?);
        let extents = u64::from_le_bytes(read_exact(input, "the end record")?);
        let data = u64::from_le_bytes(read_exact(input, "the end record")?);
        let expected = (header.frames, header.extents, header.data_bytes);
        if (frames, extents, data) != expected || seen != expected {
            return Err(bad(format!(
                "its end record counts {frames} frames, {extents} extents, {data} bytes; its header \
                 {expected:?}; read {seen:?}"
            )));
        }
        return Ok(None);
    }
    if &tag != FRAME {
        return Err(bad("a frame that does not begin with FRAM"));
    }
    let count = u32::from_le_bytes(read_exact(input, "a frame")?);
    let data_bytes = u64::from_le_bytes(read_exact(input, "a frame")?);
    if data_bytes > FRAME_DATA || u64::from(count) > FRAME_DATA {
        return Err(bad(format!("a frame of {count} extents and {data_bytes} bytes")));
    }
    let mut extents = Vec::with_capacity(count as usize);
    let mut sum = 0u64;
    for _ in 0..count {
        let offset = u64::from_le_bytes(read_exact(input, "an extent")?);
        let length = u64::from_le_bytes(read_exact(input, "an extent")?);
        let end = offset.checked_add(length).filter(|e| *e <= header.device_bytes);
        if end.is_none() || length == 0 {
            return Err(bad(format!("an extent ({offset}, {length}) outside the {}-byte device", header.device_bytes)));
        }
        sum += length;
        extents.push((offset, length));
    }
    if sum != data_bytes {
        return Err(bad("a frame whose extents do not add up to its data"));
    }
    let base_sha256 = read_exact(input, "a frame's base hash")?;
    let data_sha256 = read_exact(input, "a frame's data hash")?;
    Ok(Some(Frame { extents, data_bytes, base_sha256, data_sha256 }))
}

/// The sha256 of `data` (the image's bytes of a frame, or its data).
pub fn hash(data: &[u8]) -> [u8; 32] {
    sha256(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(frames: u32, extents: u64, data: u64) -> Header {
        let t = |s: &str| PointInTime { session: s.into(), time: "2026-12-06T10:00:00Z".into(), unix: 1.0 };
        Header {
            device_bytes: 1 << 30,
            chunk_bytes: 4096,
            origin: "/dev/mapper/vg0-data".into(),
            base: t("hcp1"),
            target: t("hcp2"),
            frames,
            extents,
            data_bytes: data,
        }
    }

    #[test]
    fn frames_hold_at_most_their_share_and_cut_long_extents() {
        let f = frames(&[(0, 4096), (8192, 4096)]);
        assert_eq!(f, vec![vec![(0, 4096), (8192, 4096)]]);
        let f = frames(&[(0, FRAME_DATA + 4096), (FRAME_DATA * 3, 4096)]);
        assert_eq!(f, vec![vec![(0, FRAME_DATA)], vec![(FRAME_DATA, 4096), (FRAME_DATA * 3, 4096)]]);
        assert!(frames(&[]).is_empty());
    }

    #[test]
    fn a_delta_reads_back_as_written() {
        let extents = vec![(4096u64, 4096u64), (65536, 8192)];
        let fr = frames(&extents);
        let h = header(1, 2, 12288);
        let mut buf = Vec::new();
        let n = write(&mut buf, &h, &fr, |f| {
            let len: u64 = f.iter().map(|(_, l)| l).sum();
            Ok((vec![1u8; len as usize], vec![2u8; len as usize]))
        })
        .unwrap();
        assert_eq!(n as usize, buf.len());
        // Overhead: the header, 16 per extent, 80 per frame, 24 at the end.
        let json = serde_json::to_vec(&h).unwrap().len();
        assert_eq!(buf.len(), 16 + json + 16 + 2 * 16 + 64 + 12288 + 24);
        let mut r = &buf[..];
        assert_eq!(read_header(&mut r).unwrap(), h);
        let frame = read_frame(&mut r, &h, (0, 0, 0)).unwrap().unwrap();
        assert_eq!(frame.extents, extents);
        assert_eq!(frame.base_sha256, hash(&[1u8; 12288]));
        let mut data = vec![0u8; frame.data_bytes as usize];
        r.read_exact(&mut data).unwrap();
        assert_eq!(hash(&data), frame.data_sha256);
        assert_eq!(read_frame(&mut r, &h, (1, 2, 12288)).unwrap(), None);
    }

    #[test]
    fn truncated_or_foreign_deltas_are_refused() {
        let h = header(0, 0, 0);
        let mut buf = Vec::new();
        write(&mut buf, &h, &[], |_| unreachable!()).unwrap();
        let cut = &buf[..buf.len() - 3];
        let mut r = cut;
        read_header(&mut r).unwrap();
        assert!(read_frame(&mut r, &h, (0, 0, 0)).unwrap_err().to_string().contains("not a complete hcp delta"));
        let mut other = &b"GIF89a.............."[..];
        assert!(read_header(&mut other).unwrap_err().to_string().contains("not an hcp delta"));
        // An end record that disagrees with the header.
        let mut r = &buf[..];
        let mut lying = read_header(&mut r).unwrap();
        lying.frames = 1;
        assert!(read_frame(&mut r, &lying, (0, 0, 0)).is_err());
    }
}
