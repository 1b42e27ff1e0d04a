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
# keepalived: the comparison benchmark; bird2: the test router (gobgpd is built, see scripts/gobgp.sh).
# nftables + stress-ng: packet loss and load in the lab (the switch's bridge filter, saturated cores).
# umoci + skopeo: the images (vipd's, the sandbox); runc, CNI plugins, iptables, conntrack:
# the lab's Kubernetes nodes (containerd, kubelet and kube-proxy are built, see scripts/nodes.sh).
packages=(iproute2 curl ca-certificates build-essential pkg-config python3 procps
          keepalived bird2
          umoci skopeo runc containernetworking-plugins iptables conntrack
          nftables stress-ng)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The daemons run only inside the lab's namespaces: never start them on
  # the host while installing (policy-rc.d), nor at boot.
  had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ $had_policy = 0 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now bird keepalived >/dev/null 2>&1 || true
  fi
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
# gobgpd v4 (BFD) for BGP mode, from the Go module proxy, cached in target/gobgp.
scripts/gobgp.sh build >/dev/null
# Helm, for the chart's tests, from the Go module proxy, cached in target/helm.
scripts/helm.sh build >/dev/null
# The lab's Kubernetes nodes: containerd, kubelet, kube-proxy, controllers, sandbox image.
scripts/nodes.sh build >/dev/null
