//! The control-plane VIP over ARP/NDP with Lease election, in a lab of three
//! node namespaces and a client, against the real API server. vipd runs with
//! the environment of `manifests/k3s/vipd-daemonset.yaml` and the
//! ServiceAccount token and RBAC of `manifests/rbac.yaml`.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use vipd_testkit::apiserver::env;
use vipd_testkit::failover::{lease_cluster, Disruption, Outcome, VipCluster};
use vipd_testkit::probe::max_holders;
use vipd_testkit::vipd::wait_until;

const VIP4: &str = "192.0.2.100";
const VIP6: &str = "2001:db8::100";
/// vipd's default Lease duration.
const LEASE: Duration = Duration::from_secs(4);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The addresses of a host as vipd's netlink code reads them (with the mark).
async fn kernel_addresses(host: &vipd_testkit::lab::Host) -> Vec<vipd::netlink::KernelAddr> {
    let rt = tokio::runtime::Handle::current();
    let nl = host.ns.run(|| {
        let _g = rt.enter();
        vipd::netlink::Netlink::connect().unwrap()
    });
    nl.addresses().await.unwrap()
}

async fn lease(ns: &str) -> Lease {
    let api: Api<Lease> = Api::namespaced(env().admin().await, ns);
    api.get("plndr-cp-lock").await.expect("the Lease exists")
}

fn assert_no_split_brain(o: &Outcome) {
    assert!(
        o.holder_samples > 50,
        "too few holder samples: {}",
        o.holder_samples
    );
    assert!(
        o.max_holders <= 1,
        "{:?}: two nodes held the VIP at once",
        o.disruption
    );
}

/// The new holder's first announcement came within 50 ms of its takeover
/// (the Lease's acquireTime, written by the new holder just before it adds
/// the address).
async fn assert_prompt_announcement(o: &Outcome, lease_ns: &str) {
    let l = lease(lease_ns).await;
    let spec = l.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(o.new.as_str()));
    let acquired: SystemTime = spec.acquire_time.expect("acquireTime").0.into();
    let first = o
        .first_announcement
        .expect("an announcement from the new holder was captured");
    let delay = first.duration_since(acquired).unwrap_or_default();
    assert!(
        delay <= Duration::from_millis(50),
        "first announcement {delay:?} after takeover"
    );
}

