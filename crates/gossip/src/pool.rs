//! A running pool: one task owns foca and everything it knows; the sockets and timers feed
//! it through a channel.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atoll_cluster::{Coordinate, MemberStatus, PoolMember, Vivaldi, VivaldiConfig};
use foca::{Foca, Member, NoCustomBroadcast, Notification, PostcardCodec, Runtime, State, Timer};
use rand::seq::SliceRandom;
use rand09::SeedableRng;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::keyring::{Crypto, Encryption, Key, Transport, NOT_ENABLED};
use crate::wire::{
    self, Exchange, Frame, KeyringAnswer, KeyringOp, KeyringRequest, Leave, Ping, Pong,
};
use crate::{NodeId, Profile};

/// What a pool is started with.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// This member's name (`NODE.DC` in the WAN pool).
    pub name: String,
    /// Where to listen (UDP and TCP on the same port; port 0 picks a free one). Unless
    /// `advertise` is given, the address bound is the one other members are told, so it
    /// must not be a wildcard.
    pub bind: SocketAddr,
    /// The address other members are told to reach this one at (UDP and TCP), when it is
    /// not the one bound: a NAT or a relay in between (`None`: the address bound).
    pub advertise: Option<SocketAddr>,
    /// This member's tags.
    pub tags: BTreeMap<String, String>,
    /// Timings.
    pub profile: Profile,
    /// The port [`Pool::join`] uses for an address given without one.
    pub default_port: u16,
    /// How the traffic is encrypted (`None`: it is not).
    pub encryption: Option<Encryption>,
    /// Only members whose `dc` tag is this one are accepted (a LAN pool: one datacenter);
    /// `None` accepts any (the WAN pool).
    pub datacenter: Option<String>,
}

/// Which members a pool accepts: those of its datacenter, or any.
#[derive(Debug, Clone, Default)]
struct Admission(Option<String>);

impl Admission {
    /// Why `member` is refused, if it is.
    fn refusal(&self, member: &NodeId) -> Option<String> {
        let wanted = self.0.as_deref()?;
        let theirs = member.tags.get("dc").map_or("", String::as_str);
        (theirs != wanted).then(|| {
            format!(
                "member {:?} is in datacenter {theirs:?}, this pool is {wanted:?}",
                member.name
            )
        })
    }
}

/// Why a pool could not start or join.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The UDP or TCP socket could not be bound.
    #[error("cannot listen for gossip on {addr} (port {port}, {protocol}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Its port.
        port: u16,
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The pool's task is gone (it was shut down).
    #[error("the gossip pool is stopped")]
    Stopped,
    /// No address given could be joined.
    #[error("{0}")]
    Join(String),
    /// A keyring operation on a pool that does not encrypt.
    #[error("{NOT_ENABLED}")]
    NotEncrypted,
}

/// One member's answer to a keyring operation.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyringReply {
    /// The member.
    pub member: NodeId,
    /// Its keys after the operation (primary first, base64), or why it failed (or did not
    /// answer).
    pub outcome: Result<Vec<String>, String>,
}

/// What a pool knows, published after every change.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// This member's identity.
    pub local: NodeId,
    /// Whether this member has left the pool.
    pub left: bool,
    /// Every other member known, with its state (failed and left ones until reaped).
    pub members: Vec<(NodeId, MemberStatus)>,
    /// This member's coordinate.
    pub coordinate: Coordinate,
    /// The last coordinate known of each other member.
    pub peer_coordinates: BTreeMap<String, Coordinate>,
}

impl View {
    /// Every member, this one first, then the others by name.
    pub fn pool_members(&self) -> Vec<PoolMember> {
        let own = PoolMember {
            name: self.local.name.clone(),
            addr: self.local.addr,
            tags: self.local.tags.clone(),
            status: if self.left {
                MemberStatus::Left
            } else {
                MemberStatus::Alive
            },
        };
        let mut others: Vec<PoolMember> = self
            .members
            .iter()
            .map(|(id, status)| PoolMember {
                name: id.name.clone(),
                addr: id.addr,
                tags: id.tags.clone(),
                status: *status,
            })
            .collect();
        others.sort_by(|a, b| a.name.cmp(&b.name));
        std::iter::once(own).chain(others).collect()
    }

    /// The gossip addresses of the other members, failed ones included: worth joining
    /// again after a restart.
    pub fn known_peers(&self) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, status)| *status != MemberStatus::Left)
            .map(|(id, _)| id.addr)
            .filter(|addr| *addr != self.local.addr)
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }
}

