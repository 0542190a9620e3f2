//! A server's view of the other datacenters, through the WAN pool.
//!
//! The decisions are pure functions of the members and coordinates ([`order_datacenters`],
//! [`route_for`], [`coordinates_by_datacenter`]); [`GossipFederation`] applies them to what
//! the pool knows at the time of the call.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use atoll_cluster::{
    ClusterError, Coordinate, DatacenterCoordinates, Federation, KeyringAnswer, KeyringOperation,
    MemberStatus, Pending, PoolMember, Relay, Route,
};

use crate::{KeyringOp, Pool};

/// The tag naming a member's datacenter.
pub const TAG_DC: &str = "dc";
/// The tag naming a member's role; servers carry [`ROLE_SERVER`].
pub const TAG_ROLE: &str = "role";
/// The role of a server, as Consul tags its servers.
pub const ROLE_SERVER: &str = "consul";
/// The tag holding a server's HTTP address (`IP:PORT`).
pub const TAG_HTTP: &str = "http";
/// The tag holding a server's DNS address (`IP:PORT`).
pub const TAG_DNS: &str = "dns";

/// [`Federation`] for a server in the WAN pool.
#[derive(Debug, Clone)]
pub struct GossipFederation {
    datacenter: String,
    pool: Pool,
}

impl GossipFederation {
    /// This server's datacenter and its WAN pool.
    pub fn new(datacenter: impl Into<String>, pool: Pool) -> Self {
        GossipFederation {
            datacenter: datacenter.into(),
            pool,
        }
    }

    /// The WAN pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Federation for GossipFederation {
    fn datacenter(&self) -> &str {
        &self.datacenter
    }

    fn datacenters(&self) -> Vec<String> {
        let view = self.pool.view();
        order_datacenters(
            &self.datacenter,
            &view.coordinate,
            &view.pool_members(),
            &view.peer_coordinates,
        )
    }

    fn route(&self, dc: &str) -> Route {
        let view = self.pool.view();
        route_for(
            dc,
            &self.datacenter,
            &view.coordinate,
            &view.pool_members(),
            &view.peer_coordinates,
        )
    }

    fn wan_members(&self) -> Option<Vec<PoolMember>> {
        Some(self.pool.members())
    }

    fn wan_coordinates(&self) -> Vec<DatacenterCoordinates> {
        let view = self.pool.view();
        let members = view.pool_members();
        let mut coordinates = view.peer_coordinates.clone();
        coordinates.insert(view.local.name.clone(), view.coordinate.clone());
        let order = order_datacenters(
            &self.datacenter,
            &view.coordinate,
            &members,
            &view.peer_coordinates,
        );
        coordinates_by_datacenter(&order, &members, &coordinates)
    }

    fn join_wan<'a>(&'a self, addresses: &'a [String]) -> Pending<'a, usize> {
        Box::pin(async move {
            self.pool
                .join(addresses)
                .await
                .map_err(|e| ClusterError::Refused(e.to_string()))
        })
    }

    fn keyring(
        &self,
        operation: KeyringOperation,
        local_only: bool,
    ) -> Pending<'_, Vec<KeyringAnswer>> {
        let op = match operation {
            KeyringOperation::List => KeyringOp::List,
            KeyringOperation::Install(key) => KeyringOp::Install(key),
            KeyringOperation::Use(key) => KeyringOp::Use(key),
            KeyringOperation::Remove(key) => KeyringOp::Remove(key),
        };
        Box::pin(async move {
            let replies = self
                .pool
                .keyring(op, local_only)
                .await
                .map_err(|e| ClusterError::Refused(e.to_string()))?;
            Ok(replies
                .into_iter()
                .map(|reply| {
                    let member = PoolMember {
                        name: reply.member.name,
                        addr: reply.member.addr,
                        tags: reply.member.tags,
                        status: MemberStatus::Alive,
                    };
                    KeyringAnswer {
                        datacenter: member_datacenter(&member)
                            .unwrap_or(&self.datacenter)
                            .to_string(),
                        name: member.name,
                        outcome: reply.outcome,
                    }
                })
                .collect())
        })
    }
}

/// A server's datacenter: its `dc` tag, else what follows the last dot of its name. `None`
/// for a member that is not a server (no `role=consul` tag): only servers route, as Consul
/// refuses any other member in its WAN pool.
pub fn member_datacenter(member: &PoolMember) -> Option<&str> {
    if member.tags.get(TAG_ROLE).map(String::as_str) != Some(ROLE_SERVER) {
        return None;
    }
    member
        .tags
        .get(TAG_DC)
        .map(String::as_str)
        .or_else(|| member.name.rsplit_once('.').map(|(_, dc)| dc))
        .filter(|dc| !dc.is_empty())
}

