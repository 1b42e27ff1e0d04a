//! vipd as users deploy it: its image, imported into containerd, run by
//! real kubelets from the files in `manifests/`. Lab hosts are K3s-like
//! nodes (containerd 2, kubelet, kube-proxy; servers labelled as K3s labels
//! them) beside the real API server with kube-controller-manager and
//! kube-scheduler (DaemonSets scheduled, ServiceAccount tokens projected).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use vipd_testkit::apiserver::env_with_controllers;
use vipd_testkit::lab::host_v4;
use vipd_testkit::pods::{ready, PodCluster, PodScenario, API_PORT, VIP};
use vipd_testkit::{ingress_ips, workspace_root};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn manifest_file(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap()
}

/// K3s' bundled Traefik, as the K3s chart makes it with vipd's annotation
/// (manifests/examples/traefik-config.yaml), its endpoints on every node's
/// port 8080 (each answers with its node's name).
async fn traefik(c: &PodCluster, address: &str) {
    let admin = c.env().admin().await;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "traefik", "namespace": "kube-system",
            "annotations": { "kube-vip.io/loadbalancerIPs": address } },
        "spec": { "type": "LoadBalancer", "ports": [
            { "name": "web", "port": 80, "targetPort": 8080, "protocol": "TCP" }
        ] }
    }))
    .unwrap();
    Api::<Service>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let endpoints: Vec<serde_json::Value> = c
        .nodes
        .iter()
        .map(|n| serde_json::json!({ "addresses": [n.host.v4.to_string()], "conditions": { "ready": true }, "nodeName": n.name }))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "traefik-lab", "namespace": "kube-system",
            "labels": { "kubernetes.io/service-name": "traefik" } },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "web", "port": 8080, "protocol": "TCP" }]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(admin, "kube-system")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
}

