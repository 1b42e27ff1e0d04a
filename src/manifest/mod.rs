//! `vipd manifest pod | daemonset | rbac`: the YAML to deploy vipd, like
//! `kube-vip manifest`. Settings given as flags become the container's
//! environment (kube-vip's variable names), so the manifest says exactly
//! what was asked and nothing else.

use serde_json::{json, Value};

use crate::config::Layers;

mod rbac;

pub use rbac::{cluster_role_rules, lease_role_rules, pools_role_rules, rbac};

/// Where the manifest will run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distro {
    /// kubeadm: static pod in /etc/kubernetes/manifests, kubeconfig admin.conf.
    Kubeadm,
    /// K3s: static pod in /var/lib/rancher/k3s/agent/pod-manifests, kubeconfig k3s.yaml.
    K3s,
}

impl Distro {
    pub fn kubeconfig_path(self) -> &'static str {
        match self {
            Distro::Kubeadm => "/etc/kubernetes/admin.conf",
            Distro::K3s => "/etc/rancher/k3s/k3s.yaml",
        }
    }
}

pub const NAME: &str = "vipd";
/// vipd's own namespace: its ServiceAccount, DaemonSets and every Lease it
/// writes. A namespace of its own lets RBAC grant Leases there and nowhere
/// else (kube-system holds the scheduler's and controller-manager's).
pub const NAMESPACE: &str = "vipd-system";
/// Where static pods run, as every control-plane static pod does.
pub const STATIC_POD_NAMESPACE: &str = "kube-system";
/// The pools ConfigMap's namespace and name (kube-vip-cloud-provider's;
/// `svc_pool_configmap`'s default).
pub const POOLS_NAMESPACE: &str = crate::config::settings::DEFAULT_NAMESPACE;
pub const POOLS_NAME: &str = "kubevip";
/// Raft's state on the host (`vip_raft_state_dir`'s default), and the
/// shared secret's file.
pub const RAFT_STATE_DIR: &str = "/var/lib/vipd/raft";
pub const RAFT_SECRET_FILE: &str = "/etc/vipd/raft-secret";
/// The Secret a DaemonSet reads the Raft secret from (key `secret`).
pub const RAFT_SECRET_NAME: &str = "vipd-raft";

/// What every manifest needs to know.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    pub image: String,
    pub distro: Distro,
    /// kube-vip's `--inCluster`: the pod authenticates with the `vipd`
    /// ServiceAccount. vipd's DaemonSets always do (they never mount a
    /// node's admin kubeconfig); a static pod cannot (the kubelet refuses
    /// ServiceAccounts for static pods), so `pod --inCluster` is an error.
    pub in_cluster: bool,
    /// kube-vip's `--taint`: only on control-plane nodes, tolerating their
    /// taint.
    pub taint: bool,
}

/// The label every K3s server and kubeadm control-plane node carries.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

fn on(layers: &Layers, key: &str) -> bool {
    layers
        .get(key)
        .and_then(|g| crate::config::parse_bool(&g.value))
        .unwrap_or(false)
}

/// Where Raft keeps its state and finds its secret, as the manifest sets them.
fn raft_paths(layers: &Layers) -> Option<(String, String)> {
    if !on(layers, "vip_raft") {
        return None;
    }
    let given = |k: &str, d: &str| {
        layers
            .get(k)
            .map(|g| g.value.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| d.to_string())
    };
    Some((
        given("vip_raft_state_dir", RAFT_STATE_DIR),
        given("vip_raft_secret_file", RAFT_SECRET_FILE),
    ))
}

/// The container environment for `layers` (flags given to `vipd manifest`):
/// what was asked, plus vipd's namespace and (Raft) the paths the volumes
/// provide, unless given.
fn env(layers: &Layers, kubeconfig: Option<&str>) -> Vec<Value> {
    let mut out: Vec<Value> = layers
        .iter()
        .filter(|(k, _)| *k != "vip_nodename" && *k != "k8s_config_file")
        .map(|(k, g)| json!({ "name": k, "value": g.value }))
        .collect();
    if layers.get("cp_namespace").is_none() {
        out.push(json!({ "name": "cp_namespace", "value": NAMESPACE }));
    }
    if let Some((state, secret)) = raft_paths(layers) {
        for (k, v) in [
            ("vip_raft_state_dir", state),
            ("vip_raft_secret_file", secret),
        ] {
            if layers.get(k).is_none() {
                out.push(json!({ "name": k, "value": v }));
            }
        }
    }
    out.push(json!({
        "name": "vip_nodename",
        "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } }
    }));
    if let Some(path) = kubeconfig {
        out.push(json!({ "name": "k8s_config_file", "value": path }));
    }
    out
}

