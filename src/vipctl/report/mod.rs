//! The cluster-wide report behind `vipctl status`: [`gather`] reads the
//! API (vipd's instance records, the control-plane Lease, Services and
//! their Events) and each instance's live `/status` where it answers;
//! [`judge`] (pure) decides every state and problem from that.

mod judge;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::Client;

pub use judge::{judge, Gathered, InstanceRow, Report, ServiceRow, Unanswered, VipRow};

use super::http::get_json;
use crate::instance;
use crate::status::StatusDoc;

/// Where to look.
pub struct Scope {
    /// vipd's namespace (instance records, control-plane Lease).
    pub vipd_namespace: String,
    pub lease: String,
    /// Services of this namespace only, or all.
    pub namespace: Option<String>,
}

/// Where vipd keeps its Leases when the user did not say: the namespace
/// of vipd's manifests, else kube-vip's default, whichever has vipd's
/// records or the control-plane Lease.
pub async fn find_vipd_namespace(client: &Client, lease: &str) -> String {
    for ns in [
        crate::manifest::NAMESPACE,
        crate::config::settings::DEFAULT_NAMESPACE,
    ] {
        let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
        let records = leases
            .list(&ListParams::default().labels(instance::LABEL).limit(1))
            .await
            .map(|l| !l.items.is_empty())
            .unwrap_or(false);
        if records || leases.get_opt(lease).await.ok().flatten().is_some() {
            return ns.to_string();
        }
    }
    crate::manifest::NAMESPACE.to_string()
}

/// Reads everything the report needs.
pub async fn collect(client: Client, scope: &Scope) -> Result<Gathered> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &scope.vipd_namespace);
    let records = leases
        .list(&ListParams::default().labels(instance::LABEL))
        .await?
        .items;
    let mut live = BTreeMap::new();
    for r in &records {
        let ann = r.metadata.annotations.clone().unwrap_or_default();
        if let Some(url) = ann.get(instance::STATUS_URL) {
            let doc = get_json::<StatusDoc>(url, Duration::from_secs(1))
                .await
                .map_err(|e| Unanswered {
                    refused: e.chain().any(|c| {
                        c.downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                    }),
                    why: crate::error_chain::chain(&e),
                });
            live.insert(r.metadata.name.clone().unwrap_or_default(), doc);
        }
    }
    let cp_lease = leases.get_opt(&scope.lease).await?;
    let svcs: Api<Service> = match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let events: Api<Event> = match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Ok(Gathered {
        now: k8s_openapi::jiff::Timestamp::now(),
        records,
        live,
        cp_lease,
        services: svcs.list(&ListParams::default()).await?.items,
        events: events.list(&ListParams::default()).await?.items,
    })
}

/// Gathers and judges.
pub async fn gather(client: Client, scope: &Scope) -> Result<Report> {
    Ok(judge(&collect(client, scope).await?))
}
