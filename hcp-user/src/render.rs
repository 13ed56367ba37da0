//! What hcp prints: text in the original hcp's spirit, or one JSON value
//! with `--json`. Every figure says what it counts.

use hcp::session::{ListEntry, Removed, Shown, Started};
use hcp::size::format_bytes;
use serde::Serialize;

fn print_json(value: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("reports serialise"));
}

pub fn started(s: &Started, json: bool) {
    if json {
        return print_json(s);
    }
    println!("Starting Hot Copy: {}", s.origin.display());
    let via = s.store_loop_device.as_ref().map(|l| format!(" (through {})", l.display())).unwrap_or_default();
    println!(
        "Changed blocks stored: {}{via}, quota {}, chunk {}",
        s.store.display(),
        format_bytes(s.quota_bytes),
        format_bytes(s.chunk_bytes)
    );
    println!("Snapshot completed: {:.3} s", s.timing.snapshot_seconds);
    match (s.timing.frozen_seconds, s.timing.freeze_call_seconds) {
        (Some(frozen), Some(call)) => {
            println!("File system frozen: {frozen:.3} s (of which FIFREEZE, flushing it, took {call:.3} s)")
        }
        _ => println!("File system frozen: 0.000 s (not mounted, nothing to freeze)"),
    }
    if let Some(suspended) = s.timing.suspended_seconds {
        println!("Origin suspended: {suspended:.3} s");
    }
    println!("Hot Copy created: {}", s.created);
    println!("Hot Copy created at: {}", s.snapshot.display());
    if let Some(through) = &s.write_through {
        println!(
            "All writes must now go through {}: {} is held by device-mapper and cannot be mounted, and a write to it \
             directly would bypass copy-on-write and corrupt the snapshot",
            through.display(),
            s.origin.display()
        );
    }
    match (&s.mount_point, &s.mount_error) {
        (Some(mp), _) => {
            let mode = if s.read_only { "read-only" } else { "read-write" };
            println!("Mounting {} {mode} ({})", s.snapshot.display(), s.filesystem.as_deref().unwrap_or("?"));
            println!("Hot Copy mounted at: {}", mp.display());
        }
        (None, Some(err)) => eprintln!(
            "hcp: the snapshot could not be mounted ({err}); session {} is kept: mount {} yourself, or remove it with `hcp -r {}`",
            s.session,
            s.snapshot.display(),
            s.snapshot.display()
        ),
        (None, None) => {}
    }
}

pub fn list(entries: &[ListEntry], json: bool) {
    if json {
        return print_json(&entries);
    }
    if entries.is_empty() {
        println!("No active Hot Copy sessions.");
        return;
    }
    for e in entries {
        println!("****** {} ******", e.session);
        println!(" Real Device:           {}", e.real_device.display());
        println!(" Virtual Device:        {}", e.virtual_device.display());
        let via = e.store_loop_device.as_ref().map(|l| format!(" (through {})", l.display())).unwrap_or_default();
        println!(" Changed Blocks Stored: {}{via}", e.store.display());
        match &e.mount_point {
            Some(mp) => println!(" Mounted:               {}", mp.display()),
            None => println!(" Mounted:               no"),
        }
        println!(" Time Created:          {}", e.created);
        match e.changed_bytes {
            Some(b) => println!(" Changed Blocks:        {} ({b} bytes)", format_bytes(b)),
            None => println!(" Changed Blocks:        unknown"),
        }
        match (e.store_used_bytes, e.store_use_percent) {
            (Some(used), Some(pct)) => {
                println!(
                    " Store Use:             {pct:.1}% ({} of {}, with metadata)",
                    format_bytes(used),
                    format_bytes(e.store_bytes)
                )
            }
            _ => println!(" Store Use:             unknown (of {})", format_bytes(e.store_bytes)),
        }
        println!(" State:                 {}", serde_json::to_value(e.state).expect("state").as_str().unwrap_or("?"));
    }
}

pub fn removed(removed: &[Removed], json: bool) {
    if json {
        return print_json(&removed);
    }
    for r in removed {
        let restored =
            if r.origin_restored { format!("; {} has its own table back", r.origin.display()) } else { String::new() };
        let frozen = r.frozen_seconds.map(|f| format!(", file system frozen {f:.3} s")).unwrap_or_default();
        println!("Hot Copy session {} has been stopped ({:.3} s{frozen}){restored}.", r.session, r.seconds);
        if let Some(store) = &r.kept_store {
            println!("Store kept: {}", store.display());
        }
    }
}

pub fn shown(s: &Shown, json: bool) {
    if json {
        return print_json(s);
    }
    for snap in &s.snapshots {
        println!("{}", snap.display());
    }
}

pub fn version(json: bool) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if json {
        return print_json(&serde_json::json!({ "hcp": env!("CARGO_PKG_VERSION"), "kernel": kernel.trim() }));
    }
    println!("hcp {} (kernel {})", env!("CARGO_PKG_VERSION"), kernel.trim());
}
