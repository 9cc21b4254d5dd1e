//! The head's gRPC service.

use std::net::TcpListener;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::Head;
use crate::client::transport::{batches, MAX_MESSAGE};
use crate::proto::{self, head_server::HeadServer};

struct Service(Arc<Head>);

type FrameStream = Pin<Box<dyn Stream<Item = Result<proto::HeadFrame, Status>> + Send>>;

#[tonic::async_trait]
impl proto::head_server::Head for Service {
    type SessionStream = FrameStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let inbound = request
            .into_inner()
            .map(|frame| frame.map(|f| f.ops).map_err(|s| s.message().to_string()));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.0.clone().run_session(Box::pin(inbound), tx));
        let outbound = batches(rx).map(|ops| Ok(proto::HeadFrame { ops }));
        Ok(Response::new(Box::pin(outbound)))
    }
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
    let service = HeadServer::new(Service(head))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = shutdown.await;
        })
        .await
        .map_err(std::io::Error::other)
}
