//! The shared handle on the state: one writer (the state machine), many readers, per-table
//! watches, keyed watches (one service, one KV key or prefix) that wake blocking queries, and
//! the feed of changed rows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use atoll_state::{Change, Command, Outcome, State, Table};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, watch};

use crate::waiters::{Keyed, Waiter, Watch};

/// Entries a slow subscriber may fall behind before it is told it lagged.
const FEED_CAPACITY: usize = 1024;

/// What the feed of changes carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The rows one entry changed, as `State::apply` reported them.
    Entry {
        /// The entry's log index.
        index: u64,
        /// Its changes.
        changes: Vec<Change>,
    },
    /// The whole state was replaced (a snapshot installed) at this index: what a subscriber
    /// holds no longer leads to the state by changes, so it subscribes again.
    Replaced {
        /// The index the new state is applied up to.
        index: u64,
    },
}

/// The state plus its watches. Cloning is cheap and shares the same state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// One watch per table, at `Table::slot`; each carries the index of its last change.
    tables: [watch::Sender<u64>; Table::ALL.len()],
    /// The channels of keyed watches, woken from the same changes.
    keyed: Arc<Mutex<Keyed>>,
    applied: watch::Sender<u64>,
    feed: broadcast::Sender<Arc<Applied>>,
    /// The index of the last entry that changed a row (or of the last state installed),
    /// written under the state's write lock: what a copy of the state taken under its read
    /// lock is up to, as far as changes go.
    last_change: AtomicU64,
}

/// The index a table's watch starts at for `state`.
fn table_index(state: &State, table: Table) -> u64 {
    match table {
        Table::Catalog => state.indexes.catalog(),
        Table::Kv => state.indexes.kv,
        Table::Workload => state.indexes.workload,
        Table::Events => state.indexes.events,
        Table::Queries => state.indexes.queries,
        Table::Acl => state.indexes.acl,
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new(State::default(), 0)
    }
}

