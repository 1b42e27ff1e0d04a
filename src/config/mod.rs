//! vipd's configuration: kube-vip's names, checked once at start-up.
//!
//! [`Layers`] gathers what was given (config file < flags < environment);
//! [`Config::from_layers`] turns it into typed settings or one
//! [`ConfigError`] that names the variable to fix. Nothing here touches the
//! network or the API server: checks that need the host (does the interface
//! exist?) happen in `manager` and name the variable the same way.

pub mod layers;
pub mod settings;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use layers::{Given, Layers, Origin};

/// A configuration error: the setting, where its value came from, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            setting: setting.into(),
            message: message.into(),
        }
    }

    fn file(path: &Path, message: String) -> Self {
        ConfigError::new(format!("config file {}", path.display()), message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: {}: {}",
            self.setting, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

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
    /// The Services leader's Lease (`svc_leasename` in `cp_namespace`);
    /// per-address Leases live in the same namespace.
    pub lease: LeaseConfig,
    pub class_name: String,
    pub class_only: bool,
    /// The pools ConfigMap, namespace and name.
    pub pool_configmap: (String, String),
    /// Interface for Service addresses (`vip_servicesinterface`).
    pub interface: Option<String>,
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
    /// Kernel lifetime of held addresses (`None`: permanent).
    pub addr_lifetime: Option<Duration>,
    pub kubeconfig: Option<PathBuf>,
    pub status_addr: Option<SocketAddr>,
    pub health_port: Option<u16>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub bgp: Option<BgpConfig>,
}

// ------------------------------------------------------------------ parsing

/// Reads one setting with a parser, naming it in the error.
struct Reader<'a> {
    layers: &'a Layers,
}

impl Reader<'_> {
    fn raw(&self, env: &str) -> Option<&Given> {
        self.layers.get(env).filter(|g| !g.value.trim().is_empty())
    }

    fn err(&self, env: &str, msg: impl fmt::Display) -> ConfigError {
        let g = self.layers.get(env);
        let flag = settings::by_env(env).map(|s| s.flag).unwrap_or(env);
        match g {
            Some(g) => ConfigError::new(
                format!("{env}={:?} (from {}; flag --{flag})", g.value, g.origin),
                msg.to_string(),
            ),
            None => ConfigError::new(format!("{env} (flag --{flag})"), msg.to_string()),
        }
    }

    fn string(&self, env: &str) -> Option<String> {
        self.raw(env).map(|g| g.value.trim().to_string())
    }

    fn bool(&self, env: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(env) {
            None => Ok(default),
            Some(g) => parse_bool(&g.value).ok_or_else(|| self.err(env, "expected true or false")),
        }
    }

    fn duration(&self, env: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(env) {
            None => Ok(default),
            Some(g) => parse_duration(&g.value).map_err(|m| self.err(env, m)),
        }
    }

    fn number<T: std::str::FromStr>(
        &self,
        env: &str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.raw(env) {
            None => Ok(default),
            Some(g) => g
                .value
                .trim()
                .parse()
                .map_err(|_| self.err(env, format!("expected {what}"))),
        }
    }
}

/// `true`/`false` as kube-vip (Go's strconv.ParseBool) accepts them.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Whole seconds (kube-vip's form) or a number with a unit: `500ms`, `1.5s`, `2m`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        "expected seconds, or a number with a unit (ms, s, m), e.g. 500ms".to_string()
    })?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s or m")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 86_400.0 {
        return Err("duration out of range".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_address_list(v: &str) -> Result<Vec<AddressSpec>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(ip) = part.parse::<IpAddr>() {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(format!("{ip} cannot be a virtual IP"));
            }
            out.push(AddressSpec::Ip(ip));
        } else if is_dns_name(part) {
            out.push(AddressSpec::Name(part.to_string()));
        } else {
            return Err(format!("{part:?} is neither an IP address nor a DNS name"));
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    let v4 = out
        .iter()
        .filter(|a| matches!(a, AddressSpec::Ip(IpAddr::V4(_))))
        .count();
    let v6 = out
        .iter()
        .filter(|a| matches!(a, AddressSpec::Ip(IpAddr::V6(_))))
        .count();
    if v4 > 1 || v6 > 1 {
        return Err("at most one IPv4 and one IPv6 address (dual-stack)".into());
    }
    Ok(out)
}

