#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the lab tests
# against a real API server and network namespaces. Run as root.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
t0=$SECONDS
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
echo "test.sh: all passed in $((SECONDS - t0)) s"
