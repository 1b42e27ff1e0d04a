//! The Raft log stays small: three real nodes on loopback (real TCP, the
//! real Noise transport, state files on disk) go through many leadership
//! handovers; each node's state file keeps a bounded number of entries, and
//! a node that was down meanwhile catches up from a snapshot and can lead.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::sync::watch;
use vipd_raft::{LeaderEvent, Peers, RaftConfig, Secret, Told};

/// Whether the node leads, as its Raft loop tells.
#[derive(Clone, Default)]
struct Leading(Arc<Mutex<bool>>);

impl Leading {
    async fn follow(self, mut told: mpsc::UnboundedReceiver<Told>) {
        while let Some(Told { event, done }) = told.recv().await {
            match event {
                LeaderEvent::Started { .. } => *self.0.lock().unwrap() = true,
                LeaderEvent::Stopped => *self.0.lock().unwrap() = false,
                _ => {}
            }
            let _ = done.send(());
        }
    }
}

struct Node {
    cfg: RaftConfig,
    leading: Leading,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    fn start(&mut self) {
        let (stop, rx) = watch::channel(false);
        let cfg = self.cfg.clone();
        let leading = self.leading.clone();
        self.task = Some(tokio::spawn(async move {
            let (events, told) = mpsc::unbounded_channel();
            let (result, ()) = tokio::join!(vipd_raft::run(cfg, events, rx), leading.follow(told));
            result.unwrap();
        }));
        self.stop = Some(stop);
    }

    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        *self.leading.0.lock().unwrap() = false;
    }

    fn entries(&self) -> usize {
        let text = std::fs::read_to_string(self.cfg.state_dir.join("raft-state.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["entries"].as_array().unwrap().len()
    }

    fn term(&self) -> u64 {
        let text = std::fs::read_to_string(self.cfg.state_dir.join("raft-state.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["term"]
            .as_u64()
            .unwrap()
    }
}

async fn leader(nodes: &[Node], among: &[usize], timeout: Duration) -> usize {
    let t0 = Instant::now();
    loop {
        let l: Vec<usize> = among
            .iter()
            .copied()
            .filter(|i| *nodes[*i].leading.0.lock().unwrap())
            .collect();
        if l.len() == 1 {
            return l[0];
        }
        assert!(
            t0.elapsed() < timeout,
            "no single leader among {among:?} after {timeout:?}: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_small_and_a_late_node_catches_up_by_snapshot() {
    let base = 20000 + (std::process::id() % 20000) as u16;
    let peers = Peers::parse(&format!(
        "n1=127.0.0.1:{},n2=127.0.0.1:{},n3=127.0.0.1:{}",
        base,
        base + 1,
        base + 2
    ))
    .unwrap();
    let root = std::env::temp_dir().join(format!("vipd-raft-compaction-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let secret = Secret::from_bytes(b"a-test-secret-that-is-long-enough").unwrap();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node {
            cfg: RaftConfig {
                me: format!("n{i}"),
                peers: peers.clone(),
                tick: Duration::from_millis(20),
                heartbeat_ticks: 2,
                election_ticks: 8,
                state_dir: PathBuf::from(&root).join(format!("n{i}")),
                secret: secret.clone(),
                compact_after: 4,
            },
            leading: Leading::default(),
            stop: None,
            task: None,
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    let all = [0, 1, 2];
    leader(&nodes, &all, Duration::from_secs(10)).await;
    // n1 goes down; n2 and n3 hand leadership back and forth: a new term,
    // and a new log entry, each time. (n1 is the late one: the first in the
    // peer list has the highest election priority, so once caught up it
    // wins the next election among equals.)
    nodes[0].stop().await;
    for _ in 0..20 {
        let l = leader(&nodes, &[1, 2], Duration::from_secs(10)).await;
        nodes[l].stop().await;
        nodes[l].start();
        leader(&nodes, &[1, 2], Duration::from_secs(10)).await;
    }
    let term = nodes[1].term().max(nodes[2].term());
    assert!(term >= 20, "only {term} terms");
    for n in &nodes[1..] {
        assert!(
            n.entries() <= 4 + 16 + 2,
            "{} keeps {} entries after {term} terms",
            n.cfg.me,
            n.entries()
        );
    }
    // n1 comes back far behind the compacted log: it catches up from a
    // snapshot, and can then lead.
    nodes[0].start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        nodes[0].term() >= term,
        "n1 did not catch up: term {}",
        nodes[0].term()
    );
    for _ in 0..10 {
        let l = leader(&nodes, &all, Duration::from_secs(10)).await;
        if l == 0 {
            break;
        }
        nodes[l].stop().await;
        nodes[l].start();
    }
    let l = leader(&nodes, &all, Duration::from_secs(10)).await;
    assert_eq!(l, 0, "n1 never led after catching up");
    for n in nodes.iter_mut() {
        n.stop().await;
    }
    let _ = std::fs::remove_dir_all(&root);
}
