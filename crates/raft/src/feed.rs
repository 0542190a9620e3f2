//! The compute nodes' feed: how a node that holds no Raft log keeps a copy of the state.
//!
//! A compute node opens one stream on one server's RPC listener (`POST /cluster/feed`, with
//! the same authentication as every RPC). The server answers with a stream of frames: the
//! Raft membership and leader, then either a copy of the state without keys and sessions
//! (`Snapshot`) or, when the node resumes from an index the server still covers, `Resumed`;
//! then the changes of every later entry (key/value changes left out) and the index the
//! cluster has applied up to, on every change and as a keepalive once a second.
//!
//! The server side ([`FeedHub`]) keeps a window of recent entries, each encoded once when it
//! is applied; every stream at that position is sent the same bytes, and a stream that lags
//! gets many entries in one frame. The hub follows the server's own store (the seam's feed
//! of changes), so the leader's work per write does not grow with the number of nodes: each
//! server serves the streams of the nodes that chose it.
//!
//! Frames on the wire: a 4-byte big-endian length, then a kind byte and its body
//! (MessagePack with named fields). Kind 0 is a [`Control`] message; kind 1 is a MessagePack
//! array of [`FeedEntry`], written as an array header followed by the entries' bytes as they
//! were encoded once.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atoll_cluster::{Applied, ClusterError, Member, ReadMode, Store};
use atoll_state::{Change, Command, Outcome, State, Table};
use bytes::Bytes;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::auth::{ClusterSecret, RpcTls};
use crate::protocol::{FEED_PATH, RELAY_READ_INDEX_PATH, RELAY_WRITE_PATH};
use crate::transport::{Failure, RpcClient, TransportError};

/// The version of the feed's frames this release speaks.
pub const FEED_VERSION: u32 = 1;

/// A stream that sends nothing this long is taken for dead (the server sends a keepalive
/// every [`KEEPALIVE`]).
pub const SILENCE: Duration = Duration::from_secs(3);
/// How often a stream says where it is even when nothing changed.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Entries the window keeps at most.
const WINDOW_ENTRIES: usize = 20_000;
/// Bytes of encoded entries the window keeps at most.
const WINDOW_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of entries sent in one frame at most (a lagging stream gets several). With
/// [`QUEUED_FRAMES`], what a stream holds while its node reads slowly: a few hundred lagging
/// streams on one server hold a few hundred MiB.
const FRAME_BYTES: usize = 1024 * 1024;
/// Frames queued for a stream's connection beyond the one being written.
const QUEUED_FRAMES: usize = 2;
/// How long the hub keeps encoding entries after its last stream closed, so that a node
/// away for a moment resumes without a snapshot.
const KEEP_WINDOW_IDLE: Duration = Duration::from_secs(120);
/// How often the hub looks at the membership and the leader.
const SERVERS_EVERY: Duration = Duration::from_millis(200);
/// How long opening a stream (its answer's head) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause a stream takes after each frame it sent, per stream open on the server: a
/// server sends at most about 1 / PACE_PER_STREAM (4,000) frames a second however many
/// nodes follow it (up to 1,000 streams, where the pause reaches its bound), each frame
/// carrying every entry since the last, so its cost per write does not grow with the number
/// of nodes; their views lag by up to the pause instead. A frame costs a server about 14 µs
/// (measured at 20,000 frames a second with 1,000 simulated nodes): 4,000 a second cost it
/// about 6% of a core.
const PACE_PER_STREAM: Duration = Duration::from_micros(250);
/// The pause is never shorter than this...
const PACE_MIN: Duration = Duration::from_millis(1);
/// ...nor longer than this.
const PACE_MAX: Duration = Duration::from_millis(250);

const KIND_CONTROL: u8 = 0;
const KIND_ENTRIES: u8 = 1;

