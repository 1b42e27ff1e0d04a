//! One real kube-apiserver (with its etcd) per test binary.
//!
//! [`env`] starts it on first use, inside a lab: a switch namespace with a
//! bridge, an `api` host at 192.0.2.2 running the server, and a `client` host
//! at 192.0.2.3 whose tokio runtime runs the tests' futures. Node hosts a
//! test adds to [`Env::lab`] reach the server at `https://192.0.2.2:6443`.
//! Everything is torn down when the test binary exits.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::lab::{Host, Lab};
use crate::netns::{block_on_in, kill_all_in, reap_leftovers};
use crate::{run_dir, run_prefix, workspace_root};

/// Host numbers on the lab segment for the shared hosts.
pub const API_HOST: u8 = 2;
pub const CLIENT_HOST: u8 = 3;
pub const API_PORT: u16 = 6443;

/// The per-binary test environment.
pub struct Env {
    pub lab: Lab,
    pub api_host: Host,
    pub client: Host,
    rt: tokio::runtime::Runtime,
    server: String,
    admin_kubeconfig: PathBuf,
    data_dir: PathBuf,
    lab_lock: Mutex<()>,
    counter: AtomicU32,
    /// kube-controller-manager and kube-scheduler, when asked for.
    controllers: Mutex<Vec<crate::process::Proc>>,
    pub with_controllers: bool,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The Service ranges of the environment with real nodes: documentation
/// ranges, since kube-proxy makes them real inside the lab (K3s' default
/// 10.43.0.0/16 stays a name in the other environments, never routed).
pub const SERVICE_CIDRS_WITH_NODES: [&str; 2] = ["203.0.113.0/26", "2001:db8:43::/112"];

/// The environment of this test binary, started on first use: the API
/// server alone.
pub fn env() -> &'static Env {
    env_with(false)
}

/// The environment with kube-controller-manager and kube-scheduler beside
/// the API server (and ServiceAccount admission on), for tests that run
/// real kubelets: DaemonSets are scheduled, pods get projected tokens. One
/// kind per test binary.
pub fn env_with_controllers() -> &'static Env {
    env_with(true)
}

fn env_with(controllers: bool) -> &'static Env {
    let env = ENV.get_or_init(|| {
        let env = Env::start(controllers).unwrap_or_else(|e| panic!("test environment: {e:#}"));
        // Statics are never dropped: tear down at process exit instead.
        extern "C" fn teardown() {
            if let Some(env) = ENV.get() {
                env.teardown();
            }
        }
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(teardown) };
        env
    });
    assert_eq!(
        env.with_controllers, controllers,
        "one kind of test environment per test binary"
    );
    env
}

/// kube-controller-manager and kube-scheduler on the API host, with the
/// admin credentials (they reach the server on its own address).
fn start_controllers(
    api_host: &Host,
    kubeconfig: &Path,
    data_dir: &Path,
) -> Result<Vec<crate::process::Proc>> {
    let bin = crate::nodes::nodes_bin_dir()?;
    let kc = kubeconfig.to_str().expect("utf-8");
    let pki = data_dir.join("pki");
    let logs = run_dir().join("logs");
    let kcm_args = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--leader-elect=false".to_string(),
        "--use-service-account-credentials=false".to_string(),
        format!("--root-ca-file={}", pki.join("ca.crt").display()),
        format!(
            "--service-account-private-key-file={}",
            pki.join("sa.key").display()
        ),
        "--controllers=*".to_string(),
        "--node-monitor-grace-period=20s".to_string(),
        "--v=1".to_string(),
    ];
    let sched_args = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--leader-elect=false".to_string(),
        "--v=1".to_string(),
    ];
    let kcm = api_host.spawn(
        "kube-controller-manager",
        &bin.join("kube-controller-manager"),
        &kcm_args,
        &[],
        &logs.join("kube-controller-manager.log"),
    )?;
    let sched = api_host.spawn(
        "kube-scheduler",
        &bin.join("kube-scheduler"),
        &sched_args,
        &[],
        &logs.join("kube-scheduler.log"),
    )?;
    Ok(vec![kcm, sched])
}

/// The directory holding `kube-harness` and `kubectl`, built if stale.
pub fn harness_bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let script = workspace_root().join("scripts/harness.sh");
    let out = Command::new(&script)
        .arg("build")
        .output()
        .context("run scripts/harness.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/harness.sh build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    Ok(DIR.get_or_init(|| dir).clone())
}

