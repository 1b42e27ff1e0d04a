use super::*;
use crate::services::guard::Guard;
use crate::services::model::SvcKey;
use std::collections::BTreeMap as Map;

/// A Service created at `created`: a timestamp, or a small number of
/// seconds after the epoch.
fn svc(ns: &str, name: &str, created: &str) -> SvcInfo {
    let created = match created.parse::<i64>() {
        Ok(secs) => k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
        Err(_) => created.parse().unwrap(),
    };
    SvcInfo {
        key: SvcKey {
            namespace: ns.into(),
            name: name.into(),
        },
        created: Some(created),
        is_load_balancer: true,
        families: vec![Family::V4],
        ports: vec![(80, "TCP".into())],
        ..Default::default()
    }
}

fn alloc(services: &[&SvcInfo], pools: &Pools) -> Decisions {
    allocate(services, pools, &Guard::default(), &Recent::new())
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
    let d = alloc(&[&t], &Pools::default());
    assert_eq!(
        d[&t.key],
        Ok(Assignment {
            ips: vec![ip("192.0.2.150")],
            origin: Origin::Annotation(crate::services::model::keys::LOADBALANCER_IPS),
            replaced: vec![],
        })
    );
}

#[test]
fn then_load_balancer_ip_then_status_vipd_assigned() {
    // spec.loadBalancerIP edited later wins over the address in status.
    let mut a = svc("d", "a", "1");
    a.status_ips = vec![ip("192.0.2.160")];
    a.assigned = vec![ip("192.0.2.160")];
    a.spec_ip = Some("192.0.2.161".into());
    let mut b = svc("d", "b", "2");
    b.status_ips = vec![ip("192.0.2.162")];
    b.assigned = vec![ip("192.0.2.162")];
    let d = alloc(&[&a, &b], &Pools::default());
    assert_eq!(d[&a.key].as_ref().unwrap().origin, Origin::LoadBalancerIp);
    assert_eq!(ips(&d, "d", "a"), vec![ip("192.0.2.161")]);
    assert_eq!(d[&b.key].as_ref().unwrap().origin, Origin::Status);
    assert_eq!(ips(&d, "d", "b"), vec![ip("192.0.2.162")]);
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
    let d = alloc(&[&c, &b, &a], &p);
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
    let d = alloc(&[&a2, &early], &p);
    assert_eq!(ips(&d, "d", "a"), vec![ip("198.51.100.1")]);
    assert_eq!(ips(&d, "d", "early"), vec![ip("198.51.100.2")]);
}

#[test]
fn namespace_pool_before_global() {
    let p = pools(&[
        ("cidr-global", "198.51.100.0/28"),
        ("range-team", "203.0.113.10-203.0.113.11"),
    ]);
    let d = alloc(&[&svc("team", "x", "1"), &svc("other", "y", "2")], &p);
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
    let d = alloc(&[&b, &a], &Pools::default());
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
    let d = alloc(&[&a, &svc("d", "c", "3")], &p);
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
    let d = alloc(&[&web, &tls, &clash, &dns], &p);
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
    assert!(alloc(&[&a, &b], &p)[&b.key].is_ok());
    let strict = pools(&[("range-global", "198.51.100.10-198.51.100.11")]);
    assert!(matches!(
        alloc(&[&a, &b], &strict)[&b.key],
        Err(Problem::InUse { .. })
    ));
    // A Service without ports claims the whole address.
    let mut portless = svc("d", "portless", "0");
    portless.ports = vec![];
    portless.requested = Some("198.51.100.10".into());
    assert!(matches!(
        alloc(&[&portless, &b], &p)[&b.key],
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
        let d = alloc(&[&s], &p);
        let pr = problem(&d, "d", "s");
        assert_eq!(pr.reason(), reason, "{ann:?} {spec:?}: {pr:?}");
        assert!(!pr.message().is_empty());
    }
}

#[test]
fn no_pool_and_exhausted_pool() {
    assert_eq!(
        problem(&alloc(&[&svc("d", "s", "1")], &Pools::default()), "d", "s"),
        Problem::NoPool
    );
    let p = pools(&[("range-global", "198.51.100.10-198.51.100.10")]);
    let d = alloc(&[&svc("d", "a", "1"), &svc("d", "b", "2")], &p);
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
        ips(&alloc(&[&s], &both), "d", "s"),
        vec![ip("198.51.100.0"), ip("2001:db8:5::")]
    );
    assert_eq!(
        problem(&alloc(&[&s], &v4only), "d", "s").reason(),
        "AddressFamilyMissing"
    );
    s.family_policy = FamilyPolicy::PreferDualStack;
    assert_eq!(
        ips(&alloc(&[&s], &v4only), "d", "s"),
        vec![ip("198.51.100.0")]
    );
    // Single-stack IPv6 Service from a pool without IPv6.
    let mut v6 = svc("d", "v6", "1");
    v6.families = vec![Family::V6];
    assert_eq!(
        problem(&alloc(&[&v6], &v4only), "d", "v6").reason(),
        "AddressFamilyMissing"
    );
    // Dual-stack by annotation.
    let mut a = svc("d", "a", "1");
    a.families = vec![Family::V4, Family::V6];
    a.family_policy = FamilyPolicy::RequireDualStack;
    a.requested = Some("192.0.2.150, 2001:db8::150".into());
    assert_eq!(ips(&alloc(&[&a], &Pools::default()), "d", "a").len(), 2);
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
    let d = alloc(&[&taken6, &dual, &v4], &p);
    assert_eq!(problem(&d, "d", "dual").reason(), "PoolExhausted");
    assert_eq!(ips(&d, "d", "v4"), vec![ip("198.51.100.0")]);
}

