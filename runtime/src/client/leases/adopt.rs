//! What the head is told of direct results: a result used through the
//! head before it is back is promised (`route.rs` sends `promise`), and a
//! worker lets go of what it kept for a result only once the head has the
//! driver's `Put` of it (`adopted` waits for a round trip).

use tokio::sync::mpsc::UnboundedSender;

use super::Leases;
use crate::proto::{self, direct_op};

impl Leases {
    /// The head is about to be given direct task `id`'s object, which is
    /// not finished. Still queued here: it is taken out (`Some`), to go
    /// through the head instead. In flight: noted as promised (`None`),
    /// its result goes to the head as a `Put` when it comes.
    pub(super) fn adopt_pending(&self, id: u64) -> Option<proto::TaskSpec> {
        let mut inner = self.inner.lock();
        for s in &mut inner.shapes {
            // From the back: the object used is most often the newest.
            if let Some(p) = s.queue.iter().rposition(|t| t.task_id == id) {
                self.backlog.taken(1);
                return s.queue.remove(p);
            }
        }
        inner.promised.insert(id);
        None
    }

    /// Forgets a promise; whether there was one.
    pub(super) fn take_promise(&self, id: u64) -> bool {
        self.inner.lock().promised.remove(&id)
    }

    /// Holds `adopted(id)` for `tx` until the reply to request `request`.
    pub(super) fn hold_adopted(&self, request: u64, tx: UnboundedSender<proto::DirectOp>, id: u64) {
        self.inner.lock().acks.insert(request, (tx, id));
    }

    /// The head answered request `request`: a held `adopted` goes out.
    /// Returns whether the request was one of these.
    pub(super) fn acked(&self, request: u64) -> bool {
        let Some((tx, id)) = self.inner.lock().acks.remove(&request) else {
            return false;
        };
        let _ = tx.send(proto::DirectOp {
            op: Some(direct_op::Op::Adopted(id)),
        });
        true
    }
}
