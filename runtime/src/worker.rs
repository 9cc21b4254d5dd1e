//! Worker mode: this same executable, started by a node agent, connects to
//! the head and runs tasks until the head goes away.

mod actors;
pub(crate) mod cancel;
mod direct;
pub(crate) mod executor;
pub(crate) mod generator;
mod hold;
pub(crate) mod hook;

use std::sync::Arc;

use crate::client::{transport, Client};
use crate::error::{Error, Result};
use crate::proto::{self, head_op};
use actors::ActorHost;
use executor::Executor;

static RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// Drives a future from a task or actor thread: on the worker's runtime,
/// so timers and I/O work; on a throwaway runtime when called elsewhere.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    match RUNTIME.get() {
        Some(h) => h.block_on(fut),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(fut),
    }
}

/// Runs the worker; returns only on a startup error.
fn run(worker_id: u64) -> Result<()> {
    crate::logging::init();
    let head = std::env::var(hook::ENV_HEAD)
        .map_err(|_| Error::Startup(format!("{} is not set", hook::ENV_HEAD)))?;
    let token = std::env::var(hook::ENV_TOKEN).unwrap_or_default();
    let job = std::env::var(hook::ENV_JOB)
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or_default();
    let node = std::env::var(hook::ENV_NODE).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fleet-worker-io")
        .on_thread_start(crate::latency::short_slice)
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(e.to_string()))?;
    let _ = RUNTIME.set(runtime.handle().clone());
    let (out, mut inbound) = runtime.block_on(transport::connect(&head))?;
    // Bound before the hello that reports it; served once the executor is.
    let direct = direct::bind()
        .inspect_err(|e| {
            tracing::warn!("no Worker.Direct service, drivers cannot lease this worker: {e}")
        })
        .ok();
    let hello = proto::Hello {
        protocol_version: crate::head::PROTOCOL_VERSION,
        registry_hash: crate::registry::registry_hash(),
        role: proto::Role::Worker.into(),
        pid: std::process::id(),
        worker_id,
        token: token.clone(),
        job,
        node,
        direct_address: direct.as_ref().map(|d| d.1.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let (welcome, leftover) = runtime.block_on(transport::handshake(&out, &mut inbound, hello))?;
    let client = Client::new(&welcome, out, &token);
    direct::set_done_every_ms(welcome.summary_every_ms);
    crate::context::set_client(Some(client.clone()));
    let executor = Executor::install(client.clone());
    if let Some((listener, _)) = direct {
        direct::serve(runtime.handle(), listener, token.clone(), executor.clone())?;
    }
    let actors = ActorHost::new(client.clone(), runtime.handle().clone());
    let sink = executor.clone();
    let route: transport::WorkerOps = Arc::new(move |op| match op {
        head_op::Op::Execute(t) if t.actor_id != 0 || t.create.is_some() => actors.execute(*t),
        head_op::Op::Execute(t) => sink.push(*t),
        head_op::Op::DestroyActor(id) => actors.destroy(id),
        head_op::Op::Cancel(c) => {
            sink.cancel(&c);
            actors.cancel(c.task_id);
        }
        head_op::Op::GeneratorAck(a) => generator::on_ack(&a),
        head_op::Op::SummaryEveryMs(ms) => direct::set_done_every_ms(ms),
        _ => {}
    });
    runtime.spawn(async move {
        transport::receive(client, leftover, inbound, Some(route)).await;
        // The head is gone; so is the reason to live.
        std::process::exit(0);
    });
    executor.run()
}