/// A handle on a running pool; clones share it. The pool stops when the last handle is
/// dropped or on [`Pool::shutdown`].
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Input>,
    view: watch::Receiver<Arc<View>>,
    local: SocketAddr,
    default_port: u16,
    exchange_timeout: Duration,
    crypto: Crypto,
    admission: Admission,
    tasks: tasks::Tasks,
}

/// Task handles, aborted together.
mod tasks {
    use std::sync::Mutex;
    use tokio::task::JoinHandle;

    #[derive(Default)]
    pub struct Tasks(Mutex<Vec<JoinHandle<()>>>);

    impl Tasks {
        pub fn new(tasks: Vec<JoinHandle<()>>) -> Self {
            Tasks(Mutex::new(tasks))
        }

        pub fn abort(&self) {
            let tasks = match self.0.lock() {
                Ok(mut tasks) => std::mem::take(&mut *tasks),
                Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
            };
            for task in tasks {
                task.abort();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tasks.abort();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("local", &self.inner.local)
            .finish_non_exhaustive()
    }
}

/// How many times a member said to be gone is tried while its port still accepts: a process
/// being killed closes its sockets one by one, and the connection that told of it may close
/// before its gossip listener does (measured: accepted 5 ms after `kill -9`).
const GONE_ATTEMPTS: u32 = 4;
/// The pause between those tries.
const GONE_RETRY: Duration = Duration::from_millis(50);

enum Input {
    Datagram(Vec<u8>, SocketAddr),
    Timer(Timer<NodeId>),
    Snapshot(oneshot::Sender<Exchange>),
    /// A peer's state, and who waits for it to be applied.
    Apply(Box<Exchange>, Option<oneshot::Sender<()>>),
    Leave(oneshot::Sender<()>),
    /// The member's gossip port refused a connection after a probe went unanswered.
    Refused(NodeId),
    /// A hint that the member of this name may be gone: its gossip port is tried now.
    Gone(String),
}

type Swim = Foca<NodeId, PostcardCodec, rand09::rngs::SmallRng, NoCustomBroadcast>;

impl Pool {
    /// Binds the sockets and starts the pool, alone until it joins others.
    pub async fn start(config: PoolConfig) -> Result<Pool, GossipError> {
        let (udp, tcp) = bind(config.bind).await?;
        let local = udp.local_addr().map_err(|source| GossipError::Bind {
            addr: config.bind,
            port: config.bind.port(),
            protocol: "udp",
            source,
        })?;
        let udp = Arc::new(udp);
        let identity = NodeId {
            name: config.name.clone(),
            addr: config.advertise.unwrap_or(local),
            started: now_micros(),
            bump: 0,
            tags: config.tags.clone(),
        };
        let seed: u64 = rand::random();
        let foca = Foca::new(
            identity.clone(),
            config.profile.foca_config(),
            rand09::rngs::SmallRng::seed_from_u64(seed),
            PostcardCodec,
        );
        let vivaldi = Vivaldi::new(VivaldiConfig::default(), seed);
        let (view_tx, view_rx) = watch::channel(Arc::new(View {
            local: identity,
            left: false,
            members: Vec::new(),
            coordinate: vivaldi.coordinate().clone(),
            peer_coordinates: BTreeMap::new(),
        }));
        let (tx, rx) = mpsc::channel(4096);
        let crypto = Crypto::new(config.encryption.clone());
        let admission = Admission(config.datacenter.clone());
        let owner = Owner {
            foca,
            socket: udp.clone(),
            crypto: crypto.clone(),
            tx: tx.clone(),
            vivaldi,
            peer_coordinates: BTreeMap::new(),
            pings: HashMap::new(),
            next_seq: 0,
            left: HashMap::new(),
            we_left: false,
            view: view_tx,
            profile: config.profile.clone(),
            admission: admission.clone(),
            heard: HashMap::new(),
        };
        let timeout = config.profile.exchange_timeout;
        let tasks = vec![
            tokio::spawn(owner.run(rx)),
            tokio::spawn(receive(udp, tx.clone(), crypto.clone())),
            tokio::spawn(accept(
                tcp,
                tx.clone(),
                timeout,
                crypto.clone(),
                config.name.clone(),
                admission.clone(),
            )),
        ];
        Ok(Pool {
            inner: Arc::new(Inner {
                tx,
                view: view_rx,
                local,
                default_port: config.default_port,
                exchange_timeout: timeout,
                crypto,
                admission,
                tasks: tasks::Tasks::new(tasks),
            }),
        })
    }

    /// The address the pool listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The address other members are told to reach this one at: the advertised address, or
    /// the one the pool listens on.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.inner.view.borrow().local.addr
    }

    /// What the pool knows now.
    pub fn view(&self) -> Arc<View> {
        self.inner.view.borrow().clone()
    }

