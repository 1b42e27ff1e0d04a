//! Every Event reason a Services pass can produce, each from the snapshot
//! that causes it; and the claims a pass makes per mode.

use super::*;
use crate::services::guard::NodeAddresses;
use crate::services::model::{Condition, Ingress};
use k8s_openapi::api::core::v1::Service;
use serde_json::json;
use std::sync::Arc;

const ME: &str = "n1";

fn settings(bgp: bool, per_address: bool) -> NodeSettings {
    NodeSettings {
        me: ME.into(),
        bgp: bgp.then(vipd_bgp::RouteAttrs::default),
        per_address_election: per_address,
        subnets: Subnets { v4: 32, v6: 128 },
        interface: None,
        default_interface: "eth0".into(),
    }
}

/// A LoadBalancer Service in namespace `d` from its metadata and status.
fn svc(name: &str, annotations: serde_json::Value, ingress: &[&str]) -> Svc {
    svc_with(name, annotations, json!({}), ingress)
}

/// A Service holding `ip`, which vipd assigned (so the leader keeps it).
fn held(name: &str, ip: &str) -> Svc {
    svc(name, json!({ "vipd.dev/assigned": ip }), &[ip])
}

fn svc_with(
    name: &str,
    annotations: serde_json::Value,
    spec: serde_json::Value,
    ingress: &[&str],
) -> Svc {
    let mut spec_v = json!({
        "type": "LoadBalancer",
        "ports": [{ "port": 80, "protocol": "TCP" }],
        "ipFamilies": ["IPv4"],
    });
    for (k, v) in spec.as_object().unwrap() {
        spec_v[k] = v.clone();
    }
    let ingress: Vec<serde_json::Value> = ingress
        .iter()
        .map(|ip| json!({ "ip": ip, "ports": [{ "port": 80, "protocol": "TCP" }] }))
        .collect();
    let s: Service = serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": "d", "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": annotations,
        },
        "spec": spec_v,
        "status": { "loadBalancer": { "ingress": ingress } },
    }))
    .unwrap();
    Arc::new(SvcInfo::from_service(&s).unwrap())
}

fn pools(data: &[(&str, &str)]) -> Pools {
    let m: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Pools::parse(&m).unwrap()
}

/// n2 has InternalIP 192.0.2.12; the control-plane VIP is 192.0.2.100.
fn guard() -> Guard {
    Guard::build(
        &["192.0.2.100".parse().unwrap()],
        None,
        &[NodeAddresses {
            name: "n2".into(),
            internal: vec!["192.0.2.12".parse().unwrap()],
            external: vec![],
        }],
        &[],
        ME,
        None,
    )
}

struct World {
    infos: Vec<Svc>,
    nodes: Vec<NodeInfo>,
    ready: ReadyNodes,
    pools: Pools,
    guard: Guard,
    leading: bool,
    live: Option<BTreeSet<String>>,
    suspect: Option<BTreeSet<String>>,
    stand_in: StandIn,
    node: NodeSettings,
}

impl World {
    fn new(infos: Vec<Svc>) -> World {
        World {
            infos,
            nodes: ["n1", "n2", "n3"]
                .iter()
                .map(|n| NodeInfo {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ready: ReadyNodes::new(),
            pools: Pools::default(),
            guard: guard(),
            leading: true,
            live: None,
            suspect: None,
            stand_in: StandIn::Nobody,
            node: settings(false, false),
        }
    }

    fn run(&self, mem: &mut Memory, announced: &BTreeSet<IpAddr>) -> (Decision, Vec<Change>) {
        let served: Vec<&Svc> = self.infos.iter().collect();
        let s = Snapshot {
            wall: "2026-12-01T00:00:00Z",
            infos: &self.infos,
            served: &served,
            nodes: &self.nodes,
            ready: &self.ready,
            pools: &self.pools,
            guard: &self.guard,
            leading: self.leading,
            live: self.live.as_ref(),
            suspect: self.suspect.as_ref(),
            stand_in: self.stand_in,
            node: &self.node,
        };
        let d = decide(&s, mem, Instant::now());
        let more = announcements(&s, &d, announced);
        (d, more)
    }
}

/// The Events of some changes: (service, reason, note).
fn events(changes: &[Change]) -> Vec<(String, &'static str, String)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Event {
                svc, reason, note, ..
            } => Some((svc.key.name.clone(), *reason, note.clone())),
            _ => None,
        })
        .collect()
}

