//! One `Worker.Direct` stream: a leased worker's tasks out, their results
//! back. Opened when the head grants a lease; it ends when the driver drops
//! the lease (its sender) or the worker goes away.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::client::{transport, Client};
use crate::error::{Error, Result};
use crate::proto::{self, direct_op, worker_client::WorkerClient};

/// How long a lease whose stream broke waits for the head to say why
/// (`LeaseEnd`) before the driver treats its worker as lost.
/// The head waits up to 2 s for the exit status itself.
const WAIT_FOR_END: Duration = Duration::from_secs(5);

/// Runs the stream of lease `key` until it ends.
pub(in crate::client) async fn run(
    client: Weak<Client>,
    key: u64,
    address: String,
    token: String,
    rx: UnboundedReceiver<proto::DirectOp>,
) {
    let mut connected = false;
    let why = match serve(&client, key, &address, token, rx, &mut connected).await {
        Ok(()) => "the worker closed its stream".to_string(),
        Err(e) => e.to_string(),
    };
    let Some(c) = client.upgrade() else { return };
    let Some(leases) = c.leases.get() else { return };
    if !leases.stream_ended(key, connected) {
        // Given back by this driver: nothing was lost.
        return;
    }
    drop(c);
    tokio::time::sleep(WAIT_FOR_END).await;
    if let Some(c) = client.upgrade() {
        c.direct_stream_gone(key, &why, connected);
    }
}

async fn serve(
    client: &Weak<Client>,
    key: u64,
    address: &str,
    token: String,
    rx: UnboundedReceiver<proto::DirectOp>,
    connected: &mut bool,
) -> Result<()> {
    let channel = crate::net::channel(address).await?;
    let mut wc = WorkerClient::new(channel)
        .max_decoding_message_size(transport::MAX_MESSAGE)
        .max_encoding_message_size(transport::MAX_MESSAGE);
    // The token goes first, at once, alone: the worker answers only once
    // it has checked it, and a lease may be granted before there is work.
    let first = proto::DirectFrame {
        ops: Vec::new(),
        token,
    };
    let outbound =
        futures::stream::once(async move { first }).chain(transport::batches(rx).map(|ops| {
            proto::DirectFrame {
                ops,
                token: String::new(),
            }
        }));
    let mut inbound = wc
        .direct(outbound)
        .await
        .map_err(|s| Error::Connection(format!("leased worker at {address}: {}", s.message())))?
        .into_inner();
    *connected = true;
    loop {
        let frame = match inbound.message().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(s) => {
                return Err(Error::Connection(format!(
                    "leased worker at {address}: {}",
                    s.message()
                )))
            }
        };
        let Some(c) = client.upgrade() else {
            return Ok(());
        };
        c.on_direct_ops(key, frame.ops);
    }
}

impl Client {
    /// Applies what a leased worker sent.
    fn on_direct_ops(self: &Arc<Self>, key: u64, ops: Vec<proto::DirectOp>) {
        for op in ops.into_iter().filter_map(|o| o.op) {
            match op {
                direct_op::Op::Result(r) => self.on_direct_result(key, r),
                direct_op::Op::Returned(id) => self.on_direct_returned(key, id),
                direct_op::Op::Flushed(_) => {
                    if let Some(l) = self.leases.get() {
                        l.flushed(key);
                    }
                }
                _ => {}
            }
        }
    }
}
