//! dm-snapshot's persistent exception store (`P`), read from its device
//! (the layout of `drivers/md/dm-snap-persistent.c`):
//!
//! ```text
//! chunk 0            header: le32 magic "SnAp", le32 valid, le32 version (1), le32 chunk size (sectors)
//! chunk 1            metadata area 0: (le64 old_chunk, le64 new_chunk) pairs, chunk_bytes / 16 of them
//! chunks 2 ..= 1+E   the data chunks area 0 describes (E = chunk_bytes / 16)
//! chunk 2+E          metadata area 1, and so on
//! ```
//!
//! `old_chunk` is the origin chunk the snapshot kept, `new_chunk` where its
//! old data is in the store. Areas fill in order; the first pair whose
//! `new_chunk` is 0 ends the list. The kernel writes an area whole each time
//! it commits exceptions, after their data, so a read sees a prefix of the
//! committed list: a pair is 16 aligned bytes of one 512-byte sector, which
//! a device writes whole or not at all, so it is never half read. Exceptions
//! allocated but not yet committed (writes in flight) are not in it; the
//! caller compares the count with the target's status to say how many.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::kernel::direct_io::{self, AlignedBuf};

/// "SnAp", little-endian.
pub const MAGIC: u32 = 0x7041_6e53;
const PAIR_BYTES: u64 = 16;

/// The store's first chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Cleared by the kernel when the snapshot is invalidated.
    pub valid: bool,
    pub version: u32,
    pub chunk_sectors: u32,
}

/// One committed exception: origin chunk `old_chunk` was copied to store
/// chunk `new_chunk` before its first change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub old_chunk: u64,
    pub new_chunk: u64,
}

/// What the store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    /// None for a store the kernel has not written yet (all zeros).
    pub header: Option<Header>,
    pub exceptions: Vec<Exception>,
    /// Metadata areas read.
    pub areas: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The header in the store's first chunk; None when it is all zeros (a
/// store hcp prepared that the kernel has not written to).
pub fn parse_header(chunk: &[u8]) -> Result<Option<Header>> {
    let magic = le32(chunk, 0);
    if magic == 0 {
        return Ok(None);
    }
    if magic != MAGIC {
        return Err(Error::system(format!(
            "the store does not hold a dm-snapshot exception store (magic {magic:#010x}, not {MAGIC:#010x})"
        )));
    }
    Ok(Some(Header { valid: le32(chunk, 4) != 0, version: le32(chunk, 8), chunk_sectors: le32(chunk, 12) }))
}

/// The exceptions of one metadata area, and whether it is full (the list
/// goes on in the next area).
pub fn parse_area(chunk: &[u8]) -> (Vec<Exception>, bool) {
    let mut out = Vec::new();
    for pair in chunk.chunks_exact(PAIR_BYTES as usize) {
        let e = Exception { old_chunk: le64(pair, 0), new_chunk: le64(pair, 8) };
        if e.new_chunk == 0 {
            return (out, false);
        }
        out.push(e);
    }
    (out, true)
}

/// The store's chunk index of metadata area `area`.
pub fn area_chunk(area: u64, chunk_bytes: u64) -> u64 {
    1 + area * (chunk_bytes / PAIR_BYTES + 1)
}

/// Reads a store through `read_chunk` (chunk index to its bytes; None past
/// the device's end).
pub fn read_with(chunk_bytes: u64, mut read_chunk: impl FnMut(u64) -> Result<Option<Vec<u8>>>) -> Result<Contents> {
    let first = read_chunk(0)?.ok_or_else(|| Error::system("the store is empty"))?;
    let Some(header) = parse_header(&first)? else {
        return Ok(Contents { header: None, exceptions: Vec::new(), areas: 0 });
    };
    if u64::from(header.chunk_sectors) * 512 != chunk_bytes {
        return Err(Error::system(format!(
            "the store's chunks are {} bytes, not the session's {chunk_bytes}",
            u64::from(header.chunk_sectors) * 512
        )));
    }
    let mut exceptions = Vec::new();
    let mut areas = 0;
    while let Some(chunk) = read_chunk(area_chunk(areas, chunk_bytes))? {
        areas += 1;
        let (found, full) = parse_area(&chunk);
        exceptions.extend(found);
        if !full {
            break;
        }
    }
    Ok(Contents { header: Some(header), exceptions, areas })
}

/// Reads the store on device `dev`, below the page cache (the kernel
/// writes the store below it).
pub fn read(dev: &Path, chunk_bytes: u64) -> Result<Contents> {
    let (file, size) = direct_io::open_for_reading(dev)?;
    let mut buf = AlignedBuf::new(chunk_bytes as usize);
    read_with(chunk_bytes, |index| {
        let at = index * chunk_bytes;
        if at + chunk_bytes > size {
            return Ok(None);
        }
        file.read_exact_at(buf.bytes_mut(), at)
            .map_err(|e| Error::io(format!("reading the store {} at {at}", dev.display()), e))?;
        Ok(Some(buf.bytes_mut().to_vec()))
    })
}

