//! A cluster of one node held in memory: no Raft, no storage, no network. Each write is
//! applied at the next index as soon as it is made. For tests of the edges.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use atoll_state::{Command, Outcome};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{Cluster, ClusterError, Member, Pending, ReadMode, Store};

/// A single-node cluster in memory. It leads unless told it lost its leader.
pub struct MemoryCluster {
    store: Store,
    member: Member,
    /// Serializes writes so indexes follow the order of application.
    writes: Mutex<()>,
    leading: AtomicBool,
    liveness: Mutex<HashMap<String, Instant>>,
}

impl MemoryCluster {
    /// A leading cluster of the one server `name` in `datacenter`, with an empty state.
    pub fn new(name: &str, datacenter: &str) -> Self {
        MemoryCluster {
            store: Store::default(),
            member: Member {
                name: name.to_string(),
                rpc_addr: "127.0.0.1:8300".to_string(),
                http_addr: "127.0.0.1:8500".to_string(),
                server: true,
                datacenter: datacenter.to_string(),
                dns_addr: "127.0.0.1:8600".to_string(),
                lan_addr: String::new(),
            },
            writes: Mutex::new(()),
            leading: AtomicBool::new(true),
            liveness: Mutex::new(HashMap::new()),
        }
    }

    /// Loses (`false`) or regains (`true`) the leader: without one, writes and fresh reads
    /// fail with `NoLeader`, as a cluster without quorum answers.
    pub fn set_leader(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    fn leading(&self) -> Result<(), ClusterError> {
        if self.leading.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(ClusterError::NoLeader)
        }
    }

    fn apply(&self, command: &Command) -> Result<(Outcome, u64), ClusterError> {
        self.leading()?;
        let _order = self.writes.lock();
        let index = self.store.applied() + 1;
        let outcome = self.store.apply(index, command);
        self.store.set_applied(index);
        Ok((outcome, index))
    }
}

impl Cluster for MemoryCluster {
    fn store(&self) -> &Store {
        &self.store
    }

    fn write(&self, command: Command) -> Pending<'_, (Outcome, u64)> {
        let result = self.apply(&command);
        Box::pin(async move { result })
    }

    fn linearize(&self, _mode: ReadMode) -> Pending<'_, ()> {
        let result = self.leading();
        Box::pin(async move { result })
    }

    fn node_id(&self) -> u64 {
        0
    }

    fn member(&self) -> &Member {
        &self.member
    }

    fn leader_member(&self) -> Option<Member> {
        self.leading().ok().map(|_| self.member.clone())
    }

    fn is_leader(&self) -> bool {
        self.leading().is_ok()
    }

    fn last_contact_ms(&self) -> u64 {
        0
    }

    fn members(&self) -> Vec<(u64, Member, bool)> {
        vec![(0, self.member.clone(), true)]
    }

    fn step_down(&self) -> Pending<'_, ()> {
        // The only node: it is elected again at once.
        let result = self.leading();
        Box::pin(async move { result })
    }

    fn remove_member(&self, id: u64) -> Pending<'_, ()> {
        let result = match self.leading() {
            Err(e) => Err(e),
            Ok(()) if id == 0 => Err(ClusterError::Refused(
                "cannot remove the only server".to_string(),
            )),
            Ok(()) => Err(ClusterError::Refused(format!("no member with id {id}"))),
        };
        Box::pin(async move { result })
    }

    fn heartbeat<'a>(&'a self, node: &'a str) -> Pending<'a, ()> {
        let result = self.leading().map(|_| {
            self.liveness
                .lock()
                .insert(node.to_string(), Instant::now());
        });
        Box::pin(async move { result })
    }

    fn liveness(&self) -> HashMap<String, Instant> {
        self.liveness.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use atoll_state::{Change, Table};

    use super::*;
    use crate::Applied;

    fn set(key: &str) -> Command {
        Command::KvSet {
            key: key.to_string(),
            value: b"v".to_vec(),
            flags: 0,
            cas: None,
        }
    }

    #[tokio::test]
    async fn writes_apply_in_order_and_reach_watchers_and_subscribers() {
        let cluster = MemoryCluster::new("n1", "dc1");
        let mut kv = cluster.store().watch(Table::Kv);
        let mut catalog = cluster.store().watch(Table::Catalog);
        kv.borrow_and_update();
        catalog.borrow_and_update();
        let (copy, mut feed) = cluster.store().subscribe();
        assert_eq!(cluster.write(set("a")).await, Ok((Outcome::Done, 1)));
        assert_eq!(cluster.write(set("b")).await, Ok((Outcome::Done, 2)));
        assert!(kv.has_changed().unwrap());
        assert_eq!(*kv.borrow_and_update(), 2);
        assert!(
            !catalog.has_changed().unwrap(),
            "a KV write woke the catalog"
        );

        let mut replayed = copy;
        for expected in 1..=2 {
            let applied = feed.recv().await.unwrap();
            let Applied::Entry { index, changes } = applied.as_ref() else {
                panic!("{applied:?}");
            };
            assert_eq!(*index, expected);
            assert!(matches!(changes.as_slice(), [Change::Kv(_)]));
            replayed.replay(*index, changes);
        }
        assert!(cluster.store().read(|state| *state == replayed));
    }

    #[tokio::test]
    async fn without_a_leader_writes_and_fresh_reads_fail_and_change_nothing() {
        let cluster = Arc::new(MemoryCluster::new("n1", "dc1"));
        cluster.set_leader(false);
        assert_eq!(cluster.write(set("a")).await, Err(ClusterError::NoLeader));
        assert_eq!(
            cluster.linearize(ReadMode::Consistent).await,
            Err(ClusterError::NoLeader)
        );
        assert_eq!(cluster.store().applied(), 0);
        assert!(cluster.leader_addr().is_none());
        cluster.set_leader(true);
        assert!(cluster.write(set("a")).await.is_ok());
        assert_eq!(cluster.peers(), vec!["127.0.0.1:8300".to_string()]);
    }

    #[tokio::test]
    async fn a_replaced_state_tells_subscribers_to_start_over() {
        let cluster = MemoryCluster::new("n1", "dc1");
        let (_, mut feed) = cluster.store().subscribe();
        cluster.store().replace(Default::default(), 7);
        let applied = feed.recv().await.unwrap();
        assert_eq!(*applied, Applied::Replaced { index: 7 });
    }
}
