//! A control-plane outage never takes the data plane down: three nodes with
//! the control-plane VIP and a LoadBalancer Service (Lease mode, ARP, the
//! K3s static pod's environment), a client connecting to both addresses
//! every 10 ms, while the API server is frozen (SIGSTOP, as a hung etcd
//! behaves) or cut off from the holder only (see vipd_testkit::outage).

use std::path::Path;
use std::time::Duration;

use vipd_testkit::apiserver::env;
use vipd_testkit::outage::{cluster, cut_holder_off, cut_holder_off_with, freeze_api, logs, Cut};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

/// The default: a frozen API server changes nothing on the wire. Both
/// addresses keep answering from the same node throughout and after.
#[test]
fn a_frozen_api_server_takes_no_address_down() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(env, bin(), &[]).await;
        let o = freeze_api(env, &nodes, Duration::from_secs(15)).await;
        eprintln!(
            "frozen 15 s: VIP outage {:?}, Service outage {:?}",
            o.vip_outage, o.svc_outage
        );
        assert!(
            o.vip_outage < Duration::from_millis(200),
            "VIP lost for {:?}\n{}",
            o.vip_outage,
            logs(&nodes)
        );
        assert!(
            o.svc_outage < Duration::from_millis(200),
            "Service lost for {:?}\n{}",
            o.svc_outage,
            logs(&nodes)
        );
        assert_eq!(o.vip_holders.len(), 1, "the VIP moved: {:?}", o.vip_holders);
        assert_eq!(
            o.svc_holders.len(),
            1,
            "the Service address moved: {:?}",
            o.svc_holders
        );
    });
}

/// The same with a Lease per Service address (`svc_election`).
#[test]
fn a_frozen_api_server_takes_no_address_down_with_per_address_leases() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(env, bin(), &[("svc_election", "true")]).await;
        let o = freeze_api(env, &nodes, Duration::from_secs(15)).await;
        eprintln!(
            "frozen 15 s (svc_election): VIP outage {:?}, Service outage {:?}",
            o.vip_outage, o.svc_outage
        );
        assert!(
            o.vip_outage < Duration::from_millis(200),
            "VIP lost for {:?}\n{}",
            o.vip_outage,
            logs(&nodes)
        );
        assert!(
            o.svc_outage < Duration::from_millis(200),
            "Service lost for {:?}\n{}",
            o.svc_outage,
            logs(&nodes)
        );
        assert_eq!(o.vip_holders.len(), 1, "the VIP moved: {:?}", o.vip_holders);
        assert_eq!(
            o.svc_holders.len(),
            1,
            "the Service address moved: {:?}",
            o.svc_holders
        );
    });
}

/// `vip_hold_on_api_loss=false` keeps the strict behaviour: the holder
/// gives the addresses up at its renew deadline, so a frozen API server
/// takes them down (what every node did before holding was the default).
/// The Services leader's Lease is given the VIP's timing (renew deadline
/// 3 s instead of its default 7.5 s), so both deadlines fall within the
/// 8 s freeze.
#[test]
fn strict_mode_drops_the_addresses_at_the_renew_deadline() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(
            env,
            bin(),
            &[
                ("vip_hold_on_api_loss", "false"),
                ("svc_leader_lease", "4s"),
            ],
        )
        .await;
        let o = freeze_api(env, &nodes, Duration::from_secs(8)).await;
        eprintln!(
            "frozen 8 s (strict): VIP outage {:?}, Service outage {:?}",
            o.vip_outage, o.svc_outage
        );
        assert!(o.vip_outage > Duration::from_secs(3), "{:?}", o.vip_outage);
        assert!(o.svc_outage > Duration::from_secs(3), "{:?}", o.svc_outage);
    });
}

/// The holder cut off from the API server but not from its clients: the
/// others take the VIP over once its Lease expired, and the old holder
/// lets go the moment it hears the new one's announcement; two nodes hold
/// it for at most 300 ms. When the cut heals, nothing moves.
#[test]
fn a_holder_cut_off_from_the_api_lets_go_when_another_takes_over() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(env, bin(), &[]).await;
        let o = cut_holder_off(env, &nodes).await.unwrap();
        eprintln!("{o:?}");
        assert!(
            o.overlap <= Duration::from_millis(300),
            "two holders for {:?}\n{}",
            o.overlap,
            logs(&nodes)
        );
        assert!(
            o.stayed,
            "the VIP moved again after the cut healed\n{}",
            logs(&nodes)
        );
        assert!(
            o.said_why,
            "the old holder did not say why it let go\n{}",
            logs(&nodes)
        );
    });
}

/// The same cut, but every gratuitous ARP for the VIP is lost on the
/// switch: the old holder learns of the new one only from the answer to the
/// probe it sends with each refresh while it holds without a renewed Lease
/// (RFC 5227 conflict detection). Without probes it would keep the VIP
/// until the cut heals.
#[test]
fn a_holder_cut_off_finds_the_new_holder_by_probing() {
    let env = env();
    let _l = env.lab_lock();
    env.run(async move {
        let (nodes, _ns) = cluster(env, bin(), &[("vip_arpRate", "1000")]).await;
        let o = cut_holder_off_with(
            env,
            &nodes,
            Cut {
                silence_announcements: true,
                // Long enough that only a probe can end the overlap in time.
                after_takeover: Some(Duration::from_secs(5)),
            },
        )
        .await
        .unwrap();
        eprintln!("{o:?}");
        // One refresh (1 s) and a sample.
        assert!(
            o.overlap <= Duration::from_millis(1500),
            "two holders for {:?}\n{}",
            o.overlap,
            logs(&nodes)
        );
        assert!(
            o.said_why,
            "the old holder did not say why it let go\n{}",
            logs(&nodes)
        );
    });
}
