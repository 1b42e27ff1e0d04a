//! Real Kubernetes nodes in the lab: a host (network namespace) running
//! containerd and a kubelet, as a K3s server runs them.
//!
//! Each node also gets a mount namespace of its own, in which the host
//! paths a K3s node has are directories of that node only:
//! `/etc/rancher` (k3s.yaml), `/var/lib/rancher` (the static pod directory
//! `k3s/agent/pod-manifests`), `/var/lib/vipd` (Raft's state), `/etc/vipd`
//! (the Raft secret) and the kubelet's and containers' logs. So a manifest
//! that mounts `hostPath: /etc/rancher/k3s/k3s.yaml` reads this node's file,
//! exactly as on a real node, and two lab nodes never share state.
//!
//! Parts: containerd 2 and kubelet 1.36 built by `scripts/nodes.sh`, runc
//! from Debian, the sandbox image built locally (`pause.tar`). Lab-only
//! settings, each for a reason of this machine: cgroup v1 (`failCgroupV1:
//! false`), no CAP_SYS_RESOURCE in the development sandbox
//! (`restrict_oom_score_adj`), a cgroup root per node (several kubelets on
//! one kernel), and an anonymous kubelet API (the API server has no kubelet
//! client certificate).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::Host;
use crate::process::Proc;
use crate::{run_dir, workspace_root};

/// The sandbox image every node's containerd pins (see scripts/nodes.sh).
pub const PAUSE_IMAGE: &str = "vipd.dev/lab/pause:1";

/// Host paths a K3s node has, each bound to a directory of the node's own.
const NODE_PATHS: &[&str] = &[
    "/etc/rancher",
    "/var/lib/rancher",
    "/var/lib/vipd",
    "/etc/vipd",
    "/var/log/pods",
    "/var/log/containers",
];

/// The static pod directory of a K3s node (inside its mount namespace).
pub const K3S_STATIC_PODS: &str = "/var/lib/rancher/k3s/agent/pod-manifests";
/// K3s' admin kubeconfig (inside its mount namespace).
pub const K3S_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

/// Where scripts/nodes.sh put containerd, kubelet & co., built if stale.
pub fn nodes_bin_dir() -> Result<PathBuf> {
    Ok(nodes_dir()?.join("bin"))
}

fn nodes_dir() -> Result<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let out = Command::new(workspace_root().join("scripts/nodes.sh"))
        .arg("build")
        .output()
        .context("run scripts/nodes.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/nodes.sh build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    Ok(DIR.get_or_init(|| dir).clone())
}