/// The median of the estimated round trips from `own` to the live servers of `dc`
/// (a server without a coordinate counts as infinitely far; no live server: infinity).
fn datacenter_distance(
    dc: &str,
    own: &Coordinate,
    members: &[PoolMember],
    coordinates: &BTreeMap<String, Coordinate>,
) -> f64 {
    let mut distances: Vec<f64> = members
        .iter()
        .filter(|m| m.status == MemberStatus::Alive && member_datacenter(m) == Some(dc))
        .map(|m| {
            coordinates
                .get(&m.name)
                .map(|c| own.distance(c))
                .filter(|d| d.is_finite())
                .unwrap_or(f64::INFINITY)
        })
        .collect();
    if distances.is_empty() {
        return f64::INFINITY;
    }
    distances.sort_by(f64::total_cmp);
    distances[distances.len() / 2]
}

/// Every datacenter with a member that has not left: `local` first, then the others by
/// median round trip (Consul's order: sorted by name, then stably by distance, so ties and
/// unknown distances stay alphabetical).
pub fn order_datacenters(
    local: &str,
    own: &Coordinate,
    members: &[PoolMember],
    coordinates: &BTreeMap<String, Coordinate>,
) -> Vec<String> {
    let names: BTreeSet<&str> = members
        .iter()
        .filter(|m| m.status != MemberStatus::Left)
        .filter_map(member_datacenter)
        .filter(|dc| *dc != local)
        .collect();
    let mut others: Vec<(f64, &str)> = names
        .into_iter()
        .map(|dc| (datacenter_distance(dc, own, members, coordinates), dc))
        .collect();
    others.sort_by(|a, b| a.0.total_cmp(&b.0));
    std::iter::once(local.to_string())
        .chain(others.into_iter().map(|(_, dc)| dc.to_string()))
        .collect()
}

/// Where a request for `dc` goes: its live servers, nearest first (by estimated round trip
/// from `own`, then by name; unknown distances last).
pub fn route_for(
    dc: &str,
    local: &str,
    own: &Coordinate,
    members: &[PoolMember],
    coordinates: &BTreeMap<String, Coordinate>,
) -> Route {
    if dc.is_empty() || dc == local {
        return Route::Local;
    }
    // Servers that left are gone, as Consul's router drops them: a datacenter whose servers
    // all left has no path, like one never seen.
    let servers: Vec<&PoolMember> = members
        .iter()
        .filter(|m| m.status != MemberStatus::Left && member_datacenter(m) == Some(dc))
        .collect();
    if servers.is_empty() {
        return Route::Unknown;
    }
    let mut live: Vec<(f64, &PoolMember)> = servers
        .into_iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .map(|m| {
            let distance = coordinates
                .get(&m.name)
                .map(|c| own.distance(c))
                .filter(|d| d.is_finite())
                .unwrap_or(f64::INFINITY);
            (distance, m)
        })
        .collect();
    live.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    live.sort_by(|a, b| a.0.total_cmp(&b.0));
    let relays: Vec<Relay> = live.into_iter().filter_map(|(_, m)| relay(m)).collect();
    if relays.is_empty() {
        Route::Unreachable
    } else {
        Route::Via(relays)
    }
}

/// A server's HTTP and DNS addresses from its tags (`None` without a valid `http` tag).
fn relay(member: &PoolMember) -> Option<Relay> {
    let http_addr: SocketAddr = member.tags.get(TAG_HTTP)?.parse().ok()?;
    let dns_addr = member
        .tags
        .get(TAG_DNS)
        .and_then(|dns| dns.parse::<SocketAddr>().ok());
    Some(Relay {
        name: member.name.clone(),
        http_addr,
        dns_addr,
    })
}

