//! `vipd-lab`: the README's demo and the failover benchmarks, on the same
//! lab the tests use (network namespaces, a real API server, real vipd).
//!
//!   vipd-lab demo                         three nodes, the VIP moving, in plain words
//!   vipd-lab bench failover [--rounds N]  outage per disruption, median and worst
//!   vipd-lab bench pods [--rounds N]      the same on K3s static pods run by kubelets
//!   vipd-lab bench raft-soak [--minutes N] [--loss P]  Raft under stress-ng and packet loss
//!
//! Needs root. Everything it creates is removed on exit, Ctrl-C included.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use vipd_testkit::apiserver::env;
use vipd_testkit::failover::{lease_cluster, median_worst, Disruption};

mod bgp_bench;
mod churn_bench;
mod ha_bench;
mod outage_bench;
mod pods_bench;
mod raft_bench;
mod services_bench;
mod writes_bench;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Parser)]
#[command(about = "vipd's lab: demo and benchmarks (run as root)")]
struct Cli {
    /// The vipd binary (default: next to this one).
    #[arg(long, global = true)]
    vipd: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The HA cluster (3 API servers + etcd); the VIP holder is stopped, killed, and its node lost.
    Demo,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Failover of the control-plane VIP: SIGTERM, SIGKILL and link down of the holder.
    Failover {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Raft election against keepalived (VRRPv3) at advert_int 1 s and 0.1 s:
    /// outage on SIGKILL and on link down of the holder.
    Raft {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// A vipd setting for this run, KEY=VALUE (repeatable), e.g.
        /// --set vip_raft_tick=20ms
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// vipd only, without keepalived.
        #[arg(long)]
        vipd_only: bool,
    },
    /// Raft left alone under load and loss: both cores saturated by
    /// stress-ng, a share of the frames between the nodes dropped; leader
    /// changes and client gaps counted.
    RaftSoak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 2)]
        loss: u32,
        /// A vipd setting for this run, KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// The HA cluster: the client's longest gap per scenario, Lease and Raft.
    Ha {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// lease, raft, or both.
        #[arg(long, default_value = "both")]
        mode: String,
    },
    /// A control-plane outage: the API server frozen (VIP and Service gaps,
    /// holding vs strict), and the holder cut off from it.
    Outage {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds the API server stays frozen.
        #[arg(long, default_value_t = 60)]
        freeze: u64,
    },
    /// The control-plane VIP as K3s static pods run by kubelets from vipd's
    /// image: pod start, container killed, node death, rolling update.
    Pods {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// BGP: Service create to route at the router; vipd stop to withdrawal.
    Bgp {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Node deaths without BFD (each waits out the hold time).
        #[arg(long, default_value_t = 3)]
        hold_rounds: usize,
    },
    /// LoadBalancer Services: create-to-ingress and create-to-ARP one by one,
    /// then a burst created at once, then the leader's death.
    Services {
        /// Services created one after the other (IPv4, from a pool).
        #[arg(long, default_value_t = 200)]
        sequential: usize,
        /// Services created at once (IPv6, from a pool).
        #[arg(long, default_value_t = 1000)]
        burst: usize,
        /// Extra vipd settings, `name=value` (repeatable), e.g.
        /// `--set svc_peer_links=false`.
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Services created and deleted in waves (svc_election): memory before,
    /// at the peak and after; per-address Leases left behind.
    Churn {
        #[arg(long, default_value_t = 2000)]
        services: usize,
        #[arg(long, default_value_t = 200)]
        wave: usize,
    },
    /// Lease writes in steady state with svc_election (counted by the API
    /// server), a Lease per address against placement (svc_placement);
    /// then an announcer's death.
    Writes {
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Seconds the writes are counted over.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Which modes, in order: placement, placement-nolinks, lease
        /// (comma separated).
        #[arg(long, default_value = "placement,placement-nolinks,lease")]
        modes: String,
    },
}

fn main() {
    let cli = Cli::parse();
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "vipd-lab: needs root (network namespaces); try: sudo {}",
            std::env::args().next().unwrap_or_default()
        );
        std::process::exit(2);
    }
    // Ctrl-C (or SIGTERM) flips a flag; the running scenario stops and
    // everything is torn down on the way out.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal");
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
        println!("\nInterrupted: cleaning up (after the current step)...");
    });
    let vipd = cli.vipd.unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .parent()
            .expect("a directory")
            .join("vipd")
    });
    if !vipd.exists() {
        eprintln!(
            "vipd-lab: no vipd binary at {} (build it: cargo build --release)",
            vipd.display()
        );
        std::process::exit(2);
    }
    let result = match cli.cmd {
        Cmd::Demo => demo_ha(&vipd),
        Cmd::Bench {
            what: Bench::Failover { rounds, nodes },
        } => run_interruptible(bench_failover(vipd, rounds, nodes)),
        Cmd::Bench {
            what:
                Bench::Services {
                    sequential,
                    burst,
                    set,
                },
        } => run_interruptible(services_bench::run(vipd, sequential, burst, set)),
        Cmd::Bench {
            what: Bench::Churn { services, wave },
        } => run_interruptible(churn_bench::run(vipd, services, wave)),
        Cmd::Bench {
            what:
                Bench::Writes {
                    services,
                    seconds,
                    modes,
                },
        } => run_interruptible(writes_bench::run(
            vipd,
            services,
            Duration::from_secs(seconds),
            modes,
        )),
        Cmd::Bench {
            what:
                Bench::Raft {
                    rounds,
                    nodes,
                    set,
                    vipd_only,
                },
        } => raft_bench::run(&vipd, rounds, nodes, &set, vipd_only, &INTERRUPTED),
        Cmd::Bench {
            what: Bench::RaftSoak { minutes, loss, set },
        } => raft_bench::soak(&vipd, Duration::from_secs(minutes * 60), loss, &set),
        Cmd::Bench {
            what: Bench::Ha { rounds, mode },
        } => ha_bench::run(&vipd, rounds, &mode, &INTERRUPTED),
        Cmd::Bench {
            what: Bench::Outage { rounds, freeze },
        } => run_interruptible(async move {
            outage_bench::run(&vipd, rounds, Duration::from_secs(freeze), &INTERRUPTED).await
        }),
        Cmd::Bench {
            what: Bench::Pods { rounds },
        } => pods_bench::run(rounds, &INTERRUPTED),
        Cmd::Bench {
            what: Bench::Bgp {
                rounds,
                hold_rounds,
            },
        } => run_interruptible(async move { bgp_bench::run(&vipd, rounds, hold_rounds).await }),
    };
    match result {
        Ok(()) => {}
        Err(e) => {
            eprintln!("vipd-lab: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run_interruptible(
    fut: impl std::future::Future<Output = Result<()>> + Send + 'static,
) -> Result<()> {
    say("Starting the Kubernetes API server (kube-apiserver + etcd from Kubernetes v1.36.3, real TLS and RBAC)...");
    let t0 = Instant::now();
    let env = env();
    say(&format!(
        "  ready at {} after {:.1} s",
        env.server(),
        t0.elapsed().as_secs_f64()
    ));
    env.run(async move {
        tokio::select! {
            r = fut => r,
            _ = async { while !INTERRUPTED.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(50)).await } } => {
                say("Interrupted: cleaning up.");
                Ok(())
            }
        }
    })
}

