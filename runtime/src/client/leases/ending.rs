//! How leases end: a stream that broke, idle leases given back, the
//! session giving up on leases, and the driver leaving, which waits until
//! its leased workers' summaries of its tasks reached the head.

use std::time::{Duration, Instant};

use super::{same_cpus, Effects, Inner, Leases, LINGER, MAX_CONNECT_FAILURES};
use crate::proto::{self, client_op::Op, direct_op};

impl Leases {
    /// `worker`'s stream ended. If the lease is still held, wait for the
    /// head's `LeaseEnd` (it says whether the worker died, and how) for a
    /// moment; see [`Leases::stream_gone`].
    pub(in crate::client) fn stream_ended(&self, key: u64, connected: bool) -> bool {
        let mut inner = self.inner.lock();
        if connected {
            inner.connect_failures = 0;
        }
        if inner.flushing.remove(&key) && inner.flushing.is_empty() {
            self.flushed.notify_all();
        }
        match inner.leases.iter_mut().find(|l| l.key == key) {
            Some(l) => {
                l.broken = true;
                true
            }
            None => false,
        }
    }

    /// A stream ended and no `LeaseEnd` came: the worker is treated as
    /// lost, and the lease given back (the head may still count it).
    pub(in crate::client) fn stream_gone(
        &self,
        key: u64,
        why: &str,
        connected: bool,
        fx: &mut Effects,
    ) {
        let mut inner = self.inner.lock();
        let mut off = false;
        if !connected {
            inner.connect_failures += 1;
            if inner.connect_failures >= MAX_CONNECT_FAILURES && !inner.off {
                tracing::warn!(
                    "no leased worker could be reached ({why}); this driver sends its tasks \
                     through the head from now on"
                );
                off = true;
            }
        }
        if let Some(li) = inner.leases.iter().position(|l| l.key == key) {
            fx.head.push(Op::LeaseReturn(inner.leases[li].worker_id));
            self.lose(&mut inner, li, why, fx);
        }
        if off {
            self.go_off(&mut inner, fx);
        }
    }

    /// Stops using leases: what is queued goes through the head, and the
    /// head hears that no more leases are wanted.
    pub(super) fn go_off(&self, inner: &mut Inner, fx: &mut Effects) {
        inner.off = true;
        let shapes = std::mem::take(&mut inner.shapes);
        for s in shapes {
            self.backlog.taken(s.queue.len());
            for spec in s.queue {
                fx.lost.push((spec, String::new(), String::new()));
            }
            if s.sent_want > 0 {
                fx.head.push(Op::LeaseRequest(proto::LeaseRequest {
                    num_cpus: s.cpus,
                    want: 0,
                }));
            }
        }
    }

    /// Gives back leases idle for [`LINGER`] whose shape has nothing
    /// queued. Returns whether an idle lease is left to look at later.
    pub(in crate::client) fn return_idle(&self, fx: &mut Effects) -> bool {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        let mut left = false;
        let mut i = 0;
        while i < inner.leases.len() {
            let l = &inner.leases[i];
            let queued = inner
                .shapes
                .iter()
                .any(|s| same_cpus(s.cpus, l.cpus) && !s.queue.is_empty());
            match l.idle_since {
                Some(t) if l.inflight.is_empty() && !queued && !l.broken => {
                    if now.duration_since(t) >= LINGER {
                        let l = inner.leases.swap_remove(i);
                        fx.head.push(Op::LeaseReturn(l.worker_id));
                        let cpus = l.cpus;
                        if let Some(s) = inner.shapes.iter().position(|s| same_cpus(s.cpus, cpus)) {
                            self.ask(&mut inner, s, fx);
                        }
                        continue;
                    }
                    left = true;
                }
                _ => {}
            }
            i += 1;
        }
        left
    }

    /// The session ended: every lease is dropped (the head frees them) and
    /// every direct task is gone (their slots fail with the session).
    pub(in crate::client) fn clear(&self) {
        let mut inner = self.inner.lock();
        let queued: usize = inner.shapes.iter().map(|s| s.queue.len()).sum();
        self.backlog.taken(queued);
        inner.shapes.clear();
        inner.leases.clear();
        inner.promised.clear();
        inner.cancelled.clear();
        inner.acks.clear();
    }

    /// The driver leaves: each leased worker is asked to send the head the
    /// summaries of this driver's tasks now (`flush`), and this waits
    /// until each answered that the head has them, its stream ended, or
    /// `limit` passed. Without it a driver that exits at once leaves its
    /// last tasks uncounted: its job's workers are stopped with it, before
    /// their batched summaries go (`worker/direct/held.rs`).
    pub(super) fn finish(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut inner = self.inner.lock();
        let Inner {
            leases, flushing, ..
        } = &mut *inner;
        for l in leases.iter().filter(|l| !l.broken) {
            let sent = l.tx.send(proto::DirectOp {
                op: Some(direct_op::Op::Flush(true)),
            });
            if sent.is_ok() {
                flushing.insert(l.key);
            }
        }
        while !inner.flushing.is_empty() {
            if self.flushed.wait_until(&mut inner, deadline).timed_out() {
                tracing::debug!(
                    leases = inner.flushing.len(),
                    "leased workers did not confirm their summaries reached the head"
                );
                break;
            }
        }
        inner.flushing.clear();
    }

    /// Lease `key`'s worker answered `flushed`, or its stream ended: the
    /// leaving driver waits for it no more.
    pub(super) fn flushed(&self, key: u64) {
        let mut inner = self.inner.lock();
        if inner.flushing.remove(&key) && inner.flushing.is_empty() {
            self.flushed.notify_all();
        }
    }
}
