//! Values of a driver that shares no node's store: a driver on a laptop, a
//! CI runner or a login node. Such a driver cannot map store files, so
//! large values travel as chunked gRPC streams: `put` streams into the
//! store of the head's node (`Node.PutObject`) while the value is being
//! encoded, and `get` pulls from whichever node holds the object
//! (`Node.FetchObject`) into one buffer of the value's size. No message
//! holds a whole value and no value is held twice.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use futures::StreamExt;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::codec::INLINE_MAX;
use crate::error::{Error, Result};
use crate::node::object_store::{Bytes, Written};
use crate::node::transfer::safe_name;
use crate::proto::{self, node_client::NodeClient, StoreLocation};

/// Bytes per streamed chunk (well under tonic's 4 MiB message limit).
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the encoder and the upload.
const IN_FLIGHT: usize = 4;

/// Where an off-node driver's large values go and come from.
pub(crate) struct Remote {
    /// The node whose store receives this driver's puts (the head's).
    target: String,
    token: String,
    /// Open connections to nodes' `Node` services, by address, shared
    /// with the transfers in flight.
    channels: Arc<DashMap<String, Channel>>,
}

/// One thread for every transfer of this process, so connections are kept
/// between transfers and a transfer can start from any thread, async or not.
fn io_runtime() -> Result<&'static Runtime> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fleet-transfer")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Connection(format!("starting the transfer thread: {e}")))
}

/// Runs `f` on the transfer runtime and waits for it, from any context.
fn run<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let handle = io_runtime()?.spawn(f);
    futures::executor::block_on(handle)
        .unwrap_or_else(|e| Err(Error::Connection(format!("a transfer failed: {e}"))))
}

impl Remote {
    pub(crate) fn new(target: &str, token: &str) -> Self {
        Remote {
            target: target.to_string(),
            token: token.to_string(),
            channels: Arc::new(DashMap::new()),
        }
    }

    /// A client of `address`'s `Node` service, reusing its connection.
    async fn client(
        channels: &DashMap<String, Channel>,
        address: &str,
    ) -> Result<NodeClient<Channel>> {
        let channel = match channels.get(address) {
            Some(c) => c.clone(),
            None => {
                let c = crate::net::channel(address).await?;
                channels.insert(address.to_string(), c.clone());
                c
            }
        };
        Ok(NodeClient::new(channel))
    }

    /// A writer that keeps a small value in memory and streams a large one
    /// to the target node's store as it is written.
    pub(crate) fn writer(&self, id: u64) -> RemoteWriter<'_> {
        RemoteWriter {
            remote: self,
            id,
            buffer: Vec::new(),
            upload: None,
            written: 0,
            broken: false,
        }
    }

    /// Streams an encoded value (larger than inline) to the target node.
    pub(crate) fn write(&self, id: u64, bytes: Vec<u8>) -> Result<StoreLocation> {
        let size = bytes.len() as u64;
        let all = bytes::Bytes::from(bytes);
        let upload = self.start(id);
        let mut at = 0;
        while at < all.len() {
            let end = (at + CHUNK).min(all.len());
            if !upload.send(all.slice(at..end), end == all.len()) {
                break;
            }
            at = end;
        }
        upload.finish(self, size)
    }

    fn start(&self, id: u64) -> Upload {
        let (tx, rx) = mpsc::channel::<(bytes::Bytes, bool)>(IN_FLIGHT);
        let (target, token) = (self.target.clone(), self.token.clone());
        let channels = self.channels.clone();
        let task = io_runtime().map(|rt| {
            rt.spawn(async move {
                let mut first = true;
                let chunks =
                    tokio_stream::wrappers::ReceiverStream::new(rx).map(move |(data, last)| {
                        let chunk = proto::ObjectChunk {
                            object_id: if first { id } else { 0 },
                            token: if first { token.clone() } else { String::new() },
                            data,
                            last,
                        };
                        first = false;
                        chunk
                    });
                let mut client = Self::client(&channels, &target).await?;
                let reply = client.put_object(chunks).await;
                if reply.is_err() {
                    // The connection may be what failed: reconnect next time.
                    channels.remove(&target);
                }
                reply
                    .map(|r| r.into_inner())
                    .map_err(|s| Error::Store(s.message().to_string()))
            })
        });
        match task {
            Ok(task) => Upload {
                tx: Some(tx),
                task: Some(task),
                failed: None,
            },
            Err(e) => Upload {
                tx: None,
                task: None,
                failed: Some(e),
            },
        }
    }

    /// The bytes of an object held by another machine's node, pulled into
    /// one buffer of the value's size.
    pub(crate) fn read(&self, loc: &StoreLocation) -> Result<Bytes> {
        let name = Path::new(&loc.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !safe_name(&name) {
            return Err(Error::Store(format!("bad object location {}", loc.path)));
        }
        let (address, token, size) = (loc.node.clone(), self.token.clone(), loc.size);
        let channels = self.channels.clone();
        let pulled = run(async move {
            let mut client = Self::client(&channels, &address).await?;
            let reply = client
                .fetch_object(proto::FetchObjectRequest { name, token })
                .await;
            let mut chunks = match reply {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    channels.remove(&address);
                    return Err(Error::ObjectLost {
                        id: address.clone(),
                        message: s.message().to_string(),
                    });
                }
            };
            let mut out = Vec::with_capacity(size as usize);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|s| {
                    Error::Connection(format!("pulling from node {address}: {}", s.message()))
                })?;
                if out.len() + chunk.data.len() > size as usize {
                    return Err(Error::Store(format!(
                        "node {address} sent more than the {size} bytes of the object"
                    )));
                }
                out.extend_from_slice(&chunk.data);
            }
            Ok(out)
        })?;
        if pulled.len() as u64 != loc.size {
            return Err(Error::Store(format!(
                "pulled {} bytes from node {}, expected {}",
                pulled.len(),
                loc.node,
                loc.size
            )));
        }
        Ok(Bytes::Pulled(bytes::Bytes::from(pulled)))
    }
}

