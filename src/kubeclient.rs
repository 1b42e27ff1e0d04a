//! The Kubernetes client: kubeconfig from `k8s_config_file`, else the
//! in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client> {
    Ok(connect_to(kubeconfig).await?.0)
}

/// [`connect`], also returning the API server's address when the
/// kubeconfig names it by IP (a VIP or a node's address: never a Service's).
pub async fn connect_to(kubeconfig: Option<&Path>) -> Result<(Client, Option<IpAddr>)> {
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
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, server))
}
