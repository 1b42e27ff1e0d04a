//! Which addresses each served Service gets: the Services leader's decision,
//! recomputed from scratch on every change, deterministically, so any node
//! that becomes leader decides the same.
//!
//! What a Service asks for: `kube-vip.io/loadbalancerIPs` (else MetalLB's
//! `metallb.io/loadBalancerIPs` or `metallb.universe.tf/loadBalancerIPs`),
//! else `spec.loadBalancerIP`, else the addresses already in its status, but
//! only those vipd itself assigned (`vipd.dev/assigned`) or that lie in the
//! Service's pools: a status left by another controller (K3s ServiceLB
//! leaves the nodes' own addresses there) is replaced from the pools.
//!
//! Rules, in this order:
//! 1. an address the [`Guard`] refuses (a node's, the control-plane VIP, a
//!    gateway...) is never assigned, whatever asked for it, and pools skip it;
//! 2. an address stays with the Service whose status holds it: Services that
//!    keep what they hold are placed first, so a Service that asks later
//!    for a held address (a new annotation, an older Service re-annotated)
//!    gets `AddressInUse`, whatever its creation time;
//! 3. then the other requested addresses, older Services first;
//! 4. then pool allocations, in creation order (a Service this leader
//!    allocated for a moment ago, whose annotation is not in the cache yet,
//!    gets the same address again: allocations never shuffle).
//!
//! No address goes to two Services unless sharing is allowed for both and
//! their ports do not overlap: by the pools (`allow-share-<namespace>`,
//! kube-vip-cloud-provider's), or by the same MetalLB sharing key
//! (`allow-shared-ip`) on both.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::guard::Guard;
use super::model::{Family, FamilyPolicy, PortKey, SvcInfo, SvcKey};
use super::pools::Pools;

/// Where a Service's addresses came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// This annotation (`kube-vip.io/loadbalancerIPs` or MetalLB's).
    Annotation(&'static str),
    Status,
    LoadBalancerIp,
    /// Allocated from the pool of this ConfigMap key.
    Pool(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub ips: Vec<IpAddr>,
    pub origin: Origin,
    /// Status addresses vipd did not assign and no pool contains, replaced
    /// by these (empty when the status was vipd's or empty).
    pub replaced: Vec<IpAddr>,
}

/// Why a Service stays pending; each becomes an Event a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    BadAnnotation {
        key: &'static str,
        value: String,
        reason: String,
    },
    BadLoadBalancerIp {
        value: String,
    },
    WrongFamily {
        ip: IpAddr,
        families: Vec<Family>,
    },
    NotInPool {
        ip: IpAddr,
    },
    NoPool,
    PoolExhausted {
        pool: String,
        family: Family,
    },
    FamilyMissing {
        pool: String,
        family: Family,
    },
    InUse {
        ip: IpAddr,
        by: SvcKey,
    },
    /// The guard refuses it: "192.0.2.12 is the InternalIP of node n2".
    Forbidden {
        ip: IpAddr,
        reason: String,
    },
    /// The status held addresses vipd did not assign, and no pool can
    /// replace them.
    UntrustedStatus {
        ips: Vec<IpAddr>,
    },
}

