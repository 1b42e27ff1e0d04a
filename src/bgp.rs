//! BGP mode: vipd's gobgpd and speaker, fed with the addresses the owner
//! really holds (so a route is never announced for an address this node
//! does not have), and reporting session states to the status.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;
use vipd_bgp::speaker::Routes;
use vipd_bgp::{GlobalConfig, Speaker, SpeakerHandle};

use crate::config::BgpConfig;
use crate::status::{PeerDoc, Status};
use crate::vips::VipHandle;

pub struct Bgp {
    pub speaker: SpeakerHandle,
    stop_gobgpd: watch::Sender<bool>,
    gobgpd: Option<tokio::task::JoinHandle<()>>,
}

/// Starts gobgpd (unless external) and the speaker.
pub fn start(cfg: &BgpConfig, router_id: Ipv4Addr, vips: &VipHandle, status: Arc<Status>) -> Bgp {
    let (stop_gobgpd, stop_rx) = watch::channel(false);
    let gobgpd = (!cfg.external).then(|| {
        tokio::spawn(vipd_bgp::supervisor::run(
            cfg.gobgpd.clone(),
            cfg.api.clone(),
            stop_rx,
        ))
    });
    let speaker = Speaker {
        api: cfg.api.clone(),
        global: GlobalConfig {
            asn: cfg.asn,
            router_id,
        },
        peers: cfg.peers.clone(),
    }
    .spawn();
    info!(asn = cfg.asn, %router_id, peers = cfg.peers.len(), external = cfg.external, "BGP mode");
    for p in &cfg.peers {
        match (&p.bfd, p.multihop_ttl) {
            (Some(b), _) => {
                info!(peer = %p.address, interval = ?b.interval, multiplier = b.multiplier, detection = ?b.detection_time(), "BFD on this BGP session")
            }
            (None, Some(_)) => {
                info!(peer = %p.address, "no BFD on this multihop BGP session (GoBGP's BFD is single-hop, RFC 5881): a dead node's routes stay until the hold time")
            }
            (None, None) => {
                info!(peer = %p.address, "BFD off (bgp_bfd=false): a dead node's routes stay until the hold time")
            }
        }
    }

    // Routes follow what the owner holds, with each claim's attributes.
    let mut held = vips.held();
    let s = speaker.clone();
    tokio::spawn(async move {
        loop {
            let routes: Routes = {
                let h = held.borrow_and_update();
                h.addresses
                    .keys()
                    .map(|a| (*a, h.routes.get(a).cloned().unwrap_or_default()))
                    .collect()
            };
            s.set_routes(routes);
            if held.changed().await.is_err() {
                return;
            }
        }
    });
    // Sessions go to the status.
    let ports: Vec<(std::net::IpAddr, u16)> = cfg
        .peers
        .iter()
        .map(|p| (p.address, p.port.unwrap_or(179)))
        .collect();
    let mut st = speaker.status();
    tokio::spawn(async move {
        loop {
            let peers = st
                .borrow_and_update()
                .peers
                .iter()
                .map(|p| PeerDoc {
                    address: p.address.to_string(),
                    asn: p.asn,
                    state: p.state.clone(),
                    prefixes_sent: p.prefixes_sent,
                    port: ports
                        .iter()
                        .find(|(a, _)| *a == p.address)
                        .map(|(_, port)| *port)
                        .unwrap_or(179),
                    bfd: p.bfd.clone(),
                })
                .collect();
            status.set_bgp_peers(peers);
            if st.changed().await.is_err() {
                return;
            }
        }
    });
    Bgp {
        speaker,
        stop_gobgpd,
        gobgpd,
    }
}

impl Bgp {
    /// Withdraws every route, then stops gobgpd (its sessions close with a
    /// NOTIFICATION, so peers drop whatever is left at once).
    pub async fn stop(mut self) {
        self.speaker.stop(Duration::from_secs(3)).await;
        let _ = self.stop_gobgpd.send(true);
        if let Some(t) = self.gobgpd.take() {
            let _ = tokio::time::timeout(Duration::from_secs(4), t).await;
        }
    }
}

/// Why BGP is not ready: held addresses not yet announced, no session up.
pub fn not_ready(held: &crate::vips::Held, s: &vipd_bgp::speaker::SpeakerStatus) -> Vec<String> {
    let mut out = Vec::new();
    if !s.connected {
        out.push("gobgpd is not reachable".to_string());
    }
    if !s.peers.iter().any(|p| p.established) {
        out.push("no BGP session is established".to_string());
    }
    for a in held.addresses.keys() {
        if !s.announced.contains(a) {
            out.push(format!("{a} is not announced by BGP yet"));
        }
    }
    out
}
