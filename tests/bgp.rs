//! BGP mode: three vipd nodes with their own gobgpd peer with a router
//! running BIRD 2; the router's kernel routing table is the judge.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use vipd::vipctl::report::Report;
use vipd_testkit::apiserver::env;
use vipd_testkit::bgp::{lab_router, node_ip, node_ip6, Bird, HealthServer, ROUTER, ROUTER6};
use vipd_testkit::vipd::{vipctl_status, wait_until, VipctlStatus, VipdNode};

const VIP: &str = "198.51.100.100";
const VIP6: &str = "2001:db8:100::100";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn router(n: usize, passwords: &[Option<&str>]) -> Bird {
    lab_router(env(), n, passwords).unwrap()
}

async fn bgp_nodes(
    n: usize,
    settings: &[(&str, &str)],
    extra: impl Fn(usize) -> Vec<(String, String)>,
) -> (Vec<VipdNode>, Vec<HealthServer>) {
    vipd_testkit::bgp::bgp_nodes(env(), n, bin(), settings, extra)
        .await
        .unwrap()
}

fn all(n: usize) -> Vec<IpAddr> {
    (0..n).map(node_ip).collect()
}

#[test]
fn the_control_plane_vip_is_ecmp_and_follows_health() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let bird = router(3, &[]);
        let vipd_ns = env.namespace("bgpcp").await;
        let (mut nodes, health) = bgp_nodes(
            3,
            &[
                ("cp_enable", "true"),
                ("address", &format!("{VIP},{VIP6}")),
                ("vip_subnet", "32,128"),
                ("cp_namespace", &vipd_ns),
            ],
            |_| vec![],
        )
        .await;
        let took = bird
            .wait_next_hops(ip(VIP), &all(3), Duration::from_secs(30))
            .unwrap();
        eprintln!("three next hops after {took:?}");
        // gobgpd's gRPC API is a Unix socket in a private directory: no TCP
        // port, and another (non-root) host-network process cannot reach it.
        let api = nodes[0]
            .env
            .iter()
            .find(|(k, _)| k == "bgp_gobgp_api")
            .map(|(_, v)| v.trim_start_matches("unix://").to_string())
            .unwrap();
        let dir = Path::new(&api).parent().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let listening = nodes[0]
            .host
            .ns
            .command("ss")
            .args(["-Hltn"])
            .output()
            .unwrap();
        let listening = String::from_utf8_lossy(&listening.stdout).to_string();
        assert!(!listening.contains(":50051"), "{listening}");
        let probe = nodes[0]
            .host
            .ns
            .command("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "python3",
                "-c",
            ])
            .arg(format!(
                "import socket; s = socket.socket(socket.AF_UNIX); s.connect({api:?})"
            ))
            .output()
            .unwrap();
        assert!(
            !probe.status.success()
                && String::from_utf8_lossy(&probe.stderr).contains("Permission denied"),
            "another user reached gobgpd's API: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        // vipctl: in BGP mode three holders are the design, not a conflict.
        let t0 = Instant::now();
        loop {
            // Services of other tests are not this test's business (-n).
            let out: VipctlStatus<Report> = vipctl_status(
                &env.client.ns,
                Path::new(env!("CARGO_BIN_EXE_vipctl")),
                env.admin_kubeconfig(),
                &["--vipd-namespace", &vipd_ns, "-n", &vipd_ns],
            );
            let held = out
                .report
                .as_ref()
                .and_then(|r| r.control_plane.first())
                .map_or(0, |v| v.held_by.len());
            if out.code == Some(0) && held == 3 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "vipctl: {}",
                out.output
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bird.wait_next_hops(
            ip(VIP6),
            &[node_ip6(0), node_ip6(1), node_ip6(2)],
            Duration::from_secs(15),
        )
        .unwrap();

        // A client behind the router reaches the VIP on some node.
        let client = env.client.ns.name().to_string();
        let _ = vipd_testkit::netns::ip(&[
            "-n",
            &client,
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            ROUTER,
        ]);
        let answer = env.client.ns.run(|| {
            vipd_testkit::probe::ask(
                format!("{VIP}:6443").parse().unwrap(),
                Duration::from_secs(1),
            )
        });
        assert!(
            answer.is_some_and(|a| a.starts_with('n')),
            "no answer through the router"
        );

        // n2's API server fails its health check: n2 leaves the next hops.
        health[1].set(false);
        let took = bird
            .wait_next_hops(ip(VIP), &[node_ip(0), node_ip(2)], Duration::from_secs(10))
            .unwrap();
        eprintln!("unhealthy n2 withdrawn after {took:?}");
        health[1].set(true);
        bird.wait_next_hops(ip(VIP), &all(3), Duration::from_secs(10))
            .unwrap();

        // n2's vipd crashes (SIGKILL): its gobgpd goes with it, so the
        // router drops n2 at once, not after the hold time (30 s).
        let t0 = Instant::now();
        nodes[1].kill();
        let took = bird
            .wait_next_hops(ip(VIP), &[node_ip(0), node_ip(2)], Duration::from_secs(10))
            .unwrap();
        eprintln!("crashed n2 withdrawn {took:?} after SIGKILL");
        assert!(t0.elapsed() < Duration::from_secs(10));
        let gobgpds = |n: &vipd_testkit::vipd::VipdNode| {
            let pids =
                vipd_testkit::netns::output("ip", &["netns", "pids", n.host.ns.name()]).unwrap();
            pids.split_whitespace()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "gobgpd")
                })
                .count()
        };
        assert_eq!(gobgpds(&nodes[1]), 0, "gobgpd outlived its vipd");
        // A gobgpd left by an older vipd (the same API address) is stopped
        // first: the restarted vipd configures a gobgpd of its own.
        let mut stray = nodes[1]
            .host
            .ns
            .command(vipd_testkit::bgp::gobgpd_bin().unwrap().to_str().unwrap())
            .args([
                "--api-hosts",
                nodes[1]
                    .env
                    .iter()
                    .find(|(k, _)| k == "bgp_gobgp_api")
                    .map(|(_, v)| v.as_str())
                    .unwrap(),
                "--log-level",
                "warn",
                "--pprof-disable",
                "--metrics-path=",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let running = wait_until(Duration::from_secs(10), || async {
            gobgpds(&nodes[1]) == 1
        })
        .await;
        assert!(running, "the stray gobgpd did not start");
        nodes[1].start().unwrap();
        bird.wait_next_hops(ip(VIP), &all(3), Duration::from_secs(30))
            .unwrap();
        assert!(
            stray.try_wait().unwrap().is_some(),
            "the stray gobgpd still runs"
        );
        assert_eq!(gobgpds(&nodes[1]), 1);
        assert!(nodes[1]
            .log_tail(10_000)
            .contains("left by an earlier vipd"));

        // n3's vipd stops: it withdraws before it exits.
        let t0 = Instant::now();
        assert_eq!(nodes[2].terminate(Duration::from_secs(10)).unwrap(), 0);
        bird.wait_next_hops(ip(VIP), &[node_ip(0), node_ip(1)], Duration::from_secs(10))
            .unwrap();
        eprintln!("stopped n3 withdrawn {:?} after SIGTERM", t0.elapsed());
        assert!(!nodes[2].host.addresses().unwrap().contains(&ip(VIP)));
        let _ = vipd_testkit::netns::ip(&["-n", &client, "route", "del", "198.51.100.0/24"]);
        drop(bird);
    });
}

