//! Tables that remember what an entry changed.
//!
//! Every replicated table is a [`Rows`] (one key) or a [`Grouped`] (a group key, then a row
//! key, e.g. node then service id). Reads go through `Deref` to the map; every write goes
//! through a method that first notes the row's value before the entry touched it.
//! After a command, [`Rows::drain`] turns those notes into [`RowChange`]s (old and new value,
//! rows whose value ended where it started left out). Because there is no mutable access to
//! the map itself, a change cannot be made without being reported.
//!
//! The maps are persistent B-trees (`imbl::OrdMap`): a clone shares every node with the
//! original and costs O(1), and a write to either copies only the nodes on its path. That is
//! how a snapshot copies the whole state on the apply task without stopping writes for the
//! time of a copy (`atoll-raft`'s state machine), and how a feed subscriber gets its copy.
//!
//! Both serialize exactly as the map they hold, so stored snapshots keep their shape.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// The map a table holds: ordered by key, cloned in O(1).
pub type Map<K, V> = imbl::OrdMap<K, V>;

/// One row changed by one entry: its key, its value before and after (`None` = absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange<K, V> {
    /// The row's key.
    pub key: K,
    /// The value before the entry, `None` if the row was created.
    pub old: Option<V>,
    /// The value after the entry, `None` if the row was deleted.
    pub new: Option<V>,
}

/// A table of rows by key that reports its changes.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent, bound(serialize = "K: Serialize, V: Serialize"))]
pub struct Rows<K: Ord, V> {
    rows: Map<K, V>,
    /// Value of each row touched since the last drain, as it was before.
    #[serde(skip)]
    before: BTreeMap<K, Option<V>>,
}

// Read through std's maps: a stored map's length comes from the bytes, and serde sizes std's
// maps cautiously where the persistent map would reserve whatever length a damaged record
// claims (and abort on it instead of failing to decode).
impl<'de, K, V> Deserialize<'de> for Rows<K, V>
where
    K: Ord + Clone + Deserialize<'de>,
    V: Clone + Deserialize<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rows = BTreeMap::<K, V>::deserialize(deserializer)?;
        Ok(Rows {
            rows: rows.into_iter().collect(),
            before: BTreeMap::new(),
        })
    }
}

impl<'de, G, K, V> Deserialize<'de> for Grouped<G, K, V>
where
    G: Ord + Clone + Deserialize<'de>,
    K: Ord + Clone + Deserialize<'de>,
    V: Clone + Deserialize<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let groups = BTreeMap::<G, BTreeMap<K, V>>::deserialize(deserializer)?;
        Ok(Grouped {
            groups: groups
                .into_iter()
                .map(|(group, rows)| (group, rows.into_iter().collect::<Map<K, V>>()))
                .collect(),
            before: BTreeMap::new(),
        })
    }
}

impl<K: Ord, V> Default for Rows<K, V> {
    fn default() -> Self {
        Rows {
            rows: Map::new(),
            before: BTreeMap::new(),
        }
    }
}

/// Equal rows make equal tables; pending notes are not part of the value.
impl<K: Ord, V: PartialEq> PartialEq for Rows<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows
    }
}

impl<K: Ord, V> Deref for Rows<K, V> {
    type Target = Map<K, V>;

    fn deref(&self) -> &Map<K, V> {
        &self.rows
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a Rows<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = imbl::ordmap::Iter<'a, K, V, imbl::shared_ptr::DefaultSharedPtr>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Rows<K, V> {
    fn note<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        if !self.before.contains_key(key) {
            let old = self.rows.get(key).cloned();
            self.before.insert(key.to_owned(), old);
        }
    }

    /// Sets a row. Its previous value, if this is the row's first change since the last
    /// drain, becomes the noted one without a copy.
    pub fn insert(&mut self, key: K, value: V) {
        if self.before.contains_key(&key) {
            self.rows.insert(key, value);
        } else {
            let old = self.rows.insert(key.clone(), value);
            self.before.insert(key, old);
        }
    }

