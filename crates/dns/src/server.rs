//! The DNS sockets. UDP is served by one blocking thread per core, each with its own
//! `SO_REUSEPORT` socket and its own answer cache; TCP by a tokio task per connection.
//!
//! The cache is keyed by the request bytes after the id, so a hit needs no parsing, and it
//! is emptied whenever the catalog's index moves, so it never serves a stale answer. With
//! ACLs on, answers are computed with the agent's default token, and the cache is also
//! emptied when that token is replaced or the ACL tables change, so no answer computed
//! under other permissions is served.
//!
//! A name in another datacenter is sent, over the transport it came in on, to a relay of
//! the federation's route (a server of that datacenter, or of this one on a compute node)
//! and the answer passed back; the UDP threads hand that to the runtime and never cache it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use atoll_acl::AclSettings;
use atoll_cluster::{Federation, Route, Store};
use atoll_state::{AuthorizerCache, Table};
use hickory_proto::op::{Message, ResponseCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::answer::{
    bare_response, encode_within, format_error, query_response, udp_limit, DnsConfig,
};
use crate::metrics::count;
use crate::packet::{
    reply_to_packet_for, unknown_datacenter_reply, PacketReply, Transport, HEADER_LEN, MAX_MESSAGE,
};
use crate::query::PreparedQueries;

/// Entries per thread before the cache is emptied (bounds memory under random names).
const CACHE_ENTRIES: usize = 4096;
/// How long a recursor gets to answer.
const RECURSOR_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the relays of another datacenter get, all together, to answer.
const REMOTE_BUDGET: Duration = Duration::from_secs(2);
/// How long a relay asked about another datacenter has before the next one is asked too.
const HEDGE_AFTER: Duration = Duration::from_millis(250);
/// Requests answered on the runtime (other datacenters, prepared queries) at once.
const MAX_IN_FLIGHT: usize = 512;
/// How long a prepared query, its failovers included, may take before SERVFAIL.
const QUERY_BUDGET: Duration = Duration::from_secs(5);
/// Idle TCP connections are closed after this.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Failure to start the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsServerError {
    /// The address could not be bound.
    #[error("cannot listen for DNS on {address} ({protocol}): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// A bound, not yet running, DNS server.
pub struct DnsServer {
    udp: Vec<UdpSocket>,
    tcp: std::net::TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    config: DnsConfig,
    recursors: Vec<SocketAddr>,
    store: Store,
    queries: Arc<dyn PreparedQueries>,
    federation: Arc<dyn Federation>,
    /// The address the server listens on, so a relay that is this server is never asked.
    own: SocketAddr,
    /// Requests handed to the runtime (other datacenters, prepared queries) that may be in
    /// flight at once; a request beyond gets SERVFAIL at once.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Whether ACLs are on and the agent's default token, which DNS answers with.
    acl: Arc<AclSettings>,
    /// The default token's authorizer, resolved again only when it or the ACL tables change.
    authorizers: AuthorizerCache,
}

impl Shared {
    fn reply(&self, packet: &[u8], seed: u64, transport: Transport) -> PacketReply {
        reply_to_packet_for(
            packet,
            &self.store,
            &self.config,
            seed,
            transport,
            &self.acl,
            &self.authorizers,
        )
    }

    /// What a cached answer depends on besides the catalog: with ACLs on, the ACL tables'
    /// index (`acl_index`) and the default token.
    fn acl_stamp(&self, acl_index: u64) -> Option<(u64, Option<String>)> {
        self.acl
            .enabled
            .then(|| (acl_index, self.acl.tokens().default))
    }
}

impl DnsServer {
    /// Binds TCP and one UDP socket per worker at `address`. Prepared queries
    /// (`NAME.query.DOMAIN`) are run through `queries`; names in other datacenters go where
    /// `federation` routes them.
    pub fn bind(
        address: SocketAddr,
        config: DnsConfig,
        recursors: Vec<SocketAddr>,
        store: Store,
        queries: Arc<dyn PreparedQueries>,
        federation: Arc<dyn Federation>,
    ) -> Result<Self, DnsServerError> {
        let bind_error = |protocol| {
            move |source| DnsServerError::Bind {
                address,
                protocol,
                source,
            }
        };
        // TCP first and without SO_REUSEPORT: if anyone holds the port, this fails, so the
        // UDP sockets below can never silently share a port with another server.
        let tcp = std::net::TcpListener::bind(address).map_err(bind_error("tcp"))?;
        tcp.set_nonblocking(true).map_err(bind_error("tcp"))?;
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut udp = Vec::new();
        for _ in 0..workers {
            udp.push(udp_socket(address).map_err(bind_error("udp"))?);
        }
        Ok(DnsServer {
            udp,
            tcp,
            shared: Arc::new(Shared {
                config: DnsConfig {
                    has_recursors: !recursors.is_empty(),
                    ..config
                },
                recursors,
                store,
                queries,
                federation,
                own: address,
                in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
                acl: Arc::new(AclSettings::disabled()),
                authorizers: AuthorizerCache::default(),
            }),
        })
    }

    /// Answers with the permissions of the agent's default token under these ACL settings
    /// (without this, as if ACLs were off).
    pub fn with_acl(mut self, acl: Arc<AclSettings>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.acl = acl;
        }
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Starts the UDP threads and the TCP acceptor; runs until the process exits.
    pub fn start(self, runtime: Handle) -> io::Result<()> {
        for (i, socket) in self.udp.into_iter().enumerate() {
            let shared = self.shared.clone();
            let runtime = runtime.clone();
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || serve_udp(socket, shared, runtime))?;
        }
        let _guard = runtime.enter();
        let listener = TcpListener::from_std(self.tcp)?;
        runtime.spawn(serve_tcp(listener, self.shared));
        Ok(())
    }
}

