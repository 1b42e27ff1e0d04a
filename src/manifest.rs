//! `vipd manifest pod | daemonset | rbac`: the YAML to deploy vipd, like
//! `kube-vip manifest`. Settings given as flags become the container's
//! environment (kube-vip's variable names), so the manifest says exactly
//! what was asked and nothing else.

use serde_json::{json, Value};

use crate::config::Layers;

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
pub const NAMESPACE: &str = "kube-system";

/// What every manifest needs to know.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    pub image: String,
    pub distro: Distro,
}

/// The container environment for `layers` (flags given to `vipd manifest`).
fn env(layers: &Layers, kubeconfig: Option<&str>) -> Vec<Value> {
    let mut out: Vec<Value> = layers
        .iter()
        .filter(|(k, _)| *k != "vip_nodename" && *k != "k8s_config_file")
        .map(|(k, g)| json!({ "name": k, "value": g.value }))
        .collect();
    out.push(json!({
        "name": "vip_nodename",
        "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } }
    }));
    if let Some(path) = kubeconfig {
        out.push(json!({ "name": "k8s_config_file", "value": path }));
    }
    out
}

fn container(layers: &Layers, image: &str, kubeconfig: Option<&str>) -> Value {
    let mut c = json!({
        "name": NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["manager"],
        "env": env(layers, kubeconfig),
        "securityContext": {
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] }
        },
        "resources": { "requests": { "cpu": "10m", "memory": "32Mi" } }
    });
    // Probes on the status server (prometheus_server, :2112 by default; none when it is off).
    let port = match layers
        .get("prometheus_server")
        .map(|g| g.value.trim().to_string())
    {
        None => Some(2112),
        Some(v) if v.is_empty() => None,
        Some(v) => v.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()),
    };
    if let Some(port) = port {
        c["livenessProbe"] = json!({ "httpGet": { "path": "/healthz", "port": port }, "periodSeconds": 10, "failureThreshold": 3 });
        c["readinessProbe"] =
            json!({ "httpGet": { "path": "/readyz", "port": port }, "periodSeconds": 5 });
    }
    if let Some(path) = kubeconfig {
        c["volumeMounts"] = json!([{ "name": "kubeconfig", "mountPath": path, "readOnly": true }]);
    }
    c
}

fn tolerations() -> Value {
    json!([
        { "key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule" },
        { "key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule" },
        { "key": "CriticalAddonsOnly", "operator": "Exists" }
    ])
}

/// The component a pod serves: `control-plane` or `services` (or both).
fn component(layers: &Layers) -> &'static str {
    let on = |k: &str| {
        layers
            .get(k)
            .and_then(|g| crate::config::parse_bool(&g.value))
            .unwrap_or(false)
    };
    match (on("cp_enable"), on("svc_enable")) {
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
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name_for(component(layers)), "namespace": NAMESPACE, "labels": labels_for(component(layers)) },
        "spec": {
            "hostNetwork": true,
            "priorityClassName": "system-node-critical",
            "containers": [container(layers, &o.image, Some(kubeconfig))],
            "volumes": [{ "name": "kubeconfig", "hostPath": { "path": kubeconfig, "type": "File" } }],
            "tolerations": tolerations()
        }
    })
}

/// A DaemonSet that runs with the `vipd` ServiceAccount (see [`rbac`]);
/// with `cp_enable` only on control-plane nodes.
pub fn daemonset(layers: &Layers, o: &ManifestOptions) -> Value {
    let control_plane = layers
        .get("cp_enable")
        .and_then(|g| crate::config::parse_bool(&g.value))
        .unwrap_or(false);
    let mut spec = json!({
        "serviceAccountName": NAME,
        "hostNetwork": true,
        "priorityClassName": "system-node-critical",
        "containers": [container(layers, &o.image, None)],
        "tolerations": tolerations()
    });
    if control_plane {
        spec["affinity"] = json!({
            "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [
                { "matchExpressions": [{ "key": "node-role.kubernetes.io/control-plane", "operator": "Exists" }] },
                { "matchExpressions": [{ "key": "node-role.kubernetes.io/master", "operator": "Exists" }] }
            ] } }
        });
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

/// What vipd does with the API, and nothing more.
pub fn cluster_role_rules() -> Value {
    json!([
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]
        },
        {
            "apiGroups": ["", "events.k8s.io"],
            "resources": ["events"],
            "verbs": ["create", "patch"]
        },
        {
            "apiGroups": [""],
            "resources": ["services"],
            "verbs": ["get", "list", "watch", "patch"]
        },
        {
            "apiGroups": [""],
            "resources": ["services/status"],
            "verbs": ["patch"]
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"]
        },
        {
            "apiGroups": [""],
            "resources": ["nodes"],
            "verbs": ["list", "watch"]
        }
    ])
}

/// The pools ConfigMap is read in its own namespace only.
pub fn pools_role_rules() -> Value {
    json!([{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"] }])
}

/// ServiceAccount, ClusterRole and ClusterRoleBinding, and a Role for the
/// pools ConfigMap in kube-system.
pub fn rbac() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": { "name": NAME, "namespace": NAMESPACE }
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": { "name": NAME },
            "rules": cluster_role_rules()
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": { "name": NAME },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME },
            "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE }]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": "vipd-pools", "namespace": NAMESPACE },
            "rules": pools_role_rules()
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": "vipd-pools", "namespace": NAMESPACE },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vipd-pools" },
            "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE }]
        }),
    ]
}

/// Documents as one multi-document YAML text.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("JSON values serialise"))
        .collect::<Vec<_>>()
        .join("---\n")
}