fn guard(pairs: &[(&str, &str)]) -> Guard {
    let mut g = Guard::default();
    for (a, why) in pairs {
        g.forbid(ip(a), *why);
    }
    g
}

#[test]
fn the_guard_refuses_every_origin_and_pools_skip_it() {
    let g = guard(&[
        ("192.0.2.12", "the InternalIP of node n2"),
        ("192.0.2.15", "the control-plane VIP"),
        ("198.51.100.1", "the default gateway of eth0 on node n1"),
    ]);
    let p = pools(&[(
        "range-global",
        "198.51.100.1-198.51.100.3,192.0.2.10-192.0.2.20",
    )]);
    let mut by_annotation = svc("d", "ann", "1");
    by_annotation.requested = Some("192.0.2.12".into());
    let mut by_spec = svc("d", "spec", "2");
    by_spec.spec_ip = Some("192.0.2.15".into());
    let mut by_status = svc("d", "status", "3");
    by_status.status_ips = vec![ip("192.0.2.12")];
    by_status.assigned = vec![ip("192.0.2.12")];
    let from_pool = svc("d", "pool", "4");
    let d = allocate(
        &[&by_annotation, &by_spec, &by_status, &from_pool],
        &p,
        &g,
        &Recent::new(),
    );
    for (name, addr, why) in [
        ("ann", "192.0.2.12", "the InternalIP of node n2"),
        ("spec", "192.0.2.15", "the control-plane VIP"),
        ("status", "192.0.2.12", "the InternalIP of node n2"),
    ] {
        let pr = problem(&d, "d", name);
        assert_eq!(
            pr,
            Problem::Forbidden {
                ip: ip(addr),
                reason: why.into()
            }
        );
        assert_eq!(pr.reason(), "AddressForbidden");
        assert!(pr.message().starts_with(&format!("{addr} is {why}")));
    }
    assert_eq!(
        ips(&d, "d", "pool"),
        vec![ip("198.51.100.2")],
        "the pool skips the gateway"
    );
    // Without the guard the same inputs are accepted: the guard decides.
    let d = alloc(&[&by_annotation, &by_spec, &from_pool], &p);
    assert!(d.values().all(|r| r.is_ok()), "{d:?}");
}

#[test]
fn a_status_vipd_did_not_write_is_replaced_from_the_pool() {
    // K3s ServiceLB leaves the nodes' addresses in status.
    let p = pools(&[("range-global", "198.51.100.10-198.51.100.19")]);
    let mut traefik = svc("kube-system", "traefik", "1");
    traefik.status_ips = vec![ip("192.0.2.11"), ip("192.0.2.12")];
    let d = alloc(&[&traefik], &p);
    assert_eq!(
        d[&traefik.key],
        Ok(Assignment {
            ips: vec![ip("198.51.100.10")],
            origin: Origin::Pool("range-global".into()),
            replaced: vec![ip("192.0.2.11"), ip("192.0.2.12")],
        })
    );
    // No pool: pending, with the reason.
    let d = alloc(&[&traefik], &Pools::default());
    let pr = problem(&d, "kube-system", "traefik");
    assert_eq!(pr.reason(), "StaleStatusIgnored");
    assert!(
        pr.message().contains("192.0.2.11,192.0.2.12"),
        "{}",
        pr.message()
    );
    // What vipd assigned, or what a pool contains, is kept.
    let mut mine = traefik.clone();
    mine.assigned = mine.status_ips.clone();
    assert_eq!(
        alloc(&[&mine], &Pools::default())[&mine.key]
            .as_ref()
            .unwrap()
            .origin,
        Origin::Status
    );
    let mut pooled = svc("d", "pooled", "1");
    pooled.status_ips = vec![ip("198.51.100.15")];
    assert_eq!(
        ips(&alloc(&[&pooled], &p), "d", "pooled"),
        vec![ip("198.51.100.15")]
    );
    // Half trusted is not trusted.
    let mut half = svc("d", "half", "1");
    half.families = vec![Family::V4, Family::V6];
    half.status_ips = vec![ip("198.51.100.15"), ip("2001:db8::12")];
    let d = alloc(&[&half], &p);
    assert_eq!(d[&half.key].as_ref().unwrap().replaced.len(), 2);
}

