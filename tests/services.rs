//! vipd --services as the cluster's LoadBalancer controller, in the lab:
//! three nodes running vipd as `manifests/k3s/vipd-services-daemonset.yaml`
//! (ServiceAccount and RBAC from `manifests/rbac.yaml`), a real API server,
//! a client that connects to Service addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vipd_testkit::apiserver::env;
use vipd_testkit::services::{lab, nodes_with_labels, Lab};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ------------------------------------------------------------------ tests

/// The seed scenario: K3s' Traefik with a fixed VIP by annotation.
#[test]
fn traefik_gets_its_annotated_vip_and_survives_leader_loss() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], Some("kube-system")).await;
        let vip = ip("192.0.2.150");
        let svcs = lab.svcs();
        let _ = svcs.delete("traefik", &DeleteParams::default()).await;
        let svc: Service = serde_json::from_value(json!({
            "metadata": { "name": "traefik", "annotations": { "kube-vip.io/loadbalancerIPs": "192.0.2.150" } },
            "spec": { "type": "LoadBalancer", "ports": [
                { "name": "web", "port": 80, "protocol": "TCP" },
                { "name": "websecure", "port": 443, "protocol": "TCP" } ] }
        }))
        .unwrap();
        svcs.create(&PostParams::default(), &svc).await.unwrap();
        assert_eq!(lab.wait_ingress("traefik", Duration::from_secs(20)).await, vec![vip]);
        let s = lab.get("traefik").await;
        let ports: Vec<i32> = s.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ports
            .clone()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, vec![80, 443]);
        // `kubectl get svc` shows the EXTERNAL-IP.
        let table = env.kubectl(&["get", "svc", "-n", "kube-system", "traefik"]).unwrap();
        assert!(table.contains("192.0.2.150"), "{table}");

        let holder = lab.wait_announced(vip, Duration::from_secs(20)).await;
        assert_eq!(lab.answer(vip, 443).as_deref(), Some(holder.as_str()));
        let s = lab.get("traefik").await;
        for _ in 0..100 {
            if Lab::annotation(&lab.get("traefik").await, "kube-vip.io/vipHost").as_deref() == Some(holder.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(Lab::annotation(&lab.get("traefik").await, "kube-vip.io/vipHost").as_deref(), Some(holder.as_str()), "{:?}", s.metadata.annotations);
        lab.wait_event("traefik", "AddressAssigned", Duration::from_secs(5)).await;

        // The announcing node's vipd dies: another node takes over.
        let i = lab.nodes.iter().position(|n| n.name() == holder).unwrap();
        lab.nodes[i].kill();
        let t0 = Instant::now();
        let mut new = String::new();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Some(a) = lab.answer(vip, 80) {
                if a != holder {
                    new = a;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!new.is_empty(), "nobody took over after 10 s\n{}", lab.logs());
        assert!(t0.elapsed() < Duration::from_secs(6), "takeover took {:?}", t0.elapsed());
        let note = lab.wait_event("traefik", "AddressMoved", Duration::from_secs(5)).await;
        assert!(note.contains(&holder) && note.contains(&new), "{note}");
        svcs.delete("traefik", &DeleteParams::default()).await.unwrap();
        lab.wait_withdrawn(vip, Duration::from_secs(3)).await;
    });
}

