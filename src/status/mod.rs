//! What this vipd knows about itself, for operators and monitoring.
//!
//! [`Status`] is the one place the status server reads: the address owner's
//! view of held addresses and readiness, the elections' state, the Services
//! controller's summary. Components write their part; the server only reads
//! and never decides. [`server`] serves `/metrics`, `/healthz`, `/readyz` and
//! `/status` (the JSON [`StatusDoc`] that `vipctl status --local` reads).

pub mod kube_vip_metrics;
pub mod metrics;
pub mod server;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::vips::{Readiness, VipHandle};

/// [`ElectionState::lease`] of the Raft election (it has no Lease).
pub const RAFT_ELECTION: &str = "raft";

/// One election as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ElectionState {
    /// `namespace/name` of the Lease (or [`RAFT_ELECTION`]).
    pub lease: String,
    pub leading: bool,
    /// The holder as last seen.
    pub holder: Option<String>,
    /// Times this node started or stopped leading.
    pub transitions: u64,
    pub since: SystemTime,
}

/// One Service address this node announces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Announced {
    pub address: IpAddr,
    pub services: Vec<String>,
}

/// The Services controller's summary, as of its last pass.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServicesSummary {
    pub served: usize,
    pub ready: usize,
    pub pending: usize,
    /// Assigned but announced by nobody (no eligible node).
    pub withdrawn: usize,
    pub announced_here: Vec<Announced>,
    pub problems_by_reason: BTreeMap<String, u64>,
    pub reconcile_errors: u64,
    pub reconciles: u64,
    /// The newest resourceVersion among the Services the last pass read:
    /// that pass decided on every change up to it (tests wait on this
    /// rather than on time).
    #[serde(default)]
    pub services_version: u64,
    /// With placement and `svc_peer_links`: this node's link to each other
    /// vipd (`up` or `down: why`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peer_links: BTreeMap<String, String>,
    pub last_reconcile_ms: f64,
    /// Failed writes per Service and what failed: (namespace, name, what, count).
    #[serde(default)]
    pub reconcile_errors_by_service: Vec<(String, String, String, u64)>,
    /// Service watch events by type (ADDED, MODIFIED, DELETED).
    #[serde(default)]
    pub watch_events: Vec<(String, u64)>,
}

/// The control-plane VIP's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ControlPlaneInfo {
    pub vips: Vec<IpAddr>,
    /// `lease`, `raft` or `none`.
    pub election: String,
    pub lease: Option<String>,
}

/// An address held, for the document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeldDoc {
    pub address: IpAddr,
    pub interface: String,
    pub since: SystemTime,
    pub ours: bool,
}

/// A BGP peer's session, as the speaker reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerDoc {
    pub address: String,
    pub asn: u32,
    pub state: String,
    pub prefixes_sent: u64,
    /// The peer's BGP port.
    #[serde(default = "bgp_port")]
    pub port: u16,
    /// The BFD session's state, when BFD runs on this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
}

fn bgp_port() -> u16 {
    179
}

impl PeerDoc {
    /// `192.0.2.1 established`, with `bfd up` when BFD runs.
    pub fn summary(&self) -> String {
        match &self.bfd {
            Some(b) => format!("{} {} (bfd {b})", self.address, self.state),
            None => format!("{} {}", self.address, self.state),
        }
    }
}

/// The JSON status document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusDoc {
    pub node: String,
    pub version: String,
    pub uptime_seconds: f64,
    pub ready: bool,
    /// Why not ready, when not.
    pub not_ready: Vec<String>,
    pub not_ready_total: u64,
    pub last_not_ready: Option<NotReadyDoc>,
    pub control_plane: Option<ControlPlaneInfo>,
    pub elections: Vec<ElectionState>,
    pub addresses: Vec<HeldDoc>,
    /// VIPs present on this node although it does not claim them.
    pub stray_addresses: Vec<IpAddr>,
    /// Addresses claimed for Services that this node refuses to hold, and why.
    #[serde(default)]
    pub refused_addresses: BTreeMap<IpAddr, String>,
    /// Addresses let go because another node announced them while this
    /// node could not renew its Lease (the API server out of reach).
    #[serde(default)]
    pub yielded_addresses: BTreeMap<IpAddr, String>,
    /// Claimed addresses not added yet: another host may still hold them.
    #[serde(default)]
    pub probing_addresses: BTreeMap<IpAddr, String>,
    pub services: Option<ServicesSummary>,
    pub announcements_sent: u64,
    /// Conflict probes sent while holding without a renewed Lease.
    #[serde(default)]
    pub conflict_probes: u64,
    pub announcement_errors: u64,
    pub bgp_peers: Vec<PeerDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotReadyDoc {
    pub at: SystemTime,
    pub reason: String,
    pub lasted_ms: Option<f64>,
}

