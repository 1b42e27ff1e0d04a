//! The address guard: addresses that are never a Service's, whoever asks.
//!
//! vipd holds NET_ADMIN on every node and answers ARP for what it holds: a
//! Service address that is really a node's, the API server's VIP or the
//! router would take traffic from its owner. So an address is refused for
//! any Service, whatever its origin (annotation, `spec.loadBalancerIP`,
//! status, pool), when it is
//! - a control-plane VIP (this vipd's, or one another vipd publishes in its
//!   instance record), or the API server address vipd itself talks to;
//! - a Node's `InternalIP` or `ExternalIP`;
//! - an address on a node's interface that vipd did not add;
//! - a default gateway, or the network or broadcast address of a subnet on
//!   a node's interface;
//! - not a unicast address one host may hold for others at all: the
//!   unspecified address (`0.0.0.0` is kube-vip's DHCP request), loopback,
//!   multicast, link-local, the limited broadcast address.
//!
//! The cluster-wide facts come from Node objects and instance records; the
//! host facts each vipd reads from its own kernel ([`HostFacts`]) and
//! publishes in its instance record, so the Services leader refuses them
//! before it writes anything, and every node refuses them again before it
//! claims an address. Pure: built from facts, asked per address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Addresses that are never a Service's, each with the reason a user reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    reasons: BTreeMap<IpAddr, String>,
}

/// What a node's own kernel says is not vipd's to take: its addresses
/// (those vipd did not add), its default gateways, and the network and
/// broadcast addresses of its subnets. Published in the instance record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Address → what it is ("an address of eth0", "the default gateway of eth0").
    pub reserved: BTreeMap<IpAddr, String>,
}

/// At most this many host facts go into an instance record (an annotation
/// must stay small); a node with more still refuses them locally.
pub const MAX_PUBLISHED: usize = 256;

impl HostFacts {
    /// Records `what` for `ip` unless something already explains it.
    pub fn reserve(&mut self, ip: IpAddr, what: impl Into<String>) {
        self.reserved.entry(ip).or_insert_with(|| what.into());
    }

    /// Host facts of `ip` network `prefix` on `interface`: the address
    /// itself, and the network and broadcast addresses of its subnet.
    pub fn add_subnet(&mut self, ip: IpAddr, prefix: u8, interface: &str) {
        self.reserve(
            ip,
            format!("an address of {interface} that vipd did not add"),
        );
        if let Some((network, broadcast)) = subnet_ends(ip, prefix) {
            let net = format!("{network}/{prefix}");
            self.reserve(
                network,
                format!("the network address of {net} on {interface}"),
            );
            if let Some(b) = broadcast {
                self.reserve(b, format!("the broadcast address of {net} on {interface}"));
            }
        }
    }

    /// The record's annotation value (JSON), at most [`MAX_PUBLISHED`] entries.
    pub fn to_annotation(&self) -> String {
        let capped: BTreeMap<&IpAddr, &String> = self.reserved.iter().take(MAX_PUBLISHED).collect();
        serde_json::to_string(&capped).unwrap_or_default()
    }

    /// Reads an annotation written by [`HostFacts::to_annotation`]; garbage
    /// reads as nothing (a record is only ever written by vipd).
    pub fn from_annotation(v: &str) -> HostFacts {
        HostFacts {
            reserved: serde_json::from_str(v).unwrap_or_default(),
        }
    }
}

/// The network address of `ip/prefix`, and its broadcast address (IPv4
/// only); None for host routes and point-to-point subnets (/31, /127), which
/// have neither.
pub fn subnet_ends(ip: IpAddr, prefix: u8) -> Option<(IpAddr, Option<IpAddr>)> {
    match ip {
        IpAddr::V4(v) if prefix < 31 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let n = u32::from(v) & mask;
            Some((IpAddr::V4(n.into()), Some(IpAddr::V4((n | !mask).into()))))
        }
        IpAddr::V6(v) if prefix < 127 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            // IPv6 has no broadcast; the network address is the subnet-router
            // anycast address (RFC 4291 section 2.6.1), a router's.
            Some((IpAddr::V6((u128::from(v) & mask).into()), None))
        }
        _ => None,
    }
}

