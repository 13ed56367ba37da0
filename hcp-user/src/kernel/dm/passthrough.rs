//! Pass-through mappings: a device wholly mapped, from its first sector to
//! its last, by exactly one dm-linear device. An enrolled partition is one
//! (`hcp enroll`), and so is any such mapping made by other means.
//!
//! Users name the partition (`hcp start /dev/sdc1`), but its filesystem is
//! mounted, and snapshotted, through the mapping: every command that takes
//! a device acts on the mapping instead, through [`acting_device`].

use crate::error::Result;
use crate::kernel::blockdev::BlockDevice;
use crate::kernel::dm::device::Dm;
use crate::kernel::dm::table::{Linear, SnapshotOrigin, TargetParams};
use crate::kernel::dm::uuid::UUID_REAL;

/// The device hcp acts on when a user names `dev`: the pass-through
/// mapping over it if there is one, else `dev` itself.
pub fn acting_device(dm: &Dm, dev: BlockDevice) -> Result<BlockDevice> {
    Ok(holder_of(dm, &dev)?.unwrap_or(dev))
}

/// The dm device that maps all of `dev` and nothing else, if one does.
///
/// While a session runs on a mapping, its linear table has moved to the
/// mapping's `-real` device (the mapping itself carries `snapshot-origin`),
/// so the holder found is `-real`: the mapping is then the origin above it.
pub fn holder_of(dm: &Dm, dev: &BlockDevice) -> Result<Option<BlockDevice>> {
    if dev.dm.is_some() {
        return Ok(None);
    }
    let [holder] = dev.holders()[..] else {
        return Ok(None);
    };
    let holder = BlockDevice::from_devnum(holder)?;
    let Some(ident) = holder.dm.clone() else {
        return Ok(None); // an md array, say
    };
    let whole = Linear { device: dev.devnum, offset: 0 }.table_line(dev.size_sectors());
    if dm.table(&ident.name)? != [whole] {
        return Ok(None);
    }
    if !ident.uuid.starts_with(UUID_REAL) {
        return Ok(Some(holder));
    }
    let Some(origin_name) = ident.name.strip_suffix("-real") else {
        return Ok(None);
    };
    if !dm.exists(origin_name)? {
        return Ok(None);
    }
    let origin = BlockDevice::from_devnum(dm.devnum(origin_name)?)?;
    let carries_it = match dm.table(origin_name)?.as_slice() {
        [line] => SnapshotOrigin::from_line(line).is_ok_and(|o| o.origin == holder.devnum),
        _ => false,
    };
    Ok(carries_it.then_some(origin))
}
