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

pub mod address_leases;
pub mod allocate;
pub mod eligibility;
pub mod guard;
pub mod informers;
pub mod model;
pub mod pools;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::{Api, Client, Resource};
use tokio::sync::{mpsc, watch, Mutex};
use tracing::{info, warn};

use crate::config::{ServicesConfig, Subnets};
use crate::election::{Leadership, LeaseElection};
use crate::events::Events;
use crate::status::{Announced, ServicesSummary, Status};
use crate::vips::{Claim, Source, VipHandle};
use address_leases::{AddressLeases, Want, STAGGER};
use allocate::{allocate, join, Origin};
use eligibility::{plan_addresses, rank, AddressPlan};
use guard::{Guard, HostFacts, NodeAddresses, PublishedFacts};
use informers::Informers;
use model::{add_ready_nodes, keys, ClassFilter, NodeInfo, ReadyNodes, SvcInfo, SvcKey};
use model::{current_ingress, Ingress};
use pools::Pools;
use writer::{Change, Writer};

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

/// The Services leader's state, shared with its election: `hold` is the
/// leader's deadline; `gate` orders claim updates against stepping down, so
/// a claim made with an old deadline can never follow a release.
#[derive(Clone)]
struct LeaderState {
    hold: watch::Sender<Option<Instant>>,
    gate: Arc<Mutex<()>>,
}

struct ServicesLeadership {
    state: LeaderState,
    vips: VipHandle,
}

impl Leadership for ServicesLeadership {
    async fn started(&mut self, hold_until: Instant) {
        info!("became the Services leader: allocating and announcing Service addresses");
        self.state.hold.send_replace(Some(hold_until));
    }

    fn renewed(&mut self, hold_until: Instant) {
        self.state.hold.send_replace(Some(hold_until));
        self.vips.extend(Source::ServicesLeader, hold_until);
    }

    fn holding(&mut self, hold_until: Instant) {
        self.state.hold.send_replace(Some(hold_until));
        self.vips
            .hold_unconfirmed(Source::ServicesLeader, hold_until);
    }

