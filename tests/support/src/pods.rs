//! A K3s-like cluster of real nodes ([`KubeNode`]) running vipd from its
//! image, as users deploy it: servers `n1`.. with vipd's static pod, agents
//! after them. The HA scenarios of the host-process lab, on pods: the
//! container killed, the node dead, a rolling update by editing the static
//! pod files, and pod start to VIP held.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use crate::apiserver::Env;
use crate::nodes::{vipd_image, KubeNode};
use crate::probe::{max_holders, HolderSampler, NodeKernel, Prober, Responder};

/// The control-plane VIP of the pod lab.
pub const VIP: &str = "192.0.2.100";
/// The API port the VIP's clients use (answered by each server's responder).
pub const API_PORT: u16 = 6443;
/// The image tag the manifests name, and a second tag of the same image
/// for rolling updates (`ctr images tag`), as a new version would be.
pub const IMAGE: &str = concat!("ghcr.io/vipd/vipd:v", env!("CARGO_PKG_VERSION"));
pub const IMAGE_NEXT: &str = concat!("ghcr.io/vipd/vipd:v", env!("CARGO_PKG_VERSION"), "-next");

/// The labels K3s' supervisor puts on a server once its kubelet registers.
const SERVER_LABELS: [&str; 3] = [
    "node-role.kubernetes.io/control-plane=true",
    "node-role.kubernetes.io/master=true",
    "node-role.kubernetes.io/etcd=true",
];

pub struct PodCluster {
    /// Fields drop in order: responders, then the nodes.
    _responders: Vec<Responder>,
    pub nodes: Vec<KubeNode>,
    pub servers: usize,
    env: &'static Env,
    /// The static pod text each server runs now.
    static_pod: Option<String>,
}

fn vip() -> IpAddr {
    VIP.parse().expect("literal")
}

impl PodCluster {
    /// `servers` + `agents` nodes (192.0.2.11..), the vipd image imported in
    /// each, every node answering TCP on `ports` with its name. Returns
    /// when every node is Ready and the servers are labelled as K3s labels
    /// them.
    pub async fn start(
        env: &'static Env,
        servers: usize,
        agents: usize,
        ports: &[u16],
    ) -> Result<PodCluster> {
        let (nodes, responders) = tokio::task::block_in_place(|| -> Result<_> {
            let image = vipd_image()?;
            let mut nodes = Vec::new();
            let mut responders = Vec::new();
            for i in 1..=(servers + agents) as u8 {
                let host = env.lab.add_host(&format!("n{i}"), 10 + i)?;
                for p in ports {
                    responders.push(Responder::start(&host, *p));
                }
                nodes.push(KubeNode::start(
                    host,
                    env.admin_kubeconfig(),
                    env.admin_kubeconfig(),
                    std::slice::from_ref(&image),
                )?);
            }
            Ok((nodes, responders))
        })?;
        let c = PodCluster {
            _responders: responders,
            nodes,
            servers,
            env,
            static_pod: None,
        };
        c.wait_nodes_ready(Duration::from_secs(90)).await?;
        tokio::task::block_in_place(|| -> Result<()> {
            for n in &c.nodes[..servers] {
                let mut args = vec!["label", "--overwrite", "node", n.name.as_str()];
                args.extend(SERVER_LABELS);
                env.kubectl(&args)?;
                n.tag_image(IMAGE, IMAGE_NEXT)?;
            }
            Ok(())
        })?;
        Ok(c)
    }

