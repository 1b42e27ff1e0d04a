//! What the Services controller reads from a Service, node and
//! EndpointSlice, extracted once into plain values the decisions use.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

mod nodes;

pub use nodes::{add_ready_nodes, NodeInfo, ReadyNodes};

/// kube-vip's annotations and K3s ServiceLB's labels.
pub mod keys {
    pub const LOADBALANCER_IPS: &str = "kube-vip.io/loadbalancerIPs";
    /// MetalLB's, honoured as kube-vip's (kube-vip's wins when both are set).
    pub const METALLB_IPS: &str = "metallb.io/loadBalancerIPs";
    pub const METALLB_IPS_OLD: &str = "metallb.universe.tf/loadBalancerIPs";
    pub const METALLB_SHARE: &str = "metallb.io/allow-shared-ip";
    pub const METALLB_SHARE_OLD: &str = "metallb.universe.tf/allow-shared-ip";
    pub const IGNORE: &str = "kube-vip.io/ignore";
    pub const SERVICE_INTERFACE: &str = "kube-vip.io/serviceInterface";
    pub const VIP_HOST: &str = "kube-vip.io/vipHost";
    /// Written by vipd: the pool a Service's addresses came from.
    pub const POOL: &str = "vipd.dev/pool";
    /// Written by vipd with every status it writes: the addresses it put in
    /// `status.loadBalancer.ingress`. A status address not listed here (nor
    /// in a pool) was written by someone else, K3s ServiceLB perhaps, and
    /// is not trusted.
    pub const ASSIGNED: &str = "vipd.dev/assigned";
    /// BGP communities (AS:VALUE,...) and LOCAL_PREF of a Service's routes.
    pub const BGP_COMMUNITIES: &str = "vipd.dev/bgp-communities";
    pub const BGP_LOCAL_PREF: &str = "vipd.dev/bgp-local-pref";
    pub const SERVICELB_ENABLE: &str = "svccontroller.k3s.cattle.io/enablelb";
    pub const SERVICELB_POOL: &str = "svccontroller.k3s.cattle.io/lbpool";
    pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

    /// Where a Service's requested addresses are read, first wins.
    pub const REQUEST_KEYS: [&str; 3] = [LOADBALANCER_IPS, METALLB_IPS, METALLB_IPS_OLD];

    /// kube-vip's Service annotations vipd does not implement, with what
    /// they are for: a Service carrying one gets a Warning Event.
    pub const UNSUPPORTED: &[(&str, &str)] = &[
        ("kube-vip.io/egress", "egress"),
        ("kube-vip.io/egress-ipv6", "egress"),
        ("kube-vip.io/egress-destination-ports", "egress"),
        ("kube-vip.io/egress-source-ports", "egress"),
        ("kube-vip.io/egress-allowed-networks", "egress"),
        ("kube-vip.io/egress-denied-networks", "egress"),
        ("kube-vip.io/flush-conntrack", "egress"),
        ("kube-vip.io/loadbalancerHostname", "DHCP addresses"),
        ("kube-vip.io/hwaddr", "DHCP addresses"),
        ("kube-vip.io/requestedIP", "DHCP addresses"),
        ("kube-vip.io/ddns", "dynamic DNS"),
        ("kube-vip.io/serviceVLAN", "VLAN sub-interfaces"),
        ("kube-vip.io/forwardUPNP", "UPnP port forwarding"),
        (
            "kube-vip.io/leaseName",
            "a per-Service Lease name (vipd names its per-address Leases itself)",
        ),
        (
            "metallb.universe.tf/address-pool",
            "MetalLB pools (write them as kube-vip pools)",
        ),
        (
            "metallb.io/address-pool",
            "MetalLB pools (write them as kube-vip pools)",
        ),
    ];
}

/// One condition in a Service's `status.conditions`, as far as vipd reads
/// and writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Condition {
    pub status: bool,
    pub reason: String,
    pub message: String,
    /// As written (RFC 3339).
    pub last_transition: String,
}

