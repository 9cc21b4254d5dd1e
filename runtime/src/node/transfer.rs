//! Moving large objects and executables between machines: the `Node` gRPC
//! service streams store files in chunks, and readers on other nodes pull
//! them once per node into their own store.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::object_store::{Bytes, ObjectStore};
use crate::error::{Error, Result};
use crate::proto::{self, node_client::NodeClient, StoreLocation};

const CHUNK: usize = 1 << 20;

/// A stream of chunks, as both services send them.
pub(crate) type ChunkStream =
    Pin<Box<dyn Stream<Item = Result<proto::BinaryChunk, Status>> + Send>>;

/// A file name a peer may ask for: hex ids and hashes only, so no request
/// can reach outside the store folders.
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Streams a file in chunks from a blocking reader thread.
pub(crate) fn stream_file(path: PathBuf) -> ChunkStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ =
                    tx.blocking_send(Err(Status::not_found(format!("{}: {e}", path.display()))));
                return;
            }
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let chunk = proto::BinaryChunk {
                        data: bytes::Bytes::copy_from_slice(&buf[..n]),
                        ..Default::default()
                    };
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The `Node` service of one node's store.
pub(crate) struct NodeService {
    pub(crate) store: ObjectStore,
    /// The cluster token; a node agent updates it when it rejoins a head
    /// restarted with a new one.
    pub(crate) token: SharedToken,
}

/// A token that can change while a service runs.
pub(crate) type SharedToken = std::sync::Arc<parking_lot::RwLock<String>>;

impl NodeService {
    /// Writes an uploaded value into this node's store on a blocking
    /// thread, chunk by chunk as they arrive. Nothing is kept unless the
    /// chunk marked `last` arrives.
    async fn store_upload(
        &self,
        first: proto::ObjectChunk,
        mut chunks: tonic::Streaming<proto::ObjectChunk>,
    ) -> Result<StoreLocation> {
        let id = first.object_id;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<bytes::Bytes>>(4);
        let store = self.store.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = store.writer(id);
            let mut complete = false;
            while let Some(chunk) = rx.blocking_recv() {
                match chunk {
                    Some(data) => {
                        if let Err(e) = w.write_all(&data) {
                            return Err(w.error(e));
                        }
                    }
                    None => {
                        complete = true;
                        break;
                    }
                }
            }
            if !complete {
                return Err(w.error(std::io::Error::other(
                    "the upload ended before its last chunk",
                )));
            }
            match w.finish()? {
                super::object_store::Written::Stored(loc) => Ok(loc),
                super::object_store::Written::Inline(_) => Err(Error::Store(
                    "a value this small travels inline; nothing was stored".into(),
                )),
            }
        });
        let mut next = Some(first);
        let mut failed = None;
        while let Some(chunk) = next.take() {
            let last = chunk.last;
            if tx.send(Some(chunk.data)).await.is_err() {
                break; // the writer failed; its error says why
            }
            if last {
                let _ = tx.send(None).await;
                break;
            }
            match chunks.next().await {
                Some(Ok(c)) => next = Some(c),
                Some(Err(s)) => failed = Some(s.message().to_string()),
                None => {}
            }
        }
        drop(tx);
        let stored = writer
            .await
            .unwrap_or_else(|e| Err(Error::Store(format!("the store writer failed: {e}"))));
        match (stored, failed) {
            (Err(e), Some(why)) => Err(Error::Connection(format!("{why} ({e})"))),
            (stored, _) => stored,
        }
    }
}

#[tonic::async_trait]
impl proto::node_server::Node for NodeService {
    type FetchObjectStream = ChunkStream;

