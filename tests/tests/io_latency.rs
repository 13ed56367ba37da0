//! Latency histograms count exactly the I/O a test issues, charged to its
//! device: requests on a loop device (here and on the guest kernels).

use std::time::Instant;

use hcp::common::bio::{LatKey, Level};
use hcp::common::IoOp;
use hcp::tracer::io_latency::IoLatencyTracer;
use hcp_tests::{open_direct, pread_exact, pwrite_all, require_root, AlignedBuf, LoopDevice};

#[test]
fn histograms_count_each_request_once_by_device_and_direction() {
    require_root();
    let traced = LoopDevice::new(16 << 20);
    let untraced = LoopDevice::new(16 << 20);
    let tracer = IoLatencyTracer::attach(&[traced.devnum()]).expect("attach latency tracer");

    let (writes, reads) = (40u64, 24u64);
    let began = Instant::now();
    let dev = open_direct(&traced.path);
    let block = AlignedBuf::new(4096, 0x3c);
    for i in 0..writes {
        pwrite_all(&dev, &block, i * 4096);
    }
    let mut back = AlignedBuf::new(4096, 0);
    for i in 0..reads {
        pread_exact(&dev, &mut back, i * 4096);
    }
    let other = open_direct(&untraced.path);
    for i in 0..7 {
        pwrite_all(&other, &block, i * 4096);
    }
    let wall = began.elapsed().as_nanos() as u64;

    let hists = tracer.histograms().expect("read histograms");
    // A loop device is request-based: each O_DIRECT call is one request.
    let key =
        |op: IoOp| LatKey { dev: traced.devnum().to_kernel(), level: Level::Request as u8, op: op as u8, _pad: 0 };
    let find = |op| hists.iter().find(|(k, _)| *k == key(op)).map(|(_, h)| *h);
    let w = find(IoOp::Write).expect("a write histogram");
    let r = find(IoOp::Read).expect("a read histogram");
    assert_eq!(w.count, writes, "one sample per write request");
    assert_eq!(r.count, reads, "one sample per read request");
    assert_eq!(w.buckets.iter().sum::<u64>(), writes, "bucket counts add up to the sample count");
    assert!(w.max_ns > 0 && w.max_ns <= wall, "max {} ns within the {wall} ns the I/O took", w.max_ns);
    assert!(w.sum_ns >= w.max_ns && w.sum_ns <= wall, "sum {} ns", w.sum_ns);
    assert_eq!(
        hists.len(),
        2,
        "nothing else is charged (the untraced device): {:?}",
        hists.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    // Nothing left in flight: a loop device is request-based, and its bios,
    // never completed at the bio level, must not be recorded as started.
    assert_eq!(tracer.in_flight().expect("in-flight map"), 0, "starts without completions");
    let losses = tracer.losses(Some(traced.devnum())).expect("losses");
    assert_eq!((losses.inflight_full, losses.histogram_full, losses.unmatched), (0, 0, 0), "{losses:?}");
    assert_eq!(tracer.losses(None).expect("losses").read_errors, 0, "every bio's fields were readable");
}

/// With a one-slot in-flight table, every request that starts while another
/// is in flight finds the slot taken and goes to the overflow map: each is
/// still timed exactly once, and nothing is left behind.
#[test]
fn starts_whose_slot_is_taken_are_timed_through_the_overflow_map() {
    require_root();
    let traced = LoopDevice::new(16 << 20);
    let tracer = IoLatencyTracer::attach_with_in_flight_slots(&[traced.devnum()], 1).expect("attach latency tracer");

    // Writers at once, so that their requests overlap in flight.
    let (writers, each) = (8u64, 64u64);
    std::thread::scope(|s| {
        for w in 0..writers {
            let path = &traced.path;
            s.spawn(move || {
                let dev = open_direct(path);
                let block = AlignedBuf::new(4096, w as u8);
                for i in 0..each {
                    pwrite_all(&dev, &block, (w * each + i) * 4096);
                }
            });
        }
    });

    let key = LatKey { dev: traced.devnum().to_kernel(), level: Level::Request as u8, op: IoOp::Write as u8, _pad: 0 };
    let hists = tracer.histograms().expect("read histograms");
    let w = hists.iter().find(|(k, _)| *k == key).map(|(_, h)| *h).expect("a write histogram");
    assert_eq!(w.count, writers * each, "one sample per write request");
    let overflowed = tracer.overflowed().expect("overflow count");
    assert!(overflowed > 0, "no request found the one slot taken: the writers never overlapped");
    assert_eq!(tracer.in_flight().expect("in-flight"), 0, "starts without completions");
    let losses = tracer.losses(Some(traced.devnum())).expect("losses");
    assert_eq!((losses.inflight_full, losses.histogram_full, losses.unmatched), (0, 0, 0), "{losses:?}");
    eprintln!("{overflowed} of {} starts went to the overflow map", writers * each);
}
