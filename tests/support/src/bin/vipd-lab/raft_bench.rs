//! `vipd-lab bench raft`: vipd's Raft election side by side with keepalived
//! (VRRPv3, Debian's package) at `advert_int` 1 s and 0.1 s, on the same
//! lab, in the same run. No API server is involved.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use vipd_testkit::failover::{keepalived_lab, median_worst, percentile, Disruption, RaftLab};

struct Row {
    system: String,
    disruption: &'static str,
    takeovers: Vec<Duration>,
    outages: Vec<Duration>,
    max_holders: usize,
    failed: usize,
}

/// Takeovers, outages, most holders seen, rounds in which nobody took over
/// within 15 s (counted, not fatal: that is a result too).
fn measure(
    lab: &mut RaftLab,
    what: Disruption,
    rounds: usize,
    stop: &AtomicBool,
) -> Result<(Vec<Duration>, Vec<Duration>, usize, usize)> {
    let (mut t, mut o, mut h, mut failed) = (Vec::new(), Vec::new(), 0, 0);
    let c = &mut lab.cluster;
    lab.rt.block_on(async {
        c.wait_stable(Duration::from_secs(30)).await?;
        for _ in 0..rounds {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let holder = c.wait_stable(Duration::from_secs(30)).await?;
            match c
                .disrupt(what, Duration::from_secs(15), Duration::from_millis(300))
                .await
            {
                Ok((out, old)) => {
                    t.push(out.takeover);
                    o.push(out.outage);
                    h = h.max(out.max_holders);
                    c.restore(what, old).await?;
                }
                Err(e) => {
                    eprintln!(
                        "  round failed: {}",
                        e.to_string().lines().next().unwrap_or("")
                    );
                    failed += 1;
                    c.restore(what, holder).await?;
                }
            }
            // Let the restored node settle as a backup / follower.
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        anyhow::Ok(())
    })?;
    Ok((t, o, h, failed))
}

/// The Raft timing vipd says it runs with (its start-up line, read from
/// the whole log: after a ten-minute soak it is far above the last lines).
fn timing_label(lab: &RaftLab) -> String {
    let log = std::fs::read_to_string(lab.cluster.nodes[0].log_path()).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("Raft election started"))
        .unwrap_or("");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or("?")
            .to_string()
    };
    format!(
        "vipd Raft (heartbeat {}, election timeout {}, randomised up to a quarter more)",
        field("heartbeat="),
        field("election_timeout=")
    )
}

fn settings(set: &[String]) -> Result<Vec<(String, String)>> {
    set.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--set {kv:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// `vipd-lab bench raft-soak`: three Raft nodes under stress-ng and loss.
pub fn soak(vipd: &Path, duration: Duration, loss: u32, set: &[String]) -> Result<()> {
    let vip: IpAddr = "192.0.2.100".parse()?;
    let set = settings(set)?;
    let extra: Vec<(&str, &str)> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut lab = RaftLab::start(3, vip, vipd, &extra)?;
    println!(
        "Raft soak: {} s, both cores saturated by stress-ng, {loss} % of the frames between the nodes dropped ...",
        duration.as_secs()
    );
    let o = vipd_testkit::soak::raft_soak(&mut lab, duration, loss, true)?;
    println!("\n{}", timing_label(&lab));
    println!("| soak | frames dropped | leader changes (elections won) | holder changes | max holders | samples without a holder | probes | failed probes | longest client gap |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} min, stress-ng on both cores, {loss} % loss | {} | {} | {} | {} | {} | {} | {} | {:.0} ms |",
        duration.as_secs() / 60,
        o.dropped_frames,
        o.elections_won,
        o.holder_changes,
        o.max_holders,
        o.unheld_samples,
        o.probes,
        o.failed_probes,
        o.longest_gap.as_secs_f64() * 1000.0
    );
    let cpu: Vec<String> = o
        .vipd_cpu_percent
        .iter()
        .map(|c| format!("{c:.1} %"))
        .collect();
    println!(
        "\nvipd's CPU time during the soak (per node, of one core): {}",
        cpu.join(", ")
    );
    Ok(())
}

pub fn run(
    vipd: &Path,
    rounds: usize,
    nodes: usize,
    set: &[String],
    vipd_only: bool,
    stop: &AtomicBool,
) -> Result<()> {
    let vip: IpAddr = "192.0.2.100".parse()?;
    let set = settings(set)?;
    let extra: Vec<(&str, &str)> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut rows = Vec::new();
    type Make<'a> = Box<dyn Fn() -> Result<RaftLab> + 'a>;
    type System<'a> = (String, Make<'a>, Vec<(&'static str, Disruption)>);
    let mut systems: Vec<System> = vec![
        (
            "vipd Raft".into(),
            Box::new(|| RaftLab::start(nodes, vip, vipd, &extra)),
            vec![
                ("SIGKILL of the daemon", Disruption::Kill),
                ("SIGKILL of all its processes", Disruption::KillAll),
                ("link down", Disruption::LinkDown),
            ],
        ),
        (
            "keepalived VRRPv3, advert_int 1".into(),
            Box::new(|| keepalived_lab(nodes, vip, "1")),
            vec![
                ("SIGKILL of all its processes", Disruption::KillAll),
                ("link down", Disruption::LinkDown),
            ],
        ),
        (
            "keepalived VRRPv3, advert_int 0.1".into(),
            Box::new(|| keepalived_lab(nodes, vip, "0.1")),
            vec![
                ("SIGKILL of all its processes", Disruption::KillAll),
                ("link down", Disruption::LinkDown),
            ],
        ),
    ];
    if vipd_only {
        systems.truncate(1);
    }
    for (name, make, disruptions) in systems {
        for (label, what) in disruptions {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            println!("{name}: {label} x{rounds} ...");
            let mut lab = make()?;
            let (t, o, h, failed) = measure(&mut lab, what, rounds, stop)?;
            let system = if name == "vipd Raft" {
                timing_label(&lab)
            } else {
                name.clone()
            };
            rows.push(Row {
                system,
                disruption: label,
                takeovers: t,
                outages: o,
                max_holders: h,
                failed,
            });
            drop(lab);
        }
    }
    println!("\n| system | disruption | takeover median | takeover worst | client outage median | client outage p99 | client outage worst | max holders | rounds without takeover in 15 s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (tm, tw) = median_worst(&r.takeovers);
        let (om, ow) = median_worst(&r.outages);
        println!(
            "| {} | {} | {tm:.0} ms | {tw:.0} ms | {om:.0} ms | {:.0} ms | {ow:.0} ms | {} | {} of {} |",
            r.system,
            r.disruption,
            percentile(&r.outages, 99.0),
            r.max_holders,
            r.failed,
            r.failed + r.takeovers.len()
        );
    }
    Ok(())
}
