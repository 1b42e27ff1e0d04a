//! `vipd manifest rbac`: the ServiceAccount, roles and bindings vipd needs,
//! and nothing more (tests/manifests.rs checks each with SubjectAccessReviews).

use serde_json::{json, Value};

use super::{NAME, NAMESPACE, POOLS_NAME, POOLS_NAMESPACE};

/// What vipd does with the API across the cluster, and nothing more: it
/// reads Services, EndpointSlices and Nodes (never writes Nodes), writes
/// Services' annotations and status, and Events. No Secrets, no Leases.
pub fn cluster_role_rules() -> Value {
    json!([
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
            "verbs": ["get", "list", "watch"]
        }
    ])
}

/// Leases, in vipd's own namespace only: the elections, per-address
/// Leases and instance records.
pub fn lease_role_rules() -> Value {
    json!([{
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]
    }])
}

/// The pools ConfigMap, by name, read only.
pub fn pools_role_rules() -> Value {
    json!([{
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [POOLS_NAME],
        "verbs": ["get", "list", "watch"]
    }])
}

fn subject() -> Value {
    json!([{ "kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE }])
}

/// vipd's namespace and ServiceAccount; a ClusterRole for Services,
/// EndpointSlices, Nodes (read) and Events; a Role for Leases in vipd's
/// namespace; a Role for the pools ConfigMap in kube-system.
pub fn rbac() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": NAMESPACE }
        }),
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
            "subjects": subject()
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": "vipd-leases", "namespace": NAMESPACE },
            "rules": lease_role_rules()
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": "vipd-leases", "namespace": NAMESPACE },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vipd-leases" },
            "subjects": subject()
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": "vipd-pools", "namespace": POOLS_NAMESPACE },
            "rules": pools_role_rules()
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": "vipd-pools", "namespace": POOLS_NAMESPACE },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vipd-pools" },
            "subjects": subject()
        }),
    ]
}
