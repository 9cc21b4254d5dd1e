//! The node agent's parts: the shared-memory object store and the
//! supervisor that starts and watches worker processes.

pub(crate) mod agent;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod memory_monitor;
pub(crate) mod object_store;
pub(crate) mod supervisor;
pub(crate) mod transfer;
pub(crate) mod worker_logs;
