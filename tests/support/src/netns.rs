//! Network namespaces as hosts.
//!
//! A [`Netns`] is created with `ip netns add` and deleted, with every process
//! still inside it, when dropped. Code can run "on" a host in two ways:
//! [`Netns::run`] runs a closure on a thread that entered the namespace (a
//! socket keeps the namespace it was created in, so a listener or a netlink
//! socket made there works from anywhere afterwards), and [`Netns::runtime`]
//! builds a tokio runtime whose every thread lives in the namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    sh("ip", args)
}

/// Runs a command, failing with its stderr.
pub fn sh(prog: &str, args: &[&str]) -> Result<()> {
    output(prog, args).map(|_| ())
}

/// Runs a command and returns its stdout.
pub fn output(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("run {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on its stdin, failing with its stderr.
pub fn run_with_stdin(prog: &str, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {prog}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            sh("ip", &["netns", "exec", name, "sysctl", "-qw", key])?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("namespace file exists");
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A multi-thread tokio runtime whose worker and blocking threads all
    /// live in this namespace. Run futures with [`block_on_in`]: a future
    /// polled by `block_on` itself would run on the caller's thread.
    pub fn runtime(&self, workers: usize) -> Result<tokio::runtime::Runtime> {
        let file = Arc::new(File::open(self.path())?);
        Ok(tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .on_thread_start(move || {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns runtime thread");
            })
            .build()?)
    }
}

/// Runs `fut` as a task of `rt` (so on its namespaced threads) and waits for
/// it; a panic in the task is re-raised here so the test fails with it.
pub fn block_on_in<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    match rt.block_on(rt.spawn(fut)) {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// SIGKILLs every process inside namespace `name`.
pub fn kill_all_in(name: &str) {
    if let Ok(pids) = output("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes namespaces and run directories left by test processes that died
/// without cleaning up (SIGKILL, power loss). Namespaces of live processes
/// are left alone.
pub fn reap_leftovers() {
    let Ok(list) = output("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("vt") else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(name);
        let _ = ip(&["netns", "del", name]);
    }
}
