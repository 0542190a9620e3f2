//! Building answers: a pure function of the request, the state and the configuration.

use atoll_acl::{Access, Authorizer, Resource, Segment};
use std::net::IpAddr;

use atoll_state::{aggregate_status, CheckStatus, ServiceInstance, State};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::name::{hex_ip, named_datacenter, parse_lookup, Lookup};
use crate::query::{QueryAnswer, QueryFailure};

/// Payload size assumed for UDP clients that do not announce one (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: usize = 512;

/// How DNS answers are shaped.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The domain served, lowercase and fully qualified (`consul.`).
    pub domain: Name,
    /// This datacenter.
    pub datacenter: String,
    /// TTL of service answers, seconds.
    pub service_ttl: u32,
    /// TTL of node answers, seconds.
    pub node_ttl: u32,
    /// Leave out instances in `warning` too, not only `critical` ones.
    pub only_passing: bool,
    /// Whether names outside the domain are forwarded.
    pub has_recursors: bool,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Resolution {
    /// Send this answer.
    Answer(Box<Message>),
    /// Forward the request to a recursor unchanged.
    Forward,
    /// The name asks for another datacenter (named here): the request goes there as it is.
    Remote(String),
    /// Run the prepared query `name` of this datacenter, then answer with
    /// [`query_response`]; an answer that depends on other datacenters is never cached.
    Query {
        /// The query's id or name.
        name: String,
    },
}

fn reply(request: &Message, code: ResponseCode, config: &DnsConfig) -> Message {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata.response_code = code;
    response.metadata.authoritative = code != ResponseCode::Refused;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = config.has_recursors;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        response.set_edns(edns);
    }
    response
}

/// Answers a request from `state` as if ACLs were off. `seed` shuffles the order of
/// answers (load spreading).
pub fn resolve(request: &Message, state: &State, config: &DnsConfig, seed: u64) -> Resolution {
    resolve_for(request, state, config, seed, &Authorizer::allow_all())
}

/// Answers a request from `state` for a caller with the permissions of `authz` (the
/// agent's default token): a node it may not read (`node:read`), or a service instance
/// whose service or node it may not read, is answered as if it did not exist.
pub fn resolve_for(
    request: &Message,
    state: &State,
    config: &DnsConfig,
    seed: u64,
    authz: &Authorizer,
) -> Resolution {
    let reads =
        |segment: Segment, name: &str| authz.allows(Resource::Named(segment, name), Access::Read);
    if request.metadata.message_type != MessageType::Query
        || request.metadata.op_code != OpCode::Query
    {
        return answer(reply(request, ResponseCode::NotImp, config));
    }
    let [query] = request.queries.as_slice() else {
        return answer(reply(request, ResponseCode::FormErr, config));
    };
    let name = query.name.to_lowercase();
    if !config.domain.zone_of(&name) {
        if config.has_recursors {
            return Resolution::Forward;
        }
        return answer(reply(request, ResponseCode::Refused, config));
    }
    let label_count = name.num_labels().saturating_sub(config.domain.num_labels()) as usize;
    let owned: Vec<String> = name
        .iter()
        .take(label_count)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let labels: Vec<&str> = owned.iter().map(String::as_str).collect();
    if let Some(dc) = named_datacenter(&labels).filter(|dc| *dc != config.datacenter) {
        return Resolution::Remote(dc.to_string());
    }
    let lookup = parse_lookup(&labels, &|dc| dc == config.datacenter);
    let mut response = reply(request, ResponseCode::NoError, config);
    let owner = query.name.clone();
    let qtype = query.query_type;
    let foreign = |dc: &Option<String>| dc.as_deref().is_some_and(|dc| dc != config.datacenter);
    match lookup {
        Lookup::Service { datacenter, .. }
        | Lookup::Node { datacenter, .. }
        | Lookup::Query { datacenter, .. }
            if foreign(&datacenter) =>
        {
            // `named_datacenter` sends every such form there first; a form it does not know
            // cannot be answered here.
            response.metadata.response_code = ResponseCode::ServFail;
        }
        Lookup::Service { name, tag, .. } => {
            let mut instances: Vec<&ServiceInstance> = state
                .instances_of(&name)
                .into_iter()
                .filter(|s| {
                    tag.as_ref()
                        .is_none_or(|t| s.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
                })
                .filter(|s| healthy(state, s, config.only_passing))
                .filter(|s| reads(Segment::Service, &s.name) && reads(Segment::Node, &s.node))
                .collect();
            if instances.is_empty() {
                nxdomain(&mut response, config, state);
                return answer(response);
            }
            shuffle(&mut instances, seed);
            for instance in instances {
                let Some(node) = state.nodes.get(&instance.node) else {
                    continue;
                };
                let address = instance.effective_address(node);
                let ip: Option<IpAddr> = address.parse().ok();
                if qtype == RecordType::SRV {
                    let target = srv_target(instance, &node.address, ip, config);
                    response.add_answer(Record::from_rdata(
                        owner.clone(),
                        config.service_ttl,
                        RData::SRV(SRV::new(1, 1, instance.port, target.clone())),
                    ));
                    if let Some(ip) = ip {
                        response.add_additional(address_record(target, ip, config.service_ttl));
                    }
                } else if let Some(ip) = ip.filter(|ip| wants(qtype, ip)) {
                    response.add_answer(address_record(owner.clone(), ip, config.service_ttl));
                }
            }
        }
        Lookup::Query { name, .. } => return Resolution::Query { name },
        Lookup::Node { name, .. } => match state
            .nodes
            .get(&name)
            .filter(|n| reads(Segment::Node, &n.name))
        {
            None => nxdomain(&mut response, config, state),
            Some(node) => {
                if let Some(ip) = node
                    .address
                    .parse::<IpAddr>()
                    .ok()
                    .filter(|ip| wants(qtype, ip))
                {
                    response.add_answer(address_record(owner, ip, config.node_ttl));
                }
            }
        },
        Lookup::Addr { address } => {
            if wants(qtype, &address) {
                response.add_answer(address_record(owner, address, config.node_ttl));
            }
        }
        Lookup::Apex => {
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                response.add_answer(soa(config, state));
            }
        }
        Lookup::Unknown => nxdomain(&mut response, config, state),
    }
    if response.answers.is_empty() && response.metadata.response_code == ResponseCode::NoError {
        response.add_authority(soa(config, state));
    }
    answer(response)
}