/// The conditions vipd writes on the Services it serves.
pub mod conditions {
    /// Whether the Service has its addresses, and if not why.
    pub const ASSIGNED: &str = "vipd.dev/AddressAssigned";
    /// Whether a node announces them, and which.
    pub const ANNOUNCED: &str = "vipd.dev/Announced";
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SvcKey {
    pub namespace: String,
    pub name: String,
}

impl SvcKey {
    /// The key of `svc` (empty parts where its metadata has none).
    pub fn of(svc: &Service) -> SvcKey {
        SvcKey {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for SvcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// A port as far as sharing is concerned.
pub type PortKey = (i32, String);

/// The ingress a Service should show: per address, its ports.
pub type Ingress = Vec<(IpAddr, Vec<PortKey>)>;

/// The ingress a Service shows now, reduced to what vipd writes.
pub fn current_ingress(svc: &Service) -> Ingress {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| {
                    let ip: IpAddr = i.ip.as_ref()?.parse().ok()?;
                    let ports = i
                        .ports
                        .as_ref()
                        .map(|ps| ps.iter().map(|p| (p.port, p.protocol.clone())).collect())
                        .unwrap_or_default();
                    Some((ip, ports))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One Service, as the decisions need it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SvcInfo {
    pub key: SvcKey,
    /// For "older wins" when two Services want one address.
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    pub is_load_balancer: bool,
    pub class: Option<String>,
    pub ignored: bool,
    /// The requested addresses as written: `kube-vip.io/loadbalancerIPs`,
    /// else MetalLB's annotation (see `keys::REQUEST_KEYS`).
    pub requested: Option<String>,
    /// The annotation `requested` came from.
    pub requested_from: &'static str,
    /// Other request annotations also set, and ignored for it.
    pub requested_ignored: Vec<&'static str>,
    /// MetalLB's sharing key (`allow-shared-ip`): Services with the same key
    /// may share an address when their ports do not overlap.
    pub share_key: Option<String>,
    /// kube-vip annotations set on it that vipd does not implement.
    pub unsupported: Vec<(&'static str, &'static str)>,
    /// vipd's conditions in its status, by type.
    pub conditions: Conditions,
    /// `vipd.dev/pool`: the pool vipd allocated its addresses from.
    pub pool: Option<String>,
    pub spec_ip: Option<String>,
    pub status_ips: Vec<IpAddr>,
    /// `vipd.dev/assigned`: the addresses vipd itself wrote to the status.
    pub assigned: Vec<IpAddr>,
    pub families: Vec<Family>,
    pub family_policy: FamilyPolicy,
    pub ports: Vec<PortKey>,
    pub local_policy: bool,
    pub lbpool: Option<String>,
    pub interface: Option<String>,
    pub vip_host: Option<String>,
    /// `vipd.dev/bgp-communities` and `vipd.dev/bgp-local-pref`, as written.
    pub bgp_communities: Option<String>,
    pub bgp_local_pref: Option<String>,
    /// What writes and Events name it by.
    pub uid: String,
    pub resource_version: String,
    /// `status.loadBalancer.ingress` as it is now, with its ports.
    pub ingress: Ingress,
}

/// vipd's conditions in a Service's status, by type: two at most, kept in
/// a list (a map's smallest node would be a kilobyte per Service).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditions(Vec<(String, Condition)>);

impl Conditions {
    pub fn get(&self, kind: &str) -> Option<&Condition> {
        self.0.iter().find(|(k, _)| k == kind).map(|(_, c)| c)
    }
}

/// vipd's conditions in a Service's status.
fn vipd_conditions(s: &Service) -> Conditions {
    let list = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .filter(|c| c.type_.starts_with("vipd.dev/"))
                .map(|c| {
                    (
                        c.type_.clone(),
                        Condition {
                            status: c.status == "True",
                            reason: c.reason.clone(),
                            message: c.message.clone(),
                            last_transition: c.last_transition_time.0.to_string(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Conditions(list)
}

/// The addresses of a comma list; what does not parse is left out.
pub fn parse_ips(v: &str) -> Vec<IpAddr> {
    v.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

fn family_of(s: &str) -> Option<Family> {
    match s {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        _ => None,
    }
}

/// A Service as the controller keeps it (see `cache`): built once per
/// watch event, shared by every pass and every write that names it.
pub type Svc = std::sync::Arc<SvcInfo>;

impl SvcInfo {
    /// The Service, as an Event names it.
    pub fn object_ref(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(self.key.namespace.clone()),
            name: Some(self.key.name.clone()),
            uid: Some(self.uid.clone()).filter(|u| !u.is_empty()),
            resource_version: Some(self.resource_version.clone()).filter(|v| !v.is_empty()),
            ..Default::default()
        }
    }

    /// Every address this Service names: requested (annotation,
    /// `spec.loadBalancerIP`) or in its status.
    pub fn addresses_asked(&self) -> Vec<IpAddr> {
        let mut out = self.status_ips.clone();
        out.extend(self.requested.as_deref().map(parse_ips).unwrap_or_default());
        out.extend(
            self.spec_ip
                .as_deref()
                .and_then(|v| v.trim().parse::<IpAddr>().ok()),
        );
        out
    }

    pub fn from_service(s: &Service) -> Option<SvcInfo> {
        let meta = &s.metadata;
        let key = SvcKey {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
        };
        // Borrowed, not copied: a pass reads every Service.
        let no_spec = ServiceSpec::default();
        let spec = s.spec.as_ref().unwrap_or(&no_spec);
        let no_map = BTreeMap::new();
        let ann = meta.annotations.as_ref().unwrap_or(&no_map);
        let labels = meta.labels.as_ref().unwrap_or(&no_map);
        let ingress = current_ingress(s);
        let status_ips = ingress.iter().map(|(ip, _)| *ip).collect();
        let families: Vec<Family> = spec
            .ip_families
            .as_ref()
            .map(|f| f.iter().filter_map(|x| family_of(x)).collect())
            .unwrap_or_default();
        let family_policy = match spec.ip_family_policy.as_deref() {
            Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
            _ => FamilyPolicy::SingleStack,
        };
        let ports = spec
            .ports
            .as_ref()
            .map(|ps| {
                ps.iter()
                    .map(|p| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
                    .collect()
            })
            .unwrap_or_default();
        let requests: Vec<(&'static str, String)> = keys::REQUEST_KEYS
            .iter()
            .filter_map(|k| {
                ann.get(*k)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (*k, v.clone()))
            })
            .collect();
        Some(SvcInfo {
            key,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            is_load_balancer: spec.type_.as_deref() == Some("LoadBalancer"),
            class: spec.load_balancer_class.clone(),
            ignored: ann.get(keys::IGNORE).is_some_and(|v| v == "true"),
            requested: requests.first().map(|(_, v)| v.clone()),
            requested_from: requests.first().map(|(k, _)| *k).unwrap_or(""),
            requested_ignored: requests.iter().skip(1).map(|(k, _)| *k).collect(),
            share_key: [keys::METALLB_SHARE, keys::METALLB_SHARE_OLD]
                .iter()
                .find_map(|k| ann.get(*k))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            unsupported: keys::UNSUPPORTED
                .iter()
                .filter(|(k, _)| ann.contains_key(*k))
                .copied()
                .collect(),
            conditions: vipd_conditions(s),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            ingress,
            pool: ann.get(keys::POOL).cloned().filter(|v| !v.is_empty()),
            spec_ip: spec.load_balancer_ip.clone().filter(|v| !v.is_empty()),
            status_ips,
            assigned: ann
                .get(keys::ASSIGNED)
                .map(|v| parse_ips(v))
                .unwrap_or_default(),
            families,
            family_policy,
            ports,
            local_policy: spec.external_traffic_policy.as_deref() == Some("Local"),
            // A label, as K3s reads it (an empty value is none).
            lbpool: labels
                .get(keys::SERVICELB_POOL)
                .filter(|v| !v.is_empty())
                .cloned(),
            interface: ann
                .get(keys::SERVICE_INTERFACE)
                .cloned()
                .filter(|v| !v.is_empty()),
            vip_host: ann.get(keys::VIP_HOST).cloned(),
            bgp_communities: ann.get(keys::BGP_COMMUNITIES).cloned(),
            bgp_local_pref: ann.get(keys::BGP_LOCAL_PREF).cloned(),
        })
    }
}

/// Which Services vipd serves (kube-vip's rules).
#[derive(Debug, Clone)]
pub struct ClassFilter {
    pub class_name: String,
    pub class_only: bool,
    /// Only this namespace (`svc_namespace`), or all.
    pub namespace: Option<String>,
}

impl ClassFilter {
    pub fn serves(&self, s: &SvcInfo) -> bool {
        if !s.is_load_balancer || s.ignored {
            return false;
        }
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != s.key.namespace)
        {
            return false;
        }
        match &s.class {
            None => !self.class_only,
            Some(c) => *c == self.class_name,
        }
    }
}
