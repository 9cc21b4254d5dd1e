//! The worker's `Worker.Direct` service: a driver holding a lease on this
//! worker sends it plain tasks and gets their results on one stream,
//! without the head on the way (`../coord/leases.md` in the design notes,
//! README "Architecture").
//!
//! It listens on the node's own address (`FLEET_WORKER_DIRECT_HOST`, set
//! by the node's supervisor), so a driver on another machine reaches it,
//! with the cluster's TLS settings (`net.rs`). The first frame of a stream
//! carries the cluster token; a wrong one is refused and the worker keeps
//! serving. Each stream's tasks enter the executor's one queue
//! (`direct/run.rs`), their results are batched per stream and their
//! summaries per worker (`direct/held.rs`).

mod held;
mod route;
mod run;

use std::net::TcpListener;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

pub(crate) use held::{set_done_every_ms, Held};
pub(crate) use route::Route;
pub(crate) use run::give_back;

use super::executor::Executor;
use crate::client::transport::MAX_MESSAGE;
use crate::error::{Error, Result};
use crate::proto::{self, direct_op::Op, worker_server::WorkerServer};
use route::Out;

/// How long a new stream may take to send its first frame (the token).
const FIRST_FRAME: Duration = Duration::from_secs(30);
/// How long a force-cancelled worker waits, after its last frame left,
/// before it exits: time for the frame to reach the socket.
const EXIT_GRACE: Duration = Duration::from_millis(100);
/// The longest a worker waits for the head's answer after it flushed its
/// summaries for a leaving driver (the driver bounds its wait too).
const FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// The longest a result with refs inside waits for the head to have what
/// this worker sent before it (see `direct/run.rs`).
const ORDER_LIMIT: Duration = Duration::from_secs(5);
/// The longest a force-cancelled worker waits for its answer to be taken
/// (a driver that reads nothing does not keep the task running).
const EXIT_LIMIT: Duration = Duration::from_secs(2);

/// Binds the port drivers reach this worker on. Returns the listener and
/// the address to report in `Hello.direct_address`.
pub(crate) fn bind() -> Result<(TcpListener, String)> {
    let host = std::env::var(super::hook::ENV_DIRECT_HOST)
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        Error::Startup(format!(
            "{}={host:?} is not an IP address (the node's --node-ip)",
            super::hook::ENV_DIRECT_HOST
        ))
    })?;
    let listener = TcpListener::bind((ip, 0))
        .map_err(|e| Error::Startup(format!("binding {host}:0 for Worker.Direct: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Startup(e.to_string()))?
        .port();
    // A node bound to every address has no one address to give: only
    // drivers on this machine reach the worker then (start the node with
    // --node-ip for others).
    let shown = if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Ok((listener, format!("{shown}:{port}")))
}

/// Serves `Worker.Direct` on `listener` for as long as the process lives.
pub(crate) fn serve(
    rt: &tokio::runtime::Handle,
    listener: TcpListener,
    token: String,
    executor: Arc<Executor>,
) -> Result<()> {
    let server = crate::net::server()?
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(crate::net::heartbeat_timeout()));
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Startup(e.to_string()))?;
    let _guard = rt.enter();
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| Error::Startup(e.to_string()))?;
    let service = WorkerServer::new(Direct {
        token: Arc::from(token),
        executor,
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    rt.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        });
        let mut server = server;
        if let Err(e) = server
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!("Worker.Direct stopped serving: {e}");
        }
    });
    Ok(())
}

struct Direct {
    token: Arc<str>,
    executor: Arc<Executor>,
}

type FrameStream =
    Pin<Box<dyn Stream<Item = std::result::Result<proto::DirectFrame, Status>> + Send>>;

#[tonic::async_trait]
impl proto::worker_server::Worker for Direct {
    type DirectStream = FrameStream;