/// The answer to a request for a prepared query (`NAME.query[.DC].DOMAIN`, A, AAAA, ANY or
/// SRV) once it ran: its instances in the order it gave them, with the query's TTL (else the
/// service TTL); `Query not found` and an empty result are NXDOMAIN, any other failure
/// SERVFAIL. SRV targets name the nodes in the datacenter that answered.
pub fn query_response(
    request: &Message,
    state: &State,
    config: &DnsConfig,
    result: &Result<QueryAnswer, QueryFailure>,
) -> Message {
    let mut response = reply(request, ResponseCode::NoError, config);
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let answer = match result {
        Err(QueryFailure::NotFound) => {
            nxdomain(&mut response, config, state);
            return response;
        }
        Err(QueryFailure::Failed(why)) => {
            tracing::debug!(name = %query.name, "prepared query failed: {why}");
            response.metadata.response_code = ResponseCode::ServFail;
            return response;
        }
        Ok(answer) => answer,
    };
    if answer.instances.is_empty() {
        nxdomain(&mut response, config, state);
        return response;
    }
    let ttl = answer.ttl.unwrap_or(config.service_ttl);
    let owner = query.name.clone();
    for instance in &answer.instances {
        let address = if instance.address.is_empty() {
            &instance.node_address
        } else {
            &instance.address
        };
        let ip: Option<IpAddr> = address.parse().ok();
        if query.query_type == RecordType::SRV {
            let relative = match ip {
                Some(ip) if *address != instance.node_address => {
                    format!("{}.addr.{}", hex_ip(ip), answer.datacenter)
                }
                _ => format!("{}.node.{}", instance.node, answer.datacenter),
            };
            let target = Name::from_ascii(&relative)
                .and_then(|n| n.append_domain(&config.domain))
                .unwrap_or_else(|_| config.domain.clone());
            response.add_answer(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::SRV(SRV::new(1, 1, instance.port, target.clone())),
            ));
            if let Some(ip) = ip {
                response.add_additional(address_record(target, ip, ttl));
            }
        } else if let Some(ip) = ip.filter(|ip| wants(query.query_type, ip)) {
            response.add_answer(address_record(owner.clone(), ip, ttl));
        }
    }
    if response.answers.is_empty() {
        response.add_authority(soa(config, state));
    }
    response
}

fn answer(message: Message) -> Resolution {
    Resolution::Answer(Box::new(message))
}

