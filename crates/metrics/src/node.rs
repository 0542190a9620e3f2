//! The instruments a node updates as it works: HTTP requests, DNS queries, Raft's commit,
//! apply and snapshot times and leader changes, the scheduler's plans. One process is one
//! node, so they live in one process-wide [`node`]; the figures read from the state at
//! scrape time (catalog sizes, tasks, Raft's indexes) are not here but in the API.
//!
//! Every label value is from a fixed list, or an HTTP route template (bounded by the
//! router's routes and, in any case, by [`ROUTE_SERIES`] series).

use std::sync::LazyLock;

use crate::exposition::{Family, Kind};
use crate::registry::{
    fnv1a, Counter, Gauge, Histogram, SeriesTable, HTTP_BUCKETS, LATENCY_BUCKETS, SNAPSHOT_BUCKETS,
};

/// The process's instruments.
pub fn node() -> &'static NodeMetrics {
    static NODE: LazyLock<NodeMetrics> = LazyLock::new(NodeMetrics::default);
    &NODE
}

/// Every instrument of a node.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// The HTTP API's requests.
    pub http: HttpMetrics,
    /// DNS queries.
    pub dns: DnsMetrics,
    /// Raft's timings and leader changes.
    pub raft: RaftMetrics,
    /// The scheduler's plans.
    pub scheduler: SchedulerMetrics,
    /// The gossip pools' traffic.
    pub gossip: GossipMetrics,
}

impl NodeMetrics {
    /// Every instrument as families, for a scrape.
    pub fn families(&self) -> Vec<Family> {
        let mut families = self.http.families();
        families.extend(self.dns.families());
        families.extend(self.raft.families());
        families.extend(self.scheduler.families());
        families.extend(self.gossip.families());
        families
    }
}

/// Most (method, route) series kept; requests beyond are counted under [`OVERFLOW_ROUTE`].
pub const ROUTE_SERIES: usize = 1024;
/// Most status codes kept per (method, route); others are counted as `code="other"`.
const CODES_PER_ROUTE: usize = 16;
/// The route of requests that no route of the router answered (unknown paths, wrong
/// methods, bodies refused before routing, requests for other datacenters).
pub const UNROUTED: &str = "(unrouted)";
/// The route of requests past [`ROUTE_SERIES`] series.
pub const OVERFLOW_ROUTE: &str = "(overflow)";

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

fn method_index(method: &str) -> usize {
    METHODS[..7]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

#[derive(Debug, PartialEq, Eq)]
struct RouteKey {
    method: usize,
    route: Box<str>,
}

/// One (method, route)'s requests.
#[derive(Debug)]
struct RouteSeries {
    duration: Histogram,
    codes: SeriesTable<u16, Counter>,
    other_codes: Counter,
}

impl Default for RouteSeries {
    fn default() -> Self {
        RouteSeries {
            duration: Histogram::new(HTTP_BUCKETS),
            codes: SeriesTable::new(CODES_PER_ROUTE),
            other_codes: Counter::new(),
        }
    }
}

impl RouteSeries {
    fn observe(&self, code: u16, seconds: f64) {
        self.duration.observe(seconds);
        match self
            .codes
            .get_or_insert(u64::from(code), |c| *c == code, || (code, Counter::new()))
        {
            Some(counter) => counter.inc(),
            None => self.other_codes.inc(),
        }
    }
}

/// HTTP requests by method, route template and status, and the blocking queries parked.
#[derive(Debug)]
pub struct HttpMetrics {
    routes: SeriesTable<RouteKey, RouteSeries>,
    overflow: [RouteSeries; METHODS.len()],
    /// Blocking queries waiting for a change now.
    pub parked: Gauge,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            routes: SeriesTable::new(ROUTE_SERIES),
            overflow: std::array::from_fn(|_| RouteSeries::default()),
            parked: Gauge::new(),
        }
    }
}

impl HttpMetrics {
    /// Records a request answered with `code` after `seconds`. `route` is the router's
    /// template (`/v1/kv/{*key}`), never the request's path.
    pub fn observe(&self, method: &str, route: &str, code: u16, seconds: f64) {
        let method = method_index(method);
        let hash = fnv1a(&[&[method as u8], route.as_bytes()]);
        let series = self.routes.get_or_insert(
            hash,
            |key| key.method == method && &*key.route == route,
            || {
                (
                    RouteKey {
                        method,
                        route: route.into(),
                    },
                    RouteSeries::default(),
                )
            },
        );
        series
            .unwrap_or(&self.overflow[method])
            .observe(code, seconds);
    }