    /// Follows the pool's view as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.inner.view.clone()
    }

    /// Every member, this one first.
    pub fn members(&self) -> Vec<PoolMember> {
        self.view().pool_members()
    }

    /// This member's coordinate.
    pub fn coordinate(&self) -> Coordinate {
        self.view().coordinate.clone()
    }

    /// The last coordinate known of each other member.
    pub fn peer_coordinates(&self) -> BTreeMap<String, Coordinate> {
        self.view().peer_coordinates.clone()
    }

    /// Gossip addresses worth joining again after a restart.
    pub fn known_peers(&self) -> Vec<SocketAddr> {
        self.view().known_peers()
    }

    /// Joins the pools of the addresses given (`IP`, `IP:PORT`, `HOST` or `HOST:PORT`),
    /// exchanging the full state with each over TCP; returns how many answered. Fails when
    /// none did, naming why for each.
    pub async fn join(&self, addresses: &[String]) -> Result<usize, GossipError> {
        let mut failures = Vec::new();
        let mut targets = Vec::new();
        for address in addresses {
            match resolve(address, self.inner.default_port).await {
                Ok(addr) => targets.push(addr),
                Err(e) => failures.push(format!("{address}: {e}")),
            }
        }
        let mut exchanges = JoinSet::new();
        for addr in targets {
            let tx = self.inner.tx.clone();
            let timeout = self.inner.exchange_timeout;
            let crypto = self.inner.crypto.clone();
            let admission = self.inner.admission.clone();
            exchanges.spawn(async move {
                (
                    addr,
                    exchange_with(addr, tx, timeout, crypto, admission).await,
                )
            });
        }
        let mut joined = 0;
        while let Some(done) = exchanges.join_next().await {
            match done {
                Ok((_, Ok(()))) => joined += 1,
                Ok((addr, Err(e))) => failures.push(format!("{addr}: {e}")),
                Err(e) => failures.push(e.to_string()),
            }
        }
        if joined == 0 {
            if failures.is_empty() {
                return Err(GossipError::Join("no address to join".into()));
            }
            return Err(GossipError::Join(format!(
                "cannot join: {}",
                failures.join("; ")
            )));
        }
        Ok(joined)
    }

    /// A hint that the member named `name` may be gone: a connection from it closed (the
    /// stream a compute node holds on its server). With a profile that fails members whose
    /// gossip port refuses connections, the port is tried at once rather than at the member's
    /// next unanswered probe: a refusal fails it now. Nothing happens for a member that still
    /// listens, one the pool does not hold alive, or when the pool is busy.
    pub fn check_gone(&self, name: &str) {
        let _ = self.inner.tx.try_send(Input::Gone(name.to_string()));
    }

    /// Leaves the pool gracefully: the members are told, and show this one as left.
    pub async fn leave(&self) -> Result<(), GossipError> {
        let (reply, done) = oneshot::channel();
        self.inner
            .tx
            .send(Input::Leave(reply))
            .await
            .map_err(|_| GossipError::Stopped)?;
        done.await.map_err(|_| GossipError::Stopped)
    }

    /// Whether the pool's traffic is encrypted.
    pub fn encrypted(&self) -> bool {
        self.inner.crypto.enabled()
    }

    /// Runs a keyring operation (`List`, `Install`, `Use`, `Remove` of a base64 key) here
    /// and on every live member (only here with `local_only`), each member over a TCP frame
    /// sealed with this member's primary key after the local change; answers each member's
    /// outcome, this one first. A member that does not answer in time is reported so.
    pub async fn keyring(
        &self,
        op: KeyringOp,
        local_only: bool,
    ) -> Result<Vec<KeyringReply>, GossipError> {
        if !self.inner.crypto.enabled() {
            return Err(GossipError::NotEncrypted);
        }
        let view = self.view();
        let mut replies = vec![KeyringReply {
            member: view.local.clone(),
            outcome: apply_keyring_op(&self.inner.crypto, &op),
        }];
        if local_only {
            return Ok(replies);
        }
        let mut asked = JoinSet::new();
        for (member, status) in &view.members {
            if *status != MemberStatus::Alive {
                continue;
            }
            let member = member.clone();
            let request = KeyringRequest {
                version: wire::KEYRING_VERSION,
                op: op.clone(),
            };
            let crypto = self.inner.crypto.clone();
            let timeout = self.inner.exchange_timeout;
            asked.spawn(async move {
                let outcome =
                    tokio::time::timeout(timeout, ask_keyring(member.addr, &crypto, request))
                        .await
                        .unwrap_or_else(|_| Err("no answer in time".to_string()));
                KeyringReply { member, outcome }
            });
        }
        let mut others = Vec::new();
        while let Some(done) = asked.join_next().await {
            if let Ok(reply) = done {
                others.push(reply);
            }
        }
        others.sort_by(|a, b| a.member.name.cmp(&b.member.name));
        replies.extend(others);
        Ok(replies)
    }

