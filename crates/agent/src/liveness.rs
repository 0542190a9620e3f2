//! Node liveness. With a LAN gossip pool (the default), the leader follows its pool's view:
//! a member the pool declares failed gets its `serfHealth` critical, one alive again gets it
//! passing, all the changes seen at once in one Raft entry. Every server also heartbeats to
//! the leader, and every server reports the compute nodes whose state streams it holds (a
//! compute node's own `Cluster::heartbeat` sends nothing); the leader judges by them the
//! nodes its pool does not know (nodes running without a LAN pool, `--serf-lan-port 0`, or
//! not heard of yet): it marks their `serfHealth`
//! critical when the heartbeats stop for the TTL, and passing again when they resume. Because `serfHealth` counts against every service on the node, its
//! instances leave DNS in the same Raft entry.
//!
//! The leader also cleans up dead servers (Consul's autopilot): a voter whose heartbeats
//! have been missing for [`Autopilot::dead_server_after`] is removed from the Raft
//! configuration, one at a time, as long as the dead are a minority of the voters and the
//! voters stay at or above [`Autopilot::min_quorum`]. A removed server that comes back asks
//! to join again (see `stay_member` in the Raft crate).

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use atoll_cluster::{Cluster, ClusterHandle, LanPool, MemberStatus};
use atoll_state::{CheckStatus, Command, NODE_HEALTH_CHECK_ID};
use tokio::time::Instant;

/// How often a node heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How often the leader checks heartbeats.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often the leader compares the pool's view with the catalog even when the view did
/// not change (after it became leader, after a failed write).
const POOL_RECHECK_EVERY: Duration = Duration::from_secs(1);

/// What `serfHealth` says of a live node.
const ALIVE_OUTPUT: &str = "Agent alive and reachable";
/// What `serfHealth` says of a failed node.
const FAILED_OUTPUT: &str = "Agent not live or unreachable";

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

/// The nodes whose health the LAN pool decides: those the leader's pool knows. The others
/// (no pool, or one the leader's pool has not heard of yet, such as a node that died right
/// after it started) are judged by their heartbeats.
fn judged_by_pool(lan: Option<&Arc<dyn LanPool>>) -> BTreeSet<String> {
    let Some(lan) = lan else {
        return BTreeSet::new();
    };
    let members = lan.members();
    let members = members.borrow();
    members.iter().map(|member| member.name.clone()).collect()
}

/// Leader only: keeps each `serfHealth` check equal to what the LAN pool says of its node,
/// as soon as the pool's view changes. A compute node (a pool member that is not a Raft
/// member) must also hold its state stream on some server: one the pool holds alive (other
/// members still reach it) but whose stream no server has reported for `ttl` is cut off
/// from the servers, receives no allocation and reports nothing, so it counts as failed and
/// its tasks are placed elsewhere, as a Nomad client that lost its servers.
pub(crate) async fn watch_pool(cluster: ClusterHandle, lan: Arc<dyn LanPool>, ttl: Duration) {
    let mut members = lan.members();
    let mut open = true;
    let mut recheck = tokio::time::interval(POOL_RECHECK_EVERY);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = members.changed(), if open => open = changed.is_ok(),
            _ = recheck.tick() => {}
        }
        if !cluster.is_leader() {
            continue;
        }
        let mut statuses = atoll_cluster::statuses(&members.borrow_and_update());
        cut_off_from_servers(&mut statuses, cluster.as_ref(), ttl);
        // Only the pool's members can need an update: their own checks, looked up by key.
        let checks: Vec<(String, CheckStatus)> = cluster.store().read(|state| {
            statuses
                .keys()
                .filter_map(|node| {
                    let check = state.check(node, NODE_HEALTH_CHECK_ID)?;
                    Some((node.clone(), check.status))
                })
                .collect()
        });
        let mut updates = pool_health_updates(&checks, &statuses);
        if updates.is_empty() {
            continue;
        }
        for update in &updates {
            if let Command::UpdateCheck { node, status, .. } = update {
                if *status == CheckStatus::Critical {
                    tracing::warn!(%node, "the LAN pool failed the node; marking it failed");
                } else {
                    tracing::info!(%node, "the LAN pool holds the node alive again");
                }
            }
        }
        let command = if updates.len() == 1 {
            updates.remove(0)
        } else {
            Command::Batch(updates)
        };
        if let Err(e) = cluster.write(command).await {
            tracing::warn!(error = %e, "could not record node health from the LAN pool");
        }
    }
}

