//! Every setting vipd accepts, once: its kube-vip environment variable, its
//! command-line flag, its help and its default. The flags, the environment
//! lookup, the config-file keys, `--help`, the parsers' defaults, `vipd
//! manifest` and vipctl's defaults are all derived from this table, so
//! names and defaults can never drift apart.

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// kube-vip's environment variable; also the config-file key.
    pub env: &'static str,
    /// The long flag (kube-vip's spelling where it has one).
    pub flag: &'static str,
    /// A yes/no switch (`--arp` alone means true).
    pub switch: bool,
    /// Shown in `--help`.
    pub help: &'static str,
    /// The value used when none is given, as text the setting's parser
    /// reads; None where there is none or it is computed (said in `help`).
    pub default: Option<&'static str>,
}

impl Setting {
    /// The help text with the default, as `--help` shows it.
    pub fn help_text(&self) -> String {
        match self.default {
            Some("") => format!("{} (default: empty)", self.help),
            Some(d) => format!("{} (default {d})", self.help),
            None => self.help.to_string(),
        }
    }

    /// No default value: absent means "decide per case" (said in `help`).
    const fn none(self) -> Setting {
        Setting {
            default: None,
            ..self
        }
    }

    const fn or(self, default: &'static str) -> Setting {
        Setting {
            default: Some(default),
            ..self
        }
    }
}

const fn s(env: &'static str, flag: &'static str, help: &'static str) -> Setting {
    Setting {
        env,
        flag,
        switch: false,
        help,
        default: None,
    }
}

const fn b(env: &'static str, flag: &'static str, help: &'static str) -> Setting {
    Setting {
        env,
        flag,
        switch: true,
        help,
        default: Some("false"),
    }
}

/// kube-vip's namespace for its Leases, where vipd keeps them unless told.
pub const DEFAULT_NAMESPACE: &str = "kube-system";
/// The control-plane Lease (kube-vip's name).
pub const CP_LEASE: &str = "plndr-cp-lock";
/// The Services leader's Lease (kube-vip's name).
pub const SVC_LEASE: &str = "plndr-svcs-lock";
/// The pools ConfigMap (kube-vip-cloud-provider's).
pub const POOLS_CONFIGMAP: &str = "kube-system/kubevip";
/// The status server's port (`prometheus_server`, kube-vip's metrics port).
pub const STATUS_PORT: u16 = 2112;
const STATUS_SERVER: &str = ":2112";

