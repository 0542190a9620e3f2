//! A compute node's view of the other datacenters: it is not in the WAN pool, so every
//! request for another datacenter goes to the servers of its own, which forward it again.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use atoll_cluster::{
    ClusterError, ClusterHandle, DatacenterCoordinates, Federation, Member, Pending, PoolMember,
    Relay, Route,
};
use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long a server gets to list the datacenters.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The federation of a node outside the WAN pool: its relays are the servers of its own
/// datacenter (from the Raft membership), and the datacenters are what they list.
pub struct RelayFederation {
    datacenter: String,
    known: RwLock<Known>,
}

#[derive(Debug, Default, Clone)]
struct Known {
    servers: Vec<Relay>,
    datacenters: Vec<String>,
}

impl RelayFederation {
    /// A compute node of `datacenter` that has not learnt its servers yet.
    pub fn new(datacenter: impl Into<String>) -> Self {
        RelayFederation {
            datacenter: datacenter.into(),
            known: RwLock::new(Known::default()),
        }
    }

    /// Takes the servers of this datacenter from the membership `(id, member, voter)`.
    pub fn learn_servers(&self, members: &[(u64, Member, bool)]) {
        let servers: Vec<Relay> = members
            .iter()
            .filter(|(_, member, _)| member.server && member.datacenter == self.datacenter)
            .filter_map(|(_, member, _)| relay_of(member))
            .collect();
        if let Ok(mut known) = self.known.write() {
            known.servers = servers;
        }
    }

    /// Takes the datacenters a server listed (nearest first).
    pub fn learn_datacenters(&self, datacenters: Vec<String>) {
        if let Ok(mut known) = self.known.write() {
            known.datacenters = datacenters;
        }
    }

    fn known(&self) -> Known {
        self.known
            .read()
            .map(|known| known.clone())
            .unwrap_or_default()
    }