    /// A guard counting one parked blocking query while it lives.
    pub fn park(&self) -> Parked<'_> {
        self.parked.inc();
        Parked(&self.parked)
    }

    fn families(&self) -> Vec<Family> {
        let mut requests = Family::new(
            "atoll_http_requests_total",
            "HTTP requests answered, by method, route template and status code.",
            Kind::Counter,
        );
        let mut durations = Family::new(
            "atoll_http_request_duration_seconds",
            "Time from a request's head arriving to its answer's head, by method and route template; reading the body and blocking queries' waits included.",
            Kind::Histogram,
        );
        let routes = self
            .routes
            .iter()
            .map(|(key, series)| (key.method, &*key.route, series))
            .chain(
                self.overflow
                    .iter()
                    .enumerate()
                    .map(|(method, series)| (method, OVERFLOW_ROUTE, series)),
            );
        for (method, route, series) in routes {
            let histogram = series.duration.snapshot();
            if histogram.count() == 0 {
                continue;
            }
            let method = METHODS[method];
            let mut codes: Vec<(u16, u64)> = series
                .codes
                .iter()
                .map(|(code, counter)| (*code, counter.get()))
                .collect();
            codes.sort_unstable();
            for (code, count) in codes {
                requests.push_number(
                    &[
                        ("method", method),
                        ("route", route),
                        ("code", &code.to_string()),
                    ],
                    count as f64,
                );
            }
            if series.other_codes.get() > 0 {
                requests.push_number(
                    &[("method", method), ("route", route), ("code", "other")],
                    series.other_codes.get() as f64,
                );
            }
            durations.push_histogram(&[("method", method), ("route", route)], histogram);
        }
        let parked = Family::new(
            "atoll_http_blocking_queries",
            "Blocking queries parked, waiting for a change or their timeout.",
            Kind::Gauge,
        )
        .number(&[], self.parked.get() as f64);
        vec![requests, durations, parked]
    }
}

/// One parked blocking query, counted until dropped.
#[derive(Debug)]
pub struct Parked<'a>(&'a Gauge);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The query types counted by name; others are `other`.
const QTYPES: [(u16, &str); 10] = [
    (1, "A"),
    (28, "AAAA"),
    (33, "SRV"),
    (12, "PTR"),
    (255, "ANY"),
    (6, "SOA"),
    (2, "NS"),
    (16, "TXT"),
    (5, "CNAME"),
    (15, "MX"),
];
/// The response codes counted by name (RFC 1035's, by value); others are `other`.
const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];

/// The transport a DNS query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsTransport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// DNS queries by query type and response code, and their latency by transport.
#[derive(Debug)]
pub struct DnsMetrics {
    queries: [[Counter; RCODES.len() + 1]; QTYPES.len() + 1],
    duration: [Histogram; 2],
}

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics {
            queries: std::array::from_fn(|_| std::array::from_fn(|_| Counter::new())),
            duration: std::array::from_fn(|_| Histogram::new(LATENCY_BUCKETS)),
        }
    }
}

impl DnsMetrics {
    /// Records a query of type `qtype` (`None`: no question could be read) answered with
    /// `rcode` after `seconds`.
    pub fn observe(&self, qtype: Option<u16>, rcode: u8, transport: DnsTransport, seconds: f64) {
        let qtype = qtype
            .and_then(|code| QTYPES.iter().position(|(c, _)| *c == code))
            .unwrap_or(QTYPES.len());
        let rcode = usize::from(rcode).min(RCODES.len());
        self.queries[qtype][rcode].inc();
        self.duration[transport as usize].observe(seconds);
    }

    fn families(&self) -> Vec<Family> {
        let mut queries = Family::new(
            "atoll_dns_queries_total",
            "DNS queries answered, by query type and response code.",
            Kind::Counter,
        );
        for (q, row) in self.queries.iter().enumerate() {
            let qtype = QTYPES.get(q).map_or("other", |(_, name)| name);
            for (r, counter) in row.iter().enumerate() {
                let count = counter.get();
                if count > 0 {
                    let rcode = RCODES.get(r).copied().unwrap_or("other");
                    queries.push_number(&[("qtype", qtype), ("rcode", rcode)], count as f64);
                }
            }
        }
        let mut durations = Family::new(
            "atoll_dns_query_duration_seconds",
            "Time from a DNS query's arrival to its answer being sent, by transport.",
            Kind::Histogram,
        );
        for (transport, histogram) in ["udp", "tcp"].iter().zip(&self.duration) {
            durations.push_histogram(&[("transport", transport)], histogram.snapshot());
        }
        vec![queries, durations]
    }
}

