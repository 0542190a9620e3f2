//! Node liveness: every node heartbeats to the leader; the leader marks a node's
//! `serfHealth` critical when its heartbeats stop for the TTL, and passing again when they
//! resume. Because `serfHealth` counts against every service on the node, its instances
//! leave DNS in the same Raft entry.
//!
//! The leader also cleans up dead servers (Consul's autopilot): a voter whose heartbeats
//! have been missing for [`Autopilot::dead_server_after`] is removed from the Raft
//! configuration, one at a time, as long as the dead are a minority of the voters and the
//! voters stay at or above [`Autopilot::min_quorum`]. A removed server that comes back asks
//! to join again (see `stay_member` in the Raft crate).

use std::time::Duration;

use std::collections::HashMap;

use atoll_cluster::{Cluster, ClusterHandle};
use atoll_state::{CheckStatus, Command, NODE_HEALTH_CHECK_ID};
use tokio::time::Instant;

/// How often a node heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How often the leader checks heartbeats.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// When the leader removes dead servers from the Raft configuration, as Consul's autopilot
/// does with `cleanup_dead_servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autopilot {
    /// A voter whose heartbeats have been missing this long is removed; `None` never removes.
    pub dead_server_after: Option<Duration>,
    /// Never shrink the voters below this many (0: no floor beyond the majority rule).
    pub min_quorum: usize,
}

impl Default for Autopilot {
    fn default() -> Self {
        Autopilot {
            dead_server_after: Some(Duration::from_secs(30)),
            min_quorum: 0,
        }
    }
}

pub(crate) async fn send_heartbeats(cluster: ClusterHandle, node: String) {
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = cluster.heartbeat(&node).await {
            tracing::debug!(error = %e, "heartbeat not delivered");
        }
    }
}

pub(crate) async fn watch_heartbeats(cluster: ClusterHandle, ttl: Duration, autopilot: Autopilot) {
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    loop {
        ticker.tick().await;
        if !cluster.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let liveness = cluster.liveness();
        let now = Instant::now();
        let nodes: Vec<(String, CheckStatus)> = cluster.store().read(|state| {
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
            if let Err(e) = cluster.write(command).await {
                tracing::warn!(%node, error = %e, "could not record node health");
            }
        }
        if let Some(dead_after) = autopilot.dead_server_after {
            remove_dead_server(
                cluster.as_ref(),
                &liveness,
                since,
                dead_after,
                autopilot.min_quorum,
            )
            .await;
        }
    }
}

/// Leader only: removes one dead voter if the cleanup rules allow it.
async fn remove_dead_server(
    cluster: &dyn Cluster,
    liveness: &HashMap<String, Instant>,
    leading_since: Instant,
    dead_after: Duration,
    min_quorum: usize,
) {
    let now = Instant::now();
    let voters: Vec<(u64, String, Duration)> = cluster
        .members()
        .into_iter()
        .filter(|(id, _, voter)| *voter && *id != cluster.node_id())
        .map(|(id, member, _)| {
            // Silence is counted from the later of its last heartbeat and this leadership.
            let seen = liveness
                .get(&member.name)
                .copied()
                .map_or(leading_since, |seen| seen.max(leading_since));
            (id, member.name, now.duration_since(seen))
        })
        .collect();
    let silent: Vec<Duration> = voters.iter().map(|(_, _, silent)| *silent).collect();
    let Some(index) = dead_server_to_remove(&silent, dead_after, min_quorum) else {
        return;
    };
    let (id, name, silent) = &voters[index];
    tracing::warn!(node = %name, silent_for = ?silent, "removing dead server from the Raft configuration");
    if let Err(e) = cluster.remove_member(*id).await {
        tracing::warn!(node = %name, error = %e, "could not remove dead server");
    }
}

/// Which of the other voters (given how long each has been silent) may be removed: the one
/// silent longest among those dead for `dead_after`, provided the dead are fewer than half
/// of all voters (this leader included) and at least `min_quorum` voters would remain.
fn dead_server_to_remove(
    silent: &[Duration],
    dead_after: Duration,
    min_quorum: usize,
) -> Option<usize> {
    let voters = silent.len() + 1;
    let dead: Vec<usize> = (0..silent.len())
        .filter(|&i| silent[i] >= dead_after)
        .collect();
    if dead.is_empty() || dead.len() * 2 >= voters || voters - 1 < min_quorum.max(1) {
        return None;
    }
    dead.into_iter().max_by_key(|&i| silent[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_secs(30);

    fn secs(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn a_dead_minority_is_removed_longest_silent_first() {
        assert_eq!(dead_server_to_remove(&secs(&[0, 31]), DEAD, 0), Some(1));
        assert_eq!(
            dead_server_to_remove(&secs(&[40, 0, 90, 1]), DEAD, 0),
            Some(2)
        );
    }

    #[test]
    fn nothing_is_removed_before_the_threshold() {
        assert_eq!(dead_server_to_remove(&secs(&[0, 29]), DEAD, 0), None);
        assert_eq!(dead_server_to_remove(&secs(&[]), DEAD, 0), None);
    }

    #[test]
    fn never_removes_a_majority() {
        // Three voters, two dead: removing would leave the leader alone by its own say.
        assert_eq!(dead_server_to_remove(&secs(&[31, 31]), DEAD, 0), None);
        // Two voters, one dead: half is not a minority.
        assert_eq!(dead_server_to_remove(&secs(&[31]), DEAD, 0), None);
        // Five voters, two dead: allowed.
        assert!(dead_server_to_remove(&secs(&[31, 0, 45, 0]), DEAD, 0).is_some());
    }

    #[test]
    fn min_quorum_is_a_floor() {
        assert_eq!(dead_server_to_remove(&secs(&[0, 31]), DEAD, 3), None);
        assert_eq!(dead_server_to_remove(&secs(&[0, 31, 0]), DEAD, 3), Some(1));
    }
}
