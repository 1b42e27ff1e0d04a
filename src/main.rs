//! `vipd`: the agent (`vipd manager`) and its manifests (`vipd manifest`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use vipd::config::settings::SETTINGS;
use vipd::config::{Config, Layers, LogFormat};
use vipd::manifest::{self, Distro, ManifestOptions};

fn setting_args() -> Vec<Arg> {
    SETTINGS
        .iter()
        .map(|s| {
            let mut a = Arg::new(s.env)
                .long(s.flag)
                .help(s.help_text())
                .action(ArgAction::Set);
            if s.switch {
                a = a
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true");
            } else {
                a = a.value_name("VALUE");
            }
            if s.env == "k8s_config_file" {
                a = a.alias("kubeconfig");
            }
            a
        })
        .collect()
}

fn cli() -> Command {
    Command::new("vipd")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Virtual IPs for Kubernetes: the control-plane VIP and LoadBalancer Services")
        .subcommand_required(true)
        .subcommand(
            Command::new("manager")
                .about("Run the agent (environment variables win over flags, flags over --config)")
                .arg(Arg::new("config").long("config").value_name("FILE").help("YAML file of settings by environment name"))
                .args(setting_args()),
        )
        .subcommand(Command::new("guard").hide(true).about("The guardian process vipd manager starts (internal)"))
        .subcommand(
            Command::new("manifest")
                .about("Print deployment YAML; settings given as flags become the container environment")
                .arg(Arg::new("kind").required(true).value_parser(["pod", "daemonset", "rbac"]))
                .arg(Arg::new("image").long("image").default_value(concat!("ghcr.io/vipd/vipd:v", env!("CARGO_PKG_VERSION"))))
                .arg(
                    Arg::new("distro")
                        .long("distro")
                        .value_parser(clap::builder::EnumValueParser::<Distro>::new())
                        .default_value("kubeadm")
                        .help("the distribution: the static pod's kubeconfig path; on k3s a Services DaemonSet stays off servers, whose static pod serves Services"),
                )
                .arg(
                    Arg::new("inCluster")
                        .long("inCluster")
                        .action(ArgAction::SetTrue)
                        .help("authenticate with the vipd ServiceAccount (kube-vip's flag; vipd's DaemonSets always do, a static pod cannot)"),
                )
                .arg(
                    Arg::new("taint")
                        .long("taint")
                        .action(ArgAction::SetTrue)
                        .help("run the DaemonSet on control-plane nodes only, tolerating their taint (kube-vip's flag)"),
                )
                .args(setting_args()),
        )
}

/// The layers of configuration from the command line and the environment.
fn layers(m: &ArgMatches, with_env: bool) -> Result<Layers, String> {
    let mut l = Layers::default();
    if let Some(path) = m.try_get_one::<String>("config").ok().flatten() {
        l.add_file(&PathBuf::from(path))
            .map_err(|e| e.to_string())?;
    }
    let flags: Vec<(&str, String)> = SETTINGS
        .iter()
        .filter_map(|s| m.get_one::<String>(s.env).map(|v| (s.env, v.clone())))
        .collect();
    l.add_flags(flags);
    if with_env {
        l.add_env(|k| std::env::var(k).ok());
    }
    Ok(l)
}

/// Colour only for a person at a terminal: never in `kubectl logs`,
/// journald or a log shipper, and never with `NO_COLOR` set
/// (https://no-color.org).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIPD_LOG").unwrap_or_else(|_| {
        // kube's client logs every failed request at ERROR; vipd logs each
        // failure where it is handled, with what it means, so that line is
        // noise when an API server restarts. netlink-proto warns of every
        // kernel answer that arrives after its requester is gone, which is
        // every request in flight when vipd exits.
        tracing_subscriber::EnvFilter::new(format!(
            "{level},kube=warn,kube_client=warn,kube_client::client::builder=off,kube_runtime=warn,tower=warn,hyper=warn,h2=warn,rustls=warn,tonic=warn,netlink_proto=error"
        ))
    });
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_timer(tracing_subscriber::fmt::time::UtcTime::rfc_3339());
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// vipd's allocator (see `vipd::memory`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read before `main` (its `malloc_conf`): one arena
/// and no per-thread caches (vipd's threads take turns on the same work,
/// and caches per thread only hold each other's freed memory), freed pages
/// back to the kernel after a second (`dirty_decay_ms`), at once once
/// purged (`muzzy_decay_ms:0`), and no thread of its own for that (vipd
/// allocates every second anyway: announcements, timers).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[export_name = "_rjem_malloc_conf"]
#[allow(non_upper_case_globals)]
pub static malloc_conf: Option<&'static libc::c_char> = Some(unsafe {
    // SAFETY: a pointer to the first byte of a NUL-terminated static.
    &*c"narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:false"
        .as_ptr()
});

fn main() -> ExitCode {
    vipd::memory::one_arena();
    let m = cli().get_matches();
    match m.subcommand() {
        Some(("manager", sub)) => {
            // A container's first process: the manager runs as its child,
            // so the guardian outlives it (see vipd::init).
            if vipd::init::is_first_process() {
                return vipd::init::run();
            }
            let layers = match layers(sub, true) {
                Ok(l) => l,
                Err(e) => return fail(&e),
            };
            let hostname = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            let config = match Config::from_layers(&layers, &hostname) {
                Ok(c) => c,
                Err(errors) => {
                    // Every setting to fix, one line each.
                    for e in errors.list() {
                        eprintln!("vipd: {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log_level, config.log_format);
            // Before the runtime: its threads inherit the niceness.
            vipd::priority::apply(config.nice);
            let unsupported = vipd::config::settings::unsupported_in(|k| {
                std::env::var_os(k).is_some_and(|v| !v.is_empty())
            });
            if !unsupported.is_empty() {
                tracing::warn!(
                    settings = %unsupported.join(", "),
                    "kube-vip settings that vipd does not implement are set: they are ignored"
                );
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            match rt.block_on(vipd::manager::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&vipd::error_chain::chain(&e)),
            }
        }
        Some(("guard", _)) => vipd::guardian::run_guard(),
        Some(("manifest", sub)) => {
            // Only flags: the manifest must not pick up this shell's variables.
            let layers = match layers(sub, false) {
                Ok(l) => l,
                Err(e) => return fail(&e),
            };
            let opts = ManifestOptions {
                image: sub.get_one::<String>("image").expect("defaulted").clone(),
                distro: *sub.get_one::<Distro>("distro").expect("defaulted"),
                in_cluster: sub.get_flag("inCluster"),
                taint: sub.get_flag("taint"),
            };
            let kind = sub.get_one::<String>("kind").map(String::as_str);
            if kind == Some("pod") && opts.in_cluster {
                return fail("--inCluster: a static pod cannot use a ServiceAccount (the kubelet refuses it); it reads the node's kubeconfig (--distro)");
            }
            let docs = match kind {
                Some("pod") => vec![manifest::pod(&layers, &opts)],
                Some("daemonset") => vec![manifest::daemonset(&layers, &opts)],
                _ => manifest::rbac(),
            };
            print!("{}", manifest::to_yaml(&docs));
            ExitCode::SUCCESS
        }
        _ => unreachable!("subcommand_required"),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("vipd: {msg}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "piped: no escapes");
        assert!(!colour(true, Some("1".into())));
        // NO_COLOR present but empty does not count (no-color.org).
        assert!(colour(true, Some("".into())));
    }
}
