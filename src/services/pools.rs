//! IP pools from kube-vip-cloud-provider's ConfigMap (`kube-system/kubevip`).
//!
//! Keys: `cidr-<namespace>` / `range-<namespace>` (a cidr key wins over a
//! range key of the same scope), then `cidr-global` / `range-global`; values
//! are comma lists that may mix IPv4 and IPv6. `allow-share-<namespace>` /
//! `allow-share-global`, `skip-end-ips-in-cidr`, `search-order` (`desc`:
//! allocate from the top) and `interface-<namespace>` / `interface-global`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::model::Family;

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: IpAddr,
    pub last: IpAddr,
    /// Set for ranges written as a CIDR: its network and last address.
    pub cidr_ends: Option<(IpAddr, IpAddr)>,
}

/// The pool of one scope (a namespace, or `global`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The ConfigMap key it came from, e.g. `cidr-global`.
    pub key: String,
    pub ranges: Vec<Range>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pools {
    scopes: BTreeMap<String, Pool>,
    share: BTreeMap<String, bool>,
    interfaces: BTreeMap<String, String>,
    /// BGP communities / local preference per scope (vipd's keys).
    communities: BTreeMap<String, Vec<u32>>,
    local_prefs: BTreeMap<String, u32>,
    skip_end: bool,
    descending: bool,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(n: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

fn parse_entries(key: &str, value: &str, cidr: bool) -> Result<Vec<Range>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if cidr {
            let net: IpNetwork = item
                .parse()
                .map_err(|_| format!("{key}: {item:?} is not a CIDR"))?;
            let (network, last) = (net.network(), net.broadcast_or_last());
            out.push(Range {
                first: network,
                last,
                cidr_ends: Some((network, last)),
            });
        } else {
            let (a, b) = item
                .split_once('-')
                .ok_or_else(|| format!("{key}: {item:?} is not a range (FIRST-LAST)"))?;
            let first: IpAddr = a
                .trim()
                .parse()
                .map_err(|_| format!("{key}: {a:?} is not an IP address"))?;
            let last: IpAddr = b
                .trim()
                .parse()
                .map_err(|_| format!("{key}: {b:?} is not an IP address"))?;
            if Family::of(first) != Family::of(last) {
                return Err(format!("{key}: {item:?} mixes IPv4 and IPv6"));
            }
            if to_u128(first) > to_u128(last) {
                return Err(format!("{key}: {item:?} ends before it starts"));
            }
            out.push(Range {
                first,
                last,
                cidr_ends: None,
            });
        }
    }
    if out.is_empty() {
        return Err(format!("{key}: empty"));
    }
    Ok(out)
}

trait NetworkExt {
    fn broadcast_or_last(&self) -> IpAddr;
}

impl NetworkExt for IpNetwork {
    fn broadcast_or_last(&self) -> IpAddr {
        match self {
            IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
            IpNetwork::V6(n) => {
                let host_bits = 128 - n.prefix() as u32;
                let mask = if host_bits == 128 {
                    u128::MAX
                } else {
                    (1u128 << host_bits) - 1
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | mask))
            }
        }
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    crate::config::parse_bool(v).ok_or_else(|| format!("{key}: expected true or false, got {v:?}"))
}

