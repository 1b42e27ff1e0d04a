//! Truthful status: `/healthz`, `/readyz`, `/status`, `/metrics` of real
//! vipd processes in the lab, and `vipctl status` against the real state.

use std::net::IpAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use vipd::status::StatusDoc;
use vipd::vipctl::http;
use vipd::vipctl::report::Report;
use vipd_testkit::apiserver::env;
use vipd_testkit::failover::{lease_cluster, VipCluster};
use vipd_testkit::vipd::{vipctl_status, wait_until, VipctlStatus};

const VIP4: &str = "192.0.2.100";
const VIP6: &str = "2001:db8::100";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn base(c: &VipCluster, i: usize) -> String {
    format!("http://{}:2112", c.nodes[i].host.v4)
}

async fn doc(c: &VipCluster, i: usize) -> StatusDoc {
    http::get_json(&format!("{}/status", base(c, i)), Duration::from_secs(2))
        .await
        .unwrap()
}

async fn code(url: &str) -> u16 {
    match http::get(url, Duration::from_secs(2)).await {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("GET {url}: {e:#}");
            0
        }
    }
}

async fn wait_code(url: &str, want: u16, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if code(url).await == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "{url} did not return {want} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn status_endpoints_tell_the_truth_and_metrics_parse() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (mut c, lease_ns) = lease_cluster(env, 3, &[ip(VIP4)], bin(), &[])
            .await
            .unwrap();
        let leader = c.wait_stable(Duration::from_secs(30)).await.unwrap();
        let name = c.nodes[leader].name().to_string();
        let lease = format!("{lease_ns}/plndr-cp-lock");
        for i in 0..3 {
            // Every vipd serves as soon as it has started (they start together).
            wait_code(
                &format!("{}/healthz", base(&c, i)),
                200,
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(code(&format!("{}/readyz", base(&c, i))).await, 200);
        }
        // What `kubectl logs` shows (output piped): no colour, and one
        // start-up line that says what this vipd does and where its
        // settings came from.
        for n in &c.nodes {
            let log = std::fs::read(n.log_path()).unwrap();
            assert!(!log.contains(&0x1b), "ANSI escapes in {}", n.name());
            let log = String::from_utf8_lossy(&log);
            let line = log
                .lines()
                .find(|l| l.contains("vipd started"))
                .unwrap_or_else(|| panic!("no start-up line in\n{log}"));
            for part in [
                " INFO ",
                "mode=arp",
                &format!("election=lease {lease}"),
                "interface=eth0",
                &format!("vip={VIP4}"),
                "services=off",
                "status=0.0.0.0:2112",
                "settings=environment: ",
                "vip_leaderelection",
            ] {
                assert!(line.contains(part), "{part:?} missing from {line:?}");
            }
        }
        // Followers learn who leads from the Lease watch.
        let learnt = wait_until(Duration::from_secs(10), || async {
            for i in 0..3 {
                let d = doc(&c, i).await;
                let seen = d
                    .elections
                    .iter()
                    .any(|e| e.lease == lease && e.holder.as_deref() == Some(name.as_str()));
                if !seen {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(learnt, "a follower never saw {name} lead");
        for i in 0..3 {
            let d = doc(&c, i).await;
            let e = d
                .elections
                .iter()
                .find(|e| e.lease == lease)
                .expect("the election is listed");
            if i == leader {
                assert!(e.leading && d.addresses.iter().any(|a| a.address == ip(VIP4) && a.ours));
                assert!(d.announcements_sent >= 1);
            } else {
                assert!(!e.leading, "{}", d.node);
                assert_eq!(e.holder.as_deref(), Some(name.as_str()));
                assert!(d.addresses.is_empty());
            }
            assert!(d.ready);
        }

        // Removed by hand: vipd puts it back, and the gap is on record.
        c.nodes[leader].host.remove_address(ip(VIP4), 32).unwrap();
        c.wait_stable(Duration::from_secs(5)).await.unwrap();
        let d = doc(&c, leader).await;
        assert!(d.ready);
        assert!(d.not_ready_total >= 1, "{d:?}");
        let gap = d.last_not_ready.expect("the gap is recorded");
        assert!(gap.reason.contains(VIP4), "{}", gap.reason);
        assert!(gap.lasted_ms.is_some_and(|ms| ms < 1000.0), "{gap:?}");

        // The metrics parse with a Prometheus text-format parser and agree.
        let (status, text) = http::get(
            &format!("{}/metrics", base(&c, leader)),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        let value = |metric: &str, label: Option<(&str, &str)>| -> f64 {
            let s = scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v))
                })
                .unwrap_or_else(|| panic!("{metric} missing from\n{text}"));
            match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{metric}: unexpected type"),
            }
        };
        assert_eq!(value("vipd_leader", Some(("lease", &lease))), 1.0);
        // kube-vip's metrics as its dashboards read them: the bare Lease
        // name, kube-vip's label sets.
        assert_eq!(
            value("kube_vip_is_leader", Some(("lease_name", "plndr-cp-lock"))),
            1.0
        );
        let labels = |metric: &str| -> Vec<Vec<String>> {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == metric)
                .map(|s| {
                    let mut k: Vec<String> = s.labels.keys().cloned().collect();
                    k.sort();
                    k
                })
                .collect()
        };
        let set = |names: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        for (metric, want) in [
            ("kube_vip_build_info", &["version", "build", "node"][..]),
            ("kube_vip_is_leader", &["node", "lease_name"][..]),
            (
                "kube_vip_leader_election_transitions_total",
                &["lease_name"][..],
            ),
        ] {
            let got = labels(metric);
            assert!(!got.is_empty(), "{metric} missing from\n{text}");
            assert!(got.iter().all(|l| *l == set(want)), "{metric}: {got:?}");
        }
        assert_eq!(value("kube_vip_build_info", Some(("node", &name))), 1.0);
        assert!(
            value(
                "kube_vip_leader_election_transitions_total",
                Some(("lease_name", "plndr-cp-lock"))
            ) >= 1.0
        );
        assert_eq!(value("vipd_addresses_held", None), 1.0);
        assert_eq!(value("vipd_address_held", Some(("address", VIP4))), 1.0);
        assert_eq!(value("vipd_ready", None), 1.0);
        assert!(value("vipd_not_ready_total", None) >= 1.0);
        assert!(value("vipd_arp_announcements_total", None) >= 1.0);
        assert!(value("vipd_leader_transitions_total", Some(("lease", &lease))) >= 1.0);
    });
}