pub const SETTINGS: &[Setting] = &[
    // Modes and features.
    b("vip_arp", "arp", "announce addresses by gratuitous ARP / unsolicited NA"),
    b("vip_hold_on_api_loss", "holdOnApiLoss", "a Lease holder that cannot reach the API server keeps its addresses until another node announces them (false: drop them at the renew deadline)").or("true"),
    b("bgp_enable", "bgp", "announce addresses by BGP through gobgpd"),
    b("cp_enable", "controlplane", "hold the control-plane VIP"),
    s("cp_namespace", "namespace", "namespace of vipd's Leases and instance records").or(DEFAULT_NAMESPACE),
    b("svc_enable", "services", "serve LoadBalancer Services"),
    b("svc_election", "servicesElection", "one Lease per Service address, spread over nodes"),
    b("svc_placement", "servicesPlacement", "addresses that need a node of their own (svc_election, K3s ServiceLB labels, externalTrafficPolicy Local) are placed on live nodes by rendezvous hashing, each node renewing one liveness Lease instead of one Lease per address: API writes grow with nodes, not Services (vipd; false: a Lease per address, which at a thousand Services the API server cannot keep up with)").or("true"),
    s("svc_namespace", "serviceNamespace", "serve Services of this namespace only (default: all)"),
    s("svc_leasename", "servicesLeaseName", "Lease of the Services leader").or(SVC_LEASE),
    s("svc_liveness_lease", "servicesLivenessLease", "with svc_placement: how long a node's liveness Lease lasts (a dead node's addresses move this long after its last renewal); renewed every half of it, at least 1 s apart (vipd)").or("4s"),
    s("svc_leader_lease", "servicesLeaderLease", "with svc_placement and svc_peer_links: how long the Services leader's Lease lasts; renewed every quarter of it, given up after three quarters. It decides only who writes allocations and status: a dead leader's addresses move to its heir within a second (vipd; without links, or with vip_leaseduration, vip_renewdeadline or vip_retryperiod set, the Services leader uses those, as kube-vip does)").or("10s"),
    b("svc_peer_links", "servicesPeerLinks", "with svc_placement: follow every other vipd's /v1/alive stream on its status port, so the addresses of a vipd that dies or drops off the network move within a second instead of a liveness Lease later; they are added only once nobody answers for them, so a vipd that lives but lost its link keeps them (vipd)").or("true"),
    b("lb_class_only", "lbClassOnly", "serve only Services whose loadBalancerClass is lb_class_name"),
    s("lb_class_name", "lbClassName", "loadBalancerClass vipd serves").or("kube-vip.io/kube-vip-class"),
    s("svc_pool_configmap", "poolConfigMap", "ConfigMap of IP pools, NAMESPACE/NAME").or(POOLS_CONFIGMAP),
    // Address.
    s("address", "address", "control-plane VIP: an IP or DNS name; a comma list for dual-stack"),
    s("vip_address", "vip", "older name of `address`"),
    s("port", "port", "API server port behind the VIP").or("6443"),
    s("vip_interface", "interface", "interface for the VIP (default: that of the default route; BGP: lo)"),
    s("vip_servicesinterface", "serviceInterface", "interface for Service addresses (default vip_interface)"),
    s("vip_subnet", "vipSubnet", "prefix length of added addresses: 32, 128 or 32,128").or("32,128"),
    s("vip_nodename", "nodeName", "this node's identity in elections (default: the host name)"),
    // Lease election.
    b("vip_leaderelection", "leaderElection", "elect the VIP holder with a Kubernetes Lease"),
    s("vip_leasename", "leaseName", "control-plane Lease, NAME or NAMESPACE/NAME").or(CP_LEASE),
    s("vip_leaseduration", "leaseDuration", "Lease duration, seconds or with unit (kube-vip: 15)").or("4s"),
    s("vip_renewdeadline", "leaseRenewDuration", "leader gives up the VIP if it cannot renew for this long (kube-vip: 10)").or("2500ms"),
    s("vip_retryperiod", "leaseRetry", "renew / retry period (kube-vip: 2)").or("500ms"),
    // Raft election (vipd).
    b("vip_raft", "raft", "elect the control-plane VIP holder with Raft among vip_raft_peers: no API server needed"),
    s("vip_raft_peers", "raftPeers", "NAME=HOST:PORT of every control-plane node, comma separated; the same list, in the same order, on every node"),
    s("vip_raft_state_dir", "raftStateDir", "where Raft keeps term, vote and log").or("/var/lib/vipd/raft"),
    s("vip_raft_secret_file", "raftSecretFile", "file holding the secret every Raft peer shares (at least 16 bytes); required with vip_raft"),
    s("vip_raft_tick", "raftTick", "Raft tick").or("5ms"),
    s("vip_raft_heartbeat_ticks", "raftHeartbeatTicks", "ticks between leader heartbeats (20 ms with the default tick)").or("4"),
    s("vip_raft_election_ticks", "raftElectionTicks", "ticks without a leader before a follower campaigns, randomized up to a quarter more (100-125 ms with the default tick)").or("20"),
    // BGP (kube-vip's names; vipd's additions marked).
    s("bgp_routerid", "bgpRouterID", "BGP router ID (default: the IPv4 address of bgp_routerinterface or vip_interface)"),
    s("bgp_routerinterface", "bgpRouterInterface", "interface whose IPv4 address is the router ID"),
    s("bgp_as", "localAS", "local AS number").or("65000"),
    s("bgp_peeraddress", "peerAddress", "one BGP peer's address"),
    s("bgp_peeras", "peerAS", "that peer's AS").or("65000"),
    s("bgp_peerpass", "peerPass", "that peer's TCP-MD5 password (prefer bgp_peerpass_file or a Secret in the environment)"),
    s("bgp_peerpass_file", "peerPassFile", "file holding the password of peers given without one (vipd)"),
    b("bgp_multihop", "multihop", "eBGP multihop to that peer"),
    s("bgp_peers", "bgppeers", "ADDRESS:AS:PASSWORD:MULTIHOP[:PORT],... (IPv6 in brackets)"),
    s("bgp_sourceip", "sourceIP", "local address for BGP sessions"),
    s("bgp_sourceif", "sourceIF", "local interface for BGP sessions"),
    s("bgp_hold_time", "bgpHoldTimer", "hold time, seconds").or("30"),
    b("bgp_bfd", "bgpBFD", "BFD on BGP sessions, so a dead node's routes go in a fraction of a second instead of the hold time (vipd; default: on for directly connected peers, single-hop RFC 5881; false: off)").none(),
    s("bgp_bfd_interval", "bgpBFDInterval", "BFD transmit and receive interval (vipd)").or("100ms"),
    s("bgp_bfd_multiplier", "bgpBFDMultiplier", "BFD packets missed before the session is down (vipd)").or("3"),
    s("bgp_keepalive_interval", "bgpKeepAliveInterval", "keepalive interval, seconds").or("10"),
    s("bgp_communities", "bgpCommunities", "communities on every route, AS:VALUE,... (vipd)"),
    s("bgp_local_pref", "bgpLocalPref", "LOCAL_PREF on every route, for iBGP peers (vipd)"),
    s("bgp_gobgpd_path", "gobgpdPath", "gobgpd binary vipd runs (vipd)").or("gobgpd"),
    s("bgp_gobgp_api", "gobgpAPI", "gRPC address of gobgpd: unix:///PATH or HOST:PORT; the default socket's directory is private (vipd)").or("unix:///run/vipd/gobgpd.sock"),
    b("bgp_gobgp_external", "gobgpExternal", "use a gobgpd already running at bgp_gobgp_api instead of starting one (vipd)"),
    s("vip_healthcheck_url", "healthCheckURL", "BGP mode: announce the control-plane VIP only while this URL answers 200 (vipd; default https://127.0.0.1:PORT/readyz)"),
    // ARP.
    s("vip_arpRate", "arpRate", "milliseconds between refresh announcements (below 500 means 3000)").or("3000"),
    s("vip_addr_lifetime", "addressLifetime", "kernel lifetime of the control-plane VIP, refreshed while held; 0 = permanent (vipd default: lease duration - 2s, at least 1s; Raft: 1s)"),
    s("svc_addr_lifetime", "servicesAddressLifetime", "kernel lifetime of Service addresses, refreshed while held: how long a node keeps them when vipd and its guardian die together; a new holder adds one only once nobody answers for it. 0 = permanent (vipd)").or("60s"),
    // Kubernetes client, observability.
    s("k8s_config_file", "k8sConfigPath", "kubeconfig (default: /etc/kubernetes/admin.conf if present, else $KUBECONFIG or ~/.kube/config, else in-cluster)"),
    s("prometheus_server", "prometheusHTTPServer", "address of /metrics, /healthz, /readyz, /status and /v1/alive (empty = off)").or(STATUS_SERVER),
    s("health_check_port", "healthCheckPort", "extra port serving /healthz only (0 = off)").or("0"),
    s("vip_nice", "nice", "scheduling niceness of vipd's threads, -20 to 19 (vipd; default -10 with vip_raft: a 100 ms election must not wait behind a busy node's other work; 0 otherwise; below 0 needs CAP_SYS_NICE)"),
    s("vip_loglevel", "log", "log level: error, warn, info, debug, trace or kube-vip's number").or("info"),
    s("vip_logformat", "logFormat", "text or json").or("text"),
];

