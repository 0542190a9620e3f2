//! Wake-ups finer than a table: blocking queries on one service name, one KV key or one KV
//! prefix wait on a channel of their own, woken only by the changes that can move the index
//! their answer reports.
//!
//! Every waiter of the same key shares one `watch` channel, created by the first and removed
//! with the last, so a parked query costs a receiver (two words) and its share of the entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use atoll_state::{Change, Table};
use parking_lot::Mutex;
use tokio::sync::watch;

/// What a blocking query waits on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Watch {
    /// Any change to a table.
    Table(Table),
    /// The rows of one service name: its instances, their checks and their nodes, i.e. what
    /// moves `State::service_index` for that name.
    Service(String),
    /// One KV key (its entry and its tombstone).
    Key(String),
    /// Every KV key that starts with the prefix.
    Prefix(String),
}

impl From<Table> for Watch {
    fn from(table: Table) -> Self {
        Watch::Table(table)
    }
}

/// The channels of the keyed waiters, one per key that has at least one waiter.
#[derive(Default)]
pub(crate) struct Keyed {
    services: HashMap<String, watch::Sender<u64>>,
    keys: HashMap<String, watch::Sender<u64>>,
    prefixes: HashMap<String, watch::Sender<u64>>,
    /// How many prefixes of each length are watched: a changed key is probed at these
    /// lengths only.
    prefix_lengths: BTreeMap<usize, usize>,
}

/// Which map of [`Keyed`] a keyed watch lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Service,
    Key,
    Prefix,
}

impl Keyed {
    fn map(&mut self, kind: Kind) -> &mut HashMap<String, watch::Sender<u64>> {
        match kind {
            Kind::Service => &mut self.services,
            Kind::Key => &mut self.keys,
            Kind::Prefix => &mut self.prefixes,
        }
    }

    /// A receiver on `key`'s channel, creating it at `index` if it has no waiter yet.
    fn subscribe(&mut self, kind: Kind, key: &str, index: u64) -> watch::Receiver<u64> {
        if let Some(sender) = self.map(kind).get(key) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(index);
        self.map(kind).insert(key.to_string(), sender);
        if kind == Kind::Prefix {
            *self.prefix_lengths.entry(key.len()).or_default() += 1;
        }
        receiver
    }

    /// Called with the lock held by a waiter about to drop its receiver: removes the channel
    /// if that receiver is its last.
    fn leave(&mut self, kind: Kind, key: &str) {
        let map = self.map(kind);
        if map
            .get(key)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            map.remove(key);
            if kind == Kind::Prefix {
                if let Some(count) = self.prefix_lengths.get_mut(&key.len()) {
                    *count -= 1;
                    if *count == 0 {
                        self.prefix_lengths.remove(&key.len());
                    }
                }
            }
        }
    }

    /// Wakes the waiters of every key the changes of the entry at `index` touched.
    pub(crate) fn wake(&self, index: u64, changes: &[Change]) {
        if self.services.is_empty() && self.keys.is_empty() && self.prefixes.is_empty() {
            return;
        }
        for change in changes {
            match change {
                // Every change of a service's instances, checks or node moves its index.
                Change::ServiceIndex(row) => {
                    if let Some(sender) = self.services.get(&row.key) {
                        sender.send_replace(index);
                    }
                }
                Change::Kv(row) => self.wake_kv(&row.key, index),
                Change::KvTombstone(row) => self.wake_kv(&row.key, index),
                // Moves the index of every KV read.
                Change::KvReaped { .. } => {
                    for sender in self.keys.values().chain(self.prefixes.values()) {
                        sender.send_replace(index);
                    }
                }
                _ => {}
            }
        }
    }

    fn wake_kv(&self, key: &str, index: u64) {
        if let Some(sender) = self.keys.get(key) {
            sender.send_replace(index);
        }
        for &length in self.prefix_lengths.range(..=key.len()).map(|(l, _)| l) {
            if !key.is_char_boundary(length) {
                continue;
            }
            if let Some(sender) = self.prefixes.get(&key[..length]) {
                sender.send_replace(index);
            }
        }
    }

    /// Wakes every keyed waiter (the state was replaced).
    pub(crate) fn wake_all(&self, index: u64) {
        for sender in self
            .services
            .values()
            .chain(self.keys.values())
            .chain(self.prefixes.values())
        {
            sender.send_replace(index);
        }
    }

    #[cfg(test)]
    pub(crate) fn channels(&self) -> usize {
        self.services.len() + self.keys.len() + self.prefixes.len()
    }
}

/// One blocking query's side of a [`Watch`]: marks what it has seen and waits for the next
/// change. A keyed waiter leaves its key's channel when dropped.
pub struct Waiter {
    receiver: watch::Receiver<u64>,
    keyed: Option<(Arc<Mutex<Keyed>>, Kind, Box<str>)>,
}

impl Waiter {
    pub(crate) fn table(receiver: watch::Receiver<u64>) -> Self {
        Waiter {
            receiver,
            keyed: None,
        }
    }

    /// A waiter on a keyed watch (`watch` is not a [`Watch::Table`]).
    pub(crate) fn keyed(keyed: &Arc<Mutex<Keyed>>, watch: &Watch, index: u64) -> Self {
        let (kind, key) = match watch {
            Watch::Service(name) => (Kind::Service, name),
            Watch::Key(key) => (Kind::Key, key),
            Watch::Prefix(prefix) => (Kind::Prefix, prefix),
            Watch::Table(_) => unreachable!("table watches have no key"),
        };
        let receiver = keyed.lock().subscribe(kind, key, index);
        Waiter {
            receiver,
            keyed: Some((keyed.clone(), kind, key.as_str().into())),
        }
    }

