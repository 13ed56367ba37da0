//! The block I/O accounting programs count exactly the I/O a test issues:
//! O_DIRECT reads and writes of known sizes on a loop device, on the host
//! kernel and in the guests.

use std::os::unix::fs::FileExt;

use hcp::common::bio::{BioLosses, LatKey, Level};
use hcp::common::{IoOp, OpCount};
use hcp::tracer::block_io::BlockIoTracer;
use hcp::tracer::io_latency::IoLatencyTracer;
use hcp_tests::{open_direct, pread_exact, pwrite_all, require_root, AlignedBuf, BlockStat, LoopDevice};

const SMALL: usize = 4096;
const LARGE: usize = 64 * 1024;

#[test]
fn counts_exact_direct_io_of_traced_devices_only() {
    require_root();
    let traced = LoopDevice::new(16 << 20);
    let untraced = LoopDevice::new(16 << 20);
    let tracer = BlockIoTracer::attach(&[traced.devnum()]).expect("attach block I/O tracer");

    let (small_writes, large_writes, reads) = (24u64, 8u64, 16u64);
    let dev = open_direct(&traced.path);
    let small = AlignedBuf::new(SMALL, 0xa5);
    let large = AlignedBuf::new(LARGE, 0x5a);
    for i in 0..small_writes {
        pwrite_all(&dev, &small, i * SMALL as u64);
    }
    for i in 0..large_writes {
        pwrite_all(&dev, &large, (1 << 20) + i * LARGE as u64);
    }
    let mut back = AlignedBuf::new(SMALL, 0);
    for i in 0..reads {
        pread_exact(&dev, &mut back, i * SMALL as u64);
        assert_eq!(back.bytes(), small.bytes(), "read back block {i}");
    }
    // I/O on another device must not be charged to the traced one.
    let other = open_direct(&untraced.path);
    for i in 0..5 {
        pwrite_all(&other, &small, i * SMALL as u64);
    }

    let all = tracer.read().expect("read counters");
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), vec![traced.devnum()], "only the traced device has counters");
    let stats = all[&traced.devnum()];
    let written = OpCount {
        count: small_writes + large_writes,
        bytes: small_writes * SMALL as u64 + large_writes * LARGE as u64,
    };
    let read = OpCount { count: reads, bytes: reads * SMALL as u64 };
    // Each synchronous O_DIRECT call is one bio and, on a loop device, one request.
    assert_eq!(stats.bio_queued[IoOp::Write as usize], written, "bios queued (write): {stats:?}");
    assert_eq!(stats.bio_queued[IoOp::Read as usize], read, "bios queued (read): {stats:?}");
    assert_eq!(stats.rq_completed[IoOp::Write as usize], written, "requests completed (write): {stats:?}");
    assert_eq!(stats.rq_completed[IoOp::Read as usize], read, "requests completed (read): {stats:?}");
    assert_eq!(stats.bio_queued[IoOp::Discard as usize], OpCount::default(), "no discards: {stats:?}");
    assert_eq!(stats.read_errors, 0, "no failed reads of tracepoint records: {stats:?}");
}

/// hcp's request counts add up to the kernel's own (`/sys/block/*/stat`),
/// kind by kind, through what is not a plain read or write: flushes, and a
/// read completed in part and requeued for the rest. Each request once,
/// each timed once, nothing lost.
#[test]
fn request_counts_add_up_to_the_kernels_with_flushes_and_a_requeue() {
    require_root();
    let Some(dev) = LoopDevice::direct_io(16 << 20) else {
        // The host's run of this test is the one that counts there.
        eprintln!("skipped: {} takes no direct I/O on this kernel", std::env::temp_dir().display());
        return;
    };
    let tracer = IoLatencyTracer::attach(&[dev.devnum()]).expect("attach the block programs");
    let before = dev.stat();

    let (writes, flushes, reads) = (24u64, 3u64, 16u64);
    let f = open_direct(&dev.path);
    let block = AlignedBuf::new(SMALL, 0xc3);
    for i in 0..writes {
        pwrite_all(&f, &block, i * SMALL as u64);
        if i % (writes / flushes) == 0 {
            // fsync of a block device: a flush of the device's write cache.
            f.sync_all().expect("fsync");
        }
    }
    let mut back = AlignedBuf::new(SMALL, 0);
    for i in 0..reads {
        pread_exact(&f, &mut back, i * SMALL as u64);
    }
    // The last block's file cut by half: the loop device reads half of it,
    // completes that part and requeues the read, which then gets nothing
    // and fails. One request, one read in the kernel's statistics.
    dev.cut_file(SMALL as u64 / 2);
    let short = f.read_at(back.bytes_mut(), (16 << 20) - SMALL as u64);
    assert!(short.is_err(), "a read past the cut end fails: {short:?}");

    let kernel = dev.stat().since(&before);
    // Each fsync is an empty write with a preflush, which the kernel counts
    // as a write, and the flush request it becomes.
    let known = BlockStat { reads: reads + 1, writes: writes + flushes, discards: 0, flushes };
    assert_eq!(kernel, known, "the kernel's own count of what the test did");
    let counts = tracer.counts().expect("read the counts")[&dev.devnum()];
    let hcp = |op: IoOp| counts.rq_completed[op as usize].count;
    let counted = BlockStat {
        reads: hcp(IoOp::Read),
        writes: hcp(IoOp::Write),
        discards: hcp(IoOp::Discard),
        flushes: hcp(IoOp::Other),
    };
    assert_eq!(counted, kernel, "hcp's requests completed, kind by kind: {counts:?}");

    // Timed once each: the requeued read from its second issue; the empty
    // writes are never issued (the flush requests are), so their
    // completions are those without a start, each named.
    let samples = |op: IoOp| {
        let key = LatKey { dev: dev.devnum().to_kernel(), level: Level::Request as u8, op: op as u8, _pad: 0 };
        tracer.histograms().expect("histograms").iter().find(|(k, _)| *k == key).map_or(0, |(_, h)| h.count)
    };
    assert_eq!((samples(IoOp::Read), samples(IoOp::Write)), (reads + 1, writes), "latency samples");
    let losses = tracer.losses(Some(dev.devnum())).expect("losses");
    let expected = BioLosses { unmatched: flushes, ..BioLosses::default() };
    assert_eq!(losses, expected, "only the empty writes' completions without a start");
    assert_eq!(tracer.in_flight().expect("in flight"), 0, "no start left behind");
}
