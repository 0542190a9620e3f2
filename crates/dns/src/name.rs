//! Parsing query names under the atoll domain into what they ask for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a query name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `[TAG.]NAME.service[.DC]` or `_NAME._TAG[.service][.DC]`.
    Service {
        /// Service name.
        name: String,
        /// Tag filter.
        tag: Option<String>,
        /// Datacenter, if named.
        datacenter: Option<String>,
    },
    /// `NODE.node[.DC]`.
    Node {
        /// Node name.
        name: String,
        /// Datacenter, if named.
        datacenter: Option<String>,
    },
    /// `HEXIP.addr.DC`: an IPv4 (8 hex digits) or IPv6 (32) address spelled in hex.
    Addr {
        /// The address.
        address: IpAddr,
    },
    /// `NAME.query[.DC]`: a prepared query, by id or name.
    Query {
        /// The query's id or name.
        name: String,
        /// Datacenter, if named.
        datacenter: Option<String>,
    },
    /// The domain itself (`consul.`): its SOA.
    Apex,
    /// Under the domain but not a form atoll knows.
    Unknown,
}

/// Parses the labels of a query name (already lowercased, without the domain's labels).
///
/// `labels` are in the order they appear in the name (`["web", "service"]`).
pub fn parse_lookup(labels: &[&str], datacenters: &dyn Fn(&str) -> bool) -> Lookup {
    if labels.is_empty() {
        return Lookup::Apex;
    }
    // An optional trailing datacenter label follows the kind label.
    let (kind_at, datacenter) = match labels {
        [.., kind, dc] if is_kind(kind) && !labels.is_empty() && labels.len() >= 3 => {
            (labels.len() - 2, Some((*dc).to_string()))
        }
        _ => (labels.len().wrapping_sub(1), None),
    };
    if let [first, second] = labels {
        if let Some(lookup) = rfc2782(first, second, None) {
            return lookup;
        }
    }
    // `_name._tag.dc` (RFC 2782 with a datacenter but without `service`).
    if let [first, second, dc] = labels {
        if datacenters(dc) {
            if let Some(lookup) = rfc2782(first, second, Some(dc)) {
                return lookup;
            }
        }
    }
    let Some(kind) = labels.get(kind_at) else {
        return Lookup::Unknown;
    };
    let before = &labels[..kind_at];
    match (*kind, before) {
        ("service", [first, second]) => rfc2782(first, second, datacenter.as_deref())
            .unwrap_or_else(|| Lookup::Service {
                name: (*second).to_string(),
                tag: Some((*first).to_string()),
                datacenter,
            }),
        ("service", [name]) => Lookup::Service {
            name: (*name).to_string(),
            tag: None,
            datacenter,
        },
        ("node", [name]) => Lookup::Node {
            name: (*name).to_string(),
            datacenter,
        },
        ("query", [name]) => Lookup::Query {
            name: (*name).to_string(),
            datacenter,
        },
        ("addr", [hex]) => parse_hex_ip(hex)
            .map(|address| Lookup::Addr { address })
            .unwrap_or(Lookup::Unknown),
        _ => Lookup::Unknown,
    }
}

/// The datacenter a name for another datacenter's answer names: `[TAG.]NAME.service.DC`,
/// `_NAME._TAG.service.DC`, `_NAME._TAG.DC`, `NODE.node.DC` and `NAME.query.DC`, each
/// answered there as a whole. `HEXIP.addr.DC` is not among them: the address is spelled in
/// the name itself.
pub fn named_datacenter<'a>(labels: &[&'a str]) -> Option<&'a str> {
    match labels {
        [_, "service", dc] | [_, _, "service", dc] | [_, "node", dc] | [_, "query", dc] => Some(dc),
        [first, second, dc] if !is_kind(dc) && rfc2782(first, second, None).is_some() => Some(dc),
        _ => None,
    }
}

fn is_kind(label: &str) -> bool {
    matches!(label, "service" | "node" | "addr" | "query")
}

/// `_name._tag`: RFC 2782 form; `_tcp`/`_udp` mean "no tag filter", as Consul reads them.
fn rfc2782(first: &str, second: &str, datacenter: Option<&str>) -> Option<Lookup> {
    let name = first.strip_prefix('_')?;
    let tag = second.strip_prefix('_')?;
    if name.is_empty() || tag.is_empty() {
        return None;
    }
    Some(Lookup::Service {
        name: name.to_string(),
        tag: (!matches!(tag, "tcp" | "udp")).then(|| tag.to_string()),
        datacenter: datacenter.map(str::to_string),
    })
}