    /// Stops the pool at once, without telling anyone (as if the process died).
    pub fn shutdown(&self) {
        self.inner.tasks.abort();
    }
}

/// Whether a connection attempt failed because nothing listens there.
fn refused(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::ConnectionRefused
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Binds UDP and TCP on one port (a free one when the port is 0).
async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), GossipError> {
    let bind_error = |protocol, source| GossipError::Bind {
        addr,
        port: addr.port(),
        protocol,
        source,
    };
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| bind_error("udp", e))?;
        let port = udp.local_addr().map_err(|e| bind_error("udp", e))?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_error(
        "tcp",
        last.unwrap_or_else(|| io::Error::other("no port found")),
    ))
}

async fn resolve(address: &str, default_port: u16) -> io::Result<SocketAddr> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let found = if address.contains(':') {
        tokio::net::lookup_host(address).await?.next()
    } else {
        tokio::net::lookup_host((address, default_port))
            .await?
            .next()
    };
    found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address found"))
}

/// Applies a keyring operation to this member's keyring (and its file).
fn apply_keyring_op(crypto: &Crypto, op: &KeyringOp) -> Result<Vec<String>, String> {
    let parse = |key: &str| Key::parse(key).map_err(|e| e.to_string());
    match op {
        KeyringOp::List => crypto.keys().ok_or_else(|| NOT_ENABLED.to_string()),
        KeyringOp::Install(key) => {
            let key = parse(key)?;
            crypto.change(|ring| {
                ring.install(key);
                Ok(())
            })
        }
        KeyringOp::Use(key) => {
            let key = parse(key)?;
            crypto.change(|ring| ring.use_key(&key))
        }
        KeyringOp::Remove(key) => {
            let key = parse(key)?;
            crypto.change(|ring| ring.remove(&key))
        }
    }
}

/// Sends a keyring operation to the member at `addr`; its keys after it, or why not.
async fn ask_keyring(
    addr: SocketAddr,
    crypto: &Crypto,
    request: KeyringRequest,
) -> Result<Vec<String>, String> {
    let asked = async {
        let mut stream = TcpStream::connect(addr).await?;
        wire::write_frame(&mut stream, crypto, &Frame::KeyringRequest(request)).await?;
        wire::read_frame(&mut stream, crypto).await
    };
    match asked.await {
        Ok(Frame::KeyringAnswer(answer)) => match answer.error {
            Some(error) => Err(error),
            None => Ok(answer.keys),
        },
        Ok(_) => Err("answered something else than a keyring answer".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends this pool's state to `addr` and applies the state it answers with.
async fn exchange_with(
    addr: SocketAddr,
    tx: mpsc::Sender<Input>,
    timeout: Duration,
    crypto: Crypto,
    admission: Admission,
) -> io::Result<()> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let ours = snapshot(&tx).await?;
        wire::write_frame(&mut stream, &crypto, &Frame::Exchange(Box::new(ours))).await?;
        match wire::read_frame(&mut stream, &crypto).await? {
            Frame::Exchange(theirs) => Ok(*theirs),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answered something else than its state",
            )),
        }
    };
    let theirs = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))??;
    if let Some(refusal) = admission.refusal(&theirs.from) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, refusal));
    }
    let (applied, done) = oneshot::channel();
    tx.send(Input::Apply(Box::new(theirs), Some(applied)))
        .await
        .map_err(|_| io::Error::other("the gossip pool is stopped"))?;
    done.await
        .map_err(|_| io::Error::other("the gossip pool is stopped"))
}