#[test]
fn pool_allocation_sharing_release_and_restart() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let ns = lab.ns.clone();
        lab.pools(json!({
            format!("range-{ns}"): "192.0.2.160-192.0.2.162",
            format!("allow-share-{ns}"): "true"
        }))
        .await;
        lab.create("web", json!({}), json!({})).await;
        let web = lab.wait_ingress("web", Duration::from_secs(20)).await;
        assert_eq!(web, vec![ip("192.0.2.160")]);
        // The leader announces what it assigns in the same pass, and the
        // record of the assignment and the announcer ride in the status
        // write: one write for a new Service (the API server's own
        // account of who wrote which field through which subresource).
        let w = lab.get("web").await;
        let status_write = w
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .find(|m| m.subresource.as_deref() == Some("status"))
            .map(|m| serde_json::to_string(&m.fields_v1).unwrap())
            .unwrap_or_default();
        for field in [
            "f:vipd.dev/assigned",
            "f:kube-vip.io/vipHost",
            "f:loadBalancer",
        ] {
            assert!(
                status_write.contains(field),
                "{field} not in the status write: {status_write}"
            );
        }
        // Allocation is recorded in the annotation, so it survives restarts.
        assert_eq!(
            Lab::annotation(&lab.get("web").await, "kube-vip.io/loadbalancerIPs").as_deref(),
            Some("192.0.2.160")
        );
        lab.wait_event("web", "AddressAssigned", Duration::from_secs(5))
            .await;

        // Another port: shares the address. The same port: its own address.
        lab.create(
            "tls",
            json!({}),
            json!({ "ports": [{ "port": 443, "protocol": "TCP" }] }),
        )
        .await;
        lab.create("web2", json!({}), json!({})).await;
        assert_eq!(
            lab.wait_ingress("tls", Duration::from_secs(10)).await,
            vec![ip("192.0.2.160")]
        );
        assert_eq!(
            lab.wait_ingress("web2", Duration::from_secs(10)).await,
            vec![ip("192.0.2.161")]
        );
        let holder = lab
            .wait_announced(ip("192.0.2.160"), Duration::from_secs(10))
            .await;
        assert_eq!(
            lab.answer(ip("192.0.2.160"), 443).as_deref(),
            Some(holder.as_str())
        );
        lab.wait_announced(ip("192.0.2.161"), Duration::from_secs(10))
            .await;

        // Deleting a Service withdraws its address at once and frees it.
        lab.svcs()
            .delete("web2", &DeleteParams::default())
            .await
            .unwrap();
        let t0 = Instant::now();
        lab.wait_withdrawn(ip("192.0.2.161"), Duration::from_secs(2))
            .await;
        eprintln!("withdrawn {:?} after delete", t0.elapsed());
        lab.create("late", json!({}), json!({})).await;
        assert_eq!(
            lab.wait_ingress("late", Duration::from_secs(10)).await,
            vec![ip("192.0.2.161")]
        );

        // Every agent restarts: no address changes, everything answers again.
        let mut before_ips = Vec::new();
        for n in ["web", "tls", "late"] {
            before_ips.push((n.to_string(), Lab::ingress(&lab.get(n).await)));
        }
        for node in lab.nodes.iter_mut() {
            node.kill();
        }
        for node in lab.nodes.iter_mut() {
            node.start().unwrap();
        }
        for a in ["192.0.2.160", "192.0.2.161"] {
            lab.wait_announced(ip(a), Duration::from_secs(20)).await;
        }
        for (n, ips) in before_ips {
            assert_eq!(
                Lab::ingress(&lab.get(&n).await),
                ips,
                "{n} changed address across a restart"
            );
        }
    });
}

#[test]
fn local_policy_follows_ready_endpoints() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let vip = ip("192.0.2.170");
        lab.create(
            "local",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.170" }),
            json!({ "externalTrafficPolicy": "Local" }),
        )
        .await;
        lab.wait_ingress("local", Duration::from_secs(20)).await;
        // No endpoint anywhere: nobody announces (every vipd has decided
        // with the ingress written).
        lab.wait_passes_over(&lab.get("local").await, Duration::from_secs(20))
            .await;
        assert!(lab.holders(vip).await.is_empty());
        lab.endpoints("local", &["n2"]).await;
        assert_eq!(lab.wait_announced(vip, Duration::from_secs(10)).await, "n2");
        lab.endpoints("local", &["n3"]).await;
        let t0 = Instant::now();
        loop {
            if lab.holders(vip).await == vec!["n3".to_string()]
                && lab.answer(vip, 80).as_deref() == Some("n3")
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "did not follow the endpoint to n3\n{}",
                lab.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lab.endpoints("local", &[]).await;
        lab.wait_withdrawn(vip, Duration::from_secs(5)).await;
        lab.wait_event("local", "NoEligibleNode", Duration::from_secs(5))
            .await;
    });
}

#[test]
fn class_and_ignore_filtering() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        lab.create("plain", json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.171" }), json!({})).await;
        lab.create(
            "ours",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.172" }),
            json!({ "loadBalancerClass": "kube-vip.io/kube-vip-class" }),
        )
        .await;
        lab.create(
            "theirs",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.173" }),
            json!({ "loadBalancerClass": "example.com/other" }),
        )
        .await;
        lab.create("ignored", json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.174", "kube-vip.io/ignore": "true" }), json!({}))
            .await;
        lab.wait_ingress("plain", Duration::from_secs(20)).await;
        lab.wait_ingress("ours", Duration::from_secs(10)).await;
        lab.wait_announced(ip("192.0.2.171"), Duration::from_secs(10)).await;
        for name in ["theirs", "ignored"] {
            lab.wait_passes_over(&lab.get(name).await, Duration::from_secs(20)).await;
        }
        assert!(Lab::ingress(&lab.get("theirs").await).is_empty());
        assert!(Lab::ingress(&lab.get("ignored").await).is_empty());
        assert!(lab.holders(ip("192.0.2.173")).await.is_empty());
        assert!(lab.holders(ip("192.0.2.174")).await.is_empty());

        // A Service that stops being a LoadBalancer loses its address at once.
        lab.svcs()
            .patch("plain", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "type": "ClusterIP", "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }] } })))
            .await
            .unwrap();
        let t0 = Instant::now();
        lab.wait_withdrawn(ip("192.0.2.171"), Duration::from_secs(2)).await;
        eprintln!("withdrawn {:?} after the type change", t0.elapsed());
    });
}