    /// Deletes a row, returning its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        if !self.rows.contains_key(key) {
            return None;
        }
        self.note(key);
        self.rows.remove(key)
    }

    /// Mutable access to one row (a row left as it was is not reported).
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        if !self.rows.contains_key(key) {
            return None;
        }
        self.note(key);
        self.rows.get_mut(key)
    }

    /// Keeps only the rows for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let doomed: Vec<K> = self
            .rows
            .iter()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            self.remove(&key);
        }
    }

    /// Deletes every row.
    pub fn clear(&mut self) {
        self.retain(|_, _| false);
    }

    /// The rows changed since the last drain, in key order; forgets the notes.
    pub fn drain(&mut self) -> Vec<RowChange<K, V>> {
        let before = std::mem::take(&mut self.before);
        before
            .into_iter()
            .filter_map(|(key, old)| {
                let new = self.rows.get(&key).cloned();
                (old != new).then_some(RowChange { key, old, new })
            })
            .collect()
    }

    /// Sets or deletes a row without noting it (replaying a change made elsewhere).
    pub fn put_row(&mut self, key: K, value: Option<V>) {
        match value {
            Some(value) => self.rows.insert(key, value),
            None => self.rows.remove(&key),
        };
    }
}

/// A table of rows under a group key (node, then id), reporting changes per row. A group
/// exists only while it holds rows.
#[derive(Debug, Clone, Serialize)]
#[serde(
    transparent,
    bound(serialize = "G: Serialize, K: Serialize, V: Serialize")
)]
pub struct Grouped<G: Ord, K: Ord, V> {
    groups: Map<G, Map<K, V>>,
    #[serde(skip)]
    before: BTreeMap<(G, K), Option<V>>,
}

impl<G: Ord, K: Ord, V> Default for Grouped<G, K, V> {
    fn default() -> Self {
        Grouped {
            groups: Map::new(),
            before: BTreeMap::new(),
        }
    }
}

impl<G: Ord, K: Ord, V: PartialEq> PartialEq for Grouped<G, K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.groups == other.groups
    }
}

impl<G: Ord, K: Ord, V> Deref for Grouped<G, K, V> {
    type Target = Map<G, Map<K, V>>;

    fn deref(&self) -> &Map<G, Map<K, V>> {
        &self.groups
    }
}

impl<'a, G: Ord, K: Ord, V> IntoIterator for &'a Grouped<G, K, V> {
    type Item = (&'a G, &'a Map<K, V>);
    type IntoIter = imbl::ordmap::Iter<'a, G, Map<K, V>, imbl::shared_ptr::DefaultSharedPtr>;

    fn into_iter(self) -> Self::IntoIter {
        self.groups.iter()
    }
}

impl<G: Ord + Clone, K: Ord + Clone, V: Clone + PartialEq> Grouped<G, K, V> {
    fn note(&mut self, group: &G, key: &K) {
        let at = (group.clone(), key.clone());
        if !self.before.contains_key(&at) {
            let old = self
                .groups
                .get(group)
                .and_then(|rows| rows.get(key))
                .cloned();
            self.before.insert(at, old);
        }
    }

    /// One row.
    pub fn row(&self, group: &G, key: &K) -> Option<&V> {
        self.groups.get(group).and_then(|rows| rows.get(key))
    }

    /// Sets a row. Its previous value, if this is the row's first change since the last
    /// drain, becomes the noted one without a copy.
    pub fn insert(&mut self, group: G, key: K, value: V) {
        let at = (group.clone(), key.clone());
        let old = self.groups.entry(group).or_default().insert(key, value);
        self.before.entry(at).or_insert(old);
    }

    /// Deletes a row (and its group if it was the last), returning its value.
    pub fn remove(&mut self, group: &G, key: &K) -> Option<V> {
        self.row(group, key)?;
        self.note(group, key);
        let rows = self.groups.get_mut(group)?;
        let value = rows.remove(key);
        if rows.is_empty() {
            self.groups.remove(group);
        }
        value
    }

    /// Deletes a whole group, returning its rows.
    pub fn remove_group(&mut self, group: &G) -> Map<K, V> {
        let keys: Vec<K> = self
            .groups
            .get(group)
            .map(|rows| rows.keys().cloned().collect())
            .unwrap_or_default();
        for key in &keys {
            self.note(group, key);
        }
        self.groups.remove(group).unwrap_or_default()
    }

