//! The one error type of the public API.

use std::time::Duration;

use crate::proto;

/// What can go wrong between a `remote()` call and the `get` of its result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The user's function returned `Err` or panicked.
    #[error("remote function `{function}` failed on node {node} (pid {pid}): {message}")]
    Task {
        /// Stable name of the remote function.
        function: String,
        /// The error's `Display` text or the panic message.
        message: String,
        /// Process id of the worker that ran it.
        pid: u32,
        /// Node the worker ran on.
        node: String,
    },
    /// The worker process running the task died and no retry was left.
    #[error("the worker running `{function}` died: {message}")]
    WorkerDied {
        /// Stable name of the remote function.
        function: String,
        /// What is known about the death.
        message: String,
    },
    /// The actor is gone: its process died past `max_restarts`, its
    /// constructor failed, or it was killed.
    #[error("actor {actor} died: {message}")]
    ActorDied {
        /// The actor's type and id.
        actor: String,
        /// Why.
        message: String,
    },
    /// The task was cancelled ([`crate::cancel`], [`crate::force_cancel`]),
    /// or it depends on the result of one that was.
    #[error("task `{function}` was cancelled: {message}")]
    Cancelled {
        /// Stable name of the remote function.
        function: String,
        /// Which task was cancelled and how.
        message: String,
    },
    /// The memory monitor killed the worker running the task (the node was
    /// above `FLEET_MEMORY_THRESHOLD`) and no retry was left.
    #[error("task `{function}` ran out of memory on node {node}: {message}")]
    OutOfMemory {
        /// Stable name of the remote function.
        function: String,
        /// The node whose memory ran short.
        node: String,
        /// The worker's RSS, the node's usage and threshold, and what to do.
        message: String,
    },
    /// A `get` or `wait` with a timeout ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The object is gone (freed, or lost with its node) and cannot be rebuilt.
    #[error("object {id} is lost: {message}")]
    ObjectLost {
        /// The object's id.
        id: String,
        /// Why.
        message: String,
    },
    /// No function of that name is registered in this binary.
    #[error("unknown remote function `{0}` (is the worker the same build as the driver?)")]
    UnknownFunction(String),
    /// The connection to the head failed or was closed.
    #[error("connection to the head: {0}")]
    Connection(String),
    /// The peer speaks another protocol version or is another build.
    #[error("protocol or build mismatch: {0}")]
    Mismatch(String),
    /// A value could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The object store could not write or read a value.
    #[error("object store: {0}")]
    Store(String),
    /// No cluster: call `fleet::init()` first.
    #[error("fleet is not initialized: call fleet::init() first")]
    NotInitialized,
    /// The cluster could not be started.
    #[error("starting the cluster: {0}")]
    Startup(String),
    /// No cluster address or token was given, and none was found on this
    /// machine; the message names the variable, flag and file that fix it.
    #[error("{0}")]
    NoCluster(String),
    /// A command was given something it cannot use; the message says what
    /// to give instead.
    #[error("{0}")]
    Usage(String),
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn from_wire(e: &proto::TaskError) -> Self {
        use proto::ErrorKind as K;
        match e.kind() {
            K::Task => Error::Task {
                function: e.function.clone(),
                message: e.message.clone(),
                pid: e.pid,
                node: e.node.clone(),
            },
            K::WorkerDied => Error::WorkerDied {
                function: e.function.clone(),
                message: e.message.clone(),
            },
            K::ObjectLost => Error::ObjectLost {
                id: e.function.clone(),
                message: e.message.clone(),
            },
            K::UnknownFunction => Error::UnknownFunction(e.function.clone()),
            K::ActorDied => Error::ActorDied {
                actor: e.function.clone(),
                message: e.message.clone(),
            },
            K::Codec => Error::Codec(e.message.clone()),
            K::Cancelled => Error::Cancelled {
                function: e.function.clone(),
                message: e.message.clone(),
            },
            K::OutOfMemory => Error::OutOfMemory {
                function: e.function.clone(),
                node: e.node.clone(),
                message: e.message.clone(),
            },
            K::Unspecified => Error::Connection(e.message.clone()),
        }
    }

    pub(crate) fn to_wire(&self) -> proto::TaskError {
        use proto::ErrorKind as K;
        let mut w = proto::TaskError::default();
        match self {
            Error::Task {
                function,
                message,
                pid,
                node,
            } => {
                w.set_kind(K::Task);
                w.function = function.clone();
                w.message = message.clone();
                w.pid = *pid;
                w.node = node.clone();
            }
            Error::WorkerDied { function, message } => {
                w.set_kind(K::WorkerDied);
                w.function = function.clone();
                w.message = message.clone();
            }
            Error::ObjectLost { id, message } => {
                w.set_kind(K::ObjectLost);
                w.function = id.clone();
                w.message = message.clone();
            }
            Error::ActorDied { actor, message } => {
                w.set_kind(K::ActorDied);
                w.function = actor.clone();
                w.message = message.clone();
            }
            Error::UnknownFunction(f) => {
                w.set_kind(K::UnknownFunction);
                w.function = f.clone();
            }
            Error::Codec(m) => {
                w.set_kind(K::Codec);
                w.message = m.clone();
            }
            Error::Cancelled { function, message } => {
                w.set_kind(K::Cancelled);
                w.function = function.clone();
                w.message = message.clone();
            }
            Error::OutOfMemory {
                function,
                node,
                message,
            } => {
                w.set_kind(K::OutOfMemory);
                w.function = function.clone();
                w.node = node.clone();
                w.message = message.clone();
            }
            other => {
                w.set_kind(K::Unspecified);
                w.message = other.to_string();
            }
        }
        w
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::Codec(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Store(e.to_string())
    }
}