/// The origin's byte ranges `(offset, length)` of `chunks` (origin chunk
/// numbers, any order, no repeats), adjacent chunks merged into one range.
pub fn extents(chunks: &[u64], chunk_bytes: u64) -> Vec<(u64, u64)> {
    let mut sorted = chunks.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for c in sorted {
        match out.last_mut() {
            Some((start, len)) if *start + *len == c * chunk_bytes => *len += chunk_bytes,
            _ => out.push((c * chunk_bytes, chunk_bytes)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 4096;

    fn header(valid: u32, chunk_sectors: u32) -> Vec<u8> {
        let mut b = vec![0u8; CHUNK as usize];
        for (i, v) in [MAGIC, valid, 1, chunk_sectors].into_iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn area(pairs: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; CHUNK as usize];
        for (i, (old, new)) in pairs.iter().enumerate() {
            b[i * 16..i * 16 + 8].copy_from_slice(&old.to_le_bytes());
            b[i * 16 + 8..i * 16 + 16].copy_from_slice(&new.to_le_bytes());
        }
        b
    }

    /// A store image of `chunks` chunks with `areas` at their places.
    fn store(areas: &[Vec<u8>], chunks: u64) -> Vec<Vec<u8>> {
        let mut image = vec![vec![0u8; CHUNK as usize]; chunks as usize];
        image[0] = header(1, 8);
        for (i, a) in areas.iter().enumerate() {
            image[area_chunk(i as u64, CHUNK) as usize] = a.clone();
        }
        image
    }

    fn read_image(image: &[Vec<u8>]) -> Result<Contents> {
        read_with(CHUNK, |i| Ok(image.get(i as usize).cloned()))
    }

    #[test]
    fn areas_sit_after_each_area_s_data_chunks() {
        // 256 pairs in a 4 KiB chunk: area 1 after area 0's 256 data chunks.
        assert_eq!(area_chunk(0, CHUNK), 1);
        assert_eq!(area_chunk(1, CHUNK), 258);
        assert_eq!(area_chunk(2, 65536), 1 + 2 * 4097);
    }

    #[test]
    fn the_list_ends_at_the_first_unused_pair() {
        let image = store(&[area(&[(7, 2), (3, 3), (100, 4)])], 300);
        let c = read_image(&image).unwrap();
        assert_eq!(c.header, Some(Header { valid: true, version: 1, chunk_sectors: 8 }));
        assert_eq!(c.exceptions.iter().map(|e| e.old_chunk).collect::<Vec<_>>(), vec![7, 3, 100]);
        assert_eq!(c.areas, 1);
    }

    #[test]
    fn a_full_area_goes_on_in_the_next() {
        let full: Vec<(u64, u64)> = (0..256).map(|i| (1000 + i, 2 + i)).collect();
        let image = store(&[area(&full), area(&[(5, 259)])], 600);
        let c = read_image(&image).unwrap();
        assert_eq!(c.exceptions.len(), 257);
        assert_eq!(c.exceptions[256], Exception { old_chunk: 5, new_chunk: 259 });
        assert_eq!(c.areas, 2);
        // A full last area at the device's end: the list ends there.
        let image = store(&[area(&full)], 258);
        assert_eq!(read_image(&image).unwrap().exceptions.len(), 256);
    }

    #[test]
    fn a_store_never_written_is_empty_and_others_are_refused() {
        let zero = vec![vec![0u8; CHUNK as usize]; 4];
        assert_eq!(read_image(&zero).unwrap(), Contents { header: None, exceptions: vec![], areas: 0 });
        let mut garbage = zero.clone();
        garbage[0][0] = 0x42;
        assert!(read_image(&garbage).unwrap_err().to_string().contains("magic"));
        let mut other_chunk = store(&[], 4);
        other_chunk[0] = header(1, 16);
        assert!(read_image(&other_chunk).unwrap_err().to_string().contains("not the session's 4096"));
        let mut invalid = store(&[area(&[(1, 2)])], 4);
        invalid[0] = header(0, 8);
        assert!(!read_image(&invalid).unwrap().header.unwrap().valid);
    }

    #[test]
    fn adjacent_chunks_merge_into_extents() {
        assert_eq!(extents(&[9, 3, 4, 5, 11, 10], 4096), vec![(3 * 4096, 3 * 4096), (9 * 4096, 3 * 4096)]);
        assert_eq!(extents(&[], 4096), vec![]);
        assert_eq!(extents(&[0], 65536), vec![(0, 65536)]);
    }
}
