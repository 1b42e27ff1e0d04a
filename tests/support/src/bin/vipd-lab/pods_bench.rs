//! `vipd-lab bench pods`: the control-plane VIP's HA scenarios with vipd
//! run as users run it: its image, K3s static pods, real kubelets and
//! containerd (see tests/support/src/pods.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use vipd_testkit::apiserver::env_with_controllers;
use vipd_testkit::pods::{table, PodCluster, PodScenario};

pub fn run(rounds: usize, stop: &'static AtomicBool) -> Result<()> {
    println!("Starting the API server with kube-controller-manager and kube-scheduler ...");
    let env = env_with_controllers();
    let yaml = std::fs::read_to_string(
        vipd_testkit::workspace_root().join("manifests/k3s/vipd-static-pod.yaml"),
    )
    .context("manifests/k3s/vipd-static-pod.yaml")?;
    env.run(async move {
        println!(
            "Three K3s-like servers (containerd, kubelet, kube-proxy), the vipd image imported ..."
        );
        let mut c = PodCluster::start(env, 3, 0, &[vipd_testkit::pods::API_PORT]).await?;
        c.write_static_pods(&yaml)?;
        c.wait_pods_ready("kube-system", "vipd-", 3, Duration::from_secs(90))
            .await?;
        let mut outcomes = Vec::new();
        for scenario in PodScenario::ALL {
            for round in 0..rounds {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let o = c.run(scenario).await?;
                println!(
                    "  {} #{}: takeover {:?}, client outage {:?}, max holders {}, recovered {}",
                    scenario.describe(),
                    round + 1,
                    o.takeover,
                    o.outage,
                    o.max_holders,
                    o.recovered
                );
                outcomes.push(o);
            }
        }
        println!("\n{}", table(&outcomes));
        Ok(())
    })
}
