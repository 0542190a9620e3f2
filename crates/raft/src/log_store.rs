//! openraft's log storage over redb, with group commit.
//!
//! Every change to the log and to the Raft metadata goes through one writer thread, in the
//! order openraft asked for it. The thread takes everything queued at the moment it is free
//! and writes it in one redb transaction, so concurrent writes share one durable commit and
//! one fsync: while one commit syncs, the next batch gathers. An append is reported flushed
//! to openraft (its `LogFlushed` callback) only after the transaction holding it committed
//! durably, so an acknowledged write survives `kill -9`.
//!
//! Appended entries are also kept in memory (the tail) until they are durable and no longer
//! among the newest: replication and the apply task read recent entries from there without
//! touching the file, and an entry openraft already replicates is readable before its commit
//! finished.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

use atoll_state::snapshot::{decode, encode};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::storage::{get_meta, StorageFailure, KEY_COMMITTED, KEY_PURGED, KEY_VOTE, LOG, META};
use crate::TypeConfig;

type NodeId = u64;
type Shared = Arc<Entry<TypeConfig>>;

/// Durable entries kept in memory besides the ones not yet durable.
const TAIL_KEEP: u64 = 1024;
/// Most jobs written in one transaction; a larger queue is written in several.
const MAX_GROUP: usize = 4096;
/// How long a committed index waits for a transaction to ride along with before it is
/// written alone.
const HOLD_COMMITTED: std::time::Duration = std::time::Duration::from_secs(1);

/// The Raft log of this node.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
    tail: Arc<Mutex<Tail>>,
    writer: mpsc::Sender<Job>,
}

/// Appended entries by index, the last index known durable, and the committed index last
/// saved (which the writer may still hold back, see `write_loop`).
#[derive(Default)]
struct Tail {
    entries: BTreeMap<u64, Shared>,
    durable: u64,
    committed: Option<Option<LogId<NodeId>>>,
}

impl Tail {
    /// Forgets durable entries beyond the newest `TAIL_KEEP`.
    fn trim(&mut self) {
        let keep_from = self.durable.saturating_sub(TAIL_KEEP) + 1;
        while let Some((&first, _)) = self.entries.first_key_value() {
            if first >= keep_from {
                break;
            }
            self.entries.pop_first();
        }
    }
}