fn say(s: &str) {
    println!("{s}");
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The README's demo: the HA cluster, its VIP holder stopped, killed and
/// its whole node lost, in plain words.
fn demo_ha(vipd: &std::path::Path) -> Result<()> {
    use vipd_testkit::ha::{HaCluster, HaScenario, Mode};
    say("Building the lab: three control-plane servers n1 (192.0.2.11), n2 (192.0.2.12), n3 (192.0.2.13),");
    say("  each with an etcd member (one etcd cluster) and a kube-apiserver from Kubernetes v1.36.3 whose");
    say("  certificate also names the VIP 192.0.2.100, as K3s with embedded etcd and --tls-san runs them;");
    say("  vipd on each as manifests/k3s/vipd-static-pod.yaml (Lease election, 4 s).");
    let t0 = Instant::now();
    let mut c = HaCluster::start(3, Mode::Lease, vipd, &[])?;
    let leader = c.holder_name().unwrap_or_default();
    say(&format!(
        "  Ready after {:.0} s. {leader} holds 192.0.2.100.",
        t0.elapsed().as_secs_f64()
    ));
    say("A client at 192.0.2.3 calls https://192.0.2.100:6443 every 50 ms (TLS checked against the cluster CA),");
    say("and runs kubectl --server https://192.0.2.100:6443 once a second.");
    let steps = [
        (
            HaScenario::VipdTerm,
            "Stopping the leader's vipd gracefully (SIGTERM, as in an update)",
        ),
        (
            HaScenario::VipdKill,
            "Killing the leader's vipd (SIGKILL, a crash; its API server keeps running)",
        ),
        (
            HaScenario::NodeDeath,
            "The leader's whole node dies (every process killed, its link down)",
        ),
    ];
    for (n, (what, words)) in steps.iter().enumerate() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        let who = c.holder_name().unwrap_or_default();
        say(&format!("\n{}) {words}: {who} ...", n + 1));
        let o = c.run_scenario(*what)?;
        say(&format!(
            "   {} holds the VIP now. The client's longest wait for an answer: {}.",
            o.new_holder.as_deref().unwrap_or("nobody"),
            ms(o.longest_gap)
        ));
        say(&format!(
            "   {} of {} API requests failed; kubectl failed {} of {} times; requests {}.",
            o.failed_requests,
            o.requests,
            o.kubectl_failures,
            o.kubectl_runs,
            if o.recovered {
                "go on normally"
            } else {
                "HAVE STOPPED"
            }
        ));
        say(&format!("   ({} is back as a follower.)", o.old_holder));
    }
    say("\nDone. Removing the lab.");
    drop(c);
    Ok(())
}

async fn bench_failover(vipd: PathBuf, rounds: usize, nodes: usize) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let vip: IpAddr = "192.0.2.100".parse()?;
    let (mut c, _) = lease_cluster(env(), nodes, &[vip], &vipd, &[]).await?;
    say(&format!("Lease mode (lease 4 s, renew deadline 2.5 s, retry 0.5 s), {nodes} nodes, {rounds} rounds each."));
    say("| disruption | takeover median | takeover worst | client outage median | client outage worst | max holders |");
    say("|---|---|---|---|---|---|");
    for what in [Disruption::Term, Disruption::Kill, Disruption::LinkDown] {
        let mut takeovers = Vec::new();
        let mut outages = Vec::new();
        let mut holders = 0;
        for _ in 0..rounds {
            let (o, old) = c
                .disrupt(what, Duration::from_secs(15), Duration::from_millis(300))
                .await?;
            takeovers.push(o.takeover);
            outages.push(o.outage);
            holders = holders.max(o.max_holders);
            c.restore(what, old).await?;
            // Let the restored node settle as a follower.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (tm, tw) = median_worst(&takeovers);
        let (om, ow) = median_worst(&outages);
        say(&format!(
            "| {what:?} | {tm:.0} ms | {tw:.0} ms | {om:.0} ms | {ow:.0} ms | {holders} |"
        ));
    }
    Ok(())
}