/// An upload in progress: chunks go to `tx`, the reply comes from `task`.
struct Upload {
    tx: Option<mpsc::Sender<(bytes::Bytes, bool)>>,
    task: Option<tokio::task::JoinHandle<Result<StoreLocation>>>,
    /// Why the transfer thread could not take the upload.
    failed: Option<Error>,
}

impl Upload {
    /// Queues a chunk (`last`: the value is complete); false once the
    /// upload has ended (its error is returned by `finish`).
    fn send(&self, chunk: bytes::Bytes, last: bool) -> bool {
        match &self.tx {
            Some(tx) => futures::executor::block_on(tx.send((chunk, last))).is_ok(),
            None => false,
        }
    }

    /// Waits for the node's answer. Without a chunk marked `last` the node
    /// keeps nothing.
    fn finish(mut self, remote: &Remote, size: u64) -> Result<StoreLocation> {
        self.tx = None;
        if let Some(e) = self.failed.take() {
            return Err(placement_error(&remote.target, size, e));
        }
        let Some(task) = self.task.take() else {
            return Err(Error::Connection("the upload was not started".into()));
        };
        futures::executor::block_on(task)
            .unwrap_or_else(|e| Err(Error::Connection(format!("the upload failed: {e}"))))
            .map_err(|e| placement_error(&remote.target, size, e))
    }
}

/// Why a value could not be placed, and what to do about it.
fn placement_error(target: &str, size: u64, e: Error) -> Error {
    let why = match &e {
        Error::Connection(m) => m.clone(),
        Error::Store(m) => m.clone(),
        other => other.to_string(),
    };
    Error::Store(format!(
        "could not store a value of {size} bytes on node {target}: {why}. This driver shares \
         no node's store (no node agent runs on its machine), so values over {INLINE_MAX} \
         bytes are streamed to the head's node: that node must be reachable from here at \
         {target} and its store must have room (fleet start --object-store-bytes); or run a \
         node agent on this machine (fleet start --address HEAD) so the driver uses its store"
    ))
}

/// See [`Remote::writer`].
pub(crate) struct RemoteWriter<'a> {
    remote: &'a Remote,
    id: u64,
    /// Bytes not yet sent (all of an inline value).
    buffer: Vec<u8>,
    upload: Option<Upload>,
    written: u64,
    /// The upload ended before the value was complete.
    broken: bool,
}

impl RemoteWriter<'_> {
    /// Sends the buffered bytes as one chunk.
    fn ship(&mut self, last: bool) -> io::Result<()> {
        let chunk = bytes::Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(if last { 0 } else { CHUNK }),
        ));
        match &mut self.upload {
            Some(u) if u.send(chunk, last) => Ok(()),
            _ => {
                self.broken = true;
                Err(io::Error::other("the upload ended early"))
            }
        }
    }

    /// Turns an encoding error into the store's error. The upload ends
    /// without its last chunk, so the node keeps nothing; if the upload
    /// itself failed, its error says why.
    pub(crate) fn error(&mut self, e: io::Error) -> Error {
        if let Some(u) = self.upload.take() {
            if self.broken {
                if let Err(real) = u.finish(self.remote, self.written) {
                    return real;
                }
            }
        }
        Error::Store(format!("encoding a value of {} bytes: {e}", self.written))
    }

    pub(crate) fn finish(mut self) -> Result<Written> {
        if self.upload.is_none() {
            return Ok(Written::Inline(std::mem::take(&mut self.buffer)));
        }
        if let Err(e) = self.ship(true) {
            return Err(self.error(e));
        }
        let upload = self.upload.take().expect("an upload");
        upload
            .finish(self.remote, self.written)
            .map(Written::Stored)
    }
}

impl Write for RemoteWriter<'_> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        self.written += n as u64;
        if self.upload.is_none() {
            if self.buffer.len() + buf.len() <= INLINE_MAX {
                self.buffer.extend_from_slice(buf);
                return Ok(n);
            }
            self.upload = Some(self.remote.start(self.id));
        }
        while !buf.is_empty() {
            let room = CHUNK.saturating_sub(self.buffer.len()).max(1);
            let take = room.min(buf.len());
            self.buffer.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.buffer.len() >= CHUNK {
                self.ship(false)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
