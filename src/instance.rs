//! Each vipd publishes itself in the cluster, so `vipctl status` can tell
//! which node really holds which address without logging into any node.
//!
//! The record is a Lease `vipd-instance-<node>` in vipd's namespace
//! (`cp_namespace`): its holder is the node, its renew time says the
//! instance is alive (renewed every 10 s, and at once when what it holds
//! changes), and annotations carry what it holds, whether it is ready, its
//! status URL and its BGP peers. A stopping vipd deletes its record.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::debug;

use crate::netlink::Netlink;
use crate::services::guard::{HostFacts, PublishedFacts};
use crate::status::Status;

pub const LABEL: &str = "vipd.dev/instance";
pub const HELD: &str = "vipd.dev/held";
pub const STRAY: &str = "vipd.dev/stray";
pub const READY: &str = "vipd.dev/ready";
pub const STATUS_URL: &str = "vipd.dev/status-url";
pub const VERSION: &str = "vipd.dev/version";
pub const CP_VIPS: &str = "vipd.dev/control-plane-vips";
pub const BGP_PEERS: &str = "vipd.dev/bgp-peers";
/// What this host's kernel says is not vipd's to take (JSON; see
/// `services::guard::HostFacts`).
pub const RESERVED: &str = "vipd.dev/reserved";
/// `arp` or `bgp`: with BGP, several nodes hold an address on purpose (ECMP).
pub const MODE: &str = "vipd.dev/mode";
/// Seconds after which a record not renewed means the instance is gone.
pub const STALE_AFTER: i32 = 30;
const RENEW: Duration = Duration::from_secs(10);

pub fn lease_name(node: &str) -> String {
    format!("vipd-instance-{node}")
}

fn record(status: &Status, status_url: Option<&str>, host: Option<&HostFacts>) -> Lease {
    let doc = status.document();
    let held: Vec<String> = doc
        .addresses
        .iter()
        .map(|h| h.address.to_string())
        .collect();
    let mut ann = BTreeMap::new();
    ann.insert(HELD.to_string(), held.join(","));
    let stray: Vec<String> = doc.stray_addresses.iter().map(IpAddr::to_string).collect();
    ann.insert(STRAY.to_string(), stray.join(","));
    ann.insert(READY.to_string(), doc.ready.to_string());
    ann.insert(VERSION.to_string(), doc.version.clone());
    if let Some(u) = status_url {
        ann.insert(STATUS_URL.to_string(), u.to_string());
    }
    if let Some(cp) = &doc.control_plane {
        let v: Vec<String> = cp.vips.iter().map(IpAddr::to_string).collect();
        ann.insert(CP_VIPS.to_string(), v.join(","));
    }
    if let Some(h) = host {
        ann.insert(RESERVED.to_string(), h.to_annotation());
    }
    ann.insert(
        MODE.to_string(),
        if status.bgp_mode() { "bgp" } else { "arp" }.to_string(),
    );
    if !doc.bgp_peers.is_empty() {
        ann.insert(
            BGP_PEERS.to_string(),
            serde_json::to_string(&doc.bgp_peers).unwrap_or_default(),
        );
    }
    let mut l = Lease::default();
    l.metadata.name = Some(lease_name(&status.node));
    l.metadata.labels = Some(BTreeMap::from([
        (LABEL.to_string(), "true".to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "vipd".to_string(),
        ),
    ]));
    l.metadata.annotations = Some(ann);
    l.spec = Some(LeaseSpec {
        holder_identity: Some(status.node.clone()),
        lease_duration_seconds: Some(STALE_AFTER),
        renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        ..Default::default()
    });
    l
}

/// What another vipd's record tells the address guard; None for records
/// that are not vipd's instance records.
pub fn published_facts(l: &Lease) -> Option<PublishedFacts> {
    let node = l.spec.as_ref()?.holder_identity.clone()?;
    let ann = l.metadata.annotations.as_ref()?;
    Some(PublishedFacts {
        node,
        control_plane_vips: ann
            .get(CP_VIPS)
            .map(|v| crate::services::model::parse_ips(v))
            .unwrap_or_default(),
        host: ann
            .get(RESERVED)
            .map(|v| HostFacts::from_annotation(v))
            .unwrap_or_default(),
    })
}

/// Where another vipd's status server listens, from its record: its node
/// and the host and port of its status URL. None for records without one.
pub fn status_address(l: &Lease) -> Option<(String, std::net::SocketAddr)> {
    let node = l.spec.as_ref()?.holder_identity.clone()?;
    let url = l.metadata.annotations.as_ref()?.get(STATUS_URL)?;
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    Some((node, authority.parse().ok()?))
}

/// Keeps this instance's record current until `shutdown`, then deletes it.
/// `netlink` reads the host facts the record publishes.
pub async fn run(
    client: Client,
    namespace: String,
    status: Arc<Status>,
    status_url: Option<String>,
    netlink: Netlink,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let name = lease_name(&status.node);
    let mut held = status.vips.held();
    let params = PatchParams::apply("vipd").force();
    loop {
        let host = match netlink.host_facts().await {
            Ok(h) => Some(h),
            Err(e) => {
                debug!(error = %e, "cannot read this host's addresses for the record");
                None
            }
        };
        let l = record(&status, status_url.as_deref(), host.as_ref());
        let patch = Patch::Apply(&l);
        let write = api.patch(&name, &params, &patch);
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .unwrap_or_else(|_| {
                Err(kube::Error::Service(Box::new(std::io::Error::other(
                    "timed out",
                ))))
            })
        {
            debug!(error = %e, "could not publish this instance's record; retrying");
        }
        let stop = tokio::select! {
            _ = tokio::time::sleep(RENEW) => false,
            r = held.changed() => r.is_err(),
            _ = shutdown.changed() => true,
        };
        if stop || *shutdown.borrow() {
            break;
        }
        // Let a burst of changes settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        api.delete(&name, &DeleteParams::default()),
    )
    .await;
}

/// The URL of this node's `/status` as other hosts reach it: the status
/// server's address, or this node's first own address on `interface`.
pub fn status_url(bind: std::net::SocketAddr, own: Option<IpAddr>) -> Option<String> {
    let ip = if bind.ip().is_unspecified() {
        own?
    } else {
        bind.ip()
    };
    let host = match ip {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    };
    Some(format!("http://{host}:{}/status", bind.port()))
}