/// Volumes for Raft: its state on the host (a restarted container keeps
/// term and vote, so it can never vote twice in a term), and the shared
/// secret from a host file (static pod: it cannot read Secrets) or from the
/// Secret `vipd-raft` (DaemonSet).
fn raft_volumes(layers: &Layers, static_pod: bool) -> (Vec<Value>, Vec<Value>) {
    let Some((state, secret)) = raft_paths(layers) else {
        return (Vec::new(), Vec::new());
    };
    let mut mounts = vec![json!({ "name": "raft-state", "mountPath": state })];
    let mut volumes = vec![
        json!({ "name": "raft-state", "hostPath": { "path": state, "type": "DirectoryOrCreate" } }),
    ];
    if static_pod {
        mounts.push(json!({ "name": "raft-secret", "mountPath": secret, "readOnly": true }));
        volumes
            .push(json!({ "name": "raft-secret", "hostPath": { "path": secret, "type": "File" } }));
    } else {
        let path = std::path::Path::new(&secret);
        let dir = path
            .parent()
            .and_then(|d| d.to_str())
            .unwrap_or("/etc/vipd");
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("raft-secret");
        mounts.push(json!({ "name": "raft-secret", "mountPath": dir, "readOnly": true }));
        volumes.push(json!({ "name": "raft-secret", "secret": {
            "secretName": RAFT_SECRET_NAME, "defaultMode": 0o400,
            "items": [{ "key": "secret", "path": file }]
        } }));
    }
    (mounts, volumes)
}

/// The capabilities vipd needs: addresses and routes, raw ARP/NDP frames,
/// and, when it runs below niceness 0 (Raft's default, see `vip_nice`),
/// raising its own priority.
fn capabilities(layers: &Layers) -> Vec<&'static str> {
    let mut caps = vec!["NET_ADMIN", "NET_RAW"];
    let nice = layers
        .get("vip_nice")
        .and_then(|g| g.value.trim().parse::<i32>().ok())
        .unwrap_or_else(|| crate::config::default_nice(on(layers, "vip_raft")));
    if nice < 0 {
        caps.push("SYS_NICE");
    }
    caps
}

fn container(layers: &Layers, image: &str, kubeconfig: Option<&str>) -> Value {
    let mut c = json!({
        "name": NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["manager"],
        "env": env(layers, kubeconfig),
        "securityContext": {
            "capabilities": { "add": capabilities(layers), "drop": ["ALL"] }
        },
        "resources": { "requests": { "cpu": "10m", "memory": "32Mi" } }
    });
    // Probes on the status server (prometheus_server; none when it is off).
    let port = match layers
        .get("prometheus_server")
        .map(|g| g.value.trim().to_string())
    {
        None => Some(crate::config::settings::STATUS_PORT),
        Some(v) if v.is_empty() => None,
        Some(v) => v.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()),
    };
    if let Some(port) = port {
        c["livenessProbe"] = json!({ "httpGet": { "path": "/healthz", "port": port }, "periodSeconds": 10, "failureThreshold": 3 });
        c["readinessProbe"] =
            json!({ "httpGet": { "path": "/readyz", "port": port }, "periodSeconds": 5 });
    }
    let mut mounts = Vec::new();
    if let Some(path) = kubeconfig {
        mounts.push(json!({ "name": "kubeconfig", "mountPath": path, "readOnly": true }));
    }
    mounts.extend(raft_volumes(layers, kubeconfig.is_some()).0);
    if !mounts.is_empty() {
        c["volumeMounts"] = json!(mounts);
    }
    c
}

/// Control-plane taints and K3s' `CriticalAddonsOnly`.
fn tolerations() -> Value {
    json!([
        { "key": CONTROL_PLANE_LABEL, "operator": "Exists", "effect": "NoSchedule" },
        { "key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule" },
        { "key": "CriticalAddonsOnly", "operator": "Exists" }
    ])
}