fn is_dns_name(s: &str) -> bool {
    // Names must contain a letter: "192.0.2" is a typo of an IP, not a name.
    s.len() <= 253
        && s.chars().any(|c| c.is_ascii_alphabetic())
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn parse_subnets(v: &str) -> Result<Subnets, String> {
    let parts: Vec<&str> = v
        .split(',')
        .map(|p| p.trim().trim_start_matches('/'))
        .collect();
    let num = |p: &str| {
        p.parse::<u8>()
            .map_err(|_| format!("{p:?} is not a prefix length"))
    };
    let (v4, v6) = match parts.as_slice() {
        [one] => {
            let n = num(one)?;
            if n <= 32 {
                (n, 128)
            } else {
                (32, n)
            }
        }
        [a, b] => (num(a)?, num(b)?),
        _ => return Err("expected 32, 128 or 32,128".into()),
    };
    if v4 > 32 || v6 > 128 || v4 == 0 || v6 == 0 {
        return Err("IPv4 prefix must be 1-32 and IPv6 prefix 1-128".into());
    }
    Ok(Subnets { v4, v6 })
}

fn is_interface_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains(['/', ' ', ':']) && s != "." && s != ".."
}

/// A DNS-1123 subdomain (names of Leases, namespaces).
fn is_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Config {
    /// Checks and types everything given. `hostname` is the fallback node name.
    pub fn from_layers(layers: &Layers, hostname: &str) -> Result<Config, ConfigError> {
        let r = Reader { layers };

        let arp = r.bool("vip_arp", false)?;
        let bgp = r.bool("bgp_enable", false)?;
        let announce = match (arp, bgp) {
            (true, true) => {
                return Err(ConfigError::new(
                    "vip_arp and bgp_enable",
                    "both are true: choose one announcement mode",
                ))
            }
            (true, false) => Announce::Arp,
            (false, true) => Announce::Bgp,
            (false, false) => {
                return Err(ConfigError::new(
                    "vip_arp / bgp_enable",
                    "no announcement mode: set vip_arp=true (layer 2) or bgp_enable=true",
                ))
            }
        };

        let cp_enable = r.bool("cp_enable", false)?;
        let services_enabled = r.bool("svc_enable", false)?;
        if !cp_enable && !services_enabled {
            return Err(ConfigError::new(
                "cp_enable / svc_enable",
                "no feature enabled: set cp_enable=true (control-plane VIP) and/or svc_enable=true (Services)",
            ));
        }

        let node_name = r
            .string("vip_nodename")
            .unwrap_or_else(|| hostname.to_string());
        if node_name.is_empty() || node_name.len() > 253 || node_name.contains(char::is_whitespace)
        {
            return Err(r.err("vip_nodename", "must be a non-empty name without spaces"));
        }

        let interface = r.string("vip_interface");
        if let Some(i) = &interface {
            if !is_interface_name(i) {
                return Err(r.err(
                    "vip_interface",
                    "not an interface name (at most 15 characters, no '/', ':' or spaces)",
                ));
            }
        }
        let services_interface = r.string("vip_servicesinterface");
        if let Some(i) = &services_interface {
            if !is_interface_name(i) {
                return Err(r.err("vip_servicesinterface", "not an interface name"));
            }
        }
        let services = if services_enabled {
            let namespace = r.string("svc_namespace");
            if let Some(ns) = &namespace {
                if !is_k8s_name(ns) {
                    return Err(r.err("svc_namespace", "not a valid namespace name"));
                }
            }
            let pool = r
                .string("svc_pool_configmap")
                .unwrap_or_else(|| "kube-system/kubevip".into());
            let pool_configmap = match pool.split_once('/') {
                Some((ns, name)) if is_k8s_name(ns) && is_k8s_name(name) => {
                    (ns.to_string(), name.to_string())
                }
                None if is_k8s_name(&pool) => ("kube-system".to_string(), pool.clone()),
                _ => {
                    return Err(r.err(
                        "svc_pool_configmap",
                        "expected NAMESPACE/NAME of a ConfigMap",
                    ))
                }
            };
            let class_name = r
                .string("lb_class_name")
                .unwrap_or_else(|| "kube-vip.io/kube-vip-class".into());
            Some(ServicesConfig {
                namespace,
                per_address_election: r.bool("svc_election", false)?,
                lease: lease_config(&r, "svc_leasename", "plndr-svcs-lock")?,
                class_name,
                class_only: r.bool("lb_class_only", false)?,
                pool_configmap,
                interface: services_interface,
            })
        } else {
            None
        };
        let subnets = match r.string("vip_subnet") {
            None => Subnets { v4: 32, v6: 128 },
            Some(v) => parse_subnets(&v).map_err(|m| r.err("vip_subnet", m))?,
        };

        let control_plane = if cp_enable {
            let (key, value) = match (r.string("address"), r.string("vip_address")) {
                (Some(a), _) => ("address", a),
                (None, Some(a)) => ("vip_address", a),
                (None, None) => {
                    return Err(r.err("address", "cp_enable=true needs the VIP in `address`"))
                }
            };
            let addresses = parse_address_list(&value).map_err(|m| r.err(key, m))?;
            let port = r.number("port", 6443u16, "a port number 1-65535")?;
            if port == 0 {
                return Err(r.err("port", "expected a port number 1-65535"));
            }
            let lease = r.bool("vip_leaderelection", false)?;
            let raft = r.bool("vip_raft", false)?;
            let election = match (lease, raft) {
                (true, true) => {
                    return Err(ConfigError::new(
                        "vip_leaderelection and vip_raft",
                        "both are true: choose one election (a Lease, or Raft among the peers)",
                    ))
                }
                (true, false) => {
                    Election::Lease(lease_config(&r, "vip_leasename", "plndr-cp-lock")?)
                }
                (false, true) => Election::Raft(raft_settings(&r, &node_name)?),
                (false, false) => Election::None,
            };
            Some(ControlPlane {
                addresses,
                port,
                election,
            })
        } else {
            None
        };

        let arp_ms = r.number("vip_arpRate", 3000u64, "milliseconds")?;
        // kube-vip resets rates under 500 ms to 3000 ms; so do we.
        let arp_rate = Duration::from_millis(if arp_ms < 500 { 3000 } else { arp_ms });

        let lease_duration = match (control_plane.as_ref().map(|c| &c.election), &services) {
            (Some(Election::Lease(l)), _) => l.timing.lease_duration,
            (_, Some(s)) => s.lease.timing.lease_duration,
            _ => LeaseTiming::DEFAULT.lease_duration,
        };
        let default_lifetime = lease_duration
            .saturating_sub(Duration::from_secs(2))
            .max(Duration::from_secs(1));
        let lifetime = r.duration("vip_addr_lifetime", default_lifetime)?;
        if lifetime > Duration::ZERO && lifetime < Duration::from_secs(1) {
            return Err(r.err(
                "vip_addr_lifetime",
                "the kernel counts lifetimes in whole seconds: use 0 or at least 1s",
            ));
        }
        if lifetime > Duration::ZERO && lifetime + Duration::from_secs(1) >= lease_duration {
            return Err(r.err(
                "vip_addr_lifetime",
                format!(
                    "must be at least 1s shorter than the lease duration ({}s), or 0: a dead leader's address must expire before another node takes over",
                    lease_duration.as_secs_f64()
                ),
            ));
        }
        let addr_lifetime = (lifetime > Duration::ZERO).then_some(lifetime);

        let status_addr = match layers.get("prometheus_server") {
            None => Some(SocketAddr::from(([0, 0, 0, 0], 2112))),
            Some(g) if g.value.trim().is_empty() => None,
            Some(g) => Some(parse_listen(&g.value).map_err(|m| r.err("prometheus_server", m))?),
        };
        let health_port = match r.number("health_check_port", 0u16, "a port number")? {
            0 => None,
            p => Some(p),
        };
        let log_level = match r.string("vip_loglevel") {
            None => "info".to_string(),
            Some(v) => parse_log_level(&v).ok_or_else(|| {
                r.err(
                    "vip_loglevel",
                    "expected error, warn, info, debug, trace or a number 0-5",
                )
            })?,
        };
        let log_format = match r.string("vip_logformat").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(r.err("vip_logformat", "expected text or json")),
        };

        let bgp = match announce {
            Announce::Bgp => {
                let port = control_plane.as_ref().map(|c| c.port).unwrap_or(6443);
                Some(bgp_config(&r, port)?)
            }
            Announce::Arp => None,
        };
        if let (Some(cp), Announce::Bgp) = (&control_plane, announce) {
            if !matches!(cp.election, Election::None) {
                return Err(ConfigError::new(
                    "bgp_enable with vip_leaderelection / vip_raft",
                    "in BGP mode every control-plane node announces the VIP (ECMP) while its API server is healthy: turn the election off",
                ));
            }
        }

        let namespace = r
            .string("cp_namespace")
            .unwrap_or_else(|| "kube-system".into());
        if !is_k8s_name(&namespace) {
            return Err(r.err("cp_namespace", "not a valid namespace name"));
        }
        Ok(Config {
            bgp,
            namespace,
            node_name,
            announce,
            control_plane,
            services,
            interface,
            subnets,
            arp_rate,
            addr_lifetime,
            kubeconfig: r.string("k8s_config_file").map(PathBuf::from),
            status_addr,
            health_port,
            log_level,
            log_format,
        })
    }
}

