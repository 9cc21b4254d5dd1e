//! The dashboard: a read-only page served by the head, live over
//! server-sent events, with the same data as JSON under `/api/`. Every
//! asset is in the binary; the page needs no network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;

use super::Head;

const PAGE: &str = include_str!("dashboard/index.html");

#[derive(serde::Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The state's snapshot with the jobs added (they live outside the state).
fn with_jobs(head: &Head, snap: impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(snap).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("jobs".into(), head.jobs.json());
    }
    v
}

async fn snapshot(State(head): State<Arc<Head>>, Query(q): Query<Since>) -> impl IntoResponse {
    let snap = head.snapshot(q.since);
    Json(with_jobs(&head, snap))
}

async fn jobs(State(head): State<Arc<Head>>) -> impl IntoResponse {
    Json(head.jobs.json())
}

async fn timeline(State(head): State<Arc<Head>>) -> impl IntoResponse {
    Json(head.state.lock().chrome_trace())
}

/// Prometheus metrics of the whole cluster (`head/metrics.rs`): OpenMetrics
/// when the client asks for it (Prometheus does), else the classic text.
async fn metrics(State(head): State<Arc<Head>>, headers: HeaderMap) -> impl IntoResponse {
    use super::metrics::{classic, render, CLASSIC, OPENMETRICS};
    let mut sample = head.state.lock().metrics_sample();
    for family in super::autoscale::metric_families(head.autoscale_status().as_ref()) {
        sample.push(family);
    }
    sample.push(super::metrics::submitted_jobs(&head.jobs.list()));
    let text = render(sample);
    let open = headers.get_all(axum::http::header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    if open {
        ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], text)
    } else {
        (
            [(axum::http::header::CONTENT_TYPE, CLASSIC)],
            classic(&text),
        )
    }
}

/// 200 while the head serves, 503 once it shuts down: for load balancers,
/// Kubernetes probes and scripts that wait for a head.
async fn healthz(State(head): State<Arc<Head>>) -> impl IntoResponse {
    if head.is_stopping() {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
        )
    } else {
        (axum::http::StatusCode::OK, "ok\n")
    }
}

/// A snapshot every half second; each carries the task events since the
/// previous one.
async fn events(
    State(head): State<Arc<Head>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((head, 0u64, true), |(head, since, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let snap = head.snapshot(since);
        let next = snap.last_seq();
        let json = with_jobs(&head, snap).to_string();
        Some((Ok(Event::default().data(json)), (head, next, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

impl Head {
    /// The dashboard's view, with the autoscaler's part.
    fn snapshot(&self, since: u64) -> super::observe::Snapshot {
        let mut snap = self.state.lock().snapshot(since);
        snap.autoscale = self.autoscale_status().map(|a| {
            serde_json::json!({
                "provider": a.provider,
                "requested": a.requested,
                "pending": a.pending,
                "running": a.running,
                "min_nodes": a.min_nodes,
                "max_nodes": a.max_nodes,
                "jobs": a.jobs.iter().map(|j| serde_json::json!({
                    "id": j.id,
                    "external_id": j.external_id,
                    "state": j.state,
                    "node": j.node,
                    "age_secs": j.age_secs,
                })).collect::<Vec<_>>(),
                "events": a.events,
            })
        });
        snap
    }
}

/// Serves the dashboard on `addr`; returns the address it listens on.
pub(crate) async fn serve(head: Arc<Head>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/", get(page))
        .route("/api/snapshot", get(snapshot))
        .route("/api/timeline", get(timeline))
        .route("/api/jobs", get(jobs))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(head);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the dashboard stopped: {e}");
        }
    });
    Ok(bound)
}