/// What a node asks of a server when it opens its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedRequest {
    /// The node's name (the server reports it alive while the stream is open).
    pub node: String,
    /// Where the node's copy is, if it has one.
    #[serde(default)]
    pub resume: Option<Resume>,
    /// The feed version the node speaks.
    #[serde(default)]
    pub version: u32,
    /// The node's datacenter: a server of another one refuses the stream (empty: not
    /// checked).
    #[serde(default)]
    pub datacenter: String,
}

/// A position in a server's history: resumable on the server that gave it while its
/// window still covers `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The history the copy follows (see [`FeedFrame::Snapshot`]).
    pub history: u64,
    /// The index the copy is applied up to.
    pub index: u64,
}

/// The changes of one entry, key/value changes left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// The entry's log index.
    pub index: u64,
    /// Its changes.
    pub changes: Vec<Change>,
}

/// The messages of kind 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Control {
    Snapshot {
        history: u64,
        index: u64,
        state: Box<State>,
    },
    Resumed {
        history: u64,
        index: u64,
    },
    Applied {
        index: u64,
    },
    Servers {
        members: Vec<(u64, Member, bool)>,
        leader: Option<u64>,
    },
}

/// One frame of a node's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedFrame {
    /// The state without keys and sessions, applied up to `index`, on a server whose
    /// history is `history` (drawn when the server's feed started: a copy is resumable on
    /// that server only, so a rebuilt cluster is never resumed by mistake).
    Snapshot {
        /// The history to resume with.
        history: u64,
        /// The index the copy is applied up to.
        index: u64,
        /// The copy.
        state: Box<State>,
    },
    /// The resume was accepted: entries after `index` follow.
    Resumed {
        /// The history.
        history: u64,
        /// The index the node holds.
        index: u64,
    },
    /// The changes of later entries, in log order.
    Entries(Vec<FeedEntry>),
    /// The cluster has applied every entry up to `index`; the node now holds them all.
    Applied {
        /// The index.
        index: u64,
    },
    /// The Raft membership (id, record, voter) and the leader's id.
    Servers {
        /// Every Raft member.
        members: Vec<(u64, Member, bool)>,
        /// The leader, if one is known.
        leader: Option<u64>,
    },
}

/// Why a stream could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The server could not be reached, or refused the request.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Nothing arrived for [`SILENCE`].
    #[error("the feed from {0} fell silent")]
    Silent(String),
    /// The stream broke off or carried a frame that cannot be decoded.
    #[error("the feed from {0}: {1}")]
    Broken(String, String),
}

/// The servers a node tries, best first: a rendezvous hash of its name over their RPC
/// addresses, so that nodes spread evenly over the servers whoever leads, and a node keeps
/// its server while that server is up (when one goes, only its nodes move).
pub fn server_order(node: &str, servers: &[String]) -> Vec<String> {
    let mut scored: Vec<(u64, &String)> = servers
        .iter()
        .map(|server| (rendezvous_score(node, server), server))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, s)| s.clone()).collect()
}