fn udp_socket(address: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

struct CacheEntry {
    variants: Vec<Vec<u8>>,
}

fn serve_udp(socket: UdpSocket, shared: Arc<Shared>, runtime: Handle) {
    // Shared with the tasks that answer on the runtime, instead of a descriptor each.
    let socket = Arc::new(socket);
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut out = Vec::with_capacity(4096);
    let mut cache: HashMap<Vec<u8>, CacheEntry> = HashMap::new();
    let mut catalog = shared.store.watch(Table::Catalog);
    let mut cached_at = *catalog.borrow_and_update();
    let acl_table = shared.store.watch(Table::Acl);
    let mut cached_acl = shared.acl_stamp(*acl_table.borrow());
    let mut counter: u64 = rand::random();
    loop {
        let (len, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "dns udp receive");
                continue;
            }
        };
        let started = Instant::now();
        let packet = &buffer[..len];
        if len < HEADER_LEN {
            // Too short to carry an id: nothing sensible to answer.
            continue;
        }
        counter = counter.wrapping_add(1);
        if catalog.has_changed().unwrap_or(false) {
            let index = *catalog.borrow_and_update();
            if index != cached_at {
                cache.clear();
                cached_at = index;
            }
        }
        if shared.acl.enabled {
            let stamp = shared.acl_stamp(*acl_table.borrow());
            if stamp != cached_acl {
                cache.clear();
                cached_acl = stamp;
            }
        }
        if let Some(entry) = cache.get(&packet[2..]) {
            let variant = &entry.variants[(counter % entry.variants.len() as u64) as usize];
            count(packet, variant, Transport::Udp, started);
            send_with_id(&socket, &mut out, variant, [packet[0], packet[1]], peer);
            continue;
        }
        let variants = match shared.reply(packet, counter, Transport::Udp) {
            PacketReply::Ignore => continue,
            PacketReply::FormatError(answer) => {
                count(packet, &answer, Transport::Udp, started);
                let _ = socket.send_to(&answer, peer);
                continue;
            }
            PacketReply::Forward => {
                let request = Request::new(packet, peer, started);
                forward_udp(&socket, &shared, &runtime, request, None);
                continue;
            }
            PacketReply::Remote(dc) => {
                let request = Request::new(packet, peer, started);
                forward_udp(&socket, &shared, &runtime, request, Some(dc));
                continue;
            }
            PacketReply::Query(name) => {
                let request = Request::new(packet, peer, started);
                query_udp(&socket, &shared, &runtime, request, name);
                continue;
            }
            PacketReply::Answers(variants) => variants,
        };
        let Some(first) = variants.first() else {
            continue;
        };
        count(packet, first, Transport::Udp, started);
        let _ = socket.send_to(first, peer);
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(packet[2..].to_vec(), CacheEntry { variants });
    }
}

fn send_with_id(
    socket: &UdpSocket,
    out: &mut Vec<u8>,
    response: &[u8],
    id: [u8; 2],
    peer: SocketAddr,
) {
    out.clear();
    out.extend_from_slice(response);
    out[0] = id[0];
    out[1] = id[1];
    let _ = socket.send_to(out, peer);
}