#[test]
fn md5_sessions_establish_only_with_the_right_password() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let secret = "Sx-5ecret";
        let bird = router(2, &[Some(secret), Some(secret)]);
        let pass_file = vipd_testkit::run_dir().join("bgp-password");
        std::fs::write(&pass_file, format!("{secret}\n")).unwrap();
        let right = pass_file.to_str().unwrap().to_string();
        let (nodes, _health) = bgp_nodes(2, &[("cp_enable", "true"), ("address", VIP)], |i| {
            // n1 reads the right password from a file; n2 has a wrong one.
            if i == 0 {
                vec![("bgp_peerpass_file".into(), right.clone())]
            } else {
                vec![(
                    "bgp_peers".into(),
                    format!("{ROUTER}:64512:wrong-password:false,[{ROUTER6}]:64512:wrong-password:false"),
                )]
            }
        })
        .await;
        bird.wait_next_hops(ip(VIP), &[node_ip(0)], Duration::from_secs(30)).unwrap();
        assert!(bird.established("n1"));
        // n2 and the router tried each other: a kernel refused a segment
        // signed with the wrong password.
        let tried = wait_until(Duration::from_secs(30), || async {
            md5_failures(bird.host.ns.name()) + md5_failures(nodes[1].host.ns.name()) > 0
        })
        .await;
        assert!(tried, "n2 never tried to connect");
        assert!(!bird.established("n2"), "a wrong password must not establish");
        assert_eq!(bird.next_hops(ip(VIP)), vec![node_ip(0)]);

        // The password is in no process argument, log or status output.
        for n in &nodes {
            let pids = vipd_testkit::netns::output("ip", &["netns", "pids", n.host.ns.name()]).unwrap();
            for pid in pids.split_whitespace() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                assert!(!String::from_utf8_lossy(&cmdline).contains(secret), "password in the arguments of {pid}");
            }
            assert!(!n.log_tail(10_000).contains(secret), "password in {}'s log", n.name());
            assert!(!n.log_tail(10_000).contains("wrong-password"), "password in {}'s log", n.name());
            let doc = vipd::vipctl::http::get(&format!("http://{}:2112/status", n.host.v4), Duration::from_secs(2))
                .await
                .unwrap()
                .1;
            assert!(!doc.contains(secret) && !doc.contains("wrong-password"));
        }
        // n1's status shows its sessions (the speaker's state reaches the
        // status on its next report).
        let url = format!("http://{}:2112/status", nodes[0].host.v4);
        let shown = wait_until(Duration::from_secs(10), || async {
            let doc: Option<vipd::status::StatusDoc> = vipd::vipctl::http::get_json(&url, Duration::from_secs(2)).await.ok();
            doc.is_some_and(|d| d.bgp_peers.iter().any(|p| p.address == ROUTER && p.state == "established"))
        })
        .await;
        assert!(shown, "n1's status never showed its session established");
        drop(bird);
    });
}

