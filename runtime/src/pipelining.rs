//! How many tasks of one function a worker may hold at once: the one it
//! runs and the ones queued behind it. One rule for both places that send
//! tasks to workers: the head's dispatch (`head/scheduler/pipeline.rs`)
//! and a driver's leased workers (`client/leases.rs`), so the two paths
//! keep workers equally busy.
//!
//! A worker that finishes its task with nothing queued waits a round trip
//! (its result back, the next task out) before it computes again; on a
//! busy machine that round trip costs tens to hundreds of microseconds.
//! So every task short enough that a queued one is unlikely to be stranded
//! gets at least one queued behind it, and short tasks get about
//! [`PIPELINE_MICROS`] of queued work (a worker sends their results once
//! half of that is done, see `worker/hold.rs`, so the other half covers
//! the round trip). Only long tasks go one per worker: for them a round
//! trip is noise, while a task queued behind a long one could wait that
//! long although another worker became free.

/// Queued work (microseconds of run time) a worker may hold beyond the
/// task it runs, for short tasks.
pub(crate) const PIPELINE_MICROS: f64 = 3_000.0;
/// At most this many tasks per worker, running and queued.
pub(crate) const MAX_PIPELINE: usize = 128;
/// Tasks that run longer than this on average go one per worker. Below it
/// one queued task costs at most one task's time at the very end of a
/// batch, against a round trip saved on every task.
pub(crate) const LONG_MICROS: f64 = 20_000.0;

/// Queued work per worker for short tasks when no other worker can be had
/// (a driver's leases once the head said `LeaseFull`): every frame between
/// driver and worker wakes a thread on each side (tens of microseconds on
/// a virtual machine), and a worker sends its results once half its queue
/// is done, so the deeper the queue, the fewer the frames per task. Kept
/// shallower while more workers may come, so that a burst spreads over
/// them instead of queueing on the first.
pub(crate) const DEEP_PIPELINE_MICROS: f64 = 24_000.0;
/// At most this many tasks per worker in a deep pipeline.
pub(crate) const MAX_DEEP_PIPELINE: usize = 1024;

/// Tasks per worker for a function whose tasks ran `run_micros` on
/// average (`None`: never ran, so nothing is known and it goes alone).
pub(crate) fn depth(run_micros: Option<f64>) -> usize {
    match run_micros {
        None => 1,
        Some(m) if m > LONG_MICROS => 1,
        Some(m) => (1 + (PIPELINE_MICROS / m.max(1.0)).ceil() as usize).clamp(2, MAX_PIPELINE),
    }
}

/// [`depth`] when no other worker can be had: about
/// [`DEEP_PIPELINE_MICROS`] of queued work (never less than [`depth`]).
pub(crate) fn deep_depth(run_micros: Option<f64>) -> usize {
    match run_micros {
        None => 1,
        Some(m) if m > LONG_MICROS => 1,
        Some(m) => (1 + (DEEP_PIPELINE_MICROS / m.max(1.0)).ceil() as usize)
            .clamp(depth(Some(m)), MAX_DEEP_PIPELINE),
    }
}
