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

mod ask;
mod problem;

pub use problem::Problem;

use ask::{ask, keeps_what_it_holds, Ask};

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
