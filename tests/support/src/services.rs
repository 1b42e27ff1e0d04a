//! The Services controller in the lab: three nodes running vipd as
//! `manifests/k3s/vipd-services-daemonset.yaml` (ServiceAccount and RBAC
//! from `manifests/rbac.yaml`), the real API server, a client that connects
//! to Service addresses; Services, pools, Nodes and Events made through the
//! API as a user would.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::apiserver::env;
use crate::failover::vipd_nodes;
use crate::probe::ask;
use crate::vipd::VipdNode;

pub struct Lab {
    pub nodes: Vec<VipdNode>,
    pub ns: String,
    pub admin: Client,
    /// vipd's namespace (`cp_namespace`): its Leases and instance records.
    pub lease_ns: String,
}

/// Node objects n1..n3 with exactly `labels` (per node index).
pub async fn nodes_with_labels(admin: &Client, labels: &[BTreeMap<&str, &str>]) {
    let api: Api<Node> = Api::all(admin.clone());
    for (i, l) in labels.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let want: BTreeMap<String, String> = l
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match api.get_opt(&name).await.unwrap() {
            None => {
                let n: Node =
                    serde_json::from_value(json!({ "metadata": { "name": name, "labels": want } }))
                        .unwrap();
                api.create(&PostParams::default(), &n).await.unwrap();
            }
            Some(mut n) => {
                n.metadata.labels = Some(want);
                api.replace(&name, &PostParams::default(), &n)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Three vipd nodes serving the Services of a fresh namespace (or of
/// `namespace` when given), with the pools ConfigMap in that namespace.
pub async fn lab(bin: &Path, extra: &[(&str, &str)], namespace: Option<&str>) -> Lab {
    let env = env();
    let admin = env.admin().await;
    let ns = match namespace {
        Some(n) => n.to_string(),
        None => env.namespace("svc").await,
    };
    let lease_ns = env.namespace("svclease").await;
    // The manifests' pools Role, granted in the test's namespace too.
    crate::failover::grant_roles(env, &ns).unwrap();
    nodes_with_labels(&admin, &[BTreeMap::new(), BTreeMap::new(), BTreeMap::new()]).await;
    let pools = format!("{ns}/kubevip");
    let mut settings: Vec<(&str, &str)> = vec![
        ("cp_namespace", &lease_ns),
        ("svc_namespace", &ns),
        ("svc_pool_configmap", &pools),
    ];
    settings.extend_from_slice(extra);
    let nodes = vipd_nodes(
        env,
        3,
        "manifests/k3s/vipd-services-daemonset.yaml",
        bin,
        &settings,
        &[80, 443],
    )
    .await
    .unwrap();
    Lab {
        nodes,
        ns,
        admin,
        lease_ns,
    }
}

impl Lab {
    pub fn svcs(&self) -> Api<Service> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    pub async fn create(
        &self,
        name: &str,
        annotations: serde_json::Value,
        spec: serde_json::Value,
    ) {
        let mut s = json!({
            "metadata": { "name": name, "annotations": annotations },
            "spec": { "type": "LoadBalancer", "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }] }
        });
        for (k, v) in spec.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        let svc: Service = serde_json::from_value(s).unwrap();
        self.svcs()
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
    }

    pub async fn pools(&self, data: serde_json::Value) {
        let api: Api<ConfigMap> = Api::namespaced(self.admin.clone(), &self.ns);
        let cm: ConfigMap =
            serde_json::from_value(json!({ "metadata": { "name": "kubevip" }, "data": data }))
                .unwrap();
        match api.get_opt("kubevip").await.unwrap() {
            None => {
                api.create(&PostParams::default(), &cm).await.unwrap();
            }
            Some(_) => {
                api.patch(
                    "kubevip",
                    &PatchParams::apply("test").force(),
                    &Patch::Apply(&cm),
                )
                .await
                .unwrap();
            }
        }
    }

    pub async fn get(&self, name: &str) -> Service {
        self.svcs().get(name).await.unwrap()
    }

    pub fn ingress(s: &Service) -> Vec<IpAddr> {
        crate::ingress_ips(s)
    }

    pub fn annotation(s: &Service, key: &str) -> Option<String> {
        s.metadata.annotations.as_ref()?.get(key).cloned()
    }

    /// Waits for the Service's ingress to be non-empty.
    pub async fn wait_ingress(&self, name: &str, timeout: Duration) -> Vec<IpAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            let i = Self::ingress(&self.get(name).await);
            if !i.is_empty() {
                return i;
            }
            if Instant::now() > deadline {
                panic!("{name}: no ingress after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running vipd finished a Services pass over a cache
    /// holding `svc` as it is now (its resourceVersion or newer), so what
    /// the test checks next was decided with the change, not before it.
    pub async fn wait_passes_over(&self, svc: &Service, timeout: Duration) {
        let version: u64 = svc
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("a Service read from the API has a numeric resourceVersion");
        let seen = |d: Option<serde_json::Value>| {
            d.and_then(|d| d["services"]["services_version"].as_u64())
                .is_some_and(|v| v >= version)
        };
        let all = crate::vipd::wait_until(timeout, || async {
            for n in self.nodes.iter().filter(|n| n.proc.is_some()) {
                if !seen(n.status_doc().await) {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(
            all,
            "not every vipd passed over version {version}\n{}",
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name(), n.log_tail(25)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn holders(&mut self, addr: IpAddr) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.nodes.iter_mut() {
            if n.holds(addr).await {
                out.push(n.name().to_string());
            }
        }
        out
    }

    pub fn answer(&self, addr: IpAddr, port: u16) -> Option<String> {
        env()
            .client
            .ns
            .run(|| ask(SocketAddr::new(addr, port), Duration::from_millis(300)))
    }

    /// Waits until exactly one node holds `addr` and answers on port 80; its name.
    pub async fn wait_announced(&mut self, addr: IpAddr, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.holders(addr).await;
            if h.len() == 1 && self.answer(addr, 80).as_deref() == Some(h[0].as_str()) {
                return h[0].clone();
            }
            assert!(h.len() <= 1, "{addr} held by {h:?}");
            if Instant::now() > deadline {
                panic!(
                    "{addr} not announced after {timeout:?} (holders {h:?})\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_withdrawn(&mut self, addr: IpAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.holders(addr).await.is_empty() {
            if Instant::now() > deadline {
                panic!("{addr} still held after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The reasons of Events about Service `name`, oldest first.
    pub async fn event_reasons(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.admin.clone(), &self.ns);
        let mut evs: Vec<Event> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        evs.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        evs.into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    pub async fn wait_event(&self, name: &str, reason: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, note)) = self
                .event_reasons(name)
                .await
                .into_iter()
                .find(|(r, _)| r == reason)
            {
                return note;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: no {reason} Event after {timeout:?}: {:?}\n{}",
                    self.event_reasons(name).await,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn endpoints(&self, svc: &str, ready_on: &[&str]) {
        let api: Api<EndpointSlice> = Api::namespaced(self.admin.clone(), &self.ns);
        let name = format!("{svc}-eps");
        let endpoints: Vec<serde_json::Value> = ready_on
            .iter()
            .enumerate()
            .map(|(i, n)| json!({ "addresses": [format!("10.42.0.{}", i + 10)], "conditions": { "ready": true }, "nodeName": n }))
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "kubernetes.io/service-name": svc } },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{ "port": 80, "protocol": "TCP" }]
        }))
        .unwrap();
        let _ = api.delete(&name, &DeleteParams::default()).await;
        api.create(&PostParams::default(), &slice).await.unwrap();
    }
}

/// Sets a Node's `status.addresses` as the kubelet would: InternalIP (and
/// ExternalIP when given).
pub async fn set_node_addresses(
    admin: &Client,
    node: &str,
    internal: IpAddr,
    external: Option<IpAddr>,
) {
    let api: Api<Node> = Api::all(admin.clone());
    let mut addrs = vec![json!({ "type": "InternalIP", "address": internal.to_string() })];
    if let Some(e) = external {
        addrs.push(json!({ "type": "ExternalIP", "address": e.to_string() }));
    }
    addrs.push(json!({ "type": "Hostname", "address": node }));
    api.patch_status(
        node,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "addresses": addrs } })),
    )
    .await
    .unwrap();
}

/// Writes a Service's `status.loadBalancer.ingress` as another controller
/// would (K3s ServiceLB leaves the nodes' addresses there).
pub async fn write_foreign_status(admin: &Client, ns: &str, name: &str, ips: &[IpAddr]) {
    let api: Api<Service> = Api::namespaced(admin.clone(), ns);
    let ingress: Vec<serde_json::Value> =
        ips.iter().map(|i| json!({ "ip": i.to_string() })).collect();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "loadBalancer": { "ingress": ingress } } })),
    )
    .await
    .unwrap();
}
