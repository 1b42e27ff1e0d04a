//! The Kubernetes client: kubeconfig from `k8s_config_file`, else the
//! in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`.
//!
//! One HTTP/2 connection carries every request and watch (kube's own
//! client speaks HTTP/1.1: a burst of Lease renewals and Service writes
//! opens a connection each, a hundred per node, each a TLS session kept
//! idle for 90 s). HTTP/2 pings notice a dead API server within 15 s.
//! Elections get a connection of their own: on one connection a Lease
//! renewal's answer would queue behind every watch event sent before it.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client> {
    Ok(connect_to(kubeconfig).await?.main)
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
pub async fn connect_to(kubeconfig: Option<&Path>) -> Result<Clients> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).with_context(|| {
                format!("invalid configuration: k8s_config_file={:?}: cannot read kubeconfig", path.display())
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid configuration: k8s_config_file={:?}", path.display()))?
        }
        None => match Config::incluster() {
            Ok(c) => c,
            Err(_) => Config::from_kubeconfig(&KubeConfigOptions::default()).await.context(
                "no Kubernetes credentials: set k8s_config_file, run in a pod, or provide ~/.kube/config",
            )?,
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
