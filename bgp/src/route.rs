//! Host routes (/32, /128) and peers, as GoBGP's messages.

use std::fmt;
use std::net::IpAddr;

use std::time::Duration;

use crate::api;

/// Attributes of an announced route.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RouteAttrs {
    /// Standard communities, `AS:value` packed in 32 bits.
    pub communities: Vec<u32>,
    /// LOCAL_PREF (meaningful on iBGP sessions only).
    pub local_pref: Option<u32>,
}

/// Parses `65000:100` (or a plain 32-bit number) into a standard community.
pub fn parse_community(s: &str) -> Result<u32, String> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once(':') {
        let a: u16 = a
            .parse()
            .map_err(|_| format!("{s:?}: the AS part must be 0-65535"))?;
        let b: u16 = b
            .parse()
            .map_err(|_| format!("{s:?}: the value part must be 0-65535"))?;
        Ok((u32::from(a) << 16) | u32::from(b))
    } else {
        s.parse()
            .map_err(|_| format!("{s:?} is not a community (AS:VALUE)"))
    }
}

/// Formats a community as `AS:value`.
pub fn format_community(c: u32) -> String {
    format!("{}:{}", c >> 16, c & 0xffff)
}

/// A BGP password; never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<none>"
        } else {
            "<redacted>"
        })
    }
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub asn: u32,
    pub password: Password,
    /// eBGP multihop TTL (None: directly connected).
    pub multihop_ttl: Option<u8>,
    /// The peer's port (None: 179).
    pub port: Option<u16>,
    /// Local address or interface for the session.
    pub source_ip: Option<IpAddr>,
    pub source_if: Option<String>,
    pub hold_time: u64,
    pub keepalive: u64,
    /// BFD on this session (single-hop, RFC 5881); None: off.
    pub bfd: Option<Bfd>,
}

/// BFD timing: a packet every `interval` both ways; the session is down
/// after `multiplier` intervals without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bfd {
    pub interval: Duration,
    pub multiplier: u8,
}

impl Bfd {
    /// How long a silent peer takes to be declared down.
    pub fn detection_time(&self) -> Duration {
        self.interval * u32::from(self.multiplier)
    }
}

fn attr(a: api::attribute::Attr) -> api::Attribute {
    api::Attribute { attr: Some(a) }
}

pub fn family_of(ip: IpAddr) -> api::Family {
    api::Family {
        afi: if ip.is_ipv4() {
            api::family::Afi::Ip as i32
        } else {
            api::family::Afi::Ip6 as i32
        },
        safi: api::family::Safi::Unicast as i32,
    }
}

fn host_nlri(addr: IpAddr) -> api::Nlri {
    api::Nlri {
        nlri: Some(api::nlri::Nlri::Prefix(api::IpAddressPrefix {
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
            prefix: addr.to_string(),
        })),
    }
}

/// The path announcing `addr` as a host route. The next hop is left to
/// gobgpd (0.0.0.0 / ::): it uses the session's local address.
pub fn host_path(addr: IpAddr, attrs: &RouteAttrs) -> api::Path {
    use api::attribute::Attr;
    let mut pattrs = vec![attr(Attr::Origin(api::OriginAttribute { origin: 0 }))];
    match addr {
        IpAddr::V4(_) => pattrs.push(attr(Attr::NextHop(api::NextHopAttribute {
            next_hop: "0.0.0.0".into(),
        }))),
        IpAddr::V6(_) => pattrs.push(attr(Attr::MpReach(api::MpReachNlriAttribute {
            family: Some(family_of(addr)),
            next_hops: vec!["::".into()],
            nlris: vec![host_nlri(addr)],
        }))),
    }
    if !attrs.communities.is_empty() {
        pattrs.push(attr(Attr::Communities(api::CommunitiesAttribute {
            communities: attrs.communities.clone(),
        })));
    }
    if let Some(lp) = attrs.local_pref {
        pattrs.push(attr(Attr::LocalPref(api::LocalPrefAttribute {
            local_pref: lp,
        })));
    }
    api::Path {
        nlri: Some(host_nlri(addr)),
        pattrs,
        family: Some(family_of(addr)),
        ..Default::default()
    }
}

/// The prefix a path announces, if it is a unicast host route.
pub fn path_prefix(p: &api::Path) -> Option<IpAddr> {
    let Some(api::nlri::Nlri::Prefix(prefix)) = p.nlri.as_ref()?.nlri.as_ref() else {
        return None;
    };
    let ip: IpAddr = prefix.prefix.parse().ok()?;
    let host = if ip.is_ipv4() { 32 } else { 128 };
    (prefix.prefix_len == host).then_some(ip)
}

