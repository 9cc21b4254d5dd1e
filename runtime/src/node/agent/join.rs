//! Joining a head that may not be there yet: a node agent started before
//! its head (Slurm and Kubernetes start processes in any order), or one
//! whose head went away and is restarted. It retries with backoff for
//! `--wait-for-head` seconds, saying what it waits for, then gives up with
//! an error naming the address and the flag.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::NodeOptions;
use crate::client::transport::{self, Inbound};
use crate::error::{Error, Result};
use crate::proto;

/// First pause between attempts; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between attempts: a restarted head is joined within this.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Longest one attempt may take (a head that accepts but never answers).
const ATTEMPT: Duration = Duration::from_secs(15);
/// How often the agent repeats what it waits for.
const SAY_EVERY: Duration = Duration::from_secs(10);

/// An open, welcomed session with the head.
pub(super) struct Joined {
    pub(super) out: tokio::sync::mpsc::UnboundedSender<proto::ClientOp>,
    pub(super) inbound: Inbound,
    pub(super) leftover: Vec<proto::HeadOp>,
    /// The token the head accepted.
    pub(super) token: String,
}

/// Why one attempt failed.
enum Failed {
    /// Worth another try: no head yet, no token file yet, a stale entry.
    Retry(String),
    /// Trying again cannot help (a wrong token given on the command line,
    /// another protocol version).
    Fatal(Error),
}

/// Where the node's token comes from: fixed (`FLEET_TOKEN`), or a file read
/// again on every attempt (a restarted head may write a new token there).
fn current_token(opts: &NodeOptions) -> std::result::Result<String, Failed> {
    if !opts.token.is_empty() {
        return Ok(opts.token.clone());
    }
    let path: &PathBuf = match &opts.token_file {
        Some(p) => p,
        None => {
            return Err(Failed::Fatal(Error::Startup(
                "no cluster token: set FLEET_TOKEN or pass --token-file".into(),
            )))
        }
    };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(Failed::Retry(format!(
            "the token file {} is empty (the head writes it when it starts)",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Failed::Retry(format!(
            "no token file at {} yet (the head writes it when it starts; or set FLEET_TOKEN)",
            path.display()
        ))),
        Err(e) => Err(Failed::Fatal(Error::Startup(format!(
            "reading the token file {}: {e}",
            path.display()
        )))),
    }
}

async fn attempt(
    opts: &NodeOptions,
    hello: &(dyn Fn(String) -> proto::Hello + Sync),
) -> std::result::Result<Joined, Failed> {
    let token = current_token(opts)?;
    let channel = crate::net::watched_channel(&opts.head)
        .await
        .map_err(|e| Failed::Retry(e.to_string()))?;
    let (out, mut inbound) = transport::connect_on(channel)
        .await
        .map_err(|e| Failed::Retry(e.to_string()))?;
    match transport::handshake(&out, &mut inbound, hello(token.clone())).await {
        Ok((_welcome, leftover)) => Ok(Joined {
            out,
            inbound,
            leftover,
            token,
        }),
        // The head has not yet seen this node's old session end, or the
        // token file is the previous head's: both settle by themselves.
        Err(Error::Mismatch(why))
            if why.contains("already in the cluster")
                || (why.contains("token") && opts.token.is_empty()) =>
        {
            Err(Failed::Retry(format!("the head refused: {why}")))
        }
        Err(Error::Mismatch(why)) => Err(Failed::Fatal(Error::Mismatch(format!(
            "the head at {} refused this node: {why}",
            opts.head
        )))),
        Err(e) => Err(Failed::Retry(e.to_string())),
    }
}

/// Joins the head at `opts.head`, retrying with backoff for
/// `opts.wait_for_head`. `None`: `stop` fired while waiting.
pub(super) async fn join(
    opts: &NodeOptions,
    hello: &(dyn Fn(String) -> proto::Hello + Sync),
    stop: &mut oneshot::Receiver<()>,
) -> Result<Option<Joined>> {
    let wait = opts.wait_for_head;
    let deadline = Instant::now() + wait;
    let mut delay = FIRST_DELAY;
    let mut said: Option<Instant> = None;
    loop {
        // The last attempt gets a few seconds past the deadline to finish.
        let limit = ATTEMPT
            .min(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5));
        let result = tokio::select! {
            r = tokio::time::timeout(limit, attempt(opts, hello)) => r,
            _ = &mut *stop => return Ok(None),
        };
        let why = match result {
            Ok(Ok(joined)) => return Ok(Some(joined)),
            Ok(Err(Failed::Fatal(e))) => return Err(e),
            Ok(Err(Failed::Retry(why))) => why,
            Err(_) => format!("no answer within {} s", limit.as_secs_f64()),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Startup(format!(
                "no head answered at {} for {} s ({why}); start the head first, check \
                 --address, or wait longer with --wait-for-head SECS",
                opts.head,
                wait.as_secs_f64()
            )));
        }
        if said.is_none_or(|t| now.duration_since(t) >= SAY_EVERY) {
            let left = deadline.saturating_duration_since(now).as_secs();
            println!(
                "fleet node: waiting for the head at {}: {why} (giving up in {left} s; --wait-for-head SECS)",
                opts.head
            );
            tracing::warn!(head = %opts.head, "waiting for the head: {why}");
            said = Some(now);
        }
        let pause = delay.min(deadline.saturating_duration_since(now));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut *stop => return Ok(None),
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
}
