//! A driver's direct task path: plain tasks go straight to workers the
//! head leased to this session, on one `Worker.Direct` stream per lease,
//! and their results come back on it. The head is on the path of a lease
//! (granted once, kept while tasks flow), not of every task: its CPU per
//! task was the cluster's ceiling (issue 15, `/work/coord/leases.md`).
//!
//! Per shape (CPUs per task) a queue of unsent specs; per lease the FIFO
//! of specs in flight on it, at most the pipelining depth of
//! `crate::pipelining` (the head's rule). The session asks the head for
//! about `ceil(queued / depth)` leases, and gives a lease back once its
//! shape has had nothing to run for [`LINGER`]. A lost lease puts its
//! tasks back: the one that was running is retried through the head (it
//! may have been the cause), the others had not started.

mod adopt;
mod ending;
mod grants;
mod route;
mod stream;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use super::Backlog;
use crate::proto::{self, arg, client_op::Op, direct_op};

/// `FLEET_LEASES=0` sends every task of a driver through the head; unset
/// (or anything else), a driver's plain tasks go to leased workers. On by
/// default: the head's CPU per task is 0.4 to 1.0 us instead of 5.5 to
/// 20 us, and a million tasks take 2 s instead of 6 to 8 (README
/// "Architecture"). Off is kept for comparing, and as a way out should a
/// cluster's workers be unreachable from its drivers.
pub(crate) const ENV_LEASES: &str = "FLEET_LEASES";
/// How long a lease with nothing to run is kept: a driver's loop of
/// `get(f.remote(..))` leaves its lease idle between two calls, and a
/// lease given back and asked for again costs two trips to the head.
const LINGER: Duration = Duration::from_millis(10);
/// Most leases a session asks for at once per shape (the head grants only
/// what CPUs allow anyway; this bounds the request, not the cluster).
const MAX_WANT: u32 = 1024;
/// After this many leases in a row whose worker could not be reached, the
/// session stops asking and sends every task through the head.
const MAX_CONNECT_FAILURES: u32 = 3;

/// Whether this process's driver uses leases: yes unless `FLEET_LEASES=0`
/// (see [`ENV_LEASES`]).
pub(crate) fn enabled_by_env() -> bool {
    !std::env::var(ENV_LEASES).is_ok_and(|v| v.trim() == "0")
}

/// Whether `spec` may take the direct path: a plain function with inline
/// arguments and no placement wishes, submitted by a driver. Anything else
/// needs what only the head has (ref arguments, actors, resources, pins,
/// generators, several results, retries on error).
pub(crate) fn eligible(spec: &proto::TaskSpec) -> bool {
    spec.actor_id == 0
        && spec.create.is_none()
        && !spec.generator
        && spec.num_returns <= 1
        && !spec.retry_on_error
        && spec.nested_refs.is_empty()
        && spec.resources.is_empty()
        && spec.node.is_empty()
        && spec.node_soft.is_empty()
        && !spec.spread
        && spec.parent_task == 0
        && spec
            .args
            .iter()
            .all(|a| matches!(a.kind, Some(arg::Kind::Value(_))))
}

/// A driver's leases and its direct tasks.
pub(crate) struct Leases {
    inner: Mutex<Inner>,
    /// Unsent direct tasks, which count toward the driver's bound on
    /// unsent work (`client/backlog.rs`) as unsent head ops do.
    pub(super) backlog: Backlog,
    /// Wakes the task that gives idle leases back.
    linger: Arc<tokio::sync::Notify>,
    linger_started: AtomicBool,
    /// Where its streams and timer run (the session's runtime).
    runtime: tokio::runtime::Handle,
    /// Signalled when `Inner::flushing` empties (see `ending.rs`).
    flushed: parking_lot::Condvar,
    /// Held while ops for the head are decided (under `inner`) and sent
    /// (after it, with the rest of the effects): two threads' ops reach
    /// the head in the order they were decided. Without it a stale
    /// `LeaseRequest` of want 0 (a revoked lease given back, on the
    /// stream's task) could follow a newer want of 1 (a submit on the
    /// user's thread, woken by that same result) and withdraw it: the task
    /// waited for a lease forever (tests/tasks.rs recursive tasks).
    /// Reentrant: effects may queue tasks again (`replace_lost`).
    pub(super) order: parking_lot::ReentrantMutex<()>,
    /// The head's bound on a job's unfinished tasks, for direct tasks.
    max_pending: usize,
}

