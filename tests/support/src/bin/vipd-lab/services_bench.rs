//! `vipd-lab bench services`: how fast Services get addresses and answer,
//! how vipd copes with a thousand at once, and how fast they all move when
//! the leader dies.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::AsyncReadExt;
use vipd_testkit::apiserver::{env, is_write, request_counts};
use vipd_testkit::failover::{grant_roles, median_worst, vipd_nodes};
use vipd_testkit::netns::ip;
use vipd_testkit::probe::{takeover_in_kernels, ArpProber, NodeKernel};

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn ingress(s: &Service) -> Vec<IpAddr> {
    vipd_testkit::ingress_ips(s)
}

fn svc(name: &str, v6: bool) -> Service {
    let families = if v6 { json!(["IPv6"]) } else { json!(["IPv4"]) };
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "type": "LoadBalancer", "ipFamilies": families, "ipFamilyPolicy": "SingleStack", "allocateLoadBalancerNodePorts": false,
                  "ports": [{ "port": 80, "protocol": "TCP" }] }
    }))
    .expect("service")
}

/// Who answers TCP on `addr`:80 from the client (this runtime lives there).
async fn who(addr: IpAddr) -> Option<String> {
    let connect = tokio::net::TcpStream::connect(SocketAddr::new(addr, 80));
    let mut s = tokio::time::timeout(Duration::from_millis(500), connect)
        .await
        .ok()?
        .ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_millis(500), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    let b = buf.trim().to_string();
    (!b.is_empty()).then_some(b)
}

/// How many addresses one sweep asks before the client forgets their
/// neighbour entries. The kernel's neighbour table is shared by every
/// network namespace and holds 1024 entries (`gc_thresh3`, settable only in
/// the initial namespace, which the lab leaves alone), and it never frees
/// an entry younger than 5 s to make room: more addresses than this are
/// asked in chunks, the client's entries for them flushed after each.
const SWEEP_CHUNK: usize = 1000;

/// How many of `addrs` answer, and from whom (not `not_from`); `client`:
/// the client's network namespace (this runtime lives there).
async fn answering(client: &str, addrs: &[IpAddr], not_from: Option<&str>) -> usize {
    let mut n = 0;
    for chunk in addrs.chunks(SWEEP_CHUNK) {
        n += futures::stream::iter(chunk.iter().copied())
            .map(|a| async move { who(a).await })
            .buffer_unordered(100)
            .filter(|w| {
                let ok = w.as_deref().is_some_and(|w| Some(w) != not_from);
                async move { ok }
            })
            .count()
            .await;
        if addrs.len() > SWEEP_CHUNK {
            forget_neighbours(client);
        }
    }
    n
}

/// Flushes the client's neighbour entries for the Services' addresses.
fn forget_neighbours(client: &str) {
    for (family, net) in [("-6", "2001:db8:100::/64"), ("-4", "198.51.100.0/24")] {
        let _ = ip(&["-n", client, family, "neigh", "flush", "to", net]);
    }
}

use vipd_testkit::process::{cpu_time, rss_kib, rss_split_kib};

