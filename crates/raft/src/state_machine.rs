//! openraft's state machine: applies committed entries to the atoll [`Store`] and keeps the
//! latest snapshot in redb. The state itself lives in memory; the snapshot plus the log
//! after it rebuild it on start.

use std::io::Cursor;
use std::sync::Arc;

use atoll_cluster::Store;
use atoll_state::snapshot::{decode, decode_state, encode, encode_state, EncodeError};
use atoll_state::Outcome;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, ReadableDatabase};

use crate::storage::{StorageFailure, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SNAPSHOT};
use crate::TypeConfig;
use atoll_cluster::Member;

type NodeId = u64;
type Membership = StoredMembership<NodeId, Member>;
type StoredSnapshot = (SnapshotMeta<NodeId, Member>, Vec<u8>);

/// Applies entries to the store; one instance, owned by openraft's state-machine task.
pub(crate) struct StateMachine {
    store: Store,
    db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    snapshot_count: u64,
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
        if let Some((meta, data)) = machine.stored_snapshot()? {
            let state = decode_state(&data)?;
            machine
                .store
                .replace(state, meta.last_log_id.map(|l| l.index).unwrap_or(0));
            machine.last_applied = meta.last_log_id;
            machine.membership = meta.last_membership;
        }
        Ok(machine)
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageFailure> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let meta = table.get(KEY_SNAPSHOT_META)?.map(|v| v.value().to_vec());
        let data = table.get(KEY_SNAPSHOT_DATA)?.map(|v| v.value().to_vec());
        match (meta, data) {
            (Some(meta), Some(data)) => Ok(Some((decode(&meta)?, data))),
            _ => Ok(None),
        }
    }
}

fn save_snapshot(
    db: &Database,
    meta: &SnapshotMeta<NodeId, Member>,
    data: &[u8],
) -> Result<(), StorageFailure> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(SNAPSHOT)?;
        table.insert(KEY_SNAPSHOT_META, encode(meta)?.as_slice())?;
        table.insert(KEY_SNAPSHOT_DATA, data)?;
    }
    txn.commit()?;
    Ok(())
}

/// A snapshot captured at one applied index, written out by openraft's builder task.
pub(crate) struct SnapshotBuilder {
    db: Arc<Database>,
    meta: SnapshotMeta<NodeId, Member>,
    /// The state as encoded when the builder was made (on the apply task).
    data: Result<Vec<u8>, EncodeError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = std::mem::replace(&mut self.data, Ok(Vec::new()))
            .map_err(|e| StorageIOError::write_snapshot(Some(self.meta.signature()), &e))?;
        save_snapshot(&self.db, &self.meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(self.meta.signature()), &e))?;
        tracing::debug!(snapshot = %self.meta.snapshot_id, "snapshot written");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
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
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Captured here, on the apply task, so state and applied index agree.
        let data = self.store.read(encode_state);
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
            data,
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
        save_snapshot(&self.db, meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.store
            .replace(state, meta.last_log_id.map(|l| l.index).unwrap_or(0));
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = self
            .stored_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
