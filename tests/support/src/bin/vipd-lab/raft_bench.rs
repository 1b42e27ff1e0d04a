//! `vipd-lab bench raft`: vipd's Raft election side by side with keepalived
//! (VRRPv3, Debian's package) at `advert_int` 1 s and 0.1 s, on the same
//! lab, in the same run. No API server is involved.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use vipd_testkit::failover::{keepalived_lab, median_worst, Disruption, RaftLab};

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

pub fn run(vipd: &Path, rounds: usize, nodes: usize, stop: &AtomicBool) -> Result<()> {
    let vip: IpAddr = "192.0.2.100".parse()?;
    let mut rows = Vec::new();
    type Make<'a> = Box<dyn Fn() -> Result<RaftLab> + 'a>;
    type System<'a> = (String, Make<'a>, Vec<(&'static str, Disruption)>);
    let systems: Vec<System> = vec![
        (
            "vipd Raft (tick 50 ms, heartbeat 100 ms, election 400 ms)".into(),
            Box::new(|| RaftLab::start(nodes, vip, vipd, &[])),
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
    for (name, make, disruptions) in systems {
        for (label, what) in disruptions {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            println!("{name}: {label} x{rounds} ...");
            let mut lab = make()?;
            let (t, o, h, failed) = measure(&mut lab, what, rounds, stop)?;
            rows.push(Row {
                system: name.clone(),
                disruption: label,
                takeovers: t,
                outages: o,
                max_holders: h,
                failed,
            });
            drop(lab);
        }
    }
    println!("\n| system | disruption | takeover median | takeover worst | client outage median | client outage worst | max holders | rounds without takeover in 15 s |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (tm, tw) = median_worst(&r.takeovers);
        let (om, ow) = median_worst(&r.outages);
        println!(
            "| {} | {} | {tm:.0} ms | {tw:.0} ms | {om:.0} ms | {ow:.0} ms | {} | {} of {} |",
            r.system,
            r.disruption,
            r.max_holders,
            r.failed,
            r.failed + r.takeovers.len()
        );
    }
    Ok(())
}
