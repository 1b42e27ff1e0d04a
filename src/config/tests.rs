use super::*;

fn layers(pairs: &[(&str, &str)]) -> Layers {
    let mut l = Layers::default();
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.add_env(|k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
    l
}

fn cp_arp(extra: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut pairs = vec![
        ("vip_arp", "true"),
        ("cp_enable", "true"),
        ("address", "192.0.2.100"),
    ];
    pairs.extend_from_slice(extra);
    // Later pairs replace earlier ones with the same key.
    let mut dedup: Vec<(&str, &str)> = Vec::new();
    for (k, v) in pairs {
        dedup.retain(|(n, _)| *n != k);
        dedup.push((k, v));
    }
    Config::from_layers(&layers(&dedup), "host-a")
}

fn err(extra: &[(&str, &str)]) -> String {
    cp_arp(extra).unwrap_err().to_string()
}

#[test]
fn a_kube_vip_static_pod_environment_is_accepted() {
    let c = cp_arp(&[
        ("vip_interface", "eth0"),
        ("vip_leaderelection", "true"),
        ("vip_leasename", "plndr-cp-lock"),
        ("vip_leaseduration", "5"),
        ("vip_renewdeadline", "3"),
        ("vip_retryperiod", "1"),
        ("port", "6443"),
        ("vip_subnet", "32"),
        ("prometheus_server", ":2112"),
        ("vip_nodename", "cp-1"),
    ])
    .unwrap();
    assert_eq!(c.node_name, "cp-1");
    assert_eq!(c.announce, Announce::Arp);
    let cp = c.control_plane.unwrap();
    assert_eq!(
        cp.addresses,
        vec![AddressSpec::Ip("192.0.2.100".parse().unwrap())]
    );
    match cp.election {
        Election::Lease(l) => {
            assert_eq!(l.namespace, "kube-system");
            assert_eq!(l.timing.lease_duration, Duration::from_secs(5));
            assert_eq!(l.timing.renew_deadline, Duration::from_secs(3));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.status_addr, Some("0.0.0.0:2112".parse().unwrap()));
    // Lifetime follows the lease: 5 s - 2 s.
    assert_eq!(c.addr_lifetime, Some(Duration::from_secs(3)));
}

#[test]
fn defaults() {
    let c = cp_arp(&[("vip_leaderelection", "true")]).unwrap();
    assert_eq!(c.node_name, "host-a");
    assert_eq!(c.arp_rate, Duration::from_millis(3000));
    assert_eq!(c.subnets, Subnets { v4: 32, v6: 128 });
    assert_eq!(c.nice, 0);
    for bad in ["-21", "20", "fast"] {
        let e = cp_arp(&[("vip_nice", bad)]).unwrap_err();
        assert!(e.to_string().contains("vip_nice"), "{e}");
    }
    let Election::Lease(l) = c.control_plane.unwrap().election else {
        panic!()
    };
    assert_eq!(l.timing, LeaseTiming::DEFAULT);
    assert_eq!(l.name, "plndr-cp-lock");
    assert_eq!(c.addr_lifetime, Some(Duration::from_secs(2)));
}

#[test]
fn durations_take_seconds_or_units() {
    assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("abc").is_err());
    assert!(parse_duration("5h").is_err());
    assert!(parse_duration("-1").is_err());
}

#[test]
fn every_bad_value_names_its_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("address", "192.0.2.300")], "address=\"192.0.2.300\""),
        (&[("address", "")], "address"),
        (&[("address", "0.0.0.0")], "cannot be a virtual IP"),
        (&[("address", "192.0.2.1,192.0.2.2")], "at most one IPv4"),
        (&[("vip_arp", "yes")], "vip_arp=\"yes\""),
        (&[("bgp_enable", "true")], "both are true"),
        (&[("vip_arp", "false")], "no announcement mode"),
        (&[("cp_enable", "false")], "no feature enabled"),
        (&[("port", "70000")], "port=\"70000\""),
        (&[("port", "0")], "port=\"0\""),
        (&[("vip_interface", "eth0/1")], "vip_interface"),
        (
            &[("vip_interface", "averyveryverylongname")],
            "vip_interface",
        ),
        (&[("vip_subnet", "33,129")], "vip_subnet"),
        (&[("vip_arpRate", "fast")], "vip_arpRate"),
        (
            &[("vip_leaderelection", "true"), ("vip_leaseduration", "x")],
            "vip_leaseduration=\"x\"",
        ),
        (
            &[
                ("vip_leaderelection", "true"),
                ("vip_leaseduration", "5"),
                ("vip_renewdeadline", "5"),
            ],
            "vip_renewdeadline=\"5\"",
        ),
        (
            &[
                ("vip_leaderelection", "true"),
                ("vip_leaseduration", "5"),
                ("vip_renewdeadline", "6"),
            ],
            "must be shorter than vip_leaseduration",
        ),
        (
            &[("vip_leaderelection", "true"), ("vip_retryperiod", "3")],
            "vip_retryperiod",
        ),
        (
            &[
                ("vip_leaderelection", "true"),
                ("vip_leaseduration", "4500ms"),
            ],
            "whole number of seconds",
        ),
        (
            &[
                ("vip_leaderelection", "true"),
                ("vip_leasename", "Bad_Name"),
            ],
            "vip_leasename",
        ),
        (&[("vip_addr_lifetime", "10")], "vip_addr_lifetime"),
        (&[("vip_addr_lifetime", "500ms")], "whole seconds"),
        (&[("prometheus_server", "nope")], "prometheus_server"),
        (&[("vip_loglevel", "loud")], "vip_loglevel"),
        (&[("vip_nodename", "a b")], "vip_nodename"),
    ];
    for (extra, needle) in cases {
        let e = err(extra);
        assert!(e.contains(needle), "{extra:?}: {e:?} lacks {needle:?}");
        assert!(e.starts_with("invalid configuration: "), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn error_names_the_flag_and_origin() {
    let mut l = Layers::default();
    l.add_flags([
        ("vip_arp", "true".to_string()),
        ("cp_enable", "true".to_string()),
        ("address", "nope!".to_string()),
    ]);
    let e = Config::from_layers(&l, "h").unwrap_err().to_string();
    assert!(e.contains("from flag; flag --address"), "{e}");
}

#[test]
fn dual_stack_and_names() {
    let c = cp_arp(&[
        ("address", "192.0.2.100,2001:db8::100"),
        ("vip_subnet", "32,128"),
    ])
    .unwrap();
    assert_eq!(c.control_plane.unwrap().addresses.len(), 2);
    let c = cp_arp(&[("address", "vip.example.test")]).unwrap();
    assert_eq!(
        c.control_plane.unwrap().addresses,
        vec![AddressSpec::Name("vip.example.test".into())]
    );
    assert_eq!(parse_subnets("128").unwrap(), Subnets { v4: 32, v6: 128 });
    assert_eq!(parse_subnets("/24").unwrap(), Subnets { v4: 24, v6: 128 });
}

#[test]
fn lease_name_may_carry_its_namespace() {
    let c = cp_arp(&[("vip_leaderelection", "true"), ("vip_leasename", "vipd/cp")]).unwrap();
    let Election::Lease(l) = c.control_plane.unwrap().election else {
        panic!()
    };
    assert_eq!((l.namespace.as_str(), l.name.as_str()), ("vipd", "cp"));
}

#[test]
fn arp_rate_under_500_is_kube_vips_3000() {
    assert_eq!(
        cp_arp(&[("vip_arpRate", "100")]).unwrap().arp_rate,
        Duration::from_millis(3000)
    );
    assert_eq!(
        cp_arp(&[("vip_arpRate", "1000")]).unwrap().arp_rate,
        Duration::from_millis(1000)
    );
}

#[test]
fn empty_prometheus_server_turns_it_off() {
    assert_eq!(
        cp_arp(&[("prometheus_server", "")]).unwrap().status_addr,
        None
    );
}

/// The Services settings with `extra` on top of ARP mode and Services on.
fn services_with(extra: &[(&str, &str)]) -> crate::config::ServicesConfig {
    let mut all = vec![("vip_arp", "true"), ("svc_enable", "true")];
    all.extend_from_slice(extra);
    Config::from_layers(&layers(&all), "h")
        .unwrap()
        .services
        .unwrap()
}

/// Service addresses live a minute in the kernel by default, whatever the
/// Leases (a new holder asks the wire first); the control-plane VIP's
/// lifetime is its own and, without a control-plane VIP, is checked for
/// form only.
#[test]
fn service_addresses_have_a_lifetime_of_their_own() {
    assert_eq!(
        services_with(&[]).addr_lifetime,
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        services_with(&[("svc_addr_lifetime", "0")]).addr_lifetime,
        None
    );
    assert_eq!(
        services_with(&[("svc_addr_lifetime", "10m")]).addr_lifetime,
        Some(Duration::from_secs(600))
    );
    let both = cp_arp(&[
        ("vip_leaderelection", "true"),
        ("svc_enable", "true"),
        ("svc_addr_lifetime", "30"),
    ])
    .unwrap();
    assert_eq!(both.addr_lifetime, Some(Duration::from_secs(2)));
    assert_eq!(
        both.services.unwrap().addr_lifetime,
        Some(Duration::from_secs(30))
    );
    // Services only: vip_addr_lifetime has no Lease to be shorter than.
    let only = Config::from_layers(
        &layers(&[
            ("vip_arp", "true"),
            ("svc_enable", "true"),
            ("vip_addr_lifetime", "10"),
        ]),
        "h",
    )
    .unwrap();
    assert_eq!(
        only.services.unwrap().addr_lifetime,
        Some(Duration::from_secs(60))
    );
    let e = cp_arp(&[("svc_enable", "true"), ("svc_addr_lifetime", "500ms")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("svc_addr_lifetime") && e.contains("whole seconds"),
        "{e}"
    );
}

#[test]
fn services_settings() {
    let l = layers(&[("vip_arp", "true"), ("svc_enable", "true")]);
    let c = Config::from_layers(&l, "h").unwrap();
    let s = c.services.unwrap();
    assert_eq!(s.lease.name, "plndr-svcs-lock");
    assert_eq!(s.lease.namespace, "kube-system");
    assert_eq!(s.pool_configmap, ("kube-system".into(), "kubevip".into()));
    assert_eq!(s.class_name, "kube-vip.io/kube-vip-class");
    assert!(!s.class_only && !s.per_address_election && s.namespace.is_none());
    assert!(c.control_plane.is_none());
    // With placement and links, the Services leader's Lease is its own:
    // 10 s, renewed every 2.5 s, given up after 7.5 s (at most one write a
    // second with the liveness Lease); per-address Leases keep vipd's.
    assert_eq!(s.leader_timing.lease_duration, Duration::from_secs(10));
    assert_eq!(s.leader_timing.retry_period, Duration::from_millis(2500));
    assert_eq!(s.leader_timing.renew_deadline, Duration::from_millis(7500));
    assert_eq!(s.lease.timing.lease_duration, Duration::from_secs(4));
    // Without links, or with kube-vip's timing set, that timing.
    for extra in [
        ("svc_peer_links", "false"),
        ("svc_placement", "false"),
        ("vip_retryperiod", "1"),
    ] {
        let s = services_with(&[extra]);
        assert_eq!(s.leader_timing, s.lease.timing, "{extra:?}");
    }
    // Set on its own: used, even without links.
    let s2 = services_with(&[("svc_peer_links", "false"), ("svc_leader_lease", "20s")]);
    assert_eq!(s2.leader_timing.lease_duration, Duration::from_secs(20));
    assert_eq!(s2.leader_timing.retry_period, Duration::from_secs(5));
    // Placement by default: a liveness Lease of 4 s renewed every 2 s
    // (half a write a second per node), given up after 3 s.
    assert!(s.placement);
    assert_eq!(s.liveness.lease_duration, Duration::from_secs(4));
    assert_eq!(s.liveness.retry_period, Duration::from_secs(2));
    assert_eq!(s.liveness.renew_deadline, Duration::from_secs(3));
    let s = services_with(&[("svc_liveness_lease", "6"), ("svc_placement", "false")]);
    assert!(!s.placement);
    assert_eq!(
        (
            s.liveness.lease_duration,
            s.liveness.renew_deadline,
            s.liveness.retry_period
        ),
        (
            Duration::from_secs(6),
            Duration::from_millis(4500),
            Duration::from_secs(3)
        )
    );

    let l = layers(&[
        ("vip_arp", "true"),
        ("svc_enable", "true"),
        ("svc_election", "true"),
        ("svc_namespace", "web"),
        ("svc_leasename", "svcs"),
        ("svc_pool_configmap", "pools/lb"),
        ("lb_class_only", "true"),
        ("vip_servicesinterface", "eth1"),
    ]);
    let s = Config::from_layers(&l, "h").unwrap().services.unwrap();
    assert!(s.per_address_election && s.class_only);
    assert_eq!(s.namespace.as_deref(), Some("web"));
    assert_eq!(s.pool_configmap, ("pools".into(), "lb".into()));
    assert_eq!(s.interface.as_deref(), Some("eth1"));

    for (k, v) in [
        ("svc_election", "maybe"),
        ("svc_namespace", "Web"),
        ("svc_pool_configmap", "a/b/c"),
        ("svc_leasename", "X"),
        ("svc_liveness_lease", "1s"),
        ("svc_liveness_lease", "2500ms"),
        ("svc_leader_lease", "1s"),
        ("svc_leader_lease", "9500ms"),
        ("svc_placement", "sometimes"),
    ] {
        let l = layers(&[("vip_arp", "true"), ("svc_enable", "true"), (k, v)]);
        let e = Config::from_layers(&l, "h").unwrap_err().to_string();
        assert!(e.contains(k), "{k}: {e}");
    }
}

/// A secret file for Raft settings, unique to this test process.
fn secret_file(name: &str, content: &str) -> String {
    let dir = std::env::temp_dir().join(format!("vipd-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn raft_settings() {
    let peers = "n1=192.0.2.11:7946,n2=192.0.2.12:7946,n3=192.0.2.13:7946";
    let secret = secret_file("good", "an-example-secret-of-32-bytes-ok\n");
    let short = secret_file("short", "0123456789\n");
    let c = cp_arp(&[
        ("vip_raft", "true"),
        ("vip_raft_peers", peers),
        ("vip_nodename", "n2"),
        ("vip_raft_secret_file", &secret),
    ])
    .unwrap();
    let Election::Raft(r) = c.control_plane.unwrap().election else {
        panic!()
    };
    assert_eq!(r.peers.list.len(), 3);
    assert_eq!(
        (r.tick, r.heartbeat_ticks, r.election_ticks),
        (Duration::from_millis(5), 4, 20)
    );
    assert_eq!(r.state_dir, PathBuf::from("/var/lib/vipd/raft"));
    // A Raft holder's address lives 1 s in the kernel (see vips::probe).
    assert_eq!(c.addr_lifetime, Some(Duration::from_secs(1)));
    // Raft runs ahead of the node's other work unless told otherwise.
    assert_eq!(c.nice, -10);
    let c = cp_arp(&[
        ("vip_raft", "true"),
        ("vip_raft_peers", peers),
        ("vip_nodename", "n2"),
        ("vip_raft_secret_file", &secret),
        ("vip_nice", "0"),
    ])
    .unwrap();
    assert_eq!(c.nice, 0);

    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("vip_raft", "true")], "vip_raft_peers"),
        (
            &[
                ("vip_raft", "true"),
                ("vip_raft_peers", peers),
                ("vip_nodename", "n1"),
            ],
            "vip_raft_secret_file (flag --raftSecretFile): vip_raft=true needs a secret",
        ),
        (
            &[
                ("vip_raft", "true"),
                ("vip_raft_peers", peers),
                ("vip_nodename", "n1"),
                ("vip_raft_secret_file", &short),
            ],
            "has 10 bytes; use at least 16",
        ),
        (
            &[
                ("vip_raft", "true"),
                ("vip_raft_peers", peers),
                ("vip_nodename", "n1"),
                ("vip_raft_secret_file", "/nonexistent/vipd-secret"),
            ],
            "cannot read",
        ),
        (
            &[
                ("vip_raft", "true"),
                ("vip_raft_peers", peers),
                ("vip_nodename", "n9"),
            ],
            "not in the list",
        ),
        (
            &[("vip_raft", "true"), ("vip_raft_peers", "n1=192.0.2.11")],
            "not HOST:PORT",
        ),
        (
            &[
                ("vip_raft", "true"),
                ("vip_leaderelection", "true"),
                ("vip_raft_peers", peers),
            ],
            "choose one election",
        ),
        (
            &[
                ("vip_raft", "true"),
                ("vip_raft_peers", peers),
                ("vip_nodename", "n1"),
                ("vip_raft_secret_file", &secret),
                ("vip_raft_tick", "1ms"),
            ],
            "vip_raft_tick",
        ),
        (
            &[
                ("vip_raft", "true"),
                ("vip_raft_peers", peers),
                ("vip_nodename", "n1"),
                ("vip_raft_secret_file", &secret),
                ("vip_raft_election_ticks", "4"),
            ],
            "vip_raft_election_ticks",
        ),
    ];
    for (extra, needle) in cases {
        let e = err(extra);
        assert!(e.contains(needle), "{extra:?}: {e}");
    }
}

#[test]
fn bgp_settings() {
    let base = [
        ("vip_arp", "false"),
        ("bgp_enable", "true"),
        ("cp_enable", "true"),
        ("address", "198.51.100.100"),
    ];
    let with = |extra: &[(&str, &str)]| {
        let mut pairs: Vec<(&str, &str)> = base.to_vec();
        pairs.extend_from_slice(extra);
        Config::from_layers(&layers(&pairs), "h")
    };
    let c = with(&[
        (
            "bgp_peers",
            "192.0.2.1:64512:s3cret:false,[2001:db8::1]:64513::true:1179",
        ),
        ("bgp_as", "65001"),
        ("bgp_communities", "65000:100,65000:7"),
    ])
    .unwrap();
    let b = c.bgp.unwrap();
    assert_eq!(b.asn, 65001);
    assert_eq!(b.peers.len(), 2);
    assert_eq!(b.peers[0].password.0, "s3cret");
    assert_eq!(b.peers[1].asn, 64513);
    assert_eq!(b.peers[1].multihop_ttl, Some(5));
    assert_eq!(b.peers[1].port, Some(1179));
    assert_eq!(
        b.attrs.communities,
        vec![(65000 << 16) | 100, (65000 << 16) | 7]
    );
    assert_eq!(b.health_url, "https://127.0.0.1:6443/readyz");
    assert!(
        !format!("{b:?}").contains("s3cret"),
        "passwords never print"
    );

    let c = with(&[
        ("bgp_peeraddress", "192.0.2.1"),
        ("bgp_peeras", "64512"),
        ("bgp_peerpass", "pw"),
    ])
    .unwrap();
    assert_eq!(c.bgp.unwrap().peers[0].password.0, "pw");

    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "needs at least one peer"),
        (&[("bgp_peers", "192.0.2.1")], "bgp_peers"),
        (&[("bgp_peers", "192.0.2.1:notanas")], "bgp_peers"),
        (&[("bgp_peers", "[2001:db8::1:64512")], "bgp_peers"),
        (&[("bgp_peers", "192.0.2.1:64512:pw:maybe")], "bgp_peers"),
        (
            &[("bgp_peeraddress", "192.0.2.1"), ("bgp_as", "0")],
            "bgp_as",
        ),
        (
            &[
                ("bgp_peeraddress", "192.0.2.1"),
                ("bgp_keepalive_interval", "20"),
            ],
            "bgp_keepalive_interval",
        ),
        (
            &[("bgp_peeraddress", "192.0.2.1"), ("bgp_communities", "x:y")],
            "bgp_communities",
        ),
        (
            &[
                ("bgp_peeraddress", "192.0.2.1"),
                ("bgp_sourceip", "192.0.2.11"),
                ("bgp_sourceif", "eth0"),
            ],
            "bgp_sourceip and bgp_sourceif",
        ),
        (
            &[
                ("bgp_peeraddress", "192.0.2.1"),
                ("bgp_peerpass_file", "/nonexistent"),
            ],
            "bgp_peerpass_file",
        ),
        (
            &[
                ("bgp_peeraddress", "192.0.2.1"),
                ("vip_leaderelection", "true"),
            ],
            "turn the election off",
        ),
    ];
    for (extra, needle) in cases {
        let e = with(extra).unwrap_err().to_string();
        assert!(e.contains(needle), "{extra:?}: {e}");
    }
    // A bad entry is reported without echoing a password it may contain.
    let e = with(&[("bgp_peers", "192.0.2.1:64512:topsecret:perhaps")])
        .unwrap_err()
        .to_string();
    assert!(!e.contains("topsecret"), "{e}");
}

