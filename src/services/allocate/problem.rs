//! Why a Service stays pending: one variant per Event reason, each with the
//! message a user reads (what is wrong, and what to do).

use std::net::IpAddr;

use super::join;
use crate::services::model::{Family, SvcKey};

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
