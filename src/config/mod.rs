//! vipd's configuration: kube-vip's names, checked once at start-up.
//!
//! - [`settings`]: the table of every setting (name, flag, help, default);
//! - [`layers`]: what was given, from where (config file < flags < environment);
//! - [`reader`] and [`values`]: reading and parsing values, recording every
//!   bad one;
//! - [`types`]: the typed result;
//! - one file per part: [`lease`], [`raft`], [`bgp`], and the Services
//!   settings below.
//!
//! [`Config::from_layers`] turns the layers into a [`Config`] or into
//! [`ConfigErrors`]: every setting to fix, each naming its variable, flag
//! and where its value came from. Nothing here touches the network or the
//! API server: checks that need the host (does the interface exist?)
//! happen in `manager` and name the variable the same way.

pub mod bgp;
mod errors;
pub mod layers;
mod lease;
mod raft;
mod reader;
pub mod settings;
mod types;
pub mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use errors::{ConfigError, ConfigErrors};
pub use layers::{Given, Layers, Origin};
pub use types::*;
pub use values::{parse_bool, parse_duration};

use reader::Reader;
use values::{
    is_interface_name, is_k8s_name, parse_address_list, parse_listen, parse_log_level,
    parse_subnets,
};

impl Config {
    /// Checks and types everything given. `hostname` is the fallback node name.
    pub fn from_layers(layers: &Layers, hostname: &str) -> Result<Config, ConfigErrors> {
        let r = Reader::new(layers);

        let announce = match (r.bool("vip_arp"), r.bool("bgp_enable")) {
            (true, true) => {
                r.problem(
                    "vip_arp and bgp_enable",
                    "both are true: choose one announcement mode",
                );
                Announce::Arp
            }
            (false, true) => Announce::Bgp,
            (true, false) => Announce::Arp,
            (false, false) => {
                if r.all_good(&["vip_arp", "bgp_enable"]) {
                    r.problem(
                        "vip_arp / bgp_enable",
                        "no announcement mode: set vip_arp=true (layer 2) or bgp_enable=true",
                    );
                }
                Announce::Arp
            }
        };
        let cp_enable = r.bool("cp_enable");
        let services_enabled = r.bool("svc_enable");
        if !cp_enable && !services_enabled && r.all_good(&["cp_enable", "svc_enable"]) {
            r.problem(
                "cp_enable / svc_enable",
                "no feature enabled: set cp_enable=true (control-plane VIP) and/or svc_enable=true (Services)",
            );
        }

        let node_name = r
            .string("vip_nodename")
            .unwrap_or_else(|| hostname.to_string());
        if node_name.is_empty() || node_name.len() > 253 || node_name.contains(char::is_whitespace)
        {
            r.bad("vip_nodename", "must be a non-empty name without spaces");
        }
        let interface = r.string("vip_interface");
        if interface.as_deref().is_some_and(|i| !is_interface_name(i)) {
            r.bad(
                "vip_interface",
                "not an interface name (at most 15 characters, no '/', ':' or spaces)",
            );
        }
        let services = services_enabled.then(|| services_config(&r));
        let subnets = r.parsed("vip_subnet", Subnets { v4: 32, v6: 128 }, parse_subnets);
        let control_plane = cp_enable.then(|| control_plane(&r, &node_name)).flatten();

        let arp_ms = r.number("vip_arpRate", 3000u64, "milliseconds");
        // kube-vip resets rates under 500 ms to 3000 ms; so do we.
        let arp_rate = Duration::from_millis(if arp_ms < 500 { 3000 } else { arp_ms });
        let addr_lifetime = addr_lifetime(&r, &control_plane);

        let status_addr = match r.given("prometheus_server") {
            Some(g) if g.value.trim().is_empty() => None,
            _ => Some(r.parsed(
                "prometheus_server",
                SocketAddr::from(([0, 0, 0, 0], settings::STATUS_PORT)),
                parse_listen,
            )),
        };
        let health_port = match r.number("health_check_port", 0u16, "a port number") {
            0 => None,
            p => Some(p),
        };
        let log_level = r.parsed("vip_loglevel", "info".to_string(), |v| {
            parse_log_level(v).ok_or_else(|| {
                "expected error, warn, info, debug, trace or a number 0-5".to_string()
            })
        });
        let log_format = r.parsed("vip_logformat", LogFormat::Text, |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        });