/// `7f000001` → 127.0.0.1; 32 hex digits → an IPv6 address.
pub fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// 127.0.0.1 → `7f000001`; IPv6 → 32 hex digits.
pub fn hex_ip(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(name: &str) -> Lookup {
        let labels: Vec<&str> = name.split('.').collect();
        parse_lookup(&labels, &|dc| dc == "dc1" || dc == "dc2")
    }

    fn service(name: &str, tag: Option<&str>, dc: Option<&str>) -> Lookup {
        Lookup::Service {
            name: name.into(),
            tag: tag.map(Into::into),
            datacenter: dc.map(Into::into),
        }
    }

    #[test]
    fn service_forms() {
        assert_eq!(parse("web.service"), service("web", None, None));
        assert_eq!(parse("v1.web.service"), service("web", Some("v1"), None));
        assert_eq!(parse("web.service.dc2"), service("web", None, Some("dc2")));
        assert_eq!(
            parse("v1.web.service.dc2"),
            service("web", Some("v1"), Some("dc2"))
        );
    }

    #[test]
    fn rfc2782_forms() {
        assert_eq!(parse("_web._tcp.service"), service("web", None, None));
        assert_eq!(parse("_web._v1.service"), service("web", Some("v1"), None));
        assert_eq!(
            parse("_web._tcp.service.dc2"),
            service("web", None, Some("dc2"))
        );
        assert_eq!(parse("_web._tcp"), service("web", None, None));
        assert_eq!(
            parse("_web._v1.dc1"),
            service("web", Some("v1"), Some("dc1"))
        );
    }

    #[test]
    fn query_forms() {
        let query = |name: &str, dc: Option<&str>| Lookup::Query {
            name: name.into(),
            datacenter: dc.map(Into::into),
        };
        assert_eq!(parse("web.query"), query("web", None));
        assert_eq!(parse("web.query.dc2"), query("web", Some("dc2")));
        assert_eq!(parse("query"), Lookup::Unknown);
        assert_eq!(parse("a.b.query"), Lookup::Unknown);
    }

    #[test]
    fn node_and_addr_forms() {
        assert_eq!(
            parse("n1.node"),
            Lookup::Node {
                name: "n1".into(),
                datacenter: None
            }
        );
        assert_eq!(
            parse("n1.node.dc1"),
            Lookup::Node {
                name: "n1".into(),
                datacenter: Some("dc1".into())
            }
        );
        assert_eq!(
            parse("7f000002.addr.dc1"),
            Lookup::Addr {
                address: Ipv4Addr::new(127, 0, 0, 2).into()
            }
        );
        assert_eq!(parse("zz.addr.dc1"), Lookup::Unknown);
    }

    #[test]
    fn unknown_forms() {
        assert_eq!(parse("service"), Lookup::Unknown);
        assert_eq!(parse("a.b.c.service"), Lookup::Unknown);
        assert_eq!(parse("web.bogus"), Lookup::Unknown);
        assert_eq!(parse_lookup(&[], &|_| true), Lookup::Apex);
    }

    #[test]
    fn names_answered_in_another_datacenter() {
        let named = |name: &str| {
            let labels: Vec<&str> = name.split('.').collect();
            named_datacenter(&labels).map(str::to_string)
        };
        for name in [
            "web.service.dc2",
            "v1.web.service.dc2",
            "_web._tcp.service.dc2",
            "n1.node.dc2",
            "geo.query.dc2",
            "_web._tcp.dc2",
            "_web._v1.dc2",
        ] {
            assert_eq!(named(name).as_deref(), Some("dc2"), "{name}");
        }
        for name in [
            "web.service",
            "n1.node",
            "7f000001.addr.dc2",
            "a.b.c.service.dc2",
            "x.y.node.dc2",
            "_web.tcp.dc2",
            "_._tcp.dc2",
            "_web._v2.service",
        ] {
            assert_eq!(named(name), None, "{name}");
        }
    }

    proptest! {
        #[test]
        fn hex_round_trip(v4 in any::<u32>(), v6 in any::<u128>()) {
            for address in [IpAddr::V4(Ipv4Addr::from(v4)), IpAddr::V6(Ipv6Addr::from(v6))] {
                prop_assert_eq!(parse_hex_ip(&hex_ip(address)), Some(address));
            }
        }

        #[test]
        fn never_panics(labels in prop::collection::vec("[a-z_0-9]{0,6}", 0..6)) {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            let _ = parse_lookup(&labels, &|_| true);
        }
    }
}