#[test]
fn class_only_serves_only_the_named_class() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(
            bin(),
            &[
                ("lb_class_only", "true"),
                ("lb_class_name", "example.com/vipd"),
            ],
            None,
        )
        .await;
        lab.create(
            "plain",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.175" }),
            json!({}),
        )
        .await;
        lab.create(
            "named",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.176" }),
            json!({ "loadBalancerClass": "example.com/vipd" }),
        )
        .await;
        lab.wait_ingress("named", Duration::from_secs(20)).await;
        lab.wait_announced(ip("192.0.2.176"), Duration::from_secs(10))
            .await;
        assert!(Lab::ingress(&lab.get("plain").await).is_empty());
        assert!(lab.holders(ip("192.0.2.175")).await.is_empty());
    });
}

#[test]
fn servicelb_node_labels_choose_the_announcers() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let enable = "svccontroller.k3s.cattle.io/enablelb";
        let pool = "svccontroller.k3s.cattle.io/lbpool";
        nodes_with_labels(
            &lab.admin,
            &[
                BTreeMap::new(),
                BTreeMap::from([(enable, "true"), (pool, "blue")]),
                BTreeMap::from([(enable, "true"), (pool, "green")]),
            ],
        )
        .await;
        lab.create("any", json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.177" }), json!({})).await;
        let svc: Service = serde_json::from_value(json!({
            "metadata": { "name": "green", "labels": { pool: "green" }, "annotations": { "kube-vip.io/loadbalancerIPs": "192.0.2.178" } },
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
        }))
        .unwrap();
        lab.svcs().create(&PostParams::default(), &svc).await.unwrap();
        lab.wait_ingress("any", Duration::from_secs(20)).await;
        let a = lab.wait_announced(ip("192.0.2.177"), Duration::from_secs(10)).await;
        assert!(a == "n2" || a == "n3", "only enablelb nodes announce, got {a}");
        assert_eq!(lab.wait_announced(ip("192.0.2.178"), Duration::from_secs(10)).await, "n3");
        // The green node's vipd dies: no other green node, so nobody announces.
        lab.nodes[2].kill();
        lab.wait_withdrawn(ip("192.0.2.178"), Duration::from_secs(10)).await;
        let a = lab.wait_announced(ip("192.0.2.177"), Duration::from_secs(10)).await;
        assert_eq!(a, "n2");
        // As K3s reads it: the label on any node, even `false`, turns node
        // selection on, and only `true` nodes qualify: here none.
        nodes_with_labels(
            &lab.admin,
            &[BTreeMap::from([(enable, "false")]), BTreeMap::new(), BTreeMap::new()],
        )
        .await;
        lab.wait_withdrawn(ip("192.0.2.177"), Duration::from_secs(10)).await;
        // No label anywhere: every node again (the green pool label on the
        // Service no longer restricts: K3s ignores it without selection).
        nodes_with_labels(&lab.admin, &[BTreeMap::new(), BTreeMap::new(), BTreeMap::new()]).await;
        lab.wait_announced(ip("192.0.2.177"), Duration::from_secs(10)).await;
        let g = lab.wait_announced(ip("192.0.2.178"), Duration::from_secs(10)).await;
        assert!(g == "n1" || g == "n2", "green is anyone's now, got {g}");
    });
}