async fn snapshot(tx: &mpsc::Sender<Input>) -> io::Result<Exchange> {
    let (reply, answer) = oneshot::channel();
    tx.send(Input::Snapshot(reply))
        .await
        .map_err(|_| io::Error::other("the gossip pool is stopped"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the gossip pool is stopped"))
}

/// Feeds datagrams to the owner, opened when the pool encrypts (dropping those no key
/// opens); drops them when it is too far behind (as a lossy network would).
async fn receive(socket: Arc<UdpSocket>, tx: mpsc::Sender<Input>, crypto: Crypto) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let packet = buf.get(..n).unwrap_or_default().to_vec();
                let packet = match crypto.open(Transport::Datagram, packet) {
                    Ok(packet) => packet,
                    Err(refusal) => {
                        tracing::debug!(peer = %from, "gossip datagram dropped: {}", refusal.text());
                        continue;
                    }
                };
                match tx.try_send(Input::Datagram(packet, from)) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Err(e) => {
                // ICMP errors of earlier sends surface here on some systems; keep going.
                tracing::trace!(error = %e, "gossip receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves state exchanges: reads the peer's state, answers with ours, applies theirs.
/// State exchanges served at once; a connection beyond waits for a slot before it is read.
const MAX_EXCHANGES: usize = 16;

async fn accept(
    listener: TcpListener,
    tx: mpsc::Sender<Input>,
    timeout: Duration,
    crypto: Crypto,
    name: String,
    admission: Admission,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_EXCHANGES));
    loop {
        // Each exchange may hold a large message in memory: bound how many run at once.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (mut stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "gossip accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        let crypto = crypto.clone();
        let name = name.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let served = async {
                match wire::read_frame_sealed(&mut stream, &crypto).await? {
                    (Frame::Exchange(theirs), _) => {
                        // A member of another datacenter still gets this side's state, so
                        // that it refuses the join itself, naming why.
                        let ours = snapshot(&tx).await?;
                        wire::write_frame(&mut stream, &crypto, &Frame::Exchange(Box::new(ours)))
                            .await?;
                        if let Some(refusal) = admission.refusal(&theirs.from) {
                            tracing::warn!(peer = %from, "gossip join refused: {refusal}");
                            return io::Result::Ok(None);
                        }
                        io::Result::Ok(Some(theirs))
                    }
                    (Frame::KeyringRequest(request), sealed) => {
                        // Only a holder of an installed key may look at or change the
                        // keyring, even while plain traffic is let in.
                        let outcome = if sealed {
                            apply_keyring_op(&crypto, &request.op)
                        } else if crypto.enabled() {
                            Err("keyring requests must be encrypted".to_string())
                        } else {
                            Err(NOT_ENABLED.to_string())
                        };
                        tracing::info!(
                            op = request.op.kind(),
                            ok = outcome.is_ok(),
                            "keyring operation from {from}"
                        );
                        let (keys, error) = match outcome {
                            Ok(keys) => (keys, None),
                            Err(error) => (Vec::new(), Some(error)),
                        };
                        let answer = KeyringAnswer {
                            version: wire::KEYRING_VERSION,
                            name,
                            keys,
                            error,
                        };
                        wire::write_frame(&mut stream, &crypto, &Frame::KeyringAnswer(answer))
                            .await?;
                        Ok(None)
                    }
                    (Frame::KeyringAnswer(_), _) => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "an unasked keyring answer",
                    )),
                }
            };
            match tokio::time::timeout(timeout, served).await {
                Ok(Ok(Some(theirs))) => {
                    let _ = tx.send(Input::Apply(theirs, None)).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(peer = %from, error = %e, "gossip state exchange"),
                Err(_) => tracing::debug!(peer = %from, "gossip state exchange timed out"),
            }
        });
    }
}

/// foca's way out: datagrams, timers and notifications.
struct Io<'a> {
    socket: &'a UdpSocket,
    crypto: &'a Crypto,
    tx: &'a mpsc::Sender<Input>,
}

impl Runtime<NodeId> for Io<'_> {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        match notification {
            Notification::MemberUp(id) => tracing::debug!(member = %id.name, "gossip member up"),
            Notification::MemberDown(id) => {
                tracing::info!(member = %id.name, "gossip member failed or left")
            }
            Notification::Rename(old, new) => tracing::debug!(
                member = %new.name,
                old = old.started,
                new = new.started,
                "gossip member restarted"
            ),
            Notification::Rejoin(id) => {
                tracing::info!(
                    bump = id.bump,
                    "rejoined the gossip pool after being failed"
                )
            }
            Notification::Defunct => tracing::warn!("declared failed by the gossip pool"),
            Notification::Active | Notification::Idle => {}
        }
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        let mut packet = Vec::with_capacity(data.len() + 1);
        packet.push(wire::FOCA);
        packet.extend_from_slice(data);
        send(self.socket, self.crypto, packet, to.addr);
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Input::Timer(event)).await;
        });
    }
}

fn send(socket: &UdpSocket, crypto: &Crypto, packet: Vec<u8>, to: SocketAddr) {
    let packet = crypto.seal(Transport::Datagram, packet);
    if let Err(e) = socket.try_send_to(&packet, to) {
        tracing::trace!(peer = %to, error = %e, "gossip send");
    }
}

