//! LoadBalancer Services: vipd as the cluster's LoadBalancer controller
//! (K3s with `--disable servicelb`), kube-vip compatible.
//!
//! Every node runs the same loop, woken by any change in its caches:
//! 1. the Services leader (one cluster-wide Lease) decides each served
//!    Service's addresses ([`allocate`]) and writes them: the annotation for
//!    pool allocations (so they survive restarts), `status.loadBalancer.ingress`,
//!    and an Event for every assignment and every problem;
//! 2. every node reads the addresses back from the Services' status and
//!    works out who may announce each ([`eligibility`]): unrestricted
//!    addresses are announced by the leader, the others (and all of them
//!    with `svc_election`) under a Lease of their own ([`address_leases`]);
//! 3. the announcer writes `kube-vip.io/vipHost`.
//!
//! The address [`guard`] runs at steps 1 and 2: the leader never assigns an
//! address that is a node's, a control-plane VIP or a gateway, and every
//! node refuses such an address again before it claims it, whoever wrote it
//! into a Service's status.
//!
//! Claims on addresses go to the address owner (`vips`), which does the
//! kernel and the wire; a Service that is deleted or stops being a
//! LoadBalancer drops out of step 2 and its address is withdrawn at once.
//!
//! Every decision of a pass is in [`pass`] (pure); the loop here gathers
//! its snapshot from the informers and applies what it returns.

pub mod address_leases;
pub mod allocate;
pub mod cache;
pub mod eligibility;
pub mod guard;
pub mod heir;
pub mod informers;
mod inputs;
mod leader;
pub mod model;
pub mod pass;
pub mod peer_links;
pub mod placement;
pub mod pools;
pub mod trim;
pub mod write_queue;
pub mod writer;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::config::{ServicesConfig, Subnets};
use crate::election::LeaseElection;
use crate::events::Events;
use crate::status::Status;
use crate::vips::{Source, VipHandle};
use address_leases::AddressLeases;
use guard::HostFacts;
use heir::StandIn;
use informers::Informers;
use leader::{Grant, Granting, ServicesLeadership};
use model::{add_ready_nodes, ClassFilter, NodeInfo, ReadyNodes, Svc};
use pass::{Memory, NodeSettings, Snapshot};
use placement::Placement;
use pools::Pools;
use writer::Writer;

/// Everything the controller needs from the manager.
pub struct Context {
    pub client: Client,
    /// A connection of its own for the Services Lease and per-address Leases.
    pub election_client: Client,
    pub config: ServicesConfig,
    pub me: String,
    /// Interface when nothing more specific is asked for.
    pub default_interface: String,
    pub subnets: Subnets,
    pub vips: VipHandle,
    pub events: Arc<Events>,
    pub status: Arc<Status>,
    /// BGP mode: every eligible node announces; these are the default attributes.
    pub bgp: Option<vipd_bgp::RouteAttrs>,
    /// This vipd's control-plane VIPs (resolved): never a Service's.
    pub control_plane_vips: Vec<IpAddr>,
    /// The API server address vipd talks to, when it is an IP.
    pub api_server: Option<IpAddr>,
    /// vipd's namespace: the instance records other vipds publish.
    pub instance_namespace: String,
    /// To read this host's own addresses, gateways and subnets.
    pub netlink: crate::netlink::Netlink,
}

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: watch::Receiver<bool>) {
    let informers = Informers::start(&ctx.client, &ctx.config, &ctx.instance_namespace);
    let (grant, grant_rx) = watch::channel(None);
    let (acquire_delay, acquire_delay_rx) = watch::channel(Duration::ZERO);
    let (leader_seen_tx, leader_seen) = watch::channel(None);
    let election = LeaseElection {
        api: Api::namespaced(ctx.election_client.clone(), &ctx.config.lease.namespace),
        name: ctx.config.lease.name.clone(),
        me: ctx.me.clone(),
        timing: ctx.config.leader_timing,
        acquire_delay: acquire_delay_rx,
        labels: Default::default(),
    };
    let (addr_tx, addr_rx) = mpsc::unbounded_channel();
    let address_leases = AddressLeases::new(
        ctx.election_client.clone(),
        &ctx.config.lease.namespace,
        &ctx.me,
        ctx.config.lease.timing,
        ctx.vips.clone(),
        addr_tx.clone(),
    );
    // Placement: this node's liveness Lease, on the elections' connection.
    let placement = ctx.config.placement.then(|| {
        Placement::start(
            ctx.election_client.clone(),
            &ctx.config.lease.namespace,
            &ctx.me,
            ctx.config.liveness,
            ctx.config.peer_links,
            ctx.vips.clone(),
            addr_tx,
        )
    });
    let writer = Writer::new(ctx.client.clone(), ctx.events.clone());
    let filter = ClassFilter {
        class_name: ctx.config.class_name.clone(),
        class_only: ctx.config.class_only,
        namespace: ctx.config.namespace.clone(),
    };
    let settings = NodeSettings {
        me: ctx.me.clone(),
        bgp: ctx.bgp.clone(),
        per_address_election: ctx.config.per_address_election,
        subnets: ctx.subnets,
        interface: ctx.config.interface.clone(),
        default_interface: ctx.default_interface.clone(),
    };
    let mut c = Controller {
        ctx,
        settings,
        informers,
        leader_rx: grant_rx,
        leader_seen,
        acquire_delay,
        stand_in: StandIn::Nobody,
        address_leases,
        placement,
        writer,
        filter,
        pools: Pools::default(),
        pools_version: None,
        memory: Memory::default(),
        reconciles: 0,
        last_reconcile: Duration::ZERO,
        host: HostFacts::default(),
        host_read_at: None,
        gc_at: None,
        asked_before: BTreeSet::new(),
        live_before: None,
        lead_before: None,
        gc_pass_at: None,
        retry_at: None,
    };
    info!("Services: waiting for the first lists of Services, EndpointSlices, Nodes and pools");
    c.informers.ready().await;
    info!("Services: caches ready");
    let heir_follows_links = c.placement.is_some() && c.ctx.config.peer_links;
    let leadership = ServicesLeadership {
        granting: Granting {
            source: Source::ServicesLeader,
            // Not asked here: the owner checks every Service address on
            // the wire before adding it (`Source::always_probes`).
            probe_first: false,
            // Followed by the others' links, a dead leader's addresses are
            // taken over by its heir at once: gone from its node at once
            // too. Otherwise nobody takes them before the Lease expires,
            // and its node keeps serving them until then.
            drop_on_death: heir_follows_links,
            grant,
            vips: c.ctx.vips.clone(),
        },
        me: c.ctx.me.clone(),
        leader_seen: leader_seen_tx,
    };
    let election_task = tokio::spawn(election.run(leadership, shutdown.clone()));
    c.run(addr_rx, shutdown).await;
    let _ = election_task.await;
}

