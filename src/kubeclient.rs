//! The Kubernetes client. vipd and vipctl find their credentials as
//! kube-vip does ([`agent_credentials`]); vipctl's `--kubeconfig` comes
//! first.
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
    /// A kubeconfig file, and what named it (`k8s_config_file`,
    /// `--kubeconfig`, or the admin.conf found on the node).
    File { path: PathBuf, from: &'static str },
    /// `$KUBECONFIG`, else `~/.kube/config`.
    Home,
    /// The pod's ServiceAccount.
    InCluster,
}

/// What to tell a user who has no credentials: every way that works.
pub const NO_CREDENTIALS: &str = "no Kubernetes credentials: none of k8s_config_file, /etc/kubernetes/admin.conf, $KUBECONFIG, ~/.kube/config, and not in a pod with a ServiceAccount";

/// kubeadm's admin kubeconfig, which kube-vip reads first: kube-vip's
/// static pods mount the node's kubeconfig there (K3s' docs mount
/// k3s.yaml at this path).
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

/// The agent's credentials, found as kube-vip finds them: `k8s_config_file`
/// when set; else `/etc/kubernetes/admin.conf` when present; else the home
/// kubeconfig when there is one; else in-cluster. So a kube-vip static pod
/// with only its image changed runs vipd with the same credentials.
pub fn agent_credentials(
    explicit: Option<(&Path, &'static str)>,
    admin_conf_exists: bool,
    home_kubeconfig: bool,
) -> Credentials {
    match explicit {
        Some((p, from)) => Credentials::File {
            path: p.to_path_buf(),
            from,
        },
        None if admin_conf_exists => Credentials::File {
            path: PathBuf::from(ADMIN_CONF),
            from: "found on this node",
        },
        None if home_kubeconfig => Credentials::Home,
        None => Credentials::InCluster,
    }
}

/// [`agent_credentials`] on this machine.
pub fn discover_agent_credentials(explicit: Option<(&Path, &'static str)>) -> Credentials {
    let home = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
        || std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".kube/config").is_file())
            .unwrap_or(false);
    agent_credentials(explicit, Path::new(ADMIN_CONF).is_file(), home)
}

/// One client (vipctl): `kubeconfig` (its `--kubeconfig`) when given, else
/// `k8s_config_file` from the environment, else vipd's order; `context`
/// picks a kubeconfig context other than the current one.
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Client> {
    let from_env = std::env::var_os("k8s_config_file")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let explicit = match (kubeconfig, &from_env) {
        (Some(p), _) => Some((p, "from --kubeconfig")),
        (None, Some(p)) => Some((p.as_path(), "from k8s_config_file")),
        (None, None) => None,
    };
    let credentials = discover_agent_credentials(explicit);
    let options = KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    Ok(connect_with(&credentials, &options).await?.main)
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
    connect_with(credentials, &KubeConfigOptions::default()).await
}

async fn connect_with(credentials: &Credentials, options: &KubeConfigOptions) -> Result<Clients> {
    let mut config = match credentials {
        Credentials::File { path, from } => {
            let kc = Kubeconfig::read_from(path).map_err(|e| match e {
                kube::config::KubeconfigError::ReadConfig(io, _) => {
                    anyhow::anyhow!("cannot read kubeconfig {} ({from}): {io}", path.display())
                }
                other => anyhow::Error::new(other)
                    .context(format!("kubeconfig {} ({from})", path.display())),
            })?;
            Config::from_custom_kubeconfig(kc, options)
                .await
                .with_context(|| format!("kubeconfig {} ({from})", path.display()))?
        }
        Credentials::Home => Config::from_kubeconfig(options).await?,
        Credentials::InCluster => {
            Config::incluster().map_err(|_| anyhow::anyhow!(NO_CREDENTIALS))?
        }
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
        // The HTTP/2 connection stays in the pool however long it idles
        // (its keepalive finds it dead): evicted after an idle spell, it
        // lived on beside the new one the next request opened (the
        // elections' connection between two waves of Services).
        .pool_idle_timeout(None)
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
            agent_credentials(Some((given, "from k8s_config_file")), true, true),
            Credentials::File {
                path: given.into(),
                from: "from k8s_config_file"
            }
        );
        assert_eq!(
            agent_credentials(None, true, true),
            Credentials::File {
                path: ADMIN_CONF.into(),
                from: "found on this node"
            }
        );
        assert_eq!(agent_credentials(None, false, true), Credentials::Home);
        assert_eq!(
            agent_credentials(None, false, false),
            Credentials::InCluster
        );
    }
}
