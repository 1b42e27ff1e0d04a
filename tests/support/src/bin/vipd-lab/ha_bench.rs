//! `vipd-lab bench ha`: the longest time a client of `https://VIP:6443` had
//! no answer, per scenario, on the HA cluster lab, in Lease and Raft mode.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use vipd_testkit::failover::median_worst;
use vipd_testkit::ha::{HaCluster, HaScenario, Mode};

pub fn run(vipd: &Path, rounds: usize, stop: &AtomicBool) -> Result<()> {
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
    for mode in [Mode::Lease, Mode::Raft] {
        println!("{mode:?} mode: starting the cluster ...");
        let mut c = HaCluster::start(3, mode, vipd, &[])?;
        for (what, label) in scenarios {
            let mut gaps = Vec::new();
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
            }
            println!(
                "  {label}: {:?}",
                gaps.iter().map(|g| g.as_millis()).collect::<Vec<_>>()
            );
            rows.push((mode, label, gaps, failed, kubectl_failed, kubectl_runs));
        }
    }
    println!("\n| mode | scenario | longest gap median | longest gap worst | requests stopped for good | kubectl failures |");
    println!("|---|---|---|---|---|---|");
    for (mode, label, gaps, failed, kf, kr) in rows {
        let (m, w) = median_worst(&gaps);
        println!("| {mode:?} | {label} | {m:.0} ms | {w:.0} ms | {failed} of {} rounds | {kf} of {kr} runs |", gaps.len());
    }
    Ok(())
}