fn has(changes: &[Change], name: &str, reason: &str, note_part: &str) -> bool {
    events(changes)
        .iter()
        .any(|(n, r, note)| n == name && *r == reason && note.contains(note_part))
}

#[test]
fn every_problem_of_the_leader_is_an_event_with_its_reason() {
    let pool = [("cidr-d", "192.0.2.160/30")];
    type Case = (
        &'static str,
        Svc,
        Vec<(&'static str, &'static str)>,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "annotation that does not parse",
            svc("a", json!({ "kube-vip.io/loadbalancerIPs": "nope" }), &[]),
            vec![],
            "InvalidAnnotation",
            "\"nope\" is not an IP address",
        ),
        (
            "spec.loadBalancerIP that does not parse",
            svc_with("a", json!({}), json!({ "loadBalancerIP": "x.y" }), &[]),
            vec![],
            "InvalidLoadBalancerIP",
            "spec.loadBalancerIP=\"x.y\"",
        ),
        (
            "an IPv6 address for an IPv4 Service",
            svc(
                "a",
                json!({ "kube-vip.io/loadbalancerIPs": "2001:db8::5" }),
                &[],
            ),
            vec![],
            "AddressFamilyMismatch",
            "2001:db8::5 is IPv6",
        ),
        (
            "outside the pools",
            svc(
                "a",
                json!({ "kube-vip.io/loadbalancerIPs": "198.51.100.7" }),
                &[],
            ),
            pool.to_vec(),
            "AddressNotInPool",
            "198.51.100.7 is outside",
        ),
        (
            "nothing asked, no pool",
            svc("a", json!({}), &[]),
            vec![],
            "NoAddressPool",
            "no pool",
        ),
        (
            "pool without the family",
            svc_with("a", json!({}), json!({ "ipFamilies": ["IPv6"] }), &[]),
            pool.to_vec(),
            "AddressFamilyMissing",
            "no IPv6 range",
        ),
        (
            "a node's address",
            svc(
                "a",
                json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.12" }),
                &[],
            ),
            vec![],
            "AddressForbidden",
            "the InternalIP of node n2",
        ),
        (
            "the control-plane VIP",
            svc(
                "a",
                json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.100" }),
                &[],
            ),
            vec![],
            "AddressForbidden",
            "the control-plane VIP",
        ),
        (
            "a stale status and no pool (K3s ServiceLB's leftover)",
            svc("a", json!({}), &["192.0.2.13"]),
            vec![],
            "StaleStatusIgnored",
            "192.0.2.13 which vipd did not assign",
        ),
    ];
    for (what, s, pool_data, reason, part) in cases {
        let mut w = World::new(vec![s]);
        w.pools = pools(&pool_data);
        let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
        assert!(
            has(&d.changes, "a", reason, part),
            "{what}: {:?}",
            events(&d.changes)
        );
        assert!(
            !d.changes
                .iter()
                .any(|c| matches!(c, Change::Status { ingress: Some(i), .. } if !i.is_empty())),
            "{what}: a pending Service gets no ingress"
        );
    }
}