/// kube-vip's settings vipd does not implement, with what they are for:
/// set, they are named in one warning at start-up (never silently ignored).
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("egress_podcidr", "egress"),
    ("egress_servicecidr", "egress"),
    ("egress_withnftables", "egress"),
    ("egress_clean", "egress"),
    ("vip_ddns", "DHCP / dynamic DNS addresses"),
    ("vip_wireguard", "WireGuard mode"),
    ("vip_routingtable", "routing-table mode"),
    ("vip_routingtableid", "routing-table mode"),
    ("vip_routingtabletype", "routing-table mode"),
    ("vip_routingprotocol", "routing-table mode"),
    ("vip_cleanroutingtable", "routing-table mode"),
    ("vip_leaseannotations", "annotations on the Lease"),
    ("vip_interfaceloglobal", "global scope on lo"),
    ("vip_singlenode", "single-node mode (vipd: no election)"),
    ("vip_startleader", "starting as the leader"),
    ("annotation", "node-annotation addresses"),
    ("cp_detect", "detecting the API server address"),
    ("kubernetes_addr", "the local API server address"),
    ("zebra_enable", "Zebra"),
    ("zebra_url", "Zebra"),
    ("zebra_version", "Zebra"),
    ("zebra_software_name", "Zebra"),
    ("mpbgp_nexthop", "MP-BGP next hops"),
    ("mpbgp_ipv4", "MP-BGP next hops"),
    ("mpbgp_ipv6", "MP-BGP next hops"),
    ("lb_enable", "kube-vip's IPVS load balancer"),
    ("lb_port", "kube-vip's IPVS load balancer"),
    ("lb_fwdmethod", "kube-vip's IPVS load balancer"),
    (
        "lb_class_legacy_handling",
        "legacy LoadBalancerClass handling",
    ),
    ("enable_service_security", "service security"),
    ("enable_node_labeling", "labelling the leader's node"),
    ("dns_mode", "DNS lookup modes"),
    ("disable_service_updates", "not writing Service status"),
    ("enable_endpoints", "Endpoints instead of EndpointSlices"),
    ("mirror_dest_interface", "traffic mirroring"),
    ("iptables_backend", "iptables backends"),
    ("backend_health_check_interval", "backend health checks"),
    ("enable_upnp", "UPnP"),
    (
        "config_file",
        "a config file by environment (vipd: --config)",
    ),
    ("vip_leaderelectiontype", "etcd leader election"),
    ("etcd_endpoints", "etcd leader election"),
];

