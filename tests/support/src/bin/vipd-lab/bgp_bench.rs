//! `vipd-lab bench bgp`: how fast a Service's route reaches the router, how
//! fast a stopping vipd's routes leave it, and how fast a dead node's
//! routes leave it with BFD and without (BIRD 2's kernel table).

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use vipd_testkit::apiserver::env;
use vipd_testkit::bgp::{bgp_nodes, lab_router_with, node_ip, BFD_INTERVAL_MS, BFD_MULTIPLIER};
use vipd_testkit::failover::{median_worst, percentile};
use vipd_testkit::vipd::VipdNode;

/// Node `k` dies: its cable pulled, then every process in it killed (no
/// NOTIFICATION, no FIN); how long until the router no longer routes
/// `probe` to it. The node then boots again.
async fn node_death(
    bird: &vipd_testkit::bgp::Bird,
    nodes: &mut [VipdNode],
    k: usize,
    probe: IpAddr,
) -> Result<Duration> {
    let all: Vec<IpAddr> = (0..nodes.len()).map(node_ip).collect();
    let rest: Vec<IpAddr> = all.iter().copied().filter(|a| *a != node_ip(k)).collect();
    let t0 = Instant::now();
    nodes[k].host.link_down()?;
    vipd_testkit::netns::kill_all_in(nodes[k].host.ns.name());
    bird.wait_next_hops(probe, &rest, Duration::from_secs(120))?;
    let took = t0.elapsed();
    nodes[k].kill();
    nodes[k].host.link_up()?;
    nodes[k].start()?;
    bird.wait_next_hops(probe, &all, Duration::from_secs(60))?;
    Ok(took)
}

pub async fn run(vipd: &Path, rounds: usize, hold_rounds: usize) -> Result<()> {
    let env = env();
    let bird = lab_router_with(env, 3, &[], true)?;
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
    let (mut nodes, health) = bgp_nodes(env, 3, vipd, &settings, |_| vec![]).await?;
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
    // Node death with BFD (vipd's default on directly connected peers).
    bird.wait_bfd_up(6, Duration::from_secs(30))?;
    let mut bfd_death = Vec::new();
    for r in 0..rounds {
        let took = node_death(&bird, &mut nodes, r % 3, probe).await?;
        println!("  node death (BFD) #{}: {took:?}", r + 1);
        bfd_death.push(took);
        bird.wait_bfd_up(6, Duration::from_secs(30))?;
    }
    // The same without BFD: the router waits out the hold time.
    drop(health);
    drop(nodes);
    drop(bird);
    let bird = lab_router_with(env, 3, &[], false)?;
    let mut settings = settings.to_vec();
    settings.push(("bgp_bfd", "false"));
    let (mut nodes, _health2) = bgp_nodes(env, 3, vipd, &settings, |_| vec![]).await?;
    bird.wait_next_hops(probe, &all, Duration::from_secs(60))?;
    let mut hold_death = Vec::new();
    for r in 0..hold_rounds {
        let took = node_death(&bird, &mut nodes, r % 3, probe).await?;
        println!("  node death (hold time) #{}: {took:?}", r + 1);
        hold_death.push(took);
    }

    println!(
        "BGP (gobgpd {} -> BIRD 2.0.12, 3 nodes, eBGP, hold time 9 s), {rounds} rounds each:",
        vipd_testkit::bgp::gobgp_version()
    );
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
    println!(
        "\nNode death (link down, every process killed) -> its next hop gone from the router:\n"
    );
    println!("| | rounds | median | p99 | worst |");
    println!("|---|---|---|---|---|");
    let (m, w) = median_worst(&bfd_death);
    println!(
        "| BFD {BFD_INTERVAL_MS} ms x {BFD_MULTIPLIER} (default) | {} | {m:.0} ms | {:.0} ms | {w:.0} ms |",
        bfd_death.len(),
        percentile(&bfd_death, 99.0)
    );
    let (m, w) = median_worst(&hold_death);
    println!(
        "| no BFD (hold time 9 s) | {} | {m:.0} ms | {:.0} ms | {w:.0} ms |",
        hold_death.len(),
        percentile(&hold_death, 99.0)
    );
    Ok(())
}
