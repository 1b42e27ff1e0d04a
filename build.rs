//! The build identity `kube_vip_build_info` reports: the git commit this
//! workspace was built from, when it is a git checkout. And how vipd's
//! binary is linked (see [`link_vipd`]).

use std::process::Command;

fn main() {
    let build = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VIPD_BUILD={build}");
    if std::path::Path::new(".git/HEAD").exists() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        println!("cargo:rerun-if-changed=.git/refs/heads");
    }
    link_vipd();
}

/// vipd's code pages are most of its memory (BENCHMARKS.md, "Memory"):
/// - the functions vipd runs go first in `.text`, in the order of
///   `link/vipd.order` (written by `scripts/order-functions.sh`): the
///   kernel maps code 64 KiB around every page run, and spread over the
///   whole binary the 3.7 MiB vipd runs mapped 8 MiB. The list is for
///   LLD, rustc's linker on x86_64 Linux; names it does not know are
///   skipped.
/// - relative relocations packed (DT_RELR, glibc 2.36 as in the image):
///   600 KB of `.rela.dyn` the loader reads at every start, 7 KB instead.
///   vipd only: vipctl runs on operators' machines, whatever their glibc.
fn link_vipd() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    println!("cargo:rustc-link-arg-bin=vipd=-Wl,-z,pack-relative-relocs");
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("link/vipd.order");
    println!("cargo:rerun-if-changed={}", order.display());
    if var("CARGO_CFG_TARGET_ARCH") == "x86_64" && order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=vipd=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=vipd=-Wl,--no-warn-symbol-ordering");
    }
}
