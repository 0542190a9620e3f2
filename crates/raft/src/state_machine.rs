//! openraft's state machine: applies committed entries to the atoll [`Store`] and keeps the
//! latest snapshot as a file of its own (`snapshot_file.rs`), named by redb's meta. The
//! state itself lives in memory; the snapshot plus the log after it rebuild it on start.
//!
//! A snapshot does not stop writes: on the apply task it takes a copy of the state, which
//! costs O(1) because the tables are persistent maps that share their nodes (the derived
//! indexes, which are not, are left out: the snapshot does not hold them), and openraft's
//! builder task encodes that copy on a blocking thread, one part at a time
//! (`atoll_state::snapshot::state_parts`), writing the parts to a new file as it goes, so
//! the log's appends never wait for it and the encoded snapshot is never whole in memory.
//! The file is synced as it grows and at the end, and renamed into place; then one durable
//! redb transaction makes it the snapshot, and only then is the previous file deleted, so a
//! crash midway leaves the previous snapshot in force.
//!
//! Earlier releases kept the snapshot inside redb (in parts in the `snapshot` table, or
//! before that as one record); such a snapshot still loads and is sent to followers, and
//! the next snapshot, written as a file, deletes it from redb.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atoll_cluster::Store;
use atoll_state::snapshot::{decode, decode_state, decode_state_parts, encode, state_parts};
use atoll_state::{Outcome, State};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::snapshot_file::{self, SnapshotFile};
use crate::storage::{
    StorageFailure, DAMAGED_ADVICE, DB_FILE, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SNAPSHOT,
};
use crate::TypeConfig;
use atoll_cluster::Member;

type NodeId = u64;
type Membership = StoredMembership<NodeId, Member>;
type Meta = SnapshotMeta<NodeId, Member>;

/// Which file holds the snapshot (the SNAPSHOT table, beside the meta): present for a
/// snapshot in a file of its own.
pub(crate) const KEY_SNAPSHOT_FILE: &str = "snapshot_file";
/// Which parts hold the snapshot, for a snapshot in parts inside redb (the previous
/// release's layout); absent for one stored whole under `KEY_SNAPSHOT_DATA` (the one
/// before).
const KEY_SNAPSHOT_PARTS: &str = "snapshot_parts";
/// Parts of the previous layout are stored under `PART_PREFIX{set:016x}/{n:08}`.
const PART_PREFIX: &str = "part/";

/// Where a snapshot's parts are, in the previous layout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PartSet {
    set: u64,
    parts: u64,
}

/// The snapshot file in force: its name in the snapshot directory and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    pub(crate) name: String,
    pub(crate) bytes: u64,
}

fn part_key(set: u64, n: u64) -> String {
    format!("{PART_PREFIX}{set:016x}/{n:08}")
}

/// Applies entries to the store; one instance, owned by openraft's state-machine task.
pub(crate) struct StateMachine {
    store: Store,
    db: Arc<Database>,
    /// `DATA_DIR/snapshots`.
    snapshot_dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    snapshot_count: u64,
}

/// Where the stored snapshot's body is.
enum Stored {
    File(FileRecord),
    Parts(PartSet),
    Whole(Vec<u8>),
}

impl StateMachine {
    /// Restores from the stored snapshot, if any, into `store`, and deletes what an
    /// interrupted snapshot left in `data_dir`.
    pub(crate) fn restore(
        store: Store,
        db: Arc<Database>,
        data_dir: &Path,
    ) -> Result<Self, StorageFailure> {
        let mut machine = StateMachine {
            store,
            db,
            snapshot_dir: snapshot_file::directory(data_dir),
            last_applied: None,
            membership: Membership::default(),
            snapshot_count: 0,
        };
        let stored = stored_snapshot(&machine.db)?;
        let in_force = match &stored {
            Some((_, Stored::File(record))) => Some(record.name.as_str()),
            _ => None,
        };
        snapshot_file::remove_stray(&machine.snapshot_dir, in_force)?;
        if let Some((meta, body)) = stored {
            let started = Instant::now();
            let state = load_state(&machine.db, &machine.snapshot_dir, &body)?;
            tracing::info!(
                index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
                took_ms = started.elapsed().as_millis() as u64,
                "snapshot loaded"
            );
            machine
                .store
                .replace(state, meta.last_log_id.map(|l| l.index).unwrap_or(0));
            machine.last_applied = meta.last_log_id;
            machine.membership = meta.last_membership;
        }
        Ok(machine)
    }
}

