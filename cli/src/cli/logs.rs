//! `fleet logs --pid P | --task ID | --actor NAME`: a worker's output
//! (Ray's `ray logs`), kept in a file on the node that ran it and read
//! through the head, so it works from any machine that reaches the head.

use std::io::Write;
use std::path::PathBuf;

use futures::StreamExt;

use fleet::proto;
use fleet::{Error, Result};

/// Which worker's output, and how much of it.
#[derive(Clone, Debug, Default)]
pub struct LogsOptions {
    /// The worker's process id (with `node` when the head no longer knows
    /// the worker).
    pub pid: Option<u32>,
    /// A task it ran, by id (hex, as `fleet list tasks` shows).
    pub task: Option<String>,
    /// An actor it hosts, by name or id.
    pub actor: Option<String>,
    /// The node of `pid`.
    pub node: Option<String>,
    /// Keep printing what the worker prints until it exits.
    pub follow: bool,
    /// Only the last this many lines.
    pub tail: Option<u32>,
    /// The head's address (`None`: the head started on this machine).
    pub address: Option<String>,
    /// Token file (default: `FLEET_TOKEN`, else the head's on this machine).
    pub token_file: Option<PathBuf>,
}

/// Writes the worker's output to `out`; says which worker it is (pid and
/// node) on `note`.
pub fn logs(opts: &LogsOptions, out: &mut dyn Write, note: &mut dyn Write) -> Result<()> {
    let (address, token) = super::target(opts.address.as_deref(), opts.token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(e.to_string()))?;
    rt.block_on(async {
        let mut client =
            proto::head_client::HeadClient::new(fleet::daemon::channel(&address).await?)
                .max_decoding_message_size(fleet::daemon::MAX_MESSAGE);
        let reply = client
            .worker_logs(proto::WorkerLogsRequest {
                token,
                pid: opts.pid.unwrap_or(0),
                task: opts.task.clone().unwrap_or_default(),
                actor: opts.actor.clone().unwrap_or_default(),
                node: opts.node.clone().unwrap_or_default(),
                follow: opts.follow,
                tail_lines: opts.tail.unwrap_or(0),
            })
            .await
            .map_err(|s| Error::Connection(s.message().to_string()))?;
        let meta = |k: &str| {
            reply
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string()
        };
        writeln!(
            note,
            "fleet: output of worker pid {} on node {}",
            meta("fleet-worker-pid"),
            meta("fleet-worker-node")
        )?;
        let mut stream = reply.into_inner();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| Error::Connection(s.message().to_string()))?;
            out.write_all(&chunk.data)?;
            out.flush()?;
        }
        Ok(())
    })
}
