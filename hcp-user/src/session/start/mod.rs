//! `hcp start`: plan everything, prepare everything, then switch the origin
//! inside the shortest window possible.
//!
//! Order matters for the frozen window: every check, the store, the `-real`
//! device, the snapshot's table and the origin's new table are made *before*
//! the filesystem is written back and frozen. Inside the window there are
//! only four ioctls from this one process for an origin's first session:
//! FIFREEZE, suspend the origin, resume the origin (which swaps in the
//! preloaded `snapshot-origin` table), FITHAW; a later session resumes its
//! snapshot in the window too. Anything that fails before the switch is
//! undone in reverse order.

mod options;
mod plan;
mod prepare;
mod store;
mod undo;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::kernel::dm::device::{make_node, Dm};
use crate::kernel::dm::uuid::{self, UUID_ORIGIN};
use crate::kernel::writeback::PreFlush;
use crate::privilege::require_root;
use crate::session::recorder;
use crate::state::lock::Lock;
use crate::state::record::{self, AutoextendRecord, KernelWindow, Phase, WindowRecord};
use crate::switch::fault;

pub use options::StartOptions;
use plan::{OriginPlan, Plan};
use prepare::Prepared;
use undo::{step, Undo};

/// What `start` did, as printed and as `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Started {
    pub session: String,
    pub origin: PathBuf,
    pub snapshot: PathBuf,
    pub store: PathBuf,
    pub store_loop_device: Option<PathBuf>,
    /// The store's size now; it grows up to `quota_bytes` with auto-extend.
    pub store_bytes: u64,
    pub quota_bytes: u64,
    /// With `--autoextend`: the settings and the monitor that applies them.
    pub autoextend: Option<AutoextendRecord>,
    pub chunk_bytes: u64,
    /// Set for a wrapped plain device: the device every write must now go
    /// through.
    pub write_through: Option<PathBuf>,
    pub mount_point: Option<PathBuf>,
    pub read_only: bool,
    pub filesystem: Option<String>,
    /// Why the snapshot could not be mounted (the session is kept).
    pub mount_error: Option<String>,
    /// The snapshot's point in time: the end of the switch (RFC 3339, and
    /// seconds since the Unix epoch).
    pub created: String,
    pub created_unix: f64,
    /// When the command began (with `--trace`, the baseline comes first).
    pub command_started: String,
    pub timing: Timing,
}

/// Measured on hcp's monotonic clock.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// The writeback before the freeze (passes of `syncfs`, outside the
    /// window); null when nothing was mounted.
    pub pre_flush: Option<PreFlush>,
    /// From the start of the command until the snapshot was live (with
    /// `--trace`, this includes loading the programs and the baseline).
    pub snapshot_seconds: f64,
    /// From the start of FIFREEZE to the end of FITHAW; null when nothing
    /// was mounted.
    pub frozen_seconds: Option<f64>,
    /// How long the FIFREEZE call itself took (it syncs the filesystem).
    pub freeze_call_seconds: Option<f64>,
    /// From the suspend of the origin to the end of its resume.
    pub suspended_seconds: Option<f64>,
    /// With `--trace`: the same windows measured in the kernel, and the
    /// longest write stall they caused.
    pub kernel: Option<KernelWindow>,
}

/// Starts a session: [`plan`](plan::plan) checks everything and changes
/// nothing; [`prepare`](prepare::prepare) makes every device and file the
/// snapshot needs, each with its undo; [`switch`] moves the origin onto the
/// snapshot in the one short window; [`finish`] records the live session
/// and mounts the snapshot. A failure before the switch is over undoes
/// everything; after it the session stands.
pub fn start(opts: &StartOptions) -> Result<Started> {
    let begun = Instant::now();
    let opts = &opts.with_absolute_paths()?;
    require_root()?;
    let dm = Dm::open()?;
    let _lock = Lock::acquire()?;
    let plan = plan::plan(&dm, opts)?;
    fault::configured()?;
    // From here on each change has its undo, run on an error or a panic.
    let mut undo = Undo::default();
    let mut prepared = prepare::prepare(&dm, opts, &plan, &mut undo)?;
    step("after-prepare")?;
    let mut timing = switch(&dm, &plan, &mut prepared, &mut undo)?;
    undo.disarm();
    timing.snapshot_seconds = begun.elapsed().as_secs_f64();
    let switched_unix = crate::session::recorder::wall_clock();
    finish(opts, &plan, prepared, timing, switched_unix)
}

