//! What the caches keep of each object: only the fields vipd reads, cut
//! before the object enters the store. On a real cluster most of a watched
//! object is what vipd never looks at: `managedFields`, kubectl's
//! last-applied copy of the whole object, a Node's image list, conditions
//! and K3s' annotations, an endpoint's addresses, zone and target. Pure
//! functions, applied to every watch event. (Services are not kept as
//! objects at all: see `cache`.)

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// kubectl apply's copy of the whole object, in an annotation.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Metadata without the server's field-ownership records and kubectl's
/// last-applied copy.
fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// A Node keeps its name, labels (K3s' ServiceLB labels) and
/// `status.addresses` (the guard's InternalIP / ExternalIP).
pub fn node(n: &mut Node) {
    trim_meta(&mut n.metadata);
    n.metadata.annotations = None;
    n.spec = None;
    n.status = n.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        ..Default::default()
    });
}

/// An EndpointSlice keeps its Service label and, per endpoint, its node
/// and whether it is ready.
pub fn slice(s: &mut EndpointSlice) {
    trim_meta(&mut s.metadata);
    s.metadata.annotations = None;
    s.ports = None;
    s.endpoints = s.endpoints.take().map(|eps| {
        eps.into_iter()
            .map(|e| Endpoint {
                conditions: e.conditions.map(|c| EndpointConditions {
                    ready: c.ready,
                    ..Default::default()
                }),
                node_name: e.node_name,
                ..Default::default()
            })
            .collect()
    });
}

/// A Lease keeps everything but field ownership (its spec is small and
/// all of it is read).
pub fn lease(l: &mut Lease) {
    trim_meta(&mut l.metadata);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::{add_ready_nodes, NodeInfo, ReadyNodes};

    fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn managed() -> serde_json::Value {
        serde_json::json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:ports": {}}}}])
    }

    #[test]
    fn a_trimmed_node_keeps_labels_and_addresses_only() {
        let mut n: Node = json(serde_json::json!({
            "metadata": {"name": "n1", "managedFields": managed(),
                "labels": {"svccontroller.k3s.cattle.io/enablelb": "true"},
                "annotations": {"k3s.io/node-args": "[\"server\",\"--disable\",\"servicelb\"]"}},
            "spec": {"podCIDR": "10.42.0.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.11"},
                              {"type": "ExternalIP", "address": "203.0.113.11"},
                              {"type": "Hostname", "address": "n1"}],
                "images": [{"names": ["docker.io/rancher/mirrored-pause:3.6"], "sizeBytes": 301463}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                    "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""}}
        }));
        let before = NodeInfo::from_node(&n);
        node(&mut n);
        assert_eq!(NodeInfo::from_node(&n), before);
        assert_eq!(
            before.unwrap().external,
            vec!["203.0.113.11".parse::<std::net::IpAddr>().unwrap()]
        );
        let st = n.status.as_ref().unwrap();
        assert!(st.images.is_none() && st.conditions.is_none() && st.node_info.is_none());
        assert!(n.spec.is_none() && n.metadata.annotations.is_none());
    }

    #[test]
    fn a_trimmed_slice_gives_the_same_ready_nodes() {
        let mut s: EndpointSlice = json(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default", "managedFields": managed(),
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 80, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "nodeName": "n1", "zone": "a",
                 "conditions": {"ready": true, "serving": true, "terminating": false},
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}},
                {"addresses": ["10.42.1.5"], "nodeName": "n2",
                 "conditions": {"ready": false}},
                {"addresses": ["10.42.2.5"], "nodeName": "n3"}]
        }));
        let mut before = ReadyNodes::new();
        add_ready_nodes(&s, &mut before);
        slice(&mut s);
        let mut after = ReadyNodes::new();
        add_ready_nodes(&s, &mut after);
        assert_eq!(after, before);
        assert_eq!(after.values().next().unwrap().len(), 2, "{after:?}");
        assert!(s
            .endpoints
            .iter()
            .flatten()
            .all(|e| e.addresses.is_empty() && e.target_ref.is_none()));
    }
}
