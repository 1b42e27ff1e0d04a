#!/usr/bin/env bash
# Installs everything vipd's demo, tests and benchmarks need on a fresh
# Debian 12 machine (run as root): Debian packages, Go (from the Go module
# proxy when the machine's is missing or old), the Kubernetes API server
# harness (built from Kubernetes' Go modules), and vipd itself.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (network namespaces, raw sockets, packages)" >&2
  exit 2
fi

# Debian packages: apt-get update only when something is missing.
packages=(iproute2 curl ca-certificates build-essential pkg-config python3 procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
  echo "setup: Rust (cargo, 1.85 or newer) is required; install it with rustup" >&2
  exit 2
}

# The real Kubernetes API server (and kubectl), cached in target/harness.
scripts/harness.sh build >/dev/null
