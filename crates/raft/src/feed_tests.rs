//! The compute nodes' feed end to end in one process: a single server serving its RPC
//! listener on loopback, and compute nodes ([`Replica`]) fed by it.

use std::time::Duration;

use atoll_cluster::{Cluster, Member, ReadMode, Store};
use atoll_state::{Command, Registration, Table};
use tokio::net::TcpListener;

use crate::tests::{config, put, started};
use crate::{Consensus, Replica, ReplicaConfig};

fn register(node: &str) -> Command {
    Command::Register(Box::new(Registration {
        node: node.to_string(),
        address: "10.0.0.1".to_string(),
        datacenter: "dc1".to_string(),
        ..Default::default()
    }))
}

/// A single server listening for RPC on a free loopback port, serving the feed.
async fn server(dir: &std::path::Path) -> (Consensus, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut config = config(dir, 10_000);
    config.member.rpc_addr = address.clone();
    let consensus = started(config).await;
    let rpc = consensus.clone();
    tokio::spawn(async move { rpc.serve_rpc(listener, 1).await });
    let feed = consensus.clone();
    tokio::spawn(async move { feed.serve_feed().await });
    (consensus, address)
}

fn compute(name: &str, server: &str, data_dir: Option<&std::path::Path>) -> Replica {
    Replica::start(
        ReplicaConfig {
            member: Member {
                name: name.to_string(),
                rpc_addr: "127.0.0.1:1".to_string(),
                datacenter: "dc1".to_string(),
                ..Default::default()
            },
            servers: vec![server.to_string()],
            data_dir: data_dir.map(|d| d.to_path_buf()),
            cluster_secret: None,
            rpc_tls: None,
        },
        Store::default(),
    )
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_node_holds_every_table_but_keys_and_reads_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, address) = server(dir.path()).await;
    server.write(put("secret", "v")).await.unwrap();
    server.write(register("before")).await.unwrap();

    let node = compute("c1", &address, None);
    let running = node.clone();
    tokio::spawn(async move { running.run().await });
    tokio::time::timeout(Duration::from_secs(10), node.wait_ready())
        .await
        .unwrap();
    assert!(node.store().read(|s| s.nodes.contains_key("before")));
    assert!(
        node.store().read(|s| s.kv.is_empty()),
        "keys reached a compute node"
    );
    assert!(!node.holds(Table::Kv));
    assert_eq!(node.members().len(), 1);
    until("the leader", || node.leader_member().is_some()).await;

    // Its own write, through the server: applied locally when write() returns.
    let (_, index) = node.write(register("mine")).await.unwrap();
    assert!(node.store().applied() >= index);
    assert!(node.store().read(|s| s.nodes.contains_key("mine")));
    // A key written through it reaches the servers, not its copy; its applied index still
    // follows the cluster's.
    let (_, index) = node.write(put("k", "v")).await.unwrap();
    assert!(node.store().applied() >= index);
    assert!(node.store().read(|s| s.kv.is_empty()));
    assert!(server.store().read(|s| s.kv.contains_key("k")));
    // A fresh read waits for the leader's index.
    server.write(register("elsewhere")).await.unwrap();
    node.linearize(ReadMode::Default).await.unwrap();
    assert!(node.store().read(|s| s.nodes.contains_key("elsewhere")));
    let stats = node.feed_stats();
    assert_eq!(stats.snapshots, 1);
    assert!(stats.entries >= 2, "{stats:?}");
    // The server reports the streamed node alive to the leader (itself).
    until("the node reported alive", || {
        server.liveness().contains_key("c1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_node_restarted_on_its_data_dir_resumes_without_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = tempfile::tempdir().unwrap();
    let (server, address) = server(dir.path()).await;
    server.write(register("before")).await.unwrap();
    {
        let node = compute("c1", &address, Some(node_dir.path()));
        let running = node.clone();
        let task = tokio::spawn(async move { running.run().await });
        tokio::time::timeout(Duration::from_secs(10), node.wait_ready())
            .await
            .unwrap();
        node.write(register("mine")).await.unwrap();
        task.abort();
        node.shutdown().await;
    }
    server.write(register("while-away")).await.unwrap();
    let node = compute("c1", &address, Some(node_dir.path()));
    // The kept copy is there before any stream.
    assert!(node.store().read(|s| s.nodes.contains_key("mine")));
    let running = node.clone();
    tokio::spawn(async move { running.run().await });
    tokio::time::timeout(Duration::from_secs(10), node.wait_ready())
        .await
        .unwrap();
    until("the entry made while away", || {
        node.store().read(|s| s.nodes.contains_key("while-away"))
    })
    .await;
    let stats = node.feed_stats();
    assert_eq!((stats.snapshots, stats.resumes), (0, 1), "{stats:?}");
    // A copy kept for another history (a rebuilt cluster) is not resumed: the new server
    // sends a whole copy.
    node.shutdown().await;
    let other_dir = tempfile::tempdir().unwrap();
    let (_other, other_address) = self::server(other_dir.path()).await;
    let node = compute("c1", &other_address, Some(node_dir.path()));
    let running = node.clone();
    tokio::spawn(async move { running.run().await });
    tokio::time::timeout(Duration::from_secs(10), node.wait_ready())
        .await
        .unwrap();
    assert_eq!(node.feed_stats().snapshots, 1);
    until("the copy of the other cluster", || {
        !node.store().read(|s| s.nodes.contains_key("mine"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_era_data_dir_starts_as_a_compute_node() {
    // What a compute node of the previous release left: a Raft database with its id.
    let node_dir = tempfile::tempdir().unwrap();
    let old_id = {
        let mut learner = config(node_dir.path(), 10_000);
        learner.member.server = false;
        let consensus = Consensus::start(learner, Default::default()).await.unwrap();
        let id = consensus.node_id();
        consensus.shutdown().await;
        id
    };
    assert!(node_dir.path().join(crate::storage::DB_FILE).exists());
    let dir = tempfile::tempdir().unwrap();
    let (server, address) = server(dir.path()).await;
    server.write(register("before")).await.unwrap();
    let node = compute("c1", &address, Some(node_dir.path()));
    assert!(
        !node_dir.path().join(crate::storage::DB_FILE).exists(),
        "the learner's log is still there"
    );
    assert_eq!(*node.inner_old_raft_id(), Some(old_id));
    let running = node.clone();
    tokio::spawn(async move { running.run().await });
    tokio::time::timeout(Duration::from_secs(10), node.wait_ready())
        .await
        .unwrap();
    assert!(node.store().read(|s| s.nodes.contains_key("before")));
    node.write(register("mine")).await.unwrap();
}
