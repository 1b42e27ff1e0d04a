//! The Services pass's inputs that are not plain caches: the pools (the
//! last good ConfigMap), this host's own facts, and the address guard built
//! from them, the Nodes and every vipd's published facts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use tracing::{info, warn};

use super::guard::{Guard, NodeAddresses, PublishedFacts};
use super::model::NodeInfo;
use super::pools::Pools;
use super::Controller;

impl Controller {
    /// Re-reads this host's addresses, gateways and subnets (at most once
    /// a second; every resync). Failing, the last ones stay.
    pub(super) async fn refresh_host_facts(&mut self) {
        if self
            .host_read_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        match self.ctx.netlink.host_facts().await {
            Ok(h) => {
                self.host = h;
                self.host_read_at = Some(Instant::now());
            }
            Err(e) => warn!(error = %e, "cannot read this host's addresses for the address guard"),
        }
    }

    /// Every address no Service may have, as this node knows them now.
    pub(super) fn guard(&self, nodes: &[NodeInfo]) -> Guard {
        let addrs: Vec<NodeAddresses> = nodes
            .iter()
            .map(|n| NodeAddresses {
                name: n.name.clone(),
                internal: n.internal.clone(),
                external: n.external.clone(),
            })
            .collect();
        let published: Vec<PublishedFacts> = self
            .informers
            .instances
            .state()
            .iter()
            .filter_map(|l| crate::instance::published_facts(l))
            .collect();
        Guard::build(
            &self.ctx.control_plane_vips,
            self.ctx.api_server,
            &addrs,
            &published,
            &self.ctx.me,
            Some(&self.host),
        )
    }

    /// Re-reads the pools when the ConfigMap changed; a bad one is reported
    /// (Event on the ConfigMap, log) and the last good pools stay.
    pub(super) async fn refresh_pools(&mut self) {
        let cm: Option<Arc<ConfigMap>> = self.informers.pools.state().into_iter().next();
        let version = cm
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone());
        if version == self.pools_version {
            return;
        }
        self.pools_version = version;
        let Some(cm) = cm else {
            self.pools = Pools::default();
            return;
        };
        let data: BTreeMap<String, String> =
            cm.data.clone().unwrap_or_default().into_iter().collect();
        match Pools::parse(&data) {
            Ok(p) => {
                info!(configmap = ?self.ctx.config.pool_configmap, "address pools loaded");
                self.pools = p;
            }
            Err(errors) => {
                let note = format!(
                    "invalid pool configuration, keeping the last good pools: {}",
                    errors.join("; ")
                );
                warn!(configmap = ?self.ctx.config.pool_configmap, "{note}");
                if self.leader_grant().is_some() {
                    self.ctx
                        .events
                        .publish(&cm.object_ref(&()), true, "InvalidPoolConfig", note);
                }
            }
        }
    }
}