/// The shared status.
pub struct Status {
    pub node: String,
    pub started: SystemTime,
    pub vips: VipHandle,
    pub control_plane: Option<ControlPlaneInfo>,
    elections: Mutex<BTreeMap<String, ElectionState>>,
    services: Mutex<Option<ServicesSummary>>,
    bgp: Mutex<Vec<PeerDoc>>,
    /// BGP mode: the speaker, whose routes count for readiness.
    speaker: Mutex<Option<watch::Receiver<vipd_bgp::speaker::SpeakerStatus>>>,
    pub metrics: metrics::Histograms,
}

impl Status {
    pub fn new(node: &str, vips: VipHandle, control_plane: Option<ControlPlaneInfo>) -> Status {
        Status {
            node: node.to_string(),
            started: SystemTime::now(),
            vips,
            control_plane,
            elections: Mutex::new(BTreeMap::new()),
            services: Mutex::new(None),
            bgp: Mutex::new(Vec::new()),
            speaker: Mutex::new(None),
            metrics: metrics::Histograms::default(),
        }
    }

    /// Records a change of leadership (or of the observed holder); returns
    /// whether the holder changed.
    pub fn election(&self, lease: &str, leading: bool, holder: Option<&str>) -> bool {
        let mut e = self.elections.lock().expect("not poisoned");
        let entry = e.entry(lease.to_string()).or_insert_with(|| ElectionState {
            lease: lease.to_string(),
            leading: false,
            holder: None,
            transitions: 0,
            since: SystemTime::now(),
        });
        if entry.leading != leading {
            entry.transitions += 1;
            entry.since = SystemTime::now();
        }
        entry.leading = leading;
        let changed = entry.holder.as_deref() != holder;
        entry.holder = holder.map(String::from);
        changed
    }

    pub fn elections(&self) -> Vec<ElectionState> {
        self.elections
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn set_services(&self, s: ServicesSummary) {
        *self.services.lock().expect("not poisoned") = Some(s);
    }

    pub fn services(&self) -> Option<ServicesSummary> {
        self.services.lock().expect("not poisoned").clone()
    }

    pub fn set_bgp_peers(&self, peers: Vec<PeerDoc>) {
        *self.bgp.lock().expect("not poisoned") = peers;
    }

    pub fn bgp_peers(&self) -> Vec<PeerDoc> {
        self.bgp.lock().expect("not poisoned").clone()
    }

    /// Whether this vipd announces by BGP.
    pub fn bgp_mode(&self) -> bool {
        self.speaker.lock().expect("not poisoned").is_some()
    }

    pub fn set_speaker(&self, s: watch::Receiver<vipd_bgp::speaker::SpeakerStatus>) {
        *self.speaker.lock().expect("not poisoned") = Some(s);
    }

    /// Readiness: every claimed address on its interface and, in BGP mode,
    /// announced with a session established.
    pub fn readiness(&self) -> Readiness {
        let held = self.vips.held().borrow().clone();
        let mut r = held.readiness.clone();
        if let Some(s) = self.speaker.lock().expect("not poisoned").as_ref() {
            let missing = crate::bgp::not_ready(&held, &s.borrow());
            if !missing.is_empty() {
                r.ready = false;
                r.missing.extend(missing);
            }
        }
        r
    }

    pub fn document(&self) -> StatusDoc {
        let r = self.readiness();
        let held = self.vips.held().borrow().clone();
        let counts = self.vips.counts();
        StatusDoc {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self
                .started
                .elapsed()
                .unwrap_or(Duration::ZERO)
                .as_secs_f64(),
            ready: r.ready,
            not_ready: r.missing.clone(),
            not_ready_total: r.not_ready_total,
            last_not_ready: r.last_not_ready.map(|n| NotReadyDoc {
                at: n.at,
                reason: n.reason,
                lasted_ms: n.lasted_ms,
            }),
            control_plane: self.control_plane.clone(),
            elections: self.elections(),
            addresses: held
                .addresses
                .values()
                .map(|h| HeldDoc {
                    address: h.addr,
                    interface: h.interface.clone(),
                    since: h.since,
                    ours: h.ours,
                })
                .collect(),
            stray_addresses: held.stray.iter().copied().collect(),
            refused_addresses: held.refused.clone(),
            yielded_addresses: held.yielded.clone(),
            probing_addresses: held.probing.clone(),
            services: self.services(),
            announcements_sent: counts.sent,
            conflict_probes: counts.probes,
            announcement_errors: counts.errors,
            bgp_peers: self.bgp_peers(),
        }
    }
}
