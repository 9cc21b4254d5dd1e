//! Connections between Fleet processes. Plain HTTP/2 by default; with
//! `FLEET_TLS_CERT`, `FLEET_TLS_KEY` and `FLEET_TLS_CA` set (`fleet start
//! --tls-cert/--tls-key/--tls-ca` sets them, and workers inherit them)
//! every connection is TLS with rustls, both ways authenticated: servers
//! and clients present a certificate signed by the cluster's CA. The
//! certificates must name `FLEET_TLS_DOMAIN` (default `fleet`), so they do
//! not depend on the machines' addresses.

use std::sync::OnceLock;
use std::time::Duration;

use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};

use crate::error::{Error, Result};

/// Environment variables of the TLS settings.
pub const ENV_TLS_CERT: &str = "FLEET_TLS_CERT";
/// See [`ENV_TLS_CERT`].
pub const ENV_TLS_KEY: &str = "FLEET_TLS_KEY";
/// See [`ENV_TLS_CERT`].
pub const ENV_TLS_CA: &str = "FLEET_TLS_CA";

/// Large HTTP/2 windows. A session carries many small frames; h2 counts
/// small frames not yet read against a budget that scales with the
/// connection window, and closes the connection (GOAWAY
/// `too_many_data_frames`) when a busy reader lets them pile up. With the
/// default 64 KiB windows that was about 128 frames.
const CONNECTION_WINDOW: u32 = 64 << 20;
const STREAM_WINDOW: u32 = 32 << 20;

struct Tls {
    identity: Identity,
    ca: Certificate,
    domain: String,
}

fn load() -> Result<Option<Tls>> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (cert, key, ca) = (var(ENV_TLS_CERT), var(ENV_TLS_KEY), var(ENV_TLS_CA));
    if cert.is_none() && key.is_none() && ca.is_none() {
        return Ok(None);
    }
    let (Some(cert), Some(key), Some(ca)) = (cert, key, ca) else {
        return Err(Error::Startup(format!(
            "TLS needs all of {ENV_TLS_CERT}, {ENV_TLS_KEY} and {ENV_TLS_CA}"
        )));
    };
    let read = |p: &str| std::fs::read(p).map_err(|e| Error::Startup(format!("reading {p}: {e}")));
    Ok(Some(Tls {
        identity: Identity::from_pem(read(&cert)?, read(&key)?),
        ca: Certificate::from_pem(read(&ca)?),
        domain: var("FLEET_TLS_DOMAIN").unwrap_or_else(|| "fleet".into()),
    }))
}

fn tls() -> Result<Option<&'static Tls>> {
    static TLS: OnceLock<std::result::Result<Option<Tls>, String>> = OnceLock::new();
    match TLS.get_or_init(|| load().map_err(|e| e.to_string())) {
        Ok(t) => Ok(t.as_ref()),
        Err(e) => Err(Error::Startup(e.clone())),
    }
}

/// Whether connections use TLS.
pub fn tls_enabled() -> bool {
    matches!(tls(), Ok(Some(_)))
}

/// An endpoint for `address` (`host:port`), with TLS when configured.
pub(crate) fn endpoint(address: &str) -> Result<Endpoint> {
    let tls = tls()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("{scheme}://{address}")
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| Error::Connection(format!("bad address {address}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW);
    if let Some(t) = tls {
        endpoint = endpoint
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(t.ca.clone())
                    .identity(t.identity.clone())
                    .domain_name(t.domain.clone()),
            )
            .map_err(|e| Error::Connection(format!("TLS settings: {e}")))?;
    }
    Ok(endpoint)
}

/// How long a connection may go without an answer to its keepalive pings
/// before it is given up (`FLEET_HEARTBEAT_TIMEOUT_SECS`, default 10).
pub(crate) fn heartbeat_timeout() -> Duration {
    std::env::var("FLEET_HEARTBEAT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(10))
}

/// A connected channel to `address` that pings its peer: a node agent
/// whose head's machine vanished (a cut link sends no FIN) notices within
/// the heartbeat timeout, as the head does, and goes on to rejoin. Only the
/// agent's session uses it: its runtime is never busy with user code, so
/// a late answer means the peer is gone, not that this process was busy.
pub(crate) async fn watched_channel(address: &str) -> Result<Channel> {
    endpoint(address)?
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(heartbeat_timeout())
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| Error::Connection(format!("cannot reach {address}: {e}")))
}

/// A connected channel to `address`.
pub(crate) async fn channel(address: &str) -> Result<Channel> {
    endpoint(address)?
        .connect()
        .await
        .map_err(|e| Error::Connection(format!("cannot reach {address}: {e}")))
}

/// A server builder, with TLS when configured.
pub(crate) fn server() -> Result<Server> {
    let builder = Server::builder()
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW);
    match tls()? {
        None => Ok(builder),
        Some(t) => builder
            .tls_config(
                ServerTlsConfig::new()
                    .identity(t.identity.clone())
                    .client_ca_root(t.ca.clone()),
            )
            .map_err(|e| Error::Startup(format!("TLS settings: {e}"))),
    }
}