/// One value from a vipd's /metrics (its status port, 2112).
async fn metric(host: std::net::Ipv4Addr, name: &str) -> Option<f64> {
    let body = vipd_testkit::vipd::status_get(host, "/metrics").await?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub async fn run(vipd: PathBuf, sequential: usize, burst: usize, set: Vec<String>) -> Result<()> {
    if sequential == 0 || burst == 0 || burst > 8000 {
        bail!("--sequential must be at least 1 and --burst 1 to 8000");
    }
    let env = env();
    let admin = env.admin().await;
    let ns = env.namespace("bench").await;
    let lease_ns = env.namespace("benchlease").await;
    grant_roles(env, &ns)?;
    let client = env.client.ns.name().to_string();
    // Service addresses outside the hosts' subnet are on-link for the client.
    ip(&[
        "-n",
        &client,
        "route",
        "add",
        "198.51.100.0/24",
        "dev",
        "eth0",
    ])?;
    ip(&[
        "-n",
        &client,
        "-6",
        "route",
        "add",
        "2001:db8:100::/64",
        "dev",
        "eth0",
    ])?;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "kubevip" },
        "data": { format!("range-{ns}"): "198.51.100.1-198.51.100.254,2001:db8:100::1-2001:db8:100::1fff" }
    }))?;
    cms.create(&PostParams::default(), &cm).await?;
    let pools = format!("{ns}/kubevip");
    let level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into());
    let mut settings: Vec<(&str, &str)> = vec![
        ("cp_namespace", &lease_ns),
        ("svc_namespace", &ns),
        ("svc_pool_configmap", &pools),
        ("vip_loglevel", &level),
    ];
    for kv in &set {
        let Some(pair) = kv.split_once('=') else {
            bail!("--set {kv:?}: expected name=value");
        };
        settings.push(pair);
    }
    let mut nodes = vipd_nodes(
        env,
        3,
        "manifests/k3s/vipd-services-daemonset.yaml",
        &vipd,
        &settings,
        &[80],
    )
    .await?;
    let svcs: Api<Service> = Api::namespaced(admin.clone(), &ns);
    // Let a Services leader be elected.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. One at a time: create -> ingress -> answers ARP.
    let prober = ArpProber::open(&env.client);
    let mut to_ingress = Vec::new();
    let mut to_arp = Vec::new();
    for i in 0..sequential {
        let name = format!("seq-{i}");
        let t0 = Instant::now();
        svcs.create(&PostParams::default(), &svc(&name, false))
            .await?;
        let addr = loop {
            if let Some(a) = ingress(&svcs.get(&name).await?).first() {
                break *a;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{name}: no ingress after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        to_ingress.push(t0.elapsed());
        let IpAddr::V4(v4) = addr else {
            bail!("{name}: got {addr}, expected IPv4")
        };
        loop {
            if prober.ask(v4, Duration::from_millis(5)).is_some() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{name}: {addr} does not answer ARP after 30 s");
            }
        }
        to_arp.push(t0.elapsed());
    }
    println!("Services created one at a time ({sequential}, IPv4 from a pool, 3 nodes):");
    println!("| | median | p99 | worst |");
    println!("|---|---|---|---|");
    for (what, v) in [
        ("create -> status.loadBalancer.ingress", &to_ingress),
        ("create -> answers ARP", &to_arp),
    ] {
        let (_, worst) = median_worst(v);
        println!(
            "| {what} | {:.0} ms | {:.0} ms | {worst:.0} ms |",
            pct(v.clone(), 0.5),
            pct(v.clone(), 0.99)
        );
    }
    // Clean slate for the burst.
    futures::stream::iter(0..sequential)
        .for_each_concurrent(32, |i| {
            let svcs = svcs.clone();
            async move {
                let _ = svcs.delete(&format!("seq-{i}"), &Default::default()).await;
            }
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base: Vec<(u64, u64)> = nodes
        .iter()
        .map(|n| rss_kib(n.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0)))
        .collect();

    println!("\nvipd memory before the burst (KiB): RSS = anonymous + file-backed");
    for n in &nodes {
        let pid = n.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0);
        let (anon, file) = rss_split_kib(pid);
        println!("- {}: {} = {anon} + {file}", n.name(), rss_kib(pid).0);
    }

    // 2. A burst created at once. A watch (not a poll, which would load
    // the API server with lists of every Service) sees each address
    // arrive in the status.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        Vec<IpAddr>,
    >::new()));
    let watch = {
        let seen = seen.clone();
        let stream =
            kube::runtime::watcher(svcs.clone(), kube::runtime::watcher::Config::default());
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                use kube::runtime::watcher::Event;
                if let Ok(Event::Apply(s) | Event::InitApply(s)) = ev {
                    let ips = ingress(&s);
                    let name = s.metadata.name.clone().unwrap_or_default();
                    if name.starts_with("burst-") && !ips.is_empty() {
                        seen.lock().unwrap().insert(name, ips);
                    }
                }
            }
        })
    };
    let api_before = request_counts(&admin, |_| true).await?;
    let t0 = Instant::now();
    futures::stream::iter(0..burst)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                svcs.create(&PostParams::default(), &svc(&format!("burst-{i}"), true))
                    .await
            }
        })
        .buffer_unordered(64)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("create failed: {e}");
            }
        })
        .await;
    let created = t0.elapsed();
    let last_create_at = k8s_openapi::jiff::Timestamp::now();
    let addrs: Vec<IpAddr> = loop {
        {
            let seen = seen.lock().unwrap();
            if seen.len() >= burst {
                break seen.values().flatten().copied().collect();
            }
            if t0.elapsed() > Duration::from_secs(300) {
                bail!(
                    "only {} of {burst} Services got an address in 300 s",
                    seen.len()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    watch.abort();
    let all_ingress = t0.elapsed();
    loop {
        let n = answering(&client, &addrs, None).await;
        if n == addrs.len() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("only {n} of {} addresses answer after 300 s", addrs.len());
        }
    }
    let all_answer = t0.elapsed();
    let api_after = request_counts(&admin, |_| true).await?;
    let after: Vec<(u64, u64)> = nodes
        .iter()
        .map(|n| rss_kib(n.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0)))
        .collect();
    println!("\n{burst} Services created at once (IPv6 from a pool; 64 API clients in parallel):");
    println!("| | time |");
    println!("|---|---|");
    println!(
        "| all {burst} created (API) | {:.1} s |",
        created.as_secs_f64()
    );
    println!(
        "| all have status.loadBalancer.ingress | {:.1} s |",
        all_ingress.as_secs_f64()
    );
    println!(
        "| all {burst} addresses answer TCP from the client | {:.1} s |",
        all_answer.as_secs_f64()
    );
    println!(
        "| after the last create returned: all have ingress / all answer | {:.2} s / {:.2} s |",
        (all_ingress - created).as_secs_f64(),
        (all_answer - created).as_secs_f64()
    );
    println!("(the last create returned at {last_create_at}, for the vipds' logs)");
    println!("\nAPI writes from the first create until all answer (the API server's `apiserver_request_total`):");
    println!("| resource | verb | requests | per Service |");
    println!("|---|---|---|---|");
    for ((resource, sub, verb), n) in &api_after {
        let d = n - api_before
            .get(&(resource.clone(), sub.clone(), verb.clone()))
            .unwrap_or(&0.0);
        if d < 1.0 || !is_write(verb) {
            continue;
        }
        let what = if sub.is_empty() {
            resource.clone()
        } else {
            format!("{resource}/{sub}")
        };
        println!("| {what} | {verb} | {d:.0} | {:.2} |", d / burst as f64);
    }
    // Settled: after the next resync, which gives freed memory back. The
    // CPU each vipd uses meanwhile is what holding the addresses costs
    // (lifetime refreshes, announcements, watches).
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0))
        .collect();
    let cpu_before: Vec<_> = pids.iter().map(|p| cpu_time(*p)).collect();
    let mut passes_before = Vec::new();
    for n in &nodes {
        passes_before.push(metric(n.host.v4, "vipd_reconcile_duration_seconds_count").await);
    }
    let settle = Duration::from_secs(12);
    tokio::time::sleep(settle).await;
    println!("\nvipd CPU over those 12 s, holding the addresses (user + kernel, % of one core):");
    for ((n, p), (u0, s0)) in nodes.iter().zip(&pids).zip(&cpu_before) {
        let (u1, s1) = cpu_time(*p);
        let pct = |d: Duration| d.as_secs_f64() * 100.0 / settle.as_secs_f64();
        println!(
            "- {}: {:.1} % + {:.1} %",
            n.name(),
            pct(u1.saturating_sub(*u0)),
            pct(s1.saturating_sub(*s0))
        );
    }
    println!("Services passes over those 12 s:");
    for (n, before) in nodes.iter().zip(&passes_before) {
        let after = metric(n.host.v4, "vipd_reconcile_duration_seconds_count").await;
        if let (Some(b), Some(a)) = (before, after) {
            println!(
                "- {}: {:.0} ({:.1} a second)",
                n.name(),
                a - b,
                (a - b) / settle.as_secs_f64()
            );
        }
    }
    println!("\nvipd memory 12 s later (KiB): RSS = anonymous + file-backed");
    for n in &nodes {
        let pid = n.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0);
        let (rss, _) = rss_kib(pid);
        let (anon, file) = rss_split_kib(pid);
        println!("- {}: {rss} = {anon} + {file}", n.name());
    }
    for n in &nodes {
        let count = metric(n.host.v4, "vipd_reconcile_duration_seconds_count").await;
        let sum = metric(n.host.v4, "vipd_reconcile_duration_seconds_sum").await;
        if let (Some(c), Some(s)) = (count, sum) {
            if c > 0.0 {
                println!(
                    "- {}: {c} Services passes so far, {:.1} ms each on average",
                    n.name(),
                    s / c * 1000.0
                );
            }
        }
    }
    println!("\nvipd memory (KiB) per node: RSS before the burst -> RSS after, peak (VmHWM); after the burst split into anonymous + file-backed (the binary's code, shared):");
    for (i, ((b, _), (a, hwm))) in base.iter().zip(after.iter()).enumerate() {
        let (anon, file) = rss_split_kib(nodes[i].proc.as_ref().and_then(|p| p.pid()).unwrap_or(0));
        println!(
            "- n{}: {b} -> {a}, peak {hwm}; {anon} anon + {file} file",
            i + 1
        );
    }

    // 3. The leader dies: how long until every address answers from another node.
    let leader = who(addrs[0])
        .await
        .context("first address does not answer")?;
    let i = nodes
        .iter()
        .position(|n| n.name() == leader)
        .context("leader is a node")?;
    // Every node's kernel, sampled every 20 ms: when the survivors hold
    // every address, and how many were on two nodes at once.
    let kernels: Vec<NodeKernel> = nodes.iter().map(|n| NodeKernel::open(&n.host)).collect();
    let wanted: std::collections::BTreeSet<IpAddr> = addrs.iter().copied().collect();
    let t0 = Instant::now();
    nodes[i].kill();
    let dead = leader.clone();
    let sampler = tokio::spawn(async move {
        takeover_in_kernels(&kernels, &wanted, &dead, t0, Duration::from_secs(30)).await
    });
    let mut first_all = None;
    let mut answered = 0;
    while t0.elapsed() < Duration::from_secs(120) {
        answered = answering(&client, &addrs, Some(&leader)).await;
        if answered == addrs.len() {
            first_all = Some(t0.elapsed());
            break;
        }
    }
    match first_all {
        Some(t) => println!(
            "\nThe leader ({leader}) is killed: all {} addresses answer from another node after {:.1} s.",
            addrs.len(),
            t.as_secs_f64()
        ),
        None => bail!(
            "not all addresses moved off {leader} within 120 s: {answered} of {} answered from another node in the last sweep",
            addrs.len()
        ),
    }
    let k = sampler.await?;
    match k.took {
        Some(t) => println!(
            "In the nodes' kernels (sampled every 20 ms, {} samples): the survivors hold all {} {:.2} s after the kill; at most {} addresses were on two nodes in one sample (the killed node's guardian removes its copies).",
            k.samples,
            addrs.len(),
            t.as_secs_f64(),
            k.most_doubled
        ),
        None => println!("In the nodes' kernels: the survivors did not hold every address within 30 s."),
    }
    Ok(())
}