#[test]
fn assignment_exhaustion_conflict_and_release() {
    let pool = pools(&[
        ("cidr-d", "192.0.2.160/31"),
        ("skip-end-ips-in-cidr", "false"),
    ]);
    // a holds .160 (vipd assigned it); b asks for it later: AddressInUse.
    let a = svc(
        "a",
        json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.160", "vipd.dev/assigned": "192.0.2.160" }),
        &["192.0.2.160"],
    );
    let b = svc(
        "b",
        json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.160" }),
        &[],
    );
    let c = svc("c", json!({}), &[]);
    let e = svc("e", json!({}), &[]);
    let mut w = World::new(vec![a, b, c, e]);
    w.pools = pool;
    let mut mem = Memory::default();
    let (d, _) = w.run(&mut mem, &BTreeSet::new());
    assert!(has(
        &d.changes,
        "b",
        "AddressInUse",
        "already used by Service d/a"
    ));
    assert!(has(
        &d.changes,
        "c",
        "AddressAssigned",
        "assigned 192.0.2.161 (from pool cidr-d)"
    ));
    assert!(has(
        &d.changes,
        "e",
        "PoolExhausted",
        "no free IPv4 address left in pool cidr-d"
    ));
    assert_eq!(mem.pending_reasons.get("AddressInUse"), Some(&1));
    assert_eq!(mem.pending_reasons.get("PoolExhausted"), Some(&1));
    // a keeps what it holds: no write, no Event for it.
    assert!(!events(&d.changes).iter().any(|(n, _, _)| n == "a"));

    // a stops being a LoadBalancer (still there): AddressReleased.
    let mut w2 = World::new(vec![]);
    w2.pools = w.pools.clone();
    let served_none: Vec<&Svc> = vec![];
    let s = Snapshot {
        wall: "2026-12-01T00:00:00Z",
        infos: &w.infos,
        served: &served_none,
        nodes: &w2.nodes,
        ready: &w2.ready,
        pools: &w2.pools,
        guard: &w2.guard,
        leading: true,
        live: None,
        suspect: None,
        stand_in: StandIn::Nobody,
        node: &w2.node,
    };
    let d = decide(&s, &mut mem, Instant::now());
    assert!(has(
        &d.changes,
        "a",
        "AddressReleased",
        "released 192.0.2.160"
    ));
}

#[test]
fn servicelb_leftovers_are_replaced_from_the_pool() {
    let mut w = World::new(vec![svc("traefik", json!({}), &["192.0.2.13"])]);
    w.pools = pools(&[("cidr-global", "192.0.2.160/30")]);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(has(
        &d.changes,
        "traefik",
        "StaleStatusReplaced",
        "held 192.0.2.13"
    ));
    assert!(has(
        &d.changes,
        "traefik",
        "AddressAssigned",
        "from pool cidr-global"
    ));
}

#[test]
fn announcements_moves_withdrawals_and_refusals() {
    // The status carries n2's own address (another writer put it there):
    // every node refuses it.
    let forbidden = svc("f", json!({}), &["192.0.2.12"]);
    let mut w = World::new(vec![forbidden]);
    w.leading = false;
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(has(
        &d.changes,
        "f",
        "AddressForbidden",
        "the InternalIP of node n2"
    ));
    assert!(d.leader_claims.is_empty() && d.refused.len() == 1);

    // Announced here, first time: AddressAnnounced; moved from n2: AddressMoved.
    let fresh = held("a", "192.0.2.150");
    let moved = svc(
        "b",
        json!({ "kube-vip.io/vipHost": "n2", "vipd.dev/assigned": "192.0.2.151" }),
        &["192.0.2.151"],
    );
    let w = World::new(vec![fresh, moved]);
    let announced = BTreeSet::from([
        "192.0.2.150".parse().unwrap(),
        "192.0.2.151".parse().unwrap(),
    ]);
    let (d, more) = w.run(&mut Memory::default(), &announced);
    assert_eq!(
        d.leader_claims.len(),
        2,
        "unrestricted addresses go with the leader"
    );
    assert!(has(
        &more,
        "a",
        "AddressAnnounced",
        "192.0.2.150 announced by n1"
    ));
    assert!(has(
        &more,
        "b",
        "AddressMoved",
        "192.0.2.151 moved from n2 to n1"
    ));

    // externalTrafficPolicy Local without a ready endpoint: nobody may
    // announce it; the leader withdraws vipHost.
    let local = svc_with(
        "l",
        json!({ "kube-vip.io/vipHost": "n3", "vipd.dev/assigned": "192.0.2.152" }),
        json!({ "externalTrafficPolicy": "Local" }),
        &["192.0.2.152"],
    );
    let w = World::new(vec![local]);
    let (d, more) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.wants.is_empty(), "not eligible: no Lease to compete for");
    assert!(has(
        &more,
        "l",
        "NoEligibleNode",
        "192.0.2.152 is withdrawn"
    ));
}