/// The GoBGP peer for `p`, with only its own address family enabled (IPv4
/// routes over IPv4 sessions, IPv6 over IPv6).
pub fn peer(p: &PeerConfig, local_asn: u32) -> api::Peer {
    api::Peer {
        conf: Some(api::PeerConf {
            neighbor_address: p.address.to_string(),
            peer_asn: p.asn,
            local_asn,
            auth_password: p.password.0.clone(),
            ..Default::default()
        }),
        ebgp_multihop: p.multihop_ttl.map(|ttl| api::EbgpMultihop {
            enabled: true,
            multihop_ttl: u32::from(ttl),
        }),
        timers: Some(api::Timers {
            config: Some(api::TimersConfig {
                hold_time: p.hold_time,
                keepalive_interval: p.keepalive,
                // Reconnect quickly after a peer or gobgpd restart.
                connect_retry: 2,
                idle_hold_time_after_reset: 1,
                ..Default::default()
            }),
            ..Default::default()
        }),
        transport: Some(api::Transport {
            local_address: p.source_ip.map(|a| a.to_string()).unwrap_or_default(),
            bind_interface: p.source_if.clone().unwrap_or_default(),
            remote_port: p.port.map(u32::from).unwrap_or(0),
            ..Default::default()
        }),
        afi_safis: vec![api::AfiSafi {
            config: Some(api::AfiSafiConfig {
                family: Some(family_of(p.address)),
                enabled: true,
            }),
            ..Default::default()
        }],
        bfd: p.bfd.map(|b| {
            // GoBGP counts BFD intervals in microseconds.
            let us = u32::try_from(b.interval.as_micros()).unwrap_or(u32::MAX);
            api::BfdPeerConfig {
                enabled: true,
                desired_minimum_tx_interval: us,
                required_minimum_receive: us,
                detection_multiplier: u32::from(b.multiplier),
                port: 0,
            }
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities() {
        assert_eq!(parse_community("65000:100"), Ok((65000 << 16) | 100));
        assert_eq!(parse_community("42"), Ok(42));
        assert!(parse_community("70000:1").is_err());
        assert!(parse_community("a:b").is_err());
        assert_eq!(format_community((64512 << 16) | 7), "64512:7");
    }

    fn kinds(p: &api::Path) -> Vec<&'static str> {
        use api::attribute::Attr;
        p.pattrs
            .iter()
            .map(|a| match a.attr.as_ref() {
                Some(Attr::Origin(_)) => "origin",
                Some(Attr::NextHop(_)) => "next-hop",
                Some(Attr::MpReach(_)) => "mp-reach",
                Some(Attr::Communities(_)) => "communities",
                Some(Attr::LocalPref(_)) => "local-pref",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn ipv4_host_route() {
        let attrs = RouteAttrs {
            communities: vec![(65000 << 16) | 100],
            local_pref: Some(200),
        };
        let p = host_path("198.51.100.100".parse().unwrap(), &attrs);
        assert_eq!(path_prefix(&p), Some("198.51.100.100".parse().unwrap()));
        assert_eq!(
            kinds(&p),
            vec!["origin", "next-hop", "communities", "local-pref"]
        );
        let Some(api::attribute::Attr::Communities(c)) = p.pattrs[2].attr.as_ref() else {
            panic!()
        };
        assert_eq!(c.communities, vec![(65000 << 16) | 100]);
        assert_eq!(p.family.unwrap().afi, api::family::Afi::Ip as i32);
    }

    #[test]
    fn ipv6_host_route_uses_mp_reach() {
        let p = host_path("2001:db8::100".parse().unwrap(), &RouteAttrs::default());
        assert_eq!(path_prefix(&p), Some("2001:db8::100".parse().unwrap()));
        assert_eq!(kinds(&p), vec!["origin", "mp-reach"]);
        let Some(api::attribute::Attr::MpReach(mp)) = p.pattrs[1].attr.as_ref() else {
            panic!()
        };
        assert_eq!(mp.next_hops, vec!["::".to_string()]);
        assert_eq!(mp.nlris.len(), 1);
        assert_eq!(mp.family.unwrap().afi, api::family::Afi::Ip6 as i32);
    }

    #[test]
    fn peer_carries_its_family_and_secrets_stay_hidden() {
        let cfg = PeerConfig {
            address: "2001:db8::1".parse().unwrap(),
            asn: 64512,
            password: Password("s3cret".into()),
            multihop_ttl: Some(4),
            port: Some(1179),
            source_ip: None,
            source_if: None,
            hold_time: 9,
            keepalive: 3,
            bfd: None,
        };
        let p = peer(&cfg, 65000);
        assert!(p.bfd.is_none());
        assert_eq!(
            p.afi_safis[0].config.as_ref().unwrap().family.unwrap().afi,
            api::family::Afi::Ip6 as i32
        );
        assert_eq!(p.conf.as_ref().unwrap().auth_password, "s3cret");
        assert_eq!(p.transport.as_ref().unwrap().remote_port, 1179);
        assert_eq!(p.ebgp_multihop.unwrap().multihop_ttl, 4);
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn bfd_timing_is_sent_in_microseconds() {
        let cfg = PeerConfig {
            address: "192.0.2.1".parse().unwrap(),
            asn: 64512,
            password: Password::default(),
            multihop_ttl: None,
            port: None,
            source_ip: None,
            source_if: None,
            hold_time: 30,
            keepalive: 10,
            bfd: Some(Bfd {
                interval: Duration::from_millis(100),
                multiplier: 3,
            }),
        };
        let b = peer(&cfg, 65000).bfd.unwrap();
        assert!(b.enabled);
        assert_eq!(b.desired_minimum_tx_interval, 100_000);
        assert_eq!(b.required_minimum_receive, 100_000);
        assert_eq!(b.detection_multiplier, 3);
        assert_eq!(
            cfg.bfd.unwrap().detection_time(),
            Duration::from_millis(300)
        );
    }
}
