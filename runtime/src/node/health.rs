//! `/healthz` of a node agent (`fleet start --address … --health-port P`):
//! 200 while the agent is joined to its head and serves its store, 503
//! while it waits for a head, after it lost it, or while it shuts down.
//! Kubernetes probes, load balancers and scripts read it; the node's
//! numbers themselves are on the head's `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// Where the agent stands with its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Not (yet, or no longer) joined to a head.
    Waiting = 0,
    /// Joined: the head's session is open.
    Joined = 1,
    /// Leaving for good.
    Stopping = 2,
}

/// The agent's phase, shared with the HTTP listener.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    phase: Arc<AtomicU8>,
    head: Arc<str>,
}

impl Health {
    pub(crate) fn new(head: &str) -> Health {
        Health {
            phase: Arc::new(AtomicU8::new(Phase::Waiting as u8)),
            head: head.into(),
        }
    }

    pub(crate) fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn answer(&self) -> (StatusCode, String) {
        match self.phase.load(Ordering::Acquire) {
            1 => (
                StatusCode::OK,
                format!("ok: joined the head at {}\n", self.head),
            ),
            2 => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not joined: waiting for the head at {}\n", self.head),
            ),
        }
    }
}

async fn healthz(State(health): State<Health>) -> (StatusCode, String) {
    health.answer()
}

/// Serves `/healthz` on `addr` in the background; returns the address it
/// listens on.
pub(crate) async fn serve(health: Health, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the health endpoint stopped: {e}");
        }
    });
    Ok(bound)
}