        let raft = control_plane
            .as_ref()
            .is_some_and(|c| matches!(c.election, Election::Raft(_)));
        let nice = r.parsed("vip_nice", default_nice(raft), |v| {
            v.parse::<i32>()
                .ok()
                .filter(|n| (-20..=19).contains(n))
                .ok_or_else(|| "expected a niceness from -20 to 19".to_string())
        });

        let bgp = (announce == Announce::Bgp).then(|| {
            let port = control_plane.as_ref().map(|c| c.port).unwrap_or(6443);
            bgp::bgp_config(&r, port)
        });
        if let (Some(cp), Announce::Bgp) = (&control_plane, announce) {
            if !matches!(cp.election, Election::None) {
                r.problem(
                    "bgp_enable with vip_leaderelection / vip_raft",
                    "in BGP mode every control-plane node announces the VIP (ECMP) while its API server is healthy: turn the election off",
                );
            }
        }
        let namespace = lease::namespace(&r);
        let kubeconfig = r.string("k8s_config_file").map(PathBuf::from);
        r.finish()?;
        Ok(Config {
            sources: layers.sources(),
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
            kubeconfig,
            status_addr,
            health_port,
            log_level,
            log_format,
            nice,
        })
    }
}

/// vipd's niceness with Raft: its 100 ms election and hold must not wait
/// behind a loaded node's other work. Measured with `tests/raft.rs`'s soak
/// (both cores saturated, 2 % loss; BENCHMARKS.md, "Raft under load and
/// loss, again"): at niceness 0 the leader's hold lapsed up to four times
/// a minute, its acknowledgements read just after the hold's end; at -10,
/// with the links' TCP options, in none of four runs. keepalived has the
/// same knob (`vrrp_priority`).
pub const RAFT_NICE: i32 = -10;

/// `vip_nice` when not given: [`RAFT_NICE`] with Raft, else 0.
pub fn default_nice(raft: bool) -> i32 {
    if raft {
        RAFT_NICE
    } else {
        0
    }
}

/// The control-plane VIP (`cp_enable`); None when it cannot be used.
fn control_plane(r: &Reader, node_name: &str) -> Option<ControlPlane> {
    let (key, value) = match (r.string("address"), r.string("vip_address")) {
        (Some(a), _) => ("address", a),
        (None, Some(a)) => ("vip_address", a),
        (None, None) => {
            r.bad("address", "cp_enable=true needs the VIP in `address`");
            return None;
        }
    };
    let addresses = match parse_address_list(&value) {
        Ok(a) => a,
        Err(m) => {
            r.bad(key, m);
            Vec::new()
        }
    };
    let port = r.number("port", 6443u16, "a port number 1-65535");
    if port == 0 {
        r.bad("port", "expected a port number 1-65535");
    }
    let election = match (r.bool("vip_leaderelection"), r.bool("vip_raft")) {
        (true, true) => {
            r.problem(
                "vip_leaderelection and vip_raft",
                "both are true: choose one election (a Lease, or Raft among the peers)",
            );
            Election::None
        }
        (true, false) => Election::Lease(lease::lease_config(r, "vip_leasename")),
        (false, true) => Election::Raft(raft::raft_settings(r, node_name)?),
        (false, false) => Election::None,
    };
    Some(ControlPlane {
        addresses,
        port,
        election,
    })
}

