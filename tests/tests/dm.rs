//! Device-mapper through the `devicemapper` crate, on the guest kernel's real
//! dm (the host kernel has none): these run in the VM, by `cargo xtask test`.

use std::path::PathBuf;

use devicemapper::{DevId, DmName, DmOptions, DM};
use hcp::common::bio::{LatKey, Level};
use hcp::common::{IoOp, OpCount};
use hcp::kernel::devnum::DevNum;
use hcp::tracer::block_io::BlockIoTracer;
use hcp::tracer::io_latency::IoLatencyTracer;
use hcp_tests::{open_direct, pread_exact, pwrite_all, require_root, AlignedBuf, LoopDevice};

const VM_ONLY: &str = "needs device-mapper: runs in the VM through `cargo xtask test`";

/// A dm device removed on drop, so a failed assertion leaves nothing behind.
struct DmDevice<'a> {
    dm: &'a DM,
    name: &'a DmName,
}

impl Drop for DmDevice<'_> {
    fn drop(&mut self) {
        let _ = self.dm.device_remove(&DevId::Name(self.name), DmOptions::default());
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the VM through `cargo xtask test`"]
fn linear_mapping_moves_io_and_is_traced_as_bios() {
    require_root();
    let dm = DM::new().unwrap_or_else(|e| panic!("device-mapper unavailable ({e}); {VM_ONLY}"));
    let backing = LoopDevice::new(8 << 20);
    let name = DmName::new("hcp-test-linear").expect("valid dm name");

    // 1 MiB of the device, starting 1 MiB into the loop device.
    let offset_sectors = 2048u64;
    let table = [(0u64, 2048u64, "linear".to_string(), format!("{} {offset_sectors}", backing.devnum()))];
    let info = dm.device_create(name, None, DmOptions::default()).expect("create dm device");
    let _guard = DmDevice { dm: &dm, name };
    dm.table_load(&DevId::Name(name), &table, DmOptions::default()).expect("load linear table");
    dm.device_suspend(&DevId::Name(name), DmOptions::default()).expect("resume dm device");

    // No udev in the guest: devtmpfs names the node after the minor.
    let dev = info.device();
    let dm_dev = DevNum { major: dev.major, minor: dev.minor };
    let node = PathBuf::from(format!("/dev/dm-{}", dev.minor));
    assert_eq!(DevNum::of_block_device(&node).expect("dm node"), dm_dev);

    let tracer = BlockIoTracer::attach(&[dm_dev, backing.devnum()]).expect("attach tracer");
    let latency = IoLatencyTracer::attach(&[dm_dev, backing.devnum()]).expect("attach latency tracer");
    let block = AlignedBuf::new(4096, 0xc3);
    let writes = 10u64;
    let through_dm = open_direct(&node);
    for i in 0..writes {
        pwrite_all(&through_dm, &block, i * 4096);
    }
    drop(through_dm);

    // The data landed at the mapped offset of the backing device.
    let raw = open_direct(&backing.path);
    let mut back = AlignedBuf::new(4096, 0);
    for i in 0..writes {
        pread_exact(&raw, &mut back, (offset_sectors << 9) + i * 4096);
        assert_eq!(back.bytes(), block.bytes(), "block {i} at the mapped offset");
    }

    let stats = tracer.read().expect("read counters");
    let written = OpCount { count: writes, bytes: writes * 4096 };
    let w = IoOp::Write as usize;
    // dm is bio-based: its bios are queued but it completes no requests; the
    // remapped bios are queued again on the device below, which completes them.
    assert_eq!(stats[&dm_dev].bio_queued[w], written, "dm device bios: {stats:?}");
    assert_eq!(stats[&dm_dev].rq_completed[w], OpCount::default(), "dm device requests: {stats:?}");
    assert_eq!(stats[&backing.devnum()].bio_queued[w], written, "backing device bios: {stats:?}");
    assert_eq!(stats[&backing.devnum()].rq_completed[w], written, "backing device requests: {stats:?}");
    // Every bio the loop device queued was passed down by the dm device.
    let remaps = tracer.remaps().expect("read remaps");
    assert_eq!(remaps[&(backing.devnum(), dm_dev)].ops[w], written, "remapped from the dm device: {remaps:?}");
    assert_eq!(remaps.len(), 1, "no other remaps: {remaps:?}");

    // Latency: bios on the dm device (bio-based), requests on the loop device.
    let hists = latency.histograms().expect("read histograms");
    let count = |dev: DevNum, level: Level| {
        let key = LatKey { dev: dev.to_kernel(), level: level as u8, op: IoOp::Write as u8, _pad: 0 };
        hists.iter().find(|(k, _)| *k == key).map_or(0, |(_, h)| h.count)
    };
    let losses = latency.losses(Some(dm_dev)).expect("losses");
    let in_flight = latency.in_flight().expect("in-flight");
    assert_eq!(
        count(dm_dev, Level::Bio),
        writes,
        "a sample per bio on the dm device ({losses:?}, {in_flight} in flight)"
    );
    assert_eq!(count(backing.devnum(), Level::Request), writes, "a sample per request on the loop device");
    assert_eq!(count(dm_dev, Level::Request), 0, "a dm device completes no requests");
    assert_eq!((losses.inflight_full, losses.histogram_full, losses.unmatched), (0, 0, 0), "{losses:?}");
}