#[test]
fn services_are_announced_from_eligible_nodes_with_communities() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let bird = router(3, &[]);
        let ns = env.namespace("bgpsvc").await;
        let lease_ns = env.namespace("bgplease").await;
        vipd_testkit::failover::grant_roles(env, &ns).unwrap();
        let pools = format!("{ns}/kubevip");
        let (mut nodes, _health) = bgp_nodes(
            3,
            &[
                ("svc_enable", "true"),
                ("svc_namespace", &ns),
                ("svc_pool_configmap", &pools),
                ("cp_namespace", &lease_ns),
                ("bgp_communities", "65000:100"),
            ],
            |_| vec![],
        )
        .await;
        let svcs: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::namespaced(env.admin().await, &ns);
        let make = |name: &str, addr: &str, extra: serde_json::Value| -> k8s_openapi::api::core::v1::Service {
            let mut v = serde_json::json!({
                "metadata": { "name": name, "annotations": { "kube-vip.io/loadbalancerIPs": addr } },
                "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
            });
            for (k, val) in extra.as_object().unwrap() {
                if k == "annotations" {
                    for (a, b) in val.as_object().unwrap() {
                        v["metadata"]["annotations"][a] = b.clone();
                    }
                } else {
                    v["spec"][k] = val.clone();
                }
            }
            serde_json::from_value(v).unwrap()
        };
        let t0 = Instant::now();
        svcs.create(&Default::default(), &make("web", "198.51.100.150", serde_json::json!({}))).await.unwrap();
        bird.wait_next_hops(ip("198.51.100.150"), &all(3), Duration::from_secs(30)).unwrap();
        eprintln!("Service route with 3 next hops {:?} after create", t0.elapsed());
        let routes = bird.birdc("show route all 198.51.100.150/32").unwrap();
        assert!(routes.contains("(65000,100)"), "the default community reaches the router:\n{routes}");

        // Per-Service communities; Local policy: only the node with the endpoint.
        svcs.create(
            &Default::default(),
            &make(
                "local",
                "198.51.100.151",
                serde_json::json!({ "externalTrafficPolicy": "Local", "annotations": { "vipd.dev/bgp-communities": "65000:200,65000:201" } }),
            ),
        )
        .await
        .unwrap();
        let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> = kube::Api::namespaced(env.admin().await, &ns);
        let slice = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "local-eps", "labels": { "kubernetes.io/service-name": "local" } },
            "addressType": "IPv4",
            "endpoints": [{ "addresses": ["10.42.0.5"], "conditions": { "ready": true }, "nodeName": "n2" }],
            "ports": [{ "port": 80, "protocol": "TCP" }]
        }))
        .unwrap();
        slices.create(&Default::default(), &slice).await.unwrap();
        bird.wait_next_hops(ip("198.51.100.151"), &[node_ip(1)], Duration::from_secs(20)).unwrap();
        let routes = bird.birdc("show route all 198.51.100.151/32").unwrap();
        assert!(routes.contains("(65000,200)") && routes.contains("(65000,201)"), "{routes}");

        // Deleting a Service withdraws its route everywhere.
        let t0 = Instant::now();
        svcs.delete("web", &Default::default()).await.unwrap();
        bird.wait_next_hops(ip("198.51.100.150"), &[], Duration::from_secs(10)).unwrap();
        eprintln!("Service route withdrawn {:?} after delete", t0.elapsed());

        // gobgpd dies on n1: vipd restarts it and announces again.
        let pids = vipd_testkit::netns::output("ip", &["netns", "pids", nodes[0].host.ns.name()]).unwrap();
        for pid in pids.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "gobgpd" {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.parse().unwrap()), nix::sys::signal::Signal::SIGKILL).unwrap();
            }
        }
        svcs.create(&Default::default(), &make("again", "198.51.100.152", serde_json::json!({}))).await.unwrap();
        bird.wait_next_hops(ip("198.51.100.152"), &all(3), Duration::from_secs(30)).unwrap();
        assert!(nodes[0].holds(ip("198.51.100.152")).await);
        drop(bird);
    });
}