struct Controller {
    ctx: Context,
    settings: NodeSettings,
    informers: Informers,
    /// The Services leader's grant, while this node leads.
    leader_rx: watch::Receiver<Option<Grant>>,
    /// Who last held the Services leader's Lease, as this node saw it.
    leader_seen: watch::Receiver<Option<String>>,
    /// How long this node waits to take a free Services Lease (its heir's
    /// head start, see `heir`).
    acquire_delay: watch::Sender<Duration>,
    /// This node's part as of the last pass, for the log.
    stand_in: StandIn,
    address_leases: AddressLeases,
    /// With `svc_placement`: this node's liveness and placed addresses.
    placement: Option<Placement>,
    writer: Writer,
    filter: ClassFilter,
    /// The last good pools (a bad ConfigMap does not replace them).
    pools: Pools,
    pools_version: Option<String>,
    /// What passes remember from one to the next (see `pass`).
    memory: Memory,
    reconciles: u64,
    last_reconcile: Duration,
    /// This host's own facts for the guard, and when they were read.
    host: HostFacts,
    host_read_at: Option<Instant>,
    /// Leader: when unneeded per-address Leases were last deleted.
    gc_at: Option<Instant>,
    /// Leader: when to pass to delete released per-address Leases.
    gc_pass_at: Option<Instant>,
    /// Every address served Services asked for or held, as of the last pass.
    asked_before: BTreeSet<IpAddr>,
    /// With placement: the live nodes as of the last pass.
    live_before: Option<placement::Live>,
    /// The term of this node's lead as of the last pass.
    lead_before: Option<u64>,
    /// When to pass again because a write failed.
    retry_at: Option<Instant>,
}

