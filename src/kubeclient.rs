//! The Kubernetes client: kubeconfig from `k8s_config_file`, else the
//! in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client> {
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
    Client::try_from(config).context("building the Kubernetes client")
}