/// Why `ip` is no load-balancer address by its kind alone.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v) if v.is_unspecified() => {
            Some("the unspecified address (kube-vip's request for a DHCP address, which vipd does not do)")
        }
        IpAddr::V6(v) if v.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v) if v.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v) if v.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V4(v) if v.is_broadcast() => Some("the limited broadcast address"),
        _ => None,
    }
}

/// A node as the guard sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    pub name: String,
    pub internal: Vec<IpAddr>,
    pub external: Vec<IpAddr>,
}

/// Another vipd's instance record, as the guard reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedFacts {
    pub node: String,
    pub control_plane_vips: Vec<IpAddr>,
    pub host: HostFacts,
}

impl Guard {
    /// Refuses `ip` for `reason` (a phrase completing "<ip> is ..."); the
    /// first reason given for an address is the one kept.
    pub fn forbid(&mut self, ip: IpAddr, reason: impl Into<String>) {
        self.reasons.entry(ip).or_insert_with(|| reason.into());
    }

    /// Why `ip` may not be a Service's, if it may not.
    pub fn check(&self, ip: IpAddr) -> Option<&str> {
        special(ip).or_else(|| self.reasons.get(&ip).map(String::as_str))
    }

    pub fn is_forbidden(&self, ip: IpAddr) -> bool {
        self.check(ip).is_some()
    }

