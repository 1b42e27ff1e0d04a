//! Who may announce an address, and who should.
//!
//! A Service address is announced by one node. Any node may, unless:
//! - some node carries the label `svccontroller.k3s.cattle.io/enablelb`,
//!   whatever its value (K3s ServiceLB's rule, `nodeHasDaemonSetLabel`):
//!   then only nodes whose value is exactly `true`;
//! - and then, when the Service carries the label
//!   `svccontroller.k3s.cattle.io/lbpool=<pool>` (not empty), only those
//!   of them with the same `lbpool` label value. Without node selection
//!   (no node has `enablelb`), K3s ignores `lbpool`, and so does vipd;
//! - the Service has `externalTrafficPolicy: Local`: only nodes with a ready
//!   endpoint of it.
//!
//! Services sharing an address must all be satisfied. An unrestricted address
//! is announced by the Services leader (unless `svc_election`); a restricted
//! one gets a Lease of its own, taken first by the eligible node that ranks
//! highest for it (rendezvous hashing), which spreads addresses evenly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::model::{NodeInfo, ReadyNodes, SvcInfo, SvcKey};

/// The nodes that may announce an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligible {
    /// Any node running vipd.
    Any,
    /// Only these (possibly none: then nobody announces it).
    Only(BTreeSet<String>),
}

impl Eligible {
    fn and(self, other: Eligible) -> Eligible {
        match (self, other) {
            (Eligible::Any, x) | (x, Eligible::Any) => x,
            (Eligible::Only(a), Eligible::Only(b)) => {
                Eligible::Only(a.intersection(&b).cloned().collect())
            }
        }
    }

    pub fn allows(&self, node: &str) -> bool {
        match self {
            Eligible::Any => true,
            Eligible::Only(s) => s.contains(node),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Eligible::Only(s) if s.is_empty())
    }
}

/// One address to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    pub addr: IpAddr,
    /// The Services whose status carries it.
    pub users: Vec<SvcKey>,
    pub eligible: Eligible,
    /// The interface asked for by a user (`kube-vip.io/serviceInterface`).
    pub interface: Option<String>,
}

impl AddressPlan {
    /// Announced under a Lease of its own rather than by the leader.
    pub fn own_lease(&self, per_address_election: bool) -> bool {
        per_address_election || self.eligible != Eligible::Any
    }
}

/// K3s ServiceLB's node selection for `s` (see the module's rules).
pub fn servicelb_nodes(s: &SvcInfo, nodes: &[NodeInfo]) -> Eligible {
    if !nodes.iter().any(|n| n.enablelb.is_some()) {
        return Eligible::Any;
    }
    Eligible::Only(
        nodes
            .iter()
            .filter(|n| n.enablelb.as_deref() == Some("true"))
            .filter(|n| s.lbpool.is_none() || n.lbpool == s.lbpool)
            .map(|n| n.name.clone())
            .collect(),
    )
}

fn eligible_for(s: &SvcInfo, nodes: &[NodeInfo], ready: &ReadyNodes) -> Eligible {
    let mut e = servicelb_nodes(s, nodes);
    if s.local_policy {
        e = e.and(Eligible::Only(
            ready.get(&s.key).cloned().unwrap_or_default(),
        ));
    }
    e
}

/// Every address carried by the status of a served Service, with who may
/// announce it.
pub fn plan_addresses(
    served: &[&SvcInfo],
    nodes: &[NodeInfo],
    ready: &ReadyNodes,
) -> Vec<AddressPlan> {
    let mut by_addr: BTreeMap<IpAddr, AddressPlan> = BTreeMap::new();
    for s in served {
        let e = eligible_for(s, nodes, ready);
        for ip in &s.status_ips {
            let plan = by_addr.entry(*ip).or_insert_with(|| AddressPlan {
                addr: *ip,
                users: Vec::new(),
                eligible: Eligible::Any,
                interface: None,
            });
            plan.users.push(s.key.clone());
            plan.eligible = std::mem::replace(&mut plan.eligible, Eligible::Any).and(e.clone());
            if plan.interface.is_none() {
                plan.interface = s.interface.clone();
            }
        }
    }
    by_addr.into_values().collect()
}

/// FNV-1a then murmur3's 64-bit finalizer: the same on every node and every
/// vipd version, and well mixed even for names that differ in one byte.
pub(super) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// This node's place in the order in which eligible nodes try to take an
/// address's Lease (0 first). `known` are the nodes vipd knows of (Node
/// objects); with `Eligible::Any` they all compete, this node included.
pub fn rank(me: &str, addr: IpAddr, eligible: &Eligible, known: &[NodeInfo]) -> usize {
    let mut candidates: Vec<&str> = match eligible {
        Eligible::Only(s) => s.iter().map(String::as_str).collect(),
        Eligible::Any => known.iter().map(|n| n.name.as_str()).collect(),
    };
    if !candidates.contains(&me) {
        candidates.push(me);
    }
    let a = addr.to_string();
    candidates.sort_by_key(|n| std::cmp::Reverse(stable_hash(&[a.as_bytes(), n.as_bytes()])));
    candidates
        .iter()
        .position(|n| *n == me)
        .expect("me is a candidate")
}