#[test]
fn every_invalid_setting_is_reported_at_once() {
    let e = err(&[
        ("address", "not-an-ip!"),
        ("vip_leaderelection", "true"),
        ("vip_leaseduration", "abc"),
        ("vip_arpRate", "fast"),
        ("vip_loglevel", "loud"),
    ]);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 4, "{e}");
    for (line, setting) in lines.iter().zip([
        "address=",
        "vip_leaseduration=",
        "vip_arpRate=",
        "vip_loglevel=",
    ]) {
        assert!(line.starts_with("invalid configuration: "), "{line}");
        assert!(line.contains(setting), "{line} lacks {setting}");
    }
    // A bad duration is one mistake: the renew deadline is not judged
    // against a lease duration nobody gave.
    assert!(!e.contains("vip_renewdeadline"), "{e}");
}

#[test]
fn a_setting_read_by_two_parts_is_named_once() {
    let l = layers(&[
        ("vip_arp", "true"),
        ("cp_enable", "true"),
        ("svc_enable", "true"),
        ("address", "192.0.2.100"),
        ("vip_leaderelection", "true"),
        ("cp_namespace", "Not_A_Name"),
    ]);
    let e = Config::from_layers(&l, "h").unwrap_err();
    assert_eq!(e.list().len(), 1, "{e}");
}

#[test]
fn the_table_defaults_are_the_typed_defaults() {
    let c = cp_arp(&[("vip_leaderelection", "true"), ("svc_enable", "true")]).unwrap();
    let Election::Lease(l) = c.control_plane.unwrap().election else {
        panic!()
    };
    assert_eq!(l.timing, LeaseTiming::DEFAULT);
    assert_eq!(l.name, settings::CP_LEASE);
    assert_eq!(l.namespace, settings::DEFAULT_NAMESPACE);
    let s = c.services.unwrap();
    assert_eq!(s.lease.name, settings::SVC_LEASE);
    assert_eq!(
        format!("{}/{}", s.pool_configmap.0, s.pool_configmap.1),
        settings::POOLS_CONFIGMAP
    );
    assert_eq!(c.status_addr.unwrap().port(), settings::STATUS_PORT);
    assert_eq!(c.arp_rate, Duration::from_millis(3000));
    assert_eq!(c.subnets, Subnets { v4: 32, v6: 128 });
}
