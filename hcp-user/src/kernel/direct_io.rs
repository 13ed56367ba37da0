//! Reading block devices below the page cache (O_DIRECT): what the kernel
//! writes to a device from below (dm-snapshot's store, through dm-io) is not
//! in the device's page cache, and a copy of a whole device should not fill
//! it either. Direct I/O wants buffers aligned to the logical block size;
//! 4 KiB covers every device.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// `path`, opened for direct reads; and its size in bytes.
pub fn open_for_reading(path: &Path) -> Result<(File, u64)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // A block device's size is where a seek to its end lands.
    let size = file.seek(SeekFrom::End(0)).map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
    Ok((file, size))
}

/// A buffer of `len` bytes aligned for direct I/O.
pub struct AlignedBuf {
    raw: Vec<u8>,
    skip: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + 4096];
        let skip = raw.as_ptr().align_offset(4096);
        AlignedBuf { raw, skip, len }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.skip..self.skip + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_sized() {
        for len in [512, 4096, 1 << 20] {
            let mut b = AlignedBuf::new(len);
            let s = b.bytes_mut();
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % 4096, 0);
        }
    }
}
