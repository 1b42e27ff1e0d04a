//! A control-plane outage never takes the data plane down: three nodes with
//! the control-plane VIP and a LoadBalancer Service (Lease mode, ARP, the
//! K3s static pod's environment), a client connecting to both addresses
//! every 10 ms, while the API server is frozen (SIGSTOP, as a hung etcd
//! behaves) or cut off from the holder only.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use nix::sys::signal::Signal;
use vipd_testkit::apiserver::{env, Env};
use vipd_testkit::failover::vipd_nodes;
use vipd_testkit::probe::{HolderSample, HolderSampler, NodeKernel, Prober};
use vipd_testkit::vipd::VipdNode;

const VIP: &str = "192.0.2.100";
const SVC: &str = "192.0.2.160";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every process of the API server (kube-apiserver with its etcd) stopped
/// or continued.
fn signal_api(env: &Env, sig: Signal) {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", env.api_host.ns.name()])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.parse().unwrap()), sig);
    }
}

/// Thaws the API server even when a test fails while it is frozen.
struct Frozen(&'static Env);

impl Frozen {
    fn start(env: &'static Env) -> Frozen {
        signal_api(env, Signal::SIGSTOP);
        Frozen(env)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_api(self.0, Signal::SIGCONT);
    }
}

/// Three nodes as K3s servers run vipd (control-plane VIP and Services),
/// `extra` settings on top, and a Service at `SVC`; returns once both
/// addresses are held.
async fn cluster(env: &'static Env, extra: &[(&str, &str)]) -> (Vec<VipdNode>, String) {
    let ns = env.namespace("outage").await;
    let mut settings: Vec<(&str, &str)> = vec![("address", VIP), ("cp_namespace", &ns)];
    settings.extend_from_slice(extra);
    let nodes = vipd_nodes(
        env,
        3,
        "manifests/k3s/vipd-static-pod.yaml",
        bin(),
        &settings,
        &[6443, 80],
    )
    .await
    .unwrap();
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web", "annotations": { "kube-vip.io/loadbalancerIPs": SVC } },
        "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
    }))
    .unwrap();
    Api::<Service>::namespaced(env.admin().await, &ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    for addr in [VIP, SVC] {
        one_holder(&nodes, ip(addr), Duration::from_secs(30)).await;
    }
    (nodes, ns)
}

async fn holders(nodes: &[VipdNode], addr: IpAddr) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        if NodeKernel::open(&n.host).holds(addr).await {
            out.push(n.name().to_string());
        }
    }
    out
}

async fn one_holder(nodes: &[VipdNode], addr: IpAddr, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let h = holders(nodes, addr).await;
        if h.len() == 1 {
            return h[0].clone();
        }
        assert!(
            t0.elapsed() < timeout,
            "{addr} held by {h:?}\n{}",
            logs(nodes)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn logs(nodes: &[VipdNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {} ---\n{}", n.name(), n.log_tail(25)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The holders seen over a run, as one set per sample.
fn distinct_holders(samples: &[HolderSample]) -> std::collections::BTreeSet<Vec<String>> {
    samples.iter().map(|s| s.holders.clone()).collect()
}

/// The API server frozen for `freeze`: what the client lost on each address,
/// and who held each address over the freeze and 5 s after the thaw.
struct FreezeOutcome {
    vip_outage: Duration,
    svc_outage: Duration,
    vip_holders: std::collections::BTreeSet<Vec<String>>,
    svc_holders: std::collections::BTreeSet<Vec<String>>,
}

async fn freeze_api(env: &'static Env, nodes: &[VipdNode], freeze: Duration) -> FreezeOutcome {
    let hosts: Vec<&vipd_testkit::lab::Host> = nodes.iter().map(|n| &n.host).collect();
    let vip_probe = Prober::start(
        &env.client,
        SocketAddr::new(ip(VIP), 6443),
        Duration::from_millis(10),
    );
    let svc_probe = Prober::start(
        &env.client,
        SocketAddr::new(ip(SVC), 80),
        Duration::from_millis(10),
    );
    let vip_sampler = HolderSampler::start(&hosts, ip(VIP), Duration::from_millis(20));
    let svc_sampler = HolderSampler::start(&hosts, ip(SVC), Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let _frozen = Frozen::start(env);
        tokio::time::sleep(freeze).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    FreezeOutcome {
        vip_outage: vip_probe.finish().longest_outage(),
        svc_outage: svc_probe.finish().longest_outage(),
        vip_holders: distinct_holders(&vip_sampler.finish().await),
        svc_holders: distinct_holders(&svc_sampler.finish().await),
    }
}

/// The default: a frozen API server changes nothing on the wire. Both
/// addresses keep answering from the same node throughout and after.
#[test]
fn a_frozen_api_server_takes_no_address_down() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(env, &[]).await;
        let o = freeze_api(env, &nodes, Duration::from_secs(15)).await;
        eprintln!(
            "frozen 15 s: VIP outage {:?}, Service outage {:?}",
            o.vip_outage, o.svc_outage
        );
        assert!(
            o.vip_outage < Duration::from_millis(200),
            "VIP lost for {:?}\n{}",
            o.vip_outage,
            logs(&nodes)
        );
        assert!(
            o.svc_outage < Duration::from_millis(200),
            "Service lost for {:?}\n{}",
            o.svc_outage,
            logs(&nodes)
        );
        assert_eq!(o.vip_holders.len(), 1, "the VIP moved: {:?}", o.vip_holders);
        assert_eq!(
            o.svc_holders.len(),
            1,
            "the Service address moved: {:?}",
            o.svc_holders
        );
    });
}

/// The same with a Lease per Service address (`svc_election`).
#[test]
fn a_frozen_api_server_takes_no_address_down_with_per_address_leases() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(env, &[("svc_election", "true")]).await;
        let o = freeze_api(env, &nodes, Duration::from_secs(15)).await;
        eprintln!(
            "frozen 15 s (svc_election): VIP outage {:?}, Service outage {:?}",
            o.vip_outage, o.svc_outage
        );
        assert!(
            o.vip_outage < Duration::from_millis(200),
            "VIP lost for {:?}\n{}",
            o.vip_outage,
            logs(&nodes)
        );
        assert!(
            o.svc_outage < Duration::from_millis(200),
            "Service lost for {:?}\n{}",
            o.svc_outage,
            logs(&nodes)
        );
        assert_eq!(o.vip_holders.len(), 1, "the VIP moved: {:?}", o.vip_holders);
        assert_eq!(
            o.svc_holders.len(),
            1,
            "the Service address moved: {:?}",
            o.svc_holders
        );
    });
}