/// One change for the writer thread.
enum Job {
    Append {
        entries: Vec<Shared>,
        callback: LogFlushed<TypeConfig>,
    },
    Meta {
        key: &'static str,
        value: Vec<u8>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    },
    Remove {
        from: Bound<u64>,
        to: Bound<u64>,
        purged: Option<Vec<u8>>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Answered once every job before it is written and the database let go.
    Barrier(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl Job {
    /// Whether the job may wait for a later transaction: a metadata record nobody waits for
    /// (the committed index).
    fn can_wait(&self) -> bool {
        matches!(self, Job::Meta { done: None, .. })
    }
}

/// A handle on the log writer that does not hold the database open.
pub(crate) struct LogWriter(mpsc::Sender<Job>);

impl LogWriter {
    /// Waits until everything queued so far is written and the writer holds no reference to
    /// the database (so that, once Raft has stopped, the file is free to open again).
    pub(crate) async fn settled(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.0.send(Job::Barrier(done)).is_ok() {
            let _ = written.await;
        }
    }
}

impl LogStore {
    /// The log in `db`, with its writer thread (which ends once every handle is dropped).
    pub(crate) fn new(db: Arc<Database>) -> Result<Self, StorageFailure> {
        let (writer, jobs) = mpsc::channel();
        let tail = Arc::new(Mutex::new(Tail::default()));
        // The thread holds the database only while it writes: the file is released as soon as
        // the last handle on the log is dropped, as without the thread.
        let thread_db = Arc::downgrade(&db);
        let thread_tail = tail.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&thread_db, &thread_tail, &jobs))
            .map_err(|e| StorageFailure(format!("cannot start the log writer: {e}")))?;
        Ok(LogStore { db, tail, writer })
    }

    /// A handle that waits for the writer without keeping the database open.
    pub(crate) fn writer(&self) -> LogWriter {
        LogWriter(self.writer.clone())
    }

    fn read_range(
        &self,
        start: u64,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageFailure> {
        let in_end = |index: u64| match end {
            Bound::Included(e) => index <= e,
            Bound::Excluded(e) => index < e,
            Bound::Unbounded => true,
        };
        // The tail first: whatever it no longer holds below its first index is durable (it
        // drops only durable entries), so the file has it.
        let (from_tail, tail_first) = {
            let tail = self.tail.lock();
            let first = tail.entries.first_key_value().map(|(&i, _)| i);
            let entries: Vec<Entry<TypeConfig>> = tail
                .entries
                .range((Bound::Included(start), end))
                .map(|(_, entry)| Entry::clone(entry))
                .collect();
            (entries, first)
        };
        let file_end = match tail_first {
            Some(first) if first <= start => return Ok(from_tail),
            Some(first) if in_end(first) => Bound::Excluded(first),
            _ => end,
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for item in table.range((Bound::Included(start), file_end))? {
            let (_, value) = item?;
            entries.push(decode(value.value())?);
        }
        entries.extend(from_tail);
        Ok(entries)
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageFailure> {
        match get_meta(&self.db, key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes)?)),
        }
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageFailure> {
        if let Some((_, entry)) = self.tail.lock().entries.last_key_value() {
            return Ok(Some(entry.log_id));
        }
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

    fn send(&self, job: Job) -> Result<(), StorageFailure> {
        self.writer
            .send(job)
            .map_err(|_| StorageFailure("the log writer has stopped".into()))
    }

    /// Queues a job and waits until the transaction holding it committed.
    async fn write_and_wait(
        &self,
        job: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> Job,
    ) -> Result<(), StorageFailure> {
        let (done, written) = tokio::sync::oneshot::channel();
        self.send(job(done))?;
        match written.await {
            Ok(result) => result.map_err(StorageFailure),
            Err(_) => Err(StorageFailure("the log writer has stopped".into())),
        }
    }

    async fn remove_range(
        &self,
        from: Bound<u64>,
        to: Bound<u64>,
        purged: Option<&LogId<NodeId>>,
    ) -> Result<(), StorageFailure> {
        let purged = purged.map(encode).transpose()?;
        {
            let mut tail = self.tail.lock();
            let doomed: Vec<u64> = tail.entries.range((from, to)).map(|(&i, _)| i).collect();
            for index in doomed {
                tail.entries.remove(&index);
            }
        }
        self.write_and_wait(|done| Job::Remove {
            from,
            to,
            purged,
            done,
        })
        .await
    }
}

/// The writer thread: takes every queued job, writes them in order in one transaction,
/// commits durably, then reports to each.
fn write_loop(db: &std::sync::Weak<Database>, tail: &Mutex<Tail>, jobs: &mpsc::Receiver<Job>) {
    // After a failed commit nothing more is written: every later job gets that first failure
    // (a job with nobody to tell, like the committed index, may have met it), which names the
    // cause, rather than redb's later "previous I/O error".
    let mut failed: Option<String> = None;
    // The newest committed index not written yet: it waits for the next transaction (or an
    // idle spell), so that it never costs a durable commit and an fsync of its own.
    let mut held: Option<Job> = None;
    loop {
        let first = match &held {
            None => jobs
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(_) => jobs.recv_timeout(HOLD_COMMITTED),
        };
        let (mut group, idle) = match first {
            Ok(job) => (vec![job], false),
            // Quiet for a while: the held index is written alone after all.
            Err(mpsc::RecvTimeoutError::Timeout) => (held.take().into_iter().collect(), true),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Every handle is gone: the held index is written if the file is still open.
                if let (Some(job), None, Some(db)) = (held.take(), &failed, db.upgrade()) {
                    let _ = write_group(&db, &[job]);
                }
                return;
            }
        };
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if !idle && group.iter().all(Job::can_wait) {
            // Only committed indexes: keep the newest for the next transaction.
            held = group.pop();
            continue;
        }
        if let Some(job) = held.take() {
            group.insert(0, job);
        }
        let writes = group.iter().any(|job| !matches!(job, Job::Barrier(_)));
        let result = match (&failed, db.upgrade()) {
            (Some(first), _) => Err(first.clone()),
            _ if !writes => Ok(()),
            (None, Some(db)) => write_group(&db, &group).map_err(|e| e.0),
            (None, None) => Err("the database is closed".to_string()),
        };
        if let Err(e) = &result {
            failed.get_or_insert_with(|| e.clone());
        }
        if result.is_ok() {
            let mut tail = tail.lock();
            for job in &group {
                match job {
                    Job::Append { entries, .. } => {
                        if let Some(last) = entries.last() {
                            tail.durable = tail.durable.max(last.log_id.index);
                        }
                    }
                    // A truncation: what follows it is not durable until appended again.
                    Job::Remove {
                        from: Bound::Included(from),
                        to: Bound::Unbounded,
                        ..
                    } => tail.durable = tail.durable.min(from.saturating_sub(1)),
                    Job::Meta { .. } | Job::Remove { .. } | Job::Barrier(_) => {}
                }
            }
            tail.trim();
        }
        for job in group {
            match job {
                Job::Append { callback, .. } => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Job::Meta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(result.clone());
                    }
                }
                Job::Remove { done, .. } | Job::Barrier(done) => {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
}

fn write_group(db: &Database, group: &[Job]) -> Result<(), StorageFailure> {
    let txn = db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for job in group {
            match job {
                Job::Append { entries, .. } => {
                    for entry in entries {
                        log.insert(entry.log_id.index, encode(&**entry)?.as_slice())?;
                    }
                }
                Job::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice())?;
                }
                Job::Remove {
                    from, to, purged, ..
                } => {
                    // Key by key: redb's `retain_in` over a range leaves the file growing by
                    // kilobytes per removed row (measured: 744 rows of 300 bytes grew a file
                    // from 0.9 to 13.8 MB), which made the data dir balloon at every purge.
                    let doomed = log
                        .range::<u64>((*from, *to))?
                        .map(|item| item.map(|(index, _)| index.value()))
                        .collect::<Result<Vec<u64>, _>>()?;
                    for index in doomed {
                        log.remove(index)?;
                    }
                    if let Some(purged) = purged {
                        meta.insert(KEY_PURGED, purged.as_slice())?;
                    }
                }
                Job::Barrier(_) => {}
            }
        }
    }
    txn.commit()?;
    Ok(())
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
        let value = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.write_and_wait(|done| Job::Meta {
            key: KEY_VOTE,
            value,
            done: Some(done),
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    /// Queued without waiting: the committed index only saves re-deriving it after a restart,
    /// so it rides along with the next transaction instead of costing an fsync of its own.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let value = encode(&committed).map_err(|e| write_err(e.into()))?;
        self.tail.lock().committed = Some(committed);
        self.send(Job::Meta {
            key: KEY_COMMITTED,
            value,
            done: None,
        })
        .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        // Saved in this run: the newest, whether or not the writer wrote it yet.
        if let Some(committed) = self.tail.lock().committed {
            return Ok(committed);
        }
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
        let entries: Vec<Shared> = entries.into_iter().map(Arc::new).collect();
        {
            let mut tail = self.tail.lock();
            for entry in &entries {
                tail.entries.insert(entry.log_id.index, entry.clone());
            }
        }
        // The callback is told once the transaction holding these entries is durable.
        self.send(Job::Append { entries, callback })
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.remove_range(Bound::Included(log_id.index), Bound::Unbounded, None)
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.remove_range(
            Bound::Unbounded,
            Bound::Included(log_id.index),
            Some(&log_id),
        )
        .await
        .map_err(write_err)
    }
}