    pub fn len(&self) -> usize {
        self.reasons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The guard from everything known: this vipd's control-plane VIPs and
    /// API server address, the Nodes, the other vipds' records, and (on
    /// the node that will hold an address) this host's own facts.
    pub fn build(
        own_vips: &[IpAddr],
        api_server: Option<IpAddr>,
        nodes: &[NodeAddresses],
        published: &[PublishedFacts],
        me: &str,
        host: Option<&HostFacts>,
    ) -> Guard {
        let mut g = Guard::default();
        for v in own_vips {
            g.forbid(*v, "the control-plane VIP");
        }
        for p in published {
            for v in &p.control_plane_vips {
                g.forbid(
                    *v,
                    format!("the control-plane VIP (held by vipd on {})", p.node),
                );
            }
        }
        if let Some(a) = api_server.filter(|a| !a.is_loopback()) {
            g.forbid(a, "the API server address vipd connects to");
        }
        for n in nodes {
            for a in &n.internal {
                g.forbid(*a, format!("the InternalIP of node {}", n.name));
            }
            for a in &n.external {
                g.forbid(*a, format!("the ExternalIP of node {}", n.name));
            }
        }
        if let Some(h) = host {
            for (a, what) in &h.reserved {
                g.forbid(*a, format!("{what} on node {me}"));
            }
        }
        for p in published.iter().filter(|p| p.node != me) {
            for (a, what) in &p.host.reserved {
                g.forbid(*a, format!("{what} on node {}", p.node));
            }
        }
        g
    }

    /// "192.0.2.12 is the InternalIP of node n2", for Events and logs.
    pub fn explain(&self, ip: IpAddr) -> Option<String> {
        self.check(ip).map(|r| format!("{ip} is {r}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_of_a_kind_no_host_holds_for_others_are_refused() {
        let g = Guard::default();
        for a in [
            "0.0.0.0",
            "::",
            "127.0.0.53",
            "::1",
            "224.0.0.5",
            "ff02::1",
            "169.254.1.1",
            "fe80::1",
            "255.255.255.255",
        ] {
            assert!(g.is_forbidden(ip(a)), "{a}");
        }
        assert!(g.explain(ip("0.0.0.0")).unwrap().contains("DHCP"));
        assert!(!g.is_forbidden(ip("192.0.2.150")));
        assert!(!g.is_forbidden(ip("2001:db8::150")));
    }

    #[test]
    fn every_kind_of_address_is_refused_with_its_reason() {
        let mut host = HostFacts::default();
        host.add_subnet(ip("192.0.2.11"), 24, "eth0");
        host.reserve(ip("192.0.2.1"), "the default gateway of eth0");
        let mut other = HostFacts::default();
        other.add_subnet(ip("198.51.100.7"), 28, "eth1");
        let g = Guard::build(
            &[ip("192.0.2.100"), ip("2001:db8::100")],
            Some(ip("192.0.2.101")),
            &[NodeAddresses {
                name: "n2".into(),
                internal: vec![ip("192.0.2.12")],
                external: vec![ip("203.0.113.12")],
            }],
            &[PublishedFacts {
                node: "n3".into(),
                control_plane_vips: vec![ip("192.0.2.99")],
                host: other,
            }],
            "n1",
            Some(&host),
        );
        let cases = [
            ("192.0.2.100", "192.0.2.100 is the control-plane VIP"),
            ("2001:db8::100", "2001:db8::100 is the control-plane VIP"),
            (
                "192.0.2.99",
                "192.0.2.99 is the control-plane VIP (held by vipd on n3)",
            ),
            (
                "192.0.2.101",
                "192.0.2.101 is the API server address vipd connects to",
            ),
            ("192.0.2.12", "192.0.2.12 is the InternalIP of node n2"),
            ("203.0.113.12", "203.0.113.12 is the ExternalIP of node n2"),
            (
                "192.0.2.11",
                "192.0.2.11 is an address of eth0 that vipd did not add on node n1",
            ),
            (
                "192.0.2.1",
                "192.0.2.1 is the default gateway of eth0 on node n1",
            ),
            (
                "192.0.2.0",
                "192.0.2.0 is the network address of 192.0.2.0/24 on eth0 on node n1",
            ),
            (
                "192.0.2.255",
                "192.0.2.255 is the broadcast address of 192.0.2.0/24 on eth0 on node n1",
            ),
            (
                "198.51.100.15",
                "198.51.100.15 is the broadcast address of 198.51.100.0/28 on eth1 on node n3",
            ),
        ];
        for (a, want) in cases {
            assert_eq!(g.explain(ip(a)).as_deref(), Some(want));
        }
        assert_eq!(g.check(ip("192.0.2.150")), None);
        assert_eq!(g.check(ip("198.51.100.16")), None);
    }

    #[test]
    fn subnet_ends_by_family_and_size() {
        assert_eq!(
            subnet_ends(ip("192.0.2.77"), 26),
            Some((ip("192.0.2.64"), Some(ip("192.0.2.127"))))
        );
        assert_eq!(subnet_ends(ip("192.0.2.77"), 31), None);
        assert_eq!(subnet_ends(ip("192.0.2.77"), 32), None);
        assert_eq!(
            subnet_ends(ip("10.1.2.3"), 0),
            Some((ip("0.0.0.0"), Some(ip("255.255.255.255"))))
        );
        assert_eq!(
            subnet_ends(ip("2001:db8::1:2"), 64),
            Some((ip("2001:db8::"), None))
        );
        assert_eq!(subnet_ends(ip("2001:db8::1"), 128), None);
    }

    #[test]
    fn the_published_form_round_trips_and_is_bounded() {
        let mut h = HostFacts::default();
        for i in 0..400u32 {
            h.reserve(IpAddr::V4((0xc633_6400 + i).into()), "x");
        }
        let back = HostFacts::from_annotation(&h.to_annotation());
        assert_eq!(back.reserved.len(), MAX_PUBLISHED);
        assert!(back
            .reserved
            .iter()
            .all(|(a, w)| h.reserved.get(a) == Some(w)));
        assert_eq!(HostFacts::from_annotation("not json"), HostFacts::default());
    }

    #[test]
    fn own_facts_name_this_node_and_the_records_own_node() {
        // This node's own record is read back from the API as well: its
        // facts must not be attributed twice, nor to another node.
        let mut mine = HostFacts::default();
        mine.reserve(ip("192.0.2.11"), "an address of eth0 that vipd did not add");
        let g = Guard::build(
            &[],
            None,
            &[],
            &[PublishedFacts {
                node: "n1".into(),
                control_plane_vips: vec![],
                host: mine.clone(),
            }],
            "n1",
            None,
        );
        assert!(
            g.is_empty(),
            "a node's own record is not read: its live facts are"
        );
        let g = Guard::build(&[], None, &[], &[], "n1", Some(&mine));
        assert_eq!(
            g.explain(ip("192.0.2.11")).as_deref(),
            Some("192.0.2.11 is an address of eth0 that vipd did not add on node n1")
        );
    }
}
