//! The RPC listener of a node (`--bind IP`, port 8300): openraft's messages and the few
//! cluster requests (hello, join, forwarded writes and reads, heartbeats, removal).

use std::sync::Arc;

use atoll_state::Command;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Extension;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tokio::time::Instant;

use crate::auth::{require_secret, Claim, Gate, Peer, Throttle};
use crate::consensus::{Consensus, READ_TIMEOUT};
use crate::feed::FeedRequest;
use crate::protocol::{
    Hello, JoinRequest, APPEND_PATH, FEED_PATH, HEARTBEAT_PATH, HELLO_PATH, JOIN_PATH,
    LIVENESS_PATH, READ_INDEX_PATH, RELAY_READ_INDEX_PATH, RELAY_WRITE_PATH, REMOVE_PATH,
    SNAPSHOT_PATH, VOTE_PATH, WRITE_PATH,
};
use crate::wire::Message;
use crate::TypeConfig;
use atoll_cluster::{ClusterError, ReadMode};

type NodeId = u64;

/// Largest RPC body accepted: batches of log entries and snapshot chunks.
const MAX_RPC_BODY: usize = 256 * 1024 * 1024;

impl Consensus {
    /// The RPC router; served on the node's RPC address. When the cluster has a secret,
    /// every request without it is refused before it reaches a handler (see `auth.rs`).
    pub fn rpc_router(&self, bootstrap_expect: usize) -> Router {
        let router = Router::new()
            .route(&format!("{APPEND_PATH}/{{to}}"), post(append))
            .route(&format!("{VOTE_PATH}/{{to}}"), post(vote))
            .route(&format!("{SNAPSHOT_PATH}/{{to}}"), post(snapshot))
            .route(WRITE_PATH, post(write))
            .route(READ_INDEX_PATH, post(read_index))
            .route(HEARTBEAT_PATH, post(heartbeat))
            .route(REMOVE_PATH, post(remove))
            .route(JOIN_PATH, post(join))
            .route(HELLO_PATH, post(hello))
            .route(FEED_PATH, post(feed))
            .route(RELAY_WRITE_PATH, post(relay_write))
            .route(RELAY_READ_INDEX_PATH, post(relay_read_index))
            .route(LIVENESS_PATH, post(liveness))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_RPC_BODY))
            .with_state((self.clone(), bootstrap_expect));
        match self.cluster_secret() {
            Some(secret) => router.layer(axum::middleware::from_fn_with_state(
                Arc::new(Gate::new(Arc::clone(secret))),
                require_secret,
            )),
            None => router,
        }
    }

    /// This node's hello. Fails when Raft cannot say whether this node is initialized (it
    /// has stopped): answering "not initialized" could count it into a bootstrap quorum.
    pub(crate) async fn hello_message(
        &self,
        bootstrap_expect: usize,
    ) -> Result<Hello, ClusterError> {
        Ok(Hello {
            id: self.node_id(),
            member: self.member().clone(),
            bootstrap_expect,
            initialized: self.is_initialized().await?,
            known: self.known_servers(),
        })
    }
}

type RpcState = State<(Consensus, usize)>;

/// A request refused for what the peer claims to be (403, saying why).
type Refused = (StatusCode, String);

/// Refuses `claim` unless the peer proved it (see [`Peer::admit`]); logged, as the peer is
/// misconfigured or an impostor.
fn admit(consensus: &Consensus, peer: &Peer, claim: Claim) -> Result<(), Refused> {
    let server_name = consensus
        .rpc_tls()
        .filter(|tls| tls.verify_server_hostname)
        .map(|tls| tls.server_name.as_str());
    // A refused node asks again several times a second.
    static LOGGED: Throttle = Throttle::new();
    peer.admit(server_name, claim).map_err(|reason| {
        if LOGGED.now() {
            tracing::warn!(caller = %peer.address, ?claim, "refused an RPC request (logged at most every 10 s): {reason}");
        } else {
            tracing::debug!(caller = %peer.address, ?claim, "refused an RPC request: {reason}");
        }
        (StatusCode::FORBIDDEN, reason)
    })
}

/// The peer the listener noted, or an unknown one (the router used without the listener).
fn peer_of(peer: Option<Extension<Peer>>) -> Peer {
    peer.map(|Extension(peer)| peer)
        .unwrap_or_else(Peer::unknown)
}

/// A Raft message for another Raft id than this node's: answered 409, which the sender
/// takes as that node being unreachable.
type Misaddressed = (StatusCode, String);

fn addressed_to_me(consensus: &Consensus, to: NodeId) -> Result<(), Misaddressed> {
    if to == consensus.node_id() {
        return Ok(());
    }
    Err((
        StatusCode::CONFLICT,
        format!(
            "this node is Raft id {}, not {to} (its data dir was replaced?)",
            consensus.node_id()
        ),
    ))
}

async fn append(
    State((consensus, _)): RpcState,
    peer: Option<Extension<Peer>>,
    Path(to): Path<NodeId>,
    Message(request, format): Message<AppendEntriesRequest<TypeConfig>>,
) -> Result<Response, Misaddressed> {
    admit(&consensus, &peer_of(peer), Claim::RaftRpc)?;
    addressed_to_me(&consensus, to)?;
    Ok(format.reply(&consensus.receive_append(request).await))
}