#[test]
fn bad_bgp_annotations_are_events_and_the_pool_attributes_stay() {
    let s = svc(
        "a",
        json!({ "vipd.dev/bgp-communities": "65000:x", "vipd.dev/bgp-local-pref": "high" }),
        &["192.0.2.150"],
    );
    let mut w = World::new(vec![s]);
    w.node = settings(true, false);
    w.leading = false;
    let (d, more) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(has(
        &d.changes,
        "a",
        "InvalidAnnotation",
        "vipd.dev/bgp-communities"
    ));
    assert!(has(
        &d.changes,
        "a",
        "InvalidAnnotation",
        "vipd.dev/bgp-local-pref"
    ));
    assert_eq!(d.bgp_claims.len(), 1, "BGP: every eligible node announces");
    assert!(more.is_empty(), "BGP mode writes no vipHost");
}

#[test]
fn per_address_election_competes_with_a_stagger_by_rank() {
    let s = held("a", "192.0.2.150");
    let mut w = World::new(vec![s]);
    w.node = settings(false, true);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.leader_claims.is_empty());
    let want = d
        .wants
        .get(&"192.0.2.150".parse().unwrap())
        .expect("a Lease of its own");
    assert!(want.delay <= STAGGER * 2);
    assert_eq!(want.claim.interface, "eth0");
}

#[test]
fn placement_claims_what_ranks_here_among_live_nodes_and_nothing_competes_by_lease() {
    let addrs: Vec<String> = (1..=30).map(|i| format!("192.0.2.{}", 150 + i)).collect();
    let infos: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| held(&format!("s{i}"), a))
        .collect();
    let mut w = World::new(infos);
    w.node = settings(false, true);
    let live: BTreeSet<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
    w.live = Some(live.clone());
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.wants.is_empty() && d.leader_claims.is_empty());
    let mine: BTreeSet<IpAddr> = d.placed.iter().map(|c| c.addr).collect();
    let expected: BTreeSet<IpAddr> = d
        .plans
        .iter()
        .filter(|p| crate::services::eligibility::placed_on(p.addr, &p.eligible, &live) == Some(ME))
        .map(|p| p.addr)
        .collect();
    assert_eq!(mine, expected);
    assert!(
        !mine.is_empty() && mine.len() < 30,
        "n1 holds {} of 30",
        mine.len()
    );
    // Alone among the living, n1 takes everything; not alive, nothing.
    w.live = Some([ME.to_string()].into());
    assert_eq!(
        w.run(&mut Memory::default(), &BTreeSet::new())
            .0
            .placed
            .len(),
        30
    );
    w.live = Some(["n2".to_string()].into());
    assert!(w
        .run(&mut Memory::default(), &BTreeSet::new())
        .0
        .placed
        .is_empty());
    // Without svc_election, addresses any node may announce stay the
    // Services leader's.
    w.node = settings(false, false);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.placed.is_empty() && d.leader_claims.len() == 30);
}

#[test]
fn addresses_moved_by_a_link_alone_are_claimed_until_silent() {
    let addrs: Vec<String> = (1..=30).map(|i| format!("192.0.2.{}", 150 + i)).collect();
    let infos: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| svc(&format!("s{i}"), json!({}), &[a.as_str()]))
        .collect();
    let mut w = World::new(infos);
    w.node = settings(false, true);
    let all: BTreeSet<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
    let placed_with = |live: &BTreeSet<String>| -> BTreeSet<IpAddr> {
        addrs
            .iter()
            .map(|a| a.parse::<IpAddr>().unwrap())
            .filter(|a| {
                crate::services::eligibility::placed_on(
                    *a,
                    &crate::services::eligibility::Eligible::Any,
                    live,
                ) == Some(ME)
            })
            .collect()
    };
    let mine_before = placed_with(&all);
    // n3 is dead by its Lease: what moves here is claimed as usual.
    let two: BTreeSet<String> = ["n1", "n2"].iter().map(|s| s.to_string()).collect();
    w.live = Some(two.clone());
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.placed.iter().all(|c| !c.until_silent));
    // n3 is dead by its link only: the same addresses move here, those
    // that were n3's claimed until silent, n1's own as usual.
    w.suspect = Some(["n3".to_string()].into());
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    let moved: BTreeSet<IpAddr> = placed_with(&two)
        .difference(&mine_before)
        .copied()
        .collect();
    assert!(!moved.is_empty(), "nothing of n3's moved to n1");
    for c in &d.placed {
        assert_eq!(c.until_silent, moved.contains(&c.addr), "{}", c.addr);
    }
}

