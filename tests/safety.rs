//! vipd on a shared cluster: no Service, tenant or stale status can make it
//! take an address that is not its own; an address stays with the Service
//! that holds it; a deleted Lease comes back without the VIP moving. Real
//! API server, real network namespaces, every node's addresses sampled.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use vipd::vipctl::report::Report;
use vipd_testkit::apiserver::env;
use vipd_testkit::lab::Host;
use vipd_testkit::netns::ip as ip_cmd;
use vipd_testkit::probe::{AddressSampler, Prober};
use vipd_testkit::services::{lab, set_node_addresses, write_foreign_status, Lab};
use vipd_testkit::vipd::{vipctl_status, wait_until, VipctlStatus};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i as u8))
}

/// Nodes n1..n3 as the kubelet registers them (InternalIP = the host's
/// address, ExternalIP in 203.0.113.0/24), and a default route via
/// 192.0.2.1 on each host.
async fn register_nodes(lab: &Lab) {
    for (i, n) in lab.nodes.iter().enumerate() {
        let ext = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 11 + i as u8));
        set_node_addresses(&lab.admin, n.name(), node_ip(i), Some(ext)).await;
        ip_cmd(&[
            "-n",
            n.host.ns.name(),
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
            "dev",
            "eth0",
        ])
        .unwrap();
    }
}

fn hosts(lab: &Lab) -> Vec<&Host> {
    lab.nodes.iter().map(|n| &n.host).collect()
}

fn vipctl(ns: &str) -> (Option<i32>, Report) {
    let env = env();
    let out: VipctlStatus<Report> = vipctl_status(
        &env.client.ns,
        Path::new(env!("CARGO_BIN_EXE_vipctl")),
        env.admin_kubeconfig(),
        &["-n", ns],
    );
    let r = out
        .report
        .unwrap_or_else(|| panic!("no report from vipctl: {}", out.output));
    (out.code, r)
}

async fn wait_no_ingress(lab: &Lab, name: &str, timeout: Duration) {
    let ok = wait_until(timeout, || async {
        Lab::ingress(&lab.get(name).await).is_empty()
    })
    .await;
    assert!(
        ok,
        "{name} still has an ingress: {:?}",
        Lab::ingress(&lab.get(name).await)
    );
}