#[test]
fn bad_input_becomes_events_and_the_rest_keeps_working() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let ns = lab.ns.clone();
        lab.pools(json!({ format!("range-{ns}"): "192.0.2.180-192.0.2.181" })).await;
        lab.create("good", json!({}), json!({})).await;
        assert_eq!(lab.wait_ingress("good", Duration::from_secs(20)).await, vec![ip("192.0.2.180")]);
        lab.create("malformed", json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.999" }), json!({})).await;
        lab.create("outside", json!({ "kube-vip.io/loadbalancerIPs": "198.51.100.7" }), json!({})).await;
        lab.create("family", json!({ "kube-vip.io/loadbalancerIPs": "2001:db8::181" }), json!({})).await;
        lab.create("taken", json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.180" }), json!({})).await;
        lab.create("second", json!({}), json!({})).await;
        assert_eq!(lab.wait_ingress("second", Duration::from_secs(10)).await, vec![ip("192.0.2.181")]);
        lab.create("exhausted", json!({}), json!({})).await;
        for (name, reason) in [
            ("malformed", "InvalidAnnotation"),
            ("outside", "AddressNotInPool"),
            ("family", "AddressFamilyMismatch"),
            ("taken", "AddressInUse"),
            ("exhausted", "PoolExhausted"),
        ] {
            let note = lab.wait_event(name, reason, Duration::from_secs(10)).await;
            assert!(note.len() > 20, "{name}: {note}");
            assert!(Lab::ingress(&lab.get(name).await).is_empty(), "{name} must stay pending");
        }
        // A malformed pool ConfigMap: Event, and the last good pools stay.
        lab.pools(json!({ format!("range-{ns}"): "192.0.2.190-192.0.2.180" })).await;
        let api: Api<Event> = Api::namespaced(lab.admin.clone(), &ns);
        let t0 = Instant::now();
        loop {
            let evs = api.list(&Default::default()).await.unwrap().items;
            if evs.iter().any(|e| e.reason.as_deref() == Some("InvalidPoolConfig")) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no InvalidPoolConfig Event");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lab.create("after", json!({}), json!({})).await;
        lab.wait_passes_over(&lab.get("after").await, Duration::from_secs(20)).await;
        assert!(Lab::ingress(&lab.get("after").await).is_empty(), "old pool is full; no new pool was adopted");
        lab.wait_event("after", "PoolExhausted", Duration::from_secs(5)).await;
        // Everything good still works.
        lab.wait_announced(ip("192.0.2.180"), Duration::from_secs(10)).await;
        lab.wait_announced(ip("192.0.2.181"), Duration::from_secs(10)).await;
        // Fixing the pool and the annotation fixes the Services.
        lab.pools(json!({ format!("range-{ns}"): "192.0.2.180-192.0.2.185" })).await;
        assert!(!lab.wait_ingress("exhausted", Duration::from_secs(10)).await.is_empty());
        assert!(!lab.wait_ingress("after", Duration::from_secs(10)).await.is_empty());
        lab.svcs()
            .patch(
                "malformed",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { "kube-vip.io/loadbalancerIPs": "192.0.2.185" } } })),
            )
            .await
            .unwrap();
        assert_eq!(lab.wait_ingress("malformed", Duration::from_secs(10)).await, vec![ip("192.0.2.185")]);
        lab.wait_announced(ip("192.0.2.185"), Duration::from_secs(10)).await;
    });
}

/// Six Services with annotated addresses from `base`, each waited for
/// until it is announced; by announcing node.
async fn spread(lab: &mut Lab, base: u8) -> BTreeMap<String, Vec<IpAddr>> {
    let addrs: Vec<IpAddr> = (0..6)
        .map(|i| ip(&format!("192.0.2.{}", base + i)))
        .collect();
    for (i, a) in addrs.iter().enumerate() {
        lab.create(
            &format!("s{i}"),
            json!({ "kube-vip.io/loadbalancerIPs": a.to_string() }),
            json!({}),
        )
        .await;
    }
    let mut by_node: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for a in &addrs {
        let h = lab.wait_announced(*a, Duration::from_secs(20)).await;
        by_node.entry(h).or_default().push(*a);
    }
    by_node
}

/// The first node of `by_node` (addresses by holder): its index in the
/// lab, its name and its addresses.
fn first_holder(
    lab: &Lab,
    by_node: &BTreeMap<String, Vec<IpAddr>>,
) -> (usize, String, Vec<IpAddr>) {
    let (victim, moved) = by_node.iter().next().expect("a holder");
    let i = lab.nodes.iter().position(|n| n.name() == victim).unwrap();
    (i, victim.clone(), moved.clone())
}

/// Waits until every address of `moved` is held by one node other than
/// `victim` (and, with `answered`, answers from it), never by two, within
/// `limit` of now, looking every `every`.
async fn wait_moved_off(
    lab: &mut Lab,
    victim: &str,
    moved: &[IpAddr],
    answered: bool,
    limit: Duration,
    every: Duration,
) {
    let t0 = Instant::now();
    for a in moved {
        loop {
            let h = lab.holders(*a).await;
            assert!(h.len() <= 1, "{a} held by {h:?}");
            if h.len() == 1
                && h[0] != victim
                && (!answered || lab.answer(*a, 80).as_deref() == Some(h[0].as_str()))
            {
                break;
            }
            assert!(
                t0.elapsed() < limit,
                "{a} did not move off {victim}\n{}",
                lab.logs()
            );
            tokio::time::sleep(every).await;
        }
    }
}