/// `vip_hold_on_api_loss=false` keeps the strict behaviour: the holder
/// gives the addresses up at its renew deadline, so a frozen API server
/// takes them down (what every node did before holding was the default).
#[test]
fn strict_mode_drops_the_addresses_at_the_renew_deadline() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(env, &[("vip_hold_on_api_loss", "false")]).await;
        let o = freeze_api(env, &nodes, Duration::from_secs(8)).await;
        eprintln!(
            "frozen 8 s (strict): VIP outage {:?}, Service outage {:?}",
            o.vip_outage, o.svc_outage
        );
        assert!(o.vip_outage > Duration::from_secs(3), "{:?}", o.vip_outage);
        assert!(o.svc_outage > Duration::from_secs(3), "{:?}", o.svc_outage);
    });
}

/// The holder cut off from the API server but not from its clients: the
/// others take the VIP over once its Lease expired, and the old holder
/// lets go the moment it hears the new one's announcement; two nodes hold
/// it for at most 300 ms. When the cut heals, nothing moves.
#[test]
fn a_holder_cut_off_from_the_api_lets_go_when_another_takes_over() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(env, &[]).await;
        let old = one_holder(&nodes, ip(VIP), Duration::from_secs(10)).await;
        let old_host = &nodes.iter().find(|n| n.name() == old).unwrap().host;
        let hosts: Vec<&vipd_testkit::lab::Host> = nodes.iter().map(|n| &n.host).collect();
        let sampler = HolderSampler::start(&hosts, ip(VIP), Duration::from_millis(20));
        let api = env.api_address().to_string();
        let cut = |op: &str| {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    old_host.ns.name(),
                    "iptables",
                    op,
                    "OUTPUT",
                    "-d",
                    &api,
                    "-j",
                    "DROP",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let t0 = Instant::now();
        cut("-A");
        let new = loop {
            let h = holders(&nodes, ip(VIP)).await;
            if let Some(n) = h.iter().find(|n| **n != old) {
                break n.clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "nobody took over\n{}",
                logs(&nodes)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!("cut off -> {new} holds: {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        cut("-D");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let samples = sampler.finish().await;
        // The longest run of samples with two holders.
        let (mut worst, mut run_start): (Duration, Option<Instant>) = (Duration::ZERO, None);
        for s in &samples {
            match (s.holders.len() > 1, run_start) {
                (true, None) => run_start = Some(s.at),
                (false, Some(st)) => {
                    worst = worst.max(s.at - st);
                    run_start = None;
                }
                _ => {}
            }
        }
        eprintln!("two holders for at most {worst:?}");
        assert!(
            worst <= Duration::from_millis(300),
            "two holders for {worst:?}\n{}",
            logs(&nodes)
        );
        let after: Vec<&HolderSample> = samples
            .iter()
            .filter(|s| s.at > t0 + Duration::from_secs(1) && s.holders.len() == 1)
            .collect();
        assert!(
            after.last().is_some_and(|s| s.holders == vec![new.clone()]),
            "the VIP moved again after the cut healed\n{}",
            logs(&nodes)
        );
        let log = nodes.iter().find(|n| n.name() == old).unwrap().log_tail(60);
        assert!(
            log.contains("letting it go"),
            "the old holder did not say why it let go:\n{log}"
        );
    });
}
