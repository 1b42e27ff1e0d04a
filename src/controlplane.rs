//! The control-plane VIP: whoever wins the election claims the VIP
//! addresses; losing, stepping down or shutting down withdraws them.

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{bail, Result};
use tracing::info;

use crate::config::{AddressSpec, Subnets};
use crate::election::Leadership;
use crate::vips::{Claim, Source, VipHandle};

/// Resolves the configured VIPs (DNS names once, at start).
pub async fn resolve(specs: &[AddressSpec]) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for s in specs {
        match s {
            AddressSpec::Ip(ip) => out.push(*ip),
            AddressSpec::Name(name) => {
                let addrs: Vec<IpAddr> = tokio::net::lookup_host((name.as_str(), 0))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "invalid configuration: address={name:?}: cannot resolve: {e}"
                        )
                    })?
                    .map(|a| a.ip())
                    .collect();
                let Some(first) = addrs.first() else {
                    bail!("invalid configuration: address={name:?}: the name has no address");
                };
                info!(name = %name, addr = %first, "resolved the VIP's name");
                out.push(*first);
            }
        }
    }
    Ok(out)
}

/// The claims of the control-plane VIP on `interface`.
pub fn claims(
    vips: &[IpAddr],
    subnets: Subnets,
    interface: &str,
    route: &vipd_bgp::RouteAttrs,
) -> Vec<Claim> {
    vips.iter()
        .map(|a| Claim {
            route: route.clone(),
            addr: *a,
            prefix: subnets.for_ip(*a),
            interface: interface.to_string(),
        })
        .collect()
}

/// Connects an election to the address owner.
pub struct VipLeadership {
    pub vips: VipHandle,
    pub claims: Vec<Claim>,
    /// Add the VIP only once no other host answers for it (Raft: the
    /// election outpaces the kernel lifetime of a dead holder's address).
    pub probe_first: bool,
}

impl Leadership for VipLeadership {
    async fn started(&mut self, hold_until: Instant) {
        self.vips
            .claim(
                Source::ControlPlane,
                self.claims.clone(),
                Some(hold_until),
                self.probe_first,
            )
            .await;
    }

    async fn started_after_handover(&mut self, hold_until: Instant) {
        // The old leader withdrew the VIP before handing over: nothing to
        // wait for on the wire.
        self.vips
            .claim(
                Source::ControlPlane,
                self.claims.clone(),
                Some(hold_until),
                false,
            )
            .await;
    }

    fn renewed(&mut self, hold_until: Instant) {
        self.vips.extend(Source::ControlPlane, hold_until);
    }

    fn holding(&mut self, hold_until: Instant) {
        self.vips.hold_unconfirmed(Source::ControlPlane, hold_until);
    }

    async fn stopped(&mut self) {
        self.vips.release(Source::ControlPlane).await;
    }
}
