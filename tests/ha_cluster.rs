//! The mission's real setting: three control-plane servers, each with an
//! embedded etcd member and a kube-apiserver naming the VIP in its
//! certificate, vipd on each as its K3s static pod. A client talks to
//! `https://192.0.2.100:6443` every 50 ms (TLS verified against the cluster
//! CA with the VIP as the name) and runs kubectl once a second, while the
//! VIP holder's node dies, its vipd alone is killed, and every server is
//! restarted in turn; etcd keeps quorum throughout.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vipd::vipctl::report::Report;
use vipd_testkit::ha::{HaCluster, HaOutcome, HaScenario, Mode};
use vipd_testkit::vipd::{vipctl_status, VipctlStatus};

static LOCK: Mutex<()> = Mutex::new(());

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

fn check(o: &HaOutcome, limit: Duration) {
    eprintln!("{o:?}");
    assert!(o.recovered, "{:?}: requests stopped for good", o.scenario);
    assert!(o.requests > 20, "too few requests: {}", o.requests);
    assert!(
        o.longest_gap <= limit,
        "{:?}: no successful request for {:?}",
        o.scenario,
        o.longest_gap
    );
    assert!(o.kubectl_runs > 0);
    if o.scenario != HaScenario::RollingRestart {
        assert!(
            o.new_holder.as_deref().is_some_and(|n| n != o.old_holder),
            "{o:?}"
        );
    }
}

/// `vipctl status`, run beside the cluster through the VIP, agrees with
/// the kernels: the leader (Lease holder or Raft leader) is the one node
/// that really has the VIP, three live vipds, exit status 0.
fn vipctl_agrees(c: &HaCluster) {
    let holder = c.holder_name();
    let t0 = Instant::now();
    loop {
        let out: VipctlStatus<Report> = vipctl_status(
            &c.client.ns,
            Path::new(env!("CARGO_BIN_EXE_vipctl")),
            &c.vip_kubeconfig,
            &[],
        );
        let agrees = out.report.as_ref().is_some_and(|r| {
            let cp = r.control_plane.first();
            let held = cp.map(|v| v.held_by.clone()).unwrap_or_default();
            let leader = cp.and_then(|v| v.leader.clone());
            let live = r.instances.iter().filter(|i| i.live).count();
            holder.as_ref().is_some_and(|h| held == [h.clone()]) && leader == holder && live == 3
        });
        if out.code == Some(0) && agrees {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "vipctl disagrees (holder {holder:?}): {}",
            out.output
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn scenarios(mode: Mode, node_death: Duration, vipd_kill: Duration, rolling: Duration) {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = HaCluster::start(3, mode, bin(), &[]).unwrap();
    vipctl_agrees(&c);
    let o = c.run_scenario(HaScenario::NodeDeath).unwrap();
    check(&o, node_death);
    vipctl_agrees(&c);
    let o = c.run_scenario(HaScenario::VipdKill).unwrap();
    check(&o, vipd_kill);
    let o = c.run_scenario(HaScenario::RollingRestart).unwrap();
    check(&o, rolling);
    vipctl_agrees(&c);
}

/// Bounds are generous (a 2-core machine runs three API servers and etcd):
/// the Lease is 4 s; the client notices a dead connection within 1 s.
#[test]
fn lease_mode_keeps_the_api_reachable() {
    scenarios(
        Mode::Lease,
        Duration::from_secs(8),
        Duration::from_secs(8),
        Duration::from_secs(5),
    );
}

#[test]
fn raft_mode_keeps_the_api_reachable() {
    scenarios(
        Mode::Raft,
        Duration::from_secs(4),
        Duration::from_secs(4),
        Duration::from_secs(5),
    );
}

/// The seed scenario on the HA cluster: vipd serves LoadBalancer Services
/// too (one vipd per server, cp_enable and svc_enable together); Traefik's
/// Service keeps its VIP across the death of the node announcing it.
#[test]
fn traefik_survives_node_death_on_the_ha_cluster() {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = HaCluster::start(3, Mode::Lease, bin(), &[("svc_enable", "true")]).unwrap();
    let traefik_vip = "192.0.2.150";
    let kc = c.vip_kubeconfig.clone();
    let kc2 = kc.clone();
    vipd_testkit::netns::block_on_in(&c.rt, async move {
        let client = vipd_testkit::apiserver::client_from_kubeconfig(&kc2)
            .await
            .unwrap();
        let svcs: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(client, "kube-system");
        let svc = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "traefik", "annotations": { "kube-vip.io/loadbalancerIPs": traefik_vip } },
            "spec": { "type": "LoadBalancer", "ports": [
                { "name": "web", "port": 80, "protocol": "TCP" },
                { "name": "websecure", "port": 443, "protocol": "TCP" } ] }
        }))
        .unwrap();
        svcs.create(&Default::default(), &svc).await.unwrap();
    });
    let target: std::net::SocketAddr = format!("{traefik_vip}:80").parse().unwrap();
    let ask = |c: &HaCluster| {
        c.client
            .ns
            .run(|| vipd_testkit::probe::ask(target, Duration::from_millis(300)))
    };
    let t0 = Instant::now();
    let holder = loop {
        if let Some(a) = ask(&c) {
            break a;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "Traefik's VIP never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "{traefik_vip}:80 answered by {holder} {:?} after the Service was created",
        t0.elapsed()
    );
    let i = c.servers.iter().position(|s| s.name() == holder).unwrap();
    vipd_testkit::netns::kill_all_in(c.servers[i].host().ns.name());
    c.servers[i].host().link_down().unwrap();
    let t0 = Instant::now();
    let new = loop {
        if let Some(a) = ask(&c) {
            if a != holder {
                break a;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "Traefik's VIP did not move off the dead node"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "{traefik_vip}:80 answered by {new} {:?} after {holder}'s node died",
        t0.elapsed()
    );
    // The API still works through the control-plane VIP, and the Service
    // names its new announcer.
    c.wait_vip(Duration::from_secs(30)).unwrap();
    let kc = c.vip_kubeconfig.clone();
    let expect = new.clone();
    let host = vipd_testkit::netns::block_on_in(&c.rt, async move {
        let client = vipd_testkit::apiserver::client_from_kubeconfig(&kc)
            .await
            .unwrap();
        let svcs: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(client, "kube-system");
        for _ in 0..50 {
            let s = svcs.get("traefik").await.unwrap();
            let h = s
                .metadata
                .annotations
                .unwrap_or_default()
                .get("kube-vip.io/vipHost")
                .cloned();
            if h.as_deref() == Some(expect.as_str()) {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    });
    assert_eq!(host.as_deref(), Some(new.as_str()));
}