#[test]
fn one_leader_holds_the_vip_and_answers() {
    let env = env();
    let _lab = env.lab_lock();
    env.run(async move {
        let (mut c, lease_ns) = lease_cluster(env, 3, &[ip(VIP4)], bin(), &[])
            .await
            .unwrap();
        let leader = c.wait_stable(Duration::from_secs(30)).await.unwrap();
        // The Lease names the node that holds the address and answers.
        let holder = lease(&lease_ns)
            .await
            .spec
            .unwrap()
            .holder_identity
            .unwrap();
        assert_eq!(holder, c.nodes[leader].name());
        assert_eq!(c.answer().as_deref(), Some(holder.as_str()));
        // Stays that way: nobody else ever picks it up.
        for _ in 0..20 {
            assert_eq!(c.holders().await, vec![leader]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The address carries vipd's mark (IFA_PROTO) and a finite lifetime.
        let marks = kernel_addresses(&c.nodes[leader].host).await;
        let vip = marks
            .iter()
            .find(|k| k.addr == ip(VIP4))
            .expect("VIP listed");
        assert!(vip.ours, "{vip:?}");
        assert!(
            marks.iter().filter(|k| k.addr != ip(VIP4)).all(|k| !k.ours),
            "{marks:?}"
        );
        let shown = vipd_testkit::netns::output(
            "ip",
            &[
                "-n",
                c.nodes[leader].host.ns.name(),
                "addr",
                "show",
                "dev",
                "eth0",
            ],
        )
        .unwrap();
        let next = shown
            .lines()
            .skip_while(|l| !l.contains(VIP4))
            .nth(1)
            .unwrap();
        assert!(
            !next.contains("forever"),
            "finite lifetime expected: {next}"
        );
    });
}

fn failover(disruption: Disruption, vips: &'static [&'static str], limit: Duration) {
    let env = env();
    let _lab = env.lab_lock();
    env.run(async move {
        let vips: Vec<IpAddr> = vips.iter().map(|v| ip(v)).collect();
        let (mut c, lease_ns) = lease_cluster(env, 3, &vips, bin(), &[]).await.unwrap();
        let (o, old) = c
            .disrupt(
                disruption,
                limit + Duration::from_secs(5),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        eprintln!("{o:?}");
        assert!(
            o.takeover <= limit,
            "{disruption:?}: another node answered after {:?} (limit {limit:?})",
            o.takeover
        );
        assert_ne!(o.new, o.old);
        assert_no_split_brain(&o);
        assert_prompt_announcement(&o, &lease_ns).await;
        // Every VIP (both families when dual-stack) moved together.
        check_all_vips_on(&mut c, &vips, &o.new).await;
        // The old holder comes back (restarted, or its link up again) as a
        // follower: the holder does not change and never doubles.
        let election = format!("{lease_ns}/plndr-cp-lock");
        let samples = c
            .restore_sampled(disruption, old, vips[0], &election, &o.new)
            .await
            .unwrap();
        assert!(
            max_holders(&samples) <= 1,
            "two holders after the old holder came back"
        );
        assert!(
            samples
                .iter()
                .all(|s| s.holders.is_empty() || s.holders == vec![o.new.clone()]),
            "the VIP flapped"
        );
        let now = c.wait_stable(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            c.nodes[now].name(),
            o.new,
            "no flapping back to the old holder"
        );
    });
}

async fn check_all_vips_on(c: &mut VipCluster, vips: &[IpAddr], holder: &str) {
    for v in vips {
        for n in c.nodes.iter_mut() {
            let expect = n.name() == holder;
            assert_eq!(n.holds(*v).await, expect, "{} holding {v}", n.name());
        }
    }
}

#[test]
fn sigkill_of_the_leader_moves_the_vip_within_lease_plus_1s() {
    failover(Disruption::Kill, &[VIP4], LEASE + Duration::from_secs(1));
}

#[test]
fn link_down_of_the_leader_moves_the_vip_within_lease_plus_1s() {
    failover(
        Disruption::LinkDown,
        &[VIP4],
        LEASE + Duration::from_secs(1),
    );
}

#[test]
fn sigterm_hands_the_vip_over_within_1s() {
    failover(Disruption::Term, &[VIP4], Duration::from_secs(1));
}

#[test]
fn ipv6_vip_fails_over_with_unsolicited_na() {
    failover(Disruption::Kill, &[VIP6], LEASE + Duration::from_secs(1));
}

#[test]
fn dual_stack_vips_move_together() {
    failover(Disruption::Term, &[VIP4, VIP6], Duration::from_secs(1));
}

#[test]
fn a_vip_removed_by_hand_is_restored_and_announced() {
    let env = env();
    let _lab = env.lab_lock();
    env.run(async move {
        let (mut c, _) = lease_cluster(env, 2, &[ip(VIP4)], bin(), &[])
            .await
            .unwrap();
        let leader = c.wait_stable(Duration::from_secs(30)).await.unwrap();
        let capture = vipd_testkit::probe::AnnouncementCapture::start(&c.client);
        let removed_at = SystemTime::now();
        c.nodes[leader].host.remove_address(ip(VIP4), 32).unwrap();
        let mut restored = false;
        for _ in 0..100 {
            if c.nodes[leader].holds(ip(VIP4)).await {
                restored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(restored, "VIP not restored within 2 s");
        let back = c.wait_stable(Duration::from_secs(5)).await.unwrap();
        assert_eq!(back, leader);
        assert!(
            wait_until(Duration::from_secs(1), || {
                let seen = capture.seen();
                async move {
                    seen.iter()
                        .any(|(at, a)| *at >= removed_at && a.ip == ip(VIP4))
                }
            })
            .await,
            "no announcement after restoring"
        );
    });
}

/// One vipd holding `vip` as a permanent address (no kernel lifetime: only
/// vipd and its guardian remove it), settled.
async fn one_permanent_holder(env: &'static vipd_testkit::apiserver::Env, vip: &str) -> VipCluster {
    let (mut c, _) = lease_cluster(env, 1, &[ip(vip)], bin(), &[("vip_addr_lifetime", "0")])
        .await
        .unwrap();
    c.wait_stable(Duration::from_secs(30)).await.unwrap();
    c
}

#[test]
fn a_restarted_vipd_removes_its_stale_addresses_and_nothing_else() {
    let env = env();
    let _lab = env.lab_lock();
    env.run(async move {
        // A vipd holding 192.0.2.201 with a permanent address dies with
        // its guardian (the container killed): the address stays behind,
        // marked as vipd's.
        let stale = "192.0.2.201";
        let mut c = one_permanent_holder(env, stale).await;
        let ns = c.nodes[0].host.ns.name().to_string();
        vipd_testkit::netns::kill_all_in(&ns);
        c.nodes[0].kill();
        // The operator's own extra address.
        vipd_testkit::netns::ip(&["-n", &ns, "addr", "add", "192.0.2.202/32", "dev", "eth0"])
            .unwrap();
        // Left behind: nobody is left to remove it but the next vipd.
        tokio::time::sleep(LEASE).await;
        assert!(c.nodes[0].host.addresses().unwrap().contains(&ip(stale)));

        // It comes back configured for another VIP.
        vipd_testkit::vipd::set_env(&mut c.nodes[0].env, "address", VIP4);
        c.vip = ip(VIP4);
        c.nodes[0].start().unwrap();
        c.wait_stable(Duration::from_secs(30)).await.unwrap();
        let have = c.nodes[0].host.addresses().unwrap();
        assert!(
            !have.contains(&ip(stale)),
            "stale vipd address kept: {have:?}"
        );
        assert!(
            have.contains(&ip("192.0.2.202")),
            "operator's address removed: {have:?}"
        );
        assert!(have.contains(&ip(VIP4)));
        // A graceful stop removes the VIP and leaves the operator's address.
        assert_eq!(c.nodes[0].terminate(Duration::from_secs(5)).unwrap(), 0);
        let have = c.nodes[0].host.addresses().unwrap();
        assert!(
            !have.contains(&ip(VIP4)) && have.contains(&ip("192.0.2.202")),
            "{have:?}"
        );
    });
}

/// A vipd killed the moment its VIP appears (its guardian alive): the
/// guardian was told the lead's deadline before the address was added, so
/// the address stays until then (no gap while the Lease still names this
/// node) and goes at it. Told after, as before, the first add's raw
/// sockets (tens of milliseconds) left a window in which the guardian knew
/// no deadline and removed the address at once.
#[test]
fn a_vipd_killed_as_it_adds_the_vip_leaves_it_until_its_deadline() {
    let env = env();
    let _lab = env.lab_lock();
    env.run(async move {
        let vip = "192.0.2.203";
        let mut c = one_permanent_holder(env, vip).await;
        assert_eq!(c.nodes[0].terminate(Duration::from_secs(5)).unwrap(), 0);
        let rt = tokio::runtime::Handle::current();
        let nl = c.nodes[0].host.ns.run(|| {
            let _g = rt.enter();
            vipd::netlink::Netlink::connect().unwrap()
        });
        let held = |addrs: &[vipd::netlink::KernelAddr]| addrs.iter().any(|k| k.addr == ip(vip));
        for round in 0..3 {
            c.nodes[0].start().unwrap();
            let t0 = std::time::Instant::now();
            while !held(&nl.addresses().await.unwrap()) {
                assert!(t0.elapsed() < Duration::from_secs(30), "never added");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            c.nodes[0].kill();
            let killed = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                held(&nl.addresses().await.unwrap()),
                "round {round}: removed within 500 ms of the kill, before the lead's deadline\n{}",
                c.nodes[0].log_tail(10)
            );
            while held(&nl.addresses().await.unwrap()) {
                assert!(
                    killed.elapsed() < LEASE,
                    "round {round}: still there a Lease duration after the kill"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The next vipd waits for this guardian: it is done now.
        }
    });
}
