//! The Kubernetes client. The agent finds its credentials as kube-vip
//! does ([`agent_credentials`]); vipctl as kubectl does.
//!
//! One HTTP/2 connection carries every request and watch (kube's own
//! client speaks HTTP/1.1: a burst of Lease renewals and Service writes
//! opens a connection each, a hundred per node, each a TLS session kept
//! idle for 90 s). HTTP/2 pings notice a dead API server within 15 s.
//! Elections get a connection of their own: on one connection a Lease
//! renewal's answer would queue behind every watch event sent before it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A kubeconfig file (`k8s_config_file`, or kubeadm's admin.conf).
    File(PathBuf),
    /// `$KUBECONFIG`, else `~/.kube/config`.
    Home,
    /// The pod's ServiceAccount.
    InCluster,
    /// A kubeconfig if there is one, else in-cluster (kubectl's order: vipctl).
    Infer,
}

/// kubeadm's admin kubeconfig, which kube-vip reads first: kube-vip's
/// static pods mount the node's kubeconfig there (K3s' docs mount
/// k3s.yaml at this path).
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

/// The agent's credentials, found as kube-vip finds them: `k8s_config_file`
/// when set; else `/etc/kubernetes/admin.conf` when present; else the home
/// kubeconfig when there is one; else in-cluster. So a kube-vip static pod
/// with only its image changed runs vipd with the same credentials.
pub fn agent_credentials(
    explicit: Option<&Path>,
    admin_conf_exists: bool,
    home_kubeconfig: bool,
) -> Credentials {
    match explicit {
        Some(p) => Credentials::File(p.to_path_buf()),
        None if admin_conf_exists => Credentials::File(PathBuf::from(ADMIN_CONF)),
        None if home_kubeconfig => Credentials::Home,
        None => Credentials::InCluster,
    }
}

/// [`agent_credentials`] on this machine.
pub fn discover_agent_credentials(explicit: Option<&Path>) -> Credentials {
    let home = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
        || std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".kube/config").is_file())
            .unwrap_or(false);
    agent_credentials(explicit, Path::new(ADMIN_CONF).is_file(), home)
}

/// One client (vipctl): `kubeconfig` when given, else kubectl's order.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client> {
    let credentials = match kubeconfig {
        Some(p) => Credentials::File(p.to_path_buf()),
        None => Credentials::Infer,
    };
    Ok(connect_to(&credentials).await?.main)
}

/// vipd's API clients: two connections, so that an election's renewal
/// never waits behind megabytes of watch events on a busy connection.
#[derive(Clone)]
pub struct Clients {
    /// Watches, Service writes, Events, instance records.
    pub main: Client,
    /// Lease elections only.
    pub elections: Client,
    /// The API server's address when the kubeconfig names it by IP (a VIP
    /// or a node's address: never a Service's).
    pub server: Option<IpAddr>,
}

/// Connects as [`connect`] does, with a second connection for elections.
pub async fn connect_to(credentials: &Credentials) -> Result<Clients> {
    let home = || async {
        Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .context("no Kubernetes credentials: set k8s_config_file, run in a pod, or provide ~/.kube/config")
    };
    let mut config = match credentials {
        Credentials::File(path) => {
            let kc = Kubeconfig::read_from(path).with_context(|| {
                format!("invalid configuration: k8s_config_file={:?}: cannot read kubeconfig", path.display())
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid configuration: k8s_config_file={:?}", path.display()))?
        }
        Credentials::Home => home().await?,
        Credentials::InCluster => Config::incluster().context(
            "no Kubernetes credentials: no k8s_config_file, no /etc/kubernetes/admin.conf, no ~/.kube/config, and not in a pod",
        )?,
        Credentials::Infer => match home().await {
            Ok(c) => c,
            Err(e) => Config::incluster().map_err(|_| e)?,
        },
    };
    // Fail fast on a dead API server; elections retry on their own schedule.
    config.connect_timeout = Some(Duration::from_secs(2));
    let server = config
        .cluster_url
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse().ok());
    let elections = build(config.clone()).context("building the Kubernetes client")?;
    let main = build(config).context("building the Kubernetes client")?;
    Ok(Clients {
        main,
        elections,
        server,
    })
}

/// kube's client stack over a hyper client that negotiates HTTP/2.
fn build(config: kube::Config) -> Result<Client> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use kube::client::ConfigExt;
    use tower::ServiceBuilder;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| anyhow::anyhow!("tls-server-name {name:?}: {e}"))?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = tls.enable_http1().enable_http2().wrap_connector(http);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// Creates vipd's namespace when it is missing and these credentials may
/// (a static pod with the admin kubeconfig starts before anything is
/// applied); otherwise says what to do. Never fatal: the elections retry.
pub async fn ensure_namespace(client: &Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(name).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let mut ns = Namespace::default();
            ns.metadata.name = Some(name.to_string());
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => tracing::info!(namespace = name, "created vipd's namespace"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    tracing::warn!(namespace = name, error = %e, "vipd's namespace does not exist and cannot be created: apply manifests/rbac.yaml")
                }
            }
        }
        // A ServiceAccount may not read Namespaces: rbac.yaml made it.
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        Err(e) => tracing::debug!(namespace = name, error = %e, "cannot check vipd's namespace"),
    }
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn the_agent_finds_credentials_in_kube_vips_order() {
        let given = Path::new("/etc/rancher/k3s/k3s.yaml");
        assert_eq!(
            agent_credentials(Some(given), true, true),
            Credentials::File(given.into())
        );
        assert_eq!(
            agent_credentials(None, true, true),
            Credentials::File(ADMIN_CONF.into())
        );
        assert_eq!(agent_credentials(None, false, true), Credentials::Home);
        assert_eq!(
            agent_credentials(None, false, false),
            Credentials::InCluster
        );
    }
}
