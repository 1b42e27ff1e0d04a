//! Prometheus metrics, read from [`Status`] at scrape time (so they can
//! never disagree with `/status`), in the text format. Where kube-vip has a
//! metric with the same meaning, it is exported under kube-vip's name too.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Status;

/// Metrics updated as things happen (not derivable from state).
#[derive(Debug)]
pub struct Histograms {
    /// Seconds one Services reconcile pass takes.
    pub reconcile: Histogram,
    /// The same under kube-vip's name and label (`namespace`: the one
    /// served, or `all`).
    pub kube_vip_reconcile: Family<Vec<(String, String)>, Histogram>,
}

fn reconcile_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            reconcile: reconcile_buckets(),
            kube_vip_reconcile: Family::new_with_constructor(reconcile_buckets),
        }
    }
}

impl Histograms {
    /// Records one Services pass of `namespace` (None: all).
    pub fn observe_reconcile(&self, seconds: f64, namespace: Option<&str>) {
        self.reconcile.observe(seconds);
        self.kube_vip_reconcile
            .get_or_create(&vec![(
                "namespace".to_string(),
                namespace.unwrap_or("all").to_string(),
            )])
            .observe(seconds);
    }
}

type Labels = Vec<(String, String)>;

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    // An unlabelled sample is written without braces.
    if let [(labels, v)] = rows {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(m);
        }
    }
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    // An unlabelled sample is written without braces.
    if let [(labels, v)] = rows {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(m);
        }
    }
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

struct StatusCollector(Arc<Status>);

impl std::fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatusCollector({})", self.0.node)
    }
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let elections = s.elections();
        let leader: Vec<(Labels, i64)> = elections
            .iter()
            .map(|e| (l(&[("lease", &e.lease)]), e.leading as i64))
            .collect();
        gauges(
            &mut enc,
            "vipd_leader",
            "1 while this node leads the election",
            &leader,
        )?;
        let transitions: Vec<(Labels, u64)> = elections
            .iter()
            .map(|e| (l(&[("lease", &e.lease)]), e.transitions))
            .collect();
        counters(
            &mut enc,
            "vipd_leader_transitions",
            "times this node started or stopped leading",
            &transitions,
        )?;
        let held = s.vips.held().borrow().clone();
        gauges(
            &mut enc,
            "vipd_addresses_held",
            "addresses on this node's interfaces held by vipd",
            &[(vec![], held.addresses.len() as i64)],
        )?;
        let per_addr: Vec<(Labels, i64)> = held
            .addresses
            .values()
            .map(|h| {
                (
                    l(&[
                        ("address", &h.addr.to_string()),
                        ("interface", &h.interface),
                    ]),
                    1,
                )
            })
            .collect();
        gauges(
            &mut enc,
            "vipd_address_held",
            "1 for each address held here",
            &per_addr,
        )?;

        let r = s.readiness();
        gauges(
            &mut enc,
            "vipd_ready",
            "1 when every claimed address is on its interface (or announced to peers)",
            &[(vec![], r.ready as i64)],
        )?;
        counters(
            &mut enc,
            "vipd_not_ready",
            "times this node became not ready",
            &[(vec![], r.not_ready_total)],
        )?;

        let counts = s.vips.counts();
        counters(
            &mut enc,
            "vipd_arp_announcements",
            "gratuitous ARPs and unsolicited NAs sent",
            &[(vec![], counts.sent)],
        )?;
        counters(
            &mut enc,
            "vipd_arp_announcement_errors",
            "announcements that could not be sent",
            &[(vec![], counts.errors)],
        )?;
        counters(
            &mut enc,
            "vipd_arp_conflict_probes",
            "ARP probes and DAD solicitations sent for addresses held without a renewed Lease",
            &[(vec![], counts.probes)],
        )?;

        if let Some(svc) = s.services() {
            let states: Vec<(Labels, i64)> = [
                ("ready", svc.ready),
                ("pending", svc.pending),
                ("withdrawn", svc.withdrawn),
            ]
            .iter()
            .map(|(st, n)| (l(&[("state", st)]), *n as i64))
            .collect();
            gauges(
                &mut enc,
                "vipd_services",
                "served LoadBalancer Services by state",
                &states,
            )?;
            let problems: Vec<(Labels, u64)> = svc
                .problems_by_reason
                .iter()
                .map(|(r, n)| (l(&[("reason", r)]), *n))
                .collect();
            counters(
                &mut enc,
                "vipd_service_problems",
                "Services left pending, by reason, as counted per reconcile",
                &problems,
            )?;
            counters(
                &mut enc,
                "vipd_reconcile_errors",
                "Services reconcile passes with a failed write",
                &[(vec![], svc.reconcile_errors)],
            )?;
            let links: Vec<(Labels, i64)> = svc
                .peer_links
                .iter()
                .map(|(node, state)| (l(&[("peer", node)]), (state == "up") as i64))
                .collect();
            gauges(
                &mut enc,
                "vipd_peer_link_up",
                "1 while this node follows the peer vipd's /v1/alive stream (placement)",
                &links,
            )?;
        }

        let peers = s.bgp_peers();
        let sessions: Vec<(Labels, i64)> = peers
            .iter()
            .map(|p| (l(&[("peer", &p.address), ("state", &p.state)]), 1))
            .collect();
        gauges(
            &mut enc,
            "vipd_bgp_session",
            "1 for the current state of each BGP peer's session",
            &sessions,
        )?;

        let bfd: Vec<(Labels, i64)> = peers
            .iter()
            .filter_map(|p| p.bfd.as_ref().map(|b| (p, b)))
            .flat_map(|(p, b)| {
                BFD_STATES.iter().map(move |st| {
                    (
                        l(&[("peer", &p.address), ("state", st)]),
                        i64::from(*st == b.as_str()),
                    )
                })
            })
            .collect();
        gauges(
            &mut enc,
            "vipd_bgp_bfd_session",
            "1 for the current state of each BGP peer's BFD session (every state listed), for peers with BFD",
            &bfd,
        )?;
        kube_vip(&mut enc, s)?;
        Ok(())
    }
}