/// Whether DNS hands out an instance: never when critical; with `only_passing`, not when
/// warning either. Health itself is decided by [`aggregate_status`].
fn healthy(state: &State, instance: &ServiceInstance, only_passing: bool) -> bool {
    match aggregate_status(state.checks_for_instance(instance)) {
        CheckStatus::Passing => true,
        CheckStatus::Warning => !only_passing,
        CheckStatus::Critical => false,
    }
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_)) | (RecordType::ANY, _)
    )
}

fn address_record(owner: Name, ip: IpAddr, ttl: u32) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner, ttl, data)
}

/// The SRV target, as Consul names it: the node when the instance uses the node's address,
/// else `HEXIP.addr.DC.DOMAIN`.
fn srv_target(
    instance: &ServiceInstance,
    node_address: &str,
    ip: Option<IpAddr>,
    config: &DnsConfig,
) -> Name {
    let relative = if instance.address.is_empty() || instance.address == node_address {
        format!("{}.node.{}", instance.node, config.datacenter)
    } else if let Some(ip) = ip {
        format!("{}.addr.{}", hex_ip(ip), config.datacenter)
    } else {
        format!("{}.node.{}", instance.node, config.datacenter)
    };
    Name::from_ascii(&relative)
        .and_then(|n| n.append_domain(&config.domain))
        .unwrap_or_else(|_| config.domain.clone())
}

fn soa(config: &DnsConfig, state: &State) -> Record {
    let ns = Name::from_ascii("ns").and_then(|n| n.append_domain(&config.domain));
    let hostmaster = Name::from_ascii("hostmaster").and_then(|n| n.append_domain(&config.domain));
    let serial = (state.indexes.catalog() & 0xffff_ffff) as u32;
    let data = SOA::new(
        ns.unwrap_or_else(|_| config.domain.clone()),
        hostmaster.unwrap_or_else(|_| config.domain.clone()),
        serial,
        3600,
        600,
        86400,
        0,
    );
    Record::from_rdata(config.domain.clone(), 0, RData::SOA(data))
}

/// The answer for a name in a datacenter no route leads to: NXDOMAIN with the SOA, as
/// Consul answers `No path to datacenter` (a SERVFAIL would be retried for ever).
pub fn unknown_datacenter(request: &Message, state: &State, config: &DnsConfig) -> Message {
    let mut response = reply(request, ResponseCode::NoError, config);
    nxdomain(&mut response, config, state);
    response
}

fn nxdomain(response: &mut Message, config: &DnsConfig, state: &State) {
    response.metadata.response_code = ResponseCode::NXDomain;
    response.add_authority(soa(config, state));
}

/// A deterministic Fisher–Yates shuffle driven by `seed` (splitmix64).
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        items.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

/// Largest UDP answer the client accepts.
pub fn udp_limit(request: &Message) -> usize {
    request
        .edns
        .as_ref()
        .map(|e| (e.max_payload() as usize).max(CLASSIC_UDP_PAYLOAD))
        .unwrap_or(CLASSIC_UDP_PAYLOAD)
}

/// Encodes a response within `limit` bytes: when it does not fit, drops the additional
/// section, then answers from the end, and sets TC so the client retries over TCP.
pub fn encode_within(mut response: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    response.metadata.truncation = true;
    response.additionals.clear();
    loop {
        let bytes = response.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(bytes);
        }
        if response.answers.is_empty() {
            // Long names (or several questions in a refused request) can overflow on their
            // own: then the authority section goes, and last the echoed questions.
            if !response.authorities.is_empty() {
                response.authorities.clear();
            } else if !response.queries.is_empty() {
                response.queries.clear();
            } else {
                return Some(bytes);
            }
            continue;
        }
        // Drop roughly the overflow's share of answers at once, then one at a time.
        let overflow = bytes.len() - limit;
        let per_answer = bytes.len() / (response.answers.len() + 1);
        let drop = (overflow / per_answer.max(1))
            .max(1)
            .min(response.answers.len());
        let keep = response.answers.len() - drop;
        response.answers.truncate(keep);
    }
}

/// A FORMERR answer for a packet whose header could be read but whose body could not.
pub fn format_error(id: u16) -> Vec<u8> {
    bare_response(id, ResponseCode::FormErr)
}

/// A response of a header only (no question echoed): the answer of last resort, written
/// byte by byte so that it cannot fail to encode.
pub fn bare_response(id: u16, code: ResponseCode) -> Vec<u8> {
    let [high, low] = id.to_be_bytes();
    // QR set, opcode QUERY; the low four bits of the response code (no EDNS to carry more).
    let rcode = (u16::from(code) & 0x0f) as u8;
    vec![high, low, 0x80, rcode, 0, 0, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests;
