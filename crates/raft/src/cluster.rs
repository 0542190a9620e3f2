//! Finding and forming the cluster: `--bootstrap-expect` and `--retry-join`.
//!
//! A server with no log and no vote says hello to the addresses it was given. If any of them
//! already belongs to a cluster, it asks to join it. Otherwise it waits until it knows of
//! `bootstrap_expect` servers (itself included); the one with the lowest id then bootstraps
//! them all, once. A node that has a log or a vote never bootstraps again, which is what
//! makes a full-cluster restart recover by itself.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::consensus::Consensus;
use crate::protocol::{Hello, JoinRequest, HELLO_PATH, JOIN_PATH};
use crate::transport::TransportError;
use atoll_cluster::{ClusterError, Member};

/// Pause between rounds of hellos.
const ROUND: Duration = Duration::from_millis(300);
/// How long a disagreement about `--bootstrap-expect` may last before this server gives up.
const MISMATCH_PATIENCE: Duration = Duration::from_secs(20);
/// Timeout of one hello.
const HELLO_TIMEOUT: Duration = Duration::from_millis(700);
/// A member that has not heard from a leader for this long asks to be admitted again.
const ORPHAN_AFTER: Duration = Duration::from_secs(3);

/// How a node finds its cluster.
#[derive(Debug, Clone)]
pub struct JoinPlan {
    /// RPC addresses to contact.
    pub retry_join: Vec<String>,
    /// Servers to wait for before bootstrapping (servers only; 0 for clients).
    pub bootstrap_expect: usize,
}

/// The servers that form the cluster, if this node is the one to initialize it: once
/// `expect` servers (this one included) are known, the `expect` with the lowest ids, and only
/// the lowest of those initializes. Every server comes to the same choice from what it
/// learns, so exactly one initializes, in any start order.
fn bootstrap_choice(
    mut known: BTreeMap<u64, Member>,
    (id, me): (u64, &Member),
    expect: usize,
) -> Option<BTreeMap<u64, Member>> {
    known.insert(id, me.clone());
    if known.len() < expect {
        return None;
    }
    let chosen: BTreeMap<u64, Member> = known.into_iter().take(expect).collect();
    (chosen.keys().next() == Some(&id)).then_some(chosen)
}

/// Whether a server seeing `disagreeing` peers expect another cluster size (and `agreeing`
/// ones its own) gives up: at once when they outvote it (it is the misconfigured one), else
/// after [`MISMATCH_PATIENCE`] of it going on.
fn gives_up_on_mismatch(disagreeing: usize, agreeing: usize, going_on_for: Duration) -> bool {
    disagreeing > agreeing + 1 || going_on_for > MISMATCH_PATIENCE
}

impl Consensus {
    /// Joins or forms the cluster, returning once this node belongs to one. Refuses (with
    /// an error naming the problem) peers of another datacenter or with another
    /// `bootstrap_expect`.
    pub async fn find_cluster(&self, plan: &JoinPlan) -> Result<(), ClusterError> {
        let server = self.member().server;
        if server && plan.bootstrap_expect == 1 {
            return self.bootstrap_single().await;
        }
        let mut announced = false;
        let mut mismatch_since: Option<tokio::time::Instant> = None;
        let mut refusals = Refusals::default();
        loop {
            if self.is_initialized().await? {
                if !announced {
                    tracing::info!("member of a cluster");
                }
                return Ok(());
            }
            let mut contacted = 0usize;
            let addresses = self.peer_addresses(plan);
            let me = self.hello_message(plan.bootstrap_expect).await?;
            let mut agreeing = std::collections::BTreeSet::new();
            let mut disagreeing: BTreeMap<u64, (String, usize)> = BTreeMap::new();
            for address in &addresses {
                let Some(peer) = self.say_hello(address, &me, &mut refusals).await else {
                    continue;
                };
                contacted += 1;
                self.check_peer(&peer)?;
                if server
                    && !peer.initialized
                    && peer.member.server
                    && peer.bootstrap_expect != plan.bootstrap_expect
                {
                    disagreeing.insert(peer.id, (peer.member.name.clone(), peer.bootstrap_expect));
                    continue;
                }
                if server && peer.member.server && !peer.initialized {
                    agreeing.insert(peer.id);
                }
                if peer.initialized || !server {
                    if self.ask_to_join(address, &mut refusals).await {
                        announced = true;
                        break;
                    }
                    continue;
                }
                if peer.bootstrap_expect == plan.bootstrap_expect {
                    self.remember_server(peer.id, peer.member.clone());
                }
                for (id, member) in peer.known {
                    if member.datacenter == self.member().datacenter && member.server {
                        self.remember_server(id, member);
                    }
                }
            }
            // Servers expecting another cluster size are left out. The one whose expectation
            // most peers contradict is the misconfigured one: it refuses to go on.
            if !disagreeing.is_empty() {
                let (name, expect) = disagreeing.values().next().cloned().unwrap_or_default();
                let stuck = *mismatch_since.get_or_insert_with(tokio::time::Instant::now);
                if gives_up_on_mismatch(disagreeing.len(), agreeing.len(), stuck.elapsed()) {
                    return Err(ClusterError::Refused(format!(
                        "{name} expects {expect} servers, this server expects {}: every server needs the same --bootstrap-expect",
                        plan.bootstrap_expect
                    )));
                }
                tracing::error!(peer = %name, expect, mine = plan.bootstrap_expect, "peer expects another number of servers; ignoring it");
            } else {
                mismatch_since = None;
            }
            if server && !announced {
                let known = self.known_servers();
                let me = (self.node_id(), self.member());
                if let Some(chosen) = bootstrap_choice(known, me, plan.bootstrap_expect) {
                    self.initialize(chosen).await?;
                    continue;
                }
            }
            if contacted == 0 {
                tracing::debug!(?addresses, "no peer answered yet");
            }
            tokio::time::sleep(ROUND).await;
        }
    }