/// A K3s cluster as a user sets it up from `manifests/k3s/`: the static
/// pod copied into each server's pod-manifests directory (one vipd serving
/// the control-plane VIP and Services), then `kubectl apply -f rbac.yaml
/// -f vipd-services-daemonset.yaml` for the agents. Every node runs exactly
/// one vipd (K3s servers have no taint: a Services DaemonSet landing there
/// too would crash on the one-per-node lock); the VIP is held and answers;
/// the DaemonSet's pod runs with its ServiceAccount's projected token; the
/// Traefik-style Service gets its address and answers.
#[test]
fn k3s_servers_and_agents_run_one_vipd_each_from_the_manifests() {
    let env = env_with_controllers();
    let _l = env.lab_lock();
    env.run(async move {
        let mut c = PodCluster::start(env, 3, 1, &[API_PORT, 8080])
            .await
            .unwrap();

        // "Switching is changing the image": a kube-vip static pod with
        // only its image replaced by vipd's holds the VIP, with kube-vip's
        // Lease in kube-system and the kubeconfig at kube-vip's path.
        let kube_vip = manifest_file("tests/fixtures/kube-vip-k3s-static-pod.yaml").replace(
            "ghcr.io/kube-vip/kube-vip:v0.8.0",
            vipd_testkit::pods::IMAGE,
        );
        c.write_static_pods(&kube_vip).unwrap();
        c.wait_pods_ready("kube-system", "kube-vip-", 3, Duration::from_secs(90))
            .await
            .unwrap();
        let holder = c
            .wait_one_holder(ip(VIP), Duration::from_secs(30))
            .await
            .unwrap();
        let lease: Lease = Api::namespaced(env.admin().await, "kube-system")
            .get("plndr-cp-lock")
            .await
            .unwrap();
        assert_eq!(
            lease.spec.unwrap().holder_identity.as_deref(),
            Some(c.nodes[holder].name.as_str())
        );
        let log = c.nodes[holder].container_log("kube-system", "kube-vip");
        assert!(
            log.contains("/etc/kubernetes/admin.conf"),
            "not kube-vip's kubeconfig path:\n{log}"
        );
        c.remove_static_pods().unwrap();
        c.wait_pods_gone("kube-system", "kube-vip-", Duration::from_secs(60))
            .await
            .unwrap();

        let t0 = Instant::now();
        c.write_static_pods(&manifest_file("manifests/k3s/vipd-static-pod.yaml"))
            .unwrap();
        let holder = c
            .wait_one_holder(ip(VIP), Duration::from_secs(60))
            .await
            .unwrap();
        eprintln!("static pod files -> VIP held: {:?}", t0.elapsed());
        c.wait_pods_ready("kube-system", "vipd-", 3, Duration::from_secs(90))
            .await
            .unwrap();
        assert_eq!(
            c.answer(ip(VIP), API_PORT).as_deref(),
            Some(c.nodes[holder].name.as_str())
        );
        let table = env
            .kubectl(&["-n", "kube-system", "get", "pods", "-o", "wide"])
            .unwrap();
        eprintln!("{table}");
        for i in 1..=3u8 {
            let line = table
                .lines()
                .find(|l| l.starts_with(&format!("vipd-n{i} ")))
                .unwrap_or_else(|| panic!("{table}"));
            assert!(
                line.contains("Running") && line.contains(&host_v4(10 + i).to_string()),
                "{table}"
            );
        }

        let rbac = workspace_root().join("manifests/rbac.yaml");
        let ds = workspace_root().join("manifests/k3s/vipd-services-daemonset.yaml");
        env.kubectl(&[
            "apply",
            "-f",
            rbac.to_str().unwrap(),
            "-f",
            ds.to_str().unwrap(),
        ])
        .unwrap();
        c.wait_pods_ready("vipd-system", "vipd-services-", 1, Duration::from_secs(90))
            .await
            .unwrap();
        let ds: DaemonSet = Api::namespaced(env.admin().await, "vipd-system")
            .get("vipd-services")
            .await
            .unwrap();
        let status = ds.status.unwrap();
        assert_eq!(
            (status.desired_number_scheduled, status.number_ready),
            (1, 1),
            "the DaemonSet is for agents only"
        );
        let agent_pod = c.pods("vipd-system", "vipd-services-").await.remove(0);
        let spec = agent_pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n4"));
        let projected = spec.volumes.iter().flatten().any(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        });
        assert!(
            projected,
            "no projected ServiceAccount token: {:?}",
            spec.volumes
        );
        let log = c.nodes[3].container_log("vipd-system", "vipd-services");
        assert!(
            log.contains("InCluster"),
            "the agent's vipd did not use its ServiceAccount:\n{log}"
        );

        traefik(&c, "192.0.2.150").await;
        let svcs: Api<Service> = Api::namespaced(env.admin().await, "kube-system");
        let t0 = Instant::now();
        let mut ingress = Vec::new();
        while t0.elapsed() < Duration::from_secs(30) && ingress.is_empty() {
            ingress = ingress_ips(&svcs.get("traefik").await.unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ingress, vec![ip("192.0.2.150")], "\n{}", c.logs());
        c.wait_one_holder(ip("192.0.2.150"), Duration::from_secs(30))
            .await
            .unwrap();
        let mut answered = None;
        while t0.elapsed() < Duration::from_secs(30) && answered.is_none() {
            answered = c.answer(ip("192.0.2.150"), 80);
        }
        let who = answered.expect("the Traefik address never answered");
        assert!(c.nodes.iter().any(|n| n.name == who), "{who}");
        eprintln!(
            "Service created -> answered on 192.0.2.150:80 (by {who}'s endpoint): {:?}",
            t0.elapsed()
        );

        // One vipd per node, none restarted.
        let mut all = c.pods("kube-system", "vipd-").await;
        all.extend(c.pods("vipd-system", "vipd-").await);
        let mut per_node: Vec<String> = all
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        per_node.sort();
        assert_eq!(per_node, vec!["n1", "n2", "n3", "n4"]);
        for p in &all {
            assert!(ready(p));
            let restarts: i32 = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .map(|s| s.restart_count)
                .sum();
            assert_eq!(
                restarts,
                0,
                "{:?} restarted:\n{}",
                p.metadata.name,
                c.logs()
            );
        }
    });
}

/// The HA scenarios of the host-process lab, on pods run by kubelets: the
/// holder's container killed, its node dead (kubelet, containerd and all
/// gone, link down), a rolling update by editing each static pod file, and
/// pod start -> VIP held. Bounds are generous; `vipd-lab bench pods` measures.
#[test]
fn ha_scenarios_on_static_pods() {
    let env = env_with_controllers();
    let _l = env.lab_lock();
    env.run(async move {
        let mut c = PodCluster::start(env, 3, 0, &[API_PORT]).await.unwrap();
        c.write_static_pods(&manifest_file("manifests/k3s/vipd-static-pod.yaml"))
            .unwrap();
        c.wait_pods_ready("kube-system", "vipd-", 3, Duration::from_secs(90))
            .await
            .unwrap();
        for scenario in PodScenario::ALL {
            let o = c
                .run(scenario)
                .await
                .unwrap_or_else(|e| panic!("{scenario:?}: {e:#}"));
            eprintln!("{o:?}");
            assert!(o.recovered, "{o:?}\n{}", c.logs());
            if let Some(takeover) = o.takeover {
                assert!(takeover < Duration::from_secs(20), "{o:?}");
            }
            if scenario == PodScenario::RollingUpdate {
                // Graceful stops hand over: never two holders, short gaps.
                assert!(o.max_holders <= 1, "{o:?}");
                assert!(o.outage < Duration::from_secs(5), "{o:?}");
            }
        }
    });
}
