//! The driver's side of the direct path as the rest of the client sees
//! it: which submits take it, results into the same ref slots `on_ready`
//! fills, and adoption: the head has never heard of a direct task's
//! object, so the first time one is used through the head (an argument of
//! a head-path task or actor call, a ref nested in a value) this driver
//! sends its value as a `Put`, or a `promise` first if it is not back yet.
//! Objects never used that way cost the head nothing, their release
//! included.

use std::sync::Arc;
use std::time::Duration;

use super::{eligible, Effects, Finished, Leases};
use crate::client::{Client, State};
use crate::error::Error;
use crate::proto::{self, client_op::Op, direct_op, object_value::Payload};

/// The longest a leaving driver waits for its leased workers to confirm
/// that the head has their summaries (one round trip each, normally).
const FINISH_LIMIT: Duration = Duration::from_secs(2);

impl Client {
    /// Lets this driver send eligible tasks to leased workers. Call on the
    /// session's runtime (its streams run there).
    /// `max_pending` is the head's bound on a job's unfinished tasks (0:
    /// none), applied here to direct tasks, which the head never holds.
    pub(crate) fn enable_leases(&self, max_pending: u64) {
        let _ = self
            .leases
            .set(Leases::new(tokio::runtime::Handle::current(), max_pending));
    }

    /// Sends `spec` down the direct path if it may take it (its handle is
    /// made already). Returns `spec` back if it goes through the head.
    pub(in crate::client) fn try_direct(
        self: &Arc<Self>,
        spec: proto::TaskSpec,
    ) -> Option<proto::TaskSpec> {
        let Some(leases) = self.leases.get() else {
            return Some(spec);
        };
        if !eligible(&spec) || !leases.on(spec.num_cpus) {
            return Some(spec);
        }
        if let Some((unfinished, limit)) = leases.at_limit() {
            // As the head fails a task past its bound, at once.
            let mut e = proto::TaskError {
                function: spec.function.clone(),
                message: format!(
                    "the job has {unfinished} unfinished tasks, the limit \
                     (FLEET_MAX_PENDING_TASKS) is {limit}; wait for results before submitting \
                     more"
                ),
                ..Default::default()
            };
            e.set_kind(proto::ErrorKind::Task);
            // Never heard of by the head: nothing to release there.
            self.slots.with(spec.task_id, |s| {
                s.direct = true;
                s.subscribed = true;
            });
            self.on_ready(proto::ObjectValue {
                object_id: spec.task_id,
                payload: Some(Payload::Error(Box::new(e))),
            });
            return None;
        }
        // Its result comes on a lease's stream: never subscribed at the
        // head, never released there unless adopted.
        self.slots.with(spec.task_id, |s| {
            s.direct = true;
            s.subscribed = true;
        });
        let _order = leases.order.lock();
        let mut fx = Effects::default();
        leases.enqueue(spec, &mut fx);
        self.apply_effects(fx);
        None
    }

    /// The driver leaves: waits (at most [`FINISH_LIMIT`]) until its
    /// leased workers' summaries of its tasks reached the head, which
    /// stops the job's workers once this session ends (see
    /// `Leases::finish`).
    pub(crate) fn finish_leases(&self) {
        if let Some(leases) = self.leases.get() {
            leases.finish(FINISH_LIMIT);
        }
    }

    /// Waits while too many direct tasks are unsent.
    pub(in crate::client) fn wait_for_direct_room(&self) {
        if let Some(l) = self.leases.get() {
            l.backlog
                .wait_for_room(|| self.closed.load(std::sync::atomic::Ordering::Acquire));
        }
    }

    /// `id` is about to be used through the head: if the head has never
    /// heard of it (a direct task's result), it is told now, before the op
    /// that uses it (same session stream, so in order).
    pub(crate) fn make_known(&self, id: u64) {
        let Some(leases) = self.leases.get() else {
            return;
        };
        enum Adopt {
            Put(Payload),
            Submit(Box<proto::TaskSpec>),
            Promise,
        }
        let action = self
            .slots
            .with(id, |s| {
                if !s.direct {
                    return None;
                }
                s.direct = false;
                // Decided under the slot's lock: the result, when it comes,
                // sees the slot adopted and goes to the head.
                Some(match &s.state {
                    State::Ready(p) => Adopt::Put(p.clone()),
                    State::Pending(_) => match leases.adopt_pending(id) {
                        Some(mut spec) => {
                            s.subscribed = true;
                            spec.subscribe = true;
                            Adopt::Submit(Box::new(spec))
                        }
                        None => Adopt::Promise,
                    },
                })
            })
            .flatten();
        match action {
            Some(Adopt::Put(payload)) => self.send(Op::Put(proto::Put {
                value: Some(proto::ObjectValue {
                    object_id: id,
                    payload: Some(payload),
                }),
                nested_refs: Vec::new(),
            })),
            // Subscribed with the submit (`TaskSpec.subscribe`).
            Some(Adopt::Submit(spec)) => self.send(Op::Submit(spec)),
            Some(Adopt::Promise) => self.send(Op::Promise(id)),
            None => {}
        }
    }