/// The vipd image (`scripts/image.sh`), built if missing or older than the
/// vipd binary of this build.
pub fn vipd_image() -> Result<PathBuf> {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = IMAGE.get() {
        return Ok(p.clone());
    }
    let out = Command::new(workspace_root().join("scripts/image.sh"))
        .output()
        .context("run scripts/image.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/image.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .lines()
        .rev()
        .find_map(|l| l.split(" -> ").nth(1))
        .and_then(|r| r.split(" (").next())
        .context("scripts/image.sh did not say where the image is")?;
    Ok(IMAGE.get_or_init(|| PathBuf::from(path)).clone())
}

/// One node: the host, its containerd and kubelet.
pub struct KubeNode {
    pub host: Host,
    pub name: String,
    dir: PathBuf,
    mount_ns: PathBuf,
    cgroup: String,
    bin: PathBuf,
    api_kubeconfig: PathBuf,
    containerd: Option<Proc>,
    kubelet: Option<Proc>,
    proxy: Option<Proc>,
    images: Vec<PathBuf>,
    starts: u32,
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default()
}

fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl KubeNode {
    /// Makes `host` a node named after it: its own mount namespace, a
    /// cgroup, containerd with `images` imported, and a kubelet registered
    /// with the API server of `api_kubeconfig` as this node. `k3s_kubeconfig`
    /// becomes the node's `/etc/rancher/k3s/k3s.yaml`.
    pub fn start(
        host: Host,
        api_kubeconfig: &Path,
        k3s_kubeconfig: &Path,
        images: &[PathBuf],
    ) -> Result<KubeNode> {
        static REAPED: std::sync::Once = std::sync::Once::new();
        REAPED.call_once(reap_leftovers);
        let bin = nodes_bin_dir()?;
        let name = host.name.clone();
        let ns = host.ns.name().to_string();
        let dir = run_dir().join("nodes").join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // The node's own view of the host paths.
        let mount_ns = dir.join("mnt");
        std::fs::write(&mount_ns, b"")?;
        sh(
            "unshare",
            &[
                &format!("--mount={}", mount_ns.display()),
                "--propagation",
                "private",
                "true",
            ],
        )?;
        for p in NODE_PATHS {
            // The mount points must exist on the host; they stay empty there.
            std::fs::create_dir_all(p)?;
            let own = dir.join("root").join(p.trim_start_matches('/'));
            std::fs::create_dir_all(&own)?;
            sh(
                "nsenter",
                &[
                    &format!("--mount={}", mount_ns.display()),
                    "mount",
                    "--bind",
                    own.to_str().expect("utf-8"),
                    p,
                ],
            )?;
        }
        let k3s = dir
            .join("root")
            .join(K3S_KUBECONFIG.trim_start_matches('/'));
        std::fs::create_dir_all(k3s.parent().expect("parent"))?;
        std::fs::copy(k3s_kubeconfig, &k3s)?;
        std::fs::create_dir_all(
            dir.join("root")
                .join(K3S_STATIC_PODS.trim_start_matches('/')),
        )?;
        // A cgroup of its own in every hierarchy (cgroup v1 here).
        let cgroup = format!("vipd-lab-{ns}");
        for h in cgroup_hierarchies() {
            let c = h.join(&cgroup);
            std::fs::create_dir_all(&c)?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                    std::fs::write(c.join(f), v)?;
                }
            }
        }
        let mut node = KubeNode {
            host,
            name,
            dir,
            mount_ns,
            cgroup,
            bin,
            api_kubeconfig: api_kubeconfig.to_path_buf(),
            containerd: None,
            kubelet: None,
            proxy: None,
            images: images.to_vec(),
            starts: 0,
        };
        // A K3s node has a default route; the lab's segment has no
        // router, so the Service range is routed onto the segment instead
        // (kube-proxy rewrites every packet to it before it leaves).
        for cidr in crate::apiserver::SERVICE_CIDRS_WITH_NODES {
            let _ = Command::new("ip")
                .args([
                    "-n",
                    node.host.ns.name(),
                    "route",
                    "replace",
                    cidr,
                    "dev",
                    "eth0",
                ])
                .output();
        }
        node.write_configs()?;
        node.start_runtime()?;
        node.start_kubelet()?;
        node.start_proxy()?;
        Ok(node)
    }

    /// The host path of `path` as this node sees it (one of its own paths).
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.join("root").join(path.trim_start_matches('/'))
    }

    /// The node's K3s static pod directory, on the host.
    pub fn static_pods(&self) -> PathBuf {
        self.path(K3S_STATIC_PODS)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    fn write_configs(&self) -> Result<()> {
        let d = self.dir.display();
        std::fs::create_dir_all(self.dir.join("cni"))?;
        // The pods vipd runs use the host network; CNI is configured only
        // so that the runtime reports its network ready.
        std::fs::write(
            self.dir.join("cni/10-lab.conflist"),
            r#"{ "cniVersion": "1.0.0", "name": "lab", "plugins": [ { "type": "bridge", "bridge": "labcni0", "ipam": { "type": "host-local", "subnet": "203.0.113.128/26" } }, { "type": "loopback" } ] }"#,
        )?;
        std::fs::write(
            self.dir.join("containerd.toml"),
            format!(
                r#"version = 3
root = "{d}/containerd/root"
state = "{d}/containerd/state"

[grpc]
  address = "{d}/containerd/containerd.sock"

[ttrpc]
  address = "{d}/containerd/containerd.sock.ttrpc"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.runtime']
    # The development sandbox has no CAP_SYS_RESOURCE: oom_score_adj can
    # only be raised.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "{d}/cni"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "/usr/sbin/runc"
      SystemdCgroup = false
"#
            ),
        )?;
        std::fs::write(
            self.dir.join("kubelet.yaml"),
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1: Kubernetes 1.35+ refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
failSwapOn: false
containerRuntimeEndpoint: unix://{d}/containerd/containerd.sock
staticPodPath: {K3S_STATIC_PODS}
fileCheckFrequency: 1s
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
podLogsDir: /var/log/pods
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
readOnlyPort: 0
healthzPort: 0
resolvConf: /etc/resolv.conf
evictionHard:
  memory.available: "50Mi"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
localStorageCapacityIsolation: false
shutdownGracePeriod: 0s
"#,
                cgroup = self.cgroup
            ),
        )?;
        Ok(())
    }

    /// Runs `program` in this node's network and mount namespaces.
    fn spawn(&self, what: &str, program: &Path, args: &[String]) -> Result<Proc> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.host.ns.name()))
            .arg(format!("--mount={}", self.mount_ns.display()))
            .arg(program)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin.display()),
            )
            .current_dir(&self.dir);
        let log = self.dir.join(format!("{what}-{}.log", self.starts));
        Proc::spawn(&format!("{}-{what}", self.name), cmd, &log)
    }

    fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--mount={}", self.mount_ns.display()))
            .arg(self.bin.join("ctr"))
            .args([
                "--address",
                self.socket().to_str().expect("utf-8"),
                "-n",
                "k8s.io",
            ])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts containerd and imports the images (the pause image first).
    fn start_runtime(&mut self) -> Result<()> {
        self.starts += 1;
        let config = self.dir.join("containerd.toml");
        let p = self.spawn(
            "containerd",
            &self.bin.join("containerd"),
            &["--config".into(), config.to_str().expect("utf-8").into()],
        )?;
        self.containerd = Some(p);
        let t0 = Instant::now();
        while !self.socket().exists() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("{}: containerd did not start", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Ready when it answers.
        while self.ctr(&["version"]).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("{}: containerd does not answer", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let pause = nodes_dir()?.join("pause.tar");
        let images: Vec<PathBuf> = std::iter::once(pause).chain(self.images.clone()).collect();
        for image in images {
            self.ctr(&["images", "import", image.to_str().expect("utf-8")])
                .with_context(|| format!("{}: import {}", self.name, image.display()))?;
        }
        Ok(())
    }

    fn start_kubelet(&mut self) -> Result<()> {
        let args: Vec<String> = vec![
            format!("--config={}", self.dir.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", self.api_kubeconfig.display()),
            format!("--root-dir={}", self.dir.join("kubelet").display()),
            format!("--cert-dir={}", self.dir.join("kubelet/pki").display()),
            format!("--hostname-override={}", self.name),
            format!("--node-ip={}", self.host.v4),
            "--v=1".into(),
        ];
        let p = self.spawn("kubelet", &self.bin.join("kubelet"), &args)?;
        self.kubelet = Some(p);
        Ok(())
    }

    /// kube-proxy in iptables mode, as K3s runs it: ClusterIPs (the
    /// `kubernetes` Service a pod's in-cluster config names) reach their
    /// endpoints. Left alone: the host-wide conntrack table size and
    /// timeouts (several nodes share one kernel).
    fn start_proxy(&mut self) -> Result<()> {
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", self.api_kubeconfig.display()),
            format!("--hostname-override={}", self.name),
            "--proxy-mode=iptables".into(),
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0s".into(),
            "--conntrack-tcp-timeout-close-wait=0s".into(),
            "--v=1".into(),
        ];
        let p = self.spawn("kube-proxy", &self.bin.join("kube-proxy"), &args)?;
        self.proxy = Some(p);
        Ok(())
    }

    /// Gives an imported image a second name (`ctr images tag`), as a new
    /// version's image would arrive.
    pub fn tag_image(&self, from: &str, to: &str) -> Result<()> {
        self.ctr(&["images", "tag", "--force", from, to])
            .map(|_| ())
    }

    /// Imports another image into this node's containerd.
    pub fn import(&self, image: &Path) -> Result<()> {
        self.ctr(&["images", "import", image.to_str().expect("utf-8")])
            .map(|_| ())
    }

    /// Every process of the node dies at once (kubelet, containerd, the
    /// shims and containers), as when the machine loses power; the network
    /// link goes down with it.
    pub fn die(&mut self) -> Result<()> {
        self.host.link_down()?;
        crate::netns::kill_all_in(self.host.ns.name());
        for p in [
            self.proxy.take(),
            self.kubelet.take(),
            self.containerd.take(),
        ]
        .into_iter()
        .flatten()
        {
            let mut p = p;
            p.kill();
        }
        Ok(())
    }

    /// The node boots again: link up, containerd, kubelet; static pods come
    /// back from the manifest directory, as after a reboot. (Addresses a
    /// dead process left are removed first, as a reboot clears them.)
    pub fn boot(&mut self) -> Result<()> {
        let _ = Command::new("ip")
            .args([
                "-n",
                self.host.ns.name(),
                "addr",
                "flush",
                "dev",
                "eth0",
                "proto",
                "86",
            ])
            .output();
        self.host.link_up()?;
        self.start_runtime()?;
        self.start_kubelet()?;
        self.start_proxy()?;
        Ok(())
    }

    /// The kubelet's log (for failure messages).
    pub fn kubelet_log_tail(&self, n: usize) -> String {
        crate::process::tail(&self.dir.join(format!("kubelet-{}.log", self.starts)), n)
    }

    /// The log of a container of a pod on this node (`/var/log/pods`).
    pub fn container_log(&self, namespace: &str, pod_prefix: &str) -> String {
        self.container_log_files(namespace, pod_prefix)
            .into_iter()
            .map(|(_, text)| text)
            .collect()
    }

    /// Every log file the kubelet keeps for the containers of the pods
    /// whose names start with `pod_prefix`, with its text. The kubelet
    /// removes a dead container's file once a newer one has ended, and an
    /// old pod's directory when it cleans the pod up.
    pub fn container_log_files(
        &self,
        namespace: &str,
        pod_prefix: &str,
    ) -> Vec<(std::path::PathBuf, String)> {
        let root = self.path("/var/log/pods");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&format!("{namespace}_{pod_prefix}")) {
                for c in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                        out.push((f.path(), text));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        crate::netns::kill_all_in(self.host.ns.name());
        for p in [
            self.proxy.take(),
            self.kubelet.take(),
            self.containerd.take(),
        ]
        .into_iter()
        .flatten()
        {
            let mut p = p;
            p.kill();
        }
        // Processes gone: the cgroups can go, deepest first.
        for h in cgroup_hierarchies() {
            let root = h.join(&self.cgroup);
            let mut dirs: Vec<PathBuf> = walk_dirs(&root);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
        let _ = Command::new("umount").arg(&self.mount_ns).output();
    }
}

/// The test process that made a lab name `vt<pid>...`, unless it is alive.
fn dead_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("vt")?;
    let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let pid: u32 = pid.parse().ok()?;
    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// What a killed test run's nodes left behind: processes in their cgroups
/// (containers whose node namespace is gone), the cgroups, and the mount
/// namespace files. Leftovers of live runs are left alone.
pub fn reap_leftovers() {
    for h in cgroup_hierarchies() {
        for e in std::fs::read_dir(&h).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(owner) = name.strip_prefix("vipd-lab-") else {
                continue;
            };
            if dead_owner(owner).is_none() {
                continue;
            }
            let mut dirs = walk_dirs(&e.path());
            for d in &dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let runs = crate::workspace_root().join("target/test-runs");
    for line in mounts.lines() {
        let Some(point) = line.split_whitespace().nth(4) else {
            continue;
        };
        let Ok(rest) = Path::new(point).strip_prefix(&runs) else {
            continue;
        };
        let pid = rest
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().to_string());
        if pid.is_some_and(|p| dead_owner(&format!("vt{p}")).is_some()) && point.ends_with("/mnt") {
            let _ = Command::new("umount").arg(point).output();
        }
    }
}

fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}
