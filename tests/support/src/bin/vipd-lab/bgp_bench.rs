//! `vipd-lab bench bgp`: how fast a Service's route reaches the router, and
//! how fast a stopping vipd's routes leave it (BIRD 2's kernel table).

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use vipd_testkit::apiserver::env;
use vipd_testkit::bgp::{bgp_nodes, lab_router, node_ip};
use vipd_testkit::failover::median_worst;

pub async fn run(vipd: &Path, rounds: usize) -> Result<()> {
    let env = env();
    let bird = lab_router(env, 3, &[])?;
    let ns = env.namespace("bgpbench").await;
    let lease_ns = env.namespace("bgpbenchlease").await;
    vipd_testkit::failover::grant_roles(env, &ns)?;
    let pools = format!("{ns}/kubevip");
    let settings = [
        ("svc_enable", "true"),
        ("svc_namespace", ns.as_str()),
        ("svc_pool_configmap", pools.as_str()),
        ("cp_namespace", lease_ns.as_str()),
        ("vip_loglevel", "info"),
    ];
    let (mut nodes, _health) = bgp_nodes(env, 3, vipd, &settings, |_| vec![]).await?;
    let all: Vec<IpAddr> = (0..3).map(node_ip).collect();
    let svcs: Api<Service> = Api::namespaced(env.admin().await, &ns);
    let make = |i: usize| -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("s{i}"), "annotations": { "kube-vip.io/loadbalancerIPs": format!("198.51.100.{}", 10 + i) } },
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
        }))
        .expect("service")
    };
    // Sessions first: the benchmark is of steady state.
    svcs.create(&Default::default(), &make(0)).await?;
    bird.wait_next_hops("198.51.100.10".parse()?, &all, Duration::from_secs(60))
        .context("sessions")?;

    let mut to_route = Vec::new();
    for i in 1..=rounds {
        let t0 = Instant::now();
        svcs.create(&Default::default(), &make(i)).await?;
        let addr: IpAddr = format!("198.51.100.{}", 10 + i).parse()?;
        bird.wait_next_hops(addr, &all, Duration::from_secs(30))?;
        to_route.push(t0.elapsed());
    }
    // A stopping vipd withdraws; a crashed one takes its gobgpd along, which
    // closes the sessions (the router needs no hold time to notice).
    let probe: IpAddr = "198.51.100.10".parse()?;
    let mut to_withdraw = Vec::new();
    let mut crash_to_withdraw = Vec::new();
    for crash in [false, true] {
        for r in 0..rounds {
            let k = r % 3;
            let rest: Vec<IpAddr> = all.iter().copied().filter(|a| *a != node_ip(k)).collect();
            let t0 = Instant::now();
            if crash {
                nodes[k].kill();
            } else {
                nodes[k].signal(nix::sys::signal::Signal::SIGTERM);
            }
            bird.wait_next_hops(probe, &rest, Duration::from_secs(60))?;
            if crash {
                &mut crash_to_withdraw
            } else {
                &mut to_withdraw
            }
            .push(t0.elapsed());
            nodes[k].terminate(Duration::from_secs(10)).ok();
            nodes[k].start()?;
            bird.wait_next_hops(probe, &all, Duration::from_secs(60))?;
        }
    }
    println!("BGP (gobgpd 3.10 -> BIRD 2.0.12, 3 nodes, eBGP), {rounds} rounds each:");
    println!("| | median | worst |");
    println!("|---|---|---|");
    let (m, w) = median_worst(&to_route);
    println!("| Service create -> route with 3 next hops in the router's kernel | {m:.0} ms | {w:.0} ms |");
    let (m, w) = median_worst(&to_withdraw);
    println!(
        "| SIGTERM of one vipd -> its next hop gone from the router | {m:.0} ms | {w:.0} ms |"
    );
    let (m, w) = median_worst(&crash_to_withdraw);
    println!(
        "| SIGKILL of one vipd -> its next hop gone from the router | {m:.0} ms | {w:.0} ms |"
    );
    Ok(())
}