/// Addresses that need a node of their own, spread over the nodes; one
/// announcer dies and its addresses move to the others, never on two nodes.
/// Returns the lab, the victim and the addresses that moved.
async fn spread_then_kill_one(settings: &[(&str, &str)], base: u8) -> (Lab, String, Vec<IpAddr>) {
    let mut lab = lab(bin(), settings, None).await;
    let by_node = spread(&mut lab, base).await;
    assert!(by_node.len() >= 2, "addresses not spread: {by_node:?}");
    // One announcer dies: its addresses move to the others.
    let (i, victim, moved) = first_holder(&lab, &by_node);
    lab.nodes[i].kill();
    let t0 = Instant::now();
    wait_moved_off(
        &mut lab,
        &victim,
        &moved,
        true,
        Duration::from_secs(12),
        Duration::from_millis(50),
    )
    .await;
    eprintln!(
        "{} addresses moved off {victim} within {:?}",
        moved.len(),
        t0.elapsed()
    );
    (lab, victim, moved)
}

#[test]
fn per_address_election_spreads_and_fails_over() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        spread_then_kill_one(&[("svc_election", "true"), ("svc_placement", "false")], 190).await;
    });
}

/// `svc_placement`: the same spread and failover with one liveness Lease
/// per node and none per address; the dead node, back, gets exactly its
/// own addresses again, each on one node at every sample; a graceful stop
/// hands its addresses over at once (its liveness Lease released).
#[test]
fn placement_spreads_fails_over_and_hands_back_with_one_lease_per_node() {
    use k8s_openapi::api::coordination::v1::Lease;
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (mut lab, victim, moved) =
            spread_then_kill_one(&[("svc_election", "true"), ("svc_placement", "true")], 200).await;
        let leases: Api<Lease> = Api::namespaced(lab.admin.clone(), &lab.lease_ns);
        let names: Vec<String> = leases
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|l| l.metadata.name)
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("vipd-addr-")),
            "per-address Leases with placement: {names:?}"
        );
        let liveness: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("vipd-node-"))
            .collect();
        assert_eq!(liveness.len(), 3, "{names:?}");

        // The victim comes back: its addresses return to it (the same
        // hash), never on two nodes in any sample.
        let hosts: Vec<&vipd_testkit::lab::Host> = lab.nodes.iter().map(|n| &n.host).collect();
        let samplers: Vec<vipd_testkit::probe::HolderSampler> = moved
            .iter()
            .map(|a| {
                vipd_testkit::probe::HolderSampler::start(&hosts, *a, Duration::from_millis(5))
            })
            .collect();
        let i = lab.nodes.iter().position(|n| n.name() == victim).unwrap();
        lab.nodes[i].start().unwrap();
        for a in &moved {
            let t0 = Instant::now();
            while lab.answer(*a, 80).as_deref() != Some(victim.as_str()) {
                assert!(
                    t0.elapsed() < Duration::from_secs(15),
                    "{a} did not return to {victim}\n{}",
                    lab.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (a, s) in moved.iter().zip(samplers) {
            let samples = s.finish().await;
            let most = samples.iter().map(|s| s.holders.len()).max().unwrap_or(0);
            assert!(
                most <= 1,
                "{a} on two nodes during the handback: {samples:?}"
            );
        }

        // A graceful stop: its addresses answer from another node within
        // a second (no wait for a Lease to expire).
        let code = lab.nodes[i].terminate(Duration::from_secs(10)).unwrap();
        assert_eq!(code, 0);
        let t0 = Instant::now();
        for a in &moved {
            loop {
                let h = lab.holders(*a).await;
                if h.len() == 1 && h[0] != victim {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_millis(1500),
                    "{a} not handed over after a graceful stop: {h:?}\n{}",
                    lab.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        eprintln!("handed over {:?} after SIGTERM", t0.elapsed());
    });
}

/// With placement, the survivors follow each vipd's `/v1/alive` stream: a
/// killed vipd's addresses move as soon as its stream closes, before its
/// liveness Lease has expired (without the links they move only after it),
/// and never on two nodes.
#[test]
fn a_killed_vipds_placed_addresses_move_before_its_liveness_lease_expires() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(
            bin(),
            &[("svc_election", "true"), ("svc_placement", "true")],
            None,
        )
        .await;
        let by_node = spread(&mut lab, 210).await;
        let (i, victim, moved) = first_holder(&lab, &by_node);
        let survivors: Vec<usize> = (0..lab.nodes.len()).filter(|j| *j != i).collect();
        // Every survivor follows the victim's stream.
        wait_linked(&lab, &victim, &survivors).await;
        // When its liveness Lease would expire, by its last renewal.
        let (_, expires) = lease_expiry(&lab, &format!("vipd-node-{victim}")).await;

        kill_and_wait_moved_before(&mut lab, i, &moved, expires, "victim's liveness Lease").await;
        let shown = link_of(lab.nodes[survivors[0]].status_doc().await, &victim);
        assert!(shown.starts_with("down"), "{shown:?}");
    });
}

