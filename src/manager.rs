//! `vipd manager`: checks the host, starts the address owner, then the
//! elections that claim addresses, and on SIGTERM takes everything down in
//! the safe order (withdraw addresses, then release Leases).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use kube::Api;
use tracing::{info, warn};

use crate::config::{Config, Election};
use crate::controlplane::{self, VipLeadership};
use crate::election::reported::Reported;
use crate::election::LeaseElection;
use crate::events::Events;
use crate::netlink::Netlink;
use crate::status::{self, ControlPlaneInfo, Status};
use crate::vips::{self, OwnerConfig, Source};
use crate::{instance, kubeclient, services, shutdown};
use std::sync::Arc;

/// Runs until SIGTERM / SIGINT.
pub async fn run(config: Config) -> Result<()> {
    // Every check first: nothing on the host changes if the configuration is wrong.
    let netlink = Netlink::connect().context("opening netlink")?;
    let interface = pick_interface(&netlink, config.interface.as_deref(), "vip_interface").await?;
    let control_plane = match &config.control_plane {
        Some(cp) => {
            let addrs = controlplane::resolve(&cp.addresses).await?;
            let client = match &cp.election {
                Election::Lease(_) => {
                    Some(kubeclient::connect(config.kubeconfig.as_deref()).await?)
                }
                Election::None => None,
            };
            Some((cp, addrs, client))
        }
        None => None,
    };
    let services_client = match &config.services {
        Some(_) => Some(
            match control_plane.as_ref().and_then(|(_, _, c)| c.clone()) {
                Some(c) => c,
                None => kubeclient::connect(config.kubeconfig.as_deref()).await?,
            },
        ),
        None => None,
    };
    let shutdown = shutdown::on_signal()?;

    let vips = vips::start(
        netlink.clone(),
        OwnerConfig {
            announce: config.announce,
            arp_rate: config.arp_rate,
            lifetime: config.addr_lifetime,
            watch: control_plane
                .as_ref()
                .map(|(_, a, _)| a.clone())
                .unwrap_or_default(),
        },
    )
    .await
    .context("starting the address owner")?;
    info!(node = %config.node_name, interface = %interface, "vipd started");

    let client = control_plane
        .as_ref()
        .and_then(|(_, _, c)| c.clone())
        .or(services_client);
    let events = client
        .clone()
        .map(|c| Arc::new(Events::new(c, &config.node_name)));
    let cp_info = control_plane
        .as_ref()
        .map(|(cp, addrs, _)| ControlPlaneInfo {
            vips: addrs.clone(),
            election: match &cp.election {
                Election::Lease(_) => "lease".into(),
                Election::None => "none".into(),
            },
            lease: match &cp.election {
                Election::Lease(l) => Some(format!("{}/{}", l.namespace, l.name)),
                Election::None => None,
            },
        });
    let status = Arc::new(Status::new(&config.node_name, vips.clone(), cp_info));

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(client) = client.clone() {
        let namespace = config
            .control_plane
            .as_ref()
            .and_then(|cp| match &cp.election {
                Election::Lease(l) => Some(l.namespace.clone()),
                Election::None => None,
            })
            .or_else(|| config.services.as_ref().map(|s| s.lease.namespace.clone()))
            .unwrap_or_else(|| "kube-system".into());
        let own = own_address(&netlink, &interface).await;
        let url = config
            .status_addr
            .and_then(|a| instance::status_url(a, own));
        tasks.spawn(instance::run(
            client,
            namespace,
            status.clone(),
            url,
            shutdown.clone(),
        ));
    }
    if let Some(addr) = config.status_addr {
        tokio::spawn(status::server::serve(
            addr,
            status.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(port) = config.health_port {
        tokio::spawn(status::server::serve_health(port, shutdown.clone()));
    }
    if let Some((cp, addrs, client)) = control_plane {
        let claims = controlplane::claims(&addrs, config.subnets, &interface);
        let (leader_tx, _leader_rx) = tokio::sync::watch::channel(None);
        match (&cp.election, client) {
            (Election::Lease(lease), Some(client)) => {
                let election = LeaseElection {
                    api: Api::namespaced(client, &lease.namespace),
                    name: lease.name.clone(),
                    me: config.node_name.clone(),
                    timing: lease.timing,
                    acquire_delay: Duration::ZERO,
                    labels: Default::default(),
                };
                info!(
                    lease = %format!("{}/{}", lease.namespace, lease.name),
                    vip = ?addrs,
                    duration = ?lease.timing.lease_duration,
                    renew_deadline = ?lease.timing.renew_deadline,
                    retry = ?lease.timing.retry_period,
                    "control-plane VIP: Lease election"
                );
                let leadership = Reported {
                    inner: VipLeadership {
                        vips: vips.clone(),
                        claims,
                        leader: leader_tx,
                        me: config.node_name.clone(),
                    },
                    status: status.clone(),
                    lease: format!("{}/{}", lease.namespace, lease.name),
                    me: config.node_name.clone(),
                    events: events.clone(),
                };
                tasks.spawn(election.run(leadership, shutdown.clone()));
            }
            _ => {
                warn!("vip_leaderelection is off: this node holds the VIP unconditionally (single node only)");
                vips.set(Source::ControlPlane, claims, None).await;
            }
        }
    }

    if let (Some(svc), Some(client), Some(events)) =
        (&config.services, client.clone(), events.clone())
    {
        info!(
            lease = %format!("{}/{}", svc.lease.namespace, svc.lease.name),
            per_address_election = svc.per_address_election,
            pools = %format!("{}/{}", svc.pool_configmap.0, svc.pool_configmap.1),
            "LoadBalancer Services"
        );
        let ctx = services::Context {
            events,
            client,
            config: svc.clone(),
            me: config.node_name.clone(),
            default_interface: interface.clone(),
            subnets: config.subnets,
            vips: vips.clone(),
            status: status.clone(),
        };
        tasks.spawn(services::run(ctx, shutdown.clone()));
    }

    let mut stop = shutdown.clone();
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    // Elections withdraw their claims and release their Leases.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        warn!("elections did not stop within 5 s");
    }
    vips.release_all().await;
    info!("stopped");
    Ok(())
}

/// This node's own address on `interface` (not one vipd added), IPv4 first.
async fn own_address(netlink: &Netlink, interface: &str) -> Option<std::net::IpAddr> {
    let link = netlink.link_by_name(interface).await.ok()??;
    let mut addrs: Vec<std::net::IpAddr> = netlink
        .addresses()
        .await
        .ok()?
        .into_iter()
        .filter(|k| k.ifindex == link.index && !k.ours)
        .map(|k| k.addr)
        .filter(|a| match a {
            std::net::IpAddr::V6(v) => (v.segments()[0] & 0xffc0) != 0xfe80,
            _ => true,
        })
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.first().copied()
}

/// The named interface, checked; or the default route's.
async fn pick_interface(netlink: &Netlink, name: Option<&str>, setting: &str) -> Result<String> {
    match name {
        Some(n) => match netlink.link_by_name(n).await? {
            Some(_) => Ok(n.to_string()),
            None => bail!("invalid configuration: {setting}={n:?}: no such interface on this node"),
        },
        None => match netlink.default_route_interface().await? {
            Some(n) => {
                info!(interface = %n, "{setting} not set: using the default route's interface");
                Ok(n)
            }
            None => bail!("invalid configuration: {setting} is not set and this node has no default route: set {setting}"),
        },
    }
}
