//! BGP mode settings: the local speaker, its peers, route attributes and
//! the gobgpd vipd drives. Passwords are never echoed in an error.

use std::net::IpAddr;
use std::path::PathBuf;

use super::reader::Reader;
use super::types::BgpConfig;
use super::values::parse_bool;

/// One entry of `bgp_peers`: `ADDRESS:AS:PASSWORD:MULTIHOP[:PORT]`, IPv6 in brackets.
pub fn parse_bgp_peer(item: &str) -> Result<(IpAddr, u32, String, bool, Option<u16>), String> {
    let (addr, rest) = if let Some(stripped) = item.strip_prefix('[') {
        let (a, rest) = stripped
            .split_once(']')
            .ok_or("unclosed [ of an IPv6 address")?;
        (a, rest.strip_prefix(':').unwrap_or(rest))
    } else {
        item.split_once(':')
            .ok_or("expected ADDRESS:AS:PASSWORD:MULTIHOP[:PORT]")?
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let parts: Vec<&str> = rest.split(':').collect();
    let asn: u32 = parts
        .first()
        .and_then(|a| a.trim().parse().ok())
        .filter(|a| *a > 0)
        .ok_or("the AS must be a number 1-4294967295")?;
    let password = parts.get(1).map(|s| s.to_string()).unwrap_or_default();
    let multihop = match parts.get(2).map(|s| s.trim()) {
        None | Some("") => false,
        Some(v) => parse_bool(v).ok_or("multihop must be true or false")?,
    };
    let port = match parts.get(3) {
        None => None,
        Some(p) => Some(
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or("the port must be 1-65535")?,
        ),
    };
    if parts.len() > 4 {
        return Err("too many fields (ADDRESS:AS:PASSWORD:MULTIHOP[:PORT])".into());
    }
    Ok((addr, asn, password, multihop, port))
}

/// `bgp_bfd`: not given means on for directly connected peers.
struct BfdSettings {
    wanted: Option<bool>,
    timing: vipd_bgp::Bfd,
}

impl BfdSettings {
    /// GoBGP runs single-hop BFD only (RFC 5881: port 3784, TTL 255): a
    /// multihop peer gets none, whatever `bgp_bfd` says.
    fn for_peer(&self, multihop: bool) -> Option<vipd_bgp::Bfd> {
        (self.wanted != Some(false) && !multihop).then_some(self.timing)
    }
}

fn bfd_settings(r: &Reader) -> BfdSettings {
    let wanted = r.string("bgp_bfd").map(|_| r.bool("bgp_bfd"));
    let interval = r.duration("bgp_bfd_interval", std::time::Duration::from_millis(100));
    if r.all_good(&["bgp_bfd_interval"])
        && (interval < std::time::Duration::from_millis(10)
            || interval > std::time::Duration::from_secs(10))
    {
        r.bad("bgp_bfd_interval", "must be between 10ms and 10s");
    }
    let multiplier = r.number("bgp_bfd_multiplier", 3u8, "a number 1-255");
    if multiplier == 0 {
        r.bad("bgp_bfd_multiplier", "must be 1-255");
    }
    BfdSettings {
        wanted,
        timing: vipd_bgp::Bfd {
            interval,
            multiplier: multiplier.max(1),
        },
    }
}

fn ip_setting<T: std::str::FromStr>(r: &Reader, env: &str, what: &str) -> Option<T> {
    let v = r.string(env)?;
    match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            r.bad(env, format!("expected {what}"));
            None
        }
    }
}