#[derive(Default)]
struct Inner {
    shapes: Vec<Shape>,
    /// Few (one per worker leased): searched in order.
    leases: Vec<Lease>,
    /// Mean run time per function, for the pipelining depth.
    micros: HashMap<String, f64>,
    /// Direct tasks whose result the head waits for (see `leases/route.rs`).
    promised: HashSet<u64>,
    /// In-flight direct tasks cancelled (true: by force): whatever they
    /// return, and if their worker is lost, they finish as cancelled.
    cancelled: HashMap<u64, bool>,
    /// `adopted` ops held until the head answers the round trip sent
    /// after their `Put`, by its request id.
    acks: HashMap<u64, (UnboundedSender<proto::DirectOp>, u64)>,
    /// Leases in a row whose worker could not be reached.
    connect_failures: u32,
    /// Set once too many could not: every task goes through the head.
    off: bool,
    /// The last lease key handed out.
    next_key: u64,
    /// Shapes (CPUs) the head refused leases for: no node can run them (until
    /// the head says one joined).
    refused: Vec<f64>,
    /// Leases (keys) whose worker has not yet confirmed that the head has
    /// its summaries, while the driver leaves (see `ending.rs`).
    flushing: HashSet<u64>,
}

/// Tasks needing one number of CPUs.
struct Shape {
    cpus: f64,
    queue: VecDeque<proto::TaskSpec>,
    /// The `want` last sent to the head.
    sent_want: u32,
    /// The head granted all it can for now (`LeaseFull`, since the want
    /// last grew or a lease was last granted): leases held queue deeper.
    full: bool,
}

/// One worker leased to this session.
struct Lease {
    /// Names this lease (not the worker: a worker given back and leased
    /// again is a new lease, and the old stream's end must not touch it).
    key: u64,
    worker_id: u64,
    cpus: f64,
    /// The node its worker runs on (named in `OutOfMemory`).
    node: String,
    /// The stream's outbound side.
    tx: UnboundedSender<proto::DirectOp>,
    /// Sent and not answered, in order: the first runs.
    inflight: VecDeque<proto::TaskSpec>,
    /// The head revoked it: finish what was sent, send nothing more.
    revoked: bool,
    /// Its worker gave tasks back (it waits in `get`): nothing more is sent
    /// until what runs there is done.
    blocked: bool,
    /// Its stream ended; waiting for the head's word on why.
    broken: bool,
    /// When it last ran dry.
    idle_since: Option<Instant>,
}

impl Lease {
    fn usable(&self) -> bool {
        !self.revoked && !self.blocked && !self.broken
    }
}

/// What [`Leases::finished`] found of a direct task's outcome.
pub(super) struct Finished {
    /// The head was promised it (see `leases/route.rs`).
    pub(super) promised: bool,
    /// It was cancelled in flight: (force, its function).
    pub(super) cancelled: Option<(bool, String)>,
    /// Its lease's stream.
    pub(super) tx: UnboundedSender<proto::DirectOp>,
}

/// What the caller does once the lock is released.
#[derive(Default)]
pub(super) struct Effects {
    /// Ops for the head, in order.
    pub(super) head: Vec<Op>,
    /// Tasks whose worker died: retried through the head, or failed
    /// (task, why, the node it ran on).
    pub(super) lost: Vec<(proto::TaskSpec, String, String)>,
    /// Cancelled tasks whose worker was lost: (id, function, how).
    pub(super) cancelled: Vec<(u64, String, bool)>,
    /// Streams to open: (lease key, address, outbound receiver).
    pub(super) open: Vec<(
        u64,
        String,
        tokio::sync::mpsc::UnboundedReceiver<proto::DirectOp>,
    )>,
    /// The idle-lease reaper should look soon.
    pub(super) idle: bool,
}

fn same_cpus(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits()
}

