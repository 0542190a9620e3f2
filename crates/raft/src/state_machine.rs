//! openraft's state machine: applies committed entries to the atoll [`Store`] and keeps the
//! latest snapshot in redb. The state itself lives in memory; the snapshot plus the log
//! after it rebuild it on start.
//!
//! A snapshot does not stop writes: on the apply task it takes a copy of the state, which
//! costs O(1) because the tables are persistent maps that share their nodes, and openraft's
//! builder task encodes that copy on a blocking thread, one part at a time
//! (`atoll_state::snapshot::state_parts`), writing the parts to redb in small transactions
//! as it goes, so neither the log's appends wait long for the database nor is the encoded
//! snapshot ever whole in memory. A last, durable transaction makes the new parts the
//! snapshot and deletes the old ones, so a crash midway leaves the previous snapshot.

use std::io::Cursor;
use std::sync::Arc;

use atoll_cluster::Store;
use atoll_state::snapshot::{
    decode, decode_state, decode_state_parts, encode, join_state_parts, split_state_parts,
    state_parts,
};
use atoll_state::{Outcome, State};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::storage::{
    StorageFailure, DAMAGED_ADVICE, DB_FILE, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SNAPSHOT,
};
use crate::TypeConfig;
use atoll_cluster::Member;

type NodeId = u64;
type Membership = StoredMembership<NodeId, Member>;
type Meta = SnapshotMeta<NodeId, Member>;

/// Which parts hold the snapshot (the SNAPSHOT table, beside the meta): present for a
/// snapshot in parts; absent for one stored whole under `KEY_SNAPSHOT_DATA` (earlier
/// releases, or one installed from a leader of an earlier release).
const KEY_SNAPSHOT_PARTS: &str = "snapshot_parts";
/// Parts are stored under `PART_PREFIX{set:016x}/{n:08}`.
const PART_PREFIX: &str = "part/";
/// Parts written per redb transaction (about this many bytes): the log's appends wait at
/// most for one such transaction.
const PARTS_PER_COMMIT_BYTES: usize = 4 << 20;

/// Where a snapshot's parts are: a set drawn per snapshot (so a new snapshot never writes
/// over the parts of the one in force) and how many.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PartSet {
    set: u64,
    parts: u64,
}

fn part_key(set: u64, n: u64) -> String {
    format!("{PART_PREFIX}{set:016x}/{n:08}")
}

/// Applies entries to the store; one instance, owned by openraft's state-machine task.
pub(crate) struct StateMachine {
    store: Store,
    db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    snapshot_count: u64,
}

/// The stored snapshot's body: in parts, or one whole blob.
enum Stored {
    Parts(PartSet),
    Whole(Vec<u8>),
}