/// A UDP request answered on the runtime: its bytes, who asked and when it arrived.
struct Request {
    packet: Vec<u8>,
    peer: SocketAddr,
    started: Instant,
}

impl Request {
    fn new(packet: &[u8], peer: SocketAddr, started: Instant) -> Self {
        Request {
            packet: packet.to_vec(),
            peer,
            started,
        }
    }

    /// Counts `answer` and sends it to the asker.
    fn answer(&self, socket: &UdpSocket, answer: &[u8]) {
        count(&self.packet, answer, Transport::Udp, self.started);
        let _ = socket.send_to(answer, self.peer);
    }
}

/// Hands a request to the runtime: to the recursors, or (`remote`) to another datacenter.
fn forward_udp(
    socket: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    runtime: &Handle,
    request: Request,
    remote: Option<String>,
) {
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        request.answer(socket, &servfail(&request.packet));
        return;
    };
    let reply_socket = socket.clone();
    let shared = shared.clone();
    runtime.spawn(async move {
        let _permit = permit;
        let packet = &request.packet;
        let answer = match remote {
            Some(dc) => ask_datacenter(&shared, &dc, packet, Transport::Udp).await,
            None => ask_recursors(&shared.recursors, packet)
                .await
                .unwrap_or_else(|| servfail(packet)),
        };
        request.answer(&reply_socket, &answer);
    });
}

/// The answer of datacenter `dc` to `packet`: from the first of its route's relays that
/// answers within [`REMOTE_BUDGET`], its id restored; NXDOMAIN when no route leads there;
/// SERVFAIL when none answers.
///
/// The relays are asked in order, the next one as soon as the previous fails or after
/// [`HEDGE_AFTER`] without an answer, every request staying open until the budget ends: a
/// relay that is down but not yet known to be (or a compute node's server that is itself
/// waiting on such a relay) delays the answer by a quarter second, not by its share.
async fn ask_datacenter(shared: &Shared, dc: &str, packet: &[u8], transport: Transport) -> Vec<u8> {
    let relays: Vec<SocketAddr> = match shared.federation.route(dc) {
        // `resolve` answers this datacenter's names itself; a route saying otherwise names
        // a datacenter this node cannot tell apart from its own.
        Route::Local | Route::Unknown => {
            return unknown_datacenter_reply(packet, &shared.store, &shared.config, transport)
        }
        Route::Unreachable => return servfail(packet),
        Route::Via(relays) => relays
            .iter()
            .filter_map(|relay| relay.dns_addr)
            .filter(|relay| !is_self(shared.own, *relay))
            .collect(),
    };
    let deadline = tokio::time::Instant::now() + REMOTE_BUDGET;
    // A fresh id upstream: an answer is matched to this request, not to a guess.
    let id: u16 = rand::random();
    let mut outgoing = packet.to_vec();
    outgoing[..2].copy_from_slice(&id.to_be_bytes());
    let outgoing: Arc<[u8]> = outgoing.into();
    // Dropped on return, which aborts the requests still open.
    let mut asking = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut next_at = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        if next < relays.len() && now >= next_at {
            let relay = relays[next];
            let outgoing = outgoing.clone();
            asking.spawn(async move {
                let answer = match transport {
                    Transport::Udp => ask_udp(relay, &outgoing, id).await,
                    Transport::Tcp => ask_tcp(relay, &outgoing, id).await,
                };
                (relay, answer)
            });
            next += 1;
            next_at = now + HEDGE_AFTER;
        }
        if asking.is_empty() && next >= relays.len() {
            break;
        }
        let wake = if next < relays.len() {
            next_at.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            joined = asking.join_next(), if !asking.is_empty() => match joined {
                Some(Ok((_, Some(mut answer)))) => {
                    answer[..2].copy_from_slice(&packet[..2]);
                    return answer;
                }
                Some(Ok((relay, None))) => {
                    tracing::debug!(%relay, dc, "relay did not answer a DNS request");
                    // It failed before the budget: ask the next one now.
                    next_at = tokio::time::Instant::now();
                }
                _ => next_at = tokio::time::Instant::now(),
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    servfail(packet)
}

/// Whether `relay` is this server's own address (asking it would loop).
fn is_self(own: SocketAddr, relay: SocketAddr) -> bool {
    relay == own
        || (relay.port() == own.port()
            && own.ip().is_unspecified()
            && (relay.ip().is_loopback() || relay.ip().is_unspecified()))
}

async fn ask_udp(relay: SocketAddr, packet: &[u8], id: u16) -> Option<Vec<u8>> {
    let local: SocketAddr = if relay.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await.ok()?;
    socket.connect(relay).await.ok()?;
    socket.send(packet).await.ok()?;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        // A connected socket only receives from the relay; a stray answer is skipped.
        let len = socket.recv(&mut buffer).await.ok()?;
        if len >= HEADER_LEN && buffer[..2] == id.to_be_bytes() {
            buffer.truncate(len);
            return Some(buffer);
        }
    }
}

async fn ask_tcp(relay: SocketAddr, packet: &[u8], id: u16) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(relay).await.ok()?;
    let length = u16::try_from(packet.len()).ok()?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.ok()?;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await.ok()?;
    let mut answer = vec![0u8; u16::from_be_bytes(length) as usize];
    stream.read_exact(&mut answer).await.ok()?;
    (answer.len() >= HEADER_LEN && answer[..2] == id.to_be_bytes()).then_some(answer)
}

