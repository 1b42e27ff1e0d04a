//! `vipd-lab bench churn`: Services created and deleted in waves (one
//! Lease per address, `svc_election`), as a busy cluster does all day:
//! vipd's memory before, at the peak and after, and whether any
//! per-address Lease is left behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use vipd_testkit::apiserver::env;
use vipd_testkit::failover::{grant_roles, vipd_nodes};
use vipd_testkit::process::rss_kib;

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub async fn run(vipd: PathBuf, total: usize, wave: usize) -> Result<()> {
    let env = env();
    let admin = env.admin().await;
    let ns = env.namespace("churn").await;
    let lease_ns = env.namespace("churnlease").await;
    grant_roles(env, &ns)?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "kubevip" },
        "data": { "cidr-global": "198.51.100.0/24,203.0.113.0/24", "skip-end-ips-in-cidr": "true" }
    }))?;
    Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await?;
    let pools = format!("{ns}/kubevip");
    let settings: Vec<(&str, &str)> = vec![
        ("cp_namespace", &lease_ns),
        ("svc_namespace", &ns),
        ("svc_pool_configmap", &pools),
        ("svc_election", "true"),
        ("svc_placement", "false"),
        ("vip_loglevel", "info"),
    ];
    let nodes = vipd_nodes(
        env,
        3,
        "manifests/k3s/vipd-services-daemonset.yaml",
        &vipd,
        &settings,
        &[80],
    )
    .await?;
    let rss = || -> Vec<(u64, u64)> {
        nodes
            .iter()
            .map(|n| rss_kib(n.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0)))
            .collect()
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = rss();
    let svcs: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let t0 = Instant::now();
    let waves = total.div_ceil(wave);
    for w in 0..waves {
        let names: Vec<String> = (0..wave).map(|i| format!("churn-{w}-{i}")).collect();
        futures::stream::iter(names.iter())
            .for_each_concurrent(64, |n| {
                let svcs = svcs.clone();
                async move {
                    let s: Service = serde_json::from_value(json!({
                        "metadata": { "name": n },
                        "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
                    }))
                    .expect("service");
                    let _ = svcs.create(&PostParams::default(), &s).await;
                }
            })
            .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = svcs.list(&ListParams::default()).await?;
            let done = list
                .items
                .iter()
                .filter(|s| !vipd_testkit::ingress_ips(s).is_empty())
                .count();
            if done >= wave {
                break;
            }
            if Instant::now() > deadline {
                bail!("wave {w}: {done} of {wave} Services got an address in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        futures::stream::iter(names.iter())
            .for_each_concurrent(64, |n| {
                let svcs = svcs.clone();
                async move {
                    let _ = svcs.delete(n, &Default::default()).await;
                }
            })
            .await;
    }
    let churned = t0.elapsed();
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &lease_ns);
    let per_address = ListParams::default().labels("vipd.dev/service-address");
    let t1 = Instant::now();
    while !leases.list(&per_address).await?.items.is_empty()
        && t1.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cleaned = t1.elapsed();
    let left = leases.list(&per_address).await?.items.len();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = rss();
    println!(
        "{total} Services in waves of {wave} (svc_election: one Lease per address), 3 nodes, release build:"
    );
    println!("created, given an address and deleted in {:.1} s; per-address Leases left: {left} ({:.1} s after the last delete)", churned.as_secs_f64(), cleaned.as_secs_f64());
    println!("| node | RSS before (MiB) | peak (MiB) | after, 15 s later (MiB) |");
    println!("|---|---|---|---|");
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        println!(
            "| n{} | {} | {} | {} |",
            i + 1,
            mib(b.0),
            mib(a.1),
            mib(a.0)
        );
    }
    Ok(())
}