    /// Marks the current state as seen: [`Waiter::changed`] waits for a later change.
    pub fn mark_seen(&mut self) {
        self.receiver.borrow_and_update();
    }

    /// Waits for a change after the last one seen. `false` if the store is gone.
    pub async fn changed(&mut self) -> bool {
        self.receiver.changed().await.is_ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some((keyed, kind, key)) = &self.keyed {
            // Under the lock, so no waiter subscribes between the count and the removal.
            keyed.lock().leave(*kind, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use atoll_state::{Command, Deregistration, Registration, ServiceSpec, State, Table};

    use super::Watch;
    use crate::Store;

    fn register(node: &str, id: &str, name: &str) -> Command {
        Command::Register(Box::new(Registration {
            node: node.into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            service: Some(ServiceSpec {
                id: id.into(),
                name: name.into(),
                port: 80,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    fn put(key: &str) -> Command {
        Command::KvSet {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
            cas: None,
        }
    }

    /// Whether the waiter is woken within a short wait (paused time: no real waiting).
    async fn woken(waiter: &mut super::Waiter) -> bool {
        tokio::time::timeout(Duration::from_secs(1), waiter.changed())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_watcher_wakes_only_for_its_service() {
        let store = Store::default();
        store.apply(1, &register("n1", "a1", "a"));
        store.apply(2, &register("n1", "b1", "b"));
        let mut b = store.waiter(&Watch::Service("b".into()));
        let mut catalog = store.waiter(&Watch::Table(Table::Catalog));
        b.mark_seen();
        catalog.mark_seen();

        // A second instance of `a` (on a new node, so no shared node row changes).
        store.apply(3, &register("n2", "a2", "a"));
        assert!(
            !woken(&mut b).await,
            "a change of `a` woke a watcher of `b`"
        );
        assert!(
            woken(&mut catalog).await,
            "the table watch misses a catalog change"
        );

        b.mark_seen();
        store.apply(4, &register("n3", "b2", "b"));
        assert!(
            woken(&mut b).await,
            "a new instance of `b` did not wake its watcher"
        );
        b.mark_seen();
        store.apply(
            5,
            &Command::Deregister(Deregistration {
                node: "n3".into(),
                service_id: Some("b2".into()),
                ..Default::default()
            }),
        );
        assert!(
            woken(&mut b).await,
            "deregistering `b` did not wake its watcher"
        );
        assert_eq!(store.read(|s: &State| s.service_index("b")), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_of_a_service_not_yet_registered_wakes_when_it_appears() {
        let store = Store::default();
        let mut c = store.waiter(&Watch::Service("c".into()));
        c.mark_seen();
        store.apply(1, &register("n1", "a1", "a"));
        assert!(!woken(&mut c).await);
        c.mark_seen();
        store.apply(2, &register("n1", "c1", "c"));
        assert!(woken(&mut c).await);
    }

    #[tokio::test(start_paused = true)]
    async fn kv_watchers_wake_for_their_key_or_prefix_only() {
        let store = Store::default();
        let mut key = store.waiter(&Watch::Key("app/config".into()));
        let mut prefix = store.waiter(&Watch::Prefix("app/".into()));
        let mut other = store.waiter(&Watch::Prefix("other/".into()));
        let mut everything = store.waiter(&Watch::Prefix(String::new()));
        for waiter in [&mut key, &mut prefix, &mut other, &mut everything] {
            waiter.mark_seen();
        }
        store.apply(1, &put("app/configs"));
        assert!(
            !woken(&mut key).await,
            "a longer key woke the exact watcher"
        );
        assert!(woken(&mut prefix).await);
        assert!(woken(&mut everything).await);
        assert!(!woken(&mut other).await);

        for waiter in [&mut key, &mut prefix, &mut other, &mut everything] {
            waiter.mark_seen();
        }
        store.apply(
            2,
            &Command::KvDelete {
                key: "app/config".into(),
                recurse: false,
                cas: None,
            },
        );
        // Deleting an absent key changes nothing: nobody wakes.
        assert!(!woken(&mut key).await);
        store.apply(3, &put("app/config"));
        assert!(woken(&mut key).await);
        assert!(woken(&mut prefix).await);
        assert!(!woken(&mut other).await);
        key.mark_seen();
        store.apply(
            4,
            &Command::KvDelete {
                key: "app/config".into(),
                recurse: false,
                cas: None,
            },
        );
        assert!(
            woken(&mut key).await,
            "a deletion did not wake the key's watcher"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_install_wakes_every_keyed_watcher() {
        let store = Store::default();
        let mut b = store.waiter(&Watch::Service("b".into()));
        let mut key = store.waiter(&Watch::Key("k".into()));
        b.mark_seen();
        key.mark_seen();
        store.replace(State::default(), 10);
        assert!(woken(&mut b).await);
        assert!(woken(&mut key).await);
    }

    #[tokio::test]
    async fn channels_go_with_their_last_waiter() {
        let store = Store::default();
        let first = store.waiter(&Watch::Service("b".into()));
        let second = store.waiter(&Watch::Service("b".into()));
        let prefix = store.waiter(&Watch::Prefix("p/".into()));
        assert_eq!(store.keyed_channels(), 2);
        drop(first);
        assert_eq!(store.keyed_channels(), 2);
        drop(second);
        drop(prefix);
        assert_eq!(store.keyed_channels(), 0);
        // A new waiter after the last left gets a fresh channel that still wakes.
        let mut again = store.waiter(&Watch::Service("b".into()));
        again.mark_seen();
        store.apply(1, &register("n1", "b1", "b"));
        assert!(again.changed().await);
    }
}
