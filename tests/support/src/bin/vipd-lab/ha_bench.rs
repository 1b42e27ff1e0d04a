//! `vipd-lab bench ha`: the longest time a client of `https://VIP:6443` had
//! no answer, per scenario, on the HA cluster lab, in Lease and Raft mode.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use vipd_testkit::failover::median_worst;
use vipd_testkit::ha::{HaCluster, HaScenario, Mode};

pub fn run(vipd: &Path, rounds: usize, only: &str, stop: &AtomicBool) -> Result<()> {
    let scenarios = [
        (HaScenario::VipdTerm, "SIGTERM of the holder's vipd"),
        (HaScenario::VipdKill, "SIGKILL of the holder's vipd"),
        (HaScenario::NodeDeath, "the holder's whole node dies"),
        (
            HaScenario::RollingRestart,
            "rolling restart of all 3 servers",
        ),
    ];
    let mut rows = Vec::new();
    let modes: Vec<Mode> = match only {
        "lease" => vec![Mode::Lease],
        "raft" => vec![Mode::Raft],
        "both" => vec![Mode::Lease, Mode::Raft],
        other => anyhow::bail!("--mode {other:?}: expected lease, raft or both"),
    };
    for mode in modes {
        println!("{mode:?} mode: starting the cluster ...");
        let mut c = HaCluster::start(3, mode, vipd, &[])?;
        for (what, label) in scenarios {
            let mut gaps = Vec::new();
            // Node deaths, split: with etcd's leader on the dead node or not.
            let (mut with_etcd_leader, mut without) = (Vec::new(), Vec::new());
            let (mut failed, mut kubectl_failed, mut kubectl_runs) = (0, 0, 0);
            for _ in 0..rounds {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let o = c.run_scenario(what)?;
                if !o.recovered {
                    failed += 1;
                }
                kubectl_failed += o.kubectl_failures;
                kubectl_runs += o.kubectl_runs;
                gaps.push(o.longest_gap);
                if what == HaScenario::NodeDeath {
                    if o.etcd_leader.as_deref() == Some(o.old_holder.as_str()) {
                        with_etcd_leader.push(o.longest_gap);
                    } else {
                        without.push(o.longest_gap);
                    }
                }
            }
            println!(
                "  {label}: {:?}",
                gaps.iter().map(|g| g.as_millis()).collect::<Vec<_>>()
            );
            rows.push((
                mode,
                label.to_string(),
                gaps,
                failed,
                kubectl_failed,
                kubectl_runs,
            ));
            if what == HaScenario::NodeDeath {
                for (part, g) in [
                    ("  of which etcd's leader died with it", with_etcd_leader),
                    ("  of which etcd's leader lived", without),
                ] {
                    if !g.is_empty() {
                        rows.push((mode, format!("{label}{part}"), g, 0, 0, 0));
                    }
                }
            }
        }
    }
    println!("\n| mode | scenario | longest gap median | longest gap worst | requests stopped for good | kubectl failures |");
    println!("|---|---|---|---|---|---|");
    for (mode, label, gaps, failed, kf, kr) in rows {
        let (m, w) = median_worst(&gaps);
        if kr == 0 {
            println!(
                "| {mode:?} | {label} ({} rounds) | {m:.0} ms | {w:.0} ms | | |",
                gaps.len()
            );
        } else {
            println!("| {mode:?} | {label} | {m:.0} ms | {w:.0} ms | {failed} of {} rounds | {kf} of {kr} runs |", gaps.len());
        }
    }
    Ok(())
}