    /// Runs for the life of the node: a member that stops hearing from any leader (it was
    /// removed by `force-leave` or dead-server cleanup while it was down, or it was never
    /// told of a new leader), or a server the configuration holds only as a learner (its
    /// promotion was cut short by an election), asks the nodes it knows, and its
    /// `--retry-join` addresses, to admit it again. Joining is idempotent, so asking while still a member is harmless;
    /// without a leader (no quorum) nobody can admit it and it keeps waiting.
    pub async fn stay_member(&self, plan: &JoinPlan) {
        let mut refusals = Refusals::default();
        loop {
            tokio::time::sleep(ORPHAN_AFTER).await;
            let own_id = self.node_id();
            let server = self.member().server;
            let members = self.members();
            let admitted = members
                .iter()
                .any(|(id, _, voter)| *id == own_id && (*voter || !server));
            // Not in any configuration it knows yet, yet reached by a leader: it is being sent
            // a snapshot. Asking again would change the membership, which restarts the
            // snapshot's stream from its first chunk, so a snapshot longer to send than this
            // period would never arrive.
            let receiving = !members.iter().any(|(id, _, _)| *id == own_id);
            if self.is_leader()
                || ((admitted || receiving) && self.heard_from_leader_within(ORPHAN_AFTER))
            {
                continue;
            }
            let addresses = self.peer_addresses(plan);
            let me = match self.hello_message(plan.bootstrap_expect).await {
                Ok(me) => me,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask to be admitted again");
                    continue;
                }
            };
            for address in &addresses {
                let Some(peer) = self.say_hello(address, &me, &mut refusals).await else {
                    continue;
                };
                if self.check_peer(&peer).is_err() || !peer.initialized {
                    continue;
                }
                if self.ask_to_join(address, &mut refusals).await {
                    tracing::info!(via = %address, "no word from a leader: asked to be admitted again");
                    break;
                }
            }
        }
    }

    /// Says hello to `address`; `None` if it does not answer in time or refuses this node.
    async fn say_hello(&self, address: &str, me: &Hello, refusals: &mut Refusals) -> Option<Hello> {
        // Addresses come from --retry-join and the servers heard of, but also from the
        // members, compute nodes included, whose certificates do not name a server.
        let compute_node = self
            .members()
            .iter()
            .any(|(_, member, _)| member.rpc_addr == address && !member.server);
        let client = if compute_node {
            self.client().to_any_node()
        } else {
            self.client().clone()
        };
        match client
            .call::<Hello, Hello>(address, HELLO_PATH, me, HELLO_TIMEOUT)
            .await
        {
            Ok(hello) => {
                refusals.answered(address);
                Some(hello)
            }
            Err(e) if e.refused() => {
                refusals.refused(address, "hello", &e);
                None
            }
            Err(_) => None,
        }
    }

    /// Everyone worth a hello: the `--retry-join` addresses, the members of the Raft
    /// configuration and the servers heard of, without this node.
    fn peer_addresses(&self, plan: &JoinPlan) -> Vec<String> {
        let mut addresses: Vec<String> = plan.retry_join.clone();
        addresses.extend(self.members().into_iter().map(|(_, m, _)| m.rpc_addr));
        addresses.extend(self.known_servers().into_values().map(|m| m.rpc_addr));
        addresses.retain(|a| *a != self.member().rpc_addr);
        addresses.sort();
        addresses.dedup();
        addresses
    }

    fn check_peer(&self, peer: &Hello) -> Result<(), ClusterError> {
        let mine = &self.member().datacenter;
        if &peer.member.datacenter != mine {
            return Err(ClusterError::Refused(format!(
                "{} ({}) is in datacenter {:?}, not {:?}: servers of another datacenter cannot join on the LAN",
                peer.member.name, peer.member.rpc_addr, peer.member.datacenter, mine
            )));
        }
        Ok(())
    }

    /// Asks `address` (or the leader it names) to add this node.
    async fn ask_to_join(&self, address: &str, refusals: &mut Refusals) -> bool {
        let request = JoinRequest {
            id: self.node_id(),
            member: self.member().clone(),
        };
        let mut target = address.to_string();
        for _ in 0..3 {
            let reply: Result<Result<(), ClusterError>, _> = self
                .client()
                .call(&target, JOIN_PATH, &request, Duration::from_secs(30))
                .await;
            match reply {
                Ok(Ok(())) => return true,
                Ok(Err(ClusterError::NotLeader(leader))) => target = leader,
                Ok(Err(ClusterError::Refused(reason))) => {
                    tracing::error!(%reason, "join refused");
                    return false;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "join not possible yet");
                    return false;
                }
                Err(e) if e.refused() => {
                    refusals.refused(&target, "join request", &e);
                    return false;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "join request failed");
                    return false;
                }
            }
        }
        false
    }
}