fn lease_config(
    r: &Reader,
    name_key: &str,
    default_name: &str,
) -> Result<LeaseConfig, ConfigError> {
    let mut namespace = r
        .string("cp_namespace")
        .unwrap_or_else(|| "kube-system".into());
    if !is_k8s_name(&namespace) {
        return Err(r.err("cp_namespace", "not a valid namespace name"));
    }
    let mut name = r.string(name_key).unwrap_or_else(|| default_name.into());
    if let Some((ns, n)) = name.split_once('/') {
        namespace = ns.to_string();
        name = n.to_string();
        if !is_k8s_name(&namespace) {
            return Err(r.err(name_key, "namespace part is not a valid name"));
        }
    }
    if !is_k8s_name(&name) {
        return Err(r.err(
            name_key,
            "not a valid Lease name (lower-case letters, digits, '-', '.')",
        ));
    }
    let d = LeaseTiming::DEFAULT;
    let timing = LeaseTiming {
        lease_duration: r.duration("vip_leaseduration", d.lease_duration)?,
        renew_deadline: r.duration("vip_renewdeadline", d.renew_deadline)?,
        retry_period: r.duration("vip_retryperiod", d.retry_period)?,
        hold_on_api_loss: r.bool("vip_hold_on_api_loss", d.hold_on_api_loss)?,
    };
    if timing.lease_duration < Duration::from_secs(2) {
        return Err(r.err("vip_leaseduration", "must be at least 2s"));
    }
    if timing.lease_duration.subsec_nanos() != 0 {
        return Err(r.err(
            "vip_leaseduration",
            "Leases count whole seconds: use a whole number of seconds",
        ));
    }
    if timing.renew_deadline >= timing.lease_duration {
        return Err(r.err(
            "vip_renewdeadline",
            format!(
                "must be shorter than vip_leaseduration ({}s): the leader must give the VIP up before its Lease can expire",
                timing.lease_duration.as_secs_f64()
            ),
        ));
    }
    if timing.retry_period.is_zero() || timing.retry_period * 6 / 5 >= timing.renew_deadline {
        return Err(r.err(
            "vip_retryperiod",
            "must be above 0 and well under vip_renewdeadline (1.2 x retry < renew deadline)",
        ));
    }
    Ok(LeaseConfig {
        namespace,
        name,
        timing,
    })
}

