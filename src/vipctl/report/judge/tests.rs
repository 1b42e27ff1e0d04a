//! `vipctl status`'s judgement from recorded inputs: instance records,
//! live documents (or why they could not be read), the control-plane
//! Lease, Services and Events, as the API and the nodes give them.

use super::*;
use serde_json::json;

const NOW: &str = "2026-12-01T10:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

/// An instance record of `node`, renewed `age` seconds before NOW.
fn record(node: &str, age: i64, held: &str, extra: serde_json::Value) -> Lease {
    let renew = now() - k8s_openapi::jiff::SignedDuration::from_secs(age);
    let mut ann = json!({
        "vipd.dev/held": held,
        "vipd.dev/stray": "",
        "vipd.dev/ready": "true",
        "vipd.dev/version": "0.1.0",
        "vipd.dev/control-plane-vips": "192.0.2.100",
        "vipd.dev/status-url": format!("http://{node}:2112/status"),
    });
    for (k, v) in extra.as_object().unwrap() {
        ann[k] = v.clone();
    }
    serde_json::from_value(json!({
        "metadata": { "name": format!("vipd-instance-{node}"), "labels": { "vipd.dev/instance": "" }, "annotations": ann },
        "spec": { "holderIdentity": node, "renewTime": renew.to_string() },
    }))
    .unwrap()
}

/// A live `/status` of `node` holding `held`.
fn doc(node: &str, held: &[&str]) -> StatusDoc {
    let addresses: Vec<serde_json::Value> = held
        .iter()
        .map(|a| json!({ "address": a, "interface": "eth0", "since": { "secs_since_epoch": 0, "nanos_since_epoch": 0 }, "ours": true }))
        .collect();
    serde_json::from_value(json!({
        "node": node, "version": "0.1.0", "uptime_seconds": 10.0, "ready": true,
        "not_ready": [], "not_ready_total": 0, "last_not_ready": null, "control_plane": null,
        "elections": [], "addresses": addresses, "stray_addresses": [],
        "services": null, "announcements_sent": 1, "announcement_errors": 0, "bgp_peers": [],
    }))
    .unwrap()
}

fn lease(holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": { "name": "plndr-cp-lock" },
        "spec": { "holderIdentity": holder, "acquireTime": "2026-12-01T09:59:00.000000Z" },
    }))
    .unwrap()
}

fn timed_out() -> Unanswered {
    Unanswered {
        refused: false,
        why: "no answer within 1s".into(),
    }
}

fn gathered(records: Vec<Lease>, live: Vec<(&str, Result<StatusDoc, Unanswered>)>) -> Gathered {
    Gathered {
        now: now(),
        records,
        live: live
            .into_iter()
            .map(|(n, d)| (format!("vipd-instance-{n}"), d))
            .collect(),
        cp_lease: Some(lease("n1")),
        services: vec![],
        events: vec![],
    }
}

#[test]
fn all_well_is_no_problem() {
    let g = gathered(
        vec![
            record("n1", 3, "192.0.2.100", json!({})),
            record("n2", 3, "", json!({})),
        ],
        vec![
            ("n1", Ok(doc("n1", &["192.0.2.100"]))),
            ("n2", Ok(doc("n2", &[]))),
        ],
    );
    let r = judge(&g);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.control_plane[0].held_by, vec!["n1"]);
    assert!(r.control_plane[0].ok);
    assert_eq!(r.control_plane[0].moved_seconds_ago, Some(60.0));
    assert!(r.instances.iter().all(|i| i.status == "alive" && i.live));
}

/// The status port does not answer (a firewall between vipctl and the
/// node) but the record is fresh: the record says what the node holds, so
/// the VIP is not reported as held by no node.
#[test]
fn an_unreachable_status_port_with_a_fresh_record_uses_the_record() {
    let g = gathered(
        vec![
            record("n1", 5, "192.0.2.100", json!({})),
            record("n2", 5, "", json!({})),
        ],
        vec![("n1", Err(timed_out())), ("n2", Ok(doc("n2", &[])))],
    );
    let r = judge(&g);
    assert_eq!(r.control_plane[0].held_by, vec!["n1"], "{:?}", r.problems);
    assert!(
        !r.problems.iter().any(|p| p.contains("held by no node")),
        "{:?}",
        r.problems
    );
    let n1 = &r.instances[0];
    assert_eq!(
        (n1.status.as_str(), n1.alive, n1.live),
        ("unreachable", true, false)
    );
    assert!(r
        .problems
        .iter()
        .any(|p| p.contains("n1: its status port does not answer")));
}

