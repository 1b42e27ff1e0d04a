//! A Raft soak: the cluster left alone for a while under load and loss,
//! and what should not happen counted. Both cores are saturated by
//! stress-ng (Debian's) and a share of the frames between the nodes is
//! dropped on the switch (nftables' `numgen random` in the bridge family;
//! this kernel has no netem, so there is no delay emulation). A client
//! connects to the VIP every 10 ms and every node's interface is sampled
//! every 20 ms.
//!
//! The client's own traffic is spared the loss (a lost SYN would count as
//! a gap vipd did not cause), and the measuring threads of the test
//! process (client prober, the nodes' responders) run at nice -15, ahead
//! of vipd (-10, its Raft default) and stress-ng (0), so a failed probe
//! means the VIP did not answer, not that the instrument was starved.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::failover::RaftLab;
use crate::lab::SwitchFilter;
use crate::probe::{HolderSampler, Prober};

/// What a soak showed.
#[derive(Debug, Clone)]
pub struct SoakOutcome {
    pub duration: Duration,
    /// Samples whose set of holders differs from the previous sample's.
    pub holder_changes: usize,
    /// The most nodes seen holding the VIP in one sample.
    pub max_holders: usize,
    /// Samples in which nobody held the VIP.
    pub unheld_samples: usize,
    pub probes: usize,
    pub failed_probes: usize,
    pub longest_gap: Duration,
    /// "became the Raft leader" lines logged during the soak.
    pub elections_won: usize,
    /// Frames the switch dropped (the loss rule's counter).
    pub dropped_frames: u64,
    /// CPU time each vipd used during the soak, in percent of one core.
    pub vipd_cpu_percent: Vec<f64>,
}

/// User + system CPU time of process `pid` (its threads included), in
/// clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

/// stress-ng on every core, killed when dropped.
struct Stress(Child);

impl Stress {
    fn start(duration: Duration) -> Result<Stress> {
        let child = Command::new("stress-ng")
            .args([
                "--cpu",
                "0",
                "--cpu-load",
                "100",
                "--timeout",
                &format!("{}s", duration.as_secs() + 5),
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start stress-ng (scripts/setup.sh installs it)")?;
        Ok(Stress(child))
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        // stress-ng's workers are its children, in its process group.
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.0.wait();
    }
}

/// This process's threads at nice -15 until dropped (then 0 again, so
/// the vipd processes a later test starts do not inherit it).
struct Favoured;

impl Favoured {
    fn start() -> Favoured {
        renice_self(-15);
        Favoured
    }
}

impl Drop for Favoured {
    fn drop(&mut self) {
        renice_self(0);
    }
}

/// Every thread of this process at nice `n` (Linux: nice is per thread;
/// threads started later inherit it from their creator).
fn renice_self(n: i32) {
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() {
                // SAFETY: setpriority on one of our own threads.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, n) };
            }
        }
    }
}

fn count_in_logs(lab: &RaftLab, needle: &str) -> usize {
    lab.cluster
        .nodes
        .iter()
        .map(|n| {
            std::fs::read_to_string(n.log_path())
                .map(|l| l.matches(needle).count())
                .unwrap_or(0)
        })
        .sum()
}

/// Soaks `lab` for `duration` with `loss_percent` of the frames between
/// its nodes dropped and, when `stress`, every core saturated.
pub fn raft_soak(
    lab: &mut RaftLab,
    duration: Duration,
    loss_percent: u32,
    stress: bool,
) -> Result<SoakOutcome> {
    lab.rt
        .block_on(lab.cluster.wait_stable(Duration::from_secs(30)))?;
    let _favoured = Favoured::start();
    let ports: Vec<String> = lab
        .cluster
        .nodes
        .iter()
        .map(|n| format!("\"p{}\"", n.name()))
        .collect();
    let ports = ports.join(", ");
    let rule = format!(
        "iifname {{ {ports} }} oifname {{ {ports} }} numgen random mod 100 < {loss_percent} counter drop"
    );
    let loss = SwitchFilter::install(&lab.cluster.nodes[0].host, "vipdsoak", &[&rule])?;
    let _stress = if stress {
        Some(Stress::start(duration)?)
    } else {
        None
    };
    let won_before = count_in_logs(lab, "became the Raft leader");
    let pids: Vec<u32> = lab
        .cluster
        .nodes
        .iter()
        .filter_map(|n| n.proc.as_ref().and_then(|p| p.pid()))
        .collect();
    let cpu_before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let c = &lab.cluster;
    let hosts: Vec<&crate::lab::Host> = c.nodes.iter().map(|n| &n.host).collect();
    let (samples, holders) = lab.rt.block_on(async {
        let prober = Prober::start(&c.client, c.target(), Duration::from_millis(10));
        let sampler = HolderSampler::start(&hosts, c.vip, Duration::from_millis(20));
        tokio::time::sleep(duration).await;
        (prober.finish(), sampler.finish().await)
    });
    let holder_changes = holders
        .windows(2)
        .filter(|w| w[0].holders != w[1].holders)
        .count();
    Ok(SoakOutcome {
        duration,
        holder_changes,
        max_holders: holders.iter().map(|s| s.holders.len()).max().unwrap_or(0),
        unheld_samples: holders.iter().filter(|s| s.holders.is_empty()).count(),
        probes: samples.0.len(),
        failed_probes: samples.0.iter().filter(|s| s.answer.is_none()).count(),
        longest_gap: samples.longest_outage(),
        elections_won: count_in_logs(lab, "became the Raft leader") - won_before,
        dropped_frames: loss.counted(),
        vipd_cpu_percent: pids
            .iter()
            .zip(cpu_before)
            .map(|(p, before)| {
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                (cpu_ticks(*p).saturating_sub(before)) as f64 / hz / duration.as_secs_f64() * 100.0
            })
            .collect(),
    })
}