    /// Keeps the servers and the datacenters current, every `every`, for the life of the
    /// node.
    pub async fn run(self: Arc<Self>, cluster: ClusterHandle, every: Duration) {
        let client: Client<HttpConnector, Empty<Bytes>> = {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(ASK_TIMEOUT));
            Client::builder(TokioExecutor::new()).build(connector)
        };
        loop {
            self.refresh(&cluster.members(), &client).await;
            // Until the membership names a server (a compute node learns it from its stream,
            // after it started), look again soon rather than after a whole period.
            let pause = if self.known().servers.is_empty() {
                every.min(UNKNOWN_SERVERS_RETRY)
            } else {
                every
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Learns the servers from `members`, then the datacenters from the first server
    /// that lists them.
    async fn refresh(
        &self,
        members: &[(u64, Member, bool)],
        client: &Client<HttpConnector, Empty<Bytes>>,
    ) {
        self.learn_servers(members);
        for server in self.known().servers {
            match ask_datacenters(client, server.http_addr).await {
                Ok(names) => {
                    self.learn_datacenters(names);
                    return;
                }
                Err(reason) => tracing::debug!(
                    server = %server.name,
                    %reason,
                    "cannot list the datacenters"
                ),
            }
        }
    }
}

fn relay_of(member: &Member) -> Option<Relay> {
    let http_addr: SocketAddr = member.http_addr.parse().ok()?;
    Some(Relay {
        name: member.name.clone(),
        http_addr,
        dns_addr: member.dns_addr.parse().ok(),
    })
}

async fn ask_datacenters(
    client: &Client<HttpConnector, Empty<Bytes>>,
    server: SocketAddr,
) -> Result<Vec<String>, String> {
    let uri = format!("http://{server}/v1/catalog/datacenters")
        .parse::<hyper::Uri>()
        .map_err(|e| e.to_string())?;
    let asked = async {
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice::<Vec<String>>(&body).map_err(|e| e.to_string())
    };
    tokio::time::timeout(ASK_TIMEOUT, asked)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

/// How soon a node that knows no server of its datacenter yet looks again.
const UNKNOWN_SERVERS_RETRY: Duration = Duration::from_millis(200);

impl Federation for RelayFederation {
    fn datacenter(&self) -> &str {
        &self.datacenter
    }

    fn datacenters(&self) -> Vec<String> {
        let mut names = self.known().datacenters;
        if !names.contains(&self.datacenter) {
            names.insert(0, self.datacenter.clone());
        }
        names
    }

    /// Another datacenter goes through this one's servers, which tell an unknown
    /// datacenter from an unreachable one with the WAN pool they are in: the list learnt
    /// from them may be a few seconds old, their answer is not.
    fn route(&self, dc: &str) -> Route {
        if dc.is_empty() || dc == self.datacenter {
            return Route::Local;
        }
        let servers = self.known().servers;
        if servers.is_empty() {
            Route::Unreachable
        } else {
            Route::Via(servers)
        }
    }

    fn wan_members(&self) -> Option<Vec<PoolMember>> {
        None
    }

    fn local_servers(&self) -> Vec<Relay> {
        self.known().servers
    }

    fn wan_coordinates(&self) -> Vec<DatacenterCoordinates> {
        Vec::new()
    }

    fn join_wan<'a>(&'a self, _addresses: &'a [String]) -> Pending<'a, usize> {
        Box::pin(async {
            Err(ClusterError::Refused(
                "Must be a server to join WAN cluster".to_string(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, server: bool, datacenter: &str, dns_addr: &str) -> Member {
        Member {
            name: name.into(),
            rpc_addr: "127.0.0.1:8300".into(),
            http_addr: format!("127.0.0.{}:8500", name.len()),
            server,
            datacenter: datacenter.into(),
            dns_addr: dns_addr.into(),
            lan_addr: String::new(),
        }
    }

    #[test]
    fn another_datacenter_goes_through_the_servers_of_this_one() {
        let relay = RelayFederation::new("dc1");
        assert_eq!(relay.route("dc1"), Route::Local);
        assert_eq!(relay.route(""), Route::Local);
        // No server known yet: nobody can carry it.
        assert_eq!(relay.route("dc2"), Route::Unreachable);
        relay.learn_servers(&[
            (1, member("s1", true, "dc1", "127.0.0.2:8600"), true),
            (2, member("client", false, "dc1", "127.0.0.3:8600"), false),
            // A member written before DNS addresses were recorded.
            (3, member("old", true, "dc1", ""), true),
        ]);
        let Route::Via(relays) = relay.route("dc2") else {
            panic!("expected relays");
        };
        let names: Vec<&str> = relays.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["s1", "old"]);
        assert_eq!(relays[0].dns_addr, Some("127.0.0.2:8600".parse().unwrap()));
        assert_eq!(relays[1].dns_addr, None);
        assert_eq!(relay.datacenters(), ["dc1"]);
        relay.learn_datacenters(vec!["dc1".into(), "dc3".into(), "dc2".into()]);
        assert_eq!(relay.datacenters(), ["dc1", "dc3", "dc2"]);
        assert!(relay.wan_members().is_none());
    }

    #[tokio::test]
    async fn a_compute_node_cannot_join_the_wan_pool() {
        let relay = RelayFederation::new("dc1");
        let refused = relay.join_wan(&["127.0.0.1".into()]).await.unwrap_err();
        assert_eq!(refused.to_string(), "Must be a server to join WAN cluster");
    }

    #[tokio::test]
    async fn a_refresh_learns_the_servers_and_the_datacenters_they_list() {
        // A server of dc1 whose API lists two datacenters, and one that is down.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/v1/catalog/datacenters",
            axum::routing::get(|| async { axum::Json(vec!["dc1", "dc2"]) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down_addr = down.local_addr().unwrap();
        drop(down);
        let mut first = member("s1", true, "dc1", "");
        first.http_addr = down_addr.to_string();
        let mut second = member("s2", true, "dc1", "");
        second.http_addr = up.to_string();
        let relay = RelayFederation::new("dc1");
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        relay
            .refresh(&[(1, first, true), (2, second, true)], &client)
            .await;
        assert_eq!(relay.datacenters(), ["dc1", "dc2"]);
        assert!(matches!(relay.route("dc2"), Route::Via(relays) if relays.len() == 2));
    }
}
