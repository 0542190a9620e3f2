//! The shared handle on the state: one writer (the Raft state machine), many readers,
//! and per-table watches that wake blocking queries.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::command::{Command, Outcome};
use crate::state::State;

/// A table a blocking query can wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Nodes, services and checks.
    Catalog,
    /// Key/value entries.
    Kv,
    /// Apps, tasks, deployments, compute nodes.
    Workload,
}

/// The state plus its watches. Cloning is cheap and shares the same state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    catalog: watch::Sender<u64>,
    kv: watch::Sender<u64>,
    workload: watch::Sender<u64>,
    applied: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(State::default(), 0)
    }
}

impl Store {
    /// A store holding `state`, last applied at `applied`.
    pub fn new(state: State, applied: u64) -> Self {
        let catalog = watch::Sender::new(state.indexes.catalog());
        let kv = watch::Sender::new(state.indexes.kv);
        let workload = watch::Sender::new(state.indexes.workload);
        Store {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                catalog,
                kv,
                workload,
                applied: watch::Sender::new(applied),
            }),
        }
    }

    /// Applies a command at `index` and wakes the watchers of the tables it changed.
    pub fn apply(&self, index: u64, command: &Command) -> Outcome {
        let (outcome, touched) = self.inner.state.write().apply(index, command);
        if touched.catalog {
            self.inner.catalog.send_replace(index);
        }
        if touched.kv {
            self.inner.kv.send_replace(index);
        }
        if touched.workload {
            self.inner.workload.send_replace(index);
        }
        outcome
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
        state.rebuild_derived();
        let catalog = state.indexes.catalog();
        let kv = state.indexes.kv;
        *self.inner.state.write() = state;
        self.inner.catalog.send_replace(catalog.max(applied));
        self.inner.kv.send_replace(kv.max(applied));
        self.inner.workload.send_replace(applied);
        self.inner.applied.send_replace(applied);
    }

    /// Runs `read` against the current state under a short read lock.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.inner.state.read())
    }

    /// A receiver that changes whenever `table` changes.
    pub fn watch(&self, table: Table) -> watch::Receiver<u64> {
        match table {
            Table::Catalog => self.inner.catalog.subscribe(),
            Table::Kv => self.inner.kv.subscribe(),
            Table::Workload => self.inner.workload.subscribe(),
        }
    }

    /// A receiver of the applied index (for read-your-writes waits).
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }
}