impl Problem {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::BadAnnotation { .. } => "InvalidAnnotation",
            Problem::BadLoadBalancerIp { .. } => "InvalidLoadBalancerIP",
            Problem::WrongFamily { .. } => "AddressFamilyMismatch",
            Problem::NotInPool { .. } => "AddressNotInPool",
            Problem::NoPool => "NoAddressPool",
            Problem::PoolExhausted { .. } => "PoolExhausted",
            Problem::FamilyMissing { .. } => "AddressFamilyMissing",
            Problem::InUse { .. } => "AddressInUse",
            Problem::Forbidden { .. } => "AddressForbidden",
            Problem::UntrustedStatus { .. } => "StaleStatusIgnored",
        }
    }

    /// The Event message: what is wrong and what to do.
    pub fn message(&self) -> String {
        match self {
            Problem::BadAnnotation { key, value, reason } => format!(
                "{key}={value:?}: {reason}; expected a comma list of IP addresses, at most one per family"
            ),
            Problem::BadLoadBalancerIp { value } => {
                format!("spec.loadBalancerIP={value:?} is not an IP address")
            }
            Problem::WrongFamily { ip, families } => format!(
                "{ip} is {} but the Service's ipFamilies are {:?}: request an address of the Service's family, or change ipFamilies/ipFamilyPolicy",
                Family::of(*ip),
                families.iter().map(|f| f.to_string()).collect::<Vec<_>>()
            ),
            Problem::NotInPool { ip } => format!(
                "{ip} is outside the address pools configured for this namespace (ConfigMap kube-system/kubevip): request an address from a pool or extend the pool"
            ),
            Problem::NoPool => "no address requested and no pool for this namespace: set kube-vip.io/loadbalancerIPs or add cidr-<namespace>/cidr-global to ConfigMap kube-system/kubevip".to_string(),
            Problem::PoolExhausted { pool, family } => {
                format!("no free {family} address left in pool {pool}: free one or extend the pool")
            }
            Problem::FamilyMissing { pool, family } => format!(
                "the Service requires dual-stack but pool {pool} has no {family} range: add one, or use PreferDualStack"
            ),
            Problem::InUse { ip, by } => format!(
                "{ip} is already used by Service {by}: choose another address, or allow sharing (allow-share-<namespace>) with ports that do not overlap"
            ),
            Problem::Forbidden { ip, reason } => format!(
                "{ip} is {reason}: vipd never announces it for a Service; choose another address"
            ),
            Problem::UntrustedStatus { ips } => format!(
                "status.loadBalancer.ingress holds {} which vipd did not assign and no pool contains (left by another controller, K3s ServiceLB perhaps): not announced; set kube-vip.io/loadbalancerIPs or add a pool (cidr-<namespace>/cidr-global in ConfigMap kube-system/kubevip)",
                join(ips)
            ),
        }
    }
}

pub type Decisions = BTreeMap<SvcKey, Result<Assignment, Problem>>;

/// A comma list of addresses, for messages.
pub fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

struct User {
    key: SvcKey,
    ports: Vec<PortKey>,
    share: bool,
    /// MetalLB's sharing key.
    share_key: Option<String>,
}

fn ports_disjoint(a: &[PortKey], b: &[PortKey]) -> bool {
    // A Service without ports claims the whole address.
    !a.is_empty() && !b.is_empty() && a.iter().all(|p| !b.contains(p))
}

/// Whether a Service (its `ports`, pool sharing `share`, sharing key
/// `key`) may join `users` on one address.
fn can_join(users: &[User], ports: &[PortKey], share: bool, key: Option<&str>) -> bool {
    users.iter().all(|u| {
        let allowed = (share && u.share) || (key.is_some() && u.share_key.as_deref() == key);
        allowed && ports_disjoint(&u.ports, ports)
    })
}

fn parse_list(value: &str) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ip: IpAddr = item
            .parse()
            .map_err(|_| format!("{item:?} is not an IP address"))?;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(format!("{ip} cannot be a load-balancer address"));
        }
        if out.iter().any(|o| Family::of(*o) == Family::of(ip)) {
            return Err(format!("two {} addresses", Family::of(ip)));
        }
        out.push(ip);
    }
    if out.is_empty() {
        return Err("no address".into());
    }
    Ok(out)
}

/// What a Service asks for.
enum Ask {
    /// These addresses, from there.
    Fixed(Vec<IpAddr>, Origin),
    /// Addresses from its pool; `stale` are status addresses not trusted.
    Pool {
        stale: Vec<IpAddr>,
    },
    Bad(Problem),
}

/// Whether the status of `s` is vipd's to keep: every address in it was
/// assigned by vipd, or lies in the Service's pools.
fn status_trusted(s: &SvcInfo, pools: &Pools) -> bool {
    s.status_ips
        .iter()
        .all(|ip| s.assigned.contains(ip) || pools.contains(&s.key.namespace, *ip))
}

fn ask(s: &SvcInfo, pools: &Pools) -> Ask {
    if let Some(v) = &s.requested {
        let key = if s.requested_from.is_empty() {
            super::model::keys::LOADBALANCER_IPS
        } else {
            s.requested_from
        };
        return match parse_list(v) {
            Ok(ips) => Ask::Fixed(ips, Origin::Annotation(key)),
            Err(reason) => Ask::Bad(Problem::BadAnnotation {
                key,
                value: v.clone(),
                reason,
            }),
        };
    }
    if let Some(v) = &s.spec_ip {
        return match v.parse::<IpAddr>() {
            Ok(ip) => Ask::Fixed(vec![ip], Origin::LoadBalancerIp),
            Err(_) => Ask::Bad(Problem::BadLoadBalancerIp { value: v.clone() }),
        };
    }
    if s.status_ips.is_empty() {
        return Ask::Pool { stale: Vec::new() };
    }
    if status_trusted(s, pools) {
        Ask::Fixed(s.status_ips.clone(), Origin::Status)
    } else {
        Ask::Pool {
            stale: s.status_ips.clone(),
        }
    }
}

