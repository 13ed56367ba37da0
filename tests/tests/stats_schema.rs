//! `hcp stats --json` and its schema agree, for a session with no I/O yet
//! (every figure null or zero). Real output is checked against the schema
//! in the VM, by the traced-session test.

use hcp::figures::stats::{compute, StoreUse};
use hcp::state::record::SessionState;
use hcp::state::record::{Origin, Phase, Session, Store, TraceRecord, TracedDevice, RECORD_VERSION};
use hcp::tracer::pins::Counters;
use hcp_tests::assert_matches_stats_schema;

#[test]
fn stats_of_an_idle_session_match_the_schema() {
    let devices =
        [("origin", "253:0"), ("real", "253:1"), ("store", "7:3"), ("snapshot", "253:2")].map(|(role, devnum)| {
            TracedDevice { role: role.into(), devnum: devnum.into(), path: format!("/dev/{role}").into() }
        });
    let session = Session {
        version: RECORD_VERSION,
        id: "hcp1".into(),
        phase: Phase::Active,
        origin: Origin {
            path: "/dev/mapper/vg-lv".into(),
            dm_name: "vg-lv".into(),
            real: "vg-lv-real".into(),
            wrapped: false,
        },
        snapshot_path: "/dev/hcp1".into(),
        store: Store {
            path: "/var/lib/hcp/x.cow".into(),
            loop_device: Some("/dev/loop3".into()),
            created_file: true,
            size_bytes: 1 << 20,
        },
        mount: None,
        created_unix: 1,
        snapshot_unix: None,
        chunk_bytes: 4096,
        quota_bytes: 1 << 20,
        trace: Some(TraceRecord {
            since_unix: 1,
            devices: devices.to_vec(),
            baseline: None,
            at_start: None,
            window: None,
            report: None,
            recorder: None,
        }),
        autoextend: None,
        rollback: None,
    };
    let stats = compute(&session, &Counters::default(), 2);
    let value = serde_json::to_value(&stats).expect("stats serialise");
    assert_matches_stats_schema(&value);
    assert!(value["write_amplification"].is_null(), "no writes, no ratio: {value}");
    assert_eq!(value["devices"].as_array().map(Vec::len), Some(4));

    // As `hcp stats` prints it: with the state and store read from
    // device-mapper, here those of an invalidated snapshot.
    let mut live = stats;
    live.state = Some(SessionState::Invalid);
    live.store = Some(StoreUse {
        size_bytes: 1 << 20,
        used_bytes: None,
        use_percent: None,
        quota_bytes: 4 << 20,
        autoextend: true,
    });
    let value = serde_json::to_value(&live).expect("stats serialise");
    assert_matches_stats_schema(&value);
    assert_eq!(value["state"], "invalid");
}
