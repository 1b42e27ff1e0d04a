//! vipd's configuration as typed values: what `Config::from_layers` makes
//! of the settings, and what the rest of vipd reads.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How addresses are made known to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Gratuitous ARP / unsolicited NA on the interface (L2).
    Arp,
    /// BGP routes (L3).
    Bgp,
}

/// How the control-plane VIP's holder is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Election {
    /// A `coordination.k8s.io` Lease.
    Lease(LeaseConfig),
    /// Raft among the control-plane peers (no API server needed).
    Raft(RaftSettings),
    /// No election: this node always holds the VIP (single-node use).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftSettings {
    pub peers: vipd_raft::Peers,
    /// The key derived from `vip_raft_secret_file`.
    pub secret: vipd_raft::Secret,
    pub secret_file: PathBuf,
    pub state_dir: PathBuf,
    pub tick: Duration,
    pub heartbeat_ticks: usize,
    pub election_ticks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub timing: LeaseTiming,
}

/// Lease timing. Invariant: `retry_period < renew_deadline < lease_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// A leader that cannot reach the API server keeps its addresses until
    /// another node announces them (`vip_hold_on_api_loss`).
    pub hold_on_api_loss: bool,
}

impl LeaseTiming {
    /// vipd's defaults: fail over in about 4 s, with 1.5 s between the
    /// leader's give-up and the earliest takeover.
    pub const DEFAULT: LeaseTiming = LeaseTiming {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_millis(2500),
        retry_period: Duration::from_millis(500),
        hold_on_api_loss: true,
    };
}

/// The control-plane VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// IP addresses or DNS names as given (`address`).
    pub addresses: Vec<AddressSpec>,
    pub port: u16,
    pub election: Election,
}

/// A VIP as configured: a literal address or a DNS name resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressSpec {
    Ip(IpAddr),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnets {
    pub v4: u8,
    pub v6: u8,
}

impl Subnets {
    pub fn for_ip(&self, ip: IpAddr) -> u8 {
        if ip.is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// LoadBalancer Services (`svc_enable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesConfig {
    /// Only this namespace's Services (`svc_namespace`), or all.
    pub namespace: Option<String>,
    /// One Lease per address (`svc_election`).
    pub per_address_election: bool,
    /// Addresses that need a node of their own are placed by hashing over
    /// live nodes (`svc_placement`), each node renewing one liveness Lease,
    /// instead of one Lease per address.
    pub placement: bool,
    /// The liveness Lease's timing with placement (`svc_liveness_lease`).
    pub liveness: LeaseTiming,
    /// With placement: follow every other vipd's `/v1/alive` stream, so a
    /// dead one's addresses move without waiting for its Lease
    /// (`svc_peer_links`).
    pub peer_links: bool,
    /// The Services leader's Lease (`svc_leasename` in `cp_namespace`);
    /// per-address Leases live in the same namespace, with its timing.
    pub lease: LeaseConfig,
    /// The Services leader's own Lease timing (`svc_leader_lease`, see
    /// `lease::leader_timing`).
    pub leader_timing: LeaseTiming,
    pub class_name: String,
    pub class_only: bool,
    /// The pools ConfigMap, namespace and name.
    pub pool_configmap: (String, String),
    /// Interface for Service addresses (`vip_servicesinterface`).
    pub interface: Option<String>,
    /// Kernel lifetime of Service addresses (`svc_addr_lifetime`; `None`:
    /// permanent).
    pub addr_lifetime: Option<Duration>,
}

/// BGP mode (`bgp_enable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    pub asn: u32,
    pub router_id: Option<std::net::Ipv4Addr>,
    pub router_interface: Option<String>,
    pub peers: Vec<vipd_bgp::PeerConfig>,
    pub attrs: vipd_bgp::RouteAttrs,
    pub gobgpd: PathBuf,
    pub api: vipd_bgp::ApiAddr,
    pub external: bool,
    /// The control-plane VIP is announced only while this answers 200.
    pub health_url: String,
}

/// The whole typed configuration of `vipd manager`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    /// vipd's namespace (`cp_namespace`): its Leases and instance records.
    pub namespace: String,
    pub announce: Announce,
    pub control_plane: Option<ControlPlane>,
    pub services: Option<ServicesConfig>,
    /// Interface for the VIP; `None`: the default route's.
    pub interface: Option<String>,
    pub subnets: Subnets,
    pub arp_rate: Duration,
    /// Kernel lifetime of the control-plane VIP (`None`: permanent).
    pub addr_lifetime: Option<Duration>,
    pub kubeconfig: Option<PathBuf>,
    pub status_addr: Option<SocketAddr>,
    pub health_port: Option<u16>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Scheduling niceness of vipd's threads (`vip_nice`).
    pub nice: i32,
    pub bgp: Option<BgpConfig>,
    /// Which settings were given where (names only), for the start-up line.
    pub sources: String,
}