/// FNV-1a over the node and the server, then a final mix: stable across releases and
/// platforms, as the choice must be.
fn rendezvous_score(node: &str, server: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain([0u8]).chain(server.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone spreads similar names poorly in the high bits.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

fn control_frame(control: &Control) -> Result<Vec<u8>, String> {
    let body = crate::wire::encode(control)?;
    Ok(frame(KIND_CONTROL, &body))
}

/// One frame of kind 1 holding `entries`, each already encoded: a MessagePack array header
/// and the entries' bytes.
fn entries_frame(out: &mut Vec<u8>, entries: &[Bytes]) {
    let mut header = Vec::with_capacity(5);
    let count = entries.len();
    if count < 16 {
        header.push(0x90 | count as u8);
    } else if count <= usize::from(u16::MAX) {
        header.push(0xdc);
        header.extend_from_slice(&(count as u16).to_be_bytes());
    } else {
        header.push(0xdd);
        header.extend_from_slice(&(count as u32).to_be_bytes());
    }
    let length = 1 + header.len() + entries.iter().map(Bytes::len).sum::<usize>();
    out.extend_from_slice(&(length as u32).to_be_bytes());
    out.push(KIND_ENTRIES);
    out.extend_from_slice(&header);
    for entry in entries {
        out.extend_from_slice(entry);
    }
}

/// Decodes the frame whose kind byte and body are `frame`.
fn decode_frame(frame: &[u8]) -> Result<FeedFrame, String> {
    let Some((&kind, body)) = frame.split_first() else {
        return Err("an empty frame".to_string());
    };
    match kind {
        KIND_CONTROL => Ok(match crate::wire::decode::<Control>(body)? {
            Control::Snapshot {
                history,
                index,
                state,
            } => FeedFrame::Snapshot {
                history,
                index,
                state,
            },
            Control::Resumed { history, index } => FeedFrame::Resumed { history, index },
            Control::Applied { index } => FeedFrame::Applied { index },
            Control::Servers { members, leader } => FeedFrame::Servers { members, leader },
        }),
        KIND_ENTRIES => Ok(FeedFrame::Entries(crate::wire::decode(body)?)),
        other => Err(format!("a frame of unknown kind {other}")),
    }
}

// ---------------------------------------------------------------------------------------
// The server side.

/// A server's side of the feed: the window of recent entries every stream reads from,
/// the membership frame, and the nodes whose streams are open. Cloning shares it.
#[derive(Clone)]
pub(crate) struct FeedHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    /// Drawn when the hub is made: what a node resumes with must come from this hub.
    history: u64,
    window: Mutex<Window>,
    /// Every entry up to this index is in the window (or before its base).
    position: watch::Sender<u64>,
    /// The membership frame, encoded once per change.
    servers: watch::Sender<Bytes>,
    /// The last copy of the state sent, encoded, and its index: sent again to nodes that
    /// start while the window still leads from it.
    snapshot: Mutex<Option<(u64, Bytes)>>,
    /// Held while a copy is made: streams that start together wait for that one copy
    /// instead of each making its own (a few hundred copies at once would hold gigabytes).
    copying: tokio::sync::Mutex<()>,
    /// Open streams by node name.
    streams: Mutex<BTreeMap<String, usize>>,
    /// How many streams are open, all nodes together.
    open: AtomicUsize,
    /// When the last stream closed (`None` while one is open).
    idle_since: Mutex<Option<Instant>>,
    /// Told the name of a node whose last stream on this server closed.
    on_closed: Mutex<Option<StreamClosed>>,
}

/// What a server does when a node's last stream on it closes (see [`FeedHub::on_closed`]).
pub(crate) type StreamClosed = Arc<dyn Fn(&str) + Send + Sync>;

struct Window {
    /// Every entry after this index is in `entries`.
    base: u64,
    /// Encoded [`FeedEntry`]s in log order.
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Window {
    /// The entries after `cursor` up to `upto`, at most about [`FRAME_BYTES`] of them, and
    /// the index they reach; `None` when the window no longer covers `cursor`.
    fn after(&self, cursor: u64, upto: u64) -> Option<(Vec<Bytes>, u64)> {
        if cursor < self.base {
            return None;
        }
        let start = self.entries.partition_point(|(index, _)| *index <= cursor);
        let mut taken = Vec::new();
        let mut size = 0;
        let mut reached = upto;
        for (index, bytes) in self.entries.range(start..) {
            if *index > upto {
                break;
            }
            if size > 0 && size + bytes.len() > FRAME_BYTES {
                // The rest goes in the next frame; the node has applied up to before it.
                reached = taken_last(&self.entries, start + taken.len());
                break;
            }
            size += bytes.len();
            taken.push(bytes.clone());
        }
        Some((taken, reached))
    }

    fn push(&mut self, index: u64, bytes: Bytes) {
        self.bytes += bytes.len();
        self.entries.push_back((index, bytes));
        while self.entries.len() > WINDOW_ENTRIES || self.bytes > WINDOW_BYTES {
            match self.entries.pop_front() {
                Some((index, bytes)) => {
                    self.bytes -= bytes.len();
                    self.base = index;
                }
                None => break,
            }
        }
    }

    fn reset(&mut self, base: u64) {
        self.entries.clear();
        self.bytes = 0;
        self.base = base;
    }
}

/// The pause after a frame when `open` streams share the server.
fn pace_for(open: usize) -> Duration {
    let open = u32::try_from(open).unwrap_or(u32::MAX);
    PACE_PER_STREAM
        .checked_mul(open)
        .unwrap_or(PACE_MAX)
        .clamp(PACE_MIN, PACE_MAX)
}

/// The index of the entry just before position `next` of `entries`.
fn taken_last(entries: &VecDeque<(u64, Bytes)>, next: usize) -> u64 {
    entries
        .get(next.saturating_sub(1))
        .map_or(0, |(index, _)| *index)
}

/// What the hub needs of its server.
pub(crate) trait FeedSource: Send + Sync + 'static {
    /// The server's store.
    fn store(&self) -> &Store;
    /// The Raft membership and the leader's id.
    fn servers(&self) -> (Vec<(u64, Member, bool)>, Option<u64>);
}

impl FeedHub {
    pub(crate) fn new() -> Self {
        FeedHub {
            inner: Arc::new(HubInner {
                history: rand::random::<u64>() >> 1,
                window: Mutex::new(Window {
                    base: 0,
                    entries: VecDeque::new(),
                    bytes: 0,
                }),
                position: watch::Sender::new(0),
                servers: watch::Sender::new(Bytes::new()),
                snapshot: Mutex::new(None),
                copying: tokio::sync::Mutex::new(()),
                streams: Mutex::new(BTreeMap::new()),
                open: AtomicUsize::new(0),
                idle_since: Mutex::new(Some(Instant::now())),
                on_closed: Mutex::new(None),
            }),
        }
    }

    /// Calls `hook` with a node's name whenever the node's last stream on this server closes
    /// (the node went, moved to another server, or its connection broke).
    pub(crate) fn on_closed(&self, hook: StreamClosed) {
        *self.inner.on_closed.lock() = Some(hook);
    }

    /// The nodes whose streams are open on this server.
    pub(crate) fn nodes(&self) -> Vec<String> {
        self.inner.streams.lock().keys().cloned().collect()
    }

    /// The pause a stream takes after a frame, for the streams open now.
    fn pace(&self) -> Duration {
        pace_for(self.inner.open.load(Ordering::Relaxed))
    }

    /// Whether entries are worth encoding: a stream is open, or one closed a moment ago.
    fn wanted(&self) -> bool {
        self.inner
            .idle_since
            .lock()
            .is_none_or(|since| since.elapsed() < KEEP_WINDOW_IDLE)
    }

    /// Follows the server's store for ever: fills the window and the membership frame.
    pub(crate) async fn run(&self, source: Arc<dyn FeedSource>) {
        let store = source.store().clone();
        let mut applied = store.watch_applied();
        let mut servers_tick = tokio::time::interval(SERVERS_EVERY);
        servers_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_servers = None;
        loop {
            let (last, mut changes) = store.subscribe_changes();
            self.inner.window.lock().reset(last);
            self.inner.position.send_replace(last);
            loop {
                let entry = tokio::select! {
                    entry = changes.recv() => entry,
                    changed = applied.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // Every entry up to the applied index was published before the
                        // index moved: take them first, then the index covers them.
                        let index = *applied.borrow_and_update();
                        let mut lost = false;
                        loop {
                            match changes.try_recv() {
                                Ok(entry) => self.take(&entry),
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Err(_) => {
                                    lost = true;
                                    break;
                                }
                            }
                        }
                        if lost {
                            break;
                        }
                        self.advance(index);
                        continue;
                    }
                    _ = servers_tick.tick() => {
                        let now = source.servers();
                        if last_servers.as_ref() != Some(&now) {
                            match control_frame(&Control::Servers {
                                members: now.0.clone(),
                                leader: now.1,
                            }) {
                                Ok(bytes) => {
                                    self.inner.servers.send_replace(Bytes::from(bytes));
                                    last_servers = Some(now);
                                }
                                Err(e) => tracing::warn!(error = %e, "cannot encode the membership for the feed"),
                            }
                        }
                        continue;
                    }
                };
                match entry {
                    Ok(entry) => self.take(&entry),
                    // Fell behind the store's feed, or it closed: start over from the
                    // store as it is; streams behind the new base get a snapshot.
                    Err(_) => break,
                }
            }
            tracing::debug!("the feed's window starts over");
        }
    }

    /// Takes one applied entry into the window.
    fn take(&self, applied: &Applied) {
        match applied {
            Applied::Entry { index, changes } => {
                let kept: Vec<Change> = changes
                    .iter()
                    .filter(|change| change.table() != Table::Kv)
                    .cloned()
                    .collect();
                if !kept.is_empty() {
                    let wanted = self.wanted();
                    let mut window = self.inner.window.lock();
                    if !wanted {
                        window.reset(*index);
                    } else {
                        let entry = FeedEntry {
                            index: *index,
                            changes: kept,
                        };
                        let mut bytes = Vec::with_capacity(256);
                        match atoll_state::snapshot::encode_into(&mut bytes, &entry) {
                            Ok(()) => window.push(*index, Bytes::from(bytes)),
                            Err(e) => {
                                tracing::error!(error = %e, index, "cannot encode an entry for the feed");
                                window.reset(*index);
                            }
                        }
                    }
                }
                self.advance(*index);
            }
            Applied::Replaced { index } => {
                self.inner.window.lock().reset(*index);
                *self.inner.snapshot.lock() = None;
                self.advance(*index);
            }
        }
    }

    fn advance(&self, index: u64) {
        self.inner.position.send_if_modified(|position| {
            if index > *position {
                *position = index;
                true
            } else {
                false
            }
        });
    }

    /// Opens a stream for `request`: the body to answer with.
    pub(crate) fn open(&self, store: &Store, request: FeedRequest) -> axum::body::Body {
        let (sender, receiver) = mpsc::channel::<Bytes>(QUEUED_FRAMES);
        let hub = self.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let _open = hub.register(&request.node);
            if let Err(e) = hub.serve(&store, request, sender).await {
                tracing::debug!(error = %e, "a feed stream ended");
            }
        });
        axum::body::Body::new(ChannelBody { receiver })
    }

    fn register(&self, node: &str) -> OpenStream {
        *self
            .inner
            .streams
            .lock()
            .entry(node.to_string())
            .or_default() += 1;
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        *self.inner.idle_since.lock() = None;
        OpenStream {
            hub: self.clone(),
            node: node.to_string(),
        }
    }

    /// Serves one stream until the node goes or falls out of the window.
    async fn serve(
        &self,
        store: &Store,
        request: FeedRequest,
        sender: mpsc::Sender<Bytes>,
    ) -> Result<(), String> {
        let gone = |_| "the node went".to_string();
        let mut servers = self.inner.servers.subscribe();
        let first = servers.borrow_and_update().clone();
        if !first.is_empty() {
            sender.send(first).await.map_err(gone)?;
        }
        let mut position = self.inner.position.subscribe();
        let resumable = request.resume.filter(|resume| {
            let window = self.inner.window.lock();
            resume.history == self.inner.history
                && resume.index >= window.base
                && resume.index <= *position.borrow()
        });
        let mut cursor = match resumable {
            Some(resume) => {
                let resumed = control_frame(&Control::Resumed {
                    history: self.inner.history,
                    index: resume.index,
                })?;
                sender.send(Bytes::from(resumed)).await.map_err(gone)?;
                resume.index
            }
            None => {
                let (index, bytes) = self.snapshot(store).await?;
                sender.send(bytes).await.map_err(gone)?;
                index
            }
        };
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // `changed()` marks the membership seen: what it announced is sent after the entries.
        let mut servers_changed = false;
        loop {
            let upto = *position.borrow_and_update();
            let sent = upto > cursor;
            while upto > cursor {
                let taken = self.inner.window.lock().after(cursor, upto);
                let Some((entries, reached)) = taken else {
                    return Err("the node fell out of the window".to_string());
                };
                let mut chunk = Vec::new();
                if !entries.is_empty() {
                    entries_frame(&mut chunk, &entries);
                }
                chunk.extend(control_frame(&Control::Applied { index: reached })?);
                sender.send(Bytes::from(chunk)).await.map_err(gone)?;
                cursor = reached;
            }
            if std::mem::take(&mut servers_changed) {
                let bytes = servers.borrow_and_update().clone();
                sender.send(bytes).await.map_err(gone)?;
            }
            if sent {
                // Whatever is applied meanwhile goes in the next frame, together.
                tokio::select! {
                    _ = tokio::time::sleep(self.pace()) => {}
                    _ = sender.closed() => return Ok(()),
                }
                continue;
            }
            tokio::select! {
                changed = position.changed() => changed.map_err(|_| "the hub stopped".to_string())?,
                changed = servers.changed() => {
                    changed.map_err(|_| "the hub stopped".to_string())?;
                    servers_changed = true;
                }
                _ = keepalive.tick() => {
                    let alive = control_frame(&Control::Applied { index: cursor })?;
                    sender.send(Bytes::from(alive)).await.map_err(gone)?;
                }
                _ = sender.closed() => return Ok(()),
            }
        }
    }

    /// The last copy sent, while the window still leads from it.
    fn cached_snapshot(&self) -> Option<(u64, Bytes)> {
        let (index, bytes) = self.inner.snapshot.lock().clone()?;
        (index >= self.inner.window.lock().base && self.wanted()).then_some((index, bytes))
    }

    /// A copy of the state to start a stream with, encoded, and its index: the last one
    /// sent while the window still leads from it, else a new one.
    async fn snapshot(&self, store: &Store) -> Result<(u64, Bytes), String> {
        if let Some(cached) = self.cached_snapshot() {
            return Ok(cached);
        }
        let _copying = self.inner.copying.lock().await;
        // Made by another stream while this one waited.
        if let Some(cached) = self.cached_snapshot() {
            return Ok(cached);
        }
        let store = store.clone();
        let history = self.inner.history;
        let (index, bytes) = tokio::task::spawn_blocking(move || {
            let (state, index) = store.copy_without_kv();
            control_frame(&Control::Snapshot {
                history,
                index,
                state: Box::new(state),
            })
            .map(|bytes| (index, Bytes::from(bytes)))
        })
        .await
        .map_err(|e| e.to_string())??;
        *self.inner.snapshot.lock() = Some((index, bytes.clone()));
        Ok((index, bytes))
    }
}