/// The peers that refused this node (its cluster key, its certificate or its claim to be a
/// server) or whose certificate this node refused, so that each refusal is logged once
/// (hellos go out several times a second) and again only after the peer let it in.
#[derive(Default)]
struct Refusals {
    refused_by: BTreeSet<String>,
}

impl Refusals {
    fn refused(&mut self, address: &str, what: &str, error: &TransportError) {
        if self.refused_by.insert(address.to_string()) {
            tracing::error!(
                peer = %address,
                "{what}: {} (this node stays out of that peer's cluster until this is fixed)",
                error.failure
            );
        }
    }

    fn answered(&mut self, address: &str) {
        self.refused_by.remove(address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> Member {
        Member {
            name: name.into(),
            server: true,
            ..Default::default()
        }
    }

    fn known(ids: &[u64]) -> BTreeMap<u64, Member> {
        ids.iter()
            .map(|id| (*id, server(&format!("s{id}"))))
            .collect()
    }

    #[test]
    fn the_lowest_of_the_first_expected_servers_bootstraps_them() {
        let me = server("me");
        // Not enough servers known yet.
        assert_eq!(bootstrap_choice(known(&[7]), (3, &me), 3), None);
        // Three known, this one lowest: it initializes the three.
        let chosen = bootstrap_choice(known(&[7, 9]), (3, &me), 3).unwrap();
        assert_eq!(chosen.keys().copied().collect::<Vec<_>>(), vec![3, 7, 9]);
        assert_eq!(chosen[&3], me);
        // Another is lower: it waits for that one to do it.
        assert_eq!(bootstrap_choice(known(&[1, 9]), (3, &me), 3), None);
        // More than expected: the lowest ids are the cluster, whichever this one is.
        let chosen = bootstrap_choice(known(&[5, 8, 9]), (3, &me), 3).unwrap();
        assert_eq!(chosen.keys().copied().collect::<Vec<_>>(), vec![3, 5, 8]);
        assert_eq!(bootstrap_choice(known(&[1, 2, 9]), (3, &me), 3), None);
        // Every server comes to the same choice: exactly one initializes.
        let all = [3u64, 5, 8, 9];
        let initializers: Vec<u64> = all
            .iter()
            .filter(|id| {
                let others: Vec<u64> = all.iter().copied().filter(|o| o != *id).collect();
                bootstrap_choice(known(&others), (**id, &server("x")), 3).is_some()
            })
            .copied()
            .collect();
        assert_eq!(initializers, vec![3]);
    }

    #[test]
    fn a_server_outvoted_on_the_cluster_size_gives_up_at_once_else_after_its_patience() {
        let soon = Duration::from_secs(1);
        assert!(
            gives_up_on_mismatch(2, 0, soon),
            "two peers expect another size"
        );
        assert!(
            !gives_up_on_mismatch(1, 0, soon),
            "one to one: not outvoted yet"
        );
        assert!(!gives_up_on_mismatch(2, 1, soon));
        assert!(gives_up_on_mismatch(1, 1, MISMATCH_PATIENCE + soon));
    }
}