impl Store {
    /// A store holding `state`, last applied at `applied`.
    pub fn new(state: State, applied: u64) -> Self {
        let tables = Table::ALL.map(|table| watch::Sender::new(table_index(&state, table)));
        Store {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                tables,
                keyed: Arc::default(),
                applied: watch::Sender::new(applied),
                feed: broadcast::Sender::new(FEED_CAPACITY),
                last_change: AtomicU64::new(applied),
            }),
        }
    }

    /// Applies a command at `index`, wakes the watchers of the tables and keys it changed and
    /// sends its changes to the subscribers.
    pub fn apply(&self, index: u64, command: &Command) -> Outcome {
        let (outcome, changes) = {
            let mut state = self.inner.state.write();
            let result = state.apply(index, command);
            self.publish(index, &result.1);
            result
        };
        self.wake(index, &changes);
        outcome
    }

    /// Under the state's write lock, right after the entry at `index` changed `changes`:
    /// notes the last changing entry and sends the changes to the subscribers (under the
    /// lock, so they see entries in log order).
    fn publish(&self, index: u64, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.inner.last_change.store(index, Ordering::Release);
        if self.inner.feed.receiver_count() > 0 {
            let _ = self.inner.feed.send(Arc::new(Applied::Entry {
                index,
                changes: changes.to_vec(),
            }));
        }
    }

    /// Wakes the watchers of the tables and keys `changes` touched, at `index`.
    fn wake(&self, index: u64, changes: &[Change]) {
        let mut woken = [false; Table::ALL.len()];
        for change in changes {
            let slot = change.table().slot();
            if !woken[slot] {
                woken[slot] = true;
                self.inner.tables[slot].send_replace(index);
            }
        }
        self.inner.keyed.lock().wake(index, changes);
    }

    /// Replays the changes of the entry at `index`, made on another copy of the state (a
    /// compute node's copy, fed by a server), and wakes watchers and subscribers as
    /// [`Store::apply`] does. The applied index moves too.
    pub fn replay(&self, index: u64, changes: Vec<Change>) {
        {
            let mut state = self.inner.state.write();
            state.replay(index, &changes);
            self.publish(index, &changes);
        }
        self.wake(index, &changes);
        self.set_applied(index);
    }

    /// The feed of changes without a copy of the state: the index of the last entry that
    /// changed a row before the first one the receiver will get, and the receiver. For a
    /// relay that keeps its own window of recent entries.
    pub fn subscribe_changes(&self) -> (u64, broadcast::Receiver<Arc<Applied>>) {
        let _state = self.inner.state.read();
        // Under the read lock: no entry falls between the index and the feed.
        let receiver = self.inner.feed.subscribe();
        (self.inner.last_change.load(Ordering::Acquire), receiver)
    }

    /// A copy of the state without keys and sessions ([`State::without_kv`]) and the index
    /// of the last entry that changed a row in it: replaying the changes of every later entry
    /// keeps the copy equal to the state, keys and sessions aside.
    pub fn copy_without_kv(&self) -> (State, u64) {
        let state = self.inner.state.read();
        (
            state.without_kv(),
            self.inner.last_change.load(Ordering::Acquire),
        )
    }

    /// A copy of the state and the changes of every entry applied after it, in log order
    /// (`State::replay` of each keeps the copy equal to the state). A subscriber that falls
    /// more than [`FEED_CAPACITY`] entries behind gets `Lagged`, and after a snapshot install
    /// it gets [`Applied::Replaced`]; either way it subscribes again.
    pub fn subscribe(&self) -> (State, broadcast::Receiver<Arc<Applied>>) {
        let state = self.inner.state.read();
        // Subscribed under the read lock: no entry falls between the copy and the feed.
        let receiver = self.inner.feed.subscribe();
        (state.clone(), receiver)
    }

    /// Records that the log is applied up to `index` (including entries that are not commands).
    pub fn set_applied(&self, index: u64) {
        self.inner.applied.send_if_modified(|current| {
            if index > *current {
                *current = index;
                true
            } else {
                false
            }
        });
    }

    /// The highest applied log index.
    pub fn applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Replaces the whole state (snapshot install) and wakes every watcher.
    pub fn replace(&self, mut state: State, applied: u64) {
        state.after_load();
        let indexes = Table::ALL.map(|table| table_index(&state, table));
        {
            let mut current = self.inner.state.write();
            *current = state;
            self.inner.last_change.store(applied, Ordering::Release);
            // What subscribers hold no longer leads to this state by changes: they start over.
            let _ = self
                .inner
                .feed
                .send(Arc::new(Applied::Replaced { index: applied }));
        }
        for (sender, index) in self.inner.tables.iter().zip(indexes) {
            sender.send_replace(index.max(applied));
        }
        self.inner.keyed.lock().wake_all(applied);
        self.inner.applied.send_replace(applied);
    }

    /// Runs `read` against the current state under a short read lock.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.inner.state.read())
    }

    /// A receiver that changes whenever `table` changes.
    pub fn watch(&self, table: Table) -> watch::Receiver<u64> {
        self.inner.tables[table.slot()].subscribe()
    }

    /// A waiter woken by the changes `watch` covers: for a table, any change to it; for a
    /// service, a KV key or a prefix, only the changes that can move the index a read of it
    /// reports (and a snapshot install). Subscribe before reading the state, so that no change
    /// falls between the read and the wait.
    pub fn waiter(&self, watch: &Watch) -> Waiter {
        match watch {
            Watch::Table(table) => Waiter::table(self.watch(*table)),
            keyed => Waiter::keyed(&self.inner.keyed, keyed, self.applied()),
        }
    }

    #[cfg(test)]
    pub(crate) fn keyed_channels(&self) -> usize {
        self.inner.keyed.lock().channels()
    }

    /// A receiver of the applied index (for read-your-writes waits).
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }
}
