//! Consul sessions and KV locks in `apply`: creating a session, invalidating it (its held
//! keys released or deleted in the same entry), acquiring and releasing a key's lock.
//!
//! What ends a session besides a destroy (a tied check turning critical or going away, its
//! node deregistered) is noticed by the catalog writes in `state.rs`, which call
//! [`State::invalidate_tied_sessions`] and [`State::invalidate_node_sessions`].

use crate::command::{Outcome, Rejection};
use crate::model::{CheckStatus, KvEntry, Session, SessionBehavior};
use crate::state::{rejected_invalid, unindex, State};

impl State {
    /// Creates a session after checking what Consul checks: the node is registered, and
    /// each tied check exists on it and is not critical.
    pub(crate) fn create_session(&mut self, index: u64, spec: &Session) -> Outcome {
        if spec.id.is_empty() {
            return rejected_invalid("Missing session ID");
        }
        if self.sessions.contains_key(&spec.id) {
            return Outcome::Rejected(Rejection::Conflict(format!(
                "Session ID {:?} is taken",
                spec.id
            )));
        }
        if !self.nodes.contains_key(&spec.node) {
            return precondition("Missing node registration".to_string());
        }
        for check_id in spec.check_ids() {
            match self.check(&spec.node, check_id) {
                None => return precondition(format!("Missing check '{check_id}' registration")),
                Some(check) if check.status == CheckStatus::Critical => {
                    return precondition(format!("Check '{check_id}' is in critical state"))
                }
                Some(_) => {}
            }
        }
        let mut session = spec.clone();
        session.create_index = index;
        session.modify_index = index;
        self.sessions_by_node
            .entry(session.node.clone())
            .or_default()
            .insert(session.id.clone());
        self.sessions.insert(session.id.clone(), session);
        Outcome::Done
    }

    /// Ends a session: its row goes, and each key it holds is released (its lock cleared,
    /// value and lock index kept) or deleted, as its behavior says, at this index.
    pub(crate) fn invalidate_session(&mut self, index: u64, id: &str) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        unindex(&mut self.sessions_by_node, &session.node, id);
        // As in Consul, the prepared queries bound to the session go with it.
        self.delete_session_queries(id);
        let keys: Vec<String> = self
            .held_keys
            .get(id)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            match session.behavior {
                SessionBehavior::Release => {
                    if let Some(entry) = self.kv.get(&key) {
                        let entry = KvEntry {
                            session: None,
                            modify_index: index,
                            ..entry.clone()
                        };
                        self.put_kv(entry);
                    }
                }
                SessionBehavior::Delete => {
                    if self.remove_kv(&key).is_some() {
                        self.bury(index, key);
                    }
                }
            }
        }
    }

    /// Ends the sessions of `node` tied to its check `check_id` (which turned critical or
    /// went away).
    pub(crate) fn invalidate_tied_sessions(&mut self, index: u64, node: &str, check_id: &str) {
        let tied: Vec<String> = self
            .sessions_of_node(node)
            .filter(|session| session.is_tied_to(check_id))
            .map(|session| session.id.clone())
            .collect();
        for id in tied {
            self.invalidate_session(index, &id);
        }
    }

    /// Ends every session of a node that leaves the catalog.
    pub(crate) fn invalidate_node_sessions(&mut self, index: u64, node: &str) {
        let ids: Vec<String> = self.sessions_of_node(node).map(|s| s.id.clone()).collect();
        for id in ids {
            self.invalidate_session(index, &id);
        }
    }

    /// Takes `key`'s lock for `session` (Consul's `kvsLockTxn`).
    pub(crate) fn kv_acquire(
        &mut self,
        index: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
    ) -> Outcome {
        if key.is_empty() {
            return rejected_invalid("Missing key name");
        }
        if session.is_empty() {
            return rejected_invalid("missing session");
        }
        if !self.sessions.contains_key(session) {
            return precondition(format!("invalid session {session:?}"));
        }
        let (create_index, lock_index) = match self.kv.get(key) {
            None => (index, 1),
            Some(existing) => match existing.session.as_deref() {
                // Its holder again: the value changes, the lock index stays.
                Some(holder) if holder == session => (existing.create_index, existing.lock_index),
                Some(_) => return Outcome::Condition(false),
                None => (existing.create_index, existing.lock_index + 1),
            },
        };
        self.put_kv(KvEntry {
            key: key.to_string(),
            value: value.to_vec(),
            flags,
            session: Some(session.to_string()),
            lock_index,
            create_index,
            modify_index: index,
        });
        self.kv_tombstones.remove(key);
        Outcome::Condition(true)
    }

    /// Gives up `key`'s lock held by `session` (Consul's `kvsUnlockTxn`).
    pub(crate) fn kv_release(
        &mut self,
        index: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
    ) -> Outcome {
        if key.is_empty() {
            return rejected_invalid("Missing key name");
        }
        if session.is_empty() {
            return rejected_invalid("missing session");
        }
        let Some(existing) = self.kv.get(key) else {
            return Outcome::Condition(false);
        };
        if existing.session.as_deref() != Some(session) {
            return Outcome::Condition(false);
        }
        let entry = KvEntry {
            value: value.to_vec(),
            flags,
            session: None,
            modify_index: index,
            ..existing.clone()
        };
        self.put_kv(entry);
        Outcome::Condition(true)
    }

    // ----- reads -----

    /// The sessions of a node, by id.
    pub fn sessions_of_node(&self, node: &str) -> impl Iterator<Item = &Session> {
        self.sessions_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.sessions.get(id))
    }

    /// The keys a session holds, in key order.
    pub fn keys_held_by(&self, session: &str) -> impl Iterator<Item = &str> {
        self.held_keys
            .get(session)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

fn precondition(message: String) -> Outcome {
    Outcome::Rejected(Rejection::Precondition(message))
}
