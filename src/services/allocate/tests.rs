use super::*;
use crate::services::model::SvcKey;
use std::collections::BTreeMap as Map;

fn svc(ns: &str, name: &str, created: &str) -> SvcInfo {
    SvcInfo {
        key: SvcKey {
            namespace: ns.into(),
            name: name.into(),
        },
        created: created.into(),
        is_load_balancer: true,
        class: None,
        ignored: false,
        requested: None,
        spec_ip: None,
        status_ips: vec![],
        families: vec![Family::V4],
        family_policy: FamilyPolicy::SingleStack,
        ports: vec![(80, "TCP".into())],
        local_policy: false,
        lbpool: None,
        interface: None,
        vip_host: None,
        bgp_communities: None,
        bgp_local_pref: None,
    }
}

fn pools(pairs: &[(&str, &str)]) -> Pools {
    let m: Map<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Pools::parse(&m).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(ns: &str, name: &str) -> SvcKey {
    SvcKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn ips(d: &Decisions, ns: &str, name: &str) -> Vec<IpAddr> {
    d[&key(ns, name)]
        .as_ref()
        .unwrap_or_else(|p| panic!("{ns}/{name}: {p:?}"))
        .ips
        .clone()
}

fn problem(d: &Decisions, ns: &str, name: &str) -> Problem {
    d[&key(ns, name)].clone().unwrap_err()
}

#[test]
fn annotation_wins_and_needs_no_pool() {
    let mut t = svc("kube-system", "traefik", "1");
    t.requested = Some("192.0.2.150".into());
    t.spec_ip = Some("192.0.2.151".into());
    let d = allocate(&[&t], &Pools::default());
    assert_eq!(
        d[&t.key],
        Ok(Assignment {
            ips: vec![ip("192.0.2.150")],
            origin: Origin::Annotation
        })
    );
}

#[test]
fn then_status_then_load_balancer_ip() {
    let mut a = svc("d", "a", "1");
    a.status_ips = vec![ip("192.0.2.160")];
    a.spec_ip = Some("192.0.2.161".into());
    let mut b = svc("d", "b", "2");
    b.spec_ip = Some("192.0.2.162".into());
    let d = allocate(&[&a, &b], &Pools::default());
    assert_eq!(d[&a.key].as_ref().unwrap().origin, Origin::Status);
    assert_eq!(ips(&d, "d", "a"), vec![ip("192.0.2.160")]);
    assert_eq!(d[&b.key].as_ref().unwrap().origin, Origin::LoadBalancerIp);
}

#[test]
fn pool_allocation_is_in_creation_order_and_stable() {
    let p = pools(&[
        ("cidr-global", "198.51.100.0/29"),
        ("skip-end-ips-in-cidr", "true"),
    ]);
    let a = svc("d", "a", "2026-01-01T00:00:01Z");
    let b = svc("d", "b", "2026-01-01T00:00:02Z");
    let c = svc("e", "c", "2026-01-01T00:00:03Z");
    let d = allocate(&[&c, &b, &a], &p);
    assert_eq!(ips(&d, "d", "a"), vec![ip("198.51.100.1")]);
    assert_eq!(ips(&d, "d", "b"), vec![ip("198.51.100.2")]);
    assert_eq!(ips(&d, "e", "c"), vec![ip("198.51.100.3")]);
    assert_eq!(
        d[&a.key].as_ref().unwrap().origin,
        Origin::Pool("cidr-global".into())
    );
    // Once written to the annotation, a younger request never displaces it.
    let mut a2 = a.clone();
    a2.requested = Some("198.51.100.1".into());
    let mut early = svc("d", "early", "2025-01-01T00:00:00Z");
    early.requested = None;
    let d = allocate(&[&a2, &early], &p);
    assert_eq!(ips(&d, "d", "a"), vec![ip("198.51.100.1")]);
    assert_eq!(ips(&d, "d", "early"), vec![ip("198.51.100.2")]);
}

#[test]
fn namespace_pool_before_global() {
    let p = pools(&[
        ("cidr-global", "198.51.100.0/28"),
        ("range-team", "203.0.113.10-203.0.113.11"),
    ]);
    let d = allocate(&[&svc("team", "x", "1"), &svc("other", "y", "2")], &p);
    assert_eq!(ips(&d, "team", "x"), vec![ip("203.0.113.10")]);
    assert_eq!(ips(&d, "other", "y"), vec![ip("198.51.100.0")]);
}

#[test]
fn no_address_twice_without_sharing() {
    let mut a = svc("d", "a", "1");
    a.requested = Some("192.0.2.150".into());
    let mut b = svc("d", "b", "2");
    b.requested = Some("192.0.2.150".into());
    b.ports = vec![(443, "TCP".into())];
    let d = allocate(&[&b, &a], &Pools::default());
    assert!(d[&a.key].is_ok());
    assert_eq!(
        problem(&d, "d", "b"),
        Problem::InUse {
            ip: ip("192.0.2.150"),
            by: a.key.clone()
        }
    );
    // Pool allocation skips taken addresses.
    let p = pools(&[("range-global", "192.0.2.150-192.0.2.151")]);
    let d = allocate(&[&a, &svc("d", "c", "3")], &p);
    assert_eq!(ips(&d, "d", "c"), vec![ip("192.0.2.151")]);
}

#[test]
fn sharing_needs_permission_and_disjoint_ports() {
    let p = pools(&[
        ("range-global", "198.51.100.10-198.51.100.11"),
        ("allow-share-global", "true"),
    ]);
    let web = svc("d", "web", "1");
    let mut tls = svc("d", "tls", "2");
    tls.ports = vec![(443, "TCP".into())];
    let mut clash = svc("d", "clash", "3");
    clash.ports = vec![(80, "TCP".into())];
    let mut dns = svc("d", "dns", "4");
    dns.ports = vec![(80, "UDP".into())];
    let d = allocate(&[&web, &tls, &clash, &dns], &p);
    assert_eq!(ips(&d, "d", "web"), vec![ip("198.51.100.10")]);
    assert_eq!(
        ips(&d, "d", "tls"),
        vec![ip("198.51.100.10")],
        "shares: ports differ"
    );
    assert_eq!(
        ips(&d, "d", "clash"),
        vec![ip("198.51.100.11")],
        "80/TCP overlaps: own address"
    );
    assert_eq!(
        ips(&d, "d", "dns"),
        vec![ip("198.51.100.10")],
        "80/UDP is another port"
    );

    // Requested sharing: allowed only with permission.
    let mut a = svc("d", "a", "1");
    a.requested = Some("198.51.100.10".into());
    let mut b = svc("d", "b", "2");
    b.requested = Some("198.51.100.10".into());
    b.ports = vec![(443, "TCP".into())];
    assert!(allocate(&[&a, &b], &p)[&b.key].is_ok());
    let strict = pools(&[("range-global", "198.51.100.10-198.51.100.11")]);
    assert!(matches!(
        allocate(&[&a, &b], &strict)[&b.key],
        Err(Problem::InUse { .. })
    ));
    // A Service without ports claims the whole address.
    let mut portless = svc("d", "portless", "0");
    portless.ports = vec![];
    portless.requested = Some("198.51.100.10".into());
    assert!(matches!(
        allocate(&[&portless, &b], &p)[&b.key],
        Err(Problem::InUse { .. })
    ));
}

#[test]
fn bad_requests_are_named() {
    let p = pools(&[("cidr-global", "198.51.100.0/28")]);
    let cases: Vec<(Option<&str>, Option<&str>, &str)> = vec![
        (Some("192.0.2.1.5"), None, "InvalidAnnotation"),
        (Some("192.0.2.1,192.0.2.2"), None, "InvalidAnnotation"),
        (Some("0.0.0.0"), None, "InvalidAnnotation"),
        (Some("2001:db8::1"), None, "AddressFamilyMismatch"),
        (Some("203.0.113.5"), None, "AddressNotInPool"),
        (None, Some("not-an-ip"), "InvalidLoadBalancerIP"),
    ];
    for (ann, spec, reason) in cases {
        let mut s = svc("d", "s", "1");
        s.requested = ann.map(String::from);
        s.spec_ip = spec.map(String::from);
        let d = allocate(&[&s], &p);
        let pr = problem(&d, "d", "s");
        assert_eq!(pr.reason(), reason, "{ann:?} {spec:?}: {pr:?}");
        assert!(!pr.message().is_empty());
    }
}

#[test]
fn no_pool_and_exhausted_pool() {
    assert_eq!(
        problem(
            &allocate(&[&svc("d", "s", "1")], &Pools::default()),
            "d",
            "s"
        ),
        Problem::NoPool
    );
    let p = pools(&[("range-global", "198.51.100.10-198.51.100.10")]);
    let d = allocate(&[&svc("d", "a", "1"), &svc("d", "b", "2")], &p);
    assert!(d[&key("d", "a")].is_ok());
    assert_eq!(problem(&d, "d", "b").reason(), "PoolExhausted");
}

#[test]
fn dual_stack_policies() {
    let both = pools(&[("cidr-global", "198.51.100.0/30,2001:db8:5::/126")]);
    let v4only = pools(&[("cidr-global", "198.51.100.0/30")]);
    let mut s = svc("d", "s", "1");
    s.families = vec![Family::V4, Family::V6];
    s.family_policy = FamilyPolicy::RequireDualStack;
    assert_eq!(
        ips(&allocate(&[&s], &both), "d", "s"),
        vec![ip("198.51.100.0"), ip("2001:db8:5::")]
    );
    assert_eq!(
        problem(&allocate(&[&s], &v4only), "d", "s").reason(),
        "AddressFamilyMissing"
    );
    s.family_policy = FamilyPolicy::PreferDualStack;
    assert_eq!(
        ips(&allocate(&[&s], &v4only), "d", "s"),
        vec![ip("198.51.100.0")]
    );
    // Single-stack IPv6 Service from a pool without IPv6.
    let mut v6 = svc("d", "v6", "1");
    v6.families = vec![Family::V6];
    assert_eq!(
        problem(&allocate(&[&v6], &v4only), "d", "v6").reason(),
        "AddressFamilyMissing"
    );
    // Dual-stack by annotation.
    let mut a = svc("d", "a", "1");
    a.families = vec![Family::V4, Family::V6];
    a.family_policy = FamilyPolicy::RequireDualStack;
    a.requested = Some("192.0.2.150, 2001:db8::150".into());
    assert_eq!(ips(&allocate(&[&a], &Pools::default()), "d", "a").len(), 2);
}

#[test]
fn a_failed_dual_stack_allocation_frees_its_half() {
    // One IPv4 address; the dual-stack Service gets it, then fails on IPv6
    // exhaustion, so the next Service must still get the IPv4 address.
    let p = pools(&[("cidr-global", "198.51.100.0/32,2001:db8:5::/128")]);
    let mut taken6 = svc("d", "v6", "0");
    taken6.families = vec![Family::V6];
    taken6.requested = Some("2001:db8:5::".into());
    let mut dual = svc("d", "dual", "1");
    dual.families = vec![Family::V4, Family::V6];
    dual.family_policy = FamilyPolicy::RequireDualStack;
    let v4 = svc("d", "v4", "2");
    let d = allocate(&[&taken6, &dual, &v4], &p);
    assert_eq!(problem(&d, "d", "dual").reason(), "PoolExhausted");
    assert_eq!(ips(&d, "d", "v4"), vec![ip("198.51.100.0")]);
}