/// Leader mode: the heir of a dead Services leader holds the leader's
/// addresses under its own liveness (placed), added only once silent
/// however its death is known; nobody else claims them.
#[test]
fn the_heir_of_a_dead_leader_holds_its_addresses_as_placed_ones() {
    let infos = vec![
        svc(
            "a",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.150" }),
            &["192.0.2.150"],
        ),
        svc(
            "b",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.151" }),
            &["192.0.2.151"],
        ),
    ];
    let mut w = World::new(infos);
    w.leading = false;
    w.live = Some(["n1", "n2"].iter().map(|s| s.to_string()).collect());
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.placed.is_empty());
    assert_eq!(d.leader_claims.len(), 2);
    w.stand_in = StandIn::Heir { by_link: false };
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.leader_claims.is_empty());
    let placed: Vec<(IpAddr, bool)> = d.placed.iter().map(|c| (c.addr, c.until_silent)).collect();
    assert_eq!(
        placed,
        vec![
            ("192.0.2.150".parse().unwrap(), true),
            ("192.0.2.151".parse().unwrap(), true)
        ]
    );
    w.stand_in = StandIn::Other;
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.placed.is_empty());
}

type StatusWrite = (Option<Ingress>, Vec<(&'static str, Condition)>);

fn status_writes(changes: &[Change], name: &str) -> Vec<StatusWrite> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Status {
                svc,
                ingress,
                conditions,
            } if svc.key.name == name => Some((ingress.clone(), conditions.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn conditions_say_what_the_last_event_said_in_the_same_write() {
    let mut w = World::new(vec![
        svc(
            "ok",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.150" }),
            &[],
        ),
        svc(
            "bad",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.12" }),
            &[],
        ),
    ]);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    // The assignment: ingress and condition in one status write.
    let ok = status_writes(&d.changes, "ok");
    assert_eq!(ok.len(), 1);
    let (ingress, conds) = &ok[0];
    assert_eq!(
        ingress.as_ref().unwrap()[0].0,
        "192.0.2.150".parse::<IpAddr>().unwrap()
    );
    let (kind, c) = &conds[0];
    assert_eq!(*kind, conditions::ASSIGNED);
    assert!(c.status && c.reason == "AddressAssigned");
    assert!(
        has(&d.changes, "ok", "AddressAssigned", &c.message),
        "the Event says the same"
    );
    assert_eq!(c.last_transition, "2026-12-01T00:00:00Z");
    // The problem: both conditions False, with the Event's reason and message.
    let bad = status_writes(&d.changes, "bad");
    let (ingress, conds) = &bad[0];
    assert!(ingress.is_none(), "nothing to clear");
    let assigned = conds
        .iter()
        .find(|(k, _)| *k == conditions::ASSIGNED)
        .unwrap();
    assert!(!assigned.1.status && assigned.1.reason == "AddressForbidden");
    assert!(has(
        &d.changes,
        "bad",
        "AddressForbidden",
        &assigned.1.message
    ));
    let announced = conds
        .iter()
        .find(|(k, _)| *k == conditions::ANNOUNCED)
        .unwrap();
    assert_eq!(announced.1.reason, "NotAssigned");

    // A pass over objects that already say so writes nothing more.
    let with = |name: &str, anns: serde_json::Value, ingress: &[&str], conds: serde_json::Value| {
        let mut o: Service = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "d", "uid": format!("uid-{name}"),
                          "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": anns },
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }], "ipFamilies": ["IPv4"] },
            "status": { "loadBalancer": { "ingress": ingress.iter().map(|ip| json!({ "ip": ip, "ports": [{ "port": 80, "protocol": "TCP" }] })).collect::<Vec<_>>() } },
        }))
        .unwrap();
        o.status.as_mut().unwrap().conditions = Some(serde_json::from_value(conds).unwrap());
        Arc::new(SvcInfo::from_service(&o).unwrap())
    };
    let cond = |t: &str, st: &str, r: &str, m: &str| json!({ "type": t, "status": st, "reason": r, "message": m, "lastTransitionTime": "2026-11-30T00:00:00Z" });
    w.infos = vec![
        with(
            "ok",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.150", "vipd.dev/assigned": "192.0.2.150" }),
            &["192.0.2.150"],
            json!([cond(
                conditions::ASSIGNED,
                "True",
                "AddressAssigned",
                &c.message
            )]),
        ),
        with(
            "bad",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.12" }),
            &[],
            json!([
                cond(
                    conditions::ASSIGNED,
                    "False",
                    "AddressForbidden",
                    &assigned.1.message
                ),
                cond(
                    conditions::ANNOUNCED,
                    "False",
                    "NotAssigned",
                    &announced.1.message
                ),
            ]),
        ),
    ];
    let announced_here = BTreeSet::from(["192.0.2.150".parse().unwrap()]);
    let (d, more) = w.run(&mut Memory::default(), &announced_here);
    assert!(status_writes(&d.changes, "ok").is_empty());
    assert!(status_writes(&d.changes, "bad").is_empty());
    // Announced by this node: the Announced condition, with its Event.
    let ann = status_writes(&more, "ok");
    assert_eq!(ann.len(), 1);
    let (kind, c) = &ann[0].1[0];
    assert_eq!(*kind, conditions::ANNOUNCED);
    assert!(c.status && c.message == "192.0.2.150 announced by n1");
    assert!(has(
        &more,
        "ok",
        "AddressAnnounced",
        "192.0.2.150 announced by n1"
    ));
}

