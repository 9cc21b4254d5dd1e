//! The process's current session with a cluster.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::client::Client;
use crate::cluster::Cluster;
use crate::error::{Error, Result};

static CLIENT: RwLock<Option<Arc<Client>>> = RwLock::new(None);
/// A cluster started implicitly by the first remote call (as Ray does).
static IMPLICIT: Mutex<Option<Cluster>> = Mutex::new(None);

pub(crate) fn set_client(client: Option<Arc<Client>>) {
    *CLIENT.write() = client;
}

/// Clears the current client if it is `client`.
pub(crate) fn clear_client(client: &Arc<Client>) {
    let mut c = CLIENT.write();
    if c.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
        *c = None;
    }
}

pub(crate) fn client() -> Result<Arc<Client>> {
    CLIENT.read().clone().ok_or(Error::NotInitialized)
}

/// The current client, starting a local cluster if there is none (or
/// joining the one `FLEET_ADDRESS` names). A failure is an
/// [`Error::Connection`] naming what was tried, never a panic: library calls
/// that return a ref hand it to the ref (see [`client_or_detached`]).
pub(crate) fn client_or_init() -> Result<Arc<Client>> {
    if let Ok(c) = client() {
        return Ok(c);
    }
    let mut implicit = IMPLICIT.lock();
    if let Ok(c) = client() {
        return Ok(c);
    }
    match crate::cluster::init() {
        Ok(cluster) => {
            *implicit = Some(cluster);
            client()
        }
        Err(e) => Err(no_cluster(e)),
    }
}

/// The current client, or else a detached one whose refs all fail with
/// the reason no cluster could be reached: `f::remote(..)` returns a ref,
/// not a `Result`, so its error arrives at `get`, as in Ray.
pub(crate) fn client_or_detached() -> std::result::Result<Arc<Client>, (Arc<Client>, Error)> {
    client_or_init().map_err(|e| (Client::detached(), e))
}

fn no_cluster(e: Error) -> Error {
    let hint = match std::env::var(crate::cluster::ENV_ADDRESS) {
        Ok(a) if !a.is_empty() => format!(
            "is a head running at {a} (FLEET_ADDRESS)? Start one with `fleet start --head`, \
             or unset FLEET_ADDRESS to start a local cluster"
        ),
        _ => "call fleet::init_with(..) to see the error when the cluster starts".to_string(),
    };
    match e {
        Error::Connection(m) => {
            Error::Connection(format!("no cluster could be reached: {m}; {hint}"))
        }
        other => Error::Connection(format!("no cluster could be reached: {other}; {hint}")),
    }
}