/// Raft's timings on this node and the leaders it saw.
#[derive(Debug)]
pub struct RaftMetrics {
    /// Leader only: from an entry's proposal until Raft answers it committed (and applied
    /// here).
    pub commit_duration: Histogram,
    /// Applying a run of committed entries to the state.
    pub apply_duration: Histogram,
    /// Entries applied.
    pub applied_entries: Counter,
    /// Building and writing a snapshot.
    pub snapshot_duration: Histogram,
    /// Times a leader (a new one, or the same in a new term) became known to this node.
    pub leader_changes: Counter,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        RaftMetrics {
            commit_duration: Histogram::new(LATENCY_BUCKETS),
            apply_duration: Histogram::new(LATENCY_BUCKETS),
            applied_entries: Counter::new(),
            snapshot_duration: Histogram::new(SNAPSHOT_BUCKETS),
            leader_changes: Counter::new(),
        }
    }
}

impl RaftMetrics {
    fn families(&self) -> Vec<Family> {
        let histogram = |name, help, histogram: &Histogram| {
            let mut family = Family::new(name, help, Kind::Histogram);
            family.push_histogram(&[], histogram.snapshot());
            family
        };
        vec![
            histogram(
                "atoll_raft_commit_duration_seconds",
                "Leader only: time from an entry's proposal until Raft reports it committed and applied on the leader.",
                &self.commit_duration,
            ),
            histogram(
                "atoll_raft_apply_duration_seconds",
                "Time to apply a run of committed entries to the state.",
                &self.apply_duration,
            ),
            Family::new(
                "atoll_raft_applied_entries_total",
                "Log entries applied to the state.",
                Kind::Counter,
            )
            .number(&[], self.applied_entries.get() as f64),
            histogram(
                "atoll_raft_snapshot_duration_seconds",
                "Time to build and write a snapshot of the state.",
                &self.snapshot_duration,
            ),
            Family::new(
                "atoll_raft_leader_changes_total",
                "Leaders this node came to know (a new leader, or the same one in a new term).",
                Kind::Counter,
            )
            .number(&[], self.leader_changes.get() as f64),
        ]
    }
}

/// The scheduler's plans (leader only).
#[derive(Debug)]
pub struct SchedulerMetrics {
    /// Time to compute a placement plan.
    pub plan_duration: Histogram,
    /// Instances the plans placed.
    pub placements: Counter,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        SchedulerMetrics {
            plan_duration: Histogram::new(LATENCY_BUCKETS),
            placements: Counter::new(),
        }
    }
}

impl SchedulerMetrics {
    fn families(&self) -> Vec<Family> {
        let mut plan = Family::new(
            "atoll_scheduler_plan_duration_seconds",
            "Leader only: time to compute a placement plan.",
            Kind::Histogram,
        );
        plan.push_histogram(&[], self.plan_duration.snapshot());
        vec![
            plan,
            Family::new(
                "atoll_scheduler_placements_total",
                "Leader only: instances placed on a node by a plan.",
                Kind::Counter,
            )
            .number(&[], self.placements.get() as f64),
        ]
    }
}

/// The gossip pools' traffic.
#[derive(Debug, Default)]
pub struct GossipMetrics {
    /// Datagrams and TCP frames refused: sealed with no installed key, or plain while the
    /// pool requires encryption.
    pub refused: Counter,
}