/// LoadBalancer Services (`svc_enable`).
fn services_config(r: &Reader) -> ServicesConfig {
    let namespace = r.string("svc_namespace");
    if namespace.as_deref().is_some_and(|ns| !is_k8s_name(ns)) {
        r.bad("svc_namespace", "not a valid namespace name");
    }
    let interface = r.string("vip_servicesinterface");
    if interface.as_deref().is_some_and(|i| !is_interface_name(i)) {
        r.bad("vip_servicesinterface", "not an interface name");
    }
    let pool = r.string_or_default("svc_pool_configmap");
    let pool_configmap = match pool.split_once('/') {
        Some((ns, name)) if is_k8s_name(ns) && is_k8s_name(name) => {
            (ns.to_string(), name.to_string())
        }
        None if is_k8s_name(&pool) => (settings::DEFAULT_NAMESPACE.to_string(), pool.clone()),
        _ => {
            r.bad(
                "svc_pool_configmap",
                "expected NAMESPACE/NAME of a ConfigMap",
            );
            (String::new(), String::new())
        }
    };
    let lease = lease::lease_config(r, "svc_leasename");
    ServicesConfig {
        namespace,
        per_address_election: r.bool("svc_election"),
        placement: r.bool("svc_placement"),
        liveness: lease::liveness_timing(r),
        peer_links: r.bool("svc_peer_links"),
        leader_timing: lease::leader_timing(
            r,
            r.bool("svc_placement") && r.bool("svc_peer_links"),
            lease.timing,
        ),
        lease,
        class_name: r.string_or_default("lb_class_name"),
        class_only: r.bool("lb_class_only"),
        pool_configmap,
        interface,
        addr_lifetime: kernel_lifetime(r, "svc_addr_lifetime", Duration::from_secs(60)),
    }
}

/// `vip_addr_lifetime`, the control-plane VIP's kernel lifetime: by
/// default 2 s shorter than the Lease, and always at least 1 s shorter, so
/// a dead leader's address expires before another node may take over (a
/// Lease successor adds it without asking the wire). Without a
/// control-plane VIP it applies to nothing, and is only checked for form.
fn addr_lifetime(r: &Reader, control_plane: &Option<ControlPlane>) -> Option<Duration> {
    let election = control_plane.as_ref().map(|c| &c.election);
    let lease_duration = match election {
        Some(Election::Lease(l)) => Some(l.timing.lease_duration),
        Some(_) => Some(LeaseTiming::DEFAULT.lease_duration),
        None => None,
    };
    // Raft hands over in a fraction of a second: the shortest lifetime
    // the kernel knows (a new leader waits for a dead holder's copy to
    // expire, see vips::probe).
    let raft = matches!(election, Some(Election::Raft(_)));
    let default_lifetime = if raft {
        Duration::from_secs(1)
    } else {
        lease_duration
            .unwrap_or(LeaseTiming::DEFAULT.lease_duration)
            .saturating_sub(Duration::from_secs(2))
            .max(Duration::from_secs(1))
    };
    let lifetime = kernel_lifetime(r, "vip_addr_lifetime", default_lifetime);
    if !r.all_good(&["vip_addr_lifetime", "vip_leaseduration"]) {
        return Some(default_lifetime);
    }
    match (lifetime, lease_duration) {
        (Some(l), Some(lease)) if l + Duration::from_secs(1) >= lease => {
            r.bad(
                "vip_addr_lifetime",
                format!(
                    "must be at least 1s shorter than the lease duration ({}s), or 0: a dead leader's address must expire before another node takes over",
                    lease.as_secs_f64()
                ),
            );
            Some(default_lifetime)
        }
        _ => lifetime,
    }
}

/// The kernel lifetime set by `key`, or `default`: None for 0 (permanent),
/// at least a second otherwise (the kernel counts whole seconds).
fn kernel_lifetime(r: &Reader, key: &str, default: Duration) -> Option<Duration> {
    let lifetime = r.duration(key, default);
    if lifetime > Duration::ZERO && lifetime < Duration::from_secs(1) {
        r.bad(
            key,
            "the kernel counts lifetimes in whole seconds: use 0 or at least 1s",
        );
        return Some(default);
    }
    (lifetime > Duration::ZERO).then_some(lifetime)
}

#[cfg(test)]
mod tests;