impl Pools {
    /// Reads the ConfigMap's data. Every problem is reported; any problem
    /// rejects the whole map (the caller keeps the last good pools).
    pub fn parse(data: &BTreeMap<String, String>) -> Result<Pools, Vec<String>> {
        let mut p = Pools::default();
        let mut errors = Vec::new();
        let mut ranges: BTreeMap<String, Pool> = BTreeMap::new();
        for (key, value) in data {
            let r: Result<(), String> = (|| {
                if let Some(scope) = key.strip_prefix("cidr-") {
                    p.scopes.insert(
                        scope.to_string(),
                        Pool {
                            key: key.clone(),
                            ranges: parse_entries(key, value, true)?,
                        },
                    );
                } else if let Some(scope) = key.strip_prefix("range-") {
                    ranges.insert(
                        scope.to_string(),
                        Pool {
                            key: key.clone(),
                            ranges: parse_entries(key, value, false)?,
                        },
                    );
                } else if let Some(scope) = key.strip_prefix("allow-share-") {
                    p.share.insert(scope.to_string(), parse_bool(key, value)?);
                } else if let Some(scope) = key.strip_prefix("bgp-communities-") {
                    let mut cs = Vec::new();
                    for c in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                        cs.push(
                            vipd_bgp::route::parse_community(c)
                                .map_err(|e| format!("{key}: {e}"))?,
                        );
                    }
                    p.communities.insert(scope.to_string(), cs);
                } else if let Some(scope) = key.strip_prefix("bgp-local-pref-") {
                    let lp = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("{key}: expected a number, got {value:?}"))?;
                    p.local_prefs.insert(scope.to_string(), lp);
                } else if let Some(scope) = key.strip_prefix("interface-") {
                    p.interfaces
                        .insert(scope.to_string(), value.trim().to_string());
                } else if key == "skip-end-ips-in-cidr" {
                    p.skip_end = parse_bool(key, value)?;
                } else if key == "search-order" {
                    p.descending = match value.trim() {
                        "desc" => true,
                        "asc" | "" => false,
                        other => return Err(format!("{key}: expected asc or desc, got {other:?}")),
                    };
                } else {
                    return Err(format!("unknown key {key:?}"));
                }
                Ok(())
            })();
            if let Err(e) = r {
                errors.push(e);
            }
        }
        // A cidr key wins over a range key of the same scope.
        for (scope, pool) in ranges {
            p.scopes.entry(scope).or_insert(pool);
        }
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// The pool serving `namespace`: its own, else the global one.
    pub fn for_namespace(&self, namespace: &str) -> Option<&Pool> {
        self.scopes
            .get(namespace)
            .or_else(|| self.scopes.get("global"))
    }

    pub fn allow_share(&self, namespace: &str) -> bool {
        self.share
            .get(namespace)
            .or_else(|| self.share.get("global"))
            .copied()
            .unwrap_or(false)
    }

    pub fn interface(&self, namespace: &str) -> Option<&str> {
        self.interfaces
            .get(namespace)
            .or_else(|| self.interfaces.get("global"))
            .map(String::as_str)
    }

    /// BGP attributes for `namespace`'s Services: its own, else the global ones.
    pub fn route_attrs(&self, namespace: &str) -> (Option<&Vec<u32>>, Option<u32>) {
        (
            self.communities
                .get(namespace)
                .or_else(|| self.communities.get("global")),
            self.local_prefs
                .get(namespace)
                .or_else(|| self.local_prefs.get("global"))
                .copied(),
        )
    }

    /// Whether `ip` lies in the pool serving `namespace`.
    pub fn contains(&self, namespace: &str, ip: IpAddr) -> bool {
        self.for_namespace(namespace).is_some_and(|p| {
            p.ranges.iter().any(|r| {
                Family::of(r.first) == Family::of(ip)
                    && (to_u128(r.first)..=to_u128(r.last)).contains(&to_u128(ip))
            })
        })
    }

    /// The first address of `family` in `pool` (in search order) that is
    /// not `used`; network and last address of a CIDR are skipped when
    /// `skip-end-ips-in-cidr` is set.
    pub fn pick(
        &self,
        pool: &Pool,
        family: Family,
        used: impl Fn(IpAddr) -> bool,
    ) -> Option<IpAddr> {
        let mut ranges: Vec<&Range> = pool
            .ranges
            .iter()
            .filter(|r| Family::of(r.first) == family)
            .collect();
        if self.descending {
            ranges.reverse();
        }
        for r in ranges {
            let (lo, hi) = (to_u128(r.first), to_u128(r.last));
            let skip = |n: u128| {
                self.skip_end
                    && r.cidr_ends
                        .is_some_and(|(a, b)| n == to_u128(a) || n == to_u128(b))
            };
            // Walk from one end; every step past the first lands on a used or
            // skipped address, so this ends after at most |used| + 3 steps.
            let mut n = if self.descending { hi } else { lo };
            loop {
                let ip = from_u128(n, family);
                if !skip(n) && !used(ip) {
                    return Some(ip);
                }
                if self.descending {
                    if n == lo {
                        break;
                    }
                    n -= 1;
                } else {
                    if n == hi {
                        break;
                    }
                    n += 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn namespace_pool_first_then_global_and_cidr_beats_range() {
        let p = Pools::parse(&data(&[
            ("cidr-global", "198.51.100.0/30"),
            ("range-team", "198.51.100.10-198.51.100.12"),
            ("cidr-team", "198.51.100.64/29"),
            ("range-other", "198.51.100.20-198.51.100.21"),
        ]))
        .unwrap();
        assert_eq!(p.for_namespace("team").unwrap().key, "cidr-team");
        assert_eq!(p.for_namespace("other").unwrap().key, "range-other");
        assert_eq!(p.for_namespace("default").unwrap().key, "cidr-global");
        assert!(p.contains("team", ip("198.51.100.70")));
        assert!(!p.contains("team", ip("198.51.100.1")));
    }

    #[test]
    fn picks_in_order_skipping_used_and_ends() {
        let p = Pools::parse(&data(&[
            ("cidr-global", "198.51.100.0/30"),
            ("skip-end-ips-in-cidr", "true"),
        ]))
        .unwrap();
        let pool = p.for_namespace("x").unwrap().clone();
        let mut used = HashSet::new();
        let mut got = Vec::new();
        while let Some(a) = p.pick(&pool, Family::V4, |i| used.contains(&i)) {
            used.insert(a);
            got.push(a);
        }
        assert_eq!(got, vec![ip("198.51.100.1"), ip("198.51.100.2")]);

        let p = Pools::parse(&data(&[("cidr-global", "198.51.100.0/30")])).unwrap();
        let pool = p.for_namespace("x").unwrap().clone();
        assert_eq!(
            p.pick(&pool, Family::V4, |_| false),
            Some(ip("198.51.100.0"))
        );
    }

    #[test]
    fn descending_search_order() {
        let p = Pools::parse(&data(&[
            ("range-global", "198.51.100.10-198.51.100.20"),
            ("search-order", "desc"),
        ]))
        .unwrap();
        let pool = p.for_namespace("x").unwrap().clone();
        assert_eq!(
            p.pick(&pool, Family::V4, |i| i == ip("198.51.100.20")),
            Some(ip("198.51.100.19"))
        );
    }

    #[test]
    fn mixed_families_and_huge_ipv6_ranges() {
        let p = Pools::parse(&data(&[("cidr-global", "198.51.100.0/31,2001:db8:1::/64")])).unwrap();
        let pool = p.for_namespace("x").unwrap().clone();
        assert_eq!(
            p.pick(&pool, Family::V6, |_| false),
            Some(ip("2001:db8:1::"))
        );
        // Exhausting IPv4 does not touch IPv6, and a /64 never enumerates.
        assert_eq!(p.pick(&pool, Family::V4, |i| i.is_ipv4()), None);
        let used: HashSet<IpAddr> = (0..1000u128)
            .map(|n| from_u128(0x2001_0db8_0001_0000_0000_0000_0000_0000 + n, Family::V6))
            .collect();
        assert_eq!(
            p.pick(&pool, Family::V6, |i| used.contains(&i)),
            Some(ip("2001:db8:1::3e8"))
        );
        let p = Pools::parse(&data(&[
            ("cidr-global", "2001:db8::/126"),
            ("skip-end-ips-in-cidr", "true"),
        ]))
        .unwrap();
        let pool = p.for_namespace("x").unwrap().clone();
        assert_eq!(
            p.pick(&pool, Family::V6, |_| false),
            Some(ip("2001:db8::1"))
        );
    }

    #[test]
    fn sharing_and_interfaces_fall_back_to_global() {
        let p = Pools::parse(&data(&[
            ("allow-share-global", "true"),
            ("allow-share-strict", "false"),
            ("interface-global", "eth1"),
        ]))
        .unwrap();
        assert!(p.allow_share("any"));
        assert!(!p.allow_share("strict"));
        assert_eq!(p.interface("any"), Some("eth1"));
        assert!(p.is_empty());
    }

    #[test]
    fn bgp_attributes_per_namespace_then_global() {
        let p = Pools::parse(&data(&[
            ("bgp-communities-global", "65000:1"),
            ("bgp-communities-team", "65000:2, 65000:3"),
            ("bgp-local-pref-global", "150"),
        ]))
        .unwrap();
        assert_eq!(
            p.route_attrs("team"),
            (Some(&vec![(65000 << 16) | 2, (65000 << 16) | 3]), Some(150))
        );
        assert_eq!(
            p.route_attrs("x"),
            (Some(&vec![(65000 << 16) | 1]), Some(150))
        );
        assert!(Pools::parse(&data(&[("bgp-communities-global", "x:y")])).is_err());
        assert!(Pools::parse(&data(&[("bgp-local-pref-global", "high")])).is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let errs = Pools::parse(&data(&[
            ("cidr-global", "198.51.100.0/33"),
            ("range-a", "198.51.100.9-198.51.100.1"),
            ("range-b", "198.51.100.1-2001:db8::1"),
            ("range-c", "198.51.100.1"),
            ("allow-share-global", "yes please"),
            ("search-order", "random"),
            ("cidrs-typo", "198.51.100.0/24"),
        ]))
        .unwrap_err();
        assert_eq!(errs.len(), 7, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("cidrs-typo")));
        assert!(errs.iter().any(|e| e.contains("ends before it starts")));
    }
}