/// The stored snapshot's meta and where its body is.
fn stored_snapshot(db: &Database) -> Result<Option<(Meta, Stored)>, StorageFailure> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let Some(meta) = table.get(KEY_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let meta: Meta = decode(meta.value())?;
    if let Some(file) = table.get(KEY_SNAPSHOT_FILE)? {
        return Ok(Some((meta, Stored::File(decode(file.value())?))));
    }
    if let Some(parts) = table.get(KEY_SNAPSHOT_PARTS)? {
        return Ok(Some((meta, Stored::Parts(decode(parts.value())?))));
    }
    Ok(table
        .get(KEY_SNAPSHOT_DATA)?
        .map(|data| (meta, Stored::Whole(data.value().to_vec()))))
}

/// The snapshot file in force, if the snapshot is in a file (for the storage report).
pub(crate) fn snapshot_file_in_force(db: &Database) -> Result<Option<FileRecord>, StorageFailure> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let record = table.get(KEY_SNAPSHOT_FILE)?;
    Ok(match record {
        Some(record) => Some(decode(record.value())?),
        None => None,
    })
}

/// A snapshot in redb that cannot be read: the same advice as any damaged record.
fn damaged(e: &dyn std::fmt::Display) -> StorageFailure {
    StorageFailure(format!(
        "{DB_FILE} is damaged (the snapshot cannot be read: {e}); {DAMAGED_ADVICE}"
    ))
}

/// Decodes the stored snapshot's state, reading its parts one at a time.
fn load_state(db: &Database, dir: &Path, body: &Stored) -> Result<State, StorageFailure> {
    match body {
        Stored::File(record) => snapshot_file::read_state(&dir.join(&record.name)),
        Stored::Whole(data) => decode_state(data).map_err(|e| damaged(&e)),
        Stored::Parts(set) => {
            let mut failure = None;
            let parts = stored_parts(db, *set)?.map_while(|part| match part {
                Ok(part) => Some(part),
                Err(e) => {
                    failure = Some(e);
                    None
                }
            });
            let decoded = decode_state_parts(parts);
            if let Some(e) = failure {
                return Err(e);
            }
            decoded.map_err(|e| damaged(&e))
        }
    }
}

/// The parts of a snapshot of the previous layout, read one at a time.
fn stored_parts(
    db: &Database,
    set: PartSet,
) -> Result<impl Iterator<Item = Result<Vec<u8>, StorageFailure>>, StorageFailure> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    Ok(
        (0..set.parts).map(move |n| match table.get(part_key(set.set, n).as_str())? {
            Some(part) => Ok(part.value().to_vec()),
            None => Err(damaged(&format!("part {n} of {} is missing", set.parts))),
        }),
    )
}

/// Makes the file `record` the stored snapshot with `meta`, durably, and deletes from redb
/// what a snapshot of an earlier layout left there. Refused (`false`) when a newer snapshot
/// is already in force: one installed from the leader while this one was being written.
fn commit_file(db: &Database, meta: &Meta, record: &FileRecord) -> Result<bool, StorageFailure> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(SNAPSHOT)?;
        let stored = match table.get(KEY_SNAPSHOT_META)? {
            Some(stored) => Some(decode::<Meta>(stored.value())?),
            None => None,
        };
        if stored.is_some_and(|stored| stored.last_log_id > meta.last_log_id) {
            return Ok(false);
        }
        table.insert(KEY_SNAPSHOT_META, encode(meta)?.as_slice())?;
        table.insert(KEY_SNAPSHOT_FILE, encode(record)?.as_slice())?;
        table.remove(KEY_SNAPSHOT_PARTS)?;
        table.remove(KEY_SNAPSHOT_DATA)?;
        let mut stale = Vec::new();
        for item in table.range(PART_PREFIX..)? {
            let (key, _) = item?;
            let key = key.value();
            if !key.starts_with(PART_PREFIX) {
                break;
            }
            stale.push(key.to_string());
        }
        for key in stale {
            table.remove(key.as_str())?;
        }
    }
    txn.commit()?;
    Ok(true)
}