/// Marks failed the compute nodes the pool holds alive whose streams no server reported for
/// `ttl` (a node never reported is left to the pool).
fn cut_off_from_servers(
    statuses: &mut BTreeMap<String, MemberStatus>,
    cluster: &dyn Cluster,
    ttl: Duration,
) {
    let servers: BTreeSet<String> = cluster
        .members()
        .into_iter()
        .map(|(_, member, _)| member.name)
        .collect();
    let liveness = cluster.liveness();
    let now = Instant::now();
    for (node, status) in statuses.iter_mut() {
        if *status != MemberStatus::Alive || servers.contains(node) {
            continue;
        }
        if let Some(seen) = liveness.get(node) {
            if now.duration_since(*seen) >= ttl {
                *status = MemberStatus::Failed;
            }
        }
    }
}

/// The `serfHealth` updates that make each node's check (`checks`: node and status) agree
/// with its pool state: failed → critical, alive → passing. Members that left (their
/// leave deregisters them) and nodes the pool does not know are left alone.
pub(crate) fn pool_health_updates(
    checks: &[(String, CheckStatus)],
    pool: &BTreeMap<String, MemberStatus>,
) -> Vec<Command> {
    checks
        .iter()
        .filter_map(|(node, status)| {
            let (wanted, output) = match pool.get(node)? {
                MemberStatus::Alive => (CheckStatus::Passing, ALIVE_OUTPUT),
                MemberStatus::Failed => (CheckStatus::Critical, FAILED_OUTPUT),
                MemberStatus::Left | MemberStatus::Leaving => return None,
            };
            (wanted != *status).then(|| Command::UpdateCheck {
                node: node.clone(),
                check_id: NODE_HEALTH_CHECK_ID.to_string(),
                status: wanted,
                output: output.to_string(),
            })
        })
        .collect()
}

pub(crate) async fn watch_heartbeats(
    cluster: ClusterHandle,
    ttl: Duration,
    autopilot: Autopilot,
    lan: Option<Arc<dyn LanPool>>,
) {
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
        let pooled = judged_by_pool(lan.as_ref());
        let nodes: Vec<(String, CheckStatus)> = cluster.store().read(|state| {
            state
                .all_checks()
                .filter(|c| c.check_id == NODE_HEALTH_CHECK_ID)
                .filter(|c| !pooled.contains(&c.node))
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
                (CheckStatus::Passing, ALIVE_OUTPUT)
            } else {
                (CheckStatus::Critical, FAILED_OUTPUT)
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

    fn update_of(command: &Command) -> (&str, CheckStatus) {
        match command {
            Command::UpdateCheck {
                node,
                check_id,
                status,
                ..
            } => {
                assert_eq!(check_id, NODE_HEALTH_CHECK_ID);
                (node.as_str(), *status)
            }
            other => panic!("not a check update: {other:?}"),
        }
    }

    #[test]
    fn the_pool_view_decides_node_health_in_one_pass() {
        let checks = vec![
            ("alive-passing".to_string(), CheckStatus::Passing),
            ("failed-passing".to_string(), CheckStatus::Passing),
            ("failed-critical".to_string(), CheckStatus::Critical),
            ("back".to_string(), CheckStatus::Critical),
            ("left".to_string(), CheckStatus::Passing),
            ("unknown".to_string(), CheckStatus::Critical),
            ("also-failed".to_string(), CheckStatus::Warning),
        ];
        let pool: BTreeMap<String, MemberStatus> = [
            ("alive-passing", MemberStatus::Alive),
            ("failed-passing", MemberStatus::Failed),
            ("failed-critical", MemberStatus::Failed),
            ("back", MemberStatus::Alive),
            ("left", MemberStatus::Left),
            ("also-failed", MemberStatus::Failed),
            ("not-in-catalog", MemberStatus::Failed),
        ]
        .into_iter()
        .map(|(name, status)| (name.to_string(), status))
        .collect();
        let updates = pool_health_updates(&checks, &pool);
        let updates: Vec<(&str, CheckStatus)> = updates.iter().map(update_of).collect();
        assert_eq!(
            updates,
            [
                ("failed-passing", CheckStatus::Critical),
                ("back", CheckStatus::Passing),
                ("also-failed", CheckStatus::Critical),
            ]
        );
        // Nothing to do once the catalog agrees.
        let agreed: Vec<(String, CheckStatus)> = checks
            .iter()
            .map(|(node, status)| {
                let status = match pool.get(node) {
                    Some(MemberStatus::Alive) => CheckStatus::Passing,
                    Some(MemberStatus::Failed) => CheckStatus::Critical,
                    _ => *status,
                };
                (node.clone(), status)
            })
            .collect();
        assert!(pool_health_updates(&agreed, &pool).is_empty());
    }

    #[test]
    fn min_quorum_is_a_floor() {
        assert_eq!(dead_server_to_remove(&secs(&[0, 31]), DEAD, 3), None);
        assert_eq!(dead_server_to_remove(&secs(&[0, 31, 0]), DEAD, 3), Some(1));
    }
}
