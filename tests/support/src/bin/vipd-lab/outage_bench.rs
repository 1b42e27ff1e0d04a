//! `vipd-lab bench outage`: what a control-plane outage does to the data
//! plane. The API server frozen (SIGSTOP) for `freeze`: the client's
//! longest gap on the control-plane VIP and on a Service address, with
//! holding (the default) and strict (`vip_hold_on_api_loss=false`); then
//! the VIP's holder cut off from the API server only: takeover time and how
//! long two nodes held the VIP.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use vipd_testkit::failover::median_worst;
use vipd_testkit::outage::{cluster, cut_holder_off, freeze_api};

pub async fn run(
    vipd: &Path,
    rounds: usize,
    freeze: Duration,
    stop: &'static AtomicBool,
) -> Result<()> {
    let env = vipd_testkit::apiserver::env();
    let mut rows = Vec::new();
    for (label, extra) in [
        ("holding (default)", vec![]),
        (
            "holding, per-address Leases",
            vec![("svc_election", "true")],
        ),
        (
            "strict (vip_hold_on_api_loss=false)",
            vec![("vip_hold_on_api_loss", "false")],
        ),
    ] {
        let (nodes, _ns) = cluster(env, vipd, &extra).await;
        let (mut vip, mut svc, mut moved) = (Vec::new(), Vec::new(), 0);
        for round in 0..rounds {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let o = freeze_api(env, &nodes, freeze).await;
            println!(
                "  {label} #{}: VIP gap {:?}, Service gap {:?}",
                round + 1,
                o.vip_outage,
                o.svc_outage
            );
            if o.vip_holders.len() > 1 || o.svc_holders.len() > 1 {
                moved += 1;
            }
            vip.push(o.vip_outage);
            svc.push(o.svc_outage);
        }
        rows.push((label, vip, svc, moved));
    }
    let (nodes, _ns) = cluster(env, vipd, &[]).await;
    let (mut takeover, mut overlap, mut stayed) = (Vec::new(), Vec::new(), 0);
    for round in 0..rounds {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let o = cut_holder_off(env, &nodes).await?;
        println!(
            "  cut #{}: {} -> {} in {:?}, two holders for {:?}",
            round + 1,
            o.old,
            o.new,
            o.takeover,
            o.overlap
        );
        takeover.push(o.takeover);
        overlap.push(o.overlap);
        stayed += usize::from(o.stayed);
        // Let the old holder see its loss before the next round.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "\nAPI server frozen {} s, {rounds} rounds:\n",
        freeze.as_secs()
    );
    println!("| mode | VIP gap median | VIP gap worst | Service gap median | Service gap worst | rounds where an address moved |");
    println!("|---|---|---|---|---|---|");
    for (label, vip, svc, moved) in rows {
        let (vm, vw) = median_worst(&vip);
        let (sm, sw) = median_worst(&svc);
        println!(
            "| {label} | {vm:.0} ms | {vw:.0} ms | {sm:.0} ms | {sw:.0} ms | {moved} of {} |",
            vip.len()
        );
    }
    let (tm, tw) = median_worst(&takeover);
    let (om, ow) = median_worst(&overlap);
    println!("\nThe holder cut off from the API server, {rounds} rounds: takeover median {tm:.0} ms, worst {tw:.0} ms; two holders median {om:.0} ms, worst {ow:.0} ms; stayed with the new holder after the cut healed: {stayed} of {}", takeover.len());
    Ok(())
}