/// The switch: the origin moves onto `snapshot-origin` with the snapshot
/// beside it. A live origin is switched inside the window (freeze, suspend,
/// resume, thaw); a wrapped plain device gets its origin device only now,
/// with nothing able to write to it before.
fn switch<'a>(dm: &'a Dm, plan: &Plan, prepared: &mut Prepared, undo: &mut Undo<'a>) -> Result<Timing> {
    let mut timing = Timing {
        snapshot_seconds: 0.0,
        pre_flush: None,
        frozen_seconds: None,
        freeze_call_seconds: None,
        suspended_seconds: None,
        kernel: None,
    };
    let id = &plan.id;
    match &plan.origin {
        OriginPlan::Live { name, create_real, mounted_at, .. } => {
            if *create_real {
                // Anything failing once the origin runs on its new table
                // (before the thaw, say) must give it its own table back
                // before the rest is undone.
                let (origin, real) = (name.clone(), prepared.session.origin.real.clone());
                undo.push(format!("give {name} its own table back"), move || {
                    crate::session::remove::restore_origin_table(dm, &origin, &real).map(drop)
                });
            }
            // A first session's snapshot is resumed before the window: it
            // sees `-real`, which nothing writes through `snapshot-origin`
            // (and so nothing copies out) until the origin's own resume
            // swaps that table in, so its point in time is still the
            // switch. A later session's snapshot is resumed with the origin
            // suspended: the origin already runs on `snapshot-origin`, and
            // the snapshot starts taking copy-outs as soon as it is active.
            // On Linux 6.12 the snapshot's resume took 0.9 to 3.2 ms, which
            // the window no longer holds.
            let in_window = !*create_real;
            if !in_window {
                dm.resume(id)?;
            }
            // The switch's tracer is attached once the guard is up, just
            // before the freeze: its write-stall programs run on every
            // system call of the machine, and the guard's start (a process
            // of its own, some thousands of system calls) took 60 ms more
            // under them in the 6.1 guest. A write call that entered before
            // the attach is not seen: ms before the freeze, not 100s.
            let fs_dev = mounted_at.is_some().then_some(plan.origin_dev.devnum);
            let tracing = prepared.tracing.as_mut();
            let window = crate::switch::window::switch(
                dm,
                name,
                mounted_at.as_deref(),
                *create_real,
                &crate::switch::window::START_STEPS,
                || {
                    if let Some(t) = tracing {
                        t.switch_tracer = Some(crate::session::trace::switch_tracer(fs_dev)?);
                    }
                    Ok(())
                },
                || if in_window { dm.resume(id) } else { Ok(()) },
            )?;
            timing.pre_flush = window.pre_flush;
            timing.frozen_seconds = window.frozen.map(|d| d.as_secs_f64());
            timing.freeze_call_seconds = window.freeze_call.map(|d| d.as_secs_f64());
            timing.suspended_seconds = Some(window.suspended.as_secs_f64());
        }
        OriginPlan::Wrap { name, raw } => {
            // Nothing can write yet: the wrapper does not exist. Activate the
            // snapshot first, so the first write through the wrapper is
            // already copied aside.
            dm.resume(id)?;
            let uuid = uuid::truncate(&format!("{UUID_ORIGIN}{}", raw.kernel_name));
            dm.create(name, &uuid, std::slice::from_ref(&prepared.origin_table))?;
        }
    }
    Ok(timing)
}