/// An open stream, counted while it lives.
struct OpenStream {
    hub: FeedHub,
    node: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut last = false;
        {
            let mut streams = self.hub.inner.streams.lock();
            self.hub.inner.open.fetch_sub(1, Ordering::Relaxed);
            if let Some(count) = streams.get_mut(&self.node) {
                *count -= 1;
                if *count == 0 {
                    streams.remove(&self.node);
                    last = true;
                }
            }
            if streams.is_empty() {
                *self.hub.inner.idle_since.lock() = Some(Instant::now());
            }
        }
        let hook = self.hub.inner.on_closed.lock().clone();
        if let (true, Some(hook)) = (last, hook) {
            hook(&self.node);
        }
    }
}

/// The answer's body: what the stream's task sends, as it sends it.
struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}

// ---------------------------------------------------------------------------------------
// The client side.

/// Opens streams, and sends a node's writes and read-index requests to servers. One per
/// process: cloning is cheap and every stream to a server shares one HTTP/2 connection.
#[derive(Clone)]
pub struct FeedClient {
    client: RpcClient,
}

impl FeedClient {
    /// A client whose requests carry `secret`, over TLS when `tls` says
    /// `--verify-outgoing`.
    pub fn new(secret: Option<ClusterSecret>, tls: Option<&RpcTls>) -> Self {
        FeedClient {
            client: RpcClient::new(secret.map(Arc::new), tls),
        }
    }

