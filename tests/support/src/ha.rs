//! The HA cluster lab: N control-plane servers as K3s runs them with
//! embedded etcd. Each server is a lab host running an etcd member (one etcd
//! cluster over the lab bridge) and a kube-apiserver whose serving
//! certificate also names the VIP (K3s' `--tls-san`), all sharing one CA,
//! service-account key and admin credential; and vipd as its static pod
//! from `manifests/` runs it, talking to the API server on its own node.
//! A client host talks to `https://<VIP>:6443`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use crate::apiserver::{client_from_kubeconfig, harness_bin_dir};
use crate::failover::HostRef;
use crate::lab::{host_v4, Host, Lab};
use crate::process::Proc;
use crate::vipd::{manifest_env, set_env, VipdNode};
use crate::{run_dir, workspace_root};

/// How the control-plane VIP's holder is elected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Lease,
    Raft,
}

/// One control-plane server: its API server (with etcd) and its vipd.
pub struct Server {
    pub vipd: VipdNode,
    pub apiserver: Option<Proc>,
    pub data_dir: PathBuf,
    args: Vec<String>,
    restarts: u32,
}

/// A passing test's etcd data goes with it (about 120 MB per server, most of
/// it preallocated WAL); a failing test's stays for the post-mortem.
impl Drop for Server {
    fn drop(&mut self) {
        drop(self.apiserver.take());
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

impl Server {
    pub fn name(&self) -> &str {
        self.vipd.name()
    }

    pub fn host(&self) -> &Host {
        &self.vipd.host
    }

    fn start_apiserver(&mut self) -> Result<()> {
        self.restarts += 1;
        let bin = harness_bin_dir()?.join("kube-harness");
        let log = run_dir().join("logs").join(format!(
            "{}-apiserver-{}.log",
            self.host().ns.name(),
            self.restarts
        ));
        let p = self
            .vipd
            .host
            .spawn("kube-harness", &bin, &self.args, &[], &log)?;
        self.apiserver = Some(p);
        Ok(())
    }

    /// Graceful stop of the API server (its etcd data stays).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.signal(Signal::SIGTERM);
            if p.wait_exit(Duration::from_secs(20)).is_none() {
                p.kill();
            }
        }
    }
}

pub struct HaCluster {
    pub servers: Vec<Server>,
    pub client: HostRef,
    pub vip: IpAddr,
    pub mode: Mode,
    /// Admin kubeconfig whose server is the VIP, verified against the CA.
    pub vip_kubeconfig: PathBuf,
    pub pki: PathBuf,
    pub lab: Lab,
    pub rt: tokio::runtime::Runtime,
}

/// A kubeconfig with the shared CA and admin token for `server`.
fn kubeconfig_for(pki: &Path, server: &str, out: &Path) -> Result<()> {
    use base64::Engine;
    let ca = std::fs::read_to_string(pki.join("ca.crt"))?;
    let token = std::fs::read_to_string(pki.join("admin.token"))?;
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "c", "cluster": {
            "server": server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca.trim()),
        } }],
        "users": [{ "name": "admin", "user": { "token": token.trim() } }],
        "contexts": [{ "name": "c", "context": { "cluster": "c", "user": "admin" } }],
        "current-context": "c",
    });
    std::fs::write(out, serde_yaml::to_string(&doc)?)?;
    Ok(())
}

