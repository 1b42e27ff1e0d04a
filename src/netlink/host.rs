//! This host's own facts, read from the kernel: the interface to use, the
//! address others reach this node on, the BGP router ID, and what the
//! Services guard must never take (`host_facts`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::bail;
use futures::stream::TryStreamExt;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::RouteMessageBuilder;
use tracing::info;

use super::{addr_from, Netlink, Result};
use crate::config::Config;
use crate::services::guard::HostFacts;

/// What vipd must know of this host before it starts.
pub struct Host {
    /// Where addresses go (`vip_interface`, else `lo` with BGP, else the
    /// default route's interface).
    pub interface: String,
    /// BGP mode: the router ID.
    pub router_id: Option<Ipv4Addr>,
}

impl Host {
    /// Reads and checks this host's part of `config`: an interface that is
    /// missing or a router ID that cannot be found is a configuration error.
    pub async fn probe(netlink: &Netlink, config: &Config) -> anyhow::Result<Host> {
        // BGP announces routes: the addresses need no segment, so `lo` by default.
        let default_if = config.bgp.as_ref().map(|_| "lo");
        let interface = pick_interface(
            netlink,
            config.interface.as_deref().or(default_if),
            "vip_interface",
        )
        .await?;
        let router_id = match &config.bgp {
            Some(b) => Some(router_id(netlink, b).await?),
            None => None,
        };
        Ok(Host {
            interface,
            router_id,
        })
    }

    /// Where others reach this node: its address on the VIP interface, or
    /// (BGP with the VIPs on `lo`) on the router interface, or its router ID.
    pub async fn reachable_at(&self, netlink: &Netlink, config: &Config) -> Option<IpAddr> {
        let router_if = config.bgp.as_ref().and_then(|b| b.router_interface.clone());
        let mut own = own_address(netlink, &self.interface).await;
        if let (None, Some(i)) = (own, router_if) {
            own = own_address(netlink, &i).await;
        }
        own.or(self.router_id.map(IpAddr::V4))
    }
}

impl Netlink {
    /// The interface of the default route (IPv4 first, then IPv6).
    pub async fn default_route_interface(&self) -> Result<Option<String>> {
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = {
                let _turn = self.dumping.lock().await;
                self.handle.route().get(msg).execute().try_collect().await?
            };
            for r in routes {
                if r.header.destination_prefix_length != 0 {
                    continue;
                }
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
                    _ => None,
                });
                if let Some(i) = oif {
                    if let Some(l) = self.link_by_index(i).await? {
                        return Ok(Some(l.name));
                    }
                }
            }
        }
        Ok(None)
    }

    /// What this host's kernel says is not vipd's to take (see
    /// `services::guard`): every address vipd did not add (but loopback and
    /// link-local ones), the network and broadcast addresses of their
    /// subnets, and the default gateways.
    pub async fn host_facts(&self) -> Result<HostFacts> {
        let mut names: std::collections::HashMap<u32, String> = Default::default();
        let mut facts = HostFacts::default();
        let msgs: Vec<AddressMessage> = {
            let _turn = self.dumping.lock().await;
            self.handle.address().get().execute().try_collect().await?
        };
        for k in msgs.iter().filter_map(addr_from).filter(|k| !k.ours) {
            if is_local_only(k.addr) {
                continue;
            }
            let name = match names.get(&k.ifindex) {
                Some(n) => n.clone(),
                None => {
                    let n = self
                        .link_by_index(k.ifindex)
                        .await?
                        .map(|l| l.name)
                        .unwrap_or_else(|| format!("interface {}", k.ifindex));
                    names.insert(k.ifindex, n.clone());
                    n
                }
            };
            facts.add_subnet(k.addr, k.prefix, &name);
        }
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = {
                let _turn = self.dumping.lock().await;
                self.handle.route().get(msg).execute().try_collect().await?
            };
            for r in routes
                .iter()
                .filter(|r| r.header.destination_prefix_length == 0)
            {
                let mut oif = None;
                let mut gateways = Vec::new();
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::Gateway(g) => gateways.extend(route_ip(g)),
                        RouteAttribute::MultiPath(hops) => {
                            for h in hops {
                                for a in &h.attributes {
                                    if let RouteAttribute::Gateway(g) = a {
                                        gateways.extend(route_ip(g));
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let via = match oif {
                    Some(i) => match self.link_by_index(i).await? {
                        Some(l) => format!(" of {}", l.name),
                        None => String::new(),
                    },
                    None => String::new(),
                };
                for g in gateways.into_iter().filter(|g| !is_local_only(*g)) {
                    facts.reserve(g, format!("the default gateway{via}"));
                }
            }
        }
        Ok(facts)
    }
}

/// The BGP router ID: `bgp_routerid`, else the IPv4 address of
/// `bgp_routerinterface`, else of the default route's interface.
async fn router_id(netlink: &Netlink, b: &crate::config::BgpConfig) -> anyhow::Result<Ipv4Addr> {
    if let Some(id) = b.router_id {
        return Ok(id);
    }
    let iface = match &b.router_interface {
        Some(i) => pick_interface(netlink, Some(i), "bgp_routerinterface").await?,
        None => pick_interface(netlink, None, "bgp_routerid").await?,
    };
    match own_address(netlink, &iface).await {
        Some(IpAddr::V4(v4)) => Ok(v4),
        _ => bail!("invalid configuration: bgp_routerid is not set and {iface} has no IPv4 address: set bgp_routerid"),
    }
}

/// This node's own address on `interface` (not one vipd added, not
/// loopback or link-local), IPv4 first.
async fn own_address(netlink: &Netlink, interface: &str) -> Option<IpAddr> {
    let link = netlink.link_by_name(interface).await.ok()??;
    let mut addrs: Vec<IpAddr> = netlink
        .addresses()
        .await
        .ok()?
        .into_iter()
        .filter(|k| k.ifindex == link.index && !k.ours)
        .map(|k| k.addr)
        .filter(|a| match a {
            IpAddr::V6(v) => (v.segments()[0] & 0xffc0) != 0xfe80 && !v.is_loopback(),
            IpAddr::V4(v) => !v.is_loopback(),
        })
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.first().copied()
}

/// The named interface, checked; or the default route's.
async fn pick_interface(
    netlink: &Netlink,
    name: Option<&str>,
    setting: &str,
) -> anyhow::Result<String> {
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
            None => bail!(
                "invalid configuration: {setting} is not set and this node has no default route: set {setting}"
            ),
        },
    }
}

/// Loopback and link-local addresses: never a Service's anyway, and
/// meaningless outside this host or link.
fn is_local_only(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v.is_loopback() || v.is_link_local(),
        IpAddr::V6(v) => v.is_loopback() || (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn route_ip(a: &rtnetlink::packet_route::route::RouteAddress) -> Option<IpAddr> {
    use rtnetlink::packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}
