//! The store of a start: a sparse file attached through a loop device, or a
//! block device (its first bytes only, through `hcpN-cow`, for a quota),
//! with its header cleared.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result, ResultExt};
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::table::{Linear, TargetParams};
use crate::kernel::dm::uuid::{self, UUID_COW};
use crate::kernel::loopdev::{AttachOptions, LoopDevice};
use crate::size::{format_bytes, ChunkSize};
use crate::state::dirs::DEFAULT_STORE_DIR;
use crate::state::record::Store;

use super::options::StartOptions;
use super::plan::StorePlan;
use super::undo::Undo;

/// The record of the store `plan` makes, before it is made, a file store of
/// `file_bytes` (its loop device is added once attached).
pub(super) fn planned(plan: &StorePlan, file_bytes: u64) -> Store {
    match plan {
        StorePlan::File { path } => {
            Store { path: path.clone(), loop_device: None, created_file: true, size_bytes: file_bytes }
        }
        StorePlan::Device { dev, limit } => Store {
            path: dev.display_path(),
            loop_device: None,
            created_file: false,
            size_bytes: limit.unwrap_or(dev.size_bytes),
        },
    }
}

/// Creates and attaches a file store of `file_bytes`, or readies a device
/// store; returns the record, the block device dm will use, and its size.
pub(super) fn prepare<'a>(
    dm: &'a Dm,
    plan: &StorePlan,
    id: &str,
    file_bytes: u64,
    opts: &StartOptions,
    undo: &mut Undo<'a>,
) -> Result<(Store, BlockDevice, u64)> {
    match plan {
        StorePlan::File { path } => {
            if let Some(dir) = path.parent() {
                if dir.starts_with(DEFAULT_STORE_DIR) {
                    crate::state::private::ensure_private_dir(Path::new(DEFAULT_STORE_DIR))?;
                }
                if !dir.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                }
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::io(format!("creating store file {}", path.display()), e))?;
            let owned = path.clone();
            undo.push(format!("delete {}", path.display()), move || {
                std::fs::remove_file(&owned).map_err(|e| Error::io(owned.display(), e))
            });
            size_store_file(&file, path, file_bytes, opts.preallocate)?;
            drop(file);
            let lo = LoopDevice::attach(path, AttachOptions { read_only: false, direct_io: true, autoclear: false })
                .context(format!("attaching store {}", path.display()))?;
            let lo_path = lo.path.clone();
            let dev = BlockDevice::from_devnum(lo.devnum()?)?;
            undo.push(format!("detach {}", lo_path.display()), move || lo.detach());
            Ok((Store { loop_device: Some(lo_path), ..planned(plan, file_bytes) }, dev, file_bytes))
        }
        StorePlan::Device { dev, limit: None } => Ok((planned(plan, file_bytes), dev.clone(), dev.size_bytes)),
        StorePlan::Device { dev, limit: Some(bytes) } => {
            // Only the first `bytes` of the device, so the quota holds.
            let name = format!("{id}-cow");
            let line = Linear { device: dev.devnum, offset: 0 }.table_line(bytes >> 9);
            let devnum = dm.create(&name, &uuid::truncate(&format!("{UUID_COW}{id}")), &[line])?;
            let owned = name.clone();
            undo.push(format!("remove {name}"), move || dm.remove(&owned));
            Ok((planned(plan, file_bytes), BlockDevice::from_devnum(devnum)?, *bytes))
        }
    }
}

fn size_store_file(file: &File, path: &Path, bytes: u64, preallocate: bool) -> Result<()> {
    if preallocate {
        let len = libc::off_t::try_from(bytes).map_err(|_| Error::usage("quota too large"))?;
        // SAFETY: fallocate on a file we own.
        let rc = unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(file), 0, 0, len) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ENOSPC) => Error::usage(format!(
                    "not enough free space for a preallocated store of {} at {}: give a smaller -q or another -c",
                    format_bytes(bytes),
                    path.display()
                )),
                _ => Error::io(format!("preallocating {}", path.display()), err),
            });
        }
        Ok(())
    } else {
        file.set_len(bytes).map_err(|e| Error::io(format!("sizing store file {}", path.display()), e))
    }
}

/// dm-snapshot reads the store's first chunk as its header: a stale one
/// from an earlier use would bring back old exceptions. A new file is all
/// zeroes already; a device is zeroed here.
pub(super) fn zero_header(store: &BlockDevice, chunk: ChunkSize) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let path = store.display_path();
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening store {}", path.display()), e))?;
    f.write_all_at(&vec![0u8; chunk.bytes() as usize], 0)
        .and_then(|()| f.sync_data())
        .map_err(|e| Error::io(format!("clearing the header of store {}", path.display()), e))
}
