//! Requests the head answers with a `Reply`: looking an actor up by name,
//! and a bare round trip (a `Lookup` of no name), which tells that the
//! head has applied everything sent before it (ops of a session are
//! applied in order).

use std::time::Duration;

use super::Client;
use crate::error::{Error, Result};
use crate::proto::{self, client_op::Op};

impl Client {
    /// Asks the head which actor has `name`: (id, class), or `None`.
    pub(crate) fn lookup_actor(&self, name: &str) -> Result<Option<(u64, String)>> {
        let request_id = self.slots.reserve(1);
        let (tx, rx) = std::sync::mpsc::channel();
        self.replies.insert(request_id, tx);
        if let Some(why) = self.gone.get() {
            self.replies.remove(&request_id);
            return Err(Error::Connection(why.clone()));
        }
        self.send(Op::Lookup(proto::Lookup {
            request_id,
            name: name.to_string(),
        }));
        let reply = rx.recv_timeout(Duration::from_secs(60));
        self.replies.remove(&request_id);
        match reply {
            Ok(r) if r.actor_id == 0 => Ok(None),
            Ok(r) => Ok(Some((r.actor_id, r.class))),
            Err(_) => Err(Error::Connection(format!(
                "no answer from the head looking up actor `{name}`"
            ))),
        }
    }

    /// Waits until the head has applied everything this process sent
    /// before (a round trip on the session, whose ops are applied in
    /// order); false if no answer came within `limit`.
    pub(crate) fn round_trip(&self, limit: Duration) -> bool {
        let request_id = self.slots.reserve(1);
        let (tx, rx) = std::sync::mpsc::channel();
        self.replies.insert(request_id, tx);
        if self.gone.get().is_some() {
            self.replies.remove(&request_id);
            return false;
        }
        self.send(Op::Lookup(proto::Lookup {
            request_id,
            name: String::new(),
        }));
        let answered = rx.recv_timeout(limit).is_ok();
        self.replies.remove(&request_id);
        answered
    }

    pub(crate) fn on_reply(&self, reply: proto::Reply) {
        if let Some((_, tx)) = self.replies.remove(&reply.request_id) {
            let _ = tx.send(reply);
        } else {
            self.on_direct_ack(reply.request_id);
        }
    }
}
