//! Which addresses each served Service gets: the Services leader's decision,
//! recomputed from scratch on every change, deterministically, so any node
//! that becomes leader decides the same.
//!
//! Requested addresses (annotation, else current status, else
//! `spec.loadBalancerIP`) are checked first, older Services first; then
//! Services without one get addresses from their namespace's pool. No
//! address goes to two Services unless sharing is allowed for both and their
//! ports do not overlap.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::model::{Family, FamilyPolicy, PortKey, SvcInfo, SvcKey};
use super::pools::Pools;

/// Where a Service's addresses came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Annotation,
    Status,
    LoadBalancerIp,
    /// Allocated from the pool of this ConfigMap key.
    Pool(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub ips: Vec<IpAddr>,
    pub origin: Origin,
}

/// Why a Service stays pending; each becomes an Event a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    BadAnnotation { value: String, reason: String },
    BadLoadBalancerIp { value: String },
    WrongFamily { ip: IpAddr, families: Vec<Family> },
    NotInPool { ip: IpAddr },
    NoPool,
    PoolExhausted { pool: String, family: Family },
    FamilyMissing { pool: String, family: Family },
    InUse { ip: IpAddr, by: SvcKey },
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
        }
    }

    /// The Event message: what is wrong and what to do.
    pub fn message(&self) -> String {
        match self {
            Problem::BadAnnotation { value, reason } => format!(
                "kube-vip.io/loadbalancerIPs={value:?}: {reason}; expected a comma list of IP addresses, at most one per family"
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
        }
    }
}

pub type Decisions = BTreeMap<SvcKey, Result<Assignment, Problem>>;

struct User {
    key: SvcKey,
    ports: Vec<PortKey>,
    share: bool,
}

fn ports_disjoint(a: &[PortKey], b: &[PortKey]) -> bool {
    // A Service without ports claims the whole address.
    !a.is_empty() && !b.is_empty() && a.iter().all(|p| !b.contains(p))
}

fn can_join(users: &[User], ports: &[PortKey], share: bool) -> bool {
    share
        && users
            .iter()
            .all(|u| u.share && ports_disjoint(&u.ports, ports))
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

/// What a Service asks for, if anything.
fn requested(s: &SvcInfo) -> Option<Result<(Vec<IpAddr>, Origin), Problem>> {
    if let Some(v) = &s.requested {
        return Some(
            parse_list(v)
                .map(|ips| (ips, Origin::Annotation))
                .map_err(|reason| Problem::BadAnnotation {
                    value: v.clone(),
                    reason,
                }),
        );
    }
    if !s.status_ips.is_empty() {
        return Some(Ok((s.status_ips.clone(), Origin::Status)));
    }
    s.spec_ip.as_ref().map(|v| match v.parse::<IpAddr>() {
        Ok(ip) => Ok((vec![ip], Origin::LoadBalancerIp)),
        Err(_) => Err(Problem::BadLoadBalancerIp { value: v.clone() }),
    })
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

/// Decides every served Service's addresses.
pub fn allocate(services: &[&SvcInfo], pools: &Pools) -> Decisions {
    let mut order: Vec<&SvcInfo> = services.to_vec();
    order.sort_by(|a, b| (&a.created, &a.key).cmp(&(&b.created, &b.key)));
    let mut used: BTreeMap<IpAddr, Vec<User>> = BTreeMap::new();
    let mut out = Decisions::new();

    // Requested addresses first: they are not negotiable, only checked.
    for s in &order {
        let Some(req) = requested(s) else { continue };
        let share = pools.allow_share(&s.key.namespace);
        let decision = req.and_then(|(ips, origin)| {
            for ip in &ips {
                if !s.families.is_empty() && !s.families.contains(&Family::of(*ip)) {
                    return Err(Problem::WrongFamily {
                        ip: *ip,
                        families: s.families.clone(),
                    });
                }
                if origin != Origin::Status
                    && !pools.is_empty()
                    && !pools.contains(&s.key.namespace, *ip)
                {
                    return Err(Problem::NotInPool { ip: *ip });
                }
                if let Some(users) = used.get(ip) {
                    if !can_join(users, &s.ports, share) {
                        return Err(Problem::InUse {
                            ip: *ip,
                            by: users[0].key.clone(),
                        });
                    }
                }
            }
            Ok(Assignment { ips, origin })
        });
        if let Ok(a) = &decision {
            for ip in &a.ips {
                used.entry(*ip).or_default().push(User {
                    key: s.key.clone(),
                    ports: s.ports.clone(),
                    share,
                });
            }
        }
        out.insert(s.key.clone(), decision);
    }

    // Then the pool, in creation order.
    for s in &order {
        if out.contains_key(&s.key) {
            continue;
        }
        let Some(pool) = pools.for_namespace(&s.key.namespace) else {
            out.insert(s.key.clone(), Err(Problem::NoPool));
            continue;
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
            // Sharing (IPv4, as kube-vip-cloud-provider): join an address of
            // this pool whose users all share and whose ports do not overlap.
            let shared = (share && *fam == Family::V4)
                .then(|| {
                    used.iter()
                        .find(|(ip, users)| {
                            ip.is_ipv4()
                                && pools.contains(&s.key.namespace, **ip)
                                && can_join(users, &s.ports, share)
                        })
                        .map(|(ip, _)| *ip)
                })
                .flatten();
            match shared.or_else(|| pools.pick(pool, *fam, |ip| used.contains_key(&ip))) {
                Some(ip) => {
                    used.entry(ip).or_default().push(User {
                        key: s.key.clone(),
                        ports: s.ports.clone(),
                        share,
                    });
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
            }),
        };
        // A failed dual-stack allocation must not keep half its addresses.
        if decision.is_err() {
            for users in used.values_mut() {
                users.retain(|u| u.key != s.key);
            }
            used.retain(|_, users| !users.is_empty());
        }
        out.insert(s.key.clone(), decision);
    }
    out
}

#[cfg(test)]
mod tests;