/// kube-vip's metrics (see `kube_vip_metrics`).
fn kube_vip(enc: &mut DescriptorEncoder, s: &Status) -> Result<(), std::fmt::Error> {
    use super::kube_vip_metrics as kv;
    gauges(
        enc,
        "kube_vip_build_info",
        "Constant 1; track version skew across nodes",
        &kv::build_info(env!("CARGO_PKG_VERSION"), env!("VIPD_BUILD"), &s.node),
    )?;
    let elections = s.elections();
    gauges(
        enc,
        "kube_vip_is_leader",
        "1 if this node currently holds the lease",
        &kv::is_leader(
            &s.node,
            &elections
                .iter()
                .map(|e| (e.lease.clone(), e.leading))
                .collect::<Vec<_>>(),
        ),
    )?;
    counters(
        enc,
        "kube_vip_leader_election_transitions",
        "Frequent transitions mean instability",
        &kv::transitions(
            &elections
                .iter()
                .map(|e| (e.lease.clone(), e.transitions))
                .collect::<Vec<_>>(),
        ),
    )?;
    let peers: Vec<(String, u16, String)> = s
        .bgp_peers()
        .iter()
        .map(|p| (p.address.clone(), p.port, p.state.clone()))
        .collect();
    gauges(
        enc,
        "kube_vip_manager_bgp_session_info",
        "Display state of session by setting metric for label value with current state to 1",
        &kv::bgp_sessions(&peers),
    )?;
    if let Some(svc) = s.services() {
        gauges(
            enc,
            "kube_vip_active_services",
            "How many LB services are currently managed",
            &kv::active_services(
                svc.announced_here
                    .iter()
                    .flat_map(|a| a.services.iter().map(String::as_str)),
            ),
        )?;
        counters(
            enc,
            "kube_vip_service_reconcile_errors",
            "Count reconcile failures",
            &kv::reconcile_errors(&svc.reconcile_errors_by_service),
        )?;
        counters(
            enc,
            "kube_vip_manager_all_services_events",
            "Count all events fired by the service watcher categorised by event type",
            &kv::service_events(
                &svc.watch_events
                    .iter()
                    .map(|(t, n)| (t.as_str(), *n))
                    .collect::<Vec<_>>(),
            ),
        )?;
    }
    Ok(())
}

/// BFD session states (RFC 5880 §4.1), as the status names them.
const BFD_STATES: [&str; 4] = ["admin_down", "down", "init", "up"];

/// The registry for `/metrics`.
pub fn registry(status: Arc<Status>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "vipd_reconcile_duration_seconds",
        "seconds one Services reconcile pass takes",
        status.metrics.reconcile.clone(),
    );
    r.register(
        "kube_vip_service_reconcile_duration_seconds",
        "How long AddOrModify takes end-to-end (vipd: one Services pass)",
        status.metrics.kube_vip_reconcile.clone(),
    );
    r.register_collector(Box::new(StatusCollector(status)));
    r
}

/// The text exposition.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}