    /// Mutable access to one row (a row left as it was is not reported).
    pub fn get_mut(&mut self, group: &G, key: &K) -> Option<&mut V> {
        self.row(group, key)?;
        self.note(group, key);
        self.groups
            .get_mut(group)
            .and_then(|rows| rows.get_mut(key))
    }

    /// The rows changed since the last drain, in key order; forgets the notes.
    pub fn drain(&mut self) -> Vec<RowChange<(G, K), V>> {
        let before = std::mem::take(&mut self.before);
        before
            .into_iter()
            .filter_map(|((group, key), old)| {
                let new = self.row(&group, &key).cloned();
                (old != new).then_some(RowChange {
                    key: (group, key),
                    old,
                    new,
                })
            })
            .collect()
    }

    /// Sets or deletes a row without noting it (replaying a change made elsewhere).
    pub fn put_row(&mut self, (group, key): (G, K), value: Option<V>) {
        match value {
            Some(value) => {
                self.groups.entry(group).or_default().insert(key, value);
            }
            None => {
                if let Some(rows) = self.groups.get_mut(&group) {
                    rows.remove(&key);
                    if rows.is_empty() {
                        self.groups.remove(&group);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_report_each_changed_row_once_with_its_first_old_value() {
        let mut rows: Rows<String, u32> = Rows::default();
        rows.insert("a".into(), 1);
        rows.insert("b".into(), 2);
        rows.drain();
        rows.insert("a".into(), 10);
        rows.insert("a".into(), 11);
        rows.remove("b");
        rows.insert("c".into(), 3);
        rows.remove("c");
        if let Some(v) = rows.get_mut("a") {
            *v = 11;
        }
        assert!(rows.remove("missing").is_none());
        let changes = rows.drain();
        assert_eq!(
            changes,
            vec![
                RowChange {
                    key: "a".to_string(),
                    old: Some(1),
                    new: Some(11)
                },
                RowChange {
                    key: "b".to_string(),
                    old: Some(2),
                    new: None
                },
            ]
        );
        assert!(rows.drain().is_empty());
    }

    #[test]
    fn grouped_rows_drop_empty_groups_and_report_group_removal_per_row() {
        let mut table: Grouped<String, String, u32> = Grouped::default();
        table.insert("n1".into(), "a".into(), 1);
        table.insert("n1".into(), "b".into(), 2);
        table.drain();
        assert_eq!(table.remove(&"n1".into(), &"a".into()), Some(1));
        let removed = table.remove_group(&"n1".into());
        assert_eq!(removed.len(), 1);
        assert!(table.is_empty(), "an emptied group is gone");
        let changes = table.drain();
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.new.is_none()));
        let mut replay: Grouped<String, String, u32> = Grouped::default();
        replay.put_row(("n1".into(), "a".into()), Some(1));
        replay.put_row(("n1".into(), "a".into()), None);
        assert_eq!(replay, table);
    }

    #[test]
    fn a_record_claiming_a_huge_table_fails_to_decode_instead_of_aborting() {
        // MessagePack map32 with 2^32-1 entries, then nothing: before, the persistent map
        // reserved room for every claimed entry and the process aborted.
        let claims = [
            crate::snapshot::FORMAT_VERSION,
            0xdf,
            0xff,
            0xff,
            0xff,
            0xff,
        ];
        assert!(crate::snapshot::decode::<Rows<String, u32>>(&claims).is_err());
        assert!(crate::snapshot::decode::<Grouped<String, String, u32>>(&claims).is_err());
    }

    #[test]
    fn tables_serialize_as_their_maps() {
        let mut rows: Rows<String, u32> = Rows::default();
        rows.insert("a".into(), 1);
        assert_eq!(serde_json::to_string(&rows).unwrap(), r#"{"a":1}"#);
        let back: Rows<String, u32> = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert_eq!(back, rows);
        let mut grouped: Grouped<String, String, u32> = Grouped::default();
        grouped.insert("n".into(), "a".into(), 1);
        assert_eq!(serde_json::to_string(&grouped).unwrap(), r#"{"n":{"a":1}}"#);
    }
}