impl GossipMetrics {
    fn families(&self) -> Vec<Family> {
        vec![Family::new(
            "atoll_gossip_refused_messages_total",
            "Gossip datagrams and TCP frames dropped because no installed key opens them or because they are not encrypted while encryption is required.",
            Kind::Counter,
        )
        .number(&[], self.refused.get() as f64)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::{encode_text, Value};

    fn series<'a>(families: &'a [Family], name: &str) -> Vec<(Vec<(&'a str, &'a str)>, &'a Value)> {
        families
            .iter()
            .filter(|f| f.name == name)
            .flat_map(|f| &f.series)
            .map(|s| {
                (
                    s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect(),
                    &s.value,
                )
            })
            .collect()
    }

    #[test]
    fn http_requests_are_counted_by_method_route_and_code() {
        let metrics = NodeMetrics::default();
        for _ in 0..3 {
            metrics.http.observe("PUT", "/v1/kv/{*key}", 200, 0.001);
        }
        metrics.http.observe("GET", "/v1/kv/{*key}", 404, 0.002);
        metrics.http.observe("BREW", UNROUTED, 405, 0.0);
        let families = metrics.families();
        let requests = series(&families, "atoll_http_requests_total");
        assert!(requests.contains(&(
            vec![
                ("method", "PUT"),
                ("route", "/v1/kv/{*key}"),
                ("code", "200")
            ],
            &Value::Number(3.0)
        )));
        assert!(requests.contains(&(
            vec![
                ("method", "GET"),
                ("route", "/v1/kv/{*key}"),
                ("code", "404")
            ],
            &Value::Number(1.0)
        )));
        assert!(requests.contains(&(
            vec![("method", "other"), ("route", UNROUTED), ("code", "405")],
            &Value::Number(1.0)
        )));
        assert_eq!(requests.len(), 3);
        let durations = series(&families, "atoll_http_request_duration_seconds");
        assert_eq!(durations.len(), 3);
    }

    #[test]
    fn routes_past_the_limit_are_counted_as_overflow() {
        let metrics = HttpMetrics::default();
        for n in 0..ROUTE_SERIES + 10 {
            metrics.observe("GET", &format!("/r{n}"), 200, 0.0);
        }
        let families = metrics.families();
        let requests = series(&families, "atoll_http_requests_total");
        assert_eq!(requests.len(), ROUTE_SERIES + 1);
        assert!(requests.contains(&(
            vec![
                ("method", "GET"),
                ("route", OVERFLOW_ROUTE),
                ("code", "200")
            ],
            &Value::Number(10.0)
        )));
    }

    #[test]
    fn status_codes_past_the_limit_are_counted_as_other() {
        let metrics = HttpMetrics::default();
        for code in 200..200 + CODES_PER_ROUTE as u16 + 2 {
            metrics.observe("GET", "/x", code, 0.0);
        }
        let families = metrics.families();
        let requests = series(&families, "atoll_http_requests_total");
        assert_eq!(requests.len(), CODES_PER_ROUTE + 1);
        assert!(requests.contains(&(
            vec![("method", "GET"), ("route", "/x"), ("code", "other")],
            &Value::Number(2.0)
        )));
    }

    #[test]
    fn parked_queries_are_counted_while_their_guard_lives() {
        let metrics = HttpMetrics::default();
        let first = metrics.park();
        let second = metrics.park();
        assert_eq!(metrics.parked.get(), 2);
        drop(first);
        assert_eq!(metrics.parked.get(), 1);
        drop(second);
        assert_eq!(metrics.parked.get(), 0);
    }

    #[test]
    fn dns_queries_are_counted_by_known_type_and_code() {
        let metrics = DnsMetrics::default();
        metrics.observe(Some(1), 0, DnsTransport::Udp, 0.0001);
        metrics.observe(Some(33), 3, DnsTransport::Tcp, 0.0001);
        // An unknown type, a missing question and an extended code stay in fixed labels.
        metrics.observe(Some(65000), 0, DnsTransport::Udp, 0.0001);
        metrics.observe(None, 1, DnsTransport::Udp, 0.0001);
        metrics.observe(Some(1), 15, DnsTransport::Udp, 0.0001);
        let families = metrics.families();
        let queries = series(&families, "atoll_dns_queries_total");
        let expected: Vec<(Vec<(&str, &str)>, &Value)> = vec![
            (
                vec![("qtype", "A"), ("rcode", "NOERROR")],
                &Value::Number(1.0),
            ),
            (
                vec![("qtype", "A"), ("rcode", "other")],
                &Value::Number(1.0),
            ),
            (
                vec![("qtype", "SRV"), ("rcode", "NXDOMAIN")],
                &Value::Number(1.0),
            ),
            (
                vec![("qtype", "other"), ("rcode", "NOERROR")],
                &Value::Number(1.0),
            ),
            (
                vec![("qtype", "other"), ("rcode", "FORMERR")],
                &Value::Number(1.0),
            ),
        ];
        assert_eq!(queries, expected);
        let text = encode_text(&families);
        assert!(text.contains("atoll_dns_query_duration_seconds_count{transport=\"udp\"} 4\n"));
        assert!(text.contains("atoll_dns_query_duration_seconds_count{transport=\"tcp\"} 1\n"));
    }
}