#[test]
fn metallb_annotations_are_honoured_and_kube_vips_wins() {
    let w = World::new(vec![
        svc(
            "m",
            json!({ "metallb.io/loadBalancerIPs": "192.0.2.150" }),
            &[],
        ),
        svc(
            "old",
            json!({ "metallb.universe.tf/loadBalancerIPs": "192.0.2.151" }),
            &[],
        ),
        svc(
            "both",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.152", "metallb.io/loadBalancerIPs": "192.0.2.153" }),
            &[],
        ),
    ]);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(has(
        &d.changes,
        "m",
        "AddressAssigned",
        "assigned 192.0.2.150 (from metallb.io/loadBalancerIPs)"
    ));
    assert!(has(
        &d.changes,
        "old",
        "AddressAssigned",
        "(from metallb.universe.tf/loadBalancerIPs)"
    ));
    assert!(has(
        &d.changes,
        "both",
        "AddressAssigned",
        "assigned 192.0.2.152 (from kube-vip.io/loadbalancerIPs; metallb.io/loadBalancerIPs ignored: kube-vip.io/loadbalancerIPs wins)"
    ));
}

#[test]
fn metallb_sharing_keys_share_an_address_with_disjoint_ports() {
    let mk = |name: &str, port: i32, key: Option<&str>| {
        let mut anns = json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.150" });
        if let Some(k) = key {
            anns["metallb.io/allow-shared-ip"] = json!(k);
        }
        svc_with(
            name,
            anns,
            json!({ "ports": [{ "port": port, "protocol": "TCP" }] }),
            &[],
        )
    };
    let w = World::new(vec![
        mk("dns-tcp", 53, Some("dns")),
        mk("dns-udp", 54, Some("dns")),
        mk("other", 55, Some("web")),
    ]);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(has(&d.changes, "dns-tcp", "AddressAssigned", "192.0.2.150"));
    assert!(
        has(&d.changes, "dns-udp", "AddressAssigned", "192.0.2.150"),
        "same key: shared"
    );
    assert!(
        has(
            &d.changes,
            "other",
            "AddressInUse",
            "already used by Service d/dns-tcp"
        ),
        "another key: not"
    );
}