/// Runs a prepared query on the runtime and sends its answer from there, so the UDP thread
/// goes on serving meanwhile.
fn query_udp(
    socket: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    runtime: &Handle,
    request: Request,
    name: String,
) {
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        request.answer(socket, &servfail(&request.packet));
        return;
    };
    let reply_socket = socket.clone();
    let shared = shared.clone();
    runtime.spawn(async move {
        let _permit = permit;
        let answer = answer_query(&shared, &request.packet, &name, Transport::Udp).await;
        request.answer(&reply_socket, &answer);
    });
}

/// The encoded answer to a prepared query's request, within the transport's limit.
async fn answer_query(shared: &Shared, packet: &[u8], name: &str, transport: Transport) -> Vec<u8> {
    let Ok(request) = Message::from_vec(packet) else {
        return servfail(packet);
    };
    let Ok(result) = tokio::time::timeout(QUERY_BUDGET, shared.queries.execute(name)).await else {
        return servfail(packet);
    };
    let limit = match transport {
        Transport::Udp => udp_limit(&request),
        Transport::Tcp => MAX_MESSAGE,
    };
    let response = shared
        .store
        .read(|state| query_response(&request, state, &shared.config, &result));
    encode_within(response, limit).unwrap_or_else(|| servfail(packet))
}

fn servfail(packet: &[u8]) -> Vec<u8> {
    match Message::from_vec(packet) {
        Ok(request) => {
            let mut response = Message::new(
                request.metadata.id,
                hickory_proto::op::MessageType::Response,
                request.metadata.op_code,
            );
            response.metadata.response_code = ResponseCode::ServFail;
            response.metadata.recursion_desired = request.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.add_queries(request.queries);
            response
                .to_vec()
                .unwrap_or_else(|_| bare_response(request.metadata.id, ResponseCode::ServFail))
        }
        Err(_) => format_error(u16::from_be_bytes([packet[0], packet[1]])),
    }
}