    async fn stopped(&mut self) {
        let _gate = self.state.gate.lock().await;
        self.state.hold.send_replace(None);
        self.vips.release(Source::ServicesLeader).await;
        info!("no longer the Services leader");
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: watch::Receiver<bool>) {
    let informers = Informers::start(&ctx.client, &ctx.config, &ctx.instance_namespace);
    let (hold, hold_rx) = watch::channel(None);
    let leader = LeaderState {
        hold,
        gate: Arc::new(Mutex::new(())),
    };
    let election = LeaseElection {
        api: Api::namespaced(ctx.election_client.clone(), &ctx.config.lease.namespace),
        name: ctx.config.lease.name.clone(),
        me: ctx.me.clone(),
        timing: ctx.config.lease.timing,
        acquire_delay: Duration::ZERO,
        labels: Default::default(),
    };
    let (addr_tx, addr_rx) = mpsc::unbounded_channel();
    let address_leases = AddressLeases::new(
        ctx.election_client.clone(),
        &ctx.config.lease.namespace,
        &ctx.me,
        ctx.config.lease.timing,
        ctx.vips.clone(),
        addr_tx,
    );
    let writer = Writer::new(ctx.client.clone(), ctx.events.clone());
    let filter = ClassFilter {
        class_name: ctx.config.class_name.clone(),
        class_only: ctx.config.class_only,
        namespace: ctx.config.namespace.clone(),
    };
    let mut c = Controller {
        ctx,
        informers,
        leader: leader.clone(),
        leader_rx: hold_rx,
        address_leases,
        writer,
        filter,
        pools: Pools::default(),
        pools_version: None,
        served_before: BTreeMap::new(),
        last_problem: BTreeMap::new(),
        pending_reasons: BTreeMap::new(),
        reconciles: 0,
        host: HostFacts::default(),
        host_read_at: None,
        refused_logged: BTreeSet::new(),
        gc_at: None,
        asked_before: BTreeSet::new(),
        recent_picks: BTreeMap::new(),
    };
    info!("Services: waiting for the first lists of Services, EndpointSlices, Nodes and pools");
    c.informers.ready().await;
    info!("Services: caches ready");
    let leadership = ServicesLeadership {
        state: leader,
        vips: c.ctx.vips.clone(),
    };
    let election_task = tokio::spawn(election.run(leadership, shutdown.clone()));
    c.run(addr_rx, shutdown).await;
    let _ = election_task.await;
}

struct Controller {
    ctx: Context,
    informers: Informers,
    leader: LeaderState,
    leader_rx: watch::Receiver<Option<Instant>>,
    address_leases: AddressLeases,
    writer: Writer,
    filter: ClassFilter,
    /// The last good pools (a bad ConfigMap does not replace them).
    pools: Pools,
    pools_version: Option<String>,
    /// Leader: the addresses each served Service had, to report releases.
    served_before: BTreeMap<SvcKey, Vec<IpAddr>>,
    /// Leader: the last problem logged per Service.
    last_problem: BTreeMap<SvcKey, String>,
    /// Leader: pending Services by reason, as of the last pass.
    pending_reasons: BTreeMap<String, u64>,
    reconciles: u64,
    /// This host's own facts for the guard, and when they were read.
    host: HostFacts,
    host_read_at: Option<Instant>,
    /// Addresses this node refused to claim (logged once each).
    refused_logged: BTreeSet<IpAddr>,
    /// Leader: when unneeded per-address Leases were last deleted.
    gc_at: Option<Instant>,
    /// Every address served Services asked for or held, as of the last pass.
    asked_before: BTreeSet<IpAddr>,
    /// Leader: pool picks whose annotation the cache does not show yet.
    recent_picks: BTreeMap<SvcKey, (Vec<IpAddr>, Instant)>,
}

/// How long a pool pick is remembered while its annotation write lands.
const RECENT_PICK: Duration = Duration::from_secs(30);

/// How often the Services leader deletes per-address Leases nobody needs.
const GC_EVERY: Duration = Duration::from_secs(2);

impl Controller {
    async fn run(
        &mut self,
        mut addr_rx: mpsc::UnboundedReceiver<()>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut resync = tokio::time::interval(Duration::from_secs(10));
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.reconcile().await;
            tokio::select! {
                _ = self.informers.changed.notified() => {
                    // Let a burst of changes land before deciding.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ = self.informers.leases_changed.notified() => {
                    self.address_leases.feed(&self.informers.address_leases);
                    continue;
                }
                _ = self.leader_rx.changed() => {}
                Some(()) = addr_rx.recv() => {}
                _ = resync.tick() => {
                    self.host_read_at = None;
                    crate::memory::give_back();
                }
                _ = shutdown.changed() => {}
            }
        }
        self.address_leases.shutdown().await;
    }

    /// Re-reads this host's addresses, gateways and subnets (at most once
    /// a second; every resync). Failing, the last ones stay.
    async fn refresh_host_facts(&mut self) {
        if self
            .host_read_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        match self.ctx.netlink.host_facts().await {
            Ok(h) => {
                self.host = h;
                self.host_read_at = Some(Instant::now());
            }
            Err(e) => warn!(error = %e, "cannot read this host's addresses for the address guard"),
        }
    }

    /// Every address no Service may have, as this node knows them now.
    fn guard(&self, nodes: &[NodeInfo]) -> Guard {
        let addrs: Vec<NodeAddresses> = nodes
            .iter()
            .map(|n| NodeAddresses {
                name: n.name.clone(),
                internal: n.internal.clone(),
                external: n.external.clone(),
            })
            .collect();
        let published: Vec<PublishedFacts> = self
            .informers
            .instances
            .state()
            .iter()
            .filter_map(|l| crate::instance::published_facts(l))
            .collect();
        Guard::build(
            &self.ctx.control_plane_vips,
            self.ctx.api_server,
            &addrs,
            &published,
            &self.ctx.me,
            Some(&self.host),
        )
    }

    fn leader_hold(&self) -> Option<Instant> {
        self.leader_rx.borrow().filter(|h| *h > Instant::now())
    }

