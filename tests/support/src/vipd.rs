//! vipd processes on lab hosts, configured as the manifests configure them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::lab::Host;
use crate::probe::{NodeKernel, Responder};
use crate::process::Proc;
use crate::run_dir;

/// The literal environment of the first container in a manifest file
/// (entries with `valueFrom` are left out: the caller supplies them).
pub fn manifest_env(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let spec = if doc["kind"] == "DaemonSet" {
        &doc["spec"]["template"]["spec"]
    } else {
        &doc["spec"]
    };
    let mut out = Vec::new();
    for e in spec["containers"][0]["env"]
        .as_sequence()
        .context("manifest has no env")?
    {
        if let (Some(n), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
            out.push((n.to_string(), v.to_string()));
        }
    }
    Ok(out)
}

/// A file holding a fresh random Raft secret (`vip_raft_secret_file`),
/// shared by the peers of one lab.
pub fn raft_secret_file(prefix: &str) -> Result<PathBuf> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = run_dir().join(format!("{prefix}-raft-secret"));
    std::fs::write(&path, format!("{text}\n"))?;
    Ok(path)
}

/// Replaces or adds `key=value` in an environment list.
pub fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

/// One lab host running vipd and a TCP responder on the VIP's port.
pub struct VipdNode {
    pub host: Host,
    pub proc: Option<Proc>,
    pub responders: Vec<Responder>,
    pub env: Vec<(String, String)>,
    pub kernel: Option<NodeKernel>,
    bin: PathBuf,
    /// Arguments of the daemon (`manager` for vipd).
    pub args: Vec<String>,
    starts: u32,
    /// Unique in this test process: labs reuse host names, logs must not.
    serial: u32,
}

impl VipdNode {
    pub fn new(host: Host, bin: &Path, env: Vec<(String, String)>, ports: &[u16]) -> VipdNode {
        let responders = ports.iter().map(|p| Responder::start(&host, *p)).collect();
        VipdNode {
            host,
            proc: None,
            responders,
            env,
            kernel: None,
            bin: bin.to_path_buf(),
            args: vec!["manager".to_string()],
            starts: 0,
            serial: {
                static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.host.name
    }

    pub fn log_path(&self) -> PathBuf {
        run_dir().join("logs").join(format!(
            "{}-{}-{}.log",
            self.host.ns.name(),
            self.serial,
            self.starts
        ))
    }

    /// Starts `vipd manager` with this node's environment.
    pub fn start(&mut self) -> Result<()> {
        self.starts += 1;
        let log = self.log_path();
        let p = self
            .host
            .spawn(&self.host.name, &self.bin, &self.args, &self.env, &log)?;
        self.proc = Some(p);
        Ok(())
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<i32> {
        let Some(mut p) = self.proc.take() else {
            bail!("{} not running", self.name())
        };
        p.signal(Signal::SIGTERM);
        match p.wait_exit(timeout) {
            Some(code) => Ok(code),
            None => bail!(
                "{} did not exit within {timeout:?} of SIGTERM:\n{}",
                self.name(),
                p.log_tail(30)
            ),
        }
    }

    /// Waits until the current log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if text.contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// [`VipdNode::wait_log`] for async code (does not block its thread).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if text.contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The last lines of the current log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::process::tail(&self.log_path(), n)
    }

    /// Whether the kernel of this node has `ip` (netlink; call in a runtime).
    pub async fn holds(&mut self, ip: IpAddr) -> bool {
        if self.kernel.is_none() {
            self.kernel = Some(NodeKernel::open(&self.host));
        }
        self.kernel.as_ref().expect("opened").holds(ip).await
    }
}

/// GET `path` from the vipd status port (2112) on `host`: the body, when it
/// answered 200 within 2 s.
pub async fn status_get(host: std::net::Ipv4Addr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect((host, 2112)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

impl VipdNode {
    /// This vipd's `/status` document, when it answers.
    pub async fn status_doc(&self) -> Option<serde_json::Value> {
        let body = status_get(self.host.v4, "/status").await?;
        serde_json::from_str(&body).ok()
    }
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for VipdNode {
    fn drop(&mut self) {
        // Processes and sockets first, then the host (a field, dropped last).
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.responders.clear();
        self.kernel.take();
    }
}

/// What `vipctl status -o json` printed.
pub struct VipctlStatus<T> {
    /// Its exit code (0: nothing wrong).
    pub code: Option<i32>,
    /// The report, when stdout held one.
    pub report: Option<T>,
    /// stdout and stderr, for assertion messages.
    pub output: String,
}

/// Runs `vipctl status --kubeconfig <kubeconfig> <args> -o json` in the
/// namespace `ns` and parses its report as `T` (vipd's `Report`).
pub fn vipctl_status<T: serde::de::DeserializeOwned>(
    ns: &crate::netns::Netns,
    vipctl: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> VipctlStatus<T> {
    let out = ns
        .command(vipctl.to_str().expect("utf-8"))
        .args([
            "status",
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
        ])
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("vipctl runs");
    VipctlStatus {
        code: out.status.code(),
        report: serde_json::from_slice(&out.stdout).ok(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