/// A node that dies outright (its link down, then every process in it
/// killed, so no NOTIFICATION or FIN ever leaves) is dropped by the
/// router within BFD's detection time (100 ms x 3), not after the hold
/// time (9 s in this lab, 30 s by default). The BFD sessions are on
/// record in /status, /metrics and vipctl.
#[test]
fn a_dead_node_is_dropped_by_bfd_not_the_hold_time() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let bird = router(3, &[]);
        let vipd_ns = env.namespace("bgpbfd").await;
        let (mut nodes, _health) = bgp_nodes(
            3,
            &[
                ("cp_enable", "true"),
                ("address", VIP),
                ("cp_namespace", &vipd_ns),
            ],
            |_| vec![],
        )
        .await;
        bird.wait_next_hops(ip(VIP), &all(3), Duration::from_secs(30))
            .unwrap();
        // An IPv4 and an IPv6 session to each node, each with BFD.
        bird.wait_bfd_up(6, Duration::from_secs(20)).unwrap();
        // Wait on the facts, not one sample: on a loaded machine a session
        // may reset once while BFD settles, so every condition is checked
        // on the same reading, again until all hold.
        let base = format!("http://{}:2112", node_ip(0));
        let mut expected = vec![
            format!("vipd_bgp_bfd_session{{peer=\"{ROUTER}\",state=\"up\"}} 1"),
            format!("vipd_bgp_bfd_session{{peer=\"{ROUTER}\",state=\"down\"}} 0"),
        ];
        // kube-vip's BGP metric: every state upper-case, `peer` as ip:port.
        for (state, v) in [("ESTABLISHED", 1), ("IDLE", 0), ("ACTIVE", 0), ("OPENSENT", 0)] {
            expected.push(format!(
                "kube_vip_manager_bgp_session_info{{state=\"{state}\",peer=\"{ROUTER}:179\"}} {v}"
            ));
        }
        let t0 = Instant::now();
        loop {
            let doc: vipd::status::StatusDoc =
                vipd::vipctl::http::get_json(&format!("{base}/status"), Duration::from_secs(2))
                    .await
                    .unwrap();
            let (_, metrics) =
                vipd::vipctl::http::get(&format!("{base}/metrics"), Duration::from_secs(2))
                    .await
                    .unwrap();
            let sessions_up = doc.bgp_peers.len() == 2
                && doc
                    .bgp_peers
                    .iter()
                    .all(|p| p.bfd.as_deref() == Some("up") && p.state == "established");
            let missing: Vec<&String> =
                expected.iter().filter(|l| !metrics.contains(l.as_str())).collect();
            if sessions_up && missing.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "sessions and BFD not up in /status and /metrics: {:?}\nmissing {missing:?} from\n{metrics}",
                doc.bgp_peers
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let dead = &nodes[1];
        let t0 = Instant::now();
        dead.host.link_down().unwrap();
        vipd_testkit::netns::kill_all_in(dead.host.ns.name());
        bird.wait_next_hops(ip(VIP), &[node_ip(0), node_ip(2)], Duration::from_secs(15))
            .unwrap();
        let took = t0.elapsed();
        eprintln!("dead n2 dropped by the router after {took:?}");
        assert!(
            took < Duration::from_millis(1500),
            "the router kept the dead node for {took:?} (BFD detection is 300 ms)\n{}",
            bird.bfd_sessions()
        );
        // The node comes back: routes and BFD with it.
        nodes[1].kill();
        nodes[1].host.link_up().unwrap();
        nodes[1].start().unwrap();
        bird.wait_next_hops(ip(VIP), &all(3), Duration::from_secs(30))
            .unwrap();
        bird.wait_bfd_up(6, Duration::from_secs(20)).unwrap();
    });
}

/// TCP segments the kernel of namespace `ns` dropped for a wrong or missing
/// MD5 signature (TcpExt TCPMD5Failure and TCPMD5NotFound).
fn md5_failures(ns: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/netstat"])
        .output()
        .expect("ip netns exec");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| matches!(*n, "TCPMD5Failure" | "TCPMD5NotFound"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}
