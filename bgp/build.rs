//! Generates the GoBGP gRPC client from GoBGP's own `.proto` files, as
//! Debian's golang-github-osrg-gobgp-dev installs them (matching Debian's
//! gobgpd 3.10), with protox: no system `protoc` needed.

use std::path::PathBuf;

fn main() {
    let dir = std::env::var("GOBGP_PROTO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/share/gocode/src/github.com/osrg/gobgp/api"));
    println!("cargo:rerun-if-env-changed=GOBGP_PROTO_DIR");
    let main = dir.join("gobgp.proto");
    if !main.exists() {
        panic!(
            "GoBGP's protos are not at {}: install Debian's golang-github-osrg-gobgp-dev (scripts/setup.sh does), or set GOBGP_PROTO_DIR",
            dir.display()
        );
    }
    for f in ["gobgp.proto", "attribute.proto", "capability.proto"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    // attribute.proto is not imported by gobgp.proto (paths carry its
    // messages as Any), so it is compiled explicitly.
    let files = [
        main.clone(),
        dir.join("attribute.proto"),
        dir.join("capability.proto"),
    ];
    let fds = protox::compile(files, [&dir]).expect("GoBGP's protos compile");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)
        .expect("generate the GoBGP client");
}