/// Every kind of address the guard protects, asked for in every way a
/// Service can ask: refused with a Warning Event naming the reason, pending
/// in `vipctl status`, skipped by pools, and never added to any interface.
#[test]
fn services_never_get_addresses_that_are_not_theirs() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let extra = [
            ("cp_enable", "true"),
            ("address", "192.0.2.100"),
            ("vip_leaderelection", "true"),
        ];
        let mut lab = lab(bin(), &extra, None).await;
        register_nodes(&lab).await;
        let sampler = AddressSampler::start(&hosts(&lab), Duration::from_millis(20));
        let sampling_since = Instant::now();

        let cases: [(&str, serde_json::Value, serde_json::Value, &str); 7] = [
            (
                "node-ip",
                json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.12" }),
                json!({}),
                "192.0.2.12 is the InternalIP of node n2",
            ),
            (
                "external-ip",
                json!({ "kube-vip.io/loadbalancerIPs": "203.0.113.13" }),
                json!({}),
                "203.0.113.13 is the ExternalIP of node n3",
            ),
            (
                "vip",
                json!({}),
                json!({ "loadBalancerIP": "192.0.2.100" }),
                "192.0.2.100 is the control-plane VIP",
            ),
            (
                "gateway",
                json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.1" }),
                json!({}),
                "192.0.2.1 is the default gateway of eth0",
            ),
            (
                "broadcast",
                json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.255" }),
                json!({}),
                "192.0.2.255 is the broadcast address of 192.0.2.0/24 on eth0",
            ),
            (
                "network",
                json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.0" }),
                json!({}),
                "192.0.2.0 is the network address of 192.0.2.0/24 on eth0",
            ),
            (
                "apiserver",
                json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.2" }),
                json!({}),
                "192.0.2.2 is the API server address vipd connects to",
            ),
        ];
        for (name, ann, spec, _) in &cases {
            lab.create(name, ann.clone(), spec.clone()).await;
        }
        // A fine Service, whose status another writer then overwrites with a
        // node's address: vipd puts its own address back, and no node ever
        // holds the node's address in between.
        lab.create(
            "fine",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.150" }),
            json!({}),
        )
        .await;
        assert_eq!(
            lab.wait_ingress("fine", Duration::from_secs(20)).await,
            vec![ip("192.0.2.150")]
        );
        lab.wait_announced(ip("192.0.2.150"), Duration::from_secs(10))
            .await;
        for (name, _, _, reason) in &cases {
            let note = lab
                .wait_event(name, "AddressForbidden", Duration::from_secs(20))
                .await;
            assert!(note.starts_with(reason), "{name}: {note}");
            wait_no_ingress(&lab, name, Duration::from_secs(5)).await;
        }
        write_foreign_status(&lab.admin, &lab.ns, "fine", &[ip("192.0.2.13")]).await;
        let back = wait_until(Duration::from_secs(10), || async {
            Lab::ingress(&lab.get("fine").await) == vec![ip("192.0.2.150")]
        })
        .await;
        assert!(back, "vipd did not restore fine's ingress\n{}", lab.logs());

        // vipctl: pending, with the reason.
        let (code, report) = vipctl(&lab.ns);
        assert_eq!(code, Some(1), "{:?}", report.problems);
        for (name, _, _, reason) in &cases {
            let row = report
                .services
                .iter()
                .find(|s| s.name == *name)
                .unwrap_or_else(|| panic!("{name} not in {:?}", report.services));
            assert_eq!(row.state, "Pending", "{row:?}");
            let p = report
                .problems
                .iter()
                .find(|p| p.contains(&format!("/{name} is pending")))
                .unwrap_or_else(|| panic!("{name}: {:?}", report.problems));
            assert!(p.contains("AddressForbidden") && p.contains(reason), "{p}");
        }
        for (name, ..) in &cases {
            lab.svcs()
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        lab.svcs()
            .delete("fine", &DeleteParams::default())
            .await
            .unwrap();

        // A pool over node addresses hands out only what is free.
        lab.pools(json!({ "range-global": "192.0.2.10-192.0.2.14" }))
            .await;
        for name in ["p1", "p2", "p3"] {
            lab.create(name, json!({}), json!({})).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut got = vec![
            lab.wait_ingress("p1", Duration::from_secs(20)).await[0],
            lab.wait_ingress("p2", Duration::from_secs(20)).await[0],
        ];
        got.sort();
        assert_eq!(got, vec![ip("192.0.2.10"), ip("192.0.2.14")]);
        lab.wait_event("p3", "PoolExhausted", Duration::from_secs(10))
            .await;
        for a in &got {
            lab.wait_announced(*a, Duration::from_secs(10)).await;
        }

        let seen = sampler.finish().await;
        // Sampled throughout (every 20 ms; at least half of the ticks).
        let ticks = sampling_since.elapsed().as_millis() as usize / 20;
        assert!(
            seen.samples >= 10 && seen.samples * 2 >= ticks,
            "only {} samples in {ticks} ticks",
            seen.samples
        );
        for (i, n) in lab.nodes.iter().enumerate() {
            assert_eq!(
                seen.holders(node_ip(i)),
                [n.name().to_string()].into(),
                "{}",
                node_ip(i)
            );
        }
        for a in [
            "192.0.2.12",
            "192.0.2.13",
            "203.0.113.13",
            "192.0.2.1",
            "192.0.2.255",
            "192.0.2.0",
            "192.0.2.2",
            "192.0.2.11",
        ] {
            assert!(
                seen.vipd_added(ip(a)).is_empty(),
                "vipd added {a} on {:?}",
                seen.vipd_added(ip(a))
            );
        }
        // The control-plane VIP is held, by its election only.
        assert_eq!(seen.vipd_added(ip("192.0.2.100")).len(), 1);
    });
}