    /// Opens a stream on the server whose RPC address is `server`.
    pub async fn open(&self, server: &str, request: &FeedRequest) -> Result<FeedStream, FeedError> {
        let mut request = request.clone();
        request.version = FEED_VERSION;
        let body = self
            .client
            .open_stream(server, FEED_PATH, &request, OPEN_TIMEOUT)
            .await?;
        Ok(FeedStream {
            server: server.to_string(),
            body,
            buffer: Vec::new(),
        })
    }

    /// Commits `command` through the server at `server` (which sends it on to the leader):
    /// the outcome and the entry's index. The caller waits for its copy to reach the index.
    pub async fn write(
        &self,
        server: &str,
        command: &Command,
        timeout: Duration,
    ) -> Result<(Outcome, u64), ClusterError> {
        let reply: Result<Result<(Outcome, u64), ClusterError>, _> = self
            .client
            .call(server, RELAY_WRITE_PATH, command, timeout)
            .await;
        match reply {
            Ok(result) => result,
            Err(e) if e.not_sent() => Err(ClusterError::NoLeader),
            // Sent without an answer: it may have been committed.
            Err(_) => Err(ClusterError::Timeout),
        }
    }

    /// The index a read in `mode` must see, as the leader says through the server at
    /// `server`.
    pub async fn read_index(
        &self,
        server: &str,
        mode: ReadMode,
        timeout: Duration,
    ) -> Result<u64, ClusterError> {
        self.client
            .call(server, RELAY_READ_INDEX_PATH, &mode, timeout)
            .await
            .map_err(|_| ClusterError::NoLeader)?
    }

