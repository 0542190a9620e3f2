//! The one redb file of a node: Raft log, vote, committed index and the latest snapshot.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Log entries by index, each a versioned encoding of an openraft entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small records: vote, committed, last purged, node id, snapshot meta, format version.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The state-machine snapshot body.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const KEY_FORMAT: &str = "format";
pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_PURGED: &str = "last_purged";
pub(crate) const KEY_NODE_ID: &str = "node_id";
pub(crate) const KEY_SNAPSHOT_META: &str = "snapshot_meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "snapshot_data";

/// redb page cache size.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Errors of the storage layer, with the redb error as text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StorageFailure(pub String);

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageFailure {
            fn from(e: $t) -> Self {
                StorageFailure(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    atoll_state::snapshot::DecodeError
);

/// Opens (or creates) the node's database and checks its format version.
pub(crate) fn open(dir: &Path) -> Result<Arc<Database>, StorageFailure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StorageFailure(format!("cannot create data dir {}: {e}", dir.display())))?;
    // redb's default cache is sized for large databases; atoll's state lives in memory and
    // the file is mostly log appends, so a small cache keeps the resident size small.
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(dir.join("atoll.redb"))?;
    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(SNAPSHOT)?;
        let mut meta = txn.open_table(META)?;
        let stored = meta.get(KEY_FORMAT)?.map(|v| v.value().to_vec());
        match stored.as_deref() {
            None => {
                meta.insert(
                    KEY_FORMAT,
                    [atoll_state::snapshot::FORMAT_VERSION].as_slice(),
                )?;
            }
            Some([v]) if *v <= atoll_state::snapshot::FORMAT_VERSION => {}
            Some(other) => {
                return Err(StorageFailure(format!(
                    "data dir was written by a newer atoll (format {other:?})"
                )))
            }
        }
    }
    txn.commit()?;
    Ok(Arc::new(db))
}

/// Reads one META record.
pub(crate) fn get_meta(db: &Database, key: &str) -> Result<Option<Vec<u8>>, StorageFailure> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    Ok(table.get(key)?.map(|v| v.value().to_vec()))
}

/// Writes META records in one durable transaction.
pub(crate) fn put_meta(db: &Database, records: &[(&str, &[u8])]) -> Result<(), StorageFailure> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(META)?;
        for (key, value) in records {
            table.insert(*key, *value)?;
        }
    }
    txn.commit()?;
    Ok(())
}
