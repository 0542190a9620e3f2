//! Consul sessions outside the replicated state: the leader's TTL timers and every node's
//! lock-delay table, both in memory, as Consul keeps them.
//!
//! TTL: the leader keeps one deadline per session with a TTL, twice the TTL away (Consul's
//! grace), reset by each renewal. When one passes, the leader writes
//! [`Command::SessionDestroy`]; the keys are released or deleted inside the apply of that
//! command, never by a timer. A new leader arms every TTL session afresh with the full
//! grace, so a session is never reaped before its TTL, whoever leads.
//!
//! Lock delay: after a session is invalidated, the keys it held cannot be acquired for its
//! `LockDelay` (at most [`MAX_LOCK_DELAY`]). Every node derives the table from the changes
//! it applies ([`lock_delays`]), so the node taking an `?acquire=` checks it before
//! proposing and answers `false` while the delay runs.

use std::collections::HashMap;
use std::time::Duration;

use atoll_cluster::{Applied, ClusterError, ClusterHandle};
use atoll_state::{Change, Command};
use http_body_util::Empty;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::checks::{plain_http_client, PlainClient};

/// How much longer than its TTL a session lives without renewal (Consul's
/// `SessionTTLMultiplier`).
pub const TTL_MULTIPLIER: u32 = 2;

/// The longest lock delay applied, whatever a session asks (Consul's `MaxLockDelay`).
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// How often the loop looks at leadership and at the deadlines.
const TICK: Duration = Duration::from_millis(100);

/// How long after a failed expiry write the leader tries again.
const EXPIRE_RETRY: Duration = Duration::from_secs(1);

/// How long a renewal forwarded to the leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// The handle the API uses: renewals and lock-delay checks. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    cluster: ClusterHandle,
    requests: mpsc::UnboundedSender<Request>,
    client: PlainClient,
}

enum Request {
    /// Reset a session's TTL; answers whether the session exists.
    Renew {
        id: String,
        reply: oneshot::Sender<bool>,
    },
    /// How long `key` stays under lock delay.
    LockDelay {
        key: String,
        reply: oneshot::Sender<Option<Duration>>,
    },
}

impl Sessions {
    /// The handle and the loop that serves it; the caller runs the loop for the life of the
    /// process.
    pub fn new(
        cluster: ClusterHandle,
    ) -> (
        Sessions,
        std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) {
        let (requests, incoming) = mpsc::unbounded_channel();
        let handle = Sessions {
            cluster: cluster.clone(),
            requests,
            client: plain_http_client(),
        };
        (handle, Box::pin(run(cluster, incoming)))
    }

    /// Renews a session on the leader (forwarded there from any other node): `Ok(false)`
    /// when the leader knows no such session.
    pub async fn renew(&self, id: &str) -> Result<bool, ClusterError> {
        if self.cluster.is_leader() {
            let (reply, answer) = oneshot::channel();
            self.send(Request::Renew {
                id: id.to_string(),
                reply,
            })?;
            return answer.await.map_err(|_| stopped());
        }
        let leader = self.cluster.leader_member().ok_or(ClusterError::NoLeader)?;
        self.forward_renew(&leader.http_addr, id).await
    }

    /// How long `key` stays under lock delay on this node, if it is.
    pub async fn lock_delay(&self, key: &str) -> Result<Option<Duration>, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::LockDelay {
            key: key.to_string(),
            reply,
        })?;
        answer.await.map_err(|_| stopped())
    }

    fn send(&self, request: Request) -> Result<(), ClusterError> {
        self.requests.send(request).map_err(|_| stopped())
    }

    /// `PUT /v1/session/renew/ID` on the leader's HTTP API, as Consul forwards the RPC.
    async fn forward_renew(&self, leader_http: &str, id: &str) -> Result<bool, ClusterError> {
        let id: String = form_urlencoded_path(id);
        let request = hyper::Request::builder()
            .method("PUT")
            .uri(format!("http://{leader_http}/v1/session/renew/{id}"))
            .body(Empty::new())
            .map_err(|e| ClusterError::Stopped(format!("renewal not forwarded: {e}")))?;
        let response = tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| ClusterError::Timeout)?
            .map_err(|e| ClusterError::Stopped(format!("renewal not forwarded: {e}")))?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(ClusterError::Stopped(format!(
                "the leader answered the renewal with {status}"
            ))),
        }
    }
}

