//! BGP lab parts: a router running BIRD 2 (Debian's package) that peers
//! with vipd nodes and installs what it learns into its kernel with ECMP,
//! and a health endpoint on a node that a test can turn bad.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::lab::Host;
use crate::netns::output;
use crate::process::Proc;

/// One BGP neighbour of the router.
pub struct Neighbour {
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    pub password: Option<String>,
    /// BFD on this session (the router's side of vipd's `bgp_bfd`).
    pub bfd: bool,
}

/// The router's BFD timing: as vipd's defaults (100 ms, 3 missed).
pub const BFD_INTERVAL_MS: u64 = 100;
pub const BFD_MULTIPLIER: u32 = 3;

/// The GoBGP version gobgpd is built at (bgp/gobgp/go.mod).
pub fn gobgp_version() -> String {
    let gomod = std::fs::read_to_string(crate::workspace_root().join("bgp/gobgp/go.mod"))
        .unwrap_or_default();
    gomod
        .lines()
        .find_map(|l| l.trim().strip_prefix("require github.com/osrg/gobgp/v4 "))
        .unwrap_or("?")
        .to_string()
}

/// gobgpd v4, built from the Go module proxy by scripts/gobgp.sh (the
/// same binary the image carries); never a system gobgpd.
pub fn gobgpd_bin() -> Result<PathBuf> {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(b) = BIN.get() {
        return Ok(b.clone());
    }
    let out = std::process::Command::new(crate::workspace_root().join("scripts/gobgp.sh"))
        .arg("build")
        .output()?;
    if !out.status.success() {
        bail!(
            "scripts/gobgp.sh build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    Ok(BIN.get_or_init(|| dir.join("gobgpd")).clone())
}

/// BIRD 2 on a lab host.
pub struct Bird {
    pub host: Host,
    pub proc: Proc,
    pub socket: PathBuf,
}

impl Bird {
    /// Starts BIRD on `host` (AS `asn`) with `neighbours`; IPv4 neighbours
    /// carry IPv4 routes, IPv6 neighbours IPv6 routes. Learned routes go to
    /// the kernel, equal ones merged into ECMP routes.
    pub fn start(host: Host, asn: u32, neighbours: &[Neighbour]) -> Result<Bird> {
        let dir = crate::run_dir().join(format!("bird-{}", host.ns.name()));
        std::fs::create_dir_all(&dir)?;
        let mut conf = format!(
            "log stderr all;\nrouter id {id};\nprotocol device {{ scan time 1; }}\n\
             protocol kernel k4 {{ ipv4 {{ import none; export all; }}; merge paths on; scan time 1; }}\n\
             protocol kernel k6 {{ ipv6 {{ import none; export all; }}; merge paths on; scan time 1; }}\n",
            id = host.v4
        );
        if neighbours.iter().any(|n| n.bfd) {
            conf.push_str(&format!(
                "protocol bfd {{\n  interface \"eth0\" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; idle tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }};\n}}\n"
            ));
        }
        for n in neighbours {
            let family = if n.address.is_ipv4() { "ipv4" } else { "ipv6" };
            let password = n
                .password
                .as_ref()
                .map(|p| format!("  password \"{p}\";\n"))
                .unwrap_or_default();
            let bfd = if n.bfd { "  bfd on;\n" } else { "" };
            conf.push_str(&format!(
                "protocol bgp {name} {{\n  local as {asn};\n  neighbor {addr} as {peer};\n{password}{bfd}  hold time 9;\n  keepalive time 3;\n  connect retry time 1;\n  error wait time 1, 4;\n  {family} {{ import all; export none; }};\n}}\n",
                name = n.name,
                addr = n.address,
                peer = n.asn,
            ));
        }
        let conf_path = dir.join("bird.conf");
        std::fs::write(&conf_path, conf)?;
        crate::netns::sh(
            "ip",
            &[
                "netns",
                "exec",
                host.ns.name(),
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        crate::netns::sh(
            "ip",
            &[
                "netns",
                "exec",
                host.ns.name(),
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        let socket = dir.join("bird.ctl");
        let args: Vec<String> = [
            "-f",
            "-c",
            conf_path.to_str().expect("utf-8"),
            "-s",
            socket.to_str().expect("utf-8"),
            "-P",
            dir.join("bird.pid").to_str().expect("utf-8"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = host.spawn(
            "bird",
            std::path::Path::new("/usr/sbin/bird"),
            &args,
            &[],
            &dir.join("bird.log"),
        )?;
        Ok(Bird { host, proc, socket })
    }

    /// `birdc <cmd>` output.
    pub fn birdc(&self, cmd: &str) -> Result<String> {
        let mut args = vec![
            "netns",
            "exec",
            self.host.ns.name(),
            "birdc",
            "-s",
            self.socket.to_str().expect("utf-8"),
        ];
        args.extend(cmd.split_whitespace());
        output("ip", &args)
    }

    /// The next hops of the router's kernel route to `addr` (empty: none).
    pub fn next_hops(&self, addr: IpAddr) -> Vec<IpAddr> {
        let fam = if addr.is_ipv4() { "-4" } else { "-6" };
        let Ok(json) = output(
            "ip",
            &[
                "-n",
                self.host.ns.name(),
                fam,
                "-j",
                "route",
                "show",
                &addr.to_string(),
            ],
        ) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let mut out = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            if let Some(gw) = r["gateway"].as_str().and_then(|g| g.parse().ok()) {
                out.push(gw);
            }
            for nh in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(gw) = nh["gateway"].as_str().and_then(|g| g.parse().ok()) {
                    out.push(gw);
                }
            }
        }
        out.sort();
        out
    }

    /// Waits until the route to `addr` has exactly `want` next hops; how long it took.
    pub fn wait_next_hops(
        &self,
        addr: IpAddr,
        want: &[IpAddr],
        timeout: Duration,
    ) -> Result<Duration> {
        let mut want = want.to_vec();
        want.sort();
        let t0 = Instant::now();
        loop {
            let now = self.next_hops(addr);
            if now == want {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "route to {addr}: next hops {now:?}, wanted {want:?} after {timeout:?}\n{}",
                    self.birdc("show protocols").unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// BIRD's BFD sessions, as `show bfd sessions` lists them.
    pub fn bfd_sessions(&self) -> String {
        self.birdc("show bfd sessions").unwrap_or_default()
    }

    /// Waits until BIRD has `n` BFD sessions Up.
    pub fn wait_bfd_up(&self, n: usize, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let out = self.bfd_sessions();
            if out.lines().filter(|l| l.contains(" Up ")).count() >= n {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!("BFD sessions not up after {timeout:?}:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether BIRD's session `name` is established.
    pub fn established(&self, name: &str) -> bool {
        self.birdc(&format!("show protocols {name}"))
            .is_ok_and(|o| o.contains("Established"))
    }
}

/// `GET /readyz` answered 200 or 503 on 127.0.0.1 of a node, as the test says.
pub struct HealthServer {
    pub healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    fd: i32,
    thread: Option<JoinHandle<()>>,
}

impl HealthServer {
    pub fn start(host: &Host, port: u16) -> HealthServer {
        let listener = host
            .ns
            .run(|| TcpListener::bind(("127.0.0.1", port)).expect("bind health server"));
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let fd = listener.as_raw_fd();
        let (h, s) = (healthy.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let reply = if h.load(Ordering::Relaxed) {
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbad\n"
                };
                let _ = c.write_all(reply.as_bytes());
            }
        });
        HealthServer {
            healthy,
            stop,
            fd,
            thread: Some(thread),
        }
    }

    pub fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutting down our own listening socket wakes accept().
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The lab router's addresses (host 1 of the segment).
pub const ROUTER: &str = "192.0.2.1";
pub const ROUTER6: &str = "2001:db8::1";

/// Node `i` (0-based) of a lab: 192.0.2.(11 + i) and its IPv6 twin.
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(crate::lab::host_v4(11 + i as u8))
}

pub fn node_ip6(i: usize) -> IpAddr {
    IpAddr::V6(crate::lab::host_v6(11 + i as u8))
}

/// A router (BIRD, AS 64512) on the environment's segment with an IPv4
/// and an IPv6 session to each of `n` nodes (AS 65000), BFD on each;
/// `passwords[i]` is its password for node i.
pub fn lab_router(
    env: &crate::apiserver::Env,
    n: usize,
    passwords: &[Option<&str>],
) -> Result<Bird> {
    lab_router_with(env, n, passwords, true)
}

/// [`lab_router`], BFD as `bfd` says.
pub fn lab_router_with(
    env: &crate::apiserver::Env,
    n: usize,
    passwords: &[Option<&str>],
    bfd: bool,
) -> Result<Bird> {
    let host = env.lab.add_host("rtr", 1)?;
    let mut neighbours = Vec::new();
    for i in 0..n {
        let password = passwords.get(i).copied().flatten().map(String::from);
        neighbours.push(Neighbour {
            name: format!("n{}", i + 1),
            address: node_ip(i),
            asn: 65000,
            password: password.clone(),
            bfd,
        });
        neighbours.push(Neighbour {
            name: format!("n{}v6", i + 1),
            address: node_ip6(i),
            asn: 65000,
            password,
            bfd,
        });
    }
    Bird::start(host, 64512, &neighbours)
}

/// vipd in BGP mode on `n` nodes peering with [`lab_router`], each with a
/// health endpoint for its "API server" on 127.0.0.1:8081 (the nodes' own
/// API servers are not part of this lab); `extra(i)` adds settings to node i.
pub async fn bgp_nodes(
    env: &'static crate::apiserver::Env,
    n: usize,
    bin: &std::path::Path,
    settings: &[(&str, &str)],
    extra: impl Fn(usize) -> Vec<(String, String)>,
) -> Result<(Vec<crate::vipd::VipdNode>, Vec<HealthServer>)> {
    let peers = format!("{ROUTER}:64512::false,[{ROUTER6}]:64512::false");
    let mut s: Vec<(&str, &str)> = vec![
        ("svc_enable", "false"),
        ("vip_arp", "false"),
        ("bgp_enable", "true"),
        ("vip_leaderelection", "false"),
        ("vip_interface", "lo"),
        ("bgp_routerinterface", "eth0"),
        ("bgp_as", "65000"),
        ("bgp_peers", &peers),
        ("bgp_hold_time", "9"),
        ("bgp_keepalive_interval", "3"),
        ("vip_healthcheck_url", "http://127.0.0.1:8081/readyz"),
    ];
    let gobgpd = gobgpd_bin()?;
    let gobgpd = gobgpd.to_str().expect("utf-8 path").to_string();
    s.push(("bgp_gobgpd_path", &gobgpd));
    s.extend_from_slice(settings);
    let mut nodes = crate::failover::vipd_nodes(
        env,
        n,
        "manifests/k3s/vipd-daemonset.yaml",
        bin,
        &s,
        &[6443, 80],
    )
    .await?;
    let mut health = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        health.push(HealthServer::start(&node.host, 8081));
        let more = extra(i);
        if !more.is_empty() {
            node.kill();
            for (k, v) in more {
                crate::vipd::set_env(&mut node.env, &k, &v);
            }
            node.start()?;
        }
    }
    Ok((nodes, health))
}