/// Kills node `i`'s vipd and waits until `moved` are off it (never on two
/// nodes), which must happen before `expires`, when `lease` would expire.
async fn kill_and_wait_moved_before(
    lab: &mut Lab,
    i: usize,
    moved: &[IpAddr],
    expires: std::time::SystemTime,
    lease: &str,
) {
    let victim = lab.nodes[i].name().to_string();
    lab.nodes[i].kill();
    let t0 = Instant::now();
    wait_moved_off(
        lab,
        &victim,
        moved,
        false,
        Duration::from_secs(15),
        Duration::from_millis(10),
    )
    .await;
    let moved_at = std::time::SystemTime::now();
    eprintln!(
        "{} addresses moved off {victim} {:?} after SIGKILL",
        moved.len(),
        t0.elapsed()
    );
    assert!(
        moved_at < expires,
        "the addresses moved only {:?} after the {lease} expired",
        moved_at.duration_since(expires).unwrap_or_default()
    );
}

/// A Lease's holder and when it expires by its last renewal.
async fn lease_expiry(lab: &Lab, name: &str) -> (String, std::time::SystemTime) {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(lab.admin.clone(), &lab.lease_ns);
    let spec = leases.get(name).await.unwrap().spec.unwrap();
    let renewed = std::time::SystemTime::from(spec.renew_time.unwrap().0);
    let expires = renewed + Duration::from_secs(spec.lease_duration_seconds.unwrap() as u64);
    (spec.holder_identity.unwrap_or_default(), expires)
}

/// Waits until every survivor's status shows its link to `peer` up.
async fn wait_linked(lab: &Lab, peer: &str, survivors: &[usize]) {
    let linked = vipd_testkit::vipd::wait_until(Duration::from_secs(20), || async {
        for j in survivors {
            if link_of(lab.nodes[*j].status_doc().await, peer) != "up" {
                return false;
            }
        }
        true
    })
    .await;
    assert!(linked, "no survivor links to {peer}\n{}", lab.logs());
}

fn link_of(d: Option<serde_json::Value>, peer: &str) -> String {
    d.and_then(|d| d["services"]["peer_links"][peer].as_str().map(String::from))
        .unwrap_or_default()
}

/// Leader mode (no `svc_election`): the Services leader holds every
/// address. When it is killed, its heir (one survivor, the same for all)
/// holds them as soon as the leader's link closes, before its Lease has
/// expired (without the heir: only after), never on two nodes; the others
/// leave the Lease to the heir, so the addresses do not move again.
#[test]
fn a_killed_services_leaders_addresses_move_to_its_heir_before_its_lease_expires() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let by_node = spread(&mut lab, 220).await;
        assert_eq!(by_node.len(), 1, "leader mode, one holder: {by_node:?}");
        let (i, victim, moved) = first_holder(&lab, &by_node);
        let survivors: Vec<usize> = (0..lab.nodes.len()).filter(|j| *j != i).collect();
        wait_linked(&lab, &victim, &survivors).await;
        let (holder, expires) = lease_expiry(&lab, "plndr-svcs-lock").await;
        assert_eq!(holder, victim);

        kill_and_wait_moved_before(&mut lab, i, &moved, expires, "leader's Lease").await;
        let heir = lab.holders(moved[0]).await.remove(0);
        // The heir takes the Lease once it is free; the addresses stay.
        let led = vipd_testkit::vipd::wait_until(Duration::from_secs(15), || async {
            lease_expiry(&lab, "plndr-svcs-lock").await.0 == heir
        })
        .await;
        assert!(
            led,
            "{heir} did not become the Services leader\n{}",
            lab.logs()
        );
        for a in &moved {
            assert_eq!(lab.holders(*a).await, vec![heir.clone()], "{a}");
            assert_eq!(lab.answer(*a, 80).as_deref(), Some(heir.as_str()), "{a}");
        }
    });
}