impl StateMachine {
    /// Restores from the stored snapshot, if any, into `store`.
    pub(crate) fn restore(store: Store, db: Arc<Database>) -> Result<Self, StorageFailure> {
        let mut machine = StateMachine {
            store,
            db,
            last_applied: None,
            membership: Membership::default(),
            snapshot_count: 0,
        };
        if let Some((meta, body)) = stored_snapshot(&machine.db)? {
            let started = Instant::now();
            let state = load_state(&machine.db, &body)?;
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
    if let Some(parts) = table.get(KEY_SNAPSHOT_PARTS)? {
        return Ok(Some((meta, Stored::Parts(decode(parts.value())?))));
    }
    Ok(table
        .get(KEY_SNAPSHOT_DATA)?
        .map(|data| (meta, Stored::Whole(data.value().to_vec()))))
}

/// Decodes the stored snapshot's state, reading its parts one at a time. A snapshot that
/// does not decode stops the start with the same advice as any damaged record.
fn load_state(db: &Database, body: &Stored) -> Result<State, StorageFailure> {
    let damaged = |e: &dyn std::fmt::Display| {
        StorageFailure(format!(
            "{DB_FILE} is damaged (the snapshot cannot be read: {e}); {DAMAGED_ADVICE}"
        ))
    };
    match body {
        Stored::Whole(data) => decode_state(data).map_err(|e| damaged(&e)),
        Stored::Parts(set) => {
            let txn = db.begin_read()?;
            let table = txn.open_table(SNAPSHOT)?;
            let mut missing = None;
            let mut failure = None;
            let parts =
                (0..set.parts).map_while(|n| match table.get(part_key(set.set, n).as_str()) {
                    Ok(Some(part)) => Some(part),
                    Ok(None) => {
                        missing = Some(n);
                        None
                    }
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                });
            let decoded = decode_state_parts(parts.map(|part| part.value().to_vec()));
            if let Some(e) = failure {
                return Err(e.into());
            }
            if let Some(n) = missing {
                return Err(damaged(&format!("part {n} of {} is missing", set.parts)));
            }
            decoded.map_err(|e| damaged(&e))
        }
    }
}

/// The stored snapshot as one blob (what a follower is sent).
fn stored_blob(db: &Database, body: Stored) -> Result<Vec<u8>, StorageFailure> {
    match body {
        Stored::Whole(data) => Ok(data),
        Stored::Parts(set) => {
            let txn = db.begin_read()?;
            let table = txn.open_table(SNAPSHOT)?;
            let mut parts = Vec::new();
            for n in 0..set.parts {
                let part = table.get(part_key(set.set, n).as_str())?.ok_or_else(|| {
                    StorageFailure(format!("snapshot part {n} of {} is missing", set.parts))
                })?;
                parts.push(part.value().to_vec());
            }
            Ok(join_state_parts(&parts))
        }
    }
}

/// Writes `parts` as a new part set, a few MiB per transaction (not durable on their own:
/// the commit that makes them the snapshot is).
fn write_parts(
    db: &Database,
    parts: impl Iterator<Item = Result<Vec<u8>, StorageFailure>>,
) -> Result<(PartSet, u64), StorageFailure> {
    let set = rand::random::<u64>();
    let mut written = 0u64;
    let mut bytes = 0u64;
    let mut parts = parts.peekable();
    while parts.peek().is_some() {
        // Encoded before the transaction, so the database waits only for the copy.
        let mut batch = Vec::new();
        let mut size = 0;
        while size < PARTS_PER_COMMIT_BYTES {
            let Some(part) = parts.next() else { break };
            let part = part?;
            size += part.len();
            batch.push(part);
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)
            .map_err(|e| StorageFailure(e.to_string()))?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            for part in &batch {
                table.insert(part_key(set, written).as_str(), part.as_slice())?;
                written += 1;
            }
        }
        txn.commit()?;
        bytes += size as u64;
    }
    Ok((
        PartSet {
            set,
            parts: written,
        },
        bytes,
    ))
}

/// Makes `body` the stored snapshot with `meta`, durably, and deletes what the previous
/// snapshot (or an interrupted one) left.
fn commit_snapshot(db: &Database, meta: &Meta, body: Stored) -> Result<(), StorageFailure> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(SNAPSHOT)?;
        table.insert(KEY_SNAPSHOT_META, encode(meta)?.as_slice())?;
        let keep = match &body {
            Stored::Parts(set) => {
                table.insert(KEY_SNAPSHOT_PARTS, encode(set)?.as_slice())?;
                table.remove(KEY_SNAPSHOT_DATA)?;
                Some(format!("{PART_PREFIX}{:016x}/", set.set))
            }
            Stored::Whole(data) => {
                table.insert(KEY_SNAPSHOT_DATA, data.as_slice())?;
                table.remove(KEY_SNAPSHOT_PARTS)?;
                None
            }
        };
        let mut stale = Vec::new();
        for item in table.range(PART_PREFIX..)? {
            let (key, _) = item?;
            let key = key.value();
            if !key.starts_with(PART_PREFIX) {
                break;
            }
            if keep.as_deref().is_none_or(|keep| !key.starts_with(keep)) {
                stale.push(key.to_string());
            }
        }
        for key in stale {
            table.remove(key.as_str())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// A snapshot captured at one applied index, written out by openraft's builder task.
pub(crate) struct SnapshotBuilder {
    db: Arc<Database>,
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
        let meta = self.meta.clone();
        let written = tokio::task::spawn_blocking(move || {
            let parts = state_parts(&state).map(|part| part.map_err(StorageFailure::from));
            let (set, bytes) = write_parts(&db, parts)?;
            commit_snapshot(&db, &meta, Stored::Parts(set))?;
            // The copy is dropped here, off the runtime's threads.
            drop(state);
            Ok::<_, StorageFailure>((set, bytes))
        })
        .await
        .map_err(|e| self.failed(&StorageFailure(format!("snapshot task failed: {e}"))))?;
        let (set, bytes) = written.map_err(|e| self.failed(&e))?;
        atoll_metrics::node()
            .raft
            .snapshot_duration
            .observe_duration(started.elapsed());
        tracing::info!(
            index = self.meta.last_log_id.map(|l| l.index).unwrap_or(0),
            parts = set.parts,
            bytes,
            copy_us = self.copy_micros,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        // openraft keeps only the meta of a snapshot it built; a follower that needs the data
        // gets it from `get_current_snapshot`, which reads it back.
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(Vec::new())),
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
        // persistent maps, so the copy shares their nodes instead of copying the rows.
        let started = Instant::now();
        let state = self.store.read(State::clone);
        let copy_micros = started.elapsed().as_micros() as u64;
        self.snapshot_count += 1;
        let snapshot_id = match self.last_applied {
            Some(last) => format!("{}-{}-{}", last.leader_id, last.index, self.snapshot_count),
            None => format!("empty-{}", self.snapshot_count),
        };
        SnapshotBuilder {
            db: self.db.clone(),
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
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state = decode_state(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let write_failed =
            |e: StorageFailure| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        // Stored as it came: in parts if the leader wrote parts, else whole.
        let body = match split_state_parts(&data) {
            Some(parts) => {
                let parts =
                    parts.map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
                let (set, _) = write_parts(&self.db, parts.into_iter().map(|p| Ok(p.to_vec())))
                    .map_err(write_failed)?;
                Stored::Parts(set)
            }
            None => Stored::Whole(data),
        };
        commit_snapshot(&self.db, meta, body).map_err(write_failed)?;
        self.store
            .replace(state, meta.last_log_id.map(|l| l.index).unwrap_or(0));
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let read_failed = |e: StorageFailure| StorageIOError::read_snapshot(None, &e);
        let Some((meta, body)) = stored_snapshot(&self.db).map_err(read_failed)? else {
            return Ok(None);
        };
        let data = stored_blob(&self.db, body).map_err(read_failed)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_state::Command;
    use openraft::CommittedLeaderId;

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

    fn open(dir: &std::path::Path) -> (Store, StateMachine) {
        let db = crate::storage::open(dir).unwrap();
        let store = Store::default();
        let machine = StateMachine::restore(store.clone(), db).unwrap();
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

    fn part_keys(db: &Database) -> usize {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(SNAPSHOT).unwrap();
        table
            .range(PART_PREFIX..)
            .unwrap()
            .map(|item| item.unwrap().0.value().to_string())
            .take_while(|key| key.starts_with(PART_PREFIX))
            .count()
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

        let current = machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(5_000));
        let sent = decode_state(current.snapshot.get_ref()).unwrap();
        assert_eq!(sent, state_at(5_000), "the snapshot a follower is sent");
        assert_ne!(sent, state_at(6_000));
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
    async fn a_snapshot_of_the_previous_format_loads_and_the_next_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let old_state = state_at(400);
        {
            let db = crate::storage::open(dir.path()).unwrap();
            let meta = Meta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 400)),
                last_membership: Membership::default(),
                snapshot_id: "1-400-1".into(),
            };
            // As earlier releases stored it: one record, format 1, the whole state as JSON.
            let mut data = vec![1u8];
            serde_json::to_writer(&mut data, &old_state).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(SNAPSHOT).unwrap();
                table
                    .insert(KEY_SNAPSHOT_META, encode(&meta).unwrap().as_slice())
                    .unwrap();
                table.insert(KEY_SNAPSHOT_DATA, data.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let (store, mut machine) = open(dir.path());
        assert_eq!(store.read(State::clone), old_state);
        assert_eq!(machine.last_applied.map(|l| l.index), Some(400));

        apply_and_snapshot(&mut machine, 401..=450).await;
        let parts = part_keys(&machine.db);
        assert!(parts >= 3, "head, rows, end: {parts}");
        {
            let txn = machine.db.begin_read().unwrap();
            let table = txn.open_table(SNAPSHOT).unwrap();
            assert!(table.get(KEY_SNAPSHOT_DATA).unwrap().is_none());
        }
        // A second snapshot leaves only its own parts.
        apply_and_snapshot(&mut machine, 451..=460).await;
        assert_eq!(part_keys(&machine.db), parts);
        drop(machine);
        let (store, _) = open(dir.path());
        assert_eq!(store.read(State::clone), state_at(460));
    }

    #[tokio::test]
    async fn a_snapshot_missing_a_part_stops_the_start_with_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_, mut machine) = open(dir.path());
            apply_and_snapshot(&mut machine, 1..=100).await;
            let txn = machine.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(SNAPSHOT).unwrap();
                let key = table
                    .range(PART_PREFIX..)
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .0
                    .value()
                    .to_string();
                table.remove(key.as_str()).unwrap();
            }
            txn.commit().unwrap();
        }
        let db = crate::storage::open(dir.path()).unwrap();
        let Err(e) = StateMachine::restore(Store::default(), db) else {
            panic!("a snapshot without its head loaded");
        };
        assert!(e.0.contains(DB_FILE), "{e}");
        assert!(e.0.contains("part 0 of"), "{e}");
        assert!(e.0.contains("move the data dir away"), "{e}");
    }

    #[tokio::test]
    async fn a_snapshot_installed_from_a_leader_is_stored_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 300)),
            last_membership: Membership::default(),
            snapshot_id: "2-300-1".into(),
        };
        let state = state_at(300);
        {
            let (store, mut machine) = open(dir.path());
            let blob = atoll_state::snapshot::encode_state(&state).unwrap();
            machine
                .install_snapshot(&meta, Box::new(Cursor::new(blob)))
                .await
                .unwrap();
            assert_eq!(store.read(State::clone), state);
            assert!(part_keys(&machine.db) >= 3);
        }
        let (store, _) = open(dir.path());
        assert_eq!(store.read(State::clone), state);
    }
}