/// The unsupported kube-vip settings `lookup` finds set, each with what it
/// is for.
pub fn unsupported_in(lookup: impl Fn(&str) -> bool) -> Vec<String> {
    UNSUPPORTED
        .iter()
        .filter(|(k, _)| lookup(k))
        .map(|(k, what)| format!("{k} ({what})"))
        .collect()
}

/// The setting with environment name `env`.
pub fn by_env(env: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.env == env)
}

/// The default of setting `env` (panics on a name not in the table: a
/// programming error the unit tests catch).
pub fn default_of(env: &str) -> Option<&'static str> {
    by_env(env)
        .unwrap_or_else(|| panic!("{env} is not in the settings table"))
        .default
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique() {
        let envs: HashSet<_> = SETTINGS.iter().map(|s| s.env).collect();
        let flags: HashSet<_> = SETTINGS.iter().map(|s| s.flag.to_lowercase()).collect();
        assert_eq!(envs.len(), SETTINGS.len());
        assert_eq!(flags.len(), SETTINGS.len());
    }

    #[test]
    fn unsupported_settings_are_not_settings() {
        for (k, _) in UNSUPPORTED {
            assert!(by_env(k).is_none(), "{k} is both");
        }
        let found = unsupported_in(|k| k == "vip_routingtable" || k == "egress_podcidr");
        assert_eq!(
            found,
            vec![
                "egress_podcidr (egress)",
                "vip_routingtable (routing-table mode)"
            ]
        );
    }

    #[test]
    fn help_shows_the_default_once() {
        for s in SETTINGS {
            let h = s.help_text();
            assert!(h.matches("(default").count() <= 1, "{}: {h}", s.env);
        }
        assert_eq!(
            by_env("vip_leasename").unwrap().help_text(),
            "control-plane Lease, NAME or NAMESPACE/NAME (default plndr-cp-lock)"
        );
    }
}
