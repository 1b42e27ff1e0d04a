//! What a Service asks for: `kube-vip.io/loadbalancerIPs` (or MetalLB's),
//! else `spec.loadBalancerIP`, else its status when vipd may trust it,
//! else an allocation from its pool.

use std::net::IpAddr;

use super::{Origin, Problem};
use crate::services::model::{Family, SvcInfo};
use crate::services::pools::Pools;

pub(super) fn parse_list(value: &str) -> Result<Vec<IpAddr>, String> {
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
pub(super) enum Ask {
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
pub(super) fn status_trusted(s: &SvcInfo, pools: &Pools) -> bool {
    s.status_ips
        .iter()
        .all(|ip| s.assigned.contains(ip) || pools.contains(&s.key.namespace, *ip))
}

pub(super) fn ask(s: &SvcInfo, pools: &Pools) -> Ask {
    if let Some(v) = &s.requested {
        let key = if s.requested_from.is_empty() {
            crate::services::model::keys::LOADBALANCER_IPS
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
pub(super) fn keeps_what_it_holds(s: &SvcInfo, ips: &[IpAddr], pools: &Pools) -> bool {
    !ips.is_empty() && ips.iter().all(|ip| s.status_ips.contains(ip)) && status_trusted(s, pools)
}