/// K3s after `--disable servicelb`: Traefik's status still holds the three
/// nodes' addresses. vipd replaces them from the pool and never takes a
/// node's address.
#[test]
fn servicelb_leftover_status_is_replaced_from_the_pool() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let ns = env.namespace("mig").await;
        let admin = env.admin().await;
        let svcs: Api<Service> = Api::namespaced(admin.clone(), &ns);
        let traefik: Service = serde_json::from_value(json!({
            "metadata": { "name": "traefik" },
            "spec": { "type": "LoadBalancer", "ports": [
                { "name": "web", "port": 80, "protocol": "TCP" },
                { "name": "websecure", "port": 443, "protocol": "TCP" } ] }
        }))
        .unwrap();
        svcs.create(&Default::default(), &traefik).await.unwrap();
        let node_ips: Vec<IpAddr> = (0..3).map(node_ip).collect();
        write_foreign_status(&admin, &ns, "traefik", &node_ips).await;
        // Nodes as K3s registered them, before vipd starts.
        vipd_testkit::services::nodes_with_labels(
            &admin,
            &[Default::default(), Default::default(), Default::default()],
        )
        .await;
        for (i, ip) in node_ips.iter().enumerate() {
            set_node_addresses(&admin, &format!("n{}", i + 1), *ip, None).await;
        }
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": "kubevip" }, "data": { "range-global": "192.0.2.160-192.0.2.169" }
        }))
        .unwrap();
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), &ns)
            .create(&Default::default(), &cm)
            .await
            .unwrap();

        let mut lab = lab(bin(), &[], Some(&ns)).await;
        let sampler = AddressSampler::start(&hosts(&lab), Duration::from_millis(20));
        let got = wait_until(Duration::from_secs(20), || async {
            Lab::ingress(&lab.get("traefik").await) == vec![ip("192.0.2.160")]
        })
        .await;
        assert!(
            got,
            "traefik: {:?}\n{}",
            Lab::ingress(&lab.get("traefik").await),
            lab.logs()
        );
        lab.wait_announced(ip("192.0.2.160"), Duration::from_secs(10))
            .await;
        let note = lab
            .wait_event("traefik", "StaleStatusReplaced", Duration::from_secs(5))
            .await;
        assert!(
            note.contains("192.0.2.11,192.0.2.12,192.0.2.13") && note.contains("192.0.2.160"),
            "{note}"
        );
        let s = lab.get("traefik").await;
        assert_eq!(
            Lab::annotation(&s, "kube-vip.io/loadbalancerIPs").as_deref(),
            Some("192.0.2.160"),
            "the allocation is kept in the annotation"
        );
        // A leader restart changes nothing.
        for n in lab.nodes.iter_mut() {
            n.kill();
            n.start().unwrap();
        }
        lab.wait_announced(ip("192.0.2.160"), Duration::from_secs(20))
            .await;
        assert_eq!(
            Lab::ingress(&lab.get("traefik").await),
            vec![ip("192.0.2.160")]
        );

        let seen = sampler.finish().await;
        for (i, a) in node_ips.iter().enumerate() {
            assert_eq!(
                seen.holders(*a),
                [format!("n{}", i + 1)].into(),
                "{a} was held by another node"
            );
            assert!(seen.vipd_added(*a).is_empty(), "vipd added {a}");
        }
        svcs.delete("traefik", &DeleteParams::default())
            .await
            .unwrap();
    });
}

/// An address in a Service's status stays with it: a Service asking for it
/// later, older or not, gets AddressInUse, across a Services leader change.
#[test]
fn no_service_steals_an_address_another_one_holds() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let x = ip("192.0.2.170");
        // The older Service first, asking for something else.
        lab.create("older", json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.171" }), json!({})).await;
        tokio::time::sleep(Duration::from_millis(1100)).await; // creation times count in seconds
        lab.create("holder", json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.170" }), json!({})).await;
        assert_eq!(lab.wait_ingress("holder", Duration::from_secs(20)).await, vec![x]);
        lab.wait_announced(x, Duration::from_secs(10)).await;

        // Watch the holder's status from now on: it must never lose x.
        let svcs = lab.svcs();
        let watcher = {
            let svcs = svcs.clone();
            tokio::spawn(async move {
                let mut lost = Vec::new();
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(60) {
                    if let Ok(s) = svcs.get("holder").await {
                        let i = vipd_testkit::ingress_ips(&s);
                        if i != vec![ip("192.0.2.170")] {
                            lost.push(i);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                lost
            })
        };
        let prober = Prober::start(&env.client, std::net::SocketAddr::new(x, 80), Duration::from_millis(20));

        // The older Service re-annotated for x; a new one asking for x.
        svcs.patch("older", &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "annotations": { "kube-vip.io/loadbalancerIPs": "192.0.2.170" } } }))).await.unwrap();
        lab.create("newer", json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.170" }), json!({})).await;
        for name in ["older", "newer"] {
            let note = lab.wait_event(name, "AddressInUse", Duration::from_secs(10)).await;
            assert!(note.contains("holder"), "{note}");
            wait_no_ingress(&lab, name, Duration::from_secs(5)).await;
        }
        // The Services leader dies and every vipd restarts, re-reading everything.
        let lease: Api<Lease> = Api::namespaced(lab.admin.clone(), &lab.lease_ns);
        let leader = lease.get("plndr-svcs-lock").await.unwrap().spec.unwrap().holder_identity.unwrap();
        let i = lab.nodes.iter().position(|n| n.name() == leader).unwrap();
        lab.nodes[i].kill();
        let moved = wait_until(Duration::from_secs(15), || async {
            lease.get("plndr-svcs-lock").await.ok().and_then(|l| l.spec?.holder_identity).is_some_and(|h| h != leader)
        })
        .await;
        assert!(moved, "no new Services leader\n{}", lab.logs());
        lab.nodes[i].start().unwrap();
        lab.wait_announced(x, Duration::from_secs(20)).await;
        // A user edits the older Service: still in use.
        let touched = svcs.patch("older", &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "labels": { "touched": "yes" } } }))).await.unwrap();
        lab.wait_passes_over(&touched, Duration::from_secs(20)).await;
        for name in ["older", "newer"] {
            assert!(Lab::ingress(&lab.get(name).await).is_empty(), "{name} took the address");
        }
        watcher.abort();
        let samples = prober.finish();
        // The holder gives it up: the oldest waiting Service gets it.
        svcs.delete("holder", &DeleteParams::default()).await.unwrap();
        let older_got = wait_until(Duration::from_secs(10), || async {
            Lab::ingress(&lab.get("older").await) == vec![x]
        })
        .await;
        assert!(older_got, "older did not get the freed address\n{}", lab.logs());
        assert!(Lab::ingress(&lab.get("newer").await).is_empty());
        assert!(samples.longest_outage() < Duration::from_secs(6), "outage {:?}", samples.longest_outage());
        for name in ["older", "newer"] {
            svcs.delete(name, &DeleteParams::default()).await.unwrap();
        }
    });
}

