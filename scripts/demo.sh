#!/usr/bin/env bash
# Installs everything, then runs the demo: a lab of three nodes with a real
# API server; the VIP holder is stopped, killed and cut off while a client
# measures the outage. Run as root; Ctrl-C cleans up.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet --workspace --bins
exec target/release/vipd-lab demo "$@"