    /// A direct task's outcome: into its slot (waking its waiters), and to
    /// the head too when the head knows the object or must from now on.
    pub(in crate::client) fn on_direct_result(self: &Arc<Self>, key: u64, r: proto::TaskResult) {
        let Some(leases) = self.leases.get() else {
            return;
        };
        let Some(value) = r.value else { return };
        let Some(payload) = value.payload else { return };
        let id = value.object_id;
        let _order = leases.order.lock();
        let mut fx = Effects::default();
        let Some(Finished {
            promised,
            cancelled,
            tx,
        }) = leases.finished(key, id, r.exec_micros, &mut fx)
        else {
            // Not in flight there (the lease was lost and the task placed
            // again): this outcome is not the one its ref gets.
            self.apply_effects(fx);
            return;
        };
        // Kept by the worker until adopted: values in its node's store,
        // refs nested in the value.
        let kept = matches!(payload, Payload::Stored(_)) || !r.nested_refs.is_empty();
        match cancelled {
            // Whatever a cancelled task returns, it ends cancelled (the
            // head's rule); what the worker kept for it is let go.
            Some((force, function)) if !matches!(&payload, Payload::Error(e) if e.kind() == proto::ErrorKind::Cancelled) =>
            {
                let e = cancelled_error(id, &function, force);
                self.settle_direct(
                    id,
                    Payload::Error(Box::new(e.to_wire())),
                    Vec::new(),
                    promised,
                );
                if kept {
                    self.discard_unused(id, payload, r.nested_refs, promised, tx);
                }
            }
            _ => {
                self.settle_direct(id, payload, r.nested_refs, promised);
                if kept {
                    // Only once the head has applied the `Put`: the worker
                    // then releases its handles, and a release overtaking
                    // the Put would free the nested objects.
                    let request_id = self.slots.reserve(1);
                    leases.hold_adopted(request_id, tx, id);
                    self.send(Op::Lookup(proto::Lookup {
                        request_id,
                        name: String::new(),
                    }));
                }
            }
        }
        self.apply_effects(fx);
    }

    /// A cancelled task's result came back anyway, with a file in its
    /// node's store or refs its worker keeps: the head is handed it and
    /// frees it at once (the file is named nowhere else), and the worker
    /// lets its refs go once the head has it. Promised to the head, the
    /// id is taken by the cancelled outcome: the worker just lets go.
    fn discard_unused(
        &self,
        id: u64,
        payload: Payload,
        nested: Vec<u64>,
        promised: bool,
        tx: tokio::sync::mpsc::UnboundedSender<proto::DirectOp>,
    ) {
        let adopted = proto::DirectOp {
            op: Some(direct_op::Op::Adopted(id)),
        };
        let Some(leases) = self.leases.get().filter(|_| !promised) else {
            let _ = tx.send(adopted);
            return;
        };
        self.send(Op::Put(proto::Put {
            value: Some(proto::ObjectValue {
                object_id: id,
                payload: Some(payload),
            }),
            nested_refs: nested,
        }));
        self.send(Op::Release(id));
        let request_id = self.slots.reserve(1);
        leases.hold_adopted(request_id, tx, id);
        self.send(Op::Lookup(proto::Lookup {
            request_id,
            name: String::new(),
        }));
    }