/// Whether `s` asks to keep exactly what its (trusted) status holds.
fn keeps_what_it_holds(s: &SvcInfo, ips: &[IpAddr], pools: &Pools) -> bool {
    !ips.is_empty() && ips.iter().all(|ip| s.status_ips.contains(ip)) && status_trusted(s, pools)
}

/// The families a Service gets addresses of, in its order.
fn wanted_families(s: &SvcInfo) -> Vec<Family> {
    let fams = if s.families.is_empty() {
        vec![Family::V4]
    } else {
        s.families.clone()
    };
    match s.family_policy {
        FamilyPolicy::SingleStack => fams[..1].to_vec(),
        _ => fams,
    }
}

/// The addresses in use so far, and by whom.
#[derive(Default)]
struct Used(BTreeMap<IpAddr, Vec<User>>);

impl Used {
    fn take(&mut self, ip: IpAddr, s: &SvcInfo, share: bool) {
        self.0.entry(ip).or_default().push(User {
            key: s.key.clone(),
            ports: s.ports.clone(),
            share,
            share_key: s.share_key.clone(),
        });
    }

    fn release_all_of(&mut self, key: &SvcKey) {
        for users in self.0.values_mut() {
            users.retain(|u| u.key != *key);
        }
        self.0.retain(|_, users| !users.is_empty());
    }
}

/// Checks a requested list against the rules; on success the addresses
/// are taken.
fn place_fixed(
    s: &SvcInfo,
    ips: Vec<IpAddr>,
    origin: Origin,
    pools: &Pools,
    guard: &Guard,
    used: &mut Used,
) -> Result<Assignment, Problem> {
    let share = pools.allow_share(&s.key.namespace);
    for ip in &ips {
        if let Some(reason) = guard.check(*ip) {
            return Err(Problem::Forbidden {
                ip: *ip,
                reason: reason.to_string(),
            });
        }
        if !s.families.is_empty() && !s.families.contains(&Family::of(*ip)) {
            return Err(Problem::WrongFamily {
                ip: *ip,
                families: s.families.clone(),
            });
        }
        if origin != Origin::Status && !pools.is_empty() && !pools.contains(&s.key.namespace, *ip) {
            return Err(Problem::NotInPool { ip: *ip });
        }
        if let Some(users) = used.0.get(ip) {
            if !can_join(users, &s.ports, share, s.share_key.as_deref()) {
                return Err(Problem::InUse {
                    ip: *ip,
                    by: users[0].key.clone(),
                });
            }
        }
    }
    for ip in &ips {
        used.take(*ip, s, share);
    }
    Ok(Assignment {
        ips,
        origin,
        replaced: Vec::new(),
    })
}

