//! The block I/O accounting programs count exactly the I/O a test issues:
//! O_DIRECT reads and writes of known sizes on a loop device, on the host
//! kernel and in the guests.

use hcp::common::{IoOp, OpCount};
use hcp::tracer::block_io::BlockIoTracer;
use hcp_tests::{open_direct, pread_exact, pwrite_all, require_root, AlignedBuf, LoopDevice};

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