/// A Lease deleted while vipd runs (by hand, an etcd restore): its holder
/// creates it again at once and the VIP never moves.
/// A Lease-elected control-plane VIP on `n` nodes, settled: the cluster,
/// its holder's index and name, and the Leases of its namespace.
async fn settled_lease_cluster(
    n: usize,
) -> (
    vipd_testkit::failover::VipCluster,
    usize,
    String,
    Api<Lease>,
) {
    let env = env();
    let (mut c, lease_ns) =
        vipd_testkit::failover::lease_cluster(env, n, &[ip("192.0.2.100")], bin(), &[])
            .await
            .unwrap();
    let holder = c.wait_stable(Duration::from_secs(30)).await.unwrap();
    let name = c.nodes[holder].name().to_string();
    let leases: Api<Lease> = Api::namespaced(env.admin().await, &lease_ns);
    (c, holder, name, leases)
}

/// Whether the control-plane Lease is back within `within`: a new object
/// (not `before`), held, by `by` when given.
async fn lease_back(
    leases: &Api<Lease>,
    before: &Option<String>,
    by: Option<&str>,
    within: Duration,
) -> bool {
    wait_until(within, || async {
        leases
            .get_opt("plndr-cp-lock")
            .await
            .ok()
            .flatten()
            .is_some_and(|l| {
                let holder = l.spec.and_then(|s| s.holder_identity);
                l.metadata.uid != *before
                    && holder.is_some()
                    && by.is_none_or(|b| holder.as_deref() == Some(b))
            })
    })
    .await
}

/// The Lease deleted while its holder's vipd is frozen for longer than a
/// retry period: on waking, its renewal may run before the watch tells of
/// the deletion, and a PUT of a deleted Lease fails its UID precondition
/// (409, not 404). Read as "lost to nobody", that withdrew the VIP and took
/// it again a moment later; it is "deleted under us": the Lease comes back
/// and the VIP never leaves. The renewal wins that race about every other
/// round: eight rounds.
#[test]
fn a_lease_deleted_while_its_holder_is_frozen_comes_back_and_the_vip_stays() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (c, holder, name, leases) = settled_lease_cluster(1).await;
        let hosts: Vec<&Host> = c.nodes.iter().map(|n| &n.host).collect();
        let sampler =
            vipd_testkit::probe::HolderSampler::start(&hosts, c.vip, Duration::from_millis(10));
        for round in 0..8 {
            let before = leases.get("plndr-cp-lock").await.unwrap().metadata.uid;
            c.nodes[holder].signal(nix::sys::signal::Signal::SIGSTOP);
            leases
                .delete("plndr-cp-lock", &DeleteParams::default())
                .await
                .unwrap();
            // Longer than the retry period (500 ms): the renewal is due on waking.
            tokio::time::sleep(Duration::from_millis(700)).await;
            c.nodes[holder].signal(nix::sys::signal::Signal::SIGCONT);
            let back = lease_back(&leases, &before, Some(&name), Duration::from_secs(3)).await;
            assert!(
                back,
                "round {round}: the Lease did not come back held by {name}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let held = sampler.finish().await;
        let gaps = held
            .iter()
            .filter(|s| s.holders != vec![name.clone()])
            .count();
        let log = c.nodes[holder].log_tail(60);
        assert!(
            gaps == 0 && !log.contains("lost the Lease"),
            "the VIP left {name} in {gaps} samples\n{log}"
        );
    });
}