#[test]
fn unsupported_kube_vip_annotations_are_warned_about_and_the_rest_works() {
    let w = World::new(vec![svc(
        "e",
        json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.150", "kube-vip.io/egress": "true", "kube-vip.io/loadbalancerHostname": "web" }),
        &[],
    )]);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(has(
        &d.changes,
        "e",
        "UnsupportedAnnotation",
        "kube-vip.io/egress is kube-vip's annotation for egress"
    ));
    assert!(has(
        &d.changes,
        "e",
        "UnsupportedAnnotation",
        "kube-vip.io/loadbalancerHostname"
    ));
    assert!(has(&d.changes, "e", "AddressAssigned", "192.0.2.150"));
    // kube-vip's DHCP request (spec.loadBalancerIP 0.0.0.0) is refused by name.
    let w = World::new(vec![svc_with(
        "dhcp",
        json!({}),
        json!({ "loadBalancerIP": "0.0.0.0" }),
        &[],
    )]);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(has(&d.changes, "dhcp", "AddressForbidden", "DHCP"));
}

#[test]
fn the_pool_is_recorded_and_kept_with_the_address() {
    let mut w = World::new(vec![svc("p", json!({}), &[])]);
    w.pools = pools(&[("cidr-d", "192.0.2.160/30")]);
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    let set: Vec<(&str, Option<String>)> = d
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Annotations { set, .. } => Some(set.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        set.contains(&(keys::POOL, Some("cidr-d".into()))),
        "{set:?}"
    );
    // The next pass reads vipd's own pick back: pool kept, nothing written.
    w.infos = vec![svc(
        "p",
        json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.161", "vipd.dev/assigned": "192.0.2.161", "vipd.dev/pool": "cidr-d" }),
        &["192.0.2.161"],
    )];
    let (d, _) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(
        !d.changes
            .iter()
            .any(|c| matches!(c, Change::Annotations { .. })),
        "nothing to change"
    );
}

/// The leader announces what it assigns in the pass that assigns it, and
/// the assignment and the announcement go out as one annotation patch and
/// one status patch: a burst of new Services costs two writes each, not
/// four over two passes (the second waiting for the watch to bring the
/// first back).
#[test]
fn the_leader_announces_what_it_assigns_in_the_same_pass_in_two_writes() {
    let mut w = World::new(vec![svc("a", json!({}), &[])]);
    w.pools = pools(&[("cidr-d", "192.0.2.160/30")]);
    let addr: IpAddr = "192.0.2.160".parse().unwrap();
    let (d, more) = w.run(&mut Memory::default(), &BTreeSet::from([addr]));
    let claimed: Vec<IpAddr> = d.leader_claims.iter().map(|c| c.addr).collect();
    assert_eq!(claimed, vec![addr], "claimed in the assigning pass");
    let mut changes = d.changes;
    changes.extend(more);
    let writes = crate::services::writer::coalesce(changes);
    let annotations: Vec<&Vec<(&str, Option<String>)>> = writes
        .iter()
        .filter_map(|c| match c {
            Change::Annotations { set, .. } => Some(set),
            _ => None,
        })
        .collect();
    assert_eq!(annotations.len(), 1);
    assert!(annotations[0].contains(&(keys::VIP_HOST, Some(ME.to_string()))));
    assert!(annotations[0].contains(&(keys::ASSIGNED, Some(addr.to_string()))));
    let statuses = status_writes(&writes, "a");
    assert_eq!(statuses.len(), 1);
    let (ingress, conds) = &statuses[0];
    assert_eq!(ingress.as_ref().unwrap()[0].0, addr);
    let kinds: BTreeSet<&str> = conds.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([conditions::ASSIGNED, conditions::ANNOUNCED])
    );
    assert!(has(&writes, "a", "AddressAssigned", "192.0.2.160"));
    assert!(has(
        &writes,
        "a",
        "AddressAnnounced",
        "192.0.2.160 announced by n1"
    ));
}

/// A follower never plans from an assignment it does not write.
#[test]
fn a_follower_plans_only_from_the_status() {
    let mut w = World::new(vec![svc("a", json!({}), &[])]);
    w.pools = pools(&[("cidr-d", "192.0.2.160/30")]);
    w.leading = false;
    let (d, more) = w.run(&mut Memory::default(), &BTreeSet::new());
    assert!(d.plans.is_empty() && d.written.is_empty() && more.is_empty());
}
