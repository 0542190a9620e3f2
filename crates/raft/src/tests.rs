use atoll_cluster::Cluster;
use atoll_state::{Command, Outcome};

use crate::{Consensus, ConsensusConfig};

pub(crate) fn config(dir: &std::path::Path, snapshot_after_entries: u64) -> ConsensusConfig {
    ConsensusConfig {
        data_dir: dir.to_path_buf(),
        member: crate::Member {
            name: "n1".into(),
            rpc_addr: "127.0.0.1:8300".into(),
            http_addr: "127.0.0.1:8500".into(),
            server: true,
            datacenter: "dc1".into(),
            dns_addr: "127.0.0.1:8600".into(),
            lan_addr: String::new(),
        },
        snapshot_after_entries,
        disk_reserve_bytes: 0,
        cluster_secret: None,
        rpc_tls: None,
    }
}

pub(crate) async fn started(config: ConsensusConfig) -> Consensus {
    let consensus = Consensus::start(config, Default::default()).await.unwrap();
    consensus.bootstrap_single().await.unwrap();
    consensus
}

pub(crate) fn put(key: &str, value: &str) -> Command {
    Command::KvSet {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        cas: None,
    }
}

#[tokio::test]
async fn writes_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let consensus = started(config(dir.path(), 10_000)).await;
        for i in 0..20 {
            let (outcome, _) = consensus.write(put(&format!("k{i}"), "v")).await.unwrap();
            assert_eq!(outcome, Outcome::Done);
        }
        consensus.shutdown().await;
    }
    let consensus = started(config(dir.path(), 10_000)).await;
    // The committed log is re-applied on start.
    let mut applied = consensus.store().watch_applied();
    let count = loop {
        let count = consensus.store().read(|s| s.kv.len());
        if count == 20 {
            break count;
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), applied.changed())
            .await
            .unwrap()
            .unwrap();
    };
    assert_eq!(count, 20);
    // A later write still succeeds (same single-voter cluster, not a new one).
    consensus.write(put("after", "v")).await.unwrap();
    assert_eq!(consensus.peers().len(), 1);
}

#[tokio::test]
async fn snapshots_compact_the_log_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    {
        let consensus = started(config(dir.path(), 50)).await;
        for i in 0..300 {
            consensus
                .write(put(&format!("k{}", i % 7), &i.to_string()))
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while consensus.snapshot_index().unwrap_or(0) < 200 {
            assert!(tokio::time::Instant::now() < deadline, "no snapshot taken");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        consensus.shutdown().await;
    }
    let consensus = started(config(dir.path(), 50)).await;
    let mut applied = consensus.store().watch_applied();
    loop {
        let value = consensus
            .store()
            .read(|s| s.kv.get("k5").map(|e| e.value.clone()));
        if value.as_deref() == Some(b"299".as_slice()) {
            break;
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), applied.changed())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(consensus.store().read(|s| s.kv.len()), 7);
}

struct SuiteBuilder;

impl
    openraft::testing::StoreBuilder<
        crate::TypeConfig,
        crate::log_store::LogStore,
        crate::state_machine::StateMachine,
        tempfile::TempDir,
    > for SuiteBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            crate::log_store::LogStore,
            crate::state_machine::StateMachine,
        ),
        openraft::StorageError<u64>,
    > {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open(dir.path()).unwrap();
        let machine =
            crate::state_machine::StateMachine::restore(Default::default(), db.clone(), dir.path())
                .unwrap();
        Ok((dir, crate::log_store::LogStore::new(db).unwrap(), machine))
    }
}

/// openraft's own conformance suite for log and state-machine storage.
#[test]
fn storage_passes_openraft_suite() {
    openraft::testing::Suite::test_all(SuiteBuilder).unwrap();
}

/// A log on a new database, the database, and the directory holding it.
fn fresh_log() -> (
    tempfile::TempDir,
    std::sync::Arc<redb::Database>,
    crate::log_store::LogStore,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::open(dir.path()).unwrap();
    let log = crate::log_store::LogStore::new(db.clone()).unwrap();
    (dir, db, log)
}

/// The committed index read back from the file, as a fresh start would read it.
fn committed_on_disk(db: &redb::Database) -> Option<Option<openraft::LogId<u64>>> {
    crate::storage::get_meta(db, crate::storage::KEY_COMMITTED)
        .unwrap()
        .map(|bytes| atoll_state::snapshot::decode(&bytes).unwrap())
}

/// A committed index takes no durable commit of its own: it is written with the next
/// transaction (here a vote's), and read back as saved before that.
#[tokio::test]
async fn the_committed_index_rides_along_with_the_next_write() {
    use openraft::storage::RaftLogStorage;
    let (_dir, db, mut log) = fresh_log();
    let committed = Some(openraft::LogId::new(
        openraft::CommittedLeaderId::new(3, 1),
        42,
    ));
    log.save_committed(committed).await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), committed);
    log.save_vote(&openraft::Vote::new(3, 1)).await.unwrap();
    assert_eq!(committed_on_disk(&db), Some(committed));
}

/// With no other write to ride along with, the committed index is still written, alone, once
/// the writer has been idle for a while.
#[tokio::test]
async fn a_committed_index_alone_is_written_once_the_log_is_idle() {
    use openraft::storage::RaftLogStorage;
    let (_dir, db, mut log) = fresh_log();
    let committed = Some(openraft::LogId::new(
        openraft::CommittedLeaderId::new(2, 1),
        7,
    ));
    log.save_committed(committed).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while committed_on_disk(&db) != Some(committed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the committed index was not written within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