impl HaCluster {
    /// Starts `n` servers and waits until the cluster answers on the VIP;
    /// `extra` adds vipd settings (e.g. `svc_enable`). Each server answers
    /// TCP on ports 80 and 443 with its name (a stand-in for Traefik).
    pub fn start(n: usize, mode: Mode, bin: &Path, extra: &[(&str, &str)]) -> Result<HaCluster> {
        let (prefix, lab, client) = Lab::own("h")?;
        let vip: IpAddr = "192.0.2.100".parse()?;
        let pki = run_dir().join(format!("{prefix}-pki"));
        // The shared credentials first, so the servers can start together.
        let harness = harness_bin_dir()?.join("kube-harness");
        let out = std::process::Command::new(&harness)
            .args(["pki", "--pki", pki.to_str().expect("utf-8")])
            .output()?;
        if !out.status.success() {
            bail!("kube-harness pki: {}", String::from_utf8_lossy(&out.stderr));
        }
        let members: Vec<String> = (1..=n)
            .map(|i| format!("n{i}=http://{}:2380", host_v4(10 + i as u8)))
            .collect();
        let members = members.join(",");
        let raft_peers: Vec<String> = (1..=n)
            .map(|i| format!("n{i}={}:7946", host_v4(10 + i as u8)))
            .collect();
        let raft_peers = raft_peers.join(",");

        // vipd as the K3s static pod would run it, but with a kubeconfig for
        // this node's own API server (k3s.yaml points at 127.0.0.1:6443).
        let local_kc = run_dir().join(format!("{prefix}-local.kubeconfig"));
        kubeconfig_for(&pki, "https://127.0.0.1:6443", &local_kc)?;
        let mut base = manifest_env(&workspace_root().join("manifests/k3s/vipd-static-pod.yaml"))?;
        set_env(&mut base, "address", &vip.to_string());
        set_env(&mut base, "vip_interface", "eth0");
        set_env(
            &mut base,
            "k8s_config_file",
            local_kc.to_str().expect("utf-8"),
        );
        if mode == Mode::Raft {
            set_env(&mut base, "vip_leaderelection", "false");
            set_env(&mut base, "vip_raft", "true");
            set_env(&mut base, "vip_raft_peers", &raft_peers);
            let secret = crate::vipd::raft_secret_file(&prefix)?;
            set_env(
                &mut base,
                "vip_raft_secret_file",
                secret.to_str().expect("utf-8"),
            );
        }
        for (k, v) in extra {
            set_env(&mut base, k, v);
        }

        let mut servers = Vec::new();
        for i in 1..=n {
            let name = format!("n{i}");
            let host = lab.add_host(&name, 10 + i as u8)?;
            let data_dir = run_dir().join(format!("{prefix}-{name}-data"));
            let ip = host.v4;
            let args: Vec<String> = [
                "serve",
                "--dir",
                data_dir.to_str().expect("utf-8"),
                "--pki",
                pki.to_str().expect("utf-8"),
                "--listen",
                "0.0.0.0:6443",
                "--advertise",
                &ip.to_string(),
                "--tls-san",
                &vip.to_string(),
                "--etcd-name",
                &name,
                "--etcd-peer-url",
                &format!("http://{ip}:2380"),
                "--etcd-initial-cluster",
                &members,
                "--etcd-client-port",
                "2379",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut env = base.clone();
            set_env(&mut env, "vip_nodename", &name);
            if mode == Mode::Raft {
                let state = run_dir().join(format!("{prefix}-{name}-raft"));
                set_env(
                    &mut env,
                    "vip_raft_state_dir",
                    state.to_str().expect("utf-8"),
                );
            }
            let vipd = VipdNode::new(host, bin, env, &[80, 443]);
            let mut s = Server {
                vipd,
                apiserver: None,
                data_dir,
                args,
                restarts: 0,
            };
            s.start_apiserver()?;
            servers.push(s);
        }
        let rt = client.ns.runtime(2)?;
        let vip_kubeconfig = run_dir().join(format!("{prefix}-vip.kubeconfig"));
        kubeconfig_for(&pki, &format!("https://{vip}:6443"), &vip_kubeconfig)?;
        let mut c = HaCluster {
            servers,
            client: HostRef::Owned(client),
            vip,
            mode,
            vip_kubeconfig,
            pki,
            lab,
            rt,
        };
        for i in 0..n {
            c.wait_apiserver(i, Duration::from_secs(180))?;
        }
        for s in c.servers.iter_mut() {
            s.vipd.start()?;
        }
        c.wait_vip(Duration::from_secs(60))?;
        Ok(c)
    }

    /// A client for server `i`'s own API server (not through the VIP).
    fn direct_kubeconfig(&self, i: usize) -> Result<PathBuf> {
        let p = run_dir().join(format!(
            "{}-direct.kubeconfig",
            self.servers[i].host().ns.name()
        ));
        kubeconfig_for(
            &self.pki,
            &format!("https://{}:6443", self.servers[i].host().v4),
            &p,
        )?;
        Ok(p)
    }

    /// Waits until server `i`'s API server is ready.
    pub fn wait_apiserver(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let kc = self.direct_kubeconfig(i)?;
        let t0 = Instant::now();
        loop {
            let kc2 = kc.clone();
            let ok = crate::netns::block_on_in(&self.rt, async move {
                let Ok(c) = client_from_kubeconfig(&kc2).await else {
                    return false;
                };
                let req = http::Request::get("/readyz")
                    .body(Vec::new())
                    .expect("request");
                matches!(tokio::time::timeout(Duration::from_secs(2), c.request_text(req)).await, Ok(Ok(t)) if t.trim() == "ok")
            });
            if ok {
                return Ok(());
            }
            let name = self.servers[i].name().to_string();
            if let Some(p) = self.servers[i].apiserver.as_mut() {
                if !p.running() {
                    bail!("the API server of {name} exited:\n{}", p.log_tail(30));
                }
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the API server of {} is not ready after {timeout:?}",
                    self.servers[i].name()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until a request through the VIP succeeds.
    pub fn wait_vip(&self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        let kc = self.vip_kubeconfig.clone();
        loop {
            let k = kc.clone();
            let ok = crate::netns::block_on_in(&self.rt, async move { one_request(&k).await });
            if ok {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                let logs: Vec<String> = self
                    .servers
                    .iter()
                    .map(|s| format!("--- {} ---\n{}", s.name(), s.vipd.log_tail(15)))
                    .collect();
                bail!(
                    "no answer on https://{}:6443 after {timeout:?}\n{}",
                    self.vip,
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server whose kernel holds the VIP (exactly one), if any.
    pub fn holder(&self) -> Option<usize> {
        let vip = self.vip;
        let mut found = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.host()
                .addresses()
                .map(|a| a.contains(&vip))
                .unwrap_or(false)
            {
                found.push(i);
            }
        }
        (found.len() == 1).then(|| found[0])
    }

    /// The name of [`HaCluster::holder`].
    pub fn holder_name(&self) -> Option<String> {
        self.holder().map(|i| self.servers[i].name().to_string())
    }

    /// Restarts server `i`'s API server (and etcd member) after a stop.
    pub fn start_apiserver(&mut self, i: usize) -> Result<()> {
        self.servers[i].start_apiserver()
    }
}

/// One API request through `kubeconfig` with a 1 s deadline: success?
pub async fn one_request(kubeconfig: &Path) -> bool {
    match client_from_kubeconfig(kubeconfig).await {
        Ok(c) => get_default(&c).await,
        Err(_) => false,
    }
}

/// GET the `default` Namespace with a 1 s deadline: success?
async fn get_default(c: &kube::Client) -> bool {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(c.clone());
    matches!(
        tokio::time::timeout(Duration::from_secs(1), api.get("default")).await,
        Ok(Ok(_))
    )
}

/// `kubectl --server <server> get --raw /readyz` (1 s timeout) from the
/// namespace `ns`: did it succeed?
fn kubectl_readyz(ns: &str, kubeconfig: &Path, server: &str) -> bool {
    let Ok(bin) = harness_bin_dir().map(|d| d.join("kubectl")) else {
        return false;
    };
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, bin.to_str().expect("utf-8")])
        .args(["--kubeconfig", kubeconfig.to_str().expect("utf-8")])
        .args(["--server", server, "--request-timeout", "1s"])
        .args(["get", "--raw", "/readyz"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What happens to the VIP holder (or to every server, for rolling restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaScenario {
    /// The holder's whole node dies: every process killed, its link down.
    NodeDeath,
    /// Only the holder's vipd is killed.
    VipdKill,
    /// The holder's vipd is stopped gracefully (SIGTERM, as an update does).
    VipdTerm,
    /// Every server restarted one by one (vipd and API server stopped
    /// gracefully, started again), as in an upgrade.
    RollingRestart,
}

/// What the client saw.
#[derive(Debug, Clone)]
pub struct HaOutcome {
    pub scenario: HaScenario,
    /// The longest time with no successful API request through the VIP.
    pub longest_gap: Duration,
    pub requests: usize,
    pub failed_requests: usize,
    pub kubectl_runs: usize,
    pub kubectl_failures: usize,
    /// The last request succeeded (requests never stop for good).
    pub recovered: bool,
    pub old_holder: String,
    pub new_holder: Option<String>,
    /// The etcd leader before the scenario (its server's name): when a
    /// node's death takes etcd's leader too, the API stalls until etcd
    /// elects another (its election timeout, 1 s by default), whatever
    /// the VIP does.
    pub etcd_leader: Option<String>,
}

/// Requests through the VIP every 50 ms (a kube client, kept across
/// requests and rebuilt after a failure, as client-go reconnects), and
/// `kubectl --server https://VIP:6443` once a second.
struct ApiProber {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, bool)>>,
    kubectl: std::thread::JoinHandle<(usize, usize)>,
}

impl ApiProber {
    fn start(c: &HaCluster) -> ApiProber {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let kc = c.vip_kubeconfig.clone();
        let s = stop.clone();
        let task = c.rt.spawn(async move {
            let mut out = Vec::new();
            let mut client: Option<kube::Client> = None;
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                if client.is_none() {
                    client = client_from_kubeconfig(&kc).await.ok();
                }
                let ok = match &client {
                    Some(cl) => get_default(cl).await,
                    None => false,
                };
                if !ok {
                    client = None;
                }
                out.push((at, ok));
                if let Some(rest) = Duration::from_millis(50).checked_sub(at.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
            out
        });
        let s = stop.clone();
        let ns = c.client.ns.name().to_string();
        let kc = c.vip_kubeconfig.clone();
        let server = format!("https://{}:6443", c.vip);
        let kubectl = std::thread::spawn(move || {
            let (mut runs, mut failures) = (0, 0);
            while !s.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let ok = kubectl_readyz(&ns, &kc, &server);
                runs += 1;
                if !ok {
                    failures += 1;
                }
                if let Some(rest) = Duration::from_secs(1).checked_sub(t0.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            (runs, failures)
        });
        ApiProber {
            stop,
            task,
            kubectl,
        }
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> (Vec<(Instant, bool)>, (usize, usize)) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = rt.block_on(self.task).expect("prober task"); // a JoinHandle: runs on the runtime
        let k = self.kubectl.join().expect("kubectl thread");
        (samples, k)
    }
}

/// The longest time between two successful requests.
fn longest_gap(samples: &[(Instant, bool)]) -> Duration {
    let mut worst = Duration::ZERO;
    let mut last_ok: Option<Instant> = None;
    for (at, ok) in samples {
        if *ok {
            if let Some(prev) = last_ok {
                worst = worst.max(*at - prev);
            }
            last_ok = Some(*at);
        }
    }
    worst
}

impl HaCluster {
    fn wait_holder(&mut self, timeout: Duration) -> Result<usize> {
        let t0 = Instant::now();
        loop {
            if let Some(h) = self.holder() {
                return Ok(h);
            }
            if t0.elapsed() > timeout {
                bail!("no single VIP holder after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until another server than `old` holds the VIP and requests
    /// through it succeed, then a little longer (the client settles).
    fn wait_moved(&mut self, old: usize, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if self.holder().is_some_and(|h| h != old) {
                self.wait_vip(timeout.saturating_sub(t0.elapsed()))?;
                std::thread::sleep(Duration::from_secs(1));
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the VIP did not move off {} within {timeout:?}",
                    self.servers[old].name()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server whose etcd member leads, asked through etcd's HTTP
    /// gateway (`/v3/maintenance/status`) on each server.
    pub fn etcd_leader(&self) -> Option<String> {
        use std::io::{Read, Write};
        for s in &self.servers {
            let answer = s.host().ns.run(|| -> Option<String> {
                let mut c = std::net::TcpStream::connect_timeout(
                    &"127.0.0.1:2379".parse().ok()?,
                    Duration::from_millis(500),
                )
                .ok()?;
                c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                let body = "{}";
                write!(
                    c,
                    "POST /v3/maintenance/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .ok()?;
                let mut out = String::new();
                let _ = c.read_to_string(&mut out);
                Some(out)
            });
            let Some(text) = answer else { continue };
            let Some(json) = text.split("\r\n\r\n").nth(1) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                continue;
            };
            if v["header"]["member_id"].as_str().is_some()
                && v["header"]["member_id"] == v["leader"]
            {
                return Some(s.name().to_string());
            }
        }
        None
    }

    /// Runs a scenario while probing, restores the cluster, and reports.
    pub fn run_scenario(&mut self, scenario: HaScenario) -> Result<HaOutcome> {
        let etcd_leader = self.etcd_leader();
        let old = self.wait_holder(Duration::from_secs(30))?;
        let old_name = self.servers[old].name().to_string();
        let prober = ApiProber::start(self);
        std::thread::sleep(Duration::from_millis(500));
        match scenario {
            HaScenario::NodeDeath => {
                crate::netns::kill_all_in(self.servers[old].host().ns.name());
                self.servers[old].host().link_down()?;
                self.wait_moved(old, Duration::from_secs(30))?;
            }
            HaScenario::VipdKill => {
                self.servers[old].vipd.kill();
                self.wait_moved(old, Duration::from_secs(30))?;
            }
            HaScenario::VipdTerm => {
                self.servers[old].vipd.terminate(Duration::from_secs(10))?;
                self.wait_moved(old, Duration::from_secs(30))?;
            }
            HaScenario::RollingRestart => {
                for i in 0..self.servers.len() {
                    let _ = self.servers[i].vipd.terminate(Duration::from_secs(10));
                    self.servers[i].stop_apiserver();
                    self.start_apiserver(i)?;
                    self.wait_apiserver(i, Duration::from_secs(120))?;
                    self.servers[i].vipd.start()?;
                    self.wait_vip(Duration::from_secs(30))?;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        let (samples, (kubectl_runs, kubectl_failures)) = prober.finish(&self.rt);
        let new_holder = self.holder_name();
        let outcome = HaOutcome {
            scenario,
            longest_gap: longest_gap(&samples),
            requests: samples.len(),
            failed_requests: samples.iter().filter(|(_, ok)| !ok).count(),
            kubectl_runs,
            kubectl_failures,
            recovered: samples.last().is_some_and(|(_, ok)| *ok),
            old_holder: old_name,
            new_holder,
            etcd_leader,
        };
        // Bring the cluster back to three healthy servers.
        match scenario {
            HaScenario::NodeDeath => {
                self.servers[old].host().link_up()?;
                self.servers[old].vipd.kill();
                self.start_apiserver(old)?;
                self.wait_apiserver(old, Duration::from_secs(120))?;
                self.servers[old].vipd.start()?;
            }
            HaScenario::VipdKill | HaScenario::VipdTerm => self.servers[old].vipd.start()?,
            HaScenario::RollingRestart => {}
        }
        self.wait_vip(Duration::from_secs(30))?;
        self.wait_holder(Duration::from_secs(30))?;
        Ok(outcome)
    }
}
