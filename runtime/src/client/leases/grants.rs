//! What the head grants a driver: a leased worker (its stream is opened
//! and the shape's queue pumped into it), or word that no more can be
//! granted now (`LeaseFull`: the leases held take deeper queues).

use std::collections::VecDeque;
use std::time::Instant;

use super::{same_cpus, Effects, Lease, Leases};
use crate::proto::{self, client_op::Op};

impl Leases {
    /// The head leased a worker to this session.
    pub(super) fn granted(&self, g: proto::LeaseGrant, fx: &mut Effects) {
        let mut inner = self.inner.lock();
        if inner.off || inner.leases.iter().any(|l| l.worker_id == g.worker_id) {
            fx.head.push(Op::LeaseReturn(g.worker_id));
            return;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        inner.next_key += 1;
        let key = inner.next_key;
        inner.leases.push(Lease {
            key,
            worker_id: g.worker_id,
            cpus: g.num_cpus.max(0.0),
            node: g.node.clone(),
            tx,
            inflight: VecDeque::new(),
            revoked: false,
            blocked: false,
            broken: false,
            idle_since: Some(Instant::now()),
        });
        fx.open.push((key, g.address, rx));
        fx.idle = true;
        if let Some(i) = inner
            .shapes
            .iter()
            .position(|s| same_cpus(s.cpus, g.num_cpus.max(0.0)))
        {
            // More may come: queue shallow until the head says otherwise.
            inner.shapes[i].full = false;
            self.pump(&mut inner, i, fx);
        }
    }

    /// The head has no more leases of `cpus` to give for now: the leases
    /// held take deeper queues (`pipelining::deep_depth`).
    pub(super) fn cluster_full(&self, f: proto::LeaseFull, fx: &mut Effects) {
        let mut inner = self.inner.lock();
        let cpus = f.num_cpus.max(0.0);
        if let Some(i) = inner.shapes.iter().position(|s| same_cpus(s.cpus, cpus)) {
            inner.shapes[i].full = true;
            self.pump(&mut inner, i, fx);
        }
    }
}
