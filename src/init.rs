//! vipd as its container's first process.
//!
//! In a pod, the image's entrypoint is the first process (PID 1) of the
//! container's PID namespace, and when that process dies the kernel kills
//! every other process in the namespace (pid_namespaces(7)). A vipd that
//! crashed, panicked or was OOM-killed alone would take its guardian along,
//! and its addresses would stay until their kernel lifetime ran out. So a
//! vipd that finds itself PID 1 does not run the manager: it is a small
//! init that runs the manager as its child (the same executable and
//! arguments), passes on the signals a container runtime sends, reaps
//! orphans, and once the manager has exited waits for the guardian to
//! finish its removals ([`GUARDIAN_GRACE`] at most) before it exits with the
//! manager's status, so the kubelet sees the manager's exit code.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::stamped::say;

/// How long the init waits, after the manager exited, for the rest of the
/// container (its guardian) before it exits and the kernel kills what is
/// left. The guardian finishes by the dead manager's last deadline, which
/// is seconds away.
pub const GUARDIAN_GRACE: Duration = Duration::from_secs(30);

/// The signals a runtime or an operator sends that are the manager's to
/// act on (SIGTERM: the kubelet's stop).
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The manager's pid, for the signal handler; 0 before it runs and after
/// it exited.
static MANAGER: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = MANAGER.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Whether this process is its PID namespace's first (a container's
/// entrypoint).
pub fn is_first_process() -> bool {
    std::process::id() == 1
}

/// The exit code that tells what ended the manager, as a shell (and the
/// kubelet's `exitCode`) does: its own code, or 128 + the signal.
pub fn exit_code(status: WaitStatus) -> Option<u8> {
    match status {
        WaitStatus::Exited(_, code) => Some(code as u8),
        WaitStatus::Signaled(_, sig, _) => Some(128u8.wrapping_add(sig as u8)),
        _ => None,
    }
}

/// Runs the manager (this executable with this process's arguments) as a
/// child, and returns its exit code once it and the rest of the container
/// are done (see the module's text).
pub fn run() -> ExitCode {
    let mut blocked = SigSet::empty();
    for s in FORWARDED {
        blocked.add(s);
    }
    // Blocked until the manager's pid is known: a SIGTERM that arrives
    // meanwhile waits and is then passed on, not lost.
    if let Err(e) = signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None) {
        say("vipd init", &format!("cannot block signals: {e}"));
    }
    for s in FORWARDED {
        // SAFETY: the handler only reads an atomic and calls kill(2).
        if let Err(e) = unsafe { signal::signal(s, SigHandler::Handler(forward)) } {
            say("vipd init", &format!("cannot pass on {s:?}: {e}"));
        }
    }
    let child = match spawn_manager() {
        Ok(c) => c,
        Err(e) => {
            say("vipd init", &format!("cannot start the manager: {e}"));
            return ExitCode::from(2);
        }
    };
    let manager = Pid::from_raw(child.id() as i32);
    // The Child handle is not waited on: this loop reaps every process.
    drop(child);
    MANAGER.store(manager.as_raw(), Ordering::SeqCst);
    let _ = signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&blocked), None);
    say(
        "vipd init",
        &format!(
            "vipd is its container's first process: the manager runs as pid {manager}, so its guardian outlives it"
        ),
    );
    let status = reap_until(manager);
    MANAGER.store(0, Ordering::SeqCst);
    let code = exit_code(status).unwrap_or(1);
    say(
        "vipd init",
        &format!(
            "the manager {}; waiting for what it left running (its guardian)",
            describe(status)
        ),
    );
    if !reap_rest(GUARDIAN_GRACE) {
        say(
            "vipd init",
            &format!(
                "still running {}s after the manager ended: exiting anyway",
                GUARDIAN_GRACE.as_secs()
            ),
        );
    }
    ExitCode::from(code)
}

fn spawn_manager() -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    // SAFETY: sigprocmask is async-signal-safe; the child starts with no
    // signal blocked (a blocked mask survives exec) and default handlers
    // (exec resets handled signals).
    unsafe {
        cmd.pre_exec(|| {
            let empty = SigSet::empty();
            signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}

/// Reaps children (orphans too: this is PID 1) until `manager` ends, and
/// returns how it ended.
fn reap_until(manager: Pid) -> WaitStatus {
    loop {
        match waitpid(None, None) {
            Ok(s) if s.pid() == Some(manager) && exit_code(s).is_some() => return s,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                say("vipd init", &format!("cannot wait for the manager: {e}"));
                return WaitStatus::Exited(manager, 1);
            }
        }
    }
}

/// Reaps what is left until nothing is (true) or `grace` has passed.
fn reap_rest(grace: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {
                if t0.elapsed() >= grace {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) => continue,
            Err(_) => return true,
        }
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig:?}"),
        other => format!("ended ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_says_what_ended_the_manager() {
        let pid = Pid::from_raw(7);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 0)), Some(0));
        assert_eq!(exit_code(WaitStatus::Exited(pid, 2)), Some(2));
        // SIGKILL, as an OOM kill: 137, what the kubelet shows for one.
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, false)),
            Some(143)
        );
        // Stopped or continued: not an end.
        assert_eq!(exit_code(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }
}
