//! openraft's log storage over redb. Every append is committed durably before openraft
//! is told it is flushed, so an acknowledged write survives `kill -9`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use atoll_state::snapshot::{decode, encode};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::storage::{
    get_meta, put_meta, StorageFailure, KEY_COMMITTED, KEY_PURGED, KEY_VOTE, LOG, META,
};
use crate::TypeConfig;

type NodeId = u64;

/// The Raft log of this node.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn read_range(
        &self,
        start: u64,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageFailure> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for item in table.range((Bound::Included(start), end))? {
            let (_, value) = item?;
            entries.push(decode(value.value())?);
        }
        Ok(entries)
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageFailure> {
        match get_meta(&self.db, key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes)?)),
        }
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageFailure> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let last = table.last()?.map(|(_, value)| value.value().to_vec());
        match last {
            None => Ok(None),
            Some(bytes) => {
                let entry: Entry<TypeConfig> = decode(&bytes)?;
                Ok(Some(entry.log_id))
            }
        }
    }

    fn append_durably(&self, entries: Vec<Entry<TypeConfig>>) -> Result<(), StorageFailure> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LOG)?;
            for entry in &entries {
                table.insert(entry.log_id.index, encode(entry)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn remove_range(
        &self,
        from: Bound<u64>,
        to: Bound<u64>,
        purged: Option<&LogId<NodeId>>,
    ) -> Result<(), StorageFailure> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LOG)?;
            table.retain_in::<u64, _>((from, to), |_, _| false)?;
            if let Some(purged) = purged {
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_PURGED, encode(purged)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn read_err(e: StorageFailure) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: StorageFailure) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => *i + 1,
            Bound::Unbounded => 0,
        };
        let end = range.end_bound().cloned();
        self.read_range(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.meta(KEY_PURGED).map_err(read_err)?;
        let last_log_id = self
            .last_entry_log_id()
            .map_err(read_err)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        put_meta(&self.db, &[(KEY_VOTE, &bytes)]).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(&committed).map_err(|e| write_err(e.into()))?;
        put_meta(&self.db, &[(KEY_COMMITTED, &bytes)]).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        match self.append_durably(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.0.clone())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.remove_range(Bound::Included(log_id.index), Bound::Unbounded, None)
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.remove_range(
            Bound::Unbounded,
            Bound::Included(log_id.index),
            Some(&log_id),
        )
        .map_err(write_err)
    }
}
