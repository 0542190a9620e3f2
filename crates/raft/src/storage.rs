//! The redb file of a node: Raft log, vote, committed index and the snapshot's meta (the
//! snapshot itself is a file of its own, `snapshot_file.rs`).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Log entries by index, each a versioned encoding of an openraft entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small records: vote, committed, last purged, node id, snapshot meta, format version.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The snapshot's meta and which file holds it; earlier releases kept its body here too.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const KEY_FORMAT: &str = "format";
pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_PURGED: &str = "last_purged";
pub(crate) const KEY_NODE_ID: &str = "node_id";
pub(crate) const KEY_SNAPSHOT_META: &str = "snapshot_meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "snapshot_data";

/// The stored format marker of a data dir whose snapshots are files of their own. Above
/// every record format (`atoll_state::snapshot::FORMAT_VERSION`, which counts up below it),
/// so a release that kept snapshots inside redb refuses the data dir at start rather than
/// start from its log alone.
const SNAPSHOT_FILES_FORMAT: u8 = 16;

/// The format marker this build writes: the newest of the record format and the layout.
fn format_marker() -> u8 {
    atoll_state::snapshot::FORMAT_VERSION.max(SNAPSHOT_FILES_FORMAT)
}

/// A file at least this large, of which less than half is in use after the snapshot moved
/// out of it, is compacted when the node starts.
const COMPACT_ABOVE_BYTES: u64 = 64 << 20;

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
    atoll_state::snapshot::DecodeError,
    atoll_state::snapshot::EncodeError
);

/// The database file inside the data dir.
pub(crate) const DB_FILE: &str = "atoll.redb";

/// What to do about a damaged data dir, said with every such failure.
pub(crate) const DAMAGED_ADVICE: &str =
    "move the data dir away (keep it for inspection) and start the \
node again with an empty one: a server rejoins its cluster and catches up by snapshot; a dev \
node starts empty";

/// Opens (or creates) the node's database, checks its format version and reads every stored
/// record once, so a damaged file stops the node at start with a message naming it.
pub(crate) fn open(dir: &Path) -> Result<Arc<Database>, StorageFailure> {
    create_dir(dir)?;
    let path = dir.join(DB_FILE);
    // redb's default cache is sized for large databases; atoll's state lives in memory and
    // the file is mostly log appends, so a small cache keeps the resident size small.
    guard_panic(&path, || {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| opening_failed(&path, e))?;
        prepare(db, &path)
    })
}

/// [`open`] over another storage backend (tests inject faults through one).
#[cfg(test)]
pub(crate) fn open_with_backend(
    dir: &Path,
    backend: impl redb::StorageBackend,
) -> Result<Arc<Database>, StorageFailure> {
    create_dir(dir)?;
    let path = dir.join(DB_FILE);
    guard_panic(&path, || {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| opening_failed(&path, e))?;
        prepare(db, &path)
    })
}

fn create_dir(dir: &Path) -> Result<(), StorageFailure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StorageFailure(format!("cannot create data dir {}: {e}", dir.display())))
}

/// The message for a file that cannot be read back: what failed, where, and what to do.
fn damaged(path: &Path, what: impl std::fmt::Display) -> StorageFailure {
    StorageFailure(format!(
        "{} is damaged ({what}); {DAMAGED_ADVICE}",
        path.display()
    ))
}

fn opening_failed(path: &Path, e: redb::DatabaseError) -> StorageFailure {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StorageFailure(format!(
            "{} is in use by another process (is another atoll running on this data dir?)",
            path.display()
        )),
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) => {
            StorageFailure(format!("cannot open {}: {e}", path.display()))
        }
        e => damaged(path, e),
    }
}

/// Runs the opening reads of the file, which a damaged file can make panic inside redb,
/// turning a panic into an error that names the file (a backtrace tells the operator nothing).
fn guard_panic<T>(
    path: &Path,
    read: impl FnOnce() -> Result<T, StorageFailure>,
) -> Result<T, StorageFailure> {
    // The default hook would print the panic and a backtrace before it is caught; this runs
    // while the node starts, before it serves anything, so silencing it briefly hides nothing.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    std::panic::set_hook(hook);
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the database library gave up reading it");
            Err(damaged(path, reason))
        }
    }
}

fn prepare(mut db: Database, path: &Path) -> Result<Arc<Database>, StorageFailure> {
    // Checksums of every page: a flipped byte anywhere in a live page is found here, before
    // anything is served from the file.
    let checked = db
        .check_integrity()
        .map_err(|e| damaged(path, e))
        .and_then(|_| {
            init_tables(&db).map_err(|e| StorageFailure(format!("{}: {}", path.display(), e.0)))
        })
        .and_then(|()| verify_records(&db).map_err(|e| damaged(path, e.0)));
    match checked {
        Ok(()) => {
            compact_if_mostly_free(&mut db, path);
            Ok(Arc::new(db))
        }
        Err(e) => {
            // Dropping a database that failed its checks makes redb commit to it (and panic on
            // the way); nothing is written to a damaged file, and the node stops anyway.
            std::mem::forget(db);
            Err(e)
        }
    }
}

/// Gives back the free room of a file that is mostly free: what a snapshot stored inside it
/// by an earlier release, or a peak of the log, left behind. Only at start, while nothing
/// else holds the database (redb compacts only with exclusive access); a failure leaves the
/// file as it was and is only logged.
fn compact_if_mostly_free(db: &mut Database, path: &Path) {
    let Ok(file_bytes) = std::fs::metadata(path).map(|m| m.len()) else {
        return;
    };
    if file_bytes < COMPACT_ABOVE_BYTES {
        return;
    }
    let allocated = db.begin_write().and_then(|txn| {
        let stats = txn.stats().map_err(redb::TransactionError::from);
        let _ = txn.abort();
        stats
    });
    let Ok(stats) = allocated else { return };
    let allocated = stats.allocated_pages() * stats.page_size() as u64;
    if allocated.saturating_mul(2) > file_bytes {
        return;
    }
    match db.compact() {
        Ok(_) => tracing::info!(
            file = %path.display(),
            before_bytes = file_bytes,
            after_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            "database compacted"
        ),
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "compaction failed"),
    }
}

