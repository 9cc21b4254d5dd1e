//! One driver's `Worker.Direct` stream, as the executor sees it: where
//! results go, and the handles kept for results the driver has not yet
//! told the head about.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use crate::client::Client;
use crate::proto::{self, direct_op::Op};

/// What the outbound side of a stream sends.
pub(crate) enum Out {
    /// Operations for one frame.
    Ops(Vec<proto::DirectOp>),
    /// The last frame has been queued: end the stream, then end this
    /// process (a force-cancelled task runs here).
    ThenExit(u64),
}

/// A driver's stream of direct tasks.
pub(crate) struct Route {
    /// Numbers streams, so queued tasks know theirs.
    pub(crate) id: u64,
    out: UnboundedSender<Out>,
    /// Refs a task dropped whose releases wait for the driver's `adopted`
    /// of its result (which contains them), by task id.
    kept: Mutex<HashMap<u64, Vec<u64>>>,
    /// The driver's side is gone: nothing more is kept for it.
    closed: AtomicBool,
}

impl Route {
    pub(crate) fn new(out: UnboundedSender<Out>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Route {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            out,
            kept: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Sends `ops` in one frame (dropped if the driver is gone).
    pub(crate) fn send(&self, ops: Vec<proto::DirectOp>) {
        if !ops.is_empty() {
            let _ = self.out.send(Out::Ops(ops));
        }
    }

    /// Sends `ops`, then ends the stream and this process.
    pub(crate) fn send_then_exit(&self, ops: Vec<proto::DirectOp>, task: u64) {
        self.send(ops);
        let _ = self.out.send(Out::ThenExit(task));
    }

    /// Tasks the worker will not run (it lent its CPU while a task waits in
    /// `get`): the driver places them elsewhere.
    pub(crate) fn give_back(&self, tasks: &[u64]) {
        self.send(
            tasks
                .iter()
                .map(|id| proto::DirectOp {
                    op: Some(Op::Returned(*id)),
                })
                .collect(),
        );
    }

    /// Keeps `refs` unreleased until the driver adopts task `task`'s
    /// result; released at once if the driver is gone.
    pub(crate) fn keep(&self, client: &Client, task: u64, refs: Vec<u64>) {
        if refs.is_empty() {
            return;
        }
        let mut kept = self.kept.lock();
        if self.closed.load(Ordering::Acquire) {
            drop(kept);
            refs.into_iter().for_each(|r| client.release_handle(r));
            return;
        }
        kept.entry(task).or_default().extend(refs);
    }

    /// The driver told the head about task `task`'s result: the refs kept
    /// for it are released.
    pub(crate) fn adopted(&self, client: &Client, task: u64) {
        let refs = self.kept.lock().remove(&task);
        refs.into_iter()
            .flatten()
            .for_each(|r| client.release_handle(r));
    }

    /// The stream ended: everything kept for it is released.
    pub(crate) fn close(&self, client: &Client) {
        let kept = {
            let mut kept = self.kept.lock();
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *kept)
        };
        kept.into_values()
            .flatten()
            .for_each(|r| client.release_handle(r));
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
