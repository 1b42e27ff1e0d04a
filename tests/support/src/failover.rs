//! Failover scenarios on a cluster of vipd nodes, shared by tests and
//! benchmarks: disrupt the VIP holder, measure what a client sees (the
//! outage), who took over and when, and whether two nodes ever held the VIP.

use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use crate::lab::Host;
use crate::netns::output;
use crate::probe::{ask, max_holders, AnnouncementCapture, HolderSampler, Prober, Samples};
use crate::vipd::{wait_until, VipdNode};

/// A host the cluster borrows for its whole life, or owns.
pub enum HostRef {
    Static(&'static Host),
    Owned(Host),
}

impl Deref for HostRef {
    type Target = Host;
    fn deref(&self) -> &Host {
        match self {
            HostRef::Static(h) => h,
            HostRef::Owned(h) => h,
        }
    }
}

/// What happens to the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruption {
    /// SIGKILL of its vipd (a crash).
    Kill,
    /// SIGTERM of its vipd (a graceful stop, e.g. a rolling update).
    Term,
    /// Its cable pulled (the bridge port goes down).
    LinkDown,
    /// SIGSTOP of its vipd (a frozen process); SIGCONT on restore.
    Freeze,
    /// SIGKILL of every process on the node (the daemon and its helpers:
    /// keepalived's VRRP child, vipd's guardian), as when a container dies.
    KillAll,
}

/// What one disruption did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub disruption: Disruption,
    pub old: String,
    pub new: String,
    /// From the disruption to the first answer from the new holder.
    pub takeover: Duration,
    /// The longest time the client got no answer.
    pub outage: Duration,
    /// The most nodes holding the VIP in one sample.
    pub max_holders: usize,
    /// Samples taken of who holds the VIP.
    pub holder_samples: usize,
    /// The first announcement from the new holder, as a wall time.
    pub first_announcement: Option<SystemTime>,
    /// Announcements of the VIP from the new holder seen by the client.
    pub announcements: usize,
    /// The disruption, as a wall time.
    pub disrupted_at: SystemTime,
}

pub struct VipCluster {
    pub nodes: Vec<VipdNode>,
    pub client: HostRef,
    /// The VIP a client probes.
    pub vip: IpAddr,
    pub port: u16,
}

