//! Test support for vipd: real parts only.
//!
//! - [`apiserver`]: one real kube-apiserver + etcd per test binary (built by
//!   `scripts/harness.sh` from Kubernetes' own Go modules), a namespace per
//!   test, admin and ServiceAccount clients.
//! - [`netns`]: network namespaces as hosts, removed by `Drop`; a tokio
//!   runtime whose threads live inside a namespace.
//! - [`lab`]: hosts on one bridge (documentation ranges only), links up and
//!   down, processes that die with the test.
//! - [`nodes`]: real Kubernetes nodes (containerd, kubelet, kube-proxy) in
//!   lab hosts; [`pods`]: a K3s-like cluster of them running vipd's image.
//! - [`probe`]: what a test measures: TCP responders and probes, who holds an
//!   address, announcements captured on the wire.

pub mod apiserver;
pub mod bgp;
pub mod failover;
pub mod ha;
pub mod lab;
pub mod netns;
pub mod nodes;
pub mod outage;
pub mod pods;
pub mod probe;
pub mod process;
pub mod raft_forge;
pub mod services;
pub mod soak;
pub mod vipd;

use std::path::PathBuf;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// A directory for this test process's files (logs, kubeconfigs, state),
/// under `target/test-runs/<pid>`; kept after the run for post-mortems.
pub fn run_dir() -> PathBuf {
    let dir = workspace_root()
        .join("target/test-runs")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).expect("create run dir");
    dir
}

/// Prefix of every namespace, bridge and data directory this process makes,
/// so a later run can tell a leftover (dead owner) from a live neighbour.
pub fn run_prefix() -> String {
    format!("vt{}", std::process::id())
}

/// The addresses in a Service's `status.loadBalancer.ingress`.
pub fn ingress_ips(s: &k8s_openapi::api::core::v1::Service) -> Vec<std::net::IpAddr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|x| x.ip.as_ref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