    /// Re-reads the pools when the ConfigMap changed; a bad one is reported
    /// (Event on the ConfigMap, log) and the last good pools stay.
    async fn refresh_pools(&mut self) {
        let cm: Option<Arc<ConfigMap>> = self.informers.pools.state().into_iter().next();
        let version = cm
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone());
        if version == self.pools_version {
            return;
        }
        self.pools_version = version;
        let Some(cm) = cm else {
            self.pools = Pools::default();
            return;
        };
        let data: BTreeMap<String, String> =
            cm.data.clone().unwrap_or_default().into_iter().collect();
        match Pools::parse(&data) {
            Ok(p) => {
                info!(configmap = ?self.ctx.config.pool_configmap, "address pools loaded");
                self.pools = p;
            }
            Err(errors) => {
                let note = format!(
                    "invalid pool configuration, keeping the last good pools: {}",
                    errors.join("; ")
                );
                warn!(configmap = ?self.ctx.config.pool_configmap, "{note}");
                if self.leader_hold().is_some() {
                    self.ctx
                        .events
                        .publish(&cm.object_ref(&()), true, "InvalidPoolConfig", note);
                }
            }
        }
    }

    /// BGP attributes of an address: its first Service's annotations, else
    /// its pool's, else vipd's own settings. A bad annotation is an Event.
    fn route_for(
        &self,
        plan: &AddressPlan,
        by_key: &BTreeMap<&SvcKey, &(Arc<Service>, SvcInfo)>,
        changes: &mut Vec<Change>,
    ) -> vipd_bgp::RouteAttrs {
        let Some(defaults) = &self.ctx.bgp else {
            return Default::default();
        };
        let mut attrs = defaults.clone();
        let ns = plan
            .users
            .first()
            .map(|k| k.namespace.as_str())
            .unwrap_or("");
        let (pool_cs, pool_lp) = self.pools.route_attrs(ns);
        if let Some(cs) = pool_cs {
            attrs.communities = cs.clone();
        }
        if pool_lp.is_some() {
            attrs.local_pref = pool_lp;
        }
        let Some((obj, info)) = plan.users.first().and_then(|k| by_key.get(k)) else {
            return attrs;
        };
        if let Some(v) = &info.bgp_communities {
            let parsed: Result<Vec<u32>, String> = v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(vipd_bgp::route::parse_community)
                .collect();
            match parsed {
                Ok(cs) => attrs.communities = cs,
                Err(e) => changes.push(Change::Event {
                    svc: obj.clone(),
                    warning: true,
                    reason: "InvalidAnnotation",
                    note: format!(
                        "{}={v:?}: {e}; using the pool's communities",
                        keys::BGP_COMMUNITIES
                    ),
                }),
            }
        }
        if let Some(v) = &info.bgp_local_pref {
            match v.trim().parse() {
                Ok(lp) => attrs.local_pref = Some(lp),
                Err(_) => changes.push(Change::Event {
                    svc: obj.clone(),
                    warning: true,
                    reason: "InvalidAnnotation",
                    note: format!(
                        "{}={v:?} is not a number; using the pool's local preference",
                        keys::BGP_LOCAL_PREF
                    ),
                }),
            }
        }
        attrs
    }

    fn interface_for(&self, plan: &AddressPlan) -> String {
        if let Some(i) = &plan.interface {
            return i.clone();
        }
        let ns = plan
            .users
            .first()
            .map(|k| k.namespace.as_str())
            .unwrap_or("");
        if let Some(i) = self.pools.interface(ns) {
            return i.to_string();
        }
        self.ctx
            .config
            .interface
            .clone()
            .unwrap_or_else(|| self.ctx.default_interface.clone())
    }

    async fn reconcile(&mut self) {
        let started = Instant::now();
        self.reconcile_once().await;
        let took = started.elapsed();
        self.reconciles += 1;
        self.ctx
            .status
            .metrics
            .reconcile
            .observe(took.as_secs_f64());
    }

    async fn reconcile_once(&mut self) {
        self.refresh_pools().await;
        let objects: Vec<Arc<Service>> = self.informers.services.state();
        // Deleted Services are forgotten by the Event de-duplication.
        let live: std::collections::HashSet<String> = objects
            .iter()
            .filter_map(|o| o.metadata.uid.clone())
            .collect();
        self.ctx.events.forget_absent("Service", &live);
        let infos: Vec<(Arc<Service>, SvcInfo)> = objects
            .iter()
            .filter_map(|o| SvcInfo::from_service(o).map(|i| (o.clone(), i)))
            .collect();
        let served: Vec<&(Arc<Service>, SvcInfo)> = infos
            .iter()
            .filter(|(_, i)| self.filter.serves(i))
            .collect();
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
        let mut changes = Vec::new();
        // An address no pass has seen yet is judged on this host's facts
        // as they are now, not as they were up to a second ago.
        let asked: BTreeSet<IpAddr> = served
            .iter()
            .flat_map(|(_, i)| i.addresses_asked())
            .collect();
        if !asked.is_subset(&self.asked_before) {
            self.host_read_at = None;
        }
        self.asked_before = asked;
        self.refresh_host_facts().await;
        let guard = self.guard(&nodes);

        if self.leader_hold().is_some() {
            self.decide(&infos, &served, &guard, &mut changes);
        }

        // Announce what the Services' status says, but never what the guard
        // refuses (whoever wrote it there).
        let served_infos: Vec<&SvcInfo> = served.iter().map(|(_, i)| i).collect();
        let by_key: BTreeMap<&SvcKey, &(Arc<Service>, SvcInfo)> =
            served.iter().map(|s| (&s.1.key, *s)).collect();
        let (plans, refused): (Vec<AddressPlan>, Vec<AddressPlan>) =
            plan_addresses(&served_infos, &nodes, &ready)
                .into_iter()
                .partition(|p| !guard.is_forbidden(p.addr));
        self.refuse(&refused, &guard, &by_key, &mut changes);
        let per_address = self.ctx.config.per_address_election;
        let mut leader_claims = Vec::new();
        let mut bgp_claims = Vec::new();
        let mut wants = BTreeMap::new();
        for plan in &plans {
            let claim = Claim {
                route: self.route_for(plan, &by_key, &mut changes),
                addr: plan.addr,
                prefix: self.ctx.subnets.for_ip(plan.addr),
                interface: self.interface_for(plan),
            };
            if self.ctx.bgp.is_some() {
                // BGP: every eligible node announces (ECMP); no election.
                if plan.eligible.allows(&self.ctx.me) {
                    bgp_claims.push(claim);
                }
            } else if plan.own_lease(per_address) {
                if plan.eligible.allows(&self.ctx.me) {
                    let r = rank(&self.ctx.me, plan.addr, &plan.eligible, &nodes);
                    wants.insert(
                        plan.addr,
                        Want {
                            claim,
                            delay: STAGGER * r as u32,
                        },
                    );
                }
            } else {
                leader_claims.push(claim);
            }
        }
        let mut announced: BTreeSet<IpAddr> = BTreeSet::new();
        if self.ctx.bgp.is_some() {
            announced.extend(bgp_claims.iter().map(|c| c.addr));
            self.ctx
                .vips
                .set(Source::ServicesBgp, bgp_claims, None)
                .await;
        } else {
            self.address_leases
                .set(wants, &self.informers.address_leases);
            announced.extend(self.set_leader_claims(leader_claims).await);
            announced.extend(self.address_leases.leading());
            if self.leader_hold().is_some() && self.gc_at.is_none_or(|t| t.elapsed() > GC_EVERY) {
                self.gc_at = Some(Instant::now());
                let in_use: BTreeSet<IpAddr> =
                    plans.iter().chain(&refused).map(|p| p.addr).collect();
                self.address_leases
                    .collect_garbage(&self.informers.address_leases, &in_use)
                    .await;
            }
        }

        // kube-vip.io/vipHost on the Services of the addresses this node
        // announces (ARP: one node per address; BGP: many, so not written).
        for plan in plans.iter().filter(|_| self.ctx.bgp.is_none()) {
            for user in &plan.users {
                let Some((obj, info)) = by_key.get(user) else {
                    continue;
                };
                let host = info.vip_host.as_deref();
                if announced.contains(&plan.addr) && host != Some(self.ctx.me.as_str()) {
                    changes.push(Change::Annotations {
                        svc: obj.clone(),
                        set: vec![(keys::VIP_HOST, Some(self.ctx.me.clone()))],
                    });
                    let (reason, note) = match host {
                        Some(h) if !h.is_empty() => (
                            "AddressMoved",
                            format!("{} moved from {h} to {}", plan.addr, self.ctx.me),
                        ),
                        _ => (
                            "AddressAnnounced",
                            format!("{} announced by {}", plan.addr, self.ctx.me),
                        ),
                    };
                    changes.push(Change::Event {
                        svc: obj.clone(),
                        warning: false,
                        reason,
                        note,
                    });
                } else if plan.eligible.is_none() && host.is_some() && self.leader_hold().is_some()
                {
                    changes.push(Change::Annotations {
                        svc: obj.clone(),
                        set: vec![(keys::VIP_HOST, None)],
                    });
                    changes.push(Change::Event {
                        svc: obj.clone(),
                        warning: true,
                        reason: "NoEligibleNode",
                        note: format!(
                            "{} is withdrawn: no node may announce it (externalTrafficPolicy Local without a ready endpoint, or ServiceLB node labels)",
                            plan.addr
                        ),
                    });
                }
            }
        }
        self.writer.apply(changes).await;
        self.publish_summary(&served_infos, &plans, &refused, &announced);
    }

    /// Addresses in some Service's status that this node will not claim:
    /// logged once each, and an Event on each Service that carries one.
    fn refuse(
        &mut self,
        refused: &[AddressPlan],
        guard: &Guard,
        by_key: &BTreeMap<&SvcKey, &(Arc<Service>, SvcInfo)>,
        changes: &mut Vec<Change>,
    ) {
        let now: BTreeSet<IpAddr> = refused.iter().map(|p| p.addr).collect();
        for plan in refused {
            let why = guard.explain(plan.addr).unwrap_or_default();
            if self.refused_logged.insert(plan.addr) {
                let users: Vec<String> = plan.users.iter().map(|k| k.to_string()).collect();
                warn!(address = %plan.addr, services = ?users, "{why}: refusing to announce it for a Service");
            }
            for user in &plan.users {
                if let Some((obj, _)) = by_key.get(user) {
                    changes.push(Change::Event {
                        svc: obj.clone(),
                        warning: true,
                        reason: "AddressForbidden",
                        note: format!("{why}: not announced (vipd never announces it for a Service; choose another address)"),
                    });
                }
            }
        }
        self.refused_logged.retain(|a| now.contains(a));
    }

    /// What `/status` and `/metrics` say about Services.
    fn publish_summary(
        &self,
        served: &[&SvcInfo],
        plans: &[AddressPlan],
        refused: &[AddressPlan],
        announced: &BTreeSet<IpAddr>,
    ) {
        let withdrawn: BTreeSet<&SvcKey> = plans
            .iter()
            .filter(|p| p.eligible.is_none())
            .chain(refused)
            .flat_map(|p| p.users.iter())
            .collect();
        let pending = served.iter().filter(|s| s.status_ips.is_empty()).count();
        let announced_here = plans
            .iter()
            .filter(|p| announced.contains(&p.addr))
            .map(|p| Announced {
                address: p.addr,
                services: p.users.iter().map(|k| k.to_string()).collect(),
            })
            .collect();
        self.ctx.status.set_services(ServicesSummary {
            served: served.len(),
            ready: served.len() - pending - withdrawn.len(),
            pending,
            withdrawn: withdrawn.len(),
            announced_here,
            problems_by_reason: self.pending_reasons.clone(),
            reconcile_errors: self.writer.failures(),
            reconciles: self.reconciles,
            last_reconcile_ms: 0.0,
        });
    }

    /// Claims the leader's addresses under the leader's deadline, or
    /// withdraws them when not leading; returns the addresses claimed.
    async fn set_leader_claims(&self, claims: Vec<Claim>) -> Vec<IpAddr> {
        let _gate = self.leader.gate.lock().await;
        match self.leader_hold() {
            Some(hold) => {
                let addrs = claims.iter().map(|c| c.addr).collect();
                self.ctx
                    .vips
                    .set(Source::ServicesLeader, claims, Some(hold))
                    .await;
                addrs
            }
            None => {
                self.ctx.vips.release(Source::ServicesLeader).await;
                Vec::new()
            }
        }
    }

    /// The leader's part: every served Service's addresses, written.
    fn decide(
        &mut self,
        infos: &[(Arc<Service>, SvcInfo)],
        served: &[&(Arc<Service>, SvcInfo)],
        guard: &Guard,
        changes: &mut Vec<Change>,
    ) {
        let served_infos: Vec<&SvcInfo> = served.iter().map(|(_, i)| i).collect();
        // Pool picks of recent passes whose annotation is not visible yet.
        self.recent_picks.retain(|k, (ips, at)| {
            at.elapsed() < RECENT_PICK
                && served_infos
                    .iter()
                    .any(|i| i.key == *k && i.requested.as_deref() != Some(join(ips).as_str()))
        });
        let recent: allocate::Recent = self
            .recent_picks
            .iter()
            .map(|(k, (ips, _))| (k.clone(), ips.clone()))
            .collect();
        let decisions = allocate(&served_infos, &self.pools, guard, &recent);
        let mut now_served = BTreeMap::new();
        self.pending_reasons.clear();
        for (obj, info) in served {
            let Some(decision) = decisions.get(&info.key) else {
                continue;
            };
            match decision {
                Ok(a) => {
                    self.last_problem.remove(&info.key);
                    now_served.insert(info.key.clone(), a.ips.clone());
                    let joined = join(&a.ips);
                    let mut set = Vec::new();
                    if matches!(a.origin, Origin::Pool(_))
                        && info.requested.as_deref() != Some(joined.as_str())
                    {
                        set.push((keys::LOADBALANCER_IPS, Some(joined.clone())));
                        if self
                            .recent_picks
                            .get(&info.key)
                            .is_none_or(|(ips, _)| *ips != a.ips)
                        {
                            self.recent_picks
                                .insert(info.key.clone(), (a.ips.clone(), Instant::now()));
                        }
                    }
                    // What vipd writes to the status is recorded as vipd's:
                    // only such a status is kept on its own (see allocate).
                    if info.assigned != a.ips {
                        set.push((keys::ASSIGNED, Some(joined.clone())));
                    }
                    if !set.is_empty() {
                        changes.push(Change::Annotations {
                            svc: obj.clone(),
                            set,
                        });
                    }
                    let desired: Ingress =
                        a.ips.iter().map(|ip| (*ip, info.ports.clone())).collect();
                    if current_ingress(obj) != desired && !a.replaced.is_empty() {
                        let note = format!(
                            "status.loadBalancer.ingress held {} which vipd did not assign and no pool contains (left by another controller, K3s ServiceLB perhaps): replaced by {joined}",
                            join(&a.replaced)
                        );
                        info!(service = %info.key, "{note}");
                        changes.push(Change::Event {
                            svc: obj.clone(),
                            warning: true,
                            reason: "StaleStatusReplaced",
                            note,
                        });
                    }
                    if current_ingress(obj) != desired {
                        let from = match &a.origin {
                            Origin::Pool(k) => format!("from pool {k}"),
                            Origin::Annotation => "from kube-vip.io/loadbalancerIPs".into(),
                            Origin::Status => "kept from status".into(),
                            Origin::LoadBalancerIp => "from spec.loadBalancerIP".into(),
                        };
                        info!(service = %info.key, addresses = %joined, "{from}");
                        changes.push(Change::Ingress {
                            svc: obj.clone(),
                            ingress: desired,
                        });
                        changes.push(Change::Event {
                            svc: obj.clone(),
                            warning: false,
                            reason: "AddressAssigned",
                            note: format!("assigned {joined} ({from})"),
                        });
                    }
                }
                Err(p) => {
                    *self
                        .pending_reasons
                        .entry(p.reason().to_string())
                        .or_default() += 1;
                    let msg = p.message();
                    if self.last_problem.get(&info.key) != Some(&msg) {
                        warn!(service = %info.key, reason = p.reason(), "{msg}");
                        self.last_problem.insert(info.key.clone(), msg.clone());
                    }
                    if !current_ingress(obj).is_empty() {
                        changes.push(Change::Ingress {
                            svc: obj.clone(),
                            ingress: Vec::new(),
                        });
                    }
                    let mut unset = Vec::new();
                    if info.vip_host.is_some() {
                        unset.push((keys::VIP_HOST, None));
                    }
                    if !info.assigned.is_empty() {
                        unset.push((keys::ASSIGNED, None));
                    }
                    if !unset.is_empty() {
                        changes.push(Change::Annotations {
                            svc: obj.clone(),
                            set: unset,
                        });
                    }
                    changes.push(Change::Event {
                        svc: obj.clone(),
                        warning: true,
                        reason: p.reason(),
                        note: msg,
                    });
                }
            }
        }
        // Released: served before, still there, no longer served (not a
        // LoadBalancer any more, ignored, another class).
        let existing: HashSet<SvcKey> = infos.iter().map(|(_, i)| i.key.clone()).collect();
        for (key, ips) in &self.served_before {
            if now_served.contains_key(key) {
                continue;
            }
            if let Some((obj, _)) = infos.iter().find(|(_, i)| i.key == *key) {
                let joined = join(ips);
                info!(service = %key, addresses = %joined, "released");
                changes.push(Change::Event {
                    svc: obj.clone(),
                    warning: false,
                    reason: "AddressReleased",
                    note: format!("released {joined}: the Service is no longer served by vipd"),
                });
            } else if !existing.contains(key) {
                info!(service = %key, "deleted: its addresses are released");
            }
        }
        self.last_problem.retain(|k, _| existing.contains(k));
        self.served_before = now_served;
    }
}
