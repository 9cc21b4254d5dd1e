//! The head's gRPC services: sessions, executables, status, and the `Node`
//! service of the head's own node.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::Head;
use crate::client::transport::{batches, MAX_MESSAGE};
use crate::node::jobs::LogStream;
use crate::node::transfer::{stream_file, ChunkStream, NodeService};
use crate::proto::{self, head_server::HeadServer, node_server::NodeServer};

struct Service(Arc<Head>);

type FrameStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::HeadFrame, Status>> + Send>>;

impl Service {
    fn check(&self, token: &str) -> Result<(), Status> {
        if token == self.0.token() {
            Ok(())
        } else {
            tracing::warn!("refused a request with a wrong token");
            Err(Status::unauthenticated(crate::discovery::wrong_token(
                self.0.token_file.as_deref(),
            )))
        }
    }
}

#[tonic::async_trait]
impl proto::head_server::Head for Service {
    type SessionStream = FrameStream;
    type FetchBinaryStream = ChunkStream;
    type JobLogsStream = LogStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let inbound = request
            .into_inner()
            .map(|frame| frame.map(|f| f.ops).map_err(|s| s.message().to_string()));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.0.clone().run_session(Box::pin(inbound), tx, false));
        let outbound = batches(rx).map(|ops| Ok(proto::HeadFrame { ops }));
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn upload_binary(
        &self,
        request: Request<Streaming<proto::BinaryChunk>>,
    ) -> Result<Response<proto::UploadReply>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty upload"))??;
        self.check(&first.token)?;
        let Some(path) = self.0.binary_path(&first.hash) else {
            return Err(Status::invalid_argument("not a binary hash"));
        };
        if !path.is_file() {
            let partial = path.with_extension(format!("partial{}", rand::random::<u32>()));
            let mut file =
                std::fs::File::create(&partial).map_err(|e| Status::internal(e.to_string()))?;
            use std::io::Write;
            let mut write = |data: &[u8]| {
                file.write_all(data)
                    .map_err(|e| Status::resource_exhausted(format!("storing the executable: {e}")))
            };
            write(&first.data)?;
            while let Some(chunk) = chunks.next().await {
                write(&chunk?.data)?;
            }
            drop(file);
            std::fs::rename(&partial, &path).map_err(|e| Status::internal(e.to_string()))?;
            make_executable(&path);
        }
        Ok(Response::new(proto::UploadReply { hash: first.hash }))
    }

    async fn fetch_binary(
        &self,
        request: Request<proto::FetchBinaryRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let r = request.into_inner();
        self.check(&r.token)?;
        let Some(path) = self.0.binary_path(&r.hash) else {
            return Err(Status::invalid_argument("not a binary hash"));
        };
        Ok(Response::new(stream_file(path)))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListReply>, Status> {
        let req = request.into_inner();
        self.check(&req.token)?;
        let (json, total) = self.0.list(&req).map_err(Status::invalid_argument)?;
        Ok(Response::new(proto::ListReply {
            json,
            total: total as u64,
        }))
    }

    async fn timeline(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::TimelineReply>, Status> {
        self.check(&request.into_inner().token)?;
        Ok(Response::new(proto::TimelineReply {
            json: self.0.timeline(),
        }))
    }

    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::JobInfo>, Status> {
        let r = request.into_inner();
        self.check(&r.token)?;
        self.0.jobs.submit(r).map(Response::new)
    }

    async fn list_jobs(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::JobList>, Status> {
        self.check(&request.into_inner().token)?;
        Ok(Response::new(proto::JobList {
            jobs: self.0.jobs.list(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::JobRequest>,
    ) -> Result<Response<proto::JobInfo>, Status> {
        let r = request.into_inner();
        self.check(&r.token)?;
        self.0.jobs.get(&r.id).map(Response::new)
    }

    async fn stop_job(
        &self,
        request: Request<proto::JobRequest>,
    ) -> Result<Response<proto::JobInfo>, Status> {
        let r = request.into_inner();
        self.check(&r.token)?;
        self.0.jobs.stop(&r.id).map(Response::new)
    }

    async fn job_logs(
        &self,
        request: Request<proto::JobLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let r = request.into_inner();
        self.check(&r.token)?;
        self.0.jobs.logs(r).await.map(Response::new)
    }

    type WorkerLogsStream = LogStream;

    async fn worker_logs(
        &self,
        request: Request<proto::WorkerLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let r = request.into_inner();
        self.check(&r.token)?;
        let (found, stream) = self.0.worker_logs(r).await?;
        let mut reply = Response::new(stream);
        let meta = reply.metadata_mut();
        meta.insert("fleet-worker-pid", found.pid.into());
        if let Ok(node) = found.node.parse() {
            meta.insert("fleet-worker-node", node);
        }
        Ok(reply)
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        self.check(&request.into_inner().token)?;
        Ok(Response::new(self.0.status()))
    }
}

pub(crate) fn make_executable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
}

/// How long a silent connection (a node or worker whose machine vanished)
/// is kept before its session ends.
pub(crate) fn keepalive() -> Duration {
    std::env::var("FLEET_HEARTBEAT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(10))
}

/// Serves the head on `listener` until `shutdown` fires.
pub(crate) async fn serve(
    head: Arc<Head>,
    listener: TcpListener,
    shutdown: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    });
    let node = NodeService {
        store: head.store().clone(),
        token: std::sync::Arc::new(parking_lot::RwLock::new(head.token().to_string())),
    };
    let sweeper = tokio::spawn(super::rejoin::sweep_dead_nodes(Arc::downgrade(&head)));
    let service = HeadServer::new(Service(head))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let served = crate::net::server()
        .map_err(std::io::Error::other)?
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(keepalive()))
        .add_service(service)
        .add_service(NodeServer::new(node))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = shutdown.await;
        })
        .await
        .map_err(std::io::Error::other);
    sweeper.abort();
    served
}
