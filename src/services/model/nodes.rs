//! What the Services controller reads from Nodes (labels, addresses) and
//! EndpointSlices (which nodes have a ready endpoint).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{keys, SvcKey};

/// A node's labels and addresses that matter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    /// The value of `svccontroller.k3s.cattle.io/enablelb`, when the label
    /// is there (whatever its value: see `eligibility`).
    pub enablelb: Option<String>,
    pub lbpool: Option<String>,
    /// `status.addresses` of type InternalIP and ExternalIP.
    pub internal: Vec<IpAddr>,
    pub external: Vec<IpAddr>,
}

impl NodeInfo {
    pub fn from_node(n: &Node) -> Option<NodeInfo> {
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let of_type = |t: &str| -> Vec<IpAddr> {
            n.status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .map(|a| {
                    a.iter()
                        .filter(|a| a.type_ == t)
                        .filter_map(|a| a.address.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(NodeInfo {
            internal: of_type("InternalIP"),
            external: of_type("ExternalIP"),
            name: n.metadata.name.clone()?,
            enablelb: labels.get(keys::SERVICELB_ENABLE).cloned(),
            lbpool: labels.get(keys::SERVICELB_POOL).cloned(),
        })
    }
}

/// Nodes with a ready endpoint, per Service.
pub type ReadyNodes = BTreeMap<SvcKey, BTreeSet<String>>;

/// Adds the ready endpoints' nodes of one EndpointSlice to `out`.
pub fn add_ready_nodes(slice: &EndpointSlice, out: &mut ReadyNodes) {
    let Some(ns) = slice.metadata.namespace.clone() else {
        return;
    };
    let Some(svc) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::SERVICE_NAME_LABEL))
        .cloned()
    else {
        return;
    };
    let entry = out
        .entry(SvcKey {
            namespace: ns,
            name: svc,
        })
        .or_default();
    for ep in slice.endpoints.iter().flatten() {
        // A missing condition means ready (discovery.k8s.io/v1).
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if let (true, Some(node)) = (ready, ep.node_name.as_ref()) {
            entry.insert(node.clone());
        }
    }
}
