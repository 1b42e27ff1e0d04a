//! The control-plane VIP: whoever wins the election (Lease or Raft) claims
//! the VIP addresses; losing, stepping down or shutting down withdraws
//! them. With BGP there is no election: every node claims the VIP while its
//! local API server is healthy (`health_gated`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::{AddressSpec, ControlPlane, Election, RaftSettings, Subnets};
use crate::election::reported::Reported;
use crate::election::{Leadership, LeaseElection};
use crate::events::Events;
use crate::status::{self, Status};
use crate::vips::{Claim, Source, VipHandle};

/// Resolves the configured VIPs (DNS names once, at start).
pub async fn resolve(specs: &[AddressSpec]) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for s in specs {
        match s {
            AddressSpec::Ip(ip) => out.push(*ip),
            AddressSpec::Name(name) => {
                let addrs: Vec<IpAddr> = tokio::net::lookup_host((name.as_str(), 0))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "invalid configuration: address={name:?}: cannot resolve: {e}"
                        )
                    })?
                    .map(|a| a.ip())
                    .collect();
                let Some(first) = addrs.first() else {
                    bail!("invalid configuration: address={name:?}: the name has no address");
                };
                info!(name = %name, addr = %first, "resolved the VIP's name");
                out.push(*first);
            }
        }
    }
    Ok(out)
}

/// The claims of the control-plane VIP on `interface`.
pub fn claims(
    vips: &[IpAddr],
    subnets: Subnets,
    interface: &str,
    route: &vipd_bgp::RouteAttrs,
) -> Vec<Claim> {
    vips.iter()
        .map(|a| Claim {
            route: route.clone(),
            until_silent: false,
            addr: *a,
            prefix: subnets.for_ip(*a),
            interface: interface.to_string(),
        })
        .collect()
}

/// Connects an election to the address owner.
pub struct VipLeadership {
    pub vips: VipHandle,
    pub claims: Vec<Claim>,
    /// Add the VIP only once no other host answers for it (Raft: the
    /// election outpaces the kernel lifetime of a dead holder's address).
    pub probe_first: bool,
}

impl Leadership for VipLeadership {
    async fn started(&mut self, hold_until: Instant) {
        self.vips
            .claim(
                Source::ControlPlane,
                self.claims.clone(),
                Some(hold_until),
                self.probe_first,
            )
            .await;
    }

    async fn started_unopposed(&mut self, hold_until: Instant) {
        // Nobody else can hold the VIP (see `LeaderEvent::Started`):
        // nothing to wait for on the wire.
        self.vips
            .claim(
                Source::ControlPlane,
                self.claims.clone(),
                Some(hold_until),
                false,
            )
            .await;
    }

    fn renewed(&mut self, hold_until: Instant) {
        self.vips.extend(Source::ControlPlane, hold_until);
    }

    fn holding(&mut self, hold_until: Instant) {
        self.vips.hold_unconfirmed(Source::ControlPlane, hold_until);
    }

    async fn stopped(&mut self) {
        self.vips.release(Source::ControlPlane).await;
    }
}

/// Claims the control-plane VIP while `url` is healthy, withdraws it when
/// not, and at shutdown.
pub async fn health_gated(
    url: String,
    vips: VipHandle,
    claims: Vec<Claim>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut healthy = crate::health::watch_health(url, shutdown.clone());
    loop {
        if *healthy.borrow_and_update() {
            vips.set(Source::ControlPlane, claims.clone(), None).await;
        } else {
            vips.release(Source::ControlPlane).await;
        }
        tokio::select! {
            r = healthy.changed() => if r.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    vips.release(Source::ControlPlane).await;
}

/// What elections share.
pub struct Parts<'a> {
    pub vips: &'a VipHandle,
    pub status: &'a Arc<Status>,
    pub events: &'a Option<Arc<Events>>,
    pub me: &'a str,
}

/// Starts the control-plane VIP's election (Lease or Raft) in `tasks`;
/// without one, claims the VIP for good.
pub async fn start(
    cp: &ControlPlane,
    claims: Vec<Claim>,
    client: Option<Client>,
    p: Parts<'_>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: watch::Receiver<bool>,
    fatal: mpsc::Sender<String>,
) {
    let vips_of: Vec<IpAddr> = claims.iter().map(|c| c.addr).collect();
    let leadership = |lease: String| Reported {
        inner: VipLeadership {
            vips: p.vips.clone(),
            claims: claims.clone(),
            probe_first: matches!(cp.election, Election::Raft(_)),
        },
        status: p.status.clone(),
        lease,
        me: p.me.to_string(),
        events: p.events.clone(),
    };
    match (&cp.election, client) {
        (Election::Lease(lease), Some(client)) => {
            let election = LeaseElection {
                api: Api::namespaced(client, &lease.namespace),
                name: lease.name.clone(),
                me: p.me.to_string(),
                timing: lease.timing,
                acquire_delay: crate::election::fixed_delay(Duration::ZERO),
                labels: Default::default(),
            };
            info!(
                lease = %format!("{}/{}", lease.namespace, lease.name),
                vip = ?vips_of,
                duration = ?lease.timing.lease_duration,
                renew_deadline = ?lease.timing.renew_deadline,
                retry = ?lease.timing.retry_period,
                "control-plane VIP: Lease election"
            );
            let l = leadership(format!("{}/{}", lease.namespace, lease.name));
            tasks.spawn(election.run(l, shutdown));
        }
        (Election::Raft(raft), _) => {
            info!(vip = ?vips_of, peers = %raft.peers, "control-plane VIP: Raft election");
            let cfg = raft_config(raft, p.me);
            let l = leadership(status::RAFT_ELECTION.into());
            let (events, told) = mpsc::unbounded_channel();
            tasks.spawn(async move {
                // The loop decides; `follow_raft` acts on what it tells.
                let (result, ()) = tokio::join!(
                    vipd_raft::run(cfg, events, shutdown),
                    crate::election::follow_raft(told, l)
                );
                if let Err(e) = result {
                    error!("{e}");
                    let _ = fatal.send(format!("Raft: {e}")).await;
                }
            });
        }
        _ => {
            warn!("no election (vip_leaderelection and vip_raft are off): this node holds the VIP unconditionally (single node only)");
            p.vips.set(Source::ControlPlane, claims, None).await;
        }
    }
}

fn raft_config(r: &RaftSettings, me: &str) -> vipd_raft::RaftConfig {
    vipd_raft::RaftConfig {
        me: me.to_string(),
        peers: r.peers.clone(),
        tick: r.tick,
        heartbeat_ticks: r.heartbeat_ticks,
        election_ticks: r.election_ticks,
        state_dir: r.state_dir.clone(),
        secret: r.secret.clone(),
        compact_after: 0,
    }
}