/// The name of the snapshot file for `meta`.
fn name_of(meta: &Meta) -> String {
    let (term, index) = meta
        .last_log_id
        .map_or((0, 0), |l| (l.leader_id.term, l.index));
    snapshot_file::file_name(term, index)
}

/// Commits a snapshot file written or received, then deletes the files it replaced (or
/// itself, when a newer one came first). Returns whether it is in force.
fn put_in_force(
    db: &Database,
    dir: &Path,
    meta: &Meta,
    record: &FileRecord,
) -> Result<bool, StorageFailure> {
    let in_force = commit_file(db, meta, record)?;
    if in_force {
        snapshot_file::remove_replaced(dir, &record.name)?;
    } else if let Some(current) = snapshot_file_in_force(db)? {
        if current.name != record.name {
            let _ = std::fs::remove_file(dir.join(&record.name));
        }
    }
    Ok(in_force)
}

/// A snapshot captured at one applied index, written out by openraft's builder task.
pub(crate) struct SnapshotBuilder {
    db: Arc<Database>,
    snapshot_dir: PathBuf,
    meta: Meta,
    /// The state when the builder was made (on the apply task): a copy sharing its nodes
    /// with the live state.
    state: Option<State>,
    /// How long taking the copy held the apply task.
    copy_micros: u64,
}