/// The coordinates of each datacenter's servers that have not left, in the order given,
/// servers by name; `coordinates` includes this node's own.
pub fn coordinates_by_datacenter(
    order: &[String],
    members: &[PoolMember],
    coordinates: &BTreeMap<String, Coordinate>,
) -> Vec<DatacenterCoordinates> {
    order
        .iter()
        .map(|dc| {
            let mut servers: Vec<(String, Coordinate)> = members
                .iter()
                .filter(|m| m.status != MemberStatus::Left && member_datacenter(m) == Some(dc))
                .filter_map(|m| {
                    coordinates
                        .get(&m.name)
                        .map(|c| (m.name.clone(), c.clone()))
                })
                .collect();
            servers.sort_by(|a, b| a.0.cmp(&b.0));
            DatacenterCoordinates {
                datacenter: dc.clone(),
                coordinates: servers,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, dc: &str, status: MemberStatus, http: u16) -> PoolMember {
        let tags = [
            ("role".to_string(), "consul".to_string()),
            ("dc".to_string(), dc.to_string()),
            ("http".to_string(), format!("127.0.0.1:{http}")),
            ("dns".to_string(), format!("127.0.0.1:{}", http + 100)),
        ]
        .into_iter()
        .collect();
        PoolMember {
            name: format!("{name}.{dc}"),
            addr: format!("127.0.0.1:{}", http + 200)
                .parse()
                .expect("address"),
            tags,
            status,
        }
    }

    /// A coordinate `ms` milliseconds from the origin along the first axis.
    fn at(ms: f64) -> Coordinate {
        let mut c = Coordinate::default();
        c.vec[0] = ms / 1000.0;
        c.height = 0.0;
        c
    }

    fn coords(list: &[(&str, f64)]) -> BTreeMap<String, Coordinate> {
        list.iter()
            .map(|(n, ms)| (n.to_string(), at(*ms)))
            .collect()
    }

    use MemberStatus::{Alive, Failed, Left};

    #[test]
    fn datacenters_are_local_first_then_by_median_distance() {
        let members = vec![
            server("a", "dc1", Alive, 1),
            server("b1", "dc2", Alive, 2),
            server("b2", "dc2", Alive, 3),
            server("b3", "dc2", Alive, 4),
            server("c1", "dc3", Alive, 5),
            server("d1", "dc4", Alive, 6),
            server("e1", "dc5", Alive, 7),
        ];
        // dc2's median is 50 ms (one far outlier does not count), dc3 is 30 ms, dc4 and
        // dc5 are unknown (alphabetical among themselves, last).
        let c = coords(&[
            ("b1.dc2", 10.0),
            ("b2.dc2", 50.0),
            ("b3.dc2", 900.0),
            ("c1.dc3", 30.0),
        ]);
        let order = order_datacenters("dc1", &at(0.0), &members, &c);
        assert_eq!(order, ["dc1", "dc3", "dc2", "dc4", "dc5"]);
    }

    #[test]
    fn ties_stay_alphabetical_and_left_datacenters_disappear() {
        let members = vec![
            server("z", "zeta", Alive, 1),
            server("y", "alpha", Alive, 2),
            server("x", "gone", Left, 3),
            server("w", "down", Failed, 4),
        ];
        let c = coords(&[("z.zeta", 20.0), ("y.alpha", 20.0)]);
        let order = order_datacenters("dc1", &at(0.0), &members, &c);
        // A datacenter whose servers all failed is still listed (last: no live server).
        assert_eq!(order, ["dc1", "alpha", "zeta", "down"]);
    }

    #[test]
    fn routes_name_live_servers_nearest_first() {
        let members = vec![
            server("a", "dc1", Alive, 1),
            server("b1", "dc2", Alive, 2),
            server("b2", "dc2", Failed, 3),
            server("b3", "dc2", Alive, 4),
            server("b4", "dc2", Alive, 5),
            server("c1", "dc3", Failed, 6),
            server("d1", "dc4", Left, 7),
        ];
        let c = coords(&[("b1.dc2", 80.0), ("b2.dc2", 1.0), ("b3.dc2", 20.0)]);
        let own = at(0.0);
        assert_eq!(route_for("dc1", "dc1", &own, &members, &c), Route::Local);
        assert_eq!(route_for("", "dc1", &own, &members, &c), Route::Local);
        assert_eq!(
            route_for("nowhere", "dc1", &own, &members, &c),
            Route::Unknown
        );
        assert_eq!(
            route_for("dc3", "dc1", &own, &members, &c),
            Route::Unreachable
        );
        assert_eq!(route_for("dc4", "dc1", &own, &members, &c), Route::Unknown);
        let Route::Via(relays) = route_for("dc2", "dc1", &own, &members, &c) else {
            panic!("dc2 has live servers");
        };
        let names: Vec<&str> = relays.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b3.dc2", "b1.dc2", "b4.dc2"]);
        assert_eq!(relays[0].http_addr, "127.0.0.1:4".parse().expect("address"));
        assert_eq!(
            relays[0].dns_addr,
            Some("127.0.0.1:104".parse().expect("address"))
        );
    }

    #[test]
    fn a_server_without_an_http_tag_is_no_relay() {
        let mut lone = server("b1", "dc2", Alive, 2);
        lone.tags.remove("http");
        let route = route_for("dc2", "dc1", &at(0.0), &[lone], &BTreeMap::new());
        assert_eq!(route, Route::Unreachable);
    }

    #[test]
    fn the_datacenter_comes_from_the_tag_or_the_name() {
        let mut m = server("a", "dc9", Alive, 1);
        assert_eq!(member_datacenter(&m), Some("dc9"));
        m.tags.remove("dc");
        assert_eq!(member_datacenter(&m), Some("dc9"));
        m.name = "plain".into();
        assert_eq!(member_datacenter(&m), None);
    }

    #[test]
    fn coordinates_are_grouped_in_the_order_given() {
        let members = vec![
            server("a", "dc1", Alive, 1),
            server("b1", "dc2", Alive, 2),
            server("b2", "dc2", Left, 3),
            server("b3", "dc2", Alive, 4),
        ];
        let c = coords(&[("a.dc1", 0.0), ("b3.dc2", 5.0), ("b2.dc2", 5.0)]);
        let grouped =
            coordinates_by_datacenter(&["dc2".to_string(), "dc1".to_string()], &members, &c);
        assert_eq!(grouped[0].datacenter, "dc2");
        assert_eq!(
            grouped[0].coordinates,
            vec![("b3.dc2".to_string(), at(5.0))]
        );
        assert_eq!(grouped[1].coordinates, vec![("a.dc1".to_string(), at(0.0))]);
    }
}