#[test]
fn a_deleted_lease_comes_back_and_the_vip_stays() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (c, _, name, leases) = settled_lease_cluster(3).await;
        let prober = Prober::start(&env.client, c.target(), Duration::from_millis(10));
        let hosts: Vec<&Host> = c.nodes.iter().map(|n| &n.host).collect();
        let sampler =
            vipd_testkit::probe::HolderSampler::start(&hosts, c.vip, Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(300)).await;
        for round in 0..3 {
            let before = leases.get("plndr-cp-lock").await.unwrap().metadata.uid;
            leases
                .delete("plndr-cp-lock", &DeleteParams::default())
                .await
                .unwrap();
            let t0 = Instant::now();
            let back = lease_back(&leases, &before, None, Duration::from_millis(1500)).await;
            assert!(
                back,
                "round {round}: no holder {:?} after the deletion",
                t0.elapsed()
            );
            let l = leases.get("plndr-cp-lock").await.unwrap();
            assert_eq!(
                l.spec.unwrap().holder_identity.as_deref(),
                Some(name.as_str()),
                "round {round}: the Lease changed hands"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let samples = prober.finish();
        let held = sampler.finish().await;
        assert!(
            held.iter().all(|s| s.holders == vec![name.clone()]),
            "the VIP left {name} or was held twice"
        );
        assert!(
            samples.longest_outage() < Duration::from_millis(200),
            "outage {:?}",
            samples.longest_outage()
        );
    });
}

/// The same for the Services leader's Lease: the Services it announces keep answering.
#[test]
fn a_deleted_services_lease_comes_back_and_services_stay() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let mut lab = lab(bin(), &[], None).await;
        let x = ip("192.0.2.175");
        lab.create(
            "web",
            json!({ "kube-vip.io/loadbalancerIPs": "192.0.2.175" }),
            json!({}),
        )
        .await;
        let holder = lab.wait_announced(x, Duration::from_secs(20)).await;
        let leases: Api<Lease> = Api::namespaced(lab.admin.clone(), &lab.lease_ns);
        let prober = Prober::start(
            &env.client,
            std::net::SocketAddr::new(x, 80),
            Duration::from_millis(10),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = leases.get("plndr-svcs-lock").await.unwrap().metadata.uid;
        leases
            .delete("plndr-svcs-lock", &DeleteParams::default())
            .await
            .unwrap();
        let back = wait_until(Duration::from_millis(1500), || async {
            leases
                .get_opt("plndr-svcs-lock")
                .await
                .ok()
                .flatten()
                .is_some_and(|l| {
                    l.metadata.uid != before && l.spec.and_then(|s| s.holder_identity).is_some()
                })
        })
        .await;
        assert!(
            back,
            "no Services leader after the deletion\n{}",
            lab.logs()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let samples = prober.finish();
        assert!(
            samples.longest_outage() < Duration::from_millis(200),
            "outage {:?}",
            samples.longest_outage()
        );
        assert_eq!(lab.wait_announced(x, Duration::from_secs(1)).await, holder);
        lab.svcs()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
    });
}