/// The BGP settings; `api_port` is the control-plane port (for the default
/// health URL).
pub(super) fn bgp_config(r: &Reader, api_port: u16) -> BgpConfig {
    let asn = r.number("bgp_as", 65000u32, "an AS number 1-4294967295");
    if asn == 0 {
        r.bad("bgp_as", "an AS number is 1-4294967295");
    }
    let router_id = ip_setting(r, "bgp_routerid", "an IPv4 address");
    let source_ip: Option<IpAddr> = ip_setting(r, "bgp_sourceip", "an IP address");
    let source_if = r.string("bgp_sourceif");
    if source_ip.is_some() && source_if.is_some() {
        r.problem("bgp_sourceip and bgp_sourceif", "set one or the other");
    }
    let hold_time = r.number("bgp_hold_time", 30u64, "seconds");
    let keepalive = r.number("bgp_keepalive_interval", 10u64, "seconds");
    if r.all_good(&["bgp_hold_time", "bgp_keepalive_interval"])
        && hold_time != 0
        && (hold_time < 3 || keepalive == 0 || keepalive * 3 > hold_time)
    {
        r.bad(
            "bgp_keepalive_interval",
            format!("must be at most a third of bgp_hold_time ({hold_time}s), and the hold time at least 3s"),
        );
    }
    let file_password =
        r.string("bgp_peerpass_file")
            .and_then(|path| match std::fs::read_to_string(&path) {
                Ok(s) => Some(s.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => {
                    r.bad("bgp_peerpass_file", format!("cannot read: {e}"));
                    None
                }
            });
    let bfd = bfd_settings(r);
    let mut peers = Vec::new();
    let make = |address: IpAddr, asn: u32, password: String, multihop: bool, port: Option<u16>| {
        vipd_bgp::PeerConfig {
            bfd: bfd.for_peer(multihop),
            address,
            asn,
            password: vipd_bgp::Password(if password.is_empty() {
                file_password.clone().unwrap_or_default()
            } else {
                password
            }),
            multihop_ttl: multihop.then_some(5),
            port,
            source_ip,
            source_if: source_if.clone(),
            hold_time,
            keepalive,
        }
    };
    if let Some(address) = ip_setting::<IpAddr>(r, "bgp_peeraddress", "an IP address") {
        let peer_as = r.number("bgp_peeras", 65000u32, "an AS number");
        let password = r.string("bgp_peerpass").unwrap_or_default();
        peers.push(make(
            address,
            peer_as,
            password,
            r.bool("bgp_multihop"),
            None,
        ));
    }
    if let Some(list) = r.string("bgp_peers") {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match parse_bgp_peer(item) {
                Ok((address, peer_as, password, multihop, port)) => {
                    peers.push(make(address, peer_as, password, multihop, port))
                }
                // Never echo the entry: it may hold a password.
                Err(m) => r.problem(
                    "bgp_peers (flag --bgppeers)",
                    format!("an entry for {}: {m}", item.split(':').next().unwrap_or("")),
                ),
            }
        }
    }
    if peers.is_empty() && r.all_good(&["bgp_peeraddress"]) && r.string("bgp_peers").is_none() {
        r.problem(
            "bgp_peeraddress / bgp_peers",
            "bgp_enable=true needs at least one peer",
        );
    }
    let mut attrs = vipd_bgp::RouteAttrs::default();
    if let Some(cs) = r.string("bgp_communities") {
        for c in cs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match vipd_bgp::route::parse_community(c) {
                Ok(c) => attrs.communities.push(c),
                Err(m) => r.bad("bgp_communities", m),
            }
        }
    }
    if r.string("bgp_local_pref").is_some() {
        attrs.local_pref = Some(r.number("bgp_local_pref", 100u32, "a number"));
    }
    let api = r.parsed("bgp_gobgp_api", vipd_bgp::ApiAddr::default(), |v| {
        vipd_bgp::ApiAddr::parse(v)
    });
    BgpConfig {
        asn,
        router_id,
        router_interface: r.string("bgp_routerinterface"),
        peers,
        attrs,
        gobgpd: PathBuf::from(r.string_or_default("bgp_gobgpd_path")),
        api,
        external: r.bool("bgp_gobgp_external"),
        health_url: r
            .string("vip_healthcheck_url")
            .unwrap_or_else(|| format!("https://127.0.0.1:{api_port}/readyz")),
    }
}
