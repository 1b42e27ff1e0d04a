//! Host routes (/32, /128) and peers, as GoBGP's messages.

use std::fmt;
use std::net::IpAddr;

use prost::Message;
use prost_types::Any;

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
}

fn any<M: Message>(type_name: &str, m: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/apipb.{type_name}"),
        value: m.encode_to_vec(),
    }
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

/// The path announcing `addr` as a host route. The next hop is left to
/// gobgpd (0.0.0.0 / ::): it uses the session's local address.
pub fn host_path(addr: IpAddr, attrs: &RouteAttrs) -> api::Path {
    let prefix = api::IpAddressPrefix {
        prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        prefix: addr.to_string(),
    };
    let nlri = any("IPAddressPrefix", &prefix);
    let mut pattrs = vec![any("OriginAttribute", &api::OriginAttribute { origin: 0 })];
    match addr {
        IpAddr::V4(_) => {
            pattrs.push(any(
                "NextHopAttribute",
                &api::NextHopAttribute {
                    next_hop: "0.0.0.0".into(),
                },
            ));
        }
        IpAddr::V6(_) => pattrs.push(any(
            "MpReachNLRIAttribute",
            &api::MpReachNlriAttribute {
                family: Some(family_of(addr)),
                next_hops: vec!["::".into()],
                nlris: vec![nlri.clone()],
            },
        )),
    }
    if !attrs.communities.is_empty() {
        pattrs.push(any(
            "CommunitiesAttribute",
            &api::CommunitiesAttribute {
                communities: attrs.communities.clone(),
            },
        ));
    }
    if let Some(lp) = attrs.local_pref {
        pattrs.push(any(
            "LocalPrefAttribute",
            &api::LocalPrefAttribute { local_pref: lp },
        ));
    }
    api::Path {
        nlri: Some(nlri),
        pattrs,
        family: Some(family_of(addr)),
        ..Default::default()
    }
}

/// The prefix a path announces, if it is a unicast host route.
pub fn path_prefix(p: &api::Path) -> Option<IpAddr> {
    let nlri = p.nlri.as_ref()?;
    if !nlri.type_url.ends_with(".IPAddressPrefix") {
        return None;
    }
    let prefix = api::IpAddressPrefix::decode(nlri.value.as_slice()).ok()?;
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

    #[test]
    fn ipv4_host_route() {
        let attrs = RouteAttrs {
            communities: vec![(65000 << 16) | 100],
            local_pref: Some(200),
        };
        let p = host_path("198.51.100.100".parse().unwrap(), &attrs);
        assert_eq!(path_prefix(&p), Some("198.51.100.100".parse().unwrap()));
        let urls: Vec<&str> = p.pattrs.iter().map(|a| a.type_url.as_str()).collect();
        assert_eq!(
            urls,
            vec![
                "type.googleapis.com/apipb.OriginAttribute",
                "type.googleapis.com/apipb.NextHopAttribute",
                "type.googleapis.com/apipb.CommunitiesAttribute",
                "type.googleapis.com/apipb.LocalPrefAttribute",
            ]
        );
        let c = api::CommunitiesAttribute::decode(p.pattrs[2].value.as_slice()).unwrap();
        assert_eq!(c.communities, vec![(65000 << 16) | 100]);
        assert_eq!(p.family.unwrap().afi, api::family::Afi::Ip as i32);
    }

    #[test]
    fn ipv6_host_route_uses_mp_reach() {
        let p = host_path("2001:db8::100".parse().unwrap(), &RouteAttrs::default());
        assert_eq!(path_prefix(&p), Some("2001:db8::100".parse().unwrap()));
        assert_eq!(p.pattrs.len(), 2);
        let mp = api::MpReachNlriAttribute::decode(p.pattrs[1].value.as_slice()).unwrap();
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
        };
        let p = peer(&cfg, 65000);
        assert_eq!(
            p.afi_safis[0].config.as_ref().unwrap().family.unwrap().afi,
            api::family::Afi::Ip6 as i32
        );
        assert_eq!(p.conf.as_ref().unwrap().auth_password, "s3cret");
        assert_eq!(p.transport.as_ref().unwrap().remote_port, 1179);
        assert_eq!(p.ebgp_multihop.unwrap().multihop_ttl, 4);
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}
