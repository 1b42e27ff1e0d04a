//! A lab: hosts (network namespaces) on one Ethernet segment.
//!
//! The segment is a Linux bridge inside a namespace of its own (the
//! "switch"), so nothing of the lab touches the machine's own network
//! namespace. Each host has `eth0`, a veth whose other end is a bridge port in
//! the switch; pulling the cable is setting that port down. Addresses come from
//! documentation ranges only: host `k` is `192.0.2.k/24` and `2001:db8::k/64`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::Result;

use crate::netns::{ip, output, Netns};
use crate::process::Proc;

pub const LAB_V4_PREFIX: u8 = 24;
pub const LAB_V6_PREFIX: u8 = 64;

/// The address of host number `k` on the lab segment.
pub fn host_v4(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, k)
}

pub fn host_v6(k: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, k as u16)
}

pub struct Lab {
    prefix: String,
    switch: Netns,
}

impl Lab {
    /// A new segment; `prefix` makes its namespace names unique (it should
    /// start with [`crate::run_prefix`] so leftovers can be reaped).
    pub fn new(prefix: &str) -> Result<Lab> {
        let switch = Netns::create(&format!("{prefix}sw"))?;
        let sw = switch.name().to_string();
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        Ok(Lab {
            prefix: prefix.to_string(),
            switch,
        })
    }

    /// A fresh lab for one scenario, after reaping a killed run's leftovers:
    /// a unique name prefix (`tag` tells its kind apart), the lab, and its
    /// client host.
    pub fn own(tag: &str) -> Result<(String, Lab, Host)> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        crate::netns::reap_leftovers();
        let prefix = format!(
            "{}{tag}{}",
            crate::run_prefix(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab::new(&prefix)?;
        let client = lab.add_host("client", 3)?;
        Ok((prefix, lab, client))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Adds host `name` as number `k` (its addresses are `192.0.2.k` and
    /// `2001:db8::k`).
    pub fn add_host(&self, name: &str, k: u8) -> Result<Host> {
        let ns = Netns::create(&format!("{}{}", self.prefix, name))?;
        let port = format!("p{name}");
        let port = &port[..port.len().min(15)];
        let sw = self.switch.name();
        ip(&[
            "-n",
            sw,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        ip(&["-n", sw, "link", "set", port, "master", "br0", "up"])?;
        let (v4, v6) = (host_v4(k), host_v6(k));
        ip(&[
            "-n",
            ns.name(),
            "addr",
            "add",
            &format!("{v4}/{LAB_V4_PREFIX}"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            ns.name(),
            "addr",
            "add",
            &format!("{v6}/{LAB_V6_PREFIX}"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", ns.name(), "link", "set", "eth0", "up"])?;
        announce_self(&ns, v4, v6)?;
        Ok(Host {
            name: name.to_string(),
            ns,
            v4,
            v6,
            port: port.to_string(),
            switch: sw.to_string(),
        })
    }
}

/// Tells the segment that `v4` and `v6` now live at this host's MAC, so
/// neighbours forget a previous host with the same address (a test that ran
/// before) at once instead of after their ARP timeout.
fn announce_self(ns: &Netns, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
    let json = output("ip", &["-n", ns.name(), "-j", "link", "show", "eth0"])?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let mac: vipd_arp::MacAddr = v[0]["address"].as_str().unwrap_or_default().parse()?;
    ns.run(|| -> Result<()> {
        let idx = nix::net::if_::if_nametoindex("eth0")?;
        let sender = vipd_arp::Sender::open(idx)?;
        for round in 0..3 {
            for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
                sender.send(&vipd_arp::build_announcement(ip, mac))?;
            }
            if round < 2 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Ok(())
    })
}

/// nftables rules on the switch (the bridge family's forward hook, so they
/// see every frame between two ports), removed when dropped. `rules` is
/// a list of rule bodies, e.g. `arp operation request drop`.
pub struct SwitchFilter {
    switch: String,
    table: String,
}

impl SwitchFilter {
    pub fn install(host_on_switch: &Host, table: &str, rules: &[&str]) -> Result<SwitchFilter> {
        let switch = host_on_switch.switch.clone();
        let mut script = format!(
            "table bridge {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n"
        );
        for r in rules {
            script.push_str(&format!("    {r}\n"));
        }
        script.push_str("  }\n}\n");
        let f = SwitchFilter {
            switch,
            table: table.to_string(),
        };
        crate::netns::run_with_stdin(
            "ip",
            &["netns", "exec", &f.switch, "nft", "-f", "-"],
            &script,
        )?;
        Ok(f)
    }
}

impl SwitchFilter {
    /// The packets counted by the rules that carry a `counter`.
    pub fn counted(&self) -> u64 {
        let out = output(
            "ip",
            &[
                "netns",
                "exec",
                &self.switch,
                "nft",
                "list",
                "table",
                "bridge",
                &self.table,
            ],
        )
        .unwrap_or_default();
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum()
    }
}

impl Drop for SwitchFilter {
    fn drop(&mut self) {
        let _ = output(
            "ip",
            &[
                "netns",
                "exec",
                &self.switch,
                "nft",
                "delete",
                "table",
                "bridge",
                &self.table,
            ],
        );
    }
}

/// One host of a lab.
pub struct Host {
    pub name: String,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    port: String,
    switch: String,
}

impl Host {
    /// Pulls the cable: the bridge port goes down, `eth0` loses carrier.
    pub fn link_down(&self) -> Result<()> {
        ip(&["-n", &self.switch, "link", "set", &self.port, "down"])
    }

    /// Plugs the cable back in.
    pub fn link_up(&self) -> Result<()> {
        ip(&["-n", &self.switch, "link", "set", &self.port, "up"])
    }

    /// The namespace of the switch this host is plugged into.
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// Starts `program` inside this host with `env` set; output to `log`.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Proc> {
        let mut cmd = self.ns.command(program.to_str().expect("utf-8 path"));
        cmd.args(args);
        cmd.env_clear();
        cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(name, cmd, log)
    }

    /// Every address on `eth0`, as `ip` shows it.
    pub fn addresses(&self) -> Result<Vec<IpAddr>> {
        let json = output(
            "ip",
            &["-n", self.ns.name(), "-j", "addr", "show", "dev", "eth0"],
        )?;
        let v: serde_json::Value = serde_json::from_str(&json)?;
        let mut out = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if let Some(ip) = a["local"].as_str().and_then(|s| s.parse().ok()) {
                    out.push(ip);
                }
            }
        }
        Ok(out)
    }

    /// Removes `addr` from `eth0` by hand, as an operator might.
    pub fn remove_address(&self, addr: IpAddr, prefix: u8) -> Result<()> {
        ip(&[
            "-n",
            self.ns.name(),
            "addr",
            "del",
            &format!("{addr}/{prefix}"),
            "dev",
            "eth0",
        ])
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the switch-side end destroys the pair at once, even while
        // a socket still pins the host's namespace (its deletion is lazy).
        crate::netns::kill_all_in(self.ns.name());
        let _ = ip(&["-n", &self.switch, "link", "del", &self.port]);
    }
}
