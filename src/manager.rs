//! `vipd manager`: checks the host, starts the address owner, then the
//! elections that claim addresses and the Services controller, and on
//! SIGTERM takes everything down in the safe order (withdraw addresses,
//! then release Leases / hand Raft leadership over).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Config, Election};
use crate::controlplane;
use crate::events::Events;
use crate::netlink::{Host, Netlink};
use crate::status::{self, ControlPlaneInfo, Status};
use crate::vips::{self, Lifetimes, OwnerConfig};
use crate::{instance, kubeclient, services, shutdown};

/// Runs until SIGTERM / SIGINT, or until a part fails for good.
pub async fn run(config: Config) -> Result<()> {
    // Every check first: nothing on the host changes if the configuration is wrong.
    let _one_per_node = crate::singleton::acquire()?;
    let netlink = Netlink::connect().context("opening netlink")?;
    let host = Host::probe(&netlink, &config).await?;
    let (interface, router_id) = (host.interface.clone(), host.router_id);
    let cp_vips = match &config.control_plane {
        Some(cp) => controlplane::resolve(&cp.addresses).await?,
        None => Vec::new(),
    };
    let needs_api = config.services.is_some()
        || matches!(
            config.control_plane.as_ref().map(|c| &c.election),
            Some(Election::Lease(_))
        );
    // Raft and BGP control planes run without the API; with credentials
    // they still publish their instance record for `vipctl status`.
    let credentials = kubeclient::discover_agent_credentials(
        config
            .kubeconfig
            .as_deref()
            .map(|p| (p, "from k8s_config_file")),
    );
    info!(credentials = ?credentials, "Kubernetes credentials");
    let clients = match kubeclient::connect_to(&credentials).await {
        Ok(c) => Some(c),
        Err(e) if needs_api => return Err(e),
        Err(e) => {
            info!(reason = %crate::error_chain::chain(&e), "no Kubernetes API: running without it (vipctl status will not list this node)");
            None
        }
    };
    let client = clients.as_ref().map(|c| c.main.clone());
    let election_client = clients.as_ref().map(|c| c.elections.clone());
    let api_server = clients.as_ref().and_then(|c| c.server);
    let shutdown = shutdown::on_signal()?;
    if let Some(c) = &client {
        kubeclient::ensure_namespace(c, &config.namespace).await;
    }

    let vips = vips::start(
        netlink.clone(),
        OwnerConfig {
            announce: config.announce,
            arp_rate: config.arp_rate,
            lifetimes: Lifetimes {
                control_plane: config.addr_lifetime,
                services: config.services.as_ref().and_then(|s| s.addr_lifetime),
            },
            watch: cp_vips.clone(),
            guardian: true,
        },
    )
    .await
    .context("starting the address owner")?;
    info!(
        version = %env!("CARGO_PKG_VERSION"),
        node = %config.node_name,
        mode = %match config.announce {
            crate::config::Announce::Arp => "arp",
            crate::config::Announce::Bgp => "bgp",
        },
        election = %election_summary(&config),
        interface = %interface,
        vip = %if cp_vips.is_empty() {
            "none".to_string()
        } else {
            cp_vips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        },
        services = %match &config.services {
            Some(s) if s.placement && s.per_address_election => "on (addresses placed on live nodes)",
            Some(s) if s.per_address_election => "on (a Lease per address)",
            Some(_) => "on",
            None => "off",
        },
        status = %config.status_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        settings = %config.sources,
        "vipd started"
    );

    let events = client
        .clone()
        .map(|c| Arc::new(Events::new(c, &config.node_name)));
    let cp_info = config.control_plane.as_ref().map(|cp| ControlPlaneInfo {
        vips: cp_vips.clone(),
        election: match &cp.election {
            Election::Lease(_) => "lease".into(),
            Election::Raft(_) => "raft".into(),
            Election::None => "none".into(),
        },
        lease: match &cp.election {
            Election::Lease(l) => Some(format!("{}/{}", l.namespace, l.name)),
            _ => None,
        },
    });
    let status = Arc::new(Status::new(&config.node_name, vips.clone(), cp_info));
    let bgp = match (&config.bgp, router_id) {
        (Some(b), Some(id)) => {
            let bgp = crate::bgp::start(b, id, &vips, status.clone());
            status.set_speaker(bgp.speaker.status());
            Some(bgp)
        }
        _ => None,
    };
    let route = config
        .bgp
        .as_ref()
        .map(|b| b.attrs.clone())
        .unwrap_or_default();
    // A part that fails for good (Raft cannot bind its port...) stops vipd.
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(1);

    let mut tasks = tokio::task::JoinSet::new();
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
    if let Some(client) = client.clone() {
        let own = host.reachable_at(&netlink, &config).await;
        let url = config
            .status_addr
            .and_then(|a| instance::status_url(a, own));
        if url.is_none() && config.status_addr.is_some() {
            warn!(
                interface = %interface,
                "no address of this node found on the interface: vipctl status will show this node's record only, not its live status"
            );
        }
        let ns = config.namespace.clone();
        tasks.spawn(instance::run(
            client,
            ns,
            status.clone(),
            url,
            netlink.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(cp) = &config.control_plane {
        let claims = controlplane::claims(&cp_vips, config.subnets, &interface, &route);
        let parts = controlplane::Parts {
            vips: &vips,
            status: &status,
            events: &events,
            me: &config.node_name,
        };
        match &config.bgp {
            // BGP: every node announces while its API server is healthy.
            Some(b) => {
                info!(vip = ?cp_vips, url = %b.health_url, "control-plane VIP: announced by BGP while the local API server is healthy");
                tasks.spawn(controlplane::health_gated(
                    b.health_url.clone(),
                    vips.clone(),
                    claims,
                    shutdown.clone(),
                ));
            }
            None => {
                controlplane::start(
                    cp,
                    claims,
                    election_client.clone(),
                    parts,
                    &mut tasks,
                    shutdown.clone(),
                    fatal_tx.clone(),
                )
                .await
            }
        }
    }
    if let (Some(svc), Some(client), Some(election_client), Some(events)) = (
        &config.services,
        client.clone(),
        election_client.clone(),
        events.clone(),
    ) {
        info!(
            lease = %format!("{}/{}", svc.lease.namespace, svc.lease.name),
            per_address_election = svc.per_address_election,
            placement = svc.placement,
            pools = %format!("{}/{}", svc.pool_configmap.0, svc.pool_configmap.1),
            "LoadBalancer Services"
        );
        let ctx = services::Context {
            events,
            client,
            election_client,
            config: svc.clone(),
            me: config.node_name.clone(),
            default_interface: interface.clone(),
            subnets: config.subnets,
            vips: vips.clone(),
            status: status.clone(),
            bgp: config.bgp.as_ref().map(|b| b.attrs.clone()),
            control_plane_vips: cp_vips.clone(),
            api_server,
            instance_namespace: config.namespace.clone(),
            netlink: netlink.clone(),
        };
        tasks.spawn(services::run(ctx, shutdown.clone()));
    }

    let mut stop = shutdown.clone();
    let failure = tokio::select! {
        _ = stop.wait_for(|s| *s) => None,
        f = fatal_rx.recv() => f,
    };
    // Elections withdraw their claims and release their Leases.
    if failure.is_some() {
        tasks.abort_all();
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        warn!("elections did not stop within 5 s");
    }
    vips.release_all().await;
    if let Some(b) = bgp {
        b.stop().await;
    }
    match failure {
        Some(f) => bail!("{f}"),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

/// How the control-plane VIP's holder is chosen, in a word and its Lease.
fn election_summary(config: &Config) -> String {
    match (&config.control_plane, &config.bgp) {
        (None, _) => "none (no control-plane VIP)".into(),
        (Some(_), Some(_)) => "none (BGP: every healthy node announces)".into(),
        (Some(cp), None) => match &cp.election {
            Election::Lease(l) => format!("lease {}/{}", l.namespace, l.name),
            Election::Raft(r) => format!("raft {}", r.peers),
            Election::None => "none (this node holds the VIP)".into(),
        },
    }
}