    async fn put_object(
        &self,
        request: Request<tonic::Streaming<proto::ObjectChunk>>,
    ) -> Result<Response<StoreLocation>, Status> {
        let mut chunks = request.into_inner();
        let first = match chunks.next().await {
            Some(Ok(c)) => c,
            Some(Err(s)) => return Err(s),
            None => return Err(Status::invalid_argument("an empty upload")),
        };
        let token = self.token.read().clone();
        if token.is_empty() || first.token != token {
            tracing::warn!("refused an object upload with a wrong token");
            return Err(Status::unauthenticated("wrong or missing cluster token"));
        }
        if first.object_id == 0 {
            return Err(Status::invalid_argument("an upload must name its object"));
        }
        if self
            .store
            .dir()
            .join(format!("{:016x}", first.object_id))
            .exists()
        {
            return Err(Status::already_exists(format!(
                "object {:016x} is already stored on this node",
                first.object_id
            )));
        }
        match self.store_upload(first, chunks).await {
            Ok(loc) => Ok(Response::new(loc)),
            Err(Error::Store(why)) => Err(Status::resource_exhausted(why)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn fetch_object(
        &self,
        request: Request<proto::FetchObjectRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let r = request.into_inner();
        let token = self.token.read().clone();
        if token.is_empty() || r.token != token {
            tracing::warn!("refused an object fetch with a wrong token");
            return Err(Status::unauthenticated("wrong or missing cluster token"));
        }
        if !safe_name(&r.name) {
            return Err(Status::invalid_argument("not an object name"));
        }
        let primary = self.store.dir().join(&r.name);
        let path = if primary.is_file() {
            primary
        } else {
            self.store.spill_dir().join(&r.name)
        };
        Ok(Response::new(stream_file(path)))
    }
}

/// Runs `f` on a fresh single-thread runtime on its own thread, so a pull
/// can happen from any context (a worker thread, a driver, async code).
pub(crate) fn on_io_thread<T: Send>(
    f: impl std::future::Future<Output = Result<T>> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Connection(e.to_string()))?;
            rt.block_on(f)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Connection("the transfer thread panicked".into())))
    })
}

/// Writes a chunk stream to `dest` (through a partial file, renamed when
/// complete).
pub(crate) async fn save(
    mut chunks: tonic::Streaming<proto::BinaryChunk>,
    dest: &Path,
) -> Result<u64> {
    let partial = dest.with_extension(format!("partial{}", std::process::id()));
    let mut file = fs::File::create(&partial)?;
    let mut total = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|s| Error::Connection(s.message().to_string()));
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(e);
            }
        };
        total += chunk.data.len() as u64;
        if let Err(e) = file.write_all(&chunk.data) {
            let _ = fs::remove_file(&partial);
            return Err(Error::Store(format!("writing {}: {e}", partial.display())));
        }
    }
    drop(file);
    fs::rename(&partial, dest)?;
    Ok(total)
}

/// Reads a stored object from wherever it lives: mapped from this node's
/// store, or pulled once from its node into this node's store first.
pub(crate) fn read(store: &ObjectStore, loc: &StoreLocation, token: &str) -> Result<Bytes> {
    if loc.node == store.node() {
        return store.read(loc);
    }
    let name = Path::new(&loc.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !safe_name(&name) {
        return Err(Error::Store(format!("bad object location {}", loc.path)));
    }
    let local = store.dir().join(&name);
    let here = StoreLocation {
        path: local.to_string_lossy().into_owned(),
        size: loc.size,
        node: store.node().to_string(),
    };
    // One puller per node: the others wait on the lock, then map its copy.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(local.with_extension("lock"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if !local.is_file() {
        let (address, token) = (loc.node.clone(), token.to_string());
        let dest = local.clone();
        let size = on_io_thread(async move {
            let mut client = NodeClient::new(crate::net::channel(&address).await?);
            let chunks = client
                .fetch_object(proto::FetchObjectRequest { name, token })
                .await
                .map_err(|s| Error::ObjectLost {
                    id: address.clone(),
                    message: s.message().to_string(),
                })?
                .into_inner();
            save(chunks, &dest).await
        })?;
        if size != loc.size {
            let _ = fs::remove_file(&local);
            return Err(Error::Store(format!(
                "pulled {size} bytes, expected {}",
                loc.size
            )));
        }
    }
    let _ = fs::remove_file(local.with_extension("lock"));
    store.read(&here)
}
