//! Node liveness: every node heartbeats to the leader; the leader marks a node's
//! `serfHealth` critical when its heartbeats stop for the TTL, and passing again when they
//! resume. Because `serfHealth` counts against every service on the node, its instances
//! leave DNS in the same Raft entry.

use std::time::Duration;

use atoll_raft::Consensus;
use atoll_state::{CheckStatus, Command, NODE_HEALTH_CHECK_ID};
use tokio::time::Instant;

/// How often a node heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How often the leader checks heartbeats.
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub(crate) async fn send_heartbeats(consensus: Consensus, node: String) {
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = consensus.heartbeat(&node).await {
            tracing::debug!(error = %e, "heartbeat not delivered");
        }
    }
}

pub(crate) async fn watch_heartbeats(consensus: Consensus, ttl: Duration) {
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    loop {
        ticker.tick().await;
        if !consensus.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let liveness = consensus.liveness();
        let now = Instant::now();
        let nodes: Vec<(String, CheckStatus)> = consensus.store().read(|state| {
            state
                .all_checks()
                .filter(|c| c.check_id == NODE_HEALTH_CHECK_ID)
                .map(|c| (c.node.clone(), c.status))
                .collect()
        });
        for (node, status) in nodes {
            let alive = match liveness.get(&node) {
                Some(seen) => now.duration_since(*seen) < ttl,
                // A new leader gives every node one TTL to report before judging it, and
                // until then leaves its recorded health as it is.
                None if now.duration_since(since) < ttl => continue,
                None => false,
            };
            let (wanted, output) = if alive {
                (CheckStatus::Passing, "Agent alive and reachable")
            } else {
                (CheckStatus::Critical, "Agent not live or unreachable")
            };
            if wanted == status {
                continue;
            }
            if !alive {
                tracing::warn!(%node, "node missed its heartbeats; marking it failed");
            } else {
                tracing::info!(%node, "node is reachable again");
            }
            let command = Command::UpdateCheck {
                node: node.clone(),
                check_id: NODE_HEALTH_CHECK_ID.to_string(),
                status: wanted,
                output: output.to_string(),
            };
            if let Err(e) = consensus.write(command).await {
                tracing::warn!(%node, error = %e, "could not record node health");
            }
        }
    }
}
