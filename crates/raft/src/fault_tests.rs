//! Disk faults: a sync that fails is fatal and never acknowledged; records that no longer
//! decode stop the start with a message naming the file and what to do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::backends::FileBackend;
use redb::StorageBackend;

use crate::storage::{self, DB_FILE, KEY_SNAPSHOT_DATA, LOG, SNAPSHOT};
use crate::tests::{config, put, started};
use crate::Consensus;

/// The real file, except that `sync_data` fails while `fail_sync` is set: what a disk that
/// loses a write (EIO on fsync) looks like to redb.
#[derive(Debug)]
struct FailingSync {
    file: FileBackend,
    fail_sync: Arc<AtomicBool>,
}

impl StorageBackend for FailingSync {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected fsync failure (EIO)"));
        }
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.file.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }
}

fn kv(consensus: &Consensus, key: &str) -> Option<Vec<u8>> {
    consensus
        .store()
        .read(|s| s.kv.get(key).map(|e| e.value.clone()))
}

/// Starts on `dir` once the previous process's database has been released.
async fn restarted(dir: &std::path::Path) -> Consensus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Consensus::start(config(dir, 10_000), Default::default()).await {
            Ok(consensus) => {
                consensus.bootstrap_single().await.unwrap();
                return consensus;
            }
            Err(e)
                if e.to_string().contains("in use") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("restart failed: {e}"),
        }
    }
}

#[tokio::test]
async fn failed_fsync_of_the_log_is_fatal_and_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fail_sync = Arc::new(AtomicBool::new(false));
    {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join(DB_FILE))
            .unwrap();
        let backend = FailingSync {
            file: FileBackend::new(file).unwrap(),
            fail_sync: fail_sync.clone(),
        };
        let db = storage::open_with_backend(dir.path(), backend).unwrap();
        let consensus = Consensus::start_on(db, config(dir.path(), 10_000), Default::default())
            .await
            .unwrap();
        consensus.bootstrap_single().await.unwrap();
        consensus.write(put("before", "durable")).await.unwrap();

        fail_sync.store(true, Ordering::SeqCst);
        let failed = consensus.write(put("during", "x")).await;
        assert!(
            failed.is_err(),
            "a write whose fsync failed was acknowledged"
        );
        let message = tokio::time::timeout(Duration::from_secs(5), consensus.fatal_failure())
            .await
            .expect("a failed fsync must stop Raft, not be retried or ignored");
        assert!(message.contains(DB_FILE), "{message}");
        assert!(message.contains("injected fsync failure"), "{message}");

        // The disk is back, but this process can no longer vouch for what it holds: nothing
        // more is acknowledged until a restart.
        fail_sync.store(false, Ordering::SeqCst);
        let later = consensus.write(put("after", "x")).await;
        assert!(
            later.is_err(),
            "a write was acknowledged after a fatal storage failure"
        );
        consensus.shutdown().await;
    }
    // A restart recovers from the file: what was acknowledged is there, the file is sound.
    let consensus = restarted(dir.path()).await;
    assert_eq!(
        kv(&consensus, "before").as_deref(),
        Some(b"durable".as_slice())
    );
    assert_eq!(kv(&consensus, "after"), None);
    consensus.write(put("again", "ok")).await.unwrap();
    assert_eq!(kv(&consensus, "again").as_deref(), Some(b"ok".as_slice()));
}

/// Writes a few entries (and, with a small threshold, a snapshot), stops, and returns the dir.
async fn data_dir_with_entries(snapshot_after_entries: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let consensus = started(config(dir.path(), snapshot_after_entries)).await;
    for i in 0..20 {
        consensus.write(put(&format!("k{i}"), "v")).await.unwrap();
    }
    if snapshot_after_entries < 20 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while consensus.snapshot_index().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no snapshot taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    consensus.shutdown().await;
    drop(consensus);
    dir
}

/// Rewrites one record in place through redb, as a bad disk or a bad edit might leave it.
fn overwrite(dir: &std::path::Path, change: impl FnOnce(&redb::WriteTransaction)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let db = loop {
        match redb::Database::create(dir.join(DB_FILE)) {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if tokio::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let txn = db.begin_write().unwrap();
    change(&txn);
    txn.commit().unwrap();
}

async fn start_error(dir: &std::path::Path) -> String {
    match Consensus::start(config(dir, 10_000), Default::default()).await {
        Ok(_) => panic!("a node started on a damaged data dir"),
        Err(e) => e.to_string(),
    }
}

fn assert_names_file_and_remedy(message: &str, what: &str) {
    assert!(message.contains(DB_FILE), "{message}");
    assert!(message.contains(what), "{message}");
    assert!(message.contains("move the data dir away"), "{message}");
    assert!(message.contains("catches up by snapshot"), "{message}");
}

#[tokio::test]
async fn a_log_entry_that_does_not_decode_stops_the_start() {
    let dir = data_dir_with_entries(10_000).await;
    overwrite(dir.path(), |txn| {
        let mut log = txn.open_table(LOG).unwrap();
        log.insert(5, b"\x01{\"log_id\": tru".as_slice()).unwrap();
    });
    let message = start_error(dir.path()).await;
    assert_names_file_and_remedy(&message, "Raft log entry 5 cannot be read");
}

#[tokio::test]
async fn a_log_entry_from_an_unknown_format_stops_the_start() {
    let dir = data_dir_with_entries(10_000).await;
    overwrite(dir.path(), |txn| {
        let mut log = txn.open_table(LOG).unwrap();
        log.insert(3, b"\x09{}".as_slice()).unwrap();
    });
    let message = start_error(dir.path()).await;
    assert_names_file_and_remedy(&message, "format version 9");
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_stops_the_start() {
    let dir = data_dir_with_entries(5).await;
    overwrite(dir.path(), |txn| {
        let mut snapshot = txn.open_table(SNAPSHOT).unwrap();
        snapshot
            .insert(KEY_SNAPSHOT_DATA, b"\x01{\"kv\": [".as_slice())
            .unwrap();
    });
    let message = start_error(dir.path()).await;
    assert_names_file_and_remedy(&message, "the snapshot cannot be read");
}

#[tokio::test]
async fn a_truncated_file_stops_the_start() {
    let dir = data_dir_with_entries(10_000).await;
    let path = dir.path().join(DB_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let message = start_error(dir.path()).await;
    assert_names_file_and_remedy(&message, "is damaged");
}