    /// Finishes direct task `id` with `payload`. The head gets it as a
    /// `Put` if it was promised it, or if the value needs the head's
    /// bookkeeping (a store file, nested refs); `promised_gone` says
    /// whether a promise was made for a slot that is gone since.
    fn settle_direct(&self, id: u64, payload: Payload, nested: Vec<u64>, promised_gone: bool) {
        let needs_head = matches!(payload, Payload::Stored(_)) || !nested.is_empty();
        let put = |payload: Payload, nested: Vec<u64>| {
            self.send(Op::Put(proto::Put {
                value: Some(proto::ObjectValue {
                    object_id: id,
                    payload: Some(payload),
                }),
                nested_refs: nested,
            }))
        };
        // Decided under the slot's lock, against a concurrent `make_known`.
        let mut to_head = false;
        let filled = self.slots.with(id, |s| {
            let promised = !s.direct;
            to_head = promised || needs_head;
            s.direct = !to_head;
            std::mem::replace(&mut s.state, State::Ready(payload.clone()))
        });
        match filled {
            Some(State::Pending(waiters)) => {
                if to_head {
                    put(payload, nested);
                }
                for w in waiters {
                    w.count_down(id);
                }
            }
            Some(State::Ready(_)) => {}
            None if promised_gone => put(payload, nested),
            None if needs_head => {
                // Nobody holds it any more: the head takes the file (or
                // the pins) and frees it at once.
                put(payload, nested);
                self.send(Op::Release(id));
            }
            None => {}
        }
    }

    /// A leased worker gave a task back unrun.
    pub(in crate::client) fn on_direct_returned(self: &Arc<Self>, key: u64, id: u64) {
        self.with_leases(|leases, fx| leases.returned(key, id, fx));
    }

    /// The head leased a worker to this session.
    pub(crate) fn on_lease_grant(self: &Arc<Self>, g: proto::LeaseGrant) {
        match self.leases.get() {
            Some(leases) => {
                let _order = leases.order.lock();
                let mut fx = Effects::default();
                leases.granted(g, &mut fx);
                self.apply_effects(fx);
            }
            None => self.send(Op::LeaseReturn(g.worker_id)),
        }
    }

    /// The head has no more leases of a shape to give for now.
    pub(crate) fn on_lease_full(self: &Arc<Self>, f: proto::LeaseFull) {
        self.with_leases(|leases, fx| leases.cluster_full(f, fx));
    }

    /// The head ended a lease.
    pub(crate) fn on_lease_end(self: &Arc<Self>, end: proto::LeaseEnd) {
        self.with_leases(|leases, fx| leases.ended(end, fx));
    }

    /// A lease's stream ended and the head did not say why.
    pub(in crate::client) fn direct_stream_gone(
        self: &Arc<Self>,
        key: u64,
        why: &str,
        connected: bool,
    ) {
        self.with_leases(|leases, fx| leases.stream_gone(key, why, connected, fx));
    }

    /// Gives back idle leases; whether one is left to look at later.
    pub(in crate::client) fn return_idle_leases(self: &Arc<Self>) -> bool {
        self.with_leases(|leases, fx| leases.return_idle(fx))
            .unwrap_or(false)
    }

    /// Cancels `id` if it is a direct task; returns whether it was.
    pub(crate) fn cancel_direct(&self, c: &proto::Cancel) -> bool {
        let Some(leases) = self.leases.get() else {
            return false;
        };
        match leases.cancel(c) {
            Ok(Some(function)) => {
                let e = cancelled_error(c.task_id, &function, c.force);
                // The head counts it with the tasks workers ran (rare: one
                // op per cancel).
                let start_micros = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                let mut t = proto::DirectTask {
                    task_id: c.task_id,
                    function: function.clone(),
                    start_micros,
                    exec_micros: 0,
                    error: e.to_string(),
                    ..Default::default()
                };
                t.set_error_kind(proto::ErrorKind::Cancelled);
                self.send(Op::DirectDone(proto::DirectDone { tasks: vec![t] }));
                let promised = leases.take_promise(c.task_id);
                self.settle_direct(
                    c.task_id,
                    Payload::Error(Box::new(e.to_wire())),
                    Vec::new(),
                    promised,
                );
                true
            }
            Ok(None) => {
                if c.recursive {
                    // The tasks it submitted went through the head.
                    self.send(Op::Cancel(*c));
                }
                true
            }
            Err(()) => false,
        }
    }

    /// The head answered a request: a held `adopted` may go out.
    pub(crate) fn on_direct_ack(&self, request_id: u64) -> bool {
        self.leases.get().is_some_and(|l| l.acked(request_id))
    }

    /// Runs `decide` on the leases, under their order lock until its
    /// effects are applied (so ops for the head leave in the order they
    /// were decided); `None` if this driver has no leases.
    fn with_leases<R>(
        self: &Arc<Self>,
        decide: impl FnOnce(&Leases, &mut Effects) -> R,
    ) -> Option<R> {
        let leases = self.leases.get()?;
        let _order = leases.order.lock();
        let mut fx = Effects::default();
        let r = decide(leases, &mut fx);
        self.apply_effects(fx);
        Some(r)
    }