/// The snapshot is live: its node, the kernel's figures of the switch, the
/// record marked active, and the mount. Nothing here undoes the session; a
/// mount that fails leaves it unmounted and says why.
fn finish(
    opts: &StartOptions,
    plan: &Plan,
    prepared: Prepared,
    mut timing: Timing,
    switched_unix: f64,
) -> Result<Started> {
    let Prepared { mut session, store_bytes, snapshot, tracing, .. } = prepared;
    session.snapshot_unix = Some(switched_unix);
    let origin_name = plan.origin.origin_name();
    let mut tracing = tracing;
    if let Some(mut tracer) = tracing.as_mut().and_then(|t| t.switch_tracer.take()) {
        // A failure to read the tracer loses only its figures.
        match crate::session::trace::kernel_window(
            &mut tracer,
            origin_name,
            crate::tracer::freeze_trace::monotonic_ns(),
        ) {
            Ok(kernel) => timing.kernel = Some(kernel),
            Err(e) => eprintln!("hcp: the switch's kernel figures are missing: {e}"),
        }
    }

    make_node(&session.snapshot_path, snapshot)?;
    let mut recorder_child = None;
    if let Some(tracing) = tracing {
        // A wrapped device's origin exists only now; nothing was written
        // through it yet, so its histogram starts empty.
        let now = crate::session::trace::devices_of(&session);
        let late: Vec<_> = now.iter().filter(|d| !tracing.traced.iter().any(|t| t.0 == d.0)).cloned().collect();
        if !late.is_empty() {
            crate::session::trace::attach(&late)?;
        }
        let window = WindowRecord {
            pre_flush: timing.pre_flush.clone(),
            freeze_call_seconds: timing.freeze_call_seconds,
            frozen_seconds: timing.frozen_seconds,
            suspended_seconds: timing.suspended_seconds,
            kernel: timing.kernel.clone(),
        };
        let mut trace =
            crate::session::trace::record(&now, tracing.baseline, tracing.at_start, Some(window), plan.report.clone());
        // Once the snapshot is live: a process start (some 50-150 ms of CPU
        // under emulation) that the snapshot need not wait for. It begins at
        // the counters taken before the switch, so nothing is missed.
        let (recorder, child) = recorder::start(&session.id, opts.history_interval);
        trace.recorder = Some(recorder);
        recorder_child = child;
        session.trace = Some(trace);
    }
    session.phase = Phase::Active;
    record::save(&session)?;
    // The recorder waits for this (its stdin's end-of-file) before it reads
    // the record, which now says the session is live.
    drop(recorder_child);

    let mut started = Started {
        session: plan.id.clone(),
        origin: session.origin.path.clone(),
        snapshot: session.snapshot_path.clone(),
        store: session.store.path.clone(),
        store_loop_device: session.store.loop_device.clone(),
        store_bytes,
        quota_bytes: session.quota_bytes,
        autoextend: session.autoextend.clone(),
        chunk_bytes: opts.chunk.bytes(),
        write_through: matches!(plan.origin, OriginPlan::Wrap { .. })
            .then(|| crate::kernel::dm::device::node_path(origin_name)),
        mount_point: None,
        read_only: opts.read_only,
        filesystem: None,
        mount_error: None,
        created: crate::clock::format_time(switched_unix as u64),
        created_unix: switched_unix,
        command_started: crate::clock::format_time(session.created_unix),
        timing,
    };
    if let Some(record) = &session.mount {
        match crate::kernel::mount::mount_snapshot(&session.snapshot_path, &record.path, opts.read_only) {
            Ok(fs) => {
                started.mount_point = Some(record.path.clone());
                started.filesystem = Some(fs);
            }
            Err(e) => {
                // The session stays: the snapshot is good, only the mount failed.
                started.mount_error = Some(e.to_string());
                if record.created_dir {
                    let _ = std::fs::remove_dir(&record.path);
                }
                session.mount = None;
                record::save(&session)?;
            }
        }
    }
    Ok(started)
}