/// Where a DaemonSet's pods may run: one vipd per node, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Control-plane nodes only (control-plane VIP, or `--taint`).
    ControlPlane,
    /// Every node but K3s servers: on K3s, servers carry no taint and run
    /// vipd's static pod, which serves Services too.
    NotControlPlane,
    /// Every node without a control-plane taint (kubeadm's control-plane
    /// nodes are tainted and run the static pod).
    Untainted,
}

/// Where a DaemonSet of `layers` runs (pure: the generator's one decision).
pub fn placement(layers: &Layers, o: &ManifestOptions) -> Placement {
    if on(layers, "cp_enable") || o.taint {
        Placement::ControlPlane
    } else if o.distro == Distro::K3s {
        Placement::NotControlPlane
    } else {
        Placement::Untainted
    }
}

/// The component a pod serves: `control-plane` or `services` (or both).
fn component(layers: &Layers) -> &'static str {
    match (on(layers, "cp_enable"), on(layers, "svc_enable")) {
        (false, true) => "services",
        (true, true) => "control-plane-and-services",
        _ => "control-plane",
    }
}

fn labels_for(component: &str) -> Value {
    json!({ "app.kubernetes.io/name": NAME, "app.kubernetes.io/component": component })
}

/// `vipd` for the control plane, `vipd-services` for a Services-only DaemonSet,
/// so both can run side by side.
fn name_for(component: &str) -> String {
    if component == "services" {
        format!("{NAME}-services")
    } else {
        NAME.to_string()
    }
}

/// A static pod for every control-plane node.
pub fn pod(layers: &Layers, o: &ManifestOptions) -> Value {
    let kubeconfig = o.distro.kubeconfig_path();
    let mut volumes =
        vec![json!({ "name": "kubeconfig", "hostPath": { "path": kubeconfig, "type": "File" } })];
    volumes.extend(raft_volumes(layers, true).1);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name_for(component(layers)), "namespace": STATIC_POD_NAMESPACE, "labels": labels_for(component(layers)) },
        "spec": {
            "hostNetwork": true,
            "priorityClassName": "system-node-critical",
            "containers": [container(layers, &o.image, Some(kubeconfig))],
            "volumes": volumes,
            "tolerations": tolerations()
        }
    })
}

/// A DaemonSet that runs with the `vipd` ServiceAccount (see [`rbac`]),
/// placed by [`placement`] so that it never lands beside vipd's static pod.
pub fn daemonset(layers: &Layers, o: &ManifestOptions) -> Value {
    let mut spec = json!({
        "serviceAccountName": NAME,
        "hostNetwork": true,
        "priorityClassName": "system-node-critical",
        "containers": [container(layers, &o.image, None)],
    });
    let volumes = raft_volumes(layers, false).1;
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    match placement(layers, o) {
        Placement::ControlPlane => {
            spec["tolerations"] = tolerations();
            spec["affinity"] = json!({
                "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [
                    { "matchExpressions": [{ "key": CONTROL_PLANE_LABEL, "operator": "Exists" }] },
                    { "matchExpressions": [{ "key": "node-role.kubernetes.io/master", "operator": "Exists" }] }
                ] } }
            });
        }
        Placement::NotControlPlane => {
            spec["tolerations"] = json!([{ "key": "CriticalAddonsOnly", "operator": "Exists" }]);
            spec["affinity"] = json!({
                "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [
                    { "matchExpressions": [
                        { "key": CONTROL_PLANE_LABEL, "operator": "DoesNotExist" },
                        { "key": "node-role.kubernetes.io/master", "operator": "DoesNotExist" }
                    ] }
                ] } }
            });
        }
        Placement::Untainted => {
            spec["tolerations"] = json!([{ "key": "CriticalAddonsOnly", "operator": "Exists" }]);
        }
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": name_for(component(layers)), "namespace": NAMESPACE, "labels": labels_for(component(layers)) },
        "spec": {
            "selector": { "matchLabels": labels_for(component(layers)) },
            "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
            "template": { "metadata": { "labels": labels_for(component(layers)) }, "spec": spec }
        }
    })
}