    pub fn env(&self) -> &'static Env {
        self.env
    }

    async fn wait_nodes_ready(&self, timeout: Duration) -> Result<()> {
        let api: Api<Node> = Api::all(self.env.admin().await);
        let t0 = Instant::now();
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                let ready = self.nodes.iter().all(|n| {
                    list.items.iter().any(|node| {
                        node.metadata.name.as_deref() == Some(n.name.as_str())
                            && node
                                .status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|cs| {
                                    cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                    })
                });
                if ready {
                    return Ok(());
                }
            }
            if t0.elapsed() > timeout {
                bail!("nodes not Ready after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The kubelets' last lines and vipd's container logs.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- {} kubelet ---\n{}\n--- {} vipd ---\n{}",
                    n.name,
                    n.kubelet_log_tail(40)
                        .lines()
                        .filter(|l| !l.contains("filesystem info")
                            && !l.contains("HasDedicatedImageFs"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    n.name,
                    tail(&n.container_log("kube-system", "vipd"), 12)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes `yaml` as `vipd.yaml` into every server's static pod
    /// directory, as a user copies the file.
    pub fn write_static_pods(&mut self, yaml: &str) -> Result<()> {
        for n in &self.nodes[..self.servers] {
            write_atomically(&n.static_pods().join("vipd.yaml"), yaml)?;
        }
        self.static_pod = Some(yaml.to_string());
        Ok(())
    }

    pub fn remove_static_pods(&mut self) -> Result<()> {
        for n in &self.nodes[..self.servers] {
            let _ = std::fs::remove_file(n.static_pods().join("vipd.yaml"));
        }
        self.static_pod = None;
        Ok(())
    }

    /// The pods of `namespace` whose name starts with `prefix`.
    pub async fn pods(&self, namespace: &str, prefix: &str) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.env.admin().await, namespace);
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect()
    }

    /// Waits until exactly `n` pods of `prefix` exist and all are Ready.
    pub async fn wait_pods_ready(
        &self,
        namespace: &str,
        prefix: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let ps = self.pods(namespace, prefix).await;
            if ps.len() == n && ps.iter().all(ready) {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{n} pods {namespace}/{prefix}* not Ready after {timeout:?}: {:?}\n{}",
                    ps.iter().map(summary).collect::<Vec<_>>(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Which nodes' kernels hold `addr`.
    pub async fn holders(&self, addr: IpAddr) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if NodeKernel::open(&n.host).holds(addr).await {
                out.push(n.name.clone());
            }
        }
        out
    }

    /// Waits until exactly one node holds `addr`; returns its index.
    pub async fn wait_one_holder(&self, addr: IpAddr, timeout: Duration) -> Result<usize> {
        let t0 = Instant::now();
        loop {
            let h = self.holders(addr).await;
            if h.len() == 1 {
                return Ok(self.index(&h[0]));
            }
            if t0.elapsed() > timeout {
                bail!("{addr} held by {h:?} after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a node of this cluster")
    }

    /// Who answers `addr:port` from the client host.
    pub fn answer(&self, addr: IpAddr, port: u16) -> Option<String> {
        let target = SocketAddr::new(addr, port);
        self.env
            .client
            .ns
            .run(|| crate::probe::ask(target, Duration::from_millis(500)))
    }

    /// SIGKILL to the main process of node `i`'s vipd container: the
    /// kernel kills the rest of the container with it (its PID namespace),
    /// as the OOM killer or a crash does; the kubelet restarts it.
    pub fn kill_container(&self, i: usize) -> Result<()> {
        let pid = vipd_container_pid(&self.nodes[i])?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        Ok(())
    }

    /// Runs `scenario` against the control-plane VIP while a client probes
    /// `VIP:6443` every 20 ms, restores the cluster, and reports.
    pub async fn run(&mut self, scenario: PodScenario) -> Result<PodOutcome> {
        let servers: Vec<&crate::lab::Host> =
            self.nodes[..self.servers].iter().map(|n| &n.host).collect();
        let sampler = HolderSampler::start(&servers, vip(), Duration::from_millis(20));
        let outcome = self.disrupt(scenario).await;
        let history = sampler.finish().await;
        let mut outcome = outcome?;
        outcome.max_holders = max_holders(&history);
        Ok(outcome)
    }

    async fn disrupt(&mut self, scenario: PodScenario) -> Result<PodOutcome> {
        let yaml = self.static_pod.clone().context("no static pod written")?;
        let old = self.wait_one_holder(vip(), Duration::from_secs(30)).await?;
        let old_name = self.nodes[old].name.clone();
        let prober = self.probe();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        let mut takeover = None;
        let mut dead_container = None;
        match scenario {
            PodScenario::PodStart => {
                // Every vipd gone, the VIP released; then the files again.
                drop(prober);
                self.remove_static_pods()?;
                self.wait_pods_gone("kube-system", "vipd-", Duration::from_secs(60))
                    .await?;
                let t0 = Instant::now();
                self.write_static_pods(&yaml)?;
                self.wait_one_holder(vip(), Duration::from_secs(60)).await?;
                let held = t0.elapsed();
                self.wait_pods_ready(
                    "kube-system",
                    "vipd-",
                    self.servers,
                    Duration::from_secs(90),
                )
                .await?;
                return Ok(PodOutcome {
                    scenario,
                    takeover: Some(held),
                    outage: Duration::ZERO,
                    pods_ready: Some(t0.elapsed()),
                    max_holders: 0,
                    old_holder: old_name,
                    recovered: true,
                });
            }
            PodScenario::ContainerKilled => {
                let killed = vipd_container_pid(&self.nodes[old])?;
                let wall = epoch_ms();
                self.kill_container(old)?;
                takeover = Some(self.wait_led_again(old, killed, wall, t0).await?);
            }
            PodScenario::ManagerKilled => {
                let container = vipd_container_pid(&self.nodes[old])?;
                let manager = vipd_manager_pid(&self.nodes[old])?;
                let seen = guardian_outlived(&self.nodes[old]);
                let wall = epoch_ms();
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(manager),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
                takeover = Some(self.wait_led_again(old, container, wall, t0).await?);
                // The guardian was not killed with the manager: it says so
                // the moment the manager's end of its pipe closes.
                let t = Instant::now();
                while !said_again(&seen, &guardian_outlived(&self.nodes[old])) {
                    if t.elapsed() > Duration::from_secs(15) {
                        bail!(
                            "{old_name}: no guardian line after its manager was killed (did the guardian die with it?)\n{}",
                            self.logs()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            PodScenario::NodeDeath => {
                dead_container = self.container_id(old).await;
                self.nodes[old].die()?;
                takeover = Some(self.wait_moved(old, t0, Duration::from_secs(30)).await?);
            }
            PodScenario::RollingUpdate => {
                // A new version, one server at a time, each waited for.
                let next = if yaml.contains(IMAGE_NEXT) {
                    yaml.replace(IMAGE_NEXT, IMAGE)
                } else {
                    yaml.replace(IMAGE, IMAGE_NEXT)
                };
                for i in 0..self.servers {
                    let before = self.mirror_hash(i).await;
                    write_atomically(&self.nodes[i].static_pods().join("vipd.yaml"), &next)?;
                    self.wait_replaced(i, before, Duration::from_secs(60))
                        .await?;
                    self.wait_one_holder(vip(), Duration::from_secs(30)).await?;
                }
                self.static_pod = Some(next);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let samples = prober.finish();
        let outcome = PodOutcome {
            scenario,
            takeover,
            outage: samples.longest_outage(),
            pods_ready: None,
            max_holders: 0,
            old_holder: old_name,
            recovered: samples.ends_answered(),
        };
        // Back to every server healthy.
        match scenario {
            PodScenario::NodeDeath => {
                self.nodes[old].boot()?;
                self.wait_nodes_ready(Duration::from_secs(90)).await?;
                // The API still shows the dead node's pod as it was (the
                // node is not marked NotReady for 20 s): wait for the
                // container the rebooted kubelet starts.
                let t = Instant::now();
                while self.container_id(old).await == dead_container {
                    if t.elapsed() > Duration::from_secs(90) {
                        bail!(
                            "{}: no new vipd container after the reboot\n{}",
                            self.nodes[old].name,
                            self.logs()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            PodScenario::ContainerKilled
            | PodScenario::ManagerKilled
            | PodScenario::RollingUpdate
            | PodScenario::PodStart => {}
        }
        // A container killed again and again waits out the kubelet's
        // CrashLoopBackOff (10 s doubling to 5 min, per pod) before it runs.
        let ready_within = match scenario {
            PodScenario::ContainerKilled | PodScenario::ManagerKilled => Duration::from_secs(330),
            _ => Duration::from_secs(90),
        };
        self.wait_pods_ready("kube-system", "vipd-", self.servers, ready_within)
            .await?;
        self.wait_one_holder(vip(), Duration::from_secs(30)).await?;
        Ok(outcome)
    }

    fn probe(&self) -> Prober {
        Prober::start(
            &self.env.client,
            SocketAddr::new(vip(), API_PORT),
            Duration::from_millis(20),
        )
    }

    /// Time from `t0` until a server other than `old` holds the VIP.
    async fn wait_moved(&self, old: usize, t0: Instant, timeout: Duration) -> Result<Duration> {
        let old = self.nodes[old].name.clone();
        loop {
            let h = self.holders(vip()).await;
            if h.iter().any(|n| *n != old) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the VIP did not move off {old} within {timeout:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After the holder's container was killed: time from `t0` until a
    /// live vipd holds the VIP again: another server's, or the old node's
    /// restarted container (the kubelet may restart it before its Lease
    /// expires: it then renews the Lease it still holds).
    async fn wait_led_again(
        &self,
        old: usize,
        killed: i32,
        killed_at: i64,
        t0: Instant,
    ) -> Result<Duration> {
        use k8s_openapi::api::coordination::v1::Lease;
        let leases: Api<Lease> = Api::namespaced(self.env.admin().await, "vipd-system");
        let old_name = self.nodes[old].name.clone();
        let timeout = Duration::from_secs(30);
        loop {
            let h = self.holders(vip()).await;
            if h.iter().any(|n| *n != old_name) {
                return Ok(t0.elapsed());
            }
            let restarted = vipd_container_pid(&self.nodes[old]).is_ok_and(|p| p != killed);
            if restarted && h == [old_name.clone()] {
                let renewed = leases.get("plndr-cp-lock").await.ok().and_then(|l| {
                    let spec = l.spec?;
                    (spec.holder_identity.as_deref() == Some(old_name.as_str()))
                        .then_some(spec.renew_time?.0.as_millisecond())
                });
                if renewed.is_some_and(|t| t > killed_at) {
                    return Ok(t0.elapsed());
                }
            }
            if t0.elapsed() > timeout {
                bail!("no live vipd holds the VIP {timeout:?} after {old_name}'s container was killed\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The container ID node `i`'s mirror pod reports.
    async fn container_id(&self, i: usize) -> Option<String> {
        let name = format!("vipd-{}", self.nodes[i].name);
        self.pods("kube-system", &name)
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.status?.container_statuses?.first()?.container_id.clone())
    }

    async fn mirror_hash(&self, i: usize) -> Option<String> {
        let name = format!("vipd-{}", self.nodes[i].name);
        self.pods("kube-system", &name)
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|p| {
                p.metadata
                    .annotations?
                    .get("kubernetes.io/config.hash")
                    .cloned()
            })
    }

    /// Waits until node `i`'s mirror pod is a new one (another config hash)
    /// and Ready.
    async fn wait_replaced(
        &self,
        i: usize,
        before: Option<String>,
        timeout: Duration,
    ) -> Result<()> {
        let name = format!("vipd-{}", self.nodes[i].name);
        let t0 = Instant::now();
        loop {
            let ps = self.pods("kube-system", &name).await;
            let p = ps
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name.as_str()));
            let hash = p.and_then(|p| {
                p.metadata
                    .annotations
                    .as_ref()?
                    .get("kubernetes.io/config.hash")
                    .cloned()
            });
            if hash.is_some() && hash != before && p.is_some_and(ready) {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!("{name} not replaced after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until no pod of `prefix` is left and nobody holds the VIP.
    pub async fn wait_pods_gone(
        &self,
        namespace: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<()> {
        let t0 = Instant::now();
        while !self.pods(namespace, prefix).await.is_empty()
            || !self.holders(vip()).await.is_empty()
        {
            if t0.elapsed() > timeout {
                bail!("{namespace}/{prefix}* still there after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The kubelet has stopped the containers once their mirror pods go.
        Ok(())
    }
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The disruptions of the pod HA scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodScenario {
    /// Static pod files copied in (after none were there) until the VIP is held.
    PodStart,
    /// The holder's vipd container SIGKILLed.
    ContainerKilled,
    /// The holder's vipd manager SIGKILLed inside its container, as a crash
    /// or an OOM kill of that process alone: its guardian must outlive it.
    ManagerKilled,
    /// The holder's node dies: every process (kubelet, containerd, shims,
    /// containers) killed, its link down; then it boots again.
    NodeDeath,
    /// Each server's static pod file edited to a new image tag in turn.
    RollingUpdate,
}

impl PodScenario {
    pub const ALL: [PodScenario; 5] = [
        PodScenario::PodStart,
        PodScenario::ContainerKilled,
        PodScenario::ManagerKilled,
        PodScenario::NodeDeath,
        PodScenario::RollingUpdate,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            PodScenario::PodStart => "static pod files copied in -> VIP held",
            PodScenario::ContainerKilled => "the holder's vipd container SIGKILLed",
            PodScenario::ManagerKilled => "the holder's vipd manager SIGKILLed in its container",
            PodScenario::NodeDeath => "the holder's node dies (all its processes, link down)",
            PodScenario::RollingUpdate => "rolling update: each static pod file edited in turn",
        }
    }
}

/// What one scenario showed.
#[derive(Debug, Clone)]
pub struct PodOutcome {
    pub scenario: PodScenario,
    /// Disruption -> another server holds the VIP (container killed: or the
    /// restarted container leads again; PodStart: files -> held).
    pub takeover: Option<Duration>,
    /// The longest time the client's connections to VIP:6443 went unanswered.
    pub outage: Duration,
    /// PodStart: files -> every mirror pod Ready.
    pub pods_ready: Option<Duration>,
    /// The most servers seen holding the VIP at once.
    pub max_holders: usize,
    pub old_holder: String,
    /// The last probe was answered.
    pub recovered: bool,
}

pub fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn summary(p: &Pod) -> (String, String, bool) {
    (
        p.metadata.name.clone().unwrap_or_default(),
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default(),
        ready(p),
    )
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes a file as editors and `cp` onto another file system end up
/// doing, in one rename, so the kubelet never reads half a manifest.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    // Hidden: the kubelet skips dot files in its manifest directory.
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("pod.yaml");
    let tmp: PathBuf = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The host PID of node `n`'s vipd container's main process: `vipd
/// manager`, PID 1 of its PID namespace, in the node's network namespace.
fn vipd_container_pid(n: &KubeNode) -> Result<i32> {
    vipd_pid(n, true).with_context(|| format!("{}: no vipd container running", n.name))
}

/// The process that runs node `n`'s vipd manager: its container's first
/// process's child (see vipd's `init`), or the first process itself in an
/// image without that init.
fn vipd_manager_pid(n: &KubeNode) -> Result<i32> {
    vipd_pid(n, false)
        .or_else(|_| vipd_pid(n, true))
        .with_context(|| format!("{}: no vipd manager running", n.name))
}

/// The host pid of the `vipd manager` process in node `n`'s network
/// namespace that is (`first`) or is not its PID namespace's first.
fn vipd_pid(n: &KubeNode, first: bool) -> Result<i32> {
    let netns = std::fs::metadata(n.host.ns.path())?.ino();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(net) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if net.ino() != netns {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.starts_with(b"/usr/local/bin/vipd\0manager") {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let pid1 = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .is_some_and(|l| l.split_whitespace().last() == Some("1"));
        if pid1 == first {
            return Ok(pid);
        }
    }
    bail!("none")
}

/// How many times node `n`'s vipd guardians said their manager was gone,
/// per container log file of the pod.
fn guardian_outlived(n: &KubeNode) -> std::collections::HashMap<std::path::PathBuf, usize> {
    n.container_log_files("kube-system", "vipd")
        .into_iter()
        .map(|(path, text)| (path, text.matches("vipd guard: vipd is gone").count()))
        .collect()
}

/// Whether some log file says it more often than it did in `before`
/// (a file new since then counts from zero). Not a total: the kubelet
/// removes older containers' files meanwhile, and their lines with them.
fn said_again(
    before: &std::collections::HashMap<std::path::PathBuf, usize>,
    now: &std::collections::HashMap<std::path::PathBuf, usize>,
) -> bool {
    now.iter()
        .any(|(path, n)| *n > before.get(path).copied().unwrap_or(0))
}

/// Renders outcomes as the rows BENCHMARKS.md keeps.
pub fn table(outcomes: &[PodOutcome]) -> String {
    let mut out = String::from(
        "| scenario | takeover median | takeover worst | client outage median | client outage worst | max holders | rounds not recovered |\n|---|---|---|---|---|---|---|\n",
    );
    for s in PodScenario::ALL {
        let these: Vec<&PodOutcome> = outcomes.iter().filter(|o| o.scenario == s).collect();
        if these.is_empty() {
            continue;
        }
        let takeover: Vec<Duration> = these.iter().filter_map(|o| o.takeover).collect();
        if s == PodScenario::PodStart {
            let ready: Vec<Duration> = these.iter().filter_map(|o| o.pods_ready).collect();
            let (tm, tw) = crate::failover::median_worst(&takeover);
            let (rm, rw) = crate::failover::median_worst(&ready);
            out.push_str(&format!(
                "| {} (all mirror pods Ready: {rm:.0} ms, worst {rw:.0} ms) | {tm:.0} ms | {tw:.0} ms | | | | |\n",
                s.describe()
            ));
            continue;
        }
        let outage: Vec<Duration> = these.iter().map(|o| o.outage).collect();
        let (tm, tw) = crate::failover::median_worst(&takeover);
        let (om, ow) = crate::failover::median_worst(&outage);
        let holders = these.iter().map(|o| o.max_holders).max().unwrap_or(0);
        let lost = these.iter().filter(|o| !o.recovered).count();
        let takeover = if takeover.is_empty() {
            "| n/a | n/a ".to_string()
        } else {
            format!("| {tm:.0} ms | {tw:.0} ms ")
        };
        out.push_str(&format!(
            "| {} {takeover}| {om:.0} ms | {ow:.0} ms | {holders} | {lost} of {} |\n",
            s.describe(),
            these.len()
        ));
    }
    out
}
