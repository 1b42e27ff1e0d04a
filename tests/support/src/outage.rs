//! A control-plane outage in the lab: three nodes with the control-plane
//! VIP and a LoadBalancer Service (Lease mode, ARP, the K3s static pod's
//! environment), a client connecting to both addresses every 10 ms, while
//! the API server is frozen (SIGSTOP, as a hung etcd behaves) or cut off
//! from the VIP's holder only. Used by tests/api_outage.rs and `vipd-lab
//! bench outage`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use nix::sys::signal::Signal;

use crate::apiserver::Env;
use crate::failover::vipd_nodes;
use crate::probe::{HolderSample, HolderSampler, NodeKernel, Prober};
use crate::vipd::VipdNode;

pub const VIP: &str = "192.0.2.100";
pub const SVC: &str = "192.0.2.160";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every process of the API server (kube-apiserver with its etcd) stopped
/// or continued.
pub fn signal_api(env: &Env, sig: Signal) {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", env.api_host.ns.name()])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.parse().unwrap()), sig);
    }
}

/// Thaws the API server even when a test fails while it is frozen.
pub struct Frozen(&'static Env);

impl Frozen {
    pub fn start(env: &'static Env) -> Frozen {
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
pub async fn cluster(
    env: &'static Env,
    bin: &Path,
    extra: &[(&str, &str)],
) -> (Vec<VipdNode>, String) {
    let ns = env.namespace("outage").await;
    let mut settings: Vec<(&str, &str)> = vec![("address", VIP), ("cp_namespace", &ns)];
    settings.extend_from_slice(extra);
    let nodes = vipd_nodes(
        env,
        3,
        "manifests/k3s/vipd-static-pod.yaml",
        bin,
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

pub async fn holders(nodes: &[VipdNode], addr: IpAddr) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        if NodeKernel::open(&n.host).holds(addr).await {
            out.push(n.name().to_string());
        }
    }
    out
}

pub async fn one_holder(nodes: &[VipdNode], addr: IpAddr, timeout: Duration) -> String {
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

pub fn logs(nodes: &[VipdNode]) -> String {
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
pub struct FreezeOutcome {
    pub vip_outage: Duration,
    pub svc_outage: Duration,
    pub vip_holders: std::collections::BTreeSet<Vec<String>>,
    pub svc_holders: std::collections::BTreeSet<Vec<String>>,
}

pub async fn freeze_api(env: &'static Env, nodes: &[VipdNode], freeze: Duration) -> FreezeOutcome {
    let hosts: Vec<&crate::lab::Host> = nodes.iter().map(|n| &n.host).collect();
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

/// What cutting the VIP's holder off from the API server (not from its
/// clients) showed.
#[derive(Debug)]
pub struct CutOutcome {
    pub old: String,
    pub new: String,
    /// Cut -> another node holds the VIP.
    pub takeover: Duration,
    /// The longest run of samples (every 20 ms) with two holders.
    pub overlap: Duration,
    /// After the cut healed, the VIP stayed with the new holder.
    pub stayed: bool,
    /// The old holder logged why it let go.
    pub said_why: bool,
}

/// The longest run of samples with more than one holder.
pub fn longest_overlap(samples: &[HolderSample]) -> Duration {
    let (mut worst, mut run_start): (Duration, Option<Instant>) = (Duration::ZERO, None);
    for s in samples {
        match (s.holders.len() > 1, run_start) {
            (true, None) => run_start = Some(s.at),
            (false, Some(st)) => {
                worst = worst.max(s.at - st);
                run_start = None;
            }
            _ => {}
        }
    }
    worst
}

/// How the holder is cut off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cut {
    /// Also drop every gratuitous ARP for the VIP on the switch, so the old
    /// holder can learn of the new one only by probing.
    pub silence_announcements: bool,
    /// How long the cut lasts after another node took over (default 2 s).
    pub after_takeover: Option<Duration>,
}

/// Cuts the VIP's holder off from the API server (its packets to it
/// dropped) until another node holds the VIP, waits 2 s, heals the cut and
/// watches 6 s more.
pub async fn cut_holder_off(env: &'static Env, nodes: &[VipdNode]) -> Result<CutOutcome> {
    cut_holder_off_with(env, nodes, Cut::default()).await
}

/// [`cut_holder_off`], as `how` says.
pub async fn cut_holder_off_with(
    env: &'static Env,
    nodes: &[VipdNode],
    how: Cut,
) -> Result<CutOutcome> {
    let old = one_holder(nodes, ip(VIP), Duration::from_secs(10)).await;
    let old_node = nodes.iter().find(|n| n.name() == old).expect("a node");
    // Gratuitous ARPs (sender = target = the VIP) never cross the switch;
    // probes (sender 0.0.0.0) and replies do.
    let _silence = if how.silence_announcements {
        Some(crate::lab::SwitchFilter::install(
            &old_node.host,
            "vipdsilence",
            &[&format!(
                "ether type arp arp operation request arp saddr ip {VIP} drop"
            )],
        )?)
    } else {
        None
    };
    let hosts: Vec<&crate::lab::Host> = nodes.iter().map(|n| &n.host).collect();
    let sampler = HolderSampler::start(&hosts, ip(VIP), Duration::from_millis(20));
    let api = env.api_address().to_string();
    let ns = old_node.host.ns.name().to_string();
    // Both ways: with only its own packets dropped, the holder still
    // hears the API server's watch events on the open connection.
    let cut = |op: &str| -> Result<()> {
        for (chain, dir) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            let out = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, "iptables", op, chain, dir, &api, "-j", "DROP",
                ])
                .output()?;
            if !out.status.success() {
                bail!("iptables {op}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    };
    let t0 = Instant::now();
    cut("-A")?;
    let new = loop {
        let h = holders(nodes, ip(VIP)).await;
        if let Some(n) = h.iter().find(|n| **n != old) {
            break n.clone();
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = cut("-D");
            bail!("nobody took over\n{}", logs(nodes));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let takeover = t0.elapsed();
    tokio::time::sleep(how.after_takeover.unwrap_or(Duration::from_secs(2))).await;
    cut("-D")?;
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let samples = sampler.finish().await;
    let stayed = samples
        .iter()
        .filter(|s| s.at > healed)
        .all(|s| s.holders == vec![new.clone()]);
    let said_why = old_node.log_tail(80).contains("letting it go");
    Ok(CutOutcome {
        old,
        new,
        takeover,
        overlap: longest_overlap(&samples),
        stayed,
        said_why,
    })
}