impl Env {
    fn start(with_controllers: bool) -> Result<Env> {
        reap_leftovers();
        let bin = harness_bin_dir()?;
        let lab = Lab::new(&run_prefix())?;
        let api_host = lab.add_host("api", API_HOST)?;
        let client = lab.add_host("client", CLIENT_HOST)?;
        let data_dir = run_dir().join("apiserver");
        let admin_kubeconfig = run_dir().join("admin.kubeconfig");
        let listen = format!("{}:{API_PORT}", api_host.v4);
        let out = api_host
            .ns
            .command(bin.join("kube-harness").to_str().expect("utf-8"))
            .args([
                "start",
                "--dir",
                data_dir.to_str().expect("utf-8"),
                "--listen",
                &listen,
            ])
            .args(["--kubeconfig", admin_kubeconfig.to_str().expect("utf-8")])
            .arg(format!("--service-account-admission={with_controllers}"))
            .args(if with_controllers {
                vec![
                    "--service-cidr".to_string(),
                    SERVICE_CIDRS_WITH_NODES.join(","),
                ]
            } else {
                Vec::new()
            })
            .output()?;
        if !out.status.success() {
            bail!(
                "kube-harness start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let server = String::from_utf8(out.stdout)?.trim().to_string();
        let rt = client.ns.runtime(2)?;
        let controllers = if with_controllers {
            start_controllers(&api_host, &admin_kubeconfig, &data_dir)?
        } else {
            Vec::new()
        };
        Ok(Env {
            controllers: Mutex::new(controllers),
            with_controllers,
            lab,
            api_host,
            client,
            rt,
            server,
            admin_kubeconfig,
            data_dir,
            lab_lock: Mutex::new(()),
            counter: AtomicU32::new(0),
        })
    }

    fn teardown(&self) {
        for p in self
            .controllers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            p.kill();
        }
        let bin = harness_bin_dir().map(|d| d.join("kube-harness"));
        if let Ok(bin) = bin {
            let _ = Command::new(bin)
                .args(["stop", "--dir", self.data_dir.to_str().unwrap_or("")])
                .output();
        }
        for ns in [self.client.ns.name(), self.api_host.ns.name()] {
            kill_all_in(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}sw", self.lab.prefix())])
            .output();
    }

    /// Runs a test body on the client host's runtime and waits for it.
    pub fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        block_on_in(&self.rt, fut)
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// Lab tests that add hosts take this lock: they share one segment and
    /// its addresses, and their timings should not compete for CPU.
    pub fn lab_lock(&self) -> MutexGuard<'_, ()> {
        self.lab_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `https://192.0.2.2:6443`.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn api_address(&self) -> IpAddr {
        IpAddr::V4(self.api_host.v4)
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A unique name for this process, e.g. for a test's namespace.
    pub fn unique(&self, tag: &str) -> String {
        format!("{tag}-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// An admin client (`system:masters`).
    pub async fn admin(&self) -> Client {
        client_from_kubeconfig(&self.admin_kubeconfig)
            .await
            .expect("admin client")
    }

    /// Creates a fresh Kubernetes namespace for one test and returns its name.
    pub async fn namespace(&self, tag: &str) -> String {
        let name = self.unique(&format!("t-{tag}"));
        let api: Api<Namespace> = Api::all(self.admin().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name }
        }))
        .expect("namespace object");
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        name
    }

    /// Writes a kubeconfig that authenticates as ServiceAccount `ns/sa`
    /// (created if missing) with a token from the TokenRequest API, and
    /// returns its path. RBAC for the account is the caller's business.
    pub async fn service_account_kubeconfig(&self, ns: &str, sa: &str) -> Result<PathBuf> {
        let admin = self.admin().await;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, ns);
        if sas.get_opt(sa).await?.is_none() {
            let obj: ServiceAccount =
                serde_json::from_value(serde_json::json!({ "metadata": { "name": sa } }))?;
            sas.create(&PostParams::default(), &obj).await?;
        }
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tr = sas
            .create_token_request(sa, &PostParams::default(), &req)
            .await?;
        let token = tr
            .status
            .and_then(|s| s.token)
            .context("TokenRequest answered without a token")?;
        let path = run_dir().join(format!("sa-{ns}-{sa}.kubeconfig"));
        write_token_kubeconfig(&self.admin_kubeconfig, &path, &token)?;
        Ok(path)
    }

    /// Runs `kubectl ARGS` as admin from the client host; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let bin = harness_bin_dir()?.join("kubectl");
        let out = self
            .client
            .ns
            .command(bin.to_str().expect("utf-8"))
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f` of a workspace file, once per test binary.
    pub fn apply_once(&self, relative: &str) -> Result<()> {
        static APPLIED: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let mut done = APPLIED.lock().unwrap_or_else(|p| p.into_inner());
        if done.iter().any(|d| d == relative) {
            return Ok(());
        }
        let path = workspace_root().join(relative);
        self.kubectl(&["apply", "-f", path.to_str().expect("utf-8")])?;
        done.push(relative.to_string());
        Ok(())
    }

    /// A client for ServiceAccount `ns/sa` (see [`Env::service_account_kubeconfig`]).
    pub async fn service_account(&self, ns: &str, sa: &str) -> Result<Client> {
        client_from_kubeconfig(&self.service_account_kubeconfig(ns, sa).await?).await
    }
}

/// Builds a client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Copies `admin`'s kubeconfig to `out` with another bearer token.
pub fn write_token_kubeconfig(admin: &Path, out: &Path, token: &str) -> Result<()> {
    let text = std::fs::read_to_string(admin)?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    doc["users"][0]["name"] = "token".into();
    doc["users"][0]["user"] = serde_yaml::to_value(serde_json::json!({ "token": token }))?;
    doc["contexts"][0]["context"]["user"] = "token".into();
    std::fs::write(out, serde_yaml::to_string(&doc)?)?;
    Ok(())
}

/// The lab's client address, for tests that need to name it.
pub fn client_v4() -> Ipv4Addr {
    crate::lab::host_v4(CLIENT_HOST)
}

/// The API server's own count of requests (`apiserver_request_total`),
/// summed by (resource, subresource, verb), for the resources `keep`
/// accepts.
pub async fn request_counts(
    admin: &Client,
    keep: impl Fn(&str) -> bool,
) -> Result<std::collections::BTreeMap<(String, String, String), f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = admin.request_text(req).await?;
    let label = |line: &str, name: &str| {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        if !line.starts_with("apiserver_request_total{") {
            continue;
        }
        let resource = label(line, "resource");
        if !keep(&resource) {
            continue;
        }
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let key = (resource, label(line, "subresource"), label(line, "verb"));
        *counts.entry(key).or_default() += v;
    }
    Ok(counts)
}

/// Whether `verb` (as `apiserver_request_total` counts it) writes.
pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "PUT" | "POST" | "PATCH" | "DELETE" | "APPLY" | "UPDATE" | "CREATE"
    )
}