    /// The RPC client underneath, for the other requests a compute node makes.
    pub(crate) fn rpc(&self) -> &RpcClient {
        &self.client
    }
}

/// A node's open stream; read it with [`FeedStream::next`].
pub struct FeedStream {
    server: String,
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl FeedStream {
    /// The server's RPC address.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The next frame; `Ok(None)` when the server ended the stream (the node opens another,
    /// resuming).
    pub async fn next(&mut self) -> Result<Option<FeedFrame>, FeedError> {
        loop {
            if self.buffer.len() >= 4 {
                let length = u32::from_be_bytes([
                    self.buffer[0],
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                ]) as usize;
                if self.buffer.len() >= 4 + length {
                    let decoded = decode_frame(&self.buffer[4..4 + length]);
                    self.buffer.drain(..4 + length);
                    return decoded
                        .map(Some)
                        .map_err(|e| FeedError::Broken(self.server.clone(), e));
                }
            }
            let frame = tokio::time::timeout(SILENCE, self.body.frame())
                .await
                .map_err(|_| FeedError::Silent(self.server.clone()))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(FeedError::Broken(self.server.clone(), e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

impl From<FeedError> for ClusterError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::Transport(e) if matches!(e.failure, Failure::Timeout(_)) => {
                ClusterError::Timeout
            }
            other => ClusterError::Stopped(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_told_of_when_its_last_stream_on_the_server_closes() {
        let hub = FeedHub::new();
        let closed = Arc::new(Mutex::new(Vec::<String>::new()));
        let told = closed.clone();
        hub.on_closed(Arc::new(move |node: &str| {
            told.lock().push(node.to_string())
        }));
        let first = hub.register("n1");
        let second = hub.register("n1");
        let other = hub.register("n2");
        drop(first);
        assert!(closed.lock().is_empty(), "n1 still has a stream");
        drop(second);
        assert_eq!(*closed.lock(), ["n1"]);
        drop(other);
        assert_eq!(*closed.lock(), ["n1", "n2"]);
        assert!(hub.nodes().is_empty());
    }

    #[test]
    fn the_pause_after_a_frame_grows_with_the_streams_within_its_bounds() {
        assert_eq!(pace_for(0), PACE_MIN);
        assert_eq!(pace_for(1), PACE_MIN);
        assert_eq!(pace_for(2), PACE_MIN);
        assert_eq!(pace_for(400), Duration::from_millis(100));
        assert_eq!(pace_for(1_000), PACE_MAX);
        assert_eq!(pace_for(5_000), PACE_MAX);
        assert_eq!(pace_for(usize::MAX), PACE_MAX);
        // The frames a server sends a second stay the same whatever the streams, up to the
        // bound of the pause.
        for open in [10usize, 100, 1_000] {
            let frames = open as f64 / pace_for(open).as_secs_f64();
            assert!((3_900.0..=4_100.0).contains(&frames), "{open}: {frames}");
        }
    }

    #[test]
    fn nodes_spread_over_the_servers_and_keep_theirs_when_another_goes() {
        let servers: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:8300")).collect();
        let mut counts = BTreeMap::new();
        for n in 0..3000 {
            let order = server_order(&format!("node-{n}"), &servers);
            assert_eq!(order.len(), 3);
            *counts.entry(order[0].clone()).or_insert(0) += 1;
            // Without the last server, a node that did not choose it keeps its choice.
            let fewer = server_order(&format!("node-{n}"), &servers[..2]);
            if order[0] != servers[2] {
                assert_eq!(fewer[0], order[0]);
            } else {
                assert_eq!(fewer[0], order[1]);
            }
        }
        for count in counts.values() {
            assert!((800..1200).contains(count), "{counts:?}");
        }
    }

    #[test]
    fn entries_encoded_one_by_one_decode_as_one_frame() {
        for count in [1usize, 15, 16, 70_000] {
            let entries: Vec<FeedEntry> = (1..=count as u64)
                .map(|index| FeedEntry {
                    index,
                    changes: Vec::new(),
                })
                .collect();
            let encoded: Vec<Bytes> = entries
                .iter()
                .map(|entry| {
                    let mut out = Vec::new();
                    atoll_state::snapshot::encode_into(&mut out, entry).unwrap();
                    Bytes::from(out)
                })
                .collect();
            let mut out = Vec::new();
            entries_frame(&mut out, &encoded);
            let length = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
            assert_eq!(length + 4, out.len());
            assert_eq!(decode_frame(&out[4..]), Ok(FeedFrame::Entries(entries)));
        }
    }

    #[test]
    fn the_window_hands_out_what_follows_a_cursor_and_refuses_what_it_dropped() {
        let mut window = Window {
            base: 10,
            entries: VecDeque::new(),
            bytes: 0,
        };
        for index in [12, 15, 16] {
            window.push(index, Bytes::from(vec![index as u8]));
        }
        let (taken, reached) = window.after(10, 16).unwrap();
        assert_eq!(taken.len(), 3);
        assert_eq!(reached, 16);
        let (taken, reached) = window.after(12, 15).unwrap();
        assert_eq!(taken, vec![Bytes::from(vec![15u8])]);
        assert_eq!(reached, 15);
        assert!(window.after(9, 16).is_none());
        window.reset(20);
        assert!(window.after(16, 20).is_none());
        assert_eq!(window.after(20, 20).unwrap().0.len(), 0);
    }
}