/// A session id as one path segment (ids are UUIDs; anything else is escaped).
fn form_urlencoded_path(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn stopped() -> ClusterError {
    ClusterError::Stopped("the session loop stopped".to_string())
}

/// The keys one entry's changes put under lock delay, each with its delay: every key
/// released or deleted because the session holding it ended, for that session's
/// `LockDelay`, at most [`MAX_LOCK_DELAY`]. A release by `?release=` ends no session and
/// delays nothing.
pub fn lock_delays(changes: &[Change]) -> Vec<(String, Duration)> {
    let ended: HashMap<&str, u64> = changes
        .iter()
        .filter_map(|change| match change {
            Change::Session(row) if row.new.is_none() => row
                .old
                .as_ref()
                .map(|session| (row.key.as_str(), session.lock_delay_ns)),
            _ => None,
        })
        .collect();
    if ended.is_empty() {
        return Vec::new();
    }
    changes
        .iter()
        .filter_map(|change| {
            let Change::Kv(row) = change else {
                return None;
            };
            let holder = row.old.as_ref()?.session.as_deref()?;
            let still_held = row.new.as_ref().and_then(|e| e.session.as_deref()) == Some(holder);
            let delay = *ended.get(holder)?;
            (!still_held && delay > 0).then(|| {
                (
                    row.key.clone(),
                    Duration::from_nanos(delay).min(MAX_LOCK_DELAY),
                )
            })
        })
        .collect()
}

/// What remains of a key's lock delay at `now`, if any.
pub fn remaining_delay(until: Option<Instant>, now: Instant) -> Option<Duration> {
    until.filter(|until| *until > now).map(|until| until - now)
}

/// The loop's own state: the leader's deadlines and the node's lock delays.
#[derive(Default)]
struct Tables {
    /// Leader only: each TTL session's deadline and TTL.
    deadlines: HashMap<String, (Instant, Duration)>,
    /// Until when each key is under lock delay.
    delays: HashMap<String, Instant>,
    leading: bool,
}

impl Tables {
    fn arm(&mut self, id: &str, ttl: Duration, now: Instant) {
        self.deadlines
            .insert(id.to_string(), (now + ttl * TTL_MULTIPLIER, ttl));
    }

    /// Notes what one entry changed: new and ended sessions, keys put under lock delay.
    fn note(&mut self, changes: &[Change], now: Instant) {
        for (key, delay) in lock_delays(changes) {
            self.delays.insert(key, now + delay);
        }
        for change in changes {
            let Change::Session(row) = change else {
                continue;
            };
            match &row.new {
                None => {
                    self.deadlines.remove(&row.key);
                }
                Some(session) if self.leading && row.old.is_none() && session.ttl_ns > 0 => {
                    self.arm(&row.key, Duration::from_nanos(session.ttl_ns), now);
                }
                Some(_) => {}
            }
        }
    }
}

async fn run(cluster: ClusterHandle, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut tables = Tables::default();
    let (_, mut feed) = cluster.store().subscribe();
    let (expired_tx, mut expired_rx) = mpsc::unbounded_channel::<(String, bool)>();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = feed.recv() => match received {
                Ok(applied) => {
                    if let Applied::Entry { changes, .. } = applied.as_ref() {
                        tables.note(changes, Instant::now());
                    }
                    if matches!(applied.as_ref(), Applied::Replaced { .. }) && tables.leading {
                        arm_all(&cluster, &mut tables);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Entries were missed: start over from the state as it is now.
                    feed = cluster.store().subscribe().1;
                    if tables.leading {
                        arm_all(&cluster, &mut tables);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            request = requests.recv() => match request {
                Some(Request::Renew { id, reply }) => {
                    let ttl = cluster.store().read(|state| state.sessions.get(&id).map(|s| s.ttl_ns));
                    if let Some(ttl) = ttl.filter(|ttl| *ttl > 0) {
                        if tables.leading {
                            tables.arm(&id, Duration::from_nanos(ttl), Instant::now());
                        }
                    }
                    let _ = reply.send(ttl.is_some());
                }
                Some(Request::LockDelay { key, reply }) => {
                    let until = tables.delays.get(&key).copied();
                    let _ = reply.send(remaining_delay(until, Instant::now()));
                }
                None => return,
            },
            Some((id, written)) = expired_rx.recv() => {
                if !written && tables.leading {
                    // Try again soon: the session must not outlive its TTL by much.
                    let ttl = tables.deadlines.get(&id).map(|(_, ttl)| *ttl);
                    if ttl.is_none() {
                        let still = cluster.store().read(|state| state.sessions.get(&id).map(|s| s.ttl_ns));
                        if let Some(ttl) = still.filter(|ttl| *ttl > 0) {
                            tables.deadlines.insert(id, (Instant::now() + EXPIRE_RETRY, Duration::from_nanos(ttl)));
                        }
                    }
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                tables.delays.retain(|_, until| *until > now);
                let leading = cluster.is_leader();
                if leading && !tables.leading {
                    tables.leading = true;
                    arm_all(&cluster, &mut tables);
                } else if !leading && tables.leading {
                    tables.leading = false;
                    tables.deadlines.clear();
                }
                if tables.leading {
                    let due: Vec<String> = tables
                        .deadlines
                        .iter()
                        .filter(|(_, (deadline, _))| *deadline <= now)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in due {
                        tables.deadlines.remove(&id);
                        tracing::info!(session = %id, "session TTL ran out; invalidating it");
                        let cluster = cluster.clone();
                        let done = expired_tx.clone();
                        // A short write of its own, so renewals are not held up by a commit.
                        tokio::spawn(async move {
                            let command = Command::SessionDestroy { id: id.clone() };
                            let written = match cluster.write(command).await {
                                Ok(_) => true,
                                Err(e) => {
                                    tracing::warn!(session = %id, error = %e, "could not invalidate an expired session");
                                    false
                                }
                            };
                            let _ = done.send((id, written));
                        });
                    }
                }
            }
        }
    }
}

/// Leader: arms every TTL session with a full grace from now (Consul's
/// `initializeSessionTimers` after an election), keeping deadlines already armed.
fn arm_all(cluster: &ClusterHandle, tables: &mut Tables) {
    let now = Instant::now();
    let sessions: Vec<(String, u64)> = cluster.store().read(|state| {
        state
            .sessions
            .values()
            .filter(|s| s.ttl_ns > 0)
            .map(|s| (s.id.clone(), s.ttl_ns))
            .collect()
    });
    let live: std::collections::HashSet<&str> =
        sessions.iter().map(|(id, _)| id.as_str()).collect();
    tables.deadlines.retain(|id, _| live.contains(id.as_str()));
    for (id, ttl) in &sessions {
        if !tables.deadlines.contains_key(id) {
            tables.arm(id, Duration::from_nanos(*ttl), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_state::{KvEntry, RowChange, Session, SessionBehavior};

    fn session(id: &str, lock_delay_ns: u64) -> Session {
        Session {
            id: id.into(),
            name: String::new(),
            node: "n1".into(),
            checks: vec![],
            node_checks: vec![],
            service_checks: vec![],
            lock_delay_ns,
            behavior: SessionBehavior::Release,
            ttl: String::new(),
            ttl_ns: 0,
            create_index: 1,
            modify_index: 1,
        }
    }

    fn entry(key: &str, session: Option<&str>) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: vec![],
            flags: 0,
            session: session.map(Into::into),
            lock_index: 1,
            create_index: 1,
            modify_index: 1,
        }
    }

    fn ended(id: &str, lock_delay_ns: u64) -> Change {
        Change::Session(RowChange {
            key: id.into(),
            old: Some(session(id, lock_delay_ns)),
            new: None,
        })
    }

    fn kv(key: &str, old: Option<KvEntry>, new: Option<KvEntry>) -> Change {
        Change::Kv(RowChange {
            key: key.into(),
            old,
            new,
        })
    }

    #[test]
    fn keys_released_or_deleted_by_an_ended_session_are_delayed() {
        let changes = vec![
            ended("s", 15_000_000_000),
            kv("a", Some(entry("a", Some("s"))), Some(entry("a", None))),
            kv("b", Some(entry("b", Some("s"))), None),
            // Held by another session: not this session's key.
            kv("c", Some(entry("c", Some("t"))), Some(entry("c", None))),
        ];
        assert_eq!(
            lock_delays(&changes),
            vec![
                ("a".to_string(), Duration::from_secs(15)),
                ("b".to_string(), Duration::from_secs(15)),
            ]
        );
    }

    #[test]
    fn a_release_without_an_ended_session_or_a_zero_delay_delays_nothing() {
        let released = kv("a", Some(entry("a", Some("s"))), Some(entry("a", None)));
        assert!(lock_delays(std::slice::from_ref(&released)).is_empty());
        assert!(lock_delays(&[ended("s", 0), released.clone()]).is_empty());
        // A delay above Consul's maximum is capped.
        assert_eq!(
            lock_delays(&[ended("s", 3_600_000_000_000), released]),
            vec![("a".to_string(), MAX_LOCK_DELAY)]
        );
    }

    #[test]
    fn a_delay_remains_until_it_passes() {
        let now = Instant::now();
        let until = now + Duration::from_secs(2);
        assert_eq!(
            remaining_delay(Some(until), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(remaining_delay(Some(until), until), None);
        assert_eq!(remaining_delay(None, now), None);
    }
}
