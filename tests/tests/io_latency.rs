//! Latency histograms count exactly the I/O a test issues, charged to its
//! device: requests on a loop device (here and on the guest kernels).

use std::time::Instant;

use aya::maps::{Array, Map, MapData};
use hcp::common::bio::{InFlightSlot, LatKey, Level};
use hcp::common::IoOp;
use hcp::tracer::io_latency::IoLatencyTracer;
use hcp::tracer::pins;
use hcp::tracer::probe::InFlightMode;
use hcp_tests::{open_direct, pread_exact, pwrite_all, require_root, serial, AlignedBuf, LoopDevice};

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

/// The in-flight modes the running kernel allows: the hash-map mode on
/// every kernel, the table where BPF atomics load.
fn modes() -> Vec<InFlightMode> {
    let mut modes = vec![InFlightMode::HashMap];
    if InFlightMode::for_running_kernel() == InFlightMode::Table {
        modes.push(InFlightMode::Table);
    }
    modes
}

/// Requests that overlap in flight, each timed exactly once in every
/// in-flight mode the kernel allows, with nothing left behind. With a
/// one-slot table, every request that starts while another is in flight
/// finds the slot taken and goes to the overflow map; in the hash-map mode
/// every start is in the map.
#[test]
fn overlapping_requests_are_timed_exactly_once_in_each_in_flight_mode() {
    require_root();
    for mode in modes() {
        let traced = LoopDevice::new(16 << 20);
        let tracer = IoLatencyTracer::attach_in_mode(&[traced.devnum()], 1, mode).expect("attach latency tracer");

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

        let key =
            LatKey { dev: traced.devnum().to_kernel(), level: Level::Request as u8, op: IoOp::Write as u8, _pad: 0 };
        let hists = tracer.histograms().expect("read histograms");
        let w = hists.iter().find(|(k, _)| *k == key).map(|(_, h)| *h).expect("a write histogram");
        assert_eq!(w.count, writers * each, "{mode}: one sample per write request");
        assert_eq!(tracer.in_flight().expect("in-flight"), 0, "{mode}: starts without completions");
        let losses = tracer.losses(Some(traced.devnum())).expect("losses");
        assert_eq!((losses.inflight_full, losses.histogram_full, losses.unmatched), (0, 0, 0), "{mode}: {losses:?}");
        if mode == InFlightMode::Table {
            let overflowed = tracer.overflowed().expect("overflow count");
            assert!(overflowed > 0, "no request found the one slot taken: the writers never overlapped");
            eprintln!("table: {overflowed} of {} starts went to the overflow map", writers * each);
        }
    }
}

/// The pinned set stays loaded when its last device goes, and is attached
/// again by the next traced session: a start still in the in-flight table
/// from before (a request in flight at the detach) must not be taken for a
/// later request at the same address. The attach zeroes the table first,
/// and the counts of the next I/O are exact.
#[test]
fn the_pinned_programs_attached_again_forget_what_was_in_flight() {
    require_root();
    let _serial = serial();
    if pins::loaded() {
        eprintln!("skipped: hcp's tracing is loaded here already (a session, or `hcp trace unload` not run)");
        return;
    }
    let traced = LoopDevice::new(16 << 20);
    let dev = traced.devnum();
    pins::ensure_attached(None).expect("load and attach");
    pins::add_devices(&[dev]).unwrap();
    pins::remove_devices(&[dev]).unwrap();
    assert!(!pins::attached() && pins::loaded(), "detached with its last device, still loaded");

    // A start left behind, as the detach of a request in flight leaves one.
    let path = pins::pin_dir().join("maps/IN_FLIGHT");
    let mut table: Array<MapData, InFlightSlot> =
        Array::try_from(Map::from_map_data(MapData::from_pin(&path).unwrap()).unwrap()).unwrap();
    let stale = InFlightSlot { object: 0xdead_b10c, start_ns: 1, ..Default::default() };
    table.set(0, stale, 0).unwrap();
    assert_eq!(table.get(&0, 0).unwrap(), stale);

    pins::ensure_attached(None).expect("attach again");
    assert!(pins::attached());
    assert_eq!(table.get(&0, 0).unwrap(), InFlightSlot::default(), "the table is zeroed before the attach");
    pins::add_devices(&[dev]).unwrap();
    let writes = 12u64;
    let file = open_direct(&traced.path);
    let block = AlignedBuf::new(4096, 0x5a);
    for i in 0..writes {
        pwrite_all(&file, &block, i * 4096);
    }
    let hist = pins::histogram(dev, Level::Request, IoOp::Write).unwrap();
    assert_eq!(hist.count, writes, "each write timed once");
    let max_ns = hist.max_ns;
    assert!(max_ns < 60_000_000_000, "no sample from a start before the attach: max {max_ns} ns");
    pins::remove_devices(&[dev]).unwrap();
    pins::unload().unwrap();
    assert!(!pins::pin_dir().exists());
}
