//! `vipctl status`: who leads, which node holds which VIP, every Service's
//! address, every vipd instance and its BGP peers. Exit status 1 when
//! something is wrong (a Service pending, a VIP held by no node or by two),
//! 2 when vipctl itself could not find out.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use vipd::status::StatusDoc;
use vipd::vipctl::{http, render, report};

#[derive(Parser)]
#[command(
    version,
    about = "The operator's view of vipd (also a kubectl plugin: install as kubectl-vipd, run kubectl vipd status)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Cmd {
    /// The state of every VIP, Service and vipd instance.
    Status {
        /// kubeconfig (default: as vipd finds it: $k8s_config_file,
        /// /etc/kubernetes/admin.conf, $KUBECONFIG or ~/.kube/config, in-cluster).
        #[arg(long)]
        kubeconfig: Option<std::path::PathBuf>,
        /// The kubeconfig context (default: the current one).
        #[arg(long)]
        context: Option<String>,
        /// Services of this namespace only.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// vipd's namespace (`cp_namespace`): instance records and the
        /// control-plane Lease (default: vipd-system, else kube-system,
        /// whichever holds vipd's records).
        #[arg(long)]
        vipd_namespace: Option<String>,
        /// The control-plane Lease (`vip_leasename`).
        #[arg(long, default_value = vipd::config::settings::CP_LEASE)]
        lease: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// Only this node's vipd, from its status server (no API needed).
        #[arg(long)]
        local: bool,
        /// The local status server (`prometheus_server`).
        #[arg(long, default_value_t = format!("http://127.0.0.1:{}", vipd::config::settings::STATUS_PORT))]
        url: String,
    },
}

fn print<T: serde::Serialize>(v: &T, out: Output, table: impl FnOnce(&T) -> String) {
    match out {
        Output::Table => print!("{}", table(v)),
        Output::Json => println!("{}", serde_json::to_string_pretty(v).expect("serialisable")),
        Output::Yaml => print!("{}", serde_yaml::to_string(v).expect("serialisable")),
    }
}

async fn status(cli: Cmd) -> Result<bool, String> {
    let Cmd::Status {
        kubeconfig,
        context,
        namespace,
        vipd_namespace,
        lease,
        output,
        local,
        url,
    } = cli;
    if local {
        let url = format!("{}/status", url.trim_end_matches('/'));
        let doc: StatusDoc = http::get_json(&url, Duration::from_secs(3))
            .await
            .map_err(|e| vipd::error_chain::chain(&e))?;
        print(&doc, output, render::local);
        return Ok(doc.ready);
    }
    let client = vipd::kubeclient::connect(kubeconfig.as_deref(), context.as_deref())
        .await
        .map_err(|e| {
            let text = vipd::error_chain::chain(&e);
            if text == vipd::kubeclient::NO_CREDENTIALS {
                format!("{text}: pass --kubeconfig, or run vipctl where one of them is (--local reads this node's vipd without the API)")
            } else {
                text
            }
        })?;
    let vipd_namespace = match vipd_namespace {
        Some(ns) => ns,
        None => report::find_vipd_namespace(&client, &lease).await,
    };
    let scope = report::Scope {
        vipd_namespace,
        lease,
        namespace,
    };
    let r = report::gather(client, &scope)
        .await
        .map_err(|e| vipd::error_chain::chain(&e))?;
    print(&r, output, render::report);
    Ok(r.problems.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(status(cli.cmd)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vipctl: {e}");
            ExitCode::from(2)
        }
    }
}