/// 2000 Services created and deleted in waves of 200, with one Lease per
/// address: what a wave leaves behind does not pile up. After the first
/// wave, the maps and the allocator have grown to a wave's size (capacity
/// kept, not leaked); the nine waves after it leave every vipd within
/// 3 MiB of that (measured: 0.2-1.2 MiB; a copy of each Service kept, 2 KiB
/// or more apiece, would be 3.5 MiB or more: Events' de-duplication forgets
/// deleted Services, nothing caches published Events, the write queue
/// forgets written Services), one connection to
/// the API server, and no per-address Lease (the Services leader deletes
/// them once released).
#[test]
fn churn_leaves_no_leases_and_no_memory_behind() {
    use k8s_openapi::api::core::v1::Service;
    use vipd_testkit::process::rss_split_kib;
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        // A Lease per address (svc_placement off): their garbage
        // collection is what this checks.
        let lab = lab(
            bin(),
            &[("svc_election", "true"), ("svc_placement", "false")],
            None,
        )
        .await;
        lab.pools(json!({ "cidr-global": "198.51.100.0/24", "skip-end-ips-in-cidr": "true" }))
            .await;
        // Anonymous memory: what is left behind. The file-backed part is
        // the binary's code, which grows as churn first runs code paths.
        let rss = |lab: &Lab| -> Vec<u64> {
            lab.nodes
                .iter()
                .map(|n| rss_split_kib(n.proc.as_ref().unwrap().pid().unwrap()).0)
                .collect()
        };
        let detail = |lab: &Lab| -> Vec<String> {
            lab.nodes
                .iter()
                .map(|n| {
                    let st = std::fs::read_to_string(format!(
                        "/proc/{}/status",
                        n.proc.as_ref().unwrap().pid().unwrap()
                    ))
                    .unwrap();
                    st.lines()
                        .filter(|l| l.starts_with("Rss"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        // Idle, caches synced, a first Service served and gone.
        lab.create("warmup", json!({}), json!({})).await;
        lab.wait_ingress("warmup", Duration::from_secs(20)).await;
        lab.svcs()
            .delete("warmup", &DeleteParams::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = rss(&lab);
        eprintln!("idle {:?}", detail(&lab));
        let leases: Api<Lease> = Api::namespaced(lab.admin.clone(), &lab.lease_ns);
        let address_leases = || async {
            leases
                .list(&kube::api::ListParams::default().labels("vipd.dev/service-address"))
                .await
                .map(|l| l.items.len())
                .unwrap_or(usize::MAX)
        };
        // Per-address Leases released by their holders and deleted by the
        // leader, then one malloc_trim tick (every 10 s).
        let settle = || async {
            let gone = wait_until(Duration::from_secs(40), || async {
                address_leases().await == 0
            })
            .await;
            tokio::time::sleep(Duration::from_secs(11)).await;
            gone
        };
        let svcs = lab.svcs();
        let (waves, per_wave) = (10, 200);
        let mut before = Vec::new();
        for w in 0..waves {
            if w == 1 {
                assert!(
                    settle().await,
                    "the first wave's Leases are left\n{}",
                    lab.logs()
                );
                before = rss(&lab);
                eprintln!("after the first wave {:?}", detail(&lab));
            }
            let names: Vec<String> = (0..per_wave).map(|i| format!("churn-{w}-{i}")).collect();
            futures::future::join_all(names.iter().map(|n| {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": { "name": n },
                    "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
                }))
                .unwrap();
                let svcs = svcs.clone();
                async move { svcs.create(&Default::default(), &svc).await.unwrap() }
            }))
            .await;
            let all = wait_until(Duration::from_secs(60), || async {
                let list = svcs.list(&Default::default()).await.unwrap();
                list.items
                    .iter()
                    .filter(|s| !vipd_testkit::ingress_ips(s).is_empty())
                    .count()
                    >= per_wave
            })
            .await;
            assert!(
                all,
                "wave {w}: not every Service got an address\n{}",
                lab.logs()
            );
            futures::future::join_all(names.iter().map(|n| {
                let svcs = svcs.clone();
                async move { svcs.delete(n, &DeleteParams::default()).await.unwrap() }
            }))
            .await;
        }
        let gone = settle().await;
        let left = address_leases().await;
        assert!(gone, "{left} per-address Leases left\n{}", lab.logs());
        let after = rss(&lab);
        eprintln!("after {:?}", detail(&lab));
        // One HTTP/2 connection to the API server, not one per request.
        for n in &lab.nodes {
            let o = n
                .host
                .ns
                .command("ss")
                .args(["-Htnpi", "dst", "192.0.2.2"])
                .output()
                .unwrap();
            let listed = String::from_utf8_lossy(&o.stdout);
            let conns = listed.lines().filter(|l| l.starts_with("ESTAB")).count();
            assert!(
                conns <= 2,
                "{} keeps {conns} connections to the API server:\n{listed}",
                n.name()
            );
        }
        eprintln!(
            "anonymous KiB idle {idle:?}, after the first wave {before:?}, after all {after:?}"
        );
        for (b, a) in before.iter().zip(&after) {
            assert!(
                *a <= b + 3 * 1024,
                "anonymous memory grew from {b} KiB after the first wave to {a} KiB after nine more"
            );
        }
    });
}