struct Owner {
    foca: Swim,
    socket: Arc<UdpSocket>,
    crypto: Crypto,
    tx: mpsc::Sender<Input>,
    vivaldi: Vivaldi,
    peer_coordinates: BTreeMap<String, Coordinate>,
    /// Pings in flight: sequence number → (member, sent at).
    pings: HashMap<u64, (String, Instant)>,
    next_seq: u64,
    /// Members known to have left: name → start of the identity that left.
    left: HashMap<String, u64>,
    we_left: bool,
    view: watch::Sender<Arc<View>>,
    profile: Profile,
    admission: Admission,
    /// When a datagram last came from each address (an unanswered probe is told from an
    /// answered one by it).
    heard: HashMap<SocketAddr, Instant>,
}

impl Owner {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let mut probe = tokio::time::interval(self.profile.probe_period);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut push_pull = tokio::time::interval_at(
            Instant::now() + self.profile.push_pull_period,
            self.profile.push_pull_period,
        );
        push_pull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.handle(input),
                    None => return,
                },
                _ = probe.tick() => self.ping_someone(),
                _ = push_pull.tick() => self.push_pull(),
            }
            self.publish();
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Datagram(packet, from) => self.datagram(&packet, from),
            Input::Timer(timer) => {
                if let Timer::SendIndirectProbe { probed_id, .. } = &timer {
                    self.check_refused(probed_id);
                }
                let io = Io {
                    socket: &self.socket,
                    crypto: &self.crypto,
                    tx: &self.tx,
                };
                if let Err(e) = self.foca.handle_timer(timer, io) {
                    tracing::debug!(error = %e, "gossip timer");
                }
            }
            Input::Snapshot(reply) => {
                let _ = reply.send(self.exchange());
            }
            Input::Apply(exchange, applied) => {
                self.apply(*exchange);
                if let Some(applied) = applied {
                    self.publish();
                    let _ = applied.send(());
                }
            }
            Input::Leave(reply) => {
                self.leave();
                // The caller sees itself left once `leave` returns.
                self.publish();
                let _ = reply.send(());
            }
            Input::Refused(member) => self.fail_refused(member),
            Input::Gone(name) => {
                let member = self
                    .foca
                    .iter_members()
                    .find(|known| known.id().name == name && known.state() != State::Down)
                    .map(|known| known.id().clone());
                if let Some(member) = member {
                    self.try_port(member, GONE_ATTEMPTS);
                }
            }
        }
    }

    /// A direct probe of `member` is due an answer: when none came, and the pool fails
    /// members whose port refuses connections, tries a TCP connection to its gossip port.
    fn check_refused(&mut self, member: &NodeId) {
        let answered = self
            .heard
            .get(&member.addr)
            .is_some_and(|heard| heard.elapsed() < self.profile.probe_rtt);
        if answered {
            return;
        }
        self.try_port(member.clone(), 1);
    }

    /// Tries a TCP connection to `member`'s gossip port, up to `attempts` times
    /// [`GONE_RETRY`] apart while it is accepted; a refusal fails it (`fail_refused`).
    fn try_port(&mut self, member: NodeId, attempts: u32) {
        if !self.profile.fail_on_refused_connect || self.we_left {
            return;
        }
        let tx = self.tx.clone();
        let timeout = self.profile.probe_rtt.max(Duration::from_millis(50));
        tokio::spawn(async move {
            for attempt in 1..=attempts {
                match tokio::time::timeout(timeout, TcpStream::connect(member.addr)).await {
                    Ok(Err(e)) if refused(&e) => {
                        let _ = tx.send(Input::Refused(member)).await;
                        return;
                    }
                    // Accepted (a live process, or a dying one that has not closed its
                    // listener yet), or no answer in time (a busy machine, or a host cut off):
                    // proves nothing, so tried again while attempts remain.
                    Ok(Err(_)) => return,
                    _ if attempt < attempts => tokio::time::sleep(GONE_RETRY).await,
                    _ => return,
                }
            }
        });
    }

    /// Fails `member` (this very identity, if it is still active): nothing listens on its
    /// gossip port, so its process is gone. The others hear it at once.
    fn fail_refused(&mut self, member: NodeId) {
        let Some(incarnation) = self
            .foca
            .iter_members()
            .find(|known| *known.id() == member)
            .map(Member::incarnation)
        else {
            return;
        };
        tracing::info!(member = %member.name, "gossip port refuses connections: member failed");
        let mut io = Io {
            socket: &self.socket,
            crypto: &self.crypto,
            tx: &self.tx,
        };
        let down = Member::new(member, incarnation, State::Down);
        if let Err(e) = self.foca.apply_many(std::iter::once(down), true, &mut io) {
            tracing::debug!(error = %e, "failing a refused member");
        }
        if let Err(e) = self.foca.gossip(&mut io) {
            tracing::debug!(error = %e, "gossiping a failed member");
        }
    }

    fn local_name(&self) -> &str {
        &self.foca.identity().name
    }

    fn datagram(&mut self, packet: &[u8], from: SocketAddr) {
        let Some((&kind, body)) = packet.split_first() else {
            return;
        };
        self.heard.insert(from, Instant::now());
        match kind {
            wire::FOCA => {
                let io = Io {
                    socket: &self.socket,
                    crypto: &self.crypto,
                    tx: &self.tx,
                };
                if let Err(e) = self.foca.handle_data(body, io) {
                    tracing::trace!(peer = %from, error = %e, "gossip packet");
                }
            }
            wire::PING => {
                let Ok(ping) = rmp_serde::from_slice::<Ping>(body) else {
                    return;
                };
                if ping.from == self.local_name() {
                    return;
                }
                self.note_coordinate(&ping.from, ping.coordinate);
                let pong = Pong {
                    seq: ping.seq,
                    from: self.local_name().to_string(),
                    coordinate: self.vivaldi.coordinate().clone(),
                };
                if let Some(packet) = wire::datagram(wire::PONG, &pong) {
                    send(&self.socket, &self.crypto, packet, from);
                }
            }
            wire::PONG => {
                let Ok(pong) = rmp_serde::from_slice::<Pong>(body) else {
                    return;
                };
                let Some((member, sent)) = self.pings.remove(&pong.seq) else {
                    return;
                };
                if member != pong.from {
                    return;
                }
                let rtt = sent.elapsed().as_secs_f64();
                if let Err(e) = self.vivaldi.update(&member, &pong.coordinate, rtt) {
                    tracing::debug!(member = %member, error = %e, "coordinate update refused");
                }
                self.note_coordinate(&member, pong.coordinate);
            }
            wire::LEAVE => {
                let Ok(leave) = rmp_serde::from_slice::<Leave>(body) else {
                    return;
                };
                self.note_left(leave.name, leave.started);
            }
            _ => tracing::trace!(peer = %from, kind, "unknown gossip datagram"),
        }
    }

    fn note_coordinate(&mut self, member: &str, coordinate: Coordinate) {
        if coordinate.is_valid() && coordinate.vec.len() == atoll_cluster::DIMENSIONS {
            self.peer_coordinates.insert(member.to_string(), coordinate);
        }
    }

    fn note_left(&mut self, name: String, started: u64) {
        if name == self.local_name() {
            return;
        }
        self.vivaldi.forget(&name);
        let newest = self.left.get(&name).is_none_or(|known| *known < started);
        if newest {
            self.left.insert(name, started);
        }
    }

    /// Sends a ping to a random live member, to measure the round trip.
    fn ping_someone(&mut self) {
        let now = Instant::now();
        self.pings
            .retain(|_, (_, sent)| now.duration_since(*sent) < Duration::from_secs(10));
        if self.we_left {
            return;
        }
        let live: Vec<NodeId> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        let Some(target) = live.choose(&mut rand::thread_rng()) else {
            return;
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        let ping = Ping {
            seq: self.next_seq,
            from: self.local_name().to_string(),
            coordinate: self.vivaldi.coordinate().clone(),
        };
        if let Some(packet) = wire::datagram(wire::PING, &ping) {
            self.pings.insert(self.next_seq, (target.name.clone(), now));
            send(&self.socket, &self.crypto, packet, target.addr);
        }
    }

    /// Exchanges the full state with a random live member (anti-entropy), or, when none is
    /// alive, with a random failed one.
    ///
    /// foca contacts failed members again only while it has a live one: two members that
    /// declared each other failed (a cut between two lone servers) would otherwise stay
    /// apart after the link heals. The first exchange tells each that the other holds it
    /// failed, so each takes a renewed identity; when this member's identity changed
    /// during an exchange, a second exchange at once makes the renewed identities known.
    fn push_pull(&mut self) {
        if self.we_left {
            return;
        }
        let live: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        let target = match live.choose(&mut rand::thread_rng()) {
            Some(&target) => target,
            None => {
                let failed: Vec<SocketAddr> = self
                    .foca
                    .iter_membership_state()
                    .filter(|m| m.state() == State::Down)
                    .map(|m| m.id())
                    .filter(|id| {
                        id.name != self.foca.identity().name
                            && self.left.get(&id.name) != Some(&id.started)
                    })
                    .map(|id| id.addr)
                    .collect();
                match failed.choose(&mut rand::thread_rng()) {
                    Some(&target) => target,
                    None => return,
                }
            }
        };
        let tx = self.tx.clone();
        let timeout = self.profile.exchange_timeout;
        let crypto = self.crypto.clone();
        let admission = self.admission.clone();
        let view = self.view.subscribe();
        tokio::spawn(async move {
            let before = view.borrow().local.bump;
            if let Err(e) = exchange_with(
                target,
                tx.clone(),
                timeout,
                crypto.clone(),
                admission.clone(),
            )
            .await
            {
                tracing::debug!(peer = %target, error = %e, "gossip state exchange");
                return;
            }
            if view.borrow().local.bump != before {
                if let Err(e) = exchange_with(target, tx, timeout, crypto, admission).await {
                    tracing::debug!(peer = %target, error = %e, "gossip state exchange");
                }
            }
        });
    }

    fn exchange(&self) -> Exchange {
        let mut coordinates: Vec<(String, Coordinate)> = self
            .peer_coordinates
            .iter()
            .map(|(name, c)| (name.clone(), c.clone()))
            .collect();
        coordinates.push((
            self.local_name().to_string(),
            self.vivaldi.coordinate().clone(),
        ));
        let mut left: Vec<(String, u64)> = self
            .left
            .iter()
            .map(|(name, started)| (name.clone(), *started))
            .collect();
        if self.we_left {
            left.push((self.local_name().to_string(), self.foca.identity().started));
        }
        Exchange {
            version: wire::EXCHANGE_VERSION,
            from: self.foca.identity().clone(),
            members: self.foca.iter_membership_state().cloned().collect(),
            left,
            coordinates,
        }
    }

    fn apply(&mut self, exchange: Exchange) {
        let Exchange {
            from,
            members,
            left,
            coordinates,
            ..
        } = exchange;
        if from.name == self.local_name() || self.admission.refusal(&from).is_some() {
            return;
        }
        let members: Vec<Member<NodeId>> = members
            .into_iter()
            .filter(|member| self.admission.refusal(member.id()).is_none())
            .collect();
        for (name, started) in left {
            self.note_left(name, started);
        }
        for (name, coordinate) in coordinates {
            let fresh = name == from.name || !self.peer_coordinates.contains_key(&name);
            if fresh && name != self.local_name() {
                self.note_coordinate(&name, coordinate);
            }
        }
        if self.we_left {
            return;
        }
        let sender_left = self.left.get(&from.name) == Some(&from.started);
        let mut updates = members;
        if !sender_left {
            updates.push(Member::alive(from));
        }
        let io = Io {
            socket: &self.socket,
            crypto: &self.crypto,
            tx: &self.tx,
        };
        if let Err(e) = self.foca.apply_many(updates.into_iter(), true, io) {
            tracing::debug!(error = %e, "applying a gossip state exchange");
        }
    }

    fn leave(&mut self) {
        if self.we_left {
            return;
        }
        self.we_left = true;
        let leave = Leave {
            name: self.local_name().to_string(),
            started: self.foca.identity().started,
        };
        if let Some(packet) = wire::datagram(wire::LEAVE, &leave) {
            let targets: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
            // Twice: one lost datagram should not turn a leave into a failure.
            for _ in 0..2 {
                for addr in &targets {
                    send(&self.socket, &self.crypto, packet.clone(), *addr);
                }
            }
        }
        let io = Io {
            socket: &self.socket,
            crypto: &self.crypto,
            tx: &self.tx,
        };
        if let Err(e) = self.foca.leave_cluster(io) {
            tracing::debug!(error = %e, "leaving the gossip pool");
        }
    }

    fn publish(&mut self) {
        let mut members = Vec::new();
        for member in self.foca.iter_membership_state() {
            let id = member.id();
            if id.name == self.foca.identity().name {
                // An earlier run of this member, which this one replaced.
                continue;
            }
            let status = if self.left.get(&id.name) == Some(&id.started) {
                MemberStatus::Left
            } else {
                match member.state() {
                    State::Alive | State::Suspect => MemberStatus::Alive,
                    State::Down => MemberStatus::Failed,
                }
            };
            members.push((id.clone(), status));
        }
        // Forget what belongs to reaped members.
        let known: std::collections::HashSet<&str> =
            members.iter().map(|(id, _)| id.name.as_str()).collect();
        self.left.retain(|name, _| known.contains(name.as_str()));
        self.peer_coordinates
            .retain(|name, _| known.contains(name.as_str()));
        let addresses: std::collections::HashSet<SocketAddr> =
            members.iter().map(|(id, _)| id.addr).collect();
        self.heard.retain(|addr, _| addresses.contains(addr));
        let view = View {
            local: self.foca.identity().clone(),
            left: self.we_left,
            members,
            coordinate: self.vivaldi.coordinate().clone(),
            peer_coordinates: self.peer_coordinates.clone(),
        };
        self.view.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }
}