/// Service addresses live long in the kernel (`svc_addr_lifetime`), so a
/// Services leader whose vipd dies together with its guardian (its
/// container killed whole) leaves them answering from its node until they
/// expire, longer than its Lease. The next leader takes the Lease before
/// that, and must still never share an address with the dead node: it
/// adds each only once nobody answers for it (without that check it adds
/// them when the Lease expires, seconds before the dead copies go).
#[test]
fn a_services_leader_killed_with_its_guardian_never_shares_its_addresses() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        // No placement: no heir, the Lease alone (4 s) moves the leader;
        // the dead copies outlive it (8 s lifetime, refreshed every 2.7 s).
        let lifetime = Duration::from_secs(8);
        let mut lab = lab(
            bin(),
            &[("svc_placement", "false"), ("svc_addr_lifetime", "8")],
            None,
        )
        .await;
        let by_node = spread(&mut lab, 230).await;
        assert_eq!(by_node.len(), 1, "leader mode, one holder: {by_node:?}");
        let (i, victim, moved) = first_holder(&lab, &by_node);
        let hosts: Vec<&vipd_testkit::lab::Host> = lab.nodes.iter().map(|n| &n.host).collect();
        let samplers: Vec<vipd_testkit::probe::HolderSampler> = moved
            .iter()
            .map(|a| {
                vipd_testkit::probe::HolderSampler::start(&hosts, *a, Duration::from_millis(20))
            })
            .collect();
        // The container killed whole: vipd and its guardian at once.
        let victim_ns = lab.nodes[i].host.ns.name().to_string();
        let killed = Instant::now();
        vipd_testkit::netns::kill_all_in(&victim_ns);
        lab.nodes[i].kill();
        let t0 = Instant::now();
        for a in &moved {
            loop {
                let h = lab.holders(*a).await;
                if h.len() == 1 && h[0] != victim {
                    break;
                }
                assert!(
                    t0.elapsed() < lifetime * 3,
                    "{a} did not move off {victim}: {h:?}\n{}",
                    lab.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        eprintln!("moved {:?} after the kill", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (a, s) in moved.iter().zip(samplers) {
            let samples = s.finish().await;
            let doubled: Vec<_> = samples.iter().filter(|s| s.holders.len() > 1).collect();
            assert!(
                doubled.is_empty(),
                "{a} on two nodes in {} samples, from {:?} after the kill\n{}",
                doubled.len(),
                doubled[0].at.saturating_duration_since(killed),
                lab.logs()
            );
            // The test tests something: the dead node kept the address
            // past the Lease's expiry (4 s after its last renewal).
            let kept = samples
                .iter()
                .filter(|s| s.holders.contains(&victim))
                .map(|s| s.at.saturating_duration_since(killed))
                .max()
                .unwrap_or_default();
            assert!(
                kept >= Duration::from_secs(5),
                "{a} left {victim} {kept:?} after the kill: its lifetime did not keep it"
            );
        }
    });
}

#[test]
fn dual_stack_service_gets_and_announces_both_families() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let ns = lab.ns.clone();
        lab.pools(json!({ format!("cidr-{ns}"): "192.0.2.200/31,2001:db8::200/127" }))
            .await;
        lab.create(
            "ds",
            json!({}),
            json!({ "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"] }),
        )
        .await;
        let ips = lab.wait_ingress("ds", Duration::from_secs(20)).await;
        assert_eq!(
            ips,
            vec![ip("2001:db8::200"), ip("192.0.2.200")],
            "the Service's family order"
        );
        let a = lab
            .wait_announced(ip("192.0.2.200"), Duration::from_secs(10))
            .await;
        let b = lab
            .wait_announced(ip("2001:db8::200"), Duration::from_secs(10))
            .await;
        assert_eq!(a, b, "one announcer for both families");
        // An IPv4-only Service from the same pool gets the other IPv4 address only.
        lab.create("v4", json!({}), json!({})).await;
        assert_eq!(
            lab.wait_ingress("v4", Duration::from_secs(10)).await,
            vec![ip("192.0.2.201")]
        );
    });
}