async fn ask_recursors(recursors: &[SocketAddr], packet: &[u8]) -> Option<Vec<u8>> {
    for recursor in recursors {
        let local: SocketAddr = if recursor.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let Ok(socket) = tokio::net::UdpSocket::bind(local).await else {
            continue;
        };
        if socket.send_to(packet, recursor).await.is_err() {
            continue;
        }
        let mut buffer = vec![0u8; MAX_MESSAGE];
        if let Ok(Ok((len, from))) =
            tokio::time::timeout(RECURSOR_TIMEOUT, socket.recv_from(&mut buffer)).await
        {
            if from == *recursor && len >= 2 && buffer[..2] == packet[..2] {
                buffer.truncate(len);
                return Some(buffer);
            }
        }
        tracing::debug!(%recursor, "recursor did not answer");
    }
    None
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_tcp_connection(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "dns tcp accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut seed: u64 = rand::random();
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let length = u16::from_be_bytes(length) as usize;
        let mut packet = vec![0u8; length];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        seed = seed.wrapping_add(1);
        let started = Instant::now();
        let answer = match shared.reply(&packet, seed, Transport::Tcp) {
            PacketReply::Ignore => return,
            PacketReply::FormatError(answer) => answer,
            PacketReply::Answers(mut answers) => answers.pop().unwrap_or_else(|| servfail(&packet)),
            PacketReply::Forward => ask_recursors(&shared.recursors, &packet)
                .await
                .unwrap_or_else(|| servfail(&packet)),
            PacketReply::Remote(dc) => ask_datacenter(&shared, &dc, &packet, Transport::Tcp).await,
            PacketReply::Query(name) => answer_query(&shared, &packet, &name, Transport::Tcp).await,
        };
        // Counted before it is sent: a client that has its answer sees it counted.
        count(&packet, &answer, Transport::Tcp, started);
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::query::{QueryAnswer, QueryFailure, QueryInstance, QueryPending};

    /// Answers `web` with a new address each time, slowly; knows no other query.
    #[derive(Default)]
    struct Counting {
        runs: AtomicU32,
    }

    impl PreparedQueries for Counting {
        fn execute<'a>(&'a self, name: &'a str) -> QueryPending<'a> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if name != "web" {
                    return Err(QueryFailure::NotFound);
                }
                let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(QueryAnswer {
                    ttl: Some(9),
                    datacenter: "dc1".into(),
                    instances: vec![QueryInstance {
                        node: "n1".into(),
                        node_address: format!("127.0.0.{run}"),
                        address: String::new(),
                        port: 80,
                    }],
                })
            })
        }
    }

    fn ask(socket: &UdpSocket, server: SocketAddr, id: u16, name: &str) -> Message {
        let mut request = Message::new(id, MessageType::Query, OpCode::Query);
        request.add_query(Query::query(
            Name::from_ascii(name).expect("a valid name"),
            RecordType::A,
        ));
        let bytes = request.to_vec().expect("the request encodes");
        socket.send_to(&bytes, server).expect("sent");
        let mut buffer = [0u8; 4096];
        let (len, _) = socket.recv_from(&mut buffer).expect("an answer");
        Message::from_vec(&buffer[..len]).expect("the answer parses")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prepared_queries_are_answered_over_udp_and_never_cached() {
        let config = DnsConfig {
            domain: Name::from_ascii("consul.").expect("a valid domain"),
            datacenter: "dc1".into(),
            service_ttl: 0,
            node_ttl: 0,
            only_passing: false,
            has_recursors: false,
        };
        let queries = Arc::new(Counting::default());
        // UDP sockets bound to port 0 would each get their own port: take a free one first.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = free.local_addr().expect("an address").port();
        drop(free);
        let server = DnsServer::bind(
            SocketAddr::from(([127, 0, 0, 1], port)),
            config,
            Vec::new(),
            Store::default(),
            queries.clone(),
            Arc::new(atoll_cluster::Alone::new("dc1", true)),
        )
        .expect("bound");
        let address = server.local_addr().expect("an address");
        server.start(Handle::current()).expect("started");
        let answers = tokio::task::spawn_blocking(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("a client socket");
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("a timeout");
            [
                ask(&socket, address, 1, "web.query.consul."),
                ask(&socket, address, 2, "web.query.consul."),
                ask(&socket, address, 3, "gone.query.consul."),
            ]
        })
        .await
        .expect("the client ran");
        let [first, second, missing] = answers;
        assert_eq!(first.metadata.id, 1);
        assert_eq!(first.answers[0].data.to_string(), "127.0.0.1");
        assert_eq!(first.answers[0].ttl, 9);
        assert_eq!(
            second.answers[0].data.to_string(),
            "127.0.0.2",
            "not cached"
        );
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(queries.runs.load(Ordering::SeqCst), 2);
    }
}

#[cfg(test)]
mod remote_tests {
    use std::collections::HashMap;