impl VipCluster {
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.port)
    }

    /// Indices of the nodes whose kernels hold the VIP.
    pub async fn holders(&mut self) -> Vec<usize> {
        let vip = self.vip;
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.holds(vip).await {
                out.push(i);
            }
        }
        out
    }

    /// Who answers on the VIP, asked from the client.
    pub fn answer(&self) -> Option<String> {
        let target = self.target();
        self.client
            .ns
            .run(|| ask(target, Duration::from_millis(300)))
    }

    /// Waits until exactly one node holds the VIP and it answers; its index.
    pub async fn wait_stable(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.holders().await;
            if h.len() == 1 {
                let name = self.nodes[h[0]].name().to_string();
                if self.answer().as_deref() == Some(name.as_str()) {
                    return Ok(h[0]);
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {} ---\n{}", n.name(), n.log_tail(15)))
                    .collect();
                bail!(
                    "no single VIP holder after {timeout:?} (holders: {h:?})\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn mac_of(&self, i: usize) -> Option<String> {
        let json = output(
            "ip",
            &[
                "-n",
                self.nodes[i].host.ns.name(),
                "-j",
                "link",
                "show",
                "eth0",
            ],
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&json).ok()?;
        v[0]["address"].as_str().map(String::from)
    }

    /// Disrupts the current holder and measures the failover. Samples for
    /// `settle` after the new holder answers.
    pub async fn disrupt(
        &mut self,
        what: Disruption,
        give_up: Duration,
        settle: Duration,
    ) -> Result<(Outcome, usize)> {
        let old = self.wait_stable(Duration::from_secs(30)).await?;
        let old_name = self.nodes[old].name().to_string();
        let capture = AnnouncementCapture::start(&self.client);
        let prober = Prober::start(&self.client, self.target(), Duration::from_millis(10));
        let hosts: Vec<&Host> = self.nodes.iter().map(|n| &n.host).collect();
        let sampler = HolderSampler::start(&hosts, self.vip, Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(300)).await;

        let disrupted_at = SystemTime::now();
        let t0 = Instant::now();
        match what {
            Disruption::Kill => self.nodes[old].kill(),
            Disruption::Term => self.nodes[old].signal(Signal::SIGTERM),
            Disruption::LinkDown => self.nodes[old].host.link_down()?,
            Disruption::Freeze => self.nodes[old].signal(Signal::SIGSTOP),
            Disruption::KillAll => crate::netns::kill_all_in(self.nodes[old].host.ns.name()),
        }
        let answered = {
            let p = &prober;
            let name = old_name.clone();
            wait_until(give_up, || {
                let s = p.samples();
                let ok = s.first_answer_from_other_after(t0, &name).is_some();
                async move { ok }
            })
            .await
        };
        tokio::time::sleep(settle).await;
        let samples: Samples = prober.finish();
        let holder_samples = sampler.finish().await;
        let seen = capture.seen();
        drop(capture);
        if !answered {
            let logs: Vec<String> = self
                .nodes
                .iter()
                .map(|n| format!("--- {} ---\n{}", n.name(), n.log_tail(20)))
                .collect();
            bail!(
                "{what:?}: no other node answered within {give_up:?}\n{}",
                logs.join("\n")
            );
        }
        let (t_new, new_name) = samples
            .first_answer_from_other_after(t0, &old_name)
            .expect("answered");
        let new = self
            .nodes
            .iter()
            .position(|n| n.name() == new_name)
            .expect("known node");
        let mac = self.mac_of(new).unwrap_or_default();
        let from_new: Vec<SystemTime> = seen
            .iter()
            .filter(|(at, a)| {
                *at >= disrupted_at
                    && a.ip == self.vip
                    && a.mac.to_string().eq_ignore_ascii_case(&mac)
            })
            .map(|(at, _)| *at)
            .collect();
        let first_announcement = from_new.iter().min().copied();
        Ok((
            Outcome {
                disruption: what,
                old: old_name,
                new: new_name,
                takeover: t_new - t0,
                outage: samples.longest_outage(),
                max_holders: max_holders(&holder_samples),
                holder_samples: holder_samples.len(),
                first_announcement,
                announcements: from_new.len(),
                disrupted_at,
            },
            old,
        ))
    }

    /// Undoes a disruption of node `i` and waits for a stable cluster.
    /// Restores node `i` after `what` while sampling who holds `vip`, until
    /// its log says it follows `new` in `election` (`raft`, or the Lease's
    /// `namespace/name`) and half a second more: the samples of its return.
    pub async fn restore_sampled(
        &mut self,
        what: Disruption,
        i: usize,
        vip: IpAddr,
        election: &str,
        new: &str,
    ) -> Result<Vec<crate::probe::HolderSample>> {
        let hosts: Vec<&Host> = self.nodes.iter().map(|n| &n.host).collect();
        let sampler = HolderSampler::start(&hosts, vip, Duration::from_millis(10));
        self.restore(what, i).await?;
        let follows = format!("following the leader election={election} leader={new}");
        if !self.nodes[i]
            .wait_for_log(&follows, Duration::from_secs(15))
            .await
        {
            bail!(
                "{} never followed {new}\n{}",
                self.nodes[i].name(),
                self.nodes[i].log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(sampler.finish().await)
    }

    pub async fn restore(&mut self, what: Disruption, i: usize) -> Result<()> {
        match what {
            Disruption::Kill => self.nodes[i].start()?,
            Disruption::KillAll => {
                self.nodes[i].kill();
                // As a reboot would: a daemon killed outright (keepalived)
                // may have left the VIP on the interface.
                let prefix = if self.vip.is_ipv4() { 32 } else { 128 };
                let _ = self.nodes[i].host.remove_address(self.vip, prefix);
                self.nodes[i].start()?
            }
            Disruption::Term => {
                self.nodes[i].terminate(Duration::from_secs(10))?;
                self.nodes[i].start()?;
            }
            Disruption::LinkDown => self.nodes[i].host.link_up()?,
            Disruption::Freeze => self.nodes[i].signal(Signal::SIGCONT),
        }
        self.wait_stable(Duration::from_secs(30)).await?;
        Ok(())
    }
}

/// The `p`-th percentile of some durations (nearest rank), in milliseconds.
pub fn percentile(d: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[i.clamp(1, v.len()) - 1]
}

/// Median and worst of some durations, in milliseconds.
pub fn median_worst(d: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    if ms.is_empty() {
        return (0.0, 0.0);
    }
    let mid = ms.len() / 2;
    let median = if ms.len() % 2 == 0 {
        (ms[mid - 1] + ms[mid]) / 2.0
    } else {
        ms[mid]
    };
    (median, *ms.last().expect("non-empty"))
}

/// `n` lab hosts `n1`.. (192.0.2.11..) running vipd with the environment of
/// the manifest at `manifest` (relative to the workspace), authenticated as
/// the `vipd-system/vipd` ServiceAccount bound by `manifests/rbac.yaml`;
/// `extra` overrides settings (a test's own `cp_namespace` gets the
/// manifest's Roles too). Each host answers TCP on `ports`.
pub async fn vipd_nodes(
    env: &'static crate::apiserver::Env,
    n: usize,
    manifest: &str,
    bin: &std::path::Path,
    extra: &[(&str, &str)],
    ports: &[u16],
) -> Result<Vec<VipdNode>> {
    use crate::vipd::{manifest_env, set_env};
    env.apply_once("manifests/rbac.yaml")?;
    let kubeconfig = env
        .service_account_kubeconfig("vipd-system", "vipd")
        .await?;
    let mut base = manifest_env(&crate::workspace_root().join(manifest))?;
    set_env(&mut base, "vip_interface", "eth0");
    set_env(
        &mut base,
        "k8s_config_file",
        kubeconfig.to_str().expect("utf-8"),
    );
    set_env(&mut base, "vip_loglevel", "debug");
    for (k, v) in extra {
        set_env(&mut base, k, v);
    }
    if let Some((_, ns)) = base.iter().find(|(k, _)| k == "cp_namespace") {
        if ns != "vipd-system" {
            grant_roles(env, ns)?;
        }
    }
    let mut nodes = Vec::new();
    for i in 1..=n {
        let name = format!("n{i}");
        let host = env.lab.add_host(&name, 10 + i as u8)?;
        let mut e = base.clone();
        set_env(&mut e, "vip_nodename", &name);
        // The hosts share one filesystem: each vipd's gobgpd gets a socket
        // of its own (on a real node the default path is private to it).
        let bgp = e.iter().any(|(k, v)| k == "bgp_enable" && v == "true");
        if bgp && !e.iter().any(|(k, _)| k == "bgp_gobgp_api") {
            let sock = crate::run_dir().join(host.ns.name()).join("gobgpd.sock");
            set_env(
                &mut e,
                "bgp_gobgp_api",
                &format!("unix://{}", sock.display()),
            );
        }
        let mut node = VipdNode::new(host, bin, e, ports);
        node.start()?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// A cluster of `n` vipd nodes electing the control-plane VIP with a Lease
/// in a fresh namespace, configured as `manifests/k3s/vipd-daemonset.yaml`.
/// `vips` are the VIPs (the first is probed); `extra` overrides settings.
pub async fn lease_cluster(
    env: &'static crate::apiserver::Env,
    n: usize,
    vips: &[IpAddr],
    bin: &std::path::Path,
    extra: &[(&str, &str)],
) -> Result<(VipCluster, String)> {
    let lease_ns = env.namespace("cp").await;
    let addresses: Vec<String> = vips.iter().map(|v| v.to_string()).collect();
    let joined = addresses.join(",");
    // The control-plane VIP alone (the manifest serves Services too).
    let mut settings: Vec<(&str, &str)> = vec![
        ("address", &joined),
        ("cp_namespace", &lease_ns),
        ("svc_enable", "false"),
    ];
    settings.extend_from_slice(extra);
    let nodes = vipd_nodes(
        env,
        n,
        "manifests/k3s/vipd-daemonset.yaml",
        bin,
        &settings,
        &[6443],
    )
    .await?;
    Ok((
        VipCluster {
            nodes,
            client: HostRef::Static(&env.client),
            vip: vips[0],
            port: 6443,
        },
        lease_ns,
    ))
}

/// Grants the Roles of `manifests/rbac.yaml` (Leases, and the pools
/// ConfigMap by name) in namespace `ns` too: tests keep their Leases and
/// pools in namespaces of their own.
pub fn grant_roles(env: &crate::apiserver::Env, ns: &str) -> Result<()> {
    use serde::Deserialize;
    let rbac = std::fs::read_to_string(crate::workspace_root().join("manifests/rbac.yaml"))?;
    for doc in serde_yaml::Deserializer::from_str(&rbac) {
        let mut v = serde_yaml::Value::deserialize(doc)?;
        if v["kind"] == "Role" || v["kind"] == "RoleBinding" {
            v["metadata"]["namespace"] = ns.into();
            let path =
                crate::run_dir().join(format!("{}-{ns}.yaml", v["kind"].as_str().unwrap_or("x")));
            std::fs::write(&path, serde_yaml::to_string(&v)?)?;
            env.kubectl(&["apply", "-f", path.to_str().expect("utf-8")])?;
        }
    }
    Ok(())
}

/// A lab of its own with `n` vipd nodes electing the VIP with Raft, and a
/// client; no API server anywhere. Field order is drop order: the cluster's
/// hosts go before the segment. Run futures with `rt.block_on`: the
/// cluster's probes open their sockets inside the right namespaces.
pub struct RaftLab {
    pub cluster: VipCluster,
    pub lab: crate::lab::Lab,
    pub rt: tokio::runtime::Runtime,
}

impl RaftLab {
    fn assemble(
        lab: crate::lab::Lab,
        client: Host,
        nodes: Vec<VipdNode>,
        vip: IpAddr,
    ) -> Result<RaftLab> {
        let rt = client.ns.runtime(2)?;
        let cluster = VipCluster {
            nodes,
            client: HostRef::Owned(client),
            vip,
            port: 6443,
        };
        Ok(RaftLab { cluster, lab, rt })
    }

    /// `extra` overrides settings on every node.
    pub fn start(
        n: usize,
        vip: IpAddr,
        bin: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Result<RaftLab> {
        let (prefix, lab, client) = crate::lab::Lab::own("r")?;
        let peers: Vec<String> = (1..=n)
            .map(|i| format!("n{i}={}:7946", crate::lab::host_v4(10 + i as u8)))
            .collect();
        let peers = peers.join(",");
        let secret = crate::vipd::raft_secret_file(&prefix)?;
        let mut nodes = Vec::new();
        for i in 1..=n {
            let name = format!("n{i}");
            let host = lab.add_host(&name, 10 + i as u8)?;
            let state = crate::run_dir().join(format!("raft-{prefix}-{name}"));
            let mut env: Vec<(String, String)> = [
                ("vip_arp", "true"),
                ("cp_enable", "true"),
                ("vip_interface", "eth0"),
                ("vip_raft", "true"),
                ("vip_loglevel", "debug"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            crate::vipd::set_env(&mut env, "address", &vip.to_string());
            crate::vipd::set_env(&mut env, "vip_raft_peers", &peers);
            crate::vipd::set_env(
                &mut env,
                "vip_raft_secret_file",
                secret.to_str().expect("utf-8"),
            );
            crate::vipd::set_env(&mut env, "vip_nodename", &name);
            crate::vipd::set_env(
                &mut env,
                "vip_raft_state_dir",
                state.to_str().expect("utf-8"),
            );
            for (k, v) in extra {
                crate::vipd::set_env(&mut env, k, v);
            }
            let mut node = VipdNode::new(host, bin, env, &[6443]);
            node.start()?;
            nodes.push(node);
        }
        RaftLab::assemble(lab, client, nodes, vip)
    }
}

/// A lab of its own running keepalived (VRRPv3, from Debian) on `n` nodes
/// for the same VIP, for comparison with vipd: `advert` is `advert_int`.
pub fn keepalived_lab(n: usize, vip: IpAddr, advert: &str) -> Result<RaftLab> {
    let (prefix, lab, client) = crate::lab::Lab::own("k")?;
    let bin = std::path::Path::new("/usr/sbin/keepalived");
    if !bin.exists() {
        anyhow::bail!("keepalived is not installed (scripts/setup.sh installs it)");
    }
    let mut nodes = Vec::new();
    for i in 1..=n {
        let name = format!("n{i}");
        let host = lab.add_host(&name, 10 + i as u8)?;
        let dir = crate::run_dir().join(format!("keepalived-{prefix}-{name}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        let prefix_len = if vip.is_ipv4() { 32 } else { 128 };
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id {name}\n  vrrp_version 3\n  vrrp_garp_master_delay 1\n  vrrp_garp_master_repeat 3\n}}\n\
                 vrrp_instance VI {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {prio}\n  advert_int {advert}\n  nopreempt\n  \
                 virtual_ipaddress {{\n    {vip}/{prefix_len} dev eth0\n  }}\n}}\n",
                prio = 100 + i
            ),
        )?;
        let d = dir.to_str().expect("utf-8");
        let mut node = VipdNode::new(host, bin, vec![], &[6443]);
        node.args = vec![
            "--dont-fork".into(),
            "--log-console".into(),
            "--vrrp".into(),
            "--use-file".into(),
            conf.to_str().expect("utf-8").into(),
            "--pid".into(),
            format!("{d}/keepalived.pid"),
            "--vrrp_pid".into(),
            format!("{d}/vrrp.pid"),
        ];
        node.start()?;
        nodes.push(node);
    }
    RaftLab::assemble(lab, client, nodes, vip)
}