impl Leases {
    pub(crate) fn new(runtime: tokio::runtime::Handle, max_pending: u64) -> Self {
        Leases {
            max_pending: match max_pending {
                0 => usize::MAX,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
            inner: Mutex::new(Inner::default()),
            backlog: Backlog::default(),
            linger: Arc::new(tokio::sync::Notify::new()),
            linger_started: AtomicBool::new(false),
            runtime,
            flushed: parking_lot::Condvar::new(),
            order: parking_lot::ReentrantMutex::new(()),
        }
    }

    /// Whether tasks of `cpus` take the direct path.
    pub(super) fn on(&self, cpus: f64) -> bool {
        let inner = self.inner.lock();
        !inner.off && !inner.refused.iter().any(|c| same_cpus(*c, cpus.max(0.0)))
    }

    /// `Some((unfinished, limit))` if this driver's unfinished direct tasks
    /// (queued or sent) reached the head's bound: the next fails.
    pub(super) fn at_limit(&self) -> Option<(usize, usize)> {
        // Without the lock while far from it (every submit asks): in flight
        // are at most the leases (one a CPU; MAX_WANT a shape) times their
        // pipelining depth.
        let queued = usize::try_from(self.backlog.queued()).unwrap_or(0);
        let in_flight_at_most = MAX_WANT as usize * crate::pipelining::MAX_PIPELINE;
        if queued.saturating_add(in_flight_at_most) < self.max_pending {
            return None;
        }
        let inner = self.inner.lock();
        let queued: usize = inner.shapes.iter().map(|s| s.queue.len()).sum();
        let sent: usize = inner.leases.iter().map(|l| l.inflight.len()).sum();
        let unfinished = queued + sent;
        (unfinished >= self.max_pending).then_some((unfinished, self.max_pending))
    }

    /// Queues an eligible task (already given a pending, direct slot).
    pub(super) fn enqueue(&self, spec: proto::TaskSpec, fx: &mut Effects) {
        let mut inner = self.inner.lock();
        let cpus = spec.num_cpus.max(0.0);
        let i = match inner.shapes.iter().position(|s| same_cpus(s.cpus, cpus)) {
            Some(i) => i,
            None => {
                inner.shapes.push(Shape {
                    cpus,
                    queue: VecDeque::new(),
                    sent_want: 0,
                    full: false,
                });
                inner.shapes.len() - 1
            }
        };
        inner.shapes[i].queue.push_back(spec);
        self.backlog.added(1);
        self.pump(&mut inner, i, fx);
    }

    /// Sends queued tasks of shape `i` to its leases with room, then asks
    /// the head for more leases if the queue needs them.
    fn pump(&self, inner: &mut Inner, i: usize, fx: &mut Effects) {
        let Inner {
            shapes,
            leases,
            micros,
            ..
        } = inner;
        let shape = &mut shapes[i];
        while let Some(front) = shape.queue.front() {
            let run_micros = micros.get(&front.function).copied();
            let depth = match shape.full {
                true => crate::pipelining::deep_depth(run_micros),
                false => crate::pipelining::depth(run_micros),
            };
            // As the head pipelines: only behind tasks of the same function
            // (a task queued behind another function's long one would wait
            // for it while another worker is free).
            let Some(lease) = leases
                .iter_mut()
                .filter(|l| same_cpus(l.cpus, shape.cpus) && l.usable())
                .filter(|l| match l.inflight.back() {
                    None => true,
                    Some(last) => l.inflight.len() < depth && last.function == front.function,
                })
                .min_by_key(|l| l.inflight.len())
            else {
                break;
            };
            let Some(spec) = shape.queue.pop_front() else {
                break;
            };
            let _ = lease.tx.send(proto::DirectOp {
                op: Some(direct_op::Op::Execute(spec.clone())),
            });
            lease.inflight.push_back(spec);
            lease.idle_since = None;
            self.backlog.taken(1);
        }
        self.ask(inner, i, fx);
    }

    /// Updates the head's view of how many leases shape `i` wants: more
    /// when its queue outgrows them, fewer (those held) once it is empty.
    /// Sent only when that changes, not per task.
    fn ask(&self, inner: &mut Inner, i: usize, fx: &mut Effects) {
        if inner.off {
            return;
        }
        let cpus = inner.shapes[i].cpus;
        let held = inner
            .leases
            .iter()
            .filter(|l| same_cpus(l.cpus, cpus))
            .count() as u32;
        let shape = &inner.shapes[i];
        let want = match shape.queue.front() {
            None => held,
            // The queue is what the usable leases had no room for.
            Some(front) => {
                let depth = crate::pipelining::depth(inner.micros.get(&front.function).copied());
                let more = shape.queue.len().div_ceil(depth) as u32;
                (held + more).min(MAX_WANT).max(held)
            }
        };
        let shape = &mut inner.shapes[i];
        let grow = want > shape.sent_want;
        let shrink = shape.queue.is_empty() && want < shape.sent_want;
        if grow || shrink {
            shape.sent_want = want;
            // The head answers a grown want with grants or `LeaseFull`.
            shape.full &= !grow;
            fx.head.push(Op::LeaseRequest(proto::LeaseRequest {
                num_cpus: cpus,
                want,
            }));
        }
    }

    /// A task's outcome came back on `worker`'s stream. Returns whether the
    /// head was promised this object (see `route.rs`) and the lease's
    /// stream; `None` if the task is not in flight there (its lease was
    /// lost and the task placed again).
    pub(super) fn finished(
        &self,
        key: u64,
        id: u64,
        exec_micros: u64,
        fx: &mut Effects,
    ) -> Option<Finished> {
        let mut inner = self.inner.lock();
        let li = inner.leases.iter().position(|l| l.key == key)?;
        let lease = &mut inner.leases[li];
        let spec = match lease.inflight.front() {
            Some(s) if s.task_id == id => lease.inflight.pop_front(),
            _ => lease
                .inflight
                .iter()
                .position(|s| s.task_id == id)
                .and_then(|p| lease.inflight.remove(p)),
        }?;
        let tx = lease.tx.clone();
        if lease.inflight.is_empty() {
            lease.blocked = false;
        }
        let cpus = lease.cpus;
        let cancelled = match inner.cancelled.is_empty() {
            true => None,
            false => inner
                .cancelled
                .remove(&id)
                .map(|force| (force, spec.function.clone())),
        };
        let us = exec_micros as f64;
        match inner.micros.get_mut(&spec.function) {
            Some(m) => *m = 0.8 * *m + 0.2 * us,
            None => {
                inner.micros.insert(spec.function, us);
            }
        }
        let promised = !inner.promised.is_empty() && inner.promised.remove(&id);
        self.after_change(&mut inner, li, cpus, fx);
        Some(Finished {
            promised,
            cancelled,
            tx,
        })
    }

    /// After a lease's in-flight list shrank: refill it, give it back if
    /// it was revoked and is done, note when it ran dry.
    fn after_change(&self, inner: &mut Inner, li: usize, cpus: f64, fx: &mut Effects) {
        if let Some(i) = inner.shapes.iter().position(|s| same_cpus(s.cpus, cpus)) {
            self.pump(inner, i, fx);
        }
        let lease = &mut inner.leases[li];
        if lease.inflight.is_empty() {
            if lease.revoked {
                let l = inner.leases.swap_remove(li);
                fx.head.push(Op::LeaseReturn(l.worker_id));
                if let Some(i) = inner.shapes.iter().position(|s| same_cpus(s.cpus, cpus)) {
                    self.pump(inner, i, fx);
                }
            } else if lease.idle_since.is_none() {
                lease.idle_since = Some(Instant::now());
                fx.idle = true;
            }
        }
    }

    /// The worker gave a task back unrun (it waits in `get`, or leaves).
    pub(super) fn returned(&self, key: u64, id: u64, fx: &mut Effects) {
        let mut inner = self.inner.lock();
        let Some(li) = inner.leases.iter().position(|l| l.key == key) else {
            return;
        };
        let lease = &mut inner.leases[li];
        let Some(p) = lease.inflight.iter().position(|s| s.task_id == id) else {
            return;
        };
        let Some(spec) = lease.inflight.remove(p) else {
            return;
        };
        lease.blocked = !lease.inflight.is_empty();
        let cpus = lease.cpus;
        if let Some(i) = inner.shapes.iter().position(|s| same_cpus(s.cpus, cpus)) {
            inner.shapes[i].queue.push_front(spec);
            self.backlog.added(1);
        }
        self.after_change(&mut inner, li, cpus, fx);
    }

    /// The head ended a lease: revoked (finish, then give it back), or its
    /// worker is gone (`reason` says how).
    pub(super) fn ended(&self, end: proto::LeaseEnd, fx: &mut Effects) {
        let mut inner = self.inner.lock();
        if end.worker_id == 0 && end.one_shape && end.feasible {
            // A node that can run this shape joined: leases again.
            let cpus = end.num_cpus.max(0.0);
            inner.refused.retain(|c| !same_cpus(*c, cpus));
            return;
        }
        if end.worker_id == 0 && end.one_shape {
            // No node can run this shape now: its tasks wait at the head
            // (until the head says one can: `feasible`).
            let cpus = end.num_cpus.max(0.0);
            inner.refused.push(cpus);
            if let Some(i) = inner.shapes.iter().position(|s| same_cpus(s.cpus, cpus)) {
                let s = inner.shapes.swap_remove(i);
                self.backlog.taken(s.queue.len());
                fx.lost.extend(
                    s.queue
                        .into_iter()
                        .map(|t| (t, String::new(), String::new())),
                );
            }
            return;
        }
        if end.worker_id == 0 {
            // No lease can be had (the job's workers serve no direct
            // stream): everything goes through the head.
            tracing::info!("no leases ({}): tasks go through the head", end.reason);
            self.go_off(&mut inner, fx);
            return;
        }
        let Some(li) = inner
            .leases
            .iter()
            .position(|l| l.worker_id == end.worker_id)
        else {
            return;
        };
        if end.reason == "revoked" {
            let lease = &mut inner.leases[li];
            lease.revoked = true;
            let cpus = lease.cpus;
            self.after_change(&mut inner, li, cpus, fx);
            return;
        }
        self.lose(&mut inner, li, &end.reason, fx);
    }

    /// A lease's worker is gone: its first task in flight was running and
    /// is retried (or fails); the others go back to the front of the queue.
    fn lose(&self, inner: &mut Inner, li: usize, why: &str, fx: &mut Effects) {
        let lease = inner.leases.swap_remove(li);
        let mut inflight = lease.inflight;
        // Cancelled ones end here, whatever else was lost with them.
        if !inner.cancelled.is_empty() {
            inflight.retain(|t| match inner.cancelled.remove(&t.task_id) {
                Some(force) => {
                    fx.cancelled.push((t.task_id, t.function.clone(), force));
                    false
                }
                None => true,
            });
        }
        if let Some(first) = inflight.pop_front() {
            fx.lost.push((first, why.to_string(), lease.node.clone()));
        }
        let cpus = lease.cpus;
        if let Some(i) = inner.shapes.iter().position(|s| same_cpus(s.cpus, cpus)) {
            self.backlog.added(inflight.len());
            for spec in inflight.into_iter().rev() {
                inner.shapes[i].queue.push_front(spec);
            }
            self.pump(inner, i, fx);
        }
    }

    /// Whether no lease will be used any more.
    pub(super) fn is_off(&self) -> bool {
        self.inner.lock().off
    }

    /// Cancels a direct task: `Some(function)` if it was still queued here
    /// (the caller finishes it as cancelled), `None` with the cancel sent
    /// to its worker if it was in flight; `Err(())` if it is not a direct
    /// task this session still has.
    pub(super) fn cancel(&self, c: &proto::Cancel) -> Result<Option<String>, ()> {
        let mut inner = self.inner.lock();
        for s in &mut inner.shapes {
            if let Some(p) = s.queue.iter().position(|t| t.task_id == c.task_id) {
                let spec = s.queue.remove(p);
                self.backlog.taken(1);
                return Ok(spec.map(|t| t.function));
            }
        }
        let Inner {
            leases, cancelled, ..
        } = &mut *inner;
        for l in leases.iter() {
            if l.inflight.iter().any(|t| t.task_id == c.task_id) {
                let _ = l.tx.send(proto::DirectOp {
                    op: Some(direct_op::Op::Cancel(*c)),
                });
                let force = cancelled.entry(c.task_id).or_insert(false);
                *force |= c.force;
                return Ok(None);
            }
        }
        Err(())
    }

    /// Starts the task that gives idle leases back, once.
    pub(super) fn note_idle(&self, client: &Arc<super::Client>) {
        if !self.linger_started.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(client);
            let linger = self.linger.clone();
            self.runtime.spawn(async move {
                loop {
                    linger.notified().await;
                    loop {
                        tokio::time::sleep(LINGER).await;
                        let Some(c) = weak.upgrade() else { return };
                        if !c.return_idle_leases() {
                            break;
                        }
                    }
                }
            });
        }
        self.linger.notify_one();
    }
}
