//! `vipd-lab bench writes`: the Lease writes a settled cluster makes with
//! Services that need a node of their own (`svc_election`), counted by the
//! API server itself (`apiserver_request_total` for leases), one Lease per
//! address against placement (`svc_placement`: one liveness Lease per
//! node); then an announcer's death: how long until every address answers
//! from the survivors' kernels, and how many were on two nodes at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::json;
use vipd_testkit::apiserver::env;
use vipd_testkit::apiserver::{is_write, request_counts};
use vipd_testkit::failover::{grant_roles, vipd_nodes};
use vipd_testkit::probe::{takeover_in_kernels, NodeKernel};
use vipd_testkit::process::{rss_kib, rss_split_kib};

/// The API server's count of Lease writes.
async fn lease_writes(admin: &Client) -> Result<f64> {
    let counts = request_counts(admin, |r| r == "leases").await?;
    Ok(counts
        .iter()
        .filter(|((_, _, verb), _)| is_write(verb))
        .map(|(_, n)| n)
        .sum())
}

fn svc(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "type": "LoadBalancer", "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack", "allocateLoadBalancerNodePorts": false,
                  "ports": [{ "port": 80, "protocol": "TCP" }] }
    }))
    .expect("service")
}

pub async fn run(vipd: PathBuf, services: usize, window: Duration, modes: String) -> Result<()> {
    if services == 0 || services > 8000 {
        bail!("--services must be 1 to 8000");
    }
    println!("{services} Services, svc_election, 3 nodes; Lease writes counted by the API server over {window:?} once settled.\n");
    println!("| mode | Lease writes/s (cluster) | per node | Leases | takeover after SIGKILL of an announcer (kernels) | addresses on two nodes at once (max in a 20 ms sample) | RSS per node, MiB (anon + file) |");
    println!("|---|---|---|---|---|---|---|");
    for (mode, key, placement, links) in [
        (
            "placement (svc_placement), peer links",
            "placement",
            true,
            true,
        ),
        (
            "placement, svc_peer_links=false",
            "placement-nolinks",
            true,
            false,
        ),
        ("a Lease per address", "lease", false, false),
    ] {
        if !modes.split(',').any(|m| m.trim() == key) {
            continue;
        }
        let row = one(&vipd, services, window, placement, links).await?;
        println!("| {mode} | {row} |");
    }
    Ok(())
}

async fn one(
    vipd: &std::path::Path,
    services: usize,
    window: Duration,
    placement: bool,
    links: bool,
) -> Result<String> {
    let env = env();
    let admin = env.admin().await;
    let ns = env.namespace("writes").await;
    let lease_ns = env.namespace("writeslease").await;
    grant_roles(env, &ns)?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "kubevip" },
        "data": { format!("range-{ns}"): "2001:db8:100::1-2001:db8:100::1fff" }
    }))?;
    Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await?;
    let pools = format!("{ns}/kubevip");
    let mut settings: Vec<(&str, &str)> = vec![
        ("cp_namespace", &lease_ns),
        ("svc_namespace", &ns),
        ("svc_pool_configmap", &pools),
        ("svc_election", "true"),
        ("vip_loglevel", "info"),
    ];
    settings.push(("svc_placement", if placement { "true" } else { "false" }));
    settings.push(("svc_peer_links", if links { "true" } else { "false" }));
    let mut nodes = vipd_nodes(
        env,
        3,
        "manifests/k3s/vipd-services-daemonset.yaml",
        vipd,
        &settings,
        &[80],
    )
    .await?;
    let svcs: Api<Service> = Api::namespaced(admin.clone(), &ns);
    futures::stream::iter(0..services)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                match svcs
                    .create(&PostParams::default(), &svc(&format!("w-{i}")))
                    .await
                {
                    // A create retried after a timeout that had landed.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    r => r.map(|_| ()),
                }
            }
        })
        .buffer_unordered(64)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("create failed: {e}");
            }
        })
        .await;
    // Settled: every Service has an address and every address is held.
    let t0 = Instant::now();
    let kernels: Vec<NodeKernel> = nodes.iter().map(|n| NodeKernel::open(&n.host)).collect();
    let (addrs, settled) = loop {
        let list = svcs.list(&ListParams::default()).await?;
        let addrs: BTreeSet<IpAddr> = list
            .items
            .iter()
            .flat_map(vipd_testkit::ingress_ips)
            .collect();
        let mut held = BTreeSet::new();
        for k in &kernels {
            held.extend(
                k.addresses()
                    .await
                    .into_iter()
                    .map(|(a, _)| a)
                    .filter(|a| addrs.contains(a)),
            );
        }
        if addrs.len() >= services && held.len() == addrs.len() {
            break (
                addrs,
                format!("settled in {:.1} s", t0.elapsed().as_secs_f64()),
            );
        }
        if t0.elapsed() > Duration::from_secs(180) {
            // Report what a cluster in this state does, not nothing.
            break (
                held.clone(),
                format!(
                    "not settled after 180 s: {} of {services} have an address, {} held",
                    addrs.len(),
                    held.len()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = lease_writes(&admin).await?;
    tokio::time::sleep(window).await;
    let after = lease_writes(&admin).await?;
    let rate = (after - before) / window.as_secs_f64();
    let leases =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), &lease_ns)
            .list(&ListParams::default())
            .await?
            .items
            .len();
    let rss: Vec<String> = nodes
        .iter()
        .map(|n| {
            let pid = n.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0);
            let (anon, file) = rss_split_kib(pid);
            format!(
                "{:.1} ({:.1} + {:.1})",
                rss_kib(pid).0 as f64 / 1024.0,
                anon as f64 / 1024.0,
                file as f64 / 1024.0
            )
        })
        .collect();

    // The node holding the most addresses dies.
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for k in &kernels {
        let n = k
            .addresses()
            .await
            .into_iter()
            .filter(|(a, _)| addrs.contains(a))
            .count();
        count.insert(k.name.clone(), n);
    }
    let victim = count
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, _)| k.clone())
        .context("a node")?;
    let i = nodes
        .iter()
        .position(|n| n.name() == victim)
        .context("victim")?;
    let t0 = Instant::now();
    nodes[i].kill();
    let k = takeover_in_kernels(&kernels, &addrs, &victim, t0, Duration::from_secs(60)).await;
    let most_doubled = k.most_doubled;
    let took = match k.took {
        Some(t) => format!(
            "{:.2} s ({} of its addresses)",
            t.as_secs_f64(),
            count[&victim]
        ),
        None => "not within 60 s".into(),
    };
    Ok(format!(
        "{rate:.1} | {:.2} | {leases} | {took} | {most_doubled} | {} ({settled})",
        rate / 3.0,
        rss.join(", ")
    ))
}
