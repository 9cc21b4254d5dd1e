//! How a session's operations travel: batched frames on one gRPC stream,
//! or plain channels when the driver shares a process with the head.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::client::{Backlog, Client};
use crate::error::{Error, Result};
use crate::proto::{self, head_client::HeadClient, head_op};

/// Frames are cut at about this many encoded bytes.
const FRAME_BYTES: usize = 4 << 20;
/// Largest frame either side accepts; a larger one is refused by tonic.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// The head's operations as they arrive, in batches.
pub(crate) type Inbound = Pin<Box<dyn Stream<Item = Result<Vec<proto::HeadOp>>> + Send>>;

/// Drains a channel into batches: whatever is queued when the sender wakes
/// goes out as one frame, so bursts cost one message and a lone op goes out
/// at once.
pub(crate) fn batches<T: Message + Send + 'static>(
    rx: UnboundedReceiver<T>,
) -> impl Stream<Item = Vec<T>> + Send + 'static {
    counted_batches(rx, None)
}

/// [`batches`] that tells `backlog` how many operations each frame took.
fn counted_batches<T: Message + Send + 'static>(
    rx: UnboundedReceiver<T>,
    backlog: Option<Arc<Backlog>>,
) -> impl Stream<Item = Vec<T>> + Send + 'static {
    futures::stream::unfold((rx, backlog), |(mut rx, backlog)| async move {
        let first = rx.recv().await?;
        let mut size = first.encoded_len();
        let mut batch = vec![first];
        while size < FRAME_BYTES && batch.len() < 8192 {
            match rx.try_recv() {
                Ok(op) => {
                    size += op.encoded_len();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        if let Some(b) = &backlog {
            b.taken(batch.len());
        }
        Some((batch, (rx, backlog)))
    })
}

/// Opens a session stream to a head over gRPC.
pub(crate) async fn connect(address: &str) -> Result<(UnboundedSender<proto::ClientOp>, Inbound)> {
    connect_on(crate::net::channel(address).await?).await
}

/// [`connect`] for a driver: also returns the count of its unsent
/// operations, which its submits wait on (see `client/backlog.rs`).
pub(crate) async fn connect_driver(
    address: &str,
) -> Result<(UnboundedSender<proto::ClientOp>, Inbound, Arc<Backlog>)> {
    let backlog = Arc::new(Backlog::default());
    let channel = crate::net::channel(address).await?;
    let (out, inbound) = open_session(channel, Some(backlog.clone())).await?;
    Ok((out, inbound, backlog))
}

/// [`connect`] over a channel made by the caller.
pub(crate) async fn connect_on(
    channel: tonic::transport::Channel,
) -> Result<(UnboundedSender<proto::ClientOp>, Inbound)> {
    open_session(channel, None).await
}

async fn open_session(
    channel: tonic::transport::Channel,
    backlog: Option<Arc<Backlog>>,
) -> Result<(UnboundedSender<proto::ClientOp>, Inbound)> {
    let mut client = HeadClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::unbounded_channel();
    let outbound = counted_batches(rx, backlog).map(|ops| proto::ClientFrame { ops });
    let response = client
        .session(outbound)
        .await
        .map_err(|s| Error::Connection(format!("opening a session: {}", s.message())))?;
    let inbound = response.into_inner().map(|frame| {
        frame
            .map(|f| f.ops)
            .map_err(|s| Error::Connection(s.message().to_string()))
    });
    Ok((tx, Box::pin(inbound)))
}

/// Where a worker's session hands the operations meant for the worker
/// (tasks to run, actors to drop).
pub(crate) type WorkerOps = Arc<dyn Fn(head_op::Op) + Send + Sync>;

/// Inbound side of an in-process session.
pub(crate) fn local_inbound(rx: UnboundedReceiver<proto::HeadOp>) -> Inbound {
    Box::pin(batches(rx).map(Ok))
}

/// Sends `hello` and waits for the head's answer. Returns the welcome and
/// any operations that arrived in the same frame.
pub(crate) async fn handshake(
    out: &UnboundedSender<proto::ClientOp>,
    inbound: &mut Inbound,
    hello: proto::Hello,
) -> Result<(proto::Welcome, Vec<proto::HeadOp>)> {
    out.send(proto::ClientOp {
        op: Some(proto::client_op::Op::Hello(Box::new(hello))),
    })
    .map_err(|_| Error::Connection("session closed before hello".into()))?;
    let mut ops = match inbound.next().await {
        Some(Ok(ops)) => ops.into_iter(),
        Some(Err(e)) => return Err(e),
        None => return Err(Error::Connection("the head closed the session".into())),
    };
    match ops.next().and_then(|o| o.op) {
        Some(head_op::Op::Welcome(w)) => Ok((*w, ops.collect())),
        Some(head_op::Op::Refused(why)) => Err(Error::Mismatch(why)),
        _ => Err(Error::Connection("the head did not answer hello".into())),
    }
}

/// Routes the head's operations for the rest of the session. Tasks to run
/// go to `execute` (workers only); the end of the stream fails whatever is
/// still pending.
pub(crate) async fn receive(
    client: Arc<Client>,
    leftover: Vec<proto::HeadOp>,
    mut inbound: Inbound,
    worker: Option<WorkerOps>,
) {
    let route = |op: proto::HeadOp| match op.op {
        Some(head_op::Op::Ready(v)) => client.on_ready(v),
        Some(head_op::Op::Reply(r)) => client.on_reply(r),
        Some(head_op::Op::GeneratorItem(i)) => client.on_stream_item(i),
        Some(head_op::Op::Log(l)) => print_log(&l),
        Some(head_op::Op::Refused(why)) => tracing::error!("the head refused: {why}"),
        // leases: for drivers, both transports (gRPC and in-process).
        Some(head_op::Op::LeaseGrant(g)) => client.on_lease_grant(g),
        Some(head_op::Op::LeaseEnd(e)) => client.on_lease_end(e),
        Some(head_op::Op::LeaseFull(f)) => client.on_lease_full(f),
        Some(other) => {
            if let Some(worker) = &worker {
                worker(other);
            }
        }
        None => {}
    };
    leftover.into_iter().for_each(&route);
    let why = loop {
        match inbound.next().await {
            Some(Ok(ops)) => ops.into_iter().for_each(&route),
            Some(Err(e)) => break e.to_string(),
            None => break "the head closed the session".to_string(),
        }
    };
    client.on_disconnect(&why);
}

/// Prints a worker's output in the driver, unless `FLEET_LOG_TO_DRIVER=0`.
fn print_log(l: &proto::LogLines) {
    use std::io::Write;
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ENABLED.get_or_init(|| std::env::var("FLEET_LOG_TO_DRIVER").map_or(true, |v| v != "0")) {
        return;
    }
    if l.stderr {
        let mut e = std::io::stderr().lock();
        for line in &l.lines {
            let _ = writeln!(e, "{line}");
        }
    } else {
        let mut o = std::io::stdout().lock();
        for line in &l.lines {
            let _ = writeln!(o, "{line}");
        }
        let _ = o.flush();
    }
}