    use atoll_cluster::{Alone, DatacenterCoordinates, Pending, PoolMember, Relay, Store};
    use atoll_state::{Command, Registration, ServiceSpec, State};
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};

    use super::*;
    use crate::query::NoQueries;

    struct Fixed {
        datacenter: String,
        routes: HashMap<String, Route>,
    }

    impl Federation for Fixed {
        fn datacenter(&self) -> &str {
            &self.datacenter
        }
        fn datacenters(&self) -> Vec<String> {
            vec![self.datacenter.clone()]
        }
        fn route(&self, dc: &str) -> Route {
            self.routes.get(dc).cloned().unwrap_or(Route::Unknown)
        }
        fn wan_members(&self) -> Option<Vec<PoolMember>> {
            None
        }
        fn wan_coordinates(&self) -> Vec<DatacenterCoordinates> {
            Vec::new()
        }
        fn join_wan<'a>(&'a self, _: &'a [String]) -> Pending<'a, usize> {
            Box::pin(async { Ok(0) })
        }
    }

    fn config(dc: &str) -> DnsConfig {
        DnsConfig {
            domain: Name::from_ascii("consul.").unwrap(),
            datacenter: dc.into(),
            service_ttl: 0,
            node_ttl: 0,
            only_passing: false,
            has_recursors: false,
        }
    }

    /// A state where node `far` of `dc` runs service `web` at 10.2.0.1.
    fn catalog(dc: &str) -> Store {
        let mut state = State::default();
        state.apply(
            1,
            &Command::Register(Box::new(Registration {
                node: "far".into(),
                address: "10.2.0.1".into(),
                datacenter: dc.into(),
                service: Some(ServiceSpec {
                    id: "web".into(),
                    name: "web".into(),
                    port: 80,
                    tags: vec!["v1".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })),
        );
        Store::new(state, 1)
    }

    /// Serves DNS for `dc` on a free port of `ip` (UDP and TCP on the same port: the UDP
    /// sockets are bound one per worker, so the port cannot be left to the system).
    fn start(ip: &str, dc: &str, store: Store, federation: Arc<dyn Federation>) -> SocketAddr {
        let free = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
        let address = free.local_addr().unwrap();
        drop(free);
        let server = DnsServer::bind(
            address,
            config(dc),
            Vec::new(),
            store,
            Arc::new(NoQueries),
            federation,
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        server.start(Handle::current()).unwrap();
        addr
    }

    fn request(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut request = Message::new(0x4242, MessageType::Query, OpCode::Query);
        request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        request.to_vec().unwrap()
    }

    async fn over_udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&request(name, qtype), server).await.unwrap();
        let mut buffer = vec![0u8; MAX_MESSAGE];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buffer[..len]).unwrap()
    }

    async fn over_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
        let packet = request(name, qtype);
        let mut stream = TcpStream::connect(server).await.unwrap();
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&packet);
        stream.write_all(&framed).await.unwrap();
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await.unwrap();
        let mut answer = vec![0u8; u16::from_be_bytes(length) as usize];
        stream.read_exact(&mut answer).await.unwrap();
        Message::from_vec(&answer).unwrap()
    }

    async fn ask_over(tcp: bool, server: SocketAddr, name: &str, qtype: RecordType) -> Message {
        if tcp {
            over_tcp(server, name, qtype).await
        } else {
            over_udp(server, name, qtype).await
        }
    }

    fn addresses(message: &Message) -> Vec<String> {
        message
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    /// dc2's server on 127.0.20.1 and dc1's on 127.0.10.1, which routes dc2 there, dc3 to
    /// no live server, dc4 to a relay that never answers (a bound, silent UDP port).
    async fn two_datacenters() -> (SocketAddr, tokio::net::UdpSocket) {
        let dc2 = start(
            "127.0.20.1",
            "dc2",
            catalog("dc2"),
            Arc::new(Alone::new("dc2", true)),
        );
        let silent = tokio::net::UdpSocket::bind("127.0.30.1:0").await.unwrap();
        let relay = |name: &str, dns_addr| Relay {
            name: name.into(),
            http_addr: "127.0.0.1:1".parse().unwrap(),
            dns_addr: Some(dns_addr),
        };
        let routes = HashMap::from([
            ("dc2".into(), Route::Via(vec![relay("s.dc2", dc2)])),
            ("dc3".into(), Route::Unreachable),
            (
                "dc4".into(),
                Route::Via(vec![relay("quiet.dc4", silent.local_addr().unwrap())]),
            ),
        ]);
        let dc1 = start(
            "127.0.10.1",
            "dc1",
            Store::default(),
            Arc::new(Fixed {
                datacenter: "dc1".into(),
                routes,
            }),
        );
        (dc1, silent)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_in_another_datacenter_are_answered_there() {
        let (dc1, _silent) = two_datacenters().await;
        for tcp in [false, true] {
            let answer = ask_over(tcp, dc1, "web.service.dc2.consul.", RecordType::A).await;
            assert_eq!(answer.metadata.id, 0x4242);
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
            assert_eq!(addresses(&answer), vec!["10.2.0.1"]);
            let answer = ask_over(tcp, dc1, "v1.web.service.dc2.consul.", RecordType::A).await;
            assert_eq!(addresses(&answer), vec!["10.2.0.1"]);
            let answer = ask_over(tcp, dc1, "far.node.dc2.consul.", RecordType::A).await;
            assert_eq!(addresses(&answer), vec!["10.2.0.1"]);
            let answer = ask_over(tcp, dc1, "_web._tcp.service.dc2.consul.", RecordType::SRV).await;
            assert_eq!(answer.answers.len(), 1);
            // Not there either: dc2's own NXDOMAIN.
            let answer = ask_over(tcp, dc1, "db.service.dc2.consul.", RecordType::A).await;
            assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
            // Not asked elsewhere when it names this datacenter.
            let answer = ask_over(tcp, dc1, "web.service.dc1.consul.", RecordType::A).await;
            assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_and_unreachable_datacenters_get_consuls_codes() {
        let (dc1, _silent) = two_datacenters().await;
        for tcp in [false, true] {
            let answer = ask_over(tcp, dc1, "web.service.nowhere.consul.", RecordType::A).await;
            assert_eq!(answer.metadata.id, 0x4242);
            assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
            assert!(matches!(answer.authorities[0].data, RData::SOA(_)));
            let answer = ask_over(tcp, dc1, "web.service.dc3.consul.", RecordType::A).await;
            assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        }
        // A relay that never answers: SERVFAIL once the budget is spent, not later.
        let started = tokio::time::Instant::now();
        let answer = over_udp(dc1, "web.service.dc4.consul.", RecordType::A).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(answer.metadata.id, 0x4242);
        let took = started.elapsed();
        assert!(
            took >= REMOTE_BUDGET - Duration::from_millis(100),
            "{took:?}"
        );
        assert!(
            took < REMOTE_BUDGET + Duration::from_millis(500),
            "{took:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_first_relay_delays_the_answer_only_until_the_next_is_asked() {
        let dc2 = start(
            "127.0.22.1",
            "dc2",
            catalog("dc2"),
            Arc::new(Alone::new("dc2", true)),
        );
        let silent = tokio::net::UdpSocket::bind("127.0.32.1:0").await.unwrap();
        let relay = |name: &str, dns_addr| Relay {
            name: name.into(),
            http_addr: "127.0.0.1:1".parse().unwrap(),
            dns_addr: Some(dns_addr),
        };
        let routes = HashMap::from([(
            "dc2".into(),
            Route::Via(vec![
                relay("quiet.dc2", silent.local_addr().unwrap()),
                relay("s.dc2", dc2),
            ]),
        )]);
        let dc1 = start(
            "127.0.12.1",
            "dc1",
            Store::default(),
            Arc::new(Fixed {
                datacenter: "dc1".into(),
                routes,
            }),
        );
        let started = tokio::time::Instant::now();
        let answer = over_udp(dc1, "web.service.dc2.consul.", RecordType::A).await;
        let took = started.elapsed();
        assert_eq!(addresses(&answer), vec!["10.2.0.1"]);
        // The second relay is asked once the first has been silent for HEDGE_AFTER, not
        // once the first has used up its share of the budget.
        assert!(took >= HEDGE_AFTER - Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(900), "{took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_answers_are_not_cached() {
        let dc2_store = catalog("dc2");
        let dc2 = start(
            "127.0.21.1",
            "dc2",
            dc2_store.clone(),
            Arc::new(Alone::new("dc2", true)),
        );
        let routes = HashMap::from([(
            "dc2".into(),
            Route::Via(vec![Relay {
                name: "s.dc2".into(),
                http_addr: "127.0.0.1:1".parse().unwrap(),
                dns_addr: Some(dc2),
            }]),
        )]);
        let dc1 = start(
            "127.0.11.1",
            "dc1",
            Store::default(),
            Arc::new(Fixed {
                datacenter: "dc1".into(),
                routes,
            }),
        );
        let answer = over_udp(dc1, "web.service.dc2.consul.", RecordType::A).await;
        assert_eq!(addresses(&answer), vec!["10.2.0.1"]);
        // dc2 changes; dc1's catalog does not, so only a cache would keep the old answer.
        dc2_store.apply(
            2,
            &Command::Deregister(atoll_state::Deregistration {
                node: "far".into(),
                service_id: Some("web".into()),
                check_id: None,
            }),
        );
        let answer = over_udp(dc1, "web.service.dc2.consul.", RecordType::A).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    }
}