/// Where `addr` goes with placement (`svc_placement`): the live eligible
/// node that ranks first for it, the same on every node that sees the same
/// live nodes (rendezvous hashing: a node's death moves only its own
/// addresses, spread over the others). None: no live node may announce it.
pub fn placed_on<'a>(
    addr: IpAddr,
    eligible: &Eligible,
    live: &'a BTreeSet<String>,
) -> Option<&'a str> {
    let a = addr.to_string();
    live.iter()
        .filter(|n| eligible.allows(n))
        .max_by_key(|n| {
            (
                stable_hash(&[a.as_bytes(), n.as_bytes()]),
                std::cmp::Reverse(*n),
            )
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::{Family, FamilyPolicy};

    fn svc(name: &str, ip: &str) -> SvcInfo {
        SvcInfo {
            key: SvcKey {
                namespace: "d".into(),
                name: name.into(),
            },
            created: None,
            is_load_balancer: true,
            status_ips: vec![ip.parse().unwrap()],
            families: vec![Family::V4],
            family_policy: FamilyPolicy::SingleStack,
            ..Default::default()
        }
    }

    fn node(name: &str, enablelb: bool, pool: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            enablelb: enablelb.then(|| "true".to_string()),
            lbpool: pool.map(String::from),
            ..Default::default()
        }
    }

    fn only(names: &[&str]) -> Eligible {
        Eligible::Only(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn unrestricted_by_default() {
        let s = svc("a", "192.0.2.150");
        let p = plan_addresses(&[&s], &[node("n1", false, None)], &ReadyNodes::new());
        assert_eq!(p[0].eligible, Eligible::Any);
        assert!(!p[0].own_lease(false));
        assert!(p[0].own_lease(true));
    }

    /// K3s' servicelb.go, case by case: `nodeHasDaemonSetLabel` (the label
    /// present on any node, whatever its value, turns selection on), the
    /// DaemonSet's nodeSelector `enablelb=true`, and `lbpool` (a Service
    /// label, not empty) added to it only when selection is on.
    #[test]
    fn servicelb_labels_as_k3s_reads_them() {
        fn n(name: &str, enablelb: Option<&str>, pool: Option<&str>) -> NodeInfo {
            NodeInfo {
                name: name.into(),
                enablelb: enablelb.map(String::from),
                lbpool: pool.map(String::from),
                ..Default::default()
            }
        }
        type Case<'a> = (
            &'a str,
            Vec<NodeInfo>,
            Option<&'a str>,
            Option<&'a [&'a str]>,
        );
        let cases: Vec<Case> = vec![
            (
                "no labels: every node",
                vec![n("a", None, None), n("b", None, None)],
                None,
                None,
            ),
            (
                "lbpool without enablelb anywhere: ignored",
                vec![n("a", None, Some("x")), n("b", None, None)],
                Some("x"),
                None,
            ),
            (
                "enablelb=true on one: only it",
                vec![n("a", Some("true"), None), n("b", None, None)],
                None,
                Some(&["a"]),
            ),
            (
                "enablelb=false only: selection on, nobody",
                vec![n("a", Some("false"), None), n("b", None, None)],
                None,
                Some(&[]),
            ),
            (
                "a value other than true does not count",
                vec![n("a", Some("yes"), None), n("b", Some("true"), None)],
                None,
                Some(&["b"]),
            ),
            (
                "lbpool with selection on: both labels",
                vec![
                    n("a", Some("true"), Some("x")),
                    n("b", Some("true"), Some("y")),
                    n("c", None, Some("x")),
                ],
                Some("x"),
                Some(&["a"]),
            ),
            (
                "lbpool nobody carries: nobody",
                vec![n("a", Some("true"), Some("x"))],
                Some("zzz"),
                Some(&[]),
            ),
            (
                "no lbpool on the Service: every enablelb=true node, pools or not",
                vec![n("a", Some("true"), Some("x")), n("b", Some("true"), None)],
                None,
                Some(&["a", "b"]),
            ),
        ];
        for (what, nodes, pool, want) in cases {
            let mut s = svc("s", "192.0.2.150");
            s.lbpool = pool.map(String::from);
            let want = match want {
                None => Eligible::Any,
                Some(names) => only(names),
            };
            assert_eq!(servicelb_nodes(&s, &nodes), want, "{what}");
        }
    }

    #[test]
    fn local_policy_follows_ready_endpoints_and_shared_addresses_intersect() {
        let mut a = svc("a", "192.0.2.150");
        a.local_policy = true;
        let b = svc("b", "192.0.2.150");
        let mut ready = ReadyNodes::new();
        ready.insert(a.key.clone(), ["n2".to_string(), "n3".to_string()].into());
        let p = plan_addresses(&[&a, &b], &[], &ready);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].users.len(), 2);
        assert_eq!(p[0].eligible, only(&["n2", "n3"]));
        ready.clear();
        assert!(
            plan_addresses(&[&a], &[], &ready)[0].eligible.is_none(),
            "no endpoint left: nobody"
        );
    }

    #[test]
    fn ranks_are_a_permutation_and_spread_addresses() {
        let nodes: Vec<NodeInfo> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| node(n, false, None))
            .collect();
        let mut firsts = BTreeMap::new();
        for i in 0..300u32 {
            let addr: IpAddr = format!("198.51.100.{}", i % 250).parse().unwrap();
            let addr = if i >= 250 {
                format!("2001:db8::{i}").parse().unwrap()
            } else {
                addr
            };
            let ranks: BTreeSet<usize> = nodes
                .iter()
                .map(|n| rank(&n.name, addr, &Eligible::Any, &nodes))
                .collect();
            assert_eq!(ranks, [0, 1, 2].into());
            let first = nodes
                .iter()
                .find(|n| rank(&n.name, addr, &Eligible::Any, &nodes) == 0)
                .unwrap();
            *firsts.entry(first.name.clone()).or_insert(0) += 1;
        }
        for (n, c) in &firsts {
            assert!(
                (70..=130).contains(c),
                "{n} ranks first for {c} of 300 addresses: {firsts:?}"
            );
        }
        // A node vipd does not know of (no Node object) still gets a place.
        assert!(
            rank(
                "stranger",
                "192.0.2.1".parse().unwrap(),
                &Eligible::Any,
                &nodes
            ) <= 3
        );
    }
}