#[test]
fn readyz_is_false_while_the_vip_cannot_be_held() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (mut c, _) = lease_cluster(env, 2, &[ip(VIP6)], bin(), &[])
            .await
            .unwrap();
        let leader = c.wait_stable(Duration::from_secs(30)).await.unwrap();
        let ready = format!("{}/readyz", base(&c, leader));
        let ns = c.nodes[leader].host.ns.name().to_string();
        let sysctl = |v: &str| {
            vipd_testkit::netns::sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.eth0.disable_ipv6={v}"),
                ],
            )
            .unwrap()
        };
        // IPv6 off on the leader's interface: the kernel drops the VIP and
        // refuses it back, so the leader cannot hold what it should.
        sysctl("1");
        let took = wait_code(&ready, 503, Duration::from_secs(1)).await;
        eprintln!("/readyz false {took:?} after the VIP could no longer be held");
        let (_, body) = http::get(&ready, Duration::from_secs(2)).await.unwrap();
        assert!(body.contains(VIP6), "{body}");
        sysctl("0");
        let took = wait_code(&ready, 200, Duration::from_secs(3)).await;
        eprintln!("/readyz true {took:?} after IPv6 came back");
        assert!(c.nodes[leader].holds(ip(VIP6)).await);
    });
}

fn vipctl(args: &[&str]) -> Output {
    let env = env();
    let kc = env.admin_kubeconfig().to_str().unwrap().to_string();
    env.client
        .ns
        .command(env!("CARGO_BIN_EXE_vipctl"))
        .args(["status", "--kubeconfig", &kc])
        .args(args)
        .output()
        .unwrap()
}