/// Allocates from the Service's pool; `earlier` is what this leader picked
/// for it in a recent pass (its annotation write may not be visible yet),
/// taken again when still free, so allocations never shuffle while the
/// caches catch up.
fn place_from_pool(
    s: &SvcInfo,
    stale: Vec<IpAddr>,
    earlier: Option<&Vec<IpAddr>>,
    pools: &Pools,
    guard: &Guard,
    used: &mut Used,
) -> Result<Assignment, Problem> {
    let Some(pool) = pools.for_namespace(&s.key.namespace) else {
        return Err(if stale.is_empty() {
            Problem::NoPool
        } else {
            Problem::UntrustedStatus { ips: stale }
        });
    };
    let share = pools.allow_share(&s.key.namespace);
    let mut ips = Vec::new();
    let mut problem = None;
    let families = wanted_families(s);
    for fam in &families {
        let has_family = pool.ranges.iter().any(|r| Family::of(r.first) == *fam);
        if !has_family {
            if s.family_policy == FamilyPolicy::RequireDualStack || families.len() == 1 {
                problem = Some(Problem::FamilyMissing {
                    pool: pool.key.clone(),
                    family: *fam,
                });
            }
            continue;
        }
        // Sharing: join an address of this pool whose users all share and
        // whose ports do not overlap: by the same MetalLB sharing key (any
        // family), or by the pool's permission (IPv4, as
        // kube-vip-cloud-provider).
        let key = s.share_key.as_deref();
        let shared = (key.is_some() || (share && *fam == Family::V4))
            .then(|| {
                used.0
                    .iter()
                    .find(|(ip, users)| {
                        Family::of(**ip) == *fam
                            && (key.is_some() || ip.is_ipv4())
                            && pools.contains(&s.key.namespace, **ip)
                            && can_join(users, &s.ports, share, key)
                    })
                    .map(|(ip, _)| *ip)
            })
            .flatten();
        let again = earlier.and_then(|e| {
            e.iter().copied().find(|ip| {
                Family::of(*ip) == *fam
                    && pools.contains(&s.key.namespace, *ip)
                    && !guard.is_forbidden(*ip)
                    && used
                        .0
                        .get(ip)
                        .is_none_or(|users| can_join(users, &s.ports, share, key))
            })
        });
        let picked = again.or(shared).or_else(|| {
            pools.pick(pool, *fam, |ip| {
                used.0.contains_key(&ip) || guard.is_forbidden(ip)
            })
        });
        match picked {
            Some(ip) => {
                used.take(ip, s, share);
                ips.push(ip);
            }
            None => {
                if s.family_policy != FamilyPolicy::PreferDualStack || families.len() == 1 {
                    problem = Some(Problem::PoolExhausted {
                        pool: pool.key.clone(),
                        family: *fam,
                    });
                }
            }
        }
    }
    let decision = match (problem, ips.is_empty()) {
        (Some(p), _) => Err(p),
        (None, true) => Err(Problem::PoolExhausted {
            pool: pool.key.clone(),
            family: families[0],
        }),
        (None, false) => Ok(Assignment {
            ips,
            origin: Origin::Pool(pool.key.clone()),
            replaced: stale,
        }),
    };
    // A failed dual-stack allocation must not keep half its addresses.
    if decision.is_err() {
        used.release_all_of(&s.key);
    }
    decision
}

/// This leader's recent pool picks, by Service (see [`place_from_pool`]).
pub type Recent = BTreeMap<SvcKey, Vec<IpAddr>>;

/// Decides every served Service's addresses; `guard` holds the addresses
/// no Service may have; `recent` are this leader's pool picks whose
/// annotation may not be visible yet.
pub fn allocate(services: &[&SvcInfo], pools: &Pools, guard: &Guard, recent: &Recent) -> Decisions {
    let mut order: Vec<&SvcInfo> = services.to_vec();
    order.sort_by(|a, b| (&a.created, &a.key).cmp(&(&b.created, &b.key)));
    let asks: Vec<(&SvcInfo, Ask)> = order.iter().map(|s| (*s, ask(s, pools))).collect();
    let mut used = Used::default();
    let mut out = Decisions::new();

    // What Services hold and keep asking for is theirs: placed first.
    for (s, a) in &asks {
        if let Ask::Fixed(ips, origin) = a {
            if keeps_what_it_holds(s, ips, pools) {
                let d = place_fixed(s, ips.clone(), origin.clone(), pools, guard, &mut used);
                out.insert(s.key.clone(), d);
            }
        }
    }
    // Then other requests, older Services first; bad ones are named.
    for (s, a) in &asks {
        if out.contains_key(&s.key) {
            continue;
        }
        match a {
            Ask::Fixed(ips, origin) => {
                let d = place_fixed(s, ips.clone(), origin.clone(), pools, guard, &mut used);
                out.insert(s.key.clone(), d);
            }
            Ask::Bad(p) => {
                out.insert(s.key.clone(), Err(p.clone()));
            }
            Ask::Pool { .. } => {}
        }
    }
    // Then the pool: first the Services this leader already picked for
    // (their picks stay theirs), then the others, in creation order.
    let (picked, fresh): (Vec<_>, Vec<_>) = asks
        .into_iter()
        .filter(|(_, a)| matches!(a, Ask::Pool { .. }))
        .partition(|(s, _)| recent.contains_key(&s.key));
    for (s, a) in picked.into_iter().chain(fresh) {
        if let Ask::Pool { stale } = a {
            let d = place_from_pool(s, stale, recent.get(&s.key), pools, guard, &mut used);
            out.insert(s.key.clone(), d);
        }
    }
    out
}

#[cfg(test)]
mod tests;