/// One entry of `bgp_peers`: `ADDRESS:AS:PASSWORD:MULTIHOP[:PORT]`, IPv6 in brackets.
fn parse_bgp_peer(item: &str) -> Result<(IpAddr, u32, String, bool, Option<u16>), String> {
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

fn bgp_config(r: &Reader, api_port: u16) -> Result<BgpConfig, ConfigError> {
    let asn = r.number("bgp_as", 65000u32, "an AS number 1-4294967295")?;
    if asn == 0 {
        return Err(r.err("bgp_as", "an AS number is 1-4294967295"));
    }
    let router_id = match r.string("bgp_routerid") {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| r.err("bgp_routerid", "expected an IPv4 address"))?,
        ),
    };
    let source_ip = match r.string("bgp_sourceip") {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| r.err("bgp_sourceip", "expected an IP address"))?,
        ),
    };
    let source_if = r.string("bgp_sourceif");
    if source_ip.is_some() && source_if.is_some() {
        return Err(ConfigError::new(
            "bgp_sourceip and bgp_sourceif",
            "set one or the other",
        ));
    }
    let hold_time = r.number("bgp_hold_time", 30u64, "seconds")?;
    let keepalive = r.number("bgp_keepalive_interval", 10u64, "seconds")?;
    if hold_time != 0 && (hold_time < 3 || keepalive == 0 || keepalive * 3 > hold_time) {
        return Err(r.err(
            "bgp_keepalive_interval",
            format!("must be at most a third of bgp_hold_time ({hold_time}s), and the hold time at least 3s"),
        ));
    }
    let file_password = match r.string("bgp_peerpass_file") {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| r.err("bgp_peerpass_file", format!("cannot read: {e}")))?,
        ),
    };
    let mut peers = Vec::new();
    let make = |address: IpAddr, asn: u32, password: String, multihop: bool, port: Option<u16>| {
        vipd_bgp::PeerConfig {
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
    if let Some(a) = r.string("bgp_peeraddress") {
        let address: IpAddr = a
            .parse()
            .map_err(|_| r.err("bgp_peeraddress", "expected an IP address"))?;
        let peer_as = r.number("bgp_peeras", 65000u32, "an AS number")?;
        let password = r.string("bgp_peerpass").unwrap_or_default();
        peers.push(make(
            address,
            peer_as,
            password,
            r.bool("bgp_multihop", false)?,
            None,
        ));
    }
    if let Some(list) = r.string("bgp_peers") {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            // Never echo the entry: it may hold a password.
            let (address, peer_as, password, multihop, port) =
                parse_bgp_peer(item).map_err(|m| {
                    ConfigError::new(
                        "bgp_peers (flag --bgppeers)",
                        format!("an entry for {}: {m}", item.split(':').next().unwrap_or("")),
                    )
                })?;
            peers.push(make(address, peer_as, password, multihop, port));
        }
    }
    if peers.is_empty() {
        return Err(ConfigError::new(
            "bgp_peeraddress / bgp_peers",
            "bgp_enable=true needs at least one peer",
        ));
    }
    let mut attrs = vipd_bgp::RouteAttrs::default();
    if let Some(cs) = r.string("bgp_communities") {
        for c in cs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            attrs.communities.push(
                vipd_bgp::route::parse_community(c).map_err(|m| r.err("bgp_communities", m))?,
            );
        }
    }
    if r.string("bgp_local_pref").is_some() {
        attrs.local_pref = Some(r.number("bgp_local_pref", 100u32, "a number")?);
    }
    let api = match r.string("bgp_gobgp_api") {
        None => vipd_bgp::ApiAddr::default(),
        Some(v) => vipd_bgp::ApiAddr::parse(&v).map_err(|m| r.err("bgp_gobgp_api", m))?,
    };
    Ok(BgpConfig {
        asn,
        router_id,
        router_interface: r.string("bgp_routerinterface"),
        peers,
        attrs,
        gobgpd: PathBuf::from(
            r.string("bgp_gobgpd_path")
                .unwrap_or_else(|| "gobgpd".into()),
        ),
        api,
        external: r.bool("bgp_gobgp_external", false)?,
        health_url: r
            .string("vip_healthcheck_url")
            .unwrap_or_else(|| format!("https://127.0.0.1:{api_port}/readyz")),
    })
}