async fn vote(
    State((consensus, _)): RpcState,
    peer: Option<Extension<Peer>>,
    Path(to): Path<NodeId>,
    Message(request, format): Message<VoteRequest<NodeId>>,
) -> Result<Response, Misaddressed> {
    admit(&consensus, &peer_of(peer), Claim::RaftRpc)?;
    addressed_to_me(&consensus, to)?;
    Ok(format.reply(&consensus.receive_vote(request).await))
}

async fn snapshot(
    State((consensus, _)): RpcState,
    peer: Option<Extension<Peer>>,
    Path(to): Path<NodeId>,
    Message(request, format): Message<InstallSnapshotRequest<TypeConfig>>,
) -> Result<Response, Misaddressed> {
    admit(&consensus, &peer_of(peer), Claim::RaftRpc)?;
    addressed_to_me(&consensus, to)?;
    Ok(format.reply(&consensus.receive_snapshot(request).await))
}

async fn write(
    State((consensus, _)): RpcState,
    Message(command, format): Message<Command>,
) -> Response {
    format.reply(&consensus.forwarded_write(command).await)
}

async fn read_index(
    State((consensus, _)): RpcState,
    Message(mode, format): Message<ReadMode>,
) -> Response {
    if !consensus.is_leader() {
        return format.reply(&Err::<u64, _>(ClusterError::NoLeader));
    }
    let deadline = Instant::now() + READ_TIMEOUT;
    format.reply(&consensus.leader_read_index(mode, deadline).await)
}

async fn heartbeat(
    State((consensus, _)): RpcState,
    Message(node, format): Message<String>,
) -> Response {
    if !consensus.is_leader() {
        return format.reply(&Err::<(), _>(ClusterError::NoLeader));
    }
    format.reply(&consensus.heartbeat(&node).await)
}

/// A compute node's stream; only servers serve them (a compute node of an earlier release,
/// a Raft learner, has no feed to give).
async fn feed(
    State((consensus, _)): RpcState,
    Message(request, _): Message<FeedRequest>,
) -> Result<Response, (StatusCode, String)> {
    if !consensus.member().server {
        return Err((
            StatusCode::NOT_FOUND,
            "only servers serve the compute nodes' feed".to_string(),
        ));
    }
    if request.version > crate::feed::FEED_VERSION {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "feed version {} is newer than this server's {}: upgrade the servers first",
                request.version,
                crate::feed::FEED_VERSION
            ),
        ));
    }
    let body = consensus.feed().open(consensus.store(), request);
    Ok(Response::builder()
        .header(
            axum::http::header::CONTENT_TYPE,
            "application/vnd.atoll.feed",
        )
        .body(body)
        .unwrap_or_default())
}

async fn relay_write(
    State((consensus, _)): RpcState,
    Message(command, format): Message<Command>,
) -> Response {
    format.reply(&consensus.relay_write(command).await)
}

async fn relay_read_index(
    State((consensus, _)): RpcState,
    Message(mode, format): Message<ReadMode>,
) -> Response {
    format.reply(&consensus.relay_read_index(mode).await)
}

async fn liveness(
    State((consensus, _)): RpcState,
    Message(nodes, format): Message<Vec<String>>,
) -> Response {
    if !consensus.is_leader() {
        return format.reply(&Err::<(), _>(ClusterError::NoLeader));
    }
    format.reply(&consensus.streams_alive(nodes).await)
}

async fn remove(State((consensus, _)): RpcState, Message(id, format): Message<NodeId>) -> Response {
    if !consensus.is_leader() {
        return format.reply(&Err::<(), _>(ClusterError::NoLeader));
    }
    format.reply(&consensus.remove_member(id).await)
}

async fn join(
    State((consensus, _)): RpcState,
    peer: Option<Extension<Peer>>,
    Message(request, format): Message<JoinRequest>,
) -> Result<Response, Refused> {
    if request.member.server {
        admit(&consensus, &peer_of(peer), Claim::ServerMember)?;
    }
    Ok(format.reply(&consensus.add_member(request.id, request.member).await))
}

async fn hello(
    State((consensus, expect)): RpcState,
    caller: Option<Extension<Peer>>,
    Message(peer, format): Message<Hello>,
) -> Result<Response, (StatusCode, String)> {
    // A node saying it is a server counts towards bootstrapping and is told the cluster:
    // with --verify-server-hostname it must prove it first.
    if peer.member.server {
        admit(&consensus, &peer_of(caller), Claim::ServerMember)?;
    }
    // Only servers that would form the same cluster count towards bootstrapping: one with
    // another datacenter or another --bootstrap-expect is refused by its own side.
    if peer.member.server
        && peer.member.datacenter == consensus.member().datacenter
        && (peer.bootstrap_expect == expect || peer.initialized)
    {
        consensus.remember_server(peer.id, peer.member.clone());
    }
    match consensus.hello_message(expect).await {
        Ok(hello) => Ok(format.reply(&hello)),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}