impl SnapshotBuilder {
    fn failed(&self, e: &StorageFailure) -> StorageError<NodeId> {
        StorageIOError::write_snapshot(Some(self.meta.signature()), e).into()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let started = Instant::now();
        let state = self.state.take().unwrap_or_default();
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let meta = self.meta.clone();
        let written = tokio::task::spawn_blocking(move || {
            let name = name_of(&meta);
            let parts = state_parts(&state).map(|part| part.map_err(StorageFailure::from));
            // `opened` is open since before the rename: a newer snapshot committed meanwhile
            // may delete the file, and openraft still gets the one it asked for.
            let written = snapshot_file::write_snapshot(&dir, &name, parts)?;
            // The copy is dropped here, off the runtime's threads.
            drop(state);
            let record = FileRecord {
                name,
                bytes: written.bytes,
            };
            put_in_force(&db, &dir, &meta, &record)?;
            Ok::<_, StorageFailure>(written)
        })
        .await
        .map_err(|e| self.failed(&StorageFailure(format!("snapshot task failed: {e}"))))?;
        let written = written.map_err(|e| self.failed(&e))?;
        atoll_metrics::node()
            .raft
            .snapshot_duration
            .observe_duration(started.elapsed());
        tracing::info!(
            index = self.meta.last_log_id.map(|l| l.index).unwrap_or(0),
            parts = written.parts,
            bytes = written.bytes,
            copy_us = self.copy_micros,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(written.opened),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let started = Instant::now();
        let mut outcomes = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let outcome = match &entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(command) => self.store.apply(index, command),
                EntryPayload::Membership(membership) => {
                    self.membership = Membership::new(Some(entry.log_id), membership.clone());
                    Outcome::Done
                }
            };
            self.last_applied = Some(entry.log_id);
            self.store.set_applied(index);
            outcomes.push(outcome);
        }
        let metrics = &atoll_metrics::node().raft;
        metrics.apply_duration.observe_duration(started.elapsed());
        metrics.applied_entries.add(outcomes.len() as u64);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Taken here, on the apply task, so state and applied index agree; the tables are
        // persistent maps, so the copy shares their nodes instead of copying the rows, and the
        // derived indexes (by service name, ...), which the snapshot does not hold, are left.
        let started = Instant::now();
        let state = self.store.read(State::replicated_copy);
        let copy_micros = started.elapsed().as_micros() as u64;
        self.snapshot_count += 1;
        let snapshot_id = match self.last_applied {
            Some(last) => format!("{}-{}-{}", last.leader_id, last.index, self.snapshot_count),
            None => format!("empty-{}", self.snapshot_count),
        };
        SnapshotBuilder {
            db: self.db.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            state: Some(state),
            copy_micros,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotFile>, StorageError<NodeId>> {
        let dir = self.snapshot_dir.clone();
        let file = tokio::task::spawn_blocking(move || SnapshotFile::receive(&dir))
            .await
            .map_err(|e| StorageFailure(format!("snapshot task failed: {e}")))
            .and_then(|file| file)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<NodeId>> {
        let write_failed =
            |e: &StorageFailure| StorageIOError::write_snapshot(Some(meta.signature()), e);
        let mut received = snapshot;
        received.sync().await.map_err(|e| write_failed(&e))?;
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let stored_meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || {
            let mut received = if received.is_received_in(&dir) {
                received
            } else {
                Box::new(received.copy_into(&dir).map_err(|e| (false, e))?)
            };
            // Decoded before it is renamed into place: a snapshot that does not decode never
            // replaces the one in force.
            let state = snapshot_file::read_state(received.path()).map_err(|e| (true, e))?;
            let name = name_of(&stored_meta);
            let bytes = received.persist(&name).map_err(|e| (false, e))?;
            let record = FileRecord { name, bytes };
            let in_force =
                put_in_force(&db, &dir, &stored_meta, &record).map_err(|e| (false, e))?;
            Ok::<_, (bool, StorageFailure)>((state, in_force))
        })
        .await
        .map_err(|e| (false, StorageFailure(format!("snapshot task failed: {e}"))))
        .and_then(|installed| installed);
        let (state, in_force) = match installed {
            Ok(installed) => installed,
            Err((true, e)) => {
                return Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into())
            }
            Err((false, e)) => return Err(write_failed(&e).into()),
        };
        if !in_force {
            tracing::warn!(
                index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
                "a newer snapshot than the one installed is stored"
            );
        }
        self.store
            .replace(state, meta.last_log_id.map(|l| l.index).unwrap_or(0));
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let current = tokio::task::spawn_blocking(move || current_snapshot(&db, &dir))
            .await
            .map_err(|e| StorageFailure(format!("snapshot task failed: {e}")))
            .and_then(|current| current)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// The snapshot in force, opened for sending. A snapshot of an earlier layout (in redb) is
/// first copied into a temporary file, deleted once sent.
fn current_snapshot(
    db: &Database,
    dir: &Path,
) -> Result<Option<(Meta, SnapshotFile)>, StorageFailure> {
    // A snapshot written meanwhile can replace (and delete) the file between reading the
    // meta and opening it: then the meta is read again.
    for _ in 0..3 {
        let Some((meta, body)) = stored_snapshot(db)? else {
            return Ok(None);
        };
        let file = match body {
            Stored::File(record) => {
                let path = dir.join(&record.name);
                if !path.exists() {
                    continue;
                }
                SnapshotFile::open(&path)?
            }
            Stored::Parts(set) => SnapshotFile::temporary_from(dir, stored_parts(db, set)?)?,
            Stored::Whole(data) => {
                let state = decode_state(&data).map_err(|e| damaged(&e))?;
                let parts = state_parts(&state).map(|part| part.map_err(StorageFailure::from));
                SnapshotFile::temporary_from(dir, parts)?
            }
        };
        return Ok(Some((meta, file)));
    }
    Err(StorageFailure(
        "the snapshot file kept being replaced while it was opened".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_state::snapshot::encode_state;
    use atoll_state::Command;
    use openraft::CommittedLeaderId;
    use std::io::SeekFrom;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use crate::snapshot_file::{PendingFile, SNAPSHOT_DIR};

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    /// The i-th command of the test log: puts over 300 keys, every 7th a delete.
    fn command(i: u64) -> Command {
        let key = format!("k/{:03}", i % 300);
        if i.is_multiple_of(7) {
            Command::KvDelete {
                key,
                recurse: false,
                cas: None,
            }
        } else {
            Command::KvSet {
                key,
                value: i.to_string().into_bytes(),
                flags: 0,
                cas: None,
            }
        }
    }

    /// The state after applying entries 1..=last.
    fn state_at(last: u64) -> State {
        let mut state = State::default();
        for i in 1..=last {
            state.apply(i, &command(i));
        }
        state
    }

    fn meta_at(term: u64, index: u64) -> Meta {
        Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(term, 1), index)),
            last_membership: Membership::default(),
            snapshot_id: format!("{term}-{index}-1"),
        }
    }

    fn open(dir: &std::path::Path) -> (Store, StateMachine) {
        let db = crate::storage::open(dir).unwrap();
        let store = Store::default();
        let machine = StateMachine::restore(store.clone(), db, dir).unwrap();
        (store, machine)
    }

    /// Applies the test log's entries in `indexes`, then takes a snapshot at the last one.
    async fn apply_and_snapshot(
        machine: &mut StateMachine,
        indexes: std::ops::RangeInclusive<u64>,
    ) {
        machine
            .apply(indexes.map(|i| entry(i, command(i))))
            .await
            .unwrap();
        machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }

    /// The files in the snapshot directory, sorted.
    fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOT_DIR))
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Rows of the SNAPSHOT table that hold a snapshot body (the earlier layouts).
    fn bodies_in_redb(db: &Database) -> usize {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(SNAPSHOT).unwrap();
        let parts = table
            .range(PART_PREFIX..)
            .unwrap()
            .map(|item| item.unwrap().0.value().to_string())
            .take_while(|key| key.starts_with(PART_PREFIX))
            .count();
        parts
            + usize::from(table.get(KEY_SNAPSHOT_DATA).unwrap().is_some())
            + usize::from(table.get(KEY_SNAPSHOT_PARTS).unwrap().is_some())
    }

    /// What openraft sends a follower: the snapshot data read from its start.
    async fn sent_bytes(snapshot: &mut SnapshotFile) -> Vec<u8> {
        let end = snapshot.seek(SeekFrom::End(0)).await.unwrap();
        snapshot.seek(SeekFrom::Start(0)).await.unwrap();
        let mut bytes = Vec::new();
        snapshot.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(bytes.len() as u64, end, "the length openraft chunks by");
        bytes
    }

    /// Stores `state` as the release before snapshot files did: parts in the SNAPSHOT table.
    fn store_in_redb_parts(db: &Database, meta: &Meta, state: &State) {
        let set = PartSet {
            set: 0x5eed,
            parts: state_parts(state).count() as u64,
        };
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SNAPSHOT).unwrap();
            for (n, part) in state_parts(state).enumerate() {
                table
                    .insert(
                        part_key(set.set, n as u64).as_str(),
                        part.unwrap().as_slice(),
                    )
                    .unwrap();
            }
            table
                .insert(KEY_SNAPSHOT_PARTS, encode(&set).unwrap().as_slice())
                .unwrap();
            table
                .insert(KEY_SNAPSHOT_META, encode(meta).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn a_snapshot_taken_while_writes_go_on_holds_exactly_the_state_at_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut machine) = open(dir.path());
        machine
            .apply((1..=5_000).map(|i| entry(i, command(i))))
            .await
            .unwrap();
        let mut builder = machine.get_snapshot_builder().await;
        // The snapshot is written while later entries change, add and delete its rows.
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        for i in 5_001..=6_000 {
            machine.apply([entry(i, command(i))]).await.unwrap();
            if i.is_multiple_of(100) {
                tokio::task::yield_now().await;
            }
        }
        let built = build.await.unwrap().unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(5_000));
        assert_eq!(store.read(State::clone), state_at(6_000), "the live state");
        assert_eq!(snapshot_files(dir.path()), vec!["1-5000.snap".to_string()]);
        assert_eq!(bodies_in_redb(&machine.db), 0);

        let mut current = machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(5_000));
        let sent = sent_bytes(&mut current.snapshot).await;
        assert_eq!(
            sent,
            encode_state(&state_at(5_000)).unwrap(),
            "the bytes sent"
        );
        assert_eq!(decode_state(&sent).unwrap(), state_at(5_000));
        drop(machine);

        let (restored, machine) = open(dir.path());
        assert_eq!(
            restored.read(State::clone),
            state_at(5_000),
            "the stored snapshot"
        );
        assert_eq!(machine.last_applied.map(|l| l.index), Some(5_000));
        assert_eq!(restored.applied(), 5_000);
    }

    #[tokio::test]
    async fn a_new_snapshot_file_replaces_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut machine) = open(dir.path());
        apply_and_snapshot(&mut machine, 1..=100).await;
        assert_eq!(snapshot_files(dir.path()), vec!["1-100.snap".to_string()]);
        // A follower may still be reading the previous file: its handle keeps it readable.
        let mut sending = machine.get_current_snapshot().await.unwrap().unwrap();
        apply_and_snapshot(&mut machine, 101..=250).await;
        assert_eq!(snapshot_files(dir.path()), vec!["1-250.snap".to_string()]);
        let sent = sent_bytes(&mut sending.snapshot).await;
        assert_eq!(decode_state(&sent).unwrap(), state_at(100));
        let record = snapshot_file_in_force(&machine.db).unwrap().unwrap();
        let size = std::fs::metadata(dir.path().join(SNAPSHOT_DIR).join(&record.name))
            .unwrap()
            .len();
        assert_eq!(record.bytes, size);
    }

    #[tokio::test]
    async fn a_snapshot_whole_in_redb_loads_and_the_next_one_moves_it_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let old_state = state_at(400);
        {
            let db = crate::storage::open(dir.path()).unwrap();
            // As the first releases stored it: one record, format 1, the whole state as JSON.
            let mut data = vec![1u8];
            serde_json::to_writer(&mut data, &old_state).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(SNAPSHOT).unwrap();
                table
                    .insert(
                        KEY_SNAPSHOT_META,
                        encode(&meta_at(1, 400)).unwrap().as_slice(),
                    )
                    .unwrap();
                table.insert(KEY_SNAPSHOT_DATA, data.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let (store, mut machine) = open(dir.path());
        assert_eq!(store.read(State::clone), old_state);
        assert_eq!(machine.last_applied.map(|l| l.index), Some(400));
        // Sent to a follower as a snapshot file would be, from a temporary copy.
        let mut current = machine.get_current_snapshot().await.unwrap().unwrap();
        let sent = sent_bytes(&mut current.snapshot).await;
        assert_eq!(decode_state(&sent).unwrap(), old_state);
        drop(current);
        assert!(snapshot_files(dir.path()).is_empty(), "the copy is gone");

        apply_and_snapshot(&mut machine, 401..=450).await;
        assert_eq!(bodies_in_redb(&machine.db), 0, "migrated out of redb");
        assert_eq!(snapshot_files(dir.path()), vec!["1-450.snap".to_string()]);
        drop(machine);
        let (store, _) = open(dir.path());
        assert_eq!(store.read(State::clone), state_at(450));
    }

    #[tokio::test]
    async fn a_snapshot_in_redb_parts_loads_and_the_next_one_moves_it_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::storage::open(dir.path()).unwrap();
            store_in_redb_parts(&db, &meta_at(1, 300), &state_at(300));
        }
        let (store, mut machine) = open(dir.path());
        assert_eq!(store.read(State::clone), state_at(300));
        let mut current = machine.get_current_snapshot().await.unwrap().unwrap();
        let sent = sent_bytes(&mut current.snapshot).await;
        assert_eq!(sent, encode_state(&state_at(300)).unwrap());
        drop(current);

        apply_and_snapshot(&mut machine, 301..=320).await;
        assert_eq!(bodies_in_redb(&machine.db), 0, "migrated out of redb");
        assert_eq!(snapshot_files(dir.path()), vec!["1-320.snap".to_string()]);
        drop(machine);
        let (store, _) = open(dir.path());
        assert_eq!(store.read(State::clone), state_at(320));
    }

    #[tokio::test]
    async fn a_snapshot_in_redb_missing_a_part_stops_the_start_with_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::storage::open(dir.path()).unwrap();
            store_in_redb_parts(&db, &meta_at(1, 100), &state_at(100));
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(SNAPSHOT).unwrap();
                table.remove(part_key(0x5eed, 0).as_str()).unwrap();
            }
            txn.commit().unwrap();
        }
        let db = crate::storage::open(dir.path()).unwrap();
        let Err(e) = StateMachine::restore(Store::default(), db, dir.path()) else {
            panic!("a snapshot without its head loaded");
        };
        assert!(e.0.contains(DB_FILE), "{e}");
        assert!(e.0.contains("part 0 of"), "{e}");
        assert!(e.0.contains("move the data dir away"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_or_damaged_snapshot_file_stops_the_start_with_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_, mut machine) = open(dir.path());
            apply_and_snapshot(&mut machine, 1..=100).await;
        }
        let path = dir.path().join(SNAPSHOT_DIR).join("1-100.snap");
        let whole = std::fs::read(&path).unwrap();
        for (damage, expected) in [
            (whole[..whole.len() - 10].to_vec(), "cut inside a part"),
            (b"NOTASNAP".repeat(4), "not an atoll snapshot"),
            (whole[..20].to_vec(), "cut inside a part's length"),
        ] {
            std::fs::write(&path, &damage).unwrap();
            let db = crate::storage::open(dir.path()).unwrap();
            let Err(e) = StateMachine::restore(Store::default(), db, dir.path()) else {
                panic!("a damaged snapshot loaded");
            };
            assert!(e.0.contains("1-100.snap"), "{e}");
            assert!(e.0.contains(expected), "{e}");
            assert!(e.0.contains("move the data dir away"), "{e}");
        }
        std::fs::remove_file(&path).unwrap();
        let db = crate::storage::open(dir.path()).unwrap();
        let Err(e) = StateMachine::restore(Store::default(), db, dir.path()) else {
            panic!("a missing snapshot loaded");
        };
        assert!(e.0.contains("is missing"), "{e}");
    }

    /// A process killed at any step of writing a snapshot leaves the previous one in force,
    /// and the next start removes what the interrupted write left.
    #[tokio::test]
    async fn a_snapshot_write_cut_short_at_any_step_leaves_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join(SNAPSHOT_DIR);
        {
            let (_, mut machine) = open(dir.path());
            apply_and_snapshot(&mut machine, 1..=100).await;
        }
        let newer = state_at(200);
        let parts: Vec<Vec<u8>> = state_parts(&newer).map(Result::unwrap).collect();
        assert!(parts.len() >= 3);

        // Killed while writing the parts: a temporary file with part of the snapshot, the
        // last part cut in the middle.
        let mut pending = PendingFile::begin(&snapshots, "1-200.snap").unwrap();
        pending.append_part(&parts[0]).unwrap();
        pending
            .append_part(&parts[1][..parts[1].len() / 2])
            .unwrap();
        // Not dropped: a killed process removes nothing.
        std::mem::forget(pending);
        assert_eq!(snapshot_files(dir.path()).len(), 2);
        {
            let (store, machine) = open(dir.path());
            assert_eq!(store.read(State::clone), state_at(100));
            assert_eq!(machine.last_applied.map(|l| l.index), Some(100));
        }
        assert_eq!(snapshot_files(dir.path()), vec!["1-100.snap".to_string()]);

        // Killed after the file was complete and renamed, before redb named it.
        let mut pending = PendingFile::begin(&snapshots, "1-200.snap").unwrap();
        for part in &parts {
            pending.append_part(part).unwrap();
        }
        drop(pending.finish().unwrap());
        assert_eq!(snapshot_files(dir.path()).len(), 2);
        {
            let (store, _) = open(dir.path());
            assert_eq!(store.read(State::clone), state_at(100));
        }
        assert_eq!(snapshot_files(dir.path()), vec!["1-100.snap".to_string()]);

        // Killed after redb named the new file, before the previous file was deleted.
        {
            let (_, mut machine) = open(dir.path());
            apply_and_snapshot(&mut machine, 101..=200).await;
        }
        std::fs::write(snapshots.join("1-100.snap"), b"left behind").unwrap();
        let (store, _) = open(dir.path());
        assert_eq!(store.read(State::clone), state_at(200));
        assert_eq!(snapshot_files(dir.path()), vec!["1-200.snap".to_string()]);
    }

    #[tokio::test]
    async fn a_snapshot_received_in_chunks_is_stored_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let meta = meta_at(2, 300);
        let state = state_at(300);
        let blob = encode_state(&state).unwrap();
        {
            let (store, mut machine) = open(dir.path());
            // As openraft writes chunks: each at its offset, then a shutdown.
            let mut received = machine.begin_receiving_snapshot().await.unwrap();
            for (n, chunk) in blob.chunks(1000).enumerate() {
                received
                    .seek(SeekFrom::Start((n * 1000) as u64))
                    .await
                    .unwrap();
                received.write_all(chunk).await.unwrap();
            }
            received.shutdown().await.unwrap();
            machine.install_snapshot(&meta, received).await.unwrap();
            assert_eq!(store.read(State::clone), state);
            assert_eq!(snapshot_files(dir.path()), vec!["2-300.snap".to_string()]);
            // A chunked receive abandoned midway leaves nothing.
            let mut abandoned = machine.begin_receiving_snapshot().await.unwrap();
            abandoned.write_all(&blob[..100]).await.unwrap();
            drop(abandoned);
            assert_eq!(snapshot_files(dir.path()), vec!["2-300.snap".to_string()]);
        }
        let (store, machine) = open(dir.path());
        assert_eq!(store.read(State::clone), state);
        assert_eq!(machine.last_applied, meta.last_log_id);
    }

    #[tokio::test]
    async fn a_snapshot_received_that_does_not_decode_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut machine) = open(dir.path());
        apply_and_snapshot(&mut machine, 1..=100).await;
        let mut received = machine.begin_receiving_snapshot().await.unwrap();
        let blob = encode_state(&state_at(300)).unwrap();
        received.write_all(&blob[..blob.len() - 3]).await.unwrap();
        received.shutdown().await.unwrap();
        assert!(machine
            .install_snapshot(&meta_at(2, 300), received)
            .await
            .is_err());
        assert_eq!(store.read(State::clone), state_at(100));
        assert_eq!(snapshot_files(dir.path()), vec!["1-100.snap".to_string()]);
    }

    #[tokio::test]
    async fn a_snapshot_of_an_earlier_leader_release_is_received_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = state_at(50);
        let (store, mut machine) = open(dir.path());
        let mut received = machine.begin_receiving_snapshot().await.unwrap();
        received.write_all(&encode(&state).unwrap()).await.unwrap();
        received.shutdown().await.unwrap();
        machine
            .install_snapshot(&meta_at(1, 50), received)
            .await
            .unwrap();
        assert_eq!(store.read(State::clone), state);
        drop(machine);
        let (store, _) = open(dir.path());
        assert_eq!(store.read(State::clone), state);
    }
}
