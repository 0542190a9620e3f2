//! Builds a data dir holding a large state, through the node's own Raft storage and snapshot
//! code, so that what is on disk is exactly what a node writes:
//!
//! ```sh
//! cargo run --release -p atoll-raft --example large_state -- DATA_DIR [KEYS] [INSTANCES]
//! ```
//!
//! KEYS KV entries (default 1,000,000, 100-byte values, under `large/`) and INSTANCES service
//! instances (default 100,000, 100 per node, on nodes `large-node-N`) are written as
//! `Command::Batch` entries of 5,000 commands each; then small entries follow until a snapshot
//! covers the last batch and the log it keeps (256 entries) no longer holds the batches, so a
//! start from the data dir loads that snapshot and a log of small entries, as a node's would. The node is
//! recorded as `bench` (the name `bench/large_state.py` starts `atoll dev` with).
//! `bench/large_state.py` then measures restart, memory and writes during a snapshot.

use std::time::Duration;

use atoll_cluster::Member;
use atoll_raft::{Consensus, ConsensusConfig};
use atoll_state::command::{Registration, ServiceSpec};
use atoll_state::{Command, Outcome};
use tokio::time::Instant;

/// Commands per Raft entry.
const BATCH: usize = 5_000;
/// Instances per node.
const PER_NODE: usize = 100;
/// Bytes of each KV value.
const VALUE_BYTES: usize = 100;

fn arg(position: usize, default: usize) -> usize {
    std::env::args()
        .nth(position)
        .map(|a| a.replace(['_', ','], "").parse().expect("a count"))
        .unwrap_or(default)
}

async fn write(consensus: &Consensus, commands: Vec<Command>) -> u64 {
    let (outcome, index) = consensus
        .write(Command::Batch(commands))
        .await
        .expect("a write");
    // A batch answers with each command's outcome.
    let refused = match &outcome {
        Outcome::Done => None,
        Outcome::Each(each) => each.iter().find(|o| **o != Outcome::Done),
        other => Some(other),
    };
    assert!(refused.is_none(), "a command was refused: {refused:?}");
    index
}

#[tokio::main]
async fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: large_state DATA_DIR [KEYS] [INSTANCES]");
        std::process::exit(2);
    };
    let keys = arg(2, 1_000_000);
    let instances = arg(3, 100_000);
    let config = ConsensusConfig {
        data_dir: dir.clone().into(),
        member: Member {
            name: "bench".into(),
            rpc_addr: "127.0.0.1:8300".into(),
            http_addr: "127.0.0.1:8500".into(),
            server: true,
            datacenter: "dc1".into(),
            dns_addr: "127.0.0.1:8600".into(),
            lan_addr: String::new(),
        },
        snapshot_after_entries: 64,
        disk_reserve_bytes: 0,
        cluster_secret: None,
        rpc_tls: None,
    };
    let consensus = Consensus::start(config, Default::default())
        .await
        .expect("consensus starts");
    consensus.bootstrap_single().await.expect("the node leads");
    let started = Instant::now();

    let value: Vec<u8> = (0..VALUE_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
    let mut last = 0;
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..keys {
        batch.push(Command::KvSet {
            key: format!("large/{:03}/key-{i:08}", i % 1000),
            value: value.clone(),
            flags: 0,
            cas: None,
        });
        if batch.len() == BATCH || i + 1 == keys {
            last = write(&consensus, std::mem::take(&mut batch)).await;
        }
    }
    println!(
        "{keys} KV entries written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let services = Instant::now();
    for i in 0..instances {
        let node = i / PER_NODE;
        batch.push(Command::Register(Box::new(Registration {
            node: format!("large-node-{node:05}"),
            address: format!(
                "10.{}.{}.{}",
                node / 65536 % 256,
                node / 256 % 256,
                node % 256
            ),
            datacenter: "dc1".into(),
            service: Some(ServiceSpec {
                id: format!("svc-{}-{i}", i % 500),
                name: format!("svc-{}", i % 500),
                tags: vec!["large".into()],
                port: 20_000 + (i % 10_000) as u16,
                ..Default::default()
            }),
            ..Default::default()
        })));
        if batch.len() == BATCH || i + 1 == instances {
            last = write(&consensus, std::mem::take(&mut batch)).await;
        }
    }
    println!(
        "{instances} service instances written in {:.1} s",
        services.elapsed().as_secs_f64()
    );

    // Small entries until a snapshot covers the last batch and the 256 entries kept before it
    // (one is taken every 64 entries).
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut filler = 0u64;
    while consensus.snapshot_index().unwrap_or(0) < last + 320 {
        assert!(Instant::now() < deadline, "no snapshot covered the data");
        write(
            &consensus,
            vec![Command::KvSet {
                key: "bench/filler".into(),
                value: filler.to_string().into_bytes(),
                flags: 0,
                cas: None,
            }],
        )
        .await;
        filler += 1;
        if filler.is_multiple_of(64) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The purge of the log before the snapshot follows it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "snapshot at index {} (last data entry {last}); {} s in all",
        consensus.snapshot_index().unwrap_or(0),
        started.elapsed().as_secs()
    );
    consensus.shutdown().await;
}