/// Documents as one multi-document YAML text.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("JSON values serialise"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(flags: &[(&str, &str)]) -> Layers {
        let mut l = Layers::default();
        l.add_flags(flags.iter().map(|(k, v)| (*k, v.to_string())));
        l
    }

    fn opts(distro: Distro, taint: bool) -> ManifestOptions {
        ManifestOptions {
            image: "vipd:test".into(),
            distro,
            in_cluster: true,
            taint,
        }
    }

    fn node_terms(ds: &Value) -> Value {
        ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            .clone()
    }

    fn tolerated(ds: &Value) -> Vec<String> {
        ds["spec"]["template"]["spec"]["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["key"].as_str().map(String::from))
            .collect()
    }

    /// K3s servers carry no taint and run the static pod (which serves
    /// Services too): the Services DaemonSet must never land there.
    #[test]
    fn a_k3s_services_daemonset_stays_off_servers() {
        let svc = layers(&[("svc_enable", "true")]);
        let o = opts(Distro::K3s, false);
        assert_eq!(placement(&svc, &o), Placement::NotControlPlane);
        let ds = daemonset(&svc, &o);
        let terms = node_terms(&ds);
        assert_eq!(terms.as_array().map(Vec::len), Some(1), "{terms}");
        let exprs = terms[0]["matchExpressions"].as_array().unwrap();
        assert!(exprs
            .iter()
            .any(|e| e["key"] == CONTROL_PLANE_LABEL && e["operator"] == "DoesNotExist"));
        assert!(!tolerated(&ds).iter().any(|k| k == CONTROL_PLANE_LABEL));
    }

    /// kubeadm's control-plane nodes are tainted and run the static pod:
    /// the Services DaemonSet does not tolerate their taint.
    #[test]
    fn a_kubeadm_services_daemonset_does_not_tolerate_the_control_plane() {
        let svc = layers(&[("svc_enable", "true")]);
        let o = opts(Distro::Kubeadm, false);
        assert_eq!(placement(&svc, &o), Placement::Untainted);
        let ds = daemonset(&svc, &o);
        assert!(ds["spec"]["template"]["spec"]["affinity"].is_null());
        assert_eq!(tolerated(&ds), vec!["CriticalAddonsOnly".to_string()]);
    }

    /// `--taint` and a control-plane DaemonSet: control-plane nodes only.
    #[test]
    fn taint_and_control_plane_mean_control_plane_nodes_only() {
        for (flags, taint) in [
            (vec![("svc_enable", "true")], true),
            (vec![("cp_enable", "true"), ("svc_enable", "true")], false),
        ] {
            let l = layers(&flags);
            for distro in [Distro::K3s, Distro::Kubeadm] {
                let o = opts(distro, taint);
                assert_eq!(placement(&l, &o), Placement::ControlPlane);
                let ds = daemonset(&l, &o);
                let terms = node_terms(&ds);
                assert!(terms
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|t| t["matchExpressions"][0]["operator"] == "Exists"));
                assert!(tolerated(&ds).iter().any(|k| k == CONTROL_PLANE_LABEL));
            }
        }
    }
}

#[cfg(test)]
mod capability_tests {
    use super::*;

    #[test]
    fn raft_asks_for_sys_nice_to_run_ahead_of_the_node() {
        let caps = |pairs: &[(&str, &str)]| {
            let mut l = Layers::default();
            l.add_flags(pairs.iter().map(|(k, v)| (*k, v.to_string())));
            capabilities(&l)
        };
        assert_eq!(caps(&[]), ["NET_ADMIN", "NET_RAW"]);
        assert_eq!(
            caps(&[("vip_raft", "true")]),
            ["NET_ADMIN", "NET_RAW", "SYS_NICE"]
        );
        assert_eq!(
            caps(&[("vip_raft", "true"), ("vip_nice", "0")]),
            ["NET_ADMIN", "NET_RAW"]
        );
        assert_eq!(
            caps(&[("vip_nice", "-5")]),
            ["NET_ADMIN", "NET_RAW", "SYS_NICE"]
        );
    }
}

#[cfg(test)]
mod default_tests {
    use super::*;
    use crate::config::settings::default_of;

    #[test]
    fn manifest_constants_are_the_settings_defaults() {
        assert_eq!(
            default_of("svc_pool_configmap"),
            Some(format!("{POOLS_NAMESPACE}/{POOLS_NAME}").as_str())
        );
        assert_eq!(default_of("vip_raft_state_dir"), Some(RAFT_STATE_DIR));
    }
}