fn init_tables(db: &Database) -> Result<(), StorageFailure> {
    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(SNAPSHOT)?;
        let mut meta = txn.open_table(META)?;
        let stored = meta.get(KEY_FORMAT)?.map(|v| v.value().to_vec());
        // The newest format any record may be in, or the layout (snapshots in files).
        // Records keep their own version byte, so an older file opens as it is and its
        // records are read as they were written; the marker moves up so a release that
        // cannot read the new records or layout refuses the file at start instead of later.
        let marker = format_marker();
        match stored.as_deref() {
            None => {
                meta.insert(KEY_FORMAT, [marker].as_slice())?;
            }
            Some([v]) if *v < marker => {
                meta.insert(KEY_FORMAT, [marker].as_slice())?;
            }
            Some([v]) if *v == marker => {}
            Some(other) => {
                return Err(StorageFailure(format!(
                    "data dir was written by a newer atoll (format {other:?})"
                )))
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Decodes every record once: a record that cannot be decoded would otherwise stop Raft
/// later, at whatever moment it is first read.
fn verify_records(db: &Database) -> Result<(), StorageFailure> {
    use atoll_state::snapshot::decode;
    use openraft::{Entry, LogId, SnapshotMeta, Vote};

    use crate::TypeConfig;
    use atoll_cluster::Member;

    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let record = |key: &str| -> Result<Option<Vec<u8>>, StorageFailure> {
        Ok(meta.get(key)?.map(|v| v.value().to_vec()))
    };
    let bad = |what: &str, e: atoll_state::snapshot::DecodeError| {
        StorageFailure(format!("{what} cannot be read: {e}"))
    };
    if let Some(bytes) = record(KEY_VOTE)? {
        decode::<Vote<u64>>(&bytes).map_err(|e| bad("the Raft vote", e))?;
    }
    if let Some(bytes) = record(KEY_COMMITTED)? {
        decode::<Option<LogId<u64>>>(&bytes).map_err(|e| bad("the committed index", e))?;
    }
    if let Some(bytes) = record(KEY_PURGED)? {
        decode::<LogId<u64>>(&bytes).map_err(|e| bad("the last purged index", e))?;
    }
    if let Some(bytes) = record(KEY_NODE_ID)? {
        decode::<u64>(&bytes).map_err(|e| bad("the node id", e))?;
    }
    let log = txn.open_table(LOG)?;
    for item in log.iter()? {
        let (index, value) = item?;
        let entry: Entry<TypeConfig> = decode(value.value())
            .map_err(|e| bad(&format!("Raft log entry {}", index.value()), e))?;
        if entry.log_id.index != index.value() {
            return Err(StorageFailure(format!(
                "Raft log entry {} holds the entry of index {}",
                index.value(),
                entry.log_id.index
            )));
        }
    }
    let snapshot = txn.open_table(SNAPSHOT)?;
    if let Some(bytes) = snapshot.get(KEY_SNAPSHOT_META)? {
        decode::<SnapshotMeta<u64, Member>>(bytes.value())
            .map_err(|e| bad("the snapshot's metadata", e))?;
    }
    if let Some(bytes) = snapshot.get(KEY_SNAPSHOT_DATA)? {
        atoll_state::snapshot::decode_state(bytes.value()).map_err(|e| bad("the snapshot", e))?;
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
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

/// What the data dir holds: the database file's size, the room in use inside it, the log
/// and the snapshot. Opens a write transaction for the page statistics (waiting for the log
/// writer's commit in progress) and aborts it.
pub(crate) fn report(
    db: &Database,
    path: &Path,
    snapshot_dir: &Path,
    snapshot_index: u64,
) -> Result<atoll_cluster::StorageReport, StorageFailure> {
    use redb::ReadableTableMetadata;

    let file_bytes = std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| StorageFailure(format!("cannot read {}: {e}", path.display())))?;
    let (allocated_bytes, stored_bytes) = {
        let txn = db.begin_write()?;
        let stats = txn.stats()?;
        let pages = stats.allocated_pages() * stats.page_size() as u64;
        let stored = stats.stored_bytes();
        txn.abort()?;
        (pages, stored)
    };
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let log_entries = log.len()?;
    let log_first_index = log.first()?.map(|(k, _)| k.value()).unwrap_or(0);
    let log_last_index = log.last()?.map(|(k, _)| k.value()).unwrap_or(0);
    let log_bytes = log.stats()?.stored_bytes();
    let in_force = crate::state_machine::snapshot_file_in_force(db)?;
    let (snapshot_path, snapshot_bytes) = match in_force {
        Some(record) => (
            snapshot_dir.join(&record.name).display().to_string(),
            record.bytes,
        ),
        // A snapshot an earlier release stored inside the database.
        None => (
            String::new(),
            txn.open_table(SNAPSHOT)?.stats()?.stored_bytes(),
        ),
    };
    Ok(atoll_cluster::StorageReport {
        path: path.display().to_string(),
        file_bytes,
        allocated_bytes,
        stored_bytes,
        log_entries,
        log_first_index,
        log_last_index,
        log_bytes,
        snapshot_index,
        snapshot_bytes,
        snapshot_path,
        data_dir_bytes: file_bytes + crate::snapshot_file::directory_bytes(snapshot_dir),
    })
}