    async fn direct(
        &self,
        request: Request<Streaming<proto::DirectFrame>>,
    ) -> std::result::Result<Response<FrameStream>, Status> {
        let mut inbound = request.into_inner();
        let first =
            match tokio::time::timeout(FIRST_FRAME, inbound.message()).await {
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                    "no first frame within {FIRST_FRAME:?}: a Worker.Direct stream opens with a \
                     frame carrying the cluster token"
                )))
                }
                Ok(Err(status)) => return Err(status),
                Ok(Ok(None)) => return Err(Status::invalid_argument(
                    "the stream ended before its first frame, which must carry the cluster token",
                )),
                Ok(Ok(Some(frame))) => frame,
            };
        if first.token != *self.token {
            tracing::warn!("refused a Worker.Direct stream with a wrong token");
            return Err(Status::unauthenticated(if first.token.is_empty() {
                "no cluster token in the first frame of the Worker.Direct stream: set \
                 DirectFrame.token to the cluster's token (FLEET_TOKEN, the file `fleet start \
                 --head` wrote)"
            } else {
                "wrong cluster token in the first frame of the Worker.Direct stream: use the \
                 token of the cluster this worker belongs to (FLEET_TOKEN, the file `fleet \
                 start --head` wrote)"
            }));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let route = Arc::new(Route::new(tx));
        let executor = self.executor.clone();
        apply(&executor, &route, first.ops);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(frame)) => apply(&executor, &route, frame.ops),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!("a Worker.Direct stream broke: {}", status.message());
                        break;
                    }
                }
            }
            executor.drop_route(&route);
            // Its driver may be gone for good, and its job's workers with
            // it: the summaries of its tasks go to the head now.
            executor.direct.flush_done();
        });
        Ok(Response::new(Box::pin(outbound(rx))))
    }
}

/// Applies a frame of a driver's operations.
fn apply(executor: &Arc<Executor>, route: &Arc<Route>, ops: Vec<proto::DirectOp>) {
    for op in ops.into_iter().filter_map(|o| o.op) {
        match op {
            Op::Execute(spec) => executor.push_direct(spec, route),
            Op::Cancel(c) => executor.cancel_direct(&c, route),
            Op::Adopted(id) => route.adopted(&executor.client, id),
            Op::Flush(_) => flush_for(executor, route),
            // Only a worker sends these.
            Op::Result(_) | Op::Returned(_) | Op::Flushed(_) => {}
        }
    }
}

/// The driver is done with this lease (it leaves): the summaries held
/// for the head go now, and the driver hears `flushed` once the head has
/// applied them (a round trip on this worker's session follows them), so
/// it may end its session without leaving its last tasks uncounted.
fn flush_for(executor: &Arc<Executor>, route: &Arc<Route>) {
    let held = executor.direct.clone();
    let client = executor.client.clone();
    let route = route.clone();
    // The round trip blocks a thread: not one of the runtime's.
    tokio::task::spawn_blocking(move || {
        held.flush_done();
        if !client.round_trip(FLUSH_LIMIT) {
            tracing::debug!("no answer from the head after flushing direct task summaries");
        }
        route.send(vec![proto::DirectOp {
            op: Some(Op::Flushed(true)),
        }]);
    });
}

/// The frames a stream sends: whatever is queued when the I/O thread
/// wakes goes in one frame. After a force cancel's answer the stream ends
/// and, shortly after, the process.
fn outbound(
    rx: mpsc::UnboundedReceiver<Out>,
) -> impl Stream<Item = std::result::Result<proto::DirectFrame, Status>> + Send + 'static {
    futures::stream::unfold((rx, false), |(mut rx, ending)| async move {
        if ending {
            return None;
        }
        let mut ops = match rx.recv().await? {
            Out::Ops(ops) => ops,
            Out::ThenExit(task) => {
                exit_soon(task);
                return None;
            }
        };
        let mut ending = false;
        while ops.len() < 8192 {
            match rx.try_recv() {
                Ok(Out::Ops(more)) => ops.extend(more),
                Ok(Out::ThenExit(task)) => {
                    exit_soon(task);
                    ending = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let frame = proto::DirectFrame {
            ops,
            token: String::new(),
        };
        Some((Ok(frame), (rx, ending)))
    })
}

/// Ends this process after [`EXIT_GRACE`] (a force-cancelled task).
fn exit_soon(task: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(EXIT_GRACE).await;
        super::cancel::die_for(task);
    });
}

/// Ends this process after [`EXIT_LIMIT`] whatever happens to the answer
/// of a force cancel.
pub(crate) fn exit_at_the_latest(task: u64) {
    match super::RUNTIME.get() {
        Some(rt) => {
            rt.spawn(async move {
                tokio::time::sleep(EXIT_LIMIT).await;
                super::cancel::die_for(task);
            });
        }
        None => super::cancel::die_for(task),
    }
}
