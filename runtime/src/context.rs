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

/// The current client, starting a local cluster if there is none.
pub(crate) fn client_or_init() -> Arc<Client> {
    if let Ok(c) = client() {
        return c;
    }
    let mut implicit = IMPLICIT.lock();
    if let Ok(c) = client() {
        return c;
    }
    match crate::cluster::init() {
        Ok(cluster) => {
            *implicit = Some(cluster);
            client().expect("a cluster was just started")
        }
        Err(e) => panic!("fleet: no cluster and none could be started: {e}"),
    }
}