/// How often the Services leader deletes per-address Leases nobody needs.
const GC_EVERY: Duration = Duration::from_secs(2);
/// How long after a failed write the next pass writes it again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Controller {
    async fn run(
        &mut self,
        mut addr_rx: mpsc::UnboundedReceiver<()>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut resync = tokio::time::interval(Duration::from_secs(10));
        let retry = self.writer.retry_wanted();
        // A pass reads every Service: it runs when something it reads
        // changed, not on every renewal of a liveness Lease (two a second
        // on three nodes), which changes nothing until a Lease lapses.
        let mut pass = true;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if std::mem::take(&mut pass) {
                self.reconcile().await;
            }
            let lapse = self
                .placement
                .as_ref()
                .and_then(|p| p.next_change(Instant::now()));
            pass = tokio::select! {
                _ = self.informers.changed.notified() => {
                    // Let a burst of changes land before deciding.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    true
                }
                _ = self.informers.liveness_changed.notified() => self.live_moved(),
                _ = sleep_until(lapse) => self.live_moved(),
                _ = self.informers.leases_changed.notified() => {
                    self.address_leases.feed(&self.informers.address_leases);
                    // The leader deletes released per-address Leases in a
                    // pass, at most every GC_EVERY.
                    if self.leader_grant().is_some() {
                        let due = self.gc_at.map_or(Instant::now(), |t| t + GC_EVERY);
                        self.gc_pass_at.get_or_insert(due);
                    }
                    false
                }
                _ = sleep_until(self.gc_pass_at) => {
                    self.gc_pass_at = None;
                    true
                }
                _ = retry.notified() => {
                    self.retry_at.get_or_insert(Instant::now() + RETRY_AFTER);
                    false
                }
                _ = sleep_until(self.retry_at) => {
                    self.retry_at = None;
                    true
                }
                // Renewals move the grant's deadline only: a pass when
                // the lead starts or ends.
                _ = self.leader_rx.changed() => self.lead_moved(),
                _ = self.leader_seen.changed() => true,
                Some(()) = addr_rx.recv() => true,
                _ = resync.tick() => {
                    self.host_read_at = None;
                    crate::memory::give_back();
                    true
                }
                _ = shutdown.changed() => true,
            };
        }
        self.address_leases.shutdown().await;
        if let Some(p) = self.placement.take() {
            p.shutdown().await;
        }
    }

    /// This node's part while the Services leader may be dead (ARP/NDP
    /// only: with BGP every eligible node announces anyway); sets the
    /// election's head start and logs every change.
    fn stand_in(&mut self, live: Option<&placement::Live>) -> StandIn {
        let leader = self.leader_seen.borrow().clone();
        let part = match live {
            Some(l) if self.ctx.bgp.is_none() => {
                heir::stand_in(&self.settings.me, leader.as_deref(), l)
            }
            _ => StandIn::Nobody,
        };
        self.acquire_delay.send_if_modified(|d| {
            let changed = *d != part.acquire_delay();
            *d = part.acquire_delay();
            changed
        });
        if part != self.stand_in {
            let leader = leader.unwrap_or_default();
            match part {
                StandIn::Heir { by_link } => info!(
                    %leader,
                    by = if by_link { "link" } else { "liveness Lease" },
                    "the Services leader is dead: holding its addresses as its heir until its Lease runs out"
                ),
                StandIn::Other => {
                    info!(%leader, "the Services leader is dead: leaving its Lease to its heir first")
                }
                StandIn::Nobody => info!(%leader, "no longer standing in for the Services leader"),
            }
            self.stand_in = part;
        }
        part
    }

    /// Whether the live nodes differ from the last pass's (a liveness Lease
    /// lapsed or came back); every renewal is recorded either way, since
    /// expiry counts from the last one seen.
    fn live_moved(&mut self) -> bool {
        let (Some(p), Some(store)) = (self.placement.as_mut(), &self.informers.liveness) else {
            return true;
        };
        let instances = self.informers.instances.state();
        let live = p.live(&store.state(), &instances, Instant::now());
        self.live_before.as_ref() != Some(&live)
    }

    /// Whether this node's lead started, ended or was granted again since
    /// the last pass.
    fn lead_moved(&self) -> bool {
        self.leader_rx.borrow().map(|g| g.term) != self.lead_before
    }

    fn leader_grant(&self) -> Option<Grant> {
        Grant::in_force(*self.leader_rx.borrow())
    }

    async fn reconcile(&mut self) {
        let started = Instant::now();
        self.reconcile_once().await;
        let took = started.elapsed();
        self.reconciles += 1;
        self.last_reconcile = took;
        self.ctx
            .status
            .metrics
            .observe_reconcile(took.as_secs_f64(), self.ctx.config.namespace.as_deref());
    }

    async fn reconcile_once(&mut self) {
        let mut phases = Phases::start();
        self.refresh_pools().await;
        // Built when their watch events arrived (see `cache`).
        let infos: Vec<Svc> = self.informers.services.state();
        // Deleted Services are forgotten by the Event de-duplication and
        // the write failure counts.
        let live: std::collections::HashSet<String> = infos.iter().map(|i| i.uid.clone()).collect();
        self.ctx.events.forget_absent("Service", &live);
        self.writer.forget_absent(&infos);
        let served: Vec<&Svc> = infos.iter().filter(|i| self.filter.serves(i)).collect();
        let nodes: Vec<NodeInfo> = self
            .informers
            .nodes
            .state()
            .iter()
            .filter_map(|n| NodeInfo::from_node(n))
            .collect();
        let mut ready = ReadyNodes::new();
        for s in self.informers.slices.state() {
            add_ready_nodes(&s, &mut ready);
        }
        // An address no pass has seen yet is judged on this host's facts
        // as they are now, not as they were up to a second ago.
        let asked: BTreeSet<IpAddr> = served.iter().flat_map(|i| i.addresses_asked()).collect();
        if !asked.is_subset(&self.asked_before) {
            self.host_read_at = None;
        }
        self.asked_before = asked;
        self.refresh_host_facts().await;
        let guard = self.guard(&nodes);

        let wall = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let live = match (&mut self.placement, &self.informers.liveness) {
            (Some(p), Some(store)) => {
                let instances = self.informers.instances.state();
                Some(p.live(&store.state(), &instances, Instant::now()))
            }
            _ => None,
        };
        self.live_before = live.clone();
        self.lead_before = self.leader_rx.borrow().map(|g| g.term);
        let stand_in = self.stand_in(live.as_ref());
        let snapshot = Snapshot {
            live: live.as_ref().map(|l| &l.nodes),
            suspect: live.as_ref().map(|l| &l.suspect),
            stand_in,
            wall: &wall,
            infos: &infos,
            served: &served,
            nodes: &nodes,
            ready: &ready,
            pools: &self.pools,
            guard: &guard,
            leading: self.leader_grant().is_some(),
            node: &self.settings,
        };
        phases.mark("gather");
        let decision = pass::decide(&snapshot, &mut self.memory, Instant::now());
        phases.mark("decide");

        let mut announced: BTreeSet<IpAddr> = BTreeSet::new();
        if self.ctx.bgp.is_some() {
            announced.extend(decision.bgp_claims.iter().map(|c| c.addr));
            self.ctx
                .vips
                .set(Source::ServicesBgp, decision.bgp_claims.clone(), None)
                .await;
        } else {
            self.address_leases
                .set(decision.wants.clone(), &self.informers.address_leases);
            let grant = *self.leader_rx.borrow();
            let claims = decision.leader_claims.clone();
            announced.extend(
                leader::claim_under(&self.ctx.vips, Source::ServicesLeader, grant, claims).await,
            );
            announced.extend(self.address_leases.leading());
            if let Some(p) = self.placement.as_mut() {
                announced.extend(p.set(decision.placed.clone()).await.iter().map(|c| c.addr));
            }
            if self.leader_grant().is_some() && self.gc_at.is_none_or(|t| t.elapsed() > GC_EVERY) {
                self.gc_at = Some(Instant::now());
                let in_use: BTreeSet<IpAddr> = decision
                    .plans
                    .iter()
                    .chain(&decision.refused)
                    .map(|p| p.addr)
                    .collect();
                self.address_leases
                    .collect_garbage(&self.informers.address_leases, &in_use)
                    .await;
            }
        }
        phases.mark("claim");
        let mut changes = pass::announcements(&snapshot, &decision, &announced);
        let mut summary = pass::summary(&snapshot, &self.memory, &decision, &announced);
        changes.extend(decision.changes);
        self.writer.apply(changes);
        summary.reconcile_errors = self.writer.failures();
        summary.reconcile_errors_by_service = self.writer.failures_by_service();
        summary.watch_events = self.informers.service_events.counts();
        summary.reconciles = self.reconciles;
        if let Some(p) = &self.placement {
            summary.peer_links = p
                .links()
                .into_iter()
                .map(|(node, l)| {
                    let state = if l.up {
                        "up".to_string()
                    } else {
                        format!("down: {}", l.why)
                    };
                    (node, state)
                })
                .collect();
        }
        summary.services_version = infos
            .iter()
            .filter_map(|i| i.resource_version.parse().ok())
            .max()
            .unwrap_or(0);
        summary.last_reconcile_ms = self.last_reconcile.as_secs_f64() * 1000.0;
        self.ctx.status.set_services(summary);
        phases.mark("write");
        phases.log_if_slow(served.len());
    }
}

/// Where a Services pass spent its time, logged (debug) when it was slow.
struct Phases {
    last: Instant,
    took: Vec<(&'static str, Duration)>,
}

/// A pass slower than this is logged with its phases.
const SLOW_PASS: Duration = Duration::from_millis(50);

impl Phases {
    fn start() -> Phases {
        Phases {
            last: Instant::now(),
            took: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.took.push((phase, now - self.last));
        self.last = now;
    }

    fn log_if_slow(&self, served: usize) {
        let total: Duration = self.took.iter().map(|(_, d)| *d).sum();
        if total >= SLOW_PASS {
            let phases: Vec<String> = self
                .took
                .iter()
                .map(|(p, d)| format!("{p} {:.1} ms", d.as_secs_f64() * 1000.0))
                .collect();
            tracing::debug!(served, took = ?total, phases = %phases.join(", "), "slow Services pass");
        }
    }
}

/// Sleeps until `t`; forever when None.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => futures::future::pending().await,
    }
}
