//! Nodes that come and go: a node agent that lost its head rejoins under
//! the same name, and a dead node leaves the node list after a while.
//!
//! A node is keyed by its name (the address of its transfer service), so a
//! rejoining agent replaces its entry rather than adding a second one: its
//! CPUs are never counted twice. Anything still attached to the old entry
//! (workers whose sessions have not ended yet) is settled against the old
//! entry first, so it cannot give CPUs back to the new one.

use std::time::{Duration, Instant};

use crate::proto;

use super::state::State;

/// How long a dead node stays in `fleet status` by default (Ray shows dead
/// nodes for a while too, so a crash is visible after the fact).
pub(crate) const DEFAULT_DEAD_NODE_TTL: Duration = Duration::from_secs(300);

/// Environment variable that sets the dead-node TTL in seconds.
pub(crate) const ENV_DEAD_NODE_TTL: &str = "FLEET_DEAD_NODE_TTL_SECS";

/// The dead-node TTL from `FLEET_DEAD_NODE_TTL_SECS`, else the default.
pub(crate) fn dead_node_ttl_from_env() -> Duration {
    std::env::var(ENV_DEAD_NODE_TTL)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_DEAD_NODE_TTL)
}

impl State {
    /// Admits a node agent's hello for `info.address`: a new name is added;
    /// a dead entry of that name is replaced; a live one is replaced only
    /// when the same agent process (`info.instance`) says hello again (its
    /// old session is stale: the agent saw it end before the head did).
    pub(super) fn admit_node(&mut self, client: u32, info: &proto::NodeInfo) -> Result<(), String> {
        let name = info.address.clone();
        if let Some(old) = self.nodes.get(&name) {
            if old.alive && (info.instance == 0 || old.info.instance != info.instance) {
                return Err(format!(
                    "a node named {name} is already in the cluster (another node agent serves \
                     that address; give this one another --node-ip or --port)"
                ));
            }
            self.retire_node(&name);
            tracing::info!(node = %name, "node rejoined; its old entry is replaced");
        }
        self.add_node(name, Some(client), info.clone());
        self.leases_feasible_again();
        Ok(())
    }

    /// Settles everything of a node entry about to be replaced: it is lost
    /// (if the head had not seen that yet), and its workers' sessions are
    /// closed now, accounted against the old entry.
    fn retire_node(&mut self, name: &str) {
        if self.nodes.get(name).is_some_and(|n| n.alive) {
            self.node_lost(name);
        }
        let stale: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.node == name)
            .map(|(c, _)| *c)
            .collect();
        for client in stale {
            if let Some(w) = self.workers.remove(&client) {
                self.worker_lost(client, w);
            }
            self.out.reap.push(client);
        }
        self.nodes.remove(name);
    }

    /// The node agent session `client` of node `name` ended. Returns false
    /// when that session no longer owns the entry (the node rejoined on a
    /// new session meanwhile): then nothing is lost.
    pub(super) fn node_session_ended(&mut self, name: &str, client: u32) -> bool {
        if self
            .nodes
            .get(name)
            .is_some_and(|n| n.session == Some(client))
        {
            self.node_lost(name);
            return true;
        }
        false
    }

    /// Removes nodes dead for longer than `ttl`; returns their names.
    pub(crate) fn expire_dead_nodes(&mut self, ttl: Duration, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                !n.alive
                    && n.dead_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= ttl)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            tracing::info!(node = %name, "dead node removed from the node list");
            self.nodes.remove(name);
        }
        expired
    }
}

/// Removes expired dead nodes now and then, for as long as the head lives.
/// Checks a few times per TTL (at most every 5 s), so a node leaves the
/// list at most a quarter TTL late.
pub(crate) async fn sweep_dead_nodes(head: std::sync::Weak<super::Head>) {
    let Some(ttl) = head.upgrade().map(|h| h.dead_node_ttl) else {
        return;
    };
    let period = (ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(period).await;
        let Some(head) = head.upgrade() else {
            return;
        };
        if head.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        head.state.lock().expire_dead_nodes(ttl, Instant::now());
    }
}