/// The condition `kind` of a Service: (status, reason, message).
fn condition(s: &Service, kind: &str) -> Option<(String, String, String)> {
    s.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// What users coming from kube-vip, MetalLB and K3s read and write, on the
/// real API server: `status.conditions` that say why (as the last Event
/// did), MetalLB's annotations, `spec.loadBalancerIP` edited later, the
/// pool recorded, and kube-vip annotations vipd does not implement named.
#[test]
fn conditions_migrations_and_unsupported_annotations() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let ns = lab.ns.clone();
        lab.pools(json!({ format!("range-{ns}"): "192.0.2.190-192.0.2.191" })).await;

        // A pool address: ingress, both conditions True, the pool recorded.
        lab.create("pooled", json!({}), json!({})).await;
        let got = lab.wait_ingress("pooled", Duration::from_secs(20)).await;
        let addr = got[0];
        lab.wait_announced(addr, Duration::from_secs(10)).await;
        let t0 = Instant::now();
        let s = loop {
            let s = lab.get("pooled").await;
            if condition(&s, "vipd.dev/Announced").is_some_and(|c| c.0 == "True") {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no Announced condition: {:?}", s.status);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (st, reason, message) = condition(&s, "vipd.dev/AddressAssigned").expect("AddressAssigned");
        assert_eq!((st.as_str(), reason.as_str()), ("True", "AddressAssigned"));
        assert_eq!(message, format!("assigned {addr} (from pool range-{ns})"));
        assert_eq!(Lab::annotation(&s, "vipd.dev/pool"), Some(format!("range-{ns}")));
        let (_, reason, message) = condition(&s, "vipd.dev/Announced").unwrap();
        assert!(reason == "AddressAnnounced" || reason == "AddressMoved", "{reason}");
        assert!(message.starts_with(&addr.to_string()), "{message}");

        // Pending: the condition says why, with the Event's reason and message.
        lab.create("outside", json!({ "kube-vip.io/loadbalancerIPs": "198.51.100.7" }), json!({})).await;
        let note = lab.wait_event("outside", "AddressNotInPool", Duration::from_secs(10)).await;
        let t0 = Instant::now();
        loop {
            let s = lab.get("outside").await;
            if let Some(c) = condition(&s, "vipd.dev/AddressAssigned") {
                assert_eq!(c, ("False".into(), "AddressNotInPool".into(), note.clone()));
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no condition on a pending Service");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // MetalLB's annotation is honoured; kube-vip's wins when both are set.
        lab.create("metallb", json!({ "metallb.io/loadBalancerIPs": "192.0.2.191" }), json!({})).await;
        assert_eq!(lab.wait_ingress("metallb", Duration::from_secs(10)).await, vec![ip("192.0.2.191")]);
        let note = lab.wait_event("metallb", "AddressAssigned", Duration::from_secs(10)).await;
        assert!(note.contains("from metallb.io/loadBalancerIPs"), "{note}");
        lab.svcs().delete("metallb", &DeleteParams::default()).await.unwrap();
        lab.create(
            "both",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.191", "metallb.universe.tf/loadBalancerIPs": "192.0.2.199" }),
            json!({}),
        )
        .await;
        assert_eq!(lab.wait_ingress("both", Duration::from_secs(10)).await, vec![ip("192.0.2.191")]);
        let note = lab.wait_event("both", "AddressAssigned", Duration::from_secs(10)).await;
        assert!(note.contains("metallb.universe.tf/loadBalancerIPs ignored"), "{note}");

        // spec.loadBalancerIP edited later wins over the status (kube-vip).
        lab.svcs().delete("both", &DeleteParams::default()).await.unwrap();
        lab.create("edited", json!({}), json!({ "loadBalancerIP": "192.0.2.191" })).await;
        assert_eq!(lab.wait_ingress("edited", Duration::from_secs(10)).await, vec![ip("192.0.2.191")]);
        lab.svcs().delete("pooled", &DeleteParams::default()).await.unwrap();
        lab.svcs()
            .patch(
                "edited",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "loadBalancerIP": addr.to_string() } })),
            )
            .await
            .unwrap();
        let t0 = Instant::now();
        loop {
            if Lab::ingress(&lab.get("edited").await) == vec![addr] {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the edited spec.loadBalancerIP did not win");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // kube-vip annotations vipd does not implement: a Warning Event, and
        // the Service is still served.
        lab.create(
            "egress",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.191", "kube-vip.io/egress": "true" }),
            json!({}),
        )
        .await;
        let note = lab.wait_event("egress", "UnsupportedAnnotation", Duration::from_secs(10)).await;
        assert!(note.contains("kube-vip.io/egress"), "{note}");
        assert_eq!(lab.wait_ingress("egress", Duration::from_secs(10)).await, vec![ip("192.0.2.191")]);

        // kube-vip's Services metrics on the node that announces it.
        let who = lab.wait_announced(ip("192.0.2.191"), Duration::from_secs(10)).await;
        let node = lab.nodes.iter().find(|n| n.name() == who).unwrap();
        let url = format!("http://{}:2112/metrics", node.host.v4);
        let t0 = Instant::now();
        loop {
            let (_, text) = vipd::vipctl::http::get(&url, Duration::from_secs(2)).await.unwrap();
            let active = format!("kube_vip_active_services{{namespace=\"{ns}\"}} ");
            let ok = text.contains(&active)
                && text.contains("kube_vip_manager_all_services_events_total{type=\"ADDED\"} ")
                && text.lines().any(|l| {
                    l.starts_with("kube_vip_service_reconcile_duration_seconds_bucket{")
                        && l.contains(&format!("namespace=\"{ns}\""))
                        && l.contains("le=")
                });
            if ok {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "kube-vip's Services metrics missing:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