fn report(args: &[&str]) -> (Option<i32>, Report) {
    let env = env();
    let out: VipctlStatus<Report> = vipctl_status(
        &env.client.ns,
        Path::new(env!("CARGO_BIN_EXE_vipctl")),
        env.admin_kubeconfig(),
        args,
    );
    let r = out
        .report
        .unwrap_or_else(|| panic!("no report from vipctl: {}", out.output));
    (out.code, r)
}

#[test]
fn vipctl_status_matches_the_real_state() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let svc_ns = env.namespace("ctl").await;
        vipd_testkit::failover::grant_roles(env, &svc_ns).unwrap();
        let pools = format!("{svc_ns}/kubevip");
        let extra = [("svc_enable", "true"), ("svc_namespace", svc_ns.as_str()), ("svc_pool_configmap", pools.as_str())];
        let (mut c, lease_ns) = lease_cluster(env, 3, &[ip(VIP4)], bin(), &extra).await.unwrap();
        let leader = c.wait_stable(Duration::from_secs(30)).await.unwrap();
        let lname = c.nodes[leader].name().to_string();
        let svcs: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::namespaced(env.admin().await, &svc_ns);
        let svc = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web", "annotations": { "kube-vip.io/loadbalancerIPs": "192.0.2.150" } },
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 6443, "protocol": "TCP" }] }
        }))
        .unwrap();
        svcs.create(&Default::default(), &svc).await.unwrap();
        let args = ["--vipd-namespace", lease_ns.as_str(), "-n", svc_ns.as_str()];

        // All well: exit 0, and every row matches the kernels (once every
        // vipd has published itself: the Service can be served before the
        // last one started has).
        let t0 = Instant::now();
        let (mut code, mut r) = report(&args);
        while (code != Some(0) || r.instances.len() < 3) && t0.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            (code, r) = report(&args);
        }
        assert_eq!(code, Some(0), "{r:#?}");
        assert_eq!(r.control_plane.len(), 1);
        assert_eq!(r.control_plane[0].vip, VIP4);
        assert_eq!(r.control_plane[0].leader.as_deref(), Some(lname.as_str()));
        assert_eq!(r.control_plane[0].held_by, vec![lname.clone()]);
        let web = r.services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.state, "Ready");
        assert_eq!(web.addresses, vec!["192.0.2.150".to_string()]);
        let mut holder = None;
        for n in c.nodes.iter_mut() {
            if n.holds(ip("192.0.2.150")).await {
                holder = Some(n.name().to_string());
            }
        }
        assert_eq!(web.held_by, vec![holder.clone().unwrap()]);
        assert_eq!(web.announced_by, holder);
        assert!(web.last_event.as_deref().is_some_and(|e| e.starts_with("Address")), "{:?}", web.last_event);
        assert_eq!(r.instances.len(), 3);
        assert!(r.instances.iter().all(|i| i.alive && i.live && i.ready == Some(true)));
        let table = String::from_utf8(vipctl(&args).stdout).unwrap();
        assert!(table.contains("CONTROL-PLANE VIP") && table.contains(VIP4) && table.contains("Ready"), "{table}");

        // As a kubectl plugin (kubectl-vipd on the PATH), through the real
        // kubectl; and --context picks a context.
        let plugin_dir = vipd_testkit::run_dir().join("plugins");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        let link = plugin_dir.join("kubectl-vipd");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vipctl"), &link).unwrap();
        let kubectl = vipd_testkit::apiserver::harness_bin_dir().unwrap().join("kubectl");
        let out = env
            .client
            .ns
            .command(kubectl.to_str().unwrap())
            .args(["vipd", "status", "-o", "json"])
            .args(args)
            .env("PATH", format!("{}:{}", plugin_dir.display(), std::env::var("PATH").unwrap_or_default()))
            .env("KUBECONFIG", env.admin_kubeconfig())
            .output()
            .unwrap();
        let via: Report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("kubectl vipd status: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(via.control_plane[0].held_by, vec![lname.clone()]);
        let context = env.kubectl(&["config", "current-context"]).unwrap();
        let with_context = [&args[..], &["--context", context.trim()]].concat();
        assert_eq!(report(&with_context).0, Some(0));
        let out = vipctl(&[&args[..], &["--context", "no-such-context"]].concat());
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-context"), "{}", String::from_utf8_lossy(&out.stderr));

        // A pending Service: exit 1, and it says which.
        let bad = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "broken", "annotations": { "kube-vip.io/loadbalancerIPs": "not-an-ip" } },
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
        }))
        .unwrap();
        svcs.create(&Default::default(), &bad).await.unwrap();
        // Once the leader refused it (its Event), the report says so.
        let t0 = Instant::now();
        let (code, r) = loop {
            let (code, r) = report(&args);
            if r.services.iter().any(|s| s.name == "broken" && s.last_event.is_some()) {
                break (code, r);
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "no Event for the broken Service: {r:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(code, Some(1));
        let broken = r.services.iter().find(|s| s.name == "broken").unwrap();
        assert_eq!(broken.state, "Pending");
        assert!(broken.last_event.as_deref().is_some_and(|e| e.starts_with("InvalidAnnotation")), "{broken:?}");
        assert!(r.problems.iter().any(|p| p.contains("broken") && p.contains("pending")), "{:?}", r.problems);
        svcs.delete("broken", &Default::default()).await.unwrap();

        // The VIP on two nodes (someone added it by hand on a follower).
        let follower = (leader + 1) % 3;
        let fns = c.nodes[follower].host.ns.name().to_string();
        vipd_testkit::netns::ip(&["-n", &fns, "addr", "add", &format!("{VIP4}/32"), "dev", "eth0"]).unwrap();
        // Once the follower's vipd saw it appear.
        let seen = wait_until(Duration::from_secs(10), || async {
            doc(&c, follower).await.stray_addresses.contains(&ip(VIP4))
        })
        .await;
        assert!(seen, "the follower's vipd never saw the VIP by hand");
        let (code, r) = report(&args);
        assert_eq!(code, Some(1));
        assert_eq!(r.control_plane[0].held_by.len(), 2, "{r:#?}");
        assert!(r.problems.iter().any(|p| p.contains("held by 2 nodes")), "{:?}", r.problems);
        vipd_testkit::netns::ip(&["-n", &fns, "addr", "del", &format!("{VIP4}/32"), "dev", "eth0"]).unwrap();

        // The leader's vipd is killed: the new holder shows, the dead instance too.
        c.nodes[leader].kill();
        let t0 = Instant::now();
        loop {
            let (_, r) = report(&args);
            let cp = &r.control_plane[0];
            if cp.held_by.len() == 1 && cp.held_by[0] != lname && cp.leader.as_ref() == Some(&cp.held_by[0]) {
                assert!(r.instances.iter().any(|i| i.node == lname && !i.alive));
                assert!(r.problems.iter().any(|p| p.contains(&lname)), "{:?}", r.problems);
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "{r:#?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        // --local reads one node without the API.
        let new = c.wait_stable(Duration::from_secs(5)).await.unwrap();
        let url = base(&c, new);
        let out = env.client.ns.command(env!("CARGO_BIN_EXE_vipctl")).args(["status", "--local", "--url", &url]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(c.nodes[new].name()) && text.contains(VIP4), "{text}");
    });
}