#[test]
fn a_stale_record_and_no_answer_is_gone_and_its_vip_unheld() {
    let g = gathered(
        vec![
            record("n1", 300, "192.0.2.100", json!({})),
            record("n2", 5, "", json!({})),
        ],
        vec![("n1", Err(timed_out())), ("n2", Ok(doc("n2", &[])))],
    );
    let r = judge(&g);
    assert_eq!(r.instances[0].status, "gone");
    assert!(r
        .problems
        .iter()
        .any(|p| p == "control-plane VIP 192.0.2.100 is held by no node"));
    assert!(r
        .problems
        .iter()
        .any(|p| p.contains("vipd on n1 is not answering")));
}

#[test]
fn two_holders_are_a_conflict_unless_both_announce_by_bgp() {
    let both = |mode: &str| {
        gathered(
            vec![
                record("n1", 3, "192.0.2.100", json!({ "vipd.dev/mode": mode })),
                record("n2", 3, "192.0.2.100", json!({ "vipd.dev/mode": mode })),
            ],
            vec![
                ("n1", Ok(doc("n1", &["192.0.2.100"]))),
                ("n2", Ok(doc("n2", &["192.0.2.100"]))),
            ],
        )
    };
    let r = judge(&both("arp"));
    assert!(
        r.problems.iter().any(|p| p.contains("is held by 2 nodes")),
        "{:?}",
        r.problems
    );
    let mut g = both("bgp");
    g.cp_lease = None;
    let r = judge(&g);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[test]
fn services_pending_unannounced_and_ready() {
    let svc = |name: &str, ingress: &[&str]| -> Service {
        let ing: Vec<serde_json::Value> = ingress.iter().map(|i| json!({ "ip": i })).collect();
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "web", "annotations": { "kube-vip.io/loadbalancerIPs": "192.0.2.150", "vipd.dev/pool": "cidr-web" } },
            "spec": { "type": "LoadBalancer" },
            "status": { "loadBalancer": { "ingress": ing } },
        }))
        .unwrap()
    };
    let event = |name: &str, reason: &str, note: &str| -> Event {
        serde_json::from_value(json!({
            "metadata": { "name": format!("{name}.1"), "namespace": "web" },
            "eventTime": "2026-12-01T09:59:59.000000Z",
            "reportingController": "vipd", "reportingInstance": "n1", "action": "Reconcile",
            "reason": reason, "note": note, "type": "Warning",
            "regarding": { "kind": "Service", "namespace": "web", "name": name },
        }))
        .unwrap()
    };
    let mut g = gathered(
        vec![record("n1", 3, "192.0.2.100,192.0.2.150", json!({}))],
        vec![("n1", Ok(doc("n1", &["192.0.2.100", "192.0.2.150"])))],
    );
    g.services = vec![
        svc("ready", &["192.0.2.150"]),
        svc("pending", &[]),
        svc("lost", &["192.0.2.151"]),
    ];
    g.events = vec![event(
        "pending",
        "AddressInUse",
        "192.0.2.150 is already used by Service web/ready",
    )];
    let r = judge(&g);
    let state = |n: &str| {
        r.services
            .iter()
            .find(|s| s.name == n)
            .unwrap()
            .state
            .clone()
    };
    assert_eq!(state("ready"), "Ready");
    assert_eq!(state("pending"), "Pending");
    assert_eq!(state("lost"), "Unannounced");
    assert_eq!(
        r.services[0].pool.as_deref(),
        Some("cidr-web"),
        "the POOL column"
    );
    assert!(r.problems.iter().any(|p| p == "Service web/pending is pending: AddressInUse: 192.0.2.150 is already used by Service web/ready"));
    assert!(r
        .problems
        .iter()
        .any(|p| p == "Service web/lost: an address is held by no node"));
}