    /// Does what the direct path decided under its lock.
    fn apply_effects(self: &Arc<Self>, fx: Effects) {
        for op in fx.head {
            self.send(op);
        }
        let Some(leases) = self.leases.get() else {
            return;
        };
        for (key, address, rx) in fx.open {
            let weak = Arc::downgrade(self);
            let token = self.token.clone();
            leases
                .runtime
                .spawn(super::stream::run(weak, key, address, token, rx));
        }
        for (spec, why, node) in fx.lost {
            self.replace_lost(spec, &why, &node);
        }
        for (id, function, force) in fx.cancelled {
            let e = cancelled_error(id, &function, force);
            let promised = leases.take_promise(id);
            self.settle_direct(
                id,
                Payload::Error(Box::new(e.to_wire())),
                Vec::new(),
                promised,
            );
        }
        if fx.idle {
            leases.note_idle(self);
        }
    }

    /// Places again the task a lost lease's worker was running: through
    /// the head with one retry less (it may be what killed the worker; the
    /// head knows how to back off), or fails it when none is left. `why`
    /// empty: the session gave up on leases, and the task was not run.
    fn replace_lost(self: &Arc<Self>, mut spec: proto::TaskSpec, why: &str, node: &str) {
        let Some(leases) = self.leases.get() else {
            return;
        };
        let id = spec.task_id;
        if !why.is_empty() {
            if spec.max_retries == 0 {
                let e = lost_error(&spec.function, why, node);
                let promised = leases.take_promise(id);
                self.settle_direct(
                    id,
                    Payload::Error(Box::new(e.to_wire())),
                    Vec::new(),
                    promised,
                );
                return;
            }
            // Said as the head says it of its own tasks (a local cluster's
            // driver shows the head's log): once, naming how the worker
            // ended. The first attempt ran here, with every retry left.
            tracing::warn!(
                "{why} while running task {id:016x} (`{}`); task retried, attempt {} of {}",
                spec.function,
                spec.retries_used.saturating_add(2),
                spec.retries_used
                    .saturating_add(spec.max_retries)
                    .saturating_add(1),
            );
            // The head numbers its attempts after this one.
            spec.max_retries -= 1;
            spec.retries_used = spec.retries_used.saturating_add(1);
        }
        // Through the head, unless the head was promised this object (it
        // holds it pending, so a submit of the same id would clash).
        let via_head = self.slots.with(id, |s| {
            if s.direct {
                s.direct = false;
                true
            } else {
                false
            }
        });
        match via_head {
            Some(true) => {
                // Subscribed with the submit itself.
                spec.subscribe = true;
                self.send(Op::Submit(Box::new(spec)));
            }
            Some(false) if leases.is_off() => {
                // Promised to the head, and no lease will run it again.
                leases.take_promise(id);
                let e = lost_error(&spec.function, "no leased worker can be reached", node);
                self.settle_direct(id, Payload::Error(Box::new(e.to_wire())), Vec::new(), true);
            }
            Some(false) => {
                let _order = leases.order.lock();
                let mut fx = Effects::default();
                leases.enqueue(spec, &mut fx);
                self.apply_effects(fx);
            }
            None => {
                // Nobody holds its ref any more: not worth running again,
                // but a head that was promised it must hear the end.
                if leases.take_promise(id) {
                    let e = lost_error(&spec.function, "not run again: its ref was dropped", node);
                    self.settle_direct(id, Payload::Error(Box::new(e.to_wire())), Vec::new(), true);
                }
            }
        }
    }
}

/// The error of a cancelled direct task (worded as the head's).
fn cancelled_error(id: u64, function: &str, force: bool) -> Error {
    let how = if force {
        "fleet::force_cancel"
    } else {
        "fleet::cancel"
    };
    Error::Cancelled {
        function: function.to_string(),
        message: format!("task {id:016x} was cancelled ({how})"),
    }
}

/// The error a direct task's running attempt ends with when its worker is
/// lost and no retry is left; `node` is where that worker ran.
fn lost_error(function: &str, why: &str, node: &str) -> Error {
    if let Some(detail) = why.strip_prefix("out of memory") {
        return Error::OutOfMemory {
            function: function.to_string(),
            node: node.to_string(),
            message: detail.trim_start_matches([':', ' ']).to_string(),
        };
    }
    Error::WorkerDied {
        function: function.to_string(),
        message: format!("{why}, while running it (retries used up)"),
    }
}