fn raft_settings(r: &Reader, me: &str) -> Result<RaftSettings, ConfigError> {
    let peers = match r.string("vip_raft_peers") {
        None => {
            return Err(r.err(
                "vip_raft_peers",
                "vip_raft=true needs the peer list: NAME=HOST:PORT,...",
            ))
        }
        Some(v) => vipd_raft::Peers::parse(&v).map_err(|m| r.err("vip_raft_peers", m))?,
    };
    if peers.by_name(me).is_none() {
        return Err(r.err(
            "vip_raft_peers",
            format!("this node ({me}, from vip_nodename or the host name) is not in the list"),
        ));
    }
    let tick = r.duration("vip_raft_tick", Duration::from_millis(50))?;
    if tick < Duration::from_millis(10) || tick > Duration::from_secs(5) {
        return Err(r.err("vip_raft_tick", "must be between 10ms and 5s"));
    }
    let heartbeat_ticks = r.number(
        "vip_raft_heartbeat_ticks",
        2usize,
        "a whole number of ticks",
    )?;
    let election_ticks = r.number("vip_raft_election_ticks", 8usize, "a whole number of ticks")?;
    if heartbeat_ticks == 0 {
        return Err(r.err("vip_raft_heartbeat_ticks", "must be at least 1"));
    }
    if election_ticks < heartbeat_ticks * 3 {
        return Err(r.err(
            "vip_raft_election_ticks",
            format!("must be at least 3 heartbeats ({} ticks): a follower must hear several before it gives up on the leader", heartbeat_ticks * 3),
        ));
    }
    let state_dir = r
        .string("vip_raft_state_dir")
        .unwrap_or_else(|| "/var/lib/vipd/raft".into());
    let Some(secret_file) = r.string("vip_raft_secret_file") else {
        return Err(r.err(
            "vip_raft_secret_file",
            "vip_raft=true needs a secret shared by every peer: a file with the same random bytes on each node (from a Secret or a host file), so nobody else can speak Raft to it",
        ));
    };
    let bytes = std::fs::read(&secret_file)
        .map_err(|e| r.err("vip_raft_secret_file", format!("cannot read: {e}")))?;
    let secret =
        vipd_raft::Secret::from_bytes(&bytes).map_err(|m| r.err("vip_raft_secret_file", m))?;
    Ok(RaftSettings {
        peers,
        secret,
        secret_file: PathBuf::from(secret_file),
        state_dir: PathBuf::from(state_dir),
        tick,
        heartbeat_ticks,
        election_ticks,
    })
}

fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    let v = v.trim();
    // kube-vip's ":2112" means every address.
    let full = if v.starts_with(':') {
        format!("0.0.0.0{v}")
    } else {
        v.to_string()
    };
    full.parse()
        .map_err(|_| "expected HOST:PORT or :PORT".to_string())
}

fn parse_log_level(v: &str) -> Option<String> {
    let l = v.trim().to_ascii_lowercase();
    let named = match l.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => l.clone(),
        // kube-vip passes a number: slog levels (-4 debug, 0 info, 4 warn, 8
        // error) or logrus-style 0-5; map both to the nearest name.
        "-4" | "5" => "debug".into(),
        "0" | "4" => "info".into(),
        "8" | "1" | "2" => "error".into(),
        "3" => "warn".into(),
        _ => return None,
    };
    Some(named)
}

#[cfg(test)]
mod tests;
