//! The DNS sockets. UDP is served by one blocking thread per core, each with its own
//! `SO_REUSEPORT` socket and its own answer cache; TCP by a tokio task per connection.
//!
//! The cache is keyed by the request bytes after the id, so a hit needs no parsing, and it
//! is emptied whenever the catalog's index moves, so it never serves a stale answer.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use atoll_cluster::Store;
use atoll_state::Table;
use hickory_proto::op::{Message, ResponseCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

use crate::answer::{
    bare_response, encode_within, format_error, query_response, udp_limit, DnsConfig,
};
use crate::packet::{reply_to_packet, PacketReply, Transport, HEADER_LEN, MAX_MESSAGE};
use crate::query::PreparedQueries;

/// Entries per thread before the cache is emptied (bounds memory under random names).
const CACHE_ENTRIES: usize = 4096;
/// How long a recursor gets to answer.
const RECURSOR_TIMEOUT: Duration = Duration::from_secs(2);
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
}

impl DnsServer {
    /// Binds TCP and one UDP socket per worker at `address`. Prepared queries
    /// (`NAME.query.DOMAIN`) are run through `queries`.
    pub fn bind(
        address: SocketAddr,
        config: DnsConfig,
        recursors: Vec<SocketAddr>,
        store: Store,
        queries: Arc<dyn PreparedQueries>,
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
            }),
        })
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
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut out = Vec::with_capacity(4096);
    let mut cache: HashMap<Vec<u8>, CacheEntry> = HashMap::new();
    let mut catalog = shared.store.watch(Table::Catalog);
    let mut cached_at = *catalog.borrow_and_update();
    let mut counter: u64 = rand::random();
    loop {
        let (len, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "dns udp receive");
                continue;
            }
        };
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
        if let Some(entry) = cache.get(&packet[2..]) {
            let variant = &entry.variants[(counter % entry.variants.len() as u64) as usize];
            send_with_id(&socket, &mut out, variant, [packet[0], packet[1]], peer);
            continue;
        }
        let variants = match reply_to_packet(
            packet,
            &shared.store,
            &shared.config,
            counter,
            Transport::Udp,
        ) {
            PacketReply::Ignore => continue,
            PacketReply::FormatError(answer) => {
                let _ = socket.send_to(&answer, peer);
                continue;
            }
            PacketReply::Forward => {
                forward_udp(&socket, &shared, &runtime, packet.to_vec(), peer);
                continue;
            }
            PacketReply::Query(name) => {
                query_udp(&socket, &shared, &runtime, packet.to_vec(), name, peer);
                continue;
            }
            PacketReply::Answers(variants) => variants,
        };
        let Some(first) = variants.first() else {
            continue;
        };
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

fn forward_udp(
    socket: &UdpSocket,
    shared: &Arc<Shared>,
    runtime: &Handle,
    packet: Vec<u8>,
    peer: SocketAddr,
) {
    let Ok(reply_socket) = socket.try_clone() else {
        return;
    };
    let shared = shared.clone();
    runtime.spawn(async move {
        let answer = match ask_recursors(&shared.recursors, &packet).await {
            Some(answer) => answer,
            None => servfail(&packet),
        };
        let _ = reply_socket.send_to(&answer, peer);
    });
}

/// Runs a prepared query on the runtime and sends its answer from there, so the UDP thread
/// goes on serving meanwhile.
fn query_udp(
    socket: &UdpSocket,
    shared: &Arc<Shared>,
    runtime: &Handle,
    packet: Vec<u8>,
    name: String,
    peer: SocketAddr,
) {
    let Ok(reply_socket) = socket.try_clone() else {
        return;
    };
    let shared = shared.clone();
    runtime.spawn(async move {
        let answer = answer_query(&shared, &packet, &name, Transport::Udp).await;
        let _ = reply_socket.send_to(&answer, peer);
    });
}

/// The encoded answer to a prepared query's request, within the transport's limit.
async fn answer_query(shared: &Shared, packet: &[u8], name: &str, transport: Transport) -> Vec<u8> {
    let Ok(request) = Message::from_vec(packet) else {
        return servfail(packet);
    };
    let result = shared.queries.execute(name).await;
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
        let answer =
            match reply_to_packet(&packet, &shared.store, &shared.config, seed, Transport::Tcp) {
                PacketReply::Ignore => return,
                PacketReply::FormatError(answer) => answer,
                PacketReply::Answers(mut answers) => {
                    answers.pop().unwrap_or_else(|| servfail(&packet))
                }
                PacketReply::Forward => ask_recursors(&shared.recursors, &packet)
                    .await
                    .unwrap_or_else(|| servfail(&packet)),
                PacketReply::Query(name) => {
                    answer_query(&shared, &packet, &name, Transport::Tcp).await
                }
            };
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