#[test]
fn an_address_stays_with_the_service_that_holds_it() {
    let none = Pools::default();
    // A holds 192.0.2.150 (vipd wrote it); B, older, is annotated for it later.
    let mut holder = svc("d", "holder", "2026-02-01T00:00:00Z");
    holder.requested = Some("192.0.2.150".into());
    holder.status_ips = vec![ip("192.0.2.150")];
    holder.assigned = vec![ip("192.0.2.150")];
    let mut older = svc("d", "older", "2026-01-01T00:00:00Z");
    older.requested = Some("192.0.2.150".into());
    let d = alloc(&[&older, &holder], &none);
    assert_eq!(ips(&d, "d", "holder"), vec![ip("192.0.2.150")]);
    assert_eq!(
        problem(&d, "d", "older"),
        Problem::InUse {
            ip: ip("192.0.2.150"),
            by: holder.key.clone()
        }
    );
    // The same when the holder's address came from its status only, or
    // from spec.loadBalancerIP.
    let mut by_status = holder.clone();
    by_status.requested = None;
    let d = alloc(&[&older, &by_status], &none);
    assert_eq!(ips(&d, "d", "holder"), vec![ip("192.0.2.150")]);
    assert!(d[&older.key].is_err());
    let mut by_spec = by_status.clone();
    by_spec.spec_ip = Some("192.0.2.150".into());
    let d = alloc(&[&older, &by_spec], &none);
    assert_eq!(ips(&d, "d", "holder"), vec![ip("192.0.2.150")]);
    assert!(d[&older.key].is_err());
    // A holder that asks for something else lets its old address go.
    let mut moving = holder.clone();
    moving.requested = Some("192.0.2.151".into());
    let d = alloc(&[&older, &moving], &none);
    assert_eq!(ips(&d, "d", "older"), vec![ip("192.0.2.150")]);
    assert_eq!(ips(&d, "d", "holder"), vec![ip("192.0.2.151")]);
    // A status nobody trusts protects nothing.
    let mut squatter = svc("d", "squatter", "2026-03-01T00:00:00Z");
    squatter.status_ips = vec![ip("192.0.2.150")];
    let d = alloc(&[&squatter, &older], &none);
    assert_eq!(ips(&d, "d", "older"), vec![ip("192.0.2.150")]);
}

#[test]
fn a_recent_pick_is_kept_while_the_cache_catches_up() {
    // Pass 1 gave a .10 and b .11; b's annotation landed, a's did not yet,
    // and an older Service appeared meanwhile.
    let p = pools(&[("range-global", "198.51.100.10-198.51.100.20")]);
    let a = svc("d", "a", "2026-01-01T00:00:02Z");
    let mut b = svc("d", "b", "2026-01-01T00:00:03Z");
    b.requested = Some("198.51.100.11".into());
    let older = svc("d", "older", "2026-01-01T00:00:01Z");
    let recent: Recent = [(a.key.clone(), vec![ip("198.51.100.10")])].into();
    let d = allocate(&[&older, &a, &b], &p, &Guard::default(), &recent);
    assert_eq!(ips(&d, "d", "a"), vec![ip("198.51.100.10")]);
    assert_eq!(ips(&d, "d", "b"), vec![ip("198.51.100.11")]);
    assert_eq!(ips(&d, "d", "older"), vec![ip("198.51.100.12")]);
    // Without the memory the older Service takes a's address: a shuffle.
    let d = alloc(&[&older, &a, &b], &p);
    assert_eq!(ips(&d, "d", "older"), vec![ip("198.51.100.10")]);
}
