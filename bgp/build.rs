//! Generates the GoBGP gRPC client from GoBGP's own `.proto` files, taken
//! from the Go module cache for the version `gobgp/go.mod` pins (the same
//! module scripts/gobgp.sh builds gobgpd from), with protox: no system
//! `protoc`, no system copy of the protos. Needs the Go toolchain (it
//! downloads the module from the Go module proxy the first time), unless
//! GOBGP_PROTO_DIR names a directory holding `api/gobgp.proto`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `go`, from PATH or where scripts/ensure-go.sh puts it.
fn go() -> PathBuf {
    if Command::new("go").arg("version").output().is_ok() {
        return PathBuf::from("go");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cached = home.join(".cache/vipd/go1.26.8/bin/go");
    if cached.exists() {
        return cached;
    }
    panic!("GoBGP's protos come from the Go module cache: install Go (scripts/setup.sh does), or set GOBGP_PROTO_DIR");
}

/// The `proto` directory of the pinned GoBGP module.
fn proto_dir(module_dir: &Path) -> PathBuf {
    let out = Command::new(go())
        .args(["mod", "download", "-json", "github.com/osrg/gobgp/v4"])
        .current_dir(module_dir)
        .output()
        .expect("run go mod download");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "go mod download github.com/osrg/gobgp/v4 failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The JSON object's "Dir": the module's unpacked source.
    let dir = text
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("\"Dir\": \"")
                .and_then(|r| r.strip_suffix("\","))
        })
        .unwrap_or_else(|| panic!("no Dir in go mod download's answer: {text}"));
    PathBuf::from(dir).join("proto")
}

fn main() {
    let module_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("gobgp");
    println!("cargo:rerun-if-env-changed=GOBGP_PROTO_DIR");
    println!("cargo:rerun-if-changed=gobgp/go.mod");
    let dir = match std::env::var_os("GOBGP_PROTO_DIR") {
        Some(d) => PathBuf::from(d),
        None => proto_dir(&module_dir),
    };
    let main = dir.join("api/gobgp.proto");
    if !main.exists() {
        panic!("GoBGP's protos are not at {}", dir.display());
    }
    // attribute.proto's messages travel in paths, so it is compiled
    // explicitly with the service.
    let files: Vec<PathBuf> = [
        "gobgp",
        "attribute",
        "capability",
        "nlri",
        "common",
        "extcom",
    ]
    .iter()
    .map(|f| dir.join(format!("api/{f}.proto")))
    .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&dir]).expect("GoBGP's protos compile");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)
        .expect("generate the GoBGP client");
}
